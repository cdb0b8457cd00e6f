"""--trace FILE: per-rank timelines in Chrome's trace-event format.

`generate` at TP 2 and at PP 2 x TP 2, and `serve` with two requests, write a
trace; the file is read with the json module and checked against the Trace
Event Format's rules and against what the run must have done:
  - every rank is a process (pid = rank) with a name and at least one span;
  - within one track (pid, tid), "X" spans nest or are disjoint, never
    overlap partially;
  - one "forward" span per token generated on every rank (the prompt in one
    pass, then one token per pass), and one engine "step" per token on rank 0;
  - the collectives inside each forward pass carry the bytes the plan predicts
    (`plan --json`): allreduces_per_token all-reduces of tokens x
    allreduce_payload_bytes each, the logits gather of logits x
    gather_bytes_per_token, and under PP the hidden states sent to the next
    stage (tokens x send_bytes_per_token) and the logits sent to rank 0.  The
    plan's payload is itself checked against the GGUF's dimension (4 bytes per
    f32 element, two all-reduces per layer plus the embedding's).
`serve --trace` with two concurrent requests: the sampled-token counts of its
"sample" spans add up to the completion tokens the responses report.  A path
that cannot be written is a usage error at start (exit 2, naming the path).
"""
import concurrent.futures
import json
import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "lib"))
from gguf_meta import gguf_metadata  # noqa: E402
from harness import Checker, parse_args  # noqa: E402
from mpi import mpi_available, mpi_env  # noqa: E402
from server import Server  # noqa: E402

args = parse_args()
ck = Checker("trace")
if not ck.check(mpi_available(), "mpirun not found (scripts/setup.sh installs Open MPI)"):
    ck.finish()
os.environ["ASAN_OPTIONS"] = ":".join(
    x for x in (os.environ.get("ASAN_OPTIONS", ""), "fast_unwind_on_malloc=0") if x)
os.environ.setdefault("LSAN_OPTIONS", "suppressions=" + os.path.join(HERE, "lsan.supp") +
                      ":print_suppressions=0")
ENV = mpi_env()
tmp = tempfile.mkdtemp(prefix="ss-trace-")
PROMPT = [19556, 665, 28, 339, 5248]  # 5 tokens: the prefill is one pass of 5
N_TOKENS = 6
EPS_US = 0.002  # the file's times have 3 decimals (ns)

meta = gguf_metadata(args.model)
arch = meta["general.architecture"]
DIM, N_LAYER = meta[f"{arch}.embedding_length"], meta[f"{arch}.block_count"]


def plan(*extra):
    p = subprocess.run([args.bin, "plan", "--model", args.model, "--json", *extra],
                       capture_output=True, timeout=120)
    ck.check(p.returncode == 0, f"plan {extra}: exit {p.returncode}: {p.stderr.decode()[-500:]}")
    return json.loads(p.stdout)


def load_trace(path, label):
    try:
        with open(path) as f:
            d = json.load(f)
    except (OSError, ValueError) as e:
        ck.check(False, f"{label}: the trace does not parse: {e}")
        return None
    ok = ck.check(isinstance(d.get("traceEvents"), list), f"{label}: no traceEvents list")
    return d["traceEvents"] if ok else None


def spans(ev):
    return [e for e in ev if e.get("ph") == "X"]


def check_tracks(ev, label, n_ranks):
    xs = spans(ev)
    ck.check(all(isinstance(e.get(k), (int, float)) for e in xs for k in ("ts", "dur", "pid", "tid"))
             and all(e["dur"] >= 0 for e in xs), f"{label}: a span lacks ts/dur/pid/tid")
    pids = {e["pid"] for e in xs}
    ck.check(pids == set(range(n_ranks)), f"{label}: ranks with spans {sorted(pids)}, "
             f"expected 0..{n_ranks - 1}")
    named = {e["pid"] for e in ev if e.get("ph") == "M" and e.get("name") == "process_name"}
    ck.check(named >= set(range(n_ranks)), f"{label}: named processes {sorted(named)}")
    threads = {(e["pid"], e["tid"]): e["args"]["name"] for e in ev
               if e.get("ph") == "M" and e.get("name") == "thread_name"}
    used = {(e["pid"], e["tid"]) for e in xs}
    ck.check(set(threads) == used and set(threads.values()) <= {"main", "engine", "worker"},
             f"{label}: thread tracks {threads}, tracks with spans {sorted(used)}")
    # Nesting: sorted by start (longer first on ties), a span must end within
    # every span still open when it starts.
    tracks = {}
    for e in xs:
        tracks.setdefault((e["pid"], e["tid"]), []).append(e)
    bad = []
    for key, es in tracks.items():
        es.sort(key=lambda e: (e["ts"], -e["dur"]))
        stack = []
        for e in es:
            while stack and stack[-1]["ts"] + stack[-1]["dur"] <= e["ts"] + EPS_US:
                stack.pop()
            if stack and e["ts"] + e["dur"] > stack[-1]["ts"] + stack[-1]["dur"] + EPS_US:
                bad.append((key, stack[-1]["name"], e["name"]))
            stack.append(e)
    ck.check(not bad, f"{label}: spans overlap partially within a track: {bad[:5]}")


def inside(xs, outer, name):
    """The spans called name on outer's track within outer."""
    end = outer["ts"] + outer["dur"] + EPS_US
    return [e for e in xs if e["name"] == name and e["pid"] == outer["pid"] and
            e["tid"] == outer["tid"] and e["ts"] >= outer["ts"] - EPS_US and
            e["ts"] + e["dur"] <= end]


def check_forwards(xs, label, rank, n_tokens, stage, plan_tp, pp=1, tp=1, prompt_len=len(PROMPT)):
    fw = sorted((e for e in xs if e["pid"] == rank and e["name"] == "forward"),
                key=lambda e: e["ts"])
    if not ck.check(len(fw) == n_tokens, f"{label} rank {rank}: {len(fw)} forward passes for "
                    f"{n_tokens} tokens generated"):
        return
    ck.check([f["args"]["tokens"] for f in fw] == [prompt_len] + [1] * (n_tokens - 1),
             f"{label} rank {rank}: tokens per pass {[f['args']['tokens'] for f in fw]}")
    last = stage == pp - 1
    wrong = []
    for f in fw:
        t, nl = f["args"]["tokens"], f["args"]["logits"]
        ars = inside(xs, f, "allreduce")
        if len(ars) != plan_tp["allreduces_per_token"]:
            wrong.append(f"{len(ars)} all-reduces, plan {plan_tp['allreduces_per_token']}")
        sizes = {a["args"]["bytes"] for a in ars}
        if ars and sizes != {t * plan_tp["allreduce_payload_bytes"]}:
            wrong.append(f"all-reduce bytes {sizes} for {t} tokens")
        if sum(a["args"]["bytes"] for a in ars) != t * plan_tp["allreduce_bytes_per_token"]:
            wrong.append("all-reduce bytes differ from allreduce_bytes_per_token")
        g = [e["args"]["bytes"] for e in inside(xs, f, "gatherv")]
        want = [nl * plan_tp["gather_bytes_per_token"]] if tp > 1 and last else []
        if g != want:
            wrong.append(f"gathers {g}, plan {want}")
        if pp > 1:
            sends = [(e["args"]["peer"], e["args"]["bytes"]) for e in inside(xs, f, "send")]
            want = []
            if not last:
                want.append((rank + tp, t * plan_tp["rank_send_bytes_per_token"]))
            if last and rank % tp == 0:
                want.append((0, nl * plan_tp["logits_send_bytes_per_token"]))
            if sorted(sends) != sorted(want):
                wrong.append(f"sends {sends}, plan {want}")
    ck.check(not wrong, f"{label} rank {rank}: collectives unlike the plan: {wrong[:4]}")


def generate(label, launch, extra, trace):
    cmd = [args.bin, "launch", *launch, "--", "generate", "--model", args.model, "--prompt-ids",
           ",".join(map(str, PROMPT)), "-n", str(N_TOKENS), "--temp", "0", "--ignore-eos",
           "--json", "--threads", "1", *extra, "--trace", trace]
    try:
        p = subprocess.run(cmd, capture_output=True, timeout=300, env=ENV)
    except subprocess.TimeoutExpired:
        ck.check(False, f"{label}: timed out")
        return None
    if not ck.check(p.returncode == 0, f"{label}: exit {p.returncode}: {p.stderr.decode()[-1500:]}"):
        return None
    out = json.loads([l for l in p.stdout.decode().splitlines() if l.startswith("{")][-1])
    ck.check(len(out["tokens"]) == N_TOKENS, f"{label}: {len(out['tokens'])} tokens")
    return load_trace(trace, label)


# ---- TP 2 ---------------------------------------------------------------
p2 = plan("--tp", "2")
# The plan against the file itself: f32 residual stream, two all-reduces per
# layer and the vocabulary-parallel embedding's one.
ck.check(p2["allreduce_payload_bytes"] == 4 * DIM and
         p2["allreduces_per_token"] == 2 * N_LAYER + 1 and
         p2["allreduce_bytes_per_token"] == (2 * N_LAYER + 1) * 4 * DIM,
         f"plan TP 2: {p2['allreduces_per_token']} x {p2['allreduce_payload_bytes']} B for a "
         f"{N_LAYER}-layer model of dim {DIM}")
ev = generate("TP 2", ["--tp", "2"], ["--tp", "2"], os.path.join(tmp, "tp2.json"))
if ev is not None:
    check_tracks(ev, "TP 2", 2)
    xs = spans(ev)
    for r in range(2):
        check_forwards(xs, "TP 2", r, N_TOKENS, 0, p2, tp=2)
    steps = [e for e in xs if e["pid"] == 0 and e["name"] == "step"]
    ck.check(len(steps) == N_TOKENS, f"TP 2: {len(steps)} engine steps for {N_TOKENS} tokens")
    ck.check(all(len(inside(xs, s, "forward")) == 1 for s in steps),
             "TP 2: an engine step without exactly one forward pass inside")

# ---- PP 2 x TP 2 ------------------------------------------------------------
pp = plan("--tp", "2", "--pp", "2")
ev = generate("PP 2 x TP 2", ["--pp", "2", "--tp", "2"], ["--pp", "2", "--tp", "2"],
              os.path.join(tmp, "pp2.json"))
if ev is not None:
    check_tracks(ev, "PP 2 x TP 2", 4)
    xs = spans(ev)
    for r in range(4):
        st = pp["stages"][r // 2]
        want = dict(st, rank_send_bytes_per_token=st["ranks"][r % 2]["send_bytes_per_token"],
                    logits_send_bytes_per_token=pp["logits_send_bytes_per_token"])
        check_forwards(xs, "PP 2 x TP 2", r, N_TOKENS, r // 2, want, pp=2, tp=2)

# ---- serve ------------------------------------------------------------------
trace = os.path.join(tmp, "serve.json")
srv = Server(args.bin, args.model, extra=["--trace", trace])
try:
    def ask(prompt):
        return srv.post("/v1/completions", {"prompt": prompt, "max_tokens": 4, "temperature": 0})
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(ask, ["The capital of France is", "One, two, three,"]))
finally:
    rc = srv.stop()
ck.check(rc == 0, f"serve --trace: exit {rc}: {''.join(srv.log[-20:])}")
completion = 0
for code, body in answers:
    if ck.check(code == 200, f"serve: status {code}: {body[:300]}"):
        completion += json.loads(body)["usage"]["completion_tokens"]
ev = load_trace(trace, "serve")
if ev is not None:
    check_tracks(ev, "serve", 1)
    xs = spans(ev)
    sampled = sum(e["args"]["tokens"] for e in xs if e["name"] == "sample")
    ck.check(sampled == completion == 8, f"serve: sample spans hold {sampled} tokens, the "
             f"responses {completion} (2 x max_tokens 4)")
    names = {e["args"]["name"] for e in ev if e.get("ph") == "M" and e["name"] == "thread_name"}
    ck.check("engine" in names, f"serve: thread tracks {names}, no 'engine'")
    ck.check(len([e for e in xs if e["name"] == "forward"]) ==
             len([e for e in xs if e["name"] == "step"]) > 0, "serve: forward passes != steps")

# ---- a path that cannot be written: refused at start ---------------------
for cmd in (["generate", "--model", args.model, "--prompt", "hi", "-n", "1"],
            ["serve", "--model", args.model, "--port", "0"]):
    for bad, why in ((os.path.join(tmp, "no-such-dir", "t.json"), "does not exist"),
                     (tmp, "is a directory")):
        rc, _, err = ck.run(args.bin, cmd + ["--trace", bad], timeout=60)
        ck.check(rc == 2 and "--trace" in err and bad in err and why in err,
                 f"{cmd[0]} --trace {bad}: exit {rc}, stderr {err[-300:]!r}")
        ck.check(not os.path.exists(os.path.join(tmp, "no-such-dir")), "a directory was created")

shutil.rmtree(tmp, ignore_errors=True)
ck.finish()
