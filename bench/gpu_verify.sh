#!/usr/bin/env bash
# One run that verifies the GPU path on a bare machine with one CUDA GPU (an
# H200) and no network, in about 8 minutes: builds (or uses a build dir),
# runs the CUDA kernel tests against the CPU (ctest -L gpu, NMSE), the CPU-vs-
# GPU end-to-end comparison on a synthetic llama and a synthetic Grok-shaped
# MoE model, the NCCL one-rank communicator tests (when the build has NCCL),
# and bench/bench_gpu.py.  Every log and figure goes to one folder ($OUT if
# set, else bench/out/gpu-verify-<date>), with summary.txt listing each check
# as PASS, FAIL or SKIP(reason).  It never stops at the first failure.
#
# Usage: bench/gpu_verify.sh [--dry-run] [--build-dir DIR] [--out DIR] [--budget S]
#   --dry-run      list the steps and check the tools they need; runs nothing
#   --build-dir    use (or make) this build; a carried build is used as is when
#                  it holds shardserve, test_cuda_kernels and ss_bench_gpu
#   --budget S     seconds for everything (default 470); each step also has
#                  its own limit and gets at most what is left
# Exit status: 0 every check passed (skips allowed), 1 a check failed,
# 3 a tool a step needs is missing, 4 no GPU (nothing was run).
# Headers and libraries the build needs that the machine lacks (no -dev
# packages there): `bench/gpu_verify.sh --pack-deps DIR` here copies them to
# DIR; carry DIR as .gpudeps in the repository root (README "GPUs").
set -uo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

dry=0
build=""
out="${OUT:-}"
budget=470
pack=""
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) dry=1 ;;
    --build-dir) build="$2"; shift ;;
    --out) out="$2"; shift ;;
    --budget) budget="$2"; shift ;;
    --pack-deps) pack="$2"; shift ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "gpu_verify: unknown option '$1' (see --help)" >&2; exit 2 ;;
  esac
  shift
done

# ---- --pack-deps: what the bare machine lacks, copied from this one ---------
if [ -n "$pack" ]; then
  mkdir -p "$pack/include" "$pack/lib"
  for h in jansson.h jansson_config.h pcre2.h cmocka.h unicase.h unictype.h uninorm.h unitypes.h \
           unistring; do
    f=$(echo | cc -xc -E -v - 2>&1 >/dev/null | sed -n 's/^ \(\/.*include.*\)$/\1/p' |
        while read -r d; do [ -e "$d/$h" ] && echo "$d/$h" && break; done)
    [ -n "$f" ] || { echo "gpu_verify: $h not found here" >&2; exit 3; }
    cp -rL "$f" "$pack/include/"
  done
  for l in libjansson.a libpcre2-8.a libunistring.a libcmocka.so.0; do
    f=$(cc -print-file-name="$l")
    [ -f "$f" ] || { echo "gpu_verify: $l not found here" >&2; exit 3; }
    cp -L "$f" "$pack/lib/"
  done
  ln -sf libcmocka.so.0 "$pack/lib/libcmocka.so"
  du -sh "$pack"
  exit 0
fi

[ -n "$build" ] || build="$root/build-gpu-verify"
case "$build" in /*) ;; *) build="$root/$build" ;; esac
[ -n "$out" ] || out="$root/bench/out/gpu-verify-$(date +%Y%m%d-%H%M%S)"
py=python3
[ -x "$root/.venv/bin/python" ] && "$root/.venv/bin/python" -c 'import sys' 2>/dev/null &&
  py="$root/.venv/bin/python"

# The steps, in order: name, what it needs, its own limit (s).
steps="build kernels e2e_llama e2e_grok nccl bench"
declare -A limit=([build]=260 [kernels]=90 [e2e_llama]=120 [e2e_grok]=90 [nccl]=60 [bench]=180)
declare -A what=(
  [build]="configure + build shardserve, test_cuda_kernels, ss_bench_gpu (CUDA, sm_90)"
  [kernels]="ctest -L gpu -E e2e: CUDA kernels vs the CPU by NMSE"
  [e2e_llama]="tests/gpu/test_cuda_e2e.py on a synthetic llama (f32, bf16, q8_0, q4_1)"
  [e2e_grok]="tests/gpu/test_cuda_e2e.py on a synthetic Grok-1-shaped MoE (SS_E2E_ARCH=grok-1)"
  [nccl]="ctest -L comm: the communicator tests, the NCCL backend at one rank"
  [bench]="bench/bench_gpu.py (figures in bench_gpu.json)")

have_build() { [ -x "$build/shardserve" ] && [ -x "$build/test_cuda_kernels" ] && [ -x "$build/ss_bench_gpu" ]; }

# Tools: what is missing, for the steps that need it.
missing=""
need() { command -v "$1" >/dev/null 2>&1 || missing="$missing $1($2)"; }
need timeout all
need "$py" "e2e,bench"
need nvidia-smi "gpu check"
if ! have_build; then
  need cmake build
  need cc build
  command -v nvcc >/dev/null 2>&1 || [ -x /usr/local/cuda/bin/nvcc ] || missing="$missing nvcc(build)"
fi
need ctest "kernels,nccl"

if [ $dry -eq 1 ]; then
  echo "gpu_verify: dry run; folder: $out; build: $build$(have_build && echo ' (present, used as is)')"
  echo "gpu_verify: budget ${budget} s; python: $py"
  for s in $steps; do printf '  %-10s %4s s  %s\n' "$s" "${limit[$s]}" "${what[$s]}"; done
  [ -d "$root/.gpudeps" ] && echo "gpu_verify: carried headers/libraries: .gpudeps"
  if [ -n "$missing" ]; then
    echo "gpu_verify: missing tools:$missing"
    exit 3
  fi
  echo "gpu_verify: every tool found"
  exit 0
fi

mkdir -p "$out"
summary="$out/summary.txt"
: >"$summary"
t_start=$(date +%s)
echo "gpu_verify: $(date -u +%FT%TZ) host $(hostname) build $build" >>"$summary"
failed=0
result() { # step status [reason]
  printf '%-10s %s\n' "$1" "$2${3:+ ($3)}" | tee -a "$summary"
  [ "$2" = FAIL ] && failed=1
  return 0
}

if [ -n "$missing" ]; then
  echo "missing tools:$missing" >>"$summary"
  echo "gpu_verify: missing tools:$missing (summary: $summary)" >&2
  exit 3
fi
if ! nvidia-smi -L >"$out/gpu.txt" 2>&1 || ! grep -q "^GPU " "$out/gpu.txt"; then
  echo "NO GPU: nvidia-smi -L lists none ($(head -c 200 "$out/gpu.txt" | tr '\n' ' '))" | tee -a "$summary" >&2
  exit 4
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader >>"$summary" 2>&1

# Runs step $1 under its limit (or what is left of the budget), logging to $2.
run_step() {
  local s=$1 log=$2; shift 2
  local left=$(( budget - ($(date +%s) - t_start) ))
  local lim=${limit[$s]}
  [ "$left" -lt "$lim" ] && lim=$left
  if [ "$lim" -lt 10 ]; then
    result "$s" SKIP "budget spent"
    return 2
  fi
  echo "==== $s: $* (limit ${lim} s)" >>"$log"
  local t0 rc
  t0=$(date +%s)
  timeout -k 5 "$lim" "$@" >>"$log" 2>&1
  rc=$?
  echo "==== $s: exit $rc after $(( $(date +%s) - t0 )) s" >>"$log"
  if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then result "$s" FAIL "timed out after ${lim} s, log $(basename "$log")"
  elif [ $rc -eq 77 ]; then result "$s" SKIP "$(grep -m1 -o 'SKIPPED: .*' "$log" || echo 'exit 77'), log $(basename "$log")"
  elif [ $rc -ne 0 ]; then result "$s" FAIL "exit $rc, log $(basename "$log")"
  else result "$s" PASS "$(( $(date +%s) - t0 )) s"
  fi
  return 0
}

# ---- build ----------------------------------------------------------------------
if have_build; then
  result build PASS "carried build used as is"
else
  nv=$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)
  prefix=""
  [ -d "$root/.gpudeps" ] && prefix="-DCMAKE_PREFIX_PATH=$root/.gpudeps"
  run_step build "$out/build.log" bash -c "cmake -S '$root' -B '$build' -DCMAKE_BUILD_TYPE=Release \
      -DSS_CUDA=ON -DCMAKE_CUDA_COMPILER='$nv' -DCMAKE_CUDA_ARCHITECTURES=90 -DSS_NATIVE=OFF \
      -DSS_PYTHON='$(command -v "$py")' $prefix && \
    cmake --build '$build' -j $(nproc) --target shardserve test_cuda_kernels ss_bench_gpu && \
    { cmake --build '$build' -j $(nproc) --target test_comm 2>/dev/null || true; }"
fi

if have_build; then
  run_step kernels "$out/tests.log" ctest --test-dir "$build" -L gpu -E e2e --output-on-failure
  run_step e2e_llama "$out/e2e.log" env PYTHONUNBUFFERED=1 "$py" tests/gpu/test_cuda_e2e.py \
    --bin "$build/shardserve" --data tests/data
  run_step e2e_grok "$out/e2e.log" env PYTHONUNBUFFERED=1 SS_E2E_ARCH=grok-1 "$py" \
    tests/gpu/test_cuda_e2e.py --bin "$build/shardserve" --data tests/data
  if grep -q "^comm=.*nccl" "$build/ss_features.txt" 2>/dev/null && [ -x "$build/test_comm" ]; then
    run_step nccl "$out/tests.log" env OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 \
      ctest --test-dir "$build" -L comm -R "np1|singleton" --output-on-failure
  else
    result nccl SKIP "this build has no NCCL backend (NCCL's bootstrap needs MPI, absent here)"
  fi
  models=/dev/shm/ss-gpu-verify
  [ -d /dev/shm ] && [ "$(df -Pk /dev/shm | awk 'NR==2{print $4}')" -gt 40000000 ] || models="$out/models"
  mkdir -p "$models"
  run_step bench "$out/bench.log" env PYTHONUNBUFFERED=1 "$py" bench/bench_gpu.py \
    --bin "$build/shardserve" --bench "$build/ss_bench_gpu" --dir "$models" \
    --json "$out/bench_gpu.json"
  rm -rf "$models"
else
  for s in kernels e2e_llama e2e_grok nccl bench; do result "$s" SKIP "no build"; done
fi

{
  echo "figures: $( [ -f "$out/bench_gpu.json" ] && echo bench_gpu.json || echo none)"
  [ -f "$out/bench.log" ] && tail -n 30 "$out/bench.log"
  echo "total $(( $(date +%s) - t_start )) s; $( [ $failed -eq 0 ] && echo 'no check failed' || echo 'FAILED')"
} >>"$summary"
cat "$summary"
exit $failed
