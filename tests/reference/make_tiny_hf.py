#!/usr/bin/env python3
"""Write small random Hugging Face checkpoints (config.json, safetensors,
tokenizer) for the llama, mixtral, grok-1 and grok-2 families, in the exact
tensor names and layouts of the published checkpoints.

    python tests/reference/make_tiny_hf.py --family grok-1 --dtype bf16 --out /tmp/g1

Shapes (defaults): hidden 64, 4 layers, 4 query heads of 16, 2 KV heads,
8 experts top-2 of width 96, dense MLP width 128 (llama, grok-2).  The
vocabulary comes from a test tokenizer in tests/data/tokenizer: the GPT-2
vocabulary as a tokenizer.json (llama, grok-2) or the llama SentencePiece
vocabulary as a tokenizer.model protobuf (mixtral, grok-1, which use
SentencePiece).

Dtypes: f32, bf16 (rounded to nearest even), fp8 (e4m3 matrices with per-row
weight_scale tensors; the embedding, norms and router stay bf16).  --shards N
splits the tensors over N files with a model.safetensors.index.json.
--names mixtral writes grok-1 with the Mixtral-style names (block_sparse_moe,
w1/w2/w3, self_attn) instead of the xai-style ones (moe_block,
linear/linear_v/linear_1, attn).

Scales keep activations O(1): projections std 1/sqrt(fan_in), embedding rows
std 1 (grok: 1/embedding_multiplier_scale, since the model multiplies them),
LM head std 0.5 so logits have std ~4 (clear greedy margins), norm weights
1 + 0.1 N(0,1).
"""

import argparse
import json
import os
import struct
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "..", "data", "tokenizer")
sys.path.insert(0, HERE)
from st_io import write_safetensors, f32_to_bf16_bits, f32_to_e4m3_bits  # noqa: E402

FAMILIES = ("llama", "mixtral", "grok-1", "grok-2")


# --------------------------------------------------------------------------
# tokenizers
# --------------------------------------------------------------------------

def gguf_vocab(name):
    import gguf
    r = gguf.GGUFReader(os.path.join(DATA, f"ggml-vocab-{name}.gguf"))
    f = {k: v.contents() for k, v in r.fields.items() if k.startswith("tokenizer.")}
    return f


def write_tokenizer_json(out):
    """GPT-2's byte-level BPE as tokenizer.json; returns (vocab size, bos, eos)."""
    f = gguf_vocab("gpt-2")
    tokens, types, merges = f["tokenizer.ggml.tokens"], f["tokenizer.ggml.token_type"], f["tokenizer.ggml.merges"]
    vocab, added = {}, []
    for i, (t, ty) in enumerate(zip(tokens, types)):
        if ty == 3:  # control
            added.append({"id": i, "content": t, "single_word": False, "lstrip": False,
                          "rstrip": False, "normalized": False, "special": True})
        vocab[t] = i
    tj = {
        "version": "1.0",
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                          "use_regex": True},
        "post_processor": None,
        "decoder": {"type": "ByteLevel"},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "",
                  "end_of_word_suffix": "", "fuse_unk": False, "byte_fallback": False,
                  "vocab": vocab, "merges": list(merges)},
    }
    with open(os.path.join(out, "tokenizer.json"), "w", encoding="utf-8") as fp:
        json.dump(tj, fp, ensure_ascii=False)
    bos = int(f["tokenizer.ggml.bos_token_id"])
    eos = int(f["tokenizer.ggml.eos_token_id"])
    with open(os.path.join(out, "tokenizer_config.json"), "w") as fp:
        json.dump({"bos_token": tokens[bos], "eos_token": tokens[eos], "add_bos_token": False}, fp)
    return len(tokens), bos, eos


def pb_varint(x):
    x &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = x & 0x7F
        x >>= 7
        out.append(b | (0x80 if x else 0))
        if not x:
            return bytes(out)


def pb_key(field, wire):
    return pb_varint(field << 3 | wire)


def pb_bytes(field, data):
    return pb_key(field, 2) + pb_varint(len(data)) + data


def write_tokenizer_model(out):
    """The llama SentencePiece vocabulary as a tokenizer.model (ModelProto:
    pieces = 1 {piece = 1, score = 2, type = 3}, trainer_spec = 2
    {model_type = 3, unk/bos/eos/pad ids = 40..43}, normalizer_spec = 3
    {add_dummy_prefix = 3}); returns (vocab size, bos, eos)."""
    f = gguf_vocab("llama-spm")
    toks, scores, types = f["tokenizer.ggml.tokens"], f["tokenizer.ggml.scores"], f["tokenizer.ggml.token_type"]
    body = bytearray()
    for t, s, ty in zip(toks, scores, types):
        piece = pb_bytes(1, t.encode("utf-8")) + pb_key(2, 5) + struct.pack("<f", float(s))
        if int(ty) != 1:
            piece += pb_key(3, 0) + pb_varint(int(ty))
        body += pb_bytes(1, piece)
    trainer = pb_key(3, 0) + pb_varint(2)  # BPE
    for field, v in ((40, 0), (41, 1), (42, 2), (43, -1)):
        trainer += pb_key(field, 0) + pb_varint(v)
    body += pb_bytes(2, trainer)
    body += pb_bytes(3, pb_key(3, 0) + pb_varint(1))
    with open(os.path.join(out, "tokenizer.model"), "wb") as fp:
        fp.write(bytes(body))
    return len(toks), 1, 2


# --------------------------------------------------------------------------
# weights
# --------------------------------------------------------------------------

def make(family, out, dtype="f32", seed=0, shards=1, names="xai", hidden=64, layers=4, heads=4,
         kv_heads=2, head_dim=16, experts=8, top_k=2, expert_ffn=96, ffn=128):
    os.makedirs(out, exist_ok=True)
    spm = family in ("mixtral", "grok-1")
    vocab, bos, eos = write_tokenizer_model(out) if spm else write_tokenizer_json(out)
    rng = np.random.default_rng(seed)
    C, Q, KV = hidden, heads * head_dim, kv_heads * head_dim
    grok = family.startswith("grok")
    moe = family != "llama"
    dense = family in ("llama", "grok-2")

    cfg = {"hidden_size": C, "num_hidden_layers": layers, "num_attention_heads": heads,
           "num_key_value_heads": kv_heads, "head_dim": head_dim, "vocab_size": vocab,
           "max_position_embeddings": 2048, "rms_norm_eps": 1e-5, "bos_token_id": bos,
           "eos_token_id": eos, "torch_dtype": {"f32": "float32", "bf16": "bfloat16",
                                                "fp8": "bfloat16"}[dtype]}
    if family == "llama":
        cfg.update(architectures=["LlamaForCausalLM"], model_type="llama", intermediate_size=ffn,
                   rope_theta=10000.0, hidden_act="silu", tie_word_embeddings=False)
    elif family == "mixtral":
        cfg.update(architectures=["MixtralForCausalLM"], model_type="mixtral",
                   intermediate_size=expert_ffn, num_local_experts=experts,
                   num_experts_per_tok=top_k, rope_theta=1e6, hidden_act="silu",
                   tie_word_embeddings=False)
    elif family == "grok-1":
        # Grok-1's constants (xai-org/grok-1 model.py / the HF conversions' config).
        cfg.update(architectures=["Grok1ModelForCausalLM"], model_type="grok-1",
                   intermediate_size=expert_ffn, num_experts=experts, num_experts_per_tok=top_k,
                   rope_theta=10000.0, embedding_multiplier_scale=78.38367176906169,
                   output_multiplier_scale=0.5773502691896257,
                   attn_output_multiplier=0.08838834764831845, max_attn_value=30.0)
    else:
        # Grok-2's keys (xai-org/grok-2 config.json); the temperature length
        # and RoPE scaling are shrunk so a 40-token test exercises them.
        cfg.update(architectures=["Grok1ForCausalLM"], model_type="git", residual_moe=True,
                   intermediate_size=ffn, moe_intermediate_size=expert_ffn,
                   num_local_experts=experts, num_experts_per_tok=top_k, rope_theta=10000.0,
                   embedding_multiplier_scale=90.50966799187809, output_multiplier_scale=0.5,
                   attn_logit_softcapping=30.0, router_logit_softcapping=30.0,
                   final_logit_softcapping=50.0, attn_temperature_len=8, rope_type="yarn",
                   scaling_factor=16.0, original_max_position_embeddings=64, beta_fast=8,
                   beta_slow=1, extrapolation_factor=1.0, attn_factor=1.0)
    with open(os.path.join(out, "config.json"), "w") as fp:
        json.dump(cfg, fp, indent=1)

    T = {}  # name -> (float32 array, kind): kind "mat" (may be fp8), "vec", "keep" (never fp8)

    def lin(name, rows, cols, std=None):
        T[name] = ((rng.standard_normal((rows, cols)) * (std or 1 / np.sqrt(cols))).astype(np.float32), "mat")

    def vec(name):
        T[name] = ((1 + 0.1 * rng.standard_normal(C)).astype(np.float32), "vec")

    # Grok-1's embedding is also its LM head (tied).  Rows of std 0.02 are ~1.6
    # once multiplied; post-norm weights of ~3 let the sub-layers outweigh the
    # input token in the residual (else the model just repeats it), and a
    # final norm weight of ~10 gives logits of std ~1.  Elsewhere the rows are
    # std 1 once multiplied.
    emb_std = 0.02 if family == "grok-1" else 1.0 / cfg.get("embedding_multiplier_scale", 1.0)
    T["model.embed_tokens.weight"] = ((rng.standard_normal((vocab, C)) * emb_std).astype(np.float32), "keep")
    vec("model.norm.weight")
    if family == "grok-1":
        T["model.norm.weight"] = (T["model.norm.weight"][0] * 10, "vec")
    if family != "grok-1":
        lin("lm_head.weight", vocab, C, std=0.5)
        T["lm_head.weight"] = (T["lm_head.weight"][0], "keep")
    xai = family == "grok-1" and names == "xai"
    for l in range(layers):
        p = f"model.layers.{l}."
        att = p + ("attn." if xai else "self_attn.")
        lin(att + "q_proj.weight", Q, C, std=1.5 / np.sqrt(C))
        lin(att + "k_proj.weight", KV, C, std=1.5 / np.sqrt(C))
        lin(att + "v_proj.weight", KV, C)
        lin(att + "o_proj.weight", C, Q)
        if grok:
            for n in ("pre_attn_norm", "post_attn_norm", "pre_moe_norm", "post_moe_norm"):
                vec(p + n + ".weight")
                if family == "grok-1" and n.startswith("post"):
                    T[p + n + ".weight"] = (T[p + n + ".weight"][0] * 3, "vec")
        else:
            vec(p + "input_layernorm.weight")
            vec(p + "post_attention_layernorm.weight")
        if dense:
            lin(p + "mlp.gate_proj.weight", ffn, C)
            lin(p + "mlp.up_proj.weight", ffn, C)
            lin(p + "mlp.down_proj.weight", C, ffn)
        if moe:
            blk = p + ("moe_block." if xai else "block_sparse_moe.")
            g, u, d = ("linear", "linear_v", "linear_1") if xai else ("w1", "w3", "w2")
            T[blk + "gate.weight"] = ((rng.standard_normal((experts, C)) * 1.5 / np.sqrt(C)).astype(np.float32), "keep")
            for e in range(experts):
                lin(f"{blk}experts.{e}.{g}.weight", expert_ffn, C)
                lin(f"{blk}experts.{e}.{u}.weight", expert_ffn, C)
                lin(f"{blk}experts.{e}.{d}.weight", C, expert_ffn)

    # Encode.
    tensors = {}
    for name, (a, kind) in T.items():
        if dtype == "f32":
            tensors[name] = ("F32", a)
        elif dtype == "bf16" or kind != "mat":
            tensors[name] = ("BF16", f32_to_bf16_bits(a))
        else:
            # Per output channel for most matrices, per tensor for the
            # attention output projection (both forms occur in fp8 checkpoints).
            amax = np.abs(a).max(axis=1, keepdims=True) if not name.endswith("o_proj.weight") \
                else np.full((a.shape[0], 1), np.abs(a).max())
            scale = (amax / 448.0).astype(np.float32)  # e4m3's largest finite value
            tensors[name] = ("F8_E4M3", f32_to_e4m3_bits(a / scale))
            sname = name + "_scale"
            tensors[sname] = ("F32", scale[:1, 0].copy() if name.endswith("o_proj.weight") else scale[:, 0].copy())
    names_sorted = sorted(tensors)
    if shards <= 1:
        write_safetensors(os.path.join(out, "model.safetensors"), {n: tensors[n] for n in names_sorted})
    else:
        groups = [names_sorted[i::shards] for i in range(shards)]
        weight_map = {}
        for i, grp in enumerate(groups):
            fn = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
            write_safetensors(os.path.join(out, fn), {n: tensors[n] for n in grp})
            for n in grp:
                weight_map[n] = fn
        with open(os.path.join(out, "model.safetensors.index.json"), "w") as fp:
            json.dump({"metadata": {}, "weight_map": weight_map}, fp, indent=1)
    return cfg


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--family", choices=FAMILIES, required=True)
    ap.add_argument("--dtype", choices=("f32", "bf16", "fp8"), default="f32")
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--shards", type=int, default=1)
    ap.add_argument("--names", choices=("xai", "mixtral"), default="xai")
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--experts", type=int, default=8)
    ap.add_argument("--expert-ffn", type=int, default=96)
    ap.add_argument("--ffn", type=int, default=128)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--head-dim", type=int, default=16)
    a = ap.parse_args()
    make(a.family, a.out, a.dtype, a.seed, a.shards, a.names, hidden=a.hidden, layers=a.layers,
         heads=a.heads, kv_heads=a.kv_heads, head_dim=a.head_dim, experts=a.experts,
         expert_ffn=a.expert_ffn, ffn=a.ffn)


if __name__ == "__main__":
    main()
