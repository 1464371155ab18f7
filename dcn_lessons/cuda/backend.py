"""The kernel backends: the same methods as the tensor path's primitives, run by the kernels of ``kernels/``.

Two implementations share every line of argument handling (:class:`KernelBackend`) and differ only in how a
kernel is launched:

* :class:`CupyKernels` -- CUDA tensors, kernels compiled once per process and device by ``cupy.RawModule``
  (NVRTC, CuPy's on-disk cache), tensors passed zero-copy through DLPack, launched on PyTorch's current
  stream. CuPy is imported lazily: the package imports without it.
* :class:`EmulatedKernels` -- CPU tensors, the same source through :mod:`dcn_lessons.cuda.emulator`
  (g++). Slow (one emulated thread at a time) but bit-for-bit the same code path; used by the tests and
  lesson 06 on machines without a GPU.

Layouts and sampling rules: the README's conventions (offset ``[N, 2*G*kh*kw, Ho, Wo]`` with (dy, dx) pairs, mask
``[N, G*kh*kw, Ho, Wo]``, columns ``[N, C*kh*kw, Ho*Wo]``; RoI offsets ``[K, 2, ph, pw]`` x first, masks
``[K, 1, ph, pw]``). Every method checks shapes and dtypes (ValueError/TypeError naming the argument); the
RoI *values* (batch indices in range) are checked by :class:`EmulatedKernels` always and by
:class:`CupyKernels` only when ``check_values=True`` (it costs a device-to-host copy), since an out-of-range
batch index makes a kernel read out of bounds.
"""
from __future__ import annotations

import math
import warnings
from typing import Any, Optional, Sequence

import torch

from dcn_lessons._validate import roi as _roi
from dcn_lessons._validate.conv import SamplingGeometry, check_sampling_args

from ._source import ELEMENT_TYPES, SIGNATURES, kernel_source, name_expression

__all__ = ["KernelBackend", "CupyKernels", "EmulatedKernels", "ROI_KINDS", "CONV_DTYPES", "ROI_DTYPES"]

#: The RoI kinds the backends accept, and whether each is (deformable, position-sensitive).
ROI_KINDS: dict[str, tuple[bool, bool]] = {
    "roi_align": (False, False),
    "deform_roi_pool": (True, False),
    "ps_roi_align": (False, True),
    "deform_ps_roi_pool": (True, True),
}

#: torch dtype -> the kernels' element type (kernels/dcn_common.cuh).
_ELEMENT = {torch.float32: "float", torch.float64: "double", torch.float16: "dcn_half",
            torch.bfloat16: "dcn_bfloat16"}
#: The options CuPy's NVRTC compiles kernels/ with (the NVRTC test compiles with the same).
NVRTC_OPTIONS = ("--std=c++17",)
#: The dtypes each family of kernels takes (the RoI kernels have no 16-bit instantiation).
CONV_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
ROI_DTYPES = (torch.float32, torch.float64)
IntPair = Any


def _conv_scalars(geo: SamplingGeometry) -> list[int]:
    return [geo.C, geo.H, geo.W, geo.kh, geo.kw, *geo.stride, *geo.padding, *geo.dilation, geo.Ho, geo.Wo,
            geo.offset_groups]


class KernelBackend:
    """Argument handling shared by the CUDA and emulated backends; subclasses provide :meth:`_launch`.

    ``im2col``: "plain" (one thread per (n, c, y, x)) or "grouped" (one per (n, g, k, y, x), positions reused
    across the group's channels). ``backward``: "separate" (col2im then coordinate kernel) or "fused" (one
    pass, see ``deform_col2im_fused_kernel``); :meth:`deform_col2im` and :meth:`deform_col2im_coord` always
    use the separate kernels, :meth:`deform_conv_backward_columns` uses the chosen one.
    """

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

    def _tensor(self, name: str, t: Any, dtype: Optional[torch.dtype] = None, device: Any = None,
                allowed: Sequence[torch.dtype] = CONV_DTYPES) -> torch.Tensor:
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
        if t.device.type != self.device_type:
            raise TypeError(f"{name}: expected a {self.device_type} tensor for this backend, got device {t.device}")
        if t.dtype not in allowed:
            names = ", ".join(str(d).replace("torch.", "") for d in allowed)
            raise TypeError(f"{name}: expected one of {names}, got {t.dtype}")
        if dtype is not None and t.dtype != dtype:
            raise TypeError(f"{name}: expected dtype {dtype} (that of input), got {t.dtype}")
        if device is not None and t.device != device:
            raise ValueError(f"{name}: expected device {device} (that of input), got {t.device}")
        # detach: DLPack refuses tensors that require grad (the autograd Functions call us with such inputs)
        return t.detach().contiguous()

    def _conv_inputs(self, ref_name: str, ref: Any, input_shape: Sequence[int], offset: Any, mask: Any,
                     kernel_size: IntPair, stride: IntPair, padding: IntPair, dilation: IntPair,
                     ) -> tuple[SamplingGeometry, torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        ref = self._tensor(ref_name, ref)
        geo = check_sampling_args(input_shape, offset, mask, kernel_size, stride, padding, dilation)
        offset = self._tensor("offset", offset, ref.dtype, ref.device)
        mask = None if mask is None else self._tensor("mask", mask, ref.dtype, ref.device)
        return geo, ref, offset, mask

    def _columns_shape_check(self, grad_columns: torch.Tensor, geo: SamplingGeometry) -> None:
        exp = (geo.N, geo.C * geo.K, geo.Ho * geo.Wo)
        if tuple(grad_columns.shape) != exp:
            raise ValueError(f"grad_columns: expected shape [N, C*kh*kw, Ho*Wo] = {list(exp)}, "
                             f"got {list(grad_columns.shape)}")

    # -------------------------------------------------------------------------------- deformable conv
    def deform_im2col(self, input: torch.Tensor, offset: torch.Tensor, mask: Optional[torch.Tensor],
                      kernel_size: IntPair, stride: IntPair, padding: IntPair, dilation: IntPair) -> torch.Tensor:
        """Deformable im2col (DCNv1 Eq. (2) / DCNv2 Eq. (1) before the weights): ``columns [N, C*kh*kw, Ho*Wo]``,
        ``columns[n, c*K + k, y*Wo + x] = m * x_c(p)`` sampled by DCNv1 Eq. (3) (0 outside the map).

        input ``[N, C, H, W]``, offset ``[N, 2*G*kh*kw, Ho, Wo]``, mask ``[N, G*kh*kw, Ho, Wo]`` or None.
        """
        geo, x, offset, mask = self._conv_inputs("input", input, tuple(getattr(input, "shape", ())), offset, mask,
                                                 kernel_size, stride, padding, dilation)
        cols = torch.empty((geo.N, geo.C * geo.K, geo.Ho * geo.Wo), dtype=x.dtype, device=x.device)
        m = offset if mask is None else mask
        if self.im2col == "plain":
            self._run("deform_im2col_kernel", x.dtype, geo.N * geo.C * geo.Ho * geo.Wo, x, offset, m,
                      int(mask is not None), cols, *_conv_scalars(geo))
        else:
            self._run("deform_im2col_grouped_kernel", x.dtype, geo.N * geo.offset_groups * geo.K * geo.Ho * geo.Wo,
                      x, offset, m, int(mask is not None), cols, *_conv_scalars(geo))
        return cols

    def deform_col2im(self, grad_columns: torch.Tensor, offset: torch.Tensor, mask: Optional[torch.Tensor],
                      input_shape: Sequence[int], kernel_size: IntPair, stride: IntPair, padding: IntPair,
                      dilation: IntPair) -> torch.Tensor:
        """Input gradient of :meth:`deform_im2col` (col2im): ``grad_input [N, C, H, W]``; each column entry adds
        ``m * grad * w`` to its in-map corners (Eq. (3) is linear in the input; off-map corners get nothing)."""
        geo, gcol, offset, mask = self._conv_inputs("grad_columns", grad_columns, input_shape, offset, mask,
                                                    kernel_size, stride, padding, dilation)
        self._columns_shape_check(gcol, geo)
        self._alert_nondeterministic("deform_conv2d backward (grad_input, deform_col2im_kernel)")
        grad_input = _accumulator((geo.N, geo.C, geo.H, geo.W), gcol)
        self._run("deform_col2im_kernel", gcol.dtype, geo.N * geo.C * geo.K * geo.Ho * geo.Wo, gcol, offset,
                  offset if mask is None else mask, int(mask is not None), grad_input, *_conv_scalars(geo))
        return grad_input.to(gcol.dtype)

    def deform_col2im_coord(self, grad_columns: torch.Tensor, input: torch.Tensor, offset: torch.Tensor,
                            mask: Optional[torch.Tensor], kernel_size: IntPair, stride: IntPair, padding: IntPair,
                            dilation: IntPair) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Offset and mask gradients of :meth:`deform_im2col`: ``(grad_offset [N, 2*G*K, Ho, Wo],
        grad_mask [N, G*K, Ho, Wo] or None)``. Position gradient by the torchvision rule (README conventions): 0 unless
        -1 < y < H and -1 < x < W, floor held fixed (forward difference at integer coordinates)."""
        geo, x, offset, mask = self._conv_inputs("input", input, tuple(getattr(input, "shape", ())), offset, mask,
                                                 kernel_size, stride, padding, dilation)
        gcol = self._tensor("grad_columns", grad_columns, x.dtype, x.device)
        self._columns_shape_check(gcol, geo)
        grad_offset = torch.empty_like(offset)
        grad_mask = None if mask is None else torch.empty_like(mask)
        self._run("deform_col2im_coord_kernel", x.dtype, geo.N * geo.offset_groups * geo.K * geo.Ho * geo.Wo,
                  gcol, x, offset, offset if mask is None else mask, int(mask is not None), grad_offset,
                  grad_offset if grad_mask is None else grad_mask, int(grad_mask is not None), *_conv_scalars(geo))
        return grad_offset, grad_mask

    def deform_col2im_fused(self, grad_columns: torch.Tensor, input: torch.Tensor, offset: torch.Tensor,
                            mask: Optional[torch.Tensor], kernel_size: IntPair, stride: IntPair, padding: IntPair,
                            dilation: IntPair) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        """:meth:`deform_col2im` and :meth:`deform_col2im_coord` in one kernel (the faster variant):
        ``(grad_input, grad_offset, grad_mask or None)``, the same values."""
        geo, x, offset, mask = self._conv_inputs("input", input, tuple(getattr(input, "shape", ())), offset, mask,
                                                 kernel_size, stride, padding, dilation)
        gcol = self._tensor("grad_columns", grad_columns, x.dtype, x.device)
        self._columns_shape_check(gcol, geo)
        self._alert_nondeterministic("deform_conv2d backward (grad_input, deform_col2im_fused_kernel)")
        grad_input = _accumulator(tuple(x.shape), x)
        grad_offset = torch.empty_like(offset)
        grad_mask = None if mask is None else torch.empty_like(mask)
        self._run("deform_col2im_fused_kernel", x.dtype, geo.N * geo.offset_groups * geo.K * geo.Ho * geo.Wo,
                  gcol, x, offset, offset if mask is None else mask, int(mask is not None), grad_input, grad_offset,
                  grad_offset if grad_mask is None else grad_mask, int(grad_mask is not None), *_conv_scalars(geo))
        return grad_input.to(x.dtype), grad_offset, grad_mask

    def deform_conv_backward_columns(self, grad_columns: torch.Tensor, input: torch.Tensor, offset: torch.Tensor,
                                     mask: Optional[torch.Tensor], kernel_size: IntPair, stride: IntPair,
                                     padding: IntPair, dilation: IntPair,
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
    check_values = True

    def _roi_inputs(self, kind: str, input: Any, rois: Any, offset: Any, mask: Any, output_size: Any,
                    spatial_scale: Any, sampling_ratio: Any, gamma: Any) -> tuple:
        if kind not in ROI_KINDS:
            raise ValueError(f"kind: expected one of {sorted(ROI_KINDS)}, got {kind!r}")
        deformable, ps = ROI_KINDS[kind]
        x = self._tensor("input", input, allowed=ROI_DTYPES)
        n, c_in, h, w = _roi.check_feature_map(x)
        size = _roi.normalize_output_size(output_size)
        scale = _roi.check_spatial_scale(spatial_scale)
        ratio = _roi.check_sampling_ratio(sampling_ratio)
        gamma = _roi.check_gamma(gamma)
        if not isinstance(rois, torch.Tensor):
            raise TypeError(f"rois: expected a torch.Tensor, got {type(rois).__name__}")
        k = _roi.check_rois(rois, n, check_values=self.check_values)
        if rois.device != x.device:
            raise ValueError(f"rois: expected device {x.device} (that of input), got {rois.device}")
        rois = rois.detach().to(x.dtype).contiguous()
        if not deformable and (offset is not None or mask is not None):
            raise ValueError(f"offset/mask: {kind} takes neither; use deform_roi_pool or deform_ps_roi_pool")
        if mask is not None and kind != "deform_roi_pool":
            raise ValueError(f"mask: only deform_roi_pool takes a mask (modulated, DCNv2 Eq. (2)), not {kind}")
        if offset is not None:
            _roi.check_roi_offset(offset, k, size, check_values=False)
            offset = self._tensor("offset", offset, x.dtype, x.device)
        if mask is not None:
            _roi.check_roi_mask(mask, k, size, check_values=False)
            mask = self._tensor("mask", mask, x.dtype, x.device)
        c_out = _roi.check_ps_channels(c_in, size) if ps else c_in
        scalars = [c_in, h, w, c_out, size[0], size[1], scale, ratio, gamma, int(ps)]
        return x, rois, offset, mask, k, c_out, size, scalars

    def roi_forward(self, kind: str, input: torch.Tensor, rois: torch.Tensor, offset: Optional[torch.Tensor],
                    mask: Optional[torch.Tensor], output_size: Any, spatial_scale: float, sampling_ratio: int,
                    gamma: float) -> torch.Tensor:
        """RoI pooling of ``kind`` (see :data:`ROI_KINDS`): ``[K, C_out, ph, pw]``.

        roi_align: DCNv1 Eq. (5) sampled (torchvision aligned=True); deform_roi_pool: DCNv1 Eq. (6), bin moved
        by γ·(off_x·roi_w, off_y·roi_h), times the mask when given (DCNv2 Eq. (2)); ps_*: output channel c of
        bin (i, j) reads input channel (c·ph + i)·pw + j (C_out = C_in/(ph·pw)). input ``[N, C_in, H, W]``,
        rois ``[K, 5]``, offset ``[K, 2, ph, pw]`` or None, mask ``[K, 1, ph, pw]`` or None. Samples with
        y < -1 or y > H (likewise x) read 0, others are clamped into the map.
        """
        x, rois, offset, mask, k, c_out, (ph, pw), scalars = self._roi_inputs(
            kind, input, rois, offset, mask, output_size, spatial_scale, sampling_ratio, gamma)
        out = torch.empty((k, c_out, ph, pw), dtype=x.dtype, device=x.device)
        self._run("roi_pool_forward_kernel", x.dtype, out.numel(), x, rois, x if offset is None else offset,
                  int(offset is not None), x if mask is None else mask, int(mask is not None), out, *scalars)
        return out

    def roi_backward(self, kind: str, grad_output: torch.Tensor, input: torch.Tensor, rois: torch.Tensor,
                     offset: Optional[torch.Tensor], mask: Optional[torch.Tensor], output_size: Any,
                     spatial_scale: float, sampling_ratio: int, gamma: float,
                     ) -> tuple[torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor]]:
        """Gradients of :meth:`roi_forward`: ``(grad_input [N, C_in, H, W], grad_offset [K, 2, ph, pw] or None,
        grad_mask [K, 1, ph, pw] or None)`` (None where offset/mask was None). Offset gradient by the RoI rule's
        position gradient (0 in a clamped direction and outside), scaled by γ·roi_w (x) and γ·roi_h (y)."""
        x, rois, offset, mask, k, c_out, (ph, pw), scalars = self._roi_inputs(
            kind, input, rois, offset, mask, output_size, spatial_scale, sampling_ratio, gamma)
        go = self._tensor("grad_output", grad_output, x.dtype, x.device)
        _roi.check_grad_output(go, (k, c_out, ph, pw))
        self._alert_nondeterministic(f"{kind} backward (roi_pool_backward_kernel)")
        grad_input = torch.zeros_like(x)
        grad_offset = None if offset is None else torch.zeros_like(offset)
        grad_mask = None if mask is None else torch.zeros_like(mask)
        self._run("roi_pool_backward_kernel", x.dtype, go.numel(), go, x, rois, x if offset is None else offset,
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

    device_type = "cpu"
    check_values = True
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
    check_values = False
    threads = 256
    max_blocks = 65535 * 16

    def __init__(self, device: Any, im2col: str = "plain", backward: str = "separate",
                 check_values: bool = False) -> None:
        super().__init__(im2col, backward)
        import cupy  # noqa: F401  (lazy: optional dependency)

        self._cupy = cupy
        self.device = torch.device(device)
        if self.device.type != "cuda":
            raise ValueError(f"device: expected a CUDA device, got {self.device}")
        self.check_values = bool(check_values)
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
