"""Soak client for a running `shardserve serve`: many concurrent connections,
a mix of chat and completion requests, streamed or not, some abandoned
mid-stream; then the server's own counters are checked against what the
clients saw.

    python bench/soak.py --url http://127.0.0.1:8000 --connections 1000 \
        --requests 10000 [--abandon 0.05] [--max-tokens 8] [--pid PID]

Each connection is one asyncio task that sends its share of the requests one
after the other, each on a fresh TCP connection.  A request is "lost" when it
neither completes (a finish_reason and, streamed, [DONE]) nor gets an HTTP
error, nor was abandoned on purpose.  At the end the script waits for the
engine to go idle and checks: 0 lost, no errors, the finished requests counted
in /metrics equal those sent (abandoned ones count as "abort"), no request
running or waiting, KV blocks in use back to 0.  With --pid, the server's RSS
is sampled four times a second once --warmup requests (default a fifth) have
finished, and the growth between the first and the last minute of the samples
(or their first and last fifth when they span less than five minutes) is
reported and checked against --max-rss-growth.  Prints one JSON line of figures; exits 1
when a check fails.
"""
import argparse
import asyncio
import json
import random
import sys
import time
import urllib.request

PROMPTS = [
    "The capital of France is",
    "Write a haiku about the sea.",
    "List three prime numbers.",
    "Once upon a time",
    "Explain what a tensor is in one sentence.",
    "def fibonacci(n):",
    "The quick brown fox",
    "What is 12 times 12?",
]


def metrics(url):
    with urllib.request.urlopen(url + "/metrics", timeout=30) as r:
        body = r.read().decode()
    out = {}
    for line in body.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name, value = line.rsplit(" ", 1)
        out[name] = float(value)
    return out


def finished_total(m):
    return sum(v for k, v in m.items()
               if k.startswith("shardserve:request_success_total") or
               k.startswith("shardserve:request_failure_total"))


def rss_kib(pid):
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


async def one_request(host, port, i, rng, abandon, max_tokens, stats):
    chat = rng.random() < 0.5
    stream = rng.random() < 0.5
    drop = stream and rng.random() < abandon / 0.5
    prompt = PROMPTS[i % len(PROMPTS)]
    if chat:
        path = "/v1/chat/completions"
        body = {"messages": [{"role": "user", "content": prompt}]}
    else:
        path = "/v1/completions"
        body = {"prompt": prompt}
    # An abandoned request asks for more tokens, so that it is still running
    # when the client leaves.
    body.update({"max_tokens": max_tokens * 4 if drop else max_tokens, "temperature": 0.8,
                 "seed": i, "stream": stream})
    data = json.dumps(body).encode()
    head = (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n").encode()
    try:
        reader, writer = await asyncio.open_connection(host, port)
    except OSError as e:
        stats["lost"] += 1
        stats["why"].append(f"connect: {e}")
        return
    try:
        writer.write(head + data)
        await writer.drain()
        status_line = await reader.readline()
        parts = status_line.split()
        code = int(parts[1]) if len(parts) > 1 else None
        while True:  # headers
            line = await reader.readline()
            if not line or line in (b"\r\n", b"\n"):
                break
        if code != 200:
            stats["http_errors"] += 1
            stats["why"].append(f"HTTP {code}: {(await reader.read(300))!r}")
            return
        if stream:
            seen_data = done = finished = False
            while True:
                line = await reader.readline()
                if not line:
                    break
                if line.startswith(b"data: "):
                    payload = line[6:].strip()
                    if payload == b"[DONE]":
                        done = True
                        continue
                    if drop and not seen_data:
                        seen_data = True
                        stats["abandoned"] += 1
                        return  # the finally closes the socket mid-stream
                    seen_data = True
                    if b'"error"' in payload[:20]:
                        stats["stream_errors"] += 1
                        stats["why"].append(payload[:300].decode("utf-8", "replace"))
                        return
                    if b'"finish_reason":"' in payload or b'"finish_reason": "' in payload:
                        finished = True
            if done and finished:
                stats["ok"] += 1
            else:
                stats["lost"] += 1
                stats["why"].append(f"stream ended without finish/[DONE] (request {i})")
        else:
            raw = await reader.read()
            try:
                # The body may be chunked or have a Content-Length: the JSON is
                # the part between the first '{' and the last '}'.
                obj = json.loads(raw[raw.index(b"{"):raw.rindex(b"}") + 1])
                ok = obj["choices"][0]["finish_reason"] in ("stop", "length")
            except (ValueError, KeyError, IndexError):
                ok = False
            if ok:
                stats["ok"] += 1
            else:
                stats["lost"] += 1
                stats["why"].append(f"bad body for request {i}: {raw[:200]!r}")
    except (OSError, asyncio.IncompleteReadError) as e:
        stats["lost"] += 1
        stats["why"].append(f"request {i}: {e!r}")
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except OSError:
            pass


async def run_load(url, connections, requests, abandon, max_tokens, seed, pid=None, warmup=0):
    host, port = url.split("//", 1)[1].rsplit(":", 1)
    port = int(port)
    stats = {"ok": 0, "lost": 0, "abandoned": 0, "http_errors": 0, "stream_errors": 0, "why": []}
    rss = []
    counter = iter(range(requests))
    stop_sampling = asyncio.Event()

    async def worker(w):
        rng = random.Random(seed * 100003 + w)
        for i in counter:
            await one_request(host, port, i, rng, abandon, max_tokens, stats)

    def finished():
        return sum(stats[k] for k in ("ok", "lost", "abandoned", "http_errors", "stream_errors"))

    async def sampler():
        # Sampled only once the warm-up requests have finished: the climb from
        # an idle server to every connection busy is the high-water mark of
        # the load, not memory kept per request.
        while not stop_sampling.is_set():
            v = rss_kib(pid)
            if v is not None and finished() >= warmup:
                rss.append((time.time(), v))
            try:
                await asyncio.wait_for(stop_sampling.wait(), 0.25)
            except asyncio.TimeoutError:
                pass

    t0 = time.time()
    samp = asyncio.create_task(sampler()) if pid else None
    await asyncio.gather(*(worker(w) for w in range(connections)))
    stats["seconds"] = time.time() - t0
    if samp:
        stop_sampling.set()
        await samp
    stats["rss"] = rss
    return stats


def rss_growth(rss):
    """(first window's mean RSS, last window's, growth as a fraction): windows
    of a minute, or a fifth of the run when it is shorter than five minutes."""
    if len(rss) < 2:
        return None
    span = rss[-1][0] - rss[0][0]
    win = 60.0 if span >= 300 else span / 5
    first = [v for t, v in rss if t <= rss[0][0] + win]
    last = [v for t, v in rss if t >= rss[-1][0] - win]
    a, b = sum(first) / len(first), sum(last) / len(last)
    return a, b, (b - a) / a


def check(url, stats, requests, before, idle_timeout=60):
    """The server-side checks after a run (before: /metrics before it):
    returns (failures, /metrics after)."""
    fails = []
    if stats["lost"]:
        fails.append(f"{stats['lost']} requests lost: {stats['why'][:5]}")
    if stats["http_errors"] or stats["stream_errors"]:
        fails.append(f"{stats['http_errors']} HTTP errors, {stats['stream_errors']} stream "
                     f"errors: {stats['why'][:5]}")
    deadline = time.time() + idle_timeout
    while True:
        m = metrics(url)
        idle = (m.get("shardserve:num_requests_running") == 0 and
                m.get("shardserve:num_requests_waiting") == 0 and
                finished_total(m) - finished_total(before) >= requests)
        if idle or time.time() > deadline:
            break
        time.sleep(0.2)
    done = finished_total(m) - finished_total(before)
    if done != requests:
        fails.append(f"/metrics counts {done:.0f} finished requests, {requests} were sent")
    # An abandoned request may have finished before the client left: at most as
    # many aborts as abandonments, never more.
    key = 'shardserve:request_success_total{finished_reason="abort"}'
    aborted = m.get(key, 0) - before.get(key, 0)
    if aborted > stats["abandoned"]:
        fails.append(f"{aborted:.0f} aborted in /metrics, only {stats['abandoned']} abandoned")
    for k in ("num_requests_running", "num_requests_waiting", "kv_cache_blocks_used"):
        if m.get("shardserve:" + k) != 0:
            fails.append(f"{k} is {m.get('shardserve:' + k)} after the run, expected 0")
    return fails, m


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", required=True)
    ap.add_argument("--connections", type=int, default=1000)
    ap.add_argument("--requests", type=int, default=10000)
    ap.add_argument("--abandon", type=float, default=0.05)
    ap.add_argument("--max-tokens", type=int, default=8)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--pid", type=int, help="the server's rank 0, for its RSS")
    ap.add_argument("--max-rss-growth", type=float, default=0.05)
    ap.add_argument("--warmup", type=int, default=None,
                    help="requests finished before RSS sampling starts (default: a fifth)")
    a = ap.parse_args()
    warmup = a.requests // 5 if a.warmup is None else a.warmup
    before = metrics(a.url)
    stats = asyncio.run(run_load(a.url, a.connections, a.requests, a.abandon, a.max_tokens,
                                 a.seed, a.pid, warmup))
    fails, m = check(a.url, stats, a.requests, before)
    out = {k: v for k, v in stats.items() if k not in ("why", "rss")}
    out["requests_per_s"] = round(a.requests / stats["seconds"], 1)
    g = rss_growth(stats["rss"])
    if g:
        out["rss_first_kib"], out["rss_last_kib"], out["rss_growth"] = round(g[0]), round(g[1]), \
            round(g[2], 4)
        out["rss_warmup_requests"] = warmup
        if g[2] > a.max_rss_growth:
            fails.append(f"RSS grew {100 * g[2]:.1f}% (> {100 * a.max_rss_growth:.0f}%)")
    out["generation_tokens_total"] = m.get("shardserve:generation_tokens_total")
    print(json.dumps(out))
    for f in fails:
        print("FAIL:", f, file=sys.stderr)
    sys.exit(1 if fails else 0)


if __name__ == "__main__":
    main()
