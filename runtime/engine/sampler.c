/* Token sampling (runtime/engine/sampler.h): the seeded xoshiro256** stream,
 * the request's logit processors (bias, penalties, masks), the temperature /
 * top-k / top-p / min-p chain over a caller's scratch, and log-probabilities
 * for reporting. */
#include "runtime/engine/sampler.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/base/status.h"

/* ------------------------------------------------------------------------ */
/* xoshiro256** seeded through splitmix64                                    */

static uint64_t splitmix64(uint64_t *x) {
  uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

void ss_rng_seed(ss_rng *r, uint64_t seed) {
  for (int i = 0; i < 4; i++) r->s[i] = splitmix64(&seed);
}

static inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

uint64_t ss_rng_next(ss_rng *r) {
  uint64_t *s = r->s;
  uint64_t result = rotl(s[1] * 5, 7) * 9;
  uint64_t t = s[1] << 17;
  s[2] ^= s[0];
  s[3] ^= s[1];
  s[1] ^= s[2];
  s[0] ^= s[3];
  s[2] ^= t;
  s[3] = rotl(s[3], 45);
  return result;
}

double ss_rng_uniform(ss_rng *r) { return (double)(ss_rng_next(r) >> 11) * 0x1.0p-53; }

/* ------------------------------------------------------------------------ */

int ss_sampler_params_check(const ss_sampler_params *p) {
  if (!(p->temperature >= 0.0f && p->temperature <= 100.0f))
    return ss_error(SS_ERR_RANGE, "temperature = %g must be in [0, 100]", p->temperature);
  if (p->top_k < 0) return ss_error(SS_ERR_RANGE, "top_k = %d must be >= 0 (0 disables)", p->top_k);
  if (!(p->top_p > 0.0f && p->top_p <= 1.0f))
    return ss_error(SS_ERR_RANGE, "top_p = %g must be in (0, 1]", p->top_p);
  if (!(p->min_p >= 0.0f && p->min_p <= 1.0f))
    return ss_error(SS_ERR_RANGE, "min_p = %g must be in [0, 1]", p->min_p);
  if (!(p->presence_penalty >= -2.0f && p->presence_penalty <= 2.0f))
    return ss_error(SS_ERR_RANGE, "presence_penalty = %g must be in [-2, 2]", p->presence_penalty);
  if (!(p->frequency_penalty >= -2.0f && p->frequency_penalty <= 2.0f))
    return ss_error(SS_ERR_RANGE, "frequency_penalty = %g must be in [-2, 2]",
                    p->frequency_penalty);
  if (!(p->repetition_penalty >= 0.0f && isfinite(p->repetition_penalty)))
    return ss_error(SS_ERR_RANGE, "repetition_penalty = %g must be greater than 0 (0 leaves it unset)",
                    p->repetition_penalty);
  if (p->min_tokens < 0)
    return ss_error(SS_ERR_RANGE, "min_tokens = %d must be >= 0", p->min_tokens);
  if (p->n_bias < 0 || p->n_bias > SS_SAMPLER_MAX_BIAS || (p->n_bias > 0 && !p->bias))
    return ss_error(SS_ERR_RANGE, "logit_bias has %d entries; the limit is %d", p->n_bias,
                    SS_SAMPLER_MAX_BIAS);
  for (int32_t i = 0; i < p->n_bias; i++)
    if (!(p->bias[i].bias >= -100.0f && p->bias[i].bias <= 100.0f))
      return ss_error(SS_ERR_RANGE, "logit_bias of token %d = %g must be in [-100, 100]",
                      p->bias[i].id, p->bias[i].bias);
  if (p->n_stop_ids < 0 || p->n_stop_ids > SS_SAMPLER_MAX_STOP_IDS ||
      (p->n_stop_ids > 0 && !p->stop_ids))
    return ss_error(SS_ERR_RANGE, "stop_token_ids has %d ids; the limit is %d", p->n_stop_ids,
                    SS_SAMPLER_MAX_STOP_IDS);
  if (p->n_bad_ids < 0 || (p->n_bad_ids > 0 && !p->bad))
    return ss_error(SS_ERR_RANGE, "bad_words: %d ids", p->n_bad_ids);
  int32_t n_words = 0;
  for (int32_t i = 0; i < p->n_bad_ids; i += 1 + p->bad[i], n_words++) {
    const int32_t len = p->bad[i];
    if (len < 1 || len > SS_SAMPLER_MAX_BAD_LEN || len > p->n_bad_ids - i - 1)
      return ss_error(SS_ERR_RANGE, "bad_words[%d] has %d tokens; it must have 1..%d", n_words,
                      len, SS_SAMPLER_MAX_BAD_LEN);
  }
  if (n_words > SS_SAMPLER_MAX_BAD_WORDS)
    return ss_error(SS_ERR_RANGE, "bad_words has %d words; the limit is %d", n_words,
                    SS_SAMPLER_MAX_BAD_WORDS);
  return SS_OK;
}

int ss_sampler_params_check_ids(const ss_sampler_params *p, int32_t n_vocab) {
  for (int32_t i = 0; i < p->n_bias; i++)
    if (p->bias[i].id < 0 || p->bias[i].id >= n_vocab)
      return ss_error(SS_ERR_RANGE, "logit_bias token %d is outside the vocabulary (0..%d)",
                      p->bias[i].id, n_vocab - 1);
  for (int32_t i = 0; i < p->n_stop_ids; i++)
    if (p->stop_ids[i] < 0 || p->stop_ids[i] >= n_vocab)
      return ss_error(SS_ERR_RANGE, "stop_token_ids[%d] = %d is outside the vocabulary (0..%d)", i,
                      p->stop_ids[i], n_vocab - 1);
  for (int32_t i = 0, w = 0; i < p->n_bad_ids; i += 1 + p->bad[i], w++)
    for (int32_t j = 1; j <= p->bad[i]; j++)
      if (p->bad[i + j] < 0 || p->bad[i + j] >= n_vocab)
        return ss_error(SS_ERR_RANGE, "bad_words[%d] has token %d, outside the vocabulary (0..%d)",
                        w, p->bad[i + j], n_vocab - 1);
  return SS_OK;
}

int ss_sampler_init(ss_sampler *s, const ss_sampler_params *p) {
  memset(s, 0, sizeof *s);
  int rc = ss_sampler_params_check(p);
  if (rc) return rc;
  s->p = *p;
  s->p.bias = NULL;
  s->p.stop_ids = NULL;
  s->p.bad = NULL;
  /* One block: the bias entries (two int32s each), the stop ids, the bad words. */
  const size_t n_owned = 2 * (size_t)p->n_bias + (size_t)p->n_stop_ids + (size_t)p->n_bad_ids;
  if (n_owned > 0) {
    s->owned = malloc(n_owned * sizeof *s->owned);
    if (!s->owned) return ss_error(SS_ERR_NOMEM, "sampler: out of memory");
    ss_logit_bias *bias = (ss_logit_bias *)(void *)s->owned;
    int32_t *stop_ids = s->owned + 2 * (size_t)p->n_bias;
    int32_t *bad = stop_ids + p->n_stop_ids;
    if (p->n_bias) memcpy(bias, p->bias, (size_t)p->n_bias * sizeof *bias);
    if (p->n_stop_ids) memcpy(stop_ids, p->stop_ids, (size_t)p->n_stop_ids * sizeof *stop_ids);
    if (p->n_bad_ids) memcpy(bad, p->bad, (size_t)p->n_bad_ids * sizeof *bad);
    s->p.bias = p->n_bias ? bias : NULL;
    s->p.stop_ids = p->n_stop_ids ? stop_ids : NULL;
    s->p.bad = p->n_bad_ids ? bad : NULL;
  }
  ss_rng_seed(&s->rng, p->seed);
  return SS_OK;
}

void ss_sampler_free(ss_sampler *s) {
  free(s->owned);
  s->owned = NULL;
  s->p.bias = NULL;
  s->p.stop_ids = NULL;
  s->p.bad = NULL;
  s->p.n_bias = s->p.n_stop_ids = s->p.n_bad_ids = 0;
}

bool ss_sampler_is_stop_id(const ss_sampler *s, int32_t tok) {
  for (int32_t i = 0; i < s->p.n_stop_ids; i++)
    if (s->p.stop_ids[i] == tok) return true;
  return false;
}

int ss_sampler_scratch_init(ss_sampler_scratch *w, int32_t n_vocab) {
  memset(w, 0, sizeof *w);
  w->n_vocab = n_vocab;
  w->prob = malloc((size_t)n_vocab * sizeof *w->prob);
  w->idx = malloc((size_t)n_vocab * sizeof *w->idx);
  w->logit = malloc((size_t)n_vocab * sizeof *w->logit);
  w->count = calloc((size_t)n_vocab, sizeof *w->count);
  if (!w->prob || !w->idx || !w->logit || !w->count) {
    ss_sampler_scratch_free(w);
    return ss_error(SS_ERR_NOMEM, "sampler: out of memory for a vocabulary of %d tokens",
                    n_vocab);
  }
  return SS_OK;
}

void ss_sampler_scratch_free(ss_sampler_scratch *w) {
  free(w->prob);
  free(w->idx);
  free(w->logit);
  free(w->count);
  memset(w, 0, sizeof *w);
}

/* ------------------------------------------------------------------------ */
/* The request's logit processors                                            */

/* Hugging Face's RepetitionPenaltyLogitsProcessor, as vLLM applies it: once
 * per distinct token of the prompt and the output.  w->count marks the tokens
 * done and is cleared again on the way out. */
static void apply_repetition(float *l, int32_t *seen, const int32_t *tok, int32_t n, float pen) {
  for (int32_t i = 0; i < n; i++) {
    const int32_t t = tok[i];
    if (seen[t]) continue;
    seen[t] = 1;
    l[t] = l[t] > 0.0f ? l[t] / pen : l[t] * pen;
  }
  for (int32_t i = 0; i < n; i++) seen[tok[i]] = 0;
}

/* OpenAI's presence and frequency penalties over the generated tokens: the
 * counts are gathered, then each distinct token is penalised once and its
 * count cleared. */
static void apply_presence_frequency(float *l, int32_t *count, const int32_t *gen, int32_t n,
                                     float presence, float frequency) {
  for (int32_t i = 0; i < n; i++) count[gen[i]]++;
  for (int32_t i = 0; i < n; i++) {
    const int32_t t = gen[i];
    if (!count[t]) continue;
    l[t] -= frequency * (float)count[t] + presence;
    count[t] = 0;
  }
}

/* vLLM's bad_words: a word of one token is always banned; a longer word bans
 * its last token when its other tokens end the output so far. */
static void apply_bad_words(float *l, const int32_t *bad, int32_t n_bad, const int32_t *gen,
                            int32_t n_gen) {
  for (int32_t i = 0; i < n_bad; i += 1 + bad[i]) {
    const int32_t len = bad[i];
    const int32_t *word = bad + i + 1;
    const int32_t pre = len - 1;
    if (pre > n_gen) continue;
    if (pre > 0 && memcmp(gen + n_gen - pre, word, (size_t)pre * sizeof *word) != 0) continue;
    l[word[pre]] = -INFINITY;
  }
}

const float *ss_sampler_process(const ss_sampler *s, ss_sampler_scratch *w, const float *logits,
                                const ss_sampler_seq *q) {
  const ss_sampler_params *p = &s->p;
  const bool rep = p->repetition_penalty > 0.0f && p->repetition_penalty != 1.0f;
  const bool pf = (p->presence_penalty != 0.0f || p->frequency_penalty != 0.0f) &&
                  q->n_generated > 0;
  const bool min_mask = q->n_generated < p->min_tokens;
  if (!p->n_bias && !rep && !pf && !min_mask && !p->n_bad_ids) return logits;
  float *l = w->logit;
  memcpy(l, logits, (size_t)w->n_vocab * sizeof *l);
  const int32_t *gen = q->tokens + q->n_prompt;
  for (int32_t i = 0; i < p->n_bias; i++) l[p->bias[i].id] += p->bias[i].bias;
  if (rep) apply_repetition(l, w->count, q->tokens, q->n_prompt + q->n_generated,
                            p->repetition_penalty);
  if (pf) apply_presence_frequency(l, w->count, gen, q->n_generated, p->presence_penalty,
                                   p->frequency_penalty);
  if (min_mask) {
    for (int32_t i = 0; i < q->n_eog; i++) l[q->eog[i]] = -INFINITY;
    for (int32_t i = 0; i < p->n_stop_ids; i++) l[p->stop_ids[i]] = -INFINITY;
  }
  if (p->n_bad_ids) apply_bad_words(l, p->bad, p->n_bad_ids, gen, q->n_generated);
  return l;
}

/* ------------------------------------------------------------------------ */
/* Sampling                                                                   */

int32_t ss_argmax(const float *logits, int32_t n) {
  int32_t best = 0;
  for (int32_t i = 1; i < n; i++)
    if (logits[i] > logits[best]) best = i;
  return best;
}

/* Ordering of candidates: higher probability first, then lower id. */
static inline bool before(const float *p, int32_t a, int32_t b) {
  return p[a] > p[b] || (p[a] == p[b] && a < b);
}

/* Restores the heap h[0..len) below position j: the worst (by `before`) on top. */
static void sift_down(const float *p, int32_t *h, int32_t j, int32_t len) {
  for (;;) {
    int32_t l = 2 * j + 1, r = l + 1, w = j;
    if (l < len && before(p, h[w], h[l])) w = l;
    if (r < len && before(p, h[w], h[r])) w = r;
    if (w == j) return;
    int32_t t = h[j]; h[j] = h[w]; h[w] = t;
    j = w;
  }
}

/* Moves the k best of idx[0..n) (by `before`) to idx[0..k), sorted.  A binary
 * heap of the k best so far, whose root is the worst of them. */
static void select_top(const float *p, int32_t *idx, int32_t n, int32_t k) {
  if (k >= n) k = n;
  int32_t *h = idx; /* heap lives in idx[0..k) */
  for (int32_t i = k / 2 - 1; i >= 0; i--) sift_down(p, h, i, k); /* heapify the first k */
  for (int32_t i = k; i < n; i++) {
    if (!before(p, idx[i], h[0])) continue;
    int32_t t = h[0]; h[0] = idx[i]; idx[i] = t;
    sift_down(p, h, 0, k);
  }
  /* heap sort: repeatedly move the worst to the end */
  for (int32_t end = k - 1; end > 0; end--) {
    int32_t t = h[0]; h[0] = h[end]; h[end] = t;
    sift_down(p, h, 0, end);
  }
}

int32_t ss_sampler_sample(ss_sampler *s, ss_sampler_scratch *w, const float *logits) {
  const int32_t n = w->n_vocab;
  const ss_sampler_params *p = &s->p;
  if (p->temperature <= 0.0f) return ss_argmax(logits, n);
  float *prob = w->prob;
  int32_t *idx = w->idx;
  /* Unnormalised probabilities exp((l - max)/T): the largest is exactly 1. */
  float mx = logits[ss_argmax(logits, n)];
  double total = 0.0;
  for (int32_t i = 0; i < n; i++) {
    prob[i] = expf((logits[i] - mx) / p->temperature);
    total += prob[i];
    idx[i] = i;
  }
  int32_t m = n;          /* candidates idx[0..m) */
  bool sorted = false;
  if (p->top_k > 0 && p->top_k < m) {
    select_top(prob, idx, m, p->top_k);
    m = p->top_k;
    sorted = true;
    total = 0.0;
    for (int32_t i = 0; i < m; i++) total += prob[idx[i]];
  }
  if (p->top_p < 1.0f) {
    /* The nucleus is usually small: sort a growing prefix until it holds the mass. */
    int32_t k = sorted ? m : (m < 256 ? m : 256);
    for (;;) {
      if (!sorted) select_top(prob, idx, m, k); /* sorts idx[0..k) */
      double cum = 0.0;
      int32_t keep = 0;
      while (keep < k && cum < (double)p->top_p * total) cum += prob[idx[keep++]];
      if (cum >= (double)p->top_p * total || k == m) {
        m = keep > 0 ? keep : 1;
        total = cum > 0.0 ? cum : prob[idx[0]];
        break;
      }
      k = k > m / 4 ? m : k * 4;
      sorted = false;
    }
    sorted = true;
  }
  if (p->min_p > 0.0f) {
    /* The best candidate has probability 1 (max-subtracted), so the bar is min_p. */
    int32_t kept = 0;
    total = 0.0;
    for (int32_t i = 0; i < m; i++)
      if (prob[idx[i]] >= p->min_p) {
        idx[kept++] = idx[i];
        total += prob[idx[i]];
      }
    m = kept; /* never empty: the top token has probability 1 */
  }
  double u = ss_rng_uniform(&s->rng) * total;
  double cum = 0.0;
  for (int32_t i = 0; i < m; i++) {
    cum += prob[idx[i]];
    if (u < cum) return idx[i];
  }
  return idx[m - 1];
}

/* ------------------------------------------------------------------------ */

static double log_sum_exp(const float *logits, int32_t n) {
  float mx = logits[ss_argmax(logits, n)];
  double s = 0.0;
  for (int32_t i = 0; i < n; i++) s += exp((double)logits[i] - mx);
  return mx + log(s);
}

float ss_logprob_of(const float *logits, int32_t n, int32_t id) {
  return (float)((double)logits[id] - log_sum_exp(logits, n));
}

void ss_top_logprobs(ss_sampler_scratch *w, const float *logits, int32_t k, int32_t *ids,
                     float *logprobs) {
  const int32_t n = w->n_vocab;
  if (k > n) k = n;
  double lse = log_sum_exp(logits, n);
  int32_t *idx = w->idx;
  for (int32_t i = 0; i < n; i++) idx[i] = i;
  select_top(logits, idx, n, k);
  for (int32_t i = 0; i < k; i++) {
    ids[i] = idx[i];
    logprobs[i] = (float)((double)logits[idx[i]] - lse);
  }
}

void ss_engine_req_sampling_free(ss_sampler_params *p) {
  /* The arrays are const to the sampler, which only reads them; they were
   * malloc'ed by the submitter. */
  free((void *)p->bias);
  free((void *)p->stop_ids);
  free((void *)p->bad);
  p->bias = NULL;
  p->stop_ids = NULL;
  p->bad = NULL;
  p->n_bias = p->n_stop_ids = p->n_bad_ids = 0;
}
