/* Matrix multiplication y = W x for a batch of tokens, with W in its stored type
 * (F32, F16, BF16, F8_E4M3, Q8_0, Q4_0, Q4_1) dequantized in registers, never
 * expanded.  A weight with row scales (FP8 checkpoints) has each output
 * multiplied by its row's scale after the dot product.
 *
 * Work split: threads take contiguous ranges of output rows; within a range,
 * rows are walked in tiles so a tile of weights stays in cache while every group
 * of up to NT_MAX tokens passes over it (prefill reuses each weight load NT_MAX
 * times; decode is the NT = 1 case of the same code).
 *
 * Batch invariance: the value of y[t][r] comes from one fixed sequence of
 * operations on row r and token t: per 32-element block, the same vector lanes,
 * two interleaved accumulators (even and odd blocks), the same final horizontal
 * sum.  Which other tokens share the kernel call, and which thread runs it, never
 * changes that sequence, so results are bit-identical for any batch size and
 * thread count. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/cpu_internal.h"

#if defined(__AVX512F__) && defined(__F16C__)
#include <immintrin.h>
#define SS_MM_AVX512 1
#endif

#define NT_MAX 8        /* tokens per kernel call */
#define TILE_ROWS 16    /* rows per tile */
#ifndef PREFETCH_ROWS
#define PREFETCH_ROWS 8
#endif
/* Prefetch into every cache level (locality 3, prefetcht0).  The non-temporal
 * hint (0, prefetchnta) keeps weight rows out of the last-level cache, which
 * costs ~20% of decode speed when the model fits there (92 MiB in a 260 MiB
 * L3: 58 vs 73 tok/s at 1 thread, bench/RESULTS.md). */
#ifndef PREFETCH_LOCALITY
#define PREFETCH_LOCALITY 3
#endif

/* ------------------------------------------------------------------------ */
/* Per-token block sums of x, needed by Q4_1 (w = d*q + m, so the m part of a
 * block's dot product is m * sum(x over the block)).                         */

static void block_sums(const float *x, int64_t cols, float *xs) {
  for (int64_t b = 0; b < cols / SS_QK; b++) {
    float s = 0.0f;
    for (int j = 0; j < SS_QK; j++) s += x[b * SS_QK + j];
    xs[b] = s;
  }
}

#ifdef SS_MM_AVX512
/* ------------------------------------------------------------------------ */
/* AVX-512 kernels                                                            */

static inline float hsum512(__m512 v) { return _mm512_reduce_add_ps(v); }

static inline float f16(uint16_t h) { return _cvtsh_ss(h); }

/* Unpacks one quantized block into two vectors of 16 unscaled values (elements
 * 0-15 and 16-31) and its scale (and min for Q4_1). */
static inline __attribute__((always_inline)) void load_qblock(ss_dtype type, const uint8_t *row,
                                                              int64_t b, __m512 *q0, __m512 *q1,
                                                              float *d, float *m) {
  if (type == SS_DTYPE_Q8_0) {
    const ss_block_q8_0 *blk = (const ss_block_q8_0 *)row + b;
    *d = f16(blk->d);
    __m128i lo = _mm_loadu_si128((const __m128i *)blk->qs);
    __m128i hi = _mm_loadu_si128((const __m128i *)(blk->qs + 16));
    *q0 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(lo));
    *q1 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(hi));
  } else {
    const uint8_t *qs;
    if (type == SS_DTYPE_Q4_1) {
      const ss_block_q4_1 *blk = (const ss_block_q4_1 *)row + b;
      *d = f16(blk->d);
      *m = f16(blk->m);
      qs = blk->qs;
    } else {
      const ss_block_q4_0 *blk = (const ss_block_q4_0 *)row + b;
      *d = f16(blk->d);
      qs = blk->qs;
    }
    __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)qs));
    __m512i lo = _mm512_and_si512(v, _mm512_set1_epi32(0x0f));
    __m512i hi = _mm512_srli_epi32(v, 4);
    if (type == SS_DTYPE_Q4_0) {
      lo = _mm512_sub_epi32(lo, _mm512_set1_epi32(8));
      hi = _mm512_sub_epi32(hi, _mm512_set1_epi32(8));
    }
    *q0 = _mm512_cvtepi32_ps(lo);
    *q1 = _mm512_cvtepi32_ps(hi);
  }
}

/* Quantized row times NT tokens.  x: token t's row at x + t*ldx; xs: its block
 * sums (Q4_1 only); y: token t's output at y[t*ldy]. */
static inline __attribute__((always_inline)) void kern_quant(ss_dtype type, const uint8_t *row,
                                                             int64_t nb, const float *x,
                                                             int64_t ldx, const float *xs,
                                                             int64_t ldxs, float *y, int64_t ldy,
                                                             const int NT) {
  __m512 acc0[NT_MAX], acc1[NT_MAX];
  float msum0[NT_MAX], msum1[NT_MAX];
  for (int t = 0; t < NT; t++) {
    acc0[t] = acc1[t] = _mm512_setzero_ps();
    msum0[t] = msum1[t] = 0.0f;
  }
  /* Even blocks feed acc0, odd blocks acc1 (two independent FMA chains). */
#define QSTEP(B, ACC, MSUM)                                                                       \
  do {                                                                                            \
    __m512 q0, q1;                                                                                \
    float d, m = 0.0f;                                                                            \
    load_qblock(type, row, (B), &q0, &q1, &d, &m);                                                \
    __m512 vd = _mm512_set1_ps(d);                                                                \
    for (int t = 0; t < NT; t++) {                                                                \
      const float *xp = x + t * ldx + (B) * SS_QK;                                                \
      __m512 s = _mm512_mul_ps(q0, _mm512_loadu_ps(xp));                                          \
      s = _mm512_fmadd_ps(q1, _mm512_loadu_ps(xp + 16), s);                                       \
      ACC[t] = _mm512_fmadd_ps(vd, s, ACC[t]);                                                    \
      if (type == SS_DTYPE_Q4_1) MSUM[t] += m * xs[t * ldxs + (B)];                               \
    }                                                                                             \
  } while (0)
  int64_t b = 0;
  for (; b + 1 < nb; b += 2) {
    QSTEP(b, acc0, msum0);
    QSTEP(b + 1, acc1, msum1);
  }
  if (b < nb) QSTEP(b, acc0, msum0);
#undef QSTEP
  for (int t = 0; t < NT; t++)
    y[t * ldy] = hsum512(_mm512_add_ps(acc0[t], acc1[t])) + (msum0[t] + msum1[t]);
}

/* 16 weights of a plain-float row starting at element i, with `mask` lanes valid. */
static inline __attribute__((always_inline)) __m512 load_frow(ss_dtype type, const uint8_t *row,
                                                              int64_t i, __mmask16 mask) {
  if (type == SS_DTYPE_F32) return _mm512_maskz_loadu_ps(mask, (const float *)row + i);
  if (type == SS_DTYPE_F8_E4M3) {
    /* e4m3's exponent and mantissa bits, moved into f16's fields, read as an
     * f16 that is exactly 2^-8 times the value (bias 15 against 7), normal or
     * subnormal alike; the multiply by 256 is exact. */
    __m256i b = _mm256_cvtepu8_epi16(_mm_maskz_loadu_epi8(mask, row + i));
    __m256i mag = _mm256_slli_epi16(_mm256_and_si256(b, _mm256_set1_epi16(0x7f)), 7);
    __m256i sgn = _mm256_slli_epi16(_mm256_and_si256(b, _mm256_set1_epi16(0x80)), 8);
    return _mm512_mul_ps(_mm512_cvtph_ps(_mm256_or_si256(mag, sgn)), _mm512_set1_ps(256.0f));
  }
  __m256i h = _mm256_maskz_loadu_epi16(mask, (const uint16_t *)row + i);
  if (type == SS_DTYPE_F16) return _mm512_cvtph_ps(h);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16)); /* BF16 */
}

static inline __attribute__((always_inline)) void kern_float(ss_dtype type, const uint8_t *row,
                                                             int64_t cols, const float *x,
                                                             int64_t ldx, float *y, int64_t ldy,
                                                             const int NT) {
  __m512 acc0[NT_MAX], acc1[NT_MAX];
  for (int t = 0; t < NT; t++) acc0[t] = acc1[t] = _mm512_setzero_ps();
  /* Even 16-element chunks feed acc0, odd ones acc1. */
#define FSTEP(I, ACC)                                                                             \
  do {                                                                                            \
    __mmask16 mask = cols - (I) >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (cols - (I))) - 1); \
    __m512 w = load_frow(type, row, (I), mask);                                                   \
    for (int t = 0; t < NT; t++)                                                                  \
      ACC[t] = _mm512_fmadd_ps(w, _mm512_maskz_loadu_ps(mask, x + t * ldx + (I)), ACC[t]);        \
  } while (0)
  int64_t i = 0;
  for (; i + 16 < cols; i += 32) {
    FSTEP(i, acc0);
    FSTEP(i + 16, acc1);
  }
  if (i < cols) FSTEP(i, acc0);
#undef FSTEP
  for (int t = 0; t < NT; t++) y[t * ldy] = hsum512(_mm512_add_ps(acc0[t], acc1[t]));
}

#define DISPATCH_NT(CALL)                                                                         \
  switch (nt) {                                                                                   \
  case 1: CALL(1); break;                                                                         \
  case 2: CALL(2); break;                                                                         \
  case 3: CALL(3); break;                                                                         \
  case 4: CALL(4); break;                                                                         \
  case 5: CALL(5); break;                                                                         \
  case 6: CALL(6); break;                                                                         \
  case 7: CALL(7); break;                                                                         \
  default: CALL(8); break;                                                                        \
  }

static void row_dot(ss_dtype type, const uint8_t *row, int64_t cols, const float *x, int64_t ldx,
                    const float *xs, int64_t ldxs, float *y, int64_t ldy, int nt) {
  const int64_t nb = cols / SS_QK;
  switch (type) {
#define Q80(N) kern_quant(SS_DTYPE_Q8_0, row, nb, x, ldx, xs, ldxs, y, ldy, N)
#define Q40(N) kern_quant(SS_DTYPE_Q4_0, row, nb, x, ldx, xs, ldxs, y, ldy, N)
#define Q41(N) kern_quant(SS_DTYPE_Q4_1, row, nb, x, ldx, xs, ldxs, y, ldy, N)
#define F32(N) kern_float(SS_DTYPE_F32, row, cols, x, ldx, y, ldy, N)
#define F16(N) kern_float(SS_DTYPE_F16, row, cols, x, ldx, y, ldy, N)
#define BF16(N) kern_float(SS_DTYPE_BF16, row, cols, x, ldx, y, ldy, N)
#define F8(N) kern_float(SS_DTYPE_F8_E4M3, row, cols, x, ldx, y, ldy, N)
  case SS_DTYPE_Q8_0: DISPATCH_NT(Q80); break;
  case SS_DTYPE_Q4_0: DISPATCH_NT(Q40); break;
  case SS_DTYPE_Q4_1: DISPATCH_NT(Q41); break;
  case SS_DTYPE_F32: DISPATCH_NT(F32); break;
  case SS_DTYPE_F16: DISPATCH_NT(F16); break;
  case SS_DTYPE_BF16: DISPATCH_NT(BF16); break;
  case SS_DTYPE_F8_E4M3: DISPATCH_NT(F8); break;
  default: SS_ASSERT(0 && "matmul: type without a kernel");
  }
}

#else
/* ------------------------------------------------------------------------ */
/* Portable kernels: one token at a time, the same block structure.           */

static void row_dot(ss_dtype type, const uint8_t *row, int64_t cols, const float *x, int64_t ldx,
                    const float *xs, int64_t ldxs, float *y, int64_t ldy, int nt) {
  float w[SS_QK];
  const ss_dtype_info *ti = ss_dtype_get(type);
  for (int t = 0; t < nt; t++) {
    const float *xt = x + t * ldx;
    float acc = 0.0f;
    for (int64_t i = 0; i < cols; i += SS_QK) {
      int64_t len = cols - i < SS_QK ? cols - i : SS_QK;
      ss_dequantize_row(type, row + (size_t)(i / ti->block_count) * ti->block_nbytes, w,
                        ti->block_count == 1 ? len : SS_QK);
      float s = 0.0f;
      for (int64_t j = 0; j < len; j++) s += w[j] * xt[i + j];
      acc += s;
    }
    y[t * ldy] = acc;
  }
}
#endif

/* ------------------------------------------------------------------------ */
/* Threaded driver                                                            */

typedef struct mm_job {
  const ss_weight *w;
  const float *x;
  const float *xs; /* [n][cols/32] block sums, or NULL */
  int64_t n;
  float *y;
} mm_job;

static void mm_worker(void *arg, int ith, int nth) {
  const mm_job *job = arg;
  const ss_weight *w = job->w;
  const int64_t nb = w->cols / SS_QK;
  long r_lo, r_hi;
  ss_pool_split((long)w->rows, ith, nth, &r_lo, &r_hi);
  for (int64_t r0 = r_lo; r0 < r_hi; r0 += TILE_ROWS) {
    int64_t r1 = r0 + TILE_ROWS < r_hi ? r0 + TILE_ROWS : r_hi;
    for (int64_t t0 = 0; t0 < job->n; t0 += NT_MAX) {
      int nt = (int)(job->n - t0 < NT_MAX ? job->n - t0 : NT_MAX);
      const float *x = job->x + t0 * w->cols;
      const float *xs = job->xs ? job->xs + t0 * nb : NULL;
      for (int64_t r = r0; r < r1; r++) {
        if (PREFETCH_ROWS && r + PREFETCH_ROWS < r_hi) {
          const char *pf = (const char *)w->data + (size_t)(r + PREFETCH_ROWS) * w->row_nbytes;
          for (size_t o = 0; o < w->row_nbytes; o += 64) __builtin_prefetch(pf + o, 0, PREFETCH_LOCALITY);
        }
        float *y = job->y + t0 * w->rows + r;
        row_dot(w->type, (const uint8_t *)w->data + (size_t)r * w->row_nbytes, w->cols, x,
                w->cols, xs, nb, y, w->rows, nt);
        if (w->row_scale)
          for (int t = 0; t < nt; t++) y[t * w->rows] *= w->row_scale[r];
      }
    }
  }
}

typedef struct xs_job {
  const float *x;
  int64_t n, cols;
  float *xs;
} xs_job;

static void xs_worker(void *arg, int ith, int nth) {
  const xs_job *job = arg;
  long lo, hi;
  ss_pool_split((long)job->n, ith, nth, &lo, &hi);
  for (long t = lo; t < hi; t++)
    block_sums(job->x + t * job->cols, job->cols, job->xs + t * (job->cols / SS_QK));
}

void ss_cpu_matmul(ss_backend *be, const ss_weight *w, const float *x, int64_t n, float *y) {
  ss_cpu *cpu = be->ctx;
  mm_job job = {.w = w, .x = x, .xs = NULL, .n = n, .y = y};
  if (w->type == SS_DTYPE_Q4_1) {
    size_t need = (size_t)n * (size_t)(w->cols / SS_QK) * sizeof(float);
    float *xs = ss_cpu_scratch(cpu, SS_SCRATCH_XSUM, need);
    xs_job xj = {.x = x, .n = n, .cols = w->cols, .xs = xs};
    ss_pool_run(cpu->pool, xs_worker, &xj);
    job.xs = xs;
  }
  ss_pool_run(cpu->pool, mm_worker, &job);
}

double ss_ref_dot(const ss_weight *w, int64_t row, const float *x) {
  float *buf = malloc((size_t)w->cols * sizeof *buf);
  SS_ASSERT(buf);
  ss_dequantize_row(w->type, (const uint8_t *)w->data + (size_t)row * w->row_nbytes, buf, w->cols);
  double s = 0.0;
  for (int64_t i = 0; i < w->cols; i++) s += (double)buf[i] * (double)x[i];
  free(buf);
  return w->row_scale ? s * (double)w->row_scale[row] : s;
}
