"""shardserve loadgen against the OpenAI mock server (tests/lib/mock_openai.py).

Checks what a user of the load generator relies on:
  - open loop (Poisson) and closed loop (--max-concurrency) runs complete and the
    result JSON has vLLM's field names with consistent values;
  - measured latencies match the mock's configured delays: median TTFT within
    [ttft, ttft + 30 ms] and median ITL within [itl - 2 ms, itl + 10 ms] (the mock
    sleeps to deadlines measured from the request's arrival, so it is never
    early on average; the upper margins absorb thread scheduling on a shared
    2-core machine);
  - requests carry max_tokens, ignore_eos, stream and stream_options, and token
    ids when asked; output token counts come from usage, or from chunks without it;
  - fixed, jsonl and sharegpt datasets; goodput; chat streams with a role-only
    first chunk (not a token);
  - injected server errors (HTTP 500, streams cut mid-way, error events) are
    counted in failed/errors and the run completes with exit 0;
  - an unreachable server, malformed datasets and all-failing runs exit 1 with
    a clear message; bad flags exit 2;
  - a rate sweep writes the table and a non-empty plot.
"""
import json
import os
import socket
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "lib"))
from harness import Checker, parse_args  # noqa: E402
from mock_openai import MockServer  # noqa: E402

args = parse_args()
ck = Checker("loadgen")
tmp = tempfile.mkdtemp(prefix="ss-loadgen-")
TTFT, ITL = 0.100, 0.020
srv = MockServer(ttft=TTFT, itl=ITL).start()

VLLM_FIELDS = ["duration", "completed", "failed", "total_input_tokens", "total_output_tokens",
               "request_throughput", "request_goodput", "output_throughput",
               "total_token_throughput", "input_lens", "output_lens", "ttfts", "itls", "errors"]
for m in ("ttft", "tpot", "itl", "e2el"):
    VLLM_FIELDS += [f"mean_{m}_ms", f"median_{m}_ms", f"std_{m}_ms", f"p50_{m}_ms", f"p90_{m}_ms",
                    f"p95_{m}_ms", f"p99_{m}_ms"]


def path(name):
    return os.path.join(tmp, name)


def loadgen(label, extra, code=0, url=None, timeout=180):
    """Runs loadgen; returns (stdout, stderr, result dict or None)."""
    out = path(label.replace(" ", "_") + ".json")
    if os.path.exists(out):
        os.unlink(out)
    argv = ["loadgen", "--url", url or srv.url, "--save-result", out] + extra
    rc, so, se = ck.run(args.bin, argv, timeout=timeout)
    if rc is None:
        return "", "", None
    ok = ck.check(rc == code, f"{label}: exit {rc}, expected {code}\n{se[-1500:]}")
    res = None
    if os.path.exists(out):
        with open(out) as f:
            res = json.load(f)
    if ok:
        print(f"ok   {label}")
    return so.decode(), se, res


def within(label, value, lo, hi):
    ck.check(lo <= value <= hi, f"{label}: {value:.2f} not in [{lo:.2f}, {hi:.2f}]")


# ---- open loop, Poisson, token-id prompts, goodput -------------------------------
srv.reset()
so, se, r = loadgen("open loop poisson",
                    ["--request-rate", "20", "--num-prompts", "30", "--random-input-len", "8",
                     "--random-output-len", "8", "--vocab-size", "1000", "--seed", "1",
                     "--goodput", "ttft:1000", "tpot:1000"])
if ck.check(r is not None, "open loop: no result file"):
    missing = [k for k in VLLM_FIELDS if k not in r]
    ck.check(not missing, f"result lacks vLLM fields {missing}")
    ck.check(r["completed"] == 30 and r["failed"] == 0, f"completed {r['completed']} failed {r['failed']}")
    ck.check(r["output_lens"] == [8] * 30, f"output_lens {r['output_lens']}")
    ck.check(r["input_lens"] == [8] * 30, f"input_lens {r['input_lens']}")
    ck.check(r["total_output_tokens"] == 240, f"total_output_tokens {r['total_output_tokens']}")
    ck.check(all(len(g) == 7 for g in r["itls"]), "every request has 7 inter-token gaps")
    ck.check(r["errors"] == [""] * 30, f"errors {set(r['errors'])}")
    ck.check(r["output_tokens_from_usage"] == 30, "output tokens counted from usage")
    within("median TTFT ms", r["median_ttft_ms"], TTFT * 1e3, TTFT * 1e3 + 30)
    within("median ITL ms", r["median_itl_ms"], ITL * 1e3 - 2, ITL * 1e3 + 10)
    within("mean TPOT ms", r["mean_tpot_ms"], ITL * 1e3 - 2, ITL * 1e3 + 10)
    within("median E2EL ms", r["median_e2el_ms"], (TTFT + 7 * ITL) * 1e3, (TTFT + 7 * ITL) * 1e3 + 40)
    # Cross-check the summary against the per-request arrays (seconds).
    ttfts = sorted(t * 1e3 for t in r["ttfts"])
    within("median TTFT from ttfts", statistics.median(ttfts), r["median_ttft_ms"] - 1e-6,
           r["median_ttft_ms"] + 1e-6)
    ck.check(abs(r["request_goodput"] - r["request_throughput"]) < 1e-9,
             "every request meets generous SLOs: goodput = throughput")
    # The file holds 10 significant digits.
    ck.check(abs(r["request_throughput"] - 30 / r["duration"]) < 1e-8 * r["request_throughput"],
             "throughput = completed / duration")
    ck.check(r["request_rate"] == 20 and r["burstiness"] == 1, "rate and burstiness recorded")
    # 30 arrivals at 20/s: about 1.5 s of schedule plus the last request's 0.24 s.
    within("duration s", r["duration"], 0.5, 4.0)
ck.check("Serving Benchmark Result" in so and "Mean TTFT (ms):" in so and
         "Request goodput (req/s):" in so, f"summary table on stdout:\n{so[:800]}")
bodies = srv.requests
ck.check(len(bodies) == 30, f"the server saw {len(bodies)} requests")
if bodies:
    b = bodies[0]
    ck.check(isinstance(b.get("prompt"), list) and len(b["prompt"]) == 8 and
             all(isinstance(x, int) and 0 <= x < 1000 for x in b["prompt"]),
             f"token-id prompt of 8 ids: {b.get('prompt')}")
    ck.check(b.get("max_tokens") == 8 and b.get("ignore_eos") is True and b.get("stream") is True
             and b.get("stream_options") == {"include_usage": True} and b.get("model") == "mock-model",
             f"request body fields: {b}")

# The same seed sends the same prompts.
first = sorted(json.dumps(b["prompt"]) for b in bodies)
srv.reset()
loadgen("same seed", ["--request-rate", "50", "--num-prompts", "30", "--random-input-len", "8",
                      "--random-output-len", "2", "--vocab-size", "1000", "--seed", "1"])
ck.check(sorted(json.dumps(b["prompt"]) for b in srv.requests) == first, "--seed reproduces the prompts")

# Goodput with an SLO nobody meets.
_, _, r = loadgen("goodput strict", ["--request-rate", "50", "--num-prompts", "10",
                                     "--random-input-len", "4", "--random-output-len", "4",
                                     "--goodput", "ttft:50"])
if r:
    ck.check(r["request_goodput"] == 0 and r["completed"] == 10, f"goodput {r['request_goodput']}")

# ---- closed loop --------------------------------------------------------------------
srv.reset(ttft=0.02, itl=0.005)
_, _, r = loadgen("closed loop", ["--max-concurrency", "4", "--num-prompts", "24",
                                  "--random-input-len", "16", "--random-output-len", "10"])
if r:
    ck.check(r["completed"] == 24, f"closed loop completed {r['completed']}")
    ck.check(1 <= r["max_concurrent_requests"] <= 4, f"peak concurrency {r['max_concurrent_requests']}")
    ck.check(r["max_concurrency"] == 4, "max_concurrency recorded")
    # 24 requests of ~65 ms, 4 at a time: about 6 rounds.
    within("closed loop duration s", r["duration"], 6 * 0.065, 6 * 0.065 + 1.5)

_, _, r = loadgen("closed loop duration", ["--max-concurrency", "2", "--duration", "1",
                                           "--random-input-len", "4", "--random-output-len", "4"])
if r:
    # Each request takes ~35 ms, 2 at a time for 1 s: dozens of requests.
    ck.check(r["completed"] >= 10 and r["failed"] == 0, f"closed loop for 1 s: {r['completed']} completed")

_, _, r = loadgen("open loop duration", ["--request-rate", "40", "--duration", "1", "--burstiness", "inf",
                                         "--random-input-len", "4", "--random-output-len", "2"])
if r:
    ck.check(r["completed"] == 40, f"40/s with constant gaps for 1 s: {r['completed']} requests")

# ---- chat endpoint, role-only first chunk, no usage -----------------------------------
srv.reset(ttft=0.02, itl=0.01)
_, _, r = loadgen("chat", ["--endpoint", "/v1/chat/completions", "--num-prompts", "5",
                           "--request-rate", "50", "--random-input-len", "6", "--random-output-len", "6"])
if r:
    ck.check(r["completed"] == 5 and r["output_lens"] == [6] * 5, f"chat output_lens {r['output_lens']}")
    ck.check(all(len(g) == 5 for g in r["itls"]), "the role-only chunk is not a token")
    ck.check(srv.requests and srv.requests[0]["messages"][0]["role"] == "user", "chat messages sent")
    ck.check(r["backend"] == "openai-chat", "backend openai-chat")
srv.reset(no_usage=True)
_, _, r = loadgen("no usage", ["--num-prompts", "5", "--request-rate", "50",
                               "--random-input-len", "6", "--random-output-len", "7"])
if r:
    ck.check(r["output_lens"] == [7] * 5 and r["output_tokens_from_chunks"] == 5,
             f"chunk-counted output_lens {r['output_lens']}")
srv.reset(no_usage=False)

# ---- datasets -------------------------------------------------------------------------
srv.reset(ttft=0.0, itl=0.0)
_, _, r = loadgen("fixed", ["--dataset-name", "fixed", "--prompt", "hello fixed world",
                            "--num-prompts", "6", "--random-output-len", "3", "--request-rate", "100"])
if r:
    ck.check(r["completed"] == 6 and {b["prompt"] for b in srv.requests} == {"hello fixed world"},
             "fixed dataset sends one prompt")
    ck.check(r["input_lens"] == [3] * 6, f"input lens from usage: {r['input_lens']}")

jl = path("prompts.jsonl")
with open(jl, "w") as f:
    f.write('{"prompt": "one two three", "output_len": 5}\n\n'
            '{"prompt": [5, 6, 7, 8], "output_len": 7}\n'
            '{"prompt": "four", "max_tokens": 3}\n')
_, _, r = loadgen("jsonl", ["--dataset-name", "jsonl", "--dataset-path", jl, "--num-prompts", "6",
                            "--max-concurrency", "1"])
if r:
    ck.check(r["output_lens"] == [5, 7, 3, 5, 7, 3], f"jsonl output_lens {r['output_lens']}")
    ck.check(r["input_lens"] == [3, 4, 1, 3, 4, 1], f"jsonl input_lens {r['input_lens']}")

sg = path("sg_data.json")
with open(sg, "w") as f:
    json.dump([{"id": str(i), "conversations": [
        {"from": "human", "value": f"question number {i}"},
        {"from": "gpt", "value": "x" * (4 * (i + 2))}]} for i in range(8)], f)
_, _, r = loadgen("sharegpt", ["--dataset-name", "sharegpt", "--dataset-path", sg,
                               "--num-prompts", "8", "--max-concurrency", "2"])
if r:
    ck.check(r["completed"] == 8 and sorted(r["output_lens"]) == list(range(2, 10)),
             f"sharegpt output lens (reply bytes / 4): {r['output_lens']}")

# ---- injected server errors ---------------------------------------------------------------
srv.reset(ttft=0.005, itl=0.002, fail_every=5, cut_every=7, error_event_every=11)
so, _, r = loadgen("server errors", ["--request-rate", "100", "--num-prompts", "40",
                                     "--random-input-len", "4", "--random-output-len", "6"])
if r:
    # Request k (1-based, in arrival order): 500 if k%5==0 (8), else cut if k%7==0
    # (7,14,21,28: 4), else error event if k%11==0 (11,22,33: 3).
    errs = [e for e in r["errors"] if e]
    ck.check(r["failed"] == 15 and r["completed"] == 25 and len(errs) == 15,
             f"failed {r['failed']} completed {r['completed']} errors {len(errs)}")
    ck.check(sum("HTTP 500" in e for e in errs) == 8, f"HTTP 500 errors: {errs}")
    ck.check(sum("injected stream error" in e for e in errs) == 3, "error events counted")
    ck.check(all(lens == 0 for lens, e in zip(r["output_lens"], r["errors"]) if e),
             "failed requests have output length 0")
    ck.check("Failed requests:" in so and "Errors" in so, "the summary lists the errors")
srv.reset(fail_every=1, cut_every=0, error_event_every=0)
_, se, r = loadgen("all fail", ["--num-prompts", "5", "--random-input-len", "4",
                                "--random-output-len", "2"], code=1)
ck.check("all 5 requests failed" in se and "HTTP 500" in se, f"all-failed message: {se[-300:]}")
ck.check(r is not None and r["failed"] == 5, "the result file is written even when all fail")
srv.reset(fail_every=0)

# ---- unreachable server, bad files, bad flags -------------------------------------------------
s = socket.socket()
s.bind(("127.0.0.1", 0))
dead = s.getsockname()[1]
s.close()
_, se, _ = loadgen("unreachable", ["--num-prompts", "2"], code=1, url=f"http://127.0.0.1:{dead}")
ck.check("cannot reach" in se and str(dead) in se, f"unreachable message: {se.strip()}")

bad = path("bad.jsonl")
with open(bad, "w") as f:
    f.write('{"prompt": "ok", "output_len": 2}\n{"prompt": "no length"}\n')
_, se, _ = loadgen("malformed jsonl", ["--dataset-name", "jsonl", "--dataset-path", bad], code=1)
ck.check("bad.jsonl:2" in se and "output_len" in se, f"malformed jsonl message: {se.strip()}")
_, se, _ = loadgen("missing dataset", ["--dataset-name", "sharegpt", "--dataset-path",
                                       path("nope.json")], code=1)
ck.check("nope.json" in se and "cannot open" in se, f"missing dataset message: {se.strip()}")

for label, argv, needle in [
    ("negative rate", ["--request-rate", "-1"], "--request-rate"),
    ("zero rate", ["--request-rate", "0"], "--request-rate"),
    ("zero burstiness", ["--burstiness", "0"], "--burstiness"),
    ("zero concurrency", ["--max-concurrency", "0"], "--max-concurrency"),
    ("bad number", ["--num-prompts", "ten"], "--num-prompts"),
    ("unknown flag", ["--bogus"], "unknown option"),
    ("bad dataset", ["--dataset-name", "csv"], "--dataset-name"),
    ("jsonl without path", ["--dataset-name", "jsonl"], "--dataset-path"),
    ("bad goodput", ["--goodput", "latency:5"], "--goodput"),
    ("bad goodput value", ["--goodput", "ttft:-3"], "--goodput"),
    ("bad range ratio", ["--random-range-ratio", "1.5"], "--random-range-ratio"),
    ("ids on chat", ["--endpoint", "/v1/chat/completions", "--prompt-format", "ids",
                     "--vocab-size", "10"], "completions endpoint"),
    ("ramp without rates", ["--ramp-up-strategy", "linear"], "--ramp-up-start-rps"),
    ("bad sweep", ["--sweep-rates", "1,x"], "--sweep-rates"),
]:
    rc, _, se = ck.run(args.bin, ["loadgen", "--url", srv.url] + argv, timeout=30)
    ck.check(rc == 2 and needle in se, f"{label}: exit {rc}, stderr {se.strip()[:200]}")
rc, _, se = ck.run(args.bin, ["loadgen", "--num-prompts", "2"], timeout=30)
ck.check(rc == 2 and "--url is required" in se, f"missing --url: {rc} {se.strip()}")
rc, _, se = ck.run(args.bin, ["loadgen", "--url", "ftp://x"], timeout=30)
ck.check(rc == 2 and "http://" in se, f"bad scheme: {rc} {se.strip()}")
rc, so, _ = ck.run(args.bin, ["loadgen", "--help"], timeout=30)
ck.check(rc == 0 and b"--request-rate" in so and b"--goodput" in so and b"--sweep-rates" in so,
         "--help lists the flags")

# ---- sweep --------------------------------------------------------------------------------------
srv.reset(ttft=0.01, itl=0.002)
prefix = path("sweep")
rc, so, se = ck.run(args.bin, ["loadgen", "--url", srv.url, "--sweep-rates", "10,40",
                               "--num-prompts", "15", "--random-input-len", "4",
                               "--random-output-len", "4", "--sweep-output", prefix,
                               "--goodput", "ttft:500", "--save-result", path("sw.json")],
                    timeout=120)
ck.check(rc == 0, f"sweep exit {rc}: {se[-800:]}")
ck.check(b"## sweep" in so and b"offered" in so, "sweep table on stdout")
if os.path.exists(prefix + ".tsv"):
    rows = [l for l in open(prefix + ".tsv") if not l.startswith("#")]
    ck.check(len(rows) == 2 and rows[0].split("\t")[0] == "10", f"sweep table rows: {rows}")
else:
    ck.check(False, "sweep table file missing")
ck.check(os.path.exists(prefix + ".png") and os.path.getsize(prefix + ".png") > 1000,
         "sweep plot written and non-empty")
ck.check(os.path.exists(path("sw-rate10.json")) and os.path.exists(path("sw-rate40.json")),
         "per-rate result files")

srv.stop()
ck.finish()
