/* An OpenAI request body into an ss_engine_req: every field checked, errors
 * naming the field and the limit, then chat template and tokenizer.  Runs on
 * a worker thread (request.c): it reads only its arguments. */
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "runtime/base/status.h"
#include "runtime/grammar/grammar.h"
#include "runtime/server/api_internal.h"
#include "runtime/tokenizer/tokenizer.h"

/* ------------------------------------------------------------------------ */
/* Fields                                                                     */

bool ss_oai_fail(parse_err *e, int status, const char *param, const char *fmt, ...) {
  e->status = status;
  e->param = param;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(e->msg, sizeof e->msg, fmt, ap);
  va_end(ap);
  return false;
}

/* What a value is, for messages that name what a field was given. */
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
    return ss_oai_fail(e, 400, key, "'%s' must be a number, not %s", key, json_kind(v));
  double x = json_number_value(v);
  if (!isfinite(x) || x < lo || x > hi)
    return ss_oai_fail(e, 400, key, "'%s' = %g is outside [%g, %g]", key, x, lo, hi);
  *out = x;
  return true;
}

static bool get_int(json_t *o, const char *key, int64_t lo, int64_t hi, int64_t *out, bool *set,
                    parse_err *e) {
  json_t *v = json_object_get(o, key);
  if (!v || json_is_null(v)) return true;
  if (!json_is_integer(v))
    return ss_oai_fail(e, 400, key, "'%s' must be an integer, not %s", key, json_kind(v));
  json_int_t x = json_integer_value(v);
  if (x < lo || x > hi)
    return ss_oai_fail(e, 400, key, "'%s' = %lld is outside [%lld, %lld]", key, (long long)x,
                       (long long)lo, (long long)hi);
  *out = x;
  if (set) *set = true;
  return true;
}

static bool get_bool(json_t *o, const char *key, bool *out, parse_err *e) {
  json_t *v = json_object_get(o, key);
  if (!v || json_is_null(v)) return true;
  if (!json_is_boolean(v))
    return ss_oai_fail(e, 400, key, "'%s' must be a boolean, not %s", key, json_kind(v));
  *out = json_is_true(v);
  return true;
}

/* The fields shared by both endpoints. */
bool ss_oai_check_model(const gen_ctx *x, json_t *o, parse_err *e) {
  json_t *model = json_object_get(o, "model");
  if (model && !json_is_null(model)) {
    if (!json_is_string(model))
      return ss_oai_fail(e, 400, "model", "'model' must be a string, not %s", json_kind(model));
    if (strcmp(json_string_value(model), x->model_name) != 0)
      return ss_oai_fail(e, 404, "model",
                         "the model '%.200s' does not exist; this server serves '%s'",
                         json_string_value(model), x->model_name);
  }
  return true;
}

/* Fields that would change the output and are not implemented: a 400 naming
 * the field, never a response that ignores it.  A field at its neutral value
 * (0 penalty, empty bias, "text" format, no tools) changes nothing and passes.
 * Fields that never change the output (user, metadata, ...) are accepted;
 * any other field is refused as unknown, as OpenAI's API does, so that a
 * misspelt field is not silently dropped. */
static bool check_fields(json_t *o, bool chat, parse_err *e) {
  static const char *const known[] = {
      "model", "user", "metadata", "store", "service_tier", "stream_options", "n", "best_of",
      "max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k", "min_p", "seed",
      "stop", "stream", "ignore_eos", "logprobs", "top_logprobs", "echo", "prompt", "messages",
      "parallel_tool_calls", "presence_penalty", "frequency_penalty", "repetition_penalty",
      "logit_bias", "response_format", "tools", "tool_choice", "functions", "function_call",
      "suffix", "min_tokens", "structured_outputs", "guided_json", "guided_regex",
      "guided_choice", "guided_grammar", NULL};
  const char *key;
  json_t *v;
  json_object_foreach(o, key, v) {
    size_t i = 0;
    while (known[i] && strcmp(known[i], key) != 0) i++;
    if (!known[i])
      return ss_oai_fail(
          e, 400, NULL,
          "unrecognized request field '%.64s' (a field this server does "
          "not know would be ignored, so it is refused; see the README's field table)",
          key);
  }
  /* Known and not implemented: refused unless neutral. */
  static const char *const penalties[] = {"presence_penalty", "frequency_penalty", NULL};
  for (int i = 0; penalties[i]; i++) {
    v = json_object_get(o, penalties[i]);
    if (v && !json_is_null(v) && !(json_is_number(v) && json_number_value(v) == 0.0))
      return ss_oai_fail(e, 400, penalties[i], "'%s' is not supported yet (only 0)", penalties[i]);
  }
  v = json_object_get(o, "repetition_penalty");
  if (v && !json_is_null(v) && !(json_is_number(v) && json_number_value(v) == 1.0))
    return ss_oai_fail(e, 400, "repetition_penalty",
                       "'repetition_penalty' is not supported yet "
                       "(only 1)");
  v = json_object_get(o, "min_tokens");
  if (v && !json_is_null(v) && !(json_is_integer(v) && json_integer_value(v) == 0))
    return ss_oai_fail(e, 400, "min_tokens", "'min_tokens' is not supported yet (only 0)");
  v = json_object_get(o, "logit_bias");
  if (v && !json_is_null(v) && !(json_is_object(v) && json_object_size(v) == 0))
    return ss_oai_fail(e, 400, "logit_bias", "'logit_bias' is not supported yet");
  static const char *const tool_fields[] = {"tools", "functions", NULL};
  for (int i = 0; tool_fields[i]; i++) {
    v = json_object_get(o, tool_fields[i]);
    if (v && !json_is_null(v) && !(json_is_array(v) && json_array_size(v) == 0))
      return ss_oai_fail(e, 400, tool_fields[i], "'%s' (tool calling) is not supported yet",
                         tool_fields[i]);
  }
  static const char *const choice_fields[] = {"tool_choice", "function_call", NULL};
  for (int i = 0; choice_fields[i]; i++) {
    v = json_object_get(o, choice_fields[i]);
    if (v && !json_is_null(v) &&
        !(json_is_string(v) && (strcmp(json_string_value(v), "none") == 0 ||
                                strcmp(json_string_value(v), "auto") == 0)))
      return ss_oai_fail(e, 400, choice_fields[i], "'%s' = %s is not supported without tools",
                         choice_fields[i], json_is_string(v) ? json_string_value(v) : json_kind(v));
  }
  v = json_object_get(o, "suffix");
  if (v && !json_is_null(v) && !(json_is_string(v) && json_string_length(v) == 0))
    return ss_oai_fail(e, 400, "suffix", "'suffix' is not supported");
  if (chat && json_object_get(o, "prompt"))
    return ss_oai_fail(e, 400, "prompt", "chat completions take 'messages', not 'prompt'");
  if (!chat && json_object_get(o, "messages"))
    return ss_oai_fail(e, 400, "messages",
                       "completions take 'prompt', not 'messages' (use "
                       "/v1/chat/completions)");
  return true;
}

static bool parse_common(const gen_ctx *x, json_t *o, bool chat, gen_fields *g, parse_err *e) {
  if (!check_fields(o, chat, e) || !ss_oai_check_model(x, o, e)) return false;
  int64_t n = 1;
  if (!get_int(o, "n", INT32_MIN, INT32_MAX, &n, NULL, e)) return false;
  if (n != 1)
    return ss_oai_fail(e, 400, "n", "'n' = %lld is not supported: only n = 1", (long long)n);
  json_t *bo = json_object_get(o, "best_of");
  if (bo && json_is_integer(bo) && json_integer_value(bo) != 1)
    return ss_oai_fail(e, 400, "best_of", "'best_of' must be 1");
  if (!get_int(o, "max_tokens", INT32_MIN, INT32_MAX, &g->max_tokens, &g->max_set, e)) return false;
  if (!get_int(o, "max_completion_tokens", INT32_MIN, INT32_MAX, &g->max_tokens, &g->max_set, e))
    return false;
  if (g->max_set && g->max_tokens < 1)
    return ss_oai_fail(
        e, 400,
        json_object_get(o, "max_completion_tokens") ? "max_completion_tokens" : "max_tokens",
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
  if (top_p <= 0.0) return ss_oai_fail(e, 400, "top_p", "'top_p' must be greater than 0");
  g->r.sampling = (ss_sampler_params){
      .temperature = (float)temp,
      .top_k = (int32_t)(top_k < 0 ? 0 : top_k),
      .top_p = (float)top_p,
      .min_p = (float)min_p,
      .seed = seed_set ? (uint64_t)seed : ((uint64_t)time(NULL) * 2654435761u) ^ (uint64_t)clock()};
  /* stop: a string or an array of up to 16 non-empty strings */
  json_t *stop = json_object_get(o, "stop");
  if (stop && !json_is_null(stop)) {
    if (json_is_string(stop)) {
      if (json_string_length(stop) == 0)
        return ss_oai_fail(e, 400, "stop", "'stop' must not be empty");
      g->r.stop[g->r.n_stop++] = strdup(json_string_value(stop));
    } else if (json_is_array(stop)) {
      if (json_array_size(stop) > SS_ENGINE_MAX_STOP)
        return ss_oai_fail(e, 400, "stop", "'stop' has %zu strings; the limit is %d",
                           json_array_size(stop), SS_ENGINE_MAX_STOP);
      size_t i;
      json_t *s;
      json_array_foreach(stop, i, s) {
        if (!json_is_string(s) || json_string_length(s) == 0)
          return ss_oai_fail(e, 400, "stop", "'stop[%zu]' must be a non-empty string", i);
        g->r.stop[g->r.n_stop++] = strdup(json_string_value(s));
      }
    } else {
      return ss_oai_fail(e, 400, "stop", "'stop' must be a string or an array of strings, not %s",
                         json_kind(stop));
    }
  }
  if (!get_bool(o, "stream", &g->stream, e) || !get_bool(o, "ignore_eos", &g->r.ignore_eos, e))
    return false;
  json_t *so = json_object_get(o, "stream_options");
  if (so && !json_is_null(so)) {
    if (!json_is_object(so))
      return ss_oai_fail(e, 400, "stream_options", "'stream_options' must be an object");
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
      return ss_oai_fail(e, 400, "top_logprobs", "'top_logprobs' needs 'logprobs': true");
    g->r.n_top_logprobs = (int32_t)top;
  } else if (lp && !json_is_null(lp)) {
    int64_t k = 0;
    if (!get_int(o, "logprobs", 0, SS_ENGINE_MAX_TOP, &k, NULL, e)) return false;
    g->r.logprobs = true;
    g->r.n_top_logprobs = (int32_t)k;
  }
  return true;
}

void ss_oai_req_free(ss_engine_req *r) {
  free(r->prompt);
  r->prompt = NULL;
  r->n_prompt = 0;
  for (int i = 0; i < r->n_stop; i++) free(r->stop[i]);
  r->n_stop = 0;
  ss_grammar_state_free(r->grammar);
  r->grammar = NULL;
}

/* The prompt of /v1/completions: a string, a list of token ids, or a list of
 * one string / one list of ids. */
static bool parse_prompt(json_t *o, const ss_model *m, ss_engine_req *r, parse_err *e) {
  json_t *p = json_object_get(o, "prompt");
  if (!p || json_is_null(p)) return ss_oai_fail(e, 400, "prompt", "'prompt' is required");
  if (json_is_array(p) && json_array_size(p) == 1 &&
      (json_is_string(json_array_get(p, 0)) || json_is_array(json_array_get(p, 0))))
    p = json_array_get(p, 0);
  if (json_is_string(p)) {
    size_t n = 0;
    int32_t *ids = NULL;
    if (ss_tokenizer_encode(m->tok, json_string_value(p), json_string_length(p),
                            ss_tokenizer_add_bos(m->tok), false, &ids, &n))
      return ss_oai_fail(e, 400, "prompt", "cannot tokenize the prompt: %s", ss_error_msg());
    r->prompt = ids;
    r->n_prompt = (int32_t)n;
  } else if (json_is_array(p)) {
    size_t n = json_array_size(p);
    if (n == 0) return ss_oai_fail(e, 400, "prompt", "'prompt' is an empty list");
    if (json_is_string(json_array_get(p, 0)))
      return ss_oai_fail(e, 400, "prompt",
                         "'prompt' has %zu strings: only one prompt per request "
                         "(n = 1)",
                         n);
    if (n > (size_t)INT32_MAX / 2) return ss_oai_fail(e, 400, "prompt", "'prompt' is too long");
    r->prompt = malloc(n * sizeof *r->prompt);
    if (!r->prompt) return ss_oai_fail(e, 500, NULL, "out of memory");
    r->n_prompt = (int32_t)n;
    for (size_t i = 0; i < n; i++) {
      json_t *v = json_array_get(p, i);
      if (!json_is_integer(v) || json_integer_value(v) < 0 ||
          json_integer_value(v) >= m->cfg.vocab)
        return ss_oai_fail(e, 400, "prompt", "'prompt[%zu]' must be a token id in [0, %d]", i,
                           m->cfg.vocab - 1);
      r->prompt[i] = (int32_t)json_integer_value(v);
    }
  } else {
    return ss_oai_fail(e, 400, "prompt", "'prompt' must be a string or a list of token ids, not %s",
                       json_kind(p));
  }
  if (r->n_prompt == 0)
    return ss_oai_fail(e, 400, "prompt", "the prompt is empty: it gives no tokens");
  return true;
}

/* The messages as the chat template's input, OpenAI-shaped: each one checked,
 * "developer" taken as "system", content parts joined into one string (only
 * text parts), and the fields templates read passed on (tool_calls of an
 * assistant turn, tool_call_id and name of a tool result).  *out is a new
 * array. */
static bool check_messages(json_t *msgs, json_t **out, parse_err *e) {
  const size_t n = json_array_size(msgs);
  json_t *arr = json_array();
  if (!arr) return ss_oai_fail(e, 500, NULL, "out of memory");
  for (size_t i = 0; i < n; i++) {
    json_t *mm = json_array_get(msgs, i);
    bool ok = true;
    if (!json_is_object(mm)) {
      ok = ss_oai_fail(e, 400, "messages", "'messages[%zu]' must be an object", i);
      goto next;
    }
    json_t *role = json_object_get(mm, "role");
    if (!json_is_string(role)) {
      ok = ss_oai_fail(e, 400, "messages", "'messages[%zu].role' must be a string", i);
      goto next;
    }
    const char *rs = json_string_value(role);
    if (strcmp(rs, "developer") == 0) rs = "system";
    if (strcmp(rs, "system") && strcmp(rs, "user") && strcmp(rs, "assistant") &&
        strcmp(rs, "tool")) {
      ok = ss_oai_fail(e, 400, "messages",
                       "'messages[%zu].role' = '%.40s' is not one of system, "
                       "developer, user, assistant, tool",
                       i, rs);
      goto next;
    }
    json_t *content = json_object_get(mm, "content"), *calls = json_object_get(mm, "tool_calls");
    ss_strbuf b = {0};
    ss_strbuf_append(&b, "", 0);
    if (json_is_string(content)) {
      ss_strbuf_append(&b, json_string_value(content), json_string_length(content));
    } else if (json_is_array(content)) {
      size_t k;
      json_t *part;
      json_array_foreach(content, k, part) {
        json_t *type = json_object_get(part, "type"), *text = json_object_get(part, "text");
        if (!json_is_object(part) || !json_is_string(type) ||
            strcmp(json_string_value(type), "text") != 0 || !json_is_string(text)) {
          ok = ss_oai_fail(e, 400, "messages",
                           "'messages[%zu].content[%zu]' must be a text part "
                           "({\"type\": \"text\", \"text\": ...}); other kinds are not supported",
                           i, k);
          break;
        }
        ss_strbuf_append(&b, json_string_value(text), json_string_length(text));
      }
    } else if (!((!content || json_is_null(content)) && strcmp(rs, "assistant") == 0 &&
                 json_is_array(calls))) {
      /* Only an assistant turn that calls tools may go without content. */
      ok = ss_oai_fail(e, 400, "messages",
                       "'messages[%zu].content' must be a string or a list of "
                       "text parts, not %s",
                       i, content ? json_kind(content) : "missing");
    }
    json_t *o = NULL;
    if (ok && b.failed) ok = ss_oai_fail(e, 500, NULL, "out of memory");
    if (ok) {
      o = json_object();
      json_t *c = json_stringn(b.p, b.len);
      if (!c) {
        ok = ss_oai_fail(e, 400, "messages", "'messages[%zu].content' is not valid UTF-8", i);
      } else {
        json_object_set_new(o, "role", json_string(rs));
        json_object_set_new(o, "content", c);
      }
    }
    ss_strbuf_free(&b);
    if (ok && calls && !json_is_null(calls)) {
      if (!json_is_array(calls) || strcmp(rs, "assistant") != 0)
        ok = ss_oai_fail(e, 400, "messages",
                         "'messages[%zu].tool_calls' must be a list, on an "
                         "assistant message",
                         i);
      else
        json_object_set(o, "tool_calls", calls);
    }
    static const char *const passed[] = {"tool_call_id", "name", NULL};
    for (int f = 0; ok && passed[f]; f++) {
      json_t *v = json_object_get(mm, passed[f]);
      if (!v || json_is_null(v)) continue;
      if (!json_is_string(v))
        ok = ss_oai_fail(e, 400, "messages", "'messages[%zu].%s' must be a string", i, passed[f]);
      else
        json_object_set(o, passed[f], v);
    }
    if (ok) json_array_append_new(arr, o);
    else json_decref(o);
  next:
    if (!ok) {
      json_decref(arr);
      return false;
    }
  }
  *out = arr;
  return true;
}

/* The rendered text into ids, as the model expects its prompt (the
 * tokenizer's BOS when it adds one: ss_chat_tokenize). */
static bool tokenize_rendered(const ss_model *m, const char *text, int32_t **ids, size_t *n_ids,
                              parse_err *e) {
  if (ss_chat_tokenize(m->tok, text, ss_tokenizer_add_bos(m->tok), ids, n_ids))
    return ss_oai_fail(e, 400, "messages", "cannot tokenize the messages: %s", ss_error_msg());
  return true;
}

bool ss_oai_render_messages(const gen_ctx *x, json_t *o, bool add_generation_prompt,
                            char **text, int32_t **ids, size_t *n_ids, parse_err *e) {
  if (text) *text = NULL;
  if (ids) *ids = NULL;
  if (n_ids) *n_ids = 0;
  json_t *msgs = json_object_get(o, "messages");
  if (!msgs || json_is_null(msgs)) return ss_oai_fail(e, 400, "messages", "'messages' is required");
  if (!json_is_array(msgs)) return ss_oai_fail(e, 400, "messages", "'messages' must be an array");
  size_t n = json_array_size(msgs);
  if (n == 0) return ss_oai_fail(e, 400, "messages", "'messages' is empty");
  if (n > 4096)
    return ss_oai_fail(e, 400, "messages", "'messages' has %zu entries; the limit is 4096", n);
  if (!x->tmpl)
    return ss_oai_fail(
        e, 400, "messages",
        "%s; chat needs a template: start the server with "
        "--chat-template NAME|FILE (POST /v1/completions works without one)",
        x->no_tmpl_why && *x->no_tmpl_why ? x->no_tmpl_why : "the model has no chat template");
  json_t *norm = NULL;
  if (!check_messages(msgs, &norm, e)) return false;
  char *rendered = NULL;
  bool ok = true;
  if (ss_chat_render_json(x->tmpl, norm, NULL, NULL, add_generation_prompt, &rendered))
    ok = ss_oai_fail(e, 400, "messages", "the chat template: %s", ss_error_msg());
  json_decref(norm);
  if (ok && ids) ok = tokenize_rendered(x->m, rendered, ids, n_ids, e);
  if (ok && text) {
    *text = rendered;
    rendered = NULL;
  }
  free(rendered);
  return ok;
}

static bool parse_messages(const gen_ctx *x, json_t *o, ss_engine_req *r, parse_err *e) {
  size_t nt = 0;
  if (!ss_oai_render_messages(x, o, true, NULL, &r->prompt, &nt, e)) return false;
  r->n_prompt = (int32_t)nt;
  return true;
}

/* ------------------------------------------------------------------------ */
/* The whole body                                                             */

json_t *ss_oai_load_body(const char *body, size_t body_len, parse_err *e) {
  json_error_t jerr;
  json_t *o = json_loadb(body, body_len, JSON_REJECT_DUPLICATES, &jerr);
  if (!o) {
    e->body = true;
    ss_oai_fail(e, 400, NULL, "the body is not valid JSON: %s (line %d, column %d)", jerr.text,
                jerr.line, jerr.column);
    return NULL;
  }
  if (!json_is_object(o)) {
    e->body = true;
    ss_oai_fail(e, 400, NULL, "the body must be a JSON object, not %s", json_kind(o));
    json_decref(o);
    return NULL;
  }
  return o;
}

bool ss_oai_parse_generate(const gen_ctx *x, const char *body, size_t body_len, bool chat,
                           gen_fields *g, parse_err *e) {
  *g = (gen_fields){0};
  *e = (parse_err){0};
  json_t *o = ss_oai_load_body(body, body_len, e);
  if (!o) return false;
  bool ok = parse_common(x, o, chat, g, e) && ss_oai_parse_constraints(x, o, g, e);
  if (ok && json_is_true(json_object_get(o, "echo")))
    ok = ss_oai_fail(e, 400, "echo", "'echo' is not supported");
  if (ok) ok = chat ? parse_messages(x, o, &g->r, e) : parse_prompt(o, x->m, &g->r, e);
  json_decref(o);
  if (ok && !g->max_set) {
    /* Defaults: OpenAI's 16 for completions; the rest of the context for chat. */
    int64_t room = (int64_t)x->n_ctx - g->r.n_prompt;
    g->max_tokens = chat ? room : (x->default_max_tokens < room ? x->default_max_tokens : room);
    if (g->max_tokens < 1)
      ok = ss_oai_fail(e, 400, chat ? "messages" : "prompt",
                       "the prompt (%d tokens) leaves no room in "
                       "the context length (%d)",
                       g->r.n_prompt, x->n_ctx);
  }
  if (!ok) {
    ss_oai_req_free(&g->r);
    return false;
  }
  g->r.max_new_tokens = (int32_t)(g->max_tokens > INT32_MAX ? INT32_MAX : g->max_tokens);
  return true;
}
