"""What a lesson grades: its questions, their points, and the exercise check each one calls.

A question's test (in the master notebook, between ``# BEGIN TESTS`` and ``# END TESTS``, or in otter's
autograder zip) calls one check of :mod:`dcn_lessons.exercises` on the learner's answer, as every lesson does::

    from runpy import run_path as _rp; import dcn_lessons as _d; _x = _d.__path__[0] + "/exercises/"
    _rp(_x + "lesson01.py", init_globals=_rp(_x + "_core.py"))["check_bilinear"](my_bilinear)

The grader reads that call -- lesson module, check, answer name -- and nothing else of the test: it never runs
test code in the learner's process. A test that is not such a call cannot be graded without running it there,
so it is refused (:class:`GradingError`), as is a test that mixes such a call with other statements.
"""
from __future__ import annotations

import ast
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

from dcn_lessons.grading._base import GradingError, is_master, read_notebook

_CALL = re.compile(
    r"""_rp\(\s*_x\s*\+\s*(['"])(lesson\d+)\.py\1\s*,\s*init_globals\s*=\s*_rp\(\s*_x\s*\+\s*(['"])_core\.py\3\s*\)\s*\)"""
    r"""\s*\[\s*(['"])(check_\w+)\4\s*\]\s*\(\s*([A-Za-z_]\w*)\s*\)"""
)
#: The lines a test may hold besides its calls (the loader's preamble).
_PREAMBLE = re.compile(r"""^(?:from runpy import run_path as _rp|import dcn_lessons as _d|"""
                       r"""_x\s*=\s*_d\.__path__\[0\]\s*\+\s*(?P<q>['"])/exercises/(?P=q))$""")


@dataclass(frozen=True)
class Check:
    """One call of an exercise check: ``dcn_lessons/exercises/<lesson>.py``'s ``<check>`` on the learner's
    ``<answer>`` (a name the notebook defines)."""

    lesson: str
    check: str
    answer: str


@dataclass(frozen=True)
class QuestionSpec:
    name: str
    points: float
    checks: tuple[Check, ...]


def _checks(name: str, code: str, where: Path) -> tuple[Check, ...]:
    """The check calls of one test's code, or :class:`GradingError` when it holds anything else."""
    lines = []
    for raw in code.splitlines():
        line = raw.strip()
        if line.startswith(">>>") or line.startswith("..."):
            line = line[3:].strip()
        for part in (p.strip() for p in line.split(";")):
            if part and not part.startswith("#"):
                lines.append(part)
    found, other = [], []
    for part in lines:
        m = _CALL.fullmatch(part)
        if m:
            found.append(Check(m.group(2), m.group(5), m.group(6)))
        elif not _PREAMBLE.match(part):
            other.append(part)
    if not found or other:
        what = f"runs {other[0][:80]!r}" if other else "calls no check"
        raise GradingError(f"{where}: question {name}: its test {what}; the grader grades only calls of "
                           "dcn_lessons.exercises checks (see dcn_lessons/grading/spec.py)")
    return tuple(found)


def _points(value, where: Path, name: str) -> float:
    if value is None:
        return 1.0
    if isinstance(value, (list, tuple)):
        return float(sum(_points(v, where, name) for v in value))
    try:
        return float(value)
    except (TypeError, ValueError):
        raise GradingError(f"{where}: question {name}: points {value!r} is not a number") from None


def _from_master(path: Path) -> dict[str, QuestionSpec]:
    import yaml

    nb = read_notebook(path)
    if not is_master(nb):
        raise GradingError(f"{path}: has no exercises (no raw '# ASSIGNMENT CONFIG' cell)")
    out: dict[str, QuestionSpec] = {}
    current, in_tests, tests = None, False, []
    for cell in nb.cells:
        src = cell.source.strip()
        if cell.cell_type == "raw" and src.startswith("# BEGIN QUESTION"):
            try:
                current = yaml.safe_load(src[len("# BEGIN QUESTION"):]) or {}
            except yaml.YAMLError as e:
                raise GradingError(f"{path}: a BEGIN QUESTION cell is not YAML ({e})") from None
            tests = []
        elif cell.cell_type == "raw" and src.startswith("# BEGIN TESTS"):
            in_tests = True
        elif cell.cell_type == "raw" and src.startswith("# END TESTS"):
            in_tests = False
        elif cell.cell_type == "raw" and src.startswith("# END QUESTION") and current is not None:
            name = str(current.get("name", ""))
            if not name:
                raise GradingError(f"{path}: a question has no name")
            checks = tuple(c for code in tests for c in _checks(name, code, path))
            out[name] = QuestionSpec(name, _points(current.get("points"), path, name), checks)
            current = None
        elif in_tests and cell.cell_type == "code":
            tests.append(cell.source)
    return out


def _from_zip(path: Path) -> dict[str, QuestionSpec]:
    out: dict[str, QuestionSpec] = {}
    try:
        with zipfile.ZipFile(path) as z:
            for n in sorted(n for n in z.namelist() if n.startswith("tests/") and n.endswith(".py")):
                tree = ast.parse(z.read(n).decode())
                test = next(ast.literal_eval(node.value) for node in tree.body if isinstance(node, ast.Assign)
                            and any(getattr(t, "id", "") == "test" for t in node.targets))
                name = str(test["name"])
                code = "\n".join(case["code"] for suite in test.get("suites", []) for case in suite.get("cases", []))
                out[name] = QuestionSpec(name, _points(test.get("points"), path, name), _checks(name, code, path))
    except (OSError, zipfile.BadZipFile, KeyError, SyntaxError, ValueError, StopIteration, UnicodeDecodeError) as e:
        raise GradingError(f"{path}: not an otter autograder zip ({type(e).__name__}: {e})") from None
    return out


def questions(source: Path) -> dict[str, QuestionSpec]:
    """The questions of a master notebook (``.ipynb``) or an otter autograder zip (``.zip``), in order."""
    source = Path(source)
    if not source.is_file():
        raise GradingError(f"{source}: no such file")
    found = _from_zip(source) if source.suffix == ".zip" else _from_master(source)
    if not found:
        raise GradingError(f"{source}: holds no questions")
    return found
