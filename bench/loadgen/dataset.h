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
} ss_lg_prompt;

typedef struct ss_lg_dataset {
  ss_lg_prompt *items; /* (count) */
  size_t count;
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

#endif
