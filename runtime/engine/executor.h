/* The executor: one engine step run on every rank (runtime/engine/executor.c).
 * Rank 0 (or a single rank) calls ss_exec_step; under tensor parallelism ranks
 * 1..tp-1 run ss_exec_worker_loop until rank 0 calls ss_exec_stop_workers. */
#ifndef SS_EXECUTOR_H
#define SS_EXECUTOR_H

#include "runtime/model/model.h"

/* On rank 0 (or alone): broadcasts the batch to the other ranks when tp > 1,
 * then runs this rank's forward pass; the logits (float[n_logits][V], whole
 * vocabulary) come back on rank 0.  SS_ERR_COMM: the ranks can no longer run
 * steps together (a rank lost, or rank 0 failed a step the workers run);
 * any other failure leaves every rank ready for the next step. */
int ss_exec_step(const ss_model *m, ss_forward_state *st, ss_kv_cache *kv, const ss_batch *b,
                 float *logits);

/* ss_exec_step in two halves, so that under pipeline parallelism rank 0 can
 * issue further steps while the later stages still run this one: begin sends
 * the step and runs stage 0's share (without --pp: the whole step, logits
 * included); end receives its logits from the last stage.  Steps end in the
 * order they began; the failures are those of ss_exec_step. */
int ss_exec_step_begin(const ss_model *m, ss_forward_state *st, ss_kv_cache *kv,
                       const ss_batch *b, float *logits);
int ss_exec_step_end(const ss_model *m, int64_t n_logits, float *logits);

/* Ranks 1..tp-1: receive each step from rank 0 and run this rank's shard of it,
 * until rank 0 calls ss_exec_stop_workers (returns SS_OK) or a collective
 * fails.  The KV cache and activations follow rank 0's step geometry. */
int ss_exec_worker_loop(const ss_model *m, ss_backend *be);

/* Rank 0: tells the workers to return from their loop.  Harmless at tp 1. */
int ss_exec_stop_workers(const ss_model *m);

/* Rank 0, between steps: every rank's counters (all[r], r < tp), gathered
 * through a step message the workers answer.  At tp 1, all[0] is this rank's. */
int ss_exec_gather_profiles(const ss_model *m, ss_step_profile *all);

#endif
