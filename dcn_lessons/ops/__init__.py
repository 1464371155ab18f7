"""PyTorch tier: operators with hand-written backward, and layers (like ``torchvision.ops``).

Functional operators check their arguments once and call operators registered with ``torch.library``
(``torch.ops.dcn_lessons.*``: they work under ``torch.compile`` and ``torch.export``), which run on the backend
chosen per call (:mod:`dcn_lessons.backends`: ``tensor``, ``cpu-numba``, ``cuda``, ``cuda-emulated``). Modules wrap
them (``DeformConv2d`` is torchvision-compatible; the ``*Pack`` layers own their offset branch).

Files: ``deform_conv.py`` (the public functional form and its primitives), ``_columns.py`` (im2col + GEMM),
``_primitives.py`` (the tensor path's primitives), ``_cpu_numba.py`` (the compiled CPU backend),
``roi_align.py`` (the aligned RoI family), ``roi_pool.py`` (quantised RoI pooling), ``_roi_plan.py`` (the RoI
family's tensor path), ``_library.py`` (the registered operators), ``layers.py`` and ``roi_layers.py`` (modules).
"""
from dcn_lessons.ops.bilinear import bilinear_sample
from dcn_lessons.ops.deform_conv import (
    active_backend,
    cpu_fast_path_available,
    deform_col2im,
    deform_col2im_coord,
    deform_conv2d,
    deform_im2col,
    DeformConv2dFunction,
)
from dcn_lessons.ops.layers import DeformConv2d, DeformConv2dPack, ModulatedDeformConv2dPack, offset_param_groups
from dcn_lessons.ops.roi_align import (
    boxes_to_rois,
    deform_ps_roi_pool,
    deform_roi_pool,
    modulated_deform_roi_pool,
    ps_roi_align,
    roi_align,
)
from dcn_lessons.ops.roi_pool import roi_pool
from dcn_lessons.ops.roi_layers import DeformPSRoIPool, DeformRoIPoolPack, ModulatedDeformRoIPoolPack, RoIAlign, RoIPool

__all__ = [
    "DeformConv2d",
    "DeformConv2dFunction",
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
