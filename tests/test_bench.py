"""dcn_lessons.bench: the interleaved timer every benchmark and lesson uses (structure only: no real timing)."""
from __future__ import annotations

import pytest

from dcn_lessons.bench import Timing, time_interleaved, wall_time


def test_candidates_run_in_turn_after_the_warm_up():
    calls = []
    fns = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    fake = iter([3.0, 1.0, 2.0, 5.0, 1.0, 4.0])  # a, b, a, b, a, b

    def timer(fn):
        fn()
        return next(fake)

    res = time_interleaved(fns, repeats=3, warmup=2, timer=timer)
    assert calls == ["a", "b"] * 5  # 2 warm-up rounds, then 3 timed, interleaved
    assert list(res) == ["a", "b"]
    assert res["a"].samples == [3.0, 2.0, 1.0] and res["a"].median == 2.0 and res["a"].min == 1.0
    assert res["b"].samples == [1.0, 5.0, 4.0] and res["b"].median == 4.0 and res["b"].min == 1.0


def test_wall_time_calls_once_and_is_non_negative():
    calls = []
    assert wall_time(lambda: calls.append(1)) >= 0 and calls == [1]
    assert Timing([2.0, 4.0]).median == 3.0


@pytest.mark.parametrize("kwargs, word", [
    (dict(fns={}, repeats=1), "fns"), (dict(fns={"a": lambda: None}, repeats=0), "repeats"),
    (dict(fns={"a": lambda: None}, repeats=1, warmup=-1), "warmup"),
])
def test_bad_arguments(kwargs, word):
    with pytest.raises(ValueError, match=word):
        time_interleaved(**kwargs)


def test_the_cpu_benchmark_runs_on_the_current_operators(tmp_path):
    """benchmarks/bench_deform_conv_cpu.py in its quick mode (one shape, 5 repeats, no memory), so that a change of
    the package's internals cannot break the benchmark unnoticed (it once called a helper that had moved). Only
    that it runs and writes sane ratios: timing never fails a test."""
    import json
    import subprocess
    import sys

    from conftest import REPO

    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_deform_conv_cpu.py"), "--quick",
                           "--out", str(tmp_path / "cpu.json")], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads((tmp_path / "cpu.json").read_text())["rows"]
    assert [r["version"] for r in rows] == ["v1", "v2"]
    for r in rows:
        assert r["columns_buffer_bytes"] == 2 * 64 * 9 * 32 * 32 * 4  # the whole batch in one chunk
        assert all(v > 0 for k, v in r.items() if k.endswith("_ratio"))
