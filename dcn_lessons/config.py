"""Run-time switches read from the environment.

``DCN_LESSONS_FAST=1`` turns on *fast mode*: every lesson shrinks its sizes and
iteration counts so that it runs top to bottom in well under 90 s on a 2-core
machine. The test suite sets it; a learner leaves it unset and gets the full lesson.
"""
from __future__ import annotations

import os
from typing import TypeVar

T = TypeVar("T")

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"", "0", "false", "no", "off"}


def _read_flag(name: str) -> bool:
    raw = os.environ.get(name, "").strip().lower()
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise ValueError(f"environment variable {name}={raw!r}: expected one of 1/0, true/false, yes/no, on/off")


#: True when the environment asks for fast mode (``DCN_LESSONS_FAST=1``).
FAST: bool = _read_flag("DCN_LESSONS_FAST")


def fast_or_full(fast: T, full: T) -> T:
    """Return ``fast`` in fast mode and ``full`` otherwise (sizes, epochs, iterations)."""
    return fast if FAST else full
