"""Lesson 01's checks: silent on correct answers, and a failure that names the mistake on typical wrong ones."""
from __future__ import annotations

import numpy as np
import pytest

from dcn_lessons.exercises import load
from dcn_lessons.reference import bilinear_sample, bilinear_sample_backward

CHECKS = load("lesson01")


# ------------------------------------------------------------------------------------------- q1 answers
def _bilinear(img, py, px, floor=np.floor, clamp=False, swap=False, offmap=0.0):
    img = np.asarray(img)
    if swap:
        img = img.T
    H, W = img.shape
    y0, x0 = floor(py), floor(px)
    ly, lx = py - y0, px - x0
    y0, x0 = y0.astype(int), x0.astype(int)

    def read(yi, xi):
        ok = (yi >= 0) & (yi < H) & (xi >= 0) & (xi < W)
        v = img[np.clip(yi, 0, H - 1), np.clip(xi, 0, W - 1)]
        return v if clamp else np.where(ok, v, offmap)

    return ((1 - ly) * (1 - lx) * read(y0, x0) + (1 - ly) * lx * read(y0, x0 + 1)
            + ly * (1 - lx) * read(y0 + 1, x0) + ly * lx * read(y0 + 1, x0 + 1))


def good_bilinear(img, py, px):
    return _bilinear(img, py, px)


def loop_bilinear(img, py, px):
    """A learner's scalar loop, with an explicit bounds test: also correct."""
    H, W = img.shape
    out = np.zeros(np.shape(py))
    for idx in np.ndindex(out.shape):
        y, x = py[idx], px[idx]
        y0, x0 = int(np.floor(y)), int(np.floor(x))
        for yy, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
            for xx, wx in ((x0, 1 - (x - x0)), (x0 + 1, x - x0)):
                if 0 <= yy < H and 0 <= xx < W:
                    out[idx] += wy * wx * img[yy, xx]
    return out


def test_q1_passes_silently_on_correct_answers(capsys):
    assert CHECKS["check_bilinear"](good_bilinear) is None
    assert CHECKS["check_bilinear"](loop_bilinear) is None
    assert CHECKS["check_bilinear"](lambda img, py, px: bilinear_sample(img, py, px)) is None
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize(
    "fn, words",
    [
        (lambda img, py, px: ..., ["not written yet"]),
        (lambda img, py, px: None, ["returned None"]),
        (lambda img, py, px: _bilinear(img, py, px, swap=True), ["integer positions", "index"]),
        (lambda img, py, px: _bilinear(img, py, px, clamp=True), ["near the edge", "clamped", "reads 0"]),
        (lambda img, py, px: _bilinear(img, py, px, floor=np.trunc), ["near the edge", "truncates", "np.floor"]),
        (lambda img, py, px: _bilinear(img, py, px, offmap=np.nan), ["integer positions", "got nan"]),
        (lambda img, py, px: _bilinear(img, py, px, floor=lambda p: np.floor(p) + 1), ["integer positions"]),
        (lambda img, py, px: _bilinear(img, np.round(py), np.round(px)), ["fractional", "nearest pixel"]),
        (lambda img, py, px: img[py.astype(int), px.astype(int)], ["fractional", "values are wrong", "Hint"]),
        (lambda img, py, px: _bilinear(img, py, px).ravel(), ["shape [2, 3]", "expected shape [2, 3], got [6]"]),
    ],
    ids=["unwritten", "none", "swapped-axes", "clamped", "int-truncation", "nan-off-map", "off-by-one",
         "nearest", "integer-index", "flattened"],
)
def test_q1_fails_with_a_message_that_teaches(fn, words):
    with pytest.raises(AssertionError) as err:
        CHECKS["check_bilinear"](fn)
    msg = str(err.value)
    for w in words:
        assert w in msg, f"{w!r} not in message:\n{msg}"


def test_q1_names_swapped_axes_on_a_square_map():
    """Swapped axes on a non-square map can pass integer points by luck only if they are symmetric; on the
    square map the check says what happened."""
    def swapped_only_fractions(img, py, px):
        if np.all(py == np.round(py)) or img.shape[0] != img.shape[1]:
            return good_bilinear(img, py, px)
        return _bilinear(img, py, px, swap=True)

    with pytest.raises(AssertionError, match="x and y are swapped"):
        CHECKS["check_bilinear"](swapped_only_fractions)


def test_q1_reports_a_crash_at_the_edge():
    def crashes(img, py, px):
        y0, x0 = np.floor(py).astype(int), np.floor(px).astype(int)
        ly, lx = py - y0, px - x0
        return ((1 - ly) * (1 - lx) * img[y0, x0] + (1 - ly) * lx * img[y0, x0 + 1]
                + ly * (1 - lx) * img[y0 + 1, x0] + ly * lx * img[y0 + 1, x0 + 1])

    with pytest.raises(AssertionError, match="raised IndexError"):
        CHECKS["check_bilinear"](crashes)


# ------------------------------------------------------------------------------------------- q2 answers
def _grad(img, py, px, inside_test=True, clamp=False, order="yx", sign=1.0):
    H, W = img.shape
    y0, x0 = np.floor(py).astype(int), np.floor(px).astype(int)
    ly, lx = py - np.floor(py), px - np.floor(px)

    def read(yi, xi):
        ok = (yi >= 0) & (yi < H) & (xi >= 0) & (xi < W)
        v = img[np.clip(yi, 0, H - 1), np.clip(xi, 0, W - 1)]
        return v if clamp else v * ok

    v00, v01, v10, v11 = read(y0, x0), read(y0, x0 + 1), read(y0 + 1, x0), read(y0 + 1, x0 + 1)
    gy = (1 - lx) * (v10 - v00) + lx * (v11 - v01)
    gx = (1 - ly) * (v01 - v00) + ly * (v11 - v10)
    if inside_test:
        inside = (py > -1) & (py < H) & (px > -1) & (px < W)
        gy, gx = gy * inside, gx * inside
    gy, gx = sign * gy, sign * gx
    return (gy, gx) if order == "yx" else (gx, gy)


def _central(img, py, px):
    h = 1e-5
    return ((bilinear_sample(img, py + h, px) - bilinear_sample(img, py - h, px)) / (2 * h),
            (bilinear_sample(img, py, px + h) - bilinear_sample(img, py, px - h)) / (2 * h))


def test_q2_passes_silently_on_correct_answers(capsys):
    assert CHECKS["check_position_grad"](_grad) is None
    assert CHECKS["check_position_grad"](
        lambda img, py, px: tuple(bilinear_sample_backward(np.ones(py.shape), img, py, px)[1:])) is None
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize(
    "fn, words",
    [
        (lambda img, py, px: ..., ["not written yet"]),
        (lambda img, py, px: np.zeros(py.shape), ["expected a pair (gy, gx)"]),
        (lambda img, py, px: None, ["returned None", "return gy, gx"]),
        (lambda img, py, px: _grad(img, py, px, order="xy"), ["fractional", "(gx, gy)"]),
        (lambda img, py, px: _grad(img, py, px, sign=-1.0), ["fractional", "sign is flipped"]),
        (_central, ["integer coordinates", "central difference", "forward difference"]),
        (lambda img, py, px: _grad(img, py, px, clamp=True), ["near the edge", "clamped"]),
        (lambda img, py, px: _grad(img, py, px, inside_test=False), ["outside", "inside test", "y = -1"]),
        (lambda img, py, px: (np.zeros(py.shape), np.zeros(py.shape)), ["fractional", "yours is 0"]),
        (lambda img, py, px: (np.zeros(py.shape), np.zeros(3)), ["gx: expected shape"]),
    ],
    ids=["unwritten", "not-a-pair", "none", "swapped", "sign", "central-difference", "clamped", "no-inside-test", "zeros",
         "bad-shape"],
)
def test_q2_fails_with_a_message_that_teaches(fn, words):
    with pytest.raises(AssertionError) as err:
        CHECKS["check_position_grad"](fn)
    msg = str(err.value)
    for w in words:
        assert w in msg, f"{w!r} not in message:\n{msg}"


def test_q2_backward_difference_is_named():
    def backward(img, py, px):
        h = 1e-7
        return ((bilinear_sample(img, py, px) - bilinear_sample(img, py - h, px)) / h,
                (bilinear_sample(img, py, px) - bilinear_sample(img, py, px - h)) / h)

    with pytest.raises(AssertionError, match="backward difference"):
        CHECKS["check_position_grad"](backward)


# ------------------------------------------------------------------------------------- issue 15: not bypassable

from test_exercises_lesson00 import (  # noqa: E402  (the helpers the tests of lessons 00-04 share)
    assert_gives_nothing_away, failure_messages, graded_without_package, solution_lines, unavailable_names_exist)


@pytest.mark.parametrize("check", ["check_bilinear", "check_position_grad"])
def test_the_unavailable_names_exist(check):
    unavailable_names_exist(CHECKS, check)


def test_q1_an_answer_that_delegates_to_the_package_fails_without_it():
    def via_reference(img, py, px):
        from dcn_lessons.reference import bilinear_sample as sample

        return sample(img, py, px)

    def via_literal(img, py, px):
        from dcn_lessons.reference import bilinear_sample_literal

        return bilinear_sample_literal(img, py, px)

    def via_torch(img, py, px):
        import torch

        from dcn_lessons.ops import bilinear_sample as sample

        return sample(torch.from_numpy(img[None]), torch.from_numpy(py), torch.from_numpy(px))[0].numpy()

    def via_deform_conv(img, py, px):  # a 1x1 deformable convolution: output s reads the position of sample s
        from dcn_lessons.reference import deform_conv2d

        H, W = img.shape
        s = np.arange(np.size(py))
        off = np.zeros((1, 2, H, W))
        off[0, 0].flat[s] = np.ravel(py) - s // W
        off[0, 1].flat[s] = np.ravel(px) - s % W
        out = deform_conv2d(img[None, None], off, np.ones((1, 1, 1, 1)))
        return out[0, 0].flat[s].reshape(np.shape(py))

    for answer in (via_reference, via_literal, via_torch, via_deform_conv):
        assert CHECKS["check_bilinear"](answer) is None  # right while the package is there
        with pytest.raises(AssertionError, match="unavailable while this answer is graded"):
            graded_without_package(CHECKS, "check_bilinear", answer)
    graded_without_package(CHECKS, "check_bilinear", good_bilinear)
    graded_without_package(CHECKS, "check_bilinear", loop_bilinear)


def test_q2_an_answer_that_delegates_to_the_package_fails_without_it():
    def via_backward(img, py, px):
        from dcn_lessons.reference import bilinear_sample_backward as backward

        return tuple(backward(np.ones(py.shape), img, py, px)[1:])

    def via_autograd(img, py, px):
        import torch

        from dcn_lessons.ops import bilinear_sample as sample

        ty, tx = torch.from_numpy(py).requires_grad_(), torch.from_numpy(px).requires_grad_()
        sample(torch.from_numpy(img[None]), ty, tx).sum().backward()
        return ty.grad.numpy(), tx.grad.numpy()

    for answer in (via_backward, via_autograd):
        assert CHECKS["check_position_grad"](answer) is None
        with pytest.raises(AssertionError, match="unavailable while this answer is graded"):
            graded_without_package(CHECKS, "check_position_grad", answer)
    graded_without_package(CHECKS, "check_position_grad", _grad)


def test_q2_a_finite_difference_is_caught_a_hair_below_an_integer():
    """A forward difference of the package's sampler, with the inside test added, is right on every step but one:
    a hair below an integer it steps across the kink (and in the graded run the sampler is not there anyway)."""
    def forward(img, py, px, h=1e-6):
        H, W = img.shape
        inside = (py > -1) & (py < H) & (px > -1) & (px < W)
        gy = (bilinear_sample(img, py + h, px) - bilinear_sample(img, py, px)) / h
        gx = (bilinear_sample(img, py, px + h) - bilinear_sample(img, py, px)) / h
        return gy * inside, gx * inside

    with pytest.raises(AssertionError) as info:
        CHECKS["check_position_grad"](forward)
    assert "a hair below integer coordinates" in str(info.value) and "segment on the left" in str(info.value)


def test_q2_the_y_minus_one_hint_says_which_rule_is_whose():
    with pytest.raises(AssertionError) as info:
        CHECKS["check_position_grad"](lambda img, py, px: _grad(img, py, px, inside_test=False))
    msg = str(info.value)
    assert "torchvision" in msg and "mmcv" in msg and "original DCNv2 code" in msg


def test_no_failure_message_gives_the_answer_away():
    wrong_q1 = [lambda img, py, px: _bilinear(img, py, px, swap=True),
                lambda img, py, px: _bilinear(img, py, px, clamp=True),
                lambda img, py, px: _bilinear(img, py, px, floor=np.trunc),
                lambda img, py, px: _bilinear(img, np.round(py), np.round(px)),
                lambda img, py, px: img[py.astype(int), px.astype(int)],
                lambda img, py, px: _bilinear(img, py, px) + 1e-3,
                lambda img, py, px: np.zeros_like(py)]
    assert_gives_nothing_away(failure_messages(CHECKS["check_bilinear"], wrong_q1),
                              solution_lines("01_", "my_bilinear"),
                              formulas=["(1-ly)*(1-lx)", "(1-ly)*lx", "ly*(1-lx)", "ly*lx", "(1-ly)(1-lx)"])
    wrong_q2 = [lambda img, py, px: _grad(img, py, px, order="xy"),
                lambda img, py, px: _grad(img, py, px, sign=-1.0),
                _central,
                lambda img, py, px: _grad(img, py, px, clamp=True),
                lambda img, py, px: _grad(img, py, px, inside_test=False),
                lambda img, py, px: (np.zeros(py.shape), np.zeros(py.shape)),
                lambda img, py, px: tuple(g + 1e-3 for g in _grad(img, py, px))]
    assert_gives_nothing_away(failure_messages(CHECKS["check_position_grad"], wrong_q2),
                              solution_lines("01_", "my_position_grad"),
                              formulas=["(1-lx)*(v10-v00)", "(1-ly)*(v01-v00)", "(1-lx)(v10-v00)", "(1-ly)(v01-v00)",
                                        "lx*(v11-v01)", "ly*(v11-v10)"])
