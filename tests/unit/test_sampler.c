/* Sampler: greedy, seeded reproducibility, and the distributions that
 * temperature, top-k, top-p and min-p must produce (frequencies over many draws
 * against probabilities computed here in double); the request's logit
 * processors against the formulas written out here; stop-string scanning. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/engine/sampler.h"
#include "runtime/engine/stop.h"

#define N_DRAWS 40000

static void draw_freq(const ss_sampler_params *p, const float *logits, int n, double *freq) {
  ss_sampler s;
  ss_sampler_scratch w;
  assert_int_equal(ss_sampler_init(&s, p), 0);
  assert_int_equal(ss_sampler_scratch_init(&w, n), 0);
  long count[16] = {0};
  assert_true(n <= 16);
  for (int i = 0; i < N_DRAWS; i++) count[ss_sampler_sample(&s, &w, logits)]++;
  for (int i = 0; i < n; i++) freq[i] = (double)count[i] / N_DRAWS;
  ss_sampler_scratch_free(&w);
}

/* Frequencies within 5 binomial standard deviations of the expected probabilities. */
static void check_freq(const double *freq, const double *want, int n) {
  for (int i = 0; i < n; i++) {
    double sd = sqrt(want[i] * (1 - want[i]) / N_DRAWS);
    if (fabs(freq[i] - want[i]) > 5 * sd)
      fail_msg("token %d: frequency %.4f, expected %.4f (sd %.4f)", i, freq[i], want[i], sd);
  }
}

/* Probabilities 0.5, 0.3, 0.15, 0.05 as logits. */
static const float k_logits[4] = {-0.6931472f, -1.2039728f, -1.89712f, -2.9957323f};

static void test_greedy(void **state) {
  float l[5] = {0.1f, 3.0f, -1.0f, 3.0f, 2.9f};
  assert_int_equal(ss_argmax(l, 5), 1); /* tie: lowest id */
  ss_sampler s;
  ss_sampler_scratch w;
  ss_sampler_params p = {.temperature = 0, .top_p = 1};
  assert_int_equal(ss_sampler_init(&s, &p), 0);
  assert_int_equal(ss_sampler_scratch_init(&w, 5), 0);
  for (int i = 0; i < 10; i++) assert_int_equal(ss_sampler_sample(&s, &w, l), 1);
  ss_sampler_scratch_free(&w);
}

static void test_seed_reproducible(void **state) {
  float l[50];
  for (int i = 0; i < 50; i++) l[i] = (float)sin(i * 1.7);
  ss_sampler_params p = {.temperature = 1.0f, .top_p = 1, .seed = 42};
  ss_sampler a, b, c;
  ss_sampler_scratch w; /* one scratch shared by the three streams, as in the engine */
  ss_sampler_init(&a, &p);
  ss_sampler_init(&b, &p);
  p.seed = 43;
  ss_sampler_init(&c, &p);
  assert_int_equal(ss_sampler_scratch_init(&w, 50), 0);
  int same_c = 0;
  for (int i = 0; i < 200; i++) {
    int32_t x = ss_sampler_sample(&a, &w, l), y = ss_sampler_sample(&b, &w, l);
    int32_t z = ss_sampler_sample(&c, &w, l);
    assert_int_equal(x, y);
    same_c += x == z;
  }
  assert_true(same_c < 150); /* another seed gives another sequence */
  ss_sampler_scratch_free(&w);
}

static void test_temperature(void **state) {
  double f[4], want[4], z = 0;
  for (int T = 1; T <= 2; T++) {
    ss_sampler_params p = {.temperature = (float)T, .top_p = 1, .seed = 7};
    draw_freq(&p, k_logits, 4, f);
    z = 0;
    for (int i = 0; i < 4; i++) z += want[i] = exp((double)k_logits[i] / T);
    for (int i = 0; i < 4; i++) want[i] /= z;
    check_freq(f, want, 4);
  }
}

static void test_top_k(void **state) {
  double f[4];
  ss_sampler_params p = {.temperature = 1, .top_k = 2, .top_p = 1, .seed = 1};
  draw_freq(&p, k_logits, 4, f);
  double want[4] = {0.5 / 0.8, 0.3 / 0.8, 0, 0};
  check_freq(f, want, 4);
  p.top_k = 1;
  p.temperature = 50;
  draw_freq(&p, k_logits, 4, f);
  double one[4] = {1, 0, 0, 0};
  check_freq(f, one, 4);
}

static void test_top_p(void **state) {
  double f[4];
  /* Smallest prefix with mass >= 0.7 is {0, 1}. */
  ss_sampler_params p = {.temperature = 1, .top_p = 0.7f, .seed = 2};
  draw_freq(&p, k_logits, 4, f);
  double want[4] = {0.5 / 0.8, 0.3 / 0.8, 0, 0};
  check_freq(f, want, 4);
  p.top_p = 0.9f; /* {0, 1, 2} */
  draw_freq(&p, k_logits, 4, f);
  double want3[4] = {0.5 / 0.95, 0.3 / 0.95, 0.15 / 0.95, 0};
  check_freq(f, want3, 4);
}

static void test_top_p_large_vocab(void **state) {
  /* A vocabulary larger than the first sorted prefix (256): the nucleus must
   * still hold the requested mass.  Flat logits: top_p 0.5 keeps half. */
  enum { V = 3000 };
  float *l = malloc(V * sizeof *l);
  for (int i = 0; i < V; i++) l[i] = 0.0f;
  ss_sampler s;
  ss_sampler_scratch w;
  ss_sampler_params p = {.temperature = 1, .top_p = 0.5f, .seed = 3};
  ss_sampler_init(&s, &p);
  assert_int_equal(ss_sampler_scratch_init(&w, V), 0);
  int32_t maxid = 0;
  for (int i = 0; i < 5000; i++) {
    int32_t t = ss_sampler_sample(&s, &w, l);
    if (t > maxid) maxid = t;
  }
  /* Ties are ordered by id, so the nucleus is ids [0, 1500). */
  assert_true(maxid < 1500);
  assert_true(maxid > 1400);
  ss_sampler_scratch_free(&w);
  free(l);
}

static void test_min_p(void **state) {
  double f[4];
  /* bar = 0.4 * 0.5 = 0.2: keeps {0, 1}. */
  ss_sampler_params p = {.temperature = 1, .top_p = 1, .min_p = 0.4f, .seed = 4};
  draw_freq(&p, k_logits, 4, f);
  double want[4] = {0.5 / 0.8, 0.3 / 0.8, 0, 0};
  check_freq(f, want, 4);
}

static void test_params_check(void **state) {
  ss_sampler_params p = {.temperature = -1, .top_p = 1};
  assert_int_not_equal(ss_sampler_params_check(&p), 0);
  p = (ss_sampler_params){.temperature = 1, .top_p = 0};
  assert_int_not_equal(ss_sampler_params_check(&p), 0);
  p = (ss_sampler_params){.temperature = 1, .top_p = 1, .min_p = 1.5f};
  assert_int_not_equal(ss_sampler_params_check(&p), 0);
  p = (ss_sampler_params){.temperature = 1, .top_p = 1, .top_k = -2};
  assert_int_not_equal(ss_sampler_params_check(&p), 0);
}

static void test_top_logprobs(void **state) {
  float l[6] = {1.0f, 4.0f, 2.0f, 4.0f, -3.0f, 0.5f};
  int32_t ids[3];
  float lp[3];
  ss_sampler_scratch w;
  assert_int_equal(ss_sampler_scratch_init(&w, 6), 0);
  ss_top_logprobs(&w, l, 3, ids, lp);
  ss_sampler_scratch_free(&w);
  double z = 0;
  for (int i = 0; i < 6; i++) z += exp((double)l[i]);
  assert_int_equal(ids[0], 1);
  assert_int_equal(ids[1], 3);
  assert_int_equal(ids[2], 2);
  assert_float_equal(lp[0], 4.0 - log(z), 1e-6);
  assert_float_equal(lp[2], 2.0 - log(z), 1e-6);
  assert_float_equal(ss_logprob_of(l, 6, 4), -3.0 - log(z), 1e-6);
}

static void test_stop_scan(void **state) {
  const char *stops[] = {"END", "\n\n"};
  bool found;
  size_t cut;
  /* "abcE": "E" may start "END": hold it back. */
  assert_int_equal(ss_stop_scan("abcE", 4, 0, stops, 2, &found, &cut), 3);
  assert_false(found);
  /* "abcEN" then "abcENX": released. */
  assert_int_equal(ss_stop_scan("abcENX", 6, 3, stops, 2, &found, &cut), 6);
  assert_false(found);
  /* A match: the text ends before it. */
  assert_int_equal(ss_stop_scan("abcEND more", 11, 3, stops, 2, &found, &cut), 3);
  assert_true(found);
  assert_int_equal(cut, 3);
  /* The earliest of two matches wins. */
  ss_stop_scan("x\n\nyEND", 7, 0, stops, 2, &found, &cut);
  assert_true(found);
  assert_int_equal(cut, 1);
  /* No stop strings: everything shows. */
  assert_int_equal(ss_stop_scan("abc", 3, 0, NULL, 0, &found, &cut), 3);
}

/* The logit processors on a six-token vocabulary: each result written out from
 * the formulas (bias added; repetition over prompt and output, divide when
 * positive, multiply otherwise; frequency * count + presence over the output;
 * masks). */
static void test_process(void **state) {
  const float l[6] = {1.0f, -2.0f, 0.5f, 3.0f, -0.5f, 2.0f};
  const int32_t toks[5] = {0, 1, 3, 3, 4}; /* prompt {0, 1}, generated {3, 3, 4} */
  const ss_logit_bias bias[2] = {{2, 1.5f}, {4, -1.0f}};
  const int32_t stop_ids[1] = {1};
  const int32_t eog[1] = {5};
  const int32_t bad[5] = {2, 4, 2, 1, 0}; /* [4, 2] and [0] */
  ss_sampler_params p = {.top_p = 1, .repetition_penalty = 1.5f, .frequency_penalty = 0.4f,
                         .presence_penalty = 0.25f, .min_tokens = 4, .bias = bias, .n_bias = 2,
                         .stop_ids = stop_ids, .n_stop_ids = 1, .bad = bad, .n_bad_ids = 5};
  ss_sampler s;
  ss_sampler_scratch w;
  assert_int_equal(ss_sampler_init(&s, &p), 0);
  assert_int_equal(ss_sampler_scratch_init(&w, 6), 0);
  ss_sampler_seq q = {.tokens = toks, .n_prompt = 2, .n_generated = 3, .eog = eog, .n_eog = 1};
  const float *out = ss_sampler_process(&s, &w, l, &q);
  assert_ptr_equal(out, w.logit);
  assert_true(isinf(out[0]) && out[0] < 0);          /* bad word [0] */
  assert_true(isinf(out[1]) && out[1] < 0);          /* stop id before min_tokens */
  assert_true(isinf(out[2]) && out[2] < 0);          /* [4, 2] after a 4 */
  assert_float_equal(out[3], 3.0 / 1.5 - (0.4 * 2 + 0.25), 1e-6);
  assert_float_equal(out[4], (-0.5 - 1.0) * 1.5 - (0.4 * 1 + 0.25), 1e-6);
  assert_true(isinf(out[5]) && out[5] < 0);          /* end of generation before min_tokens */
  for (int i = 0; i < 6; i++) assert_int_equal(w.count[i], 0);

  /* min_tokens reached and the output no longer ending in 4: only the
   * one-token bad word stays masked. */
  const int32_t toks2[6] = {0, 1, 3, 3, 4, 3};
  q = (ss_sampler_seq){.tokens = toks2, .n_prompt = 2, .n_generated = 4, .eog = eog, .n_eog = 1};
  out = ss_sampler_process(&s, &w, l, &q);
  assert_true(isinf(out[0]));
  assert_float_equal(out[1], -2.0 * 1.5, 1e-6);
  assert_float_equal(out[2], 0.5 + 1.5, 1e-6);
  assert_float_equal(out[3], 3.0 / 1.5 - (0.4 * 3 + 0.25), 1e-6);
  assert_float_equal(out[5], 2.0, 1e-6);
  assert_true(ss_sampler_is_stop_id(&s, 1));
  assert_false(ss_sampler_is_stop_id(&s, 5));
  ss_sampler_free(&s);

  /* Nothing to do: the logits themselves. */
  ss_sampler_params plain = {.top_p = 1, .repetition_penalty = 1.0f};
  assert_int_equal(ss_sampler_init(&s, &plain), 0);
  assert_ptr_equal(ss_sampler_process(&s, &w, l, &q), l);
  ss_sampler_free(&s);
  ss_sampler_scratch_free(&w);
}

static void test_process_check(void **state) {
  const ss_logit_bias bias[1] = {{6, 1.0f}};
  const int32_t bad[2] = {3, 1}; /* a length beyond the array */
  ss_sampler_params p = {.top_p = 1, .presence_penalty = 2.5f};
  assert_int_not_equal(ss_sampler_params_check(&p), 0);
  p = (ss_sampler_params){.top_p = 1, .repetition_penalty = -1.0f};
  assert_int_not_equal(ss_sampler_params_check(&p), 0);
  p = (ss_sampler_params){.top_p = 1, .min_tokens = -1};
  assert_int_not_equal(ss_sampler_params_check(&p), 0);
  p = (ss_sampler_params){.top_p = 1, .bad = bad, .n_bad_ids = 2};
  assert_int_not_equal(ss_sampler_params_check(&p), 0);
  p = (ss_sampler_params){.top_p = 1, .bias = bias, .n_bias = 1};
  assert_int_equal(ss_sampler_params_check(&p), 0);
  assert_int_not_equal(ss_sampler_params_check_ids(&p, 6), 0);
  assert_int_equal(ss_sampler_params_check_ids(&p, 7), 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_greedy),       cmocka_unit_test(test_seed_reproducible),
      cmocka_unit_test(test_temperature),  cmocka_unit_test(test_top_k),
      cmocka_unit_test(test_top_p),        cmocka_unit_test(test_top_p_large_vocab),
      cmocka_unit_test(test_min_p),        cmocka_unit_test(test_params_check),
      cmocka_unit_test(test_top_logprobs), cmocka_unit_test(test_stop_scan),
      cmocka_unit_test(test_process),      cmocka_unit_test(test_process_check),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
