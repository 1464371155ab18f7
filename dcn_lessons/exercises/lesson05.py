"""Checks for lesson 05 (PyTorch operators with hand-written backward). Globals of ``_core.py`` are injected.

* q1 :func:`check_mask_grad_columns` -- the backward of the modulation in the columns form the package uses
  (DCNv1 App. A, DCNv2 Eq. 1): from the gradient of the *masked* columns and the *unmasked* sampled columns
  to ∂L/∂Δm, one value per offset group, kernel point and output pixel.
* q2 :func:`check_init_offset` -- zero-initialise the offset (and mask) branch of a ``DeformConv2dPack`` /
  ``ModulatedDeformConv2dPack`` in place, so that a fresh v1 layer is ``conv2d`` and a fresh v2 layer is
  ``0.5 * conv2d + bias``.

Each check compares with the package (``dcn_lessons.ops``) and, when the answer is wrong, tries the typical
mistakes so that the message can say which one it was.
"""
import numpy as np  # noqa: F401


# ---------------------------------------------------------------------------------------------- q1

def _mask_grad_case(rng, n, C, G, kernel, stride, H, W, kind):
    """Random input, offsets and mask, the package's unmasked columns, a random gradient of the masked
    columns, and the package's mask gradient (``deform_col2im_coord``). All torch float64."""
    import torch

    from dcn_lessons.ops import deform_col2im_coord, deform_im2col

    K = kernel * kernel
    Ho, Wo = (H + 2 - kernel) // stride + 1, (W + 2 - kernel) // stride + 1
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a))  # noqa: E731
    x = t(rng.normal(size=(n, C, H, W)))
    if kind == "zero":
        off = t(np.zeros((n, 2 * G * K, Ho, Wo)))
    else:
        off = t(rng.uniform(-1.6, 1.6, size=(n, 2 * G * K, Ho, Wo)))
    mask = t(rng.uniform(0.1, 0.9, size=(n, G * K, Ho, Wo)))
    cols = deform_im2col(x, off, None, kernel, stride, 1, 1)  # [n, C*K, L], unmasked
    gcols = t(rng.normal(size=(n, C * K, Ho * Wo)))
    _, want = deform_col2im_coord(gcols, x, off, mask, kernel, stride, 1, 1)
    return cols, gcols, mask, want.numpy()


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


def check_mask_grad_columns(fn):
    """q1: ``fn(grad_columns, columns, mask, offset_groups)`` -> ``grad_mask`` shaped like ``mask``.

    grad_columns ``[n, C*K, P]``: ∂L/∂(masked columns); columns ``[n, C*K, P]``: the UNMASKED samples
    x_c(p + p_k + Δp_k), row ``c*K + k`` (``deform_im2col(..., mask=None, ...)``); mask ``[n, G*K, Ho, Wo]``
    (P = Ho*Wo); offset group g owns channels ``g*C/G ... (g+1)*C/G - 1``. All torch float64.
    Answer: ``grad_mask[n, g*K + k, p] = sum over c in group g of grad_columns[n, c*K + k, p] * columns[n, c*K + k, p]``,
    the mask gradient ``deform_col2im_coord`` returns.
    """
    rng = np.random.default_rng(5)
    cases = [
        (1, 1, 1, 3, 1, 5, 6, "zero", "one channel, zero offsets: grad_mask[k, p] = grad_columns[k, p] · columns[k, p]"),
        (2, 3, 1, 3, 1, 5, 4, "random", "sum over the C channels: row c*K + k of the columns is channel c, point k"),
        (1, 4, 2, 3, 1, 4, 5, "random", "two offset groups: group g sums its own channels g*C/G ... (g+1)*C/G - 1"),
        (2, 6, 3, 2, 2, 7, 5, "random", "a 2x2 kernel (K = 4), stride 2, three offset groups"),
    ]
    for n, C, G, kernel, stride, H, W, kind, hint in cases:
        cols, gcols, mask, want = _mask_grad_case(rng, n, C, G, kernel, stride, H, W, kind)
        K = kernel * kernel
        _, _, Ho, Wo = mask.shape
        what = (f"my_mask_grad_columns(grad_columns [{n}, {C * K}, {Ho * Wo}], columns [{n}, {C * K}, {Ho * Wo}], "
                f"mask [{n}, {G * K}, {Ho}, {Wo}], offset_groups={G})")
        got = call(fn, gcols.clone(), cols.clone(), mask.clone(), G, what=what)
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
            continue
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


# ---------------------------------------------------------------------------------------------- q2

def _snapshot(layer):
    return {name: p.detach().clone() for name, p in layer.named_parameters()}


def _fresh_layers():
    """A v1 and two v2 layers (float64) whose offset branches hold random numbers, as after training."""
    import torch

    from dcn_lessons.ops import DeformConv2dPack, ModulatedDeformConv2dPack

    torch.manual_seed(11)
    layers = [
        ("DeformConv2dPack(4, 6, 3, padding=1)", DeformConv2dPack(4, 6, 3, padding=1)),
        ("ModulatedDeformConv2dPack(4, 6, 3, padding=1, offset_groups=2)",
         ModulatedDeformConv2dPack(4, 6, 3, padding=1, offset_groups=2)),
        ("ModulatedDeformConv2dPack(4, 2, 3, stride=2, padding=2, dilation=2)",
         ModulatedDeformConv2dPack(4, 2, 3, stride=2, padding=2, dilation=2)),
    ]
    g = torch.Generator().manual_seed(12)
    out = []
    for desc, layer in layers:
        layer = layer.double()
        with torch.no_grad():
            layer.conv_offset.weight.copy_(0.5 * torch.randn(layer.conv_offset.weight.shape, generator=g, dtype=torch.float64))
            layer.conv_offset.bias.copy_(0.5 * torch.randn(layer.conv_offset.bias.shape, generator=g, dtype=torch.float64))
        out.append((desc, layer))
    return out


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
        return ("conv_offset is unchanged (still the random numbers it was given): your function did not zero it "
                "-- not written yet?\nHint: with torch.no_grad(): layer.conv_offset.weight.zero_(); "
                "layer.conv_offset.bias.zero_()  (or nn.init.zeros_ on both)")
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
    return ("conv_offset.weight is zero but conv_offset.bias is not: every output location then gets the SAME "
            f"offsets, the bias (e.g. kernel point 0 moves by (Δy, Δx) = ({float(shift[0, 0]):.2f}, "
            f"{float(shift[0, 1]):.2f})): the fresh layer is a plain conv of a shifted, bilinearly blurred input, "
            "not the plain conv.\nHint: zero conv_offset.bias as well as conv_offset.weight")


def check_init_offset(fn):
    """q2: ``fn(layer)`` zero-initialises ``layer.conv_offset`` (weight AND bias) in place and leaves the
    layer's own ``weight``/``bias`` alone; afterwards a ``DeformConv2dPack`` equals ``conv2d`` and a
    ``ModulatedDeformConv2dPack`` equals ``0.5 * conv2d + bias`` (DCNv1 §2.1, DCNv2 §3.2). The return value
    is ignored (returning the layer is fine); the layer passed in must be the one that changes.
    """
    import torch

    for desc, layer in _fresh_layers():
        what = f"my_init_offset({desc})"
        before = _snapshot(layer)
        x = torch.randn(2, layer.in_channels, 7, 8, generator=torch.Generator().manual_seed(13), dtype=torch.float64)
        try:
            got = call(fn, layer, what=what)
        except ExerciseError as e:
            if "leaf Variable" in str(e) or "in-place operation" in str(e):
                raise ExerciseError(f"{e}\nHint: parameters that require grad can only be changed in place inside "
                                    "`with torch.no_grad():` (nn.init.zeros_ does that for you)") from None
            raise
        changed = {name for name, p in layer.named_parameters()
                   if name not in before or p.shape != before[name].shape or not torch.equal(p.detach(), before[name])}
        if isinstance(got, torch.nn.Module) and got is not layer and not changed:
            raise ExerciseError(f"{what}: you returned a new {type(got).__name__} and left the layer you were given "
                                "unchanged.\nHint: initialise in place: the layer lives inside a model (and an "
                                "optimizer holds its parameters), so a new object would never be used; "
                                "change layer.conv_offset's parameters themselves")
        params = dict(layer.named_parameters())
        for name in ("conv_offset.weight", "conv_offset.bias"):
            p = params.get(name)
            if p is None:
                raise ExerciseError(f"{what}: the layer has no parameter {name} any more (it must stay an "
                                    "nn.Parameter of conv_offset, or the optimizer cannot train it)")
            if not p.requires_grad:
                raise ExerciseError(f"{what}: {name} no longer requires grad: the offsets would never learn.\n"
                                    "Hint: zero it in place under torch.no_grad(); do not freeze it")
            if p.shape != before[name].shape:
                raise ExerciseError(f"{what}: {name} has shape {list(p.shape)}, expected {list(before[name].shape)}")
        for name in ("weight", "bias"):
            if name in before and name in changed:
                now = params[name].detach() if name in params else None
                if now is not None and bool((now == 0).all()):
                    raise ExerciseError(f"{what}: you zeroed layer.{name}, the deformable conv's OWN {name}: the "
                                        "layer would "
                                        + ("output zero everywhere" if name == "weight" else "lose its bias")
                                        + ".\nHint: zero layer.conv_offset (the branch that predicts the offsets), "
                                        "not the layer's weight, which must keep the values of the conv it replaces")
                raise ExerciseError(f"{what}: you changed layer.{name}: leave the layer's own weight and bias as "
                                    "they are (they hold the plain conv's values, maybe pretrained) and zero only "
                                    "layer.conv_offset")
        try:
            with torch.no_grad():
                y = layer(x)
        except Exception as e:  # a replaced parameter of the wrong dtype, say
            raise ExerciseError(f"{what}: the layer no longer runs after your function: {type(e).__name__}: {e}\n"
                                "Hint: zero the existing parameters in place rather than replacing conv_offset or its "
                                "parameters (a replacement must keep the layer's dtype, device and shapes)") from None
        want = _plain_reference(layer, before, x)
        if tuple(y.shape) == tuple(want.shape) and torch.allclose(y, want, atol=1e-10, rtol=1e-8):
            continue
        reason = _branch_diagnosis(layer, before, x)
        if reason is not None:
            raise ExerciseError(f"{what}: {reason}")
        fresh = "0.5 * conv2d(x, weight) + bias" if "Modulated" in desc else "conv2d(x, weight, bias)"
        expect_close(y.numpy(), want.numpy(), what=f"{what}, then layer(x) vs {fresh}", atol=1e-10, rtol=1e-8)
