"""Lesson 01's explorer: drag a sampling point between pixels and watch its four bilinear weights.

Left: a small map, its pixels drawn at their integral positions q (DCNv1 Eq. 3 sums over them), the
sampling point p, its four neighbours floor(p) and floor(p)+1 with markers sized by their weight, and the
four rectangles that give the weights as areas: the weight of a corner is the area of the rectangle between
p and the *opposite* corner. An arrow shows the position gradient (d x(p)/dy, d x(p)/dx) -- the direction
in which a learned offset would move the point to raise the sampled value. Right: the four weights as
bars, the sampled value and the gradient.

Everything drawn comes from the package's reference functions (``bilinear_weights``,
``bilinear_sample``, ``bilinear_sample_backward``), with the boundary rules of the README's conventions: a corner off the
map reads 0, and outside ``-1 < y < H``, ``-1 < x < W`` value and gradient are 0.
"""
from __future__ import annotations

import ipywidgets as widgets
import numpy as np
from matplotlib.patches import Rectangle

from dcn_lessons.reference import bilinear_sample, bilinear_sample_backward, bilinear_weights
from dcn_lessons.widgets.base import FigureExplorer

#: corner names in the order of :class:`~dcn_lessons.reference.bilinear.BilinearWeights`, and their colours
CORNERS = ("w00", "w01", "w10", "w11")
COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:purple")

#: the default map: 4 x 5 values in [0, 1], with a bright spot and an edge so the gradient has somewhere to go
DEFAULT_MAP = np.array(
    [
        [0.1, 0.2, 0.3, 0.2, 0.1],
        [0.2, 0.5, 0.9, 0.6, 0.2],
        [0.1, 0.4, 0.7, 0.5, 0.1],
        [0.0, 0.1, 0.2, 0.1, 0.0],
    ]
)


class BilinearExplorer(FigureExplorer):
    """Sliders ``y`` and ``x`` move one sampling point over a small map; ``gradient`` toggles the arrow.

    Attributes tested headlessly (all for the current point): :attr:`point` ``(y, x)``; :attr:`corners`
    ``[4, 2]`` integer (row, column) of the neighbours in the order w00, w01, w10, w11; :attr:`weights`
    ``[4]``; :attr:`on_map` ``[4]`` bool (a corner off the map reads 0); :attr:`value` the sample
    x(p); :attr:`grad` ``(gy, gx)`` by the position rule; :attr:`inside` whether ``-1 < y < H`` and
    ``-1 < x < W``.
    """

    def __init__(self, image: np.ndarray | None = None, point: tuple[float, float] = (1.3, 2.6)) -> None:
        self.map = DEFAULT_MAP.copy() if image is None else np.asarray(image, dtype=np.float64)
        if self.map.ndim != 2 or min(self.map.shape) < 2:
            raise ValueError(f"image: expected a 2-D map [H, W] with H, W >= 2, got shape {list(self.map.shape)}")
        H, W = self.map.shape
        slider = dict(step=0.01, continuous_update=True, readout_format=".2f", style={"description_width": "40px"})
        controls = {
            "y": widgets.FloatSlider(value=float(point[0]), min=-1.5, max=H + 0.5, description="y (row)", **slider),
            "x": widgets.FloatSlider(value=float(point[1]), min=-1.5, max=W + 0.5, description="x (col)", **slider),
            "gradient": widgets.Checkbox(value=True, description="show position gradient"),
        }
        super().__init__(controls, figsize=(9.0, 3.8))

    def setup(self) -> None:
        H, W = self.map.shape
        ax, axb = self.fig.subplots(1, 2, width_ratios=[1.6, 1.0])
        self.ax_map, self.ax_bars = ax, axb
        ax.imshow(self.map, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest", alpha=0.55)
        ax.add_patch(Rectangle((-0.5, -0.5), W, H, fill=False, ls="--", lw=1.0, ec="0.3"))
        qy, qx = np.mgrid[0:H, 0:W]
        ax.scatter(qx.ravel(), qy.ravel(), s=6, c="k", zorder=3)
        for (i, j), v in np.ndenumerate(self.map):
            ax.text(j + 0.08, i - 0.12, f"{v:.2f}", fontsize=7, color="k", zorder=3)
        self.rects = [ax.add_patch(Rectangle((0, 0), 0, 0, color=c, alpha=0.5, lw=0, zorder=2)) for c in COLOURS]
        self.corner_artist = ax.scatter(np.zeros(4), np.zeros(4), s=np.ones(4), c=list(COLOURS), zorder=4,
                                        edgecolors="k", linewidths=0.6)
        self.labels = [ax.text(0, 0, "", fontsize=8, color=c, fontweight="bold", zorder=5) for c in COLOURS]
        self.point_artist = ax.scatter([0.0], [0.0], s=50, marker="X", c="red", zorder=6, label="p")
        self.arrow = ax.quiver([0.0], [0.0], [0.0], [0.0], angles="xy", scale_units="xy", scale=1.0, color="red",
                               width=0.012, zorder=6)
        ax.set_xlim(-1.6, W + 0.6)
        ax.set_ylim(H + 0.6, -1.6)
        ax.set_xticks(range(-1, W + 1))
        ax.set_yticks(range(-1, H + 1))
        ax.tick_params(labelsize=7)
        ax.grid(True, lw=0.3, alpha=0.5)
        ax.set_title("weight of a corner = area of the opposite rectangle; dashed: the map", fontsize=8)
        self.bars = axb.bar(range(4), np.zeros(4), color=list(COLOURS))
        axb.set_xticks(range(4), [f"{n}\n(y{n[1]}, x{n[2]})" for n in CORNERS], fontsize=8)
        axb.set_ylim(0.0, 1.05)
        axb.axhline(1.0, color="0.7", lw=0.5)
        self.info = axb.set_title("", fontsize=8, loc="left")

    def update(self, y: float, x: float, gradient: bool) -> None:
        H, W = self.map.shape
        py, px = np.array([float(y)]), np.array([float(x)])
        b = bilinear_weights(py, px)
        self.point = (float(y), float(x))
        self.corners = np.array([[b.y0[0], b.x0[0]], [b.y0[0], b.x1[0]], [b.y1[0], b.x0[0]], [b.y1[0], b.x1[0]]])
        self.weights = np.array([b.w00[0], b.w01[0], b.w10[0], b.w11[0]])
        self.on_map = (self.corners[:, 0] >= 0) & (self.corners[:, 0] < H) & (self.corners[:, 1] >= 0) & (
            self.corners[:, 1] < W)
        self.value = float(bilinear_sample(self.map, py, px)[0])
        _, gy, gx = bilinear_sample_backward(np.ones(1), self.map, py, px)
        self.grad = (float(gy[0]), float(gx[0]))
        self.inside = bool(-1 < y < H and -1 < x < W)

        # rectangles: corner k's weight is the area between p and the corner diagonally opposite to it
        for k, rect in enumerate(self.rects):
            oy, ox = self.corners[3 - k]
            rect.set_xy((min(x, ox), min(y, oy)))
            rect.set_width(abs(ox - x))
            rect.set_height(abs(oy - y))
        self.corner_artist.set_offsets(self.corners[:, ::-1].astype(float))
        self.corner_artist.set_sizes(20.0 + 300.0 * self.weights)
        faces = [c if ok else "white" for c, ok in zip(COLOURS, self.on_map)]
        self.corner_artist.set_facecolors(faces)
        for k, (lab, (cy, cx)) in enumerate(zip(self.labels, self.corners)):
            dy = -0.3 if k < 2 else 0.4
            lab.set_position((cx - 0.25, cy + dy))
            lab.set_text(f"{self.weights[k]:.2f}")
        self.point_artist.set_offsets([[x, y]])
        self.arrow.set_offsets([[x, y]])
        shown = self.grad if gradient else (0.0, 0.0)
        self.arrow.set_UVC([shown[1]], [shown[0]])
        for bar, w, ok in zip(self.bars, self.weights, self.on_map):
            bar.set_height(w)
            bar.set_hatch("" if ok else "///")
            bar.set_alpha(1.0 if ok else 0.35)
        where = "inside" if self.inside else "outside: value and gradient are 0"
        off = [n for n, ok in zip(CORNERS, self.on_map) if not ok]
        if off:
            where += f"\noff the map, reading 0 (hatched): {', '.join(off)}"
        self.info.set_text(
            f"p = ({y:.2f}, {x:.2f}): {where}\n"
            f"weights sum to {self.weights.sum():.2f};  x(p) = {self.value:.3f}\n"
            f"gradient (d/dy, d/dx) = ({self.grad[0]:+.3f}, {self.grad[1]:+.3f})"
        )
