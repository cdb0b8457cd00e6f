"""The published Hugging Face checkpoint layouts, by their real parameter and
config.json names, against the float64 reference (tests/reference/hf_ref.py)
at TP 1, 2 and 3 and, for the mixtures of experts, EP 2 and 3.

The tiny checkpoints are written here, name by name, from the public modeling
code (not by make_tiny_hf.py or `shardserve synth`):

  grok-1   hpcai-tech/grok-1 (modeling_grok1.py, configuration_grok1.py):
           Grok1ModelForCausalLM, model_type grok-1; model.embed_tokens,
           layers.N.attn.{q,k,v,o}_proj, layers.N.{pre,post}_{attn,moe}_norm.scale,
           layers.N.moe_block.gate, moe_block.experts.E.{linear,linear_v,linear_1},
           model.norm.scale, no lm_head (tie_word_embeddings); keys num_experts,
           attn_output_multiplier, max_attn_value, embedding_multiplier_scale,
           output_multiplier_scale.  8 experts top-2 (EP 3: 3 + 3 + 2).
  grok-2   xai-org/grok-2 as sglang's grok.py reads it: Grok1ForCausalLM;
           layers.N.self_attn.*, block_sparse_moe.gate + experts.E.{w1,w3,w2},
           the residual_moe dense mlp.{gate,up,down}_proj, {pre,post}_*_norm.weight,
           lm_head; keys num_local_experts, moe_intermediate_size,
           router_logit_softcapping, attn_logit_softcapping,
           final_logit_softcapping, attn_temperature_len, rope_type yarn with
           scaling_factor / original_max_position_embeddings / beta_fast /
           beta_slow, rope_rotate_half_dims.  6 experts top-2 (EP 3: 2 + 2 + 2).
           (Grok-2 ships a tiktoken tokenizer.tok.json; that loader is tested by
           tests/test_tiktoken.py, so this folder carries a tokenizer.json.)
  llama    Hub-style LlamaForCausalLM with tie_word_embeddings (no lm_head)
           and generation_config.json listing two eos_token_id values.
  mixtral  MixtralForCausalLM: block_sparse_moe.experts.E.w1/w2/w3,
           num_local_experts 8, generation_config.json with one int eos id.

All carry a small byte-level BPE tokenizer.json (GPT-2's byte alphabet, no
merges; the SentencePiece path is tested by test_hf_models.py).  Each layout
runs 16 greedy steps per degree: the ids must equal the reference's and every
id of the reference's top 10 has a log-probability within 1e-4 (the tolerance
of test_hf_models.py: f32 activations against float64).  The EOS ids listed
in generation_config.json must end generation: one is chosen as a token the
reference generates, and generation without --ignore-eos must stop right there.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "lib"))
sys.path.insert(0, os.path.join(HERE, "reference"))
from harness import Checker, parse_args, SANITIZER_MARKS  # noqa: E402
from logprob_compare import compare_steps  # noqa: E402
from mpi import launch_cmd, mpi_available, mpi_env  # noqa: E402
import hf_ref  # noqa: E402
from st_io import write_safetensors, f32_to_bf16_bits  # noqa: E402

ATOL = 1e-4
STEPS, TOP = 16, 10
C, HEADS, KV_HEADS, HEAD_DIM, LAYERS = 48, 6, 2, 8, 2
VOCAB = 264  # 256 bytes + 2 control tokens in the tokenizer, 6 unused rows

args = parse_args()
ck = Checker("hf layouts")
if not ck.check(mpi_available(), "mpirun not found (scripts/setup.sh installs Open MPI)"):
    ck.finish()
tmp = tempfile.mkdtemp(prefix="ss-layouts-")
# Under the sanitizer build, LeakSanitizer reports what Open MPI keeps past
# MPI_Finalize: its libraries are suppressed (tests/lsan.supp), which needs the
# slow unwinder to see their frames (Open MPI is built without frame pointers).
ENV = mpi_env()
ENV["ASAN_OPTIONS"] = ":".join(x for x in (ENV.get("ASAN_OPTIONS", ""), "fast_unwind_on_malloc=0") if x)
ENV.setdefault("LSAN_OPTIONS", f"suppressions={os.path.join(HERE, 'lsan.supp')}:print_suppressions=0")


# --------------------------------------------------------------------------
# Writing the folders
# --------------------------------------------------------------------------

def byte_alphabet():
    """GPT-2's byte -> printable character table (its bytes_to_unicode)."""
    keep = list(range(0x21, 0x7F)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    out, extra = {}, 0
    for b in range(256):
        if b in keep:
            out[b] = chr(b)
        else:
            out[b] = chr(256 + extra)
            extra += 1
    return out


def write_tokenizer(d):
    alpha = byte_alphabet()
    vocab = {alpha[b]: b for b in range(256)}
    specials = ["<|endoftext|>", "<|eot|>"]
    added = []
    for i, t in enumerate(specials):
        vocab[t] = 256 + i
        added.append({"id": 256 + i, "content": t, "single_word": False, "lstrip": False,
                      "rstrip": False, "normalized": False, "special": True})
    tj = {"version": "1.0", "added_tokens": added, "normalizer": None,
          "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                            "use_regex": True},
          "post_processor": None, "decoder": {"type": "ByteLevel"},
          "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "",
                    "end_of_word_suffix": "", "fuse_unk": False, "byte_fallback": False,
                    "vocab": vocab, "merges": []}}
    with open(os.path.join(d, "tokenizer.json"), "w", encoding="utf-8") as fp:
        json.dump(tj, fp, ensure_ascii=False)
    with open(os.path.join(d, "tokenizer_config.json"), "w") as fp:
        json.dump({"bos_token": None, "eos_token": "<|endoftext|>", "add_bos_token": False}, fp)


class Writer:
    def __init__(self, seed):
        self.rng = np.random.default_rng(seed)
        self.T = {}

    def mat(self, name, rows, cols, std=None):
        self.T[name] = (self.rng.standard_normal((rows, cols)) * (std or 1 / np.sqrt(cols))).astype(np.float32)

    def vec(self, name, mul=1.0):
        self.T[name] = ((1 + 0.1 * self.rng.standard_normal(C)) * mul).astype(np.float32)

    def save(self, d, cfg, dtype):
        os.makedirs(d, exist_ok=True)
        write_tokenizer(d)
        with open(os.path.join(d, "config.json"), "w") as fp:
            json.dump(cfg, fp, indent=1)
        enc = {n: ("F32", a) if dtype == "f32" else ("BF16", f32_to_bf16_bits(a))
               for n, a in sorted(self.T.items())}
        write_safetensors(os.path.join(d, "model.safetensors"), enc, metadata={"format": "pt"})


def attention(w, p, out_mul=1.0):
    w.mat(p + "q_proj.weight", HEADS * HEAD_DIM, C, std=1.5 / np.sqrt(C))
    w.mat(p + "k_proj.weight", KV_HEADS * HEAD_DIM, C, std=1.5 / np.sqrt(C))
    w.mat(p + "v_proj.weight", KV_HEADS * HEAD_DIM, C)
    w.mat(p + "o_proj.weight", C, HEADS * HEAD_DIM, std=out_mul / np.sqrt(HEADS * HEAD_DIM))


def common_cfg(**kw):
    cfg = {"hidden_size": C, "num_hidden_layers": LAYERS, "num_attention_heads": HEADS,
           "num_key_value_heads": KV_HEADS, "vocab_size": VOCAB, "max_position_embeddings": 256,
           "rms_norm_eps": 1e-5, "bos_token_id": None, "eos_token_id": 256}
    cfg.update(kw)
    return cfg


def make_grok1(d):
    """hpcai-tech/grok-1: names from modeling_grok1.py, keys from configuration_grok1.py."""
    E, Fe = 8, 24
    w = Writer(101)
    # The head is the embedding (tied): rows std 0.05 are ~4 once multiplied by
    # embedding_multiplier_scale; a final norm of ~20 gives logits of std ~4.
    w.mat("model.embed_tokens.weight", VOCAB, C, std=0.05)
    w.vec("model.norm.scale", mul=20.0)
    for l in range(LAYERS):
        p = f"model.layers.{l}."
        attention(w, p + "attn.")
        for n in ("pre_attn_norm", "pre_moe_norm"):
            w.vec(p + n + ".scale")
        for n in ("post_attn_norm", "post_moe_norm"):
            w.vec(p + n + ".scale", mul=4.0)
        w.mat(p + "moe_block.gate.weight", E, C, std=1.5 / np.sqrt(C))
        for e in range(E):
            q = f"{p}moe_block.experts.{e}."
            w.mat(q + "linear.weight", Fe, C)
            w.mat(q + "linear_v.weight", Fe, C)
            w.mat(q + "linear_1.weight", C, Fe)
    cfg = common_cfg(architectures=["Grok1ModelForCausalLM"], model_type="grok-1",
                     auto_map={"AutoConfig": "configuration_grok1.Grok1Config",
                               "AutoModelForCausalLM": "modeling_grok1.Grok1ModelForCausalLM"},
                     intermediate_size=Fe, num_experts=E, num_experts_per_tok=2,
                     attn_output_multiplier=0.08838834764831845, max_attn_value=30.0,
                     embedding_multiplier_scale=78.38367176906169,
                     output_multiplier_scale=0.5773502691896257, tie_word_embeddings=True,
                     output_router_logits=False, router_aux_loss_coef=0.001, torch_dtype="bfloat16")
    w.save(d, cfg, "bf16")


def make_grok2(d):
    """xai-org/grok-2 as sglang's grok.py loads it."""
    E, Fe, F = 6, 24, 36
    w = Writer(102)
    w.mat("model.embed_tokens.weight", VOCAB, C, std=1 / 90.50966799187809)
    w.vec("model.norm.weight")
    w.mat("lm_head.weight", VOCAB, C, std=1.0)
    for l in range(LAYERS):
        p = f"model.layers.{l}."
        attention(w, p + "self_attn.")
        for n in ("pre_attn_norm", "post_attn_norm", "pre_moe_norm", "post_moe_norm"):
            w.vec(p + n + ".weight")
        w.mat(p + "mlp.gate_proj.weight", F, C)
        w.mat(p + "mlp.up_proj.weight", F, C)
        w.mat(p + "mlp.down_proj.weight", C, F)
        w.mat(p + "block_sparse_moe.gate.weight", E, C, std=3 / np.sqrt(C))
        for e in range(E):
            q = f"{p}block_sparse_moe.experts.{e}."
            w.mat(q + "w1.weight", Fe, C)
            w.mat(q + "w3.weight", Fe, C)
            w.mat(q + "w2.weight", C, Fe)
    # Grok-2's keys; the caps, the temperature length and the RoPE scaling are
    # shrunk so that 22 positions of tiny logits exercise every one of them.
    cfg = common_cfg(architectures=["Grok1ForCausalLM"], model_type="git", head_dim=HEAD_DIM,
                     residual_moe=True, intermediate_size=F, moe_intermediate_size=Fe,
                     num_local_experts=E, num_experts_per_tok=2, rope_theta=10000.0,
                     embedding_multiplier_scale=90.50966799187809, output_multiplier_scale=0.5,
                     attn_logit_softcapping=4.0, router_logit_softcapping=2.0,
                     final_logit_softcapping=5.0, attn_temperature_len=4, rope_type="yarn",
                     scaling_factor=4.0, original_max_position_embeddings=16, beta_fast=8,
                     beta_slow=1, extrapolation_factor=1.0, attn_factor=1.0,
                     rope_rotate_half_dims=True, torch_dtype="bfloat16")
    w.save(d, cfg, "bf16")


def make_llama(d):
    """A Hub-style Llama: tied embeddings, generation_config.json written later."""
    F = 60
    w = Writer(103)
    # With the head tied, the last token's own row wins unless the sub-layers
    # outweigh it in the residual: small rows, output projections 4x.
    w.mat("model.embed_tokens.weight", VOCAB, C, std=0.3)
    w.vec("model.norm.weight", mul=3.0)
    for l in range(LAYERS):
        p = f"model.layers.{l}."
        attention(w, p + "self_attn.", out_mul=4.0)
        w.vec(p + "input_layernorm.weight")
        w.vec(p + "post_attention_layernorm.weight")
        w.mat(p + "mlp.gate_proj.weight", F, C)
        w.mat(p + "mlp.up_proj.weight", F, C)
        w.mat(p + "mlp.down_proj.weight", C, F, std=4.0 / np.sqrt(F))
    cfg = common_cfg(architectures=["LlamaForCausalLM"], model_type="llama", head_dim=HEAD_DIM,
                     intermediate_size=F, hidden_act="silu", rope_theta=500000.0,
                     tie_word_embeddings=True, attention_bias=False, mlp_bias=False,
                     torch_dtype="float32")
    w.save(d, cfg, "f32")


def make_mixtral(d):
    E, Fe = 8, 24
    w = Writer(104)
    w.mat("model.embed_tokens.weight", VOCAB, C, std=1.0)
    w.vec("model.norm.weight")
    w.mat("lm_head.weight", VOCAB, C, std=0.5)
    for l in range(LAYERS):
        p = f"model.layers.{l}."
        attention(w, p + "self_attn.")
        w.vec(p + "input_layernorm.weight")
        w.vec(p + "post_attention_layernorm.weight")
        w.mat(p + "block_sparse_moe.gate.weight", E, C, std=1.5 / np.sqrt(C))
        for e in range(E):
            q = f"{p}block_sparse_moe.experts.{e}."
            w.mat(q + "w1.weight", Fe, C)
            w.mat(q + "w3.weight", Fe, C)
            w.mat(q + "w2.weight", C, Fe)
    cfg = common_cfg(architectures=["MixtralForCausalLM"], model_type="mixtral",
                     intermediate_size=Fe, num_local_experts=E, num_experts_per_tok=2,
                     hidden_act="silu", rope_theta=1e6, tie_word_embeddings=False,
                     torch_dtype="float32")
    w.save(d, cfg, "f32")


# --------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------

def run(d, ranks, ep, prompt, n=STEPS, ignore_eos=True):
    """The generate --json result, or None (failure recorded)."""
    cmd = launch_cmd(args.bin, ranks, ["generate", "--model", d, "--prompt-ids", ",".join(map(str, prompt)),
                                       "-n", str(n), "--temp", "0", "--kv-cache-dtype", "f32", "--json", "--logprobs", str(TOP),
                                       "--threads", "1"]
                     + (["--ignore-eos"] if ignore_eos else []) + (["--ep", str(ranks)] if ep else []))
    try:
        p = subprocess.run(cmd, capture_output=True, timeout=300, env=ENV)
    except subprocess.TimeoutExpired:
        ck.check(False, f"timed out: {cmd}")
        return None
    err = p.stderr.decode("utf-8", "replace")
    ck.check(not any(m in err for m in SANITIZER_MARKS), f"sanitizer report: {cmd}\n{err[-3000:]}")
    if not ck.check(p.returncode == 0, f"{cmd}: exit {p.returncode}\n{err[-2000:]}"):
        return None
    return json.loads([l for l in p.stdout.decode().splitlines() if l.startswith("{")][-1])


def steps_of(j):
    return [(t, {x["id"]: x["logprob"] for x in top}) for t, top in zip(j["tokens"], j["top_logprobs"])]


def first_new(ref, start):
    """A step >= start whose greedy id appears at no earlier step or in the prompt."""
    seen = set(PROMPT)
    for i, (tid, _) in enumerate(ref):
        if i >= start and tid not in seen:
            return i, tid
        seen.add(tid)
    return None, None


PROMPT = [72, 101, 108, 108, 111, 32]
LAYOUTS = {  # name -> (writer, degrees as (ranks, expert parallel))
    "grok-1 (hpcai-tech)": (make_grok1, "grok-1", [(1, False), (2, False), (3, False), (2, True), (3, True)]),
    "grok-2 (xai-org)": (make_grok2, "grok-2", [(1, False), (2, False), (3, False), (2, True), (3, True)]),
    "llama (tied, 2 eos)": (make_llama, "llama", [(1, False), (2, False), (3, False)]),
    "mixtral": (make_mixtral, "mixtral", [(1, False), (2, False), (3, False), (2, True), (3, True)]),
}

# Under the sanitizers: every layout, at one split of each kind.
QUICK = os.environ.get("SS_SANITIZED") == "1"
if QUICK:
    print("sanitizer build (SS_SANITIZED=1): TP 1, TP 3 and EP 2 only; the release build runs "
          "every degree", flush=True)
try:
    for name, (make, family, degrees) in LAYOUTS.items():
        if QUICK:
            degrees = [dg for dg in degrees if dg in ((1, False), (3, False), (2, True))]
        d = os.path.join(tmp, family)
        make(d)
        ref_model = hf_ref.Model(d)
        ck.check(ref_model.family == family, f"{name}: the reference reads family {ref_model.family}")
        ref = hf_ref.greedy(ref_model, PROMPT, STEPS, TOP)
        for ranks, ep in degrees:
            j = run(d, ranks, ep, PROMPT)
            if j is None:
                continue
            worst, n, tie, problems = compare_steps(ref, steps_of(j), atol=ATOL)
            for p in problems[:5]:
                print(f"  {name} {'EP' if ep else 'TP'} {ranks}: {p}")
            ck.check(not problems and n == STEPS and tie is None,
                     f"{name} {'EP' if ep else 'TP'} {ranks}: {len(problems)} problems over {n} steps "
                     f"(tie at {tie})")
            print(f"{name:20s} {'EP' if ep else 'TP'} {ranks}: {n} greedy steps agree, max |dlogprob| "
                  f"{worst:.2e} (tol {ATOL:g})", flush=True)

        # End of generation from generation_config.json: a list for llama (the
        # tokenizer's own EOS first, then a token the model generates), an int
        # for mixtral.  config.json keeps its single eos_token_id 256.
        if family in ("llama", "mixtral"):
            step, tid = first_new(ref, 3)
            if not ck.check(step is not None, f"{name}: no new greedy id after step 3 to use as EOS"):
                continue
            eos = [256, tid] if family == "llama" else tid
            with open(os.path.join(d, "generation_config.json"), "w") as fp:
                json.dump({"_from_model_config": False, "bos_token_id": None, "eos_token_id": eos}, fp)
            for ranks in (1, 2):
                j = run(d, ranks, False, PROMPT, ignore_eos=False)
                if j is None:
                    continue
                want = [t for t, _ in ref[:step + 1]]
                ck.check(j["tokens"] == want and j["finish_reason"] == "stop",
                         f"{name} TP {ranks}: eos_token_id {eos}: generated {j['tokens']} "
                         f"({j['finish_reason']}), expected {want} (stop)")
                print(f"{name:20s} TP {ranks}: stops at step {step} on eos_token_id {tid} of {eos}",
                      flush=True)
            # Without it the same run goes on past that token.
            os.remove(os.path.join(d, "generation_config.json"))
            j = run(d, 1, False, PROMPT, ignore_eos=False)
            ck.check(j is not None and len(j["tokens"]) > step + 1,
                     f"{name}: without generation_config.json generation still stops at step {step}")
            # An id outside the vocabulary is a clear load error.
            with open(os.path.join(d, "generation_config.json"), "w") as fp:
                json.dump({"eos_token_id": [256, VOCAB + 5]}, fp)
            rc, out, err = ck.run(args.bin, ["generate", "--model", d, "--prompt-ids", "72", "-n", "1"])
            ck.check(rc not in (0, None) and "eos_token_id" in err and str(VOCAB) in err,
                     f"{name}: out-of-range eos_token_id: rc {rc}, {err[-500:]}")
            os.remove(os.path.join(d, "generation_config.json"))

    # A missing norm names both spellings it looked for.
    d = os.path.join(tmp, "grok-1")
    from st_io import read_safetensors  # noqa: E402
    W = read_safetensors(os.path.join(d, "model.safetensors"))
    del W["model.norm.scale"]
    write_safetensors(os.path.join(d, "model.safetensors"),
                      {n: ("F32", a.astype(np.float32)) for n, a in W.items()})
    rc, out, err = ck.run(args.bin, ["generate", "--model", d, "--prompt-ids", "72", "-n", "1"])
    ck.check(rc not in (0, None) and "model.norm.weight" in err and "model.norm.scale" in err,
             f"missing model.norm: rc {rc}, {err[-500:]}")
finally:
    shutil.rmtree(tmp, ignore_errors=True)
ck.finish()
