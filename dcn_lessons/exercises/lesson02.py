"""Checks for lesson 02 (deformable convolution). Globals of ``_core.py`` are injected by the loader.

* q1 :func:`check_deform_im2col` -- the deformable im2col of one image and one offset group.
* q2 :func:`check_offset_grad` -- the offset gradient of one output location (DCNv1 App. A, Eq. 7).

Each check compares with the package's NumPy reference and, when the answer is wrong, tries the
typical mistakes (Δy and Δx swapped, rows ordered k-major, padding forgotten, a central instead of a
forward difference at integer positions, ...) so the message can say which one it was.
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


def check_deform_im2col(fn):
    """q1: ``fn(x, offset, kernel_size, padding)`` -> columns ``[C*K, Ho*Wo]`` (DCNv1 Eq. 2-3, App. A).

    x ``[C, H, W]``; offset ``[2*K, Ho, Wo]`` (one offset group, channel 2k = Δy, 2k+1 = Δx of kernel point
    k = i*kernel_size + j); stride 1, dilation 1; row ``c*K + k``, column ``y*Wo + x``; off-map neighbours read 0.
    """
    rng = np.random.default_rng(2)
    cases = [
        (1, 5, 6, 3, 1, "zero", "with zero offsets the columns are those of a plain im2col (stride 1, padding 1)"),
        (1, 5, 6, 3, 1, "integer", "integer offsets read whole pixels; positions off the map read 0"),
        (2, 6, 5, 3, 1, "fractional", "fractional offsets are read with bilinear interpolation (lesson 01)"),
        (2, 5, 5, 3, 0, "fractional", "with padding 0 the output is smaller: Ho = H - kernel_size + 1"),
        (3, 4, 6, 2, 1, "fractional", "a 2x2 kernel with padding 1: K = 4 points, Ho = H + 1"),
    ]
    for C, H, W, k, p, kind, hint in cases:
        K, Ho, Wo = k * k, H + 2 * p - k + 1, W + 2 * p - k + 1
        x = rng.normal(size=(C, H, W))
        if kind == "zero":
            off = np.zeros((2 * K, Ho, Wo))
        elif kind == "integer":
            off = rng.integers(-2, 3, size=(2 * K, Ho, Wo)).astype(np.float64)
        else:
            off = rng.uniform(-1.5, 1.5, size=(2 * K, Ho, Wo))
        what = f"my_deform_im2col(x [{C}, {H}, {W}], offset [{2 * K}, {Ho}, {Wo}], kernel_size={k}, padding={p})"
        got = call(fn, x.copy(), off.copy(), k, p, what=what)
        want = _im2col_ref(x, off, k, p)
        arr = _np(got, what)
        if arr.shape != want.shape:
            if arr.shape == want.T.shape:
                raise ExerciseError(f"{what}: expected shape {list(want.shape)} = [C*K, Ho*Wo], got {list(arr.shape)}"
                                    f"\nHint: one ROW per (channel, kernel point), one COLUMN per output location")
            expect_shape(arr, want.shape, what + " (expected [C*K, Ho*Wo])")
        if np.allclose(arr, want, atol=1e-8, rtol=1e-6):
            continue
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
            "padding forgotten": "kernel point (i, j) of output (y, x) reads (y - padding + i + Δy, x - padding + j + Δx)",
        }
        mistake = _first_match(arr, variants)
        if mistake is not None:
            raise ExerciseError(f"{what}: your columns match the answer with {mistake}.\nHint: {hints[mistake]}")
        expect_close(arr, want, what=what, hint=hint)


# ---------------------------------------------------------------------------------------------- q2

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


def check_offset_grad(fn):
    """q2: ``fn(image, weight, offsets, y, x)`` -> ``[9, 2]``: d out(y, x) / d(Δy_k, Δx_k) of a 3x3
    deformable conv with one output channel, stride 1, padding 1 (DCNv1 App. A, Eq. 7), with the
    course's position rule (floor held fixed; 0 unless -1 < y < H and -1 < x < W).

    image ``[C, H, W]``; weight ``[C, 3, 3]``; offsets ``[9, 2]`` (Δy, Δx) of output (y, x).
    """
    rng = np.random.default_rng(3)
    C, H, W = 2, 6, 7
    image = rng.normal(size=(C, H, W))
    weight = rng.normal(size=(C, 3, 3))
    cases = [
        (2, 3, rng.uniform(-0.9, 0.9, size=(9, 2)) + 0.05,
         "away from integers this is the chain rule through the bilinear weights: "
         "d/dpy [(1-ly)(1-lx) v00 + (1-ly) lx v01 + ly (1-lx) v10 + ly lx v11], summed over channels with w[c, i, j]"),
        (3, 3, rng.uniform(-0.9, 0.9, size=(9, 2)),
         "each kernel point k = 3i + j has its own weight column weight[:, i, j]"),
        (2, 4, np.zeros((9, 2)),
         "at integer positions (zero offsets!) hold floor(p) fixed: the derivative is the forward difference "
         "x(q + 1) - x(q)"),
        (0, 0, rng.uniform(-0.9, 0.9, size=(9, 2)) - np.array([0.3, 0.3]),
         "near the border, corners off the map read 0"),
        (0, 2, np.zeros((9, 2)),
         "the rule's 'inside' is -1 < y < H and -1 < x < W: the top row of kernel points sits exactly at y = -1, "
         "which counts as outside, so its gradient is 0 (not x(0) - 0)"),
        (5, 6, np.tile([[0.4, 0.7]], (9, 1)),
         "at the bottom-right border a sample with y >= H or x >= W has gradient 0"),
    ]
    for y, x, off, hint in cases:
        what = f"my_offset_grad(image, weight, offsets, y={y}, x={x})"
        got = call(fn, image.copy(), weight.copy(), off.copy(), y, x, what=what)
        want = _offset_grad_ref(image, weight, off, y, x)
        arr = expect_shape(got, (9, 2), what + " (one row (d/dΔy, d/dΔx) per kernel point)")
        if np.allclose(arr, want, atol=1e-8, rtol=1e-6):
            continue
        variants = [("the columns swapped (d/dΔx first)", want[:, ::-1])]
        if np.all(off == np.round(off)):
            variants.append(("a central difference at integer positions", _central_ref(image, weight, off, y, x)))
        variants.append(("the sign flipped", -want))
        mistake = _first_match(arr, variants)
        if mistake is not None:
            extra = {
                "the columns swapped (d/dΔx first)": "column 0 is d out / dΔy (rows), column 1 is d out / dΔx",
                "a central difference at integer positions": "the rule holds floor(p) fixed, so at an integer y the "
                "derivative along y is x(y + 1) - x(y), not (x(y + 1) - x(y - 1)) / 2",
                "the sign flipped": "moving the sample by +Δy moves it towards row y0 + 1: d/dly of ly*v10 is +v10",
            }[mistake]
            raise ExerciseError(f"{what}: your gradient matches the answer with {mistake}.\nHint: {extra}")
        expect_close(arr, want, what=what, hint=hint)
