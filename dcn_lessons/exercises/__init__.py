"""Checks for the graded exercises, one module per lesson (``lesson00.py``, ``lesson01.py``, ...).

A check takes the learner's function, runs it on small inputs, and raises
:class:`AssertionError` with a message that teaches (which shape, which index, what value was
expected and a hint), or returns ``None`` silently when everything is right. The lesson's otter
test cells call them; see :func:`load` for why they are loaded by path.

The comparison helpers live in ``_core.py``, which imports nothing from ``dcn_lessons``.
"""
from __future__ import annotations

import runpy
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def load(lesson: str) -> dict[str, Any]:
    """Load a lesson's checks fresh from their files, as the otter test cells do.

    The grader runs a submission's tests in the submission's own interpreter, after its code. The
    checks are therefore executed anew from the files on disk (``runpy.run_path``) with the
    helpers of ``_core.py`` injected as globals: a submission that redefines a check's name or
    patches this package's modules does not change what the checks compute.
    """
    path = HERE / f"{lesson}.py"
    if not path.is_file():
        raise ValueError(f"lesson: no checks named {lesson!r} (expected a file {path})")
    return runpy.run_path(str(path), init_globals=runpy.run_path(str(HERE / "_core.py")))
