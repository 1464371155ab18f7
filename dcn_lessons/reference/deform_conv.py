r"""Deformable convolution, NumPy reference: DCNv1 (arXiv 1703.06211) Eq. (1)-(2), DCNv2 (arXiv 1811.11168) Eq. (1).

A plain convolution reads the input on a regular grid ``R`` around each output position ``p0`` (v1 Eq. 1):
``y(p0) = sum_{pn in R} w(pn) x(p0 + pn)``. Deformable convolution adds a learned, fractional offset per
output position and kernel point (v1 Eq. 2), and DCNv2 a learned modulation scalar ``dm_k`` in [0, 1]
(v2 Eq. 1):

.. math::  y(p) = \sum_{k=1}^{K} w_k \, x(p + p_k + \Delta p_k) \, \Delta m_k

The fractional positions are read with bilinear sampling, DCNv1 Eq. (3) (:mod:`.bilinear`).

Conventions (README, "Conventions shared by every tier"; the same names, argument order and layout as ``torchvision.ops.deform_conv2d``):

* input ``[N, C, H, W]``; weight ``[O, C/groups, kh, kw]``; bias ``[O]`` or None;
* offset ``[N, 2*G*kh*kw, Ho, Wo]``: channels ``[g*2K:(g+1)*2K]`` belong to offset group g; inside a group,
  channel ``2k`` is Δy and ``2k+1`` is Δx of kernel point ``k = i*kw + j`` (row-major over (kh, kw));
* mask ``[N, G*kh*kw, Ho, Wo]`` (channel ``g*K + k``) or None (None = DCNv1, i.e. Δm = 1);
* input channel c belongs to offset group ``c // (C/G)`` and to weight group ``c // (C/groups)``;
* ``Ho = (H + 2*pad_h - (dil_h*(kh-1)+1)) // stride_h + 1`` (likewise Wo);
* kernel point (i, j) of output (y, x) samples at
  ``(y*stride_h - pad_h + i*dil_h + Δy, x*stride_w - pad_w + j*dil_w + Δx)``.

Boundary behaviour: bilinear sampling with neighbours off the map reading 0 (zero padding, continued
smoothly to fractional positions); position gradient by the rule of mmcv and the original DCNv2 code described
in :mod:`dcn_lessons.reference.bilinear` (torchvision's too, except on the lines y = -1 and x = -1).

The vectorised path is the "columns" contract the faster tiers mirror: :func:`deform_im2col` builds
``columns [N, C*kh*kw, Ho*Wo]`` (row ``c*kh*kw + k``), the output is one matrix product per weight group,
and the backward pass scatters the columns' gradient back with :func:`deform_col2im` (input) and
:func:`deform_col2im_coord` (offset and mask).
"""
from __future__ import annotations

from typing import Any, NamedTuple, Optional

import numpy as np
from numpy.typing import ArrayLike, NDArray

from dcn_lessons._validate.conv import (
    DeformConvGeometry,
    SamplingGeometry,
    as_pair,
    check_deform_conv2d_args,
    check_finite,
    check_float_dtype,
    check_grad_output,
    check_sampling_args,
)
from dcn_lessons.reference.bilinear import _position_grad, _sample, _scatter

__all__ = [
    "DeformConvGrads",
    "deform_sampling_positions",
    "deform_im2col",
    "deform_col2im",
    "deform_col2im_coord",
    "deform_conv2d",
    "deform_conv2d_loop",
    "deform_conv2d_backward",
]

IntPair = Any  # int or (h, w)


class DeformConvGrads(NamedTuple):
    """Gradients of :func:`deform_conv2d`, each with the shape of its argument (None where that was None)."""

    input: NDArray[np.floating]
    offset: NDArray[np.floating]
    weight: NDArray[np.floating]
    bias: Optional[NDArray[np.floating]]
    mask: Optional[NDArray[np.floating]]


# ------------------------------------------------------------------------------------------------ checks

def _arrays(**named: Any) -> dict[str, Any]:
    """np.asarray every non-None argument and reject non-float dtypes (TypeError naming the argument)."""
    out = {}
    for name, value in named.items():
        if value is None:
            out[name] = None
            continue
        a = np.asarray(value)
        check_float_dtype(name, a)
        out[name] = a
    return out


def _finite(offset: NDArray, mask: Optional[NDArray]) -> None:
    check_finite("offset", offset)
    if mask is not None:
        check_finite("mask", mask)


def _sampling(input_shape: tuple[int, ...], offset: Any, mask: Any, kernel_size: IntPair, stride: IntPair,
              padding: IntPair, dilation: IntPair) -> tuple[SamplingGeometry, NDArray, Optional[NDArray]]:
    a = _arrays(offset=offset, mask=mask)
    geo = check_sampling_args(input_shape, a["offset"], a["mask"], kernel_size, stride, padding, dilation)
    _finite(a["offset"], a["mask"])
    return geo, a["offset"], a["mask"]


# ------------------------------------------------------------------------------------- sampling positions

def _positions(geo: SamplingGeometry, offset: NDArray) -> tuple[NDArray, NDArray]:
    """py, px ``[N, G, K, Ho, Wo]``: v1 Eq. (2)'s ``p0 + pn + Δpn`` in input coordinates."""
    (sh, sw), (ph, pw), (dh, dw) = geo.stride, geo.padding, geo.dilation
    i, j = np.divmod(np.arange(geo.K), geo.kw)  # kernel point k = i*kw + j
    base_y = (np.arange(geo.Ho) * sh - ph)[None, :, None] + (i * dh)[:, None, None]  # [K, Ho, 1]
    base_x = (np.arange(geo.Wo) * sw - pw)[None, None, :] + (j * dw)[:, None, None]  # [K, 1, Wo]
    off = offset.reshape(geo.N, geo.offset_groups, geo.K, 2, geo.Ho, geo.Wo)
    return base_y + off[:, :, :, 0], base_x + off[:, :, :, 1]


def deform_sampling_positions(
    offset: ArrayLike, kernel_size: IntPair, stride: IntPair = 1, padding: IntPair = 0, dilation: IntPair = 1
) -> tuple[NDArray[np.floating], NDArray[np.floating]]:
    """Where every kernel point samples (v1 Eq. 2: ``p0 + pn + Δpn``): ``(py, px)``, each ``[N, G, kh*kw, Ho, Wo]``.

    offset ``[N, 2*G*kh*kw, Ho, Wo]``; ``py[n, g, k, y, x] = y*stride_h - pad_h + i*dil_h + Δy`` with
    ``k = i*kw + j`` (likewise px). No boundary handling (positions may lie outside the map).
    """
    off = np.asarray(offset)
    check_float_dtype("offset", off)
    if off.ndim != 4:
        raise ValueError(f"offset: expected a 4-D shape [N, 2*offset_groups*kh*kw, Ho, Wo], got {list(off.shape)}")
    kh, kw = as_pair("kernel_size", kernel_size)
    if kh < 1 or kw < 1 or off.shape[1] % (2 * kh * kw) or off.shape[1] == 0:
        raise ValueError(
            f"offset: expected 2*offset_groups*kh*kw channels, a positive multiple of 2*{kh}*{kw} = {2 * kh * kw}, "
            f"got {off.shape[1]}"
        )
    N, _, Ho, Wo = off.shape
    G = off.shape[1] // (2 * kh * kw)
    geo = SamplingGeometry(N, G, 1, 1, kh, kw, G, Ho, Wo, as_pair("stride", stride), as_pair("padding", padding),
                           as_pair("dilation", dilation))
    return _positions(geo, off)


# ------------------------------------------------------------------------------------------- im2col path

def _im2col(x: NDArray, offset: NDArray, mask: Optional[NDArray], geo: SamplingGeometry) -> NDArray:
    py, px = _positions(geo, offset)
    G, K, L = geo.offset_groups, geo.K, geo.Ho * geo.Wo
    cpg = geo.C // G
    cols = np.empty((geo.N, geo.C * K, L), dtype=np.result_type(x, offset))
    for n in range(geo.N):
        for gi in range(G):
            v = _sample(x[n, gi * cpg:(gi + 1) * cpg], py[n, gi], px[n, gi])  # [cpg, K, Ho, Wo]
            if mask is not None:
                v = v * mask[n, gi * K:(gi + 1) * K][None]
            cols[n, gi * cpg * K:(gi + 1) * cpg * K] = v.reshape(cpg * K, L)
    return cols


def deform_im2col(
    input: ArrayLike,
    offset: ArrayLike,
    mask: Optional[ArrayLike],
    kernel_size: IntPair,
    stride: IntPair = 1,
    padding: IntPair = 0,
    dilation: IntPair = 1,
) -> NDArray[np.floating]:
    """Deformable im2col: every sampled (and modulated) value of v2 Eq. (1), ``x(p + p_k + Δp_k) · Δm_k``.

    Shapes: input ``[N, C, H, W]``, offset ``[N, 2*G*kh*kw, Ho, Wo]``, mask ``[N, G*kh*kw, Ho, Wo]`` or None;
    returns columns ``[N, C*kh*kw, Ho*Wo]`` with row ``c*kh*kw + k`` and column ``y*Wo + x``, so that for
    weight group gr: ``out[n, gr] = weight.reshape(groups, O/groups, -1)[gr] @ columns[n, gr-th block of rows]``.
    Boundary: Eq. (3) with off-map neighbours reading 0.
    """
    a = _arrays(input=input)
    x = a["input"]
    geo, off, m = _sampling(x.shape, offset, mask, kernel_size, stride, padding, dilation)
    return _im2col(x, off, m, geo)


def _weight_groups(weight: NDArray, geo: DeformConvGeometry) -> NDArray:
    return weight.reshape(geo.groups, geo.O // geo.groups, -1)  # [groups, O/groups, C/groups*K]


def deform_conv2d(
    input: ArrayLike,
    offset: ArrayLike,
    weight: ArrayLike,
    bias: Optional[ArrayLike] = None,
    stride: IntPair = 1,
    padding: IntPair = 0,
    dilation: IntPair = 1,
    mask: Optional[ArrayLike] = None,
) -> NDArray[np.floating]:
    """Deformable convolution, v1 Eq. (2) (mask None) or v2 Eq. (1) (mask given), by im2col.

    ``y(p) = sum_k w_k · x(p + p_k + Δp_k) · Δm_k + b`` for every output channel, summed over the input
    channels of its weight group.

    Shapes: input ``[N, C, H, W]``; offset ``[N, 2*G*kh*kw, Ho, Wo]``; weight ``[O, C/groups, kh, kw]``;
    bias ``[O]`` or None; mask ``[N, G*kh*kw, Ho, Wo]`` or None; returns ``[N, O, Ho, Wo]``.
    stride, padding, dilation: int or (h, w). groups and G are inferred from the shapes (as torchvision).
    Boundary: bilinear sampling, neighbours off the map read 0. Raises ValueError/TypeError naming the
    argument for bad shapes, non-finite offset/mask, or non-float arrays.
    """
    a = _arrays(input=input, offset=offset, weight=weight, bias=bias, mask=mask)
    geo = check_deform_conv2d_args(a["input"], a["offset"], a["weight"], a["bias"], a["mask"],
                                   stride, padding, dilation)
    _finite(a["offset"], a["mask"])
    cols = _im2col(a["input"], a["offset"], a["mask"], geo)
    cols = cols.reshape(geo.N, geo.groups, -1, geo.Ho * geo.Wo)  # [N, groups, C/groups*K, L]
    out = np.einsum("goc,ngcl->ngol", _weight_groups(a["weight"], geo), cols)
    out = out.reshape(geo.N, geo.O, geo.Ho, geo.Wo)
    if a["bias"] is not None:
        out = out + a["bias"][None, :, None, None]
    return out


def deform_conv2d_loop(
    input: ArrayLike,
    offset: ArrayLike,
    weight: ArrayLike,
    bias: Optional[ArrayLike] = None,
    stride: IntPair = 1,
    padding: IntPair = 0,
    dilation: IntPair = 1,
    mask: Optional[ArrayLike] = None,
) -> NDArray[np.floating]:
    """v1 Eq. (2) / v2 Eq. (1) as a literal loop over n, o, y, x, k (and the input channels c of o's group).

    Same signature, shapes and boundary behaviour as :func:`deform_conv2d`; slow, meant for tiny shapes and
    for reading next to the equation.
    """
    a = _arrays(input=input, offset=offset, weight=weight, bias=bias, mask=mask)
    x, off, w, b, m = a["input"], a["offset"], a["weight"], a["bias"], a["mask"]
    geo = check_deform_conv2d_args(x, off, w, b, m, stride, padding, dilation)
    _finite(off, m)
    (sh, sw), (ph, pw), (dh, dw) = geo.stride, geo.padding, geo.dilation
    K, Cg = geo.K, geo.C // geo.groups
    C_per_offset_group = geo.C // geo.offset_groups
    out = np.zeros((geo.N, geo.O, geo.Ho, geo.Wo), dtype=np.result_type(x, off, w))
    for n in range(geo.N):
        for o in range(geo.O):
            group = o // (geo.O // geo.groups)
            for y in range(geo.Ho):
                for xo in range(geo.Wo):
                    acc = 0.0 if b is None else b[o]
                    for k in range(K):
                        i, j = divmod(k, geo.kw)
                        for c_in_group in range(Cg):
                            c = group * Cg + c_in_group
                            og = c // C_per_offset_group
                            dy = off[n, og * 2 * K + 2 * k, y, xo]
                            dx = off[n, og * 2 * K + 2 * k + 1, y, xo]
                            dm = 1.0 if m is None else m[n, og * K + k, y, xo]
                            py = y * sh - ph + i * dh + dy  # p + p_k + Δp_k
                            px = xo * sw - pw + j * dw + dx
                            value = _sample(x[n, c][None], np.asarray(py), np.asarray(px))[0]
                            acc = acc + w[o, c_in_group, i, j] * value * dm
                    out[n, o, y, xo] = acc
    return out


# --------------------------------------------------------------------------------------------- backward

def _per_group_grad(geo: SamplingGeometry, grad_columns: NDArray, offset: NDArray,
                    mask: Optional[NDArray]) -> tuple[NDArray, NDArray, NDArray]:
    """Split columns' gradient into ``[N, G, C/G, K, Ho, Wo]`` and return it with py, px."""
    expected = (geo.N, geo.C * geo.K, geo.Ho * geo.Wo)
    if grad_columns.shape != expected:
        raise ValueError(f"grad_columns: expected shape [N, C*kh*kw, Ho*Wo] = {list(expected)}, "
                         f"got {list(grad_columns.shape)}")
    py, px = _positions(geo, offset)
    gc = grad_columns.reshape(geo.N, geo.offset_groups, geo.C // geo.offset_groups, geo.K, geo.Ho, geo.Wo)
    return gc, py, px


def _mask_view(mask: NDArray, geo: SamplingGeometry) -> NDArray:
    return mask.reshape(geo.N, geo.offset_groups, 1, geo.K, geo.Ho, geo.Wo)


def _col2im(grad_columns: NDArray, offset: NDArray, mask: Optional[NDArray], geo: SamplingGeometry) -> NDArray:
    gc, py, px = _per_group_grad(geo, grad_columns, offset, mask)
    if mask is not None:
        gc = gc * _mask_view(mask, geo)
    cpg = geo.C // geo.offset_groups
    grad = np.zeros((geo.N, geo.C, geo.H, geo.W), dtype=np.result_type(grad_columns, offset))
    for n in range(geo.N):
        for gi in range(geo.offset_groups):
            grad[n, gi * cpg:(gi + 1) * cpg] = _scatter(gc[n, gi], (cpg, geo.H, geo.W), py[n, gi], px[n, gi])
    return grad


def _col2im_coord(grad_columns: NDArray, x: NDArray, offset: NDArray, mask: Optional[NDArray],
                  geo: SamplingGeometry) -> tuple[NDArray, Optional[NDArray]]:
    gc, py, px = _per_group_grad(geo, grad_columns, offset, mask)
    cpg = geo.C // geo.offset_groups
    dtype = np.result_type(grad_columns, x, offset)
    grad_off = np.zeros((geo.N, geo.offset_groups, geo.K, 2, geo.Ho, geo.Wo), dtype=dtype)
    grad_mask = None if mask is None else np.zeros((geo.N, geo.offset_groups, geo.K, geo.Ho, geo.Wo), dtype=dtype)
    for n in range(geo.N):
        for gi in range(geo.offset_groups):
            xs = x[n, gi * cpg:(gi + 1) * cpg]
            g = gc[n, gi]  # [cpg, K, Ho, Wo]
            if mask is not None:
                # d out / d Δm_k = sum_c grad_col * x(p + p_k + Δp_k)
                grad_mask[n, gi] = np.sum(g * _sample(xs, py[n, gi], px[n, gi]), axis=0)
                g = g * mask[n, gi * geo.K:(gi + 1) * geo.K][None]
            gy, gx = _position_grad(g, xs, py[n, gi], px[n, gi])
            grad_off[n, gi, :, 0] = gy
            grad_off[n, gi, :, 1] = gx
    grad_off = grad_off.reshape(geo.N, 2 * geo.offset_groups * geo.K, geo.Ho, geo.Wo)
    if grad_mask is not None:
        grad_mask = grad_mask.reshape(geo.N, geo.offset_groups * geo.K, geo.Ho, geo.Wo)
    return grad_off, grad_mask


def deform_col2im(
    grad_columns: ArrayLike,
    offset: ArrayLike,
    mask: Optional[ArrayLike],
    input_shape: tuple[int, int, int, int],
    kernel_size: IntPair,
    stride: IntPair = 1,
    padding: IntPair = 0,
    dilation: IntPair = 1,
) -> NDArray[np.floating]:
    """Input gradient of :func:`deform_im2col` (col2im): scatter each column entry's gradient to the input.

    Each sampled value ``x(p_s) · Δm`` adds ``grad_col · Δm · G(q, p_s)`` to the four in-map corners q of its
    sampling position (v1 Eq. 3 is linear in x, so this is exact; off-map corners get nothing).

    Shapes: grad_columns ``[N, C*kh*kw, Ho*Wo]``; offset ``[N, 2*G*kh*kw, Ho, Wo]``; mask
    ``[N, G*kh*kw, Ho, Wo]`` or None; input_shape ``(N, C, H, W)``; returns ``[N, C, H, W]``.
    """
    gc = _arrays(grad_columns=grad_columns)["grad_columns"]
    geo, off, m = _sampling(tuple(input_shape), offset, mask, kernel_size, stride, padding, dilation)
    return _col2im(gc, off, m, geo)


def deform_col2im_coord(
    grad_columns: ArrayLike,
    input: ArrayLike,
    offset: ArrayLike,
    mask: Optional[ArrayLike],
    kernel_size: IntPair,
    stride: IntPair = 1,
    padding: IntPair = 0,
    dilation: IntPair = 1,
) -> tuple[NDArray[np.floating], Optional[NDArray[np.floating]]]:
    """Offset and mask gradients of :func:`deform_im2col`: ``(grad_offset, grad_mask)``.

    grad_offset: for channel ``2k`` (Δy) / ``2k+1`` (Δx) of group g, the sum over the group's channels c of
    ``grad_col · Δm_k · d x_c(p)/dp`` with the position rule of :mod:`.bilinear` (0 unless -1 < y < H and
    -1 < x < W; floor held fixed, so a forward difference at integer coordinates).
    grad_mask (v2 Eq. 1): ``sum_c grad_col · x_c(p + p_k + Δp_k)``; None when mask is None.

    Shapes: grad_columns ``[N, C*kh*kw, Ho*Wo]``; input ``[N, C, H, W]``; offset ``[N, 2*G*kh*kw, Ho, Wo]``;
    mask ``[N, G*kh*kw, Ho, Wo]`` or None. Returns offset- and mask-shaped arrays.
    """
    a = _arrays(grad_columns=grad_columns, input=input)
    geo, off, m = _sampling(a["input"].shape, offset, mask, kernel_size, stride, padding, dilation)
    return _col2im_coord(a["grad_columns"], a["input"], off, m, geo)


def deform_conv2d_backward(
    grad_output: ArrayLike,
    input: ArrayLike,
    offset: ArrayLike,
    weight: ArrayLike,
    bias: Optional[ArrayLike] = None,
    stride: IntPair = 1,
    padding: IntPair = 0,
    dilation: IntPair = 1,
    mask: Optional[ArrayLike] = None,
) -> DeformConvGrads:
    """Gradients of :func:`deform_conv2d` (v1 Eq. 2 / v2 Eq. 1) given ``grad_output [N, O, Ho, Wo]``.

    * weight: ``grad_out[n, gr] @ columns[n, gr]^T`` summed over n (columns from :func:`deform_im2col`);
    * bias: ``grad_output`` summed over n, y, x;
    * grad_columns = ``weight_gr^T @ grad_out[n, gr]``, then input by :func:`deform_col2im`,
      offset and mask by :func:`deform_col2im_coord` (position rule: forward difference at integers,
      0 outside -1 < y < H, -1 < x < W).

    Returns :class:`DeformConvGrads` ``(input, offset, weight, bias, mask)``, each shaped like its argument;
    bias is None when bias is None, mask None when mask is None.
    """
    a = _arrays(grad_output=grad_output, input=input, offset=offset, weight=weight, bias=bias, mask=mask)
    x, off, w, b, m = a["input"], a["offset"], a["weight"], a["bias"], a["mask"]
    geo = check_deform_conv2d_args(x, off, w, b, m, stride, padding, dilation)
    check_grad_output(a["grad_output"], geo)
    _finite(off, m)
    L = geo.Ho * geo.Wo
    go = a["grad_output"].reshape(geo.N, geo.groups, geo.O // geo.groups, L)  # [N, groups, O/groups, L]
    cols = _im2col(x, off, m, geo).reshape(geo.N, geo.groups, -1, L)  # [N, groups, C/groups*K, L]
    wg = _weight_groups(w, geo)
    grad_weight = np.einsum("ngol,ngcl->goc", go, cols).reshape(w.shape)
    grad_bias = None if b is None else a["grad_output"].sum(axis=(0, 2, 3))
    grad_cols = np.einsum("goc,ngol->ngcl", wg, go).reshape(geo.N, geo.C * geo.K, L)
    grad_input = _col2im(grad_cols, off, m, geo)
    grad_offset, grad_mask = _col2im_coord(grad_cols, x, off, m, geo)
    return DeformConvGrads(grad_input, grad_offset, grad_weight, grad_bias, grad_mask)
