/* Special tokens (control, user-defined, unknown): the order they are searched
 * for in, and the partition of a text into raw stretches and the special
 * tokens found in it (llama.cpp's tokenizer_st_partition). */
#include <stdlib.h>
#include <string.h>

#include "runtime/base/status.h"
#include "runtime/tokenizer/tokenizer_internal.h"

/* ------------------------------------------------------------------------ */
/* Search order                                                               */

typedef struct special_key {
  uint32_t len;
  int32_t id;
} special_key;

static int cmp_special(const void *a, const void *b) {
  const special_key *x = a, *y = b;
  if (x->len != y->len) return x->len > y->len ? -1 : 1;
  return (x->id > y->id) - (x->id < y->id);
}

int ss_tok_special_build(ss_tokenizer *t) {
  int32_t n = 0;
  for (int32_t i = 0; i < t->n_vocab; i++)
    n += t->type[i] == SS_TOKTYPE_CONTROL || t->type[i] == SS_TOKTYPE_USER_DEFINED ||
         t->type[i] == SS_TOKTYPE_UNKNOWN;
  special_key *keys = malloc((size_t)(n ? n : 1) * sizeof *keys);
  t->special = malloc((size_t)(n ? n : 1) * sizeof *t->special);
  if (!keys || !t->special) {
    free(keys);
    return ss_error(SS_ERR_NOMEM, "tokenizer: out of memory");
  }
  int32_t k = 0;
  for (int32_t i = 0; i < t->n_vocab; i++)
    if (t->type[i] == SS_TOKTYPE_CONTROL || t->type[i] == SS_TOKTYPE_USER_DEFINED ||
        t->type[i] == SS_TOKTYPE_UNKNOWN)
      keys[k++] = (special_key){t->text_len[i], i};
  qsort(keys, (size_t)n, sizeof *keys, cmp_special);
  for (int32_t i = 0; i < n; i++) t->special[i] = keys[i].id;
  t->n_special = n;
  free(keys);
  return SS_OK;
}

/* ------------------------------------------------------------------------ */
/* Partitioning                                                               */

static int frag_push(ss_tok_fragments *v, int32_t id, size_t off, size_t len) {
  if (v->n == v->cap) {
    size_t cap = v->cap ? 2 * v->cap : 16;
    ss_tok_fragment *p = realloc(v->p, cap * sizeof *p);
    if (!p) return ss_error(SS_ERR_NOMEM, "tokenizer: out of memory");
    v->p = p;
    v->cap = cap;
  }
  v->p[v->n++] = (ss_tok_fragment){id, off, len};
  return SS_OK;
}

/* llama.cpp's tokenizer_st_partition: each special token in turn (longest
 * first) splits every raw fragment at each of its occurrences. */
int ss_tok_special_partition(const ss_tokenizer *t, const char *text, size_t len,
                             bool parse_special, ss_tok_fragments *a) {
  ss_tok_fragments b = {0};
  int rc = frag_push(a, -1, 0, len);
  for (int32_t k = 0; k < t->n_special && !rc; k++) {
    int32_t id = t->special[k];
    if (!parse_special && t->type[id] != SS_TOKTYPE_USER_DEFINED) continue;
    const char *s = t->text + t->text_off[id];
    size_t sn = t->text_len[id];
    bool found = false;
    for (size_t i = 0; i < a->n && !found; i++)
      found = a->p[i].id < 0 && memmem(text + a->p[i].off, a->p[i].len, s, sn) != NULL;
    if (!found) continue;
    b.n = 0;
    for (size_t i = 0; i < a->n && !rc; i++) {
      ss_tok_fragment f = a->p[i];
      if (f.id >= 0) {
        rc = frag_push(&b, f.id, 0, 0);
        continue;
      }
      size_t off = f.off, end = f.off + f.len;
      while (off < end && !rc) {
        const char *m = memmem(text + off, end - off, s, sn);
        if (!m) {
          rc = frag_push(&b, -1, off, end - off);
          break;
        }
        size_t mo = (size_t)(m - text);
        if (mo > off) rc = frag_push(&b, -1, off, mo - off);
        if (!rc) rc = frag_push(&b, id, 0, 0);
        off = mo + sn;
      }
    }
    ss_tok_fragments tmp = *a;
    *a = b;
    b = tmp;
  }
  free(b.p);
  return rc;
}
