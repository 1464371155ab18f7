"""NumPy reference of bilinear sampling, DCNv1 Eq. (3)-(4): four-neighbour form vs the literal sum,
backward vs central finite differences, and the torchvision/mmcv position-gradient rule."""
import numpy as np
import pytest

from dcn_lessons.reference.bilinear import (
    bilinear_sample,
    bilinear_sample_backward,
    bilinear_sample_literal,
    bilinear_weights,
    g,
)

H, W, C = 4, 5, 3


@pytest.fixture
def x():
    return np.random.default_rng(0).standard_normal((C, H, W))


def _border_points():
    ys = np.array([0.0, H - 1, -1.0, H, -0.5, H - 0.5, -1e3, 1e3, 1.0, 2.5, -0.999, H - 0.001])
    xs = np.array([0.0, W - 1, -1.0, W, -0.5, W - 0.5, -1e3, 1e3, 3.0, 1.25, -0.999, W - 0.001])
    py, px = np.meshgrid(ys, xs, indexing="ij")
    return py, px


def test_g_is_eq4():
    assert g(2.0, 2.0) == 1.0
    assert g(2.0, 2.25) == 0.75
    assert g(0.0, 1.0) == 0.0
    assert g(0.0, -3.0) == 0.0
    np.testing.assert_array_equal(g(np.array([0, 1, 2]), 1.5), [0.0, 0.5, 0.5])


def test_weights_sum_to_one_and_match_g():
    rng = np.random.default_rng(1)
    py, px = rng.uniform(-3, 8, (2, 50))
    b = bilinear_weights(py, px)
    np.testing.assert_allclose(b.w00 + b.w01 + b.w10 + b.w11, 1.0, atol=1e-14)
    np.testing.assert_allclose(b.w01, g(b.y0, py) * g(b.x1, px), atol=1e-14)
    np.testing.assert_allclose(b.w10, g(b.y1, py) * g(b.x0, px), atol=1e-14)
    assert np.all(b.y1 == b.y0 + 1) and np.all(b.x0 == np.floor(px))


def test_literal_at_integers_reads_the_map(x):
    py, px = np.meshgrid(np.arange(H, dtype=float), np.arange(W, dtype=float), indexing="ij")
    np.testing.assert_allclose(bilinear_sample_literal(x, py, px), x, atol=1e-15)


def test_four_neighbour_equals_literal_random_and_integers(x):
    rng = np.random.default_rng(2)
    py = rng.uniform(-2, H + 1, (6, 7))
    px = rng.uniform(-2, W + 1, (6, 7))
    py[0] = np.round(py[0])  # exact integers, in and out of the map
    px[:, 0] = np.round(px[:, 0])
    np.testing.assert_allclose(bilinear_sample(x, py, px), bilinear_sample_literal(x, py, px), rtol=0, atol=1e-12)
    # 2-D input and 0-d / 1-d sample shapes
    np.testing.assert_allclose(bilinear_sample(x[0], py[1], px[1]), bilinear_sample_literal(x[0], py[1], px[1]),
                               rtol=0, atol=1e-12)
    assert bilinear_sample(x[0], np.float64(1.5), np.float64(2.5)).shape == ()
    assert bilinear_sample(x, py, px).shape == (C, 6, 7)


def test_four_neighbour_equals_literal_on_border_and_outside(x):
    py, px = _border_points()
    fast, lit = bilinear_sample(x, py, px), bilinear_sample_literal(x, py, px)
    np.testing.assert_allclose(fast, lit, rtol=0, atol=1e-12)
    out = (py <= -1) | (py >= H) | (px <= -1) | (px >= W)
    assert out.any() and np.all(fast[:, out] == 0) and np.all(lit[:, out] == 0)
    # half a pixel outside reads half the border pixel
    np.testing.assert_allclose(bilinear_sample(x, np.array(-0.5), np.array(2.0)), 0.5 * x[:, 0, 2], atol=1e-15)
    np.testing.assert_allclose(bilinear_sample(x, np.array(1.0), np.array(W - 0.5)), 0.5 * x[:, 1, W - 1],
                               atol=1e-15)


def _fd(f, a, eps=1e-6):
    grad = np.zeros_like(a)
    for idx in np.ndindex(a.shape):
        old = a[idx]
        a[idx] = old + eps
        fp = f()
        a[idx] = old - eps
        fm = f()
        a[idx] = old
        grad[idx] = (fp - fm) / (2 * eps)
    return grad


def test_backward_matches_finite_differences_away_from_integers(x):
    rng = np.random.default_rng(3)
    # fractional parts in [0.2, 0.8]: no kink within eps; positions cover inside, border band and outside
    py = rng.integers(-2, H + 1, (3, 4)) + rng.uniform(0.2, 0.8, (3, 4))
    px = rng.integers(-2, W + 1, (3, 4)) + rng.uniform(0.2, 0.8, (3, 4))
    go = rng.standard_normal((C, 3, 4))
    gi, gy, gx = bilinear_sample_backward(go, x, py, px)

    def loss():
        return np.sum(go * bilinear_sample(x, py, px))

    np.testing.assert_allclose(gi, _fd(loss, x), atol=1e-8)
    np.testing.assert_allclose(gy, _fd(loss, py), atol=1e-8)
    np.testing.assert_allclose(gx, _fd(loss, px), atol=1e-8)
    assert np.abs(gy).max() > 0.1 and np.abs(gi).max() > 0.1


def test_grad_input_exact_at_integers_and_border(x):
    """Eq. (3) is linear in x: grad_input is exact everywhere (FD of a linear function), border included."""
    py, px = _border_points()
    go = np.random.default_rng(4).standard_normal((C,) + py.shape)
    gi, _, _ = bilinear_sample_backward(go, x, py, px)
    np.testing.assert_allclose(gi, _fd(lambda: np.sum(go * bilinear_sample(x, py, px)), x), atol=1e-8)


def test_position_rule_forward_difference_at_integers(x):
    """At integer coordinates the gradient is x(q+1) - x(q) (floor held fixed); a missing corner reads 0."""
    x2 = x[0]
    for qy in range(H):
        for qx in range(W):
            _, gy, gx = bilinear_sample_backward(np.array(1.0), x2, np.array(float(qy)), np.array(float(qx)))
            below = x2[qy + 1, qx] if qy + 1 < H else 0.0
            right = x2[qy, qx + 1] if qx + 1 < W else 0.0
            assert gy == pytest.approx(below - x2[qy, qx], abs=1e-14)
            assert gx == pytest.approx(right - x2[qy, qx], abs=1e-14)
    # one-sided check: it is the right derivative (inside the map)
    py, px = np.array([1.0, 2.0]), np.array([3.0, 0.0])
    _, gy, _ = bilinear_sample_backward(np.ones(2), x2, py, px)
    h = 1e-7
    right = (bilinear_sample(x2, py + h, px) - bilinear_sample(x2, py, px)) / h
    np.testing.assert_allclose(gy, right, atol=1e-6)


def test_position_rule_outside_is_zero(x):
    """Outside -1 < y < H, -1 < x < W: value and position gradient are 0 (including exactly y = -1, x = -1)."""
    py = np.array([-1.0, -1.0, H, 2.0, 2.0, -1e3, 1e3, -1.2])
    px = np.array([2.0, 2.5, 1.0, -1.0, W, 1.0, 1.0, 0.5])
    go = np.ones((C,) + py.shape)
    _, gy, gx = bilinear_sample_backward(go, x, py, px)
    np.testing.assert_array_equal(gy, 0.0)
    np.testing.assert_array_equal(gx, 0.0)
    np.testing.assert_array_equal(bilinear_sample(x, py, px), 0.0)
    # just inside at -1 + tiny: not zero (gradient x(0) - 0 towards the map)
    _, gy, _ = bilinear_sample_backward(np.array(1.0), x[0], np.array(-0.75), np.array(2.0))
    assert gy == pytest.approx(x[0, 0, 2], abs=1e-14)


def test_bad_input_messages(x):
    with pytest.raises(ValueError, match="px"):
        bilinear_sample(x, np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError, match="input"):
        bilinear_sample(np.zeros((1, 2, 3, 4)), np.zeros(3), np.zeros(3))
    with pytest.raises(TypeError, match="input"):
        bilinear_sample(np.zeros((3, 3), dtype=np.int64), np.zeros(3), np.zeros(3))
    with pytest.raises(ValueError, match="py"):
        bilinear_sample_literal(x, np.array([np.nan]), np.zeros(1))
    with pytest.raises(ValueError, match="grad_output"):
        bilinear_sample_backward(np.zeros((C, 2)), x, np.zeros(3), np.zeros(3))


def test_huge_positions_read_zero_without_overflow(x):
    """Far outside (beyond int64 after floor): value 0, gradients 0, no cast warning (values stay finite)."""
    py = np.array([1e30, -1e30, 2.0, 2.0, 1e300, -3e18])
    px = np.array([1.0, 1.0, 1e30, -1e300, -1e300, 2.5])
    with np.errstate(all="raise"):
        fast = bilinear_sample(x, py, px)
        lit = bilinear_sample_literal(x, py, px)
        gi, gy, gx = bilinear_sample_backward(np.ones((C,) + py.shape), x, py, px)
    np.testing.assert_array_equal(fast, 0.0)
    np.testing.assert_array_equal(lit, 0.0)
    np.testing.assert_array_equal(gi, 0.0)
    np.testing.assert_array_equal(gy, 0.0)
    np.testing.assert_array_equal(gx, 0.0)


def test_gradient_along_the_smooth_axis_at_an_integer_coordinate(x):
    """With y exactly on an integer (a kink in y) and x fractional, d/dx exists: grad_px must equal the central
    difference in x (and symmetrically for grad_py); border rows/columns and the bands (-1, 0), (H-1, H)
    included."""
    rng = np.random.default_rng(5)
    ys_int = np.array([-0.0, 0.0, 1.0, H - 1.0, 2.0, 3.0])
    xs_frac = np.array([0.3, -0.6, 2.7, W - 0.4, W - 1.2, 1.55])
    go = rng.standard_normal((C, ys_int.size))

    def loss():
        return np.sum(go * bilinear_sample(x, py, px))

    py, px = ys_int.copy(), xs_frac.copy()
    _, _, gx = bilinear_sample_backward(go, x, py, px)
    np.testing.assert_allclose(gx, _fd(loss, px), atol=1e-8)
    assert np.abs(gx).max() > 0.1
    xs_int = np.array([0.0, 1.0, W - 1.0, 2.0, 3.0, 4.0])
    ys_frac = np.array([0.4, -0.7, H - 0.3, 1.6, H - 1.5, 2.25])
    py, px = ys_frac.copy(), xs_int.copy()
    _, gy, _ = bilinear_sample_backward(go, x, py, px)
    np.testing.assert_allclose(gy, _fd(loss, py), atol=1e-8)
    assert np.abs(gy).max() > 0.1


def test_position_gradient_is_the_right_derivative_at_every_integer_and_border(x):
    """On every integer coordinate -1 < q < H (and x), border rows included, the rule's gradient is the
    one-sided derivative from the right, measured on the forward; at q = -1 it is 0 by the rule."""
    qy, qx = np.meshgrid(np.arange(-1.0, H), np.arange(-1.0, W), indexing="ij")
    py, px = qy.ravel(), qx.ravel()
    go = np.random.default_rng(6).standard_normal((C, py.size))
    _, gy, gx = bilinear_sample_backward(go, x, py, px)
    h = 1e-7
    base = np.sum(go * bilinear_sample(x, py, px), axis=0)
    right_y = (np.sum(go * bilinear_sample(x, py + h, px), axis=0) - base) / h
    right_x = (np.sum(go * bilinear_sample(x, py, px + h), axis=0) - base) / h
    inside = (py > -1) & (px > -1)
    np.testing.assert_allclose(gy[inside], right_y[inside], atol=1e-5)
    np.testing.assert_allclose(gx[inside], right_x[inside], atol=1e-5)
    np.testing.assert_array_equal(gy[~inside], 0.0)
    np.testing.assert_array_equal(gx[~inside], 0.0)
