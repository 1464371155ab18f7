"""Lesson 05's explorer, headless: the sampling points of one unit, followed down the layers (DCNv1 Fig. 5-6)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from dcn_lessons.training import geometric_digits, image_sampling_locations, make_model
from dcn_lessons.widgets.sampling import SamplingExplorer, follow_unit, layer_samples, unit_samples

SIZE = 16  # conv2 sees an 8x8 map (stride 2), conv3 a 4x4 one (stride 4)


@pytest.fixture(scope="module")
def digits():
    return geometric_digits(3, size=SIZE, seed=2, split="test")


def _trained_like(variant, seed=0):
    """A small model whose offset (and mask) branches hold random numbers, as after training."""
    model = make_model(variant, width=2, seed=seed)
    if variant != "plain":
        g = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            for name in ("conv2", "conv3"):
                branch = getattr(model, name).conv_offset
                branch.weight.copy_(0.3 * torch.randn(branch.weight.shape, generator=g))
                branch.bias.copy_(0.5 * torch.randn(branch.bias.shape, generator=g))
    return model.eval()


@pytest.fixture(scope="module")
def models():
    return {"plain": _trained_like("plain"), "v1": _trained_like("v1"), "v2": _trained_like("v2")}


def _grid(stride, y, x):
    """The 3x3 regular grid of unit (y, x) of a padding-1 conv whose input has ``stride`` pixels per feature."""
    i, j = np.meshgrid(np.arange(3), np.arange(3), indexing="ij")
    return np.stack([stride * (y - 1 + i.ravel()) + (stride - 1) / 2, stride * (x - 1 + j.ravel()) + (stride - 1) / 2], 1)


def test_plain_layer_gives_the_regular_grid(models, digits):
    pts, w = unit_samples(models["plain"], digits.images[0], (1, 2), ("conv3",))
    np.testing.assert_allclose(pts, _grid(4, 1, 2))
    np.testing.assert_allclose(w, 1.0)
    ls = layer_samples(models["v1"], "conv3", digits.images[0], regular=True)
    assert ls.mask is None and ls.py.shape == (1, 9, 4, 4)
    np.testing.assert_allclose(np.stack([ls.py[0, :, 1, 2], ls.px[0, :, 1, 2]], 1), _grid(4, 1, 2))


def test_two_level_regular_grid_is_centred_on_the_unit(models, digits):
    pts, _ = unit_samples(models["plain"], digits.images[0], (2, 1), ("conv3", "conv2"))
    offsets = np.array([[4 * a + 2 * c, 4 * b + 2 * d] for a in (-1, 0, 1) for b in (-1, 0, 1)
                        for c in (-1, 0, 1) for d in (-1, 0, 1)], dtype=np.float64)
    np.testing.assert_allclose(pts, np.array([9.5, 5.5]) + offsets)


def test_fresh_deformable_models_sample_the_grid_too(digits):
    pts, w = unit_samples(make_model("v2", width=2, seed=3), digits.images[1], (2, 2), ("conv3", "conv2"))
    grid, _ = unit_samples(make_model("plain", width=2), digits.images[1], (2, 2), ("conv3", "conv2"))
    np.testing.assert_allclose(pts, grid)
    np.testing.assert_allclose(w, 0.25)  # Δm = 0.5 at both levels


def test_one_level_is_the_layer_map_of_the_training_module(models, digits):
    img = digits.images[2]
    for name in ("v1", "v2"):
        ls = image_sampling_locations(models[name], "conv3", img)
        pts, w = unit_samples(models[name], img, (3, 0), ("conv3",))
        np.testing.assert_allclose(pts, np.stack([ls.py[0, :, 3, 0], ls.px[0, :, 3, 0]], 1))
        want_w = np.ones(9) if ls.mask is None else ls.mask[0, :, 3, 0]
        np.testing.assert_allclose(w, want_w)
    assert not np.allclose(pts, _grid(4, 3, 0)), "random offsets should move the points"


def test_two_levels_follow_each_point_to_the_nearest_unit_below(models, digits):
    img = digits.images[0]
    top = image_sampling_locations(models["v2"], "conv3", img)
    below = image_sampling_locations(models["v2"], "conv2", img)
    pts, w = unit_samples(models["v2"], img, (1, 1), ("conv3", "conv2"))
    assert pts.shape == (81, 2) and w.shape == (81,)
    for k in (0, 4, 8):  # children of conv3's point k: the pattern of the nearest conv2 unit, centred on the point
        py, px = top.py[0, k, 1, 1], top.px[0, k, 1, 1]
        uy = int(np.clip(np.rint((py - 0.5) / 2), 0, 7))
        ux = int(np.clip(np.rint((px - 0.5) / 2), 0, 7))
        pattern = np.stack([below.py[0, :, uy, ux] - (2 * uy + 0.5), below.px[0, :, uy, ux] - (2 * ux + 0.5)], 1)
        np.testing.assert_allclose(pts[9 * k: 9 * k + 9], np.array([py, px]) + pattern)
        np.testing.assert_allclose(w[9 * k: 9 * k + 9], top.mask[0, k, 1, 1] * below.mask[0, :, uy, ux])
    assert np.all((w > 0) & (w < 1))


def test_follow_unit_checks_its_arguments(models, digits):
    samples = {"conv3": layer_samples(models["v1"], "conv3", digits.images[0])}
    with pytest.raises(ValueError, match=r"unit: expected \(y, x\) on the 4x4 output grid of conv3, got \(4, 0\)"):
        follow_unit(samples, (4, 0), ("conv3",))
    with pytest.raises(ValueError, match=r"samples: no sampling locations for \['conv2'\]"):
        follow_unit(samples, (0, 0), ("conv3", "conv2"))
    with pytest.raises(ValueError, match="layers: expected at least one layer name"):
        follow_unit(samples, (0, 0), ())
    with pytest.raises(ValueError, match="name: expected a convolution of the model"):
        layer_samples(models["v1"], "fc", digits.images[0])


def test_explorer_draws_one_panel_per_model(models, digits):
    e = SamplingExplorer(models, digits.images, digits.labels)
    assert e.redraws == 1 and e.image.value[:8] == b"\x89PNG\r\n\x1a\n"
    assert list(e.axes) == ["plain", "v1", "v2"]
    assert (e.controls["y"].value, e.controls["x"].value) == (2, 2) and e.controls["y"].max == 3
    np.testing.assert_allclose(e.grid, _grid(4, 2, 2))
    np.testing.assert_allclose(e.centre, [9.5, 9.5])
    np.testing.assert_allclose(e.points["plain"], e.grid)
    for name in models:
        want, w = unit_samples(models[name], digits.images[0], (2, 2), ("conv3",))
        np.testing.assert_allclose(e.points[name], want)
        np.testing.assert_allclose(e.scatters[name].get_offsets(), want[:, ::-1])  # drawn as (x, y)
        np.testing.assert_allclose(e.sizes[name], e.AREA[1] * np.maximum(w, 0.02))
    assert "area ∝ Δm" in e.axes["v2"].get_title() and "area" not in e.axes["v1"].get_title()


def test_explorer_follows_its_controls(models, digits):
    e = SamplingExplorer(models, digits.images, digits.labels)
    before = e.image.value
    e.set(digit=1, y=0, x=3, levels=2)
    assert e.redraws == 2 and e.image.value != before
    np.testing.assert_allclose(e.centre, [1.5, 13.5])
    want, w = unit_samples(models["v1"], digits.images[1], (0, 3), ("conv3", "conv2"))
    np.testing.assert_allclose(e.points["v1"], want)
    np.testing.assert_allclose(e.digit_images["v1"].get_array(), digits.images[1, 0].numpy())
    assert e.points["plain"].shape == (81, 2) and e.grid.shape == (81, 2)
    np.testing.assert_allclose(e.sizes["v2"], e.AREA[2] * np.maximum(e.weights["v2"], 0.02))
    e.controls["levels"].value = 1
    assert e.redraws == 3 and e.points["v2"].shape == (9, 2)


@pytest.mark.parametrize("bad, exc, match", [
    (dict(models={}), ValueError, "models: expected at least one model"),
    (dict(models={"x": torch.nn.Conv2d(1, 1, 3)}), TypeError, r"models\['x'\]: expected a DigitNet, got Conv2d"),
    (dict(images=torch.zeros(2, 16, 16)), ValueError, r"images: expected a tensor \[n, 1, S, S\]"),
    (dict(layer="conv9"), ValueError, "layer/below: expected names among"),
])
def test_explorer_bad_arguments(models, digits, bad, exc, match):
    kw = dict(models=models, images=digits.images)
    kw.update(bad)
    with pytest.raises(exc, match=match):
        SamplingExplorer(**kw)
