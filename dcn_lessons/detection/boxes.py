"""Box arithmetic of Faster R-CNN: areas, IoU, the box coding of R-CNN, clipping and non-maximum suppression.

Boxes are ``(x1, y1, x2, y2)`` in continuous pixel coordinates (pixel edges, as the data loader gives them: a
pixel ``(i, j)`` spans ``[j, j + 1) x [i, i + 1)``), so a box is ``x2 - x1`` wide, with no "+1". Every function
broadcasts over leading dimensions: ``[..., 4]`` boxes, ``[B, n, 4]`` for a batch of images padded to ``n``.

* :func:`box_area`, :func:`box_iou` -- area and intersection over union;
* :func:`encode_boxes`, :func:`decode_boxes` -- the parametrisation of R-CNN (Girshick et al., 2014, App. C;
  Faster R-CNN Eq. 2), with weights and the clamp of ``dw, dh`` used by every Faster R-CNN implementation
  (torchvision's ``BoxCoder``, Detectron, DCNv1's released code as "BBOX_STDS");
* :func:`clip_boxes` -- clip to each image's ``(h, w)``;
* :func:`nms` and :func:`batched_nms` (torchvision's ``nms``/``batched_nms`` semantics), and
  :func:`nms_mask`, the fixed-shape form the detector uses on padded batches.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

__all__ = [
    "BBOX_XFORM_CLIP",
    "box_area",
    "box_iou",
    "encode_boxes",
    "decode_boxes",
    "clip_boxes",
    "nms_mask",
    "nms",
    "batched_nms",
]

#: Largest ``dw``/``dh`` a decoded box may take: a box grows at most 1000/16 = 62.5 times per side (torchvision,
#: Detectron, mmdetection), so that an untrained regressor cannot overflow ``exp``.
BBOX_XFORM_CLIP = math.log(1000.0 / 16)


def box_area(boxes: Tensor) -> Tensor:
    """``(x2 - x1) * (y2 - y1)``: ``[..., 4]`` -> ``[...]`` (negative sizes are not clamped: callers keep boxes
    ordered)."""
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """Intersection over union of every pair: ``a [..., N, 4]``, ``b [..., M, 4]`` -> ``[..., N, M]``.

    ``IoU = |a ∩ b| / |a ∪ b|``, with leading dimensions broadcast (``[B, N, 4]`` against ``[B, M, 4]`` gives
    ``[B, N, M]``). Boundary: two boxes whose union has zero area (both degenerate) have IoU 0, not NaN
    (torchvision's ``box_iou`` returns NaN there); boxes that only touch have IoU 0.
    """
    area_a = box_area(a)[..., :, None]
    area_b = box_area(b)[..., None, :]
    lt = torch.maximum(a[..., :, None, :2], b[..., None, :, :2])
    rb = torch.minimum(a[..., :, None, 2:], b[..., None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area_a + area_b - inter
    return torch.where(union > 0, inter / union.clamp(min=torch.finfo(inter.dtype).tiny), torch.zeros_like(inter))


def _centre_size(boxes: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    w = boxes[..., 2] - boxes[..., 0]
    h = boxes[..., 3] - boxes[..., 1]
    return boxes[..., 0] + 0.5 * w, boxes[..., 1] + 0.5 * h, w, h


def encode_boxes(targets: Tensor, references: Tensor, weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0)) -> Tensor:
    """Regression targets of ``targets`` relative to ``references`` (R-CNN App. C, Faster R-CNN Eq. 2).

    With centres ``(x, y)``, sizes ``(w, h)`` of the target and ``(x_r, y_r, w_r, h_r)`` of the reference:
    ``t = (wx·(x − x_r)/w_r, wy·(y − y_r)/h_r, ww·log(w/w_r), wh·log(h/h_r))``. The weights ``(wx, wy, ww, wh)``
    are 1 for the RPN and ``(10, 10, 5, 5)`` for the RoI head (the inverse of DCNv1's ``BBOX_STDS`` 0.1/0.2:
    targets of about unit variance), as torchvision's ``BoxCoder``.

    Shapes: ``targets [..., 4]`` and ``references [..., 4]`` (broadcast) -> ``[..., 4]``. Boundary: references
    must have positive sizes (anchors and proposals do); a degenerate target gives ``-inf`` in ``dw``/``dh``.
    """
    wx, wy, ww, wh = weights
    x, y, w, h = _centre_size(targets)
    xr, yr, wr, hr = _centre_size(references)
    return torch.stack((wx * (x - xr) / wr, wy * (y - yr) / hr, ww * torch.log(w / wr), wh * torch.log(h / hr)), -1)


def decode_boxes(deltas: Tensor, references: Tensor, weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
                 clamp: float = BBOX_XFORM_CLIP) -> Tensor:
    """The inverse of :func:`encode_boxes`: boxes from regression outputs ``deltas`` on ``references``.

    ``x = dx/wx·w_r + x_r``, ``w = exp(min(dw/ww, clamp))·w_r`` (likewise y, h), returned as
    ``(x − w/2, y − h/2, x + w/2, y + h/2)``. The clamp (``log(1000/16)``) keeps ``exp`` finite for an untrained
    regressor. ``decode_boxes(encode_boxes(t, r, wts), r, wts) == t`` up to rounding whenever the target's
    ``dw, dh`` are below the clamp.

    Shapes: ``deltas [..., 4]``, ``references [..., 4]`` (broadcast) -> ``[..., 4]``.
    """
    wx, wy, ww, wh = weights
    xr, yr, wr, hr = _centre_size(references)
    dx, dy = deltas[..., 0] / wx, deltas[..., 1] / wy
    dw = (deltas[..., 2] / ww).clamp(max=clamp)
    dh = (deltas[..., 3] / wh).clamp(max=clamp)
    x, y = dx * wr + xr, dy * hr + yr
    w, h = torch.exp(dw) * wr, torch.exp(dh) * hr
    return torch.stack((x - 0.5 * w, y - 0.5 * h, x + 0.5 * w, y + 0.5 * h), -1)


def clip_boxes(boxes: Tensor, sizes: Tensor) -> Tensor:
    """Clip boxes into their image: x into ``[0, w]``, y into ``[0, h]``.

    Shapes: ``boxes [..., 4]`` and ``sizes [..., 2]`` rows ``(h, w)`` broadcast against ``boxes[..., :2]``
    (``[B, n, 4]`` with ``[B, 1, 2]``). An ordered box stays ordered (possibly with zero width).
    """
    h = sizes[..., 0:1].to(boxes.dtype)
    w = sizes[..., 1:2].to(boxes.dtype)
    x = torch.minimum(boxes[..., 0::2].clamp(min=0), w)
    y = torch.minimum(boxes[..., 1::2].clamp(min=0), h)
    return torch.stack((x[..., 0], y[..., 0], x[..., 1], y[..., 1]), -1)


#: Rows of the pairwise IoU test held at once by :func:`nms_mask` (bounds its memory for thousands of boxes).
_NMS_CHUNK = 1024

#: Rounds of the parallel iteration :func:`nms_mask` tries before it falls back to the sequential pass.
_NMS_ROUNDS = 32


def nms_mask(boxes: Tensor, iou_threshold: float, valid: Tensor | None = None) -> Tensor:
    """Greedy non-maximum suppression on boxes already sorted by decreasing score, as a keep mask.

    Greedy NMS keeps box ``i`` when it is valid and no *kept* box ``j < i`` overlaps it with
    ``IoU(j, i) > iou_threshold`` (strictly greater, as torchvision):
    ``keep[i] = valid[i] and not any_{j<i} (keep[j] and over[j, i])``. Each entry depends only on earlier ones,
    so this equation has exactly one solution, and iterating it from ``keep = valid`` reaches it: after ``t``
    rounds the first ``t`` entries are final, and a round that changes nothing has found it. Each round is one
    vectorised step over all boxes of all images, and the rounds needed are the length of the longest chain of
    boxes whose fate depends on the one before: 9 for 6000 anchors with random scores, 16 when the scores fall
    smoothly away from an object (the paper-sized RPN at 1000 x 1333 pixels, measured). After :data:`_NMS_ROUNDS` rounds without convergence it finishes with the plain sequential pass
    (one step per box), so the result is always exact.

    Args:
        boxes: ``[..., n, 4]`` sorted by decreasing score along ``n`` (e.g. the output of ``topk``).
        iou_threshold: suppress above this IoU.
        valid: ``[..., n]`` bool, or None (all valid); an invalid box is never kept and suppresses nothing.

    Returns:
        ``[..., n]`` bool keep mask. (Memory: the ``[..., n, n]`` overlap table as bools.)
    """
    n = boxes.shape[-2]
    valid = torch.ones(boxes.shape[:-1], dtype=torch.bool, device=boxes.device) if valid is None else valid
    if n == 0:
        return valid.clone()
    # over[..., j, i]: box j would suppress box i (j before i and IoU above the threshold)
    later = torch.ones(n, n, dtype=torch.bool, device=boxes.device).triu(1)
    over = torch.empty(boxes.shape[:-2] + (n, n), dtype=torch.bool, device=boxes.device)
    for s in range(0, n, _NMS_CHUNK):
        over[..., s:s + _NMS_CHUNK, :] = (box_iou(boxes[..., s:s + _NMS_CHUNK, :], boxes) > iou_threshold) \
            & later[s:s + _NMS_CHUNK]
    keep = valid
    for _ in range(_NMS_ROUNDS):
        new = valid & ~(keep[..., :, None] & over).any(dim=-2)
        if torch.equal(new, keep):
            return keep
        keep = new
    keep = valid.clone()
    for j in range(n):
        keep &= ~(over[..., j, :] & keep[..., j:j + 1])
    return keep


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Non-maximum suppression with ``torchvision.ops.nms``'s semantics.

    Args:
        boxes: ``[n, 4]``; scores: ``[n]``; iou_threshold: discard a box whose IoU with a higher-scoring kept
            box is greater than this.

    Returns:
        ``[k]`` int64 indices of the kept boxes, by decreasing score (ties: the lower index first).
    """
    if boxes.ndim != 2 or boxes.shape[-1] != 4 or scores.shape != boxes.shape[:1]:
        raise ValueError(f"boxes, scores: expected [n, 4] and [n], got {list(boxes.shape)} and {list(scores.shape)}")
    order = torch.argsort(scores, descending=True, stable=True)
    return order[nms_mask(boxes[order], iou_threshold)]


#: Above this many boxes :func:`batched_nms` runs one NMS per class instead of one on all boxes (the pairwise
#: IoU of all boxes grows as n^2).
_BATCHED_NMS_LOOP_ABOVE = 2000


def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """NMS done independently per category ``idxs`` (``torchvision.ops.batched_nms``'s semantics).

    Boxes of different categories never suppress each other: each category is moved to its own region of the
    plane (coordinates offset by ``idx * (max coordinate + 1)``) and one NMS runs on all, or, above
    2000 boxes, one NMS per category.

    Shapes: ``boxes [n, 4]``, ``scores [n]``, ``idxs [n]`` int -> ``[k]`` int64 indices by decreasing score.
    """
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.int64, device=boxes.device)
    if idxs.shape != scores.shape:
        raise ValueError(f"idxs: expected shape {list(scores.shape)} (one category per box), got {list(idxs.shape)}")
    if boxes.shape[0] <= _BATCHED_NMS_LOOP_ABOVE:
        offsets = idxs.to(boxes) * (boxes.max() - boxes.min() + 1)
        return nms(boxes + offsets[:, None], scores, iou_threshold)
    keep = torch.zeros_like(scores, dtype=torch.bool)
    for c in torch.unique(idxs):
        members = torch.nonzero(idxs == c).flatten()
        keep[members[nms(boxes[members], scores[members], iou_threshold)]] = True
    kept = torch.nonzero(keep).flatten()
    return kept[torch.argsort(scores[kept], descending=True, stable=True)]
