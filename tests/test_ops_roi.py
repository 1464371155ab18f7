"""PyTorch tier of the RoI family (dcn_lessons.ops.roi, dcn_lessons.ops.roi_layers).

Checked against the tier below: float64 gradcheck of every hand-written backward (sample positions kept
away from integer coordinates, where the RoI rule is not differentiable), then agreement with the NumPy
reference dcn_lessons.reference.roi (forward and backward, float64 to 1e-10, float32 to 1e-4), including
integer positions, clamp and outside regions where only the reference can tell the rule apart. The aligned
family's tests run on every backend that has RoI code here (tensor, and the CUDA kernels through the emulator).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import dcn_lessons.ops as T
from dcn_lessons import backends
from dcn_lessons.ops import _roi_plan
from dcn_lessons.ops import roi_layers as L
from dcn_lessons.reference import roi as R

F64 = torch.float64

#: the backends that run the aligned RoI family without a GPU (cpu-numba runs the tensor path's RoI code)
ROI_BACKENDS = ["tensor", "cuda-emulated"]


@pytest.fixture(params=ROI_BACKENDS)
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run the test once on each RoI backend (forced with DCN_LESSONS_BACKEND; checked to be the one used)."""
    monkeypatch.setenv("DCN_LESSONS_BACKEND", request.param)
    assert backends.active_backend(torch.zeros(1, dtype=F64), "roi") == request.param
    return request.param


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------


def sample_positions(rois, offset, ph, pw, scale, sr, gamma=0.1):
    """All sample coordinates (y and x) of the aligned rule, written plainly (for choosing safe inputs)."""
    out = []
    for k, (b, x1, y1, x2, y2) in enumerate(np.asarray(rois, dtype=float)):
        h, w = (y2 - y1) * scale, (x2 - x1) * scale
        gh = sr if sr > 0 else math.ceil(h / ph)
        gw = sr if sr > 0 else math.ceil(w / pw)
        for i in range(ph):
            for j in range(pw):
                dx = dy = 0.0
                if offset is not None:
                    dx, dy = gamma * w * offset[k, 0, i, j], gamma * h * offset[k, 1, i, j]
                out += [y1 * scale - 0.5 + dy + i * h / ph + (u + 0.5) * h / ph / gh for u in range(gh)]
                out += [x1 * scale - 0.5 + dx + j * w / pw + (v + 0.5) * w / pw / gw for v in range(gw)]
    return np.array(out)


def safe_case(seed, n=2, c=2, hw=(7, 8), k=3, ph=2, pw=2, scale=1.0, sr=0, ps=False, gamma=0.1):
    """Random input, RoIs (some crossing the border) and offsets whose samples all stay >= 1e-3 away from
    integer coordinates (so from the clamp boundaries -1, 0, H-1, H too): gradcheck-safe."""
    g = np.random.default_rng(seed)
    H, W = hw
    for _ in range(200):
        x1 = g.uniform(-2, W / scale - 2, k)
        y1 = g.uniform(-2, H / scale - 2, k)
        rois = np.stack([g.integers(0, n, k), x1, y1, x1 + g.uniform(1, W / scale, k),
                         y1 + g.uniform(1, H / scale, k)], 1)
        offset = g.normal(0, 0.4, (k, 2, ph, pw))
        pos = sample_positions(rois, offset, ph, pw, scale, sr, gamma)
        if np.abs(pos - np.round(pos)).min() > 1e-3:
            break
    else:  # pragma: no cover
        raise AssertionError("no safe case found")
    cin = c * ph * pw if ps else c
    inp = torch.tensor(g.normal(size=(n, cin, H, W)), dtype=F64, requires_grad=True)
    off = torch.tensor(offset, dtype=F64, requires_grad=True)
    mask = torch.tensor(g.uniform(0.2, 1.0, (k, 1, ph, pw)), dtype=F64, requires_grad=True)
    return inp, torch.tensor(rois, dtype=F64), off, mask


def gradcheck(fn, inputs):
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-8, rtol=1e-6, fast_mode=True)


def npy(t):
    return None if t is None else t.detach().cpu().numpy()


# ------------------------------------------------------------------------------------------------
# gradcheck of every op and every differentiable input
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sr,aligned", [(0, True), (2, True), (-1, False)])
def test_gradcheck_roi_align(sr, aligned, backend):
    x, rois, _, _ = safe_case(1, sr=sr)
    if not aligned:  # no -0.5 shift: keep samples off integers for this rule too
        rois = rois.clone()
        rois[:, 1:] += 0.5
    gradcheck(lambda a: T.roi_align(a, rois, 2, 1.0, sr, aligned), (x,))


@pytest.mark.parametrize("sr,scale", [(0, 1.0), (2, 0.5)])
def test_gradcheck_deform_roi_pool(sr, scale, backend):
    x, rois, off, _ = safe_case(2, sr=sr, scale=scale)
    gradcheck(lambda a, o: T.deform_roi_pool(a, rois, o, 2, scale, sr), (x, off))


def test_gradcheck_modulated_deform_roi_pool(backend):
    x, rois, off, mask = safe_case(3, sr=0, ph=2, pw=3)
    gradcheck(lambda a, o, m: T.modulated_deform_roi_pool(a, rois, o, m, (2, 3), 1.0, 0, 0.2), (x, off, mask))


def test_gradcheck_ps_ops(backend):
    x, rois, off, _ = safe_case(4, sr=0, ps=True)
    gradcheck(lambda a: T.ps_roi_align(a, rois, 2, 1.0, 0), (x,))
    gradcheck(lambda a, o: T.deform_ps_roi_pool(a, rois, o, 2, 1.0, 0), (x, off))


@pytest.mark.parametrize("mode", ["max", "avg"])
def test_gradcheck_roi_pool(mode):
    x, rois, _, _ = safe_case(5)
    gradcheck(lambda a: T.roi_pool(a, rois, 2, 1.0, mode), (x,))


def test_double_backward_is_refused(backend):
    x, rois, off, _ = safe_case(6)
    y = T.deform_roi_pool(x, rois, off, 2)
    w = torch.randn(y.shape, dtype=y.dtype, generator=torch.Generator().manual_seed(6), requires_grad=True)
    (gx,) = torch.autograd.grad(y, x, w, create_graph=True)
    with pytest.raises(RuntimeError, match="differentiable once"):
        gx.sum().backward()


# ------------------------------------------------------------------------------------------------
# agreement with the NumPy reference
# ------------------------------------------------------------------------------------------------


def random_case(seed, n, c, hw, k, ph, pw, dtype, ps=False, scale=1.0):
    """RoIs anywhere, including over and far beyond the border, with random offsets; NumPy arrays
    (rounded through ``dtype``'s precision, so both tiers see the same numbers) and a converter to torch."""
    g = np.random.default_rng(seed)
    H, W = hw
    Hs, Ws = H / scale, W / scale
    x1 = g.uniform(-0.4 * Ws, 1.1 * Ws, k)
    y1 = g.uniform(-0.4 * Hs, 1.1 * Hs, k)
    rois = np.stack([g.integers(0, n, k), x1, y1, x1 + g.uniform(0, 0.8 * Ws, k), y1 + g.uniform(0, 0.8 * Hs, k)], 1)
    cin = c * ph * pw if ps else c
    inp = g.normal(size=(n, cin, H, W))
    off = g.normal(0, 0.5, (k, 2, ph, pw))
    mask = g.uniform(0, 1, (k, 1, ph, pw))
    go = g.normal(size=(k, c, ph, pw))
    npdt = np.float32 if dtype == torch.float32 else np.float64
    inp, rois, off, mask, go = (a.astype(npdt).astype(np.float64) for a in (inp, rois, off, mask, go))
    t = lambda a: torch.tensor(a, dtype=dtype)  # noqa: E731
    return inp, rois, off, mask, go, t


def grid_case(n=1, c=2, hw=(6, 7), dtype=F64):
    """RoIs whose samples sit exactly on integer coordinates, on the clamp band and outside the map."""
    rois = np.array([[0, 0.5, 0.5, 4.5, 4.5],   # samples at 1.0, 3.0 (integers), sr=1
                     [0, -1.5, -1.5, 2.5, 2.5],  # samples at -1.0 and 1.0: the clamp band's edge
                     [0, 4.5, 3.5, 8.5, 7.5],   # samples at H-1, W-1 and beyond
                     [0, -9.0, -9.0, -3.0, -3.0],  # all outside
                     [0, 2.2, 1.3, 2.2, 4.1]])  # zero width: no sample under adaptive sampling -> 0
    g = np.random.default_rng(0)
    return g.normal(size=(n, c) + hw), rois


TOL = {torch.float64: dict(rtol=1e-10, atol=1e-10), torch.float32: dict(rtol=1e-4, atol=1e-4)}


def close(a, b, dtype):
    if a is None or b is None:
        assert a is None and b is None
        return
    np.testing.assert_allclose(npy(a) if isinstance(a, torch.Tensor) else a, b, **TOL[dtype])


CONFIGS = [  # (seed, n, scale, sr, ph, pw)
    (0, 1, 1.0, 0, 2, 2),
    (1, 3, 0.5, -1, 3, 2),
    (2, 3, 0.25, 2, 2, 3),
    (3, 1, 0.5, 0, 1, 1),
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("seed,n,scale,sr,ph,pw", CONFIGS)
def test_agreement_sampled_ops(dtype, seed, n, scale, sr, ph, pw, backend):
    hw, k, c = (6, 7), 5, 3
    inp, rois, off, mask, go, t = random_case(seed, n, c, hw, k, ph, pw, dtype, scale=scale)
    sz = (ph, pw)
    ti, to, tm = (t(a).requires_grad_() for a in (inp, off, mask))
    tr, tgo = t(rois), t(go)
    ref_in = inp.astype(np.float32) if dtype == torch.float32 else inp

    # roi_align, both rules
    for aligned in (True, False):
        y = T.roi_align(ti, tr, sz, scale, sr, aligned)
        close(y, R.roi_align(ref_in, rois, sz, scale, sr, aligned), dtype)
        (gi,) = torch.autograd.grad(y, ti, tgo)
        close(gi, R.roi_align_backward(go, ref_in, rois, sz, scale, sr, aligned), dtype)
    # deformable and modulated
    y = T.modulated_deform_roi_pool(ti, tr, to, tm, sz, scale, sr, 0.1)
    close(y, R.modulated_deform_roi_pool(ref_in, rois, off, mask, sz, scale, sr, 0.1), dtype)
    gi, goff, gm = torch.autograd.grad(y, (ti, to, tm), tgo)
    ref = R.modulated_deform_roi_pool_backward(go, ref_in, rois, off, mask, sz, scale, sr, 0.1)
    close(gi, ref.input, dtype)
    close(goff, ref.offset, dtype)
    close(gm, ref.mask, dtype)
    y = T.deform_roi_pool(ti, tr, to, sz, scale, sr, 0.3)
    close(y, R.deform_roi_pool(ref_in, rois, off, sz, scale, sr, 0.3), dtype)
    gi, goff = torch.autograd.grad(y, (ti, to), tgo)
    ref = R.deform_roi_pool_backward(go, ref_in, rois, off, sz, scale, sr, 0.3)
    close(gi, ref.input, dtype)
    close(goff, ref.offset, dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("seed,n,scale,sr,ph,pw", CONFIGS[:3])
def test_agreement_ps_ops(dtype, seed, n, scale, sr, ph, pw, backend):
    hw, k, c = (5, 6), 4, 2
    inp, rois, off, _, go, t = random_case(seed + 10, n, c, hw, k, ph, pw, dtype, ps=True, scale=scale)
    sz = (ph, pw)
    ti, to = t(inp).requires_grad_(), t(off).requires_grad_()
    tr, tgo = t(rois), t(go)
    ref_in = inp.astype(np.float32) if dtype == torch.float32 else inp
    y = T.ps_roi_align(ti, tr, sz, scale, sr)
    close(y, R.ps_roi_align(ref_in, rois, sz, scale, sr), dtype)
    (gi,) = torch.autograd.grad(y, ti, tgo)
    close(gi, R.ps_roi_align_backward(go, ref_in, rois, sz, scale, sr), dtype)
    y = T.deform_ps_roi_pool(ti, tr, to, sz, scale, sr)
    close(y, R.deform_ps_roi_pool(ref_in, rois, off, sz, scale, sr), dtype)
    gi, goff = torch.autograd.grad(y, (ti, to), tgo)
    ref = R.deform_ps_roi_pool_backward(go, ref_in, rois, off, sz, scale, sr)
    close(gi, ref.input, dtype)
    close(goff, ref.offset, dtype)


def test_agreement_on_integer_positions_clamp_band_and_outside(backend):
    """Zero offsets put samples on integers, on y = -1 / 0 / H-1 and outside: the rule's corner cases."""
    inp, rois = grid_case()
    k = rois.shape[0]
    off = np.zeros((k, 2, 2, 2))
    mask = np.full((k, 1, 2, 2), 0.7)
    go = np.random.default_rng(1).normal(size=(k, 2, 2, 2))
    ti = torch.tensor(inp, requires_grad=True)
    to = torch.tensor(off, requires_grad=True)
    tm = torch.tensor(mask, requires_grad=True)
    for sr in (1, 2, 0):
        y = T.modulated_deform_roi_pool(ti, torch.tensor(rois), to, tm, 2, 1.0, sr)
        close(y, R.modulated_deform_roi_pool(inp, rois, off, mask, 2, 1.0, sr), F64)
        grads = torch.autograd.grad(y, (ti, to, tm), torch.tensor(go))
        ref = R.modulated_deform_roi_pool_backward(go, inp, rois, off, mask, 2, 1.0, sr)
        for a, b in zip(grads, ref):
            close(a, b, F64)
        if sr == 0:
            assert (y[4] == 0).all()
    assert np.abs(ref.offset).sum() > 0 and np.all(ref.offset[3] == 0)  # the far-outside RoI has no gradient


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("mode", ["max", "avg"])
@pytest.mark.parametrize("seed,n,scale", [(0, 1, 1.0), (1, 3, 0.5), (2, 3, 0.25)])
def test_agreement_roi_pool(dtype, mode, seed, n, scale):
    inp, rois, _, _, go, t = random_case(seed + 20, n, 3, (6, 7), 6, 3, 2, dtype, scale=scale)
    rois[0, 1:] = [0.5, 1.5, 2.5 / scale, 3.5 / scale]  # halves: C rounding, not banker's
    inp = np.round(inp * 2) / 2  # many ties: the gradient must go to the first maximum
    ti = torch.tensor(inp, dtype=dtype, requires_grad=True)
    y = T.roi_pool(ti, torch.tensor(rois, dtype=dtype), (3, 2), scale, mode)
    ref_in = inp.astype(np.float32) if dtype == torch.float32 else inp
    close(y, R.roi_pool(ref_in, rois, (3, 2), scale, mode), dtype)
    (gi,) = torch.autograd.grad(y, ti, torch.tensor(go, dtype=dtype))
    close(gi, R.roi_pool_backward(go, ref_in, rois, (3, 2), scale, mode), dtype)


def test_empty_rois(backend):
    x = torch.randn(2, 4, 5, 5, dtype=F64, requires_grad=True)
    rois = torch.zeros((0, 5), dtype=F64)
    off = torch.zeros((0, 2, 2, 2), dtype=F64, requires_grad=True)
    mask = torch.zeros((0, 1, 2, 2), dtype=F64, requires_grad=True)
    for y in (T.roi_align(x, rois, 2), T.roi_pool(x, rois, 2), T.ps_roi_align(x, rois, 2),
              T.modulated_deform_roi_pool(x, rois, off, mask, 2), T.deform_ps_roi_pool(x, rois, off, 2)):
        assert y.shape[0] == 0 and y.shape[2:] == (2, 2)
        gx, = torch.autograd.grad(y.sum(), x, allow_unused=True)
        assert gx is None or (gx == 0).all()
    y = T.modulated_deform_roi_pool(x, rois, off, mask, 2)
    gx, go, gm = torch.autograd.grad(y.sum(), (x, off, mask))
    assert gx.shape == x.shape and (gx == 0).all() and go.shape == off.shape and gm.shape == mask.shape
    assert T.roi_align(x, [torch.zeros((0, 4), dtype=F64)] * 2, 2).shape == (0, 4, 2, 2)


def test_zero_offset_and_unit_mask_reduce_to_plain_ops(backend):
    x, rois, off, _ = safe_case(7)
    ra = T.roi_align(x, rois, 2, 1.0, 0)
    torch.testing.assert_close(T.deform_roi_pool(x, rois, None, 2), ra, rtol=0, atol=0)
    torch.testing.assert_close(T.deform_roi_pool(x, rois, torch.zeros_like(off), 2), ra, rtol=0, atol=1e-15)
    torch.testing.assert_close(T.modulated_deform_roi_pool(x, rois, off, torch.ones(3, 1, 2, 2, dtype=F64), 2),
                               T.deform_roi_pool(x, rois, off, 2), rtol=0, atol=1e-15)


# ------------------------------------------------------------------------------------------------
# boxes as lists, non-contiguous inputs, chunking, CUDA dispatch contract
# ------------------------------------------------------------------------------------------------


def test_list_of_boxes_equals_tensor_form(backend):
    x, rois, off, mask = safe_case(8, n=3, k=5, ps=True)
    order = torch.argsort(rois[:, 0], stable=True)
    rois, off, mask = rois[order], off.detach()[order], mask.detach()[order]
    boxes = [rois[rois[:, 0] == i, 1:] for i in range(3)]
    xs = x.detach()[:, :2]
    for fn in (lambda b: T.roi_align(xs, b, 2), lambda b: T.roi_align(xs, b, 2, 1.0, 2, False),
               lambda b: T.roi_pool(xs, b, 2), lambda b: T.roi_pool(xs, b, 2, 1.0, "avg"),
               lambda b: T.deform_roi_pool(xs, b, off, 2), lambda b: T.modulated_deform_roi_pool(xs, b, off, mask, 2),
               lambda b: T.ps_roi_align(x.detach(), b, 2), lambda b: T.deform_ps_roi_pool(x.detach(), b, off, 2)):
        torch.testing.assert_close(fn(boxes), fn(rois), rtol=0, atol=0)
        torch.testing.assert_close(fn(tuple(boxes)), fn(rois), rtol=0, atol=0)


def test_non_contiguous_inputs(backend):
    x, rois, off, mask = safe_case(9, c=3)
    base = x.detach()
    xt = base.transpose(2, 3).contiguous().transpose(2, 3)  # same values, channels in another stride order
    xcl = base.contiguous(memory_format=torch.channels_last)
    offt = off.detach().transpose(2, 3).contiguous().transpose(2, 3)
    rois_nc = torch.cat([rois, torch.zeros_like(rois)], 1)[:, :5]  # a column slice of a wider tensor
    assert not xt.is_contiguous() and not offt.is_contiguous() and not rois_nc.is_contiguous()
    want = T.modulated_deform_roi_pool(base, rois, off.detach(), mask.detach(), 2)
    for a in (xt, xcl):
        a = a.clone().requires_grad_()
        o = offt.clone().requires_grad_()
        y = T.modulated_deform_roi_pool(a, rois_nc, o, mask.detach(), 2)
        torch.testing.assert_close(y, want, rtol=0, atol=1e-14)
        y.sum().backward()
        assert a.grad.shape == a.shape and o.grad.shape == o.shape
    torch.testing.assert_close(T.roi_pool(xt, rois_nc, 2), T.roi_pool(base, rois, 2), rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_16bit_inputs_run_and_agree_with_float64(dtype):
    """float16/bfloat16 (mixed-precision training) run on the tensor path, boxes validated in that dtype too
    (bfloat16 has no NumPy twin), and agree with float64 on the same rounded values to 16-bit precision."""
    x, rois, off, mask = safe_case(21, c=3)
    x16, rois16, off16, mask16 = (t.detach().to(dtype) for t in (x, rois, off, mask))
    leaves = [t.clone().requires_grad_() for t in (x16, off16, mask16)]
    y = T.modulated_deform_roi_pool(leaves[0], rois16, leaves[1], leaves[2], 2, 0.5, 2)
    y.float().square().sum().backward()
    ref = [t.double().requires_grad_() for t in (x16, off16, mask16)]
    want = T.modulated_deform_roi_pool(ref[0], rois16.double(), ref[1], ref[2], 2, 0.5, 2)
    want.square().sum().backward()
    tol = 1e-2 if dtype == torch.float16 else 5e-2
    for name, got, exp in [("out", y, want)] + [(n, a.grad, b.grad) for n, a, b in zip("xom", leaves, ref)]:
        assert got.dtype == dtype, name
        assert (got.double() - exp.detach()).abs().max() <= tol * exp.abs().max(), name


def test_chunked_tensor_path_equals_single_chunk(monkeypatch):
    x, rois, off, mask = safe_case(10, k=6)
    go = torch.randn(6, 2, 2, 2, dtype=F64, generator=torch.Generator().manual_seed(10))

    def run():
        y = T.modulated_deform_roi_pool(x, rois, off, mask, 2)
        p = T.roi_pool(x, rois, 2, 1.0, "avg") + T.roi_pool(x, rois, 2)
        return (y, p) + torch.autograd.grad((y * go).sum() + p.sum(), (x, off, mask))

    whole = run()
    monkeypatch.setattr(_roi_plan, "CHUNK_ELEMENTS", 1)  # one RoI per chunk
    for a, b in zip(run(), whole):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-14)


def test_dispatch_to_a_backend_with_the_contract_arguments(monkeypatch):
    """The registered operators hand roi_forward/roi_backward the contract's arguments (a RoIKind, checked
    tensors) on the backend select() names; legacy aligned=False never reaches a kernel backend."""
    calls = []
    tensor = backends.get("tensor")

    class Recorder(type(tensor)):  # the tensor backend, recording what it is asked
        name = "recorder"

        def roi_forward(self, kind, *args, **kw):
            calls.append(("forward", kind.name, kw.get("aligned", args[-1] if len(args) == 9 else True)))
            return super().roi_forward(kind, *args, **kw)

        def roi_backward(self, kind, *args, **kw):
            calls.append(("backward", kind.name))
            return super().roi_backward(kind, *args, **kw)

    rec = Recorder()
    real_select = backends.select
    monkeypatch.setattr(backends, "select", lambda t, family="conv", aligned=True:
                        rec if (family == "roi" and aligned) else real_select(t, family, aligned))
    x, rois, off, mask = safe_case(11, ps=True)
    y = T.deform_ps_roi_pool(x, rois, off, 2)
    (g,) = torch.autograd.grad(y.sum(), off)
    assert calls == [("forward", "deform_ps_roi_pool", True), ("backward", "deform_ps_roi_pool")]
    monkeypatch.setattr(backends, "select", real_select)
    want = T.deform_ps_roi_pool(x, rois, off, 2)
    torch.testing.assert_close(y, want, rtol=0, atol=0)
    torch.testing.assert_close(g, torch.autograd.grad(want.sum(), off)[0], rtol=0, atol=0)
    monkeypatch.setattr(backends, "select", lambda t, family="conv", aligned=True:
                        rec if (family == "roi" and aligned) else real_select(t, family, aligned))
    calls.clear()
    T.roi_align(x, rois, 2, aligned=False)  # aligned=False is tensor-only
    assert calls == []


# ------------------------------------------------------------------------------------------------
# bad input
# ------------------------------------------------------------------------------------------------


def test_bad_input_messages():
    x = torch.randn(2, 8, 5, 5, dtype=F64)
    rois = torch.tensor([[0, 0.0, 0.0, 3.0, 3.0], [1, 1.0, 1.0, 4.0, 4.0]], dtype=F64)
    off = torch.zeros(2, 2, 2, 2, dtype=F64)
    with pytest.raises(ValueError, match=r"rois: expected a 2-D array \[K, 5\].*got shape \[2, 4\]"):
        T.deform_roi_pool(x, rois[:, 1:], off, 2)
    with pytest.raises(ValueError, match=r"boxes: row 1 has batch index 2\.0.*\[0, 1\]"):
        T.roi_align(x, rois + torch.tensor([[0.0] * 5, [1.0, 0, 0, 0, 0]], dtype=F64), 2)
    with pytest.raises(ValueError, match=r"offset: expected shape \[K, 2, ph, pw\] = \[2, 2, 2, 2\], got \[2, 2, 3, 2\]"):
        T.deform_roi_pool(x, rois, torch.zeros(2, 2, 3, 2, dtype=F64), 2)
    with pytest.raises(ValueError, match=r"mask: expected shape \[K, 1, ph, pw\] = \[2, 1, 2, 2\]"):
        T.modulated_deform_roi_pool(x, rois, off, torch.zeros(2, 2, 2, 2, dtype=F64), 2)
    with pytest.raises(TypeError, match=r"offset: expected dtype torch.float64 .*got torch.float32"):
        T.deform_roi_pool(x, rois, off.float(), 2)
    with pytest.raises(TypeError, match=r"boxes: expected dtype torch.float64"):
        T.roi_align(x, rois.float(), 2)
    with pytest.raises(ValueError, match=r"offset: expected device cpu .*got meta"):
        T.deform_roi_pool(x, rois, off.to("meta"), 2)
    with pytest.raises(TypeError, match=r"input: expected a floating-point tensor"):
        T.roi_align(x.long(), rois, 2)
    with pytest.raises(ValueError, match=r"input: channels C=8 not divisible by ph\*pw=9"):
        T.ps_roi_align(x, rois, 3)
    with pytest.raises(ValueError, match=r"boxes\[1\]: expected a 2-D tensor \[L, 4\]"):
        T.roi_align(x, [rois[:1, 1:], rois[:, :]], 2)
    with pytest.raises(ValueError, match=r"input: expected a 4-D array"):
        T.roi_align(x[0], rois, 2)
    with pytest.raises(ValueError, match=r'mode: expected "max" or "avg", got \'sum\''):
        T.roi_pool(x, rois, 2, mode="sum")
    with pytest.raises(ValueError, match=r"boxes: row 0 = \[0\.0, 3\.0, 0\.0, 1\.0, 3\.0\] is not ordered"):
        T.roi_align(x, torch.tensor([[0, 3.0, 0.0, 1.0, 3.0]], dtype=F64), 2)
    with pytest.raises(ValueError, match=r"offset: expected finite"):
        T.deform_roi_pool(x, rois, off + float("nan"), 2)


# ------------------------------------------------------------------------------------------------
# layers
# ------------------------------------------------------------------------------------------------


def layer_case(seed=12, c=3, ps=False):
    x, rois, _, _ = safe_case(seed, c=c, ps=ps, k=4, hw=(8, 9))
    return x.detach().requires_grad_(), rois


def test_modules_wrap_the_functions():
    x, rois = layer_case()
    torch.testing.assert_close(L.RoIAlign(2, 1.0, 2)(x, rois), T.roi_align(x, rois, 2, 1.0, 2), rtol=0, atol=0)
    torch.testing.assert_close(L.RoIPool((2, 3), mode="avg")(x, rois), T.roi_pool(x, rois, (2, 3), 1.0, "avg"),
                               rtol=0, atol=0)
    assert "aligned=True" in repr(L.RoIAlign(7, 0.0625)) and "mode='max'" in repr(L.RoIPool(7))


def test_fresh_packs_equal_their_plain_counterparts():
    torch.manual_seed(0)
    x, rois = layer_case()
    ra = T.roi_align(x, rois, 2, 1.0, 0, True)
    pack = L.DeformRoIPoolPack(2, 3, deform_fc_channels=16).double()
    torch.testing.assert_close(pack(x, rois), ra, rtol=0, atol=1e-15)
    mpack = L.ModulatedDeformRoIPoolPack(2, 3, deform_fc_channels=16).double()
    torch.testing.assert_close(mpack(x, rois), 0.5 * ra, rtol=0, atol=1e-15)
    xp, rois_p = layer_case(ps=True)
    ps = L.DeformPSRoIPool(2, 3).double()
    torch.testing.assert_close(ps(xp, rois_p), T.ps_roi_align(xp, rois_p, 2, 1.0, 0), rtol=0, atol=1e-15)
    assert pack.offset_fc.lr_mult == 0.01 and mpack.mask_fc.lr_mult == 0.01
    assert "deform_fc_channels=16" in repr(pack) and "offset_fc" in repr(pack) and "in_channels=12" in repr(ps)
    assert isinstance(ps.offset_conv, torch.nn.Conv2d) and ps.offset_conv.out_channels == 8
    none = torch.zeros((0, 5), dtype=F64)
    assert pack(x, none).shape == mpack(x, none).shape == (0, 3, 2, 2) and ps(xp, none).shape == (0, 3, 2, 2)


@pytest.mark.parametrize("cls", [L.DeformRoIPoolPack, L.ModulatedDeformRoIPoolPack])
def test_gradient_reaches_the_fc_branches(cls):
    torch.manual_seed(1)
    x, rois = layer_case()
    pack = cls(2, 3, deform_fc_channels=8).double()
    branches = [pack.offset_fc] + ([pack.mask_fc] if hasattr(pack, "mask_fc") else [])
    w = torch.randn(4, 3, 2, 2, dtype=F64)
    (pack(x, rois) * w).sum().backward()
    for br in branches:  # zero-init: only the last fc gets a gradient
        assert br[4].weight.grad.abs().sum() > 0 and br[4].bias.grad.abs().sum() > 0
        assert br[0].weight.grad.abs().sum() == 0
    with torch.no_grad():
        for br in branches:
            br[4].weight.normal_(0, 0.1)
    pack.zero_grad()
    x.grad = None
    (pack(x, rois) * w).sum().backward()
    for br in branches:
        assert br[0].weight.grad.abs().sum() > 0 and br[2].weight.grad.abs().sum() > 0
    assert x.grad.abs().sum() > 0


def test_gradient_reaches_the_ps_offset_conv():
    torch.manual_seed(2)
    x, rois = layer_case(ps=True)
    layer = L.DeformPSRoIPool(2, 3).double()
    w = torch.randn(4, 3, 2, 2, dtype=F64)
    (layer(x, rois) * w).sum().backward()
    assert layer.offset_conv.weight.grad.abs().sum() > 0 and layer.offset_conv.bias.grad.abs().sum() > 0
    with torch.no_grad():
        layer.offset_conv.weight.normal_(0, 0.1)
    y = layer(x, rois)
    assert (y - T.ps_roi_align(x, rois, 2, 1.0, 0)).abs().max() > 1e-6  # the offsets now move the bins
    # the offset branch may read another map (DCNv1 Fig. 4: the feature map); its channels are checked
    feat = torch.randn(2, 5, 8, 9, dtype=F64)
    other = L.DeformPSRoIPool(2, 3, in_channels=5).double()
    assert other(x, rois, offset_input=feat).shape == (4, 3, 2, 2)
    with pytest.raises(ValueError, match=r"offset_input: expected \[N, in_channels, H, W\] = \[2, 5, 8, 9\]"):
        other(x, rois, offset_input=feat[:, :4])
    with pytest.raises(ValueError, match=r"input: expected shape \[N, 3, H, W\]"):
        L.DeformRoIPoolPack(2, 3, 8).double()(feat, rois)


def test_the_kernels_run_when_the_emulated_backend_is_forced(monkeypatch):
    """DCN_LESSONS_BACKEND=cuda-emulated sends every aligned-family call through the real kernel source (the
    CUDA tier's CPU emulator), and the results equal the tensor path's."""
    kern = backends.get("cuda-emulated")
    launched = []
    real_launch = kern._launch
    monkeypatch.setattr(kern, "_launch", lambda name, *a: (launched.append(name), real_launch(name, *a))[1])
    x, rois, off, mask = safe_case(13, ps=True)
    calls = [
        lambda a, o, m: T.roi_align(a[:, :2], rois, 2, 0.5, 2),
        lambda a, o, m: T.modulated_deform_roi_pool(a[:, :2], rois, o, m, 2, 0.5, 0),
        lambda a, o, m: T.deform_roi_pool(a[:, :2], rois, None, 2),
        lambda a, o, m: T.ps_roi_align(a, rois, 2, 1.0, 0),
        lambda a, o, m: T.deform_ps_roi_pool(a, rois, o, 2, 1.0, 0),
    ]
    want = []
    for fn in calls:
        y = fn(x, off, mask)
        want.append((y,) + torch.autograd.grad((y * y).sum(), (x, off, mask), allow_unused=True))
    assert launched == []
    monkeypatch.setenv("DCN_LESSONS_BACKEND", "cuda-emulated")
    for fn, ref in zip(calls, want):
        y = fn(x, off, mask)
        got = (y,) + torch.autograd.grad((y * y).sum(), (x, off, mask), allow_unused=True)
        for a, b in zip(got, ref):
            assert (a is None) == (b is None)
            if a is not None:
                torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    assert launched.count("roi_align_forward_kernel") == 5 and launched.count("roi_align_backward_kernel") == 5
