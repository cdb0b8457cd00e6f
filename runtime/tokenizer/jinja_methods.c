/* Attribute and item lookup as jinja2's sandboxed environment does it (an
 * attribute first for ".", an item first for "[]", Undefined when neither
 * exists), the Python methods of str, dict and list that templates call
 * (the mutating ones are refused, as ImmutableSandboxedEnvironment refuses
 * them), iteration, and the global functions. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "runtime/base/status.h"
#include "runtime/tokenizer/jinja_internal.h"

jv jinja_strip(jctx *c, jv s, jv chars, bool left, bool right);
jv jinja_replace(jctx *c, jv s, jv old, jv new_, int64_t count);

static _Noreturn void undefined_fail(jctx *c, const jnode *at, jv u) {
  jfail(c, at, SS_ERR_INVALID, "'%s' is undefined", u.undef_name ? u.undef_name : "value");
}

jlist *jinja_iter(jctx *c, const jnode *at, jv v) {
  switch (v.t) {
  case JV_LIST: return v.l;
  case JV_UNDEF: return jv_list(c, 0).l;
  case JV_DICT: {
    if (v.d->ns) break;
    jv r = jv_list(c, v.d->n);
    for (size_t i = 0; i < v.d->n; i++) jl_push(c, r.l, v.d->k[i]);
    return r.l;
  }
  case JV_STR: {
    jv r = jv_list(c, v.s->len);
    for (size_t i = 0; i < v.s->len;) {
      size_t j = i + 1;
      while (j < v.s->len && ((unsigned char)v.s->p[j] & 0xC0) == 0x80) j++;
      jl_push(c, r.l, jv_strn(c, v.s->p + i, j - i));
      i = j;
    }
    return r.l;
  }
  default: break;
  }
  jfail(c, at, SS_ERR_INVALID, "'%s' object is not iterable", jv_type_name(v));
}

/* ---- methods ---- */
static jv arg_str(jctx *c, const jnode *at, const jargs *a, size_t i, const char *name, const char *m) {
  const jv *v = jarg(a, i, name);
  if (!v || v->t != JV_STR) jfail(c, at, SS_ERR_INVALID, "%s() needs a string argument", m);
  return *v;
}

static bool prefix_at(jv s, jv p, bool end) {
  if (p.s->len > s.s->len) return false;
  return !memcmp(s.s->p + (end ? s.s->len - p.s->len : 0), p.s->p, p.s->len);
}

static jv str_split(jctx *c, const jnode *at, jv s, const jargs *a, bool from_right) {
  jv sep = jarg_or(a, 0, "sep", jv_none());
  int64_t maxsplit = -1;
  const jv *ms = jarg(a, 1, "maxsplit");
  if (ms && ms->t == JV_INT) maxsplit = ms->i;
  jv r = jv_list(c, 0);
  const char *p = s.s->p;
  size_t n = s.s->len;
  if (sep.t == JV_NONE) {
    if (from_right && maxsplit >= 0)
      jfail(c, at, SS_ERR_UNSUPPORTED, "unsupported construct: rsplit() with maxsplit and no separator");
    size_t i = 0;
    int64_t done = 0;
    for (;;) {
      while (i < n && (p[i] == ' ' || (p[i] >= 9 && p[i] <= 13) || (p[i] >= 0x1c && p[i] <= 0x1f))) i++;
      if (i >= n) break;
      if (maxsplit >= 0 && done == maxsplit) {
        size_t e = n;
        while (e > i && (p[e - 1] == ' ' || (p[e - 1] >= 9 && p[e - 1] <= 13))) e--;
        jl_push(c, r.l, jv_strn(c, p + i, e - i));
        break;
      }
      size_t j = i;
      while (j < n && !(p[j] == ' ' || (p[j] >= 9 && p[j] <= 13) || (p[j] >= 0x1c && p[j] <= 0x1f))) j++;
      jl_push(c, r.l, jv_strn(c, p + i, j - i));
      done++;
      i = j;
    }
    return r;
  }
  if (sep.t != JV_STR) jfail(c, at, SS_ERR_INVALID, "split() separator must be a string or None");
  size_t k = sep.s->len;
  if (!k) jfail(c, at, SS_ERR_INVALID, "empty separator");
  if (!from_right) {
    size_t st = 0;
    int64_t done = 0;
    for (size_t i = 0; i + k <= n;) {
      if ((maxsplit < 0 || done < maxsplit) && !memcmp(p + i, sep.s->p, k)) {
        jl_push(c, r.l, jv_strn(c, p + st, i - st));
        i += k;
        st = i;
        done++;
      } else {
        i++;
      }
    }
    jl_push(c, r.l, jv_strn(c, p + st, n - st));
    return r;
  }
  /* rsplit: collect from the right, then reverse */
  jv tmp = jv_list(c, 0);
  size_t en = n;
  int64_t done = 0;
  for (size_t i = n; i >= k;) {
    if ((maxsplit < 0 || done < maxsplit) && !memcmp(p + i - k, sep.s->p, k)) {
      jl_push(c, tmp.l, jv_strn(c, p + i, en - i));
      i -= k;
      en = i;
      done++;
    } else {
      i--;
    }
  }
  jl_push(c, tmp.l, jv_strn(c, p, en));
  for (size_t i = tmp.l->n; i-- > 0;) jl_push(c, r.l, tmp.l->v[i]);
  return r;
}

static jv str_format(jctx *c, const jnode *at, jv s, const jargs *a) {
  jbuf b = {.c = c};
  jb_add(&b, "", 0);
  size_t auto_i = 0;
  const char *p = s.s->p;
  size_t n = s.s->len;
  for (size_t i = 0; i < n; i++) {
    if (p[i] == '{' && i + 1 < n && p[i + 1] == '{') { jb_add(&b, "{", 1); i++; continue; }
    if (p[i] == '}' && i + 1 < n && p[i + 1] == '}') { jb_add(&b, "}", 1); i++; continue; }
    if (p[i] == '}') jfail(c, at, SS_ERR_INVALID, "format(): single '}' encountered");
    if (p[i] != '{') { jb_add(&b, p + i, 1); continue; }
    size_t j = i + 1;
    while (j < n && p[j] != '}') j++;
    if (j >= n) jfail(c, at, SS_ERR_INVALID, "format(): single '{' encountered");
    const char *f = p + i + 1;
    size_t fl = j - i - 1;
    if (memchr(f, ':', fl) || memchr(f, '!', fl) || memchr(f, '.', fl) || memchr(f, '[', fl))
      jfail(c, at, SS_ERR_UNSUPPORTED, "unsupported construct: format() field '{%.*s}'", (int)fl, f);
    const jv *v;
    if (!fl) v = jarg(a, auto_i++, NULL);
    else if (f[0] >= '0' && f[0] <= '9') v = jarg(a, (size_t)strtoul(f, NULL, 10), NULL);
    else {
      char *nm = ja_strndup(&c->arena, f, fl);
      v = jarg(a, SIZE_MAX, nm);
    }
    if (!v) jfail(c, at, SS_ERR_INVALID, "format(): no argument for '{%.*s}'", (int)fl, f);
    jv_write_str(&b, *v);
    i = j;
  }
  return jb_value(&b);
}

static bool cased_upper(char ch) { return ch >= 'A' && ch <= 'Z'; }
static bool cased_lower(char ch) { return ch >= 'a' && ch <= 'z'; }

static jv bound(jctx *c, jv self, const char *name) {
  jfunc *f = ja_alloc(&c->arena, sizeof *f);
  f->name = name;
  f->method = name;
  f->self = self;
  return (jv){.t = JV_FUNC, .fn = f};
}

static const char *const k_str_methods[] = {
    "startswith", "endswith", "strip", "lstrip", "rstrip", "split", "rsplit", "upper", "lower",
    "replace", "title", "capitalize", "format", "find", "rfind", "count", "join", "splitlines",
    "isdigit", "isspace", "isalpha", "isalnum", "islower", "isupper", "index", NULL};
static const char *const k_dict_methods[] = {"get", "items", "keys", "values", "copy", NULL};
static const char *const k_mutating[] = {"append", "pop", "extend", "insert", "remove", "sort",
                                         "reverse", "clear", "update", "setdefault", "popitem",
                                         "add", "discard", NULL};

static bool listed(const char *const *t, const char *n) {
  for (size_t i = 0; t[i]; i++)
    if (!strcmp(t[i], n)) return true;
  return false;
}

/* A method name as a static string (the tables above), or NULL. */
static const char *method_name(jv obj, const char *name) {
  const char *const *tables[3] = {obj.t == JV_STR ? k_str_methods : NULL,
                                  obj.t == JV_DICT && !obj.d->ns ? k_dict_methods : NULL,
                                  obj.t == JV_DICT || obj.t == JV_LIST ? k_mutating : NULL};
  for (int t = 0; t < 3; t++)
    if (tables[t])
      for (size_t i = 0; tables[t][i]; i++)
        if (!strcmp(tables[t][i], name)) return tables[t][i];
  if (obj.t == JV_LIST && (!strcmp(name, "index") || !strcmp(name, "count") || !strcmp(name, "copy")))
    return !strcmp(name, "index") ? "index" : !strcmp(name, "count") ? "count" : "copy";
  return NULL;
}

jv jinja_call_method(jctx *c, const jnode *at, jv self, const char *m, const jargs *a) {
  if (listed(k_mutating, m))
    jfail(c, at, SS_ERR_INVALID, "access to attribute '%s' of '%s' object is unsafe (the sandbox "
          "is immutable)", m, jv_type_name(self));
  if (self.t == JV_DICT) {
    if (!strcmp(m, "get")) {
      const jv *k = jarg(a, 0, NULL);
      if (!k) jfail(c, at, SS_ERR_INVALID, "get expected at least 1 argument, got 0");
      jv *v = jd_get(self.d, *k);
      return v ? *v : jarg_or(a, 1, NULL, jv_none());
    }
    if (!strcmp(m, "copy")) {
      jv r = jv_dict(c, self.d->n);
      for (size_t i = 0; i < self.d->n; i++) jd_set(c, r.d, self.d->k[i], self.d->v[i]);
      return r;
    }
    jv r = jv_list(c, self.d->n);
    for (size_t i = 0; i < self.d->n; i++) {
      if (!strcmp(m, "keys")) jl_push(c, r.l, self.d->k[i]);
      else if (!strcmp(m, "values")) jl_push(c, r.l, self.d->v[i]);
      else {
        jv t = jv_list(c, 2);
        t.l->tuple = true;
        jl_push(c, t.l, self.d->k[i]);
        jl_push(c, t.l, self.d->v[i]);
        jl_push(c, r.l, t);
      }
    }
    return r;
  }
  if (self.t == JV_LIST) {
    if (!strcmp(m, "copy")) {
      jv r = jv_list(c, self.l->n);
      for (size_t i = 0; i < self.l->n; i++) jl_push(c, r.l, self.l->v[i]);
      return r;
    }
    const jv *x = jarg(a, 0, NULL);
    if (!x) jfail(c, at, SS_ERR_INVALID, "%s() takes an argument", m);
    int64_t k = 0;
    for (size_t i = 0; i < self.l->n; i++)
      if (jv_eq(self.l->v[i], *x)) {
        if (!strcmp(m, "index")) return jv_int((int64_t)i);
        k++;
      }
    if (!strcmp(m, "index")) jfail(c, at, SS_ERR_INVALID, "list.index(x): x not in list");
    return jv_int(k);
  }
  /* str */
  jv s = self;
  if (!strcmp(m, "startswith") || !strcmp(m, "endswith")) {
    const jv *p = jarg(a, 0, NULL);
    bool end = m[0] == 'e';
    if (p && p->t == JV_STR) return jv_bool(prefix_at(s, *p, end));
    if (p && p->t == JV_LIST && p->l->tuple) {
      for (size_t i = 0; i < p->l->n; i++)
        if (p->l->v[i].t == JV_STR && prefix_at(s, p->l->v[i], end)) return jv_bool(true);
      return jv_bool(false);
    }
    jfail(c, at, SS_ERR_INVALID, "%s first arg must be str or a tuple of str", m);
  }
  if (!strcmp(m, "strip") || !strcmp(m, "lstrip") || !strcmp(m, "rstrip")) {
    jv chars = jarg_or(a, 0, "chars", jv_none());
    if (chars.t != JV_NONE && chars.t != JV_STR) jfail(c, at, SS_ERR_INVALID, "%s arg must be None or str", m);
    return jinja_strip(c, s, chars, m[0] != 'r', m[0] != 'l');
  }
  if (!strcmp(m, "split")) return str_split(c, at, s, a, false);
  if (!strcmp(m, "rsplit")) return str_split(c, at, s, a, true);
  if (!strcmp(m, "upper") || !strcmp(m, "lower")) {
    jv r = jv_strn(c, s.s->p, s.s->len);
    for (size_t i = 0; i < r.s->len; i++) {
      char ch = r.s->p[i];
      if (m[0] == 'u' && cased_lower(ch)) r.s->p[i] = (char)(ch - 32);
      if (m[0] == 'l' && cased_upper(ch)) r.s->p[i] = (char)(ch + 32);
    }
    return r;
  }
  if (!strcmp(m, "title") || !strcmp(m, "capitalize")) {
    jv r = jv_strn(c, s.s->p, s.s->len);
    bool prev_cased = false;
    for (size_t i = 0; i < r.s->len; i++) {
      char ch = r.s->p[i];
      bool up = m[0] == 't' ? !prev_cased : i == 0;
      if (up && cased_lower(ch)) r.s->p[i] = (char)(ch - 32);
      if (!up && cased_upper(ch)) r.s->p[i] = (char)(ch + 32);
      prev_cased = cased_upper(ch) || cased_lower(ch);
    }
    return r;
  }
  if (!strcmp(m, "replace")) {
    jv o = arg_str(c, at, a, 0, NULL, m), nw = arg_str(c, at, a, 1, NULL, m);
    const jv *cnt = jarg(a, 2, "count");
    return jinja_replace(c, s, o, nw, cnt && cnt->t == JV_INT ? cnt->i : -1);
  }
  if (!strcmp(m, "format")) return str_format(c, at, s, a);
  if (!strcmp(m, "find") || !strcmp(m, "rfind") || !strcmp(m, "count") || !strcmp(m, "index")) {
    jv sub = arg_str(c, at, a, 0, NULL, m);
    if (jarg(a, 1, NULL)) jfail(c, at, SS_ERR_UNSUPPORTED, "unsupported construct: %s() with start/end", m);
    int64_t found = -1, k = 0;
    for (size_t i = 0; i + sub.s->len <= s.s->len;) {
      if (!memcmp(s.s->p + i, sub.s->p, sub.s->len)) {
        if (found < 0 || m[0] == 'r') found = (int64_t)utf8_count(s.s->p, i);
        k++;
        i += sub.s->len ? sub.s->len : 1;
        if (m[0] != 'r' && m[0] != 'c') break;
      } else {
        i++;
      }
    }
    if (m[0] == 'c') return jv_int(sub.s->len ? k : (int64_t)utf8_count(s.s->p, s.s->len) + 1);
    if (m[0] == 'i' && found < 0) jfail(c, at, SS_ERR_INVALID, "substring not found");
    return jv_int(found);
  }
  if (!strcmp(m, "join")) {
    const jv *it = jarg(a, 0, NULL);
    if (!it) jfail(c, at, SS_ERR_INVALID, "join() takes exactly one argument");
    jlist *l = jinja_iter(c, at, *it);
    jbuf b = {.c = c};
    jb_add(&b, "", 0);
    for (size_t i = 0; i < l->n; i++) {
      if (l->v[i].t != JV_STR) jfail(c, at, SS_ERR_INVALID, "sequence item %zu: expected str instance", i);
      if (i) jb_add(&b, s.s->p, s.s->len);
      jb_add(&b, l->v[i].s->p, l->v[i].s->len);
    }
    return jb_value(&b);
  }
  if (!strcmp(m, "splitlines")) {
    jv r = jv_list(c, 0);
    size_t st = 0;
    for (size_t i = 0; i < s.s->len; i++) {
      char ch = s.s->p[i];
      if (ch == '\n' || ch == '\r' || ch == '\v' || ch == '\f' || (ch >= 0x1c && ch <= 0x1e)) {
        jl_push(c, r.l, jv_strn(c, s.s->p + st, i - st));
        if (ch == '\r' && i + 1 < s.s->len && s.s->p[i + 1] == '\n') i++;
        st = i + 1;
      }
    }
    if (st < s.s->len) jl_push(c, r.l, jv_strn(c, s.s->p + st, s.s->len - st));
    return r;
  }
  /* is*() over ASCII; a non-ASCII character makes the answer unknown to us */
  bool any = s.s->len > 0, all = true, has_cased = false;
  for (size_t i = 0; i < s.s->len; i++) {
    unsigned char ch = (unsigned char)s.s->p[i];
    if (ch >= 0x80) jfail(c, at, SS_ERR_UNSUPPORTED, "unsupported construct: str.%s() on non-ASCII text", m);
    bool ok = !strcmp(m, "isdigit") ? (ch >= '0' && ch <= '9')
            : !strcmp(m, "isspace") ? (ch == ' ' || (ch >= 9 && ch <= 13) || (ch >= 0x1c && ch <= 0x1f))
            : !strcmp(m, "isalpha") ? (cased_lower((char)ch) || cased_upper((char)ch))
            : !strcmp(m, "isalnum") ? (cased_lower((char)ch) || cased_upper((char)ch) || (ch >= '0' && ch <= '9'))
            : !strcmp(m, "islower") ? !cased_upper((char)ch) : !cased_lower((char)ch);
    if (cased_lower((char)ch) || cased_upper((char)ch)) has_cased = true;
    all = all && ok;
  }
  if (!strcmp(m, "islower") || !strcmp(m, "isupper")) return jv_bool(all && has_cased);
  return jv_bool(any && all);
}

jv jinja_getattr(jctx *c, const jnode *at, jv obj, const char *name) {
  if (obj.t == JV_UNDEF) undefined_fail(c, at, obj);
  const char *m = method_name(obj, name);
  if (m) return bound(c, obj, m);
  if (obj.t == JV_DICT) {
    jv *v = jd_gets(obj.d, name);
    if (v) return *v;
  }
  return jv_undef(name);
}

jv jinja_getitem(jctx *c, const jnode *at, jv obj, jv key) {
  if (obj.t == JV_UNDEF) undefined_fail(c, at, obj);
  if (obj.t == JV_LIST && obj.l->gen) jfail(c, at, SS_ERR_INVALID, "'generator' object is not subscriptable");
  if (obj.t == JV_DICT && !obj.d->ns) {
    jv *v = jd_get(obj.d, key);
    if (v) return *v;
  } else if ((obj.t == JV_LIST || obj.t == JV_STR) && (key.t == JV_INT || key.t == JV_BOOL)) {
    int64_t i = key.t == JV_INT ? key.i : key.b;
    if (obj.t == JV_LIST) {
      if (i < 0) i += (int64_t)obj.l->n;
      if (i >= 0 && (uint64_t)i < obj.l->n) return obj.l->v[i];
    } else {
      jlist *chars = jinja_iter(c, at, obj);
      if (i < 0) i += (int64_t)chars->n;
      if (i >= 0 && (uint64_t)i < chars->n) return chars->v[i];
    }
    return jv_undef("index out of range");
  }
  if (key.t == JV_STR) {
    const char *m = method_name(obj, key.s->p);
    if (m) return bound(c, obj, m);
    if (obj.t == JV_DICT && obj.d->ns) {
      jv *v = jd_get(obj.d, key);
      (void)v;
    }
    return jv_undef(ja_strndup(&c->arena, key.s->p, key.s->len));
  }
  return jv_undef(NULL);
}

/* ---- globals ---- */
static jv g_range(jctx *c, const jnode *at, jv self, const jargs *a) {
  (void)self;
  int64_t lo = 0, hi, st = 1;
  for (size_t i = 0; i < a->n; i++)
    if (a->pos[i].t != JV_INT && a->pos[i].t != JV_BOOL)
      jfail(c, at, SS_ERR_INVALID, "range() arguments must be integers, not %s", jv_type_name(a->pos[i]));
#define IV(k) (a->pos[k].t == JV_INT ? a->pos[k].i : a->pos[k].b)
  if (a->n == 1) hi = IV(0);
  else if (a->n == 2) lo = IV(0), hi = IV(1);
  else if (a->n == 3) lo = IV(0), hi = IV(1), st = IV(2);
  else jfail(c, at, SS_ERR_INVALID, "range expected 1 to 3 arguments, got %zu", a->n);
#undef IV
  if (st == 0) jfail(c, at, SS_ERR_INVALID, "range() arg 3 must not be zero");
  uint64_t count = st > 0 ? (hi > lo ? (uint64_t)((hi - lo - 1) / st) + 1 : 0)
                          : (lo > hi ? (uint64_t)((lo - hi - 1) / -st) + 1 : 0);
  /* jinja2's sandbox caps range() at 100000 items */
  if (count > 100000) jfail(c, at, SS_ERR_RANGE, "range too big (%llu items, the sandbox allows 100000)",
                            (unsigned long long)count);
  jv r = jv_list(c, count);
  for (uint64_t i = 0; i < count; i++) jl_push(c, r.l, jv_int(lo + (int64_t)i * st));
  return r;
}

static jv kw_dict(jctx *c, const jnode *at, const jargs *a, const char *fname) {
  jv r = jv_dict(c, a->nkw);
  if (a->n > 1) jfail(c, at, SS_ERR_INVALID, "%s() takes at most one positional argument", fname);
  if (a->n == 1) {
    jv src = a->pos[0];
    if (src.t != JV_DICT) jfail(c, at, SS_ERR_UNSUPPORTED, "unsupported construct: %s() from a %s", fname, jv_type_name(src));
    for (size_t i = 0; i < src.d->n; i++) jd_set(c, r.d, src.d->k[i], src.d->v[i]);
  }
  for (size_t i = 0; i < a->nkw; i++) jd_sets(c, r.d, a->kwname[i], a->kw[i]);
  return r;
}
static jv g_namespace(jctx *c, const jnode *at, jv self, const jargs *a) {
  (void)self;
  jv r = kw_dict(c, at, a, "namespace");
  r.d->ns = true;
  return r;
}
static jv g_dict(jctx *c, const jnode *at, jv self, const jargs *a) {
  (void)self;
  return kw_dict(c, at, a, "dict");
}
static jv g_raise(jctx *c, const jnode *at, jv self, const jargs *a) {
  (void)self;
  jv m = jv_to_str(c, jarg_or(a, 0, "message", jv_str(c, "")));
  jfail(c, at, SS_ERR_INVALID, "raise_exception: %s", m.s->p);
}
static jv g_strftime_now(jctx *c, const jnode *at, jv self, const jargs *a) {
  (void)self;
  jv f = jv_to_str(c, jarg_or(a, 0, "format", jv_str(c, "")));
  struct tm tm = {0};
  const char *fixed = getenv("SS_TEMPLATE_NOW");
  if (fixed && *fixed) {
    int y, mo, d, h = 0, mi = 0, s = 0;
    int k = sscanf(fixed, "%d-%d-%d %d:%d:%d", &y, &mo, &d, &h, &mi, &s);
    if (k != 3 && k != 6)
      jfail(c, at, SS_ERR_INVALID, "SS_TEMPLATE_NOW='%s' is not YYYY-MM-DD[ HH:MM:SS]", fixed);
    tm.tm_year = y - 1900, tm.tm_mon = mo - 1, tm.tm_mday = d;
    tm.tm_hour = h, tm.tm_min = mi, tm.tm_sec = s, tm.tm_isdst = -1;
    time_t t = mktime(&tm);
    localtime_r(&t, &tm);
  } else {
    time_t t = time(NULL);
    localtime_r(&t, &tm);
  }
  char buf[512];
  size_t n = f.s->len ? strftime(buf, sizeof buf, f.s->p, &tm) : 0;
  if (!n && f.s->len) jfail(c, at, SS_ERR_INVALID, "strftime_now: format too long or empty result");
  return jv_strn(c, buf, n);
}

jv jinja_global_fn(jctx *c, const char *name) {
  static const struct { const char *name; jbuiltin_fn fn; } k[] = {
      {"range", g_range}, {"namespace", g_namespace}, {"dict", g_dict},
      {"raise_exception", g_raise}, {"strftime_now", g_strftime_now}};
  for (size_t i = 0; i < sizeof k / sizeof k[0]; i++)
    if (!strcmp(name, k[i].name)) {
      jfunc *f = ja_alloc(&c->arena, sizeof *f);
      f->name = k[i].name;
      f->fn = k[i].fn;
      return (jv){.t = JV_FUNC, .fn = f};
    }
  return jv_undef(name);
}
