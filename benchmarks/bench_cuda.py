"""Speed of the CUDA tier on the ResNet-50 shapes of the course (issue 5): ratios, not absolute times.

Run on a machine with a GPU and CuPy (``pip install -e .[cuda12]`` or ``[cuda13]``)::

    python benchmarks/bench_cuda.py            # float32, all shapes
    python benchmarks/bench_cuda.py --dtype float16 --repeats 30 --json out.json   # or float64, bfloat16

For each shape (3x3 deformable conv, N=2; offsets ~ N(0, 1), v2 mask):
  conv3  C=O=128, 100x152, pad 1          conv4  C=O=256, 50x76, pad 1
  conv5  C=O=512, 50x76, dilation 2, pad 2
it times, interleaved (A B A B ...), ``--repeats`` times after warm-up, with CUDA events, and reports medians
and ratios in one run:
  * forward and forward+backward of ``dcn_lessons.ops.deform_conv2d`` on the CUDA kernels, with the plain
    kernels ("ours") and with the grouped im2col + fused backward ("ours_fast", ``set_kernel_variant``), against
    ``torchvision.ops.deform_conv2d`` (when torchvision imports and takes the dtype) and cuDNN ``F.conv2d``
    (same shape, no offsets);
  * the faster variants against the plain kernels: im2col "grouped" vs "plain"; the fused backward
    (``deform_col2im_fused``) vs col2im + coordinate kernel;
  * the fraction of the memory-bandwidth roofline reached by im2col: the bytes it must move at least
    (read input, offset, mask once; write the columns) over its time, divided by the device-to-device copy
    bandwidth measured in the same run (and the nominal bandwidth from the device properties when CuPy
    reports it).
Name the machine (printed) with any figure you quote.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Callable

import torch
import torch.nn.functional as F

from dcn_lessons.bench import time_interleaved

SHAPES = {
    "conv3": dict(N=2, C=128, O=128, H=100, W=152, dilation=1, padding=1),
    "conv4": dict(N=2, C=256, O=256, H=50, W=76, dilation=1, padding=1),
    "conv5": dict(N=2, C=512, O=512, H=50, W=76, dilation=2, padding=2),
}


def cuda_time(fn: Callable[[], object]) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3


def interleaved(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 3) -> dict[str, float]:
    """Median seconds of each callable, timed with CUDA events in turn (A B C A B C ...) to share the drift."""
    return {k: t.median for k, t in time_interleaved(fns, repeats, warmup, timer=cuda_time).items()}


def copy_bandwidth(nbytes: int = 1 << 30) -> float:
    a = torch.empty(nbytes // 4, dtype=torch.float32, device="cuda")
    b = torch.empty_like(a)
    t = interleaved({"copy": lambda: b.copy_(a)}, 10)["copy"]
    return 2 * nbytes / t  # read + write


def nominal_bandwidth() -> float | None:
    try:
        import cupy

        p = cupy.cuda.runtime.getDeviceProperties(torch.cuda.current_device())
        return 2 * p["memoryClockRate"] * 1e3 * p["memoryBusWidth"] / 8
    except Exception:  # noqa: BLE001  (the field is gone from newer CUDA runtimes)
        return None


def _takes_dtype(tvops, dtype: torch.dtype, dev: torch.device) -> bool:
    """Whether torchvision's deform_conv2d runs in ``dtype`` here (not every build has every 16-bit kernel)."""
    try:
        z = torch.zeros(1, 1, 3, 3, device=dev, dtype=dtype)
        tvops.deform_conv2d(z, torch.zeros(1, 18, 1, 1, device=dev, dtype=dtype),
                            torch.zeros(1, 1, 3, 3, device=dev, dtype=dtype))
        return True
    except RuntimeError as exc:
        print(f"torchvision.ops.deform_conv2d does not take {dtype}: {exc}", file=sys.stderr)
        return False


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64", "float16", "bfloat16"])
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--shapes", nargs="*", default=list(SHAPES))
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("bench_cuda: no CUDA device; nothing measured", file=sys.stderr)
        return 2
    import os

    os.environ["DCN_LESSONS_BACKEND"] = "cuda"  # fail loudly rather than time the tensor path
    import dcn_lessons.cuda as dcuda
    from dcn_lessons.ops.deform_conv import deform_conv2d

    try:
        import torchvision.ops as tvops
    except Exception:  # noqa: BLE001
        tvops = None
    dtype = getattr(torch, args.dtype)
    dev = torch.device("cuda")
    from dcn_lessons.cuda.backend import CupyKernels

    k = CupyKernels(dev)  # plain im2col, separate backward
    grouped = CupyKernels(dev, im2col="grouped")
    bw_copy, bw_nominal = copy_bandwidth(), nominal_bandwidth()
    machine = f"{torch.cuda.get_device_name()} | torch {torch.__version__} | {args.dtype}"
    print(f"machine: {machine}")
    print(f"copy bandwidth {bw_copy / 1e9:.0f} GB/s" + (f", nominal {bw_nominal / 1e9:.0f} GB/s" if bw_nominal else ""))
    results = {"machine": machine, "copy_bandwidth": bw_copy, "nominal_bandwidth": bw_nominal, "shapes": {}}
    for name in args.shapes:
        s = SHAPES[name]
        N, C, O, H, W, d, p = s["N"], s["C"], s["O"], s["H"], s["W"], s["dilation"], s["padding"]
        g = torch.Generator(device="cpu").manual_seed(0)
        x = torch.randn(N, C, H, W, generator=g).to(dev, dtype).requires_grad_()
        w = (torch.randn(O, C, 3, 3, generator=g) * 0.01).to(dev, dtype).requires_grad_()
        b = torch.zeros(O, device=dev, dtype=dtype, requires_grad=True)
        Ho, Wo = H, W
        off = torch.randn(N, 18, Ho, Wo, generator=g).to(dev, dtype).requires_grad_()
        mask = torch.rand(N, 9, Ho, Wo, generator=g).to(dev, dtype).requires_grad_()
        go = torch.randn(N, O, Ho, Wo, generator=g).to(dev, dtype)
        geo = (3, 1, p, d)
        leaves = [x, off, w, b, mask]

        def ours_fwd(variant=("plain", "separate")):
            dcuda.set_kernel_variant(*variant)  # the backend of each variant is built once and kept
            with torch.no_grad():
                return deform_conv2d(x, off, w, b, padding=p, dilation=d, mask=mask)

        def ours_fb(variant=("plain", "separate")):
            dcuda.set_kernel_variant(*variant)
            y = deform_conv2d(x, off, w, b, padding=p, dilation=d, mask=mask)
            return torch.autograd.grad(y, leaves, go)

        fast = ("grouped", "fused")

        def cudnn_fwd():
            with torch.no_grad():
                return F.conv2d(x, w, b, padding=p, dilation=d)

        def cudnn_fb():
            y = F.conv2d(x, w, b, padding=p, dilation=d)
            return torch.autograd.grad(y, [x, w, b], go)

        fwd = {"ours": ours_fwd, "ours_fast": lambda: ours_fwd(fast), "cudnn": cudnn_fwd}
        fb = {"ours": ours_fb, "ours_fast": lambda: ours_fb(fast), "cudnn": cudnn_fb}
        if tvops is not None and _takes_dtype(tvops, dtype, dev):
            def tv_fwd():
                with torch.no_grad():
                    return tvops.deform_conv2d(x, off, w, b, padding=p, dilation=d, mask=mask)

            def tv_fb():
                y = tvops.deform_conv2d(x, off, w, b, padding=p, dilation=d, mask=mask)
                return torch.autograd.grad(y, leaves, go)

            fwd["torchvision"], fb["torchvision"] = tv_fwd, tv_fb
        t_fwd = interleaved(fwd, args.repeats)
        t_fb = interleaved(fb, args.repeats)
        xd, od, md = x.detach(), off.detach(), mask.detach()
        gcol = torch.randn(N, C * 9, Ho * Wo, device=dev, dtype=dtype)
        t_prim = interleaved({
            "im2col_plain": lambda: k.deform_im2col(xd, od, md, *geo),
            "im2col_grouped": lambda: grouped.deform_im2col(xd, od, md, *geo),
            "backward_separate": lambda: (k.deform_col2im(gcol, od, md, xd.shape, *geo),
                                          k.deform_col2im_coord(gcol, xd, od, md, *geo)),
            "backward_fused": lambda: k.deform_col2im_fused(gcol, xd, od, md, *geo),
        }, args.repeats)
        item = xd.element_size()
        min_bytes = item * (xd.numel() + od.numel() + md.numel() + gcol.numel())
        best_im2col = min(t_prim["im2col_plain"], t_prim["im2col_grouped"])
        row = {
            "forward_s": t_fwd, "forward_backward_s": t_fb, "primitives_s": t_prim,
            "forward_ratio_vs_cudnn": t_fwd["ours"] / t_fwd["cudnn"],
            "forward_backward_ratio_vs_cudnn": t_fb["ours"] / t_fb["cudnn"],
            "fast_forward_ratio_vs_cudnn": t_fwd["ours_fast"] / t_fwd["cudnn"],
            "fast_forward_backward_ratio_vs_cudnn": t_fb["ours_fast"] / t_fb["cudnn"],
            "im2col_grouped_over_plain": t_prim["im2col_grouped"] / t_prim["im2col_plain"],
            "backward_fused_over_separate": t_prim["backward_fused"] / t_prim["backward_separate"],
            "im2col_roofline_fraction_of_copy_bw": min_bytes / best_im2col / bw_copy,
        }
        if "torchvision" in t_fwd:
            row["forward_ratio_vs_torchvision"] = t_fwd["ours"] / t_fwd["torchvision"]
            row["forward_backward_ratio_vs_torchvision"] = t_fb["ours"] / t_fb["torchvision"]
            row["fast_forward_ratio_vs_torchvision"] = t_fwd["ours_fast"] / t_fwd["torchvision"]
            row["fast_forward_backward_ratio_vs_torchvision"] = t_fb["ours_fast"] / t_fb["torchvision"]
        results["shapes"][name] = row
        print(f"\n{name}: N={N} C=O={C} {H}x{W} dilation {d}")
        for key, v in row.items():
            if not key.endswith("_s"):
                print(f"  {key:42s} {v:8.3f}")
        print("  medians (ms): " + ", ".join(f"{k2} {v2 * 1e3:.3f}" for part in (t_fwd, t_prim)
                                              for k2, v2 in part.items()))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
