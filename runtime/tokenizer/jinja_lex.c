/* The Jinja lexer: template text into data and tag tokens, with the
 * whitespace control transformers configures (trim_blocks: the first newline
 * after a block or comment tag goes; lstrip_blocks: spaces and tabs before a
 * block or comment tag on its line go; "-" in a tag strips all whitespace on
 * that side, "+" turns lstrip_blocks / trim_blocks off for that tag). */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/tokenizer/jinja_internal.h"

typedef struct lexer {
  jarena *a;
  const char *src;
  size_t len, pos;
  /* line bookkeeping, advanced monotonically */
  size_t lc_pos, lc_line_start;
  int lc_line;
  jtok *toks;
  size_t n, cap;
  char *err;
  size_t errlen;
  jmp_buf jb;
} lexer;

static void linecol(lexer *L, size_t pos, int *line, int *col) {
  if (pos < L->lc_pos) L->lc_pos = 0, L->lc_line = 1, L->lc_line_start = 0;
  for (; L->lc_pos < pos && L->lc_pos < L->len; L->lc_pos++)
    if (L->src[L->lc_pos] == '\n') L->lc_line++, L->lc_line_start = L->lc_pos + 1;
  *line = L->lc_line;
  *col = (int)(pos - L->lc_line_start) + 1;
}

static _Noreturn void lfail(lexer *L, size_t pos, const char *fmt, ...) {
  int line, col;
  linecol(L, pos, &line, &col);
  int k = snprintf(L->err, L->errlen, "line %d, column %d: ", line, col);
  va_list ap;
  va_start(ap, fmt);
  if (k >= 0 && (size_t)k < L->errlen) vsnprintf(L->err + k, L->errlen - (size_t)k, fmt, ap);
  va_end(ap);
  longjmp(L->jb, 1);
}

static jtok *push(lexer *L, jtok_kind kind, size_t pos) {
  if (L->n == L->cap) {
    size_t cap = L->cap ? L->cap * 2 : 256;
    jtok *t = ja_alloc(L->a, cap * sizeof *t);
    if (L->n) memcpy(t, L->toks, L->n * sizeof *t);
    L->toks = t;
    L->cap = cap;
  }
  jtok *t = &L->toks[L->n++];
  memset(t, 0, sizeof *t);
  t->kind = kind;
  linecol(L, pos, &t->line, &t->col);
  return t;
}

static bool is_ws(char ch) {
  return ch == ' ' || ch == '\t' || ch == '\n' || ch == '\r' || ch == '\v' || ch == '\f';
}

/* Skips whitespace after a "-" closing tag; returns whether it ended a line. */
static bool eat_ws(lexer *L) {
  size_t p = L->pos;
  while (L->pos < L->len && is_ws(L->src[L->pos])) L->pos++;
  return L->pos > p && L->src[L->pos - 1] == '\n';
}

static void lex_string(lexer *L) {
  char q = L->src[L->pos];
  size_t start = L->pos++;
  char *buf = ja_alloc(L->a, L->len - L->pos + 1);
  size_t n = 0;
  for (;;) {
    if (L->pos >= L->len) lfail(L, start, "unterminated string literal");
    char ch = L->src[L->pos++];
    if (ch == q) break;
    if (ch != '\\') {
      buf[n++] = ch;
      continue;
    }
    if (L->pos >= L->len) lfail(L, start, "unterminated string literal");
    char e = L->src[L->pos++];
    switch (e) {
    case 'n': buf[n++] = '\n'; break;
    case 't': buf[n++] = '\t'; break;
    case 'r': buf[n++] = '\r'; break;
    case '0': buf[n++] = '\0'; break;
    case 'a': buf[n++] = '\a'; break;
    case 'b': buf[n++] = '\b'; break;
    case 'f': buf[n++] = '\f'; break;
    case 'v': buf[n++] = '\v'; break;
    case '\\': case '\'': case '"': buf[n++] = e; break;
    case '\n': break;
    case 'x': case 'u': case 'U': {
      int digits = e == 'x' ? 2 : e == 'u' ? 4 : 8;
      uint32_t cp = 0;
      for (int i = 0; i < digits; i++) {
        char h = L->pos < L->len ? L->src[L->pos] : 0;
        int v = h >= '0' && h <= '9' ? h - '0' : h >= 'a' && h <= 'f' ? h - 'a' + 10
              : h >= 'A' && h <= 'F' ? h - 'A' + 10 : -1;
        if (v < 0) lfail(L, L->pos, "bad \\%c escape in a string literal", e);
        cp = cp * 16 + (uint32_t)v;
        L->pos++;
      }
      if (cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
        lfail(L, L->pos, "escape \\%c%X is not a Unicode scalar value", e, cp);
      if (cp < 0x80) buf[n++] = (char)cp;
      else if (cp < 0x800) buf[n++] = (char)(0xC0 | cp >> 6), buf[n++] = (char)(0x80 | (cp & 63));
      else if (cp < 0x10000)
        buf[n++] = (char)(0xE0 | cp >> 12), buf[n++] = (char)(0x80 | ((cp >> 6) & 63)),
        buf[n++] = (char)(0x80 | (cp & 63));
      else
        buf[n++] = (char)(0xF0 | cp >> 18), buf[n++] = (char)(0x80 | ((cp >> 12) & 63)),
        buf[n++] = (char)(0x80 | ((cp >> 6) & 63)), buf[n++] = (char)(0x80 | (cp & 63));
      break;
    }
    default: buf[n++] = '\\'; buf[n++] = e; break; /* Python keeps unknown escapes */
    }
  }
  jtok *t = push(L, JT_STRING, start);
  t->s = buf;
  t->len = n;
}

static void lex_number(lexer *L) {
  size_t start = L->pos;
  char *buf = ja_alloc(L->a, 64);
  size_t n = 0;
  bool is_float = false;
  const char *s = L->src;
  while (L->pos < L->len) {
    char ch = s[L->pos];
    if (ch >= '0' && ch <= '9') buf[n++] = ch;
    else if (ch == '_' && L->pos + 1 < L->len && s[L->pos + 1] >= '0' && s[L->pos + 1] <= '9') {}
    else if (ch == '.' && !is_float && L->pos + 1 < L->len && s[L->pos + 1] >= '0' &&
             s[L->pos + 1] <= '9') {
      is_float = true;
      buf[n++] = ch;
    } else if ((ch == 'e' || ch == 'E') && L->pos + 1 < L->len &&
               ((s[L->pos + 1] >= '0' && s[L->pos + 1] <= '9') ||
                ((s[L->pos + 1] == '+' || s[L->pos + 1] == '-') && L->pos + 2 < L->len &&
                 s[L->pos + 2] >= '0' && s[L->pos + 2] <= '9'))) {
      is_float = true;
      buf[n++] = ch;
      L->pos++;
      buf[n++] = s[L->pos];
    } else break;
    L->pos++;
    if (n > 60) lfail(L, start, "number literal longer than 60 characters");
  }
  jtok *t = push(L, is_float ? JT_FLOAT : JT_INT, start);
  if (is_float) t->f = strtod(buf, NULL);
  else {
    errno = 0;
    char *end;
    unsigned long long v = strtoull(buf, &end, 10);
    if (v > INT64_MAX || errno) lfail(L, start, "integer literal %s exceeds 64 bits", buf);
    t->i = (int64_t)v;
  }
}

static const char *k_ops2[] = {"**", "//", "==", "!=", "<=", ">="};

/* Lexes the inside of a tag up to and including its end. */
static void lex_tag(lexer *L, bool block, size_t open_pos) {
  int depth = 0;
  for (;;) {
    while (L->pos < L->len && is_ws(L->src[L->pos])) L->pos++;
    if (L->pos >= L->len) lfail(L, open_pos, "unclosed %s tag", block ? "{%" : "{{");
    const char *s = L->src + L->pos;
    size_t rest = L->len - L->pos;
    if (depth == 0) {
      const char *end = block ? "%}" : "}}";
      bool minus = rest >= 3 && s[0] == '-' && memcmp(s + 1, end, 2) == 0;
      bool plus = block && rest >= 3 && s[0] == '+' && memcmp(s + 1, end, 2) == 0;
      if (minus || plus || (rest >= 2 && memcmp(s, end, 2) == 0)) {
        push(L, block ? JT_BLOCK_END : JT_VAR_END, L->pos);
        L->pos += (minus || plus) ? 3 : 2;
        if (minus) {
          eat_ws(L);
        } else if (block && !plus && L->pos < L->len && L->src[L->pos] == '\n') {
          L->pos++; /* trim_blocks */
        }
        return;
      }
    }
    char ch = s[0];
    if (ch == '\'' || ch == '"') {
      lex_string(L);
    } else if (ch >= '0' && ch <= '9') {
      lex_number(L);
    } else if ((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || ch == '_') {
      size_t k = 1;
      while (k < rest && ((s[k] >= 'a' && s[k] <= 'z') || (s[k] >= 'A' && s[k] <= 'Z') ||
                          (s[k] >= '0' && s[k] <= '9') || s[k] == '_'))
        k++;
      jtok *t = push(L, JT_NAME, L->pos);
      t->s = ja_strndup(L->a, s, k);
      t->len = k;
      L->pos += k;
    } else {
      size_t k = 0;
      for (size_t i = 0; i < sizeof k_ops2 / sizeof k_ops2[0]; i++)
        if (rest >= 2 && memcmp(s, k_ops2[i], 2) == 0) k = 2;
      if (!k && strchr("+-*/%~|.,:()[]{}=<>", ch) && ch) k = 1;
      if (!k) lfail(L, L->pos, "unexpected character '%c' inside a tag", ch);
      if (ch == '(' || ch == '[' || ch == '{') depth++;
      if ((ch == ')' || ch == ']' || ch == '}') && depth > 0) depth--;
      jtok *t = push(L, JT_OP, L->pos);
      t->s = ja_strndup(L->a, s, k);
      t->len = k;
      L->pos += k;
    }
  }
}

jtok *jinja_lex(jarena *a, const char *src, size_t len, size_t *count, char *err, size_t errlen) {
  lexer L = {.a = a, .src = src, .len = len, .lc_line = 1, .err = err, .errlen = errlen};
  if (setjmp(L.jb)) return NULL;
  bool line_start = true;
  while (L.pos < L.len) {
    /* the next tag opening */
    size_t k = L.pos;
    int kind = 0; /* 1 var, 2 block, 3 comment */
    for (; k + 1 < L.len; k++)
      if (L.src[k] == '{') {
        char n = L.src[k + 1];
        if (n == '{') { kind = 1; break; }
        if (n == '%') { kind = 2; break; }
        if (n == '#') { kind = 3; break; }
      }
    if (!kind) k = L.len;
    size_t tstart = L.pos, tend = k;
    char sign = kind && k + 2 < L.len ? L.src[k + 2] : 0;
    if (kind && sign == '-') {
      while (tend > tstart && is_ws(L.src[tend - 1])) tend--;
    } else if ((kind == 2 || kind == 3) && sign != '+') {
      size_t lp = tend;
      while (lp > tstart && L.src[lp - 1] != '\n') lp--;
      bool has_nl = lp > tstart;
      bool only_ws = true;
      for (size_t i = lp; i < tend; i++)
        if (L.src[i] != ' ' && L.src[i] != '\t' && L.src[i] != '\r' && L.src[i] != '\v' &&
            L.src[i] != '\f')
          only_ws = false;
      if ((has_nl || line_start) && only_ws) tend = lp;
    }
    if (tend > tstart) {
      jtok *t = push(&L, JT_TEXT, tstart);
      t->s = L.src + tstart;
      t->len = tend - tstart;
    }
    if (!kind) break;
    L.pos = k + 2 + ((sign == '-' || sign == '+') ? 1 : 0);
    if (kind == 3) {
      const char *e = NULL;
      for (size_t i = L.pos; i + 1 < L.len; i++)
        if (L.src[i] == '#' && L.src[i + 1] == '}') {
          e = L.src + i;
          break;
        }
      if (!e) lfail(&L, k, "unclosed comment");
      bool minus = e > L.src + L.pos && e[-1] == '-';
      L.pos = (size_t)(e - L.src) + 2;
      if (minus) {
        line_start = eat_ws(&L);
      } else {
        line_start = L.pos < L.len && L.src[L.pos] == '\n';
        if (line_start) L.pos++;
      }
      continue;
    }
    push(&L, kind == 1 ? JT_VAR_BEGIN : JT_BLOCK_BEGIN, k);
    lex_tag(&L, kind == 2, k);
    /* Whether the closing tag consumed a newline (trim_blocks or "-"). */
    line_start = L.src[L.pos - 1] == '\n';
  }
  push(&L, JT_EOF, L.len);
  *count = L.n;
  return L.toks;
}
