"""The engine's logits against an independent float64 numpy forward pass.

For each prompt, `shardserve generate --json --logprobs 20 --temp 0` runs 32
greedy steps.  The reference (tests/reference/llama_ref.py, which reads the
GGUF with the `gguf` package and dequantizes with its own quant code) then runs
once over prompt + generated ids, which gives its distribution at every
generated position.  At each step: the top-20 log-probabilities agree within
1e-3 and the greedy id is the reference's argmax.  Comparison may stop at a
step where the reference's top-2 margin is below 1e-3; such steps are printed.

Also run on a small random llama file whose shapes differ from the default
model (written by tests/reference/make_tiny_llama.py), in F32 and Q8_0.
"""
import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile


HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "lib"))
sys.path.insert(0, os.path.join(HERE, "reference"))
import llama_ref  # noqa: E402
from harness import Checker, parse_args  # noqa: E402
from logprob_compare import compare_steps, generate_steps  # noqa: E402

args = parse_args()
ck = Checker("reference")
tmp = tempfile.mkdtemp(prefix="ss-ref-")
atexit.register(shutil.rmtree, tmp, ignore_errors=True)

TOP, STEPS, ATOL = 20, 32, 1e-3
PROMPTS = [
    "The capital of France is",
    "Once upon a time, in a small village by the sea,",
    "def fibonacci(n):\n    ",
    "The three primary colours are",
    "Water boils at a temperature of",
]


def ours(model, prompt, extra=()):
    rc, out, err = ck.run(args.bin, ["generate", "--model", model, "--prompt", prompt,
                                     "--json", "--logprobs", str(TOP), "-n", str(STEPS),
                                     "--temp", "0", "--kv-cache-dtype", "f32", "--ignore-eos", *extra], timeout=600)
    if not ck.check(rc == 0, f"generate failed ({rc}) on {prompt!r}: {err[-500:]}"):
        return None
    return json.loads(out)


def check_model(model_path, label, prompts):
    ref = llama_ref.load(model_path)
    for prompt in prompts:
        got = ours(model_path, prompt)
        if got is None:
            continue
        ids = got["prompt_tokens"] + got["tokens"]
        lp = llama_ref.log_softmax(ref.forward(ids[:-1]))
        ref_steps, our_steps = generate_steps(got, lp, TOP)
        worst, n, tie, problems = compare_steps(ref_steps, our_steps, ATOL, 1e-3)
        for p in problems:
            ck.check(False, f"{label} {prompt!r}: {p}")
        ck.check(len(got["tokens"]) == STEPS, f"{label} {prompt!r}: {len(got['tokens'])} tokens")
        ck.check(tie is not None or n == STEPS, f"{label} {prompt!r}: compared {n} steps")
        note = f", stopped at a near tie at step {tie}" if tie is not None else ""
        print(f"{label} {prompt!r}: {n} steps, max |dlogprob| {worst:.2e}{note}", flush=True)


check_model(args.model, "default", PROMPTS)

# A second model with other shapes: 10 heads, 2 KV heads, MLP width 160, head_dim 64.
vocab = os.path.join(args.data, "tokenizer", "ggml-vocab-gpt-2.gguf")
for dtype in ("f32", "q8_0"):
    path = os.path.join(tmp, f"tiny-{dtype}.gguf")
    p = subprocess.run([sys.executable, os.path.join(HERE, "reference", "make_tiny_llama.py"),
                        "--out", path, "--dim", "640", "--layers", "2", "--heads", "10",
                        "--kv-heads", "2", "--ffn", "160", "--dtype", dtype,
                        "--vocab-from", vocab, "--seed", "3"], capture_output=True, text=True)
    if ck.check(p.returncode == 0, f"make_tiny_llama {dtype}: {p.stderr[-800:]}"):
        check_model(path, f"tiny-{dtype}", PROMPTS[:2])

ck.finish()
