#!/usr/bin/env bash
# GPU benchmark on an H100/H200 (or any CUDA GPU): builds with CUDA, writes a
# Llama-3-8B-shaped bf16 model with random weights (GGUF for shardserve,
# safetensors for PyTorch + transformers: the same weights), and runs
# bench/bench_gpu.py, which prints the table for bench/RESULTS.md.
# Needs no network.  Usage: bench/bench_gpu.sh [bench_gpu.py options...]
#   e.g. bench/bench_gpu.sh --preset llama-3-8b --batches 1,64,256 --prefill 2048
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x build-gpu/ss_bench_gpu ]; then
  cmake -S . -B build-gpu -DCMAKE_BUILD_TYPE=Release -DSS_CUDA=ON -DSS_BUILD_TESTS=OFF \
        -DCMAKE_CUDA_ARCHITECTURES="${CUDA_ARCHS:-90}" >/dev/null
  cmake --build build-gpu -j "$(nproc)" --target shardserve ss_bench_gpu
fi
py=python3
[ -x .venv/bin/python ] && py=.venv/bin/python
exec "$py" bench/bench_gpu.py --bin build-gpu/shardserve --bench build-gpu/ss_bench_gpu "$@"
