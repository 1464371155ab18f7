"""A CPU emulator for CUDA kernels: the same ``.cu`` source compiled by g++ and run thread by thread.

How it works: the source is compiled as C++ (``g++ -O2 -shared -fPIC -x c++``) after a small header,
``cuda_emulation.h``, that defines what CUDA provides (``__global__``, ``blockIdx``, ``threadIdx``,
``blockDim``, ``gridDim``, ``atomicAdd``, ``__ldg``, ...). For every kernel you name, the emulator writes an
``extern "C"`` launcher that sets the four built-ins and calls the kernel once per thread of every block,
one after the other. The library is loaded with ctypes and cached on disk by a hash of the source, the
kernel list and the flags (``$DCN_LESSONS_CACHE`` or ``~/.cache/dcn_lessons/emulator``).

What is emulated faithfully: indexing (each thread sees its own blockIdx/threadIdx), bounds checks, the
arithmetic, float vs double. What is not: concurrency. Threads run one at a time, so ``atomicAdd`` is a
plain add, races cannot show, and ``__syncthreads``/``__shared__`` are a compile error (a barrier cannot be
honoured when each thread runs to completion before the next). Out-of-bounds accesses are NOT caught: they
corrupt memory or crash the Python process, as on a GPU they would corrupt memory or raise an error.

A kernel is launched like a CuPy ``RawKernel``: ``kernel(grid, block, args)``. Example (lesson 06)::

    mod = compile(source, kernels={"scale": ["const float*", "float*", "float", "int"]})
    mod.get_function("scale")((4,), (32,), (x, y, np.float32(2.0), np.int32(x.size)))

Arrays are NumPy arrays or CPU torch tensors (C-contiguous; their dtype must match the pointer type: a
``dcn_half*`` takes float16, a ``dcn_bfloat16*`` a torch bfloat16 tensor); scalars are converted to the
declared type.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

__all__ = ["compile", "EmulatedModule", "EmulatedKernel", "EmulatorError", "cache_dir", "FLAGS"]

#: g++ flags used for every emulated module.
FLAGS: tuple[str, ...] = ("-O2", "-std=c++17", "-shared", "-fPIC", "-x", "c++")

_HEADER = Path(__file__).with_name("cuda_emulation.h")

# C type (after removing const/__restrict__) -> (ctypes type, element dtype name as NumPy/torch spell it)
_SCALARS: dict[str, tuple[Any, str]] = {
    "float": (ctypes.c_float, "float32"),
    "double": (ctypes.c_double, "float64"),
    "int": (ctypes.c_int32, "int32"),
    "int32_t": (ctypes.c_int32, "int32"),
    "unsigned": (ctypes.c_uint32, "uint32"),
    "unsigned int": (ctypes.c_uint32, "uint32"),
    "uint32_t": (ctypes.c_uint32, "uint32"),
    "long long": (ctypes.c_int64, "int64"),
    "int64_t": (ctypes.c_int64, "int64"),
    "long": (ctypes.c_int64, "int64"),
    "size_t": (ctypes.c_uint64, "uint64"),
    "unsigned long long": (ctypes.c_uint64, "uint64"),
    "uint64_t": (ctypes.c_uint64, "uint64"),
    "bool": (ctypes.c_bool, "bool"),
    "char": (ctypes.c_char, "int8"),
    "unsigned char": (ctypes.c_ubyte, "uint8"),
    "uint8_t": (ctypes.c_ubyte, "uint8"),
}
# The course's 16-bit element types (kernels/dcn_common.cuh): pointers only. bfloat16 arrays are torch tensors
# (NumPy has no bfloat16).
_POINTER_ONLY: dict[str, tuple[Any, str]] = {
    "dcn_half": (ctypes.c_uint16, "float16"),
    "dcn_bfloat16": (ctypes.c_uint16, "bfloat16"),
}


class EmulatorError(RuntimeError):
    """The emulator cannot compile or launch (g++ missing, compile error, bad launch configuration)."""


def cache_dir() -> Path:
    """Where compiled modules are kept: ``$DCN_LESSONS_CACHE/emulator`` or ``~/.cache/dcn_lessons/emulator``."""
    from dcn_lessons.config import path_override

    base = path_override("DCN_LESSONS_CACHE") or Path.home() / ".cache" / "dcn_lessons"
    return base / "emulator"


class _Param:
    """One kernel parameter: its C spelling, whether it is a pointer, its ctypes/numpy types."""

    def __init__(self, kernel: str, position: int, spelling: str) -> None:
        text = " ".join(spelling.replace("__restrict__", " ").split())
        self.spelling = text
        self.pointer = text.endswith("*")
        base = text.rstrip("*").strip()
        base = re.sub(r"^const\s+", "", base)
        base = re.sub(r"\s+const$", "", base).strip()
        known = base in _SCALARS or (base in _POINTER_ONLY and self.pointer)
        if not known or text.count("*") > 1:
            raise TypeError(
                f"kernels[{kernel!r}][{position}]: unsupported parameter type {spelling!r}; expected one of "
                f"{sorted(_SCALARS)} optionally const and/or followed by a single '*', or a pointer to one of "
                f"{sorted(_POINTER_ONLY)}"
            )
        self.base = base
        self.ctype, self.dtype = _SCALARS[base] if base in _SCALARS else _POINTER_ONLY[base]

    def convert(self, kernel: str, position: int, value: Any) -> Any:
        """The ctypes value passed for ``value``; TypeError naming the argument when it does not fit."""
        where = f"{kernel}: argument {position} ({self.spelling})"
        if self.pointer:
            if value is None:
                raise TypeError(f"{where}: expected an array, got None")
            if hasattr(value, "data_ptr") and hasattr(value, "is_cuda"):  # torch tensor
                if value.is_cuda:
                    raise TypeError(f"{where}: the emulator runs on the CPU; got a CUDA tensor")
                if not value.is_contiguous():
                    raise TypeError(f"{where}: expected a contiguous tensor (call .contiguous())")
                dtype = str(value.dtype).replace("torch.", "")
                ptr = value.data_ptr()
            elif isinstance(value, np.ndarray):
                if not value.flags["C_CONTIGUOUS"]:
                    raise TypeError(f"{where}: expected a C-contiguous array (np.ascontiguousarray)")
                if not self.spelling.startswith("const") and not value.flags["WRITEABLE"]:
                    raise TypeError(f"{where}: the kernel may write here, but the array is read-only")
                dtype, ptr = value.dtype.name, value.ctypes.data
            else:
                raise TypeError(f"{where}: expected a NumPy array or a CPU torch tensor, got {type(value).__name__}")
            if dtype != self.dtype:
                raise TypeError(f"{where}: expected {self.dtype} elements, got {dtype}")
            return ctypes.c_void_p(ptr)
        if isinstance(value, (np.ndarray,)) and value.ndim > 0 or hasattr(value, "data_ptr"):
            raise TypeError(f"{where}: expected a scalar, got an array")
        scalar = np.dtype(self.dtype).type
        if np.issubdtype(scalar, np.integer) and isinstance(value, (float, np.floating)):
            raise TypeError(f"{where}: expected an integer, got {value!r}")
        return self.ctype(scalar(value).item() if scalar is not np.bool_ else bool(value))


def _as_dim3(name: str, value: Any) -> tuple[int, int, int]:
    if isinstance(value, (int, np.integer)):
        value = (int(value),)
    if not isinstance(value, (tuple, list)) or not 1 <= len(value) <= 3:
        raise ValueError(f"{name}: expected an int or a tuple of 1 to 3 ints, got {value!r}")
    dims = [int(v) for v in value] + [1] * (3 - len(value))
    if min(dims) < 1:
        raise ValueError(f"{name}: expected every size >= 1, got {tuple(value)}")
    return dims[0], dims[1], dims[2]


class EmulatedKernel:
    """One launchable kernel: ``kernel(grid, block, args)`` as with ``cupy.RawKernel``."""

    def __init__(self, name: str, function: Any, params: list[_Param]) -> None:
        self.name = name
        self._function = function
        self._params = params

    def __call__(self, grid: Any, block: Any, args: Sequence[Any], **_: Any) -> None:
        """Run every thread of every block, one after the other. ``grid``/``block``: int or tuple of <= 3 ints;
        ``args``: one value per declared parameter (extra CuPy keywords such as ``stream`` are ignored)."""
        g = _as_dim3("grid", grid)
        b = _as_dim3("block", block)
        if b[0] * b[1] * b[2] > 1024:
            raise ValueError(f"block: at most 1024 threads per block (as on a GPU), got {b}")
        if len(args) != len(self._params):
            raise TypeError(f"{self.name}: expected {len(self._params)} arguments, got {len(args)}")
        converted = [p.convert(self.name, i, a) for i, (p, a) in enumerate(zip(self._params, args))]
        self._function(*g, *b, *converted)

    def __repr__(self) -> str:
        return f"EmulatedKernel({self.name}({', '.join(p.spelling for p in self._params)}))"


class EmulatedModule:
    """A compiled source: :meth:`get_function` returns its kernels (the names given to :func:`compile`)."""

    def __init__(self, library: ctypes.CDLL, kernels: dict[str, list[_Param]], symbols: dict[str, str]) -> None:
        self._lib = library
        self._kernels: dict[str, EmulatedKernel] = {}
        for name, params in kernels.items():
            fn = getattr(library, symbols[name])
            fn.restype = None
            fn.argtypes = [ctypes.c_uint32] * 6 + [ctypes.c_void_p if p.pointer else p.ctype for p in params]
            self._kernels[name] = EmulatedKernel(name, fn, params)

    def get_function(self, name: str) -> EmulatedKernel:
        """The kernel named ``name`` (as given to :func:`compile`, e.g. ``"deform_im2col_kernel<float>"``)."""
        try:
            return self._kernels[name]
        except KeyError:
            raise KeyError(f"kernel {name!r} was not compiled; available: {sorted(self._kernels)}") from None

    @property
    def names(self) -> list[str]:
        return sorted(self._kernels)


def _symbol(index: int, name: str) -> str:
    return f"dcn_emu_launch_{index}_" + re.sub(r"[^A-Za-z0-9_]", "_", name)


def _launchers(kernels: Mapping[str, list[_Param]], symbols: Mapping[str, str]) -> str:
    out = ["\n// ---- launchers generated by dcn_lessons.cuda.emulator"]
    for name, params in kernels.items():
        decl = ", ".join(f"{p.spelling} a{i}" for i, p in enumerate(params))
        call = ", ".join(f"a{i}" for i in range(len(params)))
        out.append(
            f'extern "C" void {symbols[name]}(unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, '
            f"unsigned bz{', ' if decl else ''}{decl}) {{\n"
            "  gridDim = dim3(gx, gy, gz); blockDim = dim3(bx, by, bz);\n"
            "  for (unsigned z = 0; z < gz; ++z) for (unsigned y = 0; y < gy; ++y) for (unsigned x = 0; x < gx; ++x) {\n"
            "    blockIdx = dim3(x, y, z);\n"
            "    for (unsigned tz = 0; tz < bz; ++tz) for (unsigned ty = 0; ty < by; ++ty)"
            " for (unsigned tx = 0; tx < bx; ++tx) {\n"
            f"      threadIdx = dim3(tx, ty, tz);\n      {name}({call});\n"
            "    }\n  }\n}"
        )
    return "\n".join(out) + "\n"


_LOCK = threading.Lock()
_LOADED: dict[str, EmulatedModule] = {}


def compile(source: str, kernels: Mapping[str, Sequence[str]], extra_flags: Sequence[str] = ()) -> EmulatedModule:
    """Compile CUDA ``source`` for the CPU and return its kernels.

    Args:
        source: CUDA C++ source text (kernels marked ``__global__``; templates allowed).
        kernels: kernel name -> parameter C types, e.g. ``{"scale": ["const float*", "float*", "float", "int"]}``;
            a template instantiation is named as in CuPy's ``name_expressions``: ``"im2col<double>"``.
        extra_flags: more g++ flags (e.g. ``("-DDEBUG",)``).

    Returns:
        An :class:`EmulatedModule`; compiled once per (source, kernels, flags) and cached on disk and in memory.

    Raises:
        EmulatorError: g++ is not installed, or the source does not compile (the message holds g++'s errors).
        TypeError: a parameter type is not one the emulator knows.
    """
    if not isinstance(source, str):
        raise TypeError(f"source: expected a str of CUDA C++ source, got {type(source).__name__}")
    if not kernels:
        raise ValueError("kernels: expected at least one kernel name -> [parameter types]")
    params = {name: [_Param(name, i, s) for i, s in enumerate(types)] for name, types in kernels.items()}
    symbols = {name: _symbol(i, name) for i, name in enumerate(params)}
    full = (
        f'#include "{_HEADER.name}"\n#line 1 "kernel_source.cu"\n{source}\n{_launchers(params, symbols)}'
    )
    flags = tuple(FLAGS) + tuple(extra_flags)
    header = _HEADER.read_text()
    key = hashlib.sha256("\0".join([header, full, *flags]).encode()).hexdigest()[:24]
    with _LOCK:
        if key in _LOADED:
            return _LOADED[key]
        lib_path = cache_dir() / f"{key}.so"
        if not lib_path.is_file():
            _build(full, flags, lib_path)
        module = EmulatedModule(ctypes.CDLL(str(lib_path)), params, symbols)
        _LOADED[key] = module
        return module


def _build(full_source: str, flags: tuple[str, ...], lib_path: Path) -> None:
    gxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if not gxx:
        raise EmulatorError(
            "the CUDA emulator needs a C++ compiler: g++ was not found on PATH (install g++, e.g. "
            "`apt install g++` or `conda install gxx`, or set CXX)"
        )
    lib_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="dcn_emu_") as tmp:
        src = Path(tmp) / "module.cpp"
        src.write_text(full_source)
        out = Path(tmp) / "module.so"
        cmd = [gxx, *flags, "-I", str(_HEADER.parent), str(src), "-o", str(out)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise EmulatorError(f"g++ could not compile the kernel source:\n{proc.stderr.strip()[-6000:]}")
        # Write under a unique name, then rename: concurrent processes never load a half-written library.
        fd, part = tempfile.mkstemp(dir=lib_path.parent, suffix=".so.part")
        os.close(fd)
        shutil.copyfile(out, part)
        os.replace(part, lib_path)
