/* AArch64 Advanced SIMD kernels: the 16 virtual lanes as four 4-float
 * registers (lanes 0-3, 4-7, 8-11, 12-15). */
#if defined(__aarch64__)
#include <arm_neon.h>
#include <math.h>

static inline float neon_h2f(uint16_t h) {
  __fp16 f;
  __builtin_memcpy(&f, &h, 2);
  return (float)f;
}
#define SS_UNPACK_H2F(h) neon_h2f(h)
#include "runtime/base/dtype.h"

typedef struct {
  float32x4_t a[4];
} v16;

static inline v16 v_zero(void) { v16 r; for (int i = 0; i < 4; i++) r.a[i] = vdupq_n_f32(0.0f); return r; }
static inline v16 v_set1(float x) { v16 r; for (int i = 0; i < 4; i++) r.a[i] = vdupq_n_f32(x); return r; }
static inline v16 v_load(const float *p) { v16 r; for (int i = 0; i < 4; i++) r.a[i] = vld1q_f32(p + 4 * i); return r; }
static inline void v_store(float *p, v16 x) { for (int i = 0; i < 4; i++) vst1q_f32(p + 4 * i, x.a[i]); }
static inline v16 v_i8(const int8_t *p) {
  int8x16_t b = vld1q_s8(p);
  int16x8_t lo = vmovl_s8(vget_low_s8(b)), hi = vmovl_s8(vget_high_s8(b));
  v16 r;
  r.a[0] = vcvtq_f32_s32(vmovl_s16(vget_low_s16(lo)));
  r.a[1] = vcvtq_f32_s32(vmovl_s16(vget_high_s16(lo)));
  r.a[2] = vcvtq_f32_s32(vmovl_s16(vget_low_s16(hi)));
  r.a[3] = vcvtq_f32_s32(vmovl_s16(vget_high_s16(hi)));
  return r;
}
static inline v16 v_f16(const uint16_t *p) {
  v16 r;
  for (int i = 0; i < 4; i++) r.a[i] = vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(p + 4 * i)));
  return r;
}
static inline v16 v_bf16(const uint16_t *p) {
  v16 r;
  for (int i = 0; i < 4; i++) r.a[i] = vreinterpretq_f32_u32(vshll_n_u16(vld1_u16(p + 4 * i), 16));
  return r;
}
static inline v16 v_f8(const uint8_t *p) {
  uint16x8_t b0 = vmovl_u8(vld1_u8(p)), b1 = vmovl_u8(vld1_u8(p + 8));
  uint16x8_t h[2];
  uint16x8_t bs[2] = {b0, b1};
  for (int i = 0; i < 2; i++)
    h[i] = vorrq_u16(vshlq_n_u16(vandq_u16(bs[i], vdupq_n_u16(0x7f)), 7),
                     vshlq_n_u16(vandq_u16(bs[i], vdupq_n_u16(0x80)), 8));
  v16 r;
  const float32x4_t k = vdupq_n_f32(256.0f);
  r.a[0] = vmulq_f32(vcvt_f32_f16(vreinterpret_f16_u16(vget_low_u16(h[0]))), k);
  r.a[1] = vmulq_f32(vcvt_f32_f16(vreinterpret_f16_u16(vget_high_u16(h[0]))), k);
  r.a[2] = vmulq_f32(vcvt_f32_f16(vreinterpret_f16_u16(vget_low_u16(h[1]))), k);
  r.a[3] = vmulq_f32(vcvt_f32_f16(vreinterpret_f16_u16(vget_high_u16(h[1]))), k);
  return r;
}
static inline v16 v_mul(v16 x, v16 y) { for (int i = 0; i < 4; i++) x.a[i] = vmulq_f32(x.a[i], y.a[i]); return x; }
static inline v16 v_add(v16 x, v16 y) { for (int i = 0; i < 4; i++) x.a[i] = vaddq_f32(x.a[i], y.a[i]); return x; }
/* vfmaq_f32(c, a, b) = c + a*b, fused. */
static inline v16 v_fma(v16 x, v16 y, v16 c) { for (int i = 0; i < 4; i++) c.a[i] = vfmaq_f32(c.a[i], x.a[i], y.a[i]); return c; }
static inline float v_hsum(v16 x) {
  float32x4_t h8a = vaddq_f32(x.a[0], x.a[2]); /* h8[0..3] */
  float32x4_t h8b = vaddq_f32(x.a[1], x.a[3]); /* h8[4..7] */
  float32x4_t h4 = vaddq_f32(h8a, h8b);
  float32x2_t h2 = vadd_f32(vget_low_f32(h4), vget_high_f32(h4));
  return vget_lane_f32(h2, 0) + vget_lane_f32(h2, 1);
}
#define s_fma fmaf

#define KERN_NT 2
#define KERN_TABLE ss_cpu_kernels_neon
#define KERN_ISA SS_ISA_NEON
#define KERN_NAME "neon"
#include "kernels/cpu/kern_impl.h"
#endif
