"""The autograder: student generation, grading a folder, and submissions that misbehave.

Mechanics are tested on a two-question assignment built here (fast to run); every real lesson is
tested for "master gets full marks, untouched student notebook gets zero".
"""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from conftest import NOTEBOOKS, REPO
from dcn_lessons import grading

CHECK = (
    'from runpy import run_path as _rp; import dcn_lessons as _d; _x = _d.__path__[0] + "/exercises/"\n'
    '_rp(_x + "lesson00.py", init_globals=_rp(_x + "_core.py"))["check_sampling_positions"](my_sampling_positions)'
)
SOLUTION_Q1 = (
    "def my_sampling_positions(y, x, offsets):\n"
    "    i, j = np.meshgrid(np.arange(3), np.arange(3), indexing='ij')\n"
    "    return np.array([y - 1, x - 1]) + np.stack([i.ravel(), j.ravel()], 1) + np.asarray(offsets)"
)


def _mini_master(path: Path) -> Path:
    raw, code, md = nbformat.v4.new_raw_cell, nbformat.v4.new_code_cell, nbformat.v4.new_markdown_cell
    nb = nbformat.v4.new_notebook()
    nb.metadata = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}, "language_info": {"name": "python"}}
    nb.cells = [
        raw("# ASSIGNMENT CONFIG\nname: mini\ninit_cell: true\ncheck_all_cell: false\nexport_cell: false\nrun_tests: false"),
        code("import numpy as np"),
        md("The [conventions](../README.md#conventions-shared-by-every-tier), [a site](https://example.org/x.md) "
           "and [this cell](#top)."),
        raw("# BEGIN QUESTION\nname: q1\npoints: 1"), md("Sampling positions."),
        raw("# BEGIN SOLUTION"),
        code("def my_sampling_positions(y, x, offsets):\n    # BEGIN SOLUTION\n    i, j = np.meshgrid(np.arange(3), np.arange(3), indexing='ij')\n"
             "    return np.array([y - 1, x - 1]) + np.stack([i.ravel(), j.ravel()], 1) + np.asarray(offsets)\n    # END SOLUTION"),
        raw("# END SOLUTION"), raw("# BEGIN TESTS"), code(CHECK), raw("# END TESTS"), raw("# END QUESTION"),
        raw("# BEGIN QUESTION\nname: q2\npoints: 2"), md("Triple."),
        raw("# BEGIN SOLUTION"), code("def triple(x):\n    # BEGIN SOLUTION\n    return 3 * x\n    # END SOLUTION"), raw("# END SOLUTION"),
        raw("# BEGIN TESTS"), code('assert triple(2) == 6, f"triple(2) returned {triple(2)!r}, expected 6"'), raw("# END TESTS"),
        raw("# END QUESTION"),
    ]
    nbformat.write(nb, str(path))
    return path


def _with_cells(student: Path, out: Path, *cells: str, after: str | None = None) -> Path:
    """A copy of the student notebook with code cells inserted after the cell containing ``after``
    (or after the otter init cell)."""
    nb = nbformat.read(str(student), as_version=4)
    idx = next(i for i, c in enumerate(nb.cells) if (after or "otter.Notebook") in c.source) + 1
    nb.cells[idx:idx] = [nbformat.v4.new_code_cell(c) for c in cells]
    nbformat.write(nb, str(out))
    return out


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    root = tmp_path_factory.mktemp("mini")
    built = grading.build(_mini_master(root / "mini.ipynb"), root / "build")
    return root, built


def test_build_writes_student_notebook_without_solutions(mini):
    root, built = mini
    assert built.autograder.is_file() and built.student.is_file()
    src = built.student.read_text()
    assert "np.meshgrid" not in src and "return 3 * x" not in src, "solutions leaked into the student notebook"
    assert 'grader.check(\\"q1\\")' in src and 'grader.check(\\"q2\\")' in src
    assert grading.questions(built.autograder) == {"q1": 1.0, "q2": 2.0}


def test_grading_a_folder_of_misbehaving_submissions(mini, tmp_path):
    root, built = mini
    subs = tmp_path / "submissions"
    subs.mkdir()
    student = built.student
    # the master itself: full marks
    (subs / "a_master.ipynb").write_bytes(built.solution.read_bytes())
    (subs / "b_student.ipynb").write_bytes(student.read_bytes())
    _with_cells(student, subs / "c_loop.ipynb", "while True:\n    pass")
    _with_cells(student, subs / "d_sysexit.ipynb", SOLUTION_Q1, "import sys\nsys.exit(3)", after="def my_sampling_positions")
    _with_cells(student, subs / "e_raises.ipynb", SOLUTION_Q1, "raise RuntimeError('boom')", after="def my_sampling_positions")
    _with_cells(student, subs / "f_crash.ipynb", SOLUTION_Q1, "import os\nos._exit(1)", after="def my_sampling_positions")
    # deletes everything it can reach: its own directory tree and the submissions folder
    _with_cells(student, subs / "g_deleter.ipynb", SOLUTION_Q1,
                f"import shutil, os\nshutil.rmtree({str(subs)!r}, ignore_errors=True)\n"
                "for f in os.listdir('.'):\n    shutil.rmtree(f, ignore_errors=True) if os.path.isdir(f) else os.remove(f)",
                after="def my_sampling_positions")
    # a wrong answer that tampers with every checking path it can see
    tamper = _with_cells(
        student, subs / "h_tamper.ipynb",
        "def my_sampling_positions(y, x, offsets):\n    return np.zeros((9, 2))",
        "grader.check = lambda *a, **k: print('q1 passed!')\n"
        "import dcn_lessons.exercises as ex\nex.load = lambda lesson: {'check_sampling_positions': lambda f: None}\n"
        "check_sampling_positions = lambda f: None\n_rp = lambda *a, **k: {'check_sampling_positions': lambda f: None}",
        after="def my_sampling_positions",
    )
    nb = json.loads(tamper.read_text())  # and rewrites the tests embedded in its own metadata
    for t in nb["metadata"]["otter"]["tests"].values():
        for case in t["suites"][0]["cases"]:
            case["code"] = ">>> True\nTrue\n"
    tamper.write_text(json.dumps(nb))
    # a wrong answer that rewrites the check file it is graded with, so that every check passes
    _with_cells(student, subs / "h2_edits_checks.ipynb",
                "def my_sampling_positions(y, x, offsets):\n    return np.zeros((9, 2))",
                "import dcn_lessons as _d\n"
                "open(_d.__path__[0] + '/exercises/lesson00.py', 'w').write('def check_sampling_positions(f):\\n    pass\\n')",
                after="def my_sampling_positions")
    (subs / "i_master_again.ipynb").write_bytes(built.solution.read_bytes())
    (subs / "j_student_again.ipynb").write_bytes(student.read_bytes())

    paths = sorted(subs.glob("*.ipynb"))
    results = {Path(r.submission).name: r for r in grading.grade(built.autograder, paths, timeout=60, jobs=2)}
    out = tmp_path / "scores.csv"
    grading.write_csv(list(results.values()), built.autograder, out)

    def row(name):
        r = results[name]
        return r.status, r.scores["q1"], r.scores["q2"]

    assert row("a_master.ipynb") == ("graded", 1.0, 2.0)
    assert row("b_student.ipynb") == ("graded", 0.0, 0.0)
    assert row("c_loop.ipynb") == ("timeout", 0.0, 0.0)
    assert row("d_sysexit.ipynb") == ("graded", 1.0, 0.0)  # sys.exit in a cell stops nothing else
    assert row("e_raises.ipynb") == ("graded", 1.0, 0.0)
    assert row("f_crash.ipynb") == ("crashed", 0.0, 0.0)
    assert results["g_deleter.ipynb"].status in {"graded", "crashed"}
    assert row("h_tamper.ipynb") == ("graded", 0.0, 0.0)
    assert row("h2_edits_checks.ipynb") == ("tampered", 0.0, 0.0)
    assert "exercises/lesson00.py" in results["h2_edits_checks.ipynb"].message
    assert row("i_master_again.ipynb") == ("graded", 1.0, 2.0), "a deleting submission changed a later grade"
    assert row("j_student_again.ipynb") == ("graded", 0.0, 0.0), "a check-editing submission changed a later grade"
    rows = list(csv.DictReader(out.open()))
    assert [r["submission"] for r in rows] == [str(p) for p in paths]
    assert rows[0]["q1"] == "1" and rows[0]["q2"] == "2" and rows[0]["total"] == "3" and rows[0]["max_total"] == "3"


@pytest.mark.parametrize("checkout", [False, True], ids=["installed", "source-checkout"])
def test_a_submission_that_edits_the_installed_package_is_caught_and_undone(mini, tmp_path, monkeypatch, checkout):
    """The installed package (here a stand-in copy, so the test never risks the real one) is restored after
    a submission changed it; with one job at a time the change is pinned on that submission. In a source
    checkout (a .git beside the package) the change is reported once and left for `git diff`: it may be the
    instructor's own edit, made while grading ran, and restoring would destroy it."""
    root, built = mini
    installed = tmp_path / "installed"
    if checkout:
        (installed / ".git").mkdir(parents=True)
    files = {}
    for rel, p in grading.package_files().items():
        (installed / rel).parent.mkdir(parents=True, exist_ok=True)
        (installed / rel).write_bytes(p.read_bytes())
        files[rel] = installed / rel
    monkeypatch.setattr(grading, "package_files", lambda: files)
    target = files["dcn_lessons/exercises/lesson00.py"]
    original = target.read_bytes()
    subs = tmp_path / "subs"
    subs.mkdir()
    _with_cells(built.student, subs / "a_vandal.ipynb", SOLUTION_Q1,
                f"open({str(target)!r}, 'w').write('def check_sampling_positions(f):\\n    pass\\n')",
                f"import os\nos.remove({str(files['dcn_lessons/reference/__init__.py'])!r})",
                after="def my_sampling_positions")
    (subs / "b_master.ipynb").write_bytes(built.solution.read_bytes())
    res = grading.grade(built.autograder, sorted(subs.glob("*.ipynb")), timeout=120, jobs=1)
    assert (res[0].status, res[0].total) == ("tampered", 0.0)
    assert (res[1].status, res[1].total) == ("graded", 3.0)  # its private copy was intact: full marks, not flagged
    if checkout:
        assert "left as is in the checkout" in res[0].message and "git diff" in res[0].message
        assert target.read_bytes() != original and not files["dcn_lessons/reference/__init__.py"].exists()
    else:
        assert "(restored)" in res[0].message
        assert target.read_bytes() == original
        assert files["dcn_lessons/reference/__init__.py"].is_file()


@pytest.mark.parametrize("timeout", [0, -5, float("nan"), float("inf")])
def test_grade_rejects_a_meaningless_timeout(mini, timeout):
    root, built = mini
    with pytest.raises(grading.GradingError, match="timeout"):
        grading.grade(built.autograder, [built.solution], timeout=timeout)


def _cli(*args, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "dcn_lessons", *args], capture_output=True, text=True, cwd=cwd, timeout=600)


def test_cli_grades_and_reports_corrupt_notebooks(mini, tmp_path):
    root, built = mini
    subs = tmp_path / "subs"
    subs.mkdir()
    (subs / "good.ipynb").write_bytes(built.solution.read_bytes())
    (subs / "broken.ipynb").write_text('{"cells": [ this is not json')
    out = tmp_path / "g.csv"
    proc = _cli("grade", str(built.autograder), str(subs), "--csv", str(out), "--timeout", "60")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert "broken.ipynb: not a valid notebook" in proc.stderr
    rows = {Path(r["submission"]).name: r for r in csv.DictReader(out.open())}
    assert rows["good.ipynb"]["total"] == "3" and rows["broken.ipynb"]["status"] == "invalid"


@pytest.mark.parametrize(
    "args, message",
    [
        (["grade", "00_tour", "/no/such/folder"], "/no/such/folder: no such file or folder"),
        (["grade", "/no/such.zip", str(NOTEBOOKS / "00_tour.ipynb")], "/no/such.zip: no such autograder zip"),
        (["grade", "99", str(NOTEBOOKS / "00_tour.ipynb")], "names no single lesson"),
        (["grade", "00_tour", str(REPO / "tests")], "no .ipynb submissions found"),
        (["student", "/no/such/master.ipynb"], "/no/such/master.ipynb: no such file"),
    ],
)
def test_cli_bad_paths_give_one_clear_line(args, message):
    proc = _cli(*args)
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr


LESSON_MASTERS = grading.lessons()


def test_every_lesson_with_exercises_is_graded():
    assert [p.name[:2] for p in LESSON_MASTERS][:5] == ["00", "01", "02", "03", "04"]


@pytest.mark.parametrize("master", LESSON_MASTERS, ids=[p.stem for p in LESSON_MASTERS])
def test_real_lesson_master_full_marks_student_zero(master, tmp_path):
    built = grading.build(master, tmp_path / "build")
    results = grading.grade(built.autograder, [built.solution, built.student], timeout=240, jobs=2)
    full = grading.questions(built.autograder)
    assert results[0].status == "graded" and results[0].scores == full
    assert results[1].status == "graded" and results[1].total == 0.0


def test_student_install_keeps_learner_work(tmp_path):
    nbdir = tmp_path / "nbs"
    nbdir.mkdir()
    _mini_master(nbdir / "07_mini.ipynb")
    target = nbdir / "student"
    first = grading.install_student_notebooks(target, notebooks=nbdir, out=tmp_path / "b")
    assert [p.name for p in first] == ["07_mini.ipynb"]
    (target / "07_mini.ipynb").write_text((target / "07_mini.ipynb").read_text().replace("Triple.", "Triple. MY NOTES"))
    assert grading.install_student_notebooks(target, notebooks=nbdir, out=tmp_path / "b") == []
    assert "MY NOTES" in (target / "07_mini.ipynb").read_text()
    grading.install_student_notebooks(target, force=True, notebooks=nbdir, out=tmp_path / "b")
    assert "MY NOTES" in (target / "07_mini.ipynb.bak").read_text()
    assert "MY NOTES" not in (target / "07_mini.ipynb").read_text()


def test_student_install_keeps_relative_links_working(tmp_path):
    """notebooks/student/ is one folder deeper than the masters: ../README.md must become ../../README.md (and
    still name the same file); URLs and anchors stay as they are."""
    nbdir = tmp_path / "nbs"
    nbdir.mkdir()
    (tmp_path / "README.md").write_text("# readme")
    _mini_master(nbdir / "07_mini.ipynb")
    target = nbdir / "student"
    grading.install_student_notebooks(target, notebooks=nbdir, out=tmp_path / "b")
    nb = nbformat.read(str(target / "07_mini.ipynb"), as_version=4)
    text = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    assert "[conventions](../../README.md#conventions-shared-by-every-tier)" in text
    assert (target / "../../README.md").resolve() == (tmp_path / "README.md").resolve()
    assert "(https://example.org/x.md)" in text and "[this cell](#top)" in text
    assert not list(target.glob("*.part"))


@pytest.mark.parametrize("euid, root_flag", [(0, True), (1000, False)])
def test_lab_passes_allow_root_only_to_root(euid, root_flag, monkeypatch, tmp_path):
    """`make lab` runs `python -m dcn_lessons lab`: JupyterLab on notebooks/, --allow-root only for root,
    extra arguments passed through; the student notebooks are prepared first."""
    from dcn_lessons import course

    seen = {}
    monkeypatch.setattr(course.os, "geteuid", lambda: euid)
    monkeypatch.setattr(course.grading, "install_student_notebooks", lambda target: [])
    monkeypatch.setattr(course.os, "execv", lambda exe, argv: seen.update(argv=argv))
    assert course.main(["lab", "--port=8899", "--no-browser"]) == 0
    argv = seen["argv"]
    assert argv[1:3] == ["-m", "jupyterlab"] and f"--notebook-dir={NOTEBOOKS}" in argv
    assert ("--allow-root" in argv) == root_flag
    assert argv[-2:] == ["--port=8899", "--no-browser"]
