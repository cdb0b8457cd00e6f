/* Jinja filters and tests, with jinja2's semantics (transformers' tojson:
 * json.dumps without HTML escaping, ensure_ascii off by default). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/base/status.h"
#include "runtime/tokenizer/jinja_internal.h"

static const char *const k_filters[] = {
    "abs", "capitalize", "count", "d", "default", "dictsort", "e", "escape", "first", "float",
    "indent", "int", "items", "join", "last", "length", "list", "lower", "map", "max", "min",
    "reject", "rejectattr", "replace", "reverse", "round", "safe", "select", "selectattr", "sort",
    "string", "sum", "title", "tojson", "trim", "unique", "upper", "wordcount", NULL};
static const char *const k_tests[] = {
    "defined", "undefined", "none", "string", "mapping", "iterable", "sequence", "number",
    "integer", "float", "boolean", "true", "false", "equalto", "eq", "==", "ne", "!=", "lt", "<",
    "gt", ">", "le", "<=", "ge", ">=", "greaterthan", "lessthan", "in", "odd", "even",
    "divisibleby", "callable", "lower", "upper", "sameas", "escaped", NULL};

static bool in_table(const char *const *t, const char *name) {
  for (size_t i = 0; t[i]; i++)
    if (!strcmp(t[i], name)) return true;
  return false;
}
bool jinja_filter_known(const char *name) { return in_table(k_filters, name); }
bool jinja_test_known(const char *name) { return in_table(k_tests, name); }

const jv *jarg(const jargs *a, size_t i, const char *name) {
  if (i < a->n) return &a->pos[i];
  for (size_t k = 0; name && k < a->nkw; k++)
    if (!strcmp(a->kwname[k], name)) return &a->kw[k];
  return NULL;
}
jv jarg_or(const jargs *a, size_t i, const char *name, jv dflt) {
  const jv *v = jarg(a, i, name);
  return v ? *v : dflt;
}

/* ---- helpers ---- */
static char lower_c(char ch) { return ch >= 'A' && ch <= 'Z' ? (char)(ch + 32) : ch; }
static char upper_c(char ch) { return ch >= 'a' && ch <= 'z' ? (char)(ch - 32) : ch; }

static jv map_case(jctx *c, jv s, char (*f)(char)) {
  jv r = jv_strn(c, s.s->p, s.s->len);
  for (size_t i = 0; i < r.s->len; i++) r.s->p[i] = f(r.s->p[i]);
  return r;
}

/* A key for case-insensitive comparisons: strings lowered. */
static jv fold(jctx *c, jv v, bool case_sensitive) {
  return v.t == JV_STR && !case_sensitive ? map_case(c, v, lower_c) : v;
}

/* environment.getitem along a dotted attribute path ("a.b", "0.name"). */
static jv attr_path(jctx *c, const jnode *at, jv v, jv path) {
  if (path.t == JV_INT) return jinja_getitem(c, at, v, path);
  jv p = jv_to_str(c, path);
  const char *s = p.s->p;
  while (*s) {
    const char *e = strchr(s, '.');
    size_t n = e ? (size_t)(e - s) : strlen(s);
    jv key = jv_strn(c, s, n);
    bool digits = n > 0;
    for (size_t i = 0; i < n; i++)
      if (s[i] < '0' || s[i] > '9') digits = false;
    if (digits) key = jv_int(strtoll(key.s->p, NULL, 10));
    v = jinja_getitem(c, at, v, key);
    s += n;
    if (*s == '.') s++;
  }
  return v;
}

typedef struct sort_ctx {
  jctx *c;
  const jnode *at;
  jv *keys;
  bool reverse;
} sort_ctx;

/* A stable merge sort of idx[] by keys[idx]. */
static void msort(sort_ctx *sc, size_t *idx, size_t *tmp, size_t n) {
  if (n < 2) return;
  size_t h = n / 2;
  msort(sc, idx, tmp, h);
  msort(sc, idx + h, tmp, n - h);
  size_t i = 0, j = h, k = 0;
  while (i < h && j < n) {
    int r = jv_cmp(sc->c, sc->at, sc->keys[idx[j]], sc->keys[idx[i]]);
    if (sc->reverse) r = -r;
    tmp[k++] = r < 0 ? idx[j++] : idx[i++];
  }
  while (i < h) tmp[k++] = idx[i++];
  while (j < n) tmp[k++] = idx[j++];
  memcpy(idx, tmp, n * sizeof *idx);
}

static size_t *sorted_order(jctx *c, const jnode *at, jv *keys, size_t n, bool reverse) {
  size_t *idx = ja_alloc(&c->arena, (n + 1) * sizeof *idx), *tmp = ja_alloc(&c->arena, (n + 1) * sizeof *tmp);
  for (size_t i = 0; i < n; i++) idx[i] = i;
  sort_ctx sc = {c, at, keys, reverse};
  msort(&sc, idx, tmp, n);
  return idx;
}

static int64_t as_int(jctx *c, const jnode *at, jv v, const char *what) {
  if (v.t == JV_INT) return v.i;
  if (v.t == JV_BOOL) return v.b;
  jfail(c, at, SS_ERR_INVALID, "%s must be an integer, not %s", what, jv_type_name(v));
}

static bool is_space(unsigned char ch) { return ch == ' ' || (ch >= 9 && ch <= 13) || (ch >= 0x1c && ch <= 0x1f); }

jv jinja_strip(jctx *c, jv s, jv chars, bool left, bool right);
jv jinja_strip(jctx *c, jv s, jv chars, bool left, bool right) {
  size_t b = 0, e = s.s->len;
  const char *p = s.s->p;
  bool custom = chars.t == JV_STR;
  #define STRIPPABLE(ch) (custom ? memchr(chars.s->p, (ch), chars.s->len) != NULL : is_space((unsigned char)(ch)))
  while (left && b < e && STRIPPABLE(p[b])) b++;
  while (right && e > b && STRIPPABLE(p[e - 1])) e--;
  #undef STRIPPABLE
  return jv_strn(c, p + b, e - b);
}

static jv do_replace(jctx *c, jv s, jv old, jv new_, int64_t count) {
  jbuf b = {.c = c};
  jb_add(&b, "", 0);
  size_t i = 0, done = 0, n = old.s->len;
  if (!n) {
    for (; i <= s.s->len; i++) {
      bool start = i == s.s->len || ((unsigned char)s.s->p[i] & 0xC0) != 0x80;
      if (start && (count < 0 || (int64_t)done < count)) {
        jb_add(&b, new_.s->p, new_.s->len);
        done++;
      }
      if (i < s.s->len) jb_add(&b, s.s->p + i, 1);
    }
    return jb_value(&b);
  }
  while (i < s.s->len) {
    if ((count < 0 || (int64_t)done < count) && i + n <= s.s->len && !memcmp(s.s->p + i, old.s->p, n)) {
      jb_add(&b, new_.s->p, new_.s->len);
      i += n;
      done++;
    } else {
      jb_add(&b, s.s->p + i, 1);
      i++;
    }
  }
  return jb_value(&b);
}
jv jinja_replace(jctx *c, jv s, jv old, jv new_, int64_t count);
jv jinja_replace(jctx *c, jv s, jv old, jv new_, int64_t count) { return do_replace(c, s, old, new_, count); }

static jv do_indent(jctx *c, const jnode *at, jv s, const jargs *a) {
  jv w = jarg_or(a, 0, "width", jv_int(4));
  bool first = jv_truthy(jarg_or(a, 1, "first", jv_bool(false)));
  bool blank = jv_truthy(jarg_or(a, 2, "blank", jv_bool(false)));
  jv ind;
  if (w.t == JV_STR) ind = w;
  else {
    int64_t k = as_int(c, at, w, "indent width");
    if (k < 0) k = 0;
    if (k > 4096) jfail(c, at, SS_ERR_RANGE, "indent width %lld exceeds 4096", (long long)k);
    jbuf ib = {.c = c};
    jb_add(&ib, "", 0);
    for (int64_t i = 0; i < k; i++) jb_add(&ib, " ", 1);
    ind = jb_value(&ib);
  }
  /* s + "\n", split into lines as str.splitlines() does */
  jbuf src = {.c = c};
  jb_add(&src, s.s->p, s.s->len);
  jb_add(&src, "\n", 1);
  jv lines = jv_list(c, 0);
  size_t st = 0;
  for (size_t i = 0; i < src.len; i++) {
    char ch = src.p[i];
    if (ch == '\n' || ch == '\r' || ch == '\v' || ch == '\f' || ch == '\x1c' || ch == '\x1d' || ch == '\x1e') {
      jl_push(c, lines.l, jv_strn(c, src.p + st, i - st));
      if (ch == '\r' && i + 1 < src.len && src.p[i + 1] == '\n') i++;
      st = i + 1;
    }
  }
  if (st < src.len) jl_push(c, lines.l, jv_strn(c, src.p + st, src.len - st));
  jbuf b = {.c = c};
  jb_add(&b, "", 0);
  if (first) jb_add(&b, ind.s->p, ind.s->len);
  for (size_t i = 0; i < lines.l->n; i++) {
    jstr *ln = lines.l->v[i].s;
    if (i) {
      jb_add(&b, "\n", 1);
      if (blank || ln->len) jb_add(&b, ind.s->p, ind.s->len);
    }
    jb_add(&b, ln->p, ln->len);
  }
  return jb_value(&b);
}

static jv do_tojson(jctx *c, const jnode *at, jv v, const jargs *a) {
  bool ensure_ascii = jv_truthy(jarg_or(a, 0, "ensure_ascii", jv_bool(false)));
  jv ind = jarg_or(a, 1, "indent", jv_none());
  jv seps = jarg_or(a, 2, "separators", jv_none());
  bool sort_keys = jv_truthy(jarg_or(a, 3, "sort_keys", jv_bool(false)));
  int indent = -1;
  if (ind.t != JV_NONE) {
    int64_t k = as_int(c, at, ind, "tojson indent");
    if (k > 64) jfail(c, at, SS_ERR_RANGE, "tojson indent %lld exceeds 64", (long long)k);
    indent = k < 0 ? 0 : (int)k;
  }
  const char *item_sep = indent >= 0 ? "," : ", ", *key_sep = ": ";
  if (seps.t == JV_LIST && seps.l->n == 2 && seps.l->v[0].t == JV_STR && seps.l->v[1].t == JV_STR) {
    item_sep = seps.l->v[0].s->p;
    key_sep = seps.l->v[1].s->p;
  } else if (seps.t != JV_NONE) {
    jfail(c, at, SS_ERR_INVALID, "tojson separators must be a pair of strings");
  }
  jbuf b = {.c = c};
  jb_add(&b, "", 0);
  jv_write_json(c, at, &b, v, ensure_ascii, indent, item_sep, key_sep, sort_keys, 0);
  return jb_value(&b);
}

static jv do_title(jctx *c, jv s) {
  jv r = jv_strn(c, s.s->p, s.s->len);
  bool start = true;
  for (size_t i = 0; i < r.s->len; i++) {
    char ch = r.s->p[i];
    if (ch == '-' || is_space((unsigned char)ch) || ch == '(' || ch == '{' || ch == '[' || ch == '<') {
      start = true;
      continue;
    }
    r.s->p[i] = start ? upper_c(ch) : lower_c(ch);
    start = false;
  }
  return r;
}

/* Applies test `name` (select/reject, and "is"). */
static bool run_test(jctx *c, const jnode *at, const char *name, jv v, const jargs *a) {
  return jinja_test_apply(c, at, name, v, a);
}

static jargs shift_args(const jargs *a, size_t k) {
  jargs r = *a;
  r.n = a->n > k ? a->n - k : 0;
  r.pos = a->pos + (a->n > k ? k : a->n);
  return r;
}

static jv do_select(jctx *c, const jnode *at, jv v, const jargs *a, bool attr, bool keep) {
  /* jinja2 yields nothing for a falsy input (none included) */
  jlist *items = jv_truthy(v) ? jinja_iter(c, at, v) : jv_list(c, 0).l;
  jv r = jv_list(c, 0);
  r.l->gen = true;
  jv attr_name = jv_none();
  size_t k = 0;
  if (attr) {
    if (!a->n) jfail(c, at, SS_ERR_INVALID, "%s needs an attribute name", keep ? "selectattr" : "rejectattr");
    attr_name = a->pos[0];
    k = 1;
  }
  const char *test = NULL;
  if (a->n > k) {
    if (a->pos[k].t != JV_STR) jfail(c, at, SS_ERR_INVALID, "a test name must be a string");
    test = a->pos[k].s->p;
    if (!jinja_test_known(test)) jfail(c, at, SS_ERR_UNSUPPORTED, "unsupported construct: test '%s'", test);
    k++;
  }
  jargs rest = shift_args(a, k);
  rest.nkw = 0;
  for (size_t i = 0; i < items->n; i++) {
    jv x = attr ? attr_path(c, at, items->v[i], attr_name) : items->v[i];
    bool t = test ? run_test(c, at, test, x, &rest) : jv_truthy(x);
    if (t == keep) jl_push(c, r.l, items->v[i]);
  }
  return r;
}

static jv do_map(jctx *c, const jnode *at, jv v, const jargs *a) {
  jlist *items = jv_truthy(v) ? jinja_iter(c, at, v) : jv_list(c, 0).l;
  jv r = jv_list(c, items->n);
  r.l->gen = true;
  const jv *attr = jarg(a, SIZE_MAX, "attribute");
  if (attr) {
    const jv *dflt = jarg(a, SIZE_MAX, "default");
    for (size_t i = 0; i < items->n; i++) {
      jv x = attr_path(c, at, items->v[i], *attr);
      if (x.t == JV_UNDEF && dflt) x = *dflt;
      jl_push(c, r.l, x);
    }
    return r;
  }
  if (!a->n || a->pos[0].t != JV_STR) jfail(c, at, SS_ERR_INVALID, "map needs a filter name or attribute=");
  const char *f = a->pos[0].s->p;
  if (!jinja_filter_known(f)) jfail(c, at, SS_ERR_UNSUPPORTED, "unsupported construct: filter '%s'", f);
  jargs rest = shift_args(a, 1);
  for (size_t i = 0; i < items->n; i++) jl_push(c, r.l, jinja_filter_apply(c, at, f, items->v[i], &rest));
  return r;
}

static jv min_max(jctx *c, const jnode *at, jv v, const jargs *a, bool want_max) {
  jlist *items = jinja_iter(c, at, v);
  bool cs = jv_truthy(jarg_or(a, 0, "case_sensitive", jv_bool(false)));
  const jv *attr = jarg(a, 1, "attribute");
  if (!items->n) return jv_undef("min/max of an empty sequence");
  size_t best = 0;
  jv bk = fold(c, attr ? attr_path(c, at, items->v[0], *attr) : items->v[0], cs);
  for (size_t i = 1; i < items->n; i++) {
    jv k = fold(c, attr ? attr_path(c, at, items->v[i], *attr) : items->v[i], cs);
    int r = jv_cmp(c, at, k, bk);
    if (want_max ? r > 0 : r < 0) best = i, bk = k;
  }
  return items->v[best];
}

static jv to_number(jctx *c, const jnode *at, jv v, bool want_int, jv dflt) {
  (void)at;
  if (v.t == JV_INT) return want_int ? v : jv_float((double)v.i);
  if (v.t == JV_BOOL) return want_int ? jv_int(v.b) : jv_float(v.b);
  if (v.t == JV_FLOAT) {
    if (!want_int) return v;
    if (!isfinite(v.f) || fabs(v.f) >= 9.2e18) return dflt;
    return jv_int((int64_t)v.f);
  }
  if (v.t == JV_STR) {
    jv t = jinja_strip(c, v, jv_none(), true, true);
    char *buf = ja_alloc(&c->arena, t.s->len + 1);
    size_t n = 0;
    for (size_t i = 0; i < t.s->len; i++)
      if (t.s->p[i] != '_') buf[n++] = t.s->p[i];
    buf[n] = 0;
    if (!n) return dflt;
    char *end;
    if (want_int) {
      long long x = strtoll(buf, &end, 10);
      if (!*end) return jv_int(x);
    }
    double f = strtod(buf, &end);
    if (*end || (buf[0] == '0' && (buf[1] == 'x' || buf[1] == 'X'))) return dflt;
    if (!want_int) return jv_float(f);
    if (!isfinite(f) || fabs(f) >= 9.2e18) return dflt;
    return jv_int((int64_t)f);
  }
  return dflt;
}

jv jinja_filter_apply(jctx *c, const jnode *at, const char *name, jv v, const jargs *a) {
  if (!jinja_filter_known(name)) jfail(c, at, SS_ERR_UNSUPPORTED, "unsupported construct: filter '%s'", name);
  if (!strcmp(name, "default") || !strcmp(name, "d")) {
    jv dflt = jarg_or(a, 0, "default_value", jv_str(c, ""));
    bool boolean = jv_truthy(jarg_or(a, 1, "boolean", jv_bool(false)));
    if (v.t == JV_UNDEF || (boolean && !jv_truthy(v))) return dflt;
    return v;
  }
  if (!strcmp(name, "tojson")) return do_tojson(c, at, v, a);
  if (!strcmp(name, "length") || !strcmp(name, "count")) {
    switch (v.t) {
    case JV_UNDEF: return jv_int(0);
    case JV_STR: return jv_int((int64_t)utf8_count(v.s->p, v.s->len));
    case JV_LIST:
      if (v.l->gen) jfail(c, at, SS_ERR_INVALID, "object of type 'generator' has no len()");
      return jv_int((int64_t)v.l->n);
    case JV_DICT: return jv_int((int64_t)v.d->n);
    default: jfail(c, at, SS_ERR_INVALID, "object of type '%s' has no len()", jv_type_name(v));
    }
  }
  if (!strcmp(name, "string")) return jv_to_str(c, v);
  if (!strcmp(name, "safe")) {
    jv r = jv_to_str(c, v);
    r.safe = true;
    return r;
  }
  if (!strcmp(name, "items")) {
    if (v.t == JV_UNDEF) return jv_list(c, 0);
    if (v.t != JV_DICT) jfail(c, at, SS_ERR_INVALID, "items: can only get item pairs from a mapping");
    jv r = jv_list(c, v.d->n);
    for (size_t i = 0; i < v.d->n; i++) {
      jv t = jv_list(c, 2);
      t.l->tuple = true;
      jl_push(c, t.l, v.d->k[i]);
      jl_push(c, t.l, v.d->v[i]);
      jl_push(c, r.l, t);
    }
    return r;
  }
  if (!strcmp(name, "list")) {
    jlist *it = jinja_iter(c, at, v);
    jv r = jv_list(c, it->n);
    for (size_t i = 0; i < it->n; i++) jl_push(c, r.l, it->v[i]);
    return r;
  }
  if (!strcmp(name, "first") || !strcmp(name, "last")) {
    if (name[0] == 'l' && v.t == JV_LIST && v.l->gen)
      jfail(c, at, SS_ERR_INVALID, "last: 'generator' object is not reversible");
    jlist *it = jinja_iter(c, at, v);
    if (!it->n) return jv_undef(name);
    return it->v[name[0] == 'f' ? 0 : it->n - 1];
  }
  if (!strcmp(name, "reverse")) {
    if (v.t == JV_STR) {
      jlist *it = jinja_iter(c, at, v);
      jbuf b = {.c = c};
      jb_add(&b, "", 0);
      for (size_t i = it->n; i-- > 0;) jb_add(&b, it->v[i].s->p, it->v[i].s->len);
      return jb_value(&b);
    }
    jlist *it = jinja_iter(c, at, v);
    jv r = jv_list(c, it->n);
    for (size_t i = it->n; i-- > 0;) jl_push(c, r.l, it->v[i]);
    return r;
  }
  if (!strcmp(name, "join")) {
    jv sep = jv_to_str(c, jarg_or(a, 0, "d", jv_str(c, "")));
    const jv *attr = jarg(a, 1, "attribute");
    jlist *it = jinja_iter(c, at, v);
    jbuf b = {.c = c};
    jb_add(&b, "", 0);
    for (size_t i = 0; i < it->n; i++) {
      if (i) jb_add(&b, sep.s->p, sep.s->len);
      jv_write_str(&b, attr ? attr_path(c, at, it->v[i], *attr) : it->v[i]);
    }
    return jb_value(&b);
  }
  if (!strcmp(name, "map")) return do_map(c, at, v, a);
  if (!strcmp(name, "select")) return do_select(c, at, v, a, false, true);
  if (!strcmp(name, "reject")) return do_select(c, at, v, a, false, false);
  if (!strcmp(name, "selectattr")) return do_select(c, at, v, a, true, true);
  if (!strcmp(name, "rejectattr")) return do_select(c, at, v, a, true, false);
  if (!strcmp(name, "unique")) {
    bool cs = jv_truthy(jarg_or(a, 0, "case_sensitive", jv_bool(false)));
    const jv *attr = jarg(a, 1, "attribute");
    jlist *it = jinja_iter(c, at, v);
    jv r = jv_list(c, 0), seen = jv_list(c, 0);
    r.l->gen = true;
    for (size_t i = 0; i < it->n; i++) {
      jv k = fold(c, attr ? attr_path(c, at, it->v[i], *attr) : it->v[i], cs);
      bool dup = false;
      for (size_t j = 0; j < seen.l->n && !dup; j++) dup = jv_eq(seen.l->v[j], k);
      if (!dup) jl_push(c, seen.l, k), jl_push(c, r.l, it->v[i]);
    }
    return r;
  }
  if (!strcmp(name, "sort") || !strcmp(name, "dictsort")) {
    bool dict = name[0] == 'd';
    bool reverse = jv_truthy(jarg_or(a, dict ? 2 : 0, "reverse", jv_bool(false)));
    bool cs = jv_truthy(jarg_or(a, dict ? 0 : 1, "case_sensitive", jv_bool(false)));
    jlist *it;
    if (dict) {
      if (v.t != JV_DICT) jfail(c, at, SS_ERR_INVALID, "dictsort: you can only sort by either a dict");
      it = jinja_filter_apply(c, at, "items", v, &(jargs){0}).l;
    } else {
      it = jinja_iter(c, at, v);
    }
    const jv *attr = dict ? NULL : jarg(a, 2, "attribute");
    jv by = dict ? jarg_or(a, 1, "by", jv_str(c, "key")) : jv_none();
    jv *keys = ja_alloc(&c->arena, (it->n + 1) * sizeof *keys);
    for (size_t i = 0; i < it->n; i++) {
      jv x = it->v[i];
      if (dict) x = x.l->v[by.t == JV_STR && !strcmp(by.s->p, "value") ? 1 : 0];
      else if (attr) x = attr_path(c, at, x, *attr);
      keys[i] = fold(c, x, cs);
    }
    size_t *order = sorted_order(c, at, keys, it->n, reverse);
    jv r = jv_list(c, it->n);
    for (size_t i = 0; i < it->n; i++) jl_push(c, r.l, it->v[order[i]]);
    return r;
  }
  if (!strcmp(name, "min")) return min_max(c, at, v, a, false);
  if (!strcmp(name, "max")) return min_max(c, at, v, a, true);
  if (!strcmp(name, "sum")) {
    const jv *attr = jarg(a, 0, "attribute");
    jv acc = jarg_or(a, 1, "start", jv_int(0));
    jlist *it = jinja_iter(c, at, v);
    for (size_t i = 0; i < it->n; i++) {
      jv x = attr ? attr_path(c, at, it->v[i], *attr) : it->v[i];
      if ((acc.t == JV_INT || acc.t == JV_BOOL) && (x.t == JV_INT || x.t == JV_BOOL)) {
        int64_t r;
        if (__builtin_add_overflow(acc.t == JV_INT ? acc.i : acc.b, x.t == JV_INT ? x.i : x.b, &r))
          jfail(c, at, SS_ERR_RANGE, "integer overflow in sum");
        acc = jv_int(r);
      } else if ((acc.t == JV_INT || acc.t == JV_FLOAT || acc.t == JV_BOOL) &&
                 (x.t == JV_INT || x.t == JV_FLOAT || x.t == JV_BOOL)) {
        double fa = acc.t == JV_FLOAT ? acc.f : acc.t == JV_INT ? (double)acc.i : acc.b;
        double fx = x.t == JV_FLOAT ? x.f : x.t == JV_INT ? (double)x.i : x.b;
        acc = jv_float(fa + fx);
      } else {
        jfail(c, at, SS_ERR_INVALID, "sum: unsupported operand types '%s' and '%s'", jv_type_name(acc), jv_type_name(x));
      }
    }
    return acc;
  }
  if (!strcmp(name, "abs")) {
    if (v.t == JV_INT) return v.i == INT64_MIN ? (jfail(c, at, SS_ERR_RANGE, "integer overflow"), v) : jv_int(v.i < 0 ? -v.i : v.i);
    if (v.t == JV_BOOL) return jv_int(v.b);
    if (v.t == JV_FLOAT) return jv_float(fabs(v.f));
    jfail(c, at, SS_ERR_INVALID, "bad operand type for abs(): '%s'", jv_type_name(v));
  }
  if (!strcmp(name, "round")) {
    int64_t prec = as_int(c, at, jarg_or(a, 0, "precision", jv_int(0)), "round precision");
    jv method = jarg_or(a, 1, "method", jv_str(c, "common"));
    double x = v.t == JV_FLOAT ? v.f : v.t == JV_INT ? (double)v.i : v.t == JV_BOOL ? v.b
             : (jfail(c, at, SS_ERR_INVALID, "round: not a number: %s", jv_type_name(v)), 0);
    if (prec < -20 || prec > 20) jfail(c, at, SS_ERR_RANGE, "round precision outside -20..20");
    double m = pow(10, (double)prec);
    const char *md = method.t == JV_STR ? method.s->p : "";
    if (!strcmp(md, "common")) return jv_float(round(x * m) / m);
    if (!strcmp(md, "floor")) return jv_float(floor(x * m) / m);
    if (!strcmp(md, "ceil")) return jv_float(ceil(x * m) / m);
    jfail(c, at, SS_ERR_INVALID, "round: method must be common, ceil or floor");
  }
  if (!strcmp(name, "int")) return to_number(c, at, v, true, jarg_or(a, 0, "default", jv_int(0)));
  if (!strcmp(name, "float")) return to_number(c, at, v, false, jarg_or(a, 0, "default", jv_float(0.0)));
  /* string filters: str(v) first */
  jv s = jv_to_str(c, v);
  if (!strcmp(name, "trim")) return jinja_strip(c, s, jarg_or(a, 0, "chars", jv_none()), true, true);
  if (!strcmp(name, "upper")) return map_case(c, s, upper_c);
  if (!strcmp(name, "lower")) return map_case(c, s, lower_c);
  if (!strcmp(name, "title")) return do_title(c, s);
  if (!strcmp(name, "capitalize")) {
    jv r = map_case(c, s, lower_c);
    if (r.s->len) r.s->p[0] = upper_c(r.s->p[0]);
    return r;
  }
  if (!strcmp(name, "replace")) {
    jv old = jv_to_str(c, jarg_or(a, 0, "old", jv_str(c, "")));
    jv new_ = jv_to_str(c, jarg_or(a, 1, "new", jv_str(c, "")));
    jv cnt = jarg_or(a, 2, "count", jv_none());
    return do_replace(c, s, old, new_, cnt.t == JV_NONE ? -1 : as_int(c, at, cnt, "replace count"));
  }
  if (!strcmp(name, "indent")) return do_indent(c, at, s, a);
  if (!strcmp(name, "escape") || !strcmp(name, "e")) return v.t == JV_STR && v.safe ? v : jinja_html_escape(c, s);
  if (!strcmp(name, "wordcount")) {
    int64_t k = 0;
    bool in = false;
    for (size_t i = 0; i < s.s->len; i++) {
      unsigned char ch = (unsigned char)s.s->p[i];
      bool w = (ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || ch == '_' || ch >= 0x80;
      if (w && !in) k++;
      in = w;
    }
    return jv_int(k);
  }
  jfail(c, at, SS_ERR_UNSUPPORTED, "unsupported construct: filter '%s'", name);
}

jv jinja_html_escape(jctx *c, jv s) {
  {
    jbuf b = {.c = c};
    jb_add(&b, "", 0);
    for (size_t i = 0; i < s.s->len; i++) {
      char ch = s.s->p[i];
      if (ch == '&') jb_adds(&b, "&amp;");
      else if (ch == '<') jb_adds(&b, "&lt;");
      else if (ch == '>') jb_adds(&b, "&gt;");
      else if (ch == '"') jb_adds(&b, "&#34;");
      else if (ch == '\'') jb_adds(&b, "&#39;");
      else jb_add(&b, &ch, 1);
    }
    jv r = jb_value(&b);
    r.safe = true;
    return r;
  }
}

bool jinja_test_apply(jctx *c, const jnode *at, const char *name, jv v, const jargs *a) {
  if (!jinja_test_known(name)) jfail(c, at, SS_ERR_UNSUPPORTED, "unsupported construct: test '%s'", name);
  const jv *arg = jarg(a, 0, NULL);
  if (!strcmp(name, "defined")) return v.t != JV_UNDEF;
  if (!strcmp(name, "undefined")) return v.t == JV_UNDEF;
  if (!strcmp(name, "none")) return v.t == JV_NONE;
  if (!strcmp(name, "string")) return v.t == JV_STR;
  if (!strcmp(name, "mapping")) return v.t == JV_DICT && !v.d->ns;
  if (!strcmp(name, "iterable")) return v.t == JV_STR || v.t == JV_LIST || (v.t == JV_DICT && !v.d->ns) || v.t == JV_UNDEF;
  if (!strcmp(name, "sequence")) return v.t == JV_STR || v.t == JV_LIST || (v.t == JV_DICT && !v.d->ns) || v.t == JV_UNDEF;
  if (!strcmp(name, "number")) return v.t == JV_INT || v.t == JV_FLOAT || v.t == JV_BOOL;
  if (!strcmp(name, "integer")) return v.t == JV_INT;
  if (!strcmp(name, "float")) return v.t == JV_FLOAT;
  if (!strcmp(name, "boolean")) return v.t == JV_BOOL;
  if (!strcmp(name, "true")) return v.t == JV_BOOL && v.b;
  if (!strcmp(name, "false")) return v.t == JV_BOOL && !v.b;
  if (!strcmp(name, "callable")) return v.t == JV_FUNC;
  if (!strcmp(name, "escaped")) return false;
  if (!strcmp(name, "lower") || !strcmp(name, "upper")) {
    if (v.t != JV_STR) jfail(c, at, SS_ERR_INVALID, "test '%s' needs a string", name);
    bool cased = false;
    for (size_t i = 0; i < v.s->len; i++) {
      char ch = v.s->p[i];
      if (name[0] == 'l' ? (ch >= 'A' && ch <= 'Z') : (ch >= 'a' && ch <= 'z')) return false;
      if ((ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z')) cased = true;
    }
    return cased;
  }
  if (!strcmp(name, "odd") || !strcmp(name, "even") || !strcmp(name, "divisibleby")) {
    int64_t x = as_int(c, at, v, "the tested value");
    if (name[0] == 'o') return x % 2 != 0;
    if (name[0] == 'e') return x % 2 == 0;
    if (!arg) jfail(c, at, SS_ERR_INVALID, "divisibleby needs a number");
    int64_t d = as_int(c, at, *arg, "divisibleby's argument");
    if (d == 0) jfail(c, at, SS_ERR_INVALID, "integer division or modulo by zero");
    return d == -1 || x % d == 0;
  }
  if (!arg) jfail(c, at, SS_ERR_INVALID, "test '%s' needs an argument", name);
  if (!strcmp(name, "equalto") || !strcmp(name, "eq") || !strcmp(name, "==")) return jv_eq(v, *arg);
  if (!strcmp(name, "ne") || !strcmp(name, "!=")) return !jv_eq(v, *arg);
  if (!strcmp(name, "sameas")) {
    if (v.t != arg->t) return false;
    if (v.t == JV_NONE || v.t == JV_UNDEF) return true;
    if (v.t == JV_BOOL) return v.b == arg->b;
    if (v.t == JV_LIST) return v.l == arg->l;
    if (v.t == JV_DICT) return v.d == arg->d;
    return jv_eq(v, *arg) && (v.t == JV_INT ? v.i >= -5 && v.i <= 256 : false);
  }
  if (!strcmp(name, "in")) {
    if (arg->t == JV_STR && v.t == JV_STR) {
      if (!v.s->len) return true;
      for (size_t i = 0; i + v.s->len <= arg->s->len; i++)
        if (!memcmp(arg->s->p + i, v.s->p, v.s->len)) return true;
      return false;
    }
    if (arg->t == JV_LIST) {
      for (size_t i = 0; i < arg->l->n; i++)
        if (jv_eq(arg->l->v[i], v)) return true;
      return false;
    }
    if (arg->t == JV_DICT) return jd_get(arg->d, v) != NULL;
    jfail(c, at, SS_ERR_INVALID, "test 'in': argument of type '%s' is not a container", jv_type_name(*arg));
  }
  int k = jv_cmp(c, at, v, *arg);
  if (!strcmp(name, "lt") || !strcmp(name, "<") || !strcmp(name, "lessthan")) return k < 0;
  if (!strcmp(name, "le") || !strcmp(name, "<=")) return k <= 0;
  if (!strcmp(name, "gt") || !strcmp(name, ">") || !strcmp(name, "greaterthan")) return k > 0;
  if (!strcmp(name, "ge") || !strcmp(name, ">=")) return k >= 0;
  jfail(c, at, SS_ERR_UNSUPPORTED, "unsupported construct: test '%s'", name);
}
