#!/usr/bin/env bash
# Run every CUDA kernel of kernels/ under compute-sanitizer: memcheck (out-of-bounds and misaligned accesses,
# including the far-outside and border samples and an empty launch), racecheck (shared-memory hazards; our
# kernels use no shared memory, so this guards future variants) and initcheck (reads of uninitialised memory:
# the columns/outputs the kernels must fully write). Needs a GPU, CuPy and compute-sanitizer (CUDA toolkit).
#   bash benchmarks/sanitize_cuda.sh            # exit status 0 only when every tool reports no error
set -euo pipefail
cd "$(dirname "$0")/.."
SAN=${COMPUTE_SANITIZER:-compute-sanitizer}
PY=${PYTHON:-python}
command -v "$SAN" >/dev/null || { echo "compute-sanitizer not found (set COMPUTE_SANITIZER)" >&2; exit 2; }
DRIVER=$(mktemp --suffix=.py)
trap 'rm -f "$DRIVER"' EXIT
cat > "$DRIVER" <<'PY'
import torch
from dcn_lessons.cuda.backend import CupyKernels
dev = torch.device("cuda")
torch.manual_seed(0)
for variant in (dict(), dict(im2col="grouped", backward="fused")):
    k = CupyKernels(dev, **variant)
    for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        x = torch.randn(2, 4, 7, 9, device=dev, dtype=dtype)
        off = torch.randn(2, 2 * 2 * 9, 7, 9, device=dev, dtype=dtype) * 4
        off[:, ::7] = 1e4          # far outside
        off[:, 1::7] = -1.0        # on the border / integer coordinates
        mask = torch.rand(2, 2 * 9, 7, 9, device=dev, dtype=dtype)
        for m in (mask, None):
            cols = k.deform_im2col(x, off, m, 3, 1, 1, 1)
            g = torch.randn_like(cols)
            k.deform_conv_backward_columns(g, x, off, m, 3, 1, 1, 1)
            k.deform_col2im(g, off, m, x.shape, 3, 1, 1, 1)
            k.deform_col2im_coord(g, x, off, m, 3, 1, 1, 1)
        if dtype not in (torch.float32, torch.float64):
            continue  # the RoI kernels are float/double only
        feat = torch.randn(2, 8, 6, 7, device=dev, dtype=dtype)
        rois = torch.tensor([[0, 1, 1, 9, 8], [1, -5, -5, 30, 30], [1, 50, 50, 60, 60], [0, 2, 2, 2, 6]],
                            device=dev, dtype=dtype)
        roff = torch.randn(4, 2, 2, 2, device=dev, dtype=dtype)
        rmask = torch.rand(4, 1, 2, 2, device=dev, dtype=dtype)
        for kind, o, mm in (("roi_align", None, None), ("deform_roi_pool", roff, None),
                            ("deform_roi_pool", roff, rmask), ("ps_roi_align", None, None),
                            ("deform_ps_roi_pool", roff, None)):
            out = k.roi_forward(kind, feat, rois, o, mm, 2, 0.5, 0, 0.1)
            k.roi_backward(kind, torch.randn_like(out), feat, rois, o, mm, 2, 0.5, 0, 0.1)
        k.roi_forward("roi_align", feat, rois[:0], None, None, 2, 0.5, 0, 0.1)  # K = 0: no launch
torch.cuda.synchronize()
print("sanitize driver: all kernels launched")
PY
status=0
for tool in memcheck racecheck initcheck; do
  echo "== compute-sanitizer --tool $tool"
  # Extra options (e.g. a kernel-name filter when torch's own kernels make initcheck noisy) via SANITIZER_ARGS.
  # shellcheck disable=SC2086
  if ! "$SAN" --tool "$tool" --error-exitcode 99 --target-processes all ${SANITIZER_ARGS:-} "$PY" "$DRIVER"; then
    echo "!! $tool reported errors" >&2
    status=1
  fi
done
exit $status
