"""The deformable Faster R-CNN of DCNv1 §2.3/§4 and DCNv2 §3.3/§4, with R-CNN feature mimicking.

::

    images [B, 3, H, W] in [0, 1], sizes [B, 2]
      │ normalise (mean/std; padding -> 0)                         inputs.normalize_images
      ▼
    ResNet trunk (recipe: plain, dconv@c5, mdconv@c3-c5)           dcn_lessons.models.ResNetFeatures
      ├── conv4 [B, C4, H/16, W/16] ──► RPN: anchors, objectness, deltas, NMS -> proposals [B, P, 4]
      └── conv5 [B, C5, H/16, W/16] (stride 1, dilation 2; optional 1x1 reduction)
                 │ training: sample 512 RoIs per image (1:3) from proposals + ground truth
                 ▼
          RoI pooling 7x7 (align | dpool | mdpool) -> fc6 -> fc7 = f_FRCNN -> cls (C+1), boxes 4(C+1)
                 │ eval: decode, per-class NMS -> detections
                 ▼ training with [mimic]: Ω's crops -> the same trunk, pooling, fc6, fc7 = f_RCNN
                                            -> 1 − cos(f_RCNN, f_FRCNN), rcnn_cls cross-entropy

**Calling it.**

* ``model.train(); losses = model(images, targets)``: ``targets`` a list of B dicts with ``boxes [n, 4]``
  (x1, y1, x2, y2 in the pixels of ``images``), ``labels [n]`` (1..C) and ``size`` (h, w) of the image before
  padding (as :func:`~dcn_lessons.detection.collate_detection` and the datasets give them). Returns a dict of
  scalar tensors, the weights already applied, so that the loss to minimise is ``sum(losses.values())``:
  ``loss_rpn_cls``, ``loss_rpn_box``, ``loss_cls``, ``loss_box`` and, with mimicking, ``loss_mimic``,
  ``loss_mimic_cls``.
* ``model.eval(); detections = model(images, sizes)`` (``sizes [B, 2]``, or the targets, whose ``size`` is
  used): a list of B dicts ``boxes [n, 4]``, ``scores [n]``, ``labels [n]`` (1..C), by decreasing score.
  :func:`to_coco_results` turns them into COCO result records.

Inputs are checked once (:func:`~dcn_lessons.detection.inputs.check_inputs`). Randomness (anchor, RoI and Ω
sampling) draws from torch's global generator on the images' device: seed it, or save and restore its state,
to reproduce a run.
"""
from __future__ import annotations

import functools
import math
from typing import Any, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from dcn_lessons.detection.config import BackboneConfig, DetectorConfig, load_config
from dcn_lessons.detection.inputs import check_inputs, normalize_images
from dcn_lessons.detection.mimic import MimicBranch, Omega
from dcn_lessons.detection.roi_head import RoIHead, boxes_to_rois
from dcn_lessons.detection.rpn import RegionProposalNetwork
from dcn_lessons.detection.sampling import pad_targets
from dcn_lessons.models import ResNet, ResNetFeatures
from dcn_lessons.ops import offset_param_groups

__all__ = ["DeformableFasterRCNN", "build_backbone", "to_coco_results"]

def _group_norm(groups: int, channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(groups, channels), channels)


def build_backbone(cfg: BackboneConfig) -> ResNetFeatures:
    """The ``[backbone]`` trunk: a :class:`~dcn_lessons.models.ResNet` with conv5 dilated (stride 16), no
    classifier, wrapped to return ``{"conv4", "conv5"}`` (with DCNv1's 1x1 reduction of conv5 when
    ``reduce_channels > 0``). ``norm = "gn"`` uses GroupNorm with ``gcd(gn_groups, C)`` groups.

    ``output_stride`` 8 drops the stem's max-pool, 4 also runs the stem's conv at stride 1 (``strides`` and the
    body's ``stage_strides`` say so). Why a CPU config wants it: on 128-pixel images a stride-16 conv5 is 8 x 8
    cells, a small object covers one or two of them, and what RoI pooling reads there is mostly its
    surroundings. Measured on the synthetic set (one run each, 400 SGD steps of 8 images, lr 0.02, a classifier
    on RoI-pooled conv5 features of the ground-truth boxes, half-width ResNet-10 at stride 16 and quarter-width
    at 8 and 4): accuracy on 200 validation images 14 % (chance: 12.5 %), 25 % and 29 %. The whole detector
    (``regular``, fresh images, SGD at lr 0.02, AP on 200 validation images): stride 16 at half width reached
    AP 0.032 (AP50 0.075) after 1800 steps, stride 8 at quarter width (the same step time) AP 0.069 (AP50 0.131)
    after 1200.

    The reduction conv starts as DCNv1's code starts it, N(0, 0.01), only on a trunk with frozen BatchNorm (one
    meant to load ImageNet weights). A trunk trained from scratch gets He initialisation there, as in the rest of
    the ResNet: with N(0, 0.01) the RoI head receives features a hundred times too small and learns slowly (on 8
    fixed 128-pixel images, 300 SGD steps reached a training-set AP of 0.39 against 0.77 with He initialisation;
    measured on the shared 2-core machine)."""
    norm: Any = functools.partial(_group_norm, cfg.gn_groups) if cfg.norm == "gn" else cfg.norm
    body = ResNet(cfg.block, cfg.layers, num_classes=None, width=cfg.width, recipe=cfg.recipe,
                  offset_groups=cfg.offset_groups, dilate_conv5=True, stride_in_1x1=cfg.stride_in_1x1, norm=norm,
                  frozen_stages=cfg.frozen_stages)
    if cfg.output_stride <= 8:  # no max-pool: every later map twice as fine
        body.maxpool = nn.Identity()
    if cfg.output_stride <= 4:
        body.conv1.stride = (1, 1)
    stem = 2 if cfg.output_stride > 4 else 1
    first = stem * (2 if cfg.output_stride > 8 else 1)
    body.stage_strides = {"conv1": stem, "conv2": first, "conv3": 2 * first, "conv4": 4 * first,
                          "conv5": 4 * first}
    trunk = ResNetFeatures(body, ("conv4", "conv5"), cfg.reduce_channels or None)
    if trunk.conv5_reduce is not None and cfg.norm != "frozen_bn":
        nn.init.kaiming_normal_(trunk.conv5_reduce.weight, mode="fan_out", nonlinearity="relu")
    return trunk


class DeformableFasterRCNN(nn.Module):
    """Faster R-CNN with the papers' deformable parts (module docstring: the picture and how to call it).

    Args:
        cfg: a :class:`~dcn_lessons.detection.config.DetectorConfig`, or the name of a shipped config
            (``"dcnv2_mimic"``, ``"coco/dcnv1"``; :func:`~dcn_lessons.detection.config.available_configs`).
        num_classes: C, the object classes (the dataset's ``num_classes``); default ``cfg.num_classes``.

    Attributes:
        backbone (:class:`~dcn_lessons.models.ResNetFeatures`), rpn
        (:class:`~dcn_lessons.detection.rpn.RegionProposalNetwork`), roi_head
        (:class:`~dcn_lessons.detection.roi_head.RoIHead`), mimic
        (:class:`~dcn_lessons.detection.mimic.MimicBranch` or None), cfg, num_classes; buffers ``pixel_mean``,
        ``pixel_std`` ``[3]``.
    """

    def __init__(self, cfg: Union[DetectorConfig, str], num_classes: Optional[int] = None) -> None:
        super().__init__()
        if isinstance(cfg, str):
            cfg = load_config(cfg)
        if not isinstance(cfg, DetectorConfig):
            raise TypeError(f"cfg: expected a DetectorConfig or a config name, got {type(cfg).__name__}")
        if num_classes is None:
            num_classes = cfg.num_classes
        if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
            raise ValueError(f"num_classes: expected a positive int (C, without the background), got {num_classes!r}")
        self.cfg = cfg
        self.num_classes = num_classes
        self.register_buffer("pixel_mean", torch.tensor(cfg.input.pixel_mean))
        self.register_buffer("pixel_std", torch.tensor(cfg.input.pixel_std))
        self.backbone = build_backbone(cfg.backbone)
        stride = self.backbone.strides["conv4"]
        self.rpn = RegionProposalNetwork(self.backbone.out_channels["conv4"], cfg.rpn, stride)
        self.roi_head = RoIHead(self.backbone.out_channels["conv5"], num_classes, cfg.roi_head, stride)
        self.mimic = MimicBranch(num_classes, cfg.roi_head.fc_channels, cfg.mimic) if cfg.mimic.enabled else None
        self._iteration: Optional[tuple[int, int]] = None

    def set_iteration(self, iteration: int, iterations: int) -> None:
        """Tell the model that the next training step is step ``iteration`` (from 0) of ``iterations``; the
        training engine calls it before every step. The mimic branch runs from step
        ``round(cfg.mimic.start · iterations)`` on (:class:`~dcn_lessons.detection.config.MimicConfig`); before,
        its losses are zeros that still touch each of its parameters (so DistributedDataParallel sees one graph).
        Never called (another training loop): the branch runs at every step."""
        if not (isinstance(iteration, int) and isinstance(iterations, int) and 0 <= iteration and iterations >= 1):
            raise ValueError(f"iteration, iterations: expected ints with 0 <= iteration and iterations >= 1, got "
                             f"{iteration!r}, {iterations!r}")
        self._iteration = (iteration, iterations)

    @property
    def mimic_active(self) -> bool:
        """Whether a training step now runs the mimic branch (:meth:`set_iteration`)."""
        if self.mimic is None:
            return False
        if self._iteration is None:
            return True
        step, total = self._iteration
        return step >= round(self.cfg.mimic.start * total)

    def forward(self, images: Tensor, targets_or_sizes: Any) -> Union[dict[str, Tensor], list[dict[str, Tensor]]]:
        """Training: ``(images [B, 3, H, W], targets)`` -> weighted losses; eval: ``(images, sizes [B, 2])`` ->
        detections per image (module docstring)."""
        sizes, targets = check_inputs(images, targets_or_sizes, self.num_classes, self.training)
        x = normalize_images(images, sizes, self.pixel_mean.to(images.dtype), self.pixel_std.to(images.dtype))
        feats = self.backbone(x)
        conv5 = feats["conv5"]
        if not self.training:
            proposals = self.rpn(feats["conv4"], sizes)
            features = self.roi_head.box_features(conv5, boxes_to_rois(proposals.boxes))
            logits, deltas = self.roi_head.predict(features)
            return self.roi_head.postprocess(logits, deltas, proposals.boxes, proposals.valid, sizes)

        assert targets is not None
        gt = pad_targets([t["boxes"] for t in targets], [t["labels"] for t in targets], images.device, images.dtype)
        proposals = self.rpn(feats["conv4"], sizes, gt)
        sample = self.roi_head.sample(proposals.boxes, proposals.valid, gt)
        rois = boxes_to_rois(sample.boxes)  # [B·N, 5]
        omega = None
        if self.mimic is not None:  # before the branch's start, an empty Ω: zero losses, nothing cropped
            omega = self.mimic.select(proposals.boxes, proposals.valid, sample.proposal_matches, gt) \
                if self.mimic_active else Omega(rois.new_zeros((0, 5)), gt.labels.new_zeros((0,)))
            rois = torch.cat((rois, omega.rois), dim=0)  # f_FRCNN of Ω from the same pooling call
        features = self.roi_head.box_features(conv5, rois)
        k = sample.boxes.shape[0] * sample.boxes.shape[1]
        logits, deltas = self.roi_head.predict(features[:k])
        losses = {**proposals.losses, **self.roi_head.loss(logits, deltas, sample)}
        if omega is not None:
            losses.update(self.mimic(x, omega, features[k:], self.backbone, self.roi_head))
        return losses

    def param_groups(self, base_lr: float) -> list[dict[str, Any]]:
        """Optimizer groups with the papers' learning-rate multipliers (:func:`dcn_lessons.ops.offset_param_groups`):
        the trunk's offset/mask conv branches at ``base_lr · cfg.solver.offset_lr_mult``, the offset/mask fc
        branches of deformable RoI pooling at ``base_lr · cfg.solver.roi_offset_lr_mult``, the rest at
        ``base_lr``. Frozen parameters are left out. Each group has ``lr``, ``lr_mult``, ``params`` and
        ``param_names``."""
        rules = {}
        if self.cfg.roi_head.pool != "align":
            rules = {"roi_head.pool.*_fc.*": self.cfg.solver.roi_offset_lr_mult}
        groups = offset_param_groups(self, base_lr, self.cfg.solver.offset_lr_mult, rules)
        out = []
        for g in groups:
            keep = [(p, n) for p, n in zip(g["params"], g["param_names"]) if p.requires_grad]
            if keep:
                out.append({**g, "params": [p for p, _ in keep], "param_names": [n for _, n in keep]})
        return out


def to_coco_results(detections: Sequence[dict[str, Tensor]], targets: Sequence[dict[str, Any]],
                    cat_ids: Sequence[int]) -> list[dict[str, Any]]:
    """COCO result records (``COCO.loadRes`` / COCOeval's input) from the model's detections.

    Args:
        detections: the eval-mode output, one dict per image.
        targets: the batch's target dicts: ``image_id``, ``size``, ``orig_size`` and ``flipped`` map each box back
            to the pixels of the image file (:func:`dcn_lessons.detection.coco.boxes_to_original`).
        cat_ids: the dataset's label mapping: label ``k`` is COCO category ``cat_ids[k - 1]``.

    Returns:
        one ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}`` per detection (Python numbers).
    """
    from dcn_lessons.detection.coco import boxes_to_original

    if len(detections) != len(targets):
        raise ValueError(f"targets: expected one per detection dict ({len(detections)}), got {len(targets)}")
    out = []
    for det, t in zip(detections, targets):
        boxes = boxes_to_original(det["boxes"].detach().float().cpu(), t)
        xywh = torch.cat((boxes[:, :2], boxes[:, 2:] - boxes[:, :2]), dim=1).tolist()
        for bbox, score, label in zip(xywh, det["scores"].tolist(), det["labels"].tolist()):
            if not 1 <= label <= len(cat_ids):
                raise ValueError(f"cat_ids: label {label} has no category (expected labels 1..{len(cat_ids)})")
            out.append({"image_id": int(t["image_id"]), "category_id": int(cat_ids[label - 1]),
                        "bbox": [round(v, 3) for v in bbox], "score": round(float(score), 5)})
    return out
