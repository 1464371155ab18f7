"""The tensor path's primitives of deformable convolution: deformable im2col, col2im and col2im_coord.

Plain PyTorch tensor code, device-agnostic, every floating dtype: the three primitives of DCNv1 Appendix A
that the authors' code (and torchvision's and mmcv's) is built from, written once here and used by the
``tensor`` backend (:mod:`dcn_lessons.ops._tensor_backend`) and by :func:`dcn_lessons.ops.bilinear_sample`:

* :func:`deform_im2col` gathers the sampled values (DCNv1 Eq. 2-3, DCNv2 Eq. 1) into a columns matrix;
* :func:`deform_col2im` scatters the columns' gradient back into the input (the transpose of Eq. 3 in x);
* :func:`deform_col2im_coord` differentiates the bilinear weights with respect to the sampling position
  (DCNv1 Eq. 7) and gives the offset and mask gradients.

Conventions (the README's "Conventions shared by every tier"; the layouts are torchvision's and mmcv's, the position
rule mmcv's and the original DCNv2 code's, torchvision's except on the lines y = -1 and x = -1):

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

Arguments are assumed valid: the public functions of :mod:`dcn_lessons.ops.deform_conv` check them once.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

__all__ = ["deform_im2col", "deform_col2im", "deform_col2im_coord"]

Pair = tuple[int, int]


# ----------------------------------------------------------------------------------------------
# Sampling positions and bilinear corners (the rule is written once, here)
# ----------------------------------------------------------------------------------------------
def sampling_positions(
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


class Corners:
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


def position_grads(cr: Corners, s00: Tensor, s01: Tensor, s10: Tensor, s11: Tensor) -> tuple[Tensor, Tensor]:
    """d/dy and d/dx of a bilinear sample (v1 Eq. 4 differentiated with floor(p) held fixed), from
    S_q = sum over channels of grad * x(q) at its four corners q (a corner off the map reads 0)."""
    return cr.hx * (s10 - s00) + cr.lx * (s11 - s01), cr.hy * (s01 - s00) + cr.ly * (s11 - s10)


def _mask_view(mask: Optional[Tensor], n: int, g: int, k: int, length: int) -> Optional[Tensor]:
    return None if mask is None else mask.reshape(n, g, k, length)


# ----------------------------------------------------------------------------------------------
# The three primitives of the tensor path (device-agnostic; same contract as the CUDA tier)
# ----------------------------------------------------------------------------------------------
def deform_im2col(
    input: Tensor,
    offset: Tensor,
    mask: Optional[Tensor],
    kernel_size: Pair,
    stride: Pair,
    padding: Pair,
    dilation: Pair,
) -> Tensor:
    """Deformable im2col (DCNv1 Eq. 2-3, App. A; DCNv2 Eq. 1 with ``mask``): the columns matrix.

    Args:
        input: ``[n, C, H, W]``.
        offset: ``[n, 2*G*kh*kw, Ho, Wo]`` (G offset groups inferred from the channel count).
        mask: ``[n, G*kh*kw, Ho, Wo]`` or None (DCNv1).
        kernel_size, stride, padding, dilation: (h, w) pairs.

    Returns:
        columns ``[n, C*kh*kw, Ho*Wo]``; row ``c*kh*kw + k`` holds ``mask * x_c(p0 + p_k + Δp_k)``
        for every output pixel, so ``output = weight.view(groups, O/groups, -1) @ columns`` per group.

    Boundary: samples follow Eq. (3) literally (neighbours outside the map read 0; a sample with
    y <= -1 or y >= H, likewise x, is 0). Shapes are assumed valid (checked by the public function).
    """
    ks, st, pd, dl = kernel_size, stride, padding, dilation
    n, c, h, w = input.shape
    ho, wo = offset.shape[2], offset.shape[3]
    k = ks[0] * ks[1]
    g = offset.shape[1] // (2 * k)
    length = ho * wo
    py, px = sampling_positions(offset, ks, st, pd, dl)
    cr = Corners(py, px, h, w)
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
    kernel_size: Pair,
    stride: Pair,
    padding: Pair,
    dilation: Pair,
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
    ks, st, pd, dl = kernel_size, stride, padding, dilation
    n, c, h, w = (int(s) for s in input_shape)
    ho, wo = offset.shape[2], offset.shape[3]
    k = ks[0] * ks[1]
    g = offset.shape[1] // (2 * k)
    length = ho * wo
    py, px = sampling_positions(offset, ks, st, pd, dl)
    cr = Corners(py, px, h, w)
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
    kernel_size: Pair,
    stride: Pair,
    padding: Pair,
    dilation: Pair,
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
    ks, st, pd, dl = kernel_size, stride, padding, dilation
    n, c, h, w = input.shape
    ho, wo = offset.shape[2], offset.shape[3]
    k = ks[0] * ks[1]
    g = offset.shape[1] // (2 * k)
    length = ho * wo
    py, px = sampling_positions(offset, ks, st, pd, dl)
    cr = Corners(py, px, h, w)
    src = input.reshape(n, g, c // g, h * w)
    gcol = grad_columns.reshape(n, g, c // g, k * length)
    s = []
    for idx, valid in zip(cr.index, cr.valid):
        vals = torch.gather(src, 3, idx.reshape(n, g, 1, k * length).expand(n, g, c // g, k * length))
        s.append((vals.mul_(gcol)).sum(2).reshape(n, g, k, length) * valid)
    gy, gx = position_grads(cr, *s)
    m = _mask_view(mask, n, g, k, length)
    grad_mask: Optional[Tensor] = None
    if m is not None:
        gy, gx = gy * m, gx * m
        bil = [cr.hy * cr.hx, cr.hy * cr.lx, cr.ly * cr.hx, cr.ly * cr.lx]
        grad_mask = sum(b * si for b, si in zip(bil, s)).reshape(n, g * k, ho, wo)  # type: ignore[union-attr]
    grad_offset = torch.stack([gy, gx], dim=3).reshape(n, 2 * g * k, ho, wo)
    return grad_offset, grad_mask
