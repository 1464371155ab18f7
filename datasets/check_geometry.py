"""Does geometry matter in the synthetic set? A quick measurement on the objects themselves.

The capstone asks the data set to make deformable layers earn their place. Before any detector trains, this
script measures the part of detection that deformation is about, the classification of a box's content:
every ground-truth box (with 10 % context) is cut out with the course's own ``roi_align`` into a 32 x 32 grey
crop, as a detector's RoI head sees it, and lesson 05's small CNN (``dcn_lessons.training.make_model``) learns
the 8 classes with plain convolutions or deformable ones (v1, v2 in conv2 and conv3), the same steps, seeds and
starting weights. It does so for the default spec and for a *mild* one (almost no warp, rotation, shear or
aspect change). If geometry matters, the plain network loses more than the deformable ones when the mild
geometry is replaced by the default one (``dcn_lessons.detection.synthetic.PRESETS``).

    .venv/bin/python datasets/check_geometry.py                 # about 6 minutes on 2 cores
    .venv/bin/python datasets/check_geometry.py --steps 100      # a quick look

Prints a Markdown table (test accuracy on crops of the val split; seconds of training) and, with ``--json``,
writes the numbers. A proxy, not the detector: it leaves out localisation and context.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dcn_lessons.detection.coco import SyntheticDetection  # noqa: E402
from dcn_lessons.detection.synthetic import PRESETS  # noqa: E402
from dcn_lessons.ops import roi_align  # noqa: E402
from dcn_lessons.training import evaluate, make_model, train  # noqa: E402

@dataclass
class Crops:
    """What ``dcn_lessons.training.train`` reads: ``images [n, 1, S, S]`` and ``labels [n]`` (0-based)."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def crops(spec, split: str, n_images: int, seed: int, size: int = 32) -> Crops:
    ds = SyntheticDetection(split, n_images, data_seed=seed, spec=spec, fresh=False)
    out, labels = [], []
    for i in range(n_images):
        image, t = ds[i]
        if not len(t["boxes"]):
            continue
        grey = (0.299 * image[0] + 0.587 * image[1] + 0.114 * image[2])[None, None]
        b = t["boxes"]
        c, half = (b[:, :2] + b[:, 2:]) / 2, (b[:, 2:] - b[:, :2]) / 2 * 1.1
        boxes = torch.cat([torch.zeros(len(b), 1), c - half, c + half], dim=1)
        out.append(roi_align(grey, boxes, size, sampling_ratio=2))
        labels.append(t["labels"] - 1)
    x = torch.cat(out)
    x = (x - x.mean(dim=(1, 2, 3), keepdim=True)) / (x.std(dim=(1, 2, 3), keepdim=True) + 1e-3)  # colour is no cue
    return Crops(x.contiguous(), torch.cat(labels))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=600, help="Adam steps per network (default: 600)")
    p.add_argument("--seeds", type=int, default=1, help="training seeds per network (default: 1)")
    p.add_argument("--train-images", type=int, default=1500, help="train-split images cut into crops (default 1500)")
    p.add_argument("--val-images", type=int, default=400, help="val-split images cut into crops (default 400)")
    p.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    args = p.parse_args(argv)
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    rows = []
    for name in ("mild", "default"):
        spec = PRESETS[name]
        tr = crops(spec, "train", args.train_images, 0)
        te = crops(spec, "val", args.val_images, 0)
        for variant in ("plain", "v1", "v2"):
            accs, secs = [], []
            for seed in range(args.seeds):
                model = make_model(variant, width=16, seed=seed)
                start = time.perf_counter()
                h = train(model, tr, te, steps=args.steps, batch_size=64, lr=3e-3, eval_every=max(1, args.steps // 3),
                          seed=seed)
                secs.append(time.perf_counter() - start)
                accs.append(float(np.mean(h.test_acc[-2:])) if len(h.test_acc) > 1 else evaluate(model, te))
            rows.append({"spec": name, "variant": variant, "train_crops": len(tr), "test_crops": len(te),
                         "acc": float(np.mean(accs)), "acc_runs": accs, "seconds": float(np.mean(secs))})
            print(f"{name:8s} {variant:6s} acc {rows[-1]['acc']:.3f}  ({len(tr)} train / {len(te)} test crops, "
                  f"{rows[-1]['seconds']:.1f} s)", flush=True)
    print("\n| spec | plain | v1 | v2 |\n|---|---|---|---|")
    for name in ("mild", "default"):
        r = {x["variant"]: x for x in rows if x["spec"] == name}
        print(f"| {name} | " + " | ".join(f"{r[v]['acc']:.1%} ({r[v]['seconds']:.0f} s)" for v in ("plain", "v1", "v2"))
              + " |")
    if args.json:
        Path(args.json).write_text(json.dumps({"steps": args.steps, "seeds": args.seeds, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
