/* Cutting a loaded model down to one rank's shard (runtime/shard.h's plan),
 * and paging the shard in.  Serves GGUF files and safetensors folders alike:
 * a weight's bytes are found through the mapping that holds them. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "comm/comm.h"
#include "runtime/model_internal.h"
#include "runtime/safetensors.h"
#include "runtime/status.h"

int ss_model_own(ss_model *m, void *p) {
  if (!p) return ss_error(SS_ERR_NOMEM, "out of memory");
  void **owned = realloc(m->owned, (size_t)(m->n_owned + 1) * sizeof *owned);
  if (!owned) {
    free(p);
    return ss_error(SS_ERR_NOMEM, "out of memory");
  }
  m->owned = owned;
  m->owned[m->n_owned++] = p;
  return SS_OK;
}

uint64_t ss_weight_nbytes(const ss_weight *w) { return (uint64_t)w->rows * w->row_nbytes; }

/* The file holding p and p's offset in it. */
static const char *source_of(const ss_model *m, const void *p, uint64_t *off) {
  const uint8_t *b = p;
  if (m->gguf) {
    *off = (uint64_t)(b - m->gguf->map);
    return m->gguf->path;
  }
  for (int i = 0; i < m->st->n_files; i++) {
    const ss_st_file *f = &m->st->files[i];
    if (b >= f->map && b < f->map + f->size) {
      *off = (uint64_t)(b - f->map);
      return f->path;
    }
  }
  SS_ASSERT(0 && "weight outside every mapping");
  return NULL;
}

/* ------------------------------------------------------------------------ */
/* Tensor-parallel slices                                                     */

/* Rows [r.begin, r.end) of w: a view into the mapping (only those pages are
 * ever touched). */
static ss_weight slice_rows(const ss_weight *w, ss_range r) {
  ss_weight s = *w;
  s.rows = ss_range_len(r);
  s.data = (const uint8_t *)w->data + (size_t)r.begin * w->row_nbytes;
  if (w->row_scale) s.row_scale = w->row_scale + r.begin;
  return s;
}

/* Columns [c.begin, c.end) of every row of w, which are not contiguous in the
 * file: read with pread into memory of our own, so the mapping's pages of other
 * ranks' columns are never brought into this process. */
static int slice_cols(ss_model *m, const char *name, const ss_weight *w, ss_range c,
                      ss_weight *out) {
  const ss_dtype_info *ti = ss_dtype_get(w->type);
  SS_ASSERT(c.begin % ti->block_count == 0 && c.end % ti->block_count == 0);
  const size_t off_in_row = (size_t)(c.begin / ti->block_count) * ti->block_nbytes;
  const size_t row_nbytes = (size_t)(ss_range_len(c) / ti->block_count) * ti->block_nbytes;
  uint64_t file_off;
  const char *path = source_of(m, w->data, &file_off);
  uint8_t *buf = NULL;
  size_t total = (size_t)w->rows * row_nbytes;
  if (posix_memalign((void **)&buf, 64, total ? total : 64))
    return ss_error(SS_ERR_NOMEM, "%s: cannot allocate %zu bytes for a slice of '%s'", path,
                    total, name);
  int rc = ss_model_own(m, buf);
  if (rc) return rc;
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return ss_error(SS_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
  for (int64_t r = 0; r < w->rows && rc == SS_OK; r++) {
    const uint64_t at = file_off + (uint64_t)r * w->row_nbytes + off_in_row;
    size_t done = 0;
    while (done < row_nbytes) {
      ssize_t k = pread(fd, buf + (size_t)r * row_nbytes + done, row_nbytes - done,
                        (off_t)(at + done));
      if (k < 0 && errno == EINTR) continue;
      if (k <= 0) {
        rc = ss_error(SS_ERR_IO, "%s: reading a slice of '%s' at offset %llu: %s", path, name,
                      (unsigned long long)(at + done),
                      k < 0 ? strerror(errno) : "unexpected end of file");
        break;
      }
      done += (size_t)k;
    }
  }
  close(fd);
  if (rc) return rc;
  *out = *w;
  out->cols = ss_range_len(c);
  out->row_nbytes = row_nbytes;
  out->data = buf;
  return SS_OK;
}

/* A weight's name for messages: GGUF's, or a generic one for HF folders. */
static const char *wname(const ss_model *m, char *buf, size_t cap, int l, const char *gguf_suffix,
                         const char *what) {
  if (m->gguf) snprintf(buf, cap, "blk.%d.%s", l, gguf_suffix);
  else snprintf(buf, cap, "layer %d %s", l, what);
  return buf;
}

/* Replaces the whole-model weights bound at load with rank `rank`'s slices of
 * the plan, and checks the bytes bound against the plan's figures. */
static int shard_weights(ss_model *m, int rank) {
  const ss_model_config *c = &m->cfg;
  const ss_shard_rank *R = &m->plan.ranks[rank];
  const int64_t D = c->head_dim;
  const ss_range q_rows = {R->heads.begin * D, R->heads.end * D};
  const ss_range kv_rows = {R->kv_heads.begin * D, R->kv_heads.end * D};
  ss_shard_bytes *b = &m->loaded;
  memset(b, 0, sizeof *b);
  int rc = SS_OK;
  for (int l = 0; l < c->n_layer && rc == SS_OK; l++) {
    ss_layer_weights *L = &m->layers[l];
    char n[96];
    L->wq = slice_rows(&L->wq, q_rows);
    L->wk = slice_rows(&L->wk, kv_rows);
    L->wv = slice_rows(&L->wv, kv_rows);
    if ((rc = slice_cols(m, wname(m, n, sizeof n, l, "attn_output.weight", "o_proj"), &L->wo,
                         q_rows, &L->wo)))
      break;
    b->attn += ss_weight_nbytes(&L->wq) + ss_weight_nbytes(&L->wk) + ss_weight_nbytes(&L->wv) +
               ss_weight_nbytes(&L->wo);
    if (c->dense_mlp) {
      L->w_gate = slice_rows(&L->w_gate, R->ffn);
      L->w_up = slice_rows(&L->w_up, R->ffn);
      if ((rc = slice_cols(m, wname(m, n, sizeof n, l, "ffn_down.weight", "down_proj"),
                           &L->w_down, R->ffn, &L->w_down)))
        break;
      b->mlp += ss_weight_nbytes(&L->w_gate) + ss_weight_nbytes(&L->w_up) +
                ss_weight_nbytes(&L->w_down);
    }
    if (c->n_expert > 0) {
      b->moe += ss_weight_nbytes(&L->router);
      for (int e = 0; e < c->n_expert && rc == SS_OK; e++) {
        if (e < R->experts.begin || e >= R->experts.end) {
          /* Another rank's expert: never touched here. */
          L->exp_gate[e].data = L->exp_up[e].data = L->exp_down[e].data = NULL;
          continue;
        }
        snprintf(n, sizeof n, "layer %d expert %d down", l, e);
        L->exp_gate[e] = slice_rows(&L->exp_gate[e], R->expert_ffn);
        L->exp_up[e] = slice_rows(&L->exp_up[e], R->expert_ffn);
        if (ss_range_len(R->expert_ffn) != L->exp_down[e].cols &&
            (rc = slice_cols(m, n, &L->exp_down[e], R->expert_ffn, &L->exp_down[e])))
          break;
        b->moe += ss_weight_nbytes(&L->exp_gate[e]) + ss_weight_nbytes(&L->exp_up[e]) +
                  ss_weight_nbytes(&L->exp_down[e]);
      }
    }
  }
  if (rc) return rc;
  m->tok_embd = slice_rows(&m->tok_embd, R->vocab);
  m->output = c->tied_output ? m->tok_embd : slice_rows(&m->output, R->vocab);
  b->embd = ss_weight_nbytes(&m->tok_embd);
  b->head = c->tied_output ? 0 : ss_weight_nbytes(&m->output);
  b->norm = ss_shard_norm_nbytes(c);
  b->total = b->attn + b->mlp + b->moe + b->embd + b->head + b->norm;
  if (memcmp(b, &R->bytes, sizeof *b) != 0)
    return ss_error(SS_ERR_INTERNAL, "%s: rank %d bound %llu bytes of weights but its plan says "
                    "%llu", m->path, rank, (unsigned long long)b->total,
                    (unsigned long long)R->bytes.total);
  m->weight_nbytes = b->total;
  return SS_OK;
}

static void set_local(ss_model *m, int tp, int rank) {
  const ss_model_config *c = &m->cfg;
  ss_model_local *lo = &m->local;
  lo->tp = tp;
  lo->rank = rank;
  if (m->plan.ranks) {
    const ss_shard_rank *R = &m->plan.ranks[rank];
    lo->head_base = (int)R->heads.begin;
    lo->n_head = (int)ss_range_len(R->heads);
    lo->kv_head_base = (int)R->kv_heads.begin;
    lo->n_kv_head = (int)ss_range_len(R->kv_heads);
    lo->ffn_dim = (int)ss_range_len(R->ffn);
    lo->vocab_begin = R->vocab.begin;
    lo->vocab_end = R->vocab.end;
    lo->vocab_parallel = m->plan.opts.vocab_parallel;
    lo->expert_begin = (int)R->experts.begin;
    lo->expert_end = (int)R->experts.end;
    lo->expert_ffn_dim = (int)ss_range_len(R->expert_ffn);
    lo->expert_parallel = m->plan.opts.expert_parallel;
  } else {
    lo->n_head = c->n_head;
    lo->n_kv_head = c->n_kv_head;
    lo->ffn_dim = c->dense_mlp ? c->ffn_dim : 0;
    lo->vocab_end = c->vocab;
    lo->expert_end = c->n_expert;
    lo->expert_ffn_dim = c->expert_ffn_dim;
  }
}

int ss_model_shard(ss_model *m, const ss_model_load_opts *opts) {
  const int tp = opts->comm ? opts->comm->size : 1;
  const int rank = opts->comm ? opts->comm->rank : 0;
  m->comm = opts->comm;
  if (opts->expert_parallel && m->cfg.n_expert == 0)
    return ss_error(SS_ERR_RANGE, "%s: --ep needs a mixture-of-experts model; this %s model is "
                    "dense", m->path, m->cfg.arch);
  if (tp > 1) {
    ss_shard_opts so = {.tp = tp, .vocab_parallel = !opts->replicate_vocab,
                        .expert_parallel = opts->expert_parallel};
    int rc = ss_shard_plan_make(m, &so, &m->plan);
    if (rc) {
      char msg[512];
      snprintf(msg, sizeof msg, "%s", ss_error_msg());
      return ss_error(rc, "%s: %s", m->path, msg);
    }
    if ((rc = shard_weights(m, rank))) return rc;
  }
  set_local(m, tp, rank);
  return SS_OK;
}

/* ------------------------------------------------------------------------ */
/* Paging in                                                                  */

/* Touches every page of this rank's weights so later timings measure compute,
 * and reports progress (large files take a while to come in from disk). */
static void touch(const void *p, uint64_t nbytes, uint64_t *done, uint64_t total,
                  const ss_model_load_opts *o) {
  const uint8_t *b = p;
  const uint64_t step = 64ull << 20;
  volatile uint8_t sink = 0;
  for (uint64_t at = 0; at < nbytes;) {
    uint64_t end = at + step < nbytes ? at + step : nbytes;
    for (uint64_t i = at; i < end; i += 4096) sink ^= b[i];
    if (end > at) sink ^= b[end - 1];
    *done += end - at;
    at = end;
    if (o->progress) o->progress(o->progress_user, *done, total);
  }
  (void)sink;
}

void ss_model_prefault(const ss_model *m, const ss_model_load_opts *o) {
  const uint64_t total = m->weight_nbytes;
  uint64_t done = 0;
  const ss_model_config *c = &m->cfg;
  touch(m->tok_embd.data, ss_weight_nbytes(&m->tok_embd), &done, total, o);
  if (!c->tied_output) touch(m->output.data, ss_weight_nbytes(&m->output), &done, total, o);
  touch(m->output_norm, (uint64_t)c->dim * sizeof(float), &done, total, o);
  for (int l = 0; l < c->n_layer; l++) {
    const ss_layer_weights *L = &m->layers[l];
    const ss_weight *ws[] = {&L->wq, &L->wk, &L->wv, &L->wo, &L->w_gate, &L->w_up, &L->w_down,
                             &L->router};
    for (size_t i = 0; i < sizeof ws / sizeof *ws; i++)
      if (ws[i]->data) touch(ws[i]->data, ss_weight_nbytes(ws[i]), &done, total, o);
    for (int e = m->local.expert_begin; e < m->local.expert_end; e++) {
      touch(L->exp_gate[e].data, ss_weight_nbytes(&L->exp_gate[e]), &done, total, o);
      touch(L->exp_up[e].data, ss_weight_nbytes(&L->exp_up[e]), &done, total, o);
      touch(L->exp_down[e].data, ss_weight_nbytes(&L->exp_down[e]), &done, total, o);
    }
    touch(L->attn_norm, (uint64_t)c->dim * sizeof(float), &done, total, o);
    touch(L->ffn_norm, (uint64_t)c->dim * sizeof(float), &done, total, o);
  }
}
