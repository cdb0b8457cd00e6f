"""Cost of constrained decoding: output tokens/s of `shardserve serve` with and
without a JSON Schema constraint, at batch 1 and 32, on the default model.

Every request generates exactly --max-tokens tokens (unconstrained ones with
ignore_eos; the schema is a long array of strings, so constrained ones end at
the limit too).  Each setting runs --repeats times after a warm-up; the median
and the spread (min..max) are printed.
Usage: .venv/bin/python bench/structured.py --bin build/shardserve
           [--model M] [--max-tokens 64] [--repeats 3] [--threads 2]
"""
import argparse
import json
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "lib"))
from server import Server  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--bin", required=True)
ap.add_argument("--model", default="models/SmolLM2-135M-Instruct.Q4_1.gguf")
ap.add_argument("--max-tokens", type=int, default=64)
ap.add_argument("--repeats", type=int, default=3)
ap.add_argument("--threads", default="2")
a = ap.parse_args()

SCHEMA = {"type": "object", "properties": {"items": {
    "type": "array", "minItems": 200, "items": {"type": "object", "properties": {
        "name": {"type": "string", "maxLength": 40}, "count": {"type": "integer"}},
        "required": ["name", "count"]}}}, "required": ["items"]}
srv = Server(a.bin, a.model, extra=["--threads", a.threads, "--max-num-seqs", "32"])


def one(i, constrained):
    body = {"messages": [{"role": "user", "content": f"List {i + 3} things in a kitchen."}],
            "max_tokens": a.max_tokens, "temperature": 1.0, "seed": i}
    if constrained:
        body["response_format"] = {"type": "json_schema",
                                   "json_schema": {"name": "kitchen", "schema": SCHEMA}}
    else:
        body["ignore_eos"] = True
    code, raw = srv.post("/v1/chat/completions", body)
    assert code == 200, raw[:300]
    b = json.loads(raw)
    assert b["usage"]["completion_tokens"] == a.max_tokens, b["usage"]
    return b["usage"]["completion_tokens"]


def run(batch, constrained):
    t = time.time()
    with ThreadPoolExecutor(batch) as pool:
        n = sum(pool.map(lambda i: one(i, constrained), range(batch)))
    return n / (time.time() - t)


print(f"max_tokens {a.max_tokens}, {a.repeats} repeats, --threads {a.threads}")
print(f"{'batch':>5} {'constrained':>11} {'tok/s median':>12} {'min..max':>16}")
for batch in (1, 32):
    for constrained in (False, True):
        run(batch, constrained)  # warm-up
        r = [run(batch, constrained) for _ in range(a.repeats)]
        print(f"{batch:>5} {str(constrained):>11} {statistics.median(r):>12.1f} "
              f"{min(r):>7.1f}..{max(r):<8.1f}", flush=True)
srv.stop()
