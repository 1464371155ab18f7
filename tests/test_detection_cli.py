"""The detector's command line (train, evaluate, predict, ablate) end to end, on the real configs at 64 pixels:
every option explained, one-line errors, every config trained a few steps and evaluated, predictions drawn with
sampling points and RoI bins, a SIGKILLed run resumed to the same weights, a resumable ablation."""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dcn_lessons.detection.checkpoint import load_checkpoint
from dcn_lessons.detection.cli import COMMANDS, build_parser, main
from dcn_lessons.detection.engine import read_metrics

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
from test_detection_engine import tiny_config  # noqa: E402

CONFIGS = ("regular", "dcnv1", "dcnv2", "dcnv2_mimic")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A data root holding a 64-pixel synthetic set (2 val, 1 test images; training draws on the fly with the
    same spec) and the tiny config files; ``DCN_LESSONS_DATA`` points at it for the module's tests."""
    root = tmp_path_factory.mktemp("cli")
    old = os.environ.get("DCN_LESSONS_DATA")
    os.environ["DCN_LESSONS_DATA"] = str(root / "data")
    try:
        assert main(["make-data", "--train", "0", "--val", "2", "--test", "1", "--image-size", "64", "--workers", "1",
                     "--quiet"]) == 0
        configs = {c: tiny_config(root, c) for c in CONFIGS}
        yield {"root": root, "configs": configs, "val": root / "data" / "synthetic" / "val"}
    finally:
        if old is None:
            os.environ.pop("DCN_LESSONS_DATA", None)
        else:
            os.environ["DCN_LESSONS_DATA"] = old


def _train_argv(world, config: str, out: Path, iterations: int = 2, *extra: str, workers: int = 0) -> list[str]:
    return ["train", "--config", str(world["configs"][config]), "--out", str(out), "--iterations", str(iterations),
            "--batch-size", "1", "--workers", str(workers), "--log-every", "1", "--quiet", *extra]


# ------------------------------------------------------------------------------------------ the options
def test_every_option_of_every_command_has_help():
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert set(sub.choices) == {c.name for c in COMMANDS} == {"make-data", "train", "evaluate", "predict", "ablate"}
    for name, p in sub.choices.items():
        for action in p._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            assert action.help and len(action.help) >= 10, f"{name} {action.option_strings or action.dest}: no help"
        text = p.format_help()
        for action in p._actions:
            for opt in action.option_strings:
                assert opt in text


@pytest.mark.parametrize("argv, message", [
    (["train", "--iterations", "0"], "argument --iterations: expected a positive integer, got '0'"),
    (["train", "--device", "tpu"], "argument --device: expected cpu, cuda or cuda:K, got 'tpu'"),
    (["train", "--config", "nosuch"], "--config: config: unknown name 'nosuch'"),
    (["train", "--amp"], "--amp: mixed precision needs --device cuda"),
    (["train", "--data-root", "x"], "--data-root and --ann-file go together"),
    (["train", "--train-data", "fly", "--data-root", "x", "--ann-file", "y.json"], "--train-data/--train-images are"),
    (["train", "--train-data", "files", "--train-images", "5"], "--train-images: the number of images drawn"),
    (["evaluate", "missing/checkpoint.pt"], "missing/checkpoint.pt: checkpoint not found"),
    (["predict", "missing", "no_such_image.png"], "no_such_image.png: no such file or folder"),
    (["predict", "missing", "x.png", "--score-thresh", "2"], "argument --score-thresh: expected a score in [0, 1]"),
    (["ablate", "--seeds", "-1"], "argument --seeds: expected an integer >= 0, got '-1'"),
])
def test_a_bad_option_is_one_error_line(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "error:" in err[0] and message in err[0], err


# ----------------------------------------------------------------------------------- train, evaluate, predict
def test_every_config_trains_and_evaluates_then_evaluate_and_predict(world, capsys):
    runs = world["root"] / "runs"
    for c in CONFIGS:
        assert main(_train_argv(world, c, runs / c)) == 0, c
        summary = json.loads((runs / c / "summary.json").read_text())
        assert summary["images"] == 2 and summary["iteration"] == 2 and "annotation file" in summary["area_source"]
        assert load_checkpoint(runs / c / "checkpoint.pt")["iteration"] == 2
        records = read_metrics(runs / c / "metrics.jsonl")
        losses = [k for k in records[0] if k.startswith("loss_")]
        assert ("loss_mimic" in losses) == (c == "dcnv2_mimic") and "loss_rpn_cls" in losses
        assert [r["iteration"] for r in records] == [1, 2, 2] and "eval" in records[-1]
        assert (runs / c / "metrics.png").stat().st_size > 1000
    printed = capsys.readouterr().out
    assert "trained to iteration 2" in printed and "AP50" in printed

    mimic = runs / "dcnv2_mimic"
    assert main(["evaluate", str(mimic), "--split", "test", "--quiet"]) == 0
    test_summary = json.loads((mimic / "eval-test" / "summary.json").read_text())
    assert test_summary["images"] == 1 and test_summary["checkpoint"] == str(mimic)
    assert "Average Precision" in capsys.readouterr().out

    first = sorted(world["val"].iterdir())[0]
    for c, inputs in (("regular", first), ("dcnv2_mimic", world["val"])):  # a file, a folder
        out = world["root"] / "pred" / c
        assert main(["predict", str(runs / c), str(inputs), "--out", str(out), "--score-thresh", "0",
                     "--max-detections", "2"]) == 0
        preds = json.loads((out / "predictions.json").read_text())
        assert len(preds) == (1 if c == "regular" else 2) and all(len(p["detections"]) == 2 for p in preds)
        assert all(Path(p["figure"]).stat().st_size > 1000 for p in preds)

    # the instruments behind the figure: 3 stacked deformable layers (9^3 points) and 7x7 moved bins for dcnv2
    from dcn_lessons.detection.cli import load_run
    from dcn_lessons.detection.predict import predict, read_image

    model, _ = load_run(str(mimic))
    image = read_image(first)
    pred = predict(model, image, 64, 128, score_thresh=0.0, max_detections=2)
    assert len(pred.layers) == 3 and len(pred.samples) == len(pred.bins) == 2
    assert pred.samples[0].points[-1].shape == (729, 2) and pred.bins[0].boxes.shape == (7, 7, 4)
    plain, _ = load_run(str(runs / "regular"))
    p0 = predict(plain, image, 64, 128, score_thresh=0.0, max_detections=2)
    assert p0.samples == [] and p0.bins == [] and len(p0.boxes) == 2
    assert torch.allclose(p0.boxes_original, p0.boxes)  # 64-pixel files at test size 64: nothing to map back


def test_evaluate_refuses_a_data_set_of_other_categories(world, capsys, tmp_path):
    run = world["root"] / "runs" / "regular"
    if not (run / "checkpoint.pt").exists():
        assert main(_train_argv(world, "regular", run, 1)) == 0
    other = tmp_path / "other"
    assert main(["make-data", "--out", str(other), "--train", "0", "--val", "2", "--test", "0", "--image-size", "64",
                 "--spec", str(_write(tmp_path / "spec.json", {"classes": ["0", "1"]})), "--quiet"]) == 0
    capsys.readouterr()
    code = main(["evaluate", str(run), "--data-root", str(other / "val"), "--ann-file",
                 str(other / "annotations" / "instances_val.json"), "--quiet"])
    assert code == 2 and "trained on the categories" in capsys.readouterr().err


def test_train_data_auto_reads_the_written_split_when_there_is_one_else_draws(tmp_path, monkeypatch):
    """``--train-data auto`` (the default): the files make-data wrote, or fresh images when it wrote none;
    ``fly`` and ``files`` force either (``files`` without files is the loader's error, naming the file)."""
    from dcn_lessons.detection.cli import train_dataset
    from dcn_lessons.detection.coco import CocoDetection, SyntheticDetection
    from dcn_lessons.detection.config import load_config

    cfg = load_config(tiny_config(tmp_path, "regular"))
    monkeypatch.setenv("DCN_LESSONS_DATA", str(tmp_path / "data"))
    parser = build_parser()

    def dataset(*extra: str):
        args = parser.parse_args(["train", *extra])
        return train_dataset(cfg, args, 0)

    assert parser.parse_args(["train"]).train_data == "auto"
    ds, info = dataset()
    assert isinstance(ds, SyntheticDetection) and info["source"] == "synthetic on the fly"
    with pytest.raises(Exception, match="instances_train.json"):
        dataset("--train-data", "files")
    assert main(["make-data", "--train", "3", "--val", "1", "--test", "0", "--image-size", "64", "--workers", "1",
                 "--quiet"]) == 0
    ds, info = dataset()
    assert isinstance(ds, CocoDetection) and info["source"] == "synthetic files" and len(ds) == 3
    ds, info = dataset("--train-data", "fly")
    assert isinstance(ds, SyntheticDetection)
    ds, info = dataset("--train-images", "5")                     # a count of drawn images means drawing them
    assert isinstance(ds, SyntheticDetection) and len(ds) == 5


def _write(path: Path, obj) -> Path:
    path.write_text(json.dumps(obj))
    return path


# -------------------------------------------------------------------------------------------- SIGKILL
def _cli(argv: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "dcn_lessons.detection.cli", *argv], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_sigkill_at_a_random_iteration_then_resume_gives_the_same_weights(world):
    """``train`` in a real process, killed with SIGKILL at a random step after the first checkpoint, then
    ``train --resume`` in a new process (with a DataLoader worker this time: prefetching must change nothing)
    ends bit-identical to an uninterrupted run: on-the-fly data order, the model's random sampling (anchors,
    RoIs), momentum, schedule and metrics included."""
    root = world["root"]
    assert main(_train_argv(world, "regular", root / "ref", 5, "--checkpoint-every", "2", "--no-eval")) == 0
    kill_at = random.randint(3, 4)
    out = root / "killed"
    proc = _cli(_train_argv(world, "regular", out, 5, "--checkpoint-every", "2", "--no-eval"))
    try:
        start = time.monotonic()
        while not any(r.get("iteration") == kill_at for r in read_metrics(out / "metrics.jsonl")):
            assert proc.poll() is None, f"the run ended before iteration {kill_at}:\n{proc.stdout.read()}"
            assert time.monotonic() - start < 120, f"iteration {kill_at} not reached in 120 s"
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert load_checkpoint(out / "checkpoint.pt")["iteration"] in (2, 4)
    resumed = _cli(_train_argv(world, "regular", out, 5, "--checkpoint-every", "2", "--no-eval", "--resume",
                               workers=1))
    log, _ = resumed.communicate(timeout=180)
    assert resumed.returncode == 0, log
    a, b = load_checkpoint(root / "ref" / "checkpoint.pt"), load_checkpoint(out / "checkpoint.pt")
    assert b["iteration"] == 5
    diff = [k for k in a["model"] if not torch.equal(a["model"][k], b["model"][k])]
    assert not diff, f"killed at iteration {kill_at}: weights differ in {diff}"
    for k, s in a["optimizer"]["state"].items():
        assert torch.equal(s["momentum_buffer"], b["optimizer"]["state"][k]["momentum_buffer"])
    ra, rb = read_metrics(root / "ref" / "metrics.jsonl"), read_metrics(out / "metrics.jsonl")
    assert [r["iteration"] for r in rb] == list(range(1, 6))
    assert [r["loss"] for r in ra] == [r["loss"] for r in rb]


# --------------------------------------------------------------------------------------------- ablate
def test_ablate_writes_the_tables_and_does_not_train_a_finished_run_again(world, tmp_path, capsys):
    argv = ["ablate", "--configs", str(world["configs"]["regular"]), "--seeds", "0", "1", "--iterations", "1",
            "--batch-size", "1", "--workers", "0", "--runs", str(tmp_path / "runs"), "--results",
            str(tmp_path / "results"), "--quiet"]
    assert main(argv) == 0
    md = (tmp_path / "results" / "ablation.md").read_text()
    assert "| tiny_regular | 2 | 1 |" in md and "±" in md
    runs = (tmp_path / "results" / "ablation_runs.csv").read_text().splitlines()
    assert len(runs) == 3 and runs[0].startswith("config,seed,AP,AP50,AP75,APs,APm,APl,params,flops")
    assert (tmp_path / "results" / "ablation.png").stat().st_size > 1000
    done = tmp_path / "runs" / "tiny_regular" / "seed1" / "result.json"
    stamp = done.stat().st_mtime_ns
    record = json.loads(done.read_text())
    assert record["params"] > 1e5 and record["flops"] > 1e6 and record["iterations"] == 1
    capsys.readouterr()
    assert main(argv) == 0
    assert done.stat().st_mtime_ns == stamp and "train tiny_regular" not in capsys.readouterr().out


def test_the_offsets_script_measures_every_deformable_layer_of_the_runs(world, tmp_path, capsys):
    """benchmarks/capstone_offsets.py on tiny runs: one row per deformable layer with its learning-rate multiplier,
    a mask column for the modulated ones, plain runs skipped; a folder with no deformable run is an error."""
    import importlib.util

    from dcn_lessons.detection.cli import load_run
    from dcn_lessons.ops.layers import DeformConv2dPack, ModulatedDeformConv2dPack

    spec = importlib.util.spec_from_file_location("capstone_offsets", REPO / "benchmarks" / "capstone_offsets.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    runs = tmp_path / "runs"
    for config in ("regular", "dcnv2"):
        assert main(_train_argv(world, config, runs / config / "seed0", 1, "--no-eval")) == 0
    assert script.main(["--runs", str(runs), "--images", "2", "--results", str(tmp_path)]) == 0
    rows = [r.split(" | ") for r in (tmp_path / "capstone_offsets.md").read_text().splitlines()
            if r.startswith("| dcnv2 |")]
    model, _ = load_run(str(runs / "dcnv2" / "seed0"))
    convs = [n for n, m in model.named_modules() if isinstance(m, DeformConv2dPack)]
    assert all(isinstance(m, ModulatedDeformConv2dPack) for n, m in model.named_modules() if n in convs)
    assert [r[1].strip("`") for r in rows] == convs + ["roi_head.pool"]
    for r in rows:
        mult, offset, mask = float(r[2]), float(r[3]), r[4]
        assert mult == 0.1 and 0 <= offset < 0.1  # one step from zero
        assert (mask == "–") == (r[1] == "`roi_head.pool`")
        if mask != "–":
            assert abs(float(mask) - 0.5) < 0.05
    assert "| regular |" not in (tmp_path / "capstone_offsets.md").read_text()
    shutil.copytree(runs / "regular", tmp_path / "plain" / "regular")
    assert script.main(["--runs", str(tmp_path / "plain"), "--results", str(tmp_path / "none")]) == 1
    assert "no deformable run" in capsys.readouterr().err
