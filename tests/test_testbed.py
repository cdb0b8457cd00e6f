"""Two hosts on one machine: scripts/testbed.sh's network namespaces.

The bed is brought up with two hosts (ss-h0, ss-h1 on 10.77.0.0/24, the rate
capped at 1 Gbit/s), and `shardserve generate` runs across them with one rank
per host through the bed's mpirun (its rsh agent enters each host's
namespace; Open MPI's TCP transport is restricted to the bed's interfaces):
TP 2 and PP 2 must reproduce one rank's greedy tokens and top-5 logprobs (PP
bit-identical, TP within 1e-3), and the bytes counted on host 1's interface
must cover what the ranks exchanged, so the traffic did cross the bed.  The
bed is taken down at the end, also on failure, and `down` must leave no
namespace behind.  Skipped, with the reason printed, only where network
namespaces cannot be created (not root, or no `ip`).
"""
import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "lib"))
from harness import Checker, parse_args  # noqa: E402
from logprob_compare import compare_steps  # noqa: E402
from netns import require_netns  # noqa: E402
from mpi import mpi_available, mpi_env  # noqa: E402

args = parse_args()
BED = os.path.join(os.path.dirname(HERE), "scripts", "testbed.sh")
STEPS, TOP, ATOL = 12, 5, 1e-3


require_netns("ss-probe-bed")

ck = Checker("test bed")
ck.check(mpi_available(), "mpirun not found (scripts/setup.sh installs Open MPI)")
tmp = tempfile.mkdtemp(prefix="ss-bed-")
bed_dir = os.path.join(tmp, "bed")
# Under the sanitizer build, LeakSanitizer reports what Open MPI keeps past
# MPI_Finalize: its libraries are suppressed (tests/lsan.supp), which needs the
# slow unwinder to see their frames (Open MPI has no frame pointers).  Set in
# this process's environment so that the servers started here inherit it.
os.environ["ASAN_OPTIONS"] = ":".join(
    x for x in (os.environ.get("ASAN_OPTIONS", ""), "fast_unwind_on_malloc=0") if x)
os.environ.setdefault("LSAN_OPTIONS", "suppressions=" + os.path.join(HERE, "lsan.supp") +
                      ":print_suppressions=0")
ENV = mpi_env()
FORWARD = [v for v in ("OMPI_ALLOW_RUN_AS_ROOT", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "ASAN_OPTIONS",
                       "LSAN_OPTIONS", "UBSAN_OPTIONS") if v in ENV]
PROMPT = [504, 3575, 282, 4649, 314]


def generate(extra, mpi=True):
    cmd = ["generate", "--model", args.model, "--prompt-ids", ",".join(map(str, PROMPT)), "-n",
           str(STEPS), "--temp", "0", "--ignore-eos", "--json", "--logprobs", str(TOP),
           "--threads", "1", "--kv-cache-dtype", "f32", *extra]
    if mpi:
        # One rank per host: rank 0 on ss-h0, rank 1 on ss-h1.
        cmd = [os.path.join(bed_dir, "mpirun"), "-np", "2", "--map-by", "node", "--oversubscribe",
               "--mca", "mpi_yield_when_idle", "1"] + sum((["-x", v] for v in FORWARD), []) + \
              [args.bin] + cmd
    else:
        cmd = [args.bin] + cmd
    return ck.generate_top(cmd, ENV)


def iface_bytes(host):
    p = subprocess.run(["ip", "netns", "exec", f"ss-h{host}", "cat",
                        "/sys/class/net/eth0/statistics/rx_bytes",
                        "/sys/class/net/eth0/statistics/tx_bytes"], capture_output=True, text=True)
    if p.returncode != 0:
        return None
    rx, tx = map(int, p.stdout.split())
    return rx, tx


def bed(*a):
    return subprocess.run(["bash", BED, *a, "--dir", bed_dir], capture_output=True, text=True)


try:
    up = bed("up", "2", "--rate", "1gbit")
    if ck.check(up.returncode == 0, f"testbed up: {up.stderr}"):
        print(up.stdout.strip(), up.stderr.strip(), flush=True)
        with open(os.path.join(bed_dir, "hostfile")) as fp:
            ck.check(fp.read().split() == ["10.77.0.1", "slots=64", "10.77.0.2", "slots=64"],
                     "hostfile")
        base = generate([], mpi=False)
        from gguf import GGUFReader
        f = GGUFReader(args.model).fields["llama.embedding_length"]
        dim = int(f.parts[f.data[0]][0])  # the residual width, from the file
        for label, extra in (("TP 2", ["--tp", "2"]), ("PP 2", ["--pp", "2", "--tp", "1"])):
            b0 = iface_bytes(1)
            got = generate(extra)
            b1 = iface_bytes(1)
            if base is None or got is None:
                continue
            if label.startswith("PP"):
                ck.check(got == base, f"{label} across 2 hosts: not bit-identical to one rank")
            worst, n, tie, problems = compare_steps(base, got, atol=ATOL)
            for pr in problems[:5]:
                print(f"  {label}: {pr}")
            ck.check(not problems and n == STEPS, f"{label} across 2 hosts: {len(problems)} problems")
            # At least the hidden states of every token (PP) or one all-reduce
            # per token (TP) crossed host 1's interface.
            tokens = len(PROMPT) + STEPS - 1
            floor = tokens * dim * 4
            if ck.check(b0 is not None and b1 is not None, "interface counters of ss-h1"):
                moved = (b1[0] - b0[0]) + (b1[1] - b0[1])
                ck.check(moved >= floor, f"{label}: only {moved} bytes crossed ss-h1's eth0 "
                         f"(at least {floor} expected)")
                print(f"{label} across 2 hosts: {n} greedy steps equal to one rank, max |dlogprob| "
                      f"{worst:.2e}; {moved} bytes through ss-h1's eth0", flush=True)
finally:
    down = bed("down")
    ck.check(down.returncode == 0, f"testbed down: {down.stderr}")
    left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    ck.check(not any(l.split()[0].startswith(("ss-h", "ss-hub")) for l in left.splitlines() if l.strip()),
             f"namespaces left after down: {left}")
    ck.check(not os.path.exists(bed_dir), "testbed down left its folder")
    again = bed("down")
    ck.check(again.returncode == 0, "testbed down twice")
    shutil.rmtree(tmp, ignore_errors=True)
ck.finish()
