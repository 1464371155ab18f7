"""Where the kernel source lives, how it is assembled, and the signature of every kernel.

The kernels sit in ``kernels/`` at the repository root, next to the ``dcn_lessons`` package; a wheel carries a
copy inside the package (see :func:`kernels_dir`). :func:`kernel_source` inlines
the local ``#include "..."`` files once each, so one string holds everything: CuPy's compile cache (keyed on
the source text) and the emulator's cache (a hash of the text) both notice any edit of any file.

:data:`SIGNATURES` is the single description of every kernel's parameters. ``T`` stands for the template's
element type, ``A`` for the type it computes in (``DcnAcc<T>::type``: T itself for float and double, float for
the 16-bit ``dcn_half`` and ``dcn_bfloat16``). :data:`ELEMENT_TYPES` says which element types each kernel is
instantiated for. The CuPy glue uses the table to convert scalars to the exact C type (CuPy would otherwise
pass a Python float as a double), the emulator to generate its launchers.
"""
from __future__ import annotations

import re
from pathlib import Path

__all__ = ["kernels_dir", "kernel_source", "definition", "SIGNATURES", "ELEMENT_TYPES", "KERNEL_FILES", "name_expression",
           "c_type", "ACCUMULATE"]

#: The kernel files the backend loads, in order.
KERNEL_FILES: tuple[str, ...] = ("deform_conv.cu", "roi_align.cu")

_CONV = ["int64"] * 14  # C, H, W, kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo, G
_ROI = ["int64"] * 6 + ["T", "int64", "T", "int32"]  # C_in, H, W, C_out, ph, pw, scale, ratio, gamma, ps

#: kernel template name -> parameter types ("T*" pointer, "T" scalar of the element type, "A*" pointer to the
#: compute type, "int32", "int64").
SIGNATURES: dict[str, list[str]] = {
    "deform_im2col_kernel": ["int64", "const T*", "const T*", "const T*", "int32", "T*"] + _CONV,
    "deform_im2col_grouped_kernel": ["int64", "const T*", "const T*", "const T*", "int32", "T*"] + _CONV,
    "deform_col2im_kernel": ["int64", "const T*", "const T*", "const T*", "int32", "A*"] + _CONV,
    "deform_col2im_coord_kernel": ["int64", "const T*", "const T*", "const T*", "const T*", "int32", "T*", "T*",
                                   "int32"] + _CONV,
    "deform_col2im_fused_kernel": ["int64", "const T*", "const T*", "const T*", "const T*", "int32", "A*", "T*",
                                   "T*", "int32"] + _CONV,
    "roi_align_forward_kernel": ["int64", "const T*", "const T*", "const T*", "int32", "const T*", "int32", "T*"]
    + _ROI,
    "roi_align_backward_kernel": ["int64", "const T*", "const T*", "const T*", "const T*", "int32", "const T*",
                                 "int32", "T*", "T*", "int32", "T*", "int32"] + _ROI,
}

#: The element types of the conv kernels (16-bit ones stored as such, computed in float32) and of the RoI
#: kernels (float and double only: torchvision's RoI ops also run in float32 under autocast).
_CONV_ELEMENTS = ("float", "double", "dcn_half", "dcn_bfloat16")
_ROI_ELEMENTS = ("float", "double")
#: kernel -> the element types it is instantiated for.
ELEMENT_TYPES: dict[str, tuple[str, ...]] = {
    k: (_ROI_ELEMENTS if k.startswith("roi_") else _CONV_ELEMENTS) for k in SIGNATURES
}
#: element type -> the type its kernels compute and accumulate in (DcnAcc<T>::type of dcn_common.cuh).
ACCUMULATE: dict[str, str] = {"float": "float", "double": "double", "dcn_half": "float", "dcn_bfloat16": "float"}

_C_TYPES = {"int32": "int", "int64": "long long"}


def c_type(spec: str, element: str) -> str:
    """The C type of a :data:`SIGNATURES` entry for element type ``element`` (a key of :data:`ACCUMULATE`)."""
    base = spec.replace("const ", "").rstrip("*").strip()
    ctype = element if base == "T" else ACCUMULATE[element] if base == "A" else _C_TYPES[base]
    return ("const " if spec.startswith("const ") else "") + ctype + ("*" if spec.endswith("*") else "")


def name_expression(kernel: str, element: str) -> str:
    """CuPy name expression of one instantiation, e.g. ``deform_im2col_kernel<float>``."""
    return f"{kernel}<{element}>"


def kernels_dir() -> Path:
    """The folder holding the ``.cu``/``.cuh`` files: ``$DCN_LESSONS_KERNELS`` if set; else the copy inside the
    installed package (``dcn_lessons/kernels/``, which a wheel carries); else ``kernels/`` of the checkout the
    package sits in (an editable install). The top-level ``kernels/`` is the one source: the wheel's copy is made
    from it when the wheel is built (``setup.py``).

    Raises FileNotFoundError saying where it looked when no candidate holds every one of :data:`KERNEL_FILES`.
    """
    from dcn_lessons.config import path_override

    env = path_override("DCN_LESSONS_KERNELS")
    if env is not None:
        candidates = [(env, "the environment variable DCN_LESSONS_KERNELS")]
    else:
        pkg = Path(__file__).resolve().parent.parent
        candidates = [(pkg / "kernels", "inside the installed package"),
                      (pkg.parent / "kernels", "next to the dcn_lessons package (a checkout)")]
    for where, _ in candidates:
        if all((where / f).is_file() for f in KERNEL_FILES):
            return where
    looked = "; ".join(f"{where} ({how})" for where, how in candidates)
    raise FileNotFoundError(
        f"CUDA kernel sources not found: looked in {looked} for {', '.join(KERNEL_FILES)}; install dcn_lessons "
        "from its wheel or a checkout (pip install . or pip install -e .), or set DCN_LESSONS_KERNELS to the "
        "folder holding them"
    )


_PRAGMA_ONCE = re.compile(r"^[ \t]*#[ \t]*pragma[ \t]+once[ \t]*$", re.MULTILINE)
_INCLUDE = re.compile(r'^[ \t]*#[ \t]*include[ \t]*"([^"]+)"[ \t]*$', re.MULTILINE)


def _inline(path: Path, seen: set[Path]) -> str:
    path = path.resolve()
    if path in seen:
        return f"// (already included: {path.name})\n"
    seen.add(path)
    # Inlining dedupes includes itself; a leftover "#pragma once" would warn "in main file".
    text = _PRAGMA_ONCE.sub("", path.read_text())

    def repl(m: re.Match[str]) -> str:
        target = path.parent / m.group(1)
        if not target.is_file():
            raise FileNotFoundError(f"{path.name}: #include \"{m.group(1)}\" not found next to it in {path.parent}")
        return f"// ---- begin {m.group(1)}\n{_inline(target, seen)}\n// ---- end {m.group(1)}"

    return _INCLUDE.sub(repl, text)


def kernel_source(files: tuple[str, ...] = KERNEL_FILES, directory: Path | None = None) -> str:
    """All of ``files`` (from :func:`kernels_dir`) as one string, local includes inlined once each."""
    directory = kernels_dir() if directory is None else Path(directory)
    seen: set[Path] = set()
    return "\n".join(_inline(directory / f, seen) for f in files)


def definition(file: str, name: str) -> str:
    """The definition of ``name`` in ``kernels/<file>`` as text: a function (``__global__``/``__device__``, up
    to the brace that closes its body), a macro (with its continuation lines) or a typedef, together with the
    comment and ``template`` lines right above it. Lesson 06 prints the kernels with it, read from disk.

    Raises ValueError naming the file when there is no such definition.
    """
    lines = (kernels_dir() / file).read_text().splitlines()
    at = next((i for i, ln in enumerate(lines)
               if (f" {name}(" in ln and ("__global__" in ln or "__device__" in ln))
               or ln.startswith((f"#define {name}(", f"#define {name} "))
               or (ln.startswith("typedef") and ln.rstrip().rstrip(";").endswith(f" {name}"))), None)
    if at is None:
        raise ValueError(f"name: no definition of {name!r} found in kernels/{file}")
    start = at
    while start > 0 and lines[start - 1].lstrip().startswith(("//", "template")):
        start -= 1
    end = at
    if lines[at].startswith(("#define", "typedef")):  # a macro runs on while its lines end in a backslash
        while lines[end].rstrip().endswith("\\") and end + 1 < len(lines):
            end += 1
    else:  # a function: up to the brace that closes its body
        depth = 0
        for end in range(at, len(lines)):
            depth += lines[end].count("{") - lines[end].count("}")
            if depth == 0 and "{" in "".join(lines[at:end + 1]):
                break
    return "\n".join(lines[start:end + 1])
