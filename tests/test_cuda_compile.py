"""Every kernel file of ``kernels/`` compiles with nvcc for the GPU generations we target (sm_70/80/90).

One nvcc call compiles every file (each on its own, and the single inlined source CuPy receives) for all the
supported architectures at once, with every ``__global__`` template instantiated for each of its element types
(``ELEMENT_TYPES``: float and double everywhere, dcn_half and dcn_bfloat16 for the conv kernels) and warnings
as errors. Skipped, with the reason shown, where nvcc is not installed. CUDA 13's nvcc no longer
targets sm_70 (Volta): :func:`test_architecture_is_supported_by_this_nvcc` checks, from nvcc's release, which of
the targets it must support, so an architecture is never dropped silently (sm_70 is compiled by NVRTC 12 in
``test_cuda_nvrtc.py``).
"""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from dcn_lessons.cuda._source import ELEMENT_TYPES, KERNEL_FILES, SIGNATURES, kernel_source, kernels_dir

NVCC = shutil.which("nvcc")
pytestmark = pytest.mark.skipif(NVCC is None, reason="nvcc not found on PATH: cannot compile the CUDA kernels")
WANTED = (70, 80, 90)
_GLOBAL = re.compile(r"__global__\s+void\s+(\w+)\s*\(")


def _supported() -> set[int]:
    out = subprocess.run([NVCC, "--list-gpu-arch"], capture_output=True, text=True)
    return {int(m) for m in re.findall(r"compute_(\d+)", out.stdout)}


def _release() -> tuple[int, int]:
    """nvcc's CUDA release, e.g. (13, 0), from ``nvcc --version``."""
    out = subprocess.run([NVCC, "--version"], capture_output=True, text=True).stdout
    found = re.search(r"release (\d+)\.(\d+)", out)
    assert found, f"cannot read the CUDA release from nvcc --version:\n{out}"
    return int(found.group(1)), int(found.group(2))


def expected_support(arch: int, release: tuple[int, int]) -> bool:
    """Whether the nvcc of CUDA ``release`` targets sm_``arch`` (NVIDIA's release notes): sm_70 from CUDA 9.0
    until CUDA 13.0 dropped it; sm_80 from 11.0; sm_90 from 11.8."""
    first = {70: (9, 0), 80: (11, 0), 90: (11, 8)}[arch]
    last = {70: (12, 99)}.get(arch, (99, 99))
    return first <= release <= last


def _kernels_in(path: Path) -> list[str]:
    return _GLOBAL.findall(path.read_text())


def test_signature_table_lists_every_kernel():
    found = [k for f in KERNEL_FILES for k in _kernels_in(kernels_dir() / f)]
    assert sorted(found) == sorted(SIGNATURES), "dcn_lessons/cuda/_source.py SIGNATURES out of sync with kernels/"


def test_source_needs_no_system_headers():
    """NVRTC (CuPy's compiler) has no C++ standard library: the inlined source must include nothing."""
    src = kernel_source()
    assert "#include" not in src and "__global__" in src


def test_every_kernel_file_compiles(tmp_path):
    archs = [a for a in WANTED if a in _supported()]
    if not archs:
        pytest.skip(f"this nvcc supports none of sm_{WANTED}")
    sources = []
    for name in KERNEL_FILES:
        kernels = _kernels_in(kernels_dir() / name)
        inst = ", ".join(f"(void*)&{k}<{t}>" for k in kernels for t in ELEMENT_TYPES[k])
        src = tmp_path / f"inst_{Path(name).stem}.cu"
        src.write_text(f'#include "{name}"\nvoid* dcn_instantiations[] = {{{inst}}};\n')
        sources.append(src)
    # What CuPy compiles: one string, includes inlined (no include path needed).
    every = ", ".join(f"(void*)&{k}<{t}>" for k in SIGNATURES for t in ELEMENT_TYPES[k])
    inlined = tmp_path / "inst_inlined.cu"
    inlined.write_text(kernel_source() + f"\nvoid* dcn_instantiations[] = {{{every}}};\n")
    sources.append(inlined)
    gencode = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs]
    cmd = [NVCC, "-c", "-std=c++17", "-Werror", "all-warnings", "-Xptxas", "-v", "-I", str(kernels_dir()),
           *gencode, "--output-directory", str(tmp_path), *map(str, sources)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, f"nvcc failed ({' '.join(cmd)}):\n{proc.stderr[-4000:]}"
    # ptxas -v reports each kernel's registers and spills: a spill (registers moved to local memory) would cost
    # a memory round trip per use in these memory-bound kernels.
    spills = [int(n) for n in re.findall(r"(\d+) bytes spill (?:stores|loads)", proc.stderr)]
    assert spills and max(spills) == 0, "a kernel spills registers:\n" + proc.stderr[-4000:]
    for src in sources:
        obj = tmp_path / (src.stem + ".o")
        assert obj.is_file() and obj.stat().st_size > 1000, obj


@pytest.mark.parametrize("arch", WANTED)
def test_architecture_is_supported_by_this_nvcc(arch):
    """This nvcc targets exactly the architectures its release should: a target missing where it should be there
    (a broken install) or present where it should not (the table above is out of date) fails. Where this nvcc
    cannot target sm_70 (CUDA 13), test_cuda_nvrtc.py compiles sm_70 with NVRTC 12."""
    release = _release()
    supported = arch in _supported()
    assert supported == expected_support(arch, release), (
        f"sm_{arch}: nvcc {release[0]}.{release[1]} {'targets' if supported else 'does not target'} it, "
        f"expected the opposite (nvcc --list-gpu-arch: {sorted(_supported())})")
