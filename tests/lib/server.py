"""Starting `shardserve serve` for a test and talking to it.

`Server(binary, model, tp=1, extra=[...])` starts it on a free port (port 0,
read back from the "listening on" line), waits until /health says ready, and
stops it with SIGTERM (to rank 0 under MPI), checking the exit status.
"""
import json
import os
import re
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request

from mpi import launch_cmd, mpi_env


class Server:
    def __init__(self, binary, model, tp=1, extra=(), ready_timeout=120):
        self.tp = tp
        cmd = launch_cmd(binary, tp, ["serve", "--model", model, "--port", "0", "--threads", "1",
                                      *extra])
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     env=mpi_env())
        self.log = []
        self.port = None
        self._port_seen = threading.Event()
        threading.Thread(target=self._read_stderr, daemon=True).start()
        threading.Thread(target=lambda: self.proc.stdout.read(), daemon=True).start()
        if not self._port_seen.wait(ready_timeout):
            self.kill()
            raise RuntimeError("server did not start:\n" + "".join(self.log[-40:]))
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.time() + ready_timeout
        while time.time() < deadline:
            code, _ = self.get("/health")
            if code == 200:
                break
            if self.proc.poll() is not None:
                raise RuntimeError("server exited:\n" + "".join(self.log[-40:]))
            time.sleep(0.1)
        else:
            self.kill()
            raise RuntimeError("server not ready:\n" + "".join(self.log[-40:]))

    def _read_stderr(self):
        for raw in self.proc.stderr:
            line = raw.decode("utf-8", "replace")
            self.log.append(line)
            m = re.search(r"listening on http://[^:]+:(\d+)", line)
            if m and self.port is None:
                self.port = int(m.group(1))
                self._port_seen.set()

    def request(self, method, path, body=None, headers=None, timeout=300):
        """Returns (status, body bytes)."""
        data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers=headers or {"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()
        except (urllib.error.URLError, ConnectionError):
            return None, b""

    def get(self, path):
        return self.request("GET", path)

    def post(self, path, body, headers=None):
        return self.request("POST", path, body, headers)

    def metrics(self):
        code, body = self.get("/metrics")
        out = {}
        for line in body.decode().splitlines():
            if line.startswith("#") or not line.strip():
                continue
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
        return out

    def rank0_pid(self):
        if self.tp == 1:
            return self.proc.pid
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                env = open(f"/proc/{d}/environ", "rb").read()
                cmdline = open(f"/proc/{d}/cmdline", "rb").read()
            except OSError:
                continue
            if b"OMPI_COMM_WORLD_RANK=0\0" in env and b"serve" in cmdline:
                # Rank 0 of this job: its parent is the mpirun our launcher runs.
                try:
                    ppid = int(open(f"/proc/{d}/stat").read().split(")")[1].split()[1])
                    gppid = int(open(f"/proc/{ppid}/stat").read().split(")")[1].split()[1])
                except (OSError, ValueError, IndexError):
                    continue
                if self.proc.pid in (ppid, gppid):
                    return int(d)
        return None

    def stop(self, timeout=60):
        """SIGTERM to rank 0; returns the exit status of the job."""
        pid = self.rank0_pid()
        if pid is None:
            self.kill()
            return None
        os.kill(pid, signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
