#include "runtime/model/kv_cache.h"

#include <stdlib.h>
#include <string.h>

#include "runtime/base/status.h"

uint64_t ss_kv_cache_nbytes_per_token(int n_layer, int32_t kv_dim) {
  return 2ull * (uint64_t)n_layer * (uint64_t)kv_dim * sizeof(float);
}

int ss_kv_cache_init(ss_kv_cache *c, ss_backend *be, int n_layer, int32_t n_kv_head,
                     int32_t head_dim,
                     int32_t block_size, int32_t n_blocks) {
  memset(c, 0, sizeof *c);
  const int64_t kv_dim = (int64_t)n_kv_head * head_dim;
  if (n_layer <= 0 || kv_dim <= 0 || block_size <= 0 || n_blocks <= 0)
    return ss_error(SS_ERR_INVALID, "kv cache: layers, kv_dim, block size and block count must "
                    "be positive (got %d, %lld, %d, %d)", n_layer, (long long)kv_dim, block_size,
                    n_blocks);
  uint64_t per_layer = (uint64_t)n_blocks * (uint64_t)block_size * (uint64_t)kv_dim;
  uint64_t nbytes = (uint64_t)n_layer * per_layer * sizeof(float);
  if (nbytes / sizeof(float) / (uint64_t)n_layer != per_layer || nbytes > (uint64_t)SIZE_MAX / 2)
    return ss_error(SS_ERR_RANGE, "kv cache: %d blocks of %d tokens overflow memory", n_blocks,
                    block_size);
  c->be = be;
  c->n_layer = n_layer;
  c->n_kv_head = n_kv_head;
  c->head_dim = head_dim;
  c->block_size = block_size;
  c->n_blocks = n_blocks;
  c->k = be->alloc(be, (size_t)nbytes);
  c->v = be->alloc(be, (size_t)nbytes);
  c->free_ids = malloc((size_t)n_blocks * sizeof *c->free_ids);
  if (!c->k || !c->v || !c->free_ids) {
    ss_kv_cache_free(c);
    return ss_error(SS_ERR_NOMEM, "kv cache: cannot allocate %.1f MiB for %d blocks of %d tokens",
                    2.0 * (double)nbytes / (1 << 20), n_blocks, block_size);
  }
  /* Hand out low ids first (a stack popped from the end). */
  for (int32_t i = 0; i < n_blocks; i++) c->free_ids[i] = n_blocks - 1 - i;
  c->n_free = n_blocks;
  return SS_OK;
}

void ss_kv_cache_free(ss_kv_cache *c) {
  if (c->be) {
    if (c->k) c->be->dealloc(c->be, c->k);
    if (c->v) c->be->dealloc(c->be, c->v);
  }
  free(c->free_ids);
  memset(c, 0, sizeof *c);
}

ss_kv_layer ss_kv_cache_layer(const ss_kv_cache *c, int l) {
  size_t per_layer =
      (size_t)c->n_blocks * (size_t)c->block_size * (size_t)c->n_kv_head * (size_t)c->head_dim;
  return (ss_kv_layer){.k = c->k + (size_t)l * per_layer,
                       .v = c->v + (size_t)l * per_layer,
                       .block_size = c->block_size,
                       .n_kv_head = c->n_kv_head,
                       .head_dim = c->head_dim};
}

int ss_kv_seq_reserve(ss_kv_cache *c, ss_kv_seq *seq, int64_t n_tokens) {
  int64_t need = (n_tokens + c->block_size - 1) / c->block_size;
  if (need <= seq->n_blocks) return SS_OK;
  int64_t extra = need - seq->n_blocks;
  if (extra > c->n_free)
    return ss_error(SS_ERR_RANGE, "kv cache: %lld more blocks needed for %lld tokens, %d free",
                    (long long)extra, (long long)n_tokens, c->n_free);
  if (need > seq->cap) {
    int32_t cap = seq->cap ? seq->cap : 8;
    while (cap < need) cap *= 2;
    int32_t *nb = realloc(seq->blocks, (size_t)cap * sizeof *nb);
    if (!nb) return ss_error(SS_ERR_NOMEM, "kv cache: out of memory for a block table");
    seq->blocks = nb;
    seq->cap = cap;
  }
  while (seq->n_blocks < need) seq->blocks[seq->n_blocks++] = c->free_ids[--c->n_free];
  return SS_OK;
}

void ss_kv_seq_release(ss_kv_cache *c, ss_kv_seq *seq) {
  for (int32_t i = seq->n_blocks - 1; i >= 0; i--) c->free_ids[c->n_free++] = seq->blocks[i];
  free(seq->blocks);
  memset(seq, 0, sizeof *seq);
}
