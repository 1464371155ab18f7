"""Checks for lesson 00 (tour). Globals of ``_core.py`` are injected by the loader."""
import numpy as np  # noqa: F401


def check_sampling_positions(fn):
    """q1: ``fn(y, x, offsets)`` returns the 9 sampling positions p0 + p_k + Δp_k of a 3x3 kernel
    with stride 1, padding 1, dilation 1 (DCNv1 Eq. 2), as a [9, 2] array of (row, column)."""
    from dcn_lessons.geometry import sampling_positions

    rng = np.random.default_rng(0)
    cases = [
        (5, 7, np.zeros((9, 2)), "with zero offsets the points are the regular grid R around (y, x)"),
        (0, 0, np.zeros((9, 2)), "padding 1 puts the top-left point at (y - 1, x - 1)"),
        (3, 2, rng.normal(size=(9, 2)), "add the offsets: row k of `offsets` is (Δy, Δx) of kernel point k"),
        (4, 9, np.tile([[0.5, -1.5]], (9, 1)), "Δy moves along rows (first column), Δx along columns"),
    ]
    for y, x, off, hint in cases:
        got = call(fn, y, x, off.copy(), what="sampling_positions")
        expect_close(got, sampling_positions(y, x, off), what=f"sampling_positions({y}, {x}, offsets)", hint=hint)
