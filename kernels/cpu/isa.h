/* CPU kernel variants chosen at run time.
 *
 * The hot kernels (matmul rows, attention's dot products and weighted sums) are
 * compiled once per instruction set (kern_<isa>.c, each from kern_impl.h) and
 * one table is chosen when the CPU backend starts: the best the CPU has, or the
 * one SS_CPU_ISA names.  Every variant performs the same floating-point
 * operations in the same order (16 virtual lanes, the same fused multiply-adds,
 * the same reduction tree; see kern_impl.h), so results are bit-identical
 * whichever variant runs. */
#ifndef SS_CPU_ISA_H
#define SS_CPU_ISA_H

#include <stdbool.h>
#include <stdint.h>

#include "runtime/base/dtype.h"

typedef enum ss_cpu_isa {
  SS_ISA_PORTABLE = 0,
  SS_ISA_AVX2,   /* x86-64: AVX2 + FMA + F16C */
  SS_ISA_AVX512, /* x86-64: AVX-512F + FMA + F16C */
  SS_ISA_NEON,   /* AArch64: Advanced SIMD */
  SS_ISA_COUNT_
} ss_cpu_isa;

typedef struct ss_cpu_kernels {
  ss_cpu_isa isa;
  const char *name;
  /* y[t*ldy] = row . x[t*ldx] for t < nt (any nt >= 1): one weight row of `cols`
   * elements in `type` against nt token rows. */
  void (*row_dot)(ss_dtype type, const uint8_t *row, int64_t cols, const float *x, int64_t ldx,
                  float *y, int64_t ldy, int nt);
  /* The opt-in 8-bit activation path (Q4_0, Q4_1, Q8_0 rows): token t's x as
   * qx + t*ldq (int8), dx + t*ldq/32 (block scales), sx + t*ldq/32 (block sums
   * of qx); kern_impl.h states the arithmetic. */
  void (*row_dot_q8)(ss_dtype type, const uint8_t *row, int64_t cols, const int8_t *qx,
                     const float *dx, const int32_t *sx, int64_t ldq, float *y, int64_t ldy,
                     int nt);
  /* a . b over n floats. */
  float (*dot)(const float *a, const float *b, int n);
  /* out[d] = sum over i < n, in increasing i, of e[i] * rows[i][d], each step one
   * fused multiply-add, for d < dim. */
  void (*wsum)(const float *e, const float *const *rows, int n, int dim, float *out);
} ss_cpu_kernels;

/* The variants built into this binary (NULL where not built). */
extern const ss_cpu_kernels ss_cpu_kernels_portable;
#if defined(__x86_64__)
extern const ss_cpu_kernels ss_cpu_kernels_avx2;
extern const ss_cpu_kernels ss_cpu_kernels_avx512;
#endif
#if defined(__aarch64__)
extern const ss_cpu_kernels ss_cpu_kernels_neon;
#endif

const char *ss_cpu_isa_name(ss_cpu_isa isa);
/* Whether this binary has the variant and this CPU (and OS) can run it. */
bool ss_cpu_isa_available(ss_cpu_isa isa);
/* The best available variant. */
ss_cpu_isa ss_cpu_isa_best(void);
/* The variant to use: SS_CPU_ISA if set (an unknown or unavailable name is an
 * error naming what is available), else the best.  Returns SS_OK or an error. */
int ss_cpu_isa_select(const ss_cpu_kernels **out);
/* Writes the CPU's relevant features ("avx2 fma f16c ...") into buf. */
void ss_cpu_features(char *buf, int cap);

#endif
