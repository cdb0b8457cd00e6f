#include "runtime/base/dtype.h"

#include "runtime/base/quant_unpack.h"

#include <math.h>
#include <string.h>

/* Block sizes follow ggml's type table (GGML_QUANT_SIZES in the gguf package). */
static const ss_dtype_info k_info[SS_DTYPE_COUNT_] = {
    [SS_DTYPE_F32] = {"F32", 1, 4, true},
    [SS_DTYPE_F16] = {"F16", 1, 2, true},
    [SS_DTYPE_Q4_0] = {"Q4_0", 32, 18, true},
    [SS_DTYPE_Q4_1] = {"Q4_1", 32, 20, true},
    [SS_DTYPE_Q5_0] = {"Q5_0", 32, 22, true},
    [SS_DTYPE_Q5_1] = {"Q5_1", 32, 24, true},
    [SS_DTYPE_Q8_0] = {"Q8_0", 32, 34, true},
    [SS_DTYPE_Q8_1] = {"Q8_1", 32, 36, false},
    [SS_DTYPE_Q2_K] = {"Q2_K", 256, 84, true},
    [SS_DTYPE_Q3_K] = {"Q3_K", 256, 110, true},
    [SS_DTYPE_Q4_K] = {"Q4_K", 256, 144, true},
    [SS_DTYPE_Q5_K] = {"Q5_K", 256, 176, true},
    [SS_DTYPE_Q6_K] = {"Q6_K", 256, 210, true},
    [SS_DTYPE_Q8_K] = {"Q8_K", 256, 292, true},
    [SS_DTYPE_I8] = {"I8", 1, 1, false},
    [SS_DTYPE_I16] = {"I16", 1, 2, false},
    [SS_DTYPE_I32] = {"I32", 1, 4, false},
    [SS_DTYPE_I64] = {"I64", 1, 8, false},
    [SS_DTYPE_F64] = {"F64", 1, 8, false},
    [SS_DTYPE_BF16] = {"BF16", 1, 2, true},
    [SS_DTYPE_F8_E4M3] = {"F8_E4M3", 1, 1, true},
};

const ss_dtype_info *ss_dtype_get(uint32_t type) {
  if (type >= SS_DTYPE_COUNT_ || k_info[type].name == NULL) return NULL;
  return &k_info[type];
}

const char *ss_dtype_name(uint32_t type) {
  const ss_dtype_info *ti = ss_dtype_get(type);
  return ti ? ti->name : "unknown";
}

bool ss_dtype_has_min(ss_dtype type) {
  return type == SS_DTYPE_Q4_1 || type == SS_DTYPE_Q5_1 || type == SS_DTYPE_Q2_K ||
         type == SS_DTYPE_Q4_K || type == SS_DTYPE_Q5_K;
}

float ss_f16_to_f32(uint16_t h) {
  uint32_t sign = (uint32_t)(h >> 15) << 31;
  uint32_t exp = (h >> 10) & 0x1f;
  uint32_t man = h & 0x3ff;
  uint32_t bits;
  if (exp == 0) {
    if (man == 0) {
      bits = sign;
    } else { /* subnormal: value = man * 2^-24 */
      float f = ldexpf((float)man, -24);
      memcpy(&bits, &f, 4);
      bits |= sign;
    }
  } else if (exp == 31) {
    bits = sign | 0x7f800000u | (man << 13);
  } else {
    bits = sign | ((exp + 112) << 23) | (man << 13);
  }
  float f;
  memcpy(&f, &bits, 4);
  return f;
}

uint16_t ss_f32_to_f16(float f) {
  /* Round to nearest even, with overflow to inf and gradual underflow. */
  uint32_t x;
  memcpy(&x, &f, 4);
  uint32_t sign = (x >> 16) & 0x8000;
  uint32_t absx = x & 0x7fffffffu;
  if (absx > 0x7f800000u) return (uint16_t)(sign | 0x7e00); /* NaN */
  if (absx >= 0x477ff000u) return (uint16_t)(sign | 0x7c00); /* rounds to inf */
  if (absx < 0x38800000u) {                                  /* subnormal or zero */
    float a;
    memcpy(&a, &absx, 4);
    float s = a * 16777216.0f; /* 2^24: units of the smallest subnormal */
    uint32_t q = (uint32_t)nearbyintf(s);
    return (uint16_t)(sign | q);
  }
  uint32_t exp = (absx >> 23) - 112;
  uint32_t man = absx & 0x7fffff;
  uint32_t h = (exp << 10) | (man >> 13);
  uint32_t rem = man & 0x1fff;
  if (rem > 0x1000 || (rem == 0x1000 && (h & 1))) h++;
  return (uint16_t)(sign | h);
}

float ss_bf16_to_f32(uint16_t h) {
  uint32_t bits = (uint32_t)h << 16;
  float f;
  memcpy(&f, &bits, 4);
  return f;
}

uint16_t ss_f32_to_bf16(float f) {
  uint32_t x;
  memcpy(&x, &f, 4);
  if ((x & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((x >> 16) | 0x40);
  x += 0x7fff + ((x >> 16) & 1);
  return (uint16_t)(x >> 16);
}

uint8_t ss_f32_to_f8e4m3(float f) {
  uint32_t x;
  memcpy(&x, &f, 4);
  const uint8_t sign = (uint8_t)((x >> 24) & 0x80);
  uint32_t absx = x & 0x7fffffffu;
  if (absx > 0x7f800000u) return (uint8_t)(sign | 0x7f);
  if (absx >= 0x43e00000u) return (uint8_t)(sign | 0x7e); /* >= 448: saturate */
  if (absx < 0x3c800000u) {                               /* below 2^-6: subnormal */
    float a;
    memcpy(&a, &absx, 4);
    /* Units of the smallest subnormal 2^-9; q = 8 is the smallest normal. */
    return (uint8_t)(sign | (uint32_t)nearbyintf(a * 512.0f));
  }
  /* Keep 3 of the 23 mantissa bits, to nearest even; a carry moves into the
   * exponent, and nothing below 448 rounds past it. */
  absx += 0x7ffffu + ((absx >> 20) & 1);
  const uint32_t e = (absx >> 23) - 127 + 7, m = (absx >> 20) & 7;
  return (uint8_t)(sign | (e << 3) | m);
}

float ss_f8e4m3_to_f32(uint8_t b) {
  const int e = (b >> 3) & 0xf, m = b & 7;
  if (e == 15 && m == 7) return NAN;
  /* Subnormals (e = 0) are m/8 * 2^-6; normals (1 + m/8) * 2^(e-7). */
  float v = e == 0 ? ldexpf((float)m, -9) : ldexpf((float)(8 + m), e - 10);
  return (b & 0x80) ? -v : v;
}

void ss_dequantize_row(ss_dtype type, const void *src, float *dst, int64_t count) {
  switch (type) {
  case SS_DTYPE_F32:
    memcpy(dst, src, (size_t)count * 4);
    break;
  case SS_DTYPE_F16: {
    const uint16_t *s = src;
    for (int64_t i = 0; i < count; i++) dst[i] = ss_f16_to_f32(s[i]);
    break;
  }
  case SS_DTYPE_BF16: {
    const uint16_t *s = src;
    for (int64_t i = 0; i < count; i++) dst[i] = ss_bf16_to_f32(s[i]);
    break;
  }
  case SS_DTYPE_F8_E4M3: {
    const uint8_t *s = src;
    for (int64_t i = 0; i < count; i++) dst[i] = ss_f8e4m3_to_f32(s[i]);
    break;
  }
  case SS_DTYPE_Q4_0: {
    const ss_block_q4_0 *b = src;
    for (int64_t i = 0; i < count / SS_QK; i++) {
      float d = ss_f16_to_f32(b[i].d);
      for (int j = 0; j < SS_QK / 2; j++) {
        dst[i * SS_QK + j] = d * (float)((b[i].qs[j] & 0x0f) - 8);
        dst[i * SS_QK + j + SS_QK / 2] = d * (float)((b[i].qs[j] >> 4) - 8);
      }
    }
    break;
  }
  case SS_DTYPE_Q4_1: {
    const ss_block_q4_1 *b = src;
    for (int64_t i = 0; i < count / SS_QK; i++) {
      float d = ss_f16_to_f32(b[i].d), m = ss_f16_to_f32(b[i].m);
      for (int j = 0; j < SS_QK / 2; j++) {
        dst[i * SS_QK + j] = d * (float)(b[i].qs[j] & 0x0f) + m;
        dst[i * SS_QK + j + SS_QK / 2] = d * (float)(b[i].qs[j] >> 4) + m;
      }
    }
    break;
  }
  case SS_DTYPE_Q8_0: {
    const ss_block_q8_0 *b = src;
    for (int64_t i = 0; i < count / SS_QK; i++) {
      float d = ss_f16_to_f32(b[i].d);
      for (int j = 0; j < SS_QK; j++) dst[i * SS_QK + j] = d * (float)b[i].qs[j];
    }
    break;
  }
  case SS_DTYPE_Q5_0:
  case SS_DTYPE_Q5_1:
  case SS_DTYPE_Q2_K:
  case SS_DTYPE_Q3_K:
  case SS_DTYPE_Q4_K:
  case SS_DTYPE_Q5_K:
  case SS_DTYPE_Q6_K:
  case SS_DTYPE_Q8_K: {
    const ss_dtype_info *ti = ss_dtype_get(type);
    const bool has_min = ss_dtype_has_min(type);
    int8_t q[SS_QK_K];
    float sc[SS_QK_K / 16], mn[SS_QK_K / 16];
    for (int64_t i = 0; i < count / ti->block_count; i++) {
      ssq_unpack(type, (const uint8_t *)src + (size_t)i * ti->block_nbytes, q, sc, mn);
      float *o = dst + i * ti->block_count;
      for (uint32_t e = 0; e < ti->block_count; e++)
        o[e] = has_min ? sc[e / 16] * (float)q[e] + mn[e / 16] : sc[e / 16] * (float)q[e];
    }
    break;
  }
  default: /* callers check ss_dtype_info.compute first */
    for (int64_t i = 0; i < count; i++) dst[i] = NAN;
    break;
  }
}

bool ss_quantize_row(ss_dtype type, const float *src, void *dst, int64_t count) {
  switch (type) {
  case SS_DTYPE_F32:
    memcpy(dst, src, (size_t)count * 4);
    return true;
  case SS_DTYPE_F16: {
    uint16_t *d = dst;
    for (int64_t i = 0; i < count; i++) d[i] = ss_f32_to_f16(src[i]);
    return true;
  }
  case SS_DTYPE_BF16: {
    uint16_t *d = dst;
    for (int64_t i = 0; i < count; i++) d[i] = ss_f32_to_bf16(src[i]);
    return true;
  }
  case SS_DTYPE_Q8_0: {
    ss_block_q8_0 *b = dst;
    for (int64_t i = 0; i < count / SS_QK; i++) {
      const float *x = src + i * SS_QK;
      float amax = 0.0f;
      for (int j = 0; j < SS_QK; j++) amax = fmaxf(amax, fabsf(x[j]));
      const float d = amax / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
      b[i].d = ss_f32_to_f16(d);
      for (int j = 0; j < SS_QK; j++) b[i].qs[j] = (int8_t)roundf(x[j] * id);
    }
    return true;
  }
  case SS_DTYPE_Q4_0: {
    ss_block_q4_0 *b = dst;
    for (int64_t i = 0; i < count / SS_QK; i++) {
      const float *x = src + i * SS_QK;
      float amax = 0.0f, max = 0.0f;
      for (int j = 0; j < SS_QK; j++)
        if (fabsf(x[j]) > amax) {
          amax = fabsf(x[j]);
          max = x[j];
        }
      const float d = max / -8.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
      b[i].d = ss_f32_to_f16(d);
      for (int j = 0; j < SS_QK / 2; j++) {
        int q0 = (int)(x[j] * id + 8.5f), q1 = (int)(x[j + SS_QK / 2] * id + 8.5f);
        q0 = q0 < 15 ? q0 : 15;
        q1 = q1 < 15 ? q1 : 15;
        b[i].qs[j] = (uint8_t)(q0 | (q1 << 4));
      }
    }
    return true;
  }
  case SS_DTYPE_Q4_1: {
    ss_block_q4_1 *b = dst;
    for (int64_t i = 0; i < count / SS_QK; i++) {
      const float *x = src + i * SS_QK;
      float min = x[0], max = x[0];
      for (int j = 1; j < SS_QK; j++) {
        min = fminf(min, x[j]);
        max = fmaxf(max, x[j]);
      }
      const float d = (max - min) / 15.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
      b[i].d = ss_f32_to_f16(d);
      b[i].m = ss_f32_to_f16(min);
      for (int j = 0; j < SS_QK / 2; j++) {
        int q0 = (int)((x[j] - min) * id + 0.5f), q1 = (int)((x[j + SS_QK / 2] - min) * id + 0.5f);
        q0 = q0 < 15 ? q0 : 15;
        q1 = q1 < 15 ? q1 : 15;
        b[i].qs[j] = (uint8_t)(q0 | (q1 << 4));
      }
    }
    return true;
  }
  default:
    return false;
  }
}
