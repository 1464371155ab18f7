"""The ``tensor`` backend: the tensor path's primitives and RoI plan behind the :class:`~dcn_lessons.backends.Backend`
contract (plain PyTorch, any device, every floating dtype)."""
from __future__ import annotations

from typing import Optional

from torch import Tensor

from dcn_lessons._validate.tensors import FLOAT_DTYPES
from dcn_lessons.backends import RoIKind
from dcn_lessons.ops import _primitives, _roi_plan
from dcn_lessons.ops._columns import ColumnsConv

__all__ = ["TensorBackend", "TENSOR"]

Pair = tuple[int, int]


class TensorBackend(ColumnsConv):
    """Deformable convolution by the columns path over :mod:`~dcn_lessons.ops._primitives`; the RoI family by
    :mod:`~dcn_lessons.ops._roi_plan`."""

    name = "tensor"
    conv_dtypes = FLOAT_DTYPES
    roi_dtypes = FLOAT_DTYPES

    deform_im2col = staticmethod(_primitives.deform_im2col)
    deform_col2im = staticmethod(_primitives.deform_col2im)
    deform_col2im_coord = staticmethod(_primitives.deform_col2im_coord)

    def deform_conv_backward_columns(self, grad_columns: Tensor, input: Tensor, offset: Tensor,
                                     mask: Optional[Tensor], kernel_size: Pair, stride: Pair, padding: Pair,
                                     dilation: Pair) -> tuple[Tensor, Tensor, Optional[Tensor]]:
        """Input, offset and mask gradients in one call: col2im, then col2im_coord."""
        gi = self.deform_col2im(grad_columns, offset, mask, tuple(input.shape), kernel_size, stride, padding, dilation)
        go, gm = self.deform_col2im_coord(grad_columns, input, offset, mask, kernel_size, stride, padding, dilation)
        return gi, go, gm

    def roi_forward(self, kind: RoIKind, input: Tensor, rois: Tensor, offset: Optional[Tensor],
                    mask: Optional[Tensor], output_size: Pair, spatial_scale: float, sampling_ratio: int,
                    gamma: float, aligned: bool = True) -> Tensor:
        return _roi_plan.roi_forward_tensor(kind, input, rois, offset, mask, output_size, spatial_scale,
                                            sampling_ratio, gamma, aligned)

    def roi_backward(self, kind: RoIKind, grad_output: Tensor, input: Tensor, rois: Tensor,
                     offset: Optional[Tensor], mask: Optional[Tensor], output_size: Pair, spatial_scale: float,
                     sampling_ratio: int, gamma: float, aligned: bool = True
                     ) -> tuple[Tensor, Optional[Tensor], Optional[Tensor]]:
        return _roi_plan.roi_backward_tensor(kind, grad_output, input, rois, offset, mask, output_size,
                                             spatial_scale, sampling_ratio, gamma, aligned)


TENSOR = TensorBackend()
