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

/* Numeric bounds.  JSON numbers here have at most 16 integer digits (as
 * json-uint), so every bound is clamped to +-(10^16 - 1) and kept exact in
 * int64.  A range of integers becomes alternatives of digit patterns (no
 * leading zeros): [lo, hi] is cut where the digit count changes, and each
 * same-length piece digit by digit. */
#define NUM_MAX 9999999999999999LL

/* Alternatives for the same-length digit strings a..b (a <= b, n digits),
 * each after the literal `prefix`. */
static void digits_alts(ss_strbuf *out, char *prefix, int plen, const char *a, const char *b, int n,
                        bool *first) {
  if (n == 0 || a[0] == b[0]) {
    if (n > 0) {
      prefix[plen] = a[0];
      digits_alts(out, prefix, plen + 1, a + 1, b + 1, n - 1, first);
      return;
    }
    ss_strbuf_printf(out, "%s\"%.*s\"", *first ? "" : " | ", plen, prefix);
    *first = false;
    return;
  }
  bool low0 = true, high9 = true;
  for (int i = 1; i < n; i++) low0 &= a[i] == '0', high9 &= b[i] == '9';
  const char start = (char)(a[0] + (low0 ? 0 : 1)), end = (char)(b[0] - (high9 ? 0 : 1));
  char nines[20], zeros[20];
  memset(nines, '9', sizeof nines);
  memset(zeros, '0', sizeof zeros);
  if (!low0) {
    prefix[plen] = a[0];
    digits_alts(out, prefix, plen + 1, a + 1, nines, n - 1, first);
  }
  if (start <= end) {
    ss_strbuf_printf(out, "%s", *first ? "" : " | ");
    if (plen) ss_strbuf_printf(out, "\"%.*s\" ", plen, prefix);
    ss_strbuf_printf(out, "[%c-%c]", start, end);
    if (n > 1) ss_strbuf_printf(out, " [0-9]{%d}", n - 1);
    *first = false;
  }
  if (!high9) {
    prefix[plen] = b[0];
    digits_alts(out, prefix, plen + 1, zeros, b + 1, n - 1, first);
  }
}

/* The non-negative integers lo..hi (0 <= lo <= hi <= NUM_MAX), as one
 * parenthesised GBNF group. */
static void uint_range(ss_strbuf *out, int64_t lo, int64_t hi) {
  ss_strbuf_printf(out, "(");
  bool first = true;
  int64_t p10 = 1; /* 10^(len-1) */
  for (int len = 1; len <= 16 && lo <= hi; len++, p10 *= 10) {
    const int64_t top = p10 * 10 - 1; /* the largest len-digit number */
    if (lo > top) continue;
    const int64_t a = lo, b = hi < top ? hi : top;
    char sa[24], sb[24], prefix[24];
    snprintf(sa, sizeof sa, "%0*lld", len, (long long)a);
    snprintf(sb, sizeof sb, "%0*lld", len, (long long)b);
    digits_alts(out, prefix, 0, sa, sb, len, &first);
    lo = b + 1;
  }
  ss_strbuf_printf(out, ")");
}

/* Magnitudes m with L < m (or <=) and m < U (or <=), L and U integers,
 * 0 <= L <= U: integers only, or numbers with up to 15 fraction digits (no
 * exponent).  Returns false when no value is left. */
static bool magnitude(ss_strbuf *out, int64_t L, bool lx, int64_t U, bool ux, bool frac) {
  bool any = false;
  ss_strbuf_printf(out, "(");
  if (!frac) {
    const int64_t a = lx ? L + 1 : L, b = ux ? U - 1 : U;
    if (a <= b) uint_range(out, a, b), any = true;
  } else {
    /* integer part in [a, U - 1]: any fraction; L itself (when exclusive) only
     * with a fraction that is not zero; U itself (when inclusive) only with a
     * zero one */
    const int64_t a = lx ? L + 1 : L;
    if (a <= U - 1) {
      uint_range(out, a, U - 1);
      ss_strbuf_printf(out, " (\".\" [0-9]{1,15})?");
      any = true;
    }
    if (lx && U > L) {
      ss_strbuf_printf(out, "%s", any ? " | " : "");
      uint_range(out, L, L);
      ss_strbuf_printf(out, " \".\" [0-9]{0,14} [1-9]");
      any = true;
    }
    if (!ux && (U > L || !lx)) {
      ss_strbuf_printf(out, "%s", any ? " | " : "");
      uint_range(out, U, U);
      ss_strbuf_printf(out, " (\".\" \"0\"{1,15})?");
      any = true;
    }
  }
  ss_strbuf_printf(out, ")");
  return any;
}

/* A bound of an integer or number schema: `minimum` / `exclusiveMinimum`
 * (hi false) or `maximum` / `exclusiveMaximum` (hi true), the tighter one
 * when both are given.  For numbers a bound must be a whole number. */
static bool num_bound(sc *c, json_t *s, const char *path, bool hi, bool integer, bool *has,
                      int64_t *v, bool *excl) {
  const char *inc = hi ? "maximum" : "minimum", *exc = hi ? "exclusiveMaximum" : "exclusiveMinimum";
  *has = false;
  *excl = false;
  for (int k = 0; k < 2; k++) {
    json_t *x = json_object_get(s, k ? exc : inc);
    if (!x) continue;
    if (!json_is_number(x)) return sc_fail(c, "%s.%s must be a number", path, k ? exc : inc);
    double d = json_number_value(x);
    bool e = k == 1;
    if (integer) { /* x > 2.5 is x >= 3: inclusive bounds on whole numbers */
      if (d != floor(d)) d = hi ? floor(d) : ceil(d), e = false;
    } else if (d != floor(d)) {
      return sc_fail(c, "%s.%s: only whole-number bounds are supported for numbers", path,
                     k ? exc : inc);
    }
    if (d > (double)NUM_MAX) d = (double)NUM_MAX, e = hi ? false : e;
    if (d < -(double)NUM_MAX) d = -(double)NUM_MAX, e = hi ? e : false;
    const int64_t iv = (int64_t)d;
    const bool tighter = !*has || (hi ? (iv < *v || (iv == *v && e)) : (iv > *v || (iv == *v && e)));
    if (tighter) *v = iv, *excl = e;
    *has = true;
  }
  return true;
}

/* Integers, or numbers, within the schema's bounds (either may be missing). */
static bool gen_bounded(sc *c, json_t *s, const char *path, bool integer, ss_strbuf *b) {
  bool has_lo, has_hi, lx, hx;
  int64_t lo = 0, hi = 0;
  if (!num_bound(c, s, path, false, integer, &has_lo, &lo, &lx) ||
      !num_bound(c, s, path, true, integer, &has_hi, &hi, &hx))
    return false;
  if (!has_lo && !has_hi) return ss_strbuf_printf(b, integer ? "json-int" : "json-number"), true;
  if (!has_lo) lo = -NUM_MAX, lx = false;
  if (!has_hi) hi = NUM_MAX, hx = false;
  if (hi < lo || (hi == lo && (lx || hx)))
    return sc_fail(c, "%s: the bounds leave no value%s", path, "");
  ss_strbuf g = {0};
  bool any = false;
  ss_strbuf_printf(&g, "(");
  if (hi > 0 || (hi == 0 && !hx)) { /* x >= 0 */
    const bool from_lo = lo >= 0;
    ss_strbuf part = {0};
    if (magnitude(&part, from_lo ? lo : 0, from_lo ? lx : false, hi, hx, !integer)) {
      ss_strbuf_printf(&g, "%s", part.p);
      any = true;
    }
    ss_strbuf_free(&part);
  }
  if (lo < 0) { /* x < 0: "-" and a magnitude within (-hi, -lo) */
    const bool to_hi = hi <= 0;
    ss_strbuf part = {0};
    if (magnitude(&part, to_hi ? -hi : 0, to_hi ? hx : false, -lo, lx, !integer)) {
      ss_strbuf_printf(&g, "%s\"-\" %s", any ? " | " : "", part.p);
      any = true;
    }
    ss_strbuf_free(&part);
  }
  ss_strbuf_printf(&g, ")");
  if (any) ss_strbuf_printf(b, "%s", g.p);
  ss_strbuf_free(&g);
  return any ? true : sc_fail(c, "%s: the bounds leave no value%s", path, "");
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
  if (!strcmp(t, "integer")) return gen_bounded(c, s, path, true, b);
  if (!strcmp(t, "number")) return gen_bounded(c, s, path, false, b);
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
