"""Kernel geometry helpers against hand-computed cases."""
from __future__ import annotations

import numpy as np
import pytest

from dcn_lessons import config
from dcn_lessons.data import photo
from dcn_lessons.geometry import constant_offset_field, kernel_grid, sampling_positions, transform_offsets


def test_kernel_grid_row_major_with_dilation():
    g = kernel_grid((2, 3), dilation=(2, 1))
    assert g.tolist() == [[0, 0], [0, 1], [0, 2], [2, 0], [2, 1], [2, 2]]


def test_sampling_positions_formula():
    off = np.arange(18, dtype=float).reshape(9, 2) / 10
    p = sampling_positions(4, 5, off, stride=2, padding=1, dilation=2)
    k = 5  # i=1, j=2
    assert p[k].tolist() == pytest.approx([4 * 2 - 1 + 1 * 2 + off[k, 0], 5 * 2 - 1 + 2 * 2 + off[k, 1]])
    with pytest.raises(ValueError, match=r"offsets: expected shape \[kh\*kw, 2\] = \[9, 2\]"):
        sampling_positions(0, 0, np.zeros((8, 2)))


def test_scale_two_equals_dilation_two():
    np.testing.assert_allclose(kernel_grid(3) + transform_offsets(3, scale=2.0), kernel_grid(3, dilation=2) - 1.0)


def test_rotation_by_90_degrees_maps_rows_to_columns():
    moved = kernel_grid(3) + transform_offsets(3, rotation_deg=90.0) - 1.0  # centred grid
    np.testing.assert_allclose(moved, (kernel_grid(3) - 1.0) @ np.array([[0.0, 1.0], [-1.0, 0.0]]), atol=1e-12)


def test_constant_offset_field_layout():
    off = np.stack([np.arange(9.0), 10.0 + np.arange(9.0)], axis=1)  # point k: (Δy, Δx) = (k, 10 + k), all distinct
    f = constant_offset_field(off, 2, 3, 4)
    assert f.shape == (2, 18, 3, 4)
    for k in range(9):  # channel 2k is Δy and 2k+1 is Δx of kernel point k, at every location
        assert (f[:, 2 * k] == k).all() and (f[:, 2 * k + 1] == 10.0 + k).all(), k
    with pytest.raises(ValueError, match=r"offsets: expected shape \[K, 2\], got \[9, 3\]"):
        constant_offset_field(np.zeros((9, 3)), 1, 2, 2)


def test_photo_and_flags(monkeypatch):
    img = photo("camera", size=64)
    assert img.shape == (64, 64) and 0.0 <= img.min() and img.max() <= 1.0
    with pytest.raises(ValueError, match="name: expected one of"):
        photo("nope")
    monkeypatch.setenv("DCN_LESSONS_FAST", "maybe")
    with pytest.raises(ValueError, match="DCN_LESSONS_FAST='maybe'"):
        config._read_flag("DCN_LESSONS_FAST")
