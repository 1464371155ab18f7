"""Checks for lesson 08 (Spatial support: what they learn). Globals of ``_core.py`` are injected.

* q1 :func:`check_true_offsets` -- the offsets a "same" 3x3 deformable conv must learn to undo a known affine warp:
  ``Δ_k(p) = u(p + p_k)``, the forward displacement at the kernel point's regular position (the known-warp
  experiment, :mod:`dcn_lessons.analysis.warp`).
* q2 :func:`check_erf` -- the effective receptive field of one node by ONE backward pass: ``|∂r/∂I|`` summed over
  the image channels (DCNv2 §2.1). The network is built by the check (a conv, batch norm, a deformable conv, a
  strided conv), handed over in training mode, and its forward passes are counted.
* q3 :func:`check_effective_dilation` -- the effective dilation of one 3x3 deformable filter: the mean distance
  between its adjacent sampling locations (DCNv1 §4, Table 2).

The references are the package's (:mod:`dcn_lessons.analysis`); a wrong answer is compared with the typical
mistakes so that the message says which one it was, without printing the answer. Each check names the package
functions that compute the same thing (``unavailable``): a graded second run without them tells an answer that
computes from one that only calls them.
"""
import numpy as np  # noqa: F401


# ---------------------------------------------------------------------------------------------- q1

def _grid(h, w):
    """Regular positions ``p + p_k`` of a 3x3 "same" conv: ``[9, H, W]`` rows and columns (k = 3i + j)."""
    i, j = np.divmod(np.arange(9), 3)
    yy, xx = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64), indexing="ij")
    return yy[None] + (i - 1.0)[:, None, None], xx[None] + (j - 1.0)[:, None, None]


def _affine_u(matrix, shift, centre, py, px):
    """``u(s) = ψ(s) - s`` of ``ψ(s) = c + M (s - c) + t`` at (row, column) points."""
    m, t, c = (np.asarray(a, dtype=np.float64) for a in (matrix, shift, centre))
    d = np.stack([py - c[0], px - c[1]], axis=-1)
    moved = d @ (m - np.eye(2)).T + t
    return moved[..., 0], moved[..., 1]


def _true_ref(matrix, shift, centre, h, w):
    from dcn_lessons.analysis.warp import AffineField, true_offsets

    return true_offsets(AffineField(matrix, shift, centre), (h, w), 3)


SEED_Q1 = 13


def _true_cases(seed):
    """A translation, a scaling about the centre, a rotation, then random affine maps; sizes from the seed."""
    rng = np.random.default_rng(seed)
    h, w = (int(v) for v in rng.integers(5, 10, size=2))
    th = np.deg2rad(float(rng.uniform(10, 30)))
    steps = [
        (np.eye(2), (float(rng.integers(1, 3)), -float(rng.integers(1, 3))), (0.0, 0.0),
         "a translation by whole pixels: every kernel point of every output moves by t"),
        (1.25 * np.eye(2), (0.0, 0.0), ((h - 1) / 2, (w - 1) / 2),
         "a scaling about the centre of the image: the kernel is scaled too, DCNv1 Fig. 1 (c)"),
        (np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]]), (0.0, 0.0), (h / 3, w / 2),
         "a rotation about a point: M acts on (row, column) vectors"),
    ]
    for _ in range(2):
        m = np.eye(2) + rng.uniform(-0.3, 0.3, size=(2, 2))
        steps.append((m, tuple(float(v) for v in rng.uniform(-1.5, 1.5, 2)),
                      tuple(float(v) for v in rng.uniform(0, 6, 2)), "a random affine map"))
    cases = []
    for m, t, c, hint in steps:
        call = f"my_true_offsets(matrix, shift, centre, {h}, {w})"
        cases.append({"args": [np.asarray(m, dtype=np.float64), tuple(t), tuple(c), h, w], "call": call,
                      "what": f"{call} ({hint})"})
    return cases


def _true_variants(matrix, shift, centre, h, w):
    """(name, array [9, 2, H, W]) of typical wrong answers."""
    from dcn_lessons.analysis.warp import AffineField

    py, px = _grid(h, w)
    uy, ux = _affine_u(matrix, shift, centre, py, px)
    right = np.stack([uy, ux], axis=1)
    field = AffineField(matrix, shift, centre)
    sy, sx = field.inverse(py, px)  # where the content at the regular position came from
    at_p = np.repeat(right[4:5], 9, axis=0)  # u evaluated at the output p (kernel point 4 sits on p)
    qy, qx = _grid(h, w)
    ny, nx = _affine_u(matrix, shift, centre, qy + 1.0, qx + 1.0)  # kernel points at p + (i, j), padding forgotten
    mt = np.asarray(matrix, dtype=np.float64).T
    ty, tx = _affine_u(mt, shift, centre, py, px)
    return [
        ("the backward displacement φ(q) - q (where the content came from)", np.stack([sy - py, sx - px], axis=1)),
        ("ψ(s) itself (the new position, not the displacement)", np.stack([uy + py, ux + px], axis=1)),
        ("one displacement per output, u(p), for all nine kernel points", at_p),
        ("Δx before Δy", right[:, ::-1]),
        ("the kernel points at p + (i, j), padding forgotten", np.stack([ny, nx], axis=1)),
        ("the matrix transposed", np.stack([ty, tx], axis=1)),
        ("the sign flipped", -right),
    ]


_Q1_HINTS = {
    "the backward displacement φ(q) - q (where the content came from)":
        "kernel point k of output p must read, in the WARPED image, the content the plain conv reads at p + p_k in "
        "the source: that content moved to ψ(p + p_k). Re-read the derivation in §1",
    "ψ(s) itself (the new position, not the displacement)":
        "an offset is a displacement from the regular position: subtract the point you evaluated at",
    "one displacement per output, u(p), for all nine kernel points":
        "each kernel point is displaced by the field at ITS OWN regular position p + p_k, not at the centre p",
    "Δx before Δy": "index 0 of the second axis is Δy (rows), index 1 is Δx (columns)",
    "the kernel points at p + (i, j), padding forgotten":
        "a 'same' 3x3 conv has padding 1: kernel point (i, j) of output p sits at p + (i - 1, j - 1)",
    "the matrix transposed": "M acts on (row, column) column vectors: ψ(s) = c + M (s - c) + t",
    "the sign flipped": "a translation that moves the content by +t needs offsets +t (the sample follows the content)",
}


def _true_verify(case, got):
    m, t, c, h, w = case["args"]
    what = case["what"]
    arr = _np(got, what)
    want = _true_ref(m, t, c, h, w)
    if arr.shape != want.shape:
        if arr.shape == (2, 9, h, w):
            raise ExerciseError(f"{what}: expected shape [9, 2, {h}, {w}] (kernel point, (Δy, Δx), row, column), got "
                                f"{list(arr.shape)}: the two leading axes are exchanged")
        expect_shape(arr, want.shape, what + " (expected [9, 2, H, W])")
    if np.allclose(arr, want, atol=1e-8, rtol=1e-6):
        return
    mistake = _first_match(arr, _true_variants(m, t, c, h, w))
    if mistake is not None:
        raise ExerciseError(f"{what}: your offsets match {mistake}.\nHint: {_Q1_HINTS[mistake]}")
    bad = ~np.isclose(arr, want, atol=1e-8, rtol=1e-6)
    k, a, y, x = (int(v) for v in np.argwhere(bad)[0])
    raise ExerciseError(f"{what}: {int(bad.sum())} of {bad.size} values are wrong; first at kernel point {k}, "
                        f"{'Δy' if a == 0 else 'Δx'}, output ({y}, {x}): got {arr[k, a, y, x]:.6g}.\nHint: the offset "
                        "of kernel point k of output p is u(p + p_k) = ψ(p + p_k) - (p + p_k)")


#: q1: ``fn(matrix, shift, centre, height, width)`` -> ``[9, 2, H, W]``: the offsets (Δy, Δx) of kernel point
#: k = 3i + j of output (y, x) of a 3x3 conv (stride 1, padding 1) that undo the affine warp
#: ``ψ(s) = centre + matrix @ (s - centre) + shift`` on (row, column) points: ``u(p + p_k)``, ``u(s) = ψ(s) - s``.
check_true_offsets = Question(
    _true_cases, _true_verify, seed=SEED_Q1,
    unavailable=("dcn_lessons.analysis.warp:true_offsets", "dcn_lessons.analysis.warp:AffineField"),
)


# ---------------------------------------------------------------------------------------------- q2

def _dilation_ref(offsets, dilation):
    from dcn_lessons.analysis.dilation import effective_dilation

    field = np.asarray(offsets, dtype=np.float64).reshape(1, 18, 1, 1)
    return float(effective_dilation(field, 3, int(dilation))[0, 0, 0, 0])


def _positions(offsets, dilation):
    i, j = np.divmod(np.arange(9), 3)
    return np.stack([i * dilation, j * dilation], axis=1) + np.asarray(offsets, dtype=np.float64).reshape(9, 2)


def _dilation_variants(offsets, dilation):
    p = _positions(offsets, dilation).reshape(3, 3, 2)
    q = _positions(offsets, 1).reshape(3, 3, 2)
    flat = p.reshape(9, 2)
    rows = np.linalg.norm(p[:, 1:] - p[:, :-1], axis=-1).ravel()
    cols = np.linalg.norm(p[1:] - p[:-1], axis=-1).ravel()
    diag = np.concatenate([np.linalg.norm(p[1:, 1:] - p[:-1, :-1], axis=-1).ravel(),
                           np.linalg.norm(p[1:, :-1] - p[:-1, 1:], axis=-1).ravel()])
    all_pairs = [np.linalg.norm(flat[a] - flat[b]) for a in range(9) for b in range(a + 1, 9)]
    manhattan = np.concatenate([np.abs(p[:, 1:] - p[:, :-1]).sum(-1).ravel(), np.abs(p[1:] - p[:-1]).sum(-1).ravel()])
    sq = np.concatenate([((p[:, 1:] - p[:, :-1]) ** 2).sum(-1).ravel(), ((p[1:] - p[:-1]) ** 2).sum(-1).ravel()])
    o = np.asarray(offsets, dtype=np.float64).reshape(3, 3, 2)
    only_off = np.concatenate([np.linalg.norm(o[:, 1:] - o[:, :-1], axis=-1).ravel(),
                               np.linalg.norm(o[1:] - o[:-1], axis=-1).ravel()])
    swapped = _positions(np.asarray(offsets, dtype=np.float64).reshape(9, 2)[:, ::-1], dilation).reshape(3, 3, 2)
    sw = np.concatenate([np.linalg.norm(swapped[:, 1:] - swapped[:, :-1], axis=-1).ravel(),
                         np.linalg.norm(swapped[1:] - swapped[:-1], axis=-1).ravel()])
    q_d = np.concatenate([np.linalg.norm(q[:, 1:] - q[:, :-1], axis=-1).ravel(),
                          np.linalg.norm(q[1:] - q[:-1], axis=-1).ravel()])
    return [
        ("the diagonal neighbours counted too", np.concatenate([rows, cols, diag]).mean()),
        ("every pair of the nine points", np.mean(all_pairs)),
        ("only the neighbours along rows", rows.mean()),
        ("only the neighbours along columns", cols.mean()),
        ("the city-block distance |Δy| + |Δx|", manhattan.mean()),
        ("squared distances", sq.mean()),
        ("distances between the offsets alone, without the regular grid", only_off.mean()),
        ("the regular grid of dilation 1", q_d.mean()),
        ("each offset read as (Δx, Δy)", sw.mean()),
    ]


_Q2_HINTS = {
    "the diagonal neighbours counted too": "adjacent means next to each other in a row or in a column of the 3x3 "
                                           "grid: 6 + 6 = 12 pairs",
    "every pair of the nine points": "only ADJACENT sampling locations: neighbours in a row or a column of the grid",
    "only the neighbours along rows": "the pairs along columns count as well",
    "only the neighbours along columns": "the pairs along rows count as well",
    "the city-block distance |Δy| + |Δx|": "the distance between two locations is Euclidean",
    "squared distances": "the mean of the distances, not of their squares",
    "distances between the offsets alone, without the regular grid":
        "the sampling location of kernel point (i, j) is its regular position (i·d, j·d) PLUS its offset",
    "the regular grid of dilation 1": "the regular grid of a dilated filter has spacing d: (i·d, j·d)",
    "each offset read as (Δx, Δy)": "offsets[k] is (Δy, Δx): rows first",
}

SEED_Q2 = 17


def _dilation_cases(seed):
    rng = np.random.default_rng(seed)
    i, j = np.divmod(np.arange(9), 3)
    grid = np.stack([i - 1.0, j - 1.0], axis=1)
    s = float(rng.uniform(1.5, 3.0))
    steps = [
        (np.zeros((9, 2)), 1, "zero offsets: the regular grid of dilation 1"),
        (np.zeros((9, 2)), 2, "zero offsets, dilation 2: an atrous filter"),
        ((s - 1.0) * grid, 1, "offsets that scale the grid about its centre (DCNv1 Fig. 1 (c))"),
        (np.tile(rng.uniform(-2, 2, size=(1, 2)), (9, 1)), 1, "every point moved by the same offset"),
        (rng.normal(scale=0.8, size=(9, 2)), 1, "random offsets"),
        (rng.normal(scale=1.5, size=(9, 2)), int(rng.integers(2, 4)), "random offsets on a dilated grid"),
    ]
    cases = []
    for off, d, what in steps:
        call = f"my_effective_dilation(offsets, dilation={d})"
        cases.append({"args": [off, d], "call": call, "what": f"{call} ({what})"})
    return cases


def _dilation_verify(case, got):
    off, d = case["args"]
    what = case["what"]
    if isinstance(got, Failed):
        raise ExerciseError(got.message(what))
    if got is None:
        raise ExerciseError(f"{what}: your function returned None -- did you forget `return`?")
    arr = _np(got, what)
    if arr.size != 1:
        raise ExerciseError(f"{what}: expected one number (the mean distance), got shape {list(arr.shape)}")
    value = float(arr.reshape(()))
    want = _dilation_ref(off, d)
    if np.isclose(value, want, atol=1e-6, rtol=1e-6):  # float32 answers too
        return
    for name, v in _dilation_variants(off, d):
        if np.isclose(value, v, atol=1e-6, rtol=1e-6) and not np.isclose(v, want, atol=1e-6, rtol=1e-6):
            raise ExerciseError(f"{what}: your value matches {name}.\nHint: {_Q2_HINTS[name]}")
    raise ExerciseError(f"{what}: got {value:.6g}, which is too {'large' if value > want else 'small'}.\nHint: the mean, "
                        "over the 12 pairs of grid neighbours, of the Euclidean distance between their sampling "
                        "locations (i·d + Δy, j·d + Δx)")


#: q2: ``fn(offsets, dilation)`` -> the effective dilation of one 3x3 filter (DCNv1 Table 2): offsets ``[9, 2]``
#: (Δy, Δx) of kernel point k = 3i + j, whose sampling location is ``(i·d + Δy, j·d + Δx)`` up to a shift; the mean
#: Euclidean distance over the 12 pairs of row and column neighbours.
check_effective_dilation = Question(
    _dilation_cases, _dilation_verify, seed=SEED_Q2,
    unavailable=("dcn_lessons.analysis.dilation:effective_dilation",),
)


# ---------------------------------------------------------------------------------------------- q3

def _erf_model(weights):
    """The network of q3, from its weights: conv 3x3 -> batch norm -> ReLU -> deformable 3x3 (offsets predicted) ->
    ReLU -> conv 3x3 stride 2; float64, in training mode (as a freshly built module is)."""
    import torch
    from torch import nn

    from dcn_lessons.ops import DeformConv2dPack

    c = int(weights["conv1.weight"].shape[1])
    model = nn.Sequential(
        nn.Conv2d(c, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
        DeformConv2dPack(4, 4, 3, padding=1), nn.ReLU(),
        nn.Conv2d(4, 3, 3, stride=2, padding=1),
    ).double()
    names = {"conv1": "0", "bn": "1", "deform": "3", "conv2": "5"}
    state = {}
    for key, value in weights.items():
        head, _, rest = key.partition(".")
        state[f"{names[head]}.{rest}"] = torch.as_tensor(value, dtype=torch.float64)
    state["1.num_batches_tracked"] = torch.tensor(0)
    model.load_state_dict(state)
    return model


def _erf_weights(rng, c):
    def t(*shape, scale=1.0):
        return rng.normal(scale=scale, size=shape)

    return {
        "conv1.weight": t(4, c, 3, 3, scale=0.5), "conv1.bias": t(4, scale=0.1),
        "bn.weight": rng.uniform(0.5, 1.5, 4), "bn.bias": t(4, scale=0.1),
        "bn.running_mean": t(4, scale=0.3), "bn.running_var": rng.uniform(0.5, 2.0, 4),
        "deform.weight": t(4, 4, 3, 3, scale=0.5), "deform.bias": t(4, scale=0.1),
        "deform.conv_offset.weight": t(18, 4, 3, 3, scale=0.15), "deform.conv_offset.bias": t(18, scale=0.5),
        "conv2.weight": t(3, 4, 3, 3, scale=0.5), "conv2.bias": t(3, scale=0.1),
    }


SEED_Q3 = 19


def _erf_cases(seed):
    rng = np.random.default_rng(seed)
    cases = []
    for c, h, w in ((1, 12, 12), (2, 14, 11), (3, 13, 16)):
        ho, wo = (h + 1) // 2, (w + 1) // 2
        node = (int(rng.integers(1, ho - 1)), int(rng.integers(1, wo - 1)))
        while node[0] == node[1]:  # (y, x) and (x, y) must differ for the check to notice a swap
            node = (int(rng.integers(1, ho - 1)), int(rng.integers(1, wo - 1)))
        image = rng.normal(size=(1, c, h, w))
        call = f"my_erf(model, image [1, {c}, {h}, {w}], node={node})"
        cases.append({"args": [_erf_weights(rng, c), image, node], "call": call,
                      "what": f"{call} (output map {ho}x{wo})"})
    return cases


def _erf_run(fn, args):
    """Build the network from the weights, count its forward passes, run the answer; return what it returned
    and how many forward passes it made."""
    import torch

    weights, image, node = args
    model = _erf_model(weights)
    calls = [0]
    model.register_forward_pre_hook(lambda mod, inp: calls.__setitem__(0, calls[0] + 1))
    out = call_answer(fn, [model, torch.as_tensor(image, dtype=torch.float64), tuple(int(v) for v in node)])
    if isinstance(out, Failed):
        return out
    return {"erf": out, "forwards": calls[0]}


def _erf_of(weights, image, node, train=False, signed=False, abs_after_sum=False, all_nodes=False, channel=None):
    """|∂r/∂I| [H, W] of the network of q3 (and the typical mistakes, by their flags)."""
    import torch

    model = _erf_model(weights)
    model.train(train)
    x = torch.as_tensor(image, dtype=torch.float64).clone().requires_grad_(True)
    out = model(x)
    y, xx = node
    if all_nodes:
        r = out.sum()
    elif channel is not None:
        r = out[0, channel, y, xx]
    else:
        r = out[0, :, y, xx].sum()
    (g,) = torch.autograd.grad(r, x)
    g = g[0].numpy()
    if signed:
        return g.sum(0)
    if abs_after_sum:
        return np.abs(g.sum(0))
    return np.abs(g).sum(0)


def _erf_ref(weights, image, node):
    import torch

    from dcn_lessons.analysis.modalities import effective_receptive_field

    model = _erf_model(weights)
    return effective_receptive_field(model, torch.as_tensor(image, dtype=torch.float64), node)


_Q3_HINTS = {
    "the network in training mode": "in training mode BatchNorm normalises with THIS image's own mean and variance, "
                                    "so every pixel reaches every node (the map fills the image). Analyse a network "
                                    "as it runs at test time: model.eval() before the forward pass",
    "the signed gradient": "the ERF is the MAGNITUDE of the gradient: take the absolute value per pixel and channel",
    "the absolute value taken after summing the image channels": "take |∂r/∂I| per image channel first, then sum "
                                                                  "over the channels (gradients of opposite signs "
                                                                  "must not cancel)",
    "the node's row and column exchanged": "node = (y, x): row first, as the map is indexed [N, C, y, x]",
    "the gradient of the whole output map": "the response of ONE node: the output at (y, x) only, summed over its "
                                            "channels",
    "the response of channel 0 only": "the node's response sums all its channels",
}


def _erf_verify(case, got):
    weights, image, node = case["args"]
    what = case["what"]
    if isinstance(got, Failed):
        raise ExerciseError(got.message(what))
    if not (isinstance(got, dict) and "erf" in got and "forwards" in got):
        raise ExerciseError(f"{what}: the check could not read your answer")
    erf, forwards = got["erf"], int(got["forwards"])
    if isinstance(erf, Failed):
        raise ExerciseError(erf.message(what))
    if erf is None:
        raise ExerciseError(f"{what}: your function returned None -- did you forget `return`?")
    h, w = np.asarray(image).shape[-2:]
    c = np.asarray(image).shape[1]
    arr = _np(erf, what)
    if arr.shape != (h, w):
        if arr.shape in ((c, h, w), (1, c, h, w)):
            raise ExerciseError(f"{what}: expected one value per pixel [{h}, {w}], got {list(arr.shape)}.\nHint: sum "
                                "|∂r/∂I| over the image channels")
        expect_shape(arr, (h, w), what + " (one value per image pixel)")
    if forwards > 2:
        raise ExerciseError(f"{what}: your function ran the network {forwards} times.\nHint: one forward pass and one "
                            "backward pass give the gradient of the node with respect to every pixel at once "
                            "(autograd: mark the image as requiring grad, then backward from the node's response)")
    want = _erf_ref(weights, image, node)
    if np.allclose(arr, want, atol=1e-9, rtol=1e-7):
        return
    y, x = node
    variants = [
        ("the network in training mode", _erf_of(weights, image, node, train=True)),
        ("the signed gradient", _erf_of(weights, image, node, signed=True)),
        ("the absolute value taken after summing the image channels", _erf_of(weights, image, node, abs_after_sum=True)),
        ("the node's row and column exchanged", _erf_of(weights, image, (x, y))),
        ("the gradient of the whole output map", _erf_of(weights, image, node, all_nodes=True)),
        ("the response of channel 0 only", _erf_of(weights, image, node, channel=0)),
    ]
    mistake = _first_match(arr, [(n, v) for n, v in variants if not np.allclose(v, want, atol=1e-9, rtol=1e-7)])
    if mistake is not None:
        raise ExerciseError(f"{what}: your map matches {mistake}.\nHint: {_Q3_HINTS[mistake]}")
    expect_close(arr, want, what=what, atol=1e-9, rtol=1e-7,
                 hint="r = the output at the node, summed over its channels, with the network in eval mode; the ERF "
                      "is |∂r/∂I| summed over the image channels")


#: q3: ``fn(model, image, node)`` -> ``[H, W]``: the effective receptive field of ``node = (y, x)`` of ``model``'s
#: output for ``image`` ``[1, C, H, W]`` (float64): ``|∂r/∂I|`` summed over the C image channels, with
#: ``r = Σ_c model(image)[0, c, y, x]`` and the model in eval mode; one forward and one backward pass.
check_erf = Question(
    _erf_cases, _erf_verify, run=_erf_run, seed=SEED_Q3,
    unavailable=("dcn_lessons.analysis.modalities:effective_receptive_field",),
)
