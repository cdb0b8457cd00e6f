#include "bench/loadgen/stats.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/base/stats.h"
#include "runtime/base/status.h"

void ss_lg_results_free(ss_lg_result *r, size_t n) {
  if (!r) return;
  for (size_t i = 0; i < n; i++) {
    free(r[i].itls_s);
    free(r[i].error);
    r[i].itls_s = NULL;
    r[i].error = NULL;
  }
}

void ss_lg_dist_compute(double *v, size_t count, double scale, ss_lg_dist *out) {
  memset(out, 0, sizeof *out);
  out->count = count;
  if (count == 0) return;
  double sum = 0;
  for (size_t i = 0; i < count; i++) sum += v[i] *= scale;
  ss_sort_doubles(v, count);
  double mean = sum / (double)count, ss = 0;
  for (size_t i = 0; i < count; i++) ss += (v[i] - mean) * (v[i] - mean);
  out->mean = mean;
  out->std = sqrt(ss / (double)count);
  out->median = ss_percentile(v, count, 50);
  out->p50 = out->median;
  out->p90 = ss_percentile(v, count, 90);
  out->p95 = ss_percentile(v, count, 95);
  out->p99 = ss_percentile(v, count, 99);
  out->max = v[count - 1];
}

typedef struct event {
  double t;
  int delta;
} event;

static int cmp_event(const void *a, const void *b) {
  const event *x = a, *y = b;
  if (x->t != y->t) return (x->t > y->t) - (x->t < y->t);
  return x->delta - y->delta; /* a departure before an arrival at the same time */
}

int ss_lg_summarize(const ss_lg_result *r, size_t n, double duration_s, const ss_lg_slo *slo,
                    ss_lg_summary *out) {
  memset(out, 0, sizeof *out);
  out->requests = n;
  out->duration_s = duration_s;
  size_t n_itl = 0;
  for (size_t i = 0; i < n; i++)
    if (!r[i].error) n_itl += r[i].itl_count;
  double *ttft = malloc((n + 1) * sizeof *ttft), *tpot = malloc((n + 1) * sizeof *tpot);
  double *e2el = malloc((n + 1) * sizeof *e2el), *lag = malloc((n + 1) * sizeof *lag);
  double *itl = malloc((n_itl + 1) * sizeof *itl);
  event *ev = malloc((2 * n + 1) * sizeof *ev);
  if (!ttft || !tpot || !e2el || !lag || !itl || !ev) {
    free(ttft), free(tpot), free(e2el), free(lag), free(itl), free(ev);
    return ss_error(SS_ERR_NOMEM, "summary: out of memory for %zu requests", n);
  }
  size_t n_ok = 0, n_tpot = 0, k_itl = 0, n_ev = 0;
  bool want_slo = slo && (slo->ttft_ms >= 0 || slo->tpot_ms >= 0 || slo->e2el_ms >= 0);
  for (size_t i = 0; i < n; i++) {
    const ss_lg_result *q = &r[i];
    lag[i] = q->send_s - q->ready_s;
    if (q->error) continue;
    out->completed++;
    out->total_input += q->input_tokens;
    out->total_output += q->output_tokens;
    if (q->cached_tokens >= 0) {
      out->total_cached += q->cached_tokens;
      out->cached_reported++;
    }
    if (q->output_from_usage) out->output_from_usage++;
    else out->output_from_chunks++;
    ttft[n_ok] = q->ttft_s;
    e2el[n_ok] = q->e2e_s;
    n_ok++;
    double tp = 0;
    if (q->output_tokens > 1) {
      tp = (q->e2e_s - q->ttft_s) / (double)(q->output_tokens - 1);
      tpot[n_tpot++] = tp;
    }
    if (q->itl_count) memcpy(itl + k_itl, q->itls_s, q->itl_count * sizeof *itl);
    k_itl += q->itl_count;
    ev[n_ev++] = (event){q->send_s, +1};
    ev[n_ev++] = (event){q->send_s + q->e2e_s, -1};
    if (want_slo) {
      bool good = (slo->ttft_ms < 0 || q->ttft_s * 1e3 <= slo->ttft_ms) &&
                  (slo->tpot_ms < 0 || tp * 1e3 <= slo->tpot_ms) &&
                  (slo->e2el_ms < 0 || q->e2e_s * 1e3 <= slo->e2el_ms);
      out->good += good;
    }
  }
  out->failed = n - out->completed;
  out->has_goodput = want_slo;
  if (duration_s > 0) {
    out->request_throughput = (double)out->completed / duration_s;
    out->request_goodput = (double)out->good / duration_s;
    out->output_throughput = (double)out->total_output / duration_s;
    out->total_token_throughput = (double)(out->total_input + out->total_output) / duration_s;
  }
  ss_lg_dist_compute(ttft, n_ok, 1e3, &out->ttft_ms);
  ss_lg_dist_compute(tpot, n_tpot, 1e3, &out->tpot_ms);
  ss_lg_dist_compute(itl, k_itl, 1e3, &out->itl_ms);
  ss_lg_dist_compute(e2el, n_ok, 1e3, &out->e2el_ms);
  ss_lg_dist_compute(lag, n, 1e3, &out->send_lag_ms);
  qsort(ev, n_ev, sizeof *ev, cmp_event);
  long cur = 0, peak = 0;
  for (size_t i = 0; i < n_ev; i++) {
    cur += ev[i].delta;
    if (cur > peak) peak = cur;
  }
  out->max_concurrent = (size_t)peak;
  free(ttft), free(tpot), free(e2el), free(lag), free(itl), free(ev);
  return SS_OK;
}
