"""Argument checks for the RoI pooling family, shared by every tier.

Shape checks read only ``.shape`` / ``.ndim``, so NumPy arrays and torch tensors both pass through
unchanged. The value checks (integral batch indices, ordered corners, finite numbers) need the values;
they read them through :func:`_host_values`, which copies a torch tensor to the host, so a fast tier may
skip them with ``check_values=False``.

Every failure raises ``ValueError`` (wrong shape or value) or ``TypeError`` (wrong kind of object) with a
message that names the argument and says what was expected.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Sequence

import numpy as np

__all__ = [
    "normalize_output_size",
    "check_spatial_scale",
    "check_sampling_ratio",
    "check_gamma",
    "check_feature_map",
    "check_rois",
    "check_roi_offset",
    "check_roi_mask",
    "check_ps_channels",
    "check_grad_output",
    "check_pool_mode",
]


def _shape(a: Any) -> tuple[int, ...]:
    return tuple(int(s) for s in a.shape)


def _fmt(shape: Sequence[int]) -> str:
    return "[" + ", ".join(str(int(s)) for s in shape) + "]"


def _host_values(a: Any) -> np.ndarray:
    """The values of ``a`` as a NumPy array (torch tensors are detached and copied to the host; bfloat16, which
    NumPy lacks, is widened to float32 exactly)."""
    if hasattr(a, "detach"):
        a = a.detach().cpu()
        if str(a.dtype) == "torch.bfloat16":
            a = a.float()
    return np.asarray(a)


def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _require_array(a: Any, name: str) -> None:
    if not (hasattr(a, "shape") and hasattr(a, "ndim")):
        raise TypeError(f"{name}: expected an array or tensor, got {type(a).__name__}")


def normalize_output_size(output_size: Any) -> tuple[int, int]:
    """Return ``(ph, pw)`` from an int or a pair of ints; both must be >= 1."""
    if _is_int(output_size):
        pair = (int(output_size), int(output_size))
    elif isinstance(output_size, (tuple, list)) and len(output_size) == 2 and all(_is_int(v) for v in output_size):
        pair = (int(output_size[0]), int(output_size[1]))
    else:
        raise TypeError(f"output_size: expected an int or a pair of ints (ph, pw), got {output_size!r}")
    if pair[0] < 1 or pair[1] < 1:
        raise ValueError(f"output_size: expected positive sizes, got {pair}")
    return pair


def check_spatial_scale(spatial_scale: Any) -> float:
    """``spatial_scale`` must be a finite real number > 0 (feature-map pixels per image pixel)."""
    if isinstance(spatial_scale, bool) or not isinstance(spatial_scale, numbers.Real):
        raise TypeError(f"spatial_scale: expected a positive real number, got {spatial_scale!r}")
    value = float(spatial_scale)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"spatial_scale: expected a finite number > 0, got {spatial_scale!r}")
    return value


def check_sampling_ratio(sampling_ratio: Any) -> int:
    """``sampling_ratio`` must be an int; values <= 0 mean adaptive (ceil of the bin size)."""
    if not _is_int(sampling_ratio):
        raise TypeError(f"sampling_ratio: expected an int (<= 0 for adaptive), got {sampling_ratio!r}")
    return int(sampling_ratio)


def check_gamma(gamma: Any) -> float:
    """``gamma`` (the offset scale γ of DCNv1 §2.2) must be a finite real number."""
    if isinstance(gamma, bool) or not isinstance(gamma, numbers.Real):
        raise TypeError(f"gamma: expected a finite real number, got {gamma!r}")
    if not math.isfinite(float(gamma)):
        raise ValueError(f"gamma: expected a finite real number, got {gamma!r}")
    return float(gamma)


def check_pool_mode(mode: Any) -> str:
    """``mode`` of plain RoI pooling: "max" or "avg"."""
    if mode not in ("max", "avg"):
        raise ValueError(f'mode: expected "max" or "avg", got {mode!r}')
    return str(mode)


def check_feature_map(input: Any, name: str = "input") -> tuple[int, int, int, int]:
    """``input`` must be 4-D ``[N, C, H, W]`` with H, W >= 1; returns the shape."""
    _require_array(input, name)
    if input.ndim != 4:
        raise ValueError(f"{name}: expected a 4-D array [N, C, H, W], got shape {_fmt(_shape(input))}")
    n, c, h, w = _shape(input)
    if h < 1 or w < 1:
        raise ValueError(f"{name}: expected H >= 1 and W >= 1, got shape {_fmt((n, c, h, w))}")
    return n, c, h, w


def check_rois(rois: Any, batch_size: int, name: str = "rois", check_values: bool = True) -> int:
    """``rois`` must be ``[K, 5]`` rows (batch_index, x1, y1, x2, y2); returns K.

    With ``check_values`` (default) also: every entry finite, batch index integral and in
    ``[0, batch_size)``, ``x2 >= x1`` and ``y2 >= y1``. K = 0 is allowed.
    """
    _require_array(rois, name)
    if rois.ndim != 2 or _shape(rois)[1] != 5:
        raise ValueError(
            f"{name}: expected a 2-D array [K, 5] of rows (batch_index, x1, y1, x2, y2), "
            f"got shape {_fmt(_shape(rois))}"
        )
    k = _shape(rois)[0]
    if check_values and k > 0:
        v = _host_values(rois)
        if not np.issubdtype(v.dtype, np.number) or np.iscomplexobj(v):
            raise TypeError(f"{name}: expected real numbers, got dtype {v.dtype}")
        v = v.astype(np.float64)
        bad = ~np.isfinite(v).all(axis=1)
        if bad.any():
            r = int(np.flatnonzero(bad)[0])
            raise ValueError(f"{name}: row {r} has a non-finite entry: {v[r].tolist()}")
        b = v[:, 0]
        bad = (b != np.round(b)) | (b < 0) | (b >= batch_size)
        if bad.any():
            r = int(np.flatnonzero(bad)[0])
            raise ValueError(
                f"{name}: row {r} has batch index {float(b[r])}; expected an integer in [0, {batch_size - 1}] "
                f"(input has batch size {batch_size})"
            )
        bad = (v[:, 3] < v[:, 1]) | (v[:, 4] < v[:, 2])
        if bad.any():
            r = int(np.flatnonzero(bad)[0])
            raise ValueError(
                f"{name}: row {r} = {v[r].tolist()} is not ordered; expected x1 <= x2 and y1 <= y2"
            )
    return k


def _check_per_bin(a: Any, name: str, expected: tuple[int, ...], what: str, check_values: bool) -> None:
    _require_array(a, name)
    if _shape(a) != expected:
        raise ValueError(f"{name}: expected shape {what} = {_fmt(expected)}, got {_fmt(_shape(a))}")
    if check_values and int(np.prod(expected)) > 0:
        if not np.isfinite(_host_values(a).astype(np.float64)).all():
            raise ValueError(f"{name}: expected finite values, found NaN or inf")


def check_roi_offset(
    offset: Any, num_rois: int, output_size: tuple[int, int], name: str = "offset", check_values: bool = True
) -> None:
    """``offset`` must be ``[K, 2, ph, pw]`` (channel 0 = x, 1 = y, normalised) with finite values."""
    ph, pw = output_size
    _check_per_bin(offset, name, (num_rois, 2, ph, pw), "[K, 2, ph, pw]", check_values)


def check_roi_mask(
    mask: Any, num_rois: int, output_size: tuple[int, int], name: str = "mask", check_values: bool = True
) -> None:
    """``mask`` must be ``[K, 1, ph, pw]`` with finite values (meant to lie in [0, 1], not enforced)."""
    ph, pw = output_size
    _check_per_bin(mask, name, (num_rois, 1, ph, pw), "[K, 1, ph, pw]", check_values)


def check_ps_channels(channels: int, output_size: tuple[int, int], name: str = "input") -> int:
    """Position-sensitive pooling: C_in must be divisible by ph*pw; returns C_out = C_in / (ph*pw)."""
    ph, pw = output_size
    if channels % (ph * pw) != 0:
        raise ValueError(
            f"{name}: channels C={channels} not divisible by ph*pw={ph * pw} "
            f"(position-sensitive pooling needs C = C_out*ph*pw)"
        )
    return channels // (ph * pw)


def check_grad_output(grad_output: Any, expected: tuple[int, ...], name: str = "grad_output") -> None:
    """``grad_output`` must have the forward output's shape ``[K, C_out, ph, pw]``."""
    _require_array(grad_output, name)
    if _shape(grad_output) != tuple(expected):
        raise ValueError(
            f"{name}: expected shape [K, C_out, ph, pw] = {_fmt(expected)}, got {_fmt(_shape(grad_output))}"
        )
