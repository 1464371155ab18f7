"""Deformable convolution, the public face: the functional operator, its three primitives, and the
``autograd.Function`` form lesson 05 teaches.

The operator is the one of DCNv1 (Dai et al., arXiv 1703.06211) Eq. (2)

    y(p0) = sum_k w(p_k) * x(p0 + p_k + Δp_k)

with x(p) sampled by bilinear interpolation, Eq. (3)-(4), and its modulated form of DCNv2
(Zhu et al., arXiv 1811.11168) Eq. (1)

    y(p) = sum_k w_k * x(p + p_k + Δp_k) * Δm_k.

It is computed in the im2col form of the authors' code (and torchvision's and mmcv's), with the gradients of
DCNv1 Appendix A (see :mod:`dcn_lessons.ops._columns` and :mod:`dcn_lessons.ops._primitives`). Where it runs:

* :func:`deform_conv2d` checks its arguments once and calls the operator registered with ``torch.library``,
  ``torch.ops.dcn_lessons.deform_conv2d`` (:mod:`dcn_lessons.ops._library`): a real PyTorch operator with a fake
  implementation and an autograd formula, so ``torch.compile`` and ``torch.export`` see it as one node;
* inside, the backend chosen per call (:func:`dcn_lessons.backends.select`: ``tensor``, ``cpu-numba``, ``cuda``,
  ``cuda-emulated``) computes forward and backward;
* :class:`DeformConv2dFunction` is the same operator written as a ``torch.autograd.Function``: the form lesson 05
  derives, kept as a thin wrapper over the same registered forward and backward.

Conventions: the README's "Conventions shared by every tier" (offset channel ``g*2*K + 2k`` is Δy and
``g*2*K + 2k + 1`` is Δx of kernel point k; Eq. (3) literally at the border; the position gradient is 0 unless
-1 < y < H and -1 < x < W, and the forward difference at integer coordinates).
"""
from __future__ import annotations

from typing import Any, Optional, Sequence, Union

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from dcn_lessons import backends
from dcn_lessons._validate.conv import SamplingGeometry, check_deform_conv2d_args, check_sampling_args
from dcn_lessons._validate.tensors import check_tensor
from dcn_lessons.ops import _library  # noqa: F401  (registers torch.ops.dcn_lessons.*)
from dcn_lessons.ops._columns import COLUMNS_BUDGET_BYTES

__all__ = [
    "deform_conv2d",
    "deform_im2col",
    "deform_col2im",
    "deform_col2im_coord",
    "DeformConv2dFunction",
    "cpu_fast_path_available",
    "active_backend",
    "COLUMNS_BUDGET_BYTES",
]

IntPair = Union[int, Sequence[int]]
Pair = tuple[int, int]
BackendArg = Union[None, str, "backends.Backend"]


def _check_conv_tensors(ref_name: str, ref: Any, **named: Optional[Tensor]) -> None:
    """Type, dtype and device of every tensor argument, against ``ref`` (None allowed for ``bias`` and ``mask``)."""
    check_tensor(ref_name, ref)
    for name, t in named.items():
        if t is not None or name not in ("bias", "mask"):
            check_tensor(name, t, like=ref, like_name=ref_name)


def _backend(arg: BackendArg, input: Tensor) -> "backends.Backend":
    """``backend=`` of the public primitives: None (chosen per call), a name, or a backend object."""
    if arg is None:
        return backends.select(input, "conv")
    if isinstance(arg, str):
        return backends.get(arg, input.device)
    if not isinstance(arg, backends.Backend):
        raise TypeError(f"backend: expected None, a backend name ({', '.join(backends.BACKEND_NAMES)}) or a "
                        f"backend object, got {type(arg).__name__}")
    return arg


def _check_backend_takes(b: "backends.Backend", input: Tensor) -> None:
    if input.dtype not in b.conv_dtypes:
        raise TypeError(f"input: backend {b.name} takes {', '.join(str(d) for d in b.conv_dtypes)}, got {input.dtype}")
    wanted = "cuda" if b.name == "cuda" else ("cpu" if b.name in ("cpu-numba", "cuda-emulated") else None)
    if wanted is not None and input.device.type != wanted:
        raise ValueError(f"input: backend {b.name} runs on {wanted} tensors, got device {input.device}")


def _geometry(input_shape: Sequence[int], offset: Tensor, mask: Optional[Tensor], kernel_size: IntPair,
              stride: IntPair, padding: IntPair, dilation: IntPair) -> tuple[SamplingGeometry, tuple[Pair, ...]]:
    geo = check_sampling_args(input_shape, offset, mask, kernel_size, stride, padding, dilation)
    return geo, ((geo.kh, geo.kw), geo.stride, geo.padding, geo.dilation)


# ----------------------------------------------------------------------------------------------
# The three primitives (DCNv1 App. A), checked, on the backend of your choice
# ----------------------------------------------------------------------------------------------
def deform_im2col(input: Tensor, offset: Tensor, mask: Optional[Tensor], kernel_size: IntPair, stride: IntPair = 1,
                  padding: IntPair = 0, dilation: IntPair = 1, backend: BackendArg = None) -> Tensor:
    """Deformable im2col (DCNv1 Eq. 2-3, App. A; DCNv2 Eq. 1 with ``mask``): the columns matrix.

    Args:
        input: ``[N, C, H, W]``.
        offset: ``[N, 2*G*kh*kw, Ho, Wo]`` (G offset groups inferred from the channel count).
        mask: ``[N, G*kh*kw, Ho, Wo]`` or None (DCNv1).
        kernel_size, stride, padding, dilation: ints or (h, w) pairs.
        backend: None (chosen per call, as :func:`deform_conv2d` does), a name of
            :data:`dcn_lessons.backends.BACKEND_NAMES` (e.g. "cuda-emulated"), or a backend object.

    Returns:
        columns ``[N, C*kh*kw, Ho*Wo]``; row ``c*kh*kw + k`` holds ``mask * x_c(p0 + p_k + Δp_k)``
        for every output pixel, so ``output = weight.view(groups, O/groups, -1) @ columns`` per group.

    Boundary: samples follow Eq. (3) literally (neighbours outside the map read 0; a sample with
    y <= -1 or y >= H, likewise x, is 0). Not differentiable by autograd (it is a building block of the
    hand-written backward).
    """
    _check_conv_tensors("input", input, offset=offset, mask=mask)
    _, conf = _geometry(input.shape, offset, mask, kernel_size, stride, padding, dilation)
    b = _backend(backend, input)
    _check_backend_takes(b, input)
    return b.deform_im2col(input.detach(), offset.detach(), None if mask is None else mask.detach(), *conf)


def deform_col2im(grad_columns: Tensor, offset: Tensor, mask: Optional[Tensor], input_shape: Sequence[int],
                  kernel_size: IntPair, stride: IntPair = 1, padding: IntPair = 0, dilation: IntPair = 1,
                  backend: BackendArg = None) -> Tensor:
    """Input gradient of deformable im2col (transpose of DCNv1 Eq. 3 in x): scatter of the columns.

    Args:
        grad_columns: ``[N, C*kh*kw, Ho*Wo]``, gradient of the loss with respect to the columns.
        offset, mask: as in :func:`deform_im2col`; input_shape: ``(N, C, H, W)``; backend: as there.

    Returns:
        grad_input ``[N, C, H, W]``: ``grad_x(q) = sum over samples p of G(q, p) * mask * grad_col``.

    Boundary: only the integral neighbours inside the map receive gradient; samples that are
    outside (not -1 < y < H and -1 < x < W) send nothing.
    """
    _check_conv_tensors("grad_columns", grad_columns, offset=offset, mask=mask)
    geo, conf = _geometry(tuple(input_shape), offset, mask, kernel_size, stride, padding, dilation)
    _check_columns("grad_columns", grad_columns, geo)
    b = _backend(backend, grad_columns)
    _check_backend_takes(b, grad_columns)
    return b.deform_col2im(grad_columns.detach(), offset.detach(), None if mask is None else mask.detach(),
                           (geo.N, geo.C, geo.H, geo.W), *conf)


def deform_col2im_coord(grad_columns: Tensor, input: Tensor, offset: Tensor, mask: Optional[Tensor],
                        kernel_size: IntPair, stride: IntPair = 1, padding: IntPair = 0, dilation: IntPair = 1,
                        backend: BackendArg = None) -> tuple[Tensor, Optional[Tensor]]:
    """Offset and mask gradients of deformable im2col (derivative of DCNv1 Eq. 4 in p; DCNv2 Eq. 1).

    With S_q = sum over the channels of an offset group of ``grad_col * x(q)`` for each corner q of a
    sample (S_00, S_01, S_10, S_11), the course's position rule gives

        d/dΔy = mask * (hx*(S_10 - S_00) + lx*(S_11 - S_01))
        d/dΔx = mask * (hy*(S_01 - S_00) + ly*(S_11 - S_10))
        d/dm  = hy*hx*S_00 + hy*lx*S_01 + ly*hx*S_10 + ly*lx*S_11   (the sampled value times grad)

    Args:
        grad_columns: ``[N, C*kh*kw, Ho*Wo]``; input ``[N, C, H, W]``; offset, mask, backend as in
            :func:`deform_im2col`.

    Returns:
        ``(grad_offset [N, 2*G*kh*kw, Ho, Wo], grad_mask [N, G*kh*kw, Ho, Wo] or None)``.

    Boundary: a sample is inside iff -1 < y < H and -1 < x < W; outside both gradients are 0;
    inside, the corners are floor(p), floor(p)+1 with missing corners read as 0 and the floor held
    fixed (forward difference at integer coordinates).
    """
    _check_conv_tensors("input", input, grad_columns=grad_columns, offset=offset, mask=mask)
    geo, conf = _geometry(input.shape, offset, mask, kernel_size, stride, padding, dilation)
    _check_columns("grad_columns", grad_columns, geo)
    b = _backend(backend, input)
    _check_backend_takes(b, input)
    return b.deform_col2im_coord(grad_columns.detach(), input.detach(), offset.detach(),
                                 None if mask is None else mask.detach(), *conf)


def _check_columns(name: str, columns: Tensor, geo: SamplingGeometry) -> None:
    exp = (geo.N, geo.C * geo.K, geo.Ho * geo.Wo)
    if tuple(columns.shape) != exp:
        raise ValueError(f"{name}: expected shape [N, C*kh*kw, Ho*Wo] = {list(exp)}, got {list(columns.shape)}")


# ----------------------------------------------------------------------------------------------
# Which backend
# ----------------------------------------------------------------------------------------------
def cpu_fast_path_available() -> bool:
    """True when the compiled CPU backend (``cpu-numba``) imports; it is chosen for float32/float64 CPU tensors
    unless ``DCN_LESSONS_BACKEND`` says otherwise."""
    from dcn_lessons.ops import _cpu_numba

    return _cpu_numba.AVAILABLE


def active_backend(input: Tensor) -> str:
    """Name of the backend :func:`deform_conv2d` would use for ``input`` now ("tensor", "cpu-numba", "cuda",
    "cuda-emulated"; :func:`dcn_lessons.backends.active_backend` also answers for the RoI family)."""
    return backends.active_backend(input, "conv")


# ----------------------------------------------------------------------------------------------
# The autograd.Function form (lesson 05)
# ----------------------------------------------------------------------------------------------
class DeformConv2dFunction(torch.autograd.Function):
    """Deformable convolution as a ``torch.autograd.Function`` with a hand-written backward (DCNv1 App. A).

    The form lesson 05 derives: ``forward`` saves what the backward pass needs and computes the output;
    ``backward`` returns one gradient per input. Both call the registered operators
    (``torch.ops.dcn_lessons.deform_conv2d`` and ``deform_conv2d_backward``), so this Function and
    :func:`deform_conv2d` compute the same numbers on the same backends; :func:`deform_conv2d` uses the
    registered operator directly, which ``torch.compile`` and ``torch.export`` understand. Arguments are not
    checked here (call :func:`deform_conv2d` for that).
    """

    @staticmethod
    def forward(ctx: Any, input: Tensor, offset: Tensor, weight: Tensor, bias: Optional[Tensor],  # type: ignore[override]
                mask: Optional[Tensor], stride: Pair, padding: Pair, dilation: Pair) -> Tensor:
        ctx.save_for_backward(input, offset, weight, mask)
        ctx.has_bias = bias is not None
        ctx.conf = (stride, padding, dilation)
        return torch.ops.dcn_lessons.deform_conv2d(input, offset, weight, bias, mask, stride, padding, dilation)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Optional[Tensor], ...]:  # type: ignore[override]
        input, offset, weight, mask = ctx.saved_tensors
        need = ctx.needs_input_grad
        grads = torch.ops.dcn_lessons.deform_conv2d_backward(
            grad_output, input, offset, weight, mask, *ctx.conf, [need[0], need[1], need[2], need[4]])
        gi, go, gw, gm = (g if n else None for g, n in zip(grads, (need[0], need[1], need[2], need[4])))
        gb = grad_output.sum(dim=(0, 2, 3)) if (need[3] and ctx.has_bias) else None
        return gi, go, gw, gb, gm, None, None, None


# ----------------------------------------------------------------------------------------------
# The public functional form
# ----------------------------------------------------------------------------------------------
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
    Same signature, layouts and semantics as ``torchvision.ops.deform_conv2d`` (except the position gradient
    on the line y = -1 or x = -1: 0 here, as in mmcv; see the README's conventions).

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
    _check_conv_tensors("input", input, offset=offset, weight=weight, bias=bias, mask=mask)
    a = check_deform_conv2d_args(input, offset, weight, bias, mask, stride, padding, dilation)
    return torch.ops.dcn_lessons.deform_conv2d(input, offset, weight, bias, mask, list(a.stride), list(a.padding),
                                               list(a.dilation))

