/* The paged KV cache: fixed-size blocks of token slots shared by all sequences,
 * handed out from a free list; each sequence keeps a block table.  K and V are
 * f32, per layer (n_blocks, n_kv_head, block_size, head_dim). */
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
  int32_t *free_ids; /* stack of free block ids */
  int32_t n_free;
} ss_kv_cache;

int ss_kv_cache_init(ss_kv_cache *c, ss_backend *be, int n_layer, int32_t n_kv_head,
                     int32_t head_dim,
                     int32_t block_size, int32_t n_blocks);
void ss_kv_cache_free(ss_kv_cache *c);
/* Layer l's view for the kernels. */
ss_kv_layer ss_kv_cache_layer(const ss_kv_cache *c, int l);
/* Bytes of K+V per token slot across all layers. */
uint64_t ss_kv_cache_nbytes_per_token(int n_layer, int32_t kv_dim);

/* A sequence's block table. */
typedef struct ss_kv_seq {
  int32_t *blocks;
  int32_t n_blocks;
  int32_t cap;
} ss_kv_seq;

/* Makes room for positions [0, n_tokens) in seq, taking blocks from the free
 * list.  Returns SS_ERR_RANGE (and takes nothing) when too few blocks are free. */
int ss_kv_seq_reserve(ss_kv_cache *c, ss_kv_seq *seq, int64_t n_tokens);
/* Returns all of seq's blocks to the free list. */
void ss_kv_seq_release(ss_kv_cache *c, ss_kv_seq *seq);

#endif
