"""Deformable layers (DCNv1 §2.1, DCNv2 §3.1) and the offset-branch learning-rate groups."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dcn_lessons.ops.deform_conv import deform_conv2d
from dcn_lessons.ops.layers import (
    DeformConv2d,
    DeformConv2dPack,
    ModulatedDeformConv2dPack,
    offset_param_groups,
)

CONF = [
    dict(kernel_size=3, stride=1, padding=1, dilation=1, groups=1, offset_groups=1),
    dict(kernel_size=(3, 2), stride=(2, 1), padding=(1, 0), dilation=(1, 2), groups=2, offset_groups=2),
]


def _conv_like(layer: DeformConv2d) -> nn.Conv2d:
    conv = nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding,
                     layer.dilation, layer.groups, bias=layer.bias is not None).double()
    with torch.no_grad():
        conv.weight.copy_(layer.weight)
        if layer.bias is not None:
            conv.bias.copy_(layer.bias)
    return conv


@pytest.mark.parametrize("conf", CONF)
def test_fresh_pack_equals_conv2d(conf: dict) -> None:
    torch.manual_seed(0)
    layer = DeformConv2dPack(4, 6, **conf).double()
    x = torch.randn(2, 4, 7, 6, dtype=torch.float64)
    torch.testing.assert_close(layer(x), _conv_like(layer)(x), rtol=0, atol=1e-12)


@pytest.mark.parametrize("conf", CONF)
@pytest.mark.parametrize("bias", [True, False])
def test_fresh_modulated_pack_is_half_conv_plus_unscaled_bias(conf: dict, bias: bool) -> None:
    torch.manual_seed(1)
    layer = ModulatedDeformConv2dPack(4, 6, bias=bias, **conf).double()
    x = torch.randn(2, 4, 7, 6, dtype=torch.float64)
    conv = _conv_like(layer)
    nobias = F.conv2d(x, conv.weight, None, conv.stride, conv.padding, conv.dilation, conv.groups)
    expected = 0.5 * nobias + (layer.bias.view(1, -1, 1, 1) if bias else 0)
    torch.testing.assert_close(layer(x), expected, rtol=0, atol=1e-12)


def test_conv_offset_shape_and_zero_init() -> None:
    v1 = DeformConv2dPack(4, 8, (3, 2), stride=2, padding=1, dilation=2, offset_groups=2)
    v2 = ModulatedDeformConv2dPack(4, 8, (3, 2), stride=2, padding=1, dilation=2, offset_groups=2)
    assert v1.conv_offset.out_channels == 2 * 2 * 6 and v2.conv_offset.out_channels == 3 * 2 * 6
    for layer in (v1, v2):
        c = layer.conv_offset
        assert (c.kernel_size, c.stride, c.padding, c.dilation) == (layer.kernel_size, layer.stride,
                                                                    layer.padding, layer.dilation)
        assert torch.count_nonzero(c.weight) == 0 and torch.count_nonzero(c.bias) == 0
    # offset_and_mask splits the branch's channels: offsets first (2·G·kh·kw), then the mask logits (G·kh·kw)
    torch.manual_seed(0)
    x = torch.randn(2, 4, 9, 7)
    for layer in (v1, v2):
        nn.init.normal_(layer.conv_offset.weight)
    out = v2.conv_offset(x)
    offset, mask = v2.offset_and_mask(x)
    assert torch.equal(offset, out[:, :24]) and torch.equal(mask, torch.sigmoid(out[:, 24:])) and mask.shape[1] == 12
    offset, mask = v1.offset_and_mask(x)
    assert torch.equal(offset, v1.conv_offset(x)) and mask is None and offset.shape[1] == 24


def test_deform_conv2d_module_matches_functional_and_torchvision_init() -> None:
    torch.manual_seed(2)
    layer = DeformConv2d(4, 6, 3, padding=1, groups=2)
    assert layer.weight.shape == (6, 2, 3, 3) and layer.bias.shape == (6,)
    bound_w = 1 / (2 * 9) ** 0.5  # kaiming_uniform(a=sqrt(5)) bound = 1/sqrt(fan_in)
    assert layer.weight.abs().max() <= bound_w and layer.bias.abs().max() <= bound_w
    assert layer.weight.std() > bound_w / 4  # really initialised, not zeros
    x = torch.randn(1, 4, 5, 5)
    off = torch.randn(1, 18, 5, 5)
    mask = torch.rand(1, 9, 5, 5)
    torch.testing.assert_close(layer(x, off, mask), deform_conv2d(x, off, layer.weight, layer.bias, 1, 1, 1, mask))
    assert DeformConv2d(4, 6, 3, bias=False).bias is None


def test_repr() -> None:
    assert repr(DeformConv2d(3, 8, 3, padding=1, bias=False)) == (
        "DeformConv2d(3, 8, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1), dilation=(1, 1), bias=False)"
    )
    r = repr(ModulatedDeformConv2dPack(4, 8, 3, stride=2, groups=2, offset_groups=2))
    assert r == (
        "ModulatedDeformConv2dPack(\n"
        "  4, 8, kernel_size=(3, 3), stride=(2, 2), padding=(0, 0), dilation=(1, 1), groups=2, offset_groups=2\n"
        "  (conv_offset): Conv2d(4, 54, kernel_size=(3, 3), stride=(2, 2))\n"
        ")"
    )


@pytest.mark.parametrize("args,word", [
    (dict(in_channels=4, out_channels=6, kernel_size=3, groups=3), "in_channels"),
    (dict(in_channels=6, out_channels=4, kernel_size=3, groups=3), "out_channels"),
    (dict(in_channels=4, out_channels=4, kernel_size=3, offset_groups=3), "in_channels"),
    (dict(in_channels=0, out_channels=4, kernel_size=3), "in_channels"),
    (dict(in_channels=4, out_channels=4, kernel_size=3, offset_groups=0), "offset_groups"),
])
def test_bad_layer_arguments(args: dict, word: str) -> None:
    with pytest.raises(ValueError, match=word):
        DeformConv2dPack(**args)


@pytest.mark.parametrize("cls", [DeformConv2dPack, ModulatedDeformConv2dPack])
def test_training_step_moves_offset_branch(cls: type) -> None:
    """From the zero init, one SGD step changes conv_offset: gradients flow through the offsets."""
    torch.manual_seed(3)
    layer = cls(3, 4, 3, padding=1)
    opt = torch.optim.SGD(offset_param_groups(layer, base_lr=0.5), lr=0.5)
    x = torch.randn(2, 3, 6, 6)
    target = torch.randn(2, 4, 6, 6)
    before = layer.conv_offset.weight.detach().clone()
    loss = F.mse_loss(layer(x), target)
    loss.backward()
    assert layer.conv_offset.weight.grad.abs().sum() > 0
    assert layer.conv_offset.bias.grad.abs().sum() > 0
    opt.step()
    assert not torch.equal(layer.conv_offset.weight, before)
    with torch.no_grad():
        assert F.mse_loss(layer(x), target) < loss


class _Head(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.offset_fc = nn.Linear(4, 2)


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3)
        self.dcn = ModulatedDeformConv2dPack(4, 4, 3, padding=1)
        self.dcn1 = DeformConv2dPack(4, 4, 3, padding=1)
        self.head = _Head()
        self.shared = self.stem  # a shared module: its parameters must still appear once


def _lrs(groups: list[dict]) -> dict[str, float]:
    out: dict[str, float] = {}
    for g in groups:
        for n in g["param_names"]:
            assert n not in out, f"{n} in two groups"
            out[n] = g["lr"]
    return out


def test_param_groups_each_parameter_once_with_right_lr() -> None:
    net = _Net()
    groups = offset_param_groups(net, base_lr=0.02)
    lrs = _lrs(groups)
    assert sorted(lrs) == sorted(n for n, _ in net.named_parameters())
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(net.parameters()))
    for name, lr in lrs.items():
        expected = 0.002 if ".conv_offset." in name else 0.02
        assert lr == pytest.approx(expected), name
    torch.optim.SGD(groups, lr=0.02, momentum=0.9)  # accepted by an optimizer as is


def test_param_groups_rules_and_lr_mult_attribute() -> None:
    net = _Net()
    net.head.offset_fc.lr_mult = 0.01  # DCNv1's fc offset branch of deformable RoI pooling
    lrs = _lrs(offset_param_groups(net, base_lr=1.0, offset_lr_mult=0.1))
    assert lrs["head.offset_fc.weight"] == pytest.approx(0.01) and lrs["head.fc.bias"] == 1.0
    lrs = _lrs(offset_param_groups(net, 1.0, extra_rules={"head.*": 0.5, DeformConv2dPack: 0.2}))
    assert lrs["head.offset_fc.weight"] == 0.5  # name pattern beats the lr_mult attribute
    assert lrs["dcn1.weight"] == 0.2 and lrs["dcn1.conv_offset.weight"] == 0.2  # nearest typed owner
    assert lrs["dcn.weight"] == 0.2  # ModulatedDeformConv2dPack is a DeformConv2dPack
    assert lrs["stem.weight"] == 1.0
    lrs = _lrs(offset_param_groups(net, 1.0, extra_rules={nn.Conv2d: 0.3}))
    assert lrs["dcn.conv_offset.bias"] == 0.3 and lrs["stem.bias"] == 0.3 and lrs["dcn.weight"] == 1.0


@pytest.mark.parametrize("kwargs,exc,word", [
    (dict(extra_rules={"no_such_layer.*": 0.1}), ValueError, "no_such_layer"),
    (dict(extra_rules={nn.LSTM: 0.1}), ValueError, "LSTM"),
    (dict(extra_rules={3: 0.1}), TypeError, "extra_rules"),
    (dict(extra_rules={"head.*": -1.0}), ValueError, "head"),
    (dict(extra_rules={"head.*": "fast"}), TypeError, "head"),
    (dict(offset_lr_mult=0.0), ValueError, "offset_lr_mult"),
])
def test_param_groups_bad_rules(kwargs: dict, exc: type, word: str) -> None:
    with pytest.raises(exc, match=word):
        offset_param_groups(_Net(), 0.1, **kwargs)
