/* Moving a loaded model's weights to a device backend (ss_model_upload in
 * runtime/model.h).  Kept apart from model.c: the loaders and the forward pass
 * need not know where the bytes live, only that ss_weight.data and the norm
 * pointers are backend memory once this has run. */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>

#include "runtime/base/status.h"
#include "runtime/model/model.h"

/* Copies nbytes at *data to the device and points *data at the copy; the same
 * host pointer seen before (tied embeddings) reuses its copy. */
static int upload_one(ss_model *m, ss_backend *be, const void **data, size_t nbytes,
                      const void **seen_src, void **seen_dst, int *n_seen, const char *what) {
  for (int i = 0; i < *n_seen; i++)
    if (seen_src[i] == *data) {
      *data = seen_dst[i];
      return SS_OK;
    }
  void *d = be->alloc(be, nbytes);
  if (!d) {
    char msg[512];
    snprintf(msg, sizeof msg, "%s", ss_error_msg());
    return ss_error(SS_ERR_NOMEM, "uploading %s (%.1f MiB) to the device: %s", what,
                    (double)nbytes / (1 << 20), msg);
  }
  m->dev_bufs[m->n_dev_bufs++] = d;
  int rc = be->upload(be, d, *data, nbytes);
  if (rc) return rc;
  seen_src[*n_seen] = *data;
  seen_dst[(*n_seen)++] = d;
  *data = d;
  return SS_OK;
}

/* What the device forward pass does not cover yet: the mixture-of-experts
 * sub-layer (routing and expert grouping run on the host), and the Grok /
 * scaled-RoPE / FP8 features whose kernels or parameters the device backend
 * lacks.  Such models run with --device cpu. */
static bool weight_scaled(const ss_weight *w) {
  return w->row_scale != NULL || w->type == SS_DTYPE_F8_E4M3;
}

/* The device matmul's types (kernels/cuda/matmul.cu): the CPU also takes Q5_x
 * and the K-quants. */
static bool device_type(const ss_weight *w) {
  switch (w->type) {
  case SS_DTYPE_F32: case SS_DTYPE_F16: case SS_DTYPE_BF16: case SS_DTYPE_F8_E4M3:
  case SS_DTYPE_Q8_0: case SS_DTYPE_Q4_0: case SS_DTYPE_Q4_1:
    return true;
  default:
    return false;
  }
}

static int check_supported(const ss_model *m, const ss_backend *be) {
  const ss_model_config *c = &m->cfg;
  const char *what = NULL;
  if (c->n_expert > 0) what = "mixture-of-experts layers";
  else if (c->act != SS_ACT_SILU && !be->gelu_mul) what = "GeGLU activations";
  else if ((c->embd_scale != 1.0f || c->logit_scale != 1.0f) && !be->scale)
    what = "embedding or logit multipliers";
  else if (c->final_softcap > 0.0f && !be->softcap) what = "a final logit soft cap";
  else if (c->attn_temp_len > 0) what = "an attention temperature length";
  else if (m->rope_inv_freq) what = "scaled RoPE frequencies";
  else {
    bool fp8 = weight_scaled(&m->tok_embd) || weight_scaled(&m->output);
    for (int l = 0; l < c->n_layer && !fp8; l++) {
      const ss_layer_weights *L = &m->layers[l];
      fp8 = weight_scaled(&L->wq) || weight_scaled(&L->wk) || weight_scaled(&L->wv) ||
            weight_scaled(&L->wo) || weight_scaled(&L->w_gate) || weight_scaled(&L->w_up) ||
            weight_scaled(&L->w_down);
    }
    if (fp8) what = "FP8 (row-scaled) weights";
    bool types = device_type(&m->tok_embd) && device_type(&m->output);
    for (int l = 0; l < c->n_layer && types; l++) {
      const ss_layer_weights *L = &m->layers[l];
      types = device_type(&L->wq) && device_type(&L->wk) && device_type(&L->wv) &&
              device_type(&L->wo) && device_type(&L->w_gate) && device_type(&L->w_up) &&
              device_type(&L->w_down);
    }
    if (!what && !types) what = "weights in Q5_0/Q5_1 or K-quant types";
  }
  if (!what) return SS_OK;
  return ss_error(SS_ERR_UNSUPPORTED, "--device %s: this %s model has %s, which the %s forward "
                  "pass does not support yet; use --device cpu", be->name, c->arch, what,
                  be->name);
}

int ss_model_upload(ss_model *m, ss_backend *be) {
  if (!be->device || m->dev_be) return SS_OK;
  const ss_model_config *c = &m->cfg;
  /* The stages exchange host buffers over MPI; device buffers between stages
   * (NCCL send/recv) are not wired into the forward pass yet. */
  if (m->local.pp > 1)
    return ss_error(SS_ERR_UNSUPPORTED, "%s: --pp %d on --device %s: pipeline stages run on "
                    "host backends only for now (--device cpu)", m->path, m->local.pp, be->name);
  int rc0 = check_supported(m, be);
  if (rc0) return rc0;
  const int cap = 2 + 13 * c->n_layer + 2;
  m->dev_bufs = calloc((size_t)cap, sizeof *m->dev_bufs);
  const void **seen_src = calloc((size_t)cap, sizeof *seen_src);
  void **seen_dst = calloc((size_t)cap, sizeof *seen_dst);
  int n_seen = 0, rc = SS_OK;
  m->dev_be = be;
  if (!m->dev_bufs || !seen_src || !seen_dst) {
    rc = ss_error(SS_ERR_NOMEM, "out of memory");
    goto done;
  }
  const size_t norm_nbytes = (size_t)c->dim * sizeof(float);
#define UP_W(w, what) upload_one(m, be, &(w).data, (size_t)(w).rows * (w).row_nbytes, seen_src, \
                                 seen_dst, &n_seen, what)
#define UP_N(p, what) upload_one(m, be, (const void **)&(p), norm_nbytes, seen_src, seen_dst, \
                                 &n_seen, what)
  if ((rc = UP_W(m->tok_embd, "token_embd")) || (rc = UP_W(m->output, "output")) ||
      (rc = UP_N(m->output_norm, "output_norm")))
    goto done;
  for (int l = 0; l < c->n_layer && !rc; l++) {
    ss_layer_weights *L = &m->layers[l];
    (void)((rc = UP_N(L->attn_norm, "attn_norm")) || (rc = UP_W(L->wq, "attn_q")) ||
           (rc = UP_W(L->wk, "attn_k")) || (rc = UP_W(L->wv, "attn_v")) ||
           (rc = UP_W(L->wo, "attn_output")) || (rc = UP_N(L->ffn_norm, "ffn_norm")) ||
           (rc = UP_W(L->w_gate, "ffn_gate")) || (rc = UP_W(L->w_up, "ffn_up")) ||
           (rc = UP_W(L->w_down, "ffn_down")) ||
           (L->wo_edge.w.data && (rc = UP_W(L->wo_edge.w, "attn_output f32 edge"))) ||
           (L->down_edge.w.data && (rc = UP_W(L->down_edge.w, "ffn_down f32 edge"))) ||
           (L->post_attn_norm && (rc = UP_N(L->post_attn_norm, "post_attention_norm"))) ||
           (L->post_ffn_norm && (rc = UP_N(L->post_ffn_norm, "post_ffw_norm"))));
  }
#undef UP_W
#undef UP_N
  /* The host copies of row-parallel slices are no longer read. */
  for (int i = 0; i < m->n_owned && !rc; i++) free(m->owned[i]);
  if (!rc) m->n_owned = 0;
done:
  free(seen_src);
  free(seen_dst);
  return rc;
}
