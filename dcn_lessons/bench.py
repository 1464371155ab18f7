"""How the course times code: ratios within one run, interleaved, median of repeats (the course's rule for measuring speed).

Absolute times drift from run to run and machine to machine; the ratio of two things timed in turn, in one
process, shares that drift. :func:`time_interleaved` runs the candidates as A B C A B C ... after a warm-up
and keeps every sample, so a caller reports ``median(ours) / median(baseline)`` (and, robust to bursts of
outside load, ``min(ours) / min(baseline)``). The benchmarks in ``benchmarks/`` and the timing cells of the
lessons all use it.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping, Optional

__all__ = ["Timing", "time_interleaved", "wall_time"]


@dataclass
class Timing:
    """The samples (seconds) of one candidate, with their median and minimum."""

    samples: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def min(self) -> float:
        return min(self.samples)


def wall_time(fn: Callable[[], object]) -> float:
    """Seconds one call of ``fn`` takes by the wall clock (``time.perf_counter``)."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def time_interleaved(
    fns: Mapping[str, Callable[[], object]],
    repeats: int,
    warmup: int = 2,
    timer: Optional[Callable[[Callable[[], object]], float]] = None,
) -> dict[str, Timing]:
    """Time each callable ``repeats`` times, in turn (A B C A B C ...), after ``warmup`` untimed rounds.

    Args:
        fns: name -> callable taking no arguments (closures over prepared inputs).
        repeats: timed rounds (>= 1).
        warmup: untimed rounds first (>= 0): compilation, allocator caches, lazy initialisation.
        timer: seconds of one call, :func:`wall_time` by default; pass a CUDA-event timer for GPU work.

    Returns:
        name -> :class:`Timing`, in the order of ``fns``.
    """
    if not fns:
        raise ValueError("fns: expected at least one callable to time")
    if not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats: expected an int >= 1, got {repeats!r}")
    if not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup: expected an int >= 0, got {warmup!r}")
    timer = wall_time if timer is None else timer
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    out = {name: Timing() for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            out[name].samples.append(float(timer(fn)))
    return out
