/* Values of the Jinja interpreter: an arena, constructors, Python's truth,
 * equality and ordering, str()/repr() and json.dumps() as Python writes them,
 * and conversion from jansson. */
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "runtime/base/status.h"
#include "runtime/tokenizer/jinja_internal.h"

/* ---- arena ---- */
struct jarena_chunk {
  jarena_chunk *next;
  size_t used, cap;
  _Alignas(16) unsigned char data[];
};

void *ja_alloc(jarena *a, size_t nbytes) {
  nbytes = (nbytes + 15) & ~(size_t)15;
  jarena_chunk *c = a->head;
  if (!c || c->cap - c->used < nbytes) {
    size_t cap = nbytes > 65536 ? nbytes : 65536;
    if (a->max_nbytes && a->used_nbytes + cap > a->max_nbytes) {
      if (a->oom) {
        if (a->oom_msg)
          snprintf(a->oom_msg, 256, "the render needs more than %zu bytes of memory (the limit)",
                   a->max_nbytes);
        longjmp(*a->oom, 1);
      }
    }
    c = malloc(sizeof *c + cap);
    if (!c) {
      if (a->oom) {
        if (a->oom_msg) snprintf(a->oom_msg, 256, "out of memory");
        longjmp(*a->oom, 1);
      }
      SS_ASSERT(!"out of memory in the template arena");
    }
    c->next = a->head;
    c->used = 0;
    c->cap = cap;
    a->head = c;
    a->used_nbytes += cap;
  }
  void *p = c->data + c->used;
  c->used += nbytes;
  memset(p, 0, nbytes);
  return p;
}

char *ja_strndup(jarena *a, const char *s, size_t n) {
  char *p = ja_alloc(a, n + 1);
  memcpy(p, s, n);
  return p;
}

void ja_free(jarena *a) {
  for (jarena_chunk *c = a->head, *nx; c; c = nx) {
    nx = c->next;
    free(c);
  }
  a->head = NULL;
  a->used_nbytes = 0;
}

/* ---- constructors ---- */
jv jv_undef(const char *name) { return (jv){.t = JV_UNDEF, .undef_name = name}; }
jv jv_none(void) { return (jv){.t = JV_NONE}; }
jv jv_bool(bool b) { return (jv){.t = JV_BOOL, .b = b}; }
jv jv_int(int64_t i) { return (jv){.t = JV_INT, .i = i}; }
jv jv_float(double f) { return (jv){.t = JV_FLOAT, .f = f}; }

jv jv_strn(jctx *c, const char *s, size_t n) {
  jstr *p = ja_alloc(&c->arena, sizeof *p + n + 1);
  p->len = n;
  if (n) memcpy(p->p, s, n);
  return (jv){.t = JV_STR, .s = p};
}
jv jv_str(jctx *c, const char *s) { return jv_strn(c, s, strlen(s)); }

jv jv_list(jctx *c, size_t cap) {
  jlist *l = ja_alloc(&c->arena, sizeof *l);
  if (cap) l->v = ja_alloc(&c->arena, cap * sizeof *l->v);
  l->cap = cap;
  return (jv){.t = JV_LIST, .l = l};
}
jv jv_dict(jctx *c, size_t cap) {
  jdict *d = ja_alloc(&c->arena, sizeof *d);
  if (cap) {
    d->k = ja_alloc(&c->arena, cap * sizeof *d->k);
    d->v = ja_alloc(&c->arena, cap * sizeof *d->v);
  }
  d->cap = cap;
  return (jv){.t = JV_DICT, .d = d};
}

void jl_push(jctx *c, jlist *l, jv v) {
  if (l->n == l->cap) {
    size_t cap = l->cap ? l->cap * 2 : 4;
    jv *nv = ja_alloc(&c->arena, cap * sizeof *nv);
    if (l->n) memcpy(nv, l->v, l->n * sizeof *nv);
    l->v = nv;
    l->cap = cap;
  }
  l->v[l->n++] = v;
}

jv *jd_get(jdict *d, jv key) {
  for (size_t i = 0; i < d->n; i++)
    if (jv_eq(d->k[i], key)) return &d->v[i];
  return NULL;
}
jv *jd_gets(jdict *d, const char *key) {
  size_t n = strlen(key);
  for (size_t i = 0; i < d->n; i++)
    if (d->k[i].t == JV_STR && d->k[i].s->len == n && memcmp(d->k[i].s->p, key, n) == 0)
      return &d->v[i];
  return NULL;
}
void jd_set(jctx *c, jdict *d, jv key, jv v) {
  jv *slot = jd_get(d, key);
  if (slot) {
    *slot = v;
    return;
  }
  if (d->n == d->cap) {
    size_t cap = d->cap ? d->cap * 2 : 4;
    jv *nk = ja_alloc(&c->arena, cap * sizeof *nk), *nv = ja_alloc(&c->arena, cap * sizeof *nv);
    if (d->n) memcpy(nk, d->k, d->n * sizeof *nk), memcpy(nv, d->v, d->n * sizeof *nv);
    d->k = nk, d->v = nv, d->cap = cap;
  }
  d->k[d->n] = key;
  d->v[d->n++] = v;
}
void jd_sets(jctx *c, jdict *d, const char *key, jv v) {
  jv *slot = jd_gets(d, key);
  if (slot) *slot = v;
  else jd_set(c, d, jv_str(c, key), v);
}

/* ---- truth, equality, order ---- */
bool jv_truthy(jv v) {
  switch (v.t) {
  case JV_UNDEF: case JV_NONE: return false;
  case JV_BOOL: return v.b;
  case JV_INT: return v.i != 0;
  case JV_FLOAT: return v.f != 0.0;
  case JV_STR: return v.s->len != 0;
  case JV_LIST: return v.l->gen || v.l->n != 0;
  case JV_DICT: return v.d->n != 0;
  case JV_FUNC: return true;
  }
  return false;
}

static bool is_num(jv v) { return v.t == JV_BOOL || v.t == JV_INT || v.t == JV_FLOAT; }
static double num_f(jv v) { return v.t == JV_FLOAT ? v.f : v.t == JV_INT ? (double)v.i : v.b; }
static int64_t num_i(jv v) { return v.t == JV_INT ? v.i : v.b; }

bool jv_eq(jv a, jv b) {
  if (is_num(a) && is_num(b)) {
    if (a.t != JV_FLOAT && b.t != JV_FLOAT) return num_i(a) == num_i(b);
    return num_f(a) == num_f(b);
  }
  if (a.t != b.t) return false;
  switch (a.t) {
  case JV_UNDEF: case JV_NONE: return true;
  case JV_STR: return a.s->len == b.s->len && memcmp(a.s->p, b.s->p, a.s->len) == 0;
  case JV_LIST:
    if (a.l->tuple != b.l->tuple || a.l->n != b.l->n) return false;
    for (size_t i = 0; i < a.l->n; i++)
      if (!jv_eq(a.l->v[i], b.l->v[i])) return false;
    return true;
  case JV_DICT:
    if (a.d == b.d) return true;
    if (a.d->n != b.d->n || a.d->ns || b.d->ns) return false;
    for (size_t i = 0; i < a.d->n; i++) {
      jv *o = jd_get(b.d, a.d->k[i]);
      if (!o || !jv_eq(a.d->v[i], *o)) return false;
    }
    return true;
  case JV_FUNC: return a.fn == b.fn;
  default: return false;
  }
}

const char *jv_type_name(jv v) {
  switch (v.t) {
  case JV_UNDEF: return "Undefined";
  case JV_NONE: return "NoneType";
  case JV_BOOL: return "bool";
  case JV_INT: return "int";
  case JV_FLOAT: return "float";
  case JV_STR: return "str";
  case JV_LIST: return v.l->tuple ? "tuple" : "list";
  case JV_DICT: return v.d->ns ? "Namespace" : "dict";
  case JV_FUNC: return "function";
  }
  return "?";
}

int jv_cmp(jctx *c, const jnode *at, jv a, jv b) {
  if (is_num(a) && is_num(b)) {
    if (a.t != JV_FLOAT && b.t != JV_FLOAT) return num_i(a) < num_i(b) ? -1 : num_i(a) > num_i(b);
    double x = num_f(a), y = num_f(b);
    return x < y ? -1 : x > y;
  }
  if (a.t == JV_STR && b.t == JV_STR) {
    size_t n = a.s->len < b.s->len ? a.s->len : b.s->len;
    int r = memcmp(a.s->p, b.s->p, n);
    if (r) return r < 0 ? -1 : 1;
    return a.s->len < b.s->len ? -1 : a.s->len > b.s->len;
  }
  if (a.t == JV_LIST && b.t == JV_LIST && a.l->tuple == b.l->tuple) {
    for (size_t i = 0; i < a.l->n && i < b.l->n; i++) {
      if (jv_eq(a.l->v[i], b.l->v[i])) continue;
      return jv_cmp(c, at, a.l->v[i], b.l->v[i]);
    }
    return a.l->n < b.l->n ? -1 : a.l->n > b.l->n;
  }
  jfail(c, at, SS_ERR_INVALID, "'<' not supported between instances of '%s' and '%s'",
        jv_type_name(a), jv_type_name(b));
}

/* ---- text ---- */
void jb_add(jbuf *b, const char *s, size_t n) {
  if (b->len + n + 1 > b->cap) {
    size_t cap = b->cap ? b->cap : 64;
    while (cap < b->len + n + 1) cap *= 2;
    char *p = ja_alloc(&b->c->arena, cap);
    if (b->len) memcpy(p, b->p, b->len);
    b->p = p;
    b->cap = cap;
  }
  if (n) memcpy(b->p + b->len, s, n);
  b->len += n;
  b->p[b->len] = 0;
}
void jb_adds(jbuf *b, const char *s) { jb_add(b, s, strlen(s)); }
jv jb_value(jbuf *b) { return jv_strn(b->c, b->p ? b->p : "", b->len); }

size_t utf8_count(const char *s, size_t n) {
  size_t k = 0;
  for (size_t i = 0; i < n; i++)
    if (((unsigned char)s[i] & 0xC0) != 0x80) k++;
  return k;
}

/* repr(float): the shortest digits that read back, laid out as Python does
 * (positional for exponents -4..15, else d.ddde+XX). */
void jv_write_float(jbuf *b, double f) {
  if (isnan(f)) return jb_adds(b, "nan");
  if (isinf(f)) return jb_adds(b, f < 0 ? "-inf" : "inf");
  char tmp[64];
  int prec;
  for (prec = 1; prec <= 17; prec++) {
    snprintf(tmp, sizeof tmp, "%.*e", prec - 1, f);
    if (strtod(tmp, NULL) == f) break;
  }
  /* tmp: [-]d[.ddd]e[+-]XX */
  char digits[32];
  size_t nd = 0;
  const char *p = tmp;
  bool neg = *p == '-';
  if (neg) p++;
  for (; *p && *p != 'e'; p++)
    if (*p != '.') digits[nd++] = *p;
  int exp = atoi(p + 1);
  while (nd > 1 && digits[nd - 1] == '0') nd--;
  char out[64];
  size_t o = 0;
  if (neg) out[o++] = '-';
  if (exp >= -5 + 1 && exp < 16) {
    if (exp < 0) {
      out[o++] = '0', out[o++] = '.';
      for (int i = 0; i < -exp - 1; i++) out[o++] = '0';
      for (size_t i = 0; i < nd; i++) out[o++] = digits[i];
    } else {
      for (int i = 0; i <= exp; i++) out[o++] = (size_t)i < nd ? digits[i] : '0';
      out[o++] = '.';
      if ((size_t)exp + 1 < nd)
        for (size_t i = (size_t)exp + 1; i < nd; i++) out[o++] = digits[i];
      else
        out[o++] = '0';
    }
    out[o] = 0;
  } else {
    out[o++] = digits[0];
    if (nd > 1) {
      out[o++] = '.';
      for (size_t i = 1; i < nd; i++) out[o++] = digits[i];
    }
    snprintf(out + o, sizeof out - o, "e%c%02d", exp < 0 ? '-' : '+', exp < 0 ? -exp : exp);
  }
  jb_adds(b, out);
}

static void write_int(jbuf *b, int64_t i) {
  char tmp[32];
  snprintf(tmp, sizeof tmp, "%" PRId64, i);
  jb_adds(b, tmp);
}

static void write_str_repr(jbuf *b, const jstr *s) {
  bool has_sq = memchr(s->p, '\'', s->len) != NULL, has_dq = memchr(s->p, '"', s->len) != NULL;
  char q = has_sq && !has_dq ? '"' : '\'';
  jb_add(b, &q, 1);
  for (size_t i = 0; i < s->len; i++) {
    unsigned char ch = (unsigned char)s->p[i];
    char tmp[8];
    if (ch == (unsigned char)q || ch == '\\') {
      tmp[0] = '\\', tmp[1] = (char)ch;
      jb_add(b, tmp, 2);
    } else if (ch == '\n') jb_adds(b, "\\n");
    else if (ch == '\r') jb_adds(b, "\\r");
    else if (ch == '\t') jb_adds(b, "\\t");
    else if (ch < 0x20 || ch == 0x7f) {
      snprintf(tmp, sizeof tmp, "\\x%02x", ch);
      jb_adds(b, tmp);
    } else jb_add(b, (const char *)&ch, 1);
  }
  jb_add(b, &q, 1);
}

void jv_write_repr(jbuf *b, jv v) {
  if (v.t == JV_LIST && v.l->gen)
    jfail(b->c, NULL, SS_ERR_UNSUPPORTED, "unsupported construct: printing a generator (add '| list')");
  switch (v.t) {
  case JV_STR: write_str_repr(b, v.s); return;
  case JV_LIST: {
    jb_adds(b, v.l->tuple ? "(" : "[");
    for (size_t i = 0; i < v.l->n; i++) {
      if (i) jb_adds(b, ", ");
      jv_write_repr(b, v.l->v[i]);
    }
    if (v.l->tuple && v.l->n == 1) jb_adds(b, ",");
    jb_adds(b, v.l->tuple ? ")" : "]");
    return;
  }
  case JV_DICT:
    if (v.d->ns) {
      jb_adds(b, "<Namespace ");
      for (size_t i = 0; i < v.d->n; i++) {
        if (i) jb_adds(b, ", ");
        jv_write_str(b, v.d->k[i]);
        jb_adds(b, "=");
        jv_write_repr(b, v.d->v[i]);
      }
      jb_adds(b, ">");
      return;
    }
    jb_adds(b, "{");
    for (size_t i = 0; i < v.d->n; i++) {
      if (i) jb_adds(b, ", ");
      jv_write_repr(b, v.d->k[i]);
      jb_adds(b, ": ");
      jv_write_repr(b, v.d->v[i]);
    }
    jb_adds(b, "}");
    return;
  default: jv_write_str(b, v); return;
  }
}

void jv_write_str(jbuf *b, jv v) {
  switch (v.t) {
  case JV_UNDEF: return;
  case JV_NONE: jb_adds(b, "None"); return;
  case JV_BOOL: jb_adds(b, v.b ? "True" : "False"); return;
  case JV_INT: write_int(b, v.i); return;
  case JV_FLOAT: jv_write_float(b, v.f); return;
  case JV_STR: jb_add(b, v.s->p, v.s->len); return;
  case JV_FUNC: jb_adds(b, "<function "); jb_adds(b, v.fn->name); jb_adds(b, ">"); return;
  default: jv_write_repr(b, v); return;
  }
}

jv jv_to_str(jctx *c, jv v) {
  if (v.t == JV_STR) return v;
  jbuf b = {.c = c};
  jv_write_str(&b, v);
  return jb_value(&b);
}

/* ---- json.dumps ---- */
static void json_str_out(jbuf *b, const jstr *s, bool ensure_ascii) {
  jb_adds(b, "\"");
  const unsigned char *p = (const unsigned char *)s->p;
  for (size_t i = 0; i < s->len; i++) {
    unsigned ch = p[i];
    char tmp[16];
    switch (ch) {
    case '"': jb_adds(b, "\\\""); continue;
    case '\\': jb_adds(b, "\\\\"); continue;
    case '\n': jb_adds(b, "\\n"); continue;
    case '\r': jb_adds(b, "\\r"); continue;
    case '\t': jb_adds(b, "\\t"); continue;
    case '\b': jb_adds(b, "\\b"); continue;
    case '\f': jb_adds(b, "\\f"); continue;
    default: break;
    }
    if (ch < 0x20) {
      snprintf(tmp, sizeof tmp, "\\u%04x", ch);
      jb_adds(b, tmp);
    } else if (ch < 0x80 || !ensure_ascii) {
      jb_add(b, (const char *)&p[i], 1);
    } else {
      /* decode one UTF-8 sequence (the input was validated as UTF-8) */
      uint32_t cp;
      int extra = ch >= 0xF0 ? 3 : ch >= 0xE0 ? 2 : 1;
      cp = ch & (0x3F >> extra);
      for (int k = 0; k < extra && i + 1 < s->len; k++) cp = cp << 6 | (p[++i] & 0x3F);
      if (cp >= 0x10000) {
        cp -= 0x10000;
        snprintf(tmp, sizeof tmp, "\\u%04x\\u%04x", 0xD800 + (cp >> 10), 0xDC00 + (cp & 0x3FF));
      } else {
        snprintf(tmp, sizeof tmp, "\\u%04x", cp);
      }
      jb_adds(b, tmp);
    }
  }
  jb_adds(b, "\"");
}

static void json_newline(jbuf *b, int indent, int level) {
  jb_adds(b, "\n");
  for (int i = 0; i < indent * level; i++) jb_adds(b, " ");
}

void jv_write_json(jctx *c, const jnode *at, jbuf *b, jv v, bool ensure_ascii, int indent,
                   const char *item_sep, const char *key_sep, bool sort_keys, int level) {
  if (level > c->lim->max_depth)
    jfail(c, at, SS_ERR_RANGE, "tojson: value nested deeper than %d", c->lim->max_depth);
  switch (v.t) {
  case JV_NONE: jb_adds(b, "null"); return;
  case JV_BOOL: jb_adds(b, v.b ? "true" : "false"); return;
  case JV_INT: write_int(b, v.i); return;
  case JV_FLOAT:
    if (isnan(v.f)) jb_adds(b, "NaN");
    else if (isinf(v.f)) jb_adds(b, v.f < 0 ? "-Infinity" : "Infinity");
    else jv_write_float(b, v.f);
    return;
  case JV_STR: json_str_out(b, v.s, ensure_ascii); return;
  case JV_LIST:
    if (v.l->gen) break;
    if (!v.l->n) return jb_adds(b, "[]");
    jb_adds(b, "[");
    for (size_t i = 0; i < v.l->n; i++) {
      if (i) jb_adds(b, item_sep);
      if (indent >= 0) json_newline(b, indent, level + 1);
      jv_write_json(c, at, b, v.l->v[i], ensure_ascii, indent, item_sep, key_sep, sort_keys, level + 1);
    }
    if (indent >= 0) json_newline(b, indent, level);
    jb_adds(b, "]");
    return;
  case JV_DICT: {
    if (v.d->ns) break;
    if (!v.d->n) return jb_adds(b, "{}");
    size_t n = v.d->n;
    size_t *order = ja_alloc(&c->arena, n * sizeof *order);
    for (size_t i = 0; i < n; i++) order[i] = i;
    if (sort_keys)
      for (size_t i = 1; i < n; i++)
        for (size_t j = i; j > 0 && jv_cmp(c, at, v.d->k[order[j - 1]], v.d->k[order[j]]) > 0; j--) {
          size_t t = order[j];
          order[j] = order[j - 1], order[j - 1] = t;
        }
    jb_adds(b, "{");
    for (size_t i = 0; i < n; i++) {
      jv k = v.d->k[order[i]];
      if (i) jb_adds(b, item_sep);
      if (indent >= 0) json_newline(b, indent, level + 1);
      if (k.t == JV_STR) json_str_out(b, k.s, ensure_ascii);
      else if (k.t == JV_INT || k.t == JV_FLOAT || k.t == JV_BOOL || k.t == JV_NONE) {
        jbuf kb = {.c = c};
        if (k.t == JV_BOOL) jb_adds(&kb, k.b ? "true" : "false");
        else if (k.t == JV_NONE) jb_adds(&kb, "null");
        else jv_write_str(&kb, k);
        jv ks = jb_value(&kb);
        json_str_out(b, ks.s, ensure_ascii);
      } else {
        jfail(c, at, SS_ERR_INVALID, "tojson: keys must be str, int, float, bool or None, not %s",
              jv_type_name(k));
      }
      jb_adds(b, key_sep);
      jv_write_json(c, at, b, v.d->v[order[i]], ensure_ascii, indent, item_sep, key_sep, sort_keys,
                    level + 1);
    }
    if (indent >= 0) json_newline(b, indent, level);
    jb_adds(b, "}");
    return;
  }
  default: break;
  }
  jfail(c, at, SS_ERR_INVALID, "tojson: Object of type %s is not JSON serializable",
        v.t == JV_LIST && v.l->gen ? "generator" : jv_type_name(v));
}

/* ---- from jansson ---- */
jv jv_from_json(jctx *c, const json_t *j) {
  if (++c->depth > c->lim->max_depth)
    jfail(c, NULL, SS_ERR_RANGE, "input JSON nested deeper than %d", c->lim->max_depth);
  jv r;
  switch (json_typeof(j)) {
  case JSON_NULL: r = jv_none(); break;
  case JSON_TRUE: r = jv_bool(true); break;
  case JSON_FALSE: r = jv_bool(false); break;
  case JSON_INTEGER: r = jv_int((int64_t)json_integer_value(j)); break;
  case JSON_REAL: r = jv_float(json_real_value(j)); break;
  case JSON_STRING: r = jv_strn(c, json_string_value(j), json_string_length(j)); break;
  case JSON_ARRAY: {
    size_t n = json_array_size(j);
    r = jv_list(c, n);
    for (size_t i = 0; i < n; i++) jl_push(c, r.l, jv_from_json(c, json_array_get(j, i)));
    break;
  }
  case JSON_OBJECT: {
    r = jv_dict(c, json_object_size(j));
    const char *k;
    json_t *v;
    /* keys of a JSON object are unique: append without the lookup */
    json_object_foreach((json_t *)j, k, v) {
      jv val = jv_from_json(c, v);
      if (r.d->n == r.d->cap) jd_set(c, r.d, jv_str(c, k), val);
      else r.d->k[r.d->n] = jv_str(c, k), r.d->v[r.d->n++] = val;
    }
    break;
  }
  default: r = jv_none(); break;
  }
  c->depth--;
  return r;
}
