#!/usr/bin/env python3
"""Resident memory of `shardserve serve` with many requests queued (waiting, not running).

Synthesizes (or reuses) a tiny llama GGUF with a large vocabulary, serves it with
--max-num-seqs 1, sends one long "blocker" request that occupies the only batch slot,
then N more streaming requests that all sit in the waiting queue.  It reads VmRSS /
VmHWM / VmData from /proc/PID/status when idle (after one warm-up request), with only the
blocker running (the baseline for the deltas), once /metrics shows N waiting, and
after every connection has been closed (aborted).

Note: a buffer that is malloc'd but never written costs address space (VmData) but
little RSS, so both are printed; per-request figures divide the delta by N.

  bench/queued_memory.py --bin build/shardserve --requests 1000
"""
import argparse, http.client, json, os, re, signal, socket, subprocess, sys, threading, time


T0 = time.time()


def log(msg):
    print(f"[{time.time() - T0:6.1f}s] {msg}", flush=True)


def proc_status(pid):
    """VmRSS, VmHWM, VmData of `pid` in KiB."""
    with open(f"/proc/{pid}/status") as f:
        vals = dict(re.findall(r"^(Vm\w+):\s+(\d+) kB", f.read(), re.M))
    return {k: int(vals[k]) for k in ("VmRSS", "VmHWM", "VmData")}


def measure(pid, label):
    s = proc_status(pid)
    log(f"{label}: rss_mib={s['VmRSS'] / 1024:.1f} hwm_mib={s['VmHWM'] / 1024:.1f} "
        f"vmdata_mib={s['VmData'] / 1024:.1f}")
    return s


def http_get(port, path):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        c.request("GET", path)
        r = c.getresponse()
        return r.status, r.read().decode()
    finally:
        c.close()


def gauge(port, name):
    """A shardserve:NAME gauge from /metrics (-1 when absent)."""
    _, body = http_get(port, "/metrics")
    m = re.search(rf"^shardserve:{name}(?:{{[^}}]*}})?\s+(\d+)", body, re.M)
    return int(m.group(1)) if m else -1


def waiting(port):
    return gauge(port, "num_requests_waiting")


def open_request(port, max_tokens, prompt="Hello there, how are you today?"):
    """Connects and sends a streaming POST /v1/completions; returns the socket, unread."""
    body = json.dumps({"prompt": prompt, "max_tokens": max_tokens, "stream": True,
                       "ignore_eos": True, "temperature": 1.0}).encode()
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
              b"Content-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n" % len(body) + body)
    return s


def drain(sock):
    """Reads a socket to EOF (keeps the server from buffering the blocker's stream)."""
    try:
        while sock.recv(65536):
            pass
    except OSError:
        pass


def refused(socks):
    """How many sockets already hold a non-200 response (e.g. 429 queue full)."""
    n = 0
    for s in socks:
        s.setblocking(False)
        try:
            head = s.recv(64, socket.MSG_PEEK)
            if head and not head.startswith(b"HTTP/1.1 200"):
                n += 1
        except BlockingIOError:
            pass
    return n


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bin", default="build/shardserve", help="the shardserve binary")
    ap.add_argument("--requests", type=int, default=1000, help="requests to queue (N)")
    ap.add_argument("--workdir", default="/tmp/ss_queued_mem", help="model cache dir")
    ap.add_argument("--vocab", type=int, default=131072)
    ap.add_argument("--settle", type=float, default=2.0, help="seconds to wait once queued")
    a = ap.parse_args()
    n = a.requests

    # 1. The synthetic model: ~20 MiB at vocab 131072 (embedding + LM head dominate).
    os.makedirs(a.workdir, exist_ok=True)
    model = os.path.join(a.workdir, f"synth-llama-d64-v{a.vocab}-q8_0.gguf")
    if not os.path.exists(model):
        subprocess.run([a.bin, "synth", "--arch", "llama", "--dim", "64", "--layers", "1",
                        "--heads", "2", "--ffn", "128", "--vocab", str(a.vocab),
                        "--dtype", "q8_0", "-o", model + ".tmp.gguf"],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.rename(model + ".tmp.gguf", model)

    # 2. The server: one sequence at a time, room for N + 1 requests in the queue.
    srv = subprocess.Popen([a.bin, "serve", "-m", model, "--port", "0", "--chat-template",
                            "chatml", "--max-num-seqs", "1", "--max-waiting", str(n + 100),
                            "--kv-mem", "16M", "-t", "1"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    socks = []
    try:
        port = None
        for line in srv.stderr:  # "listening on http://127.0.0.1:PORT (loading the model)"
            m = re.search(r"listening on http://[\d.]+:(\d+)", line)
            if m:
                port = int(m.group(1))
                break
        if port is None:
            sys.exit(f"server did not start (exit {srv.wait()})")
        echo = lambda: [log("server: " + line.rstrip()) for line in srv.stderr]
        threading.Thread(target=echo, daemon=True).start()
        deadline = time.time() + 60
        while http_get(port, "/health")[0] != 200:
            if time.time() > deadline or srv.poll() is not None:
                sys.exit("server never became ready")
            time.sleep(0.1)

        # 3. Idle, after one short request so first-use allocations are not counted.
        warm = open_request(port, 4)
        drain(warm)
        warm.close()
        time.sleep(0.5)
        idle = measure(srv.pid, "idle")

        # The blocker takes the one batch slot for the rest of the run (ignore_eos).
        blocker = open_request(port, 3500)
        threading.Thread(target=drain, args=(blocker,), daemon=True).start()
        deadline = time.time() + 30
        while gauge(port, "num_requests_running") != 1:
            if time.time() > deadline:
                sys.exit("the blocker request never started running")
            time.sleep(0.05)
        time.sleep(0.5)
        base = measure(srv.pid, "running(1)")  # the baseline: only the blocker
        t0 = time.time()
        for _ in range(n):
            socks.append(open_request(port, 200))
        log(f"sent {n} requests in {time.time() - t0:.1f} s")
        deadline = time.time() + 60
        while (w := waiting(port)) < n and time.time() < deadline:
            time.sleep(0.1)
        time.sleep(a.settle)
        w = waiting(port)
        log(f"waiting={w} refused={refused(socks)}")
        queued = measure(srv.pid, f"queued({w})")
        if w < n:
            log(f"warning: only {w} of {n} requests are waiting")

        # Abort everything: close the queued ones and the blocker.
        for s in socks + [blocker]:
            s.close()
        socks = []
        deadline = time.time() + 30
        while waiting(port) > 0 and time.time() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)
        measure(srv.pid, "after_abort")
    finally:
        for s in socks:
            s.close()
        if srv.poll() is None:  # 4. Clean shutdown: SIGINT drains (nothing left) and exits.
            srv.send_signal(signal.SIGINT)
            try:
                srv.wait(timeout=40)
            except subprocess.TimeoutExpired:
                srv.kill()
                srv.wait()
    log(f"server exit status {srv.returncode}")

    d_rss = queued["VmRSS"] - base["VmRSS"]
    d_data = queued["VmData"] - base["VmData"]
    per = lambda d: d / n if n else 0.0
    log(f"queued={n} vocab={a.vocab} rss_idle_mib={idle['VmRSS'] / 1024:.1f} "
        f"rss_running_mib={base['VmRSS'] / 1024:.1f} "
        f"rss_queued_mib={queued['VmRSS'] / 1024:.1f} delta_mib={d_rss / 1024:.1f} "
        f"per_request_kib={per(d_rss):.1f} hwm_mib={queued['VmHWM'] / 1024:.1f} "
        f"vmdata_delta_mib={d_data / 1024:.1f} vmdata_per_request_kib={per(d_data):.1f}")


if __name__ == "__main__":
    main()
