"""K-quant (and Q5_0/Q5_1) weights in files made by llama.cpp's own llama-quantize.

1. A random f32 llama model whose rows are multiples of 256 (tests/reference/
   make_tiny_llama.py) is quantized by llama-quantize to every K-quant type and
   mix (Q2_K, Q3_K_S, Q3_K_M, Q3_K_L, Q4_K_S, Q4_K_M, Q5_K_S, Q5_K_M, Q6_K) and to
   Q5_0, Q5_1; for each file:
   - every quantized tensor's `shardserve info --dump` equals the `gguf`
     package's dequantizer (numpy) exactly, element for element;
   - 32 greedy steps with top-20 logprobs match the float64 reference forward
     (tests/reference/llama_ref.py) within 1e-3, greedy ids equal up to a
     printed near-tie.
2. The default model requantized by llama-quantize to Q4_K_M (its 576-wide
   rows are not multiples of 256, so llama-quantize mixes in its fallback types)
   matches the reference the same way.
"""
import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "lib"))
sys.path.insert(0, os.path.join(HERE, "reference"))
import kquant  # noqa: E402
import llama_ref  # noqa: E402
from harness import Checker, parse_args  # noqa: E402
from logprob_compare import compare_steps, generate_steps  # noqa: E402

args = parse_args()
ck = Checker("kquant")
tmp = tempfile.mkdtemp(prefix="ss-kq-")
atexit.register(shutil.rmtree, tmp, ignore_errors=True)

TOP, STEPS, ATOL = 20, 32, 1e-3
PROMPTS = ["The capital of France is", "Once upon a time, in a small village by the sea,"]
MIXES = ["Q2_K", "Q3_K_S", "Q3_K_M", "Q3_K_L", "Q4_K_S", "Q4_K_M", "Q5_K_S", "Q5_K_M", "Q6_K",
         "Q5_0", "Q5_1"]
WANT_TYPES = {"Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q5_0", "Q5_1"}


def ours(model, prompt):
    rc, out, err = ck.run(args.bin, ["generate", "--model", model, "--prompt", prompt, "--json",
                                     "--logprobs", str(TOP), "-n", str(STEPS), "--temp", "0", "--kv-cache-dtype", "f32",
                                     "--ignore-eos"], timeout=600)
    if not ck.check(rc == 0, f"generate failed ({rc}) on {model} {prompt!r}: {err[-500:]}"):
        return None
    return json.loads(out)


def check_reference(model, label, prompts):
    ref = llama_ref.load(model)
    for prompt in prompts:
        got = ours(model, prompt)
        if got is None:
            continue
        ids = got["prompt_tokens"] + got["tokens"]
        lp = llama_ref.log_softmax(ref.forward(ids[:-1]))
        ref_steps, our_steps = generate_steps(got, lp, TOP)
        worst, n, tie, problems = compare_steps(ref_steps, our_steps, ATOL, 1e-3)
        for p in problems:
            ck.check(False, f"{label} {prompt!r}: {p}")
        ck.check(tie is not None or n == STEPS, f"{label} {prompt!r}: compared {n} steps")
        note = f", stopped at a near tie at step {tie}" if tie is not None else ""
        print(f"{label} {prompt!r}: {n} steps, max |dlogprob| {worst:.2e}{note}", flush=True)


def check_dumps(model, label):
    """Every quantized tensor: our dequantization == gguf's, exactly."""
    types = set()
    for t in GGUFReader(model).tensors:
        name = t.tensor_type.name
        if name in ("F32", "F16"):
            continue
        types.add(name)
        rc, out, err = ck.run(args.bin, ["info", "--model", model, "--dump", t.name], timeout=300)
        if not ck.check(rc == 0, f"{label}: info --dump {t.name} failed: {err[-300:]}"):
            continue
        got = np.frombuffer(out, dtype="<f4")
        want = dequantize(t.data, t.tensor_type).astype(np.float32).reshape(-1)
        if ck.check(got.size == want.size, f"{label} {t.name}: {got.size} values, want {want.size}"):
            bad = np.flatnonzero(got != want)
            ck.check(bad.size == 0, f"{label} {t.name} ({name}): {bad.size} of {got.size} values "
                                    f"differ from gguf's dequantizer, first at {bad[:1]}: "
                                    f"{got[bad[:1]]} vs {want[bad[:1]]}")
    return types


quant = kquant.find_quantize()
if not ck.check(quant is not None, "llama-quantize not found (scripts/test.sh builds it with "
                                   "bench/llamacpp.sh --only-quantize)"):
    ck.finish()

vocab = os.path.join(args.data, "tokenizer", "ggml-vocab-gpt-2.gguf")
src = os.path.join(tmp, "tiny-f32.gguf")
p = subprocess.run([sys.executable, os.path.join(HERE, "reference", "make_tiny_llama.py"),
                    "--out", src, "--layers", "2", "--dim", "512", "--heads", "8", "--kv-heads",
                    "2", "--ffn", "768", "--dtype", "f32", "--vocab-from", vocab, "--seed", "11"],
                   capture_output=True, text=True)
ck.check(p.returncode == 0, f"make_tiny_llama: {p.stderr[-800:]}")
QUICK = os.environ.get("SS_SANITIZED") == "1"
if QUICK:
    print("sanitizer build (SS_SANITIZED=1): one prompt per file against the reference; the "
          "release build runs every prompt on Q4_K_M, Q6_K and the default model", flush=True)
seen = set()
for mix in MIXES:
    dst = os.path.join(tmp, f"tiny-{mix}.gguf")
    ok, msg = kquant.quantize(quant, src, dst, mix)
    if not ck.check(ok, f"llama-quantize {mix}: {msg}"):
        continue
    types = check_dumps(dst, f"tiny-{mix}")
    seen |= types
    print(f"tiny-{mix}: tensor types {sorted(types)}", flush=True)
    check_reference(dst, f"tiny-{mix}",
                    PROMPTS[:1] if QUICK or mix not in ("Q4_K_M", "Q6_K") else PROMPTS)
ck.check(WANT_TYPES <= seen, f"types never produced: {sorted(WANT_TYPES - seen)}")

dst = os.path.join(tmp, "smollm2-q4_k_m.gguf")
ok, msg = kquant.quantize(quant, args.model, dst, "Q4_K_M", requantize=True)
if ck.check(ok, f"llama-quantize the default model: {msg}"):
    types = {t.tensor_type.name for t in GGUFReader(dst).tensors}
    print(f"default model as Q4_K_M: tensor types {sorted(types)}", flush=True)
    check_reference(dst, "default-Q4_K_M", PROMPTS[:1] if QUICK else PROMPTS)
ck.finish()
