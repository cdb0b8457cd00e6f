"""`shardserve plan`: the uneven split of the default model and byte totals that
add up, checked against figures computed here from the file with the `gguf`
package; the plan's bad inputs; and, through `generate --profile`, that each
rank's resident memory holds its slices rather than the whole file.
"""
import json
import os
import re
import subprocess
import sys

import gguf

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "lib"))
from harness import Checker, parse_args  # noqa: E402
from mpi import launch_cmd, mpi_env  # noqa: E402

args = parse_args()
ck = Checker("plan")

r = gguf.GGUFReader(args.model)
tensors = {t.name: t for t in r.tensors}
file_bytes = sum(int(t.n_bytes) for t in r.tensors)
n_layer = sum(1 for n in tensors if n.endswith(".attn_norm.weight"))
dim = int(tensors["token_embd.weight"].shape[0])
H, KV, D, F = 9, 3, 64, 1536
V = int(tensors["token_embd.weight"].shape[1])


def row_bytes(name):
    t = tensors[name]
    return int(t.n_bytes) // int(t.shape[1])


def expected_split(n, parts):
    base, extra = divmod(n, parts)
    out, at = [], 0
    for i in range(parts):
        k = base + (1 if i < extra else 0)
        out.append([at, at + k])
        at += k
    return out


for tp in (2, 3, 4):
    rc, out, err = ck.run(args.bin, ["plan", "--model", args.model, "--tp", str(tp), "--json"])
    if not ck.check(rc == 0, f"plan --tp {tp} failed: {err}"):
        continue
    p = json.loads(out)
    ranks = p["ranks"]
    ck.check(len(ranks) == tp, f"tp {tp}: {len(ranks)} ranks")
    heads = expected_split(H, tp)
    ck.check([x["heads"] for x in ranks] == heads, f"tp {tp}: heads {[x['heads'] for x in ranks]}")
    kv = [[h0 // (H // KV), (h1 - 1) // (H // KV) + 1] for h0, h1 in heads]
    ck.check([x["kv_heads"] for x in ranks] == kv, f"tp {tp}: kv heads {[x['kv_heads'] for x in ranks]}")
    blocks = expected_split(F // 32, tp)
    ck.check([x["ffn_columns"] for x in ranks] == [[a * 32, b * 32] for a, b in blocks],
             f"tp {tp}: mlp columns {[x['ffn_columns'] for x in ranks]}")
    ck.check([x["vocab_rows"] for x in ranks] == expected_split(V, tp), f"tp {tp}: vocab rows")
    ck.check(p["file_weight_bytes"]["total"] == file_bytes,
             f"tp {tp}: file bytes {p['file_weight_bytes']['total']} != {file_bytes} (gguf package)")
    # Replicated: the norms on every rank but one, and the K and V rows of each
    # KV head held by two neighbouring ranks.
    norms = (2 * n_layer + 1) * dim * 4
    shared_heads = sum(max(0, kv[i - 1][1] - kv[i][0]) for i in range(1, tp))
    kv_row = sum(row_bytes(f"blk.{l}.attn_k.weight") + row_bytes(f"blk.{l}.attn_v.weight")
                 for l in range(n_layer))
    replicated = norms * (tp - 1) + shared_heads * D * kv_row
    total = sum(x["weight_bytes"] for x in ranks)
    ck.check(total == file_bytes + replicated,
             f"tp {tp}: per-rank bytes sum to {total}, expected {file_bytes} + {replicated}")
    ck.check(p["replicated_bytes"] == replicated, f"tp {tp}: replicated {p['replicated_bytes']}")
    # K and V in bf16 (2 bytes), serve's default --kv-cache-dtype.
    ck.check(p["kv_bytes_per_token"] == 2 * n_layer * KV * D * 2, f"tp {tp}: kv bytes/token")
    for i, x in enumerate(ranks):
        ck.check(x["kv_bytes_per_token"] == 2 * n_layer * (kv[i][1] - kv[i][0]) * D * 2,
                 f"tp {tp} rank {i}: kv bytes/token {x['kv_bytes_per_token']}")
    print(f"tp {tp}: heads {[b - a for a, b in heads]}, rank bytes "
          f"{[x['weight_bytes'] for x in ranks]} = {file_bytes} + {replicated} replicated")

# The table shows the uneven split.
rc, out, err = ck.run(args.bin, ["plan", "--model", args.model, "--tp", "2"])
text = out.decode()
ck.check(rc == 0 and "5 [0,5)" in text and "4 [5,9)" in text, f"plan table: {text[:600]}")
ck.check("replicated" in text, "plan table lists replicated bytes")

# Bad input.
for flags, code, needle in [
    (["--tp", "10"], 2, "9 query heads"),
    (["--tp", "0"], 2, "--tp"),
    (["--tp", "x"], 2, "--tp"),
    ([], 2, "--tp"),
    (["--tp", "2", "--bogus"], 2, "--bogus"),
]:
    rc, out, err = ck.run(args.bin, ["plan", "--model", args.model, *flags])
    ck.check(rc == code and needle in err, f"plan {flags}: exit {rc}, stderr {err!r}")
rc, out, err = ck.run(args.bin, ["plan", "--model", "/nonexistent.gguf", "--tp", "2"])
ck.check(rc == 1 and "/nonexistent.gguf" in err, f"plan on a missing file: {rc} {err!r}")

# Resident memory per rank at TP = 4: each rank reads only its slices into
# memory of its own and never touches the file mapping, so its whole resident
# set (weights, buffers, shared libraries) stays well under the file size.
size = os.path.getsize(args.model)
cmd = launch_cmd(args.bin, 4, ["generate", "--model", args.model, "-p", "Hello", "-n", "4",
                               "--temp", "0", "--threads", "1", "--profile"])
p = subprocess.run(cmd, capture_output=True, timeout=300, env=mpi_env())
err = p.stderr.decode("utf-8", "replace")
rows = re.findall(r"\[profile\]\s+(\d+)\s+\d+\s+[\d.]+\s+[\d.]+\s+[\d.]+\s+([\d.]+)\s+([\d.]+) "
                  r"\(([\d.]+) \+ ([\d.]+)\)", err)
if ck.check(p.returncode == 0 and len(rows) == 4, f"tp 4 --profile: {p.returncode} {err[-1500:]}"):
    for rank, weights, rss, rss_file, rss_anon in rows:
        print(f"tp 4 rank {rank}: plan weights {weights} MiB, RSS {rss} MiB "
              f"(file {rss_file} + anon {rss_anon}); whole file {size / 2**20:.1f} MiB")
        # File-backed pages are the shared libraries only (about 20 MiB here); a rank
        # that faulted the mapping in would show most of the file.
        ck.check(float(rss_file) < 0.5 * size / 2**20,
                 f"rank {rank}: {rss_file} MiB of file-backed pages resident, the whole model "
                 f"file is {size / 2**20:.1f} MiB")
        # The whole resident set too, except under AddressSanitizer (shadow memory
        # and quarantine add tens of MiB).
        if "ASAN_OPTIONS" not in os.environ:
            ck.check(float(rss) < 0.75 * size / 2**20,
                     f"rank {rank}: {rss} MiB resident ({rss_file} MiB file-backed), the whole "
                     f"model file is {size / 2**20:.1f} MiB")
        ck.check(float(rss_anon) >= float(weights),
                 f"rank {rank}: {rss_anon} MiB of anonymous memory cannot hold its "
                 f"{weights} MiB of weights")

ck.finish()
