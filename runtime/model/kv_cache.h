/* The paged KV cache's storage: fixed-size blocks of token slots shared by all
 * sequences, K and V per layer (n_blocks, n_kv_head, block_size, head_dim) in
 * one element type (--kv-cache-dtype: f32, bf16, f16 or fp8_e4m3).  Which
 * block belongs to which sequence is the engine's scheduler's business (its
 * free stack is the one allocator); the kernels read a sequence's blocks
 * through its block table. */
#ifndef SS_KV_CACHE_H
#define SS_KV_CACHE_H

#include <stdbool.h>
#include <stdint.h>

#include "kernels/kernels.h"

typedef struct ss_kv_cache {
  ss_backend *be;
  int n_layer;
  int32_t n_kv_head;
  int32_t head_dim;
  int32_t block_size;
  int32_t n_blocks;
  ss_dtype dtype;
  void *k;           /* backend memory: (n_layer, n_blocks, n_kv_head, block_size, head_dim) */
  void *v;
} ss_kv_cache;

/* Fails with a message when the backend has no kernels for dtype. */
int ss_kv_cache_init(ss_kv_cache *c, ss_backend *be, int n_layer, int32_t n_kv_head,
                     int32_t head_dim, int32_t block_size, int32_t n_blocks, ss_dtype dtype);
void ss_kv_cache_free(ss_kv_cache *c);
/* Copies block src's K and V, every layer the cache holds, into block dst
 * (the backend's copy: queued in order with the kernels on a device).  Block
 * ids outside the pool are refused with a message. */
int ss_kv_cache_copy_block(ss_kv_cache *c, int32_t src, int32_t dst);
/* Layer l's view for the kernels. */
ss_kv_layer ss_kv_cache_layer(const ss_kv_cache *c, int l);
/* Bytes per element of a KV cache type; 0 for a type the cache cannot hold. */
uint64_t ss_kv_dtype_nbytes(ss_dtype dtype);
/* Bytes of K+V per token slot across all layers. */
uint64_t ss_kv_cache_nbytes_per_token(int n_layer, int32_t kv_dim, ss_dtype dtype);
/* --kv-cache-dtype's names: "f32", "bf16", "f16", "fp8_e4m3".  False for
 * another name. */
bool ss_kv_dtype_parse(const char *name, ss_dtype *out);
/* The name ss_kv_dtype_parse takes for dtype. */
const char *ss_kv_dtype_name(ss_dtype dtype);

#endif
