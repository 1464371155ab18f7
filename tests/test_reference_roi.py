"""Tests of the NumPy reference tier of the RoI pooling family (dcn_lessons/reference/roi.py).

Forward passes are checked against brute-force definitions written here from the equations (the bilinear
kernel of DCNv1 Eq. 3-4 summed over every pixel, after the RoI clamp rule); backward passes against central
finite differences, with offsets chosen so that no sample sits on an integer coordinate (where the sampling
rule has kinks: floor changes, clamps, the outside boundary).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from dcn_lessons.reference import roi as R
from dcn_lessons._validate import roi as V

# ----------------------------------------------------------------------------------------------------------
# Brute-force definitions
# ----------------------------------------------------------------------------------------------------------


def brute_sample(img: np.ndarray, y: float, x: float) -> float:
    """RoI rule: 0 beyond one pixel outside; else clamp into the map and apply Eq. 3 over every pixel q."""
    h, w = img.shape
    if y < -1 or y > h or x < -1 or x > w:
        return 0.0
    y = min(max(y, 0.0), h - 1.0)
    x = min(max(x, 0.0), w - 1.0)
    gy = np.maximum(0.0, 1.0 - np.abs(np.arange(h)[:, None] - y))
    gx = np.maximum(0.0, 1.0 - np.abs(np.arange(w)[None, :] - x))
    return float((gy * gx * img).sum())


def brute_positions(roi, i, j, ph, pw, scale, sr, aligned=True, shift=(0.0, 0.0), gamma=0.1):
    """Sample positions of bin (i, j); shift = normalised (dx, dy). Returns list of (y, x) and the count."""
    b, x1, y1, x2, y2 = roi
    off = 0.5 if aligned else 0.0
    ys, xs = y1 * scale - off, x1 * scale - off
    h, w = (y2 - y1) * scale, (x2 - x1) * scale
    if not aligned:
        h, w = max(h, 1.0), max(w, 1.0)
    gh = sr if sr > 0 else math.ceil(h / ph)
    gw = sr if sr > 0 else math.ceil(w / pw)
    dy, dx = gamma * shift[1] * h, gamma * shift[0] * w
    pts = []
    for u in range(gh):
        for v in range(gw):
            pts.append(
                (ys + dy + i * h / ph + (u + 0.5) * h / ph / gh, xs + dx + j * w / pw + (v + 0.5) * w / pw / gw)
            )
    return pts, max(gh * gw, 1)


def brute_pool(inp, rois, ph, pw, scale=1.0, sr=0, aligned=True, offset=None, mask=None, gamma=0.1, ps=False):
    n, c, _, _ = inp.shape
    c_out = c // (ph * pw) if ps else c
    out = np.zeros((len(rois), c_out, ph, pw))
    for k, roi in enumerate(rois):
        b = int(roi[0])
        for co in range(c_out):
            for i in range(ph):
                for j in range(pw):
                    ch = (co * ph + i) * pw + j if ps else co
                    shift = (0.0, 0.0) if offset is None else (offset[k, 0, i, j], offset[k, 1, i, j])
                    pts, count = brute_positions(roi, i, j, ph, pw, scale, sr, aligned, shift, gamma)
                    val = sum(brute_sample(inp[b, ch], y, x) for y, x in pts) / count
                    out[k, co, i, j] = val * (1.0 if mask is None else mask[k, 0, i, j])
    return out


def brute_roi_pool(inp, rois, ph, pw, scale=1.0, mode="max"):
    _, c, h, w = inp.shape
    out = np.zeros((len(rois), c, ph, pw))

    def c_round(v):
        return int(math.floor(v + 0.5)) if v >= 0 else -int(math.floor(-v + 0.5))

    for k, roi in enumerate(rois):
        b = int(roi[0])
        xs, ys, xe, ye = (c_round(v * scale) for v in roi[1:])
        rw, rh = max(xe - xs + 1, 1), max(ye - ys + 1, 1)
        for i in range(ph):
            for j in range(pw):
                pix = [
                    (py, px)
                    for py in range(h)
                    for px in range(w)
                    if math.floor(i * rh / ph) <= py - ys < math.ceil((i + 1) * rh / ph)
                    and math.floor(j * rw / pw) <= px - xs < math.ceil((j + 1) * rw / pw)
                ]
                for ch in range(c):
                    vals = [inp[b, ch, py, px] for py, px in pix]
                    if vals:
                        out[k, ch, i, j] = max(vals) if mode == "max" else sum(vals) / len(vals)
    return out


def central_diff(f, x, eps=1e-6):
    """d(sum(f(x) * weight))/dx by central differences; f returns a scalar."""
    g = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        old = x[idx]
        x[idx] = old + eps
        fp = f(x)
        x[idx] = old - eps
        fm = f(x)
        x[idx] = old
        g[idx] = (fp - fm) / (2 * eps)
    return g


def min_dist_to_integer(rois, offset, ph, pw, scale, sr, gamma=0.1):
    d = np.inf
    for k, roi in enumerate(rois):
        for i in range(ph):
            for j in range(pw):
                shift = (0.0, 0.0) if offset is None else (offset[k, 0, i, j], offset[k, 1, i, j])
                pts, _ = brute_positions(roi, i, j, ph, pw, scale, sr, True, shift, gamma)
                for y, x in pts:
                    d = min(d, abs(y - round(y)), abs(x - round(x)))
    return d


# ----------------------------------------------------------------------------------------------------------
# Fixtures: a small map and RoIs inside, across the border, and partly outside
# ----------------------------------------------------------------------------------------------------------

RNG = np.random.default_rng(0)
H, W = 5, 6
X = RNG.standard_normal((2, 3, H, W))
ROIS = np.array(
    [
        [0, 1.3, 0.7, 8.9, 6.6],  # inside (scale 0.5 -> feature map)
        [1, -2.1, 3.3, 5.2, 10.9],  # crosses the left and bottom borders
        [1, 7.4, -3.2, 13.9, 4.1],  # crosses the top and right borders
    ]
)
SCALE = 0.5
PH, PW = 2, 3


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("sr", [-1, 0, 2])
def test_roi_align_matches_brute_force(aligned, sr):
    got = R.roi_align(X, ROIS, (PH, PW), SCALE, sr, aligned)
    want = brute_pool(X, ROIS, PH, PW, SCALE, sr, aligned)
    assert got.shape == (3, 3, PH, PW)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)


def test_roi_align_single_sample_follows_the_roi_rule():
    # A zero-size box with sampling_ratio=1 samples exactly at (y1 - 0.5, x1 - 0.5).
    img = np.arange(12.0).reshape(1, 1, 3, 4)

    def at(y, x):
        return R.roi_align(img, np.array([[0, x + 0.5, y + 0.5, x + 0.5, y + 0.5]]), 1, 1.0, 1)[0, 0, 0, 0]

    assert at(1.25, 2.5) == pytest.approx(4 * 1.25 + 2.5)  # bilinear of a linear map is exact
    assert at(-0.6, 1.0) == pytest.approx(img[0, 0, 0, 1])  # -1 <= y <= 0: clamped to row 0
    assert at(2.7, 1.0) == pytest.approx(img[0, 0, 2, 1])  # H-1 <= y <= H: row H-1
    assert at(3.0, 1.0) == pytest.approx(img[0, 0, 2, 1])  # y == H is still inside
    assert at(3.01, 1.0) == 0.0  # y > H: outside
    assert at(-1.01, 1.0) == 0.0  # y < -1: outside
    assert at(-1.0, 1.0) == pytest.approx(img[0, 0, 0, 1])  # y == -1 is still inside (torchvision)
    assert at(1.0, -1.0) == pytest.approx(img[0, 0, 1, 0])  # likewise x == -1
    assert at(1.0, 4.2) == 0.0  # x > W: outside


def test_ps_roi_align_matches_brute_force():
    rng = np.random.default_rng(100)  # its own draws: the same data whichever tests ran before
    xp = rng.standard_normal((2, 2 * PH * PW, H, W))
    for sr in (-1, 2):
        got = R.ps_roi_align(xp, ROIS, (PH, PW), SCALE, sr)
        np.testing.assert_allclose(got, brute_pool(xp, ROIS, PH, PW, SCALE, sr, ps=True), atol=1e-12)
        assert got.shape == (3, 2, PH, PW)


OFFSET = RNG.uniform(-2.0, 2.0, size=(3, 2, PH, PW))  # large enough to push bins off the map
MASK = RNG.uniform(0.0, 1.0, size=(3, 1, PH, PW))


@pytest.mark.parametrize("sr", [0, 2])
def test_deform_roi_pool_matches_brute_force(sr):
    got = R.deform_roi_pool(X, ROIS, OFFSET, (PH, PW), SCALE, sr, 0.3)
    np.testing.assert_allclose(got, brute_pool(X, ROIS, PH, PW, SCALE, sr, offset=OFFSET, gamma=0.3), atol=1e-12)


def test_modulated_deform_roi_pool_matches_brute_force():
    got = R.modulated_deform_roi_pool(X, ROIS, OFFSET, MASK, (PH, PW), SCALE, 2, 0.3)
    want = brute_pool(X, ROIS, PH, PW, SCALE, 2, offset=OFFSET, mask=MASK, gamma=0.3)
    np.testing.assert_allclose(got, want, atol=1e-12)


def test_deform_ps_roi_pool_matches_brute_force():
    rng = np.random.default_rng(101)  # its own draws: the same data whichever tests ran before
    xp = rng.standard_normal((2, 2 * PH * PW, H, W))
    got = R.deform_ps_roi_pool(xp, ROIS, OFFSET, (PH, PW), SCALE, 0, 0.3)
    want = brute_pool(xp, ROIS, PH, PW, SCALE, 0, offset=OFFSET, gamma=0.3, ps=True)
    np.testing.assert_allclose(got, want, atol=1e-12)


@pytest.mark.parametrize("mode", ["max", "avg"])
def test_roi_pool_matches_brute_force(mode):
    boxes = np.vstack([ROIS, [[0, 3.0, 1.0, 3.0, 1.0]], [[1, 20.0, 20.0, 30.0, 30.0]]])  # 1x1 and off-map
    got = R.roi_pool(X, boxes, (PH, PW), SCALE, mode)
    np.testing.assert_allclose(got, brute_roi_pool(X, boxes, PH, PW, SCALE, mode), atol=1e-12)
    assert np.all(got[-1] == 0.0)  # every bin clipped away -> 0


# ----------------------------------------------------------------------------------------------------------
# Special cases
# ----------------------------------------------------------------------------------------------------------


def test_zero_offsets_and_unit_mask_reduce_to_the_plain_ops():
    rng = np.random.default_rng(102)  # its own draws: the same data whichever tests ran before
    base = R.roi_align(X, ROIS, (PH, PW), SCALE, 0, aligned=True)
    zero = np.zeros((3, 2, PH, PW))
    np.testing.assert_allclose(R.deform_roi_pool(X, ROIS, zero, (PH, PW), SCALE), base, atol=1e-15)
    np.testing.assert_allclose(R.deform_roi_pool(X, ROIS, None, (PH, PW), SCALE), base, atol=1e-15)
    deform = R.deform_roi_pool(X, ROIS, OFFSET, (PH, PW), SCALE)
    ones = np.ones((3, 1, PH, PW))
    np.testing.assert_allclose(R.modulated_deform_roi_pool(X, ROIS, OFFSET, ones, (PH, PW), SCALE), deform, atol=1e-15)
    np.testing.assert_allclose(R.modulated_deform_roi_pool(X, ROIS, OFFSET, None, (PH, PW), SCALE), deform, atol=1e-15)
    np.testing.assert_allclose(
        R.modulated_deform_roi_pool(X, ROIS, None, MASK, (PH, PW), SCALE), base * MASK, atol=1e-15
    )
    xp = rng.standard_normal((2, 2 * PH * PW, H, W))
    np.testing.assert_allclose(
        R.deform_ps_roi_pool(xp, ROIS, zero, (PH, PW), SCALE, -1), R.ps_roi_align(xp, ROIS, (PH, PW), SCALE, -1),
        atol=1e-15,
    )
    # offsets do change the result (the comparison above is not vacuous)
    assert np.abs(deform - base).max() > 1e-3


def test_normalised_offsets_scale_with_the_roi():
    """Same normalised offsets on a 2x RoI over a 2x image: the bins move 2x as far (DCNv1 §2.2)."""
    a, bx, c0 = 0.7, -0.3, 1.5

    def linear_map(h, w, s):  # continuous image f(u, v) = a*u + bx*v + c0 sampled at pixel centres of scale s
        yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
        return (a * (yy + 0.5) / s + bx * (xx + 0.5) / s + c0)[None, None]

    small, big = linear_map(12, 14, 1.0), linear_map(24, 28, 2.0)
    roi = np.array([[0, 3.0, 2.0, 9.0, 10.0]])
    off = np.array([[[[0.5, -1.0]], [[1.5, 0.25]]]])  # [1, 2, 1, 2]: x then y
    out_s = R.deform_roi_pool(small, roi, off, (1, 2), 1.0, 2, 0.1)
    out_b = R.deform_roi_pool(big, roi * [1, 2, 2, 2, 2], off, (1, 2), 1.0, 2, 0.1)
    np.testing.assert_allclose(out_b, out_s, atol=1e-12)
    # closed form: f at the bin centre moved by γ·(offset_x·w, offset_y·h), in image units
    w, h = 6.0, 8.0
    for j in range(2):
        cy = 2.0 + h / 2 + 0.1 * off[0, 1, 0, j] * h
        cx = 3.0 + w / 4 + j * w / 2 + 0.1 * off[0, 0, 0, j] * w
        assert out_s[0, 0, 0, j] == pytest.approx(a * cy + bx * cx + c0)


@pytest.mark.parametrize(
    "call",
    [
        lambda x, r, o, m: R.roi_align(x, r, (2, 3)),
        lambda x, r, o, m: R.roi_pool(x, r, (2, 3)),
        lambda x, r, o, m: R.deform_roi_pool(x, r, o, (2, 3)),
        lambda x, r, o, m: R.modulated_deform_roi_pool(x, r, o, m, (2, 3)),
        lambda x, r, o, m: R.ps_roi_align(x, r, (2, 3)),
        lambda x, r, o, m: R.deform_ps_roi_pool(x, r, o, (2, 3)),
    ],
)
def test_empty_rois(call):
    rng = np.random.default_rng(103)  # its own draws: the same data whichever tests ran before
    x = rng.standard_normal((1, 12, 4, 4))
    out = call(x, np.zeros((0, 5)), np.zeros((0, 2, 2, 3)), np.zeros((0, 1, 2, 3)))
    assert out.shape[0] == 0 and out.shape[2:] == (2, 3)


def test_empty_rois_backward():
    rng = np.random.default_rng(104)  # its own draws: the same data whichever tests ran before
    x = rng.standard_normal((1, 12, 4, 4))
    r0, o0, m0 = np.zeros((0, 5)), np.zeros((0, 2, 2, 3)), np.zeros((0, 1, 2, 3))
    g = R.modulated_deform_roi_pool_backward(np.zeros((0, 12, 2, 3)), x, r0, o0, m0, (2, 3))
    assert np.all(g.input == 0) and g.input.shape == x.shape
    assert g.offset.shape == (0, 2, 2, 3) and g.mask.shape == (0, 1, 2, 3)
    g = R.deform_ps_roi_pool_backward(np.zeros((0, 2, 2, 3)), x, r0, o0, (2, 3))
    assert g.input.shape == x.shape and g.offset.shape == (0, 2, 2, 3) and g.mask is None
    assert R.roi_align_backward(np.zeros((0, 12, 2, 3)), x, r0, (2, 3)).shape == x.shape
    assert R.roi_pool_backward(np.zeros((0, 12, 2, 3)), x, r0, (2, 3)).shape == x.shape
    assert R.ps_roi_align_backward(np.zeros((0, 2, 2, 3)), x, r0, (2, 3)).shape == x.shape


def test_zero_size_roi_pools_to_zero_under_adaptive_sampling():
    rng = np.random.default_rng(105)  # its own draws: the same data whichever tests ran before
    x = rng.standard_normal((1, 4, 5, 5)) + 10.0
    flat = np.array([[0, 1.0, 1.0, 1.0, 3.0]])  # zero width: ceil(0/pw) = 0 samples per row
    assert np.all(R.roi_align(x, flat, 2, sampling_ratio=0) == 0.0)
    assert np.all(R.ps_roi_align(x, flat, 2, sampling_ratio=0) == 0.0)  # torchvision gives NaN here
    assert np.all(R.roi_align(x, flat, 2, sampling_ratio=2) != 0.0)  # a fixed grid still samples the line
    assert np.all(R.roi_align(x, flat, 2, sampling_ratio=0, aligned=False) != 0.0)  # size clamped to 1


def test_roi_pool_avg_on_constant_map():
    x = np.full((2, 2, H, W), 3.25)
    out = R.roi_pool(x, ROIS, (PH, PW), SCALE, mode="avg")
    nonempty = R.roi_pool(np.ones_like(x), ROIS, (PH, PW), SCALE, mode="max") > 0
    assert nonempty.sum() >= 10
    np.testing.assert_allclose(out[nonempty], 3.25)
    assert np.all(out[~nonempty] == 0.0)


def test_roi_pool_rounds_halves_away_from_zero():
    x = np.arange(30.0).reshape(1, 1, 5, 6)
    # x1*s = 0.5 -> 1 (C round); NumPy's round would give 0 and include column 0.
    out = R.roi_pool(x, np.array([[0, 1.0, 0.0, 5.0, 0.0]]), (1, 1), 0.5, mode="avg")
    assert out[0, 0, 0, 0] == pytest.approx(np.mean(x[0, 0, 0, 1:4]))  # columns round(0.5)=1 .. round(2.5)=3


def test_roi_pool_max_backward_routes_to_the_first_maximum():
    x = np.zeros((1, 1, 3, 3))
    x[0, 0, 1, 2] = x[0, 0, 2, 0] = 5.0  # a tie: (1, 2) comes first in row-major order
    g = R.roi_pool_backward(np.array([[[[2.0]]]]), x, np.array([[0, 0.0, 0.0, 2.0, 2.0]]), 1)
    want = np.zeros_like(x)
    want[0, 0, 1, 2] = 2.0
    np.testing.assert_array_equal(g, want)


def test_offsets_from_a_ps_pooled_offset_map():
    """DCNv1 §2.2: offsets = PS RoI pooling of a 2*ph*pw-channel conv branch, then deformable PS pooling."""
    rng = np.random.default_rng(106)  # its own draws: the same data whichever tests ran before
    ph, pw = 2, 2
    vals = rng.uniform(-0.5, 0.5, size=(2, ph, pw))  # (x/y, i, j)
    offset_map = np.zeros((1, 2 * ph * pw, 6, 6))
    for c in range(2):
        for i in range(ph):
            for j in range(pw):
                offset_map[0, (c * ph + i) * pw + j] = vals[c, i, j]  # constant per channel
    rois = np.array([[0, 1.0, 1.5, 5.0, 4.5], [0, 0.5, 0.5, 3.0, 5.5]])
    offset = R.ps_roi_align(offset_map, rois, (ph, pw))
    assert offset.shape == (2, 2, ph, pw)
    np.testing.assert_allclose(offset, np.broadcast_to(vals, (2, 2, ph, pw)), atol=1e-12)
    scores = rng.standard_normal((1, 3 * ph * pw, 6, 6))
    out = R.deform_ps_roi_pool(scores, rois, offset, (ph, pw))
    want = brute_pool(scores, rois, ph, pw, 1.0, 0, offset=np.broadcast_to(vals, (2, 2, ph, pw)), ps=True)
    np.testing.assert_allclose(out, want, atol=1e-12)


def test_float32_in_float32_out():
    out = R.roi_align(X.astype(np.float32), ROIS, 2, SCALE)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, R.roi_align(X, ROIS, 2, SCALE), atol=1e-5)


# ----------------------------------------------------------------------------------------------------------
# Backward against central finite differences
# ----------------------------------------------------------------------------------------------------------

XS = RNG.standard_normal((2, 2, H, W))
XPS = RNG.standard_normal((2, 2 * PH * PW, H, W))
GO_C = RNG.standard_normal((3, 2, PH, PW))  # grad_output for 2 output channels


def _safe_offset(seed, gamma):
    """Offsets whose samples all stay >= 0.02 px away from integer coordinates (the rule's kinks)."""
    rng = np.random.default_rng(seed)
    for _ in range(200):
        off = rng.uniform(-1.2, 1.2, size=(3, 2, PH, PW))
        if min_dist_to_integer(ROIS, off, PH, PW, SCALE, 2, gamma) > 0.02:
            return off
    raise AssertionError("no kink-free offsets found")


OFF_SAFE = _safe_offset(1, 0.3)


def test_safe_offsets_reach_the_clamp_and_outside_regions():
    # The FD tests below must exercise samples in (-1, 0), (H-1, H) and beyond, not only the interior.
    ys, xs = [], []
    for k, roi in enumerate(ROIS):
        for i in range(PH):
            for j in range(PW):
                pts, _ = brute_positions(roi, i, j, PH, PW, SCALE, 2, True, tuple(OFF_SAFE[k, :, i, j]), 0.3)
                ys += [p[0] for p in pts]
                xs += [p[1] for p in pts]
    ys, xs = np.array(ys), np.array(xs)
    assert np.any((ys > -1) & (ys < 0)) or np.any((xs > -1) & (xs < 0))
    assert np.any((ys > H - 1) & (ys < H)) or np.any((xs > W - 1) & (xs < W))
    assert np.any((ys < -1) | (ys > H) | (xs < -1) | (xs > W))


@pytest.mark.parametrize("aligned", [True, False])
def test_roi_align_backward_fd(aligned):
    g = R.roi_align_backward(GO_C, XS, ROIS, (PH, PW), SCALE, 2, aligned)
    fd = central_diff(lambda x: float((R.roi_align(x, ROIS, (PH, PW), SCALE, 2, aligned) * GO_C).sum()), XS.copy())
    np.testing.assert_allclose(g, fd, atol=1e-8)


def test_ps_roi_align_backward_fd():
    g = R.ps_roi_align_backward(GO_C, XPS, ROIS, (PH, PW), SCALE, 2)
    fd = central_diff(lambda x: float((R.ps_roi_align(x, ROIS, (PH, PW), SCALE, 2) * GO_C).sum()), XPS.copy())
    np.testing.assert_allclose(g, fd, atol=1e-8)


def test_deform_roi_pool_backward_fd():
    g = R.deform_roi_pool_backward(GO_C, XS, ROIS, OFF_SAFE, (PH, PW), SCALE, 2, 0.3)
    assert g.mask is None

    def f_in(x):
        return float((R.deform_roi_pool(x, ROIS, OFF_SAFE, (PH, PW), SCALE, 2, 0.3) * GO_C).sum())

    def f_off(o):
        return float((R.deform_roi_pool(XS, ROIS, o, (PH, PW), SCALE, 2, 0.3) * GO_C).sum())

    np.testing.assert_allclose(g.input, central_diff(f_in, XS.copy()), atol=1e-8)
    fd_off = central_diff(f_off, OFF_SAFE.copy())
    np.testing.assert_allclose(g.offset, fd_off, atol=1e-7)
    assert np.abs(fd_off).max() > 1e-2  # not vacuous


def test_deform_roi_pool_backward_without_offset():
    g = R.deform_roi_pool_backward(GO_C, XS, ROIS, None, (PH, PW), SCALE, 2)
    assert g.offset is None and g.mask is None
    np.testing.assert_allclose(g.input, R.roi_align_backward(GO_C, XS, ROIS, (PH, PW), SCALE, 2), atol=1e-15)


def test_modulated_deform_roi_pool_backward_fd():
    g = R.modulated_deform_roi_pool_backward(GO_C, XS, ROIS, OFF_SAFE, MASK, (PH, PW), SCALE, 2, 0.3)

    def f(x, o, m):
        return float((R.modulated_deform_roi_pool(x, ROIS, o, m, (PH, PW), SCALE, 2, 0.3) * GO_C).sum())

    np.testing.assert_allclose(g.input, central_diff(lambda x: f(x, OFF_SAFE, MASK), XS.copy()), atol=1e-8)
    np.testing.assert_allclose(g.offset, central_diff(lambda o: f(XS, o, MASK), OFF_SAFE.copy()), atol=1e-7)
    np.testing.assert_allclose(g.mask, central_diff(lambda m: f(XS, OFF_SAFE, m), MASK.copy()), atol=1e-8)
    g2 = R.modulated_deform_roi_pool_backward(GO_C, XS, ROIS, None, MASK, (PH, PW), SCALE, 2, 0.3)
    assert g2.offset is None
    np.testing.assert_allclose(g2.mask, central_diff(lambda m: f(XS, None, m), MASK.copy()), atol=1e-8)


def test_deform_ps_roi_pool_backward_fd():
    g = R.deform_ps_roi_pool_backward(GO_C, XPS, ROIS, OFF_SAFE, (PH, PW), SCALE, 2, 0.3)

    def f(x, o):
        return float((R.deform_ps_roi_pool(x, ROIS, o, (PH, PW), SCALE, 2, 0.3) * GO_C).sum())

    np.testing.assert_allclose(g.input, central_diff(lambda x: f(x, OFF_SAFE), XPS.copy()), atol=1e-8)
    np.testing.assert_allclose(g.offset, central_diff(lambda o: f(XPS, o), OFF_SAFE.copy()), atol=1e-7)


def test_offset_gradient_is_zero_in_the_clamped_direction():
    """A sample in a clamp band (-1 <= y <= 0, or floor(y) >= H-1) does not move with y: its y-offset gradient is
    0 and its x-offset gradient that of the clamped row; both equal central differences (the band is flat in y).
    At the top and at the bottom of the map, with w = h = 1, so that both offsets do move the sample."""
    rng = np.random.default_rng(107)  # its own draws: the same data whichever tests ran before
    img = rng.standard_normal((1, 1, 4, 4))  # H = W = 4
    cases = {  # RoI (w = h = 1), normalised offset (x, y) with γ = 0.1, the sample (y, x) it gives, clamped row
        "top": ([0, 1.8, 0.0, 2.8, 1.0], (-3.0, -3.0), (-0.3, 1.5), 0),
        "bottom": ([0, 1.8, 3.0, 2.8, 4.0], (-3.0, 5.0), (3.5, 1.5), 3),
    }
    for where, (box, (ox, oy), sample, row) in cases.items():
        roi, off = np.array([box]), np.array([ox, oy]).reshape(1, 2, 1, 1)
        assert np.allclose(brute_positions(roi[0], 0, 0, 1, 1, 1.0, 1, True, (ox, oy), 0.1)[0], [sample]), where
        g = R.deform_roi_pool_backward(np.ones((1, 1, 1, 1)), img, roi, off, 1, 1.0, 1, 0.1).offset
        fd = central_diff(lambda o: float(R.deform_roi_pool(img, roi, o, 1, 1.0, 1, 0.1).sum()), off.copy())
        assert g[0, 1, 0, 0] == 0.0 and fd[0, 1, 0, 0] == pytest.approx(0.0, abs=1e-9), where  # y is clamped
        want_dx = 0.1 * (img[0, 0, row, 2] - img[0, 0, row, 1])  # γ·w·(x(row, 2) - x(row, 1)): x in (1, 2)
        assert g[0, 0, 0, 0] == pytest.approx(want_dx) and fd[0, 0, 0, 0] == pytest.approx(want_dx, abs=1e-8), where


@pytest.mark.parametrize("mode", ["max", "avg"])
def test_roi_pool_backward_fd(mode):
    rng = np.random.default_rng(108)  # its own draws: the same data whichever tests ran before
    x = rng.permutation(2 * 2 * H * W).reshape(2, 2, H, W) / 7.0  # distinct values: unique maxima
    go = rng.standard_normal((3, 2, PH, PW))
    g = R.roi_pool_backward(go, x, ROIS, (PH, PW), SCALE, mode)
    fd = central_diff(lambda v: float((R.roi_pool(v, ROIS, (PH, PW), SCALE, mode) * go).sum()), x.copy())
    np.testing.assert_allclose(g, fd, atol=1e-7)
    assert np.abs(g).sum() > 0


# ----------------------------------------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, exc, message",
    [
        (dict(rois=np.zeros((2, 4))), ValueError, "rois: expected a 2-D array [K, 5]"),
        (dict(rois=np.zeros(5)), ValueError, "got shape [5]"),
        (dict(rois=np.array([[2, 0, 0, 1, 1.0]])), ValueError, "rois: row 0 has batch index 2.0; expected an integer in [0, 0] (input has batch size 1)"),
        (dict(rois=np.array([[0, 0, 0, 1, 1], [0.5, 0, 0, 1, 1.0]])), ValueError, "rois: row 1 has batch index 0.5"),
        (dict(rois=np.array([[-1, 0, 0, 1, 1.0]])), ValueError, "batch index -1.0"),
        (dict(rois=np.array([[0, 3, 0, 1, 1.0]])), ValueError, "rois: row 0 = [0.0, 3.0, 0.0, 1.0, 1.0] is not ordered"),
        (dict(rois=np.array([[0, 0, 2, 1, 1.0]])), ValueError, "y1 <= y2"),
        (dict(rois=np.array([[0, 0, np.nan, 1, 1.0]])), ValueError, "rois: row 0 has a non-finite entry"),
        (dict(offset=np.zeros((1, 2, 2, 2))), ValueError, "offset: expected shape [K, 2, ph, pw] = [1, 2, 2, 3], got [1, 2, 2, 2]"),
        (dict(offset=np.full((1, 2, 2, 3), np.inf)), ValueError, "offset: expected finite values"),
        (dict(mask=np.zeros((1, 2, 2, 3))), ValueError, "mask: expected shape [K, 1, ph, pw] = [1, 1, 2, 3], got [1, 2, 2, 3]"),
        (dict(mask=np.full((1, 1, 2, 3), np.nan)), ValueError, "mask: expected finite values"),
        (dict(output_size=0), ValueError, "output_size: expected positive sizes"),
        (dict(output_size=(2, -1)), ValueError, "output_size"),
        (dict(output_size=2.5), TypeError, "output_size: expected an int or a pair of ints"),
        (dict(output_size=(2, 3, 4)), TypeError, "output_size"),
        (dict(spatial_scale=0.0), ValueError, "spatial_scale: expected a finite number > 0"),
        (dict(spatial_scale=-1.0), ValueError, "spatial_scale"),
        (dict(spatial_scale=float("nan")), ValueError, "spatial_scale"),
        (dict(sampling_ratio=1.5), TypeError, "sampling_ratio: expected an int"),
        (dict(gamma=float("inf")), ValueError, "gamma: expected a finite real number"),
        (dict(input=np.zeros((3, 4, 4))), ValueError, "input: expected a 4-D array [N, C, H, W], got shape [3, 4, 4]"),
        (dict(input=np.zeros((1, 6, 4, 4), dtype=np.int64)), TypeError, "input: expected a floating-point array"),
    ],
)
def test_bad_input_modulated(kwargs, exc, message):
    args = dict(
        input=np.zeros((1, 6, 4, 4)),
        rois=np.array([[0, 0, 0, 2, 2.0]]),
        offset=np.zeros((1, 2, 2, 3)),
        mask=np.ones((1, 1, 2, 3)),
        output_size=(2, 3),
        spatial_scale=1.0,
        sampling_ratio=0,
        gamma=0.1,
    )
    args.update(kwargs)
    with pytest.raises(exc) as info:
        R.modulated_deform_roi_pool(**args)
    assert message in str(info.value)


def test_bad_input_other_ops():
    x = np.zeros((1, 6, 4, 4))
    box = np.array([[0, 0, 0, 2, 2.0]])
    with pytest.raises(ValueError, match=r"input: channels C=6 not divisible by ph\*pw=4"):
        R.ps_roi_align(x, box, 2)
    with pytest.raises(ValueError, match=r"input: channels C=6 not divisible by ph\*pw=4"):
        R.deform_ps_roi_pool(x, box, None, 2)
    with pytest.raises(ValueError, match=r"boxes: expected a 2-D array \[K, 5\]"):
        R.roi_align(x, box[:, 1:], 2)
    with pytest.raises(ValueError, match=r"boxes: row 0 has batch index 1.0"):
        R.roi_pool(x, np.array([[1, 0, 0, 2, 2.0]]), 2)
    with pytest.raises(ValueError, match='mode: expected "max" or "avg"'):
        R.roi_pool(x, box, 2, mode="sum")
    with pytest.raises(ValueError, match=r"grad_output: expected shape \[K, C_out, ph, pw\] = \[1, 6, 2, 2\], got \[1, 6, 2, 3\]"):
        R.roi_align_backward(np.zeros((1, 6, 2, 3)), x, box, 2)
    with pytest.raises(ValueError, match=r"grad_output: expected shape .* = \[1, 6, 2, 2\]"):
        R.roi_pool_backward(np.zeros((1, 5, 2, 2)), x, box, 2)
    with pytest.raises(ValueError, match=r"offset: expected shape \[K, 2, ph, pw\] = \[1, 2, 2, 2\]"):
        R.deform_roi_pool_backward(np.zeros((1, 6, 2, 2)), x, box, np.zeros((2, 2, 2, 2)), 2)
    with pytest.raises(TypeError, match="rois: expected an array or tensor, got list"):
        R.deform_roi_pool(x, [[0, 0, 0, 2, 2.0]], None, 2)


def test_validators_read_only_shape():
    class Fake:  # what a torch tensor looks like to the shape checks
        def __init__(self, shape):
            self.shape, self.ndim = shape, len(shape)

    assert V.check_rois(Fake((7, 5)), 2, check_values=False) == 7
    V.check_roi_offset(Fake((7, 2, 3, 3)), 7, (3, 3), check_values=False)
    with pytest.raises(ValueError, match=r"offset: expected shape \[K, 2, ph, pw\] = \[7, 2, 3, 3\], got \[7, 2, 3\]"):
        V.check_roi_offset(Fake((7, 2, 3)), 7, (3, 3), check_values=False)
    assert V.check_ps_channels(18, (3, 3)) == 2
    assert V.normalize_output_size([2, 3]) == (2, 3)
    with pytest.raises(TypeError, match=r"output_size: expected an int or a pair of ints"):
        V.normalize_output_size(True)


# ----------------------------------------------------------------------------------------------------------
# Brute force with samples exactly on integer coordinates, on the border (-1, 0, H-1, H) and far outside
# ----------------------------------------------------------------------------------------------------------

# scale 1, 2x2 bins of a 4x4 RoI, 2 samples per bin side: every sample sits on an integer coordinate
# (x1 + 0, 1, 2, 3); γ·w = γ·h = 1, so integer offsets move whole pixels and keep samples on integers.
INT_ROIS = np.array(
    [
        [0, -1.0, -1.0, 3.0, 3.0],  # samples at -1, 0, 1, 2: the -1 edge exactly
        [1, W - 3.0, H - 3.0, W + 1.0, H + 1.0],  # samples up to y = H, x = W exactly
        [0, 1.0, 0.0, 5.0, 4.0],  # inside
        [0, -3.0, 2.0, 1.0, 6.0],  # x at -3, -2 (outside), -1, 0
        [1, 100.0, -200.0, 104.0, -196.0],  # far outside
    ]
)
INT_GAMMA = 0.25
X8 = RNG.standard_normal((2, 8, H, W))  # 8 channels: C_out = 2 for the position-sensitive ops with 2x2 bins


def _int_offsets(seed):
    rng = np.random.default_rng(seed)
    off = rng.integers(-2, 3, size=(len(INT_ROIS), 2, 2, 2)).astype(float)
    off[2, :, 1, 1] = [300.0, -250.0]  # one bin of an inside RoI pushed far off the map
    return off


def _positions(rois, offset, sr):
    ys, xs = [], []
    for k, roi in enumerate(rois):
        for i in range(2):
            for j in range(2):
                shift = (0.0, 0.0) if offset is None else tuple(offset[k, :, i, j])
                pts, _ = brute_positions(roi, i, j, 2, 2, 1.0, sr, True, shift, INT_GAMMA)
                ys += [p[0] for p in pts]
                xs += [p[1] for p in pts]
    return np.array(ys), np.array(xs)


@pytest.mark.parametrize("sr", [0, 2])
def test_sampled_ops_match_brute_force_on_integers_border_and_far_outside(sr):
    off = _int_offsets(40)
    mask = np.random.default_rng(41).uniform(0, 1, (len(INT_ROIS), 1, 2, 2))
    for o in (None, off):
        ys, xs = _positions(INT_ROIS, o, sr)
        assert np.all(ys == np.round(ys)) and np.all(xs == np.round(xs))  # every sample on an integer
        assert np.any(ys == -1) and np.any(ys == H) and np.any(xs == -1) and np.any(xs == W)
        assert np.any(ys == 0) and np.any(ys == H - 1) and np.any(xs == 0) and np.any(xs == W - 1)
        assert np.any((np.abs(ys) > 100) | (np.abs(xs) > 100))
    args = (INT_ROIS, (2, 2), 1.0, sr)
    got = {
        "roi_align": R.roi_align(X8, *args, aligned=True),
        "deform_roi_pool": R.deform_roi_pool(X8, INT_ROIS, off, (2, 2), 1.0, sr, INT_GAMMA),
        "modulated": R.modulated_deform_roi_pool(X8, INT_ROIS, off, mask, (2, 2), 1.0, sr, INT_GAMMA),
        "ps_roi_align": R.ps_roi_align(X8, *args),
        "deform_ps": R.deform_ps_roi_pool(X8, INT_ROIS, off, (2, 2), 1.0, sr, INT_GAMMA),
    }
    want = {
        "roi_align": brute_pool(X8, INT_ROIS, 2, 2, 1.0, sr),
        "deform_roi_pool": brute_pool(X8, INT_ROIS, 2, 2, 1.0, sr, offset=off, gamma=INT_GAMMA),
        "modulated": brute_pool(X8, INT_ROIS, 2, 2, 1.0, sr, offset=off, mask=mask, gamma=INT_GAMMA),
        "ps_roi_align": brute_pool(X8, INT_ROIS, 2, 2, 1.0, sr, ps=True),
        "deform_ps": brute_pool(X8, INT_ROIS, 2, 2, 1.0, sr, offset=off, gamma=INT_GAMMA, ps=True),
    }
    for name in got:
        np.testing.assert_allclose(got[name], want[name], rtol=0, atol=1e-12, err_msg=name)
        assert np.all(got[name][4] == 0.0), name  # the far-outside RoI pools to exactly 0
    assert np.all(got["deform_roi_pool"][2, :, 1, 1] == 0.0)  # the far-pushed bin
    # on integer samples the value is the pixel itself: the inside RoI's bin (0, 0) is a plain 2x2 mean
    np.testing.assert_allclose(got["roi_align"][2, :, 0, 0], X8[0, :, 0:2, 1:3].mean(axis=(1, 2)), atol=1e-12)
    # exactly on y = -1 / x = -1 the RoI rule clamps to row / column 0 (torchvision), not 0
    corner = R.roi_align(X8, np.array([[0, -0.5, -0.5, -0.5, -0.5]]), 1, 1.0, 1)  # one sample at (-1, -1)
    np.testing.assert_allclose(corner[0, :, 0, 0], X8[0, :, 0, 0], atol=1e-15)


def test_roi_backward_fd_on_a_far_outside_and_border_roi():
    """Input gradients of every sampled op where some RoIs sit on the border and one far outside (K = 5):
    the far RoI contributes nothing, the others equal central differences (the forward is linear in x)."""
    off = _int_offsets(42) + 0.3  # fractional shifts for the offset op are fine for the input gradient
    mask = np.random.default_rng(43).uniform(0, 1, (len(INT_ROIS), 1, 2, 2))
    go = np.random.default_rng(44).standard_normal((len(INT_ROIS), 2, 2, 2))
    go8 = np.random.default_rng(45).standard_normal((len(INT_ROIS), 8, 2, 2))
    x8 = X8.copy()
    cases = [
        (lambda x: R.roi_align(x, INT_ROIS, 2, 1.0, 2), lambda: R.roi_align_backward(go8, x8, INT_ROIS, 2, 1.0, 2), go8),
        (lambda x: R.modulated_deform_roi_pool(x, INT_ROIS, off, mask, 2, 1.0, 2, INT_GAMMA),
         lambda: R.modulated_deform_roi_pool_backward(go8, x8, INT_ROIS, off, mask, 2, 1.0, 2, INT_GAMMA).input, go8),
        (lambda x: R.ps_roi_align(x, INT_ROIS, 2, 1.0, 2), lambda: R.ps_roi_align_backward(go, x8, INT_ROIS, 2, 1.0, 2), go),
        (lambda x: R.deform_ps_roi_pool(x, INT_ROIS, off, 2, 1.0, 2, INT_GAMMA),
         lambda: R.deform_ps_roi_pool_backward(go, x8, INT_ROIS, off, 2, 1.0, 2, INT_GAMMA).input, go),
    ]
    for fwd, bwd, g in cases:
        got = bwd()
        np.testing.assert_allclose(got, central_diff(lambda x: float((fwd(x) * g).sum()), x8.copy()), atol=1e-8)
        assert np.abs(got).max() > 0.05


# ----------------------------------------------------------------------------------------------------------
# Bad input, every op
# ----------------------------------------------------------------------------------------------------------

_X = np.zeros((2, 8, 5, 5))
_BOX = np.array([[1, 0, 0, 2, 2.0]])
_OFF = np.zeros((1, 2, 2, 2))
_MASK = np.ones((1, 1, 2, 2))
_GO = np.zeros((1, 8, 2, 2))
_GO_PS = np.zeros((1, 2, 2, 2))

OPS = {
    "roi_align": (lambda x, r, o, m: R.roi_align(x, r, 2), "boxes"),
    "roi_align_backward": (lambda x, r, o, m: R.roi_align_backward(_GO, x, r, 2), "boxes"),
    "roi_pool": (lambda x, r, o, m: R.roi_pool(x, r, 2), "boxes"),
    "roi_pool_backward": (lambda x, r, o, m: R.roi_pool_backward(_GO, x, r, 2), "boxes"),
    "deform_roi_pool": (lambda x, r, o, m: R.deform_roi_pool(x, r, o, 2), "rois"),
    "deform_roi_pool_backward": (lambda x, r, o, m: R.deform_roi_pool_backward(_GO, x, r, o, 2), "rois"),
    "modulated": (lambda x, r, o, m: R.modulated_deform_roi_pool(x, r, o, m, 2), "rois"),
    "modulated_backward": (lambda x, r, o, m: R.modulated_deform_roi_pool_backward(_GO, x, r, o, m, 2), "rois"),
    "ps_roi_align": (lambda x, r, o, m: R.ps_roi_align(x, r, 2), "boxes"),
    "ps_roi_align_backward": (lambda x, r, o, m: R.ps_roi_align_backward(_GO_PS, x, r, 2), "boxes"),
    "deform_ps": (lambda x, r, o, m: R.deform_ps_roi_pool(x, r, o, 2), "rois"),
    "deform_ps_backward": (lambda x, r, o, m: R.deform_ps_roi_pool_backward(_GO_PS, x, r, o, 2), "rois"),
}


@pytest.mark.parametrize("op", list(OPS))
def test_every_roi_op_rejects_bad_input_naming_the_argument(op):
    call, rname = OPS[op]
    bad = [
        (dict(x=np.zeros((8, 5, 5))), ValueError, ["input", "4-D", "[N, C, H, W]", "[8, 5, 5]"]),
        (dict(r=np.array([[2, 0, 0, 2, 2.0]])), ValueError, [rname, "batch index 2.0", "[0, 1]"]),
        (dict(r=np.array([[0, 3, 0, 2, 2.0]])), ValueError, [rname, "x1 <= x2"]),
        (dict(r=np.array([[0, 0, 0, np.inf, 2.0]])), ValueError, [rname, "non-finite"]),
        (dict(r=np.zeros((1, 4))), ValueError, [rname, "[K, 5]"]),
    ]
    if "deform" in op or "modulated" in op:
        bad += [
            (dict(o=np.zeros((1, 3, 2, 2))), ValueError, ["offset", "[K, 2, ph, pw] = [1, 2, 2, 2]", "[1, 3, 2, 2]"]),
            (dict(o=np.zeros((2, 2, 2, 2))), ValueError, ["offset", "[1, 2, 2, 2]"]),
            (dict(o=np.full((1, 2, 2, 2), np.nan)), ValueError, ["offset", "finite"]),
        ]
    if "modulated" in op:
        bad += [
            (dict(m=np.ones((1, 2, 2))), ValueError, ["mask", "[K, 1, ph, pw] = [1, 1, 2, 2]"]),
            (dict(m=np.full((1, 1, 2, 2), -np.inf)), ValueError, ["mask", "finite"]),
        ]
    for change, exc, words in bad:
        a = dict(x=_X, r=_BOX, o=_OFF, m=_MASK)
        a.update(change)
        with pytest.raises(exc) as info:
            call(a["x"], a["r"], a["o"], a["m"])
        for w in words:
            assert w in str(info.value), (op, change, w, str(info.value))
    # the valid call goes through (the failures above come from the changed argument alone)
    call(_X, _BOX, _OFF, _MASK)


@pytest.mark.parametrize("op", list(OPS))
def test_every_roi_op_gives_an_empty_result_for_empty_rois(op):
    call, _ = OPS[op]
    k0 = dict(r=np.zeros((0, 5)), o=np.zeros((0, 2, 2, 2)), m=np.zeros((0, 1, 2, 2)))
    if "backward" in op:
        go = _GO_PS if "ps" in op else _GO
        fn = {
            "roi_align_backward": lambda: R.roi_align_backward(go[:0], _X, k0["r"], 2),
            "roi_pool_backward": lambda: R.roi_pool_backward(go[:0], _X, k0["r"], 2),
            "deform_roi_pool_backward": lambda: R.deform_roi_pool_backward(go[:0], _X, k0["r"], k0["o"], 2).input,
            "modulated_backward": lambda: R.modulated_deform_roi_pool_backward(go[:0], _X, k0["r"], k0["o"], k0["m"], 2).input,
            "ps_roi_align_backward": lambda: R.ps_roi_align_backward(go[:0], _X, k0["r"], 2),
            "deform_ps_backward": lambda: R.deform_ps_roi_pool_backward(go[:0], _X, k0["r"], k0["o"], 2).input,
        }[op]
        g = fn()
        assert g.shape == _X.shape and np.all(g == 0)
    else:
        out = call(_X, k0["r"], k0["o"], k0["m"])
        c_out = 2 if "ps" in op else 8
        assert out.shape == (0, c_out, 2, 2) and out.dtype == _X.dtype


@pytest.mark.parametrize(
    "name", ["roi_align", "roi_pool", "deform_roi_pool", "modulated_deform_roi_pool", "ps_roi_align", "deform_ps_roi_pool"]
)
def test_same_signature_as_the_pytorch_tier_and_a_matching_backward(name):
    """Issue 3: same names, argument names, order and defaults as dcn_lessons.ops; ``*_backward`` takes
    grad_output and then exactly the forward's arguments."""
    import inspect

    from dcn_lessons import ops

    def params(f):
        return [(p.name, p.default) for p in inspect.signature(f).parameters.values()]

    fwd, bwd = getattr(R, name), getattr(R, name + "_backward")
    assert params(fwd) == params(getattr(ops, name))
    assert params(bwd)[0][0] == "grad_output" and params(bwd)[1:] == params(fwd)
