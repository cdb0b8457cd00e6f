/* The utility routes, answered from the body alone on a worker thread:
 *   POST /tokenize        vLLM's shapes: {"prompt": "..."} or {"messages": [...],
 *                         "add_generation_prompt": true} -> {"count", "max_model_len",
 *                         "tokens", "token_strs"}
 *   POST /detokenize      {"tokens": [...]} -> {"prompt": "..."}
 *   POST /apply-template  llama-server's: {"messages": [...], "tools": [...]} -> {"prompt": "..."}
 * /tokenize gives exactly the ids the matching generation request would be
 * given: a prompt as /v1/completions tokenizes it (special-token text is
 * plain text there), messages as /v1/chat/completions renders and tokenizes
 * them. */
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/base/status.h"
#include "runtime/server/api_internal.h"
#include "runtime/tokenizer/tokenizer.h"


/* Every field of o must be one of `known` (NULL-terminated). */
static bool only_fields(json_t *o, const char *route, const char *const *known, parse_err *e) {
  const char *key;
  json_t *v;
  json_object_foreach(o, key, v) {
    size_t i = 0;
    while (known[i] && strcmp(known[i], key) != 0) i++;
    if (!known[i]) {
      char list[256] = "";
      for (size_t k = 0; known[k]; k++)
        snprintf(list + strlen(list), sizeof list - strlen(list), "%s%s", k ? ", " : "", known[k]);
      return ss_oai_fail(e, 400, NULL, "%s: unrecognized field '%.64s' (fields: %s)", route, key,
                         list);
    }
  }
  return true;
}

static bool opt_bool(json_t *o, const char *key, bool dflt, bool *out, parse_err *e) {
  json_t *v = json_object_get(o, key);
  *out = dflt;
  if (!v || json_is_null(v)) return true;
  if (!json_is_boolean(v)) return ss_oai_fail(e, 400, key, "'%s' must be a boolean", key);
  *out = json_is_true(v);
  return true;
}

static json_t *ids_json(const int32_t *ids, size_t n) {
  json_t *a = json_array();
  for (size_t i = 0; a && i < n; i++) json_array_append_new(a, json_integer(ids[i]));
  return a;
}

static bool do_tokenize(const gen_ctx *x, json_t *o, json_t **out, parse_err *e) {
  static const char *const known[] = {"model", "prompt", "messages", "add_special_tokens",
                                      "add_generation_prompt", "return_token_strs", "tools",
                                      "tool_choice", "parallel_tool_calls", NULL};
  if (!only_fields(o, "/tokenize", known, e) || !ss_oai_check_model(x, o, e)) return false;
  json_t *prompt = json_object_get(o, "prompt"), *msgs = json_object_get(o, "messages");
  if (!prompt == !msgs)
    return ss_oai_fail(e, 400, prompt ? "messages" : "prompt",
                       "/tokenize takes exactly one of 'prompt' (a string) and 'messages'");
  bool add_special, add_gen, strs;
  if (!opt_bool(o, "add_special_tokens", true, &add_special, e) ||
      !opt_bool(o, "add_generation_prompt", true, &add_gen, e) ||
      !opt_bool(o, "return_token_strs", false, &strs, e))
    return false;
  if (prompt && json_object_get(o, "add_generation_prompt"))
    return ss_oai_fail(e, 400, "add_generation_prompt",
                       "'add_generation_prompt' goes with 'messages'");
  if (prompt && json_object_get(o, "tools"))
    return ss_oai_fail(e, 400, "tools", "'tools' goes with 'messages'");
  int32_t *ids = NULL;
  size_t n = 0;
  if (prompt) {
    if (!json_is_string(prompt)) return ss_oai_fail(e, 400, "prompt", "'prompt' must be a string");
    if (ss_tokenizer_encode(x->m->tok, json_string_value(prompt), json_string_length(prompt),
                            add_special && ss_tokenizer_add_bos(x->m->tok), false, &ids, &n))
      return ss_oai_fail(e, 400, "prompt", "cannot tokenize the prompt: %s", ss_error_msg());
  } else {
    if (json_object_get(o, "add_special_tokens") && !add_special) {
      /* The rendered text alone, no BOS added by the tokenizer. */
      char *text = NULL;
      if (!ss_oai_render_messages(x, o, add_gen, &text, NULL, NULL, e)) return false;
      int rc = ss_tokenizer_encode(x->m->tok, text, strlen(text), false, true, &ids, &n);
      free(text);
      if (rc)
        return ss_oai_fail(e, 400, "messages", "cannot tokenize the messages: %s", ss_error_msg());
    } else if (!ss_oai_render_messages(x, o, add_gen, NULL, &ids, &n, e)) {
      return false;
    }
  }
  json_t *toks = ids_json(ids, n), *ts = json_null();
  if (strs) {
    ts = json_array();
    for (size_t i = 0; ts && i < n; i++) {
      const char *t = ss_tokenizer_token_text(x->m->tok, ids[i]);
      json_array_append_new(ts, ss_oai_json_text(t ? t : "", t ? strlen(t) : 0));
    }
  }
  free(ids);
  *out = json_pack("{s:I, s:i, s:o*, s:o*}", "count", (json_int_t)n, "max_model_len", x->n_ctx,
                   "tokens", toks, "token_strs", ts);
  if (!*out || !toks || !ts) return ss_oai_fail(e, 500, NULL, "out of memory");
  return true;
}

static bool do_detokenize(const gen_ctx *x, json_t *o, json_t **out, parse_err *e) {
  static const char *const known[] = {"model", "tokens", NULL};
  if (!only_fields(o, "/detokenize", known, e) || !ss_oai_check_model(x, o, e)) return false;
  json_t *toks = json_object_get(o, "tokens");
  if (!json_is_array(toks))
    return ss_oai_fail(e, 400, "tokens", "'tokens' must be a list of token ids");
  const int32_t nv = ss_tokenizer_n_vocab(x->m->tok);
  ss_strbuf b = {0};
  ss_strbuf_append(&b, "", 0);
  ss_detok d;
  /* Control tokens come out as their text, as a tokenizer's decode gives them. */
  ss_detok_init(&d, x->m->tok, true);
  char buf[SS_DETOK_MIN_CAP];
  size_t i;
  json_t *v;
  json_array_foreach(toks, i, v) {
    if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) >= nv) {
      ss_strbuf_free(&b);
      return ss_oai_fail(e, 400, "tokens", "'tokens[%zu]' must be a token id in [0, %d]", i,
                         nv - 1);
    }
    size_t k = ss_detok_push(&d, (int32_t)json_integer_value(v), buf, sizeof buf);
    ss_strbuf_append(&b, buf, k);
  }
  size_t k = ss_detok_flush(&d, buf, sizeof buf);
  ss_strbuf_append(&b, buf, k);
  *out = b.failed ? NULL : json_pack("{s:o*}", "prompt", ss_oai_json_text(b.p, b.len));
  ss_strbuf_free(&b);
  if (!*out) return ss_oai_fail(e, 500, NULL, "out of memory");
  return true;
}

static bool do_apply_template(const gen_ctx *x, json_t *o, json_t **out, parse_err *e) {
  static const char *const known[] = {"model",       "messages",           "add_generation_prompt",
                                      "tools",       "tool_choice",        "parallel_tool_calls",
                                      NULL};
  if (!only_fields(o, "/apply-template", known, e) || !ss_oai_check_model(x, o, e)) return false;
  bool add_gen;
  if (!opt_bool(o, "add_generation_prompt", true, &add_gen, e)) return false;
  char *text = NULL;
  if (!ss_oai_render_messages(x, o, add_gen, &text, NULL, NULL, e)) return false;
  *out = json_pack("{s:o*}", "prompt", ss_oai_json_text(text, strlen(text)));
  free(text);
  if (!*out) return ss_oai_fail(e, 500, NULL, "out of memory");
  return true;
}

bool ss_oai_utility(const gen_ctx *x, api_kind kind, const char *body, size_t body_len,
                    json_t **out, parse_err *e) {
  *out = NULL;
  *e = (parse_err){0};
  json_t *o = ss_oai_load_body(body, body_len, e);
  if (!o) return false;
  bool ok = kind == API_TOKENIZE     ? do_tokenize(x, o, out, e)
            : kind == API_DETOKENIZE ? do_detokenize(x, o, out, e)
                                     : do_apply_template(x, o, out, e);
  json_decref(o);
  return ok;
}
