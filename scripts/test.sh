#!/usr/bin/env bash
# The whole test suite: installs what is missing, builds, runs every test
# (unit, tokenizer vectors, reference logits, bad input, ...), then builds again
# with AddressSanitizer + UndefinedBehaviorSanitizer and runs the suite there.
# Usage: scripts/test.sh [--no-sanitize] [ctest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
sanitize=1
if [ "${1:-}" = "--no-sanitize" ]; then sanitize=0; shift; fi
scripts/setup.sh
# llama.cpp's llama-quantize makes the K-quant test files (built once into
# ~/.cache/shardserve; 10+ minutes the first time on 2 cores).
export SS_LLAMA_QUANTIZE="$(bench/llamacpp.sh --only-quantize)/llama-quantize"
# The AArch64 cross compiler, qemu-user and the arm64 libraries for the test
# that runs the AArch64 build under emulation (tests/aarch64/run.sh).
[ "$(uname -m)" = x86_64 ] && tests/aarch64/run.sh --install
jobs=$(nproc)

echo "== release build =="
scripts/build.sh build >/dev/null
(cd build && ctest --output-on-failure -j "$jobs" --timeout 1800 "$@")

# Every fuzz target for a short fixed time (clang, ASan + UBSan, one core each,
# its own build folder): a crash fails here with the input printed.
echo "== fuzz targets (15 s each) =="
SS_FUZZ_BUILD=build-fuzz tests/fuzz/run.sh 15

if [ "$sanitize" -eq 1 ]; then
  echo "== ASan + UBSan build =="
  scripts/build.sh build-asan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSS_SANITIZE=ON >/dev/null
  export ASAN_OPTIONS=detect_leaks=1:abort_on_error=0:halt_on_error=1
  # Open MPI keeps allocations past MPI_Finalize; only its own libraries are
  # suppressed (tests/lsan.supp), a leak in our code is still reported.
  export LSAN_OPTIONS=suppressions=$PWD/tests/lsan.supp:print_suppressions=0
  # ...which needs the modules Open MPI loads to stay mapped until the leak
  # check: once unloaded, their frames have no name to match.
  export OMPI_MCA_mca_base_component_disable_dlclose=1
  export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
  (cd build-asan && ctest --output-on-failure -j "$jobs" --timeout 3600 "$@")
fi
echo "== all tests passed =="
