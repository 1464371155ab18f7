r"""Bilinear sampling and its gradient: DCNv1 (arXiv 1703.06211) Eq. (3)-(4), NumPy reference.

Deformable convolution reads the feature map ``x`` at fractional positions ``p``. DCNv1 Eq. (3) defines

.. math::  x(p) = \sum_q G(q, p)\, x(q),  \qquad  G(q, p) = g(q_x, p_x)\, g(q_y, p_y),
           \qquad  g(a, b) = \max(0, 1 - |a - b|)                                  \quad\text{(Eq. 4)}

where ``q`` runs over every integral position of the map. Only the (at most) four neighbours
``floor(p)`` and ``floor(p)+1`` have a non-zero kernel, which gives the fast four-neighbour form.

Boundary behaviour (README, "Conventions shared by every tier"; the values as torchvision and mmcv compute them,
the position gradient as mmcv and the original DCNv2 code do):

* neighbours outside the map contribute 0, so the value at ``y <= -1`` or ``y >= H`` (likewise x) is 0;
  the value is continuous everywhere, e.g. it falls linearly from ``x(0)`` at ``y = 0`` to 0 at ``y = -1``.
* The value is piecewise linear in ``p`` with kinks at every integer, so the derivative with respect to the
  position does not exist there and a *rule* has to pick one. The rule (mmcv's and the original DCNv2 CUDA
  code's; torchvision's except on the lines y = -1 and x = -1, see below): a sample is
  *inside* only when ``-1 < y < H`` and ``-1 < x < W``; outside, value and position gradient are 0;
  inside, the corners are ``floor(p)`` and ``floor(p)+1`` (a corner off the map reads 0) and the gradient is
  taken with the floor held fixed. At an integer coordinate this is the forward difference
  ``x(q+1) - x(q)`` (the right derivative), except at exactly ``y = -1`` (or ``x = -1``), which counts as
  outside and gets 0. This is not a corner case: offsets start at zero, so at the start of training every
  sample sits exactly on an integer coordinate.
* torchvision differs on exactly those lines: its ``get_coordinate_weight`` (``csrc/ops/cpu/deform_conv2d_kernel.cpp``)
  has no inside test and returns the forward difference ``x(0) - 0`` at ``y = -1`` (likewise x); elsewhere the two
  rules agree (``tests/peer`` pins the difference on the whole operator).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike, NDArray

from dcn_lessons._validate.conv import check_finite, check_float_dtype

__all__ = [
    "g",
    "BilinearWeights",
    "bilinear_weights",
    "bilinear_sample_literal",
    "bilinear_sample",
    "bilinear_sample_backward",
]


def g(a: ArrayLike, b: ArrayLike) -> NDArray[np.floating]:
    """The 1-D bilinear kernel of DCNv1 Eq. (4): ``g(a, b) = max(0, 1 - |a - b|)``, elementwise, broadcasting."""
    return np.maximum(0.0, 1.0 - np.abs(np.asarray(a) - np.asarray(b)))


class BilinearWeights(NamedTuple):
    """Corners and weights of the four-neighbour form of Eq. (3); every field has the shape of ``py``.

    Corners: rows ``y0 = floor(py)``, ``y1 = y0 + 1``; columns ``x0 = floor(px)``, ``x1 = x0 + 1`` (int64).
    Weights ``wab`` belong to corner ``(ya, xb)``: ``w00 = (1-ly)(1-lx)``, ``w01 = (1-ly) lx``,
    ``w10 = ly (1-lx)``, ``w11 = ly lx`` with ``ly = py - y0``, ``lx = px - x0``; they sum to 1.
    """

    y0: NDArray[np.int64]
    x0: NDArray[np.int64]
    y1: NDArray[np.int64]
    x1: NDArray[np.int64]
    w00: NDArray[np.floating]
    w01: NDArray[np.floating]
    w10: NDArray[np.floating]
    w11: NDArray[np.floating]


def bilinear_weights(py: ArrayLike, px: ArrayLike) -> BilinearWeights:
    """Four-neighbour corners and weights of DCNv1 Eq. (3)-(4) for sample positions ``(py, px)``.

    ``py``, ``px``: the same shape S (any); every returned field has shape S. ``g(q, p)`` is non-zero only
    for ``q = floor(p)`` (weight ``1 - (p - floor p)``) and ``q = floor(p) + 1`` (weight ``p - floor p``),
    so these are exactly the non-zero terms of Eq. (3). No boundary handling here: the map's size is not
    known; :func:`bilinear_sample` drops corners off the map. Positions must be finite.
    """
    py = np.asarray(py)
    px = np.asarray(px)
    fy = np.floor(py)
    fx = np.floor(px)
    ly = py - fy
    lx = px - fx
    hy = 1.0 - ly
    hx = 1.0 - lx
    y0 = fy.astype(np.int64)
    x0 = fx.astype(np.int64)
    return BilinearWeights(y0, x0, y0 + 1, x0 + 1, hy * hx, hy * lx, ly * hx, ly * lx)


# ----------------------------------------------------------------------------------------------- helpers

def _as_chw(name: str, input: ArrayLike) -> tuple[NDArray[np.floating], bool]:
    x = np.asarray(input)
    check_float_dtype(name, x)
    if x.ndim == 2:
        return x[None], True
    if x.ndim == 3:
        return x, False
    raise ValueError(f"{name}: expected shape [H, W] or [C, H, W], got {list(x.shape)}")


def _positions(py: ArrayLike, px: ArrayLike) -> tuple[NDArray[np.floating], NDArray[np.floating]]:
    py = np.asarray(py)
    px = np.asarray(px)
    check_float_dtype("py", py)
    check_float_dtype("px", px)
    if py.shape != px.shape:
        raise ValueError(f"px: expected the shape of py {list(py.shape)}, got {list(px.shape)}")
    check_finite("py", py)
    check_finite("px", px)
    return py, px


def _inside(py: NDArray, px: NDArray, H: int, W: int) -> NDArray[np.bool_]:
    """The rule's 'inside': ``-1 < y < H`` and ``-1 < x < W``."""
    return (py > -1) & (py < H) & (px > -1) & (px < W)


def _clamp(py: NDArray, px: NDArray, H: int, W: int) -> tuple[NDArray, NDArray]:
    # Moving a far-away sample to just outside the map changes neither its value nor its gradient (both 0)
    # and keeps floor() within int64.
    return np.clip(py, -2.0, H + 1.0), np.clip(px, -2.0, W + 1.0)


def _read(x: NDArray, yi: NDArray, xi: NDArray) -> NDArray:
    """``x[:, yi, xi]`` with 0 for indices off the map. x ``[C, H, W]``; yi, xi shape S -> ``[C, *S]``."""
    _, H, W = x.shape
    ok = (yi >= 0) & (yi < H) & (xi >= 0) & (xi < W)
    return x[:, np.clip(yi, 0, H - 1), np.clip(xi, 0, W - 1)] * ok


def _sample(x: NDArray, py: NDArray, px: NDArray) -> NDArray:
    """Four-neighbour Eq. (3), no checks. x ``[C, H, W]``; py, px shape S -> ``[C, *S]``."""
    _, H, W = x.shape
    py, px = _clamp(py, px, H, W)
    b = bilinear_weights(py, px)
    return (
        b.w00 * _read(x, b.y0, b.x0)
        + b.w01 * _read(x, b.y0, b.x1)
        + b.w10 * _read(x, b.y1, b.x0)
        + b.w11 * _read(x, b.y1, b.x1)
    )


def _scatter(grad_out: NDArray, shape: tuple[int, int, int], py: NDArray, px: NDArray) -> NDArray:
    """Gradient of Eq. (3) w.r.t. the map: each sample adds ``w * grad`` to its in-map corners.

    grad_out ``[C, *S]``; shape ``(C, H, W)``; py, px shape S -> ``[C, H, W]``.
    """
    C, H, W = shape
    py, px = _clamp(py, px, H, W)
    b = bilinear_weights(py, px)
    grad = np.zeros((C, H * W), dtype=np.result_type(grad_out, py))
    go = grad_out.reshape(C, -1)
    for yi, xi, w in ((b.y0, b.x0, b.w00), (b.y0, b.x1, b.w01), (b.y1, b.x0, b.w10), (b.y1, b.x1, b.w11)):
        yi, xi, w = yi.ravel(), xi.ravel(), w.ravel()
        ok = (yi >= 0) & (yi < H) & (xi >= 0) & (xi < W)
        np.add.at(grad, (slice(None), yi[ok] * W + xi[ok]), w[ok] * go[:, ok])
    return grad.reshape(C, H, W)


def _position_grad(grad_out: NDArray, x: NDArray, py: NDArray, px: NDArray) -> tuple[NDArray, NDArray]:
    """Gradient w.r.t. ``(py, px)`` by the rule (module docstring), summed over channels.

    grad_out ``[C, *S]``; x ``[C, H, W]``; py, px shape S -> two arrays of shape S.
    """
    _, H, W = x.shape
    inside = _inside(py, px, H, W)
    py, px = _clamp(py, px, H, W)
    b = bilinear_weights(py, px)
    v00, v01 = _read(x, b.y0, b.x0), _read(x, b.y0, b.x1)
    v10, v11 = _read(x, b.y1, b.x0), _read(x, b.y1, b.x1)
    ly = py - np.floor(py)
    lx = px - np.floor(px)
    # value = (1-ly)[(1-lx) v00 + lx v01] + ly[(1-lx) v10 + lx v11], floor held fixed
    dv_dy = ((1 - lx) * (v10 - v00) + lx * (v11 - v01))
    dv_dx = ((1 - ly) * (v01 - v00) + ly * (v11 - v10))
    gy = np.sum(grad_out * dv_dy, axis=0) * inside
    gx = np.sum(grad_out * dv_dx, axis=0) * inside
    return gy, gx


# ------------------------------------------------------------------------------------------------ public

def bilinear_sample_literal(input: ArrayLike, py: ArrayLike, px: ArrayLike) -> NDArray[np.floating]:
    """DCNv1 Eq. (3) taken literally: ``x(p) = sum over every integral q of the map of G(q, p) x(q)``.

    The teaching form: a loop over all H*W integral positions q (vectorised over the samples), with
    ``G(q, p) = g(q_y, p_y) g(q_x, p_x)`` from Eq. (4). Slow, and exactly what the paper writes.

    Shapes: input ``[H, W]`` or ``[C, H, W]``; py, px the same shape S (any); returns ``[*S]`` or ``[C, *S]``.
    Boundary: only q inside the map are summed, so neighbours outside contribute 0 and a sample at
    ``y <= -1`` or ``y >= H`` (likewise x) is 0.
    """
    x, squeeze = _as_chw("input", input)
    py, px = _positions(py, px)
    C, H, W = x.shape
    out = np.zeros((C,) + py.shape, dtype=np.result_type(x, py))
    for qy in range(H):
        gy = g(qy, py)
        for qx in range(W):
            G = gy * g(qx, px)  # G(q, p), shape S
            out += G[None] * x[:, qy, qx].reshape((C,) + (1,) * py.ndim)
    return out[0] if squeeze else out


def bilinear_sample(input: ArrayLike, py: ArrayLike, px: ArrayLike) -> NDArray[np.floating]:
    """DCNv1 Eq. (3) in its four-neighbour form (the non-zero terms only), vectorised.

    ``x(p) = w00 x(y0, x0) + w01 x(y0, x1) + w10 x(y1, x0) + w11 x(y1, x1)`` with the corners and weights of
    :func:`bilinear_weights`; equals :func:`bilinear_sample_literal` everywhere, border and outside included.

    Shapes: input ``[H, W]`` or ``[C, H, W]``; py, px the same shape S; returns ``[*S]`` or ``[C, *S]``.
    Boundary: a corner off the map reads 0, so the value at ``y <= -1`` or ``y >= H`` (likewise x) is 0.
    Raises ValueError for non-finite positions, TypeError for non-float arrays.
    """
    x, squeeze = _as_chw("input", input)
    py, px = _positions(py, px)
    out = _sample(x, py, px)
    return out[0] if squeeze else out


def bilinear_sample_backward(
    grad_output: ArrayLike, input: ArrayLike, py: ArrayLike, px: ArrayLike
) -> tuple[NDArray[np.floating], NDArray[np.floating], NDArray[np.floating]]:
    """Gradients of :func:`bilinear_sample` (DCNv1 Eq. (3)-(4)): ``(grad_input, grad_py, grad_px)``.

    Shapes: grad_output ``[*S]`` (input ``[H, W]``) or ``[C, *S]`` (input ``[C, H, W]``); py, px shape S.
    Returns grad_input with the shape of input, grad_py and grad_px of shape S (summed over channels).

    * grad_input: Eq. (3) is linear in x, so each sample adds ``w * grad`` to each of its four corners
      (scatter-add); corners off the map get nothing. Exact everywhere.
    * grad_py, grad_px: the position rule of the module docstring (mmcv's and the original DCNv2 code's;
      torchvision's except on the lines y = -1 and x = -1): 0 unless
      ``-1 < y < H`` and ``-1 < x < W``; inside, the derivative of the four-neighbour form with
      ``floor(p)`` held fixed (corners off the map read 0). Away from integers this is the true derivative;
      at an integer coordinate it is the forward difference ``x(q+1) - x(q)``.
    """
    x, squeeze = _as_chw("input", input)
    py, px = _positions(py, px)
    go = np.asarray(grad_output)
    check_float_dtype("grad_output", go)
    if squeeze:
        go = go[None]
    expected = (x.shape[0],) + py.shape
    if go.shape != expected:
        want = list(expected[1:]) if squeeze else list(expected)
        got = list(go.shape[1:]) if squeeze else list(go.shape)
        raise ValueError(f"grad_output: expected the shape of the output {want}, got {got}")
    grad_input = _scatter(go, x.shape, py, px)
    grad_py, grad_px = _position_grad(go, x, py, px)
    return (grad_input[0] if squeeze else grad_input), grad_py, grad_px
