/* The open-addressing hash map's set-up: allocation, release, and storing an
 * index where a probe stopped.  Hashing and probing are inline in
 * tokenizer_internal.h; the tokenizer owns the keys and compares them. */
#include <stdlib.h>
#include <string.h>

#include "runtime/base/status.h"
#include "runtime/tokenizer/tokenizer_internal.h"

int ss_hmap_init(ss_hmap *m, size_t n_entries) {
  size_t cap = 16;
  while (cap < 2 * n_entries) cap *= 2;
  m->index = malloc(cap * sizeof *m->index);
  m->hash = malloc(cap * sizeof *m->hash);
  if (!m->index || !m->hash) return ss_error(SS_ERR_NOMEM, "tokenizer: out of memory");
  memset(m->index, 0xFF, cap * sizeof *m->index); /* -1 everywhere */
  m->mask = (uint32_t)(cap - 1);
  return SS_OK;
}

void ss_hmap_free(ss_hmap *m) {
  free(m->index);
  free(m->hash);
  m->index = NULL;
  m->hash = NULL;
}

/* Stores idx in the empty slot the probe for h stopped at. */
void ss_hmap_put(ss_hmap *m, uint32_t h, uint32_t pos_after, int32_t idx) {
  uint32_t p = (pos_after - 1) & m->mask;
  m->index[p] = idx;
  m->hash[p] = h;
}
