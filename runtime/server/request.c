/* A generation request's life: prepared (JSON, fields, chat template,
 * tokenizer) on a libuv threadpool worker so that the loop keeps streaming,
 * then submitted on the loop and answered from the engine's events. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "runtime/base/status.h"
#include "runtime/server/api_internal.h"

/* Threads and lifetimes.  The loop thread makes the api_req, copies the body
 * into it and queues prepare() with uv_queue_work; from then until prepared()
 * runs on the loop, the worker alone writes q->ok, q->g and q->e, and the loop
 * touches only q->conn (libuv orders the worker's writes before prepared()).
 * The worker reads nothing shared but the model's tokenizer and the chat
 * template, which no one writes while the server runs (the tokenizer keeps its
 * per-call state, PCRE2 match data included, on the call's own stack and
 * heap).  A client that leaves meanwhile only clears q->conn (and cancels the
 * work if no worker has started it); prepared() then frees the request without
 * answering.  prepared() also submits to the engine: ss_engine_submit is a
 * bounded check and a copy, and submitting from the loop means no engine event
 * can reach a request before its stream has begun.
 *
 * Shutdown.  A queued work request keeps uv_run from returning, so the loop,
 * and with it the model the workers read, outlives every preparation.  When the
 * engine has exited, the server closes (every connection, the listener, the
 * wake-up) only once no request is being prepared, so that each gets its
 * answer: the 503 that a request arriving after draining began gets.
 *
 * The threadpool is libuv's, which nothing else in the process uses; its size
 * is UV_THREADPOOL_SIZE (libuv's default, 4; see `shardserve serve --help`).
 * Four is plenty: preparing costs 2-13 us per token (SentencePiece on the test
 * machine; 4,000 tokens of long words, the dearest kind, take ~50 ms), so four
 * workers keep up with far more requests than the engine admits, and while
 * busy they take at most four cores from the forward pass. */

/* The server's list of submitted requests, which a lost rank answers at once. */
static void live_link(api_req *q) {
  ss_api *a = q->api;
  q->live_prev = NULL;
  q->live_next = a->live;
  if (a->live) a->live->live_prev = q;
  a->live = q;
  q->live_linked = true;
}

static void live_unlink(api_req *q) {
  if (!q->live_linked) return;
  if (q->live_prev) q->live_prev->live_next = q->live_next;
  else q->api->live = q->live_next;
  if (q->live_next) q->live_next->live_prev = q->live_prev;
  q->live_linked = false;
}

static void req_free(api_req *q) {
  live_unlink(q);
  free(q->body);
  for (int32_t i = 0; i < q->n_ch; i++) {
    api_choice *ch = &q->ch[i];
    ss_strbuf_free(&ch->text);
    json_decref(ch->lp);
    if (ch->has_pending) ss_oai_req_free(&ch->pending);
  }
  free(q->ch);
  free(q->g.echo);
  free(q->prompt_ids);
  json_decref(q->echo_lp);
  json_decref(q->result);
  free(q);
}

/* A malloc'ed copy of n elements of p (NULL for none); *ok false when out of memory. */
static void *dup_array(const void *p, int32_t n, size_t size, bool *ok) {
  if (!p || n <= 0) return NULL;
  void *c = malloc((size_t)n * size);
  if (c) memcpy(c, p, (size_t)n * size);
  else *ok = false;
  return c;
}

/* A copy of r that owns its own buffers (the engine takes each request's). */
static bool req_copy(const ss_engine_req *r, ss_engine_req *out) {
  *out = *r;
  out->prompt = NULL;
  out->n_stop = 0;
  out->sampling.bias = NULL;
  out->sampling.stop_ids = NULL;
  out->sampling.bad = NULL;
  out->grammar = NULL; /* n > 1 with a constraint is refused at parsing */
  out->prompt_logprobs = false; /* choice 0's serve every choice */
  bool ok = true;
  out->prompt = malloc((size_t)r->n_prompt * sizeof *r->prompt);
  if (out->prompt) memcpy(out->prompt, r->prompt, (size_t)r->n_prompt * sizeof *r->prompt);
  else ok = false;
  for (int i = 0; i < r->n_stop && ok; i++) {
    out->stop[i] = strdup(r->stop[i]);
    if (out->stop[i]) out->n_stop++;
    else ok = false;
  }
  out->sampling.bias = dup_array(r->sampling.bias, r->sampling.n_bias, sizeof *r->sampling.bias,
                                 &ok);
  out->sampling.stop_ids = dup_array(r->sampling.stop_ids, r->sampling.n_stop_ids,
                                     sizeof *r->sampling.stop_ids, &ok);
  out->sampling.bad = dup_array(r->sampling.bad, r->sampling.n_bad_ids, sizeof *r->sampling.bad,
                                &ok);
  if (!ok) ss_oai_req_free(out);
  return ok;
}

/* Once the engine's last events are answered (on_wake saw it exit) and no
 * request is being prepared: closes every handle so that the loop can end. */
static void close_when_done(ss_api *a) {
  if (!a->exit_answered || a->closed || a->n_preparing > 0) return;
  a->closed = true;
  ss_http_server_close(a->http);
  uv_close((uv_handle_t *)&a->wake, NULL);
}

/* ------------------------------------------------------------------------ */
/* Preparation                                                                */

/* On a worker thread. */
static void prepare(uv_work_t *w) {
  api_req *q = w->data;
  if (q->kind == API_COMPLETION || q->kind == API_CHAT)
    q->ok = ss_oai_parse_generate(&q->ctx, q->body, q->body_len, q->chat, &q->g, &q->e);
  else
    q->ok = ss_oai_utility(&q->ctx, q->kind, q->body, q->body_len, &q->result, &q->e);
}

/* Why a submission failed, as the status, the field and the message. */
static int submit_status(api_req *q, int rc, const char **param) {
  *param = NULL;
  if (rc == SS_ERR_BUSY) {
    q->api->n_queue_full++;
    return 429;
  }
  if (rc == SS_ERR_RANGE || rc == SS_ERR_INVALID) {
    if (strstr(ss_error_msg(), "shutting down")) return 503;
    q->api->n_client_errors++;
    *param = strstr(ss_error_msg(), "max_tokens") ? "max_tokens" : q->chat ? "messages" : "prompt";
    return 400;
  }
  return 503;
}

/* On the loop: hands the prepared request's choices to the engine at once,
 * each with its own copy of the request and its own seed (the others fork from
 * the first there: the prompt is computed once), and starts the answer. */
static void submit(api_req *q, ss_http_conn *c) {
  gen_fields *g = &q->g;
  q->stream = g->stream;
  q->include_usage = g->stream && g->include_usage;
  q->logprobs = g->user_logprobs;
  q->n_top = g->r.n_top_logprobs;
  q->tools = g->tools;
  q->created = time(NULL);
  q->t_submit = uv_hrtime();
  q->n_ret = g->n > 0 ? g->n : 1;
  q->n_ch = g->best_of > q->n_ret ? g->best_of : q->n_ret;
  q->ch = calloc((size_t)q->n_ch, sizeof *q->ch);
  bool ok = q->ch != NULL;
  if (ok && g->r.prompt_logprobs) {
    /* The prompt's tokens, for its logprobs (the engine takes g->r's). */
    q->prompt_ids = malloc((size_t)g->r.n_prompt * sizeof *q->prompt_ids);
    if (q->prompt_ids) {
      memcpy(q->prompt_ids, g->r.prompt, (size_t)g->r.n_prompt * sizeof *q->prompt_ids);
      q->n_prompt_ids = g->r.n_prompt;
    }
    ok = q->prompt_ids != NULL;
  }
  for (int32_t i = 0; ok && i < q->n_ch; i++) {
    api_choice *ch = &q->ch[i];
    ch->q = q;
    ch->text_offset = g->echo_len; /* logprobs' offsets are in the text with the echo */
    if (i == 0) continue;
    ok = req_copy(&g->r, &ch->pending);
    if (!ok) break;
    ch->has_pending = true;
    /* Choice i samples with the seed plus i (a client can ask for any
     * choice alone, with n = 1 and that seed). */
    ch->pending.sampling.seed = g->r.sampling.seed + (uint64_t)i;
    ch->pending.user = ch;
  }
  if (!ok) {
    ss_oai_send_error(c, 500, NULL, NULL, NULL, "out of memory");
    ss_oai_req_free(&g->r);
    req_free(q);
    return;
  }
  g->r.user = &q->ch[0];
  ss_engine_req *reqs = malloc((size_t)q->n_ch * sizeof *reqs);
  int64_t *ids = malloc((size_t)q->n_ch * sizeof *ids);
  int rc = SS_ERR_NOMEM;
  if (reqs && ids) {
    reqs[0] = g->r;
    for (int32_t i = 1; i < q->n_ch; i++) reqs[i] = q->ch[i].pending;
    rc = ss_engine_submit_group(q->engine, reqs, q->n_ch, ids);
  } else {
    ss_error(SS_ERR_NOMEM, "out of memory");
  }
  free(reqs);
  if (rc) {
    free(ids);
    const char *param;
    const int status = submit_status(q, rc, &param);
    ss_oai_send_error(c, status, param, status == 429 ? "queue_full" : NULL,
                      status == 429 ? "Retry-After: 1\r\n" : NULL, "%s", ss_error_msg());
    ss_oai_req_free(&g->r);
    req_free(q);
    return;
  }
  /* The engine owns every choice's prompt and stop strings now. */
  q->submitted = true;
  live_link(q);
  q->id = ids[0];
  for (int32_t i = 0; i < q->n_ch; i++) {
    api_choice *ch = &q->ch[i];
    ch->has_pending = false;
    ch->pending = (ss_engine_req){0};
    ch->submitted = true;
    ch->id = ids[i];
  }
  free(ids);
  q->n_live = q->n_ch;
  q->api->n_forked += (uint64_t)(q->n_ch - 1);
  snprintf(q->rid, sizeof q->rid, "%s-%lld", q->chat ? "chatcmpl" : "cmpl", (long long)q->id);
  if (q->stream) ss_http_stream_begin(c, 200, "text/event-stream");
}


/* Every submitted choice that has not ended stops; the waiting ones are dropped. */
static void stop_choices(api_req *q) {
  for (int32_t i = 0; i < q->n_ch; i++) {
    api_choice *ch = &q->ch[i];
    if (ch->has_pending) {
      ss_oai_req_free(&ch->pending);
      ch->has_pending = false;
    }
    if (ch->submitted && !ch->done) ss_engine_abort(q->engine, ch->id);
  }
}

/* On the loop: answers a prepared request, or submits it. */
static void answer_prepared(api_req *q, int status) {
  ss_api *a = q->api;
  free(q->body);
  q->body = NULL;
  ss_http_conn *c = q->conn; /* the server does not close while a request is prepared */
  const bool generate = q->kind == API_COMPLETION || q->kind == API_CHAT;
  if (status == UV_ECANCELED || !c) {
    /* The client has gone (counted in on_client_gone): nobody to answer. */
    if (q->ok && generate) ss_oai_req_free(&q->g.r);
    req_free(q);
    return;
  }
  if (!q->ok) {
    const parse_err *e = &q->e;
    ss_oai_send_error(c, e->status, e->param, e->status == 404 ? "model_not_found" : NULL, NULL,
                      "%s", e->msg);
    /* Every refused generation request counts, a body that is not a JSON
     * object included. */
    if (generate && e->status >= 400 && e->status < 500) a->n_client_errors++;
    req_free(q);
    return;
  }
  if (!generate) {
    /* A utility request: its answer is ready. */
    json_t *r = q->result;
    q->result = NULL;
    ss_oai_send_json(c, 200, r, "");
    req_free(q);
    return;
  }
  if (!ss_api_check_serving(a, c, q->engine)) {
    ss_oai_req_free(&q->g.r);
    req_free(q);
    return;
  }
  submit(q, c);
}

/* On the loop, once the worker is done (status 0) or the work was cancelled
 * before a worker took it (UV_ECANCELED: q->ok is false, q->g empty). */
static void prepared(uv_work_t *w, int status) {
  api_req *q = w->data;
  ss_api *a = q->api;
  a->n_preparing--;
  answer_prepared(q, status);
  /* The engine may have exited meanwhile: this was what the close waited for. */
  close_when_done(a);
}

void ss_api_generate(ss_api *a, ss_http_conn *c, const ss_http_request *req, api_kind kind,
                     ss_engine *eng, const ss_model *m) {
  const bool chat = kind == API_CHAT;
  if (req->body_len == 0) {
    if (kind == API_COMPLETION || kind == API_CHAT) a->n_client_errors++;
    ss_oai_send_error(c, 400, NULL, NULL, NULL,
                      "the request has no body: a JSON object is expected");
    return;
  }
  api_req *q = calloc(1, sizeof *q);
  char *body = malloc(req->body_len + 1);
  if (!q || !body) {
    free(q);
    free(body);
    ss_oai_send_error(c, 500, NULL, NULL, NULL, "out of memory");
    return;
  }
  /* The worker reads a copy: the connection, and its buffer, may be gone
   * before the worker is done. */
  memcpy(body, req->body, req->body_len);
  body[req->body_len] = 0;
  q->api = a;
  q->conn = c;
  q->t_arrive = uv_hrtime();
  q->chat = chat;
  q->kind = kind;
  q->body = body;
  q->body_len = req->body_len;
  q->engine = eng;
  q->ctx = (gen_ctx){.model_name = a->model_name, .default_max_tokens = a->o.default_max_tokens,
                     .n_ctx = ss_engine_n_ctx(eng), .max_prompt_nbytes = a->o.max_prompt_nbytes,
                     .parse_special_in_content = a->o.parse_special_in_content,
                     .m = m, .tmpl = a->tmpl,
                     .no_tmpl_why = a->tmpl_why};
  q->work.data = q;
  if (uv_queue_work(a->loop, &q->work, prepare, prepared) != 0) {
    req_free(q);
    ss_oai_send_error(c, 500, NULL, NULL, NULL, "cannot queue the request for preparation");
    return;
  }
  a->n_preparing++;
  /* From here a client that leaves is reported with q. */
  ss_http_conn_set_user(c, q);
}

/* ------------------------------------------------------------------------ */
/* Events from the engine                                                     */

/* The access log's line: its queue and time to first token count the
 * preparation (on a worker) as well as the engine's queue (choice 0's); its
 * tokens are every choice's so far. */
static void set_log(api_req *q) {
  const api_choice *c0 = &q->ch[0];
  int32_t n_gen = 0;
  for (int32_t i = 0; i < q->n_ch; i++) n_gen += q->ch[i].n_generated;
  const double prep_ms = (double)(q->t_submit - q->t_arrive) / 1e6;
  ss_http_conn_set_log(q->conn, q->g.r.n_prompt, n_gen, prep_ms + c0->queue_s * 1e3,
                       n_gen > 0 ? prep_ms + (c0->queue_s + c0->prefill_s) * 1e3 : -1);
}

void ss_api_on_wake(uv_async_t *h) {
  ss_api *a = h->data;
  if (a->lost_probe && !a->lost) a->lost_probe(a->lost_probe_user);
  pthread_mutex_lock(&a->mu);
  ss_engine *eng = a->engine;
  const ss_model *m = a->model;
  /* Read before taking the events: an engine that has exited published its
   * last events before saying so, so this call takes them all. */
  const bool exited = a->engine_exited;
  pthread_mutex_unlock(&a->mu);
  if (eng) {
    ss_engine_event *ev = ss_engine_take_events(eng);
    while (ev) {
      ss_engine_event *next = ev->next;
      api_choice *ch = ev->user;
      api_req *q = ch->q;
      const bool done = ev->kind == SS_ENGINE_DONE;
      const bool failed = done && (strcmp(ev->finish_reason, "abort") == 0 ||
                                   strcmp(ev->finish_reason, "error") == 0);
      if (!ch->started) {
        ch->started = true;
        if (ch == &q->ch[0] && (!q->conn || q->answered || failed)) stop_choices(q);
      }
      if (done) {
        ch->done = true;
        q->n_live--;
        snprintf(ch->finish, sizeof ch->finish, "%s", ev->finish_reason);
        ch->n_prompt = ev->n_prompt;
        ch->n_cached = ev->n_cached;
        ch->n_generated = ev->n_generated;
        ch->queue_s = ev->queue_s;
        ch->prefill_s = ev->prefill_s;
      }
      if (q->conn && !q->answered) {
        if (!done) {
          ss_oai_on_token(q, ch, m, ev);
        } else if (failed) {
          set_log(q);
          const bool abort = strcmp(ev->finish_reason, "abort") == 0;
          ss_oai_answer_error(q, abort ? 503 : 500, abort ? "server_shutdown" : NULL,
                              abort ? ss_oai_drained_msg : ev->error ? ev->error : "engine error");
          q->answered = true;
          stop_choices(q);
        } else {
          ss_oai_choice_done(q, ch);
        }
        bool all = true;
        for (int32_t i = 0; i < q->n_ch && all; i++) all = q->ch[i].done;
        if (all && !q->answered) {
          set_log(q);
          ss_oai_finish(q);
          q->answered = true;
        }
      }
      if (done && q->n_live == 0) {
        stop_choices(q); /* drops any still waiting */
        req_free(q);
      }
      ss_engine_event_free(ev);
      ev = next;
    }
  }
  if (exited) a->exit_answered = true;
  close_when_done(a);
}

/* The HTTP layer says a client left before its response was complete. */
void ss_api_on_client_gone(void *user, void *conn_user) {
  ss_api *a = user;
  api_req *q = conn_user;
  q->conn = NULL;
  a->n_aborted_by_client++;
  if (!q->submitted) {
    /* Still being prepared: a worker that has not started it never will
     * (uv_cancel fails harmlessly otherwise); prepared() frees it. */
    uv_cancel((uv_req_t *)&q->work);
    return;
  }
  pthread_mutex_lock(&a->mu);
  ss_engine *eng = a->engine;
  pthread_mutex_unlock(&a->mu);
  if (eng) stop_choices(q);
}

void ss_api_on_congestion(void *user, void *conn_user, bool congested) {
  ss_api *a = user;
  api_req *q = conn_user;
  if (!q->submitted || !q->stream) return;
  pthread_mutex_lock(&a->mu);
  ss_engine *eng = a->engine;
  pthread_mutex_unlock(&a->mu);
  if (eng) ss_engine_pause(eng, q->id, congested);
}

/* ------------------------------------------------------------------------ */
/* A lost rank                                                                */

void ss_api_fail_lost(ss_api *a, const char *msg) {
  if (!a->lost) {
    a->lost = true;
    snprintf(a->lost_msg, sizeof a->lost_msg, "%s", msg);
  }
  /* Nothing the engine holds can finish, and its thread may be held inside
   * the communicator, so the answers go out from here.  The engine is not
   * called (its events, if any come, find the requests answered). */
  for (api_req *q = a->live; q; q = q->live_next) {
    if (!q->conn || q->answered) continue;
    set_log(q);
    ss_oai_answer_error(q, 500, NULL, a->lost_msg);
    q->answered = true;
    /* The response is complete: the connection may carry the client's next
     * request (or close), so this one lets go of it. */
    q->conn = NULL;
  }
}
