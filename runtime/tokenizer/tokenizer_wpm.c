/* WordPiece (tokenizer.ggml.model = "bert"), as llama.cpp's
 * llm_tokenizer_wpm_session does it:
 *
 *   1. normalize each code point: with strip_accents, its canonical
 *      decomposition's first code point (llama.cpp's NFD table keeps only that
 *      one), and combining marks (\p{M}) dropped; NUL, U+FFFD and other
 *      (\p{C}) code points dropped; with lowercase, the simple lowercase
 *      mapping;
 *   2. split into words at White_Space; punctuation (\p{P}), ASCII symbols and
 *      CJK ideographs are words of one character each;
 *   3. each word, written with a leading U+2581 (the vocabulary's word start),
 *      is cut greedily into the longest vocabulary entries from the left; a
 *      word with a position where nothing matches is the unknown token.
 *
 * Invalid UTF-8 bytes are dropped, as llama.cpp turns them into U+FFFD first.
 * Unicode data comes from libunistring. */
#include <stdlib.h>
#include <string.h>
#include <unicase.h>
#include <unictype.h>
#include <uninorm.h>

#include "runtime/base/status.h"
#include "runtime/base/utf8.h"
#include "runtime/tokenizer/tokenizer_internal.h"

#define WORD_START "\xE2\x96\x81" /* U+2581 */

/* llama.cpp's whitespace set (Unicode White_Space). */
static bool is_white_space(uint32_t c) {
  return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F ||
         c == 0x205F || c == 0x3000;
}

/* BERT's CJK ideograph blocks (with the bound of the HF tokenizers' code for
 * Extension C, 0x2B920). */
static bool is_cjk(uint32_t c) {
  return (c >= 0x4E00 && c <= 0x9FFF) || (c >= 0x3400 && c <= 0x4DBF) ||
         (c >= 0x20000 && c <= 0x2A6DF) || (c >= 0x2A700 && c <= 0x2B73F) ||
         (c >= 0x2B740 && c <= 0x2B81F) || (c >= 0x2B920 && c <= 0x2CEAF) ||
         (c >= 0xF900 && c <= 0xFAFF) || (c >= 0x2F800 && c <= 0x2FA1F);
}

/* Unassigned code points (Cn) are not "other" for llama.cpp's table. */
static bool is_other(uint32_t c) {
  return uc_is_general_category(c, UC_CATEGORY_Cc) || uc_is_general_category(c, UC_CATEGORY_Cf) ||
         uc_is_general_category(c, UC_CATEGORY_Cs) || uc_is_general_category(c, UC_CATEGORY_Co);
}

/* The first code point of c's canonical decomposition (c itself if none). */
static uint32_t nfd_first(uint32_t c) {
  uint32_t buf[8];
  size_t n = sizeof buf / sizeof buf[0];
  uint32_t *r = u32_normalize(UNINORM_NFD, &c, 1, buf, &n);
  if (!r || n == 0) return c;
  uint32_t first = r[0];
  if (r != buf) free(r);
  return first;
}

typedef struct wbuf {
  char *p;
  size_t n, cap;
} wbuf;

static int wbuf_put(wbuf *w, const char *s, size_t n) {
  if (w->n + n > w->cap) {
    size_t cap = w->cap ? w->cap : 64;
    while (cap < w->n + n) cap *= 2;
    char *p = realloc(w->p, cap);
    if (!p) return ss_error(SS_ERR_NOMEM, "tokenizer: out of memory");
    w->p = p;
    w->cap = cap;
  }
  memcpy(w->p + w->n, s, n);
  w->n += n;
  return SS_OK;
}

/* Greedy longest match over w->p[0..w->n) (which starts with U+2581). */
static int wpm_word(const ss_tokenizer *t, const wbuf *w, ss_tok_ids *out) {
  const size_t n = w->n, start = out->n;
  int rc;
  for (size_t i = 0; i < n;) {
    size_t j = i + t->max_token_len < n ? i + t->max_token_len : n;
    int32_t id = -1;
    for (; j > i; j--)
      if ((id = ss_tok_lookup(t, w->p + i, j - i)) >= 0) break;
    if (id < 0) {
      out->n = start; /* the whole word is unknown */
      break;
    }
    if ((rc = ss_tok_ids_push(out, id))) return rc;
    i = j;
  }
  if (out->n == start && t->unk >= 0) return ss_tok_ids_push(out, t->unk);
  return SS_OK;
}

static int flush_word(const ss_tokenizer *t, wbuf *w, ss_tok_ids *out) {
  int rc = SS_OK;
  if (w->n > 3) rc = wpm_word(t, w, out);
  w->n = 3; /* keep the word start */
  return rc;
}

int ss_tok_wpm_encode(const ss_tokenizer *t, const char *text, size_t len, ss_tok_ids *out) {
  wbuf w = {0};
  int rc = wbuf_put(&w, WORD_START, 3);
  for (size_t i = 0; i < len && !rc;) {
    int nb = ss_utf8_seq_nbytes((const uint8_t *)text + i, len - i);
    if (nb <= 0) {
      i++; /* U+FFFD for llama.cpp, which it drops */
      continue;
    }
    uint32_t c = ss_utf8_decode((const uint8_t *)text + i, nb);
    i += (size_t)nb;
    if (t->wpm_strip_accents) c = nfd_first(c);
    if (is_white_space(c)) {
      rc = flush_word(t, &w, out);
      continue;
    }
    if (c == 0 || c == 0xFFFD || is_other(c)) continue;
    if (t->wpm_strip_accents && uc_is_general_category(c, UC_CATEGORY_M)) continue;
    bool alone = uc_is_general_category(c, UC_CATEGORY_P) ||
                 (c < 0x7F && uc_is_general_category(c, UC_CATEGORY_S)) || is_cjk(c);
    uint32_t lc = t->wpm_lowercase ? uc_tolower(c) : c;
    char enc[4];
    int k = ss_utf8_encode(lc, enc);
    if (alone && (rc = flush_word(t, &w, out))) break;
    if ((rc = wbuf_put(&w, enc, (size_t)k))) break;
    if (alone) rc = flush_word(t, &w, out);
  }
  if (!rc) rc = flush_word(t, &w, out);
  free(w.p);
  return rc;
}
