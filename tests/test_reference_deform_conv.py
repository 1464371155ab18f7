"""NumPy reference of deformable convolution, DCNv1 Eq. (1)-(2) and DCNv2 Eq. (1): im2col vs the literal
loop, special offsets vs a brute-force plain convolution, backward vs central finite differences, bad input."""
import numpy as np
import pytest

from dcn_lessons._validate.conv import check_deform_conv2d_args
from dcn_lessons.reference.deform_conv import (
    deform_col2im,
    deform_col2im_coord,
    deform_conv2d,
    deform_conv2d_backward,
    deform_conv2d_loop,
    deform_im2col,
    deform_sampling_positions,
)


def _pair(v):
    return (v, v) if isinstance(v, int) else v


def _out(size, k, s, p, d):
    return (size + 2 * p - (d * (k - 1) + 1)) // s + 1


def conv2d_ref(x, w, b=None, stride=1, padding=0, dilation=1, out_size=None):
    """Plain convolution by brute force: reads x at integer positions y*s - p + i*d, zero outside.

    padding may be negative (a shift); out_size overrides the usual output size."""
    (sh, sw), (ph, pw), (dh, dw) = _pair(stride), _pair(padding), _pair(dilation)
    N, C, H, W = x.shape
    O, Cg, kh, kw = w.shape
    groups = C // Cg
    Ho, Wo = out_size or (_out(H, kh, sh, ph, dh), _out(W, kw, sw, pw, dw))
    out = np.zeros((N, O, Ho, Wo))
    for n in range(N):
        for o in range(O):
            grp = o // (O // groups)
            for y in range(Ho):
                for xo in range(Wo):
                    acc = 0.0 if b is None else b[o]
                    for c in range(Cg):
                        for i in range(kh):
                            for j in range(kw):
                                u, v = y * sh - ph + i * dh, xo * sw - pw + j * dw
                                if 0 <= u < H and 0 <= v < W:
                                    acc += w[o, c, i, j] * x[n, grp * Cg + c, u, v]
                    out[n, o, y, xo] = acc
    return out


def make(rng, N=2, C=4, H=5, W=6, O=4, k=(3, 2), groups=2, G=2, stride=1, padding=1, dilation=1,
         mask=True, bias=True, offset="random"):
    kh, kw = k
    (sh, sw), (ph, pw), (dh, dw) = _pair(stride), _pair(padding), _pair(dilation)
    Ho, Wo = _out(H, kh, sh, ph, dh), _out(W, kw, sw, pw, dw)
    x = rng.standard_normal((N, C, H, W))
    w = rng.standard_normal((O, C // groups, kh, kw))
    b = rng.standard_normal(O) if bias else None
    shape = (N, 2 * G * kh * kw, Ho, Wo)
    if offset == "random":
        off = rng.uniform(-2.5, 2.5, shape)
    else:  # away from integers: integer + [0.3, 0.7]
        off = rng.integers(-2, 3, shape) + 0.3 + 0.4 * rng.random(shape)
    m = rng.uniform(0, 1, (N, G * kh * kw, Ho, Wo)) if mask else None
    return dict(input=x, offset=off, weight=w, bias=b, stride=stride, padding=padding, dilation=dilation, mask=m)


CASES = [
    dict(),
    dict(N=1, mask=False, bias=False),
    dict(N=3, stride=2, mask=False),
    dict(dilation=2, padding=2, G=1, groups=1),
    dict(stride=(2, 1), padding=(1, 0), dilation=(1, 2), G=4, groups=4, O=8),
    dict(k=(3, 3), C=2, groups=1, G=1, O=3, H=4, W=4),
]


@pytest.mark.parametrize("case", CASES)
def test_im2col_equals_loop(case):
    a = make(np.random.default_rng(10), **case)
    fast = deform_conv2d(**a)
    loop = deform_conv2d_loop(**a)
    np.testing.assert_allclose(fast, loop, rtol=0, atol=1e-12)
    assert np.abs(fast).max() > 0.1


def test_columns_contract():
    a = make(np.random.default_rng(11))
    cols = deform_im2col(a["input"], a["offset"], a["mask"], (3, 2), a["stride"], a["padding"], a["dilation"])
    N, C, O = 2, 4, 4
    assert cols.shape == (N, C * 6, 5 * 7)
    w = a["weight"].reshape(2, O // 2, -1)
    out = np.stack([np.concatenate([w[gr] @ cols[n, gr * 12:(gr + 1) * 12] for gr in range(2)]) for n in range(N)])
    np.testing.assert_allclose(out.reshape(N, O, 5, 7) + a["bias"][None, :, None, None], deform_conv2d(**a),
                               atol=1e-12)
    py, px = deform_sampling_positions(a["offset"], (3, 2), 1, 1, 1)
    assert py.shape == (N, 2, 6, 5, 7)
    # kernel point k = 1 -> (i, j) = (0, 1) of output (2, 3): (2 - 1 + 0 + dy, 3 - 1 + 1 + dx), group 1
    np.testing.assert_allclose(py[1, 1, 1, 2, 3], 1 + a["offset"][1, 12 + 2, 2, 3])
    np.testing.assert_allclose(px[1, 1, 1, 2, 3], 3 + a["offset"][1, 12 + 3, 2, 3])


@pytest.mark.parametrize("case", [dict(), dict(stride=2, dilation=(2, 1), padding=(2, 1), G=1, mask=False)])
def test_zero_offsets_equal_plain_conv(case):
    a = make(np.random.default_rng(12), **case)
    a["offset"] = np.zeros_like(a["offset"])
    a["mask"] = None
    ref = conv2d_ref(a["input"], a["weight"], a["bias"], a["stride"], a["padding"], a["dilation"])
    np.testing.assert_allclose(deform_conv2d(**a), ref, atol=1e-12)


def test_integer_offsets_equal_shifted_plain_conv():
    a = make(np.random.default_rng(13), mask=False, stride=2)
    dy, dx = 2, -1
    off = a["offset"].reshape(2, -1, 2, *a["offset"].shape[2:])
    off[:, :, 0], off[:, :, 1] = dy, dx
    a["offset"] = off.reshape(a["offset"].shape)
    Ho, Wo = a["offset"].shape[2:]
    # shifting every sample by (dy, dx) = a plain conv whose padding is reduced by the shift
    ref = conv2d_ref(a["input"], a["weight"], a["bias"], 2, (1 - dy, 1 - dx), 1, out_size=(Ho, Wo))
    np.testing.assert_allclose(deform_conv2d(**a), ref, atol=1e-12)


def test_constant_offsets_make_a_dilated_conv():
    """Kernel point (i, j) moved by ((D-1) i, (D-1) j) samples where a dilation-D kernel would (v1 Fig. 1(d))."""
    D = 2
    a = make(np.random.default_rng(14), k=(3, 3), mask=False, H=7, W=6, G=1)
    i, j = np.divmod(np.arange(9), 3)
    off = np.zeros((2, 9, 2) + a["offset"].shape[2:])
    off[:, :, 0] = ((D - 1) * i)[None, :, None, None]
    off[:, :, 1] = ((D - 1) * j)[None, :, None, None]
    a["offset"] = off.reshape(a["offset"].shape)
    Ho, Wo = a["offset"].shape[2:]
    ref = conv2d_ref(a["input"], a["weight"], a["bias"], 1, 1, D, out_size=(Ho, Wo))
    np.testing.assert_allclose(deform_conv2d(**a), ref, atol=1e-12)


def test_mask_of_ones_is_v1_and_mask_scales():
    a = make(np.random.default_rng(15), bias=False)
    v2 = deform_conv2d(**{**a, "mask": np.ones_like(a["mask"])})
    v1 = deform_conv2d(**{**a, "mask": None})
    np.testing.assert_allclose(v2, v1, atol=1e-12)
    np.testing.assert_allclose(deform_conv2d(**{**a, "mask": np.full_like(a["mask"], 0.5)}), 0.5 * v1, atol=1e-12)


def _fd(f, arr, eps=1e-6):
    grad = np.zeros_like(arr)
    for idx in np.ndindex(arr.shape):
        old = arr[idx]
        arr[idx] = old + eps
        fp = f()
        arr[idx] = old - eps
        fm = f()
        arr[idx] = old
        grad[idx] = (fp - fm) / (2 * eps)
    return grad


@pytest.mark.parametrize("case", [
    dict(N=1, H=4, W=4, stride=2),
    dict(N=2, C=2, O=2, groups=1, G=2, H=4, W=3, k=(2, 2), dilation=(1, 2), padding=(0, 1), mask=False),
])
def test_backward_matches_finite_differences(case):
    rng = np.random.default_rng(16)
    a = make(rng, offset="away", **case)
    R = rng.standard_normal(deform_conv2d(**a).shape)
    grads = deform_conv2d_backward(R, **a)

    def loss():
        return float(np.sum(R * deform_conv2d(**a)))

    for name in ("input", "offset", "weight", "bias", "mask"):
        got = getattr(grads, name)
        if a[name] is None:
            assert got is None
            continue
        assert got.shape == a[name].shape
        np.testing.assert_allclose(got, _fd(loss, a[name]), atol=1e-7, err_msg=name)
    assert np.abs(grads.offset).max() > 0.1


def test_offset_gradient_rule_at_zero_offsets():
    """Zero offsets (start of training): samples on integers; the rule gives the right derivative (padding 0,
    so every sample is in the map and none sits on -1)."""
    rng = np.random.default_rng(17)
    a = make(rng, N=1, H=4, W=4, padding=0, mask=True, bias=False)
    a["offset"] = np.zeros_like(a["offset"])
    R = rng.standard_normal(deform_conv2d(**a).shape)
    got = deform_conv2d_backward(R, **a).offset
    h = 1e-7
    base = np.sum(R * deform_conv2d(**a))
    right = np.zeros_like(got)
    for idx in np.ndindex(got.shape):
        a["offset"][idx] = h
        right[idx] = (np.sum(R * deform_conv2d(**a)) - base) / h
        a["offset"][idx] = 0.0
    np.testing.assert_allclose(got, right, atol=1e-6)


def test_offset_gradient_zero_outside():
    """Every sample pushed below y = -1: output is bias only and offset gradient is exactly 0."""
    rng = np.random.default_rng(18)
    a = make(rng, N=1, H=4, W=4)
    a["offset"][:, 0::2] = -10.0
    out = deform_conv2d(**a)
    np.testing.assert_allclose(out, np.broadcast_to(a["bias"][None, :, None, None], out.shape), atol=0)
    g = deform_conv2d_backward(np.ones_like(out), **a)
    assert np.all(g.offset == 0) and np.all(g.input == 0) and np.all(g.mask == 0)


def test_col2im_helpers_match_backward():
    rng = np.random.default_rng(19)
    a = make(rng, offset="away")
    R = rng.standard_normal(deform_conv2d(**a).shape)
    grads = deform_conv2d_backward(R, **a)
    # grad of the columns for a single weight group built by hand
    w = a["weight"].reshape(2, 2, -1)
    Rg = R.reshape(2, 2, 2, -1)
    gcols = np.concatenate([np.einsum("oc,nol->ncl", w[gr], Rg[:, gr]) for gr in range(2)], axis=1)
    args = ((3, 2), a["stride"], a["padding"], a["dilation"])
    np.testing.assert_allclose(deform_col2im(gcols, a["offset"], a["mask"], a["input"].shape, *args), grads.input,
                               atol=1e-12)
    go, gm = deform_col2im_coord(gcols, a["input"], a["offset"], a["mask"], *args)
    np.testing.assert_allclose(go, grads.offset, atol=1e-12)
    np.testing.assert_allclose(gm, grads.mask, atol=1e-12)


def _base(rng):
    return make(rng, N=2, C=4, H=5, W=5, O=4, k=(3, 3), groups=2, G=2, padding=0)  # Ho = Wo = 3


@pytest.mark.parametrize("change, exc, words", [
    (dict(input=np.zeros((4, 5, 5))), ValueError, ["input", "4-D"]),
    (dict(weight=np.zeros((4, 2, 3))), ValueError, ["weight", "4-D"]),
    (dict(offset=np.zeros((2, 36, 3))), ValueError, ["offset", "4-D"]),
    (dict(offset=np.zeros((2, 35, 3, 3))), ValueError, ["offset", "2*3*3 = 18", "35"]),
    (dict(offset=np.zeros((2, 36, 4, 3))), ValueError, ["offset", "[2, 36, 3, 3]", "Ho ="]),
    (dict(offset=np.zeros((1, 36, 3, 3))), ValueError, ["offset", "[2, 36, 3, 3]"]),
    (dict(weight=np.zeros((4, 3, 3, 3))), ValueError, ["weight", "C = 4"]),
    (dict(weight=np.zeros((3, 2, 3, 3))), ValueError, ["weight", "groups"]),
    (dict(offset=np.zeros((2, 54, 3, 3)), mask=np.zeros((2, 27, 3, 3))), ValueError, ["offset_groups", "3"]),
    (dict(mask=np.zeros((2, 17, 3, 3))), ValueError, ["mask", "[2, 18, 3, 3]"]),
    (dict(mask=np.zeros((2, 18, 2, 3))), ValueError, ["mask", "[2, 18, 3, 3]"]),
    (dict(bias=np.zeros(3)), ValueError, ["bias", "[4]"]),
    (dict(stride=0), ValueError, ["stride"]),
    (dict(dilation=(1, 0)), ValueError, ["dilation"]),
    (dict(padding=-1), ValueError, ["padding"]),
    (dict(stride=1.5), TypeError, ["stride"]),
    (dict(weight=np.zeros((4, 2, 6, 6))), ValueError, ["input", "empty", "Ho ="]),
    (dict(input=np.zeros((2, 4, 5, 5), dtype=np.int32)), TypeError, ["input", "int32"]),
    (dict(mask=np.zeros((2, 18, 3, 3), dtype=bool)), TypeError, ["mask"]),
])
def test_bad_input_names_the_argument(change, exc, words):
    a = {**_base(np.random.default_rng(20)), **change}
    with pytest.raises(exc) as info:
        deform_conv2d(**a)
    for word in words:
        assert word in str(info.value), (word, str(info.value))


def test_non_finite_offset_and_mask():
    a = _base(np.random.default_rng(21))
    off = a["offset"].copy()
    off[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="offset: expected finite"):
        deform_conv2d(**{**a, "offset": off})
    m = a["mask"].copy()
    m[1, 2, 0, 0] = np.inf
    with pytest.raises(ValueError, match="mask: expected finite"):
        deform_conv2d_loop(**{**a, "mask": m})
    with pytest.raises(ValueError, match="grad_output"):
        deform_conv2d_backward(np.zeros((2, 4, 3, 4)), **a)


def test_validator_reads_shapes_only():
    """The shared checker works on anything with .shape/.ndim (the torch tier passes tensors)."""

    class Shaped:
        def __init__(self, *shape):
            self.shape, self.ndim = shape, len(shape)

    geo = check_deform_conv2d_args(Shaped(2, 6, 9, 8), Shaped(2, 2 * 3 * 6, 5, 3), Shaped(6, 2, 3, 2), None,
                                   Shaped(2, 3 * 6, 5, 3), 2, (1, 0), (1, 2))
    assert (geo.N, geo.C, geo.H, geo.W, geo.O, geo.kh, geo.kw) == (2, 6, 9, 8, 6, 3, 2)
    assert (geo.groups, geo.offset_groups, geo.Ho, geo.Wo) == (3, 3, 5, 3)
    assert geo.stride == (2, 2) and geo.padding == (1, 0) and geo.dilation == (1, 2)


# ------------------------------------------------------------------- brute force on integers, border, far out
def _literal_sample(img, py, px):
    """DCNv1 Eq. (3) taken literally for one position: sum over every pixel q of g(qy, py) g(qx, px) x(q)."""
    H, W = img.shape
    gy = np.maximum(0.0, 1.0 - np.abs(np.arange(H) - py))
    gx = np.maximum(0.0, 1.0 - np.abs(np.arange(W) - px))
    return float(gy @ img @ gx)


def deform_conv2d_brute(x, off, w, b, stride, padding, dilation, m):
    """v2 Eq. (1) / v1 Eq. (2) from the conventions in the README, nothing shared with the package."""
    (sh, sw), (ph, pw), (dh, dw) = _pair(stride), _pair(padding), _pair(dilation)
    N, C, H, W = x.shape
    O, Cg, kh, kw = w.shape
    K = kh * kw
    G = off.shape[1] // (2 * K)
    Ho, Wo = off.shape[2:]
    out = np.zeros((N, O, Ho, Wo))
    for n in range(N):
        for o in range(O):
            grp = o // (O // (C // Cg))
            for yo in range(Ho):
                for xo in range(Wo):
                    acc = 0.0 if b is None else b[o]
                    for c in range(Cg):
                        ch = grp * Cg + c
                        g = ch // (C // G)
                        for i in range(kh):
                            for j in range(kw):
                                k = i * kw + j
                                py = yo * sh - ph + i * dh + off[n, g * 2 * K + 2 * k, yo, xo]
                                px = xo * sw - pw + j * dw + off[n, g * 2 * K + 2 * k + 1, yo, xo]
                                dm = 1.0 if m is None else m[n, g * K + k, yo, xo]
                                acc += w[o, c, i, j] * _literal_sample(x[n, ch], py, px) * dm
                    out[n, o, yo, xo] = acc
    return out


def _hard_offsets(rng, shape, H, W):
    """Offsets mixing exact integers (samples on integer coordinates, -1, 0, H-1, H included), half-integers at
    the border, far-outside values and random fractions."""
    choices = np.concatenate([
        np.arange(-3, 4, dtype=float),  # integers
        [-0.5, 0.5, -1.5, 1.5],  # half-way, at the border band for border outputs
        [-1e3, 1e3, -50.0, 37.0],  # far outside
    ])
    off = rng.choice(choices, size=shape)
    frac = rng.random(shape) < 0.25
    off[frac] = rng.uniform(-2.5, 2.5, int(frac.sum()))
    return off


@pytest.mark.parametrize("case", [
    dict(),
    dict(stride=(2, 1), padding=(1, 2), dilation=(2, 1), G=4, groups=1, O=3, mask=False),
    dict(k=(3, 3), C=2, groups=2, G=1, O=2, H=4, W=4, padding=2),
])
def test_forward_matches_literal_brute_force_on_integers_border_and_far_outside(case):
    rng = np.random.default_rng(30)
    a = make(rng, **case)
    H, W = a["input"].shape[2:]
    a["offset"] = _hard_offsets(rng, a["offset"].shape, H, W)
    py, px = deform_sampling_positions(a["offset"], a["weight"].shape[2:], a["stride"], a["padding"],
                                       a["dilation"])
    on_int = (py == np.round(py)) & (px == np.round(px))
    # the cases the issue names are really present: exact integers in the map, exactly on -1 / H, far out
    assert np.any(on_int & (py >= 0) & (py < H) & (px >= 0) & (px < W))
    assert np.any(on_int & ((py == -1) | (py == H) | (px == -1) | (px == W)))
    assert np.any((np.abs(py) > 30) | (np.abs(px) > 30))
    want = deform_conv2d_brute(a["input"], a["offset"], a["weight"], a["bias"], a["stride"], a["padding"],
                               a["dilation"], a["mask"])
    np.testing.assert_allclose(deform_conv2d(**a), want, rtol=0, atol=1e-12)
    np.testing.assert_allclose(deform_conv2d_loop(**a), want, rtol=0, atol=1e-12)
    assert np.abs(want).max() > 0.1


def test_im2col_columns_match_literal_samples():
    """Row c*K + k, column y*Wo + x of the columns is x_c(p + p_k + Δp_k)·Δm_k, read literally (Eq. 3)."""
    rng = np.random.default_rng(31)
    a = make(rng, N=1, C=2, H=4, W=5, k=(2, 2), G=2, groups=1, O=2, padding=1)
    a["offset"] = _hard_offsets(rng, a["offset"].shape, 4, 5)
    cols = deform_im2col(a["input"], a["offset"], a["mask"], (2, 2), 1, 1, 1)
    py, px = deform_sampling_positions(a["offset"], (2, 2), 1, 1, 1)
    Ho, Wo = a["offset"].shape[2:]
    for c in range(2):
        g = c  # C / G = 1 channel per offset group
        for k in range(4):
            for yo in range(Ho):
                for xo in range(Wo):
                    want = _literal_sample(a["input"][0, c], py[0, g, k, yo, xo], px[0, g, k, yo, xo])
                    want *= a["mask"][0, g * 4 + k, yo, xo]
                    assert cols[0, c * 4 + k, yo * Wo + xo] == pytest.approx(want, abs=1e-12)


def test_unit_mask_backward_equals_v1_backward():
    """v2 with every Δm = 1 is v1 (DCNv2 Eq. 1): same input, offset, weight and bias gradients; and the mask
    gradient is the finite difference of the loss at m = 1."""
    rng = np.random.default_rng(32)
    a = make(rng, offset="away")
    R = rng.standard_normal(deform_conv2d(**a).shape)
    ones = np.ones_like(a["mask"])
    v2 = deform_conv2d_backward(R, **{**a, "mask": ones})
    v1 = deform_conv2d_backward(R, **{**a, "mask": None})
    assert v1.mask is None
    for name in ("input", "offset", "weight", "bias"):
        np.testing.assert_allclose(getattr(v2, name), getattr(v1, name), atol=1e-12, err_msg=name)
    fd = _fd(lambda: float(np.sum(R * deform_conv2d(**{**a, "mask": ones}))), ones)
    np.testing.assert_allclose(v2.mask, fd, atol=1e-7)
    assert np.abs(v2.mask).max() > 0.1


def test_backward_fd_with_samples_in_the_border_band_and_outside():
    """Offsets put samples in (-1, 0), (H-1, H) and beyond the map (away from integers): the analytic
    gradients of offset and mask still equal central differences (the border band is not a kink)."""
    rng = np.random.default_rng(33)
    a = make(rng, N=1, C=2, H=3, W=3, O=2, k=(2, 2), groups=1, G=1, padding=1)
    shape = a["offset"].shape
    a["offset"] = rng.choice([-1.6, -1.4, 1.4, 1.6, 2.3, -2.3, 5.5], size=shape) + rng.uniform(-0.05, 0.05, shape)
    py, px = deform_sampling_positions(a["offset"], (2, 2), 1, 1, 1)
    assert np.any((py > -1) & (py < 0)) and np.any((py > 2) & (py < 3)) and np.any((py < -1) | (py > 3))
    R = rng.standard_normal(deform_conv2d(**a).shape)
    g = deform_conv2d_backward(R, **a)

    def loss():
        return float(np.sum(R * deform_conv2d(**a)))

    for name in ("input", "offset", "mask"):
        np.testing.assert_allclose(getattr(g, name), _fd(loss, a[name]), atol=1e-7, err_msg=name)
    assert np.abs(g.offset).max() > 0.1


@pytest.mark.parametrize("fn", ["deform_conv2d", "deform_conv2d_loop", "deform_conv2d_backward"])
@pytest.mark.parametrize("change, words", [
    (dict(input=np.zeros((4, 5, 5))), ["input", "4-D", "[N, C, H, W]"]),
    (dict(offset=np.zeros((2, 20, 3, 3))), ["offset", "2*offset_groups*kh*kw", "18", "20"]),
    (dict(mask=np.zeros((2, 18, 3))), ["mask", "[2, 18, 3, 3]"]),
    (dict(mask=np.zeros((2, 9, 3, 3))), ["mask", "[2, 18, 3, 3]"]),
])
def test_every_entry_point_rejects_bad_shapes_naming_argument_and_shape(fn, change, words):
    a = _base(np.random.default_rng(34))
    call = {"deform_conv2d": deform_conv2d, "deform_conv2d_loop": deform_conv2d_loop,
            "deform_conv2d_backward": lambda **k: deform_conv2d_backward(np.zeros((2, 4, 3, 3)), **k)}[fn]
    with pytest.raises(ValueError) as info:
        call(**{**a, **change})
    for word in words:
        assert word in str(info.value), (word, str(info.value))


def test_non_finite_offset_rejected_by_helpers_and_backward():
    a = _base(np.random.default_rng(35))
    off = a["offset"].copy()
    off[1, 3, 2, 1] = -np.inf
    args = ((3, 3), 1, 0, 1)
    with pytest.raises(ValueError, match="offset: expected finite"):
        deform_conv2d_backward(np.zeros((2, 4, 3, 3)), **{**a, "offset": off})
    with pytest.raises(ValueError, match="offset: expected finite"):
        deform_im2col(a["input"], off, a["mask"], *args)
    with pytest.raises(ValueError, match="offset: expected finite"):
        deform_col2im(np.zeros((2, 36, 9)), off, None, a["input"].shape, *args)
    with pytest.raises(ValueError, match="offset: expected finite"):
        deform_col2im_coord(np.zeros((2, 36, 9)), a["input"], off, None, *args)


def test_same_signature_as_the_pytorch_tier():
    """Issue 3: the NumPy tier's names, argument names, order and defaults are those of the PyTorch tier."""
    import inspect

    from dcn_lessons import ops

    def params(f):
        return [(p.name, p.default) for p in inspect.signature(f).parameters.values()]

    assert params(deform_conv2d) == params(ops.deform_conv2d)
    assert params(deform_conv2d_loop) == params(deform_conv2d)
    # the backward takes grad_output first, then exactly the forward's arguments
    assert params(deform_conv2d_backward)[0][0] == "grad_output"
    assert params(deform_conv2d_backward)[1:] == params(deform_conv2d)
