#!/usr/bin/env bash
# CPU prefill/decode benchmark of shardserve against llama.cpp (via llama-cpp-python).
#
#   bench/run_cpu_bench.sh [bench_cpu.py arguments...]
#   e.g. bench/run_cpu_bench.sh --threads 1,2 --runs 5
#
# Idempotent: creates bench/.venv-llamacpp (git-ignored) with pinned numpy and
# llama-cpp-python the first time (llama-cpp-python compiles llama.cpp from source
# with -DGGML_NATIVE=ON, like our -march=native build: 10+ minutes on 2 cores),
# builds shardserve if needed, prints the machine, date and commit, then runs
# bench/bench_cpu.py with that venv, passing all arguments through.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

LLAMA_CPP_PYTHON_VERSION=0.3.36
NUMPY_VERSION=2.4.6
VENV=bench/.venv-llamacpp
PY="${PYTHON:-python3}"
JOBS="${JOBS:-2}"

have_llama_cpp() {
    [ -x "$VENV/bin/python" ] &&
        "$VENV/bin/python" - "$LLAMA_CPP_PYTHON_VERSION" "$NUMPY_VERSION" <<'EOF' 2>/dev/null
import sys, importlib.metadata as md
import numpy, llama_cpp
sys.exit(0 if (md.version("llama-cpp-python") == sys.argv[1]
               and md.version("numpy") == sys.argv[2]) else 1)
EOF
}

if ! have_llama_cpp; then
    echo "== setting up $VENV (llama-cpp-python $LLAMA_CPP_PYTHON_VERSION, built from source)" >&2
    [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
    CMAKE_ARGS="-DGGML_NATIVE=ON" CMAKE_BUILD_PARALLEL_LEVEL="$JOBS" \
        "$VENV/bin/pip" install --no-cache-dir \
        "numpy==$NUMPY_VERSION" "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION" >&2
    have_llama_cpp || { echo "llama-cpp-python setup failed" >&2; exit 1; }
fi

if [ ! -f build/CMakeCache.txt ]; then
    cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
fi
cmake --build build -j"$JOBS" >/dev/null

commit="$(git rev-parse --short HEAD)"
git diff --quiet HEAD -- . ':!bench' 2>/dev/null || commit="$commit (+ uncommitted changes)"
echo "machine: $(lscpu | sed -n 's/^Model name:[[:space:]]*//p'), $(nproc) cores ($(uname -sm))"
echo "date:    $(date -u '+%Y-%m-%d %H:%M UTC')"
echo "commit:  shardserve $commit"
echo "llama-cpp-python: $("$VENV/bin/python" -c 'import llama_cpp; print(llama_cpp.__version__)')"
echo "command: bench/run_cpu_bench.sh $*"

exec "$VENV/bin/python" bench/bench_cpu.py "$@"
