"""bench/testbed_layouts.py --quick: TP, PP and PP x TP across the two-host bed.

Runs the benchmark's smoke mode (1 repeat, 32 prompt + 8 generated tokens, both
link rates) with a hand-written hardware profile (so no profiling run), and checks
its JSON: every layout at both rates, the ranks on the hosts the layout asks for,
greedy tokens equal to one rank's, predicted times present and positive, and the
bytes through host 1's interface: none for one rank, and for the cross-host
layouts at least what the model's shapes say must cross per decode token (read
from the GGUF file here: an all-reduce of dim f32 twice per layer each way for
TP 2, the residual stream for PP), also in the trace's count.  The script takes
its bed down itself; the test checks that nothing of it is left.  Skipped, with
the reason printed, only where network namespaces cannot be created.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "lib"))
from harness import Checker, parse_args  # noqa: E402
from netns import require_netns  # noqa: E402
from mpi import mpi_available  # noqa: E402

args = parse_args()
SCRIPT = os.path.join(os.path.dirname(HERE), "bench", "testbed_layouts.py")
LAYOUTS = {"tp1": ["ss-lb0"], "tp2": ["ss-lb0", "ss-lb1"], "pp2": ["ss-lb0", "ss-lb1"],
           "pp2xtp2": ["ss-lb0", "ss-lb0", "ss-lb1", "ss-lb1"]}
RATES = ["1gbit", "25mbit"]


require_netns("ss-probe-lb")

ck = Checker("test bed layouts")
ck.check(mpi_available(), "mpirun not found (scripts/setup.sh installs Open MPI)")
os.environ["ASAN_OPTIONS"] = ":".join(
    x for x in (os.environ.get("ASAN_OPTIONS", ""), "fast_unwind_on_malloc=0") if x)
os.environ.setdefault("LSAN_OPTIONS", "suppressions=" + os.path.join(HERE, "lsan.supp") +
                      ":print_suppressions=0")
tmp = tempfile.mkdtemp(prefix="ss-lb-")
# A made-up CPU-like profile: the figures only have to be positive and sane.
profile = os.path.join(tmp, "profile.json")
with open(profile, "w") as fp:
    json.dump({"name": "test profile", "mem_bytes": 8e9, "mem_bw": 5e9, "flops": 2e10,
               "flops_fp8": 2e10, "step_overhead_s": 1e-4, "logit_row_s": 1e-4,
               "request_overhead_s": 1e-3, "link_bw": 0, "link_lat": 0, "inter_bw": 0,
               "inter_lat": 0, "overhead_reserve": 0, "devices_per_node": 1}, fp)

from gguf import GGUFReader  # noqa: E402
fields = GGUFReader(args.model).fields


def field(k):
    f = fields[k]
    return int(f.parts[f.data[0]][0])


dim, n_layer = field("llama.embedding_length"), field("llama.block_count")
# What must cross per decode token, at the least.
FLOOR = {"tp2": 2 * n_layer * 2 * dim * 4, "pp2": dim * 4, "pp2xtp2": dim * 4}

try:
    p = subprocess.run([sys.executable, SCRIPT, "--bin", args.bin, "--model", args.model, "--quick",
                        "--profile", profile, "--out", os.path.join(tmp, "out")],
                       capture_output=True, text=True, timeout=600)
    print(p.stdout[-4000:], p.stderr[-3000:], flush=True)
    ck.check(p.returncode == 0, f"testbed_layouts.py --quick: exit {p.returncode}")
    path = os.path.join(tmp, "out", "testbed_layouts.json")
    if ck.check(os.path.exists(path), "no testbed_layouts.json written"):
        with open(path) as fp:
            out = json.load(fp)
        got = {(r["rate"], r["layout"]): r for r in out["results"]}
        for rate in RATES:
            for name, hosts in LAYOUTS.items():
                r = got.get((rate, name))
                if not ck.check(r is not None, f"{rate} {name}: missing from the JSON"):
                    continue
                tag = f"{rate} {name}"
                ck.check(r["rank_hosts"] == hosts, f"{tag}: ranks on {r['rank_hosts']}, not {hosts}")
                ck.check(r["tokens_ok"] and all(t["ids_equal"] for t in r["tokens"]),
                         f"{tag}: greedy tokens differ from one rank's")
                if r["pp"] > 1 and r["tp"] == 1:
                    ck.check(all(t["bit_identical"] for t in r["tokens"]),
                             f"{tag}: PP not bit-identical to one rank")
                for k in ("predicted_prefill_ms", "predicted_decode_ms"):
                    ck.check(isinstance(r.get(k), (int, float)) and r[k] > 0, f"{tag}: {k} = {r.get(k)}")
                ck.check(r["prefill_ms_median"] > 0 and r["decode_ms_per_token_median"] > 0,
                         f"{tag}: measured times missing")
                b, t = r["iface_bytes_per_decode_token"], r["trace_cross_bytes_per_decode_step"]
                if name == "tp1":
                    ck.check(b == 0 and t == 0 and max(r["iface_bytes_run"]) == 0,
                             f"{tag}: {b} B/token, {r['iface_bytes_run']} per run on the link, "
                             "one rank should send nothing")
                else:
                    ck.check(b >= FLOOR[name], f"{tag}: {b:.0f} B per decode token through the "
                             f"interface, at least {FLOOR[name]} expected")
                    ck.check(t >= FLOOR[name], f"{tag}: trace counts {t:.0f} B per decode step, "
                             f"at least {FLOOR[name]} expected")
                    ck.check(r["iface_bytes_per_generated_token_run"] > 0, f"{tag}: no bytes")
        ck.check(not out["failures"], f"failures: {out['failures']}")
finally:
    left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    ck.check(not any(l.split()[0].startswith("ss-lb") for l in left.splitlines() if l.strip()),
             f"namespaces left after the benchmark: {left}")
    ck.check(not os.path.exists("/tmp/ss-bed-lb"), "the bed's folder was left behind")
    shutil.rmtree(tmp, ignore_errors=True)
ck.finish()
