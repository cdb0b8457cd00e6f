"""Bad requests get the right status and OpenAI's error JSON, and the server
keeps serving.  One table, each case sent on its own connection; after every
case a good request must still succeed.
"""
import json
import os
import socket
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "lib"))
from harness import Checker, parse_args  # noqa: E402
from server import Server  # noqa: E402

args = parse_args()
ck = Checker("serve bad input")
KEY = "sk-test-123"
AUTH = {"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"}
CMPL, CHAT = "/v1/completions", "/v1/chat/completions"
ok_prompt = {"prompt": "Hi", "max_tokens": 2, "temperature": 0}
ok_chat = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}


def j(**kw):
    d = dict(ok_prompt)
    d.update(kw)
    return json.dumps(d).encode()


def jc(**kw):
    d = dict(ok_chat)
    d.update(kw)
    return json.dumps(d).encode()


# (name, method, path, body bytes, headers, status, text expected in the message or param)
CASES = [
    ("malformed JSON", "POST", CMPL, b'{"prompt": "x",', AUTH, 400, "JSON"),
    ("body is an array", "POST", CMPL, b"[1, 2]", AUTH, 400, "object"),
    ("empty body", "POST", CMPL, b"", AUTH, 400, "body"),
    ("prompt missing", "POST", CMPL, b'{"max_tokens": 3}', AUTH, 400, "prompt"),
    ("prompt is a number", "POST", CMPL, j(prompt=5), AUTH, 400, "prompt"),
    ("prompt is empty", "POST", CMPL, j(prompt=""), AUTH, 400, "prompt"),
    ("max_tokens is a string", "POST", CMPL, j(max_tokens="ten"), AUTH, 400, "max_tokens"),
    ("max_tokens negative", "POST", CMPL, j(max_tokens=-5), AUTH, 400, "max_tokens"),
    ("max_tokens zero", "POST", CMPL, j(max_tokens=0), AUTH, 400, "max_tokens"),
    ("max_tokens huge", "POST", CMPL, j(max_tokens=10**9), AUTH, 400, "1000000000"),
    ("max_completion_tokens huge", "POST", CHAT, jc(max_completion_tokens=100000), AUTH, 400,
     "context length"),
    ("temperature negative", "POST", CMPL, j(temperature=-1), AUTH, 400, "temperature"),
    ("temperature a string", "POST", CMPL, j(temperature="hot"), AUTH, 400, "temperature"),
    ("top_p zero", "POST", CMPL, j(top_p=0), AUTH, 400, "top_p"),
    ("top_p above 1", "POST", CMPL, j(top_p=1.5), AUTH, 400, "top_p"),
    ("seed a string", "POST", CMPL, j(seed="x"), AUTH, 400, "seed"),
    ("n = 17", "POST", CMPL, j(n=17), AUTH, 400, "n"),
    ("n = 0", "POST", CMPL, j(n=0), AUTH, 400, "n"),
    ("best_of below n", "POST", CMPL, j(n=3, best_of=2), AUTH, 400, "best_of"),
    ("stop a number", "POST", CMPL, j(stop=7), AUTH, 400, "stop"),
    ("17 stop strings", "POST", CMPL, j(stop=[f"s{i}" for i in range(17)]), AUTH, 400, "stop"),
    ("stream not a boolean", "POST", CMPL, j(stream="yes"), AUTH, 400, "stream"),
    ("stream_options not an object", "POST", CMPL, j(stream=True, stream_options=3), AUTH, 400,
     "stream_options"),
    ("logprobs above 20", "POST", CMPL, j(logprobs=50), AUTH, 400, "logprobs"),
    ("top_logprobs without logprobs", "POST", CHAT, jc(top_logprobs=3), AUTH, 400, "top_logprobs"),
    ("messages empty", "POST", CHAT, jc(messages=[]), AUTH, 400, "messages"),
    ("messages not a list", "POST", CHAT, jc(messages="hello"), AUTH, 400, "messages"),
    ("unknown role", "POST", CHAT, jc(messages=[{"role": "wizard", "content": "x"}]), AUTH, 400,
     "role"),
    ("content a number", "POST", CHAT, jc(messages=[{"role": "user", "content": 5}]), AUTH, 400,
     "content"),
    ("image content part", "POST", CHAT, jc(messages=[{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "x"}}]}]), AUTH, 400, "text part"),
    ("invalid UTF-8", "POST", CMPL, b'{"prompt": "\xff\xfe bad", "max_tokens": 2}', AUTH, 400,
     "JSON"),
    ("token id -1", "POST", CMPL, j(prompt=[1, -1, 3]), AUTH, 400, "prompt[1]"),
    ("token id past the vocabulary", "POST", CMPL, j(prompt=[49152]), AUTH, 400, "prompt[0]"),
    ("prompt longer than the context", "POST", CMPL, j(prompt="word " * 400), AUTH, 400,
     "context length"),
    ("oversized body", "POST", CMPL, j(prompt="x" * 70000), AUTH, 413, "65536"),
    ("duplicate keys", "POST", CMPL, b'{"prompt": "a", "prompt": "b"}', AUTH, 400, "JSON"),
    ("unknown model", "POST", CMPL, j(model="gpt-9"), AUTH, 404, "gpt-9"),
    ("wrong API key", "POST", CMPL, j(), {"Authorization": "Bearer nope"}, 401, "API key"),
    ("no API key", "POST", CMPL, j(), {}, 401, "API key"),
    ("GET on completions", "GET", CMPL, None, AUTH, 405, "POST"),
    ("POST on models", "POST", "/v1/models", b"{}", AUTH, 405, "GET"),
    ("unknown path", "GET", "/v1/embeddings", None, AUTH, 404, "/v1/embeddings"),
]


def raw(port, data, timeout=60):
    """Sends raw bytes, returns (status, body) of the first response."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        s.sendall(data)
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
        head, _, rest = buf.partition(b"\r\n\r\n")
        status = int(head.split(b" ")[1]) if head.startswith(b"HTTP/1.1 ") else None
        length = 0
        for line in head.split(b"\r\n")[1:]:
            k, _, v = line.partition(b":")
            if k.strip().lower() == b"content-length":
                length = int(v)
        while len(rest) < length:
            chunk = s.recv(65536)
            if not chunk:
                break
            rest += chunk
        return status, rest[:length], head.decode("latin-1")
    finally:
        s.close()


def request_bytes(method, path, body, headers):
    lines = [f"{method} {path} HTTP/1.1", "Host: localhost"]
    for k, v in headers.items():
        lines.append(f"{k}: {v}")
    if body is not None:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b"")


def error_shape_ok(body):
    try:
        e = json.loads(body)["error"]
        return all(k in e for k in ("message", "type", "param", "code")) and \
            isinstance(e["message"], str) and e["message"]
    except (ValueError, KeyError, TypeError):
        return False


srv = Server(args.bin, args.model, extra=["--api-key", KEY, "--max-body-bytes", "65536",
                                          "--ctx", "256"])
try:
    good = request_bytes("POST", CMPL, j(), AUTH)
    for name, method, path, body, headers, status, needle in CASES:
        got, resp, head = raw(srv.port, request_bytes(method, path, body, headers))
        ck.check(got == status, f"{name}: status {got}, expected {status}: {resp[:300]!r}")
        ck.check(error_shape_ok(resp), f"{name}: not an OpenAI error object: {resp[:300]!r}")
        ck.check(needle in resp.decode("utf-8", "replace"), f"{name}: {needle!r} not in {resp!r}")
        g, gr, _ = raw(srv.port, good)
        ck.check(g == 200 and json.loads(gr)["usage"]["completion_tokens"] == 2,
                 f"after {name}: a good request failed: {g} {gr[:200]!r}")
    # Malformed HTTP: a clear 400 and the connection closes; the server goes on.
    got, resp, head = raw(srv.port, b"THIS IS NOT HTTP\r\n\r\n")
    ck.check(got == 400, f"garbage request line: {got} {resp!r}")
    got, resp, head = raw(srv.port, request_bytes("GET", "/health", None, {}))
    ck.check(got == 200, f"/health after bad input: {got}")
    ck.check("Retry-After" not in head, "health has no Retry-After")
    print(f"{len(CASES) + 1} bad requests answered, the server still serves", flush=True)
finally:
    rc = srv.stop()
    ck.check(rc == 0, f"exit {rc}")

# A full queue answers 429 with Retry-After.
srv = Server(args.bin, args.model, extra=["--max-num-seqs", "1", "--max-waiting", "1"])
try:
    long_req = request_bytes("POST", CMPL, json.dumps({"prompt": "Tell a story", "max_tokens": 300,
                                                       "ignore_eos": True}).encode(),
                             {"Content-Type": "application/json"})
    results = []
    threads = [threading.Thread(target=lambda: results.append(raw(srv.port, long_req, 600)))
               for _ in range(2)]

    def wait_for(name, value, timeout=60):
        deadline = time.time() + timeout
        while time.time() < deadline and srv.metrics().get(name) != value:
            time.sleep(0.02)

    threads[0].start()
    wait_for("shardserve:num_requests_running", 1)   # the first one runs
    threads[1].start()
    wait_for("shardserve:num_requests_waiting", 1)   # the second one waits
    got, resp, head = raw(srv.port, long_req)
    ck.check(got == 429 and "Retry-After: 1" in head and error_shape_ok(resp),
             f"queue full: {got} {head!r} {resp[:200]!r}")
    for t in threads:
        t.join(600)
    ck.check(sorted(r[0] for r in results) == [200, 200], f"queued requests: {[r[0] for r in results]}")
finally:
    rc = srv.stop()
    ck.check(rc == 0, f"exit {rc}")
ck.finish()
