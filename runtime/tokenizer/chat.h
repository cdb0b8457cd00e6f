/* Chat templates: turning a list of messages into the prompt text a model was
 * trained on.  We do not run Jinja; we recognise the template families that
 * matter and render them in C:
 *   chatml  <|im_start|>ROLE\nCONTENT<|im_end|>\n ... (SmolLM2, Qwen, ...), with
 *           the default system message some templates insert when none is given;
 *   llama3  <|start_header_id|>ROLE<|end_header_id|>\n\nCONTENT<|eot_id|> ...
 * A model's tokenizer.chat_template is matched by its marker tokens; a name can
 * also be given explicitly.  An unrecognised template is an error, never a
 * silent fallback. */
#ifndef SS_CHAT_H
#define SS_CHAT_H

#include <stdbool.h>
#include <stddef.h>

typedef enum ss_chat_kind {
  SS_CHAT_CHATML,
  SS_CHAT_LLAMA3,
} ss_chat_kind;

typedef struct ss_chat_template {
  ss_chat_kind kind;
  char *default_system; /* inserted when the first message is not "system"; may be NULL */
} ss_chat_template;

typedef struct ss_chat_msg {
  const char *role;    /* "system", "user", "assistant", ... */
  const char *content;
} ss_chat_msg;

/* Chooses the template: `name` ("chatml", "llama3", or "auto"/NULL to detect
 * from `jinja`, the model's tokenizer.chat_template which may be NULL).
 * Errors (unknown name, no or unrecognised template) name the choices. */
int ss_chat_template_init(ss_chat_template *t, const char *name, const char *jinja);
void ss_chat_template_free(ss_chat_template *t);
const char *ss_chat_kind_name(ss_chat_kind k);

/* Renders the messages, ending with the assistant turn's opening when
 * add_generation_prompt.  *out is malloc'ed (caller frees).  The text contains
 * special-token markers, so tokenize it with parse_special.  Whether a BOS
 * goes first is the tokenizer's add_bos setting; llama3's <|begin_of_text|> is
 * that BOS and is not written here. */
int ss_chat_render(const ss_chat_template *t, const ss_chat_msg *msgs, size_t n,
                   bool add_generation_prompt, char **out);

#endif
