// Device-side views of the weight types (layouts in runtime/base/dtype.h: ggml's
// blocks of 32, f16 scales as raw bits).  Blocks are only 2-byte aligned
// (18, 20 and 34 bytes), so they are read in 16-bit pieces.
#ifndef SS_CUDA_QUANT_CUH
#define SS_CUDA_QUANT_CUH

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

// ss_dtype ids (runtime/base/dtype.h is C only): the GGUF type numbers.
enum {
  SS_CU_F32 = 0,
  SS_CU_F16 = 1,
  SS_CU_Q4_0 = 2,
  SS_CU_Q4_1 = 3,
  SS_CU_Q8_0 = 8,
  SS_CU_BF16 = 30,
};

constexpr int kQK = 32;
constexpr int kQ40Bytes = 18, kQ41Bytes = 20, kQ80Bytes = 34;

__device__ __forceinline__ float ss_h2f(uint16_t h) {
  return __half2float(__ushort_as_half(h));
}
__device__ __forceinline__ float ss_bf2f(uint16_t h) { return __uint_as_float((uint32_t)h << 16); }

__device__ __forceinline__ uint16_t ss_ld16(const uint8_t *p) {
  return *reinterpret_cast<const uint16_t *>(p);
}

// Element c of a row of `type` (a reference path: embedding rows, dequantize
// to bf16 for the tensor-core GEMM).
__device__ __forceinline__ float ss_dequant_one(int type, const uint8_t *row, int64_t c) {
  switch (type) {
  case SS_CU_F32: return reinterpret_cast<const float *>(row)[c];
  case SS_CU_F16: return ss_h2f(reinterpret_cast<const uint16_t *>(row)[c]);
  case SS_CU_BF16: return ss_bf2f(reinterpret_cast<const uint16_t *>(row)[c]);
  case SS_CU_Q8_0: {
    const uint8_t *b = row + (c / kQK) * kQ80Bytes;
    return ss_h2f(ss_ld16(b)) * (float)(int8_t)b[2 + c % kQK];
  }
  case SS_CU_Q4_0: {
    const uint8_t *b = row + (c / kQK) * kQ40Bytes;
    const int j = (int)(c % kQK);
    const uint8_t q = b[2 + (j & 15)];
    const int v = (j < 16 ? (q & 0x0f) : (q >> 4)) - 8;
    return ss_h2f(ss_ld16(b)) * (float)v;
  }
  case SS_CU_Q4_1: {
    const uint8_t *b = row + (c / kQK) * kQ41Bytes;
    const int j = (int)(c % kQK);
    const uint8_t q = b[4 + (j & 15)];
    const int v = j < 16 ? (q & 0x0f) : (q >> 4);
    // d*q + m as the CPU's reference dequantizer rounds it: product, then sum.
    return __fadd_rn(__fmul_rn(ss_h2f(ss_ld16(b)), (float)v), ss_h2f(ss_ld16(b + 2)));
  }
  default: return __int_as_float(0x7fc00000);  // NaN: a type the host should have refused
  }
}

#endif
