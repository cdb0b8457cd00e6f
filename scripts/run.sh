#!/usr/bin/env bash
# The main job on the default model: installs what is missing, builds, starts the
# OpenAI-compatible server with SmolLM2-135M-Instruct split over 2 MPI ranks
# (tensor parallelism), asks it one question to show it works, then keeps serving
# until Ctrl-C (a graceful drain).
# Usage: scripts/run.sh ["QUESTION"] [--once] [--tp N] [--port P]
#   --once   stop the server after the answer
set -euo pipefail
cd "$(dirname "$0")/.."
question="Why is the sky blue? Answer in two sentences."
once=0
tp=2
port=8000
while [ $# -gt 0 ]; do
  case "$1" in
    --once) once=1 ;;
    --tp) tp=$2; shift ;;
    --port) port=$2; shift ;;
    -*) echo "run.sh: unknown option '$1' (known: --once, --tp N, --port P)" >&2; exit 2 ;;
    *) question=$1 ;;
  esac
  shift
done
scripts/setup.sh
scripts/build.sh build >/dev/null
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
build/shardserve launch --tp "$tp" -- serve --model models/SmolLM2-135M-Instruct.Q4_1.gguf \
  --port "$port" &
job=$!

# Rank 0 (the process listening on the port) drains on SIGTERM and stops the others.
rank0() {
  for p in $(pgrep -P "$job" 2>/dev/null) "$job"; do
    if tr '\0' '\n' < "/proc/$p/environ" 2>/dev/null | grep -qx 'OMPI_COMM_WORLD_RANK=0'; then
      echo "$p"; return
    fi
  done
  echo "$job"
}
stop() { kill -TERM "$(rank0)" 2>/dev/null || true; wait "$job" || true; }
trap 'stop; exit 0' INT TERM

for _ in $(seq 1 600); do
  curl -sf "http://127.0.0.1:$port/health" >/dev/null 2>&1 && break
  kill -0 "$job" 2>/dev/null || { echo "run.sh: the server exited" >&2; exit 1; }
  sleep 0.2
done
body=$(.venv/bin/python -c 'import json,sys; print(json.dumps({"messages":[{"role":"user","content":sys.argv[1]}],"max_tokens":120,"temperature":0.3,"seed":42}))' "$question")
echo "Q: $question"
printf 'A: '
curl -sS "http://127.0.0.1:$port/v1/chat/completions" -H 'Content-Type: application/json' -d "$body" |
  .venv/bin/python -c 'import json,sys; r=json.load(sys.stdin); print(r["choices"][0]["message"]["content"] if "choices" in r else r)'
if [ "$once" -eq 1 ]; then
  stop
  exit 0
fi
echo "Serving SmolLM2-135M-Instruct at http://127.0.0.1:$port/v1 (tp $tp). Ctrl-C stops it."
wait "$job"
