"""Kernel geometry shared by the lessons: the regular grid R and offsets that express
the special cases of DCNv1 Fig. 1 (dilation, scale, aspect ratio, rotation).

Conventions (README, "Conventions shared by every tier"): kernel point k runs row-major over (kh, kw); an offset is (Δy, Δx);
the sampling position of kernel point (i, j) for output (y, x) is
``(y*stride_h - pad_h + i*dil_h + Δy, x*stride_w - pad_w + j*dil_w + Δx)``.
"""
from __future__ import annotations

import math

import numpy as np


def _pair(name: str, v: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(v, (int, np.integer)):
        return int(v), int(v)
    if isinstance(v, (tuple, list)) and len(v) == 2 and all(isinstance(a, (int, np.integer)) for a in v):
        return int(v[0]), int(v[1])
    raise TypeError(f"{name}: expected an int or a pair of ints, got {v!r}")


def kernel_grid(kernel_size: int | tuple[int, int] = 3, dilation: int | tuple[int, int] = 1) -> np.ndarray:
    """The regular grid R of DCNv1 Eq. (1), relative to the kernel's top-left point.

    Returns ``[kh*kw, 2]`` rows (i*dil_h, j*dil_w), row-major over (i, j).
    """
    kh, kw = _pair("kernel_size", kernel_size)
    dh, dw = _pair("dilation", dilation)
    if kh < 1 or kw < 1 or dh < 1 or dw < 1:
        raise ValueError(f"kernel_size and dilation must be >= 1, got {kernel_size!r}, {dilation!r}")
    i, j = np.meshgrid(np.arange(kh), np.arange(kw), indexing="ij")
    return np.stack([i.ravel() * dh, j.ravel() * dw], axis=1).astype(np.float64)


def sampling_positions(
    y: int,
    x: int,
    offsets: np.ndarray | None = None,
    kernel_size: int | tuple[int, int] = 3,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 1,
    dilation: int | tuple[int, int] = 1,
) -> np.ndarray:
    """Where output (y, x) samples the input: ``p0 + p_k + Δp_k`` of DCNv1 Eq. (2).

    Args:
        y, x: the output location.
        offsets: ``[kh*kw, 2]`` (Δy, Δx) per kernel point, or None for zeros (a plain conv).
    Returns:
        ``[kh*kw, 2]`` float64 (row, column) input coordinates, row-major over the kernel.
    """
    sh, sw = _pair("stride", stride)
    ph, pw = _pair("padding", padding)
    grid = kernel_grid(kernel_size, dilation)
    if offsets is None:
        offsets = np.zeros_like(grid)
    offsets = np.asarray(offsets, dtype=np.float64)
    if offsets.shape != grid.shape:
        raise ValueError(f"offsets: expected shape [kh*kw, 2] = {list(grid.shape)}, got {list(offsets.shape)}")
    return np.array([y * sh - ph, x * sw - pw], dtype=np.float64) + grid + offsets


def transform_offsets(
    kernel_size: int | tuple[int, int] = 3,
    scale: float = 1.0,
    aspect: float = 1.0,
    rotation_deg: float = 0.0,
    dilation: int | tuple[int, int] = 1,
) -> np.ndarray:
    """Offsets that turn the regular grid into a scaled, stretched and rotated one (DCNv1 Fig. 1 c-d).

    The grid is transformed about the kernel's centre: p'_k = c + R(θ)·diag(scale·√aspect,
    scale/√aspect)·(p_k - c), and the offset is Δp_k = p'_k - p_k. ``dilation`` is applied to
    the regular grid first, so ``transform_offsets(scale=2)`` on a 3x3 kernel equals the offsets
    of a 3x3 kernel with dilation 2.

    Returns:
        ``[kh*kw, 2]`` (Δy, Δx).
    """
    if not scale > 0 or not aspect > 0:
        raise ValueError(f"scale and aspect must be > 0, got scale={scale!r}, aspect={aspect!r}")
    grid = kernel_grid(kernel_size, dilation)
    centre = (grid.max(axis=0) + grid.min(axis=0)) / 2
    t = math.radians(rotation_deg)
    rot = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
    stretch = np.diag([scale * math.sqrt(aspect), scale / math.sqrt(aspect)])
    moved = centre + (grid - centre) @ (rot @ stretch).T
    return moved - grid


def constant_offset_field(offsets: np.ndarray, batch: int, height: int, width: int) -> np.ndarray:
    """Broadcast per-kernel-point offsets ``[K, 2]`` to the offset tensor layout ``[N, 2K, Ho, Wo]``.

    Channel 2k is Δy and 2k+1 is Δx of kernel point k (one offset group), as torchvision and mmcv.
    """
    offsets = np.asarray(offsets, dtype=np.float64)
    if offsets.ndim != 2 or offsets.shape[1] != 2:
        raise ValueError(f"offsets: expected shape [K, 2], got {list(offsets.shape)}")
    flat = offsets.reshape(-1)  # Δy0, Δx0, Δy1, Δx1, ...
    return np.broadcast_to(flat[None, :, None, None], (batch, flat.size, height, width)).copy()
