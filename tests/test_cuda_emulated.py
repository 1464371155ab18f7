"""The CUDA kernels of ``kernels/`` run on the CPU through the g++ emulator, against the NumPy references.

Every kernel (im2col plain and grouped, col2im, coordinate gradient, fused backward, RoI forward/backward for
the four kinds) in float64 and float32, with samples on integer coordinates, on the border (exactly -1, 0,
H-1, H and around) and far outside. The emulator runs threads one at a time, so these tests check the
arithmetic and indexing of the kernels, not races: ``tests/test_cuda_gpu.py`` and
``benchmarks/sanitize_cuda.sh`` cover the GPU. None of our kernels uses ``__syncthreads``/shared memory.
"""
from __future__ import annotations

import warnings

import zlib

import numpy as np
import pytest
import torch

import dcn_lessons.cuda as dcuda
from dcn_lessons.cuda import emulator
from dcn_lessons.cuda.backend import EmulatedKernels
from dcn_lessons.ops import deform_conv as ops_conv
from dcn_lessons.reference import deform_conv as RC
from dcn_lessons.reference import roi as RR

from cuda_cases import CONVERT_SOURCE, check_conversion, check_rounded_once, conversion_inputs

T = torch.from_numpy


@pytest.fixture(scope="module")
def plain() -> EmulatedKernels:
    return dcuda.emulated_kernels()


@pytest.fixture(scope="module")
def fast() -> EmulatedKernels:
    return dcuda.emulated_kernels(im2col="grouped", backward="fused")


def _tol(dtype: np.dtype) -> dict:
    return dict(rtol=1e-12, atol=1e-12) if dtype == np.float64 else dict(rtol=2e-5, atol=2e-5)


# ----------------------------------------------------------------------------------------- the emulator

_TOY = r"""
__global__ void scale(const float* x, float* y, float a, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  y[i] = a * x[i];
}
template <typename T>
__global__ void index_map(T* out, int h, int w) {   // 2-D grid and block: out[r, c] = r * 100 + c
  int r = blockIdx.y * blockDim.y + threadIdx.y, c = blockIdx.x * blockDim.x + threadIdx.x;
  if (r >= h || c >= w) return;
  out[r * w + c] = (T)(r * 100 + c);
  atomicAdd(out + h * w, (T)1);                      // one extra slot counts the threads that got here
}
"""


def test_emulator_runs_every_thread_of_every_block():
    mod = emulator.compile(_TOY, {"scale": ["const float*", "float*", "float", "int"],
                                  "index_map<double>": ["double*", "int", "int"]})
    x = np.arange(70, dtype=np.float32)
    y = np.full_like(x, -1.0)
    mod.get_function("scale")((3,), (32,), (x, y, 2.5, np.int32(70)))  # 96 threads for 70 items
    np.testing.assert_array_equal(y, 2.5 * x)
    out = np.zeros(7 * 9 + 1)
    mod.get_function("index_map<double>")((2, 3), (8, 4), (out, 7, 9))  # grid 2x3 of 8x4 threads
    r, c = np.divmod(np.arange(63), 9)
    np.testing.assert_array_equal(out[:63], r * 100 + c)
    assert out[63] == 63
    y_t = torch.zeros(70)
    mod.get_function("scale")(3, 32, (torch.from_numpy(x), y_t, 1.0, 70))  # torch CPU tensors work too
    assert torch.equal(y_t, torch.from_numpy(x))
    assert mod is emulator.compile(_TOY, {"scale": ["const float*", "float*", "float", "int"],
                                          "index_map<double>": ["double*", "int", "int"]})  # cached


def test_emulator_rejects_bad_arguments_with_clear_messages():
    mod = emulator.compile(_TOY, {"scale": ["const float*", "float*", "float", "int"]})
    f = mod.get_function("scale")
    x = np.zeros(4, np.float32)
    with pytest.raises(TypeError, match=r"argument 0 \(const float\*\): expected float32 elements, got float64"):
        f(1, 4, (x.astype(np.float64), x, 1.0, 4))
    with pytest.raises(TypeError, match="expected 4 arguments, got 3"):
        f(1, 4, (x, x, 1.0))
    with pytest.raises(TypeError, match="C-contiguous"):
        f(1, 4, (np.zeros(8, np.float32)[::2], x, 1.0, 4))
    with pytest.raises(ValueError, match="at most 1024 threads"):
        f(1, 2048, (x, x, 1.0, 4))
    with pytest.raises(KeyError, match="was not compiled"):
        mod.get_function("nope")
    with pytest.raises(TypeError, match="unsupported parameter type"):
        emulator.compile(_TOY, {"scale": ["const float*", "float*", "complex", "int"]})


def test_emulator_reports_compile_errors_and_refuses_syncthreads():
    with pytest.raises(emulator.EmulatorError, match="g\\+\\+ could not compile"):
        emulator.compile("__global__ void k(float* x) { x[0] = undefined_name; }", {"k": ["float*"]})
    with pytest.raises(emulator.EmulatorError, match="does_not_support___syncthreads"):
        emulator.compile("__global__ void k(float* x) { x[0] = 1; __syncthreads(); }", {"k": ["float*"]})


# -------------------------------------------------------------------------------- deformable convolution

# (N, C, H, W, kernel, stride, padding, dilation, G)
CONV_CASES = [
    (2, 4, 5, 6, (3, 3), (1, 1), (1, 1), (1, 1), 2),
    (1, 3, 6, 5, (2, 3), (2, 1), (0, 2), (2, 1), 1),
]


def _conv_case(case, dtype, offsets: str, rng):
    N, C, H, W, (kh, kw), (sh, sw), (ph, pw), (dh, dw), G = case
    Ho = (H + 2 * ph - (dh * (kh - 1) + 1)) // sh + 1
    Wo = (W + 2 * pw - (dw * (kw - 1) + 1)) // sw + 1
    x = rng.standard_normal((N, C, H, W))
    shape = (N, 2 * G * kh * kw, Ho, Wo)
    if offsets == "random":  # fractional, some far outside the map (|offset| up to ~3*H)
        off = rng.standard_normal(shape) * 1.5
        off.flat[:: 7] *= 6.0
    elif offsets == "integer":  # every sample exactly on an integer coordinate (zero included)
        off = rng.integers(-3, 4, size=shape).astype(np.float64)
    else:  # "border": samples at exactly -1, 0, H-1, H and just inside/outside of them
        base_y = (np.arange(Ho) * sh - ph)[:, None]
        targets = np.array([-1.0, -0.999, -0.5, 0.0, H - 1.0, H - 0.5, H - 1e-3, H, H + 0.5, -7.25])
        off = np.empty(shape)
        pick = rng.integers(0, len(targets), size=shape)
        for k in range(kh * kw):
            i, j = divmod(k, kw)
            ty = targets[pick[:, 2 * k :: 2 * kh * kw]] * 1.0
            off[:, 2 * k :: 2 * kh * kw] = ty - (base_y + i * dh)
            tx = np.where(targets[pick[:, 2 * k + 1 :: 2 * kh * kw]] >= H - 1.0,
                          targets[pick[:, 2 * k + 1 :: 2 * kh * kw]] - H + W, targets[pick[:, 2 * k + 1 :: 2 * kh * kw]])
            off[:, 2 * k + 1 :: 2 * kh * kw] = tx - ((np.arange(Wo) * sw - pw)[None, :] + j * dw)
    mask = rng.random((N, G * kh * kw, Ho, Wo))
    gcol = rng.standard_normal((N, C * kh * kw, Ho * Wo))
    cast = lambda a: a.astype(dtype)  # noqa: E731
    return cast(x), cast(off), cast(mask), cast(gcol), ((kh, kw), (sh, sw), (ph, pw), (dh, dw))


# Border targets (-1, H-1, H - 1e-3, ...) are exact only in float64: float32 runs random and integer offsets.
@pytest.mark.parametrize("dtype,offsets", [(np.float64, "random"), (np.float64, "integer"), (np.float64, "border"),
                                           (np.float32, "random"), (np.float32, "integer")])
@pytest.mark.parametrize("case", CONV_CASES)
@pytest.mark.parametrize("modulated", [True, False])
def test_deform_conv_kernels_match_reference(plain, fast, dtype, offsets, case, modulated):
    rng = np.random.default_rng(zlib.crc32(repr((offsets, case[0], modulated)).encode()))
    x, off, mask, gcol, geo = _conv_case(case, dtype, offsets, rng)
    mask = mask if modulated else None
    # Ground truth in float64 from the float32-rounded inputs.
    up = lambda a: None if a is None else a.astype(np.float64)  # noqa: E731
    cols = RC.deform_im2col(up(x), up(off), up(mask), *geo)
    gi = RC.deform_col2im(up(gcol), up(off), up(mask), x.shape, *geo)
    go, gm = RC.deform_col2im_coord(up(gcol), up(x), up(off), up(mask), *geo)
    tol = _tol(np.dtype(dtype))
    tm = None if mask is None else T(mask)
    for be in (plain, fast):
        got = be.deform_im2col(T(x), T(off), tm, *geo)
        assert got.dtype == torch.from_numpy(x).dtype and got.shape == cols.shape
        np.testing.assert_allclose(got.numpy(), cols, **tol, err_msg=f"im2col {be.im2col}")
        gi2, go2, gm2 = be.deform_conv_backward_columns(T(gcol), T(x), T(off), tm, *geo)
        np.testing.assert_allclose(gi2.numpy(), gi, **tol, err_msg=f"grad_input {be.backward}")
        np.testing.assert_allclose(go2.numpy(), go, **tol, err_msg=f"grad_offset {be.backward}")
        if mask is None:
            assert gm2 is None
        else:
            np.testing.assert_allclose(gm2.numpy(), gm, **tol, err_msg=f"grad_mask {be.backward}")
    assert np.abs(cols).max() > 0 and np.abs(go).max() > 0  # the case exercises something


def test_integer_offsets_take_the_forward_difference(plain):
    """At the start of training offsets are 0: the offset gradient is x(q+1) - x(q) (torchvision's rule)."""
    x = np.arange(20, dtype=np.float64).reshape(1, 1, 4, 5) ** 2
    off = np.zeros((1, 2, 4, 5))
    gcol = np.ones((1, 1, 20))
    go, _ = plain.deform_col2im_coord(T(gcol), T(x), T(off), None, 1, 1, 0, 1)
    img = x[0, 0]
    dy = np.vstack([img[1:] - img[:-1], -img[-1:]])  # bottom row: the neighbour below is off the map (0)
    dx = np.hstack([img[:, 1:] - img[:, :-1], -img[:, -1:]])
    np.testing.assert_array_equal(go[0, 0].numpy(), dy)
    np.testing.assert_array_equal(go[0, 1].numpy(), dx)


def test_far_outside_samples_are_zero_with_zero_gradient(plain):
    x = np.random.default_rng(1).standard_normal((1, 2, 3, 3))
    off = np.full((1, 2, 3, 3), 1e6)
    off[0, 1] = -1e6
    cols = plain.deform_im2col(T(x), T(off), None, 1, 1, 0, 1)
    assert torch.count_nonzero(cols) == 0
    gi = plain.deform_col2im(torch.ones(1, 2, 9, dtype=torch.float64), T(off), None, x.shape, 1, 1, 0, 1)
    go, _ = plain.deform_col2im_coord(torch.ones(1, 2, 9, dtype=torch.float64), T(x), T(off), None, 1, 1, 0, 1)
    assert torch.count_nonzero(gi) == 0 and torch.count_nonzero(go) == 0


def test_kernel_arguments_are_checked_at_the_public_boundary():
    """The kernels check nothing (a wrong shape would read out of bounds): the public primitives check their
    arguments before any launch, whichever backend is asked for."""
    x = torch.zeros(2, 4, 5, 5, dtype=torch.float64)
    emu = "cuda-emulated"
    with pytest.raises(ValueError, match=r"offset: expected shape \[N, 2\*offset_groups\*kh\*kw, Ho, Wo\]"):
        ops_conv.deform_im2col(x, torch.zeros(2, 18, 4, 5, dtype=torch.float64), None, 3, 1, 1, 1, backend=emu)
    with pytest.raises(TypeError, match="offset: expected dtype torch.float64"):
        ops_conv.deform_im2col(x, torch.zeros(2, 18, 5, 5), None, 3, 1, 1, 1, backend=emu)
    with pytest.raises(TypeError, match=r"input: expected a floating-point tensor \(.*\), got dtype torch.int64"):
        ops_conv.deform_im2col(x.long(), torch.zeros(2, 18, 5, 5), None, 3, 1, 1, 1, backend=emu)
    with pytest.raises(ValueError, match=r"grad_columns: expected shape \[N, C\*kh\*kw, Ho\*Wo\] = \[2, 36, 25\]"):
        ops_conv.deform_col2im(torch.zeros(2, 36, 24, dtype=torch.float64), torch.zeros(2, 18, 5, 5,
                               dtype=torch.float64), None, x.shape, 3, 1, 1, 1, backend=emu)
    with pytest.raises(ValueError, match="input: backend cuda-emulated runs on cpu tensors, got device meta"):
        ops_conv.deform_im2col(x.to("meta"), torch.zeros(2, 18, 5, 5, dtype=torch.float64, device="meta"), None, 3,
                               1, 1, 1, backend=emu)
    with pytest.raises(ValueError, match="backend: expected one of tensor, cpu-numba, cuda, cuda-emulated"):
        ops_conv.deform_im2col(x, torch.zeros(2, 18, 5, 5, dtype=torch.float64), None, 3, 1, 1, 1, backend="gpu")


# 16-bit storage, float32 compute: every value the kernels store is the float64 result on the same 16-bit
# inputs rounded once (cuda_cases.check_rounded_once); grad_input is accumulated in float32 and rounded at the end.
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("modulated", [True, False])
def test_16bit_conv_kernels_round_once(plain, fast, dtype, modulated):
    rng = np.random.default_rng(11)
    x, off, mask, gcol, geo = _conv_case(CONV_CASES[0], np.float64, "random", rng)
    x16, off16, gcol16 = (T(a).to(dtype) for a in (x, off, gcol))
    m16 = T(mask).to(dtype) if modulated else None
    up = lambda t: None if t is None else t.double().numpy()  # noqa: E731  the 16-bit inputs, exactly
    want_cols = RC.deform_im2col(up(x16), up(off16), up(m16), *geo)
    want_gi = RC.deform_col2im(up(gcol16), up(off16), up(m16), x.shape, *geo)
    want_go, want_gm = RC.deform_col2im_coord(up(gcol16), up(x16), up(off16), up(m16), *geo)
    for be in (plain, fast):
        check_rounded_once(f"im2col {be.im2col}", be.deform_im2col(x16, off16, m16, *geo), want_cols, dtype)
        gi, go, gm = be.deform_conv_backward_columns(gcol16, x16, off16, m16, *geo)
        check_rounded_once(f"grad_input {be.backward}", gi, want_gi, dtype)
        check_rounded_once(f"grad_offset {be.backward}", go, want_go, dtype)
        if modulated:
            check_rounded_once(f"grad_mask {be.backward}", gm, want_gm, dtype)
        else:
            assert gm is None
    assert np.abs(want_go).max() > 1  # the case is not trivially small


def _common_source() -> str:
    from dcn_lessons.cuda._source import kernel_source

    return kernel_source(("dcn_common.cuh",))


def test_16bit_conversions_match_torch_bit_for_bit():
    """dcn_store rounds float32 to float16/bfloat16 as torch does (nearest even: ties, subnormals, overflow to
    inf, NaN stays NaN) and dcn_load widens exactly. The bfloat16 code is the GPU's own; float16 uses the
    compiler's _Float16 here and the cvt instruction on the GPU (tests/test_cuda_gpu.py checks that one)."""
    mod = emulator.compile(_common_source() + CONVERT_SOURCE, {
        "to_half": ["const float*", "dcn_half*", "float*", "long long"],
        "to_bfloat16": ["const float*", "dcn_bfloat16*", "float*", "long long"]})
    x = conversion_inputs()
    for name, dtype in (("to_half", torch.float16), ("to_bfloat16", torch.bfloat16)):
        out = torch.empty(x.size, dtype=dtype)
        back = np.empty_like(x)
        mod.get_function(name)(8, 64, (x, out, back, x.size))
        check_conversion(name, x, out, back)


def test_emulator_checks_16bit_pointer_types():
    mod = emulator.compile(_common_source() + CONVERT_SOURCE,
                           {"to_half": ["const float*", "dcn_half*", "float*", "long long"]})
    f = mod.get_function("to_half")
    x = np.zeros(4, np.float32)
    with pytest.raises(TypeError, match=r"argument 1 \(dcn_half\*\): expected float16 elements, got bfloat16"):
        f(1, 4, (x, torch.zeros(4, dtype=torch.bfloat16), x.copy(), 4))
    f(1, 4, (x, np.zeros(4, np.float16), x.copy(), 4))  # a NumPy float16 array is fine
    with pytest.raises(TypeError, match="unsupported parameter type 'dcn_half'"):
        emulator.compile(_TOY, {"scale": ["const float*", "float*", "dcn_half", "int"]})


# ------------------------------------------------------------------------------------------ RoI family

def _rois(rng, n_batch, H, W, scale, exact: bool):
    """Boxes inside, straddling the border, far outside, and one of zero size (image pixels)."""
    if exact:  # corners on the pixel grid: samples land on integers, clamps are hit exactly
        rows = [[0, 0, 0, 2 * W / scale / 2, H / scale], [n_batch - 1, -2 / scale, -1 / scale, 3 / scale, 2 / scale],
                [0, (W - 1) / scale, (H - 2) / scale, (W + 2) / scale, (H + 1) / scale]]
    else:
        rows = [[0, 0.3, 0.7, 2.9 / scale, 3.4 / scale], [n_batch - 1, -1.6 / scale, -0.9 / scale, 2.2 / scale,
                2.7 / scale], [0, (W - 1.3) / scale, (H - 0.6) / scale, (W + 1.7) / scale, (H + 2.2) / scale]]
    rows += [[n_batch - 1, 50.0 / scale, 40.0 / scale, 60.0 / scale, 55.0 / scale],  # far outside
             [0, 1.25 / scale, 1.5 / scale, 1.25 / scale, 3.5 / scale]]  # zero width
    return np.array(rows)


KINDS = ["roi_align", "deform_roi_pool", "modulated", "ps_roi_align", "deform_ps_roi_pool"]


def _roi_reference(kind, go, x, rois, off, mask, size, scale, ratio, gamma):
    if kind == "roi_align":
        return (RR.roi_align(x, rois, size, scale, ratio),
                (RR.roi_align_backward(go, x, rois, size, scale, ratio), None, None))
    if kind == "ps_roi_align":
        return (RR.ps_roi_align(x, rois, size, scale, ratio),
                (RR.ps_roi_align_backward(go, x, rois, size, scale, ratio), None, None))
    if kind == "deform_roi_pool":
        return (RR.deform_roi_pool(x, rois, off, size, scale, ratio, gamma),
                tuple(RR.deform_roi_pool_backward(go, x, rois, off, size, scale, ratio, gamma)))
    if kind == "modulated":
        return (RR.modulated_deform_roi_pool(x, rois, off, mask, size, scale, ratio, gamma),
                tuple(RR.modulated_deform_roi_pool_backward(go, x, rois, off, mask, size, scale, ratio, gamma)))
    return (RR.deform_ps_roi_pool(x, rois, off, size, scale, ratio, gamma),
            tuple(RR.deform_ps_roi_pool_backward(go, x, rois, off, size, scale, ratio, gamma)))


# Exact-grid boxes put samples on clamps and integers, where the position gradient jumps: float32 rounding
# could pick the other side, so they run in float64 only.
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype,exact,ratio", [(np.float64, False, 0), (np.float64, False, 2),
                                               (np.float64, True, -1), (np.float32, False, 0),
                                               (np.float32, False, 2)])
def test_roi_kernels_match_reference(plain, dtype, kind, exact, ratio):
    rng = np.random.default_rng(7)
    size = (2, 3)
    ps = kind.startswith(("ps", "deform_ps"))
    N, C, H, W, scale, gamma = 2, (2 * 6 if ps else 3), 5, 6, 0.5, 0.1
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    rois = _rois(rng, N, H, W, scale, exact).astype(dtype)
    K = len(rois)
    deformable = kind in ("deform_roi_pool", "modulated", "deform_ps_roi_pool")
    off = (rng.standard_normal((K, 2, *size)) * 1.5).astype(dtype) if deformable else None
    if off is not None and exact:
        off = np.round(off * 4) / 4  # multiples of 1/4: with gamma*roi size, shifts on a coarse grid
    mask = rng.random((K, 1, *size)).astype(dtype) if kind == "modulated" else None
    c_out = C // 6 if ps else C
    go = rng.standard_normal((K, c_out, *size)).astype(dtype)
    up = lambda a: None if a is None else a.astype(np.float64)  # noqa: E731
    want_out, want_grads = _roi_reference(kind, up(go), up(x), up(rois), up(off), up(mask), size, scale, ratio,
                                          gamma)
    bkind = "deform_roi_pool" if kind == "modulated" else kind
    tn = lambda a: None if a is None else T(a)  # noqa: E731
    out = plain.roi_forward(bkind, T(x), T(rois), tn(off), tn(mask), size, scale, ratio, gamma)
    tol = _tol(np.dtype(dtype))
    np.testing.assert_allclose(out.numpy(), want_out, **tol)
    grads = plain.roi_backward(bkind, T(go), T(x), T(rois), tn(off), tn(mask), size, scale, ratio, gamma)
    for name, got, want in zip(("input", "offset", "mask"), grads, want_grads):
        if want is None:
            assert got is None, name
        else:
            np.testing.assert_allclose(got.numpy(), want, **tol, err_msg=f"grad_{name}")
    assert np.abs(want_out).max() > 0 and np.abs(want_grads[0]).max() > 0
    assert np.all(want_out[3] == 0)  # the far-outside box pools to exactly 0 (same check on the kernel:)
    assert torch.count_nonzero(out[3]) == 0


def test_roi_arguments_are_checked_before_the_kernels(monkeypatch):
    """With the kernels forced, bad RoI arguments are refused by the public functions (the kernels would read
    out of bounds); K = 0 launches nothing."""
    from dcn_lessons import backends
    import dcn_lessons.ops as ops

    monkeypatch.setenv("DCN_LESSONS_BACKEND", "cuda-emulated")
    x = torch.zeros(1, 4, 5, 5, dtype=torch.float64)
    rois = torch.tensor([[0, 0, 0, 3, 3.0]], dtype=torch.float64)
    with pytest.raises(ValueError, match="kind: expected one of"):
        backends.roi_kind("roi_pool")
    with pytest.raises(ValueError, match=r"offset: expected shape \[K, 2, ph, pw\] = \[1, 2, 2, 2\]"):
        ops.deform_roi_pool(x, rois, torch.zeros(1, 2, 2, 3, dtype=torch.float64), 2)
    with pytest.raises(ValueError, match=r"boxes: row 0 has batch index 1\.0; expected an integer in \[0, 0\]"):
        ops.roi_align(x, torch.tensor([[1, 0, 0, 3, 3.0]], dtype=torch.float64), 2)
    with pytest.raises(ValueError, match=r"input: channels C=4 not divisible by ph\*pw=9"):
        ops.ps_roi_align(x, rois, 3)
    empty = ops.roi_align(x, torch.zeros(0, 5, dtype=torch.float64), 2)
    assert empty.shape == (0, 4, 2, 2)


# ------------------------------------------------------------------------------------ kernels_for contract

class _FakeCudaTensor:
    is_cuda = True
    dtype = torch.float32

    class device:  # noqa: N801
        index = 0
        type = "cuda"


def test_kernels_for_and_the_backend_switch(monkeypatch):
    from dcn_lessons import backends

    assert dcuda.kernels_for(torch.zeros(2)) is None  # CPU tensor: never the CUDA kernels
    monkeypatch.setenv("DCN_LESSONS_BACKEND", "tensor")
    assert backends.select(_FakeCudaTensor()).name == "tensor"  # forced: no attempt at the kernels
    monkeypatch.setenv("DCN_LESSONS_BACKEND", "torch")
    with pytest.raises(ValueError, match="DCN_LESSONS_BACKEND='torch'.*now called 'tensor'"):
        backends.select(_FakeCudaTensor())
    monkeypatch.setenv("DCN_LESSONS_BACKEND", "sometimes")
    with pytest.raises(ValueError, match="DCN_LESSONS_BACKEND"):
        backends.select(_FakeCudaTensor())
    monkeypatch.delenv("DCN_LESSONS_BACKEND")
    monkeypatch.setenv("DCN_LESSONS_CPU_FAST", "0")  # a retired switch is an error that names its replacement
    with pytest.raises(ValueError, match="DCN_LESSONS_CPU_FAST is no longer read: use DCN_LESSONS_BACKEND=tensor"):
        backends.select(torch.zeros(1))
    monkeypatch.delenv("DCN_LESSONS_CPU_FAST")
    try:
        import cupy  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("CuPy is installed here: the no-CuPy fallback cannot be observed")
    dcuda._reset_for_tests()
    with pytest.warns(RuntimeWarning, match="CuPy is not installed"):
        assert backends.select(_FakeCudaTensor()).name == "tensor"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the second call is silent: warned once
        assert dcuda.kernels_for(_FakeCudaTensor()) is None
    monkeypatch.setenv("DCN_LESSONS_BACKEND", "cuda")
    with pytest.raises(dcuda.CudaBackendUnavailable, match="CuPy is not installed"):
        backends.select(_FakeCudaTensor())
    dcuda._reset_for_tests()


def test_set_kernel_variant_validates_and_picks_the_backend(monkeypatch):
    monkeypatch.setattr(dcuda, "_BACKENDS", {(0, "plain", "separate"): "plain backend",
                                             (0, "grouped", "fused"): "fast backend"})
    monkeypatch.setattr(dcuda, "_VARIANT", {"im2col": "plain", "backward": "separate"})
    monkeypatch.setenv("DCN_LESSONS_BACKEND", "")
    assert dcuda.kernel_variant() == ("plain", "separate")
    assert dcuda.kernels_for(_FakeCudaTensor()) == "plain backend"
    dcuda.set_kernel_variant(im2col="grouped", backward="fused")
    assert dcuda.kernel_variant() == ("grouped", "fused")
    assert dcuda.kernels_for(_FakeCudaTensor()) == "fast backend"  # built once per variant, kept
    with pytest.raises(ValueError, match='im2col: expected "plain" or "grouped", got \'tiled\''):
        dcuda.set_kernel_variant(im2col="tiled")
    with pytest.raises(ValueError, match='backward: expected "separate" or "fused"'):
        dcuda.set_kernel_variant(backward="atomic")
    assert dcuda.kernel_variant() == ("grouped", "fused")  # a refused call changes nothing


def test_kernels_dir_env_override(monkeypatch, tmp_path):
    from dcn_lessons.cuda import _source

    monkeypatch.setenv("DCN_LESSONS_KERNELS", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="DCN_LESSONS_KERNELS"):
        _source.kernels_dir()
    monkeypatch.delenv("DCN_LESSONS_KERNELS")
    assert (_source.kernels_dir() / "deform_conv.cu").is_file()


# ------------------------------------------------------- end to end: the torch operators on the emulated kernels

@pytest.mark.parametrize("variant", [("plain", "separate"), ("grouped", "fused")])
def test_torch_ops_run_end_to_end_on_the_emulated_kernels(monkeypatch, variant):
    """dcn_lessons.ops on the emulated backend (DCN_LESSONS_BACKEND=cuda-emulated, in the kernel variant under
    test): the same calls the CUDA backend gets on a GPU; results and gradients equal the tensor path's."""
    import dcn_lessons.ops as ops_roi


    monkeypatch.setenv("DCN_LESSONS_BACKEND", "tensor")
    emu = dcuda.emulated_kernels(*variant)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 4, 5, 6, generator=g, dtype=torch.float64)
    off = torch.randn(2, 2 * 2 * 9, 5, 6, generator=g, dtype=torch.float64)
    mask = torch.rand(2, 2 * 9, 5, 6, generator=g, dtype=torch.float64)
    w = torch.randn(6, 2, 3, 3, generator=g, dtype=torch.float64)  # groups = 2
    b = torch.randn(6, generator=g, dtype=torch.float64)
    feat = torch.randn(2, 8, 6, 7, generator=g, dtype=torch.float64)
    rois = torch.tensor([[0, 0.5, 1.0, 9.0, 8.0], [1, -2.0, -1.0, 5.0, 11.0]], dtype=torch.float64)
    roff = torch.randn(2, 2, 2, 2, generator=g, dtype=torch.float64)
    rmask = torch.rand(2, 1, 2, 2, generator=g, dtype=torch.float64)

    def run():
        leaves = [t.clone().requires_grad_() for t in (x, off, mask, w, b, feat, roff, rmask)]
        xx, oo, mm, ww, bb, ff, ro, rm = leaves
        y = ops_conv.deform_conv2d(xx, oo, ww, bb, stride=1, padding=1, dilation=1, mask=mm)
        r1 = ops_roi.modulated_deform_roi_pool(ff, rois, ro, rm, 2, spatial_scale=0.5, sampling_ratio=2)
        r2 = ops_roi.ps_roi_align(ff, rois, 2, spatial_scale=0.5, sampling_ratio=0)
        loss = (y * y.detach().cos()).sum() + (r1 * r1.detach().sin()).sum() + (r2 * 1.7).sum()
        loss.backward()
        return [y.detach(), r1.detach(), r2.detach()] + [t.grad for t in leaves]

    want = run()
    calls, fused_calls, roi_calls = [], [], []
    real_im2col, real_fused, real_roi = emu.deform_im2col, emu.deform_col2im_fused, emu.roi_backward
    monkeypatch.setattr(emu, "deform_im2col", lambda *a: calls.append(1) or real_im2col(*a))
    monkeypatch.setattr(emu, "deform_col2im_fused", lambda *a: fused_calls.append(1) or real_fused(*a))
    monkeypatch.setattr(emu, "roi_backward", lambda *a: roi_calls.append(a[0].name) or real_roi(*a))
    monkeypatch.setattr(dcuda, "emulated_kernels", lambda *a, **k: emu)
    monkeypatch.setenv("DCN_LESSONS_BACKEND", "cuda-emulated")
    got = run()
    assert calls, "the operators never reached the kernels: nothing was tested"
    assert bool(fused_calls) == (variant[1] == "fused"), "the operator did not use the chosen backward"
    assert sorted(roi_calls) == ["deform_roi_pool", "ps_roi_align"], "the RoI ops did not run on the kernels"
    for i, (a, e) in enumerate(zip(got, want)):
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-10, msg=f"result {i}")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_16bit_tensors_take_the_conv_kernels_and_the_roi_tensor_path(monkeypatch, dtype):
    """float16/bfloat16 tensors on the kernel backend (emulated, as above): deform_conv2d runs on the 16-bit
    kernels and agrees with float64 to 16-bit precision; the RoI ops, which have no 16-bit kernels, run on the
    tensor path instead of failing."""
    import dcn_lessons.ops as ops_roi


    monkeypatch.setenv("DCN_LESSONS_BACKEND", "tensor")
    emu = dcuda.emulated_kernels()
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 4, 5, 6, generator=g).to(dtype)
    off = torch.randn(2, 2 * 9, 5, 6, generator=g).to(dtype)
    mask = torch.rand(2, 9, 5, 6, generator=g).to(dtype)
    w = (torch.randn(3, 4, 3, 3, generator=g) / 6).to(dtype)
    feat = torch.randn(1, 8, 6, 7, generator=g).to(dtype)
    rois = torch.tensor([[0, 0.5, 1.0, 9.0, 8.0]]).to(dtype)

    def grads(tensors):
        leaves = [t.detach().clone().requires_grad_() for t in tensors]
        y = ops_conv.deform_conv2d(leaves[0], leaves[1], leaves[3], None, padding=1, mask=leaves[2])
        y.float().square().sum().backward()
        return [y.detach()] + [t.grad for t in leaves]

    want = grads([t.double() for t in (x, off, mask, w)])
    used = []
    real = emu.deform_im2col
    monkeypatch.setattr(emu, "deform_im2col", lambda *a: used.append(a[0].dtype) or real(*a))
    monkeypatch.setenv("DCN_LESSONS_BACKEND", "cuda-emulated")
    got = grads([x, off, mask, w])
    assert used and set(used) == {dtype}, "deform_conv2d did not run on the 16-bit kernels"
    tol = 2e-2 if dtype == torch.float16 else 8e-2
    for name, a, e in zip(("out", "input", "offset", "mask", "weight"), got, want):
        assert a.dtype == dtype, name
        scale = e.abs().max().item()
        assert (a.double() - e).abs().max().item() <= tol * scale, f"{name} differs beyond 16-bit precision"
    want_roi = ops_roi.roi_align(feat.double(), rois.double(), 2, spatial_scale=0.5, sampling_ratio=2)
    roi_used = []
    monkeypatch.setattr(emu, "roi_forward", lambda *a: roi_used.append(1))
    out = ops_roi.roi_align(feat, rois, 2, spatial_scale=0.5, sampling_ratio=2)
    assert out.dtype == dtype and not roi_used, "a 16-bit RoI input was sent to the float-only RoI kernels"
    torch.testing.assert_close(out.double(), want_roi, rtol=2e-2, atol=2e-2)


def test_sanitizer_driver_runs_on_the_emulated_kernels(repo):
    """benchmarks/sanitize_cuda.sh's Python driver (every kernel, every dtype, edge cases) only runs on a GPU;
    run it here on the emulated backend so the script cannot rot between GPU sessions."""
    script = (repo / "benchmarks" / "sanitize_cuda.sh").read_text()
    driver = script.split("<<'PY'\n", 1)[1].split("\nPY\n", 1)[0]
    assert "CupyKernels(dev, **variant)" in driver and 'torch.device("cuda")' in driver
    driver = (driver.replace("from dcn_lessons.cuda.backend import CupyKernels",
                             "from dcn_lessons.cuda.backend import EmulatedKernels")
              .replace("CupyKernels(dev, **variant)", "EmulatedKernels(**variant)")
              .replace('torch.device("cuda")', 'torch.device("cpu")')
              .replace("torch.cuda.synchronize()", "pass"))
    namespace: dict = {}
    exec(compile(driver, "sanitize_driver", "exec"), namespace)  # noqa: S102
    assert namespace["k"].backward == "fused"  # it went through both variants


def test_build_and_definition_the_lesson_helpers():
    """dcuda.build (lesson 06's launcher: GPU when usable, else the emulator) and dcuda.definition (one
    definition of kernels/ as text)."""
    ok, why = dcuda.gpu_status()
    if not ok:
        assert why  # says why not
    kernels = {"scale": ["const float*", "float*", "float", "int"]}
    for where in (("emulator", "auto") if not ok else ("emulator", "auto", "gpu")):
        scale = dcuda.build(_TOY, kernels, where=where)["scale"]
        x, y = np.arange(40, dtype=np.float32), np.zeros(40, np.float32)
        scale((2,), (32,), (x, y, 0.5, 40))
        np.testing.assert_array_equal(y, 0.5 * x)
    with pytest.raises(ValueError, match='where: expected "auto", "gpu" or "emulator"'):
        dcuda.build(_TOY, kernels, where="cpu")
    macro = dcuda.definition("dcn_common.cuh", "DCN_GRID_STRIDE_LOOP")
    assert macro.startswith("// Grid-stride") and macro.rstrip().endswith("gridDim.x)")
    assert dcuda.definition("dcn_common.cuh", "dcn_index_t").endswith("typedef long long dcn_index_t;")
    fn = dcuda.definition("deform_conv.cu", "deform_col2im_kernel")
    assert fn.splitlines()[0].startswith("// col2im") and "template <typename T>" in fn and fn.endswith("}")
    assert fn.count("{") == fn.count("}") and "deform_col2im_coord_kernel" not in fn
    with pytest.raises(ValueError, match="no definition of 'nope' found in kernels/deform_conv.cu"):
        dcuda.definition("deform_conv.cu", "nope")


def test_atomic_backwards_follow_use_deterministic_algorithms(plain, monkeypatch):
    """On a GPU the atomicAdd backwards are not bit-reproducible: under torch.use_deterministic_algorithms(True)
    they raise (warn with warn_only=True), as PyTorch's own such ops do. The emulator's order is fixed."""
    torch.manual_seed(17)
    x = torch.randn(1, 2, 4, 4, dtype=torch.float64)
    off = torch.randn(1, 18, 4, 4, dtype=torch.float64)
    g = torch.randn(1, 18, 16, dtype=torch.float64)
    feat = torch.randn(1, 2, 5, 5, dtype=torch.float64)
    rois = torch.tensor([[0, 0.5, 0.5, 3.0, 3.0]], dtype=torch.float64)
    go = torch.randn(1, 2, 2, 2, dtype=torch.float64)
    calls = {
        "deform_col2im": lambda: plain.deform_col2im(g, off, None, x.shape, 3, 1, 1, 1),
        "deform_col2im_fused": lambda: plain.deform_col2im_fused(g, x, off, None, 3, 1, 1, 1),
        "roi_align backward": lambda: plain.roi_backward("roi_align", go, feat, rois, None, None, 2, 1.0, 2, 0.1),
    }
    was = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    try:
        torch.use_deterministic_algorithms(True)
        for call in calls.values():
            call()  # the emulator is deterministic: allowed
        monkeypatch.setattr(plain, "ordered_atomics", False)  # as on a GPU
        for name, call in calls.items():
            with pytest.raises(RuntimeError, match="atomicAdd.*use_deterministic_algorithms"):
                call()
        plain.deform_col2im_coord(g, x, off, None, 3, 1, 1, 1)  # one writer per output: no atomics, allowed
        torch.use_deterministic_algorithms(True, warn_only=True)
        with pytest.warns(UserWarning, match="warn_only=True"):
            calls["deform_col2im"]()
        torch.use_deterministic_algorithms(False)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            calls["deform_col2im"]()
    finally:
        torch.use_deterministic_algorithms(was[0], warn_only=was[1])
