"""Checks for lesson 05 (PyTorch operators with hand-written backward). Globals of ``_core.py`` are injected.

The learner's own operator, built up in five exercises (the lesson runs on its own, so q1 and q2 restate in
torch what lessons 02 and 03 did in NumPy, and q3 builds on them):

* q1 :func:`check_deform_im2col_torch` -- the deformable im2col of DCNv1 Eq. (2)-(3) (DCNv2 Eq. 1 with a mask)
  for a batch of torch tensors, any geometry and offset groups: the forward half of the operator.
* q2 :func:`check_mask_grad_columns` -- the backward of the modulation in the columns form (DCNv1 App. A, DCNv2
  Eq. 1): from the gradient of the *masked* columns and the *unmasked* sampled columns to ∂L/∂Δm.
* q3 :func:`check_deform_conv_function` -- the learner's ``torch.autograd.Function``: forward through q1 and a
  GEMM, backward by hand (GEMMs, the package's col2im and col2im_coord primitives, q2 for the mask).
* q4 :func:`check_init_offset` -- zero-initialise the offset (and mask) branch of a ``DeformConv2dPack`` /
  ``ModulatedDeformConv2dPack`` in place (DCNv1 §2.3, DCNv2 §3.2).
* q5 :func:`check_roi_align_backward` -- the input gradient of RoI Align (DCNv1 Eq. 5 with bilinear samples) as a
  scatter, with the course's RoI sampling rule: the RoI family at the PyTorch tier.

Each check compares with the package (``dcn_lessons.ops``) in float64 and, when the answer is wrong, tries the
typical mistakes so that the message can say which one it was, without printing the answer. Delegation: q1, q3
and q5 name the package functions that compute the same thing (``unavailable``), so the grader's second run,
without them, tells an answer that computes from one that calls; q4's ``run`` makes the layers' own
``init_offset`` raise while the answer runs. q2 has no such name: no package function takes its arguments (the
one that computes the same numbers, ``deform_col2im_coord``, needs the input and the offsets, which the check
does not hand over) -- and q3's answers use that function, so it must stay available.
"""
import numpy as np  # noqa: F401

# ---------------------------------------------------------------------------------------------- shared

#: Package functions that compute deformable im2col (or the whole forward, which yields it with a one-hot
#: weight): q1 and q3 must compute without them.
_IM2COL_PACKAGE = (
    "dcn_lessons.ops.deform_conv:deform_im2col",
    "dcn_lessons.ops.deform_conv:deform_conv2d",
    "dcn_lessons.ops._primitives:deform_im2col",
    "dcn_lessons.ops._cpu_numba:columns",
    "dcn_lessons.reference.deform_conv:deform_im2col",
    "dcn_lessons.reference.deform_conv:deform_conv2d",
    "dcn_lessons.reference.deform_conv:deform_conv2d_loop",
    "dcn_lessons.cuda:emulated_kernels",
)


def _t(a):
    """``a`` as a float64 tensor (None stays None, a tensor is kept)."""
    import torch

    if a is None or isinstance(a, torch.Tensor):
        return a
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float64))


def _out_size(size, k, s, p, d):
    return (size + 2 * p - (d * (k - 1) + 1)) // s + 1


def _tensor_or_fail(got, what):
    """``got`` as a float64 NumPy array, or an ExerciseError that says what came back instead."""
    if got is None:
        raise ExerciseError(f"{what}: your function returned None -- did you forget `return`?")
    return _np(got, what)


# ---------------------------------------------------------------------------------------------- q1

def _im2col_want(args):
    """The package's columns ``[N, C*K, Ho*Wo]`` of a q1 case (NumPy)."""
    from dcn_lessons.ops import deform_im2col

    x, off, mask, ks, st, pd, dl = args
    return deform_im2col(_t(x), _t(off), _t(mask), tuple(ks), tuple(st), tuple(pd), tuple(dl)).numpy()


def _bilinear_trunc(img, py, px):
    """Bilinear sampling with the corners found by truncation toward zero instead of floor (a typical mistake:
    ``.long()`` / ``int()`` of a negative coordinate), corners off the map reading 0."""
    H, W = img.shape
    y0, x0 = np.trunc(py), np.trunc(px)
    ly, lx = py - y0, px - x0
    out = np.zeros(np.shape(py))
    for dy, wy in ((0, 1 - ly), (1, ly)):
        for dx, wx in ((0, 1 - lx), (1, lx)):
            r, c = (y0 + dy).astype(np.int64), (x0 + dx).astype(np.int64)
            ok = (r >= 0) & (r < H) & (c >= 0) & (c < W)
            out += np.where(ok, wy * wx * img[np.clip(r, 0, H - 1), np.clip(c, 0, W - 1)], 0.0)
    return out


def _im2col_variant(args, swap=False, sample="eq3", groups="contiguous", order="channel", use_mask=True):
    """Columns computed from the sampling positions with one typical mistake (NumPy, by channel and image)."""
    from dcn_lessons.reference import bilinear_sample, deform_sampling_positions

    x, off, mask, ks, st, pd, dl = (a.numpy() if hasattr(a, "numpy") else a for a in args)
    N, C, H, W = x.shape
    K = ks[0] * ks[1]
    G = off.shape[1] // (2 * K)
    Ho, Wo = off.shape[2], off.shape[3]
    if swap:
        off = off.reshape(N, G, K, 2, Ho, Wo)[:, :, :, ::-1].reshape(off.shape)
    py, px = deform_sampling_positions(off, tuple(ks), tuple(st), tuple(pd), tuple(dl))  # [N, G, K, Ho, Wo]
    cols = np.zeros((N, C, K, Ho * Wo))
    for b in range(N):
        for c in range(C):
            g = c // (C // G) if groups == "contiguous" else c % G
            yy, xx = py[b, g], px[b, g]
            if sample == "clamp":
                vals = bilinear_sample(x[b, c], np.clip(yy, 0, H - 1), np.clip(xx, 0, W - 1))
            elif sample == "trunc":
                vals = _bilinear_trunc(x[b, c], yy, xx)
            else:
                vals = bilinear_sample(x[b, c], yy, xx)
            if mask is not None and use_mask:
                vals = vals * mask[b, g * K:(g + 1) * K]
            cols[b, c] = vals.reshape(K, Ho * Wo)
    if order == "k":
        cols = cols.transpose(0, 2, 1, 3)
    return cols.reshape(N, C * K, Ho * Wo)


_IM2COL_HINTS = {
    "Δy and Δx swapped": "offset channel 2k is Δy (the row) and 2k+1 is Δx (the column) of kernel point k "
                         "(the README's conventions, which every tier follows)",
    "the mask left out": "with a mask (DCNv2 Eq. 1) every sampled value of group g, kernel point k is multiplied "
                         "by mask[:, g*K + k]",
    "the rows in the order k*C + c (kernel point major)": "row c*K + k holds channel c read by kernel point k: "
                                                         "the channels are the slow axis of the rows",
    "the offset groups interleaved (channel c in group c % G)": "offset group g owns the CONTIGUOUS channels "
                                                               "g*C/G ... (g+1)*C/G - 1",
    "positions clamped into the map": "DCNv1 Eq. (3) reads 0 for a corner off the map: a sample beyond the border "
                                      "fades to 0, it does not repeat the border pixel",
    "the corners found by truncation toward zero": "the corners are floor(p) and floor(p) + 1; truncation toward "
                                                   "zero (.long(), int()) differs from floor for -1 < p < 0",
}


def _im2col_variants(args):
    x, off, mask, ks, st, pd, dl = args
    K = ks[0] * ks[1]
    G = off.shape[1] // (2 * K)
    out = [("Δy and Δx swapped", dict(swap=True))]
    if mask is not None:
        out.append(("the mask left out", dict(use_mask=False)))
    if x.shape[1] > 1:
        out.append(("the rows in the order k*C + c (kernel point major)", dict(order="k")))
    if G > 1 and x.shape[1] // G > 1:
        out.append(("the offset groups interleaved (channel c in group c % G)", dict(groups="interleaved")))
    out += [("positions clamped into the map", dict(sample="clamp")),
            ("the corners found by truncation toward zero", dict(sample="trunc"))]
    return out


SEED_IM2COL = 15


def _im2col_cases(seed):
    """Five inputs, each adding one thing: the plain grid, fractional offsets on a batch, samples off the map, a
    mask with two offset groups, then a non-square kernel with stride, padding and dilation; data from the seed."""
    rng = np.random.default_rng(seed)
    steps = [
        # N, C, H, W, (kh, kw), stride, padding, dilation, G, mask?, offsets, hint
        (1, 1, 5, 6, (3, 3), (1, 1), (1, 1), (1, 1), 1, False, "zero",
         "zero offsets: row k is the image read at p0 + p_k, shifted by p_k; padding reads 0"),
        (2, 3, 5, 4, (3, 3), (1, 1), (1, 1), (1, 1), 1, False, "fraction",
         "fractional offsets: each sample is the bilinear interpolation of DCNv1 Eq. (3) at p0 + p_k + Δp_k"),
        (1, 2, 4, 5, (3, 3), (1, 1), (1, 1), (1, 1), 1, False, "far",
         "samples off the map: Eq. (3) sums only the integral neighbours inside the map, so a sample at y <= -1 "
         "or y >= H (likewise x) is 0"),
        (2, 4, 5, 5, (3, 3), (1, 1), (1, 1), (1, 1), 2, True, "fraction",
         "a mask and two offset groups: group g owns channels g*C/G ... (g+1)*C/G - 1, its own offsets and masks"),
        (1, 3, 7, 6, (2, 3), (2, 1), (1, 2), (2, 1), 3, True, "fraction",
         "kernel (2, 3), stride (2, 1), padding (1, 2), dilation (2, 1): kernel point k = i*kw + j sits at "
         "(y*stride_h - pad_h + i*dil_h, x*stride_w - pad_w + j*dil_w) before its offset"),
    ]
    cases = []
    for N, C, H, W, ks, st, pd, dl, G, with_mask, kind, hint in steps:
        K = ks[0] * ks[1]
        Ho, Wo = _out_size(H, ks[0], st[0], pd[0], dl[0]), _out_size(W, ks[1], st[1], pd[1], dl[1])
        x = rng.normal(size=(N, C, H, W)) + 0.5
        shape = (N, 2 * G * K, Ho, Wo)
        if kind == "zero":
            off = np.zeros(shape)
        elif kind == "far":
            off = rng.uniform(-3.5, 3.5, size=shape)
        else:
            off = rng.integers(-1, 2, size=shape) + rng.uniform(0.1, 0.9, size=shape)
        mask = rng.uniform(0.1, 0.9, size=(N, G * K, Ho, Wo)) if with_mask else None
        call = (f"my_deform_im2col_torch(input [{N}, {C}, {H}, {W}], offset {list(shape)}, "
                f"mask {'None' if mask is None else list(mask.shape)}, {ks}, {st}, {pd}, {dl})")
        cases.append({"args": [_t(x), _t(off), _t(mask), ks, st, pd, dl], "call": call, "what": call,
                      "hint": hint})
    return cases


def _im2col_verify(case, got):
    args, what, hint = case["args"], case["what"], case["hint"]
    want = _im2col_want(args)
    arr = _tensor_or_fail(got, what)
    N, CK, L = want.shape
    C = args[0].shape[1]
    K = CK // C
    Ho, Wo = args[1].shape[2], args[1].shape[3]
    if arr.shape != want.shape:
        known = {
            (N, C, K, L): "flatten channels and kernel points into one row axis: row c*K + k",
            (N, C * K, Ho, Wo): "one column per output location: flatten (Ho, Wo) into P = Ho*Wo",
            (C * K, L): "keep the batch axis: one columns matrix per image, [N, C*K, P]",
        }
        extra = known.get(tuple(arr.shape), "")
        raise ExerciseError(f"{what}: expected shape {list(want.shape)} ([N, C*K, Ho*Wo]), got {list(arr.shape)}"
                            + (f"\nHint: {extra}" if extra else ""))
    if np.allclose(arr, want, atol=1e-9, rtol=1e-7):
        return
    for name, kw in _im2col_variants(args):
        variant = _im2col_variant(args, **kw)
        if not np.allclose(variant, want, atol=1e-9, rtol=1e-7) and np.allclose(arr, variant, atol=1e-9, rtol=1e-7):
            raise ExerciseError(f"{what}: your columns match the answer with {name}.\nHint: {_IM2COL_HINTS[name]}")
    expect_close(arr.reshape(N, C, K, Ho, Wo), want.reshape(N, C, K, Ho, Wo),
                 what=f"{what}, as [N, C, K, Ho, Wo]", atol=1e-9, rtol=1e-7, hint=hint)


#: q1: ``fn(input, offset, mask, kernel_size, stride, padding, dilation)`` -> columns ``[N, C*K, Ho*Wo]`` (torch
#: float64): row ``c*K + k``, column ``y*Wo + x`` holds ``mask[n, g*K + k, y, x] * x_c(p0 + p_k + Δp_k)`` (no mask
#: factor when ``mask`` is None) with g = c // (C/G) the offset group of channel c, sampled by DCNv1 Eq. (3) (0 off
#: the map). input ``[N, C, H, W]``, offset ``[N, 2*G*K, Ho, Wo]`` (channel ``g*2K + 2k`` Δy, ``+1`` Δx), mask
#: ``[N, G*K, Ho, Wo]`` or None; the geometry as (h, w) pairs. Compared with ``dcn_lessons.ops.deform_im2col``.
check_deform_im2col_torch = Question(_im2col_cases, _im2col_verify, seed=SEED_IM2COL, unavailable=_IM2COL_PACKAGE)


# ---------------------------------------------------------------------------------------------- q2

def _mask_grad_inputs(rng, n, C, G, kernel, stride, H, W, kind):
    """Random input, offsets and mask (NumPy), the package's unmasked columns and a random gradient of the masked
    columns (torch float64)."""
    import torch

    from dcn_lessons.ops import deform_im2col

    K = kernel * kernel
    Ho, Wo = (H + 2 - kernel) // stride + 1, (W + 2 - kernel) // stride + 1
    x = rng.normal(size=(n, C, H, W))
    off = np.zeros((n, 2 * G * K, Ho, Wo)) if kind == "zero" else rng.uniform(-1.6, 1.6, size=(n, 2 * G * K, Ho, Wo))
    mask = torch.from_numpy(rng.uniform(0.1, 0.9, size=(n, G * K, Ho, Wo)))
    cols = deform_im2col(torch.from_numpy(x), torch.from_numpy(off), None, kernel, stride, 1, 1)  # [n, C*K, L], unmasked
    gcols = torch.from_numpy(rng.normal(size=(n, C * K, Ho * Wo)))
    return x, off, cols, gcols, mask


def _mask_grad_want(case):
    """The package's mask gradient (``deform_col2im_coord``) of a case, NumPy."""
    import torch

    from dcn_lessons.ops import deform_col2im_coord

    gcols, _, mask, _ = case["args"]
    _, want = deform_col2im_coord(gcols, torch.from_numpy(case["x"]), torch.from_numpy(case["offset"]), mask,
                                  case["kernel"], case["stride"], 1, 1)
    return want.numpy()


def _mask_grad_variants(cols, gcols, mask, G):
    """(name, array) of typical wrong answers, in NumPy."""
    c, g, m = cols.numpy(), gcols.numpy(), mask.numpy()
    n, GK, Ho, Wo = m.shape
    K = GK // G
    CK = c.shape[1]
    C = CK // K
    prod = g * c  # [n, C*K, L]
    right = prod.reshape(n, G, C // G, K, Ho * Wo).sum(axis=2).reshape(n, GK, Ho, Wo)
    k_major = prod.reshape(n, G, K, C // G, Ho * Wo).sum(axis=3).reshape(n, GK, Ho, Wo)
    interleaved = prod.reshape(n, C // G, G, K, Ho * Wo).sum(axis=1).reshape(n, GK, Ho, Wo)
    all_c = prod.reshape(n, C, K, Ho * Wo).sum(axis=1)  # [n, K, L], summed over every channel
    all_c_tiled = np.tile(all_c[:, None], (1, G, 1, 1)).reshape(n, GK, Ho, Wo)
    no_cols = g.reshape(n, G, C // G, K, Ho * Wo).sum(axis=2).reshape(n, GK, Ho, Wo)
    return [
        ("an extra factor Δm", right * m),
        ("an extra factor Δm(1 - Δm)", right * m * (1 - m)),
        ("the rows read as k*C + c (kernel point major)", k_major),
        ("the channels of a group taken as c % G == g (interleaved) instead of c // (C/G) == g", interleaved),
        ("the sum taken over ALL channels, the same value copied to every offset group", all_c_tiled),
        ("grad_columns summed without multiplying by the sampled values (columns)", no_cols),
        ("the sign flipped", -right),
    ]


_Q1_HINTS = {
    "an extra factor Δm": "the masked columns are columns·Δm, linear in Δm: ∂/∂Δm = columns (times grad_columns). "
                          "Δm itself does not appear in its own gradient (it scales the gradient that flows on to "
                          "the columns, not this one)",
    "an extra factor Δm(1 - Δm)": "that is the gradient with respect to the mask LOGIT (through the sigmoid); the "
                                  "sigmoid is a separate op whose backward autograd does for you",
    "the rows read as k*C + c (kernel point major)": "row c*K + k holds channel c, kernel point k: reshape the rows "
                                                     "as [..., C, K, ...] (channel major), not [..., K, C, ...]",
    "the channels of a group taken as c % G == g (interleaved) instead of c // (C/G) == g":
        "offset group g owns the CONTIGUOUS channels g*C/G ... (g+1)*C/G - 1: rows as [n, G, C/G, K, L]",
    "the sum taken over ALL channels, the same value copied to every offset group":
        "each offset group has its own mask, shared only by that group's C/G channels: sum over those",
    "grad_columns summed without multiplying by the sampled values (columns)":
        "∂(columns·Δm)/∂Δm = columns: multiply grad_columns by the UNMASKED columns before summing",
    "the sign flipped": "L grows with Δm where grad_columns · columns is positive",
}


def _central_difference(cols, gcols, mask, G, idx):
    """∂L/∂Δm[idx] by central differences of L(Δm) = Σ grad_columns · (columns · Δm broadcast over channels)."""
    c, g, m = cols.numpy(), gcols.numpy(), mask.numpy()
    n, GK, Ho, Wo = m.shape
    K, C = GK // G, c.shape[1] // (GK // G)

    def loss(mm):
        full = np.broadcast_to(mm.reshape(n, G, 1, K, Ho * Wo), (n, G, C // G, K, Ho * Wo)).reshape(c.shape)
        return float(np.sum(g * c * full))

    eps = 1e-6
    d = np.zeros_like(m)
    d[idx] = eps
    return (loss(m + d) - loss(m - d)) / (2 * eps)


SEED_MASK = 5


def _mask_grad_columns_cases(seed):
    """Four layouts: one channel with zero offsets, several channels, two and three offset groups (a 2x2 kernel with
    stride 2 last); data from the seed."""
    rng = np.random.default_rng(seed)
    steps = [
        (1, 1, 1, 3, 1, 5, 6, "zero", "one channel, zero offsets: grad_mask[k, p] = grad_columns[k, p] · columns[k, p]"),
        (2, 3, 1, 3, 1, 5, 4, "random", "sum over the C channels: row c*K + k of the columns is channel c, point k"),
        (1, 4, 2, 3, 1, 4, 5, "random", "two offset groups: group g sums its own channels g*C/G ... (g+1)*C/G - 1"),
        (2, 6, 3, 2, 2, 7, 5, "random", "a 2x2 kernel (K = 4), stride 2, three offset groups"),
    ]
    cases = []
    for n, C, G, kernel, stride, H, W, kind, hint in steps:
        x, off, cols, gcols, mask = _mask_grad_inputs(rng, n, C, G, kernel, stride, H, W, kind)
        K = kernel * kernel
        _, _, Ho, Wo = mask.shape
        what = (f"my_mask_grad_columns(grad_columns [{n}, {C * K}, {Ho * Wo}], columns [{n}, {C * K}, {Ho * Wo}], "
                f"mask [{n}, {G * K}, {Ho}, {Wo}], offset_groups={G})")
        cases.append({"args": [gcols, cols, mask, G], "call": what, "what": what, "hint": hint,
                      "x": x, "offset": off, "kernel": kernel, "stride": stride})
    return cases


def _mask_grad_columns_verify(case, got):
    gcols, cols, mask, G = case["args"]
    what, hint = case["what"], case["hint"]
    want = _mask_grad_want(case)
    n, GK, Ho, Wo = mask.shape
    K = case["kernel"] ** 2
    C = cols.shape[1] // K
    arr = _np(got, what)
    if arr.shape != want.shape:
        known = {  # later entries win where two shapes coincide (C == G)
            (n, C * K, Ho * Wo): "sum over the channels of each offset group: one value per (g, k, p), not per (c, k, p)",
            (n, C * K, Ho, Wo): "sum over the channels of each offset group: one value per (g, k, p), not per (c, k, p)",
            (n, K, Ho, Wo): "each of the G offset groups has its own K masks: sum over the C/G channels of each "
                            "group separately, giving G*K channels",
            (n, K, Ho * Wo): "each of the G offset groups has its own K masks: sum over the C/G channels of each "
                             "group separately, giving G*K channels",
            (n, G * K, Ho * Wo): "reshape the last axis P = Ho*Wo back to [Ho, Wo]: return the shape of mask",
        }
        extra = known.get(tuple(arr.shape))
        raise ExerciseError(f"{what}: expected shape {list(want.shape)} (the shape of mask), got {list(arr.shape)}"
                            + (f"\nHint: {extra}" if extra else ""))
    if np.allclose(arr, want, atol=1e-8, rtol=1e-6):
        return
    mistake = _first_match(arr, _mask_grad_variants(cols, gcols, mask, G))
    if mistake is not None:
        raise ExerciseError(f"{what}: your gradient matches the answer with {mistake}.\nHint: {_Q1_HINTS[mistake]}")
    bad = ~np.isclose(arr, want, atol=1e-8, rtol=1e-6)
    idx = tuple(int(i) for i in np.argwhere(bad)[0])
    fd = _central_difference(cols, gcols, mask, G, idx)
    raise ExerciseError(
        f"{what}: gradient mismatch, {int(bad.sum())} of {bad.size} values are wrong; first at index "
        f"{list(idx)} (n, g*K + k, y, x): yours {arr[idx]:.6g}, the package's deform_col2im_coord "
        f"{want[idx]:.6g}, central difference of L = Σ grad_columns·columns·Δm {fd:.6g}\nHint: {hint}"
    )


#: q2: ``fn(grad_columns, columns, mask, offset_groups)`` -> ``grad_mask`` shaped like ``mask``. grad_columns
#: ``[n, C*K, P]``: ∂L/∂(masked columns); columns ``[n, C*K, P]``: the UNMASKED samples x_c(p + p_k + Δp_k), row
#: ``c*K + k`` (``deform_im2col(..., mask=None, ...)``); mask ``[n, G*K, Ho, Wo]`` (P = Ho*Wo); offset group g owns
#: channels ``g*C/G ... (g+1)*C/G - 1``. All torch float64. Answer: ``grad_mask[n, g*K + k, p] = sum over c in
#: group g of grad_columns[n, c*K + k, p] * columns[n, c*K + k, p]``, the mask gradient ``deform_col2im_coord``
#: returns (DCNv1 App. A, DCNv2 Eq. 1).
check_mask_grad_columns = Question(_mask_grad_columns_cases, _mask_grad_columns_verify, seed=SEED_MASK)


# ---------------------------------------------------------------------------------------------- q3

#: What q3 must do without: everything of q1's list, the package's own Function, and the NumPy backward the
#: lesson's bridge wraps.
_FUNCTION_PACKAGE = _IM2COL_PACKAGE + (
    "dcn_lessons.ops.deform_conv:DeformConv2dFunction",
    "dcn_lessons.reference.deform_conv:deform_conv2d_backward",
)
_GRAD_NAMES = ("input", "offset", "weight", "bias", "mask")


def _function_run(fn, args):
    """Inside the learner's kernel: ``fn.apply(...)`` on fresh leaves, then ``autograd.grad`` with the case's
    ``grad_output``. Returns the output, the five gradients (None where autograd gave none) and what the output's
    ``grad_fn`` is: the check must see the learner's own Function, not autograd of tensor operations."""
    import torch

    x, off, w, b, m, stride, padding, dilation, go, wants = args
    if not (isinstance(fn, type) and issubclass(fn, torch.autograd.Function)):
        kind = "a function" if callable(fn) else type(fn).__name__
        return Failed("message", f"MyDeformConv2d: expected a class derived from torch.autograd.Function (with "
                                 f"static forward and backward), got {kind}")
    leaves = [None if t is None else t.detach().clone().requires_grad_(bool(want))
              for t, want in zip((x, off, w, b, m), wants)]
    try:
        y = fn.apply(*leaves, tuple(stride), tuple(padding), tuple(dilation))
    except NotImplementedError:
        return Failed("notimpl")
    except Exception as e:  # noqa: BLE001  (the learner's forward, reported in one line)
        return Failed("raised", f"{type(e).__name__}: {e}")
    if y is Ellipsis or y is None or not isinstance(y, torch.Tensor):
        return {"out": y, "grad_fn": "", "custom": False, "owner": "", "grads": None, "error": ""}
    node = y.grad_fn
    owner = getattr(getattr(node, "_forward_cls", None), "__module__", "") or ""
    info = {"out": y.detach(), "grad_fn": type(node).__name__ if node is not None else "None",
            "custom": isinstance(node, torch.autograd.function.BackwardCFunction), "owner": owner,
            "grads": None, "error": ""}
    wanted = [t for t in leaves if t is not None and t.requires_grad]
    if node is None or not wanted:
        return info
    try:
        found = torch.autograd.grad(y, wanted, go.to(y.dtype), allow_unused=True)
    except NotImplementedError:
        info["error"] = "your backward is not written yet (it raised NotImplementedError)"
        return info
    except Exception as e:  # noqa: BLE001  (the learner's backward)
        info["error"] = f"{type(e).__name__}: {e}"
        return info
    it = iter(found)
    info["grads"] = {name: (next(it) if t is not None and t.requires_grad else "not asked")
                     for name, t in zip(_GRAD_NAMES, leaves)}
    return info


def _function_reference(case):
    """The package's output and gradients for a q3 case, and the pieces the typical mistakes are made of."""
    import torch

    from dcn_lessons.ops import deform_col2im, deform_col2im_coord, deform_conv2d, deform_im2col

    x, off, w, b, m, stride, padding, dilation, go, wants = case["args"]
    leaves = [None if t is None else t.detach().clone().requires_grad_() for t in (x, off, w, b, m)]
    y = deform_conv2d(leaves[0], leaves[1], leaves[2], leaves[3], stride, padding, dilation, leaves[4])
    grads = torch.autograd.grad(y, [t for t in leaves if t is not None], go)
    it = iter(grads)
    want = {name: (next(it) if t is not None else None) for name, t in zip(_GRAD_NAMES, leaves)}
    N, O = go.shape[0], go.shape[1]
    ks = tuple(w.shape[2:])
    cols = deform_im2col(x, off, None, ks, stride, padding, dilation)  # [N, C*K, P], unmasked
    gcols = w.reshape(O, -1).T @ go.reshape(N, O, -1)
    parts = {"out": y.detach(), "cols": cols, "gcols": gcols}
    if m is not None:
        G = m.shape[1] // (ks[0] * ks[1])
        masked = deform_im2col(x, off, m, ks, stride, padding, dilation)
        parts["input, no mask"] = deform_col2im(gcols, off, None, x.shape, ks, stride, padding, dilation)
        parts["offset, no mask"] = deform_col2im_coord(gcols, x, off, None, ks, stride, padding, dilation)[0]
        n, GK, Ho, Wo = m.shape
        parts["mask, masked columns"] = (gcols * masked).reshape(n, G, -1, GK // G, Ho * Wo).sum(2).reshape(m.shape)
        parts["weight, masked"] = (go.reshape(N, O, -1) @ masked.transpose(1, 2)).sum(0).reshape(w.shape)
        parts["weight, unmasked"] = (go.reshape(N, O, -1) @ cols.transpose(1, 2)).sum(0).reshape(w.shape)
    parts["weight, first image"] = (go[0].reshape(O, -1) @ (deform_im2col(x, off, m, ks, stride, padding, dilation)[0]
                                                             ).T).reshape(w.shape)
    parts["bias, mean"] = go.mean(dim=(0, 2, 3))
    return want, parts


_FUNCTION_HINTS = {
    ("input", "input, no mask"): "col2im scatters the gradient of the MASKED columns back through the bilinear "
                                 "weights: the mask belongs in that call too",
    ("offset", "offset, no mask"): "the offsets move samples that are then multiplied by Δm: their gradient carries "
                                   "the mask factor, so hand the mask to col2im_coord",
    ("mask", "mask, masked columns"): "∂(columns·Δm)/∂Δm = columns, the UNMASKED samples (exercise 2): compute them "
                                      "without the mask for this product",
    ("weight", "weight, unmasked"): "the GEMM multiplies the weight with the MASKED columns: its gradient is "
                                    "grad_output times those, summed over the images",
    ("weight", "weight, first image"): "the weight is shared by every image of the batch: sum its gradient over all N",
    ("bias", "bias, mean"): "L is a sum, not a mean: ∂L/∂bias[o] adds grad_output over the images and locations "
                            "of channel o",
}


def _as_tensor_grad(value, name, what):
    if isinstance(value, str):
        return value
    if value is None:
        return None
    return _np(value, f"{what}: ∂L/∂{name}")


def _function_verify(case, got):
    what, hint = case["what"], case["hint"]
    x, off, w, b, m, stride, padding, dilation, go, wants = case["args"]
    if isinstance(got, Failed):
        raise ExerciseError(got.detail if got.kind == "message" else f"{what}: {got.message('your forward')}")
    if not isinstance(got, dict) or "out" not in got:
        raise ExerciseError(f"{what}: the check found no output to look at")
    want, parts = _function_reference(case)
    out = got["out"]
    if out is None or out is Ellipsis:
        raise ExerciseError(f"{what}: forward returned {'None' if out is None else '...'} -- not written yet, or a "
                            "missing `return`?")
    arr = _np(out, f"{what}: the output")
    ref = want_out = parts["out"].numpy()
    if arr.shape != ref.shape:
        raise ExerciseError(f"{what}: the output has shape {list(arr.shape)}, expected {list(ref.shape)} "
                            "([N, O, Ho, Wo])\nHint: the GEMM gives [N, O, Ho*Wo]: reshape it to the output grid")
    if not np.allclose(arr, want_out, atol=1e-9, rtol=1e-7):
        if b is not None and np.allclose(arr, want_out - b.numpy().reshape(1, -1, 1, 1), atol=1e-9, rtol=1e-7):
            raise ExerciseError(f"{what}: the output lacks the bias.\nHint: add bias[o] to every output location "
                                "of channel o (after the masked sum, never scaled by the mask)")
        expect_close(arr, want_out, what=f"{what}: the output", atol=1e-9, rtol=1e-7,
                     hint="the forward is your im2col of exercise 1 (with the mask), then the weight as a matrix "
                          "[O, C*K] times the columns, plus the bias")
    if got.get("owner", "").startswith("dcn_lessons"):
        raise ExerciseError(f"{what}: the output comes from the package's own Function ({got['owner']}): write "
                            "your own class")
    if not got.get("custom"):
        raise ExerciseError(f"{what}: the output's grad_fn is {got.get('grad_fn')}, not the backward of your "
                            "Function: autograd would differentiate your tensor operations itself.\nHint: call "
                            "MyDeformConv2d.apply(...) and compute the output inside its forward; the check "
                            "wants the gradients of YOUR backward")
    if got.get("error"):
        err = got["error"]
        extra = ""
        if "incorrect number of gradients" in err:
            extra = ("\nHint: backward returns one value per argument of forward, in the same order: five "
                     "gradients (None where there is none), then None for stride, padding and dilation")
        elif "was not a Variable" in err:
            extra = "\nHint: an argument that is None (no bias, no mask) gets None as its gradient"
        raise ExerciseError(f"{what}: your backward failed: {err}{extra}")
    grads = got.get("grads")
    if not isinstance(grads, dict):
        raise ExerciseError(f"{what}: the check found no gradients to look at")
    for name, wanted in zip(_GRAD_NAMES, wants):
        if want[name] is None or not wanted:
            continue
        g = _as_tensor_grad(grads.get(name), name, what)
        if g is None:
            raise ExerciseError(f"{what}: ∂L/∂{name} is None although {name} requires grad.\nHint: backward "
                                "returns the gradient of every tensor argument that requires it "
                                "(ctx.needs_input_grad says which)")
        ref = want[name].numpy()
        if g.shape != ref.shape:
            raise ExerciseError(f"{what}: ∂L/∂{name} has shape {list(g.shape)}, expected {list(ref.shape)} (the "
                                f"shape of {name})")
        if np.allclose(g, ref, atol=1e-8, rtol=1e-6):
            continue
        for (target, key), text in _FUNCTION_HINTS.items():
            if target == name and key in parts and not np.allclose(parts[key].numpy(), ref, atol=1e-8, rtol=1e-6) \
                    and np.allclose(g, parts[key].numpy(), atol=1e-8, rtol=1e-6):
                raise ExerciseError(f"{what}: ∂L/∂{name} is wrong.\nHint: {text}")
        expect_close(g, ref, what=f"{what}: ∂L/∂{name}", atol=1e-8, rtol=1e-6, hint=hint)


SEED_FUNCTION = 21


def _function_cases(seed):
    """Four calls: DCNv1 with a bias, DCNv2 with two offset groups, zero offsets (the start of training) with a
    non-square kernel and no bias, then only the offsets and the mask requiring grad; data from the seed.
    Offsets away from integer coordinates except in the zero-offset case (the package's rule decides there)."""
    rng = np.random.default_rng(seed)
    steps = [
        # N, C, O, H, W, (kh, kw), stride, padding, dilation, G, mask?, bias?, offsets, wants, hint
        (2, 3, 4, 5, 6, (3, 3), (1, 1), (1, 1), (1, 1), 1, False, True, "fraction", (1, 1, 1, 1, 0),
         "DCNv1 (no mask): forward = weight [O, C*K] @ columns + bias; backward by DCNv1 App. A"),
        (2, 4, 3, 5, 5, (3, 3), (1, 1), (1, 1), (1, 1), 2, True, True, "fraction", (1, 1, 1, 1, 1),
         "DCNv2 (a mask, two offset groups): the columns are masked in the forward; the mask's gradient is "
         "exercise 2's"),
        (1, 2, 3, 6, 5, (2, 3), (2, 1), (1, 1), (1, 2), 1, True, False, "zero", (1, 1, 1, 0, 1),
         "zero offsets (every layer's first step), kernel (2, 3), stride (2, 1), dilation (1, 2), no bias"),
        (2, 3, 2, 4, 5, (3, 3), (1, 1), (1, 1), (1, 1), 1, True, True, "fraction", (0, 1, 0, 0, 1),
         "only the offsets and the mask require grad (as for a frozen backbone's offset branch)"),
    ]
    cases = []
    for N, C, O, H, W, ks, st, pd, dl, G, with_mask, with_bias, kind, wants, hint in steps:
        K = ks[0] * ks[1]
        Ho, Wo = _out_size(H, ks[0], st[0], pd[0], dl[0]), _out_size(W, ks[1], st[1], pd[1], dl[1])
        x = rng.normal(size=(N, C, H, W))
        shape = (N, 2 * G * K, Ho, Wo)
        off = np.zeros(shape) if kind == "zero" else rng.integers(-1, 2, size=shape) + rng.uniform(0.15, 0.85, shape)
        w = rng.normal(size=(O, C, *ks))
        b = rng.normal(size=O) if with_bias else None
        m = rng.uniform(0.1, 0.9, size=(N, G * K, Ho, Wo)) if with_mask else None
        go = rng.normal(size=(N, O, Ho, Wo))
        wants = tuple(bool(v) and t is not None for v, t in zip(wants, (x, off, w, b, m)))
        call = (f"MyDeformConv2d.apply(input [{N}, {C}, {H}, {W}], offset {list(shape)}, weight [{O}, {C}, {ks[0]}, "
                f"{ks[1]}], bias {'None' if b is None else [O]}, mask {'None' if m is None else list(m.shape)}, "
                f"{st}, {pd}, {dl})")
        cases.append({"args": [_t(x), _t(off), _t(w), _t(b), _t(m), st, pd, dl, _t(go), wants],
                      "call": "MyDeformConv2d", "what": call, "hint": hint})
    return cases


#: q3: ``fn`` is a class derived from ``torch.autograd.Function`` whose ``forward(ctx, input, offset, weight,
#: bias, mask, stride, padding, dilation)`` computes DCNv1 Eq. (2) / DCNv2 Eq. (1) plus the bias (groups = 1,
#: weight ``[O, C, kh, kw]``, geometry as (h, w) pairs, bias and mask may be None) and whose ``backward`` returns
#: the five gradients (DCNv1 App. A) and three Nones. Compared in float64 with autograd through
#: ``dcn_lessons.ops.deform_conv2d``; the output's ``grad_fn`` must be the learner's Function.
check_deform_conv_function = Question(_function_cases, _function_verify, run=_function_run, seed=SEED_FUNCTION,
                                      unavailable=_FUNCTION_PACKAGE)


# ---------------------------------------------------------------------------------------------- q4

def _snapshot(layer):
    return {name: p.detach().clone() for name, p in layer.named_parameters()}


_LAYERS = (
    ("DeformConv2dPack(4, 6, 3, padding=1)", "DeformConv2dPack", (4, 6, 3), {"padding": 1}),
    ("ModulatedDeformConv2dPack(4, 6, 3, padding=1, offset_groups=2)", "ModulatedDeformConv2dPack", (4, 6, 3),
     {"padding": 1, "offset_groups": 2}),
    ("ModulatedDeformConv2dPack(4, 2, 3, stride=2, padding=2, dilation=2)", "ModulatedDeformConv2dPack", (4, 2, 3),
     {"stride": 2, "padding": 2, "dilation": 2}),
)


def _fresh_layers(seed):
    """A v1 and two v2 layers (float64) whose offset branches hold random numbers, as after training: each as a
    recipe (class name, arguments, every parameter) that :func:`_build` turns into the layer."""
    import torch

    from dcn_lessons import ops

    out = []
    with torch.random.fork_rng():
        torch.manual_seed(11 if seed == SEED_INIT else seed)
        g = torch.Generator().manual_seed(12 if seed == SEED_INIT else seed + 1)
        for desc, cls, args, kwargs in _LAYERS:
            layer = getattr(ops, cls)(*args, **kwargs).double()
            with torch.no_grad():
                w, b = layer.conv_offset.weight, layer.conv_offset.bias
                w.copy_(0.5 * torch.randn(w.shape, generator=g, dtype=torch.float64))
                b.copy_(0.5 * torch.randn(b.shape, generator=g, dtype=torch.float64))
            state = {name: t.detach().clone() for name, t in layer.state_dict().items()}
            out.append((desc, {"class": cls, "args": list(args), "kwargs": dict(kwargs), "state": state}))
    return out


def _build(recipe):
    """The layer a recipe of :func:`_fresh_layers` describes (float64, parameters as recorded)."""
    import torch

    from dcn_lessons import ops

    layer = getattr(ops, recipe["class"])(*recipe["args"], **recipe["kwargs"]).double()
    state = {k: torch.as_tensor(v) for k, v in recipe["state"].items()}
    layer.load_state_dict(state)
    return layer


#: The package's own implementation of q4, made unavailable while the learner's answer runs (see _init_offset_run).
_INIT_PACKAGE = "dcn_lessons.ops.layers:DeformConv2dPack.init_offset"


def _init_offset_run(fn, args):
    """Inside the learner's kernel: build the layer, call ``fn(layer)``, and record what the check needs -- the
    layer's parameters afterwards (name, values with their dtype, requires_grad), and whether ``fn`` returned a
    different module. The layer's forward is not run here: the verdict rebuilds the layer from these parameters.

    While ``fn`` runs, the layers' own ``init_offset`` (the package's answer to this exercise, which every
    ``DeformConv2dPack`` has as a method) raises, and is put back afterwards: an answer that only calls it fails,
    in the learner's check and in both graded runs (a method cannot be masked in the grader's snapshot, since
    every layer's constructor calls it)."""
    import torch

    from dcn_lessons.ops import layers

    (recipe,) = args
    layer = _build(recipe)
    owner = layers.DeformConv2dPack
    saved = owner.__dict__["init_offset"]

    def unavailable(self, *a, **k):
        raise RuntimeError(f"{_INIT_PACKAGE.replace(':', '.')} is unavailable while this answer is checked")

    owner.init_offset = unavailable
    try:
        out = call_answer(fn, [layer])
    finally:
        owner.init_offset = saved
    return {
        "failed": out if isinstance(out, Failed) else None,
        "returned_new_module": isinstance(out, torch.nn.Module) and out is not layer,
        "returned_type": type(out).__name__,
        "params": {name: p.detach() for name, p in layer.named_parameters()},
        "requires_grad": {name: bool(p.requires_grad) for name, p in layer.named_parameters()},
    }


def _with_params(layer, params, requires_grad):
    """``layer`` with every recorded parameter put in place (as an ``nn.Parameter`` of the recorded dtype)."""
    import torch

    for name, value in params.items():
        owner, _, attr = name.rpartition(".")
        try:
            module = layer.get_submodule(owner) if owner else layer
        except AttributeError:
            continue
        if attr not in module._parameters:
            continue
        tensor = torch.as_tensor(np.ascontiguousarray(value))
        grad = bool(requires_grad.get(name, True)) and tensor.is_floating_point()
        setattr(module, attr, torch.nn.Parameter(tensor, requires_grad=grad))
    return layer


def _plain_reference(layer, before, x):
    """What the fresh layer must give: conv2d with the layer's ORIGINAL weight and bias (v1), or
    0.5 * conv2d without bias + bias (v2)."""
    import torch.nn.functional as F

    from dcn_lessons.ops import ModulatedDeformConv2dPack

    w, b = before["weight"], before.get("bias")
    conv = F.conv2d(x, w, None, layer.stride, layer.padding, layer.dilation, layer.groups)
    if isinstance(layer, ModulatedDeformConv2dPack):
        conv = 0.5 * conv
    return conv if b is None else conv + b.view(1, -1, 1, 1)


def _branch_diagnosis(layer, before, x):
    """Why the offset branch is not a zero branch: a message, or None when it is one."""
    import torch

    from dcn_lessons.ops import ModulatedDeformConv2dPack

    wt, bs = layer.conv_offset.weight.detach(), layer.conv_offset.bias.detach()
    w0, b0 = before["conv_offset.weight"], before["conv_offset.bias"]
    kk = layer.kernel_size[0] * layer.kernel_size[1]
    n_off = 2 * layer.offset_groups * kk
    modulated = isinstance(layer, ModulatedDeformConv2dPack)
    if torch.equal(wt, w0) and torch.equal(bs, b0):
        return ("conv_offset is unchanged (still the random numbers it was given): your function did not change it "
                "-- not written yet?\nHint: re-read §4: what must the branch output for a fresh layer to be the plain "
                "conv it replaces, and which of its parameters make that output?")
    w_zero = bool((wt == 0).all())
    if not w_zero:
        if bool((wt[:n_off] == 0).all()) and modulated:
            return (f"conv_offset.weight: the {n_off} offset rows are zero but the last {wt.shape[0] - n_off} rows "
                    "(the mask logits) are not: the mask then depends on the input from the first step.\n"
                    "Hint: zero the WHOLE branch, all 3*G*kh*kw output channels, weight and bias")
        with torch.no_grad():
            out = layer.conv_offset(x)
        largest = float(out[:, :n_off].abs().max())
        return ("conv_offset.weight is random but not zero (a small random init, or reset_parameters()): a fresh "
                f"layer then already moves its samples by up to {largest:.2f} px, differently for every input, so "
                "it is not the plain conv it replaces.\nHint: DCNv1 and DCNv2 initialise the branch to ZERO, so "
                "the deformable network starts exactly as the plain one (and a pretrained plain weight keeps its "
                "meaning); the gradient with respect to the offsets is not zero at zero offsets, so they still learn")
    if bool((bs == 0).all()):
        return None
    off_b, mask_b = bs[:n_off], bs[n_off:]
    if bool((off_b == 0).all()) and modulated:
        dm = torch.sigmoid(mask_b)
        if float(dm.min()) > 0.9:
            return ("conv_offset.bias: the mask logits are set to a large constant, so every Δm = sigmoid(bias) "
                    f"≈ {float(dm.mean()):.3f}: a fresh v2 layer then equals the plain conv, which is tempting, but "
                    "it is not accepted here: at Δm ≈ 1 the sigmoid is saturated, dΔm/dz = Δm(1 - Δm) ≈ "
                    f"{float((dm * (1 - dm)).mean()):.1e}, so the mask branch gets almost no gradient and can hardly "
                    "learn to switch samples off.\nHint: DCNv2 §3.2 initialises the branch to zero: Δm = "
                    "sigmoid(0) = 0.5, where the sigmoid is steepest (slope 0.25); the fresh layer is 0.5 * conv + bias")
        return ("conv_offset.bias: the weight is zero but the mask-logit biases (the last G*kh*kw channels) are "
                "not: every Δm is then a constant other than 0.5.\nHint: zero the bias too")
    shift = off_b.view(-1, 2)
    same = bool(torch.allclose(shift, shift[:1].expand_as(shift)))
    what_it_is = ("every kernel point moves by the same amount, so the fresh layer is the plain conv of a shifted, "
                  "bilinearly interpolated input" if same else
                  "the points move by different amounts, so the fresh layer is a plain convolution with a different "
                  "kernel: each weight spread bilinearly around its moved point")
    return ("conv_offset.weight is zero but conv_offset.bias is not: the branch then outputs its bias at every "
            f"location, so kernel point k moves by the same (Δy_k, Δx_k) everywhere (kernel point 0 by "
            f"({float(shift[0, 0]):.2f}, {float(shift[0, 1]):.2f})); {what_it_is} -- not the conv it replaces.\n"
            "Hint: the bias is part of the branch too")


SEED_INIT = 0


def _init_offset_cases(seed):
    """The three layers of :func:`_fresh_layers` and an input for each; random numbers from the seed."""
    x_seed = 13 if seed == SEED_INIT else seed + 2
    return [{"args": [recipe], "call": f"my_init_offset({desc})", "desc": desc, "x_seed": x_seed}
            for desc, recipe in _fresh_layers(seed)]


def _init_offset_verify(case, got):
    import torch

    recipe, desc = case["args"][0], case["desc"]
    what = f"my_init_offset({desc})"
    if not isinstance(got, dict) or not isinstance(got.get("params"), dict):
        raise ExerciseError(f"{what}: the check found no layer parameters to look at")
    failed = got.get("failed")
    if isinstance(failed, Failed):
        msg = failed.message(what)
        if "unavailable while this answer is checked" in msg:
            msg += ("\nHint: the exercise asks you to do yourself what the layer's own init_offset() does: set the "
                    "branch's parameters in place")
        if "leaf Variable" in msg or "in-place operation" in msg:
            msg += ("\nHint: parameters that require grad can only be changed in place inside "
                    "`with torch.no_grad():` (nn.init.zeros_ does that for you)")
        raise ExerciseError(msg)
    layer = _build(recipe)
    before = _snapshot(layer)
    params = {name: torch.as_tensor(np.ascontiguousarray(v)) for name, v in got["params"].items()}
    requires_grad = got.get("requires_grad", {})
    x = torch.randn(2, layer.in_channels, 7, 8, generator=torch.Generator().manual_seed(case["x_seed"]),
                    dtype=torch.float64)
    changed = {name for name, p in params.items()
               if name not in before or p.shape != before[name].shape or p.dtype != before[name].dtype
               or not torch.equal(p, before[name])}
    if got.get("returned_new_module") and not changed:
        raise ExerciseError(f"{what}: you returned a new {got.get('returned_type')} and left the layer you were given "
                            "unchanged.\nHint: initialise in place: the layer lives inside a model (and an "
                            "optimizer holds its parameters), so a new object would never be used; "
                            "change layer.conv_offset's parameters themselves")
    for name in ("conv_offset.weight", "conv_offset.bias"):
        p = params.get(name)
        if p is None:
            raise ExerciseError(f"{what}: the layer has no parameter {name} any more (it must stay an "
                                "nn.Parameter of conv_offset, or the optimizer cannot train it)")
        if not requires_grad.get(name, False):
            raise ExerciseError(f"{what}: {name} no longer requires grad: the offsets would never learn.\n"
                                "Hint: zero it in place under torch.no_grad(); do not freeze it")
        if p.shape != before[name].shape:
            raise ExerciseError(f"{what}: {name} has shape {list(p.shape)}, expected {list(before[name].shape)}")
    for name in ("weight", "bias"):
        if name in before and name in changed:
            now = params.get(name)
            if now is not None and bool((now == 0).all()):
                raise ExerciseError(f"{what}: you zeroed layer.{name}, the deformable conv's OWN {name}: the "
                                    "layer would "
                                    + ("output zero everywhere" if name == "weight" else "lose its bias")
                                    + ".\nHint: zero layer.conv_offset (the branch that predicts the offsets), "
                                    "not the layer's weight, which must keep the values of the conv it replaces")
            raise ExerciseError(f"{what}: you changed layer.{name}: leave the layer's own weight and bias as "
                                "they are (they hold the plain conv's values, maybe pretrained) and zero only "
                                "layer.conv_offset")
    _with_params(layer, params, requires_grad)
    try:
        with torch.no_grad():
            y = layer(x)
    except Exception as e:  # a replaced parameter of the wrong dtype, say
        raise ExerciseError(f"{what}: the layer no longer runs after your function: {type(e).__name__}: {e}\n"
                            "Hint: zero the existing parameters in place rather than replacing conv_offset or its "
                            "parameters (a replacement must keep the layer's dtype, device and shapes)") from None
    want = _plain_reference(layer, before, x)
    if tuple(y.shape) == tuple(want.shape) and torch.allclose(y, want, atol=1e-10, rtol=1e-8):
        return
    reason = _branch_diagnosis(layer, before, x)
    if reason is not None:
        raise ExerciseError(f"{what}: {reason}")
    fresh = "0.5 * conv2d(x, weight) + bias" if "Modulated" in desc else "conv2d(x, weight, bias)"
    expect_close(y.numpy(), want.numpy(), what=f"{what}, then layer(x) vs {fresh}", atol=1e-10, rtol=1e-8)


#: q4: ``fn(layer)`` zero-initialises ``layer.conv_offset`` (weight AND bias) in place and leaves the layer's own
#: ``weight``/``bias`` alone; afterwards a ``DeformConv2dPack`` equals ``conv2d`` and a ``ModulatedDeformConv2dPack``
#: equals ``0.5 * conv2d + bias`` (DCNv1 §2.3, DCNv2 §3.2). The return value is ignored (returning the layer is
#: fine); the layer passed in must be the one that changes. The learner's code runs on the layer in its own
#: process (:func:`_init_offset_run`); the verdict looks only at the parameters it left.
check_init_offset = Question(_init_offset_cases, _init_offset_verify, run=_init_offset_run, seed=SEED_INIT)


# ---------------------------------------------------------------------------------------------- q5

#: The package's RoI Align, its gradient and every path that computes them (public op, registered op, tensor plan,
#: NumPy reference, emulated kernels): q5 must scatter without them.
_ROI_PACKAGE = (
    "dcn_lessons.ops.roi_align:roi_align",
    "dcn_lessons.ops._library:_roi_forward",
    "dcn_lessons.ops._roi_plan:roi_forward_tensor",
    "dcn_lessons.ops._roi_plan:roi_backward_tensor",
    "dcn_lessons.reference.roi:_sampled_forward",
    "dcn_lessons.reference.roi:_sampled_backward",
    "dcn_lessons.cuda:emulated_kernels",
)


def _roi_want(args):
    """∂L/∂input of the package's ``roi_align(aligned=True)`` for ``L = Σ grad_output · output`` (float64)."""
    import torch

    from dcn_lessons.ops import roi_align

    go, rois, shape, out_hw, scale, ratio = args
    x = torch.zeros(tuple(shape), dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(roi_align(x, rois, tuple(out_hw), scale, ratio, aligned=True), x, go)
    return g.numpy()


def _conv_corners(H, W, y, x):
    """Deformable convolution's border rule (Eq. 3 literally: corners floor/floor+1 inside the map, no clamping)
    at one position: ``[(qy, qx, weight)]`` -- the typical mistake of reusing it for the RoI family."""
    y0, x0 = int(np.floor(y)), int(np.floor(x))
    ly, lx = y - y0, x - x0
    out = []
    for qy, wy in ((y0, 1 - ly), (y0 + 1, ly)):
        for qx, wx in ((x0, 1 - lx), (x0 + 1, lx)):
            if 0 <= qy < H and 0 <= qx < W:
                out.append((qy, qx, wy * wx))
    return out


def _roi_scatter(args, shift=0.5, count=True, rule="roi", scale=None, batch0=False, swap=False):
    """RoI Align's input gradient by loops over RoIs, bins and samples (NumPy), with one typical mistake switched
    on by a keyword (the defaults give the right answer: the course's RoI rule of ``_roi_bilinear``)."""
    from dcn_lessons.reference.roi import _roi_bilinear

    go, rois, shape, (ph, pw), sc, sr = args
    go, rois = np.asarray(go), np.asarray(rois)
    sc = sc if scale is None else scale
    N, C, H, W = shape
    gi = np.zeros(tuple(shape))
    for k, (b, x1, y1, x2, y2) in enumerate(rois):
        if swap:
            x1, y1, x2, y2 = y1, x1, y2, x2
        b = 0 if batch0 else int(b)
        ys, xs = y1 * sc - shift, x1 * sc - shift
        bh, bw = (y2 - y1) * sc / ph, (x2 - x1) * sc / pw
        for i in range(ph):
            for j in range(pw):
                for u in range(sr):
                    y = ys + i * bh + (u + 0.5) * bh / sr
                    for v in range(sr):
                        x = xs + j * bw + (v + 0.5) * bw / sr
                        corners = ([c[:3] for c in _roi_bilinear(H, W, y, x)] if rule == "roi"
                                   else _conv_corners(H, W, y, x))
                        for qy, qx, wt in corners:
                            gi[b, :, qy, qx] += go[k, :, i, j] * wt / (sr * sr if count else 1)
    return gi


_ROI_VARIANTS = (
    ("no division by the number of samples", dict(count=False),
     "a bin is the MEAN of its sampling_ratio² samples (DCNv1 Eq. 5 divides by n_ij), so each sample hands back "
     "its share of the bin's gradient"),
    ("no half-pixel shift (torchvision's aligned=False)", dict(shift=0.0),
     "the course's RoI rule is aligned=True: box corner times spatial_scale, minus 0.5 (lesson 04, §1)"),
    ("deformable convolution's border rule instead of the RoI rule", dict(rule="conv"),
     "the RoI family clamps: a sample with -1 <= y <= 0 reads row 0, one with H-1 <= y <= H reads row H-1 (all its "
     "weight on that row), and only a sample beyond that is 0 -- the course's RoI rule, not Eq. (3)'s zero padding"),
    ("spatial_scale not applied", dict(scale=1.0),
     "the boxes are in input-image pixels: multiply their corners by spatial_scale to reach feature-map pixels"),
    ("every RoI scattered into image 0", dict(batch0=True),
     "column 0 of an RoI row is the index of the image it belongs to"),
    ("x and y swapped", dict(swap=True),
     "an RoI row is (batch index, x1, y1, x2, y2): x before y, and x runs along the columns (last axis)"),
)


SEED_ROI = 9


def _roi_cases(seed):
    """Four calls: one RoI inside the map; several RoIs on two images with a spatial scale; RoIs across the border
    (the clamp band and beyond); a non-square output with overlapping RoIs. Boxes and gradients from the seed."""
    rng = np.random.default_rng(seed)

    def boxes(k, n, lo, hi, min_size, scale):
        out = []
        for _ in range(k):
            x1, y1 = rng.uniform(lo[1], hi[1] - min_size), rng.uniform(lo[0], hi[0] - min_size)
            x2, y2 = rng.uniform(x1 + min_size, hi[1]), rng.uniform(y1 + min_size, hi[0])
            out.append([int(rng.integers(0, n)), x1 / scale, y1 / scale, x2 / scale, y2 / scale])
        return np.array(out)

    steps = [
        # N, C, H, W, K, (ph, pw), scale, ratio, box corners (y, x) lo/hi in map pixels, hint
        (1, 1, 6, 7, 1, (2, 2), 1.0, 1, (0.5, 0.5), (5.0, 6.0),
         "one RoI, one sample per bin: each bin's gradient goes to the four corners of its sample, by the bilinear "
         "weights"),
        (2, 2, 7, 6, 3, (3, 3), 0.5, 2, (0.0, 0.0), (6.0, 5.0),
         "several RoIs on two images, spatial_scale 0.5, 2 x 2 samples per bin: the bin is their mean"),
        (1, 2, 5, 5, 3, (2, 2), 1.0, 2, (-2.5, -2.5), (7.5, 7.5),
         "RoIs across the border: the course's RoI rule (clamp within one pixel of the map, 0 beyond)"),
        (2, 1, 8, 9, 4, (2, 3), 0.25, 3, (0.5, 0.5), (7.5, 8.5),
         "a (2, 3) output, 3 x 3 samples per bin, spatial_scale 0.25; where RoIs overlap their gradients add up"),
    ]
    cases = []
    for N, C, H, W, K, out_hw, scale, ratio, lo, hi, hint in steps:
        rois = boxes(K, N, lo, hi, 1.2, scale)
        go = rng.normal(size=(K, C, *out_hw))
        call = (f"my_roi_align_backward(grad_output {list(go.shape)}, rois [{K}, 5], input_shape {(N, C, H, W)}, "
                f"{out_hw}, spatial_scale={scale}, sampling_ratio={ratio})")
        cases.append({"args": [_t(go), _t(rois), (N, C, H, W), out_hw, scale, ratio], "call": call, "what": call,
                      "hint": hint})
    return cases


def _roi_verify(case, got):
    args, what, hint = case["args"], case["what"], case["hint"]
    want = _roi_want(args)
    arr = _tensor_or_fail(got, what)
    if arr.shape != want.shape:
        extra = ""
        if arr.shape == tuple(args[0].shape):
            extra = "\nHint: the gradient of the INPUT map has the input's shape, not the pooled output's"
        raise ExerciseError(f"{what}: expected shape {list(want.shape)} (input_shape), got {list(arr.shape)}{extra}")
    if np.allclose(arr, want, atol=1e-9, rtol=1e-7):
        return
    for name, kw, text in _ROI_VARIANTS:
        variant = _roi_scatter(args, **kw)
        if not np.allclose(variant, want, atol=1e-9, rtol=1e-7) and np.allclose(arr, variant, atol=1e-9, rtol=1e-7):
            raise ExerciseError(f"{what}: your gradient matches the answer with {name}.\nHint: {text}")
    expect_close(arr, want, what=what, atol=1e-9, rtol=1e-7, hint=hint)


#: q5: ``fn(grad_output, rois, input_shape, output_size, spatial_scale, sampling_ratio)`` -> ∂L/∂input
#: ``[N, C, H, W]`` of ``roi_align(input, rois, output_size, spatial_scale, sampling_ratio, aligned=True)`` for
#: ``L = Σ grad_output · output`` (torch float64; ``rois`` ``[K, 5]`` rows (b, x1, y1, x2, y2) in image pixels,
#: ``sampling_ratio`` > 0): every sample of bin (i, j) scatters ``grad_output[k, :, i, j] · G / sampling_ratio²``
#: onto its corners by the course's RoI rule. Compared with autograd through ``dcn_lessons.ops.roi_align``.
check_roi_align_backward = Question(_roi_cases, _roi_verify, seed=SEED_ROI, unavailable=_ROI_PACKAGE)
