/* The Jinja parser: tokens into a syntax tree, by recursive descent in
 * jinja2's precedence order (lowest first): conditional, or, and, not,
 * comparison, + -, ~, * / // %, **, unary - +, then primaries with their
 * postfixes (.attr, [index], (call)), filters (|) and tests (is). */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "runtime/base/status.h"
#include "runtime/tokenizer/jinja_internal.h"

#define MAX_NEST 200

typedef struct parser {
  jarena *a;
  const jtok *t;
  size_t n, i;
  int depth;
  char *err;
  size_t errlen;
  int code;
  jmp_buf jb;
  /* Unknown filters and tests: jinja2 reports them when compiling, except
   * inside an if statement or a conditional expression (then when run). */
  int in_if;
  const jtok *unknown[64];
  bool deferred[64];
  size_t n_unknown;
} parser;

static _Noreturn void pfail(parser *P, const jtok *t, int code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static _Noreturn void pfail(parser *P, const jtok *t, int code, const char *fmt, ...) {
  int k = snprintf(P->err, P->errlen, "line %d, column %d: ", t->line, t->col);
  va_list ap;
  va_start(ap, fmt);
  if (k >= 0 && (size_t)k < P->errlen) vsnprintf(P->err + k, P->errlen - (size_t)k, fmt, ap);
  va_end(ap);
  P->code = code;
  longjmp(P->jb, 1);
}

static const jtok *peek(parser *P) { return &P->t[P->i]; }
static const jtok *peek2(parser *P) { return &P->t[P->i + 1 < P->n ? P->i + 1 : P->i]; }
static const jtok *next(parser *P) {
  const jtok *t = &P->t[P->i];
  if (P->i + 1 < P->n) P->i++;
  return t;
}
static bool is_op(const jtok *t, const char *op) { return t->kind == JT_OP && strcmp(t->s, op) == 0; }
static bool is_name(const jtok *t, const char *nm) { return t->kind == JT_NAME && strcmp(t->s, nm) == 0; }
static bool accept_op(parser *P, const char *op) {
  if (!is_op(peek(P), op)) return false;
  next(P);
  return true;
}
static bool accept_name(parser *P, const char *nm) {
  if (!is_name(peek(P), nm)) return false;
  next(P);
  return true;
}
static const char *tok_desc(const jtok *t) {
  switch (t->kind) {
  case JT_EOF: return "end of template";
  case JT_TEXT: return "text";
  case JT_VAR_END: return "'}}'";
  case JT_BLOCK_END: return "'%}'";
  case JT_VAR_BEGIN: return "'{{'";
  case JT_BLOCK_BEGIN: return "'{%'";
  case JT_STRING: return "a string";
  case JT_INT: case JT_FLOAT: return "a number";
  default: return t->s;
  }
}
static void expect_op(parser *P, const char *op) {
  if (!accept_op(P, op)) pfail(P, peek(P), SS_ERR_FORMAT, "expected '%s', found %s", op, tok_desc(peek(P)));
}
static const jtok *expect_kind(parser *P, jtok_kind k, const char *what) {
  if (peek(P)->kind != k) pfail(P, peek(P), SS_ERR_FORMAT, "expected %s, found %s", what, tok_desc(peek(P)));
  return next(P);
}

static jnode *mk(parser *P, jnode_kind k, const jtok *at) {
  jnode *n = ja_alloc(P->a, sizeof *n);
  n->kind = k;
  n->line = at->line;
  n->col = at->col;
  return n;
}

/* Node lists built in a temporary growing array, copied into the arena. */
typedef struct nlist { jnode **v; size_t n, cap; } nlist;
static void nl_push(parser *P, nlist *l, jnode *x) {
  if (l->n == l->cap) {
    size_t cap = l->cap ? l->cap * 2 : 8;
    jnode **v = ja_alloc(P->a, cap * sizeof *v);
    if (l->n) memcpy(v, l->v, l->n * sizeof *v);
    l->v = v;
    l->cap = cap;
  }
  l->v[l->n++] = x;
}
typedef struct slist { const char **v; size_t n, cap; } slist;
static void sl_push(parser *P, slist *l, const char *x) {
  if (l->n == l->cap) {
    size_t cap = l->cap ? l->cap * 2 : 8;
    const char **v = ja_alloc(P->a, cap * sizeof *v);
    if (l->n) memcpy(v, l->v, l->n * sizeof *v);
    l->v = v;
    l->cap = cap;
  }
  l->v[l->n++] = x;
}

static jnode *parse_expr(parser *P, bool with_cond);
static jnode *parse_unary(parser *P, bool with_filter);

static void note_unknown(parser *P, const jtok *t) {
  if (P->in_if) return;
  if (P->n_unknown == 64) pfail(P, t, SS_ERR_UNSUPPORTED, "unsupported construct: '%s'", t->s);
  P->unknown[P->n_unknown] = t;
  P->deferred[P->n_unknown++] = false;
}

static void enter(parser *P) {
  if (++P->depth > MAX_NEST)
    pfail(P, peek(P), SS_ERR_RANGE, "expressions or blocks nested deeper than %d", MAX_NEST);
}

/* Arguments of a call, a filter or a test: positional, then name=value. */
static void parse_args(parser *P, jnode *n) {
  nlist pos = {0}, kwv = {0};
  slist kwn = {0};
  expect_op(P, "(");
  while (!is_op(peek(P), ")")) {
    if (pos.n + kwv.n) expect_op(P, ",");
    if (is_op(peek(P), ")")) break;
    if (is_op(peek(P), "*") || is_op(peek(P), "**"))
      pfail(P, peek(P), SS_ERR_UNSUPPORTED, "unsupported construct: *args / **kwargs in a call");
    if (peek(P)->kind == JT_NAME && is_op(peek2(P), "=")) {
      sl_push(P, &kwn, next(P)->s);
      next(P);
      nl_push(P, &kwv, parse_expr(P, true));
    } else {
      if (kwv.n) pfail(P, peek(P), SS_ERR_FORMAT, "positional argument after a keyword argument");
      nl_push(P, &pos, parse_expr(P, true));
    }
  }
  next(P);
  n->list = pos.v, n->n = pos.n;
  n->list2 = kwv.v, n->n2 = kwv.n;
  n->names = kwn.v, n->nnames = kwn.n;
}

static jnode *parse_primary(parser *P) {
  const jtok *t = peek(P);
  jnode *n;
  switch (t->kind) {
  case JT_NAME:
    next(P);
    n = mk(P, JN_LIT, t);
    if (!strcmp(t->s, "true") || !strcmp(t->s, "True")) n->lit = jv_bool(true);
    else if (!strcmp(t->s, "false") || !strcmp(t->s, "False")) n->lit = jv_bool(false);
    else if (!strcmp(t->s, "none") || !strcmp(t->s, "None")) n->lit = jv_none();
    else {
      n->kind = JN_NAME;
      n->s = t->s;
    }
    return n;
  case JT_STRING: {
    /* adjacent literals concatenate */
    size_t len = 0, j = P->i;
    while (P->t[j].kind == JT_STRING) len += P->t[j++].len;
    char *buf = ja_alloc(P->a, sizeof(jstr) + len + 1);
    jstr *s = (jstr *)buf;
    s->len = 0;
    while (peek(P)->kind == JT_STRING) {
      const jtok *q = next(P);
      memcpy(s->p + s->len, q->s, q->len);
      s->len += q->len;
    }
    n = mk(P, JN_LIT, t);
    n->lit.t = JV_STR;
    n->lit.s = s;
    return n;
  }
  case JT_INT:
    next(P);
    n = mk(P, JN_LIT, t);
    n->lit = jv_int(t->i);
    return n;
  case JT_FLOAT:
    next(P);
    n = mk(P, JN_LIT, t);
    n->lit = jv_float(t->f);
    return n;
  case JT_OP:
    if (is_op(t, "(")) {
      next(P);
      if (accept_op(P, ")")) return mk(P, JN_TUPLE, t);
      jnode *e = parse_expr(P, true);
      if (is_op(peek(P), ",")) {
        nlist items = {0};
        nl_push(P, &items, e);
        while (accept_op(P, ",")) {
          if (is_op(peek(P), ")")) break;
          nl_push(P, &items, parse_expr(P, true));
        }
        e = mk(P, JN_TUPLE, t);
        e->list = items.v, e->n = items.n;
      }
      expect_op(P, ")");
      return e;
    }
    if (is_op(t, "[")) {
      next(P);
      nlist items = {0};
      while (!is_op(peek(P), "]")) {
        if (items.n) expect_op(P, ",");
        if (is_op(peek(P), "]")) break;
        nl_push(P, &items, parse_expr(P, true));
      }
      next(P);
      n = mk(P, JN_LIST, t);
      n->list = items.v, n->n = items.n;
      return n;
    }
    if (is_op(t, "{")) {
      next(P);
      nlist keys = {0}, vals = {0};
      while (!is_op(peek(P), "}")) {
        if (keys.n) expect_op(P, ",");
        if (is_op(peek(P), "}")) break;
        nl_push(P, &keys, parse_expr(P, true));
        expect_op(P, ":");
        nl_push(P, &vals, parse_expr(P, true));
      }
      next(P);
      n = mk(P, JN_DICT, t);
      n->list = keys.v, n->n = keys.n;
      n->list2 = vals.v, n->n2 = vals.n;
      return n;
    }
    break;
  default: break;
  }
  pfail(P, t, SS_ERR_FORMAT, "expected an expression, found %s", tok_desc(t));
}

static jnode *parse_subscript(parser *P, jnode *obj, const jtok *at) {
  jnode *parts[3] = {0};
  int k = 0;
  bool slice = false;
  for (;;) {
    if (!is_op(peek(P), ":") && !is_op(peek(P), "]")) parts[k] = parse_expr(P, true);
    if (accept_op(P, ":")) {
      slice = true;
      if (++k > 2) pfail(P, peek(P), SS_ERR_FORMAT, "a slice has at most three parts");
      continue;
    }
    break;
  }
  expect_op(P, "]");
  jnode *n = mk(P, slice ? JN_SLICE : JN_ITEM, at);
  n->a = obj;
  if (slice) n->b = parts[0], n->c = parts[1], n->d = parts[2];
  else {
    if (!parts[0]) pfail(P, at, SS_ERR_FORMAT, "empty subscript");
    n->b = parts[0];
  }
  return n;
}

static jnode *parse_postfix(parser *P, jnode *n) {
  for (;;) {
    const jtok *t = peek(P);
    if (is_op(t, ".")) {
      next(P);
      const jtok *nm = next(P);
      if (nm->kind == JT_INT) {
        jnode *k = mk(P, JN_LIT, nm);
        k->lit = jv_int(nm->i);
        jnode *x = mk(P, JN_ITEM, t);
        x->a = n, x->b = k;
        n = x;
      } else if (nm->kind == JT_NAME) {
        jnode *x = mk(P, JN_ATTR, t);
        x->a = n, x->s = nm->s;
        n = x;
      } else {
        pfail(P, nm, SS_ERR_FORMAT, "expected an attribute name after '.', found %s", tok_desc(nm));
      }
    } else if (is_op(t, "[")) {
      next(P);
      n = parse_subscript(P, n, t);
    } else if (is_op(t, "(")) {
      jnode *x = mk(P, JN_CALL, t);
      x->a = n;
      parse_args(P, x);
      n = x;
    } else {
      return n;
    }
  }
}

static bool starts_primary(const jtok *t) {
  if (t->kind == JT_STRING || t->kind == JT_INT || t->kind == JT_FLOAT) return true;
  if (t->kind == JT_NAME)
    return strcmp(t->s, "else") && strcmp(t->s, "or") && strcmp(t->s, "and") &&
           strcmp(t->s, "is") && strcmp(t->s, "in") && strcmp(t->s, "not") && strcmp(t->s, "if");
  return is_op(t, "[") || is_op(t, "{");
}

static jnode *parse_filter(parser *P, jnode *operand) {
  const jtok *nm = expect_kind(P, JT_NAME, "a filter name");
  if (!jinja_filter_known(nm->s)) note_unknown(P, nm);
  jnode *f = mk(P, JN_FILTER, nm);
  f->a = operand;
  f->s = nm->s;
  if (is_op(peek(P), "(")) parse_args(P, f);
  return f;
}

static jnode *parse_filters_tests(parser *P, jnode *n) {
  for (;;) {
    if (accept_op(P, "|")) {
      n = parse_filter(P, n);
    } else if (is_name(peek(P), "is")) {
      next(P);
      bool neg = accept_name(P, "not");
      const jtok *nm = next(P);
      const char *tn = nm->kind == JT_NAME ? nm->s : nm->kind == JT_OP ? nm->s : NULL;
      if (!tn) pfail(P, nm, SS_ERR_FORMAT, "expected a test name after 'is'");
      if (!strcmp(tn, "none")) tn = "none";
      if (!jinja_test_known(tn)) note_unknown(P, nm);
      jnode *x = mk(P, JN_TEST, nm);
      x->a = n, x->s = tn, x->neg = neg;
      if (is_op(peek(P), "(")) {
        parse_args(P, x);
      } else if (starts_primary(peek(P))) {
        x->list = ja_alloc(P->a, sizeof(jnode *));
        x->list[0] = parse_postfix(P, parse_primary(P));
        x->n = 1;
      }
      n = x;
    } else {
      return n;
    }
  }
}

static jnode *parse_unary(parser *P, bool with_filter) {
  enter(P);
  const jtok *t = peek(P);
  jnode *n;
  if (is_op(t, "-") || is_op(t, "+")) {
    next(P);
    n = mk(P, is_op(t, "-") ? JN_NEG : JN_POS, t);
    n->a = parse_unary(P, false);
  } else {
    n = parse_postfix(P, parse_primary(P));
  }
  if (with_filter) n = parse_filters_tests(P, n);
  P->depth--;
  return n;
}

static jnode *bin(parser *P, const jtok *t, jnode *a, jnode *b) {
  jnode *n = mk(P, JN_BIN, t);
  n->s = t->s, n->a = a, n->b = b;
  return n;
}

static jnode *parse_pow(parser *P) {
  jnode *n = parse_unary(P, true);
  while (is_op(peek(P), "**")) {
    const jtok *t = next(P);
    n = bin(P, t, n, parse_unary(P, true));
  }
  return n;
}
static jnode *parse_math2(parser *P) {
  jnode *n = parse_pow(P);
  while (is_op(peek(P), "*") || is_op(peek(P), "/") || is_op(peek(P), "//") || is_op(peek(P), "%")) {
    const jtok *t = next(P);
    n = bin(P, t, n, parse_pow(P));
  }
  return n;
}
static jnode *parse_concat(parser *P) {
  jnode *n = parse_math2(P);
  while (is_op(peek(P), "~")) {
    const jtok *t = next(P);
    n = bin(P, t, n, parse_math2(P));
  }
  return n;
}
static jnode *parse_math1(parser *P) {
  jnode *n = parse_concat(P);
  while (is_op(peek(P), "+") || is_op(peek(P), "-")) {
    const jtok *t = next(P);
    n = bin(P, t, n, parse_concat(P));
  }
  return n;
}

static jnode *parse_compare(parser *P) {
  const jtok *at = peek(P);
  jnode *first = parse_math1(P);
  nlist ops = {0};
  slist names = {0};
  for (;;) {
    const jtok *t = peek(P);
    const char *op = NULL;
    if (t->kind == JT_OP && (!strcmp(t->s, "==") || !strcmp(t->s, "!=") || !strcmp(t->s, "<") ||
                             !strcmp(t->s, ">") || !strcmp(t->s, "<=") || !strcmp(t->s, ">="))) {
      op = t->s;
      next(P);
    } else if (is_name(t, "in")) {
      op = "in";
      next(P);
    } else if (is_name(t, "not") && is_name(peek2(P), "in")) {
      op = "not in";
      next(P);
      next(P);
    } else {
      break;
    }
    sl_push(P, &names, op);
    nl_push(P, &ops, parse_math1(P));
  }
  if (!ops.n) return first;
  jnode *n = mk(P, JN_CMP, at);
  n->a = first;
  n->list = ops.v, n->n = ops.n;
  n->names = names.v, n->nnames = names.n;
  return n;
}

static jnode *parse_not(parser *P) {
  if (is_name(peek(P), "not")) {
    const jtok *t = next(P);
    enter(P);
    jnode *n = mk(P, JN_NOT, t);
    n->a = parse_not(P);
    P->depth--;
    return n;
  }
  return parse_compare(P);
}
static jnode *parse_and(parser *P) {
  jnode *n = parse_not(P);
  while (is_name(peek(P), "and")) {
    const jtok *t = next(P);
    jnode *x = mk(P, JN_AND, t);
    x->a = n, x->b = parse_not(P);
    n = x;
  }
  return n;
}
static jnode *parse_or(parser *P) {
  jnode *n = parse_and(P);
  while (is_name(peek(P), "or")) {
    const jtok *t = next(P);
    jnode *x = mk(P, JN_OR, t);
    x->a = n, x->b = parse_and(P);
    n = x;
  }
  return n;
}

static jnode *parse_expr(parser *P, bool with_cond) {
  enter(P);
  size_t mark = P->n_unknown;
  jnode *n = parse_or(P);
  if (with_cond && is_name(peek(P), "if"))
    for (size_t i = mark; i < P->n_unknown; i++) P->deferred[i] = true;
  while (with_cond && is_name(peek(P), "if")) {
    const jtok *t = next(P);
    jnode *x = mk(P, JN_COND, t);
    x->a = n;
    P->in_if++;
    x->b = parse_or(P);
    if (accept_name(P, "else")) x->c = parse_expr(P, true);
    P->in_if--;
    n = x;
  }
  P->depth--;
  return n;
}

/* An expression, or a bare tuple "a, b" (set values, for iterables). */
static jnode *parse_tuple(parser *P, bool with_cond) {
  const jtok *at = peek(P);
  jnode *e = parse_expr(P, with_cond);
  if (!is_op(peek(P), ",")) return e;
  nlist items = {0};
  nl_push(P, &items, e);
  while (accept_op(P, ",")) {
    if (peek(P)->kind == JT_BLOCK_END || is_name(peek(P), "if")) break;
    nl_push(P, &items, parse_expr(P, with_cond));
  }
  jnode *t = mk(P, JN_TUPLE, at);
  t->list = items.v, t->n = items.n;
  return t;
}

/* ---- statements ---- */

static jnode *parse_body(parser *P, const char *const *ends, const char **which);

static void end_tag(parser *P) { expect_kind(P, JT_BLOCK_END, "'%}'"); }

static void names_list(parser *P, jnode *n) {
  slist names = {0};
  do {
    const jtok *nm = expect_kind(P, JT_NAME, "a variable name");
    sl_push(P, &names, nm->s);
  } while (accept_op(P, ","));
  n->names = names.v, n->nnames = names.n;
}

static jnode *parse_for(parser *P, const jtok *at) {
  jnode *n = mk(P, JN_FOR, at);
  bool paren = accept_op(P, "(");
  names_list(P, n);
  if (paren) expect_op(P, ")");
  if (!accept_name(P, "in")) pfail(P, peek(P), SS_ERR_FORMAT, "expected 'in' in a for tag");
  n->a = parse_tuple(P, false);
  if (accept_name(P, "if")) n->b = parse_expr(P, true);
  if (is_name(peek(P), "recursive"))
    pfail(P, peek(P), SS_ERR_UNSUPPORTED, "unsupported construct: recursive for loop");
  end_tag(P);
  static const char *const ends[] = {"endfor", "else", NULL};
  const char *which;
  jnode *body = parse_body(P, ends, &which);
  n->list = body->list, n->n = body->n;
  if (!strcmp(which, "else")) {
    end_tag(P);
    static const char *const ends2[] = {"endfor", NULL};
    jnode *eb = parse_body(P, ends2, &which);
    n->list2 = eb->list, n->n2 = eb->n;
  }
  end_tag(P);
  return n;
}

static jnode *parse_if(parser *P, const jtok *at) {
  jnode *n = mk(P, JN_IF, at);
  P->in_if++;
  n->a = parse_tuple(P, true);
  end_tag(P);
  static const char *const ends[] = {"endif", "elif", "else", NULL};
  const char *which;
  jnode *body = parse_body(P, ends, &which);
  n->list = body->list, n->n = body->n;
  if (!strcmp(which, "elif")) {
    jnode *e = parse_if(P, &P->t[P->i - 1]);
    n->list2 = ja_alloc(P->a, sizeof(jnode *));
    n->list2[0] = e, n->n2 = 1;
    P->in_if--;
    return n; /* the nested if consumed endif */
  }
  if (!strcmp(which, "else")) {
    end_tag(P);
    static const char *const ends2[] = {"endif", NULL};
    jnode *eb = parse_body(P, ends2, &which);
    n->list2 = eb->list, n->n2 = eb->n;
  }
  end_tag(P);
  P->in_if--;
  return n;
}

static jnode *parse_set(parser *P, const jtok *at) {
  const jtok *nm = expect_kind(P, JT_NAME, "a variable name after set");
  jnode *target = mk(P, JN_NAME, nm);
  target->s = nm->s;
  if (accept_op(P, ".")) {
    const jtok *attr = expect_kind(P, JT_NAME, "an attribute name");
    jnode *x = mk(P, JN_ATTR, attr);
    x->a = target, x->s = attr->s;
    target = x;
  } else if (is_op(peek(P), ",")) {
    jnode *tup = mk(P, JN_TUPLE, nm);
    nlist items = {0};
    nl_push(P, &items, target);
    while (accept_op(P, ",")) {
      const jtok *t2 = expect_kind(P, JT_NAME, "a variable name");
      jnode *x = mk(P, JN_NAME, t2);
      x->s = t2->s;
      nl_push(P, &items, x);
    }
    tup->list = items.v, tup->n = items.n;
    target = tup;
  }
  if (accept_op(P, "=")) {
    jnode *n = mk(P, JN_SET, at);
    n->a = target;
    n->b = parse_tuple(P, true);
    end_tag(P);
    return n;
  }
  if (target->kind != JN_NAME) pfail(P, at, SS_ERR_FORMAT, "a block set assigns one name");
  jnode *n = mk(P, JN_SETBLOCK, at);
  n->a = target;
  if (accept_op(P, "|")) {
    jnode *f = parse_filter(P, NULL);
    while (accept_op(P, "|")) f = parse_filter(P, f);
    n->b = f;
  }
  end_tag(P);
  static const char *const ends[] = {"endset", NULL};
  const char *which;
  jnode *body = parse_body(P, ends, &which);
  n->list = body->list, n->n = body->n;
  end_tag(P);
  return n;
}

/* Parameters "(a, b=default, ...)" of a macro or a call block. */
static void parse_params(parser *P, jnode *n) {
  slist names = {0};
  nlist defs = {0};
  expect_op(P, "(");
  while (!is_op(peek(P), ")")) {
    if (names.n) expect_op(P, ",");
    if (is_op(peek(P), ")")) break;
    const jtok *nm = expect_kind(P, JT_NAME, "a parameter name");
    sl_push(P, &names, nm->s);
    nl_push(P, &defs, accept_op(P, "=") ? parse_expr(P, true) : NULL);
  }
  next(P);
  n->names = names.v, n->nnames = names.n;
  n->list2 = defs.v, n->n2 = defs.n;
}

static jnode *parse_macro(parser *P, const jtok *at) {
  const jtok *nm = expect_kind(P, JT_NAME, "a macro name");
  jnode *n = mk(P, JN_MACRO, at);
  n->s = nm->s;
  parse_params(P, n);
  end_tag(P);
  static const char *const ends[] = {"endmacro", NULL};
  const char *which;
  jnode *body = parse_body(P, ends, &which);
  n->list = body->list, n->n = body->n;
  if (peek(P)->kind == JT_NAME) next(P); /* {% endmacro name %} */
  end_tag(P);
  return n;
}

static jnode *parse_call_block(parser *P, const jtok *at) {
  jnode *n = mk(P, JN_CALLBLOCK, at);
  jnode *params = mk(P, JN_MACRO, at);
  params->s = "caller";
  if (is_op(peek(P), "(")) parse_params(P, params);
  n->b = params;
  n->a = parse_expr(P, true);
  if (n->a->kind != JN_CALL) pfail(P, at, SS_ERR_FORMAT, "a call block needs a call expression");
  end_tag(P);
  static const char *const ends[] = {"endcall", NULL};
  const char *which;
  jnode *body = parse_body(P, ends, &which);
  params->list = body->list, params->n = body->n;
  end_tag(P);
  return n;
}

static jnode *parse_filter_block(parser *P, const jtok *at) {
  jnode *n = mk(P, JN_FILTERBLOCK, at);
  jnode *f = parse_filter(P, NULL);
  while (accept_op(P, "|")) f = parse_filter(P, f);
  n->b = f;
  end_tag(P);
  static const char *const ends[] = {"endfilter", NULL};
  const char *which;
  jnode *body = parse_body(P, ends, &which);
  n->list = body->list, n->n = body->n;
  end_tag(P);
  return n;
}

static jnode *parse_statement(parser *P) {
  const jtok *at = next(P); /* {% */
  const jtok *kw = expect_kind(P, JT_NAME, "a tag name");
  const char *k = kw->s;
  enter(P);
  jnode *n;
  if (!strcmp(k, "for")) n = parse_for(P, kw);
  else if (!strcmp(k, "if")) n = parse_if(P, kw);
  else if (!strcmp(k, "set")) n = parse_set(P, kw);
  else if (!strcmp(k, "macro")) n = parse_macro(P, kw);
  else if (!strcmp(k, "call")) n = parse_call_block(P, kw);
  else if (!strcmp(k, "filter")) n = parse_filter_block(P, kw);
  else if (!strcmp(k, "break") || !strcmp(k, "continue")) {
    n = mk(P, !strcmp(k, "break") ? JN_BREAK : JN_CONTINUE, kw);
    end_tag(P);
  } else if (!strcmp(k, "generation")) {
    /* transformers' AssistantTracker: the body renders as is */
    end_tag(P);
    static const char *const ends[] = {"endgeneration", NULL};
    const char *which;
    n = parse_body(P, ends, &which);
    end_tag(P);
  } else {
    pfail(P, kw, SS_ERR_UNSUPPORTED, "unsupported construct: tag '%s'", k);
  }
  (void)at;
  P->depth--;
  return n;
}

/* Statements up to one of `ends` (NULL: end of template); leaves the end
 * tag's name consumed and *which set to it. */
static jnode *parse_body(parser *P, const char *const *ends, const char **which) {
  jnode *body = mk(P, JN_BODY, peek(P));
  nlist items = {0};
  for (;;) {
    const jtok *t = peek(P);
    if (t->kind == JT_EOF) {
      if (ends) pfail(P, t, SS_ERR_FORMAT, "unexpected end of template, expected '%s'", ends[0]);
      break;
    }
    if (t->kind == JT_TEXT) {
      next(P);
      jnode *x = mk(P, JN_TEXT, t);
      x->s = t->s, x->slen = t->len;
      nl_push(P, &items, x);
    } else if (t->kind == JT_VAR_BEGIN) {
      next(P);
      jnode *x = mk(P, JN_OUT, t);
      x->a = parse_tuple(P, true);
      expect_kind(P, JT_VAR_END, "'}}'");
      nl_push(P, &items, x);
    } else if (t->kind == JT_BLOCK_BEGIN) {
      const jtok *kw = peek2(P);
      if (ends && kw->kind == JT_NAME) {
        bool hit = false;
        for (size_t i = 0; ends[i]; i++)
          if (!strcmp(kw->s, ends[i])) {
            *which = ends[i];
            hit = true;
          }
        if (hit) {
          next(P);
          next(P);
          break;
        }
      }
      if (kw->kind == JT_NAME && (!strncmp(kw->s, "end", 3) || !strcmp(kw->s, "else") ||
                                  !strcmp(kw->s, "elif")))
        pfail(P, kw, SS_ERR_FORMAT, "unexpected '%s'%s%s", kw->s, ends ? ", expected " : "",
              ends ? ends[0] : "");
      nl_push(P, &items, parse_statement(P));
    } else {
      pfail(P, t, SS_ERR_FORMAT, "unexpected %s", tok_desc(t));
    }
  }
  body->list = items.v, body->n = items.n;
  return body;
}

jnode *jinja_parse(jarena *a, const jtok *toks, size_t count, char *err, size_t errlen,
                   int *code) {
  parser P = {.a = a, .t = toks, .n = count, .err = err, .errlen = errlen};
  if (setjmp(P.jb)) {
    *code = P.code;
    return NULL;
  }
  const char *which = NULL;
  jnode *root = parse_body(&P, NULL, &which);
  for (size_t i = 0; i < P.n_unknown; i++)
    if (!P.deferred[i])
      pfail(&P, P.unknown[i], SS_ERR_UNSUPPORTED, "unsupported construct: filter or test '%s'",
            P.unknown[i]->s);
  return root;
}
