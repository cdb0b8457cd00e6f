/* The continuous-batching scheduler: given the waiting and running sequences
 * and the KV block pool, it picks the next step's batch.
 *
 * It is pure logic: no kernels, no clocks, no threads, no I/O.  The engine
 * drives it with real forward passes; the capacity planner drives the very same
 * code in simulated time with a cost model in place of the forward pass.
 *
 * Policy (iteration-level scheduling, as vLLM's with chunked prefill):
 *   1. running sequences that decode (one token to compute) go first, oldest
 *      first, one token each;
 *   2. then running sequences still in prefill get chunks of what is left of the
 *      step's token budget;
 *   3. then waiting sequences are admitted in arrival order (preempted ones
 *      first) while the budget, max_num_seqs and free blocks allow.
 * When a running sequence needs a block and none is free, the most recently
 * arrived running sequence is preempted: its blocks go back to the pool and it
 * returns to the front of the waiting queue, to be recomputed (prompt and the
 * tokens generated so far) when it is admitted again.  The oldest sequence thus
 * always progresses, and a sequence that fits the pool alone always finishes.
 *
 * Paused sequences (ss_sched_set_paused: the server pauses a stream whose
 * client stops reading) are never scheduled: a running one keeps its blocks
 * and its place, a waiting one is passed over.  They are the first victims:
 * when a running sequence needs a block, or a waiting one cannot be admitted
 * for blocks or for max_num_seqs, the newest paused running sequence is
 * preempted before any other, and recomputes once resumed like any preempted
 * one.  A pool held only by paused sequences thus never stops the others.
 *
 * Prefix caching (params.prefix_caching, for sequences that give their tokens):
 * a block whose every position has its K/V computed is registered under its
 * key, (the block before it in the sequence, that block's generation, the
 * block's tokens), compared exactly, so no hash collision can hand out wrong
 * K/V.  Blocks are reference counted; a block no sequence uses keeps its
 * contents and key, and is reused least recently released first only when no
 * never-cached block is free.  A sequence admitted with nothing computed (new,
 * or preempted) first takes the longest chain of its full blocks found in the
 * cache, always leaving at least its last token to compute (its logits are
 * needed).  A block's generation grows each time it is given up for other
 * contents, so a key naming a reused block matches nothing.
 *
 * Forks (ss_sched_fork: the choices of an n > 1 or best_of request): a
 * sequence whose every token is computed hands a new sequence with the same
 * tokens references to all its blocks, the last partial one included, so the
 * prompt is computed once.  Before any holder appends into a shared block it
 * gets a block of its own: the step lists the copy (source, destination) for
 * every rank to run before its forward pass (copy-on-write).  The holders are
 * otherwise independent sequences: each is preempted (recomputed) or finished
 * on its own, in any order, and a block goes back to the pool with its last
 * holder.  Reference counts are kept with or without prefix caching.
 *
 * Steps in flight (params.microbatches > 1, pipeline parallelism): the owner
 * may build the next step before committing the last.  A sequence is then in
 * flight from the step that holds it until that step's commit; it is never
 * scheduled again, preempted nor chosen as a victim meanwhile (a preemption
 * that would have to take an in-flight sequence's blocks waits instead: the
 * sequence that needs them is left out of this step).  Each step takes at most
 * ceil(active / microbatches) sequences, active being those not paused, so
 * the running sequences settle into that many groups that take turns.  A
 * copy-on-write copy and a fork only touch sequences that are not in flight:
 * a copy is made for a sequence the step being built takes (before it
 * appends), a fork from a parent whose step has been committed, so on every
 * rank (each runs the steps in the order they were built) a copy's source is
 * read after every step before it has written it and before any later one
 * writes into it. */
#ifndef SS_SCHEDULER_H
#define SS_SCHEDULER_H

#include <stdbool.h>
#include <stdint.h>

typedef enum ss_seq_state {
  SS_SEQ_WAITING = 0,
  SS_SEQ_RUNNING,
  SS_SEQ_FINISHED,
} ss_seq_state;

typedef struct ss_sched_seq ss_sched_seq;
struct ss_sched_seq {
  int64_t id;
  int32_t n_tokens;    /* tokens known: prompt + generated so far */
  int32_t n_computed;  /* of them, with K/V in the cache */
  int32_t max_tokens;  /* n_tokens can grow to this (prompt + max new tokens) */
  int32_t *blocks;     /* block table: block ids for positions [0, 16), [16, 32), ... */
  int32_t n_blocks;
  int32_t cap_blocks;
  ss_seq_state state;
  int32_t n_preempted;
  bool scheduled_once; /* has been in a batch (its queue time is over) */
  bool paused;         /* not scheduled; set only with ss_sched_set_paused */
  bool in_flight;      /* in a step built and not yet committed */
  const int32_t *tokens; /* the owner's tokens (prompt + generated), or NULL: never
                            cached nor looked up (the planner's sequences) */
  bool compute_all;    /* never takes cached blocks (every prompt row's logits are
                          wanted); its own blocks are still registered */
  int32_t n_cached;    /* prompt tokens found in the cache at its first admission */
  int32_t n_reg;       /* leading blocks already registered or found */
  int32_t chain_id;    /* the block its next block's key names, -1 at the start */
  uint32_t chain_gen;
  void *user;          /* the owner's request */
  ss_sched_seq *prev, *next; /* in the waiting or running list */
};

typedef struct ss_sched_params {
  int32_t max_num_seqs;       /* sequences running at once */
  int32_t max_batched_tokens; /* tokens per step */
  int32_t block_size;         /* token slots per KV block */
  int32_t n_blocks;           /* blocks in the pool */
  bool prefix_caching;        /* reuse the K/V of computed full blocks */
  int32_t microbatches;       /* steps in flight at once (0 or 1: each step is committed
                                 before the next is built) */
} ss_sched_params;

typedef struct ss_seq_list {
  ss_sched_seq *head, *tail;
  int32_t count;
} ss_seq_list;

/* One sequence's share of a step: tokens [start, start + count) of it. */
typedef struct ss_sched_entry {
  ss_sched_seq *seq;
  int32_t start;
  int32_t count;
  bool logits;  /* the chunk ends at the last known token: sample after it */
} ss_sched_entry;

/* Positions the entry's tokens attend, summed: the token at position p attends
 * positions 0..p (the attention term of the planner's step cost). */
static inline double ss_sched_entry_attended(const ss_sched_entry *e) {
  return (double)e->count * e->start + (double)e->count * (e->count + 1) / 2;
}

/* K/V positions the entry's sequence reads in the step: its context through
 * the entry's last token, read once however many of its tokens the step holds. */
static inline double ss_sched_entry_kv_read(const ss_sched_entry *e) {
  return (double)e->start + e->count;
}

/* A copy-on-write copy of the step: block src's K/V into block dst, before
 * the forward pass; made for seq (at most one per sequence and step). */
typedef struct ss_sched_copy {
  ss_sched_seq *seq;
  int32_t src, dst;
} ss_sched_copy;

typedef struct ss_sched_batch {
  ss_sched_entry *entries;  /* [n_entries], capacity max_num_seqs */
  ss_sched_copy *copies;    /* [n_copies], capacity max_num_seqs: to run before the step */
  int32_t n_copies;
  int32_t n_entries;
  int32_t n_tokens;
  int32_t n_logits;
  int32_t n_preempted;      /* preemptions made while building this batch */
} ss_sched_batch;

/* The step's attention work: query-key pairs and K/V positions read, summed
 * over its entries (the planner's step shape; the engine's step log). */
static inline void ss_sched_batch_attention(const ss_sched_batch *b, double *attended,
                                            double *kv_read) {
  *attended = *kv_read = 0;
  for (int32_t i = 0; i < b->n_entries; i++) {
    *attended += ss_sched_entry_attended(&b->entries[i]);
    *kv_read += ss_sched_entry_kv_read(&b->entries[i]);
  }
}

typedef struct ss_sched {
  ss_sched_params p;
  ss_seq_list waiting, running;
  int32_t *free_ids;   /* stack of free never-cached block ids: with the cached
                          free blocks below, the KV pool's one allocator */
  int32_t n_free;
  uint64_t n_preemptions;
  int32_t n_paused;    /* sequences in either list that are paused */
  ss_sched_entry *entries;
  ss_sched_copy *copies;
  int32_t *ref;        /* per block: sequences holding it */
  int32_t n_shared;    /* blocks held by more than one sequence */
  uint64_t n_forks, n_fork_blocks; /* forks made, and the blocks they shared */
  uint64_t n_cow_copies; /* blocks copied before an append (copy-on-write) */
  /* Prefix cache, per block (allocated only with prefix_caching). */
  bool *cached;        /* registered under its key (in the table) */
  uint64_t *hash;      /* its key's hash, when cached */
  int32_t *parent;     /* key: the block before it, -1 for a first block */
  uint32_t *parent_gen;
  uint32_t *gen;       /* grows each time the block is given up for new contents */
  int32_t *btok;       /* (n_blocks, block_size) key tokens */
  int32_t *lru_prev, *lru_next; /* free cached blocks, least recently released first */
  int32_t lru_head, lru_tail, n_lru;
  int32_t *table;      /* open addressing over hash: block ids, -1 empty */
  uint32_t table_mask;
  uint64_t n_queried, n_hit; /* prompt tokens looked up, and found */
} ss_sched;

/* Checks the parameters (a message names the one at fault) and sets up the pool. */
int ss_sched_init(ss_sched *s, const ss_sched_params *p);
void ss_sched_free(ss_sched *s);

/* Blocks a sequence of n tokens needs. */
int32_t ss_sched_blocks_for(const ss_sched *s, int64_t n_tokens);

/* Queues a new sequence (n_tokens = its prompt, n_computed = 0) at the back of
 * the waiting queue.  Fails with SS_ERR_RANGE when max_tokens could never fit
 * the pool alone. */
int ss_sched_add(ss_sched *s, ss_sched_seq *q);

/* Builds the next step's batch (empty when there is nothing to do) and marks
 * its sequences in flight.  The batch's entries point into scheduler memory
 * valid until the next call. */
void ss_sched_step(ss_sched *s, ss_sched_batch *b);

/* After the step ran: every entry's tokens are now in the cache and its
 * sequence is no longer in flight.  The owner then appends the sampled token
 * of each logits entry (q->n_tokens++). */
void ss_sched_commit(ss_sched *s, const ss_sched_batch *b);

/* Pauses or resumes a waiting or running sequence (see the policy above). */
void ss_sched_set_paused(ss_sched *s, ss_sched_seq *q, bool paused);

/* Whether any sequence can be scheduled (one that is not paused is waiting or
 * running); false means the next step's batch is empty. */
static inline bool ss_sched_has_work(const ss_sched *s) {
  return s->running.count + s->waiting.count > s->n_paused;
}

/* Starts child as a fork of parent: parent is running with all its tokens
 * computed (its last one's logits just made) and in no step in flight (its
 * step committed); child has the same tokens
 * (n_tokens equal; the owner copied them) and a block table for its own
 * max_tokens.  Child runs from here, sharing every block of parent (see the
 * policy above); its first token is sampled by the owner from parent's logits.
 * SS_ERR_BUSY when max_num_seqs sequences run already (the owner then adds it
 * as a new sequence); SS_ERR_INVALID for a call that breaks the above. */
int ss_sched_fork(ss_sched *s, const ss_sched_seq *parent, ss_sched_seq *child);

/* Removes a sequence (finished, aborted, or failed) from whichever list holds
 * it and returns its blocks to the pool. */
void ss_sched_finish(ss_sched *s, ss_sched_seq *q);

/* Blocks in use by sequences, 0..n_blocks (free cached blocks are not). */
static inline int32_t ss_sched_blocks_used(const ss_sched *s) {
  return s->p.n_blocks - s->n_free - s->n_lru;
}
/* Blocks held by more than one sequence (forks, shared cached prefixes). */
static inline int32_t ss_sched_blocks_shared(const ss_sched *s) { return s->n_shared; }
/* Free blocks that still hold cached contents. */
static inline int32_t ss_sched_blocks_cached_free(const ss_sched *s) { return s->n_lru; }

#endif
