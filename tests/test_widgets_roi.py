"""Lesson 04's explorer, headless: move controls, assert on what is drawn."""
from __future__ import annotations

import numpy as np
import pytest

from dcn_lessons.reference import deform_roi_pool, roi_align
from dcn_lessons.widgets.roi import RoIExplorer


@pytest.fixture(scope="module")
def image():
    rng = np.random.default_rng(0)
    return rng.random((30, 40))


def _explorer(image, **kw):
    return RoIExplorer(image, k=3, box=(8.0, 5.0, 18.0, 12.0), sampling_ratio=2, **kw)


def test_starts_without_offsets_and_renders(image):
    e = _explorer(image)
    assert e.redraws == 1 and e.image.value[:8] == b"\x89PNG\r\n\x1a\n"
    np.testing.assert_allclose(e.roi, [[0.0, 8.0, 5.0, 26.0, 17.0]])
    np.testing.assert_allclose(e.offset, 0.0)
    np.testing.assert_allclose(e.pooled, e.plain)
    np.testing.assert_allclose(e.plain, roi_align(image[None, None], e.roi, 3, sampling_ratio=2)[0, 0])
    # aligned rule: bin (0, 0), sample (0, 0) at (y1 - 0.5 + (h/3)/4, x1 - 0.5 + (w/3)/4)
    np.testing.assert_allclose(e.samples[0, 0, 0], [5.0 - 0.5 + 1.0, 8.0 - 0.5 + 1.5])
    assert e.samples.shape == (3, 3, 4, 2)
    np.testing.assert_allclose(e.sample_scatter.get_offsets(), e.samples.reshape(-1, 2)[:, ::-1])  # drawn (x, y)
    np.testing.assert_allclose(e.plain_image.get_array(), e.plain)


def test_offset_moves_only_the_selected_bin_by_gamma_w_h(image):
    e = _explorer(image)
    before_png, before = e.image.value, e.samples.copy()
    e.controls["bin"].value = 5  # bin (1, 2)
    e.controls["ox"].value = 0.5
    e.controls["oy"].value = -1.0
    moved = np.abs(e.samples - before).sum(axis=(2, 3)) > 0
    assert moved.tolist() == [[False] * 3, [False, False, True], [False] * 3]
    # Δp = γ · Δp̂ ∘ (w, h) = 0.1 · (0.5·18, -1.0·12) = (Δx, Δy) = (0.9, -1.2)
    np.testing.assert_allclose(e.samples[1, 2] - before[1, 2], np.tile([-1.2, 0.9], (4, 1)))
    np.testing.assert_allclose(e.shift[1, 2], [-1.2, 0.9])
    want = np.zeros((1, 2, 3, 3))
    want[0, :, 1, 2] = (0.5, -1.0)
    np.testing.assert_allclose(e.offset, want)
    np.testing.assert_allclose(e.pooled, deform_roi_pool(image[None, None], e.roi, want, 3, sampling_ratio=2)[0, 0])
    changed = ~np.isclose(e.pooled, e.plain)
    assert not changed[np.arange(9).reshape(3, 3) != 5].any()
    np.testing.assert_allclose(e.pooled_image.get_array(), e.pooled)
    assert e.image.value != before_png and e.redraws >= 4


def test_selecting_another_bin_shows_its_offset(image):
    e = _explorer(image)
    e.set(bin=2, ox=1.0, oy=-0.5)
    e.controls["bin"].value = 7
    assert (e.controls["ox"].value, e.controls["oy"].value) == (0.0, 0.0)
    e.controls["bin"].value = 2
    assert (e.controls["ox"].value, e.controls["oy"].value) == (1.0, -0.5)
    np.testing.assert_allclose(e.offset[0, :, 0, 2], [1.0, -0.5])
    np.testing.assert_allclose(e.offset[0, :, 2, 1], [0.0, 0.0])


def test_shift_is_invariant_in_bin_widths_and_follows_gamma(image):
    e = _explorer(image)
    e.set(bin=0, ox=1.0, oy=0.5)
    small = e.shift[0, 0].copy()
    e.set(w=36.0, h=24.0)  # twice the size: twice the pixels, the same fraction of a bin
    np.testing.assert_allclose(e.shift[0, 0], 2 * small)
    np.testing.assert_allclose(e.shift[0, 0] / [24.0 / 3, 36.0 / 3], [0.1 * 3 * 0.5, 0.1 * 3 * 1.0])
    e.set(gamma=0.2)
    np.testing.assert_allclose(e.shift[0, 0], 4 * small)
    e.set(gamma=0.0)
    np.testing.assert_allclose(e.pooled, e.plain)


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match="image: expected a grayscale"):
        RoIExplorer(np.zeros((8, 8, 3)))
    with pytest.raises(ValueError, match="k: expected an int >= 1"):
        RoIExplorer(np.zeros((8, 8)), k=0)
    with pytest.raises(ValueError, match="sampling_ratio: expected an int >= 1, got 0"):
        RoIExplorer(np.zeros((8, 8)), sampling_ratio=0)
