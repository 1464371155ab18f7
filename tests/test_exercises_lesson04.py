"""Lesson 04's checks: they pass on right answers and fail, with a message that teaches, on typical wrong ones."""
from __future__ import annotations

import numpy as np
import pytest

from dcn_lessons.exercises import load
from dcn_lessons.reference import roi_align

CHECKS = load("lesson04")


def roi_sample(feature, ys, xs):
    """The notebook's helper: the RoI sampling rule via zero-size boxes of roi_align."""
    ys, xs = np.broadcast_arrays(np.asarray(ys, dtype=float), np.asarray(xs, dtype=float))
    y1, x1 = ys.ravel() + 0.5, xs.ravel() + 0.5
    boxes = np.stack([np.zeros_like(y1), x1, y1, x1, y1], axis=1)
    return roi_align(np.asarray(feature, float)[None, None], boxes, 1, sampling_ratio=1)[:, 0, 0, 0].reshape(ys.shape)


# -- q1 ------------------------------------------------------------------------------------------------------
def samples(box, i, j, k, s, shift=0.5, centre=0.5, swap_xy=False, swap_ij=False, order="ij"):
    x1, y1, x2, y2 = box
    if swap_ij:
        i, j = j, i
    bh, bw = (y2 - y1) / k, (x2 - x1) / k
    u, v = np.meshgrid(np.arange(s), np.arange(s), indexing=order)
    ys = y1 - shift + i * bh + (u.ravel() + centre) * bh / s
    xs = x1 - shift + j * bw + (v.ravel() + centre) * bw / s
    out = np.stack([ys, xs], axis=1)
    return out[:, ::-1] if swap_xy else out


def test_bin_samples_accepts_the_rule():
    CHECKS["check_bin_samples"](samples)


@pytest.mark.parametrize(
    "wrong, message",
    [
        (dict(shift=0.0), "0.5 px too far right and down"),
        (dict(centre=0.0), "corners of the sub-cells"),
        (dict(swap_xy=True), "columns are swapped"),
        (dict(swap_ij=True), "swapped i and j"),
        (dict(order="xy"), "wrong order"),
    ],
)
def test_bin_samples_explains_typical_mistakes(wrong, message):
    with pytest.raises(AssertionError, match=message):
        CHECKS["check_bin_samples"](lambda box, i, j, k, s: samples(box, i, j, k, s, **wrong))


def test_bin_samples_reports_shape_and_placeholders():
    with pytest.raises(AssertionError, match=r"expected shape \[1, 2\], got \[2\]"):
        CHECKS["check_bin_samples"](lambda box, i, j, k, s: np.zeros(2))
    with pytest.raises(AssertionError, match="not written yet"):
        CHECKS["check_bin_samples"](lambda *a: ...)


# -- q2 ------------------------------------------------------------------------------------------------------
def deform_bin(feature, box, oh, i, j, k, gamma, s, swap=False, scale="roi", no_gamma=False, shift=0.5, sign=1.0):
    x1, y1, x2, y2 = box
    w, h = x2 - x1, y2 - y1
    ox, oy = (oh[1], oh[0]) if swap else (oh[0], oh[1])
    g = 1.0 if no_gamma else gamma
    if scale == "roi":
        dx, dy = g * ox * w, g * oy * h
    elif scale == "hw":
        dx, dy = g * ox * h, g * oy * w
    elif scale == "bin":
        dx, dy = g * ox * w / k, g * oy * h / k
    else:  # pixels
        dx, dy = ox, oy
    pts = samples(box, i, j, k, s, shift=shift)
    return float(roi_sample(feature, pts[:, 0] + sign * dy, pts[:, 1] + sign * dx).mean())


def test_deform_bin_accepts_eq6():
    CHECKS["check_deform_bin"](deform_bin)


@pytest.mark.parametrize(
    "wrong, message",
    [
        (dict(swap=True), "swapped the offset's components"),
        (dict(scale="hw"), "by the RoI width w and .* by its height h"),
        (dict(no_gamma=True), "left out γ"),
        (dict(scale="bin"), "not by the bin's size"),
        (dict(scale="px"), "offset_hat is normalised"),
        (dict(sign=-1.0), "the offset is added"),
        (dict(shift=0.0), r"\(x1 - 0.5, y1 - 0.5\)"),
    ],
)
def test_deform_bin_explains_typical_mistakes(wrong, message):
    with pytest.raises(AssertionError, match=message):
        CHECKS["check_deform_bin"](lambda *a: deform_bin(*a, **wrong))


def test_deform_bin_names_the_case_and_both_values():
    with pytest.raises(AssertionError) as e:
        CHECKS["check_deform_bin"](lambda *a: 0.0)
    msg = str(e.value)
    assert "deform_bin(box=(2.0, 1.0, 11.0, 10.0)" in msg and "got 0, expected" in msg and "Hint:" in msg
    with pytest.raises(AssertionError, match="expected one number"):
        CHECKS["check_deform_bin"](lambda *a: np.zeros(4))


# -- q3 ------------------------------------------------------------------------------------------------------
def test_ps_channel_accepts_the_layout():
    CHECKS["check_ps_channel"](lambda c, i, j, k: (c * k + i) * k + j)


@pytest.mark.parametrize(
    "fn, message",
    [
        (lambda c, i, j, k: (i * k + j) * 4 + c, "class innermost"),  # classes = 4 in the first case
        (lambda c, i, j, k: (c * k + j) * k + i, "swapped i and j"),
        (lambda c, i, j, k: i * k + j, "right for class 0 only"),
        (lambda c, i, j, k: 2 * ((c * k + i) * k + j), "c·k² \\+ i·k \\+ j"),
        (lambda c, i, j, k: "three", "expected an int"),
        (lambda c, i, j, k: None, "returned None"),
    ],
)
def test_ps_channel_explains_typical_mistakes(fn, message):
    with pytest.raises(AssertionError, match=message):
        CHECKS["check_ps_channel"](fn)
