/* Pieces shared by the x86 variants (kern_avx2.c, kern_avx512.c; AVX2
 * instructions): the last three levels of the canonical reduction tree, and
 * the 8-bit activation path's row kernel.  There eight blocks' exact integer
 * dot products are summed in one register (horizontal adds: exact in integers),
 * then the eight blocks' float parts and their addition to the eight lane
 * accumulators run in one vector exactly as kern_impl.h's portable
 * k_row_dot_q8 states them. */
#ifndef SS_KERN_X86_H
#define SS_KERN_X86_H

#include <immintrin.h>
#include <stdint.h>
#include <string.h>

#include "runtime/base/quant_unpack.h"

/* h8[0..7] -> ((h8[i] + h8[i+4]) + (.. + [i+2])) + [i+1] at lane 0 (kern_impl.h). */
static inline float x86_hsum8_ps(__m256 h8) {
  const __m128 h4 = _mm_add_ps(_mm256_castps256_ps128(h8), _mm256_extractf128_ps(h8, 1));
  const __m128 h2 = _mm_add_ps(h4, _mm_movehl_ps(h4, h4));
  return _mm_cvtss_f32(_mm_add_ss(h2, _mm_shuffle_ps(h2, h2, 1)));
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

/* Blocks per group (one vector lane each) and groups unpacked per pass over a
 * row: 16 groups = 128 blocks = 4096 columns, 4 KiB of unpacked weights that
 * every token of the call reads from L1. */
#define X86_Q8_GROUPS 16
/* Tokens per pass: each keeps one vector of 8 lane accumulators. */
#define X86_Q8_TOKENS 32

/* The f16 scale (and, for Q4_1, min) of n <= 8 consecutive blocks as floats,
 * lanes past n zero.  Each block starts with its 16-bit scale; Q4_1's min
 * follows it: one 32-bit gather (a block's first 4 bytes), then the low halves
 * and the high halves separated by one byte shuffle. */
static inline void x86_q8_scales(const uint8_t *bb, int bnb, int n, __m256 *dw, __m256 *mw) {
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256i idx = _mm256_mullo_epi32(lane, _mm256_set1_epi32(bnb));
  const __m256i v =
      n == 8 ? _mm256_i32gather_epi32((const int *)bb, idx, 1)
             : _mm256_mask_i32gather_epi32(_mm256_setzero_si256(), (const int *)bb, idx,
                                           _mm256_cmpgt_epi32(_mm256_set1_epi32(n), lane), 1);
  const __m256i sh = _mm256_setr_epi8(0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15, 0, 1, 4,
                                      5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15);
  /* per half [lo0..lo3 | hi0..hi3]; 64-bit quarters reordered to lo0-7, hi0-7 */
  const __m256i g = _mm256_permute4x64_epi64(_mm256_shuffle_epi8(v, sh), 0xd8);
  *dw = _mm256_cvtph_ps(_mm256_castsi256_si128(g));
  *mw = _mm256_cvtph_ps(_mm256_extracti128_si256(g, 1));
}

/* Block b..b+7's float parts v (lane i block b+i, kern_impl.h's roundings)
 * from their exact integer sums isi, with lanes past n zero. */
static inline __m256 x86_q8_value(ss_dtype type, __m256i isi, __m256 dw, __m256 mw,
                                  const float *d, const int32_t *s, int n) {
  __m256 d8;
  __m256i s8;
  if (n == 8) {
    d8 = _mm256_loadu_ps(d);
    s8 = _mm256_loadu_si256((const __m256i *)s);
  } else {
    const __m256i mask =
        _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    d8 = _mm256_maskload_ps(d, mask);
    s8 = _mm256_maskload_epi32((const int *)s, mask);
  }
  if (type == SS_DTYPE_Q8_0) return _mm256_mul_ps(_mm256_mul_ps(dw, d8), _mm256_cvtepi32_ps(isi));
  if (type == SS_DTYPE_Q4_0) {
    const __m256i i0 = _mm256_sub_epi32(isi, _mm256_slli_epi32(s8, 3));
    return _mm256_mul_ps(_mm256_mul_ps(dw, d8), _mm256_cvtepi32_ps(i0));
  }
  return _mm256_add_ps(_mm256_mul_ps(_mm256_mul_ps(dw, d8), _mm256_cvtepi32_ps(isi)),
                       _mm256_mul_ps(_mm256_mul_ps(mw, d8), _mm256_cvtepi32_ps(s8)));
}

/* One block's 32 weights as maddubs's unsigned operand, in element order: a Q4
 * block's nibbles (low halves are elements 0-15, high 16-31); for Q8_0 |w|,
 * the signs moved onto x per token (*raw keeps w). */
static inline __m256i x86_q8_unpack(ss_dtype type, const uint8_t *blk, __m256i *raw) {
  if (type == SS_DTYPE_Q8_0) {
    const __m256i w = _mm256_loadu_si256((const __m256i *)(blk + 2));
    *raw = w;
    return _mm256_sign_epi8(w, w);
  }
  const __m128i b = _mm_loadu_si128((const __m128i *)(blk + (type == SS_DTYPE_Q4_1 ? 4 : 2)));
  const __m128i m = _mm_set1_epi8(15);
  return _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(b, 4), m), _mm_and_si128(b, m));
}

/* The exact integer dot products of n <= 8 unpacked blocks w (raw: Q8_0's
 * signed weights) with the activations x of the same blocks, one block per
 * lane (lanes past n zero; their x is not read). */
static inline __attribute__((always_inline)) __m256i
x86_q8_isum(ss_dtype type, const __m256i *w, const __m256i *raw, const int8_t *x, int n) {
  const __m256i ones = _mm256_set1_epi16(1);
  __m256i p[8];
  for (int i = 0; i < 8; i++) {
    if (n == 8 || i < n) {
      __m256i xv = _mm256_loadu_si256((const __m256i *)(x + 32 * i));
      if (type == SS_DTYPE_Q8_0) xv = _mm256_sign_epi8(xv, raw[i]);
      p[i] = _mm256_madd_epi16(_mm256_maddubs_epi16(w[i], xv), ones);
    } else {
      p[i] = _mm256_setzero_si256();
    }
  }
  return x86_hsum8(p);
}

/* The row for nt tokens.  One token (decode): each group of eight blocks is
 * unpacked and multiplied in registers.  More: per pass the row's next
 * X86_Q8_GROUPS groups are unpacked once (weights and scales) and every token
 * runs over them.  Either way lane l of a token's accumulator vector adds
 * blocks l, l + 8, ... in block order, the padded lanes of a last partial group
 * add +0.0f (zero weights, zero scales), and the final reduction is
 * x86_hsum8_ps: kern_impl.h's arithmetic. */
static inline __attribute__((always_inline)) void
x86_row_dot_q8(ss_dtype type, const uint8_t *row, int64_t cols, const int8_t *qx, const float *dx,
               const int32_t *sx, int64_t ldq, float *y, int64_t ldy, int nt) {
  const int64_t nblk = cols / 32, ngrp = (nblk + 7) / 8;
  const int bnb = ssq_q8_block_nbytes(type);
  const int64_t ldb = ldq / 32;
  if (nt == 1) {
    __m256 a = _mm256_setzero_ps();
    for (int64_t b = 0; b < nblk; b += 8) {
      const int n = nblk - b < 8 ? (int)(nblk - b) : 8;
      const uint8_t *bb = row + b * bnb;
      __m256i w[8], raw[8];
      for (int i = 0; i < 8; i++)
        w[i] = n == 8 || i < n ? x86_q8_unpack(type, bb + (size_t)i * (size_t)bnb, &raw[i])
                               : (raw[i] = _mm256_setzero_si256());
      __m256 dw, mw;
      x86_q8_scales(bb, bnb, n, &dw, &mw);
      a = _mm256_add_ps(a, x86_q8_value(type, x86_q8_isum(type, w, raw, qx + 32 * b, n), dw, mw,
                                        dx + b, sx + b, n));
    }
    y[0] = x86_hsum8_ps(a);
    return;
  }
  __m256i wq[8 * X86_Q8_GROUPS], wr[8 * X86_Q8_GROUPS];
  __m256 dwv[X86_Q8_GROUPS], mwv[X86_Q8_GROUPS];
  __m256 acc[X86_Q8_TOKENS];
  for (int t0 = 0; t0 < nt; t0 += X86_Q8_TOKENS) {
    const int tn = nt - t0 < X86_Q8_TOKENS ? nt - t0 : X86_Q8_TOKENS;
    for (int t = 0; t < tn; t++) acc[t] = _mm256_setzero_ps();
    for (int64_t g0 = 0; g0 < ngrp; g0 += X86_Q8_GROUPS) {
      const int gn = (int)(ngrp - g0 < X86_Q8_GROUPS ? ngrp - g0 : X86_Q8_GROUPS);
      for (int g = 0; g < gn; g++) {
        const int64_t b = (g0 + g) * 8;
        const int n = nblk - b < 8 ? (int)(nblk - b) : 8;
        const uint8_t *bb = row + b * bnb;
        for (int i = 0; i < 8; i++) {
          wr[8 * g + i] = _mm256_setzero_si256();
          wq[8 * g + i] = i < n ? x86_q8_unpack(type, bb + (size_t)i * (size_t)bnb, &wr[8 * g + i])
                                : _mm256_setzero_si256();
        }
        x86_q8_scales(bb, bnb, n, &dwv[g], &mwv[g]);
      }
      for (int t = 0; t < tn; t++) {
        const int8_t *qt = qx + (int64_t)(t0 + t) * ldq;
        const float *dt = dx + (int64_t)(t0 + t) * ldb;
        const int32_t *st = sx + (int64_t)(t0 + t) * ldb;
        __m256 a = acc[t];
        for (int g = 0; g < gn; g++) {
          const int64_t b = (g0 + g) * 8;
          const int n = nblk - b < 8 ? (int)(nblk - b) : 8;
          a = _mm256_add_ps(a, x86_q8_value(type,
                                            x86_q8_isum(type, wq + 8 * g, wr + 8 * g, qt + 32 * b, n),
                                            dwv[g], mwv[g], dt + b, st + b, n));
        }
        acc[t] = a;
      }
    }
    for (int t = 0; t < tn; t++) y[(int64_t)(t0 + t) * ldy] = x86_hsum8_ps(acc[t]);
  }
}

/* One copy of the kernel per weight type (the type's branches resolved at
 * compile time). */
static void k_row_dot_q8(ss_dtype type, const uint8_t *row, int64_t cols, const int8_t *qx,
                         const float *dx, const int32_t *sx, int64_t ldq, float *y, int64_t ldy,
                         int nt) {
  switch (type) {
  case SS_DTYPE_Q4_1: x86_row_dot_q8(SS_DTYPE_Q4_1, row, cols, qx, dx, sx, ldq, y, ldy, nt); break;
  case SS_DTYPE_Q4_0: x86_row_dot_q8(SS_DTYPE_Q4_0, row, cols, qx, dx, sx, ldq, y, ldy, nt); break;
  default: x86_row_dot_q8(SS_DTYPE_Q8_0, row, cols, qx, dx, sx, ldq, y, ldy, nt); break;
  }
}

#endif
