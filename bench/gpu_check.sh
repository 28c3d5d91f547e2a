#!/usr/bin/env bash
# One pass over the CUDA side on a GPU machine: build in place, the CUDA tests, the GPU targets'
# benches (issue #5: fp16 channels_last layers against the cuDNN pair; issue #4: ResNet-56
# projection against the per-layer SVD loop), and a summary. Logs, pytest-benchmark JSON and the
# summary go to $OUT (default ./gpu_out): at most 8 files, as the device tool brings back.
#
#   bash bench/gpu_check.sh          # fits one device call: stops starting steps after
#                                    # GPU_CHECK_BUDGET seconds (default 420), so that a lease of
#                                    # 15 minutes leaves time for the machine's start and a rerun
#   bash bench/gpu_check.sh full     # also the whole suite, compute-sanitizer memcheck and every
#                                    # CUDA bench (dtypes, layouts, end to end): much longer
#
# Each step runs under `timeout`, capped by what is left of the budget; a step that would get
# under 20 seconds is skipped and says so. The exit status is 0 only when every step ran and
# passed.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu_out}
mkdir -p "$OUT"
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16} PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
MODE=${1:-budget}
BUDGET=${GPU_CHECK_BUDGET:-420}
[ "$MODE" = full ] && BUDGET=${GPU_CHECK_BUDGET:-7200}
START=$(date +%s)
status=0

step() { echo; echo "=== $* ($(( $(date +%s) - START )) s of $BUDGET)"; }
# Seconds a step may take: its own cap, or what is left of the budget if less; 0 to skip it.
allowance() {
  local left=$(( BUDGET - ($(date +%s) - START) ))
  local cap=$(( $1 < left ? $1 : left ))
  (( cap < 20 )) && cap=0
  echo "$cap"
}
# run_capped CAP LOG CMD...: CMD under timeout, its output appended to LOG; a skip or a failure
# (timeout included: exit 124) makes the status 1.
run_capped() {
  local cap; cap=$(allowance "$1"); local log=$2; shift 2
  if (( cap == 0 )); then
    echo "SKIPPED: out of budget" | tee -a "$log"; status=1; return 1
  fi
  timeout "$cap" "$@" >> "$log" 2>&1
  local rc=$?
  (( rc == 124 )) && echo "TIMED OUT after $cap s" | tee -a "$log"
  (( rc != 0 )) && status=1
  return $rc
}

step "machine"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader | tee "$OUT/machine.txt"
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$OUT/machine.txt"
if ! $PY -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "NO GPU VISIBLE: the CUDA tests and benches below will skip" | tee -a "$OUT/machine.txt"
  status=1
fi

step "build (editable, in place)"
: > "$OUT/build.log"
if ! run_capped 360 "$OUT/build.log" $PY -m pip install --no-build-isolation --no-deps -e .; then
  tail -60 "$OUT/build.log"; echo "BUILD FAILED"; exit 1
fi
echo "build seconds: $(( $(date +%s) - START ))" | tee -a "$OUT/machine.txt"
$PY -c "import trp_ext, sys; print('cuda kernels built:', trp_ext.cuda_kernels_built()); sys.exit(0 if trp_ext.cuda_kernels_built() else 1)" || exit 1

step "CUDA tests"
: > "$OUT/tests.log"
run_capped 180 "$OUT/tests.log" $PY -m pytest -m cuda tests -q -x -p no:cacheprovider --durations=10
tail -25 "$OUT/tests.log"

# The targets' benches first, so that a short lease still measures them.
step "bench: factored_conv2d, fp16 channels_last (issue #5's GPU target)"
: > "$OUT/bench.log"
run_capped 240 "$OUT/bench.log" $PY -m pytest bench/bench_factored_conv.py -m cuda -k "fp16 and cl" \
  --benchmark-only -q -p no:cacheprovider --benchmark-json="$OUT/bench_conv.json"
tail -3 "$OUT/bench.log"

step "bench: lowrank_project, ResNet-56 (issue #4's GPU target)"
run_capped 150 "$OUT/bench.log" $PY -m pytest bench/bench_projection.py -m cuda \
  -k "resnet56 and (test_cold or test_warm) and not unprojected and not steady" \
  --benchmark-only -q -p no:cacheprovider --benchmark-json="$OUT/bench_projection.json"
tail -3 "$OUT/bench.log"

if [ "$MODE" = full ]; then
  step "whole suite"
  run_capped 900 "$OUT/tests.log" $PY -m pytest tests -q -p no:cacheprovider
  tail -5 "$OUT/tests.log"

  step "compute-sanitizer memcheck over the CUDA tests' kernel calls"
  run_capped 900 "$OUT/tests.log" compute-sanitizer --tool memcheck --error-exitcode 9 \
    --print-limit 20 $PY -m pytest -m cuda tests -q -x -p no:cacheprovider -k "not opcheck"
  grep -E "ERROR SUMMARY|passed|failed|Invalid|out of bounds" "$OUT/tests.log" | tail -8

  step "every CUDA bench"
  run_capped 3600 "$OUT/bench.log" $PY -m pytest bench -m cuda --benchmark-only -q \
    -p no:cacheprovider --benchmark-json="$OUT/bench_all.json"
  tail -5 "$OUT/bench.log"
fi

step "summary"
: > "$OUT/summary.md"
for json in "$OUT"/bench_*.json; do
  [ -e "$json" ] || continue
  echo "## $(basename "$json")" >> "$OUT/summary.md"
  $PY bench/report.py "$json" >> "$OUT/summary.md" 2>&1 || status=1
done
cat "$OUT/summary.md"
echo "status: $status ($(( $(date +%s) - START )) s)"
exit $status
