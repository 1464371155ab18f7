"""dcn_lessons.analysis.modalities: DCNv2 §2.1's effective receptive field, effective sampling / bin locations and
error-bounded saliency region, checked against the theoretical receptive field, direct autograd through the
operators, and nodes whose support is known."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dcn_lessons.analysis import (
    Frame,
    LayerGeometry,
    Node,
    effective_bin_locations,
    effective_receptive_field,
    effective_sampling_locations,
    feature_map,
    receptive_field,
    saliency_region,
)
from dcn_lessons.ops import DeformConv2dPack, DeformRoIPoolPack, deform_conv2d, deform_roi_pool


def _positive_stack(geometries, channels=2, seed=0):
    """Plain convs with positive weights and biases, ReLU between: every unit is active on a positive image, so
    the gradient is positive exactly on the theoretical receptive field."""
    g = torch.Generator().manual_seed(seed)
    layers, cin = [], 1
    for geo in geometries:
        conv = nn.Conv2d(cin, channels, geo.kernel_size, geo.stride, geo.padding, geo.dilation).double()
        with torch.no_grad():
            conv.weight.copy_(0.1 + torch.rand(conv.weight.shape, generator=g, dtype=torch.float64))
            conv.bias.copy_(0.1 + torch.rand(conv.bias.shape, generator=g, dtype=torch.float64))
        layers += [conv, nn.ReLU()]
        cin = channels
    return nn.Sequential(*layers)


def _positive_image(h, w, seed=1):
    return 0.5 + torch.rand(1, h, w, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _box_mask(box, h, w):
    y0, y1, x0, x1 = box
    m = np.zeros((h, w), bool)
    m[y0:y1 + 1, x0:x1 + 1] = True
    return m


# --------------------------------------------------------------------------------------------------------- ERF
@pytest.mark.parametrize("geometries", [
    [LayerGeometry.of(3, 1, 1)] * 3,  # three plain 3x3 convs: a 7x7 receptive field
    [LayerGeometry.of(3, 1, 1), LayerGeometry.of(3, 2, 1), LayerGeometry.of(3, 1, 2, 2)],  # stride and dilation
])
def test_erf_of_plain_convs_has_exactly_the_theoretical_receptive_field_as_support(geometries):
    h, w = 23, 21
    model = _positive_stack(geometries)
    image = _positive_image(h, w)
    out = feature_map(model, image[None])
    for node in [(out.shape[2] // 2, out.shape[3] // 2), (0, 1), (out.shape[2] - 1, out.shape[3] - 1)]:
        erf = effective_receptive_field(model, image, node)
        box = receptive_field(geometries, node, image_size=(h, w))
        np.testing.assert_array_equal(erf > 0, _box_mask(box, h, w))


def test_erf_of_one_linear_conv_is_the_summed_kernel():
    conv = nn.Conv2d(1, 3, 3, padding=1, bias=False).double()
    image = torch.randn(1, 9, 9, dtype=torch.float64)
    erf = effective_receptive_field(conv, image, (4, 5))
    expected = np.zeros((9, 9))
    expected[3:6, 4:7] = np.abs(conv.weight.detach().sum(dim=(0, 1)).numpy())
    np.testing.assert_allclose(erf, expected, atol=1e-12)
    # one channel only
    erf1 = effective_receptive_field(conv, image, Node(4, 5, channel=2))
    np.testing.assert_allclose(erf1[3:6, 4:7], np.abs(conv.weight[2, 0].detach().numpy()), atol=1e-12)


def test_node_on_an_inner_layer_and_mode_restored():
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.BatchNorm2d(2), nn.ReLU(), nn.Conv2d(2, 2, 3, padding=1))
    model.train()
    image = torch.rand(1, 10, 10)
    erf = effective_receptive_field(model, image, (5, 5), output="1")  # the BatchNorm's output: a 3x3 support
    assert (erf > 0).sum() <= 9 and erf[4:7, 4:7].sum() > 0
    assert all(m.training for m in model.modules())
    assert model[1].weight.grad is None
    with pytest.raises(ValueError, match="node"):
        effective_receptive_field(model, image, (10, 0))
    with pytest.raises(ValueError, match="image"):
        effective_receptive_field(model, torch.rand(2, 1, 10, 10), (0, 0))


# --------------------------------------------------------------------------------------- effective sampling
def _deformable_model(first_plain=False, seed=0):
    torch.manual_seed(seed)
    first = nn.Conv2d(1, 4, 3, padding=1) if first_plain else DeformConv2dPack(1, 4, 3, padding=1)
    if not first_plain:
        with torch.no_grad():
            first.conv_offset.weight.normal_(0, 0.3)
            first.conv_offset.bias.normal_(0, 0.5)
    return nn.Sequential(first, nn.ReLU(), nn.Conv2d(4, 2, 3, padding=1)).double()


@pytest.mark.parametrize("first_plain", [False, True])
def test_effective_sampling_locations_are_the_offset_gradient_at_the_sampling_positions(first_plain):
    model = _deformable_model(first_plain)
    original = model[0]
    image = torch.rand(1, 12, 12, dtype=torch.float64)
    node = (5, 6)
    es = effective_sampling_locations(model, image, node, "0", Frame())
    assert model[0] is original  # the plain layer's twin is gone again
    # independent: the offsets as a leaf tensor, the operator, the rest of the network, autograd
    x = image[None]
    layer = original if not first_plain else None
    weight, bias = model[0].weight, model[0].bias
    offset = (layer.conv_offset(x) if layer is not None else torch.zeros(1, 18, 12, 12, dtype=torch.float64))
    offset = offset.detach().requires_grad_(True)
    out = model[2](F.relu(deform_conv2d(x, offset, weight, bias, padding=1)))
    (g,) = torch.autograd.grad(out[0, :, node[0], node[1]].sum(), offset)
    expected = g[0].view(9, 2, 12, 12).permute(0, 2, 3, 1).reshape(-1, 2).numpy()
    np.testing.assert_allclose(es.grad, expected, atol=1e-12)
    # positions: the regular grid plus the offsets, kernel point-major
    i, j = np.divmod(np.arange(9), 3)
    yy, xx = np.meshgrid(np.arange(12), np.arange(12), indexing="ij")
    off = offset.detach()[0].view(9, 2, 12, 12).numpy()
    py = yy[None] - 1 + i[:, None, None] + off[:, 0]
    px = xx[None] - 1 + j[:, None, None] + off[:, 1]
    np.testing.assert_allclose(es.points, np.stack([py.ravel(), px.ravel()], 1), atol=1e-12)
    # support: only units within the 3x3 window of the conv above carry weight
    units = (es.weights.reshape(9, 12, 12) > 0).any(0)
    assert units.any() and not units[~_box_mask((4, 6, 5, 7), 12, 12)].any()


def test_effective_sampling_locations_reject_a_non_conv_layer():
    model = _deformable_model()
    with pytest.raises(TypeError, match="layer"):
        effective_sampling_locations(model, torch.rand(1, 8, 8), (1, 1), "1", Frame())


def test_effective_bin_locations_are_the_gradient_per_pixel_of_bin_position():
    torch.manual_seed(0)
    pack = DeformRoIPoolPack(3, 2, deform_fc_channels=8, sampling_ratio=2).double()
    feats = torch.randn(1, 2, 16, 16, dtype=torch.float64)
    roi = (2.0, 3.0, 12.0, 9.0)
    head = nn.Linear(18, 1).double()
    bins, weights = effective_bin_locations(pack, feats, roi, head=lambda p: head(p.reshape(1, -1)))
    assert weights.shape == (3, 3) and bins.boxes.shape == (3, 3, 4)
    offset = torch.zeros(1, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    rois = torch.tensor([[0.0, *roi]], dtype=torch.float64)
    pooled = deform_roi_pool(feats, rois, offset, 3, 1.0, 2, 0.1)
    (g,) = torch.autograd.grad(head(pooled.reshape(1, -1)).sum(), offset)
    gx, gy = g[0, 0] / (0.1 * 10.0), g[0, 1] / (0.1 * 6.0)
    np.testing.assert_allclose(weights, torch.sqrt(gx ** 2 + gy ** 2).numpy(), atol=1e-12)
    assert (weights > 0).all()


# ------------------------------------------------------------------------------------------------- saliency
def test_saliency_is_the_whole_image_for_a_node_that_depends_on_every_pixel():
    model = nn.Sequential(*_positive_stack([LayerGeometry.of(3, 1, 1)]), nn.AdaptiveAvgPool2d(1))
    image = _positive_image(16, 16)
    for order in ("square", "erf"):
        region = saliency_region(model, image, (0, 0), eps=0.01, order=order)
        assert region.mask.all() and region.index == len(region.sizes) - 1
        assert region.errors[-2] > 0.01


@pytest.mark.parametrize("order", ["square", "erf"])
def test_saliency_of_a_local_node_is_small_and_inside_its_receptive_field(order):
    geometries = [LayerGeometry.of(3, 1, 1)] * 3
    model = _positive_stack(geometries)
    h = w = 32
    image = _positive_image(h, w)
    node = (16, 15)
    region = saliency_region(model, image, node, eps=0.1, order=order, centre=node)
    box = _box_mask(receptive_field(geometries, node, (h, w)), h, w)
    assert region.mask.any() and not region.mask[~box].any()
    assert region.mask.sum() <= 49 < 0.1 * h * w
    assert region.error <= 0.1 and (region.errors[region.index:] <= 0.1).all()
    if region.index > 0:
        assert region.errors[region.index - 1] > 0.1  # the candidate before it is not good enough
    again = saliency_region(model, image, node, eps=0.1, order=order, centre=node)
    np.testing.assert_array_equal(again.mask, region.mask)
    # relative to the image-driven change (biases excluded) the bound is stricter: a larger region, still local
    strict = saliency_region(model, image, node, eps=0.1, order=order, centre=node, relative_to="masked")
    assert strict.mask.sum() >= region.mask.sum() and not strict.mask[~box].any()
    # with the square order the region is a square around the centre
    if order == "square":
        assert region.index > 0  # one pixel is not enough
        rows, cols = np.nonzero(region.mask)
        assert rows.max() - rows.min() == cols.max() - cols.min()
        assert rows.min() <= node[0] <= rows.max() and cols.min() <= node[1] <= cols.max()


def test_saliency_centre_defaults_to_the_erf_peak_and_bad_arguments():
    model = _positive_stack([LayerGeometry.of(3, 1, 1)] * 2)
    image = _positive_image(20, 20)
    region = saliency_region(model, image, (7, 12))
    rows, cols = np.nonzero(region.mask)
    assert rows.min() <= 7 <= rows.max() and cols.min() <= 12 <= cols.max()
    with pytest.raises(ValueError, match="eps"):
        saliency_region(model, image, (7, 12), eps=0)
    with pytest.raises(ValueError, match="order"):
        saliency_region(model, image, (7, 12), order="disk")
    with pytest.raises(ValueError, match="relative_to"):
        saliency_region(model, image, (7, 12), relative_to="mean")
    zero = nn.Sequential(nn.Conv2d(1, 1, 3, padding=1, bias=False)).double()
    nn.init.zeros_(zero[0].weight)
    with pytest.raises(ValueError, match="response"):
        saliency_region(zero, image, (1, 1), centre=(1, 1))


def test_a_classifier_logit_is_a_node_of_a_1x1_map():
    from dcn_lessons.training import make_model

    model = make_model("v1", width=2, seed=0).double()
    image = torch.rand(1, 16, 16, dtype=torch.float64)
    erf = effective_receptive_field(model, image, Node(0, 0, channel=3))
    x = image[None].clone().requires_grad_(True)
    model.eval()
    (g,) = torch.autograd.grad(model(x)[0, 3], x)
    np.testing.assert_allclose(erf, g[0, 0].abs().numpy(), atol=1e-12)
    assert feature_map(model, image[None]).shape == (1, 10, 1, 1)
