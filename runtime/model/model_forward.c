/* The forward pass over a batch on this rank's shard, and the step protocol
 * that keeps the ranks of a tensor-parallel job running the same batches. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "comm/comm.h"
#include "runtime/base/clock.h"
#include "runtime/base/status.h"
#include "runtime/base/trace.h"
#include "runtime/model/model_internal.h"

/* ------------------------------------------------------------------------ */
/* Forward pass                                                               */

int ss_forward_state_init(ss_forward_state *st, const ss_model *m, ss_backend *be,
                          int64_t max_tokens, int64_t max_logits) {
  memset(st, 0, sizeof *st);
  const ss_model_config *c = &m->cfg;
  const ss_model_local *lo = &m->local;
  st->be = be;
  st->max_tokens = max_tokens;
  st->max_logits = max_logits;
  const size_t T = (size_t)max_tokens;
  const size_t q_dim = (size_t)lo->n_head * c->head_dim;
  const size_t kv_dim = (size_t)lo->n_kv_head * c->head_dim;
  const size_t wide = q_dim > (size_t)c->dim ? q_dim : (size_t)c->dim;
  const size_t v_local = (size_t)(lo->vocab_end - lo->vocab_begin);
  st->x = be->alloc(be, T * c->dim * sizeof(float));
  st->xb = be->alloc(be, T * wide * sizeof(float));
  st->xb2 = be->alloc(be, T * c->dim * sizeof(float));
  st->q = be->alloc(be, T * q_dim * sizeof(float));
  st->k = be->alloc(be, T * kv_dim * sizeof(float));
  st->v = be->alloc(be, T * kv_dim * sizeof(float));
  st->att = be->alloc(be, T * q_dim * sizeof(float));
  st->hb = be->alloc(be, T * (size_t)(lo->ffn_dim ? lo->ffn_dim : 1) * sizeof(float));
  st->hb2 = be->alloc(be, T * (size_t)(lo->ffn_dim ? lo->ffn_dim : 1) * sizeof(float));
  st->xl = be->alloc(be, (size_t)(max_logits ? max_logits : 1) * c->dim * sizeof(float));
  st->ids = malloc(T * sizeof(int32_t));
  bool ok = st->x && st->xb && st->xb2 && st->q && st->k && st->v && st->att && st->hb &&
            st->hb2 && st->xl && st->ids;
  if (ok && c->n_expert > 0) {
    const size_t E = (size_t)c->n_expert, K = (size_t)c->n_expert_used;
    const size_t Fe = (size_t)(lo->expert_ffn_dim ? lo->expert_ffn_dim : 1);
    st->moe = be->alloc(be, T * c->dim * sizeof(float));
    st->rl = be->alloc(be, T * E * sizeof(float));
    st->r_ids = malloc(T * K * sizeof(int32_t));
    st->r_w = malloc(T * K * sizeof(float));
    st->e_rows = malloc(T * K * sizeof(int32_t));
    st->e_w = malloc(T * K * sizeof(float));
    st->ex = be->alloc(be, T * c->dim * sizeof(float));
    st->eh = be->alloc(be, T * Fe * sizeof(float));
    st->eh2 = be->alloc(be, T * Fe * sizeof(float));
    st->ey = be->alloc(be, T * c->dim * sizeof(float));
    ok = st->moe && st->rl && st->r_ids && st->r_w && st->e_rows && st->e_w && st->ex && st->eh &&
         st->eh2 && st->ey;
  }
  /* Row-parallel weights with f32 edges: the widest input and edge. */
  int64_t cut_w = 0, edge_w = 0;
  for (int l = 0; l < c->n_layer; l++) {
    const ss_layer_weights *L = &m->layers[l];
    if (L->wo_edge.w.data && L->wo_edge.w.cols > edge_w) edge_w = L->wo_edge.w.cols;
    if (L->down_edge.w.data && L->down_edge.w.cols > edge_w) edge_w = L->down_edge.w.cols;
    for (int e = 0; L->exp_down_edge && e < c->n_expert; e++)
      if (L->exp_down_edge[e].w.data && L->exp_down_edge[e].w.cols > edge_w)
        edge_w = L->exp_down_edge[e].w.cols;
  }
  if (ok && edge_w > 0) {
    cut_w = (int64_t)q_dim;
    if (lo->ffn_dim > cut_w) cut_w = lo->ffn_dim;
    if (lo->expert_ffn_dim > cut_w) cut_w = lo->expert_ffn_dim;
    if ((int64_t)T * cut_w > INT32_MAX) {
      ss_forward_state_free(st);
      return ss_error(SS_ERR_RANGE, "%lld tokens of %lld columns exceed the 2^31 gather indices "
                      "of a cut row-parallel product", (long long)max_tokens, (long long)cut_w);
    }
    st->cut_mid = be->alloc(be, T * (size_t)cut_w * sizeof(float));
    st->cut_edge = be->alloc(be, T * (size_t)edge_w * sizeof(float));
    st->cut_y = be->alloc(be, T * c->dim * sizeof(float));
    st->cut_idx = malloc(T * (size_t)cut_w * sizeof(int32_t));
    ok = st->cut_mid && st->cut_edge && st->cut_y && st->cut_idx;
  }
  if (ok && lo->tp > 1 && lo->vocab_parallel) {
    st->lg = be->alloc(be, (size_t)(max_logits ? max_logits : 1) * v_local * sizeof(float));
    st->lg_all = lo->rank == 0 ? be->alloc(be, (size_t)(max_logits ? max_logits : 1) *
                                                   (size_t)c->vocab * sizeof(float))
                               : NULL;
    ok = st->lg && (lo->rank != 0 || st->lg_all);
    if (ok && be->device && lo->rank == 0) {
      st->lg_host = malloc((size_t)(max_logits ? max_logits : 1) * (size_t)c->vocab * sizeof(float));
      ok = st->lg_host != NULL;
    }
  }
  if (ok && lo->pp > 1 && lo->stage == lo->pp - 1 && lo->rank == 0) {
    if (be->device) {
      ss_forward_state_free(st);
      return ss_error(SS_ERR_UNSUPPORTED, "pipeline parallelism runs on host backends only "
                      "(--device cpu) for now");
    }
    st->lg_pp = malloc((size_t)(max_logits ? max_logits : 1) * (size_t)c->vocab * sizeof(float));
    ok = st->lg_pp != NULL;
  }
  if (ok && be->device && !(lo->tp > 1 && lo->vocab_parallel)) {
    st->lgd = be->alloc(be, (size_t)(max_logits ? max_logits : 1) * v_local * sizeof(float));
    ok = st->lgd != NULL;
  }
  if (!ok) {
    ss_forward_state_free(st);
    return ss_error(SS_ERR_NOMEM, "cannot allocate activations for %lld tokens",
                    (long long)max_tokens);
  }
  return SS_OK;
}

void ss_forward_state_free(ss_forward_state *st) {
  ss_backend *be = st->be;
  if (!be) return;
  float *bufs[] = {st->x,  st->xb, st->xb2, st->q,  st->k,  st->v,  st->att, st->hb,
                   st->hb2, st->xl, st->lg, st->lg_all, st->moe, st->rl, st->ex, st->eh,
                   st->eh2, st->ey, st->lgd, st->cut_mid, st->cut_edge, st->cut_y};
  for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++)
    if (bufs[i]) be->dealloc(be, bufs[i]);
  free(st->ids);
  free(st->r_ids);
  free(st->r_w);
  free(st->e_rows);
  free(st->e_w);
  free(st->lg_host);
  free(st->lg_pp);
  free(st->cut_idx);
  memset(st, 0, sizeof *st);
}

static int64_t gcd64(int64_t a, int64_t b) {
  while (b) {
    const int64_t t = a % b;
    a = b;
    b = t;
  }
  return a;
}

/* Gathers, from x viewed as rows of g floats (width/g per token), columns
 * [from, from + count) of every token into out (n, count). */
static void gather_cols(ss_backend *be, const float *x, int64_t n, int64_t width, int64_t g,
                        int64_t from, int64_t count, int32_t *idx, float *out) {
  const int64_t per = count / g;
  for (int64_t t = 0; t < n; t++)
    for (int64_t j = 0; j < per; j++) idx[t * per + j] = (int32_t)(t * (width / g) + from / g + j);
  be->gather_rows(be, x, idx, n * per, g, out);
}

void ss_model_matmul_cut(const ss_model *m, ss_forward_state *st, const ss_weight *w,
                         const ss_weight_edge *e, const float *x, int64_t n, float *y) {
  ss_backend *be = st->be;
  if (!e || !e->w.data) {
    be->matmul(be, w, x, n, y);
    return;
  }
  const int64_t lo = e->lo, hi = e->hi, mid = w->cols, width = lo + mid + hi;
  const int64_t g = gcd64(gcd64(lo, hi), width);
  /* The edge's input: the lo columns then the hi columns of every token. */
  float *xe = st->cut_edge;
  if (hi == 0) {
    gather_cols(be, x, n, width, g, 0, lo, st->cut_idx, xe);
  } else if (lo == 0) {
    gather_cols(be, x, n, width, g, lo + mid, hi, st->cut_idx, xe);
  } else {
    /* Token t's lo chunks then its hi chunks, in one gather. */
    const int64_t pl = lo / g, ph = hi / g, per = pl + ph;
    for (int64_t t = 0; t < n; t++) {
      for (int64_t j = 0; j < pl; j++) st->cut_idx[t * per + j] = (int32_t)(t * (width / g) + j);
      for (int64_t j = 0; j < ph; j++)
        st->cut_idx[t * per + pl + j] = (int32_t)(t * (width / g) + (lo + mid) / g + j);
    }
    be->gather_rows(be, x, st->cut_idx, n * per, g, xe);
  }
  if (mid == 0) {
    be->matmul(be, &e->w, xe, n, y);
    ss_model_count_read(m, &e->w, false);
    return;
  }
  be->matmul(be, &e->w, xe, n, st->cut_y);
  gather_cols(be, x, n, width, g, lo, mid, st->cut_idx, st->cut_mid);
  be->matmul(be, w, st->cut_mid, n, y);
  be->add(be, y, st->cut_y, n * w->rows);
  ss_model_count_read(m, &e->w, false);
}

static bool distributed(const ss_model *m) { return m->comm && m->comm->size > 1; }

/* Counts a matmul's weight bytes for --profile and the MoE bench. */
void ss_model_count_read(const ss_model *m, const ss_weight *w, bool expert) {
  const uint64_t nb = ss_weight_nbytes(w);
  m->prof->weight_nbytes_read += nb;
  if (expert) m->prof->expert_nbytes_read += nb;
}
#define count_read ss_model_count_read

/* Grok's output multiplier and Grok-2's final soft cap, on this rank's logits. */
static void finish_logits(const ss_model *m, ss_backend *be, float *lg, int64_t count) {
  if (m->cfg.logit_scale != 1.0f) be->scale(be, lg, count, m->cfg.logit_scale);
  if (m->cfg.final_softcap > 0.0f) be->softcap(be, lg, count, m->cfg.final_softcap);
}

/* The communicator as a device backend sees it (kernels/kernels.h). */
static int coll_allreduce_f32(void *ctx, float *buf, int64_t count, void *stream) {
  return ss_comm_allreduce_sum_stream(ctx, buf, (size_t)count, SS_DTYPE_F32, stream);
}
static int coll_wait(void *ctx, void *stream) { return ss_comm_wait_stream(ctx, stream); }
static ss_collective collective_of(ss_comm *c) {
  ss_collective k = {c, coll_allreduce_f32, c->ops->wait_stream ? coll_wait : NULL};
  return k;
}

/* Sums a residual update over the ranks (row-parallel output).  A device
 * backend queues it behind its kernels (nccl), without waiting. */
static int allreduce(const ss_model *m, ss_backend *be, float *x, int64_t count, const char *what,
                     int layer) {
  if (!distributed(m)) return SS_OK;
  int rc;
  if (be->allreduce) {
    const ss_collective coll = collective_of(m->comm);
    rc = be->allreduce(be, &coll, x, count);
  } else {
    rc = ss_comm_allreduce_sum(m->comm, x, (size_t)count, SS_DTYPE_F32);
  }
  if (rc) {
    char msg[512];
    snprintf(msg, sizeof msg, "%s", ss_error_msg());
    return ss_error(rc, "forward: %s all-reduce of layer %d: %s", what, layer, msg);
  }
  return SS_OK;
}

/* Pipeline parallelism: messages between this rank and its peer (the same
 * tensor-parallel rank) of another stage, over the job's communicator. */
enum { PP_TAG_HIDDEN = 101, PP_TAG_LOGITS = 102 };

static int stage_peer(const ss_model *m, int stage) { return stage * m->local.tp + m->local.rank; }

/* Sends are asynchronous (a copy goes out): a stage never waits for the next
 * one to take its hidden states, nor the last stage for rank 0 to take the
 * logits, so steps in flight cannot block one another. */
static int stage_send(const ss_model *m, const void *buf, size_t nbytes, int stage, int tag,
                      const char *what) {
  int rc = ss_comm_send_async(m->world, buf, nbytes, stage_peer(m, stage), tag);
  if (rc) {
    char msg[512];
    snprintf(msg, sizeof msg, "%s", ss_error_msg());
    return ss_error(rc, "forward: stage %d sending %s to stage %d: %s", m->local.stage, what,
                    stage, msg);
  }
  return SS_OK;
}

static int stage_recv(const ss_model *m, void *buf, size_t nbytes, int stage, int tag,
                      const char *what) {
  int rc = ss_comm_recv(m->world, buf, nbytes, stage_peer(m, stage), tag);
  if (rc) {
    char msg[512];
    snprintf(msg, sizeof msg, "%s", ss_error_msg());
    return ss_error(rc, "forward: stage %d receiving %s from stage %d: %s", m->local.stage, what,
                    stage, msg);
  }
  return SS_OK;
}

/* The step proper: every kernel and in-step all-reduce of one forward pass,
 * from the embedding to the LM head (between step_begin and step_end).  The
 * mixture-of-experts sub-layer groups tokens on the host, so it runs on host
 * backends only (ss_model_upload refuses MoE models for device backends). */
static int forward_step(const ss_model *m, ss_forward_state *st, ss_kv_cache *kv,
                        const ss_batch *b, float *logits) {
  const ss_model_config *c = &m->cfg;
  const ss_model_local *lo = &m->local;
  ss_backend *be = st->be;
  const int64_t n = b->n;
  const ss_rope_params rq = {.n_heads = lo->n_head, .head_dim = c->head_dim,
                             .rope_dim = c->rope_dim, .theta = c->rope_theta,
                             .mode = c->rope_mode, .inv_freq = m->rope_inv_freq};
  ss_rope_params rk = rq;
  rk.n_heads = lo->n_kv_head;
  const ss_attn_params ap = {.n_head = lo->n_head, .n_kv_head = lo->n_kv_head,
                             .head_dim = c->head_dim,
                             .scale = c->attn_scale > 0.0f ? c->attn_scale
                                                           : 1.0f / sqrtf((float)c->head_dim),
                             .softcap = c->attn_softcap, .temp_len = c->attn_temp_len,
                             .group = c->n_head / c->n_kv_head, .q_head_base = lo->head_base,
                             .kv_head_base = lo->kv_head_base};
  int rc;

  /* --trace: spans for the embedding, each layer and the LM head (on a device
   * backend, the time to queue their kernels). */
  SS_TRACE_BEGIN(t_embd);
  /* Embedding: with a vocabulary slice, tokens held elsewhere embed as zeros and
   * the all-reduce fills them in (x + 0 + ... + 0 = x exactly). */
  const bool vp = distributed(m) && lo->vocab_parallel;
  const int32_t *ids = b->tokens;
  if (vp) {
    for (int64_t i = 0; i < n; i++)
      st->ids[i] = b->tokens[i] >= lo->vocab_begin && b->tokens[i] < lo->vocab_end
                       ? (int32_t)(b->tokens[i] - lo->vocab_begin) : -1;
    ids = st->ids;
  }
  if (lo->stage == 0) {
    be->embed(be, &m->tok_embd, ids, n, st->x);
    if (vp && (rc = allreduce(m, be, st->x, n * c->dim, "embedding", -1))) return rc;
    if (c->embd_scale != 1.0f) be->scale(be, st->x, n * c->dim, c->embd_scale);
    if (ss_trace_on()) ss_trace_span("embedding", "compute", t_embd, ss_now_s(), NULL, 0);
  } else if ((rc = stage_recv(m, st->x, (size_t)(n * c->dim) * sizeof(float),
                              lo->stage - 1, PP_TAG_HIDDEN, "the hidden states"))) {
    return rc;
  }

  /* This stage's layers; its KV cache holds them from index 0. */
  for (int l = lo->layer_begin; l < lo->layer_end; l++) {
    SS_TRACE_BEGIN(t_layer);
    const ss_layer_weights *L = &m->layers[l];
    const ss_kv_layer kvl = ss_kv_cache_layer(kv, l - lo->layer_begin);
    /* attention */
    be->rmsnorm(be, st->x, L->attn_norm, n, c->dim, c->rms_eps, st->xb);
    be->matmul(be, &L->wq, st->xb, n, st->q);
    be->matmul(be, &L->wk, st->xb, n, st->k);
    be->matmul(be, &L->wv, st->xb, n, st->v);
    count_read(m, &L->wq, false);
    count_read(m, &L->wk, false);
    count_read(m, &L->wv, false);
    be->rope(be, st->q, b->loc.pos, n, &rq);
    be->rope(be, st->k, b->loc.pos, n, &rk);
    be->kv_store(be, &kvl, &b->loc, st->k, st->v);
    be->attention(be, &kvl, &b->loc, st->q, &ap, st->att);
    ss_model_matmul_cut(m, st, &L->wo, &L->wo_edge, st->att, n, st->xb2);
    count_read(m, &L->wo, false);
    if ((rc = allreduce(m, be, st->xb2, n * c->dim, "attention", l))) return rc;
    if (L->post_attn_norm)
      be->rmsnorm(be, st->xb2, L->post_attn_norm, n, c->dim, c->rms_eps, st->xb2);
    be->add(be, st->x, st->xb2, n * c->dim);
    /* MLP and / or mixture of experts */
    be->rmsnorm(be, st->x, L->ffn_norm, n, c->dim, c->rms_eps, st->xb);
    if (lo->ffn_dim > 0) {
      be->matmul(be, &L->w_gate, st->xb, n, st->hb);
      be->matmul(be, &L->w_up, st->xb, n, st->hb2);
      if (c->act == SS_ACT_SILU) be->swiglu(be, st->hb, st->hb2, n * lo->ffn_dim, st->hb);
      else be->gelu_mul(be, st->hb, st->hb2, n * lo->ffn_dim, c->act == SS_ACT_GELU_TANH, st->hb);
      ss_model_matmul_cut(m, st, &L->w_down, &L->down_edge, st->hb, n, st->xb2);
      count_read(m, &L->w_gate, false);
      count_read(m, &L->w_up, false);
      count_read(m, &L->w_down, false);
    } else {
      be->memset(be, st->xb2, 0, (size_t)(n * c->dim) * sizeof(float));
    }
    if (c->n_expert > 0) {
      ss_moe_forward(m, L, st, n, st->xb, st->moe);
      if (c->dense_mlp) {
        /* Grok-2: (dense + MoE) / sqrt(2), taken on each rank's partial sums
         * before the one all-reduce (the division distributes over the sum). */
        be->add(be, st->xb2, st->moe, n * c->dim);
        if (c->residual_moe) be->scale(be, st->xb2, n * c->dim, (float)M_SQRT1_2);
      } else {
        memcpy(st->xb2, st->moe, (size_t)(n * c->dim) * sizeof(float));
      }
    }
    if ((rc = allreduce(m, be, st->xb2, n * c->dim, c->n_expert > 0 ? "MoE" : "MLP", l)))
      return rc;
    if (L->post_ffn_norm)
      be->rmsnorm(be, st->xb2, L->post_ffn_norm, n, c->dim, c->rms_eps, st->xb2);
    be->add(be, st->x, st->xb2, n * c->dim);
    if (ss_trace_on())
      ss_trace_span("layer", "compute", t_layer, ss_now_s(), (ss_trace_arg[]){{"layer", l}}, 1);
  }
  /* Not the last stage: the residual stream goes on to the same tensor-
   * parallel rank of the next stage (every rank of a stage holds all of it). */
  if (lo->stage < lo->pp - 1)
    return stage_send(m, st->x, (size_t)(n * c->dim) * sizeof(float), lo->stage + 1,
                      PP_TAG_HIDDEN, "the hidden states");
  if (b->n_logits == 0) return SS_OK;
  SS_TRACE_BEGIN(t_head);
  be->gather_rows(be, st->x, b->logit_rows, b->n_logits, c->dim, st->xl);
  be->rmsnorm(be, st->xl, m->output_norm, b->n_logits, c->dim, c->rms_eps, st->xl);
  /* Vocabulary-parallel: every rank its rows.  Whole LM head on every rank:
   * rank 0 alone needs the logits.  Device backends write device memory,
   * copied out after the step. */
  if (vp) {
    be->matmul(be, &m->output, st->xl, b->n_logits, st->lg);
    count_read(m, &m->output, false);
    finish_logits(m, be, st->lg, b->n_logits * ss_range_len(m->plan.ranks[lo->rank].vocab));
  } else if (!distributed(m) || lo->rank == 0) {
    float *out = be->device ? st->lgd : logits;
    be->matmul(be, &m->output, st->xl, b->n_logits, out);
    count_read(m, &m->output, false);
    finish_logits(m, be, out, b->n_logits * (int64_t)c->vocab);
  }
  if (ss_trace_on())
    ss_trace_span("lm head", "compute", t_head, ss_now_s(),
                  (ss_trace_arg[]){{"logits", b->n_logits}}, 1);
  return SS_OK;
}

/* This rank's share of one forward pass (every rank of its stage runs it on
 * the same batch): the step on the backend, then the logits to the stage's
 * rank 0's host memory. */
static int forward_stage(const ss_model *m, ss_forward_state *st, ss_kv_cache *kv,
                         const ss_batch *b, float *logits) {
  const ss_model_config *c = &m->cfg;
  const ss_model_local *lo = &m->local;
  ss_backend *be = st->be;
  if (b->n <= 0 || b->n > st->max_tokens || b->n_logits < 0 || b->n_logits > st->max_logits)
    return ss_error(SS_ERR_INVALID, "forward: batch of %lld tokens / %lld logit rows exceeds "
                    "the state's %lld / %lld", (long long)b->n, (long long)b->n_logits,
                    (long long)st->max_tokens, (long long)st->max_logits);
  for (int64_t i = 0; i < b->n_logits; i++)
    SS_ASSERT(b->logit_rows[i] >= 0 && b->logit_rows[i] < b->n);
  int rc = SS_ERR_AGAIN;
  /* A device backend that ran none of a step (its graph capture failed) asks
   * for it once more and runs it eagerly then. */
  for (int attempt = 0; rc == SS_ERR_AGAIN && attempt < 2; attempt++) {
    rc = be->step_begin ? be->step_begin(be, &b->loc, b->n_logits, kv->block_size) : SS_OK;
    if (rc) return rc;
    rc = forward_step(m, st, kv, b, logits);
    /* A device step always ends (a failed one too: a graph capture must close). */
    if (be->step_end) {
      int rc2 = be->step_end(be);
      if (!rc || rc2 == SS_ERR_AGAIN) rc = rc2;
    }
  }
  if (!rc && be->sync) {
    const ss_collective coll = distributed(m) ? collective_of(m->comm) : (ss_collective){0};
    rc = be->sync(be, distributed(m) ? &coll : NULL);
  }
  if (rc || b->n_logits == 0 || lo->stage != lo->pp - 1) return rc;
  const bool vp = distributed(m) && lo->vocab_parallel;
  if (!vp) {
    if (be->device && (!distributed(m) || lo->rank == 0))
      return be->download(be, logits, st->lgd,
                          (size_t)b->n_logits * (size_t)c->vocab * sizeof(float));
    return SS_OK;
  }
  /* Vocabulary-parallel LM head: each rank's rows, gathered on rank 0. */
  const int tp = lo->tp;
  size_t *nbytes = malloc((size_t)tp * sizeof *nbytes);
  if (!nbytes) return ss_error(SS_ERR_NOMEM, "out of memory");
  size_t total = 0;
  for (int r = 0; r < tp; r++) {
    nbytes[r] = (size_t)b->n_logits * (size_t)ss_range_len(m->plan.ranks[r].vocab) * sizeof(float);
    total += nbytes[r];
  }
  rc = ss_comm_gatherv(m->comm, st->lg, st->lg_all, nbytes, 0);
  free(nbytes);
  if (rc) {
    char msg[512];
    snprintf(msg, sizeof msg, "%s", ss_error_msg());
    return ss_error(rc, "forward: gathering the logits: %s", msg);
  }
  if (lo->rank != 0) return SS_OK;
  const float *src = st->lg_all;
  if (be->device) {
    if ((rc = be->download(be, st->lg_host, st->lg_all, total))) return rc;
    src = st->lg_host;
  }
  /* Rank-major [rank][row][V_r] to row-major [row][V]. */
  for (int r = 0; r < tp; r++) {
    const ss_range vr = m->plan.ranks[r].vocab;
    const int64_t vn = ss_range_len(vr);
    for (int64_t i = 0; i < b->n_logits; i++, src += vn)
      memcpy(logits + i * c->vocab + vr.begin, src, (size_t)vn * sizeof(float));
  }
  return SS_OK;
}

/* The pass over every stage: the last stage's rank 0 holds the logits and
 * sends them to world rank 0 (stage 0's rank 0), which samples; with
 * wait_logits false, world rank 0 receives them later (ss_model_logits_recv). */
static int forward_local(const ss_model *m, ss_forward_state *st, ss_kv_cache *kv,
                         const ss_batch *b, float *logits, bool wait_logits) {
  const ss_model_local *lo = &m->local;
  if (lo->pp <= 1) return forward_stage(m, st, kv, b, logits);
  const bool head = lo->stage == lo->pp - 1 && lo->rank == 0;
  int rc = forward_stage(m, st, kv, b, head ? st->lg_pp : NULL);
  if (rc || b->n_logits == 0) return rc;
  const size_t nbytes = (size_t)b->n_logits * (size_t)m->cfg.vocab * sizeof(float);
  if (head) return stage_send(m, st->lg_pp, nbytes, 0, PP_TAG_LOGITS, "the logits");
  if (m->world->rank == 0 && wait_logits)
    return stage_recv(m, logits, nbytes, lo->pp - 1, PP_TAG_LOGITS, "the logits");
  return SS_OK;
}

static int forward_counted(const ss_model *m, ss_forward_state *st, ss_kv_cache *kv,
                           const ss_batch *b, float *logits, bool wait_logits) {
  const double t0 = ss_now_s();
  const double c0 = (m->comm ? m->comm->busy_s : 0.0) + (m->world ? m->world->busy_s : 0.0);
  /* The copies go before the step (and any graph the backend captures of
   * it): queued on the device in order, they precede its first write.  Under
   * --pp each stage copies its own layers when the step reaches it. */
  int rc = SS_OK;
  for (int64_t i = 0; i < b->n_copies && !rc; i++)
    rc = ss_kv_cache_copy_block(kv, b->copy_src[i], b->copy_dst[i]);
  if (!rc) rc = forward_local(m, st, kv, b, logits, wait_logits);
  const double comm =
      (m->comm ? m->comm->busy_s : 0.0) + (m->world ? m->world->busy_s : 0.0) - c0;
  if (ss_trace_on()) {
    /* A sequence's tokens are contiguous in a batch and share a block table. */
    int64_t seqs = 0;
    for (int64_t i = 0; i < b->n; i++)
      seqs += i == 0 || b->loc.block_table[i] != b->loc.block_table[i - 1];
    ss_trace_span("forward", "step", t0, ss_now_s(),
                  (ss_trace_arg[]){{"tokens", b->n}, {"seqs", seqs}, {"logits", b->n_logits}}, 3);
  }
  m->prof->steps++;
  m->prof->comm_s += comm;
  m->prof->compute_s += ss_now_s() - t0 - comm;
  return rc;
}

int ss_model_forward(const ss_model *m, ss_forward_state *st, ss_kv_cache *kv, const ss_batch *b,
                     float *logits) {
  return forward_counted(m, st, kv, b, logits, true);
}

int ss_model_forward_begin(const ss_model *m, ss_forward_state *st, ss_kv_cache *kv,
                           const ss_batch *b, float *logits) {
  return forward_counted(m, st, kv, b, logits, false);
}

int ss_model_logits_recv(const ss_model *m, int64_t n_logits, float *logits) {
  const ss_model_local *lo = &m->local;
  if (lo->pp <= 1 || m->world->rank != 0 || n_logits == 0) return SS_OK;
  /* Waiting for the last stage is this rank's share of the step's
   * communication, as it is inside ss_model_forward. */
  const double c0 = m->world->busy_s;
  int rc = stage_recv(m, logits, (size_t)n_logits * (size_t)m->cfg.vocab * sizeof(float),
                      lo->pp - 1, PP_TAG_LOGITS, "the logits");
  m->prof->comm_s += m->world->busy_s - c0;
  return rc;
}

ss_step_profile ss_model_profile(const ss_model *m) { return *m->prof; }
