"""Backpressure on streams: a client that stops reading pauses its sequence.

Two raw-socket clients, each with a small SO_RCVBUF, open a long stream and
read nothing; the server's queued output (--max-queued-output, small here)
fills and both are paused.  Checked, against /metrics and against clients that
read normally:
  (a) the paused sequences are not decoded: num_requests_paused says 2, and
      generation_tokens_total grows by exactly the tokens other clients got
      (their usage); they hold their KV blocks until the probes need them
      (a pool of 16 blocks), and then one is preempted;
  (b) another client's latency beside them stays within 20% of the idle
      server's, measured just before on the same server (with an absolute
      floor of 0.15 s, as the machine runs other work);
  (c) the preempted client starts reading: its stream resumes (recomputed) and
      ends, and its text equals that of the same request (same seed) made
      through the official `openai` client;
  (d) the second never reads: after --write-timeout it is disconnected, its
      request aborted (request_success_total{abort}, http_write_timeouts_total,
      an access-log line with write_timeout) and its KV freed (blocks used 0).
Then a non-streamed request is never paused: its answer is written whole, and
requests pipelined behind it are not answered while it is unread.
"""
import json
import os
import re
import socket
import statistics
import sys
import tempfile
import time

import openai

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "lib"))
from harness import Checker, parse_args  # noqa: E402
from server import Server  # noqa: E402

args = parse_args()
ck = Checker("serve pause")
T0 = time.time()
SANITIZED = os.environ.get("SS_SANITIZED") == "1"
REPS = 1 if SANITIZED else 5
WRITE_TIMEOUT = 20 if SANITIZED else 10
if SANITIZED:
    print(f"sanitizer build (SS_SANITIZED=1): {REPS} latency sample, printed, not bounded "
          f"(one sample of a 7 s probe is noise on a shared machine; the release build "
          f"bounds it), streams of 120 tokens instead of 200, --write-timeout "
          f"{WRITE_TIMEOUT}", flush=True)

# Each stream pauses after ~90 tokens; the rest come after it resumes.
STREAM = {"prompt": "Once upon a time, in a small village by the sea,",
          "max_tokens": 120 if SANITIZED else 200,
          "temperature": 0.8, "seed": 11, "ignore_eos": True}
# About 50 prompt tokens: with its 24 new ones the probe needs 5 blocks, more
# than the paused streams leave free.
PROBE = {"prompt": "Question: In a few sentences, describe the history of the city of Paris, "
                   "its famous landmarks such as the Eiffel Tower and the Louvre museum, and "
                   "why so many people from all over the world visit it every year. Answer:",
         "max_tokens": 24, "temperature": 0, "ignore_eos": True}

# A pool of 16 blocks of 16 tokens: the two paused streams hold 12-14 when they
# pause, so a probe's 5 blocks take the newest one's (preempted, it is
# recomputed when it resumes, and its text must not change).  No prefix
# caching: the probe's prompt is computed whole both on the idle server and
# beside the streams (whose blocks would otherwise evict its cached ones).
KV_BLOCKS = 16

tmp = tempfile.TemporaryDirectory()
ACCESS_LOG = os.path.join(tmp.name, "access.log")
srv = Server(args.bin, args.model,
             extra=["--ctx", "256", "--kv-blocks", str(KV_BLOCKS), "--no-prefix-caching",
                    "--write-timeout", str(WRITE_TIMEOUT),
                    "--max-queued-output", "4K", "--access-log", ACCESS_LOG])


def metrics():
    """The server's shardserve: metrics, named without the prefix."""
    p = "shardserve:"
    return {k[len(p):]: v for k, v in srv.metrics().items() if k.startswith(p)}


def metric(name):
    return metrics().get(name, float("nan"))


def wait_for(what, cond, timeout):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return True
        time.sleep(0.1)
    ck.check(False, f"{what}: not within {timeout} s")
    return False


def probe():
    """One non-streamed request: (seconds, completion tokens)."""
    t = time.time()
    code, body = srv.request("POST", "/v1/completions", PROBE, timeout=120)
    dt = time.time() - t
    ck.check(code == 200, f"a probe request got {code}: {body[:200]!r}")
    return dt, json.loads(body)["usage"]["completion_tokens"] if code == 200 else 0


def latency():
    samples, tokens = [], 0
    for _ in range(REPS):
        dt, n = probe()
        samples.append(dt)
        tokens += n
    return statistics.median(samples), tokens


def open_unread(body, headers=""):
    """A socket that sends a request and reads nothing (a 4 KiB receive buffer)."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", srv.port))
    data = json.dumps(body).encode()
    s.sendall((f"POST /v1/completions HTTP/1.1\r\nHost: localhost\r\n"
               f"Content-Type: application/json\r\n{headers}"
               f"Content-Length: {len(data)}\r\n\r\n").encode() + data)
    return s


def read_all(s, timeout):
    s.settimeout(timeout)
    buf = b""
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    except (socket.timeout, ConnectionResetError) as e:
        return buf, repr(e)
    return buf, None


def dechunk(body):
    out, i = b"", 0
    while True:
        j = body.index(b"\r\n", i)
        n = int(body[i:j], 16)
        if n == 0:
            return out
        out += body[j + 2:j + 2 + n]
        i = j + 2 + n + 2


def sse_text(raw_response):
    """The text of a streamed completion, and whether it ended with [DONE]."""
    head, _, body = raw_response.partition(b"\r\n\r\n")
    ck.check(head.startswith(b"HTTP/1.1 200"), f"stream answered {head[:60]!r}")
    text, done, reasons = "", False, []
    for line in dechunk(body).decode().split("\n"):
        if not line.startswith("data: "):
            continue
        if line == "data: [DONE]":
            done = True
            continue
        ch = json.loads(line[6:])["choices"][0]
        text += ch["text"]
        if ch.get("finish_reason"):
            reasons.append(ch["finish_reason"])
    return text, done, reasons


try:
    probe()  # warm up
    client = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused")
    ref = "".join(c.choices[0].text for c in client.completions.create(
        model=client.models.list().data[0].id, stream=True, extra_body={"ignore_eos": True},
        **{k: v for k, v in STREAM.items() if k != "ignore_eos"}))
    ck.check(len(ref) > 200, f"the reference stream is short: {ref!r}")

    base, _ = latency()
    m0 = metrics()

    # --- Two clients open long streams and read nothing --------------------
    body = dict(STREAM, stream=True)
    # The client that will read again is the newer: the one preempted.
    quitter = open_unread(body)
    wait_for("the first stream admitted", lambda: metric("num_requests_running") == 1, 30)
    resumer = open_unread(body, "Connection: close\r\n")
    wait_for("both non-reading streams paused",
             lambda: metric("num_requests_paused") == 2, 60)
    t_paused = time.time()
    m1 = metrics()
    gen_at_pause = m1["generation_tokens_total"] - m0["generation_tokens_total"]
    ck.check(0 < gen_at_pause < 2 * STREAM["max_tokens"],
             f"{gen_at_pause:.0f} tokens made before both streams paused")
    ck.check(m1["kv_cache_blocks_used"] > 0, "the paused streams do not hold their KV blocks")

    # (a) + (b): others are served; the paused sequences make no tokens.
    lat, probe_tokens = latency()
    time.sleep(0.5)
    m2 = metrics()
    paused_made = m2["generation_tokens_total"] - m1["generation_tokens_total"] - probe_tokens
    print(f"paused: {gen_at_pause:.0f} tokens before the pause, {paused_made:.0f} while paused "
          f"(probes: {probe_tokens}), {time.time() - t_paused:.1f} s", flush=True)
    ck.check(paused_made == 0, f"the paused streams made {paused_made:.0f} tokens while paused")
    ck.check(m2["num_requests_paused"] == 2, "the streams did not stay paused beside the probes")
    ck.check(m2["request_pauses_total"] - m0.get("request_pauses_total", 0) >= 2,
             "request_pauses_total did not count the pauses")
    preempted = m2["num_preemptions_total"] - m1["num_preemptions_total"]
    print(f"KV blocks: {m1['kv_cache_blocks_used']:.0f} of {KV_BLOCKS} held at the pause; "
          f"{preempted:.0f} paused stream(s) preempted for the probes", flush=True)
    ck.check(preempted >= 1, "no paused stream was preempted when the probes needed its blocks")
    bound = max(1.2 * base, base + 0.15)
    print(f"latency beside two paused streams: {lat * 1000:.0f} ms (idle {base * 1000:.0f} ms, "
          f"bound {bound * 1000:.0f} ms)", flush=True)
    ck.check(SANITIZED or lat <= bound, f"latency beside paused streams {lat:.3f} s over "
             f"{bound:.3f} s (idle: {base:.3f} s)")

    # (c) The first client reads: its stream resumes and completes.
    ck.check(time.time() - t_paused < WRITE_TIMEOUT - 1,
             "the paused phase took too long to leave the stream time before --write-timeout")
    raw, err = read_all(resumer, 120)
    resumer.close()
    ck.check(err is None, f"reading the resumed stream: {err}")
    text, done, reasons = sse_text(raw)
    ck.check(done and reasons == ["length"],
             f"the resumed stream ended with [DONE] {done}, finish reasons {reasons}")
    ck.check(text == ref, f"the resumed stream's text differs from the openai client's:\n"
             f"  got {text!r}\n  ref {ref!r}")

    # (d) The second never reads: aborted after --write-timeout, its KV freed.
    wait_for("the non-reading client disconnected",
             lambda: metric("http_write_timeouts_total") >= 1, WRITE_TIMEOUT + 10)
    waited = time.time() - t_paused
    ck.check(waited > WRITE_TIMEOUT - 1.5, f"disconnected {waited:.1f} s after its pause, before "
             f"--write-timeout {WRITE_TIMEOUT} s")
    wait_for("KV blocks freed once idle", lambda: metric("kv_cache_blocks_used") == 0, 10)
    m3 = metrics()
    abort = 'request_success_total{finished_reason="abort"}'
    ck.check(m3.get(abort, 0) - m0.get(abort, 0) == 1,
             f"aborted requests: {m3.get(abort, 0) - m0.get(abort, 0):.0f} (expected 1)")
    ck.check(m3["num_requests_paused"] == 0, "a request is still counted as paused")
    raw, err = read_all(quitter, 10)
    quitter.close()
    ck.check(b"data: [DONE]" not in raw, "the disconnected stream was answered whole")
    with open(ACCESS_LOG) as f:
        log = f.read()
    ck.check(re.search(r"route=/v1/completions status=- .* write_timeout", log),
             "no access-log line says write_timeout")

    # --- A non-streamed answer is written whole; no pause, no read-ahead ---
    big = {"prompt": "Hello", "max_tokens": 60, "temperature": 0, "ignore_eos": True,
           "logprobs": 20}
    data = json.dumps(big).encode()

    def one(extra=""):
        return (f"POST /v1/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: "
                f"application/json\r\n{extra}Content-Length: {len(data)}\r\n\r\n"
                ).encode() + data
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", srv.port))
    length = 'request_success_total{finished_reason="length"}'
    n0 = metrics().get(length, 0)
    s.sendall(one() * 2 + one("Connection: close\r\n"))
    wait_for("the first non-streamed answer", lambda: metrics().get(length, 0) > n0, 60)
    time.sleep(2)  # time for the other two, were they read ahead
    m4 = metrics()
    answered = m4.get(length, 0) - n0
    print(f"non-streamed, unread: {answered:.0f} of 3 pipelined requests answered", flush=True)
    ck.check(answered == 1, f"{answered:.0f} of 3 pipelined requests answered behind an unread "
             "answer (expected 1)")
    ck.check(m4["num_requests_paused"] == 0 and
             m4["request_pauses_total"] == m3["request_pauses_total"],
             "a non-streamed request was paused")
    raw, _ = read_all(s, 30)
    s.close()
    ck.check(raw.count(b"HTTP/1.1 200") == 3,
             f"once read, {raw.count(b'HTTP/1.1 200')} of 3 pipelined answers arrived")
    # Nothing left running: SIGTERM drains at once, exit 0 (under ASan, no leak).
    rc = srv.stop()
    ck.check(rc == 0, f"the server exited {rc} on SIGTERM:\n{''.join(srv.log[-20:])}")
finally:
    srv.kill()
print(f"{time.time() - T0:.1f} s", flush=True)
ck.finish()
