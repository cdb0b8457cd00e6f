#include "bench/loadgen/report.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "runtime/base/status.h"

/* ---- the summary table --------------------------------------------------------- */

static void row_s(FILE *f, const char *k, const char *v) { fprintf(f, "%-40s %-10s\n", k, v); }
static void row_z(FILE *f, const char *k, size_t v) { fprintf(f, "%-40s %-10zu\n", k, v); }
static void row_i(FILE *f, const char *k, int64_t v) { fprintf(f, "%-40s %-10lld\n", k, (long long)v); }
static void row_f(FILE *f, const char *k, double v) { fprintf(f, "%-40s %-10.2f\n", k, v); }

static void header(FILE *f, const char *title, char fill) {
  int n = (int)strlen(title), left = (50 - n) / 2, right = 50 - n - left;
  for (int i = 0; i < left; i++) fputc(fill, f);
  fputs(title, f);
  for (int i = 0; i < right; i++) fputc(fill, f);
  fputc('\n', f);
}

static void dist_rows(FILE *f, const char *title, const char *name, const ss_lg_dist *d) {
  char k[64];
  header(f, title, '-');
  snprintf(k, sizeof k, "Mean %s (ms):", name);
  row_f(f, k, d->mean);
  snprintf(k, sizeof k, "Median %s (ms):", name);
  row_f(f, k, d->median);
  snprintf(k, sizeof k, "Std %s (ms):", name);
  row_f(f, k, d->std);
  static const char *pn[] = {"P50", "P90", "P95", "P99"};
  const double pv[] = {d->p50, d->p90, d->p95, d->p99};
  for (int i = 0; i < 4; i++) {
    snprintf(k, sizeof k, "%s %s (ms):", pn[i], name);
    row_f(f, k, pv[i]);
  }
}

/* Messages equal but for their numbers ("request 5", "after 3 chunks") are
 * one kind of error. */
static bool same_but_numbers(const char *a, const char *b) {
  for (;;) {
    bool da = *a >= '0' && *a <= '9', db = *b >= '0' && *b <= '9';
    if (da && db) {
      while (*a >= '0' && *a <= '9') a++;
      while (*b >= '0' && *b <= '9') b++;
      continue;
    }
    if (*a != *b) return false;
    if (!*a) return true;
    a++, b++;
  }
}

/* The most frequent kinds of error, with counts and one example each. */
static void print_errors(FILE *f, const ss_lg_run *run) {
  enum { MAX_DISTINCT = 32, SHOW = 5 };
  const char *msg[MAX_DISTINCT];
  size_t cnt[MAX_DISTINCT], distinct = 0, other = 0;
  for (size_t i = 0; i < run->count; i++) {
    const char *e = run->results[i].error;
    if (!e) continue;
    size_t k = 0;
    while (k < distinct && !same_but_numbers(msg[k], e)) k++;
    if (k == distinct) {
      if (distinct == MAX_DISTINCT) {
        other++;
        continue;
      }
      msg[distinct] = e;
      cnt[distinct++] = 0;
    }
    cnt[k]++;
  }
  if (!distinct) return;
  header(f, "Errors", '-');
  for (int shown = 0; shown < SHOW && shown < (int)distinct; shown++) {
    size_t best = 0;
    for (size_t k = 1; k < distinct; k++)
      if (cnt[k] > cnt[best]) best = k;
    fprintf(f, "%6zu x %s%s\n", cnt[best], msg[best], cnt[best] > 1 ? " (e.g.)" : "");
    cnt[best] = 0;
  }
  if (distinct > SHOW || other) fprintf(f, "  (and other messages)\n");
}

/* p50 TTFT (ms) of each turn's successful requests into p50 (turns); 0 where
 * none succeeded.  Returns false when out of memory. */
static bool turn_ttft_p50(const ss_lg_run *run, double *p50) {
  double *v = malloc((run->count + 1) * sizeof *v);
  if (!v) return false;
  for (size_t t = 0; t < run->turns; t++) {
    size_t n = 0;
    for (size_t i = 0; i < run->count; i++)
      if (!run->results[i].error && run->results[i].turn == (int64_t)t) v[n++] = run->results[i].ttft_s;
    ss_lg_dist d;
    ss_lg_dist_compute(v, n, 1e3, &d);
    p50[t] = d.p50;
  }
  free(v);
  return true;
}

/* The first failed turn in send order, or NULL. */
static const ss_lg_result *first_failure(const ss_lg_run *run) {
  for (size_t i = 0; i < run->count; i++)
    if (run->results[i].error) return &run->results[i];
  return NULL;
}

static void sessions_rows(FILE *f, const ss_lg_run *run) {
  char k[64];
  header(f, "Multi-turn sessions", '-');
  row_z(f, "Sessions:", run->sessions);
  row_z(f, "Turns per session:", run->turns);
  row_z(f, "Sessions with every turn answered:", run->sessions - run->sessions_cut);
  row_z(f, "Sessions cut short by a failed turn:", run->sessions_cut);
  row_z(f, "Turns not sent:", run->turns_unsent);
  const ss_lg_result *e = first_failure(run);
  if (e)
    fprintf(f, "First failed turn: session %lld turn %lld: %s\n", (long long)e->session,
            (long long)e->turn + 1, e->error);
  double *p50 = malloc(run->turns * sizeof *p50);
  if (p50 && turn_ttft_p50(run, p50))
    for (size_t t = 0; t < run->turns; t++) {
      snprintf(k, sizeof k, "P50 TTFT turn %zu (ms):", t + 1);
      row_f(f, k, p50[t]);
    }
  free(p50);
}

void ss_lg_report_print(FILE *f, const ss_lg_report_info *info, const ss_lg_summary *s,
                        const ss_lg_run *run) {
  char v[64];
  header(f, " Serving Benchmark Result ", '=');
  row_z(f, "Successful requests:", s->completed);
  row_z(f, "Failed requests:", s->failed);
  if (info->max_concurrency) row_i(f, "Maximum request concurrency:", info->max_concurrency);
  if (info->ramp) {
    snprintf(v, sizeof v, "%s %g->%g", info->ramp, info->ramp_start_rps, info->ramp_end_rps);
    row_s(f, "Request rate ramp (RPS):", v);
  } else if (isfinite(info->request_rate)) {
    row_f(f, "Request rate configured (RPS):", info->request_rate);
    row_f(f, "Burstiness factor:", info->burstiness);
  }
  row_f(f, "Benchmark duration (s):", s->duration_s);
  row_i(f, "Total input tokens:", s->total_input);
  row_i(f, "Total generated tokens:", s->total_output);
  row_f(f, "Request throughput (req/s):", s->request_throughput);
  if (s->has_goodput) row_f(f, "Request goodput (req/s):", s->request_goodput);
  row_f(f, "Output token throughput (tok/s):", s->output_throughput);
  row_f(f, "Total token throughput (tok/s):", s->total_token_throughput);
  row_z(f, "Peak concurrent requests:", s->max_concurrent);
  snprintf(v, sizeof v, "usage %zu, chunks %zu", s->output_from_usage, s->output_from_chunks);
  row_s(f, "Output tokens counted from:", v);
  if (info->cache || s->cached_reported) {
    header(f, "Prefix cache", '-');
    if (info->cache && info->cache->found) {
      row_s(f, "Server metrics:", info->cache->family);
      row_i(f, "Prefix cache queries (tokens):", (int64_t)info->cache->queries);
      row_i(f, "Prefix cache hits (tokens):", (int64_t)info->cache->hits);
      if (info->cache->queries > 0)
        row_f(f, "Prefix cache hit rate (%):", 100.0 * info->cache->hits / info->cache->queries);
      else if (info->cache->hits == 0)
        row_f(f, "Prefix cache hit rate (%):", 0.0); /* nothing looked up (caching off): no hits */
      else
        row_s(f, "Prefix cache hit rate (%):", "n/a");
    } else if (info->cache) {
      row_s(f, "Server metrics:", "no prefix-cache counters");
    }
    row_i(f, "Cached prompt tokens (usage):", s->total_cached);
    row_z(f, "Requests reporting cached tokens:", s->cached_reported);
    if (s->total_input > 0)
      row_f(f, "Cached share of input tokens (%):", 100.0 * (double)s->total_cached / (double)s->total_input);
  }
  if (run->turns) sessions_rows(f, run);
  dist_rows(f, "Time to First Token", "TTFT", &s->ttft_ms);
  dist_rows(f, "Time per Output Token (excl. 1st token)", "TPOT", &s->tpot_ms);
  dist_rows(f, "Inter-token Latency", "ITL", &s->itl_ms);
  dist_rows(f, "End-to-end Latency", "E2EL", &s->e2el_ms);
  header(f, "Generator send lag", '-');
  row_f(f, "Mean send lag (ms):", s->send_lag_ms.mean);
  row_f(f, "P99 send lag (ms):", s->send_lag_ms.p99);
  row_f(f, "Max send lag (ms):", s->send_lag_ms.max);
  print_errors(f, run);
  header(f, "", '=');
}

/* ---- the result file ----------------------------------------------------------- */

static int set(json_t *o, const char *k, json_t *v) {
  /* json_object_set_new takes ownership; a NULL v (allocation failure) is an error. */
  return v ? json_object_set_new(o, k, v) : -1;
}

static json_t *real_or_inf(double v) { return isfinite(v) ? json_real(v) : json_string("inf"); }

static int put_dist(json_t *o, const char *name, const ss_lg_dist *d) {
  char k[64];
  int bad = 0;
  snprintf(k, sizeof k, "mean_%s_ms", name), bad |= set(o, k, json_real(d->mean));
  snprintf(k, sizeof k, "median_%s_ms", name), bad |= set(o, k, json_real(d->median));
  snprintf(k, sizeof k, "std_%s_ms", name), bad |= set(o, k, json_real(d->std));
  snprintf(k, sizeof k, "p50_%s_ms", name), bad |= set(o, k, json_real(d->p50));
  snprintf(k, sizeof k, "p90_%s_ms", name), bad |= set(o, k, json_real(d->p90));
  snprintf(k, sizeof k, "p95_%s_ms", name), bad |= set(o, k, json_real(d->p95));
  snprintf(k, sizeof k, "p99_%s_ms", name), bad |= set(o, k, json_real(d->p99));
  return bad;
}

static json_t *build(const ss_lg_report_info *info, const ss_lg_summary *s,
                     const ss_lg_run *run) {
  json_t *o = json_object();
  if (!o) return NULL;
  char date[32];
  time_t now = time(NULL);
  struct tm tm;
  strftime(date, sizeof date, "%Y%m%d-%H%M%S", localtime_r(&now, &tm));
  int bad = 0;
  bad |= set(o, "date", json_string(date));
  bad |= set(o, "backend", json_string(info->backend));
  bad |= set(o, "endpoint_type", json_string(info->backend));
  bad |= set(o, "label", info->label ? json_string(info->label) : json_null());
  bad |= set(o, "base_url", json_string(info->base_url));
  bad |= set(o, "endpoint", json_string(info->endpoint));
  bad |= set(o, "model_id", json_string(info->model_id));
  bad |= set(o, "tokenizer_id", info->tokenizer_id ? json_string(info->tokenizer_id) : json_null());
  bad |= set(o, "dataset_name", json_string(info->dataset_name));
  bad |= set(o, "num_prompts", json_integer((json_int_t)s->requests));
  bad |= set(o, "request_rate", real_or_inf(info->request_rate));
  bad |= set(o, "burstiness", real_or_inf(info->burstiness));
  bad |= set(o, "max_concurrency",
             info->max_concurrency ? json_integer(info->max_concurrency) : json_null());
  if (info->ramp) {
    bad |= set(o, "ramp_up_strategy", json_string(info->ramp));
    bad |= set(o, "ramp_up_start_rps", json_real(info->ramp_start_rps));
    bad |= set(o, "ramp_up_end_rps", json_real(info->ramp_end_rps));
  }
  bad |= set(o, "seed", json_integer((json_int_t)info->seed));
  bad |= set(o, "duration", json_real(s->duration_s));
  bad |= set(o, "completed", json_integer((json_int_t)s->completed));
  bad |= set(o, "failed", json_integer((json_int_t)s->failed));
  bad |= set(o, "total_input_tokens", json_integer(s->total_input));
  bad |= set(o, "total_output_tokens", json_integer(s->total_output));
  bad |= set(o, "request_throughput", json_real(s->request_throughput));
  bad |= set(o, "request_goodput", s->has_goodput ? json_real(s->request_goodput) : json_null());
  if (s->has_goodput) {
    json_t *g = json_object();
    if (info->slo->ttft_ms >= 0) set(g, "ttft", json_real(info->slo->ttft_ms));
    if (info->slo->tpot_ms >= 0) set(g, "tpot", json_real(info->slo->tpot_ms));
    if (info->slo->e2el_ms >= 0) set(g, "e2el", json_real(info->slo->e2el_ms));
    bad |= set(o, "goodput", g);
    bad |= set(o, "good_requests", json_integer((json_int_t)s->good));
  }
  bad |= set(o, "output_throughput", json_real(s->output_throughput));
  bad |= set(o, "total_token_throughput", json_real(s->total_token_throughput));
  bad |= set(o, "total_cached_tokens", json_integer(s->total_cached));
  bad |= set(o, "cached_tokens_reported", json_integer((json_int_t)s->cached_reported));
  if (info->cache && info->cache->found) {
    bad |= set(o, "prefix_cache_metrics", json_string(info->cache->family));
    bad |= set(o, "prefix_cache_queries", json_integer((json_int_t)info->cache->queries));
    bad |= set(o, "prefix_cache_hits", json_integer((json_int_t)info->cache->hits));
    bad |= set(o, "prefix_cache_hit_rate",
               info->cache->queries > 0 ? json_real(info->cache->hits / info->cache->queries)
               : info->cache->hits == 0 ? json_real(0) : json_null());
  } else {
    bad |= set(o, "prefix_cache_hit_rate", json_null());
  }
  bad |= set(o, "max_concurrent_requests", json_integer((json_int_t)s->max_concurrent));
  bad |= put_dist(o, "ttft", &s->ttft_ms);
  bad |= put_dist(o, "tpot", &s->tpot_ms);
  bad |= put_dist(o, "itl", &s->itl_ms);
  bad |= put_dist(o, "e2el", &s->e2el_ms);
  bad |= set(o, "mean_send_lag_ms", json_real(s->send_lag_ms.mean));
  bad |= set(o, "p99_send_lag_ms", json_real(s->send_lag_ms.p99));
  bad |= set(o, "max_send_lag_ms", json_real(s->send_lag_ms.max));
  bad |= set(o, "output_tokens_from_usage", json_integer((json_int_t)s->output_from_usage));
  bad |= set(o, "output_tokens_from_chunks", json_integer((json_int_t)s->output_from_chunks));

  if (run->turns) {
    bad |= set(o, "num_sessions", json_integer((json_int_t)run->sessions));
    bad |= set(o, "turns_per_session", json_integer((json_int_t)run->turns));
    bad |= set(o, "sessions_cut_short", json_integer((json_int_t)run->sessions_cut));
    bad |= set(o, "turns_not_sent", json_integer((json_int_t)run->turns_unsent));
    const ss_lg_result *e = first_failure(run);
    bad |= set(o, "first_session_error", e ? json_string(e->error) : json_null());
    double *p50 = malloc(run->turns * sizeof *p50);
    json_t *a = json_array();
    bad |= set(o, "p50_ttft_ms_by_turn", a);
    if (!p50 || !turn_ttft_p50(run, p50)) bad = 1;
    for (size_t t = 0; p50 && t < run->turns && !bad; t++) bad |= json_array_append_new(a, json_real(p50[t]));
    free(p50);
    /* Per request: the session (from 0), the turn (from 1, as printed) and
     * usage's cached prompt tokens (-1: not reported). */
    json_t *ss = json_array(), *tt = json_array(), *ct = json_array();
    bad |= set(o, "sessions", ss) | set(o, "turns", tt) | set(o, "cached_tokens", ct);
    for (size_t i = 0; i < run->count && !bad; i++) {
      bad |= json_array_append_new(ss, json_integer(run->results[i].session));
      bad |= json_array_append_new(tt, json_integer(run->results[i].turn + 1));
      bad |= json_array_append_new(ct, json_integer(run->results[i].cached_tokens));
    }
  }
  /* Per-request arrays in send order; seconds, as vLLM writes them. */
  json_t *in = json_array(), *outl = json_array(), *tt = json_array(), *itls = json_array();
  json_t *lat = json_array(), *st = json_array(), *err = json_array(), *lag = json_array();
  json_t *usage = json_array();
  bad |= set(o, "input_lens", in) | set(o, "output_lens", outl) | set(o, "ttfts", tt) |
         set(o, "itls", itls) | set(o, "latencies", lat) | set(o, "start_times", st) |
         set(o, "errors", err) | set(o, "send_lags", lag) | set(o, "output_lens_from_usage", usage);
  for (size_t i = 0; i < run->count && !bad; i++) {
    const ss_lg_result *r = &run->results[i];
    bool ok = !r->error;
    json_t *g = json_array();
    for (size_t k = 0; ok && k < r->itl_count; k++) bad |= json_array_append_new(g, json_real(r->itls_s[k]));
    bad |= json_array_append_new(in, json_integer(r->input_tokens));
    bad |= json_array_append_new(outl, json_integer(ok ? r->output_tokens : 0));
    bad |= json_array_append_new(tt, json_real(ok ? r->ttft_s : 0));
    bad |= json_array_append_new(itls, g);
    bad |= json_array_append_new(lat, json_real(ok ? r->e2e_s : 0));
    bad |= json_array_append_new(st, json_real(r->send_s));
    bad |= json_array_append_new(err, json_string(ok ? "" : r->error));
    bad |= json_array_append_new(lag, json_real(r->send_s - r->ready_s));
    bad |= json_array_append_new(usage, json_boolean(r->output_from_usage));
  }
  if (bad) {
    json_decref(o);
    return NULL;
  }
  return o;
}

int ss_lg_report_save(const char *path, const ss_lg_report_info *info, const ss_lg_summary *s,
                      const ss_lg_run *run) {
  json_t *o = build(info, s, run);
  if (!o) return ss_error(SS_ERR_NOMEM, "%s: out of memory building the result", path);
  FILE *f = fopen(path, "w");
  if (!f) {
    json_decref(o);
    return ss_error(SS_ERR_IO, "%s: cannot write: %s", path, strerror(errno));
  }
  int bad = json_dumpf(o, f, JSON_REAL_PRECISION(10)) != 0;
  bad |= fputc('\n', f) == EOF;
  bad |= fclose(f) != 0;
  json_decref(o);
  if (bad) return ss_error(SS_ERR_IO, "%s: write failed: %s", path, strerror(errno));
  return SS_OK;
}

/* ---- the sweep ------------------------------------------------------------------- */

void ss_lg_sweep_print(FILE *f, const ss_lg_sweep_row *rows, size_t count, bool has_goodput) {
  fprintf(f, "%9s %9s %9s %6s %6s %9s %9s %9s %9s %9s %9s %9s %9s\n", "offered", "achieved",
          has_goodput ? "goodput" : "-", "ok", "failed", "out_tok/s", "ttft_p50", "ttft_p99",
          "tpot_p50", "tpot_p99", "itl_p99", "e2el_p99", "lag_p99");
  fprintf(f, "%9s %9s %9s %6s %6s %9s %9s %9s %9s %9s %9s %9s %9s\n", "req/s", "req/s",
          has_goodput ? "req/s" : "", "", "", "", "ms", "ms", "ms", "ms", "ms", "ms", "ms");
  for (size_t i = 0; i < count; i++) {
    const ss_lg_summary *s = &rows[i].s;
    fprintf(f, "%9.2f %9.2f %9.2f %6zu %6zu %9.1f %9.2f %9.2f %9.2f %9.2f %9.2f %9.2f %9.2f\n",
            rows[i].offered_rps, s->request_throughput, has_goodput ? s->request_goodput : 0,
            s->completed, s->failed, s->output_throughput, s->ttft_ms.p50, s->ttft_ms.p99,
            s->tpot_ms.p50, s->tpot_ms.p99, s->itl_ms.p99, s->e2el_ms.p99, s->send_lag_ms.p99);
  }
}

/* gnuplot's single-quoted strings: a quote is written twice. */
static void gp_quote(FILE *f, const char *s) {
  fputc('\'', f);
  for (; *s; s++) {
    if (*s == '\'') fputc('\'', f);
    fputc(*s, f);
  }
  fputc('\'', f);
}

int ss_lg_sweep_write(const char *prefix, const char *format, const char *title,
                      const ss_lg_sweep_row *rows, size_t count, char **plot_path) {
  *plot_path = NULL;
  bool svg = strcmp(format, "svg") == 0;
  size_t n = strlen(prefix) + 8;
  char *tsv = malloc(n), *gp = malloc(n), *img = malloc(n);
  if (!tsv || !gp || !img) {
    free(tsv), free(gp), free(img);
    return ss_error(SS_ERR_NOMEM, "out of memory");
  }
  snprintf(tsv, n, "%s.tsv", prefix);
  snprintf(gp, n, "%s.gp", prefix);
  snprintf(img, n, "%s.%s", prefix, svg ? "svg" : "png");
  int rc = SS_OK;
  FILE *f = fopen(tsv, "w");
  if (!f) {
    rc = ss_error(SS_ERR_IO, "%s: cannot write: %s", tsv, strerror(errno));
    goto out;
  }
  fprintf(f, "# offered_rps\tachieved_rps\tgoodput_rps\tcompleted\tfailed\toutput_tok_s\t"
             "ttft_p50_ms\tttft_p90_ms\tttft_p99_ms\ttpot_p50_ms\ttpot_p99_ms\titl_p50_ms\t"
             "itl_p99_ms\te2el_p50_ms\te2el_p99_ms\tsend_lag_p99_ms\n");
  for (size_t i = 0; i < count; i++) {
    const ss_lg_summary *s = &rows[i].s;
    fprintf(f, "%g\t%.4f\t%.4f\t%zu\t%zu\t%.3f\t%.3f\t%.3f\t%.3f\t%.3f\t%.3f\t%.3f\t%.3f\t%.3f\t"
               "%.3f\t%.3f\n", rows[i].offered_rps, s->request_throughput,
            s->has_goodput ? s->request_goodput : s->request_throughput, s->completed, s->failed,
            s->output_throughput, s->ttft_ms.p50, s->ttft_ms.p90, s->ttft_ms.p99, s->tpot_ms.p50,
            s->tpot_ms.p99, s->itl_ms.p50, s->itl_ms.p99, s->e2el_ms.p50, s->e2el_ms.p99,
            s->send_lag_ms.p99);
  }
  if (fclose(f)) {
    rc = ss_error(SS_ERR_IO, "%s: write failed", tsv);
    goto out;
  }
  if (!(f = fopen(gp, "w"))) {
    rc = ss_error(SS_ERR_IO, "%s: cannot write: %s", gp, strerror(errno));
    goto out;
  }
  if (svg) fprintf(f, "set terminal svg size 900,900 dynamic background rgb 'white'\n");
  else fprintf(f, "if (strstrt(GPVAL_TERMINALS, 'pngcairo') > 0) { set terminal pngcairo "
                  "size 900,900 } else { set terminal png size 900,900 }\n");
  fprintf(f, "set output "), gp_quote(f, img), fputc('\n', f);
  fprintf(f, "data = "), gp_quote(f, tsv), fputc('\n', f);
  fprintf(f, "set multiplot layout 2,1 title "), gp_quote(f, title), fputc('\n', f);
  fprintf(f,
          "set grid\nset key left top\nset xlabel 'offered load (req/s)'\n"
          "set ylabel 'latency (ms)'\nset logscale y\n"
          "plot data using 1:7 with linespoints title 'TTFT p50', \\\n"
          "     data using 1:9 with linespoints title 'TTFT p99', \\\n"
          "     data using 1:10 with linespoints title 'TPOT p50', \\\n"
          "     data using 1:11 with linespoints title 'TPOT p99', \\\n"
          "     data using 1:15 with linespoints title 'E2EL p99'\n"
          "unset logscale y\nset ylabel 'requests/s'\n"
          "plot data using 1:2 with linespoints title 'achieved throughput', \\\n"
          "     data using 1:3 with linespoints title 'goodput (meets every SLO)', \\\n"
          "     data using 1:1 with lines dashtype 2 title 'offered'\n"
          "unset multiplot\n");
  if (fclose(f)) {
    rc = ss_error(SS_ERR_IO, "%s: write failed", gp);
    goto out;
  }
  fflush(NULL);
  pid_t pid = fork();
  if (pid < 0) {
    rc = ss_error(SS_ERR_IO, "cannot start gnuplot: %s", strerror(errno));
    goto out;
  }
  if (pid == 0) {
    execlp("gnuplot", "gnuplot", gp, (char *)NULL);
    _exit(127);
  }
  int st = 0;
  while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {}
  if (WIFEXITED(st) && WEXITSTATUS(st) == 127) {
    rc = ss_error(SS_ERR_UNSUPPORTED, "gnuplot is not installed: wrote %s and %s; install "
                  "gnuplot-nox and run 'gnuplot %s' for the plot", tsv, gp, gp);
  } else if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
    rc = ss_error(SS_ERR_IO, "gnuplot failed on %s (status %d)", gp, st);
  } else {
    *plot_path = img;
    img = NULL;
  }
out:
  free(tsv), free(gp), free(img);
  return rc;
}
