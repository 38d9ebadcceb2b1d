#!/usr/bin/env bash
# The GPU check: on a GPU machine with torch installed and no network,
#   build in place -> CUDA tests -> compute-sanitizer -> benchmarks -> report.
# Usage: bash benchmarks/gpu_check.sh OUT_DIR      (make gpu-check OUT=dir)
# Budget: under 10 minutes on one H100 (estimated; not yet run on one).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-gpu-report}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1
export CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"
export MAX_JOBS="${MAX_JOBS:-$(nproc)}"
step() { echo "== $1" | tee -a "$OUT/report.md"; }

: > "$OUT/report.md"
{
  echo "# fusedrnn GPU check"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version())"
  git rev-parse --short HEAD 2>/dev/null
} >> "$OUT/report.md" 2>&1

step "build (ptxas report in build.log)"
FUSEDRNN_PTXAS_VERBOSE=1 $PY setup.py build_ext --inplace > "$OUT/build.log" 2>&1
echo "build rc=$?" | tee -a "$OUT/report.md"
grep -E "spill (stores|loads)" "$OUT/build.log" | sort | uniq -c | tee -a "$OUT/report.md"

step "tests (CUDA and CPU)"
timeout 300 $PY -m pytest -q -x tests/test_cuda.py tests/test_ops.py -p no:cacheprovider \
  > "$OUT/tests.log" 2>&1
echo "tests rc=$?" | tee -a "$OUT/report.md"
tail -n 3 "$OUT/tests.log" | tee -a "$OUT/report.md"

step "compute-sanitizer"
for tool in memcheck racecheck synccheck; do
  for persistent in 0 1; do
    PYTORCH_NO_CUDA_MEMORY_CACHING=1 FUSEDRNN_PERSISTENT=$persistent timeout 120 \
      compute-sanitizer --tool "$tool" --error-exitcode 9 $PY benchmarks/sanitizer_case.py \
      > "$OUT/sanitizer-$tool-p$persistent.log" 2>&1
    echo "$tool persistent=$persistent rc=$? $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' \
      "$OUT/sanitizer-$tool-p$persistent.log" | tail -n 1)" | tee -a "$OUT/report.md"
  done
done

step "barrier micro-benchmark"
$PY - <<'PYEOF' 2>&1 | tee -a "$OUT/report.md"
import torch, fusedrnn
sms = torch.cuda.get_device_properties(0).multi_processor_count
for blocks in (sms // 4, sms // 2, sms):
    us = torch.ops.fusedrnn_debug.persistent_barrier_us(10000, blocks)
    print(f"grid barrier, {blocks} blocks: {us / 10000:.3f} us per step")
PYEOF

step "benchmarks"
# The fuller grids (presets cuda, persistent, flashrnn, cudnn) take longer than
# this check's 10 minutes: run them by hand or with GPU_CHECK_PRESETS.
for preset in ${GPU_CHECK_PRESETS:-default fastrnns}; do
  for persistent in 0 1; do
    FUSEDRNN_PERSISTENT=$persistent timeout 240 $PY -m fusedrnn.bench --preset $preset \
      --device cuda --out "$OUT/bench-$preset-p$persistent" > "$OUT/bench-$preset-p$persistent.log" 2>&1
    echo "bench $preset persistent=$persistent rc=$?" | tee -a "$OUT/report.md"
    cat "$OUT/bench-$preset-p$persistent/results.md" >> "$OUT/report.md" 2>/dev/null
  done
done
echo "report: $OUT/report.md"
