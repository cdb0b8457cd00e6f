"""CPU prefill and decode speed, shardserve against llama.cpp on the same file.

For each thread count, alternating the two engines run by run (so machine noise
hits both alike):
  - prefill: a 512-token prompt (the same token ids for both), tokens/s;
  - decode: 128 greedy tokens at batch 1 after that prompt, tokens/s.
Prints median, min and max over the runs and the ratio of medians.

shardserve figures come from its own stats line (time inside prefill and the
decode loop, sampling included); llama.cpp figures are wall-clock around
llama-cpp-python's eval() calls with an argmax per step (its own perf counters
move one token between prompt and decode counts), which adds tens of
microseconds of Python per token to llama.cpp's side, about 1% of a step.  llama.cpp is used through llama-cpp-python (which builds
llama.cpp from source for this CPU); run bench/run_cpu_bench.sh to set that up.

Usage: python bench/bench_cpu.py --bin build/shardserve --model M.gguf
           [--threads 1,2] [--runs 5] [--prompt-len 512] [--gen 128] [--no-llama-cpp]
"""
import argparse
import json
import platform
import random
import re
import statistics
import subprocess
import sys
import time

import numpy as np

ap = argparse.ArgumentParser()
ap.add_argument("--bin", default="build/shardserve")
ap.add_argument("--model", default="models/SmolLM2-135M-Instruct.Q4_1.gguf")
ap.add_argument("--threads", default="1,2")
ap.add_argument("--runs", type=int, default=5)
ap.add_argument("--prompt-len", type=int, default=512)
ap.add_argument("--gen", type=int, default=128)
ap.add_argument("--no-llama-cpp", action="store_true")
ap.add_argument("--json-out", default="")
args = ap.parse_args()

threads = [int(t) for t in args.threads.split(",")]
rnd = random.Random(0)
# Ordinary vocabulary ids (not the special tokens at the start of the vocab).
prompt = [rnd.randrange(100, 40000) for _ in range(args.prompt_len)]
STATS = re.compile(r"prefill ([0-9.]+) tok/s .*decode ([0-9.]+) tok/s \((\d+) steps")


def run_ours(t):
    p = subprocess.run([args.bin, "generate", "--model", args.model, "--prompt-ids",
                        ",".join(map(str, prompt)), "-n", str(args.gen + 1), "--temp", "0",
                        "--ignore-eos", "--threads", str(t)],
                       capture_output=True, text=True, check=True)
    m = STATS.search(p.stderr)
    assert m and int(m.group(3)) == args.gen, p.stderr
    return float(m.group(1)), float(m.group(2))


llm = {}


def run_llama(t):
    import llama_cpp
    if t not in llm:
        llm[t] = llama_cpp.Llama(model_path=args.model, n_ctx=args.prompt_len + args.gen + 16,
                                 n_batch=args.prompt_len, n_ubatch=args.prompt_len, n_threads=t,
                                 n_threads_batch=t, verbose=False)
    m = llm[t]
    m.reset()
    m._ctx.kv_cache_clear()
    t0 = time.perf_counter()
    m.eval(prompt)
    t1 = time.perf_counter()
    for _ in range(args.gen):
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(m.ctx, -1), shape=(m.n_vocab(),))
        m.eval([int(logits.argmax())])
    t2 = time.perf_counter()
    return args.prompt_len / (t1 - t0), args.gen / (t2 - t1)


have_llama = not args.no_llama_cpp
if have_llama:
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        print("llama_cpp not importable: measuring shardserve only (see bench/run_cpu_bench.sh)")
        have_llama = False

res = {}
for t in threads:
    run_ours(t)  # warm-up (page cache, CPU clocks)
    if have_llama:
        run_llama(t)
for r in range(args.runs):
    for t in threads:
        res.setdefault(("shardserve", t), []).append(run_ours(t))
        if have_llama:
            res.setdefault(("llama.cpp", t), []).append(run_llama(t))
    print(f"run {r + 1}/{args.runs} done", file=sys.stderr)


def summary(vals):
    return statistics.median(vals), min(vals), max(vals)


print(f"\nmachine: {platform.processor() or platform.machine()}, {subprocess.getoutput('nproc')} cores; "
      f"prompt {args.prompt_len} tokens, decode {args.gen} tokens, {args.runs} runs, "
      f"{time.strftime('%Y-%m-%d')}")
print(f"{'engine':<11} {'threads':>7} {'prefill tok/s (median [min, max])':>36} "
      f"{'decode tok/s (median [min, max])':>36}")
out = []
for t in threads:
    for eng in ("shardserve", "llama.cpp"):
        if (eng, t) not in res:
            continue
        pf = summary([x[0] for x in res[(eng, t)]])
        dc = summary([x[1] for x in res[(eng, t)]])
        print(f"{eng:<11} {t:>7} {pf[0]:>14.1f} [{pf[1]:.1f}, {pf[2]:.1f}]{'':>6} "
              f"{dc[0]:>14.1f} [{dc[1]:.1f}, {dc[2]:.1f}]")
        out.append({"engine": eng, "threads": t, "prefill": pf, "decode": dc})
    if have_llama:
        ours = res[("shardserve", t)]
        theirs = res[("llama.cpp", t)]
        rp = statistics.median([x[0] for x in ours]) / statistics.median([x[0] for x in theirs])
        rd = statistics.median([x[1] for x in ours]) / statistics.median([x[1] for x in theirs])
        print(f"{'ratio':<11} {t:>7} {rp:>14.2f}x{'':>22} {rd:>14.2f}x   (shardserve / llama.cpp)")
if args.json_out:
    with open(args.json_out, "w") as f:
        json.dump(out, f, indent=1)
