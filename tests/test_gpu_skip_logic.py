"""The GPU end-to-end test must be able to fail: it skips (exit 77) only when
no GPU is present, and its comparison fails on ids missing from the other
run's top-k and on comparing no step.  Checked without a GPU: the decision
and the comparison as functions (tests/lib/gpu_check.py), and the real
tests/gpu/test_cuda_e2e.py run against fake binaries whose GPU probe crashes,
cannot load cuBLAS, or reports no GPU."""
import os
import stat
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "lib"))
from gpu_check import compare_runs, decide, gpu_present  # noqa: E402
from harness import Checker, parse_args  # noqa: E402

args = parse_args()
real_bin = os.path.abspath(args.bin)
ck = Checker("gpu skip logic")
E2E = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gpu", "test_cuda_e2e.py")
NO_DEV = ("shardserve generate: error: --device cuda: no CUDA device is usable on this host "
          "(no GPU, no driver, or CUDA_VISIBLE_DEVICES hides them)")

# ---- the decision ----------------------------------------------------------------
for (rc, err, present), want in [
    ((0, "", True), "run"),
    ((1, NO_DEV, False), "skip"),
    ((1, "shardserve generate: error: --device cuda: this build has no CUDA support", False), "skip"),
    ((1, NO_DEV, True), "fail"),                    # a GPU the binary cannot see
    ((-11, "", False), "fail"),                     # a crash is never a skip
    ((-6, "cuda: an illegal memory access", True), "fail"),
    ((1, "error: cuBLAS: libcublas.so.13: cannot open shared object file", False), "fail"),
    ((1, "cuda: capturing the step as a graph failed", True), "fail"),
    ((2, NO_DEV, False), "fail"),                   # a usage error is not "no GPU"
]:
    got, why = decide(rc, err, present)
    ck.check(got == want, f"decide(rc={rc}, present={present}, {err[-40:]!r}) = {got} ({why}), want {want}")


# ---- the comparison -------------------------------------------------------------
def run_of(tokens, tops):
    return {"tokens": tokens,
            "top_logprobs": [[{"id": i, "logprob": lp} for i, lp in t] for t in tops]}


ref = run_of([5, 6], [[(5, -0.1), (7, -2.5), (8, -3.0)], [(6, -0.2), (9, -2.0), (4, -4.0)]])
same = run_of([5, 6], [[(5, -0.1), (7, -2.5), (8, -3.0)], [(6, -0.2), (9, -2.0), (4, -4.0)]])
errs, _, steps = compare_runs(ref, same, 1e-3)
ck.check(not errs and steps == 2, f"identical runs: {errs}, {steps} steps")
missing = run_of([5, 6], [[(5, -0.1), (7, -2.5), (3, -2.9)], [(6, -0.2), (9, -2.0), (4, -4.0)]])
errs, _, _ = compare_runs(ref, missing, 1e-3)
ck.check(any("one top-k only" in e for e in errs), f"an id missing from the other top-k: {errs}")
tie_at_cut = run_of([5, 6], [[(5, -0.1), (7, -2.5), (3, -3.0)], [(6, -0.2), (9, -2.0), (4, -4.0)]])
errs, _, _ = compare_runs(ref, tie_at_cut, 1e-3)
ck.check(not errs, f"a tie at the top-k cut is not a difference: {errs}")
errs, _, steps = compare_runs(run_of([], []), run_of([], []), 1e-3)
ck.check(errs and steps == 0, "comparing no step must fail")
errs, _, _ = compare_runs(ref, run_of([5], [[(5, -0.1), (7, -2.5), (8, -3.0)]]), 1e-3)
ck.check(bool(errs), "runs of different lengths must fail")
shifted = run_of([5, 6], [[(5, -0.1), (7, -2.4), (8, -3.0)], [(6, -0.2), (9, -2.0), (4, -4.0)]])
errs, _, _ = compare_runs(ref, shifted, 1e-3)
ck.check(any("logprob difference" in e for e in errs), f"a logprob off by 0.1: {errs}")
other_ids = run_of([5, 7], [[(5, -0.1), (7, -2.5), (8, -3.0)], [(7, -0.2), (9, -2.0), (4, -4.0)]])
errs, _, _ = compare_runs(ref, other_ids, 1e-3)
ck.check(any("greedy ids differ" in e for e in errs), f"other greedy ids: {errs}")

# ---- the real e2e test against fake binaries -------------------------------------
tmp = tempfile.mkdtemp(prefix="ss-gpu-skip-")
fake = os.path.join(tmp, "fake-shardserve")
with open(fake, "w") as f:
    f.write(f"""#!/bin/sh
# synth goes to the real binary; a GPU run fails the way FAKE_MODE says.
case "$*" in
  *"--device cuda"*) ;;
  *) exec "{real_bin}" "$@" ;;
esac
case "$FAKE_MODE" in
  crash) kill -SEGV $$ ;;
  cublas) echo "shardserve generate: error: cuda: cuBLAS: libcublas.so.13: cannot open shared object file" >&2; exit 1 ;;
  nogpu) echo "{NO_DEV}" >&2; exit 1 ;;
esac
exit 3
""")
os.chmod(fake, os.stat(fake).st_mode | stat.S_IXUSR)


def e2e(binary, env):
    p = subprocess.run([sys.executable, E2E, "--bin", binary, "--data", args.data],
                       capture_output=True, text=True, timeout=600, env=dict(os.environ, **env))
    return p.returncode, (p.stdout + p.stderr).strip().splitlines()[-1:] or [""]


for mode, present, want in [("crash", "0", 1), ("cublas", "0", 1), ("nogpu", "1", 1),
                            ("nogpu", "0", 77)]:
    rc, last = e2e(fake, {"FAKE_MODE": mode, "SS_TEST_GPU_PRESENT": present})
    if ck.check(rc == want, f"e2e with a probe that fails by '{mode}' (GPU present {present}): "
                            f"exit {rc}, want {want}: {last[0]}"):
        print(f"ok   e2e, probe '{mode}', GPU present {present}: exit {rc} ({last[0][:100]})")
if not gpu_present():
    rc, last = e2e(real_bin, {})
    if ck.check(rc == 77, f"e2e with the real binary and no GPU here: exit {rc}, want 77: {last[0]}"):
        print(f"ok   e2e with the real binary, no GPU here: exit {rc} ({last[0][:100]})")
ck.finish()
