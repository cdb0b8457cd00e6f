#include "runtime/base/metrics.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int grow(ss_strbuf *b, size_t extra) {
  if (b->failed) return -1;
  if (b->len + extra + 1 <= b->cap) return 0;
  size_t cap = b->cap ? b->cap : 4096;
  while (cap < b->len + extra + 1) cap *= 2;
  char *p = realloc(b->p, cap);
  if (!p) {
    b->failed = 1;
    return -1;
  }
  b->p = p;
  b->cap = cap;
  return 0;
}

void ss_strbuf_append(ss_strbuf *b, const char *s, size_t n) {
  if (grow(b, n)) return;
  memcpy(b->p + b->len, s, n);
  b->len += n;
  b->p[b->len] = 0;
}

void ss_strbuf_printf(ss_strbuf *b, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  va_list ap2;
  va_copy(ap2, ap);
  int n = vsnprintf(NULL, 0, fmt, ap);
  va_end(ap);
  if (n >= 0 && grow(b, (size_t)n) == 0) {
    vsnprintf(b->p + b->len, (size_t)n + 1, fmt, ap2);
    b->len += (size_t)n;
  }
  va_end(ap2);
}

void ss_strbuf_free(ss_strbuf *b) {
  free(b->p);
  memset(b, 0, sizeof *b);
}

void ss_histogram_init(ss_histogram *h, const double *bounds, int n) {
  memset(h, 0, sizeof *h);
  h->n_bounds = n < SS_HIST_MAX_BUCKETS ? n : SS_HIST_MAX_BUCKETS;
  memcpy(h->bounds, bounds, (size_t)h->n_bounds * sizeof *bounds);
}

void ss_histogram_observe(ss_histogram *h, double v) {
  int i = 0;
  while (i < h->n_bounds && v > h->bounds[i]) i++;
  h->counts[i]++;
  h->count++;
  h->sum += v;
}

void ss_metric_header(ss_strbuf *b, const char *name, const char *type, const char *help) {
  ss_strbuf_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* Prometheus floats: integers print exactly, others with full precision. */
static void put_value(ss_strbuf *b, double v) {
  if (isinf(v)) ss_strbuf_printf(b, v > 0 ? "+Inf" : "-Inf");
  else if (isnan(v)) ss_strbuf_printf(b, "NaN");
  else if (v == floor(v) && fabs(v) < 1e15) ss_strbuf_printf(b, "%.0f", v);
  else ss_strbuf_printf(b, "%.9g", v);
}

void ss_metric_value(ss_strbuf *b, const char *name, const char *labels, double v) {
  if (labels && *labels) ss_strbuf_printf(b, "%s{%s} ", name, labels);
  else ss_strbuf_printf(b, "%s ", name);
  put_value(b, v);
  ss_strbuf_append(b, "\n", 1);
}

void ss_metric_histogram(ss_strbuf *b, const char *name, const char *help, const ss_histogram *h) {
  ss_metric_header(b, name, "histogram", help);
  uint64_t cum = 0;
  for (int i = 0; i < h->n_bounds; i++) {
    cum += h->counts[i];
    ss_strbuf_printf(b, "%s_bucket{le=\"%.9g\"} %llu\n", name, h->bounds[i], (unsigned long long)cum);
  }
  cum += h->counts[h->n_bounds];
  ss_strbuf_printf(b, "%s_bucket{le=\"+Inf\"} %llu\n", name, (unsigned long long)cum);
  ss_strbuf_printf(b, "%s_sum ", name);
  put_value(b, h->sum);
  ss_strbuf_printf(b, "\n%s_count %llu\n", name, (unsigned long long)h->count);
}
