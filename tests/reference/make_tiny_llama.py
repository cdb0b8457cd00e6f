#!/usr/bin/env python3
"""Write a small random llama-architecture GGUF file for tests.

The file has the same metadata keys and tensor names as a real llama.cpp
llama model (general.architecture=llama, llama.* hyper-parameters,
tokenizer.ggml.*), random weights, and a tokenizer section copied verbatim
from a vocab-only GGUF (--vocab-from), so engines can load it end to end.

Example:
    python tests/reference/make_tiny_llama.py --out /tmp/tiny.gguf \
        --dim 640 --layers 2 --heads 10 --kv-heads 2 --ffn 160 --dtype q4_1

Weight scales are chosen so activations stay O(1) regardless of shape:
projection matrices have std 1/sqrt(n_in); token_embd/output have std
3/sqrt(dim) so logits have std of about 3 (a peaked but not degenerate
softmax); norm weights are 1 + 0.1*N(0,1).
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

import gguf
from gguf import GGMLQuantizationType as QT
from gguf import GGUFReader, GGUFValueType, GGUFWriter, LlamaFileType
from gguf.quants import quantize

DEFAULT_VOCAB = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                             "..", "data", "tokenizer", "ggml-vocab-gpt-2.gguf")

DTYPES = {
    "f32": (QT.F32, LlamaFileType.ALL_F32),
    "f16": (QT.F16, LlamaFileType.MOSTLY_F16),
    "q8_0": (QT.Q8_0, LlamaFileType.MOSTLY_Q8_0),
    "q4_0": (QT.Q4_0, LlamaFileType.MOSTLY_Q4_0),
    "q4_1": (QT.Q4_1, LlamaFileType.MOSTLY_Q4_1),
}


# --------------------------------------------------------------------------
# tokenizer section
# --------------------------------------------------------------------------

def read_tokenizer_fields(path: str) -> dict:
    """All tokenizer.ggml.* fields of a GGUF file as {key: (value, vtype, sub_type)}."""
    r = GGUFReader(path)
    out = {}
    for key, f in r.fields.items():
        if not key.startswith("tokenizer."):
            continue
        vtype = f.types[0]
        sub = f.types[1] if vtype == GGUFValueType.ARRAY else None
        val = f.contents()
        out[key] = (val, vtype, sub)
    if "tokenizer.ggml.tokens" not in out:
        raise SystemExit(f"{path}: no tokenizer.ggml.tokens")
    return out


def truncate_vocab(fields: dict, n: int) -> dict:
    """Keep the first n tokens; drop merges and special-token ids that refer to
    tokens no longer present so the tokenizer section stays self-consistent."""
    tokens = fields["tokenizer.ggml.tokens"][0]
    if n >= len(tokens):
        return fields
    out = dict(fields)
    kept = tokens[:n]
    for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.token_type",
                "tokenizer.ggml.scores"):
        if key in out:
            val, vt, st = out[key]
            out[key] = (list(val)[:n], vt, st)
    if "tokenizer.ggml.merges" in out:
        have = set(kept)
        val, vt, st = out["tokenizer.ggml.merges"]
        good = []
        for m in val:
            a, _, b = m.partition(" ")
            if a in have and b in have and (a + b) in have:
                good.append(m)
        out["tokenizer.ggml.merges"] = (good, vt, st)
    for key in list(out):
        if key.endswith("_token_id") and int(out[key][0]) >= n:
            del out[key]
    return out


# --------------------------------------------------------------------------
# weights
# --------------------------------------------------------------------------

def encode_tensor(a: np.ndarray, qt: QT):
    """Return (array, raw_dtype) ready for GGUFWriter.add_tensor."""
    a = np.ascontiguousarray(a, dtype=np.float32)
    if qt == QT.F32:
        return a, None
    if qt == QT.F16:
        return a.astype(np.float16), None
    block = gguf.GGML_QUANT_SIZES[qt][0]
    if a.shape[-1] % block:
        raise SystemExit(f"{qt.name} needs rows that are a multiple of {block}; "
                         f"got row length {a.shape[-1]}")
    return quantize(a, qt), qt


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv-heads", type=int, default=None,
                    help="KV heads (default: same as --heads)")
    ap.add_argument("--head-dim", type=int, default=None,
                    help="head size (default dim/heads; otherwise written as "
                         "llama.attention.key_length/value_length)")
    ap.add_argument("--ffn", type=int, default=128)
    ap.add_argument("--vocab", type=int, default=None,
                    help="truncate the copied vocab to its first N tokens "
                         "(default: use the whole vocab of --vocab-from)")
    ap.add_argument("--vocab-from", default=DEFAULT_VOCAB,
                    help="GGUF whose tokenizer.ggml.* fields are copied")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="f32",
                    help="type of the 2-D weight matrices (norms stay F32)")
    ap.add_argument("--embd-dtype", choices=sorted(DTYPES), default=None,
                    help="type of token_embd/output (default: --dtype)")
    ap.add_argument("--seed", type=int, default=0)
    tie = ap.add_mutually_exclusive_group()
    tie.add_argument("--tied", dest="tied", action="store_true", default=True,
                     help="no output.weight; head tied to token_embd (default)")
    tie.add_argument("--untied", dest="tied", action="store_false",
                     help="write a separate output.weight")
    ap.add_argument("--rope-theta", type=float, default=10000.0)
    ap.add_argument("--eps", type=float, default=1e-5)
    ap.add_argument("--ctx", type=int, default=2048)
    a = ap.parse_args(argv)

    n_kv = a.kv_heads or a.heads
    if a.heads % n_kv:
        raise SystemExit(f"--heads {a.heads} must be a multiple of --kv-heads {n_kv}")
    if a.head_dim is None:
        if a.dim % a.heads:
            raise SystemExit("--dim must be a multiple of --heads (or give --head-dim)")
        head_dim = a.dim // a.heads
    else:
        head_dim = a.head_dim
    if head_dim % 2:
        raise SystemExit("head size must be even for RoPE")

    tok = read_tokenizer_fields(a.vocab_from)
    if a.vocab is not None:
        tok = truncate_vocab(tok, a.vocab)
    vocab = len(tok["tokenizer.ggml.tokens"][0])

    qt, ftype = DTYPES[a.dtype]
    eqt = DTYPES[a.embd_dtype or a.dtype][0]
    rng = np.random.default_rng(a.seed)

    def mat(n_out, n_in, std=None):
        # numpy (n_out, n_in) == GGUF shape [n_in, n_out]; y = W @ x.
        std = (1.0 / np.sqrt(n_in)) if std is None else std
        return rng.standard_normal((n_out, n_in), dtype=np.float32) * np.float32(std)

    def norm(n):
        return (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32)

    w = GGUFWriter(a.out, "llama")   # also writes general.architecture=llama
    w.add_name(f"tiny-llama-d{a.dim}-l{a.layers}-h{a.heads}-kv{n_kv}-f{a.ffn}-{a.dtype}")
    w.add_type("model")
    w.add_block_count(a.layers)
    w.add_context_length(a.ctx)
    w.add_embedding_length(a.dim)
    w.add_feed_forward_length(a.ffn)
    w.add_head_count(a.heads)
    w.add_head_count_kv(n_kv)
    w.add_rope_freq_base(a.rope_theta)
    w.add_layer_norm_rms_eps(a.eps)
    w.add_file_type(ftype)
    w.add_vocab_size(vocab)
    w.add_rope_dimension_count(head_dim)
    if a.head_dim is not None:
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
    for key, (val, vtype, sub) in tok.items():
        w.add_key_value(key, val, vtype, sub)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)

    def put(name, arr, t):
        data, raw = encode_tensor(arr, t)
        w.add_tensor(name, data, raw_dtype=raw)

    embd_std = 3.0 / np.sqrt(a.dim)
    put("token_embd.weight", mat(vocab, a.dim, embd_std), eqt)
    for i in range(a.layers):
        p = f"blk.{i}."
        put(p + "attn_norm.weight", norm(a.dim), QT.F32)
        put(p + "attn_q.weight", mat(a.heads * head_dim, a.dim), qt)
        put(p + "attn_k.weight", mat(n_kv * head_dim, a.dim), qt)
        put(p + "attn_v.weight", mat(n_kv * head_dim, a.dim), qt)
        put(p + "attn_output.weight", mat(a.dim, a.heads * head_dim), qt)
        put(p + "ffn_norm.weight", norm(a.dim), QT.F32)
        put(p + "ffn_gate.weight", mat(a.ffn, a.dim), qt)
        put(p + "ffn_up.weight", mat(a.ffn, a.dim), qt)
        put(p + "ffn_down.weight", mat(a.dim, a.ffn), qt)
    put("output_norm.weight", norm(a.dim), QT.F32)
    if not a.tied:
        put("output.weight", mat(vocab, a.dim, embd_std), eqt)

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(f"wrote {a.out}: vocab {vocab}, dim {a.dim}, layers {a.layers}, "
          f"heads {a.heads}/{n_kv}, head_dim {head_dim}, ffn {a.ffn}, "
          f"{a.dtype} (embd {a.embd_dtype or a.dtype}), "
          f"{'tied' if a.tied else 'untied'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
