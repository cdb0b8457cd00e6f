/* CPU kernels against double-precision references written here, plus the
 * batch- and thread-invariance the engine relies on. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/kernels.h"

/* A deterministic generator for test data (independent of the engine's RNG). */
static uint64_t g_state = 0x1234567887654321ull;
static double urand(void) {
  g_state ^= g_state << 13;
  g_state ^= g_state >> 7;
  g_state ^= g_state << 17;
  return (double)(g_state >> 11) * 0x1.0p-53;
}
static float nrand(void) { /* roughly normal: sum of uniforms */
  double s = 0;
  for (int i = 0; i < 6; i++) s += urand();
  return (float)(s - 3.0);
}

/* FP8 e4m3fn decoded from its definition (OCP 8-bit floating point spec):
 * bias 7, subnormals at exponent 0, 0x7f/0xff NaN, no infinities. */
static double e4m3_value(int c) {
  const int s = c >> 7, e = (c >> 3) & 15, m = c & 7;
  if (e == 15 && m == 7) return NAN;
  const double v = e == 0 ? m / 8.0 * pow(2, -6) : (1 + m / 8.0) * pow(2, e - 7);
  return s ? -v : v;
}

/* Quantizes a row of floats into `type` (round to nearest), written here from the
 * block layouts so the kernels are checked against data we produced ourselves. */
static void quantize_row(ss_dtype type, const float *x, int64_t n, void *dst) {
  switch (type) {
  case SS_DTYPE_F32: memcpy(dst, x, (size_t)n * 4); break;
  case SS_DTYPE_F16:
    for (int64_t i = 0; i < n; i++) ((uint16_t *)dst)[i] = ss_f32_to_f16(x[i]);
    break;
  case SS_DTYPE_BF16:
    for (int64_t i = 0; i < n; i++) ((uint16_t *)dst)[i] = ss_f32_to_bf16(x[i]);
    break;
  case SS_DTYPE_Q8_0:
    for (int64_t b = 0; b < n / 32; b++) {
      ss_block_q8_0 *blk = (ss_block_q8_0 *)dst + b;
      float amax = 0;
      for (int j = 0; j < 32; j++) amax = fmaxf(amax, fabsf(x[b * 32 + j]));
      float d = amax / 127.0f;
      blk->d = ss_f32_to_f16(d);
      for (int j = 0; j < 32; j++) blk->qs[j] = (int8_t)lrintf(d ? x[b * 32 + j] / d : 0);
    }
    break;
  case SS_DTYPE_Q4_0:
    for (int64_t b = 0; b < n / 32; b++) {
      ss_block_q4_0 *blk = (ss_block_q4_0 *)dst + b;
      float amax = 0;
      for (int j = 0; j < 32; j++) amax = fmaxf(amax, fabsf(x[b * 32 + j]));
      float d = amax / 7.0f;
      blk->d = ss_f32_to_f16(d);
      for (int j = 0; j < 16; j++) {
        int lo = (int)lrintf(d ? x[b * 32 + j] / d : 0) + 8;
        int hi = (int)lrintf(d ? x[b * 32 + j + 16] / d : 0) + 8;
        lo = lo < 0 ? 0 : lo > 15 ? 15 : lo;
        hi = hi < 0 ? 0 : hi > 15 ? 15 : hi;
        blk->qs[j] = (uint8_t)(lo | hi << 4);
      }
    }
    break;
  case SS_DTYPE_Q4_1:
    for (int64_t b = 0; b < n / 32; b++) {
      ss_block_q4_1 *blk = (ss_block_q4_1 *)dst + b;
      float mn = x[b * 32], mx = x[b * 32];
      for (int j = 0; j < 32; j++) {
        mn = fminf(mn, x[b * 32 + j]);
        mx = fmaxf(mx, x[b * 32 + j]);
      }
      float d = (mx - mn) / 15.0f;
      blk->d = ss_f32_to_f16(d);
      blk->m = ss_f32_to_f16(mn);
      for (int j = 0; j < 16; j++) {
        int lo = (int)lrintf(d ? (x[b * 32 + j] - mn) / d : 0);
        int hi = (int)lrintf(d ? (x[b * 32 + j + 16] - mn) / d : 0);
        lo = lo < 0 ? 0 : lo > 15 ? 15 : lo;
        hi = hi < 0 ? 0 : hi > 15 ? 15 : hi;
        blk->qs[j] = (uint8_t)(lo | hi << 4);
      }
    }
    break;
  case SS_DTYPE_F8_E4M3:
    for (int64_t i = 0; i < n; i++) {
      int best = 0;
      for (int c = 0; c < 256; c++)
        if (!isnan(e4m3_value(c)) && fabs(e4m3_value(c) - x[i]) < fabs(e4m3_value(best) - x[i]))
          best = c;
      ((uint8_t *)dst)[i] = (uint8_t)best;
    }
    break;
  default: fail_msg("no quantizer for type %d", type);
  }
}

typedef struct wmat {
  ss_weight w;
  void *buf;
} wmat;

static wmat make_weight(ss_dtype type, int64_t rows, int64_t cols) {
  const ss_dtype_info *ti = ss_dtype_get(type);
  wmat m = {0};
  m.w.type = type;
  m.w.rows = rows;
  m.w.cols = cols;
  m.w.row_nbytes = (size_t)(cols / ti->block_count) * ti->block_nbytes;
  m.buf = malloc(m.w.row_nbytes * (size_t)rows);
  float *row = malloc((size_t)cols * sizeof *row);
  for (int64_t r = 0; r < rows; r++) {
    for (int64_t c = 0; c < cols; c++) row[c] = nrand() * 0.1f;
    quantize_row(type, row, cols, (uint8_t *)m.buf + (size_t)r * m.w.row_nbytes);
  }
  free(row);
  m.w.data = m.buf;
  return m;
}

static float *rand_vec(int64_t n) {
  float *v = malloc((size_t)n * sizeof *v);
  for (int64_t i = 0; i < n; i++) v[i] = nrand();
  return v;
}

static const ss_dtype k_types[] = {SS_DTYPE_F32,  SS_DTYPE_F16,  SS_DTYPE_BF16, SS_DTYPE_F8_E4M3,
                                   SS_DTYPE_Q8_0, SS_DTYPE_Q4_0, SS_DTYPE_Q4_1};

/* Dequantization against independent decoding of a hand-made block. */
static void test_dequant_blocks(void **state) {
  ss_block_q4_1 b1 = {.d = ss_f32_to_f16(0.5f), .m = ss_f32_to_f16(-1.0f)};
  for (int j = 0; j < 16; j++) b1.qs[j] = (uint8_t)(j | (15 - j) << 4);
  float out[32];
  ss_dequantize_row(SS_DTYPE_Q4_1, &b1, out, 32);
  for (int j = 0; j < 16; j++) {
    assert_float_equal(out[j], 0.5f * j - 1.0f, 0);
    assert_float_equal(out[j + 16], 0.5f * (15 - j) - 1.0f, 0);
  }
  ss_block_q4_0 b0 = {.d = ss_f32_to_f16(2.0f)};
  for (int j = 0; j < 16; j++) b0.qs[j] = (uint8_t)(j | (15 - j) << 4);
  ss_dequantize_row(SS_DTYPE_Q4_0, &b0, out, 32);
  for (int j = 0; j < 16; j++) {
    assert_float_equal(out[j], 2.0f * (j - 8), 0);
    assert_float_equal(out[j + 16], 2.0f * (7 - j), 0);
  }
  ss_block_q8_0 b8 = {.d = ss_f32_to_f16(0.25f)};
  for (int j = 0; j < 32; j++) b8.qs[j] = (int8_t)(j * 8 - 128);
  ss_dequantize_row(SS_DTYPE_Q8_0, &b8, out, 32);
  for (int j = 0; j < 32; j++) assert_float_equal(out[j], 0.25f * (j * 8 - 128), 0);
}

static void test_half_conversions(void **state) {
  /* Every finite f16 value survives f16 -> f32 -> f16. */
  for (uint32_t h = 0; h < 0x10000; h++) {
    if ((h & 0x7c00) == 0x7c00) continue;
    float f = ss_f16_to_f32((uint16_t)h);
    assert_int_equal(ss_f32_to_f16(f), h);
  }
  assert_float_equal(ss_f16_to_f32(0x3c00), 1.0f, 0);
  assert_float_equal(ss_f16_to_f32(0xc000), -2.0f, 0);
  assert_float_equal(ss_f16_to_f32(0x0001), 5.960464477539063e-08f, 0);
  assert_float_equal(ss_bf16_to_f32(0x3f80), 1.0f, 0);
  assert_int_equal(ss_f32_to_bf16(1.00390625f), 0x3f80); /* tie to even */
}

/* Each type's matmul against a double-precision dot of the dequantized row,
 * tolerance atol + rtol*sum|w*x| (f32 accumulation over cols terms). */
static void test_matmul_accuracy(void **state) {
  ss_backend *be = ss_backend_cpu_create(2);
  assert_non_null(be);
  const int64_t rows = 37, cols = 320, n = 11;
  for (size_t ti = 0; ti < sizeof k_types / sizeof *k_types; ti++) {
    wmat m = make_weight(k_types[ti], rows, cols);
    float *x = rand_vec(n * cols);
    float *y = malloc((size_t)(n * rows) * sizeof *y);
    be->matmul(be, &m.w, x, n, y);
    float wrow[320];
    for (int64_t t = 0; t < n; t++)
      for (int64_t r = 0; r < rows; r++) {
        double ref = ss_ref_dot(&m.w, r, x + t * cols);
        ss_dequantize_row(m.w.type, (uint8_t *)m.buf + r * m.w.row_nbytes, wrow, cols);
        double mag = 0;
        for (int64_t c = 0; c < cols; c++) mag += fabs((double)wrow[c] * x[t * cols + c]);
        double tol = 1e-6 + 1e-6 * mag;
        if (fabs(y[t * rows + r] - ref) > tol)
          fail_msg("type %s row %lld token %lld: got %.9g want %.9g (tol %.3g)",
                   ss_dtype_name(k_types[ti]), (long long)r, (long long)t, y[t * rows + r], ref,
                   tol);
      }
    free(x);
    free(y);
    free(m.buf);
  }
  be->free(be);
}

/* A row's result is bit-identical alone, inside a batch of any size, and with
 * 1 or 2 threads. */
static void test_matmul_batch_invariance(void **state) {
  ss_backend *be1 = ss_backend_cpu_create(1), *be2 = ss_backend_cpu_create(2);
  const int64_t rows = 50, cols = 192;
  for (size_t ti = 0; ti < sizeof k_types / sizeof *k_types; ti++) {
    wmat m = make_weight(k_types[ti], rows, cols);
    const int64_t sizes[] = {1, 2, 7, 8, 9, 64};
    float *x = rand_vec(64 * cols);
    float *alone = malloc((size_t)(64 * rows) * sizeof *alone);
    for (int64_t t = 0; t < 64; t++) be1->matmul(be1, &m.w, x + t * cols, 1, alone + t * rows);
    for (size_t si = 0; si < sizeof sizes / sizeof *sizes; si++) {
      float *y = malloc((size_t)(sizes[si] * rows) * sizeof *y);
      for (int which = 0; which < 2; which++) {
        ss_backend *be = which ? be2 : be1;
        be->matmul(be, &m.w, x, sizes[si], y);
        if (memcmp(y, alone, (size_t)(sizes[si] * rows) * sizeof *y) != 0)
          fail_msg("type %s: batch of %lld with %d threads differs from one at a time",
                   ss_dtype_name(k_types[ti]), (long long)sizes[si], which + 1);
      }
      free(y);
    }
    free(x);
    free(alone);
    free(m.buf);
  }
  be1->free(be1);
  be2->free(be2);
}

static void test_rmsnorm(void **state) {
  ss_backend *be = ss_backend_cpu_create(1);
  const int64_t n = 3, dim = 100;
  float *x = rand_vec(n * dim), *w = rand_vec(dim), *out = malloc(n * dim * sizeof(float));
  be->rmsnorm(be, x, w, n, dim, 1e-5f, out);
  for (int64_t i = 0; i < n; i++) {
    double ss = 0;
    for (int64_t j = 0; j < dim; j++) ss += (double)x[i * dim + j] * x[i * dim + j];
    double inv = 1.0 / sqrt(ss / dim + 1e-5);
    for (int64_t j = 0; j < dim; j++)
      assert_float_equal(out[i * dim + j], x[i * dim + j] * inv * w[j],
                         1e-6 + 1e-6 * fabs(x[i * dim + j] * inv * w[j]));
  }
  free(x);
  free(w);
  free(out);
  be->free(be);
}

static void test_rope_modes(void **state) {
  ss_backend *be = ss_backend_cpu_create(1);
  const int heads = 2, hd = 8;
  int32_t pos[2] = {0, 37};
  for (int mode = 0; mode < 2; mode++) {
    float *x = rand_vec(2 * heads * hd), *orig = malloc(2 * heads * hd * sizeof(float));
    memcpy(orig, x, 2 * heads * hd * sizeof(float));
    ss_rope_params p = {.n_heads = heads, .head_dim = hd, .rope_dim = hd, .theta = 10000.0f,
                        .mode = mode ? SS_ROPE_NEOX : SS_ROPE_NORM};
    be->rope(be, x, pos, 2, &p);
    for (int t = 0; t < 2; t++)
      for (int h = 0; h < heads; h++)
        for (int i = 0; i < hd / 2; i++) {
          double ang = pos[t] * pow(10000.0, -2.0 * i / hd);
          int i0 = mode ? i : 2 * i, i1 = mode ? i + hd / 2 : 2 * i + 1;
          const float *o = orig + (t * heads + h) * hd;
          double a = o[i0] * cos(ang) - o[i1] * sin(ang);
          double b = o[i0] * sin(ang) + o[i1] * cos(ang);
          assert_float_equal(x[(t * heads + h) * hd + i0], a, 1e-5);
          assert_float_equal(x[(t * heads + h) * hd + i1], b, 1e-5);
        }
    free(x);
    free(orig);
  }
  be->free(be);
}

/* Paged attention against a dense double-precision softmax(qK^T)V, with the
 * sequence's blocks scattered out of order in the pool. */
static void test_attention_paged(void **state) {
  ss_backend *be = ss_backend_cpu_create(2);
  const int n_head = 6, n_kv = 2, hd = 16, bs = 4, n_blocks = 8, len = 13;
  const int kv_dim = n_kv * hd;
  float *kc = calloc((size_t)n_blocks * bs * kv_dim, sizeof(float));
  float *vc = calloc((size_t)n_blocks * bs * kv_dim, sizeof(float));
  ss_kv_layer kv = {.k = kc, .v = vc, .block_size = bs, .n_kv_head = n_kv, .head_dim = hd};
  int32_t table[4] = {5, 1, 7, 2};
  float *K = rand_vec(len * kv_dim), *V = rand_vec(len * kv_dim), *Q = rand_vec(len * n_head * hd);
  int32_t pos[13];
  const int32_t *bt[13];
  for (int i = 0; i < len; i++) {
    pos[i] = i;
    bt[i] = table;
  }
  ss_token_loc loc = {.n = len, .pos = pos, .block_table = bt};
  be->kv_store(be, &kv, &loc, K, V);
  float *out = malloc((size_t)len * n_head * hd * sizeof(float));
  ss_attn_params ap = {.n_head = n_head, .n_kv_head = n_kv, .head_dim = hd,
                       .scale = 1.0f / sqrtf((float)hd)};
  be->attention(be, &kv, &loc, Q, &ap, out);
  for (int t = 0; t < len; t++)
    for (int h = 0; h < n_head; h++) {
      int g = h / (n_head / n_kv);
      double sc[13], mx = -1e30, sum = 0;
      for (int s = 0; s <= t; s++) {
        double d = 0;
        for (int i = 0; i < hd; i++) d += (double)Q[(t * n_head + h) * hd + i] * K[s * kv_dim + g * hd + i];
        sc[s] = d / sqrt((double)hd);
        if (sc[s] > mx) mx = sc[s];
      }
      for (int s = 0; s <= t; s++) sum += (sc[s] = exp(sc[s] - mx));
      for (int i = 0; i < hd; i++) {
        double o = 0;
        for (int s = 0; s <= t; s++) o += sc[s] / sum * V[s * kv_dim + g * hd + i];
        assert_float_equal(out[(t * n_head + h) * hd + i], o, 1e-5);
      }
    }
  /* The last token alone gives the same bits as inside the batch. */
  float *one = malloc((size_t)n_head * hd * sizeof(float));
  ss_token_loc l1 = {.n = 1, .pos = &pos[len - 1], .block_table = &bt[len - 1]};
  be->attention(be, &kv, &l1, Q + (len - 1) * n_head * hd, &ap, one);
  assert_memory_equal(one, out + (len - 1) * n_head * hd, (size_t)n_head * hd * sizeof(float));
  free(one);
  free(out);
  free(K);
  free(V);
  free(Q);
  free(kc);
  free(vc);
  be->free(be);
}

static void test_swiglu_add(void **state) {
  ss_backend *be = ss_backend_cpu_create(2);
  const int64_t n = 20000; /* above the parallel threshold */
  float *g = rand_vec(n), *u = rand_vec(n), *o = malloc(n * sizeof(float));
  be->swiglu(be, g, u, n, o);
  for (int64_t i = 0; i < n; i++) {
    double ref = (double)g[i] / (1.0 + exp(-(double)g[i])) * u[i];
    assert_float_equal(o[i], ref, 1e-6 + 1e-6 * fabs(ref));
  }
  float *a = malloc(n * sizeof(float));
  memcpy(a, g, n * sizeof(float));
  be->add(be, a, u, n);
  for (int64_t i = 0; i < n; i++) assert_float_equal(a[i], g[i] + u[i], 0);
  free(g);
  free(u);
  free(o);
  free(a);
  be->free(be);
}

/* Every e4m3 code decodes exactly; matmul's row scales multiply each output. */
static void test_fp8_and_row_scale(void **state) {
  for (int c = 0; c < 256; c++) {
    const double want = e4m3_value(c);
    const float got = ss_f8e4m3_to_f32((uint8_t)c);
    if (isnan(want)) assert_true(isnan(got));
    else assert_true((double)got == want);
  }
  assert_true(ss_f8e4m3_to_f32(0x38) == 1.0f && ss_f8e4m3_to_f32(0x7e) == 448.0f &&
              ss_f8e4m3_to_f32(0x01) == 0x1p-9f && ss_f8e4m3_to_f32(0xc0) == -2.0f);
  ss_backend *be = ss_backend_cpu_create(2);
  const int64_t rows = 19, cols = 70, n = 5;
  wmat m = make_weight(SS_DTYPE_F8_E4M3, rows, cols);
  float *x = rand_vec(n * cols), *y = malloc((size_t)(n * rows) * sizeof *y);
  float *ys = malloc((size_t)(n * rows) * sizeof *ys), scale[19];
  for (int r = 0; r < rows; r++) scale[r] = 0.5f + (float)r * 0.25f;
  be->matmul(be, &m.w, x, n, y);
  ss_weight ws = m.w;
  ws.row_scale = scale;
  be->matmul(be, &ws, x, n, ys);
  for (int64_t t = 0; t < n; t++)
    for (int64_t r = 0; r < rows; r++) {
      assert_true(ys[t * rows + r] == y[t * rows + r] * scale[r]);
      assert_float_equal(ys[t * rows + r], ss_ref_dot(&ws, r, x + t * cols), 1e-4);
    }
  int32_t ids[2] = {3, -1};
  float *e = malloc(2 * cols * sizeof *e);
  be->embed(be, &ws, ids, 2, e);
  float row[70];
  ss_dequantize_row(SS_DTYPE_F8_E4M3, (uint8_t *)m.buf + 3 * m.w.row_nbytes, row, cols);
  for (int64_t c = 0; c < cols; c++) {
    assert_true(e[c] == row[c] * scale[3]);
    assert_true(e[cols + c] == 0.0f);
  }
  free(e);
  free(x);
  free(y);
  free(ys);
  free(m.buf);
  be->free(be);
}

/* GeGLU (both GELU forms), soft cap and scale against double references. */
static void test_gelu_softcap_scale(void **state) {
  ss_backend *be = ss_backend_cpu_create(2);
  const int64_t n = 20000;
  float *g = rand_vec(n), *u = rand_vec(n), *o = malloc(n * sizeof(float));
  for (int approx = 0; approx < 2; approx++) {
    be->gelu_mul(be, g, u, n, approx, o);
    for (int64_t i = 0; i < n; i++) {
      const double x = g[i];
      const double gl = approx ? 0.5 * x * (1 + tanh(sqrt(2 / M_PI) * (x + 0.044715 * x * x * x)))
                               : 0.5 * x * (1 + erf(x / sqrt(2)));
      assert_float_equal(o[i], gl * u[i], 1e-6 + 1e-5 * fabs(gl * u[i]));
    }
  }
  float v[4] = {0.0f, 3.0f, -300.0f, 1e6f};
  be->softcap(be, v, 4, 30.0f);
  assert_true(v[0] == 0.0f);
  assert_float_equal(v[1], 30 * tanh(0.1), 1e-6);
  assert_float_equal(v[2], -30 * tanh(10.0), 1e-5);
  assert_float_equal(v[3], 30.0, 1e-5);
  be->scale(be, v, 4, 2.0f);
  assert_float_equal(v[1], 60 * tanh(0.1), 2e-6);
  free(g);
  free(u);
  free(o);
  be->free(be);
}

/* Routing: softmax over all experts, top-k by probability (ties to the lower
 * id), renormalised or not, after an optional soft cap. */
static void test_moe_route(void **state) {
  ss_backend *be = ss_backend_cpu_create(1);
  const float logits[2][4] = {{1.0f, 3.0f, 2.0f, 3.0f}, {0.0f, 0.0f, 0.0f, 50.0f}};
  int32_t ids[4];
  float w[4];
  ss_moe_route_params p = {.n_expert = 4, .top_k = 2};
  be->moe_route(be, &logits[0][0], 2, &p, ids, w);
  const double z = exp(1) + 2 * exp(3) + exp(2);
  assert_int_equal(ids[0], 1);
  assert_int_equal(ids[1], 3); /* tie with 1: the lower id came first */
  assert_float_equal(w[0], exp(3) / z, 1e-7);
  assert_float_equal(w[1], exp(3) / z, 1e-7);
  p.renormalize = 1;
  be->moe_route(be, &logits[0][0], 2, &p, ids, w);
  assert_float_equal(w[0], 0.5, 1e-7);
  assert_int_equal(ids[2], 3);
  assert_int_equal(ids[3], 0);
  /* Soft cap 30: 50 becomes 30 tanh(5/3); the winner's weight follows. */
  p.renormalize = 0;
  p.softcap = 30.0f;
  be->moe_route(be, &logits[0][0], 2, &p, ids, w);
  const double c = 30 * tanh(50.0 / 30);
  assert_float_equal(w[2], exp(c) / (exp(c) + 3), 1e-6);
  be->free(be);
}

/* Gather and scatter-add move whole rows; scatter adds w * y row by row. */
static void test_gather_scatter(void **state) {
  ss_backend *be = ss_backend_cpu_create(1);
  float x[3][2] = {{1, 2}, {3, 4}, {5, 6}}, g[2][2], out[3][2] = {{0}};
  const int32_t rows[2] = {2, 0};
  const float w[2] = {0.5f, 2.0f};
  be->gather_rows(be, &x[0][0], rows, 2, 2, &g[0][0]);
  assert_true(g[0][0] == 5 && g[0][1] == 6 && g[1][0] == 1 && g[1][1] == 2);
  be->scatter_add_rows(be, &out[0][0], &g[0][0], rows, w, 2, 2);
  assert_true(out[2][0] == 2.5f && out[2][1] == 3.0f && out[0][0] == 2.0f && out[0][1] == 4.0f &&
              out[1][0] == 0.0f);
  be->free(be);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_fp8_and_row_scale),  cmocka_unit_test(test_gelu_softcap_scale),
      cmocka_unit_test(test_moe_route),          cmocka_unit_test(test_gather_scatter),
      cmocka_unit_test(test_dequant_blocks),     cmocka_unit_test(test_half_conversions),
      cmocka_unit_test(test_matmul_accuracy),    cmocka_unit_test(test_matmul_batch_invariance),
      cmocka_unit_test(test_rmsnorm),            cmocka_unit_test(test_rope_modes),
      cmocka_unit_test(test_attention_paged),    cmocka_unit_test(test_swiglu_add),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
