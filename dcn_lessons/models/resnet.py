"""ResNet with the papers' deformable recipes; torchvision's state-dict keys and shapes.

The network is that of He et al. (ResNet, arXiv 1512.03385) as torchvision builds it: a 7x7 stride-2 stem
(``conv1``, ``bn1``, ReLU, 3x3 stride-2 max-pool), four stages of residual blocks ``layer1`` ... ``layer4`` (the
papers' conv2 ... conv5, at strides 4, 8, 16, 32), global average pooling and ``fc``. With ``width=1`` every
state-dict key and shape is torchvision's (``tests/data/torchvision_resnet_keys.json`` is the committed list), so
torchvision's ImageNet weights load from a local file (:func:`dcn_lessons.models.load_plain_weights`).

What the DCN papers add, one option each (all leave the key names alone):

* ``recipe``: which 3x3 convs become deformable (:mod:`dcn_lessons.models.recipes`): a converted conv is a
  :class:`~dcn_lessons.ops.DeformConv2dPack` (DCNv1) or :class:`~dcn_lessons.ops.ModulatedDeformConv2dPack`
  (DCNv2) with the same ``weight`` key and shape, plus its offset branch ``<name>.conv_offset`` (zero-initialised).
* ``dilate_conv5``: DCNv1 §2.3: "at the beginning of the conv5 block, stride is changed from 2 to 1, and the
  dilation of all the convolution filters in the conv5 block (with kernel size > 1) is changed from 1 to 2", so
  conv5 keeps stride 16. Every 3x3 of conv5 gets dilation 2 (and padding 2), also the first block's, as in DCNv1's
  released code; torchvision's ``replace_stride_with_dilation`` instead keeps the first block's 3x3 at dilation 1.
  A deformable conv5 conv samples around the dilated grid (its offset branch is dilated too).
* ``stride_in_1x1``: where a bottleneck's stride sits. torchvision (ResNet "v1.5") strides in the 3x3 conv;
  the original Caffe ResNet and the DCN papers' MSRA models stride in the first 1x1 conv. The keys are the same;
  the FLOPs differ (the 1x1 and 3x3 convs of a block's first unit run at the lower resolution).
* ``norm``: ``"bn"`` (``nn.BatchNorm2d``) or ``"frozen_bn"`` (:class:`FrozenBatchNorm2d`, statistics and
  affine parameters fixed, as detectors train; keys loadable from BatchNorm checkpoints).
* ``width``: multiplies every channel count (stem 64, stage widths 64/128/256/512, expansion 4 of a bottleneck)
  for CPU-sized networks; ``width=1`` is the real network.
* ``frozen_stages``: 0 trains everything; k >= 1 freezes the stem (conv1, bn1) and stages conv2 ... conv(k), as
  detection fine-tuning does (DCNv1's code fixes conv1 and conv2, ``frozen_stages=2``).

DCNv2 and BatchNorm: a freshly converted or freshly loaded modulated conv computes ``0.5 * conv(x, weight)``
(mask = sigmoid(0) = 0.5, no bias in a ResNet conv), and the BatchNorm after it normalises with statistics measured
on the full-amplitude output, so a DCNv2 network loaded from plain weights does *not* compute what the plain one
does until it is trained (each converted block's residual branch changes); a DCNv1 network loaded from plain
weights does, up to rounding. The tests check both statements.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Iterable, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from dcn_lessons.models.norm import FrozenBatchNorm2d
from dcn_lessons.models.recipes import Recipe, parse_recipe, place_recipe
from dcn_lessons.ops import DeformConv2d, DeformConv2dPack, ModulatedDeformConv2dPack

__all__ = [
    "ARCHITECTURES",
    "STAGES",
    "BasicBlock",
    "Bottleneck",
    "ResNet",
    "resnet",
    "deformable_layer_names",
]

#: depth -> (block kind, blocks per stage conv2..conv5), as in the ResNet paper's Table 1 and torchvision.
ARCHITECTURES: dict[int, tuple[str, tuple[int, int, int, int]]] = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}

#: The names of the feature maps :meth:`ResNet.forward_features` returns, in forward order.
STAGES: tuple[str, ...] = ("conv1", "conv2", "conv3", "conv4", "conv5")

NormSpec = Union[str, Callable[[int], nn.Module]]


def _norm_factory(norm: NormSpec) -> Callable[[int], nn.Module]:
    if callable(norm):
        return norm
    if norm == "bn":
        return nn.BatchNorm2d
    if norm == "frozen_bn":
        return FrozenBatchNorm2d
    raise ValueError(f"norm: expected 'bn', 'frozen_bn' or a callable num_features -> module, got {norm!r}")


class _Conv3x3Factory:
    """Makes the 3x3 convs of the blocks: plain, or deformable where the recipe says (by module name)."""

    def __init__(self, recipe: Optional[Recipe], names: Iterable[str], offset_groups: int) -> None:
        self.recipe = recipe
        self.names = set(names)
        self.offset_groups = offset_groups

    def __call__(self, name: str, cin: int, cout: int, stride: int, dilation: int) -> nn.Module:
        if self.recipe is None or name not in self.names:
            return nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)
        cls = ModulatedDeformConv2dPack if self.recipe.modulated else DeformConv2dPack
        try:
            return cls(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation,
                       offset_groups=self.offset_groups, bias=False)
        except ValueError as e:
            raise ValueError(f"{name} (deformable, {self.recipe.spec}): {e}") from None


class BasicBlock(nn.Module):
    """Two 3x3 convs and an identity (or 1x1 projection) shortcut; the block of ResNet-18/34.

    ``out = relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``; ``conv1`` carries the stride. Shapes:
    ``[N, inplanes, H, W]`` -> ``[N, planes, H/stride, W/stride]`` (rounded up).
    """

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int, dilation: int, downsample: Optional[nn.Module],
                 norm: Callable[[int], nn.Module], conv3x3: _Conv3x3Factory, name: str,
                 stride_in_1x1: bool = False) -> None:
        super().__init__()
        del stride_in_1x1  # a basic block has no 1x1 conv
        self.conv1 = conv3x3(f"{name}.conv1", inplanes, planes, stride, dilation)
        self.bn1 = norm(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(f"{name}.conv2", planes, planes, 1, dilation)
        self.bn2 = norm(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3, 1x1 expand (x4) and a shortcut; the block of ResNet-50/101/152.

    ``out = relu(bn3(conv3(relu(bn2(conv2(relu(bn1(conv1(x)))))))) + shortcut(x))``. The stride sits in
    ``conv2`` (torchvision, "v1.5") or in ``conv1`` (``stride_in_1x1=True``: Caffe/MSRA ResNet, the DCN papers).
    Shapes: ``[N, inplanes, H, W]`` -> ``[N, 4*planes, H/stride, W/stride]`` (rounded up).
    """

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int, dilation: int, downsample: Optional[nn.Module],
                 norm: Callable[[int], nn.Module], conv3x3: _Conv3x3Factory, name: str,
                 stride_in_1x1: bool = False) -> None:
        super().__init__()
        s1, s3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = nn.Conv2d(inplanes, planes, 1, stride=s1, bias=False)
        self.bn1 = norm(planes)
        self.conv2 = conv3x3(f"{name}.conv2", planes, planes, s3, dilation)
        self.bn2 = norm(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = norm(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


def _channels(base: int, width: float) -> int:
    return max(1, int(round(base * width)))


class ResNet(nn.Module):
    """ResNet (torchvision's layout and keys) with DCNv1/DCNv2 deformable recipes.

    Args:
        block: ``"basic"`` (ResNet-18/34) or ``"bottleneck"`` (ResNet-50/101/152).
        layers: blocks per stage conv2..conv5, e.g. ``(3, 4, 6, 3)``; any positive counts (``(1, 1, 1, 1)``
            with basic blocks is a 10-layer network for quick CPU runs).
        num_classes: classes of ``fc``; None drops ``avgpool`` and ``fc`` (a feature trunk: :meth:`forward`
            returns the conv5 map).
        width: channel multiplier (> 0); 1 is the real network.
        recipe: deformable recipe (:func:`~dcn_lessons.models.recipes.parse_recipe`), e.g. ``"dconv@c5"``
            (DCNv1), ``"mdconv@c3-c5"`` (DCNv2), or None / ``"none"`` for a plain network.
        offset_groups: offset groups G of every deformable conv (must divide its input channels). DCNv1's
            released detection code uses 4 in conv5; 1 is mmdetection's default and ours.
        dilate_conv5: conv5 at stride 1 with every 3x3 dilated by 2 (DCNv1 §2.3): output stride 16, not 32.
        stride_in_1x1: bottlenecks stride in their first 1x1 conv (Caffe/MSRA ResNet) instead of the 3x3.
        norm: ``"bn"``, ``"frozen_bn"`` or a callable ``num_features -> module``.
        frozen_stages: 0..5; k >= 1 freezes the stem and stages conv2..conv(k) (``requires_grad=False``, and
            their normalisation layers stay in eval mode through :meth:`train`).
        zero_init_residual: zero the last BatchNorm weight of every block (as torchvision's option).

    Attributes:
        deformable_layers: names of the deformable convs, in forward order (``["layer4.0.conv2", ...]``).
        recipe: the parsed :class:`~dcn_lessons.models.recipes.Recipe` or None.
        stage_channels: ``{"conv1": 64, "conv2": 256, ...}`` channels of each feature map.
        stage_strides: ``{"conv1": 2, "conv2": 4, "conv3": 8, "conv4": 16, "conv5": 32}`` (conv5: 16 when dilated).

    Shapes:
        input ``[N, 3, H, W]``; output ``[N, num_classes]``, or the conv5 map ``[N, C5, ~H/32, ~W/32]`` (``~H/16``
        when dilated) when ``num_classes`` is None.

    Initialisation (torchvision's): plain and deformable conv weights Kaiming-normal (fan_out, ReLU), norm weight 1
    and bias 0, ``fc`` PyTorch's default; offset branches zero, so a fresh deformable network with the same seed
    differs from a plain one only through the random draws, and with the plain network's weights equals it (v1).
    """

    def __init__(
        self,
        block: str,
        layers: Sequence[int],
        *,
        num_classes: Optional[int] = 1000,
        width: float = 1.0,
        recipe: Union[str, Recipe, None] = None,
        offset_groups: int = 1,
        dilate_conv5: bool = False,
        stride_in_1x1: bool = False,
        norm: NormSpec = "bn",
        frozen_stages: int = 0,
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        if block not in ("basic", "bottleneck"):
            raise ValueError(f"block: expected 'basic' or 'bottleneck', got {block!r}")
        layers = tuple(layers)
        if len(layers) != 4 or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in layers):
            raise ValueError(f"layers: expected 4 positive ints (blocks of conv2..conv5), got {layers!r}")
        if num_classes is not None and (not isinstance(num_classes, int) or isinstance(num_classes, bool)
                                        or num_classes < 1):
            raise ValueError(f"num_classes: expected a positive int or None, got {num_classes!r}")
        if not isinstance(width, (int, float)) or isinstance(width, bool) or not width > 0:
            raise ValueError(f"width: expected a positive number (1 = the real network), got {width!r}")
        if not isinstance(offset_groups, int) or isinstance(offset_groups, bool) or offset_groups < 1:
            raise ValueError(f"offset_groups: expected a positive int, got {offset_groups!r}")
        if not isinstance(frozen_stages, int) or isinstance(frozen_stages, bool) or not 0 <= frozen_stages <= 5:
            raise ValueError(
                f"frozen_stages: expected an int in 0..5 (0: train all; k: freeze the stem and conv2..conv<k>), "
                f"got {frozen_stages!r}"
            )
        norm_layer = _norm_factory(norm)
        self.block = block
        self.layers = layers
        self.width = float(width)
        self.recipe = parse_recipe(recipe)
        self.offset_groups = offset_groups
        self.dilate_conv5 = bool(dilate_conv5)
        self.stride_in_1x1 = bool(stride_in_1x1)
        self.frozen_stages = frozen_stages
        self.deformable_layers: list[str] = place_recipe(self.recipe, block, layers)
        conv3x3 = _Conv3x3Factory(self.recipe, self.deformable_layers, offset_groups)
        block_cls: type[nn.Module] = BasicBlock if block == "basic" else Bottleneck
        expansion = block_cls.expansion  # type: ignore[attr-defined]

        stem = _channels(64, width)
        self.conv1 = nn.Conv2d(3, stem, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = norm_layer(stem)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)

        inplanes = stem
        self.stage_channels: dict[str, int] = {"conv1": stem}
        self.stage_strides: dict[str, int] = {"conv1": 2}
        total_stride = 4
        for i, n_blocks in enumerate(layers):
            planes = _channels(64 * 2**i, width)
            stride, dilation = (1 if i == 0 else 2), 1
            if i == 3 and self.dilate_conv5:
                stride, dilation = 1, 2
            downsample: Optional[nn.Module] = None
            if stride != 1 or inplanes != planes * expansion:
                downsample = nn.Sequential(
                    nn.Conv2d(inplanes, planes * expansion, 1, stride=stride, bias=False),
                    norm_layer(planes * expansion),
                )
            blocks = []
            for b in range(n_blocks):
                blocks.append(block_cls(
                    inplanes, planes, stride if b == 0 else 1, dilation, downsample if b == 0 else None,
                    norm_layer, conv3x3, f"layer{i + 1}.{b}", stride_in_1x1,
                ))
                inplanes = planes * expansion
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
            total_stride *= stride
            self.stage_channels[f"conv{i + 2}"] = inplanes
            self.stage_strides[f"conv{i + 2}"] = total_stride

        self.num_classes = num_classes
        if num_classes is not None:
            self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
            self.fc = nn.Linear(inplanes, num_classes)
        self._init_weights(zero_init_residual)
        self._freeze()

    # ------------------------------------------------------------------------------------------
    def _init_weights(self, zero_init_residual: bool) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, DeformConv2d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
        for m in self.modules():  # the loop above also drew the offset branches (they are nn.Conv2d)
            if isinstance(m, DeformConv2dPack):
                m.init_offset()
        if zero_init_residual:
            for m in self.modules():
                last = getattr(m, "bn3", None) if isinstance(m, Bottleneck) else (
                    getattr(m, "bn2", None) if isinstance(m, BasicBlock) else None)
                if last is not None and isinstance(getattr(last, "weight", None), Tensor):
                    with torch.no_grad():
                        last.weight.zero_()

    def _frozen_modules(self) -> list[nn.Module]:
        if self.frozen_stages == 0:
            return []
        mods: list[nn.Module] = [self.conv1, self.bn1]
        mods += [getattr(self, f"layer{i}") for i in range(1, self.frozen_stages)]
        return mods

    def _freeze(self) -> None:
        for m in self._frozen_modules():
            for p in m.parameters():
                p.requires_grad_(False)
            m.eval()

    def train(self, mode: bool = True) -> "ResNet":
        """As ``nn.Module.train``, but the frozen stages stay in eval mode (their BatchNorm statistics stay put)."""
        super().train(mode)
        for m in self._frozen_modules():
            m.eval()
        return self

    # ------------------------------------------------------------------------------------------
    def forward_features(self, x: Tensor, stages: Sequence[str] = ("conv5",)) -> "OrderedDict[str, Tensor]":
        """The feature maps named in ``stages`` (any of ``conv1`` ... ``conv5``), computed up to the last one asked.

        ``conv1`` is the stem's output after ReLU (stride 2, before the max-pool); ``convK`` the output of stage K.
        Returns an ordered dict in forward order: ``{"conv4": [N, C4, H/16, W/16], "conv5": [N, C5, ...]}``.
        """
        if isinstance(stages, str):
            stages = (stages,)
        unknown = [s for s in stages if s not in STAGES]
        if unknown or not stages:
            raise ValueError(f"stages: expected a non-empty selection of {list(STAGES)}, got {list(stages)!r}")
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"x: expected an image batch [N, 3, H, W], got shape {list(x.shape)}")
        wanted = set(stages)
        last = max(STAGES.index(s) for s in stages)
        out: "OrderedDict[str, Tensor]" = OrderedDict()
        x = self.relu(self.bn1(self.conv1(x)))
        if "conv1" in wanted:
            out["conv1"] = x
        x = self.maxpool(x)
        for k in range(1, last + 1):
            x = getattr(self, f"layer{k}")(x)
            if STAGES[k] in wanted:
                out[STAGES[k]] = x
        return out

    def forward(self, x: Tensor) -> Tensor:
        """``[N, 3, H, W]`` -> logits ``[N, num_classes]`` (or the conv5 map when ``num_classes`` is None)."""
        x = self.forward_features(x, ("conv5",))["conv5"]
        if self.num_classes is None:
            return x
        return self.fc(torch.flatten(self.avgpool(x), 1))

    def extra_repr(self) -> str:
        r = self.recipe.spec if self.recipe is not None else "none"
        return (f"block={self.block!r}, layers={self.layers}, width={self.width:g}, recipe={r!r}, "
                f"dilate_conv5={self.dilate_conv5}, stride_in_1x1={self.stride_in_1x1}")


def resnet(depth: int, **kwargs) -> ResNet:
    """ResNet-``depth`` (18, 34, 50, 101 or 152) with :class:`ResNet`'s keyword options.

    ``resnet(50)`` has torchvision's ``resnet50()`` keys and shapes; ``resnet(101, recipe="dconv@c5",
    dilate_conv5=True, num_classes=None)`` is DCNv1's detection trunk; ``resnet(50, recipe="mdconv@c3-c5")`` DCNv2's.
    """
    if depth not in ARCHITECTURES:
        raise ValueError(f"depth: expected one of {sorted(ARCHITECTURES)}, got {depth!r}")
    block, layers = ARCHITECTURES[depth]
    return ResNet(block, layers, **kwargs)


def deformable_layer_names(model: nn.Module) -> list[str]:
    """Names of the deformable convolutions in ``model`` (every :class:`~dcn_lessons.ops.DeformConv2d`), in order.

    Found by walking the modules, independently of the recipe that built them (the tests compare the two).
    """
    return [name for name, m in model.named_modules() if isinstance(m, DeformConv2d)]
