"""NumPy reference tier: the papers' equations, short enough to read in one sitting.

Every later tier (PyTorch, CUDA) is tested against these functions, which are themselves tested
against brute-force definitions and central finite differences.

* :mod:`~dcn_lessons.reference.bilinear` -- DCNv1 Eq. (3)-(4): bilinear sampling and its gradients.
* :mod:`~dcn_lessons.reference.deform_conv` -- DCNv1 Eq. (1)-(2), DCNv2 Eq. (1): deformable and
  modulated convolution, loop and im2col forms, and their backward.
* :mod:`~dcn_lessons.reference.roi` -- DCNv1 Eq. (5)-(6) (and App. A's Eq. (8) for the offset gradient),
  DCNv2 Eq. (2): the RoI pooling family.
"""
from dcn_lessons.reference.bilinear import (
    BilinearWeights,
    bilinear_sample,
    bilinear_sample_backward,
    bilinear_sample_literal,
    bilinear_weights,
    g,
)
from dcn_lessons.reference.deform_conv import (
    DeformConvGrads,
    deform_col2im,
    deform_col2im_coord,
    deform_conv2d,
    deform_conv2d_backward,
    deform_conv2d_loop,
    deform_im2col,
    deform_sampling_positions,
)
from dcn_lessons.reference.roi import (
    RoIPoolGrads,
    deform_ps_roi_pool,
    deform_ps_roi_pool_backward,
    deform_roi_pool,
    deform_roi_pool_backward,
    modulated_deform_roi_pool,
    modulated_deform_roi_pool_backward,
    ps_roi_align,
    ps_roi_align_backward,
    roi_align,
    roi_align_backward,
    roi_pool,
    roi_pool_backward,
)

__all__ = [
    "BilinearWeights",
    "DeformConvGrads",
    "RoIPoolGrads",
    "deform_ps_roi_pool",
    "deform_ps_roi_pool_backward",
    "deform_roi_pool",
    "deform_roi_pool_backward",
    "modulated_deform_roi_pool",
    "modulated_deform_roi_pool_backward",
    "ps_roi_align",
    "ps_roi_align_backward",
    "roi_align",
    "roi_align_backward",
    "roi_pool",
    "roi_pool_backward",
    "bilinear_sample",
    "bilinear_sample_backward",
    "bilinear_sample_literal",
    "bilinear_weights",
    "deform_col2im",
    "deform_col2im_coord",
    "deform_conv2d",
    "deform_conv2d_backward",
    "deform_conv2d_loop",
    "deform_im2col",
    "deform_sampling_positions",
    "g",
]
