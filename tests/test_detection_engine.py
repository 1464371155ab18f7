"""The training engine (dcn_lessons.detection.engine, checkpoint, evaluate): settings, schedule, data order,
atomic files, non-finite losses, resume checks, COCO evaluation; on the real detector at 64 pixels.

The SIGKILL-and-resume test runs the command line (test_detection_cli.py); torchrun with 2 processes is in
test_detection_ddp.py. Both use :func:`tiny_config` from here.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from dcn_lessons.detection import SyntheticDetection, SynthSpec
from dcn_lessons.detection.checkpoint import (
    CheckpointError,
    atomic_write,
    atomic_write_text,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    seed_everything,
    set_rng_state,
)
from dcn_lessons.detection.config import CONFIG_DIR, load_config
from dcn_lessons.detection.engine import (
    NonFiniteLossError,
    TrainConfig,
    TrainSampler,
    WarmupMultiStep,
    build_optimizer,
    read_metrics,
    train,
)
from dcn_lessons.detection.evaluate import COCO_AREA_RANGES, area_ranges, coco_evaluate, evaluate, ground_truth
from dcn_lessons.detection.model import DeformableFasterRCNN

#: The tests' images: 64 pixels, one or two objects (the configs' anchors cover 12-96 pixels).
SPEC = SynthSpec(image_size=(64, 64), objects=(1, 2), distractors=(0, 1))


def tiny_config(folder: Path, base: str = "regular") -> Path:
    """A config file extending the shipped ``base`` with 64-pixel inputs (the tests' images), in ``folder``."""
    path = Path(folder) / f"tiny_{base}.toml"
    path.write_text(f'''extends = "{(CONFIG_DIR / base).as_posix()}"
name = "tiny_{base}"
[input]
train_sizes = [64]
test_size = 64
max_size = 128
''')
    return path


class Poisoned(nn.Module):
    """The detector, with one loss term multiplied by ``inf`` at call ``at`` (1-based) of training (0: never)."""

    def __init__(self, model: nn.Module, at: int, term: str = "loss_box") -> None:
        super().__init__()
        self.model, self.at, self.term, self.calls = model, at, term, 0

    def forward(self, images, targets):
        out = self.model(images, targets)
        self.calls += 1
        if self.calls == self.at:
            out[self.term] = out[self.term] * float("inf")
        return out

    def param_groups(self, base_lr):
        return self.model.param_groups(base_lr)


def tiny_run(out: Path, resume: bool = False, poison: int = 0, evaluate=None, **changes):
    """Steps of one 64-pixel image on the regular config; a checkpoint every 2 steps, a metrics line every step."""
    seed_everything(0)
    model = DeformableFasterRCNN(load_config(tiny_config(out.parent)))
    net = Poisoned(model, poison)  # always wrapped: the checkpoint's keys do not depend on ``poison``
    data = SyntheticDetection("train", length=5, spec=SPEC)
    cfg = TrainConfig(iterations=6, batch_size=1, lr=0.01, warmup_iters=1, log_every=1, checkpoint_every=2,
                      plot=False).replace(**changes)
    return model, train(net, data, cfg, out, resume=resume, progress=False, evaluate=evaluate)


# ----------------------------------------------------------------------------------------------- config
def test_train_config_checks_every_key_and_round_trips():
    cfg = TrainConfig.from_dict({"iterations": 30, "lr_steps": [0.5, 0.75], "lr_rules": {"roi.*": 0.01}})
    assert cfg.lr_steps == (0.5, 0.75) and cfg.step_iterations() == [15, 22]
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match=r"configs/x.toml \[train\]: unknown key\(s\) \['itterations'\]"):
        TrainConfig.from_dict({"itterations": 3}, source="configs/x.toml [train]")
    for bad, key in (({"lr": 0}, "lr"), ({"batch_size": 2.5}, "batch_size"), ({"lr_steps": [0.9, 0.5]}, "lr_steps"),
                     ({"amp": "yes"}, "amp"), ({"lr_rules": {"a": -1}}, "lr_rules"), ({"momentum": 2}, "momentum")):
        with pytest.raises(ValueError, match=rf"\[train\]: {key}"):
            TrainConfig.from_dict(bad)


def test_warmup_multistep_factor_by_hand():
    f = WarmupMultiStep([6, 8], gamma=0.1, warmup_iters=4, warmup_factor=0.2)
    assert [round(f(t), 10) for t in (0, 2, 4, 5, 6, 7, 8, 9)] == [0.2, 0.6, 1, 1, 0.1, 0.1, 0.01, 0.01]


def test_optimizer_takes_the_models_groups_scales_the_rate_and_skips_frozen_parameters():
    model = DeformableFasterRCNN("dcnv2")
    model.roi_head.cls_score.bias.requires_grad_(False)
    cfg = TrainConfig.from_solver(model.cfg.solver, batch_size=4)  # half the reference batch: half the rate
    opt = build_optimizer(model, cfg, world_size=1)
    rates = {n: g["lr"] for g in opt.param_groups for n in g["param_names"]}
    lr = model.cfg.solver.lr / 2
    assert rates["backbone.body.conv1.weight"] == pytest.approx(lr)
    assert rates["backbone.body.layer4.0.conv2.conv_offset.weight"] == pytest.approx(lr * model.cfg.solver.offset_lr_mult)
    assert rates["roi_head.pool.offset_fc.0.weight"] == pytest.approx(lr * model.cfg.solver.roi_offset_lr_mult)
    assert "roi_head.cls_score.bias" not in rates
    assert cfg.momentum == model.cfg.solver.momentum and cfg.step_iterations() == \
        [round(f * model.cfg.solver.iterations) for f in model.cfg.solver.steps]


# ----------------------------------------------------------------------------------------------- sampler
def test_sampler_epochs_are_permutations_ranks_partition_and_start_continues_the_stream():
    n, world = 7, 2
    streams = []
    for rank in range(world):
        it = iter(TrainSampler(n, seed=3, rank=rank, world_size=world))
        streams.append([next(it) for _ in range(3 * 4)])  # per_rank = 4: three epochs
    for e in range(3):
        items = [i for s in streams for (ep, i) in s if ep == e]
        assert len(items) == 8 and set(items) == set(range(n))  # padded by one repeat
    again = iter(TrainSampler(n, seed=3, rank=1, world_size=world, start=5))
    assert [next(again) for _ in range(7)] == streams[1][5:12]
    other = iter(TrainSampler(n, seed=4))
    assert [next(other) for _ in range(7)] != [p for p in streams[0][:7]]


# ----------------------------------------------------------------------------------------------- files
def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "f.json"
    atomic_write_text(path, "old")

    def broken(f):
        f.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, broken)
    assert path.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["f.json"]


def test_load_checkpoint_refuses_missing_truncated_and_foreign_files(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "none.pt")
    good = save_checkpoint(tmp_path / "good.pt", {"iteration": 3})
    assert load_checkpoint(good)["iteration"] == 3
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=r"cut.pt: cannot read the checkpoint"):
        load_checkpoint(cut)
    torch.save({"model": {}}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match=r"foreign.pt: not a dcn_lessons detection checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")


def test_rng_state_round_trip():
    seed_everything(5)
    state = rng_state()
    a = (random.random(), np.random.rand(), torch.rand(2))
    set_rng_state(state)
    b = (random.random(), np.random.rand(), torch.rand(2))
    assert a[:2] == b[:2] and torch.equal(a[2], b[2])


def test_read_metrics_ignores_a_cut_last_line_only(tmp_path):
    p = tmp_path / "m.jsonl"
    p.write_text('{"iteration": 1}\n{"iteration": 2}\n{"itera')
    assert [r["iteration"] for r in read_metrics(p)] == [1, 2]
    p.write_text('{"iteration": 1}\nnot json\n{"iteration": 3}\n')
    with pytest.raises(ValueError, match="line 2 is not JSON"):
        read_metrics(p)


# ------------------------------------------------------------------------------------------- resume
def test_resume_refuses_other_settings_and_a_run_in_the_way(tmp_path):
    out = tmp_path / "run"
    tiny_run(out, iterations=1)
    with pytest.raises(CheckpointError, match="a run is already there"):
        tiny_run(out, iterations=1)
    with pytest.raises(CheckpointError, match=r"settings differ \(lr = 0.01 there, 0.1 now"):
        tiny_run(out, resume=True, iterations=1, lr=0.1)
    _, again = tiny_run(out, resume=True, iterations=1, log_every=2)  # logging may change; nothing left to do
    assert again.iteration == 1


def test_a_finished_run_resumed_without_its_evaluation_on_record_is_evaluated_once(tmp_path):
    out, calls = tmp_path / "run", []

    def evaluate_fn(net, iteration):
        calls.append(iteration)
        return {"AP": 0.5, "table": "not logged"}

    tiny_run(out, iterations=2)  # no evaluation
    _, res = tiny_run(out, resume=True, iterations=2, evaluate=evaluate_fn)
    assert calls == [2] and res.evaluation["AP"] == 0.5
    assert read_metrics(out / "metrics.jsonl")[-1] == {"iteration": 2, "eval": {"AP": 0.5}}
    _, res = tiny_run(out, resume=True, iterations=2, evaluate=evaluate_fn)  # on record now: nothing to do
    assert calls == [2] and res.evaluation is None


def test_the_engine_tells_the_model_which_step_comes(tmp_path):
    """A model with ``set_iteration`` (the detector: its mimic branch starts part-way) hears of every step."""

    class Told(Poisoned):
        def __init__(self, model):
            super().__init__(model, 0)
            self.told = []

        def set_iteration(self, iteration, iterations):
            self.told.append((iteration, iterations, self.calls))

    seed_everything(0)
    net = Told(DeformableFasterRCNN(load_config(tiny_config(tmp_path))))
    cfg = TrainConfig(iterations=3, batch_size=1, lr=0.01, warmup_iters=1, plot=False)
    train(net, SyntheticDetection("train", length=5, spec=SPEC), cfg, tmp_path / "run", progress=False)
    assert net.told == [(0, 3, 0), (1, 3, 1), (2, 3, 2)]  # before each step's forward


def test_non_finite_loss_names_the_term_keeps_the_last_good_checkpoint_and_resumes_from_it(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(NonFiniteLossError, match=r"loss term 'loss_box' is inf at iteration 4; .* last good "
                                                 r"checkpoint is .*checkpoint.pt \(iteration 2\)") as e:
        tiny_run(out, poison=4)
    assert e.value.term == "loss_box" and e.value.checkpoint_iteration == 2
    assert load_checkpoint(out / "checkpoint.pt")["iteration"] == 2
    assert [r["iteration"] for r in read_metrics(out / "metrics.jsonl")] == [1, 2, 3]  # step 4 logged nothing
    _, res = tiny_run(out, resume=True)
    assert res.iteration == 6 and [r["iteration"] for r in read_metrics(out / "metrics.jsonl")] == list(range(1, 7))
    with pytest.raises(NonFiniteLossError, match="no checkpoint was written before it"):
        tiny_run(tmp_path / "early", poison=1)


def test_amp_needs_cuda(tmp_path):
    with pytest.raises(ValueError, match="amp: mixed precision needs a CUDA device"):
        tiny_run(tmp_path / "run", amp=True)


# --------------------------------------------------------------------------------------------- evaluate
def test_coco_evaluate_of_the_ground_truth_is_perfect_and_of_nothing_is_zero():
    data = SyntheticDetection("val", length=6, spec=SPEC)
    coco, ids = ground_truth(data)
    ranges, source = area_ranges(coco)
    assert "annotation file" in source and ranges["small"][1] == pytest.approx(32 ** 2 * 64 * 64 / (640 * 480))
    assert area_ranges(coco, "coco")[0] == COCO_AREA_RANGES
    perfect = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
               for a in coco.dataset["annotations"]]
    stats, table = coco_evaluate(coco, perfect, ids, ranges)
    assert stats["AP"] == pytest.approx(1.0) and stats["AP50"] == pytest.approx(1.0) and "Average Precision" in table
    present = {c["name"] for c in coco.dataset["categories"]
               if any(a["category_id"] == c["id"] for a in coco.dataset["annotations"])}
    assert {k for k, v in stats["AP_per_class"].items() if v == pytest.approx(1.0)} == present
    empty, _ = coco_evaluate(coco, [], ids, ranges)
    assert empty["AP"] == 0.0 and set(empty["AP_per_class"].values()) <= {0.0, -1.0}


def test_evaluate_writes_results_and_summary_mapped_to_the_files(tmp_path):
    seed_everything(0)
    model = DeformableFasterRCNN(load_config(tiny_config(tmp_path)))
    data = SyntheticDetection("val", length=3, spec=SPEC)
    summary = evaluate(model, data, tmp_path / "eval", batch_size=2)
    results = json.loads((tmp_path / "eval" / "detections.json").read_text())
    assert len(results) == summary["detections"] > 0 and summary["images"] == 3
    assert {r["image_id"] for r in results} <= set(ground_truth(data)[1])
    assert {r["category_id"] for r in results} <= set(data.cat_ids)
    assert all(0 <= r["bbox"][0] and r["bbox"][0] + r["bbox"][2] <= 64 + 1e-3 for r in results)
    on_disk = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert on_disk["AP"] == summary["AP"] and set(on_disk) >= {"AP", "AP50", "AP75", "APs", "APm", "APl",
                                                              "AP_per_class", "area_ranges", "area_source"}
