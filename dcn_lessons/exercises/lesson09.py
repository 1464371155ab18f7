"""Checks for lesson 09 (the capstone: a deformable Faster R-CNN with R-CNN feature mimicking). Globals of
``_core.py`` are injected by the loader.

* q1 :func:`check_encode_boxes` and :func:`check_decode_boxes` -- the box coding of R-CNN (Faster R-CNN Eq. 2,
  R-CNN App. C) that both stages regress, with the weights of the RoI head and the cap on the size deltas.
* q2 :func:`check_select_omega` -- Ω of DCNv2 §3.3: up to k positive RPN proposals per image (IoU >= 0.5 with a
  ground-truth box of the same image), drawn at random.
* q3 :func:`check_mimic_loss` -- DCNv2 §3.3's feature mimic loss, ``Σ_{b∈Ω} [1 − cos(f_RCNN(b), f_FRCNN(b))]``
  per image, averaged over the batch's images, with its gradient.

Every expected value comes from the package (:mod:`dcn_lessons.detection.boxes`, ``.mimic``, ``box_iou``); the
typical wrong answers are recomputed here with NumPy so that a failure can say which one it is, never printing
the formula the exercise asks for. Each check names the package code that computes the same thing
(``unavailable``): a graded second run without it tells an answer that computes from one that only calls it.
``box_iou`` (the lesson's tool since §2) stays available.
"""
import math

import numpy as np  # noqa: F401

#: The cap on a decoded size delta: a box grows at most 1000/16 times per side (the package's BBOX_XFORM_CLIP).
CLAMP = math.log(1000.0 / 16)
RPN_WEIGHTS = (1.0, 1.0, 1.0, 1.0)
ROI_WEIGHTS = (10.0, 10.0, 5.0, 5.0)


def _tensor(a):
    import torch

    return torch.as_tensor(np.asarray(a, dtype=np.float64))


def _random_boxes(rng, shape, lo=4.0, hi=60.0):
    """``shape + [4]`` boxes (x1, y1, x2, y2) with sizes in [lo, hi] on a ~128-pixel image."""
    xy = rng.uniform(0.0, 90.0, size=tuple(shape) + (2,))
    wh = rng.uniform(lo, hi, size=tuple(shape) + (2,))
    return np.round(np.concatenate([xy, xy + wh], axis=-1), 2)


def _cs(b, plus_one=0.0):
    w = b[..., 2] - b[..., 0] + plus_one
    h = b[..., 3] - b[..., 1] + plus_one
    return b[..., 0] + 0.5 * w, b[..., 1] + 0.5 * h, w, h


def _as_result(got, shape, what, hint=""):
    if isinstance(got, Failed):
        raise ExerciseError(got.message(what))
    arr = _np(got, what)
    if tuple(arr.shape) != tuple(shape):
        extra = f"\nHint: {hint}" if hint else ""
        raise ExerciseError(f"{what}: expected shape {list(shape)}, got {list(arr.shape)}{extra}")
    return arr


# ---------------------------------------------------------------------------------------------- q1 encode

def _encode_np(t, r, wts, mistake=None):
    """The coding of ``t`` relative to ``r`` (NumPy, float64), or one typical mistake of it."""
    if mistake == "swap_roles":
        t, r = r, t
    one = 1.0 if mistake == "plus_one" else 0.0
    x, y, w, h = _cs(t, one)
    xr, yr, wr, hr = _cs(r, one)
    if mistake == "corners":
        x, y, xr, yr = t[..., 0], t[..., 1], r[..., 0], r[..., 1]
    su, sv = (w, h) if mistake == "by_target" else (wr, hr)
    dx, dy = (x - xr) / su, (y - yr) / sv
    if mistake == "sign_centre":
        dx, dy = -dx, -dy
    if mistake == "no_log":
        dw, dh = w / wr, h / hr
    elif mistake == "inverted":
        dw, dh = np.log(wr / w), np.log(hr / h)
    else:
        dw, dh = np.log(w / wr), np.log(h / hr)
    out = np.stack([dx, dy, dw, dh], axis=-1)
    wv = np.asarray(wts, dtype=np.float64)
    if mistake == "divide_weights":
        out = out / wv
    elif mistake != "no_weights":
        out = out * wv
    if mistake == "yx_order":
        out = out[..., [1, 0, 3, 2]]
    return out


ENCODE_MISTAKES = [
    ("corners", "you compared the boxes' top-left corners: the coding compares their centres (§3)"),
    ("plus_one", "widths with a '+1': here the corners are pixel edges, so a box is x2 − x1 wide (§1)"),
    ("no_log", "code the size in log space, so that growing and shrinking by the same factor give codes of "
               "opposite sign (§3)"),
    ("inverted", "the size ratio is upside down: a target larger than its reference must code as a positive "
                 "number"),
    ("sign_centre", "the centre offset has the wrong sign: a target to the right of (below) its reference codes "
                    "as a positive dx (dy)"),
    ("by_target", "measure the centre offset in units of the REFERENCE's size (the anchor or the proposal: it "
                  "is what the network sees), not the target's"),
    ("divide_weights", "the weights multiply the coded numbers (the RoI head's targets are larger than the RPN's, "
                       "§3)"),
    ("no_weights", "the weights were left out: they scale each of the four coded numbers"),
    ("yx_order", "order the four numbers (dx, dy, dw, dh): x before y, as the boxes are (x1, y1, x2, y2)"),
    ("swap_roles", "you coded the reference relative to the target: the arguments are (targets, references)"),
]

SEED_Q1 = 9


def _encode_cases(seed):
    """A hand-made pair first (RPN weights), then the RoI head's weights, broadcasting, and random weights."""
    rng = np.random.default_rng(seed)
    pair_t = np.array([[30.0, 20.0, 70.0, 44.0]])
    pair_r = np.array([[24.0, 22.0, 56.0, 54.0]])
    if seed != SEED_Q1:
        pair_t = pair_t + np.round(rng.uniform(-3, 3, size=(1, 4)), 2)
    steps = [
        (pair_t, pair_r, RPN_WEIGHTS, "one box against one anchor, the RPN's weights (1, 1, 1, 1)"),
        (_random_boxes(rng, (6,)), _random_boxes(rng, (6,)), ROI_WEIGHTS,
         "six boxes against six proposals, the RoI head's weights (10, 10, 5, 5)"),
        (_random_boxes(rng, (2, 5)), _random_boxes(rng, (5,)), RPN_WEIGHTS,
         "targets [2, 5, 4] against references [5, 4]: broadcast over the leading dimensions"),
        (_random_boxes(rng, (4,)), _random_boxes(rng, (4,)), tuple(float(v) for v in np.round(rng.uniform(0.5, 8, 4), 2)),
         "four boxes, four different weights"),
    ]
    cases = []
    for t, r, wts, what in steps:
        call = f"my_encode_boxes(targets {list(t.shape)}, references {list(r.shape)}, weights={wts})"
        cases.append({"args": [_tensor(t), _tensor(r), wts], "call": "my_encode_boxes", "what": f"{call} ({what})"})
    return cases


def _encode_verify(case, got):
    from dcn_lessons.detection.boxes import encode_boxes

    t, r, wts = case["args"]
    what = case["what"]
    want = encode_boxes(t, r, wts).numpy()
    arr = _as_result(got, want.shape, what, "the boxes may have leading dimensions ([B, n, 4] against [n, 4]): "
                                            "work on the last axis and let the rest broadcast")
    if np.allclose(arr, want, atol=1e-6, rtol=1e-5):
        return
    tn, rn = t.numpy(), r.numpy()
    hit = _first_match(arr, [(m, _encode_np(tn, rn, wts, m)) for m, _ in ENCODE_MISTAKES])
    if hit is not None:
        raise ExerciseError(f"{what}: wrong coding.\nHint: {dict(ENCODE_MISTAKES)[hit]}")
    raise ExerciseError(_wrong_values(arr, want, what, "re-read §3's facts: the centre offset in units of the "
                                                     "reference's size, the size as a log ratio, each number times "
                                                     "its weight; (dx, dy, dw, dh)", ("dx", "dy", "dw", "dh")))


#: q1 (a): ``fn(targets [..., 4], references [..., 4], weights)`` -> ``[..., 4]`` the coded targets
#: ``(dx, dy, dw, dh)`` (the package's ``encode_boxes``, unavailable in the graded second run).
check_encode_boxes = Question(
    _encode_cases, _encode_verify, seed=SEED_Q1,
    unavailable=("dcn_lessons.detection.boxes:encode_boxes", "dcn_lessons.detection.boxes:decode_boxes",
                 "dcn_lessons.detection.boxes:_centre_size"),
)


# ---------------------------------------------------------------------------------------------- q1 decode

def _decode_np(d, r, wts, mistake=None):
    """Boxes from deltas ``d`` on references ``r`` (NumPy, float64), or one typical mistake of it."""
    wv = np.asarray(wts, dtype=np.float64)
    if mistake == "yx_order":
        d = d[..., [1, 0, 3, 2]]
    one = 1.0 if mistake == "plus_one" else 0.0
    xr, yr, wr, hr = _cs(r, one)
    dd = d * wv if mistake == "multiply_weights" else d / wv
    if mistake == "clamp_before_weight":
        dd = np.concatenate([dd[..., :2], np.minimum(d[..., 2:], CLAMP) / wv[2:]], axis=-1)
    elif mistake == "clamp_centre":
        dd = np.minimum(dd, CLAMP)
    elif mistake != "no_clamp":
        dd = np.concatenate([dd[..., :2], np.minimum(dd[..., 2:], CLAMP)], axis=-1)
    x, y = dd[..., 0] * wr + xr, dd[..., 1] * hr + yr
    if mistake == "no_exp":
        w, h = (1.0 + dd[..., 2]) * wr, (1.0 + dd[..., 3]) * hr
    else:
        w, h = np.exp(dd[..., 2]) * wr, np.exp(dd[..., 3]) * hr
    if mistake == "centre_size":
        return np.stack([x, y, w, h], axis=-1)
    return np.stack([x - 0.5 * w, y - 0.5 * h, x + 0.5 * w - one, y + 0.5 * h - one], axis=-1)


DECODE_MISTAKES = [
    ("no_clamp", "a size delta above log(1000/16), once its weight is taken out, must be capped there (§3): an "
                 "untrained regressor would otherwise make exp overflow"),
    ("clamp_before_weight", "cap the size delta after taking its weight out, not before"),
    ("clamp_centre", "only the two size deltas are capped; the centre deltas are not"),
    ("centre_size", "return the corners (x1, y1, x2, y2), not the centre and the size"),
    ("multiply_weights", "decoding undoes the weights: take them out before using the deltas"),
    ("no_exp", "dw and dh are log ratios: undo the log"),
    ("plus_one", "widths with a '+1': here the corners are pixel edges, so a box is x2 − x1 wide (§1)"),
    ("yx_order", "the deltas are ordered (dx, dy, dw, dh): x before y"),
]


def _decode_cases(seed):
    """Zero deltas, random deltas with each stage's weights, the cap (large deltas, RPN and RoI-head weights),
    broadcasting."""
    rng = np.random.default_rng(seed + 1)
    refs = _random_boxes(rng, (3,))
    big_rpn = np.array([[8.0, -0.2, 6.0, 0.3], [0.1, 0.2, -0.3, 5.0]])
    big_roi = np.array([[0.5, 0.2, 30.0, 15.0], [-3.0, 1.0, 2.0, 24.0]])
    if seed != SEED_Q1:
        big_rpn = big_rpn + np.round(rng.uniform(-0.05, 0.05, size=big_rpn.shape), 3)
        big_roi = big_roi + np.round(rng.uniform(-0.05, 0.05, size=big_roi.shape), 3)
    steps = [
        (np.zeros((3, 4)), refs, RPN_WEIGHTS, "zero deltas give the references back"),
        (np.round(rng.normal(0, 0.4, (6, 4)), 3), _random_boxes(rng, (6,)), RPN_WEIGHTS,
         "six anchors, the RPN's weights"),
        (np.round(rng.normal(0, 3.0, (6, 4)), 3), _random_boxes(rng, (6,)), ROI_WEIGHTS,
         "six proposals, the RoI head's weights (10, 10, 5, 5)"),
        (big_rpn, _random_boxes(rng, (2,)), RPN_WEIGHTS, "large deltas, the RPN's weights"),
        (big_roi, _random_boxes(rng, (2,)), ROI_WEIGHTS, "large deltas, the RoI head's weights"),
        (np.round(rng.normal(0, 0.4, (2, 5, 4)), 3), _random_boxes(rng, (5,)), RPN_WEIGHTS,
         "deltas [2, 5, 4] on references [5, 4]: broadcast over the leading dimensions"),
    ]
    cases = []
    for d, r, wts, what in steps:
        call = f"my_decode_boxes(deltas {list(d.shape)}, references {list(r.shape)}, weights={wts})"
        cases.append({"args": [_tensor(d), _tensor(r), wts], "call": "my_decode_boxes", "what": f"{call} ({what})"})
    return cases


def _decode_verify(case, got):
    from dcn_lessons.detection.boxes import decode_boxes

    d, r, wts = case["args"]
    what = case["what"]
    want = decode_boxes(d, r, wts).numpy()
    arr = _as_result(got, want.shape, what, "the deltas may have leading dimensions ([B, n, 4] on [n, 4]): "
                                            "work on the last axis and let the rest broadcast")
    if np.allclose(arr, want, atol=1e-6, rtol=1e-5):
        return
    if not np.all(np.isfinite(arr)):
        raise ExerciseError(f"{what}: your boxes are not all finite.\nHint: {dict(DECODE_MISTAKES)['no_clamp']}")
    dn, rn = d.numpy(), r.numpy()
    hit = _first_match(arr, [(m, _decode_np(dn, rn, wts, m)) for m, _ in DECODE_MISTAKES])
    if hit is not None:
        raise ExerciseError(f"{what}: wrong boxes.\nHint: {dict(DECODE_MISTAKES)[hit]}")
    raise ExerciseError(_wrong_values(arr, want, what, "decoding is encoding run backwards (§3): first the weights "
                                                     "out, then the cap, then the centre and the size; return "
                                                     "corners", ("x1", "y1", "x2", "y2")))


def _wrong_values(arr, want, what, hint, names):
    """The message for boxes ``arr`` that differ from ``want`` (same shape): how many numbers are wrong, the
    first wrong box and coordinate, and the value found there, never the value expected."""
    bad = ~np.isclose(arr, want, atol=1e-6, rtol=1e-5)
    idx = tuple(int(i) for i in np.argwhere(bad)[0])
    where = f"box {list(idx[:-1])}, {names[idx[-1]]}" if len(idx) > 1 else names[idx[-1]]
    return (f"{what}: {int(bad.sum())} of {bad.size} numbers are wrong; the first at {where}: got {arr[idx]:.6g}, "
            f"which is too {'large' if arr[idx] > want[idx] else 'small'}.\nHint: {hint}")


#: q1 (b): ``fn(deltas [..., 4], references [..., 4], weights)`` -> ``[..., 4]`` boxes (x1, y1, x2, y2), the size
#: deltas capped at log(1000/16) once the weights are out (the package's ``decode_boxes``, unavailable in the
#: graded second run).
check_decode_boxes = Question(
    _decode_cases, _decode_verify, seed=SEED_Q1,
    unavailable=("dcn_lessons.detection.boxes:decode_boxes", "dcn_lessons.detection.boxes:encode_boxes",
                 "dcn_lessons.detection.boxes:_centre_size"),
)


# ---------------------------------------------------------------------------------------------- q2 Ω

def _iou(a, b):
    from dcn_lessons.detection.boxes import box_iou

    return box_iou(_tensor(a), _tensor(b)).numpy()


def _jitter(rng, box, low, high, tries=200):
    """A box near ``box`` whose IoU with it lies in [low, high)."""
    x1, y1, x2, y2 = box
    w, h = x2 - x1, y2 - y1
    for _ in range(tries):
        cx = (x1 + x2) / 2 + rng.uniform(-0.3, 0.3) * w
        cy = (y1 + y2) / 2 + rng.uniform(-0.3, 0.3) * h
        nw, nh = w * math.exp(rng.uniform(-0.5, 0.5)), h * math.exp(rng.uniform(-0.5, 0.5))
        b = np.round([cx - nw / 2, cy - nh / 2, cx + nw / 2, cy + nh / 2], 2)
        if low <= _iou(b[None], np.asarray(box)[None])[0, 0] < high:
            return b
    raise RuntimeError("no jittered box found")  # pragma: no cover  (the ranges used here are wide)


def _background(rng, avoid, n, region=(0.0, 0.0, 128.0, 128.0)):
    """``n`` random boxes in ``region`` whose IoU with every box of ``avoid`` is below 0.4."""
    out = []
    x0, y0, x1, y1 = region
    while len(out) < n:
        w, h = rng.uniform(8, 40, size=2)
        x, y = rng.uniform(x0, max(x0, x1 - w)), rng.uniform(y0, max(y0, y1 - h))
        b = np.round([x, y, x + w, y + h], 2)
        if len(avoid) == 0 or _iou(b[None], np.asarray(avoid))[0].max() < 0.4:
            out.append(b)
    return out


def _gt_in(rng, n, region):
    x0, y0, x1, y1 = region
    out = []
    while len(out) < n:
        w, h = rng.uniform(14, 34, size=2)
        b = np.round([rng.uniform(x0, x1 - w), rng.uniform(y0, y1 - h), 0, 0], 2)
        b[2:] = b[:2] + np.round([w, h], 2)
        if not out or _iou(b[None], np.asarray(out))[0].max() < 0.1:
            out.append(b)
    return out


def _pack(images, gpad):
    """Per image ``(proposals, valid, gts, gt_valid)`` lists -> padded arrays ``[B, P, 4]``, ``[B, P]``,
    ``[B, G, 4]``, ``[B, G]`` (G = gpad)."""
    b = len(images)
    p = max(len(im[0]) for im in images)
    props = np.zeros((b, p, 4))
    valid = np.zeros((b, p), dtype=bool)
    gts = np.zeros((b, gpad, 4))
    gvalid = np.zeros((b, gpad), dtype=bool)
    for i, (pr, va, gt, gv) in enumerate(images):
        props[i, : len(pr)] = pr
        valid[i, : len(va)] = va
        if gpad:
            gts[i, : len(gt)] = gt
            gvalid[i, : len(gv)] = gv
    return props, valid, gts, gvalid


def _image(rng, gts, pos_per_gt, n_bg, n_invalid, extra=()):
    """Proposals of one image: jittered positives of each gt, background, invalid slots that copy a gt closely,
    and ``extra`` boxes (valid), shuffled; invalid slots last, as the RPN leaves them."""
    props = [_jitter(rng, g, 0.55, 0.95) for g in gts for _ in range(pos_per_gt)]
    props += _background(rng, list(gts) + list(extra), n_bg)
    props += [np.asarray(e, dtype=np.float64) for e in extra]
    order = rng.permutation(len(props))
    props = [props[i] for i in order]
    invalid = [_jitter(rng, gts[i % len(gts)], 0.7, 0.95) for i in range(n_invalid)] if len(gts) else \
        _background(rng, [], n_invalid)
    return props + invalid, [True] * len(props) + [False] * n_invalid


SEED_Q2 = 3


def _omega_cases(seed):
    """(1) one image with fewer positives than k, one of them at IoU exactly 0.5; (2) three images with padding:
    an empty proposal slot that overlaps a box, a padding row of gt_boxes that overlaps a proposal, a proposal that
    overlaps only another image's box, an image without objects; (3) more positives than k, drawn with four seeds;
    (4) a batch without any ground-truth box (G = 0)."""
    rng = np.random.default_rng(seed)
    cases = []

    # (1) hand-made geometry; the seed moves it
    s = 0.0 if seed == SEED_Q2 else float(np.round(rng.uniform(-10, 10), 1))
    g1 = np.array([[20.0, 30.0, 60.0, 50.0], [80.0, 70.0, 110.0, 110.0]]) + s
    half = np.array([20.0, 30.0, 40.0, 50.0]) + s  # half of g1[0]: IoU exactly 0.5
    near = np.array([20.0, 30.0, 39.8, 50.0]) + s  # IoU 0.495: just below
    pr = [_jitter(rng, g1[0], 0.6, 0.95), _jitter(rng, g1[1], 0.6, 0.95), _jitter(rng, g1[1], 0.6, 0.95), half]
    pr += _background(rng, list(g1) + [half, near], 5) + [near]
    order = rng.permutation(len(pr))
    pr = [pr[i] for i in order]
    cases.append(((pr, [True] * len(pr), list(g1), [True, True]), None, 2, 8, [11],
                  "one image, fewer positive proposals than k; one overlaps a box by exactly 0.5"))

    # (2) three images, traps everywhere
    left, right = (0.0, 0.0, 60.0, 128.0), (68.0, 0.0, 128.0, 128.0)
    ga = _gt_in(rng, 2, left)
    gb = _gt_in(rng, 1, right)
    other = _jitter(rng, gb[0], 0.7, 0.95)            # image 0: a box over image 1's object only
    pad_b = _gt_in(rng, 1, left)[0]                   # image 1: a padding row of gt_boxes ...
    over_pad = _jitter(rng, pad_b, 0.7, 0.95)         # ... and a proposal over it
    pad_c = _gt_in(rng, 2, (0.0, 0.0, 128.0, 128.0))  # image 2: no object, two padding rows
    over_c = _jitter(rng, pad_c[0], 0.7, 0.95)
    img_a = _image(rng, ga, 2, 4, 2, extra=[other])
    img_b = _image(rng, gb, 3, 4, 1, extra=[over_pad])
    img_c = (_background(rng, pad_c, 5) + [over_c], [True] * 6)
    images = [(*img_a, ga, [True, True]), (*img_b, gb + [pad_b], [True, False]), (*img_c, pad_c, [False, False])]
    cases.append((images, 2, None, 8, [12],
                  "three images: empty proposal slots, padding rows in gt_boxes, an image without objects"))

    # (3) many positives, several seeds
    imgs = []
    for _ in range(2):
        g = _gt_in(rng, 3, (0.0, 0.0, 128.0, 128.0))
        imgs.append((*_image(rng, g, 4, 6, 2), g, [True] * 3))
    cases.append((imgs, 3, None, 4, [int(v) for v in rng.integers(0, 10**6, size=4)],
                  "two images with 12 positive proposals each, k = 4, four seeds"))

    # (4) nothing to mimic
    imgs = [(_background(rng, [], 6), [True] * 6, [], []) for _ in range(2)]
    cases.append((imgs, 0, None, 4, [5], "two images and no ground-truth box at all (gt_boxes [2, 0, 4])"))

    out = []
    for images, gpad, single, k, seeds, what in cases:
        if single is not None:  # case (1): one image
            images, gpad = [images], single
        props, valid, gts, gvalid = _pack(images, gpad)
        args = [_tensor(props), _tensor(valid).bool(), _tensor(gts), _tensor(gvalid).bool(), k, seeds]
        b, p, g = props.shape[0], props.shape[1], gts.shape[1]
        call = (f"my_select_omega(proposals [{b}, {p}, 4], proposal_valid [{b}, {p}], gt_boxes [{b}, {g}, 4], "
                f"gt_valid [{b}, {g}], k={k}, seed)")
        out.append({"args": args, "call": "my_select_omega", "what": f"{call} ({what})"})
    return out


def _omega_run(fn, args):
    """Call the answer once per seed of the case (fresh copies of the inputs each time)."""
    *data, seeds = args
    results = []
    for s in seeds:
        fresh = [a.clone() if hasattr(a, "clone") else a for a in data]
        results.append(call_answer(fn, [*fresh, int(s)]))
    return results


def _omega_rows(got, what):
    """The answer as an ``[M, 5]`` float array (an empty answer of any shape is ``[0, 5]``)."""
    if isinstance(got, Failed):
        raise ExerciseError(got.message(what))
    arr = _np(got, what)
    if arr.size == 0:
        return np.zeros((0, 5))
    if arr.ndim != 2 or arr.shape[1] != 5:
        raise ExerciseError(f"{what}: expected RoIs [M, 5], rows (batch index, x1, y1, x2, y2), got shape "
                            f"{list(arr.shape)}")
    if not np.all(np.isfinite(arr)):
        raise ExerciseError(f"{what}: your RoIs hold NaN or infinite values")
    return arr


def _positives(props, valid, gts, gvalid):
    """best IoU of each proposal with a valid box of its own image ``[B, P]`` (0 without one), and positive mask."""
    b, p = valid.shape
    best = np.zeros((b, p))
    for i in range(b):
        if gts.shape[1] and gvalid[i].any():
            best[i] = _iou(props[i], gts[i][gvalid[i]]).max(axis=1)
    return best, valid & (best >= 0.5)


def _judge_rows(arr, props, valid, gts, gvalid, k, what):
    """Check one answer's rows; return the chosen ``(image, proposal)`` pairs per image."""
    b = props.shape[0]
    best, pos = _positives(props, valid, gts, gvalid)
    chosen = [[] for _ in range(b)]
    for r, row in enumerate(arr):
        bi = row[0]
        if not float(bi).is_integer() or not 0 <= bi < b:
            raise ExerciseError(f"{what}: row {r} has batch index {bi:g}; expected the index of its image, 0 .. "
                                f"{b - 1}, in column 0 (rows are (batch index, x1, y1, x2, y2))")
        bi = int(bi)
        match = np.nonzero(np.all(np.abs(props[bi] - row[1:]) < 1e-4, axis=1))[0]
        if match.size == 0:
            if gts.shape[1] and np.any(np.all(np.abs(gts[bi] - row[1:]) < 1e-4, axis=1)):
                raise ExerciseError(f"{what}: row {r} is a ground-truth box of image {bi}, not one of its "
                                    "proposals.\nHint: Ω is drawn from the RPN's proposals only (§6.1); the "
                                    "ground-truth boxes are what the proposals are compared with")
            elsewhere = [i for i in range(b) if i != bi and np.any(np.all(np.abs(props[i] - row[1:]) < 1e-4, 1))]
            if elsewhere:
                raise ExerciseError(f"{what}: row {r} says image {bi}, but its box is a proposal of image "
                                    f"{elsewhere[0]}.\nHint: column 0 is the index of the image the box belongs to")
            raise ExerciseError(f"{what}: row {r} is not one of image {bi}'s proposals.\nHint: return the proposals "
                                "themselves, as (batch index, x1, y1, x2, y2), not a changed or reordered box")
        j = int(match[0])
        if not valid[bi, j]:
            raise ExerciseError(f"{what}: row {r} is proposal {j} of image {bi}, which proposal_valid marks as an "
                                "empty slot.\nHint: the RPN pads every image to the same number of proposals: "
                                "skip the slots proposal_valid says are empty")
        if not pos[bi, j]:
            pad = gts[bi][~gvalid[bi]] if gts.shape[1] else np.zeros((0, 4))
            others = [gts[i][gvalid[i]] for i in range(b) if i != bi and gts.shape[1]]
            others = np.concatenate(others) if others else np.zeros((0, 4))
            if len(pad) and _iou(props[bi, j][None], pad).max() >= 0.5:
                raise ExerciseError(f"{what}: row {r} (image {bi}, proposal {j}) overlaps only a padding row of "
                                    "gt_boxes.\nHint: gt_valid marks the real boxes; the other rows only pad the "
                                    "images to the same number of boxes")
            if len(others) and _iou(props[bi, j][None], others).max() >= 0.5:
                raise ExerciseError(f"{what}: row {r} (image {bi}, proposal {j}) is positive only against a box of "
                                    "another image.\nHint: compare each image's proposals with its own boxes")
            raise ExerciseError(f"{what}: row {r} (image {bi}, proposal {j}) is not positive: its best IoU with a "
                                f"box of its image is {best[bi, j]:.3f}.\nHint: Ω holds positive proposals only, "
                                "IoU >= 0.5 with a ground-truth box (§6.1)")
        if j in chosen[bi]:
            raise ExerciseError(f"{what}: proposal {j} of image {bi} appears twice.\nHint: draw without "
                                "replacement: each box at most once")
        chosen[bi].append(j)
    for i in range(b):
        n_pos, n = int(pos[i].sum()), len(chosen[i])
        if n > k:
            raise ExerciseError(f"{what}: image {i}: {n} rows, expected at most k = {k}.\nHint: up to k per image")
        if n < min(k, n_pos):
            left = [j for j in np.nonzero(pos[i])[0] if j not in chosen[i]]
            if all(abs(best[i, j] - 0.5) < 1e-12 for j in left) and n_pos <= k:
                raise ExerciseError(f"{what}: image {i}: you left out a proposal whose IoU with a box is exactly "
                                    "0.5.\nHint: positive means IoU >= 0.5, the threshold included")
            raise ExerciseError(f"{what}: image {i}: {n} rows, but the image has {n_pos} positive proposals "
                                f"and k = {k}; one you left out overlaps a box of its image with IoU "
                                f"{best[i, left[-1]]:.3f}.\nHint: take as many as you may: k, or all of them when "
                                "there are fewer; positive means IoU >= 0.5 with one of the image's valid boxes")
    return chosen


def _omega_verify(case, got):
    props, valid, gts, gvalid, k, seeds = case["args"]
    what = case["what"]
    props, gts = props.numpy(), gts.numpy()
    valid, gvalid = valid.numpy().astype(bool), gvalid.numpy().astype(bool)
    if isinstance(got, Failed):
        raise ExerciseError(got.message(what))
    if not isinstance(got, list) or len(got) != len(seeds):
        raise ExerciseError(f"{what}: expected one answer per seed")
    picks = []
    for s, one in zip(seeds, got):
        picks.append(_judge_rows(_omega_rows(one, f"{what}, seed {s}"), props, valid, gts, gvalid, k,
                                 f"{what}, seed {s}"))
    if len(seeds) > 1:
        _, pos = _positives(props, valid, gts, gvalid)
        for i in range(props.shape[0]):
            if pos[i].sum() > k and len({tuple(sorted(p[i])) for p in picks}) == 1:
                raise ExerciseError(f"{what}: image {i}: the same {k} proposals for all {len(seeds)} seeds.\n"
                                    "Hint: Ω is drawn at random among the positives (§6.1): draw with the "
                                    "generator the seed gives")


#: q2: ``fn(proposals [B, P, 4], proposal_valid [B, P], gt_boxes [B, G, 4], gt_valid [B, G], k, seed)`` ->
#: Ω as RoIs ``[M, 5]`` (batch index, x1, y1, x2, y2): per image, up to k of its valid proposals with IoU >= 0.5
#: with one of its valid ground-truth boxes, drawn at random with ``seed``. The package's selection (the mimic
#: branch, the matching and the balanced sampler) is unavailable in the graded second run; ``box_iou`` is not.
check_select_omega = Question(
    _omega_cases, _omega_verify, run=_omega_run, seed=SEED_Q2,
    unavailable=("dcn_lessons.detection.mimic:MimicBranch", "dcn_lessons.detection.sampling:match_boxes",
                 "dcn_lessons.detection.sampling:sample_indices", "dcn_lessons.detection.sampling:sample_mask",
                 "dcn_lessons.detection.sampling:_balanced"),
)


# ---------------------------------------------------------------------------------------------- q3 L_mimic

def _cos_np(a, b, axis=1):
    na, nb = np.linalg.norm(a, axis=axis), np.linalg.norm(b, axis=axis)
    return (a * b).sum(axis) / np.maximum(na * nb, 1e-300) * ((na > 0) & (nb > 0))


def _mimic_np(a, b, n, mistake=None):
    """L_mimic of ``a``, ``b`` ``[M, D]`` over ``n`` images (NumPy), or one typical mistake of it."""
    if mistake == "dim0":
        if a.shape[0] == 0:
            return float("nan")
        return float((1.0 - _cos_np(a, b, axis=0)).sum() / n)
    cos = _cos_np(a, b)
    if mistake == "dot":
        cos = (a * b).sum(1)
    if mistake == "l2":
        return float(np.linalg.norm(a - b, axis=1).sum() / n)
    term = {"cos_only": cos, "one_plus": 1.0 + cos, "neg_cos": -cos}.get(mistake, 1.0 - cos)
    if mistake == "mean":
        return float(term.mean()) if term.size else float("nan")
    if mistake == "no_average":
        return float(term.sum())
    return float(term.sum() / n)


MIMIC_MISTAKES = [
    ("mean", "you averaged over the boxes of Ω: DCNv2 sums over Ω per image, and the batch's value is the mean "
             "of those sums over its images (§6.2)"),
    ("no_average", "that is the sum over the whole batch: the value is the per-image sum averaged over the images"),
    ("cos_only", "the loss is 1 − cos: 0 when the two features point the same way"),
    ("neg_cos", "the loss is 1 − cos, not −cos: it is 0 when the two features point the same way"),
    ("one_plus", "the loss is 1 − cos, not 1 + cos: 0 when the two features point the same way"),
    ("dot", "cosine compares directions: divide by the lengths of the two features"),
    ("dim0", "each ROW is one box's feature: take the cosine along the feature axis (dim 1)"),
    ("l2", "the loss compares directions (a cosine), not a distance"),
]

SEED_Q3 = 5


def _mimic_cases(seed):
    """A hand-made pair, random ReLU features over several images, a zero feature on each side, an empty Ω."""
    rng = np.random.default_rng(seed)

    def relu_features(m, d):
        return np.round(np.maximum(rng.normal(0, 1, (m, d)), 0.0), 4)

    a1 = np.array([[1.0, 2.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 1.0]])
    b1 = np.array([[2.0, 4.0, 0.0], [0.0, 3.0, 0.0], [0.0, 3.0, 3.0]])
    if seed != SEED_Q3:
        a1, b1 = a1 + np.round(rng.uniform(0, 0.5, a1.shape), 2), b1 + np.round(rng.uniform(0, 0.5, b1.shape), 2)
    a3, b3 = relu_features(5, 12), relu_features(5, 12)
    a3[1] = 0.0
    b3[3] = 0.0
    steps = [
        (a1, b1, 1, "three boxes of one image: the same direction, at right angles, the same direction"),
        (relu_features(6, 16), relu_features(6, 16), 2, "six boxes over two images, ReLU features"),
        (relu_features(7, 16) + 0.01, relu_features(7, 16) + 0.01, 1, "seven boxes of one image"),
        (a3, b3, 3, "a zero feature on each side (every fc7 unit off after the ReLU)"),
        (np.zeros((0, 8)), np.zeros((0, 8)), 2, "an empty Ω (no positive proposal in the batch)"),
    ]
    cases = []
    for a, b, n, what in steps:
        call = f"my_mimic_loss(f_rcnn {list(a.shape)}, f_frcnn {list(b.shape)}, num_images={n})"
        cases.append({"args": [_tensor(a), _tensor(b), n], "call": "my_mimic_loss", "what": f"{call} ({what})"})
    return cases


def _mimic_run(fn, args):
    """Call the answer on leaf tensors that require a gradient, then differentiate its value: returns
    ``{"value", "grad_rcnn", "grad_frcnn", "why"}`` (gradients None when the value carries none)."""
    import torch

    a, b, n = args
    a = a.detach().clone().requires_grad_(True)
    b = b.detach().clone().requires_grad_(True)
    out = call_answer(fn, [a, b, n])
    if isinstance(out, Failed):
        return out
    if not isinstance(out, torch.Tensor):
        return {"value": out, "grad_rcnn": None, "grad_frcnn": None, "why": f"a {type(out).__name__}"}
    value = out.detach()
    if out.numel() != 1 or not out.requires_grad:
        return {"value": value, "grad_rcnn": None, "grad_frcnn": None, "why": "a tensor without a gradient"}
    try:
        ga, gb = torch.autograd.grad(out.reshape(()), (a, b), allow_unused=True)
    except RuntimeError as e:
        return {"value": value, "grad_rcnn": None, "grad_frcnn": None, "why": f"backward raised {e}"}
    zeros = torch.zeros_like(a)
    return {"value": value, "grad_rcnn": zeros if ga is None else ga, "grad_frcnn": zeros if gb is None else gb,
            "why": ""}


def _mimic_verify(case, got):
    import torch

    from dcn_lessons.detection.mimic import mimic_loss

    a, b, n = case["args"]
    what = case["what"]
    if isinstance(got, Failed):
        raise ExerciseError(got.message(what))
    if not isinstance(got, dict) or "value" not in got:
        raise ExerciseError(f"{what}: expected one number (a scalar tensor)")
    value = got["value"]
    if isinstance(value, Failed):
        raise ExerciseError(value.message(what))
    arr = _np(value, what)
    if arr.size != 1:
        raise ExerciseError(f"{what}: expected one number (a scalar tensor), got shape {list(arr.shape)}.\n"
                            "Hint: sum the per-box terms, then average over the images")
    v = float(arr.reshape(()))
    an, bn = a.numpy(), b.numpy()
    want = _mimic_np(an, bn, n)
    if not math.isfinite(v):
        raise ExerciseError(f"{what}: your loss is {v}.\nHint: a zero feature vector has no direction: count its "
                            "cosine as 0 (as F.cosine_similarity's eps does) instead of dividing 0 by 0")
    if not np.isclose(v, want, atol=1e-6, rtol=1e-5):
        for m, hint in MIMIC_MISTAKES:
            alt = _mimic_np(an, bn, n, m)
            if math.isfinite(alt) and np.isclose(v, alt, atol=1e-6, rtol=1e-5) and not np.isclose(alt, want):
                raise ExerciseError(f"{what}: got {v:.6g}.\nHint: {hint}")
        raise ExerciseError(f"{what}: got {v:.6g}, which is too {'large' if v > want else 'small'}.\nHint: one term 1 − cos per box of Ω "
                            "(cosine along the feature axis, 0 for a zero feature), summed, divided by the number "
                            "of images (§6.2)")
    if got["grad_rcnn"] is None:
        raise ExerciseError(f"{what}: the value is right, but it carries no gradient back to the features (you "
                            f"returned {got.get('why') or 'no tensor'}).\nHint: the loss trains both branches: "
                            "compute it with torch operations on the tensors given (no .item(), no NumPy)")
    ga, gb = _np(got["grad_rcnn"], what), _np(got["grad_frcnn"], what)
    if not (np.all(np.isfinite(ga)) and np.all(np.isfinite(gb))):
        raise ExerciseError(f"{what}: the value is right, but its gradient holds NaN or inf.\nHint: a zero feature "
                            "vector: the derivative of a square root at 0 is infinite; take the lengths with "
                            "torch.linalg.vector_norm (or F.cosine_similarity / F.normalize), which keep it finite")
    at, bt = a.clone().requires_grad_(True), b.clone().requires_grad_(True)
    ref = mimic_loss(at, bt, n)
    if at.shape[0]:
        ra, rb = torch.autograd.grad(ref, (at, bt))
        ra, rb = ra.numpy(), rb.numpy()
    else:
        ra, rb = np.zeros_like(an), np.zeros_like(bn)
    rows = (np.linalg.norm(an, axis=1) > 0) & (np.linalg.norm(bn, axis=1) > 0)
    for g, r, side in ((ga, ra, "f_rcnn"), (gb, rb, "f_frcnn")):
        if g.shape != r.shape or not np.allclose(g[rows], r[rows], atol=1e-6, rtol=1e-4):
            if g.shape == r.shape and np.allclose(g[rows], 0.0) and not np.allclose(r[rows], 0.0):
                raise ExerciseError(f"{what}: the value is right, but no gradient reaches {side}.\nHint: the loss "
                                    "trains both branches: neither feature is detached (DCNv2 §3.3 writes no "
                                    "stop-gradient)")
            raise ExerciseError(f"{what}: the value is right, but its gradient with respect to {side} is not.\n"
                                "Hint: compute the value with differentiable torch operations only (no "
                                ".detach(), no in-place tricks)")


#: q3: ``fn(f_rcnn [M, D], f_frcnn [M, D], num_images)`` -> a scalar tensor, DCNv2 §3.3's
#: ``Σ_{b∈Ω} [1 − cos(f_RCNN(b), f_FRCNN(b))]`` per image averaged over the ``num_images`` images of the batch
#: (the package's ``mimic_loss`` with ``reduction="sum"``), differentiable, finite where a feature is zero. The
#: package's loss and its mimic branch are unavailable in the graded second run.
check_mimic_loss = Question(
    _mimic_cases, _mimic_verify, run=_mimic_run, seed=SEED_Q3,
    unavailable=("dcn_lessons.detection.mimic:mimic_loss", "dcn_lessons.detection.mimic:MimicBranch"),
)
