"""Failures and stops of a multi-rank server, as its clients see them (TP 2).

1. A step that fails (the SS_DEBUG_FAIL_STEP hook) fails only its request:
   that stream ends with an error event, while 8 concurrent requests (4 under
   the sanitizers) finish with exactly the text of an undisturbed run of them, and the server
   keeps serving (/health 200, a later request completes, KV blocks freed).
2. SIGTERM to `shardserve launch` drains: the streams in flight finish
   ("length", [DONE]) and the launcher exits 0.
3. A worker killed with SIGKILL: every client gets an error (an error event or
   an HTTP error, never a silent EOF) whose message names no host or pid,
   /health answers 503 before the exit, and the job ends within 10 s.
4. A short soak (bench/soak.py) on a tiny random-weight model: 100
   connections, 600 requests, chat and completions, streamed or not, 5%
   abandoned mid-stream; none lost, /metrics adds up, KV blocks back to 0.  Under the sanitizers (SS_SANITIZED=1) 20
   connections and 120 requests.
"""
import http.client
import json
import os
import re
import signal
import socket
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "lib"))
sys.path.insert(0, os.path.join(HERE, "..", "bench"))
from harness import Checker, parse_args  # noqa: E402
from mpi import mpi_available  # noqa: E402
from server import Server  # noqa: E402
import soak  # noqa: E402

args = parse_args()
ck = Checker("serve faults")
if not mpi_available():
    ck.check(False, "mpirun not found (scripts/setup.sh installs Open MPI)")
    ck.finish()
SANITIZED = os.environ.get("SS_SANITIZED") == "1"

PROMPTS = ["The capital of France is", "Once upon a time", "List three colours:",
           "def add(a, b):", "The quick brown fox", "Water boils at",
           "My favourite book is", "In 1969, astronauts"]


class Stream(threading.Thread):
    """One streamed completion; .events are the decoded data objects, .done
    whether [DONE] came, .eof whether the connection ended, .status the code."""

    def __init__(self, port, prompt, max_tokens):
        super().__init__(daemon=True)
        self.port, self.prompt, self.max_tokens = port, prompt, max_tokens
        self.events, self.done, self.status, self.exc = [], False, None, None
        self.first = threading.Event()

    def run(self):
        try:
            c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
            c.request("POST", "/v1/completions", json.dumps(
                {"prompt": self.prompt, "max_tokens": self.max_tokens, "temperature": 0,
                 "ignore_eos": True, "stream": True}), {"Content-Type": "application/json"})
            r = c.getresponse()
            self.status = r.status
            if r.status != 200:
                self.events.append(json.loads(r.read() or b"{}"))
                return
            for line in r:
                if not line.startswith(b"data: "):
                    continue
                data = line[6:].strip()
                if data == b"[DONE]":
                    self.done = True
                    continue
                self.events.append(json.loads(data))
                self.first.set()
        except Exception as e:  # noqa: BLE001 (what the client saw is the result)
            self.exc = e
        finally:
            self.first.set()

    def text(self):
        return "".join(e["choices"][0]["text"] for e in self.events if "choices" in e)

    def finish(self):
        r = [e["choices"][0]["finish_reason"] for e in self.events if "choices" in e]
        return r[-1] if r else None

    def error(self):
        for e in self.events:
            if "error" in e:
                return e["error"].get("message", "")
        return None


def run_streams(port, n, max_tokens, start_extra=None):
    ss = [Stream(port, PROMPTS[i % len(PROMPTS)], max_tokens) for i in range(n)]
    for s in ss:
        s.start()
    for s in ss:
        s.first.wait(120)
    extra = start_extra() if start_extra else None
    for s in ss:
        s.join(180)
    return ss, extra


# ---------------------------------------------------------------------------
# 1 and 2: failure isolation, then the launcher's drain, on one server.
# Requests get ids 1, 2, ... in submission order: 1-8 the undisturbed run,
# 9-16 the same again, 17 the one whose steps fail once it has 3 tokens.
# Under the sanitizers 4 others instead of 8 (ids 1-4, 5-8, 9).
N_OTHERS = 4 if SANITIZED else 8
if SANITIZED:
    print("sanitizer build (SS_SANITIZED=1): 4 requests beside the failing one; the release "
          "build runs 8", flush=True)
os.environ["SS_DEBUG_FAIL_STEP"] = f"{2 * N_OTHERS + 1}:3"
t0 = time.time()
srv = Server(args.bin, args.model, tp=2, extra=["--max-num-seqs", "16", "--drain-timeout", "300",
                                                "--stats-interval", "0.25"])
del os.environ["SS_DEBUG_FAIL_STEP"]
base, _ = run_streams(srv.port, N_OTHERS, 12)
ck.check(all(s.finish() == "length" and s.done for s in base),
         f"undisturbed run: {[(s.finish(), s.done, s.exc) for s in base]}")


def fail_one():
    bad = Stream(srv.port, "Tell me a story about a dragon.", 12)
    bad.start()
    bad.join(120)
    return bad


again, bad = run_streams(srv.port, N_OTHERS, 12, fail_one)
for i, (a, b) in enumerate(zip(base, again)):
    ck.check(b.finish() == "length" and b.done and b.text() == a.text(),
             f"request {i} next to the failing one: {b.finish()!r} {b.text()!r}, undisturbed "
             f"{a.text()!r}")
err = bad.error()
ck.check(bad.status == 200 and err and "injected failure" in err and bad.finish() is None,
         f"the failing request: status {bad.status}, error {err!r}, finish {bad.finish()!r}, "
         f"events {bad.events[-2:]}, exception {bad.exc!r}")
ck.check(len([e for e in bad.events if "choices" in e]) == 3,
         f"the failing request streamed {len(bad.events)} events before its error, expected "
         f"its 3 tokens")
code, _ = srv.get("/health")
ck.check(code == 200, f"/health after a failed step: {code}")
code, body = srv.post("/v1/completions", {"prompt": "Hello", "max_tokens": 4, "temperature": 0})
ck.check(code == 200, f"a request after the failed step: {code} {body[:200]!r}")
m = srv.metrics()
ck.check(m.get("shardserve:request_failure_total") == 1 and
         m.get("shardserve:step_failures_total", 0) >= 1 and
         m.get("shardserve:kv_cache_blocks_used") == 0,
         f"metrics after the failed step: failures {m.get('shardserve:request_failure_total')}, "
         f"failed steps {m.get('shardserve:step_failures_total')}, blocks used "
         f"{m.get('shardserve:kv_cache_blocks_used')}")
stats = [l for l in srv.log if "shardserve engine: stats:" in l]
ck.check(stats and re.search(r"generation [\d.]+ tok/s; running \d+, waiting \d+, KV blocks \d+ of "
                             r"\d+", stats[-1]), f"no stats line while busy: {stats[-1:]}")
print(f"isolation: {time.time() - t0:.1f} s", flush=True)

# 2: SIGTERM to the launcher while 4 streams are under way.
t0 = time.time()
t_sig = {}


def sigterm():
    t_sig["t"] = time.time()
    os.kill(srv.proc.pid, signal.SIGTERM)
    # Draining: /health is 503 (or the listener is already closed).
    time.sleep(0.2)
    t_sig["health"] = srv.get("/health")[0]


drained, _ = run_streams(srv.port, 4, 32, sigterm)
try:
    rc = srv.proc.wait(60)
except Exception:  # noqa: BLE001
    srv.kill()
    rc = None
ck.check(rc == 0, f"launch exited {rc} after SIGTERM; log:\n{''.join(srv.log[-60:])}")
for i, s in enumerate(drained):
    ck.check(s.finish() == "length" and s.done and len(s.events) >= 32,
             f"stream {i} during the drain: {s.finish()!r}, [DONE] {s.done}, {len(s.events)} "
             f"events, exception {s.exc!r}")
ck.check(t_sig.get("health") in (503, None), f"/health while draining: {t_sig.get('health')}")
ck.check(any("asking rank 0 to drain" in l for l in srv.log), "launch did not say it drains")
print(f"drain: {time.time() - t0:.1f} s", flush=True)

# ---------------------------------------------------------------------------
# 3: a worker killed while requests run.
t0 = time.time()
srv = Server(args.bin, args.model, tp=2, extra=["--ctx", "2048"])


def worker_pid():
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            env = open(f"/proc/{d}/environ", "rb").read()
            ppid = int(open(f"/proc/{d}/stat").read().rsplit(")", 1)[1].split()[1])
            cmd = open(f"/proc/{d}/cmdline", "rb").read()
        except (OSError, ValueError, IndexError):
            continue
        if b"OMPI_COMM_WORLD_RANK=1\0" in env and b"serve" in cmd and \
                ppid == mpirun_pid():
            return int(d)
    return None


def mpirun_pid():
    for d in os.listdir("/proc"):
        try:
            if d.isdigit() and int(open(f"/proc/{d}/stat").read().rsplit(")", 1)[1].split()[1]) \
                    == srv.proc.pid:
                return int(d)
        except (OSError, ValueError, IndexError):
            continue
    return None


health = []
t_kill = {}


def kill_worker():
    pid = worker_pid()
    if not ck.check(pid is not None, "rank 1 not found"):
        return
    os.kill(pid, signal.SIGKILL)
    t_kill["t"] = time.time()
    # /health until the server is gone.
    while srv.proc.poll() is None and time.time() - t_kill["t"] < 15:
        health.append(srv.get("/health")[0])
        time.sleep(0.05)


class Plain(threading.Thread):
    """A non-streamed completion: its status and body."""

    def __init__(self):
        super().__init__(daemon=True)
        self.status, self.body, self.exc = None, b"", None

    def run(self):
        try:
            c = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=120)
            c.request("POST", "/v1/completions", json.dumps(
                {"prompt": "Tell me a long story.", "max_tokens": 1500, "temperature": 0,
                 "ignore_eos": True}), {"Content-Type": "application/json"})
            r = c.getresponse()
            self.status, self.body = r.status, r.read()
        except Exception as e:  # noqa: BLE001
            self.exc = e


plains = [Plain() for _ in range(2)]
for p in plains:
    p.start()
lost, _ = run_streams(srv.port, 4, 1500, kill_worker)
for p in plains:
    p.join(60)
try:
    rc = srv.proc.wait(20)
except Exception:  # noqa: BLE001
    srv.kill()
    rc = None
elapsed = time.time() - t_kill.get("t", time.time())
print(f"worker kill: exit {rc} after {elapsed:.1f} s; /health seen {sorted(set(health), key=str)}; "
      f"log:\n{''.join(srv.log[-8:])}", flush=True)
ck.check(rc not in (0, None), f"the job exited {rc} after losing a worker")
ck.check(elapsed <= 10, f"the job took {elapsed:.1f} s (> 10 s) to end after the kill")
ck.check(503 in health, f"/health never answered 503 after the kill: {health[:20]}")
msgs = []
for i, s in enumerate(lost):
    e = s.error()
    ck.check(e is not None and s.finish() is None,
             f"stream {i} after the kill: error {e!r}, finish {s.finish()!r}, exception {s.exc!r}")
    msgs.append(e or "")
for i, p in enumerate(plains):
    ok = p.status is not None and p.status >= 500 and b"error" in p.body
    ck.check(ok, f"non-streamed request {i} after the kill: {p.status} {p.body[:200]!r} "
             f"{p.exc!r}")
    if ok:
        msgs.append(json.loads(p.body)["error"]["message"])
host = socket.gethostname()
for msg in msgs:
    ck.check(host not in msg and not re.search(r"\bpid\b|\d{3,}", msg),
             f"the lost-rank message names a host or pid: {msg!r}")
print(f"worker kill: {time.time() - t0:.1f} s", flush=True)

# ---------------------------------------------------------------------------
# 4: short soak.
t0 = time.time()
conns, reqs = (20, 120) if SANITIZED else (100, 600)
if SANITIZED:
    print("sanitizer build (SS_SANITIZED=1): soak of 20 connections and 120 requests; the "
          "release build runs 100 and 600", flush=True)
# A tiny random-weight model: the soak exercises the server and the engine's
# bookkeeping, not the forward pass.
tiny = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"ss-faults-tiny-{os.getpid()}.gguf")
r = ck.run(args.bin, ["synth", "--preset", "tiny", "-o", tiny])
srv = Server(args.bin, tiny, tp=2, extra=["--max-num-seqs", "128", "--chat-template", "chatml"])
before = srv.metrics()
import asyncio  # noqa: E402

stats = asyncio.run(soak.run_load(srv.url, conns, reqs, 0.05, 4, 1))
try:
    fails, m = soak.check(srv.url, stats, reqs, before)
except OSError as e:
    fails = [f"/metrics after the soak: {e}; server exit {srv.proc.poll()}, log:\n"
             f"{''.join(srv.log[-20:])}"]
print(f"soak: {reqs} requests over {conns} connections in {stats['seconds']:.1f} s: ok "
      f"{stats['ok']}, abandoned {stats['abandoned']}, lost {stats['lost']}", flush=True)
for f in fails:
    ck.check(False, f"soak: {f}")
ck.check(stats["ok"] + stats["abandoned"] == reqs,
         f"soak: {stats['ok']} ok + {stats['abandoned']} abandoned != {reqs}")
rc = srv.stop()
ck.check(rc == 0, f"the soak server exited {rc}; log:\n{''.join(srv.log[-60:])}")
os.unlink(tiny)
print(f"soak: {time.time() - t0:.1f} s", flush=True)
ck.finish()
