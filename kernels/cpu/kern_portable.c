/* Portable C kernels: the 16 virtual lanes as an array, fmaf() for the fused
 * multiply-adds (correctly rounded in any C99 libm).  The reference every SIMD
 * variant matches bit for bit. */
#include <math.h>

#include "runtime/base/dtype.h"

typedef struct {
  float f[16];
} v16;

#define L16(EXPR)                                                                                 \
  do {                                                                                            \
    for (int l_ = 0; l_ < 16; l_++) EXPR;                                                         \
  } while (0)

static inline v16 v_zero(void) { return (v16){{0}}; }
static inline v16 v_set1(float a) { v16 r; L16(r.f[l_] = a); return r; }
static inline v16 v_load(const float *p) { v16 r; L16(r.f[l_] = p[l_]); return r; }
static inline void v_store(float *p, v16 a) { L16(p[l_] = a.f[l_]); }
static inline v16 v_i8(const int8_t *p) { v16 r; L16(r.f[l_] = (float)p[l_]); return r; }
static inline v16 v_f16(const uint16_t *p) { v16 r; L16(r.f[l_] = ss_f16_to_f32(p[l_])); return r; }
static inline v16 v_bf16(const uint16_t *p) { v16 r; L16(r.f[l_] = ss_bf16_to_f32(p[l_])); return r; }
/* e4m3's exponent and mantissa moved into f16's fields read as 2^-8 times the
 * value, then times 256 (exact); the SIMD variants do the same. */
static inline v16 v_f8(const uint8_t *p) {
  v16 r;
  L16(r.f[l_] = ss_f16_to_f32((uint16_t)(((p[l_] & 0x7f) << 7) | ((p[l_] & 0x80) << 8))) * 256.0f);
  return r;
}
static inline v16 v_mul(v16 a, v16 b) { L16(a.f[l_] = a.f[l_] * b.f[l_]); return a; }
static inline v16 v_add(v16 a, v16 b) { L16(a.f[l_] = a.f[l_] + b.f[l_]); return a; }
static inline v16 v_fma(v16 a, v16 b, v16 c) { L16(c.f[l_] = fmaf(a.f[l_], b.f[l_], c.f[l_])); return c; }
static inline float v_hsum(v16 a) {
  float h8[8], h4[4], h2[2];
  for (int i = 0; i < 8; i++) h8[i] = a.f[i] + a.f[i + 8];
  for (int i = 0; i < 4; i++) h4[i] = h8[i] + h8[i + 4];
  for (int i = 0; i < 2; i++) h2[i] = h4[i] + h4[i + 2];
  return h2[0] + h2[1];
}
#define s_fma fmaf

#define KERN_NT 1
#define KERN_TABLE ss_cpu_kernels_portable
#define KERN_ISA SS_ISA_PORTABLE
#define KERN_NAME "portable"
#include "kernels/cpu/kern_impl.h"
