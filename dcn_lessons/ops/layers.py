"""Deformable convolution layers (DCNv1 §2.1, DCNv2 §3.2) and the offset-branch learning-rate helper.

* :class:`DeformConv2d` -- torchvision-compatible module (same parameter names ``weight``/``bias`` and
  init); offsets (and an optional mask) are passed to ``forward``.
* :class:`DeformConv2dPack` -- owns its offset branch ``conv_offset`` (DCNv1 Fig. 2: a plain conv on the
  same input, same kernel/stride/padding/dilation, 2*G*kh*kw output channels), zero-initialised so a
  fresh layer equals ``nn.Conv2d`` with the same weights.
* :class:`ModulatedDeformConv2dPack` -- DCNv2 Eq. (1): ``conv_offset`` gives 3*G*kh*kw channels, the
  first 2*G*kh*kw are offsets, the last G*kh*kw mask logits (sigmoid); a fresh layer equals
  ``0.5 * conv_without_bias + bias`` (the bias is added after the masked sum and is never scaled).
* :func:`offset_param_groups` -- optimizer parameter groups with a smaller learning rate for the
  offset/mask branches (DCNv2 §3.2: β = 0.1 for the conv branches; DCNv1 uses 0.01 for the fc branch
  of deformable RoI pooling in Faster R-CNN).
"""
from __future__ import annotations

import fnmatch
import math
from typing import Any, Mapping, Optional, Union

import torch
from torch import Tensor, nn
from dcn_lessons._validate.conv import as_pair
from dcn_lessons.ops.deform_conv import deform_conv2d

__all__ = ["DeformConv2d", "DeformConv2dPack", "ModulatedDeformConv2dPack", "offset_param_groups"]

IntPair = Union[int, tuple[int, int]]


def _check_positive_int(name: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name}: expected a positive int, got {value!r}")
    return value


class DeformConv2d(nn.Module):
    r"""Deformable convolution layer, DCNv1 Eq. (2) / DCNv2 Eq. (1), torchvision-compatible.

    ``y(p0) = bias + sum_k w_k * x(p0 + p_k + Δp_k) [* Δm_k]`` with bilinear sampling (DCNv1 Eq. 3).
    The offsets (and optionally the mask) come from elsewhere and are passed to :meth:`forward`;
    see :class:`DeformConv2dPack` / :class:`ModulatedDeformConv2dPack` for layers that predict them.

    Args:
        in_channels: C of the input.
        out_channels: O of the output.
        kernel_size: ``kh`` or ``(kh, kw)``.
        stride, padding, dilation: int or (h, w) pair, as in ``nn.Conv2d``.
        groups: channel groups of the weight; ``in_channels`` and ``out_channels`` must be divisible by it.
        bias: learn an additive bias ``[O]``.

    Shapes:
        input ``[N, C, H, W]``; offset ``[N, 2*G*kh*kw, Ho, Wo]`` (G offset groups, inferred; channel
        ``2k`` is Δy, ``2k+1`` Δx of kernel point k); mask ``[N, G*kh*kw, Ho, Wo]`` or None; output
        ``[N, O, Ho, Wo]`` with ``Ho = (H + 2*pad_h - (dil_h*(kh-1)+1)) // stride_h + 1``.

    Attributes:
        weight: ``[O, C/groups, kh, kw]``, Kaiming-uniform(a=sqrt(5)) like ``nn.Conv2d`` and torchvision.
        bias: ``[O]`` uniform(±1/sqrt(fan_in)), or None.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: IntPair,
        stride: IntPair = 1,
        padding: IntPair = 0,
        dilation: IntPair = 1,
        groups: int = 1,
        bias: bool = True,
    ) -> None:
        super().__init__()
        _check_positive_int("in_channels", in_channels)
        _check_positive_int("out_channels", out_channels)
        _check_positive_int("groups", groups)
        if in_channels % groups != 0:
            raise ValueError(f"in_channels: expected a multiple of groups = {groups}, got {in_channels}")
        if out_channels % groups != 0:
            raise ValueError(f"out_channels: expected a multiple of groups = {groups}, got {out_channels}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size: tuple[int, int] = as_pair("kernel_size", kernel_size)
        self.stride: tuple[int, int] = as_pair("stride", stride)
        self.padding: tuple[int, int] = as_pair("padding", padding)
        self.dilation: tuple[int, int] = as_pair("dilation", dilation)
        self.groups = groups
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, *self.kernel_size))
        if bias:
            self.bias: Optional[nn.Parameter] = nn.Parameter(torch.empty(out_channels))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The initialisation of ``nn.Conv2d`` and ``torchvision.ops.DeformConv2d``."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in, _ = nn.init._calculate_fan_in_and_fan_out(self.weight)
            bound = 1 / math.sqrt(fan_in)
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, input: Tensor, offset: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        """``[N, C, H, W]``, offset ``[N, 2*G*kh*kw, Ho, Wo]``, mask or None -> ``[N, O, Ho, Wo]``."""
        return deform_conv2d(input, offset, self.weight, self.bias, self.stride, self.padding, self.dilation, mask)

    def extra_repr(self) -> str:
        s = (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, dilation={self.dilation}"
        )
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        return s


class DeformConv2dPack(DeformConv2d):
    r"""Deformable convolution that predicts its own offsets (DCNv1 §2.1, Fig. 2).

    ``offset = conv_offset(input)``, then :class:`DeformConv2d`. ``conv_offset`` is an ``nn.Conv2d``
    with the main conv's kernel size, stride, padding and dilation and ``2*offset_groups*kh*kw`` output
    channels, weight and bias initialised to zero, so a fresh layer equals ``nn.Conv2d`` with the same
    ``weight``/``bias`` (all samples on the regular grid).

    Args:
        offset_groups: G, number of offset groups (must divide ``in_channels``); other arguments as in
            :class:`DeformConv2d`.

    Shapes:
        input ``[N, C, H, W]`` -> output ``[N, O, Ho, Wo]``.
    """

    #: channels of conv_offset per (offset group, kernel point)
    _branch_channels = 2

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: IntPair,
        stride: IntPair = 1,
        padding: IntPair = 0,
        dilation: IntPair = 1,
        groups: int = 1,
        offset_groups: int = 1,
        bias: bool = True,
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias)
        _check_positive_int("offset_groups", offset_groups)
        if in_channels % offset_groups != 0:
            raise ValueError(f"in_channels: expected a multiple of offset_groups = {offset_groups}, got {in_channels}")
        self.offset_groups = offset_groups
        kk = self.kernel_size[0] * self.kernel_size[1]
        self.conv_offset = nn.Conv2d(
            in_channels, self._branch_channels * offset_groups * kk, self.kernel_size,
            stride=self.stride, padding=self.padding, dilation=self.dilation, bias=True,
        )
        self.init_offset()

    def init_offset(self) -> None:
        """Zero the offset branch (weight and bias): offsets 0 (and mask 0.5) at the start of training."""
        nn.init.zeros_(self.conv_offset.weight)
        assert self.conv_offset.bias is not None
        nn.init.zeros_(self.conv_offset.bias)

    def offset_and_mask(self, input: Tensor) -> tuple[Tensor, Optional[Tensor]]:
        """What the branch predicts for ``input [N, C, H, W]``: offsets ``[N, 2·G·kh·kw, Ho, Wo]`` (layout of
        :class:`DeformConv2d`) and the mask ``[N, G·kh·kw, Ho, Wo]``, or None for an unmodulated layer."""
        return self.conv_offset(input), None

    def forward(self, input: Tensor) -> Tensor:  # type: ignore[override]
        """``[N, C, H, W]`` -> ``[N, O, Ho, Wo]``."""
        offset, _ = self.offset_and_mask(input)
        return deform_conv2d(input, offset, self.weight, self.bias, self.stride, self.padding, self.dilation)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", offset_groups={self.offset_groups}"


class ModulatedDeformConv2dPack(DeformConv2dPack):
    r"""Modulated deformable convolution predicting offsets and mask, DCNv2 Eq. (1), §3.2.

    ``out = conv_offset(input)`` with ``3*G*kh*kw`` channels: ``out[:, :2*G*kh*kw]`` are the offsets
    (layout of :class:`DeformConv2d`), ``sigmoid(out[:, 2*G*kh*kw:])`` the mask ``[N, G*kh*kw, Ho, Wo]``.
    The bias is added after the masked sum (as torchvision and mmcv do), so with the zero-initialised
    branch a fresh layer gives exactly ``0.5 * conv2d(input, weight) + bias``.

    Args and shapes as in :class:`DeformConv2dPack`.
    """

    _branch_channels = 3

    def offset_and_mask(self, input: Tensor) -> tuple[Tensor, Optional[Tensor]]:
        """Offsets ``[N, 2·G·kh·kw, Ho, Wo]`` and mask ``sigmoid(...)`` ``[N, G·kh·kw, Ho, Wo]`` for ``input``."""
        out = self.conv_offset(input)
        split = 2 * self.offset_groups * self.kernel_size[0] * self.kernel_size[1]
        return out[:, :split], torch.sigmoid(out[:, split:])

    def forward(self, input: Tensor) -> Tensor:  # type: ignore[override]
        """``[N, C, H, W]`` -> ``[N, O, Ho, Wo]``."""
        offset, mask = self.offset_and_mask(input)
        return deform_conv2d(input, offset, self.weight, self.bias, self.stride, self.padding, self.dilation, mask)


# ----------------------------------------------------------------------------------------------
# Optimizer parameter groups
# ----------------------------------------------------------------------------------------------
Rule = Union[str, type]


def _is_offset_branch(name: str, module: nn.Module) -> bool:
    return name == "conv_offset" or bool(getattr(module, "is_offset_branch", False))


def offset_param_groups(
    model: nn.Module,
    base_lr: float,
    offset_lr_mult: float = 0.1,
    extra_rules: Optional[Mapping[Rule, float]] = None,
) -> list[dict[str, Any]]:
    """Optimizer parameter groups giving offset/mask branches ``base_lr * β`` (DCNv2 §3.2: β = 0.1).

    The multiplier of a parameter is decided by the first rule that applies:

    1. ``extra_rules`` with a ``str`` key: an ``fnmatch`` pattern on the parameter's full name
       (e.g. ``{"roi_head.offset_fc.*": 0.01}`` for DCNv1's fc offset branch); the first matching
       pattern in the mapping's order wins;
    2. ``extra_rules`` with an ``nn.Module`` subclass key: the parameter belongs to a module of that
       type (the nearest such ancestor wins);
    3. an ``lr_mult`` attribute (a float) on the nearest module owning the parameter;
    4. the parameter lies under an offset branch: a submodule called ``conv_offset`` (the layers in
       this file, mmcv's name) or a module with ``is_offset_branch = True``: ``offset_lr_mult``;
    5. otherwise 1.

    Args:
        model: the model; each parameter (``model.named_parameters()``, shared ones once) goes to
            exactly one group.
        base_lr: learning rate of the groups with multiplier 1 (> 0).
        offset_lr_mult: β for the offset/mask branches (> 0).
        extra_rules: mapping from a name pattern or module type to a multiplier (> 0).

    Returns:
        One dict per distinct multiplier, in first-seen order:
        ``{"params": [...], "param_names": [...], "lr": base_lr * mult, "lr_mult": mult}``,
        ready for ``torch.optim.SGD(groups, lr=base_lr, ...)``.

    Raises:
        TypeError: a rule key is neither a ``str`` nor an ``nn.Module`` subclass, or a multiplier is not a number.
        ValueError: a non-positive rate, or a rule that matches no parameter (an unknown name or type).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    for nm, v in (("base_lr", base_lr), ("offset_lr_mult", offset_lr_mult)):
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not v > 0:
            raise ValueError(f"{nm}: expected a positive number, got {v!r}")
    rules = dict(extra_rules or {})
    for key, mult in rules.items():
        if not (isinstance(key, str) or (isinstance(key, type) and issubclass(key, nn.Module))):
            raise TypeError(
                f"extra_rules: expected keys that are name patterns (str) or nn.Module subclasses, got {key!r}"
            )
        if not isinstance(mult, (int, float)) or isinstance(mult, bool):
            raise TypeError(f"extra_rules[{key!r}]: expected a number, got {mult!r}")
        if not mult > 0:
            raise ValueError(f"extra_rules[{key!r}]: expected a positive multiplier, got {mult!r}")
    modules = dict(model.named_modules())
    names = [n for n, _ in model.named_parameters()]
    unknown = [
        k for k in rules
        if (isinstance(k, str) and not any(fnmatch.fnmatchcase(n, k) for n in names))
        or (isinstance(k, type) and not any(isinstance(m, k) and any(True for _ in m.parameters()) for m in modules.values()))
    ]
    if unknown:
        raise ValueError(
            f"extra_rules: unknown rule(s) {unknown!r}: they match no parameter of {type(model).__name__} "
            f"(patterns are matched against full parameter names such as {names[0] if names else '<none>'!r}; "
            f"types against the modules that own parameters)"
        )

    def multiplier(pname: str) -> float:
        for key, mult in rules.items():
            if isinstance(key, str) and fnmatch.fnmatchcase(pname, key):
                return float(mult)
        parts = pname.split(".")[:-1]
        chain = [(parts[i - 1] if i else "", modules[".".join(parts[:i])]) for i in range(len(parts) + 1)]
        for _, mod in reversed(chain):  # nearest owner first
            for key, mult in rules.items():
                if isinstance(key, type) and isinstance(mod, key):
                    return float(mult)
        for _, mod in reversed(chain):
            lr_mult = getattr(mod, "lr_mult", None)
            if lr_mult is not None:
                if not isinstance(lr_mult, (int, float)) or isinstance(lr_mult, bool) or not lr_mult > 0:
                    raise ValueError(f"{type(mod).__name__}.lr_mult: expected a positive number, got {lr_mult!r}")
                return float(lr_mult)
        if any(_is_offset_branch(nm, mod) for nm, mod in chain):
            return float(offset_lr_mult)
        return 1.0

    groups: dict[float, dict[str, Any]] = {}
    for pname, p in model.named_parameters():
        mult = multiplier(pname)
        g = groups.setdefault(mult, {"params": [], "param_names": [], "lr": base_lr * mult, "lr_mult": mult})
        g["params"].append(p)
        g["param_names"].append(pname)
    return list(groups.values())
