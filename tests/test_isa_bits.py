"""The same bits on every CPU: each kernel variant this machine can run gives
identical tokens and top-20 log-probabilities (compared as exact floats), on
the exact path and on the opt-in 8-bit activation path (--activations q8).

For every variant `shardserve info --cpu` lists as available here (forced with
SS_CPU_ISA), on the default model and on random models of other shapes (one with
rows and heads that are not multiples of 16, so the zero-padded tails run, and,
when llama-quantize is at hand, a Q4_K_M file it made), 5 prompts x 32 greedy
steps with --logprobs 20: the JSON of every run must equal the first variant's,
and the best variant must also give the same bits at 1 and 2 threads.

Options: --compare-results FILE compares against the results of another machine
or build, e.g. an AArch64 build under qemu (tests/aarch64/run.sh), the same JSON per run;
--write-results FILE writes this machine's results for such a comparison.
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
from harness import Checker, parse_args  # noqa: E402
import kquant  # noqa: E402


def extra(ap):
    ap.add_argument("--compare-results", default="", help="results JSON of another machine")
    ap.add_argument("--write-results", default="", help="write this machine's results here")
    ap.add_argument("--variants", default="", help="comma-separated variants (default: all here)")
    ap.add_argument("--quick", action="store_true",
                    help="no second thread count (under emulation)")
    ap.add_argument("--default-prompts", type=int, default=5,
                    help="prompts on the default model (default 5)")


args = parse_args(extra)
ck = Checker("isa_bits")
tmp = tempfile.mkdtemp(prefix="ss-bits-")
atexit.register(shutil.rmtree, tmp, ignore_errors=True)

PROMPTS = [
    "The capital of France is",
    "Once upon a time, in a small village by the sea,",
    "def fibonacci(n):\n    ",
    "The three primary colours are",
    "Water boils at a temperature of",
]
STEPS, TOP = 32, 20


def variants_here():
    rc, out, err = ck.run(args.bin, ["info", "--cpu"])
    ck.check(rc == 0, f"info --cpu failed: {err}")
    for line in out.decode().splitlines():
        if line.startswith("variants:"):
            return line.split(":", 1)[1].replace("(available here)", "").split()
    ck.check(False, f"info --cpu printed no variants line:\n{out.decode()}")
    return []


def run(model, prompt, isa, threads, extra=()):
    env = dict(os.environ, SS_CPU_ISA=isa)
    rc, out, err = ck.run(args.bin, ["generate", "--model", model, "--prompt", prompt, "--json",
                                     "--logprobs", str(TOP), "-n", str(STEPS), "--temp", "0",
                                     "--ignore-eos", "--threads", str(threads), *extra],
                          timeout=1200, env=env)
    if not ck.check(rc == 0, f"generate ({isa}, {threads} threads) failed on {prompt!r}: "
                             f"{err[-600:]}"):
        return None
    ck.check(f"kernels {isa}" in err, f"the stats line does not name kernels {isa}: {err[-300:]}")
    r = json.loads(out)
    ck.check(len(r["tokens"]) == STEPS and len(r["top_logprobs"]) == STEPS,
             f"{isa}: {len(r['tokens'])} tokens on {prompt!r}")
    return {"tokens": r["tokens"], "top_logprobs": r["top_logprobs"]}


def first_diff(a, b):
    for i, (x, y) in enumerate(zip(a["top_logprobs"], b["top_logprobs"])):
        if x != y:
            return f"step {i}: {x[:3]} vs {y[:3]}"
    return f"tokens {a['tokens']} vs {b['tokens']}"


models = []
if args.default_prompts > 0:
    models.append(("default", args.model, PROMPTS[:args.default_prompts], ()))
    # The opt-in 8-bit activation path is held to the same bits on every variant.
    models.append(("default-q8act", args.model, PROMPTS[:min(2, args.default_prompts)],
                   ("--activations", "q8")))
vocab = os.path.join(args.data, "tokenizer", "ggml-vocab-gpt-2.gguf")
make = os.path.join(HERE, "reference", "make_tiny_llama.py")
# Rows of 200 (12 chunks of 16 + 8) and heads of 50: every tail path runs.
for label, shape in (("tiny-f16-odd", ["--dim", "200", "--heads", "4", "--kv-heads", "2",
                                       "--ffn", "72", "--dtype", "f16"]),
                     ("tiny-q4_1", ["--dim", "640", "--heads", "10", "--kv-heads", "2",
                                    "--ffn", "160", "--dtype", "q4_1"])):
    path = os.path.join(tmp, label + ".gguf")
    p = subprocess.run([sys.executable, make, "--out", path, "--layers", "2", "--vocab-from", vocab,
                        "--seed", "5", *shape], capture_output=True, text=True)
    if ck.check(p.returncode == 0, f"make_tiny_llama {label}: {p.stderr[-800:]}"):
        models.append((label, path, PROMPTS[:2], ()))
quant = kquant.find_quantize()
if ck.check(quant is not None, "llama-quantize not found (scripts/test.sh builds it: "
                               "bench/llamacpp.sh)"):
    src = os.path.join(tmp, "tiny-k-f32.gguf")
    p = subprocess.run([sys.executable, make, "--out", src, "--layers", "2", "--dim", "512",
                        "--heads", "8", "--kv-heads", "2", "--ffn", "768", "--dtype", "f32",
                        "--vocab-from", vocab, "--seed", "6"], capture_output=True, text=True)
    if ck.check(p.returncode == 0, f"make_tiny_llama k: {p.stderr[-800:]}"):
        dst = os.path.join(tmp, "tiny-q4_k_m.gguf")
        ok, msg = kquant.quantize(quant, src, dst, "Q4_K_M")
        if ck.check(ok, f"llama-quantize Q4_K_M: {msg}"):
            models.append(("tiny-q4_k_m", dst, PROMPTS[:2], ()))

variants = args.variants.split(",") if args.variants else variants_here()
if not args.variants:
    ck.check(len(variants) >= 2, f"every machine has portable and one SIMD variant: {variants}")
print(f"variants: {', '.join(variants)}", flush=True)
best = variants[-1] if variants else "portable"

results = {}
for label, model, prompts, extra in models:
    for prompt in prompts:
        base = None
        failed_before = len(ck.failures)
        for isa in variants:
            r = run(model, prompt, isa, 2 if isa == "portable" else 1, extra)
            if r is None:
                continue
            key = f"{label}|{prompt}"
            if base is None:
                base, base_isa = r, isa
                results[key] = r
            elif not ck.check(r == base, f"{label} {prompt!r}: {isa} differs from {base_isa}: "
                                          f"{first_diff(r, base)}"):
                continue
        if base is not None and not args.quick:
            r = run(model, prompt, best, 2, extra)
            if r is not None:
                ck.check(r == base, f"{label} {prompt!r}: {best} at 2 threads differs: "
                                    f"{first_diff(r, base)}")
        same = len(ck.failures) == failed_before
        print(f"{label} {prompt!r}: {'identical' if same else 'NOT identical'} across "
              f"{', '.join(variants)}", flush=True)

if args.write_results:
    with open(args.write_results, "w") as f:
        json.dump(results, f)
if args.compare_results:
    with open(args.compare_results) as f:
        other = json.load(f)
    for key, r in other.items():
        if key in results:
            ck.check(r == results[key], f"{key}: the other machine's result differs: "
                                        f"{first_diff(r, results[key])}")
    ck.check(any(k in results for k in other), "no common runs with the other machine's results")
ck.finish()
