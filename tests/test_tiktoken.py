"""`shardserve tokenize` on a Hugging Face folder holding a tiktoken-format
tokenizer.tok.json (Grok-2's: regular_tokens and special_tokens as
{"bytes": [...], "token": id}, word_split "V1" or an explicit pat_str),
compared id for id with the PyPI `tiktoken` package's Encoding built from the
same ranks, pattern and special tokens.

The ranks are a real BPE's: GPT-2's vocabulary (tests/data/tokenizer), whose
ids are its merge order, turned back into bytes here.
"""
import atexit
import json
import os
import shutil
import sys
import tempfile

import tiktoken

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "lib"))
import gguf_craft as gc  # noqa: E402
from gguf_meta import gguf_metadata  # noqa: E402
from harness import Checker, parse_args  # noqa: E402

args = parse_args()
ck = Checker("tiktoken")
tmp = tempfile.mkdtemp(prefix="ss-tiktoken-")
atexit.register(shutil.rmtree, tmp, ignore_errors=True)

# word_split "V1" (the published Grok-2 loaders' pattern): Llama 3's split with
# digits one by one.
PAT_V1 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+"
          r"[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
# An explicit pat_str with possessive quantifiers (o200k-style).
PAT_POSSESSIVE = (r"'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++"
                  r"[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+")
SEP = "\n__tiktoken_case__\n"

# ---------------------------------------------------------------------------
# Ranks from GPT-2's vocabulary; special tokens after them.

meta = gguf_metadata(os.path.join(args.data, "tokenizer", "ggml-vocab-gpt-2.gguf"))
unbyte = {c: b for b, c in gc.byte_alphabet().items()}
ranks = {}
for i, (text, ty) in enumerate(zip(meta["tokenizer.ggml.tokens"],
                                   meta["tokenizer.ggml.token_type"])):
    if ty == 1:
        ranks[bytes(unbyte[c] for c in text)] = i
n_regular = len(ranks)
ck.check(n_regular == 50256 and all(bytes([b]) in ranks for b in range(256)),
         f"GPT-2 ranks: {n_regular} regular tokens")
specials = {"<|endoftext|>": 50256, "<|pad|>": 50257, "<|separator|>": 50258,
            "<|eos|>": 50259, "<|control1|>": 50260}


def write_folder(name, doc):
    d = os.path.join(tmp, name)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "tokenizer.tok.json"), "w") as f:
        json.dump(doc, f)
    return d


def tok_doc(pat=None, word_split="V1"):
    doc = {
        "regular_tokens": [{"bytes": list(b), "token": r} for b, r in ranks.items()],
        "special_tokens": [{"bytes": list(s.encode()), "token": i} for s, i in specials.items()],
        "word_split": word_split,
    }
    if pat is not None:
        doc["pat_str"] = pat
    return doc


corpus = [
    "Hello world",
    " Hello world",
    "Hello, World! HELLO WORLD? hello-world_2024",
    "I'LL do it, you'Re sure? they've, we'd, she's, it'S, I'm",
    "1234567890 3.14159 -42 1e10 0x1F 12,345,678",
    "   leading spaces, trailing spaces   ",
    "tabs\tand\t\ttabs \t \t",
    "line\nbreaks\n\n\nand \r\n windows \r\n\r\n",
    "\n\n\n",
    "  \n  \n   x",
    "caf\u00e9 na\u00efve r\u00e9sum\u00e9 \u00c5ngstr\u00f6m stra\u00dfe",
    "\u041f\u0440\u0438\u0432\u0435\u0442, \u043c\u0438\u0440! \u0395\u03bb\u03bb\u03ac\u03b4\u03b1",
    "\u4f60\u597d\uff0c\u4e16\u754c\u3002\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8 \ud55c\uad6d\uc5b4",
    "\u0645\u0631\u062d\u0628\u0627 \u0628\u0627\u0644\u0639\u0627\u0644\u0645 \u05e9\u05dc\u05d5\u05dd",
    "emoji \U0001f600\U0001f680 \U0001f468\u200d\U0001f469\u200d\U0001f467 flags \U0001f1fa\U0001f1f8",
    "\u212a kelvin \u017f long s \u0130 dotted \u2163 roman \u00bd half",
    "\u0663\u0664\u0665 Arabic-Indic digits, \uff11\uff12\uff13 fullwidth, \u2460 circled",
    "def f(x):\n    return x ** 2  # square\n\nprint(f(3))\n",
    "{\"key\": [1, 2, 3], \"nested\": {\"a\": null}}",
    "a\u00a0b\u2003c\u3000d\u2028e",
    "<|endoftext|>",
    "text<|endoftext|>more<|pad|> <|separator|>\n<|eos|><|control1|>",
    "<|endoftext|><|endoftext|>x<|endoftext",
    "x" * 300 + " " + "ab" * 200,
    "!!!???...,,,;;;:::",
    "",
]
with open(os.path.join(args.data, "tokenizer", "ggml-vocab-gpt-2.gguf.inp"), "rb") as f:
    corpus += [t.decode("utf-8") for t in f.read().split(b"\n__ggml_vocab_test__\n")[:-1]]
ck.check(all(SEP not in t for t in corpus), "a corpus text contains the separator")


def tokenize_all(folder, texts, special):
    flags = ["--special"] if special else []
    rc, out, err = ck.run(args.bin, ["tokenize", "--model", folder, "--split", SEP, *flags],
                          stdin=SEP.join(texts).encode("utf-8"))
    if rc != 0:
        return None, f"exit {rc}: {err.strip()}"
    lines = out.decode().split("\n")
    if len(lines) != len(texts) + 1:
        return None, f"{len(lines) - 1} lines for {len(texts)} texts"
    return [[int(x) for x in line.split()] for line in lines[:-1]], ""


for label, doc, pat in (("word_split V1", tok_doc(), PAT_V1),
                        ("pat_str", tok_doc(pat=PAT_POSSESSIVE, word_split="V2"),
                         PAT_POSSESSIVE)):
    folder = write_folder(label.replace(" ", "_"), doc)
    enc = tiktoken.Encoding(name=label, pat_str=pat, mergeable_ranks=ranks,
                            special_tokens=specials)
    for special in (False, True):
        got, err = tokenize_all(folder, corpus, special)
        mode = "--special" if special else "ordinary"
        if not ck.check(got is not None, f"{label} {mode}: {err}"):
            continue
        exact = 0
        for text, ids in zip(corpus, got):
            want = (enc.encode(text, allowed_special="all") if special
                    else enc.encode_ordinary(text))
            if ck.check(ids == want, f"{label} {mode}: {text[:60]!r}\n  expected {want[:40]}\n"
                        f"  got      {ids[:40]}"):
                exact += 1
        print(f"{label} {mode}: {exact}/{len(corpus)} exact", flush=True)

# A gap in the ids becomes an unused entry; the ids around it stay.
gap = tok_doc()
gap["special_tokens"] = [{"bytes": list(b"<|eos|>"), "token": 50300}]
folder = write_folder("gap", gap)
rc, out, err = ck.run(args.bin, ["tokenize", "--model", folder, "--special"],
                      stdin=b"Hello<|eos|>")
enc = tiktoken.Encoding(name="gap", pat_str=PAT_V1, mergeable_ranks=ranks,
                        special_tokens={"<|eos|>": 50300})
ck.check(rc == 0 and [int(x) for x in out.split()] ==
         enc.encode("Hello<|eos|>", allowed_special="all"),
         f"special token after a gap in the ids: exit {rc} {out!r} {err.strip()}")

# ---------------------------------------------------------------------------
# Bad files: exit 1 with a message naming the field.


def expect_fail(label, doc, needles, raw=None):
    d = os.path.join(tmp, "bad_" + label.replace(" ", "_"))
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "tokenizer.tok.json"), "w") as f:
        f.write(raw if raw is not None else json.dumps(doc))
    rc, out, err = ck.run(args.bin, ["tokenize", "--model", d], stdin=b"hello")
    ck.check(rc == 1 and all(n in err for n in needles),
             f"{label}: expected exit 1 mentioning {needles}, got exit {rc}: {err.strip()}")


small = {"regular_tokens": [{"bytes": [b], "token": b} for b in range(256)],
         "special_tokens": [{"bytes": list(b"<|eos|>"), "token": 256}], "word_split": "V1"}
expect_fail("not json", None, ["tokenizer.tok.json", "not valid JSON"], raw="{")
expect_fail("no regular tokens", {"special_tokens": [], "word_split": "V1"}, ["regular_tokens"])
expect_fail("unknown word_split", dict(small, word_split="V9"), ["word_split", "V9", "V1"])
expect_fail("byte out of range",
            dict(small, regular_tokens=small["regular_tokens"] + [{"bytes": [1, 300],
                                                                   "token": 257}]),
            ["regular_tokens[256].bytes[1]", "0 to 255"])
expect_fail("missing token id",
            dict(small, regular_tokens=small["regular_tokens"] + [{"bytes": [1, 2]}]),
            ["regular_tokens[256]", "'token'"])
expect_fail("negative token id",
            dict(small, special_tokens=[{"bytes": [60], "token": -3}]), ["special_tokens[0]"])
expect_fail("duplicate id",
            dict(small, special_tokens=[{"bytes": list(b"<|x|>"), "token": 5}]),
            ["special_tokens[0]", "token id 5 appears twice"])
expect_fail("bad pat_str", dict(small, pat_str="(unclosed"), ["pat_str", "does not compile"])

# The tiny vocabulary works: one token per byte, the special one with --special.
d = write_folder("small", small)
rc, out, err = ck.run(args.bin, ["tokenize", "--model", d, "--special"], stdin=b"ab<|eos|>")
ck.check(rc == 0 and out.split() == [b"97", b"98", b"256"], f"byte-only ranks: {out!r} {err}")

ck.finish()
