"""Dump torchvision's ResNet state-dict keys and shapes to ``tests/data/torchvision_resnet_keys.json``.

Run in an environment that has torchvision (the project's does not need it):

    /path/to/python-with-torchvision tests/data/make_torchvision_resnet_keys.py

The file lists, for each of resnet18/34/50/101/152 (random init, ``weights=None``), every ``state_dict()`` key in
order with its shape, plus the torch/torchvision versions it came from. ``tests/test_models.py`` checks that
``dcn_lessons.models.resnet(depth)`` has exactly these keys, in this order, with these shapes. The file is written
to a temporary name and renamed, so an interrupted run leaves the old one intact.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
import torchvision

OUT = Path(__file__).resolve().parent / "torchvision_resnet_keys.json"
DEPTHS = (18, 34, 50, 101, 152)


def dump() -> dict:
    models = {}
    for depth in DEPTHS:
        net = getattr(torchvision.models, f"resnet{depth}")(weights=None)
        models[f"resnet{depth}"] = [[k, list(v.shape)] for k, v in net.state_dict().items()]
    return {
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "made_by": "tests/data/make_torchvision_resnet_keys.py",
        "models": models,
    }


def to_json(data: dict) -> str:
    """JSON with one key per line, so that a diff of the file reads key by key."""
    head = {k: v for k, v in data.items() if k != "models"}
    lines = ["{"] + [f"  {json.dumps(k)}: {json.dumps(v)}," for k, v in head.items()] + ['  "models": {']
    for i, (name, rows) in enumerate(data["models"].items()):
        lines.append(f"    {json.dumps(name)}: [")
        lines += [f"      {json.dumps(row)}" + ("," if j < len(rows) - 1 else "") for j, row in enumerate(rows)]
        lines.append("    ]" + ("," if i < len(data["models"]) - 1 else ""))
    lines += ["  }", "}"]
    out = "\n".join(lines) + "\n"
    assert json.loads(out) == data
    return out


def main() -> None:
    data = dump()
    fd, tmp = tempfile.mkstemp(dir=OUT.parent, prefix=OUT.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(to_json(data))
        os.chmod(tmp, 0o644)
        os.replace(tmp, OUT)
    except BaseException:
        os.unlink(tmp)
        raise
    print(f"wrote {OUT} ({', '.join(f'{k}: {len(v)} keys' for k, v in data['models'].items())})")


if __name__ == "__main__":
    main()
