/* AVX2 + FMA + F16C kernels (compiled with -mavx2 -mfma -mf16c, chosen at run
 * time): the 16 virtual lanes as two 8-float registers. */
#if defined(__x86_64__)
#include <immintrin.h>
#include <math.h>

#define SS_UNPACK_H2F(h) _cvtsh_ss(h)
#include "kernels/cpu/kern_x86.h"
#include "runtime/base/dtype.h"

typedef struct {
  __m256 lo, hi;
} v16;

static inline v16 v_zero(void) { return (v16){_mm256_setzero_ps(), _mm256_setzero_ps()}; }
static inline v16 v_set1(float a) { return (v16){_mm256_set1_ps(a), _mm256_set1_ps(a)}; }
static inline v16 v_load(const float *p) { return (v16){_mm256_loadu_ps(p), _mm256_loadu_ps(p + 8)}; }
static inline void v_store(float *p, v16 a) {
  _mm256_storeu_ps(p, a.lo);
  _mm256_storeu_ps(p + 8, a.hi);
}
static inline __m256 i8x8(const int8_t *p) {
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)p)));
}
static inline v16 v_i8(const int8_t *p) { return (v16){i8x8(p), i8x8(p + 8)}; }
static inline v16 v_f16(const uint16_t *p) {
  return (v16){_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p)),
               _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p + 8)))};
}
static inline __m256 bf16x8(const uint16_t *p) {
  __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
}
static inline v16 v_bf16(const uint16_t *p) { return (v16){bf16x8(p), bf16x8(p + 8)}; }
static inline __m256 f8x8(const uint8_t *p) {
  __m128i b = _mm_cvtepu8_epi16(_mm_loadl_epi64((const __m128i *)p));
  __m128i mag = _mm_slli_epi16(_mm_and_si128(b, _mm_set1_epi16(0x7f)), 7);
  __m128i sgn = _mm_slli_epi16(_mm_and_si128(b, _mm_set1_epi16(0x80)), 8);
  return _mm256_mul_ps(_mm256_cvtph_ps(_mm_or_si128(mag, sgn)), _mm256_set1_ps(256.0f));
}
static inline v16 v_f8(const uint8_t *p) { return (v16){f8x8(p), f8x8(p + 8)}; }
static inline v16 v_mul(v16 a, v16 b) { return (v16){_mm256_mul_ps(a.lo, b.lo), _mm256_mul_ps(a.hi, b.hi)}; }
static inline v16 v_add(v16 a, v16 b) { return (v16){_mm256_add_ps(a.lo, b.lo), _mm256_add_ps(a.hi, b.hi)}; }
static inline v16 v_fma(v16 a, v16 b, v16 c) {
  return (v16){_mm256_fmadd_ps(a.lo, b.lo, c.lo), _mm256_fmadd_ps(a.hi, b.hi, c.hi)};
}
static inline float v_hsum(v16 a) {
  return x86_hsum8_ps(_mm256_add_ps(a.lo, a.hi));
}
#define s_fma fmaf

/* A Q4 block's 16 bytes: low nibbles are elements 0-15, high nibbles 16-31,
 * widened to 32-bit lanes straight from memory. */
#define KERN_HAVE_Q4 1
static inline void v_q4(const uint8_t *qs, int sub, v16 *a, v16 *b) {
  const __m256i w0 = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)qs));
  const __m256i w1 = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(qs + 8)));
  const __m256i m = _mm256_set1_epi32(15), vs = _mm256_set1_epi32(sub);
  a->lo = _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_and_si256(w0, m), vs));
  a->hi = _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_and_si256(w1, m), vs));
  b->lo = _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_srli_epi32(w0, 4), vs));
  b->hi = _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_srli_epi32(w1, 4), vs));
}

/* The 8-bit activation path's row kernel (AVX2 integer instructions). */
#define KERN_HAVE_ROWQ8 1
#define KERN_NT 2
#define KERN_TABLE ss_cpu_kernels_avx2
#define KERN_ISA SS_ISA_AVX2
#define KERN_NAME "avx2"
#include "kernels/cpu/kern_impl.h"
#endif
