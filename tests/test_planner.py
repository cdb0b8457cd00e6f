"""The capacity planner: memory and KV figures checked by hand arithmetic, the
simulation's internal consistency, and bad inputs.

Hand arithmetic (Grok-1, configs/models/grok-1.json): per-rank weight bytes
come from the plan (pinned elsewhere against 315.7B parameters); the KV room of
a rank is 0.9 x 80 GiB minus its weights (the H100 preset keeps 10% for
activations), and Grok-1's K+V per token in bf16 is 2 x 64 layers x 8 KV heads
x 128 x 2 B = 256 KiB for the whole model, 32 KiB per rank at TP 8.
"""
import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "lib"))
from harness import Checker, parse_args  # noqa: E402

args = parse_args()
ck = Checker("planner")
ROOT = os.path.dirname(HERE)
GROK1 = os.path.join(ROOT, "configs", "models", "grok-1.json")
GROK2 = os.path.join(ROOT, "configs", "models", "grok-2.json")
H100 = os.path.join(ROOT, "configs", "hardware", "h100-sxm-80g.json")
H200 = os.path.join(ROOT, "configs", "hardware", "h200-141g.json")


def plan(*flags):
    rc, out, err = ck.run(args.bin, ["plan", *flags, "--json"], timeout=600)
    if not ck.check(rc == 0, f"plan {flags} failed ({rc}): {err[-800:]}"):
        return None
    return json.loads(out)


for dtype in ("fp8", "bf16"):
    p = plan("--model", GROK1, "--tp", "8", "--dtype", dtype, "--hardware", H100)
    if not p:
        continue
    ck.check(p["kv_bytes_per_token"] == 256 * 1024, f"grok-1 KV/token {p['kv_bytes_per_token']}")
    mem = 80 * 2**30
    for r in p["memory_per_rank"]:
        w = r["weight_bytes"]
        room = 0.9 * mem - w
        ck.check(abs(r["kv_room_bytes"] - max(room, 0)) < 1, f"{dtype} rank {r['rank']}: room "
                 f"{r['kv_room_bytes']} vs {room}")
        if room > 0:
            ck.check(abs(r["kv_capacity_tokens"] - room / (32 * 1024)) < 1,
                     f"{dtype} rank {r['rank']}: KV tokens {r['kv_capacity_tokens']}")
    print(f"grok-1 {dtype} on 8 x H100: fits {p['fits']}, weights/rank "
          f"{p['memory_per_rank'][0]['weight_bytes'] / 2**30:.2f} GiB, KV "
          f"{p['kv_capacity_tokens']:.0f} tokens")
    # fp8: 315.7B params / 8 ranks ~ 36.8 GiB fits; bf16: ~73.5 GiB per rank does not
    # fit in 72 GiB usable.
    ck.check(p["fits"] == (dtype == "fp8"), f"grok-1 {dtype} on 8 x H100 fits = {p['fits']}")

p = plan("--model", GROK1, "--tp", "8", "--dtype", "bf16", "--hardware", H200)
ck.check(p and p["fits"] and p["kv_capacity_tokens"] > 0, "grok-1 bf16 on 8 x H200 fits")
p = plan("--model", GROK2, "--tp", "8", "--dtype", "fp8", "--hardware", H100)
ck.check(p is not None and "fits" in p, "grok-2 fp8 on 8 x H100 planned")

# A workload: every request completes, token totals are what was asked, the
# percentiles are ordered, TPOT is consistent with the decode step time.
p = plan("--model", GROK1, "--tp", "8", "--dtype", "fp8", "--hardware", H100,
         "--request-rate", "4", "--num-prompts", "100", "--random-input-len", "512",
         "--random-output-len", "64", "--seed", "3", "--goodput", "ttft:1000", "tpot:50",
         "--max-rate")
if p:
    s = p["simulation"]
    ck.check(s["completed"] == 100 and s["total_output_tokens"] == 6400 and
             s["total_input_tokens"] == 51200, f"simulation totals {s}")
    ck.check(s["median_ttft_ms"] <= s["p90_ttft_ms"] <= s["p99_ttft_ms"], "TTFT percentiles ordered")
    ck.check(s["median_tpot_ms"] >= p["step_times_ms"]["decode_batch1"]["total"] * 0.99,
             f"TPOT {s['median_tpot_ms']} below a batch-1 decode step "
             f"{p['step_times_ms']['decode_batch1']['total']}")
    ck.check(p["max_rate_meeting_slo"] > 0, f"max rate {p.get('max_rate_meeting_slo')}")
    # Same seed, same prediction.
    q = plan("--model", GROK1, "--tp", "8", "--dtype", "fp8", "--hardware", H100,
             "--request-rate", "4", "--num-prompts", "100", "--random-input-len", "512",
             "--random-output-len", "64", "--seed", "3")
    ck.check(q and q["simulation"]["mean_ttft_ms"] == s["mean_ttft_ms"], "seeded simulation repeats")

# The default model with a measured-style profile written here.
prof = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"ss-prof-{os.getpid()}.json")
json.dump({"name": "test", "mem_bytes": 8e9, "mem_bw": 2e10, "flops": 5e10,
           "attn_s_per_pos": 1e-7, "step_overhead_s": 1e-4, "logit_row_s": 5e-5,
           "request_overhead_s": 1e-3}, open(prof, "w"))
p = plan("--model", args.model, "--tp", "1", "--hardware", prof, "--kv-blocks", "100",
         "--max-concurrency", "4", "--num-prompts", "20", "--random-input-len", "100",
         "--random-output-len", "20")
if p:
    ck.check(p["kv_capacity_tokens"] == 1600, f"--kv-blocks 100 gives {p['kv_capacity_tokens']} tokens")
    ck.check(p["simulation"]["completed"] == 20, "closed loop completes")

# How weight streaming M and matmul time C combine: (M^p + C^p)^(1/p), max for
# p = 0, checked against the components the plan reports; a prompt token's
# matmul cost scales with prefill_token_cost while a decode step's does not.
base = {"name": "t", "mem_bytes": 8e9, "mem_bw": 2e10, "flops": 5e10, "attn_s_per_pos": 1e-7}
steps = {}
for label, extra in [("max", {}), ("p2", {"roofline_exponent": 2}),
                     ("pf2", {"prefill_token_cost": 2})]:
    json.dump({**base, **extra}, open(prof, "w"))
    q = plan("--model", args.model, "--tp", "1", "--hardware", prof, "--request-rate", "1",
             "--num-prompts", "2", "--random-input-len", "64", "--random-output-len", "4")
    if q:
        steps[label] = q["step_times_ms"]
if len(steps) == 3:
    for k in ("prefill", "decode_batch1"):
        s_max, s_p2 = steps["max"][k], steps["p2"][k]
        ck.check(abs(s_max["total"] - max(s_max["memory"], s_max["compute"]) - s_max["attention"])
                 < 1e-9 * s_max["total"] + 1e-12, f"max roofline {k}: {s_max}")
        want = (s_p2["memory"] ** 2 + s_p2["compute"] ** 2) ** 0.5 + s_p2["attention"]
        ck.check(abs(s_p2["total"] - want) <= 1e-9 * want, f"p = 2 roofline {k}: {s_p2}")
    ck.check(steps["pf2"]["decode_batch1"]["compute"] == steps["max"]["decode_batch1"]["compute"],
             "prefill_token_cost changes a decode step")
    r = steps["pf2"]["prefill"]["compute"] / steps["max"]["prefill"]["compute"]
    ck.check(1.5 < r < 2.0, f"prefill_token_cost 2 scales a 64-token prefill's matmuls by {r}")

# Attention: K/V positions read x attn_s_per_pos + query-key pairs x
# attn_s_per_pair.  A 64-token prompt reads 64 positions and forms 64*65/2
# pairs; a decoding sequence at mean context L + O/2 reads and pairs as many.
json.dump({**base, "attn_s_per_pos": 3e-6, "attn_s_per_pair": 5e-7}, open(prof, "w"))
q = plan("--model", args.model, "--tp", "1", "--hardware", prof, "--request-rate", "1",
         "--num-prompts", "2", "--random-input-len", "64", "--random-output-len", "8")
if q:
    st = q["step_times_ms"]
    want_p = (64 * 3e-6 + 64 * 65 / 2 * 5e-7) * 1e3
    want_d = (64 + 4) * (3e-6 + 5e-7) * 1e3
    ck.check(abs(st["prefill"]["attention"] - want_p) <= 1e-9 * want_p,
             f"prefill attention {st['prefill']['attention']} ms, by hand {want_p}")
    ck.check(abs(st["decode_batch1"]["attention"] - want_d) <= 1e-9 * want_d,
             f"decode attention {st['decode_batch1']['attention']} ms, by hand {want_d}")
# roofline_correction multiplies the weight-and-matmul part by a ratio taken
# from [tokens, ratio] points, linear in log(tokens) between them: 1 token ->
# 1.0, 4 tokens -> 2.0, so 2 tokens (a batch of two decoding) -> 1.5.
json.dump({**base, "roofline_correction": [[1, 1.0], [4, 2.0]]}, open(prof, "w"))
q = plan("--model", args.model, "--tp", "1", "--hardware", prof, "--request-rate", "1",
         "--num-prompts", "2", "--random-input-len", "64", "--random-output-len", "8",
         "--max-num-seqs", "2")
if q:
    for k, want in (("decode_batch1", 1.0), ("decode_full_batch", 1.5)):
        s = q["step_times_ms"][k]
        got = (s["total"] - s["attention"]) / max(s["memory"], s["compute"])
        ck.check(abs(got - want) < 1e-9, f"roofline_correction at {k}: x{got}, want x{want}")
    s = q["step_times_ms"]["prefill"]  # 64 tokens: past the last point, its ratio holds
    got = (s["total"] - s["attention"]) / max(s["memory"], s["compute"])
    ck.check(abs(got - 2.0) < 1e-9, f"roofline_correction past its last point: x{got}")
# --per-request: each simulated request, in arrival order, under loadgen's
# names; the summary's medians are numpy's medians of these arrays.
json.dump(base, open(prof, "w"))
q = plan("--model", args.model, "--tp", "1", "--hardware", prof, "--request-rate", "3",
         "--num-prompts", "25", "--random-input-len", "40", "--random-output-len", "10",
         "--random-range-ratio", "0.5", "--seed", "4", "--per-request")
if q:
    s = q["simulation"]
    st, tt, lat = np.array(s["start_times"]), np.array(s["ttfts"]), np.array(s["latencies"])
    il, ol = np.array(s["input_lens"]), np.array(s["output_lens"])
    ck.check(len(st) == len(tt) == len(lat) == len(il) == len(ol) == 25, "per-request lengths")
    ck.check(bool(np.all(np.diff(st) >= 0)) and st[0] == 0, "start times in arrival order")
    ck.check(bool(np.all(tt <= lat)), "each TTFT within its latency")
    ck.check(int(il.sum()) == s["total_input_tokens"] and int(ol.sum()) == s["total_output_tokens"],
             "per-request lengths sum to the totals")
    ck.check(bool(np.all((il >= 20) & (il <= 60) & (ol >= 5) & (ol <= 15))), "lengths in range")
    tpot = (lat - tt) / np.maximum(ol - 1, 1)
    ck.check(abs(np.median(tt) * 1e3 - s["median_ttft_ms"]) < 1e-6 and
             abs(np.median(tpot[ol > 1]) * 1e3 - s["median_tpot_ms"]) < 1e-6,
             "summary medians are the arrays' medians")
q = plan("--model", args.model, "--tp", "1", "--hardware", prof, "--request-rate", "3",
         "--num-prompts", "5")
ck.check(q is not None and "ttfts" not in q["simulation"], "no per-request arrays unless asked")
# --max-waiting, as the engine applies it: every request of a burst arrives
# before the first step, so the first N are queued and the rest refused (429).
q = plan("--model", args.model, "--tp", "1", "--hardware", prof, "--request-rate", "inf",
         "--num-prompts", "20", "--random-input-len", "40", "--random-output-len", "4",
         "--max-waiting", "6", "--per-request")
if q:
    s = q["simulation"]
    errs = s["errors"]
    ck.check(s["completed"] == 6 and s["rejected"] == 14 and s["max_waiting"] == 6,
             f"burst of 20 at --max-waiting 6: {s['completed']} completed, {s['rejected']} refused")
    ck.check([e == "" for e in errs] == [True] * 6 + [False] * 14 and "429" in errs[-1],
             f"the refused ones are the last 14 to arrive: {errs}")
    ck.check(all(t == 0 for t, e in zip(s["ttfts"], errs) if e) and
             s["total_output_tokens"] == 6 * 4, "refused requests carry no figures")
q = plan("--model", args.model, "--tp", "1", "--hardware", prof, "--request-rate", "inf",
         "--num-prompts", "20", "--random-input-len", "40", "--random-output-len", "4")
ck.check(q is not None and q["simulation"]["rejected"] == 0 and
         q["simulation"]["max_waiting"] == 1024, "serve's default queue limit (1024) refuses none")
# --max-rate counts a refused request as one that missed the SLOs: with SLOs
# no completed request can miss, only the queue limit bounds the rate, so at
# the rate found at most 1% of the requests sent may be refused, and well past
# it more are.
wl = ["--model", GROK1, "--tp", "8", "--dtype", "fp8", "--hardware", H100, "--num-prompts", "100",
      "--random-input-len", "512", "--random-output-len", "64", "--seed", "5", "--max-waiting", "2"]
q = plan(*wl, "--goodput", "ttft:1e7", "tpot:1e7", "--max-rate")
if q:
    r = q["max_rate_meeting_slo"]
    at = plan(*wl, "--request-rate", repr(r))
    past = plan(*wl, "--request-rate", repr(4 * r))
    if ck.check(r > 0 and at and past, f"max rate with --max-waiting 2: {r}"):
        a, b = at["simulation"], past["simulation"]
        ck.check(a["rejected"] <= 0.01 * (a["completed"] + a["rejected"]),
                 f"at the max rate {r:.2f} req/s {a['rejected']} of 100 refused (at most 1 allowed)")
        ck.check(b["rejected"] > 1, f"at 4x the max rate only {b['rejected']} refused")
        print(f"--max-waiting 2: max rate {r:.2f} req/s, {a['rejected']} refused there, "
              f"{b['rejected']} at 4x", flush=True)
rc, out, err = ck.run(args.bin, ["plan", "--model", args.model, "--tp", "1", "--hardware", prof,
                                 "--max-waiting", "0"])
ck.check(rc == 2 and "--max-waiting" in err, f"--max-waiting 0: {rc} {err!r}")

# A GPU preset sets neither: reading a position costs this rank's K/V bytes per
# token over the bandwidth, a pair 4 x heads x head_dim flops per layer at the
# 16-bit rate even with fp8 weights.  Grok-1 on 8 ranks: 64 layers, 48/8 query
# heads of 128 per rank.
hw = json.load(open(H100))
q = plan("--model", GROK1, "--tp", "8", "--dtype", "fp8", "--hardware", H100, "--request-rate", "1",
         "--num-prompts", "2", "--random-input-len", "1024", "--random-output-len", "8")
if q:
    kvb = max(r["kv_bytes_per_token"] for r in q["ranks"])
    pair_flops = 4 * 64 * (48 // 8) * 128
    want = (1024 * kvb / hw["mem_bw"] + 1024 * 1025 / 2 * pair_flops / hw["flops"]) * 1e3
    got = q["step_times_ms"]["prefill"]["attention"]
    ck.check(abs(got - want) <= 1e-6 * want, f"grok-1 fp8 1024-token prefill attention {got} ms, "
             f"by hand {want} ms")

# A server step log against the cost model: the same steps logged as taking
# twice as long halve the predicted/measured ratio; --calibrate on a log sets
# the load factor so that, with the saved profile, the log is matched exactly.
json.dump(base, open(prof, "w"))
tmpd = os.environ.get("TMPDIR", "/tmp")
log1, log2 = (os.path.join(tmpd, f"ss-steps{i}-{os.getpid()}.csv") for i in (1, 2))
shapes = [(1, 1, 1, 80, 80), (4, 4, 4, 300, 300), (70, 3, 3, 2400, 150), (32, 1, 1, 528, 32)]
for path, scale in ((log1, 1.0), (log2, 2.0)):
    with open(path, "w") as f:
        f.write("t_s,n_tokens,n_logits,n_seqs,attended,kv_read,forward_s,step_s\n")
        for i, (nt, nl, ns, att, kvr) in enumerate(shapes):
            f.write(f"{i * 0.1:.6f},{nt},{nl},{ns},{att},{kvr},{0.01 * nt * scale:.6f},"
                    f"{0.011 * nt * scale:.6f}\n")
q1 = plan("--model", args.model, "--tp", "1", "--hardware", prof, "--step-log", log1)
q2 = plan("--model", args.model, "--tp", "1", "--hardware", prof, "--step-log", log2)
saved = os.path.join(tmpd, f"ss-cal-{os.getpid()}.json")
q3 = plan("--model", args.model, "--tp", "1", "--hardware", prof, "--step-log", log2,
          "--calibrate", "--save-hardware", saved)
if q1 and q2 and q3:
    a1 = q1["step_log"]["all"]
    a2 = q2["step_log"]["all"]
    ck.check(a1["steps"] == 4 and a1["measured_s"] > 0, f"step log read: {a1}")
    ck.check(abs(a2["predicted_over_measured"] * 2 - a1["predicted_over_measured"]) < 1e-9,
             f"step log ratios {a1['predicted_over_measured']} vs {a2['predicted_over_measured']}")
    ck.check(q1["step_log"]["decode"]["steps"] == 2 and q1["step_log"]["prefill"]["steps"] == 2,
             f"decode / prefill split: {q1['step_log']}")
    lf = q3["calibrated_load_factor"]
    ck.check(abs(lf - 1 / a2["predicted_over_measured"]) < 1e-9, f"load factor {lf}")
    ck.check(abs(json.load(open(saved))["load_factor"] - lf) < 1e-12, "saved profile's load factor")
    q4 = plan("--model", args.model, "--tp", "1", "--hardware", saved, "--step-log", log2)
    if q4:
        r = q4["step_log"]["all"]["predicted_over_measured"]
        ck.check(abs(r - 1) < 1e-9, f"calibrated profile predicts {r} of the log it was fitted on")
bad_log = os.path.join(tmpd, f"ss-badlog-{os.getpid()}.csv")
HDR = "t_s,n_tokens,n_logits,n_seqs,attended,kv_read,forward_s,step_s\n"
for text, needle in [("hello\n1,2\n", "not a step log"),
                     # the header without kv_read (an older server's log)
                     ("t_s,n_tokens,n_logits,n_seqs,attended,forward_s,step_s\n0,1,1,1,1,1,1\n",
                      "not a step log"),
                     (HDR + "0,1,1,1,x,1,1,1\n", "line 2: field 'attended'"),
                     (HDR + "0,1,5,1,1,1,1,1\n", "field 'n_logits'"),
                     (HDR + "0,8,1,1,36,40,1,1\n", "field 'kv_read'"),
                     (HDR, "no steps")]:
    open(bad_log, "w").write(text)
    rc, out, err = ck.run(args.bin, ["plan", "--model", args.model, "--tp", "1", "--hardware", prof,
                                     "--step-log", bad_log])
    ck.check(rc == 1 and needle in err, f"bad step log {text!r}: {rc} {err!r}")
rc, out, err = ck.run(args.bin, ["plan", "--model", args.model, "--tp", "1", "--hardware", prof,
                                 "--calibrate"])
ck.check(rc == 2 and "--step-log" in err, f"--calibrate alone: {rc} {err!r}")
for f_ in (log1, log2, saved, bad_log):
    if os.path.exists(f_):
        os.unlink(f_)

# prefix_repetition through the scheduler's prefix cache.  One request at a
# time (closed loop, concurrency 1), so every request after the first of its
# prefix finds that prefix's full blocks computed: the hit count is known
# without the simulator -- (per prefix - 1) x prefixes x the prefix's whole
# 16-token blocks -- and the lookups are every prompt token once.
P, S, NPRE, PER = 200, 24, 3, 4
pre = ["--model", args.model, "--tp", "1", "--hardware", prof, "--dataset-name", "prefix_repetition",
       "--num-prompts", str(NPRE * PER + 2), "--prefix-repetition-num-prefixes", str(NPRE),
       "--prefix-repetition-prefix-len", str(P), "--prefix-repetition-suffix-len", str(S),
       "--prefix-repetition-output-len", "4", "--max-concurrency", "1"]
on, off = plan(*pre), plan(*pre, "--no-prefix-caching")
if on and off:
    s_on, s_off = on["simulation"], off["simulation"]
    want_hits = (PER - 1) * NPRE * (P // 16 * 16)
    ck.check(s_on["completed"] == NPRE * PER and s_on["total_input_tokens"] == NPRE * PER * (P + S),
             f"prefix_repetition: {s_on['completed']} requests, {s_on['total_input_tokens']} prompt "
             f"tokens (want {NPRE * PER} of {P + S}: --num-prompts rounds down to a multiple)")
    ck.check(s_on["prefix_cache_hits"] == want_hits and
             s_on["prefix_cache_queries"] == NPRE * PER * (P + S),
             f"prefix cache: {s_on['prefix_cache_hits']} of {s_on['prefix_cache_queries']} found, "
             f"want {want_hits} of {NPRE * PER * (P + S)}")
    ck.check(s_off["prefix_cache_hits"] == 0 and s_off["prefix_caching"] is False,
             f"--no-prefix-caching: {s_off['prefix_cache_hits']} hits")
    ck.check(s_on["median_ttft_ms"] < s_off["median_ttft_ms"],
             f"cached prefixes lower the median TTFT: {s_on['median_ttft_ms']} vs "
             f"{s_off['median_ttft_ms']} ms")
rc, out, err = ck.run(args.bin, ["plan", *pre[:-6], "--num-prompts", "2", "--max-concurrency", "1"])
ck.check(rc == 2 and "prefixes" in err, f"fewer requests than prefixes: {rc} {err!r}")
rc, out, err = ck.run(args.bin, ["plan", *pre, "--dataset-name", "sharegpt"])
ck.check(rc == 2 and "--dataset-name" in err, f"--dataset-name sharegpt: {rc} {err!r}")

# Pipeline stages: a step runs the stages one after another, so at PP 2 it costs what the same TP degree's step costs plus the
# hand-off of the step's residual stream (dim f32 per token) to the next stage
# and the sampled rows' logits (vocab f32 each) back to rank 0 -- each one link
# latency plus bytes over bandwidth, over the preset's inter-node link when the
# stages sit on different nodes (8 devices per node).  Exact while every stage
# is bound by the same roofline side (Grok-1's even halves are, here).
hw = json.load(open(H100))
grok = json.load(open(GROK1))
dim, vocab = grok.get("dim") or grok["hidden_size"], grok.get("vocab") or grok["vocab_size"]
for tp, inter in ((8, True), (4, False)):
    base_ = plan("--model", GROK1, "--tp", str(tp), "--dtype", "fp8", "--hardware", H100)
    piped = plan("--model", GROK1, "--pp", "2", "--tp", str(tp), "--dtype", "fp8", "--hardware", H100,
                 "--request-rate", "2", "--num-prompts", "20")
    if not (base_ and piped):
        continue
    bw, lat = (hw["inter_bw"], hw["inter_lat"]) if inter else (hw["link_bw"], hw["link_lat"])
    for name, n_tok, n_log in (("prefill", 512, 1), ("decode_batch1", 1, 1),
                               ("decode_full_batch", 64, 64)):
        want = (base_["step_times_ms"][name]["total"] +
                1e3 * (2 * lat + (n_tok * dim * 4 + n_log * vocab * 4) / bw))
        got = piped["step_times_ms"][name]["total"]
        ck.check(abs(got - want) <= 1e-6 * want,
                 f"pp 2 x tp {tp} {name}: {got:.6f} ms, want the tp {tp} step + hand-offs "
                 f"{want:.6f} ms")
    ck.check(piped["kv_capacity_tokens"] > 2 * base_["kv_capacity_tokens"],
             f"pp 2 x tp {tp}: KV capacity {piped['kv_capacity_tokens']} vs tp {tp} "
             f"{base_['kv_capacity_tokens']}: each stage holds half the layers' K/V and weights")
    ck.check(len(piped["memory_per_rank"]) == 2 * tp and piped["simulation"]["completed"] == 20,
             f"pp 2 x tp {tp}: {len(piped['memory_per_rank'])} ranks, simulation "
             f"{piped['simulation'].get('completed')}")

# Steps in flight (--pp-microbatches K, serve's default K = the stages): the
# scheduler splits the running sequences into K groups that take turns, and
# stage s works on one group's step while stage s + 1 works on an earlier one.
# Queueing arithmetic gives the steady decode pace, independent of the
# simulation's event code: a group's token comes round once per
#   max(R, K x B)
# where R is one step's trip around the ring (rank 0's overhead and first
# stage, each hand-off and later stage, the logits home, rank 0's sampling)
# and B the busiest resource's time per step (rank 0: overhead + first stage +
# sampling; stage s >= 1: its work).  K = 1 is R of the whole batch.  The
# parts come from the plan's own --step-cost breakdown, for the step shape of
# a group of 64 / K decoding sequences at the run's mean context (attention is
# a few parts in 10^4 of these steps, so its drift over the run is far inside
# the 1% allowed).  64 users, 64 prompts of 16 tokens, 64 tokens out each.
IN, OUT, C = 16, 64, 64
ctx = IN + OUT / 2
common = ["--model", GROK1, "--pp", "2", "--tp", "8", "--dtype", "fp8", "--hardware", H100,
          "--max-concurrency", str(C), "--num-prompts", str(C), "--random-input-len", str(IN),
          "--random-output-len", str(OUT), "--random-range-ratio", "0"]
for K in (1, 2, 4):
    n = C // K
    r = plan(*common, "--pp-microbatches", str(K), "--step-cost", f"{n}:{n}:{n * ctx}:{n * ctx}")
    if not r:
        continue
    sc = r["step_costs_ms"][0]
    st = sc["stages"]
    ring = sc["rank0_overhead"] + sc["rank0_sampling"] + sum(g["work"] + g["handoff"] for g in st)
    busy = max([sc["rank0_overhead"] + st[0]["work"] + sc["rank0_sampling"]] +
               [g["work"] for g in st[1:]])
    ck.check(abs(ring - sc["total"]) <= 1e-9 * ring,
             f"pp 2, {n} sequences: the parts sum to {ring} ms, the step costs {sc['total']} ms")
    want = max(ring, K * busy)
    got = r["simulation"]["median_tpot_ms"]
    ck.check(r["simulation"]["microbatches"] == K and abs(got - want) <= 0.01 * want,
             f"pp 2 x tp 8, {K} step(s) in flight: median TPOT {got:.3f} ms, want max(ring "
             f"{ring:.3f}, {K} x busiest {busy:.3f}) = {want:.3f} ms")
    print(f"pp 2 x tp 8, {K} in flight ({n} sequences a step): TPOT {got:.3f} ms, queueing "
          f"arithmetic {want:.3f} ms; output {r['simulation']['output_throughput']:.0f} tok/s")
# One sequence has nothing to overlap: the same times with or without steps in flight.
one = ["--max-concurrency", "1", "--num-prompts", "3"]
a1 = plan(*common, *one, "--pp-microbatches", "1")
a2 = plan(*common, *one, "--pp-microbatches", "2")
if a1 and a2:
    d1, d2 = a1["simulation"]["duration"], a2["simulation"]["duration"]
    ck.check(abs(d1 - d2) <= 1e-9 * d1 and a2["simulation"]["microbatches"] == 2,
             f"one user: {d1} s one step at a time, {d2} s with 2 in flight")
# The default is serve's: as many in flight as stages; without --pp, a usage error.
d = plan(*common)
ck.check(d is not None and d["simulation"]["microbatches"] == 2,
         f"pp 2 default steps in flight: {d and d['simulation'].get('microbatches')}")
rc, out, err = ck.run(args.bin, ["plan", "--model", GROK1, "--tp", "8", "--pp-microbatches", "2"])
ck.check(rc == 2 and "--pp-microbatches" in err and "--pp" in err,
         f"--pp-microbatches without --pp: exit {rc}, {err!r}")

# Bad input: each a clear message, exit 1 or 2.
for flags, code, needle in [
    (["--model", "configs/models/nope.json", "--tp", "8"], 1, "nope.json"),
    (["--model", GROK1, "--tp", "8", "--hardware", "/nonexistent.json"], 1, "nonexistent"),
    (["--model", GROK1, "--tp", "8", "--hardware", H100, "--request-rate", "-1"], 2, "--request-rate"),
    (["--model", GROK1, "--tp", "8", "--request-rate", "2"], 2, "--hardware"),
    (["--model", GROK1, "--tp", "8", "--hardware", H100, "--goodput", "ttft"], 2, "goodput"),
    (["--model", GROK1, "--tp", "8", "--hardware", H100, "--goodput", "latency:5"], 2, "goodput"),
    (["--model", GROK1, "--tp", "64"], 2, "--tp"),
    (["--model", GROK1, "--tp", "8", "--hardware", H100, "--kv-mem", "lots"], 2, "--kv-mem"),
    (["--model", GROK1, "--tp", "16", "--hardware", H100, "--nodes", "1"], 2, "--nodes"),
]:
    rc, out, err = ck.run(args.bin, ["plan", *flags])
    ck.check(rc == code and needle in err, f"plan {flags}: exit {rc}, stderr {err!r}")
bad = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"ss-badprof-{os.getpid()}.json")
for text, needle in [("{", "JSON"), ('{"mem_bw": 1}', "mem_bytes"),
                     ('{"mem_bytes": 1, "mem_bw": -5, "flops": 1}', "mem_bw"),
                     ('{"mem_bytes": 1, "mem_bw": 1, "flops": 1, "roofline_exponent": 0.5}',
                      "roofline_exponent"),
                     ('{"mem_bytes": 1, "mem_bw": 1, "flops": 1, "load_factor": 50}',
                      "load_factor"),
                     ('{"mem_bytes": 1, "mem_bw": 1, "flops": 1, "roofline_correction": 3}',
                      "roofline_correction"),
                     ('{"mem_bytes": 1, "mem_bw": 1, "flops": 1, '
                      '"roofline_correction": [[4, 1], [2, 1]]}', "roofline_correction entry 1"),
                     ('{"mem_bytes": 1, "mem_bw": 1, "flops": 1, '
                      '"roofline_correction": [[1, 0]]}', "roofline_correction entry 0")]:
    open(bad, "w").write(text)
    rc, out, err = ck.run(args.bin, ["plan", "--model", GROK1, "--tp", "8", "--hardware", bad])
    ck.check(rc == 1 and needle in err, f"bad profile {text!r}: {rc} {err!r}")
os.unlink(bad)
os.unlink(prof)
ck.finish()
