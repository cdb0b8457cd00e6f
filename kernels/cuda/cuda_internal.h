/* Private to the CUDA backend: the context, the check macro, and the kernel
 * launchers (defined in the .cu files, callable from C).  Every launcher
 * queues its kernels on `stream` and returns the launch's cudaError_t as an
 * int (0: queued). */
#ifndef SS_CUDA_INTERNAL_H
#define SS_CUDA_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include <cuda_runtime_api.h>

#include "kernels/cuda/launch_plan.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- attention geometry shared by the host wrapper and the kernels ------ */

/* Positions per chunk (as the CPU kernel) and the fixed number of splits a
 * token's chunks are dealt over: split s takes chunks s, s + S, s + 2S, ...
 * Neither depends on the batch, so neither does a token's result. */
#define SS_CUDA_ATTN_CHUNK 64
#define SS_CUDA_ATTN_SPLITS 16
/* SS_CUDA_ATTN_MAX_TOKENS and the tiles: kernels/cuda/launch_plan.h. */

/* ---- launchers ----------------------------------------------------------- */

/* Element types are ss_dtype ids (GGUF numbers): F32 0, F16 1, Q4_0 2, Q4_1 3,
 * Q8_0 8, BF16 30. */

int ss_cuda_launch_embed(int type, const void *table, size_t row_nbytes, int64_t cols,
                         const int32_t *ids, int64_t n, float *out, cudaStream_t stream);
int ss_cuda_launch_rmsnorm(const float *x, const float *w, int64_t n, int64_t dim, float eps,
                           float *out, cudaStream_t stream);
int ss_cuda_launch_rope(float *x, const int32_t *pos, int64_t n, int n_heads, int head_dim,
                        int rope_dim, float theta, int neox, cudaStream_t stream);
/* bt: block tables, width bt_width per token. */
int ss_cuda_launch_kv_store(float *kc, float *vc, int block_size, int n_kv_head, int head_dim,
                            const int32_t *pos, const int32_t *bt, int bt_width, int64_t n,
                            const float *k, const float *v, cudaStream_t stream);
int ss_cuda_launch_swiglu(const float *g, const float *u, int64_t count, float *out,
                          cudaStream_t stream);
int ss_cuda_launch_geglu(const float *g, const float *u, int64_t count, float *out,
                         cudaStream_t stream);
int ss_cuda_launch_add(float *x, const float *y, int64_t count, cudaStream_t stream);
int ss_cuda_launch_softcap(float *x, int64_t count, float cap, cudaStream_t stream);
int ss_cuda_launch_scale(float *x, int64_t count, float scale, cudaStream_t stream);
int ss_cuda_launch_gather_rows(const float *src, const int32_t *rows, int64_t n, int64_t width,
                               float *dst, cudaStream_t stream);

/* y[t][r] = W[r] . x[t] with our kernels (one warp per row). */
int ss_cuda_launch_gemv(int type, const void *w, size_t row_nbytes, int64_t rows, int64_t cols,
                        const float *x, int64_t n, float *y, cudaStream_t stream);
/* f32 -> bf16 (to_bf16 != 0) or f16, count elements. */
int ss_cuda_launch_convert(const float *x, int64_t count, void *out, int to_bf16,
                           cudaStream_t stream);
/* Rows [r0, r0 + nrows) of a quantized (or f16) weight dequantized to bf16,
 * row-major (nrows, cols). */
int ss_cuda_launch_dequant_bf16(int type, const void *w, size_t row_nbytes, int64_t r0,
                                int64_t nrows, int64_t cols, void *out, cudaStream_t stream);

/* Attention over tiles[0, n_tiles) (device array), writing each token's split
 * partials, then the merge into out.  Tokens of the tiles must lie in
 * [tok0, tok0 + SS_CUDA_ATTN_MAX_TOKENS); part is indexed relative to tok0.
 * max_rows: query rows (tile tokens x heads of a group) per block, chosen by
 * the host from the shared-memory limit; q_per_tile the tile length limit
 * used to build the tiles. */
typedef struct ss_cuda_attn_args {
  const float *kc, *vc;
  int block_size, n_kv_head, head_dim;
  const int32_t *pos, *bt;
  int bt_width;
  const float *q;
  float *out;
  int n_head, group, q_head_base, kv_head_base;
  float scale, softcap;
  const ss_cuda_tile *tiles;
  int n_tiles;
  int tile_max;   /* tokens per tile at most */
  int heads_per_block; /* query heads of one KV head handled per block */
  int tok0, n_tok;
  float *part;
  size_t smem_nbytes;
} ss_cuda_attn_args;
int ss_cuda_launch_attention(const ss_cuda_attn_args *a, cudaStream_t stream);
/* Dynamic shared memory the attention kernel needs for these sizes. */
size_t ss_cuda_attn_smem_nbytes(int tile_max, int heads_per_block, int head_dim);
/* Raises the kernel's dynamic shared-memory limit (once per device). */
int ss_cuda_attn_configure(size_t max_smem_nbytes);

/* Top-k per row: k rounds of a block-wide arg-max below the previous pick;
 * writes ids[n][k], vals[n][k] (device). */
int ss_cuda_launch_topk(const float *x, int64_t n, int64_t vocab, int k, int32_t *ids,
                        float *vals, cudaStream_t stream);

#ifdef __cplusplus
}
#endif

#endif
