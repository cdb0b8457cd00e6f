/* Constrained decoding in the engine: a request's grammar masks its logits
 * right before sampling, and advances over each sampled token.  The mask
 * depends on the request's own tokens only (batch invariance holds). */
#include <math.h>
#include <stdlib.h>

#include "runtime/base/status.h"
#include "runtime/engine/engine_internal.h"
#include "runtime/grammar/grammar.h"

const float *ss_eng_grammar_mask(ss_engine *e, ereq *q, const float *logits) {
  if (!q->r.grammar) return logits;
  const int32_t n = e->m->cfg.vocab;
  if (!e->gvocab) {
    ss_grammar_vocab *v = NULL;
    if (ss_grammar_vocab_create(e->m->tok, &v)) return NULL;
    e->gvocab = v;
  }
  if (!e->masked && !(e->masked = malloc((size_t)n * sizeof *e->masked))) return NULL;
  const uint32_t *bits = ss_grammar_state_mask(q->r.grammar, e->gvocab);
  if (!bits) return NULL;
  /* the tokenizer may know fewer tokens than the output layer has rows: those
   * rows are never allowed */
  const int32_t nv = ss_grammar_vocab_n(e->gvocab) < n ? ss_grammar_vocab_n(e->gvocab) : n;
  bool any = false;
  for (int32_t i = 0; i < n; i++) {
    const bool ok = i < nv && ((bits[i >> 5] >> (i & 31)) & 1u);
    e->masked[i] = ok ? logits[i] : -INFINITY;
    any |= ok;
  }
  return any ? e->masked : NULL;
}

bool ss_eng_grammar_accept(ss_engine *e, ereq *q, int32_t tok) {
  if (!q->r.grammar) return false;
  /* the mask let only accepted tokens through */
  if (!ss_grammar_state_accept_token(q->r.grammar, e->gvocab, tok)) return true;
  return !ss_grammar_state_can_continue(q->r.grammar);
}
