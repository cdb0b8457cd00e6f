"""The KV cache's element types: --kv-cache-dtype f32, bf16 (the default), f16
and fp8_e4m3.

Accuracy, on a small random llama file (tests/reference/make_tiny_llama.py, F32
weights), 16 greedy steps with --logprobs 20 per prompt and type:
  * against the float64 reference (tests/reference/llama_ref.py) whose K (after
    RoPE) and V are rounded to the type in float64 by numpy here (round to
    nearest even with the type's significant bits; fp8 e4m3: 4 bits, subnormals
    in steps of 2^-9 below 2^-6, saturating at 448, scale 1): the same 1e-3 as
    tests/test_reference.py for every type, since the rounding then is the
    reference's own and our f32 K/V round to the same values but for elements
    within ~1e-7 of a rounding boundary;
  * against the plain float64 reference, where the rounding is an error:
    rounding to p significant bits moves each element by at most u = 2^-p
    relative (bf16 p = 8, f16 p = 11, fp8 p = 4).  That shifts an attention
    score s by about u|s| and the attention output by about u relative; through
    the residual stream it reaches log-probabilities whose top 20 span about 10
    nats on these models, so the expected error scale is u x 10 (bf16 ~0.04,
    f16 ~0.005, fp8 ~0.6).  Tolerance 16u: bf16 0.0625, f16 0.0078, fp8 1.0;
    f32 1e-3.  Greedy ids equal up to near-ties (top-2 margin below 2 x atol).
  * each narrow type really rounds: its log-probabilities differ from f32's.
Bits: for each narrow type, every kernel variant this CPU runs (SS_CPU_ISA, as
`info --cpu` lists them) and 1 and the default number of threads give the same tokens and
log-probabilities as exact floats.
Memory, on the default model: `plan --json` gives K+V bytes per token
2 x layers x KV heads x head_dim x element size (shapes read by the `gguf`
package), /metrics' kv_cache_bytes_per_token says the same, and --kv-mem 32M
holds floor(32 MiB / (bytes per token x 16)) blocks: twice f32's for bf16 and
f16, four times for fp8.  The default pool (40% of MemAvailable, with
--max-num-seqs 4096 so that the memory bound is the one that binds) then holds
about twice the blocks for bf16 as for f32.

Under the sanitizers (SS_SANITIZED=1) one prompt, the bits of bf16 only, the
pool of f32 and bf16 and no default pool (the release build runs the rest).
"""
import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile

import gguf
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "lib"))
sys.path.insert(0, os.path.join(HERE, "reference"))
import llama_ref  # noqa: E402
from harness import Checker, parse_args  # noqa: E402
from logprob_compare import compare_steps, generate_steps  # noqa: E402
from server import Server  # noqa: E402

args = parse_args()
ck = Checker("kv dtype")
tmp = tempfile.mkdtemp(prefix="ss-kvdt-")
atexit.register(shutil.rmtree, tmp, ignore_errors=True)
SANITIZED = os.environ.get("SS_SANITIZED") == "1"
if SANITIZED:
    print("sanitizer build (SS_SANITIZED=1): one prompt, bf16 bits only, the pool of f32 and "
          "bf16, no default pool; the release build runs all of it", flush=True)

TOP, STEPS = 20, 16
PROMPTS = ["Once upon a time, in a small village by the sea,", "The three primary colours are"]
if SANITIZED:
    PROMPTS = PROMPTS[:1]
# name: (significant bits p, smallest normal exponent, largest finite value or None, bytes)
TYPES = {"f32": (24, -126, None, 4), "bf16": (8, -126, None, 2), "f16": (11, -14, 65504.0, 2),
         "fp8_e4m3": (4, -6, 448.0, 1)}
NARROW = [t for t in TYPES if t != "f32"]


def round_to(name):
    """K/V rounded to the type, in float64: to nearest even with p significant
    bits, multiples of the smallest normal's spacing below it, saturating."""
    p, emin, top, _ = TYPES[name]

    def f(x):
        a = np.abs(x)
        _, e = np.frexp(a)                      # a = m 2^e, m in [0.5, 1)
        q = np.maximum(e - p, emin - p + 1)     # exponent of the spacing at a
        r = np.ldexp(np.rint(np.ldexp(a, -q)), q)
        if top is not None:
            r = np.minimum(r, top)
        return np.copysign(r, x)
    return f


def atol_plain(name):
    return 1e-3 if name == "f32" else 16 * 2.0 ** -TYPES[name][0]


def generate(model, prompt, dtype, env=None, extra=()):
    rc, out, err = ck.run(args.bin, ["generate", "--model", model, "--prompt", prompt, "--json",
                                     "--logprobs", str(TOP), "-n", str(STEPS), "--temp", "0",
                                     "--ignore-eos", "--kv-cache-dtype", dtype, *extra],
                          timeout=300, env=env)
    if not ck.check(rc == 0, f"generate --kv-cache-dtype {dtype} failed ({rc}) on {prompt!r}: "
                             f"{err[-500:]}"):
        return None
    return json.loads(out)


def bits(got):
    return None if got is None else (got["tokens"], got["top_logprobs"])


# ---- Accuracy against the float64 reference
vocab = os.path.join(args.data, "tokenizer", "ggml-vocab-gpt-2.gguf")
tiny = os.path.join(tmp, "tiny.gguf")
p = subprocess.run([sys.executable, os.path.join(HERE, "reference", "make_tiny_llama.py"),
                    "--out", tiny, "--dim", "256", "--layers", "4", "--heads", "8",
                    "--kv-heads", "2", "--ffn", "384", "--dtype", "f32", "--vocab-from", vocab,
                    "--seed", "5"], capture_output=True, text=True)
if not ck.check(p.returncode == 0, f"make_tiny_llama: {p.stderr[-800:]}"):
    sys.exit(ck.finish())
ref = llama_ref.load(tiny)
runs, plain_lp = {}, {}
for prompt in PROMPTS:
    for dtype in TYPES:
        got = generate(tiny, prompt, dtype)
        runs[(prompt, dtype)] = got
        if got is None:
            continue
        ids = got["prompt_tokens"] + got["tokens"]
        ck.check(len(got["tokens"]) == STEPS, f"{dtype} {prompt!r}: {len(got['tokens'])} tokens")
        for label, kv_round, atol in (("rounded", round_to(dtype), 1e-3),
                                      ("plain", None, atol_plain(dtype))):
            ref.kv_round = kv_round
            if kv_round is None and tuple(ids) in plain_lp:
                lp = plain_lp[tuple(ids)]
            else:
                lp = llama_ref.log_softmax(ref.forward(ids[:-1]))
            if kv_round is None:
                plain_lp[tuple(ids)] = lp
            ref_steps, our_steps = generate_steps(got, lp, TOP)
            worst, n, tie, problems = compare_steps(ref_steps, our_steps, atol, 2 * atol)
            for prob in problems:
                ck.check(False, f"{dtype} vs the {label} reference, {prompt!r}: {prob}")
            note = f", stopped at a near tie at step {tie}" if tie is not None else ""
            print(f"{dtype} vs the {label} float64 reference (atol {atol:.2e}) {prompt!r}: {n} "
                  f"steps, max |dlogprob| {worst:.2e}{note}", flush=True)
        ref.kv_round = None
    base = runs.get((prompt, "f32"))
    for dtype in NARROW:
        got = runs.get((prompt, dtype))
        if base is not None and got is not None:
            ck.check(bits(got) != bits(base),
                     f"{dtype} {prompt!r}: log-probabilities equal f32's bit for bit (not rounded?)")

# ---- The same bits on every kernel variant and thread count
info = subprocess.run([args.bin, "info", "--cpu"], capture_output=True, text=True)
variants = []
for line in info.stdout.splitlines():
    if line.startswith("variants:"):
        variants = line.split(":", 1)[1].replace("(available here)", "").split()
ck.check(len(variants) >= 1, f"info --cpu lists no variants: {info.stdout[-300:]}")
for dtype in (["bf16"] if SANITIZED else NARROW):
    first = None
    for v in variants:
        got = bits(generate(tiny, PROMPTS[0], dtype, env=dict(os.environ, SS_CPU_ISA=v)))
        if first is None:
            first = (v, got)
        else:
            ck.check(got == first[1], f"{dtype}: {v} differs from {first[0]}")
    # The runs above use the default thread count (ss_pool_default_threads).
    one = bits(generate(tiny, PROMPTS[0], dtype, extra=("--threads", "1")))
    ck.check(first is not None and one == first[1],
             f"{dtype}: 1 thread differs from the default thread count")
    print(f"{dtype}: the same bits on {', '.join(variants)} and at 1 thread", flush=True)

# ---- Memory: plan, /metrics and the pool
r = gguf.GGUFReader(args.model)
arch = str(r.fields["general.architecture"].contents())
meta = {k: int(r.fields[f"{arch}.{k}"].contents()) for k in
        ("block_count", "embedding_length", "attention.head_count", "attention.head_count_kv")}
head_dim = meta["embedding_length"] // meta["attention.head_count"]
per_elem_token = 2 * meta["block_count"] * meta["attention.head_count_kv"] * head_dim
KV_MEM = 32 << 20
blocks_of = {}
for dtype in (["f32", "bf16"] if SANITIZED else list(TYPES)):
    want = per_elem_token * TYPES[dtype][3]
    rc, out, err = ck.run(args.bin, ["plan", "--model", args.model, "--tp", "1", "--json",
                                     "--kv-cache-dtype", dtype])
    if ck.check(rc == 0, f"plan --kv-cache-dtype {dtype}: {rc} {err[-300:]}"):
        plan = json.loads(out)
        ck.check(plan["kv_bytes_per_token"] == want and
                 plan["ranks"][0]["kv_bytes_per_token"] == want,
                 f"plan {dtype}: {plan['kv_bytes_per_token']} bytes/token, expected {want}")
    srv = Server(args.bin, args.model, extra=["--kv-mem", "32M", "--kv-cache-dtype", dtype])
    try:
        m = srv.metrics()
        got = m.get(f'shardserve:kv_cache_bytes_per_token{{dtype="{dtype}"}}')
        ck.check(got == want, f"/metrics {dtype}: kv_cache_bytes_per_token {got}, expected {want}")
        blocks = m.get("shardserve:kv_cache_blocks_total")
        ck.check(blocks == KV_MEM // (want * 16),
                 f"--kv-mem 32M {dtype}: {blocks} blocks, expected {KV_MEM // (want * 16)}")
        blocks_of[dtype] = blocks
    finally:
        ck.check(srv.stop() == 0, f"server {dtype} exits 0")
if "f32" in blocks_of:
    for dtype, blocks in blocks_of.items():
        factor = 4 // TYPES[dtype][3]
        ck.check(blocks is not None and blocks_of["f32"] is not None and
                 abs(blocks - factor * blocks_of["f32"]) < factor,
                 f"--kv-mem 32M: {dtype} holds {blocks} blocks, f32 {blocks_of['f32']}: "
                 f"expected {factor}x")
    print(f"--kv-mem 32M blocks: {blocks_of}", flush=True)


def mem_available():
    for line in open("/proc/meminfo"):
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


if not SANITIZED:
    default_blocks = {}
    for dtype in ("f32", "bf16"):
        per_block = per_elem_token * TYPES[dtype][3] * 16
        before = mem_available()
        srv = Server(args.bin, args.model, extra=["--max-num-seqs", "4096", "--kv-cache-dtype",
                                                  dtype])
        try:
            after = mem_available()
            blocks = srv.metrics().get("shardserve:kv_cache_blocks_total")
            hi = int(0.4 * max(before, after)) // per_block
            lo = int(0.4 * min(before, after) * 0.9) // per_block
            ck.check(blocks is not None and lo <= blocks <= hi,
                     f"default pool {dtype}: {blocks} blocks, want 40% of MemAvailable = {lo}..{hi}")
            default_blocks[dtype] = blocks
        finally:
            ck.check(srv.stop() == 0, f"default pool server {dtype} exits 0")
    if all(default_blocks.get(t) for t in ("f32", "bf16")):
        ratio = default_blocks["bf16"] / default_blocks["f32"]
        ck.check(1.8 <= ratio <= 2.2, f"default pool: bf16 holds {ratio:.2f}x f32's blocks")
        print(f"default pool: f32 {default_blocks['f32']} blocks, bf16 {default_blocks['bf16']} "
              f"({ratio:.2f}x)", flush=True)

sys.exit(ck.finish())
