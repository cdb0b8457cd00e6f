/* The OpenAI request bodies as the server's workers prepare them: the first
 * byte picks the route (completions, chat completions, /tokenize,
 * /detokenize, /apply-template), the rest is the body.  The model context is
 * the gpt-2 vocabulary of tests/data with no weights (parsing never touches
 * them) and the built-in chatml template. */
#include "runtime/formats/gguf.h"
#include "runtime/model/model.h"
#include "runtime/server/api_internal.h"
#include "runtime/tokenizer/chat.h"
#include "runtime/tokenizer/tokenizer.h"
#include "tests/fuzz/fuzz_common.h"

static ss_gguf *g_file;
static ss_model g_model;
static ss_chat_template g_tmpl;
static gen_ctx g_ctx;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  if (ss_gguf_open(SS_FUZZ_DIR "/../data/tokenizer/ggml-vocab-gpt-2.gguf", &g_file) ||
      ss_tokenizer_load(g_file, &g_model.tok) || ss_chat_template_init(&g_tmpl, "chatml", NULL) ||
      ss_chat_template_set_tokenizer(&g_tmpl, g_model.tok)) {
    fprintf(stderr, "fuzz_oai: %s\n", ss_error_msg());
    abort();
  }
  g_model.cfg.vocab = ss_tokenizer_n_vocab(g_model.tok);
  g_ctx = (gen_ctx){.model_name = "tiny", .default_max_tokens = 16, .n_ctx = 256, .m = &g_model,
                    .tmpl = &g_tmpl};
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1) return 0;
  const char *body = (const char *)data + 1;
  size_t len = size - 1;
  parse_err e;
  switch (data[0] % 5) {
  case 0: case 1: {
    gen_fields g;
    memset(&g, 0, sizeof g);
    if (ss_oai_parse_generate(&g_ctx, body, len, data[0] % 5 == 1, &g, &e)) {
      for (int32_t i = 0; i < g.r.n_prompt; i++)
        FUZZ_CHECK(g.r.prompt[i] >= 0 && g.r.prompt[i] < g_model.cfg.vocab);
      ss_oai_req_free(&g.r);
    } else {
      FUZZ_CHECK(e.status >= 400 && e.status < 600);
      FUZZ_CHECK(memchr(e.msg, 0, sizeof e.msg) != NULL);
    }
    break;
  }
  default: {
    static const api_kind k_kinds[3] = {API_TOKENIZE, API_DETOKENIZE, API_APPLY_TEMPLATE};
    json_t *out = NULL;
    if (ss_oai_utility(&g_ctx, k_kinds[data[0] % 5 - 2], body, len, &out, &e))
      FUZZ_CHECK(out != NULL);
    else
      FUZZ_CHECK(out == NULL && e.status >= 400 && e.status < 600);
    json_decref(out);
    break;
  }
  }
  return 0;
}
