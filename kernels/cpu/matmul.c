/* Matrix multiplication y = W x for a batch of tokens, with W in its stored type
 * (F32, F16, BF16, F8_E4M3, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K..Q6_K, Q8_K)
 * dequantized block by block next to the arithmetic, never expanded; the row
 * kernels are the CPU variant's (isa.h, kern_impl.h).  A weight with row scales (FP8 checkpoints) has each output
 * multiplied by its row's scale after the dot product.
 *
 * Work split: threads take contiguous ranges of output rows; tokens go in tiles
 * of up to NT_MAX, and each row meets every token of a tile in one kernel call
 * (prefill reuses each dequantized row NT_MAX times; decode is the NT = 1 case
 * of the same code).
 *
 * Batch invariance: the value of y[t][r] comes from one fixed sequence of
 * operations on row r and token t (kern_impl.h: 16 lanes, two interleaved
 * accumulators, one reduction tree), the same in every CPU variant.  Which other
 * tokens share the kernel call, and which thread runs it, never changes that
 * sequence, so results are bit-identical for any batch size, thread count and
 * instruction set. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/cpu_internal.h"

/* Tokens per kernel call: a tile of x (NT_MAX x cols floats) stays in L2 while
 * the thread's rows pass over it; each quantized row is dequantized once per
 * tile (kern_impl.h). */
#ifndef NT_MAX
#define NT_MAX 32
#endif
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
/* Threaded driver                                                            */

typedef struct mm_job {
  const ss_cpu_kernels *k;
  const ss_weight *w;
  const float *x;
  /* --activations q8: x quantized (NULL on the exact path) */
  const int8_t *qx;
  const float *dx;
  const int32_t *sx;
  int64_t n;
  float *y;
} mm_job;

static void mm_worker(void *arg, int ith, int nth) {
  const mm_job *job = arg;
  const ss_cpu_kernels *k = job->k;
  const ss_weight *w = job->w;
  long r_lo, r_hi;
  ss_pool_split((long)w->rows, ith, nth, &r_lo, &r_hi);
  for (int64_t t0 = 0; t0 < job->n; t0 += NT_MAX) {
    int nt = (int)(job->n - t0 < NT_MAX ? job->n - t0 : NT_MAX);
    const float *x = job->x + t0 * w->cols;
    for (int64_t r = r_lo; r < r_hi; r++) {
      if (PREFETCH_ROWS && r + PREFETCH_ROWS < r_hi) {
        const char *pf = (const char *)w->data + (size_t)(r + PREFETCH_ROWS) * w->row_nbytes;
        for (size_t o = 0; o < w->row_nbytes; o += 64) __builtin_prefetch(pf + o, 0, PREFETCH_LOCALITY);
      }
      float *y = job->y + t0 * w->rows + r;
      const uint8_t *row = (const uint8_t *)w->data + (size_t)r * w->row_nbytes;
      if (job->qx)
        k->row_dot_q8(w->type, row, w->cols, job->qx + t0 * w->cols, job->dx + t0 * (w->cols / 32),
                      job->sx + t0 * (w->cols / 32), w->cols, y, w->rows, nt);
      else
        k->row_dot(w->type, row, w->cols, x, w->cols, y, w->rows, nt);
      if (w->row_scale)
        for (int t = 0; t < nt; t++) y[t * w->rows] *= w->row_scale[r];
    }
  }
}

/* Per 32-element block: d = max|x| / 127, q = round(x / d) (as ggml's Q8_0
 * reference quantizer), and the block's sum of q.  Scalar, in element order:
 * the same on every CPU. */
/* roundf (halves away from zero) for |v| <= 128, without a libm call: the
 * truncation and the remainder v - trunc(v) are exact.  NaN (a non-finite
 * activation) gives 0. */
static inline int8_t round_q8(float v) {
  if (!(v == v)) return 0;
  int32_t i = (int32_t)v;
  const float r = v - (float)i;
  i += (r >= 0.5f) - (r <= -0.5f);
  return (int8_t)i;
}

static void quantize_q8(const float *x, int64_t cols, int8_t *q, float *d, int32_t *s) {
  for (int64_t b = 0; b < cols / 32; b++) {
    const float *xb = x + 32 * b;
    float amax = 0.0f;
    for (int j = 0; j < 32; j++) {
      const float a = fabsf(xb[j]);
      amax = a > amax ? a : amax; /* as fmaxf: a NaN is passed over */
    }
    const float db = amax / 127.0f, id = db != 0.0f ? 1.0f / db : 0.0f;
    int32_t sum = 0;
    for (int j = 0; j < 32; j++) {
      q[32 * b + j] = round_q8(xb[j] * id);
      sum += q[32 * b + j];
    }
    d[b] = db;
    s[b] = sum;
  }
}

typedef struct q8_job {
  const float *x;
  int64_t n, cols;
  int8_t *q;
  float *d;
  int32_t *s;
} q8_job;

static void q8_worker(void *arg, int ith, int nth) {
  const q8_job *j = arg;
  long lo, hi;
  ss_pool_split((long)j->n, ith, nth, &lo, &hi);
  for (long t = lo; t < hi; t++)
    quantize_q8(j->x + t * j->cols, j->cols, j->q + t * j->cols, j->d + t * (j->cols / 32),
                j->s + t * (j->cols / 32));
}

static bool q8_type(ss_dtype t) {
  return t == SS_DTYPE_Q4_0 || t == SS_DTYPE_Q4_1 || t == SS_DTYPE_Q8_0;
}

void ss_cpu_matmul(ss_backend *be, const ss_weight *w, const float *x, int64_t n, float *y) {
  ss_cpu *cpu = be->ctx;
  mm_job job = {.k = cpu->k, .w = w, .x = x, .n = n, .y = y};
  if (cpu->act_q8 && q8_type(w->type)) {
    const size_t nb = (size_t)n * (size_t)(w->cols / 32);
    const size_t q_bytes = ((size_t)n * (size_t)w->cols + 63) & ~(size_t)63;
    uint8_t *mem = ss_cpu_scratch(cpu, SS_SCRATCH_Q8, q_bytes + nb * (sizeof(float) + sizeof(int32_t)));
    q8_job qj = {.x = x, .n = n, .cols = w->cols, .q = (int8_t *)mem,
                 .d = (float *)(mem + q_bytes), .s = (int32_t *)(mem + q_bytes + nb * sizeof(float))};
    ss_pool_run(cpu->pool, q8_worker, &qj);
    job.qx = qj.q;
    job.dx = qj.d;
    job.sx = qj.s;
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
