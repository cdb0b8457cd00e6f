/* Loading a model: the GGUF paths (hyper-parameters and tensors from the
 * file's metadata, as llama.cpp writes them: arch llama, dense or with
 * Mixtral-style experts; arch grok, Grok-1 and Grok-2), dispatch to Hugging
 * Face folders (model_hf.c), and freeing.  Sharding is in
 * model_shard.c, the forward pass in model_forward.c. */
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "comm/comm.h"
#include "runtime/base/status.h"
#include "runtime/formats/safetensors.h"
#include "runtime/model/model_internal.h"

const char *ss_model_family_name(ss_model_family f) {
  switch (f) {
  case SS_FAMILY_LLAMA: return "llama";
  case SS_FAMILY_MIXTRAL: return "mixtral";
  case SS_FAMILY_GROK1: return "grok-1";
  case SS_FAMILY_GROK2: return "grok-2";
  }
  return "unknown";
}

/* ------------------------------------------------------------------------ */
/* Hyper-parameters                                                           */

static const char *const k_supported_arch[] = {"llama", "grok"};

static int get_hparam(const ss_gguf *g, const char *arch, const char *suffix, bool required,
                      int64_t lo, int64_t hi, int *out) {
  char key[128];
  snprintf(key, sizeof key, "%s.%s", arch, suffix);
  int64_t v;
  int rc = ss_gguf_get_int(g, key, required, lo, hi, &v);
  if (rc == SS_OK) *out = (int)v;
  return rc < 0 ? rc : SS_OK;
}

static int get_fparam(const ss_gguf *g, const char *arch, const char *suffix, bool required,
                      double lo, double hi, float *out) {
  char key[128];
  snprintf(key, sizeof key, "%s.%s", arch, suffix);
  double v;
  int rc = ss_gguf_get_float(g, key, required, &v);
  if (rc < 0) return rc;
  if (rc == SS_OK) {
    if (!(v >= lo && v <= hi))
      return ss_error(SS_ERR_FORMAT, "%s: metadata key '%s' = %g is outside the allowed range "
                      "[%g, %g]", g->path, key, v, lo, hi);
    *out = (float)v;
  }
  return SS_OK;
}

/* Grok as llama.cpp's converter writes it (its conversion/grok.py, arch
 * grok): experts stacked as for Mixtral, expert_feed_forward_length when the
 * expert width differs from feed_forward_length (Grok-2), Q/K rows in the
 * checkpoint's rotate-half order (not permuted: llama.cpp runs grok with NEOX
 * RoPE), and the Grok constants as keys.  A key the file lacks takes
 * llama.cpp's default for it (src/models/grok.cpp: Grok-1's constants, for
 * files written before the keys existed).  Where those differ from our
 * Hugging Face defaults the file's writer wins: the router soft cap is 30
 * for Grok-1 too (config.json without router_logit_softcapping: none), and
 * YaRN's beta_fast is 8 (sglang's 32).  The routing and the rest of the
 * block are the Hugging Face grok families' (runtime/model/model.h): top-k
 * probabilities not renormalised, as in xai-org/grok-1 and sglang; a dense
 * MLP in the file (Grok-2) is added to the experts' output, times sqrt(2)/2. */
static int read_grok_config(const ss_gguf *g, ss_model_config *c) {
  const char *a = c->arch;
  int rc;
  c->act = SS_ACT_GELU_TANH; /* llama.cpp's LLM_FFN_GELU: ggml_gelu, the tanh form */
  c->post_norms = true;
  c->moe_renormalize = false;
  if ((rc = get_hparam(g, a, "expert_count", true, 1, 1024, &c->n_expert)) ||
      (rc = get_hparam(g, a, "expert_used_count", true, 1, c->n_expert, &c->n_expert_used)))
    return rc;
  c->expert_ffn_dim = c->ffn_dim;
  if ((rc = get_hparam(g, a, "expert_feed_forward_length", false, 1, 1 << 22, &c->expert_ffn_dim)))
    return rc;
  /* Grok-2's dense MLP beside the experts (llama.cpp: ffn_{gate,up,down},
   * optional): layer 0 decides, bind_all holds every layer to it. */
  const bool dense = ss_gguf_tensor_find(g, "blk.0.ffn_up.weight") != NULL;
  c->family = dense ? SS_FAMILY_GROK2 : SS_FAMILY_GROK1;
  c->dense_mlp = c->residual_moe = dense;
  if (!dense) c->ffn_dim = 0;
  c->logit_scale = 0.5773502691896257f;  /* 1/sqrt(3): Grok-1's output_multiplier_scale */
  c->embd_scale = 78.38367176906169f;    /* Grok-1's embedding_multiplier_scale */
  c->attn_scale = 0.08838834764831845f;  /* 1/sqrt(128): Grok-1's attn_output_multiplier */
  c->attn_softcap = 30.0f;               /* 30 tanh(x/30) on the attention logits */
  c->router_softcap = 30.0f;
  c->final_softcap = 0.0f;               /* none in Grok-1 */
  if ((rc = get_fparam(g, a, "logit_scale", false, 1e-9, 1e9, &c->logit_scale)) ||
      (rc = get_fparam(g, a, "embedding_scale", false, 1e-9, 1e9, &c->embd_scale)) ||
      (rc = get_fparam(g, a, "attention.output_scale", false, 1e-9, 1e9, &c->attn_scale)) ||
      (rc = get_fparam(g, a, "attn_logit_softcapping", false, 0.0, 1e9, &c->attn_softcap)) ||
      (rc = get_fparam(g, a, "router_logit_softcapping", false, 0.0, 1e9, &c->router_softcap)) ||
      (rc = get_fparam(g, a, "final_logit_softcapping", false, 0.0, 1e9, &c->final_softcap)) ||
      (rc = get_hparam(g, a, "attention.temperature_length", false, 0, 1 << 24, &c->attn_temp_len)))
    return rc;
  if (c->attn_temp_len == 1) c->attn_temp_len = 0; /* log2(1) = 0: off, as for config.json */
  /* RoPE scaling: the converter writes Grok-2's rope_type "yarn" and
   * "original" alike as yarn, with the YaRN keys.  The frequencies are YaRN's
   * (the same interpolation as ggml's rope and sglang's); like our Hugging
   * Face path, no attention magnitude factor is applied (yarn_attn_factor). */
  char key[128];
  snprintf(key, sizeof key, "%s.rope.scaling.type", a);
  ss_gguf_str rt = {0};
  if ((rc = ss_gguf_get_str(g, key, false, &rt)) < 0) return rc;
  if (rc == SS_OK && !(rt.len == 4 && memcmp(rt.ptr, "none", 4) == 0)) {
    if (!(rt.len == 4 && memcmp(rt.ptr, "yarn", 4) == 0))
      return ss_error(SS_ERR_UNSUPPORTED, "%s: %s = '%.*s' is not supported for grok (none, "
                      "yarn)", g->path, key, (int)(rt.len < 32 ? rt.len : 32), rt.ptr);
    snprintf(c->rope_type, sizeof c->rope_type, "yarn");
    c->rope_orig_ctx = c->n_ctx_train;
    c->rope_beta_fast = 8.0f; /* llama.cpp's grok default */
    c->rope_beta_slow = 1.0f;
    c->rope_extrapolation = 1.0f;
    if ((rc = get_fparam(g, a, "rope.scaling.factor", true, 1.0, 1e6, &c->rope_factor)) ||
        (rc = get_hparam(g, a, "rope.scaling.original_context_length", false, 1, 1 << 24,
                         &c->rope_orig_ctx)) ||
        (rc = get_fparam(g, a, "rope.scaling.yarn_beta_fast", false, 1e-6, 1e6,
                         &c->rope_beta_fast)) ||
        (rc = get_fparam(g, a, "rope.scaling.yarn_beta_slow", false, 1e-6, 1e6,
                         &c->rope_beta_slow)) ||
        (rc = get_fparam(g, a, "rope.scaling.yarn_ext_factor", false, 0.0, 1.0,
                         &c->rope_extrapolation)))
      return rc;
  }
  return SS_OK;
}

static int read_config(const ss_gguf *g, ss_model_config *c) {
  ss_gguf_str arch;
  int rc = ss_gguf_get_str(g, "general.architecture", true, &arch);
  if (rc) return rc;
  bool known = false;
  for (size_t i = 0; i < sizeof k_supported_arch / sizeof *k_supported_arch; i++)
    if (arch.len == strlen(k_supported_arch[i]) &&
        memcmp(arch.ptr, k_supported_arch[i], arch.len) == 0)
      known = true;
  if (!known)
    return ss_error(SS_ERR_UNSUPPORTED, "%s: general.architecture = '%.*s' is not supported "
                    "(supported: llama, grok)", g->path, (int)(arch.len < 64 ? arch.len : 64),
                    arch.ptr);
  snprintf(c->arch, sizeof c->arch, "%.*s", (int)arch.len, arch.ptr);
  const char *a = c->arch;
  if ((rc = get_hparam(g, a, "block_count", true, 1, 4096, &c->n_layer)) ||
      (rc = get_hparam(g, a, "embedding_length", true, 1, 1 << 20, &c->dim)) ||
      (rc = get_hparam(g, a, "feed_forward_length", true, 1, 1 << 22, &c->ffn_dim)) ||
      (rc = get_hparam(g, a, "attention.head_count", true, 1, 4096, &c->n_head)) ||
      (rc = get_hparam(g, a, "context_length", true, 1, 1 << 24, &c->n_ctx_train)))
    return rc;
  c->n_kv_head = c->n_head;
  if ((rc = get_hparam(g, a, "attention.head_count_kv", false, 1, c->n_head, &c->n_kv_head)))
    return rc;
  if (c->n_head % c->n_kv_head != 0)
    return ss_error(SS_ERR_FORMAT, "%s: %s.attention.head_count = %d is not a multiple of "
                    "%s.attention.head_count_kv = %d", g->path, a, c->n_head, a, c->n_kv_head);
  if (c->dim % c->n_head != 0)
    return ss_error(SS_ERR_FORMAT, "%s: %s.embedding_length = %d is not a multiple of "
                    "%s.attention.head_count = %d", g->path, a, c->dim, a, c->n_head);
  c->head_dim = c->dim / c->n_head;
  if ((rc = get_hparam(g, a, "attention.key_length", false, 2, 4096, &c->head_dim))) return rc;
  c->rope_dim = c->head_dim;
  if ((rc = get_hparam(g, a, "rope.dimension_count", false, 2, c->head_dim, &c->rope_dim)))
    return rc;
  if (c->rope_dim % 2 != 0 || c->rope_dim > 1024)
    return ss_error(SS_ERR_FORMAT, "%s: %s.rope.dimension_count = %d must be even and at most "
                    "1024", g->path, a, c->rope_dim);
  c->rope_theta = 10000.0f;
  if ((rc = get_fparam(g, a, "rope.freq_base", false, 1.0, 1e12, &c->rope_theta))) return rc;
  c->rms_eps = 1e-5f;
  if ((rc = get_fparam(g, a, "attention.layer_norm_rms_epsilon", false, 1e-12, 1.0, &c->rms_eps)))
    return rc;
  const bool grok = strcmp(a, "grok") == 0;
  /* GGUF llama: Q/K rows permuted for adjacent-pair rotation; grok: not. */
  c->rope_mode = grok ? SS_ROPE_NEOX : SS_ROPE_NORM;
  c->family = SS_FAMILY_LLAMA;
  c->act = SS_ACT_SILU;
  c->dense_mlp = true;
  c->embd_scale = c->logit_scale = 1.0f;
  if (grok) return read_grok_config(g, c);
  /* Mixtral as llama.cpp converts it: arch llama with expert_count experts of
   * width feed_forward_length, routed as the Hugging Face mixtral family is
   * (softmax over all experts, top expert_used_count, renormalised).  An
   * expert_count of 0, as some converters write for dense models, is dense. */
  int n_expert = 0;
  if ((rc = get_hparam(g, a, "expert_count", false, 0, 1024, &n_expert))) return rc;
  if (n_expert > 0) {
    c->family = SS_FAMILY_MIXTRAL;
    c->dense_mlp = false;
    c->n_expert = n_expert;
    c->expert_ffn_dim = c->ffn_dim;
    c->ffn_dim = 0;
    c->moe_renormalize = true;
    if ((rc = get_hparam(g, a, "expert_used_count", true, 1, n_expert, &c->n_expert_used)))
      return rc;
  }
  return SS_OK;
}

/* ------------------------------------------------------------------------ */
/* Tensors                                                                    */

/* Checks our kernels handle t's type with rows of `cols` elements; fills
 * *row_nbytes. */
static int check_type(const ss_gguf *g, const ss_gguf_tensor *t, int64_t cols,
                      size_t *row_nbytes) {
  const ss_dtype_info *ti = ss_dtype_get(t->type);
  if (!ti->compute)
    return ss_error(SS_ERR_UNSUPPORTED, "%s: tensor '%s' has type %s, which has no kernel "
                    "(supported: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, "
                    "Q4_K, Q5_K, Q6_K, Q8_K)", g->path, t->name, ti->name);
  if (cols % ti->block_count != 0)
    return ss_error(SS_ERR_FORMAT, "%s: tensor '%s' (%s) has rows of %" PRId64 " elements, not a "
                    "multiple of the type's block of %u", g->path, t->name, ti->name, cols,
                    ti->block_count);
  *row_nbytes = (size_t)(cols / ti->block_count) * ti->block_nbytes;
  return SS_OK;
}

/* Finds `name`, checks its shape is (rows, cols) in GGUF order [cols, rows] and
 * that our kernels handle its type, and fills w. */
static int bind_weight(ss_model *m, const char *name, int64_t rows, int64_t cols, ss_weight *w) {
  const ss_gguf *g = m->gguf;
  const ss_gguf_tensor *t = ss_gguf_tensor_find(g, name);
  if (!t) return ss_error(SS_ERR_FORMAT, "%s: missing tensor '%s'", g->path, name);
  if (t->n_dims > 2 || t->ne[0] != cols || t->ne[1] != rows)
    return ss_error(SS_ERR_FORMAT, "%s: tensor '%s' has shape [%" PRId64 ", %" PRId64 ", %" PRId64
                    ", %" PRId64 "], expected [%" PRId64 ", %" PRId64 "]", g->path, name,
                    t->ne[0], t->ne[1], t->ne[2], t->ne[3], cols, rows);
  size_t row_nbytes = 0;
  int rc = check_type(g, t, cols, &row_nbytes);
  if (rc) return rc;
  w->type = t->type;
  w->rows = rows;
  w->cols = cols;
  w->row_nbytes = row_nbytes;
  w->data = t->data;
  m->weight_nbytes += t->nbytes;
  return SS_OK;
}

static int bind_norm(ss_model *m, const char *name, int64_t dim, const float **out) {
  const ss_gguf *g = m->gguf;
  const ss_gguf_tensor *t = ss_gguf_tensor_find(g, name);
  if (!t) return ss_error(SS_ERR_FORMAT, "%s: missing tensor '%s'", g->path, name);
  if (t->n_dims != 1 || t->ne[0] != dim)
    return ss_error(SS_ERR_FORMAT, "%s: tensor '%s' has %u dims [%" PRId64 ", ...], expected [%"
                    PRId64 "]", g->path, name, t->n_dims, t->ne[0], dim);
  if (t->type != SS_DTYPE_F32)
    return ss_error(SS_ERR_UNSUPPORTED, "%s: tensor '%s' has type %s, norm weights must be F32",
                    g->path, name, ss_dtype_name(t->type));
  *out = t->data;
  m->weight_nbytes += t->nbytes;
  return SS_OK;
}

/* llama.cpp's stacked experts: `name` of ne [cols, rows, E], expert e's
 * (rows, cols) matrix the e-th block of rows * row_nbytes bytes.  Each w[e] is
 * a view into the tensor in its stored type. */
static int bind_expert_stack(ss_model *m, const ss_gguf_tensor *t, int64_t E, int64_t rows,
                             int64_t cols, ss_weight *w) {
  const ss_gguf *g = m->gguf;
  if (t->n_dims != 3 || t->ne[0] != cols || t->ne[1] != rows || t->ne[2] != E)
    return ss_error(SS_ERR_FORMAT, "%s: tensor '%s' has %u dims [%" PRId64 ", %" PRId64 ", %"
                    PRId64 "], expected [%" PRId64 ", %" PRId64 ", %" PRId64 "] (the last is "
                    "%s.expert_count)", g->path, t->name, t->n_dims, t->ne[0], t->ne[1],
                    t->ne[2], cols, rows, E, m->cfg.arch);
  size_t row_nbytes = 0;
  int rc = check_type(g, t, cols, &row_nbytes);
  if (rc) return rc;
  /* Every expert's bytes within the tensor's, in 64 bits (the reader has
   * checked the tensor lies within the file). */
  const uint64_t one = (uint64_t)rows * row_nbytes;
  if (one == 0 || (uint64_t)E > t->nbytes / one || one * (uint64_t)E != t->nbytes)
    return ss_error(SS_ERR_FORMAT, "%s: tensor '%s' holds %" PRIu64 " bytes, not %" PRId64
                    " experts of %" PRIu64, g->path, t->name, t->nbytes, E, one);
  for (int64_t e = 0; e < E; e++)
    w[e] = (ss_weight){.type = t->type, .rows = rows, .cols = cols, .row_nbytes = row_nbytes,
                       .data = (const uint8_t *)t->data + (uint64_t)e * one};
  m->weight_nbytes += t->nbytes;
  return SS_OK;
}

/* Layer l's router and experts: the stacked blk.N.ffn_{gate,up,down}_exps, or
 * the older layout of one matrix per expert, blk.N.ffn_{gate,up,down}.E. */
static int bind_experts(ss_model *m, int l) {
  const ss_model_config *c = &m->cfg;
  ss_layer_weights *L = &m->layers[l];
  const int64_t C = c->dim, Fe = c->expert_ffn_dim, E = c->n_expert;
  char n[96];
  int rc;
  snprintf(n, sizeof n, "blk.%d.ffn_gate_inp.weight", l);
  if ((rc = bind_weight(m, n, E, C, &L->router))) return rc;
  static const char *const part[3] = {"gate", "up", "down"};
  ss_weight *const dst[3] = {L->exp_gate, L->exp_up, L->exp_down};
  for (int k = 0; k < 3; k++) {
    const int64_t rows = k == 2 ? C : Fe, cols = k == 2 ? Fe : C;
    snprintf(n, sizeof n, "blk.%d.ffn_%s_exps.weight", l, part[k]);
    const ss_gguf_tensor *t = ss_gguf_tensor_find(m->gguf, n);
    if (t) {
      if ((rc = bind_expert_stack(m, t, E, rows, cols, dst[k]))) return rc;
      continue;
    }
    snprintf(n, sizeof n, "blk.%d.ffn_%s.0.weight", l, part[k]);
    if (!ss_gguf_tensor_find(m->gguf, n))
      return ss_error(SS_ERR_FORMAT, "%s: missing tensor 'blk.%d.ffn_%s_exps.weight' (or the "
                      "per-expert '%s')", m->gguf->path, l, part[k], n);
    for (int64_t e = 0; e < E; e++) {
      snprintf(n, sizeof n, "blk.%d.ffn_%s.%" PRId64 ".weight", l, part[k], e);
      if ((rc = bind_weight(m, n, rows, cols, &dst[k][e]))) return rc;
    }
  }
  return SS_OK;
}

/* Layer l's Q, K and V: attn_{q,k,v}, or one fused attn_qkv of ne [C, Q + 2 KV]
 * (rows Q, then K, then V), bound as three views of its rows. */
static int bind_qkv(ss_model *m, int l, int64_t q_dim, int64_t kv_dim) {
  const ss_model_config *c = &m->cfg;
  ss_layer_weights *L = &m->layers[l];
  char n[96];
  snprintf(n, sizeof n, "blk.%d.attn_qkv.weight", l);
  const ss_gguf_tensor *t = ss_gguf_tensor_find(m->gguf, n);
  snprintf(n, sizeof n, "blk.%d.attn_q.weight", l);
  if (!t || ss_gguf_tensor_find(m->gguf, n)) {
    int rc;
    if ((rc = bind_weight(m, n, q_dim, c->dim, &L->wq))) return rc;
    snprintf(n, sizeof n, "blk.%d.attn_k.weight", l);
    if ((rc = bind_weight(m, n, kv_dim, c->dim, &L->wk))) return rc;
    snprintf(n, sizeof n, "blk.%d.attn_v.weight", l);
    return bind_weight(m, n, kv_dim, c->dim, &L->wv);
  }
  ss_weight all = {0}; /* bind_weight sets the fields a GGUF weight has, no row_scale */
  int rc = bind_weight(m, t->name, q_dim + 2 * kv_dim, c->dim, &all);
  if (rc) return rc;
  const uint8_t *p = all.data;
  L->wq = L->wk = L->wv = all;
  L->wq.rows = q_dim;
  L->wk.rows = L->wv.rows = kv_dim;
  L->wk.data = p + (uint64_t)q_dim * all.row_nbytes;
  L->wv.data = p + (uint64_t)(q_dim + kv_dim) * all.row_nbytes;
  return SS_OK;
}

/* Grok's layer beyond attention (read_grok_config): the four norms, the
 * experts, and Grok-2's dense MLP. */
static int bind_grok_layer(ss_model *m, int l) {
  const ss_model_config *c = &m->cfg;
  ss_layer_weights *L = &m->layers[l];
  char n[96], alt[96];
  int rc;
#define NAME(s) (snprintf(n, sizeof n, "blk.%d." s, l), n)
  if ((rc = bind_norm(m, NAME("attn_output_norm.weight"), c->dim, &L->post_attn_norm)) ||
      (rc = bind_norm(m, NAME("ffn_norm.weight"), c->dim, &L->ffn_norm)))
    return rc;
  /* The norm after the MoE: layer_output_norm, or post_ffw_norm as the
   * converter maps post_moe_norm. */
  snprintf(alt, sizeof alt, "blk.%d.post_ffw_norm.weight", l);
  if (!ss_gguf_tensor_find(m->gguf, NAME("layer_output_norm.weight")) &&
      !ss_gguf_tensor_find(m->gguf, alt))
    return ss_error(SS_ERR_FORMAT, "%s: missing tensor '%s' (or '%s')", m->gguf->path, n, alt);
  if ((rc = bind_norm(m, ss_gguf_tensor_find(m->gguf, n) ? n : alt, c->dim, &L->post_ffn_norm)) ||
      (rc = bind_experts(m, l)))
    return rc;
  if (c->dense_mlp) {
    if ((rc = bind_weight(m, NAME("ffn_gate.weight"), c->ffn_dim, c->dim, &L->w_gate)) ||
        (rc = bind_weight(m, NAME("ffn_up.weight"), c->ffn_dim, c->dim, &L->w_up)) ||
        (rc = bind_weight(m, NAME("ffn_down.weight"), c->dim, c->ffn_dim, &L->w_down)))
      return rc;
  } else if (ss_gguf_tensor_find(m->gguf, NAME("ffn_up.weight"))) {
    return ss_error(SS_ERR_FORMAT, "%s: tensor '%s' is a dense MLP, but layer 0 has none (grok: "
                    "every layer or none)", m->gguf->path, n);
  }
#undef NAME
  return SS_OK;
}

static int bind_all(ss_model *m) {
  const ss_model_config *c = &m->cfg;
  const int64_t q_dim = (int64_t)c->n_head * c->head_dim;
  const int64_t kv_dim = (int64_t)c->n_kv_head * c->head_dim;
  int rc;
  if ((rc = bind_weight(m, "token_embd.weight", c->vocab, c->dim, &m->tok_embd))) return rc;
  if ((rc = bind_norm(m, "output_norm.weight", c->dim, &m->output_norm))) return rc;
  if (ss_gguf_tensor_find(m->gguf, "output.weight")) {
    if ((rc = bind_weight(m, "output.weight", c->vocab, c->dim, &m->output))) return rc;
  } else {
    m->cfg.tied_output = true;
    m->output = m->tok_embd;
  }
  if ((rc = ss_model_alloc_layers(m))) return rc;
  for (int l = 0; l < c->n_layer; l++) {
    ss_layer_weights *L = &m->layers[l];
    char n[96];
#define NAME(s) (snprintf(n, sizeof n, "blk.%d." s, l), n)
    if ((rc = bind_norm(m, NAME("attn_norm.weight"), c->dim, &L->attn_norm)) ||
        (rc = bind_qkv(m, l, q_dim, kv_dim)) ||
        (rc = bind_weight(m, NAME("attn_output.weight"), c->dim, q_dim, &L->wo)))
      return rc;
    if (c->post_norms) {
      if ((rc = bind_grok_layer(m, l))) return rc;
      continue;
    }
    if ((rc = bind_norm(m, NAME("ffn_norm.weight"), c->dim, &L->ffn_norm))) return rc;
    if (c->n_expert > 0) {
      if ((rc = bind_experts(m, l))) return rc;
    } else if ((rc = bind_weight(m, NAME("ffn_gate.weight"), c->ffn_dim, c->dim, &L->w_gate)) ||
               (rc = bind_weight(m, NAME("ffn_up.weight"), c->ffn_dim, c->dim, &L->w_up)) ||
               (rc = bind_weight(m, NAME("ffn_down.weight"), c->dim, c->ffn_dim, &L->w_down))) {
      return rc;
    }
#undef NAME
  }
  return SS_OK;
}

/* GGUF: config, tokenizer, the whole model's tensors. */
static int load_gguf(ss_model *m, const char *path) {
  int rc = ss_gguf_open(path, &m->gguf);
  if (rc) return rc;
  if ((rc = read_config(m->gguf, &m->cfg))) return rc;
  if ((rc = ss_model_rope_freqs(&m->cfg, &m->rope_inv_freq))) return rc;
  if ((rc = ss_tokenizer_load(m->gguf, &m->tok))) return rc;
  m->cfg.vocab = ss_tokenizer_n_vocab(m->tok);
  char key[128];
  int64_t v;
  snprintf(key, sizeof key, "%s.vocab_size", m->cfg.arch);
  rc = ss_gguf_get_int(m->gguf, key, false, 1, INT32_MAX, &v);
  if (rc < 0) return rc;
  if (rc == SS_OK && v != m->cfg.vocab)
    return ss_error(SS_ERR_FORMAT, "%s: %s = %" PRId64 " but tokenizer.ggml.tokens has %d entries",
                    path, key, v, m->cfg.vocab);
  if ((rc = bind_all(m))) return rc;
  ss_gguf_str tmpl;
  if (ss_gguf_get_str(m->gguf, "tokenizer.chat_template", false, &tmpl) == SS_OK) {
    m->chat_template = malloc(tmpl.len + 1);
    if (!m->chat_template) return ss_error(SS_ERR_NOMEM, "out of memory");
    memcpy(m->chat_template, tmpl.ptr, tmpl.len);
    m->chat_template[tmpl.len] = 0;
  }
  return SS_OK;
}

int ss_model_load(const char *path, const ss_model_load_opts *opts, ss_model **out) {
  *out = NULL;
  ss_model_load_opts defaults = {0};
  if (!opts) opts = &defaults;
  ss_model *m = calloc(1, sizeof *m);
  if (!m) return ss_error(SS_ERR_NOMEM, "out of memory");
  m->path = strdup(path);
  m->prof = calloc(1, sizeof *m->prof);
  int rc = m->path && m->prof ? SS_OK : ss_error(SS_ERR_NOMEM, "out of memory");
  if (rc == SS_OK) rc = ss_model_path_is_hf(path) ? ss_model_load_hf(m, path) : load_gguf(m, path);
  if (rc == SS_OK) rc = ss_model_shard(m, opts);
  if (rc) {
    ss_model_free(m);
    return rc;
  }
  if (opts->prefault) ss_model_prefault(m, opts);
  *out = m;
  return SS_OK;
}

void ss_model_free(ss_model *m) {
  if (!m) return;
  if (m->layers && m->cfg.n_expert > 0) {
    /* One allocation holds every layer's three expert arrays. */
    free(m->layers[0].exp_gate);
  }
  /* The device copies of the weights (ss_model_upload). */
  for (int i = 0; i < m->n_dev_bufs; i++) m->dev_be->dealloc(m->dev_be, m->dev_bufs[i]);
  free(m->dev_bufs);
  free(m->layers);
  free(m->path);
  free(m->rope_inv_freq);
  ss_st_close(m->st);
  free(m->chat_template);
  free(m->stop_ids);
  for (int i = 0; i < m->n_owned; i++) free(m->owned[i]);
  free(m->owned);
  free(m->prof);
  ss_shard_plan_free(&m->plan);
  ss_tokenizer_free(m->tok);
  ss_gguf_close(m->gguf);
  free(m);
}

bool ss_model_is_eog(const ss_model *m, int32_t id) {
  for (int i = 0; i < m->n_stop_ids; i++)
    if (m->stop_ids[i] == id) return true;
  return m->tok && ss_tokenizer_is_eog(m->tok, id);
}

int ss_model_kv_init(const ss_model *m, ss_backend *be, int32_t block_size, int32_t n_blocks,
                     ss_dtype dtype, ss_kv_cache *kv) {
  /* A pipeline stage holds its own layers' K and V only. */
  return ss_kv_cache_init(kv, be, m->local.layer_end - m->local.layer_begin, m->local.n_kv_head,
                          m->cfg.head_dim, block_size, n_blocks, dtype);
}

