#!/usr/bin/env python3
"""Independent float64 numpy forward passes of Hugging Face checkpoints for the
llama, mixtral, grok-1 and grok-2 families, written from the papers and the
reference model code, not from shardserve's C:

  llama    HF LlamaForCausalLM: pre-norm blocks, RMSNorm, rotate-half RoPE,
           GQA, SwiGLU MLP down(silu(gate x) * up x).
  mixtral  Mixtral of Experts (arXiv 2401.04088) / HF MixtralSparseMoeBlock:
           router softmax over 8 experts, top-2, weights renormalised to sum 1,
           expert w2(silu(w1 x) * w3 x).
  grok-1   xai-org/grok-1 model.py (and hpcai-tech/grok-1's modeling_grok1.py,
           the Hugging Face port, whose RMSNorm parameter is named `scale`:
           model.layers.N.pre_attn_norm.scale, ..., model.norm.scale):
           h += post_attn_norm(attn(pre_attn_norm(h)));
           h += post_moe_norm(moe(pre_moe_norm(h))); attention logits times
           attn_output_multiplier, then max_attn_val * tanh(x / max_attn_val);
           router softmax in f32, top-2 without renormalising; expert
           linear_1(gelu(linear x) * linear_v x) with jax.nn.gelu's tanh form
           (the port's nn.GELU() is the erf form; hidden_act "gelu" selects it);
           embeddings times embedding_multiplier_scale; logits (tied head)
           times output_multiplier_scale.
  grok-2   sglang's grok.py for xai-org/grok-2: as grok-1 plus a dense MLP
           beside the experts, (mlp + moe) / sqrt(2); router logits soft-capped
           at 30 before the softmax; final logits times output_multiplier_scale
           then soft-capped at 50; attention logits of a query at position
           p > attn_temperature_len times log2(p) / log2(len); YaRN-scaled RoPE
           frequencies (yarn / yarn_linear / yarn_log / original);
           rope_rotate_half_dims: only the first head_dim/2 dimensions rotate.
  all      tie_word_embeddings (or no lm_head.weight): the head is the
           embedding.

Weights are read with st_io (safetensors in numpy), fp8 matrices multiplied
by their weight_scale; everything is computed in float64.  The whole sequence
is recomputed each step (no cache): slow, obviously right.

    python tests/reference/hf_ref.py DIR --ids 1,2,3 -n 8 --top 5
"""
import argparse
import glob
import json
import math
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from st_io import read_safetensors  # noqa: E402


class Model:
    def __init__(self, d):
        with open(os.path.join(d, "config.json")) as fp:
            self.cfg = cfg = json.load(fp)
        W = {}
        for f in sorted(glob.glob(os.path.join(d, "*.safetensors"))):
            W.update(read_safetensors(f))
        for n in [n for n in W if n.endswith("_scale")]:
            base = n[: -len("_scale")]
            s = W.pop(n).reshape(-1)
            W[base] = W[base] * (s[:, None] if s.size > 1 else s[0])
        self.W = W
        arch = (cfg.get("architectures") or [""])[0]
        mt = cfg.get("model_type", "")
        if arch.startswith("Mixtral") or mt == "mixtral":
            self.family = "mixtral"
        elif arch.startswith("Grok") or mt in ("grok-1", "git"):
            self.family = "grok-2" if cfg.get("residual_moe") else "grok-1"
        else:
            self.family = "llama"
        self.C = cfg["hidden_size"]
        self.H = cfg["num_attention_heads"]
        self.KV = cfg.get("num_key_value_heads", self.H)
        self.D = cfg.get("head_dim", self.C // self.H)
        self.L = cfg["num_hidden_layers"]
        self.eps = cfg.get("rms_norm_eps", 1e-5)
        self.E = cfg.get("num_local_experts", cfg.get("num_experts", 0))
        self.K = cfg.get("num_experts_per_tok", 2)
        self.grok = self.family.startswith("grok")
        # Dimensions of each head that rotate (rotate-half pairs within them).
        self.RD = self.D // 2 if self.grok and cfg.get("rope_rotate_half_dims") else self.D
        self.inv_freq = self.rope_inv_freq()

    # ---- pieces ---------------------------------------------------------------
    def rmsnorm(self, x, w):
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + self.eps) * w

    def norm(self, base):
        """An RMSNorm's weight: BASE.weight, or BASE.scale (hpcai-tech grok-1)."""
        return self.W[base + ".weight"] if base + ".weight" in self.W else self.W[base + ".scale"]

    def rope_inv_freq(self):
        cfg, d = self.cfg, self.RD
        base = cfg.get("rope_theta", 10000.0)
        extra = 1.0 / base ** (np.arange(0, d, 2) / d)
        rt = cfg.get("rope_type") if self.grok else None
        if not rt or rt == "original":
            return extra
        # YaRN (arXiv 2309.00071) as sglang's ScalingRotaryEmbedding applies it.
        factor = cfg.get("scaling_factor", 1.0)
        orig = cfg.get("original_max_position_embeddings", cfg.get("max_position_embeddings"))
        corr = lambda rot: d * math.log(orig / (rot * 2 * math.pi)) / (2 * math.log(base))
        low = max(math.floor(corr(cfg.get("beta_fast", 32))), 0)
        high = min(math.ceil(corr(cfg.get("beta_slow", 1))), d - 1)
        if low == high:
            low -= 0.001
        ramp = np.clip((np.arange(d // 2) - low) / (high - low), 0, 1)
        mask = (1 - ramp) * cfg.get("extrapolation_factor", 1.0)
        inter = extra / factor
        if rt == "yarn_log":
            return np.exp(np.log(extra) * mask + np.log(inter) * (1 - mask))
        return inter * (1 - mask) + extra * mask

    def rope(self, x, pos):
        """x: (T, heads, D); the first RD dimensions rotate, rotate-half pairs
        (i, i + RD/2); the rest pass through."""
        half = self.RD // 2
        ang = pos[:, None] * self.inv_freq[None, :]
        c, s = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
        a, b, rest = x[..., :half], x[..., half:self.RD], x[..., self.RD:]
        return np.concatenate([a * c - b * s, a * s + b * c, rest], axis=-1)

    def gelu(self, x):
        if self.cfg.get("hidden_act") == "gelu":
            return 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))
        return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))

    def act(self, g):
        if self.grok:
            return self.gelu(g)
        return g / (1 + np.exp(-g))

    def attention(self, x, p):
        W, T = self.W, x.shape[0]
        q = (x @ W[p + "q_proj.weight"].T).reshape(T, self.H, self.D)
        k = (x @ W[p + "k_proj.weight"].T).reshape(T, self.KV, self.D)
        v = (x @ W[p + "v_proj.weight"].T).reshape(T, self.KV, self.D)
        pos = np.arange(T, dtype=np.float64)
        q, k = self.rope(q, pos), self.rope(k, pos)
        cfg = self.cfg
        scale = cfg.get("attn_output_multiplier", self.D ** -0.5) if self.grok else self.D ** -0.5
        cap = (cfg.get("attn_logit_softcapping", cfg.get("max_attn_value", 30.0))) if self.grok else 0
        tlen = cfg.get("attn_temperature_len", 0) if self.grok else 0
        g = self.H // self.KV
        out = np.zeros((T, self.H, self.D))
        mask = np.triu(np.full((T, T), -np.inf), 1)
        for h in range(self.H):
            s = q[:, h, :] @ k[:, h // g, :].T * scale
            if cap:
                s = cap * np.tanh(s / cap)
            if tlen and tlen > 1:
                f = np.where(pos > tlen, np.log2(np.maximum(pos, 1)) / math.log2(tlen), 1.0)
                s = s * f[:, None]
            s = s + mask
            s = np.exp(s - s.max(axis=1, keepdims=True))
            s /= s.sum(axis=1, keepdims=True)
            out[:, h, :] = s @ v[:, h // g, :]
        return out.reshape(T, -1) @ W[p + "o_proj.weight"].T

    def mlp(self, x, p):
        W = self.W
        return (self.act(x @ W[p + "gate_proj.weight"].T) * (x @ W[p + "up_proj.weight"].T)) @ W[p + "down_proj.weight"].T

    def moe(self, x, p):
        W = self.W
        if p + "moe_block.gate.weight" in W:
            blk, names = p + "moe_block.", ("linear", "linear_v", "linear_1")
        else:
            blk, names = p + "block_sparse_moe.", ("w1", "w3", "w2")
        logits = x @ W[blk + "gate.weight"].T
        # Grok-2 (sglang's Grok1MoE): 30 when the key is absent; Grok-1: none.
        rcap = self.cfg.get("router_logit_softcapping", 30.0 if self.family == "grok-2" else 0) \
            if self.grok else 0
        if rcap:
            logits = rcap * np.tanh(logits / rcap)
        probs = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs /= probs.sum(axis=1, keepdims=True)
        out = np.zeros_like(x)
        for t in range(x.shape[0]):
            top = sorted(range(self.E), key=lambda e: (-probs[t, e], e))[: self.K]
            w = probs[t, top]
            if self.family == "mixtral":
                w = w / w.sum()
            for e, we in zip(top, w):
                g, u, d = (W[f"{blk}experts.{e}.{n}.weight"] for n in names)
                out[t] += we * ((self.act(g @ x[t]) * (u @ x[t])) @ d.T)
        return out

    # ---- the model -----------------------------------------------------------
    def logits(self, ids):
        W, cfg = self.W, self.cfg
        h = W["model.embed_tokens.weight"][np.asarray(ids)]
        if self.grok:
            h = h * cfg.get("embedding_multiplier_scale", 1.0)
        for l in range(self.L):
            p = f"model.layers.{l}."
            if self.grok:
                att = p + ("attn." if p + "attn.q_proj.weight" in W else "self_attn.")
                a = self.attention(self.rmsnorm(h, self.norm(p + "pre_attn_norm")), att)
                h = h + self.rmsnorm(a, self.norm(p + "post_attn_norm"))
                x = self.rmsnorm(h, self.norm(p + "pre_moe_norm"))
                f = self.moe(x, p)
                if self.family == "grok-2":
                    f = (self.mlp(x, p + "mlp.") + f) / math.sqrt(2)
                h = h + self.rmsnorm(f, self.norm(p + "post_moe_norm"))
            else:
                h = h + self.attention(self.rmsnorm(h, self.norm(p + "input_layernorm")), p + "self_attn.")
                x = self.rmsnorm(h, self.norm(p + "post_attention_layernorm"))
                h = h + (self.moe(x, p) if self.family == "mixtral" else self.mlp(x, p + "mlp."))
        h = self.rmsnorm(h[-1], self.norm("model.norm"))
        tied = cfg.get("tie_word_embeddings", self.family == "grok-1") or "lm_head.weight" not in W
        head = W["model.embed_tokens.weight"] if tied else W["lm_head.weight"]
        z = head @ h
        if self.grok:
            z = z * cfg.get("output_multiplier_scale", 1.0)
            cap = cfg.get("final_logit_softcapping", 0)
            if cap:
                z = cap * np.tanh(z / cap)
        return z


def greedy(model, ids, n, top):
    """[(chosen id, {id: logprob} of the top `top`)] for n greedy steps."""
    ids, steps = list(ids), []
    for _ in range(n):
        z = model.logits(ids)
        lp = z - (z.max() + np.log(np.exp(z - z.max()).sum()))
        order = np.argsort(-lp, kind="stable")[:top]
        steps.append((int(order[0]), {int(i): float(lp[i]) for i in order}))
        ids.append(int(order[0]))
    return steps


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--ids", required=True)
    ap.add_argument("-n", type=int, default=8)
    ap.add_argument("--top", type=int, default=5)
    a = ap.parse_args()
    m = Model(a.dir)
    for cid, top in greedy(m, [int(x) for x in a.ids.split(",")], a.n, a.top):
        print(cid, " ".join(f"{i}:{v:.6f}" for i, v in top.items()))


if __name__ == "__main__":
    main()
