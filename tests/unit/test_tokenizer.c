/* Tokenizer: vocabulary lookups, the streaming detokenizer (characters split
 * across tokens, invalid sequences, SPM's leading space, small buffers),
 * encode/decode round trips over llama.cpp's test inputs, load errors on
 * crafted GGUF files, the time to tokenize a 2,000-token prompt, and a tiny
 * tiktoken tokenizer.tok.json folder.
 *
 * The vocabularies are tests/data/tokenizer/ggml-vocab-*.gguf, found through
 * the SS_TESTDATA environment variable. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "runtime/base/clock.h"
#include "runtime/base/status.h"
#include "runtime/formats/gguf.h"
#include "runtime/tokenizer/tokenizer.h"

enum { V_GPT2, V_STARCODER, V_SPM, N_VOCABS };
static const char *const k_names[N_VOCABS] = {"gpt-2", "starcoder", "llama-spm"};
static ss_gguf *g_files[N_VOCABS];
static ss_tokenizer *g_tok[N_VOCABS];

static void vocab_path(char *buf, size_t cap, int v, const char *suffix) {
  const char *dir = getenv("SS_TESTDATA");
  snprintf(buf, cap, "%s/tokenizer/ggml-vocab-%s.gguf%s", dir ? dir : "tests/data", k_names[v],
           suffix);
}

static int setup(void **state) {
  for (int v = 0; v < N_VOCABS; v++) {
    char path[1024];
    vocab_path(path, sizeof path, v, "");
    if (ss_gguf_open(path, &g_files[v]) || ss_tokenizer_load(g_files[v], &g_tok[v])) {
      fprintf(stderr, "cannot load %s: %s (set SS_TESTDATA to tests/data)\n", path,
              ss_error_msg());
      return -1;
    }
  }
  return 0;
}

static int teardown(void **state) {
  for (int v = 0; v < N_VOCABS; v++) {
    ss_tokenizer_free(g_tok[v]);
    ss_gguf_close(g_files[v]);
  }
  return 0;
}

/* GPT-2's byte-to-unicode character for byte b, as UTF-8, written here from
 * the definition rather than taken from the tokenizer. */
static void gpt2_char(uint8_t b, char out[3]) {
  int printable[256] = {0}, n = 0;
  for (int c = 0x21; c <= 0x7E; c++) printable[c] = 1;
  for (int c = 0xA1; c <= 0xAC; c++) printable[c] = 1;
  for (int c = 0xAE; c <= 0xFF; c++) printable[c] = 1;
  unsigned cp = b;
  if (!printable[b]) {
    for (int c = 0; c < b; c++) n += !printable[c];
    cp = 256u + (unsigned)n;
  }
  if (cp < 0x80) {
    out[0] = (char)cp;
    out[1] = 0;
  } else {
    out[0] = (char)(0xC0 | (cp >> 6));
    out[1] = (char)(0x80 | (cp & 0x3F));
    out[2] = 0;
  }
}

static int32_t gpt2_byte_token(const ss_tokenizer *t, uint8_t b) {
  char c[3];
  gpt2_char(b, c);
  return ss_tokenizer_find(t, c);
}

/* Decodes ids with the streaming detokenizer, flushing at the end. */
static char *detok_all(const ss_tokenizer *t, const int32_t *ids, size_t n, size_t *len) {
  char *text = malloc(n * 64 + SS_DETOK_MIN_CAP);
  assert_non_null(text);
  ss_detok d;
  ss_detok_init(&d, t, false);
  size_t at = 0;
  char buf[SS_DETOK_MIN_CAP];
  for (size_t i = 0; i < n; i++) {
    size_t k = ss_detok_push(&d, ids[i], buf, sizeof buf);
    assert_int_equal(buf[k], 0); /* NUL-terminated */
    memcpy(text + at, buf, k);
    at += k;
  }
  at += ss_detok_flush(&d, text + at, SS_DETOK_MIN_CAP);
  *len = at;
  return text;
}

/* ------------------------------------------------------------------------ */

static void test_vocab_lookups(void **state) {
  const ss_tokenizer *g = g_tok[V_GPT2], *s = g_tok[V_SPM], *sc = g_tok[V_STARCODER];
  assert_int_equal(ss_tokenizer_kind(g), SS_TOK_BPE);
  assert_int_equal(ss_tokenizer_n_vocab(g), 50257);
  assert_int_equal(ss_tokenizer_find(g, "<|endoftext|>"), 50256);
  assert_int_equal(ss_tokenizer_token_type(g, 50256), SS_TOKTYPE_CONTROL);
  assert_true(ss_tokenizer_is_eog(g, 50256));
  assert_false(ss_tokenizer_is_eog(g, 0));
  assert_false(ss_tokenizer_is_eog(g, -1));
  assert_false(ss_tokenizer_is_eog(g, 50257));
  assert_int_equal(ss_tokenizer_bos(g), 50256);
  assert_false(ss_tokenizer_add_bos(g));
  assert_non_null(strstr(ss_tokenizer_describe(g), "gpt-2"));
  assert_string_equal(ss_tokenizer_token_text(g, 0), "!");
  assert_null(ss_tokenizer_token_text(g, -1));
  assert_null(ss_tokenizer_token_text(g, 50257));
  assert_int_equal(ss_tokenizer_find(g, "no such token"), -1);
  assert_int_equal(ss_tokenizer_find(g, "\xC4\xA0the"), 262); /* "Ġthe" */

  assert_int_equal(ss_tokenizer_kind(s), SS_TOK_SPM);
  assert_int_equal(ss_tokenizer_n_vocab(s), 32000);
  assert_int_equal(ss_tokenizer_bos(s), 1);
  assert_int_equal(ss_tokenizer_eos(s), 2);
  assert_true(ss_tokenizer_add_bos(s));
  assert_true(ss_tokenizer_is_eog(s, 2));
  assert_int_equal(ss_tokenizer_find(s, "<0x0A>"), 13);
  assert_int_equal(ss_tokenizer_token_type(s, 13), SS_TOKTYPE_BYTE);
  assert_int_equal(ss_tokenizer_token_type(s, 0), SS_TOKTYPE_UNKNOWN);

  assert_non_null(strstr(ss_tokenizer_describe(sc), "starcoder"));
  assert_true(ss_tokenizer_is_eog(sc, 0)); /* <|endoftext|>, also EOS */
  assert_false(ss_tokenizer_is_eog(sc, 1));
}

static void test_pieces(void **state) {
  const ss_tokenizer *g = g_tok[V_GPT2], *s = g_tok[V_SPM];
  char buf[64];
  assert_int_equal(ss_tokenizer_piece(g, 262, false, buf, sizeof buf), 4);
  assert_memory_equal(buf, " the", 4);
  /* Control tokens: nothing, unless asked for. */
  assert_int_equal(ss_tokenizer_piece(g, 50256, false, buf, sizeof buf), 0);
  assert_int_equal(ss_tokenizer_piece(g, 50256, true, buf, sizeof buf), 13);
  assert_memory_equal(buf, "<|endoftext|>", 13);
  /* SPM: "▁" is a space, <0xNN> is the byte, <unk> is a special token. */
  assert_int_equal(ss_tokenizer_piece(s, 13, false, buf, sizeof buf), 1);
  assert_int_equal(buf[0], '\n');
  assert_int_equal(ss_tokenizer_piece(s, 0, false, buf, sizeof buf), 0);
  int32_t hello = ss_tokenizer_find(s, "\xE2\x96\x81Hello");
  assert_true(hello >= 0);
  assert_int_equal(ss_tokenizer_piece(s, hello, false, buf, sizeof buf), 6);
  assert_memory_equal(buf, " Hello", 6);
  /* Out of range ids give nothing; a short buffer gets what fits and the
   * full length is returned. */
  assert_int_equal(ss_tokenizer_piece(g, -5, false, buf, sizeof buf), 0);
  assert_int_equal(ss_tokenizer_piece(g, 99999, false, buf, sizeof buf), 0);
  memset(buf, 'Z', sizeof buf);
  assert_int_equal(ss_tokenizer_piece(g, 50256, true, buf, 5), 13);
  assert_memory_equal(buf, "<|end", 5);
  assert_int_equal(buf[5], 'Z');
  assert_int_equal(ss_tokenizer_piece(g, 50256, true, NULL, 0), 13);
}

/* "🦙" (F0 9F A6 99) as four byte tokens: nothing comes out until the last. */
static void test_detok_split_character(void **state) {
  const ss_tokenizer *g = g_tok[V_GPT2];
  const uint8_t llama[4] = {0xF0, 0x9F, 0xA6, 0x99};
  ss_detok d;
  ss_detok_init(&d, g, false);
  char out[SS_DETOK_MIN_CAP];
  for (int i = 0; i < 4; i++) {
    int32_t id = gpt2_byte_token(g, llama[i]);
    assert_true(id >= 0);
    size_t n = ss_detok_push(&d, id, out, sizeof out);
    if (i < 3) {
      assert_int_equal(n, 0);
      assert_string_equal(out, "");
    } else {
      assert_int_equal(n, 4);
      assert_string_equal(out, "\xF0\x9F\xA6\x99");
    }
  }
  assert_int_equal(ss_detok_flush(&d, out, sizeof out), 0);

  /* The same through the encoder: whatever ids " this is 🦙.cpp" becomes,
   * streaming them gives the text back. */
  const char *text = " this is \xF0\x9F\xA6\x99.cpp";
  int32_t *ids;
  size_t n_ids, len;
  assert_int_equal(ss_tokenizer_encode(g, text, strlen(text), false, false, &ids, &n_ids), 0);
  char *back = detok_all(g, ids, n_ids, &len);
  assert_int_equal(len, strlen(text));
  assert_memory_equal(back, text, len);
  free(back);
  free(ids);
}

static void test_detok_invalid(void **state) {
  const ss_tokenizer *g = g_tok[V_GPT2];
  ss_detok d;
  ss_detok_init(&d, g, false);
  char out[SS_DETOK_MIN_CAP];
  /* 0xFF never occurs in UTF-8. */
  assert_int_equal(ss_detok_push(&d, gpt2_byte_token(g, 0xFF), out, sizeof out), 3);
  assert_string_equal(out, "\xEF\xBF\xBD");
  /* A lone continuation byte. */
  assert_int_equal(ss_detok_push(&d, gpt2_byte_token(g, 0x80), out, sizeof out), 3);
  assert_string_equal(out, "\xEF\xBF\xBD");
  /* A 4-byte sequence cut short by 'a': U+FFFD, then 'a'. */
  assert_int_equal(ss_detok_push(&d, gpt2_byte_token(g, 0xF0), out, sizeof out), 0);
  assert_int_equal(ss_detok_push(&d, gpt2_byte_token(g, 0x9F), out, sizeof out), 0);
  assert_int_equal(ss_detok_push(&d, gpt2_byte_token(g, 'a'), out, sizeof out), 4);
  assert_string_equal(out, "\xEF\xBF\xBD" "a");
  /* An overlong form (C0 AF) and a surrogate (ED A0 80) are invalid too. */
  assert_int_equal(ss_detok_push(&d, gpt2_byte_token(g, 0xC0), out, sizeof out), 3);
  assert_int_equal(ss_detok_push(&d, gpt2_byte_token(g, 0xAF), out, sizeof out), 3);
  assert_int_equal(ss_detok_push(&d, gpt2_byte_token(g, 0xED), out, sizeof out), 0);
  assert_int_equal(ss_detok_push(&d, gpt2_byte_token(g, 0xA0), out, sizeof out), 6);
  assert_string_equal(out, "\xEF\xBF\xBD\xEF\xBF\xBD");
  assert_int_equal(ss_detok_push(&d, gpt2_byte_token(g, 0x80), out, sizeof out), 3);
  /* Held bytes at the end come out as one U+FFFD on flush. */
  assert_int_equal(ss_detok_push(&d, gpt2_byte_token(g, 0xE2), out, sizeof out), 0);
  assert_int_equal(ss_detok_push(&d, gpt2_byte_token(g, 0x82), out, sizeof out), 0);
  assert_int_equal(ss_detok_flush(&d, out, sizeof out), 3);
  assert_string_equal(out, "\xEF\xBF\xBD");
  assert_int_equal(ss_detok_flush(&d, out, sizeof out), 0);
}

/* Never past cap: a character that does not fit is dropped whole. */
static void test_detok_small_buffer(void **state) {
  const ss_tokenizer *g = g_tok[V_GPT2];
  ss_detok d;
  ss_detok_init(&d, g, true);
  char out[16];
  memset(out, 'Z', sizeof out);
  size_t n = ss_detok_push(&d, 50256, out, 6); /* "<|endoftext|>" into 5 bytes + NUL */
  assert_true(n <= 5);
  assert_int_equal(out[n], 0);
  for (size_t i = 6; i < sizeof out; i++) assert_int_equal(out[i], 'Z');
  const uint8_t llama[4] = {0xF0, 0x9F, 0xA6, 0x99};
  memset(out, 'Z', sizeof out);
  for (int i = 0; i < 4; i++) n = ss_detok_push(&d, gpt2_byte_token(g, llama[i]), out, 3);
  assert_int_equal(n, 0); /* 4 bytes cannot fit in 2 */
  assert_int_equal(out[0], 0);
  assert_int_equal(out[3], 'Z');
  assert_int_equal(ss_detok_push(&d, 0, out, 0), 0);
  assert_int_equal(out[0], 0);
}

static void test_detok_spm_leading_space(void **state) {
  const ss_tokenizer *s = g_tok[V_SPM];
  int32_t *ids;
  size_t n_ids, len;
  const char *text = "Hello world";
  assert_int_equal(ss_tokenizer_encode(s, text, strlen(text), false, false, &ids, &n_ids), 0);
  char piece[64];
  size_t np = ss_tokenizer_piece(s, ids[0], false, piece, sizeof piece);
  assert_int_equal(np, 6);
  assert_memory_equal(piece, " Hello", 6); /* the space the tokenizer added */
  char *back = detok_all(s, ids, n_ids, &len);
  assert_int_equal(len, strlen(text));
  assert_memory_equal(back, text, len);
  free(back);
  free(ids);

  /* With BOS first (no output of its own) the space still goes, and only one
   * space goes: " Hello" keeps its own. */
  text = " Hello";
  assert_int_equal(ss_tokenizer_encode(s, text, strlen(text), true, false, &ids, &n_ids), 0);
  assert_int_equal(ids[0], 1);
  back = detok_all(s, ids, n_ids, &len);
  assert_int_equal(len, strlen(text));
  assert_memory_equal(back, text, len);
  free(back);
  free(ids);

  /* BPE adds no space, so none is taken away. */
  text = " Hello";
  assert_int_equal(
      ss_tokenizer_encode(g_tok[V_GPT2], text, strlen(text), false, false, &ids, &n_ids), 0);
  back = detok_all(g_tok[V_GPT2], ids, n_ids, &len);
  assert_int_equal(len, strlen(text));
  assert_memory_equal(back, text, len);
  free(back);
  free(ids);
}

/* decode(encode(text)) == text for every test input of every vocabulary. */
static void test_round_trip_vectors(void **state) {
  static const char sep[] = "\n__ggml_vocab_test__\n";
  for (int v = 0; v < N_VOCABS; v++) {
    char path[1024];
    vocab_path(path, sizeof path, v, ".inp");
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    char *data = malloc(1 << 20);
    assert_non_null(data);
    size_t total = fread(data, 1, (1 << 20) - 1, f);
    fclose(f);
    data[total] = 0;
    int cases = 0;
    for (char *p = data; p < data + total;) {
      char *end = strstr(p, sep);
      assert_non_null(end);
      size_t n = (size_t)(end - p);
      int32_t *ids;
      size_t n_ids, len;
      assert_int_equal(ss_tokenizer_encode(g_tok[v], p, n, false, false, &ids, &n_ids), 0);
      char *back = detok_all(g_tok[v], ids, n_ids, &len);
      if (len != n || memcmp(back, p, n) != 0)
        fail_msg("%s: case %d (%.*s) does not round-trip: got %.*s", k_names[v], cases, (int)n, p,
                 (int)len, back);
      free(back);
      free(ids);
      cases++;
      p = end + strlen(sep);
    }
    assert_int_equal(cases, 46);
    free(data);
  }
}

static void test_encode_edges(void **state) {
  int32_t *ids;
  size_t n_ids;
  /* Empty text: a valid (non-NULL) empty array; with BOS, just BOS. */
  assert_int_equal(ss_tokenizer_encode(g_tok[V_SPM], NULL, 0, false, false, &ids, &n_ids), 0);
  assert_non_null(ids);
  assert_int_equal(n_ids, 0);
  free(ids);
  assert_int_equal(ss_tokenizer_encode(g_tok[V_SPM], "", 0, true, false, &ids, &n_ids), 0);
  assert_int_equal(n_ids, 1);
  assert_int_equal(ids[0], 1);
  free(ids);
  /* NUL bytes inside the text are text. */
  const char nul[] = {'a', 0, 'b'};
  for (int v = 0; v < N_VOCABS; v++) {
    assert_int_equal(ss_tokenizer_encode(g_tok[v], nul, 3, false, false, &ids, &n_ids), 0);
    size_t len;
    char *back = detok_all(g_tok[v], ids, n_ids, &len);
    assert_int_equal(len, 3);
    assert_memory_equal(back, nul, 3);
    free(back);
    free(ids);
  }
  /* Special tokens only with parse_special. */
  const char *chat = "<fim_prefix>x";
  assert_int_equal(
      ss_tokenizer_encode(g_tok[V_STARCODER], chat, strlen(chat), false, true, &ids, &n_ids), 0);
  assert_true(n_ids >= 2);
  assert_int_equal(ids[0], 1);
  free(ids);
  assert_int_equal(
      ss_tokenizer_encode(g_tok[V_STARCODER], chat, strlen(chat), false, false, &ids, &n_ids), 0);
  for (size_t i = 0; i < n_ids; i++) assert_int_not_equal(ids[i], 1);
  free(ids);
}

/* ------------------------------------------------------------------------ */
/* Load errors, on GGUF files written here.                                   */

typedef struct gguf_buf {
  uint8_t data[4096];
  size_t n;
  uint64_t n_kv;
} gguf_buf;

static void put(gguf_buf *b, const void *p, size_t n) {
  assert_true(b->n + n <= sizeof b->data);
  memcpy(b->data + b->n, p, n);
  b->n += n;
}
static void put_u32(gguf_buf *b, uint32_t v) { put(b, &v, 4); } /* little-endian host */
static void put_u64(gguf_buf *b, uint64_t v) { put(b, &v, 8); }
static void put_str(gguf_buf *b, const char *s) {
  put_u64(b, strlen(s));
  put(b, s, strlen(s));
}
static void kv_str(gguf_buf *b, const char *key, const char *val) {
  put_str(b, key);
  put_u32(b, 8); /* STRING */
  put_str(b, val);
  b->n_kv++;
}
static void kv_u32(gguf_buf *b, const char *key, uint32_t val) {
  put_str(b, key);
  put_u32(b, 4); /* UINT32 */
  put_u32(b, val);
  b->n_kv++;
}
static void kv_strs(gguf_buf *b, const char *key, const char *const *vals, uint64_t n) {
  put_str(b, key);
  put_u32(b, 9); /* ARRAY */
  put_u32(b, 8); /* of STRING */
  put_u64(b, n);
  for (uint64_t i = 0; i < n; i++) put_str(b, vals[i]);
  b->n_kv++;
}

/* Writes header + kv to a temporary file and tries to load a tokenizer. */
static int load_crafted(const gguf_buf *kv, char *msg, size_t msg_cap) {
  char path[] = "/tmp/ss-tok-XXXXXX";
  int fd = mkstemp(path);
  assert_true(fd >= 0);
  gguf_buf head = {.n = 0};
  put(&head, "GGUF", 4);
  put_u32(&head, 3);
  put_u64(&head, 0);      /* tensors */
  put_u64(&head, kv->n_kv);
  assert_int_equal(write(fd, head.data, head.n), (ssize_t)head.n);
  assert_int_equal(write(fd, kv->data, kv->n), (ssize_t)kv->n);
  close(fd);
  ss_gguf *g;
  int rc = ss_gguf_open(path, &g);
  assert_int_equal(rc, 0);
  ss_tokenizer *t = NULL;
  rc = ss_tokenizer_load(g, &t);
  snprintf(msg, msg_cap, "%s", ss_error_msg());
  if (rc == 0) assert_non_null(t);
  else assert_null(t);
  ss_tokenizer_free(t);
  ss_gguf_close(g);
  unlink(path);
  return rc;
}

static const char *const k_tiny_tokens[] = {"a", "b", "ab"};
static const char *const k_tiny_merges[] = {"a b"};

static void test_load_errors(void **state) {
  char msg[1024];
  gguf_buf b = {.n = 0};

  kv_str(&b, "tokenizer.ggml.model", "gpt2");
  assert_int_equal(load_crafted(&b, msg, sizeof msg), SS_ERR_FORMAT);
  assert_non_null(strstr(msg, "tokenizer.ggml.tokens"));

  b = (gguf_buf){.n = 0};
  kv_str(&b, "tokenizer.ggml.model", "t5");
  kv_strs(&b, "tokenizer.ggml.tokens", k_tiny_tokens, 3);
  assert_int_equal(load_crafted(&b, msg, sizeof msg), SS_ERR_UNSUPPORTED);
  assert_non_null(strstr(msg, "tokenizer.ggml.model = 't5'"));

  b = (gguf_buf){.n = 0};
  kv_str(&b, "tokenizer.ggml.model", "gpt2");
  kv_str(&b, "tokenizer.ggml.pre", "no-such-pre");
  kv_strs(&b, "tokenizer.ggml.tokens", k_tiny_tokens, 3);
  kv_strs(&b, "tokenizer.ggml.merges", k_tiny_merges, 1);
  assert_int_equal(load_crafted(&b, msg, sizeof msg), SS_ERR_UNSUPPORTED);
  assert_non_null(strstr(msg, "tokenizer.ggml.pre = 'no-such-pre'"));
  assert_non_null(strstr(msg, "llama3"));

  b = (gguf_buf){.n = 0};
  kv_str(&b, "tokenizer.ggml.model", "gpt2");
  kv_str(&b, "tokenizer.ggml.pre", "gpt-2");
  kv_strs(&b, "tokenizer.ggml.tokens", k_tiny_tokens, 3);
  assert_int_equal(load_crafted(&b, msg, sizeof msg), SS_ERR_FORMAT);
  assert_non_null(strstr(msg, "tokenizer.ggml.merges"));

  kv_strs(&b, "tokenizer.ggml.merges", k_tiny_merges, 1);
  assert_int_equal(load_crafted(&b, msg, sizeof msg), SS_OK);
  kv_u32(&b, "tokenizer.ggml.bos_token_id", 99);
  assert_int_equal(load_crafted(&b, msg, sizeof msg), SS_ERR_FORMAT);
  assert_non_null(strstr(msg, "tokenizer.ggml.bos_token_id = 99 is outside the vocabulary (3 "
                              "tokens)"));

  b = (gguf_buf){.n = 0};
  static const char *const dup[] = {"a", "b", "a"};
  kv_str(&b, "tokenizer.ggml.model", "llama");
  kv_strs(&b, "tokenizer.ggml.tokens", dup, 3);
  assert_int_equal(load_crafted(&b, msg, sizeof msg), SS_ERR_FORMAT);
  assert_non_null(strstr(msg, "duplicate"));
}

/* ------------------------------------------------------------------------ */
/* Speed: a 2,000-token prompt well under 10 ms.                              */

static void test_speed(void **state) {
  static const char para[] =
      "The committee met on 14 March 2024 to review the budget (about $1,250,000) and "
      "the schedule; members asked whether the new system's latency would stay under "
      "10 ms.\n    def f(x): return x ** 2 + 3\nCafé, naïve, Ελληνικά, 日本語のテキスト. ";
  size_t unit = strlen(para);
  char *text = malloc(unit * 40 + 1);
  assert_non_null(text);
  size_t len = 0;
  for (int v = 0; v < N_VOCABS; v++) {
    int32_t *ids;
    size_t n_ids = 0;
    /* Grow the text to about 2,000 tokens for this vocabulary. */
    len = 0;
    while (n_ids < 2000) {
      memcpy(text + len, para, unit);
      len += unit;
      assert_int_equal(ss_tokenizer_encode(g_tok[v], text, len, false, false, &ids, &n_ids), 0);
      free(ids);
    }
    double best = 1e9;
    for (int rep = 0; rep < 5; rep++) {
      double t0 = (ss_now_s() * 1e3);
      assert_int_equal(ss_tokenizer_encode(g_tok[v], text, len, false, false, &ids, &n_ids), 0);
      double dt = (ss_now_s() * 1e3) - t0;
      free(ids);
      if (dt < best) best = dt;
    }
    print_message("%s: %zu tokens (%zu bytes) in %.2f ms (best of 5)\n", k_names[v], n_ids, len,
                  best);
    /* Generous so that sanitizer builds pass; a quadratic step would not. */
    assert_true(best < 100.0);
  }
  /* Loading a 50k-token vocabulary. */
  double t0 = (ss_now_s() * 1e3);
  ss_tokenizer *t;
  assert_int_equal(ss_tokenizer_load(g_files[V_GPT2], &t), 0);
  double dt = (ss_now_s() * 1e3) - t0;
  ss_tokenizer_free(t);
  print_message("gpt-2: vocabulary of 50257 tokens and 50000 merges loaded in %.2f ms\n", dt);
  assert_true(dt < 1000.0);
  free(text);
}

/* A tiktoken tokenizer.tok.json written here: the 256 bytes (id = byte), "ab"
 * 256, "cd" 257, "abcd" 258, and <|eos|> 300 after a gap.  tiktoken merges a
 * pair by the rank of the merged bytes, so "ab" + "cd" forms "abcd" without a
 * merge list. */
static void test_tiktoken_folder(void **state) {
  char dir[] = "/tmp/ss-tiktoken-XXXXXX";
  assert_non_null(mkdtemp(dir));
  char path[256];
  snprintf(path, sizeof path, "%s/tokenizer.tok.json", dir);
  FILE *f = fopen(path, "w");
  assert_non_null(f);
  fprintf(f, "{\"regular_tokens\": [");
  for (int b = 0; b < 256; b++) fprintf(f, "{\"bytes\": [%d], \"token\": %d}, ", b, b);
  fprintf(f, "{\"bytes\": [97, 98], \"token\": 256}, {\"bytes\": [99, 100], \"token\": 257}, "
             "{\"bytes\": [97, 98, 99, 100], \"token\": 258}], ");
  fprintf(f, "\"special_tokens\": [{\"bytes\": [60, 124, 101, 111, 115, 124, 62], \"token\": 300}], "
             "\"word_split\": \"V1\"}");
  fclose(f);
  ss_tokenizer *t;
  int rc = ss_tokenizer_load_hf(dir, &t, NULL);
  unlink(path);
  rmdir(dir);
  assert_int_equal(rc, 0);
  assert_int_equal(ss_tokenizer_n_vocab(t), 301);
  assert_non_null(strstr(ss_tokenizer_describe(t), "tiktoken"));
  assert_int_equal(ss_tokenizer_token_type(t, 280), SS_TOKTYPE_UNUSED);

  static const char text[] = "abcdx abcx<|eos|>";
  int32_t *ids;
  size_t n;
  assert_int_equal(ss_tokenizer_encode(t, text, strlen(text), false, true, &ids, &n), 0);
  /* "abcdx" -> ab, cd -> abcd, x; " abcx" -> ' ', ab, c, x; then <|eos|>. */
  static const int32_t want[] = {258, 'x', ' ', 256, 'c', 'x', 300};
  assert_int_equal(n, sizeof want / sizeof want[0]);
  assert_memory_equal(ids, want, sizeof want);

  char out[SS_DETOK_MIN_CAP * 8];
  for (int special = 0; special < 2; special++) {
    ss_detok d;
    ss_detok_init(&d, t, special);
    size_t len = 0;
    for (size_t i = 0; i < n; i++) len += ss_detok_push(&d, ids[i], out + len, sizeof out - len);
    len += ss_detok_flush(&d, out + len, sizeof out - len);
    assert_string_equal(out, special ? "abcdx abcx<|eos|>" : "abcdx abcx");
  }
  free(ids);
  ss_tokenizer_free(t);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_vocab_lookups),
      cmocka_unit_test(test_pieces),
      cmocka_unit_test(test_detok_split_character),
      cmocka_unit_test(test_detok_invalid),
      cmocka_unit_test(test_detok_small_buffer),
      cmocka_unit_test(test_detok_spm_leading_space),
      cmocka_unit_test(test_round_trip_vectors),
      cmocka_unit_test(test_encode_edges),
      cmocka_unit_test(test_load_errors),
      cmocka_unit_test(test_speed),
      cmocka_unit_test(test_tiktoken_folder),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
