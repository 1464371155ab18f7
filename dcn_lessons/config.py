"""Every switch the package reads from the environment, in one place.

* ``DCN_LESSONS_FAST=1`` turns on *fast mode*: every lesson shrinks its sizes and iteration counts so that it
  runs top to bottom in well under 90 s on a 2-core machine. The test suite sets it; a learner leaves it unset
  and gets the full lesson. Read once, at import (:data:`FAST`).
* ``DCN_LESSONS_BACKEND`` forces the backend of the operators (read at every call, :func:`backend_override`):
  unset or ``auto`` lets :func:`dcn_lessons.backends.select` choose; ``tensor``, ``cpu-numba``, ``cuda`` or
  ``cuda-emulated`` name one of :data:`dcn_lessons.backends.BACKEND_NAMES` (see there for what each one
  forces, and on which tensors).
* Paths (:func:`path_override`, read at the call that needs them):

  - ``DCN_LESSONS_KERNELS``: the folder holding the CUDA sources, instead of the copy inside the installed
    package or ``kernels/`` of a checkout (:func:`dcn_lessons.cuda.kernels_dir`);
  - ``DCN_LESSONS_DATA``: the root of generated data sets, instead of ``datasets/`` (:func:`dcn_lessons.data.data_root`);
  - ``DCN_LESSONS_CACHE``: where the CUDA emulator keeps compiled modules, instead of ``~/.cache/dcn_lessons``;
  - ``DCN_LESSONS_NVRTC``: the NVRTC library to load, instead of searching NVIDIA's wheels and the system.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, TypeVar

T = TypeVar("T")

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"", "0", "false", "no", "off"}

#: The backends an operator can run on (``DCN_LESSONS_BACKEND`` takes these, or ``auto``).
BACKEND_NAMES: tuple[str, ...] = ("tensor", "cpu-numba", "cuda", "cuda-emulated")

#: Switches of earlier versions, and what replaced them: setting one is an error that says so.
_RETIRED = {
    "DCN_LESSONS_CPU_FAST": "DCN_LESSONS_BACKEND=tensor (was DCN_LESSONS_CPU_FAST=0) or cpu-numba",
}


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


def backend_override() -> Optional[str]:
    """``DCN_LESSONS_BACKEND`` as a backend name, or None for ``auto`` (unset or empty).

    Raises ValueError naming the variable for any other value, and for a retired switch that is still set
    (``DCN_LESSONS_CPU_FAST``), saying what replaced it.
    """
    for old, new in _RETIRED.items():
        if old in os.environ:
            raise ValueError(f"environment variable {old} is no longer read: use {new}")
    raw = os.environ.get("DCN_LESSONS_BACKEND", "").strip().lower()
    if raw in ("", "auto"):
        return None
    if raw not in BACKEND_NAMES:
        hint = " ('torch' is now called 'tensor')" if raw == "torch" else ""
        raise ValueError(f"environment variable DCN_LESSONS_BACKEND={raw!r}: expected auto or one of "
                         f"{', '.join(BACKEND_NAMES)}{hint}")
    return raw


PATH_SWITCHES = ("DCN_LESSONS_KERNELS", "DCN_LESSONS_DATA", "DCN_LESSONS_CACHE", "DCN_LESSONS_NVRTC")


def path_override(name: str) -> Optional[Path]:
    """The path in the environment variable ``name`` (one of :data:`PATH_SWITCHES`), ``~`` expanded, or None
    when it is unset or empty."""
    if name not in PATH_SWITCHES:
        raise ValueError(f"name: expected one of {', '.join(PATH_SWITCHES)}, got {name!r}")
    raw = os.environ.get(name, "").strip()
    return Path(raw).expanduser() if raw else None
