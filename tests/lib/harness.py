"""Shared pieces of the Python tests: arguments, running the binary, checks.

Every test script is run by ctest as
    python tests/test_X.py --bin build/shardserve --model MODEL.gguf --data tests/data
and exits non-zero if any check failed.  A process killed by a signal, or one
whose stderr carries a sanitizer report, is always a failure.
"""
import argparse
import json
import os
import subprocess
import sys


def parse_args(extra=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True, help="path to the shardserve binary")
    ap.add_argument("--model", default="", help="the default model (GGUF)")
    ap.add_argument("--data", default=os.path.join(os.path.dirname(__file__), "..", "data"))
    if extra:
        extra(ap)
    args, _ = ap.parse_known_args()
    return args


SANITIZER_MARKS = ("ERROR: AddressSanitizer", "runtime error:", "ERROR: LeakSanitizer")


class Checker:
    """Collects failures instead of stopping at the first one."""

    def __init__(self, name):
        self.name = name
        self.failures = []
        self.passed = 0

    def check(self, cond, msg):
        if cond:
            self.passed += 1
        else:
            self.failures.append(msg)
            print(f"FAIL: {msg}", flush=True)
        return cond

    def run(self, binary, args, stdin=b"", timeout=300, env=None):
        """Runs the binary; returns (exit code, stdout bytes, stderr text)."""
        try:
            p = subprocess.run([binary] + args, input=stdin, capture_output=True,
                               timeout=timeout, env=env)
        except subprocess.TimeoutExpired:
            self.check(False, f"timed out after {timeout}s: {args}")
            return None, b"", ""
        err = p.stderr.decode("utf-8", "replace")
        self.check(p.returncode >= 0, f"killed by signal {-p.returncode}: {args}\n{err[-2000:]}")
        self.check(not any(m in err for m in SANITIZER_MARKS),
                   f"sanitizer report: {args}\n{err[-3000:]}")
        return p.returncode, p.stdout, err

    def generate_top(self, cmd, env=None, timeout=300):
        """Runs a whole `generate --json --logprobs K` command line (cmd[0] the
        program, e.g. mpirun); returns [(token, {id: logprob} of its top K)]
        per step, or None after a failed check."""
        try:
            p = subprocess.run(cmd, capture_output=True, timeout=timeout, env=env)
        except subprocess.TimeoutExpired:
            self.check(False, f"timed out: {cmd}")
            return None
        err = p.stderr.decode("utf-8", "replace")
        self.check(not any(m in err for m in SANITIZER_MARKS),
                   f"sanitizer report: {cmd}\n{err[-3000:]}")
        if not self.check(p.returncode == 0, f"{cmd}: exit {p.returncode}\n{err[-2000:]}"):
            return None
        line = [l for l in p.stdout.decode().splitlines() if l.startswith("{")][-1]
        j = json.loads(line)
        return [(t, {x["id"]: x["logprob"] for x in top})
                for t, top in zip(j["tokens"], j["top_logprobs"])]

    def finish(self):
        total = self.passed + len(self.failures)
        if self.failures:
            print(f"{self.name}: {len(self.failures)} of {total} checks FAILED")
            sys.exit(1)
        print(f"{self.name}: all {total} checks passed")
        sys.exit(0)
