#include "runtime/base/utf8.h"

int ss_utf8_lead_nbytes(uint8_t b) {
  if (b >= 0xC2 && b <= 0xDF) return 2;
  if (b >= 0xE0 && b <= 0xEF) return 3;
  if (b >= 0xF0 && b <= 0xF4) return 4;
  return 0;
}

bool ss_utf8_cont_ok(uint8_t lead, int i, uint8_t b) {
  if (i == 1) {
    switch (lead) {
    case 0xE0: return b >= 0xA0 && b <= 0xBF; /* no overlong 3-byte forms */
    case 0xED: return b >= 0x80 && b <= 0x9F; /* no surrogates */
    case 0xF0: return b >= 0x90 && b <= 0xBF; /* no overlong 4-byte forms */
    case 0xF4: return b >= 0x80 && b <= 0x8F; /* nothing above U+10FFFF */
    default: break;
    }
  }
  return b >= 0x80 && b <= 0xBF;
}

int ss_utf8_seq_nbytes(const uint8_t *s, size_t n) {
  if (n == 0) return 0;
  if (s[0] < 0x80) return 1;
  int len = ss_utf8_lead_nbytes(s[0]);
  if (len == 0 || (size_t)len > n) return 0;
  for (int i = 1; i < len; i++)
    if (!ss_utf8_cont_ok(s[0], i, s[i])) return 0;
  return len;
}

bool ss_utf8_valid(const char *s, size_t n) {
  const uint8_t *p = (const uint8_t *)s;
  size_t i = 0;
  while (i < n) {
    if (p[i] < 0x80) {
      i++;
      continue;
    }
    int len = ss_utf8_seq_nbytes(p + i, n - i);
    if (len == 0) return false;
    i += (size_t)len;
  }
  return true;
}

uint32_t ss_utf8_decode(const uint8_t *s, int nbytes) {
  switch (nbytes) {
  case 1: return s[0];
  case 2: return (uint32_t)(s[0] & 0x1F) << 6 | (s[1] & 0x3F);
  case 3: return (uint32_t)(s[0] & 0x0F) << 12 | (uint32_t)(s[1] & 0x3F) << 6 | (s[2] & 0x3F);
  default:
    return (uint32_t)(s[0] & 0x07) << 18 | (uint32_t)(s[1] & 0x3F) << 12 |
           (uint32_t)(s[2] & 0x3F) << 6 | (s[3] & 0x3F);
  }
}

int ss_utf8_encode(uint32_t cp, char out[4]) {
  if (cp < 0x80) {
    out[0] = (char)cp;
    return 1;
  }
  if (cp < 0x800) {
    out[0] = (char)(0xC0 | (cp >> 6));
    out[1] = (char)(0x80 | (cp & 0x3F));
    return 2;
  }
  if (cp < 0x10000) {
    out[0] = (char)(0xE0 | (cp >> 12));
    out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[2] = (char)(0x80 | (cp & 0x3F));
    return 3;
  }
  out[0] = (char)(0xF0 | (cp >> 18));
  out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
  out[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
  out[3] = (char)(0x80 | (cp & 0x3F));
  return 4;
}
