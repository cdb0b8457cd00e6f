#include "runtime/engine/executor.h"
#include "runtime/engine/engine.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "comm/comm.h"
#include "runtime/base/clock.h"
#include "runtime/engine/generate.h"
#include "runtime/engine/scheduler.h"
#include "runtime/base/status.h"
#include "runtime/tokenizer/tokenizer.h"

/* ------------------------------------------------------------------------ */
/* State                                                                      */

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
  double t_arrival, t_first, t_last;
  struct ereq *next;     /* in the incoming queue */
} ereq;

typedef struct rank_stats {
  double compute_s, comm_s;
  uint64_t steps;
} rank_stats;

struct ss_engine {
  ss_model *m;
  ss_backend *be;
  ss_engine_opts o;
  int32_t n_ctx;
  ss_kv_cache kv;
  ss_sched sched;
  ss_forward_state st;
  float *logits;          /* (max_num_seqs, V) */
  int32_t *b_tokens, *b_pos, *b_rows;
  const int32_t **b_tab;
  uint64_t steps;
  bool stats_dirty;       /* steps ran since the per-rank counters were gathered */
  /* per-step scratch, max_num_seqs long */
  struct ereq **done_q;
  const char **done_r;
  double *itls, *ttfts;

  pthread_mutex_t mu;     /* guards everything below */
  pthread_cond_t cv;
  ereq *in_head, *in_tail;
  int32_t n_in;
  int64_t *aborts;
  int32_t n_aborts, cap_aborts;
  ss_engine_event *ev_head, *ev_tail;
  int64_t next_id;
  ss_engine_state state;
  bool stopping;
  double drain_deadline;
  ss_engine_notify_fn notify;
  void *notify_user;

  /* metrics (published under mu after each step) */
  int32_t pub_running, pub_waiting, pub_blocks_used;
  uint64_t prompt_tokens_total, generation_tokens_total, preemptions_total;
  uint64_t success_stop, success_length, success_abort, success_error;
  ss_histogram h_ttft, h_itl, h_e2e, h_queue, h_prompt, h_gen;
  rank_stats *ranks;
  int n_ranks;
  double t_start;
};

static void req_free(ereq *q) {
  if (!q) return;
  free(q->r.prompt);
  for (int i = 0; i < q->r.n_stop; i++) free(q->r.stop[i]);
  free(q->tokens);
  free(q->seq.blocks);
  ss_sampler_free(&q->smp);
  ss_strbuf_free(&q->text);
  free(q);
}

void ss_engine_event_free(ss_engine_event *ev) {
  if (!ev) return;
  free(ev->text);
  free(ev->error);
  free(ev);
}

/* ------------------------------------------------------------------------ */
/* Creation                                                                   */

static const double k_latency_buckets[] = {0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25,
                                           0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0};
static const double k_token_buckets[] = {1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000,
                                         10000, 20000, 50000, 100000};
#define NB(a) ((int)(sizeof a / sizeof *a))

int ss_engine_create(ss_model *m, ss_backend *be, const ss_engine_opts *opts,
                     ss_engine_notify_fn notify, void *notify_user, ss_engine **out) {
  *out = NULL;
  ss_engine_opts o = *opts;
  if (o.max_num_seqs == 0) o.max_num_seqs = 64;
  if (o.max_batched_tokens == 0) o.max_batched_tokens = 512;
  if (o.block_size == 0) o.block_size = 16;
  if (o.max_waiting == 0) o.max_waiting = 1024;
  if (o.kv_mem_bytes == 0) o.kv_mem_bytes = 1ull << 30;
  if (o.stats_every == 0) o.stats_every = 256;
  if (o.max_num_seqs < 1 || o.max_num_seqs > 4096)
    return ss_error(SS_ERR_RANGE, "--max-num-seqs %d is outside 1..4096", o.max_num_seqs);
  if (o.max_batched_tokens < 1 || o.max_batched_tokens > 1 << 16)
    return ss_error(SS_ERR_RANGE, "--max-batched-tokens %d is outside 1..65536",
                    o.max_batched_tokens);
  if (o.block_size < 1 || o.block_size > 1024)
    return ss_error(SS_ERR_RANGE, "KV block size %d is outside 1..1024", o.block_size);
  const ss_model_config *c = &m->cfg;
  const int32_t n_ctx = o.n_ctx > 0 ? o.n_ctx : c->n_ctx_train;
  if (o.n_ctx < 0 || n_ctx > c->n_ctx_train)
    return ss_error(SS_ERR_RANGE, "--ctx %d is outside 1..%d (the model's context length)",
                    o.n_ctx, c->n_ctx_train);
  if (o.n_blocks == 0) {
    const uint64_t per_block = ss_kv_cache_nbytes_per_token(c->n_layer, m->local.n_kv_head *
                                                                            c->head_dim) *
                               (uint64_t)o.block_size;
    uint64_t nb = o.kv_mem_bytes / per_block;
    if (nb < 1)
      return ss_error(SS_ERR_RANGE, "--kv-mem %llu bytes holds no KV block (one block of %d "
                      "tokens takes %llu bytes)", (unsigned long long)o.kv_mem_bytes,
                      o.block_size, (unsigned long long)per_block);
    o.n_blocks = nb > (1u << 24) ? 1 << 24 : (int32_t)nb;
  }
  if (o.n_blocks < 1 || o.n_blocks > 1 << 24)
    return ss_error(SS_ERR_RANGE, "--kv-blocks %d is outside 1..16777216", o.n_blocks);

  ss_engine *e = calloc(1, sizeof *e);
  if (!e) return ss_error(SS_ERR_NOMEM, "out of memory");
  e->m = m;
  e->be = be;
  e->o = o;
  e->n_ctx = n_ctx;
  e->notify = notify;
  e->notify_user = notify_user;
  e->next_id = 1;
  pthread_mutex_init(&e->mu, NULL);
  pthread_cond_init(&e->cv, NULL);
  ss_histogram_init(&e->h_ttft, k_latency_buckets, NB(k_latency_buckets));
  ss_histogram_init(&e->h_itl, k_latency_buckets, NB(k_latency_buckets));
  ss_histogram_init(&e->h_e2e, k_latency_buckets, NB(k_latency_buckets));
  ss_histogram_init(&e->h_queue, k_latency_buckets, NB(k_latency_buckets));
  ss_histogram_init(&e->h_prompt, k_token_buckets, NB(k_token_buckets));
  ss_histogram_init(&e->h_gen, k_token_buckets, NB(k_token_buckets));
  e->n_ranks = m->comm ? m->comm->size : 1;
  e->ranks = calloc((size_t)e->n_ranks, sizeof *e->ranks);
  ss_sched_params sp = {.max_num_seqs = o.max_num_seqs, .max_batched_tokens = o.max_batched_tokens,
                        .block_size = o.block_size, .n_blocks = o.n_blocks};
  int rc;
  if (!e->ranks) {
    rc = ss_error(SS_ERR_NOMEM, "out of memory");
    goto fail;
  }
  if ((rc = ss_sched_init(&e->sched, &sp))) goto fail;
  if ((rc = ss_model_kv_init(m, be, o.block_size, o.n_blocks, &e->kv))) goto fail;
  if ((rc = ss_forward_state_init(&e->st, m, be, o.max_batched_tokens, o.max_num_seqs))) goto fail;
  const size_t T = (size_t)o.max_batched_tokens;
  e->logits = malloc((size_t)o.max_num_seqs * (size_t)c->vocab * sizeof *e->logits);
  e->b_tokens = malloc(T * sizeof *e->b_tokens);
  e->b_pos = malloc(T * sizeof *e->b_pos);
  e->b_rows = malloc((size_t)o.max_num_seqs * sizeof *e->b_rows);
  e->b_tab = malloc(T * sizeof *e->b_tab);
  e->done_q = malloc((size_t)o.max_num_seqs * sizeof *e->done_q);
  e->done_r = malloc((size_t)o.max_num_seqs * sizeof *e->done_r);
  e->itls = malloc((size_t)o.max_num_seqs * sizeof *e->itls);
  e->ttfts = malloc((size_t)o.max_num_seqs * sizeof *e->ttfts);
  if (!e->logits || !e->b_tokens || !e->b_pos || !e->b_rows || !e->b_tab || !e->done_q ||
      !e->done_r || !e->itls || !e->ttfts) {
    rc = ss_error(SS_ERR_NOMEM, "engine: out of memory for a batch of %d tokens and %d sequences",
                  o.max_batched_tokens, o.max_num_seqs);
    goto fail;
  }
  *out = e;
  return SS_OK;
fail:
  ss_engine_free(e);
  return rc;
}

void ss_engine_free(ss_engine *e) {
  if (!e) return;
  ss_sched_seq *lists[2] = {e->sched.waiting.head, e->sched.running.head};
  for (int i = 0; i < 2; i++)
    for (ss_sched_seq *q = lists[i]; q;) {
      ss_sched_seq *n = q->next;
      req_free(q->user);
      q = n;
    }
  for (ereq *q = e->in_head; q;) {
    ereq *n = q->next;
    req_free(q);
    q = n;
  }
  for (ss_engine_event *ev = e->ev_head; ev;) {
    ss_engine_event *n = ev->next;
    ss_engine_event_free(ev);
    ev = n;
  }
  ss_sched_free(&e->sched);
  ss_forward_state_free(&e->st);
  if (e->kv.be) ss_kv_cache_free(&e->kv);
  free(e->logits);
  free(e->b_tokens);
  free(e->b_pos);
  free(e->b_rows);
  free(e->b_tab);
  free(e->aborts);
  free(e->ranks);
  free(e->done_q);
  free(e->done_r);
  free(e->itls);
  free(e->ttfts);
  pthread_mutex_destroy(&e->mu);
  pthread_cond_destroy(&e->cv);
  free(e);
}

int32_t ss_engine_n_ctx(const ss_engine *e) { return e->n_ctx; }
int32_t ss_engine_n_blocks(const ss_engine *e) { return e->o.n_blocks; }
int32_t ss_engine_block_size(const ss_engine *e) { return e->o.block_size; }

ss_engine_state ss_engine_get_state(ss_engine *e) {
  pthread_mutex_lock(&e->mu);
  ss_engine_state s = e->state;
  pthread_mutex_unlock(&e->mu);
  return s;
}

/* ------------------------------------------------------------------------ */
/* The submitters' side                                                       */

int ss_engine_submit(ss_engine *e, ss_engine_req *r, int64_t *id) {
  const ss_model_config *c = &e->m->cfg;
  if (r->n_prompt < 1) return ss_error(SS_ERR_INVALID, "the prompt is empty (0 tokens)");
  if (r->max_new_tokens < 1) return ss_error(SS_ERR_RANGE, "max_tokens must be at least 1");
  const int64_t total = (int64_t)r->n_prompt + r->max_new_tokens;
  if (total > e->n_ctx)
    return ss_error(SS_ERR_RANGE, "the prompt (%d tokens) + max_tokens (%d) = %lld exceeds the "
                    "context length (%d)", r->n_prompt, r->max_new_tokens, (long long)total,
                    e->n_ctx);
  const int64_t need = (total + e->o.block_size - 1) / e->o.block_size;
  if (need > e->o.n_blocks)
    return ss_error(SS_ERR_RANGE, "the prompt (%d tokens) + max_tokens (%d) needs %lld KV blocks "
                    "of %d tokens, more than the server's whole pool of %d", r->n_prompt,
                    r->max_new_tokens, (long long)need, e->o.block_size, e->o.n_blocks);
  for (int32_t i = 0; i < r->n_prompt; i++)
    if (r->prompt[i] < 0 || r->prompt[i] >= c->vocab)
      return ss_error(SS_ERR_RANGE, "prompt token %d at index %d is outside the vocabulary "
                      "(0..%d)", r->prompt[i], i, c->vocab - 1);
  if (r->n_top_logprobs < 0 || r->n_top_logprobs > SS_ENGINE_MAX_TOP)
    return ss_error(SS_ERR_RANGE, "top_logprobs = %d is outside 0..%d", r->n_top_logprobs,
                    SS_ENGINE_MAX_TOP);
  int rc = ss_sampler_params_check(&r->sampling);
  if (rc) return rc;

  ereq *q = calloc(1, sizeof *q);
  if (!q) return ss_error(SS_ERR_NOMEM, "out of memory");
  q->tokens = malloc((size_t)total * sizeof *q->tokens);
  q->seq.cap_blocks = (int32_t)need;
  q->seq.blocks = malloc((size_t)need * sizeof *q->seq.blocks);
  if (!q->tokens || !q->seq.blocks || ss_sampler_init(&q->smp, &r->sampling, c->vocab)) {
    free(q->tokens);
    free(q->seq.blocks);
    ss_sampler_free(&q->smp);
    free(q);
    return ss_error(SS_ERR_NOMEM, "out of memory");
  }
  memcpy(q->tokens, r->prompt, (size_t)r->n_prompt * sizeof *q->tokens);
  q->seq.n_tokens = r->n_prompt;
  q->seq.max_tokens = (int32_t)total;
  q->seq.user = q;
  ss_detok_init(&q->dt, e->m->tok, false);
  q->t_arrival = ss_now_s();

  pthread_mutex_lock(&e->mu);
  if (e->stopping || e->state != SS_ENGINE_READY) {
    const bool failed = e->state == SS_ENGINE_FAILED;
    pthread_mutex_unlock(&e->mu);
    ss_sampler_free(&q->smp);
    free(q->tokens);
    free(q->seq.blocks);
    free(q);
    return ss_error(failed ? SS_ERR_COMM : SS_ERR_INVALID,
                    failed ? "the engine has failed (a rank was lost); restart the server"
                           : "the server is shutting down");
  }
  if (e->n_in + e->pub_waiting >= e->o.max_waiting) {
    int32_t waiting = e->n_in + e->pub_waiting;
    pthread_mutex_unlock(&e->mu);
    ss_sampler_free(&q->smp);
    free(q->tokens);
    free(q->seq.blocks);
    free(q);
    return ss_error(SS_ERR_BUSY, "the queue is full (%d requests waiting, limit %d)", waiting,
                    e->o.max_waiting);
  }
  q->r = *r; /* ownership of prompt and stop strings moves here */
  q->id = q->seq.id = e->next_id++;
  *id = q->id;
  if (e->in_tail) e->in_tail->next = q;
  else e->in_head = q;
  e->in_tail = q;
  e->n_in++;
  pthread_cond_signal(&e->cv);
  pthread_mutex_unlock(&e->mu);
  return SS_OK;
}

void ss_engine_abort(ss_engine *e, int64_t id) {
  pthread_mutex_lock(&e->mu);
  if (e->n_aborts == e->cap_aborts) {
    int32_t cap = e->cap_aborts ? 2 * e->cap_aborts : 16;
    int64_t *a = realloc(e->aborts, (size_t)cap * sizeof *a);
    if (a) {
      e->aborts = a;
      e->cap_aborts = cap;
    }
  }
  if (e->n_aborts < e->cap_aborts) e->aborts[e->n_aborts++] = id;
  pthread_cond_signal(&e->cv);
  pthread_mutex_unlock(&e->mu);
}

void ss_engine_stop(ss_engine *e, double drain_timeout_s) {
  pthread_mutex_lock(&e->mu);
  if (!e->stopping) {
    e->stopping = true;
    e->drain_deadline = ss_now_s() + (drain_timeout_s > 0 ? drain_timeout_s : 0);
    if (e->state == SS_ENGINE_READY) e->state = SS_ENGINE_DRAINING;
  }
  pthread_cond_signal(&e->cv);
  pthread_mutex_unlock(&e->mu);
}

ss_engine_event *ss_engine_take_events(ss_engine *e) {
  pthread_mutex_lock(&e->mu);
  ss_engine_event *ev = e->ev_head;
  e->ev_head = e->ev_tail = NULL;
  pthread_mutex_unlock(&e->mu);
  return ev;
}

/* ------------------------------------------------------------------------ */
/* The engine thread                                                          */

/* Events made during a step, published together. */
typedef struct ev_list {
  ss_engine_event *head, *tail;
} ev_list;

static void ev_push(ev_list *l, ss_engine_event *ev) {
  if (l->tail) l->tail->next = ev;
  else l->head = ev;
  l->tail = ev;
}

/* Counters of a step, applied to the metrics under the lock. */
typedef struct step_obs {
  uint64_t prompt_tokens, gen_tokens;
} step_obs;

static ss_engine_event *done_event(ereq *q, const char *reason, const char *error) {
  ss_engine_event *ev = calloc(1, sizeof *ev);
  if (!ev) return NULL;
  ev->kind = SS_ENGINE_DONE;
  ev->id = q->id;
  ev->user = q->r.user;
  ev->finish_reason = reason;
  ev->error = error ? strdup(error) : NULL;
  ev->n_prompt = q->r.n_prompt;
  ev->n_generated = q->n_generated;
  return ev;
}

/* Ends a request: removes it from the scheduler, records its metrics (lock
 * held by the caller), queues its DONE event and frees it. */
static void finish_locked(ss_engine *e, ereq *q, const char *reason, const char *error, ev_list *out) {
  ss_sched_finish(&e->sched, &q->seq);
  const double t = ss_now_s();
  if (strcmp(reason, "stop") == 0) e->success_stop++;
  else if (strcmp(reason, "length") == 0) e->success_length++;
  else if (strcmp(reason, "abort") == 0) e->success_abort++;
  else e->success_error++;
  if (strcmp(reason, "error") != 0) {
    ss_histogram_observe(&e->h_e2e, t - q->t_arrival);
    ss_histogram_observe(&e->h_prompt, q->r.n_prompt);
    ss_histogram_observe(&e->h_gen, q->n_generated);
  }
  ss_engine_event *ev = done_event(q, reason, error);
  if (ev) ev_push(out, ev);
  req_free(q);
}

static ereq *find_active(ss_engine *e, int64_t id) {
  ss_sched_seq *lists[2] = {e->sched.running.head, e->sched.waiting.head};
  for (int i = 0; i < 2; i++)
    for (ss_sched_seq *q = lists[i]; q; q = q->next)
      if (q->id == id) return q->user;
  return NULL;
}

/* Moves queued requests into the scheduler and applies aborts (lock held). */
static void intake_locked(ss_engine *e, ev_list *out) {
  for (ereq *q = e->in_head; q;) {
    ereq *n = q->next;
    q->next = NULL;
    if (ss_sched_add(&e->sched, &q->seq)) {
      /* Checked at submit: only a bug gets here. */
      q->seq.state = SS_SEQ_FINISHED;
      ss_engine_event *ev = done_event(q, "error", ss_error_msg());
      if (ev) ev_push(out, ev);
      e->success_error++;
      req_free(q);
    }
    q = n;
  }
  e->in_head = e->in_tail = NULL;
  e->n_in = 0;
  for (int32_t i = 0; i < e->n_aborts; i++) {
    ereq *q = find_active(e, e->aborts[i]);
    if (q) finish_locked(e, q, "abort", NULL, out);
  }
  e->n_aborts = 0;
}

static void publish_locked(ss_engine *e, ev_list *evs) {
  if (evs->head) {
    if (e->ev_tail) e->ev_tail->next = evs->head;
    else e->ev_head = evs->head;
    e->ev_tail = evs->tail;
  }
  e->pub_running = e->sched.running.count;
  e->pub_waiting = e->sched.waiting.count;
  e->pub_blocks_used = ss_sched_blocks_used(&e->sched);
  e->preemptions_total = e->sched.n_preemptions;
}

/* Samples q's next token from its logits row and decides whether it is done.
 * Returns the finish reason or NULL; appends a TOKEN event. */
static const char *sample_one(ss_engine *e, ereq *q, const float *logits, ev_list *out,
                              double t, double *itl) {
  const ss_model_config *c = &e->m->cfg;
  ss_engine_event *ev = calloc(1, sizeof *ev);
  const int32_t tok = ss_sampler_sample(&q->smp, logits);
  q->tokens[q->seq.n_tokens++] = tok;
  q->n_generated++;
  *itl = q->n_generated > 1 ? t - q->t_last : -1.0;
  if (q->n_generated == 1) q->t_first = t;
  q->t_last = t;
  const bool eog = !q->r.ignore_eos && ss_tokenizer_is_eog(e->m->tok, tok);
  const bool at_limit = q->n_generated >= q->r.max_new_tokens;
  char piece[SS_DETOK_MIN_CAP];
  size_t np = eog ? 0 : ss_detok_push(&q->dt, tok, piece, sizeof piece);
  if (eog || at_limit) np += ss_detok_flush(&q->dt, piece + np, sizeof piece - np);
  ss_strbuf_append(&q->text, piece, np);
  if (!q->text.p) ss_strbuf_append(&q->text, "", 0);
  bool stop_found = false;
  size_t cut = q->text.len;
  size_t show = ss_stop_scan(q->text.p ? q->text.p : "", q->text.len, q->emitted,
                             (const char *const *)q->r.stop, (size_t)q->r.n_stop, &stop_found, &cut);
  if ((eog || at_limit) && !stop_found) show = q->text.len;
  if (ev) {
    ev->kind = SS_ENGINE_TOKEN;
    ev->id = q->id;
    ev->user = q->r.user;
    ev->token = tok;
    ev->text_len = show - q->emitted;
    ev->text = malloc(ev->text_len + 1);
    if (ev->text) {
      memcpy(ev->text, q->text.p + q->emitted, ev->text_len);
      ev->text[ev->text_len] = 0;
    } else {
      ev->text_len = 0;
    }
    if (q->r.logprobs) {
      ev->logprob = ss_logprob_of(logits, c->vocab, tok);
      ev->n_top = q->r.n_top_logprobs;
      if (ev->n_top > 0) ss_top_logprobs(logits, c->vocab, ev->n_top, ev->top_ids, ev->top_logprobs);
    }
    ev->n_prompt = q->r.n_prompt;
    ev->n_generated = q->n_generated;
    ev_push(out, ev);
  }
  q->emitted = show;
  if (stop_found) return "stop";
  if (eog) return "stop";
  if (at_limit) return "length";
  return NULL;
}

/* Fails every request after a fatal error (lock held). */
static void fail_all_locked(ss_engine *e, const char *msg, ev_list *out) {
  ss_sched_seq *q;
  while ((q = e->sched.running.head)) finish_locked(e, q->user, "error", msg, out);
  while ((q = e->sched.waiting.head)) finish_locked(e, q->user, "error", msg, out);
  for (ereq *r = e->in_head; r;) {
    ereq *n = r->next;
    ss_engine_event *ev = done_event(r, "error", msg);
    if (ev) ev_push(out, ev);
    e->success_error++;
    req_free(r);
    r = n;
  }
  e->in_head = e->in_tail = NULL;
  e->n_in = 0;
}

static void gather_rank_stats(ss_engine *e) {
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
static void step_log(ss_engine *e, double t0, const ss_sched_batch *b, double attended,
                     double kv_read, double t_fwd0, double t_fwd1) {
  if (!e->o.step_log) return;
  if (e->steps == 1) fprintf(e->o.step_log, SS_ENGINE_STEP_LOG_HEADER "\n");
  fprintf(e->o.step_log, "%.6f,%d,%d,%d,%.0f,%.0f,%.6f,%.6f\n", t0 - e->t_start, b->n_tokens,
          b->n_logits, b->n_entries, attended, kv_read, t_fwd1 - t_fwd0, ss_now_s() - t0);
}

int ss_engine_run(ss_engine *e) {
  int rc = SS_OK;
  e->t_start = ss_now_s();
  for (;;) {
    ev_list evs = {0};
    pthread_mutex_lock(&e->mu);
    intake_locked(e, &evs);
    const bool idle = !e->sched.running.head && !e->sched.waiting.head;
    if (e->stopping && (idle || ss_now_s() >= e->drain_deadline)) {
      /* Drained, or out of time: whatever is left ends as aborted. */
      ss_sched_seq *q;
      while ((q = e->sched.running.head)) finish_locked(e, q->user, "abort", NULL, &evs);
      while ((q = e->sched.waiting.head)) finish_locked(e, q->user, "abort", NULL, &evs);
      e->state = SS_ENGINE_STOPPED;
      publish_locked(e, &evs);
      pthread_mutex_unlock(&e->mu);
      if (e->notify) e->notify(e->notify_user);
      break;
    }
    if (idle && !evs.head && e->stats_dirty) {
      /* Going idle: refresh the per-rank counters once for /metrics. */
      pthread_mutex_unlock(&e->mu);
      e->stats_dirty = false;
      gather_rank_stats(e);
      continue;
    }
    if (idle && !evs.head) {
      if (e->stopping) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 50 * 1000 * 1000;
        if (ts.tv_nsec >= 1000000000) ts.tv_sec++, ts.tv_nsec -= 1000000000;
        pthread_cond_timedwait(&e->cv, &e->mu, &ts);
      } else {
        pthread_cond_wait(&e->cv, &e->mu);
      }
      pthread_mutex_unlock(&e->mu);
      continue;
    }
    publish_locked(e, &evs);
    pthread_mutex_unlock(&e->mu);
    if (evs.head && e->notify) e->notify(e->notify_user);
    if (idle) continue;
    evs = (ev_list){0};

    /* One step. */
    ss_sched_batch b;
    ss_sched_step(&e->sched, &b);
    if (b.n_entries == 0) continue;
    const double t_sched = ss_now_s();
    int32_t nt = 0, nl = 0;
    uint64_t prompt_tokens = 0;
    double attended, kv_read;
    ss_sched_batch_attention(&b, &attended, &kv_read);
    for (int32_t i = 0; i < b.n_entries; i++) {
      const ss_sched_entry *en = &b.entries[i];
      ereq *q = en->seq->user;
      for (int32_t k = 0; k < en->count; k++) {
        const int32_t p = en->start + k;
        e->b_tokens[nt] = q->tokens[p];
        e->b_pos[nt] = p;
        e->b_tab[nt] = q->seq.blocks;
        if (p < q->r.n_prompt && q->seq.n_preempted == 0) prompt_tokens++;
        nt++;
      }
      if (en->logits) e->b_rows[nl++] = nt - 1;
    }
    ss_batch fb = {.n = nt, .tokens = e->b_tokens, .loc = {.n = nt, .pos = e->b_pos,
                   .block_table = e->b_tab}, .n_logits = nl, .logit_rows = e->b_rows};
    const double t_fwd0 = ss_now_s();
    rc = ss_exec_step(e->m, &e->st, &e->kv, &fb, e->logits);
    const double t = ss_now_s();
    pthread_mutex_lock(&e->mu);
    for (int32_t i = 0; i < b.n_entries; i++) {
      ereq *q = b.entries[i].seq->user;
      if (q->seq.n_computed == 0 && b.entries[i].start == 0 && q->seq.n_preempted == 0)
        ss_histogram_observe(&e->h_queue, t_sched - q->t_arrival);
    }
    if (rc) {
      char msg[600];
      snprintf(msg, sizeof msg, "a forward step failed: %s", ss_error_msg());
      fail_all_locked(e, msg, &evs);
      e->state = SS_ENGINE_FAILED;
      publish_locked(e, &evs);
      pthread_mutex_unlock(&e->mu);
      if (e->notify) e->notify(e->notify_user);
      fprintf(stderr, "shardserve serve: error: %s\n", msg);
      return rc;
    }
    pthread_mutex_unlock(&e->mu);
    ss_sched_commit(&e->sched, &b);
    e->steps++;
    e->stats_dirty = true;

    /* Sample outside the lock, then publish. */
    int32_t li = 0;
    uint64_t gen = 0;
    ereq **done_q = e->done_q;
    const char **done_r = e->done_r;
    double *itls = e->itls, *ttfts = e->ttfts;
    int32_t n_done = 0, n_itl = 0, n_ttft = 0;
    for (int32_t i = 0; i < b.n_entries; i++) {
      if (!b.entries[i].logits) continue;
      ereq *q = b.entries[i].seq->user;
      double itl;
      const char *reason = sample_one(e, q, e->logits + (size_t)li * e->m->cfg.vocab, &evs, t, &itl);
      li++;
      gen++;
      if (q->n_generated == 1) ttfts[n_ttft++] = t - q->t_arrival;
      else if (itl >= 0) itls[n_itl++] = itl;
      if (reason) {
        done_q[n_done] = q;
        done_r[n_done++] = reason;
      }
    }
    pthread_mutex_lock(&e->mu);
    for (int32_t i = 0; i < n_done; i++) finish_locked(e, done_q[i], done_r[i], NULL, &evs);
    for (int32_t i = 0; i < n_ttft; i++) ss_histogram_observe(&e->h_ttft, ttfts[i]);
    for (int32_t i = 0; i < n_itl; i++) ss_histogram_observe(&e->h_itl, itls[i]);
    e->prompt_tokens_total += prompt_tokens;
    e->generation_tokens_total += gen;
    publish_locked(e, &evs);
    pthread_mutex_unlock(&e->mu);
    if (e->notify) e->notify(e->notify_user);
    step_log(e, t_sched, &b, attended, kv_read, t_fwd0, t);
    if (e->o.stats_every > 0 && e->steps % (uint64_t)e->o.stats_every == 0) {
      gather_rank_stats(e);
      e->stats_dirty = false;
    }
  }
  gather_rank_stats(e);
  return rc;
}

/* ------------------------------------------------------------------------ */
/* Metrics                                                                    */

void ss_engine_metrics(ss_engine *e, ss_strbuf *b) {
  pthread_mutex_lock(&e->mu);
#define P "shardserve:"
  ss_metric_header(b, P "num_requests_running", "gauge", "Requests in the running batch.");
  ss_metric_value(b, P "num_requests_running", "", e->pub_running);
  ss_metric_header(b, P "num_requests_waiting", "gauge", "Requests waiting to be scheduled.");
  ss_metric_value(b, P "num_requests_waiting", "", e->pub_waiting + e->n_in);
  ss_metric_header(b, P "kv_cache_usage_perc", "gauge",
                   "Fraction of KV-cache blocks in use (1 = full).");
  ss_metric_value(b, P "kv_cache_usage_perc", "", (double)e->pub_blocks_used / e->o.n_blocks);
  ss_metric_header(b, P "kv_cache_blocks_used", "gauge", "KV-cache blocks in use.");
  ss_metric_value(b, P "kv_cache_blocks_used", "", e->pub_blocks_used);
  ss_metric_header(b, P "kv_cache_blocks_total", "gauge", "KV-cache blocks in the pool.");
  ss_metric_value(b, P "kv_cache_blocks_total", "", e->o.n_blocks);
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
  ss_metric_header(b, P "num_preemptions_total", "counter",
                   "Sequences preempted (KV blocks ran out) and later recomputed.");
  ss_metric_value(b, P "num_preemptions_total", "", (double)e->preemptions_total);
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
