/* The KV cache's storage (runtime/model/kv_cache.h): allocation on the
 * backend and the per-layer view the attention kernels read. */
#include "runtime/model/kv_cache.h"

#include <string.h>

#include "runtime/base/status.h"

static const struct {
  const char *name;
  ss_dtype dtype;
  uint64_t nbytes;
} k_kv_types[] = {
    {"f32", SS_DTYPE_F32, 4},
    {"bf16", SS_DTYPE_BF16, 2},
    {"f16", SS_DTYPE_F16, 2},
    {"fp8_e4m3", SS_DTYPE_F8_E4M3, 1},
};
#define N_KV_TYPES (sizeof k_kv_types / sizeof k_kv_types[0])

uint64_t ss_kv_dtype_nbytes(ss_dtype dtype) {
  for (size_t i = 0; i < N_KV_TYPES; i++)
    if (k_kv_types[i].dtype == dtype) return k_kv_types[i].nbytes;
  return 0;
}

bool ss_kv_dtype_parse(const char *name, ss_dtype *out) {
  for (size_t i = 0; i < N_KV_TYPES; i++)
    if (strcmp(name, k_kv_types[i].name) == 0) {
      *out = k_kv_types[i].dtype;
      return true;
    }
  return false;
}

const char *ss_kv_dtype_name(ss_dtype dtype) {
  for (size_t i = 0; i < N_KV_TYPES; i++)
    if (k_kv_types[i].dtype == dtype) return k_kv_types[i].name;
  return "?";
}

uint64_t ss_kv_cache_nbytes_per_token(int n_layer, int32_t kv_dim, ss_dtype dtype) {
  return 2ull * (uint64_t)n_layer * (uint64_t)kv_dim * ss_kv_dtype_nbytes(dtype);
}

int ss_kv_cache_init(ss_kv_cache *c, ss_backend *be, int n_layer, int32_t n_kv_head,
                     int32_t head_dim, int32_t block_size, int32_t n_blocks, ss_dtype dtype) {
  memset(c, 0, sizeof *c);
  const int64_t kv_dim = (int64_t)n_kv_head * head_dim;
  if (n_layer <= 0 || kv_dim <= 0 || block_size <= 0 || n_blocks <= 0)
    return ss_error(SS_ERR_INVALID, "kv cache: layers, kv_dim, block size and block count must "
                    "be positive (got %d, %lld, %d, %d)", n_layer, (long long)kv_dim, block_size,
                    n_blocks);
  const uint64_t es = ss_kv_dtype_nbytes(dtype);
  if (es == 0)
    return ss_error(SS_ERR_UNSUPPORTED, "kv cache: element type %s is not one of f32, bf16, f16, "
                    "fp8_e4m3", ss_dtype_name(dtype));
  if (dtype != SS_DTYPE_F32 && !be->kv_dtype_check)
    return ss_error(SS_ERR_UNSUPPORTED, "kv cache: the %s backend holds f32 K/V only (asked for "
                    "%s)", be->name, ss_kv_dtype_name(dtype));
  if (be->kv_dtype_check) {
    int rc = be->kv_dtype_check(be, dtype);
    if (rc) return rc;
  }
  uint64_t per_layer = (uint64_t)n_blocks * (uint64_t)block_size * (uint64_t)kv_dim;
  uint64_t nbytes = (uint64_t)n_layer * per_layer * es;
  if (nbytes / es / (uint64_t)n_layer != per_layer || nbytes > (uint64_t)SIZE_MAX / 2)
    return ss_error(SS_ERR_RANGE, "kv cache: %d blocks of %d tokens overflow memory", n_blocks,
                    block_size);
  c->be = be;
  c->n_layer = n_layer;
  c->n_kv_head = n_kv_head;
  c->head_dim = head_dim;
  c->block_size = block_size;
  c->n_blocks = n_blocks;
  c->dtype = dtype;
  c->k = be->alloc(be, (size_t)nbytes);
  c->v = be->alloc(be, (size_t)nbytes);
  if (!c->k || !c->v) {
    ss_kv_cache_free(c);
    return ss_error(SS_ERR_NOMEM, "kv cache: cannot allocate %.1f MiB for %d blocks of %d tokens",
                    2.0 * (double)nbytes / (1 << 20), n_blocks, block_size);
  }
  return SS_OK;
}

void ss_kv_cache_free(ss_kv_cache *c) {
  if (c->be) {
    if (c->k) c->be->dealloc(c->be, c->k);
    if (c->v) c->be->dealloc(c->be, c->v);
  }
  memset(c, 0, sizeof *c);
}

int ss_kv_cache_copy_block(ss_kv_cache *c, int32_t src, int32_t dst) {
  if (src < 0 || src >= c->n_blocks || dst < 0 || dst >= c->n_blocks || src == dst)
    return ss_error(SS_ERR_RANGE, "kv cache: copy of block %d into block %d: ids must differ "
                    "and lie in 0..%d", src, dst, c->n_blocks - 1);
  /* A block is one contiguous run per layer: (n_kv_head, block_size, head_dim). */
  const size_t block_nbytes = (size_t)c->n_kv_head * (size_t)c->block_size *
                              (size_t)c->head_dim * (size_t)ss_kv_dtype_nbytes(c->dtype);
  for (int l = 0; l < c->n_layer; l++) {
    const ss_kv_layer kl = ss_kv_cache_layer(c, l);
    uint8_t *k = kl.k, *v = kl.v;
    int rc = c->be->copy(c->be, k + (size_t)dst * block_nbytes, k + (size_t)src * block_nbytes,
                         block_nbytes);
    if (!rc)
      rc = c->be->copy(c->be, v + (size_t)dst * block_nbytes, v + (size_t)src * block_nbytes,
                       block_nbytes);
    if (rc) return rc;
  }
  return SS_OK;
}

ss_kv_layer ss_kv_cache_layer(const ss_kv_cache *c, int l) {
  const size_t per_layer = (size_t)c->n_blocks * (size_t)c->block_size * (size_t)c->n_kv_head *
                           (size_t)c->head_dim * (size_t)ss_kv_dtype_nbytes(c->dtype);
  return (ss_kv_layer){.k = (uint8_t *)c->k + (size_t)l * per_layer,
                       .v = (uint8_t *)c->v + (size_t)l * per_layer,
                       .block_size = c->block_size,
                       .n_kv_head = c->n_kv_head,
                       .head_dim = c->head_dim,
                       .dtype = c->dtype};
}
