"""Run one lesson notebook top to bottom in *full* mode and keep what it printed (a record, not a test).

The lessons print their measured results (accuracies, verdicts, timings) rather than asserting them; the
README quotes the full-mode figures of some of them, and this script is where those come from:

    python benchmarks/run_lesson_full.py 05          # writes benchmarks/results/lesson05_full.txt

The record starts with the machine and the wall time, then every text output of every code cell, in order
(figures and widgets are left out). The notebook itself is not modified.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = REPO / "notebooks"
RESULTS = Path(__file__).resolve().parent / "results"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("lesson", help="lesson number, e.g. 05")
    ap.add_argument("--timeout", type=int, default=1800, help="seconds per cell (default 1800)")
    args = ap.parse_args()
    matches = sorted(NOTEBOOKS.glob(f"{args.lesson}_*.ipynb"))
    if len(matches) != 1:
        print(f"error: lesson {args.lesson!r} names no single notebook in {NOTEBOOKS}", file=sys.stderr)
        return 2
    path = matches[0]
    os.environ["DCN_LESSONS_FAST"] = "0"  # the kernel inherits it: full mode
    os.environ.setdefault("MPLBACKEND", "Agg")
    nb = nbformat.read(str(path), as_version=4)
    start = time.monotonic()
    NotebookClient(nb, timeout=args.timeout, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    elapsed = time.monotonic() - start
    import torch

    lines = [
        f"# {path.name}, full mode (DCN_LESSONS_FAST=0), {elapsed:.0f} s",
        f"# {platform.platform()}; {os.cpu_count()} logical CPUs; Python {platform.python_version()}; "
        f"torch {torch.__version__}",
    ]
    for i, cell in enumerate(nb.cells):
        texts = [o.get("text", "") for o in cell.get("outputs", []) if o.get("output_type") == "stream"]
        texts += [o["data"]["text/plain"] for o in cell.get("outputs", [])
                  if o.get("output_type") == "execute_result" and "text/plain" in o.get("data", {})]
        if any(t.strip() for t in texts):
            lines.append(f"\n## cell {i}")
            lines.extend(t.rstrip("\n") for t in texts if t.strip())
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"lesson{args.lesson}_full.txt"
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(out)
    print(f"{path.name}: {elapsed:.0f} s, printed output written to {out.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
