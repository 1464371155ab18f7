"""Lesson 00's explorer, headless: move controls, assert on what is drawn."""
from __future__ import annotations

import numpy as np
import pytest

from dcn_lessons.geometry import kernel_grid, transform_offsets
from dcn_lessons.reference import deform_conv2d
from dcn_lessons.widgets import OffsetExplorer


@pytest.fixture(scope="module")
def image():
    rng = np.random.default_rng(0)
    return rng.random((24, 20))


def test_starts_on_the_regular_grid_and_renders(image):
    e = OffsetExplorer(image)
    assert e.redraws == 1 and e.image.value[:8] == b"\x89PNG\r\n\x1a\n"
    expected = kernel_grid(3) - 1 + np.array(e.center)
    np.testing.assert_allclose(e.points, expected)
    np.testing.assert_allclose(e.scatter.get_offsets(), expected[:, ::-1])  # drawn as (x, y)


def test_moving_a_point_moves_only_that_point_and_redraws(image):
    e = OffsetExplorer(image)
    before_png, before_pts = e.image.value, e.points.copy()
    e.controls["point"].value = 4
    e.controls["dy"].value = 1.5
    e.controls["dx"].value = -0.5
    moved = np.abs(e.points - before_pts).sum(axis=1) > 0
    assert moved.tolist() == [k == 4 for k in range(9)]
    np.testing.assert_allclose(e.points[4], before_pts[4] + [1.5, -0.5])
    np.testing.assert_allclose(e.scatter.get_offsets()[4], e.points[4, ::-1])
    assert e.image.value != before_png and e.redraws >= 3


def test_selecting_another_point_shows_its_offsets(image):
    e = OffsetExplorer(image)
    e.set(point=2, dy=1.0, dx=2.0)
    e.controls["point"].value = 7
    assert (e.controls["dy"].value, e.controls["dx"].value) == (0.0, 0.0)
    e.controls["point"].value = 2
    assert (e.controls["dy"].value, e.controls["dx"].value) == (1.0, 2.0)
    np.testing.assert_allclose(e.offsets[2], [1.0, 2.0])


def test_global_transform_and_response(image):
    e = OffsetExplorer(image)
    e.set(scale=2.0, rotation=30.0)
    np.testing.assert_allclose(e.offsets, transform_offsets(3, scale=2.0, rotation_deg=30.0))
    # the right panel is exactly the deformable conv with those offsets at every location
    h, w = image.shape
    field = np.broadcast_to(e.offsets.reshape(-1)[None, :, None, None], (1, 18, h, w))
    from dcn_lessons.widgets.tour import KERNELS

    want = deform_conv2d(image[None, None], np.ascontiguousarray(field), KERNELS[e.controls["kernel"].value].reshape(1, 1, 3, 3), padding=1)[0, 0]
    np.testing.assert_allclose(e.response, want)
    np.testing.assert_allclose(e.resp_image.get_array(), want)


def test_set_rejects_unknown_controls(image):
    e = OffsetExplorer(image)
    with pytest.raises(ValueError, match="unknown control"):
        e.set(zoom=2)


def test_rejects_colour_images():
    with pytest.raises(ValueError, match="image: expected a grayscale"):
        OffsetExplorer(np.zeros((8, 8, 3)))
