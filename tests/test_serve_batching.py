"""Continuous batching under load, preemption, disconnects and draining.

1. 64 concurrent streaming clients (16 prompts x 4, different lengths) all
   complete; each response's usage equals the tokens streamed; the greedy text
   equals the same request run alone, byte for byte (batch invariance); KV
   usage returns to 0.  At TP = 1 and TP = 2.
2. A tiny KV pool forces preemption: every request completes with the text it
   has alone, and num_preemptions_total moved.
3. A client that drops mid-stream: its blocks are free within a step or two
   (kv_cache_blocks_used back to 0 while the server is otherwise idle).
4. SIGTERM during a stream: the stream completes, the server exits 0.
"""
import http.client
import json
import os
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "lib"))
from harness import Checker, parse_args  # noqa: E402
from server import Server  # noqa: E402

args = parse_args()
ck = Checker("serve batching")
PROMPTS = ["The capital of France is", "Once upon a time", "def add(a, b):", "The sky is blue because",
           "List of fruits:", "In 1492,", "Water is made of", "My favourite book is",
           "The quick brown fox", "To be or not to be,", "import numpy as np\n", "Dear Sir,",
           "The best way to learn is", "Mountains are", "Q: What is 2+2?\nA:", "Roses are red,"]


def stream_request(url_port, prompt, max_tokens, out, key, drop_after=None):
    """Streams a completion; stores (text, n_chunks, usage, finish) in out[key]."""
    conn = http.client.HTTPConnection("127.0.0.1", url_port, timeout=600)
    body = json.dumps({"prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
                       "ignore_eos": True, "stream": True,
                       "stream_options": {"include_usage": True}})
    try:
        conn.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
        r = conn.getresponse()
        if r.status != 200:
            out[key] = ("", 0, None, f"status {r.status}: {r.read()[:300]!r}")
            return
        text, n, usage, finish = "", 0, None, None
        buf = b""
        while True:
            line = r.readline()
            if not line:
                break
            line = line.strip()
            if not line.startswith(b"data: "):
                continue
            data = line[6:]
            if data == b"[DONE]":
                break
            ev = json.loads(data)
            if ev.get("usage"):
                usage = ev["usage"]
            for c in ev.get("choices", []):
                if c.get("finish_reason"):
                    finish = c["finish_reason"]
                elif c.get("text") is not None:
                    text += c["text"]
                    n += 1
            if drop_after is not None and n >= drop_after:
                conn.sock.close()
                out[key] = (text, n, None, "dropped")
                return
        out[key] = (text, n, usage, finish)
    except Exception as e:  # noqa: BLE001 - reported as a failed check
        out[key] = ("", 0, None, f"exception {e!r}")
    finally:
        conn.close()


def run_concurrent(srv, jobs):
    out = {}
    threads = [threading.Thread(target=stream_request, args=(srv.port, p, n, out, i))
               for i, (p, n) in enumerate(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(900)
    return out


def wait_idle(srv, timeout=30):
    deadline = time.time() + timeout
    m = {}
    while time.time() < deadline:
        m = srv.metrics()
        if m.get("shardserve:num_requests_running") == 0 and \
                m.get("shardserve:kv_cache_blocks_used") == 0:
            return m
        time.sleep(0.05)
    return m


def alone(srv, prompt, n):
    out = {}
    stream_request(srv.port, prompt, n, out, 0)
    return out[0]


# 4 streams per prompt (64 at once); the sanitizer build sends 2 per prompt.
REPS = 2 if os.environ.get("SS_SANITIZED") == "1" else 4
if REPS != 4:
    print("sanitizer build (SS_SANITIZED=1): 32 concurrent streams instead of 64", flush=True)


def concurrency(tp):
    srv = Server(args.bin, args.model, tp=tp, extra=["--max-num-seqs", "64"])
    try:
        lens = {p: 8 + 4 * (i % 4) for i, p in enumerate(PROMPTS)}
        base = {p: alone(srv, p, lens[p]) for p in PROMPTS}
        jobs = [(p, lens[p]) for p in PROMPTS for _ in range(REPS)]
        t0 = time.time()
        out = run_concurrent(srv, jobs)
        dt = time.time() - t0
        ok = 0
        for i, (p, n) in enumerate(jobs):
            text, chunks, usage, finish = out.get(i, ("", 0, None, "missing"))
            good = (finish == "length" and usage is not None and usage["completion_tokens"] == n
                    == chunks and text == base[p][0])
            ok += good
            ck.check(good, f"tp {tp} job {i} {p!r}: finish {finish}, usage {usage}, chunks {chunks}, "
                     f"text {text!r} vs alone {base[p][0]!r}")
        m = wait_idle(srv)
        ck.check(m.get("shardserve:kv_cache_blocks_used") == 0 and
                 m.get("shardserve:kv_cache_usage_perc") == 0, f"tp {tp}: KV not freed: {m}")
        print(f"tp {tp}: {ok}/{len(jobs)} concurrent streams match their solo runs ({dt:.1f} s)",
              flush=True)
    finally:
        rc = srv.stop()
        ck.check(rc == 0, f"tp {tp}: exit {rc}")


def preemption():
    # 12 blocks of 16 tokens = 192 slots; 8 requests of ~5 + 40 tokens need 3 blocks
    # each (24 in all), so the pool runs out while they decode.
    srv = Server(args.bin, args.model, extra=["--kv-blocks", "12", "--max-num-seqs", "8"])
    try:
        jobs = [(p, 40) for p in PROMPTS[:8]]
        base = {p: alone(srv, p, 40) for p, _ in jobs}
        before = srv.metrics().get("shardserve:num_preemptions_total", 0)
        out = run_concurrent(srv, jobs)
        for i, (p, n) in enumerate(jobs):
            text, chunks, usage, finish = out[i]
            ck.check(finish == "length" and text == base[p][0] and usage and
                     usage["completion_tokens"] == n,
                     f"preemption job {i}: {finish} {usage} {text!r} vs {base[p][0]!r}")
        m = wait_idle(srv)
        after = m.get("shardserve:num_preemptions_total", 0)
        ck.check(after > before, f"no preemption happened ({before} -> {after})")
        ck.check(m.get("shardserve:kv_cache_blocks_used") == 0, f"KV not freed after preemption: {m}")
        print(f"preemption: {int(after - before)} preemptions, all 8 texts equal their solo runs",
              flush=True)
    finally:
        rc = srv.stop()
        ck.check(rc == 0, f"preemption server exit {rc}")


def disconnect_and_drain():
    srv = Server(args.bin, args.model)
    try:
        out = {}
        stream_request(srv.port, "Tell me a long story.", 2000, out, 0, drop_after=5)
        ck.check(out[0][3] == "dropped", f"drop: {out[0]}")
        t0 = time.time()
        m = wait_idle(srv, timeout=10)
        dt = time.time() - t0
        ck.check(m.get("shardserve:kv_cache_blocks_used") == 0,
                 f"blocks of the dropped request not freed: {m}")
        ck.check(m.get('shardserve:request_success_total{finished_reason="abort"}', 0) >= 1,
                 f"abort not counted: {m}")
        print(f"disconnect: blocks free {dt * 1000:.0f} ms after the client left", flush=True)
        # Drain: a stream in flight when SIGTERM arrives still completes.
        res = {}
        t = threading.Thread(target=stream_request, args=(srv.port, "Once upon a time", 48, res, 0))
        t.start()
        time.sleep(0.5)
        rc = srv.stop()
        t.join(120)
        ck.check(rc == 0, f"drain: exit status {rc}")
        ck.check(res.get(0, (None,) * 4)[3] == "length" and res[0][2]["completion_tokens"] == 48,
                 f"drain: the in-flight stream did not complete: {res.get(0)}")
    finally:
        srv.kill()


concurrency(1)
concurrency(2)
preemption()
disconnect_and_drain()
ck.finish()
