"""The region proposal network (Faster R-CNN §3.1) on conv4, as both DCN papers use it.

A 3x3 conv slides over the conv4 map; at each position two sibling 1x1 convs score ``k`` anchors
(:mod:`dcn_lessons.detection.anchors`) for "object or not" and regress 4 box deltas for each. Proposals are the
decoded, clipped, best-scoring boxes after NMS. One logit per anchor with a sigmoid (torchvision's form) stands
in for the paper's two-way softmax: the same model (a softmax over two logits is a sigmoid of their difference).

Training (Faster R-CNN §3.1.2-3.1.3): an anchor is positive with IoU >= 0.7 with some box, or when it is a box's
best anchor; negative below 0.3; in between, and wherever its centre lies in the padding of a smaller image of
the batch, ignored. 256 anchors per image are sampled, up to half positive. The losses:
``L_cls = (1/N_s) Σ_sampled BCE(s_a, p*_a)`` and ``L_box = (1/N_s) Σ_positive smoothL1_β(t_a − t*_a)``, both
normalised by the number ``N_s`` of sampled anchors in the batch (the "λ = 1 with N_cls" form, as torchvision).

Everything runs on the whole padded batch with fixed shapes (``[B, A]`` anchors, ``[B, P]`` proposals with a
validity mask); the host waits for the device only in NMS, once per round of :func:`nms_mask` (proposal
selection, the one step Faster R-CNN cannot do without).
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from dcn_lessons.detection.anchors import base_anchors, grid_anchors
from dcn_lessons.detection.boxes import clip_boxes, decode_boxes, encode_boxes, nms_mask
from dcn_lessons.detection.config import RPNConfig
from dcn_lessons.detection.sampling import GroundTruth, match_boxes, matched_gt, sample_mask

__all__ = ["RPNHead", "Proposals", "RegionProposalNetwork", "gather_rows"]


def gather_rows(x: Tensor, index: Tensor) -> Tensor:
    """``x [B, n, ...]`` indexed along dim 1 by ``index [B, k]`` -> ``[B, k, ...]``."""
    return x[torch.arange(x.shape[0], device=x.device)[:, None], index]


class RPNHead(nn.Module):
    """3x3 conv + ReLU, then 1x1 convs to ``k`` objectness logits and ``4k`` box deltas per position.

    Initialised as Faster R-CNN: weights N(0, 0.01), biases 0.

    Shapes: ``[B, C, h, w]`` -> ``(logits [B, h·w·k], deltas [B, h·w·k, 4])``, rows in the order of
    :func:`~dcn_lessons.detection.anchors.grid_anchors`.
    """

    def __init__(self, in_channels: int, channels: int, num_anchors: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, channels, 3, padding=1)
        self.cls_logits = nn.Conv2d(channels, num_anchors, 1)
        self.bbox_pred = nn.Conv2d(channels, 4 * num_anchors, 1)
        for layer in (self.conv, self.cls_logits, self.bbox_pred):
            nn.init.normal_(layer.weight, std=0.01)
            nn.init.zeros_(layer.bias)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        t = F.relu(self.conv(x))
        b, _, h, w = t.shape
        logits = self.cls_logits(t).permute(0, 2, 3, 1).reshape(b, -1)
        deltas = self.bbox_pred(t).view(b, -1, 4, h, w).permute(0, 3, 4, 1, 2).reshape(b, -1, 4)
        return logits, deltas


class Proposals(NamedTuple):
    """Proposals of a batch: ``boxes [B, P, 4]`` (input-image pixels, clipped, by decreasing objectness),
    ``valid [B, P]`` bool (False for slots NMS or the size filter left empty), and the RPN's ``losses`` (empty
    outside training)."""

    boxes: Tensor
    valid: Tensor
    losses: dict


class RegionProposalNetwork(nn.Module):
    """The RPN: :class:`RPNHead`, anchors, proposals and (in training) the RPN losses.

    Args:
        in_channels: channels of the conv4 map.
        cfg: the ``[rpn]`` section (:class:`~dcn_lessons.detection.config.RPNConfig`).
        stride: the map's stride in input pixels (16).

    Shapes (``forward``): ``feature [B, C, h, w]``, ``sizes [B, 2]`` int ``(h_i, w_i)`` of each image before
    padding, ``gt`` a :class:`~dcn_lessons.detection.sampling.GroundTruth` (training) -> :class:`Proposals` with
    ``P = min(post_nms, pre_nms, h·w·k)``.
    """

    def __init__(self, in_channels: int, cfg: RPNConfig, stride: int = 16) -> None:
        super().__init__()
        self.cfg = cfg
        self.stride = stride
        self.register_buffer("cell_anchors", base_anchors(cfg.anchor_sizes, cfg.aspect_ratios), persistent=False)
        self.head = RPNHead(in_channels, cfg.channels, self.cell_anchors.shape[0])

    def anchors(self, feature: Tensor) -> Tensor:
        """``[h·w·k, 4]`` anchors of a feature map (:func:`~dcn_lessons.detection.anchors.grid_anchors`)."""
        return grid_anchors(self.cell_anchors.to(feature.dtype), tuple(feature.shape[-2:]), self.stride)

    def forward(self, feature: Tensor, sizes: Tensor, gt: Optional[GroundTruth] = None) -> Proposals:
        logits, deltas = self.head(feature)
        anchors = self.anchors(feature)
        boxes, valid = self.propose(anchors, logits.detach(), deltas.detach(), sizes)
        losses = self.loss(anchors, logits, deltas, sizes, gt) if (self.training and gt is not None) else {}
        return Proposals(boxes, valid, losses)

    @torch.no_grad()
    def propose(self, anchors: Tensor, logits: Tensor, deltas: Tensor, sizes: Tensor) -> tuple[Tensor, Tensor]:
        """Best ``pre_nms`` anchors per image -> decoded, clipped to the image -> small boxes dropped -> NMS ->
        best ``post_nms``: ``(boxes [B, P, 4], valid [B, P])``."""
        cfg = self.cfg
        pre, post = (cfg.pre_nms_train, cfg.post_nms_train) if self.training else (cfg.pre_nms_test, cfg.post_nms_test)
        k = min(pre, logits.shape[1])
        scores, idx = logits.topk(k, dim=1)  # sorted, as nms_mask needs
        boxes = decode_boxes(gather_rows(deltas, idx), anchors[idx])
        boxes = clip_boxes(boxes, sizes[:, None, :])
        valid = ((boxes[..., 2:] - boxes[..., :2]) >= cfg.min_size).all(-1)
        keep = nms_mask(boxes, cfg.nms_iou, valid)
        best = torch.where(keep, scores, float("-inf")).topk(min(post, k), dim=1)
        return gather_rows(boxes, best.indices), torch.isfinite(best.values)

    def loss(self, anchors: Tensor, logits: Tensor, deltas: Tensor, sizes: Tensor, gt: GroundTruth
             ) -> dict[str, Tensor]:
        """``{"loss_rpn_cls", "loss_rpn_box"}`` of the module docstring; ``anchors [A, 4]``, ``logits [B, A]``,
        ``deltas [B, A, 4]``."""
        cfg = self.cfg
        b = logits.shape[0]
        centre = 0.5 * (anchors[:, :2] + anchors[:, 2:])  # [A, 2] (x, y)
        inside = (centre[None, :, 0] < sizes[:, 1:2]) & (centre[None, :, 1] < sizes[:, 0:1])  # [B, A]
        m = match_boxes(anchors.expand(b, -1, -1), gt.boxes, gt.valid, cfg.fg_iou, cfg.bg_iou,
                        low_quality=True, candidate_valid=inside)
        sampled = sample_mask(m.labels, cfg.batch_per_image, cfg.positive_fraction)
        positive = sampled & (m.labels == 1)
        n = sampled.sum().clamp(min=1).to(logits.dtype)
        bce = F.binary_cross_entropy_with_logits(logits, positive.to(logits.dtype), reduction="none")
        loss_cls = torch.where(sampled, bce, 0.0).sum() / n
        targets = encode_boxes(matched_gt(gt, m.gt_index)[0], anchors)
        targets = torch.where(positive[..., None], targets, 0.0)  # no inf/NaN where the target is unused
        box = F.smooth_l1_loss(deltas, targets, beta=cfg.smooth_l1_beta, reduction="none").sum(-1)
        loss_box = torch.where(positive, box, 0.0).sum() / n
        return {"loss_rpn_cls": loss_cls, "loss_rpn_box": loss_box}
