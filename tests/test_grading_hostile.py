"""A hostile class graded in one run (issue 14): one submission per attack, an honest one and an empty one.

Built from the current student notebook of lesson 00 (the cheapest lesson), graded with ``--jobs 2`` under
small limits. The honest submission gets full marks and every attack none; nothing an attack started is alive
when ``grade`` returns; nothing it aimed at on the host changed (the checks in the checkout, numpy in
site-packages, the CSV, the other submissions, the host's /tmp); and the grader leaves nothing in its temporary
folder, timeouts included.
"""
from __future__ import annotations

import csv
import hashlib
import os
import site
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import NOTEBOOKS, REPO
from dcn_lessons import grading
from grading import hostile

pytestmark = pytest.mark.skipif(__import__("shutil").which("bwrap") is None,
                                reason="bubblewrap (bwrap) is not installed: apt-get install bubblewrap")

TIMEOUT = 30


def _digest(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def _marked_processes() -> list[str]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                cmd = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if hostile.MARK.encode() in cmd and b"pytest" not in cmd:
                found.append(f"{entry}: {cmd.replace(bytes(1), b' ').decode(errors='replace')[:120]}")
    return found


def _files_with_mark(roots: list[Path]) -> list[str]:
    """Files named after the mark, under ``roots`` (not following links)."""
    hits = []
    for root in roots:
        for dirpath, dirs, files in os.walk(root):
            dirs[:] = [d for d in dirs if d not in (".git", "node_modules")]
            hits += [os.path.join(dirpath, f) for f in files + dirs if hostile.MARK in f or "zz_dcn_hostile" in f]
    return hits


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    master = NOTEBOOKS / "00_tour.ipynb"
    built = grading.assign_lesson(master, root / "build")
    subs = root / "submissions"
    csv_path = root / "grades.csv"
    targets = {
        "checkout": str(REPO),
        "checkout_check": str(REPO / "dcn_lessons" / "exercises" / "lesson00.py"),
        "checkout_new_file": str(REPO / "dcn_lessons" / f"zz_{hostile.MARK}.py"),
        "site_numpy": str(Path(np.__file__)),
        "csv": str(csv_path),
        "other_submission": str(subs / "z_honest.ipynb"),
        "loot": str(root / f"{hostile.MARK}-loot.txt"),
        "host_tmp_file": str(Path(tempfile.gettempdir()) / f"zz_{hostile.MARK}"),
    }
    made = hostile.build(built.student, subs, targets)
    hostile.honest(built.student, subs / "z_honest.ipynb")
    (subs / "z_empty.ipynb").write_bytes(built.student.read_bytes())
    watched = {Path(targets["checkout_check"]), Path(targets["site_numpy"]), subs / "z_honest.ipynb"}
    before = {p: _digest(p) for p in watched}
    paths = sorted(subs.glob("*.ipynb"))
    own_tmp = root / "grader-tmp"
    own_tmp.mkdir()
    saved = tempfile.tempdir
    tempfile.tempdir = str(own_tmp)  # the grader's temporary folder, to see that it leaves nothing there
    try:
        start = time.monotonic()
        results = grading.grade(master, paths, timeout=TIMEOUT, jobs=2, memory_gib=2.0, processes=128)
        wall = time.monotonic() - start
    finally:
        tempfile.tempdir = saved
    points = {q: s.points for q, s in grading.questions(master).items()}
    grading.write_csv(results, points, csv_path)
    written = csv_path.read_bytes()
    print(f"hostile corpus: {len(paths)} submissions graded in {wall:.0f} s", file=sys.stderr)
    time.sleep(2)  # a daemon that outlived the grader would strike now
    return {"results": {Path(r.submission).stem: r for r in results}, "paths": paths, "made": made,
            "targets": targets, "before": before, "csv": csv_path, "csv_written": written, "root": root,
            "own_tmp": own_tmp, "wall": wall}


def test_the_honest_submission_gets_full_marks_and_the_empty_one_none(corpus):
    r = corpus["results"]
    assert (r["z_honest"].status, r["z_honest"].total) == ("graded", 1.0), r["z_honest"]
    assert (r["z_empty"].status, r["z_empty"].total) == ("graded", 0.0), r["z_empty"]


@pytest.mark.parametrize("attack", hostile.ATTACKS)
def test_every_attack_earns_nothing(corpus, attack):
    r = corpus["results"][attack]
    assert r.total == 0.0, r
    assert r.status in {"graded", "timeout", "crashed", "tampered"}, r


def test_each_attack_ends_the_way_it_should(corpus):
    r = corpus["results"]
    assert r["a4_gil_loop"].status == "timeout"  # a C-level loop that holds the GIL ends at the time limit
    assert r["a4_detached"].status == "timeout"
    hog, bomb = r["a8_memory_hog"], r["a7_fork_bomb"]  # each ends at one of its limits
    assert hog.status in {"crashed", "timeout"} and ("memory" in hog.message or hog.status == "timeout"), hog
    assert bomb.status in {"graded", "crashed", "timeout"}, bomb  # forks refused, or stopped at a limit
    assert r["a1_patch_kernel"].status in {"graded", "tampered"}
    assert r["a6_read_solutions"].feedback["q1"].endswith("did you forget `return`?"), "it found a solution"


def test_no_process_of_any_submission_outlives_the_grading(corpus):
    assert _marked_processes() == []
    if os.geteuid() == 0:  # the sandbox's own uids: nothing runs as them any more
        from dcn_lessons.grading.sandbox import ROOT_RUN_UID, _uid_pids

        assert [p for slot in range(64) for p in _uid_pids(ROOT_RUN_UID + slot)] == []


def test_nothing_an_attack_aimed_at_changed(corpus):
    t = corpus["targets"]
    assert {p: _digest(p) for p in corpus["before"]} == corpus["before"]
    assert corpus["csv"].read_bytes() == corpus["csv_written"], "the CSV changed after the grader wrote it"
    rows = list(csv.DictReader(corpus["csv"].open()))
    assert [r["submission"] for r in rows] == [str(p) for p in corpus["paths"]]
    assert not Path(t["loot"]).exists() and not Path(t["host_tmp_file"]).exists()
    assert not Path(t["checkout_new_file"]).exists()
    site_dirs = [Path(p) for p in {*site.getsitepackages(), site.getusersitepackages()} if Path(p).is_dir()]
    assert _files_with_mark([REPO / "dcn_lessons", REPO / "notebooks", *site_dirs, Path(tempfile.gettempdir())]) == []


def test_the_grader_leaves_nothing_in_its_temporary_folder(corpus):
    assert list(corpus["own_tmp"].iterdir()) == []

