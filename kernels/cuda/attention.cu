// Causal attention over the paged KV cache: one kernel for decode and prefill.
//
// A block takes one tile (consecutive tokens of one sequence: one token in
// decode, up to 16 in prefill), the query heads of one KV head, and one split
// s of the context: chunks s, s + S, s + 2S, ... of 64 positions (S fixed).
// For each chunk it loads the K and V rows into shared memory once for all its
// tokens and heads (flash-style: the prefill tile reuses every K/V load 16
// times per head), then each warp updates the online softmax of its query
// rows: scores, running max m, running sum l, unnormalised output o.  A merge
// kernel then folds a token's S split results in split order.
//
// Batch invariance: a (token, head) row meets the same chunks in the same
// order, computes every score as the same fmaf chain over head_dim, and
// reduces with the same warp butterflies whether its tile holds 1 token or 16
// and whatever else is in the batch; the merge order is fixed.  So a token's
// output is the same in decode and in (chunked) prefill, alone or batched.
#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>

#include "kernels/cuda/cuda_internal.h"

namespace {

constexpr int kChunk = SS_CUDA_ATTN_CHUNK;
constexpr int kSplits = SS_CUDA_ATTN_SPLITS;
constexpr int kWarps = 8;

__device__ __forceinline__ float warp_max(float v) {
  for (int off = 16; off > 0; off >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, off));
  return v;
}
__device__ __forceinline__ float warp_sum(float v) {
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

__global__ void __launch_bounds__(kWarps * 32)
    attn_kernel(const float *__restrict__ kc, const float *__restrict__ vc, int block_size,
                int n_kv_head, int hd, const int32_t *__restrict__ pos,
                const int32_t *__restrict__ bt, int bt_width, const float *__restrict__ q,
                int n_head, int group, int q_head_base, int kv_head_base, float scale,
                float softcap, const ss_cuda_tile *__restrict__ tiles, int hpb, int n_hgroups,
                int tok0, float *__restrict__ part) {
  extern __shared__ float smem[];
  const ss_cuda_tile tile = tiles[blockIdx.x];
  const int kvh = blockIdx.y / n_hgroups, hg = blockIdx.y % n_hgroups;
  const int s = blockIdx.z;
  // The local query heads that read this KV head, and this block's share.
  const int kv_global = kv_head_base + kvh;
  int qa = kv_global * group - q_head_base, qb = qa + group;
  qa = qa > 0 ? qa : 0;
  qb = qb < n_head ? qb : n_head;
  const int h0 = qa + hg * hpb;
  const int nh = min(qb, h0 + hpb) - h0;
  if (nh <= 0) return;
  const int32_t p0 = pos[tile.t0];
  const int32_t p_last = p0 + tile.count - 1;
  if (s * kChunk > p_last) return;  // no chunk of this split for any token

  const int rows = tile.count * nh;
  const int kstride = hd + 1;  // odd stride: lanes reading K[j][d] hit distinct banks
  float *K = smem;                          // [kChunk][hd + 1]
  float *V = K + kChunk * kstride;          // [kChunk][hd]
  float *Q = V + kChunk * hd;               // [rows][hd]
  float *O = Q + (size_t)rows * hd;         // [rows][hd]
  float *M = O + (size_t)rows * hd;         // [rows]
  float *L = M + rows;                      // [rows]
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;

  for (int i = threadIdx.x; i < rows * hd; i += blockDim.x) {
    const int r = i / hd, d = i % hd;
    const int t = tile.t0 + r / nh, h = h0 + r % nh;
    Q[i] = q[((size_t)t * n_head + h) * hd + d];
    O[i] = 0.0f;
  }
  for (int r = threadIdx.x; r < rows; r += blockDim.x) {
    M[r] = -INFINITY;
    L[r] = 0.0f;
  }
  const int32_t *table = bt + (size_t)tile.t0 * bt_width;

  for (int c = s; c * kChunk <= p_last; c += kSplits) {
    const int base = c * kChunk;
    const int nv = min(kChunk, p_last + 1 - base);
    __syncthreads();  // the previous chunk's readers are done
    for (int i = threadIdx.x; i < nv * hd; i += blockDim.x) {
      const int j = i / hd, d = i % hd;
      const int32_t sp = base + j;
      const size_t off =
          (((size_t)table[sp / block_size] * n_kv_head + kvh) * block_size + sp % block_size) * hd + d;
      K[j * kstride + d] = kc[off];
      V[j * hd + d] = vc[off];
    }
    __syncthreads();
    for (int r = warp; r < rows; r += kWarps) {
      const int32_t p = p0 + r / nh;
      const int nvr = min(kChunk, p + 1 - base);  // this token's valid positions in the chunk
      if (nvr <= 0) continue;
      const float *qr = Q + (size_t)r * hd;
      float sc[2];
#pragma unroll
      for (int k = 0; k < 2; k++) {
        const int j = lane + 32 * k;
        float x = -INFINITY;
        if (j < nvr) {
          const float *kr = K + j * kstride;
          float acc = 0.0f;
          for (int d = 0; d < hd; d++) acc = fmaf(qr[d], kr[d], acc);
          x = acc * scale;
          if (softcap > 0.0f) x = softcap * tanhf(x / softcap);
        }
        sc[k] = x;
      }
      const float m_old = M[r];
      const float m_new = fmaxf(m_old, warp_max(fmaxf(sc[0], sc[1])));
      const float alpha = expf(m_old - m_new);  // 0 on the first chunk (m_old = -inf)
      const float e0 = lane < nvr ? expf(sc[0] - m_new) : 0.0f;
      const float e1 = lane + 32 < nvr ? expf(sc[1] - m_new) : 0.0f;
      const float l_new = L[r] * alpha + warp_sum(e0 + e1);
      float *orow = O + (size_t)r * hd;
      // Every lane runs every step (the shuffles need the whole warp); lanes
      // past head_dim compute on a clamped column and store nothing.
      for (int d0 = 0; d0 < hd; d0 += 32) {
        const int d = d0 + lane < hd ? d0 + lane : hd - 1;
        float acc = orow[d] * alpha;
        for (int j = 0; j < nvr; j++) {
          const float e = __shfl_sync(0xffffffffu, j < 32 ? e0 : e1, j & 31);
          acc = fmaf(e, V[j * hd + d], acc);
        }
        if (d0 + lane < hd) orow[d] = acc;
      }
      __syncwarp();
      if (lane == 0) {
        M[r] = m_new;
        L[r] = l_new;
      }
      __syncwarp();
    }
  }
  __syncthreads();
  // Partials of the tokens this split reached: [m, l, o[hd]].
  for (int r = warp; r < rows; r += kWarps) {
    const int i = r / nh, h = h0 + r % nh;
    if (s * kChunk > p0 + i) continue;
    const int t = tile.t0 + i - tok0;
    float *pp = part + (((size_t)t * n_head + h) * kSplits + s) * (size_t)(hd + 2);
    if (lane == 0) {
      pp[0] = M[r];
      pp[1] = L[r];
    }
    for (int d = lane; d < hd; d += 32) pp[2 + d] = O[(size_t)r * hd + d];
  }
}

// out[t][h] = sum_s w_s o_s / sum_s w_s l_s, w_s = exp(m_s - max m), in split order.
__global__ void merge_kernel(const int32_t *pos, int tok0, int n_head, int hd, const float *part,
                             float *out) {
  const int t = blockIdx.x, h = blockIdx.y;
  const int32_t p = pos[tok0 + t];
  const int ns = min(kSplits, p / kChunk + 1);
  const float *pp = part + ((size_t)t * n_head + h) * kSplits * (size_t)(hd + 2);
  float mx = -INFINITY;
  for (int s = 0; s < ns; s++) mx = fmaxf(mx, pp[(size_t)s * (hd + 2)]);
  float l = 0.0f;
  for (int s = 0; s < ns; s++) {
    const float *ps = pp + (size_t)s * (hd + 2);
    l = fmaf(expf(ps[0] - mx), ps[1], l);
  }
  const float inv = 1.0f / l;
  float *o = out + ((size_t)(tok0 + t) * n_head + h) * hd;
  for (int d = threadIdx.x; d < hd; d += blockDim.x) {
    float acc = 0.0f;
    for (int s = 0; s < ns; s++) {
      const float *ps = pp + (size_t)s * (hd + 2);
      acc = fmaf(expf(ps[0] - mx), ps[2 + d], acc);
    }
    o[d] = acc * inv;
  }
}

}  // namespace

extern "C" size_t ss_cuda_attn_smem_nbytes(int tile_max, int heads_per_block, int head_dim) {
  const size_t rows = (size_t)tile_max * heads_per_block;
  return sizeof(float) * ((size_t)kChunk * (head_dim + 1) + (size_t)kChunk * head_dim +
                          2 * rows * head_dim + 2 * rows);
}

extern "C" int ss_cuda_attn_configure(size_t max_smem_nbytes) {
  return (int)cudaFuncSetAttribute(attn_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                   (int)max_smem_nbytes);
}

extern "C" int ss_cuda_launch_attention(const ss_cuda_attn_args *a, cudaStream_t stream) {
  if (a->n_tiles <= 0) return 0;
  const int G = a->group;
  const int n_hgroups = (G + a->heads_per_block - 1) / a->heads_per_block;
  dim3 grid((unsigned)a->n_tiles, (unsigned)(a->n_kv_head * n_hgroups), kSplits);
  attn_kernel<<<grid, kWarps * 32, a->smem_nbytes, stream>>>(
      a->kc, a->vc, a->block_size, a->n_kv_head, a->head_dim, a->pos, a->bt, a->bt_width, a->q,
      a->n_head, G, a->q_head_base, a->kv_head_base, a->scale, a->softcap, a->tiles,
      a->heads_per_block, n_hgroups, a->tok0, a->part);
  int e = (int)cudaGetLastError();
  if (e) return e;
  const int threads = a->head_dim >= 128 ? 128 : 64;
  merge_kernel<<<dim3((unsigned)a->n_tok, (unsigned)a->n_head), threads, 0, stream>>>(
      a->pos, a->tok0, a->n_head, a->head_dim, a->part, a->out);
  return (int)cudaGetLastError();
}
