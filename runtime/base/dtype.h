/* Tensor element types.  The numeric values are the ggml/GGUF type ids, so a
 * type read from a GGUF file can be used directly after ss_dtype_info() accepts
 * it. */
#ifndef SS_DTYPE_H
#define SS_DTYPE_H

#include <stdbool.h>
#include <stdint.h>

typedef enum ss_dtype {
  SS_DTYPE_F32 = 0,
  SS_DTYPE_F16 = 1,
  SS_DTYPE_Q4_0 = 2,
  SS_DTYPE_Q4_1 = 3,
  SS_DTYPE_Q5_0 = 6,
  SS_DTYPE_Q5_1 = 7,
  SS_DTYPE_Q8_0 = 8,
  SS_DTYPE_Q8_1 = 9,
  SS_DTYPE_Q2_K = 10,
  SS_DTYPE_Q3_K = 11,
  SS_DTYPE_Q4_K = 12,
  SS_DTYPE_Q5_K = 13,
  SS_DTYPE_Q6_K = 14,
  SS_DTYPE_Q8_K = 15,
  SS_DTYPE_I8 = 24,
  SS_DTYPE_I16 = 25,
  SS_DTYPE_I32 = 26,
  SS_DTYPE_I64 = 27,
  SS_DTYPE_F64 = 28,
  SS_DTYPE_BF16 = 30,
  /* Not a ggml/GGUF id (those end below 40): FP8 e4m3fn as safetensors stores
   * it ("F8_E4M3": 1 sign, 4 exponent bits with bias 7, 3 mantissa bits, no
   * infinities).  The GGUF reader refuses it. */
  SS_DTYPE_F8_E4M3 = 60,
  SS_DTYPE_COUNT_ = 64 /* upper bound on ids we look up */
} ss_dtype;

typedef struct ss_dtype_info {
  const char *name;
  uint32_t block_count; /* elements per block (1 for plain types) */
  uint32_t block_nbytes;  /* bytes per block */
  bool compute;         /* our kernels can multiply with it */
} ss_dtype_info;

/* NULL for an id we do not know the layout of. */
const ss_dtype_info *ss_dtype_get(uint32_t type);
const char *ss_dtype_name(uint32_t type);

/* Block layouts (ggml's, little-endian, packed).  f16 scales are raw bits. */
#define SS_QK 32
typedef struct { uint16_t d; uint8_t qs[SS_QK / 2]; } ss_block_q4_0;          /* w = d*(q-8) */
typedef struct { uint16_t d, m; uint8_t qs[SS_QK / 2]; } ss_block_q4_1;       /* w = d*q + m */
typedef struct { uint16_t d; int8_t qs[SS_QK]; } ss_block_q8_0;               /* w = d*q */
_Static_assert(sizeof(ss_block_q4_0) == 18, "q4_0 block");
_Static_assert(sizeof(ss_block_q4_1) == 20, "q4_1 block");
_Static_assert(sizeof(ss_block_q8_0) == 34, "q8_0 block");

/* Q5_0: d (f16), qh (32 high bits, little-endian), qs[16]; w = d*(q-16).
 * Q5_1: d, m (f16), qh, qs[16]; w = d*q + m.  q = low nibble (elements 0-15) or
 * high nibble (16-31) of qs, plus 16 * bit e of qh. */
#define SS_QK_K 256
/* K-quants: super-blocks of 256 elements (ggml's layouts, byte offsets):
 *   Q2_K (84):  scales[16] @0, qs[64] @16, d @80, dmin @82
 *   Q3_K (110): hmask[32] @0, qs[64] @32, scales[12] @96, d @108
 *   Q4_K (144): d @0, dmin @2, scales[12] @4, qs[128] @16
 *   Q5_K (176): d @0, dmin @2, scales[12] @4, qh[32] @16, qs[128] @48
 *   Q6_K (210): ql[128] @0, qh[64] @128, scales[16] (int8) @192, d @208
 *   Q8_K (292): d (f32) @0, qs[256] (int8) @4, bsums[16] (int16) @260
 * kernels/quant_unpack.h gives each element's integer q and each 16-element
 * group's scale and offset, so that element e of the block is
 * sc[e/16] * q[e] + mn[e/16] (the rounding of ggml's dequantizers: one f32
 * product, then the offset). */

/* Whether the type's elements carry an additive per-group offset (mn != 0). */
bool ss_dtype_has_min(ss_dtype type);

/* Scalar half/bfloat conversions (exact; used by reference paths and tables). */
float ss_f16_to_f32(uint16_t h);
uint16_t ss_f32_to_f16(float f);
float ss_bf16_to_f32(uint16_t h);
uint16_t ss_f32_to_bf16(float f);
/* FP8 e4m3fn to f32 (exact).  0x7f / 0xff are NaN. */
float ss_f8e4m3_to_f32(uint8_t b);
/* f32 to FP8 e4m3fn, rounded to nearest even; magnitudes above the largest
 * finite value 448 saturate to +-448 (the type has no infinity), NaN gives 0x7f
 * with the sign. */
uint8_t ss_f32_to_f8e4m3(float f);

/* Quantizes `count` elements (a multiple of the block count) of f32 into a row
 * of `type` (F32, F16, BF16, Q8_0, Q4_0, Q4_1) the way ggml's reference
 * quantizers do: Q8_0 d = max|x|/127, q = round(x/d); Q4_0 d = x_max/-8 where
 * x_max is the element of largest magnitude, q = min(15, (int)(x/d + 8.5));
 * Q4_1 d = (max - min)/15, m = min, q = min(15, (int)((x - m)/d + 0.5)).
 * (K-quant files come from ggml's own quantizers, not from here.)
 * Returns false for a type it cannot write. */
bool ss_quantize_row(ss_dtype type, const float *src, void *dst, int64_t count);

/* Dequantizes `count` elements (a multiple of the block count) of a row of
 * `type` into f32.  Reference path, not the hot path. */
void ss_dequantize_row(ss_dtype type, const void *src, float *dst, int64_t count);

#endif
