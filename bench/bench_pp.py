"""Serving throughput under pipeline parallelism: PP 1, PP 2 with and without
micro-batches in flight, and PP 4, with the same total cores.

For each layout a server is started (`shardserve serve`, `--threads` per rank
chosen so that threads x ranks = the cores given, at least 1 per rank: PP 4 on
2 cores has 4 ranks of 1 thread, oversubscribed), then `shardserve loadgen`
runs a closed loop of C users over N requests (random token-id prompts of
--input-len, --output-len tokens each, ignore_eos, seeded: the same requests
for every layout).  Each layout is measured R times (the layouts alternate
within a repeat, the server restarted each time); the output tokens/s of each
run come from loadgen's result file.  Printed: median [min, max] per layout
and its ratio to PP 1's median, as a Markdown table.

Usage: python bench/bench_pp.py [--bin build/shardserve] [--model M] [--cores 2]
           [--layouts pp1,pp2,pp2x1,pp4] (also pp1t1: one rank of 1 thread) [--concurrency 32] [--requests 64]
           [--input-len 32] [--output-len 32] [--repeats 3]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "lib"))
from server import Server  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--bin", default="build/shardserve")
ap.add_argument("--model", default="models/SmolLM2-135M-Instruct.Q4_1.gguf")
ap.add_argument("--cores", type=int, default=2, help="threads x ranks of every layout")
ap.add_argument("--layouts", default="pp1,pp2,pp2x1,pp4")
ap.add_argument("--concurrency", type=int, default=32)
ap.add_argument("--requests", type=int, default=64)
ap.add_argument("--input-len", type=int, default=32)
ap.add_argument("--output-len", type=int, default=32)
ap.add_argument("--repeats", type=int, default=3)
a = ap.parse_args()

# name: (stages, micro-batches flag or None for the default, label)
LAYOUTS = {
    "pp1": (1, None, "PP 1"),
    "pp1t1": (1, None, "PP 1, 1 thread (reference: half the cores)"),
    "pp2": (2, None, "PP 2, 2 micro-batches (default)"),
    "pp2x1": (2, 1, "PP 2, --pp-microbatches 1"),
    "pp4": (4, None, "PP 4, 4 micro-batches (default)"),
}
names = a.layouts.split(",")
for n in names:
    if n not in LAYOUTS:
        sys.exit(f"bench_pp: unknown layout {n!r}; choose from {','.join(LAYOUTS)}")


def measure(name, tmp):
    pp, mb, _ = LAYOUTS[name]
    threads = 1 if name == "pp1t1" else max(1, a.cores // pp)
    extra = ["--threads", str(threads), "--max-num-seqs", str(max(32, a.concurrency))]
    if pp > 1:
        extra += ["--pp", str(pp), "--tp", "1"]
    if mb is not None:
        extra += ["--pp-microbatches", str(mb)]
    srv = Server(a.bin, a.model, tp=pp, extra=extra)
    out = os.path.join(tmp, f"{name}.json")
    try:
        cmd = [a.bin, "loadgen", "--url", srv.url, "--max-concurrency", str(a.concurrency),
               "--num-prompts", str(a.requests), "--random-input-len", str(a.input_len),
               "--random-output-len", str(a.output_len), "--tokenizer-model", a.model,
               "--seed", "0", "--save-result", out]
        p = subprocess.run(cmd, capture_output=True, timeout=1800)
        if p.returncode != 0:
            sys.exit(f"bench_pp: loadgen failed on {name}: {p.stderr.decode()[-1500:]}")
        with open(out) as f:
            r = json.load(f)
    finally:
        srv.stop()
    if r.get("completed") != a.requests:
        sys.exit(f"bench_pp: {name}: {r.get('completed')} of {a.requests} requests completed")
    return r["output_throughput"], threads


runs = {n: [] for n in names}
threads_of = {}
with tempfile.TemporaryDirectory(prefix="ss-benchpp-") as tmp:
    for rep in range(a.repeats):
        for n in names:
            tps, threads_of[n] = measure(n, tmp)
            runs[n].append(tps)
            print(f"repeat {rep + 1}: {LAYOUTS[n][2]}: {tps:.1f} output tok/s", flush=True)

base = statistics.median(runs["pp1"]) if "pp1" in runs else None
print()
print("| layout | ranks x threads | output tok/s median | min | max | vs PP 1 |")
print("|---|---|---|---|---|---|")
for n in names:
    med = statistics.median(runs[n])
    ratio = f"{med / base:.2f}x" if base else "-"
    print(f"| {LAYOUTS[n][2]} | {LAYOUTS[n][0]} x {threads_of[n]} | {med:.1f} | "
          f"{min(runs[n]):.1f} | {max(runs[n]):.1f} | {ratio} |")
