"""Bad input never crashes us: malformed GGUF files, missing files and bad
flags each give one clear error line (naming the file and the field), exit
code 1 (bad file) or 2 (bad usage), and never a signal or a sanitizer report.
"""
import os
import struct
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "lib"))
import gguf_craft as gc  # noqa: E402
from harness import Checker, parse_args  # noqa: E402

args = parse_args()
ck = Checker("bad input")
tmp = tempfile.mkdtemp(prefix="ss-bad-")


def write(name, data):
    path = os.path.join(tmp, name)
    with open(path, "wb") as f:
        f.write(data)
    return path


def expect(label, argv, code, *needles, stdin=b""):
    rc, out, err = ck.run(args.bin, argv, stdin=stdin, timeout=60)
    if rc is None:
        return
    ok = ck.check(rc == code, f"{label}: exit {rc}, expected {code}; stderr: {err.strip()[:300]}")
    for n in needles:
        ck.check(n.lower() in err.lower(), f"{label}: stderr lacks {n!r}: {err.strip()[:300]}")
    if ok:
        print(f"ok   {label}: {err.strip().splitlines()[0] if err.strip() else ''}")


def patch(data, offset, fmt, value):
    b = bytearray(data)
    struct.pack_into(fmt, b, offset, value)
    return bytes(b)


# A valid tiny model to break in many ways.
base = gc.tiny_llama()
good = base.build()
off = dict(base.offsets)
good_path = write("good.gguf", good)
rc, _, err = ck.run(args.bin, ["info", "--model", good_path])
ck.check(rc == 0, f"the untouched tiny model must load: {err}")

# ---- missing / empty / not GGUF ---------------------------------------------
expect("missing file", ["info", "--model", os.path.join(tmp, "nope.gguf")], 1, "nope.gguf",
       "cannot open")
expect("directory", ["info", "--model", tmp], 1, "not a regular file")
expect("empty file", ["info", "--model", write("empty.gguf", b"")], 1, "empty.gguf", "empty")
expect("bad magic", ["info", "--model", write("magic.gguf", b"GGML" + good[4:])], 1, "magic.gguf",
       "bad magic")
expect("text file", ["info", "--model", write("text.gguf", b"hello world, this is not a model\n")],
       1, "bad magic")
for v in (1, 4, 0xFFFFFFFF):
    expect(f"version {v}", ["info", "--model", write(f"v{v}.gguf", patch(good, off["version"], "<I", v))],
           1, "unsupported GGUF version")

# ---- truncation at every structural boundary --------------------------------
cuts = {
    "inside magic": 2,
    "inside header counts": off["n_kv"] + 3,
    "inside a key": off["kv:llama.block_count"] + 5,
    "inside the token list": off["val:tokenizer.ggml.tokens"] + 100,
    "inside tensor infos": off["tensor:blk.0.attn_q.weight"] + 10,
    "before tensor data": off["data"] - 1 if off["data"] % 32 else off["data"] - 8,
    "inside tensor data": off["data"] + 1000,
    "one byte short": len(good) - 1,
}
for label, n in cuts.items():
    expect(f"truncated {label}", ["info", "--model", write(f"trunc{n}.gguf", good[:n])], 1,
           f"trunc{n}.gguf")
expect("truncated names the field", ["info", "--model", write("trunc_kv.gguf", good[:off["kv:llama.block_count"] + 5])],
       1, "truncated")
expect("truncated data names the tensor", ["info", "--model", write("trunc_data.gguf", good[:len(good) - 1])],
       1, "past the end", "blk.1.ffn_down.weight")

# ---- huge counts and lengths --------------------------------------------------
tok_val = off["val:tokenizer.ggml.tokens"]
expect("huge array length", ["info", "--model", write("hugearr.gguf", patch(good, tok_val + 4, "<Q", 1 << 62))],
       1, "tokenizer.ggml.tokens", "array of")
expect("huge string length", ["info", "--model", write("hugestr.gguf", patch(good, off["val:general.name"], "<Q", 1 << 60))],
       1, "general.name", "string length")
expect("huge kv count", ["info", "--model", write("hugekv.gguf", patch(good, off["n_kv"], "<Q", 1 << 61))],
       1, "kv_count")
expect("huge tensor count", ["info", "--model", write("huget.gguf", patch(good, off["n_tensors"], "<Q", (1 << 64) - 1))],
       1, "tensor_count")
expect("huge key length", ["info", "--model", write("hugekey.gguf", patch(good, off["kv:general.name"], "<Q", 1 << 40))],
       1, "string length")
deep = gc.tiny_llama()
nested = (gc.U8, [1])
for _ in range(12):
    nested = (gc.ARR, [nested])
deep.add("test.deep", gc.ARR, nested)
expect("deeply nested array", ["info", "--model", write("deep.gguf", deep.build())], 1, "nested deeper")
bt = gc.tiny_llama()
bt.add("test.badtype", 13, 0)
expect("unknown value type", ["info", "--model", write("vtype.gguf", bt.build())], 1, "unknown value type")

# ---- tensor infos --------------------------------------------------------------
q = "blk.0.attn_q.weight"
expect("tensor data offset past end",
       ["info", "--model", write("offpast.gguf", base.build(tensor_offsets={q: 1 << 40}))], 1, q,
       "past the end")
expect("tensor offset overflow",
       ["info", "--model", write("offovf.gguf", base.build(tensor_offsets={q: (1 << 64) - 32}))], 1, q)
expect("unaligned tensor offset",
       ["info", "--model", write("unal.gguf", base.build(tensor_offsets={q: 4}))], 1, q, "alignment")
expect("unknown tensor type",
       ["info", "--model", write("ttype.gguf", patch(good, off["ttype:" + q], "<I", 99))], 1, q,
       "unknown tensor type 99")
expect("too many dims", ["info", "--model", write("ndims.gguf", base.build(n_dims={q: 7}))], 1, q, "n_dims")
zero = gc.tiny_llama()
zero.tensors = [(n, [0, s[1]] if n == q else s, t, d) for (n, s, t, d) in zero.tensors]
expect("zero dimension", ["info", "--model", write("zero.gguf", zero.build())], 1, q, "dimension")
big = gc.tiny_llama()
big.tensors = [(n, [1 << 40, 1 << 40] if n == q else s, t, d) for (n, s, t, d) in big.tensors]
expect("element count overflow", ["info", "--model", write("bigdims.gguf", big.build())], 1, q)
k6 = gc.tiny_llama()
k6.tensors = [(n, s, gc.GGML_Q6_K, d) if n == q else (n, s, t, d) for (n, s, t, d) in k6.tensors]
expect("type without a kernel (Q6_K, row not a block multiple)",
       ["info", "--model", write("q6k.gguf", k6.build())], 1, q)
dup = gc.tiny_llama()
dup.tensors.append(dup.tensors[1])
expect("duplicate tensor", ["info", "--model", write("dupt.gguf", dup.build())], 1, "duplicate tensor")
dupk = gc.tiny_llama()
dupk.add("general.name", gc.STR, "again")
expect("duplicate key", ["info", "--model", write("dupk.gguf", dupk.build())], 1, "duplicate metadata key")
for a in (0, 3, 1 << 30):
    al = gc.tiny_llama()
    al.add("general.alignment", gc.U32, a)
    expect(f"alignment {a}", ["info", "--model", write(f"al{a}.gguf", al.build())], 1, "general.alignment")

# ---- model-level checks ----------------------------------------------------------
expect("unknown architecture (vocab-only gpt2 file)",
       ["info", "--model", os.path.join(args.data, "tokenizer", "ggml-vocab-gpt-2.gguf")], 1,
       "general.architecture", "gpt2", "not supported")
ar = gc.tiny_llama()
ar.set("general.architecture", gc.STR, "grok-9")
expect("unknown architecture", ["info", "--model", write("arch.gguf", ar.build())], 1, "'grok-9'")
mt = gc.tiny_llama()
mt.tensors = [t for t in mt.tensors if t[0] != "blk.1.ffn_up.weight"]
expect("missing tensor", ["info", "--model", write("missing.gguf", mt.build())], 1,
       "missing tensor 'blk.1.ffn_up.weight'")
sh = gc.tiny_llama()
sh.tensors = [(n, [s[0], s[1] + 1] if n == q else s, t, d + b"\0" * 256 if n == q else d)
              for (n, s, t, d) in sh.tensors]
expect("wrong shape", ["info", "--model", write("shape.gguf", sh.build())], 1, q, "shape")
hp = gc.tiny_llama()
hp.set("llama.block_count", gc.STR, "two")
expect("hyper-parameter of the wrong type", ["info", "--model", write("hptype.gguf", hp.build())], 1,
       "llama.block_count", "string")
hp0 = gc.tiny_llama()
hp0.set("llama.attention.head_count", gc.U32, 0)
expect("zero heads", ["info", "--model", write("hp0.gguf", hp0.build())], 1,
       "llama.attention.head_count", "range")
kvh = gc.tiny_llama()
kvh.set("llama.attention.head_count_kv", gc.U32, 3)
expect("heads not a multiple of KV heads", ["info", "--model", write("kvh.gguf", kvh.build())], 1,
       "head_count_kv")
nb = gc.tiny_llama()
nb.drop("llama.block_count")
expect("missing hyper-parameter", ["info", "--model", write("nobc.gguf", nb.build())], 1,
       "llama.block_count", "missing")
bos = gc.tiny_llama()
bos.set("tokenizer.ggml.bos_token_id", gc.U32, 100000)
expect("BOS id outside the vocabulary", ["info", "--model", write("bos.gguf", bos.build())], 1,
       "tokenizer.ggml.bos_token_id")
tm = gc.tiny_llama()
tm.set("tokenizer.ggml.model", gc.STR, "wordpiece9")
expect("unknown tokenizer model", ["info", "--model", write("tokm.gguf", tm.build())], 1,
       "tokenizer.ggml.model")
tp = gc.tiny_llama()
tp.set("tokenizer.ggml.pre", gc.STR, "no-such-pre")
expect("unknown pre-tokenizer", ["info", "--model", write("tokp.gguf", tp.build())], 1,
       "tokenizer.ggml.pre")

# The same malformed files through generate and tokenize (other code paths).
for name in ("trunc%d.gguf" % cuts["inside tensor infos"], "hugearr.gguf", "ttype.gguf", "offpast.gguf"):
    expect(f"generate on {name}", ["generate", "--model", os.path.join(tmp, name), "-p", "hi", "-n", "2"],
           1, name)
expect("tokenize on a truncated file", ["tokenize", "--model", os.path.join(tmp, "trunc%d.gguf" % cuts["inside the token list"])],
       1, "tokenizer.ggml.tokens", stdin=b"hello")

# ---- bad flags ---------------------------------------------------------------------
m = ["--model", good_path]
expect("no command", [], 2)
expect("unknown command", ["frobnicate"], 2, "unknown command")
expect("unknown option", ["generate", *m, "-p", "x", "--frobnicate"], 2, "--frobnicate")
expect("missing value", ["generate", *m, "-p"], 2, "needs a value")
expect("non-numeric -n", ["generate", *m, "-p", "x", "-n", "ten"], 2, "--max-tokens", "ten")
expect("negative -n", ["generate", *m, "-p", "x", "-n", "-3"], 2, "--max-tokens")
expect("threads 0", ["generate", *m, "-p", "x", "--threads", "0"], 2, "--threads")
expect("temperature -1", ["generate", *m, "-p", "x", "--temp", "-1"], 2, "--temp")
expect("temperature nan", ["generate", *m, "-p", "x", "--temp", "nan"], 2, "--temp")
expect("top-p 2", ["generate", *m, "-p", "x", "--top-p", "2"], 2, "--top-p")
expect("top-k -1", ["generate", *m, "-p", "x", "--top-k", "-1"], 2, "--top-k")
expect("seed overflow", ["generate", *m, "-p", "x", "--seed", "99999999999999999999999"], 2, "--seed")
expect("no prompt", ["generate", *m], 2, "--prompt")
expect("prompt and prompt file", ["generate", *m, "-p", "x", "-f", good_path], 2, "--prompt")
expect("missing prompt file", ["generate", *m, "-f", os.path.join(tmp, "none.txt")], 1, "none.txt")
expect("logprobs without json", ["generate", *m, "-p", "x", "--logprobs", "3"], 2, "--json")
expect("stray argument", ["generate", *m, "-p", "x", "extra"], 2, "extra")
expect("empty prompt", ["generate", *m, "-p", ""], 2, "empty")
expect("prompt + max_tokens beyond the context", ["generate", *m, "-p", "hello", "-n", "300"], 2,
       "context length (256)", "300")
expect("--ctx smaller than the prompt", ["generate", *m, "-p", "hello world", "--ctx", "4", "-n", "1"], 2,
       "context length (4)")
expect("unknown chat template", ["generate", *m, "-p", "x", "--chat", "--chat-template", "vicuna9"], 1,
       "vicuna9")
expect("chat on a model without a template", ["generate", *m, "-p", "x", "--chat"], 1,
       "no chat template; pass --chat-template")
expect("serve step log in a missing folder",
       ["serve", *m, "--chat-template", "chatml", "--port", "0", "--step-log", os.path.join(tmp, "no", "steps.csv")], 1,
       "--step-log", "steps.csv")
expect("serve on a missing model exits", ["serve", "--model", os.path.join(tmp, "gone.gguf"),
                                         "--port", "0"], 1, "gone.gguf")
expect("info unknown option", ["info", "--bogus"], 2, "--bogus")
expect("tokenize unknown option", ["tokenize", "--bogus"], 2, "--bogus")
expect("tokenize missing model", ["tokenize", "--model", os.path.join(tmp, "x.gguf")], 1, "x.gguf", stdin=b"hi")

# Random corruption: flip bytes all over the header region; any outcome but a
# crash (or a sanitizer report) is acceptable.
import random  # noqa: E402

rnd = random.Random(1234)
hdr_end = off["data"]
for i in range(60):
    b = bytearray(good)
    for _ in range(rnd.randint(1, 8)):
        b[rnd.randrange(hdr_end)] = rnd.randrange(256)
    p = write(f"fuzz{i}.gguf", bytes(b))
    rc, _, err = ck.run(args.bin, ["info", "--model", p], timeout=60)
    ck.check(rc in (0, 1), f"fuzz case {i}: exit {rc}: {err[:300]}")
    if rc == 0:
        ck.run(args.bin, ["generate", "--model", p, "-p", "ab", "-n", "3", "--temp", "0"], timeout=60)
print("random header corruption: 60 files, no crash")

ck.finish()
