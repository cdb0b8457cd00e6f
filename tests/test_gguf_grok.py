"""Grok-1 and Grok-2 as GGUF files of general.architecture grok, in the layout
llama.cpp's converter writes (its conversion/grok.py over gguf-py's
MODEL_ARCH.GROK tensor names): blk.N.attn_norm, attn_{q,k,v} in the
checkpoint's rotate-half row order (not permuted), attn_output,
attn_output_norm, ffn_norm, ffn_gate_inp, the stacked ffn_{gate,up,down}_exps
of ne [C, Fe, E] / [Fe, C, E], post_ffw_norm, Grok-2's dense ffn_{gate,up,down},
and the grok.* keys (attention.output_scale, embedding_scale, logit_scale,
attn/router/final_logit_softcapping, expert_feed_forward_length,
attention.temperature_length, the YaRN rope.scaling.* keys).

Tiny checkpoints from tests/reference/make_tiny_hf.py (Grok-1 with the
Mixtral-style names the converter maps, Grok-2 with YaRN and a temperature
length of 8 so the 6-token prompt plus 12 steps exercise both) are converted
here with the gguf package's GGUFWriter, the tokenizer copied from the test
vocabularies the folders' tokenizers were made from.  The Grok-1 config gets
router_logit_softcapping 30: the converter writes 30 when the key is absent
(llama.cpp's default; our config.json default for Grok-1 is none).

1. bf16 folder vs its bf16 GGUF (the same values, norms in f32 exactly): the
   greedy ids and top-10 log-probabilities of `generate` are bit-identical.
   Grok-1 also without any of the optional scale and soft-cap keys, so
   llama.cpp's defaults (Grok-1's constants, which the folder's config holds)
   apply; and with Q/K/V fused into one attn_qkv (bit-identical again, and
   at TP 2 bit-identical to the unfused file at TP 2).  `synth --arch
   grok-1` writes the same model as GGUF and as a folder (bit-identical).
2. The GGUF against the float64 reference (tests/reference/hf_ref.py) on the
   folder, within ATOL 1e-4 per log-probability (test_hf_models's bound),
   at 1 rank, TP 2 and EP 2.
3. A dim-256 Grok-2 quantized by llama.cpp's own llama-quantize (Q4_K_M)
   against the reference on the file's own weights dequantized by the gguf
   package, teacher-forced on our ids, ATOL 1e-3 (test_gguf_moe's bound for
   K-quants), and under TP 2.  Under the sanitizers (SS_SANITIZED=1) TP 2
   and EP 2 run on Grok-2 only and the K-quant file at 1 rank (every code
   path still runs).
4. `info` shows the family and the scales; bad files (attn_output_norm
   missing, an expert stack with 3 experts of 4, embedding_scale a string, a
   negative attention soft cap, a dense MLP in layer 1 only,
   rope.scaling.type linear) are refused with a message naming the tensor
   or key.
"""
import json
import os
import shutil
import struct
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
import make_tiny_hf  # noqa: E402
from st_io import read_safetensors, write_safetensors, f32_to_bf16_bits  # noqa: E402

import gguf  # noqa: E402
from gguf import GGUFReader, GGMLQuantizationType as QT  # noqa: E402

args = parse_args()
ck = Checker("gguf grok")
tmp = tempfile.mkdtemp(prefix="ss-gguf-grok-")
ENV = mpi_env()
ATOL, KATOL = 1e-4, 1e-3
PROMPT = [72, 101, 108, 108, 111, 32]
STEPS, TOP = 12, 10
VOCABS = {"grok-1": "llama-spm", "grok-2": "gpt-2"}
QUICK = os.environ.get("SS_SANITIZED") == "1"
if QUICK:
    print("sanitizer build (SS_SANITIZED=1): TP 2 / EP 2 on grok-2 only, Q4_K_M at 1 rank")
A = "grok"


def generate(model, ranks=1, ep=False):
    cmd = launch_cmd(args.bin, ranks, ["generate", "--model", model, "--prompt-ids",
                                       ",".join(map(str, PROMPT)), "-n", str(STEPS), "--temp", "0",
                                       "--kv-cache-dtype", "f32", "--ignore-eos", "--json",
                                       "--logprobs", str(TOP), "--threads", "1"]
                     + (["--ep", str(ranks)] if ep else []))
    return ck.generate_top(cmd, ENV)


def load_hf(d):
    """{name: (float64 array, safetensors dtype)} of the folder's one file."""
    vals = read_safetensors(os.path.join(d, "model.safetensors"))
    with open(os.path.join(d, "model.safetensors"), "rb") as fp:
        n = struct.unpack("<Q", fp.read(8))[0]
        hdr = json.loads(fp.read(n))
    return {k: (v, hdr[k]["dtype"]) for k, v in vals.items()}


def copy_tokenizer(w, family):
    r = GGUFReader(os.path.join(args.data, "tokenizer", f"ggml-vocab-{VOCABS[family]}.gguf"))
    n = 0
    for k, f in r.fields.items():
        if k.startswith("tokenizer."):
            w.add_key_value(k, f.contents(), f.types[0],
                            sub_type=f.types[-1] if len(f.types) > 1 else None)
            if k == "tokenizer.ggml.tokens":
                n = len(f.contents())
    return n


def convert(hf, out, keys=True, fuse_qkv=False, drop=(), kv=None, tensor_fn=None):
    """The folder as conversion/grok.py writes it: every tensor in its stored
    dtype (bf16 bits as BF16, f32 as F32; norms F32), names from gguf-py's
    TensorNameMap for MODEL_ARCH.GROK, each layer's experts stacked along a
    new first axis as ffn_{gate,up,down}_exps.  keys=False: without the
    optional scale and soft-cap keys.  Returns {gguf name: [(hf name, expert
    index or None)]}."""
    cfg = json.load(open(os.path.join(hf, "config.json")))
    T = load_hf(hf)
    L, E = cfg["num_hidden_layers"], cfg.get("num_local_experts", cfg.get("num_experts"))
    tmap = gguf.get_tensor_name_map(gguf.MODEL_ARCH.GROK, L)
    w = gguf.GGUFWriter(out, A)
    vocab = copy_tokenizer(w, "grok-2" if cfg.get("residual_moe") else "grok-1")
    ck.check(vocab == cfg["vocab_size"], f"tokenizer {vocab} tokens, config {cfg['vocab_size']}")
    w.add_block_count(L)
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_head_count_kv(cfg["num_key_value_heads"])
    w.add_rope_freq_base(cfg["rope_theta"])
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_expert_count(E)
    w.add_expert_used_count(cfg["num_experts_per_tok"])
    w.add_key_length(cfg["head_dim"])
    w.add_value_length(cfg["head_dim"])
    if keys:
        w.add_attn_logit_softcapping(cfg.get("attn_logit_softcapping", 30.0))
        w.add_router_logit_softcapping(cfg.get("router_logit_softcapping", 30.0))
        if cfg.get("final_logit_softcapping"):
            w.add_final_logit_softcapping(cfg["final_logit_softcapping"])
        w.add_attn_output_scale(cfg.get("attn_output_multiplier", cfg["head_dim"] ** -0.5))
        w.add_embedding_scale(cfg["embedding_multiplier_scale"])
        w.add_logit_scale(cfg["output_multiplier_scale"])
    if "moe_intermediate_size" in cfg:
        w.add_expert_feed_forward_length(cfg["moe_intermediate_size"])
    if cfg.get("rope_type") in ("yarn", "original"):
        w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        w.add_rope_scaling_factor(cfg["scaling_factor"])
        w.add_rope_scaling_orig_ctx_len(cfg["original_max_position_embeddings"])
        w.add_rope_scaling_yarn_ext_factor(cfg["extrapolation_factor"])
        w.add_rope_scaling_yarn_attn_factor(cfg["attn_factor"])
        w.add_rope_scaling_yarn_beta_fast(cfg["beta_fast"])
        w.add_rope_scaling_yarn_beta_slow(cfg["beta_slow"])
    if cfg.get("attn_temperature_len"):
        w.add_attn_temperature_length(cfg["attn_temperature_len"])
    for k, v in (kv or {}).items():
        w.add_key_value(k, v[0], v[1])

    def enc(a, dt):
        return f32_to_bf16_bits(a.astype(np.float32)) if dt == "BF16" else a.astype(np.float32)

    out_t, origin = [], {}
    for name in sorted(T):
        a, dt = T[name]
        if ".block_sparse_moe.experts." in name:
            continue
        g = tmap.get_name(name[:-len(".weight")])
        assert g, name
        g += ".weight"
        if a.ndim == 1:
            dt = "F32"
        out_t.append((g, enc(a, dt), QT.BF16 if dt == "BF16" else QT.F32))
        origin[g] = [(name, None)]
    for l in range(L):
        for wid, hfw in (("linear", "w1"), ("linear_1", "w2"), ("linear_v", "w3")):
            g = tmap.get_name(f"transformer.decoder_layer.{l}.moe.{wid}") + ".weight"
            names = [f"model.layers.{l}.block_sparse_moe.experts.{e}.{hfw}.weight" for e in range(E)]
            dt = T[names[0]][1]
            out_t.append((g, enc(np.stack([T[n][0] for n in names]), dt),
                          QT.BF16 if dt == "BF16" else QT.F32))
            origin[g] = [(n, e) for e, n in enumerate(names)]
    if fuse_qkv:
        fused = []
        for l in range(L):
            parts = {t[0]: t for t in out_t if t[0] in (f"blk.{l}.attn_{x}.weight" for x in "qkv")}
            q, k, v = (parts[f"blk.{l}.attn_{x}.weight"] for x in "qkv")
            fused.append((f"blk.{l}.attn_qkv.weight", np.concatenate([q[1], k[1], v[1]]), q[2]))
        out_t = [t for t in out_t if ".attn_q." not in t[0] and ".attn_k." not in t[0]
                 and ".attn_v." not in t[0]] + fused
    for name, data, qt in out_t:
        if name in drop:
            continue
        if tensor_fn:
            name, data = tensor_fn(name, data)
        w.add_tensor(name, np.ascontiguousarray(data), raw_dtype=qt)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return origin


def reference_dir(d, gguf_path, hf, origin):
    """An HF folder holding the GGUF's weights as the gguf package dequantizes
    them (f32), under the folder's names, with its config.json."""
    os.makedirs(d)
    shutil.copy(os.path.join(hf, "config.json"), d)
    W = {}
    for t in GGUFReader(gguf_path).tensors:
        shape = [int(x) for x in reversed(t.shape)]
        a = gguf.quants.dequantize(t.data, t.tensor_type).reshape(shape).astype(np.float32)
        for name, e in origin[t.name]:
            W[name] = ("F32", np.ascontiguousarray(a if e is None else a[e]))
    write_safetensors(os.path.join(d, "model.safetensors"), W)
    return d


def teacher_forced(ref_model, got, atol):
    ids = list(PROMPT)
    worst, problems = 0.0, []
    for i, (tok, top) in enumerate(got):
        z = ref_model.logits(ids)
        lp = z - (z.max() + np.log(np.exp(z - z.max()).sum()))
        for tid, v in top.items():
            worst = max(worst, abs(v - lp[tid]))
            if abs(v - lp[tid]) > atol:
                problems.append(f"step {i}: id {tid}: logprob {v:.6f} vs reference {lp[tid]:.6f}")
        best = int(np.argmax(lp))
        if tok != best and lp[best] - lp[tok] > atol:
            problems.append(f"step {i}: greedy id {tok}, reference argmax {best}")
        ids.append(tok)
    return worst, problems


def tiny(family, d, **kw):
    make_tiny_hf.make(family, d, names="mixtral", **kw)
    if family == "grok-1":
        p = os.path.join(d, "config.json")
        cfg = json.load(open(p))
        cfg["router_logit_softcapping"] = 30.0  # llama.cpp's default, which the converter writes
        json.dump(cfg, open(p, "w"), indent=1)
    return d


def bad(name, path, needles):
    rc, out, err = ck.run(args.bin, ["generate", "--model", path, "--prompt-ids", "1", "-n", "1"])
    ck.check(rc == 1 and all(x in err for x in needles),
             f"bad file {name}: exit {rc}, expected {needles} in: {err.strip()[-400:]}")


try:
    # ---- 1 + 2. bf16 folders and their GGUFs ------------------------------------------
    files = {}
    for i, family in enumerate(("grok-1", "grok-2")):
        hf = tiny(family, os.path.join(tmp, family), dtype="bf16", seed=30 + i, layers=2)
        g = os.path.join(tmp, f"{family}.gguf")
        origin = convert(hf, g)
        files[family] = (hf, g, origin)
        base = generate(hf)
        got = generate(g)
        if not (base and got):
            continue
        ck.check(got == base, f"{family}: GGUF differs from the bf16 folder: {got[:2]} vs {base[:2]}")
        if got == base:
            print(f"ok   {family} bf16 GGUF = folder: {STEPS} greedy ids and top-{TOP} logprobs "
                  "bit-identical")
        variants = []
        if family == "grok-1":
            variants = [("without the optional keys", dict(keys=False)),
                        ("attn_qkv fused", dict(fuse_qkv=True))]
        for what, kw in variants:
            p = os.path.join(tmp, f"{family}-{len(what)}.gguf")
            convert(hf, p, **kw)
            if what.startswith("without"):
                r = GGUFReader(p)
                left = [k for k in r.fields if k.endswith(("scale", "softcapping"))]
                ck.check(not left, f"keys left in the bare file: {left}")
            v = generate(p)
            ck.check(v == base, f"{family} {what}: differs from the folder")
            if v == base:
                print(f"ok   {family} GGUF {what} = folder, bit-identical")
            if kw.get("fuse_qkv") and mpi_available():
                fused_tp = generate(p, 2)  # the three views cut per rank like separate tensors
                same = fused_tp is not None and fused_tp == generate(g, 2)
                ck.check(same, f"{family} {what} at TP 2 differs from the unfused file at TP 2")
                if same:
                    print(f"ok   {family} GGUF {what} at TP 2 = unfused at TP 2, bit-identical")

        ref = hf_ref.greedy(hf_ref.Model(hf), PROMPT, STEPS, TOP)
        runs = [("1 rank", got)]
        if (not QUICK or family == "grok-2") and \
                ck.check(mpi_available(), "mpirun not found (scripts/setup.sh installs Open MPI)"):
            runs += [("TP 2", generate(g, 2)), ("EP 2", generate(g, 2, ep=True))]
        for what, run in runs:
            if not run:
                continue
            worst, n, tie, problems = compare_steps(ref, run, atol=ATOL)
            for p in problems[:5]:
                print(f"  {family} {what}: {p}")
            ck.check(not problems and n == STEPS, f"{family} GGUF {what} vs reference: "
                     f"{len(problems)} problems over {n} steps")
            print(f"ok   {family} GGUF {what} vs float64 reference: {n} greedy ids, max |dlogprob| "
                  f"{worst:.2e} (tol {ATOL:g})")

    # `synth --arch grok-1` of one seed as GGUF and as a folder: the same model
    # (Q/K not permuted, the grok.* keys the folder's config.json values).
    sg, sd = os.path.join(tmp, "synth.gguf"), os.path.join(tmp, "synth_hf")
    SYN = ["synth", "--arch", "grok-1", "--dim", "64", "--layers", "2", "--heads", "4",
           "--kv-heads", "2", "--ffn", "96", "--vocab", "300", "--experts", "4",
           "--experts-used", "2", "--seed", "3", "--dtype", "f32"]
    r1 = ck.run(args.bin, SYN + ["-o", sg])
    r2 = ck.run(args.bin, SYN + ["--format", "safetensors", "-o", sd])
    if ck.check(r1[0] == 0 and r2[0] == 0, f"synth grok-1: {r1[2][-300:]} {r2[2][-300:]}"):
        a, b = generate(sg), generate(sd)
        ck.check(a is not None and a == b, "synth grok-1: the GGUF and the folder differ")
        if a is not None and a == b:
            print("ok   synth --arch grok-1: GGUF = safetensors of the same seed, bit-identical")

    # ---- 3. K-quants by llama.cpp's llama-quantize -------------------------------------
    quant = kquant.find_quantize()
    if quant is None:
        print("note: llama-quantize not found (scripts/test.sh builds it); K-quant grok not "
              "checked here (tests/test_kquant.py fails without it)")
    else:
        khf = tiny("grok-2", os.path.join(tmp, "k_hf"), dtype="f32", seed=7, layers=1, hidden=256,
                   heads=4, kv_heads=2, head_dim=64, experts=4, expert_ffn=256, ffn=256)
        k32, kq = os.path.join(tmp, "k_f32.gguf"), os.path.join(tmp, "k_q4km.gguf")
        korigin = convert(khf, k32)
        ok, msg = kquant.quantize(quant, k32, kq, "Q4_K_M")
        if ck.check(ok, f"llama-quantize Q4_K_M: {msg}"):
            types = sorted({t.tensor_type.name for t in GGUFReader(kq).tensors if t.data.ndim > 1
                            and "norm" not in t.name})
            ck.check("Q4_K" in types, f"Q4_K_M file's types: {types}")
            ref = hf_ref.Model(reference_dir(os.path.join(tmp, "k_ref"), kq, khf, korigin))
            for what, run in (("1 rank", generate(kq)),
                              ("TP 2", generate(kq, 2) if mpi_available() and not QUICK else None)):
                if not run:
                    continue
                worst, problems = teacher_forced(ref, run, KATOL)
                for p in problems[:5]:
                    print(f"  Q4_K_M {what}: {p}")
                ck.check(not problems and len(run) == STEPS,
                         f"Q4_K_M grok-2 {what} vs reference: {len(problems)} problems")
                print(f"ok   Q4_K_M grok-2 ({', '.join(types)}) {what} vs float64 reference on "
                      f"its dequantized weights: max |dlogprob| {worst:.2e} (tol {KATOL:g})")

    # ---- 4. info and bad files ----------------------------------------------------------
    if "grok-2" in files:
        hf, g, _ = files["grok-2"]
        rc, out, err = ck.run(args.bin, ["info", "--model", g])
        o = out.decode()
        ck.check(rc == 0 and "grok:          grok-2 (dense MLP beside the experts); embedding "
                 "x90.5097, logits x0.5, attention scale 0.25 cap 30, router cap 30, final cap 50, "
                 "temperature length 8" in o and "experts:       8 of width 96, top 2 (not "
                 "renormalised; grok-2)" in o and "half-rotated pairs, yarn" in o,
                 f"info grok-2: exit {rc}: {o[:1500]} {err[-300:]}")
        rc, out, err = ck.run(args.bin, ["info", "--json", "--model", files["grok-1"][1]])
        cfg = json.loads(out)["config"] if rc == 0 else {}
        gk = cfg.get("grok", {})
        ck.check(cfg.get("family") == "grok-1" and abs(gk.get("embedding_scale", 0) - 78.38367) < 1e-4
                 and abs(gk.get("attn_scale", 0) - 0.0883883) < 1e-6 and gk.get("router_softcap") == 30
                 and gk.get("residual_moe") is False, f"info --json grok-1: {cfg}")

        def short_stack(name, data):
            return (name, data[:3]) if name == "blk.1.ffn_up_exps.weight" else (name, data)

        hf1 = files["grok-1"][0]
        p = os.path.join(tmp, "bad_no_post_attn.gguf")
        convert(hf1, p, drop=("blk.1.attn_output_norm.weight",))
        bad("no attn_output_norm", p, ["missing tensor 'blk.1.attn_output_norm.weight'"])
        p = os.path.join(tmp, "bad_ne2.gguf")
        convert(hf1, p, tensor_fn=short_stack)
        bad("3 experts of 4", p, ["blk.1.ffn_up_exps.weight", "[64, 96, 3]", "[64, 96, 8]",
                                  "expert_count"])
        p = os.path.join(tmp, "bad_scale_type.gguf")
        convert(hf1, p, keys=False, kv={"grok.embedding_scale": ("78.4", gguf.GGUFValueType.STRING)})
        bad("embedding_scale a string", p, ["grok.embedding_scale", "string", "float32"])
        p = os.path.join(tmp, "bad_scale_range.gguf")
        convert(hf1, p, keys=False, kv={"grok.attn_logit_softcapping": (-1.0, gguf.GGUFValueType.FLOAT32)})
        bad("negative soft cap", p, ["grok.attn_logit_softcapping", "-1", "outside"])
        p = os.path.join(tmp, "bad_dense_l1.gguf")
        h2 = files["grok-2"][0]
        convert(h2, p, drop=("blk.0.ffn_gate.weight", "blk.0.ffn_up.weight", "blk.0.ffn_down.weight"))
        bad("dense MLP in layer 1 only", p, ["blk.1.ffn_up.weight", "layer 0"])
        p = os.path.join(tmp, "bad_rope.gguf")
        convert(hf1, p, kv={"grok.rope.scaling.type": ("linear", gguf.GGUFValueType.STRING)})
        bad("linear rope scaling", p, ["grok.rope.scaling.type", "linear"])
        print("ok   info shows the grok scales; bad files refused naming the key or tensor")
finally:
    shutil.rmtree(tmp, ignore_errors=True)
ck.finish()
