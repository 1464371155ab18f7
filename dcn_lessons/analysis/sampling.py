r"""Sampling locations of stacked deformable layers (DCNv1 Fig. 5-6) and of deformable RoI pooling bins (Fig. 7).

**Stacked layers.** For one activation unit of a deep layer, DCNv1 Fig. 6 draws where that layer samples
(``p0 + p_k + Δp_k``, Eq. 2: 9 points for a 3x3 kernel) and, under each of those points, where the layer below
samples: 9·9 = 81 points for two layers, 9^3 = 729 for three. :func:`stacked_sampling_locations` computes exactly
that, for any chain of layers, in image pixels:

1. level 1: the K points of the top layer's unit ``(y, x)``, in the top layer's input map, mapped to the image
   with that map's :class:`~dcn_lessons.analysis.frames.Frame`;
2. each further level takes every point P of the level above (image pixels), finds the (fractional) output unit
   of the layer below that sits at P, ``u = out_frame.from_pixel(P)`` with ``out_frame = frame.after(geometry)``,
   and replaces P by that layer's K sampling points for unit u::

       position_k(u) = u * stride - padding + k_grid * dilation + Δp_k(u)      (the layer's input coordinates)

   The regular part is the convention's formula evaluated at the fractional u (it is affine in u, so strides and
   dilations need no special case); the offsets ``Δp_k(u)`` (and the DCNv2 amplitudes ``Δm_k(u)``) are read from
   the layer's offset field at u:

   * ``interpolation="bilinear"`` (default): bilinear interpolation of the field between the four units around
     u (DCNv1 Eq. 3-4's kernel applied to the offset map), with u clamped into ``[0, Ho-1] x [0, Wo-1]`` first,
     so that beyond the map's last unit the field is continued by its border value (a point outside the map
     still gets the regular pattern of the unit it sits at, and the offsets of the nearest border unit);
   * ``interpolation="nearest"``: the offsets of the nearest unit (``rint``, ties to even, then clipped), as
     :func:`dcn_lessons.widgets.sampling.follow_unit` does; a test checks that the two agree.

   The regular pattern is centred on P in both modes (P need not sit on a unit: behind a 2x2 max-pool it falls
   between two).

A plain conv contributes its regular grid (its level has zero offsets). A point found through several modulated
layers carries the product of their amplitudes. Offset group ``group`` is followed when a layer has several.

**RoI bins.** :func:`roi_bin_locations` gives the bins of (deformable) RoI pooling of one RoI, moved by their
offsets (``Δp_ij = γ·(Δp̂_x·w, Δp̂_y·h)``, DCNv1 Eq. 6), and their bilinear sample points, in image pixels, from
the reference tier's :func:`~dcn_lessons.reference.roi.roi_geometry` and :func:`~dcn_lessons.reference.roi.bin_samples`;
:func:`roi_pack_offsets` reads the offsets (and masks) a :class:`~dcn_lessons.ops.DeformRoIPoolPack` predicts.
"""
from __future__ import annotations

from typing import Any, Mapping, NamedTuple, Optional, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from dcn_lessons.analysis.frames import Frame, LayerGeometry
from dcn_lessons.geometry import sampling_positions
from dcn_lessons.ops import DeformConv2dPack, DeformRoIPoolPack, ModulatedDeformRoIPoolPack
from dcn_lessons.reference.bilinear import bilinear_sample
from dcn_lessons.reference.roi import bin_samples, roi_geometry
from dcn_lessons.training import LayerSamples, layer_input, sampling_locations

__all__ = [
    "Level",
    "level_from_samples",
    "layer_level",
    "model_levels",
    "StackedSamples",
    "stacked_sampling_locations",
    "RoIBins",
    "roi_bin_locations",
    "roi_pack_offsets",
]

INTERPOLATIONS = ("bilinear", "nearest")


class Level(NamedTuple):
    """One layer of a stack, for one image.

    ``offset [G, K, 2, Ho, Wo]``: (Δy, Δx) of kernel point k of output unit (y, x), offset group g, in the
    layer's input-map pixels (zeros for a plain conv); ``mask [G, K, Ho, Wo]`` (DCNv2's Δm_k) or None;
    ``geometry``: the layer's kernel, stride, padding, dilation; ``frame``: the frame of its *input* map.
    """

    offset: np.ndarray
    mask: Optional[np.ndarray]
    geometry: LayerGeometry
    frame: Frame

    @property
    def out_frame(self) -> Frame:
        """The frame of the layer's output map."""
        return self.frame.after(self.geometry)


def _base(geometry: LayerGeometry) -> np.ndarray:
    """``[K, 2]``: the sampling positions of unit (0, 0) with zero offsets (the convention's rule)."""
    return sampling_positions(0, 0, None, geometry.kernel_size, geometry.stride, geometry.padding, geometry.dilation)


def _regular(geometry: LayerGeometry, uy: np.ndarray, ux: np.ndarray) -> np.ndarray:
    """``[K, n, 2]``: ``u*stride - padding + k_grid*dilation`` for (fractional) units ``(uy, ux)`` of shape [n]."""
    shift = np.stack([uy * geometry.stride[0], ux * geometry.stride[1]], axis=-1)  # [n, 2]
    return _base(geometry)[:, None, :] + shift[None]


def level_from_samples(samples: LayerSamples, geometry: LayerGeometry, frame: Frame) -> Level:
    """A :class:`Level` from the sampling positions a layer reports (:func:`dcn_lessons.training.sampling_locations`:
    ``py, px [G, K, Ho, Wo]`` in input coordinates): the offsets are the positions minus the regular grid."""
    py, px = np.asarray(samples.py, dtype=np.float64), np.asarray(samples.px, dtype=np.float64)
    if py.ndim != 4 or px.shape != py.shape:
        raise ValueError(f"samples: expected py, px of one shape [G, K, Ho, Wo], got {list(py.shape)}, {list(px.shape)}")
    g, k, ho, wo = py.shape
    if k != geometry.kernel_size[0] * geometry.kernel_size[1]:
        raise ValueError(f"samples: {k} kernel points, but geometry has kernel_size {geometry.kernel_size}")
    uy, ux = np.meshgrid(np.arange(ho, dtype=np.float64), np.arange(wo, dtype=np.float64), indexing="ij")
    reg = _regular(geometry, uy.ravel(), ux.ravel()).reshape(k, ho, wo, 2)
    offset = np.stack([py - reg[None, ..., 0], px - reg[None, ..., 1]], axis=2)  # [G, K, 2, Ho, Wo]
    mask = None if samples.mask is None else np.asarray(samples.mask, dtype=np.float64)
    return Level(offset, mask, geometry, frame)


@torch.no_grad()
def layer_level(layer: nn.Module, features: Tensor, frame: Frame) -> Level:
    """The :class:`Level` of ``layer`` for its input ``features`` (``[C, H, W]`` or ``[1, C, H, W]``, one image).

    A :class:`~dcn_lessons.ops.DeformConv2dPack` (or modulated) layer gives its predicted offsets (and masks);
    a plain ``nn.Conv2d`` gives zero offsets (its regular grid) and no mask.
    """
    geometry = LayerGeometry.of_module(layer)
    if isinstance(layer, DeformConv2dPack):
        return level_from_samples(sampling_locations(layer, features), geometry, frame)
    if isinstance(layer, nn.Conv2d):
        x = features[None] if features.ndim == 3 else features
        ho, wo = layer(x.to(layer.weight.dtype)).shape[-2:]
        k = geometry.kernel_size[0] * geometry.kernel_size[1]
        return Level(np.zeros((1, k, 2, int(ho), int(wo))), None, geometry, frame)
    raise TypeError(f"layer: expected an nn.Conv2d or a DeformConv2dPack, got {type(layer).__name__}")


def model_levels(model: nn.Module, image: Tensor, names: Sequence[str], frames: Mapping[str, Frame]) -> list[Level]:
    """The :class:`Level` of each layer ``names`` (top down) of ``model`` run on one ``image``.

    Args:
        model: any module; each name is a submodule (``model.get_submodule``), a conv or deformable conv.
        image: ``[C, H, W]`` or ``[1, C, H, W]``.
        names: layer names from the top down, e.g. ``("conv3", "conv2")``.
        frames: name -> the :class:`Frame` of that layer's input map (for lesson 05's DigitNet:
            ``Frame.block(DigitNet.strides[name])``).
    """
    missing = [n for n in names if n not in frames]
    if missing:
        raise ValueError(f"frames: no frame for {missing}")
    return [layer_level(model.get_submodule(n), layer_input(model, n, image), frames[n]) for n in names]


class StackedSamples(NamedTuple):
    """What :func:`stacked_sampling_locations` returns.

    ``points[d]`` ``[K**(d+1), 2]``: (row, column) image pixels of the sampling points found through the top
    d + 1 layers, the K children of a point of level d - 1 together; ``weights[d]`` ``[K**(d+1)]``: the product of
    their amplitudes Δm_k (1 for plain and DCNv1 layers); ``centre`` ``[2]``: the unit itself in image pixels.
    """

    points: list[np.ndarray]
    weights: list[np.ndarray]
    centre: np.ndarray


def _read_field(level: Level, uy: np.ndarray, ux: np.ndarray, interpolation: str, group: int
                ) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """Offsets ``[K, n, 2]`` and mask ``[K, n]`` (or None) of ``level`` at fractional output units (uy, ux)."""
    _, k, _, ho, wo = level.offset.shape
    field = level.offset[group].reshape(2 * k, ho, wo)
    if level.mask is not None:
        field = np.concatenate([field, level.mask[group]], axis=0)
    if interpolation == "bilinear":
        values = bilinear_sample(field, np.clip(uy, 0, ho - 1), np.clip(ux, 0, wo - 1))  # [C, n]
    else:
        iy = np.clip(np.rint(uy), 0, ho - 1).astype(int)
        ix = np.clip(np.rint(ux), 0, wo - 1).astype(int)
        values = field[:, iy, ix]
    offsets = values[: 2 * k].reshape(k, 2, -1).transpose(0, 2, 1)
    mask = None if level.mask is None else values[2 * k:]
    return offsets, mask


def stacked_sampling_locations(
    levels: Sequence[Level], unit: tuple[int, int], interpolation: str = "bilinear", group: int = 0
) -> StackedSamples:
    """The sampling points of unit ``unit = (y, x)`` of ``levels[0]``, followed down the stack (DCNv1 Fig. 5-6).

    The rule at each level (fractional units, border continuation, strides, dilations) is the module docstring's.

    Args:
        levels: the layers from the top down (:func:`model_levels` or :func:`layer_level`).
        unit: (row, column) on the output grid of ``levels[0]``.
        interpolation: ``"bilinear"`` (default) or ``"nearest"``: how a layer's offsets are read at a fractional unit.
        group: the offset group followed.

    Returns:
        :class:`StackedSamples`: 9, 81, 729 ... points for a stack of 3x3 layers.
    """
    if len(levels) < 1:
        raise ValueError("levels: expected at least one Level")
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation: expected one of {INTERPOLATIONS}, got {interpolation!r}")
    for i, lv in enumerate(levels):
        if not isinstance(lv, Level):
            raise TypeError(f"levels[{i}]: expected a Level, got {type(lv).__name__}")
        if not 0 <= group < lv.offset.shape[0]:
            raise ValueError(f"group: expected 0 <= group < {lv.offset.shape[0]} (offset groups of levels[{i}]), "
                             f"got {group!r}")
    top = levels[0]
    ho, wo = top.offset.shape[-2:]
    y, x = (int(v) for v in unit)
    if not (0 <= y < ho and 0 <= x < wo):
        raise ValueError(f"unit: expected (y, x) on the {ho}x{wo} output grid of levels[0], got {tuple(unit)!r}")
    cy, cx = top.out_frame.to_pixel(y, x)
    uy, ux = np.array([y], dtype=np.float64), np.array([x], dtype=np.float64)
    weights = np.ones(1)
    points = np.array([[float(cy), float(cx)]])
    out_points, out_weights = [], []
    for depth, lv in enumerate(levels):
        if depth > 0:
            uy, ux = lv.out_frame.from_pixel(points[:, 0], points[:, 1])
        offsets, mask = _read_field(lv, uy, ux, interpolation, group)
        positions = _regular(lv.geometry, uy, ux) + offsets  # [K, n, 2] in the layer's input map
        points = lv.frame.points_to_pixel(positions).transpose(1, 0, 2).reshape(-1, 2)
        m = np.ones_like(offsets[..., 0]) if mask is None else mask  # [K, n]
        weights = (weights[None, :] * m).T.reshape(-1)
        out_points.append(points)
        out_weights.append(weights)
    return StackedSamples(out_points, out_weights, np.array([float(cy), float(cx)]))


# --------------------------------------------------------------------------------------------- RoI bins
class RoIBins(NamedTuple):
    """The bins of one RoI of (deformable) RoI pooling in image pixels (``imshow`` coordinates).

    ``boxes [ph, pw, 4]``: (y0, x0, y1, x1) edges of each bin after its move; ``samples [ph, pw, n, 2]``: its
    (row, column) bilinear sample points (n = samples per bin); ``shift [ph, pw, 2]``: its move (Δy, Δx).
    """

    boxes: np.ndarray
    samples: np.ndarray
    shift: np.ndarray


def roi_bin_locations(
    roi: Any,
    offset: Any = None,
    output_size: Any = 3,
    spatial_scale: float = 1.0,
    sampling_ratio: int = 0,
    gamma: float = 0.1,
) -> RoIBins:
    """Where the bins of deformable RoI pooling (DCNv1 Eq. 6, Fig. 7) sit for one RoI, in image pixels.

    Bin (i, j) of the aligned RoI rule (README conventions) moves by
    ``Δp_ij = γ·(offset[1, i, j]·h, offset[0, i, j]·w)`` (Δy, Δx) feature pixels (offsets normalised, x first);
    its samples are those of :func:`dcn_lessons.reference.roi.bin_samples`. Feature coordinates are mapped to
    the image with ``Frame.block(1 / spatial_scale)`` (corner x1 -> ``x1 - 0.5``, the left edge of pixel x1).

    Args:
        roi: ``(x1, y1, x2, y2)`` or ``(batch_index, x1, y1, x2, y2)``, input-image pixels.
        offset: ``[2, ph, pw]`` normalised offsets (a row of ``[K, 2, ph, pw]``), or None for zeros.
        output_size: ``ph`` or ``(ph, pw)``.
        spatial_scale, sampling_ratio, gamma: as :func:`dcn_lessons.ops.deform_roi_pool`, with its defaults
            (``sampling_ratio`` <= 0: adaptive, ceil(bin size) samples per side; pass 2 for a lighter drawing).
    """
    r = np.asarray(roi.detach().cpu() if isinstance(roi, Tensor) else roi, dtype=np.float64).reshape(-1)
    if r.size == 4:
        r = np.concatenate([[0.0], r])
    if r.size != 5 or not np.all(np.isfinite(r)) or r[3] < r[1] or r[4] < r[2]:
        raise ValueError(f"roi: expected finite (x1, y1, x2, y2) with x1 <= x2, y1 <= y2 (optionally a batch index "
                         f"first), got {roi!r}")
    ph, pw = (output_size, output_size) if isinstance(output_size, int) else tuple(int(v) for v in output_size)
    if ph < 1 or pw < 1:
        raise ValueError(f"output_size: expected >= 1, got {output_size!r}")
    if not spatial_scale > 0:
        raise ValueError(f"spatial_scale: expected > 0, got {spatial_scale!r}")
    off = np.zeros((2, ph, pw)) if offset is None else np.asarray(
        offset.detach().cpu() if isinstance(offset, Tensor) else offset, dtype=np.float64)
    if off.shape != (2, ph, pw):
        raise ValueError(f"offset: expected shape [2, ph, pw] = [2, {ph}, {pw}], got {list(off.shape)}")
    geo = roi_geometry(r, (ph, pw), spatial_scale, sampling_ratio, True)
    frame = Frame.block(1.0 / spatial_scale)
    shift = gamma * np.stack([off[1] * geo.height, off[0] * geo.width], axis=-1)  # [ph, pw, 2] feature pixels
    bin_h, bin_w = geo.height / ph, geo.width / pw
    n = max(geo.grid_h * geo.grid_w, 0)
    samples = np.zeros((ph, pw, n, 2))
    corners = np.zeros((ph, pw, 4))
    for i in range(ph):
        for j in range(pw):
            dy, dx = shift[i, j]
            pts = list(bin_samples(geo, i, j, (ph, pw), dy, dx))
            if pts:
                samples[i, j] = frame.points_to_pixel(np.array(pts))
            y0, x0 = geo.y_start + dy + i * bin_h, geo.x_start + dx + j * bin_w
            corners[i, j] = [y0, x0, y0 + bin_h, x0 + bin_w]
    # edges: a feature edge e maps to the image edge stride*e + origin as a coordinate does (the frame is affine)
    ey0, ex0 = frame.to_pixel(corners[..., 0], corners[..., 1])
    ey1, ex1 = frame.to_pixel(corners[..., 2], corners[..., 3])
    return RoIBins(np.stack([ey0, ex0, ey1, ex1], axis=-1), samples, shift / spatial_scale)


@torch.no_grad()
def roi_pack_offsets(pack: DeformRoIPoolPack, features: Tensor, rois: Any) -> tuple[Tensor, Optional[Tensor]]:
    """The normalised offsets ``[K, 2, ph, pw]`` (and, for a modulated pack, masks ``[K, 1, ph, pw]``, else None)
    that ``pack`` predicts for ``rois`` on ``features``: read from its own forward pass with hooks on its
    ``offset_fc`` / ``mask_fc`` branches, so nothing of the pack's rule is written twice."""
    if not isinstance(pack, DeformRoIPoolPack):
        raise TypeError(f"pack: expected a DeformRoIPoolPack or ModulatedDeformRoIPoolPack, got {type(pack).__name__}")
    seen: dict[str, Tensor] = {}
    branches = {"offset": pack.offset_fc}
    if isinstance(pack, ModulatedDeformRoIPoolPack):
        branches["mask"] = pack.mask_fc
    handles = [m.register_forward_hook(lambda mod, args, out, key=key: seen.__setitem__(key, out.detach()))
               for key, m in branches.items()]
    try:
        pack(features, rois)
    finally:
        for h in handles:
            h.remove()
    ph, pw = pack.output_size
    offset = seen["offset"].view(-1, 2, ph, pw)
    mask = seen["mask"].view(-1, 1, ph, pw) if "mask" in seen else None
    return offset, mask
