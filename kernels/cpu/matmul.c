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
      k->row_dot(w->type, (const uint8_t *)w->data + (size_t)r * w->row_nbytes, w->cols, x, w->cols,
                 y, w->rows, nt);
      if (w->row_scale)
        for (int t = 0; t < nt; t++) y[t * w->rows] *= w->row_scale[r];
    }
  }
}

void ss_cpu_matmul(ss_backend *be, const ss_weight *w, const float *x, int64_t n, float *y) {
  ss_cpu *cpu = be->ctx;
  mm_job job = {.k = cpu->k, .w = w, .x = x, .n = n, .y = y};
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
