/* SentencePiece-style tokenization (tokenizer.ggml.model = "llama"), as
 * llama.cpp's llm_tokenizer_spm_session does it:
 *
 *   1. optionally prepend a space, then write every space as U+2581 "▁";
 *   2. cut the text into UTF-8 characters (an invalid byte is a character of
 *      its own);
 *   3. repeatedly merge the adjacent pair whose concatenation is a vocabulary
 *      entry with the highest score (ties: leftmost);
 *   4. emit each final symbol's token, or its bytes as <0xNN> tokens (byte
 *      fallback), or the unknown token when there is no byte token.
 *
 * llama.cpp's resegment() also looks up how a symbol was merged to re-split
 * it; here a merge only ever forms a vocabulary entry, so every symbol that is
 * not a vocabulary entry is a single unmerged character and goes straight to
 * byte fallback, which is the same result. */
#include <stdlib.h>
#include <string.h>

#include "runtime/base/status.h"
#include "runtime/base/utf8.h"
#include "runtime/tokenizer/tokenizer_internal.h"

#define SPM_SPACE "\xE2\x96\x81" /* U+2581 */

typedef struct symbol {
  int32_t prev, next;
  uint32_t off, n; /* n == 0 once merged away */
} symbol;

typedef struct bigram {
  float score;
  int32_t left, right;
  uint32_t nbytes;
} bigram;

typedef struct spm_heap {
  bigram *p;
  size_t n, cap;
} spm_heap;

/* Higher score first; equal scores, leftmost first (llama.cpp's comparator). */
static bool bigram_before(const bigram *x, const bigram *y) {
  return x->score > y->score || (x->score == y->score && x->left < y->left);
}

static int heap_push(spm_heap *h, bigram b) {
  if (h->n == h->cap) {
    size_t cap = h->cap ? 2 * h->cap : 64;
    bigram *p = realloc(h->p, cap * sizeof *p);
    if (!p) return ss_error(SS_ERR_NOMEM, "tokenizer: out of memory");
    h->p = p;
    h->cap = cap;
  }
  size_t i = h->n++;
  while (i > 0) {
    size_t parent = (i - 1) / 2;
    if (!bigram_before(&b, &h->p[parent])) break;
    h->p[i] = h->p[parent];
    i = parent;
  }
  h->p[i] = b;
  return SS_OK;
}

static bigram heap_pop(spm_heap *h) {
  bigram top = h->p[0];
  bigram last = h->p[--h->n];
  size_t i = 0, n = h->n;
  for (;;) {
    size_t c = 2 * i + 1;
    if (c >= n) break;
    if (c + 1 < n && bigram_before(&h->p[c + 1], &h->p[c])) c++;
    if (!bigram_before(&h->p[c], &last)) break;
    h->p[i] = h->p[c];
    i = c;
  }
  if (n > 0) h->p[i] = last;
  return top;
}

static int try_add_bigram(const ss_tokenizer *t, const char *text, const symbol *sym,
                          spm_heap *h, int32_t left, int32_t right) {
  if (left < 0 || right < 0) return SS_OK;
  uint32_t n = sym[left].n + sym[right].n;
  int32_t id = ss_tok_lookup(t, text + sym[left].off, n);
  if (id < 0) return SS_OK;
  return heap_push(h, (bigram){t->score[id], left, right, n});
}

int ss_tok_spm_encode(const ss_tokenizer *t, const char *text, size_t len, bool space_prefix,
                      ss_tok_ids *out) {
  size_t n_spaces = space_prefix ? 1 : 0;
  for (size_t i = 0; i < len; i++) n_spaces += text[i] == ' ';
  const size_t elen = len + (space_prefix ? 1 : 0) + 2 * n_spaces;
  if (elen == 0) return SS_OK;
  if (elen > UINT32_MAX) return ss_error(SS_ERR_INVALID, "tokenizer: text too long (%zu bytes)", len);

  int rc = SS_OK;
  char *buf = malloc(elen);
  symbol *sym = malloc(elen * sizeof *sym);
  spm_heap h = {0};
  if (!buf || !sym) {
    rc = ss_error(SS_ERR_NOMEM, "tokenizer: out of memory");
    goto done;
  }
  size_t j = 0;
  if (space_prefix) {
    memcpy(buf, SPM_SPACE, 3);
    j = 3;
  }
  for (size_t i = 0; i < len; i++) {
    if (text[i] == ' ') {
      memcpy(buf + j, SPM_SPACE, 3);
      j += 3;
    } else {
      buf[j++] = text[i];
    }
  }

  int32_t n_sym = 0;
  for (size_t off = 0; off < elen;) {
    int n = ss_utf8_seq_nbytes((const uint8_t *)buf + off, elen - off);
    if (n <= 0) n = 1;
    sym[n_sym] = (symbol){n_sym - 1, -1, (uint32_t)off, (uint32_t)n};
    if (n_sym > 0) sym[n_sym - 1].next = n_sym;
    n_sym++;
    off += (size_t)n;
  }
  for (int32_t i = 1; i < n_sym; i++)
    if ((rc = try_add_bigram(t, buf, sym, &h, i - 1, i))) goto done;

  while (h.n > 0) {
    bigram b = heap_pop(&h);
    symbol *l = &sym[b.left], *r = &sym[b.right];
    /* Stale if either side has been merged since the bigram was queued. */
    if (l->n == 0 || r->n == 0 || l->n + r->n != b.nbytes) continue;
    l->n += r->n;
    r->n = 0;
    l->next = r->next;
    if (r->next >= 0) sym[r->next].prev = b.left;
    if ((rc = try_add_bigram(t, buf, sym, &h, l->prev, b.left))) goto done;
    if ((rc = try_add_bigram(t, buf, sym, &h, b.left, l->next))) goto done;
  }

  for (int32_t i = 0; i >= 0; i = sym[i].next) {
    int32_t id = ss_tok_lookup(t, buf + sym[i].off, sym[i].n);
    if (id >= 0) {
      if ((rc = ss_tok_ids_push(out, id))) goto done;
      continue;
    }
    for (uint32_t k = 0; k < sym[i].n; k++) {
      int32_t bid = t->byte_token[(uint8_t)buf[sym[i].off + k]];
      if (bid < 0) bid = t->unk;
      if (bid >= 0 && (rc = ss_tok_ids_push(out, bid))) goto done;
    }
  }

done:
  free(buf);
  free(sym);
  free(h.p);
  return rc;
}
