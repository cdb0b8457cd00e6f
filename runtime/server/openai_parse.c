/* An OpenAI request body into an ss_engine_req: every field checked, errors
 * naming the field and the limit, then chat template and tokenizer.  Runs on
 * a worker thread (request.c): it reads only its arguments. */
#include <float.h>
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
 * ("text" format, no tools) changes nothing and passes.
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
      "suffix", "min_tokens", "stop_token_ids", "bad_words", "structured_outputs", "guided_json",
      "guided_regex", "guided_choice", "guided_grammar", NULL};
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
  /* The deprecated form of tools; 'tools' and 'tool_choice' are read by tools.c. */
  v = json_object_get(o, "functions");
  if (v && !json_is_null(v) && !(json_is_array(v) && json_array_size(v) == 0))
    return ss_oai_fail(e, 400, "functions",
                       "'functions' (the deprecated form of tools) is not supported: use 'tools'");
  v = json_object_get(o, "function_call");
  if (v && !json_is_null(v) &&
      !(json_is_string(v) && (strcmp(json_string_value(v), "none") == 0 ||
                              strcmp(json_string_value(v), "auto") == 0)))
    return ss_oai_fail(e, 400, "function_call",
                       "'function_call' (the deprecated form of tool_choice) is not supported: "
                       "use 'tool_choice'");
  if (!chat) {
    /* Completions have no tool calls: only the neutral values pass. */
    v = json_object_get(o, "tools");
    if (v && !json_is_null(v) && !(json_is_array(v) && json_array_size(v) == 0))
      return ss_oai_fail(e, 400, "tools", "'tools' is for /v1/chat/completions");
    v = json_object_get(o, "tool_choice");
    if (v && !json_is_null(v) &&
        !(json_is_string(v) && (strcmp(json_string_value(v), "none") == 0 ||
                                strcmp(json_string_value(v), "auto") == 0)))
      return ss_oai_fail(e, 400, "tool_choice", "'tool_choice' is for /v1/chat/completions");
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

/* The request's own logit processors (runtime/engine/sampler.h): penalties,
 * logit_bias, min_tokens, stop_token_ids, bad_words.  The arrays are
 * malloc'ed into g->r.sampling (ss_oai_req_free frees them). */
static bool parse_processors(const gen_ctx *x, json_t *o, gen_fields *g, parse_err *e) {
  ss_sampler_params *sp = &g->r.sampling;
  const int32_t n_vocab = x->m->cfg.vocab;
  double presence = 0.0, frequency = 0.0, repetition = 1.0;
  if (!get_number(o, "presence_penalty", -2.0, 2.0, &presence, e) ||
      !get_number(o, "frequency_penalty", -2.0, 2.0, &frequency, e) ||
      !get_number(o, "repetition_penalty", 0.0, 1e6, &repetition, e))
    return false;
  if (repetition <= 0.0)
    return ss_oai_fail(e, 400, "repetition_penalty",
                       "'repetition_penalty' = %g must be greater than 0 (1 disables it)",
                       repetition);
  sp->presence_penalty = (float)presence;
  sp->frequency_penalty = (float)frequency;
  sp->repetition_penalty = (float)repetition;
  int64_t min_tokens = 0;
  if (!get_int(o, "min_tokens", 0, INT32_MAX, &min_tokens, NULL, e)) return false;
  sp->min_tokens = (int32_t)min_tokens;

  /* logit_bias: {"token id": bias in [-100, 100]}, as OpenAI. */
  json_t *v = json_object_get(o, "logit_bias");
  if (v && !json_is_null(v)) {
    if (!json_is_object(v))
      return ss_oai_fail(e, 400, "logit_bias",
                         "'logit_bias' must be an object mapping token ids to biases, not %s",
                         json_kind(v));
    size_t n = json_object_size(v);
    if (n > SS_SAMPLER_MAX_BIAS)
      return ss_oai_fail(e, 400, "logit_bias", "'logit_bias' has %zu entries; the limit is %d", n,
                         SS_SAMPLER_MAX_BIAS);
    ss_logit_bias *bias = malloc((n > 0 ? n : 1) * sizeof *bias);
    if (!bias) return ss_oai_fail(e, 500, NULL, "out of memory");
    sp->bias = bias;
    const char *key;
    json_t *b;
    json_object_foreach(v, key, b) {
      /* A decimal id without sign or leading zeros, so that two keys never
       * name one token. */
      size_t len = strlen(key);
      bool digits = len > 0 && len <= 10 && !(len > 1 && key[0] == '0');
      for (size_t i = 0; digits && i < len; i++) digits = key[i] >= '0' && key[i] <= '9';
      long long id = digits ? strtoll(key, NULL, 10) : -1;
      if (id < 0 || id >= n_vocab)
        return ss_oai_fail(e, 400, "logit_bias",
                           "'logit_bias' key '%.40s' must be a token id in [0, %d]", key,
                           n_vocab - 1);
      if (!json_is_number(b) || !isfinite(json_number_value(b)) ||
          json_number_value(b) < -100.0 || json_number_value(b) > 100.0)
        return ss_oai_fail(e, 400, "logit_bias",
                           "'logit_bias[\"%s\"]' must be a number in [-100, 100]", key);
      bias[sp->n_bias++] = (ss_logit_bias){.id = (int32_t)id, .bias = (float)json_number_value(b)};
    }
  }

  /* stop_token_ids: a list of token ids that end generation. */
  v = json_object_get(o, "stop_token_ids");
  if (v && !json_is_null(v)) {
    if (!json_is_array(v))
      return ss_oai_fail(e, 400, "stop_token_ids", "'stop_token_ids' must be a list of token ids, "
                         "not %s", json_kind(v));
    size_t n = json_array_size(v);
    if (n > SS_SAMPLER_MAX_STOP_IDS)
      return ss_oai_fail(e, 400, "stop_token_ids", "'stop_token_ids' has %zu ids; the limit is %d",
                         n, SS_SAMPLER_MAX_STOP_IDS);
    int32_t *ids = malloc((n > 0 ? n : 1) * sizeof *ids);
    if (!ids) return ss_oai_fail(e, 500, NULL, "out of memory");
    sp->stop_ids = ids;
    size_t i;
    json_t *t;
    json_array_foreach(v, i, t) {
      if (!json_is_integer(t) || json_integer_value(t) < 0 || json_integer_value(t) >= n_vocab)
        return ss_oai_fail(e, 400, "stop_token_ids",
                           "'stop_token_ids[%zu]' must be a token id in [0, %d]", i, n_vocab - 1);
      ids[sp->n_stop_ids++] = (int32_t)json_integer_value(t);
    }
  }

  /* bad_words (vLLM): strings whose token sequences are never completed.  Each
   * is tokenized as given, without BOS. */
  v = json_object_get(o, "bad_words");
  if (v && !json_is_null(v)) {
    if (!json_is_array(v))
      return ss_oai_fail(e, 400, "bad_words", "'bad_words' must be a list of strings, not %s",
                         json_kind(v));
    size_t n = json_array_size(v);
    if (n > SS_SAMPLER_MAX_BAD_WORDS)
      return ss_oai_fail(e, 400, "bad_words", "'bad_words' has %zu words; the limit is %d", n,
                         SS_SAMPLER_MAX_BAD_WORDS);
    int32_t *bad = malloc((n * (1 + SS_SAMPLER_MAX_BAD_LEN) + 1) * sizeof *bad);
    if (!bad) return ss_oai_fail(e, 500, NULL, "out of memory");
    sp->bad = bad;
    size_t i;
    json_t *w;
    json_array_foreach(v, i, w) {
      if (!json_is_string(w) || json_string_length(w) == 0)
        return ss_oai_fail(e, 400, "bad_words", "'bad_words[%zu]' must be a non-empty string", i);
      int32_t *ids = NULL;
      size_t nt = 0;
      if (ss_tokenizer_encode(x->m->tok, json_string_value(w), json_string_length(w), false,
                              false, &ids, &nt))
        return ss_oai_fail(e, 400, "bad_words", "cannot tokenize 'bad_words[%zu]': %s", i,
                           ss_error_msg());
      if (nt < 1 || nt > SS_SAMPLER_MAX_BAD_LEN) {
        free(ids);
        return ss_oai_fail(e, 400, "bad_words",
                           "'bad_words[%zu]' is %zu tokens; the limit is %d", i, nt,
                           SS_SAMPLER_MAX_BAD_LEN);
      }
      bad[sp->n_bad_ids++] = (int32_t)nt;
      memcpy(bad + sp->n_bad_ids, ids, nt * sizeof *ids);
      sp->n_bad_ids += (int32_t)nt;
      free(ids);
    }
  }
  return true;
}

static bool parse_common(const gen_ctx *x, json_t *o, bool chat, gen_fields *g, parse_err *e) {
  if (!check_fields(o, chat, e) || !ss_oai_check_model(x, o, e)) return false;
  /* n choices, each its own sequence; best_of (completions) generates that
   * many and answers the n most likely, as OpenAI's legacy API does. */
  int64_t n = 1, best_of = 0;
  bool best_set = false;
  if (!get_int(o, "n", INT32_MIN, INT32_MAX, &n, NULL, e)) return false;
  if (n < 1 || n > SS_OAI_MAX_N)
    return ss_oai_fail(e, 400, "n", "'n' = %lld must be in 1..%d", (long long)n, SS_OAI_MAX_N);
  if (!get_int(o, "best_of", INT32_MIN, INT32_MAX, &best_of, &best_set, e)) return false;
  if (best_set && chat && best_of != 1)
    return ss_oai_fail(e, 400, "best_of", "'best_of' is for /v1/completions only");
  if (chat) best_set = false; /* 1: changes nothing */
  if (best_set && (best_of < n || best_of > SS_OAI_MAX_N))
    return ss_oai_fail(e, 400, "best_of", "'best_of' = %lld must be in n..%d (n = %lld)",
                       (long long)best_of, SS_OAI_MAX_N, (long long)n);
  g->n = (int32_t)n;
  g->best_of = best_set ? (int32_t)best_of : (int32_t)n;
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
  /* The sampler keeps top_p as a float: below the smallest normal float it
   * would round to 0 (or lose its precision). */
  if (top_p < FLT_MIN)
    return ss_oai_fail(e, 400, "top_p", "'top_p' = %g is too small: the least accepted is %g",
                       top_p, (double)FLT_MIN);
  g->r.sampling = (ss_sampler_params){
      .temperature = (float)temp,
      .top_k = (int32_t)(top_k < 0 ? 0 : top_k),
      .top_p = (float)top_p,
      .min_p = (float)min_p,
      .seed = seed_set ? (uint64_t)seed : ((uint64_t)time(NULL) * 2654435761u) ^ (uint64_t)clock()};
  if (!parse_processors(x, o, g, e)) return false;
  /* stop: a string or an array of up to 16 non-empty strings, each at most
   * SS_OAI_MAX_STOP_NBYTES and all together SS_OAI_MAX_STOP_TOTAL_NBYTES (the
   * engine matches every one against the text after every token) */
  json_t *stop = json_object_get(o, "stop");
  if (stop && !json_is_null(stop)) {
    if (json_is_string(stop)) {
      if (json_string_length(stop) == 0)
        return ss_oai_fail(e, 400, "stop", "'stop' must not be empty");
      if (json_string_length(stop) > SS_OAI_MAX_STOP_NBYTES)
        return ss_oai_fail(e, 400, "stop", "'stop' has %zu bytes; the limit is %d",
                           json_string_length(stop), SS_OAI_MAX_STOP_NBYTES);
      g->r.stop[g->r.n_stop++] = strdup(json_string_value(stop));
    } else if (json_is_array(stop)) {
      if (json_array_size(stop) > SS_ENGINE_MAX_STOP)
        return ss_oai_fail(e, 400, "stop", "'stop' has %zu strings; the limit is %d",
                           json_array_size(stop), SS_ENGINE_MAX_STOP);
      size_t i, total = 0;
      json_t *s;
      json_array_foreach(stop, i, s) {
        if (!json_is_string(s) || json_string_length(s) == 0)
          return ss_oai_fail(e, 400, "stop", "'stop[%zu]' must be a non-empty string", i);
        if (json_string_length(s) > SS_OAI_MAX_STOP_NBYTES)
          return ss_oai_fail(e, 400, "stop", "'stop[%zu]' has %zu bytes; the limit is %d", i,
                             json_string_length(s), SS_OAI_MAX_STOP_NBYTES);
        total += json_string_length(s);
        if (total > SS_OAI_MAX_STOP_TOTAL_NBYTES)
          return ss_oai_fail(e, 400, "stop", "the 'stop' strings have more than %d bytes together",
                             SS_OAI_MAX_STOP_TOTAL_NBYTES);
        g->r.stop[g->r.n_stop++] = strdup(json_string_value(s));
      }
    } else {
      return ss_oai_fail(e, 400, "stop", "'stop' must be a string or an array of strings, not %s",
                         json_kind(stop));
    }
  }
  if (!get_bool(o, "stream", &g->stream, e) || !get_bool(o, "ignore_eos", &g->r.ignore_eos, e))
    return false;
  if (g->stream && g->best_of > g->n)
    return ss_oai_fail(e, 400, "best_of", "'best_of' (greater than 'n') cannot be streamed");
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
  g->user_logprobs = g->r.logprobs;
  /* best_of ranks the sequences by the logprobs of their tokens. */
  if (g->best_of > g->n) g->r.logprobs = true;
  return true;
}

void ss_oai_req_free(ss_engine_req *r) {
  free(r->prompt);
  r->prompt = NULL;
  r->n_prompt = 0;
  for (int i = 0; i < r->n_stop; i++) free(r->stop[i]);
  r->n_stop = 0;
  ss_engine_req_sampling_free(&r->sampling);
  ss_grammar_state_free(r->grammar);
  r->grammar = NULL;
}

/* The prompt of /v1/completions: a string, a list of token ids, or a list of
 * one string / one list of ids. */
static bool parse_prompt(json_t *o, const gen_ctx *x, ss_engine_req *r, parse_err *e) {
  const ss_model *m = x->m;
  json_t *p = json_object_get(o, "prompt");
  if (!p || json_is_null(p)) return ss_oai_fail(e, 400, "prompt", "'prompt' is required");
  if (json_is_array(p) && json_array_size(p) == 1 &&
      (json_is_string(json_array_get(p, 0)) || json_is_array(json_array_get(p, 0))))
    p = json_array_get(p, 0);
  if (json_is_string(p)) {
    size_t n = 0;
    int32_t *ids = NULL;
    /* Checked before the tokenizer spends time on it. */
    if (json_string_length(p) > ss_oai_max_prompt_nbytes(x))
      return ss_oai_fail(e, 400, "prompt", "'prompt' has %zu bytes; the limit is %zu "
                         "(--max-prompt-bytes)", json_string_length(p),
                         ss_oai_max_prompt_nbytes(x));
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

/* Completions with echo: the prompt's text as given, or a list of ids as
 * their text (control tokens included, as /detokenize gives them). */
static bool echo_text(const gen_ctx *x, json_t *o, gen_fields *g, parse_err *e) {
  json_t *p = json_object_get(o, "prompt");
  if (json_is_array(p) && json_array_size(p) == 1 &&
      (json_is_string(json_array_get(p, 0)) || json_is_array(json_array_get(p, 0))))
    p = json_array_get(p, 0);
  ss_strbuf b = {0};
  ss_strbuf_append(&b, "", 0);
  if (json_is_string(p)) {
    ss_strbuf_append(&b, json_string_value(p), json_string_length(p));
  } else {
    ss_detok d;
    ss_detok_init(&d, x->m->tok, true);
    char buf[SS_DETOK_MIN_CAP];
    for (int32_t i = 0; i < g->r.n_prompt; i++)
      ss_strbuf_append(&b, buf, ss_detok_push(&d, g->r.prompt[i], buf, sizeof buf));
    ss_strbuf_append(&b, buf, ss_detok_flush(&d, buf, sizeof buf));
  }
  if (b.failed) {
    ss_strbuf_free(&b);
    return ss_oai_fail(e, 500, NULL, "out of memory");
  }
  g->echo = b.p;
  g->echo_len = b.len;
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

size_t ss_oai_max_prompt_nbytes(const gen_ctx *x) {
  if (x->max_prompt_nbytes) return x->max_prompt_nbytes;
  return (size_t)SS_OAI_PROMPT_NBYTES_PER_TOKEN * (size_t)(x->n_ctx > 0 ? x->n_ctx : 1);
}

/* The bytes of every string in v (keys not counted).  The recursion is as
 * deep as the parsed JSON, which jansson bounds (2048 levels); the sum is at
 * most the body's size. */
static size_t json_text_nbytes(json_t *v) {
  size_t n = 0, i;
  const char *k;
  json_t *c;
  if (json_is_string(v)) return json_string_length(v);
  if (json_is_array(v)) json_array_foreach(v, i, c) n += json_text_nbytes(c);
  else if (json_is_object(v)) json_object_foreach(v, k, c) n += json_text_nbytes(c);
  return n;
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
  tool_set ts;
  if (!ss_oai_tools_parse(o, &ts, e)) return false;
  /* The text is counted before the template and the tokenizer see it, and
   * the rendered text again (a template may repeat a message). */
  const size_t limit = ss_oai_max_prompt_nbytes(x);
  if (json_text_nbytes(msgs) > limit)
    return ss_oai_fail(e, 400, "messages", "the text of 'messages' is over the limit of %zu "
                       "bytes (--max-prompt-bytes)", limit);
  json_t *norm = NULL, *tmpl_tools = NULL;
  if (!check_messages(msgs, &norm, e)) return false;
  char *rendered = NULL;
  bool ok = ss_oai_tools_prepare(x, &ts, norm, &tmpl_tools, e);
  if (ok && ss_chat_render_json(x->tmpl, norm, tmpl_tools, NULL, add_generation_prompt, &rendered))
    ok = ss_oai_fail(e, 400, "messages", "the chat template: %s", ss_error_msg());
  if (ok && strlen(rendered) > limit)
    ok = ss_oai_fail(e, 400, "messages", "the rendered messages have %zu bytes; the limit is %zu "
                     "(--max-prompt-bytes)", strlen(rendered), limit);
  if (ok && ids)
    ok = x->parse_special_in_content
             ? tokenize_rendered(x->m, rendered, ids, n_ids, e)
             : ss_oai_tokenize_plain_content(x, norm, add_generation_prompt, rendered, ids,
                                             n_ids, e);
  json_decref(norm);
  if (ok && text) {
    *text = rendered;
    rendered = NULL;
  }
  free(rendered);
  return ok;
}

static bool parse_messages(const gen_ctx *x, json_t *o, gen_fields *g, parse_err *e) {
  size_t nt = 0;
  if (!ss_oai_render_messages(x, o, true, NULL, &g->r.prompt, &nt, e)) return false;
  g->r.n_prompt = (int32_t)nt;
  /* Tool calls: how the output is read, and the constraint of a required or
   * named call. */
  tool_set ts;
  if (!ss_oai_tools_parse(o, &ts, e)) return false;
  if (!ts.tools) return true;
  const tool_format fmt = ss_oai_tools_format(x->tmpl);
  g->tools = (tool_out){.on = true, .format = fmt, .parallel = ts.parallel,
                        .mistral_ids = fmt == TOOL_FMT_MISTRAL};
  if (g->stream && g->r.logprobs)
    return ss_oai_fail(e, 400, "logprobs",
                       "'logprobs' with 'tools' is not supported when streaming (the text of a "
                       "call is held back until it is read)");
  return ss_oai_tools_constrain(x, &ts, g, e);
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
  bool echo = false;
  if (ok) ok = get_bool(o, "echo", &echo, e);
  if (ok && echo && chat)
    ok = ss_oai_fail(e, 400, "echo", "'echo' is for /v1/completions only");
  /* echo with logprobs: the prompt's tokens with theirs (the engine keeps
   * every prompt row's logits for it). */
  if (ok && echo && g->user_logprobs) g->r.prompt_logprobs = true;
  if (ok) ok = chat ? parse_messages(x, o, g, e) : parse_prompt(o, x, &g->r, e);
  if (ok && echo && !chat) ok = echo_text(x, o, g, e);
  if (ok && g->best_of > 1 && g->r.grammar)
    ok = ss_oai_fail(e, 400, "n", "'n' or 'best_of' above 1 with an output constraint "
                     "(response_format, a required tool call, structured_outputs) is not "
                     "supported");
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
  if (ok && g->r.sampling.min_tokens > g->max_tokens)
    ok = ss_oai_fail(e, 400, "min_tokens", "'min_tokens' = %d is more than 'max_tokens' = %lld",
                     g->r.sampling.min_tokens, (long long)g->max_tokens);
  if (!ok) {
    ss_oai_req_free(&g->r);
    free(g->echo);
    g->echo = NULL;
    return false;
  }
  g->r.max_new_tokens = (int32_t)(g->max_tokens > INT32_MAX ? INT32_MAX : g->max_tokens);
  return true;
}
