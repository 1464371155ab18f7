"""What a backend is, which ones exist, and which one runs a call.

A *backend* computes the operators of :mod:`dcn_lessons.ops` on one kind of tensor. Four implement the same
contract, :class:`Backend`, and go by these names (the ones ``DCN_LESSONS_BACKEND`` takes, :func:`active_backend`
returns and the docs use):

=================  ==========================================================================================
``tensor``         plain PyTorch tensor code (:mod:`dcn_lessons.ops._primitives`, ``_roi_plan``); any device,
                   every floating dtype. The reference of the tiers above it.
``cpu-numba``      compiled CPU kernels for deformable convolution (:mod:`dcn_lessons.ops._cpu_numba`:
                   channels-last, one-pass backward), float32/float64 CPU tensors, when Numba imports. Its
                   RoI methods are the tensor backend's (there is no compiled RoI kernel).
``cuda``           the CUDA kernels of ``kernels/`` through CuPy (:class:`dcn_lessons.cuda.backend.CupyKernels`),
                   CUDA tensors, one object per device and kernel variant.
``cuda-emulated``  the same kernel source compiled with g++ and run one emulated thread at a time on CPU
                   tensors (:class:`dcn_lessons.cuda.backend.EmulatedKernels`): slow, for tests and lesson 06.
=================  ==========================================================================================

**The contract.** Every method takes arguments that the public functions of :mod:`dcn_lessons.ops` have
already checked (shapes, dtypes, devices, values: checked once, at that boundary) and checks nothing itself.
Layouts are the README's conventions: offset ``[N, 2*G*kh*kw, Ho, Wo]`` with (Δy, Δx) pairs, mask
``[N, G*kh*kw, Ho, Wo]``, columns ``[N, C*kh*kw, Ho*Wo]`` with row ``c*kh*kw + k``; RoIs ``[K, 5]``, RoI
offsets ``[K, 2, ph, pw]`` (x first), RoI masks ``[K, 1, ph, pw]``.

**Choosing** (:func:`select`, per call): with ``DCN_LESSONS_BACKEND`` unset (``auto``), a CPU tensor of
float32/float64 runs deformable convolution on ``cpu-numba`` when Numba imports and everything else on
``tensor``; a CUDA tensor runs on ``cuda`` when CuPy and the kernels work for its dtype (else ``tensor``, with a
one-time warning that says why). A named backend is forced on the tensors it runs on and leaves the others to
``auto``: ``tensor`` applies to every tensor, ``cpu-numba`` and ``cuda-emulated`` to CPU tensors, ``cuda`` to
CUDA tensors. A forced backend that cannot run at all (Numba missing, CuPy missing) is an error; a call it does
not cover (a dtype it lacks, legacy ``aligned=False`` RoI Align on the kernels) runs on ``tensor``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional, Protocol, Sequence, runtime_checkable

import torch
from torch import Tensor

from dcn_lessons.config import BACKEND_NAMES, backend_override

__all__ = ["Backend", "BACKEND_NAMES", "RoIKind", "ROI_KINDS", "roi_kind", "select", "active_backend", "get"]

Pair = tuple[int, int]
Family = Literal["conv", "roi"]


@dataclass(frozen=True)
class RoIKind:
    """One operator of the aligned RoI family: all sample bins bilinearly by the course's RoI rule (README).

    ``deformable``: bins move by ``γ·(offset_x·roi_w, offset_y·roi_h)`` (DCNv1 Eq. 6); ``position_sensitive``:
    output channel c of bin (i, j) reads input channel ``(c·ph + i)·pw + j`` (DCNv1 §2.2, R-FCN);
    ``takes_mask``: the bin may be multiplied by a modulation scalar (DCNv2 Eq. 2).
    """

    name: str
    deformable: bool
    position_sensitive: bool
    takes_mask: bool


#: The aligned RoI family, the one table every tier uses (the quantised ``roi_pool`` is not in it).
ROI_KINDS: dict[str, RoIKind] = {k.name: k for k in (
    RoIKind("roi_align", deformable=False, position_sensitive=False, takes_mask=False),
    RoIKind("deform_roi_pool", deformable=True, position_sensitive=False, takes_mask=True),
    RoIKind("ps_roi_align", deformable=False, position_sensitive=True, takes_mask=False),
    RoIKind("deform_ps_roi_pool", deformable=True, position_sensitive=True, takes_mask=False),
)}


def roi_kind(name: str) -> RoIKind:
    """The :class:`RoIKind` called ``name``; ValueError naming ``kind`` otherwise."""
    try:
        return ROI_KINDS[name]
    except (KeyError, TypeError):
        raise ValueError(f"kind: expected one of {sorted(ROI_KINDS)}, got {name!r}") from None


@runtime_checkable
class Backend(Protocol):
    """The contract every backend implements (see the module docstring for the rules its arguments obey)."""

    #: one of :data:`BACKEND_NAMES`
    name: str
    #: the dtypes its deformable-convolution methods take, and its RoI methods
    conv_dtypes: tuple[torch.dtype, ...]
    roi_dtypes: tuple[torch.dtype, ...]

    # -- deformable convolution: the three primitives of DCNv1 App. A and the one-call backward
    def deform_im2col(self, input: Tensor, offset: Tensor, mask: Optional[Tensor], kernel_size: Pair,
                      stride: Pair, padding: Pair, dilation: Pair) -> Tensor:
        """``columns [N, C*kh*kw, Ho*Wo]``, row ``c*K + k`` = ``mask * x_c(p0 + p_k + Δp_k)`` (v1 Eq. 2-3)."""
        ...

    def deform_col2im(self, grad_columns: Tensor, offset: Tensor, mask: Optional[Tensor], input_shape: Sequence[int],
                      kernel_size: Pair, stride: Pair, padding: Pair, dilation: Pair) -> Tensor:
        """``grad_input [N, C, H, W]``: the columns' gradient scattered through the bilinear weights."""
        ...

    def deform_col2im_coord(self, grad_columns: Tensor, input: Tensor, offset: Tensor, mask: Optional[Tensor],
                            kernel_size: Pair, stride: Pair, padding: Pair, dilation: Pair
                            ) -> tuple[Tensor, Optional[Tensor]]:
        """``(grad_offset [N, 2*G*K, Ho, Wo], grad_mask [N, G*K, Ho, Wo] or None)`` (v1 Eq. 7, v2 Eq. 1)."""
        ...

    def deform_conv_backward_columns(self, grad_columns: Tensor, input: Tensor, offset: Tensor,
                                     mask: Optional[Tensor], kernel_size: Pair, stride: Pair, padding: Pair,
                                     dilation: Pair) -> tuple[Tensor, Tensor, Optional[Tensor]]:
        """``(grad_input, grad_offset, grad_mask or None)`` in one call (fused where the backend can)."""
        ...

    # -- deformable convolution, whole: columns + GEMM (or the backend's own fused form)
    def conv_forward(self, input: Tensor, offset: Tensor, weight: Tensor, mask: Optional[Tensor], stride: Pair,
                     padding: Pair, dilation: Pair) -> Tensor:
        """``[N, O, Ho, Wo]``: DCNv1 Eq. (2) / DCNv2 Eq. (1) without the bias, contiguous."""
        ...

    def conv_backward(self, grad_output: Tensor, input: Tensor, offset: Tensor, weight: Tensor,
                      mask: Optional[Tensor], stride: Pair, padding: Pair, dilation: Pair, need_input: bool,
                      need_offset: bool, need_weight: bool, need_mask: bool
                      ) -> tuple[Optional[Tensor], Optional[Tensor], Optional[Tensor], Optional[Tensor]]:
        """``(grad_input, grad_offset, grad_weight, grad_mask)``, None where not asked for (or no mask)."""
        ...

    # -- the aligned RoI family
    def roi_forward(self, kind: RoIKind, input: Tensor, rois: Tensor, offset: Optional[Tensor],
                    mask: Optional[Tensor], output_size: Pair, spatial_scale: float, sampling_ratio: int,
                    gamma: float, aligned: bool = True) -> Tensor:
        """``[K, C_out, ph, pw]`` (C_out = C, or C/(ph*pw) when position-sensitive), contiguous."""
        ...

    def roi_backward(self, kind: RoIKind, grad_output: Tensor, input: Tensor, rois: Tensor,
                     offset: Optional[Tensor], mask: Optional[Tensor], output_size: Pair, spatial_scale: float,
                     sampling_ratio: int, gamma: float, aligned: bool = True
                     ) -> tuple[Tensor, Optional[Tensor], Optional[Tensor]]:
        """``(grad_input, grad_offset or None, grad_mask or None)`` (None where offset/mask was None)."""
        ...


def get(name: str, device: Optional[torch.device] = None) -> Backend:
    """The backend called ``name`` (one of :data:`BACKEND_NAMES`); for ``cuda``, the one of ``device``.

    Raises ValueError for an unknown name, RuntimeError when the backend cannot run here (Numba or CuPy
    missing, the kernels do not build), saying why.
    """
    if name == "tensor":
        from dcn_lessons.ops._tensor_backend import TENSOR

        return TENSOR
    if name == "cpu-numba":
        from dcn_lessons.ops import _cpu_numba

        if not _cpu_numba.AVAILABLE:
            raise RuntimeError("backend cpu-numba: Numba does not import here (pip install numba)")
        return _cpu_numba.BACKEND
    if name == "cuda-emulated":
        from dcn_lessons import cuda

        return cuda.emulated_kernels()
    if name == "cuda":
        from dcn_lessons import cuda

        dev = torch.device("cuda") if device is None else torch.device(device)
        found = cuda.kernels_for(torch.empty(0, device=dev), forced=True)
        assert found is not None
        return found
    raise ValueError(f"backend: expected one of {', '.join(BACKEND_NAMES)}, got {name!r}")


def select(input: Tensor, family: Family = "conv", aligned: bool = True) -> Backend:
    """The backend that runs a call of ``family`` ("conv": deformable convolution, "roi": the aligned RoI
    family) on ``input``'s device and dtype now: the rules of the module docstring. ``aligned=False`` (legacy
    RoI Align) runs on ``tensor`` only."""
    forced = backend_override()
    dtype, dev = input.dtype, input.device.type

    def covers(b: Backend) -> bool:
        return dtype in (b.conv_dtypes if family == "conv" else b.roi_dtypes) and (family == "conv" or aligned)

    if forced == "tensor" or dev not in ("cpu", "cuda"):
        return get("tensor")
    if dev == "cuda":
        if forced in (None, "cuda"):
            from dcn_lessons import cuda

            kern = cuda.kernels_for(input, forced=forced == "cuda")
            if kern is not None and covers(kern):
                return kern
        return get("tensor")
    if forced == "cuda-emulated":
        kern = get("cuda-emulated")
        return kern if covers(kern) else get("tensor")
    if family == "conv" and forced in (None, "cpu-numba"):
        from dcn_lessons.ops import _cpu_numba

        if forced == "cpu-numba" or _cpu_numba.AVAILABLE:
            numba_backend = get("cpu-numba")
            if covers(numba_backend):
                return numba_backend
    return get("tensor")


def active_backend(input: Tensor, family: Family = "conv") -> str:
    """Name of the backend a ``family`` operator ("conv" or "roi") would use for ``input`` now."""
    return select(input, family).name
