"""The peer tests compare with torchvision, which the project's own environment does not have (its CPU-only torch
wheel has no matching torchvision). CI runs them in a second environment with torch and torchvision from PyPI,
with ``DCN_LESSONS_PEER=1``: there a missing torchvision is an error. Elsewhere this folder is not collected.
"""
from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the suite's conftest helpers (REPO, ...)

REQUIRED = os.environ.get("DCN_LESSONS_PEER", "").strip() in ("1", "true", "yes", "on")
HAVE_TORCHVISION = importlib.util.find_spec("torchvision") is not None

if REQUIRED and not HAVE_TORCHVISION:
    raise RuntimeError("DCN_LESSONS_PEER=1 but torchvision does not import in this environment: the peer tests "
                       "cannot compare with it")
collect_ignore_glob = [] if HAVE_TORCHVISION else ["test_*.py"]
