"""The KV pool's size and the context it allows.

  - By default the pool comes from the host's available memory (40% of
    MemAvailable, read here from /proc/meminfo, over the ranks), at most what
    --max-num-seqs whole contexts need: the ready line's block count is
    checked against both bounds computed here from the model's shape (read
    by the `gguf` package).
  - A pool smaller than one whole context shortens the context at start (a
    note says so; /v1/models reports it as max_model_len), so a chat request
    without max_tokens is served to the end of that context, not refused.
  - An explicit --ctx larger than the pool is an error at start naming it.
"""
import json
import os
import re
import subprocess
import sys

import gguf

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "lib"))
from harness import Checker, parse_args  # noqa: E402
from server import Server  # noqa: E402

args = parse_args()
ck = Checker("serve kv pool")

r = gguf.GGUFReader(args.model)
arch = str(r.fields["general.architecture"].contents())
meta = {k: r.fields[f"{arch}.{k}"].contents() for k in
        ("block_count", "context_length", "embedding_length", "attention.head_count",
         "attention.head_count_kv")}
head_dim = meta["embedding_length"] // meta["attention.head_count"]
# K and V in bf16 (serve's default --kv-cache-dtype), every layer, one rank:
# bytes per 16-token block.
per_block = 2 * 2 * meta["block_count"] * meta["attention.head_count_kv"] * head_dim * 16
n_ctx = meta["context_length"]


def mem_available():
    for line in open("/proc/meminfo"):
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def ready_line(srv):
    for line in srv.log:
        m = re.search(r"(\d+) KV blocks of 16 tokens, context (\d+)", line)
        if m:
            return int(m.group(1)), int(m.group(2))
    return None, None


# Default pool.
avail_before = mem_available()
srv = Server(args.bin, args.model, extra=["--max-num-seqs", "4"])
try:
    avail_after = mem_available()
    blocks, ctx = ready_line(srv)
    most = 4 * -(-n_ctx // 16)
    budget_hi = int(0.4 * max(avail_before, avail_after)) // per_block
    budget_lo = int(0.4 * min(avail_before, avail_after) * 0.9) // per_block
    ck.check(blocks is not None and blocks == min(most, blocks) and
             (blocks == most or budget_lo <= blocks <= budget_hi),
             f"default pool {blocks} blocks: want min({most} (4 whole contexts), 40% of "
             f"MemAvailable = {budget_lo}..{budget_hi})")
    ck.check(ctx == min(n_ctx, (blocks or 0) * 16), f"default context {ctx} (model {n_ctx})")
finally:
    ck.check(srv.stop() == 0, "default pool server exits 0")

# A pool of 8 blocks = 128 tokens: the context becomes 128.
srv = Server(args.bin, args.model, extra=["--kv-blocks", "8"])
try:
    blocks, ctx = ready_line(srv)
    ck.check((blocks, ctx) == (8, 128), f"--kv-blocks 8: {blocks} blocks, context {ctx}")
    ck.check(any("less than the model's context" in line for line in srv.log),
             "a note says the context was shortened to what the pool holds")
    code, body = srv.get("/v1/models")
    ck.check(code == 200 and json.loads(body)["data"][0]["max_model_len"] == 128,
             f"/v1/models max_model_len: {code} {body[:200]}")
    code, body = srv.post("/v1/chat/completions", {"messages": [{"role": "user",
                                                                 "content": "Tell a story."}],
                                                   "temperature": 0, "ignore_eos": True})
    b = json.loads(body) if code == 200 else {}
    ck.check(code == 200 and b["choices"][0]["finish_reason"] == "length" and
             b["usage"]["prompt_tokens"] + b["usage"]["completion_tokens"] == 128,
             f"chat without max_tokens runs to the end of the context: {code} {body[:300]}")
finally:
    ck.check(srv.stop() == 0, "small pool server exits 0")

# --ctx larger than the pool.
p = subprocess.run([args.bin, "serve", "--model", args.model, "--port", "0", "--kv-blocks", "8",
                    "--ctx", "4096"], capture_output=True, timeout=120)
err = p.stderr.decode("utf-8", "replace")
ck.check(p.returncode != 0 and "--ctx 4096" in err and "128 tokens" in err,
         f"--ctx beyond the pool: rc {p.returncode}, {err[-400:]}")

sys.exit(ck.finish())
