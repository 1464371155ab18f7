"""Checks for lesson 01 (bilinear interpolation). Globals of ``_core.py`` are injected by the loader.

* q1 :func:`check_bilinear` -- bilinear sampling, DCNv1 Eq. (3)-(4) in its four-neighbour form.
* q2 :func:`check_position_grad` -- its derivative with respect to the position, by the course's rule.

Each check runs the learner's function on small cases, in an order that isolates one idea per step
(integers, fractions, negative positions, the map's edge, outside), and when a step fails it compares
the answer with the typical wrong answers (x and y swapped, ``int()`` instead of ``floor``, clamping
instead of zeros, central instead of forward differences ...) to say which mistake it looks like. The hints
point to the section of the lesson to re-read; they never spell out the formula the exercise asks for. Both
checks name the package functions that compute the same thing (``unavailable``): a graded second run without
them tells an answer that computes from one that only calls them.
"""
import numpy as np  # noqa: F401


# ------------------------------------------------------------------------------------- typical mistakes
def _floor_sample(img, py, px, floor=np.floor, clamp=False):
    """Four-neighbour bilinear with a pluggable floor and border; the check's model of common slips."""
    H, W = img.shape
    y0, x0 = floor(py), floor(px)
    ly, lx = py - y0, px - x0
    y0, x0 = y0.astype(int), x0.astype(int)

    def read(yi, xi):
        if clamp:
            return img[np.clip(yi, 0, H - 1), np.clip(xi, 0, W - 1)]
        ok = (yi >= 0) & (yi < H) & (xi >= 0) & (xi < W)
        return img[np.clip(yi, 0, H - 1), np.clip(xi, 0, W - 1)] * ok

    return ((1 - ly) * (1 - lx) * read(y0, x0) + (1 - ly) * lx * read(y0, x0 + 1)
            + ly * (1 - lx) * read(y0 + 1, x0) + ly * lx * read(y0 + 1, x0 + 1))


def _sample_mistakes(img, py, px):
    from dcn_lessons.reference import bilinear_sample

    out = {}
    H, W = img.shape
    if H == W:
        out["x and y are swapped: row index comes from py, column index from px (img[y, x], not img[x, y])"] = (
            bilinear_sample(img.T, py, px))
        out["the weights of x and y are swapped: the fractional part of py weighs the rows, that of px the "
            "columns (re-read §2)"] = _swapped_weights(img, py, px)
    out["you rounded to the nearest pixel; bilinear interpolation mixes the four neighbours of p, each with its "
        "own weight (re-read §2)"] = _nearest(img, py, px)
    out["int()/astype(int) truncates toward zero (int(-0.5) is 0, floor(-0.5) is -1): the lower neighbour of "
        "a negative position needs np.floor (the hints of §4)"] = _floor_sample(img, py, px, floor=np.trunc)
    out["you clamped to the edge pixel; Eq. (3) sums only over q inside the map, so a corner off the map "
        "reads 0 (the value fades to 0 at y = -1 and y = H)"] = _floor_sample(img, py, px, clamp=True)
    return out


def _swapped_weights(img, py, px):
    H, W = img.shape
    y0, x0 = np.floor(py).astype(int), np.floor(px).astype(int)
    ly, lx = py - np.floor(py), px - np.floor(px)
    ok = (y0 >= 0) & (x0 >= 0) & (y0 + 1 < H) & (x0 + 1 < W)
    y0, x0 = np.clip(y0, 0, H - 2), np.clip(x0, 0, W - 2)
    v = ((1 - lx) * (1 - ly) * img[y0, x0] + (1 - lx) * ly * img[y0, x0 + 1]
         + lx * (1 - ly) * img[y0 + 1, x0] + lx * ly * img[y0 + 1, x0 + 1])
    return np.where(ok, v, np.nan)


def _nearest(img, py, px):
    H, W = img.shape
    yi, xi = np.round(py).astype(int), np.round(px).astype(int)
    ok = (yi >= 0) & (yi < H) & (xi >= 0) & (xi < W)
    return img[np.clip(yi, 0, H - 1), np.clip(xi, 0, W - 1)] * ok


def _diagnose(got, mistakes):
    """The first typical mistake that reproduces ``got``, as a sentence, or ''."""
    try:
        arr = np.asarray(got, dtype=np.float64)
    except (TypeError, ValueError):
        return ""
    for sentence, want in mistakes.items():
        want = np.asarray(want, dtype=np.float64)
        if arr.shape == want.shape and np.allclose(arr, want, atol=1e-8, equal_nan=False):
            return sentence
    return ""


def _expect(got, want, what, hint, mistakes):
    try:
        expect_close(got, want, what=what, hint=hint)
    except ExerciseError as e:
        found = _diagnose(got, mistakes)
        if found:
            raise ExerciseError(f"{e}\nIt looks like {found}.") from None
        raise


# ---------------------------------------------------------------------------------------------- q1
SEED_Q1 = 1


def _bilinear_cases(seed):
    """The steps of q1, one idea each: integers, shapes, fractions, the edge band, outside. The positions are the
    documented ones; the maps (and the random positions) come from the seed."""
    rng = np.random.default_rng(seed)
    img = rng.random((5, 7)) + 0.5
    sq = rng.random((6, 6)) + 0.5  # square, so swapped axes give wrong values, not an IndexError
    py2, px2 = rng.uniform(0.5, 3.5, (2, 3)), rng.uniform(0.5, 5.5, (2, 3))
    py3, px3 = rng.uniform(0.0, 4.9, 12), rng.uniform(0.0, 4.9, 12)
    shape_what = "my_bilinear(img, py, px) with py, px of shape [2, 3]"
    steps = [
        # 1. integers: p = q reads x(q)
        (img, np.array([0.0, 2.0, 4.0, 3.0]), np.array([0.0, 5.0, 1.0, 6.0]),
         "my_bilinear(img, py, px) at integer positions",
         "at p = q the weight of q is 1 and the other three are 0, so the result is img[py, px] itself"),
        # 2. shapes: any S in, the same S out
        (img, py2, px2, shape_what, None),
        # 3. fractions inside the map
        (sq, py3, px3, "my_bilinear(img, py, px) at fractional positions inside the map",
         "the four-neighbour form of §2: four corners, each weighted by the area of the rectangle opposite it "
         "(the explorer of §3 draws them)"),
        (img, py2, px2, shape_what, "compute elementwise: every line of your function should work on whole arrays"),
        # 4. the edge band -1 < p < 0 and H-1 < p < H: one or two corners are off the map and read 0
        (img, np.array([-0.5, -0.25, 4.5, 4.75, 2.0, 2.5, -0.5, 4.5]),
         np.array([3.0, 2.5, 1.0, 3.5, -0.5, 6.25, -0.5, 6.5]),
         "my_bilinear(img, py, px) near the edge (-1 < p < 0 or H-1 < p < H)",
         "Eq. (3) sums only over q inside the map: a corner off the map reads 0 (no clamping, no crash); "
         "for a 5x7 map, row 5 and column 7 are off the map, and so are row -1 and column -1"),
        # 5. outside: the value is 0
        (img, np.array([-1.0, -3.2, 5.0, 9.5, 2.0, 2.0, 1.5]), np.array([2.0, 3.0, 4.0, 1.0, -1.0, 7.0, 12.0]),
         "my_bilinear(img, py, px) outside the map (y <= -1, y >= H, x <= -1 or x >= W)",
         "all four corners are off the map there, so the value is 0; make sure far-away positions do not crash"),
    ]
    return [{"args": [image, py, px], "call": what, "what": what, "hint": hint} for image, py, px, what, hint in steps]


def _bilinear_verify(case, got):
    from dcn_lessons.reference import bilinear_sample

    image, py, px = case["args"]
    if case["hint"] is None:  # the shape step
        expect_shape(got, py.shape, what=case["what"])
        return
    _expect(got, bilinear_sample(image, py, px), case["what"], case["hint"], _sample_mistakes(image, py, px))


#: The package's bilinear sampling, in every tier (the reference's four-neighbour and literal forms, its weights,
#: the PyTorch operator, and the backends a deformable convolution with a 1x1 kernel would sample through).
SAMPLERS = ("dcn_lessons.reference.bilinear:bilinear_sample", "dcn_lessons.reference.bilinear:bilinear_sample_literal",
            "dcn_lessons.reference.bilinear:bilinear_weights", "dcn_lessons.reference.bilinear:_sample",
            "dcn_lessons.ops.bilinear:bilinear_sample", "dcn_lessons.backends:select")

#: q1: ``fn(img, py, px)`` samples the map ``img [H, W]`` at the positions ``(py, px)`` (two float arrays of one
#: shape S) by DCNv1 Eq. (3)-(4) in its four-neighbour form, and returns an array of shape S; a corner outside
#: the map reads 0.
check_bilinear = Question(_bilinear_cases, _bilinear_verify, seed=SEED_Q1, unavailable=SAMPLERS)


# ---------------------------------------------------------------------------------------------- q2
def _grad_mistakes(img, py, px, gy, gx):
    """Typical wrong position gradients, each as (gy, gx) stacked [2, *S]."""
    from dcn_lessons.reference import bilinear_sample

    h = 1e-6
    c_y = (bilinear_sample(img, py + h, px) - bilinear_sample(img, py - h, px)) / (2 * h)
    c_x = (bilinear_sample(img, py, px + h) - bilinear_sample(img, py, px - h)) / (2 * h)
    b_y = (bilinear_sample(img, py, px) - bilinear_sample(img, py - h, px)) / h
    b_x = (bilinear_sample(img, py, px) - bilinear_sample(img, py, px - h)) / h
    H, W = img.shape
    clamped = np.stack(_floor_grad(np.pad(img, 1, mode="edge"), py + 1, px + 1, H + 2, W + 2))
    inside = (py > -1) & (py < H) & (px > -1) & (px < W)
    return {
        "(gx, gy): return the row (y) gradient first, then the column (x) gradient": np.stack([gx, gy]),
        "the sign is flipped: moving p down (py grows) moves weight from the upper row to the lower one "
        "(re-read §6)": -np.stack([gy, gx]),
        "the central difference, i.e. the average of the slopes left and right of the integer; the rule "
        "holds floor(p) fixed, so at an integer q it is the forward difference x(q+1) - x(q)": np.stack([c_y, c_x]),
        "the backward difference x(q) - x(q-1) at integers; the rule holds floor(p) fixed, so it is the "
        "forward difference x(q+1) - x(q)": np.stack([b_y, b_x]),
        "you clamped corners to the edge pixel; corners off the map read 0, as in q1": clamped * inside,
        "you forgot the inside test of §7: the gradient is 0 unless -1 < y < H and -1 < x < W, so y = -1 itself "
        "counts as outside (that line is where torchvision's kernels differ: they return x(0) - 0 there; this "
        "course follows mmcv and the original DCNv2 code)": np.stack(_floor_grad(np.pad(img, 1), py + 1, px + 1,
                                                                              H + 2, W + 2)),
        "the value changes when p moves between pixels, so its derivative is not 0 there (re-read §6); yours is "
        "0 here": np.zeros((2,) + py.shape),
    }


def _floor_grad(img, py, px, H, W):
    """Floor-held gradient with zero-reading off-map corners and no inside test (a model of slips)."""
    py = np.clip(py, -2.0, H + 1.0)
    px = np.clip(px, -2.0, W + 1.0)
    y0, x0 = np.floor(py).astype(int), np.floor(px).astype(int)
    ly, lx = py - np.floor(py), px - np.floor(px)

    def read(yi, xi):
        ok = (yi >= 0) & (yi < H) & (xi >= 0) & (xi < W)
        return img[np.clip(yi, 0, H - 1), np.clip(xi, 0, W - 1)] * ok

    v00, v01, v10, v11 = read(y0, x0), read(y0, x0 + 1), read(y0 + 1, x0), read(y0 + 1, x0 + 1)
    return (1 - lx) * (v10 - v00) + lx * (v11 - v01), (1 - ly) * (v01 - v00) + ly * (v11 - v10)


SEED_Q2 = 2


def _position_grad_cases(seed):
    """The steps of q2: fractions, integers (where training starts), just below integers, the edge band, outside
    and the line y = -1. The positions are the documented ones (the fractional ones drawn from the seed), the map
    too."""
    rng = np.random.default_rng(seed)
    img = rng.random((5, 7)) + 0.5
    py, px = rng.uniform(0.05, 3.95, 10), rng.uniform(0.05, 5.95, 10)
    py = np.where(np.abs(py - np.round(py)) < 0.05, py + 0.1, py)
    px = np.where(np.abs(px - np.round(px)) < 0.05, px + 0.1, px)
    steps = [
        # 1. fractions inside, away from integers and the edge: the true derivative
        (py, px, "my_position_grad(img, py, px) at fractional positions inside the map",
         "differentiate the four-neighbour form of §2 in py and in px, the four corners held fixed (§6)"),
        # 2. integers: the rule (offsets start at zero, so this is where training starts)
        (np.array([1.0, 2.0, 0.0, 3.0, 2.5, 1.0]), np.array([1.0, 4.0, 2.0, 0.5, 3.0, 5.0]),
         "my_position_grad(img, py, px) at integer coordinates",
         "the kink: the rule of §7 holds floor(p) fixed, which makes the derivative at an integer the slope on its "
         "right; with zero offsets every sample sits here at the start of training"),
        # 3. just below an integer: floor(p) is the integer below, the slope that of the segment on the left
        (np.array([2.0, 1.0, 3.0, 2.5, 1.0]) - np.array([1e-7, 1e-7, 1e-7, 0.0, 1e-7]),
         np.array([3.0, 2.5, 4.0, 1.0, 5.0]) - np.array([0.0, 0.0, 1e-7, 1e-7, 1e-7]),
         "my_position_grad(img, py, px) a hair below integer coordinates",
         "a hair below an integer q, floor(p) is q - 1: the derivative is the slope of the segment on the left "
         "of q (a finite difference that steps across q measures a mix of both sides)"),
        # 4. the edge band: corners off the map read 0 and still count in the difference
        (np.array([4.0, 4.5, -0.5, 2.0, 1.5, -0.75]), np.array([2.0, 3.25, 1.5, 6.0, 6.5, -0.5]),
         "my_position_grad(img, py, px) near the edge (-1 < p < 0 or H-1 <= p < H)",
         "a corner off the map reads 0 and is still part of the difference (§7: the corners are floor(p) and "
         "floor(p) + 1, whether or not they lie on the map)"),
        # 5. outside, and y = -1 / x = -1 exactly: 0
        (np.array([-1.0, 2.0, -1.5, 5.0, 2.0, 7.0]), np.array([2.0, -1.0, 3.0, 1.0, 7.5, 2.0]),
         "my_position_grad(img, py, px) outside the map (y <= -1, y >= H, x <= -1 or x >= W)",
         "a sample is inside only when -1 < y < H and -1 < x < W; outside, value and gradient are 0 "
         "(y = -1 exactly counts as outside: the rule of §7)"),
    ]
    return [{"args": [img, py, px], "call": what, "what": what, "hint": hint} for py, px, what, hint in steps]


def _position_grad_verify(case, got):
    from dcn_lessons.reference import bilinear_sample_backward

    img, py, px = case["args"]
    what = case["what"]
    if got is None:
        raise ExerciseError(f"{what}: your function returned None -- did you forget `return gy, gx`?")
    if not isinstance(got, (tuple, list)) or len(got) != 2:
        kind = got.type_name if isinstance(got, Opaque) else type(got).__name__
        raise ExerciseError(f"{what}: expected a pair (gy, gx), got {kind}"
                            + (f" of length {len(got)}" if np.ndim(got) >= 1 and not isinstance(got, Opaque) else ""))
    _, gy, gx = bilinear_sample_backward(np.ones(py.shape), img, py, px)
    mistakes = _grad_mistakes(img, py, px, gy, gx)
    stacked = np.stack([expect_shape(got[0], py.shape, what=f"{what}: gy"),
                        expect_shape(got[1], py.shape, what=f"{what}: gx")])
    _expect(stacked, np.stack([gy, gx]), what + " (row 0: gy, row 1: gx)", case["hint"], mistakes)


#: q2: ``fn(img, py, px)`` returns ``(gy, gx)``, the derivative of the bilinear sample ``x(p)`` (q1) with respect
#: to ``py`` and ``px``, each of shape S, by the course's position rule (mmcv's and the original DCNv2 code's;
#: torchvision's except on the lines y = -1 and x = -1, README conventions): 0 unless ``-1 < y < H`` and
#: ``-1 < x < W``; inside, differentiate the four-neighbour form with ``floor(p)`` held fixed, so at an integer
#: coordinate it is the forward difference ``x(q+1) - x(q)``.
check_position_grad = Question(
    _position_grad_cases, _position_grad_verify, seed=SEED_Q2,
    unavailable=("dcn_lessons.reference.bilinear:bilinear_sample_backward", "dcn_lessons.reference.bilinear:_position_grad",
                 "dcn_lessons.reference.deform_conv:deform_col2im_coord",
                 "dcn_lessons.reference.deform_conv:deform_conv2d_backward",
                 "dcn_lessons.ops._primitives:position_grads") + SAMPLERS,
)
