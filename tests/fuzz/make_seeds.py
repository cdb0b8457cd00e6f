"""Writes the binary seed inputs of tests/fuzz/corpus/ and the tiny
vocabularies of tests/fuzz/data/ with the gguf package (run again only to
change them; the outputs are in the tree).  Text seeds (templates, JSON, HTTP)
are written by hand in corpus/ directly.

    .venv/bin/python tests/fuzz/make_seeds.py
"""
import json
import os
import struct

import gguf
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


def out(*parts):
    p = os.path.join(HERE, *parts)
    os.makedirs(os.path.dirname(p), exist_ok=True)
    return p


def write(path, arch, kvs, tensors=()):
    w = gguf.GGUFWriter(path, arch)
    for kind, key, val in kvs:
        getattr(w, "add_" + kind)(key, val) if kind != "array" else w.add_array(key, val)
    for name, arr, qtype in tensors:
        if qtype is None:
            w.add_tensor(name, arr)
        else:
            q = gguf.quants.quantize(arr, qtype)
            w.add_tensor(name, q, raw_shape=q.shape, raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def bpe_vocab():
    toks = ["a", "b", "c", "ab", "Ġ", "Ġa", "Ġab", "<|endoftext|>"]
    return toks, ["a b", "Ġ a", "Ġa b"]


def spm_vocab():
    toks = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)] + ["▁", "a", "b", "▁a", "▁ab"]
    types = [2, 3, 3] + [6] * 256 + [1] * 5
    scores = [0.0] * 259 + [-1.0, -2.0, -3.0, -1.5, -0.5]
    return toks, types, scores


def wpm_vocab():
    toks = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", "world", "he", "##llo", "##s",
            "a", "b", "##b", ".", ",", "!", "é"]
    types = [3, 2, 3, 3, 3] + [1] * (len(toks) - 5)
    return toks, types


def tok_kvs(model):
    if model == "gpt2":
        toks, merges = bpe_vocab()
        return [("tokenizer_model", None, "gpt2"), ("token_list", None, toks),
                ("token_merges", None, merges), ("bos_token_id", None, 7), ("eos_token_id", None, 7),
                ("string", "tokenizer.ggml.pre", "gpt-2")]
    if model == "llama":
        toks, types, scores = spm_vocab()
        return [("tokenizer_model", None, "llama"), ("token_list", None, toks),
                ("token_types", None, types), ("token_scores", None, scores),
                ("bos_token_id", None, 1), ("eos_token_id", None, 2), ("unk_token_id", None, 0)]
    toks, types = wpm_vocab()
    return [("tokenizer_model", None, "bert"), ("token_list", None, toks),
            ("token_types", None, types), ("bos_token_id", None, 2), ("eos_token_id", None, 3),
            ("unk_token_id", None, 1), ("pad_token_id", None, 0)]


def write_tok(path, model, extra=()):
    w = gguf.GGUFWriter(path, "llama")
    for kind, key, val in tok_kvs(model):
        if key is None:
            getattr(w, "add_" + kind)(val)
        else:
            getattr(w, "add_" + kind)(key, val)
    for kind, key, val in extra:
        getattr(w, "add_" + kind)(key, val)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.close()


# The tiny WordPiece vocabulary the tokenizer fuzz target loads (BPE and SPM
# use the llama.cpp vocab files of tests/data).
write_tok(out("data", "vocab-bert-tiny.gguf"), "bert")

# GGUF seeds: tokenizers, every metadata type, tensors.
write_tok(out("corpus", "gguf", "tok-gpt2.gguf"), "gpt2")
write_tok(out("corpus", "gguf", "tok-llama.gguf"), "llama")
write_tok(out("corpus", "gguf", "tok-bert.gguf"), "bert")
write(out("corpus", "gguf", "types.gguf"), "llama", [
    ("uint8", "t.u8", 200), ("int8", "t.i8", -5), ("uint16", "t.u16", 60000),
    ("int16", "t.i16", -3000), ("uint32", "t.u32", 4000000000), ("int32", "t.i32", -7),
    ("float32", "t.f32", 1.5), ("uint64", "t.u64", 2**63 + 5), ("int64", "t.i64", -2**40),
    ("float64", "t.f64", 1e300), ("bool", "t.b", True), ("string", "t.s", "text"),
    ("array", "t.ai", [1, 2, 3]), ("array", "t.af", [0.5, 1e30, -2.0]),
    ("array", "t.as", ["x", "yz"]), ("array", "t.aa", [[1, 2], [3]]),
    ("uint32", "general.alignment", 64)])
rng = np.random.default_rng(0)
write(out("corpus", "gguf", "tensors.gguf"), "llama", [("uint32", "llama.block_count", 1)], [
    ("f32", rng.standard_normal((2, 8)).astype(np.float32), None),
    ("f16", rng.standard_normal((16,)).astype(np.float16), None),
    ("q8", rng.standard_normal((1, 32)).astype(np.float32), gguf.GGMLQuantizationType.Q8_0),
    ("q4", rng.standard_normal((1, 32)).astype(np.float32), gguf.GGMLQuantizationType.Q4_0)])


# safetensors seeds: the 8-byte header length, the JSON header, the data.
def st_bytes(tensors, metadata=None):
    hdr, data = {}, b""
    for name, dtype, shape, raw in tensors:
        hdr[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    if metadata is not None:
        hdr["__metadata__"] = metadata
    h = json.dumps(hdr, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + data


def st_write(path, *a, **k):
    with open(path, "wb") as f:
        f.write(st_bytes(*a, **k))


st_write(out("corpus", "safetensors", "two.safetensors"),
         [("a", "F32", [2, 2], np.arange(4, dtype=np.float32).tobytes()),
          ("b.weight", "BF16", [3], b"\x80\x3f" * 3)], {"format": "pt"})
st_write(out("corpus", "safetensors", "kinds.safetensors"),
         [("s", "I64", [], struct.pack("<q", -1)), ("e", "F16", [0], b""),
          ("f8", "F8_E4M3", [4], b"\x38\x40\x48\xb8"), ("u", "U8", [2, 1], b"\x01\x02")])

# The two shards every index input of the safetensors_index target names.
st_write(out("data", "model-00001-of-00002.safetensors"),
         [("a", "F32", [2], np.ones(2, dtype=np.float32).tobytes())])
st_write(out("data", "model-00002-of-00002.safetensors"),
         [("b", "F16", [4], np.ones(4, dtype=np.float16).tobytes())])
