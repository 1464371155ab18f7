"""Checks for lesson 00 (tour). Globals of ``_core.py`` are injected by the loader (see ``Question`` there).

* q1 :func:`check_sampling_positions` -- the nine sampling positions ``p0 + p_k + Δp_k`` of a 3x3 kernel
  (DCNv1 Eq. 2), stride 1, padding 1, dilation 1.

The reference is the package's :func:`dcn_lessons.geometry.sampling_positions`; a wrong answer is compared with
the typical mistakes (padding forgotten, (x, y) order, column-major kernel points, (Δx, Δy) offsets) so that the
message can say which one it was, pointing to the lesson's text rather than printing the answer. The check names
the package functions that compute the same positions (``unavailable``): a graded second run without them tells
an answer that computes from one that only calls them.
"""
import numpy as np  # noqa: F401

SEED = 0

#: Where the lesson states the rule the check is about (named in every hint).
_WHERE = "re-read §1 of the lesson (Eq. 2 and the grid R)"


def _sampling_cases(seed):
    """Four cases, one idea each. The learner's check (``seed == SEED``) uses the documented positions; a grading
    seed moves them and draws new offsets."""
    rng = np.random.default_rng(seed)
    moved = seed != SEED
    y, x = (int(v) for v in rng.integers(2, 12, 2)) if moved else (5, 7)
    y2, x2 = (int(v) for v in rng.integers(1, 12, 2)) if moved else (3, 2)
    y3, x3 = (int(v) for v in rng.integers(1, 12, 2)) if moved else (4, 9)
    shift = np.round(rng.uniform(-2, 2, 2), 2) if moved else np.array([0.5, -1.5])
    if abs(shift[0] - shift[1]) < 0.1:  # equal components would hide a (Δx, Δy) mix-up
        shift[1] = shift[0] - 1.0
    cases = [
        (y, x, np.zeros((9, 2)), "with zero offsets the points are the regular grid R around (y, x)"),
        (0, 0, np.zeros((9, 2)), "which kernel point sits at the top-left, and where does padding 1 put it?"),
        (y2, x2, rng.normal(size=(9, 2)), "add the offsets: row k of `offsets` is (Δy, Δx) of kernel point k"),
        (y3, x3, np.tile(shift[None], (9, 1)), "Δy moves along rows (first column), Δx along columns"),
    ]
    return [{"args": [y, x, off], "call": "my_sampling_positions",
             "what": f"my_sampling_positions({y}, {x}, offsets)", "hint": hint} for y, x, off, hint in cases]


def _reference(y, x, off):
    from dcn_lessons.geometry import sampling_positions

    return sampling_positions(y, x, off)


def _mistakes(y, x, off):
    """(name, positions) of the typical wrong answers, each with the hint that explains it."""
    i, j = np.meshgrid(np.arange(3), np.arange(3), indexing="ij")
    row_major = np.stack([i.ravel(), j.ravel()], axis=1).astype(float)
    col_major = row_major[:, ::-1]
    off = np.asarray(off, dtype=float)
    return [
        ("the points shifted by one row and one column: the kernel is centred on (y, x), so with padding 1 its "
         "top-left point is not (y, x) itself", np.array([y, x]) + row_major + off),
        ("each row is (column, row): return (row, column) = (y, x) pairs", (np.array([y - 1, x - 1]) + row_major + off)[:, ::-1]),
        ("the kernel points in column-major order: k runs along a kernel row first (row-major)",
         np.array([y - 1, x - 1]) + col_major + off),
        ("the offsets read as (Δx, Δy): row k of `offsets` is (Δy, Δx)", np.array([y - 1, x - 1]) + row_major + off[:, ::-1]),
        ("the offsets subtracted: the sample sits at p0 + p_k + Δp_k", np.array([y - 1, x - 1]) + row_major - off),
        ("the offsets left out", np.array([y - 1, x - 1]) + row_major),
    ]


def _sampling_verify(case, got):
    y, x, off = case["args"]
    what, hint = case["what"], case["hint"]
    want = _reference(y, x, off)
    arr = expect_shape(got, want.shape, what + " (one (row, column) per kernel point)")
    if np.allclose(arr, want, atol=1e-8, rtol=1e-6):
        return
    found = _first_match(arr, [(name, v) for name, v in _mistakes(y, x, off)
                               if not np.allclose(v, want, atol=1e-8, rtol=1e-6)])
    if found is not None:
        raise ExerciseError(f"{what}: your points look like {found}.\nHint: {_WHERE}")
    expect_close(arr, want, what=what, hint=f"{hint} ({_WHERE})")


#: q1: ``fn(y, x, offsets)`` returns the 9 sampling positions p0 + p_k + Δp_k of a 3x3 kernel with stride 1,
#: padding 1, dilation 1 (DCNv1 Eq. 2), as a [9, 2] array of (row, column).
check_sampling_positions = Question(
    _sampling_cases, _sampling_verify, seed=SEED,
    unavailable=("dcn_lessons.geometry:sampling_positions", "dcn_lessons.geometry:kernel_grid",
                 "dcn_lessons.reference.deform_conv:deform_sampling_positions",
                 "dcn_lessons.ops._primitives:sampling_positions"),
)
