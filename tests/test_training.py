"""dcn_lessons.training: the geometric-digits data set, the plain/v1/v2 CNN, the training loop, sampling locations."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dcn_lessons.ops.layers import DeformConv2dPack, ModulatedDeformConv2dPack
from dcn_lessons.training import (
    DigitNet,
    evaluate,
    geometric_digits,
    image_sampling_locations,
    layer_input,
    make_model,
    sampling_locations,
    to_deformable,
    train,
)


def test_dataset_is_deterministic_and_well_formed():
    a = geometric_digits(12, size=12, seed=3)
    b = geometric_digits(12, size=12, seed=3)
    c = geometric_digits(12, size=12, seed=4)
    assert a.images.shape == (12, 1, 12, 12) and a.images.dtype == torch.float32
    assert a.labels.shape == (12,) and a.labels.dtype == torch.int64
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.images, c.images)
    assert float(a.images.min()) >= 0 and float(a.images.max()) <= 1 and float(a.images.sum()) > 0
    assert np.all((a.scale >= 0.55) & (a.scale <= 1.15)) and np.all(np.abs(a.rotation) <= 50)


def test_train_and_test_splits_share_no_digit():
    tr = geometric_digits(400, size=8, seed=0, split="train")
    te = geometric_digits(400, size=8, seed=0, split="test")
    assert not set(tr.source) & set(te.source)


def test_identity_transform_reproduces_the_digit():
    from dcn_lessons.data import digits

    d = geometric_digits(3, size=8, seed=0, scale=(1, 1), rotation=0, shear=0, shift=0, fill=1.0)
    imgs, labels = digits()
    np.testing.assert_allclose(d.images[:, 0].numpy(), imgs[d.source], atol=1e-6)
    assert np.array_equal(d.labels.numpy(), labels[d.source])


def test_scale_shrinks_the_digit():
    def spread(d):  # mean distance of the ink from its centre of mass, per image
        w = d.images[:, 0].double()
        yy, xx = torch.meshgrid(torch.arange(w.shape[1]).double(), torch.arange(w.shape[2]).double(), indexing="ij")
        m = w.sum((1, 2))
        cy, cx = (w * yy).sum((1, 2)) / m, (w * xx).sum((1, 2)) / m
        return ((w * ((yy - cy[:, None, None]) ** 2 + (xx - cx[:, None, None]) ** 2).sqrt()).sum((1, 2)) / m)

    kw = dict(n=20, size=32, seed=6, rotation=0, shear=0, shift=0)
    big, small = geometric_digits(scale=(1, 1), **kw), geometric_digits(scale=(0.5, 0.5), **kw)
    ratio = float((spread(small) / spread(big)).mean())
    assert 0.4 < ratio < 0.6, ratio


@pytest.mark.parametrize("bad, match", [
    (dict(split="val"), "split"), (dict(n=0), "n:"), (dict(size=4), "size"), (dict(scale=(1.0, 0.5)), "scale"),
])
def test_dataset_bad_arguments(bad, match):
    kw = dict(n=2, size=8, seed=0)
    kw.update(bad)
    with pytest.raises(ValueError, match=match):
        geometric_digits(**kw)


def test_fresh_v1_equals_plain_and_v2_halves_the_deformable_layers():
    x = geometric_digits(4, size=12, seed=1).images.double()
    plain, v1, v2 = (make_model(v, width=2, seed=7).double().eval() for v in ("plain", "v1", "v2"))
    assert isinstance(v1.conv2, DeformConv2dPack) and isinstance(v2.conv3, ModulatedDeformConv2dPack)
    assert isinstance(plain.conv2, nn.Conv2d) and isinstance(v1.conv1, nn.Conv2d)
    torch.testing.assert_close(v1(x), plain(x), rtol=1e-10, atol=1e-10)
    # v2 layer alone: 0.5 * conv_without_bias + bias (sigmoid(0) = 1/2)
    feats = layer_input(plain, "conv2", x[:1])
    want = 0.5 * F.conv2d(feats, plain.conv2.weight, padding=1) + plain.conv2.bias.view(1, -1, 1, 1)
    torch.testing.assert_close(v2.conv2(feats), want, rtol=1e-10, atol=1e-10)


def test_to_deformable_copies_weights_and_rejects_bad_input():
    conv = nn.Conv2d(2, 3, 3, padding=1)
    d = to_deformable(conv, "v1")
    assert torch.equal(d.weight, conv.weight) and torch.equal(d.bias, conv.bias)
    assert d.conv_offset.out_channels == 18 and float(d.conv_offset.weight.detach().abs().sum()) == 0
    assert to_deformable(conv, "plain") is conv
    with pytest.raises(ValueError, match="variant"):
        to_deformable(conv, "v3")
    with pytest.raises(TypeError, match="conv"):
        to_deformable(nn.Linear(2, 2), "v1")
    with pytest.raises(ValueError, match="deform"):
        make_model("v1", width=2, deform=("fc",))


@pytest.mark.parametrize("variant", ["plain", "v2"])
def test_training_lowers_the_loss_on_a_fixed_batch(variant):
    data = geometric_digits(16, size=8, seed=2)
    model = make_model(variant, width=2, seed=0)
    model.train()
    with torch.no_grad():
        before = float(F.cross_entropy(model(data.images), data.labels))
    hist = train(model, data, data, steps=8, batch_size=16, lr=1e-2, eval_every=4)
    model.train()
    with torch.no_grad():
        after = float(F.cross_entropy(model(data.images), data.labels))
    assert after < before
    assert len(hist.loss) == 8 and hist.eval_steps == [4, 8] and 0 <= hist.final_acc <= 1
    assert hist.variant == variant and hist.seconds > 0
    if variant == "v2":  # the offset branch received gradient and moved
        assert float(model.conv3.conv_offset.weight.detach().abs().sum()) > 0


def test_evaluate_counts_correct_predictions():
    data = geometric_digits(10, size=8, seed=0)

    class Oracle(nn.Module):
        def forward(self, x):
            return F.one_hot(data.labels[: x.shape[0]], 10).float()

    assert evaluate(Oracle(), data, batch_size=100) == 1.0


def test_sampling_locations_of_a_fresh_layer_are_the_regular_grid():
    layer = DeformConv2dPack(3, 4, 3, stride=2, padding=1, dilation=1)
    ls = sampling_locations(layer, torch.randn(3, 7, 6))
    ho, wo = 4, 3
    assert ls.py.shape == (1, 9, ho, wo) and ls.px.shape == (1, 9, ho, wo) and ls.mask is None
    i, j = np.divmod(np.arange(9), 3)
    want_y = (np.arange(ho) * 2 - 1)[None, :, None] + i[:, None, None]
    want_x = (np.arange(wo) * 2 - 1)[None, None, :] + j[:, None, None]
    np.testing.assert_array_equal(ls.py[0], np.broadcast_to(want_y, (9, ho, wo)))
    np.testing.assert_array_equal(ls.px[0], np.broadcast_to(want_x, (9, ho, wo)))


def test_sampling_locations_follow_the_offsets_and_mask():
    layer = ModulatedDeformConv2dPack(2, 2, 3, padding=1, offset_groups=2)
    with torch.no_grad():
        layer.conv_offset.bias[:36] = torch.arange(36.0) / 10  # Δ of group g, point k: channels g*18 + 2k (+1)
        layer.conv_offset.bias[36:] = 2.0
    ls = sampling_locations(layer, torch.zeros(1, 2, 5, 5))
    assert ls.py.shape == (2, 9, 5, 5) and ls.mask.shape == (2, 9, 5, 5)
    np.testing.assert_allclose(ls.mask, 1 / (1 + np.exp(-2.0)))
    # group 1, kernel point 4 (centre) of output (2, 3): (2 + Δy, 3 + Δx) with Δy = ch 26, Δx = ch 27
    assert ls.py[1, 4, 2, 3] == pytest.approx(2 + 2.6) and ls.px[1, 4, 2, 3] == pytest.approx(3 + 2.7)
    with pytest.raises(TypeError, match="layer"):
        sampling_locations(nn.Conv2d(2, 2, 3), torch.zeros(2, 5, 5))
    with pytest.raises(ValueError, match="features"):
        sampling_locations(layer, torch.zeros(2, 2, 5, 5))


def test_image_sampling_locations_map_feature_positions_to_pixels():
    model = make_model("v1", width=2, seed=0)
    img = geometric_digits(1, size=16, seed=0).images[0]
    assert layer_input(model, "conv3", img).shape == (1, 4, 4, 4)
    ls = image_sampling_locations(model, "conv3", img)
    assert ls.py.shape == (1, 9, 4, 4)
    # centre point of output (1, 2) of conv3 (input stride 4): feature (1, 2) -> pixel (4*1 + 1.5, 4*2 + 1.5)
    assert ls.py[0, 4, 1, 2] == pytest.approx(5.5) and ls.px[0, 4, 1, 2] == pytest.approx(9.5)
    with pytest.raises(ValueError, match="name"):
        layer_input(model, "conv9", img)


def test_digitnet_rejects_bad_width():
    with pytest.raises(ValueError, match="width"):
        DigitNet(0)


def test_feature_and_pixel_coordinates_are_inverse():
    from dcn_lessons.training import feature_to_pixel, pixel_to_feature

    assert feature_to_pixel(0, 1) == 0 and feature_to_pixel(1, 2) == 2.5 and feature_to_pixel(2, 4) == 9.5
    units = np.arange(6)
    np.testing.assert_array_equal(pixel_to_feature(feature_to_pixel(units, 4), 4, 6), units)
    # the nearest unit, clipped to the map: pixel 9.4 is closest to unit 2 (pixel 9.5); far pixels clip
    assert pixel_to_feature(9.4, 4, 6) == 2 and pixel_to_feature(-30.0, 4, 6) == 0 and pixel_to_feature(99.0, 4, 6) == 5
