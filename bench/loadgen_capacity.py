"""How fast can `shardserve loadgen` send?  Runs it against a trivial endpoint
(build/ss_trivial_openai: C, libuv + http_parser, answers every request at once
with a pre-built 4-token SSE stream) at rising Poisson request rates and reports,
per rate, the achieved throughput and the generator's schedule slip (send lag:
actual send time minus scheduled time).  A rate is sustained when its p99 send
lag stays under 10 ms with no failed request and an achieved throughput within
5% of the offered rate; the capacity is the highest rate up to which every
rate tried is sustained (the first miss ends the climb, so a lucky run at a
higher rate on a noisy machine does not count).

Generator and endpoint share this machine's cores, so the figure is a lower
bound on what the generator alone sustains.

Usage: python bench/loadgen_capacity.py [--bin build/shardserve]
           [--server build/ss_trivial_openai] [--rates 250,500,...] [--seconds 5]
           [--runs 3]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

ap = argparse.ArgumentParser()
ap.add_argument("--bin", default="build/shardserve")
ap.add_argument("--server", default="build/ss_trivial_openai")
ap.add_argument("--rates", default="250,500,1000,2000,3000,4000,6000,8000")
ap.add_argument("--seconds", type=float, default=5.0, help="schedule length per rate")
ap.add_argument("--runs", type=int, default=3, help="repeats per rate (the median is kept)")
ap.add_argument("--lag-ms", type=float, default=10.0)
a = ap.parse_args()

srv = subprocess.Popen([a.server, "--port", "0"], stdout=subprocess.PIPE, text=True)
line = srv.stdout.readline()
if not line.startswith("listening on "):
    sys.exit(f"the trivial server did not start: {line!r}")
url = f"http://127.0.0.1:{int(line.split()[-1])}"
tmp = tempfile.mkdtemp(prefix="ss-lgcap-")

print(f"trivial endpoint {url}; {a.seconds:g} s of Poisson arrivals per run, "
      f"median of {a.runs} runs")
print(f"{'offered':>9} {'achieved':>9} {'failed':>6} {'lag_p50':>8} {'lag_p99':>8} "
      f"{'lag_max':>8} {'ttft_p50':>8}  sustained")
print(f"{'req/s':>9} {'req/s':>9} {'':>6} {'ms':>8} {'ms':>8} {'ms':>8} {'ms':>8}")
best = 0
missed = False
try:
    for rate in [float(r) for r in a.rates.split(",")]:
        rows = []
        for run in range(a.runs):
            out = os.path.join(tmp, f"r{rate:g}-{run}.json")
            cmd = [a.bin, "loadgen", "--url", url, "--request-rate", f"{rate:g}",
                   "--num-prompts", str(int(rate * a.seconds)), "--random-input-len", "16",
                   "--random-output-len", "4", "--vocab-size", "32000", "--seed", str(run),
                   "--save-result", out, "--no-progress"]
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
            if p.returncode != 0:
                sys.exit(f"loadgen failed at {rate:g} req/s:\n{p.stderr[-2000:]}")
            with open(out) as f:
                r = json.load(f)
            lags = sorted(x * 1e3 for x in r["send_lags"])
            rows.append((r["p99_send_lag_ms"], r["request_throughput"], r["failed"],
                         statistics.median(lags), r["max_send_lag_ms"], r["median_ttft_ms"]))
        rows.sort()
        p99, thr, failed, p50, mx, ttft = rows[len(rows) // 2]
        ok = p99 < a.lag_ms and failed == 0 and thr >= 0.95 * rate
        if ok and not missed:
            best = rate
        missed = missed or not ok
        print(f"{rate:9.0f} {thr:9.1f} {failed:6d} {p50:8.3f} {p99:8.3f} {mx:8.2f} {ttft:8.3f}  "
              f"{'yes' if ok else 'no'}", flush=True)
finally:
    srv.terminate()
    srv.wait()
print(f"capacity: {best:g} req/s sustained with p99 send lag < {a.lag_ms:g} ms")
