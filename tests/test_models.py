"""dcn_lessons.models: torchvision key parity, the papers' recipes, plain-weight loading, frozen BN, the detection trunk.

Structure tests build the networks on the ``meta`` device (shapes only, no memory, no time); the numerical tests run
CPU-sized networks (``width=0.25``, 64-pixel images) in float64 so that "equal" can mean equal to 1e-10.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from dcn_lessons.models import (
    FrozenBatchNorm2d,
    PAPER_RECIPES,
    Recipe,
    ResNet,
    ResNetFeatures,
    conv3x3_names,
    deformable_layer_names,
    is_offset_key,
    load_plain_weights,
    parse_recipe,
    place_recipe,
    resnet,
    resnet_backbone,
)
from dcn_lessons.ops import DeformConv2dPack, ModulatedDeformConv2dPack

KEYS = json.loads((Path(__file__).parent / "data" / "torchvision_resnet_keys.json").read_text())


def meta(depth, **kw):
    with torch.device("meta"):
        return resnet(depth, **kw)


def randomise_norm_stats(model: nn.Module, seed: int = 0) -> None:
    """Give every BatchNorm non-trivial statistics and affine parameters, so that a test compares real maps."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm2d, FrozenBatchNorm2d)):
                c = m.running_mean.numel()
                m.running_mean.copy_(0.1 * torch.randn(c, generator=g))
                m.running_var.copy_(0.5 + torch.rand(c, generator=g))
                m.weight.copy_(0.5 + torch.rand(c, generator=g))
                m.bias.copy_(0.1 * torch.randn(c, generator=g))


def small_pair(depth, recipe, seed=0, **kw):
    """A plain width-0.25 network and the same network with ``recipe`` loaded from it (float64, eval)."""
    torch.manual_seed(seed)
    plain = resnet(depth, width=0.25, num_classes=10, **kw).double().eval()
    randomise_norm_stats(plain, seed)
    deform = resnet(depth, width=0.25, num_classes=10, recipe=recipe, **kw).double().eval()
    report = load_plain_weights(deform, plain.state_dict())
    return plain, deform, report


# ------------------------------------------------------------------------------------------------
# torchvision key parity (the committed list, dumped from torchvision by tests/data/make_torchvision_resnet_keys.py)
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("depth", [18, 34, 50, 101, 152])
def test_state_dict_keys_and_shapes_are_torchvisions_in_order(depth):
    expected = [(k, tuple(s)) for k, s in KEYS["models"][f"resnet{depth}"]]
    ours = [(k, tuple(v.shape)) for k, v in meta(depth).state_dict().items()]
    assert ours == expected


@pytest.mark.parametrize("kw", [
    dict(recipe="mdconv@c3-c5"), dict(recipe="dconv@c5", dilate_conv5=True), dict(stride_in_1x1=True),
    dict(norm="frozen_bn"), dict(recipe="dconv@c3-c5", offset_groups=4, norm="frozen_bn", dilate_conv5=True),
])
def test_every_variant_keeps_the_keys_adding_only_offset_branches(kw):
    expected = {k: tuple(s) for k, s in KEYS["models"]["resnet50"]}
    if kw.get("norm") == "frozen_bn":
        expected = {k: s for k, s in expected.items() if not k.endswith("num_batches_tracked")}
    ours = {k: tuple(v.shape) for k, v in meta(50, **kw).state_dict().items()}
    assert {k: s for k, s in ours.items() if not is_offset_key(k)} == expected
    offsets = sorted(k for k in ours if is_offset_key(k))
    layers = place_recipe(kw.get("recipe"), "bottleneck", (3, 4, 6, 3))
    assert offsets == sorted(f"{n}.conv_offset.{p}" for n in layers for p in ("weight", "bias"))


# ------------------------------------------------------------------------------------------------
# Recipes: where the papers put their layers
# ------------------------------------------------------------------------------------------------
C5 = ["layer4.0.conv2", "layer4.1.conv2", "layer4.2.conv2"]


def c345(layers):
    return [f"layer{s - 1}.{i}.conv2" for s, n in zip((3, 4, 5), layers[1:]) for i in range(n)]


@pytest.mark.parametrize("depth", [50, 101])
def test_dcnv1_recipe_is_the_last_three_3x3_convs_of_conv5(depth):
    """DCNv1 §2.3: "the last three convolutional layers (with kernel size > 1) in conv5"."""
    assert place_recipe("dconv@c5", "bottleneck", (3, 4, 6 if depth == 50 else 23, 3)) == C5
    model = meta(depth, recipe="dconv@c5", dilate_conv5=True)
    assert deformable_layer_names(model) == model.deformable_layers == C5
    assert place_recipe("dconv@last3", "bottleneck", model.layers) == C5


def test_dcnv2_recipe_converts_all_13_3x3_convs_of_conv3_to_conv5_in_resnet50_and_30_in_resnet101():
    """DCNv2 §3.1: all 3x3 convs of conv3-conv5. The paper says 12 for ResNet-50; it has 4 + 6 + 3 = 13."""
    m50 = meta(50, recipe="mdconv@c3-c5")
    assert deformable_layer_names(m50) == c345((3, 4, 6, 3)) and len(m50.deformable_layers) == 13
    assert all(isinstance(m50.get_submodule(n), ModulatedDeformConv2dPack) for n in m50.deformable_layers)
    m101 = meta(101, recipe="mdconv@c3-c5")
    assert deformable_layer_names(m101) == c345((3, 4, 23, 3)) and len(m101.deformable_layers) == 30
    # dconv@c4-c5 (DCNv2 Table 1): conv4 and conv5 only, DCNv1 layers (not modulated)
    m = meta(50, recipe="dconv@c4-c5")
    assert deformable_layer_names(m) == c345((3, 4, 6, 3))[4:]
    assert not any(isinstance(m.get_submodule(n), ModulatedDeformConv2dPack) for n in m.deformable_layers)


def test_every_other_conv_stays_plain_and_only_3x3_convs_are_converted():
    model = meta(50, recipe="dconv@c3-c5")
    convs = {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and not n.endswith("conv_offset")}
    left3x3 = [n for n, m in convs.items() if m.kernel_size == (3, 3)]
    assert left3x3 == ["layer1.0.conv2", "layer1.1.conv2", "layer1.2.conv2"]  # only conv2's 3x3s stay plain ...
    plain3x3 = [n for n, m in meta(50).named_modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    assert plain3x3 == [n for _, n in conv3x3_names("bottleneck", (3, 4, 6, 3))]  # ... and the list is complete
    model2 = meta(50, recipe="dconv@c4-c5")
    assert [n for n in plain3x3 if isinstance(model2.get_submodule(n), nn.Conv2d)] == plain3x3[:7]  # conv2, conv3


def test_dcnv1_table1_last_n_layers_in_resnet101():
    """DCNv1 Table 1 varies the number of deformable layers at the end of ResNet-101: 1, 2, 3, 6."""
    layers = (3, 4, 23, 3)
    assert place_recipe("dconv@last1", "bottleneck", layers) == ["layer4.2.conv2"]
    assert place_recipe("dconv@last2", "bottleneck", layers) == C5[1:]
    assert place_recipe("dconv@last6", "bottleneck", layers) == [
        "layer3.20.conv2", "layer3.21.conv2", "layer3.22.conv2", *C5]


def test_basic_block_networks_have_two_3x3_convs_per_block():
    layers = (2, 2, 2, 2)
    assert place_recipe("dconv@c5", "basic", layers) == [
        "layer4.0.conv1", "layer4.0.conv2", "layer4.1.conv1", "layer4.1.conv2"]
    assert place_recipe("dconv@last3", "basic", layers) == ["layer4.0.conv2", "layer4.1.conv1", "layer4.1.conv2"]
    model = meta(18, recipe="mdconv@c3-c5")
    assert len(deformable_layer_names(model)) == 12
    first = model.get_submodule("layer2.0.conv1")  # the stride-2 3x3 of a basic block becomes deformable too
    assert isinstance(first, ModulatedDeformConv2dPack) and first.stride == (2, 2)
    assert first.conv_offset.stride == (2, 2) and first.conv_offset.out_channels == 27


def test_offset_branches_match_their_conv_geometry_including_dilation_and_groups():
    model = meta(50, recipe="dconv@c5", dilate_conv5=True, offset_groups=4)
    for n in model.deformable_layers:
        layer = model.get_submodule(n)
        assert type(layer) is DeformConv2dPack
        assert layer.dilation == layer.padding == layer.conv_offset.dilation == layer.conv_offset.padding == (2, 2)
        assert layer.stride == layer.conv_offset.stride == (1, 1)
        assert layer.conv_offset.out_channels == 2 * 4 * 9 and layer.offset_groups == 4


def test_recipe_strings_parse_and_bad_ones_are_refused_with_the_grammar():
    assert parse_recipe("mdconv@c3-c5") == Recipe("mdconv", (3, 4, 5))
    assert parse_recipe(" DConv@C5 ") == Recipe("dconv", (5,))
    assert parse_recipe("dconv@last6") == Recipe("dconv", (), 6)
    assert parse_recipe(None) is None and parse_recipe("none") is None
    assert parse_recipe("mdconv@c3-c5").spec == "mdconv@c3-c5" and parse_recipe("dconv@c5").spec == "dconv@c5"
    for spec in PAPER_RECIPES.values():
        assert parse_recipe(spec).spec == spec
    for bad in ["dcn@c5", "dconv@c6", "dconv@c1", "dconv@c4-c3", "dconv@last0", "dconv", "mdconv@c3-c5,c2"]:
        with pytest.raises(ValueError, match="recipe: expected 'none' or KIND@WHERE"):
            parse_recipe(bad)
    with pytest.raises(TypeError, match="recipe"):
        parse_recipe(5)
    with pytest.raises(ValueError, match="asks for the last 40 3x3 convs, but this network has 16"):
        place_recipe("dconv@last40", "bottleneck", (3, 4, 6, 3))


# ------------------------------------------------------------------------------------------------
# Zero-initialised deformable networks and loading plain weights
# ------------------------------------------------------------------------------------------------
def test_a_fresh_deformable_network_has_zero_offset_branches():
    model = resnet(50, width=0.25, recipe="mdconv@c3-c5")
    branches = [p for k, p in model.named_parameters() if is_offset_key(k)]
    assert len(branches) == 2 * 13 and all(torch.count_nonzero(p) == 0 for p in branches)


@pytest.mark.parametrize("depth, recipe, kw", [
    (50, "dconv@c3-c5", {}),
    (50, "dconv@c5", dict(dilate_conv5=True, stride_in_1x1=True, offset_groups=2)),
    (18, "dconv@c3-c5", dict(dilate_conv5=True)),
])
def test_dcnv1_network_loaded_from_plain_weights_computes_what_the_plain_one_does(depth, recipe, kw):
    plain, deform, report = small_pair(depth, recipe, **kw)
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        y_plain, y_deform = plain(x), deform(x)
        torch.testing.assert_close(y_deform, y_plain, rtol=1e-10, atol=1e-10)
        # ... and the deformable layers are really in the path: move one offset and the output moves
        deform.get_submodule(deform.deformable_layers[0]).conv_offset.bias.fill_(0.5)
        assert (deform(x) - y_plain).abs().max() > 1e-3
    assert sorted(report.offset_keys) == sorted(
        f"{n}.conv_offset.{p}" for n in deform.deformable_layers for p in ("weight", "bias"))
    assert set(report.loaded) == set(plain.state_dict()) and report.new_keys == [] and report.ignored == []


def test_dcnv2_network_loaded_from_plain_weights_runs_its_modulated_convs_at_half_amplitude():
    """DCNv2: mask = sigmoid(0) = 0.5, so each loaded modulated conv gives exactly half the plain conv's output;
    BatchNorm after it was fitted to the full amplitude, so the network's output is NOT the plain one's."""
    plain, deform, _ = small_pair(50, "mdconv@c3-c5")
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    seen = {}

    def grab(name, store):
        return lambda mod, inp, out: store.__setitem__(name, (inp[0], out))

    hooks = [deform.get_submodule(n).register_forward_hook(grab(n, seen)) for n in deform.deformable_layers]
    with torch.no_grad():
        y_deform, y_plain = deform(x), plain(x)
        for n in deform.deformable_layers:
            inp, out = seen[n]
            torch.testing.assert_close(out, 0.5 * plain.get_submodule(n)(inp), rtol=1e-10, atol=1e-10)
    for h in hooks:
        h.remove()
    assert len(seen) == 13
    assert not torch.allclose(y_deform, y_plain, rtol=1e-3, atol=1e-3)


def test_gradients_reach_the_offset_branches_of_a_zero_initialised_network():
    torch.manual_seed(0)
    model = resnet(18, width=0.25, num_classes=4, recipe="mdconv@c4-c5")
    loss = nn.functional.cross_entropy(model(torch.randn(2, 3, 48, 48)), torch.tensor([0, 3]))
    loss.backward()
    for n in model.deformable_layers:
        branch = model.get_submodule(n).conv_offset
        assert branch.weight.grad is not None and branch.weight.grad.abs().sum() > 0, n


def test_plain_weights_load_from_a_file_into_a_frozen_bn_trunk(tmp_path):
    torch.manual_seed(1)
    plain = resnet(34, width=0.25)
    randomise_norm_stats(plain)
    path = tmp_path / "resnet34.pth"
    torch.save(plain.state_dict(), path)
    trunk = resnet(34, width=0.25, num_classes=None, norm="frozen_bn", recipe="dconv@c5")
    report = load_plain_weights(trunk, path)
    assert sorted(report.ignored) == sorted(
        [k for k in plain.state_dict() if k.endswith("num_batches_tracked") or k.startswith("fc.")])
    assert len(report.offset_keys) == 2 * 6
    sd = trunk.state_dict()
    for k, v in plain.state_dict().items():
        if k in sd:
            assert torch.equal(sd[k], v), k
    x = torch.randn(1, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(trunk.double()(x), plain.double().eval().forward_features(x)["conv5"],
                                   rtol=1e-10, atol=1e-10)


def test_loading_resets_trained_offsets_unless_asked_not_to():
    plain, deform, _ = small_pair(50, "dconv@c5")
    branch = deform.get_submodule("layer4.1.conv2").conv_offset
    with torch.no_grad():
        branch.bias.fill_(0.3)
    load_plain_weights(deform, plain.state_dict(), reset_offsets=False)
    assert torch.all(branch.bias == 0.3)
    load_plain_weights(deform, plain.state_dict())
    assert torch.count_nonzero(branch.bias) == 0


def test_a_wrong_checkpoint_is_refused_whole_and_nothing_is_loaded():
    target = resnet(34, width=0.25, recipe="dconv@c5")
    before = {k: v.clone() for k, v in target.state_dict().items()}
    other_depth = resnet(18, width=0.25).state_dict()
    with pytest.raises(ValueError, match=r"missing from the checkpoint .*layer1\.2\.conv1\.weight"):
        load_plain_weights(target, other_depth)
    other_width = resnet(34, width=0.5).state_dict()
    with pytest.raises(ValueError, match=r"shape mismatches .*conv1\.weight: model \[16, 3, 7, 7\], checkpoint \[32"):
        load_plain_weights(target, other_width)
    extra = dict(resnet(34, width=0.25).state_dict(), **{"head.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match=r"in the checkpoint but not in the model: \['head\.weight'\]"):
        load_plain_weights(target, extra)
    after = target.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    with pytest.raises(TypeError, match="source: expected a state dict"):
        load_plain_weights(target, [1, 2])
    with pytest.raises(TypeError, match="non-tensors"):
        load_plain_weights(target, {"state_dict": {}, "epoch": 3})
    with pytest.raises(FileNotFoundError, match="source: no such file"):
        load_plain_weights(target, "/nonexistent/resnet34.pth")
    with pytest.raises(TypeError, match="model: expected a dcn_lessons.models.ResNet"):
        load_plain_weights(nn.Linear(2, 2), other_depth)


# ------------------------------------------------------------------------------------------------
# Frozen BatchNorm, frozen stages
# ------------------------------------------------------------------------------------------------
def test_frozen_batchnorm_is_batchnorm_in_eval_mode_and_loads_its_checkpoint():
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(8)
    randomise_norm_stats(bn)
    frozen = FrozenBatchNorm2d(8)
    frozen.load_state_dict(bn.state_dict())  # strict: num_batches_tracked is dropped, nothing else differs
    x = torch.randn(2, 8, 5, 5)
    torch.testing.assert_close(frozen(x), bn.eval()(x))
    assert list(frozen.parameters()) == [] and set(frozen.state_dict()) == set(bn.state_dict()) - {
        "num_batches_tracked"}
    with pytest.raises(ValueError, match=r"input: expected a 4-D shape \[N, 8, H, W\]"):
        frozen(torch.randn(2, 4, 5, 5))


def test_frozen_stages_stop_gradients_and_keep_their_batchnorm_in_eval_mode():
    model = resnet(18, width=0.25, frozen_stages=2)
    model.train()
    frozen = [k for k, p in model.named_parameters() if not p.requires_grad]
    assert frozen and all(k.split(".")[0] in ("conv1", "bn1", "layer1") for k in frozen)
    assert all(p.requires_grad for k, p in model.named_parameters() if k.split(".")[0] in ("layer2", "fc"))
    assert not model.bn1.training and not model.layer1[0].bn1.training and model.layer2[0].bn1.training
    stats = model.layer1[0].bn1.running_mean.clone()
    model(torch.randn(2, 3, 32, 32))
    assert torch.equal(model.layer1[0].bn1.running_mean, stats)


# ------------------------------------------------------------------------------------------------
# Geometry: width, dilation, stride placement, the detection trunk
# ------------------------------------------------------------------------------------------------
def test_width_multiplies_every_channel_count():
    m = meta(50, width=0.25, num_classes=None)
    assert m.stage_channels == {"conv1": 16, "conv2": 64, "conv3": 128, "conv4": 256, "conv5": 512}
    assert meta(18, width=0.5).stage_channels == {"conv1": 32, "conv2": 32, "conv3": 64, "conv4": 128, "conv5": 256}


def test_dilated_conv5_keeps_stride_16_with_every_3x3_at_dilation_2():
    m = resnet(50, width=0.25, num_classes=None, dilate_conv5=True)
    assert m.stage_strides == {"conv1": 2, "conv2": 4, "conv3": 8, "conv4": 16, "conv5": 16}
    for i in range(3):
        assert m.layer4[i].conv2.dilation == m.layer4[i].conv2.padding == (2, 2) and m.layer4[i].conv2.stride == (1, 1)
    assert m.layer4[0].downsample[0].stride == (1, 1)
    feats = m.forward_features(torch.randn(1, 3, 97, 130), ("conv2", "conv4", "conv5"))
    assert list(feats) == ["conv2", "conv4", "conv5"]
    assert feats["conv4"].shape[-2:] == feats["conv5"].shape[-2:] == (7, 9)  # ceil(97/16), ceil(130/16)
    assert feats["conv2"].shape[-2:] == (25, 33)


def test_stride_in_1x1_moves_the_stride_not_the_shapes():
    a, b = meta(50), meta(50, stride_in_1x1=True)
    assert (a.layer2[0].conv1.stride, a.layer2[0].conv2.stride) == ((1, 1), (2, 2))
    assert (b.layer2[0].conv1.stride, b.layer2[0].conv2.stride) == ((2, 2), (1, 1))
    assert b.layer4[0].conv1.stride == (2, 2)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ya = resnet(50, width=0.25, num_classes=None).eval().forward_features(x, ("conv3", "conv5"))
        yb = resnet(50, width=0.25, num_classes=None, stride_in_1x1=True).eval().forward_features(x, ("conv3", "conv5"))
    assert all(ya[k].shape == yb[k].shape for k in ya)


def test_detection_backbone_gives_conv4_and_reduced_conv5_at_stride_16():
    torch.manual_seed(0)
    bb = resnet_backbone(18, width=0.25, recipe="dconv@c5", reduce_channels=32)
    assert isinstance(bb, ResNetFeatures) and isinstance(bb.body, ResNet)
    assert bb.out_channels == {"conv4": 64, "conv5": 32} and bb.strides == {"conv4": 16, "conv5": 16}
    assert isinstance(bb.body.bn1, FrozenBatchNorm2d) and bb.body.frozen_stages == 2
    feats = bb(torch.randn(2, 3, 80, 112))
    assert list(feats) == ["conv4", "conv5"]
    assert feats["conv4"].shape == (2, 64, 5, 7) and feats["conv5"].shape == (2, 32, 5, 7)
    assert feats["conv5"].min() >= 0  # the reduction is followed by a ReLU
    (feats["conv4"].sum() + feats["conv5"].sum()).backward()
    assert bb.conv5_reduce.weight.grad is not None and bb.body.layer4[1].conv2.conv_offset.weight.grad is not None
    assert bb.body.conv1.weight.grad is None and bb.body.layer1[0].conv1.weight.grad is None  # frozen
    report = load_plain_weights(bb, resnet(18, width=0.25).state_dict())
    assert report.new_keys == ["conv5_reduce.weight", "conv5_reduce.bias"] and len(report.offset_keys) == 8
    undilated = resnet_backbone(18, width=0.25, dilate_conv5=False, stages=("conv3", "conv5"))
    assert undilated.strides == {"conv3": 8, "conv5": 32}


@pytest.mark.parametrize("call, match", [
    (lambda: resnet(42), r"depth: expected one of \[18, 34, 50, 101, 152\], got 42"),
    (lambda: resnet(18, width=0), "width: expected a positive number"),
    (lambda: resnet(18, norm="gn"), "norm: expected 'bn', 'frozen_bn' or a callable"),
    (lambda: resnet(18, frozen_stages=6), "frozen_stages: expected an int in 0..5"),
    (lambda: resnet(18, num_classes=0), "num_classes: expected a positive int or None"),
    (lambda: resnet(18, offset_groups=0), "offset_groups: expected a positive int"),
    (lambda: ResNet("basic", (2, 2, 2)), "layers: expected 4 positive ints"),
    (lambda: ResNet("wide", (2, 2, 2, 2)), "block: expected 'basic' or 'bottleneck'"),
    (lambda: resnet(18, width=0.25, recipe="dconv@c5", offset_groups=3),
     r"layer4\.0\.conv1 \(deformable, dconv@c5\): in_channels: expected a multiple of offset_groups = 3"),
    (lambda: resnet(18, width=0.25).forward_features(torch.zeros(1, 3, 32, 32), ("conv6",)), "stages: expected"),
    (lambda: resnet(18, width=0.25)(torch.zeros(1, 1, 32, 32)), r"x: expected an image batch \[N, 3, H, W\]"),
    (lambda: ResNetFeatures(resnet(18, width=0.25)), "body: expected a trunk built with num_classes=None"),
    (lambda: resnet_backbone(18, width=0.25, stages=("conv4",), reduce_channels=8), "'conv5' is not among stages"),
])
def test_bad_arguments_are_named(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()
