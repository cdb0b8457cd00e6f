/* Forks in the scheduler (ss_sched_fork) and copy-on-write: a fork shares
 * every block of its parent, the partial last one included; the first holder
 * to append into a shared block gets a copy of its own, listed in the step;
 * a forked sequence is preempted and recomputed like any other; the holders
 * finish in any order and the pool comes back whole.  A randomized run checks,
 * step by step, against a model of the KV contents (one history value per
 * slot) that every position a step reads holds its own sequence's history
 * once the step's copies have run, and that no step writes into a block held
 * by another sequence.  With steps in flight, forks wait for their parent's
 * step and copies name only the sequences of the step being built. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/base/status.h"
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

/* Holders of each block counted from the sequences' tables: the scheduler's
 * reference counts, its shared count and its used count must agree. */
static void check_counts(const ss_sched *s, ss_sched_seq **q, int n) {
  int32_t *holders = calloc((size_t)s->p.n_blocks, sizeof *holders);
  for (int i = 0; i < n; i++) {
    if (!q[i] || q[i]->state == SS_SEQ_FINISHED) continue;
    for (int32_t k = 0; k < q[i]->n_blocks; k++) holders[q[i]->blocks[k]]++;
  }
  int32_t used = 0, shared = 0;
  for (int32_t k = 0; k < s->p.n_blocks; k++) {
    assert_int_equal(holders[k], s->ref[k]);
    used += holders[k] > 0;
    shared += holders[k] > 1;
  }
  assert_int_equal(used, ss_sched_blocks_used(s));
  assert_int_equal(shared, ss_sched_blocks_shared(s));
  free(holders);
}

/* A prompt of 10 tokens in blocks of 4 (two full blocks and a partial one),
 * three forks: every block held four times; the next decode copies the partial
 * block for the first three to append (the last holder writes in place). */
static void test_fork_and_cow(void **st) {
  (void)st;
  enum { BS = 4, NB = 16 };
  ss_sched s;
  ss_sched_params p = {.max_num_seqs = 8, .max_batched_tokens = 32, .block_size = BS,
                       .n_blocks = NB, .prefix_caching = true};
  assert_int_equal(ss_sched_init(&s, &p), 0);
  int32_t toks[4][20];
  for (int i = 0; i < 4; i++)
    for (int k = 0; k < 20; k++) toks[i][k] = k < 10 ? k % 5 : 100 * i + k;
  ss_sched_seq *q[4];
  for (int i = 0; i < 4; i++) {
    q[i] = mkseq(i, 10, 20, BS);
    q[i]->tokens = toks[i];
  }
  assert_int_equal(ss_sched_add(&s, q[0]), 0);
  ss_sched_batch b;
  ss_sched_step(&s, &b);
  assert_int_equal(b.n_entries, 1);
  assert_int_equal(b.n_copies, 0);
  ss_sched_commit(&s, &b);
  for (int i = 1; i < 4; i++) assert_int_equal(ss_sched_fork(&s, q[0], q[i]), SS_OK);
  check_counts(&s, q, 4);
  for (int i = 1; i < 4; i++) {
    assert_int_equal(q[i]->state, SS_SEQ_RUNNING);
    assert_int_equal(q[i]->n_computed, 10);
    assert_int_equal(q[i]->n_blocks, 3);
    assert_memory_equal(q[i]->blocks, q[0]->blocks, 3 * sizeof *q[0]->blocks);
  }
  for (int k = 0; k < 3; k++) assert_int_equal(s.ref[q[0]->blocks[k]], 4);
  assert_int_equal(ss_sched_blocks_used(&s), 3);
  assert_int_equal(ss_sched_blocks_shared(&s), 3);
  assert_int_equal(s.n_forks, 3);
  assert_int_equal(s.n_fork_blocks, 9);
  assert_int_equal(s.n_hit, 0); /* forks take nothing from the prefix cache */
  const int32_t partial = q[0]->blocks[2];
  for (int i = 0; i < 4; i++) q[i]->n_tokens++; /* each samples its own first token */
  ss_sched_step(&s, &b);
  assert_int_equal(b.n_entries, 4);
  assert_int_equal(b.n_copies, 3);
  for (int c = 0; c < 3; c++) {
    assert_ptr_equal(b.copies[c].seq, q[c]); /* running order: parent first */
    assert_int_equal(b.copies[c].src, partial);
    assert_int_equal(b.copies[c].dst, q[c]->blocks[2]);
    assert_int_not_equal(b.copies[c].dst, partial);
  }
  assert_int_equal(q[3]->blocks[2], partial);
  assert_int_equal(s.ref[partial], 1);
  assert_int_equal(s.n_cow_copies, 3);
  check_counts(&s, q, 4);
  assert_int_equal(ss_sched_blocks_used(&s), 6);
  assert_int_equal(ss_sched_blocks_shared(&s), 2); /* the two full prompt blocks */
  ss_sched_commit(&s, &b);
  /* The next decode writes into each one's own block: no more copies. */
  for (int i = 0; i < 4; i++) q[i]->n_tokens++;
  ss_sched_step(&s, &b);
  assert_int_equal(b.n_copies, 0);
  ss_sched_commit(&s, &b);
  /* Finishing in any order: the shared blocks stay until their last holder. */
  const int order[4] = {0, 2, 3, 1};
  for (int j = 0; j < 4; j++) {
    ss_sched_finish(&s, q[order[j]]);
    check_counts(&s, q, 4);
  }
  assert_int_equal(ss_sched_blocks_used(&s), 0);
  assert_int_equal(ss_sched_blocks_shared(&s), 0);
  for (int i = 0; i < 4; i++) freeseq(q[i]);
  ss_sched_free(&s);
}

/* A prompt that ends on a block boundary shares only full blocks: the next
 * token goes to a new block, nothing is copied.  Without prefix caching the
 * reference counts still hold, and the blocks go back to the free stack. */
static void test_fork_full_blocks_no_cache(void **st) {
  (void)st;
  enum { BS = 4, NB = 8 };
  ss_sched s;
  ss_sched_params p = {.max_num_seqs = 2, .max_batched_tokens = 32, .block_size = BS,
                       .n_blocks = NB};
  assert_int_equal(ss_sched_init(&s, &p), 0);
  ss_sched_seq *q[3] = {mkseq(0, 8, 12, BS), mkseq(1, 8, 12, BS), mkseq(2, 8, 12, BS)};
  assert_int_equal(ss_sched_add(&s, q[0]), 0);
  ss_sched_batch b;
  ss_sched_step(&s, &b);
  /* Not yet computed: refused. */
  assert_int_equal(ss_sched_fork(&s, q[0], q[1]), SS_ERR_INVALID);
  ss_sched_commit(&s, &b);
  assert_int_equal(ss_sched_fork(&s, q[0], q[1]), SS_OK);
  /* max_num_seqs = 2 sequences run: a third is refused (the owner queues it). */
  assert_int_equal(ss_sched_fork(&s, q[0], q[2]), SS_ERR_BUSY);
  assert_int_equal(q[2]->state, SS_SEQ_WAITING); /* untouched (zeroed by calloc) */
  assert_int_equal(q[2]->n_blocks, 0);
  check_counts(&s, q, 2);
  q[0]->n_tokens++, q[1]->n_tokens++;
  ss_sched_step(&s, &b);
  assert_int_equal(b.n_entries, 2);
  assert_int_equal(b.n_copies, 0);
  assert_int_not_equal(q[0]->blocks[2], q[1]->blocks[2]);
  check_counts(&s, q, 2);
  ss_sched_commit(&s, &b);
  ss_sched_finish(&s, q[1]);
  check_counts(&s, q, 2);
  ss_sched_finish(&s, q[0]);
  assert_int_equal(ss_sched_blocks_used(&s), 0);
  assert_int_equal(s.n_free, NB);
  for (int i = 0; i < 3; i++) freeseq(q[i]);
  ss_sched_free(&s);
}

/* The copy needs a free block: with none, the newest running sequence (a fork)
 * is preempted instead, its references dropped, and it is later recomputed,
 * taking the cached full prompt blocks back. */
static void test_preempt_fork(void **st) {
  (void)st;
  enum { BS = 4, NB = 4 };
  ss_sched s;
  ss_sched_params p = {.max_num_seqs = 4, .max_batched_tokens = 32, .block_size = BS,
                       .n_blocks = NB, .prefix_caching = true};
  assert_int_equal(ss_sched_init(&s, &p), 0);
  int32_t toks[3][16];
  for (int i = 0; i < 3; i++)
    for (int k = 0; k < 16; k++) toks[i][k] = k < 10 ? k : 50 + 10 * i + k;
  ss_sched_seq *q[3];
  for (int i = 0; i < 3; i++) {
    q[i] = mkseq(i, 10, 16, BS);
    q[i]->tokens = toks[i];
  }
  assert_int_equal(ss_sched_add(&s, q[0]), 0);
  ss_sched_batch b;
  ss_sched_step(&s, &b);
  ss_sched_commit(&s, &b);
  assert_int_equal(ss_sched_fork(&s, q[0], q[1]), SS_OK);
  assert_int_equal(ss_sched_fork(&s, q[0], q[2]), SS_OK);
  for (int i = 0; i < 3; i++) q[i]->n_tokens++;
  /* 3 blocks held (ref 3 each), 1 free: the parent copies the partial block
   * into it; the first fork finds none free and the newest (the second fork)
   * is preempted, after which the first fork holds the partial block alone. */
  ss_sched_step(&s, &b);
  assert_int_equal(b.n_preempted, 1);
  assert_int_equal(q[2]->state, SS_SEQ_WAITING);
  assert_int_equal(q[2]->n_blocks, 0);
  assert_int_equal(q[2]->n_computed, 0);
  assert_int_equal(b.n_entries, 2);
  assert_int_equal(b.n_copies, 1);
  assert_ptr_equal(b.copies[0].seq, q[0]);
  check_counts(&s, q, 3);
  assert_int_equal(ss_sched_blocks_shared(&s), 2);
  ss_sched_commit(&s, &b);
  /* The parent finishes, then the first fork: the preempted one is admitted
   * and recomputes from the cached full blocks (8 of its 11 tokens). */
  ss_sched_finish(&s, q[0]);
  check_counts(&s, q, 3);
  ss_sched_finish(&s, q[1]);
  check_counts(&s, q, 3);
  assert_int_equal(ss_sched_blocks_used(&s), 0);
  ss_sched_step(&s, &b);
  assert_int_equal(b.n_entries, 1);
  assert_ptr_equal(b.entries[0].seq, q[2]);
  assert_int_equal(b.entries[0].start, 8);
  assert_int_equal(b.entries[0].count, 3);
  assert_int_equal(b.n_copies, 0);
  ss_sched_commit(&s, &b);
  ss_sched_finish(&s, q[2]);
  assert_int_equal(ss_sched_blocks_used(&s), 0);
  assert_int_equal(ss_sched_blocks_shared(&s), 0);
  for (int i = 0; i < 3; i++) freeseq(q[i]);
  ss_sched_free(&s);
}

static uint64_t hist_mix(uint64_t h, int32_t tok) {
  h ^= (uint64_t)tok + 0x9e3779b97f4a7c15ull + (h << 6) + (h >> 2);
  return h * 0xff51afd7ed558ccdull;
}

/* Requests of 1..4 choices through a small pool, with the engine's protocol:
 * the first choice is added, the others fork when its prompt is computed (or
 * are added on their own when the fork is refused or the first one ended
 * first); every choice then generates tokens of its own.  Some are ended
 * early at random, forks and parents alike. */
static void test_random_forks(void **st) {
  (void)st;
  enum { NR = 40, MAXC = 4, N = NR * MAXC, BS = 4, NB = 10 };
  for (int pc = 0; pc < 2; pc++) {
    ss_sched s;
    ss_sched_params p = {.max_num_seqs = 6, .max_batched_tokens = 12, .block_size = BS,
                         .n_blocks = NB, .prefix_caching = pc == 1};
    assert_int_equal(ss_sched_init(&s, &p), 0);
    ss_sched_seq *q[N] = {0};
    int32_t *toks[N] = {0}, target[N];
    uint64_t *hist[N] = {0};
    bool pending[N] = {0}, generated[N] = {0}, done[N] = {0};
    int nch[NR];
    uint64_t slot[NB * BS];
    srand(5 + pc);
    int n_seq = 0;
    for (int r = 0; r < NR; r++) {
      nch[r] = 1 + rand() % MAXC;
      const int32_t np = 1 + rand() % 14;
      int32_t ptoks[14];
      for (int k = 0; k < np; k++) ptoks[k] = rand() % 3;
      for (int c = 0; c < nch[r]; c++) {
        const int i = r * MAXC + c;
        target[i] = np + 1 + rand() % 8;
        q[i] = mkseq(i, np, target[i], BS);
        toks[i] = malloc((size_t)target[i] * sizeof *toks[i]);
        hist[i] = malloc((size_t)target[i] * sizeof *hist[i]);
        for (int32_t k = 0; k < target[i]; k++) toks[i][k] = k < np ? ptoks[k] : rand() % 3;
        uint64_t h = 1;
        for (int32_t k = 0; k < target[i]; k++) hist[i][k] = h = hist_mix(h, toks[i][k]);
        q[i]->tokens = toks[i];
        pending[i] = c > 0;
        n_seq++;
      }
    }
    int added = 0, finished = 0;
    for (int step = 0; step < 100000 && finished < n_seq; step++) {
      if (added < NR && rand() % 3 == 0) assert_int_equal(ss_sched_add(&s, q[added++ * MAXC]), 0);
      ss_sched_batch b;
      ss_sched_step(&s, &b);
      check_counts(&s, q, N);
      /* The copies run first, as on every rank. */
      for (int32_t c = 0; c < b.n_copies; c++) {
        assert_int_not_equal(b.copies[c].src, b.copies[c].dst);
        memcpy(slot + b.copies[c].dst * BS, slot + b.copies[c].src * BS, BS * sizeof *slot);
      }
      for (int32_t e = 0; e < b.n_entries; e++) {
        const ss_sched_seq *x = b.entries[e].seq;
        const int i = (int)x->id;
        assert_int_equal(b.entries[e].start, x->n_computed);
        for (int32_t k = 0; k < x->n_computed; k++)
          assert_true(slot[x->blocks[k / BS] * BS + k % BS] == hist[i][k]);
        /* It writes only into blocks it holds alone. */
        for (int32_t k = b.entries[e].start; k < b.entries[e].start + b.entries[e].count; k++)
          assert_int_equal(s.ref[x->blocks[k / BS]], 1);
      }
      for (int32_t e = 0; e < b.n_entries; e++) {
        const ss_sched_seq *x = b.entries[e].seq;
        for (int32_t k = b.entries[e].start; k < b.entries[e].start + b.entries[e].count; k++)
          slot[x->blocks[k / BS] * BS + k % BS] = hist[(int)x->id][k];
      }
      ss_sched_commit(&s, &b);
      for (int32_t e = 0; e < b.n_entries; e++) {
        if (!b.entries[e].logits) continue;
        ss_sched_seq *x = b.entries[e].seq;
        const int i = (int)x->id;
        if (i % MAXC == 0 && !generated[i]) {
          /* The first choice's prompt is computed: its choices fork. */
          for (int c = 1; c < nch[i / MAXC]; c++) {
            const int j = i + c;
            if (!pending[j]) continue;
            pending[j] = false;
            if (ss_sched_fork(&s, x, q[j]) == SS_OK) q[j]->n_tokens++, generated[j] = true;
            else assert_int_equal(ss_sched_add(&s, q[j]), 0);
          }
        }
        generated[i] = true;
        x->n_tokens++;
      }
      for (int i = 0; i < N; i++) {
        if (!q[i] || done[i] || pending[i] || q[i]->state != SS_SEQ_RUNNING) continue;
        const bool complete = q[i]->n_tokens == target[i] && q[i]->n_computed == q[i]->n_tokens - 1;
        if (!complete && rand() % 50 != 0) continue;
        ss_sched_finish(&s, q[i]);
        done[i] = true;
        finished++;
        if (i % MAXC == 0 && !generated[i])
          /* Ended before its prompt was computed: the others run on their own. */
          for (int c = 1; c < nch[i / MAXC]; c++)
            if (pending[i + c]) {
              pending[i + c] = false;
              assert_int_equal(ss_sched_add(&s, q[i + c]), 0);
            }
      }
      check_counts(&s, q, N);
    }
    assert_int_equal(finished, n_seq);
    assert_int_equal(ss_sched_blocks_used(&s), 0);
    assert_int_equal(ss_sched_blocks_shared(&s), 0);
    /* The run exercised what it is for. */
    print_message("prefix caching %d: %llu forks, %llu copies, %llu preemptions\n", pc,
                  (unsigned long long)s.n_forks, (unsigned long long)s.n_cow_copies,
                  (unsigned long long)s.n_preemptions);
    assert_true(s.n_forks > 10);
    assert_true(s.n_cow_copies > 10);
    assert_true(s.n_preemptions > 0);
    for (int i = 0; i < N; i++) {
      if (q[i]) freeseq(q[i]);
      free(toks[i]);
      free(hist[i]);
    }
    ss_sched_free(&s);
  }
}

/* Every copy of a step is made for one of its own entries, a sequence that was
 * in no step in flight when the step was built. */
static void check_copies(const ss_sched_batch *b, const bool *was_in_flight,
                         ss_sched_seq **q, int n) {
  for (int32_t c = 0; c < b->n_copies; c++) {
    bool entry = false;
    for (int32_t i = 0; i < b->n_entries; i++) entry = entry || b->entries[i].seq == b->copies[c].seq;
    assert_true(entry);
    for (int i = 0; i < n; i++)
      if (q[i] == b->copies[c].seq) assert_false(was_in_flight[i]);
  }
}

/* Two steps in flight (microbatches 2): a fork is refused while its parent's
 * step is in flight and made once it is committed, the child out of flight;
 * the copies of the steps built while another is in flight name only that
 * step's own sequences, and the holder that appends last writes in place. */
static void test_forks_in_flight(void **st) {
  (void)st;
  enum { BS = 4, NB = 32, N = 4 };
  ss_sched s;
  ss_sched_params p = {.max_num_seqs = 8, .max_batched_tokens = 32, .block_size = BS,
                       .n_blocks = NB, .prefix_caching = true, .microbatches = 2};
  assert_int_equal(ss_sched_init(&s, &p), 0);
  int32_t toks[N][20];
  for (int i = 0; i < N; i++)
    for (int k = 0; k < 20; k++) toks[i][k] = i == 3 ? 50 + k : k < 10 ? k % 5 : 100 * i + k;
  ss_sched_seq *q[N];
  for (int i = 0; i < N; i++) {
    q[i] = mkseq(i, i == 3 ? 6 : 10, 20, BS);
    q[i]->tokens = toks[i];
  }
  bool fl[N];
  /* q[0] the parent, q[3] another request; q[1], q[2] its forks to be. */
  assert_int_equal(ss_sched_add(&s, q[0]), 0);
  assert_int_equal(ss_sched_add(&s, q[3]), 0);
  ss_sched_batch a, b, c, d;
  ss_sched_entry ea[8], eb[8], ec[8];
  ss_sched_copy cc[8];
  ss_sched_step(&s, &a); /* one of two active: q[0] */
  assert_int_equal(a.n_entries, 1);
  assert_ptr_equal(a.entries[0].seq, q[0]);
  memcpy(ea, a.entries, sizeof ea), a.entries = ea;
  ss_sched_step(&s, &b); /* built while a is in flight: q[3] */
  assert_int_equal(b.n_entries, 1);
  assert_ptr_equal(b.entries[0].seq, q[3]);
  memcpy(eb, b.entries, sizeof eb), b.entries = eb;
  assert_true(q[0]->in_flight && q[3]->in_flight);
  /* The parent's step is in flight: no fork yet, the child untouched. */
  assert_int_equal(ss_sched_fork(&s, q[0], q[1]), SS_ERR_INVALID);
  assert_int_equal(q[1]->state, SS_SEQ_WAITING);
  assert_int_equal(q[1]->n_blocks, 0);
  ss_sched_commit(&s, &a);
  for (int i = 1; i < 3; i++) {
    assert_int_equal(ss_sched_fork(&s, q[0], q[i]), SS_OK);
    assert_false(q[i]->in_flight);
  }
  check_counts(&s, q, N);
  const int32_t partial = q[0]->blocks[2];
  assert_int_equal(s.ref[partial], 3);
  for (int i = 0; i < 3; i++) q[i]->n_tokens++;
  /* Built while b (q[3]) is in flight: two of the four active. */
  for (int i = 0; i < N; i++) fl[i] = q[i]->in_flight;
  ss_sched_step(&s, &c);
  assert_int_equal(c.n_entries, 2);
  assert_ptr_equal(c.entries[0].seq, q[0]);
  assert_ptr_equal(c.entries[1].seq, q[1]);
  assert_int_equal(c.n_copies, 2);
  check_copies(&c, fl, q, N);
  for (int32_t k = 0; k < c.n_copies; k++) assert_int_equal(c.copies[k].src, partial);
  memcpy(ec, c.entries, sizeof ec), c.entries = ec;
  memcpy(cc, c.copies, sizeof cc), c.copies = cc;
  assert_int_equal(s.ref[partial], 1);
  check_counts(&s, q, N);
  ss_sched_commit(&s, &b);
  q[3]->n_tokens++;
  /* Built while c is in flight: q[2] (the last holder: in place) and q[3]. */
  for (int i = 0; i < N; i++) fl[i] = q[i]->in_flight;
  ss_sched_step(&s, &d);
  assert_int_equal(d.n_entries, 2);
  for (int32_t i = 0; i < d.n_entries; i++) {
    assert_true(d.entries[i].seq == q[2] || d.entries[i].seq == q[3]);
    assert_false(fl[d.entries[i].seq->id]);
  }
  assert_int_equal(d.n_copies, 0);
  assert_int_equal(q[2]->blocks[2], partial);
  check_counts(&s, q, N);
  ss_sched_commit(&s, &c);
  ss_sched_commit(&s, &d);
  assert_int_equal(s.n_cow_copies, 2);
  for (int i = 0; i < N; i++) ss_sched_finish(&s, q[i]);
  assert_int_equal(ss_sched_blocks_used(&s), 0);
  assert_int_equal(ss_sched_blocks_shared(&s), 0);
  for (int i = 0; i < N; i++) freeseq(q[i]);
  ss_sched_free(&s);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_fork_and_cow),
      cmocka_unit_test(test_fork_full_blocks_no_cache),
      cmocka_unit_test(test_preempt_fork),
      cmocka_unit_test(test_random_forks),
      cmocka_unit_test(test_forks_in_flight),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
