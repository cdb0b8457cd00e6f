"""Faults across hosts: a rank on another host that dies or whose link goes
down ends the job within seconds, with errors naming it, instead of a hang.

A 2-host bed (scripts/testbed.sh: namespaces ss-fa0, ss-fa1 on 10.78.0.0/24)
runs one rank per host through the bed's mpirun.  Each rank runs under a small
wrapper that keeps its stderr in a file and records its exit status, so that
both ranks' messages and exit codes are seen even when host 1 is cut off (its
output would otherwise travel over the lost link).
  (a) `generate --tp 2` with a long output; once tokens stream, host 1's link
      goes down (`ip -n ss-fa1 link set eth0 down`): both ranks exit non-zero
      within 10 s, rank 0 naming rank 1 as lost and rank 1 naming rank 0.
  (b) `serve --tp 2` with streamed and non-streamed requests in flight (the
      clients run inside host 0's namespace); rank 1 gets SIGKILL: every
      stream ends with an error event naming rank 1, every other request
      with a 500 error object, /health answers 503 before rank 0 exits, both
      ranks end within 10 s.  The liveness timeout is 30 s here, so the
      errors within 2 s of the kill show that the closed heartbeat
      connection itself was noticed, not the silence after it.  Rank 0's
      engine thread may be held inside Open MPI (its TCP transport sees the
      closed connection too) until the launcher ends the job: the answers
      come from the HTTP loop, which watches the communicator's lost flag
      itself, so they are checked every run (the report says whether the
      engine thread was held).
  (c) the same with host 1's link taken down instead: only the heartbeat
      channel can notice this one.
Before the heartbeat channel (a) and (c) hung: a hang shows here as a rank
still alive after 10 s.  The bed is taken down at the end (also on failure),
every process left in its namespaces killed, and no namespace may remain.
Skipped (exit 77) only where network namespaces cannot be created.
"""
import ctypes
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "lib"))
from harness import SANITIZER_MARKS, Checker, parse_args  # noqa: E402
from netns import require_netns  # noqa: E402
from mpi import mpi_available, mpi_env  # noqa: E402

args = parse_args(lambda ap: ap.add_argument(
    "--only", default="abc", help="the cases to run (letters of a, b, c; default all)"))
BED = os.path.join(os.path.dirname(HERE), "scripts", "testbed.sh")
NAME, NET, BED_DIR = "ss-fa", "10.78.0", "/tmp/ss-bed-fa"
HOSTS = [f"{NAME}0", f"{NAME}1"]
LIMIT = 10.0  # seconds from the fault to the last rank's exit
SANITIZED = os.environ.get("SS_SANITIZED") == "1"


require_netns("ss-faprobe")

ck = Checker("test bed faults")
ck.check(mpi_available(), "mpirun not found (scripts/setup.sh installs Open MPI)")
os.environ["ASAN_OPTIONS"] = ":".join(
    x for x in (os.environ.get("ASAN_OPTIONS", ""), "fast_unwind_on_malloc=0") if x)
os.environ.setdefault("LSAN_OPTIONS", "suppressions=" + os.path.join(HERE, "lsan.supp") +
                      ":print_suppressions=0")
ENV = mpi_env()
FORWARD = [v for v in ("OMPI_ALLOW_RUN_AS_ROOT", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "ASAN_OPTIONS",
                       "LSAN_OPTIONS", "UBSAN_OPTIONS") if v in ENV]
PROMPT = [504, 3575, 282, 4649, 314]

# The wrapper every rank runs under: stderr to err.R, pid to pid.R, exit status
# to rc.R.  The launcher signals the whole process group (SIGTERM, then SIGKILL
# a second later, when it tears the job down), so the rank gets its signals as
# if started directly; the wrapper ignores the catchable ones (set after the
# rank started, so the rank's own handling is untouched) to record the status.
# A SIGKILL from the launcher takes both: then there is no rc.R, and the rank
# was ended by the launcher (non-zero by definition).
WRAP = r"""#!/bin/bash
d=$1; shift
r=$OMPI_COMM_WORLD_RANK
"$@" 2>"$d/err.$r" &
p=$!
echo $p > "$d/pid.$r"
trap '' TERM INT USR1
wait $p
echo $? > "$d/rc.$r"
"""


def bed(*a):
    return subprocess.run(["bash", BED, *a, "--name", NAME, "--net", NET, "--dir", BED_DIR],
                          capture_output=True, text=True)


def ns_pids(host):
    p = subprocess.run(["ip", "netns", "pids", host], capture_output=True, text=True)
    return [int(x) for x in p.stdout.split()] if p.returncode == 0 else []


def comm_of(pid):
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def kill_bed_processes():
    """Everything still running in the bed's hosts (mpirun and orted linger
    when a link is down)."""
    for _ in range(3):
        pids = [p for h in HOSTS for p in ns_pids(h)]
        if not pids:
            return
        for p in pids:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.2)


def link(state):
    r = subprocess.run(["ip", "-n", HOSTS[1], "link", "set", "eth0", state], capture_output=True,
                       text=True)
    ck.check(r.returncode == 0, f"link {state}: {r.stderr}")


class Job:
    """One run across the bed; per-rank files in run_dir."""

    def __init__(self, label, argv):
        self.label = label
        self.dir = os.path.join(BED_DIR, "runs", label)
        os.makedirs(self.dir, exist_ok=True)
        wrap = os.path.join(BED_DIR, "rank-wrap")
        cmd = [os.path.join(BED_DIR, "mpirun"), "-np", "2", "--map-by", "node", "--oversubscribe",
               "--mca", "mpi_yield_when_idle", "1"] + sum((["-x", v] for v in FORWARD), []) + \
              [wrap, self.dir, args.bin] + argv
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV,
                                     start_new_session=True)
        self.out = bytearray()
        self.err = bytearray()
        for s, b in ((self.proc.stdout, self.out), (self.proc.stderr, self.err)):
            threading.Thread(target=self._read, args=(s, b), daemon=True).start()

    @staticmethod
    def _read(stream, buf):
        for chunk in iter(lambda: stream.read1(4096), b""):
            buf.extend(chunk)

    def file(self, name):
        try:
            with open(os.path.join(self.dir, name)) as f:
                return f.read()
        except OSError:
            return None

    def pids(self, timeout=120):
        """The two rank processes, once both started; checked against the
        shardserve process found in each host's namespace."""
        deadline = time.time() + timeout
        while time.time() < deadline and self.proc.poll() is None:
            got = [self.file(f"pid.{r}") for r in (0, 1)]
            if all(g and g.strip() for g in got):
                pids = [int(g) for g in got]
                for r, host in enumerate(HOSTS):
                    mine = [p for p in ns_pids(host) if comm_of(p) == "shardserve"]
                    ck.check(pids[r] in mine, f"{self.label}: rank {r} (pid {pids[r]}) is not the "
                             f"shardserve process in {host} ({mine})")
                return pids
            time.sleep(0.1)
        return None

    def wait_exits(self, pids, t0, limit):
        """Seconds from t0 until each rank process was gone (None: still alive
        at t0 + limit)."""
        gone = {}
        while time.time() - t0 < limit and len(gone) < len(pids):
            for r, p in enumerate(pids):
                if r not in gone and not alive(p):
                    gone[r] = time.time() - t0
            time.sleep(0.02)
        return [gone.get(r) for r in range(len(pids))]

    def rc(self, r, timeout=3):
        deadline = time.time() + timeout
        while time.time() < deadline:
            v = self.file(f"rc.{r}")
            if v and v.strip():
                return int(v)
            time.sleep(0.05)
        return None

    def show(self):
        for r in (0, 1):
            e = self.file(f"err.{r}") or ""
            tail = [l for l in e.splitlines() if "lost" in l or "error" in l][-3:]
            for l in tail:
                print(f"     rank {r} | {l[:400]}")


def engine_held(job):
    """Whether rank 0's engine thread was still inside Open MPI when rank 0
    ended (its TCP transport saw the killed rank's closed connection and held
    the thread until the launcher's teardown): the HTTP loop answered without
    it and said so.  Reported, not failed: the clients are checked anyway."""
    err = job.file("err.0") or ""
    return "engine thread is still held" in err


def check_exits(job, pids, t0, who_lost, killed):
    """Every rank gone within LIMIT, non-zero; the survivors' messages name the
    lost rank(s)."""
    times = job.wait_exits(pids, t0, LIMIT + 5)
    for r, t in enumerate(times):
        ck.check(t is not None and t <= LIMIT,
                 f"{job.label}: rank {r} " + (f"took {t:.1f} s" if t is not None else
                                              f"still running {LIMIT + 5:.0f} s") +
                 f" after the fault (limit {LIMIT:.0f} s)")
    for r in (0, 1):
        rc = job.rc(r)
        if r == 1 and killed:
            ck.check(rc == 128 + signal.SIGKILL, f"{job.label}: killed rank 1 exit {rc}")
            continue
        if rc is None and killed:
            # The launcher's SIGKILL took the rank with its wrapper: the job
            # must then say it failed.
            try:
                mrc = job.proc.wait(10)
            except subprocess.TimeoutExpired:
                mrc = None
            ck.check(mrc not in (0, None), f"{job.label}: rank {r} recorded no exit status and "
                     f"mpirun exited {mrc}")
            print(f"{job.label}: rank {r} ended by the launcher; mpirun exit {mrc}", flush=True)
            continue
        ck.check(rc is not None and rc != 0, f"{job.label}: rank {r} exit status {rc}, "
                 "expected non-zero")
    for r in (0, 1):
        err = job.file(f"err.{r}") or ""
        marks = [m for m in SANITIZER_MARKS if m in err]
        ck.check(not marks, f"{job.label}: rank {r}: {marks}:\n{err[-4000:]}")
    for r, lost in who_lost.items():
        err = job.file(f"err.{r}") or ""
        ck.check(re.search(rf"rank {lost} \(host {HOSTS[lost]}\) is lost", err) is not None,
                 f"{job.label}: rank {r}'s stderr does not name rank {lost} as lost:\n"
                 f"{err[-2000:]}")
    fmt = ", ".join(f"rank {r} {t:.2f} s" if t is not None else f"rank {r} still running"
                    for r, t in enumerate(times))
    print(f"{job.label}: exits after the fault: {fmt}", flush=True)
    job.show()
    return times


def end_job(job):
    kill_bed_processes()
    try:
        job.proc.wait(10)
    except subprocess.TimeoutExpired:
        os.killpg(job.proc.pid, signal.SIGKILL)
        job.proc.wait()


# ---- clients inside host 0's namespace --------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNET = 0x40000000


def enter_host0():
    """Moves the calling thread (only it) into host 0's network namespace."""
    fd = os.open(f"/run/netns/{HOSTS[0]}", os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns")
    finally:
        os.close(fd)


class Client(threading.Thread):
    """One completion from inside host 0; streamed: .events, .done; else
    .status and .body.  A 60 s socket timeout turns a hang into a failure."""

    def __init__(self, port, stream, max_tokens):
        super().__init__(daemon=True)
        self.port, self.stream, self.max_tokens = port, stream, max_tokens
        self.events, self.done, self.status, self.body, self.exc = [], False, None, b"", None
        self.t_end = None  # when the error (or the whole response) arrived
        self.first = threading.Event()

    def run(self):
        try:
            enter_host0()
            c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
            c.request("POST", "/v1/completions", json.dumps(
                {"prompt": "Tell me a long story about the sea.", "max_tokens": self.max_tokens,
                 "temperature": 0, "ignore_eos": True, "stream": self.stream}),
                {"Content-Type": "application/json"})
            r = c.getresponse()
            self.status = r.status
            if not self.stream or r.status != 200:
                self.first.set()
                self.body = r.read()
                self.t_end = time.time()
                return
            for line in r:
                if not line.startswith(b"data: "):
                    continue
                data = line[6:].strip()
                if data == b"[DONE]":
                    self.done = True
                    continue
                self.events.append(json.loads(data))
                if "error" in self.events[-1] and self.t_end is None:
                    self.t_end = time.time()
                self.first.set()
        except Exception as e:  # noqa: BLE001 (what the client saw is the result)
            self.exc = e
        finally:
            self.first.set()

    def error(self):
        for e in self.events:
            if "error" in e:
                return e["error"].get("message", "")
        return None

    def finished(self):
        return any(e["choices"][0].get("finish_reason") for e in self.events if "choices" in e)


def health_get(port):
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        c.request("GET", "/health")
        return c.getresponse().status
    except (OSError, http.client.HTTPException):
        return None


def post_completion(port):
    """A new request: (status, error message) or (None, why)."""
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        c.request("POST", "/v1/completions", json.dumps({"prompt": "Hi", "max_tokens": 4}),
                  {"Content-Type": "application/json"})
        r = c.getresponse()
        return r.status, json.loads(r.read()).get("error", {}).get("message")
    except (OSError, http.client.HTTPException, ValueError) as e:
        return None, repr(e)


def in_host0(fn, *a):
    """fn(*a) on a thread inside host 0's namespace; its result."""
    out = {}

    def run():
        enter_host0()
        out["v"] = fn(*a)
    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(30)
    return out.get("v")


# ---- the cases ----------------------------------------------------------------

def case_generate():
    job = Job("generate, link down", [
        "generate", "--model", args.model, "--prompt-ids", ",".join(map(str, PROMPT)), "-n",
        "4000", "--temp", "0", "--ignore-eos", "--threads", "1", "--tp", "2"])
    try:
        pids = job.pids()
        if not ck.check(pids is not None, f"generate did not start: {bytes(job.err[-2000:])!r}"):
            return
        deadline = time.time() + 120
        while len(job.out) < 64 and time.time() < deadline and job.proc.poll() is None:
            time.sleep(0.05)
        if not ck.check(len(job.out) >= 64, f"no tokens streamed: {bytes(job.err[-2000:])!r}"):
            return
        time.sleep(0.5)
        ck.check(all(alive(p) for p in pids), "a rank ended before the fault")
        n_before = len(job.out)
        link("down")
        t0 = time.time()
        check_exits(job, pids, t0, {0: 1, 1: 0}, killed=False)
        print(f"generate: {n_before} bytes of text before the link went down", flush=True)
    finally:
        end_job(job)
        link("up")


def case_serve(fault):
    label = f"serve, {fault}"
    # Killed: a liveness timeout far past the limit, so only the closed
    # connection can tell rank 0 in time.
    liveness = ["--comm-liveness", "30"] if fault == "kill" else []
    job = Job(label, ["serve", "--model", args.model, "--port", "0", "--threads", "1", "--tp", "2",
                      "--ctx", "2048", "--max-num-seqs", "16", *liveness])
    try:
        pids = job.pids()
        if not ck.check(pids is not None, f"{label}: did not start: {bytes(job.err[-2000:])!r}"):
            return
        port, deadline = None, time.time() + 180
        while time.time() < deadline and job.proc.poll() is None:
            m = re.search(r"listening on http://[^:]+:(\d+)", job.file("err.0") or "")
            if m and in_host0(health_get, int(m.group(1))) == 200:
                port = int(m.group(1))
                break
            time.sleep(0.2)
        if not ck.check(port is not None, f"{label}: not ready:\n{job.file('err.0')}"):
            return
        streams = [Client(port, True, 1500) for _ in range(3 if SANITIZED else 4)]
        plains = [Client(port, False, 1500) for _ in range(2)]
        for c in streams + plains:
            c.start()
        for c in streams:
            c.first.wait(60)
        time.sleep(0.3)
        ck.check(all(c.events and not c.error() for c in streams),
                 f"{label}: streams not under way before the fault")
        health = []
        if fault == "kill":
            victim = [p for p in ns_pids(HOSTS[1]) if comm_of(p) == "shardserve"]
            if not ck.check(victim == [pids[1]], f"{label}: rank 1 in {HOSTS[1]}: {victim}"):
                return
            os.kill(victim[0], signal.SIGKILL)
        else:
            link("down")
        t0 = time.time()

        t_503, refused = [], []

        def poll_health():
            while alive(pids[0]) and time.time() - t0 < LIMIT + 5:
                health.append(health_get(port))
                if health[-1] == 503 and not t_503:
                    t_503.append(time.time() - t0)
                    # Once /health says 503, a new request is refused too.
                    refused.append(post_completion(port))
                time.sleep(0.05)
        hp = threading.Thread(target=lambda: (enter_host0(), poll_health()), daemon=True)
        hp.start()
        times = check_exits(job, pids, t0, {0: 1} if fault == "kill" else {0: 1, 1: 0},
                            killed=fault == "kill")
        hp.join(10)
        for c in streams + plains:
            c.join(30)
        ck.check(503 in health, f"{label}: /health never answered 503 before the exit: "
                 f"{health[:20]}")
        for i, c in enumerate(streams):
            ck.check(c.error() is not None and not c.finished(),
                     f"{label}: stream {i}: error {c.error()!r}, finished {c.finished()}, "
                     f"exception {c.exc!r}, {len(c.events)} events")
        for i, c in enumerate(plains):
            ck.check(c.status is not None and c.status >= 500 and b"error" in c.body,
                     f"{label}: request {i}: {c.status} {c.body[:200]!r} {c.exc!r}")
        msgs = [c.error() or "" for c in streams]
        for c in plains:
            try:
                msgs.append(json.loads(c.body)["error"]["message"])
            except (ValueError, KeyError, TypeError):
                msgs.append("")
        t_err = [c.t_end - t0 if c.t_end else None for c in streams + plains]
        if fault == "kill":
            # The kill: the message names rank 1, not its host or pid.
            for m in msgs:
                ck.check("rank 1" in m and HOSTS[1] not in m and not re.search(r"\bpid\b|\d{3,}", m),
                         f"{label}: client message {m!r}: should name rank 1, no host or pid")
            ck.check(t_503 and t_503[0] <= 2.0,
                     f"{label}: first 503 at {t_503} s after the kill (liveness timeout 30 s: "
                     "the closed connection was not noticed at once)")
            ck.check(all(t is not None and t <= 2.0 for t in t_err),
                     f"{label}: client errors at {t_err} s after the kill (expected <= 2 s)")
            ck.check(refused and refused[0][0] == 503 and "rank 1" in (refused[0][1] or ""),
                     f"{label}: a new request after the 503: {refused}")
        fmt_t = ", ".join(f"{t:.2f}" if t is not None else "none" for t in t_err)
        print(f"{label}: /health codes seen {sorted(set(health), key=str)}, first 503 after "
              f"{t_503[0] if t_503 else None} s; client errors after [{fmt_t}] s: "
              f"{msgs[:1]}; rank 0 exit after {times[0]}; engine thread held in Open MPI: "
              f"{'yes' if engine_held(job) else 'no'}", flush=True)
    finally:
        if os.environ.get("SS_FAULTS_KEEP"):
            subprocess.run(["cp", "-r", job.dir, os.environ["SS_FAULTS_KEEP"]])
        end_job(job)
        if fault != "kill":
            link("up")


try:
    up = bed("up", "2")
    if ck.check(up.returncode == 0, f"testbed up: {up.stderr}"):
        print(up.stdout.strip(), flush=True)
        with open(os.path.join(BED_DIR, "rank-wrap"), "w") as f:
            f.write(WRAP)
        os.chmod(os.path.join(BED_DIR, "rank-wrap"), 0o755)
        cases = {"a": case_generate, "b": lambda: case_serve("kill"),
                 "c": lambda: case_serve("link down")}
        for key, case in cases.items():
            if key not in args.only:
                continue
            t = time.time()
            case()
            print(f"  ({time.time() - t:.1f} s)", flush=True)
finally:
    kill_bed_processes()
    down = bed("down")
    ck.check(down.returncode == 0, f"testbed down: {down.stderr}")
    left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    mine = [l.split()[0] for l in left.splitlines() if l.strip() and
            (l.split()[0] == f"{NAME}hub" or re.fullmatch(rf"{NAME}\d+", l.split()[0]))]
    ck.check(not mine, f"namespaces left after down: {mine}")
    ck.check(not os.path.exists(BED_DIR), "testbed down left its folder")
ck.finish()
