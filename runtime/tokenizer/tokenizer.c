/* Tokenizer: loading from GGUF metadata, the vocabulary and merge hash maps,
 * special-token partitioning, and detokenization (pieces and streaming).  The
 * two encoders live in tokenizer_bpe.c and tokenizer_spm.c; llama.cpp's
 * llama-vocab.cpp is the reference for every behaviour here. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/base/status.h"
#include "runtime/tokenizer/tokenizer.h"
#include "runtime/tokenizer/tokenizer_internal.h"
#include "runtime/base/utf8.h"

#define SPM_SPACE "\xE2\x96\x81" /* U+2581, SentencePiece's space */

/* Texts that mark a token as end-of-generation (from llama.cpp's list). */
static const char *const k_eog_texts[] = {
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>",
};

/* ------------------------------------------------------------------------ */
/* Hash maps                                                                  */

static int hmap_init(ss_hmap *m, size_t n_entries) {
  size_t cap = 16;
  while (cap < 2 * n_entries) cap *= 2;
  m->index = malloc(cap * sizeof *m->index);
  m->hash = malloc(cap * sizeof *m->hash);
  if (!m->index || !m->hash) return ss_error(SS_ERR_NOMEM, "tokenizer: out of memory");
  memset(m->index, 0xFF, cap * sizeof *m->index); /* -1 everywhere */
  m->mask = (uint32_t)(cap - 1);
  return SS_OK;
}

static void hmap_free(ss_hmap *m) {
  free(m->index);
  free(m->hash);
  m->index = NULL;
  m->hash = NULL;
}

/* Stores idx in the empty slot the probe for h stopped at. */
static void hmap_put(ss_hmap *m, uint32_t h, uint32_t pos_after, int32_t idx) {
  uint32_t p = (pos_after - 1) & m->mask;
  m->index[p] = idx;
  m->hash[p] = h;
}

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

int ss_tok_ids_push(ss_tok_ids *v, int32_t id) {
  if (v->n == v->cap) {
    size_t cap = v->cap ? 2 * v->cap : 256;
    int32_t *p = realloc(v->p, cap * sizeof *p);
    if (!p) return ss_error(SS_ERR_NOMEM, "tokenizer: out of memory");
    v->p = p;
    v->cap = cap;
  }
  v->p[v->n++] = id;
  return SS_OK;
}

/* ------------------------------------------------------------------------ */
/* Loading                                                                    */

static int load_vocab(ss_tokenizer *t, const ss_gguf *g) {
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
  if ((rc = hmap_init(&t->tok_map, n))) return rc;

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

    int64_t ty = types ? ss_gguf_arr_int(types, i) : SS_TOKTYPE_NORMAL;
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
    hmap_put(&t->tok_map, h, pos, (int32_t)i);
  }
  return SS_OK;
}

static int load_merges(ss_tokenizer *t, const ss_gguf *g) {
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
  if ((rc = hmap_init(&t->merge_map, n))) return rc;

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
    if (!dup) hmap_put(&t->merge_map, h, pos, (int32_t)i);
  }
  return SS_OK;
}

/* Reads an optional token id; *id keeps its default when the key is absent. */
static int load_id(const ss_tokenizer *t, const ss_gguf *g, const char *key, int32_t *id) {
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

static void set_eog(ss_tokenizer *t, int32_t id) {
  if (id >= 0 && id < t->n_vocab) t->eog[id >> 3] |= (uint8_t)(1u << (id & 7));
}

typedef struct special_key {
  uint32_t len;
  int32_t id;
} special_key;

static int cmp_special(const void *a, const void *b) {
  const special_key *x = a, *y = b;
  if (x->len != y->len) return x->len > y->len ? -1 : 1;
  return (x->id > y->id) - (x->id < y->id);
}

static int build_specials(ss_tokenizer *t) {
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

static void build_byte_tokens(ss_tokenizer *t) {
  for (int b = 0; b < 256; b++) {
    char c[4];
    int n = ss_utf8_encode(ss_gpt2_byte_to_cp((uint8_t)b), c);
    memcpy(t->gpt2_char[b], c, (size_t)n); /* at most U+0143: 2 bytes */
    t->gpt2_nbytes[b] = (uint8_t)n;
    if (t->kind == SS_TOK_BPE) {
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

int ss_tokenizer_load(const ss_gguf *g, ss_tokenizer **out) {
  *out = NULL;
  ss_tokenizer *t = calloc(1, sizeof *t);
  if (!t) return ss_error(SS_ERR_NOMEM, "tokenizer: out of memory");
  int rc;
  ss_gguf_str model;
  if ((rc = ss_gguf_get_str(g, "tokenizer.ggml.model", true, &model))) goto fail;
  if (model.len == 4 && memcmp(model.ptr, "gpt2", 4) == 0) {
    t->kind = SS_TOK_BPE;
  } else if (model.len == 5 && memcmp(model.ptr, "llama", 5) == 0) {
    t->kind = SS_TOK_SPM;
  } else {
    rc = ss_error(SS_ERR_UNSUPPORTED, "%s: tokenizer.ggml.model = '%.*s' is not supported "
                  "(supported: gpt2, llama)", g->path, (int)(model.len > 64 ? 64 : model.len),
                  model.ptr);
    goto fail;
  }
  if ((rc = load_vocab(t, g))) goto fail;

  bool add_bos_default;
  if (t->kind == SS_TOK_BPE) {
    if ((rc = load_merges(t, g))) goto fail;
    ss_gguf_str pre;
    rc = ss_gguf_get_str(g, "tokenizer.ggml.pre", false, &pre);
    if (rc < 0) goto fail;
    if ((rc = ss_tok_bpe_init(t, g->path, rc == SS_OK ? pre.ptr : NULL, rc == SS_OK ? pre.len : 0,
                              &add_bos_default)))
      goto fail;
    t->bos = t->eos = t->unk = -1;
    t->add_space_prefix = false;
  } else {
    /* tokenizer.ggml.pre does not apply to SentencePiece. */
    snprintf(t->describe, sizeof t->describe, "SentencePiece-style (llama)");
    add_bos_default = true;
    t->bos = 1; /* llama.cpp's defaults for SPM vocabularies */
    t->eos = 2;
    t->unk = 0;
    t->add_space_prefix = true;
  }
  t->eot = t->pad = -1;
  if ((rc = load_id(t, g, "tokenizer.ggml.bos_token_id", &t->bos)) ||
      (rc = load_id(t, g, "tokenizer.ggml.eos_token_id", &t->eos)) ||
      (rc = load_id(t, g, "tokenizer.ggml.eot_token_id", &t->eot)) ||
      (rc = load_id(t, g, "tokenizer.ggml.unknown_token_id", &t->unk)) ||
      (rc = load_id(t, g, "tokenizer.ggml.padding_token_id", &t->pad)))
    goto fail;
  t->add_bos = add_bos_default;
  if ((rc = ss_gguf_get_bool(g, "tokenizer.ggml.add_bos_token", false, &t->add_bos)) < 0) goto fail;
  if ((rc = ss_gguf_get_bool(g, "tokenizer.ggml.add_space_prefix", false, &t->add_space_prefix)) <
      0)
    goto fail;

  /* End of generation: EOS, EOT, and the tokens llama.cpp recognises by text,
   * which it also treats as control tokens whatever their stored type. */
  set_eog(t, t->eos);
  set_eog(t, t->eot);
  for (size_t i = 0; i < sizeof k_eog_texts / sizeof k_eog_texts[0]; i++) {
    int32_t id = ss_tok_lookup(t, k_eog_texts[i], strlen(k_eog_texts[i]));
    if (id < 0) continue;
    set_eog(t, id);
    t->type[id] = SS_TOKTYPE_CONTROL;
  }
  if ((rc = build_specials(t))) goto fail;
  build_byte_tokens(t);
  *out = t;
  return SS_OK;
fail:
  ss_tokenizer_free(t);
  return rc;
}

void ss_tokenizer_free(ss_tokenizer *t) {
  if (!t) return;
  ss_tok_bpe_free(t);
  hmap_free(&t->tok_map);
  hmap_free(&t->merge_map);
  free(t->text);
  free(t->text_off);
  free(t->text_len);
  free(t->score);
  free(t->type);
  free(t->eog);
  free(t->special);
  free(t->merge_text);
  free(t->merges);
  free(t);
}

/* ------------------------------------------------------------------------ */
/* Accessors                                                                  */

ss_tok_kind ss_tokenizer_kind(const ss_tokenizer *t) { return t->kind; }
const char *ss_tokenizer_describe(const ss_tokenizer *t) { return t->describe; }
int32_t ss_tokenizer_n_vocab(const ss_tokenizer *t) { return t->n_vocab; }
int32_t ss_tokenizer_bos(const ss_tokenizer *t) { return t->bos; }
int32_t ss_tokenizer_eos(const ss_tokenizer *t) { return t->eos; }
bool ss_tokenizer_add_bos(const ss_tokenizer *t) { return t->add_bos; }

bool ss_tokenizer_is_eog(const ss_tokenizer *t, int32_t id) {
  return id >= 0 && id < t->n_vocab && (t->eog[id >> 3] >> (id & 7) & 1);
}

ss_tok_type ss_tokenizer_token_type(const ss_tokenizer *t, int32_t id) {
  return id >= 0 && id < t->n_vocab ? (ss_tok_type)t->type[id] : SS_TOKTYPE_UNDEFINED;
}

const char *ss_tokenizer_token_text(const ss_tokenizer *t, int32_t id) {
  return id >= 0 && id < t->n_vocab ? t->text + t->text_off[id] : NULL;
}

int32_t ss_tokenizer_find(const ss_tokenizer *t, const char *text) {
  return text ? ss_tok_lookup(t, text, strlen(text)) : -1;
}

/* ------------------------------------------------------------------------ */
/* Encoding                                                                   */

/* A stretch of the input: raw text, or one special token found in it. */
typedef struct fragment {
  int32_t id; /* -1 for raw text */
  size_t off, len;
} fragment;

typedef struct fragments {
  fragment *p;
  size_t n, cap;
} fragments;

static int frag_push(fragments *v, int32_t id, size_t off, size_t len) {
  if (v->n == v->cap) {
    size_t cap = v->cap ? 2 * v->cap : 16;
    fragment *p = realloc(v->p, cap * sizeof *p);
    if (!p) return ss_error(SS_ERR_NOMEM, "tokenizer: out of memory");
    v->p = p;
    v->cap = cap;
  }
  v->p[v->n++] = (fragment){id, off, len};
  return SS_OK;
}

/* llama.cpp's tokenizer_st_partition: each special token in turn (longest
 * first) splits every raw fragment at each of its occurrences. */
static int partition(const ss_tokenizer *t, const char *text, size_t len, bool parse_special,
                     fragments *a) {
  fragments b = {0};
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
      fragment f = a->p[i];
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
    fragments tmp = *a;
    *a = b;
    b = tmp;
  }
  free(b.p);
  return rc;
}

int ss_tokenizer_encode(const ss_tokenizer *t, const char *text, size_t len, bool add_bos,
                        bool parse_special, int32_t **ids, size_t *n_ids) {
  *ids = NULL;
  *n_ids = 0;
  if (!text && len) return ss_error(SS_ERR_INVALID, "tokenizer: NULL text of %zu bytes", len);
  if (add_bos && t->bos < 0)
    return ss_error(SS_ERR_INVALID, "tokenizer: a BOS token was requested but the vocabulary "
                    "has none (tokenizer.ggml.bos_token_id)");
  ss_tok_ids v = {0};
  fragments frags = {0};
  int rc = ss_tok_ids_push(&v, 0); /* reserve, so that *ids is never NULL */
  v.n = 0;
  if (!rc && add_bos) rc = ss_tok_ids_push(&v, t->bos);
  if (!rc && len > 0) rc = partition(t, text, len, parse_special, &frags);

  /* SPM puts a space before text that starts the input or follows a special
   * token (llama.cpp's is_prev_special). */
  bool prev_special = true;
  for (size_t i = 0; i < frags.n && !rc; i++) {
    const fragment *f = &frags.p[i];
    if (f->id >= 0) {
      rc = ss_tok_ids_push(&v, f->id);
      prev_special = true;
      continue;
    }
    if (t->kind == SS_TOK_SPM)
      rc = ss_tok_spm_encode(t, text + f->off, f->len, t->add_space_prefix && prev_special, &v);
    else
      rc = ss_tok_bpe_encode(t, text + f->off, f->len, &v);
    prev_special = false;
  }
  free(frags.p);
  if (rc) {
    free(v.p);
    return rc;
  }
  *ids = v.p;
  *n_ids = v.n;
  return SS_OK;
}

/* ------------------------------------------------------------------------ */
/* Detokenization                                                             */

/* Writes what fits into buf[0..cap) and counts everything. */
typedef struct sink {
  char *buf;
  size_t cap, n;
} sink;

static void sink_put(sink *s, const char *p, size_t n) {
  if (s->n < s->cap) {
    size_t k = s->cap - s->n < n ? s->cap - s->n : n;
    memcpy(s->buf + s->n, p, k);
  }
  s->n += n;
}

static int hex_digit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;
}

size_t ss_tokenizer_piece(const ss_tokenizer *t, int32_t id, bool special, char *buf, size_t cap) {
  if (id < 0 || id >= t->n_vocab) return 0;
  sink s = {buf, buf ? cap : 0, 0};
  const char *text = t->text + t->text_off[id];
  const size_t len = t->text_len[id];
  switch ((ss_tok_type)t->type[id]) {
  case SS_TOKTYPE_CONTROL:
  case SS_TOKTYPE_UNKNOWN:
    if (special) sink_put(&s, text, len);
    break;
  case SS_TOKTYPE_USER_DEFINED:
    sink_put(&s, text, len);
    break;
  case SS_TOKTYPE_BYTE:
    if (len == 6 && memcmp(text, "<0x", 3) == 0 && text[5] == '>' && hex_digit(text[3]) >= 0 &&
        hex_digit(text[4]) >= 0) {
      char byte = (char)(hex_digit(text[3]) << 4 | hex_digit(text[4]));
      sink_put(&s, &byte, 1);
    } else {
      sink_put(&s, text, len);
    }
    break;
  case SS_TOKTYPE_NORMAL:
    if (t->kind == SS_TOK_SPM) {
      for (size_t i = 0; i < len;) {
        if (len - i >= 3 && memcmp(text + i, SPM_SPACE, 3) == 0) {
          sink_put(&s, " ", 1);
          i += 3;
        } else {
          sink_put(&s, text + i, 1);
          i++;
        }
      }
    } else {
      /* GPT-2 alphabet back to bytes; a character outside it is kept as is. */
      for (size_t i = 0; i < len;) {
        int n = ss_utf8_seq_nbytes((const uint8_t *)text + i, len - i);
        int b = n > 0 ? ss_gpt2_cp_to_byte(ss_utf8_decode((const uint8_t *)text + i, n)) : -1;
        if (b >= 0) {
          char c = (char)b;
          sink_put(&s, &c, 1);
        } else {
          sink_put(&s, text + i, (size_t)(n > 0 ? n : 1));
        }
        i += (size_t)(n > 0 ? n : 1);
      }
    }
    break;
  default: /* undefined and unused tokens render as nothing, as in llama.cpp */
    break;
  }
  return s.n;
}

void ss_detok_init(ss_detok *d, const ss_tokenizer *t, bool special) {
  memset(d, 0, sizeof *d);
  d->tok = t;
  d->special = special;
  d->at_start = true;
}

/* Output of one push: whole characters only, and once one does not fit (a
 * pathological token), nothing more, so the text stays valid UTF-8. */
typedef struct detok_out {
  char *buf;
  size_t room, n; /* room: cap - 1, keeping a byte for the NUL */
  bool full;
} detok_out;

static void out_char(detok_out *o, const char *p, size_t n) {
  if (o->full || o->n + n > o->room) {
    o->full = true;
    return;
  }
  memcpy(o->buf + o->n, p, n);
  o->n += n;
}

static void feed_byte(ss_detok *d, detok_out *o, uint8_t b) {
  for (;;) {
    if (d->n_pending == 0) {
      if (b < 0x80) {
        out_char(o, (const char *)&b, 1);
      } else if (ss_utf8_lead_nbytes(b) > 0) {
        d->pending[0] = b;
        d->n_pending = 1;
      } else {
        out_char(o, SS_UTF8_REPLACEMENT, SS_UTF8_REPLACEMENT_NBYTES);
      }
      return;
    }
    uint8_t lead = d->pending[0];
    if (ss_utf8_cont_ok(lead, d->n_pending, b)) {
      d->pending[d->n_pending++] = b;
      if (d->n_pending == ss_utf8_lead_nbytes(lead)) {
        out_char(o, (const char *)d->pending, (size_t)d->n_pending);
        d->n_pending = 0;
      }
      return;
    }
    /* The held bytes can never complete: one U+FFFD for them, then look at
     * b afresh. */
    out_char(o, SS_UTF8_REPLACEMENT, SS_UTF8_REPLACEMENT_NBYTES);
    d->n_pending = 0;
  }
}

size_t ss_detok_push(ss_detok *d, int32_t id, char *out, size_t cap) {
  if (!out || cap == 0) return 0;
  detok_out o = {out, cap - 1, 0, false};
  char piece[SS_DETOK_MIN_CAP];
  size_t n = ss_tokenizer_piece(d->tok, id, d->special, piece, sizeof piece);
  if (n > sizeof piece) n = sizeof piece; /* a pathological token is cut short */
  const char *p = piece;
  if (d->at_start && n > 0) {
    if (d->tok->kind == SS_TOK_SPM && d->tok->add_space_prefix && p[0] == ' ') {
      p++;
      n--;
    }
    d->at_start = false;
  }
  for (size_t i = 0; i < n; i++) feed_byte(d, &o, (uint8_t)p[i]);
  out[o.n] = 0;
  return o.n;
}

size_t ss_detok_flush(ss_detok *d, char *out, size_t cap) {
  if (!out || cap == 0) {
    d->n_pending = 0;
    return 0;
  }
  detok_out o = {out, cap - 1, 0, false};
  if (d->n_pending > 0) out_char(&o, SS_UTF8_REPLACEMENT, SS_UTF8_REPLACEMENT_NBYTES);
  d->n_pending = 0;
  out[o.n] = 0;
  return o.n;
}
