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
    preload="$(gcc -print-file-name=libasan.so)"
    export ASAN_OPTIONS="detect_leaks=0:halt_on_error=1:abort_on_error=1"
    export UBSAN_OPTIONS="halt_on_error=1:abort_on_error=1:print_stacktrace=1" ;;
  tsan)
    preload="$(gcc -print-file-name=libtsan.so)"
    export TSAN_OPTIONS="halt_on_error=1:abort_on_error=1" ;;
  *) echo "unknown sanitizer $kind (asan or tsan)" >&2; exit 2 ;;
esac

echo "== simt tests under $kind"
FUSEDRNN_SIMT_SANITIZER="$kind" FUSEDRNN_SIMT_LIBRARY="$PWD/$library" LD_PRELOAD="$preload $libstdcxx" \
  "$py" -m pytest -q -p no:cacheprovider --capture=sys -m "simt and not harness" "${@:-tests}"
