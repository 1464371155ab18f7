"""DCNv2 Tables 1 and 3 in miniature, measured (issue 13): a script, not a test. One command::

    python benchmarks/capstone_ablation.py            # 4 configs x 3 seeds, target <= 2 hours on 2 cores

It writes the default synthetic set if it is missing, then runs ``python -m dcn_lessons detect ablate`` with
the given options (``regular``, ``dcnv1``, ``dcnv2``, ``dcnv2_mimic`` x seeds 0, 1, 2 by default, each with its
config's own schedule; runs under ``runs/ablation``, resumable: a finished run is never trained again, an
interrupted one resumes exactly), and appends to ``benchmarks/results/ablation.md`` the machine, the wall time of
this invocation and the 2-hour target. Extra arguments go to ``ablate`` unchanged, e.g. ``--seeds 0`` or
``--iterations 500``.
"""
from __future__ import annotations

import os
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def main(argv: list[str]) -> int:
    import torch

    from bench_deform_conv_cpu import cpu_model
    from dcn_lessons.detection.checkpoint import atomic_write_text
    from dcn_lessons.detection.cli import default_root
    from dcn_lessons.detection.cli import main as detect
    from dcn_lessons.detection.synthetic import split_paths

    if "-h" in argv or "--help" in argv:
        print(__doc__)
        return detect(["ablate", "--help"])
    results = Path(argv[argv.index("--results") + 1]) if "--results" in argv else HERE / "results"
    if not split_paths(default_root(), "val")[1].is_file():
        code = detect(["make-data", "--quiet"])
        if code:
            return code
    runs = Path(argv[argv.index("--runs") + 1]) if "--runs" in argv else Path("runs/ablation")
    # a run folder already there (finished, or with a checkpoint to resume) means this invocation's wall time does
    # not cover all the training
    reused = sorted({p.parent for pattern in ("*/seed*/result.json", "*/seed*/checkpoint.pt")
                     for p in runs.glob(pattern)})
    partial = [flag for flag in ("--configs", "--seeds", "--iterations", "--batch-size") if flag in argv]
    load = os.getloadavg()[0]
    start = time.perf_counter()
    code = detect(["ablate", "--results", str(results), *argv])
    wall = time.perf_counter() - start
    if code == 0:
        md = results / "ablation.md"
        if partial or reused:
            verdict = (f"not judged (options changed: {' '.join(partial) or 'none'}; runs already under {runs}, "
                       f"finished or to resume: {len(reused)})")
        else:
            verdict = "met" if wall <= 7200 else "NOT met"
        note = (f"\nMachine: {cpu_model()}, {os.cpu_count()} logical CPUs, torch {torch.__version__} "
                f"({torch.get_num_threads()} threads), Python {platform.python_version()}; 1-min load at start "
                f"{load:.1f}. This invocation: {wall / 60:.1f} min by the wall clock (runs already finished are "
                f"not retrained, so a resumed ablation counts only what it ran); target <= 120 min for 4 configs x "
                f"3 seeds: {verdict}.\n")
        atomic_write_text(md, md.read_text() + note)
        print(note)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
