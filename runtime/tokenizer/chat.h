/* Chat templates: turning a list of messages into the prompt text a model was
 * trained on, by rendering the model's own Jinja template (tokenizer.
 * chat_template) with the Jinja interpreter in jinja.h, as Hugging Face
 * transformers renders it.  Built-in templates (Jinja sources written here):
 *   chatml  <|im_start|>ROLE\nCONTENT<|im_end|>\n ... (SmolLM2, Qwen, ...);
 *   llama3  <|start_header_id|>ROLE<|end_header_id|>\n\nCONTENT<|eot_id|> ...
 * A template is never guessed: an unsupported construct is an error naming
 * its line and column. */
#ifndef SS_CHAT_H
#define SS_CHAT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "runtime/tokenizer/jinja.h"

struct ss_tokenizer;

typedef struct ss_chat_template {
  char *name;      /* "chatml", "llama3", "model" (the model's own) or the file read */
  char *source;    /* the Jinja source */
  ss_jinja *jinja;
  char *bos_token, *eos_token; /* the globals bos_token / eos_token ("" until set) */
} ss_chat_template;

typedef struct ss_chat_msg {
  const char *role;    /* "system", "user", "assistant", ... */
  const char *content;
} ss_chat_msg;

/* Chooses and compiles the template: `name` NULL or "auto" is the model's own
 * (`jinja`, its tokenizer.chat_template, may be NULL); "chatml" or "llama3" a
 * built-in one; any other name is read as a file holding a Jinja template.
 * Fails with SS_ERR_NOT_FOUND ("the model has no chat template; pass
 * --chat-template NAME|FILE") when the model's own is asked for and there is
 * none, so that a server can still serve completions and refuse chat; with
 * SS_ERR_IO for an unreadable file; with the compiler's error otherwise. */
int ss_chat_template_init(ss_chat_template *t, const char *name, const char *jinja);
void ss_chat_template_free(ss_chat_template *t);
/* Sets the bos_token / eos_token strings templates see (NULL: ""). */
int ss_chat_template_set_tokens(ss_chat_template *t, const char *bos, const char *eos);
/* The same, from a tokenizer's BOS and EOS tokens. */
int ss_chat_template_set_tokenizer(ss_chat_template *t, const struct ss_tokenizer *tok);

/* Renders OpenAI-shaped messages (content a string or a list of parts,
 * tool_calls, role "tool" with tool_call_id and name), as transformers does:
 * the globals are messages, tools (NULL: none), documents (none),
 * add_generation_prompt, bos_token, eos_token, and the members of `extra`
 * (may be NULL; e.g. enable_thinking), which may override any of them.
 * *out is malloc'ed (caller frees).  The text contains special-token markers,
 * so tokenize it with parse_special.  A template that writes bos_token itself
 * starts the text with it: do not add a second BOS when tokenizing. */
int ss_chat_render_json(const ss_chat_template *t, const json_t *messages, const json_t *tools,
                        const json_t *extra, bool add_generation_prompt, char **out);

/* Tokenizes a rendered prompt as the model expects it: special-token markers
 * parsed, the tokenizer's BOS first when add_bos.  A template that writes the
 * BOS text itself (many do) would then give it twice, so a leading BOS text
 * is dropped when add_bos.  *ids malloc'ed. */
int ss_chat_tokenize(const struct ss_tokenizer *tok, const char *text, bool add_bos,
                     int32_t **ids, size_t *n_ids);

/* Renders plain role/content messages (ss_chat_render_json underneath). */
int ss_chat_render(const ss_chat_template *t, const ss_chat_msg *msgs, size_t n,
                   bool add_generation_prompt, char **out);

#endif
