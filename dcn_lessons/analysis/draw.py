"""Matplotlib drawing helpers for the instruments: each takes an ``Axes`` and what an instrument returned, draws
it in image pixel coordinates (``imshow``'s: pixel centres at integers) and returns the artists it made, so a
lesson or a widget can update them. No pyplot state is used.
"""
from __future__ import annotations

from typing import Any, Optional

import numpy as np
from matplotlib.axes import Axes
from matplotlib.patches import Rectangle

from dcn_lessons.analysis.modalities import SaliencyRegion
from dcn_lessons.analysis.sampling import RoIBins, StackedSamples

__all__ = ["draw_image", "draw_stacked", "draw_weighted_points", "draw_roi_bins", "draw_heatmap",
           "draw_region", "draw_offset_field"]


def draw_image(ax: Axes, image: Any, cmap: str = "gray") -> Any:
    """``image`` ``[H, W]``, ``[C, H, W]`` (1 or 3 channels) or ``[1, C, H, W]`` (array or tensor) with imshow,
    each channel stretched to [0, 1]; the axes' ticks are removed."""
    a = np.asarray(image.detach().cpu() if hasattr(image, "detach") else image, dtype=np.float64)
    a = a[0] if a.ndim == 4 else a
    if a.ndim == 3:
        a = a[0] if a.shape[0] == 1 else np.moveaxis(a, 0, -1)
    lo, hi = float(a.min()), float(a.max())
    a = (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
    ax.set_xticks([])
    ax.set_yticks([])
    return ax.imshow(a, cmap=cmap if a.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")


def draw_stacked(ax: Axes, stacked: StackedSamples, level: Optional[int] = None, color: str = "tab:red",
                 size: float = 12.0) -> list[Any]:
    """DCNv1 Fig. 6: the points of one level (default the deepest) as dots, area ∝ amplitude product, and the
    unit itself as a green dot."""
    d = len(stacked.points) - 1 if level is None else level
    pts, w = stacked.points[d], stacked.weights[d]
    dots = ax.scatter(pts[:, 1], pts[:, 0], s=size * np.maximum(w, 0.02), c=color, alpha=0.7, linewidths=0)
    centre = ax.scatter([stacked.centre[1]], [stacked.centre[0]], s=60, c="lime", edgecolors="k", zorder=3)
    return [dots, centre]


def draw_weighted_points(ax: Axes, points: np.ndarray, weights: np.ndarray, size: float = 40.0,
                         cmap: str = "autumn_r", threshold: float = 0.0) -> Any:
    """Points ``[n, 2]`` (row, column) coloured and sized by ``weights [n]`` normalised to their maximum
    (DCNv2's effective sampling locations); points with weight <= ``threshold`` · max are not drawn."""
    w = np.asarray(weights, dtype=np.float64)
    top = float(w.max()) if w.size else 0.0
    keep = w > threshold * top if top > 0 else np.zeros_like(w, dtype=bool)
    wn = w[keep] / top if top > 0 else w[keep]
    order = np.argsort(wn)  # strongest on top
    p = np.asarray(points)[keep][order]
    return ax.scatter(p[:, 1], p[:, 0], s=size * wn[order], c=wn[order], cmap=cmap, vmin=0, vmax=1, linewidths=0)


def draw_roi_bins(ax: Axes, bins: RoIBins, weights: Optional[np.ndarray] = None, color: str = "tab:orange",
                  samples: bool = True) -> list[Any]:
    """DCNv1 Fig. 7: every bin as a rectangle (opacity ∝ ``weights [ph, pw]`` normalised, when given: DCNv2's
    effective bin locations) and, optionally, its sample points."""
    ph, pw = bins.boxes.shape[:2]
    wn = None if weights is None else np.asarray(weights, dtype=np.float64) / max(float(np.max(weights)), 1e-300)
    artists: list[Any] = []
    for i in range(ph):
        for j in range(pw):
            y0, x0, y1, x1 = bins.boxes[i, j]
            if wn is None:
                rect = Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=color, linewidth=1.2)
            else:
                rect = Rectangle((x0, y0), x1 - x0, y1 - y0, facecolor=color, edgecolor=color, linewidth=1.2,
                                 alpha=0.1 + 0.6 * float(wn[i, j]))
            artists.append(ax.add_patch(rect))
    if samples and bins.samples.size:
        s = bins.samples.reshape(-1, 2)
        artists.append(ax.scatter(s[:, 1], s[:, 0], s=6, c=color, linewidths=0))
    return artists


def draw_heatmap(ax: Axes, values: np.ndarray, image: Any = None, cmap: str = "inferno", alpha: float = 0.7) -> Any:
    """A map ``[H, W]`` (e.g. an effective receptive field) normalised to its maximum, over ``image`` if given."""
    v = np.asarray(values, dtype=np.float64)
    if image is not None:
        draw_image(ax, image)
    top = float(v.max()) if v.size else 0.0
    ax.set_xticks([])
    ax.set_yticks([])
    return ax.imshow(v / top if top > 0 else v, cmap=cmap, vmin=0, vmax=1, alpha=alpha if image is not None else 1.0,
                     interpolation="nearest")


def draw_region(ax: Axes, image: Any, region: SaliencyRegion, dim: float = 0.25) -> Any:
    """The error-bounded saliency region: the image inside the region, dimmed to ``dim`` outside it."""
    a = np.asarray(image.detach().cpu() if hasattr(image, "detach") else image, dtype=np.float64)
    a = a[0] if a.ndim == 4 else a
    a = a[0] if a.ndim == 3 and a.shape[0] == 1 else (np.moveaxis(a, 0, -1) if a.ndim == 3 else a)
    lo, hi = float(a.min()), float(a.max())
    a = (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
    m = region.mask if a.ndim == 2 else region.mask[..., None]
    ax.set_xticks([])
    ax.set_yticks([])
    return ax.imshow(np.where(m, a, dim * a), cmap="gray" if a.ndim == 2 else None, vmin=0, vmax=1,
                     interpolation="nearest")


def draw_offset_field(ax: Axes, learned: np.ndarray, truth: Optional[np.ndarray] = None, step: int = 2,
                      valid: Optional[np.ndarray] = None, kernel_point: Optional[int] = None) -> list[Any]:
    """Quiver plot of offsets ``[K, 2, H, W]`` (or ``[2, H, W]``): learned in red, true in black (when given),
    every ``step``-th output, of one kernel point (default the centre one), only where ``valid [H, W]``."""
    def pick(a: np.ndarray) -> np.ndarray:
        a = np.asarray(a, dtype=np.float64)
        if a.ndim == 4:
            a = a[a.shape[0] // 2 if kernel_point is None else kernel_point]
        return a

    lv = pick(learned)
    h, w = lv.shape[-2:]
    yy, xx = np.meshgrid(np.arange(0, h, step), np.arange(0, w, step), indexing="ij")
    keep = np.ones_like(yy, dtype=bool) if valid is None else np.asarray(valid)[yy, xx]
    kw: dict[str, Any] = dict(angles="xy", scale_units="xy", scale=1.0, width=0.004)
    artists = []
    if truth is not None:
        tv = pick(truth)
        artists.append(ax.quiver(xx[keep], yy[keep], tv[1][yy, xx][keep], tv[0][yy, xx][keep], color="k",
                                 alpha=0.6, **kw))
    artists.append(ax.quiver(xx[keep], yy[keep], lv[1][yy, xx][keep], lv[0][yy, xx][keep], color="tab:red", **kw))
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim(h - 0.5, -0.5)
    ax.set_aspect("equal")
    return artists
