/* Causal attention over the paged KV cache, one (token, head) pair at a time.
 *
 * Each pair computes its scores against positions [0, pos] of its own sequence,
 * a max-subtracted softmax and the weighted sum of V, in a fixed order, so its
 * result does not depend on the rest of the batch.  Threads take contiguous
 * ranges of pairs. */
#include <math.h>
#include <string.h>

#include "kernels/cpu/cpu_internal.h"

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

static inline float dot_f32(const float *a, const float *b, int n) {
#if defined(__AVX512F__)
  __m512 acc = _mm512_setzero_ps();
  int i = 0;
  for (; i + 16 <= n; i += 16)
    acc = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), acc);
  if (i < n) {
    __mmask16 m = (__mmask16)((1u << (n - i)) - 1);
    acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, a + i), _mm512_maskz_loadu_ps(m, b + i), acc);
  }
  return _mm512_reduce_add_ps(acc);
#else
  float s = 0.0f;
  for (int i = 0; i < n; i++) s += a[i] * b[i];
  return s;
#endif
}

typedef struct attn_job {
  const ss_kv_layer *kv;
  const ss_token_loc *loc;
  const float *q;
  const ss_attn_params *p;
  float *out;
  float *scores; /* per thread: max_pos + 1 floats */
  int64_t scores_stride;
} attn_job;

static void attn_worker(void *arg, int ith, int nth) {
  const attn_job *j = arg;
  const ss_attn_params *p = j->p;
  const ss_kv_layer *kv = j->kv;
  const int hd = p->head_dim;
  const int group = p->n_head / p->n_kv_head;
  const int bs = kv->block_size;
  float *sc = j->scores + (int64_t)ith * j->scores_stride;
  long lo, hi;
  ss_pool_split((long)(j->loc->n * p->n_head), ith, nth, &lo, &hi);
  for (long pair = lo; pair < hi; pair++) {
    const int64_t t = pair / p->n_head;
    const int h = (int)(pair % p->n_head);
    const int kvh = h / group;
    const int32_t pos = j->loc->pos[t];
    const int32_t *bt = j->loc->block_table[t];
    const float *q = j->q + (t * p->n_head + h) * hd;
    float mx = -INFINITY;
    for (int32_t s = 0; s <= pos; s++) {
      const float *k = kv->k + ((size_t)bt[s / bs] * bs + (size_t)(s % bs)) * kv->kv_dim +
                       (size_t)kvh * hd;
      float x = dot_f32(q, k, hd) * p->scale;
      if (p->softcap > 0.0f) x = p->softcap * tanhf(x / p->softcap);
      sc[s] = x;
      if (x > mx) mx = x;
    }
    float sum = 0.0f;
    for (int32_t s = 0; s <= pos; s++) {
      sc[s] = expf(sc[s] - mx);
      sum += sc[s];
    }
    const float inv = 1.0f / sum;
    float *o = j->out + (t * p->n_head + h) * hd;
    memset(o, 0, (size_t)hd * sizeof *o);
    for (int32_t s = 0; s <= pos; s++) {
      const float *v = kv->v + ((size_t)bt[s / bs] * bs + (size_t)(s % bs)) * kv->kv_dim +
                       (size_t)kvh * hd;
      const float w = sc[s] * inv;
      for (int d = 0; d < hd; d++) o[d] += w * v[d];
    }
  }
}

void ss_cpu_attention(ss_backend *be, const ss_kv_layer *kv, const ss_token_loc *loc,
                      const float *q, const ss_attn_params *p, float *out) {
  ss_cpu *cpu = be->ctx;
  int32_t max_pos = 0;
  for (int64_t t = 0; t < loc->n; t++)
    if (loc->pos[t] > max_pos) max_pos = loc->pos[t];
  const int nth = ss_pool_size(cpu->pool);
  const int64_t stride = ((int64_t)max_pos + 1 + 15) & ~(int64_t)15;
  float *scores = ss_cpu_scratch(cpu, SS_SCRATCH_ATTN, (size_t)(stride * nth) * sizeof(float));
  attn_job j = {.kv = kv, .loc = loc, .q = q, .p = p, .out = out, .scores = scores,
                .scores_stride = stride};
  ss_pool_run(cpu->pool, attn_worker, &j);
}
