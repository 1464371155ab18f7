"""Lesson 02's checks: silent on a correct answer, a teaching message on the typical wrong ones."""
from __future__ import annotations

import numpy as np
import pytest

from dcn_lessons.exercises import load
from dcn_lessons.reference import bilinear_sample

CHECKS = load("lesson02")


# ------------------------------------------------------------------------------------------ q1 answers

def im2col(x, offset, kernel_size, padding, swap=False, k_major=False, pad_shift=True, transpose=False):
    C, H, W = x.shape
    K = kernel_size * kernel_size
    _, Ho, Wo = offset.shape
    cols = np.zeros((C * K, Ho * Wo))
    p = padding if pad_shift else 0
    for k in range(K):
        i, j = divmod(k, kernel_size)
        dy, dx = offset[2 * k], offset[2 * k + 1]
        if swap:
            dy, dx = dx, dy
        py = np.arange(Ho)[:, None] - p + i + dy
        px = np.arange(Wo)[None, :] - p + j + dx
        v = bilinear_sample(x, py, px).reshape(C, -1)  # [C, Ho*Wo]
        for c in range(C):
            cols[(k * C + c) if k_major else (c * K + k)] = v[c]
    return cols.T if transpose else cols


def test_q1_accepts_a_correct_answer(capsys):
    assert CHECKS["check_deform_im2col"](im2col) is None
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize(
    "wrong, message",
    [
        (lambda x, o, k, p: im2col(x, o, k, p, swap=True), "Δy and Δx swapped"),
        (lambda x, o, k, p: im2col(x, o, k, p, k_major=True), "rows ordered k*C + c"),
        (lambda x, o, k, p: im2col(x, o, k, p, pad_shift=False), "padding forgotten"),
        (lambda x, o, k, p: im2col(x, o, k, p, transpose=True), "one ROW per (channel, kernel point)"),
        (lambda x, o, k, p: im2col(x, o, k, p) + 1e-3, "values are wrong; first at index [0, 0]"),
        (lambda x, o, k, p: None, "returned None"),
        (lambda x, o, k, p: ..., "not written yet"),
        (lambda x, o, k, p: 1 / 0, "raised ZeroDivisionError"),
    ],
)
def test_q1_rejects_typical_mistakes(wrong, message):
    with pytest.raises(AssertionError) as info:
        CHECKS["check_deform_im2col"](wrong)
    assert message in str(info.value)


def test_q1_names_the_case_that_failed():
    # right for kernel 3 only: the 2x2 case reports its shape mismatch and names the call
    def only3(x, o, k, p):
        return im2col(x, o, 3, 1) if k == 3 and p == 1 else np.zeros((1, 1))

    with pytest.raises(AssertionError, match=r"padding=0\).*expected shape \[18, 9\]"):
        CHECKS["check_deform_im2col"](only3)


# ------------------------------------------------------------------------------------------ q2 answers

def offset_grad(image, weight, offsets, y, x, central=False, swap=False, ignore_border=False):
    C, H, W = image.shape
    out = np.zeros((9, 2))
    for k in range(9):
        i, j = divmod(k, 3)
        py, px = y - 1 + i + offsets[k, 0], x - 1 + j + offsets[k, 1]
        if not ignore_border and not (-1 < py < H and -1 < px < W):
            continue
        if central:
            e = 1e-6
            dv_dy = (bilinear_sample(image, np.array(py + e), np.array(px)) - bilinear_sample(image, np.array(py - e), np.array(px))) / (2 * e)
            dv_dx = (bilinear_sample(image, np.array(py), np.array(px + e)) - bilinear_sample(image, np.array(py), np.array(px - e))) / (2 * e)
        else:
            y0, x0 = int(np.floor(py)), int(np.floor(px))
            ly, lx = py - y0, px - x0

            def v(a, b):
                return image[:, a, b] if 0 <= a < H and 0 <= b < W else np.zeros(C)

            dv_dy = (1 - lx) * (v(y0 + 1, x0) - v(y0, x0)) + lx * (v(y0 + 1, x0 + 1) - v(y0, x0 + 1))
            dv_dx = (1 - ly) * (v(y0, x0 + 1) - v(y0, x0)) + ly * (v(y0 + 1, x0 + 1) - v(y0 + 1, x0))
        out[k] = weight[:, i, j] @ dv_dy, weight[:, i, j] @ dv_dx
    return out[:, ::-1] if swap else out


def test_q2_accepts_a_correct_answer(capsys):
    assert CHECKS["check_offset_grad"](offset_grad) is None
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize(
    "wrong, message",
    [
        (lambda *a: offset_grad(*a, swap=True), "columns swapped"),
        (lambda *a: offset_grad(*a, central=True), "central difference at integer positions"),
        (lambda *a: -offset_grad(*a), "sign flipped"),
        (lambda *a: offset_grad(*a, ignore_border=True), "y=0, x=2"),
        (lambda *a: np.zeros(18), "expected shape [9, 2]"),
        (lambda *a: ..., "not written yet"),
    ],
)
def test_q2_rejects_typical_mistakes(wrong, message):
    with pytest.raises(AssertionError) as info:
        CHECKS["check_offset_grad"](wrong)
    assert message in str(info.value)


def test_q2_border_failure_teaches_the_rule():
    with pytest.raises(AssertionError) as info:
        CHECKS["check_offset_grad"](lambda *a: offset_grad(*a, ignore_border=True))
    assert "counts as outside" in str(info.value) and "expected -0" in str(info.value)
