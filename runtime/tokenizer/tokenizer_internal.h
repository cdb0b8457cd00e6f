/* Private to the tokenizer's files: the tokenizer's tables, the open-addressing
 * hash maps over them, and what each file gives the others.
 *
 *   tokenizer.c          load, free, accessors, encode dispatch
 *   tokenizer_hmap.c     the hash map's set-up
 *   tokenizer_vocab.c    vocabulary, merges and ids from GGUF; lookups
 *   tokenizer_special.c  special-token search order and partition
 *   tokenizer_bpe.c      byte-level BPE encoder
 *   tokenizer_spm.c      SentencePiece-style encoder
 *   tokenizer_wpm.c      WordPiece encoder
 *   detok.c              pieces and the streaming detokenizer */
#ifndef SS_TOKENIZER_INTERNAL_H
#define SS_TOKENIZER_INTERNAL_H

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "runtime/tokenizer/tokenizer.h"

/* The most pre-tokenizer regexes one `tokenizer.ggml.pre` applies (DeepSeek
 * LLM's list has 6). */
#define SS_TOK_MAX_REGEX 6

/* ------------------------------------------------------------------------ */
/* Open-addressing hash map (linear probing) from a key to an int32 index.   */
/* The map stores only the index and the key's hash; the caller owns the     */
/* keys and compares them.                                                    */

typedef struct ss_hmap {
  uint32_t mask;   /* capacity - 1; capacity is a power of two, >= 2 * entries */
  int32_t *index;  /* (capacity) -1 where empty */
  uint32_t *hash;  /* (capacity) */
} ss_hmap;

/* FNV-1a, 32 bits; `ss_hash_bytes(SS_HASH_SEED, ...)` starts a hash and the
 * result can be fed back in to hash a concatenation piece by piece. */
#define SS_HASH_SEED 2166136261u
static inline uint32_t ss_hash_bytes(uint32_t h, const void *p, size_t n) {
  const uint8_t *s = p;
  for (size_t i = 0; i < n; i++) h = (h ^ s[i]) * 16777619u;
  return h;
}

/* Walks the probe sequence of hash h: returns the next index whose stored
 * hash equals h, or -1 at the first empty slot.  *pos starts at h & mask. */
static inline int32_t ss_hmap_probe(const ss_hmap *m, uint32_t h, uint32_t *pos) {
  for (;;) {
    uint32_t p = *pos;
    int32_t idx = m->index[p];
    *pos = (p + 1) & m->mask;
    if (idx < 0) return -1;
    if (m->hash[p] == h) return idx;
  }
}

/* Sizes the map for n_entries (at most half full), every slot empty. */
int ss_hmap_init(ss_hmap *m, size_t n_entries);
void ss_hmap_free(ss_hmap *m);
/* Stores idx with hash h in the empty slot the probe for h stopped at; pos_after
 * is *pos as ss_hmap_probe left it on returning -1. */
void ss_hmap_put(ss_hmap *m, uint32_t h, uint32_t pos_after, int32_t idx);

/* ------------------------------------------------------------------------ */
/* The tokenizer                                                              */

/* One entry of tokenizer.ggml.merges, "left right", copied to merge_text. */
typedef struct ss_merge {
  uint32_t off;       /* of the left part in merge_text */
  uint32_t left_len;  /* the right part starts at off + left_len + 1 */
  uint32_t right_len;
} ss_merge;

struct ss_tokenizer {
  ss_tok_kind kind;
  int32_t n_vocab;
  char *text;          /* every token's text, each NUL-terminated */
  uint32_t *text_off;  /* (n_vocab) */
  uint32_t *text_len;  /* (n_vocab) bytes, without the NUL */
  float *score;        /* (n_vocab) tokenizer.ggml.scores, 0 when absent */
  uint8_t *type;       /* (n_vocab) ss_tok_type */
  uint8_t *eog;        /* (n_vocab + 7) / 8 bits: end-of-generation tokens */
  ss_hmap tok_map;     /* token text -> id */

  /* Special tokens (control, user-defined, unknown) in the order they are
   * searched for in the text: longest text first, ties by id. */
  int32_t *special;
  int32_t n_special;

  /* BPE: GPT-2 byte alphabet, merges, pre-tokenizer. */
  char gpt2_char[256][2]; /* each byte's GPT-2 character, UTF-8 */
  uint8_t gpt2_nbytes[256];
  char *merge_text;
  ss_merge *merges;       /* (n_merges) in rank order */
  int32_t n_merges;
  ss_hmap merge_map;      /* (left, right) -> rank */
  pcre2_code *regex[SS_TOK_MAX_REGEX];
  int n_regex;
  bool ignore_merges;     /* a whole pre-token found in the vocab is one token */
  /* Gemma 4's BPE (tokenizer.ggml.model = "gemma4"): merges over the raw UTF-8
   * text with every space written as U+2581, <0xNN> byte tokens, no GPT-2
   * alphabet; a piece of newlines only is one token when the vocabulary has it. */
  bool raw_bpe;
  /* tiktoken ranks (tokenizer.ggml.model = "tiktoken", from a tokenizer.tok.json):
   * no merge list; a pair merges by the rank of its merged bytes, which is
   * that token's id; text the split pattern leaves unmatched is dropped. */
  bool tiktoken;

  /* WordPiece: BERT normalizer options, the longest token text in bytes. */
  bool wpm_lowercase, wpm_strip_accents;
  uint32_t max_token_len;

  /* Byte fallback: BPE, the token of each byte's GPT-2 character; SPM and
   * raw_bpe, <0xNN>, else the one-byte token, else -1. */
  int32_t byte_token[256];

  int32_t bos, eos, eot, unk, pad; /* -1 where absent */
  bool add_bos;
  bool add_space_prefix;
  char describe[160];
};

/* Growable output array of ids (ss_tok_ids_push is in tokenizer.c). */
typedef struct ss_tok_ids {
  int32_t *p;
  size_t n, cap;
} ss_tok_ids;

int ss_tok_ids_push(ss_tok_ids *v, int32_t id);

/* ------------------------------------------------------------------------ */
/* Vocabulary (tokenizer_vocab.c)                                             */

/* tokenizer.ggml.tokens, token_type and scores: the token tables and tok_map. */
int ss_tok_vocab_load(ss_tokenizer *t, const ss_gguf *g);
/* tokenizer.ggml.merges (BPE only): merge_text, merges and merge_map. */
int ss_tok_merges_load(ss_tokenizer *t, const ss_gguf *g);
/* An optional token id; *id keeps its default (or -1, when the default is
 * outside the vocabulary) when the key is absent. */
int ss_tok_id_load(const ss_tokenizer *t, const ss_gguf *g, const char *key, int32_t *id);
/* gpt2_char, gpt2_nbytes and byte_token, from the loaded vocabulary. */
void ss_tok_byte_tokens_build(ss_tokenizer *t);

/* Exact lookup of n bytes of token text; -1 if absent. */
int32_t ss_tok_lookup(const ss_tokenizer *t, const char *s, size_t n);
/* Rank of the merge (left, right); -1 if there is none. */
int32_t ss_tok_merge_rank(const ss_tokenizer *t, const char *l, size_t ln, const char *r,
                          size_t rn);

/* ------------------------------------------------------------------------ */
/* Special tokens (tokenizer_special.c)                                       */

/* A stretch of the input: raw text, or one special token found in it. */
typedef struct ss_tok_fragment {
  int32_t id; /* -1 for raw text */
  size_t off, len;
} ss_tok_fragment;

typedef struct ss_tok_fragments {
  ss_tok_fragment *p;
  size_t n, cap;
} ss_tok_fragments;

/* Fills special and n_special from the token types. */
int ss_tok_special_build(ss_tokenizer *t);
/* Cuts text[0..len) into fragments, in order, into the empty *out:
 * user-defined tokens always split out, control and unknown ones only with
 * parse_special.  The caller frees out->p, also on an error. */
int ss_tok_special_partition(const ss_tokenizer *t, const char *text, size_t len,
                             bool parse_special, ss_tok_fragments *out);

/* ------------------------------------------------------------------------ */
/* Encoders (tokenizer_bpe.c, tokenizer_spm.c)                                */

/* GPT-2 byte-to-unicode alphabet: the code point a byte is written as, and
 * back (-1 for a code point outside the alphabet). */
uint32_t ss_gpt2_byte_to_cp(uint8_t b);
int ss_gpt2_cp_to_byte(uint32_t cp);

/* BPE set-up from tokenizer.ggml.pre (pre == NULL when the key is absent):
 * compiles the regexes, sets ignore_merges and the default of add_bos.
 * Returns SS_ERR_UNSUPPORTED for an unknown pre-tokenizer. */
int ss_tok_bpe_init(ss_tokenizer *t, const char *path, const char *pre, size_t pre_len,
                    bool *add_bos_default);
void ss_tok_bpe_free(ss_tokenizer *t);
/* tiktoken set-up: the file's split pattern (path names it in errors). */
int ss_tok_tiktoken_init(ss_tokenizer *t, const char *path, const char *pattern);

/* Appends the tokens of one stretch of raw text (no special tokens in it). */
int ss_tok_bpe_encode(const ss_tokenizer *t, const char *text, size_t len, ss_tok_ids *out);
int ss_tok_spm_encode(const ss_tokenizer *t, const char *text, size_t len, bool space_prefix,
                      ss_tok_ids *out);
int ss_tok_wpm_encode(const ss_tokenizer *t, const char *text, size_t len, ss_tok_ids *out);

#endif
