"""CUDA tier: CuPy RawModule glue for ``kernels/`` and a CPU emulator of the same source.

The two backends of :mod:`dcn_lessons.backends` that run ``kernels/`` (see ``backend.py``):

* ``cuda`` -- :func:`kernels_for` returns, for a CUDA tensor, the :class:`~.backend.CupyKernels` of its device
  (built once and cached), or ``None`` with a one-time warning when CuPy cannot be used (an error instead when
  the backend is forced, ``DCN_LESSONS_BACKEND=cuda``); ``None`` for a CPU tensor. Which kernels it uses:
  :func:`set_kernel_variant` (the plain im2col and the separate backward kernels by default; "grouped"/"fused"
  are the variants that share work across channels).
* ``cuda-emulated`` -- :func:`emulated_kernels` returns the same methods for CPU tensors, running the very same
  kernel source through the g++ emulator (:mod:`.emulator`): tests and lesson 06 use it without a GPU.

Their methods follow the backend contract (:class:`dcn_lessons.backends.Backend`) and check nothing: call them
through the public functions of :mod:`dcn_lessons.ops` (``backend="cuda-emulated"`` picks one explicitly).
"""
from __future__ import annotations

import threading
import warnings
from typing import Any, Callable, Mapping, Optional, Sequence

from ._source import definition, kernels_dir

__all__ = ["kernels_for", "emulated_kernels", "kernels_dir", "CudaBackendUnavailable",
           "set_kernel_variant", "kernel_variant", "gpu_status", "build", "definition"]

_LOCK = threading.Lock()
_BACKENDS: dict[tuple[int, str, str], Any] = {}  # (device, im2col, backward) -> CupyKernels, or what stopped it
_EMULATED: dict[tuple[str, str], Any] = {}
_WARNED: set[str] = set()
_VARIANT = {"im2col": "plain", "backward": "separate"}


class CudaBackendUnavailable(RuntimeError):
    """Raised by :func:`kernels_for` when the ``cuda`` backend is forced (``DCN_LESSONS_BACKEND=cuda``) and the
    kernels cannot be used."""


def set_kernel_variant(im2col: str = "plain", backward: str = "separate") -> None:
    """Choose the kernels :func:`kernels_for` hands out from now on (built once per device and variant, so
    switching back and forth costs nothing after the first call).

    ``im2col``: "plain" (one work item per (b, c, y, x)) or "grouped" (one per (b, g, k, y, x), the position
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


def kernels_for(tensor: Any, forced: bool = False) -> Optional[Any]:
    """The ``cuda`` backend for ``tensor``'s device, or None to use the tensor path.

    None for a CPU tensor. For a CUDA tensor: a :class:`~.backend.CupyKernels` (one per device and kernel
    variant, built once and cached) when CuPy imports and the kernels compile; otherwise None after a one-time
    warning that says why (with ``forced``, as under ``DCN_LESSONS_BACKEND=cuda``: :class:`CudaBackendUnavailable`
    instead). A failure is remembered, so it is not retried on every call.
    """
    if not getattr(tensor, "is_cuda", False):
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
        if forced:
            raise CudaBackendUnavailable(f"backend cuda forced (DCN_LESSONS_BACKEND=cuda) but {found}") from found
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


def gpu_status() -> tuple[bool, str]:
    """``(True, device name)`` when PyTorch sees a CUDA device and CuPy imports, else ``(False, why not)``."""
    import torch

    if not torch.cuda.is_available():
        return False, "PyTorch sees no CUDA device on this machine"
    try:
        import cupy  # noqa: F401
    except Exception as exc:  # ImportError, or a CuPy built for another CUDA
        return False, (f"CuPy does not import ({type(exc).__name__}: {exc}); "
                       "pip install -e .[cuda12] (or [cuda13])")
    return True, torch.cuda.get_device_name()


def build(source: str, kernels: Mapping[str, Sequence[str]], where: str = "auto") -> dict[str, Callable[..., None]]:
    """Compile CUDA ``source`` and return ``{name: launch(grid, block, args)}`` for NumPy arrays (lesson 06).

    ``kernels`` maps each kernel's name (an ``extern "C"`` name, or a template instantiation such as
    ``"scale<double>"``) to its parameter C types, e.g. ``{"scale": ["const float*", "float*", "float", "int"]}``.
    ``where``: "gpu" (CuPy: arrays are copied to the device, and those behind non-``const`` pointers copied back
    after the launch), "emulator" (g++, :mod:`.emulator`: arrays used in place) or "auto" (the GPU when
    :func:`gpu_status` says it is usable, else the emulator). Scalars are converted to the declared C type.
    Compile errors propagate (``emulator.EmulatorError`` / CuPy's ``CompileException``).
    """
    from . import emulator

    if where not in ("auto", "gpu", "emulator"):
        raise ValueError(f'where: expected "auto", "gpu" or "emulator", got {where!r}')
    if where == "auto":
        where = "gpu" if gpu_status()[0] else "emulator"
    if where == "emulator":
        module = emulator.compile(source, kernels)
        return {name: module.get_function(name) for name in kernels}
    import cupy
    import numpy as np

    from .backend import NVRTC_OPTIONS

    params = {name: [emulator._Param(name, i, t) for i, t in enumerate(types)] for name, types in kernels.items()}
    module = cupy.RawModule(code=source, options=NVRTC_OPTIONS, name_expressions=list(kernels))

    def launcher(name: str) -> Callable[..., None]:
        fn = module.get_function(name)
        ps = params[name]

        def launch(grid: Any, block: Any, args: Sequence[Any]) -> None:
            if len(args) != len(ps):
                raise TypeError(f"{name}: expected {len(ps)} arguments, got {len(args)}")
            dev = [cupy.asarray(a) if p.pointer else np.dtype(p.dtype).type(a) for a, p in zip(args, ps)]
            fn(grid, block, tuple(dev))
            for a, d, p in zip(args, dev, ps):
                if p.pointer and isinstance(a, np.ndarray) and not p.spelling.startswith("const"):
                    a[...] = cupy.asnumpy(d)

        return launch

    return {name: launcher(name) for name in kernels}


def _reset_for_tests() -> None:
    """Forget cached backends and warnings (tests only)."""
    with _LOCK:
        _BACKENDS.clear()
        _WARNED.clear()
