"""The capstone's targets, measured (issue 13): a script, not a test. One command::

    python benchmarks/capstone_targets.py                 # everything, ~20 min on the 2-core machine
    python benchmarks/capstone_targets.py --skip-train    # only the data and profiler checks (~3 min)

What it does, in order, each part written to ``benchmarks/results/capstone_targets.{json,md}`` as it ends:

1. **data**: writes the default synthetic set with ``make-data`` if it is not there (validation uses its val
   split; training reads its train split, the ``train`` default once it is written).
2. **compute-bound or data-bound**: ``train`` for ``--data-steps`` steps of the config, drawing images on the
   fly with 0, 1 and 2 DataLoader workers, and reading the written train split with 1 worker; from
   ``metrics.jsonl`` (steps after the first 5): images/s and the share of each step spent waiting for the next
   batch (target: < 5 %). Also the CPU milliseconds one image costs in a worker (one thread), each way: on this
   2-core machine a worker shares the cores with the training step, so a costly pipeline slows the steps even
   when nobody waits for it.
3. **operators' shares of a step**: ``torch.profiler`` over ``--profile-steps`` training steps (after 3
   warm-up steps), as shares of the steps' wall time: the time spent inside (inclusive) the deformable conv
   operator (``dcn_lessons::deform_conv2d`` and its backward), the RoI family (every ``dcn_lessons::`` operator
   with ``roi`` in its name, forward and backward), plain convolutions (``aten::convolution`` and
   ``aten::convolution_backward``) and linear layers (``aten::linear`` and the ``AddmmBackward0`` /
   ``MmBackward0`` nodes), each call counted once (not again inside another counted call); "other" is the
   rest. Then the top operators by self time.
4. **the target run**: ``train`` of the config with its own settings (``--iterations`` to override), timed by
   the wall clock (the whole command: steps, checkpoints and the final evaluation); AP, AP50, AP75, APs/m/l on
   the val split against the targets (<= 20 min, AP >= 0.5, AP50 >= 0.75; stretch AP >= 0.6, AP75 >= 0.7).

Run it on a quiet machine: every figure is a wall-clock time of this machine, named in the output.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
RESULTS = HERE / "results"


def machine() -> dict:
    import torch

    from bench_deform_conv_cpu import cpu_model

    return {"cpu": cpu_model(), "logical_cpus": os.cpu_count(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
            "platform": platform.platform(), "load_1min_at_start": os.getloadavg()[0]}


def write(report: dict, results: Path) -> None:
    from dcn_lessons.detection.checkpoint import atomic_write_text

    atomic_write_text(results / "capstone_targets.json", json.dumps(report, indent=1) + "\n")
    atomic_write_text(results / "capstone_targets.md", markdown(report))


def markdown(r: dict) -> str:
    m = r["machine"]
    lines = [f"# Capstone targets ({r['config']})", "",
             f"Machine: {m['cpu']}, {m['logical_cpus']} logical CPUs, torch {m['torch']} ({m['torch_threads']} "
             f"threads), Python {m['python']}; 1-min load at start {m['load_1min_at_start']:.1f}.", ""]
    if "data" in r:
        lines += ["## Data wait (train, steps after the first 5)", "",
                  "| training data | images/s | s a step | data wait, % of a step |", "|---|---|---|---|"]
        for w, d in r["data"].items():
            lines.append(f"| {w} | {d['images_per_s']:.2f} | {d['step_s']:.3f} | {100 * d['data_wait_share']:.1f} |")
        c = r["item_cost_ms"]
        lines += ["", f"CPU per training image in one worker thread: {c['fly']:.1f} ms drawn on the fly, "
                      f"{c['files']:.1f} ms read from a PNG (both with scale jitter and flip).", ""]
    if "profile" in r:
        p = r["profile"]
        lines += [f"## Operators' share of a training step ({p['steps']} steps of {p['batch_size']} images, "
                  f"{p['step_s']:.2f} s a step; time inside each family's calls)", "",
                  "| family | share of the step |", "|---|---|"]
        lines += [f"| {k} | {100 * v:.1f} % |" for k, v in p["families"].items()]
        lines += ["", "| operator (self time) | share of the step |", "|---|---|"]
        lines += [f"| `{k}` | {100 * v:.1f} % |" for k, v in p["top"].items()]
        lines.append("")
    if "train" in r:
        t = r["train"]
        lines += ["## The target run", "",
                  f"{t['iterations']} steps of {t['batch_size']} images: {t['wall_s'] / 60:.1f} min by the wall clock "
                  f"(steps {t['train_time_s'] / 60:.1f} min, {t['images_per_s']:.1f} images/s, data wait "
                  f"{100 * t['data_wait_share']:.1f} %).", "",
                  "| AP | AP50 | AP75 | APs | APm | APl |", "|---|---|---|---|---|---|",
                  "| " + " | ".join(f"{100 * t['eval'][k]:.1f}" for k in ("AP", "AP50", "AP75", "APs", "APm", "APl"))
                  + " |", "", "Targets: " + ", ".join(f"{k} {'met' if v else 'NOT met'}" for k, v in t["targets"].items()),
                  ""]
    return "\n".join(lines)


def ensure_data() -> Path:
    from dcn_lessons.detection.cli import default_root, main
    from dcn_lessons.detection.synthetic import split_paths

    if not split_paths(default_root(), "val")[1].is_file():
        assert main(["make-data", "--quiet"]) == 0
    return default_root()


def train_argv(config: str, out: Path, *extra: str) -> list[str]:
    return ["train", "--config", config, "--out", str(out), "--quiet", *extra]


def data_check(config: str, steps: int, scratch: Path) -> dict:
    from dcn_lessons.detection.cli import main
    from dcn_lessons.detection.engine import read_metrics

    out = {}
    for source, workers in (("fly", 0), ("fly", 1), ("fly", 2), ("files", 1)):
        run = scratch / f"data_{source}_w{workers}"
        shutil.rmtree(run, ignore_errors=True)
        assert main(train_argv(config, run, "--iterations", str(steps), "--workers", str(workers), "--log-every", "1",
                               "--train-data", source, "--no-eval")) == 0
        recs = [r for r in read_metrics(run / "metrics.jsonl") if "loss" in r and r["iteration"] > 5]
        step = sum(r["step_s"] for r in recs)
        out[f"{source}, {workers} worker(s)"] = {
            "images_per_s": sum(r["images_per_s"] * r["step_s"] for r in recs) / step,
            "data_wait_share": sum(r["data_wait_s"] for r in recs) / step, "step_s": step / len(recs)}
    return out


def item_cost(config: str, n: int = 60) -> dict:
    """CPU milliseconds per training item in one thread (as in a DataLoader worker), on the fly and from files."""
    import torch

    from dcn_lessons.detection.cli import detector_config, detector_transforms, open_dataset, synthetic_source
    from dcn_lessons.detection.coco import SyntheticDetection

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        tf = detector_transforms(detector_config(config), True)
        spec, seed = synthetic_source()
        sets = {"fly": SyntheticDetection("train", length=n + 1, data_seed=seed, spec=spec, transforms=tf),
                "files": open_dataset(None, None, "train", transforms=tf)}
        out = {}
        for name, ds in sets.items():
            ds[0]
            t = time.process_time()
            for i in range(1, n + 1):
                ds[i % len(ds)]
            out[name] = (time.process_time() - t) / n * 1000
        return out
    finally:
        torch.set_num_threads(threads)


def family(name: str):
    """The family of a profiler event counted in the shares, or None."""
    if name.startswith("dcn_lessons::deform_conv2d"):
        return "deformable conv"
    if name.startswith("dcn_lessons::") and "roi" in name:
        return "RoI family"
    if name in ("aten::convolution", "aten::convolution_backward"):
        return "conv"
    if name == "aten::linear" or name.endswith(("AddmmBackward0", "MmBackward0")) and "evaluate_function" in name:
        return "linear"
    return None


def profile(config: str, steps: int) -> dict:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    from dcn_lessons.detection import collate_detection
    from dcn_lessons.detection.checkpoint import seed_everything
    from dcn_lessons.detection.cli import detector_config, detector_transforms, synthetic_source
    from dcn_lessons.detection.coco import SyntheticDetection
    from dcn_lessons.detection.engine import TrainConfig, build_optimizer
    from dcn_lessons.detection.model import DeformableFasterRCNN

    cfg = detector_config(config)
    spec, seed = synthetic_source()
    ds = SyntheticDetection("train", length=1000, data_seed=seed, spec=spec, transforms=detector_transforms(cfg, True))
    tc = TrainConfig.from_solver(cfg.solver, batch_size=cfg.solver.images_per_batch)
    batches = [collate_detection([ds[k * tc.batch_size + i] for i in range(tc.batch_size)]) for k in range(steps + 3)]
    seed_everything(0)
    model = DeformableFasterRCNN(cfg, num_classes=ds.num_classes).train()
    opt = build_optimizer(model, tc)

    def step(b) -> None:
        loss = sum(model(b.images, b.targets).values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for b in batches[:3]:
        step(b)
    start = time.perf_counter()
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        for b in batches[3:]:
            step(b)
    wall_us = (time.perf_counter() - start) * 1e6
    fam: dict[str, float] = defaultdict(float)
    for e in prof.events():
        f = family(e.name)
        if f is None:
            continue
        p = e.cpu_parent
        while p is not None and family(p.name) is None:
            p = p.cpu_parent
        if p is None:  # not inside another counted call
            fam[f] += e.cpu_time_total / wall_us
    fam["other"] = max(0.0, 1.0 - sum(fam.values()))
    self_us: dict[str, float] = defaultdict(float)
    for e in prof.key_averages():
        self_us[e.key] += e.self_cpu_time_total
    top = dict(sorted(((k, v / wall_us) for k, v in self_us.items()), key=lambda kv: -kv[1])[:15])
    return {"steps": steps, "batch_size": tc.batch_size, "step_s": wall_us / 1e6 / steps,
            "families": dict(sorted(fam.items(), key=lambda kv: -kv[1])), "top": top}


def target_run(config: str, out: Path, iterations: int | None) -> dict:
    from dcn_lessons.detection.checkpoint import load_checkpoint
    from dcn_lessons.detection.cli import main
    from dcn_lessons.detection.engine import read_metrics

    shutil.rmtree(out, ignore_errors=True)
    extra = ["--iterations", str(iterations)] if iterations else []
    start = time.perf_counter()
    assert main(train_argv(config, out, *extra)) == 0
    wall = time.perf_counter() - start
    state = load_checkpoint(out / "checkpoint.pt")
    summary = json.loads((out / "summary.json").read_text())
    recs = [r for r in read_metrics(out / "metrics.jsonl") if "loss" in r]
    step = sum(r["step_s"] for r in recs)
    ev = {k: summary[k] for k in ("AP", "AP50", "AP75", "APs", "APm", "APl")}
    targets = {"time <= 20 min": wall <= 20 * 60, "AP >= 0.5": ev["AP"] >= 0.5, "AP50 >= 0.75": ev["AP50"] >= 0.75,
               "stretch AP >= 0.6": ev["AP"] >= 0.6, "stretch AP75 >= 0.7": ev["AP75"] >= 0.7}
    return {"iterations": int(state["iteration"]), "batch_size": int(state["train"]["batch_size"]), "wall_s": wall,
            "train_time_s": float(state["train_time_s"]), "images_per_s": state["images_seen"] / state["train_time_s"],
            "data_wait_share": sum(r["data_wait_s"] for r in recs) / step, "eval": ev, "targets": targets,
            "run": str(out)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="dcnv2_mimic", help="the config measured (default: dcnv2_mimic)")
    p.add_argument("--iterations", type=int, default=None, help="steps of the target run (default: the config's)")
    p.add_argument("--data-steps", type=int, default=40, help="steps of each data-wait run (default: 40)")
    p.add_argument("--profile-steps", type=int, default=10, help="profiled steps (default: 10)")
    p.add_argument("--runs", default="runs/targets", help="scratch and run folders (default: runs/targets)")
    p.add_argument("--results", default=str(RESULTS), help=f"where the report goes (default: {RESULTS})")
    p.add_argument("--skip-train", action="store_true", help="only the data and profiler checks")
    args = p.parse_args()
    results = Path(args.results)
    runs = Path(args.runs)
    report: dict = {"config": args.config, "machine": machine()}
    ensure_data()
    report["item_cost_ms"] = item_cost(args.config)
    report["data"] = data_check(args.config, args.data_steps, runs)
    write(report, results)
    report["profile"] = profile(args.config, args.profile_steps)
    write(report, results)
    if not args.skip_train:
        report["train"] = target_run(args.config, runs / args.config, args.iterations)
        write(report, results)
    print(markdown(report))


if __name__ == "__main__":
    main()
