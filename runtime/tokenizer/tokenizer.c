/* Tokenizer: building it from GGUF metadata, freeing it, its accessors, and the
 * encode dispatch (special tokens split out, each raw stretch handed to its
 * kind's encoder).  llama.cpp's llama-vocab.cpp is the reference throughout. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/base/status.h"
#include "runtime/tokenizer/tokenizer.h"
#include "runtime/tokenizer/tokenizer_internal.h"

/* Texts that mark a token as end-of-generation (from llama.cpp's list). */
static const char *const k_eog_texts[] = {
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>",
};

/* ------------------------------------------------------------------------ */
/* Loading                                                                    */

static void set_eog(ss_tokenizer *t, int32_t id) {
  if (id >= 0 && id < t->n_vocab) t->eog[id >> 3] |= (uint8_t)(1u << (id & 7));
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
  } else if (model.len == 6 && memcmp(model.ptr, "gemma4", 6) == 0) {
    t->kind = SS_TOK_BPE;
    t->raw_bpe = true;
  } else if (model.len == 8 && memcmp(model.ptr, "tiktoken", 8) == 0) {
    t->kind = SS_TOK_BPE;
    t->tiktoken = true;
  } else if (model.len == 4 && memcmp(model.ptr, "bert", 4) == 0) {
    t->kind = SS_TOK_WPM;
  } else if (model.len == 5 && memcmp(model.ptr, "llama", 5) == 0) {
    t->kind = SS_TOK_SPM;
  } else {
    rc = ss_error(SS_ERR_UNSUPPORTED, "%s: tokenizer.ggml.model = '%.*s' is not supported "
                  "(supported: gpt2, gemma4, llama, bert)", g->path,
                  (int)(model.len > 64 ? 64 : model.len), model.ptr);
    goto fail;
  }
  if ((rc = ss_tok_vocab_load(t, g))) goto fail;

  bool add_bos_default;
  if (t->tiktoken) {
    ss_gguf_str pat;
    if ((rc = ss_gguf_get_str(g, "tokenizer.tiktoken.pat_str", true, &pat))) goto fail;
    char *p = strndup(pat.ptr, pat.len);
    if (!p) {
      rc = ss_error(SS_ERR_NOMEM, "tokenizer: out of memory");
      goto fail;
    }
    rc = ss_tok_tiktoken_init(t, g->path, p);
    free(p);
    if (rc) goto fail;
    add_bos_default = false;
    t->bos = t->eos = t->unk = -1;
    t->add_space_prefix = false;
  } else if (t->kind == SS_TOK_BPE) {
    if ((rc = ss_tok_merges_load(t, g))) goto fail;
    ss_gguf_str pre;
    rc = ss_gguf_get_str(g, "tokenizer.ggml.pre", false, &pre);
    if (rc < 0) goto fail;
    const bool has_pre = rc == SS_OK;
    if (t->raw_bpe) {
      /* llama.cpp sets the pre-tokenizer of this model itself. */
      pre.ptr = "gemma4";
      pre.len = 6;
    }
    if ((rc = ss_tok_bpe_init(t, g->path, has_pre || t->raw_bpe ? pre.ptr : NULL,
                              has_pre || t->raw_bpe ? pre.len : 0, &add_bos_default)))
      goto fail;
    t->bos = t->eos = t->unk = -1;
    t->add_space_prefix = false;
  } else if (t->kind == SS_TOK_WPM) {
    /* tokenizer.ggml.pre names the model (bert-bge, ...); WordPiece has one
     * way to split. */
    snprintf(t->describe, sizeof t->describe, "WordPiece (bert)");
    add_bos_default = true;
    t->bos = 101; /* llama.cpp's defaults: [CLS], [UNK] */
    t->eos = -1;
    t->unk = 100;
    t->add_space_prefix = false;
    t->wpm_lowercase = true;
    if ((rc = ss_gguf_get_bool(g, "tokenizer.ggml.normalizer.lowercase", false,
                               &t->wpm_lowercase)) < 0)
      goto fail;
    t->wpm_strip_accents = t->wpm_lowercase;
    if ((rc = ss_gguf_get_bool(g, "tokenizer.ggml.normalizer.strip_accents", false,
                               &t->wpm_strip_accents)) < 0)
      goto fail;
    for (int32_t i = 0; i < t->n_vocab; i++)
      if (t->text_len[i] > t->max_token_len) t->max_token_len = t->text_len[i];
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
  if ((rc = ss_tok_id_load(t, g, "tokenizer.ggml.bos_token_id", &t->bos)) ||
      (rc = ss_tok_id_load(t, g, "tokenizer.ggml.eos_token_id", &t->eos)) ||
      (rc = ss_tok_id_load(t, g, "tokenizer.ggml.eot_token_id", &t->eot)) ||
      (rc = ss_tok_id_load(t, g, "tokenizer.ggml.unknown_token_id", &t->unk)) ||
      (rc = ss_tok_id_load(t, g, "tokenizer.ggml.padding_token_id", &t->pad)))
    goto fail;
  t->add_bos = add_bos_default;
  if ((rc = ss_gguf_get_bool(g, "tokenizer.ggml.add_bos_token", false, &t->add_bos)) < 0) goto fail;
  if (t->raw_bpe) t->add_bos = true; /* llama.cpp overrides a false one for Gemma 4 */
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
  if ((rc = ss_tok_special_build(t))) goto fail;
  ss_tok_byte_tokens_build(t);
  *out = t;
  return SS_OK;
fail:
  ss_tokenizer_free(t);
  return rc;
}

void ss_tokenizer_free(ss_tokenizer *t) {
  if (!t) return;
  ss_tok_bpe_free(t);
  ss_hmap_free(&t->tok_map);
  ss_hmap_free(&t->merge_map);
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

int ss_tokenizer_encode(const ss_tokenizer *t, const char *text, size_t len, bool add_bos,
                        bool parse_special, int32_t **ids, size_t *n_ids) {
  *ids = NULL;
  *n_ids = 0;
  if (!text && len) return ss_error(SS_ERR_INVALID, "tokenizer: NULL text of %zu bytes", len);
  if (add_bos && t->bos < 0)
    return ss_error(SS_ERR_INVALID, "tokenizer: a BOS token was requested but the vocabulary "
                    "has none (tokenizer.ggml.bos_token_id)");
  ss_tok_ids v = {0};
  ss_tok_fragments frags = {0};
  int rc = ss_tok_ids_push(&v, 0); /* reserve, so that *ids is never NULL */
  v.n = 0;
  if (!rc && add_bos) rc = ss_tok_ids_push(&v, t->bos);
  if (!rc && len > 0) rc = ss_tok_special_partition(t, text, len, parse_special, &frags);

  /* SPM puts a space before text that starts the input or follows a special
   * token (llama.cpp's is_prev_special). */
  bool prev_special = true;
  for (size_t i = 0; i < frags.n && !rc; i++) {
    const ss_tok_fragment *f = &frags.p[i];
    if (f->id >= 0) {
      rc = ss_tok_ids_push(&v, f->id);
      prev_special = true;
      continue;
    }
    if (t->kind == SS_TOK_SPM)
      rc = ss_tok_spm_encode(t, text + f->off, f->len, t->add_space_prefix && prev_special, &v);
    else if (t->kind == SS_TOK_WPM)
      rc = ss_tok_wpm_encode(t, text + f->off, f->len, &v);
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
