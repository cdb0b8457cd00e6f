// The CUDA backend's small kernels: embedding gather, RMSNorm, RoPE, the KV
// cache store, gated activations, residual add, soft cap, row gather.  Each
// mirrors the CPU kernel in kernels/cpu/cpu.c operation for operation where
// that is cheap (RMSNorm's sum of squares and RoPE's angles in double, as
// there), so the two backends agree to a few ulps.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include "kernels/cuda/cuda_internal.h"
#include "kernels/cuda/quant.cuh"

namespace {

constexpr int kThreads = 256;

inline unsigned blocks_for(int64_t count) {
  int64_t b = (count + kThreads - 1) / kThreads;
  return (unsigned)(b < 65535 * 16 ? (b > 0 ? b : 1) : 65535 * 16);
}

// ---- embedding -----------------------------------------------------------

__global__ void embed_kernel(int type, const uint8_t *table, size_t row_nbytes, int64_t cols,
                             const int32_t *ids, float *out) {
  const int64_t i = blockIdx.x;
  const int32_t id = ids[i];
  float *o = out + i * cols;
  if (id < 0) {  // a token another rank's vocabulary slice holds
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) o[c] = 0.0f;
    return;
  }
  const uint8_t *row = table + (size_t)id * row_nbytes;
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) o[c] = ss_dequant_one(type, row, c);
}

// ---- RMSNorm ---------------------------------------------------------------

// One block per row.  The sum of squares is taken in double like the CPU
// kernel's, in a fixed tree (strided per-thread sums, then a shared-memory
// halving), so a row's result never depends on the batch.
__global__ void rmsnorm_kernel(const float *x, const float *w, int64_t dim, float eps,
                               float *out) {
  __shared__ double part[kThreads];
  const float *xi = x + blockIdx.x * dim;
  double ss = 0.0;
  for (int64_t j = threadIdx.x; j < dim; j += blockDim.x) ss += (double)xi[j] * (double)xi[j];
  part[threadIdx.x] = ss;
  __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s >>= 1) {
    if ((int)threadIdx.x < s) part[threadIdx.x] += part[threadIdx.x + s];
    __syncthreads();
  }
  const float inv = (float)(1.0 / sqrt(part[0] / (double)dim + (double)eps));
  float *oi = out + blockIdx.x * dim;
  // Reads of x finish above (the barrier) before any write: out may alias x.
  for (int64_t j = threadIdx.x; j < dim; j += blockDim.x) oi[j] = __fmul_rn(__fmul_rn(xi[j], inv), w[j]);
}

// ---- RoPE -------------------------------------------------------------------

// One thread per (token, rotated pair); the angle is computed once in double
// (as on the CPU: f32 loses the angle at long positions) and applied to every
// head of the token.
__global__ void rope_kernel(float *x, const int32_t *pos, int64_t n, int n_heads, int head_dim,
                            int rope_dim, float theta, int neox) {
  const int half = rope_dim / 2;
  const int64_t k = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (k >= n * half) return;
  const int64_t t = k / half;
  const int i = (int)(k % half);
  const double freq = pow((double)theta, -2.0 * i / (double)rope_dim);
  const double a = (double)pos[t] * freq;
  const float cs = (float)cos(a), sn = (float)sin(a);
  const int i0 = neox ? i : 2 * i, i1 = neox ? i + half : 2 * i + 1;
  for (int h = 0; h < n_heads; h++) {
    float *v = x + (t * n_heads + h) * head_dim;
    const float p = v[i0], q = v[i1];
    v[i0] = __fsub_rn(__fmul_rn(p, cs), __fmul_rn(q, sn));
    v[i1] = __fadd_rn(__fmul_rn(p, sn), __fmul_rn(q, cs));
  }
}

// ---- KV cache store -----------------------------------------------------------

__global__ void kv_store_kernel(float *kc, float *vc, int block_size, int n_kv_head, int head_dim,
                                const int32_t *pos, const int32_t *bt, int bt_width,
                                const float *k, const float *v) {
  const int64_t t = blockIdx.x;
  const int h = blockIdx.y;
  const int32_t p = pos[t];
  const int32_t blk = bt[t * bt_width + p / block_size];
  const size_t off = (((size_t)blk * n_kv_head + h) * block_size + (size_t)(p % block_size)) * head_dim;
  const size_t src = ((size_t)t * n_kv_head + h) * head_dim;
  for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
    kc[off + d] = k[src + d];
    vc[off + d] = v[src + d];
  }
}

// ---- elementwise ----------------------------------------------------------------

__global__ void swiglu_kernel(const float *g, const float *u, int64_t count, float *out) {
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < count;
       i += (int64_t)gridDim.x * blockDim.x) {
    const float x = g[i];
    out[i] = __fmul_rn(__fdiv_rn(x, __fadd_rn(1.0f, expf(-x))), u[i]);
  }
}

// GeLU, tanh form (Grok-1's experts; ggml's GEGLU): 0.5 g (1 + tanh(c (g + 0.044715 g^3))).
__global__ void geglu_kernel(const float *g, const float *u, int64_t count, float *out) {
  const float c = 0.7978845608028654f;  // sqrt(2/pi)
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < count;
       i += (int64_t)gridDim.x * blockDim.x) {
    const float x = g[i];
    const float y = 0.5f * x * (1.0f + tanhf(c * (x + 0.044715f * x * x * x)));
    out[i] = y * u[i];
  }
}

__global__ void add_kernel(float *x, const float *y, int64_t count) {
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < count;
       i += (int64_t)gridDim.x * blockDim.x)
    x[i] = __fadd_rn(x[i], y[i]);
}

__global__ void softcap_kernel(float *x, int64_t count, float cap) {
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < count;
       i += (int64_t)gridDim.x * blockDim.x)
    x[i] = cap * tanhf(x[i] / cap);
}

__global__ void scale_kernel(float *x, int64_t count, float s) {
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < count;
       i += (int64_t)gridDim.x * blockDim.x)
    x[i] = __fmul_rn(x[i], s);
}

__global__ void gather_rows_kernel(const float *src, const int32_t *rows, int64_t width,
                                   float *dst) {
  const float *s = src + (int64_t)rows[blockIdx.x] * width;
  float *d = dst + (int64_t)blockIdx.x * width;
  for (int64_t j = threadIdx.x; j < width; j += blockDim.x) d[j] = s[j];
}

inline int last_error() { return (int)cudaGetLastError(); }

}  // namespace

extern "C" int ss_cuda_launch_embed(int type, const void *table, size_t row_nbytes, int64_t cols,
                                    const int32_t *ids, int64_t n, float *out,
                                    cudaStream_t stream) {
  if (n <= 0) return 0;
  embed_kernel<<<(unsigned)n, kThreads, 0, stream>>>(type, (const uint8_t *)table, row_nbytes,
                                                     cols, ids, out);
  return last_error();
}

extern "C" int ss_cuda_launch_rmsnorm(const float *x, const float *w, int64_t n, int64_t dim,
                                      float eps, float *out, cudaStream_t stream) {
  if (n <= 0) return 0;
  rmsnorm_kernel<<<(unsigned)n, kThreads, 0, stream>>>(x, w, dim, eps, out);
  return last_error();
}

extern "C" int ss_cuda_launch_rope(float *x, const int32_t *pos, int64_t n, int n_heads,
                                   int head_dim, int rope_dim, float theta, int neox,
                                   cudaStream_t stream) {
  const int64_t work = n * (rope_dim / 2);
  if (work <= 0) return 0;
  rope_kernel<<<(unsigned)((work + kThreads - 1) / kThreads), kThreads, 0, stream>>>(
      x, pos, n, n_heads, head_dim, rope_dim, theta, neox);
  return last_error();
}

extern "C" int ss_cuda_launch_kv_store(float *kc, float *vc, int block_size, int n_kv_head,
                                       int head_dim, const int32_t *pos, const int32_t *bt,
                                       int bt_width, int64_t n, const float *k, const float *v,
                                       cudaStream_t stream) {
  if (n <= 0) return 0;
  const int threads = head_dim < 128 ? 64 : 128;
  kv_store_kernel<<<dim3((unsigned)n, (unsigned)n_kv_head), threads, 0, stream>>>(
      kc, vc, block_size, n_kv_head, head_dim, pos, bt, bt_width, k, v);
  return last_error();
}

extern "C" int ss_cuda_launch_swiglu(const float *g, const float *u, int64_t count, float *out,
                                     cudaStream_t stream) {
  if (count <= 0) return 0;
  swiglu_kernel<<<blocks_for(count), kThreads, 0, stream>>>(g, u, count, out);
  return last_error();
}

extern "C" int ss_cuda_launch_geglu(const float *g, const float *u, int64_t count, float *out,
                                    cudaStream_t stream) {
  if (count <= 0) return 0;
  geglu_kernel<<<blocks_for(count), kThreads, 0, stream>>>(g, u, count, out);
  return last_error();
}

extern "C" int ss_cuda_launch_add(float *x, const float *y, int64_t count, cudaStream_t stream) {
  if (count <= 0) return 0;
  add_kernel<<<blocks_for(count), kThreads, 0, stream>>>(x, y, count);
  return last_error();
}

extern "C" int ss_cuda_launch_softcap(float *x, int64_t count, float cap, cudaStream_t stream) {
  if (count <= 0) return 0;
  softcap_kernel<<<blocks_for(count), kThreads, 0, stream>>>(x, count, cap);
  return last_error();
}

extern "C" int ss_cuda_launch_scale(float *x, int64_t count, float s, cudaStream_t stream) {
  if (count <= 0) return 0;
  scale_kernel<<<blocks_for(count), kThreads, 0, stream>>>(x, count, s);
  return last_error();
}

extern "C" int ss_cuda_launch_gather_rows(const float *src, const int32_t *rows, int64_t n,
                                          int64_t width, float *dst, cudaStream_t stream) {
  if (n <= 0) return 0;
  gather_rows_kernel<<<(unsigned)n, kThreads, 0, stream>>>(src, rows, width, dst);
  return last_error();
}
