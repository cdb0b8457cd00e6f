"""Comparing two runs' greedy ids and top-K log-probabilities, step by step.

Each run is a list of steps; a step is (token id chosen, {id: logprob} of the
top K).  `compare_steps` checks, at every step:
  * every id in the reference's top K has a logprob within `atol` of the
    candidate's; an id the candidate left out of its own top K is accepted
    only when it sits at the reference's boundary (its logprob within atol of
    the candidate's K-th), i.e. a tie at the cut, not a real disagreement;
  * the chosen ids are equal.  When the reference's top-2 margin is below
    `tie` the two runs may legitimately pick different ids; comparison then
    stops at that step and the step is reported.
"""
import numpy as np


def top_margin(top):
    vals = sorted(top.values(), reverse=True)
    return vals[0] - vals[1] if len(vals) > 1 else float("inf")


def compare_steps(ref, cand, atol=1e-3, tie=1e-3):
    """Returns (max |delta|, steps compared, tie step or None, list of problems)."""
    problems = []
    worst = 0.0
    n = min(len(ref), len(cand))
    if len(ref) != len(cand):
        problems.append(f"step counts differ: reference {len(ref)}, candidate {len(cand)}")
    for i in range(n):
        rid, rtop = ref[i]
        cid, ctop = cand[i]
        kth = min(ctop.values()) if ctop else float("-inf")
        for tid, rlp in rtop.items():
            if tid in ctop:
                d = abs(ctop[tid] - rlp)
                worst = max(worst, d)
                if d > atol:
                    problems.append(f"step {i}: id {tid}: logprob {ctop[tid]:.6f} vs reference "
                                    f"{rlp:.6f} (|delta| {d:.2e} > {atol:g})")
            elif len(ctop) < len(rtop) or rlp > kth + atol:
                problems.append(f"step {i}: id {tid} (reference logprob {rlp:.6f}) is missing "
                                f"from the candidate's top {len(ctop)} (its last: {kth:.6f})")
        if rid != cid:
            if top_margin(rtop) < tie:
                return worst, i, i, problems
            problems.append(f"step {i}: greedy id {cid} differs from the reference's {rid}")
            return worst, i + 1, None, problems
    return worst, n, None, problems


def generate_steps(got, ref_logprobs, top):
    """Steps of a `shardserve generate --json --logprobs K` result and of a
    reference's log-probabilities over prompt + generated ids (ref_logprobs[i]
    is the distribution after token i): returns (reference steps, our steps)
    for compare_steps, the reference's top `top` by stable descending order."""
    n_p = len(got["prompt_tokens"])
    ref_steps, our_steps = [], []
    for i in range(len(got["tokens"])):
        row = ref_logprobs[n_p - 1 + i]
        order = np.argsort(-row, kind="stable")[:top]
        ref_steps.append((int(order[0]), {int(t): float(row[t]) for t in order}))
        our_steps.append((got["tokens"][i],
                          {int(e["id"]): float(e["logprob"]) for e in got["top_logprobs"][i]}))
    return ref_steps, our_steps
