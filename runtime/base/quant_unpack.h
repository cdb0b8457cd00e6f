/* Unpacking of quantized blocks into integers and per-16-element scales and
 * offsets: element e of a block is sc[e/16] * q[e] + mn[e/16] (one f32 product,
 * then one f32 sum; mn is 0 for types without offsets).  Included by dtype.c
 * (the reference dequantizer) and by each CPU kernel variant, which defines
 * SS_UNPACK_H2F to its fastest exact f16 -> f32 conversion first, so the integer
 * work is compiled for that instruction set.  Layouts: kernels/dtype.h. */
#ifndef SS_QUANT_UNPACK_H
#define SS_QUANT_UNPACK_H

#include <stdint.h>
#include <string.h>

#include "runtime/base/dtype.h"

#ifndef SS_UNPACK_H2F
#define SS_UNPACK_H2F(h) ss_f16_to_f32(h)
#endif

static inline uint16_t ssq_u16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }
static inline float ssq_h(const uint8_t *p) { return SS_UNPACK_H2F(ssq_u16(p)); }

/* Q4_K / Q5_K: the 6-bit scale and minimum of group j (0..7) of 32 elements. */
static inline void ssq_scale_min_k4(const uint8_t *s, int j, int *sc, int *m) {
  if (j < 4) {
    *sc = s[j] & 63;
    *m = s[j + 4] & 63;
  } else {
    *sc = (s[j + 4] & 0x0f) | ((s[j - 4] >> 6) << 4);
    *m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
  }
}

/* 16-byte vectors (GCC vector extensions): the integer work compiles to
 * whatever SIMD the including file targets, with exact results everywhere. */
typedef uint8_t ssq_u8x16 __attribute__((vector_size(16)));
typedef int8_t ssq_i8x16 __attribute__((vector_size(16)));

static inline __attribute__((always_inline)) ssq_u8x16 ssq_ld(const uint8_t *p) {
  ssq_u8x16 v;
  memcpy(&v, p, 16);
  return v;
}
static inline __attribute__((always_inline)) void ssq_st(int8_t *p, ssq_u8x16 v) {
  memcpy(p, &v, 16);
}

static inline __attribute__((always_inline)) void ssq_unpack(ss_dtype type, const uint8_t *b,
                                                             int8_t *restrict q,
                                                             float *restrict sc,
                                                             float *restrict mn) {
  const ssq_u8x16 k15 = (ssq_u8x16){0} + 15, k3 = (ssq_u8x16){0} + 3, k1 = (ssq_u8x16){0} + 1;
  switch (type) {
  case SS_DTYPE_Q8_0: {
    const float d = ssq_h(b);
    memcpy(q, b + 2, 32);
    sc[0] = sc[1] = d;
    mn[0] = mn[1] = 0.0f;
    break;
  }
  case SS_DTYPE_Q4_0:
  case SS_DTYPE_Q4_1: {
    const int q41 = type == SS_DTYPE_Q4_1;
    const ssq_u8x16 v = ssq_ld(b + (q41 ? 4 : 2));
    const ssq_u8x16 sub = (ssq_u8x16){0} + (uint8_t)(q41 ? 0 : 8);
    ssq_st(q, (v & k15) - sub);
    ssq_st(q + 16, (v >> 4) - sub);
    sc[0] = sc[1] = ssq_h(b);
    mn[0] = mn[1] = q41 ? ssq_h(b + 2) : 0.0f;
    break;
  }
  case SS_DTYPE_Q5_0:
  case SS_DTYPE_Q5_1: {
    const int q51 = type == SS_DTYPE_Q5_1;
    const int off = q51 ? 4 : 2;
    const uint8_t *qh = b + off;
    const ssq_u8x16 v = ssq_ld(b + off + 4);
    const ssq_u8x16 bits = {1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128};
    const ssq_u8x16 h0 = {qh[0], qh[0], qh[0], qh[0], qh[0], qh[0], qh[0], qh[0],
                          qh[1], qh[1], qh[1], qh[1], qh[1], qh[1], qh[1], qh[1]};
    const ssq_u8x16 h1 = {qh[2], qh[2], qh[2], qh[2], qh[2], qh[2], qh[2], qh[2],
                          qh[3], qh[3], qh[3], qh[3], qh[3], qh[3], qh[3], qh[3]};
    const ssq_u8x16 sub = (ssq_u8x16){0} + (uint8_t)(q51 ? 0 : 16);
    /* (h & bit) != 0 is all ones (-1) per true lane: & 16 keeps the bit value. */
    const ssq_u8x16 k16 = (ssq_u8x16){0} + 16;
    ssq_st(q, ((v & k15) | ((ssq_u8x16)((h0 & bits) != 0) & k16)) - sub);
    ssq_st(q + 16, ((v >> 4) | ((ssq_u8x16)((h1 & bits) != 0) & k16)) - sub);
    sc[0] = sc[1] = ssq_h(b);
    mn[0] = mn[1] = q51 ? ssq_h(b + 2) : 0.0f;
    break;
  }
  case SS_DTYPE_Q2_K:
  case SS_DTYPE_Q3_K: {
    const int k3q = type == SS_DTYPE_Q3_K;
    const uint8_t *qs = b + (k3q ? 32 : 16);
    ssq_u8x16 hm[2] = {0};
    if (k3q) {
      hm[0] = ssq_ld(b);
      hm[1] = ssq_ld(b + 16);
    }
    /* e = h*128 + s*32 + l: bits 2s of qs[h*32 + l]; Q3_K: minus 4 unless bit
     * (e / 32) of hmask[l] is set. */
    for (int h = 0; h < 2; h++)
      for (int half = 0; half < 2; half++) {
        const ssq_u8x16 v = ssq_ld(qs + h * 32 + half * 16);
        for (int s = 0; s < 4; s++) {
          ssq_u8x16 r = (v >> (2 * s)) & k3;
          if (k3q) r -= (~(hm[half] >> (h * 4 + s)) & k1) << 2;
          ssq_st(q + h * 128 + s * 32 + half * 16, r);
        }
      }
    if (k3q) {
      const uint8_t *s = b + 96;
      const float d = ssq_h(b + 108);
      for (int g = 0; g < 16; g++) {
        const int lo = (s[g % 8] >> (4 * (g / 8))) & 15;
        const int hi = (s[8 + g % 4] >> (2 * (g / 4))) & 3;
        sc[g] = d * (float)((lo | (hi << 4)) - 32);
        mn[g] = 0.0f;
      }
    } else {
      const uint8_t *scales = b;
      const float d = ssq_h(b + 80), dmin = ssq_h(b + 82);
      for (int g = 0; g < 16; g++) {
        sc[g] = d * (float)(scales[g] & 15);
        mn[g] = -(dmin * (float)(scales[g] >> 4));
      }
    }
    break;
  }
  case SS_DTYPE_Q4_K:
  case SS_DTYPE_Q5_K: {
    const float d = ssq_h(b), dmin = ssq_h(b + 2);
    const uint8_t *s = b + 4;
    const int k5 = type == SS_DTYPE_Q5_K;
    const uint8_t *qhp = b + 16, *qs = b + (k5 ? 48 : 16);
    ssq_u8x16 qh[2] = {0};
    if (k5) {
      qh[0] = ssq_ld(qhp);
      qh[1] = ssq_ld(qhp + 16);
    }
    /* e = c*64 + s*32 + l: nibble s of qs[c*32 + l]; Q5_K: plus 16 * bit (e / 32)
     * of qh[l]. */
    for (int c = 0; c < 4; c++)
      for (int half = 0; half < 2; half++) {
        const ssq_u8x16 v = ssq_ld(qs + c * 32 + half * 16);
        ssq_u8x16 lo = v & k15, hi = v >> 4;
        if (k5) {
          lo |= ((qh[half] >> (2 * c)) & k1) << 4;
          hi |= ((qh[half] >> (2 * c + 1)) & k1) << 4;
        }
        ssq_st(q + c * 64 + half * 16, lo);
        ssq_st(q + c * 64 + 32 + half * 16, hi);
      }
    for (int j = 0; j < 8; j++) {
      int scv, mv;
      ssq_scale_min_k4(s, j, &scv, &mv);
      sc[2 * j] = sc[2 * j + 1] = d * (float)scv;
      mn[2 * j] = mn[2 * j + 1] = -(dmin * (float)mv);
    }
    break;
  }
  case SS_DTYPE_Q6_K: {
    const uint8_t *ql = b, *qhp = b + 128;
    const int8_t *scales = (const int8_t *)(b + 192);
    const float d = ssq_h(b + 208);
    const ssq_u8x16 k32 = (ssq_u8x16){0} + 32;
    /* e = h*128 + s*64 + l (l < 64): nibble s of ql[h*64 + l], plus 16 times
     * bits 2*(r/32) of qh[h*32 + r%32] with r = s*64 + l; minus 32. */
    for (int h = 0; h < 2; h++) {
      const ssq_u8x16 qh0 = ssq_ld(qhp + h * 32), qh1 = ssq_ld(qhp + h * 32 + 16);
      for (int quarter = 0; quarter < 4; quarter++) {
        const ssq_u8x16 v = ssq_ld(ql + h * 64 + quarter * 16);
        const ssq_u8x16 qhv = (quarter & 1) ? qh1 : qh0;
        const int r32 = quarter / 2; /* r / 32 for s = 0; s = 1 adds 2 */
        const ssq_u8x16 lo = (v & k15) | (((qhv >> (2 * r32)) & k3) << 4);
        const ssq_u8x16 hi = (v >> 4) | (((qhv >> (2 * (r32 + 2))) & k3) << 4);
        ssq_st(q + h * 128 + quarter * 16, lo - k32);
        ssq_st(q + h * 128 + 64 + quarter * 16, hi - k32);
      }
    }
    for (int g = 0; g < 16; g++) {
      sc[g] = d * (float)scales[g];
      mn[g] = 0.0f;
    }
    break;
  }
  case SS_DTYPE_Q8_K: {
    float d;
    memcpy(&d, b, 4);
    memcpy(q, b + 4, 256);
    for (int g = 0; g < 16; g++) {
      sc[g] = d;
      mn[g] = 0.0f;
    }
    break;
  }
  default:
    break;
  }
}

/* The 8-bit activation path (kernels/cpu/kern_impl.h): block b's float part,
 * from the exact integer sum isum (Q8_0: sum qw*qx; Q4_0, Q4_1: sum n*qx with n
 * the unsigned nibble), the activations' block scale dx and sum sx.  Every
 * variant rounds exactly this way. */
static inline int ssq_q8_block_nbytes(ss_dtype type) {
  return type == SS_DTYPE_Q8_0 ? 34 : type == SS_DTYPE_Q4_1 ? 20 : 18;
}
static inline float ssq_q8_block_value(ss_dtype type, const uint8_t *blk, float dx, int32_t isum,
                                       int32_t sx) {
  const float dw = ssq_h(blk);
  if (type == SS_DTYPE_Q8_0) return (dw * dx) * (float)isum;
  if (type == SS_DTYPE_Q4_0) return (dw * dx) * (float)(isum - 8 * sx);
  return (dw * dx) * (float)isum + (ssq_h(blk + 2) * dx) * (float)sx;
}

#endif
