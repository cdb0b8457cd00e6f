// Matrix-vector products y = W x for small batches (decode), with W in its
// stored type dequantized in registers, never expanded in memory; and the
// conversions the host wrapper needs to hand larger batches to cuBLAS.
//
// One warp per output row.  Lane l walks the row's units l, l + 32, l + 64, ...
// (a unit is 16 bytes of f32/f16/bf16 weights, or one 32-element quantized
// block), 16-byte loads coalesced across the warp, accumulating each token in
// its own register with fmaf in element order; the 32 lane sums are then
// folded by a fixed butterfly.  A (row, token) result is therefore the same
// sequence of operations whatever the batch: tokens are processed NT at a
// time, but never mixed.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include "kernels/cuda/cuda_internal.h"
#include "kernels/cuda/quant.cuh"

namespace {

constexpr int kWarps = 4;  // rows per block

__device__ __forceinline__ float4 ldx4(const float *p) {
  return __ldg(reinterpret_cast<const float4 *>(p));
}

__device__ __forceinline__ float warp_sum(float v) {
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

// 8 weights of a 16-bit row as floats.
template <int TYPE>
__device__ __forceinline__ void unpack8(uint4 u, float w[8]) {
  const uint32_t v[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
  for (int i = 0; i < 4; i++) {
    const uint16_t lo = (uint16_t)(v[i] & 0xffff), hi = (uint16_t)(v[i] >> 16);
    if (TYPE == SS_CU_F16) {
      w[2 * i] = ss_h2f(lo);
      w[2 * i + 1] = ss_h2f(hi);
    } else {
      w[2 * i] = ss_bf2f(lo);
      w[2 * i + 1] = ss_bf2f(hi);
    }
  }
}

// Accumulates lane `lane`'s share of row . x[t] for t < nt into acc[t].
// vec: the row and x allow 16-byte accesses (cols a multiple of 8, aligned).
template <int TYPE, int NT>
__device__ __forceinline__ void row_dot(const uint8_t *row, int64_t cols, const float *x, int nt,
                                        int lane, bool vec, float acc[NT]) {
  if (TYPE == SS_CU_F32 || TYPE == SS_CU_F16 || TYPE == SS_CU_BF16) {
    if (!vec) {  // odd widths: one element per lane per step
      for (int64_t c = lane; c < cols; c += 32) {
        const float wv = ss_dequant_one(TYPE, row, c);
#pragma unroll
        for (int t = 0; t < NT; t++)
          if (t < nt) acc[t] = fmaf(wv, x[(int64_t)t * cols + c], acc[t]);
      }
      return;
    }
    const int64_t units = TYPE == SS_CU_F32 ? cols / 4 : cols / 8;
    const uint4 *wu = reinterpret_cast<const uint4 *>(row);
#pragma unroll 4
    for (int64_t u = lane; u < units; u += 32) {
      const uint4 raw = __ldg(wu + u);
      if (TYPE == SS_CU_F32) {
        const float w0 = __uint_as_float(raw.x), w1 = __uint_as_float(raw.y),
                    w2 = __uint_as_float(raw.z), w3 = __uint_as_float(raw.w);
#pragma unroll
        for (int t = 0; t < NT; t++) {
          if (t >= nt) break;
          const float4 xv = ldx4(x + (int64_t)t * cols + u * 4);
          float a = acc[t];
          a = fmaf(w0, xv.x, a);
          a = fmaf(w1, xv.y, a);
          a = fmaf(w2, xv.z, a);
          a = fmaf(w3, xv.w, a);
          acc[t] = a;
        }
      } else {
        float w[8];
        unpack8<TYPE>(raw, w);
#pragma unroll
        for (int t = 0; t < NT; t++) {
          if (t >= nt) break;
          const float *xp = x + (int64_t)t * cols + u * 8;
          const float4 x0 = ldx4(xp), x1 = ldx4(xp + 4);
          float a = acc[t];
          a = fmaf(w[0], x0.x, a);
          a = fmaf(w[1], x0.y, a);
          a = fmaf(w[2], x0.z, a);
          a = fmaf(w[3], x0.w, a);
          a = fmaf(w[4], x1.x, a);
          a = fmaf(w[5], x1.y, a);
          a = fmaf(w[6], x1.z, a);
          a = fmaf(w[7], x1.w, a);
          acc[t] = a;
        }
      }
    }
    return;
  }
  // Quantized: one 32-element block per lane per step.
  const int64_t nb = cols / kQK;
  const int bnb = TYPE == SS_CU_Q8_0 ? kQ80Bytes : TYPE == SS_CU_Q4_1 ? kQ41Bytes : kQ40Bytes;
#pragma unroll 2
  for (int64_t b = lane; b < nb; b += 32) {
    const uint8_t *blk = row + b * bnb;
    const float d = ss_h2f(ss_ld16(blk));
    float q[kQK];
    float m = 0.0f;
    if (TYPE == SS_CU_Q8_0) {
      const uint16_t *qs = reinterpret_cast<const uint16_t *>(blk + 2);
#pragma unroll
      for (int j = 0; j < 16; j++) {
        const uint16_t v = __ldg(qs + j);
        q[2 * j] = (float)(int8_t)(v & 0xff);
        q[2 * j + 1] = (float)(int8_t)(v >> 8);
      }
    } else {
      const int off = TYPE == SS_CU_Q4_1 ? 4 : 2;
      if (TYPE == SS_CU_Q4_1) m = ss_h2f(ss_ld16(blk + 2));
      const uint16_t *qs = reinterpret_cast<const uint16_t *>(blk + off);
      const float bias = TYPE == SS_CU_Q4_0 ? 8.0f : 0.0f;
#pragma unroll
      for (int j = 0; j < 8; j++) {
        const uint16_t v = __ldg(qs + j);
        const uint8_t b0 = (uint8_t)(v & 0xff), b1 = (uint8_t)(v >> 8);
        q[2 * j] = (float)(b0 & 0x0f) - bias;
        q[2 * j + 1] = (float)(b1 & 0x0f) - bias;
        q[2 * j + 16] = (float)(b0 >> 4) - bias;
        q[2 * j + 17] = (float)(b1 >> 4) - bias;
      }
    }
#pragma unroll
    for (int t = 0; t < NT; t++) {
      if (t >= nt) break;
      const float *xp = x + (int64_t)t * cols + b * kQK;
      float s = 0.0f, xs = 0.0f;
#pragma unroll
      for (int j = 0; j < kQK; j += 4) {
        const float4 xv = ldx4(xp + j);
        s = fmaf(q[j], xv.x, s);
        s = fmaf(q[j + 1], xv.y, s);
        s = fmaf(q[j + 2], xv.z, s);
        s = fmaf(q[j + 3], xv.w, s);
        if (TYPE == SS_CU_Q4_1) xs = xs + xv.x + xv.y + xv.z + xv.w;
      }
      float a = fmaf(d, s, acc[t]);
      if (TYPE == SS_CU_Q4_1) a = fmaf(m, xs, a);
      acc[t] = a;
    }
  }
}

template <int TYPE, int NT>
__global__ void __launch_bounds__(kWarps * 32)
    gemv_kernel(const uint8_t *w, size_t row_nbytes, int64_t rows, int64_t cols, const float *x,
                int64_t n, float *y, bool vec) {
  const int lane = threadIdx.x & 31;
  const int64_t r = (int64_t)blockIdx.x * kWarps + (threadIdx.x >> 5);
  if (r >= rows) return;
  const uint8_t *row = w + (size_t)r * row_nbytes;
  for (int64_t t0 = 0; t0 < n; t0 += NT) {
    const int nt = (int)(n - t0 < NT ? n - t0 : NT);
    float acc[NT];
#pragma unroll
    for (int t = 0; t < NT; t++) acc[t] = 0.0f;
    row_dot<TYPE, NT>(row, cols, x + t0 * cols, nt, lane, vec, acc);
#pragma unroll
    for (int t = 0; t < NT; t++) {
      if (t >= nt) break;
      const float v = warp_sum(acc[t]);
      if (lane == 0) y[(t0 + t) * rows + r] = v;
    }
  }
}

template <int TYPE>
int launch_gemv_t(const void *w, size_t row_nbytes, int64_t rows, int64_t cols, const float *x,
                  int64_t n, float *y, cudaStream_t stream) {
  const unsigned blocks = (unsigned)((rows + kWarps - 1) / kWarps);
  const bool vec = (TYPE == SS_CU_F32 ? cols % 4 == 0 : cols % 8 == 0) &&
                   ((uintptr_t)w % 16 == 0) && row_nbytes % 16 == 0 && ((uintptr_t)x % 16 == 0);
  const uint8_t *wb = static_cast<const uint8_t *>(w);
  if (n >= 8)
    gemv_kernel<TYPE, 8><<<blocks, kWarps * 32, 0, stream>>>(wb, row_nbytes, rows, cols, x, n, y, vec);
  else if (n >= 3)
    gemv_kernel<TYPE, 4><<<blocks, kWarps * 32, 0, stream>>>(wb, row_nbytes, rows, cols, x, n, y, vec);
  else if (n == 2)
    gemv_kernel<TYPE, 2><<<blocks, kWarps * 32, 0, stream>>>(wb, row_nbytes, rows, cols, x, n, y, vec);
  else
    gemv_kernel<TYPE, 1><<<blocks, kWarps * 32, 0, stream>>>(wb, row_nbytes, rows, cols, x, n, y, vec);
  return (int)cudaGetLastError();
}

__global__ void convert_kernel(const float *x, int64_t count, void *out, int to_bf16) {
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < count;
       i += (int64_t)gridDim.x * blockDim.x) {
    if (to_bf16) static_cast<__nv_bfloat16 *>(out)[i] = __float2bfloat16_rn(x[i]);
    else static_cast<__half *>(out)[i] = __float2half_rn(x[i]);
  }
}

__global__ void dequant_bf16_kernel(int type, const uint8_t *w, size_t row_nbytes, int64_t r0,
                                    int64_t nrows, int64_t cols, __nv_bfloat16 *out) {
  const int64_t total = nrows * cols;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total;
       i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t r = i / cols, c = i % cols;
    out[i] = __float2bfloat16_rn(ss_dequant_one(type, w + (size_t)(r0 + r) * row_nbytes, c));
  }
}

unsigned grid_for(int64_t count) {
  int64_t b = (count + 255) / 256;
  return (unsigned)(b < 1 ? 1 : b > 65535 * 8 ? 65535 * 8 : b);
}

}  // namespace

extern "C" int ss_cuda_launch_gemv(int type, const void *w, size_t row_nbytes, int64_t rows,
                                   int64_t cols, const float *x, int64_t n, float *y,
                                   cudaStream_t stream) {
  if (n <= 0 || rows <= 0) return 0;
  switch (type) {
  case SS_CU_F32: return launch_gemv_t<SS_CU_F32>(w, row_nbytes, rows, cols, x, n, y, stream);
  case SS_CU_F16: return launch_gemv_t<SS_CU_F16>(w, row_nbytes, rows, cols, x, n, y, stream);
  case SS_CU_BF16: return launch_gemv_t<SS_CU_BF16>(w, row_nbytes, rows, cols, x, n, y, stream);
  case SS_CU_Q8_0: return launch_gemv_t<SS_CU_Q8_0>(w, row_nbytes, rows, cols, x, n, y, stream);
  case SS_CU_Q4_0: return launch_gemv_t<SS_CU_Q4_0>(w, row_nbytes, rows, cols, x, n, y, stream);
  case SS_CU_Q4_1: return launch_gemv_t<SS_CU_Q4_1>(w, row_nbytes, rows, cols, x, n, y, stream);
  default: return (int)cudaErrorInvalidValue;
  }
}

extern "C" int ss_cuda_launch_convert(const float *x, int64_t count, void *out, int to_bf16,
                                      cudaStream_t stream) {
  if (count <= 0) return 0;
  convert_kernel<<<grid_for(count), 256, 0, stream>>>(x, count, out, to_bf16);
  return (int)cudaGetLastError();
}

extern "C" int ss_cuda_launch_dequant_bf16(int type, const void *w, size_t row_nbytes, int64_t r0,
                                           int64_t nrows, int64_t cols, void *out,
                                           cudaStream_t stream) {
  if (nrows <= 0) return 0;
  dequant_bf16_kernel<<<grid_for(nrows * cols), 256, 0, stream>>>(
      type, static_cast<const uint8_t *>(w), row_nbytes, r0, nrows, cols,
      static_cast<__nv_bfloat16 *>(out));
  return (int)cudaGetLastError();
}
