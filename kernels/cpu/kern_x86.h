/* Pieces shared by the x86 variants (kern_avx2.c, kern_avx512.c; AVX2
 * instructions): the last three levels of the canonical reduction tree, and
 * the 8-bit activation path's row kernel.  There eight blocks' exact integer
 * dot products are summed in one register (horizontal adds: exact in integers),
 * then each block's float part and the accumulation run exactly as kern_impl.h's
 * portable k_row_dot_q8 states them: per block, in block order. */
#ifndef SS_KERN_X86_H
#define SS_KERN_X86_H

#include <immintrin.h>
#include <stdint.h>

#include "runtime/base/quant_unpack.h"

/* h8[0..7] -> ((h8[i] + h8[i+4]) + (.. + [i+2])) + [i+1] at lane 0 (kern_impl.h). */
static inline float x86_hsum8_ps(__m256 h8) {
  const __m128 h4 = _mm_add_ps(_mm256_castps256_ps128(h8), _mm256_extractf128_ps(h8, 1));
  const __m128 h2 = _mm_add_ps(h4, _mm_movehl_ps(h4, h4));
  return _mm_cvtss_f32(_mm_add_ss(h2, _mm_shuffle_ps(h2, h2, 1)));
}

/* The 32 products of block b summed to pairs of 16-bit, then 8 x 32-bit. */
static inline __m256i x86_q8_block(ss_dtype type, const uint8_t *blk, const int8_t *qx) {
  const __m256i x = _mm256_loadu_si256((const __m256i *)qx);
  __m256i p;
  if (type == SS_DTYPE_Q8_0) {
    const __m256i w = _mm256_loadu_si256((const __m256i *)(blk + 2));
    p = _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w));
  } else {
    const __m128i b = _mm_loadu_si128((const __m128i *)(blk + (type == SS_DTYPE_Q4_1 ? 4 : 2)));
    const __m128i m = _mm_set1_epi8(15);
    const __m256i w = _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(b, 4), m), _mm_and_si128(b, m));
    p = _mm256_maddubs_epi16(w, x);
  }
  return _mm256_madd_epi16(p, _mm256_set1_epi16(1));
}

/* Eight vectors of 8 partial sums -> one vector of their 8 totals (in order). */
static inline __m256i x86_hsum8(const __m256i v[8]) {
  const __m256i a = _mm256_hadd_epi32(v[0], v[1]), b = _mm256_hadd_epi32(v[2], v[3]);
  const __m256i c = _mm256_hadd_epi32(v[4], v[5]), d = _mm256_hadd_epi32(v[6], v[7]);
  /* per 128-bit half: [v0 v1 v2 v3] and [v4 v5 v6 v7], each that half's sum */
  const __m256i ab = _mm256_hadd_epi32(a, b), cd = _mm256_hadd_epi32(c, d);
  return _mm256_add_epi32(_mm256_permute2x128_si256(ab, cd, 0x20),
                          _mm256_permute2x128_si256(ab, cd, 0x31));
}

static void k_row_dot_q8(ss_dtype type, const uint8_t *row, int64_t cols, const int8_t *qx,
                         const float *dx, const int32_t *sx, int64_t ldq, float *y, int64_t ldy,
                         int nt) {
  const int64_t nblk = cols / 32;
  const int bnb = ssq_q8_block_nbytes(type);
  for (int t = 0; t < nt; t++) {
    const int8_t *qt = qx + t * ldq;
    const float *dt = dx + t * (ldq / 32);
    const int32_t *st = sx + t * (ldq / 32);
    float acc0 = 0.0f, acc1 = 0.0f;
    int64_t b = 0;
    for (; b + 8 <= nblk; b += 8) {
      __m256i p[8];
      for (int i = 0; i < 8; i++) p[i] = x86_q8_block(type, row + (b + i) * bnb, qt + 32 * (b + i));
      const __m256i isi = x86_hsum8(p);
      const __m256 is = _mm256_cvtepi32_ps(isi);
      const uint8_t *bb = row + b * bnb;
      const __m256 dw = _mm256_cvtph_ps(_mm_setr_epi16(
          (short)ssq_u16(bb), (short)ssq_u16(bb + bnb), (short)ssq_u16(bb + 2 * bnb),
          (short)ssq_u16(bb + 3 * bnb), (short)ssq_u16(bb + 4 * bnb), (short)ssq_u16(bb + 5 * bnb),
          (short)ssq_u16(bb + 6 * bnb), (short)ssq_u16(bb + 7 * bnb)));
      const __m256 d8 = _mm256_loadu_ps(dt + b);
      const __m256i s8 = _mm256_loadu_si256((const __m256i *)(st + b));
      /* Lane i is block b+i's v, with the same roundings as the scalar form. */
      __m256 v;
      if (type == SS_DTYPE_Q8_0) {
        v = _mm256_mul_ps(_mm256_mul_ps(dw, d8), is);
      } else if (type == SS_DTYPE_Q4_0) {
        const __m256i i0 = _mm256_sub_epi32(isi, _mm256_slli_epi32(s8, 3));
        v = _mm256_mul_ps(_mm256_mul_ps(dw, d8), _mm256_cvtepi32_ps(i0));
      } else {
        const __m256 mw = _mm256_cvtph_ps(_mm_setr_epi16(
            (short)ssq_u16(bb + 2), (short)ssq_u16(bb + bnb + 2), (short)ssq_u16(bb + 2 * bnb + 2),
            (short)ssq_u16(bb + 3 * bnb + 2), (short)ssq_u16(bb + 4 * bnb + 2),
            (short)ssq_u16(bb + 5 * bnb + 2), (short)ssq_u16(bb + 6 * bnb + 2),
            (short)ssq_u16(bb + 7 * bnb + 2)));
        v = _mm256_add_ps(_mm256_mul_ps(_mm256_mul_ps(dw, d8), is),
                          _mm256_mul_ps(_mm256_mul_ps(mw, d8), _mm256_cvtepi32_ps(s8)));
      }
      float vs[8];
      _mm256_storeu_ps(vs, v);
      /* b is even: lanes 0, 2, 4, 6 are even blocks. */
      acc0 += vs[0];
      acc1 += vs[1];
      acc0 += vs[2];
      acc1 += vs[3];
      acc0 += vs[4];
      acc1 += vs[5];
      acc0 += vs[6];
      acc1 += vs[7];
    }
    for (; b < nblk; b++) {
      const uint8_t *blk = row + b * bnb;
      __m256i p = x86_q8_block(type, blk, qt + 32 * b);
      __m128i s = _mm_add_epi32(_mm256_castsi256_si128(p), _mm256_extracti128_si256(p, 1));
      s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
      s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
      const float v = ssq_q8_block_value(type, blk, dt[b], _mm_cvtsi128_si32(s), st[b]);
      if (b & 1)
        acc1 += v;
      else
        acc0 += v;
    }
    y[t * ldy] = acc0 + acc1;
  }
}

#endif
