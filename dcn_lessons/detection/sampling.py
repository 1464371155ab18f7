"""Matching candidates (anchors, proposals) to ground-truth boxes, and the balanced sampling of Faster R-CNN.

Both stages of Faster R-CNN train on a *sample* of their candidates: the RPN on 256 anchors per image, half
foreground at most (Faster R-CNN §3.1.3: "up to 1:1"); the RoI head on 512 RoIs per image, a quarter foreground
at most (Fast R-CNN §2.3, the DCN papers' 1:3). Everything here works on a padded batch, ``[B, n]`` candidates
against ``[B, G]`` ground-truth boxes with a validity mask, with fixed shapes and no host synchronisation
(random keys and sorting instead of ``nonzero`` and ``randperm``), so a GPU step never waits for the host here.

Labels are int64: ``1`` foreground, ``0`` background, ``-1`` ignored.
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Sequence

import torch
from torch import Tensor

from dcn_lessons.detection.boxes import box_iou

__all__ = ["GroundTruth", "pad_targets", "matched_gt", "Matches", "match_boxes", "sample_mask", "sample_indices"]


class GroundTruth(NamedTuple):
    """The ground truth of a batch, padded to the most boxes ``G`` of an image: ``boxes [B, G, 4]``,
    ``labels [B, G]`` int64 (1..C; 0 in padding), ``valid [B, G]`` bool (False in padding)."""

    boxes: Tensor
    labels: Tensor
    valid: Tensor


def pad_targets(boxes: Sequence[Tensor], labels: Sequence[Tensor], device: torch.device,
                dtype: torch.dtype = torch.float32) -> GroundTruth:
    """Pad per-image ``boxes[i] [n_i, 4]`` and ``labels[i] [n_i]`` into a :class:`GroundTruth` on ``device``
    (``G = max n_i``, possibly 0). Only shapes are read, so nothing waits for a GPU."""
    b = len(boxes)
    g = max((int(t.shape[0]) for t in boxes), default=0)
    out_boxes = torch.zeros((b, g, 4), dtype=dtype, device=device)
    out_labels = torch.zeros((b, g), dtype=torch.int64, device=device)
    valid = torch.zeros((b, g), dtype=torch.bool, device=device)
    for i, (bx, lb) in enumerate(zip(boxes, labels)):
        n = int(bx.shape[0])
        out_boxes[i, :n] = bx.detach().to(device, dtype, non_blocking=True)
        out_labels[i, :n] = lb.detach().to(device, torch.int64, non_blocking=True)
        valid[i, :n] = True
    return GroundTruth(out_boxes, out_labels, valid)


def matched_gt(gt: GroundTruth, gt_index: Tensor) -> tuple[Tensor, Tensor]:
    """The ground truth each candidate is matched to: ``gt_index [B, n]`` -> ``(boxes [B, n, 4], labels [B, n])``.

    With no ground truth in the batch (``G = 0``) the boxes are unit boxes and the labels 0 (background): never
    used as regression targets, since no candidate is then foreground."""
    if gt.boxes.shape[1] == 0:
        b, n = gt_index.shape
        unit = torch.tensor([0.0, 0.0, 1.0, 1.0], dtype=gt.boxes.dtype, device=gt.boxes.device)
        return unit.expand(b, n, 4), torch.zeros((b, n), dtype=torch.int64, device=gt_index.device)
    rows = torch.arange(gt_index.shape[0], device=gt_index.device)[:, None]
    return gt.boxes[rows, gt_index], gt.labels[rows, gt_index]


class Matches(NamedTuple):
    """What :func:`match_boxes` returns, each ``[B, n]``: ``iou`` the best IoU of each candidate with a valid
    ground-truth box (0 when the image has none), ``gt_index`` that box's index (0 when none), ``labels``
    (1 / 0 / -1)."""

    iou: Tensor
    gt_index: Tensor
    labels: Tensor


def match_boxes(candidates: Tensor, gt_boxes: Tensor, gt_valid: Tensor, fg_iou: float, bg_iou: float,
                bg_iou_low: float = 0.0, low_quality: bool = False,
                candidate_valid: Optional[Tensor] = None) -> Matches:
    """Label each candidate by its best IoU with a ground-truth box.

    * foreground (1): ``IoU >= fg_iou``; with ``low_quality`` also every candidate that has the highest IoU of
      all candidates with some ground-truth box (ties included, IoU > 0): Faster R-CNN §3.1.2's rule (i), which
      gives every object at least one positive anchor;
    * background (0): ``bg_iou_low <= IoU < bg_iou``;
    * ignored (-1): the rest, and every candidate with ``candidate_valid`` False.

    RPN: ``fg_iou=0.7, bg_iou=0.3, low_quality=True``; RoI head: ``fg_iou=0.5, bg_iou=0.5, bg_iou_low=0``.

    Args:
        candidates: ``[B, n, 4]`` boxes.
        gt_boxes: ``[B, G, 4]`` ground truth, padded; ``gt_valid [B, G]`` bool marks the real ones.
        candidate_valid: ``[B, n]`` bool or None (all valid).

    Returns:
        :class:`Matches` of ``[B, n]`` tensors. Boundary: an image without ground truth (or ``G = 0``) has
        IoU 0 everywhere: all background (when ``bg_iou_low <= 0``).
    """
    b, n = candidates.shape[:2]
    if gt_boxes.shape[1] == 0:
        zeros = candidates.new_zeros((b, n))
        iou, idx = zeros, torch.zeros((b, n), dtype=torch.int64, device=candidates.device)
        pairwise = None
    else:
        pairwise = box_iou(candidates, gt_boxes) * gt_valid[:, None, :]  # [B, n, G]; padding columns 0
        if candidate_valid is not None:
            pairwise = pairwise * candidate_valid[:, :, None]
        iou, idx = pairwise.max(dim=2)
    # torch.where, not masked assignment: a boolean index would make the GPU wait for the host
    labels = torch.where(iou >= fg_iou, 1, torch.where((iou >= bg_iou_low) & (iou < bg_iou), 0, -1))
    if low_quality and pairwise is not None:
        best = pairwise.max(dim=1, keepdim=True).values  # [B, 1, G]: each box's best IoU over candidates
        labels = torch.where(((pairwise == best) & (best > 0)).any(dim=2), 1, labels)
    if candidate_valid is not None:
        labels = torch.where(candidate_valid, labels, -1)
    return Matches(iou, idx, labels)


def _ranks(keys: Tensor) -> Tensor:
    """Rank of each entry along the last dimension when sorted ascending: ``[B, n]`` -> ``[B, n]`` int64."""
    order = torch.argsort(keys, dim=-1)
    ranks = torch.empty_like(order)
    ranks.scatter_(-1, order, torch.arange(keys.shape[-1], device=keys.device).expand_as(order))
    return ranks


def _balanced(labels: Tensor, num: int, positive_fraction: float) -> tuple[Tensor, Tensor, Tensor]:
    """``(take_pos, take_neg, r)``: a uniformly random choice of ``min(#pos, floor(num·fraction))`` positives and
    ``min(#neg, num − #taken positives)`` negatives per row, without host synchronisation."""
    r = torch.rand(labels.shape, device=labels.device)
    pos, neg = labels == 1, labels == 0
    n_pos = pos.sum(-1, keepdim=True).clamp(max=int(num * positive_fraction))
    n_neg = torch.minimum(neg.sum(-1, keepdim=True), num - n_pos)
    take_pos = pos & (_ranks(torch.where(pos, r, 2.0)) < n_pos)
    take_neg = neg & (_ranks(torch.where(neg, r, 2.0)) < n_neg)
    return take_pos, take_neg, r


def sample_mask(labels: Tensor, num: int, positive_fraction: float) -> Tensor:
    """Balanced sampling as a mask: per row of ``labels [B, n]``, ``num`` candidates at most, of which at most
    ``positive_fraction`` foreground; the rest background (fewer when there are not enough).

    Returns ``[B, n]`` bool. Each subset of the foreground (background) of the drawn size is equally likely
    (uniform random keys, ranked). Draws from torch's global generator on ``labels``' device.
    """
    take_pos, take_neg, _ = _balanced(labels, num, positive_fraction)
    return take_pos | take_neg


def sample_indices(labels: Tensor, num: int, positive_fraction: float) -> tuple[Tensor, Tensor]:
    """Balanced sampling as indices, for gathering: the same draw as :func:`sample_mask`, returned as
    ``(index [B, k], valid [B, k])`` with ``k = min(num, n)``: the sampled foreground first, then the sampled
    background, then (when fewer than ``k`` were sampled) unsampled candidates flagged ``valid = False``.
    """
    take_pos, take_neg, r = _balanced(labels, num, positive_fraction)
    key = torch.where(take_pos, 2.0 + r, torch.where(take_neg, 1.0 + r, r - 1.0))
    k = min(num, labels.shape[-1])
    top = key.topk(k, dim=-1)
    return top.indices, top.values >= 1.0
