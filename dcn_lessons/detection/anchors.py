"""Anchors of the RPN (Faster R-CNN §3.1.1): ``k`` reference boxes of several scales and aspect ratios at every
position of the feature map.

At a stride-``s`` map (conv4, ``s = 16``), feature cell ``(i, j)`` covers image pixels ``[s·j, s·(j+1)) x
[s·i, s·(i+1))``, and its anchors are centred on that cell: at ``((j + 0.5)·s, (i + 0.5)·s)``, the point the
course's RoI rule maps back to cell ``(i, j)`` exactly (image x ↦ ``x/s − 0.5``). (torchvision puts them at
``(j·s, i·s)``, the cell's corner; DCNv1's released code, with its "+1" pixel convention, at ``(j·s + 7.5, ...)``.)
An anchor of size ``a`` and aspect ratio ``r = h/w`` is ``a/√r`` wide and ``a·√r`` high: its area is ``a²``.

The papers' anchors: sizes 32, 64, 128, 256, 512 (DCNv1's COCO setting; Faster R-CNN has 128-512) and ratios
0.5, 1, 2: 15 per position.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

__all__ = ["base_anchors", "grid_anchors"]


def base_anchors(sizes: Sequence[float], aspect_ratios: Sequence[float], dtype: torch.dtype = torch.float32,
                 device: torch.device | str | None = None) -> Tensor:
    """The ``k = len(aspect_ratios)·len(sizes)`` anchors of one position, centred at the origin.

    Returns ``[k, 4]`` rows ``(−w/2, −h/2, w/2, h/2)`` with ``w = a/√r``, ``h = a·√r``, ordered ratio-major
    (all sizes of the first ratio, then the next ratio), as torchvision's ``AnchorGenerator`` (unrounded).
    """
    if not sizes or not aspect_ratios or any(not (a > 0) for a in sizes) or any(not (r > 0) for r in aspect_ratios):
        raise ValueError(f"sizes, aspect_ratios: expected positive numbers, got {list(sizes)} and {list(aspect_ratios)}")
    rows = []
    for r in aspect_ratios:
        for a in sizes:
            w, h = a / math.sqrt(r), a * math.sqrt(r)
            rows.append((-w / 2, -h / 2, w / 2, h / 2))
    return torch.tensor(rows, dtype=dtype, device=device)


def grid_anchors(base: Tensor, feature_size: tuple[int, int], stride: int) -> Tensor:
    """Every anchor of a ``h x w`` feature map of stride ``stride``: ``[h·w·k, 4]``.

    Row ``(i·w + j)·k + a`` is base anchor ``a`` centred at ``((j + 0.5)·stride, (i + 0.5)·stride)``: the order
    of an RPN output ``[B, k, h, w]`` permuted to ``[B, h, w, k]`` and flattened.
    """
    h, w = feature_size
    ys = (torch.arange(h, dtype=base.dtype, device=base.device) + 0.5) * stride
    xs = (torch.arange(w, dtype=base.dtype, device=base.device) + 0.5) * stride
    cy, cx = torch.meshgrid(ys, xs, indexing="ij")
    centres = torch.stack((cx, cy, cx, cy), dim=-1).reshape(h * w, 1, 4)
    return (centres + base[None]).reshape(-1, 4)
