r"""Effective dilation of deformable filters, grouped by object size (DCNv1 §4, Table 2).

DCNv1 quantifies how far apart a deformable filter's samples spread: the *effective dilation* of a filter at an
output unit is the mean distance between its adjacent sampling locations. For a 3x3 kernel the adjacent pairs
are the 12 pairs of grid neighbours (6 along rows, 6 along columns), and with positions
``P_ij = p0 + (i, j)·dilation + Δp_ij`` (DCNv1 Eq. 2)::

    effective_dilation(p0) = mean over adjacent (a, b) of ‖P_a - P_b‖₂

so a zero-offset filter of dilation d has effective dilation exactly d (a scaled grid, s·d). Table 2 reports its
mean ± std over the filters whose centre (the output unit p0, placed in the image by the output map's
:class:`~dcn_lessons.analysis.frames.Frame`) lies on a small, medium or large object, or on the background.

Object sizes use COCO's area ranges (small up to 32² pixels, medium up to 96², large above) scaled by the image
area over COCO's 640x480, so that "small" keeps meaning the same fraction of the picture on small images: the rule
the detector's evaluation uses, :func:`dcn_lessons.detection.synthetic.coco_area_ranges`, with its bucket rule
:func:`~dcn_lessons.detection.synthetic.area_bucket` (an area on a threshold goes to the smaller bucket). Pass
explicit ``area_ranges`` for any other split. An object's area is its mask's pixel count when masks are given
(COCO's ``area`` field), otherwise its box's ``w·h``. A centre that lies on several objects counts for the smallest
of them (the most specific); a centre on none is background.

Distances are in the layer's input-map pixels (the unit of its offsets); multiply by the input map's stride for
image pixels.
"""
from __future__ import annotations

from typing import Any, Mapping, NamedTuple, Optional, Sequence

import numpy as np

from dcn_lessons.analysis.frames import Frame, LayerGeometry
from dcn_lessons.reference.deform_conv import deform_sampling_positions

__all__ = [
    "CATEGORIES",
    "effective_dilation",
    "object_size_labels",
    "DilationStats",
    "dilation_by_object_size",
    "format_dilation_table",
]

#: the four groups of DCNv1 Table 2, in the order of the labels of :func:`object_size_labels` (0, 1, 2, 3)
CATEGORIES = ("background", "small", "medium", "large")


def effective_dilation(offset: Any, kernel_size: Any = 3, dilation: Any = 1) -> np.ndarray:
    """Mean distance between adjacent sampling locations of each filter (DCNv1 Table 2), ``[N, G, Ho, Wo]``.

    Args:
        offset: ``[N, 2*G*kh*kw, Ho, Wo]`` (channel 2k = Δy, 2k+1 = Δx), NumPy or torch.
        kernel_size, dilation: of the layer (the positions follow the convention's rule; stride and padding
            shift every point of a filter equally and do not change distances).

    Returns:
        float64 ``[N, G, Ho, Wo]``: the mean over the ``kh*(kw-1) + kw*(kh-1)`` adjacent pairs of the Euclidean
        distance between their positions, in input-map pixels. A 1x1 kernel has no pairs: ValueError.
    """
    off = np.asarray(offset.detach().cpu() if hasattr(offset, "detach") else offset, dtype=np.float64)
    py, px = deform_sampling_positions(off, kernel_size, 1, 0, dilation)  # [N, G, K, Ho, Wo]
    n, g, k, ho, wo = py.shape
    kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else tuple(kernel_size)
    if kh * kw == 1:
        raise ValueError("kernel_size: a 1x1 kernel has no adjacent sampling locations")
    pos = np.stack([py, px], axis=-1).reshape(n, g, kh, kw, ho, wo, 2)
    dists = []
    if kw > 1:
        dists.append(np.linalg.norm(pos[:, :, :, 1:] - pos[:, :, :, :-1], axis=-1).reshape(n, g, -1, ho, wo))
    if kh > 1:
        dists.append(np.linalg.norm(pos[:, :, 1:] - pos[:, :, :-1], axis=-1).reshape(n, g, -1, ho, wo))
    return np.concatenate(dists, axis=2).mean(axis=2)


def object_size_labels(
    centres: Any,
    image_size: tuple[int, int],
    boxes: Any = None,
    masks: Any = None,
    area_ranges: Optional[Mapping[str, Sequence[float]]] = None,
) -> np.ndarray:
    """The Table 2 group of each point: 0 background, 1 small, 2 medium, 3 large (:data:`CATEGORIES`).

    Args:
        centres: ``[..., 2]`` (row, column) image pixels (``imshow`` coordinates: pixel centres at integers).
        image_size: (H, W) of the image.
        boxes: ``[M, 4]`` (x1, y1, x2, y2) corners in pixels (COCO/torchvision style: pixel column c spans
            [c, c + 1)), or None. A point (y, x) is inside when ``x1 <= x + 0.5 < x2`` and ``y1 <= y + 0.5 < y2``.
        masks: ``[M, H, W]`` boolean object masks, or None; a point is inside when its nearest pixel is set.
            When both are given, masks decide membership and area, boxes are ignored.
        area_ranges: ``{"small": [0, a_s], "medium": [a_s, a_l], "large": [a_l, inf]}`` (the form of
            :func:`~dcn_lessons.detection.synthetic.coco_area_ranges`); default: COCO's scaled to ``image_size``.

    Returns:
        int ``[...]`` labels.
    """
    c = np.asarray(centres, dtype=np.float64)
    if c.ndim < 1 or c.shape[-1] != 2:
        raise ValueError(f"centres: expected shape [..., 2] (row, column), got {list(c.shape)}")
    h, w = (int(v) for v in image_size)
    if h < 1 or w < 1:
        raise ValueError(f"image_size: expected (H, W) >= 1, got {image_size!r}")
    from dcn_lessons.detection.synthetic import area_bucket, coco_area_ranges  # the detector's own rule

    ranges = coco_area_ranges(h * w) if area_ranges is None else area_ranges
    if not all(k in ranges for k in ("small", "medium")) or not 0 <= ranges["small"][1] <= ranges["medium"][1]:
        raise ValueError(f"area_ranges: expected {{'small': [0, a_s], 'medium': [a_s, a_l], ...}} with "
                         f"0 <= a_s <= a_l, got {area_ranges!r}")
    flat = c.reshape(-1, 2)
    best_area = np.full(len(flat), np.inf)
    if masks is not None:
        m = np.asarray(masks).astype(bool)
        if m.ndim != 3 or m.shape[1:] != (h, w):
            raise ValueError(f"masks: expected [M, {h}, {w}] booleans, got {list(m.shape)}")
        iy = np.clip(np.rint(flat[:, 0]), 0, h - 1).astype(int)
        ix = np.clip(np.rint(flat[:, 1]), 0, w - 1).astype(int)
        inside_image = (flat[:, 0] > -0.5) & (flat[:, 0] < h - 0.5) & (flat[:, 1] > -0.5) & (flat[:, 1] < w - 0.5)
        for obj in m:
            inside = obj[iy, ix] & inside_image
            best_area = np.where(inside, np.minimum(best_area, float(obj.sum())), best_area)
    elif boxes is not None:
        b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4) if np.size(boxes) else np.zeros((0, 4))
        if np.any(b[:, 2] < b[:, 0]) or np.any(b[:, 3] < b[:, 1]):
            raise ValueError("boxes: expected rows (x1, y1, x2, y2) with x1 <= x2 and y1 <= y2")
        ex, ey = flat[:, 1] + 0.5, flat[:, 0] + 0.5
        for x1, y1, x2, y2 in b:
            inside = (x1 <= ex) & (ex < x2) & (y1 <= ey) & (ey < y2)
            best_area = np.where(inside, np.minimum(best_area, (x2 - x1) * (y2 - y1)), best_area)
    index = {name: i for i, name in enumerate(CATEGORIES)}
    labels = np.array([0 if np.isinf(a) else index[area_bucket(float(a), ranges)] for a in best_area], dtype=int)
    return labels.reshape(c.shape[:-1])


class DilationStats(NamedTuple):
    """Mean, standard deviation and number of filters of one group (NaN mean/std when the group is empty)."""

    mean: float
    std: float
    count: int


def dilation_by_object_size(
    offsets: Sequence[Any],
    geometry: LayerGeometry,
    frame: Frame,
    image_size: tuple[int, int],
    boxes: Optional[Sequence[Any]] = None,
    masks: Optional[Sequence[Any]] = None,
    area_ranges: Optional[Mapping[str, Sequence[float]]] = None,
    group: Optional[int] = None,
) -> dict[str, DilationStats]:
    """DCNv1 Table 2 for one layer: effective dilation statistics by where each filter's centre lies.

    Args:
        offsets: one offset field per image, each ``[2*G*K, Ho, Wo]`` or ``[1, 2*G*K, Ho, Wo]`` (or one array
            ``[N, 2*G*K, Ho, Wo]``).
        geometry: the layer's :class:`~dcn_lessons.analysis.frames.LayerGeometry`.
        frame: the frame of the layer's *input* map; output unit u lies at ``frame.after(geometry).to_pixel(u)``.
        image_size: (H, W) of the images.
        boxes: per image, ``[M, 4]`` (x1, y1, x2, y2), or None; masks: per image ``[M, H, W]``, or None.
        area_ranges: as :func:`object_size_labels` (default: COCO's scaled to ``image_size``).
        group: one offset group, or None to pool all groups.

    Returns:
        ``{category: DilationStats}`` for every name of :data:`CATEGORIES`.
    """
    fields = [np.asarray(o.detach().cpu() if hasattr(o, "detach") else o, dtype=np.float64) for o in offsets]
    fields = [f for arr in fields for f in (arr if arr.ndim == 4 else arr[None])]
    n = len(fields)
    for name, per in (("boxes", boxes), ("masks", masks)):
        if per is not None and len(per) != n:
            raise ValueError(f"{name}: expected one entry per image ({n}), got {len(per)}")
    out_frame = frame.after(geometry)
    values: dict[int, list[np.ndarray]] = {i: [] for i in range(len(CATEGORIES))}
    for i, f in enumerate(fields):
        d = effective_dilation(f[None], geometry.kernel_size, geometry.dilation)[0]  # [G, Ho, Wo]
        if group is not None:
            d = d[group:group + 1]
        ho, wo = d.shape[-2:]
        uy, ux = np.meshgrid(np.arange(ho), np.arange(wo), indexing="ij")
        cy, cx = out_frame.to_pixel(uy, ux)
        labels = object_size_labels(np.stack([cy, cx], axis=-1), image_size,
                                    None if boxes is None else boxes[i], None if masks is None else masks[i],
                                    area_ranges)
        for c in range(len(CATEGORIES)):
            values[c].append(d[:, labels == c].ravel())
    stats = {}
    for c, name in enumerate(CATEGORIES):
        v = np.concatenate(values[c]) if values[c] else np.zeros(0)
        stats[name] = DilationStats(float(v.mean()) if v.size else float("nan"),
                                    float(v.std()) if v.size else float("nan"), int(v.size))
    return stats


def format_dilation_table(rows: Mapping[str, Mapping[str, DilationStats]]) -> str:
    """A plain-text table in DCNv1 Table 2's layout: one row per layer name, ``mean ± std`` per category."""
    cols = ("small", "medium", "large", "background")
    cells = [[layer] + [("-" if stats[c].count == 0 else f"{stats[c].mean:.2f} ± {stats[c].std:.2f} (n={stats[c].count})")
                        for c in cols] for layer, stats in rows.items()]
    table = [["layer", *cols], *cells]
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    return "\n".join("  ".join(cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(zip(r, widths)))
                     for r in table)
