/* Load generator: the arrival schedule against gamma-process theory, the
 * statistics against numpy, the SSE and chunk parsers, and the dataset
 * parsers on good and malformed files. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench/loadgen/client.h"
#include "bench/loadgen/dataset.h"
#include "bench/loadgen/sse.h"
#include "bench/loadgen/stats.h"
#include "runtime/base/stats.h"
#include "runtime/base/status.h"
#include "runtime/formats/gguf.h"
#include "runtime/planner/arrivals.h"
#include "runtime/tokenizer/tokenizer.h"

/* ---- schedule ---------------------------------------------------------------------- */

#define N_GAPS 200000

/* Mean and coefficient of variation of the gaps of a seeded schedule at 10
 * req/s.  Theory for Gamma(shape B, scale 1/(rate B)): mean 1/rate, CV 1/sqrt(B).
 * Tolerance: 2% relative on both.  With 200000 gaps the standard error of the
 * mean is CV/sqrt(N) = 0.32% of it at B = 0.5 (the widest case), and that of the
 * CV about sqrt((kurtosis - 1) / 4N) = 0.42% (gamma kurtosis 3 + 6/B), so 2% is
 * more than 4 standard errors for every B tested. */
static void gap_stats(double burstiness, uint64_t seed, double *mean, double *cv) {
  ss_arrivals_params p = {.rate = 10, .burstiness = burstiness, .count = N_GAPS + 1,
                             .seed = seed};
  double *t;
  size_t n;
  assert_int_equal(ss_arrivals_build(&p, &t, &n), SS_OK);
  assert_int_equal(n, N_GAPS + 1);
  assert_true(t[0] == 0);
  double s = 0, ss = 0;
  for (size_t i = 1; i < n; i++) {
    double g = t[i] - t[i - 1];
    assert_true(g >= 0);
    s += g;
  }
  *mean = s / N_GAPS;
  for (size_t i = 1; i < n; i++) ss += (t[i] - t[i - 1] - *mean) * (t[i] - t[i - 1] - *mean);
  *cv = sqrt(ss / N_GAPS) / *mean;
  free(t);
}

static void test_schedule_gamma(void **state) {
  const double bs[] = {0.5, 1, 4};
  for (int i = 0; i < 3; i++) {
    double mean, cv, want_cv = 1 / sqrt(bs[i]);
    gap_stats(bs[i], 42, &mean, &cv);
    if (fabs(mean - 0.1) > 0.02 * 0.1 || fabs(cv - want_cv) > 0.02 * want_cv)
      fail_msg("B=%g: mean %.5f (want 0.1), CV %.4f (want %.4f)", bs[i], mean, cv, want_cv);
  }
  double mean, cv;
  gap_stats(INFINITY, 42, &mean, &cv);
  assert_true(fabs(mean - 0.1) < 1e-12);
  assert_true(cv < 1e-6);
}

static void test_schedule_seed(void **state) {
  ss_arrivals_params p = {.rate = 5, .burstiness = 1, .count = 100, .seed = 7};
  double *a, *b, *c;
  size_t na, nb, nc;
  assert_int_equal(ss_arrivals_build(&p, &a, &na), 0);
  assert_int_equal(ss_arrivals_build(&p, &b, &nb), 0);
  p.seed = 8;
  assert_int_equal(ss_arrivals_build(&p, &c, &nc), 0);
  assert_memory_equal(a, b, na * sizeof *a);
  assert_true(memcmp(a, c, na * sizeof *a) != 0);
  free(a), free(b), free(c);
}

static void test_schedule_duration_ramp(void **state) {
  /* Poisson at 100/s for 10 s: ~1000 arrivals (sd 31.6), all before 10 s. */
  ss_arrivals_params p = {.rate = 100, .burstiness = 1, .duration_s = 10, .seed = 1};
  double *t;
  size_t n;
  assert_int_equal(ss_arrivals_build(&p, &t, &n), 0);
  assert_true(n > 1000 - 160 && n < 1000 + 160);
  assert_true(t[n - 1] < 10);
  free(t);
  /* A constant-gap linear ramp 1 -> 10 req/s over 10 requests: gap i is
   * 1/rate_i with rate_i = 1 + 9 i / 9. */
  ss_arrivals_params r = {.burstiness = INFINITY, .ramp = SS_RAMP_LINEAR,
                             .ramp_start_rps = 1, .ramp_end_rps = 10, .count = 10};
  assert_int_equal(ss_arrivals_build(&r, &t, &n), 0);
  for (size_t i = 1; i < n; i++) assert_true(fabs(t[i] - t[i - 1] - 1.0 / (double)i) < 1e-12);
  free(t);
  /* Infinite rate: everything at 0. */
  ss_arrivals_params inf = {.rate = INFINITY, .burstiness = 1, .count = 5};
  assert_int_equal(ss_arrivals_build(&inf, &t, &n), 0);
  for (size_t i = 0; i < n; i++) assert_true(t[i] == 0);
  free(t);
}

static void test_schedule_errors(void **state) {
  double *t;
  size_t n;
  ss_arrivals_params p = {.rate = -1, .burstiness = 1, .count = 5};
  assert_int_equal(ss_arrivals_build(&p, &t, &n), SS_ERR_RANGE);
  assert_non_null(strstr(ss_error_msg(), "rate"));
  p.rate = 1, p.burstiness = 0;
  assert_int_equal(ss_arrivals_build(&p, &t, &n), SS_ERR_RANGE);
  assert_non_null(strstr(ss_error_msg(), "burstiness"));
  p.rate = NAN, p.burstiness = 1;
  assert_int_equal(ss_arrivals_build(&p, &t, &n), SS_ERR_RANGE);
  ss_arrivals_params q = {.rate = INFINITY, .burstiness = 1, .duration_s = 5};
  assert_int_equal(ss_arrivals_build(&q, &t, &n), SS_ERR_INVALID);
  ss_arrivals_params big = {.rate = 1e9, .burstiness = 1, .duration_s = 1e3};
  assert_int_equal(ss_arrivals_build(&big, &t, &n), SS_ERR_RANGE);
}

/* ---- statistics ------------------------------------------------------------------- */

/* Expected values from numpy 2.4.6: np.percentile(x, p) (method "linear",
 * the default that vLLM uses), np.mean, np.std (ddof 0).  Tolerance 1e-12
 * relative. */
static void near(double got, double want) {
  if (fabs(got - want) > 1e-12 * fmax(1, fabs(want))) fail_msg("got %.17g, want %.17g", got, want);
}

static void test_percentiles_numpy(void **state) {
  const double x[] = {15, 20, 35, 40, 50};
  const double ps[] = {0, 10, 25, 50, 90, 95, 99, 100};
  const double want[] = {15.0, 17.0, 20.0, 35.0, 46.0, 48.0, 49.6, 50.0};
  for (int i = 0; i < 8; i++) near(ss_percentile(x, 5, ps[i]), want[i]);
  double y[] = {3.1, 0.4, 9.7, 2.2, 5.5, 7.3, 1.05, 8.8, 4.4, 6.6, 0.0, 12.5};
  ss_lg_dist d;
  ss_lg_dist_compute(y, 12, 1.0, &d);
  near(d.p50, 4.95);
  near(d.median, 4.95);
  near(d.p90, 9.61);
  near(d.p95, 10.959999999999997);
  near(d.p99, 12.192000000000002);
  near(d.mean, 5.129166666666666);
  near(d.std, 3.8106461795285527);
  near(d.max, 12.5);
  double one[] = {7.0};
  ss_lg_dist_compute(one, 1, 1000.0, &d); /* the scale applies first */
  near(d.p99, 7000.0);
  ss_lg_dist_compute(NULL, 0, 1.0, &d); /* empty: zeros, as vLLM's np.mean(x or 0) */
  assert_true(d.mean == 0 && d.p99 == 0 && d.count == 0);
}

static void test_summary_goodput(void **state) {
  /* Three requests: two succeed (one meets the SLOs), one fails. */
  double itl_a[] = {0.010, 0.010, 0.010}, itl_b[] = {0.050, 0.050, 0.050};
  ss_lg_result r[3] = {
      {.send_s = 0.0, .ready_s = 0.0, .ttft_s = 0.100, .e2e_s = 0.130, .itls_s = itl_a,
       .itl_count = 3, .input_tokens = 10, .output_tokens = 4, .output_from_usage = true},
      {.send_s = 0.1, .ready_s = 0.099, .ttft_s = 0.300, .e2e_s = 0.450, .itls_s = itl_b,
       .itl_count = 3, .input_tokens = 20, .output_tokens = 4},
      {.send_s = 0.2, .ready_s = 0.2, .input_tokens = 30, .error = "HTTP 500: boom"},
  };
  ss_lg_slo slo = {.ttft_ms = 200, .tpot_ms = 20, .e2el_ms = -1};
  ss_lg_summary s;
  assert_int_equal(ss_lg_summarize(r, 3, 2.0, &slo, &s), 0);
  assert_int_equal(s.completed, 2);
  assert_int_equal(s.failed, 1);
  assert_int_equal(s.good, 1);
  assert_true(s.has_goodput);
  near(s.request_goodput, 0.5);
  near(s.request_throughput, 1.0);
  assert_int_equal(s.total_input, 30); /* failed requests do not count */
  assert_int_equal(s.total_output, 8);
  near(s.output_throughput, 4.0);
  near(s.total_token_throughput, 19.0);
  near(s.tpot_ms.mean, (10.0 + 50.0) / 2); /* (E2E - TTFT) / (out - 1) */
  near(s.ttft_ms.mean, 200.0);
  assert_int_equal(s.itl_ms.count, 6);
  assert_int_equal(s.output_from_usage, 1);
  assert_int_equal(s.output_from_chunks, 1);
  assert_int_equal(s.max_concurrent, 2);
  assert_int_equal(s.send_lag_ms.count, 3);
  near(s.send_lag_ms.max, (0.1 - 0.099) * 1e3);
}

/* ---- SSE and chunks -------------------------------------------------------------- */

typedef struct events {
  char data[8][128];
  int n;
} events;

static void collect(void *ctx, const char *data, size_t nbytes) {
  events *e = ctx;
  assert_true(e->n < 8 && nbytes < 128);
  memcpy(e->data[e->n], data, nbytes);
  e->data[e->n++][nbytes] = '\0';
}

static void test_sse_split(void **state) {
  const char *stream = ": comment\r\ndata: {\"a\":1}\r\n\r\nevent: x\ndata: line1\ndata:line2\n\n"
                       "data: [DONE]\n\ndata: tail";
  /* Every split point gives the same events. */
  for (size_t cut = 0; cut <= strlen(stream); cut++) {
    events e = {0};
    ss_lg_sse s;
    ss_lg_sse_init(&s, collect, &e);
    assert_int_equal(ss_lg_sse_feed(&s, stream, cut), 0);
    assert_int_equal(ss_lg_sse_feed(&s, stream + cut, strlen(stream) - cut), 0);
    ss_lg_sse_finish(&s);
    ss_lg_sse_free(&s);
    assert_int_equal(e.n, 4);
    assert_string_equal(e.data[0], "{\"a\":1}");
    assert_string_equal(e.data[1], "line1\nline2");
    assert_string_equal(e.data[2], "[DONE]");
    assert_string_equal(e.data[3], "tail");
  }
}

static void test_chunk_parse(void **state) {
  ss_lg_chunk c;
  const char *cmpl = "{\"choices\":[{\"index\":0,\"text\":\" hello\"}]}";
  ss_lg_chunk_parse(cmpl, strlen(cmpl), &c);
  assert_int_equal(c.kind, SS_LG_CHUNK_DATA);
  assert_int_equal(c.text_nbytes, 6);
  const char *chat = "{\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}";
  ss_lg_chunk_parse(chat, strlen(chat), &c);
  assert_int_equal(c.kind, SS_LG_CHUNK_DATA);
  assert_int_equal(c.text_nbytes, 2);
  const char *role = "{\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}";
  ss_lg_chunk_parse(role, strlen(role), &c);
  assert_int_equal(c.kind, SS_LG_CHUNK_OTHER); /* not a token */
  const char *usage = "{\"choices\":[],\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":34}}";
  ss_lg_chunk_parse(usage, strlen(usage), &c);
  assert_int_equal(c.kind, SS_LG_CHUNK_DATA);
  assert_true(c.has_usage && c.prompt_tokens == 12 && c.completion_tokens == 34);
  assert_int_equal(c.cached_tokens, -1);
  const char *cached = "{\"choices\":[],\"usage\":{\"prompt_tokens\":40,\"completion_tokens\":2,"
                       "\"prompt_tokens_details\":{\"cached_tokens\":32}}}";
  ss_lg_chunk_parse(cached, strlen(cached), &c);
  assert_true(c.has_usage && c.prompt_tokens == 40 && c.cached_tokens == 32);
  const char *nullusage = "{\"choices\":[{\"text\":\"x\"}],\"usage\":null}";
  ss_lg_chunk_parse(nullusage, strlen(nullusage), &c);
  assert_false(c.has_usage);
  ss_lg_chunk_parse(" [DONE] ", 8, &c);
  assert_int_equal(c.kind, SS_LG_CHUNK_DONE);
  const char *err = "{\"error\":{\"message\":\"overloaded\",\"type\":\"server_error\"}}";
  ss_lg_chunk_parse(err, strlen(err), &c);
  assert_int_equal(c.kind, SS_LG_CHUNK_ERROR);
  assert_string_equal(c.error, "overloaded");
  ss_lg_chunk_parse("{not json", 9, &c);
  assert_int_equal(c.kind, SS_LG_CHUNK_ERROR);
  char msg[64];
  const char *body = "{\"error\":{\"message\":\"model not found\"}}";
  ss_lg_error_body_message(body, strlen(body), msg, sizeof msg);
  assert_string_equal(msg, "model not found");
  ss_lg_error_body_message("Bad Gateway\nmore", 16, msg, sizeof msg);
  assert_string_equal(msg, "Bad Gateway");
}

/* ---- datasets -------------------------------------------------------------------------- */

static char *write_tmp(const char *content) {
  static int k;
  char *path = malloc(128);
  snprintf(path, 128, "/tmp/ss-lg-test-%d-%d.json", (int)getpid(), k++);
  FILE *f = fopen(path, "w");
  assert_non_null(f);
  fputs(content, f);
  fclose(f);
  return path;
}

/* Parses content as JSONL (sharegpt when sharegpt is set); expects status
 * `want` and, on failure, a message containing `needle`. */
static void expect_file(bool sharegpt, const char *content, int want, const char *needle) {
  char *path = write_tmp(content);
  ss_lg_dataset d;
  int rc = sharegpt ? ss_lg_dataset_sharegpt(path, 0, 1, 0, NULL, &d)
                    : ss_lg_dataset_jsonl(path, NULL, &d);
  if (rc != want) fail_msg("%s: status %d, want %d (%s)", content, rc, want, ss_error_msg());
  if (needle && !strstr(ss_error_msg(), needle))
    fail_msg("%s: message '%s' lacks '%s'", content, ss_error_msg(), needle);
  if (!rc) ss_lg_dataset_free(&d);
  unlink(path);
  free(path);
}

static void test_jsonl(void **state) {
  char *path = write_tmp("{\"prompt\": \"hello there world\", \"output_len\": 5}\n\n"
                         "  \n{\"prompt\": [1, 2, 3], \"max_tokens\": 7}\r\n");
  ss_lg_dataset d;
  assert_int_equal(ss_lg_dataset_jsonl(path, NULL, &d), 0);
  assert_int_equal(d.count, 2);
  assert_string_equal(d.items[0].text, "hello there world");
  assert_int_equal(d.items[0].output_len, 5);
  assert_false(d.items[0].input_exact);
  assert_int_equal(d.items[1].id_count, 3);
  assert_int_equal(d.items[1].ids[2], 3);
  assert_int_equal(d.items[1].output_len, 7);
  assert_true(d.items[1].input_exact && d.items[1].input_len == 3);
  ss_lg_dataset_free(&d);
  unlink(path);
  free(path);

  expect_file(false, "{\"prompt\": \"a\", \"output_len\": 1}\n{\"prompt\": \"b\", ", SS_ERR_FORMAT, ":2: invalid JSON");
  expect_file(false, "{\"prompt\": \"a\"}\n", SS_ERR_FORMAT, ":1: missing \"output_len\"");
  expect_file(false, "{\"prompt\": \"a\", \"output_len\": 0}\n", SS_ERR_FORMAT, "\"output_len\" must be");
  expect_file(false, "{\"prompt\": \"a\", \"output_len\": \"5\"}\n", SS_ERR_FORMAT, "\"output_len\"");
  expect_file(false, "{\"prompt\": 5, \"output_len\": 5}\n", SS_ERR_FORMAT, "\"prompt\" must be");
  expect_file(false, "{\"prompt\": [1, -2], \"output_len\": 5}\n", SS_ERR_FORMAT, "\"prompt\"[1]");
  expect_file(false, "{\"prompt\": [], \"output_len\": 5}\n", SS_ERR_FORMAT, "1 to");
  expect_file(false, "{\"prompt\": \"\", \"output_len\": 5}\n", SS_ERR_FORMAT, "empty");
  expect_file(false, "[1, 2]\n", SS_ERR_FORMAT, "expected a JSON object");
  expect_file(false, "\n\n", SS_ERR_FORMAT, "no prompts");
  expect_file(false, "", SS_ERR_FORMAT, "empty");
  ss_lg_dataset d2;
  assert_int_equal(ss_lg_dataset_jsonl("/nonexistent/x.jsonl", NULL, &d2), SS_ERR_IO);
  assert_non_null(strstr(ss_error_msg(), "cannot open"));
  assert_int_equal(ss_lg_dataset_jsonl("/tmp", NULL, &d2), SS_ERR_IO);
}

static void test_sharegpt(void **state) {
  const char *good =
      "[{\"id\": \"a\", \"conversations\": [{\"from\": \"human\", \"value\": \"q1\"},"
      " {\"from\": \"gpt\", \"value\": \"12345678\"}]},"
      " {\"conversations\": [{\"from\": \"human\", \"value\": \"lonely\"}]},"
      " {\"conversations\": [{\"from\": \"human\", \"value\": \"q3\"},"
      " {\"from\": \"gpt\", \"value\": \"abcd\"}, {\"from\": \"human\", \"value\": \"more\"}]}]";
  char *path = write_tmp(good);
  ss_lg_dataset d, d2;
  assert_int_equal(ss_lg_dataset_sharegpt(path, 0, 3, 0, NULL, &d), 0);
  assert_int_equal(d.count, 2); /* the one-turn conversation is skipped */
  for (size_t i = 0; i < 2; i++) {
    const ss_lg_prompt *p = &d.items[i];
    if (strcmp(p->text, "q1") == 0) assert_int_equal(p->output_len, 2); /* 8 bytes / 4 */
    else {
      assert_string_equal(p->text, "q3");
      assert_int_equal(p->output_len, 1);
    }
  }
  /* The same seed gives the same order; a count keeps the first ones. */
  assert_int_equal(ss_lg_dataset_sharegpt(path, 1, 3, 9, NULL, &d2), 0);
  assert_int_equal(d2.count, 1);
  assert_string_equal(d2.items[0].text, d.items[0].text);
  assert_int_equal(d2.items[0].output_len, 9); /* overridden */
  ss_lg_dataset_free(&d);
  ss_lg_dataset_free(&d2);
  unlink(path);
  free(path);

  expect_file(true, "{\"conversations\": []}", SS_ERR_FORMAT, "JSON array");
  expect_file(true, "[{\"conversations\": [{\"from\": \"human\", \"value\": \"x\"},", SS_ERR_FORMAT, "invalid JSON at line 1");
  expect_file(true, "[{\"id\": 1}]", SS_ERR_FORMAT, "entry 0 has no \"conversations\"");
  expect_file(true, "[{\"conversations\": [{\"from\": \"human\", \"value\": 3}, {\"value\": \"b\"}]}]", SS_ERR_FORMAT, "turn 0");
  expect_file(true, "[{\"conversations\": [{\"from\": \"human\", \"value\": \"a\"}]}]", SS_ERR_FORMAT, "no conversation");
  expect_file(true, "[]", SS_ERR_FORMAT, "no conversation");
}

static void test_random_ids(void **state) {
  ss_lg_random_params p = {.count = 200, .input_len = 100, .output_len = 20, .range_ratio = 0.5,
                           .seed = 5, .ids = true, .vocab_size = 1000};
  ss_lg_dataset a, b;
  assert_int_equal(ss_lg_dataset_random(&p, &a), 0);
  assert_int_equal(ss_lg_dataset_random(&p, &b), 0);
  int64_t lo_seen = 1000, hi_seen = 0;
  for (size_t i = 0; i < a.count; i++) {
    const ss_lg_prompt *q = &a.items[i];
    assert_true(q->id_count >= 50 && q->id_count <= 150);
    assert_true(q->output_len >= 10 && q->output_len <= 30);
    assert_true(q->input_exact && q->input_len == (int64_t)q->id_count);
    for (size_t k = 0; k < q->id_count; k++) assert_true(q->ids[k] >= 0 && q->ids[k] < 1000);
    assert_int_equal(q->id_count, b.items[i].id_count);
    assert_memory_equal(q->ids, b.items[i].ids, q->id_count * sizeof *q->ids);
    if ((int64_t)q->id_count < lo_seen) lo_seen = (int64_t)q->id_count;
    if ((int64_t)q->id_count > hi_seen) hi_seen = (int64_t)q->id_count;
  }
  assert_true(lo_seen < 60 && hi_seen > 140); /* the whole range is used */
  ss_lg_dataset_free(&a);
  ss_lg_dataset_free(&b);
  p.range_ratio = 1.0;
  assert_int_equal(ss_lg_dataset_random(&p, &a), SS_ERR_RANGE);
  p.range_ratio = 0, p.input_len = 0;
  assert_int_equal(ss_lg_dataset_random(&p, &a), SS_ERR_RANGE);
  p.input_len = 10, p.vocab_size = 0;
  assert_int_equal(ss_lg_dataset_random(&p, &a), SS_ERR_INVALID);
}

/* With a tokenizer, text prompts are counted exactly and ids are normal tokens. */
static void test_random_tokenizer(void **state) {
  const char *dir = getenv("SS_TESTDATA");
  char path[512];
  snprintf(path, sizeof path, "%s/tokenizer/ggml-vocab-gpt-2.gguf", dir ? dir : "tests/data");
  ss_gguf *g;
  ss_tokenizer *tok;
  assert_int_equal(ss_gguf_open(path, &g), 0);
  assert_int_equal(ss_tokenizer_load(g, &tok), 0);
  ss_lg_random_params p = {.count = 20, .input_len = 64, .output_len = 8, .seed = 3,
                           .ids = false, .tok = tok};
  ss_lg_dataset d;
  assert_int_equal(ss_lg_dataset_random(&p, &d), 0);
  int exact = 0;
  for (size_t i = 0; i < d.count; i++) {
    int32_t *ids;
    size_t n;
    const char *t = d.items[i].text;
    assert_int_equal(ss_tokenizer_encode(tok, t, strlen(t), false, false, &ids, &n), 0);
    free(ids);
    assert_int_equal((int64_t)n, d.items[i].input_len); /* the recorded count is measured */
    exact += n == 64;
  }
  assert_true(exact >= 18); /* words are single tokens: nearly always exact */
  ss_lg_dataset_free(&d);
  p.ids = true;
  assert_int_equal(ss_lg_dataset_random(&p, &d), 0);
  for (size_t i = 0; i < d.count; i++)
    for (size_t k = 0; k < d.items[i].id_count; k++)
      assert_int_equal(ss_tokenizer_token_type(tok, d.items[i].ids[k]), SS_TOKTYPE_NORMAL);
  ss_lg_dataset_free(&d);
  ss_tokenizer_free(tok);
  ss_gguf_close(g);
}

/* ---- prefix-cache workloads --------------------------------------------------------------- */

static ss_tokenizer *load_gpt2(ss_gguf **g) {
  const char *dir = getenv("SS_TESTDATA");
  char path[512];
  snprintf(path, sizeof path, "%s/tokenizer/ggml-vocab-gpt-2.gguf", dir ? dir : "tests/data");
  ss_tokenizer *tok;
  assert_int_equal(ss_gguf_open(path, g), 0);
  assert_int_equal(ss_tokenizer_load(*g, &tok), 0);
  return tok;
}

static int64_t n_tokens(const ss_tokenizer *tok, const char *t) {
  int32_t *ids;
  size_t n;
  assert_int_equal(ss_tokenizer_encode(tok, t, strlen(t), false, false, &ids, &n), 0);
  free(ids);
  return (int64_t)n;
}

/* Requests of one group share their first prefix_size bytes (ids) and differ after. */
static void check_groups(const ss_lg_dataset *d, size_t groups, size_t per, size_t unit) {
  assert_int_equal(d->count, groups * per);
  size_t *seen = calloc(groups, sizeof *seen);
  bool interleaved = false;
  for (size_t i = 0; i < d->count; i++) {
    const ss_lg_prompt *a = &d->items[i];
    assert_true(a->group >= 0 && (size_t)a->group < groups);
    seen[a->group]++;
    if (i && d->items[i - 1].group != a->group) interleaved = true;
    const char *pa = a->ids ? (const char *)a->ids : a->text;
    size_t na = a->ids ? a->id_count * unit : strlen(a->text);
    for (size_t j = 0; j < i; j++) {
      const ss_lg_prompt *b = &d->items[j];
      const char *pb = b->ids ? (const char *)b->ids : b->text;
      size_t nb = b->ids ? b->id_count * unit : strlen(b->text);
      if (a->group == b->group) {
        assert_int_equal(a->prefix_size, b->prefix_size);
        assert_memory_equal(pa, pb, a->prefix_size * (a->ids ? unit : 1));
        assert_false(na == nb && memcmp(pa, pb, na) == 0); /* distinct suffixes */
      } else {
        assert_false(memcmp(pa, pb, 16) == 0); /* different prefixes differ at once */
      }
    }
  }
  for (size_t g = 0; g < groups; g++) assert_int_equal(seen[g], per);
  assert_true(interleaved);
  free(seen);
}

static void test_prefix_repetition(void **state) {
  ss_lg_prefix_params p = {.num_prefixes = 4, .count = 22, .prefix_len = 40, .suffix_len = 6,
                           .output_len = 3, .seed = 9, .ids = true, .vocab_size = 50000};
  ss_lg_dataset d, e;
  assert_int_equal(ss_lg_dataset_prefix_repetition(&p, &d), 0);
  check_groups(&d, 4, 5, sizeof(int32_t)); /* 22 / 4 = 5 per prefix */
  for (size_t i = 0; i < d.count; i++) {
    assert_int_equal(d.items[i].id_count, 46);
    assert_int_equal(d.items[i].prefix_size, 40);
    assert_int_equal(d.items[i].output_len, 3);
  }
  assert_int_equal(ss_lg_dataset_prefix_repetition(&p, &e), 0); /* seeded: the same again */
  for (size_t i = 0; i < d.count; i++)
    assert_memory_equal(d.items[i].ids, e.items[i].ids, 46 * sizeof(int32_t));
  ss_lg_dataset_free(&e);
  p.seed = 10;
  assert_int_equal(ss_lg_dataset_prefix_repetition(&p, &e), 0);
  assert_false(memcmp(d.items[0].ids, e.items[0].ids, 46 * sizeof(int32_t)) == 0);
  ss_lg_dataset_free(&e);
  ss_lg_dataset_free(&d);

  /* Text counted by a tokenizer: prefix and suffix of about the stated lengths. */
  ss_gguf *g;
  ss_tokenizer *tok = load_gpt2(&g);
  p = (ss_lg_prefix_params){.num_prefixes = 3, .count = 12, .prefix_len = 100, .suffix_len = 10,
                            .output_len = 2, .seed = 1, .tok = tok};
  assert_int_equal(ss_lg_dataset_prefix_repetition(&p, &d), 0);
  check_groups(&d, 3, 4, 1);
  for (size_t i = 0; i < d.count; i++) {
    char *pre = strndup(d.items[i].text, d.items[i].prefix_size);
    assert_int_equal(n_tokens(tok, pre), 100);
    assert_int_equal(n_tokens(tok, d.items[i].text), d.items[i].input_len);
    assert_true(d.items[i].input_len >= 108 && d.items[i].input_len <= 112);
    free(pre);
  }
  ss_lg_dataset_free(&d);
  ss_tokenizer_free(tok);
  ss_gguf_close(g);

  p = (ss_lg_prefix_params){.num_prefixes = 5, .count = 4, .prefix_len = 8, .suffix_len = 1,
                            .output_len = 1, .ids = true, .vocab_size = 100};
  assert_int_equal(ss_lg_dataset_prefix_repetition(&p, &d), SS_ERR_RANGE);
  assert_non_null(strstr(ss_error_msg(), "5 prefixes"));
  p.count = 10;
  p.prefix_len = 0;
  assert_int_equal(ss_lg_dataset_prefix_repetition(&p, &d), SS_ERR_RANGE);
  assert_non_null(strstr(ss_error_msg(), "prefix length 0"));
}

static void test_trace(void **state) {
  char *path = write_tmp(
      "{\"timestamp\": 1000, \"input_length\": 20, \"output_length\": 4, \"hash_ids\": [5, 6, 7]}\n"
      "{\"timestamp\": 1500, \"input_length\": 16, \"output_length\": 1, \"hash_ids\": [5, 6]}\n"
      "\n{\"timestamp\": 1500, \"input_length\": 30, \"output_length\": 2, \"hash_ids\": [9, 6]}\n"
      "{\"timestamp\": 4000, \"input_length\": 12, \"output_length\": 2, \"hash_ids\": [5]}\n");
  ss_lg_trace_params p = {.block_size = 8, .time_scale = 0.5, .seed = 2, .ids = true,
                          .vocab_size = 32000};
  ss_lg_dataset d;
  assert_int_equal(ss_lg_dataset_trace(path, &p, &d), 0);
  assert_int_equal(d.count, 4);
  const double want_t[] = {0, 0.25, 0.25, 1.5};
  const int64_t want_len[] = {20, 16, 30, 12}, want_out[] = {4, 1, 2, 2};
  for (size_t i = 0; i < 4; i++) {
    assert_true(fabs(d.arrivals_s[i] - want_t[i]) < 1e-12);
    assert_int_equal(d.items[i].id_count, want_len[i]);
    assert_int_equal(d.items[i].output_len, want_out[i]);
  }
  size_t b = 8 * sizeof(int32_t);
  int32_t **ids = (int32_t *[]){d.items[0].ids, d.items[1].ids, d.items[2].ids, d.items[3].ids};
  assert_memory_equal(ids[0], ids[1], 2 * b);         /* [5, 6] */
  assert_memory_equal(ids[0] + 8, ids[2] + 8, b);     /* 6 in the second place */
  assert_memory_equal(ids[0], ids[3], b);             /* 5 */
  assert_false(memcmp(ids[0] + 16, ids[3] + 8, 4 * 4) == 0); /* 7 vs unique padding */
  assert_false(memcmp(ids[0], ids[2], b) == 0);       /* 5 vs 9 */
  assert_false(memcmp(ids[0] + 8, ids[0], b) == 0);   /* 6 vs 5 */
  assert_false(memcmp(ids[2] + 16, ids[0] + 16, 4 * 4) == 0); /* past the hash ids: unique */
  ss_lg_dataset_free(&d);
  /* Text: equal ids give identical text blocks. */
  p.ids = false;
  assert_int_equal(ss_lg_dataset_trace(path, &p, &d), 0);
  size_t n1 = strlen(d.items[1].text);
  assert_int_equal(strncmp(d.items[0].text, d.items[1].text, n1), 0);
  assert_true(d.items[0].text[n1] == ' ');
  assert_false(strncmp(d.items[0].text, d.items[2].text, 8) == 0);
  ss_lg_dataset_free(&d);
  unlink(path);
  free(path);

  path = write_tmp("{\"timestamp\": 10, \"input_length\": 5, \"output_length\": 1}\n"
                   "{\"timestamp\": 5, \"input_length\": 5, \"output_length\": 1}\n");
  assert_int_equal(ss_lg_dataset_trace(path, &p, &d), SS_ERR_FORMAT);
  assert_non_null(strstr(ss_error_msg(), ":2: \"timestamp\""));
  unlink(path);
  free(path);
  path = write_tmp("{\"timestamp\": 0, \"input_length\": 16, \"output_length\": 1, "
                   "\"hash_ids\": [1, -2]}\n");
  assert_int_equal(ss_lg_dataset_trace(path, &p, &d), SS_ERR_FORMAT);
  assert_non_null(strstr(ss_error_msg(), "\"hash_ids\"[1]"));
  unlink(path);
  free(path);
  path = write_tmp("{\"timestamp\": 0, \"output_length\": 1}\n");
  assert_int_equal(ss_lg_dataset_trace(path, &p, &d), SS_ERR_FORMAT);
  assert_non_null(strstr(ss_error_msg(), "\"input_length\""));
  p.block_size = 0;
  assert_int_equal(ss_lg_dataset_trace(path, &p, &d), SS_ERR_RANGE);
  assert_non_null(strstr(ss_error_msg(), "block size 0"));
  unlink(path);
  free(path);
}

static void test_cache_counters(void **state) {
  ss_lg_cache_counters c;
  ss_lg_parse_cache_counters("# HELP x\n# TYPE shardserve:prefix_cache_queries_total counter\n"
                             "shardserve:prefix_cache_queries_total 480\n"
                             "shardserve:prefix_cache_hits_total_other 7\n"
                             "shardserve:prefix_cache_hits_total 320\n", &c);
  assert_true(c.found && strcmp(c.family, "shardserve") == 0);
  assert_true(c.queries == 480 && c.hits == 320);
  ss_lg_parse_cache_counters("vllm:prefix_cache_queries_total{engine=\"0\",model_name=\"m\"} 100.0\n"
                             "vllm:prefix_cache_queries_total{engine=\"1\",model_name=\"m\"} 50.0\n"
                             "vllm:prefix_cache_hits_total{engine=\"0\",model_name=\"m\"} 30.0\n"
                             "vllm:prefix_cache_hits_created{engine=\"0\"} 1.7e9\n", &c);
  assert_true(c.found && strcmp(c.family, "vllm") == 0);
  assert_true(c.queries == 150 && c.hits == 30);
  ss_lg_parse_cache_counters("shardserve:requests_total 3\n", &c);
  assert_false(c.found);
}

/* Multi-turn sessions resend what was streamed: text deltas collect in order,
 * escapes decoded, chunks without text adding nothing. */
static void test_chunk_text(void **state) {
  ss_lg_text t = {0};
  ss_lg_chunk c;
  const char *ev[] = {
      "{\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}",
      "{\"choices\":[{\"delta\":{\"content\":\"Hi \\\"you\\\"\"}}]}",
      "{\"choices\":[{\"index\":0,\"text\":\"\\u00e9\\n!\"}]}",
      "{\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2}}",
  };
  for (size_t i = 0; i < 4; i++)
    assert_int_equal(ss_lg_chunk_parse_text(ev[i], strlen(ev[i]), &c, &t), 0);
  const char want[] = "Hi \"you\"\xc3\xa9\n!";
  assert_int_equal(t.nbytes, sizeof want - 1);
  assert_memory_equal(t.p, want, sizeof want - 1);
  assert_int_equal(t.p[t.nbytes], '\0');
  ss_lg_text_free(&t);
  assert_null(t.p);
}

static void test_multi_turn(void **state) {
  ss_lg_multi_turn_params p = {.sessions = 3, .turns = 4, .user_len = 10, .output_len = 7, .seed = 9};
  ss_lg_dataset d, e;
  assert_int_equal(ss_lg_dataset_multi_turn(&p, &d), 0);
  assert_int_equal(d.count, 12);
  assert_int_equal(d.turns, 4);
  for (size_t i = 0; i < d.count; i++) {
    assert_non_null(d.items[i].text);
    assert_null(d.items[i].ids);
    assert_int_equal(d.items[i].output_len, 7);
    assert_int_equal(d.items[i].group, (int64_t)(i / 4));
    size_t words = 1;
    for (const char *c = d.items[i].text; *c; c++) words += *c == ' ';
    assert_int_equal(words, 10);
    for (size_t j = 0; j < i; j++) assert_string_not_equal(d.items[i].text, d.items[j].text);
  }
  assert_int_equal(ss_lg_dataset_multi_turn(&p, &e), 0); /* seeded: the same again */
  for (size_t i = 0; i < d.count; i++) assert_string_equal(d.items[i].text, e.items[i].text);
  ss_lg_dataset_free(&e);
  p.seed = 10;
  assert_int_equal(ss_lg_dataset_multi_turn(&p, &e), 0);
  assert_string_not_equal(d.items[0].text, e.items[0].text);
  ss_lg_dataset_free(&e);
  ss_lg_dataset_free(&d);
  p.sessions = 0;
  assert_int_equal(ss_lg_dataset_multi_turn(&p, &d), SS_ERR_RANGE);
  p.sessions = 1;
  p.turns = SS_LG_MAX_TURNS + 1;
  assert_int_equal(ss_lg_dataset_multi_turn(&p, &d), SS_ERR_RANGE);
  p.turns = 1;
  p.user_len = 0;
  assert_int_equal(ss_lg_dataset_multi_turn(&p, &d), SS_ERR_RANGE);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_schedule_gamma),
      cmocka_unit_test(test_schedule_seed),
      cmocka_unit_test(test_schedule_duration_ramp),
      cmocka_unit_test(test_schedule_errors),
      cmocka_unit_test(test_percentiles_numpy),
      cmocka_unit_test(test_summary_goodput),
      cmocka_unit_test(test_sse_split),
      cmocka_unit_test(test_chunk_parse),
      cmocka_unit_test(test_jsonl),
      cmocka_unit_test(test_sharegpt),
      cmocka_unit_test(test_random_ids),
      cmocka_unit_test(test_random_tokenizer),
      cmocka_unit_test(test_prefix_repetition),
      cmocka_unit_test(test_trace),
      cmocka_unit_test(test_cache_counters),
      cmocka_unit_test(test_chunk_text),
      cmocka_unit_test(test_multi_turn),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
