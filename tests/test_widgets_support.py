"""Lesson 08's explorer, headless: the three views of the node the sliders pick are the package's instruments."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from dcn_lessons.analysis import Frame, effective_receptive_field, effective_sampling_locations, saliency_region
from dcn_lessons.training import digit_scenes
from test_widgets_sampling import _trained_like  # the same small "as after training" models
from dcn_lessons.widgets import SupportExplorer
from dcn_lessons.widgets.support import VIEWS, node_support

OUT = Frame.block(4)  # DigitNet's bn3 map: two 2x2 max-pools
CONV2_IN = Frame.block(2)


#: tiny tensors: one intra-op thread (the fixture in tests/conftest.py says why)
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def scenes():
    return digit_scenes(2, size=32, per_image=(2, 2), side=(8, 14), seed=3)


@pytest.fixture(scope="module")
def models():
    return {"plain": _trained_like("plain"), "v1": _trained_like("v1"), "v2": _trained_like("v2")}


def test_node_support_is_the_three_instruments(models, scenes):
    image, node = scenes.images[0], (3, 4)
    s = node_support(models["v2"], image, node, "bn3", OUT, "conv2", CONV2_IN, eps=0.1)
    np.testing.assert_allclose(s["centre"], OUT.to_pixel(3, 4))
    np.testing.assert_array_equal(s["erf"], effective_receptive_field(models["v2"], image, node, "bn3"))
    want = effective_sampling_locations(models["v2"], image, node, "conv2", CONV2_IN, "bn3")
    np.testing.assert_array_equal(s["samples"].points, want.points)
    np.testing.assert_array_equal(s["samples"].weights, want.weights)
    region = saliency_region(models["v2"], image, node, "bn3", eps=0.1, centre=tuple(s["centre"]),
                             relative_to="masked")
    np.testing.assert_array_equal(s["region"].mask, region.mask)
    assert s["region"].error <= 0.1


def test_a_node_the_image_cannot_reach_has_no_region(models):
    black = torch.zeros(1, 32, 32)
    s = node_support(models["v1"], black, (1, 1), "bn3", OUT)
    assert s["region"] is None and s["samples"] is None
    s = node_support(models["v1"], black, (1, 1), "bn3", OUT, relative_to="response")
    assert s["region"] is not None and s["region"].mask.sum() >= 1


def test_explorer_draws_every_view_of_every_model(models, scenes):
    e = SupportExplorer(models, scenes.images, "bn3", OUT, "conv2", CONV2_IN)
    assert e.redraws == 1 and e.image.value[:8] == b"\x89PNG\r\n\x1a\n"
    assert e.map_size == (8, 8) and e.node == (4, 4)
    assert (e.controls["y"].max, e.controls["x"].max, e.controls["image"].max) == (7, 7, 1)
    assert list(e.axes) == ["plain", "v1", "v2"] and all(list(a) == list(VIEWS) for a in e.axes.values())
    np.testing.assert_allclose(e.centre, OUT.to_pixel(4, 4))
    for name, model in models.items():
        np.testing.assert_array_equal(e.support[name]["erf"],
                                      effective_receptive_field(model, scenes.images[0], (4, 4), "bn3"))
        assert e.axes[name]["receptive field"].get_title().startswith(f"{name}: ERF")


def test_explorer_follows_its_sliders_and_caches(models, scenes):
    e = SupportExplorer(models, scenes.images, "bn3", OUT, "conv2", CONV2_IN)
    before = e.image.value
    e.set(image=1, y=2, x=6)
    assert e.redraws == 2 and e.image.value != before and e.node == (2, 6)
    np.testing.assert_allclose(e.centre, OUT.to_pixel(2, 6))
    np.testing.assert_array_equal(e.support["v1"]["erf"],
                                  effective_receptive_field(models["v1"], scenes.images[1], (2, 6), "bn3"))
    cached = e.support["v1"]
    e.controls["x"].value = 5
    e.controls["x"].value = 6
    assert e.redraws == 4 and e.support["v1"] is cached  # computed once per (model, image, node)


def test_plain_layer_is_seen_through_its_regular_grid(models, scenes):
    e = SupportExplorer({"plain": models["plain"]}, scenes.images, "bn3", OUT, "conv2", CONV2_IN, node=(3, 3))
    pts = e.support["plain"]["samples"].points
    w = e.support["plain"]["samples"].weights
    on = pts[w > 0]
    # the regular grid of conv2 maps to image pixels 2p + 0.5 (+ 2 per kernel step): every weighted point is on it
    np.testing.assert_allclose((on - 0.5) / 2, np.round((on - 0.5) / 2), atol=1e-12)


@pytest.mark.parametrize("bad, exc, match", [
    (dict(models={}), ValueError, "models: expected at least one model"),
    (dict(models={"x": "not a model"}), TypeError, r"models\['x'\]: expected an nn.Module, got str"),
    (dict(images=torch.zeros(1, 32, 32)), ValueError, r"images: expected a tensor \[n, C, H, W\]"),
    (dict(frame=(4, 1.5)), TypeError, "frame: expected a dcn_lessons.analysis.Frame"),
    (dict(relative_to="image"), ValueError, "relative_to: expected 'response' or 'masked'"),
])
def test_explorer_bad_arguments(models, scenes, bad, exc, match):
    kw = dict(models=models, images=scenes.images, output="bn3", frame=OUT)
    kw.update(bad)
    with pytest.raises(exc, match=match):
        SupportExplorer(**kw)
