"""The course's command line: ``python -m dcn_lessons {lab,student,grade}``.

* ``lab [JUPYTER ARGS...]`` -- put the student notebooks in ``notebooks/student/`` (missing ones
  only: a learner's work is never overwritten) and start JupyterLab on ``notebooks/``; passes
  ``--allow-root`` only when run as root.
* ``student [MASTER ...] [--out DIR] [--force]`` -- generate student notebooks and autograder zips.
* ``grade LESSON_OR_ZIP SUBMISSIONS... [--csv FILE] [--timeout S] [--jobs N] [--full]`` -- grade submitted
  notebooks (files or folders of ``*.ipynb``) and write a CSV of scores per exercise; submissions run in
  fast mode unless ``--full``.

Bad input (a path that does not exist, a corrupt notebook) prints one clear line and exits
non-zero: 2 for unusable arguments, 1 when some submissions could not be read.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from dcn_lessons import grading
from dcn_lessons.grading import BUILD, NOTEBOOKS, GradingError


def _lab(args: argparse.Namespace, extra: list[str]) -> int:
    written = grading.install_student_notebooks(NOTEBOOKS / "student")
    for p in written:
        print(f"student notebook ready: {p.relative_to(NOTEBOOKS.parent)}", flush=True)
    cmd = [sys.executable, "-m", "jupyterlab", f"--notebook-dir={NOTEBOOKS}"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")  # JupyterLab refuses root otherwise; only ever added for root
    cmd += extra
    os.execv(sys.executable, cmd)
    return 0  # pragma: no cover


def _student(args: argparse.Namespace) -> int:
    masters = [Path(p) for p in args.masters] or grading.lessons()
    for m in masters:
        built = grading.build(m, Path(args.out))
        print(f"{m.name}: {built.student} + {built.autograder}")
    if args.install:
        for p in grading.install_student_notebooks(NOTEBOOKS / "student", force=args.force):
            print(f"installed {p}")
    return 0


def _grade(args: argparse.Namespace) -> int:
    subs: list[Path] = []
    for s in map(Path, args.submissions):
        if s.is_dir():
            subs += sorted(s.glob("*.ipynb"))
        elif s.exists():
            subs.append(s)
        else:
            raise GradingError(f"{s}: no such file or folder")
    if not subs:
        raise GradingError(f"no .ipynb submissions found in {', '.join(args.submissions)}")
    target = Path(args.lesson)
    if target.suffix == ".zip":
        autograder = target
        if not autograder.is_file():
            raise GradingError(f"{autograder}: no such autograder zip")
    else:
        master = target if target.suffix == ".ipynb" else NOTEBOOKS / f"{args.lesson}.ipynb"
        if not master.exists():
            matches = sorted(NOTEBOOKS.glob(f"{args.lesson}*.ipynb"))
            if len(matches) != 1:
                raise GradingError(f"lesson: {args.lesson!r} names no single lesson notebook or autograder zip")
            master = matches[0]
        autograder = grading.build(master, Path(args.out)).autograder
    log = (lambda m: print(m, flush=True))
    results = grading.grade(autograder, subs, timeout=args.timeout, fast=not args.full, jobs=args.jobs, log=log)
    grading.write_csv(results, autograder, Path(args.csv))
    print(f"scores written to {args.csv}")
    invalid = [r for r in results if r.status == "invalid"]
    for r in invalid:
        print(f"error: {r.message}", file=sys.stderr)
    return 1 if invalid else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dcn_lessons", description="Deformable ConvNets course tools")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("lab", help="prepare student notebooks and open JupyterLab on notebooks/ (extra args go to jupyter lab)")
    p = sub.add_parser("student", help="generate student notebooks and autograder zips with otter assign")
    p.add_argument("masters", nargs="*", help="master notebooks (default: every lesson with exercises)")
    p.add_argument("--out", default=str(BUILD), help="output folder (default: build/course)")
    p.add_argument("--install", action="store_true", help="also copy them into notebooks/student/")
    p.add_argument("--force", action="store_true", help="with --install: replace existing student notebooks (kept as .bak)")
    g = sub.add_parser("grade", help="grade submitted notebooks and write a CSV of scores per exercise")
    g.add_argument("lesson", help="lesson (e.g. 00 or 00_tour), master notebook, or autograder zip")
    g.add_argument("submissions", nargs="+", help="submitted .ipynb files or folders of them")
    g.add_argument("--csv", default="grades.csv", help="where to write the scores (default: grades.csv)")
    g.add_argument("--timeout", type=float, default=300.0, help="seconds per submission (default: 300)")
    g.add_argument("--jobs", type=int, default=1, help="submissions graded at once (default: 1)")
    g.add_argument("--full", action="store_true", help="run submissions in full mode (default: fast mode)")
    g.add_argument("--out", default=str(BUILD), help="where the autograder is built (default: build/course)")
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
