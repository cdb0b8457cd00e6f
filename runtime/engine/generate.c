/* Offline generation (runtime/engine/generate.h): one request submitted to an
 * engine sized for it, the engine run on this thread, its events turned into
 * the callback's steps and the result. */
#include "runtime/engine/generate.h"

#include <stdlib.h>
#include <string.h>

#include "runtime/base/metrics.h"
#include "runtime/base/status.h"
#include "runtime/engine/engine.h"

#define GEN_BLOCK_SIZE 16
#define GEN_PREFILL_CHUNK 256

/* What the event handler needs; it runs on this thread, inside ss_engine_run. */
typedef struct gen_run {
  ss_engine *e;
  int64_t id;
  ss_gen_callback cb;
  void *user;
  ss_gen_result *res;
  int32_t cap_tokens;
  ss_strbuf text;
  bool aborted;           /* the callback asked to stop */
  bool oom;
  char *error;            /* a DONE "error" event's message */
} gen_run;

static void on_token(gen_run *g, const ss_engine_event *ev) {
  ss_gen_result *res = g->res;
  if (res->n_generated == g->cap_tokens) {
    int32_t cap = g->cap_tokens ? 2 * g->cap_tokens : 64;
    int32_t *t = realloc(res->tokens, (size_t)cap * sizeof *t);
    if (!t) {
      g->oom = true;
      return;
    }
    res->tokens = t;
    g->cap_tokens = cap;
  }
  res->tokens[res->n_generated++] = ev->token;
  ss_strbuf_append(&g->text, ev->text ? ev->text : "", ev->text_len);
  ss_gen_step gs = {.index = res->n_generated - 1, .token = ev->token,
                    .text = ev->text ? ev->text : "", .text_len = ev->text_len,
                    .n_top = ev->n_top, .top_ids = ev->top_ids,
                    .top_logprobs = ev->top_logprobs};
  if (g->cb && g->cb(g->user, &gs) && !g->aborted) {
    g->aborted = true;
    ss_engine_abort(g->e, g->id);
  }
}

static void on_done(gen_run *g, const ss_engine_event *ev) {
  ss_gen_result *res = g->res;
  res->finish_reason = ev->finish_reason;
  res->prefill_ms = ev->prefill_s * 1e3;
  res->decode_ms = ev->decode_s * 1e3;
  res->n_decode_steps = res->n_generated > 0 ? res->n_generated - 1 : 0;
  if (ev->error && !g->error) g->error = strdup(ev->error);
  /* The only request is over: the engine returns from its loop. */
  ss_engine_stop(g->e, 0);
}

/* The engine's notify: called on this thread after each step's events. */
static void on_events(void *arg) {
  gen_run *g = arg;
  for (ss_engine_event *ev = ss_engine_take_events(g->e); ev;) {
    ss_engine_event *next = ev->next;
    if (ev->kind == SS_ENGINE_TOKEN) on_token(g, ev);
    else on_done(g, ev);
    ss_engine_event_free(ev);
    ev = next;
  }
}

void ss_gen_result_free(ss_gen_result *res) {
  free(res->tokens);
  free(res->text);
  memset(res, 0, sizeof *res);
}

/* The request in the engine's form: copies of the prompt and stop strings,
 * which the engine owns once submitted. */
static int make_req(const int32_t *prompt, int32_t n_prompt, const ss_gen_params *p,
                    int32_t n_vocab, ss_engine_req *r) {
  memset(r, 0, sizeof *r);
  if (p->n_stop > SS_ENGINE_MAX_STOP)
    return ss_error(SS_ERR_RANGE, "%zu stop strings; the limit is %d", p->n_stop,
                    SS_ENGINE_MAX_STOP);
  r->n_prompt = n_prompt;
  r->max_new_tokens = p->max_tokens;
  r->sampling = p->sampling;
  r->ignore_eos = p->ignore_eos;
  r->n_top_logprobs = p->n_top_logprobs < n_vocab ? p->n_top_logprobs : n_vocab;
  r->logprobs = r->n_top_logprobs > 0;
  r->prompt = malloc((n_prompt > 0 ? (size_t)n_prompt : 1) * sizeof *r->prompt);
  bool ok = r->prompt != NULL;
  if (ok && n_prompt > 0) memcpy(r->prompt, prompt, (size_t)n_prompt * sizeof *r->prompt);
  for (size_t i = 0; ok && i < p->n_stop; i++) ok = (r->stop[r->n_stop++] = strdup(p->stop[i]));
  return ok ? SS_OK : ss_error(SS_ERR_NOMEM, "generate: out of memory");
}

static void req_free(ss_engine_req *r) {
  free(r->prompt);
  for (int i = 0; i < r->n_stop; i++) free(r->stop[i]);
  memset(r, 0, sizeof *r);
}

int ss_generate(ss_model *m, ss_backend *be, const int32_t *prompt, int32_t n_prompt,
                const ss_gen_params *p, ss_gen_callback cb, void *user, ss_gen_result *res) {
  memset(res, 0, sizeof *res);
  const int32_t n_ctx = p->n_ctx > 0 ? p->n_ctx : m->cfg.n_ctx_train;
  const int64_t total = (int64_t)n_prompt + p->max_tokens;
  const int32_t chunk = p->prefill_chunk > 0 ? p->prefill_chunk : GEN_PREFILL_CHUNK;
  /* One sequence, a pool that holds exactly it, and batches no larger than the
   * prompt's chunks.  A request beyond the context gets a one-block pool: the
   * engine refuses it at submit with the context message. */
  ss_engine_opts o = {
      .max_num_seqs = 1,
      .max_batched_tokens = n_prompt > 0 && n_prompt < chunk ? n_prompt : chunk,
      .block_size = GEN_BLOCK_SIZE,
      .n_blocks = total > 0 && total <= n_ctx
                      ? (int32_t)((total + GEN_BLOCK_SIZE - 1) / GEN_BLOCK_SIZE) : 1,
      .n_ctx = p->n_ctx,
      .kv_dtype = p->kv_dtype,
      .fixed_ctx = true,
  };
  gen_run g = {.cb = cb, .user = user, .res = res};
  ss_engine_req r;
  int rc = make_req(prompt, n_prompt, p, m->cfg.vocab, &r);
  if (rc == SS_OK) rc = ss_engine_create(m, be, &o, on_events, &g, &g.e);
  if (rc == SS_OK) rc = ss_engine_submit(g.e, &r, &g.id);
  if (rc) {
    req_free(&r); /* the engine took nothing */
    ss_engine_free(g.e);
    return rc;
  }
  res->n_prompt = n_prompt;
  rc = ss_engine_run(g.e); /* the message of a failed step stays on this thread */
  ss_engine_free(g.e);
  if (rc == SS_OK && g.error) rc = ss_error(SS_ERR_INTERNAL, "%s", g.error);
  if (!g.text.p) ss_strbuf_append(&g.text, "", 0);
  if (rc == SS_OK && (g.oom || g.text.failed))
    rc = ss_error(SS_ERR_NOMEM, "generate: out of memory for the result");
  if (rc == SS_OK && !res->finish_reason)
    rc = ss_error(SS_ERR_INTERNAL, "generate: the engine stopped before the request ended");
  free(g.error);
  if (rc) {
    ss_strbuf_free(&g.text);
    ss_gen_result_free(res);
    return rc;
  }
  res->text = g.text.p;
  res->text_len = g.text.len;
  return SS_OK;
}
