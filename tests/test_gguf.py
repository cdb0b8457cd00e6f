"""Our GGUF reader against the `gguf` package's reader and dequantizer.

For the default model, the tokenizer vocab files, and files written with
gguf.GGUFWriter holding every metadata value type (nested arrays included) and
tensors of every type we compute with: every metadata key's type and value,
every tensor's name, type, shape, offset and size must agree, and every
tensor dequantized by us must equal gguf.quants.dequantize bit for bit.
"""
import json
import os
import struct
import sys
import tempfile

import gguf
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "lib"))
from harness import Checker, parse_args  # noqa: E402

args = parse_args()
ck = Checker("gguf reader")
tmp = tempfile.mkdtemp(prefix="ss-gguf-")

VT = gguf.GGUFValueType
TYPE_NAMES = {VT.UINT8: "uint8", VT.INT8: "int8", VT.UINT16: "uint16", VT.INT16: "int16",
              VT.UINT32: "uint32", VT.INT32: "int32", VT.FLOAT32: "float32", VT.BOOL: "bool",
              VT.STRING: "string", VT.ARRAY: "array", VT.UINT64: "uint64", VT.INT64: "int64",
              VT.FLOAT64: "float64"}


def ref_value(field):
    """The value of a ReaderField as Python data, nested arrays kept nested."""
    types = field.types
    if types[0] != VT.ARRAY:
        v = field.contents()
        return v
    # contents() flattens nested arrays; rebuild the nesting from the raw parts.
    return field.contents() if types[1] != VT.ARRAY else None


def same(a, b, typ):
    if typ == "uint64" and isinstance(b, str):  # beyond JSON's int64: written as a string
        return int(b) == int(a)
    if typ in ("float32", "float64"):
        if isinstance(b, str):  # nan / inf spelled out
            return str(float(a)) == b or (b == "nan" and a != a)
        return float(a) == float(b)
    return a == b


def compare_file(path, label, dequant=True):
    rc, out, err = ck.run(args.bin, ["info", "--json", "--format-only", "--model", path])
    if not ck.check(rc == 0, f"{label}: info --json failed: {err}"):
        return
    ours = json.loads(out)
    r = gguf.GGUFReader(path)
    fields = {k: f for k, f in r.fields.items() if not k.startswith("GGUF.")}
    ck.check(set(fields) == set(ours["metadata"]),
             f"{label}: key sets differ: {set(fields) ^ set(ours['metadata'])}")
    for k, f in fields.items():
        if k not in ours["metadata"]:
            continue
        mine = ours["metadata"][k]
        want_types = [TYPE_NAMES[t] for t in f.types]
        got_types = mine["type"] if isinstance(mine["type"], list) else [mine["type"]]
        ck.check(got_types == want_types, f"{label}: {k}: type {got_types} != {want_types}")
        val = mine["value"]
        scalar = want_types[-1]
        if f.types[0] != VT.ARRAY:
            ck.check(same(f.contents(), val, scalar), f"{label}: {k}: {val!r} != {f.contents()!r}")
        elif len(f.types) == 2:
            ref = f.contents()
            ok = len(ref) == len(val) and all(same(a, b, scalar) for a, b in zip(ref, val))
            ck.check(ok, f"{label}: {k}: array values differ (len {len(val)} vs {len(ref)})")
        else:
            flat = []

            def walk(x):
                for y in x:
                    walk(y) if isinstance(y, list) else flat.append(y)
            walk(val)
            ref = f.contents()
            ck.check(len(flat) == len(ref) and all(same(a, b, scalar) for a, b in zip(ref, flat)),
                     f"{label}: {k}: nested array values differ")
    ck.check(len(r.tensors) == len(ours["tensors"]), f"{label}: tensor counts differ")
    for t, m in zip(r.tensors, ours["tensors"]):
        ck.check(t.name == m["name"], f"{label}: tensor name {m['name']} != {t.name}")
        ck.check(int(t.tensor_type) == m["type_id"], f"{label}: {t.name}: type {m['type']} != {t.tensor_type.name}")
        ck.check([int(x) for x in t.shape] == m["shape"], f"{label}: {t.name}: shape {m['shape']} != {list(t.shape)}")
        ck.check(int(t.n_bytes) == m["nbytes"], f"{label}: {t.name}: bytes {m['nbytes']} != {t.n_bytes}")
        ck.check(int(t.data_offset) == ours["data_offset"] + m["offset"],
                 f"{label}: {t.name}: data offset differs")
        if dequant and t.tensor_type in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16,
                                          gguf.GGMLQuantizationType.BF16, gguf.GGMLQuantizationType.Q8_0,
                                          gguf.GGMLQuantizationType.Q4_0, gguf.GGMLQuantizationType.Q4_1):
            rc, raw, err = ck.run(args.bin, ["info", "--model", path, "--dump", t.name])
            if not ck.check(rc == 0, f"{label}: --dump {t.name}: {err}"):
                continue
            got = np.frombuffer(raw, dtype="<f4")
            want = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32).reshape(-1)
            ck.check(got.shape == want.shape and np.array_equal(got, want, equal_nan=True),
                     f"{label}: {t.name} ({t.tensor_type.name}): dequantized values differ "
                     f"(max |d| {np.max(np.abs(got - want)) if got.shape == want.shape else 'shape'})")
    print(f"compared {label}: {len(fields)} keys, {len(r.tensors)} tensors")


# 1. A file with every value type, nested arrays and every tensor type we compute with.
rng = np.random.default_rng(5)
path = os.path.join(tmp, "alltypes.gguf")
w = gguf.GGUFWriter(path, "llama")
w.add_uint8("t.u8", 200)
w.add_int8("t.i8", -100)
w.add_uint16("t.u16", 65000)
w.add_int16("t.i16", -32000)
w.add_uint32("t.u32", 4000000000)
w.add_int32("t.i32", -2000000000)
w.add_float32("t.f32", 3.14159)
w.add_uint64("t.u64", 18000000000000000000)
w.add_int64("t.i64", -9000000000000000000)
w.add_float64("t.f64", 2.718281828459045)
w.add_bool("t.bool", True)
w.add_string("t.str", "héllo, wörld \u2581 🦙")
w.add_string("t.empty", "")
w.add_array("t.arr_i32", [1, -2, 3])
w.add_array("t.arr_f32", [0.5, -1.25])
w.add_array("t.arr_str", ["a", "", "ccc"])
w.add_array("t.arr_empty", [])
w.add_array("t.nested", [[1, 2, 3], [4, 5]])
w.add_array("t.nested_str", [["x", "y"], ["z"]])
for qt in ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1"):
    typ = getattr(gguf.GGMLQuantizationType, qt)
    a = rng.standard_normal((6, 64)).astype(np.float32)
    if qt == "F32":
        w.add_tensor(f"w.{qt}", a)
    elif qt == "F16":
        w.add_tensor(f"w.{qt}", a.astype(np.float16))
    else:
        q = gguf.quants.quantize(a, typ)
        w.add_tensor(f"w.{qt}", q, raw_shape=q.shape, raw_dtype=typ)
w.add_tensor("w.3d", rng.standard_normal((2, 3, 32)).astype(np.float32))
w.write_header_to_file()
w.write_kv_data_to_file()
w.write_tensors_to_file()
w.close()
compare_file(path, "all value and tensor types")

# 2. The same file as GGUF version 2 (same layout, older version number).
with open(path, "rb") as f:
    data = bytearray(f.read())
struct.pack_into("<I", data, 4, 2)
v2 = os.path.join(tmp, "v2.gguf")
with open(v2, "wb") as f:
    f.write(data)
compare_file(v2, "GGUF v2")

# 3. The tokenizer vocab files (vocab only, no tensors).
for name in ("gpt-2", "starcoder", "llama-spm"):
    compare_file(os.path.join(args.data, "tokenizer", f"ggml-vocab-{name}.gguf"), f"vocab {name}")

# 4. The default model, every tensor dequantized.
if args.model and os.path.exists(args.model):
    compare_file(args.model, "default model")
else:
    print(f"SKIP: default model not found at {args.model!r} (scripts/setup.sh installs it)")

ck.finish()
