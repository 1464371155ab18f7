"""Lesson 08's checks: silent on a correct answer, a teaching message on the typical wrong ones, no answer printed,
and an answer that only calls the package fails once the package's own implementation is unavailable."""
from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch

from dcn_lessons.exercises import load
from test_exercises_lesson07 import graded_without_package

CHECKS = load("lesson08")


#: tiny tensors: one intra-op thread (the fixture in tests/conftest.py says why)
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("check", ["check_true_offsets", "check_effective_dilation", "check_erf"])
def test_the_unavailable_names_exist(check):
    assert CHECKS[check].unavailable
    for name in CHECKS[check].unavailable:
        module, _, attr = name.partition(":")
        assert hasattr(importlib.import_module(module), attr), name


# ------------------------------------------------------------------------------------------ q1

def true_offsets(matrix, shift, centre, h, w, at_centre=False, pad=1, backward=False, transpose=False):
    m = np.asarray(matrix, dtype=np.float64)
    m = m.T if transpose else m
    yy, xx = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64), indexing="ij")
    out = np.zeros((9, 2, h, w))
    for k in range(9):
        i, j = divmod(k, 3)
        sy, sx = (yy, xx) if at_centre else (yy + i - pad, xx + j - pad)
        if backward:  # phi(q) - q with phi the inverse map
            d = np.stack([sy - centre[0] - shift[0], sx - centre[1] - shift[1]])
            src = np.tensordot(np.linalg.inv(m), d, axes=(1, 0)) + np.asarray(centre)[:, None, None]
            out[k] = src - np.stack([sy, sx])
        else:
            d = np.stack([sy - centre[0], sx - centre[1]])
            out[k] = np.tensordot(m - np.eye(2), d, axes=(1, 0)) + np.asarray(shift)[:, None, None]
    return out


def test_q1_accepts_a_correct_answer(capsys):
    assert CHECKS["check_true_offsets"](true_offsets) is None
    assert CHECKS["check_true_offsets"](lambda *a: torch.from_numpy(true_offsets(*a))) is None
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("wrong, message", [
    (lambda *a: true_offsets(*a, backward=True), "the backward displacement"),
    (lambda *a: true_offsets(*a, at_centre=True), "one displacement per output"),
    (lambda *a: true_offsets(*a)[:, ::-1], "Δx before Δy"),
    (lambda *a: true_offsets(*a, pad=0), "padding forgotten"),
    # for a rotation, the transposed matrix is the inverse one: the backward displacement (the rotation case comes
    # before the random ones, so that is what the check names)
    (lambda *a: true_offsets(*a, transpose=True), "the backward displacement"),
    (lambda *a: true_offsets(*a).transpose(1, 0, 2, 3), "the two leading axes are exchanged"),
    (lambda *a: true_offsets(*a) + 0.01, "values are wrong; first at kernel point 0, Δy, output (0, 0)"),
    (lambda *a: None, "returned None"),
    (lambda *a: ..., "not written yet"),
])
def test_q1_rejects_typical_mistakes(wrong, message):
    with pytest.raises(AssertionError) as info:
        CHECKS["check_true_offsets"](wrong)
    assert message in str(info.value)


def test_q1_a_transposed_matrix_is_named_on_a_general_affine_map():
    case = CHECKS["check_true_offsets"].cases(0)[3]
    with pytest.raises(AssertionError, match="the matrix transposed"):
        CHECKS["check_true_offsets"].judge(case, true_offsets(*case["args"], transpose=True))


def test_q1_psi_instead_of_u_is_named():
    def psi(m, t, c, h, w):  # the new position of each regular point
        yy, xx = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64), indexing="ij")
        grid = np.stack([np.stack([yy + i - 1, xx + j - 1]) for i in range(3) for j in range(3)])
        return true_offsets(m, t, c, h, w) + grid

    with pytest.raises(AssertionError, match="the new position, not the displacement"):
        CHECKS["check_true_offsets"](psi)


def test_q1_messages_do_not_give_the_answer_away():
    for seed in (0, 4):
        case = CHECKS["check_true_offsets"].cases(seed)[4]  # a random affine map: no round numbers
        want = true_offsets(*case["args"])
        with pytest.raises(AssertionError) as info:
            CHECKS["check_true_offsets"].judge(case, want * 1.5)
        assert "got" in str(info.value) and "expected" not in str(info.value)
        assert f"{want[0, 0, 0, 0]:.6g}" not in str(info.value) and f"{want[0, 0, 0, 0]:.3f}" not in str(info.value)


def test_q1_an_answer_that_delegates_to_the_package_fails_without_it():
    def delegate(m, t, c, h, w):
        from dcn_lessons.analysis import AffineField, true_offsets as package

        return package(AffineField(m, t, c), (h, w), 3)

    def via_field(m, t, c, h, w):  # the field's own u, at the regular positions
        from dcn_lessons.analysis.warp import AffineField

        yy, xx = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64), indexing="ij")
        return np.stack([np.stack(AffineField(m, t, c)(yy + i - 1, xx + j - 1)) for i in range(3) for j in range(3)])

    for answer in (delegate, via_field):
        assert CHECKS["check_true_offsets"](answer) is None
        with pytest.raises(AssertionError, match="unavailable while this answer is graded"):
            graded_without_package(CHECKS, "check_true_offsets", answer)
    graded_without_package(CHECKS, "check_true_offsets", true_offsets)


# ------------------------------------------------------------------------------------------ q2

def dilation(offsets, d, pairs="adjacent", metric="euclid", grid=True):
    i, j = np.divmod(np.arange(9), 3)
    p = (np.stack([i * d, j * d], 1) if grid else 0) + np.asarray(offsets, dtype=np.float64)
    p = p.reshape(3, 3, 2)
    if pairs == "all":
        flat = p.reshape(9, 2)
        diffs = np.array([flat[a] - flat[b] for a in range(9) for b in range(a + 1, 9)])
    else:
        diffs = np.concatenate([(p[:, 1:] - p[:, :-1]).reshape(-1, 2), (p[1:] - p[:-1]).reshape(-1, 2)])
        if pairs == "diagonal":
            diffs = np.concatenate([diffs, (p[1:, 1:] - p[:-1, :-1]).reshape(-1, 2),
                                    (p[1:, :-1] - p[:-1, 1:]).reshape(-1, 2)])
        if pairs == "rows":
            diffs = (p[:, 1:] - p[:, :-1]).reshape(-1, 2)
    if metric == "manhattan":
        return np.abs(diffs).sum(1).mean()
    if metric == "squared":
        return (diffs ** 2).sum(1).mean()
    return np.linalg.norm(diffs, axis=1).mean()


def test_q2_accepts_a_correct_answer(capsys):
    assert CHECKS["check_effective_dilation"](dilation) is None
    assert CHECKS["check_effective_dilation"](lambda o, d: np.float32(dilation(o, d))) is None
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("wrong, message", [
    (lambda o, d: dilation(o, d, pairs="diagonal"), "the diagonal neighbours counted too"),
    (lambda o, d: dilation(o, d, pairs="all"), "every pair of the nine points"),
    (lambda o, d: dilation(o, d, pairs="rows"), "only the neighbours along rows"),
    (lambda o, d: dilation(o, d, metric="manhattan"), "city-block"),
    (lambda o, d: dilation(o, d, metric="squared"), "squared distances"),
    (lambda o, d: dilation(o, d, grid=False), "without the regular grid"),
    (lambda o, d: dilation(o, 1), "the regular grid of dilation 1"),
    (lambda o, d: dilation(np.asarray(o)[:, ::-1], d), "each offset read as (Δx, Δy)"),
    (lambda o, d: dilation(o, d) + 0.5, "which is too large"),
    (lambda o, d: np.ones(3), "expected one number"),
    (lambda o, d: None, "returned None"),
])
def test_q2_rejects_typical_mistakes(wrong, message):
    with pytest.raises(AssertionError) as info:
        CHECKS["check_effective_dilation"](wrong)
    assert message in str(info.value)


def test_q2_messages_do_not_give_the_answer_away():
    for seed in (0, 3):
        for case in CHECKS["check_effective_dilation"].cases(seed):
            want = dilation(*case["args"])
            if abs(want - round(want)) < 1e-3:  # an integer answer (the regular grid) is in the case's own text
                continue
            with pytest.raises(AssertionError) as info:
                CHECKS["check_effective_dilation"].judge(case, want + 0.25)
            assert f"{want:.6g}" not in str(info.value) and f"{want:.3f}" not in str(info.value)


def test_q2_an_answer_that_delegates_to_the_package_fails_without_it():
    def delegate(offsets, d):
        from dcn_lessons.analysis import effective_dilation

        return float(effective_dilation(np.asarray(offsets).reshape(1, 18, 1, 1), 3, d)[0, 0, 0, 0])

    def via_table(offsets, d):  # Table 2's function on one filter, which calls the same thing
        from dcn_lessons.analysis import Frame, LayerGeometry, dilation_by_object_size

        stats = dilation_by_object_size([np.asarray(offsets).reshape(18, 1, 1)], LayerGeometry.of(3, 1, d, d), Frame(),
                                        (1, 1))
        return stats["background"].mean

    for answer in (delegate, via_table):
        assert CHECKS["check_effective_dilation"](answer) is None
        with pytest.raises(AssertionError, match="unavailable while this answer is graded"):
            graded_without_package(CHECKS, "check_effective_dilation", answer)
    graded_without_package(CHECKS, "check_effective_dilation", dilation)


# ------------------------------------------------------------------------------------------ q3

def erf(model, image, node, mode="eval", how="abs-sum", swap=False, whole=False):
    if mode == "eval":
        model.eval()
    x = image.clone().requires_grad_(True)
    out = model(x)
    y, xx = (node[1], node[0]) if swap else node
    r = out.sum() if whole else out[0, :, y, xx].sum()
    r.backward()
    g = x.grad[0]
    if how == "signed":
        return g.sum(0)
    if how == "sum-abs":
        return g.sum(0).abs()
    return g.abs().sum(0)


def finite_differences(model, image, node):
    model.eval()
    with torch.no_grad():
        base = model(image)[0, :, node[0], node[1]].sum()
        g = torch.zeros(image.shape[-2:], dtype=torch.float64)
        for a in range(image.shape[-2]):
            for b in range(image.shape[-1]):
                bumped = image.clone()
                bumped[0, :, a, b] += 1e-6
                g[a, b] = (model(bumped)[0, :, node[0], node[1]].sum() - base) / 1e-6
    return g.abs()


def test_q3_accepts_a_correct_answer(capsys):
    assert CHECKS["check_erf"](erf) is None
    assert CHECKS["check_erf"](lambda *a: erf(*a).numpy()) is None
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("wrong, message", [
    (lambda *a: erf(*a, mode="train"), "the network in training mode"),
    (lambda *a: erf(*a, how="signed"), "the signed gradient"),
    (lambda *a: erf(*a, how="sum-abs"), "the absolute value taken after summing the image channels"),
    (lambda *a: erf(*a, swap=True), "the node's row and column exchanged"),
    (lambda *a: erf(*a, whole=True), "the gradient of the whole output map"),
    (finite_differences, "ran the network"),
    (lambda m, i, n: torch.ones(i.shape[1:]), "sum |∂r/∂I| over the image channels"),
    (lambda *a: None, "returned None"),
    (lambda *a: 1 / 0, "raised ZeroDivisionError"),
])
def test_q3_rejects_typical_mistakes(wrong, message):
    with pytest.raises(AssertionError) as info:
        CHECKS["check_erf"](wrong)
    assert message in str(info.value)


def test_q3_the_model_is_handed_over_in_training_mode_and_its_forward_passes_counted():
    seen = []

    def spy(model, image, node):
        seen.append(model.training)
        return erf(model, image, node)

    CHECKS["check_erf"](spy)
    assert seen and all(seen)
    case = CHECKS["check_erf"].cases(0)[0]
    got = CHECKS["check_erf"].run(erf, case["args"])
    assert got["forwards"] == 1


def test_q3_channel_zero_only_is_named():
    def channel0(model, image, node):
        model.eval()
        x = image.clone().requires_grad_(True)
        model(x)[0, 0, node[0], node[1]].backward()
        return x.grad[0].abs().sum(0)

    with pytest.raises(AssertionError, match="the response of channel 0 only"):
        CHECKS["check_erf"](channel0)


def test_q3_an_answer_that_delegates_to_the_package_fails_without_it():
    def delegate(model, image, node):
        from dcn_lessons.analysis import effective_receptive_field

        return effective_receptive_field(model, image, node)

    assert CHECKS["check_erf"](delegate) is None
    with pytest.raises(AssertionError, match="unavailable while this answer is graded"):
        graded_without_package(CHECKS, "check_erf", delegate)
    graded_without_package(CHECKS, "check_erf", erf)
