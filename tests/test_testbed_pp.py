"""Pipeline parallelism across the test bed: more layouts than test_testbed.py.

A 3-host bed (scripts/testbed.sh: namespaces ss-pb0..ss-pb2 on 10.79.0.0/24,
its own name and subnet so it never meets the other bed tests) runs
`shardserve generate` with greedy steps and the top-5 logprobs through the
bed's mpirun, each layout compared with one rank of the same model on the
same machine outside the bed:
  * the default model at PP 3 with an uneven split (--pp-layers 12,10,8), one
    stage per host (--map-by node): bit-identical to one rank (cutting the
    layers changes no arithmetic), so also within 1e-3;
  * the default model at PP 2 x TP 2 over 2 hosts, two ranks per host
    (--map-by ppr:2:node: each stage's TP pair shares a host, the stage
    hand-off crosses the bed): greedy ids equal and top logprobs within 1e-3
    (the TP sums change the f32 rounding only);
  * tiny Mixtral and Grok-1 checkpoints (3 layers, bf16, written by numpy in
    tests/reference/make_tiny_hf.py) at PP 2 over 2 hosts (the default
    uneven split 2 + 1): bit-identical to one rank.
Before each layout the same mpirun options run `hostname` in every rank, so the
rank-to-host placement is checked, not assumed; and the bytes through each
host's eth0 must cover at least the hidden states the stages hand over
(tokens x width x 4 bytes), so the traffic did cross the bed.  Under the
sanitizer build (SS_SANITIZED=1) PP 2 x TP 2 (4 ranks on this machine's cores)
is left out.  The bed is taken down at the end, also on failure, and no
namespace of it may remain.  Skipped (exit 77) only where network namespaces
cannot be created.
"""
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "lib"))
sys.path.insert(0, os.path.join(HERE, "reference"))
from harness import Checker, parse_args  # noqa: E402
from logprob_compare import compare_steps  # noqa: E402
from netns import require_netns  # noqa: E402
from mpi import mpi_available, mpi_env  # noqa: E402

args = parse_args()
BED = os.path.join(os.path.dirname(HERE), "scripts", "testbed.sh")
NAME, NET = "ss-pb", "10.79.0"
STEPS, TOP, ATOL = 8, 5, 1e-3
SANITIZED = os.environ.get("SS_SANITIZED") == "1"

require_netns("ss-pbprobe")

ck = Checker("test bed pipeline")
ck.check(mpi_available(), "mpirun not found (scripts/setup.sh installs Open MPI)")
import make_tiny_hf  # noqa: E402  (numpy; after the skip checks)

tmp = tempfile.mkdtemp(prefix="ss-pb-")
bed_dir = os.path.join(tmp, "bed")
os.environ["ASAN_OPTIONS"] = ":".join(
    x for x in (os.environ.get("ASAN_OPTIONS", ""), "fast_unwind_on_malloc=0") if x)
os.environ.setdefault("LSAN_OPTIONS", "suppressions=" + os.path.join(HERE, "lsan.supp") +
                      ":print_suppressions=0")
ENV = mpi_env()
FORWARD = [v for v in ("OMPI_ALLOW_RUN_AS_ROOT", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "ASAN_OPTIONS",
                       "LSAN_OPTIONS", "UBSAN_OPTIONS") if v in ENV]


def bed(*a):
    return subprocess.run(["bash", BED, *a, "--name", NAME, "--net", NET, "--dir", bed_dir],
                          capture_output=True, text=True)


def mpirun(n, mapping):
    return [os.path.join(bed_dir, "mpirun"), "-np", str(n), *mapping, "--oversubscribe",
            "--mca", "mpi_yield_when_idle", "1"] + sum((["-x", v] for v in FORWARD), [])


def placement(n, mapping):
    """Each rank's host under these mpirun options, or None."""
    p = subprocess.run(mpirun(n, mapping) + ["sh", "-c", 'echo "$OMPI_COMM_WORLD_RANK $(hostname)"'],
                       capture_output=True, text=True, env=ENV, timeout=60)
    if not ck.check(p.returncode == 0, f"placement: exit {p.returncode}: {p.stderr[-1000:]}"):
        return None
    got = dict(l.split() for l in p.stdout.splitlines() if len(l.split()) == 2)
    return [got.get(str(r)) for r in range(n)]


def iface_bytes(host):
    p = subprocess.run(["ip", "netns", "exec", f"{NAME}{host}", "cat",
                        "/sys/class/net/eth0/statistics/rx_bytes",
                        "/sys/class/net/eth0/statistics/tx_bytes"], capture_output=True, text=True)
    if p.returncode != 0:
        return None
    rx, tx = map(int, p.stdout.split())
    return rx + tx


def generate(model, prompt, extra, n=1, mapping=()):
    cmd = ["generate", "--model", model, "--prompt-ids", ",".join(map(str, prompt)), "-n",
           str(STEPS), "--temp", "0", "--ignore-eos", "--json", "--logprobs", str(TOP),
           "--threads", "1", "--kv-cache-dtype", "f32", *extra]
    cmd = mpirun(n, mapping) + [args.bin] + cmd if n > 1 else [args.bin] + cmd
    return ck.generate_top(cmd, ENV)


def layout(label, model, prompt, base, extra, n, mapping, hosts, floor, identical):
    """One layout across the bed against one rank's steps (base)."""
    t = time.time()
    where = placement(n, mapping)
    want = [f"{NAME}{h}" for h in hosts]
    if not ck.check(where == want, f"{label}: ranks on {where}, expected {want}"):
        return
    before = [iface_bytes(h) for h in sorted(set(hosts))]
    got = generate(model, prompt, extra, n, mapping)
    after = [iface_bytes(h) for h in sorted(set(hosts))]
    if base is None or got is None:
        return
    if identical:
        ck.check(got == base, f"{label}: not bit-identical to one rank:\n  1 rank: {base[:2]}\n"
                 f"  got:    {got[:2]}")
    worst, steps, tie, problems = compare_steps(base, got, atol=ATOL)
    for pr in problems[:5]:
        print(f"  {label}: {pr}")
    ck.check(not problems and steps == STEPS, f"{label}: {len(problems)} problems over {steps} "
             "steps")
    moved = [b - a if a is not None and b is not None else None for a, b in zip(before, after)]
    for h, m in zip(sorted(set(hosts)), moved):
        ck.check(m is not None and m >= floor, f"{label}: {m} bytes through {NAME}{h}'s eth0 (at "
                 f"least {floor} expected)")
    print(f"{label}: ranks on {', '.join(where)}; {steps} greedy steps equal to one rank"
          f"{', bit-identical' if identical and got == base else ''}, max |dlogprob| "
          f"{worst:.2e} (tol {ATOL:g}); bytes through eth0 {moved} ({time.time() - t:.1f} s)",
          flush=True)


def width(model):
    """The residual width, from the model's own files (gguf package or config.json)."""
    if os.path.isdir(model):
        import json
        with open(os.path.join(model, "config.json")) as f:
            return int(json.load(f)["hidden_size"])
    from gguf import GGUFReader
    f = GGUFReader(model).fields["llama.embedding_length"]
    return int(f.parts[f.data[0]][0])


t_all = time.time()
try:
    up = bed("up", "3")
    if ck.check(up.returncode == 0, f"testbed up: {up.stderr}"):
        print(up.stdout.strip(), flush=True)
        prompt = [504, 3575, 282, 4649, 314]  # "The capital of France is" in the default model
        base = generate(args.model, prompt, [])
        dim = width(args.model)
        # Every stage but the first receives the hidden states of every token
        # (each crossing counted on the sending and the receiving host).
        floor = (len(prompt) + STEPS - 1) * dim * 4
        layout("default PP 3 (12,10,8) over 3 hosts", args.model, prompt, base,
               ["--pp", "3", "--tp", "1", "--pp-layers", "12,10,8"], 3, ["--map-by", "node"],
               [0, 1, 2], floor, identical=True)
        if SANITIZED:
            print("sanitizer build (SS_SANITIZED=1): no PP 2 x TP 2 (4 ranks on this machine's "
                  "cores); the release build runs it", flush=True)
        else:
            layout("default PP 2 x TP 2 over 2 hosts", args.model, prompt, base,
                   ["--pp", "2", "--tp", "2"], 4, ["--map-by", "ppr:2:node"], [0, 0, 1, 1],
                   floor, identical=False)
        for i, family in enumerate(("mixtral", "grok-1")):
            d = os.path.join(tmp, family)
            make_tiny_hf.make(family, d, dtype="bf16", seed=60 + i, layers=3)
            tiny_prompt = [1, 450, 4996, 17354][: 3 + i]
            tiny_base = generate(d, tiny_prompt, [])
            layout(f"{family} PP 2 over 2 hosts", d, tiny_prompt, tiny_base,
                   ["--pp", "2", "--tp", "1"], 2, ["--map-by", "node"], [0, 1],
                   (len(tiny_prompt) + STEPS - 1) * width(d) * 4, identical=True)
finally:
    down = bed("down")
    ck.check(down.returncode == 0, f"testbed down: {down.stderr}")
    left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    mine = [l.split()[0] for l in left.splitlines() if l.strip() and
            (l.split()[0] == f"{NAME}hub" or l.split()[0][len(NAME):].isdigit() and
             l.split()[0].startswith(NAME))]
    ck.check(not mine, f"namespaces left after down: {mine}")
    ck.check(not os.path.exists(bed_dir), "testbed down left its folder")
    shutil.rmtree(tmp, ignore_errors=True)
print(f"test bed pipeline: {time.time() - t_all:.1f} s", flush=True)
ck.finish()
