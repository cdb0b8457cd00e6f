#include "runtime/server/api_server.h"

#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "runtime/base/metrics.h"
#include "runtime/base/status.h"
#include "runtime/tokenizer/tokenizer.h"
#include "runtime/base/utf8.h"

typedef enum api_phase { PHASE_LOADING = 0, PHASE_READY, PHASE_LOAD_FAILED } api_phase;

struct ss_api {
  uv_loop_t *loop;
  ss_http_server *http;
  uv_async_t wake;
  ss_api_opts o;
  char *model_name;
  char *api_key;
  time_t created;
  bool draining;
  bool closed;

  pthread_mutex_t mu;     /* guards the fields set from other threads */
  api_phase phase;
  ss_engine *engine;
  const ss_model *model;
  ss_chat_template tmpl;
  bool engine_exited;

  uint64_t n_requests, n_client_errors, n_aborted_by_client;
};

/* One API request in flight: lives from submission to the engine's DONE event. */
typedef struct api_req {
  ss_api *api;
  ss_http_conn *conn;     /* NULL once the client has gone */
  int64_t id;
  bool chat, stream, include_usage;
  bool logprobs;
  int32_t n_top;
  char rid[48];
  time_t created;
  bool role_sent;
  ss_strbuf text;         /* non-streamed: the whole text */
  json_t *lp;             /* non-streamed logprobs: chat "content" list, or completions object */
  size_t text_offset;
} api_req;

/* ------------------------------------------------------------------------ */
/* Responses                                                                  */

static void send_json(ss_http_conn *c, int status, json_t *o, const char *extra_headers) {
  char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;
  if (!s) {
    static const char k_oom[] = "{\"error\":{\"message\":\"out of memory\",\"type\":"
                                "\"server_error\",\"param\":null,\"code\":null}}";
    ss_http_respond(c, 500, "application/json", "", k_oom, sizeof k_oom - 1);
  } else {
    ss_http_respond(c, status, "application/json", extra_headers, s, strlen(s));
  }
  free(s);
  json_decref(o);
}

static const char *error_type(int status) {
  switch (status) {
  case 401: return "authentication_error";
  case 404: return "not_found_error";
  case 429: return "rate_limit_error";
  case 500: return "server_error";
  case 503: return "service_unavailable";
  default: return "invalid_request_error";
  }
}

/* OpenAI's error object: {"error": {"message", "type", "param", "code"}}. */
static void send_error(ss_http_conn *c, int status, const char *param, const char *code,
                       const char *extra_headers, const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));
static void send_error(ss_http_conn *c, int status, const char *param, const char *code,
                       const char *extra_headers, const char *fmt, ...) {
  char msg[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  json_t *err = json_object();
  /* The message may quote client bytes: keep it valid UTF-8. */
  json_t *jm = json_string(msg);
  json_object_set_new(err, "message", jm ? jm : json_string("invalid request"));
  json_object_set_new(err, "type", json_string(error_type(status)));
  json_object_set_new(err, "param", param ? json_string(param) : json_null());
  json_object_set_new(err, "code", code ? json_string(code) : json_null());
  send_json(c, status, json_pack("{s:o}", "error", err), extra_headers ? extra_headers : "");
}

/* ------------------------------------------------------------------------ */
/* Token text for logprobs                                                    */

/* A token's bytes as a JSON string (invalid UTF-8, e.g. half a character,
 * becomes U+FFFD) and as a byte array. */
static json_t *token_json_string(const char *p, size_t n) {
  ss_strbuf b = {0};
  ss_strbuf_append(&b, "", 0);
  for (size_t i = 0; i < n;) {
    int k = ss_utf8_seq_nbytes((const uint8_t *)p + i, n - i);
    if (k > 0) {
      ss_strbuf_append(&b, p + i, (size_t)k);
      i += (size_t)k;
    } else {
      ss_strbuf_append(&b, SS_UTF8_REPLACEMENT, SS_UTF8_REPLACEMENT_NBYTES);
      i++;
    }
  }
  json_t *s = json_stringn(b.p ? b.p : "", b.len);
  ss_strbuf_free(&b);
  return s ? s : json_string("");
}

static json_t *token_bytes(const char *p, size_t n) {
  json_t *a = json_array();
  for (size_t i = 0; i < n; i++) json_array_append_new(a, json_integer((uint8_t)p[i]));
  return a;
}

static size_t piece(const ss_model *m, int32_t id, char *buf, size_t cap) {
  size_t n = ss_tokenizer_piece(m->tok, id, true, buf, cap);
  return n < cap ? n : cap;
}

/* Chat format: {"token", "logprob", "bytes", "top_logprobs": [{"token", "logprob", "bytes"}]}. */
static json_t *chat_logprob(const ss_model *m, const ss_engine_event *ev) {
  char buf[256];
  size_t n = piece(m, ev->token, buf, sizeof buf);
  json_t *top = json_array();
  for (int32_t i = 0; i < ev->n_top; i++) {
    char tb[256];
    size_t tn = piece(m, ev->top_ids[i], tb, sizeof tb);
    json_array_append_new(top, json_pack("{s:o, s:f, s:o}", "token", token_json_string(tb, tn),
                                         "logprob", (double)ev->top_logprobs[i], "bytes",
                                         token_bytes(tb, tn)));
  }
  return json_pack("{s:o, s:f, s:o, s:o}", "token", token_json_string(buf, n), "logprob",
                   (double)ev->logprob, "bytes", token_bytes(buf, n), "top_logprobs", top);
}

/* Completions format: parallel arrays tokens, token_logprobs, top_logprobs
 * ({token: logprob}), text_offset. */
static json_t *completion_logprobs_new(void) {
  return json_pack("{s:[], s:[], s:[], s:[]}", "tokens", "token_logprobs", "top_logprobs",
                   "text_offset");
}

static void completion_logprobs_add(json_t *lp, const ss_model *m, const ss_engine_event *ev,
                                    size_t offset) {
  char buf[256];
  size_t n = piece(m, ev->token, buf, sizeof buf);
  json_array_append_new(json_object_get(lp, "tokens"), token_json_string(buf, n));
  json_array_append_new(json_object_get(lp, "token_logprobs"), json_real(ev->logprob));
  json_t *top = json_object();
  for (int32_t i = 0; i < ev->n_top; i++) {
    char tb[256];
    size_t tn = piece(m, ev->top_ids[i], tb, sizeof tb);
    json_t *k = token_json_string(tb, tn);
    json_object_set_new(top, json_string_value(k), json_real(ev->top_logprobs[i]));
    json_decref(k);
  }
  json_array_append_new(json_object_get(lp, "top_logprobs"), top);
  json_array_append_new(json_object_get(lp, "text_offset"), json_integer((json_int_t)offset));
}

/* ------------------------------------------------------------------------ */
/* Parsing a request                                                          */

typedef struct parse_err {
  int status;
  const char *param;
  char msg[512];
} parse_err;

static bool fail(parse_err *e, int status, const char *param, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static bool fail(parse_err *e, int status, const char *param, const char *fmt, ...) {
  e->status = status;
  e->param = param;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(e->msg, sizeof e->msg, fmt, ap);
  va_end(ap);
  return false;
}

static const char *json_kind(const json_t *v) {
  switch (json_typeof(v)) {
  case JSON_OBJECT: return "an object";
  case JSON_ARRAY: return "an array";
  case JSON_STRING: return "a string";
  case JSON_INTEGER: return "an integer";
  case JSON_REAL: return "a number";
  case JSON_TRUE: case JSON_FALSE: return "a boolean";
  default: return "null";
  }
}

/* Optional number field in [lo, hi]. */
static bool get_number(json_t *o, const char *key, double lo, double hi, double *out,
                       parse_err *e) {
  json_t *v = json_object_get(o, key);
  if (!v || json_is_null(v)) return true;
  if (!json_is_number(v))
    return fail(e, 400, key, "'%s' must be a number, not %s", key, json_kind(v));
  double x = json_number_value(v);
  if (!isfinite(x) || x < lo || x > hi)
    return fail(e, 400, key, "'%s' = %g is outside [%g, %g]", key, x, lo, hi);
  *out = x;
  return true;
}

static bool get_int(json_t *o, const char *key, int64_t lo, int64_t hi, int64_t *out, bool *set,
                    parse_err *e) {
  json_t *v = json_object_get(o, key);
  if (!v || json_is_null(v)) return true;
  if (!json_is_integer(v))
    return fail(e, 400, key, "'%s' must be an integer, not %s", key, json_kind(v));
  json_int_t x = json_integer_value(v);
  if (x < lo || x > hi)
    return fail(e, 400, key, "'%s' = %lld is outside [%lld, %lld]", key, (long long)x,
                (long long)lo, (long long)hi);
  *out = x;
  if (set) *set = true;
  return true;
}

static bool get_bool(json_t *o, const char *key, bool *out, parse_err *e) {
  json_t *v = json_object_get(o, key);
  if (!v || json_is_null(v)) return true;
  if (!json_is_boolean(v))
    return fail(e, 400, key, "'%s' must be a boolean, not %s", key, json_kind(v));
  *out = json_is_true(v);
  return true;
}

typedef struct gen_fields {
  int64_t max_tokens;
  bool max_set;
  ss_engine_req r;
  bool stream, include_usage;
} gen_fields;

/* The fields shared by both endpoints. */
static bool parse_common(ss_api *a, json_t *o, bool chat, gen_fields *g, parse_err *e) {
  json_t *model = json_object_get(o, "model");
  if (model && !json_is_null(model)) {
    if (!json_is_string(model))
      return fail(e, 400, "model", "'model' must be a string, not %s", json_kind(model));
    if (strcmp(json_string_value(model), a->model_name) != 0)
      return fail(e, 404, "model", "the model '%.200s' does not exist; this server serves '%s'",
                  json_string_value(model), a->model_name);
  }
  int64_t n = 1;
  if (!get_int(o, "n", INT32_MIN, INT32_MAX, &n, NULL, e)) return false;
  if (n != 1) return fail(e, 400, "n", "'n' = %lld is not supported: only n = 1", (long long)n);
  json_t *bo = json_object_get(o, "best_of");
  if (bo && json_is_integer(bo) && json_integer_value(bo) != 1)
    return fail(e, 400, "best_of", "'best_of' must be 1");
  if (!get_int(o, "max_tokens", INT32_MIN, INT32_MAX, &g->max_tokens, &g->max_set, e))
    return false;
  if (!get_int(o, "max_completion_tokens", INT32_MIN, INT32_MAX, &g->max_tokens, &g->max_set, e))
    return false;
  if (g->max_set && g->max_tokens < 1)
    return fail(e, 400, json_object_get(o, "max_completion_tokens") ? "max_completion_tokens"
                                                                    : "max_tokens",
                "'max_tokens' = %lld must be at least 1", (long long)g->max_tokens);
  double temp = 1.0, top_p = 1.0, min_p = 0.0;
  int64_t top_k = 0, seed = 0;
  bool seed_set = false;
  if (!get_number(o, "temperature", 0.0, 2.0, &temp, e) ||
      !get_number(o, "top_p", 0.0, 1.0, &top_p, e) ||
      !get_number(o, "min_p", 0.0, 1.0, &min_p, e) ||
      !get_int(o, "top_k", -1, INT32_MAX, &top_k, NULL, e) ||
      !get_int(o, "seed", INT64_MIN, INT64_MAX, &seed, &seed_set, e))
    return false;
  if (top_p <= 0.0) return fail(e, 400, "top_p", "'top_p' must be greater than 0");
  g->r.sampling = (ss_sampler_params){.temperature = (float)temp, .top_k = (int32_t)(top_k < 0 ? 0 : top_k),
                                      .top_p = (float)top_p, .min_p = (float)min_p,
                                      .seed = seed_set ? (uint64_t)seed
                                                       : ((uint64_t)time(NULL) * 2654435761u) ^
                                                             (uint64_t)clock()};
  /* stop: a string or an array of up to 16 non-empty strings */
  json_t *stop = json_object_get(o, "stop");
  if (stop && !json_is_null(stop)) {
    if (json_is_string(stop)) {
      if (json_string_length(stop) == 0) return fail(e, 400, "stop", "'stop' must not be empty");
      g->r.stop[g->r.n_stop++] = strdup(json_string_value(stop));
    } else if (json_is_array(stop)) {
      if (json_array_size(stop) > SS_ENGINE_MAX_STOP)
        return fail(e, 400, "stop", "'stop' has %zu strings; the limit is %d",
                    json_array_size(stop), SS_ENGINE_MAX_STOP);
      size_t i;
      json_t *s;
      json_array_foreach(stop, i, s) {
        if (!json_is_string(s) || json_string_length(s) == 0)
          return fail(e, 400, "stop", "'stop[%zu]' must be a non-empty string", i);
        g->r.stop[g->r.n_stop++] = strdup(json_string_value(s));
      }
    } else {
      return fail(e, 400, "stop", "'stop' must be a string or an array of strings, not %s",
                  json_kind(stop));
    }
  }
  if (!get_bool(o, "stream", &g->stream, e) || !get_bool(o, "ignore_eos", &g->r.ignore_eos, e))
    return false;
  json_t *so = json_object_get(o, "stream_options");
  if (so && !json_is_null(so)) {
    if (!json_is_object(so))
      return fail(e, 400, "stream_options", "'stream_options' must be an object");
    if (!get_bool(so, "include_usage", &g->include_usage, e)) return false;
  }
  /* logprobs: chat takes a boolean plus top_logprobs; completions an integer. */
  json_t *lp = json_object_get(o, "logprobs");
  if (chat) {
    if (!get_bool(o, "logprobs", &g->r.logprobs, e)) return false;
    int64_t top = 0;
    bool top_set = false;
    if (!get_int(o, "top_logprobs", 0, SS_ENGINE_MAX_TOP, &top, &top_set, e)) return false;
    if (top_set && top > 0 && !g->r.logprobs)
      return fail(e, 400, "top_logprobs", "'top_logprobs' needs 'logprobs': true");
    g->r.n_top_logprobs = (int32_t)top;
  } else if (lp && !json_is_null(lp)) {
    int64_t k = 0;
    if (!get_int(o, "logprobs", 0, SS_ENGINE_MAX_TOP, &k, NULL, e)) return false;
    g->r.logprobs = true;
    g->r.n_top_logprobs = (int32_t)k;
  }
  return true;
}

static void free_stops(ss_engine_req *r) {
  for (int i = 0; i < r->n_stop; i++) free(r->stop[i]);
  r->n_stop = 0;
}

/* The prompt of /v1/completions: a string, a list of token ids, or a list of
 * one string / one list of ids. */
static bool parse_prompt(ss_api *a, json_t *o, const ss_model *m, ss_engine_req *r, parse_err *e) {
  json_t *p = json_object_get(o, "prompt");
  if (!p || json_is_null(p)) return fail(e, 400, "prompt", "'prompt' is required");
  if (json_is_array(p) && json_array_size(p) == 1 &&
      (json_is_string(json_array_get(p, 0)) || json_is_array(json_array_get(p, 0))))
    p = json_array_get(p, 0);
  if (json_is_string(p)) {
    size_t n = 0;
    int32_t *ids = NULL;
    if (ss_tokenizer_encode(m->tok, json_string_value(p), json_string_length(p),
                            ss_tokenizer_add_bos(m->tok), false, &ids, &n))
      return fail(e, 400, "prompt", "cannot tokenize the prompt: %s", ss_error_msg());
    r->prompt = ids;
    r->n_prompt = (int32_t)n;
  } else if (json_is_array(p)) {
    size_t n = json_array_size(p);
    if (n == 0) return fail(e, 400, "prompt", "'prompt' is an empty list");
    if (json_is_string(json_array_get(p, 0)))
      return fail(e, 400, "prompt", "'prompt' has %zu strings: only one prompt per request "
                  "(n = 1)", n);
    if (n > (size_t)INT32_MAX / 2) return fail(e, 400, "prompt", "'prompt' is too long");
    r->prompt = malloc(n * sizeof *r->prompt);
    if (!r->prompt) return fail(e, 500, NULL, "out of memory");
    r->n_prompt = (int32_t)n;
    for (size_t i = 0; i < n; i++) {
      json_t *v = json_array_get(p, i);
      if (!json_is_integer(v) || json_integer_value(v) < 0 ||
          json_integer_value(v) >= m->cfg.vocab)
        return fail(e, 400, "prompt", "'prompt[%zu]' must be a token id in [0, %d]", i,
                    m->cfg.vocab - 1);
      r->prompt[i] = (int32_t)json_integer_value(v);
    }
  } else {
    return fail(e, 400, "prompt", "'prompt' must be a string or a list of token ids, not %s",
                json_kind(p));
  }
  if (r->n_prompt == 0) return fail(e, 400, "prompt", "the prompt is empty: it gives no tokens");
  (void)a;
  return true;
}

static bool parse_messages(ss_api *a, json_t *o, const ss_model *m, const ss_chat_template *t,
                           ss_engine_req *r, parse_err *e) {
  json_t *msgs = json_object_get(o, "messages");
  if (!msgs || json_is_null(msgs)) return fail(e, 400, "messages", "'messages' is required");
  if (!json_is_array(msgs)) return fail(e, 400, "messages", "'messages' must be an array");
  size_t n = json_array_size(msgs);
  if (n == 0) return fail(e, 400, "messages", "'messages' is empty");
  if (n > 4096) return fail(e, 400, "messages", "'messages' has %zu entries; the limit is 4096", n);
  ss_chat_msg *cm = calloc(n, sizeof *cm);
  char **owned = calloc(n, sizeof *owned);
  bool ok = cm && owned;
  if (!ok) fail(e, 500, NULL, "out of memory");
  for (size_t i = 0; ok && i < n; i++) {
    json_t *mm = json_array_get(msgs, i);
    if (!json_is_object(mm)) {
      ok = fail(e, 400, "messages", "'messages[%zu]' must be an object", i);
      break;
    }
    json_t *role = json_object_get(mm, "role");
    if (!json_is_string(role)) {
      ok = fail(e, 400, "messages", "'messages[%zu].role' must be a string", i);
      break;
    }
    const char *rs = json_string_value(role);
    if (strcmp(rs, "developer") == 0) rs = "system";
    if (strcmp(rs, "system") && strcmp(rs, "user") && strcmp(rs, "assistant")) {
      ok = fail(e, 400, "messages", "'messages[%zu].role' = '%.40s' is not one of system, "
                "developer, user, assistant", i, rs);
      break;
    }
    json_t *content = json_object_get(mm, "content");
    if (json_is_string(content)) {
      cm[i].content = json_string_value(content);
    } else if (json_is_array(content)) {
      /* Content parts: only text parts, concatenated. */
      ss_strbuf b = {0};
      ss_strbuf_append(&b, "", 0);
      size_t k;
      json_t *part;
      json_array_foreach(content, k, part) {
        json_t *type = json_object_get(part, "type"), *text = json_object_get(part, "text");
        if (!json_is_object(part) || !json_is_string(type) ||
            strcmp(json_string_value(type), "text") != 0 || !json_is_string(text)) {
          ok = fail(e, 400, "messages", "'messages[%zu].content[%zu]' must be a text part "
                    "({\"type\": \"text\", \"text\": ...}); other kinds are not supported", i, k);
          break;
        }
        ss_strbuf_append(&b, json_string_value(text), json_string_length(text));
      }
      owned[i] = b.p;
      cm[i].content = b.p ? b.p : "";
      if (!ok) break;
    } else {
      ok = fail(e, 400, "messages", "'messages[%zu].content' must be a string or a list of "
                "text parts, not %s", i, content ? json_kind(content) : "missing");
      break;
    }
    cm[i].role = rs;
  }
  char *rendered = NULL;
  if (ok && ss_chat_render(t, cm, n, true, &rendered))
    ok = fail(e, 400, "messages", "%s", ss_error_msg());
  if (ok) {
    size_t nt = 0;
    int32_t *ids = NULL;
    if (ss_tokenizer_encode(m->tok, rendered, strlen(rendered), ss_tokenizer_add_bos(m->tok), true,
                            &ids, &nt))
      ok = fail(e, 400, "messages", "cannot tokenize the messages: %s", ss_error_msg());
    r->prompt = ids;
    r->n_prompt = (int32_t)nt;
  }
  free(rendered);
  for (size_t i = 0; owned && i < n; i++) free(owned[i]);
  free(owned);
  free(cm);
  (void)a;
  return ok;
}

/* ------------------------------------------------------------------------ */
/* Streaming chunks                                                           */

static void sse_send(ss_http_conn *c, json_t *o) {
  char *s = json_dumps(o, JSON_COMPACT);
  json_decref(o);
  if (!s) return;
  size_t n = strlen(s);
  char *msg = malloc(n + 8);
  if (msg) {
    memcpy(msg, "data: ", 6);
    memcpy(msg + 6, s, n);
    memcpy(msg + 6 + n, "\n\n", 2);
    ss_http_stream_write(c, msg, n + 8);
    free(msg);
  }
  free(s);
}

static json_t *chunk_base(const api_req *q) {
  return json_pack("{s:s, s:s, s:I, s:s}", "id", q->rid, "object",
                   q->chat ? "chat.completion.chunk" : "text_completion", "created",
                   (json_int_t)q->created, "model", q->api->model_name);
}

static json_t *usage_json(int32_t n_prompt, int32_t n_gen) {
  return json_pack("{s:i, s:i, s:i}", "prompt_tokens", n_prompt, "completion_tokens", n_gen,
                   "total_tokens", n_prompt + n_gen);
}

static void stream_token(api_req *q, const ss_model *m, const ss_engine_event *ev) {
  json_t *o = chunk_base(q);
  json_t *choice;
  json_t *text = json_stringn(ev->text ? ev->text : "", ev->text_len);
  if (!text) text = json_string("");
  if (q->chat) {
    json_t *delta = json_pack("{s:o}", "content", text);
    if (!q->role_sent) {
      json_object_set_new(delta, "role", json_string("assistant"));
      q->role_sent = true;
    }
    json_t *lp = json_null();
    if (q->logprobs) lp = json_pack("{s:[o]}", "content", chat_logprob(m, ev));
    choice = json_pack("{s:i, s:o, s:o, s:n}", "index", 0, "delta", delta, "logprobs", lp,
                       "finish_reason");
  } else {
    json_t *lp = json_null();
    if (q->logprobs) {
      lp = completion_logprobs_new();
      completion_logprobs_add(lp, m, ev, q->text_offset);
    }
    choice = json_pack("{s:i, s:o, s:o, s:n}", "index", 0, "text", text, "logprobs", lp,
                       "finish_reason");
  }
  q->text_offset += ev->text_len;
  json_object_set_new(o, "choices", json_pack("[o]", choice));
  if (q->include_usage) json_object_set_new(o, "usage", json_null());
  sse_send(q->conn, o);
}

static void stream_done(api_req *q, const ss_engine_event *ev) {
  ss_http_conn *c = q->conn;
  if (strcmp(ev->finish_reason, "error") == 0) {
    json_t *err = json_pack("{s:{s:s, s:s, s:n, s:n}}", "error", "message",
                            ev->error ? ev->error : "engine error", "type", "server_error",
                            "param", "code");
    sse_send(c, err);
  } else {
    json_t *o = chunk_base(q);
    json_t *choice = q->chat ? json_pack("{s:i, s:{}, s:n, s:s}", "index", 0, "delta", "logprobs",
                                         "finish_reason", ev->finish_reason)
                             : json_pack("{s:i, s:s, s:n, s:s}", "index", 0, "text", "",
                                         "logprobs", "finish_reason", ev->finish_reason);
    json_object_set_new(o, "choices", json_pack("[o]", choice));
    if (q->include_usage) json_object_set_new(o, "usage", json_null());
    sse_send(c, o);
    if (q->include_usage) {
      json_t *u = chunk_base(q);
      json_object_set_new(u, "choices", json_array());
      json_object_set_new(u, "usage", usage_json(ev->n_prompt, ev->n_generated));
      sse_send(c, u);
    }
  }
  static const char k_done[] = "data: [DONE]\n\n";
  ss_http_stream_write(c, k_done, sizeof k_done - 1);
  ss_http_stream_end(c);
}

static void respond_done(api_req *q, const ss_engine_event *ev) {
  if (strcmp(ev->finish_reason, "error") == 0) {
    send_error(q->conn, 500, NULL, NULL, NULL, "%s", ev->error ? ev->error : "engine error");
    return;
  }
  json_t *text = json_stringn(q->text.p ? q->text.p : "", q->text.len);
  if (!text) text = json_string("");
  json_t *choice;
  if (q->chat) {
    json_t *lp = q->lp ? json_pack("{s:o}", "content", q->lp) : json_null();
    q->lp = NULL;
    choice = json_pack("{s:i, s:{s:s, s:o}, s:o, s:s}", "index", 0, "message", "role",
                       "assistant", "content", text, "logprobs", lp, "finish_reason",
                       ev->finish_reason);
  } else {
    json_t *lp = q->lp ? q->lp : json_null();
    q->lp = NULL;
    choice = json_pack("{s:i, s:o, s:o, s:s}", "index", 0, "text", text, "logprobs", lp,
                       "finish_reason", ev->finish_reason);
  }
  json_t *o = json_pack("{s:s, s:s, s:I, s:s, s:[o], s:o}", "id", q->rid, "object",
                        q->chat ? "chat.completion" : "text_completion", "created",
                        (json_int_t)q->created, "model", q->api->model_name, "choices", choice,
                        "usage", usage_json(ev->n_prompt, ev->n_generated));
  send_json(q->conn, 200, o, "");
}

static void req_free(api_req *q) {
  ss_strbuf_free(&q->text);
  json_decref(q->lp);
  free(q);
}

/* ------------------------------------------------------------------------ */
/* Events from the engine                                                     */

static void on_wake(uv_async_t *h) {
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
        if (ev->kind == SS_ENGINE_TOKEN) {
          if (q->stream) {
            stream_token(q, m, ev);
          } else {
            ss_strbuf_append(&q->text, ev->text ? ev->text : "", ev->text_len);
            if (q->logprobs) {
              if (q->chat) {
                if (!q->lp) q->lp = json_array();
                json_array_append_new(q->lp, chat_logprob(m, ev));
              } else {
                if (!q->lp) q->lp = completion_logprobs_new();
                completion_logprobs_add(q->lp, m, ev, q->text_offset);
              }
            }
            q->text_offset += ev->text_len;
          }
        } else {
          if (q->stream) stream_done(q, ev);
          else respond_done(q, ev);
        }
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
static void on_client_gone(void *user, void *conn_user) {
  ss_api *a = user;
  api_req *q = conn_user;
  q->conn = NULL;
  a->n_aborted_by_client++;
  pthread_mutex_lock(&a->mu);
  ss_engine *eng = a->engine;
  pthread_mutex_unlock(&a->mu);
  if (eng) ss_engine_abort(eng, q->id);
}

/* ------------------------------------------------------------------------ */
/* Routes                                                                     */

static void handle_generate(ss_api *a, ss_http_conn *c, const ss_http_request *req, bool chat,
                            ss_engine *eng, const ss_model *m, const ss_chat_template *tmpl) {
  if (req->body_len == 0) {
    send_error(c, 400, NULL, NULL, NULL, "the request has no body: a JSON object is expected");
    return;
  }
  json_error_t jerr;
  json_t *o = json_loadb(req->body, req->body_len, JSON_REJECT_DUPLICATES, &jerr);
  if (!o) {
    send_error(c, 400, NULL, NULL, NULL, "the body is not valid JSON: %s (line %d, column %d)",
               jerr.text, jerr.line, jerr.column);
    return;
  }
  if (!json_is_object(o)) {
    send_error(c, 400, NULL, NULL, NULL, "the body must be a JSON object, not %s", json_kind(o));
    json_decref(o);
    return;
  }
  gen_fields g = {0};
  parse_err e = {0};
  bool ok = parse_common(a, o, chat, &g, &e);
  if (ok && json_is_true(json_object_get(o, "echo")))
    ok = fail(&e, 400, "echo", "'echo' is not supported");
  if (ok) ok = chat ? parse_messages(a, o, m, tmpl, &g.r, &e) : parse_prompt(a, o, m, &g.r, &e);
  json_decref(o);
  const int32_t n_ctx = ss_engine_n_ctx(eng);
  if (ok && !g.max_set) {
    /* Defaults: OpenAI's 16 for completions; the rest of the context for chat. */
    int64_t room = (int64_t)n_ctx - g.r.n_prompt;
    g.max_tokens = chat ? room : (a->o.default_max_tokens < room ? a->o.default_max_tokens : room);
    if (g.max_tokens < 1)
      ok = fail(&e, 400, chat ? "messages" : "prompt", "the prompt (%d tokens) leaves no room in "
                "the context length (%d)", g.r.n_prompt, n_ctx);
  }
  if (!ok) {
    send_error(c, e.status, e.param, e.status == 404 ? "model_not_found" : NULL, NULL, "%s", e.msg);
    free(g.r.prompt);
    free_stops(&g.r);
    a->n_client_errors++;
    return;
  }
  g.r.max_new_tokens = (int32_t)(g.max_tokens > INT32_MAX ? INT32_MAX : g.max_tokens);
  api_req *q = calloc(1, sizeof *q);
  if (!q) {
    send_error(c, 500, NULL, NULL, NULL, "out of memory");
    free(g.r.prompt);
    free_stops(&g.r);
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
      send_error(c, 429, NULL, "queue_full", "Retry-After: 1\r\n", "%s", ss_error_msg());
    } else if (rc == SS_ERR_RANGE || rc == SS_ERR_INVALID) {
      const char *param = strstr(ss_error_msg(), "max_tokens") ? "max_tokens"
                          : chat ? "messages" : "prompt";
      send_error(c, strstr(ss_error_msg(), "shutting down") ? 503 : 400, param, NULL, NULL, "%s",
                 ss_error_msg());
    } else {
      send_error(c, 503, NULL, NULL, NULL, "%s", ss_error_msg());
    }
    free(g.r.prompt);
    free_stops(&g.r);
    free(q);
    return;
  }
  q->id = id;
  snprintf(q->rid, sizeof q->rid, "%s-%lld", chat ? "chatcmpl" : "cmpl", (long long)id);
  ss_http_conn_set_user(c, q);
  if (q->stream) {
    ss_http_stream_begin(c, 200, "text/event-stream");
  }
}

static void handle_models(ss_api *a, ss_http_conn *c, int32_t n_ctx) {
  json_t *o = json_pack("{s:s, s:[{s:s, s:s, s:I, s:s, s:i}]}", "object", "list", "data", "id",
                        a->model_name, "object", "model", "created", (json_int_t)a->created,
                        "owned_by", "shardserve", "max_model_len", n_ctx);
  send_json(c, 200, o, "");
}

static void handle_metrics(ss_api *a, ss_http_conn *c, ss_engine *eng, api_phase phase) {
  ss_strbuf b = {0};
  ss_metric_header(&b, "shardserve:server_ready", "gauge",
                   "1 when the model is loaded and requests are served.");
  ss_metric_value(&b, "shardserve:server_ready", "",
                  phase == PHASE_READY && !a->draining && eng &&
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
  if (eng) ss_engine_metrics(eng, &b);
  if (b.failed) send_error(c, 500, NULL, NULL, NULL, "out of memory");
  else ss_http_respond(c, 200, "text/plain; version=0.0.4; charset=utf-8", "", b.p, b.len);
  ss_strbuf_free(&b);
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

static void on_request(void *user, ss_http_conn *c, const ss_http_request *req) {
  ss_api *a = user;
  a->n_requests++;
  pthread_mutex_lock(&a->mu);
  const api_phase phase = a->phase;
  ss_engine *eng = a->engine;
  const ss_model *m = a->model;
  ss_chat_template tmpl = a->tmpl;
  pthread_mutex_unlock(&a->mu);
  const bool get = strcmp(req->method, "GET") == 0, post = strcmp(req->method, "POST") == 0;
  const char *p = req->path;

  if (strcmp(p, "/health") == 0) {
    if (!get) {
      send_error(c, 405, NULL, NULL, "Allow: GET\r\n", "%s %s: use GET", req->method, p);
      return;
    }
    const char *status = "ok";
    int code = 200;
    ss_engine_state st = eng ? ss_engine_get_state(eng) : SS_ENGINE_READY;
    if (phase == PHASE_LOADING) status = "loading", code = 503;
    else if (phase == PHASE_LOAD_FAILED || st == SS_ENGINE_FAILED) status = "failed", code = 503;
    else if (a->draining || st != SS_ENGINE_READY) status = "draining", code = 503;
    send_json(c, code, json_pack("{s:s}", "status", status), "");
    return;
  }
  if (strcmp(p, "/metrics") == 0) {
    if (!get) send_error(c, 405, NULL, NULL, "Allow: GET\r\n", "%s %s: use GET", req->method, p);
    else handle_metrics(a, c, eng, phase);
    return;
  }
  const bool is_models = strcmp(p, "/v1/models") == 0;
  const bool is_cmpl = strcmp(p, "/v1/completions") == 0;
  const bool is_chat = strcmp(p, "/v1/chat/completions") == 0;
  if (!is_models && !is_cmpl && !is_chat) {
    send_error(c, 404, NULL, "not_found", NULL, "no route %s %s (routes: POST /v1/completions, "
               "POST /v1/chat/completions, GET /v1/models, GET /health, GET /metrics)",
               req->method, p);
    return;
  }
  if (!auth_ok(a, req)) {
    send_error(c, 401, NULL, "invalid_api_key", "WWW-Authenticate: Bearer\r\n",
               "missing or wrong API key: send 'Authorization: Bearer <key>'");
    return;
  }
  if (is_models ? !get : !post) {
    send_error(c, 405, NULL, NULL, is_models ? "Allow: GET\r\n" : "Allow: POST\r\n",
               "%s %s: use %s", req->method, p, is_models ? "GET" : "POST");
    return;
  }
  if (phase != PHASE_READY || !eng) {
    send_error(c, 503, NULL, NULL, "Retry-After: 5\r\n", "%s",
               phase == PHASE_LOADING ? "the model is still loading" : "the model failed to load");
    return;
  }
  if (is_models) {
    handle_models(a, c, ss_engine_n_ctx(eng));
    return;
  }
  ss_engine_state st = ss_engine_get_state(eng);
  if (a->draining || st != SS_ENGINE_READY) {
    send_error(c, 503, NULL, NULL, NULL, "%s",
               st == SS_ENGINE_FAILED ? "the engine has failed (a rank was lost); restart the server"
                                      : "the server is shutting down");
    return;
  }
  handle_generate(a, c, req, is_chat, eng, m, &tmpl);
}

/* ------------------------------------------------------------------------ */
/* Life cycle                                                                 */

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
  pthread_mutex_init(&a->mu, NULL);
  ss_http_callbacks cb = {.on_request = on_request, .on_abort = on_client_gone, .user = a};
  int rc = ss_http_server_start(loop, a->o.host, a->o.port, &a->o.http, &cb, &a->http);
  if (rc) {
    free(a->model_name);
    free(a->api_key);
    free(a);
    return rc;
  }
  uv_async_init(loop, &a->wake, on_wake);
  a->wake.data = a;
  *out = a;
  return SS_OK;
}

int ss_api_port(const ss_api *a) { return ss_http_server_port(a->http); }

void ss_api_set_ready(ss_api *a, ss_engine *e, const ss_model *m, const ss_chat_template *t) {
  pthread_mutex_lock(&a->mu);
  a->engine = e;
  a->model = m;
  a->tmpl = *t;
  a->phase = PHASE_READY;
  pthread_mutex_unlock(&a->mu);
}

void ss_api_set_failed(ss_api *a) {
  pthread_mutex_lock(&a->mu);
  a->phase = PHASE_LOAD_FAILED;
  pthread_mutex_unlock(&a->mu);
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
  free(a->model_name);
  free(a->api_key);
  pthread_mutex_destroy(&a->mu);
  free(a);
}
