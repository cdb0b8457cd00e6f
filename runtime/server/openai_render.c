/* OpenAI response bodies: error objects, whole chat/completion responses,
 * streamed chunks (Server-Sent Events) with usage, and both logprob formats. */
#include <jansson.h>
#include <math.h>
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

/* echo with logprobs: the prompt's tokens in the completions format, the
 * first with null logprobs (nothing precedes it), offsets from 0. */
static json_t *prompt_logprobs_json(const api_req *q, const ss_model *m,
                                    const ss_engine_event *ev) {
  json_t *lp = completion_logprobs_new();
  size_t off = 0;
  for (int32_t i = 0; i < q->n_prompt_ids; i++) {
    char buf[256];
    size_t n = piece(m, q->prompt_ids[i], buf, sizeof buf);
    json_array_append_new(json_object_get(lp, "tokens"), ss_oai_json_text(buf, n));
    const int32_t j = i - 1; /* the engine's index: token i after tokens 0..i-1 */
    const bool have = j >= 0 && ev->prompt_lp && j < ev->n_prompt_lp && !isnan(ev->prompt_lp[j]);
    json_array_append_new(json_object_get(lp, "token_logprobs"),
                          have ? json_real(ev->prompt_lp[j]) : json_null());
    json_t *top = json_null();
    if (have) {
      top = json_object();
      for (int32_t k = 0; ev->prompt_top_ids && k < q->n_top; k++) {
        char tb[256];
        size_t tn = piece(m, ev->prompt_top_ids[(size_t)j * q->n_top + k], tb, sizeof tb);
        json_t *key = ss_oai_json_text(tb, tn);
        json_object_set_new(top, json_string_value(key),
                            json_real(ev->prompt_top_lp[(size_t)j * q->n_top + k]));
        json_decref(key);
      }
    }
    json_array_append_new(json_object_get(lp, "top_logprobs"), top);
    json_array_append_new(json_object_get(lp, "text_offset"), json_integer((json_int_t)off));
    off += n;
  }
  return lp;
}

/* The prompt's logprobs followed by a choice's (consumed, may be NULL). */
static json_t *with_prompt_logprobs(const api_req *q, json_t *lp) {
  json_t *all = json_deep_copy(q->echo_lp);
  if (!all) return lp ? lp : json_null();
  static const char *const keys[] = {"tokens", "token_logprobs", "top_logprobs", "text_offset"};
  for (int i = 0; lp && i < 4; i++)
    json_array_extend(json_object_get(all, keys[i]), json_object_get(lp, keys[i]));
  json_decref(lp);
  return all;
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

/* One chat chunk of choice ch with this delta (consumed), the role on its first. */
static void stream_delta(api_req *q, api_choice *ch, json_t *delta, const char *finish_reason) {
  if (!ch->role_sent) {
    json_object_set_new(delta, "role", json_string("assistant"));
    ch->role_sent = true;
  }
  json_t *o = chunk_base(q);
  json_t *choice = json_pack("{s:i, s:o, s:n, s:s?}", "index", (int)(ch - q->ch), "delta", delta,
                             "logprobs", "finish_reason", finish_reason);
  json_object_set_new(o, "choices", json_pack("[o]", choice));
  if (q->include_usage) json_object_set_new(o, "usage", json_null());
  sse_send(q->conn, o);
}

static void stream_content(api_req *q, api_choice *ch, size_t from, size_t to) {
  if (to <= from) return;
  json_t *t = json_stringn(ch->text.p + from, to - from);
  stream_delta(q, ch, json_pack("{s:o}", "content", t ? t : json_string("")), NULL);
}

/* Tool calls as OpenAI streams them: per call, a chunk with its index, id,
 * type and name (arguments ""), then the arguments in pieces. */
static void stream_calls(api_req *q, api_choice *ch, json_t *calls) {
  enum { PIECE = 16 };
  size_t i;
  json_t *c;
  json_array_foreach(calls, i, c) {
    json_t *f = json_object_get(c, "function");
    json_t *head = json_pack("{s:I, s:O, s:s, s:{s:O, s:s}}", "index", (json_int_t)i, "id",
                             json_object_get(c, "id"), "type", "function", "function", "name",
                             json_object_get(f, "name"), "arguments", "");
    stream_delta(q, ch, json_pack("{s:n, s:[o]}", "content", "tool_calls", head), NULL);
    const char *a = json_string_value(json_object_get(f, "arguments"));
    size_t n = strlen(a);
    for (size_t k = 0; k < n;) {
      size_t len = n - k < PIECE ? n - k : PIECE;
      /* Never half a UTF-8 character in a piece. */
      while (k + len < n && ((unsigned char)a[k + len] & 0xC0) == 0x80) len++;
      json_t *piece = json_pack("{s:I, s:{s:s%}}", "index", (json_int_t)i, "function",
                                "arguments", a + k, len);
      stream_delta(q, ch, json_pack("{s:[o]}", "tool_calls", piece), NULL);
      k += len;
    }
  }
}

/* A completion chunk of choice ch: text (consumed), logprobs (consumed or NULL). */
static void stream_text(api_req *q, api_choice *ch, json_t *text, json_t *lp,
                        const char *finish_reason) {
  json_t *o = chunk_base(q);
  json_t *choice = json_pack("{s:i, s:o, s:o, s:s?}", "index", (int)(ch - q->ch), "text", text,
                             "logprobs", lp ? lp : json_null(), "finish_reason", finish_reason);
  if (!finish_reason) json_object_set_new(choice, "finish_reason", json_null());
  json_object_set_new(o, "choices", json_pack("[o]", choice));
  if (q->include_usage) json_object_set_new(o, "usage", json_null());
  sse_send(q->conn, o);
}

/* Completions with echo, streamed: the prompt's text, first in the choice. */
static void stream_echo(api_req *q, api_choice *ch) {
  if (ch->echoed || !q->g.echo) return;
  ch->echoed = true;
  json_t *t = json_stringn(q->g.echo, q->g.echo_len);
  stream_text(q, ch, t ? t : json_string(""), q->echo_lp ? json_deep_copy(q->echo_lp) : NULL,
              NULL);
}

static void stream_token(api_req *q, api_choice *ch, const ss_model *m,
                         const ss_engine_event *ev) {
  if (q->chat && q->tools.on) {
    /* Text goes out as far as it cannot be the beginning of a call. */
    ss_strbuf_append(&ch->text, ev->text ? ev->text : "", ev->text_len);
    if (ch->text.failed) return;
    size_t r = ss_oai_tools_releasable(&q->tools, ch->text.p, ch->text.len, ch->sent);
    stream_content(q, ch, ch->sent, r);
    ch->sent = r;
    return;
  }
  json_t *text = json_stringn(ev->text ? ev->text : "", ev->text_len);
  if (!text) text = json_string("");
  if (q->chat) {
    json_t *delta = json_pack("{s:o}", "content", text);
    if (!ch->role_sent) {
      json_object_set_new(delta, "role", json_string("assistant"));
      ch->role_sent = true;
    }
    json_t *lp = json_null();
    if (q->logprobs) lp = json_pack("{s:[o]}", "content", chat_logprob(m, ev));
    json_t *o = chunk_base(q);
    json_t *choice = json_pack("{s:i, s:o, s:o, s:n}", "index", (int)(ch - q->ch), "delta",
                               delta, "logprobs", lp, "finish_reason");
    json_object_set_new(o, "choices", json_pack("[o]", choice));
    if (q->include_usage) json_object_set_new(o, "usage", json_null());
    sse_send(q->conn, o);
  } else {
    stream_echo(q, ch);
    json_t *lp = NULL;
    if (q->logprobs) {
      lp = completion_logprobs_new();
      completion_logprobs_add(lp, m, ev, ch->text_offset);
    }
    stream_text(q, ch, text, lp, NULL);
  }
  ch->text_offset += ev->text_len;
}

/* A request the engine aborted while its client was still there: the server
 * drained past --drain-timeout ("abort" is not an OpenAI finish reason, so the
 * client gets an error, code "server_shutdown", not a truncated success). */
const char ss_oai_drained_msg[] =
    "the server is shutting down: the request was stopped at --drain-timeout";

static json_t *usage_all(const api_req *q) {
  /* The prompt counts once; every generated sequence's tokens count. */
  int32_t n_gen = 0;
  for (int32_t i = 0; i < q->n_ch; i++) n_gen += q->ch[i].n_generated;
  return usage_json(q->ch[0].n_prompt, q->ch[0].n_cached, n_gen);
}

void ss_oai_choice_done(api_req *q, api_choice *ch) {
  if (!q->stream) return;
  if (q->chat && q->tools.on) {
    size_t clen = 0;
    json_t *calls = ch->text.failed ? NULL
                                    : ss_oai_tools_extract(&q->tools, ch->text.p, ch->text.len,
                                                           &clen);
    stream_content(q, ch, ch->sent, clen);
    if (calls) stream_calls(q, ch, calls);
    json_decref(calls);
    const char *fr = calls && strcmp(ch->finish, "stop") == 0 ? "tool_calls" : ch->finish;
    stream_delta(q, ch, json_object(), fr);
  } else if (q->chat) {
    stream_delta(q, ch, json_object(), ch->finish);
  } else {
    stream_echo(q, ch);
    stream_text(q, ch, json_string(""), NULL, ch->finish);
  }
}

static void stream_end(api_req *q) {
  static const char k_done[] = "data: [DONE]\n\n";
  ss_http_stream_write(q->conn, k_done, sizeof k_done - 1);
  ss_http_stream_end(q->conn);
}

void ss_oai_answer_error(api_req *q, int status, const char *code, const char *msg) {
  if (q->stream) {
    json_t *err = json_pack("{s:s, s:s, s:n}", "message", msg, "type",
                            status >= 500 ? "server_error" : error_type(status), "param");
    json_object_set_new(err, "code", code ? json_string(code) : json_null());
    sse_send(q->conn, json_pack("{s:o}", "error", err));
    stream_end(q);
  } else {
    ss_oai_send_error(q->conn, status, NULL, code, status == 429 ? "Retry-After: 1\r\n" : NULL,
                      "%s", msg);
  }
}

/* ------------------------------------------------------------------------ */
/* The whole response (not streamed)                                          */

static json_t *choice_json(api_req *q, api_choice *ch, int32_t index) {
  ss_strbuf *t = &ch->text;
  json_t *text;
  if (q->g.echo) {
    ss_strbuf b = {0};
    ss_strbuf_append(&b, q->g.echo, q->g.echo_len);
    ss_strbuf_append(&b, t->p ? t->p : "", t->len);
    text = json_stringn(b.p ? b.p : "", b.len);
    ss_strbuf_free(&b);
  } else {
    text = json_stringn(t->p ? t->p : "", t->len);
  }
  if (!text) text = json_string("");
  size_t clen = 0;
  json_t *calls = q->chat && !t->failed ? ss_oai_tools_extract(&q->tools, t->p, t->len, &clen)
                                         : NULL;
  json_t *choice;
  if (q->chat) {
    json_t *lp = ch->lp ? json_pack("{s:o}", "content", ch->lp) : json_null();
    ch->lp = NULL;
    const char *fr = ch->finish;
    if (calls) {
      /* The text before the calls is the content; none is null. */
      json_decref(text);
      text = clen ? json_stringn(t->p, clen) : json_null();
      if (!text) text = json_string("");
      if (strcmp(fr, "stop") == 0) fr = "tool_calls";
    }
    choice = json_pack("{s:i, s:{s:s, s:o}, s:o, s:s}", "index", index, "message", "role",
                       "assistant", "content", text, "logprobs", lp, "finish_reason", fr);
    if (calls) json_object_set_new(json_object_get(choice, "message"), "tool_calls", calls);
  } else {
    json_t *lp = q->echo_lp ? with_prompt_logprobs(q, ch->lp) : ch->lp ? ch->lp : json_null();
    ch->lp = NULL;
    choice = json_pack("{s:i, s:o, s:o, s:s}", "index", index, "text", text, "logprobs", lp,
                       "finish_reason", ch->finish);
  }
  return choice;
}

/* best_of: the most likely first; equal sums keep their order. */
static int by_logprob(const void *a, const void *b) {
  const api_choice *x = *(const api_choice *const *)a, *y = *(const api_choice *const *)b;
  if (x->sum_logprob != y->sum_logprob) return x->sum_logprob > y->sum_logprob ? -1 : 1;
  return x < y ? -1 : x > y;
}

static void respond_all(api_req *q) {
  api_choice *order[SS_OAI_MAX_N];
  for (int32_t i = 0; i < q->n_ch; i++) order[i] = &q->ch[i];
  if (q->n_ret < q->n_ch) qsort(order, (size_t)q->n_ch, sizeof order[0], by_logprob);
  json_t *choices = json_array();
  for (int32_t i = 0; i < q->n_ret; i++)
    json_array_append_new(choices, choice_json(q, order[i], i));
  json_t *o = json_pack("{s:s, s:s, s:I, s:s, s:o, s:o}", "id", q->rid, "object",
                        q->chat ? "chat.completion" : "text_completion", "created",
                        (json_int_t)q->created, "model", q->api->model_name, "choices", choices,
                        "usage", usage_all(q));
  ss_oai_send_json(q->conn, 200, o, "");
}

void ss_oai_finish(api_req *q) {
  if (!q->stream) {
    respond_all(q);
    return;
  }
  if (q->include_usage) {
    json_t *u = chunk_base(q);
    json_object_set_new(u, "choices", json_array());
    json_object_set_new(u, "usage", usage_all(q));
    sse_send(q->conn, u);
  }
  stream_end(q);
}

/* ------------------------------------------------------------------------ */
/* Engine events                                                              */

void ss_oai_on_token(api_req *q, api_choice *ch, const ss_model *m, const ss_engine_event *ev) {
  if (q->prompt_ids && !q->echo_lp && ch == &q->ch[0]) q->echo_lp = prompt_logprobs_json(q, m, ev);
  ch->sum_logprob += (double)ev->logprob;
  if (q->stream) {
    stream_token(q, ch, m, ev);
    return;
  }
  ss_strbuf_append(&ch->text, ev->text ? ev->text : "", ev->text_len);
  if (q->logprobs) {
    if (q->chat) {
      if (!ch->lp) ch->lp = json_array();
      json_array_append_new(ch->lp, chat_logprob(m, ev));
    } else {
      if (!ch->lp) ch->lp = completion_logprobs_new();
      completion_logprobs_add(ch->lp, m, ev, ch->text_offset);
    }
  }
  ch->text_offset += ev->text_len;
}
