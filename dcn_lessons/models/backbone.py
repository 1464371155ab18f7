"""The detection backbone of DCNv1 §2.3: conv4 for the RPN, a stride-16 conv5 for the RoI head.

DCNv1 (and DCNv2, which keeps its Faster R-CNN) builds the detector on a ResNet without its classifier:

* the RPN runs on the conv4 features (stride 16);
* conv5 runs on the whole image at stride 1 with dilation 2 (:class:`~dcn_lessons.models.ResNet`'s
  ``dilate_conv5``), so its output also has stride 16, and the RoI head pools from it;
* §2.3: "a randomly initialized 1x1 conv is added at last to reduce the channel dimension to 1024" (the released
  Faster R-CNN code ``faster_rcnn/symbols/resnet_v1_101_rcnn_dcn.py`` reduces to 256 with its ``conv_new_1``,
  followed by a ReLU, weights N(0, 0.01), bias 0): ``reduce_channels`` sets the width, None leaves conv5 as it is.

:class:`ResNetFeatures` returns both maps in one forward pass; the ResNet sits under ``.body`` (keys
``body.layer1...``, as torchvision's detection backbones), so :func:`~dcn_lessons.models.load_plain_weights`
fills it from an ImageNet checkpoint and reports the reduction conv as new.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Optional, Sequence, Union

from torch import Tensor, nn
from torch.nn import functional as F

from dcn_lessons.models.recipes import Recipe
from dcn_lessons.models.resnet import STAGES, NormSpec, ResNet, resnet

__all__ = ["ResNetFeatures", "resnet_backbone"]


class ResNetFeatures(nn.Module):
    """Named feature maps of a ResNet trunk for a detector, with DCNv1's optional 1x1 reduction of conv5.

    Args:
        body: a :class:`~dcn_lessons.models.ResNet` built with ``num_classes=None``.
        stages: the maps to return, in forward order (default ``("conv4", "conv5")``).
        reduce_channels: if set, ``conv5`` is ``relu(conv5_reduce(conv5))`` with a 1x1 conv (with bias) to this
            many channels, initialised N(0, 0.01) and 0 (DCNv1 §2.3; needs ``"conv5"`` in ``stages``).

    Attributes:
        out_channels: ``{"conv4": C4, "conv5": C5 or reduce_channels}``.
        strides: ``{"conv4": 16, "conv5": 16}`` (conv5: 32 without ``dilate_conv5``).

    Shapes:
        input ``[N, 3, H, W]`` -> ordered dict ``{name: [N, out_channels[name], ceil(H/stride), ceil(W/stride)]}``
        (exactly: each stride-2 step maps a size s to ``(s - 1) // 2 + 1``).
    """

    def __init__(self, body: ResNet, stages: Sequence[str] = ("conv4", "conv5"),
                 reduce_channels: Optional[int] = None) -> None:
        super().__init__()
        if not isinstance(body, ResNet):
            raise TypeError(f"body: expected a dcn_lessons.models.ResNet, got {type(body).__name__}")
        if body.num_classes is not None:
            raise ValueError("body: expected a trunk built with num_classes=None (no avgpool/fc)")
        stages = (stages,) if isinstance(stages, str) else tuple(stages)
        if not stages or any(s not in STAGES for s in stages) or len(set(stages)) != len(stages):
            raise ValueError(f"stages: expected distinct names among {list(STAGES)}, got {list(stages)!r}")
        self.stages = tuple(sorted(stages, key=STAGES.index))
        self.body = body
        self.out_channels = {s: body.stage_channels[s] for s in self.stages}
        self.strides = {s: body.stage_strides[s] for s in self.stages}
        self.conv5_reduce: Optional[nn.Conv2d] = None
        if reduce_channels is not None:
            if not isinstance(reduce_channels, int) or isinstance(reduce_channels, bool) or reduce_channels < 1:
                raise ValueError(f"reduce_channels: expected a positive int or None, got {reduce_channels!r}")
            if "conv5" not in self.stages:
                raise ValueError("reduce_channels: reduces conv5, but 'conv5' is not among stages")
            self.conv5_reduce = nn.Conv2d(body.stage_channels["conv5"], reduce_channels, 1)
            nn.init.normal_(self.conv5_reduce.weight, std=0.01)
            nn.init.zeros_(self.conv5_reduce.bias)
            self.out_channels["conv5"] = reduce_channels

    def forward(self, x: Tensor) -> "OrderedDict[str, Tensor]":
        """``[N, 3, H, W]`` -> ``{"conv4": ..., "conv5": ...}`` (the maps of ``stages``)."""
        feats = self.body.forward_features(x, self.stages)
        if self.conv5_reduce is not None:
            feats["conv5"] = F.relu(self.conv5_reduce(feats["conv5"]))
        return feats


def resnet_backbone(
    depth: int = 50,
    *,
    width: float = 1.0,
    recipe: Union[str, Recipe, None] = None,
    offset_groups: int = 1,
    dilate_conv5: bool = True,
    reduce_channels: Optional[int] = None,
    stages: Sequence[str] = ("conv4", "conv5"),
    norm: NormSpec = "frozen_bn",
    frozen_stages: int = 2,
    stride_in_1x1: bool = False,
) -> ResNetFeatures:
    """A detection backbone: ResNet-``depth`` trunk (no classifier) wrapped in :class:`ResNetFeatures`.

    The defaults are the DCN papers' Faster R-CNN trunk: conv5 dilated (stride 16), frozen BatchNorm, stem and
    conv2 frozen. For example ``resnet_backbone(50, recipe="mdconv@c3-c5", reduce_channels=256)`` (DCNv2) or, on a
    CPU, ``resnet_backbone(18, width=0.25, recipe="dconv@c5")``. Other arguments as :class:`~dcn_lessons.models.ResNet`.
    """
    body = resnet(depth, num_classes=None, width=width, recipe=recipe, offset_groups=offset_groups,
                  dilate_conv5=dilate_conv5, stride_in_1x1=stride_in_1x1, norm=norm, frozen_stages=frozen_stages)
    return ResNetFeatures(body, stages=stages, reduce_channels=reduce_channels)
