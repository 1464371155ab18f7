"""What the sandbox costs: per submission, beyond the notebook's own run time, and 30 submissions with --jobs 2.

    python benchmarks/bench_grading.py [LESSON] [--repeats 5] [--batch 30] [--jobs 2]

* **Per-submission overhead.** Interleaved (the course's rule, :func:`dcn_lessons.bench.time_interleaved`):
  A = the lesson's master notebook executed by nbclient in a fresh Python process on the host, no sandbox (from
  the process's start to the end of its last cell: imports, kernel start, every cell); B = the same notebook
  graded alone (``grade(..., jobs=1)``), the sandbox's own wall time (bubblewrap, the runner, kernel, cells, the
  driver's calls on the grader's inputs, until every process of the sandbox has ended). Reported: medians and
  minima of A, B and B - A; and the per-run costs outside any sandbox (snapshot of HEAD, the clean process
  preparing inputs and judging), B's ``grade`` wall time minus its sandbox time.
* **A batch.** ``--batch`` copies of the master graded in one call with ``--jobs``: wall time, and the
  distribution of the sandbox times.

Writes ``benchmarks/results/grading_<lesson>.json`` (``grading_<lesson>_overhead.json`` with ``--batch 0``; written
whole, then renamed) and prints a summary. Fast mode
(``DCN_LESSONS_FAST=1``), as grading runs by default.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
sys.path.insert(0, str(REPO))

from dcn_lessons import grading  # noqa: E402
from dcn_lessons.bench import time_interleaved  # noqa: E402

_PLAIN = """
import time
start = time.monotonic()
import sys
import nbformat
from nbclient import NotebookClient
nb = nbformat.read(sys.argv[1], as_version=4)
client = NotebookClient(nb, timeout=None, allow_errors=True, kernel_name="python3")
with client.setup_kernel():
    for i, cell in enumerate(nb.cells):
        client.execute_cell(cell, i)
    print(time.monotonic() - start, flush=True)
    import os
    os._exit(0)
"""


def _env() -> dict[str, str]:
    return dict(os.environ, DCN_LESSONS_FAST="1", MPLBACKEND="Agg", OMP_NUM_THREADS=str(os.cpu_count() or 1))


def plain_run(master: Path, work: Path) -> float:
    """Seconds from a fresh process's start to the end of the notebook's last cell, unconfined."""
    out = subprocess.run([sys.executable, "-c", _PLAIN, str(master)], cwd=work, env=_env(), capture_output=True,
                         text=True, timeout=1800)
    lines = out.stdout.strip().splitlines()
    if out.returncode != 0 or not lines:
        raise SystemExit(f"the plain run failed:\n{out.stderr[-2000:]}")
    return float(lines[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("lesson", nargs="?", default="00", help="lesson number (default: 00, the cheapest)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch", type=int, default=30)
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args()
    os.environ.update(DCN_LESSONS_FAST="1", MPLBACKEND="Agg")
    master = grading.find_lesson(args.lesson)
    grade_walls: list[float] = []
    sandbox_times: list[dict] = []

    def graded() -> float:
        start = time.monotonic()
        (r,) = grading.grade(master, [master], timeout=900, jobs=1)
        grade_walls.append(time.monotonic() - start)
        if r.status != "graded":
            raise SystemExit(f"grading the master failed: {r}")
        sandbox_times.append(dict(r.times))
        return r.seconds

    with tempfile.TemporaryDirectory() as work:
        timings = time_interleaved({"plain": lambda: plain_run(master, Path(work)), "sandboxed": graded},
                                   repeats=args.repeats, warmup=1, timer=lambda fn: fn())
    grade_walls, sandbox_times = grade_walls[1:], sandbox_times[1:]  # the warm-up round
    plain, boxed = timings["plain"], timings["sandboxed"]
    outside = [w - s for w, s in zip(grade_walls, boxed.samples)]
    print(f"{master.name}: plain median {plain.median:.2f} s (min {plain.min:.2f}), sandboxed median "
          f"{boxed.median:.2f} s (min {boxed.min:.2f}): overhead median {boxed.median - plain.median:+.2f} s, "
          f"min {boxed.min - plain.min:+.2f} s; per grade call outside the sandbox (snapshot, prepare, judge) "
          f"median {statistics.median(outside):.2f} s", flush=True)

    batch_wall, statuses, per = None, [], []
    with tempfile.TemporaryDirectory() as folder:
        paths = []
        for i in range(args.batch):
            p = Path(folder) / f"sub{i:02d}.ipynb"
            p.write_bytes(master.read_bytes())
            paths.append(p)
        if paths:  # --batch 0: the per-submission part only
            start = time.monotonic()
            results = grading.grade(master, paths, timeout=900, jobs=args.jobs)
            batch_wall = time.monotonic() - start
            statuses = sorted({r.status for r in results})
            per = [r.seconds for r in results]
            print(f"{args.batch} submissions with --jobs {args.jobs}: {batch_wall:.0f} s wall (statuses {statuses}; "
                  f"sandbox time per submission median {statistics.median(per):.1f} s, max {max(per):.1f} s)",
                  flush=True)

    record = {
        "lesson": master.stem,
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
                    "python": platform.python_version(), "uid": os.geteuid(), "load_1min_at_end": os.getloadavg()[0]},
        "per_submission": {"repeats": args.repeats, "plain_s": plain.samples, "sandboxed_s": boxed.samples,
                           "plain_median_s": plain.median, "sandboxed_median_s": boxed.median,
                           "overhead_median_s": boxed.median - plain.median, "overhead_min_s": boxed.min - plain.min,
                           "outside_sandbox_per_grade_call_s": outside, "sandbox_phases": sandbox_times},
        "batch": {"submissions": args.batch, "jobs": args.jobs, "wall_s": batch_wall, "statuses": statuses,
                  "sandbox_s": per},
    }
    RESULTS.mkdir(exist_ok=True)
    target = RESULTS / f"grading_{master.stem}{'' if args.batch else '_overhead'}.json"
    part = target.with_name(target.name + ".tmp")
    part.write_text(json.dumps(record, indent=1) + "\n")
    part.replace(target)
    print(f"written to {target.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
