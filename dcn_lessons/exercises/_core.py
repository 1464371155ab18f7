"""Comparison helpers for exercise checks: failures say what is wrong, not just that it is.

Self-contained on purpose (NumPy only): the grader injects this file's globals into a lesson's
check module, fresh, so nothing a submission patches elsewhere changes these helpers.
"""
import numpy as np


class ExerciseError(AssertionError):
    """A check failed; the message says what was expected and what was found."""


def _np(x, what):
    try:
        import torch  # noqa: F401  (tensors are accepted too)

        if hasattr(x, "detach"):
            x = x.detach().cpu().numpy()
    except ImportError:
        pass
    if x is None:
        raise ExerciseError(f"{what}: your function returned None -- did you forget `return`?")
    try:
        return np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ExerciseError(f"{what}: expected an array of numbers, got {type(x).__name__} ({e})") from None


def call(fn, *args, what="your function", **kwargs):
    """Call the learner's function; turn a crash or a placeholder into a readable failure."""
    if not callable(fn):
        raise ExerciseError(f"{what}: expected a function, got {type(fn).__name__}")
    try:
        out = fn(*args, **kwargs)
    except NotImplementedError:
        raise ExerciseError(f"{what}: not written yet (it raised NotImplementedError)") from None
    except Exception as e:  # the learner's bug, reported in one line
        raise ExerciseError(f"{what} raised {type(e).__name__}: {e}") from None
    if out is Ellipsis:
        raise ExerciseError(f"{what}: not written yet (it returned ...)")
    return out


def expect_shape(got, shape, what="result"):
    """Fail unless ``got`` has exactly ``shape``."""
    arr = _np(got, what)
    if tuple(arr.shape) != tuple(shape):
        raise ExerciseError(f"{what}: expected shape {list(shape)}, got {list(arr.shape)}")
    return arr


def expect_close(got, want, what="result", atol=1e-8, rtol=1e-6, hint=""):
    """Fail unless ``got`` matches ``want`` elementwise; name the first wrong index and both values."""
    want = np.asarray(want, dtype=np.float64)
    arr = expect_shape(got, want.shape, what)
    bad = ~np.isclose(arr, want, atol=atol, rtol=rtol, equal_nan=False)
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        n = int(bad.sum())
        msg = (
            f"{what}: {n} of {bad.size} values are wrong; first at index {list(idx)}: "
            f"got {arr[idx]:.6g}, expected {want[idx]:.6g}"
        )
        if hint:
            msg += f"\nHint: {hint}"
        raise ExerciseError(msg)
    return arr


def _first_match(got, variants):
    """The name of the first ``(name, value)`` of ``variants`` that ``got`` equals: which typical mistake a
    wrong answer made (or None)."""
    try:
        arr = np.asarray(got, dtype=np.float64)
    except (TypeError, ValueError):
        return None
    for name, want in variants:
        want = np.asarray(want, dtype=np.float64)
        if arr.shape == want.shape and np.allclose(arr, want, atol=1e-8, rtol=1e-6):
            return name
    return None
