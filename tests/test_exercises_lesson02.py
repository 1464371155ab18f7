"""Lesson 02's checks: silent on a correct answer, a teaching message on the typical wrong ones, no answer printed,
and an answer that only calls the package fails once the package's own implementation is unavailable."""
from __future__ import annotations

import re

import numpy as np
import pytest

from dcn_lessons.exercises import load
from dcn_lessons.reference import bilinear_sample
from test_exercises_lesson00 import (
    assert_gives_nothing_away, failure_messages, graded_without_package, solution_lines, unavailable_names_exist)

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


# ------------------------------------------------------------------------------------------ q3 answers

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


def test_q3_accepts_a_correct_answer(capsys):
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
def test_q3_rejects_typical_mistakes(wrong, message):
    with pytest.raises(AssertionError) as info:
        CHECKS["check_offset_grad"](wrong)
    assert message in str(info.value)


def test_q3_border_failure_names_torchvisions_rule():
    """Forgetting the inside test is torchvision's rule on the line y = -1: the check says so, and which rule the
    course follows."""
    with pytest.raises(AssertionError) as info:
        CHECKS["check_offset_grad"](lambda *a: offset_grad(*a, ignore_border=True))
    msg = str(info.value)
    assert "y=0, x=2" in msg and "torchvision's rule on the line y = -1" in msg
    assert "mmcv" in msg and "original DCNv2 code" in msg and "get_coordinate_weight" in msg


def test_q3_the_torchvision_variant_differs_exactly_on_the_minus_one_line():
    """The numeric claim behind the hint: on the case whose top kernel row sits on y = -1 (zero offsets, output
    row 0), torchvision's rule and the course's differ exactly in the Δy entries of those three kernel points."""
    case = next(c for c in CHECKS["check_offset_grad"].cases(0) if c["args"][3] == 0 and not np.any(c["args"][2]))
    image, weight, off, y, x = case["args"]
    ours = CHECKS["_offset_grad_ref"](image, weight, off, y, x)
    theirs = CHECKS["_torchvision_rule"](image, weight, off, y, x)
    differ = ~np.isclose(ours, theirs)
    assert differ[:3, 0].all() and not differ[3:].any() and not differ[:, 1].any()
    assert np.all(ours[:3, 0] == 0)
    # torchvision's value there is the forward difference x(0) - 0, weighted: sum_c w[c, 0, j] x_c(0, x - 1 + j)
    want = np.array([weight[:, 0, j] @ image[:, 0, x - 1 + j] for j in range(3)])
    assert np.allclose(theirs[:3, 0], want)


def test_q3_the_torchvision_variant_is_torchvisions_gradient():
    """Where torchvision is importable (the peer environment): the check's model of torchvision's rule is what
    torchvision computes, on every case of the check."""
    torch = pytest.importorskip("torch")
    ops = pytest.importorskip("torchvision.ops")
    for case in CHECKS["check_offset_grad"].cases(0):
        image, weight, off, y, x = case["args"]
        C, H, W = image.shape
        field = torch.zeros(1, 18, H, W, dtype=torch.float64)
        field[0, :, y, x] = torch.from_numpy(np.asarray(off, dtype=np.float64).reshape(-1))
        field.requires_grad_()
        out = ops.deform_conv2d(torch.from_numpy(image[None]), field, torch.from_numpy(weight[None]), padding=1)
        out[0, 0, y, x].backward()
        got = field.grad[0, :, y, x].numpy().reshape(9, 2)
        assert np.allclose(got, CHECKS["_torchvision_rule"](image, weight, off, y, x), atol=1e-12)


def test_q3_a_finite_difference_is_caught_a_hair_below_an_integer():
    def forward(image, weight, offsets, y, x, h=1e-6):
        # forward differences of the learner's own forward pass (their im2col), with the inside test
        C, H, W = image.shape

        def out(off):
            val = 0.0
            for k in range(9):
                i, j = divmod(k, 3)
                py, px = y - 1 + i + off[k, 0], x - 1 + j + off[k, 1]
                val += weight[:, i, j] @ bilinear_sample(image, np.array(py), np.array(px))
            return float(val)

        base, g = out(offsets), np.zeros((9, 2))
        for k in range(9):
            i, j = divmod(k, 3)
            py, px = y - 1 + i + offsets[k, 0], x - 1 + j + offsets[k, 1]
            if not (-1 < py < H and -1 < px < W):
                continue
            for a in range(2):
                o = offsets.copy()
                o[k, a] += h
                g[k, a] = (out(o) - base) / h
        return g

    with pytest.raises(AssertionError) as info:
        CHECKS["check_offset_grad"](forward)
    assert "y=3, x=2" in str(info.value) and "segment on the left" in str(info.value)


# ------------------------------------------------------------------------------------------ q2 answers

def col2im(grad_columns, offset, kernel_size, padding, input_shape, mode="right"):
    """A learner's col2im: kernel point by kernel point, corner by corner, np.add.at."""
    C, H, W = input_shape
    K = kernel_size * kernel_size
    _, Ho, Wo = offset.shape
    g = grad_columns.reshape(C, K, Ho, Wo)
    out = np.zeros((C, H, W))
    for k in range(K):
        i, j = divmod(k, kernel_size)
        dy, dx = (offset[2 * k + 1], offset[2 * k]) if mode == "swap" else (offset[2 * k], offset[2 * k + 1])
        pad = 0 if mode == "no-padding" else padding
        py = np.arange(Ho)[:, None] - pad + i + dy
        px = np.arange(Wo)[None, :] - pad + j + dx
        y0, x0 = np.floor(py).astype(int), np.floor(px).astype(int)
        ly, lx = py - y0, px - x0
        for a, b, w in ((0, 0, (1 - ly) * (1 - lx)), (0, 1, (1 - ly) * lx), (1, 0, ly * (1 - lx)), (1, 1, ly * lx)):
            yi, xi = y0 + a, x0 + b
            ok = (yi >= 0) & (yi < H) & (xi >= 0) & (xi < W)
            if mode == "clamp":
                ok = np.ones_like(ok)
            yc, xc = np.clip(yi, 0, H - 1), np.clip(xi, 0, W - 1)
            contribution = g[:, k] * (w * ok)[None]
            if mode == "add-once":
                out[:, yc, xc] += contribution
            else:
                np.add.at(out, (slice(None), yc, xc), contribution)
    return out


def col2im_by_adjoint(grad_columns, offset, kernel_size, padding, input_shape):
    """Another honest answer: im2col (the learner's own, here the test's) is linear in x, so col2im is its
    transpose, read off one basis image at a time."""
    C, H, W = input_shape
    out = np.zeros(C * H * W)
    for n in range(out.size):
        e = np.zeros(C * H * W)
        e[n] = 1.0
        out[n] = np.sum(im2col(e.reshape(C, H, W), offset, kernel_size, padding) * grad_columns)
    return out.reshape(C, H, W)


def test_q2_accepts_a_correct_answer(capsys):
    assert CHECKS["check_deform_col2im"](col2im) is None
    assert CHECKS["check_deform_col2im"](col2im_by_adjoint) is None
    for seed in (1, 2):
        CHECKS["check_deform_col2im"](col2im, seed=seed)
    assert capsys.readouterr().out == ""


def test_q2_the_reference_passes_the_adjoint_test():
    """The check's reference is the transpose of q1's: <im2col(x), g> = <x, col2im(g)> on every case."""
    for case in CHECKS["check_deform_col2im"].cases(3):
        gc, off, k, p, shape = case["args"]
        x = case["x"]
        lhs = np.sum(CHECKS["_im2col_ref"](x, off, k, p) * gc)
        rhs = np.sum(x * CHECKS["_col2im_ref"](gc, off, k, p, shape))
        assert np.isclose(lhs, rhs, rtol=1e-12)


WRONG_COL2IM = [
    (lambda *a: col2im(*a, mode="add-once"), "repeated indices added once"),
    (lambda *a: col2im(*a, mode="clamp"), "corners off the map clamped onto the border"),
    (lambda *a: col2im(*a, mode="swap"), "Δy and Δx swapped"),
    (lambda *a: col2im(*a, mode="no-padding"), "padding forgotten"),
    (lambda *a: col2im(*a) * 1.01, "The adjoint test fails too"),
    (lambda *a: col2im(*a).reshape(-1), "expected shape [1, 5, 6] = input_shape"),
    (lambda *a: None, "returned None"),
    (lambda *a: ..., "not written yet"),
]


@pytest.mark.parametrize("wrong, message", WRONG_COL2IM, ids=[m for _, m in WRONG_COL2IM])
def test_q2_rejects_typical_mistakes(wrong, message):
    with pytest.raises(AssertionError) as info:
        CHECKS["check_deform_col2im"](wrong)
    assert message in str(info.value), str(info.value)


def test_q2_the_adjoint_numbers_are_in_the_message():
    with pytest.raises(AssertionError) as info:
        CHECKS["check_deform_col2im"](lambda *a: col2im(*a) * 1.01)
    msg = str(info.value)
    lhs, rhs = (float(v) for v in re.findall(r"= (-?[0-9.e+-]+)", msg.split("adjoint test fails too:")[1])[:2])
    assert np.isclose(rhs, 1.01 * lhs, rtol=1e-4)


# ------------------------------------------------------------------------------------- issue 15: not bypassable

@pytest.mark.parametrize("check", ["check_deform_im2col", "check_deform_col2im", "check_offset_grad"])
def test_the_unavailable_names_exist(check):
    unavailable_names_exist(CHECKS, check)


def test_q1_an_answer_that_delegates_to_the_package_fails_without_it():
    def via_reference(x, offset, kernel_size, padding):
        from dcn_lessons.reference import deform_im2col

        return deform_im2col(x[None], offset[None], None, kernel_size, padding=padding)[0]

    def via_forward(x, offset, kernel_size, padding):  # one-hot weights: the forward pass returns the columns
        from dcn_lessons.reference import deform_conv2d

        C, K = x.shape[0], kernel_size * kernel_size
        eye = np.eye(C * K).reshape(C * K, C, kernel_size, kernel_size)
        return deform_conv2d(x[None], offset[None], eye, padding=padding)[0].reshape(C * K, -1)

    def via_torch(x, offset, kernel_size, padding):
        import torch

        from dcn_lessons.ops import deform_im2col

        cols = deform_im2col(torch.from_numpy(x[None]), torch.from_numpy(offset[None]), None, kernel_size,
                             padding=padding)
        return cols[0].numpy()

    for answer in (via_reference, via_forward, via_torch):
        assert CHECKS["check_deform_im2col"](answer) is None
        with pytest.raises(AssertionError, match="unavailable while this answer is graded"):
            graded_without_package(CHECKS, "check_deform_im2col", answer)
    graded_without_package(CHECKS, "check_deform_im2col", im2col)  # built on bilinear_sample: the lesson's tool


def test_q2_an_answer_that_delegates_to_the_package_fails_without_it():
    def via_reference(grad_columns, offset, kernel_size, padding, input_shape):
        from dcn_lessons.reference import deform_col2im

        return deform_col2im(grad_columns[None], offset[None], None, (1, *input_shape), kernel_size,
                             padding=padding)[0]

    def via_backward(grad_columns, offset, kernel_size, padding, input_shape):  # one-hot weights again
        from dcn_lessons.reference import deform_conv2d_backward

        C, K = input_shape[0], kernel_size * kernel_size
        eye = np.eye(C * K).reshape(C * K, C, kernel_size, kernel_size)
        go = grad_columns.reshape(1, C * K, *offset.shape[1:])
        return deform_conv2d_backward(go, np.zeros((1, *input_shape)), offset[None], eye, padding=padding).input[0]

    def via_bilinear_backward(grad_columns, offset, kernel_size, padding, input_shape):
        from dcn_lessons.reference import bilinear_sample_backward

        C = input_shape[0]
        K = kernel_size * kernel_size
        _, Ho, Wo = offset.shape
        g = grad_columns.reshape(C, K, Ho, Wo)
        out = np.zeros(input_shape)
        for k in range(K):
            i, j = divmod(k, kernel_size)
            py = np.arange(Ho)[:, None] - padding + i + offset[2 * k]
            px = np.arange(Wo)[None, :] - padding + j + offset[2 * k + 1]
            out += bilinear_sample_backward(g[:, k], np.zeros(input_shape), py + 0 * px, px + 0 * py)[0]
        return out

    def via_package_adjoint(grad_columns, offset, kernel_size, padding, input_shape):
        from dcn_lessons.reference import deform_im2col

        C, H, W = input_shape
        out = np.zeros(C * H * W)
        for n in range(out.size):
            e = np.zeros((1, C * H * W))
            e[0, n] = 1.0
            out[n] = np.sum(deform_im2col(e.reshape(1, C, H, W), offset[None], None, kernel_size,
                                          padding=padding)[0] * grad_columns)
        return out.reshape(C, H, W)

    for answer in (via_reference, via_backward, via_bilinear_backward, via_package_adjoint):
        assert CHECKS["check_deform_col2im"](answer) is None
        with pytest.raises(AssertionError, match="unavailable while this answer is graded"):
            graded_without_package(CHECKS, "check_deform_col2im", answer)
    graded_without_package(CHECKS, "check_deform_col2im", col2im)
    graded_without_package(CHECKS, "check_deform_col2im", col2im_by_adjoint)


def test_q3_an_answer_that_delegates_to_the_package_fails_without_it():
    def via_one_hot_backward(image, weight, offsets, y, x):
        from dcn_lessons.reference import deform_conv2d_backward

        C, H, W = image.shape
        field = np.zeros((1, 18, H, W))
        field[0, :, y, x] = np.asarray(offsets).reshape(-1)
        go = np.zeros((1, 1, H, W))
        go[0, 0, y, x] = 1.0
        return deform_conv2d_backward(go, image[None], field, weight[None], padding=1).offset[0, :, y, x].reshape(9, 2)

    def via_autograd(image, weight, offsets, y, x):
        import torch

        from dcn_lessons.ops import deform_conv2d

        C, H, W = image.shape
        field = torch.zeros(1, 18, H, W, dtype=torch.float64)
        field[0, :, y, x] = torch.from_numpy(np.asarray(offsets, dtype=np.float64).reshape(-1))
        field.requires_grad_()
        deform_conv2d(torch.from_numpy(image[None]), field, torch.from_numpy(weight[None]), padding=1)[0, 0, y, x].backward()
        return field.grad[0, :, y, x].numpy().reshape(9, 2)

    for answer in (via_one_hot_backward, via_autograd):
        assert CHECKS["check_offset_grad"](answer) is None
        with pytest.raises(AssertionError, match="unavailable while this answer is graded"):
            graded_without_package(CHECKS, "check_offset_grad", answer)
    graded_without_package(CHECKS, "check_offset_grad", offset_grad)


def test_no_failure_message_gives_the_answer_away():
    wrong_q1 = [w for w, _ in [
        (lambda x, o, k, p: im2col(x, o, k, p, swap=True), ""), (lambda x, o, k, p: im2col(x, o, k, p, k_major=True), ""),
        (lambda x, o, k, p: im2col(x, o, k, p, pad_shift=False), ""), (lambda x, o, k, p: im2col(x, o, k, p) + 1e-3, ""),
        (lambda x, o, k, p: im2col(x, o, k, p, transpose=True), "")]]
    assert_gives_nothing_away(failure_messages(CHECKS["check_deform_im2col"], wrong_q1),
                              solution_lines("02_", "my_deform_im2col"))
    assert_gives_nothing_away(failure_messages(CHECKS["check_deform_col2im"], [w for w, _ in WRONG_COL2IM[:5]]),
                              solution_lines("02_", "my_deform_col2im"))
    wrong_q3 = [lambda *a: offset_grad(*a, swap=True), lambda *a: offset_grad(*a, central=True),
                lambda *a: -offset_grad(*a), lambda *a: offset_grad(*a, ignore_border=True),
                lambda *a: offset_grad(*a) + 1e-3]
    assert_gives_nothing_away(failure_messages(CHECKS["check_offset_grad"], wrong_q3),
                              solution_lines("02_", "my_offset_grad"),
                              formulas=["(1-lx)*(v(y0+1,x0)-v(y0,x0))", "(1-ly)*(v(y0,x0+1)-v(y0,x0))"])
