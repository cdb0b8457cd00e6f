/* The engine's measurements: the Prometheus text for /metrics, the per-step
 * CSV log the planner's cost model is checked against, and the per-rank step
 * counters gathered through the executor. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/base/clock.h"
#include "runtime/base/status.h"
#include "runtime/engine/engine_internal.h"
#include "runtime/engine/executor.h"

static const double k_latency_buckets[] = {0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25,
                                           0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0};
static const double k_token_buckets[] = {1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000,
                                         10000, 20000, 50000, 100000};
#define NB(a) ((int)(sizeof a / sizeof *a))

void ss_eng_metrics_init(ss_engine *e) {
  ss_histogram_init(&e->h_ttft, k_latency_buckets, NB(k_latency_buckets));
  ss_histogram_init(&e->h_itl, k_latency_buckets, NB(k_latency_buckets));
  ss_histogram_init(&e->h_e2e, k_latency_buckets, NB(k_latency_buckets));
  ss_histogram_init(&e->h_queue, k_latency_buckets, NB(k_latency_buckets));
  ss_histogram_init(&e->h_prompt, k_token_buckets, NB(k_token_buckets));
  ss_histogram_init(&e->h_gen, k_token_buckets, NB(k_token_buckets));
}

void ss_eng_metrics_finish_locked(ss_engine *e, const ereq *q, const char *reason, double t) {
  if (strcmp(reason, "stop") == 0) e->success_stop++;
  else if (strcmp(reason, "length") == 0) e->success_length++;
  else if (strcmp(reason, "abort") == 0) e->success_abort++;
  else e->success_error++;
  if (strcmp(reason, "error") != 0) {
    ss_histogram_observe(&e->h_e2e, t - q->t_arrival);
    ss_histogram_observe(&e->h_prompt, q->r.n_prompt);
    ss_histogram_observe(&e->h_gen, q->n_generated);
  }
}

void ss_eng_gather_rank_stats(ss_engine *e) {
  ss_step_profile *all = calloc((size_t)e->n_ranks, sizeof *all);
  if (!all) return;
  if (ss_exec_gather_profiles(e->m, all) == SS_OK) {
    pthread_mutex_lock(&e->mu);
    for (int r = 0; r < e->n_ranks; r++)
      e->ranks[r] = (rank_stats){.compute_s = all[r].compute_s, .comm_s = all[r].comm_s,
                                 .steps = all[r].steps};
    pthread_mutex_unlock(&e->mu);
  }
  free(all);
}

/* The step log: one CSV line per step, for calibrating and checking the
 * planner's cost model against what the engine really spends.  Columns:
 *   t_s        step start, seconds since the engine started
 *   n_tokens   tokens in the forward pass; n_logits: rows sampled; n_seqs
 *   attended   sum over the step's tokens of the positions each attends
 *   kv_read    sum over the step's sequences of the K/V positions read (the
 *              context through the sequence's last token in the step)
 *   forward_s  the forward pass (all ranks, collectives included)
 *   step_s     the whole step: batch assembly, forward, sampling, publishing */
void ss_eng_step_log(ss_engine *e, double t0, const ss_sched_batch *b, double attended,
                     double kv_read, double t_fwd0, double t_fwd1) {
  if (!e->o.step_log) return;
  if (e->steps == 1) fprintf(e->o.step_log, SS_ENGINE_STEP_LOG_HEADER "\n");
  fprintf(e->o.step_log, "%.6f,%d,%d,%d,%.0f,%.0f,%.6f,%.6f\n", t0 - e->t_start, b->n_tokens,
          b->n_logits, b->n_entries, attended, kv_read, t_fwd1 - t_fwd0, ss_now_s() - t0);
}

/* ------------------------------------------------------------------------ */
/* Prometheus text                                                            */

void ss_engine_metrics(ss_engine *e, ss_strbuf *b) {
  pthread_mutex_lock(&e->mu);
#define P "shardserve:"
  ss_metric_header(b, P "num_requests_running", "gauge", "Requests in the running batch.");
  ss_metric_value(b, P "num_requests_running", "", e->pub_running);
  ss_metric_header(b, P "num_requests_waiting", "gauge", "Requests waiting to be scheduled.");
  ss_metric_value(b, P "num_requests_waiting", "", e->pub_waiting + e->n_in);
  ss_metric_header(b, P "num_requests_paused", "gauge",
                   "Streamed requests paused because their client stopped reading (counted "
                   "in running or waiting too).");
  ss_metric_value(b, P "num_requests_paused", "", e->pub_paused);
  ss_metric_header(b, P "request_pauses_total", "counter",
                   "Times a streamed request was paused for a client that stopped reading.");
  ss_metric_value(b, P "request_pauses_total", "", (double)e->pauses_total);
  ss_metric_header(b, P "kv_cache_usage_perc", "gauge",
                   "Fraction of KV-cache blocks in use (1 = full).");
  ss_metric_value(b, P "kv_cache_usage_perc", "", (double)e->pub_blocks_used / e->o.n_blocks);
  ss_metric_header(b, P "kv_cache_blocks_used", "gauge", "KV-cache blocks in use.");
  ss_metric_value(b, P "kv_cache_blocks_used", "", e->pub_blocks_used);
  ss_metric_header(b, P "kv_cache_blocks_total", "gauge", "KV-cache blocks in the pool.");
  ss_metric_value(b, P "kv_cache_blocks_total", "", e->o.n_blocks);
  ss_metric_header(b, P "kv_cache_bytes_per_token", "gauge",
                   "Bytes of K and V per token slot on this rank, all layers, in the cache's "
                   "element type (the label).");
  char dtype_label[48];
  snprintf(dtype_label, sizeof dtype_label, "dtype=\"%s\"", ss_kv_dtype_name(e->kv.dtype));
  ss_metric_value(b, P "kv_cache_bytes_per_token", dtype_label,
                  (double)ss_kv_cache_nbytes_per_token(e->kv.n_layer,
                                                       e->kv.n_kv_head * e->kv.head_dim,
                                                       e->kv.dtype));
  ss_metric_header(b, P "prompt_tokens_total", "counter", "Prefill tokens processed.");
  ss_metric_value(b, P "prompt_tokens_total", "", (double)e->prompt_tokens_total);
  ss_metric_header(b, P "generation_tokens_total", "counter", "Tokens generated.");
  ss_metric_value(b, P "generation_tokens_total", "", (double)e->generation_tokens_total);
  ss_metric_header(b, P "request_success_total", "counter", "Requests finished, by reason.");
  ss_metric_value(b, P "request_success_total", "finished_reason=\"stop\"", (double)e->success_stop);
  ss_metric_value(b, P "request_success_total", "finished_reason=\"length\"",
                  (double)e->success_length);
  ss_metric_value(b, P "request_success_total", "finished_reason=\"abort\"",
                  (double)e->success_abort);
  ss_metric_header(b, P "request_failure_total", "counter", "Requests ended by an engine error.");
  ss_metric_value(b, P "request_failure_total", "", (double)e->success_error);
  ss_metric_header(b, P "step_failures_total", "counter",
                   "Forward steps that failed; their requests were run alone and only those "
                   "that failed again ended with an error.");
  ss_metric_value(b, P "step_failures_total", "", (double)e->step_failures_total);
  ss_metric_header(b, P "num_preemptions_total", "counter",
                   "Sequences preempted (KV blocks ran out) and later recomputed.");
  ss_metric_value(b, P "num_preemptions_total", "", (double)e->preemptions_total);
  ss_metric_header(b, P "prefix_cache_queries_total", "counter",
                   "Prompt tokens looked up in the prefix cache at admission.");
  ss_metric_value(b, P "prefix_cache_queries_total", "", (double)e->prefix_queried_total);
  ss_metric_header(b, P "prefix_cache_hits_total", "counter",
                   "Of those, tokens whose K/V was found in the prefix cache.");
  ss_metric_value(b, P "prefix_cache_hits_total", "", (double)e->prefix_hit_total);
  ss_metric_header(b, P "prefix_cache_blocks_free_cached", "gauge",
                   "Free KV blocks that still hold cached prefix contents.");
  ss_metric_value(b, P "prefix_cache_blocks_free_cached", "", (double)e->pub_blocks_cached);
  ss_metric_header(b, P "kv_blocks_shared", "gauge",
                   "KV blocks held by more than one sequence (forked choices, cached prefixes).");
  ss_metric_value(b, P "kv_blocks_shared", "", (double)e->pub_blocks_shared);
  ss_metric_header(b, P "forked_sequences_total", "counter",
                   "Sequences started as forks of another's computed prompt (n > 1, best_of).");
  ss_metric_value(b, P "forked_sequences_total", "", (double)e->forks_total);
  ss_metric_header(b, P "forked_blocks_shared_total", "counter",
                   "KV blocks forks took from their parent by reference, the partial last one "
                   "included.");
  ss_metric_value(b, P "forked_blocks_shared_total", "", (double)e->fork_blocks_total);
  ss_metric_header(b, P "kv_cow_copies_total", "counter",
                   "Shared KV blocks copied before a sequence appended into one (copy-on-write).");
  ss_metric_value(b, P "kv_cow_copies_total", "", (double)e->cow_copies_total);
  ss_metric_histogram(b, P "time_to_first_token_seconds", "Arrival to first token.", &e->h_ttft);
  ss_metric_histogram(b, P "inter_token_latency_seconds", "Time between consecutive tokens.",
                      &e->h_itl);
  ss_metric_histogram(b, P "e2e_request_latency_seconds", "Arrival to the last token.",
                      &e->h_e2e);
  ss_metric_histogram(b, P "request_queue_time_seconds", "Arrival to first scheduled.",
                      &e->h_queue);
  ss_metric_histogram(b, P "request_prompt_tokens", "Prompt tokens per request.", &e->h_prompt);
  ss_metric_histogram(b, P "request_generation_tokens", "Generated tokens per request.",
                      &e->h_gen);
  ss_metric_header(b, P "rank_step_compute_seconds_total", "counter",
                   "Per rank: time in forward passes outside collectives.");
  char lab[32];
  for (int r = 0; r < e->n_ranks; r++) {
    snprintf(lab, sizeof lab, "rank=\"%d\"", r);
    ss_metric_value(b, P "rank_step_compute_seconds_total", lab, e->ranks[r].compute_s);
  }
  ss_metric_header(b, P "rank_step_comm_seconds_total", "counter",
                   "Per rank: time in collectives during forward passes.");
  for (int r = 0; r < e->n_ranks; r++) {
    snprintf(lab, sizeof lab, "rank=\"%d\"", r);
    ss_metric_value(b, P "rank_step_comm_seconds_total", lab, e->ranks[r].comm_s);
  }
  ss_metric_header(b, P "rank_steps_total", "counter", "Per rank: forward passes run.");
  for (int r = 0; r < e->n_ranks; r++) {
    snprintf(lab, sizeof lab, "rank=\"%d\"", r);
    ss_metric_value(b, P "rank_steps_total", lab, (double)e->ranks[r].steps);
  }
#undef P
  pthread_mutex_unlock(&e->mu);
}
