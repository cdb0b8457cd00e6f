"""GPU benchmark: shardserve on one GPU against the device's own limits and
against PyTorch + transformers on the same weights, in one run.

1. `shardserve synth` writes a model of the chosen shape (default: Llama-3-8B,
   bf16) twice from one seed: GGUF for us, safetensors for transformers.
2. `ss_bench_gpu` (bench/bench_gpu.c) measures, on the same device: copy
   bandwidth (cudaMemcpy device to device), cuBLAS's bf16 GEMM rate on the
   model's prefill shapes, our prefill of N tokens (as a fraction of that GEMM
   rate) and our decode step at each batch size (batch 1 as bandwidth
   utilisation: weights + KV bytes per step / step time / copy bandwidth).
3. If torch and transformers import: the same prefill and decode steps with
   transformers (bf16, SDPA attention, a KV cache of the same depth).
4. Prints a Markdown table with the machine, date, commit and command, ready
   for bench/RESULTS.md; --json writes every figure.

Targets (from the issue): decode batch 1 >= 85% of bandwidth, prefill >= 60%
of the cuBLAS bf16 GEMM rate.  Standard library only (torch optional).
"""
import argparse
import datetime
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time

ap = argparse.ArgumentParser()
ap.add_argument("--bin", default="build/shardserve")
ap.add_argument("--bench", default="build/ss_bench_gpu")
ap.add_argument("--preset", default="llama-3-8b")
ap.add_argument("--dtype", default="bf16")
ap.add_argument("--dir", default="bench/models", help="where the synthetic models go")
ap.add_argument("--batches", default="1,64,256")
ap.add_argument("--prefill", type=int, default=2048)
ap.add_argument("--ctx", type=int, default=512, help="KV depth of each sequence while decoding")
ap.add_argument("--steps", type=int, default=32)
ap.add_argument("--no-torch", action="store_true")
ap.add_argument("--keep", action="store_true", help="reuse models already written")
ap.add_argument("--json", help="write every figure to this file")
args = ap.parse_args()
os.makedirs(args.dir, exist_ok=True)
figs = {"command": " ".join(shlex.quote(a) for a in sys.argv), "date": datetime.date.today().isoformat()}
try:
    figs["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                    text=True).stdout.strip()
except OSError:
    figs["commit"] = "?"
figs["host"] = platform.node()


def synth(out, fmt):
    if args.keep and os.path.exists(out):
        return
    t0 = time.time()
    subprocess.run([args.bin, "synth", "--preset", args.preset, "--dtype", args.dtype, "--seed", "1",
                    "--format", fmt, "-o", out], check=True)
    print(f"synth {fmt}: {time.time() - t0:.0f} s", file=sys.stderr)


gguf_path = os.path.join(args.dir, f"{args.preset}-{args.dtype}.gguf")
hf_path = os.path.join(args.dir, f"{args.preset}-{args.dtype}-hf")
synth(gguf_path, "gguf")

# ---- shardserve and the device's limits --------------------------------------
p = subprocess.run([args.bench, "--model", gguf_path, "--prefill", str(args.prefill), "--ctx",
                    str(args.ctx), "--batches", args.batches, "--steps", str(args.steps)],
                   capture_output=True, text=True)
sys.stderr.write(p.stderr)
if p.returncode == 77:
    print("SKIPPED: no usable CUDA device")
    sys.exit(77)
if p.returncode != 0:
    sys.exit(f"ss_bench_gpu failed ({p.returncode})")
ours = {"decode": {}}
for line in p.stdout.splitlines():
    rec = json.loads(line)
    if "batch" in rec:
        ours["decode"][rec["batch"]] = rec
    else:
        ours.update(rec)
figs["shardserve"] = ours

# ---- PyTorch + transformers on the same weights -------------------------------
theirs = None
if not args.no_torch:
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
        have_torch = True
    except ImportError as e:
        have_torch = False
        print(f"note: PyTorch + transformers not importable ({e}): their column is left out",
              file=sys.stderr)
    if have_torch:
        synth(hf_path, "safetensors")
        import torch
        from transformers import AutoModelForCausalLM
        from transformers.cache_utils import DynamicCache

        model = AutoModelForCausalLM.from_pretrained(hf_path, torch_dtype=torch.bfloat16,
                                                     attn_implementation="sdpa").cuda().eval()
        V = model.config.vocab_size

        def timed(fn, reps):
            out = []
            for _ in range(reps):
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                fn()
                torch.cuda.synchronize()
                out.append(time.perf_counter() - t0)
            return statistics.median(out)

        theirs = {"versions": f"torch {torch.__version__}, transformers {transformers.__version__}",
                  "decode": {}}
        with torch.inference_mode():
            ids = torch.randint(0, V, (1, args.prefill), device="cuda")
            model(ids, use_cache=False)
            t = timed(lambda: model(ids, use_cache=False, logits_to_keep=1), 5)
            theirs["prefill_s"] = t
            theirs["prefill_tok_s"] = args.prefill / t
            for B in [int(b) for b in args.batches.split(",")]:
                try:
                    cache = DynamicCache()
                    ctx_ids = torch.randint(0, V, (B, args.ctx), device="cuda")
                    model(ctx_ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
                    step = torch.randint(0, V, (B, 1), device="cuda")
                    for _ in range(3):
                        model(step, past_key_values=cache, use_cache=True)
                    t = timed(lambda: model(step, past_key_values=cache, use_cache=True), args.steps)
                    theirs["decode"][B] = {"step_ms": t * 1e3, "tok_s": B / t}
                    del cache
                    torch.cuda.empty_cache()
                except torch.cuda.OutOfMemoryError:
                    theirs["decode"][B] = None
                    torch.cuda.empty_cache()
        figs["torch"] = theirs

# ---- the table ---------------------------------------------------------------------
o = ours
print()
print(f"GPU: {o.get('device')} ({o.get('sm')} SMs, {o.get('mem_gib')} GiB); {figs['date']}, "
      f"commit {figs['commit']}, host {figs['host']}")
print(f"Model: synthetic {args.preset} {args.dtype} (shardserve synth --seed 1), KV depth "
      f"{args.ctx} while decoding, {args.steps} timed steps (median), CUDA graphs on")
print(f"Device limits measured in the same run: copy {o['copy_bw_gbs']:.0f} GB/s (device to "
      f"device, read + write), cuBLAS bf16 GEMM {o['cublas_bf16_tflops']:.0f} TFLOP/s on the "
      f"model's {args.prefill}-token prefill shapes")
if theirs:
    print(f"Peer: {theirs['versions']}, bf16, SDPA attention")
print(f"Command: {figs['command']}")
print()
hdr = "| measure | shardserve | target |" + (" transformers | shardserve / transformers |" if theirs else "")
print(hdr)
print("|" + "---|" * (hdr.count("|") - 1))


def row(name, ours_v, target="", theirs_v=None, ratio=None):
    line = f"| {name} | {ours_v} | {target} |"
    if theirs:
        line += f" {theirs_v if theirs_v is not None else '-'} | {ratio if ratio is not None else '-'} |"
    print(line)


pre_t = theirs["prefill_tok_s"] if theirs else None
row(f"prefill {args.prefill} tokens, tok/s", f"{o['prefill_tok_s']:.0f}", "",
    f"{pre_t:.0f}" if pre_t else None, f"{o['prefill_tok_s'] / pre_t:.2f}x" if pre_t else None)
row("prefill as a fraction of the cuBLAS bf16 GEMM rate", f"{o['prefill_frac_of_cublas']:.0%}", ">= 60%")
for B, d in sorted(o["decode"].items()):
    td = theirs["decode"].get(B) if theirs else None
    row(f"decode batch {B}, tok/s (step ms)", f"{d['tok_s']:.0f} ({d['step_ms']:.2f})", "",
        f"{td['tok_s']:.0f} ({td['step_ms']:.2f})" if td else None,
        f"{d['tok_s'] / td['tok_s']:.2f}x" if td else None)
    if B == 1:
        row("decode batch 1, bandwidth utilisation (bytes read / step / copy bandwidth)",
            f"{d['bw_util_of_copy']:.0%}", ">= 85%")
if args.json:
    with open(args.json, "w") as f:
        json.dump(figs, f, indent=2)
