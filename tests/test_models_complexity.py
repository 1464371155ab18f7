"""dcn_lessons.models.complexity: the deformable FLOP formula against hand counts, and the counts of known networks.

Hand counts are written item by item as the module docstring states them (positions: 10 FLOPs each; samples: 7,
plus 1 with a mask; GEMM: 2 per multiply-add). The network counts are checked against figures published
independently of our code: torchvision's documented parameters and GFLOPS (multiply-adds) of ResNet-50/101, and the
ResNet paper's 3.8 x 10^9 multiply-adds for its (stride-in-1x1) ResNet-50.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from dcn_lessons.models import resnet
from dcn_lessons.models.complexity import (
    count_flops,
    count_parameters,
    deform_conv2d_backward_flop,
    deform_conv2d_flop,
    register_deform_conv2d_flops,
)
from dcn_lessons.ops import DeformConv2d, DeformConv2dPack, ModulatedDeformConv2dPack

assert register_deform_conv2d_flops(), "torch.ops.dcn_lessons.deform_conv2d is not registered"


def counted(fn):
    with FlopCounterMode(display=False) as fc:
        fn()
    return fc.get_total_flops(), {str(k): v for k, v in fc.get_flop_counts()["Global"].items()}


# N=1, C=2, O=3, 4x4 input, 3x3 kernel, padding 1 -> 4x4 output: 16 pixels, K = 9
N, C, O, K, P = 1, 2, 3, 9, 16
GEMM = 2 * N * O * C * K * P          # 1728: 2 FLOPs per multiply-add of the columns x weight product
SAMPLES = N * C * K * P               # 288 samples (one per channel, kernel point, output pixel)
POSITIONS = N * 1 * K * P             # 144 positions with one offset group


@pytest.mark.parametrize("modulated", [False, True])
def test_forward_formula_equals_the_hand_count_and_is_what_flop_counter_mode_sees(modulated):
    layer = DeformConv2d(C, O, 3, padding=1, bias=False)
    x, offset = torch.randn(N, C, 4, 4), torch.randn(N, 2 * K, 4, 4)
    mask = torch.rand(N, K, 4, 4) if modulated else None
    hand = GEMM + (7 + modulated) * SAMPLES + 10 * POSITIONS
    assert hand == (5184 if not modulated else 5472)
    total, ops = counted(lambda: layer(x, offset, mask))
    assert total == hand and ops == {"dcn_lessons.deform_conv2d": hand}
    assert deform_conv2d_flop([N, C, 4, 4], [N, 2 * K, 4, 4], [O, C, 3, 3], None,
                              [N, K, 4, 4] if modulated else None, out_shape=[N, O, 4, 4]) == hand


def test_offset_groups_and_weight_groups_enter_where_the_formula_says():
    # C = O = 4, groups = 2 (each output sees C/groups = 2 channels), offset_groups = 2 (positions doubled)
    layer = DeformConv2d(4, 4, 3, padding=1, groups=2, bias=False)
    total, _ = counted(lambda: layer(torch.randn(1, 4, 4, 4), torch.randn(1, 2 * 2 * K, 4, 4)))
    assert total == 2 * 1 * 4 * 2 * K * P + 7 * 1 * 4 * K * P + 10 * 1 * 2 * K * P == 9216


def test_pack_layers_add_their_plain_offset_branch_and_meta_counts_what_cpu_counts():
    for cls, branch in ((DeformConv2dPack, 2 * K), (ModulatedDeformConv2dPack, 3 * K)):
        layer = cls(C, O, 3, padding=1, bias=False)
        x = torch.randn(N, C, 4, 4)
        total, ops = counted(lambda: layer(x))
        assert ops["aten.convolution"] == 2 * N * branch * C * K * P  # the offset branch is a plain conv
        assert total == ops["aten.convolution"] + GEMM + (7 + (cls is ModulatedDeformConv2dPack)) * SAMPLES + 1440
        with torch.device("meta"):
            meta_layer = cls(C, O, 3, padding=1, bias=False)
        assert count_flops(meta_layer, (N, C, 4, 4)).total == total


def test_backward_formula_counts_what_is_asked_for():
    layer = DeformConv2d(C, O, 3, padding=1, bias=False)
    x = torch.randn(N, C, 4, 4, requires_grad=True)
    offset = torch.randn(N, 2 * K, 4, 4, requires_grad=True)
    y = layer(x, offset)
    total, ops = counted(lambda: y.sum().backward())
    # columns' gradient GEMM; input: 8 per sample; offset: 2*7 + 2 + 2 per sample; weight: 7 per sample + GEMM;
    # positions once
    hand = GEMM + 8 * SAMPLES + 18 * SAMPLES + (7 * SAMPLES + GEMM) + 10 * POSITIONS
    assert ops == {"dcn_lessons.deform_conv2d_backward": hand} and total == hand == 14400
    only_weight = deform_conv2d_backward_flop([N, O, 4, 4], [N, C, 4, 4], [N, 2 * K, 4, 4], [O, C, 3, 3], None,
                                              [1, 1], [1, 1], [1, 1], [False, False, True, False])
    assert only_weight == 7 * SAMPLES + GEMM + 10 * POSITIONS
    with_mask = deform_conv2d_backward_flop([N, O, 4, 4], [N, C, 4, 4], [N, 2 * K, 4, 4], [O, C, 3, 3],
                                            [N, K, 4, 4], [1, 1], [1, 1], [1, 1], [False, False, False, True])
    assert with_mask == GEMM + 9 * SAMPLES + 10 * POSITIONS


def test_resnet_parameters_and_flops_match_the_published_figures():
    with torch.device("meta"):
        r50, r101 = resnet(50), resnet(101)
        r50_msra = resnet(50, stride_in_1x1=True)
    assert count_parameters(r50) == 25_557_032 and count_parameters(r101) == 44_549_160  # torchvision's docs
    # torchvision documents 4.09 and 7.80 GFLOPS for its ResNet-50/101 at 224x224 (it counts multiply-adds)
    assert round(count_flops(r50, (1, 3, 224, 224)).macs / 1e9, 2) == 4.09
    assert round(count_flops(r101, (1, 3, 224, 224)).macs / 1e9, 2) == 7.80
    # the ResNet paper's Table 1: 3.8 x 10^9 multiply-adds for ResNet-50, which strides in the 1x1 conv
    assert round(count_flops(r50_msra, (1, 3, 224, 224)).macs / 1e9, 1) == 3.9  # 3.86: the paper rounds down


def test_deformable_resnet_counts_are_the_plain_ones_plus_offset_branches_plus_sampling():
    """ResNet-50 dconv@c5 at 224: the three conv5 3x3 convs (512 -> 512, 7x7 output) by hand."""
    with torch.device("meta"):
        plain, deform = resnet(50), resnet(50, recipe="dconv@c5")
    p, d = count_flops(plain, (1, 3, 224, 224)), count_flops(deform, (1, 3, 224, 224))
    per_layer = 2 * 512 * 512 * 9 * 49 + 7 * 512 * 9 * 49 + 10 * 9 * 49
    assert d.by_operator["dcn_lessons.deform_conv2d"] == 3 * per_layer
    # layer4.0.conv2 reads the 14x14 map at stride 2 (torchvision's stride placement); its branch too
    branches = 3 * 2 * 18 * 512 * 9 * 49
    assert d.total == p.total - 3 * 2 * 512 * 512 * 9 * 49 + 3 * per_layer + branches
    assert count_parameters(deform) - count_parameters(plain) == 3 * (512 * 9 * 18 + 18)
    assert d.by_module["layer4.0.conv2"] == 2 * 18 * 512 * 9 * 49 + per_layer


def test_count_flops_runs_a_real_model_and_its_backward_where_it_is():
    torch.manual_seed(0)
    model = resnet(18, width=0.25, num_classes=3, recipe="mdconv@c5")
    fwd = count_flops(model, torch.randn(2, 3, 32, 32), device=None)
    both = count_flops(model, torch.randn(2, 3, 32, 32), device=None, backward=True)
    assert fwd.total == count_flops(model, (2, 3, 32, 32)).total  # meta copy, same count
    assert "dcn_lessons.deform_conv2d_backward" in both.by_operator and both.total > 2 * fwd.total
    assert next(model.parameters()).device.type == "cpu"  # the model itself was not moved
    with pytest.raises(TypeError, match=r"inputs\[0\]: expected a tensor or a shape"):
        count_flops(model, "1x3x32x32")
    with pytest.raises(ValueError, match="device: expected 'meta' or None"):
        count_flops(model, (1, 3, 32, 32), device="cuda")
    with pytest.raises(TypeError, match="model: expected an nn.Module"):
        count_parameters(object())
    frozen = nn.Sequential(nn.Conv2d(3, 2, 1))
    frozen.requires_grad_(False)
    with pytest.raises(ValueError, match="backward: the model's output does not require grad"):
        count_flops(frozen, (1, 3, 4, 4), backward=True)
