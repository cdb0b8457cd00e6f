"""A rank lost in the middle of a generation ends the job, loudly and quickly.

`generate` runs at TP = 3 with a long output; once tokens are streaming, rank 2
is killed with SIGKILL.  Every other process must exit non-zero within 10 s
with a message naming rank 2, and the job must not hang.
"""
import os
import re
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "lib"))
from harness import Checker, parse_args  # noqa: E402
from mpi import launch_cmd, mpi_env  # noqa: E402

args = parse_args()
ck = Checker("dead rank")


def parent_of(pid):
    try:
        return int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def rank_pids(root_pid):
    """{rank: pid} of the shardserve processes started by the launcher root_pid
    through its mpirun (other tests may run MPI jobs at the same time)."""
    found = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            env = open(f"/proc/{d}/environ", "rb").read().split(b"\0")
            cmdline = open(f"/proc/{d}/cmdline", "rb").read()
            ppid = int(open(f"/proc/{d}/stat").read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if root_pid not in (ppid, parent_of(ppid)) or b"generate" not in cmdline:
            continue
        for kv in env:
            if kv.startswith(b"OMPI_COMM_WORLD_RANK="):
                found[int(kv.split(b"=", 1)[1])] = int(d)
    return found


cmd = launch_cmd(args.bin, 3, ["generate", "--model", args.model, "-p", "Tell me a long story.",
                               "-n", "4000", "--ctx", "8192", "--ignore-eos", "--temp", "0",
                               "--threads", "1"])
errlog = open(os.path.join(os.environ.get("TMPDIR", "/tmp"), f"ss-dead-{os.getpid()}.err"), "w+b")
p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=errlog, env=mpi_env())
# Wait for streamed text: the generation is under way on every rank.
got = b""
deadline = time.time() + 120
os.set_blocking(p.stdout.fileno(), False)
while time.time() < deadline and len(got) < 40 and p.poll() is None:
    chunk = p.stdout.read()
    if chunk:
        got += chunk
    time.sleep(0.05)
pids = rank_pids(p.pid)
ck.check(len(got) >= 40, f"no streamed output before the kill: {got!r}")
if ck.check(sorted(pids) == [0, 1, 2], f"rank processes found: {pids}"):
    os.kill(pids[2], signal.SIGKILL)
    t0 = time.time()
    try:
        p.wait(timeout=30)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
    elapsed = time.time() - t0
    # Every process is gone, not just the launcher.
    survivors = [r for r, pid in pids.items() if os.path.exists(f"/proc/{pid}") and
                 open(f"/proc/{pid}/stat").read().split()[2] != "Z"]
    errlog.seek(0)
    err = errlog.read().decode("utf-8", "replace")
    print(f"exit {p.returncode} after {elapsed:.2f} s; stderr:\n{err[-2000:]}")
    ck.check(p.returncode != 0, "the job exited 0 after losing a rank")
    ck.check(elapsed <= 10.0, f"the job took {elapsed:.1f} s (> 10 s) to end after the kill")
    ck.check(not survivors, f"ranks still running: {survivors}")
    for r in (0, 1):
        lines = [l for l in err.splitlines() if re.search(rf"rank {r}\b", l) and
                 re.search(r"\brank\(?s?\)?:? 2\b|rank 2 ", l.replace(f"rank {r}", "", 1))]
        ck.check(lines, f"no message from rank {r} naming the lost rank 2")
else:
    p.kill()
    p.wait()
errlog.close()
os.unlink(errlog.name)
ck.finish()
