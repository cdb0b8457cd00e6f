#!/usr/bin/env bash
# shardserve against llama.cpp (llama-bench, llama-server) built from the
# llama-cpp-python 0.3.36 sdist, side by side in one run (bench/bench_peer.py).
#   bench/run_peer_bench.sh [--variant native|avx2] [bench_peer.py arguments...]
# Installs and builds what is missing (scripts/setup.sh, bench/llamacpp.sh),
# then prints the machine (lscpu model and flags), date, commit and command.
set -euo pipefail
cd "$(dirname "$0")/.."
variant=native
if [ "${1:-}" = "--variant" ]; then variant=$2; shift 2; fi
scripts/setup.sh >/dev/null
scripts/build.sh build >/dev/null
bin=$(bench/llamacpp.sh --variant "$variant")
commit="$(git rev-parse --short HEAD)"
git diff --quiet HEAD -- . ':!bench' 2>/dev/null || commit="$commit (+ uncommitted changes)"
echo "machine: $(lscpu | sed -n 's/^Model name:[[:space:]]*//p'), $(nproc) cores"
echo "flags:   $(grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -E '^(avx|avx2|fma|f16c|avx512f|avx512bw|avx512_vnni|avx512vnni|avx512_bf16)$' | tr '\n' ' ')"
echo "date:    $(date -u '+%Y-%m-%d %H:%M UTC')"
echo "commit:  shardserve $commit; llama.cpp from llama-cpp-python 0.3.36 ($variant build)"
echo "command: bench/run_peer_bench.sh --variant $variant $*"
exec .venv/bin/python bench/bench_peer.py --bin build/shardserve --llama-bin "$bin" "$@"
