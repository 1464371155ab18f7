"""The capstone detector (lesson 09): a deformable Faster R-CNN with DCNv2's R-CNN feature mimicking, its data,
its training engine and its command line.

* data -- :mod:`.synthetic`: a seedable COCO-format set of warped digits and shapes on photo clutter
  (:class:`SynthSpec`, :func:`make_image`, :func:`write_dataset`); :mod:`.coco`: one loader for any COCO-format set
  (:class:`CocoDetection`), the same items drawn on the fly (:class:`SyntheticDetection`), flip and scale jitter,
  :func:`collate_detection`.
* model -- :mod:`.model` (the detector), :mod:`.rpn`, :mod:`.roi_head`, :mod:`.mimic` (DCNv2 §3.3), :mod:`.boxes`
  (box coding, IoU, NMS), :mod:`.anchors`, :mod:`.sampling`, :mod:`.inputs`; :mod:`.config` and ``configs/*.toml``.
* training -- :mod:`.engine` (the loop, exact resume), :mod:`.checkpoint`, :mod:`.distributed` (torchrun + DDP),
  :mod:`.evaluate` (pycocotools), :mod:`.predict` (drawings), :mod:`.ablate` (DCNv2 Tables 1/3 in miniature).
* :mod:`.cli` -- ``python -m dcn_lessons detect {make-data,train,evaluate,predict,ablate}``.
"""
from dcn_lessons.detection.coco import (
    BAD_RECORD_KINDS,
    CocoDetection,
    Compose,
    DatasetError,
    DatasetWarning,
    DetectionBatch,
    RandomHorizontalFlip,
    RandomResize,
    SyntheticDetection,
    boxes_to_original,
    collate_detection,
)
from dcn_lessons.detection.config import ConfigError, DetectorConfig, available_configs, load_config
from dcn_lessons.detection.model import DeformableFasterRCNN, to_coco_results
from dcn_lessons.detection.synthetic import SynthSpec, coco_area_ranges, make_image, split_paths, write_dataset

__all__ = [
    "BAD_RECORD_KINDS",
    "CocoDetection",
    "ConfigError",
    "DeformableFasterRCNN",
    "DetectorConfig",
    "available_configs",
    "load_config",
    "to_coco_results",
    "Compose",
    "DatasetError",
    "DatasetWarning",
    "DetectionBatch",
    "RandomHorizontalFlip",
    "RandomResize",
    "SyntheticDetection",
    "SynthSpec",
    "boxes_to_original",
    "coco_area_ranges",
    "collate_detection",
    "make_image",
    "split_paths",
    "write_dataset",
]
