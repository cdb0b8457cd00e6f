"""Serving throughput: output tokens/s at concurrency 1, 8, 32, 64, against
the same requests run one at a time, at TP = 1 and TP = 2.

For each TP a server is started (`shardserve serve`, 1 thread per rank); the
same N requests (random 32-token prompts from a fixed seed, max_tokens M,
ignore_eos, greedy, streamed) are sent by C closed-loop client threads.
Output tok/s = output tokens / wall time of the batch of N.  Each level is
repeated R times, alternating levels within a repeat; median [min, max].

Usage: python bench/bench_serve.py [--bin build/shardserve] [--model M]
           [--tps 1,2] [--conc 1,8,32,64] [--requests 64] [--max-tokens 32] [--repeats 3]
"""
import argparse
import http.client
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "lib"))
from server import Server  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--bin", default="build/shardserve")
ap.add_argument("--model", default="models/SmolLM2-135M-Instruct.Q4_1.gguf")
ap.add_argument("--tps", default="1,2")
ap.add_argument("--conc", default="1,8,32,64")
ap.add_argument("--requests", type=int, default=64)
ap.add_argument("--max-tokens", type=int, default=32)
ap.add_argument("--repeats", type=int, default=3)
a = ap.parse_args()

rnd = random.Random(0)
prompts = [[rnd.randrange(100, 40000) for _ in range(32)] for _ in range(a.requests)]


def one(port, ids):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    body = json.dumps({"prompt": ids, "max_tokens": a.max_tokens, "temperature": 0,
                       "ignore_eos": True, "stream": True,
                       "stream_options": {"include_usage": True}})
    conn.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
    r = conn.getresponse()
    n = 0
    for line in r:
        if line.startswith(b"data: {") and b'"usage":{' in line:
            n = json.loads(line[6:])["usage"]["completion_tokens"]
    conn.close()
    return n


def run(port, conc):
    todo = list(range(len(prompts)))
    lock = threading.Lock()
    total = [0]

    def worker():
        while True:
            with lock:
                if not todo:
                    return
                i = todo.pop(0)
            n = one(port, prompts[i])
            with lock:
                total[0] += n

    t0 = time.time()
    threads = [threading.Thread(target=worker) for _ in range(conc)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    dt = time.time() - t0
    if total[0] != len(prompts) * a.max_tokens:
        sys.exit(f"expected {len(prompts) * a.max_tokens} tokens, got {total[0]}")
    return total[0] / dt


concs = [int(c) for c in a.conc.split(",")]
rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")),
           platform.processor())
print(f"machine: {cpu}, {os.cpu_count()} cores; commit {rev}; {a.requests} requests of 32 prompt "
      f"tokens + {a.max_tokens} output tokens; {a.repeats} repeats; 1 thread per rank")
print("| TP | concurrency | output tok/s median | min | max | vs sequential |")
print("|---|---|---|---|---|---|")
for tp in (int(t) for t in a.tps.split(",")):
    srv = Server(a.bin, a.model, tp=tp, extra=["--max-num-seqs", str(max(concs))])
    try:
        run(srv.port, 8)  # warm-up
        res = {c: [] for c in concs}
        for _ in range(a.repeats):
            for c in concs:
                res[c].append(run(srv.port, c))
                print(f"tp {tp} conc {c}: {res[c][-1]:.1f} tok/s", file=sys.stderr, flush=True)
        seq = statistics.median(res[concs[0]])
        for c in concs:
            v = res[c]
            print(f"| {tp} | {c} | {statistics.median(v):.1f} | {min(v):.1f} | {max(v):.1f} | "
                  f"{statistics.median(v) / seq:.2f}x |", flush=True)
    finally:
        srv.stop()
