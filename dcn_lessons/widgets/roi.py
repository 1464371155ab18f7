"""Lesson 04's explorer: move a RoI and the bins of deformable RoI pooling over a photo.

Left: the photo, the RoI split into k x k bins (dashed: where the bins of plain RoI align sit), the
bins moved by their offsets (coloured) and their bilinear sample points. Middle: RoI align of the box
(DCNv1 Eq. 5, sampled). Right: deformable RoI pooling (DCNv1 Eq. 6) with the offsets set here.

The offsets are *normalised* (DCNv1 §2.2): bin (i, j) moves by Δp_ij = γ · Δp̂_ij ∘ (w, h) pixels,
so the same slider value moves a bin by the same fraction of the RoI whatever the RoI's size.
"""
from __future__ import annotations

from typing import Any

import ipywidgets as widgets
import numpy as np
from matplotlib.patches import Rectangle

from dcn_lessons.data import photo
from dcn_lessons.reference.roi import bin_samples, roi_geometry, deform_roi_pool, roi_align
from dcn_lessons.widgets.base import FigureExplorer


class RoIExplorer(FigureExplorer):
    """Sliders for a RoI box and the normalised offset of one of its bins; the plot follows live.

    Controls: ``x``, ``y``, ``w``, ``h`` (the box, in image pixels: corners (x, y) and (x + w, y + h)),
    ``bin`` (which bin, row-major index i·k + j, the ``ox``/``oy`` sliders move), ``ox``, ``oy``
    (its normalised offset Δp̂ = (Δp̂_x, Δp̂_y)) and ``gamma`` (γ, 0.1 in DCNv1).

    Attributes tested headlessly (updated on every redraw):
    :attr:`offset` ``[1, 2, k, k]`` normalised offsets in use (channel 0 = x, 1 = y, the package layout);
    :attr:`shift` ``[k, k, 2]`` the pixel displacement (Δy, Δx) of every bin;
    :attr:`samples` ``[k, k, n, 2]`` the (row, column) sample points drawn for every bin;
    :attr:`plain` and :attr:`pooled` ``[k, k]`` the middle and right panels
    (``roi_align`` and ``deform_roi_pool`` of the reference tier).
    """

    def __init__(
        self,
        image: np.ndarray | None = None,
        k: int = 3,
        box: tuple[float, float, float, float] | None = None,
        sampling_ratio: int = 2,
    ) -> None:
        self.photo = photo("chelsea", size=96) if image is None else np.asarray(image, dtype=np.float64)
        if self.photo.ndim != 2:
            raise ValueError(f"image: expected a grayscale [H, W] array, got shape {list(self.photo.shape)}")
        if not isinstance(k, int) or k < 1:
            raise ValueError(f"k: expected an int >= 1 (bins per side), got {k!r}")
        if not isinstance(sampling_ratio, int) or sampling_ratio < 1:
            raise ValueError(f"sampling_ratio: expected an int >= 1, got {sampling_ratio!r}")
        height, width = self.photo.shape
        self.k, self.sampling_ratio = k, sampling_ratio
        if box is None:
            box = (width * 0.3, height * 0.25, width * 0.4, height * 0.5)
        bx, by, bw, bh = (float(round(v)) for v in box)
        self.offset = np.zeros((1, 2, k, k))
        self._syncing = False
        style = {"description_width": "50px"}
        fs = dict(continuous_update=True, style=style)
        controls = {
            "x": widgets.FloatSlider(value=bx, min=0.0, max=float(width - 2), step=1.0, description="x", **fs),
            "y": widgets.FloatSlider(value=by, min=0.0, max=float(height - 2), step=1.0, description="y", **fs),
            "gamma": widgets.FloatSlider(value=0.1, min=0.0, max=0.5, step=0.01, description="γ", **fs),
            "w": widgets.FloatSlider(value=bw, min=2.0, max=float(width), step=1.0, description="w", **fs),
            "h": widgets.FloatSlider(value=bh, min=2.0, max=float(height), step=1.0, description="h", **fs),
            "bin": widgets.IntSlider(value=0, min=0, max=k * k - 1, description="bin i·k+j", **fs),
            "ox": widgets.FloatSlider(value=0.0, min=-3.0, max=3.0, step=0.05, description="Δp̂x", **fs),
            "oy": widgets.FloatSlider(value=0.0, min=-3.0, max=3.0, step=0.05, description="Δp̂y", **fs),
        }
        super().__init__(controls, figsize=(10.0, 3.8))

    # -- drawing -----------------------------------------------------------------------------
    def setup(self) -> None:
        k = self.k
        gs = self.fig.add_gridspec(1, 4)
        ax_img = self.fig.add_subplot(gs[0, :2])
        ax_plain, ax_def = self.fig.add_subplot(gs[0, 2]), self.fig.add_subplot(gs[0, 3])
        self.ax_img, self.ax_plain, self.ax_def = ax_img, ax_plain, ax_def
        ax_img.imshow(self.photo, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        height, width = self.photo.shape
        ax_img.set_xlim(-0.5, width - 0.5)
        ax_img.set_ylim(height - 0.5, -0.5)
        colours = [f"C{n % 10}" for n in range(k * k)]
        self.grid_patches = [
            ax_img.add_patch(Rectangle((0, 0), 1, 1, fill=False, ls="--", lw=0.8, ec="white")) for _ in range(k * k)
        ]
        self.bin_patches = [
            ax_img.add_patch(Rectangle((0, 0), 1, 1, fill=False, lw=1.3, ec=c)) for c in colours
        ]
        n = self.sampling_ratio**2
        self.sample_scatter = ax_img.scatter(np.zeros(k * k * n), np.zeros(k * k * n), s=6,
                                             c=np.repeat(colours, n), zorder=3)
        self.selected_patch = ax_img.add_patch(Rectangle((0, 0), 1, 1, fill=False, lw=2.5, ec="red", zorder=4))
        self.plain_image = ax_plain.imshow(np.zeros((k, k)), cmap="gray", vmin=0, vmax=1)
        self.pooled_image = ax_def.imshow(np.zeros((k, k)), cmap="gray", vmin=0, vmax=1)
        ax_plain.set_title("RoI align (Eq. 5)", fontsize=9)
        ax_def.set_title("deformable RoI pooling (Eq. 6)", fontsize=9)
        self.out_texts = [
            [ax.text(j, i, "", ha="center", va="center", color="yellow", fontsize=8) for i in range(k) for j in range(k)]
            for ax in (ax_plain, ax_def)
        ]
        self.out_marks = [
            ax.add_patch(Rectangle((-0.5, -0.5), 1, 1, fill=False, lw=2.5, ec="red")) for ax in (ax_plain, ax_def)
        ]
        for ax in (ax_img, ax_plain, ax_def):
            ax.set_xticks([])
            ax.set_yticks([])

    def _on_change(self, change: dict[str, Any]) -> None:
        owner = change["owner"]
        if owner is self.controls["bin"]:
            # show the stored offset of the newly selected bin without redrawing twice
            i, j = divmod(int(change["new"]), self.k)
            hold, self._hold, self._syncing = self._hold, True, True
            self.controls["ox"].value = float(self.offset[0, 0, i, j])
            self.controls["oy"].value = float(self.offset[0, 1, i, j])
            self._hold, self._syncing = hold, False
        elif owner in (self.controls["ox"], self.controls["oy"]) and not self._syncing:
            i, j = divmod(int(self.controls["bin"].value), self.k)
            self.offset[0, :, i, j] = (self.controls["ox"].value, self.controls["oy"].value)
        super()._on_change(change)

    def update(self, x: float, y: float, w: float, h: float, bin: int, ox: float, oy: float, gamma: float) -> None:
        k, sr = self.k, self.sampling_ratio
        si, sj = divmod(int(bin), k)
        self.offset[0, :, si, sj] = (ox, oy)
        self.roi = np.array([[0.0, x, y, x + w, y + h]])
        feat = self.photo[None, None]
        self.plain = roi_align(feat, self.roi, k, sampling_ratio=sr, aligned=True)[0, 0]
        self.pooled = deform_roi_pool(feat, self.roi, self.offset, k, sampling_ratio=sr, gamma=gamma)[0, 0]
        # Δp_ij = γ · Δp̂_ij ∘ (w, h), stored as (Δy, Δx)
        self.shift = gamma * np.stack([self.offset[0, 1] * h, self.offset[0, 0] * w], axis=-1)
        r = roi_geometry(self.roi[0], (k, k), 1.0, sr, True)
        bin_h, bin_w = r.height / k, r.width / k
        self.samples = np.zeros((k, k, sr * sr, 2))
        for i in range(k):
            for j in range(k):
                dy, dx = self.shift[i, j]
                self.samples[i, j] = list(bin_samples(r, i, j, (k, k), dy, dx))
                top, left = r.y_start + i * bin_h, r.x_start + j * bin_w
                n = i * k + j
                self.grid_patches[n].set_bounds(left, top, bin_w, bin_h)
                self.bin_patches[n].set_bounds(left + dx, top + dy, bin_w, bin_h)
        self.selected_patch.set_bounds(*self.bin_patches[si * k + sj].get_bbox().bounds)
        self.sample_scatter.set_offsets(self.samples.reshape(-1, 2)[:, ::-1])
        self.plain_image.set_data(self.plain)
        self.pooled_image.set_data(self.pooled)
        for texts, values in zip(self.out_texts, (self.plain, self.pooled)):
            for text, v in zip(texts, values.ravel()):
                text.set_text(f"{v:.2f}")
        for mark in self.out_marks:
            mark.set_xy((sj - 0.5, si - 0.5))
        dy, dx = self.shift[si, sj]
        self.ax_img.set_title(
            f"bin ({si}, {sj}): Δp = γ·Δp̂∘(w, h) = (Δx, Δy) = ({dx:+.1f}, {dy:+.1f}) px\n"
            f"= ({dx / bin_w if bin_w else 0:+.2f}, {dy / bin_h if bin_h else 0:+.2f}) bin widths; dashed: no offset",
            fontsize=9,
        )
