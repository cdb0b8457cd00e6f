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
  s->p = *p;
  s->free_ids = malloc((size_t)p->n_blocks * sizeof *s->free_ids);
  s->entries = malloc((size_t)p->max_num_seqs * sizeof *s->entries);
  if (!s->free_ids || !s->entries) {
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
  memset(s, 0, sizeof *s);
}

int32_t ss_sched_blocks_for(const ss_sched *s, int64_t n_tokens) {
  return (int32_t)((n_tokens + s->p.block_size - 1) / s->p.block_size);
}

/* Gives q blocks for positions [0, n_tokens); false (and nothing taken) when
 * too few are free. */
static bool reserve(ss_sched *s, ss_sched_seq *q, int32_t n_tokens) {
  const int32_t need = ss_sched_blocks_for(s, n_tokens);
  if (need <= q->n_blocks) return true;
  if (need - q->n_blocks > s->n_free) return false;
  while (q->n_blocks < need) q->blocks[q->n_blocks++] = s->free_ids[--s->n_free];
  return true;
}

static void release(ss_sched *s, ss_sched_seq *q) {
  while (q->n_blocks > 0) s->free_ids[s->n_free++] = q->blocks[--q->n_blocks];
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
  q->state = SS_SEQ_WAITING;
  list_push_back(&s->waiting, q);
  return SS_OK;
}

void ss_sched_finish(ss_sched *s, ss_sched_seq *q) {
  if (q->state == SS_SEQ_WAITING) list_remove(&s->waiting, q);
  else if (q->state == SS_SEQ_RUNNING) list_remove(&s->running, q);
  release(s, q);
  q->state = SS_SEQ_FINISHED;
}

/* ------------------------------------------------------------------------ */
/* Building a step                                                            */

static void preempt(ss_sched *s, ss_sched_seq *q, ss_sched_batch *b) {
  list_remove(&s->running, q);
  release(s, q);
  q->n_computed = 0;
  q->state = SS_SEQ_WAITING;
  q->n_preempted++;
  list_push_front(&s->waiting, q);
  s->n_preemptions++;
  b->n_preempted++;
}

/* Removes q's entry from the batch if it has one (it was preempted after being
 * given tokens this step). */
static void drop_entry(ss_sched_batch *b, const ss_sched_seq *q) {
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
static void schedule_running(ss_sched *s, ss_sched_batch *b, bool decode, int32_t *budget) {
  ss_sched_seq *q = s->running.head;
  while (q && *budget > 0) {
    ss_sched_seq *next = q->next;
    const int32_t need = q->n_tokens - q->n_computed;
    bool in_batch = false;
    for (int32_t i = 0; i < b->n_entries && !in_batch; i++) in_batch = b->entries[i].seq == q;
    if (in_batch || need <= 0 || (need == 1) != decode) {
      q = next;
      continue;
    }
    const int32_t count = need < *budget ? need : *budget;
    /* Make room, preempting the newest running sequences (possibly q itself). */
    bool ok = reserve(s, q, q->n_computed + count);
    while (!ok) {
      ss_sched_seq *victim = s->running.tail;
      if (victim == next) next = NULL; /* the rest of the list moved behind it */
      /* Tokens the victim already had in this batch return to the budget. */
      for (int32_t i = 0; i < b->n_entries; i++)
        if (b->entries[i].seq == victim) *budget += b->entries[i].count;
      drop_entry(b, victim);
      preempt(s, victim, b);
      if (victim == q) break;
      ok = reserve(s, q, q->n_computed + count);
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
  int32_t budget = s->p.max_batched_tokens;
  schedule_running(s, b, true, &budget);
  schedule_running(s, b, false, &budget);
  while (budget > 0 && s->waiting.head && s->running.count < s->p.max_num_seqs &&
         b->n_entries < s->p.max_num_seqs) {
    ss_sched_seq *q = s->waiting.head;
    const int32_t need = q->n_tokens - q->n_computed;
    const int32_t count = need < budget ? need : budget;
    if (!reserve(s, q, q->n_computed + count)) break;
    list_remove(&s->waiting, q);
    q->state = SS_SEQ_RUNNING;
    list_push_back(&s->running, q);
    add_entry(b, q, count);
    budget -= count;
  }
  for (int32_t i = 0; i < b->n_entries; i++) b->entries[i].seq->scheduled_once = true;
}

void ss_sched_commit(ss_sched *s, const ss_sched_batch *b) {
  (void)s;
  for (int32_t i = 0; i < b->n_entries; i++) {
    ss_sched_seq *q = b->entries[i].seq;
    q->n_computed = b->entries[i].start + b->entries[i].count;
  }
}
