"""Lesson 00's check: silent on a correct answer, a teaching message on the typical wrong ones, no answer printed,
and an answer that only calls the package fails once the package's own implementation is unavailable.

Also the helpers the tests of lessons 00-04 share (imported by ``test_exercises_lesson01.py`` ... ``04``):
:func:`solution_lines` reads the solution of an exercise from its master notebook, :func:`failure_messages`
collects what a check says on a corpus of wrong answers, and :func:`assert_gives_nothing_away` asserts that no
message contains a line of the solution (nor a formula the lesson asks the learner to write).
"""
from __future__ import annotations

import importlib
import json
import re

import numpy as np
import pytest

from conftest import NOTEBOOKS
from dcn_lessons.exercises import load
from test_exercises_lesson07 import graded_without_package

CHECKS = load("lesson00")


# ------------------------------------------------------------------------------------------ shared helpers

def _normal(text: str) -> str:
    """A line or a message with the spelling differences between code and prose taken out: no whitespace, the
    multiplication dot as ``*``, a square as ``**2``."""
    text = text.replace("·", "*").replace("²", "**2").replace("×", "*")
    return re.sub(r"\s+", "", text)


def solution_lines(notebook: str, answer: str, shortest: int = 12) -> list[str]:
    """The lines between ``# BEGIN SOLUTION`` and ``# END SOLUTION`` of the master notebook's cell that defines
    ``answer`` (comments dropped), normalised by :func:`_normal`; lines shorter than ``shortest`` characters after
    that (``return grad``, ``else:``) say nothing about the answer and are left out."""
    path = next(NOTEBOOKS.glob(f"{notebook}*.ipynb"))
    cells = [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]
    source = next("".join(c["source"]) for c in cells if f"def {answer}(" in "".join(c["source"]))
    body = source.split("# BEGIN SOLUTION", 1)[1].split("# END SOLUTION", 1)[0]
    lines = [_normal(line.split("#", 1)[0]) for line in body.splitlines()]
    found = [line for line in lines if len(line) >= shortest]
    assert found, f"{notebook}: no solution lines found for {answer}"
    return found


def failure_messages(check, answers, seeds=(0, 1, 7)) -> list[str]:
    """Every message ``check`` gives on each answer of ``answers``, for the learner's seed and grading seeds; each
    answer must fail (a corpus of wrong answers)."""
    out = []
    for answer in answers:
        for seed in seeds:
            with pytest.raises(AssertionError) as info:
                check(answer, seed=seed)
            out.append(str(info.value))
    return out


def assert_gives_nothing_away(messages, lines, formulas=()):
    """No message contains a solution line, nor one of ``formulas`` (what the exercise asks the learner to work
    out, as prose would spell it); both compared after :func:`_normal`."""
    forbidden = list(lines) + [_normal(f) for f in formulas]
    for message in messages:
        flat = _normal(message)
        for bad in forbidden:
            assert bad not in flat, f"a failure message gives the answer away ({bad!r}):\n{message}"


def unavailable_names_exist(checks, name):
    """Every ``"module:attribute"`` a check makes unavailable names an attribute the package has."""
    for spec in checks[name].unavailable:
        module, _, attr = spec.partition(":")
        assert hasattr(importlib.import_module(module), attr), spec


# ------------------------------------------------------------------------------------------ q1 answers

def positions(y, x, offsets, pad=1, xy=False, col_major=False, swap_offsets=False, sign=1.0):
    i, j = np.meshgrid(np.arange(3), np.arange(3), indexing="ij")
    grid = np.stack([j.ravel(), i.ravel()] if col_major else [i.ravel(), j.ravel()], axis=1)
    off = np.asarray(offsets, dtype=float)
    out = np.array([y - pad, x - pad]) + grid + sign * (off[:, ::-1] if swap_offsets else off)
    return out[:, ::-1] if xy else out


def test_the_unavailable_names_exist():
    unavailable_names_exist(CHECKS, "check_sampling_positions")


def test_q1_accepts_a_correct_answer(capsys):
    assert CHECKS["check_sampling_positions"](positions) is None
    for seed in (1, 2, 3):
        CHECKS["check_sampling_positions"](positions, seed=seed)
    assert capsys.readouterr().out == ""


WRONG = [
    (lambda y, x, o: positions(y, x, o, pad=0), "top-left point is not (y, x) itself"),
    (lambda y, x, o: positions(y, x, o, xy=True), "return (row, column)"),
    (lambda y, x, o: positions(y, x, o, col_major=True), "column-major order"),
    (lambda y, x, o: positions(y, x, o, swap_offsets=True), "offsets read as (Δx, Δy)"),
    (lambda y, x, o: positions(y, x, o, sign=-1.0), "offsets subtracted"),
    (lambda y, x, o: positions(y, x, np.zeros_like(o)), "offsets left out"),
    (lambda y, x, o: positions(y, x, o) + 0.25, "values are wrong"),
    (lambda y, x, o: positions(y, x, o)[:8], "expected shape [9, 2]"),
    (lambda y, x, o: None, "returned None"),
    (lambda y, x, o: ..., "not written yet"),
    (lambda y, x, o: 1 / 0, "raised ZeroDivisionError"),
]


@pytest.mark.parametrize("wrong, message", WRONG, ids=[m for _, m in WRONG])
def test_q1_names_typical_mistakes(wrong, message):
    for seed in (0, 5):
        with pytest.raises(AssertionError) as info:
            CHECKS["check_sampling_positions"](wrong, seed=seed)
        assert message in str(info.value), str(info.value)


def test_q1_points_to_the_lesson_not_to_the_answer():
    messages = failure_messages(CHECKS["check_sampling_positions"], [w for w, _ in WRONG])
    assert all("§1" in m for m in messages if "Hint" in m)
    assert_gives_nothing_away(messages, solution_lines("00_", "my_sampling_positions"),
                              formulas=["y - 1", "x - 1", "(y-1, x-1)", "meshgrid"])


def test_q1_an_answer_that_delegates_to_the_package_fails_without_it():
    def via_geometry(y, x, offsets):
        from dcn_lessons.geometry import sampling_positions

        return sampling_positions(y, x, offsets)

    def via_grid(y, x, offsets):  # the package's grid R, shifted by hand
        from dcn_lessons.geometry import kernel_grid

        return kernel_grid(3) + np.array([y - 1, x - 1]) + offsets

    def via_field(y, x, offsets):  # the reference tier's positions of a whole offset field
        from dcn_lessons.reference import deform_sampling_positions

        field = np.zeros((1, 18, y + 1, x + 1))
        field[0, :, y, x] = np.asarray(offsets, dtype=float).reshape(-1)
        py, px = deform_sampling_positions(field, 3, padding=1)
        return np.stack([py[0, 0, :, y, x], px[0, 0, :, y, x]], axis=1)

    for answer in (via_geometry, via_grid, via_field):
        assert CHECKS["check_sampling_positions"](answer) is None  # right while the package is there
        with pytest.raises(AssertionError, match="unavailable while this answer is graded"):
            graded_without_package(CHECKS, "check_sampling_positions", answer)
    graded_without_package(CHECKS, "check_sampling_positions", positions)  # the honest answer does not need it
