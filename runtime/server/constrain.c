/* Output constraints of a generation request: response_format (json_object,
 * json_schema) and vLLM's structured_outputs (json, regex, choice, grammar;
 * also the older guided_* fields), compiled to a grammar the engine decodes
 * under.  A JSON Schema becomes GBNF here; a keyword this compiler cannot
 * enforce is refused with a 400 naming it, never ignored. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/base/status.h"
#include "runtime/grammar/grammar.h"
#include "runtime/server/api_internal.h"

/* The JSON pieces every schema grammar may use.  Whitespace between tokens is
 * bounded so that a sampled run cannot spend its tokens on it. */
static const char json_base[] =
    "ws ::= | \" \" | \"\\n\" [ ]{0,8}\n"
    "json-char ::= [^\"\\\\\\x00-\\x1F] | \"\\\\\" ([\"\\\\/bfnrt] | \"u\" [0-9a-fA-F]{4})\n"
    "json-string ::= \"\\\"\" json-char* \"\\\"\"\n"
    "json-uint ::= \"0\" | [1-9] [0-9]{0,15}\n"
    "json-int ::= \"-\"? json-uint\n"
    "json-frac ::= (\".\" [0-9]{1,15})? ([eE] [-+]? [0-9]{1,3})?\n"
    "json-number ::= json-int json-frac\n"
    "json-bool ::= \"true\" | \"false\"\n"
    "json-null ::= \"null\"\n"
    "json-value ::= json-object | json-array | json-string | json-number | json-bool | json-null\n"
    "json-kv ::= json-string ws \":\" ws json-value\n"
    "json-object ::= \"{\" ws (json-kv (ws \",\" ws json-kv)* ws)? \"}\"\n"
    "json-array ::= \"[\" ws (json-value (ws \",\" ws json-value)* ws)? \"]\"\n";

#define MAX_SCHEMA_DEPTH 64
#define MAX_ENUM_INTS 4096

typedef struct sc {
  json_t *root;
  ss_strbuf rules;
  int n;             /* rules made so far (names s0, s1, ...) */
  json_t *refs;      /* $ref string -> rule name */
  const char *param;
  parse_err *e;
  int depth;
} sc;

static bool sc_fail(sc *c, const char *fmt, const char *a, const char *b) {
  char msg[300];
  snprintf(msg, sizeof msg, fmt, a, b);
  return ss_oai_fail(c->e, 400, c->param, "'%s': %s", c->param, msg);
}

static int gen(sc *c, json_t *s, const char *path);

static void lit_json(ss_strbuf *b, json_t *v) {
  char *t = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
  if (!t) return;
  ss_grammar_gbnf_literal(b, t, strlen(t));
  free(t);
}

/* A new rule `sN ::= body`; returns N. */
static int add_rule(sc *c, const ss_strbuf *body) {
  int n = c->n++;
  ss_strbuf_printf(&c->rules, "s%d ::= %.*s\n", n, (int)body->len, body->p ? body->p : "");
  return n;
}

static bool known_annotation(const char *k) {
  static const char *const ok[] = {"title", "description", "default", "examples", "$schema", "$id",
                                   "$comment", "readOnly", "writeOnly", "deprecated", "$defs",
                                   "definitions", "discriminator", "strict", "nullable", NULL};
  for (int i = 0; ok[i]; i++)
    if (!strcmp(ok[i], k)) return true;
  return false;
}

static bool handled(const char *k) {
  static const char *const ok[] = {"type", "enum", "const", "anyOf", "oneOf", "allOf", "$ref",
                                   "properties", "required", "additionalProperties", "items",
                                   "minItems", "maxItems", "minLength", "maxLength", "minimum",
                                   "maximum", "exclusiveMinimum", "exclusiveMaximum", NULL};
  for (int i = 0; ok[i]; i++)
    if (!strcmp(ok[i], k)) return true;
  return known_annotation(k);
}

static bool get_count(sc *c, json_t *s, const char *key, const char *path, int64_t *v) {
  json_t *x = json_object_get(s, key);
  if (!x) return true;
  if (!json_is_integer(x) || json_integer_value(x) < 0 || json_integer_value(x) > 10000)
    return sc_fail(c, "%s.%s must be an integer in [0, 10000]", path, key);
  *v = json_integer_value(x);
  return true;
}

/* The rule for a $ref: resolved in the root schema ("#", "#/$defs/X", any JSON
 * pointer), made once (so recursive schemas are recursive rules). */
static int gen_ref(sc *c, const char *ref, const char *path) {
  json_t *have = json_object_get(c->refs, ref);
  if (have) return (int)json_integer_value(have);
  if (ref[0] != '#') return sc_fail(c, "%s.$ref '%.100s' is not a local reference (#/...)", path, ref), -1;
  json_t *t = c->root;
  const char *p = ref + 1;
  while (*p == '/' && t) {
    p++;
    char key[256];
    size_t k = 0;
    while (*p && *p != '/' && k + 1 < sizeof key) {
      if (p[0] == '~' && p[1] == '0') key[k++] = '~', p += 2;
      else if (p[0] == '~' && p[1] == '1') key[k++] = '/', p += 2;
      else key[k++] = *p++;
    }
    key[k] = 0;
    t = json_is_object(t) ? json_object_get(t, key) : NULL;
  }
  if (!t || *p) return sc_fail(c, "%s.$ref '%.100s' points to nothing", path, ref), -1;
  /* the name first, so that a reference back to it finds it */
  int n = c->n++;
  json_object_set_new(c->refs, ref, json_integer(n));
  int body = gen(c, t, ref);
  if (body < 0) return -1;
  ss_strbuf_printf(&c->rules, "s%d ::= s%d\n", n, body);
  return n;
}

/* Integers in [lo, hi] (either may be missing). */
static bool gen_int(sc *c, json_t *s, const char *path, ss_strbuf *b) {
  bool has_lo = false, has_hi = false;
  double lo = 0, hi = 0;
  json_t *v;
  if ((v = json_object_get(s, "minimum")) && json_is_number(v)) has_lo = true, lo = ceil(json_number_value(v));
  if ((v = json_object_get(s, "exclusiveMinimum")) && json_is_number(v)) {
    double x = floor(json_number_value(v)) + 1;
    if (!has_lo || x > lo) lo = x;
    has_lo = true;
  }
  if ((v = json_object_get(s, "maximum")) && json_is_number(v)) has_hi = true, hi = floor(json_number_value(v));
  if ((v = json_object_get(s, "exclusiveMaximum")) && json_is_number(v)) {
    double x = ceil(json_number_value(v)) - 1;
    if (!has_hi || x < hi) hi = x;
    has_hi = true;
  }
  if (!has_lo && !has_hi) return ss_strbuf_printf(b, "json-int"), true;
  if (has_lo && has_hi) {
    if (hi < lo) return sc_fail(c, "%s: the integer bounds leave no value%s", path, "");
    if (hi - lo < MAX_ENUM_INTS) { /* every value, as alternatives */
      for (double x = lo; x <= hi; x++) ss_strbuf_printf(b, "%s\"%.0f\"", x > lo ? " | " : "", x);
      return true;
    }
  }
  if (has_lo && !has_hi && lo == 0) return ss_strbuf_printf(b, "json-uint"), true;
  if (has_lo && !has_hi && lo == 1) return ss_strbuf_printf(b, "[1-9] [0-9]{0,15}"), true;
  return sc_fail(c, "%s: integer bounds other than a range of at most 4096 values, minimum 0 or "
                 "minimum 1 are not supported%s", path, "");
}

static bool gen_object(sc *c, json_t *s, const char *path, ss_strbuf *b) {
  json_t *props = json_object_get(s, "properties");
  json_t *req = json_object_get(s, "required");
  json_t *add = json_object_get(s, "additionalProperties");
  if (props && !json_is_object(props)) return sc_fail(c, "%s.properties must be an object%s", path, "");
  if (req && !json_is_array(req)) return sc_fail(c, "%s.required must be an array%s", path, "");
  size_t i;
  json_t *r;
  json_array_foreach(req, i, r) {
    if (!json_is_string(r) || !json_object_get(props, json_string_value(r)))
      return sc_fail(c, "%s.required names '%.80s', which is not in its properties", path,
                     json_is_string(r) ? json_string_value(r) : "?");
  }
  if (!props || json_object_size(props) == 0) {
    /* a map: keys any string, values the additionalProperties schema */
    if (json_is_false(add)) return ss_strbuf_printf(b, "\"{\" ws \"}\""), true;
    if (!add || json_is_true(add)) return ss_strbuf_printf(b, "json-object"), true;
    int v = gen(c, add, path);
    if (v < 0) return false;
    ss_strbuf_printf(b, "\"{\" ws (json-string ws \":\" ws s%d (ws \",\" ws json-string ws \":\" ws s%d)* ws)? \"}\"", v, v);
    return true;
  }
  /* The properties in their order, each optional one may be left out:
   * first_k = the object from property k with none written yet,
   * rest_k = from property k after at least one (so each starts with ","). */
  const size_t n = json_object_size(props);
  int *kv = malloc(n * sizeof *kv);
  bool *need = malloc(n * sizeof *need);
  if (!kv || !need) {
    free(kv), free(need);
    return ss_oai_fail(c->e, 500, NULL, "out of memory");
  }
  size_t k = 0;
  const char *key;
  json_t *ps;
  bool ok = true;
  json_object_foreach(props, key, ps) {
    need[k] = false;
    json_array_foreach(req, i, r) if (!strcmp(json_string_value(r), key)) need[k] = true;
    char sub[200];
    snprintf(sub, sizeof sub, "%.100s.%.80s", path, key);
    int v = gen(c, ps, sub);
    if (v < 0) {
      ok = false;
      break;
    }
    ss_strbuf body = {0};
    json_t *name = json_string(key);
    lit_json(&body, name);
    json_decref(name);
    ss_strbuf_printf(&body, " ws \":\" ws s%d", v);
    kv[k++] = add_rule(c, &body);
    ss_strbuf_free(&body);
  }
  if (ok) {
    int first = -1, rest = -1; /* the rules for k = n: nothing more */
    for (size_t j = n; j-- > 0;) {
      ss_strbuf fb = {0}, rb = {0};
      ss_strbuf_printf(&fb, "s%d", kv[j]);
      ss_strbuf_printf(&rb, "ws \",\" ws s%d", kv[j]);
      if (rest >= 0) ss_strbuf_printf(&fb, " s%d", rest), ss_strbuf_printf(&rb, " s%d", rest);
      if (!need[j]) {
        ss_strbuf_printf(&fb, " | %s", first >= 0 ? "" : "\"\"");
        if (first >= 0) ss_strbuf_printf(&fb, "s%d", first);
        ss_strbuf_printf(&rb, " | %s", rest >= 0 ? "" : "\"\"");
        if (rest >= 0) ss_strbuf_printf(&rb, "s%d", rest);
      }
      first = add_rule(c, &fb);
      rest = add_rule(c, &rb);
      ss_strbuf_free(&fb);
      ss_strbuf_free(&rb);
    }
    ss_strbuf_printf(b, "\"{\" ws s%d ws \"}\"", first);
  }
  free(kv);
  free(need);
  return ok;
}

static bool gen_array(sc *c, json_t *s, const char *path, ss_strbuf *b) {
  int64_t lo = 0, hi = -1;
  if (!get_count(c, s, "minItems", path, &lo) || !get_count(c, s, "maxItems", path, &hi)) return false;
  if (hi >= 0 && hi < lo) return sc_fail(c, "%s: maxItems < minItems%s", path, "");
  json_t *items = json_object_get(s, "items");
  char item[32] = "json-value";
  if (items && !json_is_true(items)) {
    int v = gen(c, items, path);
    if (v < 0) return false;
    snprintf(item, sizeof item, "s%d", v);
  }
  if (hi == 0) return ss_strbuf_printf(b, "\"[\" ws \"]\""), true;
  const char *open = lo == 0 ? "(" : "";
  ss_strbuf_printf(b, "\"[\" ws %s%s (ws \",\" ws %s)", open, item, item);
  int64_t rlo = lo > 0 ? lo - 1 : 0;
  if (hi < 0) ss_strbuf_printf(b, "{%lld,}", (long long)rlo);
  else ss_strbuf_printf(b, "{%lld,%lld}", (long long)rlo, (long long)(hi - 1));
  ss_strbuf_printf(b, " ws%s \"]\"", lo == 0 ? ")?" : "");
  return true;
}

static bool gen_type(sc *c, json_t *s, const char *t, const char *path, ss_strbuf *b) {
  if (!strcmp(t, "string")) {
    int64_t lo = 0, hi = -1;
    if (!get_count(c, s, "minLength", path, &lo) || !get_count(c, s, "maxLength", path, &hi))
      return false;
    if (hi >= 0 && hi < lo) return sc_fail(c, "%s: maxLength < minLength%s", path, "");
    if (hi < 0) ss_strbuf_printf(b, "\"\\\"\" json-char{%lld,} \"\\\"\"", (long long)lo);
    else ss_strbuf_printf(b, "\"\\\"\" json-char{%lld,%lld} \"\\\"\"", (long long)lo, (long long)hi);
    return true;
  }
  if (!strcmp(t, "integer")) return gen_int(c, s, path, b);
  if (!strcmp(t, "number")) {
    json_t *mn = json_object_get(s, "minimum"), *mx = json_object_get(s, "maximum");
    if (json_object_get(s, "exclusiveMinimum") || json_object_get(s, "exclusiveMaximum") || mx ||
        (mn && !(json_is_number(mn) && json_number_value(mn) == 0)))
      return sc_fail(c, "%s: number bounds other than minimum 0 are not supported (integer "
                     "bounds are)%s", path, "");
    return ss_strbuf_printf(b, mn ? "json-uint json-frac" : "json-number"), true;
  }
  if (!strcmp(t, "boolean")) return ss_strbuf_printf(b, "json-bool"), true;
  if (!strcmp(t, "null")) return ss_strbuf_printf(b, "json-null"), true;
  if (!strcmp(t, "object")) return gen_object(c, s, path, b);
  if (!strcmp(t, "array")) return gen_array(c, s, path, b);
  return sc_fail(c, "%s.type '%.40s' is not a JSON Schema type", path, t);
}

/* The rule number for schema s, or -1 with c->e set. */
static int gen(sc *c, json_t *s, const char *path) {
  if (++c->depth > MAX_SCHEMA_DEPTH)
    return sc_fail(c, "%s: the schema nests deeper than %s levels", path, "64"), -1;
  ss_strbuf b = {0};
  bool ok = true;
  int out = -1;
  if (json_is_true(s) || (json_is_object(s) && json_object_size(s) == 0)) {
    ss_strbuf_printf(&b, "json-value");
    goto done;
  }
  if (!json_is_object(s)) {
    ok = sc_fail(c, "%s must be a schema object, not %s", path, json_is_false(s) ? "false" : "another value");
    goto done;
  }
  const char *key;
  json_t *v;
  json_object_foreach(s, key, v) {
    if (!handled(key)) {
      ok = sc_fail(c, "%s: the keyword '%.60s' is not supported by constrained decoding", path, key);
      goto done;
    }
  }
  json_t *ref = json_object_get(s, "$ref");
  json_t *any = json_object_get(s, "anyOf");
  if (!any) any = json_object_get(s, "oneOf");
  json_t *all = json_object_get(s, "allOf");
  json_t *en = json_object_get(s, "enum");
  json_t *cn = json_object_get(s, "const");
  json_t *ty = json_object_get(s, "type");
  if (all) {
    if (!json_is_array(all) || json_array_size(all) != 1) {
      ok = sc_fail(c, "%s.allOf with more than one schema is not supported%s", path, "");
      goto done;
    }
    int r = gen(c, json_array_get(all, 0), path);
    if (r < 0) ok = false;
    else ss_strbuf_printf(&b, "s%d", r);
  } else if (ref) {
    if (!json_is_string(ref)) {
      ok = sc_fail(c, "%s.$ref must be a string%s", path, "");
      goto done;
    }
    int r = gen_ref(c, json_string_value(ref), path);
    if (r < 0) ok = false;
    else ss_strbuf_printf(&b, "s%d", r);
  } else if (cn) {
    lit_json(&b, cn);
  } else if (en) {
    if (!json_is_array(en) || json_array_size(en) == 0) {
      ok = sc_fail(c, "%s.enum must be a non-empty array%s", path, "");
      goto done;
    }
    size_t i;
    json_array_foreach(en, i, v) {
      if (i) ss_strbuf_printf(&b, " | ");
      lit_json(&b, v);
    }
  } else if (any) {
    if (!json_is_array(any) || json_array_size(any) == 0) {
      ok = sc_fail(c, "%s.anyOf/oneOf must be a non-empty array%s", path, "");
      goto done;
    }
    size_t i;
    json_array_foreach(any, i, v) {
      int r = gen(c, v, path);
      if (r < 0) {
        ok = false;
        goto done;
      }
      ss_strbuf_printf(&b, "%ss%d", i ? " | " : "", r);
    }
  } else if (json_is_string(ty)) {
    ok = gen_type(c, s, json_string_value(ty), path, &b);
  } else if (json_is_array(ty) && json_array_size(ty) > 0) {
    size_t i;
    json_array_foreach(ty, i, v) {
      if (!json_is_string(v)) {
        ok = sc_fail(c, "%s.type must list type names%s", path, "");
        goto done;
      }
      ss_strbuf sub = {0};
      ok = gen_type(c, s, json_string_value(v), path, &sub);
      if (ok) ss_strbuf_printf(&b, "%s(%.*s)", i ? " | " : "", (int)sub.len, sub.p);
      ss_strbuf_free(&sub);
      if (!ok) goto done;
    }
  } else if (ty) {
    ok = sc_fail(c, "%s.type must be a string or an array of strings%s", path, "");
  } else if (json_object_get(s, "properties") || json_object_get(s, "additionalProperties")) {
    ok = gen_object(c, s, path, &b);
  } else if (json_object_get(s, "items")) {
    ok = gen_array(c, s, path, &b);
  } else {
    ss_strbuf_printf(&b, "json-value");
  }
done:
  if (ok) out = add_rule(c, &b);
  ss_strbuf_free(&b);
  c->depth--;
  return out;
}

/* Attaches the grammar text's compiled constraint to g. */
static bool attach(gen_fields *g, const char *text, size_t len, const char *param, parse_err *e) {
  if (g->r.grammar)
    return ss_oai_fail(e, 400, param, "'%s': only one output constraint per request", param);
  ss_grammar *gr = NULL;
  ss_grammar_state *st = NULL;
  if (ss_grammar_parse(text, len, &gr) || ss_grammar_state_create(gr, &st))
    return ss_oai_fail(e, 400, param, "'%s': %s", param, ss_error_msg());
  g->r.grammar = st;
  return true;
}

bool ss_oai_constrain_schema(const gen_ctx *x, gen_fields *g, json_t *schema, const char *param,
                             parse_err *e) {
  (void)x;
  sc c = {.root = schema, .refs = json_object(), .param = param, .e = e};
  if (!c.refs) return ss_oai_fail(e, 500, NULL, "out of memory");
  ss_strbuf_printf(&c.rules, "%s", json_base);
  int top = gen(&c, schema, "schema");
  bool ok = top >= 0;
  if (ok) {
    ss_strbuf_printf(&c.rules, "root ::= s%d\n", top);
    ok = attach(g, c.rules.p, c.rules.len, param, e);
  }
  ss_strbuf_free(&c.rules);
  json_decref(c.refs);
  return ok;
}

/* ------------------------------------------------------------------------ */
/* The request fields                                                          */

static bool constrain_regex(gen_fields *g, json_t *v, const char *param, parse_err *e) {
  if (!json_is_string(v)) return ss_oai_fail(e, 400, param, "'%s' must be a string", param);
  ss_strbuf b = {0};
  int rc = ss_grammar_regex_to_gbnf(json_string_value(v), json_string_length(v), "root", &b);
  bool ok = rc ? ss_oai_fail(e, 400, param, "'%s': %s", param, ss_error_msg())
               : attach(g, b.p, b.len, param, e);
  ss_strbuf_free(&b);
  return ok;
}

static bool constrain_choice(gen_fields *g, json_t *v, const char *param, parse_err *e) {
  if (!json_is_array(v) || json_array_size(v) == 0)
    return ss_oai_fail(e, 400, param, "'%s' must be a non-empty array of strings", param);
  ss_strbuf b = {0};
  ss_strbuf_printf(&b, "root ::= ");
  size_t i;
  json_t *s;
  json_array_foreach(v, i, s) {
    if (!json_is_string(s) || json_string_length(s) == 0) {
      ss_strbuf_free(&b);
      return ss_oai_fail(e, 400, param, "'%s[%zu]' must be a non-empty string", param, i);
    }
    if (i) ss_strbuf_printf(&b, " | ");
    ss_grammar_gbnf_literal(&b, json_string_value(s), json_string_length(s));
  }
  ss_strbuf_printf(&b, "\n");
  bool ok = attach(g, b.p, b.len, param, e);
  ss_strbuf_free(&b);
  return ok;
}

static bool constrain_json(const gen_ctx *x, gen_fields *g, json_t *v, const char *param,
                           parse_err *e) {
  if (json_is_string(v)) { /* vLLM takes the schema as JSON text too */
    json_error_t jerr;
    json_t *s = json_loads(json_string_value(v), 0, &jerr);
    if (!s) return ss_oai_fail(e, 400, param, "'%s' is not valid JSON: %s", param, jerr.text);
    bool ok = ss_oai_constrain_schema(x, g, s, param, e);
    json_decref(s);
    return ok;
  }
  if (!json_is_object(v) && !json_is_boolean(v))
    return ss_oai_fail(e, 400, param, "'%s' must be a JSON Schema object", param);
  return ss_oai_constrain_schema(x, g, v, param, e);
}

static bool constrain_grammar(gen_fields *g, json_t *v, const char *param, parse_err *e) {
  if (!json_is_string(v)) return ss_oai_fail(e, 400, param, "'%s' must be a GBNF string", param);
  return attach(g, json_string_value(v), json_string_length(v), param, e);
}

static bool json_object_mode(gen_fields *g, const char *param, parse_err *e) {
  static const char txt[] = "root ::= json-object\n";
  ss_strbuf b = {0};
  ss_strbuf_printf(&b, "%s%s", json_base, txt);
  bool ok = attach(g, b.p, b.len, param, e);
  ss_strbuf_free(&b);
  return ok;
}

bool ss_oai_parse_constraints(const gen_ctx *x, json_t *o, gen_fields *g, parse_err *e) {
  json_t *rf = json_object_get(o, "response_format");
  if (rf && !json_is_null(rf)) {
    json_t *type = json_is_object(rf) ? json_object_get(rf, "type") : NULL;
    if (!json_is_string(type))
      return ss_oai_fail(e, 400, "response_format",
                         "'response_format' must be an object with a string 'type'");
    const char *t = json_string_value(type);
    if (!strcmp(t, "json_object")) {
      if (!json_object_mode(g, "response_format", e)) return false;
    } else if (!strcmp(t, "json_schema")) {
      json_t *js = json_object_get(rf, "json_schema");
      if (!json_is_object(js))
        return ss_oai_fail(e, 400, "response_format",
                           "'response_format.json_schema' must be an object");
      json_t *name = json_object_get(js, "name");
      if (name && !json_is_string(name))
        return ss_oai_fail(e, 400, "response_format", "'response_format.json_schema.name' must be a string");
      json_t *schema = json_object_get(js, "schema");
      if (!schema || json_is_null(schema)) {
        if (!json_object_mode(g, "response_format", e)) return false;
      } else if (!constrain_json(x, g, schema, "response_format", e)) {
        return false;
      }
    } else if (strcmp(t, "text") != 0) {
      return ss_oai_fail(e, 400, "response_format",
                         "'response_format.type' = '%.40s' is not one of text, json_object, "
                         "json_schema", t);
    }
  }
  json_t *so = json_object_get(o, "structured_outputs");
  if (so && !json_is_null(so)) {
    if (!json_is_object(so))
      return ss_oai_fail(e, 400, "structured_outputs", "'structured_outputs' must be an object");
    const char *key;
    json_t *v;
    json_object_foreach(so, key, v) {
      if (json_is_null(v) || (json_is_false(v) && !strcmp(key, "json_object"))) continue;
      bool ok;
      if (!strcmp(key, "json")) ok = constrain_json(x, g, v, "structured_outputs", e);
      else if (!strcmp(key, "regex")) ok = constrain_regex(g, v, "structured_outputs", e);
      else if (!strcmp(key, "choice")) ok = constrain_choice(g, v, "structured_outputs", e);
      else if (!strcmp(key, "grammar")) ok = constrain_grammar(g, v, "structured_outputs", e);
      else if (!strcmp(key, "json_object") && json_is_true(v)) ok = json_object_mode(g, "structured_outputs", e);
      else
        ok = ss_oai_fail(e, 400, "structured_outputs",
                         "'structured_outputs.%.60s' is not supported (json, regex, choice, "
                         "grammar, json_object are)", key);
      if (!ok) return false;
    }
  }
  static const char *const guided[] = {"guided_json", "guided_regex", "guided_choice",
                                       "guided_grammar", NULL};
  for (int i = 0; guided[i]; i++) {
    json_t *v = json_object_get(o, guided[i]);
    if (!v || json_is_null(v)) continue;
    bool ok = i == 0   ? constrain_json(x, g, v, guided[i], e)
              : i == 1 ? constrain_regex(g, v, guided[i], e)
              : i == 2 ? constrain_choice(g, v, guided[i], e)
                       : constrain_grammar(g, v, guided[i], e);
    if (!ok) return false;
  }
  return true;
}
