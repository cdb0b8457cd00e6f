/* The CUDA backend: the vtable, device memory, the kernel wrappers (which
 * stage host metadata and launch the kernels of the .cu files), and the cuBLAS path for
 * large batches.  Steps, staging and graphs live in step.c. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kernels/cuda/cuda_ctx.h"
#include "runtime/base/status.h"

#define BLAS_WS_NBYTES (32u << 20)
/* Quantized weights take the cuBLAS path dequantized to bf16 this many
 * elements at a time (a 64 MiB buffer). */
#define WH_MAX_ELEMS (32ll << 20)

/* ---- errors and device selection ----------------------------------------- */

void ss_cuda_record(ss_cuda *c, const char *file, int line, const char *call, const char *msg) {
  if (c->err) return; /* the first error is the one that explains the rest */
  c->err = SS_ERR_INTERNAL;
  snprintf(c->errmsg, sizeof c->errmsg, "rank %d (host %s, GPU %d): %s:%d: %s: %s", c->rank,
           c->host, c->device, file, line, call, msg);
}

int ss_cuda_take_err(ss_cuda *c) {
  if (!c->err) return SS_OK;
  int rc = c->err;
  c->err = 0;
  return ss_error(rc, "cuda: %s", c->errmsg);
}

void ss_cuda_enter(ss_cuda *c) {
  /* The serve engine calls from its own thread: each thread must select the GPU. */
  static _Thread_local int t_device = -1;
  if (t_device == c->device) return;
  SS_CUDA_CHECK(c, cudaSetDevice(c->device));
  t_device = c->device;
}

int ss_cuda_device_count(void) {
  /* Without the driver's device nodes there is no GPU to find, and asking the
   * runtime anyway costs start-up time and leaves allocations behind that
   * LeakSanitizer reports. */
  if (access("/dev/nvidiactl", F_OK) != 0 && access("/dev/dxg", F_OK) != 0) return 0;
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return n;
}

/* ---- memory ------------------------------------------------------------------ */

static void *cu_alloc(ss_backend *be, size_t nbytes) {
  ss_cuda *c = be->ctx;
  ss_cuda_enter(c);
  void *p = NULL;
  cudaError_t e = cudaMalloc(&p, nbytes ? nbytes : 64);
  if (e != cudaSuccess) {
    cudaGetLastError();
    size_t free_b = 0, total_b = 0;
    cudaMemGetInfo(&free_b, &total_b);
    ss_error(SS_ERR_NOMEM, "cuda: rank %d (host %s, GPU %d): cudaMalloc of %.1f MiB: %s (%.1f of "
             "%.1f GiB free)", c->rank, c->host, c->device, (double)nbytes / (1 << 20),
             cudaGetErrorString(e), (double)free_b / (1 << 30), (double)total_b / (1 << 30));
    return NULL;
  }
  return p;
}

static void cu_dealloc(ss_backend *be, void *p) {
  ss_cuda *c = be->ctx;
  ss_cuda_enter(c);
  /* A captured graph may read this buffer: none may be replayed after it goes. */
  if (c->stats.cached) ss_cuda_graphs_drop(c);
  if (p) cudaFree(p);
}

static int cu_copy(ss_backend *be, void *dst, const void *src, size_t nbytes, bool up) {
  ss_cuda *c = be->ctx;
  ss_cuda_enter(c);
  if (c->mode == SS_CUDA_MODE_CAPTURE || c->mode == SS_CUDA_MODE_REPLAY)
    return ss_error(SS_ERR_INTERNAL, "cuda: %s inside a graph step", up ? "upload" : "download");
  if (nbytes) {
    SS_CUDA_CHECK(c, cudaMemcpyAsync(dst, src, nbytes,
                                     up ? cudaMemcpyHostToDevice : cudaMemcpyDeviceToHost,
                                     c->stream));
    ss_cuda_wait(c, up ? "upload" : "download");
  }
  return ss_cuda_take_err(c);
}

static int cu_upload(ss_backend *be, void *dst, const void *src, size_t nbytes) {
  return cu_copy(be, dst, src, nbytes, true);
}

static int cu_download(ss_backend *be, void *dst, const void *src, size_t nbytes) {
  return cu_copy(be, dst, src, nbytes, false);
}

/* In a replayed step the graph does the work: the wrappers only stage (and
 * sign the buffers they were given). */
static bool replaying_sig(ss_cuda *c, const void *a, const void *b, const void *d) {
  ss_cuda_enter(c);
  if (c->mode == SS_CUDA_MODE_CAPTURE || c->mode == SS_CUDA_MODE_REPLAY) ss_cuda_sig(c, a, b, d);
  return c->mode == SS_CUDA_MODE_REPLAY;
}
#define replaying(c) replaying_sig((c), NULL, NULL, NULL)

static void cu_memset(ss_backend *be, void *dst, int value, size_t nbytes) {
  ss_cuda *c = be->ctx;
  if (replaying_sig(c, dst, NULL, NULL) || !nbytes) return;
  SS_CUDA_CHECK(c, cudaMemsetAsync(dst, value, nbytes, c->stream));
}

/* Device to device on the compute stream: queued after the kernels before it
 * and before those after it, no wait.  Not inside a graph step (the model
 * copies KV blocks before the step begins). */
static int cu_copy_d2d(ss_backend *be, void *dst, const void *src, size_t nbytes) {
  ss_cuda *c = be->ctx;
  ss_cuda_enter(c);
  if (c->mode == SS_CUDA_MODE_CAPTURE || c->mode == SS_CUDA_MODE_REPLAY)
    return ss_error(SS_ERR_INTERNAL, "cuda: a device copy inside a graph step");
  if (nbytes)
    SS_CUDA_CHECK(c, cudaMemcpyAsync(dst, src, nbytes, cudaMemcpyDeviceToDevice, c->stream));
  return ss_cuda_take_err(c);
}

/* ---- kernels ------------------------------------------------------------------- */

static void cu_embed(ss_backend *be, const ss_weight *table, const int32_t *ids, int64_t n,
                     float *out) {
  ss_cuda *c = be->ctx;
  const bool rp = replaying_sig(c, table->data, out, NULL);
  const int32_t *d_ids = ss_cuda_stage(c, ids, (size_t)n * sizeof *ids);
  if (rp || !d_ids) return;
  SS_CUDA_CHECK(c, ss_cuda_launch_embed((int)table->type, table->data, table->row_nbytes,
                                        table->cols, d_ids, n, out, c->stream));
}

static void cu_rmsnorm(ss_backend *be, const float *x, const float *w, int64_t n, int64_t dim,
                       float eps, float *out) {
  ss_cuda *c = be->ctx;
  if (replaying_sig(c, x, w, out)) return;
  SS_CUDA_CHECK(c, ss_cuda_launch_rmsnorm(x, w, n, dim, eps, out, c->stream));
}

static void cu_rope(ss_backend *be, float *x, const int32_t *pos, int64_t n,
                    const ss_rope_params *p) {
  ss_cuda *c = be->ctx;
  const bool rp = replaying_sig(c, x, NULL, NULL);
  const int32_t *d_pos = ss_cuda_pos_get(c, pos, n);
  if (rp || !d_pos) return;
  SS_CUDA_CHECK(c, ss_cuda_launch_rope(x, d_pos, n, p->n_heads, p->head_dim, p->rope_dim,
                                       p->theta, p->mode == SS_ROPE_NEOX, c->stream));
}

/* The KV kernels read and write f32 elements only: a cache of another type is
 * refused when it is created (ss_kv_cache_init asks here), and a view of one
 * reaching a kernel is recorded as an error instead of being misread. */
static int cu_kv_dtype_check(ss_backend *be, ss_dtype t) {
  (void)be;
  if (t == SS_DTYPE_F32) return SS_OK;
  return ss_error(SS_ERR_UNSUPPORTED, "the CUDA backend has no KV cache kernels for %s (it "
                  "takes f32: --kv-cache-dtype f32)", ss_dtype_name(t));
}

static bool kv_dtype_ok(ss_cuda *c, const ss_kv_layer *kv, const char *what) {
  if (kv->dtype == SS_DTYPE_F32) return true;
  ss_cuda_record(c, __FILE__, __LINE__, what, "KV cache element type other than f32");
  return false;
}

static void cu_kv_store(ss_backend *be, const ss_kv_layer *kv, const ss_token_loc *loc,
                        const float *k, const float *v) {
  ss_cuda *c = be->ctx;
  if (!kv_dtype_ok(c, kv, "kv_store")) return;
  const bool rp = replaying_sig(c, kv->k, k, v) | replaying_sig(c, kv->v, NULL, NULL);
  ss_cuda_loc tmp;
  const ss_cuda_loc *dl = ss_cuda_loc_get(c, loc, kv->block_size, &tmp);
  if (rp || !dl) return;
  SS_CUDA_CHECK(c, ss_cuda_launch_kv_store(kv->k, kv->v, kv->block_size, kv->n_kv_head,
                                           kv->head_dim, dl->pos, dl->bt, dl->width, loc->n, k, v,
                                           c->stream));
}

static void cu_attention(ss_backend *be, const ss_kv_layer *kv, const ss_token_loc *loc,
                         const float *q, const ss_attn_params *p, float *out) {
  ss_cuda *c = be->ctx;
  if (!kv_dtype_ok(c, kv, "attention")) return;
  const bool rp = replaying_sig(c, kv->k, q, out) | replaying_sig(c, kv->v, NULL, NULL);
  ss_cuda_loc tmp;
  const ss_cuda_loc *dl = ss_cuda_loc_get(c, loc, kv->block_size, &tmp);
  if (!dl) return;
  const int G = p->group > 0 ? p->group : p->n_head / p->n_kv_head;
  const int hd = p->head_dim;
  /* Query rows per block: as many as shared memory holds next to a K/V chunk,
   * all of a KV head's query heads when they fit (decode reads K/V once). */
  const size_t fixed = ss_cuda_attn_smem_nbytes(0, 0, hd);
  const size_t per_row = ss_cuda_attn_smem_nbytes(1, 1, hd) - fixed;
  const long rows_max = c->smem_optin > fixed ? (long)((c->smem_optin - fixed) / per_row) : 0;
  if (rows_max < dl->tile_max) {
    ss_cuda_record(c, __FILE__, __LINE__, "attention", "head_dim too large for shared memory");
    return;
  }
  int hpb = (int)(rows_max / dl->tile_max);
  if (hpb > G) hpb = G;
  const size_t part_nbytes = (size_t)SS_CUDA_ATTN_MAX_TOKENS * p->n_head * SS_CUDA_ATTN_SPLITS *
                             ((size_t)hd + 2) * sizeof(float);
  const int64_t ntok_max = loc->n < SS_CUDA_ATTN_MAX_TOKENS ? loc->n : SS_CUDA_ATTN_MAX_TOKENS;
  float *part = ss_cuda_scratch(c, SS_CUDA_SCR_PART, part_nbytes / SS_CUDA_ATTN_MAX_TOKENS * ntok_max);
  if (rp || !part) return;
  ss_cuda_attn_args a = {.kc = kv->k, .vc = kv->v, .block_size = kv->block_size,
                         .n_kv_head = p->n_kv_head, .head_dim = hd, .pos = dl->pos, .bt = dl->bt,
                         .bt_width = dl->width, .q = q, .out = out, .n_head = p->n_head,
                         .group = G, .q_head_base = p->group > 0 ? p->q_head_base : 0,
                         .kv_head_base = p->group > 0 ? p->kv_head_base : 0, .scale = p->scale,
                         .softcap = p->softcap, .tile_max = dl->tile_max, .heads_per_block = hpb,
                         .part = part,
                         .smem_nbytes = ss_cuda_attn_smem_nbytes(dl->tile_max, hpb, hd)};
  /* Launches of at most SS_CUDA_ATTN_MAX_TOKENS tokens (the partials buffer),
   * planned with the tiles (launch_plan.h). */
  for (int i = 0; i < dl->n_runs; i++) {
    const ss_cuda_run *r = &dl->h_runs[i];
    a.tiles = dl->tiles + r->tile0;
    a.n_tiles = r->n_tiles;
    a.tok0 = r->tok0;
    a.n_tok = r->n_tok;
    SS_CUDA_CHECK(c, ss_cuda_launch_attention(&a, c->stream));
  }
}

static void cu_swiglu(ss_backend *be, const float *gate, const float *up, int64_t count,
                      float *out) {
  ss_cuda *c = be->ctx;
  if (replaying_sig(c, gate, up, out)) return;
  SS_CUDA_CHECK(c, ss_cuda_launch_swiglu(gate, up, count, out, c->stream));
}

static void cu_add(ss_backend *be, float *x, const float *y, int64_t count) {
  ss_cuda *c = be->ctx;
  if (replaying_sig(c, x, y, NULL)) return;
  SS_CUDA_CHECK(c, ss_cuda_launch_add(x, y, count, c->stream));
}

static void cu_gather_rows(ss_backend *be, const float *src, const int32_t *rows, int64_t n,
                           int64_t width, float *dst) {
  ss_cuda *c = be->ctx;
  const bool rp = replaying_sig(c, src, dst, NULL);
  const int32_t *d_rows = ss_cuda_stage(c, rows, (size_t)n * sizeof *rows);
  if (rp || !d_rows) return;
  SS_CUDA_CHECK(c, ss_cuda_launch_gather_rows(src, d_rows, n, width, dst, c->stream));
}

/* ---- matmul ----------------------------------------------------------------------- */

/* y (n, rows) row-major = x (n, cols) . W^T.  In cuBLAS's column-major terms
 * that is Y^T (rows x n) = op(W) X^T, with W's rows as columns of length cols
 * (lda = cols) transposed, and X^T columns of length cols (ldb = cols). */
static void gemm(ss_cuda *c, const void *w, cudaDataType_t wt, const void *x, cudaDataType_t xt,
                 int64_t rows, int64_t n, int64_t cols, float *y, int64_t ldy) {
  const float one = 1.0f, zero = 0.0f;
  SS_CUBLAS_CHECK(c, ss_cublas.gemm_ex(c->blas, CUBLAS_OP_T, CUBLAS_OP_N, (int)rows, (int)n, (int)cols,
                                  &one, w, wt, (int)cols, x, xt, (int)cols, &zero, y, CUDA_R_32F,
                                  (int)ldy, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

static void cu_matmul(ss_backend *be, const ss_weight *w, const float *x, int64_t n, float *y) {
  ss_cuda *c = be->ctx;
  if (replaying_sig(c, w->data, x, y)) return;
  if (n <= SS_CUDA_GEMV_MAX_N || c->invariant) {
    SS_CUDA_CHECK(c, ss_cuda_launch_gemv((int)w->type, w->data, w->row_nbytes, w->rows, w->cols,
                                         x, n, y, c->stream));
    return;
  }
  if (w->type == SS_DTYPE_F32) {
    gemm(c, w->data, CUDA_R_32F, x, CUDA_R_32F, w->rows, n, w->cols, y, w->rows);
    return;
  }
  /* Tensor cores: activations rounded to the weights' 16-bit type (bf16 for
   * quantized weights, whose rows are dequantized to bf16 a slab at a time). */
  const bool f16 = w->type == SS_DTYPE_F16;
  const cudaDataType_t ht = f16 ? CUDA_R_16F : CUDA_R_16BF;
  void *xh = ss_cuda_scratch(c, SS_CUDA_SCR_XH, (size_t)n * (size_t)w->cols * 2);
  if (!xh) return;
  SS_CUDA_CHECK(c, ss_cuda_launch_convert(x, n * w->cols, xh, !f16, c->stream));
  if (w->type == SS_DTYPE_F16 || w->type == SS_DTYPE_BF16) {
    gemm(c, w->data, ht, xh, ht, w->rows, n, w->cols, y, w->rows);
    return;
  }
  int64_t slab = WH_MAX_ELEMS / w->cols;
  if (slab < 1) slab = 1;
  if (slab > w->rows) slab = w->rows;
  void *wh = ss_cuda_scratch(c, SS_CUDA_SCR_WH, (size_t)slab * (size_t)w->cols * 2);
  if (!wh) return;
  for (int64_t r0 = 0; r0 < w->rows; r0 += slab) {
    const int64_t nr = w->rows - r0 < slab ? w->rows - r0 : slab;
    SS_CUDA_CHECK(c, ss_cuda_launch_dequant_bf16((int)w->type, w->data, w->row_nbytes, r0, nr,
                                                 w->cols, wh, c->stream));
    gemm(c, wh, CUDA_R_16BF, xh, CUDA_R_16BF, nr, n, w->cols, y + r0, w->rows);
  }
}

/* ---- comm and sync ------------------------------------------------------------------ */

static int cu_allreduce(ss_backend *be, const ss_collective *coll, float *buf, int64_t count) {
  ss_cuda *c = be->ctx;
  if (replaying_sig(c, buf, coll->ctx, NULL)) return SS_OK; /* captured in the graph */
  return coll->allreduce_f32(coll->ctx, buf, count, c->stream);
}

static int cu_sync(ss_backend *be, const ss_collective *coll) {
  ss_cuda *c = be->ctx;
  ss_cuda_enter(c);
  int rc = SS_OK;
  if (coll && coll->wait) rc = coll->wait(coll->ctx, c->stream);
  else ss_cuda_wait(c, "sync");
  int rc2 = ss_cuda_take_err(c);
  return rc ? rc : rc2;
}

static int cu_n_threads(const ss_backend *be) { return ((const ss_cuda *)be->ctx)->n_sm; }

static void cu_free(ss_backend *be) {
  if (!be) return;
  ss_cuda *c = be->ctx;
  if (c) {
    ss_cuda_enter(c);
    /* A stream that never drains (a hung collective) leaves its buffers
     * allocated: freeing them would block on it. */
    if (c->stream && !ss_cuda_wait(c, "free: waiting for the stream")) {
      ss_cuda_take_err(c);
      free(c);
      free(be);
      return;
    }
    ss_cuda_graphs_drop(c);
    ss_cuda_staging_free(c);
    for (int i = 0; i < SS_CUDA_SCR_COUNT_; i++)
      if (c->scr[i]) cudaFree(c->scr[i]);
    if (c->blas) ss_cublas.destroy(c->blas);
    if (c->blas_ws) cudaFree(c->blas_ws);
    if (c->stream) cudaStreamDestroy(c->stream);
    free(c->h_meta);
    free(c->step_plan.tiles);
    free(c->step_plan.runs);
    free(c->tmp_plan.tiles);
    free(c->tmp_plan.runs);
    free(c);
  }
  free(be);
}

/* ---- the extra operations of cuda.h ------------------------------------------------ */

void ss_cuda_geglu(ss_backend *be, const float *gate, const float *up, int64_t count, float *out) {
  ss_cuda *c = be->ctx;
  if (replaying_sig(c, gate, up, out)) return;
  SS_CUDA_CHECK(c, ss_cuda_launch_geglu(gate, up, count, out, c->stream));
}

void ss_cuda_softcap(ss_backend *be, float *x, int64_t count, float cap) {
  ss_cuda *c = be->ctx;
  if (replaying_sig(c, x, NULL, NULL)) return;
  SS_CUDA_CHECK(c, ss_cuda_launch_softcap(x, count, cap, c->stream));
}

void ss_cuda_scale(ss_backend *be, float *x, int64_t count, float scale) {
  ss_cuda *c = be->ctx;
  if (replaying_sig(c, x, NULL, NULL)) return;
  SS_CUDA_CHECK(c, ss_cuda_launch_scale(x, count, scale, c->stream));
}

int ss_cuda_topk(ss_backend *be, const float *logits, int64_t n, int64_t vocab, int k,
                 int32_t *ids, float *vals) {
  ss_cuda *c = be->ctx;
  ss_cuda_enter(c);
  if (k < 1 || k > 64 || k > vocab)
    return ss_error(SS_ERR_INVALID, "cuda top-k: k = %d must be in [1, min(64, vocab))", k);
  if (c->mode != SS_CUDA_MODE_NONE)
    return ss_error(SS_ERR_INTERNAL, "cuda top-k: called inside a step");
  const size_t nb = (size_t)n * (size_t)k;
  uint8_t *d = ss_cuda_scratch(c, SS_CUDA_SCR_TOPK, nb * (sizeof(int32_t) + sizeof(float)));
  if (!d) return ss_cuda_take_err(c);
  int32_t *d_ids = (int32_t *)d;
  float *d_vals = (float *)(d + nb * sizeof(int32_t));
  SS_CUDA_CHECK(c, ss_cuda_launch_topk(logits, n, vocab, k, d_ids, d_vals, c->stream));
  SS_CUDA_CHECK(c, cudaMemcpyAsync(ids, d_ids, nb * sizeof *ids, cudaMemcpyDeviceToHost, c->stream));
  if (vals)
    SS_CUDA_CHECK(c, cudaMemcpyAsync(vals, d_vals, nb * sizeof *vals, cudaMemcpyDeviceToHost,
                                     c->stream));
  ss_cuda_wait(c, "top-k");
  return ss_cuda_take_err(c);
}

int ss_cuda_argmax(ss_backend *be, const float *logits, int64_t n, int64_t vocab, int32_t *ids) {
  return ss_cuda_topk(be, logits, n, vocab, 1, ids, NULL);
}

void *ss_cuda_stream(const ss_backend *be) { return ((ss_cuda *)be->ctx)->stream; }

bool ss_backend_is_cuda(const ss_backend *be) { return be && be->alloc == cu_alloc; }

ss_cuda_graph_stats ss_cuda_graph_stats_get(const ss_backend *be) {
  return ((const ss_cuda *)be->ctx)->stats;
}

void ss_cuda_set_graphs(ss_backend *be, bool on) {
  ss_cuda *c = be->ctx;
  c->graphs = on;
  if (!on) ss_cuda_graphs_drop(c);
}

/* ---- creation --------------------------------------------------------------------- */

static bool env_flag(const char *name, bool dflt) {
  const char *s = getenv(name);
  if (!s || !*s) return dflt;
  return !(strcmp(s, "0") == 0 || strcmp(s, "off") == 0 || strcmp(s, "false") == 0);
}

static int env_rank(void) {
  const char *names[] = {"OMPI_COMM_WORLD_RANK", "PMI_RANK", "SLURM_PROCID"};
  for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
    const char *s = getenv(names[i]);
    if (s && *s) return atoi(s);
  }
  return 0;
}

ss_backend *ss_backend_cuda_create(int device) {
  ss_cuda_opts o = {.device = device, .graphs = env_flag("SS_CUDA_GRAPHS", true),
                    .batch_invariant = env_flag("SS_CUDA_BATCH_INVARIANT", false)};
  return ss_backend_cuda_create_opts(&o);
}

ss_backend *ss_backend_cuda_create_opts(const ss_cuda_opts *o) {
  char host[64] = "?";
  gethostname(host, sizeof host - 1);
  const int n_dev = ss_cuda_device_count();
  if (o->device < 0 || o->device >= n_dev) {
    ss_error(SS_ERR_UNSUPPORTED, "cuda: rank %d (host %s): GPU %d requested but %d CUDA device(s) "
             "are usable here%s", env_rank(), host, o->device, n_dev,
             n_dev ? "" : " (no driver or no GPU)");
    return NULL;
  }
  const char *why = ss_cublas_load();
  if (why) {
    ss_error(SS_ERR_UNSUPPORTED, "cuda: rank %d (host %s): %s", env_rank(), host, why);
    return NULL;
  }
  ss_backend *be = calloc(1, sizeof *be);
  ss_cuda *c = calloc(1, sizeof *c);
  if (!be || !c) {
    free(be);
    free(c);
    ss_error(SS_ERR_NOMEM, "cuda backend: out of memory");
    return NULL;
  }
  c->device = o->device;
  c->rank = env_rank();
  const char *tmo = getenv("SS_GPU_STEP_TIMEOUT_S");
  if (ss_cuda_parse_timeout(tmo, &c->step_timeout_s) != 0) {
    free(c);
    free(be);
    ss_error(SS_ERR_INVALID, "cuda backend: SS_GPU_STEP_TIMEOUT_S = '%s': must be seconds in "
             "[0, 1e6] (0: no limit)", tmo);
    return NULL;
  }
  memcpy(c->host, host, sizeof c->host);
  c->graphs = o->graphs;
  c->invariant = o->batch_invariant;
  be->ctx = c;
  ss_cuda_enter(c);
  int smem = 0;
  SS_CUDA_CHECK(c, cudaDeviceGetAttribute(&c->n_sm, cudaDevAttrMultiProcessorCount, c->device));
  SS_CUDA_CHECK(c, cudaDeviceGetAttribute(&smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, c->device));
  c->smem_optin = (size_t)smem;
  SS_CUDA_CHECK(c, ss_cuda_attn_configure(c->smem_optin));
  SS_CUDA_CHECK(c, cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking));
  SS_CUBLAS_CHECK(c, ss_cublas.create(&c->blas));
  SS_CUDA_CHECK(c, cudaMalloc(&c->blas_ws, BLAS_WS_NBYTES));
  if (!c->err) {
    /* A workspace of our own keeps cuBLAS from allocating inside graph captures. */
    SS_CUBLAS_CHECK(c, ss_cublas.set_stream(c->blas, c->stream));
    SS_CUBLAS_CHECK(c, ss_cublas.set_workspace(c->blas, c->blas_ws, BLAS_WS_NBYTES));
  }
  if (c->err) {
    ss_cuda_take_err(c);
    cu_free(be);
    return NULL;
  }
  *be = (ss_backend){
      .name = "cuda",
      .ctx = c,
      .free = cu_free,
      .n_threads = cu_n_threads,
      .alloc = cu_alloc,
      .dealloc = cu_dealloc,
      .embed = cu_embed,
      .rmsnorm = cu_rmsnorm,
      .matmul = cu_matmul,
      .rope = cu_rope,
      .kv_dtype_check = cu_kv_dtype_check,
      .kv_store = cu_kv_store,
      .attention = cu_attention,
      .swiglu = cu_swiglu,
      .add = cu_add,
      .device = true,
      .upload = cu_upload,
      .download = cu_download,
      .memset = cu_memset,
      .copy = cu_copy_d2d,
      .gather_rows = cu_gather_rows,
      .step_begin = ss_cuda_step_begin,
      .step_end = ss_cuda_step_end,
      .allreduce = cu_allreduce,
      .sync = cu_sync,
  };
  return be;
}
