"""bench/gpu_verify.sh on a machine without a GPU: the dry run lists every step
with its limit and checks the tools they need (exit 3 naming a missing one,
0 when all are found); a real run on a machine whose driver lists no GPU
writes the summary, says so and exits 4 without building or running anything.
Tools are faked on PATH (nvidia-smi, nvcc), so the outcome does not depend on
what this machine has installed."""
import os
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "lib"))
from harness import Checker, parse_args  # noqa: E402

args = parse_args()
ck = Checker("gpu_verify")
root = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
script = os.path.join(root, "bench", "gpu_verify.sh")
tmp = tempfile.mkdtemp(prefix="ss-gpu-verify-")
STEPS = ["build", "kernels", "e2e_llama", "e2e_grok", "nccl", "bench"]


def fake_bin(name, body):
    d = os.path.join(tmp, "fake")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "w") as f:
        f.write("#!/bin/sh\n" + body + "\n")
    os.chmod(os.path.join(d, name), 0o755)
    return d


def run(argv, path):
    env = dict(os.environ, PATH=path)
    env.pop("OUT", None)
    p = subprocess.run([shutil.which("bash"), script, *argv], capture_output=True, text=True, env=env,
                       timeout=60)
    return p.returncode, p.stdout + p.stderr


build = os.path.join(tmp, "nobuild")  # no build there: the build step's tools are needed
base = os.environ.get("PATH", "")

# Every tool there (nvcc, nvidia-smi faked): the dry run lists the steps, exits 0.
fake = fake_bin("nvcc", "exit 0")
fake_bin("nvidia-smi", "exit 9")
have_build_tools = all(shutil.which(t) for t in ("cmake", "cc", "ctest", "timeout", "python3"))
rc, out = run(["--dry-run", "--build-dir", build], fake + ":" + base)
for s in STEPS:
    ck.check(f"  {s} " in out, f"dry run lists step {s}: {out[-400:]}")
if have_build_tools:
    ck.check(rc == 0 and "every tool found" in out, f"dry run with every tool: rc {rc}: {out[-400:]}")

# Without nvidia-smi and nvcc: exit 3 naming them.
empty = os.path.join(tmp, "empty")
os.makedirs(empty)
os.rename(os.path.join(fake, "nvidia-smi"), os.path.join(empty, "nvidia-smi.off"))
os.remove(os.path.join(fake, "nvcc"))
plain = ":".join(d for d in base.split(":") if d and not (
    os.path.exists(os.path.join(d, "nvidia-smi")) or os.path.exists(os.path.join(d, "nvcc"))))
tools = os.path.join(tmp, "tools")  # what the script itself uses, from wherever it is
os.makedirs(tools)
for t in ("timeout", "cmake", "cc", "ctest", "python3", "date", "dirname", "sed", "mkdir", "tee",
          "grep", "head", "tr", "hostname", "printf", "cat", "basename", "df", "awk", "nproc"):
    w = shutil.which(t)
    if w and not os.path.exists(os.path.join(tools, t)):
        os.symlink(w, os.path.join(tools, t))
rc, out = run(["--dry-run", "--build-dir", build], tools + ":" + plain)
ck.check(rc == 3, f"dry run without nvidia-smi/nvcc exits 3, got {rc}: {out[-400:]}")
ck.check("missing tools" in out and "nvidia-smi(" in out, f"dry run names nvidia-smi: {out[-400:]}")
if not os.path.exists("/usr/local/cuda/bin/nvcc"):  # the script's fallback for nvcc
    ck.check("nvcc(build)" in out, f"dry run names nvcc: {out[-400:]}")

# A driver that lists no GPU: exit 4, the summary says so, nothing built.
fake_bin("nvidia-smi", "echo 'NVIDIA-SMI has failed because it could not communicate with the "
         "NVIDIA driver' >&2; exit 9")
fake_bin("nvcc", "exit 0")
outdir = os.path.join(tmp, "out")
rc, out = run(["--build-dir", build, "--out", outdir], fake + ":" + tools + ":" + plain)
ck.check(rc == 4, f"no GPU: exit 4, got {rc}: {out[-400:]}")
summ = os.path.join(outdir, "summary.txt")
text = open(summ).read() if os.path.exists(summ) else ""
ck.check("NO GPU" in text, f"summary says no GPU: {text[-300:]!r}")
ck.check(not os.path.exists(build), "no GPU: nothing was built")

# A wrong option is a usage error.
rc, out = run(["--bogus"], base)
ck.check(rc == 2 and "unknown option" in out, f"unknown option: rc {rc}: {out[-200:]}")

shutil.rmtree(tmp, ignore_errors=True)
ck.finish()
