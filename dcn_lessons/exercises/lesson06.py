"""Checks for lesson 06 (CUDA kernels): a ladder of ten small puzzles. Globals of ``_core.py`` are injected.

Every answer but q5 is CUDA C source text (a ``str``) that defines one ``extern "C" __global__`` kernel with the
template's parameters. The check compiles it where the learner's code runs -- through the CPU emulator
(:mod:`dcn_lessons.cuda.emulator`, g++, compiled once per distinct source and cached) where g++ is installed,
else with CuPy on a GPU -- launches it on each case and compares in the verdict with the NumPy references.
Inputs sit inside larger buffers filled with NaN and outputs inside buffers filled with a sentinel, so a kernel
that reads off an array (NaN comes back) or writes past it is named as such instead of passing by luck (in the
emulator, which works on those buffers in place; through CuPy only the arrays themselves travel to the GPU, so
there the guards see nothing and a stray access is the GPU's to report).

* q1 :func:`check_sigmoid_kernel` -- map with a bounds check: the DCNv2 mask, sigmoid of the logits.
* q2 :func:`check_shift_kernel` -- a 2-D grid: the image read at (y + dy, x + dx), 0 off the map (one row of a
  plain im2col).
* q3 :func:`check_add_bias_kernel` -- a grid-stride loop, fewer threads than elements: add the bias per channel.
* q4 :func:`check_bilinear_kernel` -- one thread per sample: DCNv1 Eq. (3).
* q5 :func:`check_column_index` -- (Python) a flat work-item index to (b, c, k, y, x).
* q6 :func:`check_im2col_kernel` -- the deformable im2col (DCNv1 Eq. 2-3, DCNv2 Eq. 1), one work item per column
  entry.
* q7 :func:`check_count_adds_kernel` -- atomics on integers: how many adds col2im makes into each pixel.
* q8 :func:`check_col2im_kernel` -- col2im, the input gradient, scattered with ``atomicAdd``.
* q9 :func:`check_col2im_gather_kernel` -- the same gradient gathered, one thread per input pixel, no atomics:
  deterministic.
* q10 :func:`check_roi_align_kernel` -- RoI Align's forward (DCNv1 Eq. 5, sampled), one thread per output bin.

Delegation: a kernel cannot call the package from the GPU, only copy it. The verdict reads the source (the run
step hands it back with the outputs): an ``#include`` (or ``#import``/``#embed``) directive, or any name defined
in the package's ``kernels/`` (``dcn_sample``, ``DCN_GRID_STRIDE_LOOP``, ``deform_im2col_kernel``, ...), fails
the puzzle; and the kernel questions name the functions that hand out the package's kernel text
(``unavailable``), so a source assembled in Python from ``kernels/`` is missing in the grader's second run.
q7 and q8 must add with ``atomicAdd`` and q9 must not use atomics: the emulator runs one thread at a time, so
it cannot show a race, and the check reads the source instead.
"""
import re

import numpy as np  # noqa: F401

_THREADS = 32
_SENTINEL = -12345.0
_ISENTINEL = -12345
#: The functions that hand out the package's kernel source: q1-q4 and q6-q10 must not need them.
_KERNEL_TEXT = ("dcn_lessons.cuda._source:definition", "dcn_lessons.cuda._source:kernel_source",
                "dcn_lessons.cuda._source:kernels_dir")


# -------------------------------------------------------------------------------------- reading a source

def _code_only(source):
    """``source`` without comments, string and character literals, and line splices (what the compiler reads)."""
    s = source.replace("\\\r\n", "").replace("\\\n", "")
    out, i, n = [], 0, len(s)
    while i < n:
        if s.startswith("//", i):
            j = s.find("\n", i)
            i = n if j < 0 else j
        elif s.startswith("/*", i):
            j = s.find("*/", i + 2)
            i = n if j < 0 else j + 2
            out.append(" ")
        elif s[i] in "\"'":
            q, j = s[i], i + 1
            while j < n and s[j] != q and s[j] != "\n":
                j += 2 if s[j] == "\\" else 1
            out.append(q + q)
            i = j + 1
        else:
            out.append(s[i])
            i += 1
    return "".join(out)


_DIRECTIVE = re.compile(r"^[ \t]*(?:#|%:|\?\?=)[ \t]*(include_next|include|import|embed)\b", re.MULTILINE)
_IDENT = re.compile(r"\b[A-Za-z_]\w*\b")
_PACKAGE_NAMES = []


def _package_names():
    """Every name the package's ``kernels/`` defines or is built from: its ``dcn``-prefixed helpers, macros and
    types, and its kernels (read from the files, once)."""
    if not _PACKAGE_NAMES:
        from dcn_lessons.cuda._source import kernels_dir

        names = set()
        for path in sorted(kernels_dir().glob("*.cu*")):
            code = _code_only(path.read_text())
            names |= {w for w in _IDENT.findall(code) if w.lower().startswith("dcn")}
            names |= set(re.findall(r"__global__\s+void\s+(\w+)", code))
            names |= set(re.findall(r"#\s*define\s+(\w+)", code))
        _PACKAGE_NAMES.append(names)
    return _PACKAGE_NAMES[0]


def _source_problem(source, answer, atomics=None):
    """Why the verdict refuses ``source`` before looking at its outputs, or None. ``atomics``: "required",
    "forbidden" or None."""
    code = _code_only(source)
    m = _DIRECTIVE.search(code)
    if m:
        return (f"{answer}: your source has an #{m.group(1)} directive: the puzzle is graded on code you write in "
                "the string itself (the package's kernels/ hold the answers; the emulator's header already gives "
                "floor, exp, atomicAdd, ...)")
    used = sorted(set(_IDENT.findall(code)) & _package_names())
    if used:
        return (f"{answer}: your source uses {', '.join(used[:3])}, from the package's own kernels/: write the "
                "kernel yourself (only your code is graded; name your helpers my_...)")
    calls = set(re.findall(r"\b(atomic\w+)\s*\(", code))
    if atomics == "required" and "atomicAdd" not in calls:
        return (f"{answer}: your kernel adds without atomicAdd. On a GPU two threads that add into the same "
                "element at the same time lose one of the updates (read, add, write interleave); the emulator "
                "runs one thread after the other and cannot show that, so the check reads your source.\nHint: "
                "every add into a shared element goes through atomicAdd(address, value)")
    if atomics == "forbidden" and calls:
        return (f"{answer}: your kernel calls {sorted(calls)[0]}: this version is the one without atomics. Each "
                "thread owns one output element, sums what it receives in a fixed order and writes it once, so "
                "nothing is shared and the result is the same bit for bit on every run")
    return None


# -------------------------------------------------------------------------------------- compiling and launching

def _one_line_error(text):
    """The first compiler error line (``kernel_source.cu:LINE:COL: error: ...``), or the first line."""
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    for ln in lines:
        if ": error:" in ln or ln.startswith("error"):
            return ln
    return lines[-1] if lines else str(text)


def _compile_error(source, text, signature):
    """One line for a compile error, and a hint when the error lies past the end of the learner's source (in the
    launcher the emulator appends): there a parameter type or count differs from the template's, or a brace is
    missing."""
    line = _one_line_error(text)
    msg = f"your kernel does not compile: {line}"
    m = re.match(r"kernel_source\.cu:(\d+):", line)
    if m and int(m.group(1)) > len(source.splitlines()):
        if "convert" in line or "arguments to function" in line:
            msg += f"\nHint: the check launches the kernel with the template's parameters; keep its first lines exactly: {signature}"
        else:
            msg += (f"\nHint: line {m.group(1)} is past the end of your source ({len(source.splitlines())} lines): "
                    "is a closing brace } missing?")
    return msg


def _signature(name, params):
    """The template's first line: the kernel with its named parameters."""
    return f'extern "C" __global__ void {name}({", ".join(params)})'


def _types(params):
    """The C types of named parameters (``"const double* im"`` -> ``"const double*"``), as the launchers need."""
    return [re.sub(r"\s*\b[A-Za-z_]\w*$", "", p).strip() for p in params]


def _compile(source, name, params, answer):
    """``launch(grid, block, args)`` for the kernel ``name`` of the learner's ``source``, or ExerciseError."""
    signature = _signature(name, params)
    if source is Ellipsis or source is None:
        raise ExerciseError(f"{answer}: not written yet (it is ... or None); fill in the template's body")
    if not isinstance(source, str):
        raise ExerciseError(f"{answer}: expected a str holding CUDA C source, got {type(source).__name__}")
    if not re.search(rf"__global__\s+void\s+{name}\s*\(", source):
        raise ExerciseError(f"{answer}: found no kernel `__global__ void {name}(...)`; keep the template's first "
                            f"lines ({signature})")
    from dcn_lessons.cuda import build, emulator, gpu_status

    kernels = {name: _types(params)}
    try:
        return build(source, kernels, where="emulator")[name]
    except emulator.EmulatorError as e:
        if "was not found" not in str(e):  # a compile error: show g++'s first error in one line
            raise ExerciseError(_compile_error(source, e, signature)) from None
        no_emulator = str(e)
    ok, why = gpu_status()  # no g++: a GPU with CuPy runs the same source
    if not ok:
        raise ExerciseError(f"cannot run your kernel here: {no_emulator}; and no GPU with CuPy either ({why})")
    try:
        return build(source, kernels, where="gpu")[name]
    except Exception as e:  # noqa: BLE001  (cupy's CompileException)
        raise ExerciseError(f"your kernel does not compile: {_one_line_error(e)}") from None


def _kernel_run(name, params, answer, launch):
    """A ``run`` step: compile the learner's source (in the learner's process), ``launch(kernel, args)`` -> a
    dict of outputs, and hand the source back with them for the verdict to read."""
    def run(source, args):
        try:
            kernel = _compile(source, name, params, answer)
        except ExerciseError as e:
            return Failed("message", str(e))
        try:
            out = launch(kernel, args)
        except Exception as e:  # noqa: BLE001  (a launch that fails: the emulator's own checks)
            return Failed("message", f"{answer}: your kernel could not be launched: {type(e).__name__}: {e}")
        out["source"] = source
        return out
    return run


def _kernel_verify(answer, verify_outputs, atomics=None):
    """A ``verify`` step: read the source first (:func:`_source_problem`), then the outputs."""
    def verify(case, got):
        if not isinstance(got, dict) or not isinstance(got.get("source"), str):
            raise ExerciseError(f"{case['what']}: the check found no kernel output to look at")
        problem = _source_problem(got["source"], answer, atomics)
        if problem:
            raise ExerciseError(problem)
        verify_outputs(case, got)
    return verify


def _guarded(values, guard, fill, dtype=np.float64):
    """``(buffer, view)``: ``values`` (flattened) inside a buffer with ``guard`` elements of ``fill`` on each
    side; the kernel gets the view, whose neighbours in memory are the guard."""
    values = np.ascontiguousarray(values, dtype=dtype).ravel()
    buf = np.full(values.size + 2 * guard, fill, dtype=dtype)
    buf[guard:guard + values.size] = values
    return buf, buf[guard:guard + values.size]


def _wrote_outside(buf, guard, fill):
    return bool((buf[:guard] != fill).any() or (buf[buf.size - guard:] != fill).any())


def _blocks(n, threads=_THREADS, extra=1):
    return (-(-n // threads) + extra,)


def _read_nan(what, arr, name):
    """Fail when the kernel read a guard (NaN came back)."""
    if np.isnan(arr).any():
        i = tuple(int(v) for v in np.argwhere(np.isnan(arr))[0])
        raise ExerciseError(f"{what}: {name}{list(i)} is NaN: your kernel read memory outside an input array (the "
                            "check surrounds them with NaN). Read only inside the arrays; what lies off the map "
                            "contributes 0")


def _outputs_common(what, out, wrote_past, name):
    """The guards of an output: a write outside it, or entries nobody wrote."""
    if wrote_past:
        raise ExerciseError(f"{what}: a thread wrote outside {name} (the launch has more threads than elements, or "
                            "an index ran past the end): keep every write inside the array's bounds")


# ---------------------------------------------------------------------------------------------- q1: map

SIGMOID_PARAMS = ["const double* logits", "double* mask", "int n"]


def _sigmoid_launch(kernel, args):
    (logits,) = args
    logits = np.asarray(logits, dtype=np.float64)
    n = logits.size
    lbuf, lview = _guarded(logits, _THREADS * 2, np.nan)
    guard = _THREADS * 2 + n  # room for every thread's write, even without the bounds check
    obuf, oview = _guarded(np.full(n, _SENTINEL), guard, _SENTINEL)
    kernel(_blocks(n), (_THREADS,), (lview, oview, n))
    return {"mask": oview.copy(), "wrote_past": _wrote_outside(obuf, guard, _SENTINEL)}


SEED_SIGMOID = 1


def _sigmoid_cases(seed):
    rng = np.random.default_rng(seed)
    steps = [("37 logits (the grid has one block more than needed)", rng.uniform(-6, 6, 37)),
             ("64 logits, two full blocks", rng.uniform(-6, 6, 64)),
             ("large and tiny logits", np.array([-40.0, -1e-3, 0.0, 1e-3, 40.0, rng.uniform(8, 30)]))]
    return [{"args": [v], "call": "my_sigmoid_source", "what": f"my_sigmoid on {what}"} for what, v in steps]


def _sigmoid_outputs(case, got):
    (logits,) = case["args"]
    what = case["what"]
    out = _np(got["mask"], what)
    _outputs_common(what, out, got.get("wrote_past"), "mask[0:n]")
    _read_nan(what, out, "mask")
    want = 1.0 / (1.0 + np.exp(-logits))
    if np.allclose(out, want, rtol=1e-12, atol=1e-15):
        return
    written = out != _SENTINEL
    if written[:_THREADS].all() and not written[_THREADS:].any() and out.size > _THREADS:
        raise ExerciseError(f"{what}: only mask[0:{_THREADS}] was written, once per block: every block's threads "
                            "wrote the same elements.\nHint: a thread's global number is blockIdx.x * blockDim.x + "
                            "threadIdx.x")
    if not written.all():
        i = int(np.argwhere(~written)[0][0])
        raise ExerciseError(f"{what}: nothing was written at mask[{i}]: does every thread i < n write its element?")
    if np.allclose(out, 1.0 / (1.0 + np.exp(logits)), rtol=1e-12, atol=1e-15):
        raise ExerciseError(f"{what}: your values are sigmoid(-z).\nHint: DCNv2 §3.2's modulation scalar is "
                            "sigmoid(z) = 1 / (1 + exp(-z)): near 1 for large z")
    expect_close(out, want, what=what, rtol=1e-12, atol=1e-15,
                 hint="Δm = sigmoid(logit), elementwise (DCNv2 §3.2): use exp() in double")


#: q1: ``source`` defines ``my_sigmoid(const double* logits, double* mask, int n)``: thread i < n writes
#: ``mask[i] = 1 / (1 + exp(-logits[i]))`` (DCNv2 §3.2's modulation scalars). One block more than needed.
check_sigmoid_kernel = Question(
    _sigmoid_cases, _kernel_verify("my_sigmoid_source", _sigmoid_outputs),
    run=_kernel_run("my_sigmoid", SIGMOID_PARAMS, "my_sigmoid_source", _sigmoid_launch),
    seed=SEED_SIGMOID, unavailable=_KERNEL_TEXT)


# ---------------------------------------------------------------------------------------------- q2: 2-D

SHIFT_PARAMS = ["const double* im", "double* out", "int H", "int W", "int dy", "int dx"]
SHIFT_BLOCK = (8, 4)


def _shift_launch(kernel, args):
    im, dy, dx = args
    im = np.asarray(im, dtype=np.float64)
    H, W = im.shape
    grid = (-(-W // SHIFT_BLOCK[0]) + 1, -(-H // SHIFT_BLOCK[1]) + 1)  # overhangs the image on both axes
    reach = (grid[1] * SHIFT_BLOCK[1] + abs(dy) + 2) * (grid[0] * SHIFT_BLOCK[0] + abs(dx) + 2)
    ibuf, iview = _guarded(im, reach, np.nan)
    obuf, oview = _guarded(np.full(H * W, _SENTINEL), reach, _SENTINEL)
    kernel(grid, SHIFT_BLOCK, (iview, oview, H, W, int(dy), int(dx)))
    return {"out": oview.reshape(H, W).copy(), "wrote_past": _wrote_outside(obuf, reach, _SENTINEL)}


def _shift_ref(im, dy, dx, rule="zero"):
    H, W = im.shape
    y, x = np.mgrid[:H, :W]
    sy, sx = y + dy, x + dx
    if rule == "clamp":
        return im[np.clip(sy, 0, H - 1), np.clip(sx, 0, W - 1)]
    if rule == "flat":  # only the flat index tested: a column past the edge reads the next row
        flat = sy * W + sx
        ok = (flat >= 0) & (flat < H * W)
        return np.where(ok, im.ravel()[np.clip(flat, 0, H * W - 1)], 0.0)
    ok = (sy >= 0) & (sy < H) & (sx >= 0) & (sx < W)
    return np.where(ok, im[np.clip(sy, 0, H - 1), np.clip(sx, 0, W - 1)], 0.0)


SEED_SHIFT = 2


def _shift_cases(seed):
    rng = np.random.default_rng(seed)
    steps = [(7, 9, -1, -1, "kernel point (0, 0) of a 3x3 conv with padding 1: read at (y - 1, x - 1)"),
             (7, 9, 1, 0, "one row down"),
             (6, 11, 0, 2, "two columns right: the right edge reads 0"),
             (9, 7, int(rng.integers(-3, -1)), int(rng.integers(2, 4)), "up and right, a tall image")]
    cases = []
    for H, W, dy, dx, what in steps:
        im = rng.normal(size=(H, W)) + 3.0  # no zeros: "read 0" and "read a pixel" differ
        call = f"my_shift(im [{H}, {W}], dy={dy}, dx={dx})"
        cases.append({"args": [im, dy, dx], "call": "my_shift_source", "what": f"{call} ({what})"})
    return cases


def _shift_outputs(case, got):
    im, dy, dx = case["args"]
    what = case["what"]
    out = _np(got["out"], what)
    _outputs_common(what, out, got.get("wrote_past"), "out[0:H*W]")
    _read_nan(what, out, "out")
    want = _shift_ref(im, dy, dx)
    if np.allclose(out, want, rtol=1e-12, atol=0):
        return
    if (out == _SENTINEL).any():
        y, x = (int(v) for v in np.argwhere(out == _SENTINEL)[0])
        raise ExerciseError(f"{what}: nothing was written at out[{y}, {x}]: every thread whose (y, x) lies in the "
                            "image writes its pixel, 0 when it reads off the map.\nHint: x = blockIdx.x * blockDim.x "
                            "+ threadIdx.x is the column, y (from the .y built-ins) the row")
    for rule, hint in (("clamp", "off the map the shifted image is 0 (zero padding), not the border pixel"),
                       ("flat", "test the row and the column separately: a column past the right edge must read "
                                "0, not the start of the next row")):
        if np.allclose(out, _shift_ref(im, dy, dx, rule), rtol=1e-12, atol=0):
            raise ExerciseError(f"{what}: your image matches the answer with the wrong rule at the border.\nHint: {hint}")
    if np.allclose(out, _shift_ref(im, -dy, -dx), rtol=1e-12, atol=0):
        raise ExerciseError(f"{what}: your image is shifted the other way.\nHint: out[y, x] reads im at "
                            "(y + dy, x + dx)")
    expect_close(out, want, what=what, rtol=1e-12, atol=0,
                 hint="pixel (r, c) is im[r * W + c]; rows are y (the .y built-ins), columns x (the .x built-ins)")


#: q2: ``source`` defines ``my_shift(const double* im, double* out, int H, int W, int dy, int dx)``, launched on a
#: 2-D grid of (8, 4) blocks that overhangs the image: the thread of column x, row y writes ``out[y*W + x] =
#: im[(y+dy)*W + (x+dx)]``, 0 when that lies off the map (a plain im2col's row for one kernel point).
check_shift_kernel = Question(
    _shift_cases, _kernel_verify("my_shift_source", _shift_outputs),
    run=_kernel_run("my_shift", SHIFT_PARAMS, "my_shift_source", _shift_launch),
    seed=SEED_SHIFT, unavailable=_KERNEL_TEXT)


# ---------------------------------------------------------------------------------------------- q3: grid-stride

BIAS_PARAMS = ["double* out", "const double* bias", "int C", "int HW", "int n"]
BIAS_GRID, BIAS_BLOCK = (2,), (_THREADS,)


def _bias_launch(kernel, args):
    out, bias, C, HW = args
    out = np.asarray(out, dtype=np.float64)
    n = out.size
    bbuf, bview = _guarded(bias, 64, np.nan)
    guard = BIAS_GRID[0] * BIAS_BLOCK[0] + 8
    obuf, oview = _guarded(out, guard, _SENTINEL)
    kernel(BIAS_GRID, BIAS_BLOCK, (oview, bview, int(C), int(HW), n))
    return {"out": oview.copy(), "wrote_past": _wrote_outside(obuf, guard, _SENTINEL)}


SEED_BIAS = 3


def _bias_cases(seed):
    rng = np.random.default_rng(seed)
    cases = []
    for N, C, HW, what in [(1, 3, 5, "15 elements, fewer than the 64 threads"),
                           (2, 4, 20, "160 elements, 64 threads"),
                           (3, int(rng.integers(5, 8)), 30, "hundreds of elements, 64 threads")]:
        out = rng.normal(size=N * C * HW)
        bias = rng.normal(size=C) + 5.0
        call = f"my_add_bias(out [{N}, {C}, {HW}], bias [{C}], C={C}, HW={HW}, n={out.size})"
        cases.append({"args": [out, bias, C, HW], "call": "my_add_bias_source",
                      "what": f"{call}, grid {BIAS_GRID} x block {BIAS_BLOCK} ({what})"})
    return cases


def _bias_outputs(case, got):
    out0, bias, C, HW = case["args"]
    what = case["what"]
    out = _np(got["out"], what)
    _outputs_common(what, out, got.get("wrote_past"), "out[0:n]")
    _read_nan(what, out, "out")
    idx = np.arange(out0.size)
    per = bias[(idx // HW) % C]
    want = out0 + per
    if np.allclose(out, want, rtol=1e-12, atol=1e-12):
        return
    threads = BIAS_GRID[0] * BIAS_BLOCK[0]
    done = np.isclose(out, want, rtol=1e-12, atol=1e-12)
    if done[:threads].all() and np.allclose(out[threads:], out0[threads:]):
        raise ExerciseError(f"{what}: only the first {threads} elements got their bias, one per thread of the "
                            "grid.\nHint: the launch is fixed and smaller than n: each thread handles i, i + T, "
                            "i + 2T, ... with T = blockDim.x * gridDim.x (the grid-stride loop of §1)")
    times = (out - out0) / per
    if np.allclose(times, np.round(times), atol=1e-9) and (np.round(times) > 1).any():
        raise ExerciseError(f"{what}: some elements got their bias {int(np.round(times).max())} times.\nHint: the "
                            "stride of the loop is the number of threads in the whole grid, blockDim.x * gridDim.x")
    if np.allclose(out, per, rtol=1e-12, atol=1e-12):
        raise ExerciseError(f"{what}: you overwrote out with the bias.\nHint: out holds the convolution's sum; "
                            "the bias is added to it")
    if np.allclose(out, out0 + bias[idx % C], rtol=1e-12, atol=1e-12):
        raise ExerciseError(f"{what}: the bias of the wrong channel.\nHint: out is [N, C, HW] row-major: the channel "
                            "of element i is the middle axis, (i / HW) % C")
    expect_close(out, want, what=what, rtol=1e-12, atol=1e-12,
                 hint="out[i] += bias[c] with c the channel of element i of [N, C, HW]")


#: q3: ``source`` defines ``my_add_bias(double* out, const double* bias, int C, int HW, int n)``, launched with a
#: fixed grid of 2 blocks of 32 threads: every element i < n of ``out`` ``[N, C, HW]`` gets ``bias[c]`` added, c
#: its channel, through a grid-stride loop.
check_add_bias_kernel = Question(
    _bias_cases, _kernel_verify("my_add_bias_source", _bias_outputs),
    run=_kernel_run("my_add_bias", BIAS_PARAMS, "my_add_bias_source", _bias_launch),
    seed=SEED_BIAS, unavailable=_KERNEL_TEXT)


# ---------------------------------------------------------------------------------------------- q4: bilinear

def _bilinear_launch(launch, args):
    """One launch: one thread per sample, an extra block beyond n. Returns the outputs and whether a thread wrote
    past out[n-1]."""
    im, py, px = args
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
    return {"out": out.copy(), "wrote_past": wrote_past}


SEED_BILINEAR = 6


def _bilinear_kernel_cases(seed):
    """Five launches over one map: integer positions, fractions, the edge band, the rim, far away; every number
    but the rim's from the seed."""
    rng = np.random.default_rng(seed)
    H, W = 5, 7
    im = rng.normal(size=(H, W)) + 2.0  # no zeros, so "read 0" and "read a pixel" differ
    n = 37  # not a multiple of the block size
    iy, ix = rng.integers(0, H, n).astype(float), rng.integers(0, W, n).astype(float)
    band_y = np.concatenate([rng.uniform(-0.95, -0.05, 10), rng.uniform(H - 0.95, H - 0.05, 10), rng.uniform(0, H - 1, 17)])
    band_x = np.concatenate([rng.uniform(0, W - 1, 20), rng.uniform(-0.95, -0.05, 9), rng.uniform(W - 0.95, W - 0.05, 8)])
    rim_y = np.array([-1.0, H, H + 0.5, -1.5, 2.0, 2.0, 2.0, 2.0, -1.0, H])
    rim_x = np.array([3.0, 3.0, 3.0, 3.0, -1.0, W, W + 0.25, -1.25, -1.0, W])
    steps = [
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
    return [{"args": [im, py, px], "call": "my_bilinear_source", "what": what, "hint": hint}
            for what, py, px, hint in steps]


def _bilinear_outputs(case, got):
    from dcn_lessons.reference import bilinear_sample

    im, py, px = case["args"]
    what, hint = case["what"], case["hint"]
    H, W = im.shape
    out, wrote_past = _np(got["out"], what), bool(got.get("wrote_past"))
    if out.shape != py.shape:
        raise ExerciseError(f"{what}: the check found {out.size} outputs, expected {py.size}")
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


BILINEAR_PARAMS = ["const double* im", "int H", "int W", "const double* py", "const double* px", "double* out", "int n"]

#: q4: ``source`` is CUDA C text defining ``extern "C" __global__ void my_bilinear(const double* im, int H, int W,
#: const double* py, const double* px, double* out, int n)``: thread i (< n) writes ``out[i] = x(py[i], px[i])``,
#: the bilinear sample of the row-major map ``im [H, W]`` by DCNv1 Eq. (3) (corners off the map read 0). Compared
#: with :func:`dcn_lessons.reference.bilinear_sample`. The source is compiled and launched where the learner's
#: code runs; the verdict sees only the outputs (and the source).
check_bilinear_kernel = Question(
    _bilinear_kernel_cases, _kernel_verify("my_bilinear_source", _bilinear_outputs),
    run=_kernel_run("my_bilinear", BILINEAR_PARAMS, "my_bilinear_source", _bilinear_launch),
    seed=SEED_BILINEAR, unavailable=_KERNEL_TEXT)


# ---------------------------------------------------------------------------------------------- q5: work items

SEED_INDEX = 0


def _column_index_cases(seed):
    """Every work item of one launch (an array of indices), then one int index. The learner's check uses
    (N, C, K, Ho, Wo) = (2, 3, 4, 5, 6); a grading seed draws other sizes, all different."""
    sizes = (2, 3, 4, 5, 6)
    if seed != SEED_INDEX:
        rng = np.random.default_rng(seed)
        sizes = tuple(int(v) for v in rng.permutation(np.arange(2, 9))[:5])
    N, C, K, Ho, Wo = sizes
    index = np.arange(N * C * K * Ho * Wo)
    one = int(np.random.default_rng(seed).integers(1, index.size)) if seed != SEED_INDEX else 97
    return [{"args": [index, C, K, Ho, Wo], "call": "my_column_index", "sizes": sizes},
            {"args": [one, C, K, Ho, Wo], "call": f"my_column_index({one}, {C}, {K}, {Ho}, {Wo})", "sizes": sizes}]


def _column_index_verify(case, got):
    index, C, K, Ho, Wo = case["args"]
    N = case["sizes"][0]
    want = np.unravel_index(np.arange(N * C * K * Ho * Wo), (N, C, K, Ho, Wo))
    if not isinstance(index, np.ndarray):  # the int index
        try:
            one = tuple(int(v) for v in got)
        except (TypeError, ValueError) as e:
            raise ExerciseError(f"my_column_index({index}, {C}, {K}, {Ho}, {Wo}): expected 5 integers for an int "
                                f"index, got {got!r} ({e})") from None
        if one != tuple(int(v[index]) for v in want):
            raise ExerciseError(f"my_column_index({index}, {C}, {K}, {Ho}, {Wo}) = {one}: expected "
                                f"{tuple(int(v[index]) for v in want)} "
                                "(an int index must give the same as an array)")
        return
    if got is None:
        raise ExerciseError("my_column_index: returned None -- not written yet, or a missing `return`? "
                            "Expected 5 values (b, c, k, y, x)")
    if not isinstance(got, (tuple, list)) or len(got) != 5:
        kind = got.type_name if isinstance(got, Opaque) else type(got).__name__
        raise ExerciseError(
            f"my_column_index: expected 5 values (b, c, k, y, x), got "
            f"{kind}{' of length ' + str(len(got)) if isinstance(got, (tuple, list)) else ''}"
        )
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


#: q5: ``fn(index, C, K, Ho, Wo)`` returns ``(b, c, k, y, x)``, the work item of ``deform_col2im_kernel`` (and the
#: column entry ``columns[b, c*K + k, y*Wo + x]`` it reads) for flat work-item index ``index``; x moves fastest.
#: ``index`` may be an int or an integer array (all five results then have its shape).
#: No package function computes it (the kernels do it inline; ``np.unravel_index`` is NumPy's, and allowed).
check_column_index = Question(_column_index_cases, _column_index_verify, seed=SEED_INDEX)


# ---------------------------------------------------------------------------------------------- q6-q9: the conv kernels

#: The parameters of q6, q8 and q9 after their four arrays: the geometry of the convolution (square stride,
#: padding and dilation) and whether the mask is used.
CONV_INTS = [f"int {v}" for v in ("N", "C", "H", "W", "kh", "kw", "stride", "pad", "dil", "Ho", "Wo", "G", "use_mask")]
IM2COL_PARAMS = ["const double* input", "const double* offset", "const double* mask", "double* columns"] + CONV_INTS
COL2IM_PARAMS = ["const double* grad_columns", "const double* offset", "const double* mask", "double* grad_input"] + CONV_INTS
_CONV_THREADS, _CONV_BLOCKS = 64, 3  # a capped launch: fewer threads than work items, as in the package


def _lesson05():
    """Lesson 05's checks (its model of the typical im2col and RoI mistakes is shared, not rewritten)."""
    from dcn_lessons.exercises import load

    return load("lesson05")


def _conv_case(rng, N, C, H, W, ks, stride, pad, dil, G, with_mask, kind):
    K = ks[0] * ks[1]
    Ho = (H + 2 * pad - (dil * (ks[0] - 1) + 1)) // stride + 1
    Wo = (W + 2 * pad - (dil * (ks[1] - 1) + 1)) // stride + 1
    x = rng.normal(size=(N, C, H, W)) + 2.0
    shape = (N, 2 * G * K, Ho, Wo)
    if kind == "zero":
        off = np.zeros(shape)
    elif kind == "far":
        off = rng.uniform(-3.0, 3.0, size=shape)
    else:
        off = rng.integers(-1, 2, size=shape) + rng.uniform(0.1, 0.9, size=shape)
    mask = rng.uniform(0.1, 0.9, size=(N, G * K, Ho, Wo)) if with_mask else None
    return x, off, mask, (N, C, H, W, ks[0], ks[1], stride, pad, dil, Ho, Wo, G, int(with_mask))


_CONV_STEPS = [
    # N, C, H, W, kernel, stride, pad, dil, G, mask?, offsets, what
    (1, 1, 5, 6, (3, 3), 1, 1, 1, 1, False, "zero", "zero offsets: the plain im2col"),
    (2, 3, 5, 4, (3, 3), 1, 1, 1, 1, False, "fraction", "fractional offsets, a batch of two"),
    (1, 2, 4, 5, (3, 3), 1, 1, 1, 1, False, "far", "samples off the map (Eq. 3 reads 0 there)"),
    (2, 4, 5, 5, (3, 3), 1, 1, 1, 2, True, "fraction", "a mask and two offset groups"),
    (1, 3, 7, 6, (2, 3), 2, 1, 2, 3, True, "fraction", "kernel (2, 3), stride 2, padding 1, dilation 2, three groups"),
]


def _conv_what(name, dims, extra=""):
    N, C, H, W, kh, kw, st, pd, dl, Ho, Wo, G, um = dims
    return (f"{name}(N={N}, C={C}, H={H}, W={W}, kernel ({kh}, {kw}), stride {st}, pad {pd}, dil {dl}, "
            f"Ho={Ho}, Wo={Wo}, G={G}, use_mask={um}){extra}")


def _conv_launch_arrays(first, off, mask, out_init, out_fill, reach):
    """The four arrays of a conv kernel inside their guards (inputs NaN, the output ``out_fill``)."""
    fbuf, fview = _guarded(first, reach, np.nan)
    _, oview = _guarded(off, reach, np.nan)
    _, mview = _guarded(mask if mask is not None else np.array([np.nan]), reach, np.nan)
    obuf, outview = _guarded(out_init, reach, out_fill)
    return fview, oview, mview, obuf, outview


def _conv_reach(dims):
    N, C, H, W, kh, kw, st, pd, dl, Ho, Wo, G, um = dims
    return 8 * (W + 8) * (H + 8)  # farther than any corner a kernel without bounds checks reaches here


def _geo(dims):
    N, C, H, W, kh, kw, st, pd, dl, Ho, Wo, G, um = dims
    return (kh, kw), (st, st), (pd, pd), (dl, dl)


def _grid_for(n):
    return (min(-(-n // _CONV_THREADS), _CONV_BLOCKS),)


# ---------------------------------------------------------------------------------------------- q6: im2col

def _im2col_launch(kernel, args):
    x, off, mask, dims = args
    N, C, H, W, kh, kw, st, pd, dl, Ho, Wo, G, um = dims
    n = N * C * kh * kw * Ho * Wo
    reach = _conv_reach(dims)
    xv, ov, mv, cbuf, cview = _conv_launch_arrays(x, off, mask, np.full(n, _SENTINEL), _SENTINEL, reach)
    kernel(_grid_for(n), (_CONV_THREADS,), (xv, ov, mv, cview, *dims))
    return {"columns": cview.reshape(N, C * kh * kw, Ho * Wo).copy(), "wrote_past": _wrote_outside(cbuf, reach, _SENTINEL)}


SEED_IM2COL = 16


def _im2col_cases(seed):
    rng = np.random.default_rng(seed)
    cases = []
    for N, C, H, W, ks, st, pd, dl, G, with_mask, kind, what in _CONV_STEPS:
        x, off, mask, dims = _conv_case(rng, N, C, H, W, ks, st, pd, dl, G, with_mask, kind)
        cases.append({"args": [x, off, mask, dims], "call": "my_im2col_source",
                      "what": _conv_what("my_im2col", dims, f" ({what})")})
    return cases


def _unwritten(what, out, name, n_threads):
    if (out == _SENTINEL).any():
        flat = np.argwhere(out.ravel() == _SENTINEL).ravel()
        raise ExerciseError(f"{what}: {flat.size} of {out.size} entries of {name} were never written (the first at "
                            f"flat index {int(flat[0])}).\nHint: the launch has {n_threads} threads for {out.size} work "
                            "items: walk them with a grid-stride loop (puzzle 3)")


def _im2col_outputs(case, got):
    x, off, mask, dims = case["args"]
    what = case["what"]
    from dcn_lessons.reference import deform_im2col

    cols = _np(got["columns"], what)
    _outputs_common(what, cols, got.get("wrote_past"), "columns")
    if mask is None and np.isnan(cols).all():
        raise ExerciseError(f"{what}: every value is NaN: your kernel read mask although use_mask is 0 (the check "
                            "passes a placeholder there).\nHint: read the mask only when use_mask != 0")
    _read_nan(what, cols, "columns")
    _unwritten(what, cols, "columns", _CONV_THREADS * _grid_for(cols.size)[0])
    want = deform_im2col(x, off, mask, *_geo(dims))
    if np.allclose(cols, want, rtol=1e-10, atol=1e-12):
        return
    l5 = _lesson05()
    args = [x, off, mask, *_geo(dims)]
    for name, kw in l5["_im2col_variants"](args):
        variant = l5["_im2col_variant"](args, **kw)
        if not np.allclose(variant, want, rtol=1e-10, atol=1e-12) and np.allclose(cols, variant, rtol=1e-10, atol=1e-12):
            raise ExerciseError(f"{what}: your columns match the answer with {name}.\nHint: {l5['_IM2COL_HINTS'][name]}")
    N, CK, L = want.shape
    expect_close(cols, want, what=f"{what}, columns [N, C*K, Ho*Wo]", rtol=1e-10, atol=1e-12,
                 hint="work item index -> (b, c, k, y, x) as in puzzle 5; sample channel c at p0 + p_k + Δp_k by "
                      "Eq. (3) (your bilinear kernel of puzzle 4), times the mask when use_mask")



#: q6: ``source`` defines ``my_im2col(`` :data:`IM2COL_PARAMS` ``)``: every entry ``columns[b, c*K + k, y*Wo + x]``
#: = mask * x_c(p0 + p_k + Δp_k) (DCNv1 Eq. 2-3, DCNv2 Eq. 1; no mask factor when use_mask is 0), with a capped
#: launch of 3 blocks of 64 threads. Compared with :func:`dcn_lessons.reference.deform_im2col`.
check_im2col_kernel = Question(
    _im2col_cases, _kernel_verify("my_im2col_source", _im2col_outputs),
    run=_kernel_run("my_im2col", IM2COL_PARAMS, "my_im2col_source", _im2col_launch),
    seed=SEED_IM2COL, unavailable=_KERNEL_TEXT)


# ---------------------------------------------------------------------------------------------- q7: atomic counts

COUNT_PARAMS = ["const double* py", "const double* px", "int* counts", "int H", "int W", "int n"]


def _count_ref(py, px, H, W, zero_weights=False):
    """Adds per pixel: every corner inside the map whose bilinear weight is not 0 (or every in-map corner)."""
    counts = np.zeros(H * W, dtype=np.int64)
    y0, x0 = np.floor(py), np.floor(px)
    ly, lx = py - y0, px - x0
    for dy, wy in ((0, 1 - ly), (1, ly)):
        for dx, wx in ((0, 1 - lx), (1, lx)):
            r, c = (y0 + dy).astype(np.int64), (x0 + dx).astype(np.int64)
            ok = (r >= 0) & (r < H) & (c >= 0) & (c < W)
            if not zero_weights:
                ok &= (wy * wx) != 0
            np.add.at(counts, (r * W + c)[ok], 1)
    return counts.reshape(H, W)


def _count_launch(kernel, args):
    py, px, H, W = args
    n = py.size
    guard = 4 * (W + 4)
    _, yv = _guarded(py, 64, np.nan)
    _, xv = _guarded(px, 64, np.nan)
    cbuf, cview = _guarded(np.zeros(H * W), guard, _ISENTINEL, dtype=np.int32)
    cview[:] = 0
    kernel(_blocks(n), (_THREADS,), (yv, xv, cview, int(H), int(W), n))
    return {"counts": cview.reshape(H, W).copy(), "wrote_past": _wrote_outside(cbuf, guard, _ISENTINEL)}


SEED_COUNT = 17


def _count_cases(seed):
    rng = np.random.default_rng(seed)
    H, W = 6, 7
    steps = [
        ("integer positions (one corner each: the other three weigh 0)",
         rng.integers(0, H, 40).astype(float), rng.integers(0, W, 40).astype(float)),
        ("fractional positions, many on the same pixels", rng.uniform(0, H - 1, 90), rng.uniform(0, W - 1, 90)),
        ("positions across the border (-1.5 .. H + 0.5)", rng.uniform(-1.5, H + 0.5, 70), rng.uniform(-1.5, W + 0.5, 70)),
    ]
    return [{"args": [py, px, H, W], "call": "my_count_adds_source", "what": f"my_count_adds on {py.size} {what}"}
            for what, py, px in steps]


def _count_outputs(case, got):
    py, px, H, W = case["args"]
    what = case["what"]
    counts = _np(got["counts"], what)
    _outputs_common(what, counts, got.get("wrote_past"), "counts[0:H*W]")
    want = _count_ref(py, px, H, W)
    if np.array_equal(counts, want):
        return
    if np.array_equal(counts, _count_ref(py, px, H, W, zero_weights=True)):
        raise ExerciseError(f"{what}: you counted corners whose bilinear weight is 0 (at an integer position three "
                            "of the four).\nHint: col2im adds only where the weight is not 0: an add of 0 would cost "
                            "an atomic for nothing")
    expect_close(counts, want, what=f"{what}: adds per pixel [H, W]", atol=0, rtol=0,
                 hint="one atomic add of 1 per corner (r, c) that lies in the map and has a bilinear weight other "
                      "than 0")


#: q7: ``source`` defines ``my_count_adds(const double* py, const double* px, int* counts, int H, int W, int n)``:
#: sample i < n adds 1 (atomically) to ``counts[r*W + c]`` for each of its four corners that lies in the map and
#: has a non-zero bilinear weight -- the atomic adds col2im makes.
check_count_adds_kernel = Question(
    _count_cases, _kernel_verify("my_count_adds_source", _count_outputs, atomics="required"),
    run=_kernel_run("my_count_adds", COUNT_PARAMS, "my_count_adds_source", _count_launch),
    seed=SEED_COUNT, unavailable=_KERNEL_TEXT)


# ---------------------------------------------------------------------------------------------- q8, q9: col2im

def _col2im_launch_with(init, fill):
    def launch(kernel, args):
        g, off, mask, dims = args
        N, C, H, W = dims[:4]
        reach = _conv_reach(dims)
        n = N * C * H * W
        gv, ov, mv, ibuf, iview = _conv_launch_arrays(g, off, mask, np.full(n, init), fill, reach)
        items = g.size if init == 0.0 else n
        kernel(_grid_for(items), (_CONV_THREADS,), (gv, ov, mv, iview, *dims))
        return {"grad_input": iview.reshape(N, C, H, W).copy(), "wrote_past": _wrote_outside(ibuf, reach, fill)}
    return launch


def _col2im_cases(seed, name):
    rng = np.random.default_rng(seed)
    cases = []
    for N, C, H, W, ks, st, pd, dl, G, with_mask, kind, what in _CONV_STEPS:
        x, off, mask, dims = _conv_case(rng, N, C, H, W, ks, st, pd, dl, G, with_mask, kind)
        g = rng.normal(size=(N, C * ks[0] * ks[1], dims[9] * dims[10]))
        cases.append({"args": [g, off, mask, dims], "call": f"{name}_source", "what": _conv_what(name, dims, f" ({what})")})
    return cases


def _col2im_check(case, got, gather):
    g, off, mask, dims = case["args"]
    what = case["what"]
    from dcn_lessons.reference import deform_col2im

    gi = _np(got["grad_input"], what)
    _outputs_common(what, gi, got.get("wrote_past"), "grad_input")
    N, C, H, W = dims[:4]
    if gather and np.isnan(gi).any():
        i = tuple(int(v) for v in np.argwhere(np.isnan(gi))[0])
        raise ExerciseError(f"{what}: grad_input{list(i)} is NaN: either that pixel kept the garbage it held before "
                            "(the check fills grad_input with NaN: a gather writes every pixel it owns once, with =, "
                            "0 where no sample lands), or your kernel read outside an input array"
                            + (" (the mask, although use_mask is 0?)" if mask is None else ""))
    if mask is None and np.isnan(gi).all():
        raise ExerciseError(f"{what}: every value is NaN: your kernel read mask although use_mask is 0.\nHint: read "
                            "the mask only when use_mask != 0")
    _read_nan(what, gi, "grad_input")
    geo = _geo(dims)
    want = deform_col2im(g, off, mask, (N, C, H, W), *geo)
    if np.allclose(gi, want, rtol=1e-10, atol=1e-12):
        return
    items = g.size if not gather else gi.size
    threads = _CONV_THREADS * _grid_for(items)[0]
    if not gather and threads < g.size:
        first = g.copy().ravel()
        first[threads:] = 0
        if np.allclose(gi, deform_col2im(first.reshape(g.shape), off, mask, (N, C, H, W), *geo), rtol=1e-10, atol=1e-12):
            raise ExerciseError(f"{what}: only the first {threads} column entries were scattered.\nHint: the launch "
                                f"has {threads} threads for {g.size} entries: a grid-stride loop (puzzle 3)")
    K = dims[4] * dims[5]
    G = dims[11]
    swapped = off.reshape(N, G, K, 2, *off.shape[2:])[:, :, :, ::-1].reshape(off.shape)
    for name, variant, hint in (
            ("the mask left out", None if mask is None else deform_col2im(g, off, None, (N, C, H, W), *geo),
             "each entry hands back grad_columns times its mask (use_mask), times the corner's weight"),
            ("Δy and Δx swapped", deform_col2im(g, swapped, mask, (N, C, H, W), *geo),
             "offset channel 2k is Δy (the row), 2k+1 is Δx (the column)")):
        if variant is not None and not np.allclose(variant, want) and np.allclose(gi, variant, rtol=1e-10, atol=1e-12):
            raise ExerciseError(f"{what}: your gradient matches the answer with {name}.\nHint: {hint}")
    expect_close(gi, want, what=f"{what}, grad_input [N, C, H, W]", rtol=1e-10, atol=1e-12,
                 hint=("pixel q of channel c receives, from every column entry of channel c whose sample has q as a "
                       "corner, grad_columns * mask * that corner's weight" if gather else
                       "each column entry (b, c, k, y, x) computes its sample's corners as in puzzle 4 and adds "
                       "grad_columns * mask * weight into each corner of grad_input's channel c"))


def _col2im_outputs(case, got):
    _col2im_check(case, got, gather=False)


def _gather_outputs(case, got):
    _col2im_check(case, got, gather=True)


SEED_COL2IM, SEED_GATHER = 18, 19


#: q8: ``source`` defines ``my_col2im(`` :data:`COL2IM_PARAMS` ``)``: grad_input (zeroed by the caller) receives,
#: through ``atomicAdd``, grad_columns * mask * bilinear weight from every column entry at each in-map corner of its
#: sample (the transpose of q6). Compared with :func:`dcn_lessons.reference.deform_col2im`.
check_col2im_kernel = Question(
    lambda seed: _col2im_cases(seed, "my_col2im"), _kernel_verify("my_col2im_source", _col2im_outputs, "required"),
    run=_kernel_run("my_col2im", COL2IM_PARAMS, "my_col2im_source", _col2im_launch_with(0.0, _SENTINEL)),
    seed=SEED_COL2IM, unavailable=_KERNEL_TEXT)

#: q9: ``source`` defines ``my_col2im_gather`` (the signature of q8): the same gradient, one work item per input
#: element (b, c, qy, qx) summing, in a fixed order, what every column entry of channel c hands to (qy, qx), and
#: writing it once; no atomics. grad_input arrives filled with garbage (NaN).
check_col2im_gather_kernel = Question(
    lambda seed: _col2im_cases(seed, "my_col2im_gather"),
    _kernel_verify("my_col2im_gather_source", _gather_outputs, "forbidden"),
    run=_kernel_run("my_col2im_gather", COL2IM_PARAMS, "my_col2im_gather_source", _col2im_launch_with(np.nan, _SENTINEL)),
    seed=SEED_GATHER, unavailable=_KERNEL_TEXT)


# ---------------------------------------------------------------------------------------------- q10: RoI Align

ROI_GRID, ROI_BLOCK = (2,), (8,)  # 16 threads: fewer than the bins of most cases
ROI_PARAMS = ["const double* input", "const double* rois", "double* out", "int K", "int C", "int H", "int W", "int ph",
              "int pw", "double spatial_scale", "int sampling_ratio"]


def _roi_launch(kernel, args):
    x, rois, out_hw, scale, ratio = args
    N, C, H, W = x.shape
    K = rois.shape[0]
    ph, pw = out_hw
    n = K * C * ph * pw
    reach = 8 * (W + 8) * (H + 8)
    _, xv = _guarded(x, reach, np.nan)
    _, rv = _guarded(rois, 16, np.nan)
    obuf, oview = _guarded(np.full(n, _SENTINEL), reach, _SENTINEL)
    kernel(ROI_GRID, ROI_BLOCK, (xv, rv, oview, K, C, H, W, int(ph), int(pw), float(scale), int(ratio)))
    return {"out": oview.reshape(K, C, ph, pw).copy(), "wrote_past": _wrote_outside(obuf, reach, _SENTINEL)}


def _roi_forward_variant(x, rois, out_hw, spatial_scale, ratio, **mistake):
    """RoI Align's output with one typical mistake, as the transpose of lesson 05's scatter with that mistake:
    bin (k, i, j) is <x, scatter of a one-hot gradient at (k, i, j)>."""
    l5 = _lesson05()
    N, C, H, W = x.shape
    K = rois.shape[0]
    ph, pw = out_hw
    out = np.zeros((K, C, ph, pw))
    for k in range(K):
        for i in range(ph):
            for j in range(pw):
                go = np.zeros((K, C, ph, pw))
                go[k, :, i, j] = 1.0
                weights = l5["_roi_scatter"]([go, rois, (N, C, H, W), (ph, pw), spatial_scale, ratio], **mistake)
                out[k, :, i, j] = (weights * x).sum(axis=(0, 2, 3))
    return out


SEED_ROI = 20


def _roi_cases(seed):
    rng = np.random.default_rng(seed)
    steps = [(1, 1, 6, 7, 1, (2, 2), 1.0, 1, (0.5, 0.5), (5.0, 6.0), "one RoI, one sample per bin"),
             (2, 2, 7, 6, 3, (3, 3), 0.5, 2, (0.0, 0.0), (6.0, 5.0), "three RoIs on two images, spatial_scale 0.5"),
             (1, 2, 5, 5, 3, (2, 2), 1.0, 2, (-2.5, -2.5), (6.5, 6.5), "RoIs across the border"),
             (2, 1, 8, 9, 4, (2, 3), 0.25, 3, (0.5, 0.5), (7.5, 8.5), "a (2, 3) output, 3 x 3 samples per bin")]
    cases = []
    for N, C, H, W, K, out_hw, scale, ratio, lo, hi, what in steps:
        rois = []
        for _ in range(K):
            x1, y1 = rng.uniform(lo[1], hi[1] - 1.2), rng.uniform(lo[0], hi[0] - 1.2)
            x2, y2 = rng.uniform(x1 + 1.2, hi[1]), rng.uniform(y1 + 1.2, hi[0])
            rois.append([int(rng.integers(0, N)), x1 / scale, y1 / scale, x2 / scale, y2 / scale])
        x = rng.normal(size=(N, C, H, W)) + 2.0
        call = (f"my_roi_align(input [{N}, {C}, {H}, {W}], rois [{K}, 5], out {list(out_hw)}, spatial_scale={scale}, "
                f"sampling_ratio={ratio})")
        cases.append({"args": [x, np.array(rois), out_hw, scale, ratio], "call": "my_roi_align_source",
                      "what": f"{call} ({what})"})
    return cases


def _roi_outputs(case, got):
    x, rois, out_hw, scale, ratio = case["args"]
    what = case["what"]
    from dcn_lessons.reference import roi_align

    out = _np(got["out"], what)
    _outputs_common(what, out, got.get("wrote_past"), "out")
    _read_nan(what, out, "out")
    _unwritten(what, out, "out", ROI_GRID[0] * ROI_BLOCK[0])
    want = roi_align(x, rois, tuple(out_hw), scale, ratio, aligned=True)
    if np.allclose(out, want, rtol=1e-10, atol=1e-12):
        return
    for name, kw, hint in _lesson05()["_ROI_VARIANTS"]:
        variant = _roi_forward_variant(x, rois, out_hw, scale, ratio, **kw)
        if not np.allclose(variant, want, rtol=1e-10, atol=1e-12) and np.allclose(out, variant, rtol=1e-10, atol=1e-12):
            raise ExerciseError(f"{what}: your bins match the answer with {name}.\nHint: {hint}")
    expect_close(out, want, what=f"{what}, out [K, C, ph, pw]", rtol=1e-10, atol=1e-12,
                 hint="bin (i, j) of RoI k, channel c: the mean of its sampling_ratio² bilinear samples of image "
                      "rois[k][0], each read by the course's RoI rule (lesson 04)")



#: q10: ``source`` defines ``my_roi_align(`` :data:`ROI_PARAMS` ``)``: one work item per output (k, c, i, j):
#: ``out[k, c, i, j]`` = the mean of the sampling_ratio² samples of bin (i, j) of RoI k by the
#: course's RoI rule (torchvision ``roi_align(aligned=True)``), launched with 2 blocks of 8 threads. Compared with
#: :func:`dcn_lessons.reference.roi_align`.
check_roi_align_kernel = Question(
    _roi_cases, _kernel_verify("my_roi_align_source", _roi_outputs),
    run=_kernel_run("my_roi_align", ROI_PARAMS, "my_roi_align_source", _roi_launch),
    seed=SEED_ROI, unavailable=_KERNEL_TEXT)
