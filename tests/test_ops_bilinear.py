"""dcn_lessons.ops.bilinear_sample (DCNv1 Eq. 3-4) against the NumPy reference and central differences."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from dcn_lessons.ops import bilinear_sample
from dcn_lessons.reference import bilinear as R


def _positions(shape, h, w, seed, integers=False):
    g = np.random.default_rng(seed)
    py = g.uniform(-2.5, h + 1.5, shape)
    px = g.uniform(-2.5, w + 1.5, shape)
    if integers:  # on the grid, on the -1 / H border, and far outside
        py = np.round(py)
        px = np.round(px)
        py.flat[:4] = [-1.0, float(h), 0.0, 1e3]
        px.flat[:4] = [0.0, -1.0, float(w), -1e3]
    return py, px


@pytest.mark.parametrize("channels", [None, 3])
@pytest.mark.parametrize("integers", [False, True], ids=["fractional", "integers_border_outside"])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)], ids=["f64", "f32"])
def test_forward_and_backward_agree_with_the_reference(channels, integers, dtype, tol):
    h, w = 5, 6
    g = np.random.default_rng(1)
    x = g.normal(size=(h, w) if channels is None else (channels, h, w))
    py, px = _positions((4, 7), h, w, seed=2, integers=integers)
    go = g.normal(size=(4, 7) if channels is None else (channels, 4, 7))
    ts = [torch.tensor(a, dtype=dtype, requires_grad=True) for a in (x, py, px)]
    out = bilinear_sample(*ts)
    out.backward(torch.tensor(go, dtype=dtype))
    np.testing.assert_allclose(out.detach().double().numpy(), R.bilinear_sample(x, py, px), atol=tol)
    want = R.bilinear_sample_backward(go, x, py, px)
    for t, r in zip(ts, want):
        np.testing.assert_allclose(t.grad.double().numpy(), r, atol=tol * 10)


def test_gradcheck_away_from_integers():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 5, dtype=torch.float64, generator=g, requires_grad=True)
    base = torch.randint(-1, 4, (6,), generator=g).double()
    py = (base + 0.2 + 0.6 * torch.rand(6, dtype=torch.float64, generator=g)).requires_grad_()
    px = (torch.randint(-1, 5, (6,), generator=g).double() + 0.3).requires_grad_()
    assert torch.autograd.gradcheck(bilinear_sample, (x, py, px))


def test_position_gradient_is_the_forward_difference_at_an_integer():
    x = torch.tensor([[0.0, 1.0, 4.0], [2.0, 3.0, 9.0]], dtype=torch.float64)
    py = torch.tensor([0.0], dtype=torch.float64, requires_grad=True)
    px = torch.tensor([1.0], dtype=torch.float64, requires_grad=True)
    bilinear_sample(x, py, px).sum().backward()
    assert py.grad.item() == pytest.approx(3.0 - 1.0)  # x(1, 1) - x(0, 1)
    assert px.grad.item() == pytest.approx(4.0 - 1.0)  # x(0, 2) - x(0, 1)


@pytest.mark.parametrize("args, exc, word", [
    ((torch.zeros(1, 1, 3, 3), torch.zeros(2), torch.zeros(2)), ValueError, "input"),
    ((torch.zeros(3, 3), torch.zeros(2), torch.zeros(3)), ValueError, "px"),
    ((torch.zeros(3, 3), torch.tensor([float("nan")]), torch.zeros(1)), ValueError, "py, px: expected finite"),
    ((torch.zeros(3, 3), torch.zeros(2, dtype=torch.float64), torch.zeros(2)), TypeError, "py"),
    ((torch.zeros(3, 3, dtype=torch.int64), torch.zeros(2), torch.zeros(2)), TypeError, "input"),
    ((np.zeros((3, 3)), torch.zeros(2), torch.zeros(2)), TypeError, "input"),
])
def test_bad_input_names_the_argument(args, exc, word):
    with pytest.raises(exc, match=word):
        bilinear_sample(*args)


def test_same_signature_as_the_numpy_tier():
    import inspect

    def params(f):
        return [(p.name, p.default) for p in inspect.signature(f).parameters.values()]

    assert params(bilinear_sample) == params(R.bilinear_sample)
    assert params(R.bilinear_sample_backward) == [("grad_output", inspect.Parameter.empty)] + params(R.bilinear_sample)
