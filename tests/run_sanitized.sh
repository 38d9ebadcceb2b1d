#!/usr/bin/env bash
# Runs the simt tests on a sanitizer build of the SIMT library (csrc/simt/build.py):
#   asan  AddressSanitizer + UndefinedBehaviorSanitizer: out-of-bounds reads and
#         writes of shared memory, tensors and workspaces; undefined arithmetic
#   tsan  ThreadSanitizer: races between CUDA threads in shared memory, and
#         between blocks in global memory (the persistent kernels' h workspace)
# The sanitizer runtime is preloaded into Python; every report aborts the run,
# so any finding fails it. `make test` runs both.
#
# Usage: tests/run_sanitized.sh asan|tsan [python] [pytest arguments...]
set -euo pipefail
cd "$(dirname "$0")/.."
kind="${1:?usage: tests/run_sanitized.sh asan|tsan [python] [pytest args...]}"
py="${2:-python3}"
shift $(( $# < 2 ? $# : 2 ))

library="build/simt/$kind/_simt.so"
# libstdc++ is preloaded too: the sanitizer's __cxa_throw interceptor must find it
# when the runtime starts (Python itself does not link it).
libstdcxx="$(gcc -print-file-name=libstdc++.so)"
[ -f "$library" ] || { echo "$library not built: python csrc/simt/build.py $kind" >&2; exit 1; }
case "$kind" in
  asan)
    skip=()
    preload="$(gcc -print-file-name=libasan.so)"
    export ASAN_OPTIONS="detect_leaks=0:halt_on_error=1:abort_on_error=1"
    export UBSAN_OPTIONS="halt_on_error=1:abort_on_error=1:print_stacktrace=1" ;;
  tsan)
    preload="$(gcc -print-file-name=libtsan.so)"
    export TSAN_OPTIONS="halt_on_error=1:abort_on_error=1"
    # TSan runs a fiber switch at every barrier and is ~15x slower than ASan here: it
    # leaves out the tests whose kernel launches others repeat (forward-mode tangents come
    # from the reference, the kernels are test_parity's; opcheck checks the registration
    # on the op tests' kernels; the toolkit's fp32 twins of its fp64 cases). The coverage
    # check below still requires every kernel instantiation to run under TSan.
    skip=(--ignore=tests/test_forward_ad.py
          -k "not test_opcheck and not (test_feature_matches_reference and fp32)") ;;
  *) echo "unknown sanitizer $kind (asan or tsan)" >&2; exit 2 ;;
esac

# A sanitized run is one thread (conftest): the tests run in $shards processes at once,
# every shard-th test each (FUSEDRNN_TEST_SHARD), then the kernel-coverage check on the
# launches they logged. FUSEDRNN_SANITIZER_SHARDS sets the count (default: the cores).
shards="${FUSEDRNN_SANITIZER_SHARDS:-$(nproc)}"
logs="$(mktemp -d)"
trap 'rm -rf "$logs"' EXIT
sanitized() {
  FUSEDRNN_SIMT_SANITIZER="$kind" FUSEDRNN_SIMT_LIBRARY="$PWD/$library" \
    LD_PRELOAD="$preload $libstdcxx" "$py" -m pytest -q -p no:cacheprovider --capture=sys \
    -m "simt and not harness" "$@"
}
if [ "$#" -eq 0 ]; then args=(tests "${skip[@]}"); else args=("$@"); fi
echo "== simt tests under $kind, $shards shards"
pids=()
for ((k = 0; k < shards; k++)); do
  FUSEDRNN_TEST_SHARD="$k/$shards" FUSEDRNN_SIMT_LAUNCH_LOG="$logs/$k.json" \
    sanitized "${args[@]}" > "$logs/$k.out" 2>&1 &
  pids+=("$!")
done
failed=0
for ((k = 0; k < shards; k++)); do
  wait "${pids[$k]}" || failed=1
  echo "-- shard $k/$shards"; cat "$logs/$k.out"
done
[ "$failed" = 0 ] || { echo "a $kind shard failed" >&2; exit 1; }
if [ "$#" -eq 0 ]; then  # the whole suite ran: every kernel must have been launched
  echo "== every kernel launched under $kind"
  FUSEDRNN_SIMT_LAUNCH_LOGS="$(ls "$logs"/*.json | paste -sd:)" sanitized tests/test_simt_coverage.py
fi
