/* The API server's life cycle: creating and binding it, the model becoming
 * ready (or failing), the engine's wake-ups and exit, draining, freeing.
 * Routing is in routes.c, a generation request's life in request.c. */
#include "runtime/server/api_server.h"

#include <errno.h>
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "runtime/base/status.h"
#include "runtime/server/api_internal.h"

/* One line per request: no prompt or output text, and the path with anything
 * unprintable replaced, so that a client cannot forge lines. */
static void access_log_line(void *user, const ss_http_log *l) {
  ss_api *a = user;
  char path[201];
  size_t n = 0;
  for (const char *p = l->path; *p && n < sizeof path - 1; p++)
    path[n++] = *p > ' ' && *p < 0x7f ? *p : '?';
  path[n] = 0;
  char pt[16] = "-", ct[16] = "-", qm[32] = "-", tm[32] = "-", st[16] = "-";
  if (l->prompt_tokens >= 0) snprintf(pt, sizeof pt, "%d", l->prompt_tokens);
  if (l->completion_tokens >= 0) snprintf(ct, sizeof ct, "%d", l->completion_tokens);
  if (l->queue_ms >= 0) snprintf(qm, sizeof qm, "%.1f", l->queue_ms);
  if (l->ttft_ms >= 0) snprintf(tm, sizeof tm, "%.1f", l->ttft_ms);
  if (l->status > 0) snprintf(st, sizeof st, "%d", l->status);
  fprintf(a->access_log,
          "shardserve access: id=%016llx method=%s route=%s status=%s prompt_tokens=%s "
          "completion_tokens=%s queue_ms=%s ttft_ms=%s total_ms=%.1f%s\n",
          (unsigned long long)l->id, l->method, path, st, pt, ct, qm, tm, l->total_ms,
          l->status > 0 ? "" : l->write_timeout ? " write_timeout" : " client_gone");
}

int ss_api_create(uv_loop_t *loop, const ss_api_opts *o, ss_api **out) {
  *out = NULL;
  ss_api *a = calloc(1, sizeof *a);
  if (!a) return ss_error(SS_ERR_NOMEM, "out of memory");
  a->loop = loop;
  a->o = *o;
  if (!a->o.host) a->o.host = "127.0.0.1";
  if (a->o.default_max_tokens <= 0) a->o.default_max_tokens = 16;
  a->model_name = strdup(o->model_name ? o->model_name : "model");
  a->api_key = o->api_key && *o->api_key ? strdup(o->api_key) : NULL;
  a->created = time(NULL);
  const char *log = o->access_log ? o->access_log : "stderr";
  if (strcmp(log, "stderr") == 0) {
    a->access_log = stderr;
  } else if (strcmp(log, "off") != 0) {
    a->access_log = fopen(log, "a");
    if (!a->access_log) {
      int rc = ss_error(SS_ERR_IO, "--access-log %s: %s", log, strerror(errno));
      free(a->model_name);
      free(a->api_key);
      free(a);
      return rc;
    }
    setvbuf(a->access_log, NULL, _IOLBF, 0);
    a->access_log_owned = true;
  }
  pthread_mutex_init(&a->mu, NULL);
  /* Seed jansson's hash function once, here, before any worker parses a body
   * (jansson would otherwise seed it on its first object, on whichever thread). */
  json_object_seed(0);
  ss_http_callbacks cb = {.on_request = ss_api_on_request, .on_abort = ss_api_on_client_gone,
                         .on_congestion = ss_api_on_congestion,
                         .on_log = a->access_log ? access_log_line : NULL, .user = a};
  int rc = ss_http_server_start(loop, a->o.host, a->o.port, &a->o.http, &cb, &a->http);
  if (rc) {
    if (a->access_log_owned) fclose(a->access_log);
    free(a->model_name);
    free(a->api_key);
    free(a);
    return rc;
  }
  uv_async_init(loop, &a->wake, ss_api_on_wake);
  a->wake.data = a;
  *out = a;
  return SS_OK;
}

int ss_api_port(const ss_api *a) { return ss_http_server_port(a->http); }

void ss_api_set_ready(ss_api *a, ss_engine *e, const ss_model *m, const ss_chat_template *t,
                      const char *no_tmpl_why) {
  pthread_mutex_lock(&a->mu);
  a->engine = e;
  a->model = m;
  a->tmpl = t;
  snprintf(a->tmpl_why, sizeof a->tmpl_why, "%s",
           t ? "" : no_tmpl_why ? no_tmpl_why : "the model has no chat template");
  a->phase = PHASE_READY;
  pthread_mutex_unlock(&a->mu);
}

void ss_api_set_failed(ss_api *a) {
  pthread_mutex_lock(&a->mu);
  a->phase = PHASE_LOAD_FAILED;
  pthread_mutex_unlock(&a->mu);
}

void ss_api_set_lost_probe(ss_api *a, void (*probe)(void *user), void *user) {
  a->lost_probe = probe;
  a->lost_probe_user = user;
}

void ss_api_wake(void *api) {
  ss_api *a = api;
  uv_async_send(&a->wake);
}

void ss_api_engine_exited(ss_api *a) {
  pthread_mutex_lock(&a->mu);
  a->engine_exited = true;
  pthread_mutex_unlock(&a->mu);
  uv_async_send(&a->wake);
}

void ss_api_begin_drain(ss_api *a) {
  a->draining = true;
  ss_http_server_stop_listening(a->http);
}

void ss_api_free(ss_api *a) {
  if (!a) return;
  /* The loop ran until every preparation had come back. */
  SS_ASSERT(a->n_preparing == 0);
  if (a->access_log_owned) fclose(a->access_log);
  free(a->model_name);
  free(a->api_key);
  pthread_mutex_destroy(&a->mu);
  free(a);
}
