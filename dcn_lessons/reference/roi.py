r"""NumPy reference tier of the RoI pooling family (lesson 04): loops that read like the equations.

Papers: DCNv1 = Dai et al., "Deformable Convolutional Networks", arXiv 1703.06211;
DCNv2 = Zhu et al., "Deformable ConvNets v2", arXiv 1811.11168.

Operators (each with a ``*_backward``):

=============================  ====================================================  ==========================
function                       equation                                              compatible with
=============================  ====================================================  ==========================
``roi_pool``                   DCNv1 Eq. (5) on the quantised grid                   torchvision ``roi_pool``
``roi_align``                  DCNv1 Eq. (5), bins sampled bilinearly (Mask R-CNN)   torchvision ``roi_align``
``deform_roi_pool``            DCNv1 Eq. (6), Δp_ij = γ·Δp̂_ij ∘ (w, h)              mmcv ``DeformRoIPool``
``modulated_deform_roi_pool``  DCNv2 Eq. (2)                                         mmcv ``ModulatedDeformRoIPool``
``ps_roi_align``               DCNv1 §2.2 PS RoI pooling (R-FCN), sampled            torchvision ``ps_roi_align``
``deform_ps_roi_pool``         DCNv1 §2.2 deformable PS RoI pooling (Eq. (6) per     --
                               bin on position-sensitive score maps)
=============================  ====================================================  ==========================

Shared conventions (README, "Conventions shared by every tier"):

* ``input`` is ``[N, C, H, W]``; RoIs are ``[K, 5]`` rows ``(batch_index, x1, y1, x2, y2)`` in input-image
  pixels, mapped to the feature map by ``spatial_scale``; the output is ``[K, C_out, ph, pw]``. K = 0 gives an
  empty ``[0, C_out, ph, pw]`` output and empty gradients.
* **Aligned RoI rule** (torchvision ``roi_align(aligned=True)``): the RoI starts at
  ``(x1·s - 0.5, y1·s - 0.5)`` and has size ``w = (x2 - x1)·s``, ``h = (y2 - y1)·s`` (no clamping);
  bin (i, j) has size ``(h/ph, w/pw)``; it is sampled on a ``gh × gw`` grid with ``gh = sampling_ratio`` when
  it is > 0 and ``gh = ceil(h/ph)`` otherwise (likewise gw); sample (u, v) of bin (i, j) sits at
  ``y = y_start + i·h/ph + (u + 0.5)·(h/ph)/gh`` (likewise x); the bin value is the sum of its samples divided
  by ``max(gh·gw, 1)``. A zero-height (or zero-width) RoI under adaptive sampling therefore has no sample and
  pools to 0, as in torchvision ``roi_align`` and mmcv (torchvision ``ps_roi_align`` divides by zero there;
  we return 0 for it too).
* **RoI sampling rule** (:func:`_roi_bilinear`): a sample with y < -1 or y > H (or x < -1 or x > W) is 0;
  otherwise y <= 0 is clamped to 0, the corners are ``floor(y)`` and ``floor(y) + 1``, and when
  ``floor(y) >= H - 1`` both corners are row H - 1 (likewise x); the value is the bilinear blend of the corners.
* **Position gradient** (what the offset gradients use): the derivative of that rule with the floor held fixed;
  it is 0 in a clamped direction (y <= 0 or y >= H - 1) and 0 outside. We differentiate the forward as
  written, so finite differences agree with us everywhere off the kinks (integer coordinates); mmcv's
  DeformRoIPool kernel can report a nonzero position gradient on the clamp ``-1 <= y <= 0``, so compare
  offset gradients with it only away from that band.

Everything is computed in float64 with plain Python loops over RoIs, bins and samples (channels are
vectorised); results are returned in the input's floating dtype.
"""

from __future__ import annotations

import math
from typing import Iterator, NamedTuple

import numpy as np

from .._validate import roi as _v

__all__ = [
    "RoIGeometry",
    "RoIPoolGrads",
    "bin_samples",
    "roi_geometry",
    "roi_sample",
    "roi_pool",
    "roi_pool_backward",
    "roi_align",
    "roi_align_backward",
    "deform_roi_pool",
    "deform_roi_pool_backward",
    "modulated_deform_roi_pool",
    "modulated_deform_roi_pool_backward",
    "ps_roi_align",
    "ps_roi_align_backward",
    "deform_ps_roi_pool",
    "deform_ps_roi_pool_backward",
]


class RoIPoolGrads(NamedTuple):
    """Gradients of a deformable RoI pooling op: ``input`` ``[N, C, H, W]``, ``offset`` ``[K, 2, ph, pw]``
    (None where no offset was given), ``mask`` ``[K, 1, ph, pw]`` (None where no mask was given)."""

    input: np.ndarray
    offset: np.ndarray | None
    mask: np.ndarray | None


# --------------------------------------------------------------------------------------------------------------
# The two building blocks: the RoI sampling rule and the RoI geometry.
# --------------------------------------------------------------------------------------------------------------


def _roi_bilinear(height: int, width: int, y: float, x: float) -> list[tuple[int, int, float, float, float]]:
    """The RoI sampling rule at position (y, x) of an ``height × width`` map.

    Returns the corners as ``(qy, qx, w, dw_dy, dw_dx)``: the sample is ``Σ w·x[qy, qx]`` and its derivative
    with respect to the position is ``(Σ dw_dy·x[qy, qx], Σ dw_dx·x[qy, qx])``. An empty list means the sample
    lies outside (y < -1, y > H, x < -1 or x > W) and is 0 with gradient 0. In a clamped direction
    (y <= 0 or floor(y) >= H - 1) the position derivative is 0. Two corners may coincide after clamping.
    """
    if y < -1.0 or y > height or x < -1.0 or x > width:
        return []
    y_moves, x_moves = y > 0.0, x > 0.0  # y <= 0 is clamped to 0: the value no longer depends on y
    y, x = max(y, 0.0), max(x, 0.0)
    y0, x0 = int(math.floor(y)), int(math.floor(x))
    if y0 >= height - 1:
        y0 = y1 = height - 1
        y, y_moves = float(y0), False
    else:
        y1 = y0 + 1
    if x0 >= width - 1:
        x0 = x1 = width - 1
        x, x_moves = float(x0), False
    else:
        x1 = x0 + 1
    ly, lx = y - y0, x - x0
    hy, hx = 1.0 - ly, 1.0 - lx
    sy, sx = float(y_moves), float(x_moves)  # d ly / dy and d lx / dx
    return [
        (y0, x0, hy * hx, -sy * hx, -sx * hy),
        (y0, x1, hy * lx, -sy * lx, sx * hy),
        (y1, x0, ly * hx, sy * hx, -sx * ly),
        (y1, x1, ly * lx, sy * lx, sx * ly),
    ]


class RoIGeometry(NamedTuple):
    """One RoI in feature-map pixels: where its bins start, its size, and its samples per bin side."""

    batch: int
    y_start: float
    x_start: float
    height: float  # h, in feature-map pixels
    width: float  # w
    grid_h: int  # samples per bin side
    grid_w: int

    @property
    def count(self) -> int:
        return max(self.grid_h * self.grid_w, 1)


def roi_geometry(
    roi: np.ndarray, output_size: tuple[int, int], spatial_scale: float, sampling_ratio: int, aligned: bool
) -> RoIGeometry:
    """Start, size and sampling grid of one RoI row ``(b, x1, y1, x2, y2)`` under the aligned rule (start =
    corner·spatial_scale − 0.5; or torchvision's aligned=False: no shift, size at least 1): the lessons draw it."""
    ph, pw = output_size
    shift = 0.5 if aligned else 0.0
    b, x1, y1, x2, y2 = (float(v) for v in roi)
    height, width = (y2 - y1) * spatial_scale, (x2 - x1) * spatial_scale
    if not aligned:  # torchvision forces malformed RoIs to at least 1 x 1 when aligned=False
        height, width = max(height, 1.0), max(width, 1.0)
    grid_h = sampling_ratio if sampling_ratio > 0 else math.ceil(height / ph)
    grid_w = sampling_ratio if sampling_ratio > 0 else math.ceil(width / pw)
    return RoIGeometry(int(b), y1 * spatial_scale - shift, x1 * spatial_scale - shift, height, width, grid_h, grid_w)


def bin_samples(
    r: RoIGeometry, i: int, j: int, output_size: tuple[int, int], dy: float = 0.0, dx: float = 0.0
) -> Iterator[tuple[float, float]]:
    """The (y, x) sample positions of bin (i, j), row-major over the bin's grid, the whole bin moved by (dy, dx)
    pixels: ``start + i·bin + (u + 0.5)·bin/grid`` (+ the move)."""
    ph, pw = output_size
    bin_h, bin_w = r.height / ph, r.width / pw
    for u in range(r.grid_h):
        y = r.y_start + dy + i * bin_h + (u + 0.5) * bin_h / r.grid_h
        for v in range(r.grid_w):
            x = r.x_start + dx + j * bin_w + (v + 0.5) * bin_w / r.grid_w
            yield y, x


def roi_sample(feature: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """A feature map read at any points by the RoI sampling rule (:func:`_roi_bilinear`, the module docstring):
    what every sample of :func:`roi_align` and of the deformable poolings reads -- DCNv1 Eq. (3)'s bilinear
    interpolation with torchvision ``roi_align``'s border: 0 beyond one pixel outside the map, clamped within it.

    Lesson 04 reads maps with it (its exercises build bins out of samples); it is not itself an exercise.

    Args:
        feature: ``[H, W]`` floating-point map.
        ys, xs: row and column positions, finite, broadcastable to one shape S.

    Returns:
        ``[*S]`` float64: 0 where ``y < -1``, ``y > H``, ``x < -1`` or ``x > W``; elsewhere the bilinear blend of the
        corners ``floor(p)`` and ``floor(p) + 1`` after clamping y into ``[0, H - 1]`` (likewise x).
    """
    feature = _float_array(feature, "feature")
    if feature.ndim != 2 or 0 in feature.shape:
        raise ValueError(f"feature: expected a non-empty [H, W] map, got shape {list(feature.shape)}")
    try:
        ys, xs = np.broadcast_arrays(np.asarray(ys, dtype=np.float64), np.asarray(xs, dtype=np.float64))
    except ValueError:
        raise ValueError(f"ys, xs: expected positions of shapes that broadcast together, got "
                         f"{list(np.shape(ys))} and {list(np.shape(xs))}") from None
    if not (np.isfinite(ys).all() and np.isfinite(xs).all()):
        raise ValueError("ys, xs: expected finite positions (found NaN or inf)")
    height, width = feature.shape
    x = feature.astype(np.float64)
    out = np.zeros(ys.shape)
    for idx in np.ndindex(ys.shape):
        out[idx] = sum(w * x[qy, qx] for qy, qx, w, _, _ in _roi_bilinear(height, width, float(ys[idx]), float(xs[idx])))
    return out


def _ps_channels(c_out: int, output_size: tuple[int, int], i: int, j: int) -> np.ndarray:
    """Input channels read by bin (i, j) of position-sensitive pooling: (c·ph + i)·pw + j for c < C_out."""
    ph, pw = output_size
    return (np.arange(c_out) * ph + i) * pw + j


# --------------------------------------------------------------------------------------------------------------
# One forward and one backward for every sampled op (roi_align, deformable, modulated, position-sensitive).
# --------------------------------------------------------------------------------------------------------------


def _float_array(a: object, name: str) -> np.ndarray:
    arr = np.asarray(a)
    if not np.issubdtype(arr.dtype, np.floating):
        raise TypeError(f"{name}: expected a floating-point array, got dtype {arr.dtype}")
    return arr


def _prepare(input, rois, offset, mask, output_size, spatial_scale, sampling_ratio, gamma, ps, rois_name):
    """Validate the arguments of a sampled op; return arrays and (ph, pw), C_out."""
    input = _float_array(input, "input")
    n, c, _, _ = _v.check_feature_map(input)
    size = _v.normalize_output_size(output_size)
    _v.check_spatial_scale(spatial_scale)
    _v.check_sampling_ratio(sampling_ratio)
    _v.check_gamma(gamma)
    k = _v.check_rois(rois, n, name=rois_name)
    rois = np.asarray(rois, dtype=np.float64)
    if offset is not None:
        offset = _float_array(offset, "offset")
        _v.check_roi_offset(offset, k, size)
    if mask is not None:
        mask = _float_array(mask, "mask")
        _v.check_roi_mask(mask, k, size)
    c_out = _v.check_ps_channels(c, size) if ps else c
    return input, rois, offset, mask, size, c_out


def _sampled_forward(input, rois, offset, mask, size, c_out, spatial_scale, sampling_ratio, aligned, gamma, ps):
    """y[k, :, i, j] = m_kij · Σ_samples x(sample + Δp_kij) / n_kij  (DCNv1 Eq. 6 / DCNv2 Eq. 2)."""
    _, _, height, width = input.shape
    ph, pw = size
    x = input.astype(np.float64)
    out = np.zeros((rois.shape[0], c_out, ph, pw))
    for k, roi in enumerate(rois):
        r = roi_geometry(roi, size, spatial_scale, sampling_ratio, aligned)
        for i in range(ph):
            for j in range(pw):
                img = x[r.batch, _ps_channels(c_out, size, i, j)] if ps else x[r.batch]  # [C_out, H, W]
                dx = dy = 0.0
                if offset is not None:  # Δp_ij = γ · Δp̂_ij ∘ (w, h)
                    dx = gamma * r.width * float(offset[k, 0, i, j])
                    dy = gamma * r.height * float(offset[k, 1, i, j])
                total = np.zeros(c_out)
                for sy, sx in bin_samples(r, i, j, size, dy, dx):
                    for qy, qx, w, _, _ in _roi_bilinear(height, width, sy, sx):
                        total += w * img[:, qy, qx]
                out[k, :, i, j] = total / r.count
                if mask is not None:
                    out[k, :, i, j] *= float(mask[k, 0, i, j])
    return out.astype(input.dtype, copy=False)


def _sampled_backward(
    grad_output, input, rois, offset, mask, size, c_out, spatial_scale, sampling_ratio, aligned, gamma, ps
) -> RoIPoolGrads:
    """Chain rule through :func:`_sampled_forward`, sample by sample (DCNv1 App. A, Eq. 8 for the offsets)."""
    _, _, height, width = input.shape
    ph, pw = size
    _v.check_grad_output(grad_output, (rois.shape[0], c_out, ph, pw))
    go_all = np.asarray(grad_output, dtype=np.float64)
    x = input.astype(np.float64)
    g_input = np.zeros_like(x)
    g_offset = None if offset is None else np.zeros(offset.shape)
    g_mask = None if mask is None else np.zeros(mask.shape)
    for k, roi in enumerate(rois):
        r = roi_geometry(roi, size, spatial_scale, sampling_ratio, aligned)
        for i in range(ph):
            for j in range(pw):
                chans = _ps_channels(c_out, size, i, j) if ps else np.arange(c_out)
                img = x[r.batch, chans]
                go = go_all[k, :, i, j]  # [C_out]
                m = 1.0 if mask is None else float(mask[k, 0, i, j])
                dx = dy = 0.0
                if offset is not None:
                    dx = gamma * r.width * float(offset[k, 0, i, j])
                    dy = gamma * r.height * float(offset[k, 1, i, j])
                pooled = np.zeros(c_out)  # the bin before modulation
                d_dy = d_dx = 0.0  # d(Σ_c go_c · y_c) / d(bin shift), before / count and m
                for sy, sx in bin_samples(r, i, j, size, dy, dx):
                    for qy, qx, w, w_y, w_x in _roi_bilinear(height, width, sy, sx):
                        v = img[:, qy, qx]
                        pooled += w * v
                        g_input[r.batch, chans, qy, qx] += (m * w / r.count) * go
                        d_dy += w_y * float(go @ v)
                        d_dx += w_x * float(go @ v)
                if g_offset is not None:  # shift = γ·w·Δp̂_x, γ·h·Δp̂_y
                    g_offset[k, 0, i, j] = m * gamma * r.width * d_dx / r.count
                    g_offset[k, 1, i, j] = m * gamma * r.height * d_dy / r.count
                if g_mask is not None:
                    g_mask[k, 0, i, j] = float(go @ pooled) / r.count
    return RoIPoolGrads(
        g_input.astype(input.dtype, copy=False),
        None if g_offset is None else g_offset.astype(offset.dtype, copy=False),
        None if g_mask is None else g_mask.astype(mask.dtype, copy=False),
    )


# --------------------------------------------------------------------------------------------------------------
# RoI align (Mask R-CNN; the sampled form of DCNv1 Eq. 5)
# --------------------------------------------------------------------------------------------------------------


def roi_align(
    input: np.ndarray,
    boxes: np.ndarray,
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = True,
) -> np.ndarray:
    r"""RoI align: DCNv1 Eq. (5) ``y(i, j) = Σ_{p ∈ bin(i, j)} x(p0 + p) / n_ij`` with the sum taken over
    ``n_ij = gh·gw`` bilinear samples at regular points of the bin (torchvision ``roi_align``).

    Args:
        input: ``[N, C, H, W]`` floating feature map.
        boxes: ``[K, 5]`` rows (batch_index, x1, y1, x2, y2) in input-image pixels.
        output_size: ``ph`` or ``(ph, pw)``.
        spatial_scale: feature-map pixels per image pixel (e.g. 1/16).
        sampling_ratio: samples per bin side; <= 0 means ``ceil(h/ph)`` (``ceil(w/pw)``).
        aligned: True: the module's aligned rule (start shifted by -0.5, size not clamped). False: no shift,
            RoI size clamped to >= 1 (torchvision ``aligned=False``).

    Returns:
        ``[K, C, ph, pw]`` in the input's dtype. Boundary: samples beyond one pixel outside the map are 0,
        samples within it are clamped (module docstring); K = 0 gives ``[0, C, ph, pw]``.
    """
    input, boxes, _, _, size, c_out = _prepare(
        input, boxes, None, None, output_size, spatial_scale, sampling_ratio, 0.0, False, "boxes"
    )
    return _sampled_forward(input, boxes, None, None, size, c_out, spatial_scale, sampling_ratio, aligned, 0.0, False)


def roi_align_backward(
    grad_output: np.ndarray,
    input: np.ndarray,
    boxes: np.ndarray,
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = True,
) -> np.ndarray:
    r"""Gradient of :func:`roi_align` with respect to ``input``: each sample scatters
    ``grad_output[k, c, i, j] · G / n_ij`` onto its (up to four) corners, G the bilinear weight.

    Args:
        grad_output: ``[K, C, ph, pw]``; other arguments as :func:`roi_align`.

    Returns:
        ``grad_input`` ``[N, C, H, W]`` (zeros where no sample reads; all zeros when K = 0).
    """
    input, boxes, _, _, size, c_out = _prepare(
        input, boxes, None, None, output_size, spatial_scale, sampling_ratio, 0.0, False, "boxes"
    )
    return _sampled_backward(
        grad_output, input, boxes, None, None, size, c_out, spatial_scale, sampling_ratio, aligned, 0.0, False
    ).input


# --------------------------------------------------------------------------------------------------------------
# Deformable RoI pooling (DCNv1 Eq. 6) and modulated deformable RoI pooling (DCNv2 Eq. 2)
# --------------------------------------------------------------------------------------------------------------


def deform_roi_pool(
    input: np.ndarray,
    rois: np.ndarray,
    offset: np.ndarray | None,
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = 0,
    gamma: float = 0.1,
) -> np.ndarray:
    r"""Deformable RoI pooling, DCNv1 Eq. (6): ``y(i, j) = Σ_{p ∈ bin(i, j)} x(p0 + p + Δp_ij) / n_ij`` with
    the normalised offsets turned into pixels by ``Δp_ij = γ · Δp̂_ij ∘ (w, h)`` (DCNv1 §2.2), the bins sampled
    by the aligned rule (mmcv ``DeformRoIPool``).

    Args:
        input: ``[N, C, H, W]``.
        rois: ``[K, 5]`` rows (batch_index, x1, y1, x2, y2) in input-image pixels.
        offset: ``[K, 2, ph, pw]`` normalised offsets Δp̂, channel 0 = x, channel 1 = y; bin (i, j) of RoI k
            moves by ``(γ·offset[k,0,i,j]·w, γ·offset[k,1,i,j]·h)`` pixels. None means zero offsets, and then
            the result equals ``roi_align(..., aligned=True)``.
        output_size: ``ph`` or ``(ph, pw)``.
        spatial_scale: feature-map pixels per image pixel; w and h are measured on the feature map.
        sampling_ratio: samples per bin side; <= 0 (default) means adaptive, ``ceil(h/ph)`` × ``ceil(w/pw)``.
        gamma: γ, the offset scale (0.1 in DCNv1).

    Returns:
        ``[K, C, ph, pw]``. Boundary: as :func:`roi_align` (a bin pushed off the map reads 0 there).
    """
    input, rois, offset, _, size, c_out = _prepare(
        input, rois, offset, None, output_size, spatial_scale, sampling_ratio, gamma, False, "rois"
    )
    return _sampled_forward(input, rois, offset, None, size, c_out, spatial_scale, sampling_ratio, True, gamma, False)


def deform_roi_pool_backward(
    grad_output: np.ndarray,
    input: np.ndarray,
    rois: np.ndarray,
    offset: np.ndarray | None,
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = 0,
    gamma: float = 0.1,
) -> RoIPoolGrads:
    r"""Gradients of :func:`deform_roi_pool`.

    ``∂y(i, j)/∂Δp̂_ij = γ·(w, h) ∘ Σ_{p} ∂x(p0 + p + Δp_ij)/∂p / n_ij`` (DCNv1 App. A, Eq. 8), the position
    derivative taken with the RoI rule (0 in a clamped direction and outside).

    Args:
        grad_output: ``[K, C, ph, pw]``; the rest as :func:`deform_roi_pool`.

    Returns:
        ``RoIPoolGrads(input [N, C, H, W], offset [K, 2, ph, pw] or None if offset is None, mask=None)``.
    """
    input, rois, offset, _, size, c_out = _prepare(
        input, rois, offset, None, output_size, spatial_scale, sampling_ratio, gamma, False, "rois"
    )
    return _sampled_backward(
        grad_output, input, rois, offset, None, size, c_out, spatial_scale, sampling_ratio, True, gamma, False
    )


def modulated_deform_roi_pool(
    input: np.ndarray,
    rois: np.ndarray,
    offset: np.ndarray | None,
    mask: np.ndarray | None,
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = 0,
    gamma: float = 0.1,
) -> np.ndarray:
    r"""Modulated deformable RoI pooling, DCNv2 Eq. (2):
    ``y(k) = Σ_{j=1}^{n_k} x(p_kj + Δp_k) · Δm_k / n_k`` for bin k, i.e. :func:`deform_roi_pool` with bin (i, j)
    multiplied by its modulation scalar (mmcv ``ModulatedDeformRoIPool``).

    Args:
        input, rois, offset, output_size, spatial_scale, sampling_ratio, gamma: as :func:`deform_roi_pool`
            (offset None = zero offsets).
        mask: ``[K, 1, ph, pw]`` modulation Δm, meant to lie in [0, 1] (a sigmoid output; not enforced, the
            formula is linear in it). None means 1 everywhere, and then the result equals
            :func:`deform_roi_pool`.

    Returns:
        ``[K, C, ph, pw]``; boundary as :func:`roi_align`.
    """
    input, rois, offset, mask, size, c_out = _prepare(
        input, rois, offset, mask, output_size, spatial_scale, sampling_ratio, gamma, False, "rois"
    )
    return _sampled_forward(input, rois, offset, mask, size, c_out, spatial_scale, sampling_ratio, True, gamma, False)


def modulated_deform_roi_pool_backward(
    grad_output: np.ndarray,
    input: np.ndarray,
    rois: np.ndarray,
    offset: np.ndarray | None,
    mask: np.ndarray | None,
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = 0,
    gamma: float = 0.1,
) -> RoIPoolGrads:
    r"""Gradients of :func:`modulated_deform_roi_pool` (DCNv2 Eq. 2): the input and offset gradients of
    :func:`deform_roi_pool_backward` times Δm_k, and ``∂y(k)/∂Δm_k = Σ_j x(p_kj + Δp_k) / n_k``.

    Returns:
        ``RoIPoolGrads(input [N, C, H, W], offset [K, 2, ph, pw] or None, mask [K, 1, ph, pw] or None)``
        (None where that argument was None).
    """
    input, rois, offset, mask, size, c_out = _prepare(
        input, rois, offset, mask, output_size, spatial_scale, sampling_ratio, gamma, False, "rois"
    )
    return _sampled_backward(
        grad_output, input, rois, offset, mask, size, c_out, spatial_scale, sampling_ratio, True, gamma, False
    )


# --------------------------------------------------------------------------------------------------------------
# Position-sensitive RoI align (R-FCN; DCNv1 §2.2) and deformable PS RoI pooling (DCNv1 §2.2)
# --------------------------------------------------------------------------------------------------------------


def ps_roi_align(
    input: np.ndarray,
    boxes: np.ndarray,
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
) -> np.ndarray:
    r"""Position-sensitive RoI align (R-FCN, DCNv1 §2.2 "Position-Sensitive (PS) RoI Pooling"):
    DCNv1 Eq. (5) where bin (i, j) of output channel c reads its own score map
    ``x_{c,i,j} = input[:, (c·ph + i)·pw + j]``, bins sampled by the aligned rule (torchvision ``ps_roi_align``).

    Args:
        input: ``[N, C_out·ph·pw, H, W]``.
        boxes: ``[K, 5]`` rows (batch_index, x1, y1, x2, y2) in input-image pixels.
        output_size: ``ph`` or ``(ph, pw)``.
        spatial_scale, sampling_ratio: as :func:`roi_align` (always the aligned rule).

    Returns:
        ``[K, C_out, ph, pw]``; boundary as :func:`roi_align`; a zero-size RoI with adaptive sampling gives 0.
    """
    input, boxes, _, _, size, c_out = _prepare(
        input, boxes, None, None, output_size, spatial_scale, sampling_ratio, 0.0, True, "boxes"
    )
    return _sampled_forward(input, boxes, None, None, size, c_out, spatial_scale, sampling_ratio, True, 0.0, True)


def ps_roi_align_backward(
    grad_output: np.ndarray,
    input: np.ndarray,
    boxes: np.ndarray,
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
) -> np.ndarray:
    r"""Gradient of :func:`ps_roi_align` with respect to ``input``: as :func:`roi_align_backward`, each bin
    scattering only into its own score-map channel ``(c·ph + i)·pw + j``.

    Args:
        grad_output: ``[K, C_out, ph, pw]``; the rest as :func:`ps_roi_align`.

    Returns:
        ``grad_input`` ``[N, C_out·ph·pw, H, W]``.
    """
    input, boxes, _, _, size, c_out = _prepare(
        input, boxes, None, None, output_size, spatial_scale, sampling_ratio, 0.0, True, "boxes"
    )
    return _sampled_backward(
        grad_output, input, boxes, None, None, size, c_out, spatial_scale, sampling_ratio, True, 0.0, True
    ).input


def deform_ps_roi_pool(
    input: np.ndarray,
    rois: np.ndarray,
    offset: np.ndarray | None,
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = 0,
    gamma: float = 0.1,
) -> np.ndarray:
    r"""Deformable position-sensitive RoI pooling (DCNv1 §2.2): DCNv1 Eq. (6) with bin (i, j) of output
    channel c reading its score map ``input[:, (c·ph + i)·pw + j]``:
    ``y_c(i, j) = Σ_{p ∈ bin(i, j)} x_{c,i,j}(p0 + p + Δp_ij) / n_ij``, ``Δp_ij = γ · Δp̂_ij ∘ (w, h)``.

    The offsets are class-agnostic: one (x, y) pair per bin, shared by every output channel. In DCNv1 they
    come from a conv branch with ``2·ph·pw`` output channels, pooled per RoI with PS RoI pooling, so that bin
    (i, j) reads its own offset map (channel ``(0·ph + i)·pw + j`` for x, ``(1·ph + i)·pw + j`` for y)::

        offset_map = offset_conv(features)                              # [N, 2*ph*pw, H, W]
        offset = ps_roi_align(offset_map, rois, (ph, pw), spatial_scale)  # [K, 2, ph, pw]
        scores = deform_ps_roi_pool(score_maps, rois, offset, (ph, pw), spatial_scale)

    Args:
        input: ``[N, C_out·ph·pw, H, W]`` position-sensitive score maps.
        rois: ``[K, 5]`` rows (batch_index, x1, y1, x2, y2) in input-image pixels.
        offset: ``[K, 2, ph, pw]`` normalised, channel 0 = x, 1 = y; None = zero offsets (then the result
            equals :func:`ps_roi_align` with the same sampling_ratio).
        output_size, spatial_scale, sampling_ratio, gamma: as :func:`deform_roi_pool`.

    Returns:
        ``[K, C_out, ph, pw]``; boundary as :func:`roi_align`.
    """
    input, rois, offset, _, size, c_out = _prepare(
        input, rois, offset, None, output_size, spatial_scale, sampling_ratio, gamma, True, "rois"
    )
    return _sampled_forward(input, rois, offset, None, size, c_out, spatial_scale, sampling_ratio, True, gamma, True)


def deform_ps_roi_pool_backward(
    grad_output: np.ndarray,
    input: np.ndarray,
    rois: np.ndarray,
    offset: np.ndarray | None,
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = 0,
    gamma: float = 0.1,
) -> RoIPoolGrads:
    r"""Gradients of :func:`deform_ps_roi_pool`: input as :func:`ps_roi_align_backward` (at the moved
    samples), offset as :func:`deform_roi_pool_backward` (DCNv1 App. A, Eq. 8) summed over output channels.

    Returns:
        ``RoIPoolGrads(input [N, C_out·ph·pw, H, W], offset [K, 2, ph, pw] or None, mask=None)``.
    """
    input, rois, offset, _, size, c_out = _prepare(
        input, rois, offset, None, output_size, spatial_scale, sampling_ratio, gamma, True, "rois"
    )
    return _sampled_backward(
        grad_output, input, rois, offset, None, size, c_out, spatial_scale, sampling_ratio, True, gamma, True
    )


# --------------------------------------------------------------------------------------------------------------
# Plain RoI pooling on the quantised grid (DCNv1 Eq. 5; torchvision roi_pool)
# --------------------------------------------------------------------------------------------------------------


def _c_round(v: float) -> int:
    """C's round(): halves go away from zero (NumPy's round goes to even)."""
    return int(math.copysign(math.floor(abs(v) + 0.5), v))


def _roi_pool_bins(
    roi: np.ndarray, output_size: tuple[int, int], spatial_scale: float, height: int, width: int
) -> Iterator[tuple[int, int, int, int, int, int, int]]:
    """Yield ``(batch, i, j, h0, h1, w0, w1)``: bin (i, j) covers rows h0 <= py < h1 and columns w0 <= px < w1."""
    ph, pw = output_size
    b = int(roi[0])
    xs, ys = _c_round(roi[1] * spatial_scale), _c_round(roi[2] * spatial_scale)
    xe, ye = _c_round(roi[3] * spatial_scale), _c_round(roi[4] * spatial_scale)
    roi_w, roi_h = max(xe - xs + 1, 1), max(ye - ys + 1, 1)
    bin_h, bin_w = roi_h / ph, roi_w / pw
    for i in range(ph):
        h0 = min(max(math.floor(i * bin_h) + ys, 0), height)
        h1 = min(max(math.ceil((i + 1) * bin_h) + ys, 0), height)
        for j in range(pw):
            w0 = min(max(math.floor(j * bin_w) + xs, 0), width)
            w1 = min(max(math.ceil((j + 1) * bin_w) + xs, 0), width)
            yield b, i, j, h0, h1, w0, w1


def _prepare_pool(input, boxes, output_size, spatial_scale, mode):
    input = _float_array(input, "input")
    n, c, _, _ = _v.check_feature_map(input)
    size = _v.normalize_output_size(output_size)
    _v.check_spatial_scale(spatial_scale)
    _v.check_pool_mode(mode)
    _v.check_rois(boxes, n, name="boxes")
    return input, np.asarray(boxes, dtype=np.float64), size


def roi_pool(
    input: np.ndarray,
    boxes: np.ndarray,
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    mode: str = "max",
) -> np.ndarray:
    r"""Plain RoI pooling on the quantised grid, DCNv1 Eq. (5): ``y(i, j) = Σ_{p ∈ bin(i, j)} x(p0 + p) / n_ij``
    (``mode="avg"``), or the max over the bin (``mode="max"``, default, torchvision ``roi_pool``).

    Grid (torchvision): corners rounded, ``xs = round(x1·s)``, ``xe = round(x2·s)`` (halves away from zero),
    ``w = max(xe - xs + 1, 1)`` (likewise y, h); bin (i, j) covers the pixels
    ``floor(i·h/ph) <= py - ys < ceil((i+1)·h/ph)`` and ``floor(j·w/pw) <= px - xs < ceil((j+1)·w/pw)``,
    clipped to the map. Neighbouring bins may share a row or column.

    Args:
        input: ``[N, C, H, W]``.
        boxes: ``[K, 5]`` rows (batch_index, x1, y1, x2, y2) in input-image pixels.
        output_size: ``ph`` or ``(ph, pw)``.
        spatial_scale: feature-map pixels per image pixel.
        mode: "max" or "avg".

    Returns:
        ``[K, C, ph, pw]``. Boundary: a bin with no pixel on the map (clipped away) is 0.
    """
    input, boxes, size = _prepare_pool(input, boxes, output_size, spatial_scale, mode)
    _, c, height, width = input.shape
    x = input.astype(np.float64)
    out = np.zeros((boxes.shape[0], c) + size)
    for k, roi in enumerate(boxes):
        for b, i, j, h0, h1, w0, w1 in _roi_pool_bins(roi, size, spatial_scale, height, width):
            if h1 <= h0 or w1 <= w0:
                continue  # empty bin -> 0
            region = x[b, :, h0:h1, w0:w1]
            out[k, :, i, j] = region.max(axis=(1, 2)) if mode == "max" else region.mean(axis=(1, 2))
    return out.astype(input.dtype, copy=False)


def roi_pool_backward(
    grad_output: np.ndarray,
    input: np.ndarray,
    boxes: np.ndarray,
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    mode: str = "max",
) -> np.ndarray:
    r"""Gradient of :func:`roi_pool` with respect to ``input``.

    ``mode="max"``: each bin routes its gradient to its argmax, the first maximum in a row-major scan of the
    bin (torchvision). ``mode="avg"``: each of the n_ij pixels of the bin gets ``grad / n_ij`` (Eq. 5).
    Empty bins route nothing.

    Args:
        grad_output: ``[K, C, ph, pw]``; the rest as :func:`roi_pool`.

    Returns:
        ``grad_input`` ``[N, C, H, W]``.
    """
    input, boxes, size = _prepare_pool(input, boxes, output_size, spatial_scale, mode)
    _, c, height, width = input.shape
    _v.check_grad_output(grad_output, (boxes.shape[0], c) + size)
    go = np.asarray(grad_output, dtype=np.float64)
    x = input.astype(np.float64)
    g_input = np.zeros_like(x)
    for k, roi in enumerate(boxes):
        for b, i, j, h0, h1, w0, w1 in _roi_pool_bins(roi, size, spatial_scale, height, width):
            if h1 <= h0 or w1 <= w0:
                continue
            if mode == "avg":
                g_input[b, :, h0:h1, w0:w1] += go[k, :, i, j, None, None] / ((h1 - h0) * (w1 - w0))
                continue
            region = x[b, :, h0:h1, w0:w1].reshape(c, -1)
            first = region.argmax(axis=1)  # first maximum in row-major order
            for ch in range(c):
                qy, qx = divmod(int(first[ch]), w1 - w0)
                g_input[b, ch, h0 + qy, w0 + qx] += go[k, ch, i, j]
    return g_input.astype(input.dtype, copy=False)
