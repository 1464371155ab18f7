"""The kernel backends ``cuda`` and ``cuda-emulated``: the :class:`~dcn_lessons.backends.Backend` contract, run by
the kernels of ``kernels/``.

Two implementations share every line of argument marshalling (:class:`KernelBackend`) and differ only in how a
kernel is launched:

* :class:`CupyKernels` -- ``cuda``: CUDA tensors, kernels compiled once per process and device by
  ``cupy.RawModule`` (NVRTC, CuPy's on-disk cache), tensors passed zero-copy through DLPack, launched on
  PyTorch's current stream. CuPy is imported lazily: the package imports without it.
* :class:`EmulatedKernels` -- ``cuda-emulated``: CPU tensors, the same source through
  :mod:`dcn_lessons.cuda.emulator` (g++). Slow (one emulated thread at a time) but bit-for-bit the same code
  path; used by the tests and lesson 06 on machines without a GPU.

Layouts and sampling rules: the README's conventions (offset ``[N, 2*G*kh*kw, Ho, Wo]`` with (dy, dx) pairs, mask
``[N, G*kh*kw, Ho, Wo]``, columns ``[N, C*kh*kw, Ho*Wo]``; RoI offsets ``[K, 2, ph, pw]`` x first, masks
``[K, 1, ph, pw]``). As every backend, these check nothing: the public functions of :mod:`dcn_lessons.ops`
check the arguments once (an out-of-range batch index would make a kernel read out of bounds: the RoI functions
check it on the host for CPU tensors and with an asynchronous device-side assertion for CUDA tensors).
"""
from __future__ import annotations

import math
import warnings
from typing import Any, Optional, Sequence

import torch

from dcn_lessons._validate.conv import as_pair
from dcn_lessons.backends import RoIKind, roi_kind
from dcn_lessons.ops._columns import ColumnsConv

from ._source import ELEMENT_TYPES, SIGNATURES, kernel_source, name_expression

__all__ = ["KernelBackend", "CupyKernels", "EmulatedKernels", "CONV_DTYPES", "ROI_DTYPES", "NVRTC_OPTIONS"]

#: torch dtype -> the kernels' element type (kernels/dcn_common.cuh).
_ELEMENT = {torch.float32: "float", torch.float64: "double", torch.float16: "dcn_half",
            torch.bfloat16: "dcn_bfloat16"}
#: The options CuPy's NVRTC compiles kernels/ with (the NVRTC test compiles with the same).
NVRTC_OPTIONS = ("--std=c++17",)
#: The dtypes each family of kernels takes (the RoI kernels have no 16-bit instantiation).
CONV_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
ROI_DTYPES = (torch.float32, torch.float64)
Pair = tuple[int, int]


def _conv_scalars(input_shape: Sequence[int], offset: torch.Tensor, kernel_size: Pair, stride: Pair, padding: Pair,
                  dilation: Pair) -> tuple[list[int], int, int, int]:
    """The 14 geometry scalars every conv kernel takes (C, H, W, kh, kw, strides, paddings, dilations, Ho, Wo, G),
    and (N, K, Ho*Wo) for the launch sizes."""
    n, c, h, w = (int(v) for v in input_shape)
    # scripts that drive a backend directly (the sanitizer's) may pass ints: (v, v)
    kh, kw = as_pair("kernel_size", kernel_size)
    stride, padding, dilation = (as_pair(n, v) for n, v in (("stride", stride), ("padding", padding),
                                                             ("dilation", dilation)))
    ho, wo = int(offset.shape[2]), int(offset.shape[3])
    groups = int(offset.shape[1]) // (2 * kh * kw)
    return [c, h, w, kh, kw, *stride, *padding, *dilation, ho, wo, groups], n, kh * kw, ho * wo


def _dev(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """What a kernel is handed: detached (DLPack refuses tensors that require grad) and contiguous."""
    return None if t is None else t.detach().contiguous()


class KernelBackend(ColumnsConv):
    """Argument marshalling shared by the CUDA and emulated backends; subclasses provide :meth:`_launch`.

    ``im2col``: "plain" (one thread per (n, c, y, x)) or "grouped" (one per (n, g, k, y, x), positions reused
    across the group's channels). ``backward``: "separate" (col2im then coordinate kernel) or "fused" (one
    pass, see ``deform_col2im_fused_kernel``); :meth:`deform_col2im` and :meth:`deform_col2im_coord` always
    use the separate kernels, :meth:`deform_conv_backward_columns` uses the chosen one.
    """

    name = "cuda"
    device_type = "cuda"
    conv_dtypes = CONV_DTYPES  # what the deformable-conv methods take
    roi_dtypes = ROI_DTYPES    # what roi_forward / roi_backward take
    #: Whether atomicAdd contributions land in a fixed order (the emulator: yes; a GPU: no, so a backward that
    #: scatters with atomics can differ in the last bits from run to run).
    ordered_atomics = False

    def __init__(self, im2col: str = "plain", backward: str = "separate") -> None:
        if im2col not in ("plain", "grouped"):
            raise ValueError(f'im2col: expected "plain" or "grouped", got {im2col!r}')
        if backward not in ("separate", "fused"):
            raise ValueError(f'backward: expected "separate" or "fused", got {backward!r}')
        self.im2col = im2col
        self.backward = backward

    # ------------------------------------------------------------------------------------------ plumbing
    def _launch(self, kernel: str, dtype: torch.dtype, n: int, args: Sequence[Any]) -> None:
        raise NotImplementedError

    def _alert_nondeterministic(self, what: str) -> None:
        """Follow ``torch.use_deterministic_algorithms``: raise (or warn, with ``warn_only=True``) before an
        atomicAdd scatter whose summation order varies between runs, as PyTorch does for its own such ops."""
        if self.ordered_atomics or not torch.are_deterministic_algorithms_enabled():
            return
        message = (f"dcn_lessons: {what} on CUDA scatters with atomicAdd, whose summation order (so the last bits "
                   "of the result) varies from run to run, and you called torch.use_deterministic_algorithms(True). "
                   "To allow it anyway: torch.use_deterministic_algorithms(True, warn_only=True)")
        if torch.is_deterministic_algorithms_warn_only_enabled():
            warnings.warn(message, UserWarning, stacklevel=3)
        else:
            raise RuntimeError(message)

    def _run(self, kernel: str, dtype: torch.dtype, n: int, *args: Any) -> None:
        if n > 0:
            sig = SIGNATURES[kernel]
            if len(sig) != len(args) + 1:  # internal consistency: the table and the call must agree
                raise RuntimeError(f"{kernel}: signature has {len(sig)} parameters, call passes {len(args) + 1}")
            self._launch(kernel, dtype, n, (n, *args))

    # -------------------------------------------------------------------------------- deformable conv
    def deform_im2col(self, input: torch.Tensor, offset: torch.Tensor, mask: Optional[torch.Tensor],
                      kernel_size: Pair, stride: Pair, padding: Pair, dilation: Pair) -> torch.Tensor:
        """Deformable im2col (DCNv1 Eq. (2) / DCNv2 Eq. (1) before the weights): ``columns [N, C*kh*kw, Ho*Wo]``,
        ``columns[n, c*K + k, y*Wo + x] = m * x_c(p)`` sampled by DCNv1 Eq. (3) (0 outside the map).

        input ``[N, C, H, W]``, offset ``[N, 2*G*kh*kw, Ho, Wo]``, mask ``[N, G*kh*kw, Ho, Wo]`` or None.
        """
        x, offset, mask = _dev(input), _dev(offset), _dev(mask)
        scalars, n, k, length = _conv_scalars(x.shape, offset, kernel_size, stride, padding, dilation)
        c, groups = scalars[0], scalars[-1]
        cols = torch.empty((n, c * k, length), dtype=x.dtype, device=x.device)
        m = offset if mask is None else mask
        if self.im2col == "plain":
            self._run("deform_im2col_kernel", x.dtype, n * c * length, x, offset, m, int(mask is not None), cols,
                      *scalars)
        else:
            self._run("deform_im2col_grouped_kernel", x.dtype, n * groups * k * length, x, offset, m,
                      int(mask is not None), cols, *scalars)
        return cols

    def deform_col2im(self, grad_columns: torch.Tensor, offset: torch.Tensor, mask: Optional[torch.Tensor],
                      input_shape: Sequence[int], kernel_size: Pair, stride: Pair, padding: Pair,
                      dilation: Pair) -> torch.Tensor:
        """Input gradient of :meth:`deform_im2col` (col2im): ``grad_input [N, C, H, W]``; each column entry adds
        ``m * grad * w`` to its in-map corners (Eq. (3) is linear in the input; off-map corners get nothing)."""
        gcol, offset, mask = _dev(grad_columns), _dev(offset), _dev(mask)
        scalars, n, k, length = _conv_scalars(input_shape, offset, kernel_size, stride, padding, dilation)
        self._alert_nondeterministic("deform_conv2d backward (grad_input, deform_col2im_kernel)")
        grad_input = _accumulator(tuple(int(v) for v in input_shape), gcol)
        self._run("deform_col2im_kernel", gcol.dtype, n * scalars[0] * k * length, gcol, offset,
                  offset if mask is None else mask, int(mask is not None), grad_input, *scalars)
        return grad_input.to(gcol.dtype)

    def deform_col2im_coord(self, grad_columns: torch.Tensor, input: torch.Tensor, offset: torch.Tensor,
                            mask: Optional[torch.Tensor], kernel_size: Pair, stride: Pair, padding: Pair,
                            dilation: Pair) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Offset and mask gradients of :meth:`deform_im2col`: ``(grad_offset [N, 2*G*K, Ho, Wo],
        grad_mask [N, G*K, Ho, Wo] or None)``. Position gradient by the course's rule (README conventions): 0 unless
        -1 < y < H and -1 < x < W, floor held fixed (forward difference at integer coordinates)."""
        gcol, x, offset, mask = _dev(grad_columns), _dev(input), _dev(offset), _dev(mask)
        scalars, n, k, length = _conv_scalars(x.shape, offset, kernel_size, stride, padding, dilation)
        grad_offset = torch.empty_like(offset)
        grad_mask = None if mask is None else torch.empty_like(mask)
        self._run("deform_col2im_coord_kernel", x.dtype, n * scalars[-1] * k * length,
                  gcol, x, offset, offset if mask is None else mask, int(mask is not None), grad_offset,
                  grad_offset if grad_mask is None else grad_mask, int(grad_mask is not None), *scalars)
        return grad_offset, grad_mask

    def deform_col2im_fused(self, grad_columns: torch.Tensor, input: torch.Tensor, offset: torch.Tensor,
                            mask: Optional[torch.Tensor], kernel_size: Pair, stride: Pair, padding: Pair,
                            dilation: Pair) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        """:meth:`deform_col2im` and :meth:`deform_col2im_coord` in one kernel (the faster variant):
        ``(grad_input, grad_offset, grad_mask or None)``, the same values."""
        gcol, x, offset, mask = _dev(grad_columns), _dev(input), _dev(offset), _dev(mask)
        scalars, n, k, length = _conv_scalars(x.shape, offset, kernel_size, stride, padding, dilation)
        self._alert_nondeterministic("deform_conv2d backward (grad_input, deform_col2im_fused_kernel)")
        grad_input = _accumulator(tuple(x.shape), x)
        grad_offset = torch.empty_like(offset)
        grad_mask = None if mask is None else torch.empty_like(mask)
        self._run("deform_col2im_fused_kernel", x.dtype, n * scalars[-1] * k * length,
                  gcol, x, offset, offset if mask is None else mask, int(mask is not None), grad_input, grad_offset,
                  grad_offset if grad_mask is None else grad_mask, int(grad_mask is not None), *scalars)
        return grad_input.to(x.dtype), grad_offset, grad_mask

    def deform_conv_backward_columns(self, grad_columns: torch.Tensor, input: torch.Tensor, offset: torch.Tensor,
                                     mask: Optional[torch.Tensor], kernel_size: Pair, stride: Pair,
                                     padding: Pair, dilation: Pair,
                                     ) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        """All three gradients from ``grad_columns`` with the backward chosen at construction."""
        if self.backward == "fused":
            return self.deform_col2im_fused(grad_columns, input, offset, mask, kernel_size, stride, padding,
                                            dilation)
        gi = self.deform_col2im(grad_columns, offset, mask, tuple(input.shape), kernel_size, stride, padding,
                                dilation)
        go, gm = self.deform_col2im_coord(grad_columns, input, offset, mask, kernel_size, stride, padding, dilation)
        return gi, go, gm

    # -------------------------------------------------------------------------------------- RoI family
    @staticmethod
    def _roi_args(kind: RoIKind, input: torch.Tensor, rois: torch.Tensor, offset: Optional[torch.Tensor],
                  mask: Optional[torch.Tensor], output_size: Pair, spatial_scale: float, sampling_ratio: int,
                  gamma: float, aligned: bool) -> tuple:
        if not aligned:
            raise NotImplementedError("the RoI kernels implement aligned=True only (legacy roi_align runs on the "
                                      "tensor backend)")
        if isinstance(kind, str):  # scripts that drive a backend directly may name the kind
            kind = roi_kind(kind)
        x = _dev(input)
        n, c_in, h, w = x.shape
        ph, pw = as_pair("output_size", output_size)
        c_out = c_in // (ph * pw) if kind.position_sensitive else c_in
        if not kind.deformable:
            offset = mask = None
        scalars = [c_in, h, w, c_out, ph, pw, float(spatial_scale), int(sampling_ratio), float(gamma),
                   int(kind.position_sensitive)]
        return x, _dev(rois.to(x.dtype)), _dev(offset), _dev(mask), c_out, scalars

    def roi_forward(self, kind: RoIKind, input: torch.Tensor, rois: torch.Tensor, offset: Optional[torch.Tensor],
                    mask: Optional[torch.Tensor], output_size: Pair, spatial_scale: float, sampling_ratio: int,
                    gamma: float, aligned: bool = True) -> torch.Tensor:
        """The aligned RoI family (:data:`dcn_lessons.backends.ROI_KINDS`): ``[K, C_out, ph, pw]``.

        roi_align: DCNv1 Eq. (5) sampled (torchvision aligned=True); deform_roi_pool: DCNv1 Eq. (6), bin moved
        by γ·(off_x·roi_w, off_y·roi_h), times the mask when given (DCNv2 Eq. (2)); ps_*: output channel c of
        bin (i, j) reads input channel (c·ph + i)·pw + j (C_out = C_in/(ph·pw)). input ``[N, C_in, H, W]``,
        rois ``[K, 5]``, offset ``[K, 2, ph, pw]`` or None, mask ``[K, 1, ph, pw]`` or None. Samples with
        y < -1 or y > H (likewise x) read 0, others are clamped into the map.
        """
        x, rois, offset, mask, c_out, scalars = self._roi_args(kind, input, rois, offset, mask, output_size,
                                                               spatial_scale, sampling_ratio, gamma, aligned)
        out = torch.empty((rois.shape[0], c_out, scalars[4], scalars[5]), dtype=x.dtype, device=x.device)
        self._run("roi_align_forward_kernel", x.dtype, out.numel(), x, rois, x if offset is None else offset,
                  int(offset is not None), x if mask is None else mask, int(mask is not None), out, *scalars)
        return out

    def roi_backward(self, kind: RoIKind, grad_output: torch.Tensor, input: torch.Tensor, rois: torch.Tensor,
                     offset: Optional[torch.Tensor], mask: Optional[torch.Tensor], output_size: Pair,
                     spatial_scale: float, sampling_ratio: int, gamma: float, aligned: bool = True,
                     ) -> tuple[torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor]]:
        """Gradients of :meth:`roi_forward`: ``(grad_input [N, C_in, H, W], grad_offset [K, 2, ph, pw] or None,
        grad_mask [K, 1, ph, pw] or None)`` (None where offset/mask was None). Offset gradient by the RoI rule's
        position gradient (0 in a clamped direction and outside), scaled by γ·roi_w (x) and γ·roi_h (y)."""
        x, rois, offset, mask, c_out, scalars = self._roi_args(kind, input, rois, offset, mask, output_size,
                                                               spatial_scale, sampling_ratio, gamma, aligned)
        go = _dev(grad_output)
        self._alert_nondeterministic(f"{getattr(kind, 'name', kind)} backward (roi_align_backward_kernel)")
        grad_input = torch.zeros_like(x)
        grad_offset = None if offset is None else torch.zeros_like(offset)
        grad_mask = None if mask is None else torch.zeros_like(mask)
        self._run("roi_align_backward_kernel", x.dtype, go.numel(), go, x, rois, x if offset is None else offset,
                  int(offset is not None), x if mask is None else mask, int(mask is not None), grad_input,
                  grad_input if grad_offset is None else grad_offset, int(grad_offset is not None),
                  grad_input if grad_mask is None else grad_mask, int(grad_mask is not None), *scalars)
        return grad_input, grad_offset, grad_mask


def _accumulator(shape: Sequence[int], like: torch.Tensor) -> torch.Tensor:
    """Zeros for an atomicAdd target: in the kernels' compute type (float32 for float16/bfloat16 tensors)."""
    dtype = torch.float32 if like.dtype in (torch.float16, torch.bfloat16) else like.dtype
    return torch.zeros(tuple(shape), dtype=dtype, device=like.device)


def all_name_expressions() -> list[str]:
    """Every kernel instantiation CuPy compiles, e.g. ``deform_im2col_kernel<dcn_half>``."""
    return [name_expression(k, e) for k in SIGNATURES for e in ELEMENT_TYPES[k]]


class EmulatedKernels(KernelBackend):
    """The backend on CPU tensors through the emulator (g++): the real kernel source, one thread at a time.

    ``threads``/``max_blocks``: the launch configuration; small on purpose so that tests exercise several
    blocks and the grid-stride loops (each emulated thread handles several work items).
    """

    name = "cuda-emulated"
    device_type = "cpu"
    ordered_atomics = True  # one emulated thread after another: the same order every run

    def __init__(self, im2col: str = "plain", backward: str = "separate", threads: int = 32,
                 max_blocks: int = 4) -> None:
        super().__init__(im2col, backward)
        from . import emulator

        self.threads, self.max_blocks = int(threads), int(max_blocks)
        kernels = {name_expression(k, e): [_c(s, e) for s in SIGNATURES[k]]
                   for k in SIGNATURES for e in ELEMENT_TYPES[k]}
        self.module = emulator.compile(kernel_source(), kernels)

    def _launch(self, kernel: str, dtype: torch.dtype, n: int, args: Sequence[Any]) -> None:
        fn = self.module.get_function(name_expression(kernel, _ELEMENT[dtype]))
        blocks = max(1, min(math.ceil(n / self.threads), self.max_blocks))
        fn((blocks,), (self.threads,), tuple(args))


def _c(spec: str, element: str) -> str:
    from ._source import c_type

    return c_type(spec, element)


class CupyKernels(KernelBackend):
    """The backend on CUDA tensors of one device: ``cupy.RawModule`` of ``kernels/``, compiled once.

    Tensors go to CuPy zero-copy through DLPack; launches go on PyTorch's current stream of the device; the
    outputs are allocated by torch. Raises ImportError without CuPy and ``cupy``'s compile error when NVRTC
    rejects the source (:func:`dcn_lessons.cuda.kernels_for` turns both into a warning and a fallback).
    """

    device_type = "cuda"
    threads = 256
    max_blocks = 65535 * 16

    def __init__(self, device: Any, im2col: str = "plain", backward: str = "separate") -> None:
        super().__init__(im2col, backward)
        import cupy  # noqa: F401  (lazy: optional dependency)

        self._cupy = cupy
        self.device = torch.device(device)
        if self.device.type != "cuda":
            raise ValueError(f"device: expected a CUDA device, got {self.device}")
        index = self.device.index if self.device.index is not None else torch.cuda.current_device()
        self.device = torch.device("cuda", index)
        with cupy.cuda.Device(index):
            self.module = cupy.RawModule(code=kernel_source(), options=NVRTC_OPTIONS,
                                         name_expressions=all_name_expressions())
            self.module.compile()
            self._functions = {e: self.module.get_function(e) for e in all_name_expressions()}
        import numpy as np

        self._np_scalar = {"int32": np.int32, "int64": np.int64}
        self._np_float = {torch.float32: np.float32, torch.float64: np.float64}

    def _launch(self, kernel: str, dtype: torch.dtype, n: int, args: Sequence[Any]) -> None:
        cupy = self._cupy
        fn = self._functions[name_expression(kernel, _ELEMENT[dtype])]
        blocks = max(1, min(math.ceil(n / self.threads), self.max_blocks))
        with cupy.cuda.Device(self.device.index):
            # Make torch's current stream CuPy's current stream *before* the DLPack exchange, so the exchange
            # needs no synchronisation and the launch is ordered after torch's pending work on that stream.
            stream = cupy.cuda.ExternalStream(torch.cuda.current_stream(self.device).cuda_stream)
            with stream:
                converted = []
                for spec, a in zip(SIGNATURES[kernel], args):
                    if spec.endswith("*"):
                        if a.device != self.device:
                            raise ValueError(f"{kernel}: tensor on {a.device}, backend for {self.device}")
                        # The kernel sees only the pointer; 16-bit floats travel as int16 (CuPy has no bfloat16).
                        if a.dtype in (torch.float16, torch.bfloat16):
                            a = a.view(torch.int16)
                        converted.append(cupy.from_dlpack(a))
                    elif spec == "T":
                        converted.append(self._np_float[dtype](a))
                    else:
                        converted.append(self._np_scalar[spec](a))
                fn((blocks,), (self.threads,), tuple(converted))
        # `converted` (and the torch tensors in `args`) stay referenced until the launch is queued; the caller
        # keeps the torch tensors alive afterwards and torch's caching allocator is stream-ordered.
