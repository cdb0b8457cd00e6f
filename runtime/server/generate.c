/* A generation request's life: parsed (JSON, fields, chat template,
 * tokenizer), submitted to the engine, answered from the engine's events. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "runtime/base/status.h"
#include "runtime/server/api_internal.h"

static void req_free(api_req *q) {
  ss_strbuf_free(&q->text);
  json_decref(q->lp);
  free(q);
}

/* ------------------------------------------------------------------------ */
/* Submission                                                                 */

void ss_api_generate(ss_api *a, ss_http_conn *c, const ss_http_request *req, bool chat,
                     ss_engine *eng, const ss_model *m, const ss_chat_template *tmpl) {
  if (req->body_len == 0) {
    ss_oai_send_error(c, 400, NULL, NULL, NULL,
                      "the request has no body: a JSON object is expected");
    return;
  }
  const gen_ctx x = {.model_name = a->model_name, .default_max_tokens = a->o.default_max_tokens,
                     .n_ctx = ss_engine_n_ctx(eng), .m = m, .tmpl = *tmpl};
  gen_fields g;
  parse_err e;
  if (!ss_oai_parse_generate(&x, req->body, req->body_len, chat, &g, &e)) {
    ss_oai_send_error(c, e.status, e.param, e.status == 404 ? "model_not_found" : NULL, NULL,
                      "%s", e.msg);
    if (!e.body) a->n_client_errors++;
    return;
  }
  api_req *q = calloc(1, sizeof *q);
  if (!q) {
    ss_oai_send_error(c, 500, NULL, NULL, NULL, "out of memory");
    ss_oai_req_free(&g.r);
    return;
  }
  q->api = a;
  q->conn = c;
  q->chat = chat;
  q->stream = g.stream;
  q->include_usage = g.stream && g.include_usage;
  q->logprobs = g.r.logprobs;
  q->n_top = g.r.n_top_logprobs;
  q->created = time(NULL);
  g.r.user = q;
  int64_t id = 0;
  int rc = ss_engine_submit(eng, &g.r, &id);
  if (rc) {
    if (rc == SS_ERR_BUSY) {
      ss_oai_send_error(c, 429, NULL, "queue_full", "Retry-After: 1\r\n", "%s", ss_error_msg());
    } else if (rc == SS_ERR_RANGE || rc == SS_ERR_INVALID) {
      const char *param = strstr(ss_error_msg(), "max_tokens") ? "max_tokens"
                          : chat ? "messages" : "prompt";
      ss_oai_send_error(c, strstr(ss_error_msg(), "shutting down") ? 503 : 400, param, NULL, NULL,
                        "%s", ss_error_msg());
    } else {
      ss_oai_send_error(c, 503, NULL, NULL, NULL, "%s", ss_error_msg());
    }
    ss_oai_req_free(&g.r);
    req_free(q);
    return;
  }
  q->id = id;
  snprintf(q->rid, sizeof q->rid, "%s-%lld", chat ? "chatcmpl" : "cmpl", (long long)id);
  ss_http_conn_set_user(c, q);
  if (q->stream) ss_http_stream_begin(c, 200, "text/event-stream");
}

/* ------------------------------------------------------------------------ */
/* Events from the engine                                                     */

void ss_api_on_wake(uv_async_t *h) {
  ss_api *a = h->data;
  pthread_mutex_lock(&a->mu);
  ss_engine *eng = a->engine;
  const ss_model *m = a->model;
  const bool exited = a->engine_exited;
  pthread_mutex_unlock(&a->mu);
  if (eng) {
    ss_engine_event *ev = ss_engine_take_events(eng);
    while (ev) {
      ss_engine_event *next = ev->next;
      api_req *q = ev->user;
      if (q->conn) {
        if (ev->kind == SS_ENGINE_TOKEN) ss_oai_on_token(q, m, ev);
        else ss_oai_on_done(q, ev);
      }
      if (ev->kind == SS_ENGINE_DONE) req_free(q);
      ss_engine_event_free(ev);
      ev = next;
    }
  }
  if (exited && !a->closed) {
    /* The engine is gone and its last events are answered: close everything so
     * the loop can end. */
    a->closed = true;
    ss_http_server_close(a->http);
    uv_close((uv_handle_t *)&a->wake, NULL);
  }
}

/* The HTTP layer says a client left before its response was complete. */
void ss_api_on_client_gone(void *user, void *conn_user) {
  ss_api *a = user;
  api_req *q = conn_user;
  q->conn = NULL;
  a->n_aborted_by_client++;
  pthread_mutex_lock(&a->mu);
  ss_engine *eng = a->engine;
  pthread_mutex_unlock(&a->mu);
  if (eng) ss_engine_abort(eng, q->id);
}
