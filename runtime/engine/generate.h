/* Single-sequence generation on one rank: prefill the prompt in chunks, then
 * decode token by token, sampling, detokenizing as a stream, and stopping on
 * end-of-generation tokens, stop strings or the token limit. */
#ifndef SS_GENERATE_H
#define SS_GENERATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "runtime/model/model.h"
#include "runtime/engine/sampler.h"

typedef struct ss_gen_params {
  int32_t max_tokens;          /* tokens to generate at most */
  ss_sampler_params sampling;
  bool ignore_eos;             /* keep going past end-of-generation tokens */
  const char *const *stop;     /* stop strings (not included in the output) */
  size_t n_stop;
  int32_t n_top_logprobs;      /* report this many top logprobs per step (0: none) */
  int32_t prefill_chunk;       /* prompt tokens per forward pass (0: 256) */
  int32_t n_ctx;               /* context limit (0: the model's) */
} ss_gen_params;

/* One generated token, handed to the callback as soon as it is sampled. */
typedef struct ss_gen_step {
  int32_t index;               /* 0-based step */
  int32_t token;
  const char *text;            /* text now safe to show (complete UTF-8, not part of a stop string) */
  size_t text_len;
  int32_t n_top;               /* top logprobs of this step's distribution */
  const int32_t *top_ids;
  const float *top_logprobs;
} ss_gen_step;

/* Return non-zero to stop generating (reported as finish_reason "abort"). */
typedef int (*ss_gen_callback)(void *user, const ss_gen_step *step);

typedef struct ss_gen_result {
  int32_t n_prompt;
  int32_t n_generated;
  int32_t *tokens;             /* [n_generated], malloc'ed */
  char *text;                  /* generated text after stop-string trimming, malloc'ed */
  size_t text_len;
  const char *finish_reason;   /* "stop", "length" or "abort" */
  double prefill_ms;
  double decode_ms;
  int32_t n_decode_steps;      /* forward passes during decoding */
} ss_gen_result;

int ss_generate(const ss_model *m, ss_backend *be, const int32_t *prompt, int32_t n_prompt,
                const ss_gen_params *p, ss_gen_callback cb, void *user, ss_gen_result *res);
void ss_gen_result_free(ss_gen_result *res);

/* Stop-string matching over a text stream: how many bytes of `text` (len
 * bytes, of which the first `emitted` were already shown) can be shown now, and
 * whether a stop string was found (then *cut is where the text ends). */
size_t ss_stop_scan(const char *text, size_t len, size_t emitted, const char *const *stop,
                    size_t n_stop, bool *found, size_t *cut);

#endif
