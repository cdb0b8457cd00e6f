"""Runs a command with SS_CPU_ISA set to one kernel variant:
    python tests/lib/with_isa.py ISA BIN -- COMMAND...
Exits 77 (skipped) with the reason printed when this CPU (or binary) cannot run
that variant, as `BIN info --cpu` reports; otherwise the command's exit code."""
import os
import subprocess
import sys

isa, binary = sys.argv[1], sys.argv[2]
cmd = sys.argv[sys.argv.index("--") + 1:]
p = subprocess.run([binary, "info", "--cpu"], capture_output=True, text=True)
if p.returncode != 0:
    print(f"with_isa: {binary} info --cpu failed: {p.stderr}", flush=True)
    sys.exit(1)
avail = []
for line in p.stdout.splitlines():
    if line.startswith("variants:"):
        avail = line.split(":", 1)[1].replace("(available here)", "").split()
if isa not in avail:
    print(f"skipped: this CPU cannot run the {isa} kernels (available: {', '.join(avail)})",
          flush=True)
    sys.exit(77)
print(f"with_isa: SS_CPU_ISA={isa}", flush=True)
sys.exit(subprocess.run(cmd, env=dict(os.environ, SS_CPU_ISA=isa)).returncode)
