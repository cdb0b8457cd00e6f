/* Detokenization: the bytes one token stands for (ss_tokenizer_piece), and the
 * streaming detokenizer that turns a run of pieces into whole UTF-8 characters
 * (ss_detok_*). */
#include <stdint.h>
#include <string.h>

#include "runtime/base/utf8.h"
#include "runtime/tokenizer/tokenizer.h"
#include "runtime/tokenizer/tokenizer_internal.h"

#define SPM_SPACE "\xE2\x96\x81" /* U+2581, SentencePiece's space */

/* Writes what fits into buf[0..cap) and counts everything. */
typedef struct sink {
  char *buf;
  size_t cap, n;
} sink;

static void sink_put(sink *s, const char *p, size_t n) {
  if (s->n < s->cap) {
    size_t k = s->cap - s->n < n ? s->cap - s->n : n;
    memcpy(s->buf + s->n, p, k);
  }
  s->n += n;
}

static int hex_digit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;
}

size_t ss_tokenizer_piece(const ss_tokenizer *t, int32_t id, bool special, char *buf, size_t cap) {
  if (id < 0 || id >= t->n_vocab) return 0;
  sink s = {buf, buf ? cap : 0, 0};
  const char *text = t->text + t->text_off[id];
  const size_t len = t->text_len[id];
  switch ((ss_tok_type)t->type[id]) {
  case SS_TOKTYPE_CONTROL:
  case SS_TOKTYPE_UNKNOWN:
    if (special) sink_put(&s, text, len);
    break;
  case SS_TOKTYPE_USER_DEFINED:
    sink_put(&s, text, len);
    break;
  case SS_TOKTYPE_BYTE:
    if (len == 6 && memcmp(text, "<0x", 3) == 0 && text[5] == '>' && hex_digit(text[3]) >= 0 &&
        hex_digit(text[4]) >= 0) {
      char byte = (char)(hex_digit(text[3]) << 4 | hex_digit(text[4]));
      sink_put(&s, &byte, 1);
    } else {
      sink_put(&s, text, len);
    }
    break;
  case SS_TOKTYPE_NORMAL:
    if (t->kind == SS_TOK_SPM || t->kind == SS_TOK_WPM || t->raw_bpe) {
      for (size_t i = 0; i < len;) {
        if (len - i >= 3 && memcmp(text + i, SPM_SPACE, 3) == 0) {
          sink_put(&s, " ", 1);
          i += 3;
        } else {
          sink_put(&s, text + i, 1);
          i++;
        }
      }
    } else {
      /* GPT-2 alphabet back to bytes; a character outside it is kept as is. */
      for (size_t i = 0; i < len;) {
        int n = ss_utf8_seq_nbytes((const uint8_t *)text + i, len - i);
        int b = n > 0 ? ss_gpt2_cp_to_byte(ss_utf8_decode((const uint8_t *)text + i, n)) : -1;
        if (b >= 0) {
          char c = (char)b;
          sink_put(&s, &c, 1);
        } else {
          sink_put(&s, text + i, (size_t)(n > 0 ? n : 1));
        }
        i += (size_t)(n > 0 ? n : 1);
      }
    }
    break;
  default: /* undefined and unused tokens render as nothing, as in llama.cpp */
    break;
  }
  return s.n;
}

void ss_detok_init(ss_detok *d, const ss_tokenizer *t, bool special) {
  memset(d, 0, sizeof *d);
  d->tok = t;
  d->special = special;
  d->at_start = true;
}

/* Output of one push: whole characters only, and once one does not fit (a
 * pathological token), nothing more, so the text stays valid UTF-8. */
typedef struct detok_out {
  char *buf;
  size_t room, n; /* room: cap - 1, keeping a byte for the NUL */
  bool full;
} detok_out;

static void out_char(detok_out *o, const char *p, size_t n) {
  if (o->full || o->n + n > o->room) {
    o->full = true;
    return;
  }
  memcpy(o->buf + o->n, p, n);
  o->n += n;
}

static void feed_byte(ss_detok *d, detok_out *o, uint8_t b) {
  for (;;) {
    if (d->n_pending == 0) {
      if (b < 0x80) {
        out_char(o, (const char *)&b, 1);
      } else if (ss_utf8_lead_nbytes(b) > 0) {
        d->pending[0] = b;
        d->n_pending = 1;
      } else {
        out_char(o, SS_UTF8_REPLACEMENT, SS_UTF8_REPLACEMENT_NBYTES);
      }
      return;
    }
    uint8_t lead = d->pending[0];
    if (ss_utf8_cont_ok(lead, d->n_pending, b)) {
      d->pending[d->n_pending++] = b;
      if (d->n_pending == ss_utf8_lead_nbytes(lead)) {
        out_char(o, (const char *)d->pending, (size_t)d->n_pending);
        d->n_pending = 0;
      }
      return;
    }
    /* The held bytes can never complete: one U+FFFD for them, then look at
     * b afresh. */
    out_char(o, SS_UTF8_REPLACEMENT, SS_UTF8_REPLACEMENT_NBYTES);
    d->n_pending = 0;
  }
}

size_t ss_detok_push(ss_detok *d, int32_t id, char *out, size_t cap) {
  if (!out || cap == 0) return 0;
  detok_out o = {out, cap - 1, 0, false};
  char piece[SS_DETOK_MIN_CAP];
  size_t n = ss_tokenizer_piece(d->tok, id, d->special, piece, sizeof piece);
  if (n > sizeof piece) n = sizeof piece; /* a pathological token is cut short */
  const char *p = piece;
  if (d->at_start && n > 0) {
    if (((d->tok->kind == SS_TOK_SPM && d->tok->add_space_prefix) ||
         d->tok->kind == SS_TOK_WPM) && p[0] == ' ') {
      p++;
      n--;
    }
    d->at_start = false;
  }
  for (size_t i = 0; i < n; i++) feed_byte(d, &o, (uint8_t)p[i]);
  out[o.n] = 0;
  return o.n;
}

size_t ss_detok_flush(ss_detok *d, char *out, size_t cap) {
  if (!out || cap == 0) {
    d->n_pending = 0;
    return 0;
  }
  detok_out o = {out, cap - 1, 0, false};
  if (d->n_pending > 0) out_char(&o, SS_UTF8_REPLACEMENT, SS_UTF8_REPLACEMENT_NBYTES);
  d->n_pending = 0;
  out[o.n] = 0;
  return o.n;
}
