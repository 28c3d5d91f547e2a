#!/usr/bin/env bash
# One pass over the CUDA side on a GPU machine: build in place, the CUDA tests, the GPU targets'
# benches (issue #5: fp16 channels_last layers against the cuDNN pair; issue #4: ResNet-56
# projection against the per-layer SVD loop), the launch profile of single calls
# (bench/launch_profile.py), Nsight Compute on six runs of four layers (bench/ncu_layers.py),
# compute-sanitizer's racecheck and synccheck over the pipelined loads' test and its memcheck
# over the kernels' tests, and a summary. Logs, pytest-benchmark JSON and the
# summary (the machine, the tests' tally, every bench's report) go to $OUT (default ./gpu_out),
# and by default the built extension, gzipped: 8 files either way, as many as the device tool
# brings back.
#
#   bash bench/gpu_check.sh          # fits one device call: stops starting steps after
#                                    # GPU_CHECK_BUDGET seconds (default 480), so that a lease of
#                                    # 15 minutes leaves time for the machine's start and a rerun
#   bash bench/gpu_check.sh full     # also the whole suite, compute-sanitizer memcheck and every
#                                    # CUDA bench (dtypes, layouts, end to end): much longer
#
# Each step runs under `timeout`, capped by what is left of the budget; a step that would get
# under 20 seconds is skipped and says so. The exit status is 0 only when every step ran and
# passed (the launch profile aside: out of budget, it is skipped without failing the run).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu_out}
mkdir -p "$OUT"
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16} PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
MODE=${1:-budget}
BUDGET=${GPU_CHECK_BUDGET:-480}
[ "$MODE" = full ] && BUDGET=${GPU_CHECK_BUDGET:-7200}
START=$(date +%s)
status=0

step() { echo; echo "=== $* ($(( $(date +%s) - START )) s of $BUDGET)"; }
# Seconds a step may take: its own cap, or what is left of the budget after RESERVE seconds kept
# for the steps after it, if less; 0 to skip it.
allowance() {
  local left=$(( BUDGET - ($(date +%s) - START) - $2 ))
  local cap=$(( $1 < left ? $1 : left ))
  (( cap < 20 )) && cap=0
  echo "$cap"
}
# run_capped CAP RESERVE LOG CMD...: CMD under timeout, its output appended to LOG; a skip or a
# failure (timeout included: exit 124) makes the status 1. pytest-benchmark writes its JSON only
# when the session ends, so a bench killed by the timeout leaves none: the benches run in parts.
run_capped() {
  local cap; cap=$(allowance "$1" "$2"); local log=$3; shift 3
  if (( cap == 0 )); then
    echo "SKIPPED: out of budget" | tee -a "$log"; status=1; return 1
  fi
  timeout "$cap" "$@" >> "$log" 2>&1
  local rc=$?
  (( rc == 124 )) && echo "TIMED OUT after $cap s" | tee -a "$log"
  (( rc != 0 )) && status=1
  return $rc
}

# sanitize TOOL CAP RESERVE PYTEST_ARGS...: compute-sanitizer's TOOL over the CUDA tests that
# PYTEST_ARGS select, informational (its exit status is reported, not counted): its log joins
# tests.log (the device tool returns at most 8 files), its verdict the summary.
sanitize() {
  local tool=$1 cap; cap=$(allowance "$2" "$3"); shift 3
  if (( cap == 0 )); then
    echo "$tool: skipped, out of budget" | tee -a "$SUMMARY"; return
  fi
  echo "=== $tool" >> "$OUT/tests.log"
  timeout "$cap" compute-sanitizer --tool "$tool" --error-exitcode 9 --print-limit 20 \
    $PY -m pytest -m cuda -q -p no:cacheprovider "$@" >> "$OUT/tests.log" 2>&1
  echo "$tool: exit $? (9: errors or hazards found, 124: budget ended first)" | tee -a "$OUT/tests.log" "$SUMMARY"
  grep -E "ERROR SUMMARY|RACECHECK SUMMARY|Invalid|out of bounds| passed| failed" "$OUT/tests.log" \
    | tail -4 | tee -a "$SUMMARY"
}

SUMMARY="$OUT/summary.md"  # the machine first, then every bench's report
step "machine"
{ echo '```'
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader
  $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
  # pyproject.toml's SPDX license field needs setuptools 77 or later to build (see the build step).
  $PY -c "import setuptools as s; v = int(s.__version__.split('.')[0]); print('setuptools', s.__version__,
          '' if v >= 77 else '(older than 77: the build below rewrites the license field)')"; } 2>&1 | tee "$SUMMARY"
if ! $PY -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "NO GPU VISIBLE: the CUDA tests and benches below will skip" | tee -a "$SUMMARY"
  status=1
fi

# Reserves: the CUDA tests keep 150 s for the benches, the batch-1 layers 100 s for the
# batch-32 ones and the projection, the batch-32 layers 50 s for the projection. On the H200
# (2026-12-01) the three bench parts took 23, 21 and 32 s and the build 65-70 s.
step "build (editable, in place)"
: > "$OUT/build.log"
if ! $PY -c "import setuptools as s, sys; sys.exit(int(s.__version__.split('.')[0]) < 77)"; then
  # Older setuptools reject the SPDX string (setuptools 75: "`project.license` must be valid
  # exactly by one definition"); the table form they read (deprecated from 77 on) builds the same
  # extension. Put back after the build.
  cp pyproject.toml "$OUT/pyproject.toml.orig"
  sed -i 's/^license = "BSD-3-Clause".*/license = {text = "BSD-3-Clause"}/' pyproject.toml
  echo "setuptools < 77: built with the license as a table" | tee -a "$SUMMARY"
fi
# GPU_CHECK_PREBUILT=1 with the extension already in trp_ext/ for this Python (an earlier run's
# $OUT/_C*.so.gz, unpacked and carried) skips the build: a rerun after a Python-only fix.
ext=trp_ext/_C$($PY -c "import sysconfig; print(sysconfig.get_config_var('EXT_SUFFIX'))")
if [ "${GPU_CHECK_PREBUILT:-0}" = 1 ] && [ -f "$ext" ]; then
  echo "prebuilt $ext: build skipped" | tee -a "$SUMMARY" "$OUT/build.log"
  built=0
else
  run_capped 360 0 "$OUT/build.log" $PY -m pip install --no-build-isolation --no-deps -e .
  built=$?
  # The built extension comes back (the device tool returns files up to 16 MiB) for such a rerun.
  [ $built -eq 0 ] && [ "$MODE" != full ] && gzip -c "$ext" > "$OUT/$(basename "$ext").gz"
fi
if [ -f "$OUT/pyproject.toml.orig" ]; then mv "$OUT/pyproject.toml.orig" pyproject.toml; fi
if [ $built -ne 0 ]; then
  tail -60 "$OUT/build.log"; echo "BUILD FAILED"; exit 1
fi
echo "build done at $(( $(date +%s) - START )) s" | tee -a "$SUMMARY"
$PY -c "import trp_ext, sys; print('cuda kernels built:', trp_ext.cuda_kernels_built()); sys.exit(0 if trp_ext.cuda_kernels_built() else 1)" || exit 1
# Whether lowrank_project finds cuSOLVER's batched eigensolver (else it runs torch.linalg.eigh).
$PY -c "from trp_ext import ops; print('cuSOLVER batched eigh found:', ops.cuda_batched_eigh_available())" 2>&1 | tee -a "$SUMMARY"

step "CUDA tests"
: > "$OUT/tests.log"
# Every failure, not the first: a run is too scarce to learn of one bug per lease. Where the image
# has pytest-xdist and pytest-timeout, four workers share the tests, and a test that hangs (a
# kernel waiting on a barrier no thread reaches, say) is ended after 150 s and its worker replaced,
# so that one hang costs neither the run nor the tests after it. Each result is logged by name as
# it comes (-v): on the first H200 run two tests were ended so and the step's own cap came before
# pytest's summary, and -q had printed no names. A test still running after 60 s dumps every
# thread's stack into the log (faulthandler_timeout writes past pytest's capture, which swallows
# the timeout plugin's own dump when it ends a worker).
# The workers share the CPU: each gets a quarter of the cores for its float64 references, since
# four processes of 16 OpenMP threads on 16 cores wait on each other's spinning threads.
test_opts=()
test_env=()
if $PY -c "import xdist" 2>/dev/null; then
  test_opts+=(-n 4)
  test_env=(env OMP_NUM_THREADS=$(( $(nproc) / 4 > 0 ? $(nproc) / 4 : 1 )))
fi
$PY -c "import pytest_timeout" 2>/dev/null && test_opts+=(--timeout 150 --timeout-method thread)
run_capped 240 150 "$OUT/tests.log" "${test_env[@]}" $PY -m pytest -m cuda tests -v -p no:cacheprovider --tb=short \
  -rfE --durations=10 -o faulthandler_timeout=60 "${test_opts[@]}"
tail -25 "$OUT/tests.log"
grep -E " passed| failed| skipped| error|SKIPPED: out of budget|TIMED OUT" "$OUT/tests.log" | tail -2 >> "$SUMMARY"
# The per-test lines, which survive a step cut short before pytest's own tally: counts, then the
# failures (a worker that crashed or was ended on a timeout reports its test as FAILED) and the
# tests whose stacks faulthandler dumped for running past 60 s.
for outcome in PASSED FAILED SKIPPED ERROR; do
  printf '%s %s; ' "$(grep -cE "\] $outcome tests/|::.* $outcome( |$)" "$OUT/tests.log")" "$outcome"
done >> "$SUMMARY"; echo >> "$SUMMARY"
grep -E "\] (FAILED|ERROR) tests/|::.* (FAILED|ERROR)( |$)" "$OUT/tests.log" | head -30 >> "$SUMMARY"
grep -A12 "Timeout (0:01:00)" "$OUT/tests.log" | grep -oE "tests/test_[a-z0-9_]+\.py\", line [0-9]+ in [a-z0-9_]+" \
  | sort | uniq -c | head -10 >> "$SUMMARY"
echo '```' >> "$SUMMARY"

# Informational: compute-sanitizer's racecheck (shared-memory hazards between a block's threads)
# and synccheck (barriers) over the pipelined loads' test, whose cp.async copies and barriers no
# CPU check can exercise; before the benches, but keeping their 150 s.
if command -v compute-sanitizer > /dev/null; then
  step "racecheck and synccheck over the pipelined loads (informational)"
  for tool in racecheck synccheck; do
    sanitize "$tool" 40 150 tests/test_factored_conv2d.py -k "pipelined_loads and fp16"
  done
fi

# The targets' benches first, so that a short lease still measures them; in parts (see run_capped).
: > "$OUT/bench.log"
for part in "b1 100" "b32 50"; do
  read -r batch reserve <<< "$part"
  step "bench: factored_conv2d, fp16 channels_last, $batch (issue #5's GPU target)"
  run_capped 150 "$reserve" "$OUT/bench.log" $PY -m pytest bench/bench_factored_conv.py -m cuda \
    -k "fp16 and cl and $batch-" --benchmark-only -q -p no:cacheprovider \
    --benchmark-json="$OUT/bench_conv_$batch.json"
  tail -3 "$OUT/bench.log"
done

step "bench: lowrank_project, ResNet-56 (issue #4's GPU target)"
run_capped 150 0 "$OUT/bench.log" $PY -m pytest bench/bench_projection.py -m cuda \
  -k "resnet56 and (test_cold or test_warm) and not unprojected and not steady" \
  --benchmark-only -q -p no:cacheprovider --benchmark-json="$OUT/bench_projection.json"
tail -3 "$OUT/bench.log"

# Informational, so that a budget too short for it is no failure: device operations, host syncs
# and host time of single calls (is a call launch-bound?), into the summary.
step "launch profile (informational)"
cap=$(allowance 60 0)
if (( cap > 0 )); then
  profile_table=$(timeout "$cap" $PY bench/launch_profile.py 2>> "$OUT/bench.log") || status=1
  printf '```\n%s\n```\n' "$profile_table" | tee -a "$SUMMARY"
else
  echo "skipped: out of budget" | tee -a "$SUMMARY"
fi

# Informational as well: compute-sanitizer's memcheck over the kernels' test calls, for what is
# left of the budget (its log joins tests.log: the device tool returns at most 8 files). `full`
# runs it over every CUDA test instead.
if [ "$MODE" != full ] && command -v compute-sanitizer > /dev/null; then
  step "memcheck over the kernels' tests (informational, until the budget ends)"
  sanitize memcheck 240 0 tests/test_factored_conv2d.py tests/test_lowrank_project.py \
    tests/test_energy_rank.py -x -k "not opcheck and not gradcheck"
fi

# Informational: Nsight Compute's reading of the fused kernel on four batch-32 layers, and on
# the two wide ones again with the single-buffered loads (bench/ncu_layers.py): time,
# occupancy, throughputs and stall reasons, free of the host overhead that the benches' per-call
# times carry. Its report joins bench.log; the summary keeps one line a launch.
if command -v ncu > /dev/null; then
  step "ncu on four layers' kernels, two also single-buffered (informational)"
  cap=$(allowance 90 0)
  if (( cap > 0 )); then
    echo "=== ncu" >> "$OUT/bench.log"
    timeout "$cap" ncu --clock-control none --kernel-name regex:factored_conv2d --launch-count 12 \
      --section SpeedOfLight --section LaunchStats --section Occupancy --section WarpStateStats \
      $PY bench/ncu_layers.py > "$OUT/ncu.txt" 2>&1
    echo "ncu: exit $?" | tee -a "$SUMMARY"
    $PY bench/ncu_summary.py "$OUT/ncu.txt" | tee -a "$SUMMARY"
    cat "$OUT/ncu.txt" >> "$OUT/bench.log" && rm "$OUT/ncu.txt"
  fi
fi

if [ "$MODE" = full ]; then
  step "whole suite"
  run_capped 900 0 "$OUT/tests.log" $PY -m pytest tests -q -p no:cacheprovider
  tail -5 "$OUT/tests.log"

  step "compute-sanitizer memcheck over the CUDA tests' kernel calls"
  run_capped 900 0 "$OUT/tests.log" compute-sanitizer --tool memcheck --error-exitcode 9 \
    --print-limit 20 $PY -m pytest -m cuda tests -q -x -p no:cacheprovider -k "not opcheck"
  grep -E "ERROR SUMMARY|passed|failed|Invalid|out of bounds" "$OUT/tests.log" | tail -8

  step "every CUDA bench"
  run_capped 3600 0 "$OUT/bench.log" $PY -m pytest bench -m cuda --benchmark-only -q \
    -p no:cacheprovider --benchmark-json="$OUT/bench_all.json"
  tail -5 "$OUT/bench.log"
fi

step "summary"
for json in "$OUT"/bench_*.json; do
  [ -e "$json" ] || continue
  echo "## $(basename "$json")" >> "$SUMMARY"
  $PY bench/report.py "$json" >> "$SUMMARY" 2>&1 || status=1
done
cat "$SUMMARY"
echo "status: $status ($(( $(date +%s) - START )) s)"
exit $status
