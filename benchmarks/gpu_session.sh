#!/usr/bin/env bash
# Everything issue 5 asks of a GPU, in one command (a lent GPU machine starts per call: few, full calls):
#   1. the CUDA tests on the GPU (tests/test_cuda_gpu.py) with the NVRTC and emulator tests beside them;
#   2. compute-sanitizer memcheck, racecheck and initcheck over every kernel (benchmarks/sanitize_cuda.sh);
#   3. the benchmark (benchmarks/bench_cuda.py) in float32 and float16.
# Needs python3 with torch, CuPy (and torchvision for the comparisons) and compute-sanitizer; dcn_lessons is used
# from this checkout (PYTHONPATH), nothing is installed. Results, named after the GPU, go to $OUT
# (default benchmarks/results): gpu_tests_<gpu>.txt, sanitize_<gpu>.txt, cuda_<gpu>_<dtype>.json and .txt.
#   OUT=/some/dir bash benchmarks/gpu_session.sh     # exit status 0 only when every step passed
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results}
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 PYTHON="$PY"
mkdir -p "$OUT"
gpu=$("$PY" -c "import torch; print(torch.cuda.get_device_name().split()[1].lower() if torch.cuda.is_available() else '')")
if [ -z "$gpu" ]; then
  echo "gpu_session: torch sees no CUDA device; nothing run" >&2
  exit 2
fi
status=0
echo "== GPU tests on $gpu"
"$PY" -m pytest -q -rs -p no:cacheprovider tests/test_cuda_gpu.py tests/test_cuda_nvrtc.py tests/test_cuda_emulated.py \
  2>&1 | tee "$OUT/gpu_tests_$gpu.txt" || status=1
echo "== compute-sanitizer"
bash benchmarks/sanitize_cuda.sh 2>&1 | tee "$OUT/sanitize_$gpu.txt" || status=1
for dtype in float32 float16; do
  echo "== benchmark, $dtype"
  "$PY" benchmarks/bench_cuda.py --dtype "$dtype" --json "$OUT/cuda_${gpu}_$dtype.json" 2>&1 \
    | tee "$OUT/cuda_${gpu}_$dtype.txt" || status=1
done
exit $status
