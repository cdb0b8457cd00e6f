"""Planner validation on this machine: predicted vs measured.

1. `shardserve profile` calibrates the cost model (at the TP and threads given).
2. For each workload (they differ in rate and lengths), the server is started
   with the same batching and KV pool, `shardserve loadgen` measures it, and
   `shardserve plan --hardware PROFILE` predicts it by simulating the same
   workload through the server's scheduler.
3. Prints output tok/s, median TTFT and median TPOT, predicted / measured, and
   whether each is within 15%.

Usage: python bench/validate_planner.py [--bin build/shardserve] [--model M]
           [--tp 1] [--threads 2] [--seed 1]
"""
import argparse
import json
import os
import platform
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "lib"))
from mpi import launch_cmd, mpi_env  # noqa: E402
from server import Server  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--bin", default="build/shardserve")
ap.add_argument("--model", default="models/SmolLM2-135M-Instruct.Q4_1.gguf")
ap.add_argument("--tp", type=int, default=1)
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--seed", type=int, default=1)
ap.add_argument("--out", default="bench/out")
a = ap.parse_args()
os.makedirs(a.out, exist_ok=True)

# (name, request rate, input len, output len, requests)
WORKLOADS = [
    ("light decode", 1.0, 64, 64, 40),
    ("batched chat", 4.0, 32, 32, 80),
    ("long prompts", 1.0, 192, 16, 40),
]
KV = "1G"

profile = os.path.join(a.out, f"profile-tp{a.tp}-t{a.threads}.json")
p = subprocess.run(launch_cmd(a.bin, a.tp, ["profile", "--model", a.model, "-t", str(a.threads),
                                            "-o", profile]),
                   capture_output=True, text=True, env=mpi_env(), timeout=900)
if p.returncode != 0:
    sys.exit(f"profile failed:\n{p.stderr[-3000:]}")
print(p.stderr.strip().splitlines()[0], file=sys.stderr)

rows = []
for name, rate, n_in, n_out, n in WORKLOADS:
    common = ["--request-rate", str(rate), "--num-prompts", str(n), "--random-input-len", str(n_in),
              "--random-output-len", str(n_out), "--seed", str(a.seed)]
    srv = Server(a.bin, a.model, tp=a.tp, extra=["--threads", str(a.threads), "--kv-mem", KV])
    try:
        res = os.path.join(a.out, f"loadgen-{name.replace(' ', '_')}.json")
        p = subprocess.run([a.bin, "loadgen", "--url", srv.url, *common, "--tokenizer-model", a.model,
                            "--save-result", res, "--no-progress"], capture_output=True, text=True,
                           timeout=1800)
        if p.returncode != 0:
            sys.exit(f"loadgen failed:\n{p.stderr[-2000:]}")
        meas = json.load(open(res))
    finally:
        srv.stop()
    p = subprocess.run([a.bin, "plan", "--model", a.model, "--tp", str(a.tp), "--hardware", profile,
                        "--kv-mem", KV, *common, "--json"], capture_output=True, text=True,
                       timeout=600)
    if p.returncode != 0:
        sys.exit(f"plan failed:\n{p.stderr[-2000:]}")
    pred = json.loads(p.stdout)["simulation"]
    for key, label in (("output_throughput", "output tok/s"), ("median_ttft_ms", "p50 TTFT ms"),
                       ("median_tpot_ms", "p50 TPOT ms")):
        m, q = meas[key], pred[key]
        rows.append((name, rate, n_in, n_out, label, q, m, q / m if m else float("inf")))
    print(f"{name}: done", file=sys.stderr, flush=True)

rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")),
           platform.processor())
print(f"machine: {cpu}, {os.cpu_count()} cores; commit {rev}; tp {a.tp}, {a.threads} threads per "
      f"rank; KV pool {KV}; seed {a.seed}")
print("| workload | rate req/s | in | out | metric | predicted | measured | predicted/measured | within 15% |")
print("|---|---|---|---|---|---|---|---|---|")
ok = 0
for name, rate, n_in, n_out, label, q, m, r in rows:
    good = abs(r - 1) <= 0.15
    ok += good
    print(f"| {name} | {rate:g} | {n_in} | {n_out} | {label} | {q:.2f} | {m:.2f} | {r:.3f} | "
          f"{'yes' if good else 'no'} |")
print(f"\n{ok} of {len(rows)} figures within 15%")
