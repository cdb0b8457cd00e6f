#!/usr/bin/env bash
# The main job on the default model: installs what is missing, builds, and
# answers a prompt with SmolLM2-135M-Instruct.
# Usage: scripts/run.sh ["PROMPT" [more shardserve generate flags...]]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build.sh build >/dev/null
prompt=${1:-"Write a short paragraph about why the sky is blue."}
shift || true
exec build/shardserve generate --model models/SmolLM2-135M-Instruct.Q4_1.gguf --chat \
  --prompt "$prompt" -n 200 --temp 0.3 --seed 42 "$@"
