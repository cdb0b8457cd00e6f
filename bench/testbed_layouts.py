#!/usr/bin/env python3
"""TP vs PP vs PP x TP across the two-host test bed, at two link rates, with the
planner's prediction beside each measurement.

    sudo .venv/bin/python bench/testbed_layouts.py --bin build/shardserve [--quick] [--out DIR]

For each rate (default 1gbit and 25mbit) a two-host bed is brought up with
scripts/testbed.sh (--name ss-lb --net 10.79.0, so other beds on this machine are
left alone) and `generate` runs the default model greedily on one fixed prompt
(128 tokens, 64 generated, --threads 1, --kv-cache-dtype f32; 3 repeats) as:

  tp1      one rank on host 0 (the baseline: no network)
  tp2      --tp 2, one rank per host (--map-by node)
  pp2      --pp 2 --tp 1, one stage per host (--map-by node)
  pp2xtp2  --pp 2 --tp 2, 2 ranks per host (--map-by ppr:2:node): rank = stage x 2 +
           tp rank, so each stage's TP pair shares a host and only the stage hand-off
           and the logits cross the link

The rank-to-host mapping of every layout is checked first (each rank prints its
hostname through the same mpirun options).  Per run: prefill ms and decode ms per
token from generate's stats line; the bytes through host 1's eth0 (rx + tx, so
every byte between the hosts, with TCP/IP headers), over the run and, by a second
run with -n 1 (start-up and prefill only), for the decode steps alone; and from
--trace the payload bytes per decode step that must cross the link (a send to the
other host; an all-reduce over both hosts: its payload once each way; a gather:
each remote rank's share; a broadcast: one copy per remote host).

The prediction: `plan --step-cost` for the 128-token prefill and a decode step at
the mean context of the decode (prompt + generated / 2), on a profile of this
machine (`shardserve profile -t 1 --repeats 3`, or --profile FILE) with
inter_bw = the bed's rate, inter_lat = an 8-byte all-reduce between the two hosts
and link_lat = the same inside one host (ss_bench_allreduce, median of its
repeats; the planner's own definition of a link's latency, as `profile` measures
it), link_bw left 0 (no bandwidth term inside a host: loopback TCP), and
devices_per_node 1 (tp2, pp2) or 2 (pp2xtp2) with --nodes 2 so that the planner
splits the ranks over nodes as the bed does.

Every layout's greedy tokens must equal tp1's (PP bit-identical top-5 logprobs, TP
within 1e-3); a mismatch exits 1.  Prints one markdown table, writes
DIR/testbed_layouts.json, and takes the bed down at the end, also on failure.
"""
import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests", "lib"))
from logprob_compare import compare_steps  # noqa: E402

BED_SCRIPT = os.path.join(ROOT, "scripts", "testbed.sh")
BED_NAME, BED_NET, BED_DIR = "ss-lb", "10.79.0", "/tmp/ss-bed-lb"
TOP, ATOL = 5, 1e-3
# A fixed English prompt, tokenized at start and cut to --prompt-len tokens.
TEXT = (
    "The history of the printing press begins in the middle of the fifteenth century, when "
    "Johannes Gutenberg, a goldsmith from Mainz, combined movable metal type, an oil-based ink "
    "and a wooden screw press into a system that could produce books far faster than any scribe. "
    "Within fifty years presses were at work in more than two hundred cities across Europe, and "
    "millions of volumes had been printed: bibles, grammars, calendars, legal texts, pamphlets "
    "and the first newspapers. Scholars could now compare identical copies of a text, errors "
    "could be corrected in later editions, and ideas travelled from one country to another in "
    "weeks instead of years. Historians still argue about how much of the Reformation, the "
    "scientific revolution and the rise of literacy should be credited to the press, but few "
    "doubt that it changed how knowledge was stored and shared. In the centuries that followed, "
    "steam power, rotary presses and finally offset printing made paper cheaper than ever, "
    "until the arrival of computers and networks began another change of the same kind.")
LAYOUTS = [
    # name, tp, pp, ranks, mpirun mapping, host of each rank, devices per node for the plan
    ("tp1", 1, 1, 1, None, [0], 1),
    ("tp2", 2, 1, 2, ["--map-by", "node"], [0, 1], 1),
    ("pp2", 1, 2, 2, ["--map-by", "node"], [0, 1], 1),
    ("pp2xtp2", 2, 2, 4, ["--map-by", "ppr:2:node"], [0, 0, 1, 1], 2),
]
STATS = re.compile(r"prefill [\d.]+ tok/s \(([\d.]+) ms\), decode [\d.]+ tok/s \((\d+) steps, "
                   r"([\d.]+) ms\)")


class Fail(Exception):
    pass


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def rate_bytes_per_s(rate):
    """tc's rate syntax (bit, kbit, mbit, gbit; SI) in bytes per second."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(bit|kbit|mbit|gbit)", rate)
    if not m:
        raise Fail(f"--rates: '{rate}' is not a rate such as 1gbit or 25mbit")
    scale = {"bit": 1, "kbit": 1e3, "mbit": 1e6, "gbit": 1e9}[m.group(2)]
    return float(m.group(1)) * scale / 8


def run(cmd, timeout=900, env=None, check=True, stdin=None):
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, input=stdin)
    if check and p.returncode != 0:
        raise Fail(f"{' '.join(cmd)}: exit {p.returncode}\n{p.stderr[-3000:]}")
    return p


def bed(*a):
    return run(["bash", BED_SCRIPT, *a, "--name", BED_NAME, "--dir", BED_DIR], check=False)


def iface_bytes(host):
    p = run(["ip", "netns", "exec", f"{BED_NAME}{host}", "cat",
             "/sys/class/net/eth0/statistics/rx_bytes",
             "/sys/class/net/eth0/statistics/tx_bytes"])
    rx, tx = map(int, p.stdout.split())
    return rx + tx


def mpi_env():
    env = dict(os.environ)
    env.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
    env.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    return env


def mpirun_prefix(np_, mapping):
    fwd = [v for v in ("OMPI_ALLOW_RUN_AS_ROOT", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "ASAN_OPTIONS",
                       "LSAN_OPTIONS", "UBSAN_OPTIONS") if v in mpi_env()]
    return [os.path.join(BED_DIR, "mpirun"), "-np", str(np_), *mapping, "--oversubscribe",
            "--mca", "mpi_yield_when_idle", "1"] + sum((["-x", v] for v in fwd), [])


def check_mapping(layout):
    name, tp, pp, ranks, mapping, hosts, _ = layout
    if mapping is None:
        return
    p = run(mpirun_prefix(ranks, mapping) + ["sh", "-c", 'echo "$OMPI_COMM_WORLD_RANK $(hostname)"'],
            env=mpi_env(), timeout=60)
    got = {}
    for line in p.stdout.split("\n"):
        if line.strip():
            r, h = line.split()
            got[int(r)] = h
    want = {r: f"{BED_NAME}{hosts[r]}" for r in range(ranks)}
    if got != want:
        raise Fail(f"{name}: ranks landed on {got}, expected {want}")


def allreduce_latency(bench, np_, mapping):
    """Median time of an 8-byte all-reduce (the slowest rank's), seconds."""
    p = run(mpirun_prefix(np_, mapping) + [bench, "-b", "8", "-e", "8", "-n", "200", "-w", "20"],
            env=mpi_env(), timeout=120)
    rows = [l.split() for l in p.stdout.splitlines() if l.strip() and not l.startswith("#")]
    if not rows or rows[-1][0] != "8":
        raise Fail(f"ss_bench_allreduce: no 8-byte row in\n{p.stdout}")
    return float(rows[-1][4]) * 1e-6


def trace_cross_bytes(path, layout):
    """Payload bytes per decode step that must cross between the hosts, from the
    trace's comm spans inside decode forward passes (1 token)."""
    name, tp, pp, ranks, mapping, hosts, _ = layout
    with open(path) as fp:
        ev = json.load(fp)["traceEvents"]
    spans = {}
    for e in ev:
        if e.get("ph") == "X":
            spans.setdefault((e["pid"], e["tid"]), []).append(e)
    total, steps = 0.0, {}
    for (pid, tid), ss in spans.items():
        fw = [e for e in ss if e["name"] == "forward" and e["args"].get("tokens") == 1]
        steps[pid] = max(steps.get(pid, 0), len(fw))
        for e in ss:
            if e.get("cat") != "comm":
                continue
            if not any(f["ts"] <= e["ts"] <= f["ts"] + f["dur"] for f in fw):
                continue
            a, r = e["args"], pid
            n = a.get("ranks", ranks)
            # The group: the whole job, or this rank's stage's TP group.
            group = list(range(ranks)) if n == ranks else \
                list(range(r // tp * tp, r // tp * tp + tp))
            ghosts = {hosts[g] for g in group}
            if e["name"] == "send":
                total += a["bytes"] if hosts[a["peer"]] != hosts[r] else 0
            elif e["name"] == "allreduce" and len(ghosts) > 1:
                # Each host's contribution reaches the other once: counted on
                # the first rank of each host in the group.
                if r == min(g for g in group if hosts[g] == hosts[r]):
                    total += a["bytes"]
            elif e["name"] in ("gatherv", "allgatherv") and len(ghosts) > 1:
                root = a.get("root", group[0])
                if hosts[r] != hosts[root]:
                    total += a["bytes"] / len(group)
            elif e["name"] == "broadcast" and len(ghosts) > 1:
                root = a.get("root", group[0])
                if hosts[r] != hosts[root] and r == min(g for g in group if hosts[g] == hosts[r]):
                    total += a["bytes"]
    n_steps = max(steps.values()) if steps else 0
    return total / n_steps if n_steps else 0.0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bin", default=os.path.join(ROOT, "build", "shardserve"))
    ap.add_argument("--bench-allreduce", default="",
                    help="ss_bench_allreduce (default: next to --bin)")
    ap.add_argument("--model", default=os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--rates", default="1gbit,25mbit", help="two link rates, comma-separated")
    ap.add_argument("--profile", default="", help="a `shardserve profile` file (default: measure one)")
    ap.add_argument("--out", default="testbed-layouts", help="output folder")
    ap.add_argument("--quick", action="store_true", help="smoke run: 1 repeat, 32+8 tokens")
    ap.add_argument("--repeats", type=int, default=0)
    ap.add_argument("--prompt-len", type=int, default=0)
    ap.add_argument("-n", "--gen", type=int, default=0)
    args = ap.parse_args()
    repeats = args.repeats or (1 if args.quick else 3)
    plen = args.prompt_len or (32 if args.quick else 128)
    gen = args.gen or (8 if args.quick else 64)
    rates = args.rates.split(",")
    if len(rates) != 2:
        raise Fail(f"--rates: two rates expected, got '{args.rates}'")
    rate_bw = {r: rate_bytes_per_s(r) for r in rates}
    bench = args.bench_allreduce or os.path.join(os.path.dirname(os.path.abspath(args.bin)),
                                                 "ss_bench_allreduce")
    for what, path in (("--bin", args.bin), ("ss_bench_allreduce", bench), ("--model", args.model)):
        if not os.path.exists(path):
            raise Fail(f"{what}: {path} not found (build it: cmake --build build --target "
                       f"shardserve ss_bench_allreduce)")
    os.makedirs(args.out, exist_ok=True)

    ids = run([args.bin, "tokenize", "-m", args.model], timeout=60, stdin=TEXT).stdout.split()
    if len(ids) < plen:
        raise Fail(f"--prompt-len {plen}: the fixed text has only {len(ids)} tokens")
    prompt = ",".join(ids[:plen])

    profile = args.profile
    if not profile:
        profile = os.path.join(args.out, "profile.json")
        log(f"measuring a profile of this machine ({profile})")
        run([args.bin, "profile", "-m", args.model, "-t", "1", "--repeats", "3", "-o", profile],
            timeout=1800)
    with open(profile) as fp:
        hw_base = json.load(fp)

    def generate(layout, n, trace=None):
        name, tp, pp, ranks, mapping, hosts, _ = layout
        cmd = [args.bin, "generate", "--model", args.model, "--prompt-ids", prompt, "-n", str(n),
               "--temp", "0", "--ignore-eos", "--json", "--logprobs", str(TOP), "--threads", "1",
               "--kv-cache-dtype", "f32", "--tp", str(tp)]
        if pp > 1:
            cmd += ["--pp", str(pp)]
        if trace:
            cmd += ["--trace", trace]
        cmd = mpirun_prefix(ranks, mapping) + cmd if mapping else \
            [os.path.join(BED_DIR, "on"), "0"] + cmd
        b0 = iface_bytes(1)
        p = run(cmd, env=mpi_env(), timeout=1800)
        b1 = iface_bytes(1)
        m = STATS.search(p.stderr)
        if not m:
            raise Fail(f"{name}: no stats line in\n{p.stderr[-2000:]}")
        j = json.loads([l for l in p.stdout.splitlines() if l.startswith("{")][-1])
        steps = [(t, {x["id"]: x["logprob"] for x in top})
                 for t, top in zip(j["tokens"], j["top_logprobs"])]
        return {"prefill_ms": float(m.group(1)), "decode_steps": int(m.group(2)),
                "decode_ms": float(m.group(3)), "iface_bytes": b1 - b0, "steps": steps}

    results, base_steps, failures = [], None, []
    for rate in rates:
        log(f"bed: 2 hosts at {rate}")
        up = bed("up", "2", "--rate", rate, "--net", BED_NET)
        if up.returncode != 0:
            raise Fail(f"testbed up: {up.stderr}")
        # IPv6's own chatter (neighbour discovery, multicast reports) would
        # otherwise show on the counters of a run that sends nothing (the
        # bridge's included); the last reports settle within a second or two.
        for ns in (f"{BED_NAME}0", f"{BED_NAME}1", f"{BED_NAME}hub"):
            run(["ip", "netns", "exec", ns, "sysctl", "-q", "-w",
                 "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"])
        time.sleep(2)
        lat_inter = allreduce_latency(bench, 2, ["--map-by", "node"])
        lat_intra = allreduce_latency(bench, 2, ["--map-by", "slot"])
        log(f"  8-byte all-reduce: {lat_inter * 1e6:.1f} us between hosts, "
            f"{lat_intra * 1e6:.1f} us inside one")
        for layout in LAYOUTS:
            name, tp, pp, ranks, mapping, hosts, dpn = layout
            check_mapping(layout)
            runs = []
            for i in range(repeats):
                tr = os.path.join(args.out, f"trace-{rate}-{name}-{i}.json") if mapping else None
                r = generate(layout, gen, tr)
                r["trace_cross_bytes_per_decode_step"] = trace_cross_bytes(tr, layout) if tr else 0.0
                runs.append(r)
                log(f"  {name} #{i}: prefill {r['prefill_ms']:.1f} ms, decode "
                    f"{r['decode_ms'] / max(1, r['decode_steps']):.2f} ms/token, "
                    f"{r['iface_bytes']} bytes on the link")
            # Start-up and prefill alone, to take them out of the link's bytes.
            short = generate(layout, 1)
            # Tokens against the baseline (the first bed's tp1).
            if base_steps is None:
                base_steps = runs[0]["steps"]
            tok = []
            for r in runs:
                ids_equal = [t for t, _ in r["steps"]] == [t for t, _ in base_steps]
                worst, ncmp, tie, problems = compare_steps(base_steps, r["steps"], atol=ATOL)
                exact = r["steps"] == base_steps
                ok = ids_equal and (exact if tp == 1 else not problems)
                tok.append({"ids_equal": ids_equal, "bit_identical": exact,
                            "max_abs_dlogprob": worst, "ok": ok, "problems": problems[:5]})
                if not ok:
                    failures.append(f"{rate} {name}: tokens differ from tp1: {problems[:3]}")
            # The planner, with the bed's link.
            hw = dict(hw_base)
            hw.update(inter_bw=rate_bw[rate], inter_lat=lat_inter, link_lat=lat_intra,
                      devices_per_node=dpn)
            hw["name"] = f"{hw_base.get('name', 'profile')}; bed link {rate}"
            hw_path = os.path.join(args.out, f"hw-{rate}-{name}.json")
            with open(hw_path, "w") as fp:
                json.dump(hw, fp, indent=1)
            ctx = plen + gen / 2.0
            cmd = [args.bin, "plan", "--model", args.model, "--tp", str(tp), "--hardware", hw_path,
                   "--kv-cache-dtype", "f32", "--nodes", str(1 if ranks == 1 else 2),
                   "--step-cost", f"{plen}:1:{plen * (plen + 1) // 2}:{plen}",
                   "--step-cost", f"1:1:{ctx:g}:{ctx:g}", "--json"]
            if pp > 1:
                cmd += ["--pp", str(pp)]
            pl = json.loads(run(cmd, timeout=120).stdout)
            sc = pl["step_costs_ms"]
            dec = [r["decode_ms"] / r["decode_steps"] for r in runs]
            pre = [r["prefill_ms"] for r in runs]
            total_bytes = statistics.median(r["iface_bytes"] for r in runs)
            decode_bytes = (total_bytes - short["iface_bytes"]) / max(1, gen - 1)
            results.append({
                "rate": rate, "layout": name, "tp": tp, "pp": pp, "ranks": ranks,
                "rank_hosts": [f"{BED_NAME}{h}" for h in hosts],
                "prefill_ms": pre, "prefill_ms_median": statistics.median(pre),
                "decode_ms_per_token": dec, "decode_ms_per_token_median": statistics.median(dec),
                "iface_bytes_run": [r["iface_bytes"] for r in runs],
                "iface_bytes_prefill_only_run": short["iface_bytes"],
                "iface_bytes_per_generated_token_run": total_bytes / gen,
                "iface_bytes_per_decode_token": max(0.0, decode_bytes),
                "trace_cross_bytes_per_decode_step":
                    statistics.median(r["trace_cross_bytes_per_decode_step"] for r in runs),
                "predicted_prefill_ms": sc[0]["total"], "predicted_decode_ms": sc[1]["total"],
                "predicted_decode_comm_ms": sc[1]["comm"], "predicted_prefill_comm_ms": sc[0]["comm"],
                "link_inter_lat_s": lat_inter, "link_intra_lat_s": lat_intra,
                "inter_bw": rate_bw[rate], "tokens": tok,
                "tokens_ok": all(t["ok"] for t in tok)})
        down = bed("down")
        if down.returncode != 0:
            raise Fail(f"testbed down: {down.stderr}")

    out = {"model": args.model, "prompt_tokens": plen, "generated": gen, "repeats": repeats,
           "rates": rates, "profile": profile, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "command": " ".join(sys.argv), "results": results, "failures": failures}
    path = os.path.join(args.out, "testbed_layouts.json")
    with open(path, "w") as fp:
        json.dump(out, fp, indent=1)
    print_table(out)
    print(f"\nwritten: {path}")
    if failures:
        for f in failures:
            log("FAIL: " + f)
        return 1
    return 0


def spread(v):
    return f"{min(v):.1f}-{max(v):.1f}" if len(v) > 1 else "-"


def print_table(out):
    print(f"prompt {out['prompt_tokens']} tokens, {out['generated']} generated, "
          f"{out['repeats']} repeat(s); times: median (min-max); predicted = plan --step-cost; "
          f"ratio = predicted / measured\n")
    print("| link | layout | ranks on | prefill ms | predicted | ratio | decode ms/token | "
          "predicted | ratio | link B/decode token (iface) | trace B/decode step | "
          "link B/generated token (whole run) | tokens vs tp1 |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in out["results"]:
        tk = r["tokens"]
        if not r["tokens_ok"]:
            tok = "**differ**"
        elif r["tp"] == 1 and r["layout"] != "tp1":
            tok = "bit-identical"
        elif r["layout"] == "tp1":
            tok = "reference" if r is out["results"][0] else "bit-identical"
        else:
            tok = f"ids equal, max dlogprob {max(t['max_abs_dlogprob'] for t in tk):.1e}"
        hosts = ",".join(h[-1] for h in r["rank_hosts"])
        print(f"| {r['rate']} | {r['layout']} | {hosts} | {r['prefill_ms_median']:.1f} "
              f"({spread(r['prefill_ms'])}) | {r['predicted_prefill_ms']:.1f} | "
              f"{r['predicted_prefill_ms'] / r['prefill_ms_median']:.2f} | "
              f"{r['decode_ms_per_token_median']:.2f} ({spread(r['decode_ms_per_token'])}) | "
              f"{r['predicted_decode_ms']:.2f} | "
              f"{r['predicted_decode_ms'] / r['decode_ms_per_token_median']:.2f} | "
              f"{r['iface_bytes_per_decode_token']:.0f} | {r['trace_cross_bytes_per_decode_step']:.0f} | "
              f"{r['iface_bytes_per_generated_token_run']:.0f} | {tok} |")


if __name__ == "__main__":
    # SIGTERM (a test's timeout) runs the finally below, so the bed goes down.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        rc = main()
    except Fail as e:
        log(f"testbed_layouts: {e}")
        rc = 1
    finally:
        bed("down")
    sys.exit(rc)
