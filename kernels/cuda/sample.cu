// Top-k (and arg-max, k = 1) of each logits row on the device, so that greedy
// and top-k sampling need not bring a whole vocabulary of logits to the host.
//
// Round r finds the largest element that comes strictly after pick r-1 in the
// order (value descending, index ascending): k passes over the row, each a
// block-wide reduction.  k <= 64 passes over an L2-resident row cost less than
// the copy they save, and the result is exact, ties included (lower index
// first, as the CPU sampler sorts).  NaNs are never picked.
#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>

#include "kernels/cuda/cuda_internal.h"

namespace {

constexpr int kThreads = 256;

// (v, i) ranks before (w, j)?
__device__ __forceinline__ bool before(float v, int64_t i, float w, int64_t j) {
  return v > w || (v == w && i < j);
}

__global__ void topk_kernel(const float *x, int64_t vocab, int k, int32_t *ids, float *vals) {
  __shared__ float sv[kThreads];
  __shared__ int64_t si[kThreads];
  const float *row = x + (int64_t)blockIdx.x * vocab;
  float last_v = INFINITY;
  int64_t last_i = -1;
  for (int r = 0; r < k; r++) {
    float bv = -INFINITY;
    int64_t bi = -1;
    for (int64_t i = threadIdx.x; i < vocab; i += blockDim.x) {
      const float v = row[i];
      if (isnan(v)) continue;
      if (r > 0 && !before(last_v, last_i, v, i)) continue;  // already picked
      if (bi < 0 || before(v, i, bv, bi)) {
        bv = v;
        bi = i;
      }
    }
    sv[threadIdx.x] = bv;
    si[threadIdx.x] = bi;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
      if ((int)threadIdx.x < s) {
        const float w = sv[threadIdx.x + s];
        const int64_t j = si[threadIdx.x + s];
        if (j >= 0 && (si[threadIdx.x] < 0 || before(w, j, sv[threadIdx.x], si[threadIdx.x]))) {
          sv[threadIdx.x] = w;
          si[threadIdx.x] = j;
        }
      }
      __syncthreads();
    }
    last_v = sv[0];
    last_i = si[0];
    if (threadIdx.x == 0) {
      ids[(int64_t)blockIdx.x * k + r] = (int32_t)last_i;
      vals[(int64_t)blockIdx.x * k + r] = last_v;
    }
    __syncthreads();
  }
}

}  // namespace

extern "C" int ss_cuda_launch_topk(const float *x, int64_t n, int64_t vocab, int k, int32_t *ids,
                                   float *vals, cudaStream_t stream) {
  if (n <= 0 || k <= 0) return 0;
  topk_kernel<<<(unsigned)n, kThreads, 0, stream>>>(x, vocab, k, ids, vals);
  return (int)cudaGetLastError();
}
