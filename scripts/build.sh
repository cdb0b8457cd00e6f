#!/usr/bin/env bash
# Configures and builds shardserve.
# Usage: scripts/build.sh [BUILD_DIR [CMAKE_ARGS...]]   (default BUILD_DIR: build)
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-build}
shift || true
cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE=Release "$@" >/dev/null
cmake --build "$dir" -j "$(nproc)"
