"""Shared fixtures. The suite runs in fast mode (``DCN_LESSONS_FAST=1``, set by ``make test``).

Every test starts from the same global random state whatever ran before it: Python's ``random``, NumPy's legacy
global generator and torch's default generator are seeded with ``zlib.crc32`` of the test's id, and a failing
test's report shows that seed. (Tests that draw data should still use their own seeded generators.)
"""
from __future__ import annotations

import os
import random
import sys
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
