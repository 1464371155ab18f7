"""Bilinear sampling as a PyTorch operator with a hand-written backward (DCNv1 Eq. 3-4).

The PyTorch counterpart of :func:`dcn_lessons.reference.bilinear_sample`: same name, arguments,
shapes and rule, so a learner can move from the NumPy tier to this one line by line. It reuses the
corner rule of :class:`dcn_lessons.ops.deform_conv.Corners` and the position gradient of its
``position_grads`` (each written once, there).
"""
from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from dcn_lessons._validate.tensors import check_tensor
from dcn_lessons.ops._primitives import Corners, position_grads

__all__ = ["bilinear_sample"]


class _BilinearSampleFunction(torch.autograd.Function):
    """x(p) = sum over the four corners q of G(q, p) x(q); backward by the course's position rule."""

    @staticmethod
    def forward(ctx: Any, input: Tensor, py: Tensor, px: Tensor) -> Tensor:  # type: ignore[override]
        c, h, w = input.shape
        cr = Corners(py.reshape(-1), px.reshape(-1), h, w)
        flat = input.reshape(c, h * w)
        out = sum(flat[:, idx] * wt for idx, wt in zip(cr.index, cr.weight))
        ctx.save_for_backward(input, py, px)
        return out.reshape(c, *py.shape)  # type: ignore[union-attr]

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Optional[Tensor], ...]:  # type: ignore[override]
        input, py, px = ctx.saved_tensors
        c, h, w = input.shape
        cr = Corners(py.reshape(-1), px.reshape(-1), h, w)
        go = grad_output.reshape(c, -1)
        grad_input = grad_py = grad_px = None
        if ctx.needs_input_grad[0]:
            grad_input = torch.zeros(c, h * w, dtype=input.dtype, device=input.device)
            for idx, wt in zip(cr.index, cr.weight):
                grad_input.index_add_(1, idx, go * wt)
            grad_input = grad_input.reshape(c, h, w)
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            flat = input.reshape(c, h * w)
            # S_q = sum over channels of grad * x(q), a corner off the map reading 0 (the course's position rule)
            s = [(go * flat[:, idx]).sum(0) * v for idx, v in zip(cr.index, cr.valid)]
            gy, gx = position_grads(cr, *s)
            grad_py, grad_px = gy.reshape(py.shape), gx.reshape(px.shape)
        return grad_input, grad_py, grad_px


def bilinear_sample(input: Tensor, py: Tensor, px: Tensor) -> Tensor:
    """DCNv1 Eq. (3): ``x(p) = sum_q G(q, p) x(q)``, ``G(q, p) = g(qy, py) g(qx, px)``, ``g(a, b) = max(0, 1-|a-b|)``.

    Args:
        input: ``[H, W]`` or ``[C, H, W]``, floating point.
        py, px: row and column of every sample, the same shape S, the dtype and device of ``input``.

    Returns:
        ``[*S]`` (for a ``[H, W]`` input) or ``[C, *S]``.

    Boundary: a corner off the map reads 0, so a sample with ``y <= -1`` or ``y >= H`` (likewise x) is 0.
    Gradients (hand-written backward): to ``input`` exact everywhere (a scatter through the four weights);
    to ``py``/``px`` by the course's position rule (mmcv's; torchvision's except on the lines y = -1 and
    x = -1, where torchvision takes the forward difference): 0 unless -1 < y < H and
    -1 < x < W; inside, the corners are floor(p) and floor(p)+1 with the floor held fixed, so at an
    integer coordinate the gradient is the forward difference ``x(q+1) - x(q)``. Position gradients are
    summed over channels.

    Raises:
        TypeError: an argument is not a floating-point tensor, or dtypes differ.
        ValueError: wrong dimensions, py and px of different shapes, devices differ, or a non-finite position.
    """
    check_tensor("input", input)
    check_tensor("py", py, like=input)
    check_tensor("px", px, like=input)
    if input.dim() not in (2, 3):
        raise ValueError(f"input: expected [H, W] or [C, H, W], got shape {list(input.shape)}")
    if py.shape != px.shape:
        raise ValueError(f"px: expected the shape of py {list(py.shape)}, got {list(px.shape)}")
    if not (bool(torch.isfinite(py).all()) and bool(torch.isfinite(px).all())):
        raise ValueError("py, px: expected finite sampling positions (found NaN or inf)")
    squeeze = input.dim() == 2
    out = _BilinearSampleFunction.apply(input[None] if squeeze else input, py, px)
    return out[0] if squeeze else out
