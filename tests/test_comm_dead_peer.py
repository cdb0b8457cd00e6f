"""No hangs when a rank is lost: a user who kills one rank of a running job (or
whose rank crashes) sees every process end, non-zero, within seconds, with a
message naming the lost rank; a collective that a peer never joins turns into
an error once the communicator's timeout has passed.

Runs test_comm (tests/comm/test_comm.c) under mpirun:
  1. mpirun -np 3 test_comm --loop: an all-reduce loop; rank 2 gets SIGKILL
     after ~1 s; mpirun and every rank must be gone within 10 s, mpirun's exit
     code non-zero, and stderr must name rank 2.
  2. mpirun -np 2 test_comm --skip-barrier T: rank 1 never joins a barrier;
     rank 0's barrier must fail, naming the barrier and the timeout, within
     T + 2 s, and the job must end non-zero.
  3. The heartbeat channel (liveness timeout L = 2 s): mpirun -np 3 test_comm
     --loop; rank 2 gets SIGSTOP (alive to kill(pid, 0), but silent): rank 0
     must fail naming rank 2 within L + 2 s of the stop, and rank 1, told by
     rank 0, must name rank 2 too.
  4. A busy rank is not a lost one: mpirun -np 2 test_comm --loop --busy 3
     --liveness 2: rank 1 sleeps 3 s before every all-reduce (6 heartbeat
     intervals, longer than the timeout), so rank 0 waits that long in each;
     the job must end 0 with its iterations counted.
Skipped (exit 77) when the build has no MPI.
"""
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "lib"))
from harness import Checker, parse_args  # noqa: E402


def extra(ap):
    ap.add_argument("--comm-test", default="", help="path to the test_comm binary")
    ap.add_argument("--mpiexec", default="", help="mpirun/mpiexec to use")


args = parse_args(extra)
ck = Checker("comm dead peer")
test_comm = args.comm_test or os.path.join(os.path.dirname(args.bin), "tests", "test_comm")
mpiexec = args.mpiexec or shutil.which("mpirun") or ""
if not (os.path.exists(test_comm) and mpiexec):
    print(f"skipped: no test_comm ({test_comm}) or no mpirun")
    sys.exit(77)

env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
# Case 4 ends with MPI_Finalize: under LeakSanitizer, Open MPI's leaks are
# suppressed by library name (tests/lsan.supp), which needs the slow unwinder.
if "ASAN_OPTIONS" in env and "fast_unwind_on_malloc" not in env["ASAN_OPTIONS"]:
    env["ASAN_OPTIONS"] += ":fast_unwind_on_malloc=0"
_ver = subprocess.run([mpiexec, "--version"], capture_output=True).stdout
ompi = b"Open MPI" in _ver or b"OpenRTE" in _ver
# Oversubscribed ranks must yield, or busy-polling makes everything crawl.
flags = ["--oversubscribe", "--mca", "mpi_yield_when_idle", "1"] if ompi else []


class Job:
    """mpirun in its own process group, its output collected by threads."""

    def __init__(self, np, argv):
        self.t0 = time.monotonic()
        self.p = subprocess.Popen([mpiexec, "-np", str(np)] + flags + [test_comm] + argv,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                                  start_new_session=True)
        self.out, self.err = [], []
        self.threads = [threading.Thread(target=self._read, args=(s, b), daemon=True)
                        for s, b in ((self.p.stdout, self.out), (self.p.stderr, self.err))]
        for t in self.threads:
            t.start()

    @staticmethod
    def _read(stream, buf):
        for line in iter(stream.readline, b""):
            buf.append(line.decode("utf-8", "replace"))

    def wait(self, timeout):
        try:
            return self.p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def kill(self):
        """Last resort so that a failing test leaves nothing behind."""
        try:
            os.killpg(self.p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.p.wait()

    def text(self):
        for t in self.threads:
            t.join(timeout=2)
        return "".join(self.out), "".join(self.err)


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


# ---- 1. a rank killed mid-run ----------------------------------------------
job = Job(3, ["--loop", "60"])
pids = {}
deadline = time.monotonic() + 60
while len(pids) < 3 and time.monotonic() < deadline and job.p.poll() is None:
    for line in list(job.out):
        m = re.match(r"loop: rank (\d+) pid (\d+)", line)
        if m:
            pids[int(m.group(1))] = int(m.group(2))
    time.sleep(0.05)
if ck.check(len(pids) == 3, f"loop did not start on 3 ranks: {job.text()}"):
    time.sleep(1.0)  # let the all-reduce loop run
    os.kill(pids[2], signal.SIGKILL)
    t_kill = time.monotonic()
    rc = job.wait(10)
    dt = time.monotonic() - t_kill
    ck.check(rc is not None, "mpirun still running 10 s after rank 2 was killed (hang)")
    # The ranks are children of mpirun's daemon, not ours: they must be gone too.
    while any(alive(p) for p in pids.values()) and time.monotonic() - t_kill < 10:
        time.sleep(0.05)
    left = [r for r, p in pids.items() if alive(p)]
    ck.check(not left, f"rank(s) {left} still alive 10 s after rank 2 was killed")
    if rc is None:
        job.kill()
    out, err = job.text()
    ck.check(rc is not None and rc != 0, f"mpirun exit code {rc}, expected non-zero")
    ck.check(re.search(r"rank 2\b", err) is not None, f"stderr does not name rank 2:\n{err[-3000:]}")
    # Each survivor reports the loss itself: our liveness check or, if the
    # launcher got there first, our SIGTERM handler.
    for r in (0, 1):
        ck.check(re.search(rf"rank {r} \(host [^)]*\): allreduce of 576 f32 elements: rank 2 "
                           rf"\(pid {pids[2]} on [^)]*\) is gone", err) or
                 re.search(rf"shardserve rank {r}: .*lost rank\(s\): 2 \(pid {pids[2]}\)", err),
                 f"rank {r} did not report the loss of rank 2:\n{err[-3000:]}")
    print(f"ok   killed rank 2 (pid {pids[2]}): everything ended in {dt:.2f} s, mpirun exit {rc}")
    for line in err.splitlines():
        if "rank 2" in line or "is gone" in line:
            print(f"     | {line}")
else:
    job.kill()

# ---- 2. a collective a peer never joins --------------------------------------
T = 2.0
job = Job(2, ["--skip-barrier", str(T)])
rc = job.wait(T + 30)
if rc is None:
    job.kill()
out, err = job.text()
ck.check(rc is not None, f"skip-barrier job still running after {T + 30} s")
ck.check(rc is not None and rc != 0, f"skip-barrier: mpirun exit code {rc}, expected non-zero")
m = re.search(r"barrier returned (-?\d+) after ([0-9.]+) s: (.*)", err)
if ck.check(m is not None, f"skip-barrier: rank 0 did not report:\n{err[-3000:]}"):
    code, secs, msg = int(m.group(1)), float(m.group(2)), m.group(3)
    ck.check(code == -7, f"skip-barrier: status {code}, expected SS_ERR_COMM (-7)")
    ck.check(T <= secs <= T + 2, f"skip-barrier: failed after {secs:.2f} s, expected {T}..{T + 2}")
    ck.check("rank 0" in msg and "barrier" in msg and "timed out" in msg,
             f"skip-barrier: message lacks rank/op/timeout: {msg}")
    print(f"ok   barrier never joined: error after {secs:.2f} s (timeout {T} s): {msg}")

# ---- 3. a rank stopped, not dead: only the heartbeat tells ------------------
L = 2.0
job = Job(3, ["--loop", "60", "--liveness", str(L)])
pids = {}
deadline = time.monotonic() + 60
while len(pids) < 3 and time.monotonic() < deadline and job.p.poll() is None:
    for line in list(job.out):
        m = re.match(r"loop: rank (\d+) pid (\d+)", line)
        if m:
            pids[int(m.group(1))] = int(m.group(2))
    time.sleep(0.05)
if ck.check(len(pids) == 3, f"liveness loop did not start on 3 ranks: {job.text()}"):
    time.sleep(1.0)
    os.kill(pids[2], signal.SIGSTOP)
    t_stop = time.monotonic()
    seen = {}
    pat = {r: re.compile(rf"test_comm: rank {r} \(host [^)]*\): allreduce of 576 f32 elements: "
                         rf"rank 2 \(host [^)]*\) is lost: it sent no heartbeat for {L:.1f} s")
           for r in (0, 1)}
    while len(seen) < 2 and time.monotonic() - t_stop < L + 5:
        for line in list(job.err):
            for r, p in pat.items():
                if r not in seen and p.search(line):
                    seen[r] = time.monotonic() - t_stop
        time.sleep(0.01)
    rc = job.wait(10)
    try:
        os.kill(pids[2], signal.SIGCONT)
    except ProcessLookupError:
        pass
    if rc is None:
        job.kill()
    out, err = job.text()
    ck.check(0 in seen and seen[0] <= L + 2,
             f"stopped rank 2: rank 0 reported after {seen.get(0)} s (limit {L + 2} s):\n"
             f"{err[-3000:]}")
    ck.check(1 in seen and "as rank 0 saw it" in err,
             f"stopped rank 2: rank 1 did not name rank 2 as told by rank 0:\n{err[-3000:]}")
    ck.check(rc is not None and rc != 0, f"stopped rank 2: mpirun exit code {rc}")
    print(f"ok   stopped rank 2 (liveness {L} s): rank 0 failed after {seen.get(0, -1):.2f} s, "
          f"rank 1 after {seen.get(1, -1):.2f} s, mpirun exit {rc}")
    for line in err.splitlines():
        if "is lost" in line:
            print(f"     | {line}")
else:
    job.kill()

# ---- 4. a busy rank is not lost ----------------------------------------------
job = Job(2, ["--loop", "5", "--busy", "3", "--liveness", str(L)])
rc = job.wait(60)
if rc is None:
    job.kill()
out, err = job.text()
m = re.search(r"loop: (\d+) iterations", out)
ck.check(rc == 0 and m is not None and int(m.group(1)) >= 1,
         f"busy rank: exit {rc}, output {out!r}, stderr:\n{err[-3000:]}")
if m:
    print(f"ok   rank 1 busy 3 s per step (liveness {L} s): {m.group(1)} iterations, exit {rc}")

ck.finish()
