"""Checkpoints that survive a kill, and the random state a resumed run needs to continue exactly.

A training run that is killed (SIGKILL, a lost node, a full disk) and resumed must end with the same weights as
one that was never interrupted. That needs three things, each here:

* **nothing half-written**: :func:`atomic_write` writes a file beside its destination, flushes and ``fsync``\\ s
  it, then renames it over the destination (``os.replace``, atomic on POSIX and Windows within one file system)
  and ``fsync``\\ s the folder, so a reader sees either the old file or the new one, never a mix.
  :func:`save_checkpoint` and every other file the engine writes (metrics, plots, JSON) go through it;
* **every random state**: :func:`rng_state` / :func:`set_rng_state` capture and restore Python's ``random``,
  NumPy's global generator, torch's CPU generator and every CUDA device's generator;
* **one format with clear errors**: :func:`load_checkpoint` refuses a missing, truncated or foreign file with a
  :class:`CheckpointError` that names the file and what is wrong.

What a training checkpoint holds is the engine's business (:mod:`dcn_lessons.detection.engine` lists it).
"""
from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import IO, Any, Callable

import numpy as np
import torch

__all__ = [
    "CHECKPOINT_FORMAT",
    "CheckpointError",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_text",
    "save_checkpoint",
    "load_checkpoint",
    "rng_state",
    "set_rng_state",
    "seed_everything",
]

#: Written into every checkpoint; a file without it (or with another value) is not one of ours.
CHECKPOINT_FORMAT = "dcn_lessons.detection/1"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: missing, unreadable, truncated, or not written by this engine."""


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. Windows: a folder cannot be opened; the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], Any]) -> Path:
    """Write ``path`` atomically: ``write(f)`` fills a temporary file in the same folder, which is flushed,
    ``fsync``\\ ed and renamed over ``path``. If ``write`` raises (or the process dies), ``path`` is untouched
    and the temporary file is removed (after a kill it stays as ``.<name>.*.tmp``, which nothing reads).

    Returns the path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """:func:`atomic_write` of ``data``."""
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """:func:`atomic_write` of ``text`` in UTF-8."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def save_checkpoint(path: str | os.PathLike, state: dict) -> Path:
    """``torch.save`` ``state`` (a dict; :data:`CHECKPOINT_FORMAT` is added under ``"format"``) atomically."""
    if not isinstance(state, dict):
        raise TypeError(f"state: expected a dict, got {type(state).__name__}")
    payload = {"format": CHECKPOINT_FORMAT, **state}
    return atomic_write(path, lambda f: torch.save(payload, f))


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Args:
        path: the file.
        map_location: as ``torch.load`` (default: every tensor on the CPU).

    Raises:
        CheckpointError: the file is missing, cannot be unpickled (truncated, not a torch file), or holds no
            :data:`CHECKPOINT_FORMAT` marker. The message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        # weights_only=False: the state holds Python's random state (a tuple) and NumPy's (an array + str),
        # which the restricted unpickler refuses; only load checkpoints you wrote (as with any pickle).
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # noqa: BLE001 - torch.load raises many kinds for a bad file
        raise CheckpointError(f"{path}: cannot read the checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"{path}: not a dcn_lessons detection checkpoint (format {found!r}, expected "
                              f"{CHECKPOINT_FORMAT!r})")
    return state


# ------------------------------------------------------------------------------------------------ RNG
def rng_state() -> dict:
    """Every global random state a training step may draw from: ``{"python", "numpy", "torch", "cuda"}``
    (``cuda``: one state per visible device, empty when CUDA is not initialised)."""
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": cuda,
    }


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` returned (CUDA states only when there are as many devices)."""
    missing = {"python", "numpy", "torch", "cuda"} - set(state)
    if missing:
        raise CheckpointError(f"random state: missing {sorted(missing)}")
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"].cpu() if isinstance(state["torch"], torch.Tensor) else state["torch"])
    cuda = state["cuda"]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda])


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy's global generator and torch (CPU and every CUDA device)."""
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed: expected an int >= 0, got {seed!r}")
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)

