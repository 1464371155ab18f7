"""What a trained detector sees: detections drawn on images, with the learned sampling points of deformable
convolutions and the bins of deformable RoI pooling (DCNv1 Fig. 5-7) for each detection.

:func:`predict` runs the model on one image (resized to the config's test size, as evaluation does) and, in
the same forward pass, records with hooks the inputs of the layers to look at; nothing of the model's rules is
written here again:

* **sampling points** of a stack of deformable layers (DCNv1 Fig. 6): for the unit of the top layer under the
  centre of a detection, :func:`dcn_lessons.analysis.layer_level` reads each layer's predicted offsets (and DCNv2
  masks) from its own offset branch, :func:`dcn_lessons.analysis.stacked_sampling_locations` follows them down
  (9 points for one 3x3 layer, 81 for two, 729 for three), drawn with
  :func:`dcn_lessons.analysis.draw.draw_stacked` (dot area = product of the masks). A ResNet map at stride s has
  its feature p centred on image pixel ``s*p`` (:class:`dcn_lessons.analysis.Frame` ``(s, 0)``); s is read
  from the map's size;
* **RoI bins** of deformable (modulated) RoI pooling (DCNv1 Fig. 7): the offsets the head's
  :class:`~dcn_lessons.ops.DeformRoIPoolPack` predicts for the detection's box
  (:func:`dcn_lessons.analysis.roi_pack_offsets`), placed by :func:`dcn_lessons.analysis.roi_bin_locations` and
  drawn with :func:`dcn_lessons.analysis.draw.draw_roi_bins`.

A plain config has neither: the figure then shows the detections only. Everything is drawn in the pixels of
the image the model was given; boxes are also returned in the file's pixels.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from dcn_lessons.detection.checkpoint import atomic_write

__all__ = ["IMAGE_SUFFIXES", "Prediction", "image_files", "read_image", "predict", "default_layers", "draw_prediction",
           "save_prediction"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def image_files(inputs: Sequence[str | os.PathLike]) -> list[Path]:
    """The image files named by ``inputs``: files as given, folders' images (:data:`IMAGE_SUFFIXES`, sorted, not
    recursive). A path that does not exist, or no image at all, is an error naming it."""
    out: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())
            if not found:
                raise FileNotFoundError(f"{p}: no image files in this folder ({', '.join(IMAGE_SUFFIXES)})")
            out.extend(found)
        elif p.is_file():
            out.append(p)
        else:
            raise FileNotFoundError(f"{p}: no such file or folder")
    if not out:
        raise FileNotFoundError("inputs: no image given")
    return out


def read_image(path: str | os.PathLike) -> Tensor:
    """``[3, H, W]`` float32 in [0, 1] (RGB) from an image file; an unreadable file is an error naming it."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise ValueError(f"{path}: cannot read the image ({e})") from e
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


@dataclass
class Prediction:
    """One image's detections and what the instruments read.

    Attributes:
        image: ``[3, h, w]`` the image as the model saw it (resized).
        boxes, scores, labels: detections kept (``score >= score_thresh``), boxes ``[n, 4]`` in ``image``'s pixels.
        boxes_original: the same boxes in the file's pixels.
        samples: per detection, a :class:`~dcn_lessons.analysis.StackedSamples` (empty without deformable layers).
        bins: per detection, a :class:`~dcn_lessons.analysis.RoIBins` (empty without deformable RoI pooling).
        layers: the names of the layers followed, top down.
    """

    image: Tensor
    boxes: Tensor
    scores: Tensor
    labels: Tensor
    boxes_original: Tensor
    samples: list
    bins: list
    layers: list


def default_layers(model: nn.Module, depth: int = 3) -> list[str]:
    """The last ``depth`` deformable convolutions of ``model``'s backbone, top down (DCNv1 Fig. 6 stacks three)."""
    from dcn_lessons.models import deformable_layer_names

    return list(reversed(deformable_layer_names(model)))[:depth]


def _capture(model: nn.Module, names: Sequence[str], extra: Optional[nn.Module]) -> tuple[dict, list]:
    """Forward pre-hooks that keep the first input of each layer ``names`` (and of ``extra`` as ``"__pool__"``)."""
    seen: dict[str, Any] = {}

    def keep(key: str):
        def hook(module: nn.Module, args: tuple) -> None:  # returns None: the inputs are left as they are
            seen.setdefault(key, args[0].detach())
        return hook

    handles = [model.get_submodule(n).register_forward_pre_hook(keep(n)) for n in names]
    if extra is not None:
        handles.append(extra.register_forward_pre_hook(keep("__pool__")))
    return seen, handles


@torch.no_grad()
def predict(model: nn.Module, image: Tensor, test_size: int, max_size: int, score_thresh: float = 0.5,
            layers: Optional[Sequence[str]] = None, max_detections: int = 10) -> Prediction:
    """Detect on one image and read the deformable instruments for each kept detection (module docstring).

    Args:
        model: a :class:`~dcn_lessons.detection.model.DeformableFasterRCNN` (run in eval mode, put back after).
        image: ``[3, H, W]`` in [0, 1].
        test_size, max_size: the resize of evaluation (the config's ``[input]``).
        score_thresh: detections below this score are not kept.
        layers: deformable conv layers to follow, top down (default :func:`default_layers`; ``[]``: none).
        max_detections: at most this many detections (the best) are kept.
    """
    from dcn_lessons.analysis import Frame, layer_level, roi_bin_locations, roi_pack_offsets, stacked_sampling_locations
    from dcn_lessons.detection.coco import RandomResize, boxes_to_original
    from dcn_lessons.ops import DeformRoIPoolPack

    if not isinstance(image, Tensor) or image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"image: expected [3, H, W], got {getattr(image, 'shape', type(image).__name__)}")
    layers = default_layers(model) if layers is None else list(layers)
    for n in layers:
        try:
            model.get_submodule(n)
        except AttributeError:
            raise ValueError(f"layers: the model has no layer {n!r} (its deformable layers: "
                             f"{default_layers(model, 100)})") from None
    h0, w0 = image.shape[1:]
    target = {"boxes": torch.zeros(0, 4), "size": torch.tensor([h0, w0]), "orig_size": torch.tensor([h0, w0]),
              "flipped": False}
    x, target = RandomResize((test_size,), max_size)(image, target, np.random.default_rng(0))
    pool = getattr(getattr(model, "roi_head", None), "pool", None)
    pack = pool if isinstance(pool, DeformRoIPoolPack) else None
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    seen, handles = _capture(model, layers, pack)
    try:
        (det,) = model(x[None].to(device), target["size"][None].to(device))
    finally:
        for hd in handles:
            hd.remove()
        model.train(was_training)
    keep = (det["scores"] >= score_thresh).nonzero().flatten()[:max_detections]
    boxes, scores = (det[k][keep].float().cpu() for k in ("boxes", "scores"))
    labels = det["labels"][keep].long().cpu()
    samples, bins = [], []
    h, w = x.shape[1:]
    levels = []
    for n in layers:
        feat = seen[n]
        frame = Frame((h / feat.shape[-2], w / feat.shape[-1]), 0.0)  # ResNet maps: feature p centred on s*p
        levels.append(layer_level(model.get_submodule(n), feat[:1], frame))
    for b in boxes:
        cy, cx = float(b[1] + b[3]) / 2 - 0.5, float(b[0] + b[2]) / 2 - 0.5  # box edges -> pixel-centre coordinates
        if levels:
            top = levels[0]
            uy, ux = top.out_frame.from_pixel(cy, cx)
            _, _, _, ho, wo = top.offset.shape
            unit = (int(np.clip(np.rint(uy), 0, ho - 1)), int(np.clip(np.rint(ux), 0, wo - 1)))
            samples.append(stacked_sampling_locations(levels, unit))
        if pack is not None:
            rois = torch.cat([torch.zeros(1), b]).view(1, 5).to(device, seen["__pool__"].dtype)
            offset, _ = roi_pack_offsets(pack, seen["__pool__"][:1], rois)
            bins.append(roi_bin_locations(rois[0].cpu(), offset[0].cpu(), pack.output_size, pack.spatial_scale,
                                          pack.sampling_ratio, pack.gamma))
    return Prediction(x, boxes, scores, labels, boxes_to_original(boxes, target), samples, bins, layers)


def draw_prediction(pred: Prediction, label_names: Sequence[str], title: str = "", size: float = 4.0):
    """A figure of one :class:`Prediction`: the detections, then (when the model has them) the stacked sampling
    points of each detection and its deformable RoI bins. Returns a matplotlib ``Figure`` (no pyplot state)."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    from dcn_lessons.analysis.draw import draw_image, draw_roi_bins, draw_stacked

    panels = 1 + bool(pred.samples) + bool(pred.bins)
    fig = Figure(figsize=(size * panels, size + 0.4))
    axes = np.atleast_1d(fig.subplots(1, panels))
    colours = [f"C{k % 10}" for k in range(len(pred.boxes))]
    for ax in axes:
        draw_image(ax, pred.image)
    for (x1, y1, x2, y2), s, lab, c in zip(pred.boxes.tolist(), pred.scores.tolist(), pred.labels.tolist(), colours):
        # boxes are in pixel edges; imshow puts pixel (i, j) at (j, i): edge x is at x - 0.5
        axes[0].add_patch(Rectangle((x1 - 0.5, y1 - 0.5), x2 - x1, y2 - y1, fill=False, color=c, lw=1.5))
        axes[0].text(x1 - 0.5, y1 - 0.5, f"{label_names[lab - 1]} {s:.2f}", color="white", fontsize=7, va="bottom",
                     bbox=dict(facecolor=c, alpha=0.8, pad=0.5, lw=0))
    axes[0].set_title(f"{len(pred.boxes)} detection(s)", fontsize=9)
    k = 1
    if pred.samples:
        for st, c in zip(pred.samples, colours):
            top = max(float(np.max(st.weights[-1])), 1e-3)  # DCNv2's mask products are small: scale to the largest
            draw_stacked(axes[k], st, color=c, size=(8.0 if len(st.points) > 2 else 30.0) / top)
        depth = len(pred.layers)
        axes[k].set_title(f"sampling points of {depth} deformable layer(s)\n(top: {pred.layers[0]})", fontsize=8)
        k += 1
    if pred.bins:
        for b, c in zip(pred.bins, colours):
            draw_roi_bins(axes[k], b, color=c, samples=False)
        axes[k].set_title("deformable RoI pooling bins", fontsize=9)
    h, w = pred.image.shape[1:]
    for ax in axes:
        ax.set_xlim(-0.5, w - 0.5)
        ax.set_ylim(h - 0.5, -0.5)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.94) if title else None)
    return fig


def save_prediction(fig: Any, path: str | os.PathLike, dpi: int = 100) -> Path:
    """Write the figure as a PNG atomically."""
    return atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=dpi))
