/* ss_bench_gpu: one GPU, one model, the figures bench/bench_gpu.py reports.
 *
 * In one run, on one device: the device's copy bandwidth (cudaMemcpy device to
 * device; bytes read + written per second) and cuBLAS's bf16 GEMM rate on the
 * model's own prefill shapes (bf16 in, f32 out, f32 compute, as our backend
 * calls it); then our forward pass: a prefill of P tokens, and decode steps at
 * each batch size with every sequence C tokens deep (CUDA graphs on, logits
 * copied to the host each step as generate and serve do).  Prints one JSON
 * object per line.  Median of the timed repetitions, after warm-up.
 *
 * Usage: ss_bench_gpu --model M.gguf [--prefill 2048] [--ctx 512]
 *                     [--batches 1,64,256] [--steps 32] [--device 0] */
#include <cublas_v2.h>
#include <cuda_runtime_api.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kernels/cuda/cuda.h"
#include "runtime/base/clock.h"
#include "runtime/base/dtype.h"
#include "runtime/base/stats.h"
#include "runtime/base/status.h"
#include "runtime/model/kv_cache.h"
#include "runtime/model/model.h"

#define CK(call)                                                                          \
  do {                                                                                    \
    cudaError_t e_ = (call);                                                              \
    if (e_ != cudaSuccess) {                                                              \
      fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #call, cudaGetErrorString(e_)); \
      exit(1);                                                                            \
    }                                                                                     \
  } while (0)

static double median(double *v, int n) {
  ss_sort_doubles(v, (size_t)n);
  return ss_percentile(v, (size_t)n, 50);
}

/* Device-to-device copy of 2 GiB, bytes read + written per second. */
static double copy_bw(void) {
  const size_t nb = (size_t)2 << 30;
  void *a, *b;
  CK(cudaMalloc(&a, nb));
  CK(cudaMalloc(&b, nb));
  CK(cudaMemset(a, 1, nb));
  cudaEvent_t e0, e1;
  CK(cudaEventCreate(&e0));
  CK(cudaEventCreate(&e1));
  double t[10];
  for (int i = 0; i < 12; i++) {
    CK(cudaEventRecord(e0, 0));
    CK(cudaMemcpyAsync(b, a, nb, cudaMemcpyDeviceToDevice, 0));
    CK(cudaEventRecord(e1, 0));
    CK(cudaEventSynchronize(e1));
    float ms;
    CK(cudaEventElapsedTime(&ms, e0, e1));
    if (i >= 2) t[i - 2] = ms * 1e-3;
  }
  cudaFree(a), cudaFree(b);
  return 2.0 * (double)nb / median(t, 10);
}

/* count random bf16 values in [-1, 1) written to device memory dst. */
static void fill_random_bf16(void *dst, size_t count, uint64_t seed) {
  const size_t chunk = (size_t)1 << 22;
  uint16_t *h = malloc(chunk * sizeof *h);
  if (!h) {
    fprintf(stderr, "out of memory\n");
    exit(1);
  }
  uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
  for (size_t at = 0; at < count; at += chunk) {
    const size_t n = count - at < chunk ? count - at : chunk;
    for (size_t i = 0; i < n; i++) {
      x ^= x << 13, x ^= x >> 7, x ^= x << 17;
      h[i] = ss_f32_to_bf16((float)((double)(x >> 11) / 9007199254740992.0 * 2.0 - 1.0));
    }
    CK(cudaMemcpy((uint16_t *)dst + at, h, n * sizeof *h, cudaMemcpyHostToDevice));
  }
  free(h);
}

/* Seconds for y (n, rows) = x (n, cols) W^T in bf16 through cublasGemmEx. */
static double gemm_time(cublasHandle_t h, int64_t rows, int64_t n, int64_t cols) {
  void *w, *x, *y;
  CK(cudaMalloc(&w, (size_t)rows * cols * 2));
  CK(cudaMalloc(&x, (size_t)n * cols * 2));
  CK(cudaMalloc(&y, (size_t)n * rows * 4));
  /* Random bf16 in [-1, 1): GEMMs on zeros run faster than on real data
   * (less switching), which would flatter our fraction of the cuBLAS rate. */
  fill_random_bf16(w, (size_t)rows * cols, 1);
  fill_random_bf16(x, (size_t)n * cols, 2);
  const float one = 1, zero = 0;
  cudaEvent_t e0, e1;
  CK(cudaEventCreate(&e0));
  CK(cudaEventCreate(&e1));
  double t[20];
  for (int i = 0; i < 25; i++) {
    CK(cudaEventRecord(e0, 0));
    cublasStatus_t s = cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, (int)rows, (int)n, (int)cols,
                                    &one, w, CUDA_R_16BF, (int)cols, x, CUDA_R_16BF, (int)cols,
                                    &zero, y, CUDA_R_32F, (int)rows, CUBLAS_COMPUTE_32F,
                                    CUBLAS_GEMM_DEFAULT);
    if (s != CUBLAS_STATUS_SUCCESS) {
      fprintf(stderr, "cublasGemmEx: %s\n", cublasGetStatusString(s));
      exit(1);
    }
    CK(cudaEventRecord(e1, 0));
    CK(cudaEventSynchronize(e1));
    float ms;
    CK(cudaEventElapsedTime(&ms, e0, e1));
    if (i >= 5) t[i - 5] = ms * 1e-3;
  }
  cudaFree(w), cudaFree(x), cudaFree(y);
  return median(t, 20);
}

int main(int argc, char **argv) {
  const char *path = NULL;
  int prefill = 2048, ctx = 512, steps = 32, device = 0;
  int batches[16] = {1, 64, 256}, n_batches = 3;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!strcmp(argv[i], "--model")) path = argv[i + 1];
    else if (!strcmp(argv[i], "--prefill")) prefill = atoi(argv[i + 1]);
    else if (!strcmp(argv[i], "--ctx")) ctx = atoi(argv[i + 1]);
    else if (!strcmp(argv[i], "--steps")) steps = atoi(argv[i + 1]);
    else if (!strcmp(argv[i], "--device")) device = atoi(argv[i + 1]);
    else if (!strcmp(argv[i], "--batches")) {
      n_batches = 0;
      for (char *s = argv[i + 1]; *s && n_batches < 16;) {
        batches[n_batches++] = (int)strtol(s, &s, 10);
        if (*s == ',') s++;
      }
    } else {
      fprintf(stderr, "unknown option %s\n", argv[i]);
      return 2;
    }
  }
  if (!path) {
    fprintf(stderr, "usage: ss_bench_gpu --model M.gguf [--prefill N] [--ctx N] [--batches "
            "1,64,256] [--steps N] [--device D]\n");
    return 2;
  }
  if (ss_cuda_device_count() == 0) {
    printf("{\"skipped\": \"no usable CUDA device\"}\n");
    return 77;
  }
  CK(cudaSetDevice(device));
  struct cudaDeviceProp prop;
  CK(cudaGetDeviceProperties(&prop, device));
  printf("{\"device\": \"%s\", \"sm\": %d, \"mem_gib\": %.1f}\n", prop.name,
         prop.multiProcessorCount, (double)prop.totalGlobalMem / (1 << 30));

  const double bw = copy_bw();
  printf("{\"copy_bw_gbs\": %.1f}\n", bw / 1e9);

  ss_model *m = NULL;
  ss_model_load_opts lo = {.prefault = false};
  if (ss_model_load(path, &lo, &m)) {
    fprintf(stderr, "%s\n", ss_error_msg());
    return 1;
  }
  const ss_model_config *c = &m->cfg;
  /* cuBLAS on this model's prefill GEMMs (one layer's seven, the LM head once). */
  cublasHandle_t h;
  cublasCreate(&h);
  const int64_t C = c->dim, QD = (int64_t)c->n_head * c->head_dim,
                KD = (int64_t)c->n_kv_head * c->head_dim, F = c->ffn_dim, P = prefill;
  const double t_layer = gemm_time(h, QD, P, C) + 2 * gemm_time(h, KD, P, C) +
                         gemm_time(h, C, P, QD) + 2 * gemm_time(h, F, P, C) +
                         gemm_time(h, C, P, F);
  const double flops_layer = 2.0 * P * (QD * C + 2 * KD * C + C * QD + 3 * F * C);
  const double gemm_rate = flops_layer / t_layer;
  cublasDestroy(h);
  /* Attention's own FLOPs (causal: half the square) count as work done too. */
  const double attn_flops = 2.0 * 2.0 * (double)P * P / 2 * QD * c->n_layer;
  const double prefill_flops = flops_layer * c->n_layer + 2.0 * C * c->vocab + attn_flops;
  printf("{\"cublas_bf16_tflops\": %.1f, \"prefill_gemm_s_at_cublas_rate\": %.4f}\n",
         gemm_rate / 1e12, flops_layer * c->n_layer / gemm_rate);

  ss_backend *be = ss_backend_cuda_create(device);
  if (!be || ss_model_upload(m, be)) {
    fprintf(stderr, "%s\n", ss_error_msg());
    return 1;
  }
  int max_b = 1;
  for (int i = 0; i < n_batches; i++) max_b = batches[i] > max_b ? batches[i] : max_b;
  const int bs = 16;
  const int per_seq = (ctx + steps + 16 + bs - 1) / bs + 1;
  const int need_prefill = (prefill + bs - 1) / bs;
  const int n_blocks = max_b * per_seq > need_prefill ? max_b * per_seq : need_prefill;
  ss_kv_cache kv;
  ss_forward_state st;
  const int64_t T = prefill > max_b ? prefill : max_b;
  if (ss_model_kv_init(m, be, bs, n_blocks, SS_DTYPE_F32, &kv) || ss_forward_state_init(&st, m, be, T, max_b)) {
    fprintf(stderr, "%s\n", ss_error_msg());
    return 1;
  }
  float *logits = malloc((size_t)max_b * c->vocab * sizeof *logits);
  int32_t *tok = malloc((size_t)T * 4), *pos = malloc((size_t)T * 4), *rows = malloc((size_t)T * 4);
  const int32_t **bt = malloc((size_t)T * sizeof *bt);
  int32_t *tables = malloc((size_t)n_blocks * 4);
  for (int i = 0; i < n_blocks; i++) tables[i] = i;

  /* Prefill: one sequence of P tokens, the last token's logits. */
  for (int t = 0; t < P; t++) tok[t] = (t * 7919) % c->vocab, pos[t] = t, bt[t] = tables;
  int32_t last = P - 1;
  ss_batch b = {.n = P, .tokens = tok, .loc = {.n = P, .pos = pos, .block_table = bt},
                .n_logits = 1, .logit_rows = &last};
  double tp[5];
  for (int i = 0; i < 6; i++) {
    double t0 = ss_now_s();
    if (ss_model_forward(m, &st, &kv, &b, logits)) {
      fprintf(stderr, "%s\n", ss_error_msg());
      return 1;
    }
    if (i >= 1) tp[i - 1] = ss_now_s() - t0;
  }
  const double t_pre = median(tp, 5);
  printf("{\"prefill_tokens\": %lld, \"prefill_s\": %.4f, \"prefill_tok_s\": %.0f, "
         "\"prefill_tflops\": %.1f, \"prefill_frac_of_cublas\": %.3f}\n", (long long)P, t_pre, P / t_pre,
         prefill_flops / t_pre / 1e12, prefill_flops / t_pre / gemm_rate);

  /* Decode: B sequences, each ctx deep, one token each per step. */
  for (int bi = 0; bi < n_batches; bi++) {
    const int B = batches[bi];
    double *ts = malloc((size_t)steps * sizeof *ts);
    for (int s = -3; s < steps; s++) { /* 3 warm-up steps: eager, capture, replay */
      for (int q = 0; q < B; q++) {
        tok[q] = (q * 131 + s * 17 + 1000) % c->vocab;
        pos[q] = ctx + (s + 3);
        bt[q] = tables + (size_t)q * per_seq;
        rows[q] = q;
      }
      ss_batch d = {.n = B, .tokens = tok, .loc = {.n = B, .pos = pos, .block_table = bt},
                    .n_logits = B, .logit_rows = rows};
      double t0 = ss_now_s();
      if (ss_model_forward(m, &st, &kv, &d, logits)) {
        fprintf(stderr, "%s\n", ss_error_msg());
        return 1;
      }
      if (s >= 0) ts[s] = ss_now_s() - t0;
    }
    const double t = median(ts, steps);
    /* Bytes a step must read: every weight once (of the token embedding only
     * the B rows looked up, unless the LM head is the same table), and each
     * sequence's K and V. */
    const double kv_bytes = (double)B * (ctx + steps / 2) * 2.0 * KD * 4 * c->n_layer;
    const double embd_nb = (double)m->tok_embd.rows * (double)m->tok_embd.row_nbytes;
    const double embd_unread = c->tied_output ? 0.0 : embd_nb - (double)B * m->tok_embd.row_nbytes;
    const double bytes = (double)m->weight_nbytes - embd_unread + kv_bytes;
    ss_cuda_graph_stats gs = ss_cuda_graph_stats_get(be);
    printf("{\"batch\": %d, \"ctx\": %d, \"step_ms\": %.3f, \"tok_s\": %.0f, \"bytes_per_step_gb\": "
           "%.3f, \"bw_util_of_copy\": %.3f, \"graphs_replayed\": %llu}\n", B, ctx, t * 1e3, B / t,
           bytes / 1e9, bytes / t / bw, (unsigned long long)gs.replayed);
    free(ts);
  }
  ss_forward_state_free(&st);
  ss_kv_cache_free(&kv);
  ss_model_free(m);
  be->free(be);
  free(logits), free(tok), free(pos), free(rows), free(bt), free(tables);
  return 0;
}
