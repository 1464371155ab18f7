"""Lesson 00's explorer: move the nine sampling points of a 3x3 kernel over a photo.

Left: a crop of the photo around one output location, the regular grid R (hollow) and the
deformed sampling points p0 + p_k + Δp_k (filled, DCNv1 Eq. 2). Right: the response of a
3x3 deformable convolution over the whole photo when every output location uses the same
offsets -- with a horizontal-edge kernel, rotating the sampling grid by 90 degrees turns it into
a vertical-edge detector; scaling it widens the receptive field (DCNv1 Fig. 1).
"""
from __future__ import annotations

from typing import Any

import ipywidgets as widgets
import numpy as np

from dcn_lessons.data import photo
from dcn_lessons.geometry import constant_offset_field, kernel_grid, transform_offsets
from dcn_lessons.widgets.base import FigureExplorer

#: 3x3 kernels the explorer can apply, as (name -> weights) with weights row-major.
KERNELS: dict[str, np.ndarray] = {
    "horizontal edges (Sobel)": np.array([[-1.0, -2.0, -1.0], [0.0, 0.0, 0.0], [1.0, 2.0, 1.0]]) / 4.0,
    "blur (mean)": np.full((3, 3), 1.0 / 9.0),
}


class OffsetExplorer(FigureExplorer):
    """Sliders for the offsets of a 3x3 kernel; the plot follows live.

    Controls: ``point`` (which kernel point 0..8 the ``dy``/``dx`` sliders move), ``dy``, ``dx``,
    ``scale`` and ``rotation`` (global transforms of the whole grid, DCNv1 Fig. 1 c-d) and
    ``kernel`` (what the response panel convolves with).

    Attributes tested headlessly: :attr:`offsets` ``[9, 2]`` (Δy, Δx) in use, :attr:`points`
    ``[9, 2]`` sampling positions drawn, :attr:`response` ``[H, W]`` the right panel's image.
    """

    def __init__(self, image: np.ndarray | None = None, center: tuple[int, int] | None = None) -> None:
        self.photo = photo("camera", size=96) if image is None else np.asarray(image, dtype=np.float64)
        if self.photo.ndim != 2:
            raise ValueError(f"image: expected a grayscale [H, W] array, got shape {list(self.photo.shape)}")
        h, w = self.photo.shape
        self.center = (h // 2, w // 2) if center is None else center
        self.manual = np.zeros((9, 2))  # per-point offsets set with dy/dx
        #: per-point amplitudes Δm_k (DCNv2 Eq. 1) used as the mask; all ones is DCNv1. Subclasses
        #: (lesson 03) add controls for them; drawn as the size of the sampling points.
        self.amplitudes = np.ones(9)
        self._syncing = False
        slider = dict(continuous_update=True, readout_format=".1f", style={"description_width": "60px"})
        controls = {
            "point": widgets.IntSlider(value=0, min=0, max=8, description="point k", continuous_update=True),
            "dy": widgets.FloatSlider(value=0.0, min=-4.0, max=4.0, step=0.1, description="Δy", **slider),
            "dx": widgets.FloatSlider(value=0.0, min=-4.0, max=4.0, step=0.1, description="Δx", **slider),
            "scale": widgets.FloatSlider(value=1.0, min=0.5, max=4.0, step=0.1, description="scale", **slider),
            "rotation": widgets.FloatSlider(value=0.0, min=-90.0, max=90.0, step=5.0, description="rotate°", **slider),
            "kernel": widgets.Dropdown(options=list(KERNELS), value=next(iter(KERNELS)), description="kernel"),
        }
        super().__init__(controls, figsize=(8.0, 4.0))

    def setup(self) -> None:
        ax_crop, ax_resp = self.fig.subplots(1, 2)
        self.ax_crop, self.ax_resp = ax_crop, ax_resp
        cy, cx = self.center
        r = 8
        self.crop_box = (cy - r, cy + r, cx - r, cx + r)
        ax_crop.imshow(self.photo, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax_crop.set_xlim(cx - r - 0.5, cx + r + 0.5)
        ax_crop.set_ylim(cy + r + 0.5, cy - r - 0.5)
        grid = kernel_grid(3) - 1.0 + np.array(self.center, dtype=np.float64)
        ax_crop.scatter(grid[:, 1], grid[:, 0], s=60, facecolors="none", edgecolors="tab:blue", label="regular grid R")
        self.scatter = ax_crop.scatter(grid[:, 1], grid[:, 0], s=40, c="tab:orange", label="p0 + p_k + Δp_k")
        self.highlight = ax_crop.scatter([grid[0, 1]], [grid[0, 0]], s=160, facecolors="none", edgecolors="red")
        ax_crop.legend(loc="lower left", fontsize=7)
        ax_crop.set_title("sampling points around one output", fontsize=9)
        self.resp_image = ax_resp.imshow(np.zeros_like(self.photo), cmap="RdBu_r", vmin=-0.5, vmax=0.5)
        ax_resp.set_title("response of the deformable conv", fontsize=9)
        for ax in (ax_crop, ax_resp):
            ax.set_xticks([])
            ax.set_yticks([])

    def _on_change(self, change: dict[str, Any]) -> None:
        owner = change["owner"]
        if owner is self.controls["point"]:
            # show the stored offsets of the newly selected point without redrawing twice
            dy, dx = self.manual[change["new"]]
            held, self._hold, self._syncing = self._hold, True, True
            try:
                self.controls["dy"].value, self.controls["dx"].value = float(dy), float(dx)
            finally:
                self._hold, self._syncing = held, False
        elif owner in (self.controls["dy"], self.controls["dx"]) and not self._syncing:
            k = self.controls["point"].value
            self.manual[k] = (self.controls["dy"].value, self.controls["dx"].value)
        super()._on_change(change)

    def update(self, point: int, dy: float, dx: float, scale: float, rotation: float, kernel: str) -> None:
        from dcn_lessons.reference import deform_conv2d

        self.manual[point] = (dy, dx)
        self.offsets = transform_offsets(3, scale=scale, rotation_deg=rotation) + self.manual
        self.points = kernel_grid(3) - 1.0 + np.array(self.center, dtype=np.float64) + self.offsets
        self.scatter.set_offsets(self.points[:, ::-1])
        self.scatter.set_sizes(40.0 * np.clip(self.amplitudes, 0.02, None))
        self.highlight.set_offsets(self.points[point : point + 1, ::-1])
        h, w = self.photo.shape
        field = constant_offset_field(self.offsets, 1, h, w)
        mask = np.broadcast_to(self.amplitudes[None, :, None, None], (1, 9, h, w))
        weight = KERNELS[kernel].reshape(1, 1, 3, 3)
        self.response = deform_conv2d(self.photo[None, None], field, weight, padding=1, mask=mask)[0, 0]
        self.resp_image.set_data(self.response)
        lim = max(1e-6, float(np.abs(self.response).max()))
        self.resp_image.set_clim(-lim if kernel.startswith("horizontal") else 0.0, lim)
