"""Lesson 06's checks: silent on correct answers, and a failure that names the mistake on typical wrong ones.

q1 compiles CUDA C through the g++ emulator: each distinct source below is one compile (cached on disk).
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


# ------------------------------------------------------------------------------------------------- q2
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
