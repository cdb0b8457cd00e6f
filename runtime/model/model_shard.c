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
#include "runtime/base/status.h"
#include "runtime/formats/safetensors.h"
#include "runtime/model/model_internal.h"

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

/* The file holding p and p's offset in it, or NULL when p is memory of our
 * own (weights converted at load). */
static const char *source_of(const ss_model *m, const void *p, uint64_t *off) {
  const uint8_t *b = p;
  if (m->gguf) {
    if (b < m->gguf->map || b >= m->gguf->map + m->gguf->size) return NULL;
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
  return NULL;
}

/* ------------------------------------------------------------------------ */
/* Tensor-parallel slices                                                     */

/* Under tensor parallelism every weight a rank keeps is read with pread into
 * memory of its own, and the file mapping is never touched.  Reading through
 * the mapping would look cheaper, but the kernel maps file pages in large
 * folios (several MiB on recent kernels), so a rank touching its slices of
 * many small tensors would map nearly the whole file; with pread each rank's
 * resident memory is its share of the weights and nothing else. */

static int pread_all(int fd, uint8_t *buf, size_t n, uint64_t at, const char *path,
                     const char *name) {
  size_t done = 0;
  while (done < n) {
    ssize_t k = pread(fd, buf + done, n - done, (off_t)(at + done));
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0)
      return ss_error(SS_ERR_IO, "%s: reading '%s' at offset %llu: %s", path, name,
                      (unsigned long long)(at + done),
                      k < 0 ? strerror(errno) : "unexpected end of file");
    done += (size_t)k;
  }
  return SS_OK;
}

/* Rows [r.begin, r.end) and columns [c.begin, c.end) of w, copied out of the
 * file into memory owned by m.  Weights that are already memory of our own
 * are sliced in place (rows) or copied (columns). */
static int read_slice(ss_model *m, const char *name, const ss_weight *w_in, ss_range r,
                      ss_range c, ss_weight *out) {
  const ss_weight src = *w_in, *w = &src; /* out may be w_in */
  const ss_dtype_info *ti = ss_dtype_get(w->type);
  SS_ASSERT(c.begin % ti->block_count == 0 && c.end % ti->block_count == 0);
  SS_ASSERT(r.begin >= 0 && r.end <= w->rows && c.begin >= 0 && c.end <= w->cols);
  const size_t off_in_row = (size_t)(c.begin / ti->block_count) * ti->block_nbytes;
  const size_t row_nbytes = (size_t)(ss_range_len(c) / ti->block_count) * ti->block_nbytes;
  const int64_t rows = ss_range_len(r);
  const bool whole_rows = row_nbytes == w->row_nbytes;
  const uint8_t *first = (const uint8_t *)w->data + (size_t)r.begin * w->row_nbytes;
  uint64_t file_off = 0;
  const char *path = source_of(m, w->data, &file_off);
  *out = *w;
  out->rows = rows;
  out->cols = ss_range_len(c);
  out->row_nbytes = row_nbytes;
  if (w->row_scale) out->row_scale = w->row_scale + r.begin;
  /* A tensor joined from pieces cut per rank: read from the pieces. */
  const ss_st_tensor *joined = !path && m->st ? ss_st_containing(m->st, w->data) : NULL;
  if (joined) {
    const uint64_t at = (uint64_t)((const uint8_t *)w->data - (const uint8_t *)joined->data);
    SS_ASSERT(at % w->row_nbytes == 0 && off_in_row % joined->elem_nbytes == 0);
    const int64_t row0 = (int64_t)(at / w->row_nbytes);
    const int64_t col0 = (int64_t)(off_in_row / joined->elem_nbytes);
    uint8_t *buf = NULL;
    const size_t total = (size_t)rows * row_nbytes;
    if (posix_memalign((void **)&buf, 64, total ? total : 64))
      return ss_error(SS_ERR_NOMEM, "%s: cannot allocate %zu bytes for a slice of '%s'", m->path,
                      total, name);
    int rc = ss_model_own(m, buf);
    if (rc) return rc;
    out->data = buf;
    return ss_st_read(m->st, joined, row0 + r.begin, row0 + r.begin + rows, col0,
                      col0 + ss_range_len(c), buf);
  }
  if (!path && whole_rows) {
    out->data = first;
    return SS_OK;
  }
  uint8_t *buf = NULL;
  const size_t total = (size_t)rows * row_nbytes;
  if (posix_memalign((void **)&buf, 64, total ? total : 64))
    return ss_error(SS_ERR_NOMEM, "%s: cannot allocate %zu bytes for a slice of '%s'", m->path,
                    total, name);
  int rc = ss_model_own(m, buf);
  if (rc) return rc;
  out->data = buf;
  if (!path) {
    for (int64_t i = 0; i < rows; i++)
      memcpy(buf + (size_t)i * row_nbytes, first + (size_t)i * w->row_nbytes + off_in_row,
             row_nbytes);
    return SS_OK;
  }
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return ss_error(SS_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
  const uint64_t base = file_off + (uint64_t)r.begin * w->row_nbytes;
  if (whole_rows) {
    rc = pread_all(fd, buf, total, base, path, name);
  } else {
    for (int64_t i = 0; i < rows && rc == SS_OK; i++)
      rc = pread_all(fd, buf + (size_t)i * row_nbytes, row_nbytes,
                     base + (uint64_t)i * w->row_nbytes + off_in_row, path, name);
  }
  close(fd);
  return rc;
}

static int slice_rows(ss_model *m, const char *name, ss_weight *w, ss_range r) {
  if (!w->data) return SS_OK;
  return read_slice(m, name, w, r, (ss_range){0, w->cols}, w);
}

static int slice_cols(ss_model *m, const char *name, ss_weight *w, ss_range c) {
  if (!w->data) return SS_OK;
  return read_slice(m, name, w, (ss_range){0, w->rows}, c, w);
}

/* Columns [c.begin, c.end) of a row-parallel weight: the edge columns of the
 * blocks the cut straddles are read (block by block, like any slice) and
 * dequantized into *edge, then w is replaced by its block-aligned part.  The
 * dequantized values are exactly those the whole weight's product uses. */
static int slice_cut(ss_model *m, const char *name, ss_weight *w, ss_range c,
                     ss_weight_edge *edge) {
  memset(edge, 0, sizeof *edge);
  if (!w->data) return SS_OK;
  const int64_t B = ss_dtype_get(w->type)->block_count;
  const ss_col_cut k = ss_shard_col_cut(c, B);
  if (k.lo + k.hi > 0) {
    SS_ASSERT(!w->row_scale); /* row-scaled types are not block-quantized */
    const int64_t rows = w->rows, ecols = k.lo + k.hi;
    float *e = NULL, *tmp = malloc((size_t)B * sizeof *tmp);
    if (!tmp || posix_memalign((void **)&e, 64, (size_t)rows * (size_t)ecols * sizeof *e)) {
      free(tmp);
      return ss_error(SS_ERR_NOMEM, "%s: cannot allocate the f32 edge of '%s' (%lld x %lld)",
                      m->path, name, (long long)rows, (long long)ecols);
    }
    int rc = ss_model_own(m, e);
    if (rc) {
      free(tmp);
      return rc;
    }
    /* The straddled blocks: the one holding c.begin (columns [c.begin,
     * mid.begin) of it) and the one holding c.end (columns [mid.end, c.end)). */
    const int64_t first[2] = {c.begin / B * B, k.mid.end};
    const int64_t from[2] = {c.begin, k.mid.end}, count[2] = {k.lo, k.hi};
    for (int s = 0; s < 2 && rc == SS_OK; s++) {
      if (count[s] == 0) continue;
      ss_weight blk;
      rc = read_slice(m, name, w, (ss_range){0, rows}, (ss_range){first[s], first[s] + B}, &blk);
      if (rc) break;
      for (int64_t i = 0; i < rows; i++) {
        ss_dequantize_row(w->type, (const uint8_t *)blk.data + (size_t)i * blk.row_nbytes, tmp, B);
        memcpy(e + (size_t)i * (size_t)ecols + (s ? (size_t)k.lo : 0), tmp + (from[s] - first[s]),
               (size_t)count[s] * sizeof *tmp);
      }
      /* The quantized copy of the block is not kept. */
      if (m->n_owned > 0 && m->owned[m->n_owned - 1] == blk.data) free(m->owned[--m->n_owned]);
    }
    free(tmp);
    if (rc) return rc;
    edge->w = (ss_weight){.type = SS_DTYPE_F32, .rows = rows, .cols = ecols,
                          .row_nbytes = (size_t)ecols * sizeof(float), .data = e};
    edge->lo = k.lo;
    edge->hi = k.hi;
  }
  return slice_cols(m, name, w, k.mid);
}

/* A replicated vector (a norm's weights): copied out of the file like the
 * slices (as a one-row F32 weight), so the mapping stays untouched. */
static int copy_vec(ss_model *m, const char *name, const float **p, int64_t n) {
  if (!*p) return SS_OK;
  ss_weight w = {.type = SS_DTYPE_F32, .rows = 1, .cols = n,
                 .row_nbytes = (size_t)n * sizeof(float), .data = *p};
  int rc = read_slice(m, name, &w, (ss_range){0, 1}, (ss_range){0, n}, &w);
  if (rc == SS_OK) *p = w.data;
  return rc;
}

/* A weight's name for messages: GGUF's, or a generic one for HF folders. */
static const char *wname(const ss_model *m, char *buf, size_t cap, int l, const char *gguf_suffix,
                         const char *what) {
  if (m->gguf) snprintf(buf, cap, "blk.%d.%s", l, gguf_suffix);
  else snprintf(buf, cap, "layer %d %s", l, what);
  return buf;
}

static uint64_t edge_nbytes(const ss_weight_edge *e) {
  return e->w.data ? ss_weight_nbytes(&e->w) : 0;
}

/* Replaces the whole-model weights bound at load with rank `rank`'s slices of
 * the plan, and checks the bytes bound against the plan's figures. */
static int shard_weights(ss_model *m, int rank) {
  const ss_model_config *c = &m->cfg;
  const ss_shard_opts *po = &m->plan.opts;
  const bool staged = po->pp > 1;
  const int lb = staged ? (int)po->layers.begin : 0, le = staged ? (int)po->layers.end : c->n_layer;
  const bool first = !staged || po->stage == 0, last = !staged || po->stage == po->pp - 1;
  const ss_shard_rank *R = &m->plan.ranks[rank];
  const int64_t D = c->head_dim;
  const ss_range q_rows = {R->heads.begin * D, R->heads.end * D};
  const ss_range kv_rows = {R->kv_heads.begin * D, R->kv_heads.end * D};
  ss_shard_bytes *b = &m->loaded;
  memset(b, 0, sizeof *b);
  int rc = SS_OK;
  char n[96];
#define NM(sfx, what) wname(m, n, sizeof n, l, sfx, what)
  for (int l = 0; l < c->n_layer && rc == SS_OK; l++) {
    ss_layer_weights *L = &m->layers[l];
    if (l < lb || l >= le) {
      /* Another stage's layer: never read here. */
      ss_weight *ws[] = {&L->wq, &L->wk, &L->wv, &L->wo, &L->w_gate, &L->w_up, &L->w_down,
                         &L->router};
      for (size_t i = 0; i < sizeof ws / sizeof *ws; i++) ws[i]->data = NULL;
      for (int e = 0; e < c->n_expert; e++)
        L->exp_gate[e].data = L->exp_up[e].data = L->exp_down[e].data = NULL;
      L->attn_norm = L->ffn_norm = L->post_attn_norm = L->post_ffn_norm = NULL;
      continue;
    }
    if ((rc = slice_rows(m, NM("attn_q.weight", "q_proj"), &L->wq, q_rows)) ||
        (rc = slice_rows(m, NM("attn_k.weight", "k_proj"), &L->wk, kv_rows)) ||
        (rc = slice_rows(m, NM("attn_v.weight", "v_proj"), &L->wv, kv_rows)) ||
        (rc = slice_cut(m, NM("attn_output.weight", "o_proj"), &L->wo, q_rows, &L->wo_edge)) ||
        (rc = copy_vec(m, NM("attn_norm.weight", "input_layernorm"), &L->attn_norm, c->dim)) ||
        (rc = copy_vec(m, NM("ffn_norm.weight", "post_attention_layernorm"), &L->ffn_norm,
                       c->dim)) ||
        (rc = copy_vec(m, NM("post_attention_norm.weight", "post_attn_norm"),
                       &L->post_attn_norm, c->dim)) ||
        (rc = copy_vec(m, NM("post_ffw_norm.weight", "post_moe_norm"), &L->post_ffn_norm,
                       c->dim)))
      break;
    b->attn += ss_weight_nbytes(&L->wq) + ss_weight_nbytes(&L->wk) + ss_weight_nbytes(&L->wv) +
               ss_weight_nbytes(&L->wo) + edge_nbytes(&L->wo_edge);
    if (c->dense_mlp) {
      if ((rc = slice_rows(m, NM("ffn_gate.weight", "gate_proj"), &L->w_gate, R->ffn)) ||
          (rc = slice_rows(m, NM("ffn_up.weight", "up_proj"), &L->w_up, R->ffn)) ||
          (rc = slice_cut(m, NM("ffn_down.weight", "down_proj"), &L->w_down, R->ffn,
                          &L->down_edge)))
        break;
      b->mlp += ss_weight_nbytes(&L->w_gate) + ss_weight_nbytes(&L->w_up) +
                ss_weight_nbytes(&L->w_down) + edge_nbytes(&L->down_edge);
    }
    if (c->n_expert > 0) {
      if ((rc = slice_rows(m, NM("ffn_gate_inp.weight", "router"), &L->router,
                           (ss_range){0, L->router.rows})))
        break;
      b->moe += ss_weight_nbytes(&L->router);
      L->exp_down_edge = calloc((size_t)c->n_expert, sizeof *L->exp_down_edge);
      if ((rc = ss_model_own(m, L->exp_down_edge))) break;
      for (int e = 0; e < c->n_expert && rc == SS_OK; e++) {
        if (e < R->experts.begin || e >= R->experts.end) {
          /* Another rank's expert: never touched here. */
          L->exp_gate[e].data = L->exp_up[e].data = L->exp_down[e].data = NULL;
          continue;
        }
        snprintf(n, sizeof n, "layer %d expert %d", l, e);
        if ((rc = slice_rows(m, n, &L->exp_gate[e], R->expert_ffn)) ||
            (rc = slice_rows(m, n, &L->exp_up[e], R->expert_ffn)) ||
            (rc = slice_cut(m, n, &L->exp_down[e], R->expert_ffn, &L->exp_down_edge[e])))
          break;
        b->moe += ss_weight_nbytes(&L->exp_gate[e]) + ss_weight_nbytes(&L->exp_up[e]) +
                  ss_weight_nbytes(&L->exp_down[e]) + edge_nbytes(&L->exp_down_edge[e]);
      }
    }
  }
#undef NM
  if (rc) return rc;
  const bool tied = c->tied_output;
  /* The embedding on the first stage (and on the last when it is the head). */
  if (first || (last && tied)) {
    if ((rc = slice_rows(m, "token_embd.weight", &m->tok_embd, R->vocab))) return rc;
  } else {
    m->tok_embd.data = NULL;
  }
  if (!last) m->output.data = NULL, m->output_norm = NULL;
  else if (tied) m->output = m->tok_embd;
  else if ((rc = slice_rows(m, "output.weight", &m->output, R->vocab))) return rc;
  if (last && (rc = copy_vec(m, "output_norm.weight", &m->output_norm, c->dim))) return rc;
  b->embd = first ? ss_weight_nbytes(&m->tok_embd) : 0;
  b->head = !last ? 0 : tied ? (first ? 0 : ss_weight_nbytes(&m->tok_embd))
                             : ss_weight_nbytes(&m->output);
  b->norm = ss_shard_norm_nbytes_of(c, le - lb, last);
  b->total = b->attn + b->mlp + b->moe + b->embd + b->head + b->norm;
  if (memcmp(b, &R->bytes, sizeof *b) != 0)
    return ss_error(SS_ERR_INTERNAL, "%s: rank %d bound %llu bytes of weights but its plan says "
                    "%llu", m->path, rank, (unsigned long long)b->total,
                    (unsigned long long)R->bytes.total);
  m->weight_nbytes = b->total;
  return SS_OK;
}

/* Without tensor parallelism nothing is sliced, but a tensor joined from
 * pieces cut per rank has no bytes of its own: each is read whole. */
static int gather_joined(ss_model *m) {
  if (!m->st || m->st->n_ranks == 0) return SS_OK;
  const ss_model_config *c = &m->cfg;
#define WHOLE(w, nm) \
  (ss_st_containing(m->st, (w)->data) ? slice_rows(m, nm, (w), (ss_range){0, (w)->rows}) : SS_OK)
  int rc = WHOLE(&m->tok_embd, "model.embed_tokens.weight");
  if (rc == SS_OK && !c->tied_output) rc = WHOLE(&m->output, "lm_head.weight");
  if (c->tied_output) m->output = m->tok_embd;
  char n[96];
  for (int l = 0; l < c->n_layer && rc == SS_OK; l++) {
    ss_layer_weights *L = &m->layers[l];
    snprintf(n, sizeof n, "layer %d", l);
    ss_weight *ws[] = {&L->wq, &L->wk, &L->wv, &L->wo, &L->w_gate, &L->w_up, &L->w_down,
                       &L->router};
    for (size_t i = 0; i < sizeof ws / sizeof *ws && rc == SS_OK; i++) rc = WHOLE(ws[i], n);
    for (int e = 0; e < c->n_expert && rc == SS_OK; e++) {
      snprintf(n, sizeof n, "layer %d expert %d", l, e);
      if ((rc = WHOLE(&L->exp_gate[e], n)) || (rc = WHOLE(&L->exp_up[e], n))) break;
      rc = WHOLE(&L->exp_down[e], n);
    }
  }
#undef WHOLE
  return rc;
}

static void set_local(ss_model *m, int tp, int rank) {
  const ss_model_config *c = &m->cfg;
  ss_model_local *lo = &m->local;
  lo->tp = tp;
  lo->rank = rank;
  const ss_shard_opts *po = &m->plan.opts;
  lo->pp = po->pp > 1 ? po->pp : 1;
  lo->stage = po->pp > 1 ? po->stage : 0;
  lo->layer_begin = po->pp > 1 ? (int)po->layers.begin : 0;
  lo->layer_end = po->pp > 1 ? (int)po->layers.end : c->n_layer;
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
  const int pp = opts->pp > 1 ? opts->pp : 1;
  if (pp > 1) {
    if (!opts->world || opts->world->size != pp * tp)
      return ss_error(SS_ERR_INVALID, "%s: --pp %d with %d ranks per stage needs %d ranks, but "
                      "the job has %d", m->path, pp, tp, pp * tp,
                      opts->world ? opts->world->size : 1);
    m->world = opts->world;
  }
  if (tp > 1 || pp > 1) {
    ss_shard_opts so = {.tp = tp, .vocab_parallel = !opts->replicate_vocab,
                        .expert_parallel = opts->expert_parallel, .pp = pp,
                        .stage = pp > 1 ? opts->world->rank / tp : 0};
    if (pp > 1) {
      int rc = ss_pp_layers(m->cfg.n_layer, pp, opts->pp_layers, so.stage, &so.layers);
      if (rc) {
        char msg[512];
        snprintf(msg, sizeof msg, "%s", ss_error_msg());
        return ss_error(rc, "%s: %s", m->path, msg);
      }
    }
    int rc = ss_shard_plan_make(m, &so, &m->plan);
    if (rc) {
      char msg[512];
      snprintf(msg, sizeof msg, "%s", ss_error_msg());
      return ss_error(rc, "%s: %s", m->path, msg);
    }
    if ((rc = shard_weights(m, rank))) return rc;
  } else {
    int rc = gather_joined(m);
    if (rc) return rc;
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
  if (m->tok_embd.data) touch(m->tok_embd.data, ss_weight_nbytes(&m->tok_embd), &done, total, o);
  if (!c->tied_output && m->output.data)
    touch(m->output.data, ss_weight_nbytes(&m->output), &done, total, o);
  if (m->output_norm) touch(m->output_norm, (uint64_t)c->dim * sizeof(float), &done, total, o);
  for (int l = m->local.layer_begin; l < m->local.layer_end; l++) {
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
