#include "runtime/engine/scheduler.h"

#include <stdlib.h>
#include <string.h>

#include "runtime/base/status.h"

/* ------------------------------------------------------------------------ */
/* Lists                                                                      */

static void list_remove(ss_seq_list *l, ss_sched_seq *q) {
  if (q->prev) q->prev->next = q->next;
  else l->head = q->next;
  if (q->next) q->next->prev = q->prev;
  else l->tail = q->prev;
  q->prev = q->next = NULL;
  l->count--;
}

static void list_push_back(ss_seq_list *l, ss_sched_seq *q) {
  q->prev = l->tail;
  q->next = NULL;
  if (l->tail) l->tail->next = q;
  else l->head = q;
  l->tail = q;
  l->count++;
}

static void list_push_front(ss_seq_list *l, ss_sched_seq *q) {
  q->next = l->head;
  q->prev = NULL;
  if (l->head) l->head->prev = q;
  else l->tail = q;
  l->head = q;
  l->count++;
}

/* ------------------------------------------------------------------------ */
/* The prefix cache: keys, the table, the least-recently-released list        */

static uint64_t mix64(uint64_t x) {
  /* splitmix64's finaliser: every input bit reaches every output bit. */
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ull;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

static uint64_t key_hash(int32_t parent, uint32_t parent_gen, const int32_t *toks, int32_t bs) {
  uint64_t h = mix64(((uint64_t)(uint32_t)parent << 32) ^ parent_gen ^ 0x9e3779b97f4a7c15ull);
  for (int32_t i = 0; i < bs; i++) h = mix64(h ^ (uint32_t)toks[i]);
  return h;
}

static bool key_equal(const ss_sched *s, int32_t id, uint64_t h, int32_t parent,
                      uint32_t parent_gen, const int32_t *toks) {
  const int32_t bs = s->p.block_size;
  return s->hash[id] == h && s->parent[id] == parent && s->parent_gen[id] == parent_gen &&
         memcmp(s->btok + (size_t)id * bs, toks, (size_t)bs * sizeof *toks) == 0;
}

static int32_t table_find(const ss_sched *s, uint64_t h, int32_t parent, uint32_t parent_gen,
                          const int32_t *toks) {
  for (uint32_t i = (uint32_t)h & s->table_mask;; i = (i + 1) & s->table_mask) {
    const int32_t id = s->table[i];
    if (id < 0) return -1;
    if (key_equal(s, id, h, parent, parent_gen, toks)) return id;
  }
}

static void table_insert(ss_sched *s, int32_t id) {
  uint32_t i = (uint32_t)s->hash[id] & s->table_mask;
  while (s->table[i] >= 0) i = (i + 1) & s->table_mask;
  s->table[i] = id;
}

/* Linear probing's deletion by backward shift: no tombstones to pile up. */
static void table_remove(ss_sched *s, int32_t id) {
  uint32_t i = (uint32_t)s->hash[id] & s->table_mask;
  while (s->table[i] != id) i = (i + 1) & s->table_mask;
  for (uint32_t j = (i + 1) & s->table_mask;; j = (j + 1) & s->table_mask) {
    const int32_t k = s->table[j];
    if (k < 0) break;
    const uint32_t home = (uint32_t)s->hash[k] & s->table_mask;
    /* k may move to the hole at i when its home is not in (i, j]. */
    if (((j - home) & s->table_mask) >= ((j - i) & s->table_mask)) {
      s->table[i] = k;
      i = j;
    }
  }
  s->table[i] = -1;
}

static void lru_remove(ss_sched *s, int32_t id) {
  const int32_t p = s->lru_prev[id], n = s->lru_next[id];
  if (p >= 0) s->lru_next[p] = n;
  else s->lru_head = n;
  if (n >= 0) s->lru_prev[n] = p;
  else s->lru_tail = p;
  s->lru_prev[id] = s->lru_next[id] = -1;
  s->n_lru--;
}

static void lru_push_tail(ss_sched *s, int32_t id) {
  s->lru_prev[id] = s->lru_tail;
  s->lru_next[id] = -1;
  if (s->lru_tail >= 0) s->lru_next[s->lru_tail] = id;
  else s->lru_head = id;
  s->lru_tail = id;
  s->n_lru++;
}

/* ------------------------------------------------------------------------ */
/* Blocks                                                                     */

int ss_sched_init(ss_sched *s, const ss_sched_params *p) {
  memset(s, 0, sizeof *s);
  if (p->max_num_seqs < 1 || p->max_num_seqs > 1 << 16)
    return ss_error(SS_ERR_RANGE, "max_num_seqs = %d is outside 1..65536", p->max_num_seqs);
  if (p->max_batched_tokens < 1 || p->max_batched_tokens > 1 << 20)
    return ss_error(SS_ERR_RANGE, "max_batched_tokens = %d is outside 1..1048576",
                    p->max_batched_tokens);
  if (p->block_size < 1 || p->block_size > 1 << 12)
    return ss_error(SS_ERR_RANGE, "block_size = %d is outside 1..4096", p->block_size);
  if (p->n_blocks < 1 || p->n_blocks > 1 << 28)
    return ss_error(SS_ERR_RANGE, "the KV pool's block count %d is outside 1..2^28", p->n_blocks);
  if (p->microbatches < 0 || p->microbatches > 256)
    return ss_error(SS_ERR_RANGE, "microbatches = %d is outside 1..256", p->microbatches);
  s->p = *p;
  s->lru_head = s->lru_tail = -1;
  const size_t nb = (size_t)p->n_blocks;
  s->free_ids = malloc(nb * sizeof *s->free_ids);
  s->entries = malloc((size_t)p->max_num_seqs * sizeof *s->entries);
  s->copies = malloc((size_t)p->max_num_seqs * sizeof *s->copies);
  s->ref = calloc(nb, sizeof *s->ref);
  bool ok = s->free_ids && s->entries && s->copies && s->ref;
  if (ok && p->prefix_caching) {
    /* The table at most half full: short probe runs. */
    size_t cap = 16;
    while (cap < 2 * nb) cap *= 2;
    s->table_mask = (uint32_t)(cap - 1);
    s->table = malloc(cap * sizeof *s->table);
    s->cached = calloc(nb, sizeof *s->cached);
    s->hash = calloc(nb, sizeof *s->hash);
    s->parent = calloc(nb, sizeof *s->parent);
    s->parent_gen = calloc(nb, sizeof *s->parent_gen);
    s->gen = calloc(nb, sizeof *s->gen);
    s->btok = (nb * (size_t)p->block_size <= SIZE_MAX / sizeof *s->btok)
              ? malloc(nb * (size_t)p->block_size * sizeof *s->btok) : NULL;
    s->lru_prev = malloc(nb * sizeof *s->lru_prev);
    s->lru_next = malloc(nb * sizeof *s->lru_next);
    ok = s->table && s->cached && s->hash && s->parent && s->parent_gen && s->gen &&
         s->btok && s->lru_prev && s->lru_next;
    if (ok) {
      memset(s->table, 0xff, cap * sizeof *s->table);
      memset(s->lru_prev, 0xff, nb * sizeof *s->lru_prev);
      memset(s->lru_next, 0xff, nb * sizeof *s->lru_next);
    }
  }
  if (!ok) {
    ss_sched_free(s);
    return ss_error(SS_ERR_NOMEM, "scheduler: out of memory");
  }
  /* Low ids are handed out first (a stack popped from the end). */
  for (int32_t i = 0; i < p->n_blocks; i++) s->free_ids[i] = p->n_blocks - 1 - i;
  s->n_free = p->n_blocks;
  return SS_OK;
}

void ss_sched_free(ss_sched *s) {
  free(s->free_ids);
  free(s->entries);
  free(s->copies);
  free(s->ref);
  free(s->cached);
  free(s->hash);
  free(s->parent);
  free(s->parent_gen);
  free(s->gen);
  free(s->btok);
  free(s->lru_prev);
  free(s->lru_next);
  free(s->table);
  memset(s, 0, sizeof *s);
}

int32_t ss_sched_blocks_for(const ss_sched *s, int64_t n_tokens) {
  return (int32_t)((n_tokens + s->p.block_size - 1) / s->p.block_size);
}

/* A block's holders, one more or one fewer; the shared count follows the
 * crossings of 1 <-> 2.  Each returns the new count. */
static int32_t ref_inc(ss_sched *s, int32_t id) {
  if (++s->ref[id] == 2) s->n_shared++;
  return s->ref[id];
}

static int32_t ref_dec(ss_sched *s, int32_t id) {
  SS_ASSERT(s->ref[id] > 0);
  if (s->ref[id]-- == 2) s->n_shared--;
  return s->ref[id];
}

/* A free block for new contents: a never-cached one if any, else the cached
 * one released longest ago, which loses its key. */
static int32_t take_block(ss_sched *s) {
  int32_t id;
  if (s->n_free > 0) {
    id = s->free_ids[--s->n_free];
  } else {
    id = s->lru_head;
    lru_remove(s, id);
    table_remove(s, id);
    s->cached[id] = false;
    s->gen[id]++;
  }
  s->ref[id] = 1;
  return id;
}

/* Gives q blocks for positions [0, n_tokens); false (and nothing taken) when
 * too few are free. */
static bool reserve(ss_sched *s, ss_sched_seq *q, int32_t n_tokens) {
  const int32_t need = ss_sched_blocks_for(s, n_tokens);
  if (need <= q->n_blocks) return true;
  if (need - q->n_blocks > s->n_free + s->n_lru) return false;
  while (q->n_blocks < need) q->blocks[q->n_blocks++] = take_block(s);
  return true;
}

/* A running sequence's room to append positions [n_computed, n_tokens): the
 * blocks it lacks, and, when the block its next position goes to is shared
 * (a fork's last partial block), a block of its own for it first.  The copy
 * of the shared block's K/V into the new one goes into the step (b->copies),
 * to run on every rank before the forward pass writes into either.  False
 * (and nothing taken) when too few blocks are free.  Only that one block can
 * be shared: a fork shares its parent's blocks up to its computed positions,
 * and the prefix cache only full blocks of computed positions. */
static bool make_room(ss_sched *s, ss_sched_seq *q, int32_t n_tokens, ss_sched_batch *b) {
  const int32_t j = q->n_computed / s->p.block_size;
  const bool cow = j < q->n_blocks && s->ref[q->blocks[j]] > 1;
  const int32_t need = ss_sched_blocks_for(s, n_tokens);
  const int32_t more = (need > q->n_blocks ? need - q->n_blocks : 0) + (cow ? 1 : 0);
  if (more > s->n_free + s->n_lru) return false;
  if (cow) {
    const int32_t src = q->blocks[j], dst = take_block(s);
    ref_dec(s, src); /* still held by another: never freed here */
    q->blocks[j] = dst;
    SS_ASSERT(b->n_copies < s->p.max_num_seqs);
    b->copies[b->n_copies++] = (ss_sched_copy){.seq = q, .src = src, .dst = dst};
    s->n_cow_copies++;
  }
  for (int32_t i = j + 1; i < q->n_blocks; i++) SS_ASSERT(s->ref[q->blocks[i]] == 1);
  return reserve(s, q, n_tokens);
}

/* Gives q's blocks back, the last first: a cached block that no one else holds
 * joins the released list (so a chain's tail is reused before its head), any
 * other free block the never-cached stack. */
static void release(ss_sched *s, ss_sched_seq *q) {
  while (q->n_blocks > 0) {
    const int32_t id = q->blocks[--q->n_blocks];
    if (ref_dec(s, id) > 0) continue;
    if (s->cached && s->cached[id]) lru_push_tail(s, id);
    else s->free_ids[s->n_free++] = id;
  }
  q->n_reg = 0;
  q->chain_id = -1;
  q->chain_gen = 0;
}

/* Admission of a sequence with nothing computed: takes the longest chain of
 * its full blocks found in the cache, leaving at least its last token to
 * compute.  Returns the tokens found. */
static int32_t take_cached_prefix(ss_sched *s, ss_sched_seq *q) {
  q->chain_id = -1;
  q->chain_gen = 0;
  q->n_reg = 0;
  if (!s->table || !q->tokens || q->compute_all || q->n_computed != 0 || q->n_blocks != 0)
    return 0;
  const int32_t bs = s->p.block_size, max_full = (q->n_tokens - 1) / bs;
  int32_t i = 0;
  while (i < max_full) {
    const int32_t *toks = q->tokens + (size_t)i * bs;
    const int32_t id = table_find(s, key_hash(q->chain_id, q->chain_gen, toks, bs), q->chain_id,
                                  q->chain_gen, toks);
    if (id < 0) break;
    if (ref_inc(s, id) == 1) lru_remove(s, id);
    q->blocks[q->n_blocks++] = id;
    q->chain_id = id;
    q->chain_gen = s->gen[id];
    i++;
  }
  q->n_reg = i;
  q->n_computed = i * bs;
  return i * bs;
}

/* After a step: q's blocks that are now full of computed positions get their
 * keys.  A block whose key is already cached (another sequence computed the
 * same prefix meanwhile) stays uncached; the chain goes on from the cached
 * one, so q's later blocks are still found by others. */
static void register_full_blocks(ss_sched *s, ss_sched_seq *q) {
  if (!s->table || !q->tokens) return;
  const int32_t bs = s->p.block_size, full = q->n_computed / bs;
  while (q->n_reg < full && q->n_reg < q->n_blocks) {
    const int32_t id = q->blocks[q->n_reg];
    const int32_t *toks = q->tokens + (size_t)q->n_reg * bs;
    if (!s->cached[id]) {
      const uint64_t h = key_hash(q->chain_id, q->chain_gen, toks, bs);
      const int32_t other = table_find(s, h, q->chain_id, q->chain_gen, toks);
      if (other < 0) {
        s->cached[id] = true;
        s->hash[id] = h;
        s->parent[id] = q->chain_id;
        s->parent_gen[id] = q->chain_gen;
        memcpy(s->btok + (size_t)id * bs, toks, (size_t)bs * sizeof *toks);
        table_insert(s, id);
        q->chain_id = id;
      } else {
        q->chain_id = other;
      }
    } else {
      q->chain_id = id;
    }
    q->chain_gen = s->gen[q->chain_id];
    q->n_reg++;
  }
}

int ss_sched_add(ss_sched *s, ss_sched_seq *q) {
  const int32_t need = ss_sched_blocks_for(s, q->max_tokens);
  if (need > s->p.n_blocks)
    return ss_error(SS_ERR_RANGE, "%d tokens need %d KV blocks of %d tokens but the pool has "
                    "%d blocks", q->max_tokens, need, s->p.block_size, s->p.n_blocks);
  if (q->n_tokens < 1 || q->n_tokens > q->max_tokens)
    return ss_error(SS_ERR_RANGE, "a sequence needs 1..%d tokens, not %d", q->max_tokens,
                    q->n_tokens);
  if (!q->blocks || q->cap_blocks < need)
    return ss_error(SS_ERR_INVALID, "scheduler: block table of %d entries, %d needed",
                    q->cap_blocks, need);
  q->n_computed = 0;
  q->n_blocks = 0;
  q->n_cached = 0;
  q->n_reg = 0;
  q->chain_id = -1;
  q->chain_gen = 0;
  q->state = SS_SEQ_WAITING;
  q->paused = false; /* n_paused counts only what ss_sched_set_paused set */
  q->in_flight = false;
  list_push_back(&s->waiting, q);
  return SS_OK;
}

void ss_sched_finish(ss_sched *s, ss_sched_seq *q) {
  if (q->state == SS_SEQ_WAITING) list_remove(&s->waiting, q);
  else if (q->state == SS_SEQ_RUNNING) list_remove(&s->running, q);
  if (q->paused && q->state != SS_SEQ_FINISHED) s->n_paused--;
  q->paused = false;
  q->in_flight = false;
  release(s, q);
  q->state = SS_SEQ_FINISHED;
}

void ss_sched_set_paused(ss_sched *s, ss_sched_seq *q, bool paused) {
  if (q->state == SS_SEQ_FINISHED || q->paused == paused) return;
  q->paused = paused;
  s->n_paused += paused ? 1 : -1;
}

/* ------------------------------------------------------------------------ */
/* Building a step                                                            */

static void preempt(ss_sched *s, ss_sched_seq *q, ss_sched_batch *b) {
  SS_ASSERT(!q->in_flight);
  list_remove(&s->running, q);
  release(s, q);
  q->n_computed = 0;
  q->state = SS_SEQ_WAITING;
  q->n_preempted++;
  list_push_front(&s->waiting, q);
  s->n_preemptions++;
  b->n_preempted++;
}

/* The newest paused running sequence, or NULL: the first to give its blocks
 * (or its place) up. */
static ss_sched_seq *paused_victim(const ss_sched *s) {
  if (s->n_paused == 0) return NULL;
  for (ss_sched_seq *q = s->running.tail; q; q = q->prev)
    if (q->paused && !q->in_flight) return q;
  return NULL;
}

/* The newest running sequence that is not in flight, to give its blocks up
 * for q; NULL when that would be q itself while a newer sequence is in flight
 * (one step without q is better than q recomputed for a newer one's sake). */
static ss_sched_seq *running_victim(const ss_sched *s, const ss_sched_seq *q) {
  bool newer_in_flight = false;
  for (ss_sched_seq *v = s->running.tail; v; v = v->prev) {
    if (v->in_flight) {
      newer_in_flight = true;
      continue;
    }
    return v == q && newer_in_flight ? NULL : v;
  }
  return NULL;
}

/* Removes q's entry from the batch if it has one (it was preempted after being
 * given tokens this step). */
static void drop_entry(ss_sched_batch *b, const ss_sched_seq *q) {
  /* Its copy's destination goes back to the pool with its blocks. */
  for (int32_t i = 0; i < b->n_copies; i++)
    if (b->copies[i].seq == q) {
      memmove(&b->copies[i], &b->copies[i + 1], (size_t)(b->n_copies - i - 1) * sizeof *b->copies);
      b->n_copies--;
      break;
    }
  for (int32_t i = 0; i < b->n_entries; i++)
    if (b->entries[i].seq == q) {
      b->n_tokens -= b->entries[i].count;
      b->n_logits -= b->entries[i].logits;
      memmove(&b->entries[i], &b->entries[i + 1],
              (size_t)(b->n_entries - i - 1) * sizeof *b->entries);
      b->n_entries--;
      return;
    }
}

static void add_entry(ss_sched_batch *b, ss_sched_seq *q, int32_t count) {
  ss_sched_entry *e = &b->entries[b->n_entries++];
  e->seq = q;
  e->start = q->n_computed;
  e->count = count;
  e->logits = q->n_computed + count == q->n_tokens;
  b->n_tokens += count;
  b->n_logits += e->logits;
}

/* Schedules running sequences with (decode) or without (prefill) exactly one
 * token left to compute, while the budget lasts. */
static void schedule_running(ss_sched *s, ss_sched_batch *b, bool decode, int32_t *budget,
                             int32_t max_entries) {
  ss_sched_seq *q = s->running.head;
  while (q && *budget > 0 && b->n_entries < max_entries) {
    ss_sched_seq *next = q->next;
    const int32_t need = q->n_tokens - q->n_computed;
    bool in_batch = false;
    for (int32_t i = 0; i < b->n_entries && !in_batch; i++) in_batch = b->entries[i].seq == q;
    if (in_batch || q->paused || q->in_flight || need <= 0 || (need == 1) != decode) {
      q = next;
      continue;
    }
    const int32_t count = need < *budget ? need : *budget;
    /* Make room, preempting paused sequences first, then the newest running
     * ones (possibly q itself). */
    bool ok = make_room(s, q, q->n_computed + count, b);
    while (!ok) {
      ss_sched_seq *victim = paused_victim(s);
      if (!victim) victim = running_victim(s, q);
      if (!victim) break; /* q waits for the steps in flight */
      /* A paused victim has no entry; one from the tail takes the rest of the
       * list (behind it once preempted) with it. */
      if (victim == next) next = victim->next;
      /* Tokens the victim already had in this batch return to the budget. */
      for (int32_t i = 0; i < b->n_entries; i++)
        if (b->entries[i].seq == victim) *budget += b->entries[i].count;
      drop_entry(b, victim);
      preempt(s, victim, b);
      if (victim == q) break;
      ok = make_room(s, q, q->n_computed + count, b);
    }
    if (ok) {
      add_entry(b, q, count);
      *budget -= count;
    }
    q = next;
  }
}

void ss_sched_step(ss_sched *s, ss_sched_batch *b) {
  memset(b, 0, sizeof *b);
  b->entries = s->entries;
  b->copies = s->copies;
  int32_t budget = s->p.max_batched_tokens;
  int32_t max_entries = s->p.max_num_seqs;
  if (s->p.microbatches > 1) {
    const int32_t active = s->running.count + s->waiting.count - s->n_paused;
    const int32_t share = (active + s->p.microbatches - 1) / s->p.microbatches;
    if (share < max_entries) max_entries = share > 0 ? share : 1;
  }
  schedule_running(s, b, true, &budget, max_entries);
  schedule_running(s, b, false, &budget, max_entries);
  /* Admission in arrival order, passing over paused sequences; a paused
   * running one gives up its place or its blocks to a waiting one. */
  ss_sched_seq *q = s->waiting.head;
  while (q && q->paused) q = q->next;
  while (budget > 0 && q && b->n_entries < max_entries) {
    if (s->running.count >= s->p.max_num_seqs) {
      ss_sched_seq *victim = paused_victim(s);
      if (!victim) break;
      preempt(s, victim, b);
      continue;
    }
    const int32_t found = take_cached_prefix(s, q);
    const int32_t need = q->n_tokens - q->n_computed;
    const int32_t count = need < budget ? need : budget;
    if (!reserve(s, q, q->n_computed + count)) {
      /* Waits with nothing held: the blocks found go back (still cached). */
      release(s, q);
      q->n_computed = 0;
      ss_sched_seq *victim = paused_victim(s);
      if (!victim) break;
      preempt(s, victim, b);
      continue;
    }
    ss_sched_seq *after = q->next;
    while (after && after->paused) after = after->next;
    if (s->table && q->tokens) {
      s->n_queried += (uint64_t)q->n_tokens;
      s->n_hit += (uint64_t)found;
      if (!q->scheduled_once) q->n_cached = found;
    }
    list_remove(&s->waiting, q);
    q->state = SS_SEQ_RUNNING;
    list_push_back(&s->running, q);
    add_entry(b, q, count);
    budget -= count;
    q = after;
  }
  for (int32_t i = 0; i < b->n_entries; i++) {
    b->entries[i].seq->scheduled_once = true;
    b->entries[i].seq->in_flight = true;
  }
}

void ss_sched_commit(ss_sched *s, const ss_sched_batch *b) {
  for (int32_t i = 0; i < b->n_entries; i++) {
    ss_sched_seq *q = b->entries[i].seq;
    q->n_computed = b->entries[i].start + b->entries[i].count;
    q->in_flight = false;
    register_full_blocks(s, q);
  }
}

int ss_sched_fork(ss_sched *s, const ss_sched_seq *parent, ss_sched_seq *child) {
  if (parent->state != SS_SEQ_RUNNING || parent->n_computed != parent->n_tokens ||
      parent->in_flight)
    return ss_error(SS_ERR_INVALID, "scheduler: a fork's parent must be running with all its "
                    "tokens computed, in no step in flight");
  if (child->n_tokens != parent->n_tokens || child->n_tokens > child->max_tokens)
    return ss_error(SS_ERR_INVALID, "scheduler: a fork has %d tokens, its parent %d",
                    child->n_tokens, parent->n_tokens);
  const int32_t have = ss_sched_blocks_for(s, parent->n_computed);
  const int32_t need = ss_sched_blocks_for(s, child->max_tokens);
  if (have > parent->n_blocks || !child->blocks || child->cap_blocks < need)
    return ss_error(SS_ERR_INVALID, "scheduler: block table of %d entries, %d needed",
                    child->cap_blocks, need);
  if (s->running.count >= s->p.max_num_seqs)
    return ss_error(SS_ERR_BUSY, "scheduler: %d sequences run already (max_num_seqs)",
                    s->running.count);
  for (int32_t i = 0; i < have; i++) {
    child->blocks[i] = parent->blocks[i];
    ref_inc(s, parent->blocks[i]);
  }
  child->n_blocks = have;
  child->n_computed = parent->n_computed;
  child->n_cached = 0;
  child->n_reg = parent->n_reg < have ? parent->n_reg : have;
  child->chain_id = parent->chain_id;
  child->chain_gen = parent->chain_gen;
  child->scheduled_once = true;
  child->paused = false;
  child->in_flight = false;
  child->state = SS_SEQ_RUNNING;
  list_push_back(&s->running, child);
  s->n_forks++;
  s->n_fork_blocks += (uint64_t)have;
  return SS_OK;
}
