"""Checks for the graded exercises, one module per lesson (``lesson00.py``, ``lesson01.py``, ...).

Each check is a :class:`~dcn_lessons.exercises._core.Question` in three steps: ``cases(seed)`` makes the inputs,
``run(fn, args)`` calls the learner's answer on one case, ``verify(case, got)`` computes the reference and
compares, raising :class:`AssertionError` with a message that teaches (which shape, which index, what value was
expected, and which typical mistake the answer looks like). Called as ``check(fn)`` it is the learner's check
(``grader.check`` in the student notebook): every step in the learner's kernel, with a fixed seed. The grader
runs the same steps apart: ``run`` in the submission's sandbox, ``cases`` and ``verify`` in a clean process, with a
seed the submission cannot know in advance (see :mod:`dcn_lessons.grading`).

The comparison helpers and the safe format in which inputs and answers travel live in ``_core.py``, which
imports nothing from ``dcn_lessons``; see :func:`load` for why the modules are loaded by path.
"""
from __future__ import annotations

import runpy
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def load(lesson: str) -> dict[str, Any]:
    """Load a lesson's checks fresh from their files, as the notebooks' test cells do.

    The checks are executed anew from the files (``runpy.run_path``) with the helpers of ``_core.py`` injected
    as globals: a learner's cell that redefines a check's name or patches this package's modules does not change
    what a check computes in a later test cell. (What a cell patches in memory can still change the learner's
    own in-kernel check; it cannot change the grade, which is computed outside the learner's process.)
    """
    path = HERE / f"{lesson}.py"
    if not path.is_file():
        raise ValueError(f"lesson: no checks named {lesson!r} (expected a file {path})")
    return runpy.run_path(str(path), init_globals=runpy.run_path(str(HERE / "_core.py")))
