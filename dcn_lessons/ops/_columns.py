"""The columns path of deformable convolution: im2col, GEMM, and back (DCNv1 Appendix A).

The forward pass of DCNv1 Eq. (2) / DCNv2 Eq. (1) is a *deformable im2col* (the sampled values gathered into a
columns matrix ``[n, C*kh*kw, Ho*Wo]``, row ``c*K + k``) followed by one GEMM per weight group; the backward pass
runs the GEMMs the other way round and hands the columns' gradient to *col2im* (input gradient) and
*col2im_coord* (offset and mask gradients). :class:`ColumnsConv` writes that orchestration once, over the three
primitives of whichever backend it is mixed into (the tensor backend and the CUDA kernels, real or emulated;
the Numba backend has its own fused form), and walks the batch in chunks of images so that at most one columns
buffer of :data:`COLUMNS_BUDGET_BYTES` is alive at a time.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

__all__ = ["COLUMNS_BUDGET_BYTES", "ColumnsConv", "chunk_size", "store_chunk"]

Pair = tuple[int, int]

#: The forward and backward passes process the batch in chunks of images so that at most one
#: columns buffer of about this many bytes is alive at a time (at least one image per chunk).
COLUMNS_BUDGET_BYTES: int = 64 * 2**20


def chunk_size(n: int, rows: int, length: int, itemsize: int) -> int:
    """Images per chunk so that one columns buffer of ``rows x length`` per image stays within budget."""
    per_image = max(1, rows * length * itemsize)
    return max(1, min(n, COLUMNS_BUDGET_BYTES // per_image))


def store_chunk(s: int, e: int, *pairs: tuple[Optional[Tensor], Optional[Tensor]]) -> None:
    """``full[s:e] = part`` for each ``(full, part)`` whose gradient was asked for (``full`` not None)."""
    for full, part in pairs:
        if full is not None:
            full[s:e] = part


class ColumnsConv:
    """``conv_forward``/``conv_backward`` of :class:`dcn_lessons.backends.Backend` through the backend's own
    primitives (DCNv1 App. A): im2col, GEMM, then col2im and col2im_coord (or the one-call backward).

    Mixed into a class that provides ``deform_im2col``, ``deform_col2im``, ``deform_col2im_coord`` and
    ``deform_conv_backward_columns``; the columns are ``[n, C*kh*kw, Ho*Wo]`` (row ``c*K + k``).
    """

    def conv_forward(self, input: Tensor, offset: Tensor, weight: Tensor, mask: Optional[Tensor],
                stride: Pair, padding: Pair, dilation: Pair) -> Tensor:
        """``[N, O, Ho, Wo]``: DCNv1 Eq. (2) / DCNv2 Eq. (1) without the bias."""
        n, c, _, _ = input.shape
        o, cg, kh, kw = weight.shape
        groups = c // cg
        ho, wo = offset.shape[2], offset.shape[3]
        length = ho * wo
        w_g = weight.reshape(groups, o // groups, cg * kh * kw)
        out = input.new_empty(n, o, ho, wo)
        step = chunk_size(n, c * kh * kw, length, input.element_size())
        for s in range(0, n, step):
            e = min(n, s + step)
            cols = self.deform_im2col(
                input[s:e], offset[s:e], None if mask is None else mask[s:e], (kh, kw), stride, padding, dilation
            )
            res = torch.matmul(w_g, cols.view(e - s, groups, cg * kh * kw, length))  # [n, groups, O/g, L]
            out[s:e] = res.view(e - s, o, ho, wo)
        return out

    def conv_backward(self, grad_output: Tensor, input: Tensor, offset: Tensor, weight: Tensor, mask: Optional[Tensor],
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
        step = chunk_size(n, c * kh * kw, length, input.element_size())
        for s in range(0, n, step):
            e = min(n, s + step)
            x, off = input[s:e], offset[s:e]
            m = None if mask is None else mask[s:e]
            go_c = go[s:e]
            if grad_weight is not None:
                cols = self.deform_im2col(x, off, m, ks, stride, padding, dilation)
                cols = cols.view(e - s, groups, rows, length)
                grad_weight += torch.matmul(go_c, cols.transpose(2, 3)).sum(0)
                del cols
            need_coord = need_offset or need_mask
            if not (need_input or need_coord):
                continue
            gcols = torch.matmul(w_g.transpose(1, 2), go_c).reshape(e - s, c * kh * kw, length)
            g_in = g_off = g_m = None
            if need_input and need_coord:  # one call (the CUDA kernels fuse it when asked to)
                g_in, g_off, g_m = self.deform_conv_backward_columns(gcols, x, off, m, ks, stride, padding, dilation)
            elif need_input:
                g_in = self.deform_col2im(gcols, off, m, x.shape, ks, stride, padding, dilation)
            else:
                g_off, g_m = self.deform_col2im_coord(gcols, x, off, m, ks, stride, padding, dilation)
            store_chunk(s, e, (grad_input, g_in), (grad_offset, g_off), (grad_mask, g_m))
        gw = grad_weight.reshape(weight.shape) if grad_weight is not None else None
        return grad_input, grad_offset, gw, grad_mask
