"""The aligned RoI family, the public face: RoI Align, deformable and modulated RoI pooling, and their
position-sensitive forms (DCNv1 Eq. 5-6, §2.2, Fig. 3-4; DCNv2 Eq. 2).

Every operator here checks its arguments once and calls the operator registered with ``torch.library``
(``torch.ops.dcn_lessons.roi_align``, ``deform_roi_pool``, ``ps_roi_align``, ``deform_ps_roi_pool``; see
:mod:`dcn_lessons.ops._library`), which runs on the backend chosen per call (the tensor path of
:mod:`dcn_lessons.ops._roi_plan`, or the CUDA kernels of ``kernels/roi_align.cu``). The sampling rule is the
course's RoI rule (README conventions), that of ``torchvision.ops.roi_align(aligned=True)``; gradients flow to the
features, offsets and masks, never to the boxes (as torchvision and mmcv), and the operators are differentiable
once (a double backward raises).

Checks, once, here: shapes, dtypes and devices always; the boxes' values (finite, an integral batch index in
range, ordered corners) and the finiteness of offsets and masks on the host for CPU tensors. For CUDA tensors the
values are not copied to the host (that would stall the GPU on every call): the registered operators assert on
the device that batch indices are in range, and non-finite values propagate into the output.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, Union

import torch
from torch import Tensor

from dcn_lessons._validate import roi as _v
from dcn_lessons._validate.tensors import check_tensor
from dcn_lessons.backends import ROI_KINDS, RoIKind
from dcn_lessons.ops import _library  # noqa: F401  (registers torch.ops.dcn_lessons.*)

__all__ = [
    "roi_align",
    "deform_roi_pool",
    "modulated_deform_roi_pool",
    "ps_roi_align",
    "deform_ps_roi_pool",
    "boxes_to_rois",
]

BoxesLike = Union[Tensor, Sequence[Tensor]]


def host_checks(t: Tensor) -> bool:
    """Whether values of ``t`` are checked on the host: a real CPU tensor, outside ``torch.compile``/``export``
    tracing (a traced graph keeps no Python checks; the operators' own device assertions still run)."""
    if torch.compiler.is_compiling() or t.device.type != "cpu":
        return False
    from torch._subclasses.fake_tensor import is_fake

    return not is_fake(t)


def check_input(input: Any, position_sensitive: bool = False, output_size: Optional[tuple[int, int]] = None
                ) -> tuple[int, int, int, int]:
    """``input`` must be a floating ``[N, C, H, W]`` tensor (C = C_out*ph*pw when position-sensitive)."""
    check_tensor("input", input)
    shape = _v.check_feature_map(input, "input")
    if position_sensitive:
        assert output_size is not None
        _v.check_ps_channels(shape[1], output_size, "input")
    return shape


def boxes_to_rois(boxes: BoxesLike, input: Tensor, name: str = "boxes") -> Tensor:
    """Convert ``boxes`` to the ``[K, 5]`` RoI format and check it against ``input``.

    Args:
        boxes: ``Tensor[K, 5]`` rows ``(batch_index, x1, y1, x2, y2)``, or (as torchvision) a list of
            ``Tensor[L_i, 4]`` rows ``(x1, y1, x2, y2)``, one tensor per image ``i`` of the batch.
        input: the feature map ``[N, C, H, W]``; the boxes must share its dtype and device.
        name: the argument's name in error messages.

    Returns:
        ``Tensor[K, 5]`` with ``K = sum_i L_i`` (list form: rows of image 0 first), detached.

    Raises ValueError/TypeError naming ``name`` for a wrong shape, dtype or device, and, for CPU tensors (see
    :func:`host_checks`), a batch index out of ``[0, N)``, unordered corners or non-finite coordinates.
    """
    if isinstance(boxes, (list, tuple)):
        parts = []
        for i, b in enumerate(boxes):
            check_tensor(f"{name}[{i}]", b, like=input)
            if b.ndim != 2 or b.shape[1] != 4:
                raise ValueError(
                    f"{name}[{i}]: expected a 2-D tensor [L, 4] of rows (x1, y1, x2, y2), got shape {list(b.shape)}"
                )
            idx = torch.full((b.shape[0], 1), float(i), dtype=b.dtype, device=b.device)
            parts.append(torch.cat([idx, b], dim=1))
        rois = torch.cat(parts, 0) if parts else input.new_zeros((0, 5))
    else:
        check_tensor(name, boxes, like=input)
        rois = boxes
    _v.check_rois(rois, int(input.shape[0]), name=name, check_values=host_checks(rois))
    return rois.detach()


def _prepare(kind: RoIKind, input: Any, boxes: BoxesLike, boxes_name: str, offset: Optional[Tensor],
             mask: Optional[Tensor], output_size: Any, spatial_scale: Any, sampling_ratio: Any, gamma: Any
             ) -> tuple[Tensor, list[int], float, int, float]:
    """The checks every operator of the family shares: ``(rois [K, 5], [ph, pw], scale, ratio, gamma)``."""
    out_hw = _v.normalize_output_size(output_size)
    check_input(input, kind.position_sensitive, out_hw)
    scale = _v.check_spatial_scale(spatial_scale)
    ratio = _v.check_sampling_ratio(sampling_ratio)
    g = _v.check_gamma(gamma)
    rois = boxes_to_rois(boxes, input, boxes_name)
    k = int(rois.shape[0])
    for name, t, check in (("offset", offset, _v.check_roi_offset), ("mask", mask, _v.check_roi_mask)):
        if t is not None:
            check_tensor(name, t, like=input)
            check(t, k, out_hw, check_values=host_checks(t))
    return rois, list(out_hw), scale, ratio, g


def roi_align(
    input: Tensor,
    boxes: BoxesLike,
    output_size: Union[int, tuple[int, int]],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = True,
) -> Tensor:
    """RoI Align: DCNv1 Eq. (5) with each bin's sum replaced by the mean of bilinear samples (Eq. 3-4).

    ``y(i, j) = (1/count) * sum_{samples p in bin(i, j)} x(p0 + p)``, the course's RoI rule (README conventions)
    (= ``torchvision.ops.roi_align``). Note the default ``aligned=True`` (torchvision's default is False).

    Args:
        input: ``[N, C, H, W]`` floating tensor.
        boxes: ``Tensor[K, 5]`` rows ``(batch_index, x1, y1, x2, y2)`` in input-image pixels, or a list of
            ``Tensor[L_i, 4]`` per image; same dtype and device as ``input``.
        output_size: ``ph`` or ``(ph, pw)``.
        spatial_scale: feature-map pixels per image pixel (e.g. 1/16).
        sampling_ratio: samples per bin side; ``<= 0``: ``ceil(roi_h/ph)`` x ``ceil(roi_w/pw)``, which is 0 for
            a degenerate RoI (its bins are 0).
        aligned: shift by -0.5 pixel (True); False: no shift and RoI sizes clamped to >= 1 (Mask R-CNN legacy).

    Returns:
        ``[K, C, ph, pw]``; K = 0 gives an empty ``[0, C, ph, pw]``. Samples beyond one pixel outside the map
        read 0, those within one pixel are clamped to the border.
    """
    if not isinstance(aligned, bool):
        raise TypeError(f"aligned: expected a bool, got {aligned!r}")
    rois, out_hw, scale, ratio, _ = _prepare(ROI_KINDS["roi_align"], input, boxes, "boxes", None, None, output_size,
                                             spatial_scale, sampling_ratio, 0.1)
    return torch.ops.dcn_lessons.roi_align(input, rois, out_hw, scale, ratio, aligned)


def deform_roi_pool(
    input: Tensor,
    rois: BoxesLike,
    offset: Optional[Tensor],
    output_size: Union[int, tuple[int, int]],
    spatial_scale: float = 1.0,
    sampling_ratio: int = 0,
    gamma: float = 0.1,
) -> Tensor:
    """Deformable RoI pooling, DCNv1 Eq. (6): ``y(i, j) = (1/count) sum_p x(p0 + p + Δp_ij)``.

    ``Δp_ij = γ·(offset[k, 0, i, j]·roi_w, offset[k, 1, i, j]·roi_h)`` (DCNv1 §2.2, normalised offsets, x
    first), the samples taken with the RoI rule of :func:`roi_align` (aligned). Same as mmcv's DeformRoIPool.

    Args:
        input: ``[N, C, H, W]``.
        rois: ``Tensor[K, 5]`` or a list of ``Tensor[L_i, 4]`` (see :func:`roi_align`).
        offset: ``[K, 2, ph, pw]`` or None (zero offsets: equals ``roi_align(aligned=True)``).
        output_size: ``ph`` or ``(ph, pw)``; spatial_scale, sampling_ratio as :func:`roi_align`.
        gamma: the offset scale γ (0.1 in DCNv1).

    Returns:
        ``[K, C, ph, pw]``. Differentiable with respect to ``input`` and ``offset``; the offset gradient is 0
        in a clamped direction (sample within one pixel outside the map, or beyond the last row/column) and
        for samples more than one pixel outside.
    """
    rois_t, out_hw, scale, ratio, g = _prepare(ROI_KINDS["deform_roi_pool"], input, rois, "rois", offset, None,
                                               output_size, spatial_scale, sampling_ratio, gamma)
    return torch.ops.dcn_lessons.deform_roi_pool(input, rois_t, offset, None, out_hw, scale, ratio, g)


def modulated_deform_roi_pool(
    input: Tensor,
    rois: BoxesLike,
    offset: Optional[Tensor],
    mask: Optional[Tensor],
    output_size: Union[int, tuple[int, int]],
    spatial_scale: float = 1.0,
    sampling_ratio: int = 0,
    gamma: float = 0.1,
) -> Tensor:
    """Modulated deformable RoI pooling, DCNv2 Eq. (2): ``y(k) = Σ_j x(p_kj + Δp_k)·Δm_k / n_k``.

    As :func:`deform_roi_pool`, then bin ``(i, j)`` of RoI k is multiplied by ``mask[k, 0, i, j]``
    (meant to lie in [0, 1], e.g. a sigmoid output; not enforced).

    Args:
        offset: ``[K, 2, ph, pw]`` or None (zero offsets); mask: ``[K, 1, ph, pw]`` or None (all ones).

    Returns:
        ``[K, C, ph, pw]``; differentiable with respect to input, offset and mask.
    """
    rois_t, out_hw, scale, ratio, g = _prepare(ROI_KINDS["deform_roi_pool"], input, rois, "rois", offset, mask,
                                               output_size, spatial_scale, sampling_ratio, gamma)
    return torch.ops.dcn_lessons.deform_roi_pool(input, rois_t, offset, mask, out_hw, scale, ratio, g)


def ps_roi_align(
    input: Tensor,
    boxes: BoxesLike,
    output_size: Union[int, tuple[int, int]],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
) -> Tensor:
    """Position-sensitive RoI Align (R-FCN's PS RoI pooling with the RoI rule; DCNv1 §2.2, Fig. 4).

    Output channel c of bin (i, j) averages the samples of bin (i, j) read from input channel
    ``(c*ph + i)*pw + j`` (= ``torchvision.ops.ps_roi_align``).

    Args:
        input: ``[N, C_out*ph*pw, H, W]`` position-sensitive score maps.
        boxes, output_size, spatial_scale, sampling_ratio: as :func:`roi_align` (always aligned).

    Returns:
        ``[K, C_out, ph, pw]``.
    """
    rois, out_hw, scale, ratio, _ = _prepare(ROI_KINDS["ps_roi_align"], input, boxes, "boxes", None, None,
                                             output_size, spatial_scale, sampling_ratio, 0.1)
    return torch.ops.dcn_lessons.ps_roi_align(input, rois, out_hw, scale, ratio)


def deform_ps_roi_pool(
    input: Tensor,
    rois: BoxesLike,
    offset: Optional[Tensor],
    output_size: Union[int, tuple[int, int]],
    spatial_scale: float = 1.0,
    sampling_ratio: int = 0,
    gamma: float = 0.1,
) -> Tensor:
    """Deformable position-sensitive RoI pooling (DCNv1 §2.2, Fig. 4): Eq. (6) on PS score maps.

    Bin (i, j) of output channel c reads input channel ``(c*ph + i)*pw + j`` at the samples of bin (i, j)
    moved by ``γ·(offset_x·roi_w, offset_y·roi_h)``. Offsets are class-agnostic (one per bin, shared by all
    output channels). In DCNv1 they come from a conv branch of ``2*ph*pw`` channels pooled per RoI with PS
    RoI pooling; :class:`dcn_lessons.ops.roi_layers.DeformPSRoIPool` does exactly that.

    Args:
        input: ``[N, C_out*ph*pw, H, W]``; offset ``[K, 2, ph, pw]`` or None (= :func:`ps_roi_align`).

    Returns:
        ``[K, C_out, ph, pw]``; differentiable with respect to input and offset.
    """
    rois_t, out_hw, scale, ratio, g = _prepare(ROI_KINDS["deform_ps_roi_pool"], input, rois, "rois", offset, None,
                                               output_size, spatial_scale, sampling_ratio, gamma)
    return torch.ops.dcn_lessons.deform_ps_roi_pool(input, rois_t, offset, out_hw, scale, ratio, g)
