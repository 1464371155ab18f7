"""Where a feature lies in the image: coordinate frames of feature maps, and the theoretical receptive field.

Every instrument of :mod:`dcn_lessons.analysis` draws over the *image*, but a layer samples its *input map*. A
:class:`Frame` is the affine map between the two, per axis::

    pixel = stride * p + origin        (p: a feature coordinate, pixel: an image pixel coordinate)

Image pixel coordinates are those ``imshow`` draws: pixel (i, j) is centred at row i, column j, so the image
spans [-0.5, H - 0.5]. Two families of networks occur in the course:

* maps made by *blocks* that summarise ``s x s`` pixels (the 2x2 max-pools of lesson 05's
  :class:`~dcn_lessons.training.DigitNet`): feature p is centred on its block, ``pixel = s*p + (s - 1)/2``
  (:meth:`Frame.block`, the same rule as :func:`dcn_lessons.training.feature_to_pixel`). It is also the rule of
  the aligned RoI family (a feature map at ``spatial_scale = 1/s``: corner ``x1`` maps to ``x1/s - 0.5``);
* maps made by *centred odd kernels* with "same" padding (a ResNet: 7x7/2 stem, 3x3/2 max-pool, 3x3 convs):
  feature p is centred at ``pixel = s*p`` (``Frame(s, 0)``).

:meth:`Frame.after` composes the rule of any window operation (a conv or pool of kernel k, stride s, padding p,
dilation d): output unit u is centred on input coordinate ``u*s - p + d*(k - 1)/2``, so any chain of layers
gives its frame exactly. :func:`receptive_field` is the classical theoretical receptive field of a unit of such a
chain (the support a plain network's effective receptive field cannot leave).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from dcn_lessons._validate.conv import as_pair

__all__ = ["Frame", "LayerGeometry", "receptive_field"]


def _positive_pair(name: str, value: Any) -> tuple[float, float]:
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
        value = (value, value)
    if not (isinstance(value, (tuple, list)) and len(value) == 2):
        raise TypeError(f"{name}: expected a number or a pair (h, w), got {value!r}")
    out = (float(value[0]), float(value[1]))
    if not all(np.isfinite(out)):
        raise ValueError(f"{name}: expected finite numbers, got {value!r}")
    return out


@dataclass(frozen=True)
class Frame:
    """The affine map from a feature map's coordinates to image pixels: ``pixel = stride * p + origin``.

    Args:
        stride: image pixels per feature, a number or (row, column) pair (> 0).
        origin: the image pixel of feature 0, a number or (row, column) pair.
    """

    stride: tuple[float, float] = (1.0, 1.0)
    origin: tuple[float, float] = (0.0, 0.0)

    def __init__(self, stride: Any = 1.0, origin: Any = 0.0) -> None:
        s = _positive_pair("stride", stride)
        if min(s) <= 0:
            raise ValueError(f"stride: expected > 0, got {stride!r}")
        object.__setattr__(self, "stride", s)
        object.__setattr__(self, "origin", _positive_pair("origin", origin))

    @classmethod
    def block(cls, stride: Any) -> "Frame":
        """The frame of a map whose feature p summarises the ``s x s`` block of pixels starting at ``s*p``:
        ``pixel = s*p + (s - 1)/2`` (:func:`dcn_lessons.training.feature_to_pixel`; the aligned RoI rule)."""
        s = _positive_pair("stride", stride)
        return cls(s, ((s[0] - 1) / 2, (s[1] - 1) / 2))

    def to_pixel(self, py: Any, px: Any) -> tuple[np.ndarray, np.ndarray]:
        """Feature coordinates (rows ``py``, columns ``px``, any shape) -> image pixels ``(y, x)``."""
        return (self.stride[0] * np.asarray(py, dtype=np.float64) + self.origin[0],
                self.stride[1] * np.asarray(px, dtype=np.float64) + self.origin[1])

    def from_pixel(self, y: Any, x: Any) -> tuple[np.ndarray, np.ndarray]:
        """Image pixels -> (fractional) feature coordinates, the inverse of :meth:`to_pixel`."""
        return ((np.asarray(y, dtype=np.float64) - self.origin[0]) / self.stride[0],
                (np.asarray(x, dtype=np.float64) - self.origin[1]) / self.stride[1])

    def points_to_pixel(self, points: Any) -> np.ndarray:
        """``[..., 2]`` (row, column) feature points -> ``[..., 2]`` image pixels."""
        p = np.asarray(points, dtype=np.float64)
        y, x = self.to_pixel(p[..., 0], p[..., 1])
        return np.stack([y, x], axis=-1)

    def after(self, kernel_size: Any = 1, stride: Any = 1, padding: Any = 0, dilation: Any = 1) -> "Frame":
        """The frame of the output of a window operation (conv or pool) applied to a map in this frame.

        ``kernel_size`` may be a :class:`LayerGeometry` (then the other arguments are ignored). Output unit u is
        centred on input coordinate ``u*stride - padding + dilation*(kernel_size - 1)/2`` (the centre of its
        regular grid, DCNv1 Eq. 1), so its frame has stride ``self.stride * stride`` and origin
        ``self.origin + self.stride * (dilation*(kernel_size - 1)/2 - padding)``.
        """
        g = kernel_size if isinstance(kernel_size, LayerGeometry) else LayerGeometry.of(kernel_size, stride, padding,
                                                                                      dilation)
        centre = [g.dilation[a] * (g.kernel_size[a] - 1) / 2 - g.padding[a] for a in range(2)]
        return Frame((self.stride[0] * g.stride[0], self.stride[1] * g.stride[1]),
                     (self.origin[0] + self.stride[0] * centre[0], self.origin[1] + self.stride[1] * centre[1]))


@dataclass(frozen=True)
class LayerGeometry:
    """Kernel size, stride, padding and dilation of one window operation, each an (h, w) pair."""

    kernel_size: tuple[int, int]
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)

    @classmethod
    def of(cls, kernel_size: Any, stride: Any = 1, padding: Any = 0, dilation: Any = 1) -> "LayerGeometry":
        """Build from ints or pairs (checked: kernel, stride, dilation >= 1, padding >= 0)."""
        k, s, p, d = (as_pair(n, v) for n, v in
                      (("kernel_size", kernel_size), ("stride", stride), ("padding", padding), ("dilation", dilation)))
        if min(k) < 1 or min(s) < 1 or min(d) < 1 or min(p) < 0:
            raise ValueError(f"kernel_size, stride, dilation must be >= 1 and padding >= 0, got "
                             f"{kernel_size!r}, {stride!r}, {dilation!r}, {padding!r}")
        return cls(k, s, p, d)

    @classmethod
    def of_module(cls, module: Any) -> "LayerGeometry":
        """The geometry of an ``nn.Conv2d``, a deformable conv of :mod:`dcn_lessons.ops` or an ``nn.MaxPool2d`` /
        ``nn.AvgPool2d`` (anything with ``kernel_size``, ``stride``, ``padding`` and optionally ``dilation``)."""
        try:
            return cls.of(module.kernel_size, module.stride, module.padding, getattr(module, "dilation", 1))
        except AttributeError as e:
            raise TypeError(f"module: expected a conv or pool layer with kernel_size/stride/padding, "
                            f"got {type(module).__name__}") from e


def receptive_field(
    layers: Sequence[LayerGeometry], unit: tuple[int, int], image_size: tuple[int, int] | None = None
) -> tuple[int, int, int, int]:
    """The theoretical receptive field of output ``unit = (y, x)`` of a chain of window operations.

    Going down one layer of kernel k, stride s, padding p, dilation d, the input rows that output rows
    ``[a, b]`` read are ``[a*s - p, b*s - p + d*(k - 1)]`` (DCNv1 Eq. 1, every kernel point); the chain applies
    this from the last layer to the first.

    Args:
        layers: the chain from the input upward (first layer first), as :class:`LayerGeometry`.
        unit: the output unit (row, column) of the last layer.
        image_size: (H, W) to clip the box to the image, or None (the box may then reach into the padding).

    Returns:
        ``(y0, y1, x0, x1)``, inclusive bounds in input pixels.
    """
    if len(layers) < 1:
        raise ValueError("layers: expected at least one LayerGeometry")
    y, x = (int(v) for v in unit)
    box = [y, y, x, x]
    for g in reversed(list(layers)):
        if not isinstance(g, LayerGeometry):
            raise TypeError(f"layers: expected LayerGeometry items, got {type(g).__name__}")
        for a, (lo, hi) in enumerate(((0, 1), (2, 3))):
            k, s, p, d = g.kernel_size[a], g.stride[a], g.padding[a], g.dilation[a]
            box[lo], box[hi] = box[lo] * s - p, box[hi] * s - p + d * (k - 1)
    if image_size is not None:
        h, w = (int(v) for v in image_size)
        box = [max(box[0], 0), min(box[1], h - 1), max(box[2], 0), min(box[3], w - 1)]
        if box[0] > box[1] or box[2] > box[3]:
            raise ValueError(f"unit: the receptive field of {tuple(unit)!r} lies outside the {h}x{w} image")
    return box[0], box[1], box[2], box[3]
