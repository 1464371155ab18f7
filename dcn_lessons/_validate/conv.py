"""Argument checks for deformable convolution, shared by every tier.

The shape checks read only ``.shape`` and ``.ndim`` (and ``len``/``int`` of plain Python values), so the
NumPy reference and the PyTorch tier call the same functions and raise the same messages. Value checks that
need to look at the data (:func:`check_finite`, :func:`check_float_dtype`) are written for NumPy arrays; the
torch tier decides for itself whether to use them.

Conventions (the README's "Conventions shared by every tier", as ``torchvision.ops.deform_conv2d``):

* input ``[N, C, H, W]``; weight ``[O, C/groups, kh, kw]``; bias ``[O]``;
* offset ``[N, 2*G*kh*kw, Ho, Wo]`` (G offset groups), mask ``[N, G*kh*kw, Ho, Wo]``;
* ``Ho = (H + 2*pad_h - (dil_h*(kh-1)+1)) // stride_h + 1`` (likewise ``Wo``);
* ``groups = C // weight.shape[1]`` and ``G = offset.shape[1] // (2*kh*kw)`` are inferred from the shapes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

__all__ = [
    "SamplingGeometry",
    "DeformConvGeometry",
    "as_pair",
    "check_sampling_args",
    "check_deform_conv2d_args",
    "check_grad_output",
    "check_finite",
    "check_float_dtype",
]


@dataclass(frozen=True)
class SamplingGeometry:
    """Sizes shared by im2col/col2im: everything that fixes where the kernel samples (no weight)."""

    N: int
    C: int
    H: int
    W: int
    kh: int
    kw: int
    offset_groups: int
    Ho: int
    Wo: int
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]

    @property
    def K(self) -> int:
        """Number of kernel points ``kh*kw``."""
        return self.kh * self.kw


@dataclass(frozen=True)
class DeformConvGeometry(SamplingGeometry):
    """:class:`SamplingGeometry` plus the weight's sizes: ``O`` output channels in ``groups`` groups."""

    O: int
    groups: int


def _shape(name: str, value: Any) -> tuple[int, ...]:
    if not hasattr(value, "shape") or not hasattr(value, "ndim"):
        raise TypeError(f"{name}: expected an array or tensor, got {type(value).__name__}")
    return tuple(int(s) for s in value.shape)


def _fmt(shape: Sequence[int]) -> str:
    return "[" + ", ".join(str(int(s)) for s in shape) + "]"


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def as_pair(name: str, value: Any) -> tuple[int, int]:
    """Turn ``value`` (an int or a pair of ints) into ``(h, w)``; TypeError naming ``name`` otherwise."""
    if _is_int(value):
        return int(value), int(value)
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(_is_int(v) for v in value):
        return int(value[0]), int(value[1])
    raise TypeError(f"{name}: expected an int or a pair of ints (h, w), got {value!r}")


def _out_size(size: int, k: int, s: int, p: int, d: int) -> int:
    return (size + 2 * p - (d * (k - 1) + 1)) // s + 1


def check_sampling_args(
    input_shape: Sequence[int],
    offset: Any,
    mask: Any,
    kernel_size: Any,
    stride: Any,
    padding: Any,
    dilation: Any,
) -> SamplingGeometry:
    """Check the arguments that fix the sampling positions and return the geometry.

    ``input_shape`` is ``[N, C, H, W]``; ``offset`` and ``mask`` (or None) are arrays/tensors; the rest are
    ints or ``(h, w)`` pairs. Raises ValueError/TypeError naming the argument and the expected value.
    """
    input_shape = tuple(int(s) for s in input_shape)
    if len(input_shape) != 4:
        raise ValueError(f"input: expected a 4-D shape [N, C, H, W], got {len(input_shape)}-D {_fmt(input_shape)}")
    N, C, H, W = input_shape
    if min(input_shape) < 1:
        raise ValueError(f"input: expected every size of [N, C, H, W] >= 1, got {_fmt(input_shape)}")
    kh, kw = as_pair("kernel_size", kernel_size)
    if kh < 1 or kw < 1:
        raise ValueError(f"kernel_size: expected kh, kw >= 1, got ({kh}, {kw})")
    sh, sw = as_pair("stride", stride)
    ph, pw = as_pair("padding", padding)
    dh, dw = as_pair("dilation", dilation)
    if sh < 1 or sw < 1:
        raise ValueError(f"stride: expected >= 1, got ({sh}, {sw})")
    if ph < 0 or pw < 0:
        raise ValueError(f"padding: expected >= 0, got ({ph}, {pw})")
    if dh < 1 or dw < 1:
        raise ValueError(f"dilation: expected >= 1, got ({dh}, {dw})")
    Ho = _out_size(H, kh, sh, ph, dh)
    Wo = _out_size(W, kw, sw, pw, dw)
    formula = (
        f"Ho = (H + 2*pad_h - (dil_h*(kh-1)+1)) // stride_h + 1 = ({H} + 2*{ph} - ({dh}*{kh - 1}+1)) // {sh} + 1 "
        f"= {Ho}, Wo = (W + 2*pad_w - (dil_w*(kw-1)+1)) // stride_w + 1 = ({W} + 2*{pw} - ({dw}*{kw - 1}+1)) "
        f"// {sw} + 1 = {Wo}"
    )
    if Ho < 1 or Wo < 1:
        raise ValueError(f"input: the output would be empty: {formula}; enlarge the input or padding")

    K = kh * kw
    oshape = _shape("offset", offset)
    if len(oshape) != 4:
        raise ValueError(
            f"offset: expected a 4-D shape [N, 2*offset_groups*kh*kw, Ho, Wo], got {len(oshape)}-D {_fmt(oshape)}"
        )
    if oshape[1] < 1 or oshape[1] % (2 * K) != 0:
        raise ValueError(
            f"offset: expected 2*offset_groups*kh*kw channels, a positive multiple of 2*{kh}*{kw} = {2 * K}, "
            f"got {oshape[1]} (shape {_fmt(oshape)})"
        )
    G = oshape[1] // (2 * K)
    expected = (N, 2 * G * K, Ho, Wo)
    if oshape != expected:
        raise ValueError(
            f"offset: expected shape [N, 2*offset_groups*kh*kw, Ho, Wo] = {_fmt(expected)} where {formula}, "
            f"got {_fmt(oshape)}"
        )
    if C % G != 0:
        raise ValueError(
            f"offset: offset_groups = offset.shape[1] // (2*kh*kw) = {G} must divide the input channels C = {C}"
        )
    if mask is not None:
        mshape = _shape("mask", mask)
        mexp = (N, G * K, Ho, Wo)
        if mshape != mexp:
            raise ValueError(
                f"mask: expected shape [N, offset_groups*kh*kw, Ho, Wo] = {_fmt(mexp)}, got {_fmt(mshape)}"
            )
    return SamplingGeometry(N, C, H, W, kh, kw, G, Ho, Wo, (sh, sw), (ph, pw), (dh, dw))


def check_deform_conv2d_args(
    input: Any,
    offset: Any,
    weight: Any,
    bias: Any,
    mask: Any,
    stride: Any,
    padding: Any,
    dilation: Any,
) -> DeformConvGeometry:
    """Check the arguments of ``deform_conv2d`` (torchvision's names and order) and return the geometry.

    Shapes: input ``[N, C, H, W]``, offset ``[N, 2*G*kh*kw, Ho, Wo]``, weight ``[O, C/groups, kh, kw]``,
    bias ``[O]`` or None, mask ``[N, G*kh*kw, Ho, Wo]`` or None. Reads only ``.shape``/``.ndim``.
    """
    ishape = _shape("input", input)
    if len(ishape) != 4:
        raise ValueError(f"input: expected a 4-D shape [N, C, H, W], got {len(ishape)}-D {_fmt(ishape)}")
    wshape = _shape("weight", weight)
    if len(wshape) != 4:
        raise ValueError(
            f"weight: expected a 4-D shape [out_channels, in_channels/groups, kh, kw], got {len(wshape)}-D "
            f"{_fmt(wshape)}"
        )
    O, Cg, kh, kw = wshape
    if min(wshape) < 1:
        raise ValueError(f"weight: expected every size of [O, C/groups, kh, kw] >= 1, got {_fmt(wshape)}")
    C = ishape[1]
    if C % Cg != 0:
        raise ValueError(
            f"weight: weight.shape[1] = {Cg} (in_channels/groups) must divide the input channels C = {C}"
        )
    groups = C // Cg
    if O % groups != 0:
        raise ValueError(
            f"weight: out_channels = {O} must be divisible by groups = C // weight.shape[1] = {C} // {Cg} = {groups}"
        )
    geo = check_sampling_args(ishape, offset, mask, (kh, kw), stride, padding, dilation)
    if bias is not None:
        bshape = _shape("bias", bias)
        if bshape != (O,):
            raise ValueError(f"bias: expected shape [out_channels] = [{O}], got {_fmt(bshape)}")
    return DeformConvGeometry(
        geo.N, geo.C, geo.H, geo.W, geo.kh, geo.kw, geo.offset_groups, geo.Ho, geo.Wo,
        geo.stride, geo.padding, geo.dilation, O, groups,
    )


def check_grad_output(grad_output: Any, geo: DeformConvGeometry) -> None:
    """grad_output of deform_conv2d must be ``[N, O, Ho, Wo]``."""
    gshape = _shape("grad_output", grad_output)
    exp = (geo.N, geo.O, geo.Ho, geo.Wo)
    if gshape != exp:
        raise ValueError(f"grad_output: expected shape [N, O, Ho, Wo] = {_fmt(exp)}, got {_fmt(gshape)}")


def check_finite(name: str, array: Any) -> None:
    """ValueError naming ``name`` when a NumPy array holds nan or inf (sampling positions must be finite)."""
    a = np.asarray(array)
    if a.size and not np.all(np.isfinite(a)):
        bad = int(a.size - np.count_nonzero(np.isfinite(a)))
        raise ValueError(f"{name}: expected finite values, found {bad} non-finite (nan or inf) of {a.size}")


def check_float_dtype(name: str, array: Any) -> None:
    """TypeError naming ``name`` unless the NumPy array has a floating dtype (the reference tier is float-only)."""
    dtype = np.asarray(array).dtype
    if not np.issubdtype(dtype, np.floating):
        raise TypeError(f"{name}: expected a floating-point array (float32 or float64), got dtype {dtype}")
