"""Hugging Face folders for the four families against independent numpy
references (tests/reference/hf_ref.py, float64).

For llama, mixtral, grok-1 and grok-2, tiny random checkpoints in the exact
published layouts (tests/reference/make_tiny_hf.py) in F32 and BF16 (and grok-1
in FP8 with per-channel and per-tensor scales): at each of 32 greedy steps,
every id of the reference's top 20 has a log-probability within 1e-4 of ours,
and the greedy ids agree.  BF16 and FP8 checkpoints are compared against the
reference run on the same rounded weights (read from the same files), so the
tolerance is the f32 one.  Also: the tokenizers built from tokenizer.json and
tokenizer.model give the same ids as the GGUF vocabularies they were made
from, sharded checkpoints (index.json) load, and `info` reads the folders.
"""
import json
import os
import shutil
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "lib"))
sys.path.insert(0, os.path.join(HERE, "reference"))
from harness import Checker, parse_args  # noqa: E402
from logprob_compare import compare_steps  # noqa: E402
import hf_ref  # noqa: E402
import make_tiny_hf  # noqa: E402

ATOL = 1e-4  # |delta logprob|, f32 activations against the float64 reference
STEPS, TOP = 32, 20
N_TEXTS = 16  # tokenizer inputs compared per vocabulary (each is two process starts)

args = parse_args()
ck = Checker("hf models")
tmp = tempfile.mkdtemp(prefix="ss-hf-")

# (family, dtype, shards, names) and one prompt each (ids inside both vocabularies).
CASES = [
    ("llama", "f32", 2, "xai"), ("llama", "bf16", 1, "xai"),
    ("mixtral", "f32", 2, "xai"), ("mixtral", "bf16", 1, "xai"),
    ("grok-1", "f32", 2, "xai"), ("grok-1", "bf16", 1, "mixtral"), ("grok-1", "fp8", 1, "xai"),
    ("grok-2", "f32", 2, "xai"), ("grok-2", "bf16", 1, "xai"),
]
PROMPTS = [[1, 450, 4996, 17354, 1701, 432], [15043, 3186, 29892, 372, 29915, 29879, 29871, 29906]]


def ours(d, ids):
    rc, out, err = ck.run(args.bin, ["generate", "--model", d, "--prompt-ids", ",".join(map(str, ids)),
                                     "-n", str(STEPS), "--temp", "0", "--kv-cache-dtype", "f32", "--ignore-eos", "--json",
                                     "--logprobs", str(TOP)], timeout=600)
    if not ck.check(rc == 0, f"{d}: generate failed: {err[-2000:]}"):
        return None
    j = json.loads(out)
    return [(tok, {x["id"]: x["logprob"] for x in top}) for tok, top in zip(j["tokens"], j["top_logprobs"])]


try:
    for i, (family, dtype, shards, names) in enumerate(CASES):
        d = os.path.join(tmp, f"{family}-{dtype}")
        make_tiny_hf.make(family, d, dtype=dtype, seed=10 + i, shards=shards, names=names)
        if shards > 1:
            ck.check(os.path.exists(os.path.join(d, "model.safetensors.index.json")),
                     f"{d}: sharded checkpoint has an index")
        ref_model = hf_ref.Model(d)
        prompt = PROMPTS[i % len(PROMPTS)]
        ref = hf_ref.greedy(ref_model, prompt, STEPS, TOP)
        got = ours(d, prompt)
        if got is None:
            continue
        worst, n, tie, problems = compare_steps(ref, got, atol=ATOL)
        for p in problems[:5]:
            print(f"  {family} {dtype}: {p}")
        ck.check(not problems and n == STEPS,
                 f"{family} {dtype}: {len(problems)} problems over {n} steps (tie at {tie})")
        print(f"{family:8s} {dtype:5s} shards {shards} names {names:7s}: {n} greedy steps agree, "
              f"max |dlogprob| {worst:.2e} (tol {ATOL:g})", flush=True)

        # info reads the folder.
        rc, out, err = ck.run(args.bin, ["info", "--model", d])
        ck.check(rc == 0 and f"family:        {family}" in out.decode(), f"info {d}: {rc} {err}")
        rc, out, err = ck.run(args.bin, ["info", "--model", d, "--json"])
        if ck.check(rc == 0, f"info --json {d}: {err}"):
            j = json.loads(out)
            ck.check(j["family"] == family and len(j["tensors"]) > 0, f"info --json {d}: {j.get('family')}")

    # Tokenizers: tokenizer.json (from the GPT-2 GGUF vocab) and tokenizer.model
    # (from the llama SentencePiece GGUF vocab) against those GGUF files, on the
    # tokenizer test inputs.
    for family, vocab in (("llama", "gpt-2"), ("grok-1", "llama-spm")):
        d = os.path.join(tmp, f"{family}-f32")
        gguf_vocab = os.path.join(args.data, "tokenizer", f"ggml-vocab-{vocab}.gguf")
        with open(gguf_vocab + ".inp", encoding="utf-8") as fp:
            texts = [t for t in fp.read().split("\n__ggml_vocab_test__\n") if t]
        bad = 0
        for t in texts[:N_TEXTS]:
            a = ck.run(args.bin, ["tokenize", "--model", d], stdin=t.encode())
            b = ck.run(args.bin, ["tokenize", "--model", gguf_vocab], stdin=t.encode())
            if a[0] != 0 or a[1] != b[1]:
                bad += 1
                print(f"  {family}: {t!r}: {a[1]!r} vs GGUF {b[1]!r} {a[2]}")
        ck.check(bad == 0, f"{family}: {bad} of {min(N_TEXTS, len(texts))} texts tokenize differently")
        print(f"tokenizer of {family} ({vocab}): {min(N_TEXTS, len(texts)) - bad} texts identical to the GGUF vocabulary")

    # A prompt through the folder's tokenizer end to end.
    rc, out, err = ck.run(args.bin, ["generate", "--model", os.path.join(tmp, "mixtral-bf16"), "-p",
                                     "Hello world", "-n", "4", "--temp", "0", "--json"])
    ck.check(rc == 0 and json.loads(out)["prompt_tokens"][:3] == [1, 15043, 3186],
             f"text prompt through tokenizer.model: {rc} {out[:200]!r} {err[-500:]}")
finally:
    shutil.rmtree(tmp, ignore_errors=True)
ck.finish()
