/* The Jinja evaluator: expressions to values, statements to output, with
 * jinja2's scoping (a for loop's body gets a fresh scope each iteration, a
 * macro its own; if and set blocks none), and the render entry points. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/base/status.h"
#include "runtime/tokenizer/jinja_internal.h"

const ss_jinja_limits ss_jinja_default_limits = {
    .max_output_nbytes = 16u << 20,
    .max_memory_nbytes = 256u << 20,
    .max_depth = 256,
    .max_iterations = 1000000,
};

_Noreturn void jfail(jctx *c, const jnode *at, int code, const char *fmt, ...) {
  int k = at ? snprintf(c->err, sizeof c->err, "line %d, column %d: ", at->line, at->col) : 0;
  va_list ap;
  va_start(ap, fmt);
  if (k >= 0 && (size_t)k < sizeof c->err) vsnprintf(c->err + k, sizeof c->err - (size_t)k, fmt, ap);
  va_end(ap);
  c->err_code = code;
  longjmp(c->jb, 1);
}

/* ---- scopes ---- */
static jscope *scope_new(jctx *c, jscope *parent) {
  jscope *s = ja_alloc(&c->arena, sizeof *s);
  s->parent = parent;
  s->vars = jv_dict(c, 0).d;
  return s;
}

static jv lookup(jctx *c, jscope *s, const char *name) {
  for (; s; s = s->parent) {
    jv *v = jd_gets(s->vars, name);
    if (v) return *v;
  }
  jv g = jinja_global_fn(c, name);
  if (g.t != JV_UNDEF) return g;
  return jv_undef(name);
}

/* ---- output ---- */
typedef struct sink { jbuf b; } sink;

static void emit(jctx *c, jbuf *out, const char *s, size_t n) {
  if (out->len + n > c->lim->max_output_nbytes)
    jfail(c, NULL, SS_ERR_RANGE, "the rendered text exceeds %zu bytes (the limit)",
          c->lim->max_output_nbytes);
  jb_add(out, s, n);
}

static jv eval(jctx *c, jscope *s, const jnode *n);
static void exec_body(jctx *c, jscope *s, jnode *const *list, size_t count, jbuf *out);

static void eval_args(jctx *c, jscope *s, const jnode *n, jargs *a, size_t extra_front) {
  a->n = n->n + extra_front;
  a->pos = ja_alloc(&c->arena, (a->n + 1) * sizeof *a->pos);
  for (size_t i = 0; i < n->n; i++) a->pos[i + extra_front] = eval(c, s, n->list[i]);
  a->nkw = n->n2;
  a->kw = ja_alloc(&c->arena, (a->nkw + 1) * sizeof *a->kw);
  a->kwname = n->names;
  for (size_t i = 0; i < n->n2; i++) a->kw[i] = eval(c, s, n->list2[i]);
}

/* ---- macros ---- */
static jv call_macro(jctx *c, const jnode *at, jfunc *fn, const jargs *a, jfunc *caller) {
  const jnode *m = fn->macro;
  if (++c->depth > c->lim->max_depth)
    jfail(c, at, SS_ERR_RANGE, "calls nested deeper than %d (recursion in macro '%s'?)",
          c->lim->max_depth, m->s);
  jscope *ms = scope_new(c, fn->closure);
  jv varargs = jv_list(c, 0);
  for (size_t i = 0; i < a->n; i++) {
    if (i < m->nnames) jd_sets(c, ms->vars, m->names[i], a->pos[i]);
    else jl_push(c, varargs.l, a->pos[i]);
  }
  jv kwargs = jv_dict(c, 0);
  for (size_t i = 0; i < a->nkw; i++) {
    size_t k = 0;
    while (k < m->nnames && strcmp(m->names[k], a->kwname[i])) k++;
    if (k == m->nnames) jd_sets(c, kwargs.d, a->kwname[i], a->kw[i]);
    else jd_sets(c, ms->vars, m->names[k], a->kw[i]);
  }
  for (size_t k = 0; k < m->nnames; k++)
    if (!jd_gets(ms->vars, m->names[k]))
      jd_sets(c, ms->vars, m->names[k], m->list2[k] ? eval(c, ms, m->list2[k]) : jv_undef(m->names[k]));
  jd_sets(c, ms->vars, "varargs", varargs);
  jd_sets(c, ms->vars, "kwargs", kwargs);
  if (caller) jd_sets(c, ms->vars, "caller", (jv){.t = JV_FUNC, .fn = caller});
  jbuf out = {.c = c};
  jb_add(&out, "", 0);
  exec_body(c, ms, m->list, m->n, &out);
  c->brk = 0;
  c->depth--;
  return jb_value(&out);
}

jv jinja_call(jctx *c, const jnode *at, jv f, const jargs *a) {
  if (f.t == JV_UNDEF)
    jfail(c, at, SS_ERR_INVALID, "'%s' is undefined (called as a function)",
          f.undef_name ? f.undef_name : "value");
  if (f.t != JV_FUNC) jfail(c, at, SS_ERR_INVALID, "'%s' object is not callable", jv_type_name(f));
  if (f.fn->macro) return call_macro(c, at, f.fn, a, NULL);
  if (f.fn->method) return jinja_call_method(c, at, f.fn->self, f.fn->method, a);
  return f.fn->fn(c, at, f.fn->self, a);
}

/* ---- expressions ---- */
static bool contains(jctx *c, const jnode *at, jv needle, jv hay) {
  switch (hay.t) {
  case JV_STR:
    if (needle.t != JV_STR)
      jfail(c, at, SS_ERR_INVALID, "'in <string>' requires string as left operand, not %s",
            jv_type_name(needle));
    if (!needle.s->len) return true;
    for (size_t i = 0; i + needle.s->len <= hay.s->len; i++)
      if (memcmp(hay.s->p + i, needle.s->p, needle.s->len) == 0) return true;
    return false;
  case JV_LIST:
    for (size_t i = 0; i < hay.l->n; i++)
      if (jv_eq(hay.l->v[i], needle)) return true;
    return false;
  case JV_DICT: return jd_get(hay.d, needle) != NULL;
  case JV_UNDEF: return false;
  default:
    jfail(c, at, SS_ERR_INVALID, "argument of type '%s' is not iterable", jv_type_name(hay));
  }
}

static bool is_numv(jv v) { return v.t == JV_INT || v.t == JV_FLOAT || v.t == JV_BOOL; }
static double fnum(jv v) { return v.t == JV_FLOAT ? v.f : v.t == JV_INT ? (double)v.i : v.b; }

static jv repeat(jctx *c, const jnode *at, jv seq, int64_t k) {
  if (k < 0) k = 0;
  size_t unit = seq.t == JV_STR ? seq.s->len : seq.l->n * sizeof(jv);
  if (unit && (uint64_t)k > c->lim->max_output_nbytes / unit)
    jfail(c, at, SS_ERR_RANGE, "repetition by %lld exceeds the output limit", (long long)k);
  if (seq.t == JV_STR) {
    jbuf b = {.c = c};
    jb_add(&b, "", 0);
    for (int64_t i = 0; i < k; i++) jb_add(&b, seq.s->p, seq.s->len);
    return jb_value(&b);
  }
  jv r = jv_list(c, 0);
  r.l->tuple = seq.l->tuple;
  for (int64_t i = 0; i < k; i++)
    for (size_t j = 0; j < seq.l->n; j++) jl_push(c, r.l, seq.l->v[j]);
  return r;
}

static jv arith(jctx *c, const jnode *at, const char *op, jv x, jv y) {
  if (!strcmp(op, "~")) {
    jbuf b = {.c = c};
    jb_add(&b, "", 0);
    jv_write_str(&b, x);
    jv_write_str(&b, y);
    return jb_value(&b);
  }
  if (is_numv(x) && is_numv(y)) {
    bool ints = x.t != JV_FLOAT && y.t != JV_FLOAT;
    int64_t a = x.t == JV_INT ? x.i : x.t == JV_BOOL ? x.b : 0;
    int64_t b = y.t == JV_INT ? y.i : y.t == JV_BOOL ? y.b : 0, r;
    double fa = fnum(x), fb = fnum(y);
    switch (op[0]) {
    case '+':
      if (!ints) return jv_float(fa + fb);
      if (__builtin_add_overflow(a, b, &r)) break;
      return jv_int(r);
    case '-':
      if (!ints) return jv_float(fa - fb);
      if (__builtin_sub_overflow(a, b, &r)) break;
      return jv_int(r);
    case '*':
      if (op[1] == '*') {
        if (ints && b >= 0) {
          r = 1;
          for (int64_t i = 0; i < b; i++)
            if (__builtin_mul_overflow(r, a, &r)) goto overflow;
          return jv_int(r);
        }
        return jv_float(__builtin_pow(fa, fb));
      }
      if (!ints) return jv_float(fa * fb);
      if (__builtin_mul_overflow(a, b, &r)) break;
      return jv_int(r);
    case '/':
      if (fb == 0.0) jfail(c, at, SS_ERR_INVALID, "division by zero");
      if (op[1] == '/') {
        if (!ints) return jv_float(__builtin_floor(fa / fb));
        if (a == INT64_MIN && b == -1) break;
        r = a / b;
        if ((a % b != 0) && ((a < 0) != (b < 0))) r--;
        return jv_int(r);
      }
      return jv_float(fa / fb);
    case '%':
      if (fb == 0.0) jfail(c, at, SS_ERR_INVALID, "modulo by zero");
      if (!ints) {
        double m = __builtin_fmod(fa, fb);
        if (m != 0 && ((m < 0) != (fb < 0))) m += fb;
        return jv_float(m);
      }
      if (a == INT64_MIN && b == -1) return jv_int(0);
      r = a % b;
      if (r != 0 && ((r < 0) != (b < 0))) r += b;
      return jv_int(r);
    }
  overflow:
    jfail(c, at, SS_ERR_RANGE, "integer overflow in '%s' (64-bit integers)", op);
  }
  if (!strcmp(op, "+") && x.t == JV_STR && y.t == JV_STR) {
    /* Markup + str escapes the str (jinja2's Markup.__add__ / __radd__) */
    bool safe = x.safe || y.safe;
    if (x.safe && !y.safe) y = jinja_html_escape(c, y);
    if (y.safe && !x.safe) x = jinja_html_escape(c, x);
    jbuf b = {.c = c};
    jb_add(&b, x.s->p, x.s->len);
    jb_add(&b, y.s->p, y.s->len);
    jv r = jb_value(&b);
    r.safe = safe;
    return r;
  }
  if (!strcmp(op, "+") && x.t == JV_LIST && y.t == JV_LIST && x.l->tuple == y.l->tuple) {
    jv r = jv_list(c, x.l->n + y.l->n);
    r.l->tuple = x.l->tuple;
    for (size_t i = 0; i < x.l->n; i++) jl_push(c, r.l, x.l->v[i]);
    for (size_t i = 0; i < y.l->n; i++) jl_push(c, r.l, y.l->v[i]);
    return r;
  }
  if (!strcmp(op, "*") && (x.t == JV_STR || x.t == JV_LIST) && (y.t == JV_INT || y.t == JV_BOOL))
    return repeat(c, at, x, y.t == JV_INT ? y.i : y.b);
  if (!strcmp(op, "*") && (y.t == JV_STR || y.t == JV_LIST) && (x.t == JV_INT || x.t == JV_BOOL))
    return repeat(c, at, y, x.t == JV_INT ? x.i : x.b);
  if (!strcmp(op, "%") && x.t == JV_STR)
    jfail(c, at, SS_ERR_UNSUPPORTED, "unsupported construct: printf-style string formatting ('%%')");
  if (x.t == JV_UNDEF || y.t == JV_UNDEF) {
    jv u = x.t == JV_UNDEF ? x : y;
    jfail(c, at, SS_ERR_INVALID, "'%s' is undefined", u.undef_name ? u.undef_name : "value");
  }
  jfail(c, at, SS_ERR_INVALID, "unsupported operand type(s) for %s: '%s' and '%s'", op,
        jv_type_name(x), jv_type_name(y));
}

/* Offsets of each code point of s (n+1 entries, the last = len). */
static size_t *cp_offsets(jctx *c, const jstr *s, size_t *count) {
  size_t n = utf8_count(s->p, s->len);
  size_t *o = ja_alloc(&c->arena, (n + 1) * sizeof *o);
  size_t k = 0;
  for (size_t i = 0; i < s->len; i++)
    if (((unsigned char)s->p[i] & 0xC0) != 0x80) o[k++] = i;
  o[n] = s->len;
  *count = n;
  return o;
}

static int64_t slice_arg(jctx *c, const jnode *at, jv v, int64_t dflt) {
  if (v.t == JV_NONE || v.t == JV_UNDEF) return dflt;
  if (v.t == JV_INT) return v.i;
  if (v.t == JV_BOOL) return v.b;
  jfail(c, at, SS_ERR_INVALID, "slice indices must be integers or None, not %s", jv_type_name(v));
}

static jv slice(jctx *c, const jnode *n, jv obj, jv lo, jv hi, jv st) {
  int64_t step = slice_arg(c, n, st, 1);
  if (step == 0) jfail(c, n, SS_ERR_INVALID, "slice step cannot be zero");
  size_t len;
  size_t *offs = NULL;
  if (obj.t == JV_STR) offs = cp_offsets(c, obj.s, &len);
  else if (obj.t == JV_LIST) len = obj.l->n;
  else if (obj.t == JV_UNDEF) jfail(c, n, SS_ERR_INVALID, "'%s' is undefined", obj.undef_name ? obj.undef_name : "value");
  else jfail(c, n, SS_ERR_INVALID, "'%s' object is not subscriptable", jv_type_name(obj));
  int64_t L = (int64_t)len;
  int64_t start = slice_arg(c, n, lo, step > 0 ? 0 : L - 1);
  int64_t stop = slice_arg(c, n, hi, step > 0 ? L : -1);
  bool lo_given = lo.t != JV_NONE && lo.t != JV_UNDEF, hi_given = hi.t != JV_NONE && hi.t != JV_UNDEF;
  if (lo_given) {
    if (start < 0) start += L;
    if (start < 0) start = step > 0 ? 0 : -1;
    if (start >= L) start = step > 0 ? L : L - 1;
  }
  if (hi_given) {
    if (stop < 0) stop += L;
    if (stop < 0) stop = step > 0 ? 0 : -1;
    if (stop >= L) stop = step > 0 ? L : L - 1;
  }
  jbuf b = {.c = c};
  jb_add(&b, "", 0);
  jv r = jv_list(c, 0);
  if (obj.t == JV_LIST) r.l->tuple = obj.l->tuple;
  for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step) {
    if (obj.t == JV_STR) jb_add(&b, obj.s->p + offs[i], offs[i + 1] - offs[i]);
    else jl_push(c, r.l, obj.l->v[i]);
  }
  return obj.t == JV_STR ? jb_value(&b) : r;
}

static jv apply_filter_node(jctx *c, jscope *s, const jnode *f, jv input) {
  jv v = f->a ? eval(c, s, f->a) : input;
  jargs a = {0};
  eval_args(c, s, f, &a, 0);
  return jinja_filter_apply(c, f, f->s, v, &a);
}
/* A filter chain whose innermost operand is `input` (filter blocks, set blocks). */
static jv apply_chain(jctx *c, jscope *s, const jnode *f, jv input) {
  jv v = f->a ? apply_chain(c, s, f->a, input) : input;
  jargs a = {0};
  eval_args(c, s, f, &a, 0);
  return jinja_filter_apply(c, f, f->s, v, &a);
}

static jv eval(jctx *c, jscope *s, const jnode *n) {
  if (++c->depth > c->lim->max_depth)
    jfail(c, n, SS_ERR_RANGE, "expressions nested deeper than %d", c->lim->max_depth);
  jv r;
  switch (n->kind) {
  case JN_LIT: r = n->lit; break;
  case JN_NAME: r = lookup(c, s, n->s); break;
  case JN_LIST: case JN_TUPLE:
    r = jv_list(c, n->n);
    r.l->tuple = n->kind == JN_TUPLE;
    for (size_t i = 0; i < n->n; i++) jl_push(c, r.l, eval(c, s, n->list[i]));
    break;
  case JN_DICT:
    r = jv_dict(c, n->n);
    for (size_t i = 0; i < n->n; i++) {
      jv k = eval(c, s, n->list[i]);
      if (k.t == JV_LIST && !k.l->tuple) jfail(c, n, SS_ERR_INVALID, "unhashable type: 'list'");
      if (k.t == JV_DICT) jfail(c, n, SS_ERR_INVALID, "unhashable type: 'dict'");
      jd_set(c, r.d, k, eval(c, s, n->list2[i]));
    }
    break;
  case JN_ATTR: r = jinja_getattr(c, n, eval(c, s, n->a), n->s); break;
  case JN_ITEM: {
    jv obj = eval(c, s, n->a);
    r = jinja_getitem(c, n, obj, eval(c, s, n->b));
    break;
  }
  case JN_SLICE: {
    jv obj = eval(c, s, n->a);
    jv lo = n->b ? eval(c, s, n->b) : jv_none(), hi = n->c ? eval(c, s, n->c) : jv_none();
    jv st = n->d ? eval(c, s, n->d) : jv_none();
    r = slice(c, n, obj, lo, hi, st);
    break;
  }
  case JN_CALL: {
    jv f = eval(c, s, n->a);
    jargs a = {0};
    eval_args(c, s, n, &a, 0);
    r = jinja_call(c, n, f, &a);
    break;
  }
  case JN_FILTER: r = apply_filter_node(c, s, n, jv_undef(NULL)); break;
  case JN_TEST: {
    jv v = eval(c, s, n->a);
    jargs a = {0};
    eval_args(c, s, n, &a, 0);
    bool t = jinja_test_apply(c, n, n->s, v, &a);
    r = jv_bool(n->neg ? !t : t);
    break;
  }
  case JN_BIN: r = arith(c, n, n->s, eval(c, s, n->a), eval(c, s, n->b)); break;
  case JN_NEG: case JN_POS: {
    jv v = eval(c, s, n->a);
    if (v.t == JV_INT) r = n->kind == JN_NEG ? (v.i == INT64_MIN ? (jfail(c, n, SS_ERR_RANGE, "integer overflow"), v) : jv_int(-v.i)) : v;
    else if (v.t == JV_BOOL) r = jv_int(n->kind == JN_NEG ? -(int64_t)v.b : v.b);
    else if (v.t == JV_FLOAT) r = jv_float(n->kind == JN_NEG ? -v.f : v.f);
    else jfail(c, n, SS_ERR_INVALID, "bad operand type for unary %s: '%s'", n->kind == JN_NEG ? "-" : "+", jv_type_name(v));
    break;
  }
  case JN_NOT: r = jv_bool(!jv_truthy(eval(c, s, n->a))); break;
  case JN_AND: {
    jv a = eval(c, s, n->a);
    r = jv_truthy(a) ? eval(c, s, n->b) : a;
    break;
  }
  case JN_OR: {
    jv a = eval(c, s, n->a);
    r = jv_truthy(a) ? a : eval(c, s, n->b);
    break;
  }
  case JN_COND:
    if (jv_truthy(eval(c, s, n->b))) r = eval(c, s, n->a);
    else r = n->c ? eval(c, s, n->c) : jv_undef(NULL);
    break;
  case JN_CMP: {
    jv left = eval(c, s, n->a);
    r = jv_bool(true);
    for (size_t i = 0; i < n->n; i++) {
      jv right = eval(c, s, n->list[i]);
      const char *op = n->names[i];
      bool ok;
      if (!strcmp(op, "==")) ok = jv_eq(left, right);
      else if (!strcmp(op, "!=")) ok = !jv_eq(left, right);
      else if (!strcmp(op, "in")) ok = contains(c, n, left, right);
      else if (!strcmp(op, "not in")) ok = !contains(c, n, left, right);
      else {
        int k = jv_cmp(c, n, left, right);
        ok = op[0] == '<' ? (op[1] ? k <= 0 : k < 0) : (op[1] ? k >= 0 : k > 0);
      }
      if (!ok) {
        r = jv_bool(false);
        break;
      }
      left = right;
    }
    break;
  }
  default: jfail(c, n, SS_ERR_INTERNAL, "statement where an expression belongs");
  }
  c->depth--;
  return r;
}

/* ---- statements ---- */
static void assign(jctx *c, jscope *s, const jnode *target, jv v) {
  if (target->kind == JN_NAME) {
    jd_sets(c, s->vars, target->s, v);
  } else if (target->kind == JN_ATTR) {
    jv obj = eval(c, s, target->a);
    if (obj.t != JV_DICT || !obj.d->ns)
      jfail(c, target, SS_ERR_INVALID, "cannot assign attribute on non-namespace object");
    jd_sets(c, obj.d, target->s, v);
  } else {
    jlist *items = jinja_iter(c, target, v);
    if (items->n != target->n)
      jfail(c, target, SS_ERR_INVALID, "cannot unpack %zu values into %zu names", items->n, target->n);
    for (size_t i = 0; i < target->n; i++) assign(c, s, target->list[i], items->v[i]);
  }
}

static void bind_targets(jctx *c, jscope *s, const jnode *n, jv item) {
  if (n->nnames == 1) {
    jd_sets(c, s->vars, n->names[0], item);
    return;
  }
  jlist *parts = jinja_iter(c, n, item);
  if (parts->n != n->nnames)
    jfail(c, n, SS_ERR_INVALID, "cannot unpack %zu values into %zu loop variables", parts->n, n->nnames);
  for (size_t k = 0; k < n->nnames; k++) jd_sets(c, s->vars, n->names[k], parts->v[k]);
}

static void exec_for(jctx *c, jscope *s, const jnode *n, jbuf *out) {
  jlist *all = jinja_iter(c, n, eval(c, s, n->a));
  jlist *items = all;
  if (n->b) {
    items = jv_list(c, 0).l;
    for (size_t i = 0; i < all->n; i++) {
      if (++c->iterations > c->lim->max_iterations) goto too_many;
      jscope *fs = scope_new(c, s);
      bind_targets(c, fs, n, all->v[i]);
      if (jv_truthy(eval(c, fs, n->b))) jl_push(c, items, all->v[i]);
    }
  }
  if (!items->n) {
    exec_body(c, s, n->list2, n->n2, out);
    return;
  }
  jv loop = jv_dict(c, 12);
  int64_t len = (int64_t)items->n;
  for (size_t i = 0; i < items->n; i++) {
    if (++c->iterations > c->lim->max_iterations) goto too_many;
    jscope *is = scope_new(c, s);
    bind_targets(c, is, n, items->v[i]);
    int64_t k = (int64_t)i;
    jd_sets(c, loop.d, "index", jv_int(k + 1));
    jd_sets(c, loop.d, "index0", jv_int(k));
    jd_sets(c, loop.d, "revindex", jv_int(len - k));
    jd_sets(c, loop.d, "revindex0", jv_int(len - k - 1));
    jd_sets(c, loop.d, "first", jv_bool(i == 0));
    jd_sets(c, loop.d, "last", jv_bool(k == len - 1));
    jd_sets(c, loop.d, "length", jv_int(len));
    jd_sets(c, loop.d, "depth", jv_int(1));
    jd_sets(c, loop.d, "depth0", jv_int(0));
    jd_sets(c, loop.d, "previtem", i ? items->v[i - 1] : jv_undef("previtem"));
    jd_sets(c, loop.d, "nextitem", k + 1 < len ? items->v[i + 1] : jv_undef("nextitem"));
    jd_sets(c, is->vars, "loop", loop);
    exec_body(c, is, n->list, n->n, out);
    if (c->brk == 1) {
      c->brk = 0;
      break;
    }
    c->brk = 0;
  }
  return;
too_many:
  jfail(c, n, SS_ERR_RANGE, "more than %llu loop iterations (the limit)",
        (unsigned long long)c->lim->max_iterations);
}

static void exec_stmt(jctx *c, jscope *s, const jnode *n, jbuf *out) {
  switch (n->kind) {
  case JN_TEXT: emit(c, out, n->s, n->slen); return;
  case JN_OUT: {
    jv v = eval(c, s, n->a);
    jbuf b = {.c = c};
    jb_add(&b, "", 0);
    jv_write_str(&b, v);
    emit(c, out, b.p, b.len);
    return;
  }
  case JN_BODY: exec_body(c, s, n->list, n->n, out); return;
  case JN_IF:
    if (jv_truthy(eval(c, s, n->a))) exec_body(c, s, n->list, n->n, out);
    else exec_body(c, s, n->list2, n->n2, out);
    return;
  case JN_FOR: exec_for(c, s, n, out); return;
  case JN_SET: assign(c, s, n->a, eval(c, s, n->b)); return;
  case JN_SETBLOCK: {
    jbuf b = {.c = c};
    jb_add(&b, "", 0);
    exec_body(c, s, n->list, n->n, &b);
    jv v = jb_value(&b);
    if (n->b) v = apply_chain(c, s, n->b, v);
    assign(c, s, n->a, v);
    return;
  }
  case JN_MACRO: {
    jfunc *f = ja_alloc(&c->arena, sizeof *f);
    f->name = n->s;
    f->macro = n;
    f->closure = s;
    jd_sets(c, s->vars, n->s, (jv){.t = JV_FUNC, .fn = f});
    return;
  }
  case JN_CALLBLOCK: {
    const jnode *call = n->a;
    jv f = eval(c, s, call->a);
    if (f.t != JV_FUNC || !f.fn->macro)
      jfail(c, n, SS_ERR_UNSUPPORTED, "unsupported construct: a call block on something not a macro");
    jargs a = {0};
    eval_args(c, s, call, &a, 0);
    jfunc *caller = ja_alloc(&c->arena, sizeof *caller);
    caller->name = "caller";
    caller->macro = n->b;
    caller->closure = s;
    jv r = call_macro(c, n, f.fn, &a, caller);
    emit(c, out, r.s->p, r.s->len);
    return;
  }
  case JN_FILTERBLOCK: {
    jbuf b = {.c = c};
    jb_add(&b, "", 0);
    exec_body(c, s, n->list, n->n, &b);
    jv v = apply_chain(c, s, n->b, jb_value(&b));
    jbuf o = {.c = c};
    jb_add(&o, "", 0);
    jv_write_str(&o, v);
    emit(c, out, o.p, o.len);
    return;
  }
  case JN_BREAK: c->brk = 1; return;
  case JN_CONTINUE: c->brk = 2; return;
  default: jfail(c, n, SS_ERR_INTERNAL, "expression where a statement belongs");
  }
}

static void exec_body(jctx *c, jscope *s, jnode *const *list, size_t count, jbuf *out) {
  if (++c->depth > c->lim->max_depth)
    jfail(c, count ? list[0] : NULL, SS_ERR_RANGE, "blocks nested deeper than %d", c->lim->max_depth);
  for (size_t i = 0; i < count && !c->brk; i++) exec_stmt(c, s, list[i], out);
  c->depth--;
}

/* ---- entry points ---- */
int ss_jinja_compile(const char *src, size_t len, ss_jinja **out) {
  *out = NULL;
  ss_jinja *t = calloc(1, sizeof *t);
  if (!t) return ss_error(SS_ERR_NOMEM, "out of memory");
  /* jinja2 reads "\r\n" and "\r" as "\n", and drops one trailing newline
   * (keep_trailing_newline is off). */
  char *norm = ja_alloc(&t->arena, len + 1);
  size_t n = 0;
  for (size_t i = 0; i < len; i++) {
    if (src[i] == '\r') {
      norm[n++] = '\n';
      if (i + 1 < len && src[i + 1] == '\n') i++;
    } else {
      norm[n++] = src[i];
    }
  }
  if (n && norm[n - 1] == '\n') n--;
  norm[n] = 0;
  char err[512];
  size_t count;
  int code = SS_ERR_FORMAT;
  jtok *toks = jinja_lex(&t->arena, norm, n, &count, err, sizeof err);
  if (toks) t->root = jinja_parse(&t->arena, toks, count, err, sizeof err, &code);
  if (!toks || !t->root) {
    ss_jinja_free(t);
    return ss_error(code, "chat template: %s", err);
  }
  *out = t;
  return SS_OK;
}

void ss_jinja_free(ss_jinja *t) {
  if (!t) return;
  ja_free(&t->arena);
  free(t);
}

int ss_jinja_render(const ss_jinja *t, const json_t *globals, const ss_jinja_limits *lim,
                    char **out, size_t *out_len) {
  *out = NULL;
  if (out_len) *out_len = 0;
  jctx *c = calloc(1, sizeof *c);
  if (!c) return ss_error(SS_ERR_NOMEM, "out of memory");
  c->lim = lim ? lim : &ss_jinja_default_limits;
  c->arena.max_nbytes = c->lim->max_memory_nbytes;
  c->arena.oom = &c->jb;
  c->arena.oom_msg = c->err;
  int rc = SS_OK;
  if (setjmp(c->jb)) {
    rc = ss_error(c->err_code ? c->err_code : SS_ERR_RANGE, "chat template: %s", c->err);
  } else {
    c->globals = scope_new(c, NULL);
    if (globals) {
      const char *k;
      json_t *v;
      json_object_foreach((json_t *)globals, k, v) jd_sets(c, c->globals->vars, k, jv_from_json(c, v));
    }
    jscope *top = scope_new(c, c->globals);
    jbuf b = {.c = c};
    jb_add(&b, "", 0);
    exec_body(c, top, t->root->list, t->root->n, &b);
    *out = malloc(b.len + 1);
    if (!*out) {
      rc = ss_error(SS_ERR_NOMEM, "out of memory");
    } else {
      memcpy(*out, b.p, b.len + 1);
      if (out_len) *out_len = b.len;
    }
  }
  ja_free(&c->arena);
  free(c);
  return rc;
}
