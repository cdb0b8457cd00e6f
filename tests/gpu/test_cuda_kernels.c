/* Every CUDA kernel against the CPU kernel (the reference) on fresh random
 * inputs, by normalised mean squared error
 *     NMSE = sum (gpu - cpu)^2 / sum cpu^2
 * with the thresholds below, stated per op and never widened to pass:
 *   f32 paths (f32 activations, weights dequantized exactly)      <= 1e-6
 *   tensor-core paths (activations/weights rounded to bf16/f16)  <= 1e-4
 * Output buffers are poisoned with NaN before each run, so an element a kernel
 * fails to write shows as NaN, never as a stale right answer.  Also checked:
 * batch invariance on the GPU (a row alone and in a batch, a token in decode
 * and in a prefill tile: bit-identical), device top-k against a sort, and a
 * step captured as a CUDA graph and replayed with new data.
 *
 * Exits 77 (ctest: skipped) with the reason when no GPU is usable. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cuda/cuda.h"
#include "kernels/kernels.h"
#include "runtime/base/dtype.h"
#include "runtime/base/status.h"

#define TOL_F32 1e-6
#define TOL_TC 1e-4

static int g_fail, g_pass;
static ss_backend *cpu, *gpu;
static uint64_t rng = 0x1234567;

static float frand(void) { /* uniform [-1, 1) */
  rng = rng * 6364136223846793005ull + 1442695040888963407ull;
  return (float)((rng >> 40) * (1.0 / 8388608.0)) - 1.0f;
}
static float *randv(int64_t n, float scale) {
  float *v = malloc((size_t)n * sizeof *v);
  for (int64_t i = 0; i < n; i++) v[i] = frand() * scale;
  return v;
}

static double nmse(const float *got, const float *ref, int64_t n) {
  double e = 0, r = 0;
  for (int64_t i = 0; i < n; i++) {
    if (isnan(got[i]) != isnan(ref[i])) return INFINITY;
    e += ((double)got[i] - ref[i]) * ((double)got[i] - ref[i]);
    r += (double)ref[i] * ref[i];
  }
  return r > 0 ? e / r : e;
}

static void check(const char *what, double err, double tol) {
  if (err <= tol) {
    g_pass++;
    printf("ok    %-44s nmse %.3g (<= %.0e)\n", what, err, tol);
  } else {
    g_fail++;
    printf("FAIL  %-44s nmse %.3g (> %.0e)\n", what, err, tol);
  }
}
static void check_true(const char *what, int ok) {
  if (ok) g_pass++, printf("ok    %s\n", what);
  else g_fail++, printf("FAIL  %s\n", what);
}

/* ---- device helpers --------------------------------------------------------- */

static void *dup_dev(const void *h, size_t nbytes) {
  void *d = gpu->alloc(gpu, nbytes);
  if (!d || gpu->upload(gpu, d, h, nbytes)) {
    fprintf(stderr, "upload failed: %s\n", ss_error_msg());
    exit(1);
  }
  return d;
}
static float *nan_dev(int64_t n) { /* poisoned device output */
  float *d = gpu->alloc(gpu, (size_t)n * sizeof(float));
  gpu->memset(gpu, d, 0xff, (size_t)n * sizeof(float));
  return d;
}
static float *nan_host(int64_t n) {
  float *h = malloc((size_t)n * sizeof *h);
  memset(h, 0xff, (size_t)n * sizeof *h);
  return h;
}
static float *fetch(const float *d, int64_t n) {
  float *h = nan_host(n);
  if (gpu->sync(gpu, NULL) || gpu->download(gpu, h, d, (size_t)n * sizeof *h)) {
    fprintf(stderr, "cuda error: %s\n", ss_error_msg());
    exit(1);
  }
  return h;
}

/* A random weight of `type`: f32 values quantized (the same bytes go to both). */
static ss_weight make_weight(ss_dtype type, int64_t rows, int64_t cols, void **host) {
  const ss_dtype_info *ti = ss_dtype_get(type);
  ss_weight w = {.type = type, .rows = rows, .cols = cols,
                 .row_nbytes = (size_t)(cols / ti->block_count) * ti->block_nbytes};
  uint8_t *h = malloc(w.row_nbytes * (size_t)rows);
  float *row = randv(cols, 1.0f / sqrtf((float)cols));
  for (int64_t r = 0; r < rows; r++) {
    for (int64_t c = 0; c < cols; c++) row[c] = frand() / sqrtf((float)cols);
    ss_quantize_row(type, row, h + (size_t)r * w.row_nbytes, cols);
  }
  free(row);
  *host = h;
  w.data = h;
  return w;
}

static const ss_dtype k_types[] = {SS_DTYPE_F32, SS_DTYPE_F16, SS_DTYPE_BF16,
                                   SS_DTYPE_Q8_0, SS_DTYPE_Q4_0, SS_DTYPE_Q4_1};

/* ---- tests --------------------------------------------------------------------- */

static void test_embed(void) {
  const int64_t V = 97, C = 256, n = 9;
  const int32_t ids[9] = {0, 5, 96, -1, 40, 40, 13, -1, 77};
  for (size_t k = 0; k < sizeof k_types / sizeof *k_types; k++) {
    void *hw;
    ss_weight w = make_weight(k_types[k], V, C, &hw);
    ss_weight dw = w;
    dw.data = dup_dev(hw, w.row_nbytes * (size_t)V);
    float *ref = nan_host(n * C), *d = nan_dev(n * C);
    cpu->embed(cpu, &w, ids, n, ref);
    gpu->embed(gpu, &dw, ids, n, d);
    float *got = fetch(d, n * C);
    char what[64];
    snprintf(what, sizeof what, "embed %s (negative ids -> 0)", ss_dtype_name(w.type));
    check(what, nmse(got, ref, n * C), TOL_F32);
    free(ref), free(got), free(hw);
    gpu->dealloc(gpu, (void *)dw.data), gpu->dealloc(gpu, d);
  }
}

static void test_rmsnorm_rope(void) {
  const int64_t n = 7, C = 4096 + 64;
  float *x = randv(n * C, 3.0f), *w = randv(C, 1.0f);
  float *dx = dup_dev(x, n * C * 4), *dw = dup_dev(w, C * 4), *d = nan_dev(n * C);
  float *ref = nan_host(n * C);
  cpu->rmsnorm(cpu, x, w, n, C, 1e-5f, ref);
  gpu->rmsnorm(gpu, dx, dw, n, C, 1e-5f, d);
  float *got = fetch(d, n * C);
  check("rmsnorm", nmse(got, ref, n * C), TOL_F32);
  free(x), free(w), free(ref), free(got);
  gpu->dealloc(gpu, dx), gpu->dealloc(gpu, dw), gpu->dealloc(gpu, d);

  const int32_t pos[5] = {0, 1, 17, 1000, 123456};
  for (int mode = 0; mode < 2; mode++) {
    ss_rope_params p = {.n_heads = 6, .head_dim = 128, .rope_dim = mode ? 64 : 128,
                        .theta = mode ? 500000.0f : 10000.0f, .mode = mode ? SS_ROPE_NEOX : SS_ROPE_NORM};
    const int64_t cnt = 5 * 6 * 128;
    float *h = randv(cnt, 1.0f), *dh = dup_dev(h, cnt * 4);
    cpu->rope(cpu, h, pos, 5, &p);
    gpu->rope(gpu, dh, pos, 5, &p);
    float *g = fetch(dh, cnt);
    check(mode ? "rope neox (partial rotary, theta 5e5)" : "rope norm (adjacent pairs)",
          nmse(g, h, cnt), TOL_F32);
    free(h), free(g), gpu->dealloc(gpu, dh);
  }
}

static void test_elementwise(void) {
  const int64_t n = 100003;
  float *a = randv(n, 4.0f), *b = randv(n, 2.0f);
  float *da = dup_dev(a, n * 4), *db = dup_dev(b, n * 4), *d = nan_dev(n);
  float *ref = nan_host(n);
  cpu->swiglu(cpu, a, b, n, ref);
  gpu->swiglu(gpu, da, db, n, d);
  float *got = fetch(d, n);
  check("swiglu", nmse(got, ref, n), TOL_F32);
  free(got);
  /* GeGLU and soft cap against formulas computed here (no CPU slot yet). */
  for (int64_t i = 0; i < n; i++) {
    double g = a[i];
    ref[i] = (float)(0.5 * g * (1.0 + tanh(0.7978845608028654 * (g + 0.044715 * g * g * g))) * b[i]);
  }
  gpu->memset(gpu, d, 0xff, n * 4);
  ss_cuda_geglu(gpu, da, db, n, d);
  got = fetch(d, n);
  check("geglu (tanh GeLU)", nmse(got, ref, n), TOL_F32);
  free(got);
  for (int64_t i = 0; i < n; i++) ref[i] = (float)(30.0 * tanh(a[i] * 10.0 / 30.0));
  float *a10 = malloc(n * 4);
  for (int64_t i = 0; i < n; i++) a10[i] = a[i] * 10.0f;
  float *dc = dup_dev(a10, n * 4);
  ss_cuda_softcap(gpu, dc, n, 30.0f);
  got = fetch(dc, n);
  check("softcap 30*tanh(x/30)", nmse(got, ref, n), TOL_F32);
  free(got);
  memcpy(ref, a, n * 4);
  cpu->add(cpu, ref, b, n);
  gpu->add(gpu, da, db, n);
  got = fetch(da, n);
  check("add", nmse(got, ref, n), TOL_F32);
  free(got);
  const int32_t rows[4] = {3, 0, 3, 9};
  float *gr = nan_host(4 * 1000), *dg = nan_dev(4 * 1000);
  cpu->gather_rows(cpu, b, rows, 4, 1000, gr);
  gpu->gather_rows(gpu, db, rows, 4, 1000, dg);
  got = fetch(dg, 4 * 1000);
  check("gather_rows", nmse(got, gr, 4 * 1000), 0.0);
  free(got), free(gr), free(a), free(b), free(a10), free(ref);
  gpu->dealloc(gpu, da), gpu->dealloc(gpu, db), gpu->dealloc(gpu, d), gpu->dealloc(gpu, dc);
  gpu->dealloc(gpu, dg);
}

static void test_matmul(void) {
  const int64_t rows = 333, cols = 1024;
  const int64_t ns[] = {1, 2, 5, 8, 33, 130};
  for (size_t k = 0; k < sizeof k_types / sizeof *k_types; k++) {
    void *hw;
    ss_weight w = make_weight(k_types[k], rows, cols, &hw);
    ss_weight dw = w;
    dw.data = dup_dev(hw, w.row_nbytes * (size_t)rows);
    for (size_t j = 0; j < sizeof ns / sizeof *ns; j++) {
      const int64_t n = ns[j];
      float *x = randv(n * cols, 1.0f), *dx = dup_dev(x, n * cols * 4);
      float *ref = nan_host(n * rows), *d = nan_dev(n * rows);
      cpu->matmul(cpu, &w, x, n, ref);
      gpu->matmul(gpu, &dw, dx, n, d);
      float *got = fetch(d, n * rows);
      const bool tc = n > SS_CUDA_GEMV_MAX_N && w.type != SS_DTYPE_F32;
      char what[80];
      snprintf(what, sizeof what, "matmul %s n=%lld (%s)", ss_dtype_name(w.type), (long long)n,
               n <= SS_CUDA_GEMV_MAX_N ? "gemv" : tc ? "cuBLAS bf16/f16" : "cuBLAS f32");
      check(what, nmse(got, ref, n * rows), tc ? TOL_TC : TOL_F32);
      /* Batch invariance of the gemv path: token 0 alone gives the same bits. */
      if (n > 1 && n <= SS_CUDA_GEMV_MAX_N) {
        float *d1 = nan_dev(rows);
        gpu->matmul(gpu, &dw, dx, 1, d1);
        float *g1 = fetch(d1, rows);
        snprintf(what, sizeof what, "matmul %s n=1 == row 0 of n=%lld (bits)",
                 ss_dtype_name(w.type), (long long)n);
        check_true(what, memcmp(g1, got, rows * 4) == 0);
        free(g1), gpu->dealloc(gpu, d1);
      }
      free(x), free(ref), free(got);
      gpu->dealloc(gpu, dx), gpu->dealloc(gpu, d);
    }
    free(hw), gpu->dealloc(gpu, (void *)dw.data);
  }
}

/* Paged attention: sequences in scattered blocks; decode tokens, a prefill
 * run, GQA with a tensor-parallel slice of heads, and a soft cap. */
static void test_attention(void) {
  const int bs = 16, n_blocks = 96, hd = 128, kvh = 2, nh = 8, group = 4;
  const int64_t per = (int64_t)n_blocks * kvh * bs * hd;
  ss_kv_layer hkv = {.k = nan_host(per), .v = nan_host(per), .block_size = bs, .n_kv_head = kvh,
                     .head_dim = hd};
  ss_kv_layer dkv = hkv;
  dkv.k = nan_dev(per), dkv.v = nan_dev(per);
  /* Three sequences' block tables: a permutation of the blocks. */
  int32_t tab[3][32];
  for (int i = 0; i < 96; i++) tab[i % 3][i / 3] = (i * 37) % 96;
  /* Prefill: sequence 0 positions 0..299 in one batch; then decode steps. */
  const int P = 300;
  int32_t *pos = malloc(P * sizeof *pos);
  const int32_t **bt = malloc(P * sizeof *bt);
  for (int t = 0; t < P; t++) pos[t] = t, bt[t] = tab[0];
  float *k = randv((int64_t)P * kvh * hd, 1.0f), *v = randv((int64_t)P * kvh * hd, 1.0f);
  float *q = randv((int64_t)P * nh * hd, 1.0f);
  float *dk = dup_dev(k, (size_t)P * kvh * hd * 4), *dv = dup_dev(v, (size_t)P * kvh * hd * 4);
  float *dq = dup_dev(q, (size_t)P * nh * hd * 4);
  ss_token_loc loc = {.n = P, .pos = pos, .block_table = bt};
  cpu->kv_store(cpu, &hkv, &loc, k, v);
  gpu->kv_store(gpu, &dkv, &loc, dk, dv);
  for (int sc = 0; sc < 2; sc++) {
    ss_attn_params ap = {.n_head = nh, .n_kv_head = kvh, .group = group, .head_dim = hd,
                         .scale = 1.0f / sqrtf((float)hd), .softcap = sc ? 30.0f : 0.0f};
    float *ref = nan_host((int64_t)P * nh * hd), *d = nan_dev((int64_t)P * nh * hd);
    cpu->attention(cpu, &hkv, &loc, q, &ap, ref);
    gpu->attention(gpu, &dkv, &loc, dq, &ap, d);
    float *got = fetch(d, (int64_t)P * nh * hd);
    check(sc ? "attention prefill 300 tokens, softcap 30" : "attention prefill 300 tokens (GQA 4)",
          nmse(got, ref, (int64_t)P * nh * hd), TOL_F32);
    if (!sc) {
      /* Decode of token 257 alone (its K/V already stored) == its prefill row. */
      ss_token_loc one = {.n = 1, .pos = &pos[257], .block_table = &bt[257]};
      float *d1 = nan_dev(nh * hd);
      gpu->attention(gpu, &dkv, &one, dq + (size_t)257 * nh * hd, &ap, d1);
      float *g1 = fetch(d1, nh * hd);
      check_true("attention: decode of a token == its prefill row (bits)",
                 memcmp(g1, got + (size_t)257 * nh * hd, (size_t)nh * hd * 4) == 0);
      free(g1), gpu->dealloc(gpu, d1);
    }
    free(ref), free(got), gpu->dealloc(gpu, d);
  }
  /* A rank's slice: local query heads 4..7 of 8 read global KV head 1. */
  {
    ss_attn_params ap = {.n_head = 4, .n_kv_head = 1, .group = 4, .head_dim = hd,
                         .scale = 0.088f, .q_head_base = 4, .kv_head_base = 1};
    ss_kv_layer hs = hkv, ds = dkv; /* KV head 1 only: a 1-head cache view */
    const int64_t per1 = (int64_t)n_blocks * bs * hd;
    float *k1 = malloc(per1 * 4), *v1 = malloc(per1 * 4);
    for (int b = 0; b < n_blocks; b++) {
      const int64_t src = ((int64_t)b * kvh + 1) * bs * hd;
      memcpy(k1 + (int64_t)b * bs * hd, (const float *)hkv.k + src, bs * hd * 4);
      memcpy(v1 + (int64_t)b * bs * hd, (const float *)hkv.v + src, bs * hd * 4);
    }
    hs.k = k1, hs.v = v1, hs.n_kv_head = 1;
    ds.k = dup_dev(k1, per1 * 4), ds.v = dup_dev(v1, per1 * 4), ds.n_kv_head = 1;
    ss_token_loc l4 = {.n = 4, .pos = pos + 200, .block_table = bt + 200};
    float *qs = randv(4 * 4 * hd, 1.0f), *dqs = dup_dev(qs, 4 * 4 * hd * 4);
    float *ref = nan_host(4 * 4 * hd), *d = nan_dev(4 * 4 * hd);
    cpu->attention(cpu, &hs, &l4, qs, &ap, ref);
    gpu->attention(gpu, &ds, &l4, dqs, &ap, d);
    float *got = fetch(d, 4 * 4 * hd);
    check("attention, tensor-parallel head slice", nmse(got, ref, 4 * 4 * hd), TOL_F32);
    free(k1), free(v1), free(qs), free(ref), free(got);
    gpu->dealloc(gpu, ds.k), gpu->dealloc(gpu, ds.v), gpu->dealloc(gpu, dqs), gpu->dealloc(gpu, d);
  }
  free(pos), free(bt), free(k), free(v), free(q), free(hkv.k), free(hkv.v);
  gpu->dealloc(gpu, dk), gpu->dealloc(gpu, dv), gpu->dealloc(gpu, dq);
  gpu->dealloc(gpu, dkv.k), gpu->dealloc(gpu, dkv.v);
}

static int cmp_desc(const void *a, const void *b) {
  const float *x = a, *y = b;
  return x[0] < y[0] ? 1 : x[0] > y[0] ? -1 : (x[1] > y[1]) - (x[1] < y[1]);
}

static void test_topk(void) {
  const int64_t n = 3, V = 50257;
  const int k = 40;
  float *x = randv(n * V, 5.0f);
  x[7] = x[9] = 100.0f; /* a tie: the lower index first */
  float *dx = dup_dev(x, n * V * 4);
  int32_t *ids = malloc(n * k * 4);
  float *vals = malloc(n * k * 4);
  int rc = ss_cuda_topk(gpu, dx, n, V, k, ids, vals);
  int ok = rc == 0;
  float *pairs = malloc(V * 2 * sizeof *pairs);
  for (int64_t r = 0; r < n && ok; r++) {
    for (int64_t i = 0; i < V; i++) pairs[2 * i] = x[r * V + i], pairs[2 * i + 1] = (float)i;
    qsort(pairs, V, 2 * sizeof *pairs, cmp_desc);
    for (int i = 0; i < k; i++) ok &= ids[r * k + i] == (int32_t)pairs[2 * i + 1];
  }
  int32_t am[3];
  ok &= ss_cuda_argmax(gpu, dx, n, V, am) == 0 && am[0] == 7 && am[1] == ids[k] && am[2] == ids[2 * k];
  check_true("top-k 40 and argmax of 3 x 50257 (ties: lower index first)", ok);
  free(x), free(ids), free(vals), free(pairs), gpu->dealloc(gpu, dx);
}

/* A small step (rope + kv_store + attention) captured as a graph on its
 * second run and replayed with new positions and data: every run must match
 * the CPU, and the stats must show the capture and the replays. */
static void test_graphs(void) {
  enum { n = 4 };
  const int bs = 16, nb = 64, hd = 64, kvh = 2, nh = 4, steps = 6;
  const int64_t per = (int64_t)nb * kvh * bs * hd;
  ss_kv_layer hkv = {.k = calloc(per, 4), .v = calloc(per, 4), .block_size = bs, .n_kv_head = kvh,
                     .head_dim = hd};
  ss_kv_layer dkv = hkv;
  dkv.k = nan_dev(per), dkv.v = nan_dev(per);
  gpu->memset(gpu, dkv.k, 0, per * 4), gpu->memset(gpu, dkv.v, 0, per * 4);
  int32_t tabs[n][16];
  for (int s = 0; s < n; s++)
    for (int i = 0; i < 16; i++) tabs[s][i] = s * 16 + i;
  const int32_t *bt[n] = {tabs[0], tabs[1], tabs[2], tabs[3]};
  ss_rope_params rp = {.n_heads = nh, .head_dim = hd, .rope_dim = hd, .theta = 1e4f, .mode = SS_ROPE_NORM};
  ss_attn_params ap = {.n_head = nh, .n_kv_head = kvh, .head_dim = hd, .scale = 0.125f};
  float *dq = nan_dev(n * nh * hd), *dk = nan_dev(n * kvh * hd), *dv = nan_dev(n * kvh * hd);
  float *dout = nan_dev(n * nh * hd), *ref = nan_host(n * nh * hd);
  ss_cuda_set_graphs(gpu, true);
  const ss_cuda_graph_stats s0 = ss_cuda_graph_stats_get(gpu);
  double worst = 0;
  for (int step = 0; step < steps; step++) {
    int32_t pos[n];
    for (int s = 0; s < n; s++) pos[s] = 3 + step + 5 * s; /* same block-table width */
    float *q = randv(n * nh * hd, 1), *k = randv(n * kvh * hd, 1), *v = randv(n * kvh * hd, 1);
    ss_token_loc loc = {.n = n, .pos = pos, .block_table = bt};
    /* Inputs go in before the step: uploads are not part of a graph. */
    gpu->upload(gpu, dq, q, n * nh * hd * 4), gpu->upload(gpu, dk, k, n * kvh * hd * 4);
    gpu->upload(gpu, dv, v, n * kvh * hd * 4);
    gpu->step_begin(gpu, &loc, 0, bs);
    gpu->rope(gpu, dq, pos, n, &rp);
    gpu->kv_store(gpu, &dkv, &loc, dk, dv);
    gpu->attention(gpu, &dkv, &loc, dq, &ap, dout);
    int rc = gpu->step_end(gpu);
    if (rc) printf("step_end: %s\n", ss_error_msg());
    cpu->rope(cpu, q, pos, n, &rp);
    cpu->kv_store(cpu, &hkv, &loc, k, v);
    cpu->attention(cpu, &hkv, &loc, q, &ap, ref);
    float *got = fetch(dout, n * nh * hd);
    double e = nmse(got, ref, n * nh * hd);
    worst = e > worst ? e : worst;
    free(q), free(k), free(v), free(got);
  }
  const ss_cuda_graph_stats s1 = ss_cuda_graph_stats_get(gpu);
  check("graph-replayed steps vs CPU (6 steps)", worst, TOL_F32);
  check_true("graphs: 1 eager, 1 captured, 4 replayed",
             s1.eager - s0.eager == 1 && s1.captured - s0.captured == 1 &&
                 s1.replayed - s0.replayed == 4);
  free(hkv.k), free(hkv.v), free(ref);
  gpu->dealloc(gpu, dkv.k), gpu->dealloc(gpu, dkv.v), gpu->dealloc(gpu, dq);
  gpu->dealloc(gpu, dk), gpu->dealloc(gpu, dv), gpu->dealloc(gpu, dout);
}

int main(void) {
  setvbuf(stdout, NULL, _IONBF, 0);
  const int n_dev = ss_cuda_device_count();
  if (n_dev == 0) {
    printf("SKIPPED: no usable CUDA device on this host (no GPU or no driver): the CUDA kernels "
           "are built but cannot be run here\n");
    return 77;
  }
  cpu = ss_backend_cpu_create(2);
  ss_cuda_opts o = {.device = 0, .graphs = false};
  gpu = ss_backend_cuda_create_opts(&o);
  if (!cpu || !gpu) {
    printf("FAIL: creating the backends: %s\n", ss_error_msg());
    return 1;
  }
  test_embed();
  test_rmsnorm_rope();
  test_elementwise();
  test_matmul();
  test_attention();
  test_topk();
  test_graphs();
  printf("%d passed, %d failed\n", g_pass, g_fail);
  gpu->free(gpu);
  cpu->free(cpu);
  return g_fail ? 1 : 0;
}
