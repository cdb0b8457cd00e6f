#!/usr/bin/env bash
# Builds the libFuzzer targets (clang, -fsanitize=fuzzer,address,undefined)
# in a build folder of their own and runs each for SECONDS on one core, over a
# working corpus seeded from tests/fuzz/corpus/<t> and tests/fuzz/regress/<t>.
# Any crash, sanitizer report, leak or timeout fails the run, and the input
# that caused it is printed (and kept under BUILD/fuzz-out/<t>/artifacts).
# The last line of each target's output is its summary (runs, cov, ft).
# Usage: tests/fuzz/run.sh [SECONDS [TARGET...]]   (default 20 s, every target)
# Env: SS_FUZZ_BUILD (default build-fuzz), SS_FUZZ_JOBS (build jobs, default nproc)
set -euo pipefail
cd "$(dirname "$0")/../.."
secs=${1:-20}
shift || true
build=${SS_FUZZ_BUILD:-build-fuzz}
command -v clang >/dev/null || { echo "fuzz: clang not found (scripts/setup.sh installs it)" >&2; exit 1; }

cmake -S . -B "$build" -DCMAKE_C_COMPILER=clang -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSS_FUZZ=ON \
  -DSS_BUILD_TESTS=OFF -DSS_CUDA=OFF >/dev/null
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(gguf safetensors safetensors_index tokenizer jinja grammar)
  grep -q '^server=ON' "$build/ss_features.txt" && targets+=(http oai)
fi
cmake --build "$build" -j "${SS_FUZZ_JOBS:-$(nproc)}" --target "${targets[@]/#/fuzz_}" >/dev/null

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
failed=()
for t in "${targets[@]}"; do
  out="$build/fuzz-out/$t"
  mkdir -p "$out/corpus" "$out/artifacts"
  seeds=(tests/fuzz/corpus/"$t")
  [ -d tests/fuzz/regress/"$t" ] && seeds+=(tests/fuzz/regress/"$t")
  dict=()
  [ -f tests/fuzz/dict/"$t".dict ] && dict=(-dict=tests/fuzz/dict/"$t".dict)
  echo "== fuzz $t: ${secs} s =="
  set +e
  "$build/tests/fuzz/fuzz_$t" -max_total_time="$secs" -timeout=25 -rss_limit_mb=2048 \
    -max_len=65536 -print_final_stats=1 "${dict[@]}" -artifact_prefix="$out/artifacts/" \
    "$out/corpus" "${seeds[@]}" >"$out/log" 2>&1
  rc=$?
  set -e
  summary=$(grep -E '^#[0-9]+[[:space:]]+(DONE|REDUCE|NEW|pulse|INITED)' "$out/log" | tail -1 || true)
  runs=$(grep -E '^stat::number_of_executed_units' "$out/log" | awk '{print $2}' || true)
  echo "fuzz $t: rc=$rc runs=${runs:-?} ${summary}"
  if [ $rc -ne 0 ]; then
    failed+=("$t")
    grep -E 'ERROR|runtime error|fuzz invariant|Test unit written|SUMMARY' "$out/log" | head -20
    tail -40 "$out/log"
    for f in "$out"/artifacts/*; do
      [ -f "$f" ] || continue
      echo "-- crashing input $f ($(stat -c %s "$f") bytes), base64:"
      base64 -w 100 "$f" | head -40
    done
  fi
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: FAILED: ${failed[*]} (keep each input under tests/fuzz/regress/<target>/ once fixed)"
  exit 1
fi
echo "fuzz: every target ran ${secs} s without a finding"
