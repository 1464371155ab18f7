"""Lesson 03's explorer: the offsets of lesson 00 plus a modulation scalar Δm_k per kernel point.

DCNv2 (arXiv 1811.11168) Eq. (1): ``y(p) = sum_k w_k · x(p + p_k + Δp_k) · Δm_k`` with Δm_k in [0, 1].

Left: the sampling points around one output location; a point's area is proportional to its Δm_k, so a
switched-off sample (Δm_k = 0) disappears. Middle: the modulated deformable convolution applied with the
same offsets and amplitudes at every location of the photo. Right: the *effective* weights w_k · Δm_k --
modulation multiplies each weight by its own amplitude, so the kernel that is actually applied changes
while the learned weights w_k do not.
"""
from __future__ import annotations

from typing import Any

import ipywidgets as widgets
import numpy as np

from dcn_lessons.widgets.tour import KERNELS, OffsetExplorer


class ModulationExplorer(OffsetExplorer):
    """:class:`~dcn_lessons.widgets.tour.OffsetExplorer` with an ``amplitude`` slider for the selected point.

    Controls: those of ``OffsetExplorer`` (``point``, ``dy``, ``dx``, ``scale``, ``rotation``, ``kernel``) and
    ``amplitude`` -- the modulation scalar Δm_k in [0, 1] of the point chosen with ``point``. Selecting another
    point shows its stored amplitude (as ``dy``/``dx`` show its stored offsets).

    Args:
        image: grayscale ``[H, W]`` photo (default: the camera man at 96 px).
        center: the output location drawn in the left panel (default: the middle).
        amplitude: the starting Δm_k of every point; 0.5 is a fresh DCNv2 layer (sigmoid(0)), 1.0 is DCNv1.

    Attributes tested headlessly: :attr:`amplitudes` ``[9]`` (the mask in use), :attr:`offsets`,
    :attr:`points` ``[9, 2]``, :attr:`response` ``[H, W]``, :attr:`effective` ``[3, 3]`` (w_k · Δm_k, drawn
    in the right panel as :attr:`weight_image`), :attr:`sizes` ``[9]`` (marker areas of the points).
    """

    def __init__(self, image: np.ndarray | None = None, center: tuple[int, int] | None = None,
                 amplitude: float = 1.0) -> None:
        if not 0.0 <= float(amplitude) <= 1.0:
            raise ValueError(f"amplitude: expected a modulation scalar in [0, 1], got {amplitude!r}")
        self._start_amplitude = float(amplitude)
        super().__init__(image, center)

    def setup(self) -> None:
        # the amplitude control joins the controls before FigureExplorer observes them and lays them out
        self.controls["amplitude"] = widgets.FloatSlider(
            value=self._start_amplitude, min=0.0, max=1.0, step=0.05, description="Δm_k", continuous_update=True,
            readout_format=".2f", style={"description_width": "60px"},
        )
        self.amplitudes[:] = self._start_amplitude
        self.fig.set_size_inches(11.0, 4.0)
        super().setup()
        gs = self.fig.add_gridspec(1, 3, width_ratios=[1.0, 1.0, 0.75])
        self.ax_crop.set_subplotspec(gs[0, 0])
        self.ax_resp.set_subplotspec(gs[0, 1])
        self.ax_crop.set_title("sampling points (area ∝ Δm_k)", fontsize=9)
        self.ax_resp.set_title("response of the modulated deformable conv", fontsize=9)
        ax = self.ax_weights = self.fig.add_subplot(gs[0, 2])
        self.weight_image = ax.imshow(np.zeros((3, 3)), cmap="RdBu_r", vmin=-1, vmax=1)
        self.weight_text = [[ax.text(j, i, "", ha="center", va="center", fontsize=8) for j in range(3)]
                            for i in range(3)]
        ax.set_title("effective weights w_k · Δm_k", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])

    def _on_change(self, change: dict[str, Any]) -> None:
        owner = change["owner"]
        if owner is self.controls["point"]:
            # show the stored amplitude of the newly selected point (no redraw, no store)
            held = self._hold
            self._hold = self._syncing = True
            self.controls["amplitude"].value = float(self.amplitudes[change["new"]])
            self._hold, self._syncing = held, False
        elif owner is self.controls["amplitude"] and not self._syncing:
            self.amplitudes[self.controls["point"].value] = self.controls["amplitude"].value
        super()._on_change(change)

    def update(self, amplitude: float, **values: Any) -> None:  # type: ignore[override]
        self.amplitudes[values["point"]] = amplitude
        super().update(**values)  # offsets, points, sizes and the response (mask = self.amplitudes)
        self.sizes = np.asarray(self.scatter.get_sizes(), dtype=np.float64)
        w = KERNELS[values["kernel"]]
        self.effective = w * self.amplitudes.reshape(3, 3)
        lim = float(np.abs(w).max())
        self.weight_image.set_data(self.effective)
        self.weight_image.set_clim(-lim, lim)
        for k in range(9):
            i, j = divmod(k, 3)
            text = self.weight_text[i][j]
            text.set_text(f"{self.effective[i, j] + 0.0:+.2f}\n= {w[i, j]:+.2f} × {self.amplitudes[k]:.2f}")
            dark = abs(self.effective[i, j]) > 0.6 * lim
            text.set_color("white" if dark else "black")
            text.set_fontweight("bold" if k == values["point"] else "normal")
