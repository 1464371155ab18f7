"""NVRTC, CuPy's compiler, called directly through ctypes: compile kernel source for a GPU without having one.

``cupy.RawModule`` hands the source to NVRTC (NVIDIA's runtime compiler library) and loads the result on the
device. The compile step itself needs no GPU, so this module runs it alone: the tests check that
``kernels/`` compiles with the very compiler CuPy uses, for every architecture the course targets, and lesson 06
shows the PTX (the GPU's assembly) of a kernel on a machine without a GPU.

The library comes from the ``nvidia-cuda-nvrtc-cu12`` wheel (in the ``test`` extra; NVRTC 12 still targets
sm_70, which CUDA 13 dropped), the ``nvidia-cuda-nvrtc`` (CUDA 13) wheel, ``$DCN_LESSONS_NVRTC`` (a path to
``libnvrtc.so``) or the system's ``libnvrtc.so``. Example::

    prog = nvrtc.compile(source, arch="compute_90", name_expressions=["my_kernel<float>"])
    print(prog.ptx)                       # PTX text; arch="sm_90" gives a cubin (machine code) instead
    prog.lowered_names["my_kernel<float>"]  # the mangled symbol CuPy looks the kernel up by
"""
from __future__ import annotations

import ctypes
import ctypes.util
import glob
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

__all__ = ["NvrtcError", "NvrtcUnavailable", "NvrtcProgram", "compile", "library_path", "version",
           "supported_architectures"]


class NvrtcUnavailable(RuntimeError):
    """No NVRTC library was found (the message says where it looked and what to install)."""


class NvrtcError(RuntimeError):
    """NVRTC refused the source or the options; ``log`` holds the compiler's messages."""

    def __init__(self, message: str, log: str = "") -> None:
        super().__init__(message + (f"\n{log}" if log else ""))
        self.log = log


@dataclass
class NvrtcProgram:
    """The result of :func:`compile`. ``ptx`` for a virtual architecture (``compute_XX``), ``cubin`` (machine
    code, what ptxas would make) for a real one (``sm_XX``); ``log`` holds warnings even on success."""

    arch: str
    ptx: Optional[str]
    cubin: Optional[bytes]
    log: str
    lowered_names: dict[str, str] = field(default_factory=dict)


_LOCK = threading.Lock()
_LIB: Optional[ctypes.CDLL] = None
_LIB_PATH: Optional[Path] = None


def _candidates() -> list[Path]:
    from dcn_lessons.config import path_override

    env = path_override("DCN_LESSONS_NVRTC")
    if env is not None:
        return [env]
    found: list[Path] = []
    try:
        import nvidia  # namespace package of NVIDIA's pip wheels

        for root in list(getattr(nvidia, "__path__", [])):
            # cu12 wheel: nvidia/cuda_nvrtc/lib/libnvrtc.so.12; CUDA 13 wheel: nvidia/cu13/lib/libnvrtc.so.13
            for pattern in ("cuda_nvrtc/lib/libnvrtc.so.*", "cu*/lib/libnvrtc.so.*"):
                found += sorted(Path(p) for p in glob.glob(os.path.join(root, pattern)) if ".alt." not in p)
    except ImportError:
        pass
    system = ctypes.util.find_library("nvrtc")
    if system:
        found.append(Path(system))
    return found


def _load() -> ctypes.CDLL:
    global _LIB, _LIB_PATH
    with _LOCK:
        if _LIB is not None:
            return _LIB
        tried = _candidates()
        errors = []
        for path in tried:
            try:
                lib = ctypes.CDLL(str(path))
            except OSError as exc:
                errors.append(f"{path}: {exc}")
                continue
            lib.nvrtcGetErrorString.restype = ctypes.c_char_p
            _LIB, _LIB_PATH = lib, path
            return lib
        where = "; ".join(errors) if errors else "no libnvrtc found"
        raise NvrtcUnavailable(
            f"NVRTC is not available ({where}). Install the wheel `pip install nvidia-cuda-nvrtc-cu12` "
            "(part of dcn_lessons[test]) or set DCN_LESSONS_NVRTC to the path of libnvrtc.so"
        )


def library_path() -> Path:
    """Path of the NVRTC library in use (NvrtcUnavailable when there is none)."""
    _load()
    assert _LIB_PATH is not None
    return _LIB_PATH


def _check(lib: ctypes.CDLL, status: int, what: str, log: str = "") -> None:
    if status != 0:
        raise NvrtcError(f"NVRTC {what} failed: {lib.nvrtcGetErrorString(status).decode()}", log)


def version() -> tuple[int, int]:
    """(major, minor) of the NVRTC library in use."""
    lib = _load()
    major, minor = ctypes.c_int(), ctypes.c_int()
    _check(lib, lib.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor)), "nvrtcVersion")
    return major.value, minor.value


def supported_architectures() -> list[int]:
    """The compute capabilities this NVRTC can target, e.g. [75, 80, 86, 89, 90, ...] for CUDA 13."""
    lib = _load()
    n = ctypes.c_int()
    _check(lib, lib.nvrtcGetNumSupportedArchs(ctypes.byref(n)), "nvrtcGetNumSupportedArchs")
    archs = (ctypes.c_int * n.value)()
    _check(lib, lib.nvrtcGetSupportedArchs(archs), "nvrtcGetSupportedArchs")
    return list(archs)


def _parse_arch(arch: str) -> tuple[str, int]:
    kind, _, number = str(arch).partition("_")
    if kind not in ("compute", "sm") or not number.isdigit():
        raise ValueError(f'arch: expected "compute_XX" (PTX) or "sm_XX" (cubin), e.g. "compute_90", got {arch!r}')
    return kind, int(number)


def compile(source: str, arch: str = "compute_90", name_expressions: Sequence[str] = (),
            options: Sequence[str] = ("--std=c++17",), name: str = "kernels.cu") -> NvrtcProgram:
    """Compile CUDA ``source`` with NVRTC, as ``cupy.RawModule`` does, without a GPU.

    Args:
        source: CUDA C++ source (NVRTC has no system headers: the source must include none it cannot find).
        arch: ``"compute_XX"`` for PTX, ``"sm_XX"`` for a cubin (machine code for that GPU generation).
        name_expressions: template instantiations to emit and look up, e.g. ``["deform_im2col_kernel<float>"]``.
        options: more NVRTC options (CuPy's glue passes ``--std=c++17``).
        name: the file name used in the compiler's messages.

    Returns:
        :class:`NvrtcProgram` with the PTX or cubin, the log, and the mangled name of each expression.

    Raises:
        NvrtcUnavailable: no NVRTC library. NvrtcError: the source or options were refused (log attached).
        ValueError: ``arch`` is not ``compute_XX``/``sm_XX``.
    """
    if not isinstance(source, str):
        raise TypeError(f"source: expected a str of CUDA C++ source, got {type(source).__name__}")
    kind, number = _parse_arch(arch)
    lib = _load()
    prog = ctypes.c_void_p()
    _check(lib, lib.nvrtcCreateProgram(ctypes.byref(prog), source.encode(), name.encode(), 0, None, None),
           "nvrtcCreateProgram")
    try:
        for expr in name_expressions:
            _check(lib, lib.nvrtcAddNameExpression(prog, str(expr).encode()), f"nvrtcAddNameExpression({expr!r})")
        opts = [f"--gpu-architecture={kind}_{number}".encode(), *(str(o).encode() for o in options)]
        status = lib.nvrtcCompileProgram(prog, len(opts), (ctypes.c_char_p * len(opts))(*opts))
        size = ctypes.c_size_t()
        lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
        buf = ctypes.create_string_buffer(size.value)
        lib.nvrtcGetProgramLog(prog, buf)
        log = buf.value.decode(errors="replace").strip()
        _check(lib, status, f"compiling {name} for {arch}", log)
        lowered = {}
        for expr in name_expressions:
            out = ctypes.c_char_p()
            _check(lib, lib.nvrtcGetLoweredName(prog, str(expr).encode(), ctypes.byref(out)),
                   f"nvrtcGetLoweredName({expr!r})")
            lowered[str(expr)] = out.value.decode()
        ptx = cubin = None
        if kind == "compute":
            _check(lib, lib.nvrtcGetPTXSize(prog, ctypes.byref(size)), "nvrtcGetPTXSize")
            text = ctypes.create_string_buffer(size.value)
            _check(lib, lib.nvrtcGetPTX(prog, text), "nvrtcGetPTX")
            ptx = text.value.decode()
        else:
            _check(lib, lib.nvrtcGetCUBINSize(prog, ctypes.byref(size)), "nvrtcGetCUBINSize")
            blob = ctypes.create_string_buffer(size.value)
            _check(lib, lib.nvrtcGetCUBIN(prog, blob), "nvrtcGetCUBIN")
            cubin = blob.raw
        return NvrtcProgram(arch=f"{kind}_{number}", ptx=ptx, cubin=cubin, log=log, lowered_names=lowered)
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(prog))
