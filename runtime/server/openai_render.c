/* OpenAI response bodies: error objects, whole chat/completion responses,
 * streamed chunks (Server-Sent Events) with usage, and both logprob formats. */
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/base/utf8.h"
#include "runtime/server/api_internal.h"
#include "runtime/tokenizer/tokenizer.h"

/* ------------------------------------------------------------------------ */
/* Responses                                                                  */

void ss_oai_send_json(ss_http_conn *c, int status, json_t *o, const char *extra_headers) {
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

void ss_oai_send_error(ss_http_conn *c, int status, const char *param, const char *code,
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
  ss_oai_send_json(c, status, json_pack("{s:o}", "error", err), extra_headers ? extra_headers : "");
}

/* ------------------------------------------------------------------------ */
/* Token text for logprobs                                                    */

/* A token's bytes as a JSON string (invalid UTF-8, e.g. half a character,
 * becomes U+FFFD) and as a byte array. */
json_t *ss_oai_json_text(const char *p, size_t n) {
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
    json_array_append_new(top, json_pack("{s:o, s:f, s:o}", "token", ss_oai_json_text(tb, tn),
                                         "logprob", (double)ev->top_logprobs[i], "bytes",
                                         token_bytes(tb, tn)));
  }
  return json_pack("{s:o, s:f, s:o, s:o}", "token", ss_oai_json_text(buf, n), "logprob",
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
  json_array_append_new(json_object_get(lp, "tokens"), ss_oai_json_text(buf, n));
  json_array_append_new(json_object_get(lp, "token_logprobs"), json_real(ev->logprob));
  json_t *top = json_object();
  for (int32_t i = 0; i < ev->n_top; i++) {
    char tb[256];
    size_t tn = piece(m, ev->top_ids[i], tb, sizeof tb);
    json_t *k = ss_oai_json_text(tb, tn);
    json_object_set_new(top, json_string_value(k), json_real(ev->top_logprobs[i]));
    json_decref(k);
  }
  json_array_append_new(json_object_get(lp, "top_logprobs"), top);
  json_array_append_new(json_object_get(lp, "text_offset"), json_integer((json_int_t)offset));
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

static json_t *usage_json(int32_t n_prompt, int32_t n_cached, int32_t n_gen) {
  return json_pack("{s:i, s:i, s:i, s:{s:i}}", "prompt_tokens", n_prompt, "completion_tokens",
                   n_gen, "total_tokens", n_prompt + n_gen, "prompt_tokens_details",
                   "cached_tokens", n_cached);
}

/* One chat chunk with this delta (consumed), the role on the first. */
static void stream_delta(api_req *q, json_t *delta, const char *finish_reason) {
  if (!q->role_sent) {
    json_object_set_new(delta, "role", json_string("assistant"));
    q->role_sent = true;
  }
  json_t *o = chunk_base(q);
  json_t *choice = json_pack("{s:i, s:o, s:n, s:s?}", "index", 0, "delta", delta, "logprobs",
                             "finish_reason", finish_reason);
  json_object_set_new(o, "choices", json_pack("[o]", choice));
  if (q->include_usage) json_object_set_new(o, "usage", json_null());
  sse_send(q->conn, o);
}

static void stream_content(api_req *q, size_t from, size_t to) {
  if (to <= from) return;
  json_t *t = json_stringn(q->text.p + from, to - from);
  stream_delta(q, json_pack("{s:o}", "content", t ? t : json_string("")), NULL);
}

/* Tool calls as OpenAI streams them: per call, a chunk with its index, id,
 * type and name (arguments ""), then the arguments in pieces. */
static void stream_calls(api_req *q, json_t *calls) {
  enum { PIECE = 16 };
  size_t i;
  json_t *c;
  json_array_foreach(calls, i, c) {
    json_t *f = json_object_get(c, "function");
    json_t *head = json_pack("{s:I, s:O, s:s, s:{s:O, s:s}}", "index", (json_int_t)i, "id",
                             json_object_get(c, "id"), "type", "function", "function", "name",
                             json_object_get(f, "name"), "arguments", "");
    stream_delta(q, json_pack("{s:n, s:[o]}", "content", "tool_calls", head), NULL);
    const char *a = json_string_value(json_object_get(f, "arguments"));
    size_t n = strlen(a);
    for (size_t k = 0; k < n;) {
      size_t len = n - k < PIECE ? n - k : PIECE;
      /* Never half a UTF-8 character in a piece. */
      while (k + len < n && ((unsigned char)a[k + len] & 0xC0) == 0x80) len++;
      json_t *piece = json_pack("{s:I, s:{s:s%}}", "index", (json_int_t)i, "function",
                                "arguments", a + k, len);
      stream_delta(q, json_pack("{s:[o]}", "tool_calls", piece), NULL);
      k += len;
    }
  }
}

static void stream_token(api_req *q, const ss_model *m, const ss_engine_event *ev) {
  if (q->chat && q->tools.on) {
    /* Text goes out as far as it cannot be the beginning of a call. */
    ss_strbuf_append(&q->text, ev->text ? ev->text : "", ev->text_len);
    if (q->text.failed) return;
    size_t r = ss_oai_tools_releasable(&q->tools, q->text.p, q->text.len, q->sent);
    stream_content(q, q->sent, r);
    q->sent = r;
    return;
  }
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

/* A request the engine aborted while its client was still there: the server
 * drained past --drain-timeout ("abort" is not an OpenAI finish reason, so the
 * client gets an error, code "server_shutdown", not a truncated success). */
static const char k_drained[] =
    "the server is shutting down: the request was stopped at --drain-timeout";

static void stream_done(api_req *q, const ss_engine_event *ev) {
  ss_http_conn *c = q->conn;
  if (strcmp(ev->finish_reason, "abort") == 0) {
    sse_send(c, json_pack("{s:{s:s, s:s, s:n, s:s}}", "error", "message", k_drained, "type",
                          "server_error", "param", "code", "server_shutdown"));
  } else if (strcmp(ev->finish_reason, "error") == 0) {
    json_t *err = json_pack("{s:{s:s, s:s, s:n, s:n}}", "error", "message",
                            ev->error ? ev->error : "engine error", "type", "server_error",
                            "param", "code");
    sse_send(c, err);
  } else if (q->chat && q->tools.on) {
    size_t clen = 0;
    json_t *calls =
        q->text.failed ? NULL : ss_oai_tools_extract(&q->tools, q->text.p, q->text.len, &clen);
    stream_content(q, q->sent, clen);
    if (calls) stream_calls(q, calls);
    json_decref(calls);
    const char *fr = calls && strcmp(ev->finish_reason, "stop") == 0 ? "tool_calls"
                                                                     : ev->finish_reason;
    stream_delta(q, json_object(), fr);
    if (q->include_usage) {
      json_t *u = chunk_base(q);
      json_object_set_new(u, "choices", json_array());
      json_object_set_new(u, "usage", usage_json(ev->n_prompt, ev->n_cached, ev->n_generated));
      sse_send(c, u);
    }
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
      json_object_set_new(u, "usage", usage_json(ev->n_prompt, ev->n_cached, ev->n_generated));
      sse_send(c, u);
    }
  }
  static const char k_done[] = "data: [DONE]\n\n";
  ss_http_stream_write(c, k_done, sizeof k_done - 1);
  ss_http_stream_end(c);
}

/* ------------------------------------------------------------------------ */
/* The whole response (not streamed)                                          */

static void respond_done(api_req *q, const ss_engine_event *ev) {
  if (strcmp(ev->finish_reason, "abort") == 0) {
    ss_oai_send_error(q->conn, 503, NULL, "server_shutdown", NULL, "%s", k_drained);
    return;
  }
  if (strcmp(ev->finish_reason, "error") == 0) {
    ss_oai_send_error(q->conn, 500, NULL, NULL, NULL, "%s",
                      ev->error ? ev->error : "engine error");
    return;
  }
  json_t *text = json_stringn(q->text.p ? q->text.p : "", q->text.len);
  if (!text) text = json_string("");
  json_t *choice;
  size_t clen = 0;
  json_t *calls = q->chat && !q->text.failed
                      ? ss_oai_tools_extract(&q->tools, q->text.p, q->text.len, &clen)
                      : NULL;
  if (q->chat) {
    json_t *lp = q->lp ? json_pack("{s:o}", "content", q->lp) : json_null();
    q->lp = NULL;
    const char *fr = ev->finish_reason;
    if (calls) {
      /* The text before the calls is the content; none is null. */
      json_decref(text);
      text = clen ? json_stringn(q->text.p, clen) : json_null();
      if (!text) text = json_string("");
      if (strcmp(fr, "stop") == 0) fr = "tool_calls";
    }
    choice = json_pack("{s:i, s:{s:s, s:o}, s:o, s:s}", "index", 0, "message", "role",
                       "assistant", "content", text, "logprobs", lp, "finish_reason", fr);
    if (calls) json_object_set_new(json_object_get(choice, "message"), "tool_calls", calls);
  } else {
    json_t *lp = q->lp ? q->lp : json_null();
    q->lp = NULL;
    choice = json_pack("{s:i, s:o, s:o, s:s}", "index", 0, "text", text, "logprobs", lp,
                       "finish_reason", ev->finish_reason);
  }
  json_t *o = json_pack("{s:s, s:s, s:I, s:s, s:[o], s:o}", "id", q->rid, "object",
                        q->chat ? "chat.completion" : "text_completion", "created",
                        (json_int_t)q->created, "model", q->api->model_name, "choices", choice,
                        "usage", usage_json(ev->n_prompt, ev->n_cached, ev->n_generated));
  ss_oai_send_json(q->conn, 200, o, "");
}

/* ------------------------------------------------------------------------ */
/* Engine events                                                              */

void ss_oai_on_token(api_req *q, const ss_model *m, const ss_engine_event *ev) {
  if (q->stream) {
    stream_token(q, m, ev);
    return;
  }
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

void ss_oai_on_done(api_req *q, const ss_engine_event *ev) {
  if (q->stream) stream_done(q, ev);
  else respond_done(q, ev);
}
