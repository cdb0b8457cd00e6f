/* Tool calling: the request's tools and tool_choice checked, the tools put
 * before the model (through its own chat template when the template reads
 * `tools`, else a system-message preamble in the Hermes format), and the
 * model's output read back into OpenAI's tool_calls.
 *
 * Output formats, chosen from the template's text:
 *   hermes   <tool_call>{"name": N, "arguments": {...}}</tool_call>, one block
 *            per call, text before the first block is the message content
 *            (Qwen2.5, Hermes, and the preamble used for other templates);
 *   llama3   the whole output one JSON object {"name": N, "parameters": {...}}
 *            (or several, separated by ';'), after an optional <|python_tag|>;
 *   mistral  [TOOL_CALLS] then a JSON list of {"name", "arguments"[, "id"]};
 *   json     a constrained output (tool_choice required or named): the whole
 *            output is one {"name", "arguments"} object. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "runtime/server/api_internal.h"
#include "runtime/tokenizer/chat.h"

enum { TOOLS_MAX = 128, TOOL_NAME_MAX = 64, SCHEMA_DEPTH_MAX = 32 };

static const char k_hermes_open[] = "<tool_call>", k_hermes_close[] = "</tool_call>";
static const char k_mistral_tag[] = "[TOOL_CALLS]", k_python_tag[] = "<|python_tag|>";

/* ------------------------------------------------------------------------ */
/* Checking the request                                                       */

static bool name_ok(const char *s, size_t n) {
  if (n == 0 || n > TOOL_NAME_MAX) return false;
  for (size_t i = 0; i < n; i++) {
    char c = s[i];
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
          c == '-'))
      return false;
  }
  return true;
}

static bool type_name_ok(const json_t *t) {
  static const char *const types[] = {"object", "array",   "string", "number",
                                      "integer", "boolean", "null",   NULL};
  if (!json_is_string(t)) return false;
  for (int i = 0; types[i]; i++)
    if (strcmp(json_string_value(t), types[i]) == 0) return true;
  return false;
}

/* The parts of a JSON Schema that a wrong value would make meaningless:
 * "type" a type name (or a list of them), "properties" an object of schemas,
 * "required" a list of strings, "items" / "anyOf" / "oneOf" / "allOf"
 * schemas.  `where` names the place for the message. */
static bool check_schema(const json_t *s, const char *where, int depth, parse_err *e) {
  if (depth > SCHEMA_DEPTH_MAX)
    return ss_oai_fail(e, 400, "tools", "'%s' nests deeper than %d levels", where,
                       SCHEMA_DEPTH_MAX);
  if (json_is_boolean(s)) return true;
  if (!json_is_object(s))
    return ss_oai_fail(e, 400, "tools", "'%s' must be a JSON Schema object", where);
  char sub[384];
  json_t *t = json_object_get(s, "type");
  if (t) {
    bool ok = type_name_ok(t);
    if (json_is_array(t)) {
      size_t i;
      json_t *v;
      ok = json_array_size(t) > 0;
      json_array_foreach(t, i, v) ok = ok && type_name_ok(v);
    }
    if (!ok)
      return ss_oai_fail(e, 400, "tools",
                         "'%s.type' must be one of object, array, string, number, integer, "
                         "boolean, null (or a list of them)",
                         where);
  }
  json_t *props = json_object_get(s, "properties");
  if (props) {
    if (!json_is_object(props))
      return ss_oai_fail(e, 400, "tools", "'%s.properties' must be an object", where);
    const char *k;
    json_t *v;
    json_object_foreach(props, k, v) {
      snprintf(sub, sizeof sub, "%.200s.properties.%.64s", where, k);
      if (!check_schema(v, sub, depth + 1, e)) return false;
    }
  }
  json_t *req = json_object_get(s, "required");
  if (req) {
    size_t i;
    json_t *v;
    if (!json_is_array(req))
      return ss_oai_fail(e, 400, "tools", "'%s.required' must be a list of strings", where);
    json_array_foreach(req, i, v) {
      if (!json_is_string(v))
        return ss_oai_fail(e, 400, "tools", "'%s.required[%zu]' must be a string", where, i);
    }
  }
  json_t *items = json_object_get(s, "items");
  if (items) {
    snprintf(sub, sizeof sub, "%.200s.items", where);
    if (!check_schema(items, sub, depth + 1, e)) return false;
  }
  static const char *const lists[] = {"anyOf", "oneOf", "allOf", NULL};
  for (int l = 0; lists[l]; l++) {
    json_t *a = json_object_get(s, lists[l]);
    if (!a) continue;
    if (!json_is_array(a) || json_array_size(a) == 0)
      return ss_oai_fail(e, 400, "tools", "'%s.%s' must be a non-empty list of schemas", where,
                         lists[l]);
    size_t i;
    json_t *v;
    json_array_foreach(a, i, v) {
      snprintf(sub, sizeof sub, "%.200s.%s[%zu]", where, lists[l], i);
      if (!check_schema(v, sub, depth + 1, e)) return false;
    }
  }
  return true;
}

static bool check_tool(json_t *tool, size_t i, parse_err *e) {
  if (!json_is_object(tool))
    return ss_oai_fail(e, 400, "tools", "'tools[%zu]' must be an object", i);
  json_t *type = json_object_get(tool, "type");
  if (!json_is_string(type) || strcmp(json_string_value(type), "function") != 0)
    return ss_oai_fail(e, 400, "tools", "'tools[%zu].type' must be \"function\"", i);
  json_t *f = json_object_get(tool, "function");
  if (!json_is_object(f))
    return ss_oai_fail(e, 400, "tools", "'tools[%zu].function' must be an object", i);
  json_t *name = json_object_get(f, "name");
  if (!json_is_string(name) || !name_ok(json_string_value(name), json_string_length(name)))
    return ss_oai_fail(e, 400, "tools",
                       "'tools[%zu].function.name' must be a string of 1 to %d letters, digits, "
                       "'_' or '-'",
                       i, TOOL_NAME_MAX);
  json_t *desc = json_object_get(f, "description");
  if (desc && !json_is_null(desc) && !json_is_string(desc))
    return ss_oai_fail(e, 400, "tools", "'tools[%zu].function.description' must be a string", i);
  json_t *strict = json_object_get(f, "strict");
  if (strict && !json_is_null(strict) && !json_is_boolean(strict))
    return ss_oai_fail(e, 400, "tools", "'tools[%zu].function.strict' must be a boolean", i);
  json_t *params = json_object_get(f, "parameters");
  if (params && !json_is_null(params)) {
    char where[64];
    snprintf(where, sizeof where, "tools[%zu].function.parameters", i);
    if (!json_is_object(params))
      return ss_oai_fail(e, 400, "tools", "'%s' must be a JSON Schema object", where);
    json_t *pt = json_object_get(params, "type");
    if (pt && !(json_is_string(pt) && strcmp(json_string_value(pt), "object") == 0))
      return ss_oai_fail(e, 400, "tools", "'%s.type' must be \"object\" (arguments are an object)",
                         where);
    if (!check_schema(params, where, 0, e)) return false;
  }
  return true;
}

static const char *tool_name(json_t *tool) {
  return json_string_value(json_object_get(json_object_get(tool, "function"), "name"));
}

bool ss_oai_tools_parse(json_t *o, tool_set *ts, parse_err *e) {
  *ts = (tool_set){.choice = TOOL_CHOICE_NONE, .parallel = true};
  json_t *tools = json_object_get(o, "tools");
  bool have = false;
  if (tools && !json_is_null(tools)) {
    if (!json_is_array(tools))
      return ss_oai_fail(e, 400, "tools", "'tools' must be a list of tools");
    if (json_array_size(tools) > TOOLS_MAX)
      return ss_oai_fail(e, 400, "tools", "'tools' has %zu tools; the limit is %d",
                         json_array_size(tools), TOOLS_MAX);
    size_t i;
    json_t *t;
    json_array_foreach(tools, i, t) {
      if (!check_tool(t, i, e)) return false;
      for (size_t j = 0; j < i; j++)
        if (strcmp(tool_name(json_array_get(tools, j)), tool_name(t)) == 0)
          return ss_oai_fail(e, 400, "tools",
                             "'tools[%zu].function.name' = '%s' is the name of tools[%zu] too", i,
                             tool_name(t), j);
    }
    have = json_array_size(tools) > 0;
  }
  json_t *pc = json_object_get(o, "parallel_tool_calls");
  if (pc && !json_is_null(pc)) {
    if (!json_is_boolean(pc))
      return ss_oai_fail(e, 400, "parallel_tool_calls", "'parallel_tool_calls' must be a boolean");
    ts->parallel = json_is_true(pc);
  }
  json_t *c = json_object_get(o, "tool_choice");
  ts->choice = have ? TOOL_CHOICE_AUTO : TOOL_CHOICE_NONE;
  if (c && !json_is_null(c)) {
    if (json_is_string(c)) {
      const char *s = json_string_value(c);
      if (strcmp(s, "none") == 0) ts->choice = TOOL_CHOICE_NONE;
      else if (strcmp(s, "auto") == 0) ts->choice = have ? TOOL_CHOICE_AUTO : TOOL_CHOICE_NONE;
      else if (strcmp(s, "required") == 0) ts->choice = TOOL_CHOICE_REQUIRED;
      else
        return ss_oai_fail(e, 400, "tool_choice",
                           "'tool_choice' = '%.40s' is not one of none, auto, required (or "
                           "{\"type\": \"function\", \"function\": {\"name\": ...}})",
                           s);
    } else if (json_is_object(c)) {
      json_t *type = json_object_get(c, "type"), *f = json_object_get(c, "function");
      json_t *name = json_is_object(f) ? json_object_get(f, "name") : NULL;
      if (!json_is_string(type) || strcmp(json_string_value(type), "function") != 0 ||
          !json_is_string(name))
        return ss_oai_fail(e, 400, "tool_choice",
                           "'tool_choice' as an object must be {\"type\": \"function\", "
                           "\"function\": {\"name\": ...}}");
      ts->choice = TOOL_CHOICE_NAMED;
      size_t i;
      json_t *t;
      if (have) json_array_foreach(tools, i, t) {
        if (strcmp(tool_name(t), json_string_value(name)) == 0) ts->named = tool_name(t);
      }
      if (have && !ts->named)
        return ss_oai_fail(e, 400, "tool_choice",
                           "'tool_choice.function.name' = '%.64s' is not one of the tools",
                           json_string_value(name));
    } else {
      return ss_oai_fail(e, 400, "tool_choice", "'tool_choice' must be a string or an object");
    }
    if (!have && ts->choice != TOOL_CHOICE_NONE)
      return ss_oai_fail(e, 400, "tool_choice", "'tool_choice' asks for a tool call but 'tools' "
                                                "is empty or missing");
  }
  if (have && ts->choice != TOOL_CHOICE_NONE) ts->tools = tools;
  return true;
}

/* ------------------------------------------------------------------------ */
/* Putting the tools before the model                                         */

bool ss_oai_tools_in_template(const ss_chat_template *t) {
  return t && t->source && strstr(t->source, "tools") != NULL;
}

tool_format ss_oai_tools_format(const ss_chat_template *t) {
  if (!ss_oai_tools_in_template(t)) return TOOL_FMT_HERMES; /* the preamble's format */
  if (strstr(t->source, k_mistral_tag)) return TOOL_FMT_MISTRAL;
  if (strstr(t->source, k_hermes_open)) return TOOL_FMT_HERMES;
  if (strstr(t->source, k_python_tag) || strstr(t->source, "\"parameters\""))
    return TOOL_FMT_LLAMA3;
  return TOOL_FMT_HERMES;
}

/* The arguments of a call as the Hermes block writes them: an object as given;
 * a string holding JSON as that JSON; any other string as a JSON string. */
static json_t *call_arguments(json_t *args) {
  if (json_is_string(args)) {
    json_t *v = json_loads(json_string_value(args), JSON_DECODE_ANY, NULL);
    if (v) return v;
  }
  return args ? json_incref(args) : json_object();
}

static void append_json(ss_strbuf *b, json_t *v) {
  char *s = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
  if (s) ss_strbuf_append(b, s, strlen(s));
  else b->failed = true;
  free(s);
}

static bool fallback_messages(const tool_set *ts, json_t *msgs, parse_err *e) {
  ss_strbuf b = {0};
  ss_strbuf_printf(&b, "# Tools\n\nYou may call one or more functions to answer. The functions, "
                       "as JSON:\n<tools>\n");
  size_t i;
  json_t *t;
  json_array_foreach(ts->tools, i, t) {
    append_json(&b, t);
    ss_strbuf_append(&b, "\n", 1);
  }
  ss_strbuf_printf(&b, "</tools>\n\nTo call a function, answer with one block per call, each "
                       "exactly:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": "
                       "<arguments-json-object>}\n</tool_call>");
  json_t *first = json_array_get(msgs, 0);
  json_t *fc = json_object_get(first, "content");
  if (first && strcmp(json_string_value(json_object_get(first, "role")), "system") == 0) {
    ss_strbuf_append(&b, "\n\n", 2);
    ss_strbuf_append(&b, json_string_value(fc), json_string_length(fc));
    json_object_set_new(first, "content", json_stringn(b.p ? b.p : "", b.len));
  } else {
    json_array_insert_new(msgs, 0,
                          json_pack("{s:s, s:s%}", "role", "system", "content", b.p ? b.p : "",
                                    b.len));
  }
  bool failed = b.failed;
  ss_strbuf_free(&b);
  /* Earlier turns in the same format: an assistant's calls as its blocks,
   * a tool's result as a user turn in <tool_response> (Qwen2.5's layout). */
  json_array_foreach(msgs, i, t) {
    const char *role = json_string_value(json_object_get(t, "role"));
    json_t *content = json_object_get(t, "content");
    ss_strbuf m = {0};
    ss_strbuf_append(&m, "", 0);
    if (strcmp(role, "assistant") == 0 && json_is_array(json_object_get(t, "tool_calls"))) {
      ss_strbuf_append(&m, json_string_value(content), json_string_length(content));
      size_t k;
      json_t *call;
      json_array_foreach(json_object_get(t, "tool_calls"), k, call) {
        json_t *f = json_object_get(call, "function");
        json_t *name = json_object_get(f, "name");
        json_t *args = call_arguments(json_object_get(f, "arguments"));
        if (m.len) ss_strbuf_append(&m, "\n", 1);
        ss_strbuf_printf(&m, "%s\n{\"name\": ", k_hermes_open);
        if (json_is_string(name)) append_json(&m, name);
        else ss_strbuf_append(&m, "\"\"", 2);
        ss_strbuf_printf(&m, ", \"arguments\": ");
        append_json(&m, args);
        ss_strbuf_printf(&m, "}\n%s", k_hermes_close);
        json_decref(args);
      }
      json_object_del(t, "tool_calls");
    } else if (strcmp(role, "tool") == 0) {
      ss_strbuf_printf(&m, "<tool_response>\n");
      ss_strbuf_append(&m, json_string_value(content), json_string_length(content));
      ss_strbuf_printf(&m, "\n</tool_response>");
      json_object_set_new(t, "role", json_string("user"));
      json_object_del(t, "tool_call_id");
    } else {
      ss_strbuf_free(&m);
      continue;
    }
    json_t *s = json_stringn(m.p ? m.p : "", m.len);
    failed |= m.failed || !s || json_object_set_new(t, "content", s);
    ss_strbuf_free(&m);
  }
  if (failed) return ss_oai_fail(e, 400, "messages", "the tool calls in 'messages' are not text");
  return true;
}

bool ss_oai_tools_prepare(const gen_ctx *x, const tool_set *ts, json_t *msgs, json_t **tmpl_tools,
                          parse_err *e) {
  *tmpl_tools = NULL;
  if (!ts->tools) return true;
  if (ss_oai_tools_in_template(x->tmpl)) {
    *tmpl_tools = ts->tools; /* as given, as transformers passes them */
    return true;
  }
  return fallback_messages(ts, msgs, e);
}

/* ------------------------------------------------------------------------ */
/* tool_choice required or named: the output's JSON Schema                    */

static json_t *call_schema(json_t *tool) {
  json_t *f = json_object_get(tool, "function");
  json_t *params = json_object_get(f, "parameters");
  json_t *args = params && !json_is_null(params) ? json_deep_copy(params)
                                                 : json_pack("{s:s}", "type", "object");
  return json_pack("{s:s, s:{s:{s:O}, s:o}, s:[s, s], s:b}", "type", "object", "properties",
                   "name", "const", json_object_get(f, "name"), "arguments", args, "required",
                   "name", "arguments", "additionalProperties", 0);
}

bool ss_oai_tools_constrain(const gen_ctx *x, const tool_set *ts, gen_fields *g, parse_err *e) {
  if (!ts->tools || (ts->choice != TOOL_CHOICE_REQUIRED && ts->choice != TOOL_CHOICE_NAMED))
    return true;
  json_t *schema = NULL;
  if (ts->choice == TOOL_CHOICE_NAMED) {
    size_t i;
    json_t *t;
    json_array_foreach(ts->tools, i, t) {
      if (strcmp(tool_name(t), ts->named) == 0) schema = call_schema(t);
    }
  } else {
    json_t *any = json_array();
    size_t i;
    json_t *t;
    json_array_foreach(ts->tools, i, t) json_array_append_new(any, call_schema(t));
    schema = json_pack("{s:o}", "anyOf", any);
  }
  if (!schema) return ss_oai_fail(e, 500, NULL, "out of memory");
  bool ok = ss_oai_constrain_schema(x, g, schema, "tool_choice", e);
  json_decref(schema);
  if (ok) g->tools.format = TOOL_FMT_JSON;
  return ok;
}

/* ------------------------------------------------------------------------ */
/* Reading the output                                                         */

static bool is_ws(char c) { return c == ' ' || c == '\n' || c == '\t' || c == '\r'; }

static size_t skip_ws(const char *p, size_t i, size_t n) {
  while (i < n && is_ws(p[i])) i++;
  return i;
}

static size_t trim_end(const char *p, size_t lo, size_t i) {
  while (i > lo && is_ws(p[i - 1])) i--;
  return i;
}

static const char *find(const char *p, size_t from, size_t n, const char *needle) {
  size_t k = strlen(needle);
  for (size_t i = from; i + k <= n; i++)
    if (memcmp(p + i, needle, k) == 0) return p + i;
  return NULL;
}

static bool starts(const char *p, size_t i, size_t n, const char *s) {
  size_t k = strlen(s);
  return n - i >= k && memcmp(p + i, s, k) == 0;
}

/* Reads one JSON value at p[*i]; *i moves past it. */
static json_t *read_json(const char *p, size_t *i, size_t n) {
  json_error_t err;
  json_t *v = json_loadb(p + *i, n - *i, JSON_DISABLE_EOF_CHECK | JSON_DECODE_ANY, &err);
  if (v) *i += (size_t)err.position;
  return v;
}

/* Random ids, "call_" and 24 letters or digits; for Mistral's format 9
 * letters or digits, the only ids its templates take back (they raise on any
 * other).  splitmix64: the loop thread alone reads the output, so one state
 * serves every request. */
static void call_id(char out[32], bool mistral) {
  static uint64_t s;
  static const char k_alnum[] =
      "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
  if (!s) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    s = ((uint64_t)ts.tv_sec << 30) ^ (uint64_t)ts.tv_nsec ^ (uint64_t)(uintptr_t)&s;
  }
  const int pre = mistral ? 0 : 5, n = mistral ? 9 : 24;
  memcpy(out, "call_", (size_t)pre);
  for (int i = 0; i < n; i++) {
    uint64_t z = (s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    out[pre + i] = k_alnum[z % (sizeof k_alnum - 1)];
  }
  out[pre + n] = 0;
}

/* One call object of the model's into OpenAI's shape, appended to calls:
 * the arguments are "arguments" or "parameters" (Llama 3's name), an id the
 * model gave is kept. */
static bool add_call(json_t *calls, json_t *v, bool short_ids) {
  if (!json_is_object(v)) return false;
  json_t *name = json_object_get(v, "name");
  json_t *args = json_object_get(v, "arguments");
  if (!args) args = json_object_get(v, "parameters");
  if (!json_is_string(name) || json_string_length(name) == 0) return false;
  if (args && !json_is_object(args) && !json_is_string(args)) return false;
  char *s = NULL;
  if (json_is_string(args)) s = strdup(json_string_value(args));
  else s = json_dumps(args ? args : json_object(), JSON_COMPACT);
  if (!s) return false;
  char id[32];
  json_t *mid = json_object_get(v, "id");
  if (json_is_string(mid) && json_string_length(mid) > 0 && json_string_length(mid) < 32)
    snprintf(id, sizeof id, "%s", json_string_value(mid));
  else
    call_id(id, short_ids);
  json_t *c = json_pack("{s:s, s:s, s:{s:O, s:s}}", "id", id, "type", "function", "function",
                        "name", name, "arguments", s);
  free(s);
  return c && json_array_append_new(calls, c) == 0;
}

static json_t *read_hermes(const char *p, size_t n, size_t *content_len, bool short_ids) {
  const char *at = find(p, 0, n, k_hermes_open);
  if (!at) return NULL;
  json_t *calls = json_array();
  size_t i = (size_t)(at - p);
  *content_len = trim_end(p, 0, i);
  while (i < n) {
    if (!starts(p, i, n, k_hermes_open)) goto fail;
    i = skip_ws(p, i + strlen(k_hermes_open), n);
    json_t *v = read_json(p, &i, n);
    bool ok = v && add_call(calls, v, short_ids);
    json_decref(v);
    if (!ok) goto fail;
    i = skip_ws(p, i, n);
    if (starts(p, i, n, k_hermes_close)) i += strlen(k_hermes_close);
    else if (i < n) goto fail; /* a block may only lack its end at the end of the output */
    i = skip_ws(p, i, n);
  }
  return calls;
fail:
  json_decref(calls);
  return NULL;
}

static json_t *read_llama3(const char *p, size_t n, size_t *content_len, bool short_ids) {
  size_t i = skip_ws(p, 0, n);
  if (starts(p, i, n, k_python_tag)) i = skip_ws(p, i + strlen(k_python_tag), n);
  if (i >= n || p[i] != '{') return NULL;
  *content_len = 0;
  json_t *calls = json_array();
  while (i < n) {
    json_t *v = read_json(p, &i, n);
    bool ok = v && add_call(calls, v, short_ids);
    json_decref(v);
    if (!ok) goto fail;
    i = skip_ws(p, i, n);
    if (i < n && p[i] == ';') i = skip_ws(p, i + 1, n);
  }
  return calls;
fail:
  json_decref(calls);
  return NULL;
}

static json_t *read_mistral(const char *p, size_t n, size_t *content_len, bool short_ids) {
  const char *at = find(p, 0, n, k_mistral_tag);
  size_t i;
  if (at) {
    i = (size_t)(at - p);
    *content_len = trim_end(p, 0, i);
    i = skip_ws(p, i + strlen(k_mistral_tag), n);
  } else {
    /* The tag is a control token, which the output may leave out. */
    i = skip_ws(p, 0, n);
    if (!starts(p, i, n, "[{")) return NULL;
    *content_len = 0;
  }
  json_t *list = read_json(p, &i, n);
  json_t *calls = json_array();
  bool ok = json_is_array(list) && json_array_size(list) > 0 && skip_ws(p, i, n) == n;
  size_t k;
  json_t *v;
  if (ok) json_array_foreach(list, k, v) ok = ok && add_call(calls, v, short_ids);
  json_decref(list);
  if (!ok) {
    json_decref(calls);
    return NULL;
  }
  return calls;
}

static json_t *read_whole(const char *p, size_t n, size_t *content_len, bool short_ids) {
  size_t i = skip_ws(p, 0, n);
  *content_len = 0;
  json_t *v = read_json(p, &i, n);
  json_t *calls = json_array();
  bool ok = v && skip_ws(p, i, n) == n && add_call(calls, v, short_ids);
  json_decref(v);
  if (!ok) {
    json_decref(calls);
    return NULL;
  }
  return calls;
}

json_t *ss_oai_tools_extract(const tool_out *t, const char *text, size_t n, size_t *content_len) {
  *content_len = n;
  if (!t->on || !text) return NULL;
  size_t clen = n;
  const bool s = t->mistral_ids;
  json_t *calls = t->format == TOOL_FMT_LLAMA3    ? read_llama3(text, n, &clen, s)
                  : t->format == TOOL_FMT_MISTRAL ? read_mistral(text, n, &clen, s)
                  : t->format == TOOL_FMT_JSON    ? read_whole(text, n, &clen, s)
                                                  : read_hermes(text, n, &clen, s);
  if (!calls) return NULL;
  if (!t->parallel)
    while (json_array_size(calls) > 1) json_array_remove(calls, json_array_size(calls) - 1);
  *content_len = clen;
  return calls;
}

/* How much of a marker's beginning ends the text (a marker may be arriving). */
static size_t partial_suffix(const char *p, size_t n, const char *marker) {
  size_t k = strlen(marker);
  for (size_t m = k - 1; m > 0; m--)
    if (n >= m && memcmp(p + n - m, marker, m) == 0) return m;
  return 0;
}

size_t ss_oai_tools_releasable(const tool_out *t, const char *text, size_t n, size_t sent) {
  if (!t->on) return n;
  size_t r = n;
  if (t->format == TOOL_FMT_JSON) return sent;
  if (t->format == TOOL_FMT_LLAMA3 || t->format == TOOL_FMT_MISTRAL) {
    /* A call that would be the whole output: held until its first character
     * says otherwise. */
    if (sent == 0) {
      size_t i = skip_ws(text, 0, n);
      if (i == n) return 0;
      if (t->format == TOOL_FMT_LLAMA3) {
        size_t rest = n - i, k = strlen(k_python_tag);
        if (text[i] == '{' || memcmp(text + i, k_python_tag, rest < k ? rest : k) == 0) return 0;
        return trim_end(text, 0, n);
      }
      if (text[i] == '[') {
        size_t rest = n - i, k = strlen(k_mistral_tag);
        if (rest < 2 || text[i + 1] == '{' ||
            memcmp(text + i, k_mistral_tag, rest < k ? rest : k) == 0)
          return 0;
      }
    } else if (t->format == TOOL_FMT_LLAMA3) {
      return n;
    }
  }
  const char *marker = t->format == TOOL_FMT_MISTRAL ? k_mistral_tag : k_hermes_open;
  const char *at = find(text, sent, n, marker);
  if (at) r = (size_t)(at - text);
  else r = n - partial_suffix(text, n, marker);
  /* Whitespace before a call is not content: held until the next text. */
  r = trim_end(text, sent, r);
  return r < sent ? sent : r;
}
