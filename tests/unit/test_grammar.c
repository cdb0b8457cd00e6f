/* Grammar engine: GBNF and regular expressions on hand-written strings that
 * must be accepted or rejected, grammars that must be refused, and the token
 * mask of a small vocabulary (tokens spanning elements and characters, the
 * end-of-generation token only when complete). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/grammar/grammar.h"

/* Whole-string match: every byte accepted and the grammar complete at the end. */
static bool matches(const char *gbnf, const char *s) {
  ss_grammar *g = NULL;
  ss_grammar_state *st = NULL;
  assert_int_equal(ss_grammar_parse(gbnf, strlen(gbnf), &g), 0);
  assert_int_equal(ss_grammar_state_create(g, &st), 0);
  bool ok = true;
  /* byte by byte, so every split point inside characters is exercised */
  for (size_t i = 0; s[i] && ok; i++) ok = ss_grammar_state_accept(st, s + i, 1);
  ok = ok && ss_grammar_state_complete(st);
  ss_grammar_state_free(st);
  return ok;
}

static bool re_matches(const char *re, const char *s) {
  ss_strbuf b = {0};
  assert_int_equal(ss_grammar_regex_to_gbnf(re, strlen(re), "root", &b), 0);
  bool ok = matches(b.p, s);
  ss_strbuf_free(&b);
  return ok;
}

typedef struct tcase {
  const char *s;
  bool ok;
} tcase;

static void check_cases(const char *gbnf, const tcase *c, size_t n) {
  for (size_t i = 0; i < n; i++) {
    if (matches(gbnf, c[i].s) != c[i].ok)
      fail_msg("grammar %s: '%s' should be %s", gbnf, c[i].s, c[i].ok ? "accepted" : "rejected");
  }
}

static void test_gbnf_basics(void **st) {
  (void)st;
  const char *g = "root ::= greet \" \" name (\"!\" | \"?\")?\n"
                  "greet ::= \"hi\" | \"hello\"  # a comment\n"
                  "name ::= [A-Z] [a-z]*\n";
  const tcase c[] = {{"hi Bob", true},  {"hello Al!", true}, {"hi B?", true},   {"hi bob", false},
                     {"hi Bob!!", false}, {"hiBob", false},   {"hello", false},  {"", false}};
  check_cases(g, c, sizeof c / sizeof *c);
  const char *rep = "root ::= [0-9]{2,4} (\",\" [a-c]+){1,2}\n";
  const tcase r[] = {{"12,a", true},   {"1234,abc,c", true}, {"1,a", false},
                     {"12345,a", false}, {"12,a,b,c", false}, {"12,", false}};
  check_cases(rep, r, sizeof r / sizeof *r);
  /* nested groups across lines, right recursion (deep input, constant stacks) */
  const char *nest = "root ::= (\n  \"(\" root \")\"\n  | \"x\"\n) tail\ntail ::= \"y\" tail | \"\"\n";
  const tcase n[] = {{"x", true}, {"((x))yy", true}, {"((x)", false}, {"(x))", false}};
  check_cases(nest, n, sizeof n / sizeof *n);
  char deep[4000];
  memset(deep, 'y', sizeof deep - 1);
  deep[0] = 'x';
  deep[sizeof deep - 1] = 0;
  assert_true(matches(nest, deep));
}

static void test_gbnf_utf8(void **st) {
  (void)st;
  /* literals and classes beyond ASCII, negated classes, '.', escapes */
  const char *g = "root ::= \"\xc3\xa9t\xc3\xa9 \" [\xce\xb1-\xcf\x89]+ [^a-z] . \"\\u20AC\\x41\"\n";
  const tcase c[] = {{"\xc3\xa9t\xc3\xa9 \xce\xb1\xce\xb2Z\xf0\x9f\x98\x80\xe2\x82\xac" "A", true},
                     {"\xc3\xa9t\xc3\xa9 \xce\xb1q\xe4\xb8\xad\xe2\x82\xac" "A", false},
                     {"\xc3\xa9t\xc3\xa9 \xcf\x89\xe4\xb8\xad" "a\xe2\x82\xac" "A", true},
                     {"ete \xce\xb1" "Zx\xe2\x82\xac" "A", false},
                     /* a lone continuation byte is no character */
                     {"\xc3\xa9t\xc3\xa9 \xce\xb1\x80x\xe2\x82\xac" "A", false}};
  check_cases(g, c, sizeof c / sizeof *c);
  /* [^"] must take every character but the quote, including 4-byte ones */
  const char *q = "root ::= \"\\\"\" [^\"]* \"\\\"\"\n";
  const tcase d[] = {{"\"a\xf0\x9f\x98\x80\xd7\x90\"", true}, {"\"a\"b\"", false},
                     {"\"\xed\xa0\x80\"", false} /* a surrogate's encoding */};
  check_cases(q, d, sizeof d / sizeof *d);
}

static void test_gbnf_refused(void **st) {
  (void)st;
  const char *bad[] = {
      "root ::= root \"a\" | \"b\"\n",          /* left-recursive */
      "root ::= x \"a\"\nx ::= \"\" | root\n",  /* left-recursive through an empty rule */
      "root ::= undefined\n",                   /* no such rule */
      "start ::= \"a\"\n",                      /* no root */
      "root ::= \"a\n",                         /* unterminated literal */
      "root ::= [a-\n",                         /* unterminated class */
      "root ::= (\"a\"\n",                      /* unclosed group */
      "root ::= \"a\"{3,1}\n",                  /* n < m */
      "root ::= \"\\q\"\n",                     /* unknown escape */
      "root ::= \"a\"\nroot ::= \"b\"\n",       /* defined twice */
  };
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
    ss_grammar *g = NULL;
    if (ss_grammar_parse(bad[i], strlen(bad[i]), &g) == 0) {
      ss_grammar_free(g);
      fail_msg("grammar %zu was accepted: %s", i, bad[i]);
    }
  }
  /* groups nested past the parser's limit: an error, not a deep recursion */
  char deep[2000] = "root ::= ";
  for (int i = 0; i < 300; i++) strcat(deep, "(");
  strcat(deep, "\"a\"");
  for (int i = 0; i < 300; i++) strcat(deep, ")");
  ss_grammar *g = NULL;
  assert_int_not_equal(ss_grammar_parse(deep, strlen(deep), &g), 0);
}

static void test_regex(void **st) {
  (void)st;
  struct {
    const char *re, *s;
    bool ok;
  } c[] = {
      {"\\d{3}-\\d{4}", "555-1234", true},     {"\\d{3}-\\d{4}", "555-123", false},
      {"^(cat|dog)s?$", "dogs", true},          {"^(cat|dog)s?$", "cow", false},
      {"[A-Z][a-z]+ [A-Z]\\.", "John Q.", true}, {"[A-Z][a-z]+ [A-Z]\\.", "John Qx", false},
      {"(?:ab)+c*", "ababcc", true},            {"(?:ab)+c*", "abac", false},
      {"\\w+@\\w+\\.com", "a_1@b2.com", true},   {"\\w+@\\w+\\.com", "a-1@b.com", false},
      {"[^0-9\\s]{2,}", "ab\xc3\xa9", true},     {"[^0-9\\s]{2,}", "a b", false},
      {"a.c", "a\xe2\x82\xac" "c", true},        {"a.c", "a\nc", false},
      {"x{2}y?|z", "z", true},                  {"x{2}y?|z", "xxy", true},
      {"x{2}y?|z", "xz", false},                {"[-+]?[0-9]*\\.?[0-9]+", "-3.25", true},
      {"[-+]?[0-9]*\\.?[0-9]+", "3.", false},   {"\\(\\)\\[\\]", "()[]", true},
  };
  for (size_t i = 0; i < sizeof c / sizeof *c; i++)
    if (re_matches(c[i].re, c[i].s) != c[i].ok)
      fail_msg("regex %s: '%s' should be %s", c[i].re, c[i].s, c[i].ok ? "accepted" : "rejected");
  const char *bad[] = {"(a", "a)", "*a", "(?=a)b", "(a)\\1", "a{2", "[a"};
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
    ss_strbuf b = {0};
    int rc = ss_grammar_regex_to_gbnf(bad[i], strlen(bad[i]), "root", &b);
    ss_grammar *g = NULL;
    if (!rc) rc = ss_grammar_parse(b.p, b.len, &g);
    ss_grammar_free(g);
    ss_strbuf_free(&b);
    if (!rc) fail_msg("regex %s was accepted", bad[i]);
  }
}

/* The mask over a hand-made vocabulary, checked against the tokens that
 * should be allowed, written out here. */
static void test_mask(void **st) {
  (void)st;
  const char *pieces[] = {"{", "\"", "\"a", "a", "ab", "\"}", "}", "b\"", "\xc3", "\xa9", "\xc3\xa9",
                          "", "</s>", "{\"", " "};
  enum { EOG = 12 };
  const int n = (int)(sizeof pieces / sizeof *pieces);
  size_t nb[16];
  bool eog[16] = {0};
  for (int i = 0; i < n; i++) nb[i] = strlen(pieces[i]);
  eog[EOG] = true;
  ss_grammar_vocab *v = NULL;
  assert_int_equal(ss_grammar_vocab_create_pieces(n, pieces, nb, eog, &v), 0);
  /* an object with one key whose name is [ab\u00e9]*, value "" */
  const char *gb = "root ::= \"{\" \"\\\"\" [ab\\u00E9]* \"\\\"\" \"}\"\n";
  ss_grammar *g = NULL;
  ss_grammar_state *s = NULL;
  assert_int_equal(ss_grammar_parse(gb, strlen(gb), &g), 0);
  assert_int_equal(ss_grammar_state_create(g, &s), 0);
  struct {
    int32_t tok;           /* accepted before the mask is taken (-1: none) */
    const char *allowed;   /* ids allowed, as a '1'/'0' string over the vocabulary */
  } steps[] = {
      {-1, "100000000000010"}, /* "{" and "{\"" */
      {0, "011000000000000"},  /* after "{": "\"" and "\"a" */
      {1, "010111011010000"},  /* in the name: "\"" "a" "ab" "\"}" "b\"" "\xc3" "\xc3\xa9" */
      {8, "000000000100000"},  /* half of \u00e9: only its continuation byte */
      {9, "010111011010000"},
      {7, "000000100000000"},  /* after b": only "}" */
      {6, "000000000000100"},  /* complete: only the end-of-generation token */
  };
  for (size_t k = 0; k < sizeof steps / sizeof *steps; k++) {
    if (steps[k].tok >= 0) assert_true(ss_grammar_state_accept_token(s, v, steps[k].tok));
    const uint32_t *m = ss_grammar_state_mask(s, v);
    assert_non_null(m);
    for (int i = 0; i < n; i++) {
      bool got = (m[i >> 5] >> (i & 31)) & 1u, want = steps[k].allowed[i] == '1';
      if (got != want) fail_msg("step %zu: token %d ('%s') %s", k, i, pieces[i], want ? "not allowed" : "allowed");
    }
  }
  assert_true(ss_grammar_state_complete(s));
  assert_false(ss_grammar_state_can_continue(s));
  assert_false(ss_grammar_state_accept_token(s, v, 3)); /* nothing more */
  assert_true(ss_grammar_state_accept_token(s, v, EOG));
  ss_grammar_state_free(s);
  ss_grammar_vocab_free(v);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_gbnf_basics), cmocka_unit_test(test_gbnf_utf8),
      cmocka_unit_test(test_gbnf_refused), cmocka_unit_test(test_regex),
      cmocka_unit_test(test_mask),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
