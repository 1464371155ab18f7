"""Lesson 05's explorer: where the deformable layers of a trained digit classifier sample (DCNv1 Fig. 5-6).

DCNv1 Fig. 6 draws, for one activation unit of a deep layer, the sampling locations ``p0 + p_k + Δp_k``
(Eq. 2) of that layer and, below each of them, those of the layer underneath: 9 points for one 3x3 layer,
9·9 = 81 for two, 9^3 = 729 for the three layers of the figure (Fig. 5 is the schematic of the idea for two
layers). :func:`unit_samples` computes exactly that for a :class:`~dcn_lessons.training.DigitNet`, in image
pixels, with the layer maps of :func:`~dcn_lessons.training.image_sampling_locations`; a plain
(non-deformable) layer contributes its regular grid. For a modulated (DCNv2) layer each point also carries
its amplitude Δm_k, and a point found through two layers carries the product of the two.

:class:`SamplingExplorer` shows one panel per model (plain, v1, v2, ...) for the same digit and unit: the
regular grid (hollow grey), the learned points (filled; area ∝ amplitude for a v2 model) and the unit
itself (green). Controls pick the digit, the unit and how many layers to follow down.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import ipywidgets as widgets
import numpy as np
import torch
from torch import Tensor, nn

from dcn_lessons.ops.layers import DeformConv2dPack, ModulatedDeformConv2dPack
from dcn_lessons.training import (
    DigitNet,
    LayerSamples,
    feature_to_pixel,
    image_sampling_locations,
    make_model,
    pixel_to_feature,
)
from dcn_lessons.widgets.base import FigureExplorer

__all__ = ["layer_samples", "follow_unit", "unit_samples", "SamplingExplorer"]


def layer_samples(model: DigitNet, name: str, image: Tensor, regular: bool = False) -> LayerSamples:
    """Sampling locations of layer ``name`` for ``image`` in image pixels, for every unit of its output.

    A deformable layer gives :func:`~dcn_lessons.training.image_sampling_locations`; a plain ``nn.Conv2d``,
    or any layer when ``regular=True``, gives the regular grid (computed as the locations of a freshly built
    deformable layer, whose offsets are zero) and ``mask=None``. Shapes as in
    :class:`~dcn_lessons.training.LayerSamples`: ``[G, K, Ho, Wo]``.
    """
    layer = getattr(model, name, None)
    if not isinstance(layer, nn.Conv2d) and not isinstance(layer, DeformConv2dPack):
        raise ValueError(f"name: expected a convolution of the model (one of {sorted(model.strides)}), got {name!r}")
    if isinstance(layer, DeformConv2dPack) and not regular:
        return image_sampling_locations(model, name, image)
    return image_sampling_locations(make_model("v1", width=1, deform=(name,)), name, image)


def follow_unit(
    samples: Mapping[str, LayerSamples], unit: tuple[int, int], layers: Sequence[str],
    strides: Mapping[str, int] = DigitNet.strides,
) -> tuple[np.ndarray, np.ndarray]:
    """The sampling points of unit ``unit = (y, x)`` of ``layers[0]``, followed down ``layers``.

    Level 1: the K points of ``layers[0]`` for that unit. Each further layer replaces every point P by the K
    sampling points of its own output unit nearest to P, translated by P minus that unit's position, so that
    they are centred on P (DCNv1 Fig. 6 draws 9^3 points for three levels). The translation keeps the
    regular grid symmetric when P falls between two units, as it does behind a 2x2 max-pool; the offsets
    Δp_k are those of the nearest unit.

    Args:
        samples: layer name -> :class:`~dcn_lessons.training.LayerSamples` in image pixels (from
            :func:`layer_samples`), for every name in ``layers``.
        unit: (row, column) on the output grid of ``layers[0]``.
        layers: layer names from the top down, e.g. ``("conv3", "conv2")``.
        strides: image pixels per feature at each layer's input (``DigitNet.strides``).

    Returns:
        ``points [K**len(layers), 2]`` (row, column) in image pixels, the K children of a point together,
        and ``weights [K**len(layers)]``: the product over the levels of the amplitude Δm_k of each point
        (1 for plain and v1 layers). Offset group 0 is followed when a layer has several.
    """
    if len(layers) < 1:
        raise ValueError("layers: expected at least one layer name")
    missing = [n for n in layers if n not in samples]
    if missing:
        raise ValueError(f"samples: no sampling locations for {missing}")
    top = samples[layers[0]]
    _, _, ho, wo = top.py.shape
    y, x = unit
    if not (0 <= y < ho and 0 <= x < wo):
        raise ValueError(f"unit: expected (y, x) on the {ho}x{wo} output grid of {layers[0]}, got {tuple(unit)!r}")
    points = np.stack([top.py[0, :, y, x], top.px[0, :, y, x]], axis=1)
    weights = np.ones(len(points)) if top.mask is None else top.mask[0, :, y, x].astype(np.float64)
    for name in layers[1:]:
        below = samples[name]
        _, k, hb, wb = below.py.shape
        st = strides[name]
        uy, ux = pixel_to_feature(points[:, 0], st, hb), pixel_to_feature(points[:, 1], st, wb)
        centres = feature_to_pixel(np.stack([uy, ux], axis=1), st)  # [n, 2], the units below
        pattern = np.stack([below.py[0][:, uy, ux], below.px[0][:, uy, ux]], axis=2) - centres[None]  # [K, n, 2]
        children = points[None] + pattern  # the unit's sampling pattern, centred on the point itself
        m = np.ones((k, len(points))) if below.mask is None else below.mask[0][:, uy, ux]
        points = children.transpose(1, 0, 2).reshape(-1, 2)
        weights = (weights[None, :] * m).T.reshape(-1)
    return points, weights


def unit_samples(
    model: DigitNet, image: Tensor, unit: tuple[int, int], layers: Sequence[str] = ("conv3",), regular: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`follow_unit` on the layers of ``model`` for one ``image`` (``[1, S, S]`` or ``[1, 1, S, S]``);
    ``regular=True`` gives the regular grid of the same unit instead."""
    return follow_unit({n: layer_samples(model, n, image, regular) for n in layers}, unit, layers, model.strides)


class SamplingExplorer(FigureExplorer):
    """One panel per model: the sampling points of one unit of ``layer`` on one digit, DCNv1 Fig. 6 style.

    Controls: ``digit`` (index into ``images``), ``y`` and ``x`` (the unit on the output grid of ``layer``),
    ``levels`` (1: the points of ``layer``; 2: followed down through ``below`` as well).

    Args:
        models: name -> :class:`~dcn_lessons.training.DigitNet`, e.g. ``{"plain": ..., "v1": ..., "v2": ...}``.
        images: ``[n, 1, S, S]`` digits (e.g. ``geometric_digits(...).images``).
        labels: optional ``[n]`` labels for the titles.
        layer, below: the deformable layer drawn and the one under it (``"conv3"``, ``"conv2"``).
        unit: the starting unit; default the centre of the grid.

    Attributes tested headlessly (updated on every redraw): :attr:`points` and :attr:`weights` (per model
    name, as :func:`unit_samples` returns them), :attr:`sizes` (marker areas per model), :attr:`grid`
    (the regular grid of the same unit), :attr:`centre` (the unit in image pixels).
    """

    #: marker area of a point of amplitude 1 (a v1 point), by number of levels
    AREA = {1: 60.0, 2: 14.0}

    def __init__(
        self,
        models: Mapping[str, DigitNet],
        images: Tensor,
        labels: Tensor | None = None,
        layer: str = "conv3",
        below: str = "conv2",
        unit: tuple[int, int] | None = None,
    ) -> None:
        if not models:
            raise ValueError("models: expected at least one model")
        for name, m in models.items():
            if not isinstance(m, DigitNet):
                raise TypeError(f"models[{name!r}]: expected a DigitNet, got {type(m).__name__}")
        if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 1 or len(images) < 1:
            got = list(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise ValueError(f"images: expected a tensor [n, 1, S, S] with n >= 1, got {got}")
        for name in (layer, below):
            if name not in DigitNet.strides:
                raise ValueError(f"layer/below: expected names among {sorted(DigitNet.strides)}, got {name!r}")
        self.models = dict(models)
        self.images = images
        self.labels = labels
        self.layer, self.below = layer, below
        size = images.shape[-1]
        stride = DigitNet.strides[layer]
        self.grid_size = size // stride  # DigitNet's convs keep the size of their input (3x3, padding 1)
        cy, cx = unit if unit is not None else (self.grid_size // 2, self.grid_size // 2)
        self._caches: dict[tuple[str | None, int], dict[str, LayerSamples]] = {}  # (model name or None, digit)
        self.points: dict[str, np.ndarray] = {}
        self.weights: dict[str, np.ndarray] = {}
        self.sizes: dict[str, np.ndarray] = {}
        self.grid = np.zeros((0, 2))
        self.centre = np.zeros(2)
        fs: dict[str, Any] = dict(continuous_update=False, style={"description_width": "50px"})
        controls = {
            "digit": widgets.IntSlider(value=0, min=0, max=len(images) - 1, description="digit", **fs),
            "y": widgets.IntSlider(value=cy, min=0, max=self.grid_size - 1, description="unit y", **fs),
            "x": widgets.IntSlider(value=cx, min=0, max=self.grid_size - 1, description="unit x", **fs),
            "levels": widgets.ToggleButtons(options=[("1 layer", 1), ("2 layers", 2)], value=1,
                                            description="levels", style={"description_width": "50px"}),
        }
        super().__init__(controls, figsize=(3.3 * len(self.models), 3.6))

    def setup(self) -> None:
        axes = np.atleast_1d(self.fig.subplots(1, len(self.models)))
        self.axes = dict(zip(self.models, axes))
        self.digit_images, self.grid_scatters, self.scatters, self.centres = {}, {}, {}, {}
        empty = np.zeros((0, 2))
        for name, ax in self.axes.items():
            ax.set_facecolor("black")  # outside the image the input is 0 (DCNv1 Eq. 3)
            self.digit_images[name] = ax.imshow(np.zeros(self.images.shape[-2:]), cmap="gray", vmin=0, vmax=1)
            self.grid_scatters[name] = ax.scatter(empty[:, 1], empty[:, 0], s=20, facecolors="none",
                                                  edgecolors="0.6", linewidths=0.8)
            self.scatters[name] = ax.scatter(empty[:, 1], empty[:, 0], s=20, c="tab:red", alpha=0.8)
            self.centres[name] = ax.scatter([0.0], [0.0], s=70, c="lime", edgecolors="k", zorder=3)
            ax.set_xticks([])
            ax.set_yticks([])

    def _layer_samples(self, name: str | None, digit: int) -> dict[str, LayerSamples]:
        """The layer maps of model ``name`` (None: the regular grid) for one digit, computed once."""
        key = (name, digit)
        if key not in self._caches:
            model = self.models[name] if name is not None else next(iter(self.models.values()))
            self._caches[key] = {n: layer_samples(model, n, self.images[digit], regular=name is None)
                                 for n in (self.layer, self.below)}
        return self._caches[key]

    def update(self, digit: int, y: int, x: int, levels: int) -> None:
        digit, unit, layers = int(digit), (int(y), int(x)), (self.layer, self.below)[: int(levels)]
        image = self.images[digit, 0].numpy()
        size = image.shape[-1]
        stride = DigitNet.strides[self.layer]
        self.centre = feature_to_pixel(np.array(unit, dtype=np.float64), stride)
        self.grid, _ = follow_unit(self._layer_samples(None, digit), unit, layers)
        label = "" if self.labels is None else f", label {int(self.labels[digit])}"
        for name, ax in self.axes.items():
            pts, w = follow_unit(self._layer_samples(name, digit), unit, layers)
            self.points[name], self.weights[name] = pts, w
            self.sizes[name] = self.AREA[len(layers)] * np.maximum(w, 0.02)
            self.digit_images[name].set_data(image)
            self.grid_scatters[name].set_offsets(self.grid[:, ::-1])
            self.grid_scatters[name].set_sizes(np.full(len(self.grid), self.AREA[len(layers)]))
            self.scatters[name].set_offsets(pts[:, ::-1])
            self.scatters[name].set_sizes(self.sizes[name])
            self.centres[name].set_offsets(self.centre[None, ::-1])
            lo = min(-0.5, float(pts.min()) - 1.0, float(self.grid.min()) - 1.0)
            hi = max(size - 0.5, float(pts.max()) + 1.0, float(self.grid.max()) + 1.0)
            ax.set_xlim(lo, hi)
            ax.set_ylim(hi, lo)
            modulated = isinstance(getattr(self.models[name], self.layer), ModulatedDeformConv2dPack)
            ax.set_title(f"{name}: {len(pts)} points{', area ∝ Δm' if modulated else ''}{label}", fontsize=9)
