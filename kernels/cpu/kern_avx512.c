/* AVX-512F kernels (compiled with -mavx512f -mfma -mf16c, chosen at run time):
 * the 16 virtual lanes as one register. */
#if defined(__x86_64__)
#include <immintrin.h>
#include <math.h>

#define SS_UNPACK_H2F(h) _cvtsh_ss(h)
#include "kernels/cpu/kern_x86.h"
#include "runtime/base/dtype.h"

typedef __m512 v16;

static inline v16 v_zero(void) { return _mm512_setzero_ps(); }
static inline v16 v_set1(float a) { return _mm512_set1_ps(a); }
static inline v16 v_load(const float *p) { return _mm512_loadu_ps(p); }
static inline void v_store(float *p, v16 a) { _mm512_storeu_ps(p, a); }
static inline v16 v_i8(const int8_t *p) {
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)p)));
}
static inline v16 v_f16(const uint16_t *p) { return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p)); }
static inline v16 v_bf16(const uint16_t *p) {
  __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
}
static inline v16 v_f8(const uint8_t *p) {
  __m256i b = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)p));
  __m256i mag = _mm256_slli_epi16(_mm256_and_si256(b, _mm256_set1_epi16(0x7f)), 7);
  __m256i sgn = _mm256_slli_epi16(_mm256_and_si256(b, _mm256_set1_epi16(0x80)), 8);
  return _mm512_mul_ps(_mm512_cvtph_ps(_mm256_or_si256(mag, sgn)), _mm512_set1_ps(256.0f));
}
static inline v16 v_mul(v16 a, v16 b) { return _mm512_mul_ps(a, b); }
static inline v16 v_add(v16 a, v16 b) { return _mm512_add_ps(a, b); }
static inline v16 v_fma(v16 a, v16 b, v16 c) { return _mm512_fmadd_ps(a, b, c); }
static inline float v_hsum(v16 a) {
  __m256 lo = _mm512_castps512_ps256(a);
  __m256 hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(a), 1));
  return x86_hsum8_ps(_mm256_add_ps(lo, hi));
}
#define s_fma fmaf

#define KERN_HAVE_Q4 1
static inline void v_q4(const uint8_t *qs, int sub, v16 *a, v16 *b) {
  const __m512i w = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)qs));
  const __m512i vs = _mm512_set1_epi32(sub);
  *a = _mm512_cvtepi32_ps(_mm512_sub_epi32(_mm512_and_si512(w, _mm512_set1_epi32(15)), vs));
  *b = _mm512_cvtepi32_ps(_mm512_sub_epi32(_mm512_srli_epi32(w, 4), vs));
}

/* The 8-bit activation path's row kernel (AVX2 integer instructions). */
#define KERN_HAVE_ROWQ8 1
#define KERN_NT 8
#define KERN_TABLE ss_cpu_kernels_avx512
#define KERN_ISA SS_ISA_AVX512
#define KERN_NAME "avx512"
#include "kernels/cpu/kern_impl.h"
#endif
