#!/usr/bin/env python3
"""MoE decode on the CPU: bytes of weights read per token against the active
parameters, and expert parallelism against TP inside experts at 2 ranks.

The model is a synthetic grok-1-family checkpoint (tests/reference/
make_tiny_hf.py): hidden 1024, 8 layers, 16 query heads of 64, 4 KV heads,
8 experts of width 2048, top-2, BF16, the 32000-token SentencePiece test
vocabulary (tied embedding), about 0.94 GB.

Bytes read are counted by the engine: every matmul adds its weight matrix's
bytes to a per-rank counter (runtime/model/model_forward.c, ss_model_count_read),
experts separately; `generate --profile` prints them per step.  Every step
here is one token (a 1-token prompt, then decode), so per step = per token.
(/proc/self/io cannot see these reads: the weights are mapped and served from
the page cache.)  The figures are compared with the plan's: the router, 2 of
8 experts and everything else per layer, i.e. the active parameters, against
all 8 experts.

    .venv/bin/python bench/bench_moe.py [--dir /tmp/ss-bench-moe] [--tokens 64] [--reps 3]
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests", "reference"))
sys.path.insert(0, os.path.join(ROOT, "tests", "lib"))
import make_tiny_hf  # noqa: E402
from mpi import launch_cmd, mpi_env  # noqa: E402

SHAPE = dict(hidden=1024, layers=8, heads=16, kv_heads=4, head_dim=64, experts=8, expert_ffn=2048)

ap = argparse.ArgumentParser()
ap.add_argument("--bin", default=os.path.join(ROOT, "build", "shardserve"))
ap.add_argument("--dir", default="/tmp/ss-bench-moe")
ap.add_argument("--tokens", type=int, default=64)
ap.add_argument("--reps", type=int, default=3)
a = ap.parse_args()

if not os.path.exists(os.path.join(a.dir, "config.json")):
    print(f"writing the synthetic checkpoint to {a.dir} ...", flush=True)
    make_tiny_hf.make("grok-1", a.dir, dtype="bf16", seed=7, **SHAPE)

plan = json.loads(subprocess.run([a.bin, "plan", "--model", a.dir, "--tp", "1", "--json"],
                                 check=True, capture_output=True).stdout)
L, E, K = plan["config"]["layers"], plan["experts"], plan["experts_per_token"]
expert_b = plan["expert_bytes"]
file_b = plan["file_weight_bytes"]
MiB = 2 ** 20
print(f"model: {a.dir}: {plan['params'] / 1e6:.1f}M parameters, {plan['active_params'] / 1e6:.1f}M "
      f"active; {E} experts top-{K} of {expert_b / MiB:.2f} MiB each per layer, {L} layers")

PROFILE_RE = re.compile(r"\[profile\]\s+(\d+)\s+(\d+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+[\d.]+\s+[\d.]+ "
                        r"\([\d.]+ \+ [\d.]+\)\s+([\d.]+) \(([\d.]+)\)")
STATS_RE = re.compile(r"decode ([\d.]+) tok/s \((\d+) steps, ([\d.]+) ms\)")


def run(ranks, ep, threads):
    args = ["generate", "--model", a.dir, "--prompt-ids", "1", "-n", str(a.tokens), "--temp", "0",
            "--ignore-eos", "--profile", "--threads", str(threads)] + (["--ep", str(ranks)] if ep else [])
    p = subprocess.run(launch_cmd(a.bin, ranks, args), capture_output=True, env=mpi_env(), timeout=900)
    err = p.stderr.decode()
    if p.returncode != 0:
        sys.exit(f"failed: {err[-2000:]}")
    rows = [(int(r), float(c), float(m), float(rd) * MiB, float(ex) * MiB)
            for r, _, c, m, _, rd, ex in PROFILE_RE.findall(err)]
    tps, steps, ms = STATS_RE.search(err).groups()
    return float(ms) / int(steps), rows


# ---- 1. bytes read per token (one rank) ---------------------------------------
ms1, rows = run(1, False, 2)
_, _, _, read_b, exp_read_b = rows[0]
active_exp = K * expert_b * L
all_exp = E * expert_b * L
active_b = plan["active_params"] * 2  # BF16: 2 bytes per parameter
print("\n1 rank, bytes of weights read per token (engine counter):")
print(f"  experts   {exp_read_b / MiB:9.2f} MiB  vs active {K} x {L} x {expert_b / MiB:.2f} = "
      f"{active_exp / MiB:.2f} MiB (ratio {exp_read_b / active_exp:.3f}); all {E} experts would be "
      f"{all_exp / MiB:.2f} MiB")
print(f"  all       {read_b / MiB:9.2f} MiB  vs active parameters x 2 B = {active_b / MiB:.2f} MiB "
      f"(ratio {read_b / active_b:.3f}); every weight: {file_b['total'] / MiB:.2f} MiB")

# ---- 2. EP vs TP inside experts at 2 ranks -------------------------------------
print(f"\n2 ranks, 1 thread each, {a.tokens} one-token steps, {a.reps} runs each (median [min, max]):")
results = {}
for rep in range(a.reps):
    for name, ep in (("TP inside experts", False), ("EP (4 + 4 experts)", True)):
        ms, rows = run(2, ep, 1)
        results.setdefault(name, []).append((ms, rows))
for name, runs in results.items():
    ms = [r[0] for r in runs]
    comp = [max(x[1] for x in r[1]) for r in runs]
    comm = [max(x[2] for x in r[1]) for r in runs]
    exp0 = statistics.median(r[1][0][4] for r in runs) / MiB
    exp1 = statistics.median(r[1][1][4] for r in runs) / MiB
    print(f"  {name:20s} step {statistics.median(ms):7.2f} ms [{min(ms):.2f}, {max(ms):.2f}]  "
          f"compute (slowest rank) {statistics.median(comp):.2f} ms  comm {statistics.median(comm):.2f} ms  "
          f"experts read/step rank 0 {exp0:.2f} MiB, rank 1 {exp1:.2f} MiB")
print(f"  (1 rank, 2 threads: {ms1:.2f} ms per step)")
