/* GBNF text to a compiled grammar: rules, literals and character classes as
 * UTF-8 byte sets, groups and repetitions as generated rules, then the checks
 * (every rule defined, none left-recursive). */
#include <stdlib.h>
#include <string.h>

#include "runtime/base/status.h"
#include "runtime/grammar/grammar_internal.h"

/* ------------------------------------------------------------------------ */
/* The grammar under construction                                            */

typedef struct balt {
  gelem *e;
  int32_t n, cap;
} balt;

typedef struct brule {
  char *name;     /* NULL for generated rules */
  bool defined;
  balt *alts;
  int32_t n, cap;
} brule;

/* Rules and sets grow to at most these (a limit, so a hostile text cannot make
 * the matcher's tables grow without bound). */
#define MAX_RULES 100000
#define MAX_ELEMS 4000000

typedef struct gparse {
  const char *p, *start, *end;
  brule *rules;
  int32_t n_rules, cap_rules;
  gset *sets;
  int32_t n_sets, cap_sets;
  int64_t n_elems;
  int depth;      /* groups open */
  int rc;
} gparse;

static bool grow(void **p, int32_t *cap, int32_t need, size_t size) {
  if (need <= *cap) return true;
  int32_t c = *cap ? *cap : 8;
  while (c < need) c *= 2;
  void *q = realloc(*p, (size_t)c * size);
  if (!q) return false;
  *p = q;
  *cap = c;
  return true;
}

static int fail_at(gparse *g, const char *at, const char *what) {
  int line = 1, col = 1;
  for (const char *q = g->start; q < at && q < g->end; q++) {
    if (*q == '\n') line++, col = 1;
    else col++;
  }
  if (!g->rc) g->rc = ss_error(SS_ERR_INVALID, "grammar: %s at line %d, column %d", what, line, col);
  return g->rc;
}

static int new_rule(gparse *g, const char *name, size_t nlen) {
  if (g->n_rules >= MAX_RULES) {
    if (!g->rc) g->rc = ss_error(SS_ERR_RANGE, "grammar: more than %d rules", MAX_RULES);
    return -1;
  }
  if (!grow((void **)&g->rules, &g->cap_rules, g->n_rules + 1, sizeof *g->rules)) {
    if (!g->rc) g->rc = ss_error(SS_ERR_NOMEM, "out of memory");
    return -1;
  }
  brule *r = &g->rules[g->n_rules];
  memset(r, 0, sizeof *r);
  if (name) {
    r->name = malloc(nlen + 1);
    if (!r->name) {
      if (!g->rc) g->rc = ss_error(SS_ERR_NOMEM, "out of memory");
      return -1;
    }
    memcpy(r->name, name, nlen);
    r->name[nlen] = 0;
  }
  return g->n_rules++;
}

static int rule_id(gparse *g, const char *name, size_t nlen) {
  for (int32_t i = 0; i < g->n_rules; i++)
    if (g->rules[i].name && strlen(g->rules[i].name) == nlen &&
        memcmp(g->rules[i].name, name, nlen) == 0)
      return i;
  return new_rule(g, name, nlen);
}

static balt *add_alt(gparse *g, int32_t r) {
  brule *b = &g->rules[r];
  if (!grow((void **)&b->alts, &b->cap, b->n + 1, sizeof *b->alts)) {
    if (!g->rc) g->rc = ss_error(SS_ERR_NOMEM, "out of memory");
    return NULL;
  }
  balt *a = &b->alts[b->n++];
  memset(a, 0, sizeof *a);
  return a;
}

static bool push(gparse *g, balt *a, int32_t kind, int32_t v) {
  if (++g->n_elems > MAX_ELEMS) {
    if (!g->rc) g->rc = ss_error(SS_ERR_RANGE, "grammar: more than %d elements", MAX_ELEMS);
    return false;
  }
  if (!grow((void **)&a->e, &a->cap, a->n + 1, sizeof *a->e)) {
    if (!g->rc) g->rc = ss_error(SS_ERR_NOMEM, "out of memory");
    return false;
  }
  a->e[a->n++] = (gelem){kind, v};
  return true;
}

static int32_t new_set(gparse *g, const gset *s) {
  if (!grow((void **)&g->sets, &g->cap_sets, g->n_sets + 1, sizeof *g->sets)) {
    if (!g->rc) g->rc = ss_error(SS_ERR_NOMEM, "out of memory");
    return -1;
  }
  g->sets[g->n_sets] = *s;
  return g->n_sets++;
}

static bool push_byte(gparse *g, balt *a, unsigned lo, unsigned hi) {
  gset s = {{0}};
  for (unsigned b = lo; b <= hi; b++) s.w[b >> 6] |= 1ull << (b & 63);
  int32_t id = new_set(g, &s);
  return id >= 0 && push(g, a, GE_SET, id);
}

/* ------------------------------------------------------------------------ */
/* Characters: code points to UTF-8 byte sequences                           */

static int utf8_put(uint32_t c, unsigned char *b) {
  if (c < 0x80) return b[0] = (unsigned char)c, 1;
  if (c < 0x800) return b[0] = (unsigned char)(0xC0 | c >> 6), b[1] = 0x80 | (c & 0x3F), 2;
  if (c < 0x10000) {
    b[0] = (unsigned char)(0xE0 | c >> 12);
    b[1] = 0x80 | ((c >> 6) & 0x3F);
    b[2] = 0x80 | (c & 0x3F);
    return 3;
  }
  b[0] = (unsigned char)(0xF0 | c >> 18);
  b[1] = 0x80 | ((c >> 12) & 0x3F);
  b[2] = 0x80 | ((c >> 6) & 0x3F);
  b[3] = 0x80 | (c & 0x3F);
  return 4;
}

/* One alternative per run of code points whose encodings differ only in
 * byte ranges: [lo, hi] is split at the encoded-length boundaries, then at
 * continuation-byte boundaries, until each piece is a product of byte ranges
 * (the usual UTF-8 range construction). */
static bool utf8_ranges(gparse *g, int32_t rule, uint32_t lo, uint32_t hi) {
  static const uint32_t lim[] = {0x7F, 0x7FF, 0xFFFF, 0x10FFFF};
  for (int i = 0; i < 3; i++)
    if (lo <= lim[i] && hi > lim[i])
      return utf8_ranges(g, rule, lo, lim[i]) && utf8_ranges(g, rule, lim[i] + 1, hi);
  unsigned char a[4], b[4];
  int n = utf8_put(lo, a);
  for (int i = 1; i < n; i++) {
    uint32_t m = (1u << (6 * i)) - 1;
    if ((lo & ~m) != (hi & ~m)) {
      if ((lo & m) != 0) return utf8_ranges(g, rule, lo, lo | m) && utf8_ranges(g, rule, (lo | m) + 1, hi);
      if ((hi & m) != m) return utf8_ranges(g, rule, lo, (hi & ~m) - 1) && utf8_ranges(g, rule, hi & ~m, hi);
    }
  }
  utf8_put(hi, b);
  balt *alt = add_alt(g, rule);
  if (!alt) return false;
  for (int i = 0; i < n; i++)
    if (!push_byte(g, alt, a[i], b[i])) return false;
  return push(g, alt, GE_END, 0);
}

typedef struct cprange {
  uint32_t lo, hi;
} cprange;

static int cmp_range(const void *a, const void *b) {
  const cprange *x = a, *y = b;
  return x->lo < y->lo ? -1 : x->lo > y->lo;
}

/* Appends to a the element matching one code point from the ranges
 * (negated: any code point outside them, surrogates excluded). */
static bool push_class(gparse *g, balt *a, cprange *r, int32_t n, bool negate) {
  qsort(r, (size_t)n, sizeof *r, cmp_range);
  /* merged, then complemented when negated */
  cprange *m = malloc(((size_t)n + 3) * sizeof *m);
  if (!m) return g->rc = ss_error(SS_ERR_NOMEM, "out of memory"), false;
  int32_t k = 0;
  for (int32_t i = 0; i < n; i++) {
    if (k && r[i].lo <= m[k - 1].hi + 1) {
      if (r[i].hi > m[k - 1].hi) m[k - 1].hi = r[i].hi;
    } else {
      m[k++] = r[i];
    }
  }
  if (negate) {
    cprange *c = malloc(((size_t)k + 3) * sizeof *c);
    if (!c) return free(m), g->rc = ss_error(SS_ERR_NOMEM, "out of memory"), false;
    int32_t nc = 0;
    uint32_t next = 0;
    for (int32_t i = 0; i < k; i++) {
      if (m[i].lo > next) c[nc++] = (cprange){next, m[i].lo - 1};
      next = m[i].hi + 1;
    }
    if (next <= 0x10FFFF) c[nc++] = (cprange){next, 0x10FFFF};
    free(m);
    m = c;
    k = nc;
  }
  gset ascii = {{0}};
  bool wide = false;
  for (int32_t i = 0; i < k; i++) {
    for (uint32_t c = m[i].lo; c <= m[i].hi && c < 0x80; c++) ascii.w[c >> 6] |= 1ull << (c & 63);
    if (m[i].hi >= 0x80) wide = true;
  }
  bool ok = true;
  if (!wide) {
    int32_t id = new_set(g, &ascii);
    ok = id >= 0 && push(g, a, GE_SET, id);
  } else {
    int32_t rule = new_rule(g, NULL, 0);
    ok = rule >= 0;
    if (ok && (ascii.w[0] | ascii.w[1])) {
      int32_t id = new_set(g, &ascii);
      balt *x = id >= 0 ? add_alt(g, rule) : NULL;
      ok = x && push(g, x, GE_SET, id) && push(g, x, GE_END, 0);
    }
    for (int32_t i = 0; ok && i < k; i++) {
      uint32_t lo = m[i].lo < 0x80 ? 0x80 : m[i].lo, hi = m[i].hi;
      if (lo > hi) continue;
      /* no surrogates: they are not characters and have no UTF-8 encoding */
      if (lo < 0xD800 && hi > 0xDFFF) {
        ok = utf8_ranges(g, rule, lo, 0xD7FF) && utf8_ranges(g, rule, 0xE000, hi);
      } else if (lo >= 0xD800 && hi <= 0xDFFF) {
        continue;
      } else {
        if (lo >= 0xD800 && lo <= 0xDFFF) lo = 0xE000;
        if (hi >= 0xD800 && hi <= 0xDFFF) hi = 0xD7FF;
        ok = lo > hi || utf8_ranges(g, rule, lo, hi);
      }
    }
    ok = ok && push(g, a, GE_REF, rule);
  }
  free(m);
  return ok;
}

/* ------------------------------------------------------------------------ */
/* The text                                                                   */

static bool is_name(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
         c == '_';
}

static void skip_space(gparse *g, bool newline_ok) {
  while (g->p < g->end) {
    char c = *g->p;
    if (c == ' ' || c == '\t' || c == '\r') g->p++;
    else if (c == '\n' && newline_ok) g->p++;
    else if (c == '#') {
      while (g->p < g->end && *g->p != '\n') g->p++;
    } else
      break;
  }
}

static int hexval(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

/* One character of a literal or class (an escape or a UTF-8 sequence). */
static bool parse_char(gparse *g, uint32_t *out) {
  const char *at = g->p;
  if (g->p >= g->end) return fail_at(g, at, "unexpected end of text"), false;
  unsigned char c = (unsigned char)*g->p++;
  if (c == '\\') {
    if (g->p >= g->end) return fail_at(g, at, "unexpected end of text after '\\'"), false;
    char e = *g->p++;
    int nhex = e == 'x' ? 2 : e == 'u' ? 4 : e == 'U' ? 8 : 0;
    if (nhex) {
      uint32_t v = 0;
      for (int i = 0; i < nhex; i++) {
        int h = g->p < g->end ? hexval(*g->p) : -1;
        if (h < 0) return fail_at(g, at, "bad hexadecimal escape"), false;
        v = v * 16 + (uint32_t)h;
        g->p++;
      }
      if (v > 0x10FFFF) return fail_at(g, at, "escape beyond U+10FFFF"), false;
      *out = v;
      return true;
    }
    switch (e) {
      case 'n': *out = '\n'; return true;
      case 't': *out = '\t'; return true;
      case 'r': *out = '\r'; return true;
      case '\\': case '"': case '[': case ']': case '-': case '^': *out = (uint32_t)e; return true;
      default: return fail_at(g, at, "unknown escape"), false;
    }
  }
  if (c < 0x80) return *out = c, true;
  int n = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 0;
  if (!n || g->end - g->p < n - 1) return fail_at(g, at, "invalid UTF-8"), false;
  uint32_t v = c & (0x3F >> (n - 1));
  for (int i = 1; i < n; i++) {
    unsigned char d = (unsigned char)*g->p++;
    if ((d & 0xC0) != 0x80) return fail_at(g, at, "invalid UTF-8"), false;
    v = v << 6 | (d & 0x3F);
  }
  *out = v;
  return true;
}

static bool parse_alternates(gparse *g, int32_t rule, bool nested);

/* Moves a[from..] into a new rule and leaves a reference to it instead. */
static int32_t wrap_tail(gparse *g, balt *a, int32_t from) {
  if (a->n - from == 1 && a->e[from].kind == GE_REF) {
    a->n = from;
    return a->e[from].v;
  }
  int32_t r = new_rule(g, NULL, 0);
  if (r < 0) return -1;
  /* a may move when rules grow: it points into its own rule's alternatives,
   * which new_rule does not touch */
  balt *x = add_alt(g, r);
  if (!x) return -1;
  for (int32_t i = from; i < a->n; i++)
    if (!push(g, x, a->e[i].kind, a->e[i].v)) return -1;
  if (!push(g, x, GE_END, 0)) return -1;
  a->n = from;
  return r;
}

/* x{lo,hi} (hi < 0: unbounded) for the rule x at the end of a. */
static bool repeat(gparse *g, int32_t rule, int32_t ai, int32_t from, int64_t lo, int64_t hi) {
  if (lo > 10000 || hi > 10000)
    return g->rc = ss_error(SS_ERR_RANGE, "grammar: a repetition count above 10000"), false;
  int32_t x = wrap_tail(g, &g->rules[rule].alts[ai], from);
  if (x < 0) return false;
  for (int64_t i = 0; i < lo; i++)
    if (!push(g, &g->rules[rule].alts[ai], GE_REF, x)) return false;
  if (hi < 0) { /* s ::= x s | (empty) */
    int32_t s = new_rule(g, NULL, 0);
    balt *t = s >= 0 ? add_alt(g, s) : NULL;
    if (!t || !push(g, t, GE_REF, x) || !push(g, t, GE_REF, s) || !push(g, t, GE_END, 0)) return false;
    if (!(t = add_alt(g, s)) || !push(g, t, GE_END, 0)) return false;
    return push(g, &g->rules[rule].alts[ai], GE_REF, s);
  }
  /* o_k ::= x o_{k-1} | (empty), o_0 empty */
  int32_t prev = -1;
  for (int64_t k = 1; k <= hi - lo; k++) {
    int32_t o = new_rule(g, NULL, 0);
    balt *t = o >= 0 ? add_alt(g, o) : NULL;
    if (!t || !push(g, t, GE_REF, x) || (prev >= 0 && !push(g, t, GE_REF, prev)) ||
        !push(g, t, GE_END, 0))
      return false;
    if (!(t = add_alt(g, o)) || !push(g, t, GE_END, 0)) return false;
    prev = o;
  }
  return prev < 0 || push(g, &g->rules[rule].alts[ai], GE_REF, prev);
}

static bool parse_count(gparse *g, int64_t *v) {
  if (g->p >= g->end || *g->p < '0' || *g->p > '9') return false;
  *v = 0;
  while (g->p < g->end && *g->p >= '0' && *g->p <= '9') {
    *v = *v * 10 + (*g->p++ - '0');
    if (*v > 100000) *v = 100000;
  }
  return true;
}

static bool parse_sequence(gparse *g, int32_t rule, bool nested) {
  balt *a0 = add_alt(g, rule);
  if (!a0) return false;
  const int32_t ai = g->rules[rule].n - 1;
#define ALT (&g->rules[rule].alts[ai])
  int32_t last = -1; /* where the last element starts in ALT (for postfix operators) */
  while (g->p < g->end) {
    const char *at = g->p;
    char c = *g->p;
    if (c == '"') {
      g->p++;
      last = ALT->n;
      while (g->p < g->end && *g->p != '"') {
        uint32_t cp;
        if (!parse_char(g, &cp)) return false;
        unsigned char b[4];
        int n = utf8_put(cp, b);
        for (int i = 0; i < n; i++)
          if (!push_byte(g, ALT, b[i], b[i])) return false;
      }
      if (g->p >= g->end) return fail_at(g, at, "unterminated string literal"), false;
      g->p++;
    } else if (c == '[' || c == '.') {
      last = ALT->n;
      cprange buf[64], *r = buf;
      int32_t n = 0, cap = 64;
      bool neg = false;
      if (c == '.') {
        g->p++;
        r[n++] = (cprange){0, 0x10FFFF};
      } else {
        g->p++;
        if (g->p < g->end && *g->p == '^') neg = true, g->p++;
        while (g->p < g->end && *g->p != ']') {
          uint32_t lo, hi;
          if (!parse_char(g, &lo)) goto class_fail;
          hi = lo;
          if (g->end - g->p >= 2 && g->p[0] == '-' && g->p[1] != ']') {
            g->p++;
            if (!parse_char(g, &hi)) goto class_fail;
            if (hi < lo) {
              fail_at(g, at, "character range out of order");
              goto class_fail;
            }
          }
          if (n == cap) {
            cprange *q = r == buf ? malloc((size_t)cap * 2 * sizeof *q)
                                  : realloc(r, (size_t)cap * 2 * sizeof *q);
            if (!q) {
              g->rc = ss_error(SS_ERR_NOMEM, "out of memory");
              goto class_fail;
            }
            if (r == buf) memcpy(q, buf, sizeof buf);
            r = q;
            cap *= 2;
          }
          r[n++] = (cprange){lo, hi};
        }
        if (g->p >= g->end) {
          fail_at(g, at, "unterminated character class");
          goto class_fail;
        }
        g->p++;
      }
      bool ok = push_class(g, ALT, r, n, neg);
      if (r != buf) free(r);
      if (!ok) return false;
      goto next;
    class_fail:
      if (r != buf) free(r);
      return false;
    } else if (is_name(c)) {
      const char *s = g->p;
      while (g->p < g->end && is_name(*g->p)) g->p++;
      const size_t nlen = (size_t)(g->p - s);
      const char *q = g->p;
      while (q < g->end && (*q == ' ' || *q == '\t')) q++;
      if (g->end - q >= 3 && memcmp(q, "::=", 3) == 0) { /* the next rule starts */
        g->p = s;
        break;
      }
      int32_t id = rule_id(g, s, nlen);
      if (id < 0) return false;
      last = ALT->n;
      if (!push(g, ALT, GE_REF, id)) return false;
    } else if (c == '(') {
      g->p++;
      if (++g->depth > 256) return fail_at(g, at, "groups nested deeper than 256"), false;
      int32_t sub = new_rule(g, NULL, 0);
      if (sub < 0) return false;
      skip_space(g, true);
      if (!parse_alternates(g, sub, true)) return false;
      if (g->p >= g->end || *g->p != ')') return fail_at(g, at, "'(' without ')'"), false;
      g->p++;
      g->depth--;
      last = ALT->n;
      if (!push(g, ALT, GE_REF, sub)) return false;
    } else if (c == '*' || c == '+' || c == '?' || c == '{') {
      if (last < 0) return fail_at(g, at, "a repetition operator with nothing before it"), false;
      int64_t lo = 0, hi = -1;
      g->p++;
      if (c == '+') lo = 1;
      else if (c == '?') hi = 1;
      else if (c == '{') {
        skip_space(g, false);
        if (!parse_count(g, &lo)) return fail_at(g, at, "expected a count after '{'"), false;
        skip_space(g, false);
        if (g->p < g->end && *g->p == ',') {
          g->p++;
          skip_space(g, false);
          if (!parse_count(g, &hi)) hi = -1;
          else if (hi < lo) return fail_at(g, at, "repetition {m,n} with n < m"), false;
        } else {
          hi = lo;
        }
        skip_space(g, false);
        if (g->p >= g->end || *g->p != '}') return fail_at(g, at, "expected '}'"), false;
        g->p++;
      }
      if (!repeat(g, rule, ai, last, lo, hi)) return false;
      last = -1;
    } else {
      break;
    }
  next:
    skip_space(g, nested);
  }
  return push(g, ALT, GE_END, 0);
#undef ALT
}

static bool parse_alternates(gparse *g, int32_t rule, bool nested) {
  if (!parse_sequence(g, rule, nested)) return false;
  while (g->p < g->end && *g->p == '|') {
    g->p++;
    skip_space(g, true);
    if (!parse_sequence(g, rule, nested)) return false;
  }
  return true;
}

/* ------------------------------------------------------------------------ */
/* Checks and the compiled form                                               */

/* Left recursion would make the matcher's expansion loop: a rule reaches
 * itself through references at the left of alternatives whose earlier
 * elements can all match nothing. */
static int check_left_recursion(ss_grammar *G, brule *names) {
  bool *nullable = calloc((size_t)G->n_rules, 1);
  int8_t *mark = calloc((size_t)G->n_rules, 1);
  int32_t *stack = malloc((size_t)G->n_rules * 2 * sizeof *stack);
  if (!nullable || !mark || !stack) {
    free(nullable), free(mark), free(stack);
    return ss_error(SS_ERR_NOMEM, "out of memory");
  }
  for (bool changed = true; changed;) {
    changed = false;
    for (int32_t r = 0; r < G->n_rules; r++) {
      if (nullable[r]) continue;
      for (int32_t a = 0; a < G->nalt[r] && !nullable[r]; a++) {
        const gelem *e = &G->elems[G->alts[G->alt0[r] + a]];
        while (e->kind == GE_REF && nullable[e->v]) e++;
        if (e->kind == GE_END) nullable[r] = changed = true;
      }
    }
  }
  int rc = 0;
  /* depth-first over the left edges; mark 1 = on the path, 2 = done */
  for (int32_t r0 = 0; r0 < G->n_rules && !rc; r0++) {
    if (mark[r0]) continue;
    int32_t sp = 0;
    stack[sp++] = r0, stack[sp++] = 0;
    mark[r0] = 1;
    while (sp && !rc) {
      int32_t r = stack[sp - 2], k = stack[sp - 1];
      /* the k-th left reference of r */
      int32_t found = -1, idx = 0;
      for (int32_t a = 0; a < G->nalt[r] && found < 0; a++) {
        for (const gelem *e = &G->elems[G->alts[G->alt0[r] + a]]; e->kind == GE_REF; e++) {
          if (idx++ == k) {
            found = e->v;
            break;
          }
          if (!nullable[e->v]) break;
        }
      }
      if (found < 0) {
        mark[r] = 2;
        sp -= 2;
        continue;
      }
      stack[sp - 1] = k + 1;
      if (mark[found] == 1) {
        const char *nm = NULL;
        for (int32_t i = sp - 2; i >= 0 && !nm; i -= 2) nm = names[stack[i]].name;
        rc = ss_error(SS_ERR_INVALID, "grammar: rule '%s' is left-recursive (not supported)",
                      nm ? nm : "?");
      } else if (!mark[found]) {
        mark[found] = 1;
        stack[sp++] = found, stack[sp++] = 0;
      }
    }
  }
  free(nullable), free(mark), free(stack);
  return rc;
}

void ss_grammar_free(ss_grammar *g) {
  if (!g) return;
  free(g->alt0);
  free(g->nalt);
  free(g->alts);
  free(g->elems);
  free(g->sets);
  free(g);
}

static void gparse_free(gparse *g) {
  for (int32_t i = 0; i < g->n_rules; i++) {
    for (int32_t a = 0; a < g->rules[i].n; a++) free(g->rules[i].alts[a].e);
    free(g->rules[i].alts);
    free(g->rules[i].name);
  }
  free(g->rules);
  free(g->sets);
}

int ss_grammar_parse(const char *text, size_t len, ss_grammar **out) {
  *out = NULL;
  gparse g = {.p = text, .start = text, .end = text + len};
  skip_space(&g, true);
  while (g.p < g.end && !g.rc) {
    const char *at = g.p, *s = g.p;
    while (g.p < g.end && is_name(*g.p)) g.p++;
    if (g.p == s) {
      fail_at(&g, at, "expected a rule name");
      break;
    }
    int32_t id = rule_id(&g, s, (size_t)(g.p - s));
    if (id < 0) break;
    if (g.rules[id].defined) {
      fail_at(&g, at, "rule defined twice");
      break;
    }
    g.rules[id].defined = true;
    skip_space(&g, false);
    if (g.end - g.p < 3 || memcmp(g.p, "::=", 3) != 0) {
      fail_at(&g, g.p, "expected '::='");
      break;
    }
    g.p += 3;
    skip_space(&g, true);
    if (!parse_alternates(&g, id, false)) break;
    if (g.p < g.end && *g.p != '\n' && !is_name(*g.p)) {
      fail_at(&g, g.p, "unexpected character");
      break;
    }
    skip_space(&g, true);
  }
  int rc = g.rc;
  int32_t root = -1;
  for (int32_t i = 0; !rc && i < g.n_rules; i++) {
    if (g.rules[i].name && !g.rules[i].defined)
      rc = ss_error(SS_ERR_INVALID, "grammar: rule '%s' is used but not defined", g.rules[i].name);
    if (g.rules[i].name && strcmp(g.rules[i].name, "root") == 0) root = i;
  }
  if (!rc && root < 0) rc = ss_error(SS_ERR_INVALID, "grammar: no rule named 'root'");
  ss_grammar *G = NULL;
  if (!rc) {
    G = calloc(1, sizeof *G);
    int64_t n_alts = 0, n_el = 0;
    for (int32_t i = 0; i < g.n_rules; i++) {
      n_alts += g.rules[i].n;
      for (int32_t a = 0; a < g.rules[i].n; a++) n_el += g.rules[i].alts[a].n;
    }
    if (G) {
      G->n_rules = g.n_rules;
      G->root = root;
      G->alt0 = malloc((size_t)g.n_rules * sizeof *G->alt0);
      G->nalt = malloc((size_t)g.n_rules * sizeof *G->nalt);
      G->alts = malloc((size_t)(n_alts + 1) * sizeof *G->alts);
      G->elems = malloc((size_t)(n_el + 1) * sizeof *G->elems);
    }
    if (!G || !G->alt0 || !G->nalt || !G->alts || !G->elems) {
      rc = ss_error(SS_ERR_NOMEM, "out of memory");
    } else {
      int32_t na = 0, ne = 0;
      for (int32_t i = 0; i < g.n_rules; i++) {
        G->alt0[i] = na;
        G->nalt[i] = g.rules[i].n;
        for (int32_t a = 0; a < g.rules[i].n; a++) {
          G->alts[na++] = ne;
          memcpy(G->elems + ne, g.rules[i].alts[a].e, (size_t)g.rules[i].alts[a].n * sizeof *G->elems);
          ne += g.rules[i].alts[a].n;
        }
      }
      G->n_elems = ne;
      G->sets = g.sets;
      G->n_sets = g.n_sets;
      g.sets = NULL;
      rc = check_left_recursion(G, g.rules);
    }
  }
  gparse_free(&g);
  if (rc) {
    ss_grammar_free(G);
    return rc;
  }
  *out = G;
  return 0;
}

void ss_grammar_gbnf_literal(ss_strbuf *out, const char *p, size_t n) {
  ss_strbuf_append(out, "\"", 1);
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)p[i];
    if (c == '"' || c == '\\' || c < 0x20 || c >= 0x7F) {
      /* bytes above 0x7F pass through as UTF-8 when they form characters;
       * control bytes and the quote are escaped */
      if (c >= 0x80) ss_strbuf_append(out, (const char *)&p[i], 1);
      else ss_strbuf_printf(out, "\\x%02X", c);
    } else {
      ss_strbuf_append(out, (const char *)&p[i], 1);
    }
  }
  ss_strbuf_append(out, "\"", 1);
}
