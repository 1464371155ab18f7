"""The Fast R-CNN head on conv5 (DCNv1 §2.3 / §4; DCNv2 §4): RoI pooling of the chosen kind, two fc layers,
(C+1)-way classification and class-specific box regression.

**Pooling** (``[roi_head] pool``), 7x7 bins on the stride-16 conv5 map, each from :mod:`dcn_lessons.ops`:

* ``"align"`` -- aligned RoI pooling (:class:`~dcn_lessons.ops.RoIAlign`; the papers' "RoI pooling" baseline
  with the aligned sampling every later detector uses);
* ``"dpool"`` -- DCNv1's deformable RoI pooling (Eq. 6; :class:`~dcn_lessons.ops.DeformRoIPoolPack`, offsets
  from an fc branch on the plain pooled features);
* ``"mdpool"`` -- DCNv2's modulated deformable RoI pooling (Eq. 2; :class:`~dcn_lessons.ops.ModulatedDeformRoIPoolPack`).

A fresh ``dpool`` head pools exactly what ``align`` pools, a fresh ``mdpool`` head half of it (its mask starts at
sigmoid(0) = 0.5): the offset and mask branches start at zero.

**Features.** ``f = relu(fc7(relu(fc6(flatten(pool(conv5, rois))))))`` -- the per-RoI feature DCNv2 §3.3 calls
f_FRCNN(b) and the R-CNN feature mimicking compares (:meth:`RoIHead.box_features`). Then ``cls_score`` gives C+1
logits (0 = background) and ``bbox_pred`` 4 deltas per class, coded with weights (10, 10, 5, 5).

**Training** (Fast R-CNN §2.3): the proposals plus the ground-truth boxes are the candidates; IoU >= 0.5 with a
box is foreground (its class and its box as target), IoU in [0, 0.5) background; 512 per image are sampled, at
most a quarter foreground. ``L_cls`` = cross-entropy averaged over the sampled RoIs of the batch, ``L_box`` =
smooth L1 of the deltas of the true class on the foreground RoIs, summed and divided by the same count.

**Inference**: softmax scores, per-class boxes decoded and clipped, scores below ``score_thresh`` dropped,
per-class NMS, the best ``detections_per_image`` kept.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from dcn_lessons.detection.boxes import batched_nms, clip_boxes, decode_boxes, encode_boxes
from dcn_lessons.detection.config import RoIHeadConfig
from dcn_lessons.detection.rpn import gather_rows
from dcn_lessons.detection.sampling import GroundTruth, Matches, match_boxes, matched_gt, sample_indices
from dcn_lessons.ops import DeformRoIPoolPack, ModulatedDeformRoIPoolPack, RoIAlign

__all__ = ["RoISample", "RoIHead", "boxes_to_rois", "make_pool"]

#: Detections narrower or lower than this (pixels) are dropped (torchvision's 1e-2).
MIN_DETECTION_SIZE = 1e-2


def make_pool(cfg: RoIHeadConfig, in_channels: int, stride: int = 16) -> nn.Module:
    """The RoI pooling layer ``cfg.pool`` names: ``[K, 5]`` RoIs on ``[N, C, H, W]`` -> ``[K, C, 7, 7]``."""
    scale = 1.0 / stride
    if cfg.pool == "align":
        return RoIAlign(cfg.output_size, scale, cfg.sampling_ratio, aligned=True)
    cls = DeformRoIPoolPack if cfg.pool == "dpool" else ModulatedDeformRoIPoolPack
    return cls(cfg.output_size, in_channels, cfg.deform_fc_channels, scale, cfg.sampling_ratio, cfg.gamma)


def boxes_to_rois(boxes: Tensor) -> Tensor:
    """``[B, n, 4]`` boxes -> ``[B·n, 5]`` RoIs ``(batch index, x1, y1, x2, y2)``, image 0's first."""
    b, n = boxes.shape[:2]
    idx = torch.arange(b, dtype=boxes.dtype, device=boxes.device).repeat_interleave(n)[:, None]
    return torch.cat((idx, boxes.reshape(b * n, 4)), dim=1)


class RoISample(NamedTuple):
    """The RoIs of a training step, ``N`` per image: ``boxes [B, N, 4]``, ``valid [B, N]`` (False: a slot left
    empty when an image had fewer candidates), ``labels [B, N]`` (class 1..C, 0 background), ``targets
    [B, N, 4]`` (coded boxes of the foreground, 0 elsewhere), and ``proposal_matches``: the
    :class:`~dcn_lessons.detection.sampling.Matches` of the proposals alone (``[B, P]``; the mimic branch reads
    them)."""

    boxes: Tensor
    valid: Tensor
    labels: Tensor
    targets: Tensor
    proposal_matches: Matches


class RoIHead(nn.Module):
    """Fast R-CNN head: pooling, fc6, fc7, ``cls_score``, ``bbox_pred`` (module docstring).

    Args:
        in_channels: channels of the conv5 map.
        num_classes: C (the classifier has C + 1 outputs).
        cfg: the ``[roi_head]`` section.
        stride: conv5's stride (16).

    Initialisation: fc6, fc7 PyTorch's default; ``cls_score`` N(0, 0.01), ``bbox_pred`` N(0, 0.001), biases 0
    (Faster R-CNN).
    """

    def __init__(self, in_channels: int, num_classes: int, cfg: RoIHeadConfig, stride: int = 16) -> None:
        super().__init__()
        self.cfg = cfg
        self.num_classes = num_classes
        self.pool = make_pool(cfg, in_channels, stride)
        s = cfg.output_size
        self.fc6 = nn.Linear(in_channels * s * s, cfg.fc_channels)
        self.fc7 = nn.Linear(cfg.fc_channels, cfg.fc_channels)
        self.cls_score = nn.Linear(cfg.fc_channels, num_classes + 1)
        self.bbox_pred = nn.Linear(cfg.fc_channels, 4 * (num_classes + 1))
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.cls_score.bias)
        nn.init.zeros_(self.bbox_pred.bias)

    def box_features(self, feature: Tensor, rois: Tensor) -> Tensor:
        """Pool and the two fc layers: ``feature [N, C, H, W]``, ``rois [K, 5]`` -> ``[K, fc_channels]``."""
        x = self.pool(feature, rois).flatten(1)
        return F.relu(self.fc7(F.relu(self.fc6(x))))

    def predict(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """``[K, fc]`` -> ``(logits [K, C+1], deltas [K, C+1, 4])``."""
        return self.cls_score(features), self.bbox_pred(features).view(features.shape[0], -1, 4)

    # ------------------------------------------------------------------------------------ training
    @torch.no_grad()
    def sample(self, proposals: Tensor, proposal_valid: Tensor, gt: GroundTruth) -> RoISample:
        """Label and sample the training RoIs: ``proposals [B, P, 4]``, ``proposal_valid [B, P]`` ->
        :class:`RoISample` with ``N = min(batch_per_image, P + G)``."""
        cfg = self.cfg
        p = proposals.shape[1]
        cand = torch.cat((proposals, gt.boxes), dim=1)
        cand_valid = torch.cat((proposal_valid, gt.valid), dim=1)
        m = match_boxes(cand, gt.boxes, gt.valid, cfg.fg_iou, cfg.bg_iou, cfg.bg_iou_low, candidate_valid=cand_valid)
        idx, valid = sample_indices(m.labels, cfg.batch_per_image, cfg.positive_fraction)
        boxes = gather_rows(cand, idx)
        fg = (gather_rows(m.labels, idx) == 1) & valid
        gt_boxes, gt_labels = matched_gt(gt, gather_rows(m.gt_index, idx))
        labels = torch.where(fg, gt_labels, 0)
        targets = torch.where(fg[..., None], encode_boxes(gt_boxes, boxes, cfg.box_weights), 0.0)
        proposal_matches = Matches(m.iou[:, :p], m.gt_index[:, :p], m.labels[:, :p])
        return RoISample(boxes, valid, labels, targets, proposal_matches)

    def loss(self, logits: Tensor, deltas: Tensor, sample: RoISample) -> dict[str, Tensor]:
        """``{"loss_cls", "loss_box"}`` on the sampled RoIs: ``logits [B·N, C+1]``, ``deltas [B·N, C+1, 4]``."""
        labels = sample.labels.reshape(-1)
        valid = sample.valid.reshape(-1)
        n = valid.sum().clamp(min=1).to(logits.dtype)
        ce = F.cross_entropy(logits, labels, reduction="none")
        loss_cls = torch.where(valid, ce, 0.0).sum() / n
        pred = deltas[torch.arange(labels.shape[0], device=labels.device), labels]  # [B·N, 4]
        box = F.smooth_l1_loss(pred, sample.targets.reshape(-1, 4), beta=self.cfg.smooth_l1_beta,
                               reduction="none").sum(-1)
        loss_box = torch.where(valid & (labels > 0), box, 0.0).sum() / n
        return {"loss_cls": loss_cls, "loss_box": loss_box}

    # ----------------------------------------------------------------------------------- inference
    @torch.no_grad()
    def postprocess(self, logits: Tensor, deltas: Tensor, rois: Tensor, roi_valid: Tensor, sizes: Tensor
                    ) -> list[dict[str, Tensor]]:
        """Detections per image from the head's outputs on ``rois [B, P, 4]`` (``roi_valid [B, P]``).

        Returns one dict per image: ``boxes [n, 4]`` (x1, y1, x2, y2 in input-image pixels, clipped),
        ``scores [n]``, ``labels [n]`` int64 in 1..C, by decreasing score, ``n <= detections_per_image``.
        """
        cfg = self.cfg
        b, p = rois.shape[:2]
        c = self.num_classes
        probs = F.softmax(logits, dim=-1).view(b, p, c + 1)[..., 1:]  # [B, P, C]
        boxes = decode_boxes(deltas.view(b, p, c + 1, 4)[:, :, 1:], rois[:, :, None, :], cfg.box_weights)
        boxes = clip_boxes(boxes, sizes[:, None, None, :])  # [B, P, C, 4]
        wh = boxes[..., 2:] - boxes[..., :2]
        keep = (probs > cfg.score_thresh) & roi_valid[..., None] & (wh >= MIN_DETECTION_SIZE).all(-1)
        classes = torch.arange(1, c + 1, device=rois.device).expand(p, c)
        out = []
        for i in range(b):
            sel = keep[i].nonzero(as_tuple=True)
            bx, sc, lb = boxes[i][sel], probs[i][sel], classes[sel]
            k = batched_nms(bx, sc, lb, cfg.nms_iou)[: cfg.detections_per_image]
            out.append({"boxes": bx[k], "scores": sc[k], "labels": lb[k]})
        return out
