"""dcn_lessons installs like any library: a wheel, installed (not editable), works from outside the checkout.

The wheel is built from this checkout (``pip wheel --no-deps --no-build-isolation``), installed with ``--no-deps``
into a fresh folder put first on ``PYTHONPATH`` (the test venv's site-packages provide the dependencies), and a
fresh interpreter started in a temporary directory runs the ops, the registered operators, the CPU emulator of the
CUDA kernels (which must find ``kernels/`` inside the installed package), a grading call (the snapshot of the
installed files, the lessons of a notebook folder given as an argument) and the command line.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

from conftest import REPO


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """``(site, build log)``: the folder the wheel was installed into."""
    base = tmp_path_factory.mktemp("wheel")
    dist, site = base / "dist", base / "site"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(dist),
                            str(REPO)], capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    wheels = list(dist.glob("dcn_lessons-*.whl"))
    assert len(wheels) == 1, wheels
    names = zipfile.ZipFile(wheels[0]).namelist()
    for f in ("deform_conv.cu", "roi_align.cu", "dcn_common.cuh", "dcn_bilinear.cuh"):
        assert f"dcn_lessons/kernels/{f}" in names, f"the wheel lacks kernels/{f}"
    inst = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(site), str(wheels[0])],
                          capture_output=True, text=True, timeout=600)
    assert inst.returncode == 0, inst.stdout[-3000:] + inst.stderr[-3000:]
    return site, build.stdout + build.stderr + inst.stdout + inst.stderr


def test_build_and_install_print_no_deprecation_warning_of_ours(installed: tuple[Path, str]) -> None:
    _, log = installed
    ours = [ln for ln in log.splitlines() if ("deprecat" in ln.lower() or "BuildBackendWarning" in ln)]
    assert not ours, "\n".join(ours)


def test_the_installed_wheel_works_outside_the_checkout(installed: tuple[Path, str], tmp_path: Path) -> None:
    site, _ = installed
    code = textwrap.dedent(f"""
        import pathlib, warnings
        warnings.simplefilter("error", DeprecationWarning)
        import torch, dcn_lessons, dcn_lessons.ops as ops, dcn_lessons.cuda as dcuda
        from dcn_lessons.cuda import _source
        here = pathlib.Path(dcn_lessons.__file__).resolve()
        assert here.is_relative_to(pathlib.Path({str(site)!r}).resolve()), here
        assert not here.is_relative_to(pathlib.Path({str(REPO)!r}).resolve()), "imported from the checkout"
        assert _source.kernels_dir() == here.parent / "kernels", _source.kernels_dir()
        x = torch.randn(1, 2, 5, 5, dtype=torch.float64, requires_grad=True)
        off = torch.randn(1, 18, 5, 5, dtype=torch.float64, requires_grad=True)
        w = torch.randn(3, 2, 3, 3, dtype=torch.float64)
        y = ops.deform_conv2d(x, off, w, padding=1)
        y.sum().backward()
        assert torch.ops.dcn_lessons.deform_conv2d is not None and off.grad.abs().sum() > 0
        emu = ops.deform_im2col(x.detach(), off.detach(), None, 3, padding=1, backend="cuda-emulated")
        ref = ops.deform_im2col(x.detach(), off.detach(), None, 3, padding=1, backend="tensor")
        assert (emu - ref).abs().max() < 1e-12
        rois = torch.tensor([[0, 0.5, 0.5, 4.0, 4.0]], dtype=torch.float64)
        assert ops.roi_align(x, rois, 2).shape == (1, 2, 2, 2)
        # grading from a wheel: the snapshot comes from the installed files (checked against pip's RECORD), the
        # lessons from the notebook folder given as an argument
        from dcn_lessons.grading import lessons, questions, take_snapshot
        snap = take_snapshot(pathlib.Path("snap"))
        assert (snap.kernels / "deform_conv.cu").is_file() and "git" not in snap.source, snap.source
        masters = lessons(pathlib.Path({str(REPO / "notebooks")!r}))
        assert masters and sum(q.points for q in questions(masters[0]).values()) > 0
        print("wheel ok")
    """)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DCN_LESSONS_")}
    env["PYTHONPATH"] = str(site)
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0 and "wheel ok" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-4000:]
    cli = subprocess.run([sys.executable, "-m", "dcn_lessons", "--help"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert cli.returncode == 0 and "grade" in cli.stdout, cli.stderr[-2000:]
