"""`shardserve plan` on the JSON presets (configs/models/*.json): no weights,
shapes and --dtype only.

Grok-1 at TP 8 in fp8 and bf16: per-rank bytes by category against hand
arithmetic written out below, the parameter total (315.7B, tied embedding
counted once, norms included), the KV cache of 256 KiB per token in bf16, and
expert parallelism's split.  Every preset is accepted, and the parameter
counts of the published models match their well-known totals.
"""
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(HERE, "lib"))
from harness import Checker, parse_args  # noqa: E402

args = parse_args()
ck = Checker("plan presets")
PRESETS = os.path.join(ROOT, "configs", "models")


def plan(preset, *flags):
    rc, out, err = ck.run(args.bin, ["plan", "--model", os.path.join(PRESETS, preset), "--json", *flags])
    if not ck.check(rc == 0, f"plan {preset} {flags}: exit {rc}: {err}"):
        return None
    return json.loads(out)


# ---- Grok-1 by hand ---------------------------------------------------------
L, C, H, KV, D, E, K, F, V = 64, 6144, 48, 8, 128, 8, 2, 32768, 131072
attn_params = C * H * D + 2 * C * KV * D + H * D * C  # q, k, v, o per layer
expert_params = 3 * C * F                             # gate (linear), up (linear_v), down (linear_1)
router_params = E * C
norm_params = 4 * C                                   # pre/post attention, pre/post MoE
total = L * (attn_params + E * expert_params + router_params + norm_params) + V * C + C
assert total == 315_684_820_992
active = total - L * (E - K) * expert_params
print(f"grok-1 by hand: {total:,} parameters ({total / 1e9:.1f}B, tied embedding once), "
      f"{active:,} active per token")

TP = 8
for dtype, nbytes in (("fp8", 1), ("bf16", 2)):
    p = plan("grok-1.json", "--tp", str(TP), "--dtype", dtype)
    if p is None:
        continue
    ck.check(p["params"] == total, f"{dtype}: params {p['params']} != {total}")
    ck.check(round(p["params"] / 1e9, 1) == 315.7, f"{dtype}: {p['params'] / 1e9:.2f}B")
    ck.check(p["active_params"] == active, f"{dtype}: active {p['active_params']} != {active}")
    ck.check(p["kv_bytes_per_token"] == 2 * L * KV * D * 2 == 256 * 1024,
             f"{dtype}: KV {p['kv_bytes_per_token']} bytes/token, expected 256 KiB (bf16)")
    # One rank: 6 of 48 query heads, 1 of 8 KV heads, 4096 of every expert's
    # 32768 columns, 16384 vocabulary rows; the router and the norms (f32) whole.
    r_attn = L * (C * (H // TP) * D + 2 * C * (KV // TP) * D + (H // TP) * D * C) * nbytes
    r_moe = L * (router_params + E * 3 * C * (F // TP)) * nbytes
    r_embd = (V // TP) * C * nbytes
    r_norm = (4 * L + 1) * C * 4
    r_total = r_attn + r_moe + r_embd + r_norm
    for i, r in enumerate(p["ranks"]):
        b = r["weight_bytes_by_category"]
        ok = (b["attn"], b["moe"], b["embd"], b["head"], b["norm"], r["weight_bytes"]) == \
             (r_attn, r_moe, r_embd, 0, r_norm, r_total)
        ck.check(ok, f"{dtype} rank {i}: {b} vs attn {r_attn} moe {r_moe} embd {r_embd} norm {r_norm}")
        ck.check(r["kv_bytes_per_token"] == 2 * L * 1 * D * 2, f"{dtype} rank {i}: KV/token")
    ck.check(p["total_weight_bytes"] == TP * r_total, f"{dtype}: total {p['total_weight_bytes']}")
    print(f"grok-1 tp 8 {dtype}: {r_total:,} bytes per rank ({r_total / 2**30:.2f} GiB: attention "
          f"{r_attn / 2**20:.0f} MiB, experts+router {r_moe / 2**20:.0f} MiB, embedding "
          f"{r_embd / 2**20:.0f} MiB, norms {r_norm / 2**20:.2f} MiB); KV 256 KiB/token")

    # Expert parallelism over the same 8 ranks: one whole expert each, the
    # same bytes as a 1/8 slice of all eight.
    q = plan("grok-1.json", "--tp", str(TP), "--ep", str(TP), "--dtype", dtype)
    if q is not None:
        ck.check([r["experts"] for r in q["ranks"]] == [[e, e + 1] for e in range(8)], f"{dtype} ep: experts")
        ck.check(all(r["weight_bytes"] == r_total for r in q["ranks"]), f"{dtype} ep: per-rank bytes")

# Uneven: 8 experts on 3 ranks (48 heads split 16 each).
p = plan("grok-1.json", "--tp", "3", "--ep", "3", "--dtype", "fp8")
if p is not None:
    ck.check([r["experts"] for r in p["ranks"]] == [[0, 3], [3, 6], [6, 8]], "ep 3: experts 3+3+2")
    moe = [r["weight_bytes_by_category"]["moe"] for r in p["ranks"]]
    ck.check(moe == [L * (router_params + n * expert_params) for n in (3, 3, 2)], f"ep 3: moe bytes {moe}")

# ---- Every preset, against published parameter totals ------------------------
KNOWN = {
    "smollm2-135m.json": 134_515_008,     # SmolLM2-135M
    "llama-3-8b.json": 8_030_261_248,     # Meta-Llama-3-8B
    "llama-3-70b.json": 70_553_706_496,   # Meta-Llama-3-70B
    "mixtral-8x7b.json": 46_702_792_704,  # Mixtral-8x7B
    "grok-1.json": 315_684_820_992,       # by hand above
    "grok-2.json": 269_515_497_472,       # the per-component sum of xai-org/grok-2's shapes
}
for preset, n in KNOWN.items():
    p = plan(preset, "--tp", "2")
    if p is not None:
        ck.check(p["params"] == n, f"{preset}: {p['params']:,} parameters, expected {n:,}")
        print(f"{preset:20s} {p['params']:>16,} parameters, {p['active_params']:>16,} active")

# Bad uses.
for flags, code, needle in ((["--tp", "8", "--dtype", "q4"], 2, "--dtype"),
                            (["--tp", "8", "--kv-dtype", "int3"], 2, "--kv-dtype"),
                            (["--tp", "49"], 2, "48 query heads"),
                            (["--tp", "16", "--ep", "16"], 2, "16 exceeds the model's 8 experts")):
    rc, out, err = ck.run(args.bin, ["plan", "--model", os.path.join(PRESETS, "grok-1.json"), *flags])
    ck.check(rc == code and needle in err, f"plan grok-1 {flags}: exit {rc}, {err!r}")
rc, out, err = ck.run(args.bin, ["plan", "--model", os.path.join(PRESETS, "nope.json"), "--tp", "2"])
ck.check(rc == 1 and "nope.json" in err, f"missing preset: {rc} {err!r}")
ck.finish()
