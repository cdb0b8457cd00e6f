"""Planner validation on this machine: predicted vs measured.

1. `shardserve profile` calibrates the cost model on an idle machine (at the TP
   and threads given): probes of decode and prefill steps.
2. A calibration load test (its own workload, not one of those validated) runs
   the server with --step-log; `plan --step-log ... --calibrate` scales the
   profile so the cost model matches what those steps took under serving load
   (the load generator and the HTTP thread share the machine) and saves it.
3. For each validation workload (they differ in rate and lengths) the server is
   started with the same batching and KV pool, `shardserve loadgen` measures it,
   and `shardserve plan --hardware CALIBRATED` predicts it by simulating the
   same workload through the server's scheduler.  Both use the same seed, so
   the simulated requests arrive at the very times the load generator sends
   them.
4. Prints output tok/s, median TTFT and median TPOT, predicted / measured, and
   whether each is within 15%; beside each, how far the predicted figure moves
   when every step costs 3% more or less (its sensitivity to the cost model:
   near capacity queueing amplifies step errors).  Then per workload how the
   cost model's step times compare with that run's own step log, and request
   by request (the simulation and the load test share arrival times) how the
   predicted TTFT and TPOT of each request compare with what it measured.

Usage: python bench/validate_planner.py [--bin build/shardserve] [--model M]
           [--tp 1] [--threads 1] [--seed 1]
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "lib"))
from mpi import launch_cmd, mpi_env  # noqa: E402
from server import Server  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--bin", default="build/shardserve")
ap.add_argument("--model", default="models/SmolLM2-135M-Instruct.Q4_1.gguf")
ap.add_argument("--tp", type=int, default=1)
# One thread per rank by default: on a 2-core machine the load generator needs
# the other core, and a spinning 2-thread pool that shares its cores with the
# client measures the contention rather than the server.
ap.add_argument("--threads", type=int, default=1)
ap.add_argument("--seed", type=int, default=1)
ap.add_argument("--out", default="bench/out")
a = ap.parse_args()
os.makedirs(a.out, exist_ok=True)

KV = "1G"
# (name, request rate, input len, output len, requests, server batching flags).
# Each is below the server's capacity on this machine (the planner says 35-90%
# busy): past it, queues grow for as long as the run lasts and median latencies
# measure the run's length more than the deployment.  Long prompts are
# prefilled in 64-token chunks.  A request whose decoding overlaps another's
# prefill has its TPOT raised by that whole prefill (~1.4 s over 31 gaps
# here), so per-request TPOTs cluster by how many prefills they overlap; the
# rate is low enough that most overlap none and the median sits inside a
# cluster.  (At 0.25 req/s about half overlap, the median falls between two
# clusters, and one request finishing 10 ms sooner or later moved it by 17%.)
CALIBRATION = ("calibration", 1.5, 48, 48, 40, [])
WORKLOADS = [
    ("light decode", 0.5, 64, 64, 40, []),
    ("busy decode", 1.0, 64, 64, 40, []),
    ("short chat", 2.0, 32, 32, 80, []),
    ("long prompts", 0.15, 256, 32, 30, ["--max-batched-tokens", "64"]),
]


def common_flags(rate, n_in, n_out, n):
    return ["--request-rate", str(rate), "--num-prompts", str(n), "--random-input-len", str(n_in),
            "--random-output-len", str(n_out), "--seed", str(a.seed)]


def load_test(name, rate, n_in, n_out, n, batching):
    """Runs the workload against a fresh server; returns (loadgen result, step log path)."""
    tag = name.replace(" ", "_")
    steps = os.path.join(a.out, f"steps-{tag}.csv")
    srv = Server(a.bin, a.model, tp=a.tp, extra=["--threads", str(a.threads), "--kv-mem", KV,
                                                 "--step-log", steps, *batching])
    try:
        res = os.path.join(a.out, f"loadgen-{tag}.json")
        p = subprocess.run([a.bin, "loadgen", "--url", srv.url, *common_flags(rate, n_in, n_out, n),
                            "--tokenizer-model", a.model, "--save-result", res, "--no-progress"],
                           capture_output=True, text=True, timeout=1800)
        if p.returncode != 0:
            sys.exit(f"loadgen failed:\n{p.stderr[-2000:]}")
        meas = json.load(open(res))
    finally:
        srv.stop()  # flushes the step log
    return meas, steps


def plan(hw, extra):
    p = subprocess.run([a.bin, "plan", "--model", a.model, "--tp", str(a.tp), "--hardware", hw,
                        "--kv-mem", KV, *extra, "--json"], capture_output=True, text=True,
                       timeout=600)
    if p.returncode != 0:
        sys.exit(f"plan failed:\n{p.stderr[-2000:]}")
    return json.loads(p.stdout)


# 1. Idle-machine probes.
profile = os.path.join(a.out, f"profile-tp{a.tp}-t{a.threads}.json")
p = subprocess.run(launch_cmd(a.bin, a.tp, ["profile", "--model", a.model, "-t", str(a.threads),
                                            "-o", profile]),
                   capture_output=True, text=True, env=mpi_env(), timeout=900)
if p.returncode != 0:
    sys.exit(f"profile failed:\n{p.stderr[-3000:]}")
print("\n".join(l for l in p.stderr.splitlines() if l.startswith("profile:"))[:2000], file=sys.stderr)

# 2. Calibration under serving load.
name, rate, n_in, n_out, n, batching = CALIBRATION
_, steps = load_test(*CALIBRATION)
calibrated = os.path.join(a.out, f"profile-tp{a.tp}-t{a.threads}-calibrated.json")
cal = plan(profile, ["--step-log", steps, "--calibrate", "--save-hardware", calibrated, *batching])
lf = cal["calibrated_load_factor"]
print(f"calibration ({rate} req/s, {n_in} in, {n_out} out): the idle probes predict "
      f"{cal['step_log']['all']['predicted_over_measured']:.3f} of the logged step time; "
      f"load factor {lf:.4f}", file=sys.stderr, flush=True)

# Copies of the calibrated profile with every step 3% cheaper / dearer.
scaled = {}
for f in (0.97, 1.03):
    prof = json.load(open(calibrated))
    prof["load_factor"] = prof.get("load_factor", 1.0) * f
    scaled[f] = os.path.join(a.out, f"profile-tp{a.tp}-t{a.threads}-calibrated-x{f}.json")
    json.dump(prof, open(scaled[f], "w"), indent=2)


def per_request(d):
    """(TTFT s, TPOT s) of each request, in arrival order (loadgen's and plan's arrays)."""
    return [(t, (l - t) / (o - 1) if o > 1 else 0.0)
            for t, l, o in zip(d["ttfts"], d["latencies"], d["output_lens"])]


# 3. Validation workloads.
rows, step_rows, req_rows = [], [], []
for name, rate, n_in, n_out, n, batching in WORKLOADS:
    meas, steps = load_test(name, rate, n_in, n_out, n, batching)
    flags = [*common_flags(rate, n_in, n_out, n), *batching]
    res = plan(calibrated, [*flags, "--step-log", steps, "--per-request"])
    pred = res["simulation"]
    moved = [plan(scaled[f], flags)["simulation"] for f in (0.97, 1.03)]
    sl = res["step_log"]["all"]
    step_rows.append((name, sl["steps"], sl["measured_s"], sl["predicted_over_measured"],
                      sl["median_ratio"]))
    for key, label in (("output_throughput", "output tok/s"), ("median_ttft_ms", "p50 TTFT ms"),
                       ("median_tpot_ms", "p50 TPOT ms")):
        m, q = meas[key], pred[key]
        sens = max(abs(x[key] / q - 1) for x in moved) if q else float("inf")
        rows.append((name, rate, n_in, n_out, label, q, m, q / m if m else float("inf"), sens))
    # Request by request: the same arrival times, so request i is the same
    # request in both (lengths are drawn alike; checked).
    if pred["input_lens"] != meas["input_lens"] or pred["output_lens"] != meas["output_lens"]:
        sys.exit(f"{name}: the simulated requests' lengths differ from the load test's")
    pr, mr = per_request(pred), per_request(meas)
    r_ttft = [p[0] / m[0] for p, m in zip(pr, mr)]
    r_tpot = [p[1] / m[1] for p, m in zip(pr, mr) if m[1] > 0]
    req_rows.append((name, len(pr), statistics.median(r_ttft),
                     sum(abs(r - 1) <= 0.15 for r in r_ttft), statistics.median(r_tpot),
                     sum(abs(r - 1) <= 0.15 for r in r_tpot), len(r_tpot)))
    print(f"{name}: done", file=sys.stderr, flush=True)

rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")),
           platform.processor())
print(f"machine: {cpu}, {os.cpu_count()} cores; commit {rev}; tp {a.tp}, {a.threads} threads per "
      f"rank; KV pool {KV}; seed {a.seed}; calibrated load factor {lf:.4f}")
print("| workload | rate req/s | in | out | metric | predicted | measured | predicted/measured | "
      "within 15% | moves with steps +-3% |")
print("|---|---|---|---|---|---|---|---|---|---|")
ok = 0
for name, rate, n_in, n_out, label, q, m, r, sens in rows:
    good = abs(r - 1) <= 0.15
    ok += good
    print(f"| {name} | {rate:g} | {n_in} | {n_out} | {label} | {q:.2f} | {m:.2f} | {r:.3f} | "
          f"{'yes' if good else 'no'} | {sens * 100:.1f}% |")
print(f"\n{ok} of {len(rows)} figures within 15%\n")
print("| workload | steps | busy s (measured) | step time predicted/measured | per-step median ratio |")
print("|---|---|---|---|---|")
for name, k, busy, r, med in step_rows:
    print(f"| {name} | {k} | {busy:.2f} | {r:.3f} | {med:.3f} |")
print()
print("| workload | requests | TTFT predicted/measured, median over requests | requests within 15% | "
      "TPOT predicted/measured, median over requests | requests within 15% |")
print("|---|---|---|---|---|---|")
for name, k, mt, nt, mp, np_, kp in req_rows:
    print(f"| {name} | {k} | {mt:.3f} | {nt} of {k} | {mp:.3f} | {np_} of {kp} |")
