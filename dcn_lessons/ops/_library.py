"""The operators registered with ``torch.library``: ``torch.ops.dcn_lessons.*``.

Each public operator of :mod:`dcn_lessons.ops` is one custom operator (``torch.library.custom_op``) with

* a real implementation that asks :func:`dcn_lessons.backends.select` for the backend of this call (``tensor``,
  ``cpu-numba``, ``cuda``, ``cuda-emulated``) and runs it;
* a *fake* implementation (``register_fake``) that only computes the output's shape, dtype and device, so that
  ``torch.compile``, ``torch.export`` and FLOP counters trace it without running it;
* an autograd formula (``register_autograd``) that calls the matching backward operator, itself registered with
  a fake implementation, so the backward graph traces too. The backward operators have no autograd formula of
  their own: the operators are differentiable once (a double backward raises), as torchvision's.

=======================================  =================================================================
``deform_conv2d``                        DCNv1 Eq. (2) / DCNv2 Eq. (1) (``deform_conv2d_backward``)
``roi_align``                            DCNv1 Eq. (5) sampled; ``aligned`` as torchvision (``roi_backward``)
``deform_roi_pool``                      DCNv1 Eq. (6); with a mask DCNv2 Eq. (2) (``roi_backward``)
``ps_roi_align``, ``deform_ps_roi_pool``  DCNv1 §2.2, Fig. 4 (``roi_backward``)
``roi_pool``                             quantised max/avg RoI pooling, returns (output, argmax) (``roi_pool_backward``)
=======================================  =================================================================

Arguments reach these operators checked (the public functions check them once); the operators check nothing
but this: for CUDA tensors, the RoI operators assert on the device, without a host sync, that every batch index
is in range (an out-of-range one would make a kernel read out of bounds).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

from dcn_lessons import backends
from dcn_lessons.backends import ROI_KINDS

__all__ = ["NAMESPACE"]

NAMESPACE = "dcn_lessons"
_EMPTY = (0,)


def _or_empty(t: Optional[Tensor], like: Tensor) -> Tensor:
    """A result as the fake implementations promise it: contiguous; a gradient that was not asked for travels as an
    empty tensor (a custom operator returns tensors only)."""
    return like.new_empty(_EMPTY) if t is None else t.contiguous()


def _differentiable_once(op: "torch._library.custom_ops.CustomOpDef", forward_name: str) -> None:
    """Give a backward operator an autograd formula that says, when reached, why there is no double backward."""

    def refuse(ctx, *grads):  # type: ignore[no-untyped-def]
        raise RuntimeError(f"dcn_lessons.{forward_name} is differentiable once (as torchvision's): its backward "
                           "has no derivative, so a double backward through it (create_graph=True) is not supported")

    op.register_autograd(refuse, setup_context=lambda ctx, inputs, output: None)


# ----------------------------------------------------------------------------------------------
# deformable convolution
# ----------------------------------------------------------------------------------------------
@torch.library.custom_op(f"{NAMESPACE}::deform_conv2d", mutates_args=())
def deform_conv2d(input: Tensor, offset: Tensor, weight: Tensor, bias: Optional[Tensor], mask: Optional[Tensor],
                  stride: Sequence[int], padding: Sequence[int], dilation: Sequence[int]) -> Tensor:
    """``[N, O, Ho, Wo]``: DCNv1 Eq. (2) / DCNv2 Eq. (1) plus the bias, on the backend chosen for ``input``."""
    b = backends.select(input, "conv")
    out = b.conv_forward(input, offset, weight, mask, tuple(stride), tuple(padding), tuple(dilation))
    if bias is not None:
        out += bias.view(1, -1, 1, 1)
    return out.contiguous()


@deform_conv2d.register_fake
def _(input, offset, weight, bias, mask, stride, padding, dilation):  # type: ignore[no-untyped-def]
    return input.new_empty((input.shape[0], weight.shape[0], offset.shape[2], offset.shape[3]))


@torch.library.custom_op(f"{NAMESPACE}::deform_conv2d_backward", mutates_args=())
def deform_conv2d_backward(grad_output: Tensor, input: Tensor, offset: Tensor, weight: Tensor,
                           mask: Optional[Tensor], stride: Sequence[int], padding: Sequence[int],
                           dilation: Sequence[int], needs: Sequence[bool]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(grad_input, grad_offset, grad_weight, grad_mask)`` for ``needs`` = which of the four are wanted; one
    not wanted (or ``grad_mask`` without a mask) is an empty tensor. Runs where the forward ran."""
    b = backends.select(input, "conv")
    gi, go, gw, gm = b.conv_backward(grad_output.contiguous(), input, offset, weight, mask, tuple(stride),
                                     tuple(padding), tuple(dilation), *(bool(n) for n in needs))
    return _or_empty(gi, input), _or_empty(go, offset), _or_empty(gw, weight), _or_empty(gm, offset)


@deform_conv2d_backward.register_fake
def _(grad_output, input, offset, weight, mask, stride, padding, dilation, needs):  # type: ignore[no-untyped-def]
    def like(t: Optional[Tensor], wanted: bool, dtype_of: Tensor) -> Tensor:
        return dtype_of.new_empty(t.shape if (wanted and t is not None) else _EMPTY)

    return (like(input, needs[0], input), like(offset, needs[1], offset), like(weight, needs[2], weight),
            like(mask, needs[3], offset))


def _conv_setup(ctx, inputs, output):  # type: ignore[no-untyped-def]
    input, offset, weight, bias, mask, stride, padding, dilation = inputs
    ctx.save_for_backward(input, offset, weight, mask)
    ctx.has_bias = bias is not None
    ctx.conf = (stride, padding, dilation)


def _conv_backward(ctx, grad_output):  # type: ignore[no-untyped-def]
    input, offset, weight, mask = ctx.saved_tensors
    need = ctx.needs_input_grad
    wanted = [need[0], need[1], need[2], need[4] and mask is not None]
    grads = deform_conv2d_backward(grad_output, input, offset, weight, mask, *ctx.conf, wanted)
    gi, go, gw, gm = (g if w else None for g, w in zip(grads, wanted))
    gb = grad_output.sum(dim=(0, 2, 3)) if (need[3] and ctx.has_bias) else None
    return gi, go, gw, gb, gm, None, None, None


deform_conv2d.register_autograd(_conv_backward, setup_context=_conv_setup)
_differentiable_once(deform_conv2d_backward, "deform_conv2d")


# ----------------------------------------------------------------------------------------------
# the aligned RoI family: four forward operators, one backward
# ----------------------------------------------------------------------------------------------
def _assert_batch_indices(input: Tensor, rois: Tensor) -> None:
    """For CUDA tensors: a device-side assertion (no host sync) that every batch index is in [0, N)."""
    if rois.is_cuda and rois.shape[0] > 0:
        b = rois[:, 0]
        torch._assert_async(((b >= 0) & (b < input.shape[0]) & (b == b.floor())).all(),
                            "dcn_lessons: an RoI's batch index is not an integer in [0, N)")


def _roi_forward(kind: str, input: Tensor, rois: Tensor, offset: Optional[Tensor], mask: Optional[Tensor],
                 output_size: Sequence[int], spatial_scale: float, sampling_ratio: int, gamma: float,
                 aligned: bool) -> Tensor:
    _assert_batch_indices(input, rois)
    b = backends.select(input, "roi", aligned)
    return b.roi_forward(ROI_KINDS[kind], input, rois, offset, mask, tuple(output_size), spatial_scale,
                         sampling_ratio, gamma, aligned).contiguous()


def _roi_fake(kind: str, input: Tensor, rois: Tensor, output_size: Sequence[int]) -> Tensor:
    ph, pw = output_size
    c = input.shape[1] // (ph * pw) if ROI_KINDS[kind].position_sensitive else input.shape[1]
    return input.new_empty((rois.shape[0], c, ph, pw))


@torch.library.custom_op(f"{NAMESPACE}::roi_backward", mutates_args=())
def roi_backward(kind: str, grad_output: Tensor, input: Tensor, rois: Tensor, offset: Optional[Tensor],
                 mask: Optional[Tensor], output_size: Sequence[int], spatial_scale: float, sampling_ratio: int,
                 gamma: float, aligned: bool) -> tuple[Tensor, Tensor, Tensor]:
    """``(grad_input, grad_offset, grad_mask)`` of the RoI operator ``kind``; the last two are empty where offset
    or mask was None. Gradients flow to features, offsets and masks, never to the boxes."""
    b = backends.select(input, "roi", aligned)
    gi, go, gm = b.roi_backward(ROI_KINDS[kind], grad_output.contiguous(), input, rois, offset, mask,
                                tuple(output_size), spatial_scale, sampling_ratio, gamma, aligned)
    return _or_empty(gi, input), _or_empty(go, input), _or_empty(gm, input)


@roi_backward.register_fake
def _(kind, grad_output, input, rois, offset, mask, output_size, spatial_scale, sampling_ratio, gamma, aligned):  # type: ignore[no-untyped-def]
    deformable = ROI_KINDS[kind].deformable
    return (input.new_empty(input.shape),
            input.new_empty(offset.shape if (deformable and offset is not None) else _EMPTY),
            input.new_empty(mask.shape if (deformable and mask is not None) else _EMPTY))


def _roi_setup(kind: str, ctx, input: Tensor, rois: Tensor, offset: Optional[Tensor], mask: Optional[Tensor],  # type: ignore[no-untyped-def]
               output_size: Sequence[int], spatial_scale: float, sampling_ratio: int, gamma: float,
               aligned: bool) -> None:
    ctx.save_for_backward(input, rois, offset, mask)
    ctx.conf = (kind, output_size, spatial_scale, sampling_ratio, gamma, aligned)


def _roi_grads(ctx, grad_output: Tensor) -> tuple[Optional[Tensor], Optional[Tensor], Optional[Tensor]]:  # type: ignore[no-untyped-def]
    input, rois, offset, mask = ctx.saved_tensors
    kind, output_size, spatial_scale, sampling_ratio, gamma, aligned = ctx.conf
    gi, go, gm = roi_backward(kind, grad_output, input, rois, offset, mask, output_size, spatial_scale,
                              sampling_ratio, gamma, aligned)
    return gi, (go if offset is not None else None), (gm if mask is not None else None)


@torch.library.custom_op(f"{NAMESPACE}::roi_align", mutates_args=())
def roi_align(input: Tensor, rois: Tensor, output_size: Sequence[int], spatial_scale: float, sampling_ratio: int,
              aligned: bool) -> Tensor:
    """``[K, C, ph, pw]``: RoI Align (DCNv1 Eq. 5, each bin the mean of its bilinear samples)."""
    return _roi_forward("roi_align", input, rois, None, None, output_size, spatial_scale, sampling_ratio, 0.0,
                        aligned)


@roi_align.register_fake
def _(input, rois, output_size, spatial_scale, sampling_ratio, aligned):  # type: ignore[no-untyped-def]
    return _roi_fake("roi_align", input, rois, output_size)


def _roi_align_setup(ctx, inputs, output):  # type: ignore[no-untyped-def]
    input, rois, output_size, spatial_scale, sampling_ratio, aligned = inputs
    _roi_setup("roi_align", ctx, input, rois, None, None, output_size, spatial_scale, sampling_ratio, 0.0, aligned)


def _roi_align_backward(ctx, grad_output):  # type: ignore[no-untyped-def]
    gi, _, _ = _roi_grads(ctx, grad_output)
    return gi, None, None, None, None, None


roi_align.register_autograd(_roi_align_backward, setup_context=_roi_align_setup)
_differentiable_once(roi_backward, "the RoI family")


@torch.library.custom_op(f"{NAMESPACE}::ps_roi_align", mutates_args=())
def ps_roi_align(input: Tensor, rois: Tensor, output_size: Sequence[int], spatial_scale: float,
                 sampling_ratio: int) -> Tensor:
    """``[K, C/(ph*pw), ph, pw]``: position-sensitive RoI Align (DCNv1 §2.2, R-FCN)."""
    return _roi_forward("ps_roi_align", input, rois, None, None, output_size, spatial_scale, sampling_ratio, 0.0,
                        True)


@ps_roi_align.register_fake
def _(input, rois, output_size, spatial_scale, sampling_ratio):  # type: ignore[no-untyped-def]
    return _roi_fake("ps_roi_align", input, rois, output_size)


def _ps_roi_align_setup(ctx, inputs, output):  # type: ignore[no-untyped-def]
    input, rois, output_size, spatial_scale, sampling_ratio = inputs
    _roi_setup("ps_roi_align", ctx, input, rois, None, None, output_size, spatial_scale, sampling_ratio, 0.0, True)


def _ps_roi_align_backward(ctx, grad_output):  # type: ignore[no-untyped-def]
    gi, _, _ = _roi_grads(ctx, grad_output)
    return gi, None, None, None, None


ps_roi_align.register_autograd(_ps_roi_align_backward, setup_context=_ps_roi_align_setup)


@torch.library.custom_op(f"{NAMESPACE}::deform_roi_pool", mutates_args=())
def deform_roi_pool(input: Tensor, rois: Tensor, offset: Optional[Tensor], mask: Optional[Tensor],
                    output_size: Sequence[int], spatial_scale: float, sampling_ratio: int, gamma: float) -> Tensor:
    """``[K, C, ph, pw]``: deformable RoI pooling (DCNv1 Eq. 6), modulated when ``mask`` is given (DCNv2 Eq. 2)."""
    return _roi_forward("deform_roi_pool", input, rois, offset, mask, output_size, spatial_scale, sampling_ratio,
                        gamma, True)


@deform_roi_pool.register_fake
def _(input, rois, offset, mask, output_size, spatial_scale, sampling_ratio, gamma):  # type: ignore[no-untyped-def]
    return _roi_fake("deform_roi_pool", input, rois, output_size)


def _deform_roi_pool_setup(ctx, inputs, output):  # type: ignore[no-untyped-def]
    input, rois, offset, mask, output_size, spatial_scale, sampling_ratio, gamma = inputs
    _roi_setup("deform_roi_pool", ctx, input, rois, offset, mask, output_size, spatial_scale, sampling_ratio,
               gamma, True)


def _deform_roi_pool_backward(ctx, grad_output):  # type: ignore[no-untyped-def]
    gi, go, gm = _roi_grads(ctx, grad_output)
    return gi, None, go, gm, None, None, None, None


deform_roi_pool.register_autograd(_deform_roi_pool_backward, setup_context=_deform_roi_pool_setup)


@torch.library.custom_op(f"{NAMESPACE}::deform_ps_roi_pool", mutates_args=())
def deform_ps_roi_pool(input: Tensor, rois: Tensor, offset: Optional[Tensor], output_size: Sequence[int],
                       spatial_scale: float, sampling_ratio: int, gamma: float) -> Tensor:
    """``[K, C/(ph*pw), ph, pw]``: deformable position-sensitive RoI pooling (DCNv1 §2.2, Fig. 4)."""
    return _roi_forward("deform_ps_roi_pool", input, rois, offset, None, output_size, spatial_scale,
                        sampling_ratio, gamma, True)


@deform_ps_roi_pool.register_fake
def _(input, rois, offset, output_size, spatial_scale, sampling_ratio, gamma):  # type: ignore[no-untyped-def]
    return _roi_fake("deform_ps_roi_pool", input, rois, output_size)


def _deform_ps_roi_pool_setup(ctx, inputs, output):  # type: ignore[no-untyped-def]
    input, rois, offset, output_size, spatial_scale, sampling_ratio, gamma = inputs
    _roi_setup("deform_ps_roi_pool", ctx, input, rois, offset, None, output_size, spatial_scale, sampling_ratio,
               gamma, True)


def _deform_ps_roi_pool_backward(ctx, grad_output):  # type: ignore[no-untyped-def]
    gi, go, _ = _roi_grads(ctx, grad_output)
    return gi, None, go, None, None, None, None


deform_ps_roi_pool.register_autograd(_deform_ps_roi_pool_backward, setup_context=_deform_ps_roi_pool_setup)


# ----------------------------------------------------------------------------------------------
# quantised RoI pooling (tensor code on every device)
# ----------------------------------------------------------------------------------------------
@torch.library.custom_op(f"{NAMESPACE}::roi_pool", mutates_args=())
def roi_pool(input: Tensor, rois: Tensor, output_size: Sequence[int], spatial_scale: float,
             mode: str) -> tuple[Tensor, Tensor]:
    """``(output [K, C, ph, pw], argmax [K, ph, pw, C])``: plain RoI pooling on the integer grid (Fast R-CNN;
    ``mode`` "max" or "avg" = DCNv1 Eq. 5). argmax holds the input row of each maximum (-1: empty bin, or avg)."""
    from dcn_lessons.ops.roi_pool import roi_pool_forward_tensor

    _assert_batch_indices(input, rois)
    return roi_pool_forward_tensor(input, rois, tuple(output_size), spatial_scale, mode)


@roi_pool.register_fake
def _(input, rois, output_size, spatial_scale, mode):  # type: ignore[no-untyped-def]
    ph, pw = output_size
    k, c = rois.shape[0], input.shape[1]
    return input.new_empty((k, c, ph, pw)), input.new_empty((k, ph, pw, c), dtype=torch.long)


@torch.library.custom_op(f"{NAMESPACE}::roi_pool_backward", mutates_args=())
def roi_pool_backward(grad_output: Tensor, rois: Tensor, argmax: Tensor, input_shape: Sequence[int],
                      output_size: Sequence[int], spatial_scale: float, mode: str) -> Tensor:
    """``grad_input [N, C, H, W]`` of :func:`roi_pool` (max: to the first maximum of each bin; avg: spread evenly)."""
    from dcn_lessons.ops.roi_pool import roi_pool_backward_tensor

    return roi_pool_backward_tensor(grad_output.contiguous(), rois, argmax, tuple(input_shape), tuple(output_size),
                                    spatial_scale, mode)


@roi_pool_backward.register_fake
def _(grad_output, rois, argmax, input_shape, output_size, spatial_scale, mode):  # type: ignore[no-untyped-def]
    return grad_output.new_empty(tuple(input_shape))


def _roi_pool_setup(ctx, inputs, output):  # type: ignore[no-untyped-def]
    input, rois, output_size, spatial_scale, mode = inputs
    ctx.save_for_backward(rois, output[1])
    ctx.conf = (list(input.shape), output_size, spatial_scale, mode)
    ctx.mark_non_differentiable(output[1])


def _roi_pool_grad(ctx, grad_output, grad_argmax):  # type: ignore[no-untyped-def]
    rois, argmax = ctx.saved_tensors
    shape, output_size, spatial_scale, mode = ctx.conf
    return roi_pool_backward(grad_output, rois, argmax, shape, output_size, spatial_scale, mode), None, None, None, None


roi_pool.register_autograd(_roi_pool_grad, setup_context=_roi_pool_setup)
_differentiable_once(roi_pool_backward, "roi_pool")
