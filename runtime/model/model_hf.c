/* Hugging Face model folders (config.json, *.safetensors, tokenizer.json or
 * tokenizer.model) for the llama, mixtral, grok-1 and grok-2 families, and
 * weightless models described by a JSON preset (configs/models/NAME.json, which
 * hold config.json keys) for planning.
 *
 * Tensor names, by family ("model.layers.N." prefix):
 *   attention  self_attn.{q,k,v,o}_proj (grok also attn.*)
 *   norms      input_layernorm, post_attention_layernorm (llama, mixtral);
 *              pre_attn_norm, post_attn_norm, pre_moe_norm, post_moe_norm (grok)
 *              as X.weight, or X.scale (hpcai-tech/grok-1's modeling_grok1.py
 *              names its RMSNorm parameter `scale`; model.norm.scale too)
 *   dense MLP  mlp.{gate,up,down}_proj (llama; grok-2 beside the experts)
 *   experts    block_sparse_moe.gate + experts.E.{w1,w3,w2} = gate, up, down
 *              (mixtral; grok in the Mixtral-style conversions), or
 *              moe_block.gate + experts.E.{linear,linear_v,linear_1} (grok-1's
 *              published conversions)
 *   outside    model.embed_tokens, model.norm, lm_head (absent, or
 *              tie_word_embeddings: tied)
 * The end-of-generation ids are every eos_token_id (an int or a list) of
 * generation_config.json and config.json.
 * An FP8 matrix X.weight may come with X.weight_scale: one value (per tensor)
 * or one per output row (per channel).
 * A folder cut per rank ahead of time (xai-org/grok-2: *-TP-common plus
 * *-TP-NNN.safetensors) is read as whole tensors: each matrix whose pieces are
 * in the rank files is joined along the dimension their shapes say (rows for
 * q/k/v, gate/up, experts' w1/w3, embedding and head; columns for o_proj,
 * down_proj and experts' w2), and the sharder reads each rank's slice of that
 * from the pieces it overlaps, whatever our degree. */
#include <inttypes.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "runtime/base/status.h"
#include "runtime/formats/safetensors.h"
#include "runtime/model/model_internal.h"

bool ss_model_path_is_hf(const char *path) {
  struct stat st;
  return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

/* ------------------------------------------------------------------------ */
/* config.json                                                                */

typedef struct cfg_reader {
  json_t *j;
  const char *path;
  int rc;
} cfg_reader;

/* An integer key in [lo, hi]; def when absent (required: def < 0). */
static int get_i(cfg_reader *r, const char *key, int64_t def, int64_t lo, int64_t hi) {
  json_t *v = json_object_get(r->j, key);
  if (!v || json_is_null(v)) {
    if (def < 0 && r->rc == SS_OK)
      r->rc = ss_error(SS_ERR_FORMAT, "%s: missing required key '%s'", r->path, key);
    return (int)def;
  }
  if (!json_is_integer(v) || json_integer_value(v) < lo || json_integer_value(v) > hi) {
    if (r->rc == SS_OK)
      r->rc = ss_error(SS_ERR_FORMAT, "%s: '%s' must be an integer in [%" PRId64 ", %" PRId64 "]",
                       r->path, key, lo, hi);
    return (int)def;
  }
  return (int)json_integer_value(v);
}

static double get_f(cfg_reader *r, const char *key, double def) {
  json_t *v = json_object_get(r->j, key);
  if (!v || json_is_null(v)) return def;
  if (!json_is_number(v) || !isfinite(json_number_value(v))) {
    if (r->rc == SS_OK) r->rc = ss_error(SS_ERR_FORMAT, "%s: '%s' must be a number", r->path, key);
    return def;
  }
  return json_number_value(v);
}

static bool get_b(cfg_reader *r, const char *key, bool def) {
  json_t *v = json_object_get(r->j, key);
  return json_is_boolean(v) ? json_is_true(v) : def;
}

static bool name_is(const char *s, const char *const *list) {
  for (; s && *list; list++)
    if (strcmp(s, *list) == 0) return true;
  return false;
}

/* Fills c from a config.json (or preset) object. */
static int read_hf_config(json_t *j, const char *path, ss_model_config *c) {
  static const char *const llama[] = {"LlamaForCausalLM", "MistralForCausalLM", "llama", "mistral", NULL};
  static const char *const mixtral[] = {"MixtralForCausalLM", "mixtral", NULL};
  static const char *const grok[] = {"Grok1ForCausalLM", "Grok1ModelForCausalLM", "grok-1",
                                     "grok1", "grok-2", "grok2", "git", NULL};
  if (!json_is_object(j)) return ss_error(SS_ERR_FORMAT, "%s: not a JSON object", path);
  cfg_reader r = {.j = j, .path = path};
  const char *arch = json_string_value(json_array_get(json_object_get(j, "architectures"), 0));
  const char *mt = json_string_value(json_object_get(j, "model_type"));
  memset(c, 0, sizeof *c);
  if (name_is(arch, mixtral) || (!arch && name_is(mt, mixtral))) {
    c->family = SS_FAMILY_MIXTRAL;
  } else if (name_is(arch, grok) || (!arch && name_is(mt, grok))) {
    const bool two = get_b(&r, "residual_moe", false) || (mt && strstr(mt, "2"));
    c->family = two ? SS_FAMILY_GROK2 : SS_FAMILY_GROK1;
  } else if (name_is(arch, llama) || (!arch && name_is(mt, llama))) {
    c->family = SS_FAMILY_LLAMA;
  } else {
    return ss_error(SS_ERR_UNSUPPORTED, "%s: architecture '%.64s' (model_type '%.64s') is not "
                    "supported (supported: llama, mistral, mixtral, grok-1, grok-2)", path,
                    arch ? arch : "?", mt ? mt : "?");
  }
  const bool is_grok = c->family == SS_FAMILY_GROK1 || c->family == SS_FAMILY_GROK2;
  snprintf(c->arch, sizeof c->arch, "%s", ss_model_family_name(c->family));
  c->n_layer = get_i(&r, "num_hidden_layers", -1, 1, 4096);
  c->dim = get_i(&r, "hidden_size", -1, 1, 1 << 20);
  c->n_head = get_i(&r, "num_attention_heads", -1, 1, 4096);
  c->n_kv_head = get_i(&r, "num_key_value_heads", c->n_head, 1, 4096);
  c->vocab = get_i(&r, "vocab_size", -1, 1, INT32_MAX);
  c->n_ctx_train = get_i(&r, "max_position_embeddings", 4096, 1, 1 << 24);
  if (r.rc) return r.rc;
  if (c->n_head % c->n_kv_head != 0)
    return ss_error(SS_ERR_FORMAT, "%s: num_attention_heads = %d is not a multiple of "
                    "num_key_value_heads = %d", path, c->n_head, c->n_kv_head);
  c->head_dim = get_i(&r, "head_dim", c->dim % c->n_head == 0 ? c->dim / c->n_head : -1, 2, 4096);
  c->rope_dim = c->head_dim;
  if (c->head_dim % 2 != 0 || c->head_dim > 1024)
    return ss_error(SS_ERR_FORMAT, "%s: head_dim = %d must be even and at most 1024", path,
                    c->head_dim);
  c->rope_theta = (float)get_f(&r, "rope_theta", 10000.0);
  c->rope_mode = SS_ROPE_NEOX; /* HF checkpoints keep Q/K in rotate-half order */
  c->rms_eps = (float)get_f(&r, "rms_norm_eps", 1e-5);
  if (!(c->rope_theta >= 1.0f) || !(c->rms_eps > 0.0f && c->rms_eps < 1.0f))
    return ss_error(SS_ERR_FORMAT, "%s: rope_theta or rms_norm_eps out of range", path);
  c->embd_scale = c->logit_scale = 1.0f;
  c->act = is_grok ? SS_ACT_GELU_TANH : SS_ACT_SILU;
  const char *act = json_string_value(json_object_get(j, "hidden_act"));
  if (act) {
    if (strcmp(act, "silu") == 0) c->act = SS_ACT_SILU;
    else if (strcmp(act, "gelu") == 0) c->act = SS_ACT_GELU_ERF;
    else if (strcmp(act, "gelu_pytorch_tanh") == 0 || strcmp(act, "gelu_new") == 0 ||
             strcmp(act, "gelu_tanh") == 0)
      c->act = SS_ACT_GELU_TANH;
    else
      return ss_error(SS_ERR_UNSUPPORTED, "%s: hidden_act '%.32s' is not supported (silu, gelu, "
                      "gelu_pytorch_tanh)", path, act);
  }
  c->tied_output = get_b(&r, "tie_word_embeddings", c->family == SS_FAMILY_GROK1);
  c->dense_mlp = c->family == SS_FAMILY_LLAMA || c->family == SS_FAMILY_GROK2;
  const int ffn = get_i(&r, "intermediate_size", -1, 1, 1 << 22);
  if (c->dense_mlp) c->ffn_dim = ffn;
  if (c->family != SS_FAMILY_LLAMA) {
    json_t *ne = json_object_get(j, "num_local_experts");
    c->n_expert = get_i(&r, ne ? "num_local_experts" : "num_experts", -1, 1, 1024);
    c->n_expert_used = get_i(&r, "num_experts_per_tok", 2, 1, 1024);
    c->expert_ffn_dim = get_i(&r, "moe_intermediate_size", ffn, 1, 1 << 22);
    if (r.rc) return r.rc;
    if (c->n_expert_used > c->n_expert)
      return ss_error(SS_ERR_FORMAT, "%s: num_experts_per_tok = %d exceeds the %d experts", path,
                      c->n_expert_used, c->n_expert);
    c->moe_renormalize = c->family == SS_FAMILY_MIXTRAL;
  }
  if (is_grok) {
    /* Defaults: Grok-1's (xai-org/grok-1 model.py); configs/models/grok-*.json. */
    c->post_norms = true;
    c->embd_scale = (float)get_f(&r, "embedding_multiplier_scale", 1.0);
    c->logit_scale = (float)get_f(&r, "output_multiplier_scale", 1.0);
    c->attn_scale = (float)get_f(&r, "attn_output_multiplier", 0.0);
    json_t *cap = json_object_get(j, "attn_logit_softcapping");
    c->attn_softcap = (float)get_f(&r, cap ? "attn_logit_softcapping" : "max_attn_value", 30.0);
    /* sglang's Grok1MoE caps router logits at 30 whatever the config says;
     * Grok-1's own model.py does not cap them. */
    c->router_softcap = (float)get_f(&r, "router_logit_softcapping",
                                     c->family == SS_FAMILY_GROK2 ? 30.0 : 0.0);
    c->final_softcap = (float)get_f(&r, "final_logit_softcapping", 0.0);
    c->attn_temp_len = get_i(&r, "attn_temperature_len", 0, -1, 1 << 24);
    if (c->attn_temp_len == 1) c->attn_temp_len = 0; /* log2(1) = 0: undefined, treat as off */
    c->residual_moe = c->family == SS_FAMILY_GROK2 && get_b(&r, "residual_moe", true);
    /* sglang grok.py: rope_rotate_half_dims rotates only the first head_dim/2
     * dimensions of each head (rotate-half pairs within them). */
    if (get_b(&r, "rope_rotate_half_dims", false)) {
      if (c->head_dim % 4 != 0)
        return ss_error(SS_ERR_FORMAT, "%s: rope_rotate_half_dims needs head_dim = %d to be a "
                        "multiple of 4", path, c->head_dim);
      c->rope_dim = c->head_dim / 2;
    }
    const char *rt = json_string_value(json_object_get(j, "rope_type"));
    snprintf(c->rope_type, sizeof c->rope_type, "%s", rt ? rt : "");
    c->rope_factor = (float)get_f(&r, "scaling_factor", 1.0);
    c->rope_orig_ctx = get_i(&r, "original_max_position_embeddings", c->n_ctx_train, 1, 1 << 24);
    /* sglang grok.py's defaults when the keys are absent. */
    c->rope_beta_fast = (float)get_f(&r, "beta_fast", 32.0);
    c->rope_beta_slow = (float)get_f(&r, "beta_slow", 1.0);
    c->rope_extrapolation = (float)get_f(&r, "extrapolation_factor", 1.0);
    if (rt && !name_is(rt, (const char *const[]){"original", "yarn", "yarn_linear", "yarn_log", NULL}))
      return ss_error(SS_ERR_UNSUPPORTED, "%s: rope_type '%.32s' is not supported (original, "
                      "yarn, yarn_linear, yarn_log)", path, rt);
  }
  return r.rc;
}

/* Scaled RoPE frequencies, as sglang's ScalingRotaryEmbedding (YaRN, arXiv
 * 2309.00071) computes them; NULL (plain RoPE) for "" and "original". */
int ss_model_rope_freqs(const ss_model_config *c, float **out) {
  *out = NULL;
  if (!c->rope_type[0] || strcmp(c->rope_type, "original") == 0) return SS_OK;
  const int d = c->rope_dim, half = d / 2;
  float *f = malloc((size_t)half * sizeof *f);
  if (!f) return ss_error(SS_ERR_NOMEM, "out of memory");
  const double base = c->rope_theta, two_pi = 6.283185307179586;
  /* The dimension whose wavelength makes `rot` turns over the original context. */
#define CORR_DIM(rot) ((double)d * log((double)c->rope_orig_ctx / ((rot) * two_pi)) / (2.0 * log(base)))
  double low = floor(CORR_DIM(c->rope_beta_fast)), high = ceil(CORR_DIM(c->rope_beta_slow));
#undef CORR_DIM
  if (low < 0) low = 0;
  if (high > d - 1) high = d - 1;
  if (low == high) low -= 0.001; /* as sglang: avoid dividing by zero */
  for (int i = 0; i < half; i++) {
    const double extra = pow(base, -2.0 * i / d), inter = extra / c->rope_factor;
    double ramp = ((double)i - low) / (high - low);
    ramp = ramp < 0 ? 0 : ramp > 1 ? 1 : ramp;
    const double mask = (1.0 - ramp) * c->rope_extrapolation;
    f[i] = strcmp(c->rope_type, "yarn_log") == 0
               ? (float)exp(log(extra) * mask + log(inter) * (1.0 - mask))
               : (float)(inter * (1.0 - mask) + extra * mask);
  }
  *out = f;
  return SS_OK;
}

/* ------------------------------------------------------------------------ */
/* Tensors                                                                    */

static int bind_mat(ss_model *m, const char *name, int64_t rows, int64_t cols, ss_weight *w) {
  int rc = ss_st_join(m->st, name, 2, (const int64_t[]){rows, cols});
  if (rc) return rc;
  const ss_st_tensor *t = ss_st_find(m->st, name);
  if (!t) return ss_error(SS_ERR_FORMAT, "%s: missing tensor '%s'", m->path, name);
  if (t->n_dims != 2 || t->shape[0] != rows || t->shape[1] != cols)
    return ss_error(SS_ERR_FORMAT, "%s: tensor '%s' has %d dims [%" PRId64 ", %" PRId64 "...], "
                    "expected [%" PRId64 ", %" PRId64 "]", m->path, name, t->n_dims,
                    t->n_dims > 0 ? t->shape[0] : 0, t->n_dims > 1 ? t->shape[1] : 0, rows, cols);
  if (t->type != SS_DTYPE_F32 && t->type != SS_DTYPE_F16 && t->type != SS_DTYPE_BF16 &&
      t->type != SS_DTYPE_F8_E4M3)
    return ss_error(SS_ERR_UNSUPPORTED, "%s: tensor '%s' has dtype %s, which has no kernel "
                    "(supported: F32, F16, BF16, F8_E4M3)", m->path, name, t->dtype_name);
  *w = (ss_weight){.type = t->type, .rows = rows, .cols = cols,
                   .row_nbytes = (size_t)cols * t->elem_nbytes, .data = t->data};
  m->weight_nbytes += t->nbytes;
  /* FP8 scales: X.weight_scale beside X.weight. */
  char sname[256];
  size_t len = strlen(name);
  if (len > 7 && strcmp(name + len - 7, ".weight") == 0 && len < sizeof sname - 8) {
    snprintf(sname, sizeof sname, "%s_scale", name);
    const ss_st_tensor *s = ss_st_find(m->st, sname);
    if (s && s->n_pieces > 0)
      return ss_error(SS_ERR_UNSUPPORTED, "%s: tensor '%s' is cut per rank; scales are read "
                      "whole (from the common file)", m->path, sname);
    if (s) {
      const int64_t ns = ss_st_numel(s);
      if ((ns != 1 && ns != rows) ||
          (s->type != SS_DTYPE_F32 && s->type != SS_DTYPE_BF16 && s->type != SS_DTYPE_F16))
        return ss_error(SS_ERR_FORMAT, "%s: tensor '%s' must hold 1 or %" PRId64 " F32/BF16/F16 "
                        "values (per tensor or per output channel), not %" PRId64 " of %s",
                        m->path, sname, rows, ns, s->dtype_name);
      float *sc = malloc((size_t)rows * sizeof *sc), one[1];
      rc = ss_model_own(m, sc);
      if (rc) return rc;
      if (ns == 1) {
        ss_dequantize_row(s->type, s->data, one, 1);
        for (int64_t r = 0; r < rows; r++) sc[r] = one[0];
      } else {
        ss_dequantize_row(s->type, s->data, sc, rows);
      }
      w->row_scale = sc;
    }
  }
  return SS_OK;
}

/* A vector of dim values in any float type, copied out as f32. */
static int bind_vec(ss_model *m, const char *name, int64_t dim, const float **out) {
  const ss_st_tensor *t = ss_st_find(m->st, name);
  if (!t) return ss_error(SS_ERR_FORMAT, "%s: missing tensor '%s'", m->path, name);
  if (t->n_pieces > 0)
    return ss_error(SS_ERR_UNSUPPORTED, "%s: tensor '%s' is cut per rank; vectors are read whole "
                    "(from the common file)", m->path, name);
  if (t->n_dims != 1 || t->shape[0] != dim)
    return ss_error(SS_ERR_FORMAT, "%s: tensor '%s' has %d dims [%" PRId64 "...], expected [%"
                    PRId64 "]", m->path, name, t->n_dims, t->n_dims ? t->shape[0] : 0, dim);
  if (t->type != SS_DTYPE_F32 && t->type != SS_DTYPE_F16 && t->type != SS_DTYPE_BF16)
    return ss_error(SS_ERR_UNSUPPORTED, "%s: tensor '%s' has dtype %s (norms: F32, F16, BF16)",
                    m->path, name, t->dtype_name);
  float *v = malloc((size_t)dim * sizeof *v);
  int rc = ss_model_own(m, v);
  if (rc) return rc;
  ss_dequantize_row(t->type, t->data, v, dim);
  *out = v;
  m->weight_nbytes += (uint64_t)dim * sizeof(float);
  return SS_OK;
}

static bool has(const ss_model *m, const char *name) { return ss_st_find(m->st, name) != NULL; }

/* An RMSNorm's weight: BASE.weight, or BASE.scale as hpcai-tech/grok-1 names it. */
static int bind_norm(ss_model *m, const char *base, int64_t dim, const float **out) {
  char w[192], sc[192];
  snprintf(w, sizeof w, "%s.weight", base);
  snprintf(sc, sizeof sc, "%s.scale", base);
  if (!has(m, w) && has(m, sc)) return bind_vec(m, sc, dim, out);
  if (!has(m, w))
    return ss_error(SS_ERR_FORMAT, "%s: missing tensor '%s' (or '%s')", m->path, w, sc);
  return bind_vec(m, w, dim, out);
}

int ss_model_alloc_layers(ss_model *m) {
  const ss_model_config *c = &m->cfg;
  m->layers = calloc((size_t)c->n_layer, sizeof *m->layers);
  if (!m->layers) return ss_error(SS_ERR_NOMEM, "out of memory");
  if (c->n_expert == 0) return SS_OK;
  ss_weight *ew = calloc((size_t)c->n_layer * 3 * (size_t)c->n_expert, sizeof *ew);
  if (!ew) return ss_error(SS_ERR_NOMEM, "out of memory");
  for (int l = 0; l < c->n_layer; l++) {
    ss_layer_weights *L = &m->layers[l];
    L->exp_gate = ew + (size_t)l * 3 * (size_t)c->n_expert;
    L->exp_up = L->exp_gate + c->n_expert;
    L->exp_down = L->exp_up + c->n_expert;
  }
  return SS_OK;
}

static int bind_layer(ss_model *m, int l) {
  const ss_model_config *c = &m->cfg;
  ss_layer_weights *L = &m->layers[l];
  const int64_t C = c->dim, Q = (int64_t)c->n_head * c->head_dim;
  const int64_t KV = (int64_t)c->n_kv_head * c->head_dim, Fe = c->expert_ffn_dim;
  const bool grok = c->family == SS_FAMILY_GROK1 || c->family == SS_FAMILY_GROK2;
  char p[64], n[160];
  snprintf(p, sizeof p, "model.layers.%d", l);
#define NAME(s) (snprintf(n, sizeof n, "%s.%s", p, s), n)
#define N(fmt, ...) (snprintf(n, sizeof n, "%s." fmt, p, __VA_ARGS__), n)
  const char *att = grok && has(m, NAME("attn.q_proj.weight")) ? "attn" : "self_attn";
  int rc;
  if ((rc = bind_mat(m, N("%s.q_proj.weight", att), Q, C, &L->wq)) ||
      (rc = bind_mat(m, N("%s.k_proj.weight", att), KV, C, &L->wk)) ||
      (rc = bind_mat(m, N("%s.v_proj.weight", att), KV, C, &L->wv)) ||
      (rc = bind_mat(m, N("%s.o_proj.weight", att), C, Q, &L->wo)))
    return rc;
  if (grok) {
    if ((rc = bind_norm(m, NAME("pre_attn_norm"), C, &L->attn_norm)) ||
        (rc = bind_norm(m, NAME("post_attn_norm"), C, &L->post_attn_norm)) ||
        (rc = bind_norm(m, NAME("pre_moe_norm"), C, &L->ffn_norm)) ||
        (rc = bind_norm(m, NAME("post_moe_norm"), C, &L->post_ffn_norm)))
      return rc;
  } else {
    if ((rc = bind_norm(m, NAME("input_layernorm"), C, &L->attn_norm)) ||
        (rc = bind_norm(m, NAME("post_attention_layernorm"), C, &L->ffn_norm)))
      return rc;
  }
  if (c->dense_mlp) {
    const int64_t F = c->ffn_dim;
    if ((rc = bind_mat(m, NAME("mlp.gate_proj.weight"), F, C, &L->w_gate)) ||
        (rc = bind_mat(m, NAME("mlp.up_proj.weight"), F, C, &L->w_up)) ||
        (rc = bind_mat(m, NAME("mlp.down_proj.weight"), C, F, &L->w_down)))
      return rc;
  }
  if (c->n_expert > 0) {
    /* Grok-1's published conversions name the block moe_block and the three
     * matrices linear (gate, GELU'd), linear_v (up) and linear_1 (down). */
    const bool xai = grok && has(m, NAME("moe_block.gate.weight"));
    const char *blk = xai ? "moe_block" : "block_sparse_moe";
    const char *g = xai ? "linear" : "w1", *u = xai ? "linear_v" : "w3", *d = xai ? "linear_1" : "w2";
    if ((rc = bind_mat(m, N("%s.gate.weight", blk), c->n_expert, C, &L->router))) return rc;
    for (int e = 0; e < c->n_expert; e++)
      if ((rc = bind_mat(m, N("%s.experts.%d.%s.weight", blk, e, g), Fe, C, &L->exp_gate[e])) ||
          (rc = bind_mat(m, N("%s.experts.%d.%s.weight", blk, e, u), Fe, C, &L->exp_up[e])) ||
          (rc = bind_mat(m, N("%s.experts.%d.%s.weight", blk, e, d), C, Fe, &L->exp_down[e])))
        return rc;
  }
#undef N
#undef NAME
  return SS_OK;
}

static int read_config_file(const char *path, ss_model_config *c) {
  json_error_t err;
  json_t *j = json_load_file(path, JSON_REJECT_DUPLICATES, &err);
  if (!j) {
    struct stat st;
    if (stat(path, &st) != 0) return ss_error(SS_ERR_IO, "%s: cannot open", path);
    return ss_error(SS_ERR_FORMAT, "%s: not valid JSON (line %d: %s)", path, err.line, err.text);
  }
  int rc = read_hf_config(j, path, c);
  json_decref(j);
  return rc;
}

/* Adds the eos_token_id of `file` in dir (absent file or key: nothing) to the
 * model's stop ids: an int or a list of ints, each in [0, vocab). */
static int read_stop_ids(ss_model *m, const char *dir, const char *file) {
  char path[4096];
  snprintf(path, sizeof path, "%s/%s", dir, file);
  struct stat st;
  if (stat(path, &st) != 0) return SS_OK;
  json_error_t err;
  json_t *j = json_load_file(path, 0, &err);
  if (!j) return ss_error(SS_ERR_FORMAT, "%s: not valid JSON (line %d: %s)", path, err.line, err.text);
  json_t *v = json_object_get(j, "eos_token_id");
  int rc = SS_OK;
  if (v && !json_is_null(v)) {
    const size_t n = json_is_array(v) ? json_array_size(v) : 1;
    if (!json_is_array(v) && !json_is_integer(v))
      rc = ss_error(SS_ERR_FORMAT, "%s: 'eos_token_id' must be an integer or a list of integers",
                    path);
    if (rc == SS_OK && n > 1024)
      rc = ss_error(SS_ERR_FORMAT, "%s: 'eos_token_id' lists %zu ids (at most 1024)", path, n);
    int32_t *ids = rc == SS_OK ? realloc(m->stop_ids, (size_t)(m->n_stop_ids + (int)n) * sizeof *ids)
                               : NULL;
    if (rc == SS_OK && !ids && n > 0) rc = ss_error(SS_ERR_NOMEM, "out of memory");
    if (ids) m->stop_ids = ids;
    for (size_t i = 0; rc == SS_OK && i < n; i++) {
      json_t *e = json_is_array(v) ? json_array_get(v, i) : v;
      if (!json_is_integer(e) || json_integer_value(e) < 0 ||
          json_integer_value(e) >= m->cfg.vocab) {
        rc = ss_error(SS_ERR_FORMAT, "%s: 'eos_token_id' entry %zu must be an integer in [0, %d)",
                      path, i, m->cfg.vocab);
        break;
      }
      const int32_t id = (int32_t)json_integer_value(e);
      bool seen = false;
      for (int k = 0; k < m->n_stop_ids; k++) seen |= m->stop_ids[k] == id;
      if (!seen) m->stop_ids[m->n_stop_ids++] = id;
    }
  }
  json_decref(j);
  return rc;
}

int ss_model_load_hf(ss_model *m, const char *dir) {
  char path[4096];
  snprintf(path, sizeof path, "%s/config.json", dir);
  struct stat st;
  if (stat(path, &st) != 0)
    return ss_error(SS_ERR_IO, "%s: not a regular file (GGUF) and not a Hugging Face model folder "
                    "(no config.json)", dir);
  int rc = read_config_file(path, &m->cfg);
  if (rc) return rc;
  ss_model_config *c = &m->cfg;
  if ((rc = ss_model_rope_freqs(c, &m->rope_inv_freq))) return rc;
  if ((rc = ss_st_open(dir, &m->st))) return rc;
  if ((rc = ss_tokenizer_load_hf(dir, &m->tok, &m->chat_template))) return rc;
  if (ss_tokenizer_n_vocab(m->tok) > c->vocab)
    return ss_error(SS_ERR_FORMAT, "%s: the tokenizer has %d tokens but vocab_size is %d", dir,
                    ss_tokenizer_n_vocab(m->tok), c->vocab);
  if ((rc = read_stop_ids(m, dir, "generation_config.json")) ||
      (rc = read_stop_ids(m, dir, "config.json")))
    return rc;
  if ((rc = bind_mat(m, "model.embed_tokens.weight", c->vocab, c->dim, &m->tok_embd)) ||
      (rc = bind_norm(m, "model.norm", c->dim, &m->output_norm)))
    return rc;
  /* tie_word_embeddings (read above) ties the head even where a checkpoint
   * also stores lm_head.weight, as transformers does. */
  c->tied_output = c->tied_output || !has(m, "lm_head.weight");
  if (c->tied_output) m->output = m->tok_embd;
  else if ((rc = bind_mat(m, "lm_head.weight", c->vocab, c->dim, &m->output))) return rc;
  if ((rc = ss_model_alloc_layers(m))) return rc;
  for (int l = 0; l < c->n_layer; l++)
    if ((rc = bind_layer(m, l))) return rc;
  return SS_OK;
}

/* ------------------------------------------------------------------------ */
/* Presets                                                                    */

static ss_weight shape_only(ss_dtype type, int64_t rows, int64_t cols) {
  const ss_dtype_info *ti = ss_dtype_get(type);
  return (ss_weight){.type = type, .rows = rows, .cols = cols,
                     .row_nbytes = (size_t)(cols / ti->block_count) * ti->block_nbytes};
}

int ss_model_describe(const char *preset_path, ss_dtype dtype, ss_model **out) {
  *out = NULL;
  const ss_dtype_info *ti = ss_dtype_get(dtype);
  if (!ti || ti->block_count != 1 || !ti->compute)
    return ss_error(SS_ERR_INVALID, "presets take a plain weight type (f32, f16, bf16, fp8)");
  ss_model *m = calloc(1, sizeof *m);
  if (!m) return ss_error(SS_ERR_NOMEM, "out of memory");
  m->path = strdup(preset_path);
  m->prof = calloc(1, sizeof *m->prof);
  int rc = m->path && m->prof ? SS_OK : ss_error(SS_ERR_NOMEM, "out of memory");
  if (rc == SS_OK) rc = read_config_file(preset_path, &m->cfg);
  if (rc == SS_OK) rc = ss_model_alloc_layers(m);
  if (rc) {
    ss_model_free(m);
    return rc;
  }
  const ss_model_config *c = &m->cfg;
  const int64_t C = c->dim, Q = (int64_t)c->n_head * c->head_dim;
  const int64_t KV = (int64_t)c->n_kv_head * c->head_dim;
  m->tok_embd = shape_only(dtype, c->vocab, C);
  m->output = c->tied_output ? m->tok_embd : shape_only(dtype, c->vocab, C);
  for (int l = 0; l < c->n_layer; l++) {
    ss_layer_weights *L = &m->layers[l];
    L->wq = shape_only(dtype, Q, C);
    L->wk = shape_only(dtype, KV, C);
    L->wv = shape_only(dtype, KV, C);
    L->wo = shape_only(dtype, C, Q);
    if (c->dense_mlp) {
      L->w_gate = shape_only(dtype, c->ffn_dim, C);
      L->w_up = shape_only(dtype, c->ffn_dim, C);
      L->w_down = shape_only(dtype, C, c->ffn_dim);
    }
    if (c->n_expert > 0) {
      L->router = shape_only(dtype, c->n_expert, C);
      for (int e = 0; e < c->n_expert; e++) {
        L->exp_gate[e] = shape_only(dtype, c->expert_ffn_dim, C);
        L->exp_up[e] = shape_only(dtype, c->expert_ffn_dim, C);
        L->exp_down[e] = shape_only(dtype, C, c->expert_ffn_dim);
      }
    }
  }
  *out = m;
  return SS_OK;
}
