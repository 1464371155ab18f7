"""Many processes through torchrun and DistributedDataParallel, on the CPU with gloo and 2 processes: ranks hold
identical weights after steps, only rank 0 writes files, and evaluation gathers every rank's detections into
one COCOeval (the same detections as one process finds alone)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

CHILD = """
import json, sys
from pathlib import Path
import torch
sys.path.insert(0, {here!r})
from test_detection_engine import SPEC, tiny_config
from dcn_lessons.detection import SyntheticDetection
from dcn_lessons.detection import distributed as D
from dcn_lessons.detection.checkpoint import seed_everything
from dcn_lessons.detection.config import load_config
from dcn_lessons.detection.engine import TrainConfig, train
from dcn_lessons.detection.evaluate import evaluate
from dcn_lessons.detection.model import DeformableFasterRCNN

info = D.init_distributed("cpu")
assert info.world_size == 2 and info.backend == "gloo", info
out = Path(sys.argv[1])
seed_everything(info.rank)  # different initial weights on each rank: DDP must broadcast rank 0's
model = DeformableFasterRCNN(load_config(out / "tiny_regular.toml"))
val = SyntheticDetection("val", length=5, spec=SPEC)
run = out / f"run{{info.rank}}"  # each rank is given its own folder: only rank 0's may receive files
cfg = TrainConfig(iterations=3, batch_size=1, lr=0.01, warmup_iters=1, log_every=1, checkpoint_every=2)
res = train(model, SyntheticDetection("train", length=7, spec=SPEC), cfg, run, progress=False,
            evaluate=lambda net, it: evaluate(net, val, run, batch_size=2))
torch.save(model.state_dict(), out / f"weights{{info.rank}}.pt")
(out / f"summary{{info.rank}}.json").write_text(json.dumps(res.evaluation))
D.shutdown()
"""


def test_torchrun_two_gloo_processes(tmp_path):
    from test_detection_engine import tiny_config

    tiny_config(tmp_path)
    script = tmp_path / "child.py"
    script.write_text(CHILD.format(here=str(HERE)))
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           str(script), str(tmp_path)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    w0, w1 = (torch.load(tmp_path / f"weights{r}.pt") for r in (0, 1))
    assert all(torch.equal(w0[k], w1[k]) for k in w0), "ranks hold different weights after the steps"
    assert not (tmp_path / "run1").exists(), f"rank 1 wrote {list((tmp_path / 'run1').rglob('*'))}"
    run0 = tmp_path / "run0"
    assert {p.name for p in run0.iterdir()} >= {"checkpoint.pt", "metrics.jsonl", "metrics.png", "detections.json",
                                                 "summary.json"}
    from dcn_lessons.detection.checkpoint import load_checkpoint
    from dcn_lessons.detection.engine import read_metrics

    state = load_checkpoint(run0 / "checkpoint.pt")
    assert state["world_size"] == 2 and len(state["rng"]) == 2 and state["images_seen"] == 3 * 1 * 2
    assert all(torch.equal(state["model"][k], w0[k]) for k in w0)
    assert [r["iteration"] for r in read_metrics(run0 / "metrics.jsonl") if "loss" in r] == [1, 2, 3]

    # evaluation: the gathered detections are those one process finds with the same weights, on all images
    from test_detection_engine import SPEC

    from dcn_lessons.detection import SyntheticDetection
    from dcn_lessons.detection.config import load_config
    from dcn_lessons.detection.evaluate import evaluate
    from dcn_lessons.detection.model import DeformableFasterRCNN

    s0, s1 = (json.loads((tmp_path / f"summary{r}.json").read_text()) for r in (0, 1))
    assert s0 == s1 and s0["images"] == 5
    model = DeformableFasterRCNN(load_config(tmp_path / "tiny_regular.toml"))
    model.load_state_dict(w0)
    alone = evaluate(model, SyntheticDetection("val", length=5, spec=SPEC), tmp_path / "alone", batch_size=2)
    gathered = json.loads((run0 / "detections.json").read_text())
    single = json.loads((tmp_path / "alone" / "detections.json").read_text())
    assert [(r["image_id"], r["category_id"]) for r in gathered] == [(r["image_id"], r["category_id"]) for r in single]
    for a, b in zip(gathered, single):
        assert a["bbox"] == pytest.approx(b["bbox"], abs=1e-4) and a["score"] == pytest.approx(b["score"], abs=1e-5)
    assert s0["AP"] == pytest.approx(alone["AP"], abs=1e-6)
