/* Token sampling (runtime/engine/sampler.h): the seeded xoshiro256** stream,
 * the temperature / top-k / top-p / min-p chain over a caller's scratch, and
 * log-probabilities for reporting. */
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
  return SS_OK;
}

int ss_sampler_init(ss_sampler *s, const ss_sampler_params *p) {
  memset(s, 0, sizeof *s);
  int rc = ss_sampler_params_check(p);
  if (rc) return rc;
  s->p = *p;
  ss_rng_seed(&s->rng, p->seed);
  return SS_OK;
}

int ss_sampler_scratch_init(ss_sampler_scratch *w, int32_t n_vocab) {
  memset(w, 0, sizeof *w);
  w->n_vocab = n_vocab;
  w->prob = malloc((size_t)n_vocab * sizeof *w->prob);
  w->idx = malloc((size_t)n_vocab * sizeof *w->idx);
  if (!w->prob || !w->idx) {
    ss_sampler_scratch_free(w);
    return ss_error(SS_ERR_NOMEM, "sampler: out of memory for a vocabulary of %d tokens",
                    n_vocab);
  }
  return SS_OK;
}

void ss_sampler_scratch_free(ss_sampler_scratch *w) {
  free(w->prob);
  free(w->idx);
  memset(w, 0, sizeof *w);
}

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
