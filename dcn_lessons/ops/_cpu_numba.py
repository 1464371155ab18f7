"""Compiled CPU path of deformable convolution (Numba): channels-last, fused, table-free.

The ``cpu-numba`` backend (:class:`NumbaBackend`). Same operator, semantics and results as the columns path
(:mod:`dcn_lessons.ops._columns` over the tensor primitives)
(DCNv1 Eq. 2-4, DCNv2 Eq. 1, the course's position rule: README, "Conventions shared by every tier");
what differs is the memory layout, chosen so that the inner loops run over *channels*, contiguously,
and vectorise:

* the input is copied once into a zero-bordered, channels-last plane ``xp [n, H+2, W+2, C]``: the four
  corners of a sample that is inside (-1 < y < H, -1 < x < W) all lie in it, and a corner off the map
  reads the zero border -- exactly Eq. (3)'s "neighbours outside the map contribute 0";
* the columns are kernel-point-major, one row per output pixel: ``cols [n, Ho*Wo, groups*K*Cg]`` with
  column ``(gi*K + k)*Cg + c'`` for channel ``c = gi*Cg + c'`` of weight group gi and kernel point k
  (K = kh*kw, Cg = C/groups). The weight is permuted to match (``[groups, O/groups, K*Cg]``, a few
  KB), so the GEMMs are the usual ones with a transposed operand, which BLAS takes without a copy;
* one sampling position and its four bilinear weights are computed per (image, output pixel, offset
  group, kernel point) and used for the C/G channels of that group in one contiguous loop, so no
  table and no per-channel index arithmetic is needed;
* the backward pass is one kernel: for every sample it scatters ``weight * grad_col`` into the
  (padded, channels-last) input gradient *and* accumulates the four dot products S_q of
  :func:`dcn_lessons.ops._primitives.deform_col2im_coord` that give the offset and mask gradients,
  reading each column gradient once.

Threads: the GEMMs run on PyTorch's own threads (MKL/OpenMP). The sampling kernels run on the calling
thread, and when PyTorch uses more than 2 threads (and a call has at least :data:`SERIAL_BELOW` column
entries) they are split over that many Python threads, each running a nogil kernel over a range of
(image, output pixel) units; in the backward pass every thread but the first then scatters into a private
input-gradient buffer (samples of any pixel may land anywhere in the image), summed at the end: no
atomics, and deterministic for a fixed thread count. Why not always: after each parallel region,
PyTorch's OpenMP workers keep spinning for a while (GNU OpenMP's default spin count is 300000
iterations), so a second set of threads started right after a GEMM competes with them for the cores. On
the 2-core machine this course is measured on, splitting the kernels over 2 threads did not pay: the
benchmark (``benchmarks/bench_deform_conv_cpu.py``, ``kernel_threads_2_over_1`` in its results) times
forward+backward both ways, interleaved in one run. :data:`KERNEL_THREADS` overrides the rule.

Chosen by :func:`dcn_lessons.backends.select` for float32/float64 CPU tensors when Numba imports (unless
``DCN_LESSONS_BACKEND`` says otherwise); ``AVAILABLE`` is False without Numba and the operator falls back to
the ``tensor`` backend. Kernels compile on first use (seconds) and are cached on disk by Numba. The backend
contract's primitives (columns in the shared ``[n, C*kh*kw, Ho*Wo]`` layout) are these kernels with the
layout converted; its RoI methods are the tensor backend's (there is no compiled RoI kernel).
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from dcn_lessons.ops._columns import chunk_size, store_chunk
from dcn_lessons.ops._tensor_backend import TensorBackend

try:  # pragma: no cover - which branch runs depends on the environment
    from numba import njit

    AVAILABLE = True
except ImportError:  # pragma: no cover
    AVAILABLE = False

Pair = tuple[int, int]

#: Below this many column entries (image * pixel * C * K) a call runs on the calling thread only.
SERIAL_BELOW: int = 1 << 15

#: Threads for the sampling kernels; None: automatic (see :func:`_threads`). The benchmark sets it to compare.
KERNEL_THREADS: Optional[int] = None

# fastmath without nnan/ninf: a NaN offset must keep failing the "inside" test (it is treated as outside).
_FASTMATH = {"contract", "reassoc", "nsz", "arcp"}

if AVAILABLE:
    # Inner loops index flat arrays with unsigned integers: no array views are made per sample (each view
    # costs reference-count updates) and no negative-index handling is emitted, so LLVM vectorises the
    # loops over channels.

    @njit(nogil=True, cache=True)
    def _pad_nhwc_kernel(x, start, stop, xp):  # type: ignore[no-untyped-def]
        """xp[b, y+1, x+1, c] = x[b, c, y, x] for rows u = b*H + y in [start, stop) (the border stays 0)."""
        c = x.shape[1]
        h = x.shape[2]
        w = x.shape[3]
        for u in range(start, stop):
            b = u // h
            y = u - b * h
            dst = xp[b, y + 1]
            for ch in range(c):
                src = x[b, ch, y]
                for xx in range(w):
                    dst[xx + 1, ch] = src[xx]

    @njit(inline="always")
    def _sample(off, msk, has_mask, b, l_, g, k, kk, kw, yo, xo, sh, sw, ph, pw, dh, dw, h, w):  # type: ignore[no-untyped-def]
        """Kernel point k of offset group g for output pixel (yo, xo) of image b (DCNv1 Eq. 2, the course's position rule):
        ``(inside, ly, lx, m, y0, x0)`` with (y0, x0) the top-left corner, (ly, lx) the fractional parts and m the
        modulation scalar (1 without a mask); a sample is inside iff -1 < y < H and -1 < x < W (NaN is outside)."""
        T = off.dtype.type
        i = k // kw
        j = k - i * kw
        oc = 2 * (g * kk + k)
        py = T(yo * sh - ph + i * dh) + off[b, oc, l_]
        px = T(xo * sw - pw + j * dw) + off[b, oc + 1, l_]
        if not (py > -1.0 and py < h and px > -1.0 and px < w):
            return False, T(0.0), T(0.0), T(0.0), 0, 0
        # floor(p) for p > -1, cheaper than math.floor: truncate p + 1 (> 0) towards zero, minus 1; the sum can
        # round up to the next integer when p is within an ulp below one, which the comparison undoes
        y0 = int(py + T(1.0)) - 1
        x0 = int(px + T(1.0)) - 1
        if T(y0) > py:
            y0 -= 1
        if T(x0) > px:
            x0 -= 1
        m = msk[b, g * kk + k, l_] if has_mask else T(1.0)
        return True, py - T(y0), px - T(x0), m, y0, x0

    @njit(nogil=True, cache=True, fastmath=_FASTMATH)
    def _columns_kernel(xp, off, msk, has_mask, kh, kw, sh, sw, ph, pw, dh, dw, wo, groups, start, stop, cols):  # type: ignore[no-untyped-def]
        """cols[b, l, (gi*K + k)*Cg + c'] = mask * x_c(p0 + p_k + Δp_k) for units u = b*L + l in [start, stop).

        xp ``[n, H+2, W+2, C]`` padded channels-last input; off ``[n, 2*G*K, L]``; msk ``[n, G*K, L]``
        (ignored unless has_mask); cols ``[n, L, groups*K*Cg]``. Arithmetic in the input's dtype.
        """
        T = xp.dtype.type
        h = xp.shape[1] - 2
        w = xp.shape[2] - 2
        c = xp.shape[3]
        plane = (h + 2) * (w + 2) * c
        wpc = np.uint64((w + 2) * c)
        cu = np.uint64(c)
        xf = xp.reshape(-1)
        cf = cols.reshape(-1)
        length = off.shape[2]
        kk = kh * kw
        rows = cols.shape[2]
        ng = off.shape[1] // (2 * kk)
        cog = c // ng
        cg = c // groups
        one = T(1.0)
        for u in range(start, stop):
            b = u // length
            l_ = u - b * length
            yo = l_ // wo
            xo = l_ - yo * wo
            for g in range(ng):
                c_lo = g * cog
                c_hi = c_lo + cog
                for k in range(kk):
                    inside, ly, lx, m, y0, x0 = _sample(off, msk, has_mask, b, l_, g, k, kk, kw, yo, xo,
                                                        sh, sw, ph, pw, dh, dw, h, w)
                    w00 = w01 = w10 = w11 = T(0.0)
                    corner = 0
                    if inside:
                        w00 = (one - ly) * (one - lx) * m
                        w01 = (one - ly) * lx * m
                        w10 = ly * (one - lx) * m
                        w11 = ly * lx * m
                        corner = b * plane + ((y0 + 1) * (w + 2) + x0 + 1) * c
                    gi = c_lo // cg
                    while gi * cg < c_hi:  # the weight groups this offset group's channels fall in
                        lo = max(c_lo, gi * cg)
                        cnt = np.uint64(min(c_hi, (gi + 1) * cg) - lo)
                        dst = np.uint64(u * rows + (gi * kk + k) * cg + lo - gi * cg)
                        if inside:
                            a = np.uint64(corner + lo)
                            for ch in range(cnt):
                                cf[dst + ch] = (w00 * xf[a + ch] + w01 * xf[a + cu + ch]
                                                + w10 * xf[a + wpc + ch] + w11 * xf[a + wpc + cu + ch])
                        else:
                            for ch in range(cnt):
                                cf[dst + ch] = 0
                        gi += 1

    @njit(nogil=True, cache=True, fastmath=_FASTMATH)
    def _backward_kernel(xp, off, msk, has_mask, gcols, kh, kw, sh, sw, ph, pw, dh, dw, wo, groups,  # type: ignore[no-untyped-def]
                         need_input, need_coord, start, stop, gp, goff, gmsk):
        """Input, offset and mask gradients of the columns for units u = b*L + l in [start, stop).

        gcols ``[n, L, groups*K*Cg]`` (layout of :func:`_columns_kernel`). Adds ``w_q * mask * gcol`` into
        the padded channels-last ``gp`` (if need_input) and writes, per sample, with S_q = sum over the
        group's channels of ``gcol * x(q)`` (if need_coord):

            goff[b, 2k]   = m * (hx*(S10 - S00) + lx*(S11 - S01))     (Δy)
            goff[b, 2k+1] = m * (hy*(S01 - S00) + ly*(S11 - S10))     (Δx)
            gmsk[b, k]    = hy*hx*S00 + hy*lx*S01 + ly*hx*S10 + ly*lx*S11

        and 0 for a sample outside (not -1 < y < H and -1 < x < W).
        """
        T = xp.dtype.type
        h = xp.shape[1] - 2
        w = xp.shape[2] - 2
        c = xp.shape[3]
        plane = (h + 2) * (w + 2) * c
        wpc = np.uint64((w + 2) * c)
        cu = np.uint64(c)
        xf = xp.reshape(-1)
        gf = gp.reshape(-1)
        gcf = gcols.reshape(-1)
        length = off.shape[2]
        kk = kh * kw
        rows = gcols.shape[2]
        ng = off.shape[1] // (2 * kk)
        cog = c // ng
        cg = c // groups
        one = T(1.0)
        zero = T(0.0)
        for u in range(start, stop):
            b = u // length
            l_ = u - b * length
            yo = l_ // wo
            xo = l_ - yo * wo
            for g in range(ng):
                c_lo = g * cog
                c_hi = c_lo + cog
                for k in range(kk):
                    oc = 2 * (g * kk + k)
                    inside, ly, lx, m, y0, x0 = _sample(off, msk, has_mask, b, l_, g, k, kk, kw, yo, xo,
                                                        sh, sw, ph, pw, dh, dw, h, w)
                    if not inside:
                        if need_coord:
                            goff[b, oc, l_] = zero
                            goff[b, oc + 1, l_] = zero
                            if has_mask:
                                gmsk[b, g * kk + k, l_] = zero
                        continue
                    hy = one - ly
                    hx = one - lx
                    w00 = hy * hx * m
                    w01 = hy * lx * m
                    w10 = ly * hx * m
                    w11 = ly * lx * m
                    corner = b * plane + ((y0 + 1) * (w + 2) + x0 + 1) * c
                    s00 = zero
                    s01 = zero
                    s10 = zero
                    s11 = zero
                    gi = c_lo // cg
                    while gi * cg < c_hi:
                        lo = max(c_lo, gi * cg)
                        cnt = np.uint64(min(c_hi, (gi + 1) * cg) - lo)
                        src = np.uint64(u * rows + (gi * kk + k) * cg + lo - gi * cg)
                        a = np.uint64(corner + lo)
                        if need_input:  # one loop per corner: each has a single store stream
                            for ch in range(cnt):
                                gf[a + ch] += w00 * gcf[src + ch]
                            for ch in range(cnt):
                                gf[a + cu + ch] += w01 * gcf[src + ch]
                            for ch in range(cnt):
                                gf[a + wpc + ch] += w10 * gcf[src + ch]
                            for ch in range(cnt):
                                gf[a + wpc + cu + ch] += w11 * gcf[src + ch]
                        if need_coord:
                            for ch in range(cnt):
                                gv = gcf[src + ch]
                                s00 += gv * xf[a + ch]
                                s01 += gv * xf[a + cu + ch]
                                s10 += gv * xf[a + wpc + ch]
                                s11 += gv * xf[a + wpc + cu + ch]
                        gi += 1
                    if need_coord:
                        goff[b, oc, l_] = m * (hx * (s10 - s00) + lx * (s11 - s01))
                        goff[b, oc + 1, l_] = m * (hy * (s01 - s00) + ly * (s11 - s10))
                        if has_mask:
                            gmsk[b, g * kk + k, l_] = hy * hx * s00 + hy * lx * s01 + ly * hx * s10 + ly * lx * s11


# ------------------------------------------------------------------------------------------- helpers
_POOL: Optional[ThreadPoolExecutor] = None


def _threads(total: int, work: int) -> int:
    """How many threads run a kernel over ``total`` units: 1 below :data:`SERIAL_BELOW` entries of work;
    else :data:`KERNEL_THREADS` if set, else 1 while PyTorch uses at most 2 threads (see the module
    docstring) and PyTorch's count above that; never more than ``total``."""
    if work < SERIAL_BELOW:
        return 1
    nt = torch.get_num_threads()
    nt = KERNEL_THREADS if KERNEL_THREADS is not None else (nt if nt > 2 else 1)
    return max(1, min(nt, total))


def _run(nt: int, total: int, job: Callable[[int, int, int], Any]) -> None:
    """Run ``job(thread_index, start, stop)`` over [0, total) cut into ``nt`` ranges, the first on this thread."""
    global _POOL
    if nt == 1:
        job(0, 0, total)
        return
    if _POOL is None or _POOL._max_workers < nt - 1:  # noqa: SLF001 - size check of our own pool
        _POOL = ThreadPoolExecutor(max_workers=nt - 1, thread_name_prefix="dcn-cpu")
    bounds = [total * i // nt for i in range(nt + 1)]
    futs = [_POOL.submit(job, t, bounds[t], bounds[t + 1]) for t in range(1, nt)]
    job(0, bounds[0], bounds[1])
    for f in futs:
        f.result()


def _padded_nhwc(x: Tensor) -> np.ndarray:
    """``[n, C, H, W]`` -> zero-bordered channels-last ``[n, H+2, W+2, C]`` (a new contiguous array)."""
    src = x.detach().contiguous().numpy()
    n, c, h, w = src.shape
    xp = np.zeros((n, h + 2, w + 2, c), src.dtype)
    _run(_threads(n * h, src.size), n * h, lambda t, a, b: _pad_nhwc_kernel(src, a, b, xp))
    return xp


def _weight_kmajor(weight: Tensor, groups: int) -> Tensor:
    """``[O, Cg, kh, kw]`` -> ``[groups, O/groups, K*Cg]`` with column ``k*Cg + c'`` (the columns' order)."""
    o, cg, kh, kw = weight.shape
    return weight.reshape(groups, o // groups, cg, kh * kw).transpose(2, 3).reshape(groups, o // groups, kh * kw * cg)


class _Geometry:
    """Per-call constants: sizes, groups, chunk size, and the arguments both kernels share."""

    def __init__(self, input_shape: Sequence[int], offset: Tensor, weight_shape: Sequence[int], dtype: torch.dtype,
                 stride: Pair, padding: Pair, dilation: Pair) -> None:
        self.n, self.c, self.h, self.w = (int(v) for v in input_shape)
        self.o, self.cg, self.kh, self.kw = (int(v) for v in weight_shape)
        self.groups = self.c // self.cg
        self.ho, self.wo = offset.shape[2], offset.shape[3]
        self.length = self.ho * self.wo
        self.kk = self.kh * self.kw
        self.rows = self.c * self.kk  # column entries per output pixel
        self.args = (self.kh, self.kw, stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1],
                     self.wo, self.groups)
        self.dtype = dtype
        # images per chunk: one columns buffer of at most deform_conv.COLUMNS_BUDGET_BYTES alive at a time
        self.step = chunk_size(self.n, self.rows, self.length, torch.empty(0, dtype=dtype).element_size())


class _Chunk:
    """Images [s, e) of one call, in the kernels' layouts: padded channels-last input, flat offset and mask.

    ``input`` None: a zero input of ``geo``'s shape (col2im alone reads no input values)."""

    def __init__(self, geo: _Geometry, input: Optional[Tensor], offset: Tensor, mask: Optional[Tensor], s: int,
                 e: int) -> None:
        self.geo, self.nb = geo, e - s
        if input is None:
            self.xp = np.zeros((e - s, geo.h + 2, geo.w + 2, geo.c), np.dtype(str(geo.dtype).replace("torch.", "")))
        else:
            self.xp = _padded_nhwc(input[s:e])
        self.off = offset[s:e].detach().reshape(e - s, offset.shape[1], -1).contiguous().numpy()
        self.has_mask = mask is not None
        if mask is None:
            self.msk = np.zeros((1, 1, 1), self.off.dtype)
        else:
            self.msk = mask[s:e].detach().reshape(e - s, mask.shape[1], -1).contiguous().numpy()

    def columns(self) -> Tensor:
        """``[nb, L, groups*K*Cg]``: mask * x sampled at every kernel point (layout of :func:`_columns_kernel`)."""
        geo = self.geo
        out = np.empty((self.nb, geo.length, geo.rows), self.xp.dtype)
        total = self.nb * geo.length
        _run(_threads(total, out.size), total, lambda t, a, b: _columns_kernel(
            self.xp, self.off, self.msk, self.has_mask, *geo.args, a, b, out))
        return torch.from_numpy(out)

    def columns_backward(self, grad_columns: Tensor, need_input: bool, need_coord: bool
                         ) -> tuple[Optional[Tensor], Optional[Tensor], Optional[Tensor]]:
        """``(grad_input [nb, C, H, W], grad_offset, grad_mask)`` of the columns' gradient (None where not asked)."""
        geo, nb = self.geo, self.nb
        gc = grad_columns.contiguous().numpy()
        total = nb * geo.length
        nt = _threads(total, gc.size)
        dummy = np.zeros((1, 1, 1, 1), self.xp.dtype)
        # every thread scatters into its own input-gradient buffer: samples may land anywhere in the image
        gps = [np.zeros(self.xp.shape, self.xp.dtype) if need_input else dummy for _ in range(nt)]
        goff = torch.empty(nb, self.off.shape[1], geo.ho, geo.wo, dtype=geo.dtype) if need_coord else None
        gm = torch.empty(nb, self.msk.shape[1], geo.ho, geo.wo, dtype=geo.dtype) if (need_coord and self.has_mask) else None
        goff_np = goff.view(nb, -1, geo.length).numpy() if goff is not None else dummy[0]
        gm_np = gm.view(nb, -1, geo.length).numpy() if gm is not None else dummy[0]
        _run(nt, total, lambda t, a, b: _backward_kernel(
            self.xp, self.off, self.msk, self.has_mask, gc, *geo.args, need_input, need_coord, a, b, gps[t],
            goff_np, gm_np))
        gi = None
        if need_input:
            acc = gps[0]
            for extra in gps[1:]:
                acc += extra
            gi = torch.from_numpy(acc[:, 1:-1, 1:-1]).permute(0, 3, 1, 2)  # the border collected what fell off
        return gi, goff, gm


def columns(input: Tensor, offset: Tensor, mask: Optional[Tensor], weight_shape: Sequence[int],
            stride: Pair, padding: Pair, dilation: Pair) -> Tensor:
    """Deformable im2col in this path's layout: ``[n, Ho*Wo, groups*K*Cg]``, column ``(gi*K + k)*Cg + c'``.

    The same numbers as :func:`dcn_lessons.ops._primitives.deform_im2col` (DCNv1 Eq. 2-3, DCNv2 Eq. 1),
    rearranged: that function's row ``c*K + k`` at pixel l is this one's ``[l, (gi*K + k)*Cg + c']`` with
    ``c = gi*Cg + c'`` and ``Cg = weight_shape[1]``.
    """
    geo = _Geometry(input.shape, offset, weight_shape, input.dtype, stride, padding, dilation)
    return _Chunk(geo, input, offset, mask, 0, geo.n).columns()


def columns_backward(grad_columns: Tensor, input: Tensor, offset: Tensor, mask: Optional[Tensor],
                     weight_shape: Sequence[int], stride: Pair, padding: Pair, dilation: Pair
                     ) -> tuple[Tensor, Tensor, Optional[Tensor]]:
    """Input, offset and mask gradients of :func:`columns` (``deform_col2im`` and ``deform_col2im_coord``
    of :mod:`dcn_lessons.ops._primitives` in one pass), for ``grad_columns`` in this path's layout."""
    geo = _Geometry(input.shape, offset, weight_shape, input.dtype, stride, padding, dilation)
    gi, goff, gm = _Chunk(geo, input, offset, mask, 0, geo.n).columns_backward(grad_columns, True, True)
    assert gi is not None and goff is not None
    return gi.contiguous(), goff, gm


def _to_native(grad_columns: Tensor, n: int, c: int, k: int) -> Tensor:
    """Shared columns layout ``[n, C*K, L]`` (row ``c*K + k``) -> this path's, one weight group: ``[n, L, K*C]``."""
    return grad_columns.reshape(n, c, k, -1).permute(0, 3, 2, 1).reshape(n, -1, k * c).contiguous()


class NumbaBackend(TensorBackend):
    """The ``cpu-numba`` backend: deformable convolution by the compiled kernels above (float32/float64 CPU
    tensors); :meth:`conv_forward`/:meth:`conv_backward` run one GEMM per chunk of images and weight group,
    with the columns as a transposed operand (BLAS reads it in place). RoI methods: the tensor backend's."""

    name = "cpu-numba"
    conv_dtypes = (torch.float32, torch.float64)

    # -- the contract's primitives, in the shared columns layout (one weight group)
    def deform_im2col(self, input: Tensor, offset: Tensor, mask: Optional[Tensor], kernel_size: Pair,  # type: ignore[override]
                      stride: Pair, padding: Pair, dilation: Pair) -> Tensor:
        n, c = input.shape[0], input.shape[1]
        k = kernel_size[0] * kernel_size[1]
        cols = columns(input, offset, mask, (1, c, *kernel_size), stride, padding, dilation)  # [n, L, K*C]
        return cols.view(n, -1, k, c).permute(0, 3, 2, 1).reshape(n, c * k, -1)

    def _backward_shared(self, grad_columns: Tensor, input: Optional[Tensor], input_shape: Sequence[int],
                         offset: Tensor, mask: Optional[Tensor], kernel_size: Pair, stride: Pair, padding: Pair,
                         dilation: Pair, need_input: bool, need_coord: bool
                         ) -> tuple[Optional[Tensor], Optional[Tensor], Optional[Tensor]]:
        n, c = int(input_shape[0]), int(input_shape[1])
        geo = _Geometry(input_shape, offset, (1, c, *kernel_size), offset.dtype, stride, padding, dilation)
        native = _to_native(grad_columns, n, c, geo.kk)
        gi, goff, gm = _Chunk(geo, input, offset, mask, 0, n).columns_backward(native, need_input, need_coord)
        return (None if gi is None else gi.contiguous()), goff, gm

    def deform_col2im(self, grad_columns: Tensor, offset: Tensor, mask: Optional[Tensor],  # type: ignore[override]
                      input_shape: Sequence[int], kernel_size: Pair, stride: Pair, padding: Pair,
                      dilation: Pair) -> Tensor:
        gi, _, _ = self._backward_shared(grad_columns, None, input_shape, offset, mask, kernel_size, stride,
                                         padding, dilation, True, False)
        assert gi is not None
        return gi

    def deform_col2im_coord(self, grad_columns: Tensor, input: Tensor, offset: Tensor,  # type: ignore[override]
                            mask: Optional[Tensor], kernel_size: Pair, stride: Pair, padding: Pair,
                            dilation: Pair) -> tuple[Tensor, Optional[Tensor]]:
        _, goff, gm = self._backward_shared(grad_columns, input, input.shape, offset, mask, kernel_size, stride,
                                            padding, dilation, False, True)
        assert goff is not None
        return goff, gm

    def deform_conv_backward_columns(self, grad_columns: Tensor, input: Tensor, offset: Tensor,
                                     mask: Optional[Tensor], kernel_size: Pair, stride: Pair, padding: Pair,
                                     dilation: Pair) -> tuple[Tensor, Tensor, Optional[Tensor]]:
        gi, goff, gm = self._backward_shared(grad_columns, input, input.shape, offset, mask, kernel_size, stride,
                                             padding, dilation, True, True)
        assert gi is not None and goff is not None
        return gi, goff, gm

    # -- the whole operator, in this path's own layout
    def conv_forward(self, input: Tensor, offset: Tensor, weight: Tensor, mask: Optional[Tensor],
                     stride: Pair, padding: Pair, dilation: Pair) -> Tensor:
        """``[N, O, Ho, Wo]``: DCNv1 Eq. (2) / DCNv2 Eq. (1) without the bias."""
        geo = _Geometry(input.shape, offset, weight.shape, input.dtype, stride, padding, dilation)
        groups, og, kc = geo.groups, geo.o // geo.groups, geo.kk * geo.cg
        w_k = _weight_kmajor(weight.detach(), groups).contiguous()
        out = input.new_empty(geo.n, geo.o, geo.ho, geo.wo)
        out_v = out.view(geo.n, groups, og, geo.length)
        for s in range(0, geo.n, geo.step):
            e = min(geo.n, s + geo.step)
            cols = _Chunk(geo, input, offset, mask, s, e).columns().view((e - s) * geo.length, geo.rows)
            for gi in range(groups):  # [O/g, K*Cg] @ [K*Cg, nb*L]: one GEMM for the chunk
                res = torch.mm(w_k[gi], cols[:, gi * kc:(gi + 1) * kc].t())
                out_v[s:e, gi] = res.view(og, e - s, geo.length).transpose(0, 1)
            del cols
        return out

    def conv_backward(self, grad_output: Tensor, input: Tensor, offset: Tensor, weight: Tensor,
                      mask: Optional[Tensor], stride: Pair, padding: Pair, dilation: Pair, need_input: bool,
                      need_offset: bool, need_weight: bool, need_mask: bool
                      ) -> tuple[Optional[Tensor], Optional[Tensor], Optional[Tensor], Optional[Tensor]]:
        """``(grad_input, grad_offset, grad_weight, grad_mask)``, None where not asked for."""
        geo = _Geometry(input.shape, offset, weight.shape, input.dtype, stride, padding, dilation)
        groups, og, kc = geo.groups, geo.o // geo.groups, geo.kk * geo.cg
        w_k = _weight_kmajor(weight.detach(), groups).contiguous()
        go = grad_output.reshape(geo.n, groups, og, geo.length)
        need_coord = need_offset or (need_mask and mask is not None)
        grad_input = input.new_empty(input.shape) if need_input else None
        grad_offset = offset.new_empty(offset.shape) if need_coord else None
        grad_mask = mask.new_empty(mask.shape) if (need_coord and mask is not None) else None
        gw_k = weight.new_zeros(groups, og, kc) if need_weight else None
        for s in range(0, geo.n, geo.step):
            e = min(geo.n, s + geo.step)
            nl = (e - s) * geo.length
            chunk = _Chunk(geo, input, offset, mask, s, e)
            go_c = go[s:e].permute(1, 2, 0, 3).reshape(groups, og, nl)  # [groups, O/g, nb*L]
            if gw_k is not None:  # grad_weight = grad_out @ columns, the columns recomputed (not kept from forward)
                cols = chunk.columns().view(nl, geo.rows)
                for gi in range(groups):
                    gw_k[gi].addmm_(go_c[gi], cols[:, gi * kc:(gi + 1) * kc])
                del cols
            if not (need_input or need_coord):
                continue
            gcols = input.new_empty(e - s, geo.length, geo.rows)  # grad_columns = grad_out^T @ weight
            gcols_2d = gcols.view(nl, geo.rows)
            for gi in range(groups):
                torch.mm(go_c[gi].t(), w_k[gi], out=gcols_2d[:, gi * kc:(gi + 1) * kc])
            gi_, goff, gm = chunk.columns_backward(gcols, need_input, need_coord)
            del gcols
            store_chunk(s, e, (grad_input, gi_), (grad_offset, goff), (grad_mask, gm))
        gw = None
        if gw_k is not None:
            gw = gw_k.reshape(groups, og, geo.kk, geo.cg).transpose(2, 3).reshape(weight.shape)
        # the offset/mask gradients were asked for separately: hand back only what was asked
        if not need_offset:
            grad_offset = None
        if not need_mask:
            grad_mask = None
        return grad_input, grad_offset, gw, grad_mask


BACKEND = NumbaBackend()
