"""Planner validation on this machine: predicted vs measured, where planners fail.

1. `shardserve profile` measures the cost model's figures (decode and prefill
   probes) on this machine, at the TP and threads given.
2. A calibration load test (its own workload, not one of those validated) runs
   the server with --step-log; `plan --step-log ... --calibrate` scales the
   profile to the steps' time under serving load and saves it.
3. Capacity: one saturating run of the validation shape (every request sent at
   once) measures the server's request throughput C; `plan` predicts it from the
   same workload.  The load levels are fixed multiples of the MEASURED C, set
   here before any run: 0.7, 0.9, 1.0 and 1.2 x C (Poisson), 0.7 x C with
   bursty arrivals (gamma shape 0.5), and a closed loop (max concurrency 8).
4. For each: the load test against a fresh server and `plan` with the same
   seed (the same arrival times and lengths).  Latency figures (p50 / p90 TTFT,
   p50 / p90 TPOT, p50 E2E; percentiles computed here from the per-request
   arrays of both) are tabulated apart from throughput, with how far each
   predicted figure moves when every step costs 3% more or less; preemptions
   predicted vs counted by the server (/metrics), with one level on a KV pool
   too small for the batch (40 blocks) so that the scheduler preempts, and
   requests refused at arrival (429) predicted vs received by the load test,
   with one level at 1.2 x C on a queue limit of 4 (--max-waiting 4).
5. Max rate at an SLO: `plan --max-rate` against a bisection of load tests
   (the highest rate whose requests meet the SLO at >= 99%, as the planner
   defines it), 5 rounds between 0.25 x C and 2 x C.

Usage: python bench/validate_planner.py [--bin build/shardserve] [--model M]
           [--tp 1] [--threads 1] [--seed 1] [--in 64] [--out-len 64] [--n 48]
           [--slo-ttft-ms T --slo-tpot-ms P] [--skip-max-rate]
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
# One thread per rank by default: on a 2-core machine the load generator needs
# the other core.
ap.add_argument("--threads", type=int, default=1)
ap.add_argument("--seed", type=int, default=1)
ap.add_argument("--in", dest="n_in", type=int, default=64, help="prompt tokens per request")
ap.add_argument("--out-len", type=int, default=64, help="output tokens per request")
ap.add_argument("--n", type=int, default=48, help="requests per load test")
ap.add_argument("--kv-mem", default="1G")
ap.add_argument("--max-num-seqs", type=int, default=16)
ap.add_argument("--slo-ttft-ms", type=float, default=0, help="0: 4 x the capacity run's p50 TTFT")
ap.add_argument("--slo-tpot-ms", type=float, default=0, help="0: 2 x the capacity run's p50 TPOT")
ap.add_argument("--skip-max-rate", action="store_true")
ap.add_argument("--out", default="bench/out")
a = ap.parse_args()
os.makedirs(a.out, exist_ok=True)
BATCHING = ["--max-num-seqs", str(a.max_num_seqs)]
# (name, x capacity, burstiness, max concurrency, KV blocks (0: --kv-mem),
# queue limit (0: the server's default)).  "40 KV blocks" gives the pool 40
# blocks of 16 tokens (5 sequences at full length for --max-num-seqs 16), so
# the scheduler preempts; "max-waiting 4" refuses arrivals that find 4 queued.
LEVELS = [("0.7x", 0.7, 1.0, 0, 0, 0), ("0.9x", 0.9, 1.0, 0, 0, 0), ("1.0x", 1.0, 1.0, 0, 0, 0),
          ("1.2x", 1.2, 1.0, 0, 0, 0), ("0.7x bursty", 0.7, 0.5, 0, 0, 0),
          ("closed loop 8", 0, 1.0, 8, 0, 0), ("1.0x, 40 KV blocks", 1.0, 1.0, 0, 40, 0),
          ("1.2x, max-waiting 4", 1.2, 1.0, 0, 0, 4)]
TAG = f"tp{a.tp}-t{a.threads}-{os.path.basename(a.model).split('.')[0]}"


def flags(rate, burst, conc, n_in, n_out, n):
    f = ["--num-prompts", str(n), "--random-input-len", str(n_in), "--random-output-len",
         str(n_out), "--seed", str(a.seed), "--burstiness", str(burst)]
    f += ["--max-concurrency", str(conc)] if conc else ["--request-rate", str(rate) if rate else "inf"]
    return f


def kv_flags(blocks):
    return ["--kv-blocks", str(blocks)] if blocks else ["--kv-mem", a.kv_mem]


def load_test(tag, wl, step_log=None, blocks=0, waiting=0):
    """A fresh server, one loadgen run; (result JSON, preemptions counted by the server)."""
    extra = ["--threads", str(a.threads), *kv_flags(blocks), *BATCHING]
    if waiting:
        extra += ["--max-waiting", str(waiting)]
    if step_log:
        extra += ["--step-log", step_log]
    srv = Server(a.bin, a.model, tp=a.tp, extra=extra)
    try:
        before = srv.metrics().get("shardserve:num_preemptions_total", 0)
        res = os.path.join(a.out, f"loadgen-{TAG}-{tag}.json")
        p = subprocess.run([a.bin, "loadgen", "--url", srv.url, *wl, "--tokenizer-model", a.model,
                            "--save-result", res, "--no-progress"],
                           capture_output=True, text=True, timeout=3600)
        if p.returncode != 0:
            sys.exit(f"loadgen failed:\n{p.stderr[-2000:]}")
        pre = srv.metrics().get("shardserve:num_preemptions_total", 0) - before
        meas = json.load(open(res))
    finally:
        srv.stop()  # flushes the step log
    return meas, int(pre)


def plan(hw, extra, blocks=0, waiting=0):
    q = ["--max-waiting", str(waiting)] if waiting else []
    p = subprocess.run([a.bin, "plan", "--model", a.model, "--tp", str(a.tp), "--hardware", hw,
                        *kv_flags(blocks), *BATCHING, *q, *extra, "--json"], capture_output=True,
                       text=True, timeout=1800)
    if p.returncode != 0:
        sys.exit(f"plan failed:\n{p.stderr[-2000:]}")
    return json.loads(p.stdout)


def pct(xs, q):
    """Linear-interpolated percentile (numpy's default), computed here for both sides."""
    xs = sorted(xs)
    if not xs:
        return float("nan")
    k = (len(xs) - 1) * q / 100
    i = int(k)
    return xs[i] if i + 1 >= len(xs) else xs[i] + (xs[i + 1] - xs[i]) * (k - i)


def latency(d):
    """Latency figures in ms from per-request arrays (loadgen --save-result names),
    over the requests that succeeded (a refused one has no figures)."""
    ok = [not e for e in d.get("errors", [""] * len(d["ttfts"]))]
    rows = [(t, l, o) for t, l, o, g in zip(d["ttfts"], d["latencies"], d["output_lens"], ok) if g]
    ttft = [t * 1e3 for t, _, _ in rows]
    tpot = [(l - t) * 1e3 / (o - 1) for t, l, o in rows if o > 1]
    e2e = [l * 1e3 for _, l, _ in rows]
    return {"p50 TTFT ms": pct(ttft, 50), "p90 TTFT ms": pct(ttft, 90), "p50 TPOT ms": pct(tpot, 50),
            "p90 TPOT ms": pct(tpot, 90), "p50 E2E ms": pct(e2e, 50)}


# 1. Probes.
profile = os.path.join(a.out, f"profile-{TAG}.json")
p = subprocess.run(launch_cmd(a.bin, a.tp, ["profile", "--model", a.model, "-t", str(a.threads),
                                            "-o", profile]),
                   capture_output=True, text=True, env=mpi_env(), timeout=1800)
if p.returncode != 0:
    sys.exit(f"profile failed:\n{p.stderr[-3000:]}")

# 2. Calibration under serving load (its own workload: 48 in, 48 out, 1.5 req/s).
steps = os.path.join(a.out, f"steps-{TAG}-calibration.csv")
load_test("calibration", flags(1.5, 1.0, 0, 48, 48, 40), steps)
calibrated = os.path.join(a.out, f"profile-{TAG}-calibrated.json")
cal = plan(profile, ["--step-log", steps, "--calibrate", "--save-hardware", calibrated])
lf = cal["calibrated_load_factor"]
print(f"calibration: load factor {lf:.4f}", file=sys.stderr, flush=True)
scaled = {}
for f in (0.97, 1.03):
    prof = json.load(open(calibrated))
    prof["load_factor"] = prof.get("load_factor", 1.0) * f
    scaled[f] = os.path.join(a.out, f"profile-{TAG}-calibrated-x{f}.json")
    json.dump(prof, open(scaled[f], "w"), indent=2)

# 3. Capacity: every request at once.
sat = flags(0, 1.0, 0, a.n_in, a.out_len, a.n)
meas_c, pre_c = load_test("capacity", sat)
pred_c = plan(calibrated, [*sat, "--per-request"])["simulation"]
C = meas_c["request_throughput"]
lat_c = latency(meas_c)
print(f"capacity: measured {C:.3f} req/s, predicted {pred_c['request_throughput']:.3f} req/s",
      file=sys.stderr, flush=True)

# 4. The load levels.
lat_rows, thr_rows, pre_rows = [], [], []
for name, mult, burst, conc, blocks, waiting in LEVELS:
    wl = flags(round(mult * C, 4), burst, conc, a.n_in, a.out_len, a.n)
    meas, pre_m = load_test(name.replace(" ", "_").replace(",", ""), wl, blocks=blocks,
                            waiting=waiting)
    pred = plan(calibrated, [*wl, "--per-request"], blocks, waiting)["simulation"]
    moved = [plan(scaled[f], [*wl, "--per-request"], blocks, waiting)["simulation"]
             for f in (0.97, 1.03)]
    errs = [e for e in meas["errors"] if e]
    if any("429" not in e for e in errs):
        sys.exit(f"{name}: requests failed other than by a full queue: {errs[:3]}")
    # Refused requests carry output length 0 on either side, and which ones
    # are refused is a result: lengths must agree where both succeeded.
    both = [not pe and not me for pe, me in zip(pred.get("errors", [""] * a.n), meas["errors"])]
    if pred["input_lens"] != meas["input_lens"] or any(
            po != mo for po, mo, ok in zip(pred["output_lens"], meas["output_lens"], both) if ok):
        sys.exit(f"{name}: the simulated requests' lengths differ from the load test's")
    lm, lp, lmv = latency(meas), latency(pred), [latency(x) for x in moved]
    for k in lm:
        sens = max(abs(x[k] / lp[k] - 1) for x in lmv) if lp[k] else float("inf")
        lat_rows.append((name, k, lp[k], lm[k], sens))
    for k, label in (("output_throughput", "output tok/s"), ("request_throughput", "req/s")):
        thr_rows.append((name, label, pred[k], meas[k]))
    pre_rows.append((name, pred.get("preemptions", 0), pre_m, pred.get("rejected", 0), len(errs)))
    print(f"{name}: done", file=sys.stderr, flush=True)

# 5. Max rate at an SLO.
max_rows = []
if not a.skip_max_rate:
    # Unless given, the SLO is a fixed multiple of the 0.7x run's measured p50s
    # (4 x TTFT, 2 x TPOT), set here before the search runs.
    base = next(r for r in lat_rows if r[0] == "0.7x" and r[1] == "p50 TTFT ms")[3]
    base_tpot = next(r for r in lat_rows if r[0] == "0.7x" and r[1] == "p50 TPOT ms")[3]
    slo_ttft = a.slo_ttft_ms or round(4 * base, 1)
    slo_tpot = a.slo_tpot_ms or round(2 * base_tpot, 1)
    goodput = ["--goodput", f"ttft:{slo_ttft}", f"tpot:{slo_tpot}"]
    wl = flags(C, 1.0, 0, a.n_in, a.out_len, a.n)
    predicted = plan(calibrated, [*wl, *goodput, "--max-rate"])["max_rate_meeting_slo"]
    lo, hi = 0.25 * C, 2.0 * C
    for i in range(5):
        mid = (lo + hi) / 2
        meas, _ = load_test(f"maxrate{i}", [*flags(round(mid, 4), 1.0, 0, a.n_in, a.out_len, a.n),
                                            *goodput])
        # 99% of the requests sent meet the SLOs; a failed one (a 429) misses them.
        sent = meas["completed"] + meas.get("failed", 0)
        ok = meas["completed"] > 0 and meas["request_goodput"] * meas["duration"] >= 0.99 * sent
        lo, hi = (mid, hi) if ok else (lo, mid)
        print(f"max-rate search: {mid:.3f} req/s {'meets' if ok else 'misses'} the SLO",
              file=sys.stderr, flush=True)
    max_rows.append((slo_ttft, slo_tpot, predicted, lo, hi))

rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")),
           platform.processor())
print(f"machine: {cpu}, {os.cpu_count()} cores; commit {rev}; model {os.path.basename(a.model)}; "
      f"tp {a.tp}, {a.threads} threads per rank; KV pool {a.kv_mem}; max-num-seqs "
      f"{a.max_num_seqs}; {a.n} requests of {a.n_in} in / {a.out_len} out; seed {a.seed}; "
      f"calibrated load factor {lf:.4f}")
print(f"capacity (all requests at once): measured {C:.3f} req/s, predicted "
      f"{pred_c['request_throughput']:.3f} req/s ({pred_c['request_throughput'] / C:.3f})\n")
print("| load | latency figure | predicted | measured | predicted/measured | within 10% | "
      "within 15% | moves with steps +-3% |")
print("|---|---|---|---|---|---|---|---|")
w10 = w15 = 0
for name, k, q, m, sens in lat_rows:
    r = q / m if m else float("inf")
    w10 += abs(r - 1) <= 0.10
    w15 += abs(r - 1) <= 0.15
    print(f"| {name} | {k} | {q:.1f} | {m:.1f} | {r:.3f} | {'yes' if abs(r - 1) <= 0.10 else 'no'} | "
          f"{'yes' if abs(r - 1) <= 0.15 else 'no'} | {sens * 100:.1f}% |")
print(f"\nlatency figures alone: {w10} of {len(lat_rows)} within 10%, {w15} of {len(lat_rows)} "
      f"within 15%\n")
print("| load | throughput | predicted | measured | predicted/measured |")
print("|---|---|---|---|---|")
for name, k, q, m in thr_rows:
    print(f"| {name} | {k} | {q:.3f} | {m:.3f} | {q / m if m else float('inf'):.3f} |")
print("\n| load | preemptions predicted | preemptions measured | refused (429) predicted | "
      "refused measured |")
print("|---|---|---|---|---|")
for name, q, m, rq, rm in pre_rows:
    print(f"| {name} | {q} | {m} | {rq} | {rm} |")
for slo_ttft, slo_tpot, predicted, lo, hi in max_rows:
    mid = (lo + hi) / 2
    print(f"\nmax rate at TTFT <= {slo_ttft} ms and TPOT <= {slo_tpot} ms (99% of requests): "
          f"predicted {predicted:.3f} req/s, load-test bisection [{lo:.3f}, {hi:.3f}] req/s; "
          f"predicted / bisection midpoint {predicted / mid:.3f} "
          f"({'within' if abs(predicted / mid - 1) <= 0.10 else 'NOT within'} 10%)")
