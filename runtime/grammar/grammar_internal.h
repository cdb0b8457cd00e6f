/* The compiled grammar as the parser (gbnf.c) builds it and the matcher
 * (matcher.c) reads it.  Not part of the public API. */
#ifndef SS_GRAMMAR_INTERNAL_H
#define SS_GRAMMAR_INTERNAL_H

#include <stdint.h>

#include "runtime/grammar/grammar.h"

typedef enum gelem_kind {
  GE_END = 0, /* end of an alternative */
  GE_SET,     /* one byte from sets[v] */
  GE_REF,     /* rule v */
} gelem_kind;

typedef struct gelem {
  int32_t kind;
  int32_t v;
} gelem;

typedef struct gset {
  uint64_t w[4]; /* bit b: byte b is in the set */
} gset;

struct ss_grammar {
  int32_t n_rules;
  int32_t root;
  int32_t *alt0;  /* (n_rules): the rule's first alternative in alts */
  int32_t *nalt;  /* (n_rules) */
  int32_t *alts;  /* each alternative's first element in elems */
  gelem *elems;   /* every alternative's elements, each run ending with GE_END */
  int32_t n_elems;
  gset *sets;
  int32_t n_sets;
};

static inline bool gset_has(const gset *s, unsigned b) {
  return (s->w[b >> 6] >> (b & 63)) & 1u;
}

#endif
