"""Student notebooks and grading.

* :mod:`.student` -- ``otter assign`` turns each master notebook into a student notebook (and an autograder zip);
  :func:`assign_lesson`, :func:`install_student_notebooks`.
* :mod:`.pipeline` -- :func:`grade` a folder of submissions: each one runs in its own sandbox (:mod:`.sandbox`,
  bubblewrap), its answers are collected there by :mod:`.driver` and judged by a clean process
  (:mod:`.verdict`) that never runs learner code, with the checks of a snapshot of the package
  (:mod:`.snapshot`); :func:`write_csv`.
* :mod:`.spec` -- which check each question of a lesson calls.

The names below are imported on first use, so that the sandboxed processes, which import
``dcn_lessons.grading.driver`` or ``.verdict``, load only what they need.
"""
from __future__ import annotations

import importlib

from dcn_lessons.grading._base import GradingError, is_master, read_notebook

_WHERE = {
    "Built": "student", "assign_lesson": "student", "install_student_notebooks": "student", "lessons": "student",
    "relink": "student", "default_notebooks": "student", "default_build": "student", "find_lesson": "student",
    "Result": "pipeline", "STATUSES": "pipeline", "grade": "pipeline", "write_csv": "pipeline",
    "Check": "spec", "QuestionSpec": "spec", "questions": "spec",
    "Limits": "sandbox", "NO_SANDBOX_WARNING": "sandbox", "Sandbox": "sandbox",
    "Snapshot": "snapshot", "take_snapshot": "snapshot",
}
__all__ = ["GradingError", "is_master", "read_notebook", *_WHERE]


def __getattr__(name: str):
    if name in _WHERE:
        value = getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
