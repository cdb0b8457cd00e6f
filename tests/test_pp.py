"""Pipeline parallelism gives the one-rank result.

`shardserve generate` runs greedy steps with the top-10 logprobs over pipeline
stages (contiguous layer ranges, hidden states sent stage to stage over MPI,
the logits back to rank 0).  The math of every layer is unchanged by the cut,
so the tokens and logprobs must be bit-identical to one rank: PP 2, PP 3 with
an explicit uneven split (12 + 10 + 8 of 30 layers), and PP 2 x TP 2 (identical to TP 2, and within 1e-3 of one rank, the TP
sums changing the f32 rounding only).  The same for tiny Mixtral and Grok-1
checkpoints (3 layers: Mixtral at PP 2, the default uneven split 2 + 1, and
Grok-1 at PP 3, one layer per stage; Mixtral also at PP 2 x TP 2).  One rank is itself
checked against the numpy reference in test_reference.py.

Then the flags' errors (a bad list, a sum that is not the layer count, more
stages than layers), the plan's per-stage figures, and serving: 32 concurrent
greedy streams at PP 2 complete with the PP 1 outputs.
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
sys.path.insert(0, os.path.join(HERE, "reference"))
from harness import Checker, parse_args, SANITIZER_MARKS  # noqa: E402
from logprob_compare import compare_steps  # noqa: E402
from mpi import mpi_available, mpi_env  # noqa: E402
from server import Server  # noqa: E402
import make_tiny_hf  # noqa: E402

args = parse_args()
ck = Checker("pipeline parallel")
if not ck.check(mpi_available(), "mpirun not found (scripts/setup.sh installs Open MPI)"):
    ck.finish()
SANITIZED = os.environ.get("SS_SANITIZED") == "1"
tmp = tempfile.mkdtemp(prefix="ss-pp-")
STEPS, TOP, ATOL = 12, 10, 1e-3

# Under the sanitizer build, LeakSanitizer reports what Open MPI keeps past
# MPI_Finalize: its libraries are suppressed (tests/lsan.supp), which needs the
# slow unwinder to see their frames (Open MPI has no frame pointers).  Set in
# this process's environment so that the servers started here inherit it.
os.environ["ASAN_OPTIONS"] = ":".join(
    x for x in (os.environ.get("ASAN_OPTIONS", ""), "fast_unwind_on_malloc=0") if x)
os.environ.setdefault("LSAN_OPTIONS", "suppressions=" + os.path.join(HERE, "lsan.supp") +
                      ":print_suppressions=0")
ENV = mpi_env()


def launch(pp, tp, cmd):
    if pp * tp == 1:
        return [args.bin] + cmd
    return [args.bin, "launch", "--pp", str(pp), "--tp", str(tp), "--"] + cmd


def run(model, pp, tp, prompt_ids, extra=()):
    flags = (["--pp", str(pp)] if pp > 1 and not any(x == "--pp-layers" for x in extra) else [])
    flags += ["--tp", str(tp)] if pp * tp > 1 else []
    cmd = launch(pp, tp, ["generate", "--model", model, "--prompt-ids", ",".join(map(str, prompt_ids)),
                          "-n", str(STEPS), "--temp", "0", "--ignore-eos", "--json", "--logprobs",
                          str(TOP), "--threads", "1", "--kv-cache-dtype", "f32", *flags, *extra])
    return ck.generate_top(cmd, ENV)


def check_model(label, model, prompt, layouts):
    base = run(model, 1, 1, prompt)
    tp2 = None
    if base is None:
        return
    for pp, tp, extra in layouts:
        got = run(model, pp, tp, prompt, extra)
        if got is None:
            continue
        name = f"{label} PP {pp} x TP {tp} {' '.join(extra)}".rstrip()
        if tp == 1:
            # The layers' math is untouched by the cut: the very same floats.
            ck.check(got == base, f"{name}: not bit-identical to one rank:\n  1 rank: {base[:3]}\n"
                     f"  got:    {got[:3]}")
            print(f"{name}: {len(got)} steps bit-identical to one rank", flush=True)
            continue
        if tp2 is None:
            tp2 = run(model, 1, tp, prompt)
        if tp2 is not None:
            ck.check(got == tp2, f"{name}: not bit-identical to TP {tp} alone")
        worst, n, tie, problems = compare_steps(base, got, atol=ATOL)
        for pr in problems[:5]:
            print(f"  {name}: {pr}")
        ck.check(not problems and n == STEPS, f"{name}: {len(problems)} problems over {n} steps")
        print(f"{name}: identical to TP {tp} alone; {n} greedy steps equal to one rank, "
              f"max |dlogprob| {worst:.2e} (tol {ATOL:g})", flush=True)


try:
    prompt = [504, 3575, 282, 4649, 314]  # "The capital of France is" in the default model
    layouts = [(2, 1, ()), (3, 1, ("--pp-layers", "12,10,8")), (2, 2, ())]
    if SANITIZED:
        layouts = [(2, 1, ())]
        print("sanitizer build (SS_SANITIZED=1): default model at PP 2 only, tiny Mixtral at PP 2 "
              "(default and explicit split), no PP 2 x TP 2 (4 ranks on this machine's cores), 8 "
              "served requests; the release build runs them all", flush=True)
    check_model("default", args.model, prompt, layouts)
    for i, family in enumerate(("mixtral", "grok-1")[: 1 if SANITIZED else 2]):
        d = os.path.join(tmp, family)
        make_tiny_hf.make(family, d, dtype="bf16", seed=60 + i, layers=3)
        # mixtral: the default uneven split (2 + 1); grok-1: one layer per stage.
        check_model(family, d, [1, 450, 4996, 17354][: 3 + i],
                    [(2 + i, 1, ())] + ([(2, 1, ("--pp-layers", "1,2"))] if SANITIZED
                                        else [(2, 2, ())] if family == "mixtral" else []))

    # The flags' errors.
    mix = os.path.join(tmp, "mixtral")
    gen = ["generate", "--model", mix, "--prompt-ids", "1,2", "-n", "1", "--threads", "1"]
    for flags, needle in ((["--pp-layers", "1,0"], "--pp-layers '1,0': entry 2 is not a layer count"),
                          (["--pp-layers", "1,x"], "entry 2 is not a layer count"),
                          (["--pp", "3", "--pp-layers", "1,2"], "--pp-layers lists 2 stages but --pp is 3")):
        rc, out, err = ck.run(args.bin, gen + flags)
        ck.check(rc == 2 and needle in err, f"generate {flags}: exit {rc}, {err!r}")
    for pp, flags, needle in ((2, ["--pp-layers", "1,1"],
                               "--pp-layers: the stages' layers sum to 2, but the model has 3 layers"),
                              (2, ["--pp-layers", "3,0"], "entry 2 is not a layer count"),
                              (4, ["--pp", "4"], "--pp 4 is outside 1..3")):
        cmd = launch(pp, 1, gen + flags)
        p = subprocess.run(cmd, capture_output=True, timeout=120, env=ENV)
        err = p.stderr.decode("utf-8", "replace")
        ck.check(p.returncode != 0 and needle in err, f"{cmd}: exit {p.returncode}, {err[-800:]!r}")
    # The plan's stages against the file's own tensor sizes (the gguf package).
    from gguf import GGUFReader
    rd = GGUFReader(args.model)
    nbytes = {t.name: int(t.n_bytes) for t in rd.tensors}

    def field(key):
        f = rd.fields[key]
        return int(f.parts[f.data[0]][0])
    n_layer, dim = field("llama.block_count"), field("llama.embedding_length")
    kv_dim = field("llama.attention.head_count_kv") * dim // field("llama.attention.head_count")
    head = "output.weight" if "output.weight" in nbytes else "token_embd.weight"
    rc, out, err = ck.run(args.bin, ["plan", "--model", args.model, "--pp", "3", "--pp-layers",
                                     "12,10,8", "--kv-cache-dtype", "f32", "--json"])
    if ck.check(rc == 0, f"plan --pp 3: {err}"):
        j = json.loads(out)
        ranges = [(0, 12), (12, 22), (22, 30)]
        ck.check([tuple(st["layers"]) for st in j["stages"]] == ranges, f"plan stages: {out[:400]}")
        for s, (b, e) in enumerate(ranges):
            want = sum(v for k, v in nbytes.items()
                       if k.startswith("blk.") and b <= int(k.split(".")[1]) < e)
            want += nbytes["token_embd.weight"] if s == 0 else 0
            want += nbytes[head] + nbytes["output_norm.weight"] if s == 2 else 0
            st = j["stages"][s]
            ck.check(st["weight_bytes"] == want, f"plan stage {s}: {st['weight_bytes']} weight "
                     f"bytes, the file's tensors say {want}")
            ck.check(st["kv_bytes_per_token"] == 2 * (e - b) * kv_dim * 4,
                     f"plan stage {s}: KV bytes per token {st['kv_bytes_per_token']}")
            ck.check(st["send_bytes_per_token"] == (dim * 4 if s < 2 else 0),
                     f"plan stage {s}: sent per token {st['send_bytes_per_token']}")
    rc, out, err = ck.run(args.bin, ["plan", "--model", args.model, "--pp", "2", "--tp", "2", "--json"])
    if ck.check(rc == 0, f"plan --pp 2 --tp 2: {err}"):
        j = json.loads(out)
        ck.check([st["layers"] for st in j["stages"]] == [[0, 15], [15, 30]], f"plan pp 2: {out[:300]}")
        ck.check(j["stages"][0]["send_bytes_per_token"] == 2 * dim * 4, "plan pp 2 x tp 2: send bytes")
        ck.check([r["rank"] for r in j["stages"][1]["ranks"]] == [2, 3], "plan pp 2 x tp 2: ranks")
    rc, out, err = ck.run(args.bin, ["plan", "--model", args.model, "--pp", "31"])
    ck.check(rc == 2 and "--pp 31 is outside 1..30" in err, f"plan --pp 31: {rc} {err}")

    # Serving at PP 2: 32 concurrent greedy requests, the PP 1 outputs.
    prompts = ["The capital of France is", "Once upon a time", "def add(a, b):",
               "The sky is blue because", "My favourite food is", "In 1969, the first",
               "Water boils at", "The three primary colours are"]
    n_req = 8 if SANITIZED else 32
    jobs = [(prompts[i % len(prompts)], 6 + i % 7) for i in range(n_req)]

    def serve_all(pp):
        extra = ["--max-num-seqs", "32"] + (["--pp", str(pp), "--tp", "1"] if pp > 1 else [])
        srv = Server(args.bin, args.model, tp=pp, extra=extra)
        try:
            def one(job):
                code, body = srv.post("/v1/completions", {"prompt": job[0], "max_tokens": job[1],
                                                          "temperature": 0})
                return code, json.loads(body)["choices"][0]["text"] if code == 200 else body
            with concurrent.futures.ThreadPoolExecutor(len(jobs)) as ex:
                return list(ex.map(one, jobs))
        finally:
            srv.stop()
            err = "".join(srv.log)
            ck.check(not any(m in err for m in SANITIZER_MARKS), f"serve pp {pp}: sanitizer report")

    base, got = serve_all(1), serve_all(2)
    ck.check(all(c == 200 for c, _ in base + got), f"serve: statuses {[c for c, _ in base + got]}")
    same = sum(1 for a, b in zip(base, got) if a == b)
    ck.check(same == len(jobs), f"serve PP 2: {same}/{len(jobs)} outputs equal PP 1's")
    print(f"serve PP 2: {same}/{len(jobs)} concurrent requests equal to PP 1", flush=True)
finally:
    shutil.rmtree(tmp, ignore_errors=True)
ck.finish()
