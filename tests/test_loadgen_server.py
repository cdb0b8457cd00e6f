"""`shardserve loadgen` against our own server, at TP = 1 and TP = 2: the
summary, the result JSON with vLLM's field names, a sweep with its plot, and
client-side timings consistent with the server's own /metrics: mean TTFT and
mean inter-token latency within 10% of the server's histograms (sum / count
over the run), and token counts equal.  At TP = 1 the server also writes its
step log (--step-log), whose batch shapes must account for every prompt and
generated token.
"""
import csv
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "lib"))
from harness import Checker, parse_args  # noqa: E402
from server import Server  # noqa: E402

args = parse_args()
ck = Checker("loadgen vs server")
tmp = tempfile.mkdtemp(prefix="ss-lgs-")
FIELDS = ["duration", "completed", "failed", "total_input_tokens", "total_output_tokens",
          "request_throughput", "request_goodput", "output_throughput", "total_token_throughput",
          "mean_ttft_ms", "median_ttft_ms", "p99_ttft_ms", "mean_tpot_ms", "median_tpot_ms",
          "p99_tpot_ms", "mean_itl_ms", "median_itl_ms", "p99_itl_ms", "mean_e2el_ms",
          "ttfts", "itls", "input_lens", "output_lens", "errors"]


def hist(m, name):
    return m.get(f"shardserve:{name}_sum", 0.0), m.get(f"shardserve:{name}_count", 0.0)


degrees = (1, 2)
if os.environ.get("SS_SANITIZED") == "1":
    degrees = (2,)
    print("sanitizer build (SS_SANITIZED=1): TP 2 only; the release build runs TP 1 and 2",
          flush=True)
for tp in degrees:
    step_log = os.path.join(tmp, f"steps-tp{tp}.csv")
    srv = Server(args.bin, args.model, tp=tp, extra=["--step-log", step_log] if tp == 1 else [])
    try:
        before = srv.metrics()
        out = os.path.join(tmp, f"tp{tp}.json")
        p = subprocess.run([args.bin, "loadgen", "--url", srv.url, "--request-rate", "3",
                            "--num-prompts", "24", "--random-input-len", "48",
                            "--random-output-len", "24", "--tokenizer-model", args.model,
                            "--seed", "7", "--goodput", "ttft:2000", "tpot:500",
                            "--save-result", out, "--no-progress"],
                           capture_output=True, text=True, timeout=600)
        ck.check(p.returncode == 0, f"tp {tp}: loadgen failed ({p.returncode}): {p.stderr[-1500:]}")
        ck.check("Mean TTFT (ms)" in p.stdout and "Request throughput" in p.stdout,
                 f"tp {tp}: summary missing: {p.stdout[:800]}")
        after = srv.metrics()
        r = json.load(open(out))
        missing = [f for f in FIELDS if f not in r]
        ck.check(not missing, f"tp {tp}: result JSON lacks {missing}")
        ck.check(r["completed"] == 24 and r["failed"] == 0, f"tp {tp}: {r['completed']} / {r['failed']}")
        ck.check(r["total_output_tokens"] == 24 * 24 and r["output_lens"] == [24] * 24,
                 f"tp {tp}: output tokens {r['total_output_tokens']}")
        ck.check(r["total_input_tokens"] == 24 * 48, f"tp {tp}: input tokens {r['total_input_tokens']}")
        gen = after["shardserve:generation_tokens_total"] - before["shardserve:generation_tokens_total"]
        ck.check(gen == r["total_output_tokens"], f"tp {tp}: server generated {gen}")
        s1, c1 = hist(after, "time_to_first_token_seconds")
        s0, c0 = hist(before, "time_to_first_token_seconds")
        server_ttft = (s1 - s0) / max(c1 - c0, 1) * 1e3
        s1, c1 = hist(after, "inter_token_latency_seconds")
        s0, c0 = hist(before, "inter_token_latency_seconds")
        server_itl = (s1 - s0) / max(c1 - c0, 1) * 1e3
        client_ttft, client_itl = r["mean_ttft_ms"], r["mean_itl_ms"]
        print(f"tp {tp}: mean TTFT client {client_ttft:.2f} ms, server {server_ttft:.2f} ms; "
              f"mean ITL client {client_itl:.2f} ms, server {server_itl:.2f} ms", flush=True)
        ck.check(abs(client_ttft - server_ttft) <= 0.10 * server_ttft,
                 f"tp {tp}: TTFT client {client_ttft:.2f} vs server {server_ttft:.2f} ms (> 10%)")
        ck.check(abs(client_itl - server_itl) <= 0.10 * server_itl,
                 f"tp {tp}: ITL client {client_itl:.2f} vs server {server_itl:.2f} ms (> 10%)")
        if tp == 2:
            prefix = os.path.join(tmp, "sweep")
            p = subprocess.run([args.bin, "loadgen", "--url", srv.url, "--sweep-rates", "1,4",
                                "--num-prompts", "8", "--random-input-len", "32",
                                "--random-output-len", "8", "--tokenizer-model", args.model,
                                "--seed", "3", "--sweep-output", prefix, "--plot-format", "svg",
                                "--no-progress"], capture_output=True, text=True, timeout=600)
            ck.check(p.returncode == 0, f"sweep failed: {p.stderr[-1500:]}")
            svg = prefix + ".svg"
            ck.check(os.path.exists(svg) and os.path.getsize(svg) > 1000 and
                     open(svg).read().lstrip().startswith(("<?xml", "<svg")),
                     f"sweep plot {svg} missing or not SVG")
            ck.check(os.path.exists(prefix + ".tsv"), "sweep table missing")
    finally:
        rc = srv.stop()
        ck.check(rc == 0, f"tp {tp}: server exit {rc}")
    if tp == 1:
        # Every request: its 48 prompt tokens prefilled, then each generated token but the
        # last fed back; one sampled row per generated token.
        rows = list(csv.DictReader(open(step_log)))
        n_tok = sum(int(x["n_tokens"]) for x in rows)
        n_log = sum(int(x["n_logits"]) for x in rows)
        ck.check(n_tok == 24 * (48 + 24 - 1) and n_log == 24 * 24,
                 f"step log: {len(rows)} steps, {n_tok} tokens, {n_log} sampled rows")
        ck.check(all(0 < float(x["forward_s"]) <= float(x["step_s"]) for x in rows),
                 "step log: a forward pass outside its step")
        ck.check(all(float(a["t_s"]) < float(b["t_s"]) for a, b in zip(rows, rows[1:])),
                 "step log: step start times not increasing")
ck.finish()
