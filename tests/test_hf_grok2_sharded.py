"""xai-org/grok-2 as published: cut ahead of time for 8 tensor-parallel ranks.

sglang's grok.py (_prepare_presharded_weights) loads, on rank r,
*-TP-common.safetensors plus *-TP-{r:03d}.safetensors; with its default
load_presharded_moe (and load_presharded_attn / _mlp / _embedding off) the
rank files hold each rank's slice inside every expert: w1 and w3 cut along
their output rows, w2 along its input columns (sglang's FusedMoE tensor
parallelism), and everything else is whole in the common files.  The release
splits the common part over several files (pytorch_model-00000-TP-common,
-00001-, ...), and so does this folder.

The tiny Grok-2 of tests/test_hf_layouts.py (its writer and names, read out
of that file, so both layouts hold the same weights; moe_intermediate_size 24
cuts into 8 pieces of 3) is written whole and cut per rank.  Runs on the cut
folder at TP 1, 2, 3 and EP 2 must match the float64 reference
(tests/reference/hf_ref.py) on the whole folder within 1e-4 per log-probability
(test_hf_layouts.py's tolerance), and a missing rank file or a piece of the
wrong shape must be a clear error naming the file and the tensor.
"""
import ast
import json
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "lib"))
sys.path.insert(0, os.path.join(HERE, "reference"))
from harness import Checker, parse_args, SANITIZER_MARKS  # noqa: E402
from logprob_compare import compare_steps  # noqa: E402
from mpi import launch_cmd, mpi_available, mpi_env  # noqa: E402
import hf_ref  # noqa: E402
from st_io import write_safetensors, f32_to_bf16_bits  # noqa: E402

ATOL = 1e-4
STEPS, TOP = 16, 10
RANKS = 8
PROMPT = [72, 101, 108, 108, 111, 32]

args = parse_args()
ck = Checker("hf grok-2 cut per rank")
if not ck.check(mpi_available(), "mpirun not found (scripts/setup.sh installs Open MPI)"):
    ck.finish()
ENV = mpi_env()
ENV["ASAN_OPTIONS"] = ":".join(x for x in (ENV.get("ASAN_OPTIONS", ""), "fast_unwind_on_malloc=0") if x)
ENV.setdefault("LSAN_OPTIONS", f"suppressions={os.path.join(HERE, 'lsan.supp')}:print_suppressions=0")

# test_hf_layouts.py's constants and writer functions, without running it.
LAYOUTS = os.path.join(HERE, "test_hf_layouts.py")
tree = ast.parse(open(LAYOUTS).read(), LAYOUTS)
keep = {"byte_alphabet", "write_tokenizer", "Writer", "attention", "common_cfg", "make_grok2"}
body = [n for n in tree.body
        if (isinstance(n, (ast.FunctionDef, ast.ClassDef)) and n.name in keep)
        or (isinstance(n, ast.Assign) and all(isinstance(t, (ast.Name, ast.Tuple)) for t in n.targets)
            and isinstance(n.value, (ast.Constant, ast.Tuple, ast.BinOp)))]
ns = {"np": np, "os": os, "json": json, "write_safetensors": write_safetensors,
      "f32_to_bf16_bits": f32_to_bf16_bits}
exec(compile(ast.Module(body=body, type_ignores=[]), LAYOUTS, "exec"), ns)
saved = {}


class Recording(ns["Writer"]):
    def save(self, d, cfg, dtype):
        saved.update(T=dict(self.T), cfg=cfg, dtype=dtype)
        super().save(d, cfg, dtype)


ns["Writer"] = Recording


def bf16(a):
    return ("BF16", f32_to_bf16_bits(a))


def cut(d_whole, d):
    """The published layout: experts' w1/w3 by rows, w2 by columns, 8 ways."""
    os.makedirs(d)
    for f in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(d_whole, f), d)
    T = saved["T"]
    common, ranks = {}, [{} for _ in range(RANKS)]
    for n, a in T.items():
        if ".experts." in n and (n.endswith("w1.weight") or n.endswith("w3.weight")):
            for r, p in enumerate(np.split(a, RANKS, axis=0)):
                ranks[r][n] = bf16(p)
        elif ".experts." in n and n.endswith("w2.weight"):
            for r, p in enumerate(np.split(a, RANKS, axis=1)):
                ranks[r][n] = bf16(p)
        else:
            common[n] = bf16(a)
    names = sorted(common)
    half = len(names) // 2
    for i, part in enumerate((names[:half], names[half:])):
        write_safetensors(os.path.join(d, f"pytorch_model-{i:05d}-TP-common.safetensors"),
                          {n: common[n] for n in part}, metadata={"format": "pt"})
    for r in range(RANKS):
        write_safetensors(os.path.join(d, f"pytorch_model-00002-TP-{r:03d}.safetensors"), ranks[r],
                          metadata={"format": "pt"})


def run(d, ranks, ep):
    cmd = launch_cmd(args.bin, ranks, ["generate", "--model", d, "--prompt-ids", ",".join(map(str, PROMPT)),
                                       "-n", str(STEPS), "--temp", "0", "--kv-cache-dtype", "f32", "--json", "--logprobs", str(TOP),
                                       "--threads", "1", "--ignore-eos"] + (["--ep", str(ranks)] if ep else []))
    try:
        p = subprocess.run(cmd, capture_output=True, timeout=300, env=ENV)
    except subprocess.TimeoutExpired:
        ck.check(False, f"timed out: {cmd}")
        return None
    err = p.stderr.decode("utf-8", "replace")
    ck.check(not any(m in err for m in SANITIZER_MARKS), f"sanitizer report: {cmd}\n{err[-3000:]}")
    if not ck.check(p.returncode == 0, f"{cmd}: exit {p.returncode}\n{err[-2000:]}"):
        return None
    return json.loads([l for l in p.stdout.decode().splitlines() if l.startswith("{")][-1])


tmp = tempfile.mkdtemp(prefix="ss-grok2-cut-")
try:
    whole, d = os.path.join(tmp, "whole"), os.path.join(tmp, "cut")
    ns["make_grok2"](whole)
    cut(whole, d)
    ref_model = hf_ref.Model(whole)
    ck.check(ref_model.family == "grok-2", f"the reference reads family {ref_model.family}")
    ref = hf_ref.greedy(ref_model, PROMPT, STEPS, TOP)
    for ranks, ep in ((1, False), (2, False), (3, False), (2, True)):
        j = run(d, ranks, ep)
        if j is None:
            continue
        steps = [(t, {x["id"]: x["logprob"] for x in top}) for t, top in zip(j["tokens"], j["top_logprobs"])]
        worst, n, tie, problems = compare_steps(ref, steps, atol=ATOL)
        for p in problems[:5]:
            print(f"  {'EP' if ep else 'TP'} {ranks}: {p}")
        ck.check(not problems and n == STEPS and tie is None,
                 f"{'EP' if ep else 'TP'} {ranks}: {len(problems)} problems over {n} steps (tie at {tie})")
        print(f"cut per rank {'EP' if ep else 'TP'} {ranks}: {n} greedy steps agree, max |dlogprob| "
              f"{worst:.2e} (tol {ATOL:g})", flush=True)

    # A missing rank file.
    f5 = os.path.join(d, "pytorch_model-00002-TP-005.safetensors")
    os.rename(f5, f5 + ".away")
    rc, out, err = ck.run(args.bin, ["generate", "--model", d, "--prompt-ids", "72", "-n", "1"])
    ck.check(rc not in (0, None) and "TP-005" in err and "rank 5" in err,
             f"missing TP-005: rc {rc}, {err[-500:]}")
    os.rename(f5 + ".away", f5)

    # A piece of the wrong shape: rank 3's w1 of layer 1, expert 4 one row short.
    f3 = os.path.join(d, "pytorch_model-00002-TP-003.safetensors")
    bad = "model.layers.1.block_sparse_moe.experts.4.w1.weight"
    pieces = {}
    from st_io import read_safetensors  # noqa: E402
    for n, a in read_safetensors(f3).items():
        pieces[n] = bf16(a.astype(np.float32)[:-1] if n == bad else a.astype(np.float32))
    write_safetensors(f3, pieces)
    rc, out, err = ck.run(args.bin, ["generate", "--model", d, "--prompt-ids", "72", "-n", "1"])
    ck.check(rc not in (0, None) and "TP-003" in err and bad in err and "[2, 48]" in err,
             f"wrong piece shape: rc {rc}, {err[-500:]}")
finally:
    shutil.rmtree(tmp, ignore_errors=True)
ck.finish()
