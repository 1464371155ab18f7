"""Optional compiled CPU path for the three deformable-convolution primitives (Numba).

Same contract, semantics and results as the tensor primitives in
:mod:`dcn_lessons.ops.deform_conv` (DCNv1 Eq. 2-4, DCNv2 Eq. 1, the COURSE.md position rule);
the difference is only speed:

* the input is copied once into a zero-bordered plane ``[n, C, H+2, W+2]``: every corner of a sample
  that is inside (-1 < y < H, -1 < x < W) then lies in the padded plane, and a corner off the map
  reads the zero border, which is exactly Eq. (3)'s "neighbours outside the map contribute 0";
* a *sampling table* is built once per call: for every (image, offset group, kernel point, output
  pixel) the padded index of the top-left corner and the four weights ``bilinear weight * mask``
  (all 0 for a sample outside), plus (ly, lx, inside) for the coordinate gradient. It is C/G times
  smaller than the columns buffer;
* the loops over channels then read the table and are branch-free: im2col is a 4-tap gather per
  column entry, col2im a 4-tap scatter into the channel's own (padded) plane, col2im_coord four dot
  products per sample (S_q of :func:`dcn_lessons.ops.deform_conv.deform_col2im_coord`);
* the kernels are serial ``@njit(nogil=True, cache=True)`` functions over a range of (image,
  channel) or (image, group, kernel point); ``torch.get_num_threads()`` Python threads each run one
  range with the GIL released. No two threads write the same element (no atomics), and no second
  OpenMP runtime competes with PyTorch's for the cores.

Used by :func:`dcn_lessons.ops.deform_conv.deform_conv2d` for float32/float64 CPU tensors when
Numba imports, unless ``DCN_LESSONS_CPU_FAST=0``; ``AVAILABLE`` is False without Numba and the
operator falls back to the tensor path. Kernels compile on first use (seconds) and are cached on
disk by Numba.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

try:  # pragma: no cover - which branch runs depends on the environment
    from numba import njit

    AVAILABLE = True
except ImportError:  # pragma: no cover
    AVAILABLE = False

IntPair = Union[int, Sequence[int]]

#: Below this many column entries a primitive runs on the calling thread only.
SERIAL_BELOW: int = 1 << 15


def _pair(v: IntPair) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    a, b = v
    return (int(a), int(b))


if AVAILABLE:

    @njit(nogil=True, cache=True)
    def _table_kernel(off, msk, has_mask, h, w, kh, kw, sh, sw, ph, pw, dh, dw, base, wts, frac):  # type: ignore[no-untyped-def]
        """Padded top-left index [T], corner weights [4, T] (mask folded in), (ly, lx, inside) [T, 3].

        T enumerates (image, offset group, kernel point, output pixel) in that order; the padded plane
        has width w + 2, and corner (y0, x0) of an inside sample sits at (y0 + 1) * (w + 2) + x0 + 1.
        """
        n = off.shape[0]
        ho, wo = off.shape[2], off.shape[3]
        kk = kh * kw
        gc = off.shape[1] // (2 * kk)
        wp = w + 2
        t = 0
        for b in range(n):
            for g in range(gc):
                for k in range(kk):
                    i = k // kw
                    j = k - i * kw
                    oc = g * 2 * kk + 2 * k
                    for yo in range(ho):
                        for xo in range(wo):
                            py = yo * sh - ph + i * dh + off[b, oc, yo, xo]
                            px = xo * sw - pw + j * dw + off[b, oc + 1, yo, xo]
                            if py > -1.0 and py < h and px > -1.0 and px < w:
                                y0 = np.floor(py)
                                x0 = np.floor(px)
                                ly = py - y0
                                lx = px - x0
                                m = msk[b, g * kk + k, yo, xo] if has_mask else 1.0
                                base[t] = (int(y0) + 1) * wp + int(x0) + 1
                                wts[0, t] = (1.0 - ly) * (1.0 - lx) * m
                                wts[1, t] = (1.0 - ly) * lx * m
                                wts[2, t] = ly * (1.0 - lx) * m
                                wts[3, t] = ly * lx * m
                                frac[t, 0] = ly
                                frac[t, 1] = lx
                                frac[t, 2] = 1.0
                            else:
                                base[t] = 0
                                for q in range(4):
                                    wts[q, t] = 0.0
                                for q in range(3):
                                    frac[t, q] = 0.0
                            t += 1

    @njit(nogil=True, cache=True)
    def _im2col_range(xp, base, w0, w1, w2, w3, ch, cg, hwp, wp, kk, length, start, stop, cols):  # type: ignore[no-untyped-def]
        """cols[(b*C + c)*K + k, l] = the four weights times the padded plane at the four corners.

        Work unit = one (image, channel) pair, units [start, stop): its padded plane stays in cache
        while the unit writes its K consecutive rows of columns.
        """
        gcount = ch // cg
        for nc in range(start, stop):
            b = nc // ch
            g = (nc - b * ch) // cg
            plane = nc * hwp
            for k in range(kk):
                t0 = ((b * gcount + g) * kk + k) * length
                row = (nc * kk + k) * length
                for l_ in range(length):
                    t = t0 + l_
                    q = plane + base[t]
                    cols[row + l_] = w0[t] * xp[q] + w1[t] * xp[q + 1] + w2[t] * xp[q + wp] + w3[t] * xp[q + wp + 1]

    @njit(nogil=True, cache=True)
    def _col2im_range(gcols, base, w0, w1, w2, w3, ch, cg, hwp, wp, kk, length, start, stop, gp):  # type: ignore[no-untyped-def]
        """Scatter gcols[(b*C + c)*K + k, l] through the four weights into the padded gradient plane.

        Same work units as :func:`_im2col_range`: a channel's plane is written by one unit only.
        """
        gcount = ch // cg
        for nc in range(start, stop):
            b = nc // ch
            g = (nc - b * ch) // cg
            plane = nc * hwp
            for k in range(kk):
                t0 = ((b * gcount + g) * kk + k) * length
                row = (nc * kk + k) * length
                for l_ in range(length):
                    t = t0 + l_
                    gv = gcols[row + l_]
                    q = plane + base[t]
                    gp[q] += w0[t] * gv
                    gp[q + 1] += w1[t] * gv
                    gp[q + wp] += w2[t] * gv
                    gp[q + wp + 1] += w3[t] * gv

    @njit(nogil=True, cache=True)
    def _coord_range(gcols, xp, base, frac, msk, has_mask, ch, cg, hwp, wp, kk, length, start, stop, grad_off, grad_msk):  # type: ignore[no-untyped-def]
        """Offset (and mask) gradients for units (b, g, k) in [start, stop): S_q dot products, then the rule."""
        gcount = ch // cg
        s = np.zeros((4, length), np.float64)
        for bgk in range(start, stop):
            b = bgk // (gcount * kk)
            r = bgk - b * gcount * kk
            g = r // kk
            k = r - g * kk
            t0 = bgk * length
            s[:, :] = 0.0
            for c in range(g * cg, (g + 1) * cg):
                plane = (b * ch + c) * hwp
                row = ((b * ch + c) * kk + k) * length
                for l_ in range(length):
                    gv = gcols[row + l_]
                    q = plane + base[t0 + l_]  # an outside sample points at the plane's corner; zeroed below
                    s[0, l_] += gv * xp[q]
                    s[1, l_] += gv * xp[q + 1]
                    s[2, l_] += gv * xp[q + wp]
                    s[3, l_] += gv * xp[q + wp + 1]
            oc = (b * gcount + g) * 2 * kk + 2 * k
            for l_ in range(length):
                t = t0 + l_
                ly = frac[t, 0]
                lx = frac[t, 1]
                inside = frac[t, 2]
                gy = inside * ((1.0 - lx) * (s[2, l_] - s[0, l_]) + lx * (s[3, l_] - s[1, l_]))
                gx = inside * ((1.0 - ly) * (s[1, l_] - s[0, l_]) + ly * (s[3, l_] - s[2, l_]))
                if has_mask:
                    m = msk[t]
                    gy *= m
                    gx *= m
                    grad_msk[t] = inside * (
                        (1.0 - ly) * (1.0 - lx) * s[0, l_]
                        + (1.0 - ly) * lx * s[1, l_]
                        + ly * (1.0 - lx) * s[2, l_]
                        + ly * lx * s[3, l_]
                    )
                grad_off[oc * length + l_] = gy
                grad_off[(oc + 1) * length + l_] = gx


def _np(t: Tensor) -> np.ndarray:
    return t.detach().contiguous().numpy()


_POOL: Optional[ThreadPoolExecutor] = None


def _run_ranges(fn: Callable[..., Any], total: int, work: int, *args: Any) -> None:
    """Run ``fn(*args[:-1], start, stop, args[-1])`` over [0, total) split across torch's thread count."""
    global _POOL
    nt = max(1, min(torch.get_num_threads(), total))
    *head, out = args
    if nt == 1 or work < SERIAL_BELOW:
        fn(*head, 0, total, out)
        return
    if _POOL is None or _POOL._max_workers < nt - 1:  # noqa: SLF001 - size check of our own pool
        _POOL = ThreadPoolExecutor(max_workers=nt - 1, thread_name_prefix="dcn-cpu")
    bounds = [total * i // nt for i in range(nt + 1)]
    futs = [_POOL.submit(fn, *head, bounds[i], bounds[i + 1], out) for i in range(1, nt)]
    fn(*head, bounds[0], bounds[1], out)
    for f in futs:
        f.result()


def _geometry(kernel_size: IntPair, stride: IntPair, padding: IntPair, dilation: IntPair) -> tuple[int, ...]:
    kh, kw = _pair(kernel_size)
    sh, sw = _pair(stride)
    ph, pw = _pair(padding)
    dh, dw = _pair(dilation)
    return kh, kw, sh, sw, ph, pw, dh, dw


class _Table:
    """The sampling table of one call (see the module docstring)."""

    def __init__(self, offset: Tensor, mask: Optional[Tensor], h: int, w: int, geo: tuple[int, ...]) -> None:
        n, ch2, ho, wo = offset.shape
        kk = geo[0] * geo[1]
        self.groups = ch2 // (2 * kk)
        self.length = ho * wo
        self.wp = w + 2
        self.hwp = (h + 2) * (w + 2)
        t = n * self.groups * kk * self.length
        dt = _np(offset[:0]).dtype
        self.base = np.empty(t, np.int64)
        self.wts = np.empty((4, t), dt)  # one contiguous row per corner
        self.frac = np.empty((t, 3), dt)
        m = _np(mask) if mask is not None else np.zeros((1, 1, 1, 1), dt)
        _table_kernel(_np(offset), m, mask is not None, h, w, *geo, self.base, self.wts, self.frac)


def _padded(x: Tensor) -> np.ndarray:
    """``[n, C, H, W]`` -> flat zero-bordered ``[n, C, H+2, W+2]`` (the border reads as Eq. 3's zeros)."""
    return torch.nn.functional.pad(x.detach(), (1, 1, 1, 1)).contiguous().numpy().reshape(-1)


def _supported(*ts: Optional[Tensor]) -> bool:
    return all(t is None or (t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64)) for t in ts)


class _NumbaKernels:
    """The compiled CPU path: same methods, arguments and results as the tensor primitives.

    Falls back to the tensor primitives for dtypes other than float32/float64 (e.g. bfloat16).
    """

    name = "cpu-numba"

    def deform_im2col(
        self,
        input: Tensor,
        offset: Tensor,
        mask: Optional[Tensor],
        kernel_size: IntPair,
        stride: IntPair,
        padding: IntPair,
        dilation: IntPair,
    ) -> Tensor:
        """Deformable im2col (DCNv1 Eq. 2-3, DCNv2 Eq. 1): columns ``[n, C*kh*kw, Ho*Wo]``."""
        if not _supported(input, offset, mask):
            from dcn_lessons.ops.deform_conv import deform_im2col

            return deform_im2col(input, offset, mask, kernel_size, stride, padding, dilation)
        geo = _geometry(kernel_size, stride, padding, dilation)
        n, c, h, w = input.shape
        kk = geo[0] * geo[1]
        tab = _Table(offset, mask, h, w, geo)
        cols = torch.empty(n, c * kk, tab.length, dtype=input.dtype)
        cg = c // tab.groups
        _run_ranges(_im2col_range, n * c, cols.numel(), _padded(input), tab.base, *tab.wts, c,
                    cg, tab.hwp, tab.wp, kk, tab.length, cols.numpy().reshape(-1))
        return cols

    def deform_col2im(
        self,
        grad_columns: Tensor,
        offset: Tensor,
        mask: Optional[Tensor],
        input_shape: Sequence[int],
        kernel_size: IntPair,
        stride: IntPair,
        padding: IntPair,
        dilation: IntPair,
    ) -> Tensor:
        """Input gradient of deformable im2col (scatter through the bilinear weights): ``[n, C, H, W]``."""
        if not _supported(grad_columns, offset, mask):
            from dcn_lessons.ops.deform_conv import deform_col2im

            return deform_col2im(grad_columns, offset, mask, input_shape, kernel_size, stride, padding, dilation)
        geo = _geometry(kernel_size, stride, padding, dilation)
        n, c, h, w = (int(s) for s in input_shape)
        kk = geo[0] * geo[1]
        tab = _Table(offset, mask, h, w, geo)
        gp = torch.zeros(n, c, h + 2, w + 2, dtype=grad_columns.dtype)
        cg = c // tab.groups
        _run_ranges(_col2im_range, n * c, grad_columns.numel(), _np(grad_columns).reshape(-1), tab.base, *tab.wts,
                    c, cg, tab.hwp, tab.wp, kk, tab.length, gp.numpy().reshape(-1))
        return gp[:, :, 1:-1, 1:-1].contiguous()  # the border collected what fell off the map: dropped

    def deform_col2im_coord(
        self,
        grad_columns: Tensor,
        input: Tensor,
        offset: Tensor,
        mask: Optional[Tensor],
        kernel_size: IntPair,
        stride: IntPair,
        padding: IntPair,
        dilation: IntPair,
    ) -> tuple[Tensor, Optional[Tensor]]:
        """Offset and mask gradients of deformable im2col (COURSE.md position rule)."""
        if not _supported(grad_columns, input, offset, mask):
            from dcn_lessons.ops.deform_conv import deform_col2im_coord

            return deform_col2im_coord(grad_columns, input, offset, mask, kernel_size, stride, padding, dilation)
        geo = _geometry(kernel_size, stride, padding, dilation)
        n, c, h, w = input.shape
        kk = geo[0] * geo[1]
        tab = _Table(offset, mask, h, w, geo)
        grad_off = torch.empty(offset.shape, dtype=input.dtype)
        grad_m = torch.empty(mask.shape if mask is not None else (1,), dtype=input.dtype)
        m = _np(mask).reshape(-1) if mask is not None else np.zeros(1, _np(input[:0]).dtype)
        outs = (grad_off.numpy().reshape(-1), grad_m.numpy().reshape(-1))
        _run_ranges(_coord_pair, n * tab.groups * kk, grad_columns.numel(), _np(grad_columns).reshape(-1),
                    _padded(input), tab.base, tab.frac, m, mask is not None, c, c // tab.groups,
                    tab.hwp, tab.wp, kk, tab.length, outs)
        return grad_off, (grad_m if mask is not None else None)


def _coord_pair(*args: Any) -> None:
    *head, start, stop, outs = args
    _coord_range(*head, start, stop, outs[0], outs[1])


KERNELS = _NumbaKernels()
