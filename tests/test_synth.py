"""shardserve synth: random-weight models read back independently.

- GGUF in every dtype (f32, f16, bf16, q8_0, q4_0, q4_1), read by the `gguf`
  package: right tensor names, shapes, types and metadata; the values are
  regenerated here from the documented generator (splitmix64 per row, seeded by
  seed, tensor and row) and compared: f32 exactly, f16/bf16 within half an ulp,
  quantized types within each format's rounding error (half a step, plus the
  f16 rounding of the scales).
- The same seed as safetensors: header parsed with json/numpy, shapes match
  config.json, values equal the GGUF's (llama.cpp's Q/K row permutation).
- Mixtral and Grok-1 layouts, a copied tokenizer, `info`, `generate` (each
  dtype produces tokens), and bad flags (exit 2).
CPU only: runs everywhere.
"""
import json
import os
import struct
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "lib"))
from harness import Checker, parse_args  # noqa: E402

import gguf  # noqa: E402
from gguf import GGUFReader, GGMLQuantizationType as QT  # noqa: E402

args = parse_args()
ck = Checker("synth")
tmp = tempfile.mkdtemp(prefix="ss-synth-")
M64 = (1 << 64) - 1

# ---- the generator, as launcher/cmd_synth.c documents it ---------------------


def fnv1a(s):
    h = 0xcbf29ce484222325
    for ch in s.encode():
        h = ((h ^ ch) * 0x100000001b3) & M64
    return h


def draw_row(seed, canon, row, std, cols):
    if std == 0.0:
        return np.ones(cols, np.float32)
    s = (seed ^ fnv1a(canon) ^ ((row * 0xd1b54a32d192ed03) & M64)) & M64
    gamma = 0x9e3779b97f4a7c15
    s = (s + gamma) & M64  # the discarded first draw advances the state
    with np.errstate(over="ignore"):
        z = np.uint64(s) + np.arange(1, cols + 1, dtype=np.uint64) * np.uint64(gamma)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xbf58476d1ce4e5b9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94d049bb133111eb)
        z = z ^ (z >> np.uint64(31))
    u = (z >> np.uint64(40)).astype(np.float32) * np.float32(1.0 / 16777216.0)
    a = np.float32(std * np.sqrt(3.0))
    return (np.float32(2.0) * u - np.float32(1.0)) * a


def tensor_rows(seed, canon, rows, cols, std, perm_heads=0):
    out = np.empty((rows, cols), np.float32)
    hd = rows // perm_heads if perm_heads else 0
    for r in range(rows):
        cr = r
        if perm_heads:
            h, k = divmod(r, hd)
            cr = h * hd + (k % 2) * (hd // 2) + k // 2
        out[r] = draw_row(seed, canon, cr, std, cols)
    return out


def run(argv, timeout=300):
    return ck.run(args.bin, argv, timeout=timeout)


def synth(out, *flags):
    rc, _, err = run(["synth", *flags, "-o", out])
    ck.check(rc == 0, f"synth {' '.join(flags)} -o {out}: exit {rc}: {err.strip()[-400:]}")
    return rc == 0


# ---- GGUF, every dtype ----------------------------------------------------------

SHAPE = ["--arch", "llama", "--dim", "64", "--layers", "2", "--heads", "4", "--kv-heads", "2",
         "--ffn", "96", "--vocab", "300", "--ctx", "256", "--seed", "7"]
C, L, H, KV, D, F, V = 64, 2, 4, 2, 16, 96, 300
TYPES = {"f32": QT.F32, "f16": QT.F16, "bf16": QT.BF16, "q8_0": QT.Q8_0, "q4_0": QT.Q4_0,
         "q4_1": QT.Q4_1}
paths = {}
for name, qt in TYPES.items():
    path = os.path.join(tmp, f"m_{name}.gguf")
    if not synth(path, *SHAPE, "--dtype", name):
        continue
    paths[name] = path
    r = GGUFReader(path)
    f = r.fields
    val = lambda k: f[k].parts[f[k].data[0]].tolist()[0] if k in f else None  # noqa: E731
    sval = lambda k: bytes(f[k].parts[f[k].data[0]]).decode() if k in f else None  # noqa: E731
    ck.check(sval("general.architecture") == "llama", f"{name}: architecture")
    for key, want in [("llama.embedding_length", C), ("llama.block_count", L),
                      ("llama.attention.head_count", H), ("llama.attention.head_count_kv", KV),
                      ("llama.feed_forward_length", F), ("llama.context_length", 256),
                      ("llama.vocab_size", V), ("llama.rope.dimension_count", D)]:
        ck.check(val(key) == want, f"{name}: {key} = {val(key)}, expected {want}")
    ck.check(len(f["tokenizer.ggml.tokens"].data) == V, f"{name}: {V} tokens")
    tensors = {t.name: t for t in r.tensors}
    expect = {"token_embd.weight": (V, C, 1.0, "embed", 0), "output.weight": (V, C, C ** -0.5, "head", 0),
              "output_norm.weight": (1, C, 0.0, "norm", 0)}
    for l in range(L):
        expect.update({
            f"blk.{l}.attn_norm.weight": (1, C, 0.0, f"L{l}.attn_norm", 0),
            f"blk.{l}.attn_q.weight": (H * D, C, C ** -0.5, f"L{l}.wq", H),
            f"blk.{l}.attn_k.weight": (KV * D, C, C ** -0.5, f"L{l}.wk", KV),
            f"blk.{l}.attn_v.weight": (KV * D, C, C ** -0.5, f"L{l}.wv", 0),
            f"blk.{l}.attn_output.weight": (C, H * D, (H * D) ** -0.5, f"L{l}.wo", 0),
            f"blk.{l}.ffn_norm.weight": (1, C, 0.0, f"L{l}.ffn_norm", 0),
            f"blk.{l}.ffn_gate.weight": (F, C, C ** -0.5, f"L{l}.w_gate", 0),
            f"blk.{l}.ffn_up.weight": (F, C, C ** -0.5, f"L{l}.w_up", 0),
            f"blk.{l}.ffn_down.weight": (C, F, F ** -0.5, f"L{l}.w_down", 0),
        })
    ck.check(set(tensors) == set(expect), f"{name}: tensor names {sorted(set(tensors) ^ set(expect))}")
    worst = 0.0
    for tn, (rows, cols, std, canon, ph) in expect.items():
        t = tensors.get(tn)
        if t is None:
            continue
        norm = std == 0.0
        want_type = QT.F32 if norm else qt
        ck.check(t.tensor_type == want_type, f"{name}: {tn} type {t.tensor_type.name}, expected {want_type.name}")
        shape = [int(x) for x in t.shape]
        ck.check(shape == ([cols] if norm else [cols, rows]), f"{name}: {tn} shape {shape}")
        got = gguf.quants.dequantize(t.data, t.tensor_type).reshape(rows, cols).astype(np.float32)
        ref = tensor_rows(7, canon, rows, cols, std, ph)
        if want_type == QT.F32:
            bound = np.zeros_like(ref)
        elif want_type in (QT.F16, QT.BF16):
            ulp = 2.0 ** -11 if want_type == QT.F16 else 2.0 ** -8
            bound = np.abs(ref) * ulp + 1e-7
        else:
            blocks = ref.reshape(rows, cols // 32, 32)
            amax = np.abs(blocks).max(axis=2, keepdims=True)
            span = blocks.max(axis=2, keepdims=True) - blocks.min(axis=2, keepdims=True)
            step = {QT.Q8_0: amax / 127, QT.Q4_0: amax / 8, QT.Q4_1: span / 15}[want_type]
            # half a step of rounding, plus the scale's f16 rounding times |q|
            # (at most 127, 8 or 15 steps) and the min's for Q4_1
            qmax = {QT.Q8_0: 127, QT.Q4_0: 8, QT.Q4_1: 15}[want_type]
            bound = np.broadcast_to(step * (0.5 + qmax * 2.0 ** -10) + 1e-6 +
                                    (np.abs(blocks).max(axis=2, keepdims=True) * 2.0 ** -10
                                     if want_type == QT.Q4_1 else 0), blocks.shape).reshape(rows, cols)
            if want_type == QT.Q4_0:
                bound = bound * 2  # the element of largest magnitude sits at the clamped end
        err = np.abs(got - ref)
        worst = max(worst, float((err / np.maximum(bound, 1e-30)).max()) if bound.any() else float(err.max()))
        ck.check(bool((err <= bound).all()) if bound.any() else bool((err == 0).all()),
                 f"{name}: {tn}: max error {err.max():.3g} beyond the format's bound")
    print(f"ok   gguf {name}: {len(tensors)} tensors, worst error/bound {worst:.3f}")

    rc, out, err = run(["info", "--model", path])
    ck.check(rc == 0 and b"llama" in out and b"layers" in out, f"{name}: info: exit {rc} {err[-300:]}")
    rc, out, err = run(["generate", "--model", path, "--device", "cpu", "--prompt", "Hello world",
                        "-n", "6", "--temp", "0", "--json", "--ignore-eos", "--threads", "2"])
    ok = rc == 0
    if ok:
        res = json.loads(out)
        ok = len(res["tokens"]) == 6
    ck.check(ok, f"{name}: generate: exit {rc}: {err.strip()[-300:]}")

# The same file whatever the thread count; a different seed differs.
if "q4_1" in paths:
    p1 = os.path.join(tmp, "t1.gguf")
    p2 = os.path.join(tmp, "s8.gguf")
    if synth(p1, *SHAPE, "--dtype", "q4_1", "--threads", "1") and synth(p2, *SHAPE[:-2], "--seed", "8", "--dtype", "q4_1"):
        same = open(p1, "rb").read() == open(paths["q4_1"], "rb").read()
        diff = open(p2, "rb").read() != open(paths["q4_1"], "rb").read()
        ck.check(same, "q4_1: 1 thread and many threads wrote different files")
        ck.check(diff, "q4_1: seeds 7 and 8 wrote the same file")

# ---- safetensors ------------------------------------------------------------------


def read_safetensors(path):
    with open(path, "rb") as fh:
        n = struct.unpack("<Q", fh.read(8))[0]
        header = json.loads(fh.read(n))
        base = 8 + n
        data = fh.read()
    out = {}
    for k, v in header.items():
        if k == "__metadata__":
            continue
        b0, b1 = v["data_offsets"]
        raw = np.frombuffer(data[b0:b1], dtype=np.uint16 if v["dtype"] in ("BF16", "F16") else np.float32)
        if v["dtype"] == "BF16":
            arr = (raw.astype(np.uint32) << 16).view(np.float32)
        elif v["dtype"] == "F16":
            arr = raw.view(np.float16).astype(np.float32)
        else:
            arr = raw
        out[k] = (v["dtype"], v["shape"], arr.reshape(v["shape"]))
    return header, out, base


hf = os.path.join(tmp, "hf_f32")
if synth(hf, *SHAPE, "--dtype", "f32", "--format", "safetensors"):
    cfg = json.load(open(os.path.join(hf, "config.json")))
    ck.check(cfg["model_type"] == "llama" and cfg["hidden_size"] == C and cfg["num_hidden_layers"] == L
             and cfg["num_attention_heads"] == H and cfg["num_key_value_heads"] == KV
             and cfg["intermediate_size"] == F and cfg["vocab_size"] == V, f"config.json: {cfg}")
    _, st, base = read_safetensors(os.path.join(hf, "model.safetensors"))
    ck.check(base % 8 == 0, "safetensors: data not 8-byte aligned")
    want = {"model.embed_tokens.weight": [V, C], "lm_head.weight": [V, C], "model.norm.weight": [C]}
    for l in range(L):
        p = f"model.layers.{l}."
        want.update({p + "input_layernorm.weight": [C], p + "post_attention_layernorm.weight": [C],
                     p + "self_attn.q_proj.weight": [H * D, C], p + "self_attn.k_proj.weight": [KV * D, C],
                     p + "self_attn.v_proj.weight": [KV * D, C], p + "self_attn.o_proj.weight": [C, H * D],
                     p + "mlp.gate_proj.weight": [F, C], p + "mlp.up_proj.weight": [F, C],
                     p + "mlp.down_proj.weight": [C, F]})
    ck.check({k: v[1] for k, v in st.items()} == want, "safetensors: names/shapes differ from HF llama")
    if "f32" in paths:
        r = {t.name: t for t in GGUFReader(paths["f32"]).tensors}
        q_g = np.asarray(r["blk.1.attn_q.weight"].data).reshape(H * D, C)
        q_h = st["model.layers.1.self_attn.q_proj.weight"][2]
        # llama.cpp's permute: GGUF row h*D + 2i + j holds HF row h*D + j*D/2 + i.
        perm = q_h.reshape(H, 2, D // 2, C).swapaxes(1, 2).reshape(H * D, C)
        ck.check(np.array_equal(q_g, perm), "GGUF attn_q is not HF q_proj permuted for rotary pairs")
        d_g = np.asarray(r["blk.0.ffn_down.weight"].data).reshape(C, F)
        ck.check(np.array_equal(d_g, st["model.layers.0.mlp.down_proj.weight"][2]),
                 "GGUF ffn_down differs from HF down_proj")
    tj = json.load(open(os.path.join(hf, "tokenizer.json")))
    ck.check(len(tj["model"]["vocab"]) == V and tj["model"]["type"] == "BPE", "tokenizer.json vocab")
    print("ok   safetensors llama")

# bf16 safetensors holds the bf16 rounding of the same values
hfb = os.path.join(tmp, "hf_bf16")
if synth(hfb, *SHAPE, "--dtype", "bf16", "--format", "safetensors"):
    _, st, _ = read_safetensors(os.path.join(hfb, "model.safetensors"))
    dt, shape, w = st["model.layers.0.mlp.up_proj.weight"]
    ref = tensor_rows(7, "L0.w_up", F, C, C ** -0.5)
    ck.check(dt == "BF16" and bool((np.abs(w - ref) <= np.abs(ref) * 2.0 ** -8 + 1e-9).all()),
             "bf16 safetensors values")

# ---- MoE layouts ------------------------------------------------------------------
MOE = ["--dim", "64", "--layers", "1", "--heads", "4", "--kv-heads", "2", "--ffn", "64",
       "--vocab", "300", "--experts", "4", "--experts-used", "2"]
mx = os.path.join(tmp, "mixtral")
if synth(mx, "--arch", "mixtral", *MOE, "--format", "safetensors"):
    cfg = json.load(open(os.path.join(mx, "config.json")))
    _, st, _ = read_safetensors(os.path.join(mx, "model.safetensors"))
    ck.check(cfg["model_type"] == "mixtral" and cfg["num_local_experts"] == 4
             and cfg["num_experts_per_tok"] == 2, "mixtral config.json")
    p = "model.layers.0.block_sparse_moe."
    ok = st[p + "gate.weight"][1] == [4, 64]
    for e in range(4):
        ok &= st[p + f"experts.{e}.w1.weight"][1] == [64, 64] and st[p + f"experts.{e}.w3.weight"][1] == [64, 64]
        ok &= st[p + f"experts.{e}.w2.weight"][1] == [64, 64]
    ck.check(ok and "lm_head.weight" in st, "mixtral safetensors names/shapes")
mxg = os.path.join(tmp, "mixtral.gguf")
if synth(mxg, "--arch", "mixtral", *MOE, "--dtype", "f32"):
    r = GGUFReader(mxg)
    t = {x.name: x for x in r.tensors}
    ck.check([int(s) for s in t["blk.0.ffn_gate_exps.weight"].shape] == [64, 64, 4]
             and int(r.fields["llama.expert_count"].parts[-1][0]) == 4, "mixtral GGUF experts")
    # expert 2's w2 in the stack equals the generator's rows for that expert
    w2 = np.asarray(t["blk.0.ffn_down_exps.weight"].data).reshape(4, 64, 64)[2]
    ck.check(np.array_equal(w2, tensor_rows(0, "L0.e2.w2", 64, 64, 64 ** -0.5)), "mixtral GGUF expert rows")
gk = os.path.join(tmp, "grok")
if synth(gk, "--arch", "grok-1", *MOE, "--format", "safetensors"):
    cfg = json.load(open(os.path.join(gk, "config.json")))
    _, st, _ = read_safetensors(os.path.join(gk, "model.safetensors"))
    p = "model.layers.0."
    ck.check(cfg["model_type"] == "grok-1" and cfg["tie_word_embeddings"] is True
             and "lm_head.weight" not in st
             and all(p + n + ".weight" in st for n in ("pre_attn_norm", "post_attn_norm", "pre_moe_norm", "post_moe_norm"))
             and p + "block_sparse_moe.experts.3.w2.weight" in st, "grok-1 safetensors layout")
gkg = os.path.join(tmp, "grok.gguf")
if synth(gkg, "--arch", "grok-1", *MOE, "--dtype", "q8_0"):
    r = GGUFReader(gkg)
    names = {x.name for x in r.tensors}
    ck.check(bytes(r.fields["general.architecture"].parts[-1]).decode() == "grok"
             and "blk.0.layer_output_norm.weight" in names and "output.weight" not in names,
             "grok GGUF layout")

# ---- a copied tokenizer -----------------------------------------------------------
vocab_file = os.path.join(args.data, "tokenizer", "ggml-vocab-gpt-2.gguf")
tk = os.path.join(tmp, "gpt2tok.gguf")
if synth(tk, "--dim", "64", "--layers", "1", "--heads", "2", "--ffn", "64", "--dtype", "q8_0",
         "--tokenizer", vocab_file):
    rc1, o1, _ = ck.run(args.bin, ["tokenize", "--model", tk], stdin=b"Hello world, synthetic!")
    rc2, o2, _ = ck.run(args.bin, ["tokenize", "--model", vocab_file], stdin=b"Hello world, synthetic!")
    ck.check(rc1 == 0 and o1 == o2 and o1.strip(), f"copied tokenizer encodes differently: {o1} vs {o2}")

# ---- bad flags --------------------------------------------------------------------
bad = [
    (["synth", "--dim", "64", "--layers", "1", "--heads", "4", "--ffn", "64", "--vocab", "300"], "-o"),
    (["synth", "--layers", "1", "--heads", "4", "--ffn", "64", "--vocab", "300", "-o", "x.gguf"], "--dim"),
    (["synth", *SHAPE, "--dtype", "q5_k", "-o", "x.gguf"], "--dtype"),
    (["synth", *SHAPE, "--arch", "gpt5", "-o", "x.gguf"], "--arch"),
    (["synth", *SHAPE, "--heads", "3", "-o", "x.gguf"], "--kv-heads"),
    (["synth", *SHAPE, "--dim", "48", "--dtype", "q8_0", "-o", "x.gguf"], "32"),
    (["synth", *SHAPE, "--dtype", "q8_0", "--format", "safetensors", "-o", "xdir"], "safetensors"),
    (["synth", *SHAPE, "--vocab", "100", "-o", "x.gguf"], "--vocab"),
    (["synth", *SHAPE, "--preset", "nope", "-o", "x.gguf"], "--preset"),
    (["synth", *SHAPE, "--dim", "abc", "-o", "x.gguf"], "--dim"),
]
for argv, needle in bad:
    rc, _, err = ck.run(args.bin, argv, timeout=60)
    ck.check(rc == 2 and needle in err, f"{argv[1:]}: exit {rc}, stderr {err.strip()[:200]!r}")

# --device cuda where no GPU is usable: a clear error, exit 1.
if not os.path.exists("/dev/nvidiactl") and "f32" in paths:
    rc, _, err = run(["generate", "--model", paths["f32"], "--device", "cuda", "-p", "hi", "-n", "1"])
    ck.check(rc == 1 and "--device cuda" in err, f"--device cuda without a GPU: exit {rc}: {err.strip()[:200]}")

ck.finish()
