"""Mixtral-style mixture-of-experts GGUF files, in llama.cpp's layout
(general.architecture llama, llama.expert_count / expert_used_count,
blk.N.ffn_gate_inp and the stacked blk.N.ffn_{gate,up,down}_exps of ne
[dim, ffn, E] / [ffn, dim, E]), and the older one matrix per expert
(blk.N.ffn_{gate,up,down}.E).

1. `synth --arch mixtral` writes the same small model (same seed) as a bf16
   GGUF and as bf16 safetensors.  The `gguf` package reads the GGUF back and
   every tensor must equal the safetensors one (attn_q / attn_k with
   llama.cpp's rotary row permutation, expert e of a stack = experts.e.w1 /
   w3 / w2).  Greedy generation from both files must give the same ids, and
   top-10 log-probabilities within 1e-5 (the GGUF's permuted Q/K rows change
   the order of the attention dot products' sums, nothing else).
2. The GGUF (bf16, q8_0, q4_0) against the float64 reference
   (tests/reference/hf_ref.py) run on the GGUF's own weights dequantized by
   the `gguf` package (written back as an HF folder), teacher-forced on our
   ids: at every step each of our top-10 log-probabilities is within ATOL of
   the reference's, and our greedy id is the reference's argmax unless the
   reference's top two are within ATOL of each other.  ATOL 1e-3 for every
   type (the exact path's bound, as test_hf_models): the reference holds the
   very values the quantized blocks decode to, and without --activations q8
   our kernels keep the activations in f32, so only the f32 accumulation
   differs.  The same for K-quant experts: a dim-256 file quantized by
   llama.cpp's llama-quantize (Q4_K_M: Q4_K gate/up and Q6_K down stacks;
   Q5_K_S: Q5_K), also under TP 2 and EP 2.
3. TP 2, TP 3 (uneven: 96 expert columns in 3 blocks of 32) and EP 2 on the
   bf16 and q4_0 GGUF give the single-rank ids, log-probabilities within 1e-3
   (test_moe_parallel's bound).  The per-expert 2-D layout gives exactly the
   stacked file's output.
4. Bad files written with the `gguf` package's GGUFWriter: expert_used_count
   above expert_count, expert_count above 1024, expert_used_count missing, a
   stack with the wrong ne[2], a stack whose data the file cuts short, and a
   missing router: each refused with a message naming the key or tensor.
   `info` shows the experts.
"""
import json
import os
import shutil
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "lib"))
sys.path.insert(0, os.path.join(HERE, "reference"))
from harness import Checker, parse_args  # noqa: E402
from logprob_compare import compare_steps  # noqa: E402
from mpi import launch_cmd, mpi_available, mpi_env  # noqa: E402
import kquant  # noqa: E402
import hf_ref  # noqa: E402
from st_io import read_safetensors, write_safetensors  # noqa: E402

import gguf  # noqa: E402
from gguf import GGUFReader, GGUFValueType, GGMLQuantizationType as QT  # noqa: E402

args = parse_args()
ck = Checker("gguf moe")
tmp = tempfile.mkdtemp(prefix="ss-gguf-moe-")
ENV = mpi_env()

C, L, H, KV, D, F, E, K, V = 64, 2, 4, 2, 16, 96, 4, 2, 300
SHAPE = ["--arch", "mixtral", "--dim", str(C), "--layers", str(L), "--heads", str(H),
         "--kv-heads", str(KV), "--ffn", str(F), "--vocab", str(V), "--experts", str(E),
         "--experts-used", str(K), "--ctx", "256", "--seed", "11"]
PROMPT = [1, 45, 99, 7, 200]
STEPS, TOP = 10, 10


def synth(out, *flags):
    rc, _, err = ck.run(args.bin, ["synth", *SHAPE, *flags, "-o", out], timeout=120)
    return ck.check(rc == 0, f"synth {' '.join(flags)} -o {out}: exit {rc}: {err.strip()[-400:]}")


def generate(model, ranks=1, ep=False):
    cmd = launch_cmd(args.bin, ranks, ["generate", "--model", model, "--prompt-ids",
                                       ",".join(map(str, PROMPT)), "-n", str(STEPS), "--temp", "0",
                                       "--kv-cache-dtype", "f32", "--ignore-eos", "--json",
                                       "--logprobs", str(TOP), "--threads", "1"]
                     + (["--ep", str(ranks)] if ep else []))
    return ck.generate_top(cmd, ENV)


def tensors_of(path):
    """{name: (float32 array in numpy order, type)} dequantized by the gguf package."""
    out = {}
    for t in GGUFReader(path).tensors:
        shape = [int(x) for x in reversed(t.shape)]
        out[t.name] = (gguf.quants.dequantize(t.data, t.tensor_type).reshape(shape).astype(np.float32),
                       t.tensor_type)
    return out


def unpermute(w, heads):
    """HF rows from llama.cpp's rotary order: GGUF row h*D + 2i + j holds HF
    row h*D + j*D/2 + i."""
    rows, cols = w.shape
    d = rows // heads
    return w.reshape(heads, d // 2, 2, cols).swapaxes(1, 2).reshape(rows, cols)


def hf_names(g, layers=L, heads=H, kv_heads=KV, experts=E):
    """The GGUF tensors g renamed and reshaped into the HF mixtral layout."""
    out = {"model.embed_tokens.weight": g["token_embd.weight"][0],
           "model.norm.weight": g["output_norm.weight"][0],
           "lm_head.weight": g["output.weight"][0]}
    for l in range(layers):
        p, b = f"model.layers.{l}.", f"blk.{l}."
        out[p + "input_layernorm.weight"] = g[b + "attn_norm.weight"][0]
        out[p + "post_attention_layernorm.weight"] = g[b + "ffn_norm.weight"][0]
        out[p + "self_attn.q_proj.weight"] = unpermute(g[b + "attn_q.weight"][0], heads)
        out[p + "self_attn.k_proj.weight"] = unpermute(g[b + "attn_k.weight"][0], kv_heads)
        out[p + "self_attn.v_proj.weight"] = g[b + "attn_v.weight"][0]
        out[p + "self_attn.o_proj.weight"] = g[b + "attn_output.weight"][0]
        out[p + "block_sparse_moe.gate.weight"] = g[b + "ffn_gate_inp.weight"][0]
        for part, w in (("gate", "w1"), ("up", "w3"), ("down", "w2")):
            stack = g[b + f"ffn_{part}_exps.weight"][0]
            for e in range(experts):
                out[p + f"block_sparse_moe.experts.{e}.{w}.weight"] = stack[e]
    return out


def rewrite(src, dst, kv=None, drop_kv=(), tensors=None, last=None):
    """Copies src into dst with the gguf package's GGUFWriter: metadata with
    kv's values replacing (or adding to) the originals and drop_kv removed;
    tensors: a function from a ReaderTensor to [(name, raw data, type)];
    `last`: that tensor is written last."""
    kv = dict(kv or {})
    r = GGUFReader(src)
    w = gguf.GGUFWriter(dst, "llama")
    for k, f in r.fields.items():
        if k.startswith("GGUF.") or k == "general.architecture" or k in drop_kv:
            continue
        if k in kv:
            w.add_key_value(k, kv.pop(k), f.types[0])
            continue
        w.add_key_value(k, f.contents(), f.types[0], sub_type=f.types[-1] if len(f.types) > 1 else None)
    for k, v in kv.items():
        w.add_uint32(k, v)
    ts = sorted(r.tensors, key=lambda t: t.name == last)
    for t in ts:
        for name, data, qt in (tensors(t) if tensors else [(t.name, t.data, t.tensor_type)]):
            w.add_tensor(name, np.ascontiguousarray(data), raw_dtype=qt)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def reference_dir(d, gguf_path, config_from, **shape):
    """An HF folder holding the GGUF's weights as the gguf package dequantizes
    them, in f32, with config.json copied from a synth folder of that shape."""
    os.makedirs(d)
    shutil.copy(os.path.join(config_from, "config.json"), d)
    write_safetensors(os.path.join(d, "model.safetensors"),
                      {n: ("F32", a.astype(np.float32))
                       for n, a in hf_names(tensors_of(gguf_path), **shape).items()})
    return d


def teacher_forced(ref_model, got, atol):
    """Our steps against the reference recomputed on our own ids."""
    ids = list(PROMPT)
    worst, agree, problems = 0.0, 0, []
    for i, (tok, top) in enumerate(got):
        z = ref_model.logits(ids)
        lp = z - (z.max() + np.log(np.exp(z - z.max()).sum()))
        for tid, v in top.items():
            d = abs(v - lp[tid])
            worst = max(worst, d)
            if d > atol:
                problems.append(f"step {i}: id {tid}: logprob {v:.6f} vs reference {lp[tid]:.6f}")
        order = np.argsort(-lp, kind="stable")
        if tok == int(order[0]):
            agree += 1
        elif lp[order[0]] - lp[tok] > atol:
            problems.append(f"step {i}: greedy id {tok}, reference argmax {int(order[0])} "
                            f"({lp[order[0]] - lp[tok]:.2e} higher)")
        ids.append(tok)
    return worst, agree, problems


try:
    # ---- 1. the same model as GGUF and as safetensors --------------------------------
    paths = {}
    for dt in ("bf16", "q8_0", "q4_0"):
        p = os.path.join(tmp, f"m_{dt}.gguf")
        if synth(p, "--dtype", dt):
            paths[dt] = p
    hf = os.path.join(tmp, "hf_bf16")
    have_hf = synth(hf, "--dtype", "bf16", "--format", "safetensors")
    if "bf16" in paths and have_hf:
        g = tensors_of(paths["bf16"])
        st = read_safetensors(os.path.join(hf, "model.safetensors"))
        r = GGUFReader(paths["bf16"])
        meta = {k: r.fields[k].contents() for k in ("general.architecture", "llama.expert_count",
                                                    "llama.expert_used_count", "llama.feed_forward_length")}
        ck.check(meta == {"general.architecture": "llama", "llama.expert_count": E,
                          "llama.expert_used_count": K, "llama.feed_forward_length": F},
                 f"GGUF metadata: {meta}")
        ck.check([int(x) for x in g["blk.0.ffn_gate_exps.weight"][0].shape] == [E, F, C]
                 and [int(x) for x in g["blk.1.ffn_down_exps.weight"][0].shape] == [E, C, F]
                 and g["blk.0.ffn_up_exps.weight"][1] == QT.BF16, "GGUF expert stacks' shapes/type")
        mine = hf_names(g)
        ck.check(set(mine) == set(st), f"tensor sets differ: {sorted(set(mine) ^ set(st))[:6]}")
        diff = [n for n in st if n in mine and not np.array_equal(mine[n].astype(np.float64), st[n])]
        ck.check(not diff, f"GGUF tensors differ from the safetensors ones: {diff[:6]}")
        print(f"ok   {len(st)} safetensors tensors equal the GGUF's (Q/K permuted, experts stacked)")

        a, b = generate(paths["bf16"]), generate(hf)
        if a and b:
            worst, n, tie, problems = compare_steps(b, a, atol=1e-5)
            for p in problems[:5]:
                print("  gguf vs safetensors:", p)
            ck.check(not problems and n == STEPS and [x[0] for x in a] == [x[0] for x in b],
                     f"bf16 GGUF vs safetensors: {len(problems)} problems over {n} steps")
            print(f"ok   bf16 GGUF = safetensors: {n} greedy ids equal, max |dlogprob| {worst:.2e} (tol 1e-5)")

    # ---- 2. against the float64 reference on the GGUF's own weights --------------------
    for dt, atol in (("bf16", 1e-3), ("q8_0", 1e-3), ("q4_0", 1e-3)):
        if dt not in paths or not have_hf:
            continue
        d = reference_dir(os.path.join(tmp, f"ref_{dt}"), paths[dt], hf)
        got = generate(paths[dt])
        if not got:
            continue
        worst, agree, problems = teacher_forced(hf_ref.Model(d), got, atol)
        for p in problems[:5]:
            print(f"  {dt}: {p}")
        ck.check(not problems and len(got) == STEPS, f"{dt} GGUF vs reference: {len(problems)} problems")
        print(f"ok   {dt} GGUF vs float64 reference: max |dlogprob| {worst:.2e} (tol {atol:g}), "
              f"greedy id = reference argmax at {agree} of {len(got)} steps")

    # ---- 2b. K-quant experts, quantized by llama.cpp's own llama-quantize -------------
    # Rows of 256 (the K-quants' block): dim and expert width 256, one layer.
    # Q4_K_M makes the gate/up stacks Q4_K and the down stack Q6_K; Q5_K_S
    # makes them Q5_K.  Against the reference on the file's own weights as
    # above, and under TP 2 (the down stack's one block per row cut in two:
    # f32 edges) and EP 2 as 1 rank.
    quant = kquant.find_quantize()
    if quant is None:
        print("note: llama-quantize not found (scripts/test.sh builds it); K-quant experts not "
              "checked here (tests/test_kquant.py fails without it)")
    else:
        KSHAPE = dict(layers=1, heads=4, kv_heads=2, experts=4)
        kflags = ["--dim", "256", "--layers", "1", "--ffn", "256", "--seed", "5"]
        k32, khf = os.path.join(tmp, "k_f32.gguf"), os.path.join(tmp, "k_hf")
        if synth(k32, *kflags, "--dtype", "f32") and synth(khf, *kflags, "--dtype", "f32",
                                                           "--format", "safetensors"):
            for mix, want in (("Q4_K_M", {QT.Q4_K, QT.Q6_K}), ("Q5_K_S", {QT.Q5_K})):
                kq = os.path.join(tmp, f"k_{mix}.gguf")
                ok, msg = kquant.quantize(quant, k32, kq, mix)
                if not ck.check(ok, f"llama-quantize {mix}: {msg}"):
                    continue
                types = {t.tensor_type for t in GGUFReader(kq).tensors if "_exps" in t.name}
                ck.check(types == want, f"{mix}: expert stacks of {sorted(t.name for t in types)}")
                got = generate(kq)
                if not got:
                    continue
                ref = hf_ref.Model(reference_dir(os.path.join(tmp, f"ref_{mix}"), kq, khf, **KSHAPE))
                worst, agree, problems = teacher_forced(ref, got, 1e-3)
                for p in problems[:5]:
                    print(f"  {mix}: {p}")
                ck.check(not problems and len(got) == STEPS, f"{mix} GGUF vs reference: {len(problems)} problems")
                print(f"ok   {mix} experts ({', '.join(sorted(t.name for t in types))}) vs float64 "
                      f"reference: max |dlogprob| {worst:.2e} (tol 1e-3), greedy id = argmax at "
                      f"{agree} of {len(got)} steps")
                if mix != "Q4_K_M" or not mpi_available():
                    continue
                for ranks, ep in ((2, False), (2, True)):
                    par = generate(kq, ranks, ep)
                    if not par:
                        continue
                    worst, n, tie, problems = compare_steps(got, par, atol=1e-3)
                    ck.check(not problems and n == STEPS,
                             f"{mix} {'EP' if ep else 'TP'} {ranks}: {problems[:3]}")
                    print(f"ok   {mix} {'EP' if ep else 'TP'} {ranks}: {n} greedy ids as 1 rank, "
                          f"max |dlogprob| {worst:.2e} (tol 1e-3)")

    # ---- 3. TP, EP, and the per-expert layout -----------------------------------------
    if ck.check(mpi_available(), "mpirun not found (scripts/setup.sh installs Open MPI)"):
        for dt in ("bf16", "q4_0"):
            if dt not in paths:
                continue
            base = generate(paths[dt])
            if not base:
                continue
            for ranks, ep in ((2, False), (3, False), (2, True)):
                if dt == "q4_0" and ranks == 3:
                    continue
                got = generate(paths[dt], ranks, ep)
                if not got:
                    continue
                worst, n, tie, problems = compare_steps(base, got, atol=1e-3)
                for p in problems[:5]:
                    print(f"  {dt} {'EP' if ep else 'TP'} {ranks}: {p}")
                ck.check(not problems and n == STEPS,
                         f"{dt} {'EP' if ep else 'TP'} {ranks}: {len(problems)} problems over {n} steps")
                print(f"ok   {dt} {'EP' if ep else 'TP'} {ranks}: {n} greedy ids as 1 rank, "
                      f"max |dlogprob| {worst:.2e} (tol 1e-3)")

    def split_experts(t):
        if "_exps." not in t.name:
            return [(t.name, t.data, t.tensor_type)]
        part = t.name.split(".")[2][len("ffn_"):-len("_exps")]
        blk = t.name.split(".")[1]
        return [(f"blk.{blk}.ffn_{part}.{e}.weight", t.data[e], t.tensor_type) for e in range(E)]

    if "q4_0" in paths:
        per = os.path.join(tmp, "per_expert.gguf")
        rewrite(paths["q4_0"], per, tensors=split_experts)
        names = {t.name for t in GGUFReader(per).tensors}
        ck.check("blk.1.ffn_down.3.weight" in names and "blk.1.ffn_down_exps.weight" not in names,
                 "per-expert file layout")
        a, b = generate(per), generate(paths["q4_0"])
        ck.check(a is not None and a == b, "per-expert q4_0 layout differs from the stacked file")
        if a == b:
            print("ok   q4_0 one matrix per expert = stacked experts, bit for bit")

    # ---- 4. info and bad files ----------------------------------------------------------
    if "bf16" in paths:
        rc, out, err = ck.run(args.bin, ["info", "--model", paths["bf16"]])
        ck.check(rc == 0 and b"experts:       4 of width 96, top 2 (renormalised; mixtral)" in out,
                 f"info: exit {rc}: {out[-600:]} {err[-300:]}")
        rc, out, err = ck.run(args.bin, ["info", "--json", "--model", paths["bf16"]])
        cfg = json.loads(out)["config"] if rc == 0 else {}
        ck.check(cfg.get("n_expert") == E and cfg.get("n_expert_used") == K
                 and cfg.get("expert_ffn_dim") == F and cfg.get("family") == "mixtral",
                 f"info --json config: {cfg}")

        src = paths["bf16"]

        def short_stack(t):
            if t.name == "blk.1.ffn_up_exps.weight":
                return [(t.name, t.data[:3], t.tensor_type)]
            return [(t.name, t.data, t.tensor_type)]

        def no_router(t):
            return [] if t.name == "blk.0.ffn_gate_inp.weight" else [(t.name, t.data, t.tensor_type)]

        cases = [
            ("used_gt_count", dict(kv={"llama.expert_used_count": 5}),
             ["llama.expert_used_count", "= 5", "[1, 4]"]),
            ("count_gt_1024", dict(kv={"llama.expert_count": 2000}), ["llama.expert_count", "2000"]),
            ("no_used", dict(drop_kv=("llama.expert_used_count",)), ["llama.expert_used_count"]),
            ("ne2", dict(tensors=short_stack), ["blk.1.ffn_up_exps.weight", "[64, 96, 3]",
                                                "[64, 96, 4]", "expert_count"]),
            ("no_router", dict(tensors=no_router), ["blk.0.ffn_gate_inp.weight"]),
        ]
        for name, kw, needles in cases:
            p = os.path.join(tmp, f"bad_{name}.gguf")
            rewrite(src, p, **kw)
            rc, out, err = ck.run(args.bin, ["generate", "--model", p, "--prompt-ids", "1", "-n", "1"])
            e = err
            ck.check(rc == 1 and all(x in e for x in needles),
                     f"bad file {name}: exit {rc}, expected {needles} in: {e.strip()[-400:]}")
        # The data cut short: the last tensor an expert stack, the file truncated in it.
        p = os.path.join(tmp, "bad_truncated.gguf")
        rewrite(src, p, last="blk.1.ffn_down_exps.weight")
        ck.check(GGUFReader(p).tensors[-1].name == "blk.1.ffn_down_exps.weight", "last tensor")
        os.truncate(p, os.path.getsize(p) - 1000)
        rc, out, err = ck.run(args.bin, ["generate", "--model", p, "--prompt-ids", "1", "-n", "1"])
        e = err
        ck.check(rc == 1 and "blk.1.ffn_down_exps.weight" in e,
                 f"truncated stack: exit {rc}: {e.strip()[-400:]}")
        print("ok   bad files refused naming the key or tensor")
finally:
    shutil.rmtree(tmp, ignore_errors=True)
ck.finish()
