"""Deformable convolution as a PyTorch operator with a hand-written backward (DCNv1, DCNv2).

The operator is the one of DCNv1 (Dai et al., arXiv 1703.06211) Eq. (2)

    y(p0) = sum_k w(p_k) * x(p0 + p_k + Δp_k)

with x(p) sampled by bilinear interpolation, Eq. (3)-(4), and its modulated form of DCNv2
(Zhu et al., arXiv 1811.11168) Eq. (1)

    y(p) = sum_k w_k * x(p + p_k + Δp_k) * Δm_k.

It is computed in the im2col form of the authors' code (and torchvision's and mmcv's), with the
gradients of DCNv1 Appendix A: a *deformable im2col* gathers the sampled values into a columns
matrix, a GEMM with the weight (per group) gives the output, and the backward pass runs the GEMMs
the other way round, scatters the columns' gradient back into the input (*col2im*) and
differentiates the bilinear weights with respect to the sampling position (*col2im_coord*, DCNv1
Eq. 7) to get the offset (and mask) gradients.

Conventions (the README's "Conventions shared by every tier", as in torchvision and mmcv):

* offset ``[N, 2*G*kh*kw, Ho, Wo]``: for offset group g and kernel point k (row-major over
  (kh, kw)), channel ``g*2*K + 2k`` is Δy and ``g*2*K + 2k + 1`` is Δx; mask ``[N, G*kh*kw, Ho, Wo]``.
* the sampling position of kernel point (i, j) for output (y, x) is
  ``(y*stride_h - pad_h + i*dil_h + Δy, x*stride_w - pad_w + j*dil_w + Δx)``;
  input channel c belongs to offset group ``c // (C/G)``.
* values follow Eq. (3) literally: integral neighbours outside the map contribute 0, so a sample
  with y <= -1 or y >= H (likewise x) is 0.
* position gradient: a sample is *inside* iff -1 < y < H and -1 < x < W; outside, value and
  gradient are 0; inside, the corners are floor(p) and floor(p)+1 (missing corners read as 0) and
  the gradient is taken with the floor held fixed, so at an integer coordinate it is the forward
  difference x(q+1) - x(q).
* non-finite positions (NaN/inf offsets) are treated as outside (value and gradients 0); this
  tier does not scan for them (that would cost a device sync).

The three primitives :func:`deform_im2col`, :func:`deform_col2im` and :func:`deform_col2im_coord`
are the contract shared with the CUDA tier (``dcn_lessons.cuda.kernels_for``), with a fourth,
``deform_conv_backward_columns``: the input, offset and mask gradients in one call (the CUDA kernels
can fuse it). The optional compiled CPU path (``dcn_lessons.ops._cpu_numba``) computes the same forward
and backward with its own, channels-last layout. :func:`deform_conv2d` dispatches per call.
"""
from __future__ import annotations

import os
from typing import Any, Optional, Sequence, Union

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from dcn_lessons._validate.conv import check_deform_conv2d_args

__all__ = [
    "deform_conv2d",
    "deform_im2col",
    "deform_col2im",
    "deform_col2im_coord",
    "cpu_fast_path_available",
    "active_backend",
]

IntPair = Union[int, Sequence[int]]
Pair = tuple[int, int]

#: The forward and backward passes process the batch in chunks of images so that at most one
#: columns buffer of about this many bytes is alive at a time (at least one image per chunk).
COLUMNS_BUDGET_BYTES: int = 64 * 2**20


# ----------------------------------------------------------------------------------------------
# Sampling positions and bilinear corners (the rule is written once, here)
# ----------------------------------------------------------------------------------------------
def _sampling_positions(
    offset: Tensor, kernel_size: Pair, stride: Pair, padding: Pair, dilation: Pair
) -> tuple[Tensor, Tensor]:
    """Absolute sampling positions (py, px), each ``[n, G, K, Ho*Wo]`` (v1 Eq. 2: p0 + p_k + Δp_k)."""
    n, ch, ho, wo = offset.shape
    kh, kw = kernel_size
    k = kh * kw
    g = ch // (2 * k)
    off = offset.reshape(n, g, k, 2, ho * wo)
    dev, dt = offset.device, offset.dtype
    # p0 + p_k for every (kernel point, output pixel): [K, Ho*Wo]
    ky = (torch.arange(kh, device=dev, dtype=dt) * dilation[0]).repeat_interleave(kw)
    kx = (torch.arange(kw, device=dev, dtype=dt) * dilation[1]).repeat(kh)
    oy = (torch.arange(ho, device=dev, dtype=dt) * stride[0] - padding[0]).repeat_interleave(wo)
    ox = (torch.arange(wo, device=dev, dtype=dt) * stride[1] - padding[1]).repeat(ho)
    py = ky[:, None] + oy[None, :] + off[:, :, :, 0]
    px = kx[:, None] + ox[None, :] + off[:, :, :, 1]
    return py, px


class _Corners:
    """The four integral neighbours of each sample (v1 Eq. 3-4 with the course's position rule).

    Corner order is (y0, x0), (y0, x1), (y1, x0), (y1, x1) with y0 = floor(py), y1 = y0 + 1.
    ``index[c]`` is the flat index y*W + x (clamped into the map so it can always be gathered),
    ``valid[c]`` is 1 where the sample is inside and the corner lies in the map, else 0, and
    ``weight[c]`` = valid * bilinear weight. ``ly, lx, hy, hx`` are the fractional parts and
    their complements (finite everywhere; meaningless where the sample is outside).
    """

    def __init__(self, py: Tensor, px: Tensor, height: int, width: int) -> None:
        inside = (py > -1) & (py < height) & (px > -1) & (px < width)
        zero = torch.zeros((), dtype=py.dtype, device=py.device)
        py = torch.where(inside, py, zero)  # keeps floor() finite for far-away / non-finite samples
        px = torch.where(inside, px, zero)
        y0f, x0f = torch.floor(py), torch.floor(px)
        self.ly, self.lx = py - y0f, px - x0f
        self.hy, self.hx = 1 - self.ly, 1 - self.lx
        y0, x0 = y0f.long(), x0f.long()
        y1, x1 = y0 + 1, x0 + 1
        ins = inside.to(py.dtype)
        vy0, vy1 = (y0 >= 0).to(py.dtype), (y1 <= height - 1).to(py.dtype)
        vx0, vx1 = (x0 >= 0).to(py.dtype), (x1 <= width - 1).to(py.dtype)
        y0c, y1c = y0.clamp(0, height - 1), y1.clamp(0, height - 1)
        x0c, x1c = x0.clamp(0, width - 1), x1.clamp(0, width - 1)
        self.index = [y0c * width + x0c, y0c * width + x1c, y1c * width + x0c, y1c * width + x1c]
        self.valid = [ins * vy0 * vx0, ins * vy0 * vx1, ins * vy1 * vx0, ins * vy1 * vx1]
        bil = [self.hy * self.hx, self.hy * self.lx, self.ly * self.hx, self.ly * self.lx]
        self.weight = [v * b for v, b in zip(self.valid, bil)]


def _position_grads(cr: _Corners, s00: Tensor, s01: Tensor, s10: Tensor, s11: Tensor) -> tuple[Tensor, Tensor]:
    """d/dy and d/dx of a bilinear sample (v1 Eq. 4 differentiated with floor(p) held fixed), from
    S_q = sum over channels of grad * x(q) at its four corners q (a corner off the map reads 0)."""
    return cr.hx * (s10 - s00) + cr.lx * (s11 - s01), cr.hy * (s01 - s00) + cr.ly * (s11 - s10)


def _as_pair(v: IntPair) -> Pair:
    if isinstance(v, int):
        return (v, v)
    a, b = v
    return (int(a), int(b))


def _mask_view(mask: Optional[Tensor], n: int, g: int, k: int, length: int) -> Optional[Tensor]:
    return None if mask is None else mask.reshape(n, g, k, length)


# ----------------------------------------------------------------------------------------------
# The three primitives of the tensor path (device-agnostic; same contract as the CUDA tier)
# ----------------------------------------------------------------------------------------------
def deform_im2col(
    input: Tensor,
    offset: Tensor,
    mask: Optional[Tensor],
    kernel_size: IntPair,
    stride: IntPair,
    padding: IntPair,
    dilation: IntPair,
) -> Tensor:
    """Deformable im2col (DCNv1 Eq. 2-3, App. A; DCNv2 Eq. 1 with ``mask``): the columns matrix.

    Args:
        input: ``[n, C, H, W]``.
        offset: ``[n, 2*G*kh*kw, Ho, Wo]`` (G offset groups inferred from the channel count).
        mask: ``[n, G*kh*kw, Ho, Wo]`` or None (DCNv1).
        kernel_size, stride, padding, dilation: ints or (h, w) pairs.

    Returns:
        columns ``[n, C*kh*kw, Ho*Wo]``; row ``c*kh*kw + k`` holds ``mask * x_c(p0 + p_k + Δp_k)``
        for every output pixel, so ``output = weight.view(groups, O/groups, -1) @ columns`` per group.

    Boundary: samples follow Eq. (3) literally (neighbours outside the map read 0; a sample with
    y <= -1 or y >= H, likewise x, is 0). Shapes are assumed valid (checked by the caller).
    """
    ks, st, pd, dl = (_as_pair(v) for v in (kernel_size, stride, padding, dilation))
    n, c, h, w = input.shape
    ho, wo = offset.shape[2], offset.shape[3]
    k = ks[0] * ks[1]
    g = offset.shape[1] // (2 * k)
    length = ho * wo
    py, px = _sampling_positions(offset, ks, st, pd, dl)
    cr = _Corners(py, px, h, w)
    m = _mask_view(mask, n, g, k, length)
    src = input.reshape(n, g, c // g, h * w)
    cols: Optional[Tensor] = None
    for idx, wt in zip(cr.index, cr.weight):
        if m is not None:
            wt = wt * m
        vals = torch.gather(src, 3, idx.reshape(n, g, 1, k * length).expand(n, g, c // g, k * length))
        term = vals.mul_(wt.reshape(n, g, 1, k * length))
        cols = term if cols is None else cols.add_(term)
    assert cols is not None
    return cols.reshape(n, c * k, length)


def deform_col2im(
    grad_columns: Tensor,
    offset: Tensor,
    mask: Optional[Tensor],
    input_shape: Sequence[int],
    kernel_size: IntPair,
    stride: IntPair,
    padding: IntPair,
    dilation: IntPair,
) -> Tensor:
    """Input gradient of deformable im2col (transpose of DCNv1 Eq. 3 in x): scatter of the columns.

    Args:
        grad_columns: ``[n, C*kh*kw, Ho*Wo]``, gradient of the loss with respect to the columns.
        offset, mask: as in :func:`deform_im2col`.
        input_shape: ``(n, C, H, W)``.

    Returns:
        grad_input ``[n, C, H, W]``: ``grad_x(q) = sum over samples p of G(q, p) * mask * grad_col``.

    Boundary: only the integral neighbours inside the map receive gradient; samples that are
    outside (not -1 < y < H and -1 < x < W) send nothing.
    """
    ks, st, pd, dl = (_as_pair(v) for v in (kernel_size, stride, padding, dilation))
    n, c, h, w = (int(s) for s in input_shape)
    ho, wo = offset.shape[2], offset.shape[3]
    k = ks[0] * ks[1]
    g = offset.shape[1] // (2 * k)
    length = ho * wo
    py, px = _sampling_positions(offset, ks, st, pd, dl)
    cr = _Corners(py, px, h, w)
    m = _mask_view(mask, n, g, k, length)
    gcol = grad_columns.reshape(n, g, c // g, k * length)
    grad_input = torch.zeros(n, g, c // g, h * w, dtype=grad_columns.dtype, device=grad_columns.device)
    for idx, wt in zip(cr.index, cr.weight):
        if m is not None:
            wt = wt * m
        src = gcol * wt.reshape(n, g, 1, k * length)
        grad_input.scatter_add_(3, idx.reshape(n, g, 1, k * length).expand(n, g, c // g, k * length), src)
    return grad_input.reshape(n, c, h, w)


def deform_col2im_coord(
    grad_columns: Tensor,
    input: Tensor,
    offset: Tensor,
    mask: Optional[Tensor],
    kernel_size: IntPair,
    stride: IntPair,
    padding: IntPair,
    dilation: IntPair,
) -> tuple[Tensor, Optional[Tensor]]:
    """Offset and mask gradients of deformable im2col (derivative of DCNv1 Eq. 4 in p; DCNv2 Eq. 1).

    With S_q = sum over the channels of an offset group of ``grad_col * x(q)`` for each corner q of a
    sample (S_00, S_01, S_10, S_11), the course's position rule gives

        d/dΔy = mask * (hx*(S_10 - S_00) + lx*(S_11 - S_01))
        d/dΔx = mask * (hy*(S_01 - S_00) + ly*(S_11 - S_10))
        d/dm  = hy*hx*S_00 + hy*lx*S_01 + ly*hx*S_10 + ly*lx*S_11   (the sampled value times grad)

    Args:
        grad_columns: ``[n, C*kh*kw, Ho*Wo]``; input ``[n, C, H, W]``; offset, mask as in
            :func:`deform_im2col`.

    Returns:
        ``(grad_offset [n, 2*G*kh*kw, Ho, Wo], grad_mask [n, G*kh*kw, Ho, Wo] or None)``.

    Boundary: a sample is inside iff -1 < y < H and -1 < x < W; outside both gradients are 0;
    inside, the corners are floor(p), floor(p)+1 with missing corners read as 0 and the floor held
    fixed (forward difference at integer coordinates).
    """
    ks, st, pd, dl = (_as_pair(v) for v in (kernel_size, stride, padding, dilation))
    n, c, h, w = input.shape
    ho, wo = offset.shape[2], offset.shape[3]
    k = ks[0] * ks[1]
    g = offset.shape[1] // (2 * k)
    length = ho * wo
    py, px = _sampling_positions(offset, ks, st, pd, dl)
    cr = _Corners(py, px, h, w)
    src = input.reshape(n, g, c // g, h * w)
    gcol = grad_columns.reshape(n, g, c // g, k * length)
    s = []
    for idx, valid in zip(cr.index, cr.valid):
        vals = torch.gather(src, 3, idx.reshape(n, g, 1, k * length).expand(n, g, c // g, k * length))
        s.append((vals.mul_(gcol)).sum(2).reshape(n, g, k, length) * valid)
    gy, gx = _position_grads(cr, *s)
    m = _mask_view(mask, n, g, k, length)
    grad_mask: Optional[Tensor] = None
    if m is not None:
        gy, gx = gy * m, gx * m
        bil = [cr.hy * cr.hx, cr.hy * cr.lx, cr.ly * cr.hx, cr.ly * cr.lx]
        grad_mask = sum(b * si for b, si in zip(bil, s)).reshape(n, g * k, ho, wo)  # type: ignore[union-attr]
    grad_offset = torch.stack([gy, gx], dim=3).reshape(n, 2 * g * k, ho, wo)
    return grad_offset, grad_mask


class _TensorPath:
    """The tensor primitives above, bundled like a kernels backend object."""

    name = "tensor"
    deform_im2col = staticmethod(deform_im2col)
    deform_col2im = staticmethod(deform_col2im)
    deform_col2im_coord = staticmethod(deform_col2im_coord)

    @staticmethod
    def deform_conv_backward_columns(
        grad_columns: Tensor, input: Tensor, offset: Tensor, mask: Optional[Tensor], kernel_size: IntPair,
        stride: IntPair, padding: IntPair, dilation: IntPair,
    ) -> tuple[Tensor, Tensor, Optional[Tensor]]:
        """Input, offset and mask gradients in one call (the CUDA kernels' signature): col2im, then col2im_coord."""
        gi = deform_col2im(grad_columns, offset, mask, tuple(input.shape), kernel_size, stride, padding, dilation)
        go, gm = deform_col2im_coord(grad_columns, input, offset, mask, kernel_size, stride, padding, dilation)
        return gi, go, gm


_TENSOR_PATH = _TensorPath()


def _chunk_size(n: int, rows: int, length: int, itemsize: int) -> int:
    """Images per chunk so that one columns buffer of ``rows x length`` per image stays within budget."""
    per_image = max(1, rows * length * itemsize)
    return max(1, min(n, COLUMNS_BUDGET_BYTES // per_image))


def _store_chunk(s: int, e: int, *pairs: tuple[Optional[Tensor], Optional[Tensor]]) -> None:
    """``full[s:e] = part`` for each ``(full, part)`` whose gradient was asked for (``full`` not None)."""
    for full, part in pairs:
        if full is not None:
            full[s:e] = part


class _ColumnsPath:
    """Forward and backward through three primitives (DCNv1 App. A): im2col, GEMM, col2im and col2im_coord.

    ``kern`` is the tensor path above or the CUDA kernels (``dcn_lessons.cuda``); the columns are
    ``[n, C*kh*kw, Ho*Wo]`` (row ``c*K + k``) and the batch is walked in chunks of images so that at most
    one columns buffer of :data:`COLUMNS_BUDGET_BYTES` is alive at a time.
    """

    def __init__(self, kern: Any) -> None:
        self.kern = kern
        self.name = str(getattr(kern, "name", type(kern).__name__))

    def forward(self, input: Tensor, offset: Tensor, weight: Tensor, mask: Optional[Tensor],
                stride: Pair, padding: Pair, dilation: Pair) -> Tensor:
        """``[N, O, Ho, Wo]``: DCNv1 Eq. (2) / DCNv2 Eq. (1) without the bias."""
        n, c, _, _ = input.shape
        o, cg, kh, kw = weight.shape
        groups = c // cg
        ho, wo = offset.shape[2], offset.shape[3]
        length = ho * wo
        w_g = weight.reshape(groups, o // groups, cg * kh * kw)
        out = input.new_empty(n, o, ho, wo)
        step = _chunk_size(n, c * kh * kw, length, input.element_size())
        for s in range(0, n, step):
            e = min(n, s + step)
            cols = self.kern.deform_im2col(
                input[s:e], offset[s:e], None if mask is None else mask[s:e], (kh, kw), stride, padding, dilation
            )
            res = torch.matmul(w_g, cols.view(e - s, groups, cg * kh * kw, length))  # [n, groups, O/g, L]
            out[s:e] = res.view(e - s, o, ho, wo)
        return out

    def backward(self, grad_output: Tensor, input: Tensor, offset: Tensor, weight: Tensor, mask: Optional[Tensor],
                 stride: Pair, padding: Pair, dilation: Pair, need_input: bool, need_offset: bool, need_weight: bool,
                 need_mask: bool) -> tuple[Optional[Tensor], Optional[Tensor], Optional[Tensor], Optional[Tensor]]:
        """``(grad_input, grad_offset, grad_weight, grad_mask)``, None where not asked for."""
        n, c, h, w = input.shape
        o, cg, kh, kw = weight.shape
        groups = c // cg
        ho, wo = offset.shape[2], offset.shape[3]
        length = ho * wo
        ks = (kh, kw)
        rows = cg * kh * kw
        need_mask = need_mask and mask is not None
        w_g = weight.reshape(groups, o // groups, rows)
        go = grad_output.reshape(n, groups, o // groups, length)
        grad_input = torch.zeros_like(input) if need_input else None
        grad_offset = torch.zeros_like(offset) if need_offset else None
        grad_mask = torch.zeros_like(mask) if need_mask else None
        grad_weight = torch.zeros(groups, o // groups, rows, dtype=weight.dtype, device=weight.device) if need_weight else None
        step = _chunk_size(n, c * kh * kw, length, input.element_size())
        for s in range(0, n, step):
            e = min(n, s + step)
            x, off = input[s:e], offset[s:e]
            m = None if mask is None else mask[s:e]
            go_c = go[s:e]
            if grad_weight is not None:
                cols = self.kern.deform_im2col(x, off, m, ks, stride, padding, dilation)
                cols = cols.view(e - s, groups, rows, length)
                grad_weight += torch.matmul(go_c, cols.transpose(2, 3)).sum(0)
                del cols
            need_coord = need_offset or need_mask
            if not (need_input or need_coord):
                continue
            gcols = torch.matmul(w_g.transpose(1, 2), go_c).reshape(e - s, c * kh * kw, length)
            g_in = g_off = g_m = None
            if need_input and need_coord:  # one call (the CUDA kernels fuse it when asked to)
                g_in, g_off, g_m = self.kern.deform_conv_backward_columns(gcols, x, off, m, ks, stride, padding, dilation)
            elif need_input:
                g_in = self.kern.deform_col2im(gcols, off, m, x.shape, ks, stride, padding, dilation)
            else:
                g_off, g_m = self.kern.deform_col2im_coord(gcols, x, off, m, ks, stride, padding, dilation)
            _store_chunk(s, e, (grad_input, g_in), (grad_offset, g_off), (grad_mask, g_m))
        gw = grad_weight.reshape(weight.shape) if grad_weight is not None else None
        return grad_input, grad_offset, gw, grad_mask


# ----------------------------------------------------------------------------------------------
# Dispatch
# ----------------------------------------------------------------------------------------------
def _cpu_fast_enabled() -> bool:
    raw = os.environ.get("DCN_LESSONS_CPU_FAST", "1").strip().lower()
    if raw in {"0", "false", "no", "off"}:
        return False
    if raw in {"", "1", "true", "yes", "on"}:
        return True
    raise ValueError(
        f"environment variable DCN_LESSONS_CPU_FAST={raw!r}: expected one of 1/0, true/false, yes/no, on/off"
    )


def cpu_fast_path_available() -> bool:
    """True when the compiled CPU path (Numba) imports; it is used unless ``DCN_LESSONS_CPU_FAST=0``."""
    try:
        from dcn_lessons.ops import _cpu_numba
    except ImportError:
        return False
    return _cpu_numba.AVAILABLE


def _kernels(input: Tensor) -> Any:
    """The primitives of the columns path for this call: the CUDA kernels (float32/64, float16 and bfloat16
    CUDA tensors, see ``kernels/dcn_common.cuh``) or the tensor path."""
    import dcn_lessons.cuda as _cuda

    k = _cuda.kernels_for(input)
    return k if k is not None and input.dtype in getattr(k, "conv_dtypes", ()) else _TENSOR_PATH


def _implementation(input: Tensor) -> Any:
    """What runs this call: the compiled CPU path (float32/float64 CPU tensors, unless
    ``DCN_LESSONS_CPU_FAST=0``), else the columns path over the CUDA kernels or the tensor primitives."""
    if input.device.type == "cpu" and _cpu_fast_enabled() and cpu_fast_path_available():
        from dcn_lessons.ops import _cpu_numba

        if _cpu_numba.supports(input):
            return _cpu_numba.PATH
    return _ColumnsPath(_kernels(input))


def active_backend(input: Tensor) -> str:
    """Name of the backend :func:`deform_conv2d` would use for ``input`` now ("tensor", "cpu-numba", ...)."""
    return str(_implementation(input).name)


# ----------------------------------------------------------------------------------------------
# The autograd Function
# ----------------------------------------------------------------------------------------------
class _DeformConv2dFunction(torch.autograd.Function):
    """Deformable convolution with a hand-written backward (columns + GEMM, DCNv1 App. A)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        input: Tensor,
        offset: Tensor,
        weight: Tensor,
        bias: Optional[Tensor],
        mask: Optional[Tensor],
        stride: Pair,
        padding: Pair,
        dilation: Pair,
    ) -> Tensor:
        impl = _implementation(input)
        out = impl.forward(input, offset, weight, mask, stride, padding, dilation)
        if bias is not None:
            out += bias.view(1, -1, 1, 1)
        ctx.save_for_backward(input, offset, weight, mask)
        ctx.has_bias = bias is not None
        ctx.conf = (stride, padding, dilation)
        ctx.impl = impl  # the backward runs where the forward ran
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Optional[Tensor], ...]:  # type: ignore[override]
        input, offset, weight, mask = ctx.saved_tensors
        need_in, need_off, need_w, need_b, need_m = ctx.needs_input_grad[:5]
        grad_input, grad_offset, grad_weight, grad_mask = ctx.impl.backward(
            grad_output, input, offset, weight, mask, *ctx.conf, need_in, need_off, need_w, need_m
        )
        grad_bias = grad_output.sum(dim=(0, 2, 3)) if (need_b and ctx.has_bias) else None
        return grad_input, grad_offset, grad_weight, grad_bias, grad_mask, None, None, None


# ----------------------------------------------------------------------------------------------
# Public functional form
# ----------------------------------------------------------------------------------------------
def _check_tensors(**named: Optional[Tensor]) -> None:
    """Torch-only checks: Tensor type, floating dtype, one dtype and one device for all arguments."""
    ref = named["input"]
    for name, t in named.items():
        if t is None and name in ("bias", "mask"):
            continue
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    assert ref is not None
    if not ref.is_floating_point():
        raise TypeError(f"input: expected a floating-point dtype (float16/bfloat16/float32/float64), got {ref.dtype}")
    for name, t in named.items():
        if t is None or name == "input":
            continue
        if t.dtype != ref.dtype:
            raise TypeError(f"{name}: expected dtype {ref.dtype} (the dtype of input), got {t.dtype}")
        if t.device != ref.device:
            raise ValueError(f"{name}: expected device {ref.device} (the device of input), got {t.device}")


def deform_conv2d(
    input: Tensor,
    offset: Tensor,
    weight: Tensor,
    bias: Optional[Tensor] = None,
    stride: IntPair = 1,
    padding: IntPair = 0,
    dilation: IntPair = 1,
    mask: Optional[Tensor] = None,
) -> Tensor:
    """Deformable convolution, DCNv1 Eq. (2) (``mask=None``) or modulated, DCNv2 Eq. (1).

    ``y(p0) = bias + sum_k w(p_k) * x(p0 + p_k + Δp_k) [* Δm_k]``, x sampled bilinearly (v1 Eq. 3-4).
    Same signature, layouts and semantics as ``torchvision.ops.deform_conv2d``.

    Args:
        input: ``[N, C, H, W]``, floating point.
        offset: ``[N, 2*G*kh*kw, Ho, Wo]``; G (offset groups) = offset.shape[1] // (2*kh*kw), C % G == 0;
            channel ``g*2*K + 2k`` is Δy and ``g*2*K + 2k + 1`` is Δx of kernel point k (row-major).
        weight: ``[O, C/groups, kh, kw]``; groups = C // weight.shape[1].
        bias: ``[O]`` or None; added after the (masked) sum, never scaled by the mask.
        stride, padding, dilation: int or (h, w) pair.
        mask: ``[N, G*kh*kw, Ho, Wo]`` modulation scalars Δm_k (DCNv2), or None (DCNv1).

    Returns:
        ``[N, O, Ho, Wo]`` with ``Ho = (H + 2*pad_h - (dil_h*(kh-1) + 1)) // stride_h + 1`` (likewise Wo).

    Boundary: Eq. (3) literally (neighbours outside the map read 0); offset gradient by the
    course's position rule (inside iff -1 < y < H and -1 < x < W; forward difference at integers).
    Differentiable once in every tensor argument (double backward raises).

    Raises:
        ValueError: a shape, stride/padding/dilation or device is wrong (the message names the argument).
        TypeError: an argument is not a tensor, not floating point, or its dtype differs from input's.
    """
    _check_tensors(input=input, offset=offset, weight=weight, bias=bias, mask=mask)
    a = check_deform_conv2d_args(input, offset, weight, bias, mask, stride, padding, dilation)
    return _DeformConv2dFunction.apply(
        input, offset, weight, bias, mask, tuple(a.stride), tuple(a.padding), tuple(a.dilation)
    )
