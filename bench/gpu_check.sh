#!/usr/bin/env bash
# One pass over the CUDA side on a GPU machine: build in place, CUDA tests, the whole suite,
# the CUDA tests' kernels under compute-sanitizer memcheck, the GPU benches, and a summary.
# Writes logs and pytest-benchmark JSON to $OUT (default ./gpu_out). Usage:
#   bash bench/gpu_check.sh [quick]      # quick: skip the whole-suite and sanitizer passes
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu_out}
mkdir -p "$OUT"
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16} PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
status=0
step() { echo; echo "=== $* ($(date +%T))"; }

step "machine"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader | tee "$OUT/machine.txt"
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$OUT/machine.txt"

step "build (editable, in place)"
start=$(date +%s)
if ! $PY -m pip install --no-build-isolation --no-deps -e . > "$OUT/build.log" 2>&1; then
  tail -60 "$OUT/build.log"; echo "BUILD FAILED"; exit 1
fi
echo "build seconds: $(( $(date +%s) - start ))" | tee -a "$OUT/machine.txt"
$PY -c "import trp_ext, sys; print('cuda kernels built:', trp_ext.cuda_kernels_built()); sys.exit(0 if trp_ext.cuda_kernels_built() else 1)" || exit 1

step "CUDA tests"
timeout 600 $PY -m pytest -m cuda tests -q -p no:cacheprovider --junitxml="$OUT/cuda_tests.xml" > "$OUT/cuda_tests.log" 2>&1 || status=1
tail -25 "$OUT/cuda_tests.log"

if [ "${1:-}" != "quick" ]; then
  step "whole suite"
  timeout 900 $PY -m pytest tests -q -p no:cacheprovider -x -n 8 > "$OUT/all_tests.log" 2>&1 \
    || timeout 900 $PY -m pytest tests -q -p no:cacheprovider > "$OUT/all_tests.log" 2>&1 || status=1
  tail -5 "$OUT/all_tests.log"

  step "compute-sanitizer memcheck over the CUDA tests' kernel calls"
  timeout 600 compute-sanitizer --tool memcheck --error-exitcode 9 --print-limit 20 \
    $PY -m pytest -m cuda tests -q -x -p no:cacheprovider -k "not opcheck" > "$OUT/memcheck.log" 2>&1
  rc=$?; [ $rc -ne 0 ] && status=1
  grep -E "ERROR SUMMARY|passed|failed|Invalid|out of bounds" "$OUT/memcheck.log" | tail -8
fi

step "GPU benches"
timeout 900 $PY -m pytest bench -m cuda --benchmark-only -q -p no:cacheprovider \
  --benchmark-json="$OUT/gpu_bench.json" > "$OUT/bench.log" 2>&1 || status=1
tail -5 "$OUT/bench.log"

step "summary"
$PY bench/report.py "$OUT/gpu_bench.json" | tee "$OUT/summary.md"
echo "status: $status"
exit $status
