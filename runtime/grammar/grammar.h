/* Constrained decoding: context-free grammars over bytes, an incremental
 * matcher, and the per-step mask of the tokens a grammar allows.
 *
 * A grammar is a set of rules, each a list of alternatives, each a sequence of
 * byte sets and references to rules.  Everything reaches it as GBNF text
 * (llama.cpp's grammar format: `root ::= "a" [b-d]* | other`), which regular
 * expressions, choices and JSON Schemas (runtime/server) are compiled to.
 * Characters above U+007F in literals and classes become the byte sequences of
 * their UTF-8 encoding, so the matcher sees bytes only and a token may end or
 * begin inside a character or a grammar element.
 *
 * The matcher keeps the set of parse stacks alive after the bytes so far (a
 * pushdown automaton run on all paths at once, as llama.cpp's grammar sampler
 * does).  Stacks are interned nodes (position, rest of stack), so equal stacks
 * are equal ids and a state is a sorted id list.  Left-recursive rules are
 * refused when the grammar is built.
 *
 * The mask walks a trie of the vocabulary's token bytes once from the current
 * state, dropping every subtree whose prefix the grammar rejects; masks are
 * cached per state.  End-of-generation tokens are allowed exactly when the
 * grammar is complete.  Nothing here depends on other requests. */
#ifndef SS_GRAMMAR_H
#define SS_GRAMMAR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "runtime/base/metrics.h"
#include "runtime/tokenizer/tokenizer.h"

typedef struct ss_grammar ss_grammar;

/* Parses GBNF text whose start rule is `root`.  Errors (SS_ERR_INVALID) name the
 * line and column, an undefined rule, or a left-recursive one. */
int ss_grammar_parse(const char *text, size_t len, ss_grammar **out);
void ss_grammar_free(ss_grammar *g);

/* Appends the GBNF rule `root ::= ...` matching the whole of the regular
 * expression re (literals, escapes \d \w \s \D \W \S and the usual ones,
 * classes, groups, (?:...), |, * + ? {m} {m,} {m,n}, '.' = any character but
 * newline; ^ and $ only at the ends).  Back references and look-around are
 * SS_ERR_UNSUPPORTED. */
int ss_grammar_regex_to_gbnf(const char *re, size_t len, const char *rule, ss_strbuf *out);
/* Appends n bytes as one GBNF string literal (quoted, escaped). */
void ss_grammar_gbnf_literal(ss_strbuf *out, const char *p, size_t n);

/* ------------------------------------------------------------------------ */
/* The vocabulary as the matcher sees it                                      */

typedef struct ss_grammar_vocab ss_grammar_vocab;

/* Each token's output bytes (ss_tokenizer_piece) in a trie; end-of-generation
 * tokens are kept apart; tokens with no bytes are never allowed. */
int ss_grammar_vocab_create(const ss_tokenizer *t, ss_grammar_vocab **out);
/* The same from explicit pieces (eog[i]: token i ends generation). */
int ss_grammar_vocab_create_pieces(int32_t n, const char *const *pieces, const size_t *nbytes,
                                   const bool *eog, ss_grammar_vocab **out);
void ss_grammar_vocab_free(ss_grammar_vocab *v);
int32_t ss_grammar_vocab_n(const ss_grammar_vocab *v);

/* ------------------------------------------------------------------------ */
/* A request's matcher                                                        */

typedef struct ss_grammar_state ss_grammar_state;

/* Starts matching g (the state takes ownership of g, also on failure). */
int ss_grammar_state_create(ss_grammar *g, ss_grammar_state **out);
void ss_grammar_state_free(ss_grammar_state *s);
/* Advances over n bytes; false (state unchanged) when the grammar rejects them. */
bool ss_grammar_state_accept(ss_grammar_state *s, const char *p, size_t n);
/* Advances over token id of v (an end-of-generation token is accepted when the
 * grammar is complete); false (state unchanged) when rejected. */
bool ss_grammar_state_accept_token(ss_grammar_state *s, const ss_grammar_vocab *v, int32_t id);
/* The bytes so far form a whole sentence of the grammar. */
bool ss_grammar_state_complete(const ss_grammar_state *s);
/* Some further byte is allowed. */
bool ss_grammar_state_can_continue(const ss_grammar_state *s);
/* The allowed tokens now: bit i of word i/32 is token i.  The array belongs to
 * s and is valid until its next accept.  NULL when out of memory. */
const uint32_t *ss_grammar_state_mask(ss_grammar_state *s, const ss_grammar_vocab *v);

#endif
