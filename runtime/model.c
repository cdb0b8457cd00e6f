#include "runtime/model.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <fcntl.h>
#include <time.h>
#include <unistd.h>

#include "comm/comm.h"
#include "runtime/status.h"

/* ------------------------------------------------------------------------ */
/* Hyper-parameters                                                           */

static const char *const k_supported_arch[] = {"llama"};

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
                    "(supported: llama)", g->path, (int)(arch.len < 64 ? arch.len : 64), arch.ptr);
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
  c->rope_mode = SS_ROPE_NORM; /* GGUF llama: Q/K rows permuted for adjacent-pair rotation */
  return SS_OK;
}

/* ------------------------------------------------------------------------ */
/* Tensors                                                                    */

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
  const ss_dtype_info *ti = ss_dtype_get(t->type);
  if (!ti->compute || (ti->block_count > 1 && cols % SS_QK != 0))
    return ss_error(SS_ERR_UNSUPPORTED, "%s: tensor '%s' has type %s, which has no kernel "
                    "(supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1)", g->path, name, ti->name);
  w->type = t->type;
  w->rows = rows;
  w->cols = cols;
  w->row_nbytes = (size_t)(cols / ti->block_count) * ti->block_nbytes;
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
  m->layers = calloc((size_t)c->n_layer, sizeof *m->layers);
  if (!m->layers) return ss_error(SS_ERR_NOMEM, "out of memory");
  for (int l = 0; l < c->n_layer; l++) {
    ss_layer_weights *L = &m->layers[l];
    char n[96];
#define NAME(s) (snprintf(n, sizeof n, "blk.%d." s, l), n)
    if ((rc = bind_norm(m, NAME("attn_norm.weight"), c->dim, &L->attn_norm)) ||
        (rc = bind_weight(m, NAME("attn_q.weight"), q_dim, c->dim, &L->wq)) ||
        (rc = bind_weight(m, NAME("attn_k.weight"), kv_dim, c->dim, &L->wk)) ||
        (rc = bind_weight(m, NAME("attn_v.weight"), kv_dim, c->dim, &L->wv)) ||
        (rc = bind_weight(m, NAME("attn_output.weight"), c->dim, q_dim, &L->wo)) ||
        (rc = bind_norm(m, NAME("ffn_norm.weight"), c->dim, &L->ffn_norm)) ||
        (rc = bind_weight(m, NAME("ffn_gate.weight"), c->ffn_dim, c->dim, &L->w_gate)) ||
        (rc = bind_weight(m, NAME("ffn_up.weight"), c->ffn_dim, c->dim, &L->w_up)) ||
        (rc = bind_weight(m, NAME("ffn_down.weight"), c->dim, c->ffn_dim, &L->w_down)))
      return rc;
#undef NAME
  }
  return SS_OK;
}

/* ------------------------------------------------------------------------ */
/* Tensor-parallel slices                                                     */

/* Rows [r.begin, r.end) of w: a view into the mapping (only those pages are
 * ever touched). */
static ss_weight slice_rows(const ss_weight *w, ss_range r) {
  ss_weight s = *w;
  s.rows = ss_range_len(r);
  s.data = (const uint8_t *)w->data + (size_t)r.begin * w->row_nbytes;
  return s;
}

/* Columns [c.begin, c.end) of every row of w, which are not contiguous in the
 * file: read with pread into memory of our own, so the mapping's pages of other
 * ranks' columns are never brought into this process. */
static int slice_cols(ss_model *m, int fd, const char *name, const ss_weight *w, ss_range c,
                      ss_weight *out) {
  const ss_dtype_info *ti = ss_dtype_get(w->type);
  SS_ASSERT(c.begin % ti->block_count == 0 && c.end % ti->block_count == 0);
  const size_t off_in_row = (size_t)(c.begin / ti->block_count) * ti->block_nbytes;
  const size_t row_nbytes = (size_t)(ss_range_len(c) / ti->block_count) * ti->block_nbytes;
  const uint64_t file_off = (uint64_t)((const uint8_t *)w->data - m->gguf->map);
  void **owned = realloc(m->owned, (size_t)(m->n_owned + 1) * sizeof *owned);
  if (!owned) return ss_error(SS_ERR_NOMEM, "out of memory");
  m->owned = owned;
  uint8_t *buf = NULL;
  size_t total = (size_t)w->rows * row_nbytes;
  if (posix_memalign((void **)&buf, 64, total ? total : 64))
    return ss_error(SS_ERR_NOMEM, "%s: cannot allocate %zu bytes for a slice of '%s'",
                    m->gguf->path, total, name);
  m->owned[m->n_owned++] = buf;
  for (int64_t r = 0; r < w->rows; r++) {
    const uint64_t at = file_off + (uint64_t)r * w->row_nbytes + off_in_row;
    size_t done = 0;
    while (done < row_nbytes) {
      ssize_t k = pread(fd, buf + (size_t)r * row_nbytes + done, row_nbytes - done,
                        (off_t)(at + done));
      if (k < 0 && errno == EINTR) continue;
      if (k <= 0)
        return ss_error(SS_ERR_IO, "%s: reading a slice of '%s' at offset %llu: %s",
                        m->gguf->path, name, (unsigned long long)(at + done),
                        k < 0 ? strerror(errno) : "unexpected end of file");
      done += (size_t)k;
    }
  }
  *out = *w;
  out->cols = ss_range_len(c);
  out->row_nbytes = row_nbytes;
  out->data = buf;
  return SS_OK;
}

static uint64_t weight_nbytes(const ss_weight *w) { return (uint64_t)w->rows * w->row_nbytes; }

/* Replaces the whole-model weights bound by bind_all with rank `rank`'s slices
 * of the plan, and checks the bytes bound against the plan's figures. */
static int shard_weights(ss_model *m, int rank) {
  const ss_model_config *c = &m->cfg;
  const ss_shard_rank *R = &m->plan.ranks[rank];
  const int64_t D = c->head_dim;
  const ss_range q_rows = {R->heads.begin * D, R->heads.end * D};
  const ss_range kv_rows = {R->kv_heads.begin * D, R->kv_heads.end * D};
  int fd = open(m->gguf->path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return ss_error(SS_ERR_IO, "%s: cannot open: %s", m->gguf->path, strerror(errno));
  ss_shard_bytes *b = &m->loaded;
  memset(b, 0, sizeof *b);
  int rc = SS_OK;
  for (int l = 0; l < c->n_layer && rc == SS_OK; l++) {
    ss_layer_weights *L = &m->layers[l];
    char n[96];
    L->wq = slice_rows(&L->wq, q_rows);
    L->wk = slice_rows(&L->wk, kv_rows);
    L->wv = slice_rows(&L->wv, kv_rows);
    L->w_gate = slice_rows(&L->w_gate, R->ffn);
    L->w_up = slice_rows(&L->w_up, R->ffn);
    snprintf(n, sizeof n, "blk.%d.attn_output.weight", l);
    if ((rc = slice_cols(m, fd, n, &L->wo, q_rows, &L->wo))) break;
    snprintf(n, sizeof n, "blk.%d.ffn_down.weight", l);
    if ((rc = slice_cols(m, fd, n, &L->w_down, R->ffn, &L->w_down))) break;
    b->attn += weight_nbytes(&L->wq) + weight_nbytes(&L->wk) + weight_nbytes(&L->wv) +
               weight_nbytes(&L->wo);
    b->mlp += weight_nbytes(&L->w_gate) + weight_nbytes(&L->w_up) + weight_nbytes(&L->w_down);
  }
  close(fd);
  if (rc) return rc;
  m->tok_embd = slice_rows(&m->tok_embd, R->vocab);
  m->output = c->tied_output ? m->tok_embd : slice_rows(&m->output, R->vocab);
  b->embd = weight_nbytes(&m->tok_embd);
  b->head = c->tied_output ? 0 : weight_nbytes(&m->output);
  b->norm = (uint64_t)(2 * c->n_layer + 1) * (uint64_t)c->dim * sizeof(float);
  b->total = b->attn + b->mlp + b->embd + b->head + b->norm;
  if (memcmp(b, &R->bytes, sizeof *b) != 0)
    return ss_error(SS_ERR_INTERNAL, "%s: rank %d bound %llu bytes of weights but its plan says "
                    "%llu", m->gguf->path, rank, (unsigned long long)b->total,
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
  } else {
    lo->n_head = c->n_head;
    lo->n_kv_head = c->n_kv_head;
    lo->ffn_dim = c->ffn_dim;
    lo->vocab_end = c->vocab;
  }
}

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

static void prefault(const ss_model *m, const ss_model_load_opts *o) {
  const uint64_t total = m->weight_nbytes;
  uint64_t done = 0;
  const ss_model_config *c = &m->cfg;
  touch(m->tok_embd.data, weight_nbytes(&m->tok_embd), &done, total, o);
  if (!c->tied_output) touch(m->output.data, weight_nbytes(&m->output), &done, total, o);
  touch(m->output_norm, (uint64_t)c->dim * sizeof(float), &done, total, o);
  for (int l = 0; l < c->n_layer; l++) {
    const ss_layer_weights *L = &m->layers[l];
    const ss_weight *ws[] = {&L->wq, &L->wk, &L->wv, &L->wo, &L->w_gate, &L->w_up, &L->w_down};
    for (size_t i = 0; i < sizeof ws / sizeof *ws; i++)
      touch(ws[i]->data, weight_nbytes(ws[i]), &done, total, o);
    touch(L->attn_norm, (uint64_t)c->dim * sizeof(float), &done, total, o);
    touch(L->ffn_norm, (uint64_t)c->dim * sizeof(float), &done, total, o);
  }
}

int ss_model_load(const char *path, const ss_model_load_opts *opts, ss_model **out) {
  *out = NULL;
  ss_model_load_opts defaults = {0};
  if (!opts) opts = &defaults;
  ss_model *m = calloc(1, sizeof *m);
  if (!m) return ss_error(SS_ERR_NOMEM, "out of memory");
  int rc = ss_gguf_open(path, &m->gguf);
  if (rc) goto fail;
  if ((rc = read_config(m->gguf, &m->cfg))) goto fail;
  if ((rc = ss_tokenizer_load(m->gguf, &m->tok))) goto fail;
  m->cfg.vocab = ss_tokenizer_n_vocab(m->tok);
  {
    char key[128];
    int64_t v;
    snprintf(key, sizeof key, "%s.vocab_size", m->cfg.arch);
    rc = ss_gguf_get_int(m->gguf, key, false, 1, INT32_MAX, &v);
    if (rc < 0) goto fail;
    if (rc == SS_OK && v != m->cfg.vocab) {
      rc = ss_error(SS_ERR_FORMAT, "%s: %s = %" PRId64 " but tokenizer.ggml.tokens has %d entries",
                    path, key, v, m->cfg.vocab);
      goto fail;
    }
  }
  if ((rc = bind_all(m))) goto fail;
  m->prof = calloc(1, sizeof *m->prof);
  if (!m->prof) {
    rc = ss_error(SS_ERR_NOMEM, "out of memory");
    goto fail;
  }
  {
    const int tp = opts->comm ? opts->comm->size : 1;
    const int rank = opts->comm ? opts->comm->rank : 0;
    m->comm = opts->comm;
    if (tp > 1) {
      ss_shard_opts so = {.tp = tp, .vocab_parallel = !opts->replicate_vocab};
      if ((rc = ss_shard_plan_make(m, &so, &m->plan))) {
        char msg[512];
        snprintf(msg, sizeof msg, "%s", ss_error_msg());
        rc = ss_error(rc, "%s: %s", path, msg);
        goto fail;
      }
      if ((rc = shard_weights(m, rank))) goto fail;
    }
    set_local(m, tp, rank);
  }
  ss_gguf_str tmpl;
  if (ss_gguf_get_str(m->gguf, "tokenizer.chat_template", false, &tmpl) == SS_OK) {
    m->chat_template = malloc(tmpl.len + 1);
    if (!m->chat_template) {
      rc = ss_error(SS_ERR_NOMEM, "out of memory");
      goto fail;
    }
    memcpy(m->chat_template, tmpl.ptr, tmpl.len);
    m->chat_template[tmpl.len] = 0;
  }
  if (opts->prefault) prefault(m, opts);
  *out = m;
  return SS_OK;
fail:
  ss_model_free(m);
  return rc;
}

void ss_model_free(ss_model *m) {
  if (!m) return;
  for (int i = 0; i < m->n_dev_bufs; i++) m->dev_be->dealloc(m->dev_be, m->dev_bufs[i]);
  free(m->dev_bufs);
  free(m->layers);
  free(m->chat_template);
  for (int i = 0; i < m->n_owned; i++) free(m->owned[i]);
  free(m->owned);
  free(m->prof);
  ss_shard_plan_free(&m->plan);
  ss_tokenizer_free(m->tok);
  ss_gguf_close(m->gguf);
  free(m);
}

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
  float *bufs[] = {st->x,  st->xb, st->xb2, st->q,  st->k,      st->v,
                   st->att, st->hb, st->hb2, st->xl, st->lg, st->lg_all, st->lgd};
  for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++)
    if (bufs[i]) be->dealloc(be, bufs[i]);
  free(st->ids);
  free(st->lg_host);
  memset(st, 0, sizeof *st);
}

int ss_model_kv_init(const ss_model *m, ss_backend *be, int32_t block_size, int32_t n_blocks,
                     ss_kv_cache *kv) {
  return ss_kv_cache_init(kv, be, m->cfg.n_layer, m->local.n_kv_head, m->cfg.head_dim,
                          block_size, n_blocks);
}

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static bool distributed(const ss_model *m) { return m->comm && m->comm->size > 1; }

/* Sums a residual update over the ranks (row-parallel output).  A device
 * backend queues it behind its kernels (nccl), without waiting. */
static int allreduce(const ss_model *m, ss_backend *be, float *x, int64_t count, const char *what,
                     int layer) {
  if (!distributed(m)) return SS_OK;
  int rc = be->allreduce ? be->allreduce(be, m->comm, x, count)
                         : ss_comm_allreduce_sum(m->comm, x, (size_t)count, SS_DTYPE_F32);
  if (rc) {
    char msg[512];
    snprintf(msg, sizeof msg, "%s", ss_error_msg());
    return ss_error(rc, "forward: %s all-reduce of layer %d: %s", what, layer, msg);
  }
  return SS_OK;
}

/* The step proper: every kernel and in-step all-reduce of one forward pass,
 * from the embedding to the LM head (between step_begin and step_end). */
static int forward_step(const ss_model *m, ss_forward_state *st, ss_kv_cache *kv,
                        const ss_batch *b, float *logits) {
  const ss_model_config *c = &m->cfg;
  const ss_model_local *lo = &m->local;
  ss_backend *be = st->be;
  const int64_t n = b->n;
  const ss_rope_params rq = {.n_heads = lo->n_head, .head_dim = c->head_dim,
                             .rope_dim = c->rope_dim, .theta = c->rope_theta,
                             .mode = c->rope_mode};
  ss_rope_params rk = rq;
  rk.n_heads = lo->n_kv_head;
  const ss_attn_params ap = {.n_head = lo->n_head, .n_kv_head = lo->n_kv_head,
                             .head_dim = c->head_dim,
                             .scale = 1.0f / sqrtf((float)c->head_dim), .softcap = 0.0f,
                             .group = c->n_head / c->n_kv_head, .q_head_base = lo->head_base,
                             .kv_head_base = lo->kv_head_base};
  int rc;

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
  be->embed(be, &m->tok_embd, ids, n, st->x);
  if (vp && (rc = allreduce(m, be, st->x, n * c->dim, "embedding", -1))) return rc;

  for (int l = 0; l < c->n_layer; l++) {
    const ss_layer_weights *L = &m->layers[l];
    const ss_kv_layer kvl = ss_kv_cache_layer(kv, l);
    /* attention */
    be->rmsnorm(be, st->x, L->attn_norm, n, c->dim, c->rms_eps, st->xb);
    be->matmul(be, &L->wq, st->xb, n, st->q);
    be->matmul(be, &L->wk, st->xb, n, st->k);
    be->matmul(be, &L->wv, st->xb, n, st->v);
    be->rope(be, st->q, b->loc.pos, n, &rq);
    be->rope(be, st->k, b->loc.pos, n, &rk);
    be->kv_store(be, &kvl, &b->loc, st->k, st->v);
    be->attention(be, &kvl, &b->loc, st->q, &ap, st->att);
    be->matmul(be, &L->wo, st->att, n, st->xb2);
    if ((rc = allreduce(m, be, st->xb2, n * c->dim, "attention", l))) return rc;
    be->add(be, st->x, st->xb2, n * c->dim);
    /* MLP */
    be->rmsnorm(be, st->x, L->ffn_norm, n, c->dim, c->rms_eps, st->xb);
    if (lo->ffn_dim > 0) {
      be->matmul(be, &L->w_gate, st->xb, n, st->hb);
      be->matmul(be, &L->w_up, st->xb, n, st->hb2);
      be->swiglu(be, st->hb, st->hb2, n * lo->ffn_dim, st->hb);
      be->matmul(be, &L->w_down, st->hb, n, st->xb2);
    } else {
      be->memset(be, st->xb2, 0, (size_t)(n * c->dim) * sizeof(float));
    }
    if ((rc = allreduce(m, be, st->xb2, n * c->dim, "MLP", l))) return rc;
    be->add(be, st->x, st->xb2, n * c->dim);
  }
  if (b->n_logits == 0) return SS_OK;
  be->gather_rows(be, st->x, b->logit_rows, b->n_logits, c->dim, st->xl);
  be->rmsnorm(be, st->xl, m->output_norm, b->n_logits, c->dim, c->rms_eps, st->xl);
  /* Vocabulary-parallel: every rank its rows.  Whole LM head on every rank:
   * rank 0 alone needs the logits.  Device backends write device memory,
   * copied out after the step. */
  if (vp) be->matmul(be, &m->output, st->xl, b->n_logits, st->lg);
  else if (!distributed(m) || lo->rank == 0)
    be->matmul(be, &m->output, st->xl, b->n_logits, be->device ? st->lgd : logits);
  return SS_OK;
}

/* This rank's share of one forward pass (every rank runs it on the same batch):
 * the step on the backend, then the logits to rank 0's host memory. */
static int forward_local(const ss_model *m, ss_forward_state *st, ss_kv_cache *kv,
                         const ss_batch *b, float *logits) {
  const ss_model_config *c = &m->cfg;
  const ss_model_local *lo = &m->local;
  ss_backend *be = st->be;
  if (b->n <= 0 || b->n > st->max_tokens || b->n_logits < 0 || b->n_logits > st->max_logits)
    return ss_error(SS_ERR_INVALID, "forward: batch of %lld tokens / %lld logit rows exceeds "
                    "the state's %lld / %lld", (long long)b->n, (long long)b->n_logits,
                    (long long)st->max_tokens, (long long)st->max_logits);
  for (int64_t i = 0; i < b->n_logits; i++) SS_ASSERT(b->logit_rows[i] >= 0 && b->logit_rows[i] < b->n);
  int rc = be->step_begin ? be->step_begin(be, &b->loc, b->n_logits, kv->block_size) : SS_OK;
  if (rc) return rc;
  rc = forward_step(m, st, kv, b, logits);
  /* A device step always ends (a failed one too: a graph capture must close). */
  if (be->step_end) {
    int rc2 = be->step_end(be);
    if (!rc) rc = rc2;
  }
  if (!rc && be->sync) rc = be->sync(be, distributed(m) ? m->comm : NULL);
  if (rc || b->n_logits == 0) return rc;
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

static int forward_timed(const ss_model *m, ss_forward_state *st, ss_kv_cache *kv,
                         const ss_batch *b, float *logits) {
  const double t0 = now_s();
  const double c0 = m->comm ? m->comm->busy_s : 0.0;
  int rc = forward_local(m, st, kv, b, logits);
  const double comm = m->comm ? m->comm->busy_s - c0 : 0.0;
  m->prof->steps++;
  m->prof->comm_s += comm;
  m->prof->compute_s += now_s() - t0 - comm;
  return rc;
}

/* ------------------------------------------------------------------------ */
/* Steps across ranks                                                         */

/* Rank 0 broadcasts every step as a fixed header followed by a payload of
 * int32s:  tokens[n], pos[n], table index of each token[n], logit_rows[n_logits],
 * table lengths[n_tables], then the tables' block ids back to back.  Workers
 * size their KV cache and activations from the header. */
enum { STEP_MAGIC = 0x53535450 /* "SSTP" */, STEP_FORWARD = 1, STEP_STOP = 2, STEP_STATS = 3 };

typedef struct step_header {
  int32_t magic, kind;
  int32_t n, n_logits, n_tables, n_table_ids;
  int32_t kv_block_size, kv_n_blocks;
  int64_t payload_count;
} step_header;

static int bcast(const ss_model *m, void *buf, size_t nbytes, const char *what) {
  int rc = ss_comm_broadcast(m->comm, buf, nbytes, 0);
  if (rc) {
    char msg[512];
    snprintf(msg, sizeof msg, "%s", ss_error_msg());
    return ss_error(rc, "%s: %s", what, msg);
  }
  return SS_OK;
}

/* Rank 0: encodes and broadcasts b.  Tokens that share a block table pointer
 * share a table in the message. */
static int send_step(const ss_model *m, const ss_kv_cache *kv, const ss_batch *b) {
  const int64_t n = b->n;
  const int32_t **tabs = malloc((size_t)n * sizeof *tabs);
  int32_t *tab_len = malloc((size_t)n * sizeof *tab_len);
  int32_t *tab_of = malloc((size_t)n * sizeof *tab_of);
  int32_t *payload = NULL;
  int rc = SS_OK;
  if (!tabs || !tab_len || !tab_of) {
    rc = ss_error(SS_ERR_NOMEM, "out of memory");
    goto done;
  }
  int32_t n_tables = 0;
  int64_t n_ids = 0;
  for (int64_t t = 0; t < n; t++) {
    const int32_t *bt = b->loc.block_table[t];
    int32_t k = n_tables - 1;
    while (k >= 0 && tabs[k] != bt) k--;
    if (k < 0) {
      k = n_tables++;
      tabs[k] = bt;
      tab_len[k] = 0;
    }
    tab_of[t] = k;
    const int32_t need = b->loc.pos[t] / kv->block_size + 1;
    if (need > tab_len[k]) tab_len[k] = need;
  }
  for (int32_t k = 0; k < n_tables; k++) n_ids += tab_len[k];
  step_header h = {.magic = STEP_MAGIC, .kind = STEP_FORWARD, .n = (int32_t)n,
                   .n_logits = (int32_t)b->n_logits, .n_tables = n_tables,
                   .n_table_ids = (int32_t)n_ids, .kv_block_size = kv->block_size,
                   .kv_n_blocks = kv->n_blocks};
  h.payload_count = 3 * n + b->n_logits + n_tables + n_ids;
  payload = malloc((size_t)h.payload_count * sizeof *payload);
  if (!payload) {
    rc = ss_error(SS_ERR_NOMEM, "out of memory");
    goto done;
  }
  int32_t *p = payload;
  memcpy(p, b->tokens, (size_t)n * sizeof *p), p += n;
  memcpy(p, b->loc.pos, (size_t)n * sizeof *p), p += n;
  memcpy(p, tab_of, (size_t)n * sizeof *p), p += n;
  memcpy(p, b->logit_rows, (size_t)b->n_logits * sizeof *p), p += b->n_logits;
  memcpy(p, tab_len, (size_t)n_tables * sizeof *p), p += n_tables;
  for (int32_t k = 0; k < n_tables; k++) memcpy(p, tabs[k], (size_t)tab_len[k] * sizeof *p), p += tab_len[k];
  if ((rc = bcast(m, &h, sizeof h, "sending a step to the workers"))) goto done;
  rc = bcast(m, payload, (size_t)h.payload_count * sizeof *payload, "sending a step to the workers");
done:
  free(tabs);
  free(tab_len);
  free(tab_of);
  free(payload);
  return rc;
}

int ss_model_forward(const ss_model *m, ss_forward_state *st, ss_kv_cache *kv, const ss_batch *b,
                     float *logits) {
  if (distributed(m)) {
    SS_ASSERT(m->local.rank == 0);
    if (b->n <= 0 || b->n > st->max_tokens || b->n_logits < 0 || b->n_logits > st->max_logits)
      return ss_error(SS_ERR_INVALID, "forward: batch of %lld tokens / %lld logit rows exceeds "
                      "the state's %lld / %lld", (long long)b->n, (long long)b->n_logits,
                      (long long)st->max_tokens, (long long)st->max_logits);
    int rc = send_step(m, kv, b);
    if (rc) return rc;
  }
  return forward_timed(m, st, kv, b, logits);
}

int ss_model_stop_workers(const ss_model *m) {
  if (!distributed(m) || m->local.rank != 0) return SS_OK;
  step_header h = {.magic = STEP_MAGIC, .kind = STEP_STOP};
  return bcast(m, &h, sizeof h, "stopping the workers");
}

/* A worker's checks of what rank 0 sent: a corrupt message is a bug, but it
 * must not become an out-of-bounds access on this rank. */
static int check_step(const ss_model *m, const step_header *h, const int32_t *pl) {
  const int32_t *tok = pl, *pos = pl + h->n, *tab_of = pl + 2 * h->n;
  const int32_t *rows = pl + 3 * h->n, *tab_len = rows + h->n_logits, *ids = tab_len + h->n_tables;
  int64_t sum = 0;
  for (int32_t k = 0; k < h->n_tables; k++) {
    if (tab_len[k] < 0) return ss_error(SS_ERR_COMM, "step: negative table length");
    sum += tab_len[k];
  }
  if (sum != h->n_table_ids) return ss_error(SS_ERR_COMM, "step: table lengths disagree");
  for (int64_t i = 0; i < sum; i++)
    if (ids[i] < 0 || ids[i] >= h->kv_n_blocks) return ss_error(SS_ERR_COMM, "step: bad block id");
  for (int32_t t = 0; t < h->n; t++) {
    if (tok[t] < 0 || tok[t] >= m->cfg.vocab) return ss_error(SS_ERR_COMM, "step: bad token");
    if (tab_of[t] < 0 || tab_of[t] >= h->n_tables) return ss_error(SS_ERR_COMM, "step: bad table");
    if (pos[t] < 0 || pos[t] / h->kv_block_size >= tab_len[tab_of[t]])
      return ss_error(SS_ERR_COMM, "step: position %d outside its block table", pos[t]);
  }
  for (int32_t i = 0; i < h->n_logits; i++)
    if (rows[i] < 0 || rows[i] >= h->n) return ss_error(SS_ERR_COMM, "step: bad logit row");
  return SS_OK;
}

/* Every rank sends its counters to rank 0 (all: tp entries there, else NULL). */
static int gather_profile(const ss_model *m, ss_step_profile *all) {
  const int tp = m->comm->size;
  size_t *nbytes = malloc((size_t)tp * sizeof *nbytes);
  if (!nbytes) return ss_error(SS_ERR_NOMEM, "out of memory");
  for (int r = 0; r < tp; r++) nbytes[r] = sizeof(ss_step_profile);
  const double c0 = m->comm->busy_s;
  int rc = ss_comm_gatherv(m->comm, m->prof, all, nbytes, 0);
  m->comm->busy_s = c0; /* bookkeeping, not a step's communication */
  free(nbytes);
  if (rc) {
    char msg[512];
    snprintf(msg, sizeof msg, "%s", ss_error_msg());
    return ss_error(rc, "gathering step counters: %s", msg);
  }
  return SS_OK;
}

int ss_model_gather_profiles(const ss_model *m, ss_step_profile *all) {
  if (!distributed(m)) {
    all[0] = *m->prof;
    return SS_OK;
  }
  SS_ASSERT(m->local.rank == 0);
  step_header h = {.magic = STEP_MAGIC, .kind = STEP_STATS};
  int rc = bcast(m, &h, sizeof h, "asking the workers for their counters");
  if (rc) return rc;
  return gather_profile(m, all);
}

int ss_model_worker_loop(const ss_model *m, ss_backend *be) {
  SS_ASSERT(distributed(m) && m->local.rank != 0);
  ss_forward_state st = {0};
  ss_kv_cache kv = {0};
  int32_t *payload = NULL, **tabs = NULL;
  const int32_t **btab = NULL;
  int64_t payload_cap = 0, n_cap = 0;
  int rc = SS_OK;
  for (;;) {
    step_header h;
    const double t0 = now_s();
    const double c0 = m->comm->busy_s;
    rc = bcast(m, &h, sizeof h, "waiting for the next step from rank 0");
    m->prof->idle_s += now_s() - t0;
    m->comm->busy_s = c0; /* waiting is idle time, not communication inside a step */
    if (rc) break;
    if (h.magic != STEP_MAGIC ||
        (h.kind != STEP_FORWARD && h.kind != STEP_STOP && h.kind != STEP_STATS)) {
      rc = ss_error(SS_ERR_COMM, "rank %d: malformed step message from rank 0", m->local.rank);
      break;
    }
    if (h.kind == STEP_STOP) break;
    if (h.kind == STEP_STATS) {
      if ((rc = gather_profile(m, NULL))) break;
      continue;
    }
    if (h.n <= 0 || h.n_logits < 0 || h.n_logits > h.n || h.n_tables <= 0 || h.n_tables > h.n ||
        h.n_table_ids < 0 || h.kv_block_size <= 0 || h.kv_n_blocks <= 0 ||
        h.payload_count != 3 * (int64_t)h.n + h.n_logits + h.n_tables + h.n_table_ids) {
      rc = ss_error(SS_ERR_COMM, "rank %d: malformed step header from rank 0", m->local.rank);
      break;
    }
    if (h.payload_count > payload_cap) {
      free(payload);
      payload = malloc((size_t)h.payload_count * sizeof *payload);
      payload_cap = payload ? h.payload_count : 0;
      if (!payload) {
        rc = ss_error(SS_ERR_NOMEM, "out of memory");
        break;
      }
    }
    if ((rc = bcast(m, payload, (size_t)h.payload_count * sizeof *payload,
                    "receiving a step from rank 0")))
      break;
    if ((rc = check_step(m, &h, payload))) break;
    /* The cache follows rank 0's geometry; activations grow to the batch. */
    if (kv.block_size != h.kv_block_size || kv.n_blocks != h.kv_n_blocks) {
      ss_kv_cache_free(&kv);
      memset(&kv, 0, sizeof kv);
      if ((rc = ss_model_kv_init(m, be, h.kv_block_size, h.kv_n_blocks, &kv))) break;
    }
    if (h.n > st.max_tokens || h.n_logits > st.max_logits) {
      int64_t T = h.n > st.max_tokens ? h.n : st.max_tokens;
      int64_t NL = h.n_logits > st.max_logits ? h.n_logits : st.max_logits;
      ss_forward_state_free(&st);
      if ((rc = ss_forward_state_init(&st, m, be, T, NL))) break;
    }
    if (h.n > n_cap) {
      free(btab);
      free(tabs);
      btab = malloc((size_t)h.n * sizeof *btab);
      tabs = malloc((size_t)h.n * sizeof *tabs);
      n_cap = btab && tabs ? h.n : 0;
      if (!btab || !tabs) {
        rc = ss_error(SS_ERR_NOMEM, "out of memory");
        break;
      }
    }
    const int32_t *tok = payload, *pos = payload + h.n, *tab_of = payload + 2 * h.n;
    const int32_t *rows = payload + 3 * h.n, *tab_len = rows + h.n_logits;
    int32_t *ids = (int32_t *)(tab_len + h.n_tables);
    for (int32_t k = 0; k < h.n_tables; k++) tabs[k] = ids, ids += tab_len[k];
    for (int32_t t = 0; t < h.n; t++) btab[t] = tabs[tab_of[t]];
    ss_batch b = {.n = h.n, .tokens = tok, .loc = {.n = h.n, .pos = pos, .block_table = btab},
                  .n_logits = h.n_logits, .logit_rows = rows};
    if ((rc = forward_timed(m, &st, &kv, &b, NULL))) break;
  }
  free(payload);
  free(btab);
  free(tabs);
  ss_forward_state_free(&st);
  if (kv.be) ss_kv_cache_free(&kv);
  return rc;
}

ss_step_profile ss_model_profile(const ss_model *m) { return *m->prof; }
