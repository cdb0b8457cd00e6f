"""`shardserve loadgen`'s prefix-cache workloads against our own server.

prefix_repetition: the hit rate the summary reports (from /metrics before and
after the run) is > 0 with prefix caching and equals the sum of the responses'
usage.prompt_tokens_details.cached_tokens over their prompt tokens, and the
counters it read match a /metrics read taken here; with --no-prefix-caching
the hit rate is 0.  A Mooncake trace whose requests share hash ids gets hits,
and bad options fail with a message naming the option.
"""
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
ck = Checker("loadgen prefix workloads")
tmp = tempfile.mkdtemp(prefix="ss-lgp-")
Q = "shardserve:prefix_cache_queries_total"
H = "shardserve:prefix_cache_hits_total"


def loadgen(url, extra, name):
    out = os.path.join(tmp, name + ".json")
    p = subprocess.run([args.bin, "loadgen", "--url", url, "--tokenizer-model", args.model,
                        "--seed", "3", "--no-progress", "--save-result", out] + extra,
                       capture_output=True, text=True, timeout=300)
    ck.check(p.returncode == 0, f"{name}: loadgen failed ({p.returncode}): {p.stderr[-1500:]}")
    if p.returncode != 0:
        return None, p.stdout
    return json.load(open(out)), p.stdout


PREFIX = ["--dataset-name", "prefix_repetition", "--num-prompts", "12",
          "--prefix-repetition-num-prefixes", "3", "--prefix-repetition-prefix-len", "64",
          "--prefix-repetition-suffix-len", "8", "--prefix-repetition-output-len", "2",
          "--max-concurrency", "2"]

for caching in (True, False):
    tag = "caching" if caching else "no caching"
    srv = Server(args.bin, args.model, extra=[] if caching else ["--no-prefix-caching"])
    try:
        before = srv.metrics()
        r, text = loadgen(srv.url, PREFIX, "prefix" if caching else "prefix-off")
        after = srv.metrics()
        if r is None:
            continue
        ck.check(r["completed"] == 12 and r["failed"] == 0, f"{tag}: {r['completed']}/{r['failed']}")
        ck.check(r["total_input_tokens"] >= 12 * 70, f"{tag}: input tokens {r['total_input_tokens']}")
        q = after.get(Q, 0) - before.get(Q, 0)
        h = after.get(H, 0) - before.get(H, 0)
        ck.check(r.get("prefix_cache_metrics") == "shardserve", f"{tag}: metrics family "
                 f"{r.get('prefix_cache_metrics')}")
        ck.check(r.get("prefix_cache_queries") == q and r.get("prefix_cache_hits") == h,
                 f"{tag}: reported {r.get('prefix_cache_queries')}/{r.get('prefix_cache_hits')}, "
                 f"/metrics says {q}/{h}")
        ck.check(r["cached_tokens_reported"] == 12, f"{tag}: {r['cached_tokens_reported']} "
                 "responses carried cached_tokens")
        rate = r["prefix_cache_hit_rate"]
        ck.check("Prefix cache hit rate (%):" in text, f"{tag}: summary lacks the hit rate")
        if caching:
            ck.check(rate is not None and rate > 0, f"{tag}: hit rate {rate}")
            # 3 prefixes of 64 tokens = 4 full blocks each; every request after a
            # prefix's first can reuse them.
            ck.check(r["total_cached_tokens"] >= 9 * 48, f"{tag}: cached {r['total_cached_tokens']}")
        else:
            ck.check(rate == 0, f"{tag}: hit rate {rate}")
            ck.check(r["total_cached_tokens"] == 0, f"{tag}: cached {r['total_cached_tokens']}")
        # The server's counters and the responses' usage agree token for token
        # (with caching off the server looks nothing up: 0 queries, 0 hits).
        ck.check(q == (r["total_input_tokens"] if caching else 0),
                 f"{tag}: queries {q}, prompt tokens {r['total_input_tokens']}")
        ck.check(h == r["total_cached_tokens"], f"{tag}: hits {h} != cached "
                 f"{r['total_cached_tokens']}")
        if rate is not None and q:
            # the rate is a float printed in the JSON: as exact as its digits
            want = r["total_cached_tokens"] / r["total_input_tokens"]
            ck.check(abs(rate - want) <= 1e-9 * want, f"{tag}: hit rate {rate} != cached "
                     f"{r['total_cached_tokens']} / prompt {r['total_input_tokens']}")

        if caching:
            # A trace: requests 2 and 3 share request 1's first two hash ids.
            trace = os.path.join(tmp, "trace.jsonl")
            with open(trace, "w") as f:
                for ts, n, ids in ((0, 80, [0, 1, 2]), (50, 70, [0, 1, 3]), (120, 66, [0, 1, 4]),
                                   (130, 40, [7, 8])):
                    f.write(json.dumps({"timestamp": ts, "input_length": n, "output_length": 2,
                                        "hash_ids": ids}) + "\n")
            b2 = srv.metrics()
            t, _ = loadgen(srv.url, ["--dataset-name", "trace", "--dataset-path", trace,
                                     "--trace-block-size", "32", "--max-concurrency", "1"], "trace")
            a2 = srv.metrics()
            if t is not None:
                ck.check(t["completed"] == 4, f"trace: completed {t['completed']}")
                ck.check(t["input_lens"] == [80, 70, 66, 40], f"trace: input lens {t['input_lens']}")
                ck.check(t["total_cached_tokens"] >= 2 * 48, f"trace: cached {t['total_cached_tokens']}")
                ck.check(t["prefix_cache_hits"] == a2.get(H, 0) - b2.get(H, 0),
                         f"trace: hits {t['prefix_cache_hits']}")
    finally:
        srv.stop()

# Bad options: the message names the option and the limit.
for extra, want in ((["--dataset-name", "prefix_repetition", "--num-prompts", "2",
                      "--prefix-repetition-num-prefixes", "3"], "--prefix-repetition-num-prefixes"),
                    (["--prefix-repetition-prefix-len", "0"], "--prefix-repetition-prefix-len"),
                    (["--dataset-name", "trace", "--dataset-path", "x", "--request-rate", "2"],
                     "--trace-time-scale"),
                    (["--trace-block-size", "0"], "--trace-block-size")):
    p = subprocess.run([args.bin, "loadgen", "--url", "http://127.0.0.1:9"] + extra,
                       capture_output=True, text=True, timeout=30)
    ck.check(p.returncode == 2 and want in p.stderr, f"{extra}: rc {p.returncode}: {p.stderr}")
bad = os.path.join(tmp, "bad.jsonl")
with open(bad, "w") as f:
    f.write('{"timestamp": 0, "input_length": 10, "output_length": 2, "hash_ids": [0]}\n')
    f.write('{"timestamp": 5, "input_length": -1, "output_length": 2}\n')
p = subprocess.run([args.bin, "loadgen", "--url", "http://127.0.0.1:9", "--dataset-name", "trace",
                    "--dataset-path", bad], capture_output=True, text=True, timeout=30)
ck.check(p.returncode == 1 and "bad.jsonl:2" in p.stderr and "input_length" in p.stderr,
         f"bad trace: rc {p.returncode}: {p.stderr}")
ck.finish()
