/* Tokenizers built from GGUF metadata (tokenizer.ggml.*).
 *
 * Three kinds:
 *   - byte-level BPE (tokenizer.ggml.model = "gpt2"): a pre-tokenizer regex split
 *     chosen by tokenizer.ggml.pre (gpt2, starcoder/smollm, llama3, qwen2, qwen35,
 *     falcon, deepseek-llm, deepseek-coder, ...) run with PCRE2 in Unicode mode,
 *     then rank-ordered merges over the GPT-2 byte-to-unicode alphabet; Gemma 4's
 *     variant ("gemma4") merges raw UTF-8 with U+2581 for spaces, and tiktoken's
 *     (tokenizer.tok.json) merges by the rank of the merged bytes;
 *   - SentencePiece-style (tokenizer.ggml.model = "llama"): score-ordered bigram
 *     merges over UTF-8 characters with "▁" for spaces and <0xNN> byte fallback;
 *   - WordPiece (tokenizer.ggml.model = "bert"): BERT's normalizer (lowercase,
 *     accents stripped) and word split, then greedy longest-prefix pieces.
 *
 * Special tokens (control and user-defined) are recognised in the text only when
 * asked to (parse_special), except user-defined ones, which are always matched. */
#ifndef SS_TOKENIZER_H
#define SS_TOKENIZER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "runtime/formats/gguf.h"

typedef struct ss_tokenizer ss_tokenizer;

typedef enum ss_tok_kind {
  SS_TOK_BPE, /* byte-level BPE (GPT-2 style) */
  SS_TOK_SPM, /* SentencePiece-style */
  SS_TOK_WPM, /* WordPiece (BERT) */
} ss_tok_kind;

/* GGUF token types (tokenizer.ggml.token_type). */
typedef enum ss_tok_type {
  SS_TOKTYPE_UNDEFINED = 0,
  SS_TOKTYPE_NORMAL = 1,
  SS_TOKTYPE_UNKNOWN = 2,
  SS_TOKTYPE_CONTROL = 3,
  SS_TOKTYPE_USER_DEFINED = 4,
  SS_TOKTYPE_UNUSED = 5,
  SS_TOKTYPE_BYTE = 6,
} ss_tok_type;

/* Builds the tokenizer from g's metadata (works on vocab-only files).  Errors
 * (missing/ill-typed keys, unknown tokenizer model or pre-tokenizer, ids out of
 * range) return a negative status with a message naming the key. */
int ss_tokenizer_load(const ss_gguf *g, ss_tokenizer **out);
void ss_tokenizer_free(ss_tokenizer *t);
/* The same from a Hugging Face model folder: tokenizer.model (SentencePiece
 * protobuf; preferred when present), tokenizer.json (byte-level BPE with a
 * ByteLevel, Digits+ByteLevel or Llama-3 pre-tokenizer) or, failing both,
 * tokenizer.tok.json (tiktoken ranks and split pattern, Grok-2), with BOS/EOS and
 * add_bos_token from tokenizer_config.json / config.json.  *chat_template
 * (may be NULL) receives a malloc'ed copy of tokenizer_config.json's
 * chat_template, or NULL. */
int ss_tokenizer_load_hf(const char *dir, ss_tokenizer **out, char **chat_template);

ss_tok_kind ss_tokenizer_kind(const ss_tokenizer *t);
/* Human-readable description, e.g. "byte-level BPE (gpt2), pre-tokenizer smollm". */
const char *ss_tokenizer_describe(const ss_tokenizer *t);
int32_t ss_tokenizer_n_vocab(const ss_tokenizer *t);
int32_t ss_tokenizer_bos(const ss_tokenizer *t); /* -1 if none */
int32_t ss_tokenizer_eos(const ss_tokenizer *t); /* -1 if none */
/* tokenizer.ggml.add_bos_token, defaulting to true for SPM and false for BPE. */
bool ss_tokenizer_add_bos(const ss_tokenizer *t);
/* End-of-generation: EOS, EOT, and control tokens such as <|im_end|>,
 * <|eot_id|>, <|endoftext|>. */
bool ss_tokenizer_is_eog(const ss_tokenizer *t, int32_t id);
ss_tok_type ss_tokenizer_token_type(const ss_tokenizer *t, int32_t id);
/* The vocabulary entry's text as stored (NUL-terminated), NULL if out of range. */
const char *ss_tokenizer_token_text(const ss_tokenizer *t, int32_t id);
/* Exact-text lookup of a vocabulary entry; -1 if absent. */
int32_t ss_tokenizer_find(const ss_tokenizer *t, const char *text);

/* Tokenizes `len` bytes of UTF-8 text.  On success *ids is a malloc'ed array of
 * *n_ids ids (caller frees).  Invalid UTF-8 is not an error: bytes that do not
 * form a valid sequence are tokenized as single bytes (byte tokens for BPE,
 * <0xNN> or unknown for SPM). */
int ss_tokenizer_encode(const ss_tokenizer *t, const char *text, size_t len, bool add_bos,
                        bool parse_special, int32_t **ids, size_t *n_ids);

/* The bytes a token stands for in output text (GPT-2 alphabet mapped back to
 * bytes, "▁" to space, <0xNN> to the byte).  Control tokens give 0 bytes unless
 * `special` is set, in which case their text is given.  Returns the number of
 * bytes, which may exceed `cap` (then only `cap` were written). */
size_t ss_tokenizer_piece(const ss_tokenizer *t, int32_t id, bool special, char *buf, size_t cap);

/* Streaming detokenizer: feeds ids one at a time and emits only complete UTF-8
 * characters, holding back the bytes of a character split across tokens.
 * Invalid sequences come out as U+FFFD.  For SPM, the leading space the
 * tokenizer adds to the first word is removed. */
typedef struct ss_detok {
  const ss_tokenizer *tok;
  bool special;     /* render control tokens as their text */
  bool at_start;    /* no byte emitted yet */
  uint8_t pending[4];
  int n_pending;
} ss_detok;

void ss_detok_init(ss_detok *d, const ss_tokenizer *t, bool special);
/* Appends the complete characters now available to out (NUL-terminated);
 * returns the number of bytes appended.  cap must be at least 64 + the length
 * of the longest token text; SS_DETOK_MIN_CAP is always enough for a GGUF
 * vocabulary whose tokens are at most 256 bytes long. */
#define SS_DETOK_MIN_CAP 1024
size_t ss_detok_push(ss_detok *d, int32_t id, char *out, size_t cap);
/* Emits whatever is held back (as U+FFFD if incomplete) and resets the
 * pending state. */
size_t ss_detok_flush(ss_detok *d, char *out, size_t cap);

#endif
