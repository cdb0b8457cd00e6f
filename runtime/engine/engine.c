/* The engine's life cycle and its step loop: creation, the submitters' side
 * (submit, abort, stop, events), intake of new requests, and ss_engine_run,
 * which keeps issuing steps and ending them (engine_step.c) and publishes. */
#include "runtime/engine/engine.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "comm/comm.h"
#include "runtime/base/clock.h"
#include "runtime/base/status.h"
#include "runtime/base/trace.h"
#include "runtime/engine/engine_internal.h"
#include "runtime/engine/executor.h"
#include "runtime/grammar/grammar.h"

/* ------------------------------------------------------------------------ */
/* Creation                                                                   */

/* The host's available memory (MemAvailable), or 0 when it cannot be read. */
static uint64_t mem_available_bytes(void) {
  FILE *f = fopen("/proc/meminfo", "r");
  if (!f) return 0;
  char line[256];
  unsigned long long kib = 0;
  while (fgets(line, sizeof line, f))
    if (sscanf(line, "MemAvailable: %llu kB", &kib) == 1) break;
  fclose(f);
  return (uint64_t)kib * 1024;
}

/* The default KV pool when neither --kv-blocks nor --kv-mem is given: 40% of
 * the host's available memory shared by the job's ranks (all of them assumed
 * on this host; give --kv-mem on a multi-host job), at most what max_num_seqs
 * sequences of the whole context need, and 1 GiB when the available memory
 * cannot be read. */
static uint64_t default_kv_bytes(uint64_t per_block, int32_t blocks_per_seq, int32_t max_num_seqs,
                                 int n_ranks) {
  const uint64_t avail = mem_available_bytes();
  uint64_t budget = avail ? (uint64_t)((double)avail * 0.4) / (uint64_t)(n_ranks > 0 ? n_ranks : 1)
                          : 1ull << 30;
  const uint64_t most = per_block * (uint64_t)blocks_per_seq * (uint64_t)max_num_seqs;
  return budget < most ? budget : most;
}

int ss_engine_create(ss_model *m, ss_backend *be, const ss_engine_opts *opts,
                     ss_engine_notify_fn notify, void *notify_user, ss_engine **out) {
  *out = NULL;
  ss_engine_opts o = *opts;
  if (o.max_num_seqs == 0) o.max_num_seqs = 64;
  if (o.max_batched_tokens == 0) o.max_batched_tokens = 512;
  if (o.block_size == 0) o.block_size = 16;
  if (o.max_waiting == 0) o.max_waiting = 1024;
  if (o.stats_every == 0) o.stats_every = 256;
  if (o.microbatches < 0 || o.microbatches > 256)
    return ss_error(SS_ERR_RANGE, "--pp-microbatches %d is outside 1..256", o.microbatches);
  if (o.max_num_seqs < 1 || o.max_num_seqs > 4096)
    return ss_error(SS_ERR_RANGE, "--max-num-seqs %d is outside 1..4096", o.max_num_seqs);
  if (o.max_batched_tokens < 1 || o.max_batched_tokens > 1 << 16)
    return ss_error(SS_ERR_RANGE, "--max-batched-tokens %d is outside 1..65536",
                    o.max_batched_tokens);
  if (o.block_size < 1 || o.block_size > 1024)
    return ss_error(SS_ERR_RANGE, "KV block size %d is outside 1..1024", o.block_size);
  const ss_model_config *c = &m->cfg;
  int32_t n_ctx = o.n_ctx > 0 ? o.n_ctx : c->n_ctx_train;
  if (o.n_ctx < 0 || n_ctx > c->n_ctx_train)
    return ss_error(SS_ERR_RANGE, "--ctx %d is outside 1..%d (the model's context length)",
                    o.n_ctx, c->n_ctx_train);
  if (o.n_blocks == 0) {
    const uint64_t per_block = ss_kv_cache_nbytes_per_token(c->n_layer, m->local.n_kv_head *
                                                                            c->head_dim,
                                                            o.kv_dtype) *
                               (uint64_t)o.block_size;
    if (o.kv_mem_bytes == 0)
      o.kv_mem_bytes = default_kv_bytes(per_block, (n_ctx + o.block_size - 1) / o.block_size,
                                        o.max_num_seqs, m->comm ? m->comm->size : 1);
    uint64_t nb = o.kv_mem_bytes / per_block;
    if (nb < 1)
      return ss_error(SS_ERR_RANGE, "--kv-mem %llu bytes holds no KV block (one block of %d "
                      "tokens takes %llu bytes)", (unsigned long long)o.kv_mem_bytes,
                      o.block_size, (unsigned long long)per_block);
    o.n_blocks = nb > (1u << 24) ? 1 << 24 : (int32_t)nb;
  }
  if (o.n_blocks < 1 || o.n_blocks > 1 << 24)
    return ss_error(SS_ERR_RANGE, "--kv-blocks %d is outside 1..16777216", o.n_blocks);
  /* A pool that cannot hold one sequence of the whole context: the context
   * becomes what it holds (said at start through ss_engine_n_ctx), so that
   * every request that fits the context fits the pool, instead of requests
   * refused later.  An explicit --ctx larger than the pool is an error. */
  const int64_t pool_tokens = (int64_t)o.n_blocks * o.block_size;
  if (pool_tokens < n_ctx && !o.fixed_ctx) {
    if (o.n_ctx > 0)
      return ss_error(SS_ERR_RANGE, "--ctx %d is more than the KV pool holds (%d blocks of %d "
                      "tokens = %lld tokens): give a larger --kv-mem or --kv-blocks, or a "
                      "smaller --ctx", o.n_ctx, o.n_blocks, o.block_size, (long long)pool_tokens);
    n_ctx = (int32_t)pool_tokens;
  }

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
  ss_eng_metrics_init(e);
  e->n_ranks = m->world ? m->world->size : m->comm ? m->comm->size : 1;
  e->ranks = calloc((size_t)e->n_ranks, sizeof *e->ranks);
  /* Steps in flight: only where later stages can run one while rank 0 issues
   * the next (pipeline parallelism); a single stage's step holds its logits
   * when issued. */
  const int pp = m->local.pp > 1 && m->world ? m->local.pp : 1;
  e->microbatches = pp > 1 ? (o.microbatches > 0 ? o.microbatches : pp) : 1;
  ss_sched_params sp = {.max_num_seqs = o.max_num_seqs, .max_batched_tokens = o.max_batched_tokens,
                        .block_size = o.block_size, .n_blocks = o.n_blocks,
                        .prefix_caching = !o.no_prefix_caching,
                        .microbatches = e->microbatches};
  int rc;
  if (!e->ranks) {
    rc = ss_error(SS_ERR_NOMEM, "out of memory");
    goto fail;
  }
  if ((rc = ss_sched_init(&e->sched, &sp))) goto fail;
  if ((rc = ss_model_kv_init(m, be, o.block_size, o.n_blocks, o.kv_dtype, &e->kv))) goto fail;
  if ((rc = ss_forward_state_init(&e->st, m, be, o.max_batched_tokens, o.max_num_seqs))) goto fail;
  if ((rc = ss_sampler_scratch_init(&e->scratch, c->vocab))) goto fail;
  for (int32_t t = 0; t < c->vocab; t++) e->n_eog += ss_model_is_eog(m, t);
  e->eog = malloc((e->n_eog > 0 ? (size_t)e->n_eog : 1) * sizeof *e->eog);
  if (!e->eog) {
    rc = ss_error(SS_ERR_NOMEM, "out of memory");
    goto fail;
  }
  for (int32_t t = 0, k = 0; t < c->vocab && k < e->n_eog; t++)
    if (ss_model_is_eog(m, t)) e->eog[k++] = t;
  const size_t T = (size_t)o.max_batched_tokens;
  e->logits = malloc((size_t)o.max_num_seqs * (size_t)c->vocab * sizeof *e->logits);
  e->cap_logits = o.max_num_seqs;
  e->fl = calloc((size_t)e->microbatches, sizeof *e->fl);
  bool fl_ok = e->fl != NULL;
  for (int32_t i = 0; fl_ok && i < e->microbatches; i++) {
    eng_flight *f = &e->fl[i];
    f->b.entries = malloc((size_t)o.max_num_seqs * sizeof *f->b.entries);
    f->pl_q = malloc(T * sizeof *f->pl_q);
    f->pl_pos = malloc(T * sizeof *f->pl_pos);
    f->b.copies = malloc((size_t)o.max_num_seqs * sizeof *f->b.copies);
    f->cp_src = malloc((size_t)o.max_num_seqs * sizeof *f->cp_src);
    f->cp_dst = malloc((size_t)o.max_num_seqs * sizeof *f->cp_dst);
    f->forks = calloc((size_t)o.max_num_seqs, sizeof *f->forks);
    fl_ok = f->b.entries && f->pl_q && f->pl_pos && f->b.copies && f->cp_src && f->cp_dst &&
            f->forks;
  }
  e->b_tokens = malloc(T * sizeof *e->b_tokens);
  e->b_pos = malloc(T * sizeof *e->b_pos);
  e->b_rows = malloc(((size_t)o.max_num_seqs + T) * sizeof *e->b_rows);
  e->b_tab = malloc(T * sizeof *e->b_tab);
  e->done_q = malloc((size_t)o.max_num_seqs * sizeof *e->done_q);
  e->done_r = malloc((size_t)o.max_num_seqs * sizeof *e->done_r);
  e->itls = malloc((size_t)o.max_num_seqs * sizeof *e->itls);
  e->ttfts = malloc((size_t)o.max_num_seqs * sizeof *e->ttfts);
  e->ent_failed = malloc((size_t)o.max_num_seqs * sizeof *e->ent_failed);
  e->ent_why = malloc((size_t)o.max_num_seqs * sizeof *e->ent_why);
  e->ent_tok = malloc((size_t)o.max_num_seqs * sizeof *e->ent_tok);
  e->ent_ok = malloc((size_t)o.max_num_seqs * sizeof *e->ent_ok);
  if (!e->logits || !fl_ok || !e->b_tokens || !e->b_pos || !e->b_rows ||
      !e->b_tab || !e->done_q ||
      !e->done_r || !e->itls || !e->ttfts || !e->ent_failed || !e->ent_why || !e->ent_tok ||
      !e->ent_ok) {
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
      ereq *r = q->user;
      while (r->forks) {
        ereq *c = r->forks;
        r->forks = c->fork_next;
        ss_eng_req_free(c);
      }
      ss_eng_req_free(r);
      q = n;
    }
  for (ereq *q = e->in_head; q;) {
    ereq *n = q->next;
    ss_eng_req_free(q);
    q = n;
  }
  for (ss_engine_event *ev = e->ev_head; ev;) {
    ss_engine_event *n = ev->next;
    ss_engine_event_free(ev);
    ev = n;
  }
  ss_sched_free(&e->sched);
  ss_forward_state_free(&e->st);
  ss_sampler_scratch_free(&e->scratch);
  free(e->eog);
  if (e->kv.be) ss_kv_cache_free(&e->kv);
  free(e->logits);
  for (int32_t i = 0; e->fl && i < e->microbatches; i++) {
    free(e->fl[i].b.entries);
    free(e->fl[i].pl_q);
    free(e->fl[i].pl_pos);
    free(e->fl[i].b.copies);
    free(e->fl[i].cp_src);
    free(e->fl[i].cp_dst);
    free(e->fl[i].forks);
  }
  free(e->fl);
  free(e->masked);
  ss_grammar_vocab_free(e->gvocab);
  free(e->b_tokens);
  free(e->b_pos);
  free(e->b_rows);
  free(e->b_tab);
  free(e->aborts);
  free(e->pauses);
  free(e->ranks);
  free(e->done_q);
  free(e->done_r);
  free(e->itls);
  free(e->ttfts);
  free(e->ent_failed);
  free(e->ent_why);
  free(e->ent_tok);
  free(e->ent_ok);
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

/* Frees a request made by make_req that was never queued (its r's buffers
 * stay the caller's). */
static void discard_req(ereq *q) {
  ss_sampler_free(&q->smp);
  free(q->tokens);
  free(q->seq.blocks);
  free(q);
}

/* Checks r and makes its request (not yet queued, r's buffers not taken). */
static int make_req(ss_engine *e, const ss_engine_req *r, ereq **out) {
  *out = NULL;
  const ss_model_config *c = &e->m->cfg;
  if (r->n_prompt < 1) return ss_error(SS_ERR_INVALID, "the prompt is empty (0 tokens)");
  if (r->max_new_tokens < 0)
    return ss_error(SS_ERR_RANGE, "max_tokens = %d must be at least 0", r->max_new_tokens);
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
  if (r->n_top_logprobs < 0 || r->n_top_logprobs > c->vocab)
    return ss_error(SS_ERR_RANGE, "top_logprobs = %d is outside 0..%d (the vocabulary)",
                    r->n_top_logprobs, c->vocab);
  int rc = ss_sampler_params_check_ids(&r->sampling, c->vocab);
  if (rc) return rc;
  ss_sampler smp;
  if ((rc = ss_sampler_init(&smp, &r->sampling))) return rc;

  ereq *q = calloc(1, sizeof *q);
  if (!q) {
    ss_sampler_free(&smp);
    return ss_error(SS_ERR_NOMEM, "out of memory");
  }
  q->tokens = malloc((size_t)total * sizeof *q->tokens);
  q->seq.cap_blocks = (int32_t)need;
  q->seq.blocks = malloc((size_t)need * sizeof *q->seq.blocks);
  if (!q->tokens || !q->seq.blocks) {
    ss_sampler_free(&smp);
    free(q->tokens);
    free(q->seq.blocks);
    free(q);
    return ss_error(SS_ERR_NOMEM, "out of memory");
  }
  q->smp = smp;
  memcpy(q->tokens, r->prompt, (size_t)r->n_prompt * sizeof *q->tokens);
  q->seq.n_tokens = r->n_prompt;
  q->seq.max_tokens = (int32_t)total;
  q->seq.user = q;
  q->seq.tokens = q->tokens;
  q->seq.compute_all = r->prompt_logprobs;
  ss_detok_init(&q->dt, e->m->tok, false);
  q->t_arrival = ss_now_s();
  *out = q;
  return SS_OK;
}

int ss_engine_submit_group(ss_engine *e, ss_engine_req *reqs, int32_t n, int64_t *ids) {
  if (n < 1) return ss_error(SS_ERR_INVALID, "a group of %d requests", n);
  if (n > e->o.max_waiting)
    return ss_error(SS_ERR_BUSY, "the queue holds %d requests at most, fewer than the %d of this "
                    "group", e->o.max_waiting, n);
  ereq **qs = calloc((size_t)n, sizeof *qs);
  if (!qs) return ss_error(SS_ERR_NOMEM, "out of memory");
  int rc = SS_OK;
  for (int32_t i = 0; i < n && !rc; i++) {
    rc = make_req(e, &reqs[i], &qs[i]);
    if (!rc && i > 0 && (reqs[i].n_prompt != reqs[0].n_prompt ||
                         memcmp(reqs[i].prompt, reqs[0].prompt,
                                (size_t)reqs[0].n_prompt * sizeof *reqs[0].prompt) != 0))
      rc = ss_error(SS_ERR_INVALID, "a group's requests must have the same prompt");
  }
  pthread_mutex_lock(&e->mu);
  if (!rc && (e->stopping || e->state != SS_ENGINE_READY)) {
    const bool failed = e->state == SS_ENGINE_FAILED;
    rc = ss_error(failed ? SS_ERR_COMM : SS_ERR_INVALID,
                  failed ? "the engine has failed (a rank was lost); restart the server"
                         : "the server is shutting down");
  }
  if (!rc && e->n_in + e->pub_waiting + n > e->o.max_waiting)
    rc = ss_error(SS_ERR_BUSY, "the queue is full (%d requests waiting, limit %d)",
                  e->n_in + e->pub_waiting, e->o.max_waiting);
  if (rc) {
    pthread_mutex_unlock(&e->mu);
    for (int32_t i = 0; i < n; i++)
      if (qs[i]) discard_req(qs[i]);
    free(qs);
    return rc;
  }
  /* Queued together: the engine takes them in at once, so the others are
   * waiting on the first before its prompt can be computed. */
  for (int32_t i = 0; i < n; i++) {
    ereq *q = qs[i];
    q->r = reqs[i]; /* ownership of prompt, stop strings and sampling arrays moves here */
    q->id = q->seq.id = e->next_id++;
    q->fork_of = i > 0 ? qs[0]->id : 0;
    ids[i] = q->id;
    if (e->in_tail) e->in_tail->next = q;
    else e->in_head = q;
    e->in_tail = q;
    e->n_in++;
  }
  pthread_cond_signal(&e->cv);
  pthread_mutex_unlock(&e->mu);
  free(qs);
  return SS_OK;
}

int ss_engine_submit(ss_engine *e, ss_engine_req *r, int64_t *id) {
  return ss_engine_submit_group(e, r, 1, id);
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

void ss_engine_pause(ss_engine *e, int64_t id, bool paused) {
  pthread_mutex_lock(&e->mu);
  if (e->n_pauses == e->cap_pauses) {
    int32_t cap = e->cap_pauses ? 2 * e->cap_pauses : 16;
    struct pause_op *a = realloc(e->pauses, (size_t)cap * sizeof *a);
    if (a) {
      e->pauses = a;
      e->cap_pauses = cap;
    }
  }
  /* Out of memory a pause is lost; the write timeout still ends the request. */
  if (e->n_pauses < e->cap_pauses) e->pauses[e->n_pauses++] = (struct pause_op){id, paused};
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

/* A request in the scheduler, or waiting for its fork on one there. */
static ereq *find_active(ss_engine *e, int64_t id) {
  ss_sched_seq *lists[2] = {e->sched.running.head, e->sched.waiting.head};
  for (int i = 0; i < 2; i++)
    for (ss_sched_seq *q = lists[i]; q; q = q->next) {
      ereq *r = q->user;
      if (q->id == id) return r;
      for (ereq *c = r->forks; c; c = c->fork_next)
        if (c->id == id) return c;
    }
  return NULL;
}

/* The request q can fork from (the first of its group), or NULL: one in the
 * scheduler, not itself a fork waiting, that has not started generating, with
 * the same prompt and prompt logprobs. */
static ereq *fork_parent(ss_engine *e, const ereq *q) {
  if (q->fork_of <= 0 || q->r.max_new_tokens == 0) return NULL;
  ereq *p = find_active(e, q->fork_of);
  if (!p || p->fork_parent || p->n_generated > 0 || p->r.max_new_tokens == 0 ||
      p->r.n_prompt != q->r.n_prompt || p->r.prompt_logprobs != q->r.prompt_logprobs ||
      (q->r.prompt_logprobs && p->r.n_top_logprobs != q->r.n_top_logprobs) ||
      memcmp(p->tokens, q->tokens, (size_t)q->r.n_prompt * sizeof *q->tokens) != 0)
    return NULL;
  return p;
}

/* Moves queued requests into the scheduler and applies pauses and aborts
 * (lock held). */
static void intake_locked(ss_engine *e, ev_list *out) {
  for (ereq *q = e->in_head; q;) {
    ereq *n = q->next;
    q->next = NULL;
    ereq *p = fork_parent(e, q);
    if (p) {
      /* Waits for p's prompt, in submission order. */
      ereq **pp = &p->forks;
      while (*pp) pp = &(*pp)->fork_next;
      *pp = q;
      q->fork_parent = p;
      q->seq.state = SS_SEQ_FINISHED; /* in no scheduler list */
    } else if (ss_sched_add(&e->sched, &q->seq)) {
      /* Checked at submit: only a bug gets here. */
      q->seq.state = SS_SEQ_FINISHED;
      ss_engine_event *ev = ss_eng_done_event(q, "error", ss_error_msg());
      if (ev) ss_eng_ev_push(out, ev);
      e->success_error++;
      ss_eng_req_free(q);
    }
    q = n;
  }
  e->in_head = e->in_tail = NULL;
  e->n_in = 0;
  /* A request in a step in flight ends once that step has: the step's entry
   * points to it. */
  int32_t kept = 0;
  for (int32_t i = 0; i < e->n_aborts; i++) {
    ereq *q = find_active(e, e->aborts[i]);
    if (q && q->seq.in_flight) e->aborts[kept++] = e->aborts[i];
    else if (q) ss_eng_finish_locked(e, q, "abort", NULL, out);
  }
  e->n_aborts = kept;
  for (int32_t i = 0; i < e->n_pauses; i++) {
    ereq *q = find_active(e, e->pauses[i].id);
    if (!q || q->seq.paused == e->pauses[i].paused) continue;
    ss_sched_set_paused(&e->sched, &q->seq, e->pauses[i].paused);
    e->pauses_total += e->pauses[i].paused;
  }
  e->n_pauses = 0;
}

static void publish_gauges_locked(ss_engine *e) {
  e->pub_running = e->sched.running.count;
  e->pub_waiting = e->sched.waiting.count;
  e->pub_blocks_used = ss_sched_blocks_used(&e->sched);
  e->pub_paused = e->sched.n_paused;
  e->preemptions_total = e->sched.n_preemptions;
  e->prefix_queried_total = e->sched.n_queried;
  e->prefix_hit_total = e->sched.n_hit;
  e->pub_blocks_cached = ss_sched_blocks_cached_free(&e->sched);
  e->pub_blocks_shared = ss_sched_blocks_shared(&e->sched);
  e->forks_total = e->sched.n_forks;
  e->fork_blocks_total = e->sched.n_fork_blocks;
  e->cow_copies_total = e->sched.n_cow_copies;
}

void ss_eng_publish_locked(ss_engine *e, ev_list *evs) {
  if (evs->head) {
    if (e->ev_tail) e->ev_tail->next = evs->head;
    else e->ev_head = evs->head;
    e->ev_tail = evs->tail;
  }
  publish_gauges_locked(e);
}

int ss_engine_run(ss_engine *e) {
  int rc = SS_OK;
  e->t_start = ss_now_s();
  e->stats_t = e->t_start;
  for (;;) {
    ev_list evs = {0};
    pthread_mutex_lock(&e->mu);
    intake_locked(e, &evs);
    /* Empty: no request at all; idle: none that can run (paused ones wait,
     * holding the drain until its deadline). */
    const bool empty = !e->sched.running.head && !e->sched.waiting.head;
    const bool idle = !ss_sched_has_work(&e->sched);
    if (e->stopping && (empty || ss_now_s() >= e->drain_deadline) && e->n_fl == 0) {
      /* Drained, or out of time: whatever is left ends as aborted. */
      ss_sched_seq *q;
      while ((q = e->sched.running.head)) ss_eng_finish_locked(e, q->user, "abort", NULL, &evs);
      while ((q = e->sched.waiting.head)) ss_eng_finish_locked(e, q->user, "abort", NULL, &evs);
      e->state = SS_ENGINE_STOPPED;
      ss_eng_publish_locked(e, &evs);
      pthread_mutex_unlock(&e->mu);
      if (e->notify) e->notify(e->notify_user);
      break;
    }
    const bool out_of_time = e->stopping && ss_now_s() >= e->drain_deadline;
    if (idle && !evs.head && e->n_fl == 0 && e->stats_dirty) {
      /* Going idle: refresh the per-rank counters once for /metrics. */
      pthread_mutex_unlock(&e->mu);
      e->stats_dirty = false;
      e->stats_due = false;
      ss_eng_gather_rank_stats(e);
      continue;
    }
    if (idle && !evs.head && e->n_fl == 0) {
      /* A pause may have been all that changed: /metrics shows it. */
      publish_gauges_locked(e);
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
    ss_eng_publish_locked(e, &evs);
    pthread_mutex_unlock(&e->mu);
    if (evs.head && e->notify) e->notify(e->notify_user);
    if (e->stats_due && e->n_fl == 0) {
      ss_eng_gather_rank_stats(e);
      e->stats_dirty = e->stats_due = false;
    }
    /* Fill the pipeline: issue while a slot is free (not after a step whose
     * issue failed, nor while the counters wait for it to drain, nor past the
     * drain's deadline), else end the oldest step in flight. */
    const bool tail_failed = e->n_fl > 0 &&
                             e->fl[(e->fl_head + e->n_fl - 1) % e->microbatches].rc != SS_OK;
    if (!idle && !out_of_time && !tail_failed && !e->stats_due && e->n_fl < e->microbatches) {
      int r = ss_eng_issue_step(e);
      if (r < 0) return r;
      if (r > 0) {
        /* One at a time: the step ends before the next is built. */
        if (e->microbatches == 1 && (rc = ss_eng_finish_step(e))) return rc;
        continue;
      }
    }
    if (e->n_fl > 0 && (rc = ss_eng_finish_step(e))) return rc;
  }
  ss_eng_gather_rank_stats(e);
  return rc;
}
