"""Lesson 04's checks: they pass on right answers and fail, with a message that teaches, on typical wrong ones, print
no answer, and an answer that only calls the package fails once the package's own implementation is unavailable."""
from __future__ import annotations

import numpy as np
import pytest

from dcn_lessons.exercises import load
from dcn_lessons.reference import roi_align
from dcn_lessons.reference.roi import roi_sample
from test_exercises_lesson00 import (
    assert_gives_nothing_away, failure_messages, graded_without_package, solution_lines, unavailable_names_exist)

CHECKS = load("lesson04")


def test_roi_sample_is_roi_align_of_zero_size_boxes():
    """The lesson's reading tool (the q2 answers use it) is the RoI rule: a zero-size box at (x + 0.5, y + 0.5) with
    one sample reads (y, x), so it must equal roi_align of such boxes everywhere, past the borders too."""
    rng = np.random.default_rng(0)
    feature = rng.random((7, 9))
    ys, xs = rng.uniform(-2.5, 9.5, 200), rng.uniform(-2.5, 11.5, 200)
    ys[:20], xs[20:40] = -1.0, 9.0  # the edges of the clamp band
    y1, x1 = ys + 0.5, xs + 0.5
    boxes = np.stack([np.zeros_like(y1), x1, y1, x1, y1], axis=1)
    want = roi_align(feature[None, None], boxes, 1, sampling_ratio=1)[:, 0, 0, 0]
    assert np.array_equal(roi_sample(feature, ys, xs), want)
    assert roi_sample(feature, np.zeros((2, 3)), 1.0).shape == (2, 3)


@pytest.mark.parametrize("args, message", [
    ((np.zeros((2, 3, 4)), 0.0, 0.0), "feature: expected a non-empty [H, W] map"),
    ((np.zeros((3, 4), dtype=int), 0.0, 0.0), "feature: expected a floating-point array"),
    ((np.zeros((3, 4)), np.zeros(2), np.zeros(3)), "ys, xs: expected positions of shapes that broadcast"),
    ((np.zeros((3, 4)), np.nan, 0.0), "ys, xs: expected finite positions"),
])
def test_roi_sample_names_bad_input(args, message):
    with pytest.raises((ValueError, TypeError), match=message.replace("[", r"\[").replace("]", r"\]")):
        roi_sample(*args)


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
        (dict(shift=0.0), "half a pixel too far right and down"),
        (dict(centre=0.0), "corners of the cells"),
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
        (lambda c, i, j, k: 2 * ((c * k + i) * k + j), "too high for the map that bin reads"),
        (lambda c, i, j, k: "three", "expected an int"),
        (lambda c, i, j, k: None, "returned None"),
    ],
)
def test_ps_channel_explains_typical_mistakes(fn, message):
    with pytest.raises(AssertionError, match=message):
        CHECKS["check_ps_channel"](fn)


# ------------------------------------------------------------------------------------- issue 15: not bypassable

@pytest.mark.parametrize("check", ["check_bin_samples", "check_deform_bin", "check_ps_channel"])
def test_the_unavailable_names_exist(check):
    unavailable_names_exist(CHECKS, check)


def test_q1_an_answer_that_delegates_to_the_package_fails_without_it():
    def via_geometry(box, i, j, k, s):
        from dcn_lessons.reference.roi import bin_samples, roi_geometry

        r = roi_geometry(np.array([0.0, *box]), (k, k), 1.0, s, True)
        return np.array(list(bin_samples(r, i, j, (k, k))))

    assert CHECKS["check_bin_samples"](via_geometry) is None
    with pytest.raises(AssertionError, match="unavailable while this answer is graded"):
        graded_without_package(CHECKS, "check_bin_samples", via_geometry)
    graded_without_package(CHECKS, "check_bin_samples", samples)


def test_q2_an_answer_that_delegates_to_the_package_fails_without_it():
    def via_reference(feature, box, oh, i, j, k, gamma, s):
        from dcn_lessons.reference import deform_roi_pool

        off = np.zeros((1, 2, k, k))
        off[0, :, i, j] = oh
        return float(deform_roi_pool(feature[None, None], np.array([[0.0, *box]]), off, k, sampling_ratio=s,
                                     gamma=gamma)[0, 0, i, j])

    def via_torch(feature, box, oh, i, j, k, gamma, s):
        import torch

        from dcn_lessons.ops import deform_roi_pool

        off = torch.zeros(1, 2, k, k, dtype=torch.float64)
        off[0, :, i, j] = torch.as_tensor(np.asarray(oh, dtype=np.float64))
        out = deform_roi_pool(torch.from_numpy(feature[None, None]), torch.tensor([[0.0, *box]], dtype=torch.float64),
                              off, k, sampling_ratio=s, gamma=gamma)
        return float(out[0, 0, i, j])

    for answer in (via_reference, via_torch):
        assert CHECKS["check_deform_bin"](answer) is None
        with pytest.raises(AssertionError, match="unavailable while this answer is graded"):
            graded_without_package(CHECKS, "check_deform_bin", answer)
    graded_without_package(CHECKS, "check_deform_bin", deform_bin)  # roi_sample and the learner's q1: available


def test_q3_an_answer_that_delegates_to_the_package_fails_without_it():
    def via_experiment(c, i, j, k):  # §6's experiment: constant maps, one per channel, pooled
        from dcn_lessons.reference import ps_roi_align

        maps = np.broadcast_to(np.arange((c + 1) * k * k, dtype=np.float64)[None, :, None, None],
                               (1, (c + 1) * k * k, 6, 6)).copy()
        return int(round(ps_roi_align(maps, np.array([[0.0, 0.0, 0.0, 6.0, 6.0]]), k, sampling_ratio=1)[0, c, i, j]))

    def via_private(c, i, j, k):
        from dcn_lessons.reference.roi import _ps_channels

        return int(_ps_channels(c + 1, (k, k), i, j)[c])

    for answer in (via_experiment, via_private):
        assert CHECKS["check_ps_channel"](answer) is None
        with pytest.raises(AssertionError, match="unavailable while this answer is graded"):
            graded_without_package(CHECKS, "check_ps_channel", answer)
    graded_without_package(CHECKS, "check_ps_channel", lambda c, i, j, k: (c * k + i) * k + j)


def test_no_failure_message_gives_the_answer_away():
    wrong_q1 = [lambda box, i, j, k, s, w=w: samples(box, i, j, k, s, **w)
                for w in (dict(shift=0.0), dict(centre=0.0), dict(swap_xy=True), dict(swap_ij=True), dict(order="xy"))]
    wrong_q1.append(lambda box, i, j, k, s: samples(box, i, j, k, s) + 0.01)
    assert_gives_nothing_away(failure_messages(CHECKS["check_bin_samples"], wrong_q1),
                              solution_lines("04_", "my_bin_samples"),
                              formulas=["y1 - 0.5 + i", "(u + 0.5)", "y_start + i·bin_h", "bin_h/s"])
    wrong_q2 = [lambda *a, w=w: deform_bin(*a, **w) for w in (dict(swap=True), dict(scale="hw"), dict(no_gamma=True),
                                                              dict(scale="bin"), dict(scale="px"), dict(sign=-1.0))]
    assert_gives_nothing_away(failure_messages(CHECKS["check_deform_bin"], wrong_q2),
                              solution_lines("04_", "my_deform_bin"))
    wrong_q3 = [lambda c, i, j, k: (i * k + j) * 4 + c, lambda c, i, j, k: (c * k + j) * k + i,
                lambda c, i, j, k: i * k + j, lambda c, i, j, k: 2 * ((c * k + i) * k + j),
                lambda c, i, j, k: (c * k + i) * k + j + 1]
    assert_gives_nothing_away(failure_messages(CHECKS["check_ps_channel"], wrong_q3),
                              solution_lines("04_", "my_ps_channel", shortest=8),
                              formulas=["c·k² + i·k + j", "(c·k + i)·k + j", "c*k*k+i*k+j", "c·k²"])
