"""Checks for lesson 02 (deformable convolution). Globals of ``_core.py`` are injected by the loader.

* q1 :func:`check_deform_im2col` -- the deformable im2col of one image and one offset group (DCNv1 Eq. 2-3).
* q2 :func:`check_deform_col2im` -- its transpose, the input gradient (col2im), with the adjoint test
  ``<im2col(x), g> = <x, col2im(g)>``.
* q3 :func:`check_offset_grad` -- the offset gradient of one output location (DCNv1 App. A, Eq. 7).

Each check compares with the package's NumPy reference and, when the answer is wrong, tries the
typical mistakes (Δy and Δx swapped, rows ordered k-major, padding forgotten, repeated indices added once, a
central instead of a forward difference at integer positions, torchvision's rule on the line y = -1, ...) so the
message can say which one it was; the hints point to the lesson's sections, never to a line of the answer. Each
check names the package functions that compute the same thing (``unavailable``): a graded second run without
them tells an answer that computes from one that only calls them. The lesson's own tools stay available
(``bilinear_sample``, lesson 01's answer).
"""
import numpy as np  # noqa: F401


def _swap_yx(offset):
    """Offsets [2K, ...] with the Δy and Δx channels of every kernel point exchanged."""
    off = np.asarray(offset)
    return off.reshape(-1, 2, *off.shape[1:])[:, ::-1].reshape(off.shape).copy()


# ---------------------------------------------------------------------------------------------- q1

def _im2col_ref(x, offset, kernel_size, padding):
    from dcn_lessons.reference import deform_im2col

    return deform_im2col(x[None], offset[None], None, kernel_size, padding=padding)[0]


SEED_Q1 = 2


def _im2col_cases(seed):
    """Five shapes, one idea each (zero, integer, fractional offsets; padding 0; a 2x2 kernel); data from the seed."""
    rng = np.random.default_rng(seed)
    steps = [
        (1, 5, 6, 3, 1, "zero", "with zero offsets the columns are those of a plain im2col (stride 1, padding 1)"),
        (1, 5, 6, 3, 1, "integer", "integer offsets read whole pixels; positions off the map read 0"),
        (2, 6, 5, 3, 1, "fractional", "fractional offsets are read with bilinear interpolation (lesson 01)"),
        (2, 5, 5, 3, 0, "fractional", "with padding 0 the output is smaller: Ho = H - kernel_size + 1"),
        (3, 4, 6, 2, 1, "fractional", "a 2x2 kernel with padding 1: K = 4 points, Ho = H + 1"),
    ]
    cases = []
    for C, H, W, k, p, kind, hint in steps:
        K, Ho, Wo = k * k, H + 2 * p - k + 1, W + 2 * p - k + 1
        x = rng.normal(size=(C, H, W))
        if kind == "zero":
            off = np.zeros((2 * K, Ho, Wo))
        elif kind == "integer":
            off = rng.integers(-2, 3, size=(2 * K, Ho, Wo)).astype(np.float64)
        else:
            off = rng.uniform(-1.5, 1.5, size=(2 * K, Ho, Wo))
        what = f"my_deform_im2col(x [{C}, {H}, {W}], offset [{2 * K}, {Ho}, {Wo}], kernel_size={k}, padding={p})"
        cases.append({"args": [x, off, k, p], "call": what, "what": what, "hint": hint})
    return cases


def _im2col_verify(case, got):
    x, off, k, p = case["args"]
    what, hint = case["what"], case["hint"]
    C, H, W = x.shape
    K, Ho, Wo = k * k, H + 2 * p - k + 1, W + 2 * p - k + 1
    want = _im2col_ref(x, off, k, p)
    arr = _np(got, what)
    if arr.shape != want.shape:
        if arr.shape == want.T.shape:
            raise ExerciseError(f"{what}: expected shape {list(want.shape)} = [C*K, Ho*Wo], got {list(arr.shape)}"
                                f"\nHint: one ROW per (channel, kernel point), one COLUMN per output location")
        expect_shape(arr, want.shape, what + " (expected [C*K, Ho*Wo])")
    if np.allclose(arr, want, atol=1e-8, rtol=1e-6):
        return
    variants = [
        ("Δy and Δx swapped", _im2col_ref(x, _swap_yx(off), k, p)),
        ("rows ordered k*C + c", want.reshape(C, K, -1).transpose(1, 0, 2).reshape(C * K, -1)),
        ("columns ordered x*Ho + y", want.reshape(-1, Ho, Wo).transpose(0, 2, 1).reshape(C * K, -1)),
    ]
    pad_wrong = np.zeros_like(want)
    Hp, Wp = H + 2 * p, W + 2 * p  # a learner who sampled at y + i + Δy (padding forgotten)
    xpad = np.zeros((C, Hp, Wp))
    xpad[:, :H, :W] = x
    try:
        shifted = _im2col_ref(xpad, off, k, 0)  # positions y + i + Δy on a map padded at the bottom/right
        if shifted.shape == want.shape:
            pad_wrong = shifted
    except ValueError:
        pass
    variants.append(("padding forgotten", pad_wrong))
    hints = {
        "Δy and Δx swapped": "channel 2k of `offset` is Δy (moves along rows), channel 2k+1 is Δx",
        "rows ordered k*C + c": "row c*K + k: all K kernel points of channel 0 first, then channel 1, ...",
        "columns ordered x*Ho + y": "column y*Wo + x: output locations in row-major order",
        "padding forgotten": "re-read the exercise's second bullet (§4): where does kernel point (i, j) of output "
                             "(y, x) read when there is padding?",
    }
    mistake = _first_match(arr, variants)
    if mistake is not None:
        raise ExerciseError(f"{what}: your columns match the answer with {mistake}.\nHint: {hints[mistake]}")
    expect_close(arr, want, what=what, hint=hint)


#: The package's deformable im2col in every tier: the reference's (and the forward passes built on it, whose
#: one-hot weights would give the columns back), the PyTorch operator, and the backends behind it.
IM2COL = ("dcn_lessons.reference.deform_conv:deform_im2col", "dcn_lessons.reference.deform_conv:_im2col",
          "dcn_lessons.reference.deform_conv:deform_conv2d", "dcn_lessons.reference.deform_conv:deform_conv2d_loop",
          "dcn_lessons.ops.deform_conv:deform_im2col", "dcn_lessons.backends:select")

#: q1: ``fn(x, offset, kernel_size, padding)`` -> columns ``[C*K, Ho*Wo]`` (DCNv1 Eq. 2-3, App. A). x ``[C, H, W]``;
#: offset ``[2*K, Ho, Wo]`` (one offset group, channel 2k = Δy, 2k+1 = Δx of kernel point k = i*kernel_size + j);
#: stride 1, dilation 1; row ``c*K + k``, column ``y*Wo + x``; off-map neighbours read 0.
check_deform_im2col = Question(_im2col_cases, _im2col_verify, seed=SEED_Q1, unavailable=IM2COL)


# ---------------------------------------------------------------------------------------------- q2

def _col2im_ref(grad_columns, offset, kernel_size, padding, shape):
    from dcn_lessons.reference import deform_col2im

    return deform_col2im(grad_columns[None], offset[None], None, (1, *shape), kernel_size, padding=padding)[0]


def _scatter_variant(grad_columns, offset, kernel_size, padding, shape, mode):
    """col2im as a learner might write it wrong: ``mode`` ``"add-once"`` (``a[idx] += v`` with repeated indices,
    kernel point by kernel point and corner by corner: a repeated index keeps one contribution), ``"clamp"``
    (corners off the map moved onto the border instead of dropped), ``"floor"`` (the whole entry to the corner
    floor(p), no bilinear weights) or ``"flipped"`` (each corner given the weight of the opposite one)."""
    C, H, W = shape
    K = kernel_size * kernel_size
    _, Ho, Wo = offset.shape
    g = np.asarray(grad_columns, dtype=np.float64).reshape(C, K, Ho, Wo)
    out = np.zeros((C, H, W))
    for k in range(K):
        i, j = divmod(k, kernel_size)
        py = np.arange(Ho)[:, None] - padding + i + offset[2 * k]
        px = np.arange(Wo)[None, :] - padding + j + offset[2 * k + 1]
        y0, x0 = np.floor(py), np.floor(px)
        ly, lx = py - y0, px - x0
        y0, x0 = y0.astype(int), x0.astype(int)
        corners = [(0, 0, (1 - ly) * (1 - lx)), (0, 1, (1 - ly) * lx), (1, 0, ly * (1 - lx)), (1, 1, ly * lx)]
        if mode == "floor":
            corners = [(0, 0, np.ones_like(ly))]
        elif mode == "flipped":
            corners = [(a, b, w) for (a, b, _), (_, _, w) in zip(corners, corners[::-1])]
        for a, b, w in corners:
            yi, xi = y0 + a, x0 + b
            on_map = (yi >= 0) & (yi < H) & (xi >= 0) & (xi < W)
            if mode == "clamp":
                on_map = np.ones_like(on_map)
            yc, xc = np.clip(yi, 0, H - 1), np.clip(xi, 0, W - 1)
            v = g[:, k] * (w * on_map)[None]
            if mode == "add-once":
                out[:, yc, xc] += v
            else:
                np.add.at(out, (slice(None), yc, xc), v)
    return out


SEED_Q2 = 5


def _col2im_cases(seed):
    """Five shapes, one idea each (zero, integer, fractional offsets; padding 0; a 2x2 kernel); data from the seed.
    Each case keeps an input ``x`` the check uses for the adjoint test (never handed to the learner)."""
    rng = np.random.default_rng(seed)
    steps = [
        (1, 5, 6, 3, 1, "zero", "with zero offsets each entry goes back to the pixel it was read from, and a pixel "
         "read by several kernel points gets all their entries (re-read §5: col2im scatters back)"),
        (1, 5, 6, 3, 1, "integer", "integer offsets send each entry back whole to one pixel; two entries may go to "
         "the same pixel and both must add (NumPy's `a[idx] += v` adds once where idx repeats; np.add.at adds "
         "every time); positions off the map give nothing back"),
        (2, 6, 5, 3, 1, "fractional", "a fractional position shares its entry among its four corners, with the "
         "weights it was read with (lesson 01)"),
        (2, 5, 5, 3, 0, "fractional", "with padding 0 the output is smaller: Ho = H - kernel_size + 1"),
        (3, 4, 6, 2, 1, "fractional", "a 2x2 kernel with padding 1: K = 4 points, Ho = H + 1"),
    ]
    cases = []
    for C, H, W, k, p, kind, hint in steps:
        K, Ho, Wo = k * k, H + 2 * p - k + 1, W + 2 * p - k + 1
        if kind == "zero":
            off = np.zeros((2 * K, Ho, Wo))
        elif kind == "integer":
            off = rng.integers(-2, 3, size=(2 * K, Ho, Wo)).astype(np.float64)
        else:
            off = rng.uniform(-1.5, 1.5, size=(2 * K, Ho, Wo))
        gc = rng.normal(size=(C * K, Ho * Wo))
        what = (f"my_deform_col2im(grad_columns [{C * K}, {Ho * Wo}], offset [{2 * K}, {Ho}, {Wo}], kernel_size={k}, "
                f"padding={p}, input_shape=({C}, {H}, {W}))")
        cases.append({"args": [gc, off, k, p, (C, H, W)], "call": what, "what": what, "hint": hint,
                      "x": rng.normal(size=(C, H, W))})
    return cases


_COL2IM_HINTS = {
    "repeated indices added once": "NumPy's `a[idx] += v` adds only once where idx repeats (two output locations "
                                   "reading the same pixel); np.add.at adds every contribution",
    "corners off the map clamped onto the border": "a corner off the map was read as 0 in the forward pass, so it "
                                                   "gets nothing back (re-read lesson 01, §2)",
    "no bilinear weights": "each entry is shared among the four corners of its position, with the weights it was "
                           "read with (lesson 01, §2)",
    "each corner given the weight of the opposite one": "a corner's weight is the area of the rectangle OPPOSITE "
                                                        "it (lesson 01, §3)",
    "Δy and Δx swapped": "channel 2k of `offset` is Δy (moves along rows), channel 2k+1 is Δx",
    "rows read as k*C + c": "row c*K + k of grad_columns belongs to channel c and kernel point k (the layout of q1)",
    "padding forgotten": "the positions are those of q1: where does kernel point (i, j) of output (y, x) read when "
                         "there is padding?",
}


def _col2im_verify(case, got):
    gc, off, k, p, shape = case["args"]
    shape = tuple(int(v) for v in shape)
    what, hint = case["what"], case["hint"]
    C, H, W = shape
    K = k * k
    want = _col2im_ref(gc, off, k, p, shape)
    arr = _np(got, what)
    if arr.shape != want.shape:
        extra = ""
        if arr.size == want.size:
            extra = "\nHint: return the gradient with the input's shape (C, H, W)"
        raise ExerciseError(f"{what}: expected shape {list(want.shape)} = input_shape, got {list(arr.shape)}{extra}")
    if np.allclose(arr, want, atol=1e-8, rtol=1e-6):
        return
    x = case["x"]
    lhs = float(np.sum(_im2col_ref(x, off, k, p) * gc))
    rhs = float(np.sum(x * arr))
    adjoint = (f"\nThe adjoint test fails too: <im2col(x), g> = {lhs:.6g} but <x, col2im(g)> = {rhs:.6g} for a "
               "random x (col2im is the transpose of im2col, so the two must be equal)")
    variants = [
        ("repeated indices added once", _scatter_variant(gc, off, k, p, shape, "add-once")),
        ("corners off the map clamped onto the border", _scatter_variant(gc, off, k, p, shape, "clamp")),
    ]
    if not np.all(off == np.round(off)):  # on whole pixels these two are another mistake (a shift) or none
        variants += [
            ("no bilinear weights", _scatter_variant(gc, off, k, p, shape, "floor")),
            ("each corner given the weight of the opposite one", _scatter_variant(gc, off, k, p, shape, "flipped")),
        ]
    variants += [
        ("Δy and Δx swapped", _col2im_ref(gc, _swap_yx(off), k, p, shape)),
        ("rows read as k*C + c", _col2im_ref(gc.reshape(K, C, -1).transpose(1, 0, 2).reshape(C * K, -1), off, k, p,
                                             shape)),
        ("padding forgotten", _col2im_ref(gc, off + p, k, p, shape)),
    ]
    mistake = _first_match(arr, [(n, v) for n, v in variants if not np.allclose(v, want, atol=1e-8, rtol=1e-6)])
    if mistake is not None:
        raise ExerciseError(f"{what}: your gradient matches col2im with {mistake}.\nHint: {_COL2IM_HINTS[mistake]}"
                            + adjoint)
    try:
        expect_close(arr, want, what=what, hint=hint)
    except ExerciseError as e:
        raise ExerciseError(f"{e}{adjoint}") from None


#: The package's col2im in every tier: the reference's, the scatter inside its bilinear backward, the whole
#: backward (whose input gradient with one-hot weights is col2im), the PyTorch operator and the backends.
COL2IM = ("dcn_lessons.reference.deform_conv:deform_col2im", "dcn_lessons.reference.deform_conv:_col2im",
          "dcn_lessons.reference.deform_conv:deform_conv2d_backward",
          "dcn_lessons.reference.bilinear:bilinear_sample_backward", "dcn_lessons.reference.bilinear:_scatter",
          "dcn_lessons.ops.deform_conv:deform_col2im", "dcn_lessons.backends:select")

#: q2: ``fn(grad_columns, offset, kernel_size, padding, input_shape)`` -> ``[C, H, W]``: the gradient with respect
#: to the input x of ``<im2col(x), grad_columns>`` (col2im), im2col being q1's (one image, one offset group, stride
#: 1, dilation 1). grad_columns ``[C*K, Ho*Wo]``; offset ``[2*K, Ho, Wo]``; input_shape ``(C, H, W)``. Each entry goes
#: back to the in-map corners of its sampling position with the bilinear weights it was read with; corners off the
#: map get nothing. Checked against the reference and by the adjoint test ``<im2col(x), g> = <x, col2im(g)>``.
check_deform_col2im = Question(_col2im_cases, _col2im_verify, seed=SEED_Q2, unavailable=COL2IM + IM2COL)


# ---------------------------------------------------------------------------------------------- q3

def _offset_grad_ref(image, weight, offsets, y, x):
    """d out(y, x) / d(Δy_k, Δx_k) ``[K, 2]`` from the package's backward (one-hot grad_output)."""
    from dcn_lessons.reference import deform_conv2d_backward

    C, H, W = image.shape
    kh = weight.shape[-1]
    K = kh * kh
    rng = np.random.default_rng(7)
    field = rng.uniform(-1, 1, size=(1, 2 * K, H, W))  # other locations: anything
    field[0, :, y, x] = np.asarray(offsets, dtype=np.float64).reshape(-1)
    go = np.zeros((1, 1, H, W))
    go[0, 0, y, x] = 1.0
    grads = deform_conv2d_backward(go, image[None], field, weight[None], padding=kh // 2)
    return grads.offset[0, :, y, x].reshape(K, 2)


def _central_ref(image, weight, offsets, y, x, eps=1e-6):
    """The same derivative by central differences (what a learner without the floor rule gets)."""
    from dcn_lessons.reference import deform_conv2d

    C, H, W = image.shape
    K = weight.shape[-1] ** 2
    out = np.zeros((K, 2))
    base = np.zeros((1, 2 * K, H, W))
    for k in range(K):
        for a in range(2):
            f = []
            for s in (eps, -eps):
                fld = base.copy()
                fld[0, :, y, x] = np.asarray(offsets, dtype=np.float64).reshape(-1)
                fld[0, 2 * k + a, y, x] += s
                f.append(deform_conv2d(image[None], fld, weight[None], padding=1)[0, 0, y, x])
            out[k, a] = (f[0] - f[1]) / (2 * eps)
    return out


def _torchvision_rule(image, weight, offsets, y, x):
    """The same derivative by torchvision's rule: no inside test, so on the line y = -1 (x = -1) the forward
    difference x(0) - 0 instead of 0 (``get_coordinate_weight`` in torchvision's ``deform_conv2d_kernel.cpp``)."""
    C, H, W = image.shape
    out = np.zeros((9, 2))
    pad = np.zeros((C, H + 4, W + 4))
    pad[:, 2:-2, 2:-2] = image  # corners up to two pixels off the map read 0

    def v(a, b):
        return pad[:, a + 2, b + 2] if -2 <= a < H + 2 and -2 <= b < W + 2 else np.zeros(C)

    for k in range(9):
        i, j = divmod(k, 3)
        py, px = y - 1 + i + offsets[k, 0], x - 1 + j + offsets[k, 1]
        y0, x0 = int(np.floor(py)), int(np.floor(px))
        ly, lx = py - y0, px - x0
        d_dy = (1 - lx) * (v(y0 + 1, x0) - v(y0, x0)) + lx * (v(y0 + 1, x0 + 1) - v(y0, x0 + 1))
        d_dx = (1 - ly) * (v(y0, x0 + 1) - v(y0, x0)) + ly * (v(y0 + 1, x0 + 1) - v(y0 + 1, x0))
        out[k] = weight[:, i, j] @ d_dy, weight[:, i, j] @ d_dx
    return out


SEED_Q3 = 3


def _offset_grad_cases(seed):
    """Seven output locations (inside, at integers, a hair below integers, at the border, on the line y = -1);
    data from the seed."""
    rng = np.random.default_rng(seed)
    C, H, W = 2, 6, 7
    image = rng.normal(size=(C, H, W))
    weight = rng.normal(size=(C, 3, 3))
    steps = [
        (2, 3, rng.uniform(-0.9, 0.9, size=(9, 2)) + 0.05,
         "away from integers this is the chain rule through the bilinear weights: "
         "d/dpy [(1-ly)(1-lx) v00 + (1-ly) lx v01 + ly (1-lx) v10 + ly lx v11], summed over channels with w[c, i, j]"),
        (3, 3, rng.uniform(-0.9, 0.9, size=(9, 2)),
         "each kernel point k = 3i + j has its own weight column weight[:, i, j]"),
        (2, 4, np.zeros((9, 2)),
         "at integer positions (zero offsets!) the rule holds floor(p) fixed (§5; lesson 01, §7)"),
        (3, 2, np.tile([[-1e-7, 1e-7 - 1.0]], (9, 1)),
         "a hair below an integer q, floor(p) is q - 1: the slope is that of the segment on the left of q (a finite "
         "difference that steps across q measures a mix of both sides)"),
        (0, 0, rng.uniform(-0.9, 0.9, size=(9, 2)) - np.array([0.3, 0.3]),
         "near the border, corners off the map read 0"),
        (0, 2, np.zeros((9, 2)),
         "the rule's 'inside' is -1 < y < H and -1 < x < W: the top row of kernel points sits exactly at y = -1, "
         "which counts as outside, so its gradient is 0 (torchvision's rule would give x(0) - 0 there; this course "
         "follows mmcv and the original DCNv2 code)"),
        (5, 6, np.tile([[0.4, 0.7]], (9, 1)),
         "at the bottom-right border a sample with y >= H or x >= W has gradient 0"),
    ]
    return [{"args": [image, weight, off, y, x], "call": f"my_offset_grad(image, weight, offsets, y={y}, x={x})",
             "what": f"my_offset_grad(image, weight, offsets, y={y}, x={x})", "hint": hint}
            for y, x, off, hint in steps]


def _offset_grad_verify(case, got):
    image, weight, off, y, x = case["args"]
    what, hint = case["what"], case["hint"]
    want = _offset_grad_ref(image, weight, off, y, x)
    arr = expect_shape(got, (9, 2), what + " (one row (d/dΔy, d/dΔx) per kernel point)")
    if np.allclose(arr, want, atol=1e-8, rtol=1e-6):
        return
    variants = [("the columns swapped (d/dΔx first)", want[:, ::-1])]
    if np.all(off == np.round(off)):
        variants.append(("a central difference at integer positions", _central_ref(image, weight, off, y, x)))
    variants.append(("the sign flipped", -want))
    tv = _torchvision_rule(image, weight, off, y, x)
    if not np.allclose(tv, want, atol=1e-8, rtol=1e-6):
        variants.append(("torchvision's rule on the line y = -1 (or x = -1)", tv))
    mistake = _first_match(arr, variants)
    if mistake is not None:
        extra = {
            "the columns swapped (d/dΔx first)": "column 0 is d out / dΔy (rows), column 1 is d out / dΔx",
            "a central difference at integer positions": "the rule holds floor(p) fixed, so at an integer the "
            "derivative is the slope on its right, not the average of both sides (lesson 01, §7)",
            "the sign flipped": "moving the sample by +Δy moves it towards the next row down: weight moves from "
            "the upper corners to the lower ones (lesson 01, §6)",
            "torchvision's rule on the line y = -1 (or x = -1)": "a sample exactly on y = -1 (or x = -1) is outside "
            "by this course's rule, mmcv's and the original DCNv2 code's: its gradient is 0. torchvision's "
            "get_coordinate_weight has no inside test and returns x(0) - 0 there (the README's conventions)",
        }[mistake]
        raise ExerciseError(f"{what}: your gradient matches the answer with {mistake}.\nHint: {extra}")
    expect_close(arr, want, what=what, hint=hint)


#: q3: ``fn(image, weight, offsets, y, x)`` -> ``[9, 2]``: d out(y, x) / d(Δy_k, Δx_k) of a 3x3 deformable conv
#: with one output channel, stride 1, padding 1 (DCNv1 App. A, Eq. 7), with the course's position rule (mmcv's and
#: the original DCNv2 code's: floor held fixed; 0 unless -1 < y < H and -1 < x < W). image ``[C, H, W]``; weight
#: ``[C, 3, 3]``; offsets ``[9, 2]`` (Δy, Δx) of output (y, x).
check_offset_grad = Question(
    _offset_grad_cases, _offset_grad_verify, seed=SEED_Q3,
    unavailable=("dcn_lessons.reference.deform_conv:deform_conv2d_backward",
                 "dcn_lessons.reference.deform_conv:deform_col2im_coord",
                 "dcn_lessons.reference.deform_conv:_col2im_coord",
                 "dcn_lessons.reference.bilinear:bilinear_sample_backward",
                 "dcn_lessons.reference.bilinear:_position_grad",
                 "dcn_lessons.ops.deform_conv:deform_col2im_coord") + IM2COL,
)
