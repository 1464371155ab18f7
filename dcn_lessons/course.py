"""The course's command line: ``python -m dcn_lessons {lab,student,grade,detect}``.

* ``detect COMMAND ...`` -- the capstone detector (:mod:`dcn_lessons.detection.cli`: make-data, train, evaluate,
  predict, ablate).

* ``lab [JUPYTER ARGS...]`` -- put the student notebooks in ``notebooks/student/`` (missing ones
  only: a learner's work is never overwritten) and start JupyterLab on ``notebooks/``; passes
  ``--allow-root`` only when run as root.
* ``student [MASTER ...] [--notebooks DIR] [--out DIR] [--install] [--force]`` -- generate student notebooks and
  autograder zips with otter assign.
* ``grade LESSON_OR_ZIP SUBMISSIONS... [--csv FILE] [--timeout S] [--jobs N] [--full] [--notebooks DIR]
  [--no-sandbox] [--seed N] [--memory GIB] [--processes N]`` -- grade submitted notebooks (files, or folders of
  ``*.ipynb``: other files there are listed as skipped), each in its own sandbox, and write a CSV of scores per
  exercise; submissions run in fast mode unless ``--full``.

``--notebooks`` is the folder of master notebooks; by default ``notebooks/`` of the checkout the package sits in.
Bad input (a path that does not exist, a corrupt notebook) prints one clear line and exits
non-zero: 2 for unusable arguments, 1 when some submissions could not be read.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from dcn_lessons import grading
from dcn_lessons.grading import GradingError


def _lab(args: argparse.Namespace, extra: list[str]) -> int:
    notebooks = grading.default_notebooks()
    written = grading.install_student_notebooks(notebooks / "student")
    for p in written:
        print(f"student notebook ready: {p.relative_to(notebooks.parent)}", flush=True)
    cmd = [sys.executable, "-m", "jupyterlab", f"--notebook-dir={notebooks}"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")  # JupyterLab refuses root otherwise; only ever added for root
    cmd += extra
    os.execv(sys.executable, cmd)
    return 0  # pragma: no cover


def _notebooks(args: argparse.Namespace) -> Path | None:
    if args.notebooks is None:
        return None
    folder = Path(args.notebooks)
    if not folder.is_dir():
        raise GradingError(f"--notebooks: {folder} is not a folder")
    return folder


def _student(args: argparse.Namespace) -> int:
    notebooks = _notebooks(args)
    masters = [Path(p) for p in args.masters] or grading.lessons(notebooks)
    out = Path(args.out) if args.out else None
    for m in masters:
        built = grading.assign_lesson(m, out)
        print(f"{m.name}: {built.student} + {built.autograder}")
    if args.install:
        target = (notebooks or grading.default_notebooks()) / "student"
        for p in grading.install_student_notebooks(target, force=args.force, notebooks=notebooks, out=out):
            print(f"installed {p}")
    return 0


def _submissions(paths: list[str]) -> tuple[list[Path], list[Path]]:
    """The notebooks to grade, and the other files found in the folders given (skipped)."""
    subs: list[Path] = []
    skipped: list[Path] = []
    for s in map(Path, paths):
        if s.is_dir():
            for p in sorted(s.iterdir()):
                if p.is_file():
                    (subs if p.suffix == ".ipynb" else skipped).append(p)
        elif s.exists():
            subs.append(s)
        else:
            raise GradingError(f"{s}: no such file or folder")
    if not subs:
        raise GradingError(f"no .ipynb submissions found in {', '.join(paths)}")
    return subs, skipped


def _grade(args: argparse.Namespace) -> int:
    subs, skipped = _submissions(args.submissions)
    target = Path(args.lesson)
    if target.suffix == ".zip":
        if not target.is_file():
            raise GradingError(f"{target}: no such autograder zip")
        source = target
    else:
        source = grading.find_lesson(args.lesson, _notebooks(args))
        if not source.exists():
            raise GradingError(f"{source}: no such file")
    points = {q: s.points for q, s in grading.questions(source).items()}
    for p in skipped:
        print(f"skipped (not a notebook): {p}", flush=True)
    log = (lambda m: print(m, flush=True))
    results = grading.grade(source, subs, timeout=args.timeout, fast=not args.full, jobs=args.jobs, log=log,
                            sandbox=not args.no_sandbox, seed=args.seed, memory_gib=args.memory,
                            processes=args.processes)
    grading.write_csv(results, points, Path(args.csv))
    print(f"scores written to {args.csv}")
    return 1 if any(r.status == "invalid" for r in results) else 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "detect":  # the capstone's own command line (its subcommands parse their options)
        from dcn_lessons.detection.cli import main as detect_main

        return detect_main(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m dcn_lessons", description="Deformable ConvNets course tools")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("detect", add_help=False,
                   help="the capstone detector: make-data, train, evaluate, predict, ablate (see: detect --help)")
    sub.add_parser("lab", help="prepare student notebooks and open JupyterLab on notebooks/ (extra args go to jupyter lab)")
    p = sub.add_parser("student", help="generate student notebooks and autograder zips with otter assign")
    p.add_argument("masters", nargs="*", help="master notebooks (default: every lesson with exercises)")
    p.add_argument("--notebooks", help="folder of master notebooks (default: notebooks/ of the checkout)")
    p.add_argument("--out", help="output folder (default: build/course)")
    p.add_argument("--install", action="store_true", help="also copy them into the notebooks folder's student/")
    p.add_argument("--force", action="store_true", help="with --install: replace existing student notebooks (kept as .bak)")
    g = sub.add_parser("grade", help="grade submitted notebooks, each in a sandbox, and write a CSV of scores")
    g.add_argument("lesson", help="lesson (e.g. 00 or 00_tour), master notebook, or otter autograder zip")
    g.add_argument("submissions", nargs="+", help="submitted .ipynb files or folders of them")
    g.add_argument("--csv", default="grades.csv", help="where to write the scores (default: grades.csv)")
    g.add_argument("--timeout", type=float, default=300.0, help="seconds per submission, wall clock (default: 300)")
    g.add_argument("--jobs", type=int, default=1, help="submissions graded at once (default: 1)")
    g.add_argument("--full", action="store_true", help="run submissions in full mode (default: fast mode)")
    g.add_argument("--notebooks", help="folder of master notebooks (default: notebooks/ of the checkout)")
    g.add_argument("--no-sandbox", action="store_true",
                   help="run submissions without bubblewrap: unconfined, for trusted work only (said on every run)")
    g.add_argument("--seed", type=int, default=None, help="inputs from this seed for every submission (default: a "
                   "fresh seed each, written to the CSV)")
    g.add_argument("--memory", type=float, default=6.0, help="GiB per submission, all its processes (default: 6)")
    g.add_argument("--processes", type=int, default=256, help="processes per submission at once (default: 256)")
    args, extra = parser.parse_known_args(argv)
    if extra and args.command != "lab":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        if args.command == "lab":
            return _lab(args, extra)
        if args.command == "student":
            return _student(args)
        return _grade(args)
    except GradingError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
