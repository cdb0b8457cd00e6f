#include "runtime/tokenizer/chat.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/base/status.h"
#include "runtime/tokenizer/tokenizer.h"

/* Built-in templates, written for this project in the shape of the families
 * they are named after. */
static const char k_chatml[] =
    "{%- for message in messages -%}\n"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}\n";
/* The BOS (<|begin_of_text|>) is the tokenizer's to add, not written here. */
static const char k_llama3[] =
    "{%- for message in messages -%}\n"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content']"
    " + '<|eot_id|>' -}}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}"
    "{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}{%- endif -%}\n";

static char *read_file(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  char *buf = NULL;
  size_t n = 0, cap = 0;
  for (;;) {
    if (n + 4096 + 1 > cap) {
      cap = cap ? cap * 2 : 8192;
      if (cap > (64u << 20)) {
        free(buf);
        fclose(f);
        return NULL;
      }
      char *p = realloc(buf, cap);
      if (!p) {
        free(buf);
        fclose(f);
        return NULL;
      }
      buf = p;
    }
    size_t k = fread(buf + n, 1, 4096, f);
    n += k;
    if (k < 4096) break;
  }
  bool err = ferror(f);
  fclose(f);
  if (err) {
    free(buf);
    return NULL;
  }
  buf[n] = 0;
  *len = n;
  return buf;
}

int ss_chat_template_init(ss_chat_template *t, const char *name, const char *jinja) {
  memset(t, 0, sizeof *t);
  const char *src = NULL;
  char *owned = NULL;
  size_t len = 0;
  const char *label;
  if (!name || strcmp(name, "auto") == 0) {
    if (!jinja)
      return ss_error(SS_ERR_NOT_FOUND, "the model has no chat template; pass --chat-template "
                      "NAME|FILE (built-in: chatml, llama3)");
    src = jinja;
    len = strlen(jinja);
    label = "model";
  } else if (strcmp(name, "chatml") == 0 || strcmp(name, "llama3") == 0) {
    src = name[0] == 'c' ? k_chatml : k_llama3;
    len = strlen(src);
    label = name;
  } else {
    owned = read_file(name, &len);
    if (!owned)
      return ss_error(SS_ERR_IO, "chat template '%s' is neither a built-in one (auto, chatml, "
                      "llama3) nor a readable file (at most 64 MiB)", name);
    src = owned;
    label = name;
  }
  int rc = ss_jinja_compile(src, len, &t->jinja);
  t->name = strdup(label);
  t->source = owned ? owned : strndup(src, len);
  t->bos_token = strdup("");
  t->eos_token = strdup("");
  if (rc == SS_OK && (!t->name || !t->source || !t->bos_token || !t->eos_token))
    rc = ss_error(SS_ERR_NOMEM, "out of memory");
  if (rc) ss_chat_template_free(t);
  return rc;
}

void ss_chat_template_free(ss_chat_template *t) {
  ss_jinja_free(t->jinja);
  free(t->name);
  free(t->source);
  free(t->bos_token);
  free(t->eos_token);
  memset(t, 0, sizeof *t);
}

int ss_chat_template_set_tokens(ss_chat_template *t, const char *bos, const char *eos) {
  char *b = strdup(bos ? bos : ""), *e = strdup(eos ? eos : "");
  if (!b || !e) {
    free(b);
    free(e);
    return ss_error(SS_ERR_NOMEM, "out of memory");
  }
  free(t->bos_token);
  free(t->eos_token);
  t->bos_token = b;
  t->eos_token = e;
  return SS_OK;
}

int ss_chat_template_set_tokenizer(ss_chat_template *t, const ss_tokenizer *tok) {
  int32_t b = ss_tokenizer_bos(tok), e = ss_tokenizer_eos(tok);
  return ss_chat_template_set_tokens(t, b >= 0 ? ss_tokenizer_token_text(tok, b) : "",
                                     e >= 0 ? ss_tokenizer_token_text(tok, e) : "");
}

int ss_chat_render_json(const ss_chat_template *t, const json_t *messages, const json_t *tools,
                        const json_t *extra, bool add_generation_prompt, char **out) {
  *out = NULL;
  if (!json_is_array(messages)) return ss_error(SS_ERR_INVALID, "messages must be an array");
  json_t *g = json_object();
  if (!g) return ss_error(SS_ERR_NOMEM, "out of memory");
  int bad = json_object_set(g, "messages", (json_t *)messages);
  bad |= json_object_set_new(g, "tools", tools ? json_incref((json_t *)tools) : json_null());
  bad |= json_object_set_new(g, "documents", json_null());
  bad |= json_object_set_new(g, "add_generation_prompt", json_boolean(add_generation_prompt));
  bad |= json_object_set_new(g, "bos_token", json_string(t->bos_token ? t->bos_token : ""));
  bad |= json_object_set_new(g, "eos_token", json_string(t->eos_token ? t->eos_token : ""));
  if (extra && json_is_object(extra)) bad |= json_object_update(g, (json_t *)extra);
  int rc = bad ? ss_error(SS_ERR_NOMEM, "out of memory")
               : ss_jinja_render(t->jinja, g, NULL, out, NULL);
  json_decref(g);
  return rc;
}

int ss_chat_render(const ss_chat_template *t, const ss_chat_msg *msgs, size_t n,
                   bool add_generation_prompt, char **out) {
  *out = NULL;
  json_t *arr = json_array();
  int bad = !arr;
  for (size_t i = 0; !bad && i < n; i++) {
    json_t *m = json_pack("{s:s, s:s}", "role", msgs[i].role, "content", msgs[i].content);
    bad = !m || json_array_append_new(arr, m);
  }
  int rc = bad ? ss_error(SS_ERR_INVALID, "chat message %zu: role and content must be UTF-8 text", n)
               : ss_chat_render_json(t, arr, NULL, NULL, add_generation_prompt, out);
  json_decref(arr);
  return rc;
}

int ss_chat_tokenize(const ss_tokenizer *tok, const char *text, bool add_bos, int32_t **ids,
                     size_t *n_ids) {
  const char *bos = add_bos ? ss_tokenizer_token_text(tok, ss_tokenizer_bos(tok)) : NULL;
  size_t len = strlen(text);
  if (bos && *bos && strncmp(text, bos, strlen(bos)) == 0) {
    text += strlen(bos);
    len -= strlen(bos);
  }
  return ss_tokenizer_encode(tok, text, len, add_bos, true, ids, n_ids);
}
