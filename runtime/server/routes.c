/* Routing: which path and method go where, the API key, and the small
 * routes (/health, /v1/models, /metrics); generation goes to request.c. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "runtime/base/metrics.h"
#include "runtime/server/api_internal.h"

/* ------------------------------------------------------------------------ */
/* Routing                                                                    */

bool ss_api_check_serving(ss_api *a, ss_http_conn *c, ss_engine *eng) {
  ss_engine_state st = ss_engine_get_state(eng);
  if (!a->lost && !a->draining && st == SS_ENGINE_READY) return true;
  ss_oai_send_error(c, 503, NULL, NULL, NULL, "%s",
                    a->lost ? a->lost_msg
                    : st == SS_ENGINE_FAILED
                    ? "the engine has failed (a rank was lost); restart the server"
                    : "the server is shutting down");
  return false;
}

/* ------------------------------------------------------------------------ */
/* The small routes                                                           */

static void handle_models(ss_api *a, ss_http_conn *c, int32_t n_ctx) {
  json_t *o = json_pack("{s:s, s:[{s:s, s:s, s:I, s:s, s:i}]}", "object", "list", "data", "id",
                        a->model_name, "object", "model", "created", (json_int_t)a->created,
                        "owned_by", "shardserve", "max_model_len", n_ctx);
  ss_oai_send_json(c, 200, o, "");
}

static void handle_metrics(ss_api *a, ss_http_conn *c, ss_engine *eng, api_phase phase) {
  ss_strbuf b = {0};
  ss_metric_header(&b, "shardserve:server_ready", "gauge",
                   "1 when the model is loaded and requests are served.");
  ss_metric_value(&b, "shardserve:server_ready", "",
                  phase == PHASE_READY && !a->draining && !a->lost && eng &&
                          ss_engine_get_state(eng) == SS_ENGINE_READY ? 1 : 0);
  ss_metric_header(&b, "shardserve:http_requests_total", "counter", "HTTP requests received.");
  ss_metric_value(&b, "shardserve:http_requests_total", "", (double)a->n_requests);
  ss_metric_header(&b, "shardserve:request_client_error_total", "counter",
                   "Generation requests refused as invalid (4xx).");
  ss_metric_value(&b, "shardserve:request_client_error_total", "", (double)a->n_client_errors);
  ss_metric_header(&b, "shardserve:request_client_disconnect_total", "counter",
                   "Requests whose client left before the response was complete.");
  ss_metric_value(&b, "shardserve:request_client_disconnect_total", "",
                  (double)a->n_aborted_by_client);
  ss_metric_header(&b, "shardserve:request_queue_full_total", "counter",
                   "Generation requests refused with 429 (the engine's queue was full).");
  ss_metric_value(&b, "shardserve:request_queue_full_total", "", (double)a->n_queue_full);
  ss_metric_header(&b, "shardserve:request_forked_choices_total", "counter",
                   "Choices of n > 1 or best_of requests beyond each one's first, submitted "
                   "once the first had computed the prompt (they share its full KV blocks "
                   "through the prefix cache).");
  ss_metric_value(&b, "shardserve:request_forked_choices_total", "", (double)a->n_forked);
  const ss_http_stats hs = ss_http_server_stats(a->http);
  static const struct {
    const char *name, *help;
  } k_http[] = {
      {"shardserve:http_refused_connections_total",
       "Connections answered 503 at accept (--max-connections, --max-connections-per-client)."},
      {"shardserve:http_refused_buffer_total",
       "Requests answered 503 because buffered input reached --max-buffered-bytes."},
      {"shardserve:http_header_timeouts_total",
       "Requests whose line and headers missed --header-timeout (408)."},
      {"shardserve:http_body_timeouts_total", "Requests whose body missed --body-timeout (408)."},
      {"shardserve:http_write_timeouts_total",
       "Clients disconnected for not reading their output for --write-timeout."},
      {"shardserve:http_bad_requests_total",
       "Requests refused by the HTTP layer (malformed, 413, 415, 417, 505)."},
  };
  const double http_v[] = {(double)hs.refused_connections, (double)hs.refused_buffer,
                           (double)hs.header_timeouts, (double)hs.body_timeouts,
                           (double)hs.write_timeouts, (double)(hs.bad_requests + a->n_bad_media)};
  for (size_t i = 0; i < sizeof k_http / sizeof k_http[0]; i++) {
    ss_metric_header(&b, k_http[i].name, "counter", k_http[i].help);
    ss_metric_value(&b, k_http[i].name, "", http_v[i]);
  }
  ss_metric_header(&b, "shardserve:http_open_connections", "gauge", "Admitted connections open.");
  ss_metric_value(&b, "shardserve:http_open_connections", "", hs.open_connections);
  ss_metric_header(&b, "shardserve:http_buffered_bytes", "gauge",
                   "Request input buffered over all connections.");
  ss_metric_value(&b, "shardserve:http_buffered_bytes", "", (double)hs.buffered_nbytes);
  if (eng) ss_engine_metrics(eng, &b);
  if (b.failed) ss_oai_send_error(c, 500, NULL, NULL, NULL, "out of memory");
  else ss_http_respond(c, 200, "text/plain; version=0.0.4; charset=utf-8", "", b.p, b.len);
  ss_strbuf_free(&b);
}

/* application/json, with optional parameters ("; charset=utf-8"). */
static bool is_json_media(const char *ct) {
  if (!ct) return false;
  while (*ct == ' ' || *ct == '\t') ct++;
  static const char k_json[] = "application/json";
  if (strncasecmp(ct, k_json, sizeof k_json - 1) != 0) return false;
  ct += sizeof k_json - 1;
  while (*ct == ' ' || *ct == '\t') ct++;
  return *ct == 0 || *ct == ';';
}

static bool auth_ok(const ss_api *a, const ss_http_request *req) {
  if (!a->api_key) return true;
  const char *h = req->authorization;
  if (!h || strncasecmp(h, "Bearer ", 7) != 0) return false;
  const char *k = h + 7;
  while (*k == ' ') k++;
  /* Compare in time independent of where the first difference is. */
  size_t n = strlen(k), m = strlen(a->api_key);
  unsigned diff = (unsigned)(n ^ m);
  for (size_t i = 0; i < n && i < m; i++) diff |= (unsigned)(k[i] ^ a->api_key[i]);
  return diff == 0;
}

void ss_api_on_request(void *user, ss_http_conn *c, const ss_http_request *req) {
  ss_api *a = user;
  a->n_requests++;
  pthread_mutex_lock(&a->mu);
  const api_phase phase = a->phase;
  ss_engine *eng = a->engine;
  const ss_model *m = a->model;
  pthread_mutex_unlock(&a->mu);
  const bool get = strcmp(req->method, "GET") == 0, post = strcmp(req->method, "POST") == 0;
  const char *p = req->path;

  if (strcmp(p, "/health") == 0) {
    if (!get) {
      ss_oai_send_error(c, 405, NULL, NULL, "Allow: GET\r\n", "%s %s: use GET", req->method, p);
      return;
    }
    const char *status = "ok";
    int code = 200;
    ss_engine_state st = eng ? ss_engine_get_state(eng) : SS_ENGINE_READY;
    if (phase == PHASE_LOADING) status = "loading", code = 503;
    else if (phase == PHASE_LOAD_FAILED || st == SS_ENGINE_FAILED || a->lost)
      status = "failed", code = 503;
    else if (a->draining || st != SS_ENGINE_READY) status = "draining", code = 503;
    ss_oai_send_json(c, code, json_pack("{s:s}", "status", status), "");
    return;
  }
  if (strcmp(p, "/metrics") == 0) {
    if (!get)
      ss_oai_send_error(c, 405, NULL, NULL, "Allow: GET\r\n", "%s %s: use GET", req->method, p);
    else
      handle_metrics(a, c, eng, phase);
    return;
  }
  const bool is_models = strcmp(p, "/v1/models") == 0;
  static const struct {
    const char *path;
    api_kind kind;
  } posts[] = {{"/v1/completions", API_COMPLETION}, {"/v1/chat/completions", API_CHAT},
               {"/tokenize", API_TOKENIZE}, {"/detokenize", API_DETOKENIZE},
               {"/apply-template", API_APPLY_TEMPLATE}};
  int route = -1;
  for (int i = 0; i < (int)(sizeof posts / sizeof posts[0]); i++)
    if (strcmp(p, posts[i].path) == 0) route = i;
  if (!is_models && route < 0) {
    ss_oai_send_error(c, 404, NULL, "not_found", NULL,
                      "no route %s %s (routes: POST /v1/completions, POST /v1/chat/completions, "
                      "GET /v1/models, POST /tokenize, POST /detokenize, POST /apply-template, "
                      "GET /health, GET /metrics)", req->method, p);
    return;
  }
  if (!auth_ok(a, req)) {
    ss_oai_send_error(c, 401, NULL, "invalid_api_key", "WWW-Authenticate: Bearer\r\n",
                      "missing or wrong API key: send 'Authorization: Bearer <key>'");
    return;
  }
  if (is_models ? !get : !post) {
    ss_oai_send_error(c, 405, NULL, NULL, is_models ? "Allow: GET\r\n" : "Allow: POST\r\n",
                      "%s %s: use %s", req->method, p, is_models ? "GET" : "POST");
    return;
  }
  if (phase != PHASE_READY || !eng) {
    ss_oai_send_error(c, 503, NULL, NULL, "Retry-After: 5\r\n", "%s",
                      phase == PHASE_LOADING ? "the model is still loading"
                                             : "the model failed to load");
    return;
  }
  if (is_models) {
    handle_models(a, c, ss_engine_n_ctx(eng));
    return;
  }
  const api_kind kind = posts[route].kind;
  if (!is_json_media(req->content_type)) {
    a->n_bad_media++;
    ss_oai_send_error(c, 415, NULL, NULL, NULL,
                      "the Content-Type header is '%.100s': POST %s takes application/json",
                      req->content_type ? req->content_type : "(none)", p);
    return;
  }
  /* The utility routes need only the model; generation also a serving engine. */
  if ((kind == API_COMPLETION || kind == API_CHAT) && !ss_api_check_serving(a, c, eng)) return;
  ss_api_generate(a, c, req, kind, eng, m);
}
