"""Shared fixtures. The suite runs in fast mode (``DCN_LESSONS_FAST=1``, set by ``make test``).

Every test starts from the same global random state whatever ran before it: Python's ``random``, NumPy's legacy
global generator and torch's default generator are seeded with ``zlib.crc32`` of the test's id, and a failing
test's report shows that seed. (Tests that draw data should still use their own seeded generators.)
"""
from __future__ import annotations

import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import zlib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = REPO / "notebooks"

# tests/peer runs in its own environment (make peer, DCN_LESSONS_PEER=1). Elsewhere the folder is not even entered:
# its conftest.py, imported under the same module name "conftest", would replace this one in sys.modules, and the
# suite's `from conftest import REPO` would then fail to import.
collect_ignore = [] if os.environ.get("DCN_LESSONS_PEER", "").strip() in ("1", "true", "yes", "on") else ["peer"]

os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


def global_seed(nodeid: str) -> int:
    """The seed of the global random generators for the test ``nodeid`` (e.g. ``tests/test_x.py::test_y[a]``)."""
    return zlib.crc32(nodeid.encode())


@pytest.fixture
def one_thread():
    """One intra-op torch thread for the test, the previous setting restored afterwards. For tests on tiny tensors
    (a few images of 20x20): a second thread buys nothing there, and on a loaded 2-core machine its spin-waiting
    made tests/test_analysis_warp.py's fit 20x slower (1.4 s on one thread against 29 s on two, measured in one
    process while other jobs ran). A module opts in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def master_solution_lines(path, skip=("#",), comments=("  #",)) -> list[str]:
    """The lines between ``# BEGIN SOLUTION`` and ``# END SOLUTION`` in the code cells of the master notebook
    ``path`` (the answers a failure message must never show), stripped, with a trailing comment (any of
    ``comments``) cut off; lines starting with one of ``skip`` and short lines (under 16 characters: a ``return x``)
    are left out. Lesson 06 passes C's comment marks too, its answers being CUDA source."""
    import json

    nb = json.loads(Path(path).read_text())
    lines, inside = [], False
    for cell in nb["cells"]:
        if cell["cell_type"] != "code":
            continue
        for line in "".join(cell["source"]).splitlines():
            s = line.strip()
            if s.startswith("# BEGIN SOLUTION"):
                inside = True
            elif s.startswith("# END SOLUTION"):
                inside = False
            elif inside and len(s) >= 16 and not s.startswith(tuple(skip)):
                for mark in comments:
                    s = s.split(mark)[0]
                lines.append(s.strip())
    return lines


@pytest.fixture(autouse=True)
def _seeded_global_rngs(request: pytest.FixtureRequest) -> None:
    seed = global_seed(request.node.nodeid)
    random.seed(seed)
    if "numpy" in sys.modules:  # seed only what the test module imported
        sys.modules["numpy"].random.seed(seed)
    if "torch" in sys.modules:
        sys.modules["torch"].manual_seed(seed)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):  # type: ignore[no-untyped-def]
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        report.sections.append(("global random seed",
                                f"{global_seed(item.nodeid)} (zlib.crc32 of the test id; see tests/conftest.py)"))


#: The limit, in seconds, for JupyterLab to start (it only catches a hang; tests/test_e2e_browser.py says how the
#: browser tests' limits were chosen).
START_S = 600


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """The README's own `make lab`, on a free port with a fresh token: ``(url, token)``, for the browser tests
    (tests/test_e2e_browser*.py). One server per test module, stopped at its end: a server shared by two modules
    restored the first one's notebook tab (JupyterLab keeps the workspace on the server) and the second test found
    its figure hidden in that background tab."""
    port, token = _free_port(), secrets.token_hex(16)
    log = tmp_path_factory.mktemp("lab") / "lab.log"
    args = f"--no-browser --ip=127.0.0.1 --port={port} --ServerApp.token={token} --ServerApp.port_retries=0"
    venv = os.path.dirname(os.path.dirname(sys.executable))  # the venv running these tests
    with open(log, "wb") as out:
        proc = subprocess.Popen(["make", "-C", str(REPO), "lab", f"VENV={venv}", f"LAB_ARGS={args}"],
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_S
        while True:
            try:
                with urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"JupyterLab did not start:\n{log.read_text()[-3000:]}")
            time.sleep(1)
        yield url, token
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
