"""Decode speed at TP = 1 (1 thread) against TP = 2 (1 thread per rank) on the
same model, alternating run by run so machine noise hits both alike.

Each run: `shardserve generate --prompt-ids <64 ids> -n GEN --temp 0
--ignore-eos --threads 1 --profile`, launched over TP ranks by `shardserve
launch`.  Reports decode tok/s (median, min, max), the speed-up of the
medians, and the per-step compute / comm / idle split of every rank (medians).

Usage: python bench/bench_tp.py [--bin build/shardserve] [--model M] [--runs 5]
           [--gen 128] [--tps 1,2]
"""
import argparse
import os
import platform
import random
import re
import statistics
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "lib"))
from mpi import launch_cmd, mpi_env  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--bin", default="build/shardserve")
ap.add_argument("--model", default="models/SmolLM2-135M-Instruct.Q4_1.gguf")
ap.add_argument("--runs", type=int, default=5)
ap.add_argument("--gen", type=int, default=128)
ap.add_argument("--tps", default="1,2")
ap.add_argument("--extra", default="", help="more generate flags, space-separated")
a = ap.parse_args()

rnd = random.Random(0)
prompt = ",".join(str(rnd.randrange(100, 40000)) for _ in range(64))
STATS = re.compile(r"decode ([0-9.]+) tok/s")
PROF = re.compile(r"\[profile\]\s+(\d+)\s+(\d+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)")
tps = [int(t) for t in a.tps.split(",")]
speed = {tp: [] for tp in tps}
prof = {tp: {} for tp in tps}
for run in range(a.runs):
    for tp in tps:
        cmd = launch_cmd(a.bin, tp, ["generate", "--model", a.model, "--prompt-ids", prompt,
                                     "-n", str(a.gen), "--temp", "0", "--ignore-eos",
                                     "--threads", "1", "--profile", *a.extra.split()])
        p = subprocess.run(cmd, capture_output=True, text=True, env=mpi_env(), timeout=600)
        m = STATS.search(p.stderr)
        if p.returncode != 0 or not m:
            sys.exit(f"tp {tp} failed ({p.returncode}):\n{p.stderr[-2000:]}")
        speed[tp].append(float(m.group(1)))
        for r, steps, comp, comm, idle in PROF.findall(p.stderr):
            prof[tp].setdefault(int(r), []).append((float(comp), float(comm), float(idle)))
        print(f"run {run} tp {tp}: decode {speed[tp][-1]:.1f} tok/s", file=sys.stderr, flush=True)

rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
print(f"machine: {cpu}, {os.cpu_count()} cores; commit {rev}; model {os.path.basename(a.model)}; "
      f"{a.runs} runs, {a.gen} decode tokens after a 64-token prompt, 1 thread per rank")
print("| TP | decode tok/s median | min | max | speed-up vs TP 1 |")
print("|---|---|---|---|---|")
base = statistics.median(speed[tps[0]])
for tp in tps:
    s = speed[tp]
    print(f"| {tp} | {statistics.median(s):.1f} | {min(s):.1f} | {max(s):.1f} | "
          f"{statistics.median(s) / base:.2f}x |")
print()
print("| TP | rank | compute ms/step | comm ms/step | idle ms/step |  (medians over runs; steps include prefill)")
print("|---|---|---|---|---|")
for tp in tps:
    for r in sorted(prof[tp]):
        v = prof[tp][r]
        print(f"| {tp} | {r} | {statistics.median(x[0] for x in v):.3f} | "
              f"{statistics.median(x[1] for x in v):.3f} | {statistics.median(x[2] for x in v):.3f} |")
