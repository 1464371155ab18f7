"""The detector's boundary: its inputs checked once, and the images normalised.

:class:`~dcn_lessons.detection.model.DeformableFasterRCNN` calls :func:`check_inputs` first thing in ``forward``;
nothing after it checks again (the RoI layers only check the shapes of the RoIs the model made itself and, on
the CPU, their values). Every error names the argument (``images``, ``sizes``, ``targets[i]['boxes']``, ...)
and what was expected.

Values are read on the host only where they live there (CPU tensors, the usual case: the data loader's output).
For tensors already on a GPU the value checks are device-side assertions (``torch._assert_async``), which do not
stall the GPU; a failure then surfaces, with the same message, at a later synchronisation.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
from torch import Tensor

from dcn_lessons._validate.tensors import FLOAT_DTYPES, check_tensor

__all__ = ["check_inputs", "normalize_images", "BOX_TOLERANCE"]

#: A target box may overshoot its image by this many pixels (rounding) and still be accepted.
BOX_TOLERANCE = 1e-3


def _require(ok: Tensor, message: str) -> None:
    """Raise ValueError(message) unless ``ok`` (a bool tensor) is all True; on a GPU, a device-side assertion."""
    if ok.device.type == "cpu":
        if not bool(ok.all()):
            raise ValueError(message)
    else:
        torch._assert_async(ok.all(), message)


def _first_bad(ok: Tensor) -> Optional[int]:
    """Index of the first False row of ``ok [n]`` (CPU only, for the message)."""
    bad = (~ok).nonzero()
    return int(bad[0, 0]) if bad.numel() else None


def _check_images(images: Any) -> tuple[int, int, int]:
    check_tensor("images", images, dtypes=FLOAT_DTYPES)
    if images.ndim != 4 or images.shape[1] != 3 or images.shape[0] < 1 or min(images.shape[2:]) < 1:
        raise ValueError(f"images: expected a batch [B, 3, H, W] of RGB images (B, H, W >= 1), "
                         f"got shape {list(images.shape)}")
    return int(images.shape[0]), int(images.shape[2]), int(images.shape[3])


def _check_sizes(sizes: Any, b: int, h: int, w: int) -> Tensor:
    if isinstance(sizes, (list, tuple)):
        try:
            sizes = torch.as_tensor(sizes, dtype=torch.int64)
        except (TypeError, ValueError):
            raise ValueError(f"sizes: expected {b} pairs (h, w) of ints, got {sizes!r}") from None
    if not isinstance(sizes, Tensor) or sizes.dtype.is_floating_point or sizes.dtype == torch.bool \
            or sizes.is_complex():
        raise TypeError(f"sizes: expected an integer tensor [B, 2] of (h, w) (or a list of pairs), got "
                        f"{getattr(sizes, 'dtype', type(sizes).__name__)}")
    if tuple(sizes.shape) != (b, 2):
        raise ValueError(f"sizes: expected shape [{b}, 2] (one (h, w) per image), got {list(sizes.shape)}")
    limit = torch.tensor([h, w], device=sizes.device)
    ok = (sizes >= 1) & (sizes <= limit)
    if sizes.device.type == "cpu" and not bool(ok.all()):
        r = _first_bad(ok.all(1))
        raise ValueError(f"sizes: row {r} = {sizes[r].tolist()}; expected 1 <= h <= {h} and 1 <= w <= {w} "
                         f"(the padded batch is {h} x {w})")
    _require(ok, f"sizes: expected 1 <= h <= {h} and 1 <= w <= {w} for every image")
    return sizes.to(torch.int64)


def _check_targets(targets: Sequence[Any], b: int, h: int, w: int, num_classes: int) -> Tensor:
    if len(targets) != b:
        raise ValueError(f"targets: expected {b} target dicts (one per image), got {len(targets)}")
    sizes = []
    for i, t in enumerate(targets):
        name = f"targets[{i}]"
        if not isinstance(t, dict) or "boxes" not in t or "labels" not in t:
            raise ValueError(f"{name}: expected a dict with 'boxes' [n, 4] and 'labels' [n] (and optionally "
                             f"'size' (h, w)), got {type(t).__name__ if not isinstance(t, dict) else sorted(t)}")
        if "size" in t:
            size = torch.as_tensor(t["size"]).reshape(-1)
            if size.numel() != 2:
                raise ValueError(f"{name}['size']: expected (h, w), got {t['size']!r}")
            sizes.append(size.to("cpu", torch.int64))
        else:
            sizes.append(torch.tensor([h, w]))
        boxes, labels = t["boxes"], t["labels"]
        check_tensor(f"{name}['boxes']", boxes)
        if boxes.ndim != 2 or boxes.shape[1] != 4:
            raise ValueError(f"{name}['boxes']: expected shape [n, 4] of (x1, y1, x2, y2), got {list(boxes.shape)}")
        if not isinstance(labels, Tensor) or labels.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
            raise TypeError(f"{name}['labels']: expected an integer tensor [n], got "
                            f"{getattr(labels, 'dtype', type(labels).__name__)}")
        if tuple(labels.shape) != (boxes.shape[0],):
            raise ValueError(f"{name}['labels']: expected shape [{boxes.shape[0]}] (one per box), got "
                             f"{list(labels.shape)}")
        sh, sw = (int(v) for v in sizes[-1]) if sizes[-1].device.type == "cpu" else (h, w)
        in_image = (boxes[:, 0] >= -BOX_TOLERANCE) & (boxes[:, 1] >= -BOX_TOLERANCE) \
            & (boxes[:, 2] <= sw + BOX_TOLERANCE) & (boxes[:, 3] <= sh + BOX_TOLERANCE)
        finite = torch.isfinite(boxes).all(1)
        positive = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        label_ok = (labels >= 1) & (labels <= num_classes)
        if boxes.device.type == "cpu":
            for ok, what in ((finite, "has a non-finite coordinate"),
                             (positive, "has zero or negative area; expected x1 < x2 and y1 < y2"),
                             (in_image, f"lies outside the image of size (h, w) = ({sh}, {sw}); expected "
                                        f"0 <= x1, x2 <= {sw}, 0 <= y1, y2 <= {sh}")):
                r = _first_bad(ok)
                if r is not None:
                    raise ValueError(f"{name}['boxes']: row {r} = {boxes[r].tolist()} {what}")
        else:
            _require(finite & positive & in_image, f"{name}['boxes']: expected finite boxes with x1 < x2, y1 < y2 "
                                                   f"inside the image")
        if labels.device.type == "cpu":
            r = _first_bad(label_ok)
            if r is not None:
                raise ValueError(f"{name}['labels']: entry {r} = {int(labels[r])}; expected a class in "
                                 f"1..{num_classes} (0 is the background, never a target)")
        else:
            _require(label_ok, f"{name}['labels']: expected classes in 1..{num_classes}")
    return _check_sizes(torch.stack(sizes), b, h, w)


def check_inputs(images: Any, targets_or_sizes: Any, num_classes: int, training: bool
                 ) -> tuple[Tensor, Optional[list]]:
    """Check a forward call's arguments once; return ``(sizes [B, 2] int64 on the images' device, targets or None)``.

    ``targets_or_sizes`` is either a list of ``B`` target dicts (``boxes [n, 4]`` float in input-image pixels,
    ``labels [n]`` int in 1..C, optional ``size`` (h, w): the image before padding, default the whole ``H x W``)
    or the sizes alone: ``[B, 2]`` (h, w) as an int tensor or a list of pairs. Training needs the targets.

    Raises TypeError/ValueError naming the argument: a wrong image shape or dtype; sizes outside ``1..H``,
    ``1..W``; a target box that is not finite, has zero or negative area or lies outside its image (beyond
    :data:`BOX_TOLERANCE`); a label outside ``1..C``.
    """
    b, h, w = _check_images(images)
    is_targets = isinstance(targets_or_sizes, (list, tuple)) and all(isinstance(t, dict) for t in targets_or_sizes) \
        and len(targets_or_sizes) > 0
    if training and not is_targets:
        raise ValueError(f"targets: in training mode the model takes model(images, targets) with a list of {b} "
                         f"target dicts ('boxes', 'labels'); got {type(targets_or_sizes).__name__} (for "
                         f"detections call model.eval() first and pass the sizes)")
    if is_targets:
        sizes = _check_targets(targets_or_sizes, b, h, w, num_classes)
        targets = list(targets_or_sizes)
    else:
        if targets_or_sizes is None:
            raise ValueError(f"sizes: expected the (h, w) of each of the {b} images before padding, [B, 2], or the "
                             f"targets; got None")
        sizes, targets = _check_sizes(targets_or_sizes, b, h, w), None
    return sizes.to(images.device, non_blocking=True), targets


def normalize_images(images: Tensor, sizes: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """``(images − mean) / std`` per channel, and 0 in each image's padding (beyond its ``(h, w)``).

    Shapes: ``images [B, 3, H, W]`` in [0, 1], ``sizes [B, 2]``, ``mean``/``std`` ``[3]`` -> ``[B, 3, H, W]``.
    Zeroing the padding makes it the mean colour whatever the collate padded with.
    """
    h, w = images.shape[-2:]
    rows = torch.arange(h, device=images.device)[None, :, None] < sizes[:, 0, None, None]
    cols = torch.arange(w, device=images.device)[None, None, :] < sizes[:, 1, None, None]
    x = (images - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
    return x * (rows & cols)[:, None].to(x.dtype)
