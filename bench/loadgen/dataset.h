/* Workloads for the load generator: the prompts to send and how many tokens to
 * ask for in reply.
 *
 *   random    prompts of random length in [L(1-r), L(1+r)] (L = --random-input-len,
 *             r = --random-range-ratio, as vLLM) and likewise for output lengths;
 *             either token ids (exact length; /v1/completions accepts a prompt
 *             as an array of ids) or text made of words
 *   fixed     one prompt, sent by every request
 *   jsonl     one JSON object per line: {"prompt": "text" | [ids], "output_len": N}
 *             ("max_tokens" is accepted for "output_len")
 *   prefix_repetition  (vLLM's) N prefixes of P tokens, each shared by M
 *             requests that each add a unique suffix of S tokens, in a seeded
 *             order interleaving the prefixes
 *   trace     a Mooncake-format JSONL trace: {"timestamp": ms, "input_length":
 *             N, "output_length": K, "hash_ids": [...]}; hash id h names a block
 *             of block_size (512) tokens of content, the same for every h
 *             wherever it appears, so requests whose hash ids share a prefix
 *             share that prefix's text; the last block holds the remainder of
 *             input_length.  Requests arrive at the trace's timestamps
 *   multi_turn  S sessions of T turns: each turn is a user message of U
 *             tokens (random words, as the random text prompts) asking for K
 *             tokens; items are session-major (session s, turn t at s*T + t)
 *             and hold only the user messages.  The client sends turn t+1 of
 *             a session after turn t's reply, with the conversation so far:
 *             chat messages [user_0, assistant_0, ..., user_t], or on
 *             /v1/completions those texts joined by SS_LG_TURN_SEPARATOR
 *   sharegpt  ShareGPT JSON: [{"conversations": [{"from": "human", "value": ...},
 *             {"from": "gpt", "value": ...}, ...]}, ...]; the first turn is the
 *             prompt and the second turn's length the output length
 *
 * Input lengths are exact for ids and for text counted with a tokenizer;
 * otherwise they are estimates (bytes / 4) and the server's usage report is
 * what the results use. */
#ifndef SS_LG_DATASET_H
#define SS_LG_DATASET_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct ss_tokenizer;

typedef struct ss_lg_prompt {
  char *text;         /* NUL-terminated prompt text, or NULL when ids are used */
  int32_t *ids;       /* (id_count) token ids, or NULL */
  size_t id_count;
  int64_t input_len;  /* expected prompt tokens (exact when input_exact) */
  bool input_exact;
  int64_t output_len; /* tokens to ask for (max_tokens) */
  int64_t group;      /* prefix_repetition: which prefix (else 0) */
  size_t prefix_size; /* prefix_repetition: bytes of text (or ids) of the shared prefix */
} ss_lg_prompt;

typedef struct ss_lg_dataset {
  ss_lg_prompt *items; /* (count) */
  size_t count;
  double *arrivals_s;  /* (count) trace: send times from the first request, else NULL */
  size_t turns;        /* multi_turn: turns per session (count / turns sessions), else 0 */
} ss_lg_dataset;

void ss_lg_dataset_free(ss_lg_dataset *d);

/* The largest prompt or output length we ask for (tokens). */
#define SS_LG_MAX_LEN ((int64_t)1 << 20)

typedef struct ss_lg_random_params {
  size_t count;
  int64_t input_len, output_len;
  double range_ratio;  /* in [0, 1) */
  uint64_t seed;
  bool ids;            /* token ids rather than text */
  int32_t vocab_size;  /* ids drawn from [0, vocab_size) when tok is NULL */
  const struct ss_tokenizer *tok; /* optional: ids from its normal tokens; text counted exactly */
} ss_lg_random_params;

int ss_lg_dataset_random(const ss_lg_random_params *p, ss_lg_dataset *out);

/* One entry: `text` if given (counted with tok if given), else a random prompt
 * of exactly input_len tokens as in ss_lg_dataset_random. */
int ss_lg_dataset_fixed(const char *text, const ss_lg_random_params *p, ss_lg_dataset *out);

/* Parses a JSONL file; blank lines are skipped.  Errors name FILE:LINE and the
 * field.  tok (optional) counts text prompts exactly. */
int ss_lg_dataset_jsonl(const char *path, const struct ss_tokenizer *tok, ss_lg_dataset *out);

/* Parses a ShareGPT file, keeps conversations with at least two turns and a
 * non-empty prompt, shuffles them with seed and keeps at most `count` (0 =
 * all).  output_len > 0 overrides every output length; otherwise it is the
 * reply's token count with tok, or its bytes / 4. */
int ss_lg_dataset_sharegpt(const char *path, size_t count, uint64_t seed, int64_t output_len,
                           const struct ss_tokenizer *tok, ss_lg_dataset *out);

/* The largest prefix_repetition / trace figures. */
#define SS_LG_MAX_PREFIXES 100000
#define SS_LG_MAX_BLOCK 65536

typedef struct ss_lg_prefix_params {
  size_t num_prefixes;  /* distinct prefixes, >= 1 */
  size_t count;         /* requests in all; count / num_prefixes per prefix (>= 1) */
  int64_t prefix_len, suffix_len, output_len;
  uint64_t seed;
  bool ids;
  int32_t vocab_size;
  const struct ss_tokenizer *tok;
} ss_lg_prefix_params;

/* count / num_prefixes * num_prefixes entries; entry i has group = its prefix.
 * Prefix text or ids are identical (byte for byte) across a group and its
 * first prefix_size bytes (ids); the suffixes in a group are distinct. */
int ss_lg_dataset_prefix_repetition(const ss_lg_prefix_params *p, ss_lg_dataset *out);

typedef struct ss_lg_trace_params {
  int64_t block_size;   /* tokens per hash id (Mooncake: 512) */
  double time_scale;    /* arrival times are timestamp / 1000 * time_scale seconds */
  size_t max_count;     /* 0 = every line */
  uint64_t seed;        /* the content of the blocks */
  bool ids;
  int32_t vocab_size;
  const struct ss_tokenizer *tok;
} ss_lg_trace_params;

/* Parses a Mooncake trace; errors name FILE:LINE and the field.  Fills
 * out->arrivals_s (timestamps relative to the earliest, times time_scale). */
int ss_lg_dataset_trace(const char *path, const ss_lg_trace_params *p, ss_lg_dataset *out);

/* The largest multi_turn figures. */
#define SS_LG_MAX_SESSIONS 100000
#define SS_LG_MAX_TURNS 256
/* Between the texts of a conversation sent as one /v1/completions prompt. */
#define SS_LG_TURN_SEPARATOR "\n\n"

typedef struct ss_lg_multi_turn_params {
  size_t sessions;      /* in [1, SS_LG_MAX_SESSIONS] */
  size_t turns;         /* in [1, SS_LG_MAX_TURNS] */
  int64_t user_len;     /* tokens of each user message */
  int64_t output_len;   /* max_tokens of each turn */
  uint64_t seed;
  const struct ss_tokenizer *tok; /* optional: exact user message lengths */
} ss_lg_multi_turn_params;

/* sessions * turns user messages, session-major; sets out->turns. */
int ss_lg_dataset_multi_turn(const ss_lg_multi_turn_params *p, ss_lg_dataset *out);

#endif
