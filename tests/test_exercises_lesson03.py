"""Lesson 03's checks: silent on a correct answer, a teaching message on the typical wrong ones."""
from __future__ import annotations

import numpy as np
import pytest

from dcn_lessons.exercises import load
from dcn_lessons.reference import bilinear_sample, deform_conv2d

CHECKS = load("lesson03")


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


# ------------------------------------------------------------------------------------------ q1 answers

def split(out, G):
    K = out.shape[1] // (3 * G)
    return out[:, : 2 * G * K], sigmoid(out[:, 2 * G * K:])


def split_blocks(out, G):  # [2K | K] per group: right only for G = 1
    N, _, Ho, Wo = out.shape
    K = out.shape[1] // (3 * G)
    b = out.reshape(N, G, 3 * K, Ho, Wo)
    return b[:, :, : 2 * K].reshape(N, -1, Ho, Wo), sigmoid(b[:, :, 2 * K:]).reshape(N, -1, Ho, Wo)


def split_triples(out, G):
    N, _, Ho, Wo = out.shape
    t = out.reshape(N, -1, 3, Ho, Wo)
    return t[:, :, :2].reshape(N, -1, Ho, Wo), sigmoid(t[:, :, 2])


def split_softmax(out, G):
    off, _ = split(out, G)
    N, _, Ho, Wo = out.shape
    z = out[:, off.shape[1]:].reshape(N, G, -1, Ho, Wo)
    e = np.exp(z)
    return off, (e / e.sum(axis=2, keepdims=True)).reshape(N, -1, Ho, Wo)


def test_q1_accepts_a_correct_answer(capsys):
    assert CHECKS["check_split_branch"](split) is None
    assert CHECKS["check_split_branch"](lambda o, G: tuple(np.split(o, [2 * o.shape[1] // 3], axis=1)[:1])
                                        + (sigmoid(np.split(o, [2 * o.shape[1] // 3], axis=1)[1]),)) is None
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize(
    "wrong, message",
    [
        (lambda o, G: (split(o, G)[0], o[:, 2 * o.shape[1] // 3:]), "the sigmoid forgotten"),
        (split_softmax, "a softmax over the kernel points"),
        (lambda o, G: (o[:, o.shape[1] // 3:], sigmoid(o[:, : o.shape[1] // 3])), "mask taken from the FIRST"),
        (split_triples, "(Δy, Δx, m) triples"),
        (split_blocks, "one [2K offsets | K masks] block per offset group"),
        (lambda o, G: split(o, G)[::-1], "the pair is in the wrong order"),
        (lambda o, G: split(o, G)[0], "expected a pair (offset, mask)"),
        (lambda o, G: (split(o, G)[0][:, :-1], split(o, G)[1]), "expected shape"),
        (lambda o, G: (split(o, G)[0], split(o, G)[1] + 1e-3), "values are wrong"),
        (lambda o, G: ..., "not written yet"),
        (lambda o, G: None, "returned None -- did you forget `return offset, mask`?"),
    ],
)
def test_q1_rejects_typical_mistakes(wrong, message):
    with pytest.raises(AssertionError) as info:
        CHECKS["check_split_branch"](wrong)
    assert message in str(info.value)


def test_q1_zero_branch_case_comes_first_and_names_the_call():
    with pytest.raises(AssertionError) as info:
        CHECKS["check_split_branch"](lambda o, G: (split(o, G)[0], np.ones((o.shape[0], o.shape[1] // 3, *o.shape[2:]))))
    msg = str(info.value)
    assert "my_split_branch(out [1, 27, 4, 5], offset_groups=1)[1] (mask)" in msg
    assert "expected 0.5" in msg and "sigmoid(0) = 0.5" in msg


# ------------------------------------------------------------------------------------------ q2 answers

def mask_grad(x, offset, mask, weight, grad_out, padding, *, extra=None, swap=False, ignore_offsets=False,
              transpose=False, keep_c=False):
    C, H, W = x.shape
    O, _, kh, kw = weight.shape
    K, Ho, Wo = mask.shape
    out = np.zeros((C, K, Ho, Wo))
    for k in range(K):
        i, j = divmod(k, kw)
        dy, dx = (offset[2 * k], offset[2 * k + 1]) if not ignore_offsets else (0.0, 0.0)
        if swap:
            dy, dx = dx, dy
        py = np.arange(Ho)[:, None] - padding + i + dy
        px = np.arange(Wo)[None, :] - padding + j + dx
        v = bilinear_sample(x, py + 0 * px, px + 0 * py)  # [C, Ho, Wo]
        w = weight[:, :, j, i] if transpose else weight[:, :, i, j]  # [O, C]
        out[:, k] = np.einsum("oc,oyx,cyx->cyx", w, grad_out, v)
    if keep_c:
        return out
    g = out.sum(axis=0)
    return g if extra is None else g * extra(mask)


def test_q2_accepts_a_correct_answer(capsys):
    assert CHECKS["check_mask_grad"](mask_grad) is None
    assert capsys.readouterr().out == ""


def test_q2_answer_is_the_finite_difference_of_the_loss():
    # the check's reference really is ∂L/∂Δm for L = Σ grad_out · y (central differences, linear in Δm)
    rng = np.random.default_rng(0)
    x, off = rng.normal(size=(2, 5, 5)), rng.uniform(-1, 1, size=(18, 5, 5))
    mask, weight, go = rng.uniform(0.2, 0.8, size=(9, 5, 5)), rng.normal(size=(3, 2, 3, 3)), rng.normal(size=(3, 5, 5))
    g = mask_grad(x, off, mask, weight, go, 1)
    for k, y, xo in [(0, 0, 0), (4, 2, 3), (8, 4, 1)]:
        d = np.zeros_like(mask)
        d[k, y, xo] = 1e-6
        L = lambda m: float(np.sum(go * deform_conv2d(x[None], off[None], weight, padding=1, mask=m[None])[0]))
        assert np.isclose((L(mask + d) - L(mask - d)) / 2e-6, g[k, y, xo], rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize(
    "wrong, message",
    [
        (lambda *a: mask_grad(*a, extra=lambda m: m), "an extra factor Δm_k."),
        (lambda *a: mask_grad(*a, extra=lambda m: m * (1 - m)), "gradient with respect to the mask LOGIT"),
        (lambda *a: mask_grad(*a, ignore_offsets=True), "the offsets ignored"),
        (lambda *a: mask_grad(*a, swap=True), "Δy and Δx swapped"),
        (lambda *a: mask_grad(*a, transpose=True), "the kernel transposed"),
        (lambda *a: -mask_grad(*a), "the sign flipped"),
        (lambda *a: mask_grad(*a, keep_c=True), "sum over the input channels c"),
        (lambda *a: mask_grad(*a).reshape(a[2].shape[0], -1), "one [Ho, Wo] map per kernel point"),
        (lambda *a: mask_grad(*a) + 1e-3, "values are wrong; first at index [0, 0, 0]"),
        (lambda *a: None, "returned None"),
        (lambda *a: 1 / 0, "raised ZeroDivisionError"),
    ],
)
def test_q2_rejects_typical_mistakes(wrong, message):
    with pytest.raises(AssertionError) as info:
        CHECKS["check_mask_grad"](wrong)
    assert message in str(info.value)


def test_q2_names_the_case_that_failed():
    # right only when there is one output channel: the 2-output case is named in the message
    def first_output_only(x, offset, mask, weight, grad_out, padding):
        return mask_grad(x, offset, mask, weight[:1], grad_out[:1], padding)

    with pytest.raises(AssertionError) as info:
        CHECKS["check_mask_grad"](first_output_only)
    msg = str(info.value)
    assert "weight [2, 3, 3, 3]" in msg and "sum over the output channels o" in msg


# ------------------------------------------------------------------------------------- issue 15: not bypassable

from test_exercises_lesson00 import (  # noqa: E402  (the helpers the tests of lessons 00-04 share)
    assert_gives_nothing_away, failure_messages, graded_without_package, solution_lines, unavailable_names_exist)


@pytest.mark.parametrize("check", ["check_split_branch", "check_mask_grad"])
def test_the_unavailable_names_exist(check):
    unavailable_names_exist(CHECKS, check)


def test_q1_an_answer_that_delegates_to_the_package_fails_without_it(monkeypatch):
    """The package splits the branch inside ``ModulatedDeformConv2dPack.forward``: an answer that lets the layer do
    it (its branch made to return ``out``, the split read off where the layer hands it to the operator)."""
    import torch

    def via_layer(out, G):
        import dcn_lessons.ops.layers as layers
        from dcn_lessons.ops import ModulatedDeformConv2dPack

        N, ch, Ho, Wo = out.shape
        K = ch // (3 * G)
        kh = int(round(K ** 0.5))
        layer = ModulatedDeformConv2dPack(G, G, kh, padding=(kh - 1) // 2, offset_groups=G).double()
        class Given(torch.nn.Module):  # the branch, made to return the output under test
            def forward(self, x):
                return torch.from_numpy(out)

        layer.conv_offset = Given()
        caught = {}
        real = layers.deform_conv2d

        def spy(input, offset, weight, bias, stride, padding, dilation, mask):
            caught.update(offset=offset.numpy(), mask=mask.numpy())
            return real(input, offset, weight, bias, stride, padding, dilation, mask)

        layers.deform_conv2d = spy
        try:
            layer(torch.zeros(N, G, Ho + kh - 1 - 2 * ((kh - 1) // 2), Wo + kh - 1 - 2 * ((kh - 1) // 2),
                              dtype=torch.float64))
        finally:
            layers.deform_conv2d = real
        return caught["offset"], caught["mask"]

    assert CHECKS["check_split_branch"](via_layer) is None  # right while the package is there
    with pytest.raises(AssertionError, match="unavailable while this answer is graded"):
        graded_without_package(CHECKS, "check_split_branch", via_layer)
    graded_without_package(CHECKS, "check_split_branch", split)


def test_q2_an_answer_that_delegates_to_the_package_fails_without_it():
    def via_backward(x, offset, mask, weight, grad_out, padding):
        from dcn_lessons.reference import deform_conv2d_backward

        return deform_conv2d_backward(grad_out[None], x[None], offset[None], weight, padding=padding,
                                      mask=mask[None]).mask[0]

    def via_autograd(x, offset, mask, weight, grad_out, padding):
        import torch

        from dcn_lessons.ops import deform_conv2d as op

        m = torch.from_numpy(mask[None]).requires_grad_()
        y = op(torch.from_numpy(x[None]), torch.from_numpy(offset[None]), torch.from_numpy(weight),
               padding=padding, mask=m)
        (y * torch.from_numpy(grad_out[None])).sum().backward()
        return m.grad[0].numpy()

    for answer in (via_backward, via_autograd):
        assert CHECKS["check_mask_grad"](answer) is None
        with pytest.raises(AssertionError, match="unavailable while this answer is graded"):
            graded_without_package(CHECKS, "check_mask_grad", answer)
    graded_without_package(CHECKS, "check_mask_grad", mask_grad)

    def via_im2col(x, offset, mask, weight, grad_out, padding):  # the hint's way: lesson 02's im2col, available
        from dcn_lessons.reference import deform_im2col

        C, (O, _, kh, kw), (K, Ho, Wo) = x.shape[0], weight.shape, mask.shape
        cols = deform_im2col(x[None], offset[None], None, (kh, kw), padding=padding)[0]
        return ((weight.reshape(O, -1).T @ grad_out.reshape(O, -1)) * cols).reshape(C, K, -1).sum(0).reshape(K, Ho, Wo)

    graded_without_package(CHECKS, "check_mask_grad", via_im2col)


def test_no_failure_message_gives_the_answer_away():
    wrong_q1 = [lambda o, G: (split(o, G)[0], o[:, 2 * o.shape[1] // 3:]), split_softmax,
                lambda o, G: (o[:, o.shape[1] // 3:], sigmoid(o[:, : o.shape[1] // 3])), split_triples, split_blocks,
                lambda o, G: (split(o, G)[0], split(o, G)[1] + 1e-3), lambda o, G: (split(o, G)[0] + 1e-3, split(o, G)[1])]
    assert_gives_nothing_away(failure_messages(CHECKS["check_split_branch"], wrong_q1),
                              solution_lines("03_", "my_split_branch"),
                              formulas=["out[:, :2*G*K]", "out[:,2*G*K:]", "out[:, :2*K]", "2*out.shape[1]//3",
                                        "1/(1+exp(-"])
    wrong_q2 = [lambda *a: mask_grad(*a, extra=lambda m: m), lambda *a: mask_grad(*a, extra=lambda m: m * (1 - m)),
                lambda *a: mask_grad(*a, ignore_offsets=True), lambda *a: mask_grad(*a, swap=True),
                lambda *a: mask_grad(*a, transpose=True), lambda *a: -mask_grad(*a), lambda *a: mask_grad(*a) + 1e-3]
    assert_gives_nothing_away(failure_messages(CHECKS["check_mask_grad"], wrong_q2),
                              solution_lines("03_", "my_mask_grad"),
                              formulas=["weight.reshape(O,-1).T@grad_out.reshape(O,-1)"])
