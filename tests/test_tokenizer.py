"""`shardserve tokenize` against llama.cpp's tokenizer test vectors, and the
edges a user would hit: BOS, empty input, NUL bytes and invalid UTF-8, special
tokens, bad vocabulary files, bad flags.

The expected ids in the *.out files come from llama.cpp; every case must match
exactly: the three vocabularies in tests/data/tokenizer/ and every
ggml-vocab-*.gguf with an .inp/.out pair in llama.cpp's models/ folder (found
through SS_LLAMACPP_SRC, by default the copy bench/llamacpp.sh fetches).  The
vocabularies there without test vectors must load and round-trip, or be
refused with a message naming the unsupported tokenizer.  Round trips are
checked with a decoder written here from the vocabulary as read from the file
(tests/lib/gguf_meta.py; GPT-2 byte alphabet, SentencePiece's "▁" and <0xNN>),
independent of the C detokenizer.
"""
import atexit
import os
import shutil
import sys
import tempfile


sys.path.insert(0, os.path.join(os.path.dirname(__file__), "lib"))
import gguf_craft as gc  # noqa: E402
from gguf_meta import gguf_metadata  # noqa: E402
from harness import Checker, parse_args  # noqa: E402

args = parse_args()
ck = Checker("tokenizer")
tmp = tempfile.mkdtemp(prefix="ss-tok-")
atexit.register(shutil.rmtree, tmp, ignore_errors=True)
SEP = b"\n__ggml_vocab_test__\n"
VOCABS = ["gpt-2", "starcoder", "llama-spm"]
alpha_of = gc.byte_alphabet()
LLAMACPP = os.environ.get("SS_LLAMACPP_SRC") or os.path.expanduser(
    "~/.cache/shardserve/llamacpp/llama-cpp-python-0.3.36/vendor/llama.cpp")
LLAMACPP_MODELS = os.path.join(LLAMACPP, "models")


def vocab_path(name):
    return os.path.join(args.data, "tokenizer", f"ggml-vocab-{name}.gguf")


def llamacpp_vocab(name):
    return os.path.join(LLAMACPP_MODELS, f"ggml-vocab-{name}.gguf")


# Every llama.cpp vocabulary with test vectors, and those without.
if not os.path.isdir(LLAMACPP_MODELS):
    ck.check(False, f"llama.cpp sources not found at {LLAMACPP} (set SS_LLAMACPP_SRC, or run "
             "bench/llamacpp.sh to fetch them): the vocabulary tests cannot run")
    LC_VECTORS, LC_OTHERS = [], []
else:
    _all = sorted(f[len("ggml-vocab-"):-len(".gguf")] for f in os.listdir(LLAMACPP_MODELS)
                  if f.startswith("ggml-vocab-") and f.endswith(".gguf"))
    LC_VECTORS = [n for n in _all if os.path.exists(llamacpp_vocab(n) + ".inp")
                  and os.path.exists(llamacpp_vocab(n) + ".out")]
    LC_OTHERS = [n for n in _all if n not in LC_VECTORS]
    ck.check(len(LC_VECTORS) >= 15, f"only {len(LC_VECTORS)} vocabularies with test vectors in "
             f"{LLAMACPP_MODELS}: {LC_VECTORS}")


def tokenize(model, data, flags=()):
    """Returns (exit code, ids or None, stdout bytes, stderr)."""
    rc, out, err = ck.run(args.bin, ["tokenize", "--model", model, *flags], stdin=data)
    ids = None
    if rc == 0:
        try:
            ids = [int(x) for x in out.split()]
        except ValueError:
            ids = None
    return rc, ids, out, err


class Vocab:
    """The vocabulary as read from the file here, and a decoder over it."""

    def __init__(self, path):
        m = gguf_metadata(path)
        self.tokens = m["tokenizer.ggml.tokens"]
        self.types = m["tokenizer.ggml.token_type"]
        self.model = m["tokenizer.ggml.model"]
        self.space_prefix = m.get("tokenizer.ggml.add_space_prefix", self.model == "llama")
        self.bos = m.get("tokenizer.ggml.bos_token_id")
        self.ids = {t: i for i, t in enumerate(self.tokens)}
        self.unbyte = {c: b for b, c in gc.byte_alphabet().items()}
        spm_bytes = self.model in ("llama", "gemma4")  # <0xNN> byte tokens, "\u2581" spaces
        self.spm = spm_bytes
        self.byte_ok = [(f"<0x{b:02X}>" in self.ids) if spm_bytes else alpha_of[b] in self.ids
                        for b in range(256)]

    def expected_back(self, data):
        """What decoding the ids of `data` must give: `data`, except that a byte
        outside valid UTF-8 for which the vocabulary has no token comes back as
        U+FFFD (llama.cpp turns every such byte into U+FFFD).  Byte-level BPE
        vocabularies also drop a byte they have no token for, and give back the
        GPT-2 character of a byte whose token is user-defined (DeepSeek's are),
        as llama.cpp does."""
        out, i = bytearray(), 0
        while i < len(data):
            for k in (1, 2, 3, 4):
                try:
                    if len(data[i:i + k].decode("utf-8")) == 1:
                        break
                except UnicodeDecodeError:
                    pass
            else:
                k = 0
            if k:
                chunk = data[i:i + k]
                i += k
            else:
                chunk = bytes([data[i]]) if self.byte_ok[data[i]] else "\ufffd".encode()
                i += 1
            out += chunk if self.spm else b"".join(self.bpe_byte_back(x) for x in chunk)
        return bytes(out)

    def bpe_byte_back(self, b):
        tid = self.ids.get(alpha_of[b])
        if tid is None:
            return b""
        return alpha_of[b].encode("utf-8") if self.types[tid] == 4 else bytes([b])

    def decode(self, ids):
        out = bytearray()
        for i in ids:
            text, ty = self.tokens[i], self.types[i]
            if ty == 3:  # control tokens render as nothing
                continue
            if self.spm:
                if ty == 6:
                    out.append(int(text[3:5], 16))
                else:
                    out += text.replace("\u2581", " ").encode("utf-8")
            elif ty == 4:  # user-defined tokens render as their text
                out += text.encode("utf-8")
            else:
                out += bytes(self.unbyte[c] for c in text)
        if self.spm and self.space_prefix and out.startswith(b" "):
            del out[0]  # the space the tokenizer put in front
        return bytes(out)


# ---------------------------------------------------------------------------
# llama.cpp's test vectors, exact, plus an independent round trip.

def tokenize_parts(model, parts):
    """Each part tokenized on its own by one process (--split); a list of id
    lists, or None with the error."""
    rc, out, err = ck.run(args.bin, ["tokenize", "--model", model, "--split", SEP.decode()],
                          stdin=SEP.join(parts))
    if rc != 0:
        return None, f"exit {rc}: {err.strip()}"
    lines = out.decode().split("\n")
    if len(lines) != len(parts) + 1 or lines[-1] != "":
        return None, f"{len(lines) - 1} lines of output for {len(parts)} parts"
    return [[int(x) for x in line.split()] for line in lines[:-1]], ""


vocabs = {}
# The text WordPiece (BERT) gives back is lowercased and without accents: its
# ids are checked against llama.cpp's, not for a round trip.
NO_ROUND_TRIP = {"bert"}
for name, path in [(n, vocab_path(n)) for n in VOCABS] + [
        ("llama.cpp " + n, llamacpp_vocab(n)) for n in LC_VECTORS]:
    v = vocabs[name] = Vocab(path)
    with open(path + ".inp", "rb") as f:
        inputs = f.read().split(SEP)
    if inputs and inputs[-1] == b"":
        inputs = inputs[:-1]  # the separator after the last case (not in every file)
    with open(path + ".out", "rb") as f:
        expected = f.read().decode("utf-8").split("\n")
    if not ck.check(len(expected) >= len(inputs), f"{name}: .out has fewer lines than cases"):
        continue
    results, err = tokenize_parts(path, inputs)
    if not ck.check(results is not None, f"{name}: {err}"):
        continue
    exact = 0
    for i, text in enumerate(inputs):
        want = [int(x) for x in expected[i].split()]
        got = results[i]
        if ck.check(got == want, f"{name}: case {i} {text.decode('utf-8')!r}\n  expected "
                    f"{want}\n  got      {got}"):
            exact += 1
        if v.model not in NO_ROUND_TRIP:
            back = v.decode(got)
            ck.check(back == text, f"{name}: case {i} does not round-trip: {text!r} -> {got} -> "
                     f"{back!r}")
    print(f"{name}: {exact}/{len(inputs)} exact", flush=True)
    ck.check(exact == len(inputs), f"{name}: {len(inputs) - exact} vectors differ")

# The llama.cpp vocabularies without test vectors: the .inp texts of gpt-2 must
# round-trip through them, or the tokenizer must be refused by name.
with open(vocab_path("gpt-2") + ".inp", "rb") as f:
    sample = f.read().split(SEP)[:-1]
UNSUPPORTED = {"t5": "tokenizer.ggml.model = 't5' is not supported"}
for n in LC_OTHERS:
    path = llamacpp_vocab(n)
    v = Vocab(path)
    results, err = tokenize_parts(path, sample)
    if v.model in UNSUPPORTED:
        ck.check(results is None and UNSUPPORTED[v.model] in err,
                 f"llama.cpp {n}: expected a refusal naming '{v.model}', got {err or results}")
        print(f"llama.cpp {n}: refused ({v.model})", flush=True)
        continue
    if not ck.check(results is not None, f"llama.cpp {n}: {err}"):
        continue
    ok = 0
    for text, ids in zip(sample, results):
        back = v.decode(ids)
        want = v.expected_back(text)
        if ck.check(all(0 <= i < len(v.tokens) for i in ids) and back == want,
                    f"llama.cpp {n}: {text!r} -> {ids} -> {back!r}"):
            ok += 1
    print(f"llama.cpp {n}: {ok}/{len(sample)} round trips", flush=True)

# ---------------------------------------------------------------------------
# BOS, empty input, bytes that are not text.

spm = vocab_path("llama-spm")
rc, plain, _, _ = tokenize(spm, b"Hello world")
rc2, with_bos, _, _ = tokenize(spm, b"Hello world", ["--bos"])
ck.check(rc == 0 and rc2 == 0 and with_bos == [vocabs["llama-spm"].bos] + plain,
         f"spm --bos: {with_bos} is not BOS + {plain}")
gpt2 = vocab_path("gpt-2")
rc, plain, _, _ = tokenize(gpt2, b"Hello world")
rc2, with_bos, _, _ = tokenize(gpt2, b"Hello world", ["--bos"])
ck.check(rc == 0 and rc2 == 0 and with_bos == [vocabs["gpt-2"].bos] + plain,
         f"gpt-2 --bos: {with_bos} is not BOS + {plain}")

for name in VOCABS:
    rc, ids, out, err = tokenize(vocab_path(name), b"")
    ck.check(rc == 0 and out == b"\n", f"{name}: empty input gave exit {rc}, {out!r} {err}")
    rc, ids, out, err = tokenize(vocab_path(name), b"", ["--bos"])
    ck.check(rc == 0 and ids == [vocabs[name].bos], f"{name}: empty input with --bos gave {out!r}")

odd_inputs = [
    b"\x00",
    b"a\x00b\x00\x00c",
    b"\xff",
    b"\xff\xfe\xfd",
    b"caf\xe9 na\xefve",                 # Latin-1, not UTF-8
    b"\xe2\x82",                         # a 3-byte sequence cut short
    b"\xf0\x9f\xa6",                     # a 4-byte sequence cut short
    b"x \xf0\x9f\xa6\x99\xf0\x9f y",     # an emoji, then a broken one
    b"\xc0\xaf \xed\xa0\x80 \xf4\x90\x80\x80",  # overlong, surrogate, above U+10FFFF
    b"\x80\x80 trailing continuation bytes",
    b" \t\n\r\x0b\x0c\x1c\x85 \xc2\x85 \xe2\x80\xa8",
    bytes(range(256)),
]
for name in VOCABS:
    v = vocabs[name]
    for data in odd_inputs:
        rc, ids, out, err = tokenize(vocab_path(name), data)
        if not ck.check(rc == 0 and ids is not None,
                        f"{name}: {data!r} gave exit {rc}: {err.strip()}"):
            continue
        ck.check(all(0 <= i < len(v.tokens) for i in ids), f"{name}: {data!r}: id out of range")
        back = v.decode(ids)
        want = v.expected_back(data)
        ck.check(back == want, f"{name}: {data!r} -> {ids} -> {back!r}, expected {want!r}")

# The same through the vocabularies with new pre-tokenizers and encoders, one
# process each (BERT's normalizer changes the text: ids in range only).
for n in ("gemma-4", "deepseek-llm", "deepseek-coder", "falcon", "qwen35", "bert-bge"):
    name = "llama.cpp " + n
    if name not in vocabs:
        continue
    v = vocabs[name]
    results, err = tokenize_parts(llamacpp_vocab(n), odd_inputs)
    if not ck.check(results is not None, f"{name}: odd inputs: {err}"):
        continue
    for data, ids in zip(odd_inputs, results):
        ck.check(all(0 <= i < len(v.tokens) for i in ids), f"{name}: {data!r}: id out of range")
        if v.model in NO_ROUND_TRIP:
            continue
        back, want = v.decode(ids), v.expected_back(data)
        ck.check(back == want, f"{name}: {data!r} -> {ids} -> {back!r}, expected {want!r}")

# A long input (every id on one line, nothing lost).
long_text = ("The quick brown fox jumps over the lazy dog. 1234567890 " * 2000).encode()
for name in VOCABS:
    rc, ids, out, err = tokenize(vocab_path(name), long_text)
    ck.check(rc == 0 and out.count(b"\n") == 1 and vocabs[name].decode(ids) == long_text,
             f"{name}: long input: exit {rc} {err.strip()}")

# ---------------------------------------------------------------------------
# Special tokens.

# Control tokens are matched only with --special.
sc = vocab_path("starcoder")
rc, ids, _, _ = tokenize(sc, b"<fim_prefix>def f():<fim_suffix>", ["--special"])
ck.check(rc == 0 and ids and ids[0] == 1 and 3 in ids,
         f"starcoder --special: <fim_prefix>/<fim_suffix> not recognised: {ids}")
rc, ids, _, _ = tokenize(sc, b"<fim_prefix>def f():<fim_suffix>")
ck.check(rc == 0 and ids and 1 not in ids and 3 not in ids,
         f"starcoder without --special matched control tokens: {ids}")

# SPM: text after a special token gets the leading space too (llama.cpp's
# is_prev_special).
rc, hello, _, _ = tokenize(spm, b"Hello")
rc2, ids, _, _ = tokenize(spm, b"<s>Hello", ["--special"])
ck.check(rc == 0 and rc2 == 0 and ids == [1] + hello, f"spm '<s>Hello' --special: {ids}")

# A crafted vocabulary: byte tokens, a user-defined token (always matched), and
# a control token (only with --special), the longer one winning an overlap.
alpha = gc.byte_alphabet()


def crafted(**changes):
    g = gc.Gguf()
    tokens = [alpha[b] for b in range(256)] + ["<|endoftext|>", "<tool>", "<tool>x", "<|im_end|>"]
    types = [1] * 256 + [3, 4, 4, 3]
    g.add("tokenizer.ggml.model", gc.STR, "gpt2")
    g.add("tokenizer.ggml.pre", gc.STR, "smollm")
    g.add("tokenizer.ggml.tokens", gc.ARR, (gc.STR, tokens))
    g.add("tokenizer.ggml.token_type", gc.ARR, (gc.I32, types))
    g.add("tokenizer.ggml.merges", gc.ARR, (gc.STR, [alpha[ord("a")] + " " + alpha[ord("b")]]))
    g.add("tokenizer.ggml.bos_token_id", gc.U32, 256)
    g.add("tokenizer.ggml.eos_token_id", gc.U32, 256)
    for key, val in changes.items():
        key = "tokenizer.ggml." + key
        if val is None:
            g.drop(key)
        else:
            g.set(key, *val)
    return g


def write(name, g):
    p = os.path.join(tmp, name)
    with open(p, "wb") as f:
        f.write(g.build())
    return p


cv = write("crafted.gguf", crafted())
rc, ids, _, err = tokenize(cv, b"a<tool>b<tool>xy<|im_end|>")
ck.check(rc == 0 and ids == [97, 257, 98, 258, 121] + [ord(c) for c in "<|im_end|>"],
         f"user-defined tokens (always) / control (not without --special): {ids} {err}")
# "a b" is a merge but "ab" is not in this vocabulary: the merged symbol falls
# back to one token per byte.
rc, ids, _, err = tokenize(cv, b"ab<|im_end|>", ["--special"])
ck.check(rc == 0 and ids == [97, 98, 259], f"'ab<|im_end|>' --special: {ids} {err}")

# Pre-tokenizer choice, on a vocabulary built to show it: byte tokens plus
# "12", "123", "34", "'S" and "abc"; merges "3 4" before "1 2" before "12 3".
#   gpt-2:  \p{N}+ keeps "1234" whole, so "3 4" goes first: 12 34; "'S" is
#           punctuation then a letter; "abc" comes from no merge: a b c.
#   llama3: \p{N}{1,3} cuts "123" | "4": 123 4; "'S" is a contraction (case-
#           insensitive); ignore_merges takes "abc" from the vocabulary whole.
def pre_vocab(pre):
    g = gc.Gguf()
    extra = ["12", "123", "34", "'S", "abc"]
    tokens = [alpha[b] for b in range(256)] + extra
    g.add("tokenizer.ggml.model", gc.STR, "gpt2")
    g.add("tokenizer.ggml.pre", gc.STR, pre)
    g.add("tokenizer.ggml.tokens", gc.ARR, (gc.STR, tokens))
    g.add("tokenizer.ggml.token_type", gc.ARR, (gc.I32, [1] * len(tokens)))
    g.add("tokenizer.ggml.merges", gc.ARR, (gc.STR, ["3 4", "1 2", "12 3", "' S"]))
    return write(f"pre-{pre}.gguf", g)


T12, T123, T34, TS, TABC = 256, 257, 258, 259, 260
for pre, want in (("gpt-2", [T12, T34, ord("'"), ord("S"), ord("a"), ord("b"), ord("c")]),
                  ("llama3", [T123, ord("4"), TS, TABC])):
    rc, ids, _, err = tokenize(pre_vocab(pre), b"1234'Sabc")
    ck.check(rc == 0 and ids == want, f"pre-tokenizer {pre}: '1234'Sabc' gave {ids}, expected "
             f"{want} {err}")

# ---------------------------------------------------------------------------
# Bad vocabularies: exit 1 with a message naming the key.


def expect_fail(label, g, needles):
    rc, _, out, err = tokenize(write(label.replace(" ", "_") + ".gguf", g), b"hello")
    ok = rc == 1 and all(n in err for n in needles)
    ck.check(ok, f"{label}: expected exit 1 mentioning {needles}, got exit {rc}: {err.strip()}")


expect_fail("missing tokens", crafted(tokens=None), ["tokenizer.ggml.tokens"])
expect_fail("missing merges", crafted(merges=None), ["tokenizer.ggml.merges"])
expect_fail("missing model", crafted(model=None), ["tokenizer.ggml.model"])
expect_fail("unknown model", crafted(model=(gc.STR, "no-such-model")),
            ["tokenizer.ggml.model", "no-such-model", "gpt2", "llama", "bert", "gemma4"])
expect_fail("unknown pre", crafted(pre=(gc.STR, "no-such-pre")),
            ["tokenizer.ggml.pre", "no-such-pre", "supported", "smollm", "llama3"])
expect_fail("bos out of range", crafted(bos_token_id=(gc.U32, 99999)),
            ["tokenizer.ggml.bos_token_id = 99999 is outside the vocabulary (260 tokens)"])
expect_fail("eos out of range", crafted(eos_token_id=(gc.I32, -1)),
            ["tokenizer.ggml.eos_token_id = -1"])
expect_fail("eot out of range", crafted(eot_token_id=(gc.U32, 260)),
            ["tokenizer.ggml.eot_token_id = 260"])
expect_fail("short token_type", crafted(token_type=(gc.ARR, (gc.I32, [1, 1]))),
            ["tokenizer.ggml.token_type"])
expect_fail("tokens of the wrong type", crafted(tokens=(gc.ARR, (gc.I32, [1, 2]))),
            ["tokenizer.ggml.tokens"])

# Missing pre-tokenizer: llama.cpp's "default" list, not an error.
rc, ids, _, err = tokenize(write("nopre.gguf", crafted(pre=None)), b"ab 12")
ck.check(rc == 0 and ids is not None, f"missing tokenizer.ggml.pre: exit {rc} {err.strip()}")

# ---------------------------------------------------------------------------
# Flags.

rc, out, err = ck.run(args.bin, ["tokenize", "--help"])
help_text = out.decode()
ck.check(rc == 0 and all(f in help_text for f in ("--model", "--bos", "--special", "--help")),
         f"tokenize --help: exit {rc}, {help_text!r}")
rc, out, err = ck.run(args.bin, ["tokenize", "--bogus"], stdin=b"x")
ck.check(rc == 2 and "--bogus" in err, f"tokenize --bogus: exit {rc} {err!r}")
rc, out, err = ck.run(args.bin, ["tokenize", "--model", gpt2, "--split", ""], stdin=b"x")
ck.check(rc == 2 and "--split" in err, f"tokenize --split '': exit {rc} {err!r}")
rc, out, err = ck.run(args.bin, ["tokenize", "--model", gpt2, "--split", "|"], stdin=b"Hello|"
                      b"|world")
_, hello, _, _ = tokenize(gpt2, b"Hello")
_, world, _, _ = tokenize(gpt2, b"world")
ck.check(rc == 0 and out.decode() == " ".join(map(str, hello)) + "\n\n" +
         " ".join(map(str, world)) + "\n", f"tokenize --split '|': exit {rc} {out!r} {err!r}")
rc, out, err = ck.run(args.bin, ["tokenize", "--model"], stdin=b"x")
ck.check(rc == 2, f"tokenize --model without a value: exit {rc} {err!r}")
rc, out, err = ck.run(args.bin, ["tokenize", "--model", gpt2, "extra"], stdin=b"x")
ck.check(rc == 2 and "extra" in err, f"tokenize with a stray argument: exit {rc} {err!r}")
rc, out, err = ck.run(args.bin, ["tokenize", "--model", os.path.join(tmp, "nope.gguf")],
                      stdin=b"x")
ck.check(rc == 1 and "nope.gguf" in err, f"tokenize on a missing file: exit {rc} {err!r}")

# ---------------------------------------------------------------------------
# The default model (SmolLM2): chat special tokens.

if args.model and os.path.exists(args.model):
    mv = Vocab(args.model)
    im_start, im_end = mv.ids["<|im_start|>"], mv.ids["<|im_end|>"]
    text = b"<|im_start|>user\nHi<|im_end|>"
    rc, ids, _, err = tokenize(args.model, text, ["--special"])
    ck.check(rc == 0 and ids and ids[0] == im_start and ids[-1] == im_end
             and ids.count(im_start) == 1 and ids.count(im_end) == 1,
             f"default model --special: {ids} (<|im_start|> {im_start}, <|im_end|> {im_end}) {err}")
    ck.check(rc == 0 and mv.decode(ids[1:-1]) == b"user\nHi", f"default model: {ids} decodes "
             f"to {mv.decode(ids[1:-1])!r}")
    rc, ids, _, err = tokenize(args.model, text)
    ck.check(rc == 0 and ids and im_start not in ids and im_end not in ids,
             f"default model without --special matched special tokens: {ids}")
    rc, ids, _, err = tokenize(args.model, b"2024")
    ck.check(rc == 0 and ids == [mv.ids[c] for c in "2024"], f"smollm splits digits: {ids}")
else:
    print(f"SKIP: default model {args.model!r} not found; its special-token checks did not run")

ck.finish()
