"""CUDA tier: CuPy RawModule glue for ``kernels/`` and a CPU emulator of the same source.

Contract used by :mod:`dcn_lessons.ops` (the PyTorch tier):

``kernels_for(tensor)`` returns ``None`` for a CPU tensor, or when the environment variable
``DCN_LESSONS_BACKEND=torch`` forces the tensor path; for a CUDA tensor it returns an object
whose methods are the CUDA versions of the tensor path's primitives (see ``backend.py``), or
``None`` with a one-time warning when CuPy cannot be used (``DCN_LESSONS_BACKEND=cuda`` makes
that an error instead).

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

__all__ = ["kernels_for", "emulated_kernels", "backend_mode", "kernels_dir", "CudaBackendUnavailable"]

_LOCK = threading.Lock()
_BACKENDS: dict[int, Any] = {}  # device index -> CupyKernels, or the exception that stopped it
_EMULATED: dict[tuple[str, str], Any] = {}
_WARNED: set[str] = set()


class CudaBackendUnavailable(RuntimeError):
    """Raised by :func:`kernels_for` under ``DCN_LESSONS_BACKEND=cuda`` when the kernels cannot be used."""


def backend_mode() -> str:
    """``DCN_LESSONS_BACKEND``: "auto" (unset/empty), "torch" or "cuda"; ValueError for anything else."""
    raw = os.environ.get("DCN_LESSONS_BACKEND", "").strip().lower()
    mode = raw or "auto"
    if mode not in ("auto", "torch", "cuda"):
        raise ValueError(f"environment variable DCN_LESSONS_BACKEND={raw!r}: expected auto, torch or cuda")
    return mode


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
    with _LOCK:
        if index not in _BACKENDS:
            try:
                from .backend import CupyKernels

                _BACKENDS[index] = CupyKernels(f"cuda:{index}")
            except ImportError as exc:
                _BACKENDS[index] = CudaBackendUnavailable(
                    f"CuPy is not installed or does not import ({exc}); install the extra "
                    "dcn_lessons[cuda12] or dcn_lessons[cuda13] to use the CUDA kernels"
                )
            except Exception as exc:  # compile errors, missing kernels/, driver problems
                _BACKENDS[index] = CudaBackendUnavailable(
                    f"the CUDA kernels could not be built for cuda:{index}: {type(exc).__name__}: {exc}"
                )
        found = _BACKENDS[index]
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
