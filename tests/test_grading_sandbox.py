"""The sandbox on its own (no notebook): confinement, the PID namespace, and the limits -- as root (the sandbox set
up with root's privileges, the command on a uid of its own) and as an unprivileged user (bubblewrap in a user
namespace). Both run ``tests/grading/sandbox_probe.py``; the unprivileged run needs root here to switch to
``nobody`` (``setpriv``) and a Python that ``nobody`` can read.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from dcn_lessons.grading.sandbox import ROOT_RUN_UID

PROBE = REPO / "tests" / "grading" / "sandbox_probe.py"
pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None,
                                reason="bubblewrap (bwrap) is not installed: apt-get install bubblewrap")


def _system_python() -> str | None:
    """A Python under /usr that an unprivileged user can run, for the unprivileged probe."""
    for p in ("/usr/bin/python3", "/usr/local/bin/python3"):
        if os.access(p, os.X_OK) and os.stat(os.path.realpath(p)).st_mode & 0o005 == 0o005:
            return p
    return None


def _probe(tmp_path: Path, unprivileged: bool) -> dict:
    secret = tmp_path / "secret.txt"
    secret.write_text("the grader's own file")
    secret.chmod(0o644)
    tmp_path.chmod(0o755)
    if unprivileged:
        cmd = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups", "env", "-i",
               "PATH=/usr/bin:/bin", "HOME=/tmp", _system_python(), str(PROBE), str(secret)]
    else:
        cmd = [sys.executable, str(PROBE), str(secret)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd="/tmp")
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


MODES = ["as-root" if os.geteuid() == 0 else "as-user"]
if os.geteuid() == 0 and shutil.which("setpriv") and _system_python():
    MODES.append("unprivileged")


@pytest.fixture(scope="module", params=MODES)
def probe(request, tmp_path_factory):
    return request.param, _probe(tmp_path_factory.mktemp("probe"), request.param == "unprivileged")


def test_confined(probe):
    mode, r = probe
    inside = r["inside"]
    assert r["root_setup"] == (mode == "as-root")
    assert inside["uid"] == inside["euid"] != 0
    assert inside["uid"] == (ROOT_RUN_UID if mode == "as-root" else 65534)
    assert inside["cap_eff"] == "0000000000000000" and inside["no_new_privs"] == "1"
    assert not inside["write_root"] and not inside["write_usr"] and not inside["write_package"]
    assert inside["write_tmp"]
    assert not inside["sees_secret"] and not inside["sees_checkout"], "the host's files are visible"
    assert not inside["network"]
    assert inside["processes_visible"] <= 3  # bubblewrap's init and the command: a PID namespace of its own


def test_nothing_outlives_the_sandbox(probe):
    mode, r = probe
    assert r["daemon_left"] == []
    for case in ("gil_loop", "fork_bomb", "memory_hog"):
        assert r[case]["leftovers"] == [], case


def test_limits_end_what_exceeds_them(probe):
    mode, r = probe
    assert r["gil_loop"]["killed"] == "timeout" and r["gil_loop"]["seconds"] < 10
    bomb = r["fork_bomb"]  # stopped by the watchdog, or its forks refused at the process limit
    assert bomb["killed"] == "processes" or ("refused after" in bomb["stdout"] and bomb["peak_processes"] <= 70), bomb
    assert r["memory_hog"]["killed"] == "memory" and "GiB of memory" in r["memory_hog"]["reason"]


def test_cancel_ends_a_run_at_once(tmp_path):
    """What ``grade`` does on Ctrl-C: every sandbox ends now, not at its time limit."""
    import threading

    from dcn_lessons.grading.sandbox import Limits, Sandbox

    box = Sandbox(enabled=True)
    threading.Timer(1.0, box.cancel).start()
    out = box.run(["/bin/sh", "-c", "sleep 100"], env={"PATH": "/usr/bin:/bin"}, limits=Limits(wall_s=60),
                  workdir=tmp_path, chdir="/tmp")
    assert out.killed == "cancelled" and out.seconds < 30 and out.leftovers == []
