/* Chat message content tokenized as plain text (--parse-special-in-content
 * off): a user who writes "<|im_end|>" gets the characters, not the control
 * token, while the template's own markup stays special.
 *
 * The template is rendered a second time with every message's content
 * replaced by a placeholder; the text between placeholders is the template's
 * markup (tokenized with special tokens parsed), and each placeholder stands
 * for a content (tokenized without).  This holds only if the template copies
 * content verbatim, which is checked: the markup with the contents put back
 * must be the real rendering.  A template that rewrites content (trims it,
 * branches on it) fails the check; its prompt is then tokenized whole, which
 * is safe when no content spells a control token, and refused otherwise. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/base/status.h"
#include "runtime/server/api_internal.h"
#include "runtime/tokenizer/tokenizer.h"

#define PLACEHOLDER_FMT "@@ss.content.%zu@@"

/* Appends the ids of text[0, len) to *ids. */
static bool append_ids(const ss_tokenizer *tok, const char *text, size_t len, bool add_bos,
                       bool special, int32_t **ids, size_t *n_ids, parse_err *e) {
  if (len == 0 && !add_bos) return true;
  int32_t *part = NULL;
  size_t n = 0;
  if (ss_tokenizer_encode(tok, text, len, add_bos, special, &part, &n))
    return ss_oai_fail(e, 400, "messages", "cannot tokenize the messages: %s", ss_error_msg());
  int32_t *all = realloc(*ids, (*n_ids + n + 1) * sizeof *all);
  if (!all) {
    free(part);
    return ss_oai_fail(e, 500, NULL, "out of memory");
  }
  if (n) memcpy(all + *n_ids, part, n * sizeof *all);
  free(part);
  *ids = all;
  *n_ids += n;
  return true;
}

/* True when s, tokenized with special tokens parsed, gives other ids than
 * as plain text: it spells a control token. */
static bool spells_control(const ss_tokenizer *tok, const char *s, size_t len) {
  int32_t *a = NULL, *b = NULL;
  size_t na = 0, nb = 0;
  bool differ = true;
  if (!ss_tokenizer_encode(tok, s, len, false, true, &a, &na) &&
      !ss_tokenizer_encode(tok, s, len, false, false, &b, &nb))
    differ = na != nb || (na && memcmp(a, b, na * sizeof *a) != 0);
  free(a);
  free(b);
  return differ;
}

bool ss_oai_tokenize_plain_content(const gen_ctx *x, const json_t *norm,
                                   bool add_generation_prompt, const char *rendered,
                                   int32_t **ids, size_t *n_ids, parse_err *e) {
  const ss_tokenizer *tok = x->m->tok;
  *ids = NULL;
  *n_ids = 0;
  const size_t n_msgs = json_array_size(norm);
  json_t *ph_msgs = json_deep_copy(norm);
  if (!ph_msgs) return ss_oai_fail(e, 500, NULL, "out of memory");
  for (size_t i = 0; i < n_msgs; i++) {
    char ph[48];
    snprintf(ph, sizeof ph, PLACEHOLDER_FMT, i);
    json_t *m = json_array_get(ph_msgs, i);
    if (json_is_string(json_object_get(m, "content")))
      json_object_set_new(m, "content", json_string(ph));
  }
  char *marked = NULL;
  int rc = ss_chat_render_json(x->tmpl, ph_msgs, NULL, NULL, add_generation_prompt, &marked);
  json_decref(ph_msgs);

  /* Split the marked text at the placeholders, in order, and check that the
   * contents put back give the real rendering. */
  bool verbatim = rc == 0;
  const char *at = marked, *want = rendered;
  const char **piece = malloc((2 * n_msgs + 1) * sizeof *piece);
  size_t *piece_len = malloc((2 * n_msgs + 1) * sizeof *piece_len), n_piece = 0;
  if (!piece || !piece_len) {
    free(piece);
    free(piece_len);
    free(marked);
    return ss_oai_fail(e, 500, NULL, "out of memory");
  }
  for (size_t i = 0; verbatim && i < n_msgs; i++) {
    const json_t *c = json_object_get(json_array_get(norm, i), "content");
    if (!json_is_string(c)) continue;
    char ph[48];
    int phn = snprintf(ph, sizeof ph, PLACEHOLDER_FMT, i);
    const char *p = strstr(at, ph);
    if (!p) {
      verbatim = false;
      break;
    }
    size_t mlen = (size_t)(p - at), clen = json_string_length(c);
    if (strncmp(want, at, mlen) != 0 || strncmp(want + mlen, json_string_value(c), clen) != 0) {
      verbatim = false;
      break;
    }
    piece[n_piece] = at, piece_len[n_piece++] = mlen;
    piece[n_piece] = json_string_value(c), piece_len[n_piece++] = clen;
    want += mlen + clen;
    at = p + phn;
  }
  if (verbatim && (strstr(at, "@@ss.content.") || strcmp(want, at) != 0)) verbatim = false;
  if (verbatim) piece[n_piece] = at, piece_len[n_piece++] = strlen(at);

  bool ok = true;
  if (!verbatim) {
    /* The template rewrites content: tokenized whole, which is safe unless
     * a content spells a control token. */
    for (size_t i = 0; ok && i < n_msgs; i++) {
      const json_t *c = json_object_get(json_array_get(norm, i), "content");
      if (json_is_string(c) && spells_control(tok, json_string_value(c), json_string_length(c)))
        ok = ss_oai_fail(e, 400, "messages",
                         "'messages[%zu].content' spells a control token, and this chat "
                         "template does not copy content verbatim, so it cannot be kept plain "
                         "text (the server runs with --parse-special-in-content off)", i);
    }
    if (ok && ss_chat_tokenize(tok, rendered, ss_tokenizer_add_bos(tok), ids, n_ids))
      ok = ss_oai_fail(e, 400, "messages", "cannot tokenize the messages: %s", ss_error_msg());
    free(piece);
    free(piece_len);
    free(marked);
    return ok;
  }
  /* As ss_chat_tokenize: the tokenizer's BOS first, the template's BOS text
   * (if it writes one) dropped. */
  bool add_bos = ss_tokenizer_add_bos(tok);
  const char *bos = add_bos ? ss_tokenizer_token_text(tok, ss_tokenizer_bos(tok)) : NULL;
  if (bos && *bos && piece_len[0] >= strlen(bos) && strncmp(piece[0], bos, strlen(bos)) == 0) {
    piece[0] += strlen(bos);
    piece_len[0] -= strlen(bos);
  }
  for (size_t k = 0; ok && k < n_piece; k++)
    ok = append_ids(tok, piece[k], piece_len[k], add_bos && k == 0, k % 2 == 0, ids, n_ids, e);
  free(piece);
  free(piece_len);
  free(marked);
  if (!ok) {
    free(*ids);
    *ids = NULL;
    *n_ids = 0;
  }
  return ok;
}
