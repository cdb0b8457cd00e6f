/* Prometheus text-format metrics: counters, gauges and histograms rendered
 * into a growable buffer.  The owner serialises access (the engine holds its
 * lock while updating and while rendering). */
#ifndef SS_METRICS_H
#define SS_METRICS_H

#include <stddef.h>
#include <stdint.h>

/* A growable text buffer (NUL-terminated). */
typedef struct ss_strbuf {
  char *p;
  size_t len, cap;
  int failed; /* an allocation failed: the text is incomplete */
} ss_strbuf;

void ss_strbuf_printf(ss_strbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void ss_strbuf_append(ss_strbuf *b, const char *s, size_t n);
void ss_strbuf_free(ss_strbuf *b);

#define SS_HIST_MAX_BUCKETS 32

typedef struct ss_histogram {
  int n_bounds;
  double bounds[SS_HIST_MAX_BUCKETS]; /* upper bounds, increasing; +Inf is implicit */
  uint64_t counts[SS_HIST_MAX_BUCKETS + 1];
  uint64_t count;
  double sum;
} ss_histogram;

/* bounds: n increasing upper bounds (n <= SS_HIST_MAX_BUCKETS). */
void ss_histogram_init(ss_histogram *h, const double *bounds, int n);
void ss_histogram_observe(ss_histogram *h, double v);

/* "# HELP" / "# TYPE" and the samples; labels is "" or 'key="value"'. */
void ss_metric_header(ss_strbuf *b, const char *name, const char *type, const char *help);
void ss_metric_value(ss_strbuf *b, const char *name, const char *labels, double v);
void ss_metric_histogram(ss_strbuf *b, const char *name, const char *help, const ss_histogram *h);

#endif
