"""What the GPU end-to-end test decides, as functions a CPU test can exercise
(tests/test_gpu_skip_logic.py): whether to skip, and how two runs compare.

A GPU test may skip only when no GPU is present.  The binary's own probe is
not trusted for that: a crash, a missing cuBLAS, a failed capture all make the
probe fail, and each of those is a failure to report, not a skip."""
import os
import shutil
import subprocess

# The binary's two messages for "nothing to run on" (launcher/device.c).
NO_GPU_MESSAGES = ("no CUDA device is usable on this host", "this build has no CUDA support")


def gpu_present():
    """Whether this host has an NVIDIA GPU, asked of the driver, not of us.
    SS_TEST_GPU_PRESENT=0/1 overrides (for the test of this logic)."""
    forced = os.environ.get("SS_TEST_GPU_PRESENT")
    if forced in ("0", "1"):
        return forced == "1"
    if shutil.which("nvidia-smi"):
        p = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True)
        if p.returncode == 0 and "GPU " in p.stdout:
            return True
    return os.path.exists("/dev/nvidia0")


def decide(probe_rc, probe_stderr, present):
    """("run" | "skip" | "fail", reason) for a probe that exited probe_rc
    (negative: killed by that signal) with probe_stderr."""
    last = (probe_stderr.strip().splitlines() or ["(no message)"])[-1]
    if probe_rc == 0:
        return "run", "the probe ran on the GPU"
    says_no_gpu = probe_rc == 1 and any(m in probe_stderr for m in NO_GPU_MESSAGES)
    if says_no_gpu and not present:
        return "skip", f"no GPU on this host: {last}"
    if says_no_gpu:
        return "fail", f"a GPU is present but the binary finds none usable: {last}"
    how = f"killed by signal {-probe_rc}" if probe_rc < 0 else f"exit status {probe_rc}"
    return "fail", f"the GPU probe failed ({how}): {last}"


def compare_runs(a, b, tol):
    """Compares b with the reference a (generate --json with top logprobs).
    Returns (errors, notes, steps compared).  Greedy ids must agree (the one
    excuse: a near-tie in the reference, compared up to it); at every step
    compared the top-k ids must be the same set, except an id whose logprob is
    within tol of the other run's k-th (a tie at the cut), and the logprobs of
    shared ids within tol.  Comparing no step at all is an error."""
    errors, notes = [], []
    ta, tb = a.get("tokens") or [], b.get("tokens") or []
    if len(ta) != len(tb):
        errors.append(f"{len(ta)} tokens against {len(tb)}")
    n = min(len(ta), len(tb))
    if n == 0:
        errors.append("no step to compare")
        return errors, notes, 0
    k = next((i for i in range(n) if ta[i] != tb[i]), n)
    if k < n:
        top = a["top_logprobs"][k]
        gap = top[0]["logprob"] - top[1]["logprob"] if len(top) > 1 else float("inf")
        if gap > tol:
            errors.append(f"greedy ids differ at step {k} (top-2 gap {gap:.2e}):\n {ta}\n {tb}")
            return errors, notes, k
        notes.append(f"a near-tie at step {k} (top-2 gap {gap:.2e} <= {tol:.0e}): compared up to it")
    steps = list(zip(a.get("top_logprobs") or [], b.get("top_logprobs") or []))[:min(k + 1, n)]
    if not steps:
        errors.append("no top logprobs to compare")
        return errors, notes, 0
    worst = 0.0
    for i, (sa, sb) in enumerate(steps):
        da = {e["id"]: e["logprob"] for e in sa}
        db = {e["id"]: e["logprob"] for e in sb}
        if not da or not db:
            errors.append(f"step {i}: an empty top-k")
            continue
        cut_a, cut_b = min(da.values()), min(db.values())
        for i_d, lp in db.items():
            if i_d in da:
                worst = max(worst, abs(da[i_d] - lp))
            elif abs(lp - cut_a) > tol:
                errors.append(f"step {i}: id {i_d} ({lp:.4f}) is in one top-k only")
        for i_d, lp in da.items():
            if i_d not in db and abs(lp - cut_b) > tol:
                errors.append(f"step {i}: id {i_d} ({lp:.4f}) is in one top-k only")
    if worst > tol:
        errors.append(f"logprob difference {worst:.2e} > {tol:.0e}")
    notes.append(f"max |logprob diff| {worst:.2e} (<= {tol:.0e})")
    return errors, notes, len(steps)
