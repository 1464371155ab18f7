"""Grading a folder of submissions: each one in its own sandbox, judged in a clean process.

:func:`grade` does, in order:

1. reads the questions of the lesson (:mod:`.spec`) and every submission's bytes (a notebook that cannot be read
   is ``invalid``, reported once, and never runs);
2. takes the snapshot of the course package (:mod:`.snapshot`): HEAD of the checkout, or the installed files
   checked against their RECORD -- never the live checkout;
3. draws a seed per submission (``secrets``; or the ``seed`` given, to reproduce a grade) and has the clean
   process (:mod:`.verdict`, in a sandbox too) write each submission's inputs;
4. runs each submission in its own sandbox (:mod:`.sandbox`), ``jobs`` at a time, with a hard wall-clock limit
   from outside: the notebook top to bottom in a fresh kernel, then the driver (:mod:`.driver`) runs its answers
   on its inputs and hands back the raw results;
5. once every sandbox has ended, the clean process judges all results (:mod:`.verdict`): the references are
   computed there, from the seeds, with the checks of the snapshot.

Statuses: ``graded``; ``timeout`` (stopped at the wall-clock limit, no marks); ``crashed`` (the kernel died, or
the sandbox was stopped at its memory or process limit; no marks); ``tampered`` (the kernel lived but the
driver could not collect answers, or the answers came back malformed; no marks); ``invalid`` (not a readable
notebook). Whatever a submission does in memory -- replace otter's runner, ``runpy``, NumPy's comparisons, the
package's references -- changes only its own raw answers, which are then compared with references it cannot
reach.

A check may name package attributes to make unavailable (``Question.unavailable``): then a submission also runs a
second time on a snapshot where those attributes raise, and a question scores only when its answers are right in
both runs (an answer that merely calls the package's own implementation fails the second). The second run is
skipped when the first got none of those questions right: it could not change the grade.
"""
from __future__ import annotations

import csv
import json
import math
import os
import secrets
import shutil
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from dcn_lessons.grading import driver as _driver
from dcn_lessons.grading._base import GradingError, read_notebook
from dcn_lessons.grading.sandbox import IO_MOUNT, NO_SANDBOX_WARNING, PACKAGE_MOUNT, Limits, Sandbox, sandbox_env
from dcn_lessons.grading.snapshot import Snapshot, mask_snapshot, take_snapshot
from dcn_lessons.grading.spec import QuestionSpec, questions

#: Largest submission read (bytes).
MAX_NOTEBOOK = 64 * 2**20
STATUSES = ("graded", "timeout", "crashed", "tampered", "invalid")


@dataclass
class Result:
    """One submission's grade. ``feedback``: per question, the check's message when it failed."""

    submission: str
    status: str  # one of STATUSES
    scores: dict[str, float] = field(default_factory=dict)
    message: str = ""
    feedback: dict[str, str] = field(default_factory=dict)
    seed: int | None = None
    seconds: float = 0.0
    times: dict[str, float] = field(default_factory=dict)

    @property
    def total(self) -> float:
        return float(sum(self.scores.values()))


@dataclass
class _Run:
    """What one sandboxed run of a submission produced (before the verdict)."""

    status: str  # "ran" or a final status
    message: str = ""
    outputs: Path | None = None
    seconds: float = 0.0
    times: dict[str, float] = field(default_factory=dict)


class _Grading:
    """The state of one call of :func:`grade`: the grader's temporary folder, snapshot, sandbox and settings."""

    def __init__(self, root: Path, box: Sandbox, snap: Snapshot, plan: dict, limits: Limits, env: dict[str, str],
                 log) -> None:
        self.root, self.box, self.snap, self.plan, self.limits, self.env, self.log = root, box, snap, plan, limits, env, log
        self.io = root / "io"
        self.io.mkdir()
        os.chmod(self.io, 0o777)  # mounted only into the clean process, whose uid may be the sandbox's own

    # paths as the sandboxed commands see them
    def pkg_path(self, snap: Snapshot | None = None) -> str:
        return PACKAGE_MOUNT if self.box.enabled else str((snap or self.snap).root)

    def io_path(self, host: Path) -> str:
        return f"{IO_MOUNT}/{host.relative_to(self.io)}" if self.box.enabled else str(host)

    def _python(self, module: str) -> list[str]:
        return [sys.executable, "-s", "-P", "-m", module]

    def _env(self, home: str, snap: Snapshot | None = None) -> dict[str, str]:
        snap = snap or self.snap
        pkg = self.pkg_path(snap)
        extra = dict(self.env, PYTHONPATH=pkg)
        if snap.kernels is not None:
            extra["DCN_LESSONS_KERNELS"] = f"{pkg}/{snap.kernels.relative_to(snap.root).as_posix()}"
        return sandbox_env(home, extra)

    def clean(self, mode: str, job: dict, n: int) -> bytes:
        """Run the clean process (``verdict prepare|judge``) on ``job``; return its stdout."""
        work = Path(tempfile.mkdtemp(prefix=f"{mode}-", dir=self.root))
        request = work / "job.json"
        job = dict(job, exercises=f"{self.pkg_path()}/dcn_lessons/exercises")
        request.write_text(json.dumps(job))
        home = "/tmp/home" if self.box.enabled else str(work / "home")
        limits = Limits(wall_s=300 + 30 * n, memory_bytes=self.limits.memory_bytes, processes=self.limits.processes,
                        tmp_bytes=self.limits.tmp_bytes, file_bytes=self.limits.file_bytes)
        out = self.box.run(self._python("dcn_lessons.grading.verdict") + [mode], env=self._env(home),
                           ro=[(str(self.snap.root), PACKAGE_MOUNT)], rw=[(str(self.io), IO_MOUNT)],
                           stdin=request, limits=limits, workdir=work, chdir="/tmp" if self.box.enabled else str(work))
        if out.returncode != 0:
            what = f"({out.reason or 'exit code %s' % out.returncode}):\n{_printable(out.log.strip()[-1500:])}"
            if mode == "prepare":
                raise GradingError(f"the grader could not prepare the inputs {what}")
            self.log(f"warning: the checking process stopped {what}")
        return out.stdout

    def run_submission(self, index: int, name: str, data: bytes, inputs: Path, snap: Snapshot, tag: str) -> _Run:
        """Run one submission's notebook and driver in a sandbox; its encoded answers land in ``io/``."""
        work = Path(tempfile.mkdtemp(prefix=f"run-{index}-{tag}-", dir=self.root))
        try:
            inside = "/tmp" if self.box.enabled else str(work)
            header = {"notebook_name": Path(name).name, "notebook_bytes": len(data),
                      "inputs_bytes": inputs.stat().st_size, "plan": dict(self.plan, exercises=f"{self.pkg_path(snap)}/dcn_lessons/exercises"),
                      "work_dir": f"{inside}/work", "grade_dir": f"{inside}/grade"}
            request = work / "request"
            with open(request, "wb") as f:
                f.write(json.dumps(header).encode() + b"\n" + data + inputs.read_bytes())
            out = self.box.run(self._python("dcn_lessons.grading.driver"), env=self._env(f"{inside}/home", snap),
                               ro=[(str(snap.root), PACKAGE_MOUNT)], stdin=request, limits=self.limits, workdir=work,
                               chdir=inside)
            if out.leftovers:
                self.log(f"warning: {_printable(name)}: {len(out.leftovers)} process(es) outlived the run (pids "
                         f"{', '.join(map(str, out.leftovers[:5]))}): without the sandbox nothing contains them")
            if out.killed == "timeout":
                return _Run("timeout", out.reason, seconds=out.seconds)
            if out.killed:
                return _Run("crashed", out.reason, seconds=out.seconds)
            parsed = _driver.parse_result(out.stdout)
            if parsed is None:
                lines = [ln for ln in out.log.strip().splitlines() if ln.strip()]
                reason = lines[-1][:200] if lines else f"exit code {out.returncode}"
                return _Run("crashed", f"the run ended without a result ({reason})", seconds=out.seconds)
            meta, payload = parsed
            times = dict(meta.get("times") or {}, total_s=round(out.seconds, 3))
            status = str(meta.get("status"))
            if status == "error":  # before any cell ran: the grader's own set-up (the kernel would not start ...)
                self.log(_printable(f"warning: {name}: the grader could not run the notebook ({meta.get('message')}):\n"
                                    f"{out.log.strip()[-1500:]}"))
                return _Run("crashed", f"the grader could not run the notebook: {meta.get('message')}",
                            seconds=out.seconds, times=times)
            if status != "ran":
                final = status if status in ("crashed", "tampered") else "crashed"
                return _Run(final, str(meta.get("message", ""))[:500], seconds=out.seconds, times=times)
            target = self.io / f"answers-{index}-{tag}.bin"
            target.write_bytes(payload)
            return _Run("ran", outputs=target, seconds=out.seconds, times=times)
        finally:
            shutil.rmtree(work, ignore_errors=True)


def _printable(text: str, limit: int = 2000) -> str:
    """``text`` (which a submission may have chosen) without control characters: no terminal escape sequence
    reaches the instructor's terminal through a log line."""
    return "".join(ch if ch.isprintable() or ch in "\n\t" else "?" for ch in str(text)[:limit])


def _cell(text: str) -> str:
    """A CSV cell that no spreadsheet reads as a formula (a submission's file name is the student's choice)."""
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def _staged(submissions: list[Path]) -> list[tuple[str, bytes | None, str]]:
    staged = []
    for p in submissions:  # everything is read before anything runs
        try:
            read_notebook(p)
            data = Path(p).read_bytes()
            if len(data) > MAX_NOTEBOOK:
                raise GradingError(f"{p}: larger than {MAX_NOTEBOOK // 2**20} MiB")
            staged.append((str(p), data, ""))
        except GradingError as e:
            staged.append((str(p), None, str(e)))
        except OSError as e:
            staged.append((str(p), None, f"{p}: cannot be read ({e.strerror})"))
    return staged


def _judge(g: _Grading, specs: dict[str, QuestionSpec], runs: list[dict]) -> dict[int, dict]:
    """Verdicts of the clean process, by run id. Should it die on one run's answers, that run is marked and the
    rest judged in a fresh process."""
    job = {"questions": g.plan["questions"], "points": {q: s.points for q, s in specs.items()}}
    verdicts: dict[int, dict] = {}
    todo = list(runs)
    while todo:
        out = g.clean("judge", dict(job, runs=todo), len(todo))
        for line in out.decode(errors="replace").splitlines():
            try:
                v = json.loads(line)
                verdicts[int(v["id"])] = v
            except (ValueError, KeyError, TypeError):
                continue
        left = [r for r in todo if r["id"] not in verdicts]
        if left:
            culprit = left[0]
            verdicts[culprit["id"]] = {"id": culprit["id"], "status": "tampered", "scores": {}, "feedback": {},
                                       "message": "its answers stopped the checking process"}
            left = left[1:]
        todo = left
    return verdicts


def grade(source: Path, submissions: list[Path], timeout: float = 300.0, fast: bool = True, jobs: int = 1,
          log=None, sandbox: bool = True, seed: int | None = None, memory_gib: float = 6.0,
          processes: int = 256) -> list[Result]:
    """Grade each submission against the lesson ``source`` (master notebook or otter autograder zip).

    ``timeout``: seconds per submission, wall clock, enforced from outside; ``jobs``: submissions run at once;
    ``fast``: lessons in fast mode (``DCN_LESSONS_FAST=1``); ``sandbox=False``: no bubblewrap (see
    :data:`~dcn_lessons.grading.sandbox.NO_SANDBOX_WARNING`, said through ``log``); ``seed``: the same inputs for
    every submission (default: a fresh seed each); ``memory_gib``/``processes``: per-submission limits. Returns
    the results in the order of ``submissions``; nothing written by the grader is left in the temporary folder.
    """
    if not isinstance(jobs, int) or isinstance(jobs, bool) or not 1 <= jobs <= 64:
        raise GradingError(f"jobs: expected an integer from 1 to 64, got {jobs!r}")
    if not isinstance(timeout, (int, float)) or not (0 < timeout < math.inf):
        raise GradingError(f"timeout: expected a positive number of seconds, got {timeout!r}")
    if not (isinstance(memory_gib, (int, float)) and 0.25 <= memory_gib < math.inf):
        raise GradingError(f"memory: expected at least 0.25 GiB, got {memory_gib!r}")
    if not isinstance(processes, int) or processes < 16:
        raise GradingError(f"processes: expected an integer >= 16, got {processes!r}")
    log = log or (lambda message: None)
    specs = questions(Path(source))
    staged = _staged(list(submissions))
    box = Sandbox(enabled=sandbox)
    if not sandbox:
        log(NO_SANDBOX_WARNING)
    seeds = [int(seed) if seed is not None else secrets.randbits(62) for _ in staged]
    per_job = str(max(1, (os.cpu_count() or 1) // jobs))  # share the cores between the submissions that run at once
    env = {"DCN_LESSONS_FAST": "1" if fast else "0", "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": per_job,
           "MKL_NUM_THREADS": per_job, "NUMBA_NUM_THREADS": per_job, "OPENBLAS_NUM_THREADS": per_job}
    limits = Limits(wall_s=float(timeout), memory_bytes=int(memory_gib * 2**30), processes=processes)
    plan = {"questions": {q: [c.__dict__ for c in s.checks] for q, s in specs.items()}}
    root = Path(tempfile.mkdtemp(prefix="dcn-grade-"))
    try:
        snap = take_snapshot(root / "pkg")
        log(f"checks and package from {snap.source}")
        for note in snap.notes:
            log(note)
        g = _Grading(root, box, snap, plan, limits, env, log)
        valid = [i for i, (_, data, _) in enumerate(staged) if data is not None]
        inputs = {i: g.io / f"inputs-{i}.bin" for i in valid}
        masks = {}
        if valid:
            out = g.clean("prepare", {"questions": plan["questions"],
                                      "runs": [{"id": i, "seed": seeds[i], "path": g.io_path(inputs[i])} for i in valid]},
                          len(valid))
            masks = json.loads(out.decode() or "{}").get("unavailable", {})
        masked = mask_snapshot(snap, sorted({n for names in masks.values() for n in names}), root / "pkg-masked") \
            if any(masks.values()) else None
        runs: dict[int, _Run] = {}
        second: dict[int, _Run] = {}
        lock = threading.Lock()
        masked_questions = {key.split("/")[0] for key, names in masks.items() if names}

        def _second_run_matters(i: int, r: _Run) -> bool:
            """The masked run can only take marks away from a masked question that its first run got right: judge
            the first run alone, and skip the second (a whole notebook run) when no such question passed."""
            v = _judge(g, specs, [{"id": i, "seed": seeds[i], "path": g.io_path(r.outputs), "plain_only": True}])[i]
            return v.get("status") == "graded" and any(v["scores"].get(q, 0.0) > 0 for q in masked_questions)

        def one(i: int) -> None:
            name, data, _ = staged[i]
            start = time.monotonic()
            r = g.run_submission(i, name, data, inputs[i], snap, "plain")
            if masked is not None and r.status == "ran" and _second_run_matters(i, r):
                second[i] = g.run_submission(i, name, data, inputs[i], masked, "masked")
            with lock:
                runs[i] = r
            log(f"{_printable(name)}: {'ran' if r.status == 'ran' else r.status} ({time.monotonic() - start:.0f} s)"
                + (f" - {_printable(r.message)}" if r.message else ""))

        with ThreadPoolExecutor(max_workers=jobs) as pool:
            try:
                list(pool.map(one, valid))
            except BaseException:  # Ctrl-C, or a grader error: end every sandbox now, not at its time limit
                box.cancel()
                pool.shutdown(wait=True, cancel_futures=True)
                raise
        ran = [i for i in valid if runs[i].status == "ran"]
        judge_runs = [{"id": i, "seed": seeds[i], "path": g.io_path(runs[i].outputs)} for i in ran]
        for i in ran:
            if i in second:
                judge_runs[ran.index(i)]["masked"] = g.io_path(second[i].outputs) if second[i].status == "ran" else None
        verdicts = _judge(g, specs, judge_runs) if ran else {}
    finally:
        shutil.rmtree(root, ignore_errors=True)
    results = []
    for i, (name, data, error) in enumerate(staged):
        if data is None:
            r = Result(name, "invalid", message=error)
        elif runs[i].status != "ran":
            r = Result(name, runs[i].status, message=_printable(runs[i].message), seed=seeds[i],
                       seconds=runs[i].seconds, times=runs[i].times)
        else:
            v = verdicts[i]
            r = Result(name, v["status"], {q: float(s) for q, s in v.get("scores", {}).items()},
                       _printable(v.get("message", "")), {q: _printable(m) for q, m in v.get("feedback", {}).items()},
                       seeds[i], runs[i].seconds, runs[i].times)
        r.scores = {q: float(r.scores.get(q, 0.0)) if r.status == "graded" else 0.0 for q in specs}
        results.append(r)
        log(f"{_printable(name)}: {r.status} {r.total:g}/{sum(s.points for s in specs.values()):g}"
            + (f" - {r.message}" if r.message else ""))
    return results


def write_csv(results: list[Result], points: dict[str, float], path: Path) -> None:
    """One row per submission (scores per question, total, maximum, status, message, seed); written whole, then
    renamed into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(path.name + ".part")
    with open(part, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["submission", *points, "total", "max_total", "status", "message", "seed"])
        for r in results:
            w.writerow([_cell(r.submission), *(f"{r.scores.get(q, 0.0):g}" for q in points), f"{r.total:g}",
                        f"{sum(points.values()):g}", r.status, _cell(r.message), "" if r.seed is None else r.seed])
    part.replace(path)
