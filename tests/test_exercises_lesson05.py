"""Lesson 05's checks: silent on a correct answer, a teaching message on the typical wrong ones, no solution line in
any message, and an answer that only calls the package's own implementation fails once it is unavailable."""
from __future__ import annotations

import copy
import importlib
import sys

import numpy as np
import pytest
import torch
from torch import nn
from torch.autograd.function import once_differentiable

import dcn_lessons.ops as ops
from conftest import NOTEBOOKS, master_solution_lines
from dcn_lessons import reference as ref
from dcn_lessons.exercises import load
from dcn_lessons.ops import ModulatedDeformConv2dPack, deform_col2im_coord, deform_conv2d, deform_im2col
from test_exercises_lesson07 import graded_without_package

CHECKS = load("lesson05")


@pytest.mark.parametrize("check", ["check_deform_im2col_torch", "check_deform_conv_function", "check_roi_align_backward"])
def test_the_unavailable_names_exist(check):
    names = CHECKS[check].unavailable
    assert names
    for name in names:
        module, _, attr = name.partition(":")
        assert hasattr(importlib.import_module(module), attr), name


def test_the_mask_gradient_check_names_nothing_and_says_why():
    # no package function takes q2's arguments (deform_col2im_coord needs x and the offsets), and q3's honest answers
    # use deform_col2im_coord, which the lesson's masked run must therefore leave alone
    assert CHECKS["check_mask_grad_columns"].unavailable == ()
    hidden = {n for c in ("check_deform_im2col_torch", "check_deform_conv_function", "check_roi_align_backward")
              for n in CHECKS[c].unavailable}
    assert not any("col2im" in n for n in hidden)


# ------------------------------------------------------------------------------------------ q1: im2col in torch

def im2col(input, offset, mask, kernel_size, stride, padding, dilation, *, swap=False, clamp=False, trunc=False,
           order="channel", groups="contiguous", use_mask=True):
    """The deformable im2col, vectorised over everything, with switches for the typical mistakes."""
    N, C, H, W = input.shape
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel_size, stride, padding, dilation
    K = kh * kw
    Ho, Wo = offset.shape[2:]
    G = offset.shape[1] // (2 * K)
    off = offset.reshape(N, G, K, 2, Ho, Wo)
    dy, dx = (off[:, :, :, 1], off[:, :, :, 0]) if swap else (off[:, :, :, 0], off[:, :, :, 1])
    i = torch.arange(kh, dtype=input.dtype).repeat_interleave(kw)
    j = torch.arange(kw, dtype=input.dtype).repeat(kh)
    py = (torch.arange(Ho, dtype=input.dtype) * sh - ph).view(Ho, 1) + (i * dh).view(K, 1, 1) + dy
    px = (torch.arange(Wo, dtype=input.dtype) * sw - pw).view(1, Wo) + (j * dw).view(K, 1, 1) + dx
    if clamp:
        py, px = py.clamp(0, H - 1), px.clamp(0, W - 1)
    perm = list(range(C)) if groups == "contiguous" else [c for g in range(G) for c in range(C) if c % G == g]
    x = input[:, perm].reshape(N, G, C // G, H * W)
    cols = torch.zeros(N, G, C // G, K * Ho * Wo, dtype=input.dtype)
    y0, x0 = (torch.trunc(py), torch.trunc(px)) if trunc else (torch.floor(py), torch.floor(px))
    for qy in (y0, y0 + 1):
        for qx in (x0, x0 + 1):
            wy = (1 - (py - y0)) if qy is y0 else (py - y0)
            wx = (1 - (px - x0)) if qx is x0 else (px - x0)
            weight = wy * wx * ((qy >= 0) & (qy < H) & (qx >= 0) & (qx < W))
            index = (qy.clamp(0, H - 1) * W + qx.clamp(0, W - 1)).long().reshape(N, G, 1, -1)
            cols += torch.gather(x, 3, index.expand(N, G, C // G, index.shape[-1])) * weight.reshape(N, G, 1, -1)
    if mask is not None and use_mask:
        cols = cols * mask.reshape(N, G, 1, -1)
    cols = cols.reshape(N, C, K, Ho * Wo)[:, torch.argsort(torch.tensor(perm))]
    if order == "k":
        cols = cols.transpose(1, 2)
    return cols.reshape(N, C * K, Ho * Wo)


def im2col_per_pixel(input, offset, mask, kernel_size, stride, padding, dilation):
    """The same, one sample at a time through the package's torch bilinear_sample (allowed: lesson 01's tier)."""
    N, C, H, W = input.shape
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel_size, stride, padding, dilation
    K, (Ho, Wo) = kh * kw, offset.shape[2:]
    G = offset.shape[1] // (2 * K)
    cols = torch.zeros(N, C, K, Ho, Wo, dtype=input.dtype)
    yy, xx = torch.meshgrid(torch.arange(Ho, dtype=input.dtype), torch.arange(Wo, dtype=input.dtype), indexing="ij")
    for b in range(N):
        for g in range(G):
            for k in range(K):
                i, j = divmod(k, kw)
                py = yy * sh - ph + i * dh + offset[b, g * 2 * K + 2 * k]
                px = xx * sw - pw + j * dw + offset[b, g * 2 * K + 2 * k + 1]
                chans = slice(g * C // G, (g + 1) * C // G)
                vals = ops.bilinear_sample(input[b, chans], py, px)
                if mask is not None:
                    vals = vals * mask[b, g * K + k]
                cols[b, chans, k] = vals
    return cols.reshape(N, C * K, Ho * Wo)


def test_q1_accepts_a_correct_answer(capsys):
    assert CHECKS["check_deform_im2col_torch"](im2col) is None
    assert CHECKS["check_deform_im2col_torch"](im2col_per_pixel) is None
    for seed in (1, 2):
        CHECKS["check_deform_im2col_torch"](im2col, seed=seed)
    assert capsys.readouterr().out == ""


def test_q1_variants_are_the_mistakes_they_name():
    # the check's NumPy model of each mistake agrees with an independent torch version of the same mistake
    for case in CHECKS["check_deform_im2col_torch"].cases(3):
        args = case["args"]
        assert np.allclose(CHECKS["_im2col_variant"](args), CHECKS["_im2col_want"](args))
        for kw in ({"swap": True}, {"sample": "clamp"}, {"sample": "trunc"}, {"order": "k"}):
            torch_kw = {"swap": kw.get("swap", False), "clamp": kw.get("sample") == "clamp",
                        "trunc": kw.get("sample") == "trunc", "order": kw.get("order", "channel")}
            assert np.allclose(CHECKS["_im2col_variant"](args, **kw), im2col(*args, **torch_kw).numpy()), kw


def _call(**kw):
    return lambda *a: im2col(*a, **kw)


@pytest.mark.parametrize("wrong, message", [
    (_call(swap=True), "Δy and Δx swapped"),
    (_call(use_mask=False), "the mask left out"),
    (_call(order="k"), "k*C + c (kernel point major)"),
    (_call(groups="interleaved"), "offset groups interleaved"),
    (_call(clamp=True), "positions clamped into the map"),
    (_call(trunc=True), "truncation toward zero"),
    (lambda *a: im2col(*a).reshape(a[0].shape[0], a[0].shape[1], -1, a[1].shape[2] * a[1].shape[3]), "flatten channels"),
    (lambda *a: im2col(*a).reshape(a[0].shape[0], -1, *a[1].shape[2:]), "one column per output location"),
    (lambda *a: im2col(*a)[0], "keep the batch axis"),
    (lambda *a: im2col(*a) + 1e-3, "as [N, C, K, Ho, Wo]"),
    (lambda *a: None, "returned None"),
    (lambda *a: ..., "not written yet"),
    (lambda *a: 1 / 0, "raised ZeroDivisionError"),
])
def test_q1_rejects_typical_mistakes(wrong, message):
    with pytest.raises(AssertionError) as info:
        CHECKS["check_deform_im2col_torch"](wrong)
    assert message in str(info.value), str(info.value)


def test_q1_an_answer_that_delegates_to_the_package_fails_without_it():
    def via_im2col(input, offset, mask, *geo):
        return ops.deform_im2col(input, offset, mask, *geo)

    def via_conv(input, offset, mask, ks, st, pd, dl):  # a one-hot weight turns the forward into the columns
        C = input.shape[1]
        K = ks[0] * ks[1]
        eye = torch.eye(C * K, dtype=input.dtype).reshape(C * K, C, *ks)
        return ops.deform_conv2d(input, offset, eye, None, st, pd, dl, mask).flatten(2)

    def via_reference(input, offset, mask, *geo):
        return torch.from_numpy(ref.deform_im2col(input.numpy(), offset.numpy(), None if mask is None else mask.numpy(),
                                                  *geo))

    for answer in (via_im2col, via_conv, via_reference):
        assert CHECKS["check_deform_im2col_torch"](answer) is None  # right while the package is there
        with pytest.raises(AssertionError, match="unavailable while this answer is graded"):
            graded_without_package(CHECKS, "check_deform_im2col_torch", answer)
    graded_without_package(CHECKS, "check_deform_im2col_torch", im2col)
    graded_without_package(CHECKS, "check_deform_im2col_torch", im2col_per_pixel)  # lesson 01's sampler is allowed


# ------------------------------------------------------------------------------------------ q2: the mask gradient in columns

def mask_grad(grad_columns, columns, mask, offset_groups):
    n, GK, Ho, Wo = mask.shape
    K = GK // offset_groups
    per = (grad_columns * columns).reshape(n, offset_groups, -1, K, Ho * Wo)  # [n, G, C/G, K, L]
    return per.sum(dim=2).reshape(n, GK, Ho, Wo)


def mask_grad_loop(grad_columns, columns, mask, offset_groups):  # the same, one channel at a time, in NumPy
    g, c = grad_columns.numpy(), columns.numpy()
    n, GK, Ho, Wo = mask.shape
    K = GK // offset_groups
    C = g.shape[1] // K
    out = np.zeros((n, GK, Ho * Wo))
    for ch in range(C):
        grp = ch // (C // offset_groups)
        for k in range(K):
            out[:, grp * K + k] += g[:, ch * K + k] * c[:, ch * K + k]
    return out.reshape(n, GK, Ho, Wo)


def k_major(grad_columns, columns, mask, offset_groups):
    n, GK, Ho, Wo = mask.shape
    K = GK // offset_groups
    per = (grad_columns * columns).reshape(n, offset_groups, K, -1, Ho * Wo)
    return per.sum(dim=3).reshape(n, GK, Ho, Wo)


def interleaved(grad_columns, columns, mask, offset_groups):
    n, GK, Ho, Wo = mask.shape
    K = GK // offset_groups
    per = (grad_columns * columns).reshape(n, -1, offset_groups, K, Ho * Wo)
    return per.sum(dim=1).reshape(n, GK, Ho, Wo)


def all_channels(grad_columns, columns, mask, offset_groups):
    n, GK, Ho, Wo = mask.shape
    K = GK // offset_groups
    s = (grad_columns * columns).reshape(n, -1, K, Ho * Wo).sum(dim=1)  # [n, K, L]
    return s.repeat(1, offset_groups, 1).reshape(n, GK, Ho, Wo)


def test_q2_accepts_a_correct_answer(capsys):
    assert CHECKS["check_mask_grad_columns"](mask_grad) is None
    assert CHECKS["check_mask_grad_columns"](mask_grad_loop) is None  # NumPy results are accepted too
    assert capsys.readouterr().out == ""


def test_q2_answer_is_the_mask_gradient_of_the_package_operator():
    # the check's reference (deform_col2im_coord) is what autograd gives through ops.deform_conv2d
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 5, 6, generator=g, dtype=torch.float64)
    off = torch.rand(2, 2 * 2 * 9, 5, 6, generator=g, dtype=torch.float64) * 3 - 1.5
    mask = torch.rand(2, 2 * 9, 5, 6, generator=g, dtype=torch.float64).requires_grad_()
    w = torch.randn(3, 4, 3, 3, generator=g, dtype=torch.float64)
    go = torch.randn(2, 3, 5, 6, generator=g, dtype=torch.float64)
    (deform_conv2d(x, off, w, padding=1, mask=mask) * go).sum().backward()
    cols = deform_im2col(x, off, None, 3, 1, 1, 1)
    gcols = w.reshape(3, -1).T @ go.reshape(2, 3, -1)
    torch.testing.assert_close(mask_grad(gcols, cols, mask.detach(), 2), mask.grad)
    _, gm = deform_col2im_coord(gcols, x, off, mask.detach(), 3, 1, 1, 1)
    torch.testing.assert_close(gm, mask.grad)


@pytest.mark.parametrize(
    "wrong, message",
    [
        (lambda g, c, m, G: mask_grad(g, c, m, G) * m, "an extra factor Δm."),
        (lambda g, c, m, G: mask_grad(g, c, m, G) * m * (1 - m), "gradient with respect to the mask LOGIT"),
        (k_major, "rows read as k*C + c"),
        (interleaved, "c % G == g (interleaved)"),
        (all_channels, "the sum taken over ALL channels"),
        (lambda g, c, m, G: mask_grad(g, torch.ones_like(c), m, G), "without multiplying by the sampled values"),
        (lambda g, c, m, G: -mask_grad(g, c, m, G), "the sign flipped"),
        (lambda g, c, m, G: mask_grad(g, c, m, G).reshape(m.shape[0], m.shape[1], -1), "reshape the last axis P"),
        (lambda g, c, m, G: (g * c).reshape(*m.shape[:1], -1, *m.shape[2:]), "sum over the channels of each offset group"),
        (lambda g, c, m, G: (g * c).reshape(m.shape[0], -1, m.shape[1] // G, *m.shape[2:]).sum(1), "has its own K masks"),
        (lambda g, c, m, G: mask_grad(g, c, m, G) + 1e-3, "gradient mismatch"),
        (lambda g, c, m, G: None, "returned None"),
        (lambda g, c, m, G: ..., "not written yet"),
        (lambda g, c, m, G: 1 / 0, "raised ZeroDivisionError"),
    ],
)
def test_q2_rejects_typical_mistakes(wrong, message):
    with pytest.raises(AssertionError) as info:
        CHECKS["check_mask_grad_columns"](wrong)
    assert message in str(info.value)


def test_q2_placeholder_says_not_written_yet():
    def placeholder(grad_columns, columns, mask, offset_groups):
        raise NotImplementedError

    with pytest.raises(AssertionError, match="not written yet"):
        CHECKS["check_mask_grad_columns"](placeholder)


def test_q2_mismatch_names_index_package_and_central_difference():
    def off_by_one_pixel(g, c, m, G):
        out = mask_grad(g, c, m, G).clone()
        out[..., 1, 2] += 0.5
        return out

    with pytest.raises(AssertionError) as info:
        CHECKS["check_mask_grad_columns"](off_by_one_pixel)
    msg = str(info.value)
    assert "grad_columns [1, 9, 30], columns [1, 9, 30], mask [1, 9, 5, 6], offset_groups=1" in msg
    assert "first at index [0, 0, 1, 2]" in msg
    assert "deform_col2im_coord" in msg and "central difference" in msg


def test_q2_names_the_grouped_case_that_failed():
    # summing over every channel is right for one offset group: the first grouped case is the one named
    with pytest.raises(AssertionError) as info:
        CHECKS["check_mask_grad_columns"](all_channels)
    msg = str(info.value)
    assert "mask [1, 18, 4, 5], offset_groups=2" in msg and "ALL channels" in msg


# ------------------------------------------------------------------------------------------ q4: the offset branch initialised

def init_offset(layer):
    nn.init.zeros_(layer.conv_offset.weight)
    nn.init.zeros_(layer.conv_offset.bias)


def init_offset_no_grad(layer):
    with torch.no_grad():
        layer.conv_offset.weight.zero_()
        layer.conv_offset.bias.zero_()
    return layer  # returning the layer itself is fine


def test_q4_accepts_a_correct_answer(capsys):
    assert CHECKS["check_init_offset"](init_offset) is None
    assert CHECKS["check_init_offset"](init_offset_no_grad) is None
    assert capsys.readouterr().out == ""


def weight_only(layer):
    nn.init.zeros_(layer.conv_offset.weight)


def main_weight_zeroed(layer):
    init_offset(layer)
    nn.init.zeros_(layer.weight)


def main_weight_reset(layer):
    init_offset(layer)
    nn.init.normal_(layer.weight)


def small_random(layer):
    nn.init.normal_(layer.conv_offset.weight, std=1e-3)
    nn.init.zeros_(layer.conv_offset.bias)


def reset_branch(layer):
    layer.conv_offset.reset_parameters()


def new_layer(layer):
    fresh = copy.deepcopy(layer)
    init_offset(fresh)
    return fresh


def mask_saturated(layer):
    init_offset(layer)
    if isinstance(layer, ModulatedDeformConv2dPack):
        n_off = 2 * layer.offset_groups * layer.kernel_size[0] * layer.kernel_size[1]
        with torch.no_grad():
            layer.conv_offset.bias[n_off:] = 10.0


def mask_bias_other(layer):
    init_offset(layer)
    if isinstance(layer, ModulatedDeformConv2dPack):
        n_off = 2 * layer.offset_groups * layer.kernel_size[0] * layer.kernel_size[1]
        with torch.no_grad():
            layer.conv_offset.bias[n_off:] = -1.0


def offsets_only(layer):
    n_off = 2 * layer.offset_groups * layer.kernel_size[0] * layer.kernel_size[1]
    with torch.no_grad():
        layer.conv_offset.weight[:n_off] = 0.0
        layer.conv_offset.bias[:n_off] = 0.0


def in_place_without_no_grad(layer):
    layer.conv_offset.weight.zero_()


def frozen(layer):
    init_offset(layer)
    layer.conv_offset.weight.requires_grad_(False)


def new_branch_float32(layer):
    layer.conv_offset = nn.Conv2d(layer.in_channels, layer.conv_offset.out_channels, layer.kernel_size,
                                  layer.stride, layer.padding, layer.dilation)
    init_offset(layer)


def test_q4_a_replaced_parameter_is_fine_when_it_is_a_trainable_zero():
    def replaced(layer):
        w, b = layer.conv_offset.weight, layer.conv_offset.bias
        layer.conv_offset.weight = nn.Parameter(torch.zeros_like(w))
        layer.conv_offset.bias = nn.Parameter(torch.zeros_like(b))

    assert CHECKS["check_init_offset"](replaced) is None


@pytest.mark.parametrize(
    "wrong, message",
    [
        (weight_only, "conv_offset.weight is zero but conv_offset.bias is not"),
        (main_weight_zeroed, "you zeroed layer.weight"),
        (main_weight_reset, "you changed layer.weight"),
        (small_random, "random but not zero"),
        (reset_branch, "random but not zero"),
        (lambda layer: layer.init_offset(), "unavailable while this answer is checked"),
        (new_layer, "you returned a new"),
        (mask_saturated, "saturated"),
        (mask_bias_other, "mask-logit biases"),
        (offsets_only, "the mask logits) are not"),
        (in_place_without_no_grad, "torch.no_grad()"),
        (frozen, "no longer requires grad"),
        (new_branch_float32, "no longer runs"),
        (lambda layer: None, "conv_offset is unchanged"),
        (lambda layer: ..., "not written yet"),
    ],
)
def test_q4_rejects_typical_mistakes(wrong, message):
    with pytest.raises(AssertionError) as info:
        CHECKS["check_init_offset"](wrong)
    assert message in str(info.value)


def test_q4_placeholder_says_not_written_yet():
    def placeholder(layer):
        raise NotImplementedError

    with pytest.raises(AssertionError, match="not written yet"):
        CHECKS["check_init_offset"](placeholder)


def test_q4_names_the_layer_and_the_bias_shift():
    with pytest.raises(AssertionError) as info:
        CHECKS["check_init_offset"](weight_only)
    msg = str(info.value)
    assert msg.startswith("my_init_offset(DeformConv2dPack(4, 6, 3, padding=1))")
    assert "kernel point 0 by (" in msg and "different kernel" in msg  # random biases: a spread kernel, not a shift


def test_q4_mask_saturation_is_caught_on_the_modulated_layer():
    # the v1 layer passes (it has no mask), the first modulated one is named
    with pytest.raises(AssertionError) as info:
        CHECKS["check_init_offset"](mask_saturated)
    assert "ModulatedDeformConv2dPack(4, 6, 3, padding=1, offset_groups=2)" in str(info.value)


# ------------------------------------------------------------------------------------------ q3: the autograd.Function

def mask_grad_columns(grad_columns, columns, mask, G):
    n, GK, Ho, Wo = mask.shape
    return (grad_columns * columns).reshape(n, G, -1, GK // G, Ho * Wo).sum(2).reshape(mask.shape)


def make_function(forward_bias=True, input_mask=True, offset_mask=True, mask_from="unmasked", weight="all",
                  bias="sum", count=8, none_for=(), bias_always=False):
    """A learner's Function built on this file's im2col, with switches for the typical mistakes."""

    class Fn(torch.autograd.Function):
        @staticmethod
        def forward(ctx, input, offset, weight_, bias_, mask, stride, padding, dilation):
            O, C, kh, kw = weight_.shape
            columns = im2col(input, offset, mask, (kh, kw), stride, padding, dilation)
            out = (weight_.reshape(O, -1) @ columns).reshape(input.shape[0], O, *offset.shape[2:])
            if bias_ is not None and forward_bias:
                out = out + bias_.view(1, -1, 1, 1)
            ctx.save_for_backward(input, offset, weight_, mask)
            ctx.conf, ctx.has_bias = (stride, padding, dilation), bias_ is not None
            return out

        @staticmethod
        @once_differentiable
        def backward(ctx, grad_output):
            input, offset, weight_, mask = ctx.saved_tensors
            geo = ctx.conf
            O, C, kh, kw = weight_.shape
            N, ks = input.shape[0], (kh, kw)
            y_bar = grad_output.reshape(N, O, -1)
            gcols = weight_.reshape(O, -1).T @ y_bar
            masked = im2col(input, offset, mask, ks, *geo)
            plain = im2col(input, offset, None, ks, *geo)
            gw = (y_bar @ masked.transpose(1, 2)).sum(0) if weight == "all" else y_bar[0] @ masked[0].T
            gb = grad_output.sum((0, 2, 3)) if bias == "sum" else grad_output.mean((0, 2, 3))
            gi = ops.deform_col2im(gcols, offset, mask if input_mask else None, input.shape, ks, *geo)
            go = ops.deform_col2im_coord(gcols, input, offset, mask if offset_mask else None, ks, *geo)[0]
            gm = None
            if mask is not None:
                G = mask.shape[1] // (kh * kw)
                gm = mask_grad_columns(gcols, plain if mask_from == "unmasked" else masked, mask, G)
            grads = [gi, go, gw.reshape(weight_.shape), gb if (ctx.has_bias or bias_always) else None, gm]
            grads = [None if i in none_for else g for i, g in enumerate(grads)]
            return (*grads, None, None, None)[:count]

    return Fn


class Delegating(torch.autograd.Function):  # forward and backward by the package's registered operators
    @staticmethod
    def forward(ctx, input, offset, weight, bias, mask, stride, padding, dilation):
        ctx.save_for_backward(input, offset, weight, mask)
        ctx.conf = (list(stride), list(padding), list(dilation))
        return ops.deform_conv2d(input, offset, weight, bias, stride, padding, dilation, mask)

    @staticmethod
    def backward(ctx, grad_output):
        input, offset, weight, mask = ctx.saved_tensors
        gi, go, gw, gm = torch.ops.dcn_lessons.deform_conv2d_backward(grad_output, input, offset, weight, mask,
                                                                       *ctx.conf, [True, True, True, mask is not None])
        gb = grad_output.sum((0, 2, 3)) if ctx.needs_input_grad[3] else None
        return gi, go, gw, gb, (gm if mask is not None else None), None, None, None


class Bridge(torch.autograd.Function):  # lesson 05's NumPy bridge (§1), copied as an answer
    @staticmethod
    def forward(ctx, input, offset, weight, bias, mask, stride, padding, dilation):
        ctx.save_for_backward(input, offset, weight, bias, mask)
        ctx.conf = (stride, padding, dilation)
        n = lambda t: None if t is None else t.detach().numpy()  # noqa: E731
        return torch.from_numpy(ref.deform_conv2d(n(input), n(offset), n(weight), n(bias), stride, padding, dilation,
                                                  mask=n(mask)))

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        n = lambda t: None if t is None else t.detach().numpy()  # noqa: E731
        saved = ctx.saved_tensors
        g = ref.deform_conv2d_backward(n(grad_output), *(n(t) for t in saved[:4]), *ctx.conf, mask=n(saved[4]))
        return (*(None if a is None else torch.from_numpy(a) for a in g), None, None, None)


class ViaAutograd(torch.autograd.Function):  # subclass in name only: apply runs tensor ops autograd differentiates
    @staticmethod
    def apply(input, offset, weight, bias, mask, stride, padding, dilation):
        O, C, kh, kw = weight.shape
        columns = im2col(input, offset, mask, (kh, kw), stride, padding, dilation)
        out = (weight.reshape(O, -1) @ columns).reshape(input.shape[0], O, *offset.shape[2:])
        return out if bias is None else out + bias.view(1, -1, 1, 1)


def test_q3_accepts_a_correct_answer(capsys):
    assert CHECKS["check_deform_conv_function"](make_function()) is None
    CHECKS["check_deform_conv_function"](make_function(), seed=4)
    assert capsys.readouterr().out == ""


def test_q3_reference_pieces_are_the_gradients_of_the_mistakes():
    # the pieces the check compares mistakes with are what the mistaken answers compute
    case = CHECKS["check_deform_conv_function"].cases(0)[1]  # DCNv2, two offset groups
    want, parts = CHECKS["_function_reference"](case)
    for kw, key, name in [(dict(input_mask=False), "input, no mask", "input"),
                          (dict(offset_mask=False), "offset, no mask", "offset"),
                          (dict(mask_from="masked"), "mask, masked columns", "mask")]:
        got = CHECKS["_function_run"](make_function(**kw), case["args"])
        assert torch.allclose(got["grads"][name], parts[key]) and not torch.allclose(parts[key], want[name])


@pytest.mark.parametrize("wrong, message", [
    (make_function(forward_bias=False), "the output lacks the bias"),
    (make_function(input_mask=False), "the mask belongs in that call too"),
    (make_function(offset_mask=False), "hand the mask to col2im_coord"),
    (make_function(mask_from="masked"), "the UNMASKED samples"),
    (make_function(weight="first"), "sum its gradient over all N"),
    (make_function(bias="mean"), "L is a sum, not a mean"),
    (make_function(count=5), "one value per argument of forward"),
    (make_function(none_for=(0,)), "∂L/∂input is None although input requires grad"),
    (make_function(bias_always=True), "an argument that is None (no bias, no mask) gets None"),
    (ViaAutograd, "not the backward of your Function"),
    (ops.DeformConv2dFunction, "the package's own Function"),
    (im2col, "expected a class derived from torch.autograd.Function"),
])
def test_q3_rejects_typical_mistakes(wrong, message):
    with pytest.raises(AssertionError) as info:
        CHECKS["check_deform_conv_function"](wrong)
    assert message in str(info.value), str(info.value)


def test_q3_placeholders_say_not_written_yet():
    class NoForward(torch.autograd.Function):
        @staticmethod
        def forward(ctx, *args):
            raise NotImplementedError

        @staticmethod
        def backward(ctx, grad_output):
            raise NotImplementedError

    class NoBackward(make_function()):
        @staticmethod
        def backward(ctx, grad_output):
            raise NotImplementedError

    for answer in (NoForward, NoBackward):
        with pytest.raises(AssertionError, match="not written yet"):
            CHECKS["check_deform_conv_function"](answer)


def test_q3_an_answer_that_delegates_to_the_package_fails_without_it():
    for answer in (Delegating, Bridge):
        assert CHECKS["check_deform_conv_function"](answer) is None  # right while the package is there
        with pytest.raises(AssertionError, match="unavailable while this answer is graded"):
            graded_without_package(CHECKS, "check_deform_conv_function", answer)
    graded_without_package(CHECKS, "check_deform_conv_function", make_function())  # col2im(_coord) stay available


# ------------------------------------------------------------------------------------------ q5: RoI Align's backward

def roi_backward(grad_output, rois, input_shape, output_size, spatial_scale, sampling_ratio):
    """Vectorised over bins and samples: the RoI rule per axis, then index_add_."""
    N, C, H, W = input_shape
    ph, pw = output_size
    s, dt = sampling_ratio, grad_output.dtype
    grad_input = torch.zeros(N, C, H * W, dtype=dt)
    u = (torch.arange(s, dtype=dt) + 0.5) / s

    def rule(c, size):
        inside = ((c >= -1) & (c <= size)).to(dt)
        c = c.clamp(min=0)
        lo = c.floor().clamp(max=size - 1)
        frac = torch.where(lo >= size - 1, torch.zeros_like(c), c - lo)
        return [(lo.long(), (1 - frac) * inside), ((lo + 1).clamp(max=size - 1).long(), frac * inside)]

    for k in range(rois.shape[0]):
        b, x1, y1, x2, y2 = rois[k].tolist()
        ys = y1 * spatial_scale - 0.5 + (torch.arange(ph, dtype=dt).view(-1, 1) + u) * (y2 - y1) * spatial_scale / ph
        xs = x1 * spatial_scale - 0.5 + (torch.arange(pw, dtype=dt).view(-1, 1) + u) * (x2 - x1) * spatial_scale / pw
        g = grad_output[k].reshape(C, ph, 1, pw, 1) / (s * s)
        for yi, wy in rule(ys, H):
            for xi, wx in rule(xs, W):
                weight = wy.view(ph, s, 1, 1) * wx.view(1, 1, pw, s)
                index = (yi.view(ph, s, 1, 1) * W + xi.view(1, 1, pw, s)).expand(ph, s, pw, s)
                grad_input[int(b)].index_add_(1, index.reshape(-1), (g * weight).reshape(C, -1))
    return grad_input.reshape(N, C, H, W)


def test_q5_accepts_a_correct_answer(capsys):
    assert CHECKS["check_roi_align_backward"](roi_backward) is None
    assert CHECKS["check_roi_align_backward"](lambda *a: CHECKS["_roi_scatter"](list(a))) is None  # NumPy loops too
    CHECKS["check_roi_align_backward"](roi_backward, seed=3)
    assert capsys.readouterr().out == ""


def test_q5_the_loop_model_is_the_package_rule():
    for case in CHECKS["check_roi_align_backward"].cases(7):
        assert np.allclose(CHECKS["_roi_scatter"](case["args"]), CHECKS["_roi_want"](case["args"]))


def _scatter(**kw):
    return lambda *a: CHECKS["_roi_scatter"](list(a), **kw)


@pytest.mark.parametrize("wrong, message", [
    (_scatter(count=False), "no division by the number of samples"),
    (_scatter(shift=0.0), "no half-pixel shift"),
    (_scatter(rule="conv"), "border rule instead of the RoI rule"),
    (_scatter(scale=1.0), "spatial_scale not applied"),
    (_scatter(batch0=True), "every RoI scattered into image 0"),
    (_scatter(swap=True), "x and y swapped"),
    (lambda go, *a: torch.zeros_like(go), "the input's shape, not the pooled output's"),
    (lambda *a: roi_backward(*a) * 1.01, "values are wrong"),
    (lambda *a: None, "returned None"),
    (lambda *a: ..., "not written yet"),
])
def test_q5_rejects_typical_mistakes(wrong, message):
    with pytest.raises(AssertionError) as info:
        CHECKS["check_roi_align_backward"](wrong)
    assert message in str(info.value), str(info.value)


def test_q5_an_answer_that_delegates_to_the_package_fails_without_it():
    def via_autograd(grad_output, rois, input_shape, output_size, spatial_scale, sampling_ratio):
        x = torch.zeros(input_shape, dtype=grad_output.dtype, requires_grad=True)
        y = ops.roi_align(x, rois, output_size, spatial_scale, sampling_ratio)
        return torch.autograd.grad(y, x, grad_output)[0]

    def via_deform_pool(grad_output, rois, input_shape, output_size, spatial_scale, sampling_ratio):
        x = torch.zeros(input_shape, dtype=grad_output.dtype, requires_grad=True)
        y = ops.deform_roi_pool(x, rois, None, output_size, spatial_scale, sampling_ratio)  # no offsets: RoI Align
        return torch.autograd.grad(y, x, grad_output)[0]

    def via_reference(grad_output, rois, input_shape, output_size, spatial_scale, sampling_ratio):
        return ref.roi_align_backward(grad_output.numpy(), np.zeros(input_shape), rois.numpy(), output_size,
                                      spatial_scale, sampling_ratio)

    for answer in (via_autograd, via_deform_pool, via_reference):
        assert CHECKS["check_roi_align_backward"](answer) is None
        with pytest.raises(AssertionError, match="unavailable while this answer is graded"):
            graded_without_package(CHECKS, "check_roi_align_backward", answer)
    graded_without_package(CHECKS, "check_roi_align_backward", roi_backward)


# ------------------------------------------------------------------------------------------ no message gives the answer

WRONG = {
    "check_deform_im2col_torch": [_call(swap=True), _call(use_mask=False), _call(order="k"), _call(clamp=True),
                                  _call(trunc=True), _call(groups="interleaved"), lambda *a: im2col(*a) * 1.5,
                                  lambda *a: torch.zeros(3), lambda *a: None],
    "check_mask_grad_columns": [lambda g, c, m, G: mask_grad_columns(g, c, m, G) * m,
                                lambda g, c, m, G: -mask_grad_columns(g, c, m, G),
                                lambda g, c, m, G: mask_grad_columns(g, c, m, G) + 0.1, lambda *a: None],
    "check_deform_conv_function": [make_function(forward_bias=False), make_function(input_mask=False),
                                   make_function(offset_mask=False), make_function(mask_from="masked"),
                                   make_function(weight="first"), make_function(bias="mean"),
                                   make_function(count=5), ViaAutograd, im2col],
    "check_init_offset": [lambda layer: None, lambda layer: nn.init.zeros_(layer.conv_offset.weight),
                          lambda layer: layer.init_offset(), lambda layer: nn.init.zeros_(layer.weight)],
    "check_roi_align_backward": [_scatter(count=False), _scatter(rule="conv"), _scatter(shift=0.0),
                                 lambda *a: roi_backward(*a) * 2.0, lambda *a: None],
}


def test_no_failure_message_contains_a_line_of_the_solution():
    solution = master_solution_lines(NOTEBOOKS / "05_pytorch_ops.ipynb")
    assert len(solution) >= 15, solution  # the five answers are there to compare with
    messages = []
    for check, answers in WRONG.items():
        for answer in answers:
            for seed in (None, 3):
                with pytest.raises(AssertionError) as info:
                    CHECKS[check](answer, seed=seed)
                messages.append(str(info.value))
    for msg in messages:
        for line in solution:
            assert line not in msg, f"a failure message shows the solution line {line!r}:\n{msg}"


def test_q4_no_message_spells_out_the_in_place_calls():
    # issue 15: the message for an unchanged branch used to print `layer.conv_offset.weight.zero_(); ...bias.zero_()`
    import re

    for answer in WRONG["check_init_offset"] + [lambda layer: nn.init.zeros_(layer.conv_offset.bias)]:
        with pytest.raises(AssertionError) as info:
            CHECKS["check_init_offset"](answer)
        assert not re.search(r"\w+_\(", str(info.value)), str(info.value)
