"""The papers' networks: ResNet backbones with DCNv1/DCNv2 deformable recipes (lesson 07, the capstone's trunk).

* :func:`resnet` / :class:`ResNet` -- torchvision's ResNet layout and state-dict keys (depths 18/34/50/101/152,
  a width multiplier for CPU-sized networks), with a deformable ``recipe`` (``"dconv@c5"``: DCNv1 §2.3;
  ``"mdconv@c3-c5"``: DCNv2 §3.1; see :mod:`dcn_lessons.models.recipes`), conv5 at stride 16 by dilation,
  frozen BatchNorm and frozen stages for detection.
* :func:`load_plain_weights` -- a plain (torchvision-format) checkpoint into any variant; only the offset
  branches may be missing, everything else is checked before anything is copied.
* :func:`resnet_backbone` / :class:`ResNetFeatures` -- ``{"conv4", "conv5"}`` feature maps for a Faster R-CNN
  (RPN on conv4, RoI head on the stride-16 conv5, DCNv1's optional 1x1 reduction).
* :func:`place_recipe`, :func:`deformable_layer_names` -- where a recipe puts its layers, and where a built
  model has them.
* :func:`count_parameters`, :func:`count_flops` -- PyTorch's ``FlopCounterMode`` with a formula for the
  deformable operator (:mod:`dcn_lessons.models.complexity`; registered on import), on the meta device.
"""
from dcn_lessons.models.backbone import ResNetFeatures, resnet_backbone
from dcn_lessons.models.complexity import FlopReport, count_flops, count_parameters
from dcn_lessons.models.norm import FrozenBatchNorm2d
from dcn_lessons.models.recipes import PAPER_RECIPES, Recipe, conv3x3_names, parse_recipe, place_recipe
from dcn_lessons.models.resnet import (
    ARCHITECTURES,
    STAGES,
    BasicBlock,
    Bottleneck,
    ResNet,
    deformable_layer_names,
    resnet,
)
from dcn_lessons.models.weights import LoadReport, is_offset_key, load_plain_weights

__all__ = [
    "ARCHITECTURES",
    "STAGES",
    "BasicBlock",
    "Bottleneck",
    "FlopReport",
    "FrozenBatchNorm2d",
    "LoadReport",
    "PAPER_RECIPES",
    "Recipe",
    "ResNet",
    "ResNetFeatures",
    "conv3x3_names",
    "count_flops",
    "count_parameters",
    "deformable_layer_names",
    "is_offset_key",
    "load_plain_weights",
    "parse_recipe",
    "place_recipe",
    "resnet",
    "resnet_backbone",
]
