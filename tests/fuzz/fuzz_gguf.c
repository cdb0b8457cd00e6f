/* GGUF from memory: the header, every metadata value (nested arrays
 * included), tensor infos and data ranges; then every typed getter on every
 * key, and the tokenizer loader (and one encode) when the input has a vocab. */
#include "runtime/formats/gguf.h"
#include "runtime/tokenizer/tokenizer.h"
#include "tests/fuzz/fuzz_common.h"

static void touch_value(const ss_gguf *g, const char *key, const ss_gguf_value *v) {
  if (v->type == SS_GGUF_STRING) {
    volatile char sink = 0;
    if (v->str.len) sink ^= v->str.ptr[v->str.len - 1];
    (void)sink;
    return;
  }
  if (v->type != SS_GGUF_ARRAY) return;
  if (v->arr.items) {
    for (uint64_t i = 0; i < v->arr.count; i++) touch_value(g, key, &v->arr.items[i]);
    return;
  }
  for (uint64_t i = 0; i < v->arr.count && i < 4096; i++) {
    int64_t x;
    (void)ss_gguf_arr_int(g, key, v, i, &x);
    (void)ss_gguf_arr_float(v, i);
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  ss_gguf *g;
  if (ss_gguf_open_memory(data, size, "fuzz.gguf", &g)) return 0;
  for (uint64_t i = 0; i < g->n_kv; i++) {
    const char *k = g->kv[i].key;
    FUZZ_CHECK(ss_gguf_get(g, k) != NULL);
    int64_t x;
    double f;
    bool b;
    ss_gguf_str s;
    const ss_gguf_value *a;
    (void)ss_gguf_get_int(g, k, true, INT64_MIN, INT64_MAX, &x);
    (void)ss_gguf_get_int(g, k, true, 0, 100, &x);
    (void)ss_gguf_get_float(g, k, true, &f);
    (void)ss_gguf_get_bool(g, k, true, &b);
    (void)ss_gguf_get_str(g, k, true, &s);
    (void)ss_gguf_get_arr(g, k, true, SS_GGUF_INT32, &a);
    touch_value(g, k, &g->kv[i].value);
  }
  for (uint64_t i = 0; i < g->n_tensors; i++) {
    const ss_gguf_tensor *t = &g->tensors[i];
    FUZZ_CHECK(ss_gguf_tensor_find(g, t->name) == t);
    FUZZ_CHECK(t->offset + t->nbytes <= g->size - g->data_offset);
    if (t->nbytes) {
      volatile uint8_t sink = ((const uint8_t *)t->data)[t->nbytes - 1];
      (void)sink;
    }
  }
  ss_tokenizer *tok;
  if (ss_gguf_get(g, "tokenizer.ggml.tokens") && ss_tokenizer_load(g, &tok) == 0) {
    int32_t *ids = NULL;
    size_t n = 0;
    static const char k_text[] = " Hello world! <s> ab\xc3\xa9 123";
    if (ss_tokenizer_encode(tok, k_text, sizeof k_text - 1, true, true, &ids, &n) == 0) {
      char buf[64];
      for (size_t i = 0; i < n; i++) {
        FUZZ_CHECK(ids[i] >= 0 && ids[i] < ss_tokenizer_n_vocab(tok));
        (void)ss_tokenizer_piece(tok, ids[i], true, buf, sizeof buf);
      }
    }
    free(ids);
    ss_tokenizer_free(tok);
  }
  ss_gguf_close(g);
  return 0;
}
