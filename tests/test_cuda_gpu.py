"""The CUDA kernels on a real GPU (CuPy): against the NumPy references, the tensor path, torchvision.ops, and
float64 gradcheck through dcn_lessons.ops. Skipped, with the reason shown, unless torch sees a CUDA device and
CuPy imports. (The same kernel source is checked without a GPU by tests/test_cuda_emulated.py.)
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.cuda

if not torch.cuda.is_available():
    pytest.skip("no CUDA device visible to torch", allow_module_level=True)
try:
    import cupy  # noqa: F401
except Exception as exc:  # ImportError, or a CUDA-version mismatch raised at import
    pytest.skip(f"CuPy does not import ({exc}); install dcn_lessons[cuda12] or [cuda13]", allow_module_level=True)

import dcn_lessons.cuda as dcuda  # noqa: E402
from dcn_lessons.cuda.backend import NVRTC_OPTIONS, CupyKernels  # noqa: E402
from dcn_lessons.ops import deform_conv as ops_conv  # noqa: E402
import dcn_lessons.ops as ops_roi  # noqa: E402
from dcn_lessons import backends as B  # noqa: E402
from dcn_lessons.reference import deform_conv as RC  # noqa: E402
from dcn_lessons.reference import roi as RR  # noqa: E402

from cuda_cases import CONVERT_SOURCE, check_conversion, check_rounded_once, conversion_inputs  # noqa: E402

try:
    import torchvision.ops as tvops
except Exception:  # noqa: BLE001
    tvops = None

DEV = torch.device("cuda")
DTYPES = [torch.float64, torch.float32]


def _tol(dtype):
    return dict(rtol=1e-10, atol=1e-10) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def backends():
    return [CupyKernels(DEV), CupyKernels(DEV, im2col="grouped", backward="fused")]


def test_kernels_for_returns_the_cuda_backend(monkeypatch):
    monkeypatch.setenv("DCN_LESSONS_BACKEND", "cuda")  # any failure raises instead of falling back
    k = dcuda.kernels_for(torch.zeros(1, device=DEV))
    assert isinstance(k, CupyKernels)
    assert dcuda.kernels_for(torch.zeros(1, device=DEV)) is k  # cached per device
    assert B.select(torch.zeros(1, device=DEV)) is k and B.select(torch.zeros(1, device=DEV), "roi") is k
    monkeypatch.setenv("DCN_LESSONS_BACKEND", "tensor")
    assert B.select(torch.zeros(1, device=DEV)).name == "tensor"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("modulated", [True, False])
def test_conv_kernels_match_reference_and_tensor_path(backends, dtype, modulated):
    rng = np.random.default_rng(0)
    N, C, H, W, G, geo = 2, 6, 7, 8, 3, ((3, 3), (1, 2), (1, 1), (2, 1))
    Ho, Wo = (H + 2 - 5) // 1 + 1, (W + 2 - 3) // 2 + 1
    x = rng.standard_normal((N, C, H, W))
    off = rng.standard_normal((N, 2 * G * 9, Ho, Wo)) * 2
    off[:, ::5] = np.round(off[:, ::5])  # some samples on integer coordinates
    mask = rng.random((N, G * 9, Ho, Wo)) if modulated else None
    gcol = rng.standard_normal((N, C * 9, Ho * Wo))
    cast = {torch.float64: np.float64, torch.float32: np.float32}[dtype]
    x, off, gcol = x.astype(cast), off.astype(cast), gcol.astype(cast)
    mask = None if mask is None else mask.astype(cast)
    up = lambda a: None if a is None else a.astype(np.float64)  # noqa: E731
    cols = RC.deform_im2col(up(x), up(off), up(mask), *geo)
    gi = RC.deform_col2im(up(gcol), up(off), up(mask), x.shape, *geo)
    go, gm = RC.deform_col2im_coord(up(gcol), up(x), up(off), up(mask), *geo)
    d = lambda a: None if a is None else torch.from_numpy(a).to(DEV)  # noqa: E731
    tol = _tol(dtype)
    tensor_cols = ops_conv.deform_im2col(d(x), d(off), d(mask), *geo, backend="tensor")
    for be in backends:
        got = be.deform_im2col(d(x), d(off), d(mask), *geo)
        np.testing.assert_allclose(got.cpu().numpy(), cols, **tol)
        torch.testing.assert_close(got, tensor_cols, **tol)
        gi2, go2, gm2 = be.deform_conv_backward_columns(d(gcol), d(x), d(off), d(mask), *geo)
        np.testing.assert_allclose(gi2.cpu().numpy(), gi, **tol)
        np.testing.assert_allclose(go2.cpu().numpy(), go, **tol)
        if modulated:
            np.testing.assert_allclose(gm2.cpu().numpy(), gm, **tol)
        else:
            assert gm2 is None


def test_16bit_conversions_on_the_gpu_match_torch():
    """The GPU's cvt.rn.f16.f32 / cvt.f32.f16 path of dcn_store/dcn_load (the emulator checks _Float16's) and the
    bfloat16 integer rounding, compiled by CuPy's NVRTC: bit for bit what torch does."""
    import cupy

    from dcn_lessons.cuda._source import kernel_source

    mod = cupy.RawModule(code=kernel_source(("dcn_common.cuh",)) + 'extern "C" {' + CONVERT_SOURCE + "}",
                         options=NVRTC_OPTIONS)
    x = torch.from_numpy(conversion_inputs()).to(DEV)
    for name, dtype in (("to_half", torch.float16), ("to_bfloat16", torch.bfloat16)):
        out = torch.empty(x.numel(), dtype=dtype, device=DEV)
        back = torch.empty_like(x)
        mod.get_function(name)((64,), (256,), (cupy.from_dlpack(x), cupy.from_dlpack(out.view(torch.int16)),
                                               cupy.from_dlpack(back), np.int64(x.numel())))
        torch.cuda.synchronize()
        check_conversion(name, x.cpu().numpy(), out.cpu(), back.cpu().numpy())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_16bit_conv_kernels_round_once(backends, dtype):
    rng = np.random.default_rng(2)
    N, C, H, W, G, geo = 2, 6, 7, 8, 3, ((3, 3), (1, 1), (1, 1), (1, 1))
    x16 = torch.from_numpy(rng.standard_normal((N, C, H, W))).to(DEV, dtype)
    off16 = torch.from_numpy(rng.standard_normal((N, 2 * G * 9, H, W)) * 2).to(DEV, dtype)
    m16 = torch.from_numpy(rng.random((N, G * 9, H, W))).to(DEV, dtype)
    g16 = torch.from_numpy(rng.standard_normal((N, C * 9, H * W))).to(DEV, dtype)
    up = lambda t: t.double().cpu().numpy()  # noqa: E731  the 16-bit values, exactly
    want_cols = RC.deform_im2col(up(x16), up(off16), up(m16), *geo)
    want_gi = RC.deform_col2im(up(g16), up(off16), up(m16), x16.shape, *geo)
    want_go, want_gm = RC.deform_col2im_coord(up(g16), up(x16), up(off16), up(m16), *geo)
    for be in backends:
        check_rounded_once(f"im2col {be.im2col}", be.deform_im2col(x16, off16, m16, *geo), want_cols, dtype)
        gi, go, gm = be.deform_conv_backward_columns(g16, x16, off16, m16, *geo)
        for name, got, want in (("grad_input", gi, want_gi), ("grad_offset", go, want_go),
                                ("grad_mask", gm, want_gm)):
            check_rounded_once(f"{name} {be.backward}", got, want, dtype)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("variant", [("plain", "separate"), ("grouped", "fused")])
def test_16bit_deform_conv2d_runs_on_the_kernels(monkeypatch, dtype, variant):
    monkeypatch.setenv("DCN_LESSONS_BACKEND", "cuda")
    monkeypatch.setattr(dcuda, "_VARIANT", dict(zip(("im2col", "backward"), variant)))
    g = torch.Generator(device="cpu").manual_seed(1)
    x, off = torch.randn(2, 8, 12, 13, generator=g), torch.randn(2, 18, 12, 13, generator=g)
    w = torch.randn(4, 8, 3, 3, generator=g) / 8
    mask = torch.rand(2, 9, 12, 13, generator=g)
    assert ops_conv.active_backend(x.to(DEV, dtype)) == "cuda"

    def run(dt):
        leaves = [t.to(DEV, dt).requires_grad_() for t in (x, off, w, mask)]
        y = ops_conv.deform_conv2d(leaves[0], leaves[1], leaves[2], None, padding=1, mask=leaves[3])
        y.float().square().sum().backward()
        return [y.detach()] + [t.grad for t in leaves]

    tol = 2e-2 if dtype == torch.float16 else 8e-2
    for name, a, e in zip(("out", "input", "offset", "weight", "mask"), run(dtype), run(torch.float64)):
        assert a.dtype == dtype, name
        assert (a.double() - e).abs().max().item() <= tol * e.abs().max().item(), name


KINDS = ["roi_align", "deform_roi_pool", "modulated", "ps_roi_align", "deform_ps_roi_pool"]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", KINDS)
def test_roi_kernels_match_reference(backends, dtype, kind):
    rng = np.random.default_rng(1)
    ps = "ps" in kind
    size, scale, ratio, gamma = (3, 2), 0.5, 2, 0.1
    x = rng.standard_normal((2, 12 if ps else 5, 9, 10))
    rois = np.array([[0, 1.3, 2.1, 12.7, 15.2], [1, -3.4, -2.2, 6.1, 9.7], [1, 14.3, 13.1, 25.9, 22.3],
                     [0, 60.0, 60.0, 70.0, 80.0]])
    K = len(rois)
    deformable = kind in ("deform_roi_pool", "modulated", "deform_ps_roi_pool")
    off = rng.standard_normal((K, 2, *size)) if deformable else None
    mask = rng.random((K, 1, *size)) if kind == "modulated" else None
    c_out = x.shape[1] // 6 if ps else x.shape[1]
    go = rng.standard_normal((K, c_out, *size))
    if kind == "roi_align":
        want = RR.roi_align(x, rois, size, scale, ratio), (RR.roi_align_backward(go, x, rois, size, scale, ratio),)
    elif kind == "ps_roi_align":
        want = RR.ps_roi_align(x, rois, size, scale, ratio), (RR.ps_roi_align_backward(go, x, rois, size, scale,
                                                                                        ratio),)
    elif kind == "deform_roi_pool":
        want = (RR.deform_roi_pool(x, rois, off, size, scale, ratio, gamma),
                RR.deform_roi_pool_backward(go, x, rois, off, size, scale, ratio, gamma)[:2])
    elif kind == "modulated":
        want = (RR.modulated_deform_roi_pool(x, rois, off, mask, size, scale, ratio, gamma),
                RR.modulated_deform_roi_pool_backward(go, x, rois, off, mask, size, scale, ratio, gamma))
    else:
        want = (RR.deform_ps_roi_pool(x, rois, off, size, scale, ratio, gamma),
                RR.deform_ps_roi_pool_backward(go, x, rois, off, size, scale, ratio, gamma)[:2])
    d = lambda a: None if a is None else torch.from_numpy(a).to(DEV, dtype)  # noqa: E731
    bkind = "deform_roi_pool" if kind == "modulated" else kind
    tol = _tol(dtype)
    be = backends[0]
    out = be.roi_forward(bkind, d(x), d(rois), d(off), d(mask), size, scale, ratio, gamma)
    np.testing.assert_allclose(out.cpu().double().numpy(), want[0], **tol)
    grads = be.roi_backward(bkind, d(go), d(x), d(rois), d(off), d(mask), size, scale, ratio, gamma)
    for got, exp in zip(grads, want[1]):
        np.testing.assert_allclose(got.cpu().double().numpy(), exp, **tol)
    tensor_out = B.get("tensor").roi_forward(B.roi_kind(bkind), d(x), d(rois), d(off), d(mask), size, scale, ratio,
                                             gamma)
    torch.testing.assert_close(out, tensor_out, **tol)


def test_launch_follows_torch_current_stream(backends):
    x = torch.randn(2, 4, 6, 6, device=DEV, dtype=torch.float64)
    off = torch.randn(2, 18, 6, 6, device=DEV, dtype=torch.float64)
    want = backends[0].deform_im2col(x, off, None, 3, 1, 1, 1)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        x2 = x * 1.0  # queued on s; the kernel must run after it on s
        got = backends[0].deform_im2col(x2, off, None, 3, 1, 1, 1)
    torch.cuda.current_stream().wait_stream(s)
    torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.skipif(tvops is None, reason="torchvision does not import: no comparison with torchvision.ops")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("modulated", [True, False])
def test_deform_conv2d_matches_torchvision(monkeypatch, dtype, modulated):
    monkeypatch.setenv("DCN_LESSONS_BACKEND", "cuda")
    g = torch.Generator(device="cpu").manual_seed(0)
    mk = lambda *s: torch.randn(*s, generator=g, dtype=dtype).to(DEV).requires_grad_()  # noqa: E731
    x, w, b = mk(2, 6, 9, 11), mk(4, 3, 3, 3), mk(4)
    off = mk(2, 2 * 2 * 9, 5, 11)
    mask = torch.rand(2, 2 * 9, 5, 11, generator=g, dtype=dtype).to(DEV).requires_grad_() if modulated else None
    args = dict(stride=(2, 1), padding=(1, 1), dilation=(1, 1))
    leaves = [t for t in (x, off, w, b, mask) if t is not None]
    ours = ops_conv.deform_conv2d(x, off, w, b, mask=mask, **args)
    go = torch.randn_like(ours)
    g_ours = torch.autograd.grad(ours, leaves, go)
    theirs = tvops.deform_conv2d(x, off, w, b, mask=mask, **args)
    g_theirs = torch.autograd.grad(theirs, leaves, go)
    tol = _tol(dtype) if dtype == torch.float64 else dict(rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(ours, theirs, **tol)
    for a, e in zip(g_ours, g_theirs):
        torch.testing.assert_close(a, e, **tol)


@pytest.mark.skipif(tvops is None, reason="torchvision does not import: no comparison with torchvision.ops")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", ["roi_align", "ps_roi_align"])
def test_roi_ops_match_torchvision(monkeypatch, dtype, op):
    monkeypatch.setenv("DCN_LESSONS_BACKEND", "cuda")
    g = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(2, 18, 12, 13, generator=g, dtype=dtype).to(DEV).requires_grad_()
    rois = torch.tensor([[0, 2.3, 1.1, 20.7, 17.2], [1, -4.0, -3.0, 9.5, 30.0], [1, 10.0, 12.0, 11.0, 13.5]],
                        dtype=dtype, device=DEV)
    if op == "roi_align":
        ours = ops_roi.roi_align(x, rois, (3, 3), spatial_scale=0.5, sampling_ratio=2, aligned=True)
        theirs = tvops.roi_align(x, rois, (3, 3), spatial_scale=0.5, sampling_ratio=2, aligned=True)
    else:
        ours = ops_roi.ps_roi_align(x, rois, (3, 3), spatial_scale=0.5, sampling_ratio=2)
        theirs = tvops.ps_roi_align(x, rois, (3, 3), spatial_scale=0.5, sampling_ratio=2)
    go = torch.randn_like(ours)
    tol = _tol(dtype)
    torch.testing.assert_close(ours, theirs, **tol)
    torch.testing.assert_close(torch.autograd.grad(ours, x, go)[0], torch.autograd.grad(theirs, x, go)[0], **tol)


def test_gradcheck_float64_through_ops(monkeypatch):
    monkeypatch.setenv("DCN_LESSONS_BACKEND", "cuda")
    g = torch.Generator(device="cpu").manual_seed(0)
    mk = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64).to(DEV).requires_grad_()  # noqa: E731
    x, w, b = mk(1, 4, 5, 5), mk(2, 2, 3, 3), mk(2)
    off = (torch.rand(1, 2 * 2 * 9, 5, 5, generator=g, dtype=torch.float64) * 3 - 1.5 + 0.123).to(DEV)
    off.requires_grad_()  # fractional offsets: away from the kinks where the position gradient is a rule
    mask = torch.rand(1, 2 * 9, 5, 5, generator=g, dtype=torch.float64).to(DEV).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda *a: ops_conv.deform_conv2d(a[0], a[1], a[2], a[3], padding=1, mask=a[4]),
        (x, off, w, b, mask), nondet_tol=1e-10)
    feat = mk(1, 3, 6, 7)
    rois = torch.tensor([[0, 1.3, 0.7, 9.1, 10.2]], dtype=torch.float64, device=DEV)
    roff = (torch.rand(1, 2, 2, 2, generator=g, dtype=torch.float64) * 0.4 - 0.2).to(DEV).requires_grad_()
    rmask = torch.rand(1, 1, 2, 2, generator=g, dtype=torch.float64).to(DEV).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda f, o, m: ops_roi.modulated_deform_roi_pool(f, rois, o, m, 2, spatial_scale=0.5, sampling_ratio=2),
        (feat, roff, rmask), nondet_tol=1e-10)
