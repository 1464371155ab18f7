"""Lesson 06's checks: silent on correct answers, a failure that names the mistake on typical wrong ones, no
solution line in any message, and a source that includes or copies the package's kernels refused.

The kernel puzzles compile CUDA C through the g++ emulator: each distinct source below is one compile (cached on
disk, about 0.3 s the first time).
"""
from __future__ import annotations

import shutil

import numpy as np
import pytest

from dcn_lessons.exercises import load

CHECKS = load("lesson06")

pytestmark_gxx = pytest.mark.skipif(shutil.which("g++") is None, reason="the CUDA emulator needs g++")

HEAD = """extern "C" __global__ void my_bilinear(const double* im, int H, int W, const double* py, const double* px,
                                       double* out, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const double y = py[i], x = px[i];
"""
GOOD_BODY = """
  const double fy = floor(y), fx = floor(x), ly = y - fy, lx = x - fx;
  const int y0 = (int)fy, x0 = (int)fx;
  double v = 0.0;
  for (int a = 0; a < 2; ++a)
    for (int b = 0; b < 2; ++b) {
      const int r = y0 + a, c = x0 + b;
      if (r < 0 || r >= H || c < 0 || c >= W) continue;
      v += (a ? ly : 1 - ly) * (b ? lx : 1 - lx) * im[r * W + c];
    }
  out[i] = v;
}
"""


def _src(body: str, head: str = HEAD) -> str:
    return head + body


def _corners(read: str, floor: str = "floor", yname: str = "y", xname: str = "x") -> str:
    return f"""
  const int y0 = (int){floor}({yname}), x0 = (int){floor}({xname});
  const double ly = {yname} - y0, lx = {xname} - x0;
  double v = 0.0;
  for (int a = 0; a < 2; ++a)
    for (int b = 0; b < 2; ++b) {{
      int r = y0 + a, c = x0 + b;
      {read}
      v += (a ? ly : 1 - ly) * (b ? lx : 1 - lx) * im[r * W + c];
    }}
  out[i] = v;
}}
"""


CHECK_BOUNDS = "if (r < 0 || r >= H || c < 0 || c >= W) continue;"


@pytestmark_gxx
def test_q1_passes_silently_on_correct_kernels(capsys):
    assert CHECKS["check_bilinear_kernel"](_src(GOOD_BODY)) is None
    # another correct style: an early exit outside -1 < y < H, -1 < x < W, and the four corners written out
    early = """
  if (!(y > -1 && y < H && x > -1 && x < W)) { out[i] = 0; return; }
""" + _corners(CHECK_BOUNDS)
    assert CHECKS["check_bilinear_kernel"](_src(early)) is None
    assert capsys.readouterr().out == ""


@pytestmark_gxx
@pytest.mark.parametrize(
    "source, words",
    [
        (..., ["not written yet"]),
        (None, ["not written yet"]),
        (42, ["expected a str"]),
        (_src(GOOD_BODY).replace("my_bilinear", "bilinear"), ["no kernel", "my_bilinear"]),
        (_src(GOOD_BODY).replace("floor(x)", "flor(x)"), ["does not compile", "kernel_source.cu:", "flor"]),
        (_src(GOOD_BODY).replace("const double* im", "const float* im"),
         ["does not compile", "keep its first lines exactly", "const double* im"]),
        (_src(GOOD_BODY).rstrip().rstrip("}"), ["does not compile", "past the end of your source", "brace"]),
        (_src("  double v = 0.0;\n  out[i] = v;\n}\n"), ["integer positions", "got 0, expected"]),
        (_src(_corners("")), ["NaN", "outside the image", "0 <= row < H"]),
        (_src(_corners(CHECK_BOUNDS, floor="")), ["band", "(int)y truncates"]),
        (_src(_corners(CHECK_BOUNDS, yname="x", xname="y")), ["integer positions", "py is the row"]),
        (_src(_corners("r = r < 0 ? 0 : (r >= H ? H - 1 : r); c = c < 0 ? 0 : (c >= W ? W - 1 : c);")),
         ["band", "clamped into the map"]),
        (_src(GOOD_BODY, head=HEAD.replace("  if (i >= n) return;\n", "")), ["outside out[0:n]", "if (i >= n)"]),
    ],
    ids=["ellipsis", "none", "not-str", "renamed", "compile-error", "float-signature", "missing-brace", "zeros",
         "no-bounds", "int-truncation", "swapped", "clamped", "no-thread-bound"],
)
def test_q1_fails_with_a_message_that_teaches(source, words):
    with pytest.raises(AssertionError) as info:
        CHECKS["check_bilinear_kernel"](source)
    msg = str(info.value)
    for w in words:
        assert w in msg, f"{w!r} not in message:\n{msg}"
    assert "\n" not in msg.split("\nHint:")[0], f"the message should be one line (then a hint):\n{msg}"


def test_compile_errors_are_one_line():
    err = CHECKS["_one_line_error"]("g++ could not compile:\nmodule.cpp: In function 'void k()':\n"
                                    "kernel_source.cu:7:9: error: 'flor' was not declared in this scope\n  7 | ...")
    assert err == "kernel_source.cu:7:9: error: 'flor' was not declared in this scope"


# ------------------------------------------------------------------------------------------------- q5: work items
def good_index(index, C, K, Ho, Wo):
    x = index % Wo
    y = (index // Wo) % Ho
    k = (index // (Ho * Wo)) % K
    c = (index // (K * Ho * Wo)) % C
    b = index // (C * K * Ho * Wo)
    return b, c, k, y, x


def test_q2_passes_silently_on_correct_answers(capsys):
    assert CHECKS["check_column_index"](good_index) is None
    assert CHECKS["check_column_index"](
        lambda i, C, K, Ho, Wo: np.unravel_index(i, (np.max(i) // (C * K * Ho * Wo) + 1, C, K, Ho, Wo))) is None
    assert capsys.readouterr().out == ""


def _swap_yx(index, C, K, Ho, Wo):
    b, c, k, y, x = good_index(index, C, K, Wo, Ho)  # the sizes Ho and Wo swapped
    return b, c, k, y, x


def _no_mod_k(index, C, K, Ho, Wo):
    b, c, _, y, x = good_index(index, C, K, Ho, Wo)
    return b, c, index // (Ho * Wo), y, x


@pytest.mark.parametrize(
    "fn, words",
    [
        (lambda i, C, K, Ho, Wo: ..., ["not written yet"]),
        (lambda i, C, K, Ho, Wo: None, ["my_column_index: returned None", "not written yet", "(b, c, k, y, x)"]),
        (lambda i, C, K, Ho, Wo: good_index(i, C, K, Ho, Wo)[:4], ["my_column_index: expected 5 values", "length 4"]),
        (_swap_yx, ["y: wrong", "Hint"]),
        (_no_mod_k, ["k: wrong", "must lie in [0, 4)", "% 4"]),
        (lambda i, C, K, Ho, Wo: good_index(i, K, C, Ho, Wo), ["c: wrong"]),
        (lambda i, C, K, Ho, Wo: (good_index(i, C, K, Ho, Wo)[0] % 2 * 0,) + good_index(i, C, K, Ho, Wo)[1:],
         ["b: wrong"]),
        (lambda i, C, K, Ho, Wo: tuple(np.atleast_1d(v)[:1] for v in good_index(np.asarray(i), C, K, Ho, Wo)),
         ["expected shape"]),
    ],
    ids=["ellipsis", "none", "four", "swap-yx", "no-mod-k", "swap-ck", "b-zero", "wrong-shape"],
)
def test_q2_fails_with_a_message_that_teaches(fn, words):
    with pytest.raises(AssertionError) as info:
        CHECKS["check_column_index"](fn)
    msg = str(info.value)
    for w in words:
        assert w in msg, f"{w!r} not in message:\n{msg}"


# ------------------------------------------------------------------------------------------ the ladder of puzzles
# One correct source per puzzle (the notebook's solutions are checked the same way by test_notebooks/test_grading).
SIGMOID = r"""
extern "C" __global__ void my_sigmoid(const double* logits, double* mask, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  mask[i] = 1.0 / (1.0 + exp(-logits[i]));
}
"""

SHIFT = r"""
extern "C" __global__ void my_shift(const double* im, double* out, int H, int W, int dy, int dx) {
  const int x = blockIdx.x * blockDim.x + threadIdx.x;
  const int y = blockIdx.y * blockDim.y + threadIdx.y;
  if (y >= H || x >= W) return;
  const int r = y + dy, c = x + dx;
  out[y * W + x] = (r >= 0 && r < H && c >= 0 && c < W) ? im[r * W + c] : 0.0;
}
"""

ADD_BIAS = r"""
extern "C" __global__ void my_add_bias(double* out, const double* bias, int C, int HW, int n) {
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x)
    out[i] += bias[(i / HW) % C];
}
"""

BILINEAR = r"""
extern "C" __global__ void my_bilinear(const double* im, int H, int W, const double* py, const double* px,
                                       double* out, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const double y = py[i], x = px[i];
  double v = 0.0;
  if (y > -1 && y < H && x > -1 && x < W) {
    const double fy = floor(y), fx = floor(x), ly = y - fy, lx = x - fx;
    const int y0 = (int)fy, x0 = (int)fx;
    for (int a = 0; a < 2; ++a)
      for (int b = 0; b < 2; ++b) {
        const int r = y0 + a, c = x0 + b;
        if (r < 0 || r >= H || c < 0 || c >= W) continue;
        v += (a ? ly : 1 - ly) * (b ? lx : 1 - lx) * im[r * W + c];
      }
  }
  out[i] = v;
}
"""

IM2COL = r"""
__device__ double my_sample(const double* im, int H, int W, double y, double x) {
  // DCNv1 Eq. (3): the four integral neighbours inside the map, weighted; 0 off the map
  if (!(y > -1 && y < H && x > -1 && x < W)) return 0.0;
  const int y0 = (int)floor(y), x0 = (int)floor(x);
  const double ly = y - y0, lx = x - x0;
  double v = 0.0;
  for (int a = 0; a < 2; ++a)
    for (int b = 0; b < 2; ++b) {
      const int r = y0 + a, c = x0 + b;
      if (r >= 0 && r < H && c >= 0 && c < W) v += (a ? ly : 1 - ly) * (b ? lx : 1 - lx) * im[r * W + c];
    }
  return v;
}

extern "C" __global__ void my_im2col(const double* input, const double* offset, const double* mask, double* columns,
                                     int N, int C, int H, int W, int kh, int kw, int stride, int pad, int dil,
                                     int Ho, int Wo, int G, int use_mask) {
  const int K = kh * kw, L = Ho * Wo, n = N * C * K * L;
  for (int index = blockIdx.x * blockDim.x + threadIdx.x; index < n; index += blockDim.x * gridDim.x) {
    const int x = index % Wo, y = (index / Wo) % Ho, k = (index / L) % K, c = (index / (L * K)) % C;
    const int b = index / (L * K * C), g = c / (C / G), i = k / kw, j = k % kw;
    const double* off = offset + ((b * G + g) * 2 * K + 2 * k) * L + y * Wo + x;
    const double py = y * stride - pad + i * dil + off[0], px = x * stride - pad + j * dil + off[L];
    double v = my_sample(input + (b * C + c) * H * W, H, W, py, px);
    if (use_mask) v *= mask[((b * G + g) * K + k) * L + y * Wo + x];
    columns[index] = v;
  }
}
"""

COUNT = r"""
extern "C" __global__ void my_count_adds(const double* py, const double* px, int* counts, int H, int W, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const double fy = floor(py[i]), fx = floor(px[i]), ly = py[i] - fy, lx = px[i] - fx;
  for (int a = 0; a < 2; ++a)
    for (int b = 0; b < 2; ++b) {
      const int r = (int)fy + a, c = (int)fx + b;
      const double w = (a ? ly : 1 - ly) * (b ? lx : 1 - lx);
      if (r >= 0 && r < H && c >= 0 && c < W && w != 0.0) atomicAdd(&counts[r * W + c], 1);
    }
}
"""

COL2IM = r"""
extern "C" __global__ void my_col2im(const double* grad_columns, const double* offset, const double* mask,
                                     double* grad_input, int N, int C, int H, int W, int kh, int kw, int stride,
                                     int pad, int dil, int Ho, int Wo, int G, int use_mask) {
  const int K = kh * kw, L = Ho * Wo, n = N * C * K * L;
  for (int index = blockIdx.x * blockDim.x + threadIdx.x; index < n; index += blockDim.x * gridDim.x) {
    const int x = index % Wo, y = (index / Wo) % Ho, k = (index / L) % K, c = (index / (L * K)) % C;
    const int b = index / (L * K * C), g = c / (C / G), i = k / kw, j = k % kw;
    const double* off = offset + ((b * G + g) * 2 * K + 2 * k) * L + y * Wo + x;
    const double py = y * stride - pad + i * dil + off[0], px = x * stride - pad + j * dil + off[L];
    if (!(py > -1 && py < H && px > -1 && px < W)) continue;
    double g_ = grad_columns[index];
    if (use_mask) g_ *= mask[((b * G + g) * K + k) * L + y * Wo + x];
    const int y0 = (int)floor(py), x0 = (int)floor(px);
    const double ly = py - y0, lx = px - x0;
    double* im = grad_input + (b * C + c) * H * W;
    for (int a = 0; a < 2; ++a)
      for (int e = 0; e < 2; ++e) {
        const int r = y0 + a, q = x0 + e;
        const double w = (a ? ly : 1 - ly) * (e ? lx : 1 - lx);
        if (r >= 0 && r < H && q >= 0 && q < W && w != 0.0) atomicAdd(&im[r * W + q], g_ * w);
      }
  }
}
"""

GATHER = r"""
extern "C" __global__ void my_col2im_gather(const double* grad_columns, const double* offset, const double* mask,
                                            double* grad_input, int N, int C, int H, int W, int kh, int kw,
                                            int stride, int pad, int dil, int Ho, int Wo, int G, int use_mask) {
  const int K = kh * kw, L = Ho * Wo, n = N * C * H * W;
  for (int index = blockIdx.x * blockDim.x + threadIdx.x; index < n; index += blockDim.x * gridDim.x) {
    const int qx = index % W, qy = (index / W) % H, c = (index / (H * W)) % C, b = index / (H * W * C);
    const int g = c / (C / G);
    double sum = 0.0;
    for (int k = 0; k < K; ++k)
      for (int y = 0; y < Ho; ++y)
        for (int x = 0; x < Wo; ++x) {
          const double* off = offset + ((b * G + g) * 2 * K + 2 * k) * L + y * Wo + x;
          const double py = y * stride - pad + (k / kw) * dil + off[0];
          const double px = x * stride - pad + (k % kw) * dil + off[L];
          if (!(py > -1 && py < H && px > -1 && px < W)) continue;
          const double wy = 1.0 - fabs(py - qy), wx = 1.0 - fabs(px - qx);
          if (wy <= 0.0 || wx <= 0.0) continue;  // (qy, qx) is not a corner of this sample
          double g_ = grad_columns[((b * C + c) * K + k) * L + y * Wo + x];
          if (use_mask) g_ *= mask[((b * G + g) * K + k) * L + y * Wo + x];
          sum += g_ * wy * wx;
        }
    grad_input[index] = sum;
  }
}
"""

ROI = r"""
__device__ double my_roi_sample(const double* im, int H, int W, double y, double x) {
  // the RoI rule: 0 beyond one pixel outside the map, clamped within it
  if (y < -1.0 || y > H || x < -1.0 || x > W) return 0.0;
  if (y < 0) y = 0;
  if (x < 0) x = 0;
  int y0 = (int)floor(y), x0 = (int)floor(x), y1, x1;
  if (y0 >= H - 1) { y0 = y1 = H - 1; y = y0; } else { y1 = y0 + 1; }
  if (x0 >= W - 1) { x0 = x1 = W - 1; x = x0; } else { x1 = x0 + 1; }
  const double ly = y - y0, lx = x - x0;
  return (1 - ly) * (1 - lx) * im[y0 * W + x0] + (1 - ly) * lx * im[y0 * W + x1] +
         ly * (1 - lx) * im[y1 * W + x0] + ly * lx * im[y1 * W + x1];
}

extern "C" __global__ void my_roi_align(const double* input, const double* rois, double* out, int K, int C, int H,
                                        int W, int ph, int pw, double spatial_scale, int sampling_ratio) {
  const int n = K * C * ph * pw;
  for (int index = blockIdx.x * blockDim.x + threadIdx.x; index < n; index += blockDim.x * gridDim.x) {
    const int j = index % pw, i = (index / pw) % ph, c = (index / (pw * ph)) % C, k = index / (pw * ph * C);
    const double* roi = rois + k * 5;
    const int b = (int)roi[0];
    const double x1 = roi[1] * spatial_scale - 0.5, y1 = roi[2] * spatial_scale - 0.5;
    const double bin_w = (roi[3] - roi[1]) * spatial_scale / pw, bin_h = (roi[4] - roi[2]) * spatial_scale / ph;
    const double* im = input + (b * C + c) * H * W;
    double sum = 0.0;
    for (int u = 0; u < sampling_ratio; ++u)
      for (int v = 0; v < sampling_ratio; ++v)
        sum += my_roi_sample(im, H, W, y1 + i * bin_h + (u + 0.5) * bin_h / sampling_ratio,
                             x1 + j * bin_w + (v + 0.5) * bin_w / sampling_ratio);
    out[index] = sum / (sampling_ratio * sampling_ratio);
  }
}
"""

PUZZLES = {
    "check_sigmoid_kernel": SIGMOID, "check_shift_kernel": SHIFT, "check_add_bias_kernel": ADD_BIAS,
    "check_bilinear_kernel": BILINEAR, "check_im2col_kernel": IM2COL, "check_count_adds_kernel": COUNT,
    "check_col2im_kernel": COL2IM, "check_col2im_gather_kernel": GATHER, "check_roi_align_kernel": ROI,
}


def _fails(check, source, *words, seed=None):
    with pytest.raises(AssertionError) as info:
        CHECKS[check](source, seed=seed)
    msg = str(info.value)
    for w in words:
        assert w in msg, f"{w!r} not in message:\n{msg}"
    return msg


@pytestmark_gxx
@pytest.mark.parametrize("check", sorted(PUZZLES))
def test_every_puzzle_accepts_its_solution(check, capsys):
    assert CHECKS[check](PUZZLES[check]) is None
    CHECKS[check](PUZZLES[check], seed=123)  # and on a grading seed's inputs
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("check", sorted(PUZZLES))
def test_every_kernel_check_names_the_package_kernel_text_unavailable(check):
    import importlib

    names = CHECKS[check].unavailable
    assert "dcn_lessons.cuda._source:definition" in names and "dcn_lessons.cuda._source:kernel_source" in names
    for name in names:
        module, _, attr = name.partition(":")
        assert hasattr(importlib.import_module(module), attr), name


def test_a_source_built_from_the_package_kernels_is_missing_in_the_second_run():
    # what the grader's masked run does to a notebook cell that assembles a source from kernels/
    from test_exercises_lesson07 import masked

    import dcn_lessons.cuda as dcuda

    with masked(CHECKS["check_im2col_kernel"].unavailable):
        with pytest.raises(RuntimeError, match="unavailable while this answer is graded"):
            dcuda.definition("deform_conv.cu", "deform_im2col_kernel")
        with pytest.raises(RuntimeError, match="unavailable while this answer is graded"):
            dcuda.kernels_dir()


# ------------------------------------------------------------------------------------------ reading the source

@pytestmark_gxx
@pytest.mark.parametrize("prefix", ['#include "../kernels/dcn_bilinear.cuh"\n', '  #  include <cmath>\n',
                                    '%:include "x.cuh"\n', '#\\\ninclude "dcn_common.cuh"\n',
                                    '#import "deform_conv.cu"\n'],
                         ids=["include", "spaced", "digraph", "spliced", "import"])
def test_an_include_directive_fails_every_puzzle(prefix):
    for check, source in PUZZLES.items():
        if check == "check_sigmoid_kernel" and "kernels" not in prefix and "x.cuh" in prefix:
            continue  # (compiles or not, the directive is refused before the outputs are read)
        msg = _fails(check, prefix + source) if "cmath" in prefix else None
        if msg is not None:
            assert "directive" in msg
    # an include that does not compile is reported as a compile error; one that does is refused by the verdict
    msg = _fails("check_sigmoid_kernel", '#include "../kernels/dcn_common.cuh"\n' + SIGMOID)
    assert "#include directive" in msg


def test_comments_and_strings_do_not_count():
    problem = CHECKS["_source_problem"]
    assert problem('// #include "deform_conv.cu" and dcn_sample\n/* atomicAdd( */ int x;', "s", "forbidden") is None
    assert "directive" in problem('x;\n   #   include "a.h"\n', "s")
    assert "directive" in problem('x;\n%:include "a.h"\n', "s")
    assert "directive" in problem('x;\n#\\\ninclude "a.h"\n', "s")


@pytestmark_gxx
def test_a_kernel_pasted_from_the_package_is_refused():
    import dcn_lessons.cuda as dcuda

    pasted = "\n".join([dcuda.definition("dcn_common.cuh", "dcn_index_t"),
                        dcuda.definition("dcn_common.cuh", "DCN_GRID_STRIDE_LOOP"),
                        SIGMOID.replace("  const int i = blockIdx.x * blockDim.x + threadIdx.x;\n  if (i >= n) return;\n"
                                        "  mask[i]", "  DCN_GRID_STRIDE_LOOP(i, n) mask[i]")])
    assert CHECKS["check_sigmoid_kernel"].run(pasted, CHECKS["check_sigmoid_kernel"].cases(0)[0]["args"])["mask"] \
        is not None  # it compiles and runs
    _fails("check_sigmoid_kernel", pasted, "DCN_GRID_STRIDE_LOOP", "from the package's own kernels/")
    renamed_helper = IM2COL.replace("my_sample", "dcn_sample")
    _fails("check_im2col_kernel", renamed_helper, "dcn_sample", "write the kernel yourself")


# ------------------------------------------------------------------------------------------ q1-q3: warming up

@pytestmark_gxx
@pytest.mark.parametrize("source, words", [
    (SIGMOID.replace("  if (i >= n) return;\n", ""), ["wrote outside mask[0:n]"]),
    (SIGMOID.replace("blockIdx.x * blockDim.x + threadIdx.x", "threadIdx.x"), ["only mask[0:32] was written",
                                                                              "blockIdx.x * blockDim.x"]),
    (SIGMOID.replace("exp(-logits[i])", "exp(logits[i])"), ["sigmoid(-z)"]),
    (SIGMOID.replace("if (i >= n) return;", "if (i >= n || i % 7 == 3) return;"), ["nothing was written at mask[3]"]),
    (..., ["not written yet"]),
    (SIGMOID.replace("exp(", "epx("), ["does not compile", "epx"]),
    (SIGMOID.replace("double* mask", "float* mask"), ["does not compile", "keep its first lines exactly",
                                                      "double* mask"]),
], ids=["no-bounds", "thread-only", "sign", "skips", "ellipsis", "compile", "signature"])
def test_q1_sigmoid_teaches(source, words):
    _fails("check_sigmoid_kernel", source, *words)


@pytestmark_gxx
@pytest.mark.parametrize("source, words", [
    (SHIFT.replace("? im[r * W + c] : 0.0", "? im[r * W + c] : im[(r < 0 ? 0 : r >= H ? H - 1 : r) * W + "
                   "(c < 0 ? 0 : c >= W ? W - 1 : c)]"), ["the wrong rule at the border", "zero padding"]),
    (SHIFT.replace("(r >= 0 && r < H && c >= 0 && c < W)", "(r * W + c >= 0 && r * W + c < H * W)"),
     ["test the row and the column separately"]),
    (SHIFT.replace("const int r = y + dy, c = x + dx;", "const int r = y - dy, c = x - dx;"), ["the other way"]),
    (SHIFT.replace("  if (y >= H || x >= W) return;\n", ""), ["wrote outside out"]),
], ids=["clamp", "flat", "opposite", "no-bounds"])
def test_q2_shift_teaches(source, words):
    _fails("check_shift_kernel", source, *words)


@pytestmark_gxx
@pytest.mark.parametrize("source, words", [
    (ADD_BIAS.replace("i < n; i += blockDim.x * gridDim.x", "i < n; i += n"), ["only the first 64 elements",
                                                                                "grid-stride loop"]),
    (ADD_BIAS.replace("i += blockDim.x * gridDim.x", "i += blockDim.x"), ["got their bias 2 times"]),
    (ADD_BIAS.replace("out[i] += ", "out[i] = "), ["you overwrote out with the bias"]),
    (ADD_BIAS.replace("(i / HW) % C", "i % C"), ["the bias of the wrong channel"]),
], ids=["no-loop", "block-stride", "overwrite", "channel"])
def test_q3_grid_stride_teaches(source, words):
    _fails("check_add_bias_kernel", source, *words, seed=1)  # the grading seed's sizes: C > 3


# ------------------------------------------------------------------------------------------ q6: im2col

GRID_STRIDE = "index < n; index += blockDim.x * gridDim.x"


@pytestmark_gxx
@pytest.mark.parametrize("source, words", [
    (IM2COL.replace(GRID_STRIDE, "index < n; index += n"), ["were never written", "grid-stride loop"]),
    (IM2COL.replace("+ off[0], px = x * stride - pad + j * dil + off[L]", "+ off[L], px = x * stride - pad + j * dil + off[0]"),
     ["Δy and Δx swapped"]),
    (IM2COL.replace("if (use_mask) v *=", "if (0) v *="), ["the mask left out"]),
    (IM2COL.replace("if (use_mask) v *=", "v *="), ["read mask although use_mask is 0"]),
    (IM2COL.replace("g = c / (C / G)", "g = c % G"), ["offset groups interleaved"]),
    (IM2COL.replace("if (!(y > -1 && y < H && x > -1 && x < W)) return 0.0;",
                    "y = y < 0 ? 0 : (y > H - 1 ? H - 1 : y); x = x < 0 ? 0 : (x > W - 1 ? W - 1 : x);"),
     ["positions clamped into the map"]),
    (IM2COL.replace("if (r >= 0 && r < H && c >= 0 && c < W) v +=", "v +="), ["NaN", "outside an input array"]),
], ids=["no-grid-stride", "swapped", "no-mask", "mask-read", "interleaved", "clamped", "no-bounds"])
def test_q6_im2col_teaches(source, words):
    _fails("check_im2col_kernel", source, *words)


# ------------------------------------------------------------------------------------------ q7-q9: atomics and gathers

@pytestmark_gxx
@pytest.mark.parametrize("source, words", [
    (COUNT.replace("atomicAdd(&counts[r * W + c], 1)", "counts[r * W + c] += 1"), ["without atomicAdd"]),
    (COUNT.replace(" && w != 0.0", ""), ["weight is 0"]),
    (COUNT.replace("r >= 0 && r < H && c >= 0 && c < W && ", ""), ["wrote outside counts"]),
], ids=["plain-add", "zero-weights", "no-bounds"])
def test_q7_count_adds_teaches(source, words):
    _fails("check_count_adds_kernel", source, *words)


@pytestmark_gxx
@pytest.mark.parametrize("source, words", [
    (COL2IM.replace("atomicAdd(&im[r * W + q], g_ * w)", "im[r * W + q] += g_ * w"), ["without atomicAdd",
                                                                                     "lose one of the updates"]),
    (COL2IM.replace(GRID_STRIDE, "index < n; index += n"), ["only the first 192 column entries"]),
    (COL2IM.replace("if (use_mask) g_ *=", "if (0) g_ *="), ["the mask left out"]),
    (COL2IM.replace("+ off[0], px = x * stride - pad + j * dil + off[L]", "+ off[L], px = x * stride - pad + j * dil + off[0]"),
     ["Δy and Δx swapped"]),
], ids=["plain-add", "no-grid-stride", "no-mask", "swapped"])
def test_q8_col2im_teaches(source, words):
    _fails("check_col2im_kernel", source, *words)


@pytestmark_gxx
@pytest.mark.parametrize("source, words", [
    (COL2IM.replace("my_col2im(", "my_col2im_gather("), ["calls atomicAdd", "without atomics"]),
    (GATHER.replace("grad_input[index] = sum;", "if (sum != 0.0) grad_input[index] = sum;"), ["is NaN",
                                                                                              "kept the garbage"]),
    (GATHER.replace("if (use_mask) g_ *=", "if (0) g_ *="), ["the mask left out"]),
], ids=["scatter", "skips-zeros", "no-mask"])
def test_q9_gather_teaches(source, words):
    _fails("check_col2im_gather_kernel", source, *words)


# ------------------------------------------------------------------------------------------ q10: RoI Align

@pytestmark_gxx
@pytest.mark.parametrize("source, words", [
    (ROI.replace("out[index] = sum / (sampling_ratio * sampling_ratio);", "out[index] = sum;"),
     ["no division by the number of samples"]),
    (ROI.replace(" - 0.5, y1 = roi[2] * spatial_scale - 0.5", ", y1 = roi[2] * spatial_scale"), ["no half-pixel shift"]),
    (ROI.replace("roi[1] * spatial_scale - 0.5, y1 = roi[2] * spatial_scale - 0.5", "roi[1] - 0.5, y1 = roi[2] - 0.5")
        .replace("(roi[3] - roi[1]) * spatial_scale", "(roi[3] - roi[1])").replace("(roi[4] - roi[2]) * spatial_scale",
                                                                                  "(roi[4] - roi[2])"),
     ["spatial_scale not applied"]),
    (ROI.replace("const int b = (int)roi[0];", "const int b = 0;"), ["every RoI scattered into image 0"]),
    (ROI.replace(GRID_STRIDE, "index < n; index += n"), ["were never written"]),
], ids=["no-mean", "not-aligned", "no-scale", "batch0", "no-grid-stride"])
def test_q10_roi_align_teaches(source, words):
    _fails("check_roi_align_kernel", source, *words)


# ------------------------------------------------------------------------------------------ no message gives the answer

@pytestmark_gxx
def test_no_failure_message_contains_a_line_of_the_solution():
    from conftest import NOTEBOOKS, master_solution_lines

    solution = master_solution_lines(NOTEBOOKS / "06_cuda_kernels.ipynb", skip=("#", "//", "extern", '"""', "my_"),
                                     comments=("  //", "  #"))
    assert len(solution) >= 40, solution
    wrong = {
        "check_sigmoid_kernel": [SIGMOID.replace("exp(-", "exp("), SIGMOID.replace("blockIdx.x * blockDim.x + ", "")],
        "check_shift_kernel": [SHIFT.replace("y + dy", "y - dy"), SHIFT.replace(": 0.0", ": 1.0")],
        "check_add_bias_kernel": [ADD_BIAS.replace("+= bias", "= bias"), ADD_BIAS.replace("(i / HW) % C", "0")],
        "check_bilinear_kernel": [BILINEAR.replace("floor(y)", "(double)(int)y"), BILINEAR.replace("out[i] = v", "out[i] = 2 * v")],
        "check_im2col_kernel": [IM2COL.replace("g = c / (C / G)", "g = 0"), IM2COL.replace("v *= mask", "v += mask")],
        "check_count_adds_kernel": [COUNT.replace("atomicAdd(&counts[r * W + c], 1)", "atomicAdd(&counts[r * W + c], 2)")],
        "check_col2im_kernel": [COL2IM.replace("g_ * w)", "w)"), COL2IM.replace("const int y0", "const int y0 = 0; const int yy")],
        "check_col2im_gather_kernel": [GATHER.replace("sum += g_ * wy * wx", "sum += g_ * wy")],
        "check_roi_align_kernel": [ROI.replace("(u + 0.5)", "u"), ROI.replace("if (y < 0) y = 0;", "")],
        "check_column_index": [lambda i, C, K, Ho, Wo: good_index(i, C, K, Wo, Ho)],
    }
    messages = []
    for check, answers in wrong.items():
        for answer in answers:
            for seed in (None, 5):
                with pytest.raises(AssertionError) as info:
                    CHECKS[check](answer, seed=seed)
                messages.append(str(info.value))
    for msg in messages:
        for line in solution:
            assert line not in msg, f"a failure message shows the solution line {line!r}:\n{msg}"
