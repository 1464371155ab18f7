"""DCNv2 Tables 1 and 3 in miniature: the four configs trained over several seeds, one table.

DCNv2 Table 1 compares Faster R-CNN with regular convolutions and RoI pooling, DCNv1's deformable conv5 and
deformable RoI pooling, and DCNv2's modulated layers in conv3-conv5 with modulated RoI pooling; Table 3 adds
R-CNN feature mimicking. :func:`run_ablation` trains each ``(config, seed)`` with the ``train`` command (the
same code, checkpoints and evaluation as a user's run), then writes under ``results``:

* ``ablation.md``: per config, mean ± standard deviation over seeds (sample std, n - 1; "±" omitted for one
  seed) of AP, AP50, AP75, APs, APm, APl (COCOeval on the validation set, in percent as the papers print them),
  the parameters and inference FLOPs (:func:`dcn_lessons.models.count_parameters` /
  :func:`~dcn_lessons.models.count_flops` on one validation image at the test size; FLOPs as PyTorch counts
  them, 2 per multiply-add), the training time (seconds of steps, without evaluation) and images/s;
* ``ablation.csv``: the same, one column per mean and per std; ``ablation_runs.csv``: every run's own figures;
* ``ablation.png``: AP / AP50 / AP75 by config with the seeds' spread, and AP against training time (each seed a
  dot): the equal-steps and the equal-time readings the lesson discusses.

**Resumable.** Each run lives in ``runs/<config>/seed<k>/``; when it has finished, ``result.json`` is written
there (atomically) and the run is never trained again; a run interrupted before that resumes from its
checkpoint exactly (``train --resume``). The tables are rebuilt from every ``result.json`` at the end.
"""
from __future__ import annotations

import csv
import io
import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from dcn_lessons.detection.checkpoint import atomic_write, atomic_write_text

__all__ = ["DEFAULT_CONFIGS", "METRICS", "AblationSettings", "AblationTable", "run_one", "run_ablation",
           "summarise", "format_markdown", "plot_ablation"]

#: Table 1's three rows and Table 3's mimicking row.
DEFAULT_CONFIGS = ("regular", "dcnv1", "dcnv2", "dcnv2_mimic")

#: The COCO metrics of the table, in the papers' order.
METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")

RESULT_NAME = "result.json"


@dataclass(frozen=True)
class AblationSettings:
    """What to run: ``configs`` x ``seeds``, each in ``runs/<config>/seed<k>``, tables into ``results``; the
    other fields are the ``train`` command's options (None: the config's own)."""

    configs: tuple[str, ...] = DEFAULT_CONFIGS
    seeds: tuple[int, ...] = (0, 1, 2)
    runs: Path = Path("runs/ablation")
    results: Path = Path("benchmarks/results")
    iterations: Optional[int] = None
    batch_size: Optional[int] = None
    workers: int = 1
    train_images: Optional[int] = None
    val_data_root: Optional[str] = None
    val_ann_file: Optional[str] = None
    val_on_bad: str = "warn"
    device: str = "cpu"
    progress: bool = True


@dataclass
class AblationTable:
    """What :func:`run_ablation` returns: per-config ``rows`` (means and stds), every run's ``runs``, the
    ``markdown`` text and the ``files`` written."""

    rows: list[dict]
    runs: list[dict]
    markdown: str
    files: list[Path] = field(default_factory=list)


def _label(config: str) -> str:
    """A config's name in tables and folders: a shipped name (``coco/`` as ``coco_``) or a file's stem."""
    return Path(config).stem if config.endswith(".toml") else config.replace("/", "_")


def _run_dir(settings: AblationSettings, config: str, seed: int) -> Path:
    return settings.runs / _label(config) / f"seed{seed}"


def _train_argv(settings: AblationSettings, config: str, seed: int, out: Path) -> list[str]:
    argv = ["train", "--config", config, "--seed", str(seed), "--out", str(out), "--resume",
            "--workers", str(settings.workers), "--device", settings.device]
    for flag, value in (("--iterations", settings.iterations), ("--batch-size", settings.batch_size),
                        ("--train-images", settings.train_images), ("--val-data-root", settings.val_data_root),
                        ("--val-ann-file", settings.val_ann_file)):
        if value is not None:
            argv += [flag, str(value)]
    argv += ["--val-on-bad", settings.val_on_bad]
    if not settings.progress:
        argv.append("--quiet")
    return argv


def _complexity(checkpoint: Path, settings: AblationSettings) -> tuple[int, int]:
    """Parameters and inference FLOPs of the model in ``checkpoint`` on one validation image."""
    import torch

    from dcn_lessons.detection.cli import eval_dataset, load_run
    from dcn_lessons.detection.config import config_from_dict
    from dcn_lessons.models import count_flops, count_parameters

    model, state = load_run(str(checkpoint))
    cfg = config_from_dict(state["config"]["detector"])
    image, target = eval_dataset(cfg, settings.val_data_root, settings.val_ann_file, settings.val_on_bad, length=1)[0]
    sizes = target["size"][None]
    with torch.no_grad():
        flops = count_flops(model.eval(), image[None], sizes, device=None).total
    return count_parameters(model), int(flops)


def run_one(settings: AblationSettings, config: str, seed: int) -> dict:
    """Train and evaluate one ``(config, seed)`` unless its ``result.json`` exists; return that record:
    ``config``, ``seed``, the metrics, ``params``, ``flops``, ``train_time_s``, ``images_per_s``,
    ``iterations``, ``run``."""
    from dcn_lessons.detection.checkpoint import load_checkpoint
    from dcn_lessons.detection.cli import CommandError, main

    out = _run_dir(settings, config, seed)
    done = out / RESULT_NAME
    if done.is_file():
        return json.loads(done.read_text())
    code = main(_train_argv(settings, config, seed, out))
    if code != 0:
        raise CommandError(f"ablate: training {config} with seed {seed} failed (exit code {code}); its run folder "
                           f"is {out}")
    summary = json.loads((out / "summary.json").read_text())
    state = load_checkpoint(out / "checkpoint.pt")
    params, flops = _complexity(out / "checkpoint.pt", settings)
    record = {"config": config, "seed": seed, **{m: summary[m] for m in METRICS}, "params": params, "flops": flops,
              "train_time_s": float(state["train_time_s"]), "iterations": int(state["iteration"]),
              "images_per_s": state["images_seen"] / state["train_time_s"] if state["train_time_s"] else 0.0,
              "run": str(out)}
    atomic_write_text(done, json.dumps(record, indent=1) + "\n")
    return record


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    vals = [float(v) for v in values]
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else float("nan"))


def summarise(runs: Sequence[dict], configs: Sequence[str]) -> list[dict]:
    """One row per config (in ``configs``' order): ``n`` seeds and ``<key>_mean`` / ``<key>_std`` for the metrics,
    ``params``, ``flops``, ``train_time_s`` and ``images_per_s``."""
    rows = []
    for c in configs:
        rs = [r for r in runs if r["config"] == c]
        if not rs:
            continue
        row: dict[str, Any] = {"config": _label(c), "n": len(rs), "iterations": rs[0]["iterations"]}
        for key in (*METRICS, "params", "flops", "train_time_s", "images_per_s"):
            row[f"{key}_mean"], row[f"{key}_std"] = _mean_std([r[key] for r in rs])
        rows.append(row)
    return rows


def _pm(mean: float, std: float, scale: float = 1.0, digits: int = 1) -> str:
    if mean < 0:
        return "–"
    text = f"{mean * scale:.{digits}f}"
    return text if math.isnan(std) else f"{text} ± {std * scale:.{digits}f}"


def format_markdown(rows: Sequence[dict], note: str = "") -> str:
    """The Markdown table of :func:`summarise`'s rows (metrics in percent, params in millions, FLOPs in
    GFLOPs, time in minutes)."""
    head = ("| config | seeds | steps | AP | AP50 | AP75 | APs | APm | APl | params (M) | FLOPs (G) | "
            "train time (min) | images/s |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        cells = [r["config"], str(r["n"]), str(r["iterations"])]
        cells += [_pm(r[f"{m}_mean"], r[f"{m}_std"], 100.0) for m in METRICS]
        cells += [f"{r['params_mean'] / 1e6:.2f}", f"{r['flops_mean'] / 1e9:.2f}",
                  _pm(r["train_time_s_mean"], r["train_time_s_std"], 1 / 60), _pm(r["images_per_s_mean"],
                                                                                  r["images_per_s_std"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n" + (f"\n{note}\n" if note else "")


def plot_ablation(runs: Sequence[dict], configs: Sequence[str]):
    """The lesson's figure: AP / AP50 / AP75 per config (bars: mean over seeds, dots: each seed) and AP against
    training time (each run a dot). Returns a matplotlib ``Figure``."""
    import numpy as np
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 3.8))
    ax1, ax2 = fig.subplots(1, 2)
    present = [c for c in configs if any(r["config"] == c for r in runs)]
    names = [_label(c) for c in present]
    width = 0.26
    for j, m in enumerate(("AP", "AP50", "AP75")):
        for i, c in enumerate(present):
            vals = [100 * r[m] for r in runs if r["config"] == c]
            x = i + (j - 1) * width
            ax1.bar(x, float(np.mean(vals)), width, color=f"C{j}", alpha=0.75, label=m if i == 0 else None)
            ax1.scatter([x] * len(vals), vals, s=10, color="k", zorder=3)
    ax1.set_xticks(range(len(present)), names, fontsize=8)
    ax1.set_ylabel("COCO metric (%)")
    ax1.set_title("at equal steps (mean over seeds, dots: seeds)", fontsize=9)
    ax1.legend(fontsize=8)
    for i, c in enumerate(present):
        rs = [r for r in runs if r["config"] == c]
        ax2.scatter([r["train_time_s"] / 60 for r in rs], [100 * r["AP"] for r in rs], color=f"C{i + 3}",
                    label=names[i])
    ax2.set_xlabel("training time (min)")
    ax2.set_ylabel("AP (%)")
    ax2.set_title("AP against the time it cost", fontsize=9)
    ax2.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _csv(rows: Sequence[dict]) -> str:
    if not rows:
        return ""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def run_ablation(settings: AblationSettings) -> AblationTable:
    """Run every ``(config, seed)`` of ``settings`` (skipping finished ones), then write the tables and the
    figure (module docstring). Returns the :class:`AblationTable`."""
    if not settings.configs or not settings.seeds:
        raise ValueError("settings: expected at least one config and one seed")
    runs = [run_one(settings, c, s) for c in settings.configs for s in settings.seeds]
    rows = summarise(runs, settings.configs)
    note = (f"COCOeval on the validation set, mean ± std over seeds {', '.join(map(str, settings.seeds))}; "
            "FLOPs of one inference on a validation image at the test size; train time: the training steps only "
            "(no evaluation), on this machine.")
    md = format_markdown(rows, note)
    out = settings.results
    files = [atomic_write_text(out / "ablation.md", md), atomic_write_text(out / "ablation.csv", _csv(rows)),
             atomic_write_text(out / "ablation_runs.csv", _csv(runs))]
    fig = plot_ablation(runs, settings.configs)
    files.append(atomic_write(out / "ablation.png", lambda f: fig.savefig(f, format="png", dpi=100)))
    return AblationTable(rows, runs, md, files)
