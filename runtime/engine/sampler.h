/* Token sampling from logits, and log-probabilities for reporting.
 *
 * Two steps.  ss_sampler_process turns the model's logits into the request's
 * own, in this order: logit_bias (added), repetition_penalty over the prompt
 * and generated tokens (Hugging Face / vLLM: a positive logit divided by it, a
 * negative one multiplied), frequency and presence penalties over the
 * generated tokens (OpenAI: logit -= frequency*count + presence*(count > 0)),
 * then the masks (end-of-generation and stop_token_ids before min_tokens, the
 * last token of each bad word whose earlier tokens end the output).  Each
 * depends only on the request's own tokens, so a request samples the same
 * alone and in a batch.  ss_sampler_sample then applies, as OpenAI-compatible
 * servers do: temperature, then top-k, then top-p (nucleus), then min-p, then
 * a draw from the renormalised distribution.  Temperature 0 is greedy (argmax,
 * lowest id on a tie).  The same seed and inputs give the same draws. */
#ifndef SS_SAMPLER_H
#define SS_SAMPLER_H

#include <stdbool.h>
#include <stdint.h>

typedef struct ss_logit_bias {
  int32_t id;
  float bias;
} ss_logit_bias;

/* The limits the request checks use (and the server states). */
#define SS_SAMPLER_MAX_BIAS 300       /* logit_bias entries, as OpenAI */
#define SS_SAMPLER_MAX_STOP_IDS 64    /* stop_token_ids */
#define SS_SAMPLER_MAX_BAD_WORDS 64   /* bad_words */
#define SS_SAMPLER_MAX_BAD_LEN 32     /* tokens of one bad word */

typedef struct ss_sampler_params {
  float temperature; /* 0: greedy */
  int32_t top_k;     /* <= 0: disabled */
  float top_p;       /* 1: disabled */
  float min_p;       /* 0: disabled */
  uint64_t seed;
  float presence_penalty;   /* [-2, 2]; 0: disabled */
  float frequency_penalty;  /* [-2, 2]; 0: disabled */
  float repetition_penalty; /* > 0; 0 (unset) or 1: disabled */
  int32_t min_tokens;       /* >= 0 */
  /* The arrays are the caller's; ss_sampler_init copies them. */
  const ss_logit_bias *bias; /* [n_bias], ids in the vocabulary, bias in [-100, 100] */
  int32_t n_bias;
  const int32_t *stop_ids;   /* [n_stop_ids]: tokens that end generation ("stop") */
  int32_t n_stop_ids;
  /* Bad words, each as its length then its token ids: [len, id..., len, id...],
   * n_bad_ids int32s in all. */
  const int32_t *bad;
  int32_t n_bad_ids;
} ss_sampler_params;

/* Checks ranges; returns SS_ERR_RANGE naming the field. */
int ss_sampler_params_check(const ss_sampler_params *p);
/* Checks the token ids of the arrays against a vocabulary of n_vocab. */
int ss_sampler_params_check_ids(const ss_sampler_params *p, int32_t n_vocab);

typedef struct ss_rng {
  uint64_t s[4];
} ss_rng;

void ss_rng_seed(ss_rng *r, uint64_t seed);
uint64_t ss_rng_next(ss_rng *r);
/* Uniform in [0, 1) with 53 random bits. */
double ss_rng_uniform(ss_rng *r);

/* A request's sampling state: its parameters, its own RNG stream and its
 * copies of the parameters' arrays (bias, stop ids, bad words: at most a few
 * KiB).  The vocabulary-sized work buffers are not here but in an
 * ss_sampler_scratch, one per thread that samples (the engine has one), so a
 * queued request costs no vocabulary-sized memory. */
typedef struct ss_sampler {
  ss_sampler_params p; /* its arrays point into `owned` */
  ss_rng rng;
  int32_t *owned;      /* the copies of the arrays, one allocation */
} ss_sampler;

/* Work buffers for sampling over a vocabulary of n_vocab tokens. */
typedef struct ss_sampler_scratch {
  int32_t n_vocab;
  float *prob;    /* (n_vocab) */
  int32_t *idx;   /* (n_vocab) */
  float *logit;   /* (n_vocab): the processed logits */
  int32_t *count; /* (n_vocab): all zero between calls */
} ss_sampler_scratch;

/* Checks the parameters (SS_ERR_RANGE naming the field), copies their arrays
 * and seeds the stream.  ss_sampler_free releases the copies; a zeroed
 * ss_sampler may be freed. */
int ss_sampler_init(ss_sampler *s, const ss_sampler_params *p);
void ss_sampler_free(ss_sampler *s);
int ss_sampler_scratch_init(ss_sampler_scratch *w, int32_t n_vocab);
void ss_sampler_scratch_free(ss_sampler_scratch *w);

/* What the logit processors read of a sequence: its tokens (prompt then
 * generated) and the tokens that end generation (masked before min_tokens). */
typedef struct ss_sampler_seq {
  const int32_t *tokens; /* [n_prompt + n_generated] */
  int32_t n_prompt, n_generated;
  const int32_t *eog;    /* [n_eog]; none when the request ignores them */
  int32_t n_eog;
} ss_sampler_seq;

/* The request's logits for its next token (the order in the header comment):
 * `logits` itself when no processor applies, else w->logit. */
const float *ss_sampler_process(const ss_sampler *s, ss_sampler_scratch *w, const float *logits,
                                const ss_sampler_seq *q);
/* Picks the next token from logits (w->n_vocab of them, not modified; those
 * of ss_sampler_process), advancing s's stream; w->prob and w->idx are
 * overwritten. */
int32_t ss_sampler_sample(ss_sampler *s, ss_sampler_scratch *w, const float *logits);
/* Whether tok is one of the request's stop_token_ids. */
bool ss_sampler_is_stop_id(const ss_sampler *s, int32_t tok);

int32_t ss_argmax(const float *logits, int32_t n);

/* The k most likely tokens under log_softmax(logits) of the raw logits
 * (w->n_vocab of them), in decreasing order (lower id first on ties), computed
 * in double; w is overwritten. */
void ss_top_logprobs(ss_sampler_scratch *w, const float *logits, int32_t k, int32_t *ids,
                     float *logprobs);
/* log_softmax(logits)[id]. */
float ss_logprob_of(const float *logits, int32_t n, int32_t id);

/* Frees the malloc'ed arrays of a request's sampling parameters (logit_bias,
 * stop_token_ids, bad_words): the engine's once it accepted the request, the
 * submitter's when it was refused (sampler.c, so the request parser needs no
 * more of the engine). */
void ss_engine_req_sampling_free(ss_sampler_params *p);

#endif
