"""Lesson 08's explorer: the spatial support of one node, picked with sliders, in DCNv2 §2.1's three views.

For the node ``(y, x)`` of a feature map (the output of submodule ``output`` of each model), one column per model
(plain, DCNv1, DCNv2, ...) and one row per view, as DCNv2 Fig. 1-2 lay them out:

1. the **effective receptive field**, ``|∂r/∂I|`` over the image
   (:func:`~dcn_lessons.analysis.effective_receptive_field`);
2. the **effective sampling locations** of one layer, every sampling position ``p + p_k + Δp_k`` weighted by the
   gradient of the node with respect to it (:func:`~dcn_lessons.analysis.effective_sampling_locations`; a plain
   layer is viewed through its zero-offset deformable twin, so it shows its regular grid);
3. the **error-bounded saliency region**, the smallest square around the node whose masked image keeps the node's
   response within ``eps`` (:func:`~dcn_lessons.analysis.saliency_region`).

The views are the package's instruments, drawn with :mod:`dcn_lessons.analysis.draw`; this module only picks the
node, caches what it computed, and lays out the panels. Sliders choose the image and the node (ipywidgets' image
has no click event, so there is no click-to-pick; the sliders' readouts say which node is shown).
"""
from __future__ import annotations

from typing import Any, Mapping, Optional

import ipywidgets as widgets
import numpy as np
import torch
from torch import Tensor, nn

from dcn_lessons.analysis import (
    EffectiveSamples,
    Frame,
    Node,
    SaliencyRegion,
    effective_receptive_field,
    effective_sampling_locations,
    feature_map,
    node_response,
    saliency_region,
)
from dcn_lessons.analysis.draw import draw_heatmap, draw_image, draw_region, draw_weighted_points
from dcn_lessons.analysis.modalities import _eval_mode
from dcn_lessons.widgets.base import FigureExplorer

__all__ = ["VIEWS", "SupportExplorer", "node_support"]

#: The rows of the explorer, in order.
VIEWS = ("receptive field", "sampling locations", "saliency region")


def _image_driven(model: nn.Module, image: Tensor, node: Node, output: Optional[str], fill: float) -> bool:
    """Whether the node's response changes at all when the whole image is set to ``fill`` (else a region relative
    to that change is undefined, and every region reproduces the response)."""
    with _eval_mode(model), torch.no_grad():
        x = image[None] if image.ndim == 3 else image
        full = node_response(feature_map(model, x, output), node)
        empty = node_response(feature_map(model, torch.full_like(x, fill), output), node)
    return bool((full - empty).norm() > 0)


def node_support(
    model: nn.Module,
    image: Tensor,
    node: Any,
    output: Optional[str],
    frame: Frame,
    layer: Optional[str] = None,
    layer_frame: Optional[Frame] = None,
    eps: float = 0.1,
    relative_to: str = "masked",
    fill: float = 0.0,
) -> dict[str, Any]:
    """The three views of ``node`` for one model and one image, as the explorer draws them.

    Args:
        model: the network; image: ``[C, H, W]``; node: ``(y, x)`` on the map of ``output``.
        output: the submodule whose output holds the node (None: the model's output).
        frame: the :class:`~dcn_lessons.analysis.Frame` of that map (where the node lies in the image).
        layer, layer_frame: the layer whose effective sampling locations are shown and the frame of its input map
            (None: no sampling view).
        eps, relative_to, fill: of :func:`~dcn_lessons.analysis.saliency_region` (squares grown around the node's
            centre).

    Returns:
        ``{"centre": [2] image pixels, "erf": [H, W], "samples": EffectiveSamples or None, "region":
        SaliencyRegion or None}``; the region is None when the node's response does not depend on the image at all
        (``relative_to="masked"`` and masking the whole image changes nothing).
    """
    node = Node(*node)
    cy, cx = frame.to_pixel(node.y, node.x)
    centre = np.array([float(cy), float(cx)])
    out: dict[str, Any] = {"centre": centre}
    out["erf"] = effective_receptive_field(model, image, node, output)
    out["samples"] = None if layer is None else effective_sampling_locations(
        model, image, node, layer, layer_frame if layer_frame is not None else Frame(), output)
    region: Optional[SaliencyRegion] = None
    if relative_to != "masked" or _image_driven(model, image, node, output, fill):
        region = saliency_region(model, image, node, output, eps=eps, order="square", centre=(cy, cx), fill=fill,
                                 relative_to=relative_to)
    out["region"] = region
    return out


class SupportExplorer(FigureExplorer):
    """One column per model, one row per view (:data:`VIEWS`) of the node picked with the sliders.

    Args:
        models: name -> network (e.g. ``{"plain": ..., "v1": ..., "v2": ...}``), all taking ``images``.
        images: ``[n, C, H, W]``.
        output: submodule whose output map holds the nodes (None: the model's output), e.g. ``"bn3"``.
        frame: the :class:`~dcn_lessons.analysis.Frame` of that map.
        layer, layer_frame: the layer whose effective sampling locations are drawn and the frame of its input
            (None: the row shows nothing).
        node: the starting node; default the centre of the map.
        eps, relative_to, fill: of the saliency region.
        threshold: sampling locations weighing at most ``threshold`` times the largest are not drawn.

    Attributes tested headlessly (updated on every redraw): :attr:`node` ``(y, x)``, :attr:`centre` (image
    pixels), :attr:`support` (per model, what :func:`node_support` returned).
    """

    def __init__(
        self,
        models: Mapping[str, nn.Module],
        images: Tensor,
        output: Optional[str],
        frame: Frame,
        layer: Optional[str] = None,
        layer_frame: Optional[Frame] = None,
        node: Optional[tuple[int, int]] = None,
        eps: float = 0.1,
        relative_to: str = "masked",
        fill: float = 0.0,
        threshold: float = 0.01,
    ) -> None:
        if not models:
            raise ValueError("models: expected at least one model")
        for name, m in models.items():
            if not isinstance(m, nn.Module):
                raise TypeError(f"models[{name!r}]: expected an nn.Module, got {type(m).__name__}")
        if not isinstance(images, Tensor) or images.ndim != 4 or len(images) < 1:
            got = list(images.shape) if isinstance(images, Tensor) else type(images).__name__
            raise ValueError(f"images: expected a tensor [n, C, H, W] with n >= 1, got {got}")
        if not isinstance(frame, Frame):
            raise TypeError(f"frame: expected a dcn_lessons.analysis.Frame, got {type(frame).__name__}")
        if relative_to not in ("response", "masked"):
            raise ValueError(f"relative_to: expected 'response' or 'masked', got {relative_to!r}")
        self.models = dict(models)
        self.images = images
        self.output, self.frame = output, frame
        self.layer, self.layer_frame = layer, layer_frame
        self.eps, self.relative_to, self.fill, self.threshold = float(eps), relative_to, float(fill), float(threshold)
        first = next(iter(self.models.values()))
        with _eval_mode(first), torch.no_grad():
            _, _, mh, mw = feature_map(first, images[:1], output).shape
        self.map_size = (int(mh), int(mw))
        y0, x0 = node if node is not None else (mh // 2, mw // 2)
        self._cache: dict[tuple[str, int, int, int], dict[str, Any]] = {}
        self.node = (int(y0), int(x0))
        self.centre = np.zeros(2)
        self.support: dict[str, dict[str, Any]] = {}
        fs: dict[str, Any] = dict(continuous_update=False, style={"description_width": "60px"})
        controls = {
            "image": widgets.IntSlider(value=0, min=0, max=len(images) - 1, description="image", **fs),
            "y": widgets.IntSlider(value=int(y0), min=0, max=mh - 1, description="node y", **fs),
            "x": widgets.IntSlider(value=int(x0), min=0, max=mw - 1, description="node x", **fs),
        }
        super().__init__(controls, figsize=(2.7 * len(self.models), 2.7 * len(VIEWS)))

    def setup(self) -> None:
        axes = np.asarray(self.fig.subplots(len(VIEWS), len(self.models), squeeze=False))
        self.axes = {name: {view: axes[r, c] for r, view in enumerate(VIEWS)} for c, name in enumerate(self.models)}

    def _support(self, name: str, index: int, node: tuple[int, int]) -> dict[str, Any]:
        key = (name, index, *node)
        if key not in self._cache:
            self._cache[key] = node_support(self.models[name], self.images[index], node, self.output, self.frame,
                                            self.layer, self.layer_frame, self.eps, self.relative_to, self.fill)
        return self._cache[key]

    def update(self, image: int, y: int, x: int) -> None:
        index, self.node = int(image), (int(y), int(x))
        picture = self.images[index]
        for name, axes in self.axes.items():
            s = self._support(name, index, self.node)
            self.support[name] = s
            self.centre = s["centre"]
            for view, ax in axes.items():
                ax.clear()
                if view == "receptive field":
                    draw_heatmap(ax, s["erf"], picture)
                    title = f"{name}: ERF, {int((s['erf'] > 0).sum())} px > 0"
                elif view == "sampling locations":
                    draw_image(ax, picture)
                    samples: Optional[EffectiveSamples] = s["samples"]
                    if samples is None:
                        title = f"{name}: (no layer chosen)"
                    else:
                        draw_weighted_points(ax, samples.points, samples.weights, threshold=self.threshold)
                        top = float(samples.weights.max()) if samples.weights.size else 0.0
                        shown = int((samples.weights > self.threshold * top).sum()) if top > 0 else 0
                        title = f"{name}: {self.layer}, {shown} points"
                else:
                    region: Optional[SaliencyRegion] = s["region"]
                    if region is None:
                        draw_image(ax, picture)
                        title = f"{name}: response ignores the image"
                    else:
                        draw_region(ax, picture, region)
                        ax.contour(region.mask.astype(float), levels=[0.5], colors="cyan", linewidths=1)
                        title = f"{name}: region {int(region.mask.sum())} px, e = {region.error:.2f}"
                h, w = picture.shape[-2:]
                ax.set_xlim(-0.5, w - 0.5)
                ax.set_ylim(h - 0.5, -0.5)
                ax.scatter([self.centre[1]], [self.centre[0]], s=40, c="lime", edgecolors="k", zorder=4)
                ax.set_title(title, fontsize=8)
