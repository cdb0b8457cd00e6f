"""The tests that build scripts/testbed.sh's beds need network namespaces: each
skips (exit 77), with the reason printed, where they cannot be created."""
import os
import shutil
import subprocess
import sys


def require_netns(probe):
    """Skips the test unless a namespace named `probe` can be made (and removed)."""
    def skip(why):
        print(f"SKIP: {why}", flush=True)
        sys.exit(77)

    if os.geteuid() != 0:
        skip("network namespaces need root")
    if shutil.which("ip") is None:
        skip("no 'ip' (iproute2) to create network namespaces")
    p = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if p.returncode != 0:
        skip(f"cannot create a network namespace: {p.stderr.strip()}")
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
