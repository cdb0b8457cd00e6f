/* The chat-template engine: the input up to its first NUL byte is a Jinja
 * template, compiled and rendered with the render limits the server uses;
 * what follows the NUL, when it is a JSON object, is the globals (default: a
 * short conversation, as the server passes it).  The same template is also
 * rendered through ss_chat_render_json with the globals' "messages" and
 * "tools". */
#include <jansson.h>

#include "runtime/tokenizer/chat.h"
#include "runtime/tokenizer/jinja.h"
#include "tests/fuzz/fuzz_common.h"

static const char k_default_globals[] =
    "{\"messages\": [{\"role\": \"system\", \"content\": \"Be brief.\"},"
    " {\"role\": \"user\", \"content\": \"Hi <b>&amp; \\u00e9\"},"
    " {\"role\": \"assistant\", \"content\": \"\", \"tool_calls\": [{\"type\": \"function\","
    " \"id\": \"c1\", \"function\": {\"name\": \"f\", \"arguments\": {\"x\": [1, 2.5, null]}}}]},"
    " {\"role\": \"tool\", \"tool_call_id\": \"c1\", \"content\": \"42\"},"
    " {\"role\": \"user\", \"content\": [{\"type\": \"text\", \"text\": \"more\"}]}],"
    " \"tools\": [{\"type\": \"function\", \"function\": {\"name\": \"f\", \"parameters\": {}}}],"
    " \"add_generation_prompt\": true, \"bos_token\": \"<s>\", \"eos_token\": \"</s>\"}";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  const char *src = (const char *)data;
  size_t src_len = strnlen(src, size);
  json_t *globals = NULL;
  if (src_len < size) {
    globals = json_loadb(src + src_len + 1, size - src_len - 1, JSON_DECODE_ANY, NULL);
    if (globals && !json_is_object(globals)) {
      json_decref(globals);
      globals = NULL;
    }
  }
  if (!globals) globals = json_loads(k_default_globals, 0, NULL);
  FUZZ_CHECK(globals != NULL);

  ss_jinja *t;
  if (ss_jinja_compile(src, src_len, &t) == 0) {
    char *out = NULL;
    size_t out_len = 0;
    if (ss_jinja_render(t, globals, &ss_jinja_default_limits, &out, &out_len) == 0) {
      FUZZ_CHECK(out != NULL && out[out_len] == 0);
      FUZZ_CHECK(out_len <= ss_jinja_default_limits.max_output_nbytes);
    }
    free(out);
    ss_jinja_free(t);

    /* The chat layer on top: the same source as a model's own template. */
    char *copy = malloc(src_len + 1);
    memcpy(copy, src, src_len);
    copy[src_len] = 0;
    ss_chat_template ct;
    if (ss_chat_template_init(&ct, NULL, copy) == 0) {
      if (ss_chat_template_set_tokens(&ct, "<s>", "</s>") == 0) {
        json_t *msgs = json_object_get(globals, "messages");
        json_t *tools = json_object_get(globals, "tools");
        if (json_is_array(msgs)) {
          char *text = NULL;
          if (ss_chat_render_json(&ct, msgs, json_is_array(tools) ? tools : NULL, NULL, true,
                                  &text) == 0)
            FUZZ_CHECK(text != NULL);
          free(text);
        }
      }
      ss_chat_template_free(&ct);
    }
    free(copy);
  }
  json_decref(globals);
  return 0;
}
