/* Strict UTF-8 (RFC 3629): no overlong forms, no surrogates, nothing above
 * U+10FFFF.  Used by the tokenizer to find character boundaries and by the
 * streaming detokenizer to hold back incomplete characters. */
#ifndef SS_UTF8_H
#define SS_UTF8_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The U+FFFD replacement character, as UTF-8. */
#define SS_UTF8_REPLACEMENT "\xEF\xBF\xBD"
#define SS_UTF8_REPLACEMENT_NBYTES 3

/* Length (1-4) of the valid sequence that starts at s[0], looking at no more
 * than n bytes; 0 if the bytes there do not start a valid sequence (including
 * a sequence cut short by n). */
int ss_utf8_seq_nbytes(const uint8_t *s, size_t n);

/* The number of bytes a sequence announces by its lead byte (2-4), or 0 when
 * b is ASCII, a continuation byte, or a byte that never starts a sequence
 * (C0, C1, F5-FF). */
int ss_utf8_lead_nbytes(uint8_t b);

/* Whether b may follow the bytes seq[0..i-1] (i >= 1) of a sequence that
 * starts with seq[0]: the second byte's range depends on the lead byte
 * (E0 A0-BF, ED 80-9F, F0 90-BF, F4 80-8F), every other one is 80-BF. */
bool ss_utf8_cont_ok(uint8_t lead, int i, uint8_t b);

/* True if all n bytes form valid UTF-8. */
bool ss_utf8_valid(const char *s, size_t n);

/* Decodes the valid sequence of `nbytes` bytes at s (as returned by
 * ss_utf8_seq_nbytes). */
uint32_t ss_utf8_decode(const uint8_t *s, int nbytes);

/* Encodes code point cp (<= 0x10FFFF) into out; returns the byte count. */
int ss_utf8_encode(uint32_t cp, char out[4]);

#endif
