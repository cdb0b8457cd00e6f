/* The continuous-batching scheduler as pure logic: token budget and chunked
 * prefill, decodes before prefills, max_num_seqs, block accounting, preemption
 * of the newest sequence with recompute, and a randomized run that checks the
 * invariants (no block held twice, every sequence finishes) step by step;
 * prefix caching, and a sequence that computes its prompt in full; steps in
 * flight (micro-batches under pipeline parallelism). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/engine/scheduler.h"

static ss_sched_seq *mkseq(int64_t id, int32_t prompt, int32_t max_tokens, int32_t block_size) {
  ss_sched_seq *q = calloc(1, sizeof *q);
  q->id = id;
  q->n_tokens = prompt;
  q->max_tokens = max_tokens;
  q->cap_blocks = (max_tokens + block_size - 1) / block_size;
  q->blocks = calloc((size_t)q->cap_blocks, sizeof *q->blocks);
  return q;
}

static void freeseq(ss_sched_seq *q) {
  free(q->blocks);
  free(q);
}

/* Runs the step as the engine would: commit, then append a token to every
 * sequence that produced logits. */
static void run_step(ss_sched *s, ss_sched_batch *b) {
  ss_sched_step(s, b);
  ss_sched_commit(s, b);
  for (int i = 0; i < b->n_entries; i++)
    if (b->entries[i].logits) b->entries[i].seq->n_tokens++;
}

static void test_chunked_prefill_and_budget(void **st) {
  (void)st;
  ss_sched s;
  ss_sched_params p = {.max_num_seqs = 4, .max_batched_tokens = 10, .block_size = 4, .n_blocks = 64};
  assert_int_equal(ss_sched_init(&s, &p), 0);
  ss_sched_seq *a = mkseq(1, 25, 40, 4);
  assert_int_equal(ss_sched_add(&s, a), 0);
  ss_sched_batch b;
  run_step(&s, &b); /* 10 of 25 prompt tokens, no logits */
  assert_int_equal(b.n_entries, 1);
  assert_int_equal(b.entries[0].count, 10);
  assert_false(b.entries[0].logits);
  assert_int_equal(a->n_computed, 10);
  assert_int_equal(a->n_blocks, 3);
  run_step(&s, &b);
  run_step(&s, &b); /* 5 left: the last chunk gives logits */
  assert_int_equal(b.entries[0].count, 5);
  assert_true(b.entries[0].logits);
  assert_int_equal(a->n_tokens, 26);
  /* A second request arrives: the running decode goes first, the new prompt
   * gets the rest of the budget. */
  ss_sched_seq *c = mkseq(2, 30, 40, 4);
  assert_int_equal(ss_sched_add(&s, c), 0);
  run_step(&s, &b);
  assert_int_equal(b.n_entries, 2);
  assert_ptr_equal(b.entries[0].seq, a);
  assert_int_equal(b.entries[0].count, 1);
  assert_ptr_equal(b.entries[1].seq, c);
  assert_int_equal(b.entries[1].count, 9);
  assert_int_equal(b.n_tokens, 10);
  ss_sched_finish(&s, a);
  ss_sched_finish(&s, c);
  assert_int_equal(ss_sched_blocks_used(&s), 0);
  freeseq(a);
  freeseq(c);
  ss_sched_free(&s);
}

static void test_max_num_seqs(void **st) {
  (void)st;
  ss_sched s;
  ss_sched_params p = {.max_num_seqs = 2, .max_batched_tokens = 100, .block_size = 4, .n_blocks = 64};
  assert_int_equal(ss_sched_init(&s, &p), 0);
  ss_sched_seq *q[3];
  for (int i = 0; i < 3; i++) {
    q[i] = mkseq(i, 3, 10, 4);
    assert_int_equal(ss_sched_add(&s, q[i]), 0);
  }
  ss_sched_batch b;
  run_step(&s, &b);
  assert_int_equal(b.n_entries, 2);
  assert_int_equal(s.waiting.count, 1);
  ss_sched_finish(&s, q[0]);
  run_step(&s, &b); /* q[1] decodes, q[2] is admitted */
  assert_int_equal(b.n_entries, 2);
  assert_ptr_equal(b.entries[1].seq, q[2]);
  for (int i = 0; i < 3; i++) {
    if (q[i]->state != SS_SEQ_FINISHED) ss_sched_finish(&s, q[i]);
    freeseq(q[i]);
  }
  ss_sched_free(&s);
}

static void test_too_big_for_the_pool(void **st) {
  (void)st;
  ss_sched s;
  ss_sched_params p = {.max_num_seqs = 2, .max_batched_tokens = 100, .block_size = 4, .n_blocks = 4};
  assert_int_equal(ss_sched_init(&s, &p), 0);
  ss_sched_seq *q = mkseq(1, 3, 17, 4); /* 5 blocks > 4 */
  assert_int_not_equal(ss_sched_add(&s, q), 0);
  freeseq(q);
  ss_sched_free(&s);
  ss_sched_params bad = p;
  bad.max_num_seqs = 0;
  assert_int_not_equal(ss_sched_init(&s, &bad), 0);
}

static void test_preemption(void **st) {
  (void)st;
  ss_sched s;
  /* 4 blocks of 4 tokens; two sequences of 6 prompt tokens each take 2 blocks, and
   * the first decode past 8 tokens needs a third block: the newest is preempted. */
  ss_sched_params p = {.max_num_seqs = 4, .max_batched_tokens = 64, .block_size = 4, .n_blocks = 4};
  assert_int_equal(ss_sched_init(&s, &p), 0);
  ss_sched_seq *a = mkseq(1, 6, 16, 4), *c = mkseq(2, 6, 16, 4);
  assert_int_equal(ss_sched_add(&s, a), 0);
  assert_int_equal(ss_sched_add(&s, c), 0);
  ss_sched_batch b;
  run_step(&s, &b); /* both prefill: 4 blocks used, tokens 7 each */
  assert_int_equal(ss_sched_blocks_used(&s), 4);
  run_step(&s, &b); /* decode position 6 (block 1): fine; tokens 8 */
  assert_int_equal(b.n_preempted, 0);
  run_step(&s, &b); /* position 7: still block 1; tokens 9 */
  run_step(&s, &b); /* position 8 needs block 2: c (newest) is preempted */
  assert_int_equal(b.n_preempted, 1);
  assert_int_equal(s.n_preemptions, 1);
  assert_int_equal(c->state, SS_SEQ_WAITING);
  assert_int_equal(c->n_computed, 0);
  assert_int_equal(c->n_blocks, 0);
  assert_int_equal(b.n_entries, 1);
  assert_ptr_equal(b.entries[0].seq, a);
  assert_ptr_equal(s.waiting.head, c); /* front of the queue */
  /* a finishes; c is recomputed from its whole history (prompt + generated). */
  ss_sched_finish(&s, a);
  const int32_t c_tokens = c->n_tokens;
  run_step(&s, &b);
  assert_int_equal(b.n_entries, 1);
  assert_int_equal(b.entries[0].start, 0);
  assert_int_equal(b.entries[0].count, c_tokens);
  assert_true(b.entries[0].logits);
  ss_sched_finish(&s, c);
  assert_int_equal(ss_sched_blocks_used(&s), 0);
  freeseq(a);
  freeseq(c);
  ss_sched_free(&s);
}

/* Many random sequences through a small pool, pausing and resuming at random:
 * every one finishes, no block is ever held by two sequences, no paused one is
 * scheduled, and the pool is whole at the end. */
static void test_random_invariants(void **st) {
  (void)st;
  ss_sched s;
  ss_sched_params p = {.max_num_seqs = 6, .max_batched_tokens = 24, .block_size = 4, .n_blocks = 20};
  assert_int_equal(ss_sched_init(&s, &p), 0);
  enum { N = 40 };
  ss_sched_seq *q[N];
  int32_t target[N];
  srand(7);
  for (int i = 0; i < N; i++) {
    int32_t prompt = 1 + rand() % 30, gen = 1 + rand() % 40;
    q[i] = mkseq(i, prompt, prompt + gen, 4);
    target[i] = prompt + gen;
  }
  int added = 0, finished = 0;
  for (int step = 0; step < 100000 && finished < N; step++) {
    if (added < N && rand() % 3 == 0) assert_int_equal(ss_sched_add(&s, q[added++]), 0);
    /* Streams pause and resume at random (a paused sequence that is never
     * resumed would never finish). */
    if (added > 0 && rand() % 4 == 0) {
      ss_sched_seq *t = q[rand() % added];
      if (t->state != SS_SEQ_FINISHED) ss_sched_set_paused(&s, t, !t->paused);
    }
    int32_t n_paused = 0;
    for (int i = 0; i < added; i++) n_paused += q[i]->paused;
    assert_int_equal(n_paused, s.n_paused);
    ss_sched_batch b;
    run_step(&s, &b);
    assert_true(b.n_tokens <= p.max_batched_tokens);
    assert_true(b.n_entries <= p.max_num_seqs);
    for (int32_t i = 0; i < b.n_entries; i++) assert_false(b.entries[i].seq->paused);
    /* No block in two tables; used = sum of table sizes. */
    char owner[20] = {0};
    int32_t used = 0;
    for (int i = 0; i < N; i++) {
      if (q[i]->state == SS_SEQ_FINISHED) continue;
      for (int32_t k = 0; k < q[i]->n_blocks; k++) {
        assert_false(owner[q[i]->blocks[k]]);
        owner[q[i]->blocks[k]] = 1;
      }
      used += q[i]->n_blocks;
      assert_true(q[i]->n_computed <= q[i]->n_tokens);
    }
    assert_int_equal(used, ss_sched_blocks_used(&s));
    for (int i = 0; i < N; i++)
      if (q[i]->state == SS_SEQ_RUNNING && q[i]->n_tokens == target[i] &&
          q[i]->n_computed == q[i]->n_tokens - 1) {
        ss_sched_finish(&s, q[i]);
        finished++;
      }
    if (added == N && s.waiting.count == 0 && s.running.count == 0) break;
  }
  assert_int_equal(finished, N);
  assert_int_equal(ss_sched_blocks_used(&s), 0);
  for (int i = 0; i < N; i++) freeseq(q[i]);
  ss_sched_free(&s);
}

/* Prefix caching against a shadow K/V pool: the test "computes" each scheduled
 * position by writing, into its slot, a hash of the sequence's tokens through
 * that position (what the K/V at that position depends on), and before every
 * step checks that every position a sequence has computed holds its own
 * history's hash: any block handed out with the wrong contents (wrong key,
 * stale reuse, a partial block registered, an evicted block still found) fails.
 * Tokens come from a 3-letter alphabet over a few shared prefixes, so equal
 * blocks at different positions and in different contexts are common; the
 * pool is small, so blocks are evicted and sequences preempted. */
static uint64_t hist_mix(uint64_t h, int32_t tok) {
  h ^= (uint64_t)tok + 0x9e3779b97f4a7c15ull + (h << 6) + (h >> 2);
  return h * 0xff51afd7ed558ccdull;
}

static void test_prefix_cache_contents(void **st) {
  (void)st;
  enum { N = 60, BS = 4, NB = 24 };
  ss_sched s;
  ss_sched_params p = {.max_num_seqs = 5, .max_batched_tokens = 16, .block_size = BS,
                       .n_blocks = NB, .prefix_caching = true};
  assert_int_equal(ss_sched_init(&s, &p), 0);
  ss_sched_seq *q[N];
  int32_t *toks[N], target[N];
  uint64_t *hist[N]; /* hist[i][p]: hash of tokens 0..p */
  uint64_t slot[NB * BS];
  srand(11);
  const int32_t prefix[3][12] = {{0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2},
                                 {0, 1, 2, 0, 1, 2, 0, 0, 0, 0, 1, 1},
                                 {2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0}};
  for (int i = 0; i < N; i++) {
    const int32_t np = 1 + rand() % 20, gen = 1 + rand() % 16;
    target[i] = np + gen;
    q[i] = mkseq(i, np, target[i], BS);
    toks[i] = malloc((size_t)target[i] * sizeof *toks[i]);
    hist[i] = malloc((size_t)target[i] * sizeof *hist[i]);
    const int pf = rand() % 3, shared = rand() % 13;
    for (int32_t k = 0; k < target[i]; k++)
      toks[i][k] = k < shared && k < 12 ? prefix[pf][k] : rand() % 3;
    uint64_t h = 1;
    for (int32_t k = 0; k < target[i]; k++) hist[i][k] = h = hist_mix(h, toks[i][k]);
    q[i]->tokens = toks[i];
  }
  int added = 0, finished = 0;
  for (int step = 0; step < 100000 && finished < N; step++) {
    if (added < N && rand() % 2 == 0) assert_int_equal(ss_sched_add(&s, q[added++]), 0);
    ss_sched_batch b;
    ss_sched_step(&s, &b);
    /* Reference counts are the holders; held + free + free cached = the pool. */
    int32_t holders[NB] = {0}, used = 0;
    for (int i = 0; i < N; i++) {
      if (q[i]->state == SS_SEQ_FINISHED) continue;
      for (int32_t k = 0; k < q[i]->n_blocks; k++) holders[q[i]->blocks[k]]++;
    }
    for (int32_t k = 0; k < NB; k++) {
      assert_int_equal(holders[k], s.ref[k]);
      used += holders[k] > 0;
    }
    assert_int_equal(used, ss_sched_blocks_used(&s));
    /* What the step reads is right: every computed position of every
     * scheduled sequence holds its own history. */
    for (int32_t e = 0; e < b.n_entries; e++) {
      const ss_sched_seq *x = b.entries[e].seq;
      const int i = (int)x->id;
      assert_int_equal(b.entries[e].start, x->n_computed);
      for (int32_t k = 0; k < x->n_computed; k++)
        assert_true(slot[x->blocks[k / BS] * BS + k % BS] == hist[i][k]);
    }
    /* The forward pass: write the scheduled positions. */
    for (int32_t e = 0; e < b.n_entries; e++) {
      const ss_sched_seq *x = b.entries[e].seq;
      for (int32_t k = b.entries[e].start; k < b.entries[e].start + b.entries[e].count; k++)
        slot[x->blocks[k / BS] * BS + k % BS] = hist[(int)x->id][k];
    }
    ss_sched_commit(&s, &b);
    for (int32_t e = 0; e < b.n_entries; e++)
      if (b.entries[e].logits) b.entries[e].seq->n_tokens++;
    for (int i = 0; i < N; i++)
      if (q[i]->state == SS_SEQ_RUNNING && q[i]->n_tokens == target[i] &&
          q[i]->n_computed == q[i]->n_tokens - 1) {
        ss_sched_finish(&s, q[i]);
        finished++;
      }
    if (added == N && s.waiting.count == 0 && s.running.count == 0) break;
  }
  assert_int_equal(finished, N);
  assert_int_equal(ss_sched_blocks_used(&s), 0);
  /* The run exercised the cache: hits, and evictions of cached blocks. */
  assert_true(s.n_hit > 0);
  assert_true(s.n_preemptions > 0);
  uint32_t evictions = 0;
  for (int32_t k = 0; k < NB; k++) evictions += s.gen[k];
  assert_true(evictions > 0);
  for (int i = 0; i < N; i++) {
    freeseq(q[i]);
    free(toks[i]);
    free(hist[i]);
  }
  ss_sched_free(&s);
}

/* A sequence with compute_all (its prompt rows' logits are wanted) takes
 * nothing from the cache and computes its whole prompt, and its blocks are
 * registered for the sequences after it. */
static void test_compute_all(void **st) {
  (void)st;
  enum { BS = 4, NP = 10 };
  ss_sched s;
  ss_sched_params p = {.max_num_seqs = 4, .max_batched_tokens = 64, .block_size = BS,
                       .n_blocks = 16, .prefix_caching = true};
  assert_int_equal(ss_sched_init(&s, &p), 0);
  int32_t toks[3][NP + 4];
  for (int i = 0; i < 3; i++)
    for (int k = 0; k < NP + 4; k++) toks[i][k] = k;
  ss_sched_seq *a = mkseq(1, NP, NP + 4, BS), *b = mkseq(2, NP, NP + 4, BS),
               *c = mkseq(3, NP, NP + 4, BS);
  a->tokens = toks[0];
  b->tokens = toks[1];
  c->tokens = toks[2];
  a->compute_all = true;
  c->compute_all = true;
  ss_sched_batch bt;
  /* a computes its prompt and registers its two full blocks. */
  assert_int_equal(ss_sched_add(&s, a), 0);
  run_step(&s, &bt);
  assert_int_equal(bt.entries[0].count, NP);
  /* b finds them; c, with compute_all, computes all NP tokens again. */
  assert_int_equal(ss_sched_add(&s, b), 0);
  assert_int_equal(ss_sched_add(&s, c), 0);
  run_step(&s, &bt);
  assert_int_equal(bt.n_entries, 3);
  assert_int_equal(b->n_cached, 2 * BS);
  assert_ptr_equal(bt.entries[1].seq, b);
  assert_int_equal(bt.entries[1].start, 2 * BS);
  assert_ptr_equal(bt.entries[2].seq, c);
  assert_int_equal(bt.entries[2].start, 0);
  assert_int_equal(bt.entries[2].count, NP);
  assert_int_equal(c->n_cached, 0);
  ss_sched_finish(&s, a);
  ss_sched_finish(&s, b);
  ss_sched_finish(&s, c);
  assert_int_equal(ss_sched_blocks_used(&s), 0);
  freeseq(a);
  freeseq(b);
  freeseq(c);
  ss_sched_free(&s);
}

/* A paused sequence is not scheduled and keeps its blocks while no one needs
 * them; a waiting sequence short of blocks, or of a place under max_num_seqs,
 * preempts it before any running sequence that is not paused; a paused
 * waiting sequence is passed over; once resumed it is recomputed. */
static void test_paused(void **st) {
  (void)st;
  ss_sched s;
  /* 5 blocks of 4 tokens, two sequences at once. */
  ss_sched_params p = {.max_num_seqs = 2, .max_batched_tokens = 64, .block_size = 4, .n_blocks = 5};
  assert_int_equal(ss_sched_init(&s, &p), 0);
  ss_sched_seq *a = mkseq(1, 6, 20, 4), *c = mkseq(2, 6, 20, 4), *d = mkseq(3, 6, 20, 4);
  assert_int_equal(ss_sched_add(&s, a), 0);
  ss_sched_batch b;
  run_step(&s, &b); /* a prefills: 2 blocks, 7 tokens */
  ss_sched_set_paused(&s, a, true);
  assert_int_equal(s.n_paused, 1);
  assert_false(ss_sched_has_work(&s));
  run_step(&s, &b);
  assert_int_equal(b.n_entries, 0);
  assert_int_equal(a->n_tokens, 7);
  assert_int_equal(a->n_blocks, 2); /* kept: no one needs them */
  assert_int_equal(a->state, SS_SEQ_RUNNING);
  /* c fits beside it: a keeps its blocks and is still not scheduled. */
  assert_int_equal(ss_sched_add(&s, c), 0);
  assert_true(ss_sched_has_work(&s));
  run_step(&s, &b);
  assert_int_equal(b.n_entries, 1);
  assert_ptr_equal(b.entries[0].seq, c);
  assert_int_equal(b.n_preempted, 0);
  assert_int_equal(a->n_blocks, 2);
  /* d wants a place (max_num_seqs 2): the paused a gives its own up, not c. */
  assert_int_equal(ss_sched_add(&s, d), 0);
  run_step(&s, &b);
  assert_int_equal(b.n_preempted, 1);
  assert_int_equal(a->state, SS_SEQ_WAITING);
  assert_int_equal(a->n_blocks, 0);
  assert_int_equal(a->n_computed, 0);
  assert_int_equal(c->state, SS_SEQ_RUNNING);
  assert_int_equal(d->state, SS_SEQ_RUNNING);
  assert_int_equal(b.n_entries, 2);
  /* a waits paused at the front of the queue; c and d decode.  c ends and a
   * still waits, passed over: paused sequences are never admitted. */
  ss_sched_finish(&s, c);
  run_step(&s, &b);
  assert_int_equal(b.n_entries, 1);
  assert_ptr_equal(b.entries[0].seq, d);
  assert_int_equal(a->state, SS_SEQ_WAITING);
  /* Resumed, a is recomputed from its whole history. */
  ss_sched_set_paused(&s, a, false);
  assert_int_equal(s.n_paused, 0);
  run_step(&s, &b);
  assert_int_equal(b.n_entries, 2);
  const ss_sched_entry *ea = b.entries[0].seq == a ? &b.entries[0] : &b.entries[1];
  assert_ptr_equal(ea->seq, a);
  assert_int_equal(ea->start, 0);
  assert_int_equal(ea->count, 7);
  assert_true(ea->logits);
  /* Blocks: when a running sequence needs one and none is free, a paused
   * sequence gives its up even when it is the older one (unpaused, a, the
   * newest, would be the victim). */
  ss_sched_set_paused(&s, d, true);
  for (int i = 0; i < 8 && d->state == SS_SEQ_RUNNING; i++) {
    run_step(&s, &b);
    assert_int_equal(b.n_entries, 1);
    assert_ptr_equal(b.entries[0].seq, a);
  }
  assert_int_equal(d->state, SS_SEQ_WAITING);
  assert_int_equal(d->n_blocks, 0);
  assert_int_equal(a->state, SS_SEQ_RUNNING);
  assert_int_equal(a->n_blocks, 4);
  ss_sched_finish(&s, d);
  assert_int_equal(s.n_paused, 0);
  ss_sched_finish(&s, a);
  assert_int_equal(ss_sched_blocks_used(&s), 0);
  freeseq(a);
  freeseq(c);
  freeseq(d);
  ss_sched_free(&s);
}

/* Two steps in flight (microbatches = 2), against the shadow K/V pool of the
 * prefix-cache test: each step "computes" its positions when it is built (as
 * the first pipeline stage does, in the order the steps are issued) and is
 * committed one step later, oldest first.  Every step must read only its own
 * history, hold no sequence that an uncommitted step holds, and take at most
 * ceil(active / 2) sequences; with a small pool, preemptions and cache
 * evictions happen while steps are in flight, and every sequence finishes. */
static void test_in_flight(void **st) {
  (void)st;
  enum { N = 60, BS = 4, NB = 28, K = 2 };
  ss_sched s;
  ss_sched_params p = {.max_num_seqs = 8, .max_batched_tokens = 16, .block_size = BS,
                       .n_blocks = NB, .prefix_caching = true, .microbatches = K};
  assert_int_equal(ss_sched_init(&s, &p), 0);
  ss_sched_seq *q[N];
  int32_t *toks[N], target[N];
  uint64_t *hist[N];
  uint64_t slot[NB * BS];
  srand(23);
  for (int i = 0; i < N; i++) {
    const int32_t np = 1 + rand() % 20, gen = 1 + rand() % 16;
    target[i] = np + gen;
    q[i] = mkseq(i, np, target[i], BS);
    toks[i] = malloc((size_t)target[i] * sizeof *toks[i]);
    hist[i] = malloc((size_t)target[i] * sizeof *hist[i]);
    for (int32_t k = 0; k < target[i]; k++) toks[i][k] = k < 8 ? k % 3 : rand() % 3;
    uint64_t h = 1;
    for (int32_t k = 0; k < target[i]; k++) hist[i][k] = h = hist_mix(h, toks[i][k]);
    q[i]->tokens = toks[i];
  }
  ss_sched_entry fl[K][8];
  ss_sched_batch fb[K];
  int n_fl = 0, head = 0, added = 0, finished = 0, overlapped = 0;
  uint64_t pre_in_flight = 0;
  for (int iter = 0; iter < 100000 && finished < N; iter++) {
    if (added < N && rand() % 2 == 0) assert_int_equal(ss_sched_add(&s, q[added++]), 0);
    bool issued = false;
    if (n_fl < K) {
      const int32_t active = s.running.count + s.waiting.count - s.n_paused;
      const uint64_t pre = s.n_preemptions;
      ss_sched_batch b;
      ss_sched_step(&s, &b);
      if (n_fl > 0) pre_in_flight += s.n_preemptions - pre;
      if (b.n_entries > 0) {
        assert_true(b.n_entries <= (active + K - 1) / K);
        for (int32_t e = 0; e < b.n_entries; e++) {
          const ss_sched_seq *x = b.entries[e].seq;
          const int i = (int)x->id;
          /* Not in a step still in flight. */
          for (int f = 0; f < n_fl; f++)
            for (int32_t g = 0; g < fb[(head + f) % K].n_entries; g++)
              assert_true(fb[(head + f) % K].entries[g].seq != x);
          assert_int_equal(b.entries[e].start, x->n_computed);
          for (int32_t k = 0; k < x->n_computed; k++)
            assert_true(slot[x->blocks[k / BS] * BS + k % BS] == hist[i][k]);
          for (int32_t k = b.entries[e].start; k < b.entries[e].start + b.entries[e].count; k++)
            slot[x->blocks[k / BS] * BS + k % BS] = hist[i][k];
        }
        const int t = (head + n_fl) % K;
        memcpy(fl[t], b.entries, (size_t)b.n_entries * sizeof *b.entries);
        fb[t] = b;
        fb[t].entries = fl[t];
        overlapped += n_fl > 0;
        n_fl++;
        issued = true;
      }
    }
    if (n_fl == K || (!issued && n_fl > 0)) {
      ss_sched_batch *b = &fb[head];
      ss_sched_commit(&s, b);
      for (int32_t e = 0; e < b->n_entries; e++) {
        ss_sched_seq *x = b->entries[e].seq;
        assert_false(x->in_flight);
        if (b->entries[e].logits) x->n_tokens++;
        if (x->n_tokens == target[(int)x->id] && x->n_computed == x->n_tokens - 1) {
          ss_sched_finish(&s, x);
          finished++;
        }
      }
      head = (head + 1) % K;
      n_fl--;
    }
  }
  assert_int_equal(finished, N);
  assert_int_equal(n_fl, 0);
  assert_int_equal(ss_sched_blocks_used(&s), 0);
  assert_true(overlapped > 0);
  assert_true(pre_in_flight > 0);
  for (int i = 0; i < N; i++) {
    freeseq(q[i]);
    free(toks[i]);
    free(hist[i]);
  }
  ss_sched_free(&s);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_chunked_prefill_and_budget),
      cmocka_unit_test(test_max_num_seqs),
      cmocka_unit_test(test_too_big_for_the_pool),
      cmocka_unit_test(test_preemption),
      cmocka_unit_test(test_paused),
      cmocka_unit_test(test_random_invariants),
      cmocka_unit_test(test_prefix_cache_contents),
      cmocka_unit_test(test_compute_all),
      cmocka_unit_test(test_in_flight),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
