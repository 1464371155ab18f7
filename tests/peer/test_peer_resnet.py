"""Our ResNet against torchvision's, where torchvision is importable (skipped elsewhere, e.g. in the project venv).

Run in an environment with torch + torchvision (no Numba needed: the deformable layers take their tensor path):

    cd /work/main && PYTHONPATH=$PWD /path/to/python-with-torchvision -m pytest tests/peer -q

torchvision's randomly initialised state dicts load into ours with ``strict=True`` and give the same outputs; the
deformable variants loaded from them give torchvision's outputs too (DCNv1, zero offsets); and where we depart from
torchvision on purpose (every conv5 3x3 dilated, DCNv1 §2.3) the test shows that exactly that one layer differs.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

torchvision = pytest.importorskip("torchvision")

from dcn_lessons.models import FrozenBatchNorm2d, load_plain_weights, resnet  # noqa: E402


def randomised(net: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (nn.BatchNorm2d, torchvision.ops.FrozenBatchNorm2d)):
                c = m.running_mean.numel()
                m.running_mean.copy_(0.1 * torch.randn(c, generator=g))
                m.running_var.copy_(0.5 + torch.rand(c, generator=g))
                m.weight.copy_(0.5 + torch.rand(c, generator=g))
                m.bias.copy_(0.1 * torch.randn(c, generator=g))
    return net.double().eval()


def x64(n=1, size=64):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(7), dtype=torch.float64)


@pytest.mark.parametrize("depth", [18, 34, 50, 101])
def test_torchvision_state_dict_loads_strictly_and_gives_the_same_output(depth):
    torch.manual_seed(depth)
    tv = randomised(getattr(torchvision.models, f"resnet{depth}")(weights=None))
    ours = resnet(depth).double().eval()
    ours.load_state_dict(tv.state_dict(), strict=True)
    x = x64(2)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), tv(x), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("depth, recipe", [(50, "dconv@c3-c5"), (18, "dconv@c5")])
def test_deformable_network_loaded_from_torchvision_weights_gives_torchvisions_output(depth, recipe):
    torch.manual_seed(0)
    tv = randomised(getattr(torchvision.models, f"resnet{depth}")(weights=None))
    ours = resnet(depth, recipe=recipe).double().eval()
    report = load_plain_weights(ours, tv.state_dict())
    assert len(report.offset_keys) == 2 * len(ours.deformable_layers) > 0
    x = x64(1)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), tv(x), rtol=1e-9, atol=1e-9)


def test_dilated_conv5_differs_from_torchvision_only_in_the_first_blocks_3x3():
    """torchvision's replace_stride_with_dilation keeps layer4.0.conv2 at dilation 1; DCNv1 §2.3 dilates all."""
    torch.manual_seed(0)
    tv = randomised(torchvision.models.resnet50(weights=None, replace_stride_with_dilation=[False, False, True]))
    ours = resnet(50, dilate_conv5=True).double().eval()
    ours.load_state_dict(tv.state_dict(), strict=True)
    x = x64(1)
    with torch.no_grad():
        assert not torch.allclose(ours(x), tv(x), rtol=1e-3, atol=1e-3)
        tv.layer4[0].conv2.dilation, tv.layer4[0].conv2.padding = (2, 2), (2, 2)
        torch.testing.assert_close(ours(x), tv(x), rtol=1e-10, atol=1e-10)


def test_frozen_batchnorm_matches_torchvisions_and_a_torchvision_frozen_bn_resnet_loads_strictly():
    torch.manual_seed(0)
    tv_bn = torchvision.ops.FrozenBatchNorm2d(16)
    ours_bn = FrozenBatchNorm2d(16)
    randomised(tv_bn)
    ours_bn.double().load_state_dict(tv_bn.state_dict(), strict=True)
    x = torch.randn(2, 16, 4, 4, dtype=torch.float64)
    torch.testing.assert_close(ours_bn(x), tv_bn(x), rtol=1e-12, atol=1e-12)
    tv = randomised(torchvision.models.resnet50(weights=None, norm_layer=torchvision.ops.FrozenBatchNorm2d))
    ours = resnet(50, norm="frozen_bn").double().eval()
    assert list(ours.state_dict()) == list(tv.state_dict())
    ours.load_state_dict(tv.state_dict(), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(ours(x64(1)), tv(x64(1)), rtol=1e-10, atol=1e-10)


def test_our_init_follows_torchvisions_distributions():
    """Same initialisation rule (Kaiming-normal fan_out for convs, BN 1/0): per-layer weight std within 10%."""
    torch.manual_seed(0)
    tv, ours = torchvision.models.resnet50(weights=None), resnet(50, recipe="dconv@c5")
    for (k, a), (k2, b) in zip(tv.state_dict().items(), ((k, v) for k, v in ours.state_dict().items()
                                                         if "conv_offset" not in k)):
        assert k == k2
        if a.ndim == 4 and a.numel() > 4096:
            assert abs(float(b.float().std()) / float(a.float().std()) - 1) < 0.1, k
        elif k.endswith(("bn1.weight", "bn1.bias")):
            assert torch.equal(a, b), k
