#!/usr/bin/env bash
# Prefix caching on and off: starts `shardserve serve` with and without
# --no-prefix-caching on the default model, runs loadgen's prefix_repetition
# workload (8 prefixes x 1,000 tokens, 16 requests each, 32-token suffixes)
# REPEATS times each and prints p50 TTFT, output tok/s and the prefix-cache hit
# rate: the median and the spread (min..max) over the repeats.
# Usage: bench/prefix_cache.sh [BUILD_DIR [MODEL]]
#   env: REPEATS (3), PREFIXES (8), PREFIX_LEN (1000), PER_PREFIX (16),
#        SUFFIX_LEN (32), OUTPUT_LEN (8), CONCURRENCY (8), THREADS (the server's, 2),
#        PYTHON (.venv/bin/python), MODES ("on off": which servers to run),
#        PROFILE (a hardware profile from `shardserve profile -t THREADS`: then the
#        planner's prediction for the same workload is printed beside each mode)
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
model=${2:-models/SmolLM2-135M-Instruct.Q4_1.gguf}
py=${PYTHON:-.venv/bin/python}
[ -x "$build/shardserve" ] || { echo "prefix_cache.sh: no $build/shardserve (build first)" >&2; exit 1; }
[ -f "$model" ] || { echo "prefix_cache.sh: no model $model" >&2; exit 1; }
exec "$py" - "$build/shardserve" "$model" <<'PY'
import json, os, statistics, subprocess, sys, tempfile
sys.path.insert(0, os.path.join("tests", "lib"))
from server import Server

binary, model = sys.argv[1], sys.argv[2]
env = lambda k, d: int(os.environ.get(k, d))
repeats, prefixes, per = env("REPEATS", 3), env("PREFIXES", 8), env("PER_PREFIX", 16)
tmp = tempfile.mkdtemp(prefix="ss-prefix-bench-")
rows = []
# The workload, in the flag names loadgen and plan share.
workload = ["--dataset-name", "prefix_repetition", "--num-prompts", str(prefixes * per),
            "--prefix-repetition-num-prefixes", str(prefixes),
            "--prefix-repetition-prefix-len", os.environ.get("PREFIX_LEN", "1000"),
            "--prefix-repetition-suffix-len", os.environ.get("SUFFIX_LEN", "32"),
            "--prefix-repetition-output-len", os.environ.get("OUTPUT_LEN", "8"),
            "--max-concurrency", os.environ.get("CONCURRENCY", "8")]
modes = os.environ.get("MODES", "on off").split()
for caching in [m == "on" for m in modes]:
    extra = ["--threads", os.environ.get("THREADS", "2")]
    srv = Server(binary, model, extra=extra + ([] if caching else ["--no-prefix-caching"]))
    runs = []
    try:
        for k in range(repeats):
            out = os.path.join(tmp, f"{'on' if caching else 'off'}-{k}.json")
            subprocess.run([binary, "loadgen", "--url", srv.url, "--tokenizer-model", model,
                            *workload, "--seed", str(k), "--no-progress", "--save-result", out],
                           check=True, stdout=subprocess.DEVNULL)
            runs.append(json.load(open(out)))
    finally:
        srv.stop()
    rows.append(("on" if caching else "off", runs))

def cell(vals, fmt):
    return f"{fmt.format(statistics.median(vals))} ({fmt.format(min(vals))}..{fmt.format(max(vals))})"

print(f"prefix caching, {prefixes} prefixes x {per} requests, {repeats} repeats: median (min..max)")
print(f"{'caching':8} {'p50 TTFT ms':28} {'output tok/s':28} {'hit rate %':24}")
for name, runs in rows:
    hit = [100 * (r["prefix_cache_hit_rate"] or 0) for r in runs]
    print(f"{name:8} {cell([r['median_ttft_ms'] for r in runs], '{:.1f}'):28} "
          f"{cell([r['output_throughput'] for r in runs], '{:.1f}'):28} {cell(hit, '{:.1f}'):24}")
profile = os.environ.get("PROFILE")
if profile:
    print(f"planner (plan --hardware {profile}), the same workload and seeds:")
    for name, runs in rows:
        sims = []
        for k in range(len(runs)):
            cmd = [binary, "plan", "--model", model, "--tp", "1", "--hardware", profile, "--json",
                   *workload, "--seed", str(k)]
            if name == "off":
                cmd.append("--no-prefix-caching")
            sims.append(json.loads(subprocess.run(cmd, check=True, capture_output=True,
                                                  text=True).stdout)["simulation"])
        hit = [100 * s["prefix_cache_hit_rate"] for s in sims]
        print(f"{name:8} {cell([s['median_ttft_ms'] for s in sims], '{:.1f}'):28} "
              f"{cell([s['output_throughput'] for s in sims], '{:.1f}'):28} "
              f"{cell(hit, '{:.1f}'):24}")
PY
