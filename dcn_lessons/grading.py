"""Student notebooks and grading, on top of otter-grader.

The master notebooks in ``notebooks/`` are the one source of truth: they hold the lessons, the
exercises *with* solutions, and the tests, in otter-grader's "Otter Assign" format (raw cells
``# BEGIN QUESTION`` / ``# BEGIN SOLUTION`` / ``# BEGIN TESTS``). From them:

* :func:`build` runs ``otter assign`` and keeps two things per lesson: the student notebook
  (solutions replaced by ``...``, a ``grader.check("q1")`` cell under each exercise) and the
  autograder zip (the tests the instructor grades with, which a student cannot edit).
* :func:`grade` grades a folder of submitted notebooks with ``otter run``, one submission per
  process, each in a fresh directory with a time limit, and writes a CSV of scores per exercise.

Isolation, and its limits: every submission's bytes (and the autograder's) are read into memory
before any submission runs, and written fresh into the submission's own temporary directory just
before it runs, so a submission that deletes files cannot change another's grade. So is the course
package: each submission imports ``dcn_lessons`` (and reads ``kernels/``) from its own fresh copy,
written from a snapshot the grader holds in memory and put first on ``PYTHONPATH``; the tests load
their checks from that copy's files anew (see :func:`dcn_lessons.exercises.load`). After the run the
copy is compared with the snapshot: a submission that edited or deleted any of it (the checks, the
references they compare with) is marked ``tampered`` and gets no marks; and a change it made to the
installed package itself is undone at once (and, with ``jobs=1``, also marks it ``tampered``). A
submission that loops forever is killed with its whole process group at the time limit
(``timeout``, no marks); one that raises or calls ``sys.exit`` in a cell is graded on everything
(otter runs every cell and then every test); one that kills its kernel leaves otter nothing to grade
and gets no marks (``crashed``). Editing a notebook's embedded tests, redefining ``grader.check`` or a
check's name, or patching ``dcn_lessons.exercises`` earns nothing. Code that runs in the same
interpreter as the tests can always patch what the tests themselves call (NumPy, ``runpy``, a module's
``__path__``): for high-stakes grading run this inside a container per submission.
"""
from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = REPO / "notebooks"
#: Where ``build`` writes by default: ``build/course/<lesson>/{student/<lesson>.ipynb, autograder.zip}``.
BUILD = REPO / "build" / "course"


class GradingError(Exception):
    """Bad input to the course tools; the message is meant for the user, without a traceback."""


# -- reading notebooks --------------------------------------------------------------------------
def read_notebook(path: Path) -> nbformat.NotebookNode:
    """Read and validate a notebook, or raise :class:`GradingError` saying what is wrong with it."""
    path = Path(path)
    if not path.exists():
        raise GradingError(f"{path}: no such file")
    if path.suffix != ".ipynb":
        raise GradingError(f"{path}: expected a .ipynb notebook")
    try:
        nb = nbformat.read(str(path), as_version=4)
        nbformat.validate(nb)
    except Exception as e:  # json errors, schema errors, encoding errors
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise GradingError(f"{path}: not a valid notebook ({type(e).__name__}: {first[:200]})") from None
    return nb


def is_master(nb: nbformat.NotebookNode) -> bool:
    """True when a notebook holds otter exercises (a raw ``# ASSIGNMENT CONFIG`` cell)."""
    return any(c.cell_type == "raw" and c.source.lstrip().startswith("# ASSIGNMENT CONFIG") for c in nb.cells)


def lessons(notebooks: Path = NOTEBOOKS) -> list[Path]:
    """The master notebooks that carry exercises, in lesson order."""
    return [p for p in sorted(Path(notebooks).glob("[0-9][0-9]_*.ipynb")) if is_master(read_notebook(p))]


# -- building student notebooks -----------------------------------------------------------------
@dataclass
class Built:
    """What ``otter assign`` made of one master notebook."""

    lesson: str
    student: Path  #: solutions removed, a ``grader.check`` cell under each exercise
    solution: Path  #: the master as a submission: solutions kept, tests hidden (full marks)
    autograder: Path  #: the zip of tests the instructor grades with


def build(master: Path, out: Path = BUILD) -> Built:
    """Run ``otter assign`` on one master notebook; keep its student notebook and autograder zip.

    Writes ``out/<lesson>/student/<lesson>.ipynb``, ``out/<lesson>/solution/<lesson>.ipynb`` and
    ``out/<lesson>/autograder.zip``, replacing
    an earlier build only once the new one is complete (nothing half-written is left behind).
    """
    master = Path(master)
    nb = read_notebook(master)
    if not is_master(nb):
        raise GradingError(f"{master}: has no exercises (no raw '# ASSIGNMENT CONFIG' cell)")
    lesson = master.stem
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        dist = Path(tmp) / "dist"
        proc = subprocess.run(
            [sys.executable, "-m", "otter", "assign", "--no-run-tests", "--no-pdfs", str(master.resolve()), str(dist)],
            cwd=master.resolve().parent,
            capture_output=True,
            text=True,
        )
        zips = sorted((dist / "autograder").glob("*.zip")) if proc.returncode == 0 else []
        student = dist / "student" / master.name
        solution = dist / "autograder" / master.name
        if proc.returncode != 0 or not zips or not student.is_file() or not solution.is_file():
            tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-8:])
            raise GradingError(f"{master}: otter assign failed:\n{tail}")
        staged = Path(tmp) / lesson
        for kind, src in (("student", student), ("solution", solution)):
            (staged / kind).mkdir(parents=True)
            shutil.copy2(src, staged / kind / master.name)
        shutil.copy2(zips[-1], staged / "autograder.zip")
        final = out / lesson
        if final.exists():
            shutil.rmtree(final)
        staged.rename(final)
    return Built(lesson, final / "student" / master.name, final / "solution" / master.name, final / "autograder.zip")


def install_student_notebooks(target: Path, force: bool = False, notebooks: Path = NOTEBOOKS, out: Path = BUILD) -> list[Path]:
    """Build every lesson and copy its student notebook into ``target``.

    A student notebook that already exists there is the learner's work: it is kept unless
    ``force`` is given (then the old one is first renamed ``*.ipynb.bak``). Relative links in its markdown
    (``../README.md#...``, a figure) are rewritten for the new folder, so they still reach their files.
    """
    target = Path(target)
    target.mkdir(parents=True, exist_ok=True)
    written = []
    for master in lessons(notebooks):
        dest = target / master.name
        if dest.exists() and not force:
            continue
        built = build(master, out)
        if dest.exists():
            dest.replace(dest.with_name(dest.name + ".bak"))
        nb = json.loads(built.student.read_text(encoding="utf-8"))
        for cell in nb.get("cells", []):
            if cell.get("cell_type") == "markdown":
                text = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
                cell["source"] = relink(text, master.parent, target).splitlines(keepends=True)
        part = dest.with_name(dest.name + ".part")  # write whole, then rename: never a half-written notebook
        part.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        part.replace(dest)
        written.append(dest)
    return written


_MD_LINK = re.compile(r"(\]\()([^)\s#]+)((?:#[^)\s]*)?\))")


def relink(markdown: str, source_dir: Path, target_dir: Path) -> str:
    """``markdown`` with every relative link target (``[text](path#anchor)``, images too) rewritten from
    ``source_dir`` to ``target_dir``; URLs (``scheme:``), absolute paths and pure anchors are left alone."""

    def repl(m: re.Match[str]) -> str:
        link = m.group(2)
        if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", link) or link.startswith("/"):
            return m.group(0)
        moved = os.path.relpath(os.path.normpath(Path(source_dir).resolve() / link), Path(target_dir).resolve())
        return m.group(1) + Path(moved).as_posix() + m.group(3)

    return _MD_LINK.sub(repl, markdown)


# -- grading ------------------------------------------------------------------------------------
@dataclass
class Result:
    submission: str
    status: str  # "graded", "timeout", "crashed", "tampered", "invalid"
    scores: dict[str, float] = field(default_factory=dict)
    message: str = ""

    @property
    def total(self) -> float:
        return float(sum(self.scores.values()))


def questions(autograder: Path) -> dict[str, float]:
    """Question names and their points, read from the tests inside an autograder zip."""
    try:
        with zipfile.ZipFile(autograder) as z:
            names = sorted(n for n in z.namelist() if n.startswith("tests/") and n.endswith(".py"))
            out: dict[str, float] = {}
            for n in names:
                scope: dict = {}
                exec(compile(z.read(n).decode(), n, "exec"), scope)  # otter's OK-format test dicts
                test = scope["test"]
                out[test["name"]] = float(test.get("points") or 0.0)
    except (OSError, zipfile.BadZipFile, KeyError, SyntaxError) as e:
        raise GradingError(f"{autograder}: not an otter autograder zip ({type(e).__name__}: {e})") from None
    if not out:
        raise GradingError(f"{autograder}: holds no tests")
    return out


Snapshot = dict[str, bytes]


def package_files() -> dict[str, Path]:
    """The files a submission's checks may read, by name relative to the snapshot root:
    ``dcn_lessons/**`` (sources and package data, no caches) and ``kernels/*`` (the CUDA sources)."""
    import dcn_lessons

    pkg = Path(dcn_lessons.__file__).resolve().parent
    files = {
        f"dcn_lessons/{p.relative_to(pkg).as_posix()}": p
        for p in sorted(pkg.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts and p.suffix not in {".pyc", ".nbi", ".nbc"}
    }
    try:
        from dcn_lessons.cuda._source import kernels_dir

        kdir = kernels_dir()
        files.update({f"kernels/{p.name}": p for p in sorted(kdir.iterdir()) if p.is_file()})
    except FileNotFoundError:  # an install without the kernel sources: lesson 06 says so itself
        pass
    return files


def _changed(snapshot: Snapshot, files: dict[str, Path]) -> list[str]:
    """Names of the snapshot's files whose copy at ``files[name]`` is missing or different."""
    bad = []
    for name, data in snapshot.items():
        try:
            if files[name].read_bytes() != data:
                bad.append(name)
        except OSError:
            bad.append(name)
    return bad


def _restore(snapshot: Snapshot, files: dict[str, Path]) -> list[str]:
    """Put back every installed package file that differs from the snapshot; return their names."""
    bad = _changed(snapshot, files)
    for name in bad:
        p = files[name]
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(p.name + ".restore.tmp")
        tmp.write_bytes(snapshot[name])
        tmp.replace(p)
    return bad


def _source_checkout(files: dict[str, Path]) -> Path | None:
    """The repository root when the installed package is a source checkout (an editable install inside a git
    work tree), else None. There a changed file may be the instructor's own edit, made while grading ran."""
    init = files.get("dcn_lessons/__init__.py")
    if init is None:
        return None
    root = init.resolve().parent.parent
    return root if (root / ".git").exists() else None


def _run_one(name: str, data: bytes, autograder: bytes, timeout: float, env: dict[str, str], package: Snapshot) -> Result:
    with tempfile.TemporaryDirectory(prefix="dcn-grade-") as tmp:
        work = Path(tmp)
        (work / "autograder.zip").write_bytes(autograder)
        sub = work / "submission" / name
        sub.parent.mkdir()
        sub.write_bytes(data)
        (work / "out").mkdir()
        pkg = work / "pkg"  # this submission's own copy of the course package
        copy = {rel: pkg / rel for rel in package}
        for rel, content in package.items():
            copy[rel].parent.mkdir(parents=True, exist_ok=True)
            copy[rel].write_bytes(content)
        env = dict(env, PYTHONPATH=os.pathsep.join(filter(None, [str(pkg), env.get("PYTHONPATH", "")])),
                   DCN_LESSONS_KERNELS=str(pkg / "kernels"))
        cmd = [sys.executable, "-m", "otter", "run", "--no-logo", "-a", str(work / "autograder.zip"), "-o", str(work / "out"), str(sub)]
        proc = subprocess.Popen(cmd, cwd=sub.parent, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            output, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            return Result(name, "timeout", message=f"stopped after {timeout:g} s")
        finally:
            try:  # the kernel and anything else the submission started
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        edited = _changed(package, copy)
        if edited:
            return Result(name, "tampered", message=f"changed the course package: {', '.join(edited[:3])}")
        results = work / "out" / "results.json"
        if proc.returncode != 0 or not results.is_file():
            lines = output.decode(errors="replace").strip().splitlines()
            reason = lines[-1][:200] if lines else f"exit code {proc.returncode}"
            return Result(name, "crashed", message=reason)
        tests = json.loads(results.read_text()).get("tests", [])
        scores = {t["name"]: float(t["score"]) for t in tests if t.get("score") is not None and "max_score" in t}
        return Result(name, "graded", scores)


def grade(
    autograder: Path, submissions: list[Path], timeout: float = 300.0, fast: bool = True, jobs: int = 1, log=None
) -> list[Result]:
    """Grade each submission with ``otter run`` in its own process and directory (see module doc).

    ``jobs`` submissions run at once (each still in its own process group with its own time
    limit); results come back in the order of ``submissions``.
    """
    if not isinstance(jobs, int) or jobs < 1:
        raise GradingError(f"jobs: expected an integer >= 1, got {jobs!r}")
    if not isinstance(timeout, (int, float)) or not (0 < timeout < float("inf")):
        raise GradingError(f"timeout: expected a positive number of seconds, got {timeout!r}")
    autograder = Path(autograder)
    if not autograder.is_file():
        raise GradingError(f"{autograder}: no such autograder zip")
    qs = questions(autograder)
    ag_bytes = autograder.read_bytes()
    staged: list[tuple[str, bytes | None, str]] = []
    for p in submissions:  # read everything before anything runs
        try:
            read_notebook(p)
            staged.append((str(p), Path(p).read_bytes(), ""))
        except GradingError as e:
            staged.append((str(p), None, str(e)))
    env = dict(os.environ, MPLBACKEND="Agg", PYTHONHASHSEED="0")
    env["DCN_LESSONS_FAST"] = "1" if fast else "0"
    # share the cores between the submissions that run at once: with jobs=2 on 2 cores and 2 threads each,
    # PyTorch's spinning OpenMP workers made a lesson-05 submission take 341 s instead of 25 s
    per_job = str(max(1, (os.cpu_count() or 1) // jobs))
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        env.setdefault(var, per_job)
    installed = package_files()
    package = {rel: p.read_bytes() for rel, p in installed.items()}
    # In a source checkout nothing is written back: the change may be the instructor's own edit (restoring
    # would destroy it); it is reported once, and `git diff` shows it. Submissions never see it either way:
    # each one imports its private copy of `package`.
    checkout = _source_checkout(installed)
    baseline = dict(package)
    restoring = threading.Lock()

    def one(item: tuple[str, bytes | None, str]) -> Result:
        name, data, error = item
        start = time.monotonic()
        r = Result(name, "invalid", message=error) if data is None else _run_one(Path(name).name, data, ag_bytes, timeout, env, package)
        with restoring:  # a submission may have found the installed package itself
            if checkout is None:
                changed, how = _restore(package, installed), "restored"
            else:
                changed, how = _changed(baseline, installed), f"left as is in the checkout {checkout}: see git diff"
                for rel in changed:  # report each change once
                    baseline.pop(rel)
        if changed:
            if jobs == 1:  # only this one ran since the last check
                r = Result(name, "tampered", message=f"changed the installed package: {', '.join(changed[:3])} ({how})")
            if log:
                log(f"warning: installed package files changed while grading ({how}): {', '.join(changed)}")
        r.submission = name  # the path as given: two folders may hold notebooks of the same name
        r.scores = {q: r.scores.get(q, 0.0) for q in qs}
        if log:
            log(f"{name}: {r.status} {r.total:g}/{sum(qs.values()):g} ({time.monotonic() - start:.0f} s){' - ' + r.message if r.message else ''}")
        return r

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(one, staged))


def write_csv(results: list[Result], autograder: Path, path: Path) -> None:
    """Write one row per submission (scores per exercise, total, status); atomically."""
    qs = questions(autograder)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["submission", *qs, "total", "max_total", "status", "message"])
        for r in results:
            w.writerow([r.submission, *(f"{r.scores[q]:g}" for q in qs), f"{r.total:g}", f"{sum(qs.values()):g}", r.status, r.message])
    tmp.replace(path)
