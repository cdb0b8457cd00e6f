#include "runtime/tokenizer/chat.h"

#include <stdlib.h>
#include <string.h>

#include "runtime/base/status.h"

const char *ss_chat_kind_name(ss_chat_kind k) {
  switch (k) {
  case SS_CHAT_CHATML: return "chatml";
  case SS_CHAT_LLAMA3: return "llama3";
  }
  return "unknown";
}

/* Some ChatML templates (SmolLM2's among them) write a fixed system turn when
 * the conversation has none: '<|im_start|>system\nTEXT<|im_end|>' as a literal
 * inside a branch on messages[0]['role'] != 'system'.  Extract TEXT. */
static char *chatml_default_system(const char *jinja) {
  if (!strstr(jinja, "!= 'system'") && !strstr(jinja, "!= \"system\"")) return NULL;
  const char *open = "<|im_start|>system\n";
  const char *s = strstr(jinja, open);
  if (!s) return NULL;
  s += strlen(open);
  const char *e = strstr(s, "<|im_end|>");
  if (!e || memchr(s, '{', (size_t)(e - s)) || memchr(s, '\'', (size_t)(e - s))) return NULL;
  return strndup(s, (size_t)(e - s));
}

int ss_chat_template_init(ss_chat_template *t, const char *name, const char *jinja) {
  memset(t, 0, sizeof *t);
  if (name && strcmp(name, "auto") != 0) {
    if (strcmp(name, "chatml") == 0) {
      t->kind = SS_CHAT_CHATML;
      if (jinja && strstr(jinja, "<|im_start|>")) t->default_system = chatml_default_system(jinja);
      return SS_OK;
    }
    if (strcmp(name, "llama3") == 0) {
      t->kind = SS_CHAT_LLAMA3;
      return SS_OK;
    }
    return ss_error(SS_ERR_INVALID, "unknown chat template '%s' (known: auto, chatml, llama3)",
                    name);
  }
  if (!jinja)
    return ss_error(SS_ERR_INVALID, "the model has no tokenizer.chat_template; choose one "
                    "explicitly (chatml, llama3)");
  if (strstr(jinja, "<|im_start|>")) {
    t->kind = SS_CHAT_CHATML;
    t->default_system = chatml_default_system(jinja);
    return SS_OK;
  }
  if (strstr(jinja, "<|start_header_id|>")) {
    t->kind = SS_CHAT_LLAMA3;
    return SS_OK;
  }
  return ss_error(SS_ERR_UNSUPPORTED, "the model's tokenizer.chat_template is not a recognised "
                  "family; choose one explicitly (chatml, llama3)");
}

void ss_chat_template_free(ss_chat_template *t) {
  free(t->default_system);
  memset(t, 0, sizeof *t);
}

/* A growable string. */
typedef struct sbuf {
  char *p;
  size_t len, cap;
  bool oom;
} sbuf;

static void sb_add(sbuf *b, const char *s) {
  size_t n = strlen(s);
  if (b->oom) return;
  if (b->len + n + 1 > b->cap) {
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + n + 1) cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p) {
      b->oom = true;
      return;
    }
    b->p = p;
    b->cap = cap;
  }
  memcpy(b->p + b->len, s, n + 1);
  b->len += n;
}

static void render_turn(sbuf *b, ss_chat_kind k, const char *role, const char *content) {
  if (k == SS_CHAT_CHATML) {
    sb_add(b, "<|im_start|>");
    sb_add(b, role);
    sb_add(b, "\n");
    sb_add(b, content);
    sb_add(b, "<|im_end|>\n");
  } else {
    sb_add(b, "<|start_header_id|>");
    sb_add(b, role);
    sb_add(b, "<|end_header_id|>\n\n");
    sb_add(b, content);
    sb_add(b, "<|eot_id|>");
  }
}

int ss_chat_render(const ss_chat_template *t, const ss_chat_msg *msgs, size_t n,
                   bool add_generation_prompt, char **out) {
  *out = NULL;
  sbuf b = {0};
  sb_add(&b, "");
  if (t->default_system && (n == 0 || strcmp(msgs[0].role, "system") != 0))
    render_turn(&b, t->kind, "system", t->default_system);
  for (size_t i = 0; i < n; i++) render_turn(&b, t->kind, msgs[i].role, msgs[i].content);
  if (add_generation_prompt)
    sb_add(&b, t->kind == SS_CHAT_CHATML ? "<|im_start|>assistant\n"
                                         : "<|start_header_id|>assistant<|end_header_id|>\n\n");
  if (b.oom) {
    free(b.p);
    return ss_error(SS_ERR_NOMEM, "chat template: out of memory");
  }
  *out = b.p;
  return SS_OK;
}
