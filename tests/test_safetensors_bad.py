"""Malformed safetensors checkpoints: every case gets exit status 1 (never a
signal or a sanitizer report) and one error line naming the file and the
tensor or field at fault, through both `info` and `generate`.

The folder around each bad file is a valid tiny llama checkpoint (config.json,
tokenizer.json), so the safetensors layer is what fails.
"""
import json
import os
import shutil
import struct
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "lib"))
sys.path.insert(0, os.path.join(HERE, "reference"))
from harness import Checker, parse_args  # noqa: E402
import make_tiny_hf  # noqa: E402
from st_io import write_safetensors  # noqa: E402

args = parse_args()
ck = Checker("safetensors bad input")
tmp = tempfile.mkdtemp(prefix="ss-stbad-")
base = os.path.join(tmp, "base")
make_tiny_hf.make("llama", base, dtype="f32", layers=1)
with open(os.path.join(base, "model.safetensors"), "rb") as fp:
    good = fp.read()
hlen = struct.unpack("<Q", good[:8])[0]
header = json.loads(good[8:8 + hlen])
data = good[8 + hlen:]
n_case = 0


def folder(name):
    """A copy of the base folder without its weights."""
    d = os.path.join(tmp, name)
    os.makedirs(d)
    for f in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(base, f), d)
    return d


def with_header(h, body=None, raw_len=None):
    hb = json.dumps(h).encode() if not isinstance(h, bytes) else h
    return struct.pack("<Q", len(hb) if raw_len is None else raw_len) + hb + (data if body is None else body)


def expect(name, files, *needles, index=None):
    """Writes files {name: bytes} into a fresh folder and checks both commands."""
    global n_case
    n_case += 1
    d = folder(f"case{n_case}")
    for fn, content in files.items():
        with open(os.path.join(d, fn), "wb") as fp:
            fp.write(content)
    if index is not None:
        with open(os.path.join(d, "model.safetensors.index.json"), "w") as fp:
            fp.write(index if isinstance(index, str) else json.dumps(index))
    for cmd in (["info", "--model", d], ["generate", "--model", d, "--prompt-ids", "1,2", "-n", "1"]):
        rc, out, err = ck.run(args.bin, cmd)
        lines = [l for l in err.splitlines() if l.strip()]
        ok = rc == 1 and len(lines) == 1 and all(n in err for n in needles)
        ck.check(ok, f"{name} ({cmd[0]}): exit {rc}, stderr {err.strip()[:400]!r}, wanted {needles}")
        if ok and cmd[0] == "info":
            print(f"ok   {name}: {err.strip()}")


def entry(name, **kw):
    h = json.loads(json.dumps(header))
    h[name].update(kw)
    return h


emb = "model.embed_tokens.weight"
q = "model.layers.0.self_attn.q_proj.weight"

# Header length and container.
expect("header length over 100 MB", {"model.safetensors": with_header(header, raw_len=100_000_001)},
       "model.safetensors", "header length 100000001 exceeds the limit of 100000000")
expect("header length past the end", {"model.safetensors": struct.pack("<Q", 5000) + b"{}"},
       "header length 5000 runs past the end")
expect("file shorter than 8 bytes", {"model.safetensors": b"\x10\x00"}, "too short")
expect("empty file", {"model.safetensors": b""}, "too short")
expect("header not JSON", {"model.safetensors": with_header(b"{not json", body=b"")}, "not valid JSON")
expect("header a JSON array", {"model.safetensors": with_header(b"[1, 2]", body=b"")}, "not a JSON object")
expect("duplicate tensor key", {"model.safetensors": with_header(
    b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, '
    b'"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}', body=b"\0" * 8)}, "duplicate")
# Offsets.
e = header[emb]["data_offsets"]
expect("overlapping offsets", {"model.safetensors": with_header(entry(q, data_offsets=[e[0], e[0] + (header[q]["data_offsets"][1] - header[q]["data_offsets"][0])]))},
       "overlaps")
expect("offsets past the end", {"model.safetensors": with_header(entry(emb, data_offsets=[len(data) - 4, len(data) + 4 * 64 * 50257 - 4]))},
       emb, "past the data section")
expect("offsets not ordered", {"model.safetensors": with_header(entry(emb, data_offsets=[e[1], e[0]]))},
       emb, "not ordered")
expect("negative offset", {"model.safetensors": with_header(entry(emb, data_offsets=[-8, e[1]]))},
       emb, "data_offsets are not non-negative integers")
expect("truncated data section", {"model.safetensors": good[:len(good) - 1000]},
       "past the data section", "truncated")
# Shapes and dtypes.
expect("shape / size mismatch", {"model.safetensors": with_header(entry(emb, shape=[50257, 63]))},
       emb, "span", "need")
expect("negative shape", {"model.safetensors": with_header(entry(emb, shape=[-1, 64]))},
       emb, "shape[0] is not a non-negative integer")
expect("huge shape", {"model.safetensors": with_header(entry(emb, shape=[2**62, 2**62]))},
       emb, "overflow")
expect("shape not integers", {"model.safetensors": with_header(entry(emb, shape=[1.5, 64]))},
       emb, "shape[0]")
expect("unknown dtype", {"model.safetensors": with_header(entry(emb, dtype="Q9"))},
       emb, "unknown dtype 'Q9'")
expect("missing data_offsets", {"model.safetensors": with_header({emb: {"dtype": "F32", "shape": [1]}}, body=b"")},
       emb, "data_offsets")
# The model's view: a tensor missing, of the wrong shape, of a dtype without kernel.
h = json.loads(json.dumps(header))
del h[q]
expect("missing tensor", {"model.safetensors": with_header(h)}, f"missing tensor '{q}'")
qo = header[q]["data_offsets"]
expect("wrong tensor shape", {"model.safetensors": with_header(entry(q, shape=[32, 128]))}, q, "expected [64, 64]")
expect("dtype without kernel", {"model.safetensors": with_header(entry(q, dtype="I32"))}, q, "I32", "no kernel")
# Sharded folders.
shard_a = {k: v for k, v in header.items() if k != "__metadata__"}
expect("index naming a missing shard", {"model-00001-of-00002.safetensors": good},
       "model-00002-of-00002.safetensors", "is missing",
       index={"weight_map": {**{k: "model-00001-of-00002.safetensors" for k in shard_a},
                             "extra.weight": "model-00002-of-00002.safetensors"}})
expect("index naming a tensor its shard lacks", {"model-00001-of-00001.safetensors": good}, "ghost.weight",
       "does not list it", index={"weight_map": {**{k: "model-00001-of-00001.safetensors" for k in shard_a},
                                                 "ghost.weight": "model-00001-of-00001.safetensors"}})
expect("index with a path outside the folder", {}, "not a file name in the folder",
       index={"weight_map": {emb: "../model.safetensors"}})
expect("index with an empty weight_map", {"model-00001-of-00001.safetensors": good},
       "weight_map names no tensors", index={"weight_map": {}})
expect("index not JSON", {}, "model.safetensors.index.json", "not valid JSON",
       index="{\"weight_map\": ")
expect("no weights at all", {}, "no model.safetensors")

shutil.rmtree(tmp, ignore_errors=True)
ck.finish()
