"""Serving with the pipeline full: several steps in flight under --pp.

With `serve --pp 2` rank 0 issues a step for one group of sequences, then
another group's, before the first one's logits are back, so stage 0 runs one
step while stage 1 runs the one before.  Sampling stays on rank 0 and the
kernels are batch invariant, so what a client gets must not change at all:

1. 32 concurrent streams through the official openai client (completions,
   streamed, with logprobs and top-3 alternatives; half greedy, half sampled
   with a seed and top_p), against a PP 1 server on the same requests: the
   same text, tokens, logprobs and alternatives, float for float, and the
   same finish reasons.  At PP 2 with the default micro-batches (2) and with
   --pp-microbatches 1 (one step at a time).
2. After the load: KV usage and running requests back to 0; /metrics counts
   32 successes, the prompt and generated tokens the responses report, and
   the same number of forward passes on both ranks (every step ran on both
   stages).  Then, at PP 2 with micro-batches, 4 streams that the client
   closes after a few chunks (aborted while their steps may be in flight)
   beside 8 of the requests again: those 8 unchanged, 4 aborts counted, KV
   back to 0.
3. The timelines (--trace) say whether steps were in flight together:
   with micro-batches some layer of stage 1 runs while a layer of stage 0
   runs (different steps: a step's stage-1 layers start after its stage-0
   layers end); with --pp-microbatches 1 none does.  Within each rank's
   track the spans still nest.
4. PP 2 x TP 2 (4 ranks): 8 streams, the same outputs as a TP 2 server (the
   TP sums round differently from one rank, the cut into stages does not);
   PP 4 (4 stages, 4 steps in flight): 8 streams, PP 1's outputs.  Left out
   under the sanitizers (4 ranks on 2 cores there take minutes).
5. `--pp-microbatches 2` without --pp is a usage error naming the flag.
6. Forks with steps in flight: on the PP 2 server with micro-batches, n = 4
   with a seed (beside 6 other streams, so the steps in flight hold other
   sequences too) gives choice i == the n = 1 request with seed + i, tokens
   and logprobs bit-identical; /metrics counts 3 forked sequences sharing
   ceil(prompt / 16) blocks each, one copy-on-write copy per fork (the
   prompt's last block is partial), and no block used or shared afterwards.
"""
import concurrent.futures
import json
import os
import shutil
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "lib"))
from harness import Checker, parse_args, SANITIZER_MARKS  # noqa: E402
from mpi import mpi_available  # noqa: E402
from server import Server  # noqa: E402

import openai  # noqa: E402

args = parse_args()
ck = Checker("pp serve")
if not ck.check(mpi_available(), "mpirun not found (scripts/setup.sh installs Open MPI)"):
    ck.finish()
SANITIZED = os.environ.get("SS_SANITIZED") == "1"
os.environ["ASAN_OPTIONS"] = ":".join(
    x for x in (os.environ.get("ASAN_OPTIONS", ""), "fast_unwind_on_malloc=0") if x)
os.environ.setdefault("LSAN_OPTIONS", "suppressions=" + os.path.join(HERE, "lsan.supp") +
                      ":print_suppressions=0")
tmp = tempfile.mkdtemp(prefix="ss-ppserve-")
MODEL_NAME = os.path.basename(args.model)[:-5] if args.model.endswith(".gguf") else args.model

PROMPTS = ["The capital of France is", "Once upon a time", "def add(a, b):",
           "The sky is blue because", "My favourite food is", "In 1969, the first",
           "Water boils at", "The three primary colours are", "List of fruits:",
           "To be or not to be,", "Q: What is 2+2?\nA:", "Dear Sir,"]
N_REQ = 12 if SANITIZED else 32
JOBS = [{"prompt": PROMPTS[i % len(PROMPTS)], "max_tokens": 5 + i % 9,
         "sampled": i % 2 == 1, "seed": 1000 + i} for i in range(N_REQ)]


def one(url, job):
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=600)
    kw = dict(model=MODEL_NAME, prompt=job["prompt"], max_tokens=job["max_tokens"], logprobs=3,
              stream=True, stream_options={"include_usage": True})
    if job["sampled"]:
        kw.update(temperature=0.8, top_p=0.9, seed=job["seed"])
    else:
        kw.update(temperature=0)
    text, tokens, lps, tops, finish, usage = "", [], [], [], None, None
    for chunk in client.completions.create(**kw):
        if chunk.usage:
            usage = (chunk.usage.prompt_tokens, chunk.usage.completion_tokens)
        for c in chunk.choices:
            text += c.text or ""
            if c.logprobs:
                tokens += c.logprobs.tokens or []
                lps += c.logprobs.token_logprobs or []
                tops += [sorted(t.items()) for t in (c.logprobs.top_logprobs or [])]
            if c.finish_reason:
                finish = c.finish_reason
    return {"text": text, "tokens": tokens, "logprobs": lps, "top": tops, "finish": finish,
            "usage": usage}


ABORTED = 'shardserve:request_success_total{finished_reason="abort"}'


def drop_after(url, job, n_chunks):
    """A stream the client closes after n_chunks chunks (the server aborts it)."""
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=600)
    stream = client.completions.create(model=MODEL_NAME, prompt=job["prompt"], max_tokens=200,
                                       temperature=0, stream=True, extra_body={"ignore_eos": True})
    for i, _ in enumerate(stream):
        if i + 1 >= n_chunks:
            break
    stream.close()


FORK_PROMPT = ("A short story about a lighthouse keeper who finds a message in a bottle "
               "on the beach one stormy morning. The keeper has lived alone on the island "
               "for twenty years, tending the lamp and writing letters he never sends.")
FORK_GEN = 6 if SANITIZED else 12
FORK_KEYS = ("shardserve:request_forked_choices_total", "shardserve:forked_sequences_total",
             "shardserve:forked_blocks_shared_total", "shardserve:kv_cow_copies_total")


def fork_choices(srv, label, seed=4321, n=4):
    """n choices with a seed beside other streams; choice i against the n = 1
    request with seed + i, and the fork counters."""
    client = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0, timeout=600)
    kw = dict(model=MODEL_NAME, prompt=FORK_PROMPT, temperature=1.0, max_tokens=FORK_GEN,
              logprobs=0, extra_body={"ignore_eos": True})
    code, body = srv.post("/tokenize", {"prompt": FORK_PROMPT})
    n_prompt = json.loads(body)["count"] if code == 200 else -1
    if not ck.check(n_prompt > 32 and n_prompt % 16 != 0, f"{label}: /tokenize {code} {body[:200]!r}"):
        return
    m0 = srv.metrics()
    with concurrent.futures.ThreadPoolExecutor(7) as ex:
        others = [ex.submit(one, srv.url, j) for j in JOBS[:6]]
        r = client.completions.create(n=n, seed=seed, **kw)
        for o in others:
            o.result()
    m1 = {}
    for _ in range(100):
        m1 = srv.metrics()
        if m1.get("shardserve:num_requests_running") == 0:
            break
        time.sleep(0.1)
    blocks = -(-n_prompt // 16)
    want = {FORK_KEYS[0]: n - 1, FORK_KEYS[1]: n - 1, FORK_KEYS[2]: (n - 1) * blocks,
            FORK_KEYS[3]: n - 1}
    got = {k: m1.get(k, 0.0) - m0.get(k, 0.0) for k in FORK_KEYS}
    ck.check(got == want, f"{label}: fork metrics {got}, expected {want}")
    idle = {k: m1.get(k) for k in ("shardserve:kv_cache_blocks_used", "shardserve:kv_blocks_shared")}
    ck.check(all(v == 0 for v in idle.values()), f"{label}: not idle after the forks: {idle}")
    ck.check(len(r.choices) == n and len({c.text for c in r.choices}) == n,
             f"{label}: {n} choices not distinct: {[c.text for c in r.choices]}")
    same = 0
    for i, c in enumerate(r.choices[:n]):
        ref = client.completions.create(seed=seed + i, **kw).choices[0]
        ok = (ref.logprobs.tokens == c.logprobs.tokens and
              ref.logprobs.token_logprobs == c.logprobs.token_logprobs and
              len(c.logprobs.tokens) == FORK_GEN)
        same += ok
        ck.check(ok, f"{label}: choice {i} {c.logprobs.tokens} {c.logprobs.token_logprobs} != "
                 f"n = 1 with seed {seed + i}: {ref.logprobs.tokens} {ref.logprobs.token_logprobs}")
    print(f"{label}: {same}/{n} choices identical to their n = 1 requests; fork metrics {got}",
          flush=True)


def serve_all(label, n_ranks, extra, jobs, trace=None, drops=0, then=None):
    """Runs jobs concurrently on a fresh server; returns (outputs, metrics after).
    With drops: then that many streams closed early by the client, beside the
    first 8 jobs again, whose outputs must not change; the aborted requests'
    KV must come back.  then(srv, label), when given, runs last on the server."""
    extra = ["--max-num-seqs", "32", "--kv-cache-dtype", "f32", *extra]
    if trace:
        extra += ["--trace", trace]
    srv = Server(args.bin, args.model, tp=n_ranks, extra=extra)
    outs, metrics = None, {}
    try:
        with concurrent.futures.ThreadPoolExecutor(len(jobs)) as ex:
            outs = list(ex.map(lambda j: one(srv.url, j), jobs))
        # The per-rank counters are gathered once the engine goes idle, just
        # after the last token went out.
        for _ in range(100):
            metrics = srv.metrics()
            steps = {v for k, v in metrics.items() if k.startswith("shardserve:rank_steps_total")}
            if (len(steps) == 1 and min(steps) > 0 and
                    metrics.get("shardserve:num_requests_running") == 0):
                break
            time.sleep(0.1)
        if drops:
            again = jobs[:8]
            with concurrent.futures.ThreadPoolExecutor(len(again) + drops) as ex:
                dropped = [ex.submit(drop_after, srv.url, jobs[i], 2 + i) for i in range(drops)]
                outs2 = list(ex.map(lambda j: one(srv.url, j), again))
                for d in dropped:
                    d.result()
            ck.check(outs2 == outs[:8], f"{label}: outputs changed beside streams closed early")
            m2 = {}
            for _ in range(100):
                m2 = srv.metrics()
                if (m2.get("shardserve:kv_cache_blocks_used") == 0 and
                        m2.get("shardserve:num_requests_running") == 0):
                    break
                time.sleep(0.1)
            ck.check(m2.get("shardserve:kv_cache_blocks_used") == 0 and
                     m2.get("shardserve:num_requests_running") == 0 and
                     m2.get(ABORTED) == drops,
                     f"{label}: after {drops} streams closed early: blocks used "
                     f"{m2.get('shardserve:kv_cache_blocks_used')}, running "
                     f"{m2.get('shardserve:num_requests_running')}, aborted "
                     f"{m2.get(ABORTED)}")
        if then:
            then(srv, label)
    except Exception as e:  # noqa: BLE001 - reported as a failed check
        ck.check(False, f"{label}: {type(e).__name__}: {e}")
    finally:
        rc = srv.stop(timeout=120)
        err = "".join(srv.log)
        ck.check(rc == 0, f"{label}: exit {rc}: {err[-1500:]}")
        ck.check(not any(m in err for m in SANITIZER_MARKS), f"{label}: sanitizer report")
    return outs, metrics


def compare(label, base, got):
    if not ck.check(base is not None and got is not None, f"{label}: no outputs to compare"):
        return
    diff = [i for i, (a, b) in enumerate(zip(base, got)) if a != b]
    ck.check(len(base) == len(got) and not diff,
             f"{label}: {len(diff)} of {len(base)} streams differ from the reference; first "
             f"{diff[:1] and (base[diff[0]], got[diff[0]])}")
    ck.check(all(o["finish"] in ("stop", "length") and o["tokens"] and
                 len(o["tokens"]) == len(o["logprobs"]) == len(o["top"]) == o["usage"][1]
                 for o in got), f"{label}: a stream without its tokens, logprobs or usage")
    print(f"{label}: {len(got) - len(diff)}/{len(got)} streams identical to the reference",
          flush=True)


def check_metrics(label, m, outs, n_stage_ranks):
    if not outs or not m:
        return
    succ = sum(v for k, v in m.items() if k.startswith("shardserve:request_success_total"))
    ck.check(succ == len(outs), f"{label}: request_success_total {succ}, {len(outs)} requests")
    ck.check(m.get("shardserve:generation_tokens_total") == sum(o["usage"][1] for o in outs),
             f"{label}: generation_tokens_total {m.get('shardserve:generation_tokens_total')}, "
             f"the streams {sum(o['usage'][1] for o in outs)}")
    ck.check(m.get("shardserve:prompt_tokens_total") == sum(o["usage"][0] for o in outs),
             f"{label}: prompt_tokens_total {m.get('shardserve:prompt_tokens_total')}")
    ck.check(m.get("shardserve:kv_cache_usage_perc") == 0 and
             m.get("shardserve:kv_cache_blocks_used") == 0 and
             m.get("shardserve:num_requests_running") == 0 and
             m.get("shardserve:num_requests_waiting") == 0,
             f"{label}: KV / running not back to 0: "
             f"{[(k, v) for k, v in m.items() if 'kv_cache' in k or 'num_requests' in k]}")
    steps = [m.get(f'shardserve:rank_steps_total{{rank="{r}"}}') for r in range(n_stage_ranks)]
    ck.check(steps[0] and len(set(steps)) == 1,
             f"{label}: forward passes per rank {steps} (every step runs on every stage)")


def layer_overlaps(trace, label, in_flight):
    """Pairs of rank-0 and rank-1 'layer' spans that run at the same time."""
    try:
        with open(trace) as f:
            ev = json.load(f)["traceEvents"]
    except (OSError, ValueError, KeyError) as e:
        ck.check(False, f"{label}: trace unreadable: {e}")
        return None
    xs = [e for e in ev if e.get("ph") == "X"]
    # Nesting within each track, as test_trace.py holds every run to.
    tracks = {}
    for e in xs:
        tracks.setdefault((e["pid"], e["tid"]), []).append(e)
    bad = []
    for key, es in tracks.items():
        es.sort(key=lambda e: (e["ts"], -e["dur"]))
        stack = []
        for e in es:
            while stack and stack[-1]["ts"] + stack[-1]["dur"] <= e["ts"] + 1:
                stack.pop()
            if stack and e["ts"] + e["dur"] > stack[-1]["ts"] + stack[-1]["dur"] + 1:
                bad.append((key, stack[-1]["name"], e["name"]))
            stack.append(e)
    ck.check(not bad, f"{label}: spans overlap partially within a track: {bad[:5]}")
    # Rank 0: one 'step' span per forward pass; with steps in flight each
    # also has a 'step end'.
    n = {k: len([e for e in xs if e["pid"] == 0 and e["name"] == k])
         for k in ("forward", "step", "step end")}
    ck.check(n["forward"] > 0 and n["step"] == n["forward"] and
             n["step end"] == (n["step"] if in_flight else 0),
             f"{label}: rank 0 spans {n}")
    l0 = sorted((e["ts"], e["ts"] + e["dur"]) for e in xs if e["pid"] == 0 and e["name"] == "layer")
    l1 = sorted((e["ts"], e["ts"] + e["dur"]) for e in xs if e["pid"] == 1 and e["name"] == "layer")
    ck.check(l0 and l1, f"{label}: no layer spans on rank 0 or 1")
    n, j = 0, 0
    for a0, a1 in l1:
        while j < len(l0) and l0[j][1] <= a0:
            j += 1
        k = j
        while k < len(l0) and l0[k][0] < a1:
            n += min(a1, l0[k][1]) - max(a0, l0[k][0]) > 0
            k += 1
    return n


try:
    # 5. The flag without pipeline stages.
    rc, _, err = ck.run(args.bin, ["serve", "--model", args.model, "--port", "0",
                                   "--pp-microbatches", "2"], timeout=60)
    ck.check(rc == 2 and "--pp-microbatches" in err and "--pp" in err,
             f"--pp-microbatches without --pp: exit {rc}, {err[-300:]!r}")
    rc, _, err = ck.run(args.bin, ["serve", "--model", args.model, "--port", "0", "--pp", "2",
                                   "--pp-microbatches", "0"], timeout=60)
    ck.check(rc == 2 and "--pp-microbatches" in err, f"--pp-microbatches 0: exit {rc}, {err[-300:]!r}")

    # 1-3. PP 1, then PP 2 with micro-batches and without.
    base, _ = serve_all("PP 1", 1, [], JOBS)
    t_mb = os.path.join(tmp, "mb.json")
    got, m = serve_all("PP 2", 2, ["--pp", "2", "--tp", "1"], JOBS, trace=t_mb, drops=4,
                       then=fork_choices)
    compare("PP 2 (2 micro-batches)", base, got)
    check_metrics("PP 2 (2 micro-batches)", m, got, 2)
    t_one = os.path.join(tmp, "one.json")
    got1, m1 = serve_all("PP 2 one at a time", 2, ["--pp", "2", "--tp", "1", "--pp-microbatches", "1"],
                         JOBS, trace=t_one)
    compare("PP 2 (--pp-microbatches 1)", base, got1)
    check_metrics("PP 2 (--pp-microbatches 1)", m1, got1, 2)
    ov_mb = layer_overlaps(t_mb, "PP 2 trace", True)
    ov_one = layer_overlaps(t_one, "PP 2 x1 trace", False)
    if ov_mb is not None and ov_one is not None:
        ck.check(ov_mb > 0, "PP 2 with micro-batches: no layer of stage 1 ran while stage 0 ran one "
                 "(no steps in flight together)")
        ck.check(ov_one == 0, f"PP 2 --pp-microbatches 1: {ov_one} layers of the two stages ran at "
                 "once (one step at a time cannot)")
        print(f"layers of stage 1 running beside one of stage 0: {ov_mb} with micro-batches, "
              f"{ov_one} without", flush=True)

    # 4. PP 2 x TP 2 against TP 2.
    if not SANITIZED:
        few = JOBS[:8]
        base2, _ = serve_all("TP 2", 2, ["--tp", "2"], few)
        got2, m2 = serve_all("PP 2 x TP 2", 4, ["--pp", "2", "--tp", "2"], few)
        compare("PP 2 x TP 2 (2 micro-batches)", base2, got2)
        check_metrics("PP 2 x TP 2", m2, got2, 4)
        # Four stages, four steps in flight: the step goes three hops down.
        got4, m4 = serve_all("PP 4", 4, ["--pp", "4", "--tp", "1"], few)
        compare("PP 4 (4 micro-batches)", base[:8] if base else None, got4)
        check_metrics("PP 4", m4, got4, 4)
finally:
    shutil.rmtree(tmp, ignore_errors=True)
ck.finish()
