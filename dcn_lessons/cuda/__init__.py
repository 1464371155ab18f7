"""CUDA tier: CuPy RawModule glue for ``kernels/`` and a CPU emulator of the same source.

Contract used by :mod:`dcn_lessons.ops` (the PyTorch tier):

``kernels_for(tensor)`` returns ``None`` for a CPU tensor, or when the environment variable
``DCN_LESSONS_BACKEND=torch`` forces the tensor path; for a CUDA tensor it returns an object
whose methods are the CUDA versions of the tensor path's primitives (see ``backend.py``), or
``None`` with a one-time warning when CuPy cannot be used (``DCN_LESSONS_BACKEND=cuda`` makes
that an error instead). Which kernels it uses: :func:`set_kernel_variant` (the plain im2col and the separate
backward kernels by default; "grouped"/"fused" are the variants that share work across channels).

The backend methods (same arguments and results as the tensor path; :class:`~.backend.KernelBackend`):
``deform_im2col``, ``deform_col2im``, ``deform_col2im_coord`` (plus ``deform_col2im_fused``), ``roi_forward``
and ``roi_backward``. :func:`emulated_kernels` returns the same object for CPU tensors, running the very same
kernel source through the g++ emulator (:mod:`.emulator`): tests and lesson 06 use it without a GPU.
"""
from __future__ import annotations

import os
import threading
import warnings
from typing import Any, Optional

from ._source import kernels_dir

__all__ = ["kernels_for", "emulated_kernels", "backend_mode", "kernels_dir", "CudaBackendUnavailable",
           "set_kernel_variant", "kernel_variant"]

_LOCK = threading.Lock()
_BACKENDS: dict[tuple[int, str, str], Any] = {}  # (device, im2col, backward) -> CupyKernels, or what stopped it
_EMULATED: dict[tuple[str, str], Any] = {}
_WARNED: set[str] = set()
_VARIANT = {"im2col": "plain", "backward": "separate"}


class CudaBackendUnavailable(RuntimeError):
    """Raised by :func:`kernels_for` under ``DCN_LESSONS_BACKEND=cuda`` when the kernels cannot be used."""


def backend_mode() -> str:
    """``DCN_LESSONS_BACKEND``: "auto" (unset/empty), "torch" or "cuda"; ValueError for anything else."""
    raw = os.environ.get("DCN_LESSONS_BACKEND", "").strip().lower()
    mode = raw or "auto"
    if mode not in ("auto", "torch", "cuda"):
        raise ValueError(f"environment variable DCN_LESSONS_BACKEND={raw!r}: expected auto, torch or cuda")
    return mode


def set_kernel_variant(im2col: str = "plain", backward: str = "separate") -> None:
    """Choose the kernels :func:`kernels_for` hands out from now on (built once per device and variant, so
    switching back and forth costs nothing after the first call).

    ``im2col``: "plain" (one thread per (n, c, y, x)) or "grouped" (one per (n, g, k, y, x), the position
    reused across the group's channels). ``backward``: "separate" (col2im, then the coordinate kernel) or "fused"
    (one pass). All four give the same results; ``benchmarks/bench_cuda.py`` measures which is faster.
    """
    if im2col not in ("plain", "grouped"):
        raise ValueError(f'im2col: expected "plain" or "grouped", got {im2col!r}')
    if backward not in ("separate", "fused"):
        raise ValueError(f'backward: expected "separate" or "fused", got {backward!r}')
    with _LOCK:
        _VARIANT.update(im2col=im2col, backward=backward)


def kernel_variant() -> tuple[str, str]:
    """The ``(im2col, backward)`` variant :func:`kernels_for` uses (see :func:`set_kernel_variant`)."""
    return _VARIANT["im2col"], _VARIANT["backward"]


def _device_index(tensor: Any) -> int:
    index = getattr(tensor.device, "index", None)
    if index is None:
        import torch

        index = torch.cuda.current_device()
    return int(index)


def kernels_for(tensor: Any) -> Optional[Any]:
    """The CUDA kernel backend for ``tensor``'s device, or None to use the tensor path.

    None for a CPU tensor or under ``DCN_LESSONS_BACKEND=torch``. For a CUDA tensor: a
    :class:`~.backend.CupyKernels` (one per device, built once and cached) when CuPy imports and the kernels
    compile; otherwise None after a one-time warning that says why (under ``DCN_LESSONS_BACKEND=cuda``:
    :class:`CudaBackendUnavailable` instead). A failure is remembered, so it is not retried on every call.
    """
    if not getattr(tensor, "is_cuda", False):
        return None
    mode = backend_mode()
    if mode == "torch":
        return None
    index = _device_index(tensor)
    key = (index, _VARIANT["im2col"], _VARIANT["backward"])
    with _LOCK:
        if key not in _BACKENDS:
            try:
                from .backend import CupyKernels

                _BACKENDS[key] = CupyKernels(f"cuda:{index}", im2col=key[1], backward=key[2])
            except ImportError as exc:
                _BACKENDS[key] = CudaBackendUnavailable(
                    f"CuPy is not installed or does not import ({exc}); install the extra "
                    "dcn_lessons[cuda12] or dcn_lessons[cuda13] to use the CUDA kernels"
                )
            except Exception as exc:  # compile errors, missing kernels/, driver problems
                _BACKENDS[key] = CudaBackendUnavailable(
                    f"the CUDA kernels could not be built for cuda:{index}: {type(exc).__name__}: {exc}"
                )
        found = _BACKENDS[key]
    if isinstance(found, CudaBackendUnavailable):
        if mode == "cuda":
            raise CudaBackendUnavailable(f"DCN_LESSONS_BACKEND=cuda but {found}") from found
        message = str(found)
        if message not in _WARNED:
            _WARNED.add(message)
            warnings.warn(f"dcn_lessons: using the PyTorch tensor path: {message}", RuntimeWarning, stacklevel=2)
        return None
    return found


def emulated_kernels(im2col: str = "plain", backward: str = "separate") -> Any:
    """The kernel backend for CPU tensors through the g++ emulator (:class:`~.backend.EmulatedKernels`),
    the same methods as :func:`kernels_for`'s object, built once per process (per variant)."""
    key = (im2col, backward)
    with _LOCK:
        if key not in _EMULATED:
            from .backend import EmulatedKernels

            _EMULATED[key] = EmulatedKernels(im2col=im2col, backward=backward)
        return _EMULATED[key]


def _reset_for_tests() -> None:
    """Forget cached backends and warnings (tests only)."""
    with _LOCK:
        _BACKENDS.clear()
        _WARNED.clear()
