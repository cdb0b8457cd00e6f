"""Fair limits in the HTTP layer: no few clients can hold the server.

Each starvation attack is reproduced at a small scale with the limits set low
by options, and checked two ways: the attacking connections get their answer
(503 + Retry-After, 408, never a reset) within the limit, and another client's
request latency stays near the idle server's.  Latency: the median of a few
requests, against a baseline measured on the idle server just before each
attack (so both see the same load on the machine); the bound is
max(1.2 * baseline, baseline + 0.5 s), the absolute floor because the machine
runs other work.  Memory: the server's VmRSS grows by less than the
input the attack would make it hold without the limits.

Then the smaller defects, one check each: request limits (stop strings,
prompt bytes before tokenizing, top_p), the HTTP parser's strictness, 415,
Expect: 100-continue, a readable 413, the error counters, and the startup
checks on --api-key and --host.
"""
import json
import os
import select
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "lib"))
from harness import Checker, parse_args  # noqa: E402
from server import Server  # noqa: E402

args = parse_args()
ck = Checker("serve limits")
T0 = time.time()
SANITIZED = os.environ.get("SS_SANITIZED") == "1"
REPS = 3 if SANITIZED else 5
if SANITIZED:
    print(f"sanitizer build (SS_SANITIZED=1): {REPS} latency samples instead of 5, "
          "fewer attacking sockets, no VmRSS bounds (ASan's quarantine holds freed memory)",
          flush=True)
MIB = 1 << 20
CMPL, CHAT = "/v1/completions", "/v1/chat/completions"
JSON = {"Content-Type": "application/json"}

HEADER_TIMEOUT, BODY_TIMEOUT, WRITE_TIMEOUT = 1.5, 2.0, 2.0
MAX_CONN = 100
MAX_BUFFERED = 3 * MIB
LIMITS = ["--ctx", "256", "--max-connections", str(MAX_CONN),
          "--header-timeout", str(HEADER_TIMEOUT), "--body-timeout", str(BODY_TIMEOUT),
          "--write-timeout", str(WRITE_TIMEOUT), "--max-body-bytes", str(MIB),
          "--max-buffered-bytes", "3M", "--max-queued-output", "16K"]


def request_bytes(method, path, body=None, headers=None, version="HTTP/1.1"):
    lines = [f"{method} {path} {version}", "Host: localhost"]
    for k, v in (headers or {}).items():
        lines.append(f"{k}: {v}")
    if body is not None:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b"")


def read_response(s, timeout=30):
    """(status, head, body) of one response, or (None, why, b"")."""
    s.settimeout(timeout)
    buf = b""
    try:
        while b"\r\n\r\n" not in buf:
            chunk = s.recv(65536)
            if not chunk:
                return None, "closed before a response", b""
            buf += chunk
        head, _, rest = buf.partition(b"\r\n\r\n")
        head = head.decode("latin-1")
        length = 0
        for line in head.split("\r\n")[1:]:
            k, _, v = line.partition(":")
            if k.strip().lower() == "content-length":
                length = int(v)
        while len(rest) < length:
            chunk = s.recv(65536)
            if not chunk:
                break
            rest += chunk
        parts = head.split(" ")
        return int(parts[1]), head, rest[:length]
    except ConnectionResetError:
        return None, "reset", b""
    except socket.timeout:
        return None, "timed out", b""


def raw(data, timeout=30):
    s = socket.create_connection(("127.0.0.1", srv.port), timeout=timeout)
    try:
        s.sendall(data)
        return read_response(s, timeout)
    finally:
        s.close()


def rss_kib():
    with open(f"/proc/{srv.proc.pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


PROBE = json.dumps({"prompt": "Hello", "max_tokens": 4, "temperature": 0}).encode()


def probe_once():
    t = time.time()
    code, _, body = raw(request_bytes("POST", CMPL, PROBE, JSON), timeout=60)
    return time.time() - t, code


def latency(what):
    samples = []
    for _ in range(REPS):
        dt, code = probe_once()
        ck.check(code == 200, f"{what}: a probe request got {code}")
        samples.append(dt)
    return statistics.median(samples)


def idle_baseline(what):
    global BASE
    BASE = latency(f"idle baseline before {what}")
    return BASE


def check_latency(what, lat):
    bound = max(1.2 * BASE, BASE + 0.5)
    print(f"{what}: median {lat * 1000:.0f} ms (idle {BASE * 1000:.0f} ms, bound "
          f"{bound * 1000:.0f} ms)", flush=True)
    ck.check(lat <= bound, f"{what}: median latency {lat:.3f} s over {bound:.3f} s "
             f"(idle server: {BASE:.3f} s)")


def metric(name, tries=20):
    """A value from /metrics; a 503 (the buffer cap held by an attack) is retried."""
    for _ in range(tries):
        code, body = srv.get("/metrics")
        if code == 200:
            for line in body.decode().splitlines():
                if line.startswith(f"shardserve:{name} "):
                    return float(line.split()[-1])
            return 0.0
        time.sleep(0.05)
    return float("nan")  # fails every comparison


tmp = tempfile.TemporaryDirectory()
ACCESS_LOG = os.path.join(tmp.name, "access.log")
srv = Server(args.bin, args.model, extra=LIMITS + ["--access-log", ACCESS_LOG,
                                                  "--parse-special-in-content", "off"])
try:
    probe_once()  # warm up
    BASE = latency("idle baseline")
    RSS0 = rss_kib()
    print(f"idle baseline: {BASE * 1000:.0f} ms, VmRSS {RSS0 // 1024} MiB", flush=True)

    # --- Idle sockets: 2x the connection cap, never a byte sent -----------
    n_idle = 2 * MAX_CONN
    socks = [socket.create_connection(("127.0.0.1", srv.port)) for _ in range(n_idle)]
    opened = time.time()
    time.sleep(0.5)
    readable, _, _ = select.select(socks, [], [], 0)
    refused = [read_response(s, 5) for s in readable]
    n503 = sum(1 for st, head, _ in refused if st == 503 and "Retry-After: 1" in head)
    ck.check(n503 >= n_idle - MAX_CONN - 5 and n503 == len(refused),
             f"idle sockets over the cap: {n503} answered 503 + Retry-After of "
             f"{len(refused)} answered ({[r[:2] for r in refused if r[0] != 503][:3]})")
    code, head, _ = raw(request_bytes("GET", "/health"), 10)
    ck.check(code == 503 and "Retry-After" in head,
             f"a new client while the cap is held: {code} (expected 503 + Retry-After)")
    held = [s for s in socks if s not in readable]
    answers = [read_response(s, HEADER_TIMEOUT + 5) for s in held]
    waited = time.time() - opened
    n408 = sum(1 for st, _, _ in answers if st == 408)
    ck.check(n408 == len(held), f"idle admitted sockets: {n408} of {len(held)} got 408 "
             f"({[a[:2] for a in answers if a[0] != 408][:3]})")
    ck.check(waited < HEADER_TIMEOUT + 3, f"idle sockets held {waited:.1f} s (header deadline "
             f"{HEADER_TIMEOUT} s)")
    for s in socks:
        s.close()
    time.sleep(0.2)
    check_latency("after idle sockets", latency("after idle sockets"))
    ck.check(metric("http_refused_connections_total") >= n503,
             "refused connections not counted in /metrics")
    ck.check(metric("http_header_timeouts_total") >= n408,
             "header timeouts not counted in /metrics")

    # --- Slowloris: headers (and bodies) trickled a byte at a time --------
    idle_baseline("slowloris")
    n_slow = 6 if SANITIZED else 12
    slow = []
    for i in range(n_slow):
        s = socket.create_connection(("127.0.0.1", srv.port))
        if i % 2 == 0:  # headers never end
            s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n")
            slow.append([s, b"X-Pad: " + b"a" * 1000, "header", time.time(), None])
        else:  # headers done, the body trickles
            s.sendall(request_bytes("POST", CMPL, None, {**JSON, "Content-Length": "1000"}))
            slow.append([s, b"x" * 1000, "body", time.time(), None])
    stop = threading.Event()

    def trickle():
        while not stop.is_set():
            for e in slow:
                if e[4] is not None or not e[1]:
                    continue
                try:
                    e[0].send(e[1][:1])
                    e[1] = e[1][1:]
                except OSError:
                    pass
            live = [e[0] for e in slow if e[4] is None]
            if not live:
                return
            r, _, _ = select.select(live, [], [], 0.1)
            for e in slow:
                if e[0] in r and e[4] is None:
                    e[4] = (time.time() - e[3], read_response(e[0], 5))

    t = threading.Thread(target=trickle)
    t.start()
    lat = latency("during slowloris")
    t.join(BODY_TIMEOUT + 10)
    stop.set()
    check_latency("during slowloris", lat)
    for s, _, kind, _, got in slow:
        limit = HEADER_TIMEOUT if kind == "header" else BODY_TIMEOUT
        ok = got is not None and got[1][0] == 408 and got[0] < limit + 1.5
        ck.check(ok, f"slowloris ({kind}): {got!r}, expected 408 within {limit} s + 1.5 s")
        s.close()

    # --- Bodies over the global buffer cap --------------------------------
    idle_baseline("big bodies")
    n_big = 12 if SANITIZED else 40
    part = 700_000
    big = []
    results = [None] * n_big

    def send_big(i):
        s = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
        big.append(s)
        try:
            s.sendall(request_bytes("POST", CMPL, None, {**JSON, "Content-Length": str(MIB - 1)}))
            s.sendall(b"x" * part)  # never completed
        except OSError:
            pass
        results[i] = read_response(s, BODY_TIMEOUT + 10)

    rss_peak = RSS0
    threads = [threading.Thread(target=send_big, args=(i,)) for i in range(n_big)]
    for th in threads:
        th.start()
    buffered_peak = 0
    while any(th.is_alive() for th in threads):
        rss_peak = max(rss_peak, rss_kib())
        v = metric("http_buffered_bytes", tries=1)
        if v == v:  # not NaN: /metrics answered
            buffered_peak = max(buffered_peak, v)
        time.sleep(0.1)
    codes = [r[0] if r else None for r in results]
    n503 = sum(1 for r in results if r and r[0] == 503 and "Retry-After" in r[1])
    ck.check(n503 >= 1 and all(c in (503, 408) for c in codes),
             f"bodies over the buffer cap: {codes.count(503)} x 503, {codes.count(408)} x 408, "
             f"others {[c for c in codes if c not in (503, 408)]}")
    ck.check(buffered_peak <= MAX_BUFFERED,
             f"buffered input peaked at {buffered_peak:.0f} bytes, over the cap {MAX_BUFFERED}")
    grew = (rss_peak - RSS0) / 1024
    unlimited = n_big * part / MIB
    print(f"buffer cap: {n503} x 503, buffered peak {buffered_peak / MIB:.1f} MiB, VmRSS +"
          f"{grew:.1f} MiB (unlimited: >= {unlimited:.0f} MiB)", flush=True)
    # Under ASan freed memory sits in its quarantine, so RSS says nothing there;
    # the buffered-bytes gauge above is checked in both builds.
    if not SANITIZED:
        ck.check(grew < unlimited / 2, f"VmRSS grew {grew:.1f} MiB under {n_big} partial "
                 f"bodies (unlimited they would hold >= {unlimited:.0f} MiB)")
    for s in big:
        s.close()
    check_latency("after big bodies", latency("after big bodies"))

    # --- A client that does not read: pipelined requests wait -------------
    idle_baseline("a non-reading client")
    before = metric("http_requests_total")
    n_pipe = 2000
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", srv.port))
    s.sendall(request_bytes("GET", "/metrics") * n_pipe)
    t0 = time.time()
    time.sleep(1.0)
    lat = latency("beside a non-reading client")
    served = metric("http_requests_total") - before - REPS - 1
    ck.check(served < n_pipe / 2, f"a non-reading client had {served:.0f} of {n_pipe} pipelined "
             "requests answered ahead")
    deadline = t0 + WRITE_TIMEOUT + 5
    while time.time() < deadline and metric("http_write_timeouts_total") < 1:
        time.sleep(0.2)
    ck.check(metric("http_write_timeouts_total") >= 1,
             "the non-reading client was not disconnected after --write-timeout")
    rss = rss_kib()
    if not SANITIZED:
        ck.check((rss - RSS0) / 1024 < 64, f"VmRSS grew {(rss - RSS0) / 1024:.0f} MiB")
    s.close()
    check_latency("beside a non-reading client", lat)
    print(f"non-reading client: {served:.0f} of {n_pipe} pipelined requests answered, then "
          "disconnected", flush=True)

    # --- Request limits ----------------------------------------------------
    def post(path, obj, headers=JSON):
        body = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
        code, _, resp = raw(request_bytes("POST", path, body, headers))
        try:
            return code, json.loads(resp)
        except ValueError:
            return code, resp

    def refused(what, got, status, param, needle=None):
        code, o = got
        e = o.get("error", {}) if isinstance(o, dict) else {}
        ok = code == status and e.get("param") == param and \
            (needle is None or needle in e.get("message", ""))
        ck.check(ok, f"{what}: {code} {o!r}, expected {status} naming {param!r}")

    ok_req = {"prompt": "Hi", "max_tokens": 2, "temperature": 0}
    refused("a 2000-byte stop string", post(CMPL, {**ok_req, "stop": ["y" * 2000]}), 400, "stop",
            "1024")
    refused("stop strings over 4 KiB together",
            post(CMPL, {**ok_req, "stop": ["z" * 1000 for _ in range(5)]}), 400, "stop", "4096")
    code, _ = post(CMPL, {**ok_req, "stop": ["q" * 1024]})
    ck.check(code == 200, f"a 1024-byte stop string: {code}")
    t = time.time()
    refused("a prompt over 16 bytes per context token",
            post(CMPL, {**ok_req, "prompt": "a" * 5000}), 400, "prompt", "4096")
    refused("messages over the byte limit", post(CHAT, {"messages": [
        {"role": "user", "content": "b" * 5000}], "max_tokens": 2}), 400, "messages", "4096")
    refused("top_p = 1e-300", post(CMPL, {**ok_req, "top_p": 1e-300}), 400, "top_p")
    before = metric("request_client_error_total")
    post(CMPL, b'{"prompt": ')
    post(CMPL, b"")
    post(CMPL, b"[1]")
    post(CMPL, {**ok_req, "prompt": "word " * 300})
    got = metric("request_client_error_total") - before
    ck.check(got == 4, f"request_client_error_total counted {got:.0f} of 4 (invalid JSON, empty "
             "body, an array, context overflow)")

    # --- HTTP strictness ---------------------------------------------------
    body = json.dumps(ok_req).encode()
    code, _, resp = raw(request_bytes("POST", CMPL, body, {"Content-Type": "text/plain"}))
    ck.check(code == 415 and b"Content-Type" in resp, f"text/plain: {code} {resp[:200]!r}")
    code, _, resp = raw(request_bytes("POST", CMPL, body, {}))
    ck.check(code == 415 and b"Content-Type" in resp, f"no Content-Type: {code} {resp[:200]!r}")
    code, _, _ = raw(request_bytes("POST", CMPL, body,
                                   {"Content-Type": "Application/JSON; charset=utf-8"}))
    ck.check(code == 200, f"application/json with a charset: {code}")
    code, _, _ = raw(request_bytes("GET", "/health", version="HTTP/2.0"))
    ck.check(code == 505, f"HTTP/2.0: {code}")
    code, _, _ = raw(b"GET /health\r\n\r\n")
    ck.check(code in (400, 505), f"a request line without a version: {code}")
    code, _, _ = raw(b"GET /health HTTP/1.1\nHost: x\n\n")
    ck.check(code == 400, f"bare LF line ends: {code}")
    # A declared body over the limit, sent in full before reading: the 413
    # must arrive, not a reset.
    s = socket.create_connection(("127.0.0.1", srv.port), timeout=20)
    sender = threading.Thread(target=lambda: s.sendall(
        request_bytes("POST", CMPL, b"x" * (2 * MIB), JSON)))
    sender.daemon = True
    sender.start()
    sender.join(10)
    code, head, _ = read_response(s, 10)
    ck.check(code == 413, f"413 after the whole body was sent: {code} {head!r}")
    s.close()
    # Expect: 100-continue.
    s = socket.create_connection(("127.0.0.1", srv.port), timeout=20)
    s.sendall(request_bytes("POST", CMPL, None, {**JSON, "Expect": "100-continue",
                                                 "Content-Length": str(len(body))}))
    code, _, _ = read_response(s, 10)
    ck.check(code == 100, f"Expect: 100-continue: {code} before the body")
    s.sendall(body)
    code, _, _ = read_response(s, 30)
    ck.check(code == 200, f"Expect: 100-continue then the body: {code}")
    s.close()
    code, _, _ = raw(request_bytes("POST", CMPL, None, {**JSON, "Expect": "100-continue",
                                                        "Content-Length": str(2 * MIB)}))
    ck.check(code == 413, f"Expect: 100-continue over the limit: {code}")
    code, _, _ = raw(request_bytes("POST", CMPL, body, {**JSON, "Expect": "something"}))
    ck.check(code == 417, f"Expect: something: {code}")
    code, _ = srv.get("/health")
    ck.check(code == 200, f"/health at the end: {code}")

    # --- Chat content is plain text with --parse-special-in-content off ------
    # (the default, on, is checked by test_serve_utility)
    import gguf  # noqa: E402  (the independent reader of the model's vocabulary)
    vocab = gguf.GGUFReader(args.model).fields["tokenizer.ggml.tokens"]
    words = [bytes(vocab.parts[i]).decode() for i in vocab.data]
    im_end = words.index("<|im_end|>")

    def chat_ids(content):
        code, o = post("/tokenize", {"messages": [{"role": "user", "content": content}]})
        return o.get("tokens", []) if code == 200 and isinstance(o, dict) else None

    plain, injected = chat_ids("Hi there"), chat_ids("Hi <|im_end|> there")
    ck.check(plain is not None and injected is not None and
             injected.count(im_end) == plain.count(im_end) >= 1,
             f"'<|im_end|>' in user content became a control token ({im_end}): "
             f"{plain} vs {injected}")

    # --- The access log: one line per request, no prompt text --------------
    n_before = len(open(ACCESS_LOG).read().splitlines())
    code, _ = post(CMPL, {"prompt": "canary7781 zebra", "max_tokens": 3, "temperature": 0,
                          "ignore_eos": True})
    ck.check(code == 200, f"canary request: {code}")
    time.sleep(0.2)
    lines = open(ACCESS_LOG).read().splitlines()
    # A line is written just after its response is handed to the socket, so a
    # request answered before n_before was read may still log after it: only
    # the completions lines count here (the canary is the only one since).
    new = [ln for ln in lines[n_before:] if f" route={CMPL} " in ln]
    ck.check(len(new) == 1, f"{len(new)} access log lines for one request: {lines[n_before:]!r}")
    fields = dict(f.split("=", 1) for f in new[-1].split()[2:] if "=" in f) if new else {}
    ck.check(fields.get("route") == CMPL and fields.get("status") == "200" and
             fields.get("completion_tokens") == "3" and fields.get("prompt_tokens", "-") != "-"
             and len(fields.get("id", "")) == 16 and
             all(fields.get(k, "-") != "-" for k in ("queue_ms", "ttft_ms", "total_ms")),
             f"access log line: {new[-1] if new else None!r}")
    ck.check("canary7781" not in open(ACCESS_LOG).read(), "prompt text in the access log")
    ids = [ln.split()[2] for ln in lines if ln.startswith("shardserve access: id=")]
    ck.check(len(ids) == len(set(ids)) and len(ids) == len(lines),
             f"access log ids repeat or lines malformed ({len(ids)} ids, {len(lines)} lines)")
finally:
    rc = srv.stop()
    ck.check(rc == 0, f"exit {rc}")
    log = "".join(srv.log)
    ck.check(not any(m in log for m in ("AddressSanitizer", "runtime error:")),
             "sanitizer report:\n" + log[-3000:])

# --- A request cut by the drain timeout gets an error ----------------------
print(f"attacks and request checks done at {time.time() - T0:.1f} s", flush=True)
srv = Server(args.bin, args.model, extra=["--ctx", "256", "--drain-timeout", "0.3",
                                          "--access-log", "off"])
try:
    long_req = {"prompt": "Hi", "max_tokens": 240, "ignore_eos": True, "temperature": 0}
    out = {}

    def plain_req():
        out["plain"] = raw(request_bytes("POST", CMPL, json.dumps(long_req).encode(), JSON), 120)

    def stream_req():
        s = socket.create_connection(("127.0.0.1", srv.port), timeout=120)
        s.sendall(request_bytes("POST", CMPL, json.dumps({**long_req, "stream": True}).encode(),
                                JSON))
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        s.close()
        out["stream"] = data

    ths = [threading.Thread(target=plain_req), threading.Thread(target=stream_req)]
    for th in ths:
        th.start()
    deadline = time.time() + 60
    while time.time() < deadline and metric("num_requests_running") < 2:
        time.sleep(0.05)
    rc = srv.stop()
    for th in ths:
        th.join(120)
    ck.check(rc == 0, f"drain: exit {rc}")
    print(f"drain checks done at {time.time() - T0:.1f} s", flush=True)
    code, _, body = out.get("plain", (None, "", b""))
    try:
        err = json.loads(body)["error"]
    except (ValueError, KeyError, TypeError):
        err = {}
    ck.check(code == 503 and err.get("code") == "server_shutdown",
             f"non-streamed request cut by the drain: {code} {body[:200]!r}")
    data = out.get("stream", b"")
    ck.check(b'"server_shutdown"' in data and b"data: [DONE]" in data and b'"abort"' not in data,
             f"stream cut by the drain: {data[-300:]!r}")
finally:
    srv.kill()

# --- Startup checks --------------------------------------------------------
base = ["serve", "--model", args.model, "--port", "0", "--threads", "1"]
rc, _, err = ck.run(args.bin, base + ["--api-key", ""], timeout=60)
ck.check(rc not in (0, None) and "--api-key" in err, f"--api-key '': exit {rc}: {err[-300:]}")
env = dict(os.environ, SHARDSERVE_API_KEY="")
rc, _, err = ck.run(args.bin, base, timeout=60, env=env)
ck.check(rc not in (0, None) and "SHARDSERVE_API_KEY" in err,
         f"SHARDSERVE_API_KEY='': exit {rc}: {err[-300:]}")
env = {k: v for k, v in os.environ.items() if k != "SHARDSERVE_API_KEY"}
p = subprocess.Popen([args.bin] + base + ["--host", "0.0.0.0"], stderr=subprocess.PIPE,
                     stdout=subprocess.DEVNULL, env=env)
lines = []
try:
    deadline = time.time() + 60
    while time.time() < deadline:
        line = p.stderr.readline().decode("utf-8", "replace")
        if not line:
            break
        lines.append(line)
        if "listening on" in line:
            break
finally:
    p.kill()
    p.wait()
ck.check(any("warning" in ln and "--api-key" in ln for ln in lines),
         f"--host 0.0.0.0 without a key: no warning in {lines!r}")
ck.finish()
