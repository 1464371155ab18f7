"""Lesson 03's explorer, headless: move controls, assert on the mask, the points and the panels drawn."""
from __future__ import annotations

import numpy as np
import pytest

from dcn_lessons.reference import deform_conv2d
from dcn_lessons.widgets.modulation import ModulationExplorer
from dcn_lessons.widgets.tour import KERNELS


@pytest.fixture(scope="module")
def image():
    return np.random.default_rng(0).random((16, 14))


def _want_response(e, image):
    h, w = image.shape
    field = np.broadcast_to(e.offsets.reshape(-1)[None, :, None, None], (1, 18, h, w))
    mask = np.broadcast_to(e.amplitudes[None, :, None, None], (1, 9, h, w))
    weight = KERNELS[e.controls["kernel"].value].reshape(1, 1, 3, 3)
    return deform_conv2d(image[None, None], np.ascontiguousarray(field), weight, padding=1,
                         mask=np.ascontiguousarray(mask))[0, 0]


def test_starts_with_the_given_amplitude_everywhere(image):
    e = ModulationExplorer(image, amplitude=0.5)
    assert e.redraws == 1 and e.image.value[:8] == b"\x89PNG\r\n\x1a\n"
    np.testing.assert_allclose(e.amplitudes, 0.5)
    assert e.controls["amplitude"].value == 0.5
    # a fresh DCNv2 layer: zero offsets, Δm = 0.5 -> half the plain deformable (DCNv1) response
    plain = ModulationExplorer(image, amplitude=1.0)
    np.testing.assert_allclose(e.response, 0.5 * plain.response)


def test_amplitude_changes_only_the_selected_point(image):
    e = ModulationExplorer(image)
    before = e.image.value
    e.controls["point"].value = 5
    e.controls["amplitude"].value = 0.25
    assert e.amplitudes.tolist() == [1.0] * 5 + [0.25] + [1.0] * 3
    np.testing.assert_allclose(e.sizes[5] / e.sizes[0], 0.25)  # drawn as marker area
    np.testing.assert_allclose(e.scatter.get_sizes(), e.sizes)
    w = KERNELS[e.controls["kernel"].value]
    np.testing.assert_allclose(e.effective, w * e.amplitudes.reshape(3, 3))
    np.testing.assert_allclose(e.weight_image.get_array(), e.effective)
    np.testing.assert_allclose(e.response, _want_response(e, image))
    np.testing.assert_allclose(e.resp_image.get_array(), e.response)
    assert e.image.value != before


def test_selecting_a_point_shows_its_amplitude_and_offsets(image):
    e = ModulationExplorer(image)
    e.set(point=2, dy=1.0, dx=-2.0, amplitude=0.0)
    e.controls["point"].value = 7
    assert e.controls["amplitude"].value == 1.0
    assert (e.controls["dy"].value, e.controls["dx"].value) == (0.0, 0.0)
    e.controls["point"].value = 2
    assert e.controls["amplitude"].value == 0.0
    assert (e.controls["dy"].value, e.controls["dx"].value) == (1.0, -2.0)
    # selecting points never changed a stored amplitude
    assert e.amplitudes.tolist() == [1.0, 1.0, 0.0] + [1.0] * 6
    np.testing.assert_allclose(e.response, _want_response(e, image))


def test_switching_every_sample_off_silences_the_layer(image):
    e = ModulationExplorer(image)
    for k in range(9):
        e.set(point=k, amplitude=0.0)
    assert np.all(e.amplitudes == 0.0)
    assert np.all(e.response == 0.0) and np.all(e.effective == 0.0)


def test_switching_off_the_only_nonzero_weights_of_a_row_matches_a_smaller_kernel(image):
    # horizontal-edge kernel: switching off the bottom row leaves only the top row's contribution
    e = ModulationExplorer(image)
    for k in (6, 7, 8):
        e.set(point=k, amplitude=0.0)
    w = KERNELS[e.controls["kernel"].value].copy()
    w[2] = 0.0
    want = deform_conv2d(image[None, None], np.zeros((1, 18, *image.shape)), w.reshape(1, 1, 3, 3), padding=1)[0, 0]
    np.testing.assert_allclose(e.response, want)


def test_rejects_amplitudes_outside_zero_one(image):
    with pytest.raises(ValueError, match=r"amplitude: expected a modulation scalar in \[0, 1\]"):
        ModulationExplorer(image, amplitude=1.5)
