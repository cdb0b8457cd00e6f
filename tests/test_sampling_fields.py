"""The request's sampling fields end to end: presence_penalty,
frequency_penalty, repetition_penalty, logit_bias, min_tokens, stop_token_ids
and bad_words, each checked against a computation made here in numpy.

Greedy requests report the top-20 log-probabilities of every step; the
reported ones are the model's own (before the fields), which is checked
against requests without the fields on the same token prefix.  From them the
penalised argmax is recomputed here and must be the token the server chose.
The repetition penalty acts on logits, not log-probabilities (its sign rule
needs the logit itself), so it is checked on a tiny random model whose every
logit the float64 reference (tests/reference/llama_ref.py) computes.  Then:
seeded sampling with the fields reproduces alone and in a batch of 8
concurrent requests, and out-of-range values are a 400 naming the field.
"""
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "lib"))
sys.path.insert(0, os.path.join(HERE, "reference"))
from gguf_meta import gguf_metadata  # noqa: E402
from harness import Checker, parse_args  # noqa: E402
from server import Server  # noqa: E402
import llama_ref  # noqa: E402

args = parse_args()
T0 = time.monotonic()


def mark(what):
    print(f"{time.monotonic() - T0:6.1f} s  {what}", flush=True)


ck = Checker("sampling fields")
SANITIZED = os.environ.get("SS_SANITIZED") == "1"
# Penalised log-probabilities are compared in float32 as the server computes
# them: a choice is right when no candidate beats it by more than this.
ATOL = 1e-4
# The same prefix computed as one prefill or after decode steps sums in a
# different order: the top-20 log-probabilities agree to this.
RAW_ATOL = 2e-3


# --------------------------------------------------------------------------
# The vocabulary, read from the GGUF's metadata (tests/lib/gguf_meta.py, the
# published layout): each token's text
# as the completions API shows it, and back.

def vocab_texts(path):
    meta = gguf_metadata(path)
    toks, types = meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.token_type"]
    u2b = llama_ref._gpt2_unicode_to_byte()
    out = []
    for s, t in zip(toks, types):
        if t in (llama_ref.TT_CONTROL, llama_ref.TT_USER_DEFINED):
            out.append(None)  # special: no text of its own here
            continue
        b = bytes(u2b[ch] for ch in s) if all(ch in u2b for ch in s) else s.encode()
        try:
            out.append(b.decode("utf-8"))
        except UnicodeDecodeError:
            out.append(None)  # a partial character: ambiguous as text
    return out


texts = vocab_texts(args.model)
mark("vocabulary read")
text_id = {}
for i, t in enumerate(texts):
    if t is not None:
        text_id[t] = -1 if t in text_id else i  # -1: two tokens share the text


def ids_of(strings, what):
    ids = [text_id.get(s) for s in strings]
    if not ck.check(all(i is not None and i >= 0 for i in ids),
                    f"{what}: tokens {strings} do not map to single vocabulary ids"):
        return None
    return ids


def complete(srv, body, status=200):
    code, b = srv.post("/v1/completions", body)
    r = json.loads(b) if b else {}
    ck.check(code == status, f"{body}: status {code} != {status}: {b[:300]!r}")
    return r if code == status else None


def steps(r):
    """[(chosen text, chosen logprob, {text: logprob} of the top 20)] of a response."""
    lp = r["choices"][0]["logprobs"]
    return list(zip(lp["tokens"], lp["token_logprobs"], lp["top_logprobs"]))


srv = Server(args.bin, args.model)
try:
    code, b = srv.post("/tokenize", {"prompt": "The capital of France is"})
    PROMPT = json.loads(b)["tokens"]
    GREEDY = {"prompt": PROMPT, "temperature": 0, "logprobs": 20, "ignore_eos": True}

    # ---------------------------------------------------------------- raw
    mark("raw")
    base = complete(srv, {**GREEDY, "max_tokens": 16})
    base_ids = ids_of([s[0] for s in steps(base)], "greedy") if base else None

    # --------------------------------------------- frequency and presence
    mark("frequency and presence")
    # Strong penalties; on a prompt whose greedy output repeats one word, a
    # small frequency penalty that takes effect only once a token's count has
    # grown (so the count itself is exercised); a negative one that makes the
    # output repeat.
    N_PEN = 10 if SANITIZED else 16
    if SANITIZED:
        print(f"sanitizer build (SS_SANITIZED=1): penalties over {N_PEN} tokens, not 16, "
              "and no negative frequency penalty; the release build runs both", flush=True)
    code, b = srv.post("/tokenize", {"prompt": "Hi"})
    HI = json.loads(b)["tokens"]
    base_hi = complete(srv, {**GREEDY, "prompt": HI, "max_tokens": N_PEN})
    base_hi_ids = ids_of([s[0] for s in steps(base_hi)], "greedy 'Hi'") if base_hi else None
    configs = [(PROMPT, 1.5, 0.5, base_ids), (HI, 0.4, 0.0, base_hi_ids)]
    if not SANITIZED:  # it takes effect only after 10 tokens
        configs.append((PROMPT, -0.6, 0.0, base_ids))
    for prompt, FREQ, PRES, plain in configs:
        tag = f"frequency {FREQ} presence {PRES}"
        pen = complete(srv, {**GREEDY, "prompt": prompt, "max_tokens": N_PEN,
                             "frequency_penalty": FREQ, "presence_penalty": PRES})
        pen_ids = ids_of([s[0] for s in steps(pen)], tag) if pen else None
        if not (plain and pen_ids):
            continue
        ck.check(pen_ids != plain[:N_PEN], f"{tag}: no effect on the greedy output "
                 f"({pen['choices'][0]['text']!r}): the check below could not fail")
        if prompt is HI:
            ck.check(pen_ids[0] == plain[0], f"{tag}: the first token changed: nothing was "
                     "counted yet")
        counts = {}
        for k, (tok, lp, top) in enumerate(steps(pen)):
            def penalised(t, v):
                c = counts.get(text_id.get(t, -2), 0)
                return np.float32(v) - np.float32(FREQ * c + PRES * (c > 0))
            best = max(penalised(t, v) for t, v in top.items())
            mine = penalised(tok, lp)
            ck.check(mine >= best - ATOL, f"{tag} step {k}: chose {tok!r} "
                     f"({mine:.5f} penalised), the top 20 has {best:.5f}")
            if tok not in top and FREQ >= 0:
                # Only lowered: a token outside the top 20 cannot beat the 20th.
                ck.check(best <= min(top.values()) + ATOL, f"{tag} step {k}: {tok!r} from "
                         "outside the top 20")
            counts[pen_ids[k]] = counts.get(pen_ids[k], 0) + 1
        if FREQ < 0:
            ck.check(max(pen_ids.count(i) for i in pen_ids) > 2,
                     f"{tag}: no token repeats: {pen['choices'][0]['text']!r}")
        if prompt is HI or FREQ < 0:
            continue
        # The reported logprobs are the model's: a request without penalties on
        # the same prefix reports the same top 20.
        for k in (0, N_PEN // 2, N_PEN - 1):
            r = complete(srv, {**GREEDY, "prompt": prompt + pen_ids[:k], "max_tokens": 1})
            if not r:
                continue
            got, want = steps(pen)[k][2], steps(r)[0][2]
            ck.check(set(got) == set(want) and
                     all(abs(got[t] - want[t]) <= RAW_ATOL for t in got),
                     f"logprobs at step {k} are not the raw ones: {got} vs {want}")

    # --------------------------------------------------------- logit_bias
    mark("logit_bias")
    if base_ids:
        top0 = sorted(steps(base)[0][2].items(), key=lambda kv: -kv[1])
        second = text_id[top0[1][0]]
        r = complete(srv, {**GREEDY, "max_tokens": 3, "logit_bias": {str(base_ids[0]): -100}})
        if r:
            ck.check(ids_of([s[0] for s in steps(r)], "bias -100")[0] == second,
                     f"logit_bias -100 on {texts[base_ids[0]]!r}: chose "
                     f"{steps(r)[0][0]!r}, not the runner-up {top0[1][0]!r}")
        forced = text_id[" banana"]
        r = complete(srv, {**GREEDY, "max_tokens": 4, "logit_bias": {str(forced): 100}})
        if r:
            ck.check(r["choices"][0]["text"] == " banana" * 4,
                     f"logit_bias +100 on ' banana': {r['choices'][0]['text']!r}")
            # The reported logprob of the forced token is the model's own, low one.
            ck.check(steps(r)[0][1] < top0[-1][1], f"logit_bias: reported {steps(r)[0][1]}")

    # ---------------------------------------------------------- bad_words
    mark("bad_words")
    if base_ids:
        r = complete(srv, {**GREEDY, "max_tokens": 3, "bad_words": [texts[base_ids[0]]]})
        if r:
            ck.check(text_id.get(steps(r)[0][0]) == second,
                     f"bad_words [{texts[base_ids[0]]!r}]: chose {steps(r)[0][0]!r}")
        # Two tokens: the first is allowed, the second is banned right after it.
        word = texts[base_ids[0]] + texts[base_ids[1]]
        code, b = srv.post("/tokenize", {"prompt": word, "add_special_tokens": False})
        if json.loads(b)["tokens"] == base_ids[:2]:
            r = complete(srv, {**GREEDY, "max_tokens": 3, "bad_words": [word]})
            if r:
                s = steps(r)
                top1 = sorted(steps(base)[1][2].items(), key=lambda kv: -kv[1])
                ck.check(text_id.get(s[0][0]) == base_ids[0] and s[1][0] == top1[1][0],
                         f"bad_words [{word!r}]: {[x[0] for x in s]}, wanted "
                         f"{texts[base_ids[0]]!r} then {top1[1][0]!r}")
        else:
            ck.check(False, f"{word!r} does not tokenize as the greedy output's first two tokens")

    # ------------------------------------------------------ stop_token_ids
    mark("stop_token_ids")
    if base_ids:
        j = 5
        j = base_ids.index(base_ids[j])  # its first occurrence
        stop_id = base_ids[j]
        for ignore in (False, True):
            r = complete(srv, {**GREEDY, "ignore_eos": ignore, "max_tokens": 16,
                               "stop_token_ids": [stop_id]})
            if r:
                c = r["choices"][0]
                want = "".join(texts[i] for i in base_ids[:j])
                ck.check(c["finish_reason"] == "stop" and c["text"] == want and
                         r["usage"]["completion_tokens"] == j + 1,
                         f"stop_token_ids [{stop_id}] (ignore_eos {ignore}): {c}, "
                         f"usage {r['usage']}; wanted {want!r} after {j + 1} tokens")

    # ---------------------------------------------------------- min_tokens
    mark("min_tokens")
    CHAT = {"messages": [{"role": "user", "content": "Reply with one word: yes or no?"}],
            "temperature": 0, "max_tokens": 24, "logprobs": True, "top_logprobs": 20}
    code, b = srv.post("/v1/chat/completions", CHAT)
    short = json.loads(b)
    n_short = short["usage"]["completion_tokens"]
    end_tok = short["choices"][0]["logprobs"]["content"][-1]["token"]
    ck.check(short["choices"][0]["finish_reason"] == "stop" and n_short < 8,
             f"min_tokens: the prompt should end quickly: {short['choices'][0]}")
    code, b = srv.post("/v1/chat/completions", {**CHAT, "min_tokens": 10})
    longer = json.loads(b)
    if ck.check(code == 200, f"min_tokens: {code} {b[:300]!r}"):
        content = longer["choices"][0]["logprobs"]["content"]
        ck.check(longer["usage"]["completion_tokens"] >= 10,
                 f"min_tokens 10: only {longer['usage']['completion_tokens']} tokens")
        same = [x["token"] for x in content[:n_short - 1]]
        ck.check(same == [x["token"] for x in short["choices"][0]["logprobs"]["content"][:-1]],
                 f"min_tokens: the tokens before the end differ: {same}")
        # Where the short answer ended, the best token that does not end it.
        at = content[n_short - 1]
        alts = sorted(at["top_logprobs"], key=lambda x: -x["logprob"])
        special = {t for t, i in zip(texts, range(len(texts))) if t is None}
        want = next(x["token"] for x in alts if x["token"] != end_tok and
                    x["token"] not in ("<|endoftext|>", "<|im_end|>"))
        ck.check(at["token"] == want, f"min_tokens: chose {at['token']!r}, wanted {want!r}")
    complete(srv, {**GREEDY, "max_tokens": 4, "min_tokens": 5}, 400)

    # --------------------------------------- seeds, alone and in a batch
    mark("seeds, alone and in a batch")
    SAMPLED = {"prompt": PROMPT, "temperature": 0.9, "max_tokens": 8, "ignore_eos": True,
               "frequency_penalty": 0.7, "presence_penalty": 0.3, "repetition_penalty": 1.3,
               "logit_bias": {str(text_id[" Paris"]): -5}, "min_tokens": 4}
    n_batch = 4 if SANITIZED else 8
    if SANITIZED:
        print("sanitizer build (SS_SANITIZED=1): a batch of 4, not 8; the release build runs 8",
              flush=True)
    alone = []
    for s in range(n_batch):
        r = complete(srv, {**SAMPLED, "seed": 100 + s})
        alone.append(r["choices"][0]["text"] if r else None)
    again = complete(srv, {**SAMPLED, "seed": 100})
    ck.check(again and again["choices"][0]["text"] == alone[0],
             f"seed 100 twice: {alone[0]!r} then {again and again['choices'][0]['text']!r}")
    ck.check(len(set(alone)) > 1, f"different seeds gave one text: {alone}")
    batch = [None] * n_batch

    def one(s):
        code, b = srv.post("/v1/completions", {**SAMPLED, "seed": 100 + s})
        batch[s] = json.loads(b)["choices"][0]["text"] if code == 200 else None

    threads = [threading.Thread(target=one, args=(s,)) for s in range(n_batch)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ck.check(batch == alone, f"in a batch of {n_batch}: {batch} != alone {alone}")

    # ------------------------------------------------------ out of range
    mark("out of range")
    V = len(texts)
    bad = [("presence_penalty", 2.5), ("presence_penalty", "x"), ("frequency_penalty", -2.01),
           ("repetition_penalty", 0), ("repetition_penalty", -1.0),
           ("logit_bias", {"-1": 1}), ("logit_bias", {str(V): 1}), ("logit_bias", {"05": 1}),
           ("logit_bias", {"5": 100.5}), ("logit_bias", {"5": "x"}), ("logit_bias", [1]),
           ("logit_bias", {str(i): 1 for i in range(301)}),
           ("min_tokens", -1), ("min_tokens", 1.5),
           ("stop_token_ids", [V]), ("stop_token_ids", [-1]), ("stop_token_ids", 5),
           ("stop_token_ids", list(range(65))),
           ("bad_words", [""]), ("bad_words", [3]), ("bad_words", "x"),
           ("bad_words", ["a"] * 65)]
    for field, value in bad:
        r = complete(srv, {"prompt": PROMPT, "max_tokens": 2, field: value}, 400)
        if r:
            ck.check(r["error"]["param"] == field and field in r["error"]["message"],
                     f"{field} = {str(value)[:40]}: {r['error']}")
    # The limits themselves pass.
    complete(srv, {"prompt": PROMPT, "max_tokens": 2, "presence_penalty": -2,
                   "frequency_penalty": 2, "logit_bias": {str(i): -100 for i in range(300)},
                   "stop_token_ids": list(range(64)), "min_tokens": 2})
finally:
    rc = srv.stop()
ck.check(rc == 0, f"server exit status {rc}")

# --------------------------------------------------------------------------
# repetition_penalty on a tiny random model, against the float64 reference's
# logits (Hugging Face's rule: a seen token's logit divided by the penalty
# when positive, multiplied by it otherwise; seen = in the prompt or output).

mark("repetition_penalty")
tmp = tempfile.mkdtemp(prefix="ss-sampling-")
tiny = os.path.join(tmp, "tiny.gguf")
p = subprocess.run([sys.executable, os.path.join(HERE, "reference", "make_tiny_llama.py"),
                    "--out", tiny, "--dim", "64", "--layers", "2", "--heads", "4", "--ffn", "128",
                    "--vocab", "300", "--seed", "5", "--vocab-from",
                    os.path.join(args.data, "tokenizer", "ggml-vocab-llama-spm.gguf")], capture_output=True, text=True)
if ck.check(p.returncode == 0, f"make_tiny_llama: {p.stderr[-800:]}"):
    ref = llama_ref.load(tiny)
    prompt = [100, 101, 102, 103, 102, 105]
    N = 10
    # A bias of -30 on every token makes every logit negative, where the rule's
    # other branch (multiply) applies; without it the positive branch does.
    V_TINY = 300
    SHIFT = {str(i): -30 for i in range(V_TINY)}

    def ref_greedy(penalty, shift):
        ids = list(prompt)
        for _ in range(N):
            logits = ref.forward(ids)[-1].copy() + (-30.0 if shift else 0.0)
            seen = np.unique(ids)
            logits[seen] = np.where(logits[seen] > 0, logits[seen] / penalty,
                                    logits[seen] * penalty)
            ids.append(int(np.argmax(logits)))
        return ids[len(prompt):]

    srv = Server(args.bin, tiny)
    try:
        plain = {}
        shifts = (False, True)
        if SANITIZED:
            shifts = (True,)
            print("sanitizer build (SS_SANITIZED=1): repetition_penalty under the bias only; "
                  "the release build also runs it without", flush=True)
        for shift in shifts:
            for penalty in (1.0, 1.8, 3.0):
                want = ref_greedy(penalty, shift)
                body = {"prompt": prompt, "max_tokens": N, "temperature": 0, "ignore_eos": True,
                        "repetition_penalty": penalty}
                if shift:
                    body["logit_bias"] = SHIFT
                r = complete(srv, body)
                tag = f"repetition_penalty {penalty}{' under a bias of -30' if shift else ''}"
                if r:
                    want_text = ref.decode(want)
                    ck.check(r["choices"][0]["text"] == want_text,
                             f"{tag}: {r['choices'][0]['text']!r} != reference {want_text!r} "
                             f"({want})")
                if penalty == 1.0:
                    plain[shift] = want
                else:
                    ck.check(want != plain[shift], f"{tag} changes nothing on the tiny model: "
                             "the check could not fail")
    finally:
        rc = srv.stop()
    ck.check(rc == 0, f"tiny server exit status {rc}")
    os.remove(tiny)
os.rmdir(tmp)

mark("done")
ck.finish()
