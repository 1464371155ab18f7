"""Student notebooks, made from the master notebooks with otter-grader's ``otter assign``.

The master notebooks (``notebooks/`` of a checkout, or any folder given) are the one source of truth: they hold
the lessons, the exercises *with* solutions, and the tests, in otter-grader's "Otter Assign" format (raw cells
``# BEGIN QUESTION`` / ``# BEGIN SOLUTION`` / ``# BEGIN TESTS``). :func:`assign_lesson` runs ``otter assign`` on
one and keeps the student notebook (solutions replaced by ``...``, a ``grader.check("q1")`` cell under each
exercise), the solution notebook and the autograder zip; :func:`install_student_notebooks` puts the student
notebooks where learners open them, never overwriting their work.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from dcn_lessons.grading._base import GradingError, is_master, read_notebook

#: The checkout the package sits in (an editable install), or None for an installed wheel.
_CHECKOUT = Path(__file__).resolve().parent.parent.parent


def default_notebooks() -> Path:
    """``notebooks/`` of the checkout the package was imported from; :class:`GradingError` when there is none (an
    installed wheel carries no lessons: pass the folder of master notebooks instead)."""
    folder = _CHECKOUT / "notebooks"
    if not folder.is_dir() or not (_CHECKOUT / "dcn_lessons").is_dir():
        raise GradingError("no notebooks/ folder next to the dcn_lessons package (an installed package carries no "
                           "lessons): pass the folder of master notebooks (--notebooks DIR)")
    return folder


def default_build() -> Path:
    """Where :func:`assign_lesson` writes by default: ``build/course`` of the checkout, or of the current folder."""
    root = _CHECKOUT if (_CHECKOUT / "notebooks").is_dir() else Path.cwd()
    return root / "build" / "course"


def lessons(notebooks: Path | None = None) -> list[Path]:
    """The master notebooks that carry exercises, in lesson order (``notebooks``: default :func:`default_notebooks`)."""
    folder = Path(notebooks) if notebooks is not None else default_notebooks()
    return [p for p in sorted(folder.glob("[0-9][0-9]_*.ipynb")) if is_master(read_notebook(p))]


def find_lesson(lesson: str, notebooks: Path | None = None) -> Path:
    """The master notebook a lesson names: ``02``, ``02_deformable_conv`` or a path to a ``.ipynb``."""
    if lesson.endswith(".ipynb"):
        return Path(lesson)
    folder = Path(notebooks) if notebooks is not None else default_notebooks()
    exact = folder / f"{lesson}.ipynb"
    if exact.exists():
        return exact
    matches = sorted(folder.glob(f"{lesson}*.ipynb"))
    if len(matches) != 1:
        raise GradingError(f"lesson: {lesson!r} names no single lesson notebook in {folder} (nor an autograder zip)")
    return matches[0]


@dataclass
class Built:
    """What ``otter assign`` made of one master notebook."""

    lesson: str
    student: Path  #: solutions removed, a ``grader.check`` cell under each exercise
    solution: Path  #: the master as a submission: solutions kept, tests hidden (full marks)
    autograder: Path  #: the zip of tests (otter's format; ``grade`` accepts it in place of the master)


def assign_lesson(master: Path, out: Path | None = None) -> Built:
    """Run ``otter assign`` on one master notebook; keep its student and solution notebooks and autograder zip.

    Writes ``out/<lesson>/student/<lesson>.ipynb``, ``out/<lesson>/solution/<lesson>.ipynb`` and
    ``out/<lesson>/autograder.zip`` (``out``: default :func:`default_build`), replacing an earlier build only once
    the new one is complete (nothing half-written is left behind).
    """
    master = Path(master)
    nb = read_notebook(master)
    if not is_master(nb):
        raise GradingError(f"{master}: has no exercises (no raw '# ASSIGNMENT CONFIG' cell)")
    lesson = master.stem
    out = Path(out) if out is not None else default_build()
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


def install_student_notebooks(target: Path, force: bool = False, notebooks: Path | None = None,
                              out: Path | None = None) -> list[Path]:
    """Assign every lesson of ``notebooks`` and copy its student notebook into ``target``.

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
        built = assign_lesson(master, out)
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
