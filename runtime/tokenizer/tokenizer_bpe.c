/* Byte-level BPE (tokenizer.ggml.model = "gpt2"), as llama.cpp's
 * llm_tokenizer_bpe_session does it:
 *
 *   1. pre-tokenize: each regex of the pre-tokenizer splits every current piece
 *      into its matches and the unmatched gaps between them (both kept, in
 *      order), matching only inside the piece;
 *   2. each piece's bytes are written in the GPT-2 byte-to-unicode alphabet and
 *      cut into characters;
 *   3. adjacent pairs are merged by lowest merge rank first (ties: leftmost);
 *   4. each final symbol is looked up in the vocabulary.
 *
 * Invalid UTF-8 is never handed to PCRE2: each invalid byte is replaced by
 * U+FFFD for the split (llama.cpp replaces it for good), while the pieces
 * carry the original byte into the merges, so nothing is lost, unless the
 * vocabulary has no token for that byte (StarCoder's lacks C0, C1, F5-FF):
 * then the piece carries U+FFFD, as with llama.cpp. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/base/status.h"
#include "runtime/base/utf8.h"
#include "runtime/tokenizer/tokenizer_internal.h"

/* ------------------------------------------------------------------------ */
/* Pre-tokenizer patterns (from llama.cpp's llama-vocab.cpp)                  */

/* GPT-2's pattern.  llama.cpp's custom splitter for it also ends in "|\s+"; a
 * whitespace character the pattern leaves unmatched becomes a gap piece here,
 * which comes to the same pieces. */
#define RE_GPT2 "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)"
/* Llama 3's pattern with the case-insensitive group spelled out (llama.cpp
 * PR 6920). */
#define RE_LLAMA3                                                                     \
  "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|" \
  "\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
/* Qwen2: as Llama 3 but digits one by one. */
#define RE_QWEN2                                                                      \
  "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|" \
  "\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"

/* Qwen3.5: as Qwen2, with combining marks (\p{M}) kept inside words. */
#define RE_QWEN35                                                                     \
  "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?[\\p{L}\\p{M}]+|" \
  "\\p{N}| ?[^\\s\\p{L}\\p{M}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
/* DeepSeek LLM's letters: an explicit list of cased-letter ranges (from its
 * tokenizer.json), not \p{L}. */
#define DS_LETTERS \
  "A-Za-z\\x{B5}\\x{C0}-\\x{D6}\\x{D8}-\\x{F6}\\x{F8}-\\x{1BA}\\x{1BC}-\\x{1BF}" \
  "\\x{1C4}-\\x{293}\\x{295}-\\x{2AF}\\x{370}-\\x{373}\\x{376}\\x{377}\\x{37B}-\\x{37D}" \
  "\\x{37F}\\x{386}\\x{388}-\\x{38A}\\x{38C}\\x{38E}-\\x{3A1}\\x{3A3}-\\x{3F5}" \
  "\\x{3F7}-\\x{481}\\x{48A}-\\x{52F}\\x{531}-\\x{556}\\x{10A0}-\\x{10C5}" \
  "\\x{13A0}-\\x{13F5}\\x{13F8}-\\x{13FD}\\x{1C90}-\\x{1CBA}\\x{1CBD}-\\x{1CBF}" \
  "\\x{1D00}-\\x{1D2B}\\x{1D6B}-\\x{1D77}\\x{1D79}-\\x{1D9A}\\x{1E00}-\\x{1F15}" \
  "\\x{1F18}-\\x{1F1D}\\x{1F20}-\\x{1F45}\\x{1F48}-\\x{1F4D}\\x{1F50}-\\x{1F57}" \
  "\\x{1F59}\\x{1F5B}\\x{1F5D}\\x{1F5F}-\\x{1F7D}\\x{1F80}-\\x{1FB4}\\x{1FB6}-\\x{1FBC}" \
  "\\x{1FBE}\\x{1FC2}-\\x{1FC4}\\x{1FC6}-\\x{1FCC}\\x{1FD0}-\\x{1FD3}" \
  "\\x{1FD6}-\\x{1FDB}\\x{1FE0}-\\x{1FEC}\\x{1FF2}-\\x{1FF4}\\x{1FF6}-\\x{1FFC}" \
  "\\x{2102}\\x{2107}\\x{210A}-\\x{2113}\\x{2115}\\x{2119}-\\x{211D}\\x{2124}\\x{2126}" \
  "\\x{2128}\\x{212A}-\\x{212D}\\x{212F}-\\x{2134}\\x{2139}\\x{213C}-\\x{213F}" \
  "\\x{2145}-\\x{2149}\\x{214E}\\x{2183}\\x{2184}\\x{2C00}-\\x{2C7B}\\x{2C7E}-\\x{2CE4}" \
  "\\x{2CEB}-\\x{2CEE}\\x{2CF2}\\x{2CF3}\\x{A640}-\\x{A66D}\\x{A680}-\\x{A69B}" \
  "\\x{A722}-\\x{A76F}\\x{A771}-\\x{A787}\\x{A78B}-\\x{A78E}\\x{AB70}-\\x{ABBF}" \
  "\\x{FB00}-\\x{FB06}\\x{FB13}-\\x{FB17}\\x{FF21}-\\x{FF3A}\\x{FF41}-\\x{FF5A}" \
  "\\x{10400}-\\x{1044F}\\x{104B0}-\\x{104D3}\\x{104D8}-\\x{104FB}\\x{10C80}-\\x{10CB2}" \
  "\\x{10CC0}-\\x{10CF2}\\x{118A0}-\\x{118DF}\\x{1E900}-\\x{1E943}"
/* CJK ideographs, the blocks U+0800-U+4E00 and Hangul, as DeepSeek splits them. */
#define DS_CJK "[\\x{4E00}-\\x{9FA5}\\x{800}-\\x{4E00}\\x{AC00}-\\x{D7FF}]+"

typedef struct pre_tokenizer {
  const char *names;       /* accepted tokenizer.ggml.pre values, '|'-separated */
  const char *regex[SS_TOK_MAX_REGEX];
  bool ignore_merges;
  bool add_bos;            /* llama.cpp's default when add_bos_token is absent */
} pre_tokenizer;

static const pre_tokenizer k_pre[] = {
    {"default",
     {"[\\p{P}\\$\\+<=>\\^~\\|]+", RE_GPT2, "\\p{N}+", "[0-9][0-9][0-9]"}, false, false},
    {"gpt-2|gpt2|phi-2|mpt|olmo", {RE_GPT2}, false, false},
    {"starcoder|smollm|refact|command-r|codeshell|exaone|minerva-7b", {"\\p{N}", RE_GPT2}, false,
     false},
    {"llama3|llama-bpe|llama-v3", {RE_LLAMA3}, true, true},
    {"dbrx|smaug-bpe", {RE_LLAMA3}, false, false},
    {"qwen2|deepseek-r1-qwen|stablelm2", {RE_QWEN2}, false, false},
    {"qwen35", {RE_QWEN35}, false, false},
    {"gemma4", {"[^\\n]+|[\\n]+"}, false, true}, /* pieces only cut at newlines */
    {"falcon",
     {"[\\p{P}\\$\\+<=>\\^~\\|`]+", RE_GPT2, "[0-9][0-9][0-9]"}, false, false},
    {"deepseek-llm",
     {"[\\r\\n]", "\\s?[" DS_LETTERS "]+",
      "\\s?[!-/:-~\\x{FF01}-\\x{FF0F}\\x{FF1A}-\\x{FF5E}\\x{2018}-\\x{201F}"
      "\\x{3000}-\\x{3002}]+",
      "\\s+$", DS_CJK, "\\p{N}+"},
     false, false},
    {"deepseek-coder", {"[\\r\\n]", "\\s?\\p{L}+", "\\s?\\p{P}+", DS_CJK, "\\p{N}"}, false,
     false},
};
#define N_PRE (sizeof k_pre / sizeof k_pre[0])

static bool name_in_list(const char *list, const char *name, size_t len) {
  const char *p = list;
  while (*p) {
    const char *bar = strchr(p, '|');
    size_t n = bar ? (size_t)(bar - p) : strlen(p);
    if (n == len && memcmp(p, name, len) == 0) return true;
    if (!bar) break;
    p = bar + 1;
  }
  return false;
}

/* ------------------------------------------------------------------------ */
/* GPT-2 byte-to-unicode alphabet                                             */

/* Printable Latin-1 bytes stand for themselves; the other 68 (0x00-0x20,
 * 0x7F-0xA0, 0xAD) are numbered upwards from U+0100 in byte order. */
uint32_t ss_gpt2_byte_to_cp(uint8_t b) {
  if ((b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE) return b;
  if (b <= 0x20) return 0x100u + b;
  if (b <= 0xA0) return 0x100u + 33 + (b - 0x7Fu);
  return 0x100u + 67; /* 0xAD */
}

int ss_gpt2_cp_to_byte(uint32_t cp) {
  if (cp < 0x100) {
    uint8_t b = (uint8_t)cp;
    return ss_gpt2_byte_to_cp(b) == cp ? (int)cp : -1;
  }
  if (cp < 0x100 + 33) return (int)(cp - 0x100);
  if (cp < 0x100 + 67) return (int)(0x7F + (cp - 0x100 - 33));
  if (cp == 0x100 + 67) return 0xAD;
  return -1;
}

/* ------------------------------------------------------------------------ */
/* Set-up                                                                     */

/* llama.cpp's \s is Unicode White_Space (its unicode_set_whitespace); PCRE2's
 * \s in UCP mode also takes U+180E, so the patterns are compiled with \s and
 * \S spelled out as that exact set. */
#define WS_SET "\\t-\\r\\x{20}\\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}" \
               "\\x{202F}\\x{205F}\\x{3000}"

/* Copies pattern re to out with \s and \S replaced; false if out is too small. */
static bool expand_whitespace(const char *re, char *out, size_t cap) {
  size_t n = 0;
  bool in_class = false;
  for (const char *p = re; *p; p++) {
    const char *add = NULL;
    char two[3] = {p[0], 0, 0};
    if (p[0] == '\\' && p[1]) {
      if (p[1] == 's') add = in_class ? WS_SET : "[" WS_SET "]";
      else if (p[1] == 'S' && !in_class) add = "[^" WS_SET "]";
      if (!add) {
        two[1] = p[1];
        add = two;
      }
      p++;
    } else {
      if (p[0] == '[' && !in_class) in_class = true;
      else if (p[0] == ']' && in_class) in_class = false;
      add = two;
    }
    size_t k = strlen(add);
    if (n + k + 1 > cap) return false;
    memcpy(out + n, add, k);
    n += k;
  }
  out[n] = 0;
  return true;
}

/* Compiles one split pattern (ours, or a file's when path is set) into the
 * next regex slot. */
static int compile_regex(ss_tokenizer *t, const char *src, const char *path) {
  int err;
  PCRE2_SIZE err_off;
  char re[8192];
  if (t->n_regex >= SS_TOK_MAX_REGEX)
    return ss_error(SS_ERR_INTERNAL, "tokenizer: more than %d split patterns", SS_TOK_MAX_REGEX);
  if (!expand_whitespace(src, re, sizeof re))
    return path ? ss_error(SS_ERR_FORMAT, "%s: pat_str is too long (at most %zu bytes)", path,
                           sizeof re / 4)
                : ss_error(SS_ERR_INTERNAL, "pre-tokenizer regex %d is too long", t->n_regex);
  /* $ is the end of the piece only (DeepSeek's "\s+$"), as in std::regex. */
  pcre2_code *code =
      pcre2_compile((PCRE2_SPTR)re, PCRE2_ZERO_TERMINATED,
                    PCRE2_UTF | PCRE2_UCP | PCRE2_DOLLAR_ENDONLY, &err, &err_off, NULL);
  if (!code) {
    PCRE2_UCHAR msg[256];
    pcre2_get_error_message(err, msg, sizeof msg);
    if (path)
      return ss_error(SS_ERR_FORMAT, "%s: pat_str does not compile at offset %zu: %s", path,
                      (size_t)err_off, (const char *)msg);
    return ss_error(SS_ERR_INTERNAL, "pre-tokenizer regex %d does not compile at %zu: %s",
                    t->n_regex, (size_t)err_off, (const char *)msg);
  }
  /* JIT is an optimisation only: without it pcre2_match interprets. */
  (void)pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);
  t->regex[t->n_regex++] = code;
  return SS_OK;
}

int ss_tok_tiktoken_init(ss_tokenizer *t, const char *path, const char *pattern) {
  int rc = compile_regex(t, pattern, path);
  if (rc) return rc;
  t->tiktoken = true;
  t->ignore_merges = true; /* a piece that is a token is that token */
  snprintf(t->describe, sizeof t->describe, "byte-level BPE (tiktoken ranks)");
  return SS_OK;
}

int ss_tok_bpe_init(ss_tokenizer *t, const char *path, const char *pre, size_t pre_len,
                    bool *add_bos_default) {
  const pre_tokenizer *p = NULL;
  if (!pre) {
    p = &k_pre[0]; /* llama.cpp falls back to "default" when the key is missing */
  } else {
    for (size_t i = 0; i < N_PRE && !p; i++)
      if (name_in_list(k_pre[i].names, pre, pre_len)) p = &k_pre[i];
  }
  if (!p) {
    char supported[512];
    size_t off = 0;
    for (size_t i = 0; i < N_PRE; i++)
      for (const char *c = k_pre[i].names; *c && off + 4 < sizeof supported; c++) {
        if (*c == '|') {
          supported[off++] = ',';
          supported[off++] = ' ';
        } else {
          supported[off++] = *c;
        }
        if (c[1] == 0 && i + 1 < N_PRE) {
          supported[off++] = ',';
          supported[off++] = ' ';
        }
      }
    supported[off] = 0;
    return ss_error(SS_ERR_UNSUPPORTED,
                    "%s: tokenizer.ggml.pre = '%.*s' is not a supported pre-tokenizer "
                    "(supported: %s)",
                    path, (int)(pre_len > 64 ? 64 : pre_len), pre, supported);
  }

  for (int i = 0; i < SS_TOK_MAX_REGEX && p->regex[i]; i++) {
    int rc = compile_regex(t, p->regex[i], NULL);
    if (rc) return rc;
  }
  t->ignore_merges = p->ignore_merges;
  *add_bos_default = p->add_bos;

  const char *name = pre ? pre : "default";
  int name_len = pre ? (int)(pre_len > 64 ? 64 : pre_len) : 7;
  snprintf(t->describe, sizeof t->describe, "byte-level BPE (gpt2), pre-tokenizer %.*s", name_len,
           name);
  return SS_OK;
}

void ss_tok_bpe_free(ss_tokenizer *t) {
  for (int i = 0; i < t->n_regex; i++) pcre2_code_free(t->regex[i]);
  t->n_regex = 0;
}

/* ------------------------------------------------------------------------ */
/* Pre-tokenization                                                           */

typedef struct span {
  size_t a, b; /* [a, b) */
} span;

typedef struct spans {
  span *p;
  size_t n, cap;
} spans;

static int spans_push(spans *v, size_t a, size_t b) {
  if (v->n == v->cap) {
    size_t cap = v->cap ? 2 * v->cap : 64;
    span *p = realloc(v->p, cap * sizeof *p);
    if (!p) return ss_error(SS_ERR_NOMEM, "tokenizer: out of memory");
    v->p = p;
    v->cap = cap;
  }
  v->p[v->n++] = (span){a, b};
  return SS_OK;
}

/* Splits s (valid UTF-8, inside text) by one regex into matches and gaps. */
static int split_span(const pcre2_code *code, pcre2_match_data *md, const char *text, span s,
                      bool keep_gaps, spans *out) {
  const PCRE2_SPTR subject = (PCRE2_SPTR)(text + s.a);
  const size_t len = s.b - s.a;
  size_t prev = 0, off = 0;
  uint32_t opts = PCRE2_NO_UTF_CHECK;
  int rc;
  while (off < len) {
    rc = pcre2_match(code, subject, len, off, opts, md, NULL);
    if (rc == PCRE2_ERROR_NOMATCH) break;
    if (rc < 0 && !(opts & PCRE2_NO_JIT)) {
      /* JIT stack exhausted or similar: the interpreter keeps its backtracking
       * state on the heap, so retry the same match there. */
      opts |= PCRE2_NO_JIT;
      continue;
    }
    if (rc < 0) {
      PCRE2_UCHAR msg[256];
      pcre2_get_error_message(rc, msg, sizeof msg);
      return ss_error(SS_ERR_INTERNAL, "tokenizer: pre-tokenizer regex failed: %s",
                      (const char *)msg);
    }
    const PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
    size_t ms = ov[0], me = ov[1];
    if (me <= ms) {
      /* None of the patterns can match empty; step over a character anyway. */
      int n = ms < len ? ss_utf8_seq_nbytes(subject + ms, len - ms) : 1;
      off = ms + (size_t)(n > 0 ? n : 1);
      continue;
    }
    if (keep_gaps && ms > prev && (rc = spans_push(out, s.a + prev, s.a + ms))) return rc;
    if ((rc = spans_push(out, s.a + ms, s.a + me))) return rc;
    prev = off = me;
  }
  if (keep_gaps && prev < len && (rc = spans_push(out, s.a + prev, s.b))) return rc;
  return SS_OK;
}

/* ------------------------------------------------------------------------ */
/* Merges                                                                     */

typedef struct symbol {
  int32_t prev, next;
  uint32_t off, n; /* bytes of the encoded word; n == 0 once merged away */
} symbol;

typedef struct bigram {
  int32_t rank;
  int32_t left, right;
  uint32_t nbytes;
} bigram;

typedef struct bpe_scratch {
  char *word; /* the piece in the GPT-2 alphabet */
  size_t word_cap;
  symbol *sym;
  size_t sym_cap;
  bigram *heap;
  size_t heap_n, heap_cap;
} bpe_scratch;

/* Lower rank first; equal ranks, leftmost first (llama.cpp's comparator). */
static bool bigram_before(const bigram *x, const bigram *y) {
  return x->rank < y->rank || (x->rank == y->rank && x->left < y->left);
}

static int heap_push(bpe_scratch *s, bigram b) {
  if (s->heap_n == s->heap_cap) {
    size_t cap = s->heap_cap ? 2 * s->heap_cap : 64;
    bigram *p = realloc(s->heap, cap * sizeof *p);
    if (!p) return ss_error(SS_ERR_NOMEM, "tokenizer: out of memory");
    s->heap = p;
    s->heap_cap = cap;
  }
  size_t i = s->heap_n++;
  while (i > 0) {
    size_t parent = (i - 1) / 2;
    if (!bigram_before(&b, &s->heap[parent])) break;
    s->heap[i] = s->heap[parent];
    i = parent;
  }
  s->heap[i] = b;
  return SS_OK;
}

static bigram heap_pop(bpe_scratch *s) {
  bigram top = s->heap[0];
  bigram last = s->heap[--s->heap_n];
  size_t i = 0, n = s->heap_n;
  for (;;) {
    size_t c = 2 * i + 1;
    if (c >= n) break;
    if (c + 1 < n && bigram_before(&s->heap[c + 1], &s->heap[c])) c++;
    if (!bigram_before(&s->heap[c], &last)) break;
    s->heap[i] = s->heap[c];
    i = c;
  }
  if (n > 0) s->heap[i] = last;
  return top;
}

static int add_bigram(const ss_tokenizer *t, bpe_scratch *s, int32_t left, int32_t right) {
  if (left < 0 || right < 0) return SS_OK;
  const symbol *l = &s->sym[left], *r = &s->sym[right];
  int32_t rank;
  if (t->tiktoken) {
    /* tiktoken: the rank of the merged bytes, i.e. their token's id. */
    rank = ss_tok_lookup(t, s->word + l->off, l->n + r->n);
    if (rank >= 0 && t->type[rank] != SS_TOKTYPE_NORMAL) rank = -1;
  } else {
    rank = ss_tok_merge_rank(t, s->word + l->off, l->n, s->word + r->off, r->n);
  }
  if (rank < 0) return SS_OK;
  return heap_push(s, (bigram){rank, left, right, l->n + r->n});
}

/* Tokenizes one pre-token, already in the GPT-2 alphabet (s->word, wn bytes). */
static int bpe_word(const ss_tokenizer *t, bpe_scratch *s, size_t wn, ss_tok_ids *out) {
  const char *w = s->word;
  int rc;
  bool newlines = t->raw_bpe && wn > 0;
  for (size_t i = 0; i < wn && newlines; i++) newlines = w[i] == '\n';
  if (t->ignore_merges || newlines) {
    int32_t id = ss_tok_lookup(t, w, wn);
    if (id >= 0 && !(t->tiktoken && t->type[id] != SS_TOKTYPE_NORMAL))
      return ss_tok_ids_push(out, id);
  }
  if (s->sym_cap < wn) {
    symbol *p = realloc(s->sym, wn * sizeof *p);
    if (!p) return ss_error(SS_ERR_NOMEM, "tokenizer: out of memory");
    s->sym = p;
    s->sym_cap = wn;
  }
  int32_t n_sym = 0;
  for (size_t off = 0; off < wn;) {
    int n = ss_utf8_seq_nbytes((const uint8_t *)w + off, wn - off);
    if (n <= 0) n = 1; /* cannot happen: the GPT-2 alphabet is valid UTF-8 */
    s->sym[n_sym] = (symbol){n_sym - 1, -1, (uint32_t)off, (uint32_t)n};
    if (n_sym > 0) s->sym[n_sym - 1].next = n_sym;
    n_sym++;
    off += (size_t)n;
  }
  s->heap_n = 0;
  for (int32_t i = 1; i < n_sym; i++)
    if ((rc = add_bigram(t, s, i - 1, i))) return rc;

  while (s->heap_n > 0) {
    bigram b = heap_pop(s);
    symbol *l = &s->sym[b.left], *r = &s->sym[b.right];
    /* A symbol only grows, by taking in its right neighbour, so a bigram is
     * current exactly when both sides are alive with their original sizes. */
    if (l->n == 0 || r->n == 0 || l->n + r->n != b.nbytes) continue;
    l->n += r->n;
    r->n = 0;
    l->next = r->next;
    if (r->next >= 0) s->sym[r->next].prev = b.left;
    if ((rc = add_bigram(t, s, l->prev, b.left))) return rc;
    if ((rc = add_bigram(t, s, b.left, l->next))) return rc;
  }

  for (int32_t i = 0; i >= 0 && n_sym > 0; i = s->sym[i].next) {
    const symbol *sy = &s->sym[i];
    int32_t id = ss_tok_lookup(t, w + sy->off, sy->n);
    if (id >= 0) {
      if ((rc = ss_tok_ids_push(out, id))) return rc;
      continue;
    }
    /* Not in the vocabulary (a merge whose result is missing): one token per
     * GPT-2 character, i.e. per byte; characters without a token are dropped,
     * as llama.cpp drops them.  Raw BPE: a <0xNN> token per byte. */
    if (t->raw_bpe) {
      for (uint32_t k = 0; k < sy->n; k++) {
        int32_t bid = t->byte_token[(uint8_t)w[sy->off + k]];
        if (bid >= 0 && (rc = ss_tok_ids_push(out, bid))) return rc;
      }
      continue;
    }
    for (uint32_t off = 0; off < sy->n;) {
      int n = ss_utf8_seq_nbytes((const uint8_t *)w + sy->off + off, sy->n - off);
      if (n <= 0) n = 1;
      int32_t cid = ss_tok_lookup(t, w + sy->off + off, (size_t)n);
      if (cid >= 0 && (rc = ss_tok_ids_push(out, cid))) return rc;
      off += (uint32_t)n;
    }
  }
  return SS_OK;
}

/* ------------------------------------------------------------------------ */
/* Entry point                                                                */

int ss_tok_bpe_encode(const ss_tokenizer *t, const char *text, size_t len, ss_tok_ids *out) {
  if (len == 0) return SS_OK;
  int rc = SS_OK;
  char *escaped = NULL; /* raw BPE: the text with spaces as U+2581 */
  if (t->raw_bpe) {
    size_t n_spaces = 0;
    for (size_t i = 0; i < len; i++) n_spaces += text[i] == ' ';
    if (n_spaces) {
      if (!(escaped = malloc(len + 2 * n_spaces)))
        return ss_error(SS_ERR_NOMEM, "tokenizer: out of memory");
      size_t j = 0;
      for (size_t i = 0; i < len; i++) {
        if (text[i] == ' ') {
          memcpy(escaped + j, "\xE2\x96\x81", 3);
          j += 3;
        } else {
          escaped[j++] = text[i];
        }
      }
      text = escaped;
      len = j;
    }
  }
  char *clean = NULL;        /* text with invalid bytes replaced by U+FFFD */
  uint8_t *invalid = NULL;   /* (len) 1 where a byte is not part of valid UTF-8 */
  const char *subject = text;
  size_t subject_len = len;
  spans cur = {0}, next = {0};
  bpe_scratch s = {0};
  pcre2_match_data *md = NULL;

  if (!ss_utf8_valid(text, len)) {
    clean = malloc(3 * len);
    invalid = calloc(len, 1);
    if (!clean || !invalid) {
      rc = ss_error(SS_ERR_NOMEM, "tokenizer: out of memory");
      goto done;
    }
    size_t j = 0;
    for (size_t i = 0; i < len;) {
      int n = ss_utf8_seq_nbytes((const uint8_t *)text + i, len - i);
      if (n > 0) {
        memcpy(clean + j, text + i, (size_t)n);
        j += (size_t)n;
        i += (size_t)n;
      } else {
        memcpy(clean + j, SS_UTF8_REPLACEMENT, SS_UTF8_REPLACEMENT_NBYTES);
        j += SS_UTF8_REPLACEMENT_NBYTES;
        invalid[i++] = 1;
      }
    }
    subject = clean;
    subject_len = j;
  }

  md = pcre2_match_data_create(16, NULL);
  if (!md || (rc = spans_push(&cur, 0, subject_len))) {
    if (!rc) rc = ss_error(SS_ERR_NOMEM, "tokenizer: out of memory");
    goto done;
  }
  for (int r = 0; r < t->n_regex; r++) {
    next.n = 0;
    for (size_t i = 0; i < cur.n; i++)
      if ((rc = split_span(t->regex[r], md, subject, cur.p[i], !t->tiktoken, &next))) goto done;
    spans tmp = cur;
    cur = next;
    next = tmp;
  }

  /* The pieces cover the subject in order; walk it and the text together to
   * find each piece's bytes in the text (an invalid byte is 3 in the subject,
   * and no piece boundary falls inside it). */
  size_t at_subject = 0, at_text = 0;
  for (size_t i = 0; i < cur.n; i++) {
    size_t a = 0, b = 0;
    if (!invalid) {
      a = cur.p[i].a;
      b = cur.p[i].b;
    } else {
      for (int edge = 0; edge < 2; edge++) {
        size_t target = edge ? cur.p[i].b : cur.p[i].a;
        while (at_subject < target) {
          at_subject += invalid[at_text] ? SS_UTF8_REPLACEMENT_NBYTES : 1;
          at_text++;
        }
        if (edge) b = at_text;
        else a = at_text;
      }
    }
    if (b <= a) continue;
    size_t need = 6 * (b - a); /* GPT-2 characters are 1-2 bytes; U+FFFD is 3 of them */
    if (s.word_cap < need) {
      char *p = realloc(s.word, need);
      if (!p) {
        rc = ss_error(SS_ERR_NOMEM, "tokenizer: out of memory");
        goto done;
      }
      s.word = p;
      s.word_cap = need;
    }
    size_t wn = 0;
    for (size_t k = a; k < b; k++) {
      uint8_t byte = (uint8_t)text[k];
      if (invalid && invalid[k] && t->byte_token[byte] < 0) {
        for (int r = 0; r < SS_UTF8_REPLACEMENT_NBYTES; r++) {
          uint8_t rb = (uint8_t)SS_UTF8_REPLACEMENT[r];
          if (t->raw_bpe) {
            s.word[wn++] = (char)rb;
            continue;
          }
          memcpy(s.word + wn, t->gpt2_char[rb], t->gpt2_nbytes[rb]);
          wn += t->gpt2_nbytes[rb];
        }
        continue;
      }
      if (t->raw_bpe) {
        s.word[wn++] = (char)byte;
        continue;
      }
      memcpy(s.word + wn, t->gpt2_char[byte], t->gpt2_nbytes[byte]);
      wn += t->gpt2_nbytes[byte];
    }
    if ((rc = bpe_word(t, &s, wn, out))) goto done;
  }

done:
  pcre2_match_data_free(md);
  free(cur.p);
  free(next.p);
  free(s.word);
  free(s.sym);
  free(s.heap);
  free(clean);
  free(invalid);
  free(escaped);
  return rc;
}
