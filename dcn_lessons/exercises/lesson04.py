"""Checks for lesson 04 (the RoI pooling family). Globals of ``_core.py`` are injected by the loader.

* q1 :func:`check_bin_samples` -- the sample points of one bin under the aligned rule (torchvision
  ``roi_align(aligned=True)``), worked out from the rule's three facts.
* q2 :func:`check_deform_bin` -- one bin of deformable RoI pooling (DCNv1 Eq. 6, Δp = γ·Δp̂ ∘ (w, h)).
* q3 :func:`check_ps_channel` -- which score map a bin of position-sensitive RoI pooling reads (DCNv1 §2.2).

Every expected value comes from the package's reference tier (``dcn_lessons.reference.roi``); the
typical wrong answers are recomputed with the same functions so that a failure can say which one it is. The
hints point to the lesson's sections and rules, never to the formula the exercise asks for. Each check names the
package code that computes the same thing (``unavailable``): a graded second run without it tells an answer that
computes from one that only calls it. ``roi_sample`` (reading a map by the RoI rule) is the lesson's tool and
stays available.
"""
import numpy as np  # noqa: F401


def _package_samples(box, i, j, k, sampling_ratio):
    from dcn_lessons.reference.roi import bin_samples, roi_geometry

    r = roi_geometry(np.array([0.0, *box]), (k, k), 1.0, sampling_ratio, True)
    return np.array(list(bin_samples(r, i, j, (k, k))))


def _same_set(a, b):
    if a.shape != b.shape:
        return False
    return np.allclose(np.array(sorted(map(tuple, a))), np.array(sorted(map(tuple, b))))


SEED_Q1 = 1


def _bin_samples_cases(seed):
    """Four bins, one idea each. The learner's check (``seed == SEED_Q1``) uses the documented boxes; a grading seed
    moves every box by a random sub-pixel shift and stretch."""
    rng = np.random.default_rng(seed)
    steps = [
        ((2.0, 3.0, 8.0, 9.0), 0, 0, 3, 1, "with one sample per bin it sits at the bin's centre"),
        ((2.0, 3.0, 8.0, 9.0), 1, 2, 3, 2, "bin (i, j) is row i, column j"),
        ((1.5, 0.25, 13.0, 7.0), 2, 1, 3, 2, "the RoI need not be square nor sit on integers"),
        ((0.0, 0.0, 7.0, 14.0), 1, 0, 2, 3, "three samples per side, a tall RoI"),
    ]
    cases = []
    for box, i, j, k, s, hint in steps:
        if seed != SEED_Q1:
            x1, y1 = box[0] + rng.uniform(-0.9, 0.9), box[1] + rng.uniform(-0.9, 0.9)
            box = tuple(round(float(v), 3) for v in (x1, y1, box[2] + rng.uniform(0, 2), box[3] + rng.uniform(0, 2)))
        what = f"bin_samples(box={box}, i={i}, j={j}, k={k}, sampling_ratio={s})"
        cases.append({"args": [box, i, j, k, s], "call": "bin_samples", "what": what, "hint": hint})
    return cases


def _bin_samples_verify(case, got):
    box, i, j, k, s = case["args"]
    what, hint = case["what"], case["hint"]
    want = _package_samples(box, i, j, k, s)
    got = expect_shape(got, want.shape, what)
    if np.allclose(got, want):
        return
    x1, y1, x2, y2 = box
    shifted = _package_samples((x1 + 0.5, y1 + 0.5, x2 + 0.5, y2 + 0.5), i, j, k, s)
    bh, bw = (y2 - y1) / k, (x2 - x1) / k
    if np.allclose(got, want[:, ::-1]):
        hint = "your columns are swapped: each row is (row, column) = (y, x), not (x, y)"
    elif np.allclose(got, shifted):
        hint = ("every point is half a pixel too far right and down: re-read §2's first fact, where pixel q "
                "covers [q - 0.5, q + 0.5)")
    elif k > 1 and i != j and _same_set(got, _package_samples(box, j, i, k, s)):
        hint = "you swapped i and j: i counts bins down (rows, y), j across (columns, x)"
    elif np.allclose(got, want - [bh / (2 * s), bw / (2 * s)]):
        hint = "your samples sit on the corners of the cells; re-read §2's third fact: one sample at each cell's centre"
    elif _same_set(got, want):
        hint = "the right points in the wrong order: all the samples of the first row of cells first, row-major"
    if "§" not in hint:
        hint += " (re-read §2)"
    expect_close(got, want, what=what, hint=hint)


#: q1: ``fn(box, i, j, k, sampling_ratio)`` returns the sample points of bin (i, j) of a RoI split into k x k bins,
#: under the aligned rule (torchvision ``roi_align(aligned=True)``): a ``[s*s, 2]`` array of (row, column),
#: s = sampling_ratio, row-major over the samples (u, v). The package's geometry (and the explorer built on it) is
#: unavailable in the graded second run.
check_bin_samples = Question(
    _bin_samples_cases, _bin_samples_verify, seed=SEED_Q1,
    unavailable=("dcn_lessons.reference.roi:bin_samples", "dcn_lessons.reference.roi:roi_geometry"),
)


SEED_Q2 = 4


def _feature(rng):
    yy, xx = np.mgrid[0:12, 0:15]
    return np.sin(xx / 2.3) + 0.7 * np.cos(yy / 1.7) + 0.3 * rng.random((12, 15))


def _deform_bin_cases(seed):
    """Five bins of a smooth feature map plus noise from the seed: zero offsets, each axis, gamma, a 2 x 2 split."""
    feature = _feature(np.random.default_rng(seed))
    steps = [
        ((2.0, 1.0, 11.0, 10.0), (0.0, 0.0), 1, 1, 3, 0.1, 2, "with zero offsets Eq. (6) is Eq. (5): the bin average"),
        ((2.3, 1.7, 11.4, 7.6), (0.8, 0.0), 0, 2, 3, 0.1, 2, "Δp̂_x moves the bin along x by γ·Δp̂_x·w"),
        ((2.3, 1.7, 11.4, 7.6), (0.0, -1.2), 2, 0, 3, 0.1, 2, "Δp̂_y moves the bin along y by γ·Δp̂_y·h"),
        ((1.0, 2.0, 13.0, 8.0), (0.6, -0.9), 1, 2, 3, 0.25, 3, "use the gamma you are given"),
        ((3.2, 0.5, 9.9, 10.3), (-1.5, 0.7), 0, 1, 2, 0.1, 2, "a 2 x 2 split"),
    ]
    return [{"args": [feature, box, np.array(oh), i, j, k, gamma, s], "call": "deform_bin", "hint": hint,
             "what": f"deform_bin(box={box}, offset_hat={oh}, i={i}, j={j}, k={k}, gamma={gamma}, sampling_ratio={s})"}
            for box, oh, i, j, k, gamma, s, hint in steps]


def _deform_bin_verify(case, got_raw):
    from dcn_lessons.reference import deform_roi_pool

    feature, box, oh, i, j, k, gamma, s = case["args"]
    oh = tuple(float(v) for v in oh)
    what, hint = case["what"], case["hint"]

    def pool(box, offset_hat, i, j, k, gamma, s):
        off = np.zeros((1, 2, k, k))
        off[0, :, i, j] = offset_hat
        return float(deform_roi_pool(feature[None, None], np.array([[0.0, *box]]), off, k,
                                     sampling_ratio=s, gamma=gamma)[0, 0, i, j])

    want = pool(box, oh, i, j, k, gamma, s)
    got = _np(got_raw, what)
    if got.size != 1:
        raise ExerciseError(f"{what}: expected one number (the bin's value), got an array of shape {list(got.shape)}")
    got = float(got.reshape(()))
    if np.isclose(got, want, atol=1e-8, rtol=1e-6):
        return
    w, h = box[2] - box[0], box[3] - box[1]
    x1, y1, x2, y2 = box
    variants = [
        ((oh[1], oh[0]), None, gamma, "you swapped the offset's components: offset_hat is (Δp̂_x, Δp̂_y), x first"),
        ((oh[0] * h / w, oh[1] * w / h), None, gamma, "scale Δp̂_x by the RoI width w and Δp̂_y by its height h, not the other way round"),
        (oh, None, 1.0, "you left out γ: Δp = γ·Δp̂ ∘ (w, h)"),
        (oh, None, gamma / k, "scale by the RoI's size (w, h), not by the bin's size (w/k, h/k)"),
        ((oh[0] / (gamma * w), oh[1] / (gamma * h)), None, gamma,
         "offset_hat is normalised: multiply by γ and by the RoI size, Δp = γ·Δp̂ ∘ (w, h)"),
        ((oh[0] / w, oh[1] / h), None, gamma, "multiply by the RoI size too: Δp = γ·Δp̂ ∘ (w, h)"),
        ((-oh[0], -oh[1]), None, gamma, "the offset is added: sample at p0 + p + Δp"),
        (oh, (x1 + 0.5, y1 + 0.5, x2 + 0.5, y2 + 0.5), gamma,
         "the aligned rule starts the RoI at (x1 - 0.5, y1 - 0.5); check q1 first"),
    ]
    for v_off, v_box, v_gamma, v_hint in variants:
        if np.isclose(got, pool(v_box or box, v_off, i, j, k, v_gamma, s), atol=1e-8, rtol=1e-6):
            hint = v_hint
            break
    else:
        hint += "; average the s·s samples of the moved bin, each read with roi_sample"
    raise ExerciseError(f"{what}: got {got:.6g}, expected {want:.6g}\nHint: {hint}")


#: q2: ``fn(feature, box, offset_hat, i, j, k, gamma, sampling_ratio)`` returns y(i, j) of deformable RoI pooling
#: (DCNv1 Eq. 6) on a ``[H, W]`` feature map, bin (i, j) moved by Δp = γ·Δp̂ ∘ (w, h) with
#: ``offset_hat = (Δp̂_x, Δp̂_y)``; equal to the package's ``deform_roi_pool`` for that bin, which (with the
#: modulated and position-sensitive forms, in every tier) is unavailable in the graded second run.
check_deform_bin = Question(
    _deform_bin_cases, _deform_bin_verify, seed=SEED_Q2,
    unavailable=("dcn_lessons.reference.roi:deform_roi_pool", "dcn_lessons.reference.roi:modulated_deform_roi_pool",
                 "dcn_lessons.reference.roi:deform_ps_roi_pool", "dcn_lessons.ops.roi_align:deform_roi_pool",
                 "dcn_lessons.ops.roi_align:modulated_deform_roi_pool", "dcn_lessons.backends:select"),
)


SEED_Q3 = 0


def _ps_channel_cases(seed):
    """Every bin of every class for three layouts (k x k bins, number of classes); a grading seed draws the layouts."""
    rng = np.random.default_rng(seed)
    layouts = ((3, 4), (2, 3), (3, 1))
    if seed != SEED_Q3:
        layouts = tuple((int(rng.integers(2, 5)), int(c)) for c in rng.permutation([1, 3, 4, 5])[:3])
    return [{"args": [c, i, j, k], "call": "ps_channel", "classes": classes}
            for k, classes in layouts for c in range(classes) for i in range(k) for j in range(k)]


def _ps_table(k, classes):
    """channel read by each (class, bin), measured on the package: constant score maps, map n holds the value n."""
    from dcn_lessons.reference import ps_roi_align

    maps = np.broadcast_to(np.arange(classes * k * k, dtype=np.float64)[None, :, None, None],
                           (1, classes * k * k, 6, 6)).copy()
    return ps_roi_align(maps, np.array([[0.0, 0.0, 0.0, 6.0, 6.0]]), k, sampling_ratio=1)[0]


_TABLES = {}


def _ps_channel_verify(case, got):
    c, i, j, k = case["args"]
    classes = case["classes"]
    if (k, classes) not in _TABLES:
        _TABLES[k, classes] = _ps_table(k, classes)
    if got is None:
        raise ExerciseError("ps_channel: your function returned None -- did you forget `return`?")
    want = int(round(_TABLES[k, classes][c, i, j]))
    try:
        got = int(got)
    except (TypeError, ValueError):
        raise ExerciseError(f"ps_channel({c}, {i}, {j}, k={k}): expected an int, got {got!r}") from None
    if got == want:
        return
    if got == (i * k + j) * classes + c:
        hint = "you put the class innermost; the k² maps of one class are stored together (re-read the layout, §6)"
    elif got == (c * k + j) * k + i:
        hint = "you swapped i and j: within a class the maps run row-major over the bins, row i first"
    elif got == i * k + j:
        hint = f"that is right for class 0 only: with {classes} classes, where do the maps of class c start? (§6)"
    else:
        hint = ("re-read the layout (§6): one block of k² maps per class, in class order, each block row-major over "
                "the bins")
    size = "too high" if got > want else "too low"
    raise ExerciseError(f"ps_channel({c}, {i}, {j}, k={k}, with {classes} classes): got {got}, {size} for the map that "
                        f"bin reads\nHint: {hint}")


#: q3: ``fn(c, i, j, k)`` returns the input channel that bin (i, j) of output channel (class) c reads in
#: position-sensitive RoI pooling with k x k bins (the package's and torchvision's layout). The package's layout
#: (and the PS poolings that would measure it, as §6's experiment does) is unavailable in the graded second run.
check_ps_channel = Question(
    _ps_channel_cases, _ps_channel_verify, seed=SEED_Q3,
    unavailable=("dcn_lessons.reference.roi:_ps_channels", "dcn_lessons.reference.roi:ps_roi_align",
                 "dcn_lessons.reference.roi:deform_ps_roi_pool", "dcn_lessons.ops.roi_align:ps_roi_align",
                 "dcn_lessons.ops.roi_align:deform_ps_roi_pool", "dcn_lessons.backends:select"),
)
