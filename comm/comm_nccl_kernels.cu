// The NCCL backend's deterministic all-reduce: after an all-gather of every
// rank's vector, each element is summed in rank order by one thread.  n reads
// per element: fine for the activation sizes of tensor parallelism, and the
// price of a result that does not depend on NCCL's choice of algorithm.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "comm/comm_nccl_kernels.h"

namespace {

// ss_dtype ids (runtime/base/dtype.h, which is C only): the GGUF type numbers.
enum { DTYPE_F32 = 0, DTYPE_F16 = 1, DTYPE_BF16 = 30 };

__device__ __forceinline__ float load(const float *p, size_t i) { return p[i]; }
__device__ __forceinline__ float load(const __half *p, size_t i) { return __half2float(p[i]); }
__device__ __forceinline__ float load(const __nv_bfloat16 *p, size_t i) {
  return __bfloat162float(p[i]);
}
__device__ __forceinline__ void store(float *p, size_t i, float v) { p[i] = v; }
__device__ __forceinline__ void store(__half *p, size_t i, float v) { p[i] = __float2half_rn(v); }
__device__ __forceinline__ void store(__nv_bfloat16 *p, size_t i, float v) {
  p[i] = __float2bfloat16_rn(v);
}

template <typename T>
__global__ void ordered_sum(const T *parts, int n, size_t count, T *out) {
  size_t stride = (size_t)gridDim.x * blockDim.x;
  for (size_t k = (size_t)blockIdx.x * blockDim.x + threadIdx.x; k < count; k += stride) {
    float acc = load(parts, k);
    // __fadd_rn: never contracted or reassociated, so the fold is exactly
    // (((p0 + p1) + p2) + ...) as on the CPU.
    for (int i = 1; i < n; i++) acc = __fadd_rn(acc, load(parts, (size_t)i * count + k));
    store(out, k, acc);
  }
}

template <typename T>
int launch(const void *parts, int n, size_t count, void *out, cudaStream_t stream) {
  if (count == 0) return cudaSuccess;
  const int threads = 256;
  size_t blocks = (count + threads - 1) / threads;
  if (blocks > 65535) blocks = 65535;  // grid-stride loop covers the rest
  ordered_sum<T><<<(unsigned)blocks, threads, 0, stream>>>(static_cast<const T *>(parts), n, count,
                                                           static_cast<T *>(out));
  return (int)cudaGetLastError();
}

}  // namespace

extern "C" int ss_comm_nccl_ordered_sum(const void *parts, int n, size_t count, int type,
                                        void *out, cudaStream_t stream) {
  switch (type) {
  case DTYPE_F32: return launch<float>(parts, n, count, out, stream);
  case DTYPE_F16: return launch<__half>(parts, n, count, out, stream);
  case DTYPE_BF16: return launch<__nv_bfloat16>(parts, n, count, out, stream);
  default: return (int)cudaErrorInvalidValue;
  }
}
