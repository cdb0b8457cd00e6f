"""n > 1, best_of and echo through the official `openai` client.

n = 4 with a seed at temperature 1: four distinct completions, the same four
on a repeat, and choice i exactly the n = 1 request with seed + i (tokens and
logprobs bit-identical: the kernels are batch-invariant, and a fork samples
its first token from the same logits with its own seed).  The prompt is
computed once: the choices after the first fork from the first when its
prompt is computed, sharing all its KV blocks, the partial last one
included, which each copies before writing into it (copy-on-write); /metrics
counts one prompt admitted (prefix-cache queries), no prefix-cache hits,
three forks of ceil(prompt / 16) blocks each and three copies, and the pool
is empty afterwards.  The same at TP 2 and PP 2 (every rank copies its own
shard of the block: a rank that did not would change the outputs), without prefix
caching, and with a KV cache of 1-byte elements (fp8).  Streaming n = 2 (chat and
completions) carries each choice's index, and the texts per index are the
non-streamed ones.  best_of = 4, n = 2 returns the two most likely of the four
sequences, whose logprob sums come from the four n = 1 requests (seeds + i).
echo prepends the prompt (a string, or token ids given by /tokenize of a
string); with logprobs the prompt tokens' logprobs match single greedy steps
forced onto each prompt token.  Out-of-range and OpenAI-rejected combinations are 400s naming the
field.
"""
import json
import os
import sys
import time
import urllib.request

import openai

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "lib"))
from harness import Checker, parse_args  # noqa: E402
from server import Server  # noqa: E402

args = parse_args()
ck = Checker("n choices")
T0 = time.monotonic()
MODEL = "SmolLM2-135M-Instruct.Q4_1"
BLOCK = 16
# Under the sanitizers: shorter outputs, and three of the prompt positions
# checked one by one, not all.
SANITIZED = os.environ.get("SS_SANITIZED") == "1"
GEN = 6 if SANITIZED else 16       # tokens per choice, n = 4 and the arrays
SHORT = 4 if SANITIZED else 10     # streaming and best_of
if SANITIZED:
    print(f"SS_SANITIZED: {GEN} and {SHORT} tokens per choice (16 and 10 in release builds)",
          flush=True)


def mark(what):
    print(f"{time.monotonic() - T0:6.1f} s  {what}", flush=True)


def delta(m1, m0, key):
    return m1.get(key, 0.0) - m0.get(key, 0.0)


def check_forks(m0, m1, n_prompt, n_forks, what, cached=True):
    """One prompt admitted and computed, n_forks forks sharing all its blocks,
    one copy-on-write copy per fork when its last block is partial, and the
    pool empty again."""
    blocks = -(-n_prompt // BLOCK)
    copies = n_forks if n_prompt % BLOCK else 0
    want = {"shardserve:request_forked_choices_total": n_forks,
            "shardserve:forked_sequences_total": n_forks,
            "shardserve:forked_blocks_shared_total": n_forks * blocks,
            "shardserve:kv_cow_copies_total": copies}
    if cached:
        want["shardserve:prefix_cache_queries_total"] = n_prompt
        want["shardserve:prefix_cache_hits_total"] = 0
    got = {k: delta(m1, m0, k) for k in want}
    ck.check(got == want, f"{what}: metrics {got}, expected {want}")
    idle = {k: m1.get(k) for k in ("shardserve:kv_cache_blocks_used",
                                   "shardserve:kv_cache_usage_perc", "shardserve:kv_blocks_shared")}
    ck.check(all(v == 0 for v in idle.values()), f"{what}: not idle afterwards: {idle}")


def same_as_n1(srv, cl, prompt, n, seed, what):
    """n choices with a seed: choice i is the n = 1 request with seed + i,
    tokens and logprobs bit-identical.  Returns /metrics before and after the
    n choices."""
    m0 = srv.metrics()
    r = cl.completions.create(model=MODEL, prompt=prompt, n=n, seed=seed, temperature=1.0,
                              max_tokens=GEN, logprobs=0, extra_body={"ignore_eos": True})
    m1 = srv.metrics()
    ck.check(len({ch.text for ch in r.choices}) == n, f"{what}: not distinct {r.choices}")
    for i in range(n):
        one = cl.completions.create(model=MODEL, prompt=prompt, seed=seed + i, temperature=1.0,
                                    max_tokens=GEN, logprobs=0, extra_body={"ignore_eos": True})
        ck.check(one.choices[0].text == r.choices[i].text and
                 one.choices[0].logprobs.token_logprobs == r.choices[i].logprobs.token_logprobs,
                 f"{what}: choice {i} {r.choices[i].text!r} != n = 1 with seed {seed + i}: "
                 f"{one.choices[0].text!r} (or its logprobs differ)")
    return m0, m1


srv = Server(args.bin, args.model, extra=["--max-num-seqs", "16"])
try:
    c = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused")
    mark("server ready")

    # ------------------------------------------------------------------
    # n = 4 with a seed: distinct, reproducible, each its own n = 1 request.
    prompt = ("A short story about a lighthouse keeper who finds a message in a bottle "
              "on the beach one stormy morning. The keeper has lived alone on the island "
              "for twenty years, tending the lamp and writing letters he never sends. "
              "The bottle is old and green, its cork sealed with wax, and inside it says:")
    code, body = srv.post("/tokenize", {"prompt": prompt})
    n_prompt = json.loads(body)["count"] if code == 200 else -1
    ck.check(n_prompt > 2 * BLOCK, f"/tokenize: {code} {body[:200]!r}")
    SEED = 1234
    m0 = srv.metrics()
    r = c.completions.create(model=MODEL, prompt=prompt, n=4, seed=SEED, temperature=1.0,
                             max_tokens=GEN, logprobs=0, extra_body={"ignore_eos": True})
    m1 = srv.metrics()
    texts = [ch.text for ch in r.choices]
    ck.check([ch.index for ch in r.choices] == [0, 1, 2, 3], f"indexes {r.choices}")
    ck.check(len(set(texts)) == 4, f"n = 4: the texts are not distinct: {texts}")
    ck.check(r.usage.prompt_tokens == n_prompt and r.usage.completion_tokens == 4 * GEN and
             r.usage.total_tokens == n_prompt + 4 * GEN, f"usage {r.usage}")
    check_forks(m0, m1, n_prompt, 3, "n = 4")
    mark("n = 4")

    r2 = c.completions.create(model=MODEL, prompt=prompt, n=4, seed=SEED, temperature=1.0,
                              max_tokens=GEN, logprobs=0, extra_body={"ignore_eos": True})
    ck.check([ch.text for ch in r2.choices] == texts, f"repeat: {[ch.text for ch in r2.choices]}"
             f" != {texts}")
    for i in range(4):
        one = c.completions.create(model=MODEL, prompt=prompt, seed=SEED + i, temperature=1.0,
                                   max_tokens=GEN, logprobs=0, extra_body={"ignore_eos": True})
        ck.check(one.choices[0].text == texts[i],
                 f"choice {i} {texts[i]!r} != n = 1 with seed {SEED + i}: {one.choices[0].text!r}")
        ck.check(one.choices[0].logprobs.token_logprobs == r.choices[i].logprobs.token_logprobs,
                 f"choice {i}: logprobs differ from the n = 1 request's")
    mark("n = 1 per seed")

    # Every choice carries the request's own arrays (logit_bias, stop
    # strings, stop_token_ids, bad_words): each is its n = 1 request.
    fields = dict(logit_bias={"13": -100, "30": 5}, stop=["\n\n"],
                  extra_body={"stop_token_ids": [2], "bad_words": [" the"], "ignore_eos": True})
    r = c.completions.create(model=MODEL, prompt=prompt, n=3, seed=SEED, temperature=1.0,
                             max_tokens=GEN, **fields)
    for i in range(3):
        one = c.completions.create(model=MODEL, prompt=prompt, seed=SEED + i, temperature=1.0,
                                   max_tokens=GEN, **fields)
        ck.check(one.choices[0].text == r.choices[i].text and
                 one.choices[0].finish_reason == r.choices[i].finish_reason,
                 f"with arrays, choice {i} {r.choices[i].text!r} != {one.choices[0].text!r}")

    # Without a seed: independent streams.
    r = c.completions.create(model=MODEL, prompt=prompt, n=4, temperature=1.0, max_tokens=GEN,
                             extra_body={"ignore_eos": True})
    ck.check(len({ch.text for ch in r.choices}) == 4, f"no seed: {[ch.text for ch in r.choices]}")

    # ------------------------------------------------------------------
    # Streaming n = 2: each chunk names its choice; the texts per index are
    # the non-streamed ones.
    msgs = [{"role": "user", "content": "Write one sentence about the sea."}]
    whole = c.chat.completions.create(model=MODEL, messages=msgs, n=2, seed=9, temperature=1.0,
                                      max_tokens=SHORT)
    ck.check(len(whole.choices) == 2 and [ch.index for ch in whole.choices] == [0, 1],
             f"chat n = 2: {whole.choices}")
    got, finish, usage = {0: "", 1: ""}, {}, None
    for chunk in c.chat.completions.create(model=MODEL, messages=msgs, n=2, seed=9,
                                           temperature=1.0, max_tokens=SHORT, stream=True,
                                           stream_options={"include_usage": True}):
        if chunk.usage:
            usage = chunk.usage
        for ch in chunk.choices:
            got[ch.index] += ch.delta.content or ""
            if ch.finish_reason:
                finish[ch.index] = ch.finish_reason
    ck.check([got[0], got[1]] == [ch.message.content for ch in whole.choices],
             f"streamed chat {got} != {[ch.message.content for ch in whole.choices]}")
    ck.check(finish == {i: ch.finish_reason for i, ch in enumerate(whole.choices)},
             f"finish {finish}")
    ck.check(usage is not None and usage.completion_tokens == whole.usage.completion_tokens and
             usage.prompt_tokens == whole.usage.prompt_tokens, f"streamed usage {usage}")
    ref = c.completions.create(model=MODEL, prompt="Once upon a time", n=2, seed=5,
                               temperature=1.0, max_tokens=SHORT, extra_body={"ignore_eos": True})
    got, seen = {0: "", 1: ""}, []
    for chunk in c.completions.create(model=MODEL, prompt="Once upon a time", n=2, seed=5,
                                      temperature=1.0, max_tokens=SHORT, stream=True,
                                      extra_body={"ignore_eos": True}):
        for ch in chunk.choices:
            got[ch.index] += ch.text
            seen.append(ch.index)
    ck.check(set(seen) == {0, 1} and [got[0], got[1]] == [ch.text for ch in ref.choices],
             f"streamed completions {got} != {[ch.text for ch in ref.choices]}")
    mark("streaming")

    # ------------------------------------------------------------------
    # best_of = 4, n = 2: the two sequences with the highest cumulative
    # logprob of the four (seed + i), most likely first.
    bp = "The best way to learn a language is"
    sums = []
    for i in range(4):
        one = c.completions.create(model=MODEL, prompt=bp, seed=77 + i, temperature=1.0,
                                   max_tokens=SHORT, logprobs=0, extra_body={"ignore_eos": True})
        sums.append((sum(one.choices[0].logprobs.token_logprobs), one.choices[0].text))
    best = sorted(sums, key=lambda s: -s[0])[:2]
    r = c.completions.create(model=MODEL, prompt=bp, n=2, best_of=4, seed=77, temperature=1.0,
                             max_tokens=SHORT, logprobs=0, extra_body={"ignore_eos": True})
    ck.check([ch.text for ch in r.choices] == [b[1] for b in best],
             f"best_of: {[ch.text for ch in r.choices]} != {best} (of {sums})")
    got_sums = [sum(ch.logprobs.token_logprobs) for ch in r.choices]
    ck.check(got_sums == sorted(got_sums, reverse=True), f"best_of order {got_sums}")
    ck.check(r.usage.completion_tokens == 4 * SHORT, f"best_of usage {r.usage}")
    r = c.completions.create(model=MODEL, prompt=bp, n=1, best_of=3, seed=77, temperature=1.0,
                             max_tokens=SHORT, extra_body={"ignore_eos": True})
    ck.check(len(r.choices) == 1 and r.choices[0].logprobs is None and
             r.choices[0].text == max(sums[:3])[1], f"best_of 3, no logprobs: {r.choices}")
    mark("best_of")

    # ------------------------------------------------------------------
    # echo: the prompt before each choice's text.
    ep = "The capital of France is"
    plain = c.completions.create(model=MODEL, prompt=ep, max_tokens=8, temperature=0)
    r = c.completions.create(model=MODEL, prompt=ep, max_tokens=8, temperature=0, echo=True, n=2)
    ck.check([ch.text for ch in r.choices] == [ep + plain.choices[0].text] * 2,
             f"echo: {[ch.text for ch in r.choices]}")
    code, body = srv.post("/tokenize", {"prompt": ep})
    ids = json.loads(body)["tokens"]
    r = c.completions.create(model=MODEL, prompt=ids, max_tokens=8, temperature=0, echo=True)
    ck.check(r.choices[0].text == ep + plain.choices[0].text, f"echo ids: {r.choices[0].text!r}")
    streamed = "".join(ch.choices[0].text for ch in c.completions.create(
        model=MODEL, prompt=ep, max_tokens=8, temperature=0, echo=True, stream=True))
    ck.check(streamed == ep + plain.choices[0].text, f"echo streamed: {streamed!r}")
    mark("echo")

    # echo with logprobs: the prompt tokens' logprobs (the first null).  The
    # logprob of token k after tokens 0..k-1 is checked against a request
    # whose prompt is tokens 0..k-1 and whose one generated token is forced
    # to be token k with logit_bias (the reported logprobs are the model's,
    # before the bias): a sampling row of a separate forward pass, not a kept
    # prompt row.  Its top alternatives against that step's top logprobs.
    lp_prompt = "The capital of France is Paris, and the capital of Italy is"
    code, body = srv.post("/tokenize", {"prompt": lp_prompt})
    ids = json.loads(body)["tokens"]
    r = c.completions.create(model=MODEL, prompt=lp_prompt, echo=True, logprobs=2, max_tokens=3,
                             temperature=0, n=2)
    lp = r.choices[0].logprobs
    np_ = len(ids)
    ck.check(r.choices[0].text.startswith(lp_prompt) and len(lp.tokens) == np_ + 3 and
             lp.token_logprobs[0] is None and lp.top_logprobs[0] is None and
             all(v is not None for v in lp.token_logprobs[1:]), f"echo logprobs {lp}")
    ck.check("".join(lp.tokens[:np_]) == lp_prompt and lp.text_offset[np_] == len(lp_prompt) and
             lp.text_offset[0] == 0, f"echo tokens / offsets {lp.tokens} {lp.text_offset}")
    ck.check(r.choices[1].logprobs.token_logprobs[:np_] == lp.token_logprobs[:np_],
             "choice 1's prompt logprobs are choice 0's")
    positions = [1, np_ // 2, np_ - 1] if SANITIZED else range(1, np_)
    if SANITIZED:
        print(f"SS_SANITIZED: prompt positions {positions} of 1..{np_ - 1}", flush=True)
    for k in positions:
        one = c.completions.create(model=MODEL, prompt=ids[:k], max_tokens=1, temperature=0,
                                   logprobs=2, logit_bias={str(ids[k]): 100})
        ol = one.choices[0].logprobs
        ck.check(ol.tokens[0] == lp.tokens[k] and
                 abs(ol.token_logprobs[0] - lp.token_logprobs[k]) <= 2e-3,
                 f"prompt token {k} {lp.tokens[k]!r}: {lp.token_logprobs[k]} != "
                 f"{ol.token_logprobs[0]}")
        want, got = ol.top_logprobs[0], lp.top_logprobs[k]
        ck.check(set(want) == set(got) and all(abs(want[t] - got[t]) <= 2e-3 for t in want),
                 f"prompt token {k}: top {got} != {want}")
    # Computed again (the prompt is cached by now, but these rows are recomputed).
    again = c.completions.create(model=MODEL, prompt=lp_prompt, echo=True, logprobs=2,
                                 max_tokens=3, temperature=0)
    ck.check(again.choices[0].logprobs.token_logprobs == lp.token_logprobs,
             "echo logprobs with the prompt in the prefix cache")
    mark("echo logprobs")

    # ------------------------------------------------------------------
    # Refused: each a 400 naming the field.
    def refused(field, **kw):
        kind = kw.pop("chat", False)
        try:
            if kind:
                c.chat.completions.create(model=MODEL, messages=msgs, max_tokens=4, **kw)
            else:
                c.completions.create(model=MODEL, prompt="Hi", max_tokens=4, **kw)
            ck.check(False, f"{kw}: accepted")
        except openai.BadRequestError as e:
            param = e.body.get("param") if isinstance(e.body, dict) else None
            ck.check(param == field, f"{kw}: param {param!r} ({e})")

    refused("n", n=0)
    refused("n", n=17)
    refused("n", n=17, chat=True)
    refused("best_of", n=3, best_of=2)
    refused("best_of", n=1, best_of=2, stream=True)
    refused("best_of", n=1, best_of=17)
    refused("best_of", extra_body={"best_of": 2}, chat=True)
    refused("echo", extra_body={"echo": True}, chat=True)
    refused("n", n=2, chat=True, response_format={
        "type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}})
    mark("refusals")

    # A client leaving mid-stream stops every choice: the pool empties.
    req = urllib.request.Request(srv.url + "/v1/completions", data=json.dumps(
        {"prompt": prompt, "n": 4, "max_tokens": 200, "stream": True, "ignore_eos": True}).encode(),
        headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        resp.readline()
    for _ in range(100):
        m = srv.metrics()
        if m.get("shardserve:kv_cache_blocks_used", 1) == 0 and \
                m.get("shardserve:num_requests_running", 1) == 0:
            break
        time.sleep(0.1)
    ck.check(m.get("shardserve:kv_cache_blocks_used") == 0,
             f"after the client left: {m.get('shardserve:kv_cache_blocks_used')} blocks used")
    r = c.completions.create(model=MODEL, prompt="Hi", max_tokens=2, n=2)
    ck.check(len(r.choices) == 2, "serving after the client left")
    mark("client gone")
finally:
    ck.check(srv.stop() == 0, "the server exits 0 on SIGTERM")

# ----------------------------------------------------------------------
# Without prefix caching the forks share the blocks all the same; at TP 2 and
# PP 2 every rank copies its own shard (heads, or layers) of the shared block.
LAYOUTS = [("no prefix caching", 1, ["--no-prefix-caching"]),
           ("fp8 KV cache", 1, ["--kv-cache-dtype", "fp8_e4m3"])]
if not SANITIZED:
    LAYOUTS += [("TP 2", 2, []), ("PP 2", 2, ["--pp", "2"])]
else:
    print("SS_SANITIZED: TP 2 and PP 2 skipped (run in release builds)", flush=True)
for what, tp, extra in LAYOUTS:
    srv = Server(args.bin, args.model, tp=tp, extra=["--max-num-seqs", "16", *extra])
    try:
        cl = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused")
        m0, m1 = same_as_n1(srv, cl, prompt, 4, 4321, what)
        check_forks(m0, m1, n_prompt, 3, what, cached="--no-prefix-caching" not in extra)
        mark(what)
    finally:
        ck.check(srv.stop() == 0, f"{what}: the server exits 0 on SIGTERM")

ck.finish()
