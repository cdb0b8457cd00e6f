/* The CPU's hot kernels, written once over a 16-lane virtual vector and compiled
 * once per instruction set.  The including file (kern_<isa>.c) defines:
 *
 *   v16                         16 floats
 *   v_zero() v_set1(f) v_load(p) v_store(p, v)
 *   v_i8(p)                     16 int8 -> float
 *   v_f16(p) v_bf16(p) v_f8(p)  16 stored weights -> float (exact)
 *   v_mul(a, b) v_add(a, b)     lane-wise, rounded once
 *   v_fma(a, b, c)              lane-wise a*b + c, rounded once (fused)
 *   v_hsum(v)                   ((v[i] + v[i+8]) then + [i+4], + [i+2], + [i+1]):
 *                               h8[i] = v[i] + v[i+8]; h4[i] = h8[i] + h8[i+4];
 *                               h2[i] = h4[i] + h4[i+2]; h2[0] + h2[1]
 *   s_fma(a, b, c)              the scalar fused multiply-add
 *   KERN_NT                     tokens per pass over a row (register budget)
 *   KERN_TABLE, KERN_ISA, KERN_NAME
 *
 * The canonical computation (what makes every variant give the same bits):
 *   - Every row: its weights, each rounded as the reference dequantizer
 *     (ss_dequantize_row) rounds it (sc*q, plus mn where the type has
 *     offsets; f16/bf16/f8/f32 exactly), in 16-element chunks (the last one
 *     zero-padded); chunk c feeds accumulator c & 1:  acc = fma(w, x, acc);
 *     result hsum(acc0 + acc1).  So every variant, batch size and thread count
 *     computes the same dot product of the same f32 weights.
 *   - Optional: v_q4(qs, sub, &a, &b) (KERN_HAVE_Q4) turns a Q4_0/Q4_1 block's
 *     16 bytes straight into its two halves' integers minus sub.
 *   - dot(a, b): one accumulator over 16-element chunks (last zero-padded),
 *     acc = fma(a, b, acc); hsum.
 *   - wsum: per output element, acc = fma(e[i], row_i[d], acc) from acc = 0 in
 *     increasing i.
 * Nothing here depends on how many tokens share a call or which thread runs it. */
#include <stdint.h>
#include <string.h>

#include "kernels/cpu/isa.h"
#include "runtime/base/quant_unpack.h"

#define KI static inline __attribute__((always_inline))

/* ---- quantized rows ------------------------------------------------------ */

/* The 16 weights of group g (elements 16g..16g+15 of the block) as the
 * reference dequantizer rounds them: sc*q, plus mn for types with offsets. */
KI v16 deq16(const v16 q, const float sc, const float mn, const int has_min) {
  const v16 w = v_mul(v_set1(sc), q);
  return has_min ? v_add(w, v_set1(mn)) : w;
}

/* One block's weights, group pair by group pair: calls BODY with wa, wb (the
 * 16-element groups 2k and 2k+1) and e (the row element of wa). */
#ifndef KERN_HAVE_Q4
KI void v_q4(const uint8_t *qs, int sub, v16 *a, v16 *b) {
  (void)qs, (void)sub;
  *a = *b = v_zero();
}
#endif
#ifdef KERN_HAVE_Q4
#define Q4_FAST(type) ((type) == SS_DTYPE_Q4_0 || (type) == SS_DTYPE_Q4_1)
#else
#define Q4_FAST(type) 0
#endif
#ifndef KERN_HAVE_Q8
KI void v_q8(const uint8_t *qs, v16 *a, v16 *b) {
  *a = v_i8((const int8_t *)qs);
  *b = v_i8((const int8_t *)qs + 16);
}
#endif
#define FOR_BLOCK_GROUPS(BODY)                                                                    \
  do {                                                                                            \
    const uint8_t *blk_ = row + b * bnb;                                                          \
    if (type == SS_DTYPE_Q8_0) {                                                                  \
      v16 qa_, qb_;                                                                               \
      v_q8(blk_ + 2, &qa_, &qb_);                                                                 \
      const float d_ = SS_UNPACK_H2F(ssq_u16(blk_));                                              \
      const v16 wa = deq16(qa_, d_, 0.0f, 0), wb = deq16(qb_, d_, 0.0f, 0);                       \
      const int64_t e = b * bc;                                                                   \
      BODY;                                                                                       \
    } else if (Q4_FAST(type)) {                                                                   \
      const int q41_ = type == SS_DTYPE_Q4_1;                                                     \
      v16 qa_, qb_;                                                                               \
      v_q4(blk_ + (q41_ ? 4 : 2), q41_ ? 0 : 8, &qa_, &qb_);                                      \
      const float d_ = SS_UNPACK_H2F(ssq_u16(blk_));                                              \
      const float m_ = q41_ ? SS_UNPACK_H2F(ssq_u16(blk_ + 2)) : 0.0f;                            \
      const v16 wa = deq16(qa_, d_, m_, q41_), wb = deq16(qb_, d_, m_, q41_);                     \
      const int64_t e = b * bc;                                                                   \
      BODY;                                                                                       \
    } else {                                                                                      \
      ssq_unpack(type, blk_, q, sc, mn);                                                          \
      for (int g_ = 0; g_ < bc / 16; g_ += 2) {                                                   \
        const v16 wa = deq16(v_i8(q + 16 * g_), sc[g_], mn[g_], has_min);                         \
        const v16 wb = deq16(v_i8(q + 16 * g_ + 16), sc[g_ + 1], mn[g_ + 1], has_min);            \
        const int64_t e = b * bc + 16 * g_;                                                       \
        BODY;                                                                                     \
      }                                                                                           \
    }                                                                                             \
  } while (0)

/* NT tokens against a quantized row, dequantizing in registers. */
KI void quant_nt(const ss_dtype type, const int bc, const int bnb, const int has_min,
                 const uint8_t *row, int64_t nblk, const float *x, int64_t ldx, float *y,
                 int64_t ldy, const int NT) {
  v16 acc0[KERN_NT], acc1[KERN_NT];
  for (int t = 0; t < NT; t++) acc0[t] = acc1[t] = v_zero();
  int8_t q[SS_QK_K] __attribute__((aligned(64)));
  float sc[SS_QK_K / 16], mn[SS_QK_K / 16];
  for (int64_t b = 0; b < nblk; b++)
    FOR_BLOCK_GROUPS({
      for (int t = 0; t < NT; t++) {
        acc0[t] = v_fma(wa, v_load(x + t * ldx + e), acc0[t]);
        acc1[t] = v_fma(wb, v_load(x + t * ldx + e + 16), acc1[t]);
      }
    });
  for (int t = 0; t < NT; t++) y[t * ldy] = v_hsum(v_add(acc0[t], acc1[t]));
}

/* The whole row dequantized into w (cols floats), for several passes. */
KI void quant_deq_row(const ss_dtype type, const int bc, const int bnb, const int has_min,
                      const uint8_t *row, int64_t nblk, float *w) {
  int8_t q[SS_QK_K] __attribute__((aligned(64)));
  float sc[SS_QK_K / 16], mn[SS_QK_K / 16];
  for (int64_t b = 0; b < nblk; b++)
    FOR_BLOCK_GROUPS({
      v_store(w + e, wa);
      v_store(w + e + 16, wb);
    });
}

/* ---- float rows ---------------------------------------------------------- */

KI v16 load_w(const ss_dtype type, const uint8_t *row, int64_t i) {
  switch (type) {
  case SS_DTYPE_F32: return v_load((const float *)row + i);
  case SS_DTYPE_F16: return v_f16((const uint16_t *)row + i);
  case SS_DTYPE_BF16: return v_bf16((const uint16_t *)row + i);
  default: return v_f8(row + i);
  }
}

/* The last chunk: n < 16 elements, zero-padded (into a buffer, then one load). */
KI v16 load_w_tail(const ss_dtype type, const uint8_t *row, int64_t i, int n) {
  union {
    float f[16];
    uint16_t h[16];
    uint8_t b[16];
  } buf;
  memset(&buf, 0, sizeof buf);
  const int esz = type == SS_DTYPE_F32 ? 4 : type == SS_DTYPE_F8_E4M3 ? 1 : 2;
  memcpy(&buf, row + i * esz, (size_t)n * (size_t)esz);
  switch (type) {
  case SS_DTYPE_F32: return v_load(buf.f);
  case SS_DTYPE_F16: return v_f16(buf.h);
  case SS_DTYPE_BF16: return v_bf16(buf.h);
  default: return v_f8(buf.b);
  }
}

KI v16 load_x_tail(const float *x, int n) {
  float buf[16] = {0};
  memcpy(buf, x, (size_t)n * sizeof(float));
  return v_load(buf);
}

KI void float_nt(const ss_dtype type, const uint8_t *row, int64_t cols, const float *x,
                 int64_t ldx, float *y, int64_t ldy, const int NT) {
  v16 acc0[KERN_NT], acc1[KERN_NT];
  for (int t = 0; t < NT; t++) acc0[t] = acc1[t] = v_zero();
  int64_t i = 0;
  for (; i + 32 <= cols; i += 32) {
    const v16 wa = load_w(type, row, i), wb = load_w(type, row, i + 16);
    for (int t = 0; t < NT; t++) {
      acc0[t] = v_fma(wa, v_load(x + t * ldx + i), acc0[t]);
      acc1[t] = v_fma(wb, v_load(x + t * ldx + i + 16), acc1[t]);
    }
  }
  if (i + 16 <= cols) {
    const v16 wa = load_w(type, row, i);
    for (int t = 0; t < NT; t++) acc0[t] = v_fma(wa, v_load(x + t * ldx + i), acc0[t]);
    i += 16;
    if (i < cols) {
      const int n = (int)(cols - i);
      const v16 wb = load_w_tail(type, row, i, n);
      for (int t = 0; t < NT; t++) acc1[t] = v_fma(wb, load_x_tail(x + t * ldx + i, n), acc1[t]);
    }
  } else if (i < cols) {
    const int n = (int)(cols - i);
    const v16 wa = load_w_tail(type, row, i, n);
    for (int t = 0; t < NT; t++) acc0[t] = v_fma(wa, load_x_tail(x + t * ldx + i, n), acc0[t]);
  }
  for (int t = 0; t < NT; t++) y[t * ldy] = v_hsum(v_add(acc0[t], acc1[t]));
}

/* ---- dispatch over types and token counts ---------------------------------- */

/* One case per token count up to KERN_NT, each an inlined body with N fixed. */
#if KERN_NT >= 8
#define KERN_CASES(CALL)                                                                          \
  case 1: CALL(1); break;                                                                         \
  case 2: CALL(2); break;                                                                         \
  case 3: CALL(3); break;                                                                         \
  case 4: CALL(4); break;                                                                         \
  case 5: CALL(5); break;                                                                         \
  case 6: CALL(6); break;                                                                         \
  case 7: CALL(7); break;                                                                         \
  default: CALL(8); break;
#elif KERN_NT >= 4
#define KERN_CASES(CALL)                                                                          \
  case 1: CALL(1); break;                                                                         \
  case 2: CALL(2); break;                                                                         \
  case 3: CALL(3); break;                                                                         \
  default: CALL(4); break;
#elif KERN_NT >= 2
#define KERN_CASES(CALL)                                                                          \
  case 1: CALL(1); break;                                                                         \
  default: CALL(2); break;
#else
#define KERN_CASES(CALL)                                                                          \
  default: CALL(1); break;
#endif

#define QCALL(N) quant_nt(qt, qbc, qbnb, qhm, row, nblk, xt, ldx, yt, ldy, N)
#define FCALL(N) float_nt(ft, row, cols, xt, ldx, yt, ldy, N)

/* Several tokens: the row is dequantized once into an L1 buffer (the same
 * values the register path makes), then each group of KERN_NT tokens runs the
 * F32 kernel over it, which performs the same operations in the same order. */
#define KERN_ROWBUF 8192
static void kf_F32(const uint8_t *row, int64_t cols, const float *x, int64_t ldx, float *y,
                   int64_t ldy, int nt);

#define KERN_Q(TYPE, BC, BNB, HM)                                                                 \
  static void kq_##TYPE(const uint8_t *row, int64_t cols, const float *x, int64_t ldx, float *y,  \
                        int64_t ldy, int nt) {                                                    \
    const ss_dtype qt = SS_DTYPE_##TYPE;                                                          \
    const int qbc = BC, qbnb = BNB, qhm = HM;                                                     \
    const int64_t nblk = cols / (BC);                                                             \
    if (nt > KERN_NT / 2 && nt > 1 && cols <= KERN_ROWBUF) {                                      \
      float wbuf[KERN_ROWBUF] __attribute__((aligned(64)));                                       \
      quant_deq_row(qt, qbc, qbnb, qhm, row, nblk, wbuf);                                         \
      kf_F32((const uint8_t *)wbuf, cols, x, ldx, y, ldy, nt);                                    \
      return;                                                                                     \
    }                                                                                             \
    for (int t0 = 0; t0 < nt; t0 += KERN_NT) {                                                    \
      const int n = nt - t0 < KERN_NT ? nt - t0 : KERN_NT;                                        \
      const float *xt = x + t0 * ldx;                                                             \
      float *yt = y + t0 * ldy;                                                                   \
      switch (n) { KERN_CASES(QCALL) }                                                            \
    }                                                                                             \
  }

#define KERN_F(TYPE)                                                                              \
  static void kf_##TYPE(const uint8_t *row, int64_t cols, const float *x, int64_t ldx, float *y,  \
                        int64_t ldy, int nt) {                                                    \
    const ss_dtype ft = SS_DTYPE_##TYPE;                                                          \
    for (int t0 = 0; t0 < nt; t0 += KERN_NT) {                                                    \
      const int n = nt - t0 < KERN_NT ? nt - t0 : KERN_NT;                                        \
      const float *xt = x + t0 * ldx;                                                             \
      float *yt = y + t0 * ldy;                                                                   \
      switch (n) { KERN_CASES(FCALL) }                                                            \
    }                                                                                             \
  }

KERN_Q(Q8_0, 32, 34, 0)
KERN_Q(Q4_0, 32, 18, 0)
KERN_Q(Q4_1, 32, 20, 1)
KERN_Q(Q5_0, 32, 22, 0)
KERN_Q(Q5_1, 32, 24, 1)
KERN_Q(Q2_K, 256, 84, 1)
KERN_Q(Q3_K, 256, 110, 0)
KERN_Q(Q4_K, 256, 144, 1)
KERN_Q(Q5_K, 256, 176, 1)
KERN_Q(Q6_K, 256, 210, 0)
KERN_Q(Q8_K, 256, 292, 0)
KERN_F(F32)
KERN_F(F16)
KERN_F(BF16)
KERN_F(F8_E4M3)

static void k_row_dot(ss_dtype type, const uint8_t *row, int64_t cols, const float *x, int64_t ldx,
                      float *y, int64_t ldy, int nt) {
  switch (type) {
#define QC(T)                                                                                     \
  case SS_DTYPE_##T: kq_##T(row, cols, x, ldx, y, ldy, nt); break;
#define FC(T)                                                                                     \
  case SS_DTYPE_##T: kf_##T(row, cols, x, ldx, y, ldy, nt); break;
    QC(Q8_0) QC(Q4_0) QC(Q4_1) QC(Q5_0) QC(Q5_1) QC(Q2_K) QC(Q3_K) QC(Q4_K) QC(Q5_K) QC(Q6_K)
    QC(Q8_K) FC(F32) FC(F16) FC(BF16) FC(F8_E4M3)
#undef QC
#undef FC
  default:
    for (int t = 0; t < nt; t++) y[t * ldy] = __builtin_nanf("");
    break;
  }
}

/* ---- opt-in: 8-bit activations (--activations q8) ----------------------------
 * x is quantized per 32-element block (ss_cpu_quantize_q8: qx, its scale dx and
 * sum sx); for Q4_0, Q4_1 and Q8_0 weights each block's integer dot product is
 * exact, so SIMD may sum it in any order; the float part is fixed, the same in
 * every variant:
 *   v_b = (dw * dx) * (float)isum      (+ (mw * dx) * (float)sx for Q4_1)
 *   acc[b & 7] += v_b  in block order, from acc = 0 (eight lanes: block b of a
 *                      row goes to lane b mod 8, so a vector of 8 lanes adds
 *                      eight blocks at once); when the row's block count is not
 *                      a multiple of 8, lanes past its last block add +0.0f
 *                      once (a vector's padded lanes)
 *   y = ((acc0 + acc4) + (acc2 + acc6)) + ((acc1 + acc5) + (acc3 + acc7))
 * isum: Q8_0 sum qw*qx; Q4_0 sum (n - 8)*qx; Q4_1 sum n*qx (n the nibble). */

#ifndef KERN_HAVE_ROWQ8
/* sum over 32 of n[i] * qx[i], n the 4-bit values of a Q4 block (unsigned). */
KI int32_t idot_q4(const uint8_t *qs, const int8_t *qx) {
  int32_t s = 0;
  for (int j = 0; j < 16; j++) s += (qs[j] & 15) * qx[j] + (qs[j] >> 4) * qx[j + 16];
  return s;
}
KI int32_t idot_q8(const int8_t *qw, const int8_t *qx) {
  int32_t s = 0;
  for (int j = 0; j < 32; j++) s += qw[j] * qx[j];
  return s;
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
    float acc[8] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
    for (int64_t b = 0; b < nblk; b++) {
      const uint8_t *blk = row + b * bnb;
      const int32_t isum = type == SS_DTYPE_Q8_0
                               ? idot_q8((const int8_t *)blk + 2, qt + 32 * b)
                               : idot_q4(blk + (type == SS_DTYPE_Q4_1 ? 4 : 2), qt + 32 * b);
      acc[b & 7] += ssq_q8_block_value(type, blk, dt[b], isum, st[b]);
    }
    if (nblk & 7)
      for (int l = (int)(nblk & 7); l < 8; l++) acc[l] += 0.0f;
    y[t * ldy] = ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]));
  }
}
#endif

/* ---- attention ----------------------------------------------------------- */

static float k_dot(const float *a, const float *b, int n) {
  v16 acc = v_zero();
  int i = 0;
  for (; i + 16 <= n; i += 16) acc = v_fma(v_load(a + i), v_load(b + i), acc);
  if (i < n) acc = v_fma(load_x_tail(a + i, n - i), load_x_tail(b + i, n - i), acc);
  return v_hsum(acc);
}

static void k_wsum(const float *e, const float *const *rows, int n, int dim, float *out) {
  int d = 0;
  for (; d + 16 <= dim; d += 16) {
    v16 acc = v_zero();
    for (int i = 0; i < n; i++) acc = v_fma(v_set1(e[i]), v_load(rows[i] + d), acc);
    v_store(out + d, acc);
  }
  for (; d < dim; d++) {
    float acc = 0.0f;
    for (int i = 0; i < n; i++) acc = s_fma(e[i], rows[i][d], acc);
    out[d] = acc;
  }
}

const ss_cpu_kernels KERN_TABLE = {
    .isa = KERN_ISA,
    .name = KERN_NAME,
    .row_dot = k_row_dot,
    .row_dot_q8 = k_row_dot_q8,
    .dot = k_dot,
    .wsum = k_wsum,
};
