/* The vocabulary from GGUF metadata: token texts, types and scores, the BPE
 * merges, optional token ids, the byte-fallback table, and the exact lookups
 * of a token's text and of a merge's rank. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/base/status.h"
#include "runtime/base/utf8.h"
#include "runtime/tokenizer/tokenizer_internal.h"

/* ------------------------------------------------------------------------ */
/* Lookups                                                                    */

int32_t ss_tok_lookup(const ss_tokenizer *t, const char *s, size_t n) {
  uint32_t h = ss_hash_bytes(SS_HASH_SEED, s, n);
  uint32_t pos = h & t->tok_map.mask;
  int32_t id;
  while ((id = ss_hmap_probe(&t->tok_map, h, &pos)) >= 0)
    if (t->text_len[id] == n && memcmp(t->text + t->text_off[id], s, n) == 0) return id;
  return -1;
}

static uint32_t merge_hash(const char *l, size_t ln, const char *r, size_t rn) {
  uint32_t h = ss_hash_bytes(SS_HASH_SEED, l, ln);
  h = ss_hash_bytes(h, " ", 1);
  return ss_hash_bytes(h, r, rn);
}

int32_t ss_tok_merge_rank(const ss_tokenizer *t, const char *l, size_t ln, const char *r,
                          size_t rn) {
  if (!t->merge_map.index) return -1;
  uint32_t h = merge_hash(l, ln, r, rn);
  uint32_t pos = h & t->merge_map.mask;
  int32_t idx;
  while ((idx = ss_hmap_probe(&t->merge_map, h, &pos)) >= 0) {
    const ss_merge *m = &t->merges[idx];
    const char *s = t->merge_text + m->off;
    if (m->left_len == ln && m->right_len == rn && memcmp(s, l, ln) == 0 &&
        memcmp(s + ln + 1, r, rn) == 0)
      return idx;
  }
  return -1;
}

/* ------------------------------------------------------------------------ */
/* Loading                                                                    */

int ss_tok_vocab_load(ss_tokenizer *t, const ss_gguf *g) {
  const ss_gguf_value *tokens, *types = NULL, *scores = NULL;
  int rc = ss_gguf_get_arr(g, "tokenizer.ggml.tokens", true, SS_GGUF_STRING, &tokens);
  if (rc) return rc;
  uint64_t n = tokens->arr.count;
  if (n == 0 || n > INT32_MAX)
    return ss_error(SS_ERR_FORMAT, "%s: tokenizer.ggml.tokens has %" PRIu64 " entries (expected "
                    "1 to %d)", g->path, n, INT32_MAX);
  t->n_vocab = (int32_t)n;

  types = ss_gguf_get(g, "tokenizer.ggml.token_type");
  if (types) {
    ss_gguf_type et = types->type == SS_GGUF_ARRAY ? types->arr.elem_type : SS_GGUF_TYPE_COUNT_;
    if (et != SS_GGUF_INT32 && et != SS_GGUF_UINT32 && et != SS_GGUF_INT8 && et != SS_GGUF_UINT8 &&
        et != SS_GGUF_INT16 && et != SS_GGUF_UINT16)
      return ss_error(SS_ERR_FORMAT, "%s: tokenizer.ggml.token_type must be an array of int32",
                      g->path);
    if (types->arr.count < n)
      return ss_error(SS_ERR_FORMAT, "%s: tokenizer.ggml.token_type has %" PRIu64
                      " entries but tokenizer.ggml.tokens has %" PRIu64, g->path,
                      types->arr.count, n);
  }
  scores = ss_gguf_get(g, "tokenizer.ggml.scores");
  if (scores) {
    ss_gguf_type et = scores->type == SS_GGUF_ARRAY ? scores->arr.elem_type : SS_GGUF_TYPE_COUNT_;
    if (et != SS_GGUF_FLOAT32 && et != SS_GGUF_INT32)
      return ss_error(SS_ERR_FORMAT, "%s: tokenizer.ggml.scores must be an array of float32",
                      g->path);
    if (scores->arr.count < n)
      return ss_error(SS_ERR_FORMAT, "%s: tokenizer.ggml.scores has %" PRIu64
                      " entries but tokenizer.ggml.tokens has %" PRIu64, g->path,
                      scores->arr.count, n);
  }

  /* One arena for all texts; an empty entry becomes "[EMPTY_<id>]" as in
   * llama.cpp, so that no special token is empty. */
  uint64_t total = 0;
  for (uint64_t i = 0; i < n; i++) {
    uint64_t len = tokens->arr.items[i].str.len;
    total += (len ? len : 24) + 1;
  }
  if (total > UINT32_MAX)
    return ss_error(SS_ERR_FORMAT, "%s: tokenizer.ggml.tokens holds %" PRIu64 " bytes of text "
                    "(at most %u supported)", g->path, total, UINT32_MAX);
  t->text = malloc(total);
  t->text_off = malloc(n * sizeof *t->text_off);
  t->text_len = malloc(n * sizeof *t->text_len);
  t->score = malloc(n * sizeof *t->score);
  t->type = malloc(n);
  t->eog = calloc((n + 7) / 8, 1);
  if (!t->text || !t->text_off || !t->text_len || !t->score || !t->type || !t->eog)
    return ss_error(SS_ERR_NOMEM, "tokenizer: out of memory for %" PRIu64 " tokens", n);
  if ((rc = ss_hmap_init(&t->tok_map, n))) return rc;

  uint32_t off = 0;
  for (uint64_t i = 0; i < n; i++) {
    const ss_gguf_str s = tokens->arr.items[i].str;
    uint32_t len = (uint32_t)s.len;
    if (len) {
      memcpy(t->text + off, s.ptr, len);
    } else {
      len = (uint32_t)snprintf(t->text + off, 24, "[EMPTY_%" PRIu64 "]", i);
    }
    t->text[off + len] = 0;
    t->text_off[i] = off;
    t->text_len[i] = len;
    off += len + 1;

    int64_t ty = SS_TOKTYPE_NORMAL;
    if (types && (rc = ss_gguf_arr_int(g, "tokenizer.ggml.token_type", types, i, &ty))) return rc;
    t->type[i] = ty >= SS_TOKTYPE_UNDEFINED && ty <= SS_TOKTYPE_BYTE ? (uint8_t)ty
                                                                      : SS_TOKTYPE_UNDEFINED;
    t->score[i] = scores ? (float)ss_gguf_arr_float(scores, i) : 0.0f;

    const char *txt = t->text + t->text_off[i];
    uint32_t h = ss_hash_bytes(SS_HASH_SEED, txt, len);
    uint32_t pos = h & t->tok_map.mask;
    int32_t other;
    while ((other = ss_hmap_probe(&t->tok_map, h, &pos)) >= 0)
      if (t->text_len[other] == len && memcmp(t->text + t->text_off[other], txt, len) == 0)
        return ss_error(SS_ERR_FORMAT, "%s: tokenizer.ggml.tokens: duplicate entry '%.*s' at ids "
                        "%d and %" PRIu64, g->path, (int)(len > 64 ? 64 : len), txt, other, i);
    ss_hmap_put(&t->tok_map, h, pos, (int32_t)i);
  }
  return SS_OK;
}

int ss_tok_merges_load(ss_tokenizer *t, const ss_gguf *g) {
  const ss_gguf_value *merges;
  int rc = ss_gguf_get_arr(g, "tokenizer.ggml.merges", true, SS_GGUF_STRING, &merges);
  if (rc) return rc;
  uint64_t n = merges->arr.count;
  if (n > INT32_MAX)
    return ss_error(SS_ERR_FORMAT, "%s: tokenizer.ggml.merges has %" PRIu64 " entries (at most %d)",
                    g->path, n, INT32_MAX);
  uint64_t total = 0;
  for (uint64_t i = 0; i < n; i++) total += merges->arr.items[i].str.len;
  if (total > UINT32_MAX)
    return ss_error(SS_ERR_FORMAT, "%s: tokenizer.ggml.merges holds %" PRIu64 " bytes of text "
                    "(at most %u supported)", g->path, total, UINT32_MAX);
  t->merge_text = malloc(total ? total : 1);
  t->merges = malloc((n ? n : 1) * sizeof *t->merges);
  if (!t->merge_text || !t->merges) return ss_error(SS_ERR_NOMEM, "tokenizer: out of memory");
  t->n_merges = (int32_t)n;
  if ((rc = ss_hmap_init(&t->merge_map, n))) return rc;

  uint32_t off = 0;
  for (uint64_t i = 0; i < n; i++) {
    const ss_gguf_str s = merges->arr.items[i].str;
    memcpy(t->merge_text + off, s.ptr, s.len);
    const char *m = t->merge_text + off;
    /* llama.cpp splits at the first space after the first byte; an entry
     * without one can never match a pair of non-empty symbols. */
    const char *sp = s.len > 1 ? memchr(m + 1, ' ', s.len - 1) : NULL;
    ss_merge *e = &t->merges[i];
    e->off = off;
    e->left_len = sp ? (uint32_t)(sp - m) : 0;
    e->right_len = sp ? (uint32_t)(s.len - e->left_len - 1) : 0;
    off += (uint32_t)s.len;
    if (!sp) continue;
    uint32_t h = merge_hash(m, e->left_len, sp + 1, e->right_len);
    uint32_t pos = h & t->merge_map.mask;
    int32_t other;
    bool dup = false;
    while ((other = ss_hmap_probe(&t->merge_map, h, &pos)) >= 0) {
      const ss_merge *o = &t->merges[other];
      if (o->left_len == e->left_len && o->right_len == e->right_len &&
          memcmp(t->merge_text + o->off, m, s.len) == 0) {
        dup = true; /* the first (lowest) rank wins, as with llama.cpp's emplace */
        break;
      }
    }
    if (!dup) ss_hmap_put(&t->merge_map, h, pos, (int32_t)i);
  }
  return SS_OK;
}

/* Reads an optional token id; *id keeps its default when the key is absent. */
int ss_tok_id_load(const ss_tokenizer *t, const ss_gguf *g, const char *key, int32_t *id) {
  int64_t v;
  int rc = ss_gguf_get_int(g, key, false, INT64_MIN, INT64_MAX, &v);
  if (rc < 0) return rc;
  if (rc == 1) {
    if (*id >= t->n_vocab) *id = -1; /* a default that this vocabulary cannot hold */
    return SS_OK;
  }
  if (v < 0 || v >= t->n_vocab)
    return ss_error(SS_ERR_FORMAT, "%s: %s = %" PRId64 " is outside the vocabulary (%d tokens)",
                    g->path, key, v, t->n_vocab);
  *id = (int32_t)v;
  return SS_OK;
}

void ss_tok_byte_tokens_build(ss_tokenizer *t) {
  for (int b = 0; b < 256; b++) {
    char c[4];
    int n = ss_utf8_encode(ss_gpt2_byte_to_cp((uint8_t)b), c);
    memcpy(t->gpt2_char[b], c, (size_t)n); /* at most U+0143: 2 bytes */
    t->gpt2_nbytes[b] = (uint8_t)n;
    if (t->kind == SS_TOK_BPE && !t->raw_bpe) {
      t->byte_token[b] = ss_tok_lookup(t, c, (size_t)n);
    } else {
      char hex[8];
      snprintf(hex, sizeof hex, "<0x%02X>", b);
      int32_t id = ss_tok_lookup(t, hex, 6);
      if (id < 0) {
        char one = (char)b;
        id = ss_tok_lookup(t, &one, 1);
      }
      t->byte_token[b] = id;
    }
  }
}
