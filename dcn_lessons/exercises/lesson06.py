"""Checks for lesson 06 (CUDA kernels). Globals of ``_core.py`` are injected by the loader.

q1 compiles the learner's CUDA C source. Where g++ is installed it goes through the CPU emulator
(:mod:`dcn_lessons.cuda.emulator`, compiled once per distinct source and cached); without g++ but with CuPy
and a GPU, through ``cupy.RawKernel``. The image and the output sit inside larger buffers filled with
sentinels, so a kernel that reads off the map (NaN comes back) or writes past ``out[n-1]`` is named as such
instead of silently passing.
"""
import re

import numpy as np  # noqa: F401

#: The parameter types of the q1 kernel, in order (the template's first line).
BILINEAR_PARAMS = ["const double*", "int", "int", "const double*", "const double*", "double*", "int"]
_SIGNATURE = ('extern "C" __global__ void my_bilinear(const double* im, int H, int W, const double* py, '
              'const double* px, double* out, int n)')
_THREADS = 32


def _one_line_error(text):
    """The first compiler error line (``kernel_source.cu:LINE:COL: error: ...``), or the first line."""
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    for ln in lines:
        if ": error:" in ln or ln.startswith("error"):
            return ln
    return lines[-1] if lines else str(text)


def _compile_error(source, text):
    """One line for a compile error, and a hint when the error lies past the end of the learner's source (in the
    launcher the emulator appends): there a parameter type or count differs from the template's, or a brace is
    missing."""
    line = _one_line_error(text)
    msg = f"your kernel does not compile: {line}"
    m = re.match(r"kernel_source\.cu:(\d+):", line)
    if m and int(m.group(1)) > len(source.splitlines()):
        if "convert" in line or "arguments to function" in line:
            msg += ("\nHint: the check launches my_bilinear with the template's parameters; keep its first lines "
                    f"exactly: {_SIGNATURE}")
        else:
            msg += (f"\nHint: line {m.group(1)} is past the end of your source ({len(source.splitlines())} lines): "
                    "is a closing brace } missing?")
    return msg


def _compile_bilinear(source):
    """``launch(grid, block, args)`` for the learner's ``my_bilinear`` kernel (numpy arrays in, updated in place)."""
    if source is Ellipsis or source is None:
        raise ExerciseError("my_bilinear_source: not written yet (it is ... or None); fill in the template's body")
    if not isinstance(source, str):
        raise ExerciseError(f"my_bilinear_source: expected a str holding CUDA C source, got {type(source).__name__}")
    if not re.search(r"__global__\s+void\s+my_bilinear\s*\(", source):
        raise ExerciseError(
            "my_bilinear_source: found no kernel `__global__ void my_bilinear(...)`; keep the template's first "
            f"lines ({_SIGNATURE})"
        )
    from dcn_lessons.cuda import build, emulator, gpu_status

    kernels = {"my_bilinear": BILINEAR_PARAMS}
    try:
        return build(source, kernels, where="emulator")["my_bilinear"]
    except emulator.EmulatorError as e:
        if "was not found" not in str(e):  # a compile error: show g++'s first error in one line
            raise ExerciseError(_compile_error(source, e)) from None
        no_emulator = str(e)
    ok, why = gpu_status()  # no g++: a GPU with CuPy runs the same source
    if not ok:
        raise ExerciseError(f"cannot run your kernel here: {no_emulator}; and no GPU with CuPy either ({why})")
    try:
        return build(source, kernels, where="gpu")["my_bilinear"]
    except Exception as e:  # noqa: BLE001  (cupy's CompileException)
        raise ExerciseError(f"your kernel does not compile: {_one_line_error(e)}") from None


_SENTINEL = -12345.0


def _run(launch, im, py, px):
    """One launch: one thread per sample, an extra block beyond n. Returns (out, wrote_past_n)."""
    H, W = im.shape
    n = py.size
    guard = 4 * W + 8  # wide enough for one row/column off any side of the map
    im_buf = np.full(H * W + 2 * guard, np.nan)
    im_buf[guard:guard + H * W] = im.ravel()
    grid = (-(-n // _THREADS) + 1,)  # one block more than needed: threads i >= n exist
    total = grid[0] * _THREADS
    out_buf = np.full(total + 2 * _THREADS, _SENTINEL)  # room for every thread's write, even without the bounds check
    out = out_buf[_THREADS:_THREADS + n]
    pos = np.zeros((2, total))  # py, px padded to every thread, so a missing bounds check reads no garbage
    pos[0, :n], pos[1, :n] = py, px
    launch(grid, (_THREADS,), (im_buf[guard:guard + H * W], H, W, pos[0], pos[1], out, n))
    wrote_past = bool((out_buf[:_THREADS] != _SENTINEL).any() or (out_buf[_THREADS + n:] != _SENTINEL).any())
    return out.copy(), wrote_past


def check_bilinear_kernel(source):
    """q1: ``source`` is CUDA C text defining ``extern "C" __global__ void my_bilinear(const double* im, int H,
    int W, const double* py, const double* px, double* out, int n)``: thread i (< n) writes
    ``out[i] = x(py[i], px[i])``, the bilinear sample of the row-major map ``im [H, W]`` by DCNv1 Eq. (3)
    (corners off the map read 0). Compared with :func:`dcn_lessons.reference.bilinear_sample`."""
    from dcn_lessons.reference import bilinear_sample

    launch = _compile_bilinear(source)
    rng = np.random.default_rng(6)
    H, W = 5, 7
    im = rng.normal(size=(H, W)) + 2.0  # no zeros, so "read 0" and "read a pixel" differ
    n = 37  # not a multiple of the block size
    iy, ix = rng.integers(0, H, n).astype(float), rng.integers(0, W, n).astype(float)
    band_y = np.concatenate([rng.uniform(-0.95, -0.05, 10), rng.uniform(H - 0.95, H - 0.05, 10), rng.uniform(0, H - 1, 17)])
    band_x = np.concatenate([rng.uniform(0, W - 1, 20), rng.uniform(-0.95, -0.05, 9), rng.uniform(W - 0.95, W - 0.05, 8)])
    rim_y = np.array([-1.0, H, H + 0.5, -1.5, 2.0, 2.0, 2.0, 2.0, -1.0, H])
    rim_x = np.array([3.0, 3.0, 3.0, 3.0, -1.0, W, W + 0.25, -1.25, -1.0, W])
    cases = [
        ("integer positions inside the map", iy, ix,
         "at an integer position the sample is the pixel itself: all the weight on corner (floor y, floor x) = "
         "im[y * W + x] (py is the row, px the column)"),
        ("fractional positions inside the map", rng.uniform(0, H - 1, n), rng.uniform(0, W - 1, n),
         "with y0 = floor(y), ly = y - y0 (likewise x): weights (1-ly)(1-lx), (1-ly)lx, ly(1-lx), ly*lx for "
         "corners (y0,x0), (y0,x0+1), (y0+1,x0), (y0+1,x0+1); pixel (r, c) is im[r * W + c]"),
        ("positions in the band -1 < y < 0, H-1 < y < H (likewise x), where some corners are off the map",
         band_y, band_x,
         "a corner off the map reads 0 (test 0 <= r < H and 0 <= c < W for each corner before reading); and "
         "use floor(): (int)y truncates toward zero, so (int)(-0.5) is 0, not -1"),
        ("positions on or beyond the rim (y <= -1, y >= H, likewise x)", rim_y, rim_x,
         "a sample at y <= -1 or y >= H (likewise x) has all four corners off the map, so it is 0"),
        ("positions far off the map", np.array([-40.0, 2.5, 300.0, 1.5e3]), np.array([3.5, -60.0, 2.0, -2e3]),
         "far-away samples are 0: every corner is off the map"),
    ]
    for what, py, px, hint in cases:
        out, wrote_past = _run(launch, im, py, px)
        if wrote_past:
            raise ExerciseError(
                f"{what}: a thread wrote outside out[0:n] (the launch has more threads than samples): keep the "
                "bounds check `if (i >= n) return;` before writing out[i]"
            )
        want = bilinear_sample(im, py, px)
        if np.isnan(out).any():
            i = int(np.argwhere(np.isnan(out))[0][0])
            raise ExerciseError(
                f"{what}: out[{i}] is NaN for (py, px) = ({py[i]:g}, {px[i]:g}): your kernel read memory outside "
                "the image (this check surrounds it with NaN). Read a corner only when 0 <= row < H and "
                "0 <= column < W; an off-map corner contributes 0"
            )
        bad = ~np.isclose(out, want, rtol=1e-9, atol=1e-12)
        if bad.any():
            i = int(np.argwhere(bad)[0][0])
            clamped = bilinear_sample(im, np.clip(py, 0, H - 1), np.clip(px, 0, W - 1))
            extra = ""
            if np.isclose(out[i], clamped[i]) and not np.isclose(want[i], clamped[i]):
                extra = " (your value is that of the position clamped into the map: Eq. (3) reads 0 off the map)"
            elif out[i] == _SENTINEL:
                extra = " (nothing was written there: does every thread i < n write out[i]?)"
            raise ExerciseError(
                f"{what}: {int(bad.sum())} of {bad.size} samples are wrong; first out[{i}] at (py, px) = "
                f"({py[i]:g}, {px[i]:g}): got {out[i]:.6g}, expected {want[i]:.6g}{extra}\nHint: {hint}"
            )


def check_column_index(fn):
    """q2: ``fn(index, C, K, Ho, Wo)`` returns ``(b, c, k, y, x)``, the work item of ``deform_col2im_kernel``
    (and the column entry ``columns[b, c*K + k, y*Wo + x]`` it reads) for flat work-item index ``index``; x moves
    fastest. ``index`` may be an int or an integer array (all five results then have its shape)."""
    N, C, K, Ho, Wo = 2, 3, 4, 5, 6  # all different, so a swapped size shows
    index = np.arange(N * C * K * Ho * Wo)
    got = call(fn, index.copy(), C, K, Ho, Wo, what="my_column_index")
    if got is None:
        raise ExerciseError("my_column_index: returned None -- not written yet, or a missing `return`? "
                            "Expected 5 values (b, c, k, y, x)")
    if not isinstance(got, (tuple, list)) or len(got) != 5:
        raise ExerciseError(
            f"my_column_index: expected 5 values (b, c, k, y, x), got "
            f"{type(got).__name__}{' of length ' + str(len(got)) if isinstance(got, (tuple, list)) else ''}"
        )
    want = np.unravel_index(index, (N, C, K, Ho, Wo))
    sizes = {"b": N, "c": C, "k": K, "y": Ho, "x": Wo}
    faster = {"b": "C*K*Ho*Wo", "c": "K*Ho*Wo", "k": "Ho*Wo", "y": "Wo", "x": "1"}
    for (name, size), g, w in zip(sizes.items(), got, want):
        arr = expect_shape(g, index.shape, what=f"{name} for index = np.arange({index.size})")
        if np.array_equal(arr, w):
            continue
        i = int(np.argwhere(arr != w)[0][0])
        if (arr < 0).any() or (arr >= size).any():
            hint = f"{name} must lie in [0, {size}): after dividing by {faster[name]}, take the remainder % {size}"
            if name == "b":
                hint = f"b = index // ({faster['b']}): nothing moves slower than b, so no remainder"
        else:
            hint = (f"divide index by the product of the sizes that move faster than {name} ({faster[name]}), "
                    f"then take % {size}; the order from slowest to fastest is b, c, k, y, x")
        raise ExerciseError(
            f"{name}: wrong for {int((arr != w).sum())} of {index.size} indices (C={C}, K={K}, Ho={Ho}, Wo={Wo}); "
            f"first at index {i}: got {name} = {arr[i]:g}, expected {w[i]}\nHint: {hint}"
        )
    one = call(fn, 97, C, K, Ho, Wo, what=f"my_column_index(97, {C}, {K}, {Ho}, {Wo})")
    try:
        one = tuple(int(v) for v in one)
    except (TypeError, ValueError) as e:
        raise ExerciseError(f"my_column_index(97, {C}, {K}, {Ho}, {Wo}): expected 5 integers for an int index, "
                            f"got {one!r} ({e})") from None
    if one != tuple(int(v[97]) for v in want):
        raise ExerciseError(f"my_column_index(97, {C}, {K}, {Ho}, {Wo}) = {one}: expected "
                            f"{tuple(int(v[97]) for v in want)} "
                            "(an int index must give the same as an array)")
