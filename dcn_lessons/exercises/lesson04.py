"""Checks for lesson 04 (the RoI pooling family). Globals of ``_core.py`` are injected by the loader.

Every expected value comes from the package's reference tier (``dcn_lessons.reference.roi``); the
typical wrong answers are recomputed with the same functions so that a failure can say which one it is.
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


def check_bin_samples(fn):
    """q1: ``fn(box, i, j, k, sampling_ratio)`` returns the sample points of bin (i, j) of a RoI split into
    k x k bins, under the aligned rule (torchvision ``roi_align(aligned=True)``): a ``[s*s, 2]`` array of
    (row, column), s = sampling_ratio, row-major over the samples (u, v)."""
    cases = [
        ((2.0, 3.0, 8.0, 9.0), 0, 0, 3, 1, "with one sample per bin it sits at the bin's centre"),
        ((2.0, 3.0, 8.0, 9.0), 1, 2, 3, 2, "bin (i, j) is row i, column j"),
        ((1.5, 0.25, 13.0, 7.0), 2, 1, 3, 2, "the RoI need not be square nor sit on integers"),
        ((0.0, 0.0, 7.0, 14.0), 1, 0, 2, 3, "three samples per side, a tall RoI"),
    ]
    for box, i, j, k, s, hint in cases:
        want = _package_samples(box, i, j, k, s)
        what = f"bin_samples(box={box}, i={i}, j={j}, k={k}, sampling_ratio={s})"
        got = expect_shape(call(fn, box, i, j, k, s, what="bin_samples"), want.shape, what)
        if np.allclose(got, want):
            continue
        x1, y1, x2, y2 = box
        shifted = _package_samples((x1 + 0.5, y1 + 0.5, x2 + 0.5, y2 + 0.5), i, j, k, s)
        bh, bw = (y2 - y1) / k, (x2 - x1) / k
        if np.allclose(got, want[:, ::-1]):
            hint = "your columns are swapped: each row is (row, column) = (y, x), not (x, y)"
        elif np.allclose(got, shifted):
            hint = ("every point is 0.5 px too far right and down: the aligned rule starts the RoI at "
                    "(x1 - 0.5, y1 - 0.5), because pixel q covers [q - 0.5, q + 0.5)")
        elif k > 1 and i != j and _same_set(got, _package_samples(box, j, i, k, s)):
            hint = "you swapped i and j: i counts bins down (rows, y), j across (columns, x)"
        elif np.allclose(got, want - [bh / (2 * s), bw / (2 * s)]):
            hint = ("your samples sit on the corners of the sub-cells; they sit at their centres: "
                    "y = y_start + i·bin_h + (u + 0.5)·bin_h/s")
        elif _same_set(got, want):
            hint = "the right points in the wrong order: rows first (u), then columns (v), as np.meshgrid(..., indexing='ij')"
        expect_close(got, want, what=what, hint=hint)


def check_deform_bin(fn):
    """q2: ``fn(feature, box, offset_hat, i, j, k, gamma, sampling_ratio)`` returns y(i, j) of deformable RoI
    pooling (DCNv1 Eq. 6) on a ``[H, W]`` feature map, bin (i, j) moved by Δp = γ·Δp̂ ∘ (w, h) with
    ``offset_hat = (Δp̂_x, Δp̂_y)``; equal to the package's ``deform_roi_pool`` for that bin."""
    from dcn_lessons.reference import deform_roi_pool

    rng = np.random.default_rng(4)
    yy, xx = np.mgrid[0:12, 0:15]
    feature = np.sin(xx / 2.3) + 0.7 * np.cos(yy / 1.7) + 0.3 * rng.random((12, 15))

    def pool(box, offset_hat, i, j, k, gamma, s):
        off = np.zeros((1, 2, k, k))
        off[0, :, i, j] = offset_hat
        return float(deform_roi_pool(feature[None, None], np.array([[0.0, *box]]), off, k,
                                     sampling_ratio=s, gamma=gamma)[0, 0, i, j])

    cases = [
        ((2.0, 1.0, 11.0, 10.0), (0.0, 0.0), 1, 1, 3, 0.1, 2, "with zero offsets Eq. (6) is Eq. (5): the bin average"),
        ((2.3, 1.7, 11.4, 7.6), (0.8, 0.0), 0, 2, 3, 0.1, 2, "Δp̂_x moves the bin along x by γ·Δp̂_x·w"),
        ((2.3, 1.7, 11.4, 7.6), (0.0, -1.2), 2, 0, 3, 0.1, 2, "Δp̂_y moves the bin along y by γ·Δp̂_y·h"),
        ((1.0, 2.0, 13.0, 8.0), (0.6, -0.9), 1, 2, 3, 0.25, 3, "use the gamma you are given"),
        ((3.2, 0.5, 9.9, 10.3), (-1.5, 0.7), 0, 1, 2, 0.1, 2, "a 2 x 2 split"),
    ]
    for box, oh, i, j, k, gamma, s, hint in cases:
        want = pool(box, oh, i, j, k, gamma, s)
        what = f"deform_bin(box={box}, offset_hat={oh}, i={i}, j={j}, k={k}, gamma={gamma}, sampling_ratio={s})"
        got_raw = call(fn, feature.copy(), box, np.array(oh), i, j, k, gamma, s, what="deform_bin")
        got = _np(got_raw, what)
        if got.size != 1:
            raise ExerciseError(f"{what}: expected one number (the bin's value), got an array of shape {list(got.shape)}")
        got = float(got.reshape(()))
        if np.isclose(got, want, atol=1e-8, rtol=1e-6):
            continue
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


def check_ps_channel(fn):
    """q3: ``fn(c, i, j, k)`` returns the input channel that bin (i, j) of output channel (class) c reads in
    position-sensitive RoI pooling with k x k bins (the package's and torchvision's layout)."""
    from dcn_lessons.reference import ps_roi_align

    for k, classes in ((3, 4), (2, 3), (3, 1)):
        # constant score maps: map n holds the value n, so the pooled output names the map each bin reads
        maps = np.broadcast_to(np.arange(classes * k * k, dtype=np.float64)[None, :, None, None],
                               (1, classes * k * k, 6, 6)).copy()
        table = ps_roi_align(maps, np.array([[0.0, 0.0, 0.0, 6.0, 6.0]]), k, sampling_ratio=1)[0]
        for c in range(classes):
            for i in range(k):
                for j in range(k):
                    got = call(fn, c, i, j, k, what="ps_channel")
                    if got is None:
                        raise ExerciseError("ps_channel: your function returned None -- did you forget `return`?")
                    want = int(round(table[c, i, j]))
                    try:
                        ok = int(got) == want
                    except (TypeError, ValueError):
                        raise ExerciseError(f"ps_channel({c}, {i}, {j}, k={k}): expected an int, got {got!r}") from None
                    if ok:
                        continue
                    if int(got) == (i * k + j) * classes + c:
                        hint = ("you put the class innermost; the k² maps of one class are contiguous: "
                                "class c owns channels c·k² ... c·k² + k² - 1")
                    elif int(got) == (c * k + j) * k + i:
                        hint = "you swapped i and j: the maps of one class run row-major over the bins, i·k + j"
                    elif int(got) == i * k + j:
                        hint = f"that is right for class 0 only; with {classes} classes, class c starts at channel c·k²"
                    else:
                        hint = "bin (i, j) of class c reads map c·k² + i·k + j"
                    raise ExerciseError(f"ps_channel({c}, {i}, {j}, k={k}): got {got}, expected {want}\nHint: {hint}")
