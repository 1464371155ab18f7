"""Test material shared by the emulated and the GPU runs of the 16-bit kernels (imported by both test files)."""
from __future__ import annotations

import numpy as np
import torch

#: Half a unit in the last place, relative: the most one round-to-nearest-even to that format can move a value.
HALF_ULP = {torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8}

#: Two kernels that store float32 values as float16/bfloat16 with dcn_store and read them back with dcn_load;
#: compiled after kernels/dcn_common.cuh.
CONVERT_SOURCE = r"""
__global__ void to_half(const float* x, dcn_half* out, float* back, long long n) {
  DCN_GRID_STRIDE_LOOP(i, n) { dcn_store(out + i, x[i]); back[i] = dcn_load(out + i); }
}
__global__ void to_bfloat16(const float* x, dcn_bfloat16* out, float* back, long long n) {
  DCN_GRID_STRIDE_LOOP(i, n) { dcn_store(out + i, x[i]); back[i] = dcn_load(out + i); }
}
"""


def conversion_inputs() -> np.ndarray:
    """float32 values that exercise rounding: random bit patterns (every exponent, NaNs, subnormals), exact ties
    of both formats, the float16 overflow edge (65504 / 65520), subnormal edges, infinities, NaN, normals."""
    rng = np.random.default_rng(5)
    bits = rng.integers(0, 2**32, size=20000, dtype=np.uint64).astype(np.uint32)
    special = np.array([0.0, -0.0, 1.0, 1 + 2.0**-11, 1 + 3 * 2.0**-11, 1 + 2.0**-8, 1 + 3 * 2.0**-8, 65504.0,
                        65520.0, 6e-8, 3e-8, 2.0**-25, -2.0**-24, 1e-40, 3.4e38, np.inf, -np.inf, np.nan],
                       dtype=np.float32)
    return np.concatenate([bits.view(np.float32), special, rng.standard_normal(5000).astype(np.float32)])


def check_conversion(name: str, x: np.ndarray, out: torch.Tensor, back: np.ndarray) -> None:
    """``out`` (the 16-bit stores of ``x``) equals torch's rounding bit for bit, NaN for NaN; ``back`` (their
    loads) equals torch's widening exactly."""
    want = torch.from_numpy(x).to(out.dtype)
    nan = torch.isnan(want)
    assert torch.equal(torch.isnan(out), nan), f"{name}: NaNs differ"
    assert torch.equal(out[~nan].view(torch.int16), want[~nan].view(torch.int16)), f"{name}: bits differ"
    np.testing.assert_array_equal(back[~nan.numpy()], want[~nan].float().numpy(), err_msg=name)


def check_rounded_once(name: str, got: torch.Tensor, want: np.ndarray, dtype: torch.dtype) -> None:
    """``got`` (16-bit) is the exact ``want`` (float64) rounded once to ``dtype``, up to float32 arithmetic:
    |got - want| <= u/2 |want| (+ float32-sized slack). Accumulating in 16 bits would round at every step and
    fail it."""
    assert got.dtype == dtype, f"{name}: stored as {got.dtype}, expected {dtype}"
    err = np.abs(got.detach().double().cpu().numpy() - want)
    bound = HALF_ULP[dtype] * np.abs(want) * (1 + 1e-3) + 1e-5 * (np.abs(want).max() + 1)
    assert np.all(err <= bound), f"{name}: worst error {err.max():.3g} exceeds one 16-bit rounding"
