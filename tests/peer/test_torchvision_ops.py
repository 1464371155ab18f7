"""Our operators against torchvision's, in float64 on the CPU, forward and every gradient, on every backend.

Runs where torch and torchvision both come from PyPI (CI's peer environment, ``DCN_LESSONS_PEER=1``; see
``conftest.py``). Where the course's rule differs from torchvision's by design, the test pins the difference:

* the position gradient of deformable convolution on the line y = -1 (x = -1): 0 here (a sample there is outside,
  as in mmcv and the original DCNv2 code), the forward difference x(0) - 0 in torchvision, whose
  ``get_coordinate_weight`` has no inside test;
* ``ps_roi_align`` of a zero-size box with adaptive sampling: torchvision divides 0 by 0 samples (NaN), ours
  gives 0.
"""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
import torchvision.ops as tv

import dcn_lessons.ops as ops
from dcn_lessons import backends

F64 = torch.float64
CONV_BACKENDS = ["tensor", "cuda-emulated"] + (["cpu-numba"] if importlib.util.find_spec("numba") else [])
ROI_BACKENDS = ["tensor", "cuda-emulated"]


def _leaves(*ts):
    return [None if t is None else t.detach().clone().requires_grad_() for t in ts]


def _grads(fn, leaves, seed=0):
    y = fn(*leaves)
    go = torch.randn(y.shape, dtype=y.dtype, generator=torch.Generator().manual_seed(seed))
    used = [t for t in leaves if t is not None]
    return [y.detach()] + list(torch.autograd.grad(y, used, go))


# (C, O, H, W, k, stride, padding, dilation, groups, offset_groups, modulated)
CONV_CASES = {
    "v1": (4, 6, 7, 8, (3, 3), (1, 1), (1, 1), (1, 1), 1, 1, False),
    "v2": (4, 6, 7, 8, (3, 3), (1, 1), (1, 1), (1, 1), 1, 1, True),
    "stride_dilation": (3, 4, 9, 10, (3, 2), (2, 1), (2, 1), (2, 2), 1, 1, True),
    "groups": (6, 4, 6, 7, (3, 3), (1, 2), (1, 1), (1, 1), 2, 3, True),
    "offset_groups": (4, 4, 6, 6, (2, 3), (1, 1), (0, 1), (1, 1), 1, 4, False),
}


def _conv_case(name: str, offsets: str, seed: int):
    c, o, h, w, k, s, p, d, groups, og, modulated = CONV_CASES[name]
    g = torch.Generator().manual_seed(seed)
    ho = (h + 2 * p[0] - (d[0] * (k[0] - 1) + 1)) // s[0] + 1
    wo = (w + 2 * p[1] - (d[1] * (k[1] - 1) + 1)) // s[1] + 1
    shape = (2, 2 * og * k[0] * k[1], ho, wo)
    if offsets == "random":  # fractional, a few far outside; never exactly on the y = -1 / x = -1 lines
        off = torch.randn(shape, generator=g, dtype=F64) * 1.7 + 0.013
    else:  # every sample on integer coordinates (the start of training); the -1 lines are pinned separately
        off = torch.randint(-2, 3, shape, generator=g).to(F64)
    x = torch.randn(2, c, h, w, generator=g, dtype=F64)
    wt = torch.randn(o, c // groups, *k, generator=g, dtype=F64)
    b = torch.randn(o, generator=g, dtype=F64)
    m = torch.rand(2, og * k[0] * k[1], ho, wo, generator=g, dtype=F64) if modulated else None
    return (x, off, wt, b, m), dict(stride=s, padding=p, dilation=d), k


def _on_minus_one_line(off: torch.Tensor, k, conf) -> torch.Tensor:
    """Bool [N, 2*G*K, Ho, Wo]: the Δy entry of every sample with y = -1 and the Δx entry of every one with x = -1
    (the entries where torchvision's position gradient differs from the course's rule)."""
    n, ch, ho, wo = off.shape
    kh, kw = k
    kk = kh * kw
    (sh, sw), (ph, pw), (dh, dw) = conf["stride"], conf["padding"], conf["dilation"]
    kpt = torch.arange(kk)
    base_y = (torch.arange(ho) * sh - ph)[None, :, None] + (kpt // kw * dh)[:, None, None]  # [K, Ho, 1]
    base_x = (torch.arange(wo) * sw - pw)[None, None, :] + (kpt % kw * dw)[:, None, None]  # [K, 1, Wo]
    o = off.view(n, ch // (2 * kk), kk, 2, ho, wo)
    y, x = base_y + o[:, :, :, 0], base_x + o[:, :, :, 1]
    return torch.stack([y == -1, x == -1], dim=3).view(n, ch, ho, wo)


@pytest.mark.parametrize("backend", CONV_BACKENDS)
@pytest.mark.parametrize("offsets", ["random", "integer"])
@pytest.mark.parametrize("name", list(CONV_CASES))
def test_deform_conv2d_matches_torchvision(monkeypatch, backend, offsets, name):
    monkeypatch.setenv("DCN_LESSONS_BACKEND", backend)
    (x, off, w, b, m), conf, k = _conv_case(name, offsets, seed=len(name) * 7 + len(offsets))
    leaves = _leaves(x, off, w, b, m)
    ours = _grads(lambda *a: ops.deform_conv2d(a[0], a[1], a[2], a[3], mask=a[4], **conf), leaves)
    theirs = _grads(lambda *a: tv.deform_conv2d(a[0], a[1], a[2], a[3], mask=a[4], **conf), leaves)
    names = ["output", "input", "offset", "weight", "bias"] + (["mask"] if m is not None else [])
    line = _on_minus_one_line(off, k, conf)
    assert (offsets == "integer") == bool(line.any()), "the cases should (not) reach the -1 lines"
    for label, a, e in zip(names, ours, theirs):
        if label == "offset":
            # on the -1 lines: 0 here; elsewhere the same numbers
            assert torch.all(a[line] == 0), "the course's rule gives 0 on the y = -1 / x = -1 lines"
            a, e = a[~line], e[~line]
        torch.testing.assert_close(a, e, rtol=1e-12, atol=1e-12, msg=f"{name} {offsets} {backend}: {label}")


@pytest.mark.parametrize("backend", CONV_BACKENDS)
def test_the_minus_one_line_difference_is_exactly_torchvisions_forward_difference(monkeypatch, backend):
    """6x6 input, 3x3 kernel, padding 1, zero offsets: 32 of the 648 offset-gradient entries differ, and there
    torchvision's value is the forward difference x(0) - 0 = x(0) (times the weights and the output gradient):
    checked by rebuilding it from torchvision's own gradient of an input shifted by one pixel."""
    monkeypatch.setenv("DCN_LESSONS_BACKEND", backend)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(1, 1, 6, 6, generator=g, dtype=F64)
    w = torch.randn(1, 1, 3, 3, generator=g, dtype=F64)
    off = torch.zeros(1, 18, 6, 6, dtype=F64, requires_grad=True)
    ours = torch.autograd.grad(ops.deform_conv2d(x, off, w, padding=1).sum(), off)[0]
    theirs = torch.autograd.grad(tv.deform_conv2d(x, off, w, padding=1).sum(), off)[0]
    differ = (ours - theirs).abs() > 1e-12
    assert int(differ.sum()) == 32 and ours.numel() == 648
    line = _on_minus_one_line(off.detach(), (3, 3), dict(stride=(1, 1), padding=(1, 1), dilation=(1, 1)))
    assert torch.equal(differ, line & (theirs != 0))
    # A Δy entry on y = -1 of kernel point (0, j) at output (0, c): torchvision's forward difference
    # w[0, j] * (x(0, c - 1 + j) - 0), the sample's lower neighbour being off the map.
    xs = x[0, 0]
    for j in range(3):
        for col in range(6):
            xc = col - 1 + j
            want = float(w[0, 0, 0, j] * xs[0, xc]) if 0 <= xc < 6 else 0.0
            assert float(theirs[0, 2 * j, 0, col]) == pytest.approx(want, abs=1e-12)
            assert float(ours[0, 2 * j, 0, col]) == 0.0


def _roi_boxes(seed: int, n: int, h: int, w: int, scale: float) -> torch.Tensor:
    r = np.random.default_rng(seed)
    k = 9
    hs, ws = h / scale, w / scale
    x1, y1 = r.uniform(-0.3 * ws, ws, k), r.uniform(-0.3 * hs, hs, k)
    boxes = np.stack([r.integers(0, n, k), x1, y1, x1 + r.uniform(0.5, 0.7 * ws, k), y1 + r.uniform(0.5, 0.7 * hs, k)], 1)
    boxes[-1, 3:] = boxes[-1, 1:3] + 1e-3  # almost degenerate
    return torch.tensor(boxes, dtype=F64)


@pytest.mark.parametrize("backend", ROI_BACKENDS)
@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("sampling_ratio", [2, 0, -1])
@pytest.mark.parametrize("scale", [1.0, 0.25])
def test_roi_align_matches_torchvision(monkeypatch, backend, aligned, sampling_ratio, scale):
    monkeypatch.setenv("DCN_LESSONS_BACKEND", backend)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 8, 9, generator=g, dtype=F64)
    boxes = _roi_boxes(int(scale * 8) + sampling_ratio + 3, 2, 8, 9, scale)
    args = ((3, 2), scale, sampling_ratio, aligned)
    ours = _grads(lambda a: ops.roi_align(a, boxes, *args), _leaves(x))
    theirs = _grads(lambda a: tv.roi_align(a, boxes, *args), _leaves(x))
    for label, a, e in zip(["output", "input"], ours, theirs):
        torch.testing.assert_close(a, e, rtol=1e-12, atol=1e-12, msg=label)


@pytest.mark.parametrize("backend", ROI_BACKENDS)
@pytest.mark.parametrize("sampling_ratio", [2, 0])
def test_ps_roi_align_matches_torchvision(monkeypatch, backend, sampling_ratio):
    monkeypatch.setenv("DCN_LESSONS_BACKEND", backend)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 2 * 3 * 2, 8, 9, generator=g, dtype=F64)
    boxes = _roi_boxes(11 + sampling_ratio, 2, 8, 9, 0.5)
    args = ((3, 2), 0.5, sampling_ratio)
    ours = _grads(lambda a: ops.ps_roi_align(a, boxes, *args), _leaves(x))
    theirs = _grads(lambda a: tv.ps_roi_align(a, boxes, *args), _leaves(x))
    for label, a, e in zip(["output", "input"], ours, theirs):
        torch.testing.assert_close(a, e, rtol=1e-12, atol=1e-12, msg=label)


@pytest.mark.parametrize("backend", ROI_BACKENDS)
def test_ps_roi_align_of_a_zero_size_box_is_nan_in_torchvision_zero_here(monkeypatch, backend):
    monkeypatch.setenv("DCN_LESSONS_BACKEND", backend)
    x = torch.randn(1, 4, 6, 6, dtype=F64)
    box = torch.tensor([[0, 2.0, 2.0, 2.0, 2.0]], dtype=F64)  # zero width and height: 0 samples when adaptive
    assert torch.isnan(tv.ps_roi_align(x, box, 2, 1.0, 0)).all()
    assert torch.equal(ops.ps_roi_align(x, box, 2, 1.0, 0), torch.zeros(1, 1, 2, 2, dtype=F64))
    # with a fixed sampling ratio both sample the point and agree
    torch.testing.assert_close(ops.ps_roi_align(x, box, 2, 1.0, 2), tv.ps_roi_align(x, box, 2, 1.0, 2),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("scale", [1.0, 0.5])
def test_roi_pool_matches_torchvision(scale):
    g = torch.Generator().manual_seed(6)
    x = torch.randn(2, 3, 8, 9, generator=g, dtype=F64)
    boxes = _roi_boxes(21, 2, 8, 9, scale)
    ours = _grads(lambda a: ops.roi_pool(a, boxes, (3, 2), scale), _leaves(x))
    theirs = _grads(lambda a: tv.roi_pool(a, boxes, (3, 2), scale), _leaves(x))
    for label, a, e in zip(["output", "input"], ours, theirs):
        torch.testing.assert_close(a, e, rtol=1e-12, atol=1e-12, msg=label)


def test_the_backends_under_test_are_the_ones_named(monkeypatch):
    """The parametrisation is not a no-op: each name really selects that backend here."""
    for name in CONV_BACKENDS:
        monkeypatch.setenv("DCN_LESSONS_BACKEND", name)
        assert backends.active_backend(torch.zeros(1, dtype=F64), "conv") == name
    for name in ROI_BACKENDS:
        monkeypatch.setenv("DCN_LESSONS_BACKEND", name)
        assert backends.active_backend(torch.zeros(1, dtype=F64), "roi") == name
