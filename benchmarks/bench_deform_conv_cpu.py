"""CPU benchmark of dcn_lessons.ops.deform_conv2d against F.conv2d of the same shape (a benchmark, not a test).

One process, 2 threads (``torch.set_num_threads(2)``). Each path (the tensor path, the compiled "fast"
path) is timed in its own interleaved pair with the baseline (baseline, ours, baseline, ours, ...), so the
two never disturb each other's caches; ratio = median(ours) / median(F.conv2d) of that pair, for the
forward pass and for forward+backward (gradients for input, offset, weight, bias and mask), v1 (mask=None)
and v2. For the compiled path it also times forward+backward with its sampling kernels on 2 threads against
1 (``kernel_threads_2_over_1``; the GEMMs use PyTorch's 2 threads either way), interleaved the same way.
Shapes (the issue's): N=2, 3x3 kernel, pad 1, offsets ~ N(0, 1): C=O=64 at 32x32, C=O=128 at 32x32,
C=O=256 at 16x16.

Memory: *analytic* bytes of the columns buffer one chunk holds (``chunk * C*kh*kw * Ho*Wo * itemsize``;
the tensor path's gather temporaries add about one more buffer of that size), and the *measured* peak RSS
growth of a fresh child process running one forward+backward (Linux: the peak ``VmHWM`` is reset through
``/proc/self/clear_refs`` right before the call, then ``VmHWM - VmRSS before``), so the number includes the allocator's caching and everything else that call
allocates; F.conv2d measured the same way for comparison.

Usage: ``python benchmarks/bench_deform_conv_cpu.py [--repeats 31] [--quick]``; prints a Markdown table
and writes ``benchmarks/results/deform_conv_cpu.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from dcn_lessons.bench import time_interleaved
from dcn_lessons.ops import deform_conv as D
from dcn_lessons.ops._columns import chunk_size

SHAPES = [(2, 64, 32, 32), (2, 128, 32, 32), (2, 256, 16, 16)]
RESULTS = Path(__file__).resolve().parent / "results" / "deform_conv_cpu.json"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def make(n: int, c: int, h: int, w: int, modulated: bool, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return dict(
        x=torch.randn(n, c, h, w, generator=g),
        off=torch.randn(n, 18, h, w, generator=g),
        w=torch.randn(c, c, 3, 3, generator=g) / (3 * c**0.5),
        b=torch.randn(c, generator=g),
        m=torch.rand(n, 9, h, w, generator=g) if modulated else None,
    )


def runner(kind: str, t: dict, backward: bool) -> Callable[[], None]:
    """A closure running one forward (and backward) of F.conv2d or deform_conv2d on fresh leaves."""
    def leaves() -> dict:
        return {k: (v.detach().requires_grad_(backward) if v is not None else None) for k, v in t.items()}

    if kind == "conv2d":
        def run() -> None:
            a = leaves()
            y = F.conv2d(a["x"], a["w"], a["b"], 1, 1)
            if backward:
                y.backward(torch.ones_like(y))
    else:
        backend = "cpu-numba" if kind == "fast" else "tensor"

        def run() -> None:
            os.environ["DCN_LESSONS_BACKEND"] = backend
            a = leaves()
            y = D.deform_conv2d(a["x"], a["off"], a["w"], a["b"], 1, 1, 1, mask=a["m"])
            if backward:
                y.backward(torch.ones_like(y))
    return run


def pair(a: Callable[[], None], b: Callable[[], None], repeats: int) -> dict[str, float]:
    """Medians and minima (seconds) of ``a`` and ``b`` timed in turn (dcn_lessons.bench.time_interleaved)."""
    t = time_interleaved({"a": a, "b": b}, repeats, warmup=2)
    return dict(a=t["a"].median, b=t["b"].median, min_a=t["a"].min, min_b=t["b"].min)


def with_kernel_threads(n: int, fn: Callable[[], None]) -> Callable[[], None]:
    """``fn`` with the compiled path's sampling kernels on ``n`` threads (its KERNEL_THREADS knob)."""
    def run() -> None:
        from dcn_lessons.ops import _cpu_numba

        _cpu_numba.KERNEL_THREADS = n
        try:
            fn()
        finally:
            _cpu_numba.KERNEL_THREADS = None
    return run


def rss_child(kind: str, shape: tuple[int, int, int, int], modulated: bool) -> Optional[int]:
    """Peak RSS growth (bytes) of one forward+backward in a fresh process (Linux VmHWM after resetting it)."""
    code = f"""
import os, torch
torch.set_num_threads(2)
os.environ["DCN_LESSONS_BACKEND"] = {"cpu-numba" if kind == "fast" else "tensor"!r}
import sys; sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})
from bench_deform_conv_cpu import make, runner
t = make(*{shape!r}, modulated={modulated!r})
small = make(1, 4, 6, 6, modulated={modulated!r})
runner({kind!r}, small, True)()  # load libraries and compile before the baseline
import gc; gc.collect()
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1])
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the peak (VmHWM) to the current RSS
before = status("VmRSS:")
runner({kind!r}, t, True)()
print(status("VmHWM:") - before)
"""
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, check=True)
        return int(out.stdout.strip().splitlines()[-1]) * 1024
    except (subprocess.SubprocessError, ValueError, IndexError):
        return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=31)
    ap.add_argument("--quick", action="store_true", help="first shape only, 5 repeats, no memory")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    torch.set_num_threads(2)
    fast_ok = D.cpu_fast_path_available()
    shapes = SHAPES[:1] if args.quick else SHAPES
    repeats = 5 if args.quick else args.repeats
    rows = []
    for shape in shapes:
        n, c, h, w = shape
        for modulated in (False, True):
            t = make(n, c, h, w, modulated)
            kinds = ["conv2d", "tensor"] + (["fast"] if fast_ok else [])
            row: dict = dict(shape=f"N={n} C=O={c} {h}x{w}", version="v2" if modulated else "v1")
            for phase, bwd in (("fwd", False), ("fwdbwd", True)):
                for k in kinds[1:]:  # each path timed in its own interleaved pair with the baseline
                    r = pair(runner("conv2d", t, bwd), runner(k, t, bwd), repeats)
                    row[f"{phase}_{k}_ms"] = r["b"] * 1e3
                    row[f"{phase}_{k}_ratio"] = r["b"] / r["a"]
                    row[f"{phase}_{k}_min_ratio"] = r["min_b"] / r["min_a"]
                    row[f"{phase}_conv2d_ms"] = r["a"] * 1e3  # the last pair's (the fast path's)
                    row[f"{phase}_conv2d_min_ms"] = r["min_a"] * 1e3
            if fast_ok:  # the compiled path's sampling kernels on 2 threads against 1 (its default here)
                fb = runner("fast", t, True)
                r = pair(with_kernel_threads(1, fb), with_kernel_threads(2, fb), repeats)
                row["kernel_threads_2_over_1"] = r["b"] / r["a"]
                row["kernel_threads_2_over_1_min"] = r["min_b"] / r["min_a"]
            cols_bytes = chunk_size(n, c * 9, h * w, 4) * c * 9 * h * w * 4
            row["columns_buffer_bytes"] = cols_bytes
            if not args.quick:
                for k in kinds:
                    row[f"peak_rss_growth_{k}_bytes"] = rss_child(k, shape, modulated)
            rows.append(row)
            print(f"done {row['shape']} {row['version']}", file=sys.stderr, flush=True)

    def fmt(v: Optional[float], unit: str = "") -> str:
        return "n/a" if v is None else f"{v:.2f}{unit}"

    lines = [
        f"CPU: {cpu_model()}; threads: {torch.get_num_threads()}; torch {torch.__version__}; "
        f"fast path: {'numba' if fast_ok else 'unavailable'}; median of {repeats} interleaved repeats",
        "",
        "Ratios: median(ours)/median(F.conv2d), with min(ours)/min(F.conv2d) in brackets (robust to outside load).",
        "",
        "| shape | ver | conv2d fwd ms | tensor fwd x | fast fwd x | conv2d f+b ms | tensor f+b x | fast f+b x "
        "| fast f+b, kernels on 2 threads / 1 | columns MiB | peak RSS growth MiB conv2d / tensor / fast |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    mib = 2.0**20

    def both(r: dict, phase: str, kind: str) -> str:
        return f"{fmt(r.get(f'{phase}_{kind}_ratio'))} ({fmt(r.get(f'{phase}_{kind}_min_ratio'))})"

    for r in rows:
        rss = [r.get(f"peak_rss_growth_{k}_bytes") for k in ("conv2d", "tensor", "fast")]
        rss_s = " / ".join("n/a" if v is None else f"{v / mib:.1f}" for v in rss)
        lines.append(
            f"| {r['shape']} | {r['version']} | {r['fwd_conv2d_ms']:.2f} | {both(r, 'fwd', 'tensor')} | "
            f"{both(r, 'fwd', 'fast')} | {r['fwdbwd_conv2d_ms']:.2f} | {both(r, 'fwdbwd', 'tensor')} | "
            f"{both(r, 'fwdbwd', 'fast')} | {fmt(r.get('kernel_threads_2_over_1'))} "
            f"({fmt(r.get('kernel_threads_2_over_1_min'))}) | {r['columns_buffer_bytes'] / mib:.2f} | {rss_s} |"
        )
    print("\n".join(lines))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    machine = dict(
        cpu_model=cpu_model(), logical_cpus=os.cpu_count(), threads=torch.get_num_threads(),
        torch=torch.__version__, python=platform.python_version(), platform=platform.platform(),
        load_average_1_5_15_at_end=os.getloadavg(),  # > ~0.5 means other work shared the 2 cores: rerun
    )
    try:
        import numba

        machine["numba"] = numba.__version__
    except ImportError:
        pass
    args.out.write_text(json.dumps(dict(
        machine=machine, repeats=repeats,
        memory_method="columns_buffer_bytes: analytic, one chunk of float32 columns; peak_rss_growth: "
        "VmHWM - VmRSS of a fresh child process over one forward+backward (peak reset just before the call)",
        ratio="median(ours)/median(F.conv2d), same process, ours and the baseline interleaved in pairs; "
        "*_min_ratio: min(ours)/min(F.conv2d)", rows=rows, table="\n".join(lines),
    ), indent=2) + "\n")


if __name__ == "__main__":
    main()
