"""The autograder: student notebooks, the questions of a lesson, the safe format, the snapshot, and grading.

Mechanics are tested on a two-question assignment built here (cheap to run); every real lesson is graded once for
"master gets full marks, untouched student notebook gets zero". The hostile class (one submission per attack
of issue 14) is ``tests/test_grading_hostile.py``.
"""
from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import numpy as np
import pytest

from conftest import NOTEBOOKS, REPO
from dcn_lessons import grading
from dcn_lessons.exercises import load
from dcn_lessons.grading import sandbox as sandbox_mod
from dcn_lessons.grading import snapshot as snapshot_mod
from dcn_lessons.grading import spec

HAVE_BWRAP = shutil.which("bwrap") is not None
needs_bwrap = pytest.mark.skipif(not HAVE_BWRAP, reason="bubblewrap (bwrap) is not installed: apt-get install bubblewrap")

PREAMBLE = 'from runpy import run_path as _rp; import dcn_lessons as _d; _x = _d.__path__[0] + "/exercises/"\n'
CHECK_Q1 = PREAMBLE + '_rp(_x + "lesson00.py", init_globals=_rp(_x + "_core.py"))["check_sampling_positions"](my_sampling_positions)'
CHECK_Q2 = PREAMBLE + '_rp(_x + "lesson04.py", init_globals=_rp(_x + "_core.py"))["check_ps_channel"](my_ps_channel)'
SOLUTION_Q1 = (
    "def my_sampling_positions(y, x, offsets):\n"
    "    i, j = np.meshgrid(np.arange(3), np.arange(3), indexing='ij')\n"
    "    return np.array([y - 1, x - 1]) + np.stack([i.ravel(), j.ravel()], 1) + np.asarray(offsets)"
)


def _mini_master(path: Path, q2_test: str = CHECK_Q2) -> Path:
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
        raw("# END SOLUTION"), raw("# BEGIN TESTS"), code(CHECK_Q1), raw("# END TESTS"), raw("# END QUESTION"),
        raw("# BEGIN QUESTION\nname: q2\npoints: 2"), md("Position-sensitive channel."),
        raw("# BEGIN SOLUTION"),
        code("def my_ps_channel(c, i, j, k):\n    # BEGIN SOLUTION\n    return (c * k + i) * k + j\n    # END SOLUTION"),
        raw("# END SOLUTION"), raw("# BEGIN TESTS"), code(q2_test), raw("# END TESTS"), raw("# END QUESTION"),
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
    master = _mini_master(root / "mini.ipynb")
    return master, grading.assign_lesson(master, root / "build")


# ------------------------------------------------------------------------------------------ student notebooks
def test_assign_writes_student_notebook_without_solutions(mini):
    master, built = mini
    assert built.autograder.is_file() and built.student.is_file()
    src = built.student.read_text()
    assert "np.meshgrid" not in src and "(c * k + i) * k + j" not in src, "solutions leaked into the student notebook"
    assert 'grader.check(\\"q1\\")' in src and 'grader.check(\\"q2\\")' in src


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The student notebook of a one-lesson folder, installed once (otter assign takes seconds)."""
    root = tmp_path_factory.mktemp("install")
    nbdir = root / "nbs"
    nbdir.mkdir()
    (root / "README.md").write_text("# readme")
    _mini_master(nbdir / "07_mini.ipynb")
    target = nbdir / "student"
    first = grading.install_student_notebooks(target, notebooks=nbdir, out=root / "b")
    return root, nbdir, target, first


def test_student_install_keeps_relative_links_working(installed):
    """notebooks/student/ is one folder deeper than the masters: ../README.md must become ../../README.md (and
    still name the same file); URLs and anchors stay as they are."""
    root, nbdir, target, first = installed
    nb = nbformat.read(str(target / "07_mini.ipynb"), as_version=4)
    text = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    assert "[conventions](../../README.md#conventions-shared-by-every-tier)" in text
    assert (target / "../../README.md").resolve() == (root / "README.md").resolve()
    assert "(https://example.org/x.md)" in text and "[this cell](#top)" in text
    assert not list(target.glob("*.part"))


def test_student_install_keeps_learner_work(installed):
    root, nbdir, target, first = installed
    assert [p.name for p in first] == ["07_mini.ipynb"]
    (target / "07_mini.ipynb").write_text((target / "07_mini.ipynb").read_text().replace("Sampling positions.", "Sampling positions. MY NOTES"))
    assert grading.install_student_notebooks(target, notebooks=nbdir, out=root / "b") == []
    assert "MY NOTES" in (target / "07_mini.ipynb").read_text()
    grading.install_student_notebooks(target, force=True, notebooks=nbdir, out=root / "b")
    assert "MY NOTES" in (target / "07_mini.ipynb.bak").read_text()
    assert "MY NOTES" not in (target / "07_mini.ipynb").read_text()


def test_the_notebook_folder_is_an_argument_defaulting_to_the_checkout(tmp_path):
    assert grading.default_notebooks() == NOTEBOOKS
    assert [p.name[:2] for p in grading.lessons()][:5] == ["00", "01", "02", "03", "04"]
    _mini_master(tmp_path / "07_mini.ipynb")
    assert [p.name for p in grading.lessons(tmp_path)] == ["07_mini.ipynb"]
    assert grading.find_lesson("07", tmp_path) == tmp_path / "07_mini.ipynb"
    with pytest.raises(grading.GradingError, match="names no single lesson"):
        grading.find_lesson("99", tmp_path)


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


# ------------------------------------------------------------------------------------------ what is graded
def test_questions_come_from_the_master_or_the_zip_alike(mini):
    master, built = mini
    from_master, from_zip = grading.questions(master), grading.questions(built.autograder)
    assert from_master == from_zip
    assert {q: s.points for q, s in from_master.items()} == {"q1": 1.0, "q2": 2.0}
    assert from_master["q2"].checks == (spec.Check("lesson04", "check_ps_channel", "my_ps_channel"),)


@pytest.mark.parametrize("test", ['assert my_ps_channel(0, 0, 0, 3) == 0', CHECK_Q2 + "\nprint('and more')", PREAMBLE])
def test_a_test_the_grader_cannot_run_outside_the_kernel_is_refused(tmp_path, test):
    """Anything but calls of exercise checks would have to run in the learner's process to be graded: refused."""
    master = _mini_master(tmp_path / "m.ipynb", q2_test=test)
    with pytest.raises(grading.GradingError, match="question q2: its test"):
        grading.questions(master)


@pytest.mark.parametrize("lesson", sorted(p.stem for p in (REPO / "dcn_lessons" / "exercises").glob("lesson*.py")))
def test_inputs_come_from_the_seed_and_only_from_it(lesson):
    """Every check draws its inputs from the seed: the same seed gives byte-identical inputs (the verdict
    recomputes them), another seed other inputs (a submission cannot precompute its answers)."""
    checks = load(lesson)
    encode = checks["encode"]
    for name, q in checks.items():
        if not name.startswith("check_"):
            continue
        one = [encode(list(c["args"])) for c in q.cases(1234)]
        assert one == [encode(list(c["args"])) for c in q.cases(1234)], f"{lesson}.{name}: not deterministic"
        assert one != [encode(list(c["args"])) for c in q.cases(98765)], f"{lesson}.{name}: the seed changes nothing"


# ------------------------------------------------------------------------------------------ the safe format
def test_values_cross_the_format_with_their_types():
    core = load("lesson00")
    encode, decode, Failed, Opaque = core["encode"], core["decode"], core["Failed"], core["Opaque"]
    import torch

    value = {"a": np.arange(6.0).reshape(2, 3), "i": np.int64(7), "t": (1, 2.5, "x", None, ..., True),
             "l": [torch.ones(2, dtype=torch.float32)], "f": Failed("raised", "ValueError: no"), "o": object(),
             "big": 10**30, "nan": float("nan")}
    back = decode(encode(value))
    assert back["a"].dtype == np.float64 and np.array_equal(back["a"], value["a"])
    assert back["i"] == 7 and back["t"] == (1, 2.5, "x", None, ..., True)
    assert back["l"][0].dtype == np.float32 and isinstance(back["l"][0], np.ndarray)
    assert isinstance(decode(encode(value), tensors=True)["l"][0], torch.Tensor)
    assert isinstance(back["f"], Failed) and back["f"].message("f()") == "f() raised ValueError: no"
    assert isinstance(back["o"], Opaque) and back["o"].type_name == "object"
    assert back["big"] == 10**30 and np.isnan(back["nan"])


def test_the_format_refuses_pickles_and_bombs():
    core = load("lesson00")
    decode, encode = core["decode"], core["encode"]
    buf = io.BytesIO()
    np.savez(buf, manifest=np.frombuffer(json.dumps({"format": "dcn-lessons-values/1", "value": {"t": "array", "a": "a0"}}).encode(), np.uint8),
             a0=np.array([object()], dtype=object))
    with pytest.raises(ValueError):
        decode(buf.getvalue())
    buf = io.BytesIO()
    np.savez_compressed(buf, manifest=np.zeros(10, np.uint8))
    with pytest.raises(ValueError, match="unexpected archive members"):
        decode(buf.getvalue())
    with pytest.raises(ValueError):
        decode(b"not a zip at all")
    deep = []
    for _ in range(100):
        deep = [deep]
    node = decode(encode(deep))  # too deep an answer becomes an Opaque, not a crash
    while isinstance(node, list) and node:
        node = node[0]
    assert isinstance(node, core["Opaque"]) and "nested too deeply" in node.error


# ------------------------------------------------------------------------------------------ the snapshot
def _git_repo(root: Path) -> Path:
    (root / "dcn_lessons" / "exercises").mkdir(parents=True)
    (root / "dcn_lessons" / "__init__.py").write_text("X = 1\n")
    (root / "dcn_lessons" / "exercises" / "lesson00.py").write_text("def check(fn):\n    pass\n")
    (root / "kernels").mkdir()
    (root / "kernels" / "k.cu").write_text("// kernel\n")
    for cmd in (["init", "-q"], ["add", "-A"], ["-c", "user.email=t@t", "-c", "user.name=t", "commit", "-q", "-m", "x"]):
        subprocess.run(["git", "-C", str(root), *cmd], check=True, capture_output=True)
    return root


def test_snapshot_of_a_checkout_is_head_and_says_what_differs(tmp_path):
    top = _git_repo(tmp_path / "repo")
    (top / "dcn_lessons" / "exercises" / "lesson00.py").write_text("def check(fn):\n    return 'edited'\n")
    (top / "dcn_lessons" / "new.py").write_text("planted = True\n")
    snap = snapshot_mod._from_git(top, tmp_path / "snap")
    assert (snap.root / "dcn_lessons" / "exercises" / "lesson00.py").read_text() == "def check(fn):\n    pass\n"
    assert not (snap.root / "dcn_lessons" / "new.py").exists() and snap.kernels == snap.root / "kernels"
    assert len(snap.notes) == 1 and "grading with HEAD" in snap.notes[0]
    assert "lesson00.py" in snap.notes[0] and "new.py" in snap.notes[0]


def test_snapshot_of_an_installed_package_is_checked_against_its_record(tmp_path, monkeypatch):
    """A wheel install: files copied only as RECORD lists them; one changed since installation refuses grading."""
    import base64
    import hashlib
    from importlib import metadata

    site = tmp_path / "site"
    pkg = site / "dcn_lessons"
    pkg.mkdir(parents=True)
    files = {"dcn_lessons/__init__.py": b"X = 1\n", "dcn_lessons/kernels/k.cu": b"// k\n"}
    info = site / "dcn_lessons-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: dcn_lessons\nVersion: 0.1.0\n")
    record = []
    for rel, data in files.items():
        (site / rel).parent.mkdir(parents=True, exist_ok=True)
        (site / rel).write_bytes(data)
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{rel},sha256={digest},{len(data)}")
    (info / "RECORD").write_text("\n".join(record) + "\n")
    (pkg / "planted.py").write_text("dropped later\n")
    monkeypatch.setattr(metadata, "distribution", lambda name: metadata.PathDistribution(info))
    snap = snapshot_mod._from_install(pkg.resolve(), tmp_path / "snap")
    assert sorted(p.relative_to(snap.root).as_posix() for p in snap.root.rglob("*") if p.is_file()) == sorted(files)
    assert snap.kernels == snap.root / "dcn_lessons" / "kernels"
    (pkg / "__init__.py").write_text("X = 2\n")
    with pytest.raises(grading.GradingError, match="changed after pip installed it"):
        snapshot_mod._from_install(pkg.resolve(), tmp_path / "snap2")


def test_mask_snapshot_makes_named_attributes_unavailable(tmp_path):
    top = _git_repo(tmp_path / "repo")
    (top / "dcn_lessons" / "geo.py").write_text("def f():\n    return 1\n")
    snap = snapshot_mod.Snapshot(top, "test")
    masked = snapshot_mod.mask_snapshot(snap, ["dcn_lessons.geo:f"], tmp_path / "masked")
    out = subprocess.run([sys.executable, "-c", "import dcn_lessons.geo as g\ntry:\n    g.f()\nexcept RuntimeError as e:\n    print(e)"],
                         cwd=masked.root, capture_output=True, text=True)
    assert "dcn_lessons.geo.f is unavailable while this answer is graded" in out.stdout
    assert (top / "dcn_lessons" / "geo.py").read_text() == "def f():\n    return 1\n"
    with pytest.raises(grading.GradingError, match="names no module"):
        snapshot_mod.mask_snapshot(snap, ["dcn_lessons.nope:f"], tmp_path / "m2")


# ------------------------------------------------------------------------------------------ grading
def test_grade_rejects_meaningless_arguments(mini):
    master, built = mini
    for kwargs, word in [({"timeout": 0}, "timeout"), ({"timeout": float("nan")}, "timeout"),
                         ({"timeout": float("inf")}, "timeout"), ({"jobs": 0}, "jobs"), ({"jobs": 1.5}, "jobs"), ({"jobs": 65}, "jobs"),
                         ({"memory_gib": 0}, "memory"), ({"processes": 2}, "processes")]:
        with pytest.raises(grading.GradingError, match=word):
            grading.grade(master, [built.solution], **kwargs)


def test_what_a_submission_chose_cannot_reach_the_terminal_or_a_spreadsheet_as_code():
    from dcn_lessons.grading.pipeline import _cell, _printable

    assert _printable("ok\x1b]0;owned\x07 line\nnext") == "ok?]0;owned? line\nnext"
    assert _cell("=HYPERLINK(\"x\")") == "'=HYPERLINK(\"x\")" and _cell("/subs/a.ipynb") == "/subs/a.ipynb"


def test_without_bubblewrap_grading_refuses_unless_told(monkeypatch):
    monkeypatch.setattr(sandbox_mod.shutil, "which", lambda name: None)
    with pytest.raises(grading.GradingError) as e:
        sandbox_mod.Sandbox(enabled=True)
    assert "bubblewrap (bwrap) was not found" in str(e.value) and "--no-sandbox" in str(e.value)
    assert sandbox_mod.Sandbox(enabled=False).enabled is False


@needs_bwrap
def test_grading_a_folder_of_misbehaving_submissions(mini, tmp_path):
    master, built = mini
    subs = tmp_path / "submissions"
    subs.mkdir()
    student = built.student
    (subs / "a_master.ipynb").write_bytes(built.solution.read_bytes())
    (subs / "b_student.ipynb").write_bytes(student.read_bytes())
    _with_cells(student, subs / "c_loop.ipynb", "while True:\n    pass")
    _with_cells(student, subs / "d_sysexit.ipynb", SOLUTION_Q1, "import sys\nsys.exit(3)", after="def my_sampling_positions")
    _with_cells(student, subs / "e_raises.ipynb", SOLUTION_Q1, "raise RuntimeError('boom')", after="def my_sampling_positions")
    _with_cells(student, subs / "f_crash.ipynb", SOLUTION_Q1, "import os\nos._exit(1)", after="def my_sampling_positions")
    # deletes everything it can reach: the submissions folder (not there) and its own directory tree
    _with_cells(student, subs / "g_deleter.ipynb", SOLUTION_Q1,
                f"import shutil, os\nshutil.rmtree({str(subs)!r}, ignore_errors=True)\n"
                "for f in os.listdir('.'):\n    shutil.rmtree(f, ignore_errors=True) if os.path.isdir(f) else os.remove(f)",
                after="def my_sampling_positions")
    # a wrong answer that redefines every name the in-kernel checks use, and rewrites the notebook's own tests
    tamper = _with_cells(
        student, subs / "h_tamper.ipynb",
        "def my_sampling_positions(y, x, offsets):\n    return np.zeros((9, 2))",
        "grader.check = lambda *a, **k: print('q1 passed!')\n"
        "import dcn_lessons.exercises as ex\nex.load = lambda lesson: {'check_sampling_positions': lambda f: None}\n"
        "check_sampling_positions = lambda f: None\n_rp = lambda *a, **k: {'check_sampling_positions': lambda f: None}",
        after="def my_sampling_positions",
    )
    nb = json.loads(tamper.read_text())
    for t in nb["metadata"]["otter"]["tests"].values():
        for case in t["suites"][0]["cases"]:
            case["code"] = ">>> True\nTrue\n"
    tamper.write_text(json.dumps(nb))
    # a wrong answer that tries to rewrite the check it is graded with: the package is read-only
    _with_cells(student, subs / "h2_edits_checks.ipynb",
                "def my_sampling_positions(y, x, offsets):\n    return np.zeros((9, 2))",
                "import dcn_lessons as _d\n"
                "open(_d.__path__[0] + '/exercises/lesson00.py', 'w').write('def check_sampling_positions(f):\\n    pass\\n')",
                after="def my_sampling_positions")

    paths = sorted(subs.glob("*.ipynb"))
    before = (REPO / "dcn_lessons" / "exercises" / "lesson00.py").read_bytes()
    # the endless loop gets a short limit of its own; the others get the headroom a loaded 2-core machine needs
    # (a correct submission must never be marked as timed out because the machine was busy)
    loop = [p for p in paths if p.name == "c_loop.ipynb"]
    results = {Path(r.submission).name: r for r in grading.grade(master, [p for p in paths if p not in loop],
                                                                 timeout=300, jobs=2)}
    results.update({Path(r.submission).name: r for r in grading.grade(master, loop, timeout=15, jobs=1)})
    results = {p.name: results[p.name] for p in paths}
    out = tmp_path / "scores.csv"
    grading.write_csv(list(results.values()), {"q1": 1.0, "q2": 2.0}, out)

    def row(name):
        r = results[name]
        return r.status, r.scores["q1"], r.scores["q2"]

    assert row("a_master.ipynb") == ("graded", 1.0, 2.0)
    assert row("b_student.ipynb") == ("graded", 0.0, 0.0)
    assert "not written yet" in results["b_student.ipynb"].feedback["q2"] or "None" in results["b_student.ipynb"].feedback["q2"]
    assert row("c_loop.ipynb") == ("timeout", 0.0, 0.0)
    assert row("d_sysexit.ipynb") == ("graded", 1.0, 0.0)  # sys.exit in a cell stops nothing else
    assert row("e_raises.ipynb") == ("graded", 1.0, 0.0)
    assert row("f_crash.ipynb") == ("crashed", 0.0, 0.0) and "kernel died" in results["f_crash.ipynb"].message
    assert results["g_deleter.ipynb"].status in {"graded", "crashed"}
    assert row("h_tamper.ipynb") == ("graded", 0.0, 0.0)
    assert row("h2_edits_checks.ipynb") == ("graded", 0.0, 0.0)
    assert (REPO / "dcn_lessons" / "exercises" / "lesson00.py").read_bytes() == before
    assert len({r.seed for r in results.values()}) == len(results), "every submission gets its own seed"
    rows = list(csv.DictReader(out.open()))
    assert [r["submission"] for r in rows] == [str(p) for p in paths]
    assert rows[0]["q1"] == "1" and rows[0]["q2"] == "2" and rows[0]["total"] == "3" and rows[0]["max_total"] == "3"


@needs_bwrap
def test_a_check_can_make_the_package_unavailable_to_tell_delegation(mini, tmp_path, monkeypatch):
    """``Question.unavailable`` (for the exercises issue): a second run on a snapshot where the named attribute
    raises; an answer that only calls the package's own implementation loses the question, one that computes
    keeps it."""
    from dcn_lessons.grading import pipeline

    master, built = mini
    real = pipeline.take_snapshot

    def with_unavailable(dest):
        snap = real(dest)
        path = snap.root / "dcn_lessons" / "exercises" / "lesson00.py"
        text = path.read_text().replace("seed=SEED)", "seed=SEED, unavailable=('dcn_lessons.geometry:sampling_positions',))")
        assert "unavailable=" in text
        path.write_text(text)
        snapshot_mod._seal(snap.root)
        return snap

    monkeypatch.setattr(pipeline, "take_snapshot", with_unavailable)
    delegate = _with_cells(built.student, tmp_path / "delegate.ipynb",
                           "from dcn_lessons.geometry import sampling_positions as my_sampling_positions",
                           after="def my_sampling_positions")
    results = grading.grade(master, [built.solution, delegate], timeout=300, jobs=2)
    assert (results[0].status, results[0].scores["q1"]) == ("graded", 1.0)
    assert (results[1].status, results[1].scores["q1"]) == ("graded", 0.0)
    assert "compute it yourself" in results[1].feedback["q1"]


def _cli(*args, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "dcn_lessons", *args], capture_output=True, text=True, cwd=cwd, timeout=600)


@needs_bwrap
def test_cli_grades_and_reports_corrupt_notebooks_once(mini, tmp_path):
    master, built = mini
    subs = tmp_path / "subs"
    subs.mkdir()
    (subs / "good.ipynb").write_bytes(built.solution.read_bytes())
    (subs / "broken.ipynb").write_text('{"cells": [ this is not json')
    (subs / "notes.txt").write_text("not a notebook")
    out = tmp_path / "g.csv"
    proc = _cli("grade", str(built.autograder), str(subs), "--csv", str(out), "--timeout", "300")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    both = proc.stdout + proc.stderr
    assert both.count("broken.ipynb: not a valid notebook") == 1
    assert f"skipped (not a notebook): {subs / 'notes.txt'}" in proc.stdout
    rows = {Path(r["submission"]).name: r for r in csv.DictReader(out.open())}
    assert rows["good.ipynb"]["total"] == "3" and rows["broken.ipynb"]["status"] == "invalid"
    assert "notes.txt" not in rows


def test_no_sandbox_says_what_it_means_on_every_run(mini, tmp_path):
    master, built = mini
    said = []
    results = grading.grade(master, [built.solution], timeout=120, sandbox=False, log=said.append)
    assert (results[0].status, results[0].total) == ("graded", 3.0)
    assert said[0] == grading.NO_SANDBOX_WARNING and "unconfined" in said[0]
    assert any(line.startswith("checks and package from git HEAD") for line in said)


@pytest.mark.parametrize(
    "args, message",
    [
        (["grade", "00_tour", "/no/such/folder"], "/no/such/folder: no such file or folder"),
        (["grade", "/no/such.zip", str(NOTEBOOKS / "00_tour.ipynb")], "/no/such.zip: no such autograder zip"),
        (["grade", "99", str(NOTEBOOKS / "00_tour.ipynb")], "names no single lesson"),
        (["grade", "00_tour", str(REPO / "tests")], "no .ipynb submissions found"),
        (["grade", "00", str(NOTEBOOKS / "00_tour.ipynb"), "--notebooks", "/no/such"], "--notebooks: /no/such is not a folder"),
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


@needs_bwrap
@pytest.mark.parametrize("master", LESSON_MASTERS, ids=[p.stem for p in LESSON_MASTERS])
def test_real_lesson_master_full_marks_student_zero(master, tmp_path):
    """Each lesson graded as an instructor would: the master notebook itself (solutions in place) gets every
    point, the untouched student notebook none, each on inputs from its own fresh seed."""
    built = grading.assign_lesson(master, tmp_path / "build")
    results = grading.grade(master, [master, built.student], timeout=300, jobs=2)
    full = {q: s.points for q, s in grading.questions(master).items()}
    assert results[0].status == "graded" and results[0].scores == full, results[0]
    assert results[1].status == "graded" and results[1].total == 0.0, results[1]
