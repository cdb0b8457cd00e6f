"""Quantized files made by llama.cpp's own llama-quantize (built from the
llama-cpp-python sdist by bench/llamacpp.sh, which scripts/test.sh runs).

find_quantize() is its path (SS_LLAMA_QUANTIZE, else the build cache), or None;
quantize(bin, src, dst, type) runs it and returns (ok, message)."""
import os
import subprocess


def cache_dir():
    return os.environ.get("SS_CACHE") or os.path.join(os.path.expanduser("~"), ".cache",
                                                      "shardserve")


def find_quantize():
    env = os.environ.get("SS_LLAMA_QUANTIZE")
    if env:
        return env if os.access(env, os.X_OK) else None
    for variant in ("native", "avx2"):
        p = os.path.join(cache_dir(), "llamacpp", f"build-{variant}", "bin", "llama-quantize")
        if os.access(p, os.X_OK):
            return p
    return None


def quantize(binary, src, dst, qtype, requantize=False, threads=2):
    cmd = [binary] + (["--allow-requantize"] if requantize else []) + [src, dst, qtype,
                                                                       str(threads)]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    if p.returncode != 0:
        return False, f"{' '.join(cmd)} exited {p.returncode}: {p.stderr[-1500:]}"
    return True, ""
