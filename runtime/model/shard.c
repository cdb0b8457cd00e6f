#include "runtime/model/shard.h"

#include <stdlib.h>
#include <string.h>

#include "runtime/base/status.h"
#include "runtime/model/model.h"

ss_range ss_range_split(int64_t n, int parts, int index) {
  const int64_t base = n / parts, extra = n % parts;
  const int64_t begin = index * base + (index < extra ? index : extra);
  return (ss_range){begin, begin + base + (index < extra ? 1 : 0)};
}

/* Bytes of rows [r.begin, r.end) of w. */
static uint64_t rows_nbytes(const ss_weight *w, ss_range r) {
  return (uint64_t)ss_range_len(r) * w->row_nbytes;
}

/* Bytes of columns [c.begin, c.end) of every row of w (c on block boundaries). */
static uint64_t cols_nbytes(const ss_weight *w, ss_range c) {
  const ss_dtype_info *ti = ss_dtype_get(w->type);
  return (uint64_t)w->rows * (uint64_t)(ss_range_len(c) / ti->block_count) * ti->block_nbytes;
}

/* Elements per quantization block of w's type (1 for plain types). */
static int64_t block_of(const ss_weight *w) { return ss_dtype_get(w->type)->block_count; }

static void bytes_add(ss_shard_bytes *b) {
  b->total = b->attn + b->mlp + b->moe + b->embd + b->head + b->norm;
}

static uint64_t numel(const ss_weight *w) { return (uint64_t)w->rows * (uint64_t)w->cols; }

/* Columns are split in whole blocks of the type of every matrix cut by columns. */
static int64_t split_unit(const ss_weight *downs, int64_t count) {
  int64_t unit = 1;
  for (int64_t i = 0; i < count; i++)
    if (block_of(&downs[i]) > unit) unit = block_of(&downs[i]);
  return unit;
}

ss_col_cut ss_shard_col_cut(ss_range c, int64_t block) {
  ss_col_cut k = {{c.begin, c.begin}, 0, 0};
  if (block <= 1) {
    k.mid = c;
    return k;
  }
  const int64_t a0 = (c.begin + block - 1) / block * block;
  if (a0 > c.end) { /* inside one block: an empty mid at its start */
    k.mid = (ss_range){c.begin / block * block, c.begin / block * block};
    k.lo = ss_range_len(c);
    return k;
  }
  int64_t a1 = c.end / block * block;
  if (a1 < a0) a1 = a0;
  k.mid = (ss_range){a0, a1};
  k.lo = a0 - c.begin;
  k.hi = c.end - a1;
  return k;
}

/* Bytes rank holds of w cut at columns c: the aligned part as stored, the
 * straddled columns as f32 (added to *edge too). */
static uint64_t cut_nbytes(const ss_weight *w, ss_range c, uint64_t *edge) {
  const ss_col_cut k = ss_shard_col_cut(c, block_of(w));
  const uint64_t e = (uint64_t)w->rows * (uint64_t)(k.lo + k.hi) * sizeof(float);
  *edge += e;
  return cols_nbytes(w, k.mid) + e;
}

/* The split unit of a width of n MLP (n_exp == 0: the dense down projections)
 * or expert columns (the n_exp experts' downs) of every layer on tp ranks:
 * the largest block when there are at least tp whole ones, else 32 when the
 * width has at least tp groups of 32, else 1 (see ss_shard_plan_make). */
static int64_t mlp_unit(const ss_layer_weights *layers, int64_t n_layer, int64_t n_exp, int64_t n,
                        int tp) {
  int64_t unit = 1;
  for (int64_t l = 0; l < n_layer; l++) {
    const int64_t u = n_exp ? split_unit(layers[l].exp_down, n_exp) : block_of(&layers[l].w_down);
    if (u > unit) unit = u;
  }
  if (n % unit == 0 && n / unit >= tp) return unit;
  if (n % 32 == 0 && n / 32 >= tp) return 32;
  return 1;
}

/* Norm vectors per layer (2, or 4 with post-norms), plus the final one. */
uint64_t ss_shard_norm_nbytes_of(const struct ss_model_config *c, int64_t n_layer, bool final) {
  return (uint64_t)((c->post_norms ? 4 : 2) * n_layer + (final ? 1 : 0)) * (uint64_t)c->dim *
         sizeof(float);
}
uint64_t ss_shard_norm_nbytes(const struct ss_model_config *c) {
  return ss_shard_norm_nbytes_of(c, c->n_layer, true);
}

int ss_pp_layers(int n_layer, int pp, const int *sizes, int stage, ss_range *out) {
  if (pp < 1 || pp > n_layer)
    return ss_error(SS_ERR_RANGE, "--pp %d is outside 1..%d (the model's layers: every stage "
                    "needs at least one)", pp, n_layer);
  if (stage < 0 || stage >= pp)
    return ss_error(SS_ERR_RANGE, "pipeline stage %d is outside 0..%d", stage, pp - 1);
  if (!sizes) {
    *out = ss_range_split(n_layer, pp, stage);
    return SS_OK;
  }
  int64_t sum = 0, begin = 0;
  for (int s = 0; s < pp; s++) {
    if (sizes[s] < 1)
      return ss_error(SS_ERR_RANGE, "--pp-layers: stage %d has %d layers; every stage needs at "
                      "least 1", s, sizes[s]);
    if (s == stage) begin = sum;
    sum += sizes[s];
  }
  if (sum != n_layer)
    return ss_error(SS_ERR_RANGE, "--pp-layers: the stages' layers sum to %lld, but the model "
                    "has %d layers", (long long)sum, n_layer);
  *out = (ss_range){begin, begin + sizes[stage]};
  return SS_OK;
}

int ss_shard_plan_make(const ss_model *m, const ss_shard_opts *o, ss_shard_plan *out) {
  memset(out, 0, sizeof *out);
  const ss_model_config *c = &m->cfg;
  const int tp = o->tp;
  if (tp < 1 || tp > 4096)
    return ss_error(SS_ERR_RANGE, "tensor-parallel degree %d is outside 1..4096", tp);
  if (tp > c->n_head)
    return ss_error(SS_ERR_RANGE, "--tp %d exceeds the model's %d query heads: every rank needs "
                    "at least one head", tp, c->n_head);
  const int64_t D = c->head_dim, C = c->dim, L = c->n_layer, E = c->n_expert;
  const int group = c->n_head / c->n_kv_head;
  const bool moe = E > 0;
  /* This stage's layers, and whether it holds the embedding and the head. */
  const bool staged = o->pp > 1;
  const int64_t Lb = staged ? o->layers.begin : 0, Le = staged ? o->layers.end : L;
  const bool first = !staged || o->stage == 0, last = !staged || o->stage == o->pp - 1;
  if (staged && (o->stage < 0 || o->stage >= o->pp || Lb < 0 || Le > L || Lb >= Le))
    return ss_error(SS_ERR_RANGE, "pipeline stage %d of %d: layers [%lld, %lld) outside the "
                    "model's %lld", o->stage, o->pp, (long long)Lb, (long long)Le, (long long)L);
  if (o->expert_parallel && !moe)
    return ss_error(SS_ERR_RANGE, "--ep: the model has no experts (a dense %s model)", c->arch);

  /* MLP columns.  With at least as many whole blocks of the down projection's
   * type as ranks, the split is in whole blocks: no rank holds an f32 edge,
   * the down projection runs entirely on the quantized kernels, and the ranks'
   * widths differ by at most one block (a few percent of a real model's MLP).
   * Otherwise (fewer blocks than ranks: 512 columns of 256-column K-quant
   * blocks on 3 ranks) the columns are split evenly, in groups of 32 where
   * that leaves one per rank, and the straddled blocks become f32 edges.  So
   * straddling complements the rounding: it makes every degree possible, and
   * the rounding keeps the common case free of edges. */
  const int64_t unit = c->dense_mlp ? mlp_unit(m->layers, L, 0, c->ffn_dim, tp) : 1;
  if (c->dense_mlp && c->ffn_dim < tp)
    return ss_error(SS_ERR_RANGE, "--tp %d exceeds the MLP width of %d columns: every rank needs "
                    "at least one", tp, c->ffn_dim);
  int64_t eunit = 1;
  if (moe) {
    eunit = mlp_unit(m->layers, L, E, c->expert_ffn_dim, tp);
    if (o->expert_parallel && E < tp)
      return ss_error(SS_ERR_RANGE, "--ep %d exceeds the model's %lld experts: every rank needs "
                      "at least one expert", tp, (long long)E);
    if (!o->expert_parallel && c->expert_ffn_dim < tp)
      return ss_error(SS_ERR_RANGE, "--tp %d exceeds the expert width of %d columns: every rank "
                      "needs at least one", tp, c->expert_ffn_dim);
  }
  if (o->vocab_parallel && c->vocab < tp)
    return ss_error(SS_ERR_RANGE, "--tp %d exceeds the vocabulary size %d", tp, c->vocab);
  out->opts = *o;
  out->ffn_unit = unit;
  out->expert_ffn_unit = eunit;
  out->ranks = calloc((size_t)tp, sizeof *out->ranks);
  if (!out->ranks) return ss_error(SS_ERR_NOMEM, "out of memory");
  /* The KV cache's own element sizes (kv_cache.h), the figures serve's pool uses. */
  const uint64_t kv_elem = ss_kv_dtype_nbytes(o->kv_type) ? ss_kv_dtype_nbytes(o->kv_type)
                                                           : sizeof(float);

  /* The unsharded model, as stored. */
  ss_shard_bytes *f = &out->file;
  /* A tied embedding is the head too: counted as the embedding where the
   * stage has both, as the head on a last stage without the embedding. */
  const ss_range all_rows = {0, c->vocab};
  f->embd = first ? rows_nbytes(&m->tok_embd, all_rows) : 0;
  f->head = !last ? 0
            : c->tied_output ? (first ? 0 : rows_nbytes(&m->tok_embd, all_rows))
                             : rows_nbytes(&m->output, all_rows);
  f->norm = ss_shard_norm_nbytes_of(c, Le - Lb, last);
  out->n_params = numel(&m->tok_embd) + (c->tied_output ? 0 : numel(&m->output)) +
                  ss_shard_norm_nbytes(c) / sizeof(float);
  uint64_t unused_params = 0;
  ss_shard_bytes whole = {0}; /* every layer's, for the parameter count */
  for (int l = 0; l < L; l++) {
    const ss_layer_weights *W = &m->layers[l];
    ss_shard_bytes *fb = l >= Lb && l < Le ? &out->file : &whole;
    fb->attn += rows_nbytes(&W->wq, (ss_range){0, W->wq.rows}) +
               rows_nbytes(&W->wk, (ss_range){0, W->wk.rows}) +
               rows_nbytes(&W->wv, (ss_range){0, W->wv.rows}) +
               rows_nbytes(&W->wo, (ss_range){0, W->wo.rows});
    out->n_params += numel(&W->wq) + numel(&W->wk) + numel(&W->wv) + numel(&W->wo);
    if (c->dense_mlp) {
      fb->mlp += rows_nbytes(&W->w_gate, (ss_range){0, W->w_gate.rows}) +
                rows_nbytes(&W->w_up, (ss_range){0, W->w_up.rows}) +
                rows_nbytes(&W->w_down, (ss_range){0, W->w_down.rows});
      out->n_params += numel(&W->w_gate) + numel(&W->w_up) + numel(&W->w_down);
    }
    if (moe) {
      fb->moe += rows_nbytes(&W->router, (ss_range){0, E});
      out->n_params += numel(&W->router);
      for (int64_t e = 0; e < E; e++) {
        const uint64_t eb = rows_nbytes(&W->exp_gate[e], (ss_range){0, W->exp_gate[e].rows}) +
                            rows_nbytes(&W->exp_up[e], (ss_range){0, W->exp_up[e].rows}) +
                            rows_nbytes(&W->exp_down[e], (ss_range){0, W->exp_down[e].rows});
        const uint64_t ep = numel(&W->exp_gate[e]) + numel(&W->exp_up[e]) + numel(&W->exp_down[e]);
        fb->moe += eb;
        out->n_params += ep;
        if (l == 0 && e == 0) out->expert_nbytes = eb;
        if (e >= c->n_expert_used) unused_params += ep; /* experts are alike in size */
      }
    }
  }
  out->n_active_params = out->n_params - unused_params;
  bytes_add(f);
  const int64_t SL = Le - Lb; /* the stage's layers */
  out->kv_nbytes_per_token = 2ull * (uint64_t)SL * (uint64_t)c->n_kv_head * (uint64_t)D * kv_elem;
  out->n_allreduce_per_token =
      tp > 1 ? (int)(2 * SL + (o->vocab_parallel && first ? 1 : 0)) : 0;
  out->allreduce_payload_nbytes = (uint64_t)C * sizeof(float);
  out->gather_nbytes_per_token =
      tp > 1 && o->vocab_parallel && last ? (uint64_t)c->vocab * sizeof(float) : 0;

  for (int r = 0; r < tp; r++) {
    ss_shard_rank *R = &out->ranks[r];
    R->heads = ss_range_split(c->n_head, tp, r);
    R->kv_heads = (ss_range){R->heads.begin / group, (R->heads.end - 1) / group + 1};
    if (c->dense_mlp) {
      ss_range u = ss_range_split(c->ffn_dim / unit, tp, r);
      R->ffn = (ss_range){u.begin * unit, u.end * unit};
    }
    if (moe) {
      if (o->expert_parallel) {
        R->experts = ss_range_split(E, tp, r);
        R->expert_ffn = (ss_range){0, c->expert_ffn_dim};
      } else {
        R->experts = (ss_range){0, E};
        ss_range u = ss_range_split(c->expert_ffn_dim / eunit, tp, r);
        R->expert_ffn = (ss_range){u.begin * eunit, u.end * eunit};
      }
    }
    R->vocab = o->vocab_parallel ? ss_range_split(c->vocab, tp, r) : (ss_range){0, c->vocab};
    const ss_range q_rows = {R->heads.begin * D, R->heads.end * D};
    const ss_range kv_rows = {R->kv_heads.begin * D, R->kv_heads.end * D};
    ss_shard_bytes *b = &R->bytes;
    for (int64_t l = Lb; l < Le; l++) {
      const ss_layer_weights *W = &m->layers[l];
      b->attn += rows_nbytes(&W->wq, q_rows) + rows_nbytes(&W->wk, kv_rows) +
                 rows_nbytes(&W->wv, kv_rows) + cut_nbytes(&W->wo, q_rows, &R->edge_nbytes);
      if (c->dense_mlp)
        b->mlp += rows_nbytes(&W->w_gate, R->ffn) + rows_nbytes(&W->w_up, R->ffn) +
                  cut_nbytes(&W->w_down, R->ffn, &R->edge_nbytes);
      if (moe) {
        b->moe += rows_nbytes(&W->router, (ss_range){0, E});
        for (int64_t e = R->experts.begin; e < R->experts.end; e++)
          b->moe += rows_nbytes(&W->exp_gate[e], R->expert_ffn) +
                    rows_nbytes(&W->exp_up[e], R->expert_ffn) +
                    cut_nbytes(&W->exp_down[e], R->expert_ffn, &R->edge_nbytes);
      }
    }
    b->embd = first ? rows_nbytes(&m->tok_embd, R->vocab) : 0;
    b->head = !last ? 0
              : c->tied_output ? (first ? 0 : rows_nbytes(&m->tok_embd, R->vocab))
                               : rows_nbytes(&m->output, R->vocab);
    b->norm = f->norm;
    bytes_add(b);
    /* Held by another rank too: the norms and routers everywhere but rank 0,
     * the K/V rows of a KV head the previous rank also holds, and a
     * replicated vocabulary. */
    uint64_t rep = r > 0 ? b->norm : 0;
    if (r > 0 && moe)
      for (int64_t l = Lb; l < Le; l++) rep += rows_nbytes(&m->layers[l].router, (ss_range){0, E});
    if (r > 0 && R->kv_heads.begin < out->ranks[r - 1].kv_heads.end) {
      const ss_range shared = {R->kv_heads.begin * D, out->ranks[r - 1].kv_heads.end * D};
      for (int64_t l = Lb; l < Le; l++)
        rep += rows_nbytes(&m->layers[l].wk, shared) + rows_nbytes(&m->layers[l].wv, shared);
    }
    if (r > 0 && !o->vocab_parallel) rep += b->embd + b->head;
    R->replicated_nbytes = rep;
    R->kv_nbytes_per_token = 2ull * (uint64_t)SL * (uint64_t)ss_range_len(R->kv_heads) *
                             (uint64_t)D * kv_elem;
    /* Ring all-reduce: each rank sends 2(n-1)/n of the payload. */
    uint64_t ar = (uint64_t)out->n_allreduce_per_token * out->allreduce_payload_nbytes *
                  2 * (uint64_t)(tp - 1) / (uint64_t)tp;
    uint64_t gather = out->gather_nbytes_per_token == 0 ? 0
                      : r == 0 ? (uint64_t)(c->vocab - ss_range_len(R->vocab)) * sizeof(float)
                               : (uint64_t)ss_range_len(R->vocab) * sizeof(float);
    R->pp_send_nbytes_per_token = last ? 0 : (uint64_t)C * sizeof(float);
    R->comm_nbytes_per_token = ar + gather;
    out->total_weight_nbytes += b->total;
    out->edge_nbytes += R->edge_nbytes;
  }
  for (int r = 0; r < tp; r++) out->replicated_nbytes += out->ranks[r].replicated_nbytes;
  /* Every byte of the file is held by one rank, or replicated, or (a
   * straddled block) by none, its columns held as f32 edges instead. */
  out->straddled_nbytes = f->total + out->replicated_nbytes + out->edge_nbytes -
                          out->total_weight_nbytes;
  return SS_OK;
}

void ss_shard_plan_free(ss_shard_plan *p) {
  free(p->ranks);
  memset(p, 0, sizeof *p);
}
