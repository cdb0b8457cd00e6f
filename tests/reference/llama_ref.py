#!/usr/bin/env python3
"""Independent float64 reference forward pass for llama-family GGUF models.

This is the oracle the test suite compares the C engine against.  It is written
from the model definition, not from the engine, and deliberately favours
clarity over speed:

  * weights are read with gguf.GGUFReader and dequantized once at load with
    gguf.quants.dequantize, then held as float64 numpy arrays;
  * forward() computes every position of a sequence in one causal pass
    (no KV cache), so the result for position t depends only on ids[:t+1];
  * all arithmetic is float64, i.e. more precise than the f32 engine under test.

Model (per layer, pre-norm):
    h   = x + Wo @ attn(RoPE(Wq @ rms(x)), RoPE(Wk @ rms(x)), Wv @ rms(x))
    x'  = h + Wdown @ (silu(Wgate @ rms(h)) * (Wup @ rms(h)))
then logits = Wout @ rms_final(x), with Wout = output.weight or, when that
tensor is absent, token_embd.weight (tied embeddings).

GGUF conventions that matter here (see README-style notes in the report):
  * tensor shapes are listed ne[0] first (the contiguous dimension), so a GGUF
    weight of shape [n_in, n_out] is a numpy matrix (n_out, n_in) and y = W @ x;
  * llama.cpp's converter permutes the rows of Q and K so that RoPE rotates
    ADJACENT pairs (x[2i], x[2i+1]) within each head (ggml rope mode 0,
    "NORM"), with angle pos * base^(-2i/n_rot).  We apply exactly that
    convention to the weights as stored; we never un-permute.

Command line:
    python tests/reference/llama_ref.py --model F --ids 1,2,3 [--top K]
    python tests/reference/llama_ref.py --model F --ids 1,2,3 --greedy N
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from gguf import GGUFReader
from gguf.quants import dequantize

ARCH_DEFAULT = "llama"


# --------------------------------------------------------------------------
# small numeric helpers
# --------------------------------------------------------------------------

def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    """RMSNorm over the last axis: x / sqrt(mean(x^2) + eps) * weight."""
    ms = np.mean(x * x, axis=-1, keepdims=True)
    return x / np.sqrt(ms + eps) * weight


def silu(x: np.ndarray) -> np.ndarray:
    # x * sigmoid(x), written to avoid overflow in exp for large |x|.
    return x * (0.5 * (1.0 + np.tanh(0.5 * x)))


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Numerically stable log-softmax over the last axis (float64)."""
    z = np.asarray(logits, dtype=np.float64)
    m = np.max(z, axis=-1, keepdims=True)
    z = z - m
    return z - np.log(np.sum(np.exp(z), axis=-1, keepdims=True))


def softmax(x: np.ndarray) -> np.ndarray:
    m = np.max(x, axis=-1, keepdims=True)
    e = np.exp(x - m)
    return e / np.sum(e, axis=-1, keepdims=True)


# --------------------------------------------------------------------------
# GGUF reading
# --------------------------------------------------------------------------

def _field_value(reader: GGUFReader, key: str, default=None):
    f = reader.fields.get(key)
    if f is None:
        return default
    return f.contents()


def _tensor_f64(t) -> np.ndarray:
    """Dequantize one GGUF tensor to a float64 numpy array in numpy order.

    t.shape is the GGUF shape (ne[0] first); numpy order is the reverse, so a
    [n_in, n_out] weight becomes an (n_out, n_in) matrix.
    """
    data = dequantize(t.data, t.tensor_type)
    np_shape = tuple(int(n) for n in reversed(t.shape))
    return np.asarray(data, dtype=np.float64).reshape(np_shape)


@dataclass
class Layer:
    attn_norm: np.ndarray
    wq: np.ndarray   # (n_head * head_dim_k, dim)
    wk: np.ndarray   # (n_kv_head * head_dim_k, dim)
    wv: np.ndarray   # (n_kv_head * head_dim_v, dim)
    wo: np.ndarray   # (dim, n_head * head_dim_v)
    ffn_norm: np.ndarray
    w_gate: np.ndarray  # (ffn, dim)
    w_up: np.ndarray    # (ffn, dim)
    w_down: np.ndarray  # (dim, ffn)


@dataclass
class Model:
    path: str
    arch: str
    n_layer: int
    dim: int
    ffn: int
    n_head: int
    n_kv_head: int
    head_dim: int        # query/key head size
    head_dim_v: int      # value head size
    n_rot: int           # how many leading dims of each head RoPE rotates
    rope_base: float
    rope_freq_scale: float
    rms_eps: float
    n_ctx: int
    vocab_size: int
    tied_output: bool
    tok_embd: np.ndarray      # (vocab, dim)
    out_norm: np.ndarray      # (dim,)
    output: np.ndarray        # (vocab, dim); same object as tok_embd if tied
    layers: list = field(default_factory=list)
    rope_freq_factors: np.ndarray | None = None
    tokens: list | None = None          # tokenizer.ggml.tokens (strings)
    token_types: list | None = None     # tokenizer.ggml.token_type
    tokenizer_model: str | None = None  # "gpt2", "llama", ...
    # None, or a function applied to K (after RoPE) and V before attention reads
    # them: a KV cache that stores them in a narrower type (tests/test_kv_dtype.py).
    kv_round: object = None

    # ---------------------------------------------------------------- RoPE
    def _rope_cos_sin(self, n_pos: int):
        """cos/sin tables of shape (n_pos, n_rot/2) for adjacent-pair RoPE.

        Pair i (dims 2i, 2i+1) rotates by angle pos * base^(-2i/n_rot)
        (optionally divided by a per-pair frequency factor, and scaled by the
        linear rope scale factor, as ggml does).
        """
        i = np.arange(self.n_rot // 2, dtype=np.float64)
        inv_freq = self.rope_base ** (-2.0 * i / self.n_rot)
        if self.rope_freq_factors is not None:
            inv_freq = inv_freq / self.rope_freq_factors[: self.n_rot // 2]
        pos = np.arange(n_pos, dtype=np.float64) * self.rope_freq_scale
        ang = np.outer(pos, inv_freq)
        return np.cos(ang), np.sin(ang)

    def _apply_rope(self, x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
        """x: (n_heads, T, head_dim).  Rotate adjacent pairs in the first n_rot
        dims of each head; dims beyond n_rot pass through unchanged."""
        out = x.copy()
        x0 = x[..., 0:self.n_rot:2]   # even members of each pair
        x1 = x[..., 1:self.n_rot:2]   # odd members
        out[..., 0:self.n_rot:2] = x0 * cos - x1 * sin
        out[..., 1:self.n_rot:2] = x0 * sin + x1 * cos
        return out

    # ------------------------------------------------------------- forward
    def forward(self, token_ids) -> np.ndarray:
        """Logits (float64, shape [len(token_ids), vocab]) for every position,
        computed in one causal pass starting at position 0."""
        ids = np.asarray(list(token_ids), dtype=np.int64)
        if ids.ndim != 1 or ids.size == 0:
            raise ValueError("token_ids must be a non-empty 1-D sequence")
        if ids.min() < 0 or ids.max() >= self.vocab_size:
            raise ValueError(f"token id out of range [0, {self.vocab_size})")
        T = ids.size

        x = self.tok_embd[ids]                       # (T, dim)
        cos, sin = self._rope_cos_sin(T)             # (T, n_rot/2)
        # Causal mask: position t may attend to positions 0..t only.
        causal = np.triu(np.ones((T, T), dtype=bool), k=1)
        scale = 1.0 / np.sqrt(self.head_dim)
        # Grouped-query attention: query head h reads KV head h // group.
        group = self.n_head // self.n_kv_head
        kv_of_head = np.arange(self.n_head) // group

        for L in self.layers:
            # ---- attention block
            xn = rms_norm(x, L.attn_norm, self.rms_eps)
            q = (xn @ L.wq.T).reshape(T, self.n_head, self.head_dim).transpose(1, 0, 2)
            k = (xn @ L.wk.T).reshape(T, self.n_kv_head, self.head_dim).transpose(1, 0, 2)
            v = (xn @ L.wv.T).reshape(T, self.n_kv_head, self.head_dim_v).transpose(1, 0, 2)
            q = self._apply_rope(q, cos, sin)
            k = self._apply_rope(k, cos, sin)
            if self.kv_round is not None:
                k, v = self.kv_round(k), self.kv_round(v)
            k_h = k[kv_of_head]                      # (n_head, T, head_dim)
            v_h = v[kv_of_head]                      # (n_head, T, head_dim_v)
            scores = np.matmul(q, k_h.transpose(0, 2, 1)) * scale   # (n_head, T, T)
            scores = np.where(causal[None, :, :], -np.inf, scores)
            probs = softmax(scores)
            attn = np.matmul(probs, v_h)             # (n_head, T, head_dim_v)
            attn = attn.transpose(1, 0, 2).reshape(T, self.n_head * self.head_dim_v)
            x = x + attn @ L.wo.T

            # ---- SwiGLU feed-forward block
            hn = rms_norm(x, L.ffn_norm, self.rms_eps)
            g = hn @ L.w_gate.T
            u = hn @ L.w_up.T
            x = x + (silu(g) * u) @ L.w_down.T

        x = rms_norm(x, self.out_norm, self.rms_eps)
        return x @ self.output.T                     # (T, vocab)

    def logprobs(self, token_ids) -> np.ndarray:
        return log_softmax(self.forward(token_ids))

    def greedy(self, token_ids, n_steps: int) -> list:
        """Greedily extend token_ids by n_steps tokens (re-runs the full
        forward each step: simple, quadratic, fine for a reference)."""
        ids = list(token_ids)
        out = []
        for _ in range(n_steps):
            nxt = int(np.argmax(self.forward(ids)[-1]))
            ids.append(nxt)
            out.append(nxt)
        return out

    # ------------------------------------------------------------- decoding
    def decode(self, ids) -> str:
        if self.tokens is None:
            raise ValueError("model file has no tokenizer.ggml.tokens")
        if self.tokenizer_model == "llama":
            return _decode_spm(self.tokens, self.token_types, ids)
        return _decode_byte_level(self.tokens, self.token_types, ids)


# --------------------------------------------------------------------------
# token decoding (display only)
# --------------------------------------------------------------------------

def _gpt2_unicode_to_byte() -> dict:
    """Inverse of GPT-2's byte->printable-char table.

    Bytes that are printable and not whitespace ('!'..'~', '¡'..'¬', '®'..'ÿ')
    map to the code point of the same value; the remaining 68 bytes map, in
    increasing byte order, to code points 256, 257, ...  (e.g. ' ' -> 'Ġ').
    """
    keep = (list(range(ord("!"), ord("~") + 1))
            + list(range(ord("¡"), ord("¬") + 1))
            + list(range(ord("®"), ord("ÿ") + 1)))
    table = {}
    extra = 0
    for b in range(256):
        if b in keep:
            table[chr(b)] = b
        else:
            table[chr(256 + extra)] = b
            extra += 1
    return table


_U2B = None

# GGUF token types (llama.cpp): 1 normal, 2 unknown, 3 control,
# 4 user-defined, 5 unused, 6 byte.
TT_CONTROL, TT_USER_DEFINED, TT_BYTE = 3, 4, 6


def _decode_byte_level(tokens, types, ids) -> str:
    global _U2B
    if _U2B is None:
        _U2B = _gpt2_unicode_to_byte()
    buf = bytearray()
    for i in ids:
        s = tokens[i]
        tt = types[i] if types is not None else 1
        if tt in (TT_CONTROL, TT_USER_DEFINED):
            buf += s.encode("utf-8")          # special tokens are literal text
            continue
        for ch in s:
            b = _U2B.get(ch)
            if b is None:
                buf += ch.encode("utf-8")     # not a byte-level char: keep as is
            else:
                buf.append(b)
    return buf.decode("utf-8", errors="replace")


def _decode_spm(tokens, types, ids) -> str:
    buf = bytearray()
    for i in ids:
        s = tokens[i]
        tt = types[i] if types is not None else 1
        if tt == TT_BYTE and s.startswith("<0x") and s.endswith(">"):
            buf.append(int(s[3:-1], 16))
        else:
            buf += s.replace("\u2581", " ").encode("utf-8")
    return buf.decode("utf-8", errors="replace")


# --------------------------------------------------------------------------
# loading
# --------------------------------------------------------------------------

def load(path: str) -> Model:
    """Read a llama-family GGUF file and dequantize all weights to float64."""
    r = GGUFReader(path)
    arch = _field_value(r, "general.architecture", ARCH_DEFAULT)

    def hp(key, default=None, required=True):
        v = _field_value(r, f"{arch}.{key}", default)
        if v is None and required:
            raise KeyError(f"missing metadata key {arch}.{key}")
        return v

    n_layer = int(hp("block_count"))
    dim = int(hp("embedding_length"))
    ffn = int(hp("feed_forward_length"))
    n_head = int(hp("attention.head_count"))
    n_kv_head = int(hp("attention.head_count_kv", n_head))
    rms_eps = float(hp("attention.layer_norm_rms_epsilon"))
    rope_base = float(hp("rope.freq_base", 10000.0))
    n_ctx = int(hp("context_length", 0, required=False) or 0)
    head_dim = int(hp("attention.key_length", dim // n_head))
    head_dim_v = int(hp("attention.value_length", head_dim))
    n_rot = int(hp("rope.dimension_count", head_dim))
    if n_head % n_kv_head != 0:
        raise ValueError(f"n_head {n_head} not a multiple of n_kv_head {n_kv_head}")
    if n_rot % 2 or n_rot > head_dim:
        raise ValueError(f"bad rope.dimension_count {n_rot} for head_dim {head_dim}")

    # Rope scaling: only 'none' and 'linear' are understood; refuse anything
    # else rather than silently computing the wrong thing.
    scaling_type = hp("rope.scaling.type", "none", required=False)
    rope_freq_scale = 1.0
    if scaling_type == "linear":
        rope_freq_scale = 1.0 / float(hp("rope.scaling.factor", 1.0))
    elif scaling_type not in (None, "none"):
        raise NotImplementedError(f"rope scaling type {scaling_type!r}")

    tensors = {t.name: t for t in r.tensors}

    def W(name, shape):
        if name not in tensors:
            raise KeyError(f"missing tensor {name}")
        a = _tensor_f64(tensors[name])
        if a.shape != shape:
            raise ValueError(f"{name}: numpy shape {a.shape}, expected {shape}")
        return a

    tok_embd = _tensor_f64(tensors["token_embd.weight"])
    if tok_embd.ndim != 2 or tok_embd.shape[1] != dim:
        raise ValueError(f"token_embd.weight has numpy shape {tok_embd.shape}")
    vocab = tok_embd.shape[0]

    layers = []
    for i in range(n_layer):
        p = f"blk.{i}."
        layers.append(Layer(
            attn_norm=W(p + "attn_norm.weight", (dim,)),
            wq=W(p + "attn_q.weight", (n_head * head_dim, dim)),
            wk=W(p + "attn_k.weight", (n_kv_head * head_dim, dim)),
            wv=W(p + "attn_v.weight", (n_kv_head * head_dim_v, dim)),
            wo=W(p + "attn_output.weight", (dim, n_head * head_dim_v)),
            ffn_norm=W(p + "ffn_norm.weight", (dim,)),
            w_gate=W(p + "ffn_gate.weight", (ffn, dim)),
            w_up=W(p + "ffn_up.weight", (ffn, dim)),
            w_down=W(p + "ffn_down.weight", (dim, ffn)),
        ))

    tied = "output.weight" not in tensors
    output = tok_embd if tied else W("output.weight", (vocab, dim))
    freq_factors = (_tensor_f64(tensors["rope_freqs.weight"])
                    if "rope_freqs.weight" in tensors else None)

    tokens = _field_value(r, "tokenizer.ggml.tokens")
    token_types = _field_value(r, "tokenizer.ggml.token_type")
    if tokens is not None:
        tokens = list(tokens)
    if token_types is not None:
        token_types = [int(t) for t in token_types]

    return Model(
        path=path, arch=arch, n_layer=n_layer, dim=dim, ffn=ffn,
        n_head=n_head, n_kv_head=n_kv_head, head_dim=head_dim,
        head_dim_v=head_dim_v, n_rot=n_rot, rope_base=rope_base,
        rope_freq_scale=rope_freq_scale, rms_eps=rms_eps, n_ctx=n_ctx,
        vocab_size=vocab, tied_output=tied, tok_embd=tok_embd,
        out_norm=W("output_norm.weight", (dim,)), output=output,
        layers=layers, rope_freq_factors=freq_factors,
        tokens=tokens, token_types=token_types,
        tokenizer_model=_field_value(r, "tokenizer.ggml.model"),
    )


# --------------------------------------------------------------------------
# approximate text -> ids (for humans only; NOT the real BPE tokenizer)
# --------------------------------------------------------------------------

def approx_encode(model: Model, text: str) -> list:
    """Greedy longest-match over the vocab.  Good enough to make a prompt for
    eyeballing generations; it does not reproduce BPE merges, so never use it
    to check a tokenizer."""
    if model.tokenizer_model == "llama":
        s = "\u2581" + text.replace(" ", "\u2581")
    else:
        b2u = {b: u for u, b in _gpt2_unicode_to_byte().items()}
        s = "".join(b2u[b] for b in text.encode("utf-8"))
    index = {}
    for i, t in enumerate(model.tokens):
        if model.token_types is None or model.token_types[i] not in (TT_CONTROL,):
            index.setdefault(t, i)
    maxlen = max(len(t) for t in index)
    ids, pos = [], 0
    while pos < len(s):
        for n in range(min(maxlen, len(s) - pos), 0, -1):
            if s[pos:pos + n] in index:
                ids.append(index[s[pos:pos + n]])
                pos += n
                break
        else:
            raise ValueError(f"cannot encode {s[pos]!r}")
    return ids


# --------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="models/SmolLM2-135M-Instruct.Q4_1.gguf")
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--ids", help="comma-separated token ids, e.g. 1,2,3")
    g.add_argument("--text", help="prompt text, encoded APPROXIMATELY by greedy "
                   "longest vocab match (for humans only)")
    ap.add_argument("--top", type=int, default=5,
                    help="print the top-K (id, logprob) per position")
    ap.add_argument("--greedy", type=int, default=0,
                    help="instead, greedily generate N tokens and print them")
    ap.add_argument("--timing", action="store_true", help="print timings to stderr")
    a = ap.parse_args(argv)

    t0 = time.perf_counter()
    m = load(a.model)
    t1 = time.perf_counter()
    if a.ids is not None:
        ids = [int(s) for s in a.ids.split(",") if s.strip()]
    else:
        ids = approx_encode(m, a.text)
        print(json.dumps({"prompt_ids": ids}), file=sys.stderr)

    if a.greedy > 0:
        gen = m.greedy(ids, a.greedy)
        t2 = time.perf_counter()
        rec = {"prompt_ids": ids, "generated_ids": gen}
        if m.tokens is not None:
            rec["prompt_text"] = m.decode(ids)
            rec["generated_text"] = m.decode(gen)
        print(json.dumps(rec, ensure_ascii=False))
    else:
        lp = log_softmax(m.forward(ids))
        t2 = time.perf_counter()
        k = max(1, min(a.top, lp.shape[1]))
        for pos in range(lp.shape[0]):
            # Sort by logprob descending, ties broken by smaller id.
            order = np.lexsort((np.arange(lp.shape[1]), -lp[pos]))[:k]
            print(json.dumps({"pos": pos, "id": ids[pos],
                              "top": [[int(i), float(lp[pos, i])] for i in order]}))
    if a.timing:
        print(f"load {t1 - t0:.3f}s  compute {t2 - t1:.3f}s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
