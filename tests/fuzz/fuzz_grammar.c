/* The grammar engine: the input's first byte picks the front end (even: GBNF
 * text, odd: a regular expression compiled to GBNF), the bytes up to the first
 * NUL are the grammar, the rest a subject fed to the matcher byte by byte.
 * Invariants: a byte the matcher rejects leaves it as it was (its completeness
 * unchanged); a token the mask of a small vocabulary allows is accepted. */
#include <stdbool.h>

#include "runtime/base/metrics.h"
#include "runtime/grammar/grammar.h"
#include "tests/fuzz/fuzz_common.h"

static const char *const k_pieces[] = {"{", "}", "\"", ":", ",", " ", "a", "ab", "0", "12",
                                       "true", "null", "[", "]", "\n", "\xc3\xa9", "\xc3", "-"};
enum { N_PIECES = sizeof k_pieces / sizeof k_pieces[0] };
static ss_grammar_vocab *g_vocab;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc;
  (void)argv;
  size_t nb[N_PIECES + 1];
  const char *p[N_PIECES + 1];
  bool eog[N_PIECES + 1];
  for (int i = 0; i < N_PIECES; i++) p[i] = k_pieces[i], nb[i] = strlen(k_pieces[i]), eog[i] = false;
  p[N_PIECES] = "", nb[N_PIECES] = 0, eog[N_PIECES] = true; /* end of generation */
  FUZZ_CHECK(ss_grammar_vocab_create_pieces(N_PIECES + 1, p, nb, eog, &g_vocab) == 0);
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (!g_vocab) LLVMFuzzerInitialize(NULL, NULL);
  if (size < 1 || size > 4096) return 0;
  const bool regex = data[0] & 1;
  const char *text = (const char *)data + 1;
  const char *nul = memchr(text, 0, size - 1);
  const size_t glen = nul ? (size_t)(nul - text) : size - 1;
  const char *subj = nul ? nul + 1 : text + glen;
  const size_t slen = (size_t)((const char *)data + size - subj);
  ss_strbuf gb = {0};
  const char *gtext = text;
  size_t gn = glen;
  if (regex) {
    if (ss_grammar_regex_to_gbnf(text, glen, "root", &gb)) {
      ss_strbuf_free(&gb);
      return 0;
    }
    gtext = gb.p ? gb.p : "";
    gn = gb.len;
  }
  ss_grammar *g = NULL;
  if (ss_grammar_parse(gtext, gn, &g) == 0) {
    ss_grammar_state *s = NULL;
    if (ss_grammar_state_create(g, &s) == 0) {
      for (size_t i = 0; i < slen && i < 256; i++) {
        const bool before_complete = ss_grammar_state_complete(s);
        if (!ss_grammar_state_accept(s, subj + i, 1)) {
          FUZZ_CHECK(ss_grammar_state_complete(s) == before_complete);
          break;
        }
        if (i % 16 == 0) {
          const uint32_t *m = ss_grammar_state_mask(s, g_vocab);
          FUZZ_CHECK(m != NULL);
          uint32_t bits[(N_PIECES + 1 + 31) / 32];
          memcpy(bits, m, sizeof bits);
          /* an allowed token must be accepted (the first piece, "{", is tried;
           * the subject then goes on from the state after it) */
          const bool allowed0 = (bits[0] & 1u) != 0;
          if (allowed0) FUZZ_CHECK(ss_grammar_state_accept_token(s, g_vocab, 0));
        }
      }
      (void)ss_grammar_state_can_continue(s);
      ss_grammar_state_free(s);
    }
  }
  ss_strbuf_free(&gb);
  return 0;
}
