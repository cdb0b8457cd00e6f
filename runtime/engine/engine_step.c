/* One engine step, issued and ended: the batch the scheduler picked into the
 * executor's arrays, the forward pass begun (under pipeline parallelism
 * several are in flight; the step's copy-on-write copies go with it), then,
 * in issue order, its logits, the commit, the prompt-logprob rows, the forks
 * of the requests whose prompt it completed, sampling and events; a step
 * that fails is run again one sequence at a time, so that a failure one
 * request causes ends only that request. */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/base/clock.h"
#include "runtime/base/status.h"
#include "runtime/base/trace.h"
#include "runtime/engine/engine_internal.h"
#include "runtime/engine/executor.h"

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
static void record_prompt_rows(ss_engine *e, const eng_flight *f) {
  const int32_t V = e->m->cfg.vocab, nl = f->nl, npl = f->npl;
  for (int32_t j = 0; j < npl; j++) {
    ereq *q = f->pl_q[j];
    const int32_t n = q->r.n_prompt - 1, k = q->r.n_top_logprobs, p = f->pl_pos[j];
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

/* Issues the step whose tokens are in the engine's batch arrays, its
 * copy-on-write copies with it (the step message carries them down the
 * pipeline: every stage runs them before its share of this step). */
static int exec_begin(ss_engine *e, eng_flight *f, int32_t nt, int32_t nl) {
  const ss_sched_batch *b = &f->b;
  int rc = debug_check(e, b->entries, b->n_entries);
  if (rc) return rc;
  for (int32_t i = 0; i < b->n_copies; i++) {
    f->cp_src[i] = b->copies[i].src;
    f->cp_dst[i] = b->copies[i].dst;
  }
  ss_batch fb = {.n = nt, .tokens = e->b_tokens, .loc = {.n = nt, .pos = e->b_pos,
                 .block_table = e->b_tab}, .n_logits = nl, .logit_rows = e->b_rows,
                 .n_copies = b->n_copies, .copy_src = f->cp_src, .copy_dst = f->cp_dst};
  return ss_exec_step_begin(e->m, &e->st, &e->kv, &fb, e->logits);
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

/* Whether entry i of the step f that has just been committed completed its
 * request's prompt and has forks waiting.  A failed entry's request has
 * ended (and is freed) before this runs: its failure is checked first. */
static bool fork_now(const eng_flight *f, const bool *failed, int32_t i) {
  if (!f->b.entries[i].logits || (failed && failed[i])) return false;
  const ereq *q = f->b.entries[i].seq->user;
  return q->forks && q->n_generated == 0 && q->seq.n_computed == q->seq.n_tokens;
}

/* After step f is committed: every request whose prompt the step completed
 * starts its waiting forks, which share its blocks (ss_sched_fork) and sample
 * their first token from its logits row (f->forks[i] lists them for the
 * step's sampling).  The parent is in no step in flight (its one step is f),
 * and from here each fork is a running sequence like any other, for the
 * steps built after this one.  A fork that cannot run now (max_num_seqs) is
 * queued as a request of its own.  failed: per entry, or NULL when none
 * failed. */
static void fork_ready(ss_engine *e, eng_flight *f, const bool *failed, ev_list *evs) {
  const ss_sched_batch *b = &f->b;
  bool any = false;
  for (int32_t i = 0; i < b->n_entries; i++) {
    f->forks[i] = NULL;
    any = any || fork_now(f, failed, i);
  }
  if (!any) return; /* (the fork lists change only on this thread) */
  pthread_mutex_lock(&e->mu);
  for (int32_t i = 0; i < b->n_entries; i++) {
    if (!fork_now(f, failed, i)) continue;
    ereq *q = b->entries[i].seq->user;
    ereq **tail = &f->forks[i];
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
      c->t_scheduled = f->t_sched;
      ss_histogram_observe(&e->h_queue, f->t_sched - c->t_arrival);
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

/* A lost rank: nothing more can run.  Clients get a plain message; the
 * details (which rank, where) go to the log and the caller. */
static int engine_fail(ss_engine *e, int rc) {
  char msg[600];
  snprintf(msg, sizeof msg, "a forward step failed: %s", ss_error_msg());
  if (e->o.log) fprintf(e->o.log, "shardserve engine: %s\n", msg);
  ev_list evs = {0};
  pthread_mutex_lock(&e->mu);
  ss_eng_fail_all_locked(e, "the server lost one of its ranks and is stopping; retry "
                         "once it has been restarted", &evs);
  e->state = SS_ENGINE_FAILED;
  ss_eng_publish_locked(e, &evs);
  pthread_mutex_unlock(&e->mu);
  if (e->notify) e->notify(e->notify_user);
  return ss_error(rc, "%s", msg);
}

/* Schedules and issues one step into the next free flight slot.  Returns 1
 * when a step was issued, 0 when the scheduler had nothing to run, or a
 * failure that ended the engine (engine_fail). */
int ss_eng_issue_step(ss_engine *e) {
  eng_flight *f = &e->fl[(e->fl_head + e->n_fl) % e->microbatches];
  SS_TRACE_BEGIN(t_step);
  ss_sched_batch sb;
  ss_sched_step(&e->sched, &sb);
  if (sb.n_entries == 0) return 0;
  ss_sched_entry *entries = f->b.entries;
  memcpy(entries, sb.entries, (size_t)sb.n_entries * sizeof *entries);
  ss_sched_copy *copies = f->b.copies;
  memcpy(copies, sb.copies, (size_t)sb.n_copies * sizeof *copies);
  f->b = sb;
  f->b.entries = entries;
  f->b.copies = copies;
  const ss_sched_batch *b = &f->b;
  f->t_step = t_step;
  f->t_sched = ss_now_s();
  f->no = ++e->n_issued;
  f->rc = SS_OK;
  int32_t nt = 0, nl = 0;
  uint64_t prompt_tokens = 0;
  ss_sched_batch_attention(b, &f->attended, &f->kv_read);
  for (int32_t i = 0; i < b->n_entries; i++) {
    const ss_sched_entry *en = &b->entries[i];
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
  for (int32_t i = 0; i < b->n_entries; i++) {
    const ss_sched_entry *en = &b->entries[i];
    ereq *q = en->seq->user;
    if (!q->r.prompt_logprobs) continue;
    for (int32_t k = 0; k < en->count && en->start + k + 1 < q->r.n_prompt; k++) {
      e->b_rows[nl + npl] = e->ent_tok[i] + k;
      f->pl_q[npl] = q;
      f->pl_pos[npl++] = en->start + k;
    }
  }
  f->t_fwd0 = ss_now_s();
  if (ss_trace_on())
    ss_trace_span("schedule", "sched", t_step, f->t_fwd0,
                  (ss_trace_arg[]){{"seqs", b->n_entries}, {"tokens", nt}, {"logits", nl}}, 3);
  int rc = npl > 0 ? ensure_logit_rows(e, nl + npl) : SS_OK;
  if (rc) npl = 0; /* the step runs without them (lost: NaN) */
  rc = exec_begin(e, f, nt, nl + npl);
  f->nt = nt;
  f->nl = nl;
  f->npl = npl;
  f->prompt_tokens = prompt_tokens;
  e->n_fl++;
  if (rc == SS_ERR_COMM) return engine_fail(e, rc);
  if (rc) {
    /* Nothing went to the other ranks: the step is run again one sequence at
     * a time when its turn to end comes (no step is issued after it). */
    f->rc = rc;
    snprintf(f->why, sizeof f->why, "a forward step failed: %s", ss_error_msg());
  }
  if (ss_trace_on() && e->microbatches > 1)
    ss_trace_span("step", "sched", t_step, ss_now_s(),
                  (ss_trace_arg[]){{"step", (int64_t)f->no}, {"seqs", b->n_entries},
                                   {"tokens", nt}}, 3);
  return 1;
}

/* Ends the oldest step in flight: its logits, the commit, sampling, events. */
int ss_eng_finish_step(ss_engine *e) {
  eng_flight *f = &e->fl[e->fl_head];
  const ss_sched_batch *b = &f->b;
  SS_TRACE_BEGIN(t_end);
  int32_t n_failed = 0;
  int rc = f->rc ? SS_OK : ss_exec_step_end(e->m, f->nl + f->npl, e->logits);
  e->fl_head = (e->fl_head + 1) % e->microbatches;
  e->n_fl--;
  if (rc) return engine_fail(e, rc);
  if (f->rc) {
    SS_ASSERT(e->n_fl == 0); /* the newest: its batch arrays are still in place */
    f->npl = 0; /* run one by one below, without the prompt rows (lost: NaN) */
    if (e->o.log)
      fprintf(e->o.log, "shardserve engine: step %llu (%d sequences, %d tokens) failed: %s; "
              "running its sequences one by one\n", (unsigned long long)e->steps + 1,
              b->n_entries, f->nt, f->why);
    rc = isolate_step(e, b, f->why);
    if (rc == SS_ERR_COMM) return engine_fail(e, rc);
    n_failed = rc;
  }
  uint64_t prompt_tokens = f->prompt_tokens;
  ev_list evs = {0};
  const double t = ss_now_s();
  pthread_mutex_lock(&e->mu);
  for (int32_t i = 0; i < b->n_entries; i++) {
    ereq *q = b->entries[i].seq->user;
    if (q->t_scheduled == 0) {
      /* Prompt tokens found in the prefix cache count as prompt tokens too. */
      prompt_tokens += (uint64_t)q->seq.n_cached;
      q->t_scheduled = f->t_sched;
      ss_histogram_observe(&e->h_queue, f->t_sched - q->t_arrival);
    }
  }
  /* The entries that failed alone end here (their blocks go back, nothing of
   * theirs is committed to the prefix cache); the others are committed. */
  ss_sched_batch ok = *b;
  if (n_failed > 0) {
    e->step_failures_total++;
    ok.entries = e->ent_ok;
    ok.n_entries = 0;
    for (int32_t i = 0; i < b->n_entries; i++) {
      if (!e->ent_failed[i]) {
        ok.entries[ok.n_entries++] = b->entries[i];
        continue;
      }
      ereq *q = b->entries[i].seq->user;
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

  record_prompt_rows(e, f);
  fork_ready(e, f, n_failed > 0 ? e->ent_failed : NULL, &evs);

  /* Sample outside the lock, then publish. */
  SS_TRACE_BEGIN(t_sample);
  int32_t li = 0;
  uint64_t gen = 0;
  ereq **done_q = e->done_q;
  const char **done_r = e->done_r;
  double *itls = e->itls, *ttfts = e->ttfts;
  int32_t n_done = 0, n_itl = 0, n_ttft = 0;
  for (int32_t i = 0; i < b->n_entries; i++) {
    if (!b->entries[i].logits) continue;
    const float *row = e->logits + (size_t)li++ * e->m->cfg.vocab;
    if (n_failed > 0 && e->ent_failed[i]) continue; /* ended above */
    ereq *q = b->entries[i].seq->user;
    if (q->r.max_new_tokens == 0) { /* prefill only: nothing to sample */
      q->t_first = q->t_last = t;
      done_q[n_done] = q;
      done_r[n_done++] = "length";
      continue;
    }
    /* q, then its forks made this step, each with its own sampler. */
    ereq *forks = f->forks[i];
    f->forks[i] = NULL;
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
  ss_eng_publish_locked(e, &evs);
  pthread_mutex_unlock(&e->mu);
  if (e->notify) e->notify(e->notify_user);
  ss_eng_step_log(e, f->t_sched, &ok, f->attended, f->kv_read, f->t_fwd0, t);
  stats_line(e);
  if (ss_trace_on()) {
    /* One step's span from scheduling to publishing; with steps in flight,
     * its issue and its end are two spans (others run in between). */
    if (e->microbatches > 1)
      ss_trace_span("step end", "sched", t_end, ss_now_s(),
                    (ss_trace_arg[]){{"step", (int64_t)f->no}, {"seqs", b->n_entries},
                                     {"tokens", f->nt}}, 3);
    else
      ss_trace_span("step", "sched", f->t_step, ss_now_s(),
                    (ss_trace_arg[]){{"step", (int64_t)e->steps}, {"seqs", b->n_entries},
                                     {"tokens", f->nt}}, 3);
  }
  if (e->o.stats_every > 0 && e->steps % (uint64_t)e->o.stats_every == 0) e->stats_due = true;
  return SS_OK;
}

