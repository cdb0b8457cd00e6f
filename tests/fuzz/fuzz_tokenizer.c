/* Every tokenizer kind on arbitrary bytes, then the streaming detokenizer on
 * the ids it made and on ids taken from the input.  The first byte picks the
 * vocabulary (byte-level BPE gpt-2 and starcoder and SentencePiece llama from
 * tests/data, WordPiece from tests/fuzz/data) and the flags; the rest is the
 * text.  Invariants: ids in range, the detokenizer within its buffer. */
#include "runtime/formats/gguf.h"
#include "runtime/tokenizer/tokenizer.h"
#include "tests/fuzz/fuzz_common.h"

static const char *const k_vocabs[] = {
    SS_FUZZ_DIR "/../data/tokenizer/ggml-vocab-gpt-2.gguf",
    SS_FUZZ_DIR "/../data/tokenizer/ggml-vocab-starcoder.gguf",
    SS_FUZZ_DIR "/../data/tokenizer/ggml-vocab-llama-spm.gguf",
    SS_FUZZ_DIR "/data/vocab-bert-tiny.gguf",
};
#define N_VOCABS 4
static ss_gguf *g_file[N_VOCABS];
static ss_tokenizer *g_tok[N_VOCABS];

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  for (int i = 0; i < N_VOCABS; i++)
    if (ss_gguf_open(k_vocabs[i], &g_file[i]) || ss_tokenizer_load(g_file[i], &g_tok[i])) {
      fprintf(stderr, "fuzz_tokenizer: %s\n", ss_error_msg());
      abort();
    }
  return 0;
}

static void detok_ids(const ss_tokenizer *t, const int32_t *ids, size_t n, bool special) {
  enum { CAP = 4096 };
  static char out[CAP];
  ss_detok d;
  ss_detok_init(&d, t, special);
  for (size_t i = 0; i < n; i++) {
    size_t k = ss_detok_push(&d, ids[i], out, CAP);
    FUZZ_CHECK(k < CAP && out[k] == 0);
  }
  size_t k = ss_detok_flush(&d, out, CAP);
  FUZZ_CHECK(k < CAP && out[k] == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1) return 0;
  const ss_tokenizer *t = g_tok[data[0] % N_VOCABS];
  bool add_bos = data[0] & 0x10, special = data[0] & 0x20;
  const char *text = (const char *)data + 1;
  size_t len = size - 1;
  int32_t *ids = NULL;
  size_t n = 0;
  const int32_t nv = ss_tokenizer_n_vocab(t);
  if (ss_tokenizer_encode(t, text, len, add_bos, special, &ids, &n) == 0) {
    for (size_t i = 0; i < n; i++) FUZZ_CHECK(ids[i] >= 0 && ids[i] < nv);
    detok_ids(t, ids, n, special);
  }
  free(ids);
  /* The input's bytes as ids, two bytes each. */
  size_t m = len / 2;
  int32_t *raw = calloc(m ? m : 1, sizeof *raw);
  for (size_t i = 0; i < m; i++)
    raw[i] = (int32_t)(((uint32_t)(uint8_t)text[2 * i] << 8 | (uint8_t)text[2 * i + 1]) % (uint32_t)nv);
  detok_ids(t, raw, m, !special);
  char piece[64];
  for (size_t i = 0; i < m && i < 64; i++) {
    size_t k = ss_tokenizer_piece(t, raw[i], special, piece, sizeof piece);
    (void)k;
  }
  free(raw);
  return 0;
}
