"""PyTorch tier of deformable convolution (DCNv1 Eq. 2, DCNv2 Eq. 1) against the tiers below it.

* central finite differences: float64 ``torch.autograd.gradcheck`` (offsets away from integers);
* the NumPy reference (``dcn_lessons.reference.deform_conv``): forward, every gradient, and the three
  primitives, on every backend that runs here (tensor, cpu-numba, cuda-emulated), incl. the
  integer-coordinate gradient rule;
* ``F.conv2d`` identities (hypothesis), on every backend: zero offsets, constant offsets = dilation, mask of
  ones = v1;
* bad input, non-contiguous input, chunking over images, double backward, and that the backward skips the work
  of gradients nobody asked for (counted at each backend's kernels).

Random data come from fixed seeds (explicit integers, or ``zlib.crc32`` of a case name), shown in the failure
message where a test derives them.
"""
from __future__ import annotations

import os
import subprocess
import sys
import zlib
from typing import Optional

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from dcn_lessons import backends
from dcn_lessons.ops import _columns
from dcn_lessons.ops import deform_conv as D
from dcn_lessons.reference import deform_conv as R

#: every backend that runs without a GPU
PATHS = ["tensor", "cpu-numba", "cuda-emulated"]


def require_numba() -> None:
    """Numba is a required dependency: its absence is a failure, not a skip."""
    if not D.cpu_fast_path_available():
        pytest.fail("numba does not import: it is a required dependency (pip install numba)")


@pytest.fixture(params=PATHS)
def path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run the test once on each backend (forced with DCN_LESSONS_BACKEND)."""
    if request.param == "cpu-numba":
        require_numba()
    monkeypatch.setenv("DCN_LESSONS_BACKEND", request.param)
    assert D.active_backend(torch.zeros(1, dtype=torch.float64)) == request.param
    return request.param


def _out(size: int, k: int, s: int, p: int, d: int) -> int:
    return (size + 2 * p - (d * (k - 1) + 1)) // s + 1


def make_case(
    *,
    n: int = 2,
    c: int = 4,
    h: int = 5,
    w: int = 6,
    o: int = 4,
    k: tuple[int, int] = (3, 3),
    stride: tuple[int, int] = (1, 1),
    padding: tuple[int, int] = (1, 1),
    dilation: tuple[int, int] = (1, 1),
    groups: int = 1,
    offset_groups: int = 1,
    modulated: bool = True,
    bias: bool = True,
    integer_offsets: bool = False,
    dtype: torch.dtype = torch.float64,
    seed: int = 0,
) -> dict:
    """Random arguments; offsets are k + 0.3 + 0.4*u (away from integers) unless integer_offsets."""
    g = torch.Generator().manual_seed(seed)
    ho = _out(h, k[0], stride[0], padding[0], dilation[0])
    wo = _out(w, k[1], stride[1], padding[1], dilation[1])
    kk = k[0] * k[1]
    shape_off = (n, 2 * offset_groups * kk, ho, wo)
    base = torch.randint(-3, 3, shape_off, generator=g).to(dtype)
    off = base if integer_offsets else base + 0.3 + 0.4 * torch.rand(shape_off, generator=g, dtype=dtype)
    return dict(
        input=torch.randn(n, c, h, w, generator=g, dtype=dtype),
        offset=off,
        weight=torch.randn(o, c // groups, *k, generator=g, dtype=dtype),
        bias=torch.randn(o, generator=g, dtype=dtype) if bias else None,
        mask=torch.rand(n, offset_groups * kk, ho, wo, generator=g, dtype=dtype) if modulated else None,
        stride=stride,
        padding=padding,
        dilation=dilation,
    )


def _np(t: Optional[torch.Tensor]) -> Optional[np.ndarray]:
    return None if t is None else t.detach().numpy()


CASES = {
    "plain": dict(),
    "stride2": dict(stride=(2, 2), h=7, w=6),
    "dilation2": dict(dilation=(2, 2), padding=(2, 1), h=6, w=6),
    "groups2": dict(groups=2, o=6),
    "offset_groups2": dict(offset_groups=2),
    "nonsquare_k": dict(k=(3, 2), stride=(1, 2), padding=(1, 0), dilation=(2, 1), h=7, w=7),
    "batch1_v1": dict(n=1, modulated=False, groups=2, offset_groups=2, bias=False),
    "batch3": dict(n=3, c=6, o=3, offset_groups=3, k=(2, 3), padding=(0, 1)),
}


# ---------------------------------------------------------------------------------------- gradcheck
@pytest.mark.parametrize("modulated", [False, True], ids=["v1", "v2"])
def test_gradcheck_all_arguments(path: str, modulated: bool) -> None:
    case = make_case(n=2, c=4, h=4, w=5, o=2, k=(3, 2), stride=(1, 2), padding=(1, 1), dilation=(2, 1),
                     groups=2, offset_groups=2, modulated=modulated, seed=1)
    names = ["input", "offset", "weight", "bias"] + (["mask"] if modulated else [])
    tensors = [case[nm].clone().requires_grad_() for nm in names]

    def fn(*ts: torch.Tensor) -> torch.Tensor:
        kw = dict(zip(names, ts))
        return D.deform_conv2d(kw["input"], kw["offset"], kw["weight"], kw["bias"], case["stride"],
                               case["padding"], case["dilation"], mask=kw.get("mask"))

    assert torch.autograd.gradcheck(fn, tensors, eps=1e-6, atol=1e-7)


def test_integer_coordinate_rule_matches_reference(path: str) -> None:
    """At zero offsets every sample sits on an integer coordinate: the forward-difference rule applies.

    Central differences would average the two one-sided slopes, so gradcheck cannot check this; the
    NumPy reference implements the rule explicitly.
    """
    for modulated in (False, True):
        case = make_case(n=1, c=3, h=4, w=4, o=2, modulated=modulated, seed=2)
        case["offset"] = torch.zeros_like(case["offset"])
        x, off, w = (case[k].clone().requires_grad_() for k in ("input", "offset", "weight"))
        m = None if case["mask"] is None else case["mask"].clone().requires_grad_()
        y = D.deform_conv2d(x, off, w, None, 1, 1, 1, mask=m)
        go = torch.randn(y.shape, dtype=y.dtype, generator=torch.Generator().manual_seed(3))
        y.backward(go)
        ref = R.deform_conv2d_backward(go.numpy(), _np(x), _np(off), _np(w), None, 1, 1, 1, _np(m))
        np.testing.assert_allclose(off.grad.numpy(), ref.offset, rtol=0, atol=1e-10)
        # forward difference, not central: a sample in the last row (y = H-1) reads 0 below it, so its
        # Δy-gradient is -x(H-1, .) * ..., nonzero; check the rule produced nonzero gradients at all
        assert off.grad.abs().sum() > 0
        if m is not None:
            np.testing.assert_allclose(m.grad.numpy(), ref.mask, rtol=0, atol=1e-10)


@pytest.mark.parametrize("where", ["y=-1", "y=H", "x=-1", "x=W", "far"])
def test_offset_gradient_is_zero_outside(path: str, where: str) -> None:
    """A sample at y <= -1 or y >= H (likewise x) is outside: value, offset and mask gradients are 0 (the position
    rule, README conventions), exactly on the lines y = -1, y = H, x = -1, x = W too. On y = -1 the right slope
    x(0) - 0 is not 0: a rule that counted the line as inside would give it."""
    case = make_case(n=1, c=2, h=4, w=5, o=1, k=(1, 1), padding=(0, 0), bias=False, seed=4)
    h, w = 4, 5
    rows = torch.arange(h, dtype=torch.float64).view(1, h, 1)
    cols = torch.arange(w, dtype=torch.float64).view(1, 1, w)
    off = torch.zeros_like(case["offset"])  # [1, 2, 4, 5]: output (y, x) samples at (y + Δy, x + Δx)
    if where == "y=-1":
        off[:, 0] = -1.0 - rows
    elif where == "y=H":
        off[:, 0] = h - rows
    elif where == "x=-1":
        off[:, 1] = -1.0 - cols
    elif where == "x=W":
        off[:, 1] = w - cols
    else:
        off[:, 0], off[:, 1] = 1e4, -1e4
    off.requires_grad_()
    m = case["mask"].clone().requires_grad_()
    y = D.deform_conv2d(case["input"], off, case["weight"], mask=m)
    assert torch.equal(y, torch.zeros_like(y)), f"{path}, {where}: a sample outside read something"
    y.sum().backward()
    assert torch.equal(off.grad, torch.zeros_like(off)), f"{path}, {where}: offset gradient outside the map"
    assert torch.equal(m.grad, torch.zeros_like(m)), f"{path}, {where}: mask gradient outside the map"


# ------------------------------------------------------------------------------ NumPy reference
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-4)], ids=["f64", "f32"])
@pytest.mark.parametrize("name", list(CASES))
def test_agrees_with_numpy_reference(path: str, name: str, dtype: torch.dtype, tol: float) -> None:
    seed = zlib.crc32(name.encode()) % 1000  # the same in every process (hash() of a str is not)
    case = make_case(dtype=dtype, seed=seed, **CASES[name])
    names = [k for k in ("input", "offset", "weight", "bias", "mask") if case[k] is not None]
    ts = {k: case[k].clone().requires_grad_() for k in names}
    y = D.deform_conv2d(ts["input"], ts["offset"], ts["weight"], ts.get("bias"), case["stride"],
                        case["padding"], case["dilation"], mask=ts.get("mask"))
    f64 = {k: _np(case[k].double()) if case[k] is not None else None for k in ("input", "offset", "weight", "bias", "mask")}
    conf = (case["stride"], case["padding"], case["dilation"])
    ref_y = R.deform_conv2d(f64["input"], f64["offset"], f64["weight"], f64["bias"], *conf, mask=f64["mask"])
    scale = max(1.0, float(np.abs(ref_y).max()))
    np.testing.assert_allclose(y.detach().double().numpy(), ref_y, rtol=0, atol=tol * scale,
                               err_msg=f"output, {path}, seed {seed}")
    go = torch.randn(y.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    y.backward(go.to(dtype))
    ref = R.deform_conv2d_backward(go.numpy(), f64["input"], f64["offset"], f64["weight"], f64["bias"], *conf,
                                   mask=f64["mask"])
    for k in names:
        r = getattr(ref, k)
        got = ts[k].grad.double().numpy()
        np.testing.assert_allclose(got, r, rtol=0, atol=tol * max(1.0, float(np.abs(r).max())),
                                   err_msg=f"grad {k}, {path}, seed {seed}")


@pytest.mark.parametrize("backend", PATHS)
@pytest.mark.parametrize("name", ["nonsquare_k", "batch3", "batch1_v1", "groups2"])
def test_primitives_agree_with_numpy_reference(name: str, backend: str) -> None:
    """The three primitives of the backend contract, through the public functions, on every backend."""
    if backend == "cpu-numba":
        require_numba()
    case = make_case(seed=7, **CASES[name])
    x, off, m = case["input"], case["offset"], case["mask"]
    ks = tuple(case["weight"].shape[2:])
    conf = (case["stride"], case["padding"], case["dilation"])
    cols = D.deform_im2col(x, off, m, ks, *conf, backend=backend)
    np.testing.assert_allclose(cols.numpy(), R.deform_im2col(x.numpy(), off.numpy(), _np(m), ks, *conf), atol=1e-12)
    gc = torch.randn(cols.shape, dtype=cols.dtype, generator=torch.Generator().manual_seed(8))
    gi = D.deform_col2im(gc, off, m, tuple(x.shape), ks, *conf, backend=backend)
    np.testing.assert_allclose(gi.numpy(), R.deform_col2im(gc.numpy(), off.numpy(), _np(m), tuple(x.shape), ks, *conf),
                               atol=1e-12)
    go, gm = D.deform_col2im_coord(gc, x, off, m, ks, *conf, backend=backend)
    ro, rm = R.deform_col2im_coord(gc.numpy(), x.numpy(), off.numpy(), _np(m), ks, *conf)
    np.testing.assert_allclose(go.numpy(), ro, atol=1e-12)
    assert (gm is None) == (rm is None)
    if gm is not None:
        np.testing.assert_allclose(gm.numpy(), rm, atol=1e-12)


@pytest.mark.parametrize("name", ["nonsquare_k", "batch3", "batch1_v1", "groups2", "stride2"])
def test_compiled_columns_agree_with_numpy_reference(name: str) -> None:
    """The compiled path's channels-last columns and their one-pass backward, against the reference primitives.

    Its columns are ``[n, L, groups*K*Cg]`` (column ``(gi*K + k)*Cg + c'``); the reference's ``[n, C*K, L]``
    (row ``c*K + k``): the same numbers, rearranged.
    """
    require_numba()
    from dcn_lessons.ops import _cpu_numba

    case = make_case(seed=7, **CASES[name])
    x, off, m, wshape = case["input"], case["offset"], case["mask"], tuple(case["weight"].shape)
    n, c = x.shape[:2]
    groups, ks = c // wshape[1], wshape[2:]
    kk = ks[0] * ks[1]
    conf = (case["stride"], case["padding"], case["dilation"])

    def to_ref(cols: np.ndarray) -> np.ndarray:  # [n, L, groups, K, Cg] -> [n, groups, Cg, K, L] -> [n, C*K, L]
        length = cols.shape[1]
        return cols.reshape(n, length, groups, kk, c // groups).transpose(0, 2, 4, 3, 1).reshape(n, c * kk, length)

    cols = _cpu_numba.columns(x, off, m, wshape, *conf)
    want = R.deform_im2col(x.numpy(), off.numpy(), _np(m), ks, *conf)
    np.testing.assert_allclose(to_ref(cols.numpy()), want, atol=1e-12)
    gc = torch.randn(cols.shape, dtype=cols.dtype, generator=torch.Generator().manual_seed(8))
    gi, go, gm = _cpu_numba.columns_backward(gc, x, off, m, wshape, *conf)
    gc_ref = to_ref(gc.numpy())
    np.testing.assert_allclose(gi.numpy(), R.deform_col2im(gc_ref, off.numpy(), _np(m), tuple(x.shape), ks, *conf),
                               atol=1e-12)
    ro, rm = R.deform_col2im_coord(gc_ref, x.numpy(), off.numpy(), _np(m), ks, *conf)
    np.testing.assert_allclose(go.numpy(), ro, atol=1e-12)
    assert (gm is None) == (rm is None)
    if gm is not None:
        np.testing.assert_allclose(gm.numpy(), rm, atol=1e-12)


def test_fast_and_tensor_paths_agree_on_far_and_border_samples(monkeypatch: pytest.MonkeyPatch) -> None:
    require_numba()
    case = make_case(n=2, c=4, h=5, w=5, o=3, offset_groups=2, seed=9, integer_offsets=True)
    off = case["offset"]
    off[0, :4] = 1e3  # far outside
    off[1, :4] = -1.0  # exactly on the -1 border for some samples
    off[1, 4:8] = float("nan")  # non-finite: treated as outside by both paths
    res = {}
    for flag in ("tensor", "cpu-numba"):
        monkeypatch.setenv("DCN_LESSONS_BACKEND", flag)
        ts = [case[k].clone().requires_grad_() for k in ("input", "offset", "weight", "mask")]
        y = D.deform_conv2d(ts[0], ts[1], ts[2], None, 1, 1, 1, mask=ts[3])
        y.sum().backward()
        res[flag] = [y.detach()] + [t.grad for t in ts]
    for a, b in zip(res["tensor"], res["cpu-numba"]):
        assert torch.isfinite(a).all() and torch.isfinite(b).all()
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


# ------------------------------------------------------------------- identities with F.conv2d
_conf = st.fixed_dictionaries(dict(
    n=st.integers(1, 2), c=st.sampled_from([2, 4]), h=st.integers(3, 6), w=st.integers(3, 6),
    kh=st.integers(1, 3), kw=st.integers(1, 3), s=st.integers(1, 2), p=st.integers(0, 2),
    groups=st.sampled_from([1, 2]), og=st.sampled_from([1, 2]),
))


def _conf_case(cf: dict, dilation: int = 1, modulated: bool = False) -> dict:
    h = max(cf["h"], dilation * (cf["kh"] - 1) + 1)
    w = max(cf["w"], dilation * (cf["kw"] - 1) + 1)
    return make_case(n=cf["n"], c=cf["c"], h=h, w=w, o=2 * cf["groups"], k=(cf["kh"], cf["kw"]),
                     stride=(cf["s"], cf["s"]), padding=(cf["p"], cf["p"]), dilation=(dilation, dilation),
                     groups=cf["groups"], offset_groups=cf["og"], modulated=modulated, seed=cf["h"] * 7 + cf["w"])


#: the identities run on every backend: the ``path`` fixture forces one for the whole test (all examples)
IDENTITY = settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@settings(IDENTITY, max_examples=10)
@given(cf=_conf)
def test_zero_offsets_equal_conv2d(path: str, cf: dict) -> None:
    for dil in (1, 2):
        c = _conf_case(cf, dilation=dil)
        off = torch.zeros_like(c["offset"])
        y = D.deform_conv2d(c["input"], off, c["weight"], c["bias"], c["stride"], c["padding"], c["dilation"])
        ref = F.conv2d(c["input"], c["weight"], c["bias"], c["stride"], c["padding"], c["dilation"], cf["groups"])
        torch.testing.assert_close(y, ref, rtol=0, atol=1e-12)


@settings(IDENTITY, max_examples=10)
@given(cf=_conf, d=st.integers(2, 3))
def test_constant_offsets_equal_dilated_conv2d(path: str, cf: dict, d: int) -> None:
    """Kernel point (i, j) moved by ((d-1)*i, (d-1)*j) everywhere = a kernel of dilation d (crop the extra)."""
    c = _conf_case(cf, dilation=1)
    kh, kw = cf["kh"], cf["kw"]
    h, w = c["input"].shape[2:]
    assume(_out(h, kh, cf["s"], cf["p"], d) >= 1 and _out(w, kw, cf["s"], cf["p"], d) >= 1)  # a dilated output exists
    og = cf["og"]
    i = torch.arange(kh).repeat_interleave(kw).to(torch.float64)
    j = torch.arange(kw).repeat(kh).to(torch.float64)
    per_group = torch.stack([(d - 1) * i, (d - 1) * j], dim=1).reshape(-1)  # [2K]: Δy, Δx per point
    off = per_group.repeat(og).view(1, -1, 1, 1).expand_as(c["offset"]).contiguous()
    y = D.deform_conv2d(c["input"], off, c["weight"], c["bias"], c["stride"], c["padding"], 1)
    ref = F.conv2d(c["input"], c["weight"], c["bias"], c["stride"], c["padding"], d, cf["groups"])
    torch.testing.assert_close(y[:, :, : ref.shape[2], : ref.shape[3]], ref, rtol=0, atol=1e-12)


@settings(IDENTITY, max_examples=8)
@given(cf=_conf)
def test_mask_of_ones_equals_v1(path: str, cf: dict) -> None:
    c = _conf_case(cf, modulated=True)
    ts1 = [c[k].clone().requires_grad_() for k in ("input", "offset", "weight")]
    ts2 = [c[k].clone().requires_grad_() for k in ("input", "offset", "weight")]
    ones = torch.ones_like(c["mask"])
    y1 = D.deform_conv2d(*ts1, c["bias"], c["stride"], c["padding"], c["dilation"])
    y2 = D.deform_conv2d(*ts2, c["bias"], c["stride"], c["padding"], c["dilation"], mask=ones)
    torch.testing.assert_close(y1, y2, rtol=0, atol=1e-12)
    y1.sum().backward()
    y2.sum().backward()
    for a, b in zip(ts1, ts2):
        torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=1e-12)


# ------------------------------------------------------------------------------------ bad input
def _args(**over: object) -> list:
    c = make_case(n=2, c=4, h=5, w=5, o=4, modulated=True)
    c.update(over)
    return [c["input"], c["offset"], c["weight"], c["bias"], c["stride"], c["padding"], c["dilation"], c["mask"]]


@pytest.mark.parametrize("over,exc,words", [
    (dict(offset=torch.zeros(2, 17, 5, 5, dtype=torch.float64)), ValueError, ["offset", "2*3*3 = 18"]),
    (dict(offset=torch.zeros(2, 18, 4, 5, dtype=torch.float64)), ValueError, ["offset", "[2, 18, 5, 5]"]),
    (dict(mask=torch.zeros(2, 8, 5, 5, dtype=torch.float64)), ValueError, ["mask", "[2, 9, 5, 5]"]),
    (dict(bias=torch.zeros(3, dtype=torch.float64)), ValueError, ["bias", "[4]"]),
    (dict(weight=torch.zeros(4, 3, 3, 3, dtype=torch.float64)), ValueError, ["weight"]),
    (dict(input=torch.zeros(4, 5, 5, dtype=torch.float64)), ValueError, ["input", "4-D"]),
    (dict(stride=0), ValueError, ["stride"]),
    (dict(padding=-1), ValueError, ["padding"]),
    (dict(offset=torch.zeros(2, 18, 5, 5, dtype=torch.float32)), TypeError, ["offset", "float64"]),
    (dict(mask=torch.zeros(2, 9, 5, 5, dtype=torch.float32)), TypeError, ["mask", "float64"]),
    (dict(input=torch.zeros(2, 4, 5, 5, dtype=torch.int64)), TypeError, ["input", "floating"]),
    (dict(weight=np.zeros((4, 4, 3, 3))), TypeError, ["weight", "torch.Tensor"]),
    (dict(offset=torch.zeros(2, 18, 5, 5, dtype=torch.float64, device="meta")), ValueError, ["offset", "device"]),
])
def test_bad_input_names_argument(over: dict, exc: type, words: list) -> None:
    with pytest.raises(exc) as info:
        D.deform_conv2d(*_args(**over))
    for word in words:
        assert word in str(info.value), (word, str(info.value))


def test_double_backward_raises(path: str) -> None:
    c = make_case(n=1, c=2, h=4, w=4, o=2)
    x = c["input"].requires_grad_()
    y = D.deform_conv2d(x, c["offset"], c["weight"], c["bias"], 1, 1, 1, mask=c["mask"])
    (g,) = torch.autograd.grad((y * y).sum(), x, create_graph=True)  # grad_output depends on x
    with pytest.raises(RuntimeError, match="differentiable once"):
        g.sum().backward()


# -------------------------------------------------------------------- layouts and chunking
def test_non_contiguous_inputs_match_contiguous(path: str) -> None:
    c = make_case(n=2, c=4, h=5, w=6, o=4, groups=2, offset_groups=2, seed=11)
    x = c["input"].transpose(2, 3).contiguous().transpose(2, 3)  # same values, W-major strides
    off = torch.cat([c["offset"], c["offset"]], dim=1)[:, ::2]  # strided channels
    off_vals = off.contiguous()
    w = c["weight"].permute(1, 0, 2, 3).contiguous().permute(1, 0, 2, 3)
    m = c["mask"].permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
    assert not (x.is_contiguous() or off.is_contiguous() or w.is_contiguous() or m.is_contiguous())
    res = []
    for args in ((x, off, w, m), (x.contiguous(), off_vals, w.contiguous(), m.contiguous())):
        ts = [a.clone() if a.is_contiguous() else a.detach() for a in args]
        ts = [t.requires_grad_() for t in ts]
        y = D.deform_conv2d(ts[0], ts[1], ts[2], c["bias"], 1, 1, 1, mask=ts[3])
        gy = torch.randn(y.shape, dtype=y.dtype, generator=torch.Generator().manual_seed(1))
        y.backward(gy.transpose(2, 3).contiguous().transpose(2, 3))  # non-contiguous grad_output too
        res.append([y.detach()] + [t.grad for t in ts])
    for a, b in zip(*res):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_chunked_batch_equals_whole_batch(path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    c = make_case(n=3, c=4, h=5, w=5, o=2, seed=12)
    res = []
    for budget, chunk in ((D.COLUMNS_BUDGET_BYTES, 3), (1, 1)):  # budget 1 byte -> one image per chunk
        monkeypatch.setattr(_columns, "COLUMNS_BUDGET_BYTES", budget)
        assert _columns.chunk_size(3, 4 * 9, 25, 8) == chunk
        ts = [c[k].clone().requires_grad_() for k in ("input", "offset", "weight", "bias", "mask")]
        y = D.deform_conv2d(ts[0], ts[1], ts[2], ts[3], 1, 1, 1, mask=ts[4])
        (y * y).sum().backward()
        res.append([y.detach()] + [t.grad for t in ts])
    for a, b in zip(*res):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def _record_work(path: str, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Spy on the backend's kernels: the returned list fills with "im2col" (sampling: the forward, and the weight
    gradient), "col2im" (the input gradient) and "coord" (the offset and mask gradients), one entry per call."""
    events: list[str] = []
    be = backends.get(path)
    if path == "cpu-numba":  # its own fused kernels, driven by _Chunk
        from dcn_lessons.ops import _cpu_numba

        real_cols, real_bwd = _cpu_numba._Chunk.columns, _cpu_numba._Chunk.columns_backward

        def columns(self):  # type: ignore[no-untyped-def]
            events.append("im2col")
            return real_cols(self)

        def columns_backward(self, grad_columns, need_input, need_coord):  # type: ignore[no-untyped-def]
            events.extend(["col2im"] * need_input + ["coord"] * need_coord)
            return real_bwd(self, grad_columns, need_input, need_coord)

        monkeypatch.setattr(_cpu_numba._Chunk, "columns", columns)
        monkeypatch.setattr(_cpu_numba._Chunk, "columns_backward", columns_backward)
    elif path == "cuda-emulated":  # the kernel launches themselves
        work = {"deform_im2col_kernel": ["im2col"], "deform_im2col_grouped_kernel": ["im2col"],
                "deform_col2im_kernel": ["col2im"], "deform_col2im_coord_kernel": ["coord"],
                "deform_col2im_fused_kernel": ["col2im", "coord"]}
        real_launch = be._launch

        def launch(kernel, *args):  # type: ignore[no-untyped-def]
            events.extend(work[kernel])
            return real_launch(kernel, *args)

        monkeypatch.setattr(be, "_launch", launch)
    else:  # the tensor primitives (the backend object's attributes; its one-call backward goes through them)
        for name, event in [("deform_im2col", "im2col"), ("deform_col2im", "col2im"), ("deform_col2im_coord", "coord")]:
            real = getattr(be, name)
            monkeypatch.setattr(be, name, lambda *a, _real=real, _event=event: (events.append(_event), _real(*a))[1])
    return events


@pytest.mark.parametrize("wanted,work", [
    (("offset",), ["coord"]),  # no weight gradient: no im2col in the backward; no input gradient: no col2im
    (("mask",), ["coord"]),
    (("input",), ["col2im"]),
    (("weight",), ["im2col"]),
    (("input", "weight"), ["im2col", "col2im"]),
    (("input", "offset", "weight", "mask"), ["im2col", "col2im", "coord"]),
], ids=["offset", "mask", "input", "weight", "input+weight", "all"])
def test_only_requested_gradients_are_computed(path: str, monkeypatch: pytest.MonkeyPatch, wanted: tuple,
                                               work: list) -> None:
    """The backward does the work of the gradients asked for and skips the rest, counted at the backend's kernels
    (lesson 05: "no weight gradient, no im2col in the backward pass; no input gradient, no col2im")."""
    c = make_case(n=1, c=2, h=4, w=4, o=2, seed=14)
    leaves = {k: c[k].clone().requires_grad_(k in wanted) for k in ("input", "offset", "weight", "mask")}
    events = _record_work(path, monkeypatch)
    y = D.deform_conv2d(leaves["input"], leaves["offset"], leaves["weight"], c["bias"], 1, 1, 1, mask=leaves["mask"])
    assert events == ["im2col"], f"{path}: the forward ran {events}"
    events.clear()
    y.sum().backward()
    assert sorted(events) == sorted(work), f"{path}: asked for {wanted}, the backward ran {events}"
    for k, t in leaves.items():
        assert (t.grad is not None) == (k in wanted), k
        if t.grad is not None:
            assert t.grad.abs().sum() > 0, k


def test_fast_path_threaded_split_matches_tensor_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Force the compiled path to split every kernel across 2 threads (uneven ranges) and compare."""
    require_numba()
    from dcn_lessons.ops import _cpu_numba

    monkeypatch.setattr(_cpu_numba, "SERIAL_BELOW", 0)
    monkeypatch.setattr(_cpu_numba, "KERNEL_THREADS", 2)
    assert _cpu_numba._threads(10, 10) == 2
    case = make_case(n=3, c=5, h=5, w=6, o=2, offset_groups=5, k=(2, 3), padding=(0, 1), seed=13)
    res = {}
    for flag in ("tensor", "cpu-numba"):
        monkeypatch.setenv("DCN_LESSONS_BACKEND", flag)
        ts = [case[k].clone().requires_grad_() for k in ("input", "offset", "weight", "bias", "mask")]
        y = D.deform_conv2d(ts[0], ts[1], ts[2], ts[3], 1, case["padding"], 1, mask=ts[4])
        (y * y).sum().backward()
        res[flag] = [y.detach()] + [t.grad for t in ts]
    for a, b in zip(res["tensor"], res["cpu-numba"]):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-11)


def test_kernel_thread_rule() -> None:
    """One thread for small calls and while torch uses at most 2 threads; torch's count above that."""
    require_numba()
    from dcn_lessons.ops import _cpu_numba

    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert _cpu_numba._threads(100, 1 << 20) == 1
        torch.set_num_threads(4)
        assert _cpu_numba._threads(100, 1 << 20) == 4
        assert _cpu_numba._threads(3, 1 << 20) == 3  # never more threads than units
        assert _cpu_numba._threads(100, 10) == 1  # below SERIAL_BELOW
    finally:
        torch.set_num_threads(threads)


def test_without_numba_the_operator_falls_back_to_the_tensor_path() -> None:
    """A fresh interpreter where ``import numba`` fails: the compiled path reports unavailable, the operator
    runs on the tensor path and gives the reference's numbers."""
    code = (
        "import sys; sys.modules['numba'] = None\n"  # makes `import numba` raise ImportError
        "import numpy as np, torch\n"
        "torch.manual_seed(0)\n"
        "from dcn_lessons.ops import deform_conv as D\n"
        "from dcn_lessons.reference import deform_conv as R\n"
        "assert not D.cpu_fast_path_available()\n"
        "x = torch.randn(1, 2, 5, 5, dtype=torch.float64); off = torch.randn(1, 18, 5, 5, dtype=torch.float64)\n"
        "w = torch.randn(3, 2, 3, 3, dtype=torch.float64)\n"
        "assert D.active_backend(x) == 'tensor', D.active_backend(x)\n"
        "y = D.deform_conv2d(x, off, w, padding=1)\n"
        "np.testing.assert_allclose(y.numpy(), R.deform_conv2d(x.numpy(), off.numpy(), w.numpy(), padding=1), atol=1e-12)\n"
        "print('fallback ok')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "DCN_LESSONS_BACKEND"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0 and "fallback ok" in proc.stdout, proc.stderr[-2000:]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_compiled_floor_just_below_integers(dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch) -> None:
    """Samples one ulp below an integer: the corners are floor(p), so the offset gradient is the difference
    towards the integer above (x(n) - x(n-1)), on the compiled path as on the tensor path."""
    require_numba()
    g = torch.Generator().manual_seed(21)
    x = torch.randn(1, 3, 6, 6, generator=g, dtype=dtype)
    base = torch.randint(-1, 3, (1, 18, 6, 6), generator=g).to(dtype)
    off = torch.nextafter(base, torch.full_like(base, -100.0))  # just below an integer
    w = torch.randn(2, 3, 3, 3, generator=g, dtype=dtype)
    res = {}
    for flag in ("tensor", "cpu-numba"):
        monkeypatch.setenv("DCN_LESSONS_BACKEND", flag)
        o = off.clone().requires_grad_()
        y = D.deform_conv2d(x, o, w, padding=1)
        y.sum().backward()
        res[flag] = (y.detach(), o.grad)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    for a, b in zip(res["tensor"], res["cpu-numba"]):
        torch.testing.assert_close(a, b, rtol=0, atol=tol)
