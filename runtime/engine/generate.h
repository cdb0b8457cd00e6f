/* Offline generation: one request through the serving engine, as vLLM's LLM
 * and its server share one engine.  ss_generate builds an engine sized for the
 * request (one sequence, a KV pool of its prompt + max_tokens, the prompt
 * prefilled in chunks), runs it on the calling thread and hands each token to
 * a callback as the engine publishes it. */
#ifndef SS_GENERATE_H
#define SS_GENERATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "runtime/engine/sampler.h"
#include "runtime/model/model.h"

typedef struct ss_gen_params {
  int32_t max_tokens;          /* tokens to generate at most (0: only prefill the prompt) */
  ss_sampler_params sampling;
  bool ignore_eos;             /* keep going past end-of-generation tokens */
  const char *const *stop;     /* stop strings (not included in the output), copied */
  size_t n_stop;               /* at most SS_ENGINE_MAX_STOP */
  int32_t n_top_logprobs;      /* report this many top logprobs per step (0: none; more
                                  than the vocabulary: all of it) */
  int32_t prefill_chunk;       /* prompt tokens per forward pass, the engine's
                                  max_batched_tokens (0: 256) */
  int32_t n_ctx;               /* context limit (0: the model's) */
  ss_dtype kv_dtype;           /* KV cache element type (ss_engine_opts.kv_dtype) */
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

/* Return non-zero to stop generating (reported as finish_reason "abort" unless
 * this token already ended the request). */
typedef int (*ss_gen_callback)(void *user, const ss_gen_step *step);

typedef struct ss_gen_result {
  int32_t n_prompt;
  int32_t n_generated;
  int32_t *tokens;             /* [n_generated], malloc'ed */
  char *text;                  /* generated text after stop-string trimming, malloc'ed */
  size_t text_len;
  const char *finish_reason;   /* "stop", "length" or "abort" */
  double prefill_ms;           /* the first step's start to the first token */
  double decode_ms;            /* the first token to the last */
  int32_t n_decode_steps;      /* forward passes after the first token */
} ss_gen_result;

/* Runs the request on rank 0 (under tensor parallelism the workers run the
 * steps the engine broadcasts; stopping them stays with the caller).  A bad
 * request or option returns SS_ERR_RANGE or SS_ERR_INVALID with the engine's
 * message; a lost rank SS_ERR_COMM. */
int ss_generate(ss_model *m, ss_backend *be, const int32_t *prompt, int32_t n_prompt,
                const ss_gen_params *p, ss_gen_callback cb, void *user, ss_gen_result *res);
void ss_gen_result_free(ss_gen_result *res);

#endif
