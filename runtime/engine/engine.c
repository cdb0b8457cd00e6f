/* The engine's life cycle and its step loop: creation, the submitters' side
 * (submit, abort, stop, events), intake of new requests, and ss_engine_run,
 * which schedules, runs each step through the executor and publishes. */
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
  ss_sched_params sp = {.max_num_seqs = o.max_num_seqs, .max_batched_tokens = o.max_batched_tokens,
                        .block_size = o.block_size, .n_blocks = o.n_blocks,
                        .prefix_caching = !o.no_prefix_caching};
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
  e->pl_q = malloc(T * sizeof *e->pl_q);
  e->pl_pos = malloc(T * sizeof *e->pl_pos);
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
  e->ent_forks = calloc((size_t)o.max_num_seqs, sizeof *e->ent_forks);
  e->cp_src = malloc((size_t)o.max_num_seqs * sizeof *e->cp_src);
  e->cp_dst = malloc((size_t)o.max_num_seqs * sizeof *e->cp_dst);
  if (!e->logits || !e->pl_q || !e->pl_pos || !e->b_tokens || !e->b_pos || !e->b_rows ||
      !e->b_tab || !e->done_q ||
      !e->done_r || !e->itls || !e->ttfts || !e->ent_failed || !e->ent_why || !e->ent_tok ||
      !e->ent_ok || !e->ent_forks || !e->cp_src || !e->cp_dst) {
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
  free(e->pl_q);
  free(e->pl_pos);
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
  free(e->ent_forks);
  free(e->cp_src);
  free(e->cp_dst);
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
  for (int32_t i = 0; i < e->n_aborts; i++) {
    ereq *q = find_active(e, e->aborts[i]);
    if (q) ss_eng_finish_locked(e, q, "abort", NULL, out);
  }
  e->n_aborts = 0;
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

static void publish_locked(ss_engine *e, ev_list *evs) {
  if (evs->head) {
    if (e->ev_tail) e->ev_tail->next = evs->head;
    else e->ev_head = evs->head;
    e->ev_tail = evs->tail;
  }
  publish_gauges_locked(e);
}

/* ------------------------------------------------------------------------ */
/* Running a step, and isolating one that fails                               */

/* The debug hook (opts.debug_fail_id): a step holding the named request fails
 * before it runs, as a step failure attributed to one request would. */
static int debug_check(const ss_engine *e, const ss_sched_entry *en, int32_t n) {
  if (e->o.debug_fail_id <= 0) return SS_OK;
  for (int32_t i = 0; i < n; i++) {
    const ereq *q = en[i].seq->user;
    if (q->id == e->o.debug_fail_id && q->n_generated >= e->o.debug_fail_after)
      return ss_error(SS_ERR_INTERNAL, "injected failure of a step holding request %lld "
                      "(SS_DEBUG_FAIL_STEP)", (long long)q->id);
  }
  return SS_OK;
}

/* Room for n logit rows: the engine's buffer and the forward state grow (the
 * other ranks' states follow the step they receive). */
static int ensure_logit_rows(ss_engine *e, int32_t n) {
  if (n > e->cap_logits) {
    float *l = realloc(e->logits, (size_t)n * (size_t)e->m->cfg.vocab * sizeof *l);
    if (!l) return ss_error(SS_ERR_NOMEM, "out of memory for %d rows of logits", n);
    e->logits = l;
    e->cap_logits = n;
  }
  if (n > e->st.max_logits) {
    const int64_t T = e->st.max_tokens;
    ss_forward_state_free(&e->st);
    int rc = ss_forward_state_init(&e->st, e->m, e->be, T, n);
    if (rc) {
      /* Back to the size it had, so that steps without prompt rows still run. */
      ss_forward_state_free(&e->st);
      int rc2 = ss_forward_state_init(&e->st, e->m, e->be, T, e->o.max_num_seqs);
      return rc2 ? rc2 : rc;
    }
  }
  return SS_OK;
}

/* The logprobs of the prompt tokens that this step's prompt rows (after its
 * nl sampling rows) predict, into their requests. */
static void record_prompt_rows(ss_engine *e, int32_t nl, int32_t npl) {
  const int32_t V = e->m->cfg.vocab;
  for (int32_t j = 0; j < npl; j++) {
    ereq *q = e->pl_q[j];
    const int32_t n = q->r.n_prompt - 1, k = q->r.n_top_logprobs, p = e->pl_pos[j];
    if (!q->plp) {
      q->plp = malloc((size_t)n * sizeof *q->plp);
      if (k > 0) {
        q->ptop_ids = calloc((size_t)n * (size_t)k, sizeof *q->ptop_ids);
        q->ptop_lp = calloc((size_t)n * (size_t)k, sizeof *q->ptop_lp);
      }
      if (!q->plp || (k > 0 && (!q->ptop_ids || !q->ptop_lp))) {
        free(q->plp);
        free(q->ptop_ids);
        free(q->ptop_lp);
        q->plp = NULL;
        q->ptop_ids = NULL;
        q->ptop_lp = NULL;
        continue;
      }
      for (int32_t i = 0; i < n; i++) q->plp[i] = NAN;
    }
    const float *row = e->logits + (size_t)(nl + j) * (size_t)V;
    q->plp[p] = ss_logprob_of(row, V, q->tokens[p + 1]);
    if (k > 0)
      ss_top_logprobs(&e->scratch, row, k, q->ptop_ids + (size_t)p * k,
                      q->ptop_lp + (size_t)p * k);
  }
}

/* Runs the step whose tokens are in the engine's batch arrays. */
static int exec_all(ss_engine *e, const ss_sched_batch *b, int32_t nt, int32_t nl) {
  int rc = debug_check(e, b->entries, b->n_entries);
  if (rc) return rc;
  for (int32_t i = 0; i < b->n_copies; i++) {
    e->cp_src[i] = b->copies[i].src;
    e->cp_dst[i] = b->copies[i].dst;
  }
  ss_batch fb = {.n = nt, .tokens = e->b_tokens, .loc = {.n = nt, .pos = e->b_pos,
                 .block_table = e->b_tab}, .n_logits = nl, .logit_rows = e->b_rows,
                 .n_copies = b->n_copies, .copy_src = e->cp_src, .copy_dst = e->cp_dst};
  return ss_exec_step(e->m, &e->st, &e->kv, &fb, e->logits);
}

/* After a step failed with a status that leaves the ranks in step (anything
 * but SS_ERR_COMM): runs each entry alone, its logits to its own row, so that
 * a failure one request causes ends only that request.  The kernels are batch
 * invariant, so the others' logits are those the whole step would have given.
 * Marks e->ent_failed[i] (reason in e->ent_why[i]) and returns the number of
 * failed entries, or SS_ERR_COMM when a rank is lost meanwhile. */
static int isolate_step(ss_engine *e, const ss_sched_batch *b, const char *why) {
  int32_t n_failed = 0, li = 0;
  for (int32_t i = 0; i < b->n_entries; i++) {
    const ss_sched_entry *en = &b->entries[i];
    const int32_t off = e->ent_tok[i];
    int rc;
    if (b->n_entries == 1) {
      rc = SS_ERR_INTERNAL; /* alone already */
      snprintf(e->ent_why[i], sizeof e->ent_why[i], "%.*s", (int)sizeof e->ent_why[i] - 1, why);
    } else {
      int32_t row = en->count - 1, src = -1, dst = -1;
      /* Its copy-on-write copy too (the whole step may have failed before
       * running it; run again, it copies what the entry reads all the same). */
      for (int32_t c = 0; c < b->n_copies; c++)
        if (b->copies[c].seq == en->seq) src = b->copies[c].src, dst = b->copies[c].dst;
      ss_batch one = {.n = en->count, .tokens = e->b_tokens + off,
                      .loc = {.n = en->count, .pos = e->b_pos + off, .block_table = e->b_tab + off},
                      .n_logits = en->logits ? 1 : 0, .logit_rows = &row,
                      .n_copies = src >= 0, .copy_src = &src, .copy_dst = &dst};
      rc = debug_check(e, en, 1);
      if (!rc)
        rc = ss_exec_step(e->m, &e->st, &e->kv, &one,
                          e->logits + (size_t)li * (size_t)e->m->cfg.vocab);
      if (rc == SS_ERR_COMM) return rc;
      if (rc) snprintf(e->ent_why[i], sizeof e->ent_why[i], "%s", ss_error_msg());
    }
    e->ent_failed[i] = rc != SS_OK;
    n_failed += rc != SS_OK;
    if (en->logits) li++;
  }
  return n_failed;
}

/* ------------------------------------------------------------------------ */
/* Forks                                                                      */

static void *memdup(const void *p, size_t nbytes) {
  void *d = p ? malloc(nbytes) : NULL;
  if (d) memcpy(d, p, nbytes);
  return d;
}

/* After a step is committed: every request whose prompt the step completed
 * starts its waiting forks, which share its blocks (ss_sched_fork) and sample
 * their first token from its logits row (e->ent_forks[i] lists them for the
 * step's sampling).  A fork that cannot run now (max_num_seqs) is queued as
 * a request of its own. */
static bool fork_now(const ss_engine *e, const ss_sched_batch *b, int32_t i) {
  /* A failed entry's request has ended (and is freed) before this runs. */
  if (!b->entries[i].logits || e->ent_failed[i]) return false;
  const ereq *q = b->entries[i].seq->user;
  return q->forks && q->n_generated == 0 && q->seq.n_computed == q->seq.n_tokens;
}

static void fork_ready(ss_engine *e, const ss_sched_batch *b, double t_sched, ev_list *evs) {
  bool any = false;
  for (int32_t i = 0; i < b->n_entries; i++) {
    e->ent_forks[i] = NULL;
    any = any || fork_now(e, b, i);
  }
  if (!any) return; /* (the fork lists change only on this thread) */
  pthread_mutex_lock(&e->mu);
  for (int32_t i = 0; i < b->n_entries; i++) {
    if (!fork_now(e, b, i)) continue;
    ereq *q = b->entries[i].seq->user;
    ereq **tail = &e->ent_forks[i];
    while (q->forks) {
      ereq *c = q->forks;
      q->forks = c->fork_next;
      c->fork_next = c->fork_parent = NULL;
      if (ss_sched_fork(&e->sched, &q->seq, &c->seq)) {
        c->fork_next = q->forks;
        q->forks = c;
        c->fork_parent = q;
        ss_eng_release_forks_locked(e, q, evs);
        break;
      }
      c->t_scheduled = t_sched;
      ss_histogram_observe(&e->h_queue, t_sched - c->t_arrival);
      e->prompt_tokens_total += (uint64_t)c->r.n_prompt; /* counted per request, as cached */
      if (c->r.prompt_logprobs && q->plp) {
        /* The same prompt's logprobs. */
        const size_t n = (size_t)(q->r.n_prompt - 1), k = (size_t)q->r.n_top_logprobs;
        c->plp = memdup(q->plp, n * sizeof *c->plp);
        c->ptop_ids = memdup(q->ptop_ids, n * k * sizeof *c->ptop_ids);
        c->ptop_lp = memdup(q->ptop_lp, n * k * sizeof *c->ptop_lp);
        if (!c->plp || (k > 0 && (!c->ptop_ids || !c->ptop_lp))) {
          free(c->plp), free(c->ptop_ids), free(c->ptop_lp);
          c->plp = NULL, c->ptop_ids = NULL, c->ptop_lp = NULL;
        }
      }
      *tail = c;
      tail = &c->fork_next;
    }
  }
  pthread_mutex_unlock(&e->mu);
}

/* The stats line, at most every stats_interval_s, printed after a step (so
 * only while the engine is busy): rates over the interval since the last. */
static void stats_line(ss_engine *e) {
  const double now = ss_now_s();
  if (!e->o.log || e->o.stats_interval_s <= 0 || now - e->stats_t < e->o.stats_interval_s) return;
  pthread_mutex_lock(&e->mu);
  const uint64_t prompt = e->prompt_tokens_total, gen = e->generation_tokens_total;
  const uint64_t failed = e->success_error;
  const int32_t running = e->pub_running, waiting = e->pub_waiting, used = e->pub_blocks_used;
  pthread_mutex_unlock(&e->mu);
  const double dt = now - e->stats_t;
  fprintf(e->o.log, "shardserve engine: stats: %.1f s: %llu steps, prompt %.1f tok/s, generation "
          "%.1f tok/s; running %d, waiting %d, KV blocks %d of %d (%.1f%%); failed requests "
          "%llu, failed steps %llu\n", dt, (unsigned long long)(e->steps - e->stats_steps),
          (double)(prompt - e->stats_prompt) / dt, (double)(gen - e->stats_gen) / dt, running,
          waiting, used, e->o.n_blocks, 100.0 * used / e->o.n_blocks, (unsigned long long)failed,
          (unsigned long long)e->step_failures_total);
  fflush(e->o.log);
  e->stats_t = now;
  e->stats_steps = e->steps;
  e->stats_prompt = prompt;
  e->stats_gen = gen;
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
    if (e->stopping && (empty || ss_now_s() >= e->drain_deadline)) {
      /* Drained, or out of time: whatever is left ends as aborted. */
      ss_sched_seq *q;
      while ((q = e->sched.running.head)) ss_eng_finish_locked(e, q->user, "abort", NULL, &evs);
      while ((q = e->sched.waiting.head)) ss_eng_finish_locked(e, q->user, "abort", NULL, &evs);
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
      ss_eng_gather_rank_stats(e);
      continue;
    }
    if (idle && !evs.head) {
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
    publish_locked(e, &evs);
    pthread_mutex_unlock(&e->mu);
    if (evs.head && e->notify) e->notify(e->notify_user);
    if (idle) continue;
    evs = (ev_list){0};

    /* One step. */
    SS_TRACE_BEGIN(t_step);
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
      e->ent_tok[i] = nt;
      e->ent_failed[i] = false;
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
    /* Requests that report prompt logprobs: a row for each of their prompt
     * positions in the step whose next token is a prompt token, after the
     * sampling rows. */
    int32_t npl = 0;
    for (int32_t i = 0; i < b.n_entries; i++) {
      const ss_sched_entry *en = &b.entries[i];
      ereq *q = en->seq->user;
      if (!q->r.prompt_logprobs) continue;
      for (int32_t k = 0; k < en->count && en->start + k + 1 < q->r.n_prompt; k++) {
        e->b_rows[nl + npl] = e->ent_tok[i] + k;
        e->pl_q[npl] = q;
        e->pl_pos[npl++] = en->start + k;
      }
    }
    const double t_fwd0 = ss_now_s();
    if (ss_trace_on())
      ss_trace_span("schedule", "sched", t_step, t_fwd0,
                    (ss_trace_arg[]){{"seqs", b.n_entries}, {"tokens", nt}, {"logits", nl}}, 3);
    rc = npl > 0 ? ensure_logit_rows(e, nl + npl) : SS_OK;
    if (rc) npl = 0; /* the step runs without them (lost: NaN) */
    rc = exec_all(e, &b, nt, nl + npl);
    int32_t n_failed = 0;
    if (rc && rc != SS_ERR_COMM) {
      npl = 0; /* run one by one below, without the prompt rows (lost: NaN) */
      char why[512];
      snprintf(why, sizeof why, "a forward step failed: %s", ss_error_msg());
      if (e->o.log)
        fprintf(e->o.log, "shardserve engine: step %llu (%d sequences, %d tokens) failed: %s; "
                "running its sequences one by one\n", (unsigned long long)e->steps + 1,
                b.n_entries, nt, why);
      rc = isolate_step(e, &b, why);
      if (rc >= 0) n_failed = rc, rc = SS_OK;
    }
    const double t = ss_now_s();
    pthread_mutex_lock(&e->mu);
    for (int32_t i = 0; i < b.n_entries; i++) {
      ereq *q = b.entries[i].seq->user;
      if (q->t_scheduled == 0) {
        /* Prompt tokens found in the prefix cache count as prompt tokens too. */
        prompt_tokens += (uint64_t)q->seq.n_cached;
        q->t_scheduled = t_sched;
        ss_histogram_observe(&e->h_queue, t_sched - q->t_arrival);
      }
    }
    if (rc) {
      /* A lost rank: nothing more can run.  Clients get a plain message; the
       * details (which rank, where) go to the log and the caller. */
      char msg[600];
      snprintf(msg, sizeof msg, "a forward step failed: %s", ss_error_msg());
      if (e->o.log) fprintf(e->o.log, "shardserve engine: %s\n", msg);
      ss_eng_fail_all_locked(e, "the server lost one of its ranks and is stopping; retry "
                             "once it has been restarted", &evs);
      e->state = SS_ENGINE_FAILED;
      publish_locked(e, &evs);
      pthread_mutex_unlock(&e->mu);
      if (e->notify) e->notify(e->notify_user);
      return ss_error(rc, "%s", msg);
    }
    /* The entries that failed alone end here (their blocks go back, nothing of
     * theirs is committed to the prefix cache); the others are committed. */
    ss_sched_batch ok = b;
    if (n_failed > 0) {
      e->step_failures_total++;
      ok.entries = e->ent_ok;
      ok.n_entries = 0;
      for (int32_t i = 0; i < b.n_entries; i++) {
        if (!e->ent_failed[i]) {
          ok.entries[ok.n_entries++] = b.entries[i];
          continue;
        }
        ereq *q = b.entries[i].seq->user;
        if (e->o.log)
          fprintf(e->o.log, "shardserve engine: request %lld failed: %s\n", (long long)q->id,
                  e->ent_why[i]);
        ss_eng_finish_locked(e, q, "error", e->ent_why[i], &evs);
      }
    }
    pthread_mutex_unlock(&e->mu);
    ss_sched_commit(&e->sched, &ok);
    e->steps++;
    e->stats_dirty = true;

    record_prompt_rows(e, nl, npl);
    fork_ready(e, &b, t_sched, &evs);

    /* Sample outside the lock, then publish. */
    SS_TRACE_BEGIN(t_sample);
    int32_t li = 0;
    uint64_t gen = 0;
    ereq **done_q = e->done_q;
    const char **done_r = e->done_r;
    double *itls = e->itls, *ttfts = e->ttfts;
    int32_t n_done = 0, n_itl = 0, n_ttft = 0;
    for (int32_t i = 0; i < b.n_entries; i++) {
      if (!b.entries[i].logits) continue;
      const float *row = e->logits + (size_t)li++ * e->m->cfg.vocab;
      if (e->ent_failed[i]) continue; /* ended above */
      ereq *q = b.entries[i].seq->user;
      if (q->r.max_new_tokens == 0) { /* prefill only: nothing to sample */
        q->t_first = q->t_last = t;
        done_q[n_done] = q;
        done_r[n_done++] = "length";
        continue;
      }
      /* q, then its forks made this step, each with its own sampler. */
      ereq *forks = e->ent_forks[i];
      e->ent_forks[i] = NULL;
      for (ereq *x = q; x;) {
        ereq *nx = x == q ? forks : x->fork_next;
        if (x != q) x->fork_next = NULL;
        double itl;
        const char *reason = ss_eng_sample_seq(e, x, row, &evs, t, &itl);
        gen++;
        if (x->n_generated == 1) ttfts[n_ttft++] = t - x->t_arrival;
        else if (itl >= 0) itls[n_itl++] = itl;
        if (reason) {
          done_q[n_done] = x;
          done_r[n_done++] = reason;
        }
        x = nx;
      }
    }
    if (ss_trace_on())
      ss_trace_span("sample", "compute", t_sample, ss_now_s(),
                    (ss_trace_arg[]){{"tokens", (int64_t)gen}}, 1);
    pthread_mutex_lock(&e->mu);
    for (int32_t i = 0; i < n_done; i++) ss_eng_finish_locked(e, done_q[i], done_r[i], NULL, &evs);
    for (int32_t i = 0; i < n_ttft; i++) ss_histogram_observe(&e->h_ttft, ttfts[i]);
    for (int32_t i = 0; i < n_itl; i++) ss_histogram_observe(&e->h_itl, itls[i]);
    e->prompt_tokens_total += prompt_tokens;
    e->generation_tokens_total += gen;
    publish_locked(e, &evs);
    pthread_mutex_unlock(&e->mu);
    if (e->notify) e->notify(e->notify_user);
    ss_eng_step_log(e, t_sched, &ok, attended, kv_read, t_fwd0, t);
    stats_line(e);
    if (ss_trace_on())
      ss_trace_span("step", "sched", t_step, ss_now_s(),
                    (ss_trace_arg[]){{"step", (int64_t)e->steps}, {"seqs", b.n_entries},
                                     {"tokens", nt}}, 3);
    if (e->o.stats_every > 0 && e->steps % (uint64_t)e->o.stats_every == 0) {
      ss_eng_gather_rank_stats(e);
      e->stats_dirty = false;
    }
  }
  ss_eng_gather_rank_stats(e);
  return rc;
}

