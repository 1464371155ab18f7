"""kernels/ compiles with NVRTC, the compiler ``cupy.RawModule`` uses, for sm_70, sm_80 and sm_90: no GPU needed.

The nvcc test (test_cuda_compile.py) compiles each file with nvcc; this one compiles exactly what the CUDA
backend hands CuPy (the inlined source, its options, every name expression) to machine code (cubin) for each
architecture, checks that every instantiation is found under its mangled name, and reads the PTX for what the
16-bit kernels promise: hardware conversions, float32 atomics only. NVRTC comes from the
``nvidia-cuda-nvrtc-cu12`` wheel of the test extra (NVRTC 12 still targets sm_70); where it is missing the tests
are skipped with the reason.
"""
from __future__ import annotations

import re

import pytest

from dcn_lessons.cuda import nvrtc
from dcn_lessons.cuda._source import ELEMENT_TYPES, SIGNATURES, kernel_source
from dcn_lessons.cuda.backend import NVRTC_OPTIONS, all_name_expressions

try:
    nvrtc.library_path()
except nvrtc.NvrtcUnavailable as exc:  # pragma: no cover - depends on the machine
    pytest.skip(str(exc), allow_module_level=True)

WANTED = (70, 80, 90)
# The only message NVRTC 12 may print for the whole source: its deprecation note for sm_70/sm_72.
_KNOWN_NOTE = re.compile(r"nvrtc: warning: Architectures prior to '<compute/sm>_75' are deprecated[^\n]*")


def test_name_expressions_cover_every_kernel_and_element_type():
    names = all_name_expressions()
    assert len(names) == len(set(names)) == sum(len(ELEMENT_TYPES[k]) for k in SIGNATURES)
    assert "deform_col2im_fused_kernel<dcn_bfloat16>" in names and "roi_align_forward_kernel<double>" in names
    assert not any(n.startswith("roi_") and "dcn_" in n for n in names)  # RoI kernels: float and double only


@pytest.mark.parametrize("arch", WANTED)
def test_kernels_compile_to_machine_code_with_cupys_compiler(arch):
    if arch not in nvrtc.supported_architectures():
        pytest.skip(f"sm_{arch}: NVRTC {nvrtc.version()} cannot target it (CUDA 13 dropped sm_70)")
    names = all_name_expressions()
    prog = nvrtc.compile(kernel_source(), f"sm_{arch}", names, NVRTC_OPTIONS, name="dcn_kernels.cu")
    assert _KNOWN_NOTE.sub("", prog.log).strip() == "", f"NVRTC warnings for sm_{arch}:\n{prog.log}"
    assert prog.cubin is not None and prog.cubin[:4] == b"\x7fELF" and len(prog.cubin) > 50_000
    assert sorted(prog.lowered_names) == sorted(names)
    for expr, symbol in prog.lowered_names.items():
        assert symbol.startswith("_Z") and symbol.encode() in prog.cubin, expr


def _ptx_function(ptx: str, symbol: str) -> str:
    start = ptx.index(f".entry {symbol}(")
    end = ptx.find(".entry ", start + 10)
    return ptx[start:] if end < 0 else ptx[start:end]


def test_16bit_kernels_use_hardware_conversions_and_float32_atomics():
    names = all_name_expressions()
    prog = nvrtc.compile(kernel_source(), "compute_90", names, NVRTC_OPTIONS)
    assert prog.ptx is not None
    fn = {e: _ptx_function(prog.ptx, s) for e, s in prog.lowered_names.items()}
    half_im2col = fn["deform_im2col_kernel<dcn_half>"]
    assert "cvt.f32.f16" in half_im2col and "cvt.rn.f16.f32" in half_im2col  # widen on load, round on store
    assert "cvt.rn.f16.f32" not in fn["deform_im2col_kernel<dcn_bfloat16>"]   # bfloat16: integer rounding
    for t in ("dcn_half", "dcn_bfloat16", "float"):
        for kernel in ("deform_col2im_kernel", "deform_col2im_fused_kernel"):
            body = fn[f"{kernel}<{t}>"]
            atomics = re.findall(r"\b(?:atom|red)\.global\.add\.(\w+)", body)
            assert atomics and set(atomics) == {"f32"}, f"{kernel}<{t}>: atomics {atomics}"
    double_atomics = re.findall(r"\b(?:atom|red)\.global\.add\.(\w+)", fn["deform_col2im_kernel<double>"])
    assert set(double_atomics) == {"f64"}  # native float64 atomicAdd (sm_60 and later)
    assert not re.search(r"\b(?:atom|red)\.", fn["deform_col2im_coord_kernel<float>"])  # one writer per output


def test_compile_errors_and_bad_arguments_are_reported():
    with pytest.raises(nvrtc.NvrtcError, match='identifier "undefined_name" is undefined'):
        nvrtc.compile("__global__ void k(float* x) { x[0] = undefined_name; }")
    with pytest.raises(ValueError, match=r'arch: expected "compute_XX" \(PTX\) or "sm_XX"'):
        nvrtc.compile("__global__ void k() {}", arch="90")
    with pytest.raises(TypeError, match="source: expected a str"):
        nvrtc.compile(b"__global__ void k() {}")  # type: ignore[arg-type]
