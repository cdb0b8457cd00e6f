#include "runtime/shard.h"

#include <stdlib.h>
#include <string.h>

#include "runtime/model.h"
#include "runtime/status.h"

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

static bool is_blocked(const ss_weight *w) { return ss_dtype_get(w->type)->block_count > 1; }

static void bytes_add(ss_shard_bytes *b) { b->total = b->attn + b->mlp + b->embd + b->head + b->norm; }

int ss_shard_plan_make(const ss_model *m, const ss_shard_opts *o, ss_shard_plan *out) {
  memset(out, 0, sizeof *out);
  const ss_model_config *c = &m->cfg;
  const int tp = o->tp;
  if (tp < 1 || tp > 4096)
    return ss_error(SS_ERR_RANGE, "tensor-parallel degree %d is outside 1..4096", tp);
  if (tp > c->n_head)
    return ss_error(SS_ERR_RANGE, "--tp %d exceeds the model's %d query heads: every rank needs "
                    "at least one head", tp, c->n_head);
  const int64_t D = c->head_dim, C = c->dim, L = c->n_layer;
  const int group = c->n_head / c->n_kv_head;

  /* MLP columns: whole blocks of the down projection's type in every layer. */
  int64_t unit = 1;
  for (int l = 0; l < L; l++)
    if (is_blocked(&m->layers[l].w_down)) unit = SS_QK;
  if (c->ffn_dim % unit != 0 || c->ffn_dim / unit < tp)
    return ss_error(SS_ERR_RANGE, "--tp %d: the MLP width %d splits into %lld units of %lld "
                    "columns, fewer than the ranks", tp, c->ffn_dim,
                    (long long)(c->ffn_dim / unit), (long long)unit);
  if (o->vocab_parallel && c->vocab < tp)
    return ss_error(SS_ERR_RANGE, "--tp %d exceeds the vocabulary size %d", tp, c->vocab);
  out->opts = *o;
  out->ffn_unit = unit;
  out->ranks = calloc((size_t)tp, sizeof *out->ranks);
  if (!out->ranks) return ss_error(SS_ERR_NOMEM, "out of memory");

  /* The unsharded model, as stored. */
  ss_shard_bytes *f = &out->file;
  f->embd = rows_nbytes(&m->tok_embd, (ss_range){0, c->vocab});
  f->head = c->tied_output ? 0 : rows_nbytes(&m->output, (ss_range){0, c->vocab});
  f->norm = (uint64_t)(2 * L + 1) * (uint64_t)C * sizeof(float);
  for (int l = 0; l < L; l++) {
    const ss_layer_weights *W = &m->layers[l];
    f->attn += rows_nbytes(&W->wq, (ss_range){0, W->wq.rows}) +
               rows_nbytes(&W->wk, (ss_range){0, W->wk.rows}) +
               rows_nbytes(&W->wv, (ss_range){0, W->wv.rows}) +
               rows_nbytes(&W->wo, (ss_range){0, W->wo.rows});
    f->mlp += rows_nbytes(&W->w_gate, (ss_range){0, W->w_gate.rows}) +
              rows_nbytes(&W->w_up, (ss_range){0, W->w_up.rows}) +
              rows_nbytes(&W->w_down, (ss_range){0, W->w_down.rows});
  }
  bytes_add(f);
  out->kv_nbytes_per_token = 2ull * (uint64_t)L * (uint64_t)c->n_kv_head * (uint64_t)D * sizeof(float);
  out->n_allreduce_per_token = tp > 1 ? (int)(2 * L + (o->vocab_parallel ? 1 : 0)) : 0;
  out->allreduce_payload_nbytes = (uint64_t)C * sizeof(float);
  out->gather_nbytes_per_token = tp > 1 && o->vocab_parallel ? (uint64_t)c->vocab * sizeof(float) : 0;

  for (int r = 0; r < tp; r++) {
    ss_shard_rank *R = &out->ranks[r];
    R->heads = ss_range_split(c->n_head, tp, r);
    R->kv_heads = (ss_range){R->heads.begin / group, (R->heads.end - 1) / group + 1};
    ss_range u = ss_range_split(c->ffn_dim / unit, tp, r);
    R->ffn = (ss_range){u.begin * unit, u.end * unit};
    R->vocab = o->vocab_parallel ? ss_range_split(c->vocab, tp, r) : (ss_range){0, c->vocab};
    const ss_range q_rows = {R->heads.begin * D, R->heads.end * D};
    const ss_range kv_rows = {R->kv_heads.begin * D, R->kv_heads.end * D};
    ss_shard_bytes *b = &R->bytes;
    for (int l = 0; l < L; l++) {
      const ss_layer_weights *W = &m->layers[l];
      if (is_blocked(&W->wo) && (q_rows.begin % SS_QK || q_rows.end % SS_QK)) {
        ss_shard_plan_free(out);
        return ss_error(SS_ERR_UNSUPPORTED, "--tp %d: rank %d's heads [%lld, %lld) cut the "
                        "quantization blocks of blk.%d.attn_output (head dim %lld)", tp, r,
                        (long long)R->heads.begin, (long long)R->heads.end, l, (long long)D);
      }
      b->attn += rows_nbytes(&W->wq, q_rows) + rows_nbytes(&W->wk, kv_rows) +
                 rows_nbytes(&W->wv, kv_rows) + cols_nbytes(&W->wo, q_rows);
      b->mlp += rows_nbytes(&W->w_gate, R->ffn) + rows_nbytes(&W->w_up, R->ffn) +
                cols_nbytes(&W->w_down, R->ffn);
    }
    b->embd = rows_nbytes(&m->tok_embd, R->vocab);
    b->head = c->tied_output ? 0 : rows_nbytes(&m->output, R->vocab);
    b->norm = f->norm;
    bytes_add(b);
    /* Held by another rank too: the norms everywhere but rank 0, the K/V rows of
     * a KV head the previous rank also holds, and a replicated vocabulary. */
    uint64_t rep = r > 0 ? b->norm : 0;
    if (r > 0 && R->kv_heads.begin < out->ranks[r - 1].kv_heads.end) {
      const ss_range shared = {R->kv_heads.begin * D, out->ranks[r - 1].kv_heads.end * D};
      for (int l = 0; l < L; l++)
        rep += rows_nbytes(&m->layers[l].wk, shared) + rows_nbytes(&m->layers[l].wv, shared);
    }
    if (r > 0 && !o->vocab_parallel) rep += b->embd + b->head;
    R->replicated_nbytes = rep;
    R->kv_nbytes_per_token = 2ull * (uint64_t)L * (uint64_t)ss_range_len(R->kv_heads) *
                             (uint64_t)D * sizeof(float);
    /* Ring all-reduce: each rank sends 2(n-1)/n of the payload. */
    uint64_t ar = (uint64_t)out->n_allreduce_per_token * out->allreduce_payload_nbytes *
                  2 * (uint64_t)(tp - 1) / (uint64_t)tp;
    uint64_t gather = out->gather_nbytes_per_token == 0 ? 0
                      : r == 0 ? (uint64_t)(c->vocab - ss_range_len(R->vocab)) * sizeof(float)
                               : (uint64_t)ss_range_len(R->vocab) * sizeof(float);
    R->comm_nbytes_per_token = ar + gather;
    out->total_weight_nbytes += b->total;
  }
  out->replicated_nbytes = out->total_weight_nbytes - f->total;
  return SS_OK;
}

void ss_shard_plan_free(ss_shard_plan *p) {
  free(p->ranks);
  memset(p, 0, sizeof *p);
}
