"""PyTorch tier: operators with hand-written backward, and layers (like ``torchvision.ops``).

Functional operators take and return tensors with the shapes their docstrings state; modules
wrap them (``DeformConv2d`` is torchvision-compatible; the ``*Pack`` layers own their offset
branch). On CUDA tensors the CuPy kernels of :mod:`dcn_lessons.cuda` are used when available.
"""
from dcn_lessons.ops.bilinear import bilinear_sample
from dcn_lessons.ops.deform_conv import (
    active_backend,
    cpu_fast_path_available,
    deform_col2im,
    deform_col2im_coord,
    deform_conv2d,
    deform_im2col,
)
from dcn_lessons.ops.layers import DeformConv2d, DeformConv2dPack, ModulatedDeformConv2dPack, offset_param_groups
from dcn_lessons.ops.roi import (
    boxes_to_rois,
    deform_ps_roi_pool,
    deform_roi_pool,
    modulated_deform_roi_pool,
    ps_roi_align,
    roi_align,
    roi_pool,
)
from dcn_lessons.ops.roi_layers import DeformPSRoIPool, DeformRoIPoolPack, ModulatedDeformRoIPoolPack, RoIAlign, RoIPool

__all__ = [
    "DeformConv2d",
    "DeformConv2dPack",
    "ModulatedDeformConv2dPack",
    "active_backend",
    "bilinear_sample",
    "cpu_fast_path_available",
    "deform_col2im",
    "deform_col2im_coord",
    "deform_conv2d",
    "deform_im2col",
    "offset_param_groups",
    "DeformPSRoIPool",
    "DeformRoIPoolPack",
    "ModulatedDeformRoIPoolPack",
    "RoIAlign",
    "RoIPool",
    "boxes_to_rois",
    "deform_ps_roi_pool",
    "deform_roi_pool",
    "modulated_deform_roi_pool",
    "ps_roi_align",
    "roi_align",
    "roi_pool",
]
