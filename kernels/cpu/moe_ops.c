/* CPU kernels of the slots added for mixture-of-experts models and the Grok
 * families: GeGLU, soft cap, scaling, routing, and the gather / scatter-add
 * that turn routed tokens into dense per-expert batches and back.  Contracts
 * are in kernels/kernels.h. */
#include <math.h>
#include <string.h>

#include "kernels/cpu/cpu_internal.h"

/* Elementwise work below this many floats runs on the calling thread. */
#define PAR_MIN_COUNT 8192

typedef struct gelu_job {
  const float *g, *u;
  float *out;
  int64_t count;
  int tanh_approx;
} gelu_job;

static void gelu_range(const gelu_job *j, long lo, long hi) {
  /* sqrt(2/pi), and the cubic coefficient of the tanh approximation
   * (Hendrycks & Gimpel 2016, eq. for GELU ~ 0.5x(1+tanh(...))). */
  const float k0 = 0.7978845608028654f, k1 = 0.044715f;
  if (j->tanh_approx) {
    for (long i = lo; i < hi; i++) {
      const float x = j->g[i];
      j->out[i] = 0.5f * x * (1.0f + tanhf(k0 * (x + k1 * x * x * x))) * j->u[i];
    }
  } else {
    for (long i = lo; i < hi; i++) {
      const float x = j->g[i];
      j->out[i] = 0.5f * x * (1.0f + erff(x * 0.7071067811865476f)) * j->u[i];
    }
  }
}

static void gelu_worker(void *arg, int ith, int nth) {
  const gelu_job *j = arg;
  long lo, hi;
  ss_pool_split((long)j->count, ith, nth, &lo, &hi);
  gelu_range(j, lo, hi);
}

void ss_cpu_gelu_mul(ss_backend *be, const float *gate, const float *up, int64_t count,
                     int tanh_approx, float *out) {
  gelu_job j = {.g = gate, .u = up, .out = out, .count = count, .tanh_approx = tanh_approx};
  if (count < PAR_MIN_COUNT) {
    gelu_range(&j, 0, (long)count);
    return;
  }
  ss_pool_run(((ss_cpu *)be->ctx)->pool, gelu_worker, &j);
}

void ss_cpu_softcap(ss_backend *be, float *x, int64_t count, float cap) {
  for (int64_t i = 0; i < count; i++) x[i] = cap * tanhf(x[i] / cap);
}

void ss_cpu_scale(ss_backend *be, float *x, int64_t count, float s) {
  for (int64_t i = 0; i < count; i++) x[i] *= s;
}

void ss_cpu_moe_route(ss_backend *be, const float *logits, int64_t n, const ss_moe_route_params *p,
                      int32_t *ids, float *weights) {
  const int E = p->n_expert, K = p->top_k;
  SS_ASSERT(E >= 1 && E <= 1024 && K >= 1 && K <= E);
  double prob[1024];
  for (int64_t t = 0; t < n; t++) {
    const float *l = logits + t * E;
    double mx = -INFINITY;
    for (int e = 0; e < E; e++) {
      double v = p->softcap > 0.0f ? (double)(p->softcap * tanhf(l[e] / p->softcap)) : (double)l[e];
      prob[e] = v;
      mx = v > mx ? v : mx;
    }
    double sum = 0.0;
    for (int e = 0; e < E; e++) {
      prob[e] = exp(prob[e] - mx);
      sum += prob[e];
    }
    int32_t *id = ids + t * K;
    float *w = weights + t * K;
    double chosen = 0.0;
    for (int k = 0; k < K; k++) {
      /* The largest remaining probability; strict '>' keeps the lower id on ties. */
      int best = -1;
      for (int e = 0; e < E; e++) {
        bool taken = false;
        for (int j = 0; j < k; j++) taken |= id[j] == e;
        if (!taken && (best < 0 || prob[e] > prob[best])) best = e;
      }
      id[k] = best;
      chosen += prob[best];
    }
    for (int k = 0; k < K; k++)
      w[k] = (float)(p->renormalize ? prob[id[k]] / chosen : prob[id[k]] / sum);
  }
}

void ss_cpu_gather_rows(ss_backend *be, const float *x, const int32_t *rows, int64_t n, int64_t dim,
                        float *out) {
  for (int64_t i = 0; i < n; i++)
    memcpy(out + i * dim, x + (int64_t)rows[i] * dim, (size_t)dim * sizeof *out);
}

void ss_cpu_scatter_add_rows(ss_backend *be, float *out, const float *y, const int32_t *rows,
                             const float *w, int64_t n, int64_t dim) {
  for (int64_t i = 0; i < n; i++) {
    float *o = out + (int64_t)rows[i] * dim;
    const float *yi = y + i * dim;
    for (int64_t j = 0; j < dim; j++) {
      const float v = w[i] * yi[j];
      o[j] += v;
    }
  }
}
