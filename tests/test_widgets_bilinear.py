"""Lesson 01's explorer, headless: move the point, assert on the weights, value and gradient drawn."""
from __future__ import annotations

import numpy as np
import pytest

from dcn_lessons.reference import bilinear_sample, bilinear_sample_backward
from dcn_lessons.widgets.bilinear import DEFAULT_MAP, BilinearExplorer


def test_starts_between_pixels_and_renders():
    e = BilinearExplorer()
    assert e.redraws == 1 and e.image.value[:8] == b"\x89PNG\r\n\x1a\n"
    assert e.point == (1.3, 2.6)
    np.testing.assert_array_equal(e.corners, [[1, 2], [1, 3], [2, 2], [2, 3]])
    np.testing.assert_allclose(e.weights, [0.7 * 0.4, 0.7 * 0.6, 0.3 * 0.4, 0.3 * 0.6])
    np.testing.assert_allclose(e.corner_artist.get_offsets(), e.corners[:, ::-1])  # drawn as (x, y)
    np.testing.assert_allclose([b.get_height() for b in e.bars], e.weights)


def test_dragging_the_point_updates_weights_value_gradient_and_areas():
    e = BilinearExplorer()
    before = e.image.value
    e.controls["y"].value = 0.25
    e.controls["x"].value = 3.9
    assert e.image.value != before and e.redraws == 3
    np.testing.assert_allclose(e.point_artist.get_offsets(), [[3.9, 0.25]])
    np.testing.assert_allclose(e.weights, [0.75 * 0.1, 0.75 * 0.9, 0.25 * 0.1, 0.25 * 0.9])
    assert e.value == pytest.approx(bilinear_sample(DEFAULT_MAP, np.array([0.25]), np.array([3.9]))[0])
    _, gy, gx = bilinear_sample_backward(np.ones(1), DEFAULT_MAP, np.array([0.25]), np.array([3.9]))
    assert e.grad == pytest.approx((gy[0], gx[0]))
    np.testing.assert_allclose([e.arrow.U[0], e.arrow.V[0]], [gx[0], gy[0]])  # arrow (u, v) = (d/dx, d/dy)
    # each corner's weight is the area of the rectangle opposite to it
    areas = [r.get_width() * r.get_height() for r in e.rects]
    np.testing.assert_allclose(areas, e.weights)


def test_on_an_integer_the_pixel_has_all_the_weight_and_the_gradient_is_the_forward_difference():
    e = BilinearExplorer()
    e.set(y=1.0, x=2.0)
    np.testing.assert_allclose(e.weights, [1, 0, 0, 0])
    assert e.value == pytest.approx(DEFAULT_MAP[1, 2])
    assert e.grad == pytest.approx((DEFAULT_MAP[2, 2] - DEFAULT_MAP[1, 2], DEFAULT_MAP[1, 3] - DEFAULT_MAP[1, 2]))


def test_edge_and_outside():
    e = BilinearExplorer()
    e.set(y=-0.5, x=1.5)
    assert e.inside and e.on_map.tolist() == [False, False, True, True]
    assert e.value == pytest.approx(0.25 * (DEFAULT_MAP[0, 1] + DEFAULT_MAP[0, 2]))
    assert [b.get_hatch() for b in e.bars] == ["///", "///", "", ""]
    e.set(y=-1.0)
    assert not e.inside and e.value == 0.0 and e.grad == (0.0, 0.0)


def test_gradient_toggle_hides_the_arrow_only():
    e = BilinearExplorer()
    e.controls["gradient"].value = False
    assert (e.arrow.U[0], e.arrow.V[0]) == (0.0, 0.0) and e.grad != (0.0, 0.0)


def test_rejects_bad_maps():
    with pytest.raises(ValueError, match="image: expected a 2-D map"):
        BilinearExplorer(np.zeros((4, 4, 3)))
