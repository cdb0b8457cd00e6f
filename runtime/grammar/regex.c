/* Regular expressions (the common Python/PCRE subset) to GBNF: the whole
 * string must match, as with re.fullmatch. */
#include <string.h>

#include "runtime/base/status.h"
#include "runtime/grammar/grammar.h"

typedef struct rx {
  const unsigned char *p, *start, *end;
  ss_strbuf *out;
  int depth;
  int rc;
} rx;

static bool rx_fail(rx *r, int code, const char *what) {
  if (!r->rc)
    r->rc = ss_error(code, "regex: %s at offset %zu", what, (size_t)(r->p - r->start));
  return false;
}

/* One UTF-8 character as a code point (invalid bytes are taken one by one). */
static uint32_t rx_char(rx *r) {
  unsigned char c = *r->p++;
  int n = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 1;
  if (n == 1 || r->end - r->p < n - 1) return c;
  uint32_t v = c & (0x3F >> (n - 1));
  for (int i = 1; i < n; i++) v = v << 6 | (*r->p++ & 0x3F);
  return v;
}

static void put_cp(ss_strbuf *o, uint32_t c) { ss_strbuf_printf(o, "\\U%08X", c); }

static bool rx_hex(rx *r, int n, uint32_t *v) {
  *v = 0;
  for (int i = 0; i < n; i++) {
    if (r->p >= r->end) return rx_fail(r, SS_ERR_INVALID, "bad hexadecimal escape");
    unsigned char c = *r->p++;
    int h = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10
          : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
    if (h < 0) return rx_fail(r, SS_ERR_INVALID, "bad hexadecimal escape");
    *v = *v * 16 + (uint32_t)h;
  }
  return true;
}

/* The class text (without brackets) of \d \w \s, or NULL. */
static const char *shorthand(unsigned char c) {
  switch (c) {
    case 'd': case 'D': return "0-9";
    case 'w': case 'W': return "a-zA-Z0-9_";
    case 's': case 'S': return " \\t\\n\\r\\x0B\\x0C";
    default: return NULL;
  }
}

/* An escape after '\' that stands for one character: its code point. */
static bool rx_escape_char(rx *r, unsigned char e, uint32_t *v) {
  switch (e) {
    case 'n': *v = '\n'; return true;
    case 't': *v = '\t'; return true;
    case 'r': *v = '\r'; return true;
    case 'f': *v = '\f'; return true;
    case 'v': *v = '\v'; return true;
    case 'a': *v = '\a'; return true;
    case '0': *v = 0; return true;
    case 'x': return rx_hex(r, 2, v);
    case 'u': return rx_hex(r, 4, v);
    case 'U': return rx_hex(r, 8, v);
    default: break;
  }
  if ((e >= 'a' && e <= 'z') || (e >= 'A' && e <= 'Z') || (e >= '1' && e <= '9'))
    return rx_fail(r, SS_ERR_UNSUPPORTED, "unsupported escape (back references, \\b and the "
                   "like cannot be constrained)");
  *v = e;
  return true;
}

static bool rx_class(rx *r) {
  ss_strbuf *o = r->out;
  ss_strbuf_append(o, "[", 1);
  if (r->p < r->end && *r->p == '^') ss_strbuf_append(o, "^", 1), r->p++;
  bool first = true;
  while (r->p < r->end && (*r->p != ']' || first)) {
    first = false;
    uint32_t lo;
    if (*r->p == '\\') {
      r->p++;
      if (r->p >= r->end) return rx_fail(r, SS_ERR_INVALID, "'\\' at the end");
      unsigned char e = *r->p++;
      const char *sh = shorthand(e);
      if (sh) {
        if (e < 'a') return rx_fail(r, SS_ERR_UNSUPPORTED, "\\D, \\W or \\S inside a class");
        ss_strbuf_printf(o, "%s", sh);
        continue;
      }
      if (e == 'b') lo = '\b';
      else if (!rx_escape_char(r, e, &lo)) return false;
    } else {
      lo = rx_char(r);
    }
    put_cp(o, lo);
    if (r->end - r->p >= 2 && r->p[0] == '-' && r->p[1] != ']') {
      r->p++;
      uint32_t hi;
      if (*r->p == '\\') {
        r->p++;
        if (r->p >= r->end || !rx_escape_char(r, *r->p++, &hi)) return rx_fail(r, SS_ERR_INVALID, "bad range");
      } else {
        hi = rx_char(r);
      }
      if (hi < lo) return rx_fail(r, SS_ERR_INVALID, "character range out of order");
      ss_strbuf_append(o, "-", 1);
      put_cp(o, hi);
    }
  }
  if (r->p >= r->end) return rx_fail(r, SS_ERR_INVALID, "'[' without ']'");
  r->p++;
  ss_strbuf_append(o, "]", 1);
  return true;
}

static bool rx_alt(rx *r);

static bool rx_atom(rx *r) {
  ss_strbuf *o = r->out;
  unsigned char c = *r->p;
  if (c == '(') {
    r->p++;
    if (r->p < r->end && *r->p == '?') {
      r->p++;
      if (r->p < r->end && *r->p == ':') r->p++;
      else if (r->p < r->end && (*r->p == 'P' || *r->p == '<') &&
               !(r->p[0] == '<' && r->p + 1 < r->end && (r->p[1] == '=' || r->p[1] == '!'))) {
        while (r->p < r->end && *r->p != '>') r->p++; /* a named group */
        if (r->p >= r->end) return rx_fail(r, SS_ERR_INVALID, "unterminated group name");
        r->p++;
      } else {
        return rx_fail(r, SS_ERR_UNSUPPORTED, "look-around and inline flags are not supported");
      }
    }
    if (++r->depth > 200) return rx_fail(r, SS_ERR_RANGE, "groups nested deeper than 200");
    ss_strbuf_append(o, "(", 1);
    if (!rx_alt(r)) return false;
    if (r->p >= r->end || *r->p != ')') return rx_fail(r, SS_ERR_INVALID, "'(' without ')'");
    r->p++;
    r->depth--;
    ss_strbuf_append(o, ")", 1);
    return true;
  }
  if (c == '[') {
    r->p++;
    return rx_class(r);
  }
  if (c == '.') {
    r->p++;
    ss_strbuf_printf(o, "[^\\n]");
    return true;
  }
  if (c == '\\') {
    r->p++;
    if (r->p >= r->end) return rx_fail(r, SS_ERR_INVALID, "'\\' at the end");
    unsigned char e = *r->p++;
    const char *sh = shorthand(e);
    if (sh) {
      ss_strbuf_printf(o, "[%s%s]", e < 'a' ? "^" : "", sh);
      return true;
    }
    uint32_t v;
    if (!rx_escape_char(r, e, &v)) return false;
    ss_strbuf_append(o, "[", 1);
    put_cp(o, v);
    ss_strbuf_append(o, "]", 1);
    return true;
  }
  if (c == '*' || c == '+' || c == '?' || c == '{')
    return rx_fail(r, SS_ERR_INVALID, "a repetition with nothing before it");
  uint32_t v = rx_char(r);
  ss_strbuf_append(o, "[", 1);
  put_cp(o, v);
  ss_strbuf_append(o, "]", 1);
  return true;
}

static bool rx_seq(rx *r) {
  ss_strbuf *o = r->out;
  ss_strbuf_append(o, "(\"\"", 3);
  while (r->p < r->end && *r->p != '|' && *r->p != ')') {
    if (*r->p == '^' && r->p == r->start) { /* anchors at the ends: fullmatch anyway */
      r->p++;
      continue;
    }
    if (*r->p == '$' && r->p + 1 == r->end) {
      r->p++;
      continue;
    }
    if (*r->p == '^' || *r->p == '$') return rx_fail(r, SS_ERR_UNSUPPORTED, "an anchor inside the pattern");
    ss_strbuf_append(o, " ", 1);
    if (!rx_atom(r)) return false;
    if (r->p < r->end && (*r->p == '*' || *r->p == '+' || *r->p == '?')) {
      ss_strbuf_append(o, (const char *)r->p, 1);
      r->p++;
    } else if (r->p < r->end && *r->p == '{') {
      const unsigned char *q = r->p + 1;
      while (q < r->end && ((*q >= '0' && *q <= '9') || *q == ',')) q++;
      if (q >= r->end || *q != '}' || q == r->p + 1 || r->p[1] == ',')
        return rx_fail(r, SS_ERR_INVALID, "bad {m,n} repetition");
      ss_strbuf_append(o, (const char *)r->p, (size_t)(q + 1 - r->p));
      r->p = q + 1;
    } else {
      continue;
    }
    if (r->p < r->end && (*r->p == '?' || *r->p == '+')) r->p++; /* lazy or possessive: same language */
    if (r->p < r->end && (*r->p == '*' || *r->p == '+' || *r->p == '?' || *r->p == '{'))
      return rx_fail(r, SS_ERR_INVALID, "two repetitions in a row");
  }
  ss_strbuf_append(o, ")", 1);
  return true;
}

static bool rx_alt(rx *r) {
  if (!rx_seq(r)) return false;
  while (r->p < r->end && *r->p == '|') {
    r->p++;
    ss_strbuf_append(r->out, " | ", 3);
    if (!rx_seq(r)) return false;
  }
  return true;
}

int ss_grammar_regex_to_gbnf(const char *re, size_t len, const char *rule, ss_strbuf *out) {
  rx r = {.p = (const unsigned char *)re, .start = (const unsigned char *)re,
          .end = (const unsigned char *)re + len, .out = out};
  ss_strbuf_printf(out, "%s ::= ", rule);
  if (!rx_alt(&r)) return r.rc;
  if (r.p < r.end) return rx_fail(&r, SS_ERR_INVALID, "')' without '('"), r.rc;
  ss_strbuf_append(out, "\n", 1);
  return 0;
}
