/* What the engine hands back for a request: its sampled tokens, their text
 * (streamed whole characters, stop strings held back and cut), the TOKEN and
 * DONE events, and the end of the request. */
#include <stdlib.h>
#include <string.h>

#include "runtime/base/clock.h"
#include "runtime/base/status.h"
#include "runtime/engine/engine_internal.h"
#include "runtime/engine/stop.h"
#include "runtime/grammar/grammar.h"

void ss_eng_req_free(ereq *q) {
  if (!q) return;
  free(q->r.prompt);
  for (int i = 0; i < q->r.n_stop; i++) free(q->r.stop[i]);
  ss_engine_req_sampling_free(&q->r.sampling);
  ss_sampler_free(&q->smp);
  ss_grammar_state_free(q->r.grammar);
  free(q->tokens);
  free(q->seq.blocks);
  ss_strbuf_free(&q->text);
  free(q->plp);
  free(q->ptop_ids);
  free(q->ptop_lp);
  free(q);
}

void ss_engine_event_free(ss_engine_event *ev) {
  if (!ev) return;
  free(ev->text);
  free(ev->top_ids);
  free(ev->top_logprobs);
  free(ev->prompt_lp);
  free(ev->prompt_top_ids);
  free(ev->prompt_top_lp);
  free(ev->error);
  free(ev);
}

void ss_eng_ev_push(ev_list *l, ss_engine_event *ev) {
  if (l->tail) l->tail->next = ev;
  else l->head = ev;
  l->tail = ev;
}

ss_engine_event *ss_eng_done_event(const ereq *q, const char *reason, const char *error) {
  ss_engine_event *ev = calloc(1, sizeof *ev);
  if (!ev) return NULL;
  ev->kind = SS_ENGINE_DONE;
  ev->id = q->id;
  ev->user = q->r.user;
  ev->finish_reason = reason;
  ev->error = error ? strdup(error) : NULL;
  ev->n_prompt = q->r.n_prompt;
  ev->n_cached = q->seq.n_cached;
  ev->n_generated = q->n_generated;
  if (q->t_scheduled > 0) ev->queue_s = q->t_scheduled - q->t_arrival;
  if (q->t_first > 0) {
    ev->prefill_s = q->t_first - q->t_scheduled;
    ev->decode_s = q->t_last - q->t_first;
  }
  return ev;
}

/* The token's logprob and its top alternatives, computed from the raw logits
 * in the engine's scratch. */
static void add_logprobs(ss_engine *e, const ereq *q, const float *logits, ss_engine_event *ev) {
  const int32_t n_vocab = e->m->cfg.vocab;
  ev->logprob = ss_logprob_of(logits, n_vocab, ev->token);
  const int32_t k = q->r.n_top_logprobs;
  if (k <= 0) return;
  ev->top_ids = malloc((size_t)k * sizeof *ev->top_ids);
  ev->top_logprobs = malloc((size_t)k * sizeof *ev->top_logprobs);
  if (!ev->top_ids || !ev->top_logprobs) {
    free(ev->top_ids);
    free(ev->top_logprobs);
    ev->top_ids = NULL;
    ev->top_logprobs = NULL;
    return;
  }
  ev->n_top = k;
  ss_top_logprobs(&e->scratch, logits, k, ev->top_ids, ev->top_logprobs);
}

const char *ss_eng_sample_seq(ss_engine *e, ereq *q, const float *logits, ev_list *out, double t,
                              double *itl) {
  /* The request's own logits (bias, penalties, masks), then its grammar's
   * mask, then the draw; the logprobs reported are those of the model's
   * logits. */
  const ss_sampler_seq sq = {.tokens = q->tokens, .n_prompt = q->r.n_prompt,
                             .n_generated = q->n_generated,
                             .eog = q->r.ignore_eos ? NULL : e->eog,
                             .n_eog = q->r.ignore_eos ? 0 : e->n_eog};
  const float *l = ss_sampler_process(&q->smp, &e->scratch, logits, &sq);
  const float *allowed = ss_eng_grammar_mask(e, q, l);
  if (!allowed) return "stop"; /* the constraint allows no token at all */
  ss_engine_event *ev = calloc(1, sizeof *ev);
  const int32_t tok = ss_sampler_sample(&q->smp, &e->scratch, allowed);
  const bool grammar_done = ss_eng_grammar_accept(e, q, tok);
  q->tokens[q->seq.n_tokens++] = tok;
  q->n_generated++;
  *itl = q->n_generated > 1 ? t - q->t_last : -1.0;
  if (q->n_generated == 1) q->t_first = t;
  q->t_last = t;
  const bool eog = (!q->r.ignore_eos && ss_model_is_eog(e->m, tok)) ||
                   ss_sampler_is_stop_id(&q->smp, tok);
  const bool at_limit = q->n_generated >= q->r.max_new_tokens;
  const bool end = eog || at_limit || grammar_done;
  char piece[SS_DETOK_MIN_CAP];
  size_t np = eog ? 0 : ss_detok_push(&q->dt, tok, piece, sizeof piece);
  if (end) np += ss_detok_flush(&q->dt, piece + np, sizeof piece - np);
  ss_strbuf_append(&q->text, piece, np);
  if (!q->text.p) ss_strbuf_append(&q->text, "", 0);
  bool stop_found = false;
  size_t cut = q->text.len;
  size_t show = ss_stop_scan(q->text.p ? q->text.p : "", q->text.len, q->emitted,
                             (const char *const *)q->r.stop, (size_t)q->r.n_stop, &stop_found, &cut);
  if (end && !stop_found) show = q->text.len;
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
    if (q->r.logprobs) add_logprobs(e, q, logits, ev);
    if (q->r.prompt_logprobs && q->n_generated == 1) {
      ev->n_prompt_lp = q->r.n_prompt - 1;
      ev->prompt_lp = q->plp;
      ev->prompt_top_ids = q->ptop_ids;
      ev->prompt_top_lp = q->ptop_lp;
      q->plp = NULL;
      q->ptop_ids = NULL;
      q->ptop_lp = NULL;
    }
    ev->n_prompt = q->r.n_prompt;
    ev->n_generated = q->n_generated;
    ss_eng_ev_push(out, ev);
  }
  q->emitted = show;
  if (stop_found) return "stop";
  if (eog) return "stop";
  if (at_limit && !grammar_done) return "length";
  if (grammar_done) return "stop";
  return NULL;
}

void ss_eng_release_forks_locked(ss_engine *e, ereq *q, ev_list *out) {
  while (q->forks) {
    ereq *c = q->forks;
    q->forks = c->fork_next;
    c->fork_next = c->fork_parent = NULL;
    if (ss_sched_add(&e->sched, &c->seq)) {
      /* Checked at submit: only a bug gets here. */
      c->seq.state = SS_SEQ_FINISHED;
      ss_engine_event *ev = ss_eng_done_event(c, "error", ss_error_msg());
      if (ev) ss_eng_ev_push(out, ev);
      e->success_error++;
      ss_eng_req_free(c);
    }
  }
}

void ss_eng_finish_locked(ss_engine *e, ereq *q, const char *reason, const char *error,
                          ev_list *out) {
  if (q->fork_parent) {
    /* Still waiting for its fork: off its parent's list. */
    ereq **pp = &q->fork_parent->forks;
    while (*pp != q) pp = &(*pp)->fork_next;
    *pp = q->fork_next;
    q->fork_next = q->fork_parent = NULL;
  }
  /* Ending before its prompt was computed: its forks go on without it. */
  ss_eng_release_forks_locked(e, q, out);
  ss_sched_finish(&e->sched, &q->seq);
  ss_eng_metrics_finish_locked(e, q, reason, ss_now_s());
  ss_engine_event *ev = ss_eng_done_event(q, reason, error);
  if (ev) ss_eng_ev_push(out, ev);
  ss_eng_req_free(q);
}

void ss_eng_fail_all_locked(ss_engine *e, const char *msg, ev_list *out) {
  ss_sched_seq *q;
  while ((q = e->sched.running.head)) ss_eng_finish_locked(e, q->user, "error", msg, out);
  while ((q = e->sched.waiting.head)) ss_eng_finish_locked(e, q->user, "error", msg, out);
  for (ereq *r = e->in_head; r;) {
    ereq *n = r->next;
    ss_engine_event *ev = ss_eng_done_event(r, "error", msg);
    if (ev) ss_eng_ev_push(out, ev);
    e->success_error++;
    ss_eng_req_free(r);
    r = n;
  }
  e->in_head = e->in_tail = NULL;
  e->n_in = 0;
}

