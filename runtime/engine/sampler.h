/* Token sampling from logits, and log-probabilities for reporting.
 *
 * Order of transforms (as OpenAI-compatible servers apply them): temperature,
 * then top-k, then top-p (nucleus), then min-p, then a draw from the
 * renormalised distribution.  Temperature 0 is greedy (argmax, lowest id on a
 * tie).  The same seed and inputs give the same draws. */
#ifndef SS_SAMPLER_H
#define SS_SAMPLER_H

#include <stdbool.h>
#include <stdint.h>

typedef struct ss_sampler_params {
  float temperature; /* 0: greedy */
  int32_t top_k;     /* <= 0: disabled */
  float top_p;       /* 1: disabled */
  float min_p;       /* 0: disabled */
  uint64_t seed;
} ss_sampler_params;

/* Checks ranges; returns SS_ERR_RANGE naming the field. */
int ss_sampler_params_check(const ss_sampler_params *p);

typedef struct ss_rng {
  uint64_t s[4];
} ss_rng;

void ss_rng_seed(ss_rng *r, uint64_t seed);
uint64_t ss_rng_next(ss_rng *r);
/* Uniform in [0, 1) with 53 random bits. */
double ss_rng_uniform(ss_rng *r);

/* A request's sampling state: its parameters and its own RNG stream, a few
 * dozen bytes.  The vocabulary-sized work buffers are not here but in an
 * ss_sampler_scratch, one per thread that samples (the engine has one), so a
 * queued request costs no vocabulary-sized memory. */
typedef struct ss_sampler {
  ss_sampler_params p;
  ss_rng rng;
} ss_sampler;

/* Work buffers for sampling over a vocabulary of n_vocab tokens. */
typedef struct ss_sampler_scratch {
  int32_t n_vocab;
  float *prob;    /* (n_vocab) */
  int32_t *idx;   /* (n_vocab) */
} ss_sampler_scratch;

/* Checks the parameters (SS_ERR_RANGE naming the field) and seeds the stream. */
int ss_sampler_init(ss_sampler *s, const ss_sampler_params *p);
int ss_sampler_scratch_init(ss_sampler_scratch *w, int32_t n_vocab);
void ss_sampler_scratch_free(ss_sampler_scratch *w);
/* Picks the next token from raw logits (w->n_vocab of them, not modified),
 * advancing s's stream; w is overwritten. */
int32_t ss_sampler_sample(ss_sampler *s, ss_sampler_scratch *w, const float *logits);

int32_t ss_argmax(const float *logits, int32_t n);

/* The k most likely tokens under log_softmax(logits) of the raw logits
 * (w->n_vocab of them), in decreasing order (lower id first on ties), computed
 * in double; w is overwritten. */
void ss_top_logprobs(ss_sampler_scratch *w, const float *logits, int32_t k, int32_t *ids,
                     float *logprobs);
/* log_softmax(logits)[id]. */
float ss_logprob_of(const float *logits, int32_t n, int32_t id);

#endif
