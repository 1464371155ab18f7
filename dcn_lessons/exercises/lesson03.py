"""Checks for lesson 03 (modulation, DCNv2). Globals of ``_core.py`` are injected by the loader.

* q1 :func:`check_split_branch` -- split the 3·G·K-channel branch output into offsets and sigmoid masks
  (DCNv2 §3.2).
* q2 :func:`check_mask_grad` -- the gradient of a loss with respect to the modulation scalars Δm_k of
  DCNv2 Eq. (1).

Each check compares with the package's NumPy reference and, when the answer is wrong, tries the typical
mistakes (sigmoid forgotten, channels taken in the wrong order, the mask multiplied in once too often, ...)
so that the message can say which one it was; the hints point to the lesson's sections, never to a line of the
answer. Each check names the package code that computes the same thing (``unavailable``): a graded second run
without it tells an answer that computes from one that only calls it. Lesson 02's ``deform_im2col`` stays
available: it is what q2 is built on.
"""
import numpy as np  # noqa: F401


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


# ---------------------------------------------------------------------------------------------- q1

def _split_variants(out, G, K):
    """(name, offset, mask) of the typical wrong splits of a branch output ``[N, 3GK, Ho, Wo]``."""
    N, _, Ho, Wo = out.shape
    right_off, logits = out[:, : 2 * G * K], out[:, 2 * G * K:]
    soft = np.exp(logits.reshape(N, G, K, Ho, Wo) - logits.reshape(N, G, K, Ho, Wo).max(axis=2, keepdims=True))
    soft = (soft / soft.sum(axis=2, keepdims=True)).reshape(N, G * K, Ho, Wo)
    triples = out.reshape(N, G, K, 3, Ho, Wo)  # (Δy, Δx, m) per kernel point
    blocks = out.reshape(N, G, 3 * K, Ho, Wo)  # [2K offsets | K masks] per group
    return [
        ("the sigmoid forgotten (the mask is the raw logits)", right_off, logits),
        ("a softmax over the kernel points instead of a sigmoid", right_off, soft),
        ("the mask taken from the FIRST G*K channels and the offsets from the rest",
         out[:, G * K:], _sigmoid(out[:, : G * K])),
        ("the channels read as (Δy, Δx, m) triples, one per kernel point",
         triples[:, :, :, :2].reshape(N, 2 * G * K, Ho, Wo), _sigmoid(triples[:, :, :, 2]).reshape(N, G * K, Ho, Wo)),
        ("the channels read as one [2K offsets | K masks] block per offset group",
         blocks[:, :, : 2 * K].reshape(N, 2 * G * K, Ho, Wo), _sigmoid(blocks[:, :, 2 * K:]).reshape(N, G * K, Ho, Wo)),
    ]


_SPLIT_HINTS = {
    "the sigmoid forgotten (the mask is the raw logits)":
        "the mask channels are logits: they go through a sigmoid (§2), so that every Δm lies in (0, 1)",
    "a softmax over the kernel points instead of a sigmoid":
        "DCNv2 uses an elementwise sigmoid: each Δm_k lies in (0, 1) on its own, the K of them need not sum to 1",
    "the mask taken from the FIRST G*K channels and the offsets from the rest":
        "re-read §2 (DCNv2 §3.2): which part of the 3K channels are the offsets, which the mask?",
    "the channels read as (Δy, Δx, m) triples, one per kernel point":
        "the branch output is not interleaved per kernel point: re-read §2 and its picture of the channels",
    "the channels read as one [2K offsets | K masks] block per offset group":
        "with G offset groups the channels are not grouped per offset group: re-read §2's paragraph on G, and the "
        "offset layout deform_conv2d expects",
}


SEED_Q1 = 3


def _split_cases(seed):
    """Four branch outputs: zero (a fresh branch), random with 1, 2 and 3 offset groups; data from the seed."""
    rng = np.random.default_rng(seed)
    steps = [
        (1, 1, 9, 4, 5, "zero", "a zero-initialised branch gives Δp = 0 and Δm = sigmoid(0) = 0.5"),
        (2, 1, 9, 4, 3, "random", "re-read §2: which channels are the offsets, which the mask, and what happens to "
         "the mask's"),
        (1, 2, 9, 3, 3, "random", "re-read §2's paragraph on G offset groups: the order of the channels with G > 1"),
        (2, 3, 4, 2, 3, "random", "a 2x2 kernel has K = 4 points; the branch then has 3*G*4 channels"),
    ]
    cases = []
    for N, G, K, Ho, Wo, kind, hint in steps:
        out = np.zeros((N, 3 * G * K, Ho, Wo)) if kind == "zero" else rng.normal(scale=2.0, size=(N, 3 * G * K, Ho, Wo))
        what = f"my_split_branch(out [{N}, {3 * G * K}, {Ho}, {Wo}], offset_groups={G})"
        cases.append({"args": [out, G], "call": what, "what": what, "hint": hint, "K": K})
    return cases


def _split_verify(case, got):
    out, G = case["args"]
    what, hint, K = case["what"], case["hint"], case["K"]
    N, _, Ho, Wo = out.shape
    if got is None:
        raise ExerciseError(f"{what}: your function returned None -- did you forget `return offset, mask`?")
    if not isinstance(got, (tuple, list)) or len(got) != 2:
        kind = got.type_name if isinstance(got, Opaque) else type(got).__name__
        raise ExerciseError(f"{what}: expected a pair (offset, mask), got {kind}"
                            + (f" of length {len(got)}" if isinstance(got, (tuple, list)) else ""))
    off_shape, mask_shape = (N, 2 * G * K, Ho, Wo), (N, G * K, Ho, Wo)
    a, b = _np(got[0], what + "[0] (offset)"), _np(got[1], what + "[1] (mask)")
    if a.shape == mask_shape and b.shape == off_shape:
        raise ExerciseError(f"{what}: the pair is in the wrong order: got shapes {list(a.shape)}, {list(b.shape)}"
                            f"\nHint: return (offset [N, 2*G*K, Ho, Wo], mask [N, G*K, Ho, Wo])")
    expect_shape(a, off_shape, what + "[0] (offset, expected [N, 2*G*K, Ho, Wo])")
    expect_shape(b, mask_shape, what + "[1] (mask, expected [N, G*K, Ho, Wo])")
    want_off, want_mask = out[:, : 2 * G * K], _sigmoid(out[:, 2 * G * K:])
    if np.allclose(a, want_off, atol=1e-8, rtol=1e-6) and np.allclose(b, want_mask, atol=1e-8, rtol=1e-6):
        return
    for name, v_off, v_mask in _split_variants(out, G, K):
        if _first_match(a, [(name, v_off)]) and _first_match(b, [(name, v_mask)]):
            raise ExerciseError(f"{what}: your (offset, mask) match the answer with {name}."
                                f"\nHint: {_SPLIT_HINTS[name]}")
    expect_close(a, want_off, what=what + "[0] (offset)", hint=hint)
    expect_close(b, want_mask, what=what + "[1] (mask)", hint=hint)


#: q1: ``fn(out, offset_groups)`` -> ``(offset, mask)`` from the branch output ``out [N, 3*G*K, Ho, Wo]``:
#: offset ``[N, 2*G*K, Ho, Wo]`` = the first 2*G*K channels (channel 2k = Δy, 2k+1 = Δx, group-major); mask
#: ``[N, G*K, Ho, Wo]`` = sigmoid of the remaining G*K channels (DCNv2 §3.2). The package splits the branch inside
#: its modulated layer's forward; that layer is what the graded second run makes unavailable.
check_split_branch = Question(_split_cases, _split_verify, seed=SEED_Q1,
                              unavailable=("dcn_lessons.ops.layers:ModulatedDeformConv2dPack",))


# ---------------------------------------------------------------------------------------------- q2

def _mask_grad_ref(x, offset, mask, weight, grad_out, padding):
    from dcn_lessons.reference import deform_conv2d_backward

    grads = deform_conv2d_backward(grad_out[None], x[None], offset[None], weight, padding=padding, mask=mask[None])
    return grads.mask[0]


def _swap_yx(offset):
    """Offsets [2K, ...] with the Δy and Δx channels of every kernel point exchanged."""
    return offset.reshape(-1, 2, *offset.shape[1:])[:, ::-1].reshape(offset.shape).copy()


_GRAD_HINTS = {
    "an extra factor Δm_k": "y(p) is linear in Δm_k: Δm_k itself does not appear in its own derivative (§3; the "
                            "mask scales the OFFSET and INPUT gradients, not its own)",
    "an extra factor Δm_k(1 - Δm_k)": "that is the gradient with respect to the mask LOGIT (through the sigmoid); "
                                      "the question asks for ∂L/∂Δm_k itself",
    "the offsets ignored": "read x at the deformed positions p + p_k + Δp_k, not on the regular grid",
    "Δy and Δx swapped": "channel 2k of `offset` is Δy (moves along rows), channel 2k+1 is Δx",
    "the kernel transposed (k = j*kw + i)": "kernel point k = i*kw + j pairs with weight[:, :, i, j]",
    "the sign flipped": "L grows with Δm_k where grad_out · w_k · x(...) is positive",
}


SEED_Q2 = 4


def _mask_grad_cases(seed):
    """Four shapes: zero offsets, fractional offsets, several output channels, a 2x2 kernel; data from the seed."""
    rng = np.random.default_rng(seed)
    steps = [
        (2, 1, 5, 6, 3, 1, "zero", "with zero offsets x(p + p_k) is a plain pixel (off the map: 0)"),
        (2, 1, 6, 5, 3, 1, "fractional", "sum over the input channels c: ∂y/∂Δm_k = Σ_c w[c, k] · x_c(p + p_k + Δp_k)"),
        (3, 2, 5, 6, 3, 1, "fractional", "sum over the output channels o too, each weighted by grad_out[o, p]"),
        (2, 2, 5, 5, 2, 0, "fractional", "a 2x2 kernel, padding 0: K = 4 and Ho = H - 1"),
    ]
    cases = []
    for C, O, H, W, k, p, kind, hint in steps:
        K, Ho, Wo = k * k, H + 2 * p - k + 1, W + 2 * p - k + 1
        x = rng.normal(size=(C, H, W))
        off = np.zeros((2 * K, Ho, Wo)) if kind == "zero" else rng.uniform(-1.5, 1.5, size=(2 * K, Ho, Wo))
        mask = rng.uniform(0.1, 0.9, size=(K, Ho, Wo))
        weight = rng.normal(size=(O, C, k, k))
        grad_out = rng.normal(size=(O, Ho, Wo))
        what = (f"my_mask_grad(x [{C}, {H}, {W}], offset [{2 * K}, {Ho}, {Wo}], mask [{K}, {Ho}, {Wo}], "
                f"weight [{O}, {C}, {k}, {k}], grad_out [{O}, {Ho}, {Wo}], padding={p})")
        cases.append({"args": [x, off, mask, weight, grad_out, p], "call": what, "what": what, "hint": hint,
                      "kind": kind})
    return cases


def _mask_grad_verify(case, got):
    x, off, mask, weight, grad_out, p = case["args"]
    what, hint, kind = case["what"], case["hint"], case["kind"]
    C = x.shape[0]
    O, K = weight.shape[0], weight.shape[2] * weight.shape[3]
    Ho, Wo = mask.shape[1:]
    want = _mask_grad_ref(x, off, mask, weight, grad_out, p)
    arr = _np(got, what)
    if arr.shape != want.shape:
        sum_c = "sum over the input channels c (the mask is shared by all channels of a group)"
        sum_o = "sum over the output channels o, each weighted by grad_out[o]"
        known = {
            (O, K, Ho, Wo): sum_o,
            (C * K, Ho, Wo): sum_c,
            (C, K, Ho, Wo): sum_c if C != O else f"{sum_c}; and {sum_o}",
            (K, Ho * Wo): "return one [Ho, Wo] map per kernel point: shape [K, Ho, Wo]",
        }
        extra = known.get(tuple(arr.shape))
        raise ExerciseError(f"{what}: expected shape {list(want.shape)} = [K, Ho, Wo], got {list(arr.shape)}"
                            + (f"\nHint: {extra}" if extra else ""))
    if np.allclose(arr, want, atol=1e-8, rtol=1e-6):
        return
    variants = [
        ("an extra factor Δm_k", want * mask),
        ("an extra factor Δm_k(1 - Δm_k)", want * mask * (1 - mask)),
        ("the offsets ignored", _mask_grad_ref(x, np.zeros_like(off), mask, weight, grad_out, p)),
        ("Δy and Δx swapped", _mask_grad_ref(x, _swap_yx(off), mask, weight, grad_out, p)),
        ("the kernel transposed (k = j*kw + i)",
         _mask_grad_ref(x, off, mask, np.ascontiguousarray(weight.transpose(0, 1, 3, 2)), grad_out, p)),
        ("the sign flipped", -want),
    ]
    if kind == "zero":
        variants = [v for v in variants if v[0] not in ("the offsets ignored", "Δy and Δx swapped")]
    mistake = _first_match(arr, variants)
    if mistake is not None:
        raise ExerciseError(f"{what}: your gradient matches the answer with {mistake}.\nHint: {_GRAD_HINTS[mistake]}")
    expect_close(arr, want, what=what, hint=hint)


#: q2: ``fn(x, offset, mask, weight, grad_out, padding)`` -> ``[K, Ho, Wo]``: ∂L/∂Δm_k (DCNv2 Eq. 1). x
#: ``[C, H, W]``; offset ``[2K, Ho, Wo]`` (one offset group, channel 2k = Δy, 2k+1 = Δx); mask ``[K, Ho, Wo]``;
#: weight ``[O, C, kh, kw]``; grad_out ``[O, Ho, Wo]`` = ∂L/∂y; stride 1, dilation 1. Answer:
#: ``sum_o sum_c grad_out[o, p] · weight[o, c, i, j] · x_c(p + p_k + Δp_k)``, k = i*kw + j. The package's mask
#: gradient (its backward, its col2im_coord in every tier) is unavailable in the graded second run.
check_mask_grad = Question(
    _mask_grad_cases, _mask_grad_verify, seed=SEED_Q2,
    unavailable=("dcn_lessons.reference.deform_conv:deform_conv2d_backward",
                 "dcn_lessons.reference.deform_conv:deform_col2im_coord",
                 "dcn_lessons.reference.deform_conv:_col2im_coord",
                 "dcn_lessons.ops.deform_conv:deform_col2im_coord", "dcn_lessons.backends:select"),
)
