/* Tokenizers from a Hugging Face model folder: tokenizer.json (byte-level
 * BPE), tokenizer.model (SentencePiece's protobuf) or tokenizer.tok.json
 * (tiktoken ranks, as Grok-2 ships them).  Each is translated
 * into the tokenizer.ggml.* metadata the GGUF path reads, held in a GGUF
 * structure built in memory, so the one tokenizer core (tokenizer.c and its
 * encoders, checked against llama.cpp) serves both formats. */
#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "runtime/base/status.h"
#include "runtime/base/utf8.h"
#include "runtime/formats/gguf.h"
#include "runtime/tokenizer/tokenizer.h"
#include "runtime/tokenizer/tokenizer_internal.h"

/* ------------------------------------------------------------------------ */
/* A metadata-only GGUF built in memory                                       */

/* Values point into each other's arrays while being filled, so the key table
 * is allocated once with room for every key we write. */
#define META_MAX_KEYS 32

typedef struct meta {
  ss_gguf g;
  void **owned; /* buffers the values point into */
  size_t n_owned, cap_owned;
} meta;

static void *own(meta *m, void *p) {
  if (!p) return NULL;
  if (m->n_owned == m->cap_owned) {
    size_t cap = m->cap_owned ? 2 * m->cap_owned : 1024;
    void **o = realloc(m->owned, cap * sizeof *o);
    if (!o) {
      free(p);
      return NULL;
    }
    m->owned = o;
    m->cap_owned = cap;
  }
  m->owned[m->n_owned++] = p;
  return p;
}

static ss_gguf_value *meta_add(meta *m, const char *key, ss_gguf_type type) {
  if (!m->g.kv) m->g.kv = calloc(META_MAX_KEYS, sizeof *m->g.kv);
  if (!m->g.kv) return NULL;
  SS_ASSERT(m->g.n_kv < META_MAX_KEYS);
  ss_gguf_kv *e = &m->g.kv[m->g.n_kv];
  memset(e, 0, sizeof *e);
  e->key = strdup(key);
  if (!e->key) return NULL;
  m->g.n_kv++;
  e->value.type = type;
  return &e->value;
}

static int meta_str(meta *m, const char *key, const char *s) {
  ss_gguf_value *v = meta_add(m, key, SS_GGUF_STRING);
  char *c = v ? own(m, strdup(s)) : NULL;
  if (!c) return ss_error(SS_ERR_NOMEM, "out of memory");
  v->str = (ss_gguf_str){c, strlen(c)};
  return SS_OK;
}

static int meta_int(meta *m, const char *key, int64_t x) {
  ss_gguf_value *v = meta_add(m, key, SS_GGUF_INT64);
  if (!v) return ss_error(SS_ERR_NOMEM, "out of memory");
  v->i64 = x;
  return SS_OK;
}

static int meta_bool(meta *m, const char *key, bool b) {
  ss_gguf_value *v = meta_add(m, key, SS_GGUF_BOOL);
  if (!v) return ss_error(SS_ERR_NOMEM, "out of memory");
  v->b = b;
  return SS_OK;
}

/* An array of n strings whose texts the caller has placed in owned memory. */
static ss_gguf_value *meta_strings(meta *m, const char *key, uint64_t n) {
  ss_gguf_value *v = meta_add(m, key, SS_GGUF_ARRAY);
  if (!v) return NULL;
  v->arr.elem_type = SS_GGUF_STRING;
  v->arr.count = n;
  v->arr.items = calloc(n ? n : 1, sizeof *v->arr.items); /* freed by ss_gguf_close */
  if (!v->arr.items) return NULL;
  for (uint64_t i = 0; i < n; i++) v->arr.items[i].type = SS_GGUF_STRING;
  return v;
}

/* A packed array of n fixed-size elements; returns the raw buffer to fill. */
static void *meta_raw(meta *m, const char *key, ss_gguf_type et, uint64_t n) {
  ss_gguf_value *v = meta_add(m, key, SS_GGUF_ARRAY);
  void *raw = v ? own(m, calloc(n ? n : 1, ss_gguf_type_nbytes(et))) : NULL;
  if (!raw) return NULL;
  v->arr.elem_type = et;
  v->arr.count = n;
  v->arr.raw = raw;
  return raw;
}

static void meta_free(meta *m) {
  for (uint64_t i = 0; i < m->g.n_kv; i++) {
    free(m->g.kv[i].key);
    if (m->g.kv[i].value.type == SS_GGUF_ARRAY) free(m->g.kv[i].value.arr.items);
  }
  free(m->g.kv);
  free(m->g.path);
  for (size_t i = 0; i < m->n_owned; i++) free(m->owned[i]);
  free(m->owned);
}

/* ------------------------------------------------------------------------ */
/* tokenizer.json                                                             */

/* Hugging Face's Llama 3 split pattern (tokenizer.json of Llama 3 models). */
static const char k_llama3_hf_regex[] =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+"
    "[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

/* The tokenizer.ggml.pre name for a byte-level pre-tokenizer we know, or NULL. */
static const char *pre_name(json_t *pre) {
  const char *type = json_string_value(json_object_get(pre, "type"));
  if (!type) return NULL;
  if (strcmp(type, "ByteLevel") == 0) {
    json_t *ur = json_object_get(pre, "use_regex");
    return ur == NULL || json_is_true(ur) ? "gpt2" : NULL;
  }
  if (strcmp(type, "Sequence") != 0) return NULL;
  json_t *items = json_object_get(pre, "pretokenizers");
  if (!json_is_array(items) || json_array_size(items) != 2) return NULL;
  json_t *a = json_array_get(items, 0), *b = json_array_get(items, 1);
  const char *ta = json_string_value(json_object_get(a, "type"));
  const char *tb = json_string_value(json_object_get(b, "type"));
  if (!ta || !tb || strcmp(tb, "ByteLevel") != 0) return NULL;
  json_t *b_re = json_object_get(b, "use_regex");
  if (strcmp(ta, "Digits") == 0 && json_is_true(json_object_get(a, "individual_digits")) &&
      (b_re == NULL || json_is_true(b_re)))
    return "smollm"; /* StarCoder / SmolLM: digits one by one, then GPT-2's split */
  if (strcmp(ta, "Split") == 0 && json_is_false(b_re)) {
    const char *re = json_string_value(json_object_get(json_object_get(a, "pattern"), "Regex"));
    if (re && strcmp(re, k_llama3_hf_regex) == 0) return "llama-bpe";
  }
  return NULL;
}

static int load_tokenizer_json(meta *m, const char *path) {
  json_error_t err;
  json_t *root = json_load_file(path, 0, &err);
  if (!root)
    return ss_error(SS_ERR_FORMAT, "%s: not valid JSON (line %d: %s)", path, err.line, err.text);
  int rc = SS_OK;
  json_t *model = json_object_get(root, "model");
  const char *mtype = json_string_value(json_object_get(model, "type"));
  json_t *vocab = json_object_get(model, "vocab"), *merges = json_object_get(model, "merges");
  json_t *added = json_object_get(root, "added_tokens");
  const char *pre = pre_name(json_object_get(root, "pre_tokenizer"));
  if (!mtype || strcmp(mtype, "BPE") != 0 || !json_is_object(vocab) || !json_is_array(merges)) {
    rc = ss_error(SS_ERR_UNSUPPORTED, "%s: model.type must be \"BPE\" with a vocab object and a "
                  "merges list (use tokenizer.model for SentencePiece models)", path);
    goto done;
  }
  if (!pre) {
    rc = ss_error(SS_ERR_UNSUPPORTED, "%s: pre_tokenizer is not a byte-level one we know "
                  "(ByteLevel; Digits + ByteLevel; the Llama 3 Split + ByteLevel)", path);
    goto done;
  }
  /* Ids: the vocab's and the added tokens'; gaps become unused [PAD<id>]. */
  int64_t n = 0;
  const char *text;
  json_t *v;
  json_object_foreach(vocab, text, v) {
    if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) >= INT32_MAX) {
      rc = ss_error(SS_ERR_FORMAT, "%s: model.vocab['%.64s'] is not a token id", path, text);
      goto done;
    }
    if (json_integer_value(v) + 1 > n) n = json_integer_value(v) + 1;
  }
  size_t i;
  json_t *a;
  json_array_foreach(added, i, a) {
    json_t *id = json_object_get(a, "id");
    if (!json_is_integer(id) || json_integer_value(id) < 0 || json_integer_value(id) >= INT32_MAX ||
        !json_is_string(json_object_get(a, "content"))) {
      rc = ss_error(SS_ERR_FORMAT, "%s: added_tokens[%zu] needs an 'id' and a 'content'", path, i);
      goto done;
    }
    if (json_integer_value(id) + 1 > n) n = json_integer_value(id) + 1;
  }
  if (n == 0) {
    rc = ss_error(SS_ERR_FORMAT, "%s: the vocabulary is empty", path);
    goto done;
  }
  ss_gguf_value *tokens = meta_strings(m, "tokenizer.ggml.tokens", (uint64_t)n);
  int32_t *types = tokens ? meta_raw(m, "tokenizer.ggml.token_type", SS_GGUF_INT32, (uint64_t)n) : NULL;
  if (!types) {
    rc = ss_error(SS_ERR_NOMEM, "out of memory");
    goto done;
  }
  json_object_foreach(vocab, text, v) {
    int64_t id = json_integer_value(v);
    if (tokens->arr.items[id].str.ptr) {
      rc = ss_error(SS_ERR_FORMAT, "%s: token id %" PRId64 " appears twice in model.vocab", path, id);
      goto done;
    }
    char *c = own(m, strdup(text));
    if (!c) {
      rc = ss_error(SS_ERR_NOMEM, "out of memory");
      goto done;
    }
    tokens->arr.items[id].str = (ss_gguf_str){c, strlen(c)};
    types[id] = SS_TOKTYPE_NORMAL;
  }
  json_array_foreach(added, i, a) {
    int64_t id = json_integer_value(json_object_get(a, "id"));
    const char *c = json_string_value(json_object_get(a, "content"));
    char *copy = own(m, strdup(c));
    if (!copy) {
      rc = ss_error(SS_ERR_NOMEM, "out of memory");
      goto done;
    }
    tokens->arr.items[id].str = (ss_gguf_str){copy, strlen(copy)};
    types[id] = json_is_true(json_object_get(a, "special")) ? SS_TOKTYPE_CONTROL
                                                            : SS_TOKTYPE_USER_DEFINED;
  }
  for (int64_t id = 0; id < n; id++)
    if (!tokens->arr.items[id].str.ptr) {
      char *c = own(m, malloc(32));
      if (!c) {
        rc = ss_error(SS_ERR_NOMEM, "out of memory");
        goto done;
      }
      snprintf(c, 32, "[PAD%" PRId64 "]", id);
      tokens->arr.items[id].str = (ss_gguf_str){c, strlen(c)};
      types[id] = SS_TOKTYPE_UNUSED;
    }
  /* Merges: "a b" strings, or [a, b] pairs in newer files. */
  const size_t nm = json_array_size(merges);
  ss_gguf_value *mv = meta_strings(m, "tokenizer.ggml.merges", nm);
  if (!mv) {
    rc = ss_error(SS_ERR_NOMEM, "out of memory");
    goto done;
  }
  json_array_foreach(merges, i, a) {
    char *c = NULL;
    if (json_is_string(a)) {
      c = strdup(json_string_value(a));
    } else if (json_is_array(a) && json_array_size(a) == 2 &&
               json_is_string(json_array_get(a, 0)) && json_is_string(json_array_get(a, 1))) {
      const char *l = json_string_value(json_array_get(a, 0)), *r = json_string_value(json_array_get(a, 1));
      size_t len = strlen(l) + strlen(r) + 2;
      c = malloc(len);
      if (c) snprintf(c, len, "%s %s", l, r);
    } else {
      rc = ss_error(SS_ERR_FORMAT, "%s: model.merges[%zu] is neither \"a b\" nor [a, b]", path, i);
      goto done;
    }
    if (!own(m, c)) {
      rc = ss_error(SS_ERR_NOMEM, "out of memory");
      goto done;
    }
    mv->arr.items[i].str = (ss_gguf_str){c, strlen(c)};
  }
  if ((rc = meta_str(m, "tokenizer.ggml.model", "gpt2")) ||
      (rc = meta_str(m, "tokenizer.ggml.pre", pre)))
    goto done;
done:
  json_decref(root);
  return rc;
}

/* ------------------------------------------------------------------------ */
/* tokenizer.model (SentencePiece ModelProto, protobuf wire format)           */

typedef struct pb {
  const uint8_t *p, *end;
} pb;

static bool pb_varint(pb *b, uint64_t *v) {
  *v = 0;
  for (int shift = 0; shift < 64; shift += 7) {
    if (b->p >= b->end) return false;
    uint8_t c = *b->p++;
    *v |= (uint64_t)(c & 0x7f) << shift;
    if (!(c & 0x80)) return true;
  }
  return false;
}

/* Reads a field's key and, for length-delimited fields, its extent; skips
 * fixed-size values into *val_bits.  False on truncation. */
static bool pb_field(pb *b, uint32_t *field, int *wire, pb *sub, uint64_t *val) {
  uint64_t key;
  if (!pb_varint(b, &key)) return false;
  *field = (uint32_t)(key >> 3);
  *wire = (int)(key & 7);
  switch (*wire) {
  case 0: return pb_varint(b, val);
  case 1:
    if (b->end - b->p < 8) return false;
    memcpy(val, b->p, 8);
    b->p += 8;
    return true;
  case 5: {
    if (b->end - b->p < 4) return false;
    uint32_t x;
    memcpy(&x, b->p, 4);
    *val = x;
    b->p += 4;
    return true;
  }
  case 2: {
    uint64_t len;
    if (!pb_varint(b, &len) || len > (uint64_t)(b->end - b->p)) return false;
    sub->p = b->p;
    sub->end = b->p + len;
    b->p += len;
    return true;
  }
  default: return false;
  }
}

static int load_tokenizer_model(meta *m, const char *path) {
  FILE *f = fopen(path, "rb");
  if (!f) return ss_error(SS_ERR_IO, "%s: cannot open", path);
  fseek(f, 0, SEEK_END);
  long size = ftell(f);
  fseek(f, 0, SEEK_SET);
  if (size <= 0 || size > (256l << 20)) {
    fclose(f);
    return ss_error(SS_ERR_FORMAT, "%s: %ld bytes is not a plausible SentencePiece model", path, size);
  }
  uint8_t *buf = own(m, malloc((size_t)size));
  if (!buf || fread(buf, 1, (size_t)size, f) != (size_t)size) {
    fclose(f);
    return ss_error(SS_ERR_IO, "%s: cannot read", path);
  }
  fclose(f);
  /* Two passes over the pieces: count, then fill. */
  int64_t n = 0, unk = 0, bos = 1, eos = 2, pad = -1;
  bool add_prefix = true;
  for (int pass = 0; pass < 2; pass++) {
    ss_gguf_value *tokens = NULL;
    float *scores = NULL;
    int32_t *types = NULL;
    if (pass == 1) {
      tokens = meta_strings(m, "tokenizer.ggml.tokens", (uint64_t)n);
      scores = tokens ? meta_raw(m, "tokenizer.ggml.scores", SS_GGUF_FLOAT32, (uint64_t)n) : NULL;
      types = scores ? meta_raw(m, "tokenizer.ggml.token_type", SS_GGUF_INT32, (uint64_t)n) : NULL;
      if (!types) return ss_error(SS_ERR_NOMEM, "out of memory");
    }
    pb b = {buf, buf + size};
    int64_t k = 0;
    while (b.p < b.end) {
      uint32_t field;
      int wire;
      pb sub;
      uint64_t val;
      if (!pb_field(&b, &field, &wire, &sub, &val))
        return ss_error(SS_ERR_FORMAT, "%s: truncated or malformed protobuf at byte %td", path,
                        b.p - buf);
      if (field == 1 && wire == 2) { /* SentencePiece piece */
        if (pass == 1) {
          types[k] = SS_TOKTYPE_NORMAL;
          while (sub.p < sub.end) {
            uint32_t pf;
            int pw;
            pb s2;
            uint64_t pv;
            if (!pb_field(&sub, &pf, &pw, &s2, &pv))
              return ss_error(SS_ERR_FORMAT, "%s: piece %" PRId64 " is malformed", path, k);
            if (pf == 1 && pw == 2) {
              char *c = own(m, malloc((size_t)(s2.end - s2.p) + 1));
              if (!c) return ss_error(SS_ERR_NOMEM, "out of memory");
              memcpy(c, s2.p, (size_t)(s2.end - s2.p));
              c[s2.end - s2.p] = 0;
              tokens->arr.items[k].str = (ss_gguf_str){c, (uint64_t)(s2.end - s2.p)};
            } else if (pf == 2 && pw == 5) {
              uint32_t bits = (uint32_t)pv;
              memcpy(&scores[k], &bits, 4);
            } else if (pf == 3 && pw == 0) {
              /* SentencePiece's Type enum has GGUF's token-type numbering. */
              types[k] = pv >= 1 && pv <= 6 ? (int32_t)pv : SS_TOKTYPE_NORMAL;
            }
          }
          if (!tokens->arr.items[k].str.ptr)
            return ss_error(SS_ERR_FORMAT, "%s: piece %" PRId64 " has no text", path, k);
        }
        k++;
      } else if (field == 2 && wire == 2 && pass == 0) { /* TrainerSpec */
        while (sub.p < sub.end) {
          uint32_t tf;
          int tw;
          pb s2;
          uint64_t tv;
          if (!pb_field(&sub, &tf, &tw, &s2, &tv))
            return ss_error(SS_ERR_FORMAT, "%s: trainer_spec is malformed", path);
          /* unk_id 40, bos_id 41, eos_id 42, pad_id 43 (sentencepiece_model.proto);
           * int32 fields, so -1 arrives as a 64-bit two's complement varint. */
          if (tw == 0 && tf >= 40 && tf <= 43) {
            int64_t id = (int64_t)tv;
            if (tf == 40) unk = id;
            if (tf == 41) bos = id;
            if (tf == 42) eos = id;
            if (tf == 43) pad = id;
          }
        }
      } else if (field == 3 && wire == 2 && pass == 0) { /* NormalizerSpec */
        while (sub.p < sub.end) {
          uint32_t nf;
          int nw;
          pb s2;
          uint64_t nv;
          if (!pb_field(&sub, &nf, &nw, &s2, &nv))
            return ss_error(SS_ERR_FORMAT, "%s: normalizer_spec is malformed", path);
          if (nf == 3 && nw == 0) add_prefix = nv != 0; /* add_dummy_prefix */
        }
      }
    }
    if (pass == 0) {
      n = k;
      if (n == 0 || n >= INT32_MAX) return ss_error(SS_ERR_FORMAT, "%s: no pieces", path);
    }
  }
  int rc;
  if ((rc = meta_str(m, "tokenizer.ggml.model", "llama")) ||
      (rc = meta_bool(m, "tokenizer.ggml.add_space_prefix", add_prefix)))
    return rc;
  if (unk >= 0 && unk < n && (rc = meta_int(m, "tokenizer.ggml.unknown_token_id", unk))) return rc;
  if (bos >= 0 && bos < n && (rc = meta_int(m, "tokenizer.ggml.bos_token_id", bos))) return rc;
  if (eos >= 0 && eos < n && (rc = meta_int(m, "tokenizer.ggml.eos_token_id", eos))) return rc;
  if (pad >= 0 && pad < n && (rc = meta_int(m, "tokenizer.ggml.padding_token_id", pad))) return rc;
  return SS_OK;
}

/* ------------------------------------------------------------------------ */
/* tokenizer.tok.json (tiktoken ranks)                                        */

/* The split of word_split "V1": Llama 3's with digits one by one. */
static const char k_tiktoken_v1_regex[] =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+"
    "[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

/* One entry of regular_tokens / special_tokens: {"bytes": [0-255, ...],
 * "token": id}.  *bytes is malloc'ed (n bytes, NUL after them). */
static int tok_entry(const char *path, const char *list, size_t i, json_t *e, uint8_t **bytes,
                     size_t *n, int64_t *id) {
  json_t *b = json_object_get(e, "bytes"), *t = json_object_get(e, "token");
  if (!json_is_array(b) || json_array_size(b) == 0 || !json_is_integer(t) ||
      json_integer_value(t) < 0 || json_integer_value(t) >= INT32_MAX)
    return ss_error(SS_ERR_FORMAT, "%s: %s[%zu] needs a non-empty 'bytes' list and a 'token' id "
                    "(0 to %d)", path, list, i, INT32_MAX - 1);
  *n = json_array_size(b);
  *id = json_integer_value(t);
  if (!(*bytes = malloc(*n + 1))) return ss_error(SS_ERR_NOMEM, "out of memory");
  for (size_t k = 0; k < *n; k++) {
    json_t *x = json_array_get(b, k);
    if (!json_is_integer(x) || json_integer_value(x) < 0 || json_integer_value(x) > 255) {
      free(*bytes);
      return ss_error(SS_ERR_FORMAT, "%s: %s[%zu].bytes[%zu] is not a byte (0 to 255)", path,
                      list, i, k);
    }
    (*bytes)[k] = (uint8_t)json_integer_value(x);
  }
  (*bytes)[*n] = 0;
  return SS_OK;
}

static int load_tok_json(meta *m, const char *path) {
  json_error_t err;
  json_t *root = json_load_file(path, 0, &err);
  if (!root)
    return ss_error(SS_ERR_FORMAT, "%s: not valid JSON (line %d: %s)", path, err.line, err.text);
  int rc = SS_OK;
  json_t *regular = json_object_get(root, "regular_tokens");
  json_t *special = json_object_get(root, "special_tokens");
  const char *split = json_string_value(json_object_get(root, "word_split"));
  const char *pat = json_string_value(json_object_get(root, "pat_str"));
  static const char *const lists[2] = {"regular_tokens", "special_tokens"};
  json_t *arrays[2] = {regular, special};
  if (!json_is_array(regular) || json_array_size(regular) == 0 ||
      (special && !json_is_array(special))) {
    rc = ss_error(SS_ERR_FORMAT, "%s: needs a non-empty 'regular_tokens' list (and "
                  "'special_tokens' a list)", path);
    goto done;
  }
  if (!pat) {
    if (split && strcmp(split, "V1") == 0) {
      pat = k_tiktoken_v1_regex;
    } else {
      rc = ss_error(SS_ERR_UNSUPPORTED, "%s: word_split '%.32s' is not supported (supported: V1; "
                    "or a pat_str)", path, split ? split : "(missing)");
      goto done;
    }
  }
  int64_t n = 0;
  for (int l = 0; l < 2; l++) {
    size_t i;
    json_t *e;
    json_array_foreach(arrays[l], i, e) {
      json_t *t = json_object_get(e, "token");
      if (json_is_integer(t) && json_integer_value(t) >= n && json_integer_value(t) < INT32_MAX)
        n = json_integer_value(t) + 1;
    }
  }
  ss_gguf_value *tokens = meta_strings(m, "tokenizer.ggml.tokens", (uint64_t)n);
  int32_t *types =
      tokens ? meta_raw(m, "tokenizer.ggml.token_type", SS_GGUF_INT32, (uint64_t)n) : NULL;
  if (!types) {
    rc = ss_error(SS_ERR_NOMEM, "out of memory");
    goto done;
  }
  for (int l = 0; l < 2 && rc == SS_OK; l++) {
    size_t i;
    json_t *e;
    json_array_foreach(arrays[l], i, e) {
      uint8_t *bytes = NULL;
      size_t nb = 0;
      int64_t id = 0;
      if ((rc = tok_entry(path, lists[l], i, e, &bytes, &nb, &id))) break;
      if (tokens->arr.items[id].str.ptr) {
        free(bytes);
        rc = ss_error(SS_ERR_FORMAT, "%s: %s[%zu]: token id %" PRId64 " appears twice", path,
                      lists[l], i, id);
        break;
      }
      char *text = NULL;
      size_t tn = nb;
      if (l == 0) {
        /* Regular tokens are stored in the GPT-2 byte alphabet, as a
         * tokenizer.json vocabulary is (at most 2 UTF-8 bytes per byte). */
        text = nb <= SIZE_MAX / 2 - 1 ? malloc(2 * nb + 1) : NULL;
        tn = 0;
        for (size_t k = 0; text && k < nb; k++)
          tn += (size_t)ss_utf8_encode(ss_gpt2_byte_to_cp(bytes[k]), text + tn);
        if (text) text[tn] = 0;
        free(bytes);
      } else {
        text = (char *)bytes;
      }
      if (!own(m, text)) {
        rc = ss_error(SS_ERR_NOMEM, "out of memory");
        break;
      }
      tokens->arr.items[id].str = (ss_gguf_str){text, tn};
      types[id] = l == 0 ? SS_TOKTYPE_NORMAL : SS_TOKTYPE_CONTROL;
    }
  }
  for (int64_t id = 0; id < n && rc == SS_OK; id++)
    if (!tokens->arr.items[id].str.ptr) {
      char *c = own(m, malloc(32));
      if (!c) {
        rc = ss_error(SS_ERR_NOMEM, "out of memory");
        break;
      }
      snprintf(c, 32, "[PAD%" PRId64 "]", id);
      tokens->arr.items[id].str = (ss_gguf_str){c, strlen(c)};
      types[id] = SS_TOKTYPE_UNUSED;
    }
  if (rc == SS_OK && !(rc = meta_str(m, "tokenizer.ggml.model", "tiktoken")))
    rc = meta_str(m, "tokenizer.tiktoken.pat_str", pat);
done:
  json_decref(root);
  return rc;
}

/* ------------------------------------------------------------------------ */

static bool exists(const char *path) {
  struct stat st;
  return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

/* Token ids from tokenizer_config.json / config.json: bos/eos given as text
 * ("bos_token": "<s>" or {"content": "<s>"}) or as ids. */
/* The chat template, as transformers finds it: a chat_template.jinja file in
 * the folder first, else tokenizer_config.json's chat_template, a string or a
 * list of {"name", "template"} ("default" is the template; "tool_use", when
 * present, is kept as tokenizer.chat_template.tool_use, GGUF's name). */
static int hf_chat_template(meta *m, const char *dir, json_t *tc) {
  char path[4096];
  snprintf(path, sizeof path, "%s/chat_template.jinja", dir);
  if (exists(path)) {
    FILE *f = fopen(path, "rb");
    if (!f) return ss_error(SS_ERR_IO, "%s: cannot open", path);
    int64_t size = -1;
    if (fseeko(f, 0, SEEK_END) == 0) size = (int64_t)ftello(f);
    const int64_t max = 16 << 20;
    if (size < 0 || size > max || fseeko(f, 0, SEEK_SET) != 0) {
      fclose(f);
      return ss_error(SS_ERR_FORMAT, "%s: size %lld is unreadable or over %lld bytes", path,
                      (long long)size, (long long)max);
    }
    char *buf = malloc((size_t)size + 1);
    size_t got = buf ? fread(buf, 1, (size_t)size, f) : 0;
    fclose(f);
    if (!buf || got != (size_t)size) {
      free(buf);
      return ss_error(buf ? SS_ERR_IO : SS_ERR_NOMEM, "%s: cannot read %lld bytes", path, (long long)size);
    }
    buf[size] = 0;
    int rc = meta_str(m, "tokenizer.chat_template", buf);
    free(buf);
    return rc;
  }
  json_t *tmpl = json_object_get(tc, "chat_template");
  if (json_is_string(tmpl)) return meta_str(m, "tokenizer.chat_template", json_string_value(tmpl));
  if (!json_is_array(tmpl)) return SS_OK;
  size_t i;
  json_t *e;
  int rc = SS_OK;
  json_array_foreach(tmpl, i, e) {
    const char *name = json_string_value(json_object_get(e, "name"));
    const char *src = json_string_value(json_object_get(e, "template"));
    if (!name || !src)
      return ss_error(SS_ERR_FORMAT, "%s/tokenizer_config.json: chat_template[%zu] needs string "
                      "\"name\" and \"template\"", dir, i);
    if (rc == SS_OK && strcmp(name, "default") == 0) rc = meta_str(m, "tokenizer.chat_template", src);
    if (rc == SS_OK && strcmp(name, "tool_use") == 0)
      rc = meta_str(m, "tokenizer.chat_template.tool_use", src);
  }
  return rc;
}

static int add_special_ids(meta *m, const char *dir, const ss_gguf_value *tokens) {
  char path[4096];
  snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
  json_t *tc = exists(path) ? json_load_file(path, 0, NULL) : NULL;
  snprintf(path, sizeof path, "%s/config.json", dir);
  json_t *cfg = exists(path) ? json_load_file(path, 0, NULL) : NULL;
  int rc = SS_OK;
  static const char *const which[2] = {"bos", "eos"};
  for (int w = 0; w < 2 && rc == SS_OK; w++) {
    char key[64], idkey[64];
    snprintf(key, sizeof key, "%s_token", which[w]);
    snprintf(idkey, sizeof idkey, "%s_token_id", which[w]);
    int64_t id = -1;
    json_t *t = json_object_get(tc, key);
    if (json_is_object(t)) t = json_object_get(t, "content");
    if (json_is_string(t)) {
      const char *s = json_string_value(t);
      for (uint64_t i = 0; i < tokens->arr.count; i++)
        if (tokens->arr.items[i].str.len == strlen(s) &&
            memcmp(tokens->arr.items[i].str.ptr, s, strlen(s)) == 0) {
          id = (int64_t)i;
          break;
        }
    }
    json_t *cid = json_object_get(cfg, idkey);
    if (id < 0 && json_is_integer(cid)) id = json_integer_value(cid);
    if (id >= 0 && (uint64_t)id < tokens->arr.count) {
      char gk[64];
      snprintf(gk, sizeof gk, "tokenizer.ggml.%s_token_id", which[w]);
      /* A later entry for the same key would be ignored; replace instead. */
      bool replaced = false;
      for (uint64_t i = 0; i < m->g.n_kv; i++)
        if (strcmp(m->g.kv[i].key, gk) == 0) {
          m->g.kv[i].value.i64 = id;
          m->g.kv[i].value.type = SS_GGUF_INT64;
          replaced = true;
        }
      if (!replaced) rc = meta_int(m, gk, id);
    }
  }
  json_t *ab = json_object_get(tc, "add_bos_token");
  if (rc == SS_OK && json_is_boolean(ab)) rc = meta_bool(m, "tokenizer.ggml.add_bos_token", json_is_true(ab));
  if (rc == SS_OK) rc = hf_chat_template(m, dir, tc);
  json_decref(tc);
  json_decref(cfg);
  return rc;
}

int ss_tokenizer_load_hf(const char *dir, ss_tokenizer **out, char **chat_template) {
  *out = NULL;
  if (chat_template) *chat_template = NULL;
  meta m = {0};
  char json_path[4096], spm_path[4096], tok_path[4096];
  snprintf(json_path, sizeof json_path, "%s/tokenizer.json", dir);
  snprintf(spm_path, sizeof spm_path, "%s/tokenizer.model", dir);
  snprintf(tok_path, sizeof tok_path, "%s/tokenizer.tok.json", dir);
  int rc;
  /* SentencePiece models (Mixtral, Grok-1) often ship both; the protobuf is the
   * original and the one our SentencePiece encoder follows. */
  if (exists(spm_path)) {
    m.g.path = strdup(spm_path);
    rc = load_tokenizer_model(&m, spm_path);
  } else if (exists(json_path)) {
    m.g.path = strdup(json_path);
    rc = load_tokenizer_json(&m, json_path);
  } else if (exists(tok_path)) {
    m.g.path = strdup(tok_path);
    rc = load_tok_json(&m, tok_path);
  } else {
    rc = ss_error(SS_ERR_IO, "%s: no tokenizer.json, tokenizer.model or tokenizer.tok.json", dir);
  }
  if (rc == SS_OK) {
    const ss_gguf_value *tokens = ss_gguf_get(&m.g, "tokenizer.ggml.tokens");
    rc = add_special_ids(&m, dir, tokens);
  }
  if (rc == SS_OK) rc = ss_tokenizer_load(&m.g, out);
  if (rc == SS_OK && chat_template) {
    const ss_gguf_value *t = ss_gguf_get(&m.g, "tokenizer.chat_template");
    if (t) {
      *chat_template = strndup(t->str.ptr, t->str.len);
      if (!*chat_template) rc = ss_error(SS_ERR_NOMEM, "out of memory");
    }
  }
  meta_free(&m);
  return rc;
}
