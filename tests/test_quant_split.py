"""Tensor-parallel cuts inside quantization blocks, exactly.

A row-parallel weight (attention output, MLP down) is cut along its input
columns; where the cut falls inside a quantization block each rank holds its
columns of that block as f32 (its "edge").  Checked here:

(a) tiny llama files written with the gguf package in Q4_0 and Q8_0, head dim
    16 (10 heads: 160 attention columns, 5 blocks of 32) and MLP width 64 (2
    blocks): at TP 2, 3 and 4 the heads' cuts straddle blocks (and the MLP's
    at 3 and 4); greedy ids and top-10 logprobs match the float64 reference
    (tests/reference/llama_ref.py on the gguf package's dequantized weights)
    within 1e-3, as the other reference tests;
(b) the same for files made by llama.cpp's llama-quantize ($SS_LLAMA_QUANTIZE),
    Q4_K_M (TP 2, 3, 4) and Q6_K (TP 3), of a model whose 256 attention columns (16 heads of 16)
    are one 256-column super-block and whose MLP is 2 of them: TP 2, 3, 4 cut
    inside super-blocks;
(c) `shardserve plan --json` reports per rank the f32 edge bytes computed here
    from the shapes and tensor types (rows x straddled columns x 4 bytes), the
    heads and MLP columns of the stated split rule, and the straddled blocks'
    bytes that no rank holds;
(d) what still cannot be split (more ranks than heads, or than MLP columns)
    is refused with a message naming the real numbers.
"""
import atexit
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

import numpy as np
from gguf import GGUFReader
from gguf.constants import GGML_QUANT_SIZES

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "lib"))
sys.path.insert(0, os.path.join(HERE, "reference"))
import kquant  # noqa: E402
import llama_ref  # noqa: E402
from harness import Checker, parse_args  # noqa: E402
from logprob_compare import compare_steps, generate_steps  # noqa: E402
from mpi import launch_cmd, mpi_available, mpi_env  # noqa: E402

args = parse_args()
ck = Checker("quant split")
tmp = tempfile.mkdtemp(prefix="ss-qsplit-")
atexit.register(shutil.rmtree, tmp, ignore_errors=True)
ck.check(mpi_available(), "mpirun not found (scripts/setup.sh installs Open MPI)")

TOP, STEPS, ATOL = 10, 6, 1e-3
PROMPT = "Once upon a time, in a small village by the sea,"
VOCAB = os.path.join(args.data, "tokenizer", "ggml-vocab-gpt-2.gguf")


def make(path, dim, heads, kv, ffn, dtype, seed):
    p = subprocess.run([sys.executable, os.path.join(HERE, "reference", "make_tiny_llama.py"),
                        "--out", path, "--dim", str(dim), "--layers", "2", "--heads", str(heads),
                        "--kv-heads", str(kv), "--head-dim", "16", "--ffn", str(ffn), "--dtype",
                        dtype, "--vocab-from", VOCAB, "--seed", str(seed)],
                       capture_output=True, text=True)
    return ck.check(p.returncode == 0, f"make_tiny_llama {dtype}: {p.stderr[-800:]}")


def split(n, parts, i):
    base, extra = divmod(n, parts)
    b = i * base + min(i, extra)
    return b, b + base + (1 if i < extra else 0)


def expected_plan(path, tp):
    """Heads, MLP columns and f32 edge bytes of every rank, from the file's shapes
    and types: heads and columns split into ranges differing by at most one unit;
    the MLP unit is the down projections' largest block when the width has at
    least tp of them, else 32 when it has tp groups of 32, else 1."""
    r = GGUFReader(path)
    t = {x.name: x for x in r.tensors}
    n_layer = sum(1 for n in t if n.endswith(".attn_output.weight"))
    wo0 = t["blk.0.attn_output.weight"]
    q_dim = int(wo0.shape[0])
    heads = q_dim // 16
    ffn = int(t["blk.0.ffn_down.weight"].shape[0])
    blk = lambda x: GGML_QUANT_SIZES[x.tensor_type][0]  # noqa: E731
    unit = max(blk(t[f"blk.{l}.ffn_down.weight"]) for l in range(n_layer))
    if not (ffn % unit == 0 and ffn // unit >= tp):
        unit = 32 if ffn % 32 == 0 and ffn // 32 >= tp else 1
    ranks = []
    for i in range(tp):
        h = split(heads, tp, i)
        u = split(ffn // unit, tp, i)
        f = (u[0] * unit, u[1] * unit)
        edge = 0
        for l in range(n_layer):
            for name, (c0, c1) in ((f"blk.{l}.attn_output.weight", (h[0] * 16, h[1] * 16)),
                                   (f"blk.{l}.ffn_down.weight", f)):
                w = t[name]
                b, rows = blk(w), int(w.shape[1])
                # Columns of [c0, c1) that share a block with columns outside it.
                straddled = sum(1 for c in range(c0, c1)
                                if c // b * b < c0 or c // b * b + b > c1)
                edge += rows * straddled * 4
        ranks.append({"heads": h, "ffn": f, "edge": edge})
    return ranks


def check_plan(path, label, tp):
    rc, out, err = ck.run(args.bin, ["plan", "--model", path, "--tp", str(tp), "--json"],
                          timeout=120)
    if not ck.check(rc == 0, f"{label} plan --tp {tp} failed: {err[-500:]}"):
        return 0
    plan = json.loads(out)
    want = expected_plan(path, tp)
    total = 0
    for i, (R, W) in enumerate(zip(plan["ranks"], want)):
        ck.check(tuple(R["heads"]) == W["heads"] if isinstance(R["heads"], list) else
                 (R["heads"]["begin"], R["heads"]["end"]) == W["heads"],
                 f"{label} tp {tp} rank {i}: heads {R['heads']}, want {W['heads']}")
        f = R["ffn_columns"]
        got_f = tuple(f) if isinstance(f, list) else (f["begin"], f["end"])
        ck.check(got_f == W["ffn"], f"{label} tp {tp} rank {i}: MLP columns {f}, want {W['ffn']}")
        ck.check(R["edge_bytes"] == W["edge"],
                 f"{label} tp {tp} rank {i}: plan says {R['edge_bytes']} f32 edge bytes, the "
                 f"shapes give {W['edge']}")
        total += W["edge"]
    ck.check(plan["edge_bytes"] == total, f"{label} tp {tp}: plan edge_bytes {plan['edge_bytes']}"
                                          f", want {total}")
    # Held + replicated + edges - straddled blocks = the file, byte for byte.
    ck.check(plan["total_weight_bytes"] == plan["file_weight_bytes"]["total"] +
             plan["replicated_bytes"] + plan["edge_bytes"] - plan["straddled_block_bytes"],
             f"{label} tp {tp}: byte totals do not add up: {plan['total_weight_bytes']} held")
    ck.check(plan["edge_bytes"] == 0 or plan["straddled_block_bytes"] > 0,
             f"{label} tp {tp}: edges without straddled blocks")
    rc, text, err = ck.run(args.bin, ["plan", "--model", path, "--tp", str(tp)], timeout=120)
    if total > 0 and ck.check(rc == 0, f"{label} plan text failed: {err[-300:]}"):
        text = text if isinstance(text, str) else text.decode()
        for i, W in enumerate(want):
            ck.check(f"rank {i}: " in text and f"({W['edge']} bytes) of f32 edges" in text,
                     f"{label} tp {tp}: text plan lacks rank {i}'s edge line")
    return total


def run_tp(model, tp):
    cmd = launch_cmd(args.bin, tp, ["generate", "--model", model, "--prompt", PROMPT, "--json",
                                    "--logprobs", str(TOP), "-n", str(STEPS), "--temp", "0", "--kv-cache-dtype", "f32",
                                    "--ignore-eos", "--threads", "1"])
    try:
        p = subprocess.run(cmd, capture_output=True, timeout=300, env=mpi_env())
    except subprocess.TimeoutExpired:
        ck.check(False, f"timed out: {cmd}")
        return None
    err = p.stderr.decode("utf-8", "replace")
    if not ck.check(p.returncode == 0, f"tp {tp} on {model} failed ({p.returncode}): "
                                       f"{err[-1500:]}"):
        return None
    lines = [l for l in p.stdout.decode().splitlines() if l.startswith("{")]
    if not ck.check(len(lines) == 1, f"tp {tp}: expected one JSON line: {p.stdout[-300:]!r}"):
        return None
    return json.loads(lines[0])


def check_model(path, label, tps, must_straddle):
    ref = llama_ref.load(path)
    for tp in tps:
        edge = check_plan(path, label, tp)
        if tp in must_straddle:
            ck.check(edge > 0, f"{label} tp {tp}: the shapes were chosen to straddle blocks, "
                               f"but no rank has an edge")
        got = run_tp(path, tp)
        if got is None:
            continue
        ids = got["prompt_tokens"] + got["tokens"]
        lp = llama_ref.log_softmax(ref.forward(ids[:-1]))
        ref_steps, our_steps = generate_steps(got, lp, TOP)
        worst, n, tie, problems = compare_steps(ref_steps, our_steps, ATOL, 1e-3)
        for p in problems:
            ck.check(False, f"{label} tp {tp}: {p}")
        ck.check(tie is not None or n == STEPS, f"{label} tp {tp}: compared {n} steps")
        note = f", stopped at a near tie at step {tie}" if tie is not None else ""
        print(f"{label} tp {tp}: edges {edge} bytes, {n} steps, max |dlogprob| vs the float64 "
              f"reference {worst:.2e}{note}", flush=True)


# Under the sanitizers every code path runs at fewer degrees; the release
# build runs them all.
QUICK = os.environ.get("SS_SANITIZED") == "1"
if QUICK:
    print("sanitizer build (SS_SANITIZED=1): one TP degree per file; the release build runs "
          "TP 2, 3 and 4", flush=True)

# (a) gguf-package quantizers: Q4_0 and Q8_0, head dim 16.
for dtype, seed in (("q4_0", 3), ("q8_0", 4)):
    path = os.path.join(tmp, f"tiny-{dtype}.gguf")
    if make(path, 160, 10, 2, 64, dtype, seed):
        tps = ((3,) if dtype == "q4_0" else (2,)) if QUICK else (2, 3, 4)
        check_model(path, f"tiny-{dtype}", tps, tps)

# (b) llama-quantize's K-quant mixes.
quant = kquant.find_quantize()
if ck.check(quant is not None, "llama-quantize not found: set SS_LLAMA_QUANTIZE (scripts/test.sh "
                               "builds it with bench/llamacpp.sh --only-quantize)"):
    src = os.path.join(tmp, "tiny256-f32.gguf")
    if make(src, 256, 16, 4, 512, "f32", 7):
        for mix in ("Q4_K_M", "Q6_K"):
            dst = os.path.join(tmp, f"tiny256-{mix}.gguf")
            ok, msg = kquant.quantize(quant, src, dst, mix)
            if not ck.check(ok, f"llama-quantize {mix}: {msg}"):
                continue
            types = {t.tensor_type.name for t in GGUFReader(dst).tensors
                     if t.name.endswith(("attn_output.weight", "ffn_down.weight"))}
            ck.check(types & {"Q4_K", "Q6_K"}, f"{mix}: row-parallel weights are {types}")
            print(f"tiny256-{mix}: row-parallel types {sorted(types)}", flush=True)
            tps = (2, 3, 4) if mix == "Q4_K_M" and not QUICK else (3,)
            check_model(dst, f"tiny256-{mix}", tps, tps)

# (d) what cannot be split: refused with the real numbers.
path = os.path.join(tmp, "tiny-q4_0.gguf")
if os.path.exists(path):
    rc, out, err = ck.run(args.bin, ["plan", "--model", path, "--tp", "11"], timeout=60)
    msg = err if isinstance(err, str) else err.decode("utf-8", "replace")
    ck.check(rc != 0 and "--tp 11" in msg and "10 query heads" in msg,
             f"tp 11 on 10 heads: rc {rc}, message {msg!r}")
narrow = os.path.join(tmp, "narrow.gguf")
if make(narrow, 64, 4, 4, 2, "f32", 9):
    rc, out, err = ck.run(args.bin, ["plan", "--model", narrow, "--tp", "3"], timeout=60)
    msg = err if isinstance(err, str) else err.decode("utf-8", "replace")
    ck.check(rc != 0 and "--tp 3" in msg and "MLP width of 2 columns" in msg,
             f"tp 3 on an MLP of 2 columns: rc {rc}, message {msg!r}")
    nums = [int(x) for x in re.findall(r"-?\d+", msg)]
    ck.check(all(0 <= x < 1 << 20 for x in nums), f"numbers in the message: {nums}")
ck.finish()
