#!/usr/bin/env bash
# Soak: a TP 2 server under many concurrent connections for a long run, then
# its counters, KV usage and memory checked (bench/soak.py says what).
#
# Usage: bench/soak.sh [BUILD_DIR] [MODEL]
#   env: CONNECTIONS (1000), REQUESTS (10000), ABANDON (0.05), MAX_TOKENS (8),
#        TP (2), PORT (18500), KV_BLOCKS (1024; "" for serve's default pool)
# The KV pool's pages become resident as blocks are first written, and with
# prefix caching a freed block keeps its contents, so new blocks keep being
# taken until the whole pool has been used once: RSS grows with the requests
# served up to the pool's size without any memory being lost.  A pool small
# enough to be used up in the first fifth of the run (1,024 blocks of the tiny
# model are 8 MiB) makes the RSS check measure what the server keeps per
# request; with serve's default pool (64 MiB for the tiny model) the check
# measures the pool filling instead.
# MODEL defaults to a tiny random-weight model written with `shardserve synth`
# (the soak is about the server, not the forward pass); give a real GGUF to
# soak with it.  Prints one JSON line of figures; exits 1 when a check fails.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
model=${2:-}
bin=$build/shardserve
py=${PYTHON:-.venv/bin/python}
connections=${CONNECTIONS:-1000}
requests=${REQUESTS:-10000}
port=${PORT:-18500}
kv_blocks=${KV_BLOCKS-1024}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
if [[ -z $model ]]; then
  model=$tmp/tiny.gguf
  "$bin" synth --preset tiny -o "$model" >/dev/null
fi
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_btl=${OMPI_MCA_btl:-self,vader}
# 1,000 connections need as many descriptors in the client and the server.
ulimit -n 65536 2>/dev/null || ulimit -n 4096
"$bin" launch --tp "${TP:-2}" -- serve --model "$model" --port "$port" --threads 1 \
  --chat-template chatml --max-num-seqs 256 --max-waiting 4096 \
  ${kv_blocks:+--kv-blocks "$kv_blocks"} 2>"$tmp/server.err" &
launcher=$!
for _ in $(seq 1 600); do
  curl -sf "http://127.0.0.1:$port/health" >/dev/null 2>&1 && break
  kill -0 $launcher 2>/dev/null || { cat "$tmp/server.err"; exit 1; }
  sleep 0.2
done
# Rank 0 is the launcher's grandchild (launch -> mpirun -> ranks).
mpirun_pid=$(pgrep -P $launcher | head -1)
rank0=""
for p in $(pgrep -P "$mpirun_pid"); do
  if tr '\0' '\n' </proc/$p/environ | grep -qx 'OMPI_COMM_WORLD_RANK=0'; then rank0=$p; fi
done
echo "soak: $connections connections, $requests requests, server rank 0 pid $rank0," \
  "load $(cut -d' ' -f1-3 /proc/loadavg)" >&2
rc=0
"$py" bench/soak.py --url "http://127.0.0.1:$port" --connections "$connections" \
  --requests "$requests" --abandon "${ABANDON:-0.05}" --max-tokens "${MAX_TOKENS:-8}" \
  ${rank0:+--pid "$rank0"} || rc=$?
kill -TERM $launcher
wait $launcher || { echo "soak: the server's exit status was $?" >&2; rc=1; }
tail -5 "$tmp/server.err" >&2
exit $rc
