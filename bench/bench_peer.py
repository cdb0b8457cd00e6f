"""shardserve against llama.cpp, side by side in one run, on the same file.

  - prefill (a 512-token prompt) and decode (128 greedy tokens at batch 1,
    after that prompt: positions 512..639) at 1 and 2 threads: ours from
    `generate`'s stats line, llama.cpp's from `llama-bench -p 512 -n 128 -d
    0,512 -r 1 -o json` (prefill at depth 0, decode at depth 512, the same
    positions as ours); runs alternate engine by engine; once per kernel
    variant of ours (SS_CPU_ISA) given by --isas and per activation path
    (--activations exact,q8: the exact path and the opt-in 8-bit one);
  - serving: 32 concurrent streams x 64 output tokens (32-token prompts, greedy,
    ignore_eos, /v1/completions) against `shardserve serve --threads T` and
    `llama-server -np 32 -t T`, output tokens / wall time;
  - ranks on 2 cores: TP 2 vs TP 4 decode tok/s (`launch --tp N -- generate`).
Prints median [min, max] over --runs and the ratio of medians.

Usage: python bench/bench_peer.py --bin build/shardserve --model M.gguf
           --llama-bin DIR [--isas avx2] [--threads 1,2] [--runs 5] [--skip-serve]
(bench/run_peer_bench.sh builds the peer and prints the machine header.)
"""
import argparse
import http.client
import json
import os
import random
import re
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "lib"))
from server import Server  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--bin", default="build/shardserve")
ap.add_argument("--model", default="models/SmolLM2-135M-Instruct.Q4_1.gguf")
ap.add_argument("--llama-bin", required=True, help="folder with llama-bench and llama-server")
ap.add_argument("--isas", default="", help="our kernel variants to run (default: the best)")
ap.add_argument("--threads", default="1,2")
ap.add_argument("--decode-depth", type=int, default=512,
                help="context before the decoded tokens: 512 (default, ours after the 512-token "
                     "prompt, llama-bench -d 512) or 0 (ours after a 1-token prompt, llama-bench "
                     "-d 0); prefill is always 512 tokens from an empty context")
ap.add_argument("--activations", default="exact",
                help="our activation paths, comma-separated: exact (default), q8")
ap.add_argument("--runs", type=int, default=5)
ap.add_argument("--streams", type=int, default=32)
ap.add_argument("--max-tokens", type=int, default=64)
ap.add_argument("--serve-runs", type=int, default=3)
ap.add_argument("--skip-serve", action="store_true")
ap.add_argument("--skip-tp", action="store_true")
a = ap.parse_args()

rnd = random.Random(0)
PROMPT = [rnd.randrange(100, 40000) for _ in range(512)]
STATS = re.compile(r"prefill ([0-9.]+) tok/s .*decode ([0-9.]+) tok/s \((\d+) steps.*kernels (\w+)")


def med(v):
    return f"{statistics.median(v):.1f} [{min(v):.1f}, {max(v):.1f}]"


def ours_gen(threads, isa, tp=1, act="exact"):
    """Prefill tok/s of the 512-token prompt and decode tok/s of 128 steps after
    --decode-depth tokens (two runs when the depth is not 512)."""
    if a.decode_depth != 512:
        pp, _ = ours_gen_once(PROMPT, threads, isa, tp, act)
        _, tg = ours_gen_once(PROMPT[:max(1, a.decode_depth)], threads, isa, tp, act)
        return pp, tg
    return ours_gen_once(PROMPT, threads, isa, tp, act)


def ours_gen_once(prompt, threads, isa, tp, act):
    cmd = [a.bin, "generate", "--model", a.model, "--prompt-ids", ",".join(map(str, prompt)),
           "-n", "129", "--temp", "0", "--ignore-eos", "--threads", str(threads)]
    if act != "exact":
        cmd += ["--activations", act]
    if tp > 1:
        cmd = [a.bin, "launch", "--tp", str(tp), "--"] + cmd[1:]
    env = dict(os.environ, SS_CPU_ISA=isa, OMPI_ALLOW_RUN_AS_ROOT="1",
               OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
    m = STATS.search(p.stderr)
    assert m and int(m.group(3)) == 128 and m.group(4) == isa, p.stderr[-500:]
    return float(m.group(1)), float(m.group(2))


def llama_gen(threads):
    p = subprocess.run([os.path.join(a.llama_bin, "llama-bench"), "-m", a.model, "-p", "512",
                        "-n", "128", "-d", f"0,{a.decode_depth}" if a.decode_depth else "0",
                        "-r", "1", "-t", str(threads), "-o", "json"],
                       capture_output=True, text=True, check=True)
    pp = tg = None
    for r in json.loads(p.stdout):
        if r["n_prompt"] == 512 and r["n_gen"] == 0 and r.get("n_depth", 0) == 0:
            pp = r["avg_ts"]
        if r["n_gen"] == 128 and r["n_prompt"] == 0 and r.get("n_depth", 0) == a.decode_depth:
            tg = r["avg_ts"]
    assert pp is not None and tg is not None, p.stdout[-800:]
    return pp, tg


def gen_table(isa):
    acts = a.activations.split(",")
    d = a.decode_depth
    where = f"positions {d}..{d + 127}" if d else "from an empty context (ours: after 1 token)"
    print(f"\n### prefill 512 / decode 128 ({where}) at batch 1, kernels {isa}\n")
    print("| threads | engine | prefill tok/s median [min, max] | decode tok/s median [min, max] |")
    print("|---|---|---|---|")
    for t in (int(x) for x in a.threads.split(",")):
        for act in acts:
            ours_gen(t, isa, act=act)  # warm-up (page cache, frequency)
        llama_gen(t)
        op = {act: [] for act in acts}
        od = {act: [] for act in acts}
        lp, ld = [], []
        for _ in range(a.runs):
            for act in acts:
                p, d = ours_gen(t, isa, act=act)
                op[act].append(p), od[act].append(d)
            p, d = llama_gen(t)
            lp.append(p), ld.append(d)
            ours = ", ".join(f"{act} {op[act][-1]:.1f}/{od[act][-1]:.1f}" for act in acts)
            print(f"  threads {t}: ours {ours}, llama.cpp {lp[-1]:.1f}/{ld[-1]:.1f}",
                  file=sys.stderr, flush=True)
        print(f"| {t} | llama.cpp | {med(lp)} | {med(ld)} |")
        for act in acts:
            name = f"shardserve ({isa}{', --activations ' + act if act != 'exact' else ''})"
            print(f"| {t} | {name} | {med(op[act])} | {med(od[act])} |")
            print(f"| {t} | **ratio** | **{statistics.median(op[act]) / statistics.median(lp):.2f}x** | "
                  f"**{statistics.median(od[act]) / statistics.median(ld):.2f}x** |", flush=True)


SERVE_PROMPTS = [[rnd.randrange(100, 40000) for _ in range(32)] for _ in range(256)]


def one(port, ids):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=900)
    body = json.dumps({"prompt": ids, "max_tokens": a.max_tokens, "temperature": 0,
                       "ignore_eos": True, "stream": False})
    conn.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
    r = conn.getresponse()
    data = r.read()
    conn.close()
    if r.status != 200:
        raise RuntimeError(f"HTTP {r.status}: {data[:300]!r}")
    return json.loads(data)["usage"]["completion_tokens"]


def serve_once(port, offset):
    """32 streams at once, one request each; output tok/s over the wall time."""
    got = [0] * a.streams
    errs = []

    def worker(i):
        try:
            got[i] = one(port, SERVE_PROMPTS[(offset + i) % len(SERVE_PROMPTS)])
        except Exception as e:  # noqa: BLE001
            errs.append(str(e))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(a.streams)]
    t0 = time.time()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    dt = time.time() - t0
    if errs or sum(got) != a.streams * a.max_tokens:
        raise RuntimeError(f"serving run: {errs[:2]} tokens {sum(got)}")
    return sum(got) / dt


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def llama_server(threads):
    port = free_port()
    ctx = a.streams * (32 + a.max_tokens + 32)
    proc = subprocess.Popen([os.path.join(a.llama_bin, "llama-server"), "-m", a.model, "-t",
                             str(threads), "-np", str(a.streams), "-c", str(ctx), "--port",
                             str(port), "--host", "127.0.0.1"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    for _ in range(600):
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", "/health")
            if c.getresponse().status == 200:
                return proc, port
        except OSError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("llama-server did not start")


def serve_table(isa):
    t = max(int(x) for x in a.threads.split(","))
    acts = a.activations.split(",")
    print(f"\n### serving: {a.streams} concurrent streams x {a.max_tokens} tokens, {t} threads, "
          f"kernels {isa}\n")
    os.environ["SS_CPU_ISA"] = isa
    lproc, lport = llama_server(t)
    ours, peer = {}, []
    try:
        serve_once(lport, 0)  # warm-up
        for act in acts:
            extra = ["--threads", str(t), "--max-num-seqs", str(a.streams)]
            if act != "exact":
                extra += ["--activations", act]
            srv = Server(a.bin, a.model, extra=extra)
            ours[act] = []
            try:
                serve_once(srv.port, 0)  # warm-up
                for r in range(a.serve_runs):
                    ours[act].append(serve_once(srv.port, 32 * (r + 1)))
                    if act == acts[0]:
                        peer.append(serve_once(lport, 32 * (r + 1)))
                    print(f"  serve: ours ({act}) {ours[act][-1]:.1f}, llama-server {peer[-1]:.1f}",
                          file=sys.stderr, flush=True)
            finally:
                srv.stop()
    finally:
        lproc.send_signal(signal.SIGINT)
        lproc.wait(30)
    print("| engine | output tok/s median [min, max] |")
    print("|---|---|")
    print(f"| llama-server -np {a.streams} | {med(peer)} |")
    for act in acts:
        name = f"shardserve serve ({isa}{', --activations ' + act if act != 'exact' else ''})"
        print(f"| {name} | {med(ours[act])} |")
        print(f"| **ratio** | **{statistics.median(ours[act]) / statistics.median(peer):.2f}x** |",
              flush=True)


def tp_table(isa):
    print(f"\n### ranks on {os.cpu_count()} cores: decode tok/s (batch 1, 1 thread per rank), "
          f"kernels {isa}\n")
    print("| ranks | decode tok/s median [min, max] |")
    print("|---|---|")
    res = {}
    for tp in (2, 4):
        ours_gen(1, isa, tp)
        res[tp] = [ours_gen(1, isa, tp)[1] for _ in range(a.runs)]
        print(f"| {tp} | {med(res[tp])} |", flush=True)
    print(f"| **4 vs 2** | **{statistics.median(res[4]) / statistics.median(res[2]):.2f}x** |")


isas = a.isas.split(",") if a.isas else [None]
if isas == [None]:
    out = subprocess.run([a.bin, "info", "--cpu"], capture_output=True, text=True).stdout
    isas = [re.search(r"^chosen: *(\w+)", out, re.M).group(1)]
for isa in isas:
    gen_table(isa)
if not a.skip_serve:
    serve_table(isas[0])
if not a.skip_tp:
    tp_table(isas[0])
