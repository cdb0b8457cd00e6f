/* The paged KV cache's storage: fixed-size blocks of token slots shared by all
 * sequences, K and V in f32, per layer (n_blocks, n_kv_head, block_size,
 * head_dim).  Which block belongs to which sequence is the engine's scheduler's
 * business (its free stack is the one allocator); the kernels read a
 * sequence's blocks through its block table. */
#ifndef SS_KV_CACHE_H
#define SS_KV_CACHE_H

#include <stdint.h>

#include "kernels/kernels.h"

typedef struct ss_kv_cache {
  ss_backend *be;
  int n_layer;
  int32_t n_kv_head;
  int32_t head_dim;
  int32_t block_size;
  int32_t n_blocks;
  float *k;          /* backend memory: (n_layer, n_blocks, n_kv_head, block_size, head_dim) */
  float *v;
} ss_kv_cache;

int ss_kv_cache_init(ss_kv_cache *c, ss_backend *be, int n_layer, int32_t n_kv_head,
                     int32_t head_dim, int32_t block_size, int32_t n_blocks);
void ss_kv_cache_free(ss_kv_cache *c);
/* Layer l's view for the kernels. */
ss_kv_layer ss_kv_cache_layer(const ss_kv_cache *c, int l);
/* Bytes of K+V per token slot across all layers. */
uint64_t ss_kv_cache_nbytes_per_token(int n_layer, int32_t kv_dim);

#endif
