/* The CUDA backend's launch planning (kernels/cuda/launch_plan.h), on the CPU:
 * for every token the attention kernel must read the K/V blocks the CPU
 * attention reads (the reference semantics: token t attends positions 0..pos[t]
 * through its own block table), although the kernel reads a whole tile
 * through the row of the tile's first token; launches must cover every tile
 * once within the partials buffer; and two steps with one graph key must
 * launch the same grids with the same arguments.  Also which GPU a rank takes. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cuda/launch_plan.h"
#include "kernels/kernels.h"
#include "runtime/base/gpu_index.h"

/* A batch under construction: up to 1024 tokens of up to 64 sequences. */
typedef struct batch {
  int32_t pos[1024];
  const int32_t *tab[1024];
  int32_t tables[64][128];
  int n, n_seq;
} batch;

static const int32_t *new_table(batch *b, uint32_t seed) {
  int32_t *t = b->tables[b->n_seq++];
  for (int i = 0; i < 128; i++) t[i] = (int32_t)((seed * 131u + (uint32_t)i * 7919u) % 4096u) + 1;
  return t;
}

static void add_tokens(batch *b, const int32_t *table, int32_t pos0, int count) {
  for (int i = 0; i < count; i++) {
    b->pos[b->n] = pos0 + i;
    b->tab[b->n++] = table;
  }
}

static ss_token_loc loc_of(const batch *b) {
  return (ss_token_loc){.n = b->n, .pos = b->pos, .block_table = b->tab};
}

typedef struct plan {
  ss_cuda_tile tiles[1024];
  ss_cuda_run runs[1024];
  int32_t n_tiles, n_runs, tile_max, width;
  int32_t *bt;
} plan;

static void make_plan(const ss_token_loc *loc, int32_t bs, plan *p) {
  p->n_tiles = ss_cuda_plan_tiles(loc, p->tiles, &p->tile_max);
  p->width = ss_cuda_plan_width(loc, bs);
  p->bt = malloc((size_t)loc->n * (size_t)p->width * sizeof *p->bt);
  assert_non_null(p->bt);
  ss_cuda_plan_tables(loc, bs, p->tiles, p->n_tiles, p->width, p->bt);
  p->n_runs = ss_cuda_plan_runs(p->tiles, p->n_tiles, SS_CUDA_ATTN_MAX_TOKENS, p->runs);
}

/* Replays the kernels' index arithmetic and compares every block they read
 * with the CPU attention's.  Returns the number of wrong reads. */
static int wrong_reads(const ss_token_loc *loc, int32_t bs, const plan *p) {
  int wrong = 0;
  int64_t covered = 0;
  for (int32_t i = 0; i < p->n_tiles; i++) {
    const ss_cuda_tile *tl = &p->tiles[i];
    const int32_t p0 = loc->pos[tl->t0];
    const int32_t *row = p->bt + (size_t)tl->t0 * p->width;  /* the tile's first token's row */
    for (int32_t r = 0; r < tl->count; r++) {
      const int32_t t = tl->t0 + r;
      /* tiles hold consecutive positions of one sequence */
      if (loc->pos[t] != p0 + r || loc->block_table[t] != loc->block_table[tl->t0]) wrong++;
      for (int32_t s = 0; s <= loc->pos[t]; s++)
        if (row[s / bs] != loc->block_table[t][s / bs]) wrong++;
      /* the K/V store writes token t through its own row */
      if (p->bt[(size_t)t * p->width + loc->pos[t] / bs] != loc->block_table[t][loc->pos[t] / bs])
        wrong++;
    }
    covered += tl->count;
    if (tl->count > SS_CUDA_TILE_MAX) wrong++;
  }
  if (covered != loc->n) wrong++;
  return wrong;
}

/* Launches: in order, every tile once, each within the partials buffer. */
static void check_runs(const plan *p) {
  int32_t next = 0;
  for (int32_t k = 0; k < p->n_runs; k++) {
    const ss_cuda_run *r = &p->runs[k];
    assert_int_equal(r->tile0, next);
    assert_true(r->n_tiles > 0);
    assert_int_equal(r->tok0, p->tiles[r->tile0].t0);
    const ss_cuda_tile *last = &p->tiles[r->tile0 + r->n_tiles - 1];
    assert_int_equal(r->n_tok, last->t0 + last->count - r->tok0);
    assert_true(r->n_tok <= SS_CUDA_ATTN_MAX_TOKENS);
    next += r->n_tiles;
  }
  assert_int_equal(next, p->n_tiles);
}

static void test_unaligned_chunk(void **state) {
  (void)state;
  /* A 20-token prefill chunk at positions 10..29 with 16-token blocks: its
   * first tile (10..25) crosses into the second block. */
  batch b = {0};
  const int32_t *t = new_table(&b, 5);
  add_tokens(&b, t, 10, 20);
  ss_token_loc loc = loc_of(&b);
  plan p;
  make_plan(&loc, 16, &p);
  assert_int_equal(p.n_tiles, 2);
  assert_int_equal(p.tiles[0].count, 16);
  assert_int_equal(wrong_reads(&loc, 16, &p), 0);
  check_runs(&p);
  free(p.bt);
}

static void test_mixed_batch(void **state) {
  (void)state;
  /* Decodes of several sequences, then prefill chunks of three more at
   * positions that start and end inside blocks, block sizes 16 and 8. */
  for (int32_t bs = 8; bs <= 16; bs += 8) {
    batch b = {0};
    for (int s = 0; s < 5; s++) add_tokens(&b, new_table(&b, 100 + s), 3 + 37 * s, 1);
    add_tokens(&b, new_table(&b, 7), 0, 33);
    add_tokens(&b, new_table(&b, 8), 47, 61);
    add_tokens(&b, new_table(&b, 9), 250, 9);
    ss_token_loc loc = loc_of(&b);
    plan p;
    make_plan(&loc, bs, &p);
    assert_int_equal(wrong_reads(&loc, bs, &p), 0);
    check_runs(&p);
    free(p.bt);
  }
}

static void test_runs_of_long_batches(void **state) {
  (void)state;
  /* 700 tokens: tiles are grouped into launches of at most 256 tokens. */
  batch b = {0};
  add_tokens(&b, new_table(&b, 1), 5, 250);
  add_tokens(&b, new_table(&b, 2), 0, 262);
  add_tokens(&b, new_table(&b, 3), 1000, 188);
  ss_token_loc loc = loc_of(&b);
  plan p;
  make_plan(&loc, 16, &p);
  assert_true(p.n_runs >= 3);
  check_runs(&p);
  assert_int_equal(wrong_reads(&loc, 16, &p), 0);
  free(p.bt);
}

/* Two prefill batches whose old key (tokens, logit rows, tiles, longest tile,
 * width, block size) was equal but whose launches differ: neither is captured. */
static void test_prefill_not_captured(void **state) {
  (void)state;
  batch a = {0}, c = {0};
  add_tokens(&a, new_table(&a, 1), 0, 250);
  add_tokens(&a, new_table(&a, 2), 0, 262);
  add_tokens(&c, new_table(&c, 1), 0, 246);
  add_tokens(&c, new_table(&c, 2), 0, 266);
  ss_token_loc la = loc_of(&a), lc = loc_of(&c);
  plan pa, pc;
  make_plan(&la, 16, &pa);
  make_plan(&lc, 16, &pc);
  assert_int_equal(pa.n_tiles, pc.n_tiles);
  assert_int_equal(pa.tile_max, pc.tile_max);
  bool same = pa.n_runs == pc.n_runs;
  for (int32_t k = 0; same && k < pa.n_runs; k++)
    same = memcmp(&pa.runs[k], &pc.runs[k], sizeof pa.runs[k]) == 0;
  assert_false(same); /* the launches differ ... */
  ss_cuda_graph_key ka, kc;
  assert_false(ss_cuda_plan_key(&la, 2, 16, &ka)); /* ... and no graph holds either */
  assert_false(ss_cuda_plan_key(&lc, 2, 16, &kc));
  free(pa.bt);
  free(pc.bt);
}

static int rnd(uint32_t *x, int m) {
  *x = *x * 1103515245u + 12345u;
  return (int)((*x >> 8) % (uint32_t)m);
}

/* What a captured graph bakes in: the tiles' shapes, the runs and the width. */
static bool same_launches(const plan *a, const plan *b) {
  if (a->n_tiles != b->n_tiles || a->n_runs != b->n_runs || a->width != b->width ||
      a->tile_max != b->tile_max)
    return false;
  for (int32_t i = 0; i < a->n_tiles; i++)
    if (a->tiles[i].t0 != b->tiles[i].t0 || a->tiles[i].count != b->tiles[i].count) return false;
  return memcmp(a->runs, b->runs, (size_t)a->n_runs * sizeof *a->runs) == 0;
}

/* Random batches: whenever two capturable steps share a key, they launch the
 * same grids with the same arguments; a step with a chunk is never captured. */
static void test_keys_fix_launches(void **state) {
  (void)state;
  enum { N = 400 };
  static batch bs[N];
  static plan ps[N];
  static ss_cuda_graph_key ks[N];
  static bool cap[N];
  uint32_t x = 12345;
  int n_cap = 0, n_pairs = 0;
  for (int i = 0; i < N; i++) {
    batch *b = &bs[i];
    memset(b, 0, sizeof *b);
    const bool decode = rnd(&x, 2) == 0;
    const int n_seq = 1 + rnd(&x, decode ? 40 : 6);
    for (int s = 0; s < n_seq && b->n < 900; s++)
    {
      const int32_t *tab = new_table(b, (uint32_t)rnd(&x, 1000));
      const int32_t pos0 = rnd(&x, 700);
      add_tokens(b, tab, pos0, decode ? 1 : 1 + rnd(&x, 120));
    }
    ss_token_loc loc = loc_of(b);
    make_plan(&loc, 16, &ps[i]);
    assert_int_equal(wrong_reads(&loc, 16, &ps[i]), 0);
    check_runs(&ps[i]);
    cap[i] = ss_cuda_plan_key(&loc, b->n_seq, 16, &ks[i]);
    bool one_token_tiles = ps[i].tile_max == 1;
    assert_int_equal(cap[i], one_token_tiles);
    if (!cap[i]) continue;
    n_cap++;
    for (int j = 0; j < i; j++)
      if (cap[j] && memcmp(&ks[i], &ks[j], sizeof ks[i]) == 0) {
        n_pairs++;
        assert_true(same_launches(&ps[i], &ps[j]));
      }
  }
  assert_true(n_cap > 50);
  assert_true(n_pairs > 10); /* the property was exercised */
  for (int i = 0; i < N; i++) free(ps[i].bt);
}

/* A rank's GPU: one each when all are visible, GPU 0 of its own view when it
 * sees one, none when ranks would share. */
static void test_gpu_for_rank(void **state) {
  (void)state;
  for (int r = 0; r < 8; r++) assert_int_equal(ss_gpu_for_rank(r, 8, 8), r);
  for (int r = 0; r < 8; r++) assert_int_equal(ss_gpu_for_rank(r, 8, 1), 0);
  assert_int_equal(ss_gpu_for_rank(1, 2, 4), 1);
  assert_int_equal(ss_gpu_for_rank(5, 8, 4), -1);
  assert_int_equal(ss_gpu_for_rank(0, 1, 0), -1);
}

/* The step deadline (SS_GPU_STEP_TIMEOUT_S): the default when unset, seconds
 * otherwise, anything else refused. */
static void test_timeout_parse(void **state) {
  (void)state;
  double v = -1.0;
  assert_int_equal(ss_cuda_parse_timeout(NULL, &v), 0);
  assert_true(v == SS_CUDA_STEP_TIMEOUT_DEFAULT_S);
  assert_int_equal(ss_cuda_parse_timeout("", &v), 0);
  assert_true(v == SS_CUDA_STEP_TIMEOUT_DEFAULT_S);
  assert_int_equal(ss_cuda_parse_timeout("2.5", &v), 0);
  assert_true(v == 2.5);
  assert_int_equal(ss_cuda_parse_timeout("0", &v), 0);
  assert_true(v == 0.0);
  const char *bad[] = {"abc", "-1", "5s", "nan", "inf", "1e7", " "};
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
    v = 7.0;
    assert_int_equal(ss_cuda_parse_timeout(bad[i], &v), -1);
    assert_true(v == 7.0);
  }
}

/* A fake stream: done after `left` polls (never when negative), or an error. */
typedef struct fake_stream {
  int left, polls, fail_at;
} fake_stream;

static int fake_query(void *arg) {
  fake_stream *f = arg;
  f->polls++;
  if (f->fail_at && f->polls == f->fail_at) return -1;
  if (f->left < 0) return 1;
  if (f->left == 0) return 0;
  f->left--;
  return 1;
}

/* The poll returns when the work finishes, fails past the deadline on work
 * that never finishes (instead of blocking), and passes errors through. */
static void test_poll_wait(void **state) {
  (void)state;
  fake_stream f = {.left = 5};
  double waited = -1.0;
  assert_int_equal(ss_cuda_poll_wait(fake_query, &f, 10.0, &waited), 0);
  assert_int_equal(f.polls, 6);
  assert_true(waited >= 0.0 && waited < 5.0);

  fake_stream hung = {.left = -1};
  assert_int_equal(ss_cuda_poll_wait(fake_query, &hung, 0.05, &waited), SS_CUDA_WAIT_TIMEOUT);
  assert_true(waited >= 0.05 && waited < 5.0);
  assert_true(hung.polls > 1);

  fake_stream broken = {.left = -1, .fail_at = 3};
  assert_int_equal(ss_cuda_poll_wait(fake_query, &broken, 0.0, NULL), -1);
  assert_int_equal(broken.polls, 3);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_unaligned_chunk),     cmocka_unit_test(test_mixed_batch),
      cmocka_unit_test(test_runs_of_long_batches), cmocka_unit_test(test_prefill_not_captured),
      cmocka_unit_test(test_keys_fix_launches),   cmocka_unit_test(test_gpu_for_rank),
      cmocka_unit_test(test_timeout_parse),       cmocka_unit_test(test_poll_wait),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
