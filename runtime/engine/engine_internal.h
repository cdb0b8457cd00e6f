/* The engine's private state, shared by its files: engine.c (life cycle,
 * submissions, the step loop), engine_step.c (issuing and ending a step),
 * engine_output.c (sampling a sequence, its text,
 * events, finishing) and engine_metrics.c (Prometheus text, step log, ranks). */
#ifndef SS_ENGINE_INTERNAL_H
#define SS_ENGINE_INTERNAL_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "runtime/base/metrics.h"
#include "runtime/engine/engine.h"
#include "runtime/engine/sampler.h"
#include "runtime/engine/scheduler.h"
#include "runtime/tokenizer/tokenizer.h"

/* ------------------------------------------------------------------------ */
/* State                                                                      */

/* One request inside the engine.  Nothing here is vocabulary-sized: the
 * sampler keeps only its parameters and RNG stream (the work buffers are the
 * engine's), so a queued request costs its tokens and block table. */
typedef struct ereq {
  ss_sched_seq seq;      /* scheduler view; seq.user points back here */
  ss_engine_req r;
  int64_t id;
  int32_t *tokens;       /* prompt + generated, seq.max_tokens long */
  ss_sampler smp;
  ss_detok dt;
  ss_strbuf text;        /* generated text so far */
  size_t emitted;        /* bytes of text already sent */
  int32_t n_generated;
  /* prompt_logprobs: [n_prompt - 1] and [(n_prompt - 1) * n_top], made at the
   * first step that computes prompt rows, handed to the first TOKEN event */
  float *plp;
  int32_t *ptop_ids;
  float *ptop_lp;
  /* ss_now_s(), 0 until it happens; t_first is the first token, or the end of
   * the prefill when nothing is to be generated */
  double t_arrival, t_scheduled, t_first, t_last;
  struct ereq *next;     /* in the incoming queue */
  /* Forks (r.fork_of): a request waiting to fork holds no scheduler list
   * (seq.state FINISHED) and hangs on its parent's `forks` list, linked by
   * fork_next; fork_parent points back.  Once forked, fork_next links the
   * step's forks of one parent until they have sampled their first token. */
  int64_t fork_of;       /* the first request of its group (ss_engine_submit_group), or 0 */
  struct ereq *forks, *fork_next, *fork_parent;
} ereq;

typedef struct rank_stats {
  double compute_s, comm_s;
  uint64_t steps;
} rank_stats;

/* A step issued and not yet finished (under pipeline parallelism several are
 * in flight; otherwise each finishes as soon as it is issued): what its end
 * needs once its logits are back. */
typedef struct eng_flight {
  ss_sched_batch b;          /* b.entries: this flight's own copy, max_num_seqs long */
  int32_t nt, nl, npl;       /* tokens, sampling rows, prompt rows */
  /* its prompt rows: the request and the position of each, max_batched_tokens long */
  struct ereq **pl_q;
  int32_t *pl_pos;
  /* b.copies: this flight's own copy of its copy-on-write copies, max_num_seqs
   * long, and the same as the step message's two arrays */
  int32_t *cp_src, *cp_dst;
  /* per entry: the requests forked from it when the step ended, until they
   * have sampled their first token (max_num_seqs long) */
  struct ereq **forks;
  uint64_t prompt_tokens;
  double attended, kv_read;
  double t_step, t_sched, t_fwd0; /* ss_now_s(): scheduling began, ended, the pass began */
  uint64_t no;               /* issued steps so far, this one included */
  int rc;                    /* how its issue failed (not SS_ERR_COMM), or SS_OK */
  char why[512];
} eng_flight;

/* Events made during a step, published together. */
typedef struct ev_list {
  ss_engine_event *head, *tail;
} ev_list;

struct ss_engine {
  ss_model *m;
  ss_backend *be;
  ss_engine_opts o;
  int32_t n_ctx;
  ss_kv_cache kv;         /* K/V storage; the scheduler hands out its block ids */
  ss_sched sched;
  ss_forward_state st;
  ss_sampler_scratch scratch; /* the engine thread's sampling buffers, (V) each */
  int32_t *eog;           /* [n_eog]: the tokens that end generation, masked before min_tokens */
  int32_t n_eog;
  float *logits;          /* (cap_logits, V) */
  int32_t cap_logits;     /* max_num_seqs, grown when prompt rows are asked for */
  /* the steps in flight, a ring of `microbatches` oldest first from fl_head;
   * a step's prompt rows come after its sampling rows */
  eng_flight *fl;
  int32_t microbatches, fl_head, n_fl;
  uint64_t n_issued;
  bool stats_due;         /* the per-rank counters are to be gathered once none is in flight */
  struct ss_grammar_vocab *gvocab; /* the vocabulary trie, made for the first constrained
                                  request (engine thread) */
  float *masked;          /* (V): a constrained row's logits, disallowed tokens -inf */
  int32_t *b_tokens, *b_pos, *b_rows;
  const int32_t **b_tab;
  uint64_t steps;
  /* the periodic stats line (engine thread): when it was last printed and the
   * counters then */
  double stats_t;
  uint64_t stats_steps, stats_prompt, stats_gen;
  bool stats_dirty;       /* steps ran since the per-rank counters were gathered */
  /* per-step scratch, max_num_seqs long */
  struct ereq **done_q;
  const char **done_r;
  double *itls, *ttfts;
  /* per-entry scratch for a failed step, max_num_seqs long: whether the entry
   * failed when run alone and why, its first token in the step's batch, and
   * the entries that did run (committed) */
  bool *ent_failed;
  char (*ent_why)[256];
  int32_t *ent_tok;
  ss_sched_entry *ent_ok;

  pthread_mutex_t mu;     /* guards everything below */
  pthread_cond_t cv;
  ereq *in_head, *in_tail;
  int32_t n_in;
  int64_t *aborts;
  int32_t n_aborts, cap_aborts;
  struct pause_op { int64_t id; bool paused; } *pauses;
  int32_t n_pauses, cap_pauses;
  ss_engine_event *ev_head, *ev_tail;
  int64_t next_id;
  ss_engine_state state;
  bool stopping;
  double drain_deadline;
  ss_engine_notify_fn notify;
  void *notify_user;

  /* metrics (published under mu after each step) */
  int32_t pub_running, pub_waiting, pub_blocks_used, pub_paused;
  uint64_t pauses_total;  /* requests paused (each pause counted) */
  uint64_t prompt_tokens_total, generation_tokens_total, preemptions_total;
  uint64_t prefix_queried_total, prefix_hit_total;
  int32_t pub_blocks_cached, pub_blocks_shared;
  uint64_t forks_total, fork_blocks_total, cow_copies_total;
  uint64_t success_stop, success_length, success_abort, success_error;
  uint64_t step_failures_total; /* steps that failed and were isolated */
  ss_histogram h_ttft, h_itl, h_e2e, h_queue, h_prompt, h_gen;
  rank_stats *ranks;
  int n_ranks;
  double t_start;
};

/* ------------------------------------------------------------------------ */
/* engine_output.c: a sequence's tokens, text and events                      */

void ss_eng_req_free(ereq *q);
void ss_eng_ev_push(ev_list *l, ss_engine_event *ev);
/* q's DONE event (NULL when out of memory). */
ss_engine_event *ss_eng_done_event(const ereq *q, const char *reason, const char *error);
/* Samples q's next token from its logits row, detokenizes it, scans the stop
 * strings and appends a TOKEN event.  Returns the finish reason or NULL; *itl
 * is the time since q's previous token (< 0 for its first).  Engine thread,
 * outside the lock: it uses the engine's sampling scratch. */
const char *ss_eng_sample_seq(ss_engine *e, ereq *q, const float *logits, ev_list *out, double t,
                              double *itl);
/* engine_grammar.c: the output constraint of a request.  The logits to sample
 * from: `logits` itself without a constraint, else a copy with every token the
 * grammar disallows at -inf; NULL when it allows none. */
const float *ss_eng_grammar_mask(ss_engine *e, ereq *q, const float *logits);
/* Advances q's constraint over its sampled token; true when the grammar is
 * complete and allows nothing more (the request ends with "stop"). */
bool ss_eng_grammar_accept(ss_engine *e, ereq *q, int32_t tok);
/* Ends a request (lock held): removes it from the scheduler (its blocks go back
 * to the pool), counts it, queues its DONE event and frees it. */
void ss_eng_finish_locked(ss_engine *e, ereq *q, const char *reason, const char *error,
                          ev_list *out);
/* Fails every request, queued ones too, after a fatal error (lock held). */
void ss_eng_fail_all_locked(ss_engine *e, const char *msg, ev_list *out);
/* A request's pending forks, as requests of their own (lock held): queued in
 * the scheduler (or ended with an error when that fails). */
void ss_eng_release_forks_locked(ss_engine *e, ereq *q, ev_list *out);

/* ------------------------------------------------------------------------ */
/* engine.c and engine_step.c: the step loop                                  */

/* Queues evs for the submitters and refreshes the gauges (lock held). */
void ss_eng_publish_locked(ss_engine *e, ev_list *evs);
/* Schedules and issues one step into the next free flight slot (engine
 * thread, lock not held): 1 when a step was issued, 0 when the scheduler had
 * nothing to run, or the failure that ended the engine (every request failed,
 * state FAILED). */
int ss_eng_issue_step(ss_engine *e);
/* Ends the oldest step in flight: SS_OK, or the failure that ended the engine. */
int ss_eng_finish_step(ss_engine *e);

/* ------------------------------------------------------------------------ */
/* engine_metrics.c                                                           */

void ss_eng_metrics_init(ss_engine *e);
/* A finished request's counters and histograms (lock held). */
void ss_eng_metrics_finish_locked(ss_engine *e, const ereq *q, const char *reason, double t);
/* Refreshes the per-rank counters through the executor (engine thread, between
 * steps; takes the lock to store them). */
void ss_eng_gather_rank_stats(ss_engine *e);
/* One step-log line when the engine has a step log. */
void ss_eng_step_log(ss_engine *e, double t0, const ss_sched_batch *b, double attended,
                     double kv_read, double t_fwd0, double t_fwd1);

#endif
