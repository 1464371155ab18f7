"""Lesson 05's checks: silent on a correct answer, a teaching message on the typical wrong ones."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from dcn_lessons.exercises import load
from dcn_lessons.ops import ModulatedDeformConv2dPack, deform_col2im_coord, deform_conv2d, deform_im2col

CHECKS = load("lesson05")


# ------------------------------------------------------------------------------------------ q1 answers

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


def test_q1_accepts_a_correct_answer(capsys):
    assert CHECKS["check_mask_grad_columns"](mask_grad) is None
    assert CHECKS["check_mask_grad_columns"](mask_grad_loop) is None  # NumPy results are accepted too
    assert capsys.readouterr().out == ""


def test_q1_answer_is_the_mask_gradient_of_the_package_operator():
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
def test_q1_rejects_typical_mistakes(wrong, message):
    with pytest.raises(AssertionError) as info:
        CHECKS["check_mask_grad_columns"](wrong)
    assert message in str(info.value)


def test_q1_placeholder_says_not_written_yet():
    def placeholder(grad_columns, columns, mask, offset_groups):
        raise NotImplementedError

    with pytest.raises(AssertionError, match="not written yet"):
        CHECKS["check_mask_grad_columns"](placeholder)


def test_q1_mismatch_names_index_package_and_central_difference():
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


def test_q1_names_the_grouped_case_that_failed():
    # summing over every channel is right for one offset group: the first grouped case is the one named
    with pytest.raises(AssertionError) as info:
        CHECKS["check_mask_grad_columns"](all_channels)
    msg = str(info.value)
    assert "mask [1, 18, 4, 5], offset_groups=2" in msg and "ALL channels" in msg


# ------------------------------------------------------------------------------------------ q2 answers

def init_offset(layer):
    nn.init.zeros_(layer.conv_offset.weight)
    nn.init.zeros_(layer.conv_offset.bias)


def init_offset_no_grad(layer):
    with torch.no_grad():
        layer.conv_offset.weight.zero_()
        layer.conv_offset.bias.zero_()
    return layer  # returning the layer itself is fine


def test_q2_accepts_a_correct_answer(capsys):
    assert CHECKS["check_init_offset"](init_offset) is None
    assert CHECKS["check_init_offset"](init_offset_no_grad) is None
    assert CHECKS["check_init_offset"](lambda layer: layer.init_offset()) is None  # the package's own method
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


def test_q2_a_replaced_parameter_is_fine_when_it_is_a_trainable_zero():
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
def test_q2_rejects_typical_mistakes(wrong, message):
    with pytest.raises(AssertionError) as info:
        CHECKS["check_init_offset"](wrong)
    assert message in str(info.value)


def test_q2_placeholder_says_not_written_yet():
    def placeholder(layer):
        raise NotImplementedError

    with pytest.raises(AssertionError, match="not written yet"):
        CHECKS["check_init_offset"](placeholder)


def test_q2_names_the_layer_and_the_bias_shift():
    with pytest.raises(AssertionError) as info:
        CHECKS["check_init_offset"](weight_only)
    msg = str(info.value)
    assert msg.startswith("my_init_offset(DeformConv2dPack(4, 6, 3, padding=1))")
    assert "kernel point 0 moves by (Δy, Δx)" in msg


def test_q2_mask_saturation_is_caught_on_the_modulated_layer():
    # the v1 layer passes (it has no mask), the first modulated one is named
    with pytest.raises(AssertionError) as info:
        CHECKS["check_init_offset"](mask_saturated)
    assert "ModulatedDeformConv2dPack(4, 6, 3, padding=1, offset_groups=2)" in str(info.value)
