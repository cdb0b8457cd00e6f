"""A byte-level GGUF writer for tests: builds valid files and, on request,
files broken in one precise place (a field's bytes, a count, an offset).

The `gguf` package writes only valid files, so malformed inputs are made here;
valid files written here are cross-checked against the `gguf` package's reader
in test_gguf.py.
"""
import struct

import numpy as np

U8, I8, U16, I16, U32, I32, F32, BOOL, STR, ARR, U64, I64, F64 = range(13)
_SCALAR = {U8: "<B", I8: "<b", U16: "<H", I16: "<h", U32: "<I", I32: "<i", F32: "<f",
           BOOL: "<?", U64: "<Q", I64: "<q", F64: "<d"}

# ggml type ids and block layouts (elements per block, bytes per block)
GGML_F32, GGML_F16, GGML_Q4_0, GGML_Q4_1, GGML_Q8_0, GGML_Q6_K, GGML_BF16 = 0, 1, 2, 3, 8, 14, 30
BLOCK = {GGML_F32: (1, 4), GGML_F16: (1, 2), GGML_Q4_0: (32, 18), GGML_Q4_1: (32, 20),
         GGML_Q8_0: (32, 34), GGML_Q6_K: (256, 210), GGML_BF16: (1, 2)}


def gstr(s):
    b = s.encode("utf-8") if isinstance(s, str) else bytes(s)
    return struct.pack("<Q", len(b)) + b


def value_bytes(vtype, v):
    """Encodes a value; arrays are (elem_type, [items])."""
    if vtype == STR:
        return gstr(v)
    if vtype == ARR:
        et, items = v
        out = struct.pack("<IQ", et, len(items))
        return out + b"".join(value_bytes(et, x) for x in items)
    if vtype not in _SCALAR:  # an invalid type id: no payload
        return b""
    return struct.pack(_SCALAR[vtype], v)


class Gguf:
    """A GGUF file under construction.  `kv` holds (key, type, value); `tensors`
    holds (name, shape with ne[0] first, ggml type, raw data bytes)."""

    def __init__(self, version=3, alignment=32):
        self.magic = b"GGUF"
        self.version = version
        self.alignment = alignment
        self.kv = []
        self.tensors = []
        self.offsets = {}  # field name -> byte offset in the last build()

    def add(self, key, vtype, value):
        self.kv.append((key, vtype, value))
        return self

    def set(self, key, vtype, value):
        self.kv = [(k, t, v) for (k, t, v) in self.kv if k != key]
        return self.add(key, vtype, value)

    def drop(self, key):
        self.kv = [(k, t, v) for (k, t, v) in self.kv if k != key]

    def tensor(self, name, shape, gtype, data):
        self.tensors.append((name, list(shape), gtype, bytes(data)))
        return self

    def build(self, n_kv=None, n_tensors=None, tensor_offsets=None, n_dims=None):
        out = bytearray()
        out += self.magic
        self.offsets["version"] = len(out)
        out += struct.pack("<I", self.version)
        self.offsets["n_tensors"] = len(out)
        out += struct.pack("<Q", len(self.tensors) if n_tensors is None else n_tensors)
        self.offsets["n_kv"] = len(out)
        out += struct.pack("<Q", len(self.kv) if n_kv is None else n_kv)
        for key, vtype, value in self.kv:
            self.offsets["kv:" + key] = len(out)
            out += gstr(key) + struct.pack("<I", vtype)
            self.offsets["val:" + key] = len(out)
            out += value_bytes(vtype, value)
        # data layout: each tensor aligned
        rel, offs = 0, []
        for name, shape, gtype, data in self.tensors:
            rel = (rel + self.alignment - 1) // self.alignment * self.alignment
            offs.append(rel)
            rel += len(data)
        layout = list(offs)  # where the data really goes
        if tensor_offsets:
            offs = [tensor_offsets.get(t[0], o) for t, o in zip(self.tensors, offs)]
        for (name, shape, gtype, data), off in zip(self.tensors, offs):
            self.offsets["tensor:" + name] = len(out)
            nd = len(shape) if n_dims is None or name not in n_dims else n_dims[name]
            out += gstr(name) + struct.pack("<I", nd)
            out += b"".join(struct.pack("<Q", d) for d in shape)
            self.offsets["ttype:" + name] = len(out)
            out += struct.pack("<I", gtype)
            self.offsets["toff:" + name] = len(out)
            out += struct.pack("<Q", off)
        pad = (-len(out)) % self.alignment
        out += b"\0" * pad
        self.offsets["data"] = len(out)
        data_start = len(out)
        for (name, shape, gtype, data), off in zip(self.tensors, layout):
            end = data_start + off
            if end > len(out):
                out += b"\0" * (end - len(out))
            out[end:end + len(data)] = data
        return bytes(out)


def byte_alphabet():
    """GPT-2's reversible map from bytes to printable characters."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def tiny_llama(dim=64, n_layer=2, n_head=4, n_kv_head=2, ffn=128, ctx=256, seed=0,
               wtype=GGML_F32, tied=True):
    """A complete, valid tiny llama model with a byte-level BPE vocabulary of the
    256 byte tokens plus <|endoftext|> (EOS) and <|im_start|>/<|im_end|>."""
    rng = np.random.default_rng(seed)
    g = Gguf()
    alpha = byte_alphabet()
    tokens = [alpha[b] for b in range(256)] + ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    types = [1] * 256 + [3, 3, 3]
    vocab = len(tokens)
    g.add("general.architecture", STR, "llama")
    g.add("general.name", STR, "tiny test model")
    g.add("llama.block_count", U32, n_layer)
    g.add("llama.context_length", U32, ctx)
    g.add("llama.embedding_length", U32, dim)
    g.add("llama.feed_forward_length", U32, ffn)
    g.add("llama.attention.head_count", U32, n_head)
    g.add("llama.attention.head_count_kv", U32, n_kv_head)
    g.add("llama.rope.freq_base", F32, 10000.0)
    g.add("llama.attention.layer_norm_rms_epsilon", F32, 1e-5)
    g.add("tokenizer.ggml.model", STR, "gpt2")
    g.add("tokenizer.ggml.pre", STR, "gpt-2")
    g.add("tokenizer.ggml.tokens", ARR, (STR, tokens))
    g.add("tokenizer.ggml.token_type", ARR, (I32, types))
    g.add("tokenizer.ggml.merges", ARR, (STR, []))
    g.add("tokenizer.ggml.bos_token_id", U32, 256)
    g.add("tokenizer.ggml.eos_token_id", U32, 256)

    def w(name, rows, cols, std=0.1):
        a = (rng.standard_normal((rows, cols)) * std).astype(np.float32)
        if wtype == GGML_F32:
            g.tensor(name, [cols, rows], GGML_F32, a.tobytes())
        elif wtype == GGML_F16:
            g.tensor(name, [cols, rows], GGML_F16, a.astype(np.float16).tobytes())
        else:
            raise ValueError("tiny_llama writes F32 or F16 weights")

    def norm(name):
        g.tensor(name, [dim], GGML_F32, (1.0 + 0.1 * rng.standard_normal(dim)).astype(np.float32).tobytes())

    hd = dim // n_head
    w("token_embd.weight", vocab, dim, 1.0)
    norm("output_norm.weight")
    if not tied:
        w("output.weight", vocab, dim)
    for l in range(n_layer):
        norm(f"blk.{l}.attn_norm.weight")
        w(f"blk.{l}.attn_q.weight", n_head * hd, dim)
        w(f"blk.{l}.attn_k.weight", n_kv_head * hd, dim)
        w(f"blk.{l}.attn_v.weight", n_kv_head * hd, dim)
        w(f"blk.{l}.attn_output.weight", dim, n_head * hd)
        norm(f"blk.{l}.ffn_norm.weight")
        w(f"blk.{l}.ffn_gate.weight", ffn, dim)
        w(f"blk.{l}.ffn_up.weight", ffn, dim)
        w(f"blk.{l}.ffn_down.weight", dim, ffn)
    return g
