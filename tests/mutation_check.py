"""Mutation check (issue 16): typical bugs, each applied to a copy of the package, must each fail a test.

Each mutant is one bug a contributor could plausibly write -- Δy and Δx swapped, the line y = -1 counted as inside
the map, a wrong sign in a position gradient, an off-by-one at the border -- in each backend that runs without a
GPU: the tensor primitives (``dcn_lessons/ops/_primitives.py``), the Numba kernels (``dcn_lessons/ops/_cpu_numba.py``)
and the CUDA source (``kernels/*.cu*``, run by the CPU emulator). Five more: the RoI clamp rule of the NumPy
reference and of the tensor path (a clamped coordinate that still moves); two bugs that tests named by the issue
could not catch before (a weight gradient computed though nobody asked for it; kernel points handed each other's
offsets); and an identity a lesson demonstrates (lesson 03: the modulation scalar multiplies a sample once, so
``mask=0.5`` gives half of ``mask=1``), which only the lesson's own assertion is asked to catch.

How: what the tests need (``dcn_lessons/``, ``kernels/``, ``tests/``, ``benchmarks/``, the lesson notebooks and
``pyproject.toml``) is copied to a temporary folder. The tests named for the mutants first run there unmutated and
must pass (else no verdict: exit status 2). Then, for each mutant, one file of the copy is edited, the mutant's
tests run in a fresh ``python -m pytest`` inside the copy (the copy comes first on ``sys.path``, also for notebook
kernels and subprocesses; the emulator's cache and, for Numba mutants, Numba's cache are the copy's own; no
bytecode is written), and the file is restored. A mutant is caught when pytest reports a failing test (exit status
1); an import or collection error does not count. The working tree is never written to, so an interrupted run
leaves nothing in it; the temporary folder is removed at the end.

Usage (from the repository root)::

    .venv/bin/python tests/mutation_check.py               # every mutant, each stopped at its first failing test
    .venv/bin/python tests/mutation_check.py --list        # the mutants and the tests that must catch them
    .venv/bin/python tests/mutation_check.py --only numba-border-off-by-one lesson03-mask-applied-twice
    .venv/bin/python tests/mutation_check.py --all-tests   # each mutant against every operator test, all failures

Exit status: 0 when every mutant is caught, 1 when one survives (or fails to run), 2 when the unmutated tests fail.
Time: 2.5 to 4.5 minutes on the course's shared 2-core machine (148 s and 268 s measured, depending on what else
ran; the mutated Numba kernels and CUDA source are recompiled for each of their mutants), too long for ``make test``:
CI runs it as a step of its own, and ``tests/test_mutation_check.py`` keeps every mutant applicable in each
``make test`` run without running it.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

#: Every test file of the operators and their references (``--all-tests``); the lesson mutant adds its notebook.
OPERATOR_TESTS = (
    "tests/test_ops_deform_conv.py", "tests/test_ops_bilinear.py", "tests/test_ops_roi.py", "tests/test_ops_layers.py",
    "tests/test_cuda_emulated.py", "tests/test_library.py", "tests/test_reference_bilinear.py",
    "tests/test_reference_deform_conv.py", "tests/test_reference_roi.py",
)
#: Seconds one pytest run may take before it counts as a failure to run (not as a catch).
RUN_TIMEOUT_S = 1800


class MutationError(RuntimeError):
    """A mutant no longer applies to the sources (its original text is gone or ambiguous): update the mutant."""


@dataclass(frozen=True)
class Mutant:
    """One bug: ``edits`` replace, in ``path`` (relative to the repository), each original text -- which must occur
    exactly once -- by its mutated text. ``tests`` are pytest node ids that must fail with the bug in place.
    ``where`` names the backend or tier, ``kind`` the sort of bug."""

    name: str
    where: str
    kind: str
    bug: str
    path: str
    edits: tuple[tuple[str, str], ...]
    tests: tuple[str, ...]

    def apply(self, text: str) -> str:
        """``text`` with the bug in it; MutationError if an original text is not found exactly once."""
        for old, new in self.edits:
            count = text.count(old)
            if count != 1:
                raise MutationError(f"{self.name}: the text to mutate occurs {count} times in {self.path} "
                                    f"(expected once): {old!r}")
            text = text.replace(old, new)
        return text


_PRIM = "dcn_lessons/ops/_primitives.py"
_NUMBA = "dcn_lessons/ops/_cpu_numba.py"
_CONV_CU = "kernels/deform_conv.cu"
_BILINEAR_CUH = "kernels/dcn_bilinear.cuh"
_OPS = "tests/test_ops_deform_conv.py::"
_EMU = "tests/test_cuda_emulated.py::"

MUTANTS: tuple[Mutant, ...] = (
    # ---- tensor primitives
    Mutant("tensor-swap-dy-dx", "tensor", "swap", "the sampling position reads Δx as the row offset and Δy as the "
           "column offset", _PRIM,
           (("    py = ky[:, None] + oy[None, :] + off[:, :, :, 0]\n    px = kx[:, None] + ox[None, :] + off[:, :, :, 1]",
             "    py = ky[:, None] + oy[None, :] + off[:, :, :, 1]\n    px = kx[:, None] + ox[None, :] + off[:, :, :, 0]"),),
           (_OPS + "test_agrees_with_numpy_reference",)),
    Mutant("tensor-y-minus-1-inside", "tensor", "y=-1 inside", "a sample exactly on y = -1 counts as inside "
           "(its gradient becomes x(0) - 0)", _PRIM,
           (("inside = (py > -1) & (py < height)", "inside = (py >= -1) & (py < height)"),),
           (_OPS + "test_offset_gradient_is_zero_outside",)),
    Mutant("tensor-gradient-sign", "tensor", "gradient sign", "one term of the Δy gradient has the wrong sign", _PRIM,
           (("return cr.hx * (s10 - s00) + cr.lx * (s11 - s01)", "return cr.hx * (s00 - s10) + cr.lx * (s11 - s01)"),),
           (_OPS + "test_gradcheck_all_arguments",)),
    Mutant("tensor-border-off-by-one", "tensor", "border off-by-one", "samples in the last row band H-1 <= y < H "
           "count as outside", _PRIM,
           (("(py > -1) & (py < height) &", "(py > -1) & (py < height - 1) &"),),
           (_OPS + "test_integer_coordinate_rule_matches_reference",)),
    # ---- Numba kernels
    Mutant("numba-swap-dy-dx", "cpu-numba", "swap", "the sampling position reads Δx as the row offset and Δy as "
           "the column offset", _NUMBA,
           (("py = T(yo * sh - ph + i * dh) + off[b, oc, l_]\n        px = T(xo * sw - pw + j * dw) + off[b, oc + 1, l_]",
             "py = T(yo * sh - ph + i * dh) + off[b, oc + 1, l_]\n        px = T(xo * sw - pw + j * dw) + off[b, oc, l_]"),),
           (_OPS + "test_agrees_with_numpy_reference",)),
    Mutant("numba-y-minus-1-inside", "cpu-numba", "y=-1 inside", "a sample exactly on y = -1 counts as inside",
           _NUMBA, (("if not (py > -1.0 and py < h", "if not (py >= -1.0 and py < h"),),
           (_OPS + "test_offset_gradient_is_zero_outside",)),
    Mutant("numba-gradient-sign", "cpu-numba", "gradient sign", "one term of the Δy gradient has the wrong sign",
           _NUMBA, (("goff[b, oc, l_] = m * (hx * (s10 - s00)", "goff[b, oc, l_] = m * (hx * (s00 - s10)"),),
           (_OPS + "test_gradcheck_all_arguments",)),
    Mutant("numba-border-off-by-one", "cpu-numba", "border off-by-one", "the zero-bordered copy of the input "
           "misses the last column (x = W-1 reads 0)", _NUMBA,
           (("for xx in range(w):\n                    dst[xx + 1, ch] = src[xx]",
             "for xx in range(w - 1):\n                    dst[xx + 1, ch] = src[xx]"),),
           (_OPS + "test_agrees_with_numpy_reference",)),
    # ---- CUDA source, through the emulator
    Mutant("cuda-swap-dy-dx", "cuda-emulated", "swap", "dcn_conv_position reads Δx as the row offset and Δy as the "
           "column offset", _CONV_CU,
           (("*py = (A)(y * s.sh - s.ph + i * s.dh) + dcn_load(off);\n  *px = (A)(x * s.sw - s.pw + j * s.dw) + dcn_load(off + L);",
             "*py = (A)(y * s.sh - s.ph + i * s.dh) + dcn_load(off + L);\n  *px = (A)(x * s.sw - s.pw + j * s.dw) + dcn_load(off);"),),
           (_EMU + "test_deform_conv_kernels_match_reference",)),
    Mutant("cuda-y-minus-1-inside", "cuda-emulated", "y=-1 inside", "dcn_conv_corners counts a sample exactly on "
           "y = -1 as inside", _BILINEAR_CUH,
           (("c.inside = (y > T(-1) && y < T(H)", "c.inside = (y >= T(-1) && y < T(H)"),),
           (_OPS + "test_offset_gradient_is_zero_outside",)),
    Mutant("cuda-gradient-sign", "cuda-emulated", "gradient sign", "one corner's d w / d y has the wrong sign",
           _BILINEAR_CUH, (("c.wy[0] = -sy * hx;", "c.wy[0] = sy * hx;"),),
           (_EMU + "test_deform_conv_kernels_match_reference",)),
    Mutant("cuda-border-off-by-one", "cuda-emulated", "border off-by-one", "dcn_conv_corners treats the last row "
           "band H-1 <= y < H as outside", _BILINEAR_CUH,
           (("c.inside = (y > T(-1) && y < T(H) &&", "c.inside = (y > T(-1) && y < T(H - 1) &&"),),
           (_EMU + "test_deform_conv_kernels_match_reference",)),
    # ---- the RoI clamp rule
    Mutant("reference-roi-clamped-y-moves", "reference", "clamp", "the NumPy reference differentiates a RoI sample "
           "clamped to row 0 in y", "dcn_lessons/reference/roi.py",
           (("y_moves, x_moves = y > 0.0, x > 0.0", "y_moves, x_moves = True, x > 0.0"),),
           ("tests/test_reference_roi.py::test_offset_gradient_is_zero_in_the_clamped_direction",)),
    Mutant("tensor-roi-clamped-moves", "tensor", "clamp", "the tensor path's RoI rule differentiates a coordinate "
           "clamped to 0", "dcn_lessons/ops/_roi_plan.py",
           (("active = ((coord > 0) & ~top)", "active = ((coord > -1) & ~top)"),),
           ("tests/test_ops_roi.py::test_agreement_on_integer_positions_clamp_band_and_outside",)),
    # ---- what two of the tests the issue named could not catch before
    Mutant("tensor-unrequested-weight-gradient", "tensor", "wasted work", "the columns path computes the weight "
           "gradient (an im2col per chunk) even when the weight does not require one", "dcn_lessons/ops/_columns.py",
           (("device=weight.device) if need_weight else None", "device=weight.device) if True else None"),),
           (_OPS + "test_only_requested_gradients_are_computed",)),
    Mutant("geometry-kernel-points-reversed", "geometry", "order of k", "constant_offset_field hands kernel point k "
           "the offsets of point K-1-k", "dcn_lessons/geometry.py",
           (("flat = offsets.reshape(-1)", "flat = offsets[::-1].reshape(-1)"),),
           ("tests/test_geometry.py::test_constant_offset_field_layout",)),
    # ---- an identity a lesson demonstrates, caught by the lesson's own assertion
    Mutant("lesson03-mask-applied-twice", "lesson", "identity", "the NumPy reference multiplies each sample by Δm "
           "twice (mask = 1 still equals DCNv1; lesson 03 states mask = 0.5 gives half of it)",
           "dcn_lessons/reference/deform_conv.py",
           (("v = v * mask[n, gi * K:(gi + 1) * K][None]", "v = v * mask[n, gi * K:(gi + 1) * K][None] ** 2"),),
           ("tests/test_notebooks.py::test_notebook_runs_in_fast_mode[03_modulation]",)),
)


# ------------------------------------------------------------------------------------------------ running
def make_copy(dest: Path) -> None:
    """Copy what the tests need into ``dest`` (``dcn_lessons/kernels`` stays a link to the copy's ``kernels/``)."""
    ignore = shutil.ignore_patterns(".hypothesis", ".pytest_cache", "student", "*.tmp")
    for name in ("dcn_lessons", "kernels", "tests", "benchmarks"):
        shutil.copytree(REPO / name, dest / name, symlinks=True, ignore=ignore)
    (dest / "notebooks").mkdir()
    for nb in sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        shutil.copy2(nb, dest / "notebooks" / nb.name)
    shutil.copy2(REPO / "pyproject.toml", dest / "pyproject.toml")


def environment(copy: Path) -> dict[str, str]:
    """The environment of every run: the copy first on sys.path, fast mode, the emulator cache in the copy."""
    env = {k: v for k, v in os.environ.items() if k not in ("DCN_LESSONS_BACKEND", "DCN_LESSONS_KERNELS")}
    env["PYTHONPATH"] = os.pathsep.join([str(copy)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.update(DCN_LESSONS_FAST="1", MPLBACKEND="Agg", DCN_LESSONS_CACHE=str(copy / ".cache"),
               PYTHONDONTWRITEBYTECODE="1")  # a mutant's bytecode must never outlive it
    return env


def check_isolation(copy: Path, env: dict[str, str]) -> None:
    """The package and its kernels are imported from the copy (also from a notebook kernel's folder)."""
    code = "import dcn_lessons; from dcn_lessons.cuda import kernels_dir; print(dcn_lessons.__file__); print(kernels_dir())"
    out = subprocess.run([sys.executable, "-c", code], cwd=copy / "notebooks", env=env, capture_output=True,
                         text=True, timeout=300)
    paths = out.stdout.split()
    if out.returncode != 0 or len(paths) != 2 or not all(Path(p).resolve().is_relative_to(copy.resolve()) for p in paths):
        raise RuntimeError(f"the copy is not what gets imported (got {paths}):\n{out.stderr[-2000:]}")


@dataclass
class Run:
    status: int
    failed: list[str]
    seconds: float
    tail: str


def run_pytest(copy: Path, env: dict[str, str], tests: tuple[str, ...], stop_first: bool) -> Run:
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--no-header", "-rf", "--tb=line",
           *(["-x"] if stop_first else []), *tests]
    start = time.monotonic()
    try:
        proc = subprocess.run(cmd, cwd=copy, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        return Run(-1, [], time.monotonic() - start, f"timed out after {RUN_TIMEOUT_S} s\n{out[-1500:]}")
    failed = re.findall(r"^FAILED (\S+)", proc.stdout, re.MULTILINE)
    return Run(proc.returncode, failed, time.monotonic() - start, (proc.stdout + proc.stderr)[-1500:])


def run_mutant(m: Mutant, copy: Path, env: dict[str, str], tests: tuple[str, ...], stop_first: bool) -> Run:
    """Run ``tests`` with ``m`` applied to the copy; the file is restored (contents and time stamp) afterwards."""
    target = copy / m.path
    original, stamp = target.read_bytes(), target.stat()
    mutated = m.apply(original.decode())
    env = dict(env)
    if m.path == _NUMBA:  # Numba keys its on-disk cache by the source's time stamp: give the mutant its own
        env["NUMBA_CACHE_DIR"] = tempfile.mkdtemp(prefix="numba-", dir=copy)
    try:
        target.write_text(mutated)
        return run_pytest(copy, env, tests, stop_first)
    finally:  # the original bytes and time stamp: the copy's bytecode and caches stay valid for the next run
        target.write_bytes(original)
        os.utime(target, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
        if "NUMBA_CACHE_DIR" in env:
            shutil.rmtree(env["NUMBA_CACHE_DIR"], ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--list", action="store_true", help="print the mutants and their tests, run nothing")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run only these mutants")
    parser.add_argument("--all-tests", action="store_true",
                        help="run every operator test file against each mutant and list every failure (slow)")
    args = parser.parse_args(argv)
    mutants = list(MUTANTS)
    if args.only:
        unknown = sorted(set(args.only) - {m.name for m in MUTANTS})
        if unknown:
            parser.error(f"--only: unknown mutants {unknown}; --list shows them")
        mutants = [m for m in MUTANTS if m.name in args.only]
    for m in mutants:  # fail early, before any copying, if a mutant no longer applies
        m.apply((REPO / m.path).read_text())
    if args.list:
        for m in mutants:
            print(f"{m.name:36s} [{m.where}, {m.kind}] {m.bug}\n{'':36s} {m.path}; must fail: {' '.join(m.tests)}")
        return 0

    def tests_for(m: Mutant) -> tuple[str, ...]:
        return tuple(dict.fromkeys(OPERATOR_TESTS + m.tests)) if args.all_tests else m.tests

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="dcn-mutants-") as tmp:
        copy = Path(tmp)
        make_copy(copy)
        env = environment(copy)
        check_isolation(copy, env)
        union = tuple(dict.fromkeys(t for m in mutants for t in tests_for(m)))
        print(f"unmutated: {len(union)} test selections in a copy at {copy} ...", flush=True)
        base = run_pytest(copy, env, union, stop_first=False)
        if base.status != 0:
            print(f"the unmutated tests do not pass (pytest exit status {base.status}): no verdict\n{base.tail}")
            return 2
        print(f"unmutated: pass ({base.seconds:.0f} s)", flush=True)
        survived = []
        for m in mutants:
            r = run_mutant(m, copy, env, tests_for(m), stop_first=not args.all_tests)
            if r.status == 1 and r.failed:
                shown = r.failed if args.all_tests else r.failed[:1]
                print(f"caught    {m.name:36s} {r.seconds:5.0f} s  by {len(r.failed)} test(s): {' '.join(shown)}",
                      flush=True)
            else:
                survived.append(m.name)
                why = "SURVIVED: every test passed" if r.status == 0 else f"did not run (pytest exit status {r.status})"
                print(f"{why:9s} {m.name:36s} {r.seconds:5.0f} s  {m.bug}\n{r.tail}", flush=True)
    total = time.monotonic() - started
    if survived:
        print(f"{len(survived)} of {len(mutants)} mutants not caught: {', '.join(survived)} ({total:.0f} s)")
        return 1
    print(f"every mutant caught: {len(mutants)} of {len(mutants)} ({total:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
