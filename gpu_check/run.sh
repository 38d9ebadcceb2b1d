#!/usr/bin/env bash
# The GPU check, for a short remote run on a GPU machine that has torch, nvcc
# and compute-sanitizer but no network. Stages, chosen by argument, each well
# under 10 minutes on one H100 (estimated; not yet run on one):
#   build     build the extension in place (ptxas report checked for spills)
#   test      the CUDA tests (pytest -m cuda), no stop at the first failure
#   sanitize  compute-sanitizer memcheck, racecheck, synccheck, initcheck
#   bench     the GPU benchmarks (default and fastrnns presets), both kernel paths
# Usage: bash gpu_check/run.sh OUT_DIR [STAGE...]   (make gpu-check OUT=dir STAGES="...")
# With no stage, all four run. Everything lands in at most 8 files in OUT_DIR:
# report.md, build.log, tests.log, tests.xml, sanitize.log, bench.log, bench.md, bench.json.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-gpu-report}"
shift || true
STAGES="${*:-build test sanitize bench}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1
export CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"
export MAX_JOBS="${MAX_JOBS:-$(nproc)}"
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"
REPORT="$OUT/report.md"
note() { echo "$*" | tee -a "$REPORT"; }

if [ ! -s "$REPORT" ]; then
  {
    echo "# fusedrnn GPU check"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version())"
    git rev-parse --short HEAD 2>/dev/null
  } >> "$REPORT" 2>&1
fi

stage_build() {
  note "## build"
  FUSEDRNN_PTXAS_VERBOSE=1 timeout 540 $PY setup.py build_ext --inplace > "$OUT/build.log" 2>&1
  note "build rc=$?"
  $PY gpu_check/check_ptxas.py "$OUT/build.log" 2>&1 | tee -a "$REPORT"
}

stage_test() {
  note "## tests (pytest -m cuda)"
  timeout 540 $PY -m pytest -q -m cuda tests -p no:cacheprovider --maxfail=50 -rfE \
    --junitxml="$OUT/tests.xml" > "$OUT/tests.log" 2>&1
  note "tests rc=$?"
  tail -n 3 "$OUT/tests.log" | tee -a "$REPORT"
}

stage_sanitize() {
  note "## compute-sanitizer"
  : > "$OUT/sanitize.log"
  for tool in memcheck racecheck synccheck initcheck; do
    for persistent in 0 1; do
      echo "==== $tool persistent=$persistent" >> "$OUT/sanitize.log"
      PYTORCH_NO_CUDA_MEMORY_CACHING=1 FUSEDRNN_PERSISTENT=$persistent timeout 120 \
        compute-sanitizer --tool "$tool" --error-exitcode 9 $PY gpu_check/sanitizer_case.py \
        > /tmp/sanitize_one.log 2>&1
      rc=$?
      cat /tmp/sanitize_one.log >> "$OUT/sanitize.log"
      if grep -qi "device not supported\|not supported on this device" /tmp/sanitize_one.log; then
        note "$tool persistent=$persistent: skipped (device not supported)"
      else
        note "$tool persistent=$persistent rc=$rc $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' \
          /tmp/sanitize_one.log | tail -n 1)"
      fi
    done
  done
}

stage_bench() {
  note "## benchmarks"
  : > "$OUT/bench.log"; : > "$OUT/bench.md"
  # The fuller grids (presets cuda, persistent, flashrnn, cudnn) take longer
  # than one 10-minute call: name them in GPU_CHECK_PRESETS, one per call.
  for preset in ${GPU_CHECK_PRESETS:-default fastrnns}; do
    for persistent in 0 1; do
      dir="/tmp/bench-$preset-p$persistent"
      FUSEDRNN_PERSISTENT=$persistent timeout 240 $PY -m fusedrnn.bench --preset "$preset" \
        --device cuda --out "$dir" >> "$OUT/bench.log" 2>&1
      note "bench $preset persistent=$persistent rc=$?"
      { echo "### $preset, persistent=$persistent"; cat "$dir/results.md"; } >> "$OUT/bench.md" 2>/dev/null
      cp "$dir/results.json" "$OUT/bench.json" 2>/dev/null  # the last run's rows
    done
  done
}

for stage in $STAGES; do
  case "$stage" in
    build|test|sanitize|bench) "stage_$stage" ;;
    *) note "unknown stage: $stage (build, test, sanitize, bench)"; exit 2 ;;
  esac
done
echo "report: $REPORT"
