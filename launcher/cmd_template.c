/* shardserve template: renders a chat template over messages read as JSON
 * from stdin, exactly as the server would (for checking templates). */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <jansson.h>

#include "launcher/cli.h"
#include "runtime/base/status.h"
#include "runtime/formats/gguf.h"
#include "runtime/tokenizer/chat.h"
#include "runtime/tokenizer/tokenizer.h"

static const char *k_cmd = "template";

static void usage(FILE *f) {
  fprintf(f,
          "Usage: shardserve template (--model PATH | --template FILE) [options] < JSON\n"
          "\n"
          "Reads a JSON object {\"messages\": [...], \"tools\": [...], ...} from stdin and\n"
          "writes the rendered prompt to stdout, byte for byte (no newline added).\n"
          "Members other than messages and tools become template variables (for\n"
          "example enable_thinking).\n"
          "\n"
          "Options:\n"
          "  -m, --model PATH          GGUF model or Hugging Face folder: its chat template\n"
          "                            and BOS/EOS tokens\n"
          "  -t, --template FILE       a Jinja template file (instead of the model's)\n"
          "      --chat-template NAME|FILE  chatml, llama3 or a file (overrides the model's)\n"
          "      --bos S, --eos S      the bos_token / eos_token strings\n"
          "      --no-generation-prompt  do not open the assistant's turn at the end\n"
          "  -h, --help                show this help\n");
}

int ss_cmd_template(int argc, char **argv) {
  const char *model = NULL, *file = NULL, *name = NULL, *bos = NULL, *eos = NULL;
  bool add_gen = true;
  static const struct option opts[] = {
      {"model", required_argument, 0, 'm'},
      {"template", required_argument, 0, 't'},
      {"chat-template", required_argument, 0, 'c'},
      {"bos", required_argument, 0, 'B'},
      {"eos", required_argument, 0, 'E'},
      {"no-generation-prompt", no_argument, 0, 'G'},
      {"help", no_argument, 0, 'h'},
      {0, 0, 0, 0},
  };
  optind = 1;
  opterr = 0;
  int c;
  while ((c = getopt_long(argc, argv, ":m:t:h", opts, NULL)) != -1) {
    switch (c) {
    case 'm': model = optarg; break;
    case 't': file = optarg; break;
    case 'c': name = optarg; break;
    case 'B': bos = optarg; break;
    case 'E': eos = optarg; break;
    case 'G': add_gen = false; break;
    case 'h': usage(stdout); return SS_EXIT_OK;
    case ':': return ss_cli_usage(k_cmd, "option '%s' needs a value", argv[optind - 1]);
    default: return ss_cli_usage(k_cmd, "unknown option '%s'", argv[optind - 1]);
    }
  }
  if (optind < argc) return ss_cli_usage(k_cmd, "unexpected argument '%s'", argv[optind]);
  if (!model == !file) return ss_cli_usage(k_cmd, "give one of --model or --template");
  if (file && name) return ss_cli_usage(k_cmd, "--template and --chat-template both name a template");

  ss_gguf *g = NULL;
  ss_tokenizer *tok = NULL;
  char *model_tmpl = NULL, *out = NULL;
  json_t *in = NULL;
  ss_chat_template ct = {0};
  bool have_ct = false;
  int rc = SS_EXIT_FAIL;
  if (model) {
    struct stat st;
    const bool folder = stat(model, &st) == 0 && S_ISDIR(st.st_mode);
    if (folder ? ss_tokenizer_load_hf(model, &tok, &model_tmpl)
               : (ss_gguf_open(model, &g) || ss_tokenizer_load(g, &tok))) {
      ss_cli_fail(k_cmd, "%s", ss_error_msg());
      goto done;
    }
    if (g) {
      const ss_gguf_value *v = ss_gguf_get(g, "tokenizer.chat_template");
      if (v && v->type == SS_GGUF_STRING && !(model_tmpl = strndup(v->str.ptr, v->str.len))) {
        ss_cli_fail(k_cmd, "out of memory");
        goto done;
      }
    }
  }
  if (ss_chat_template_init(&ct, file ? file : name, model_tmpl)) {
    ss_cli_fail(k_cmd, "%s", ss_error_msg());
    goto done;
  }
  have_ct = true;
  if ((tok && ss_chat_template_set_tokenizer(&ct, tok)) ||
      ((bos || eos) && ss_chat_template_set_tokens(&ct, bos ? bos : ct.bos_token,
                                                   eos ? eos : ct.eos_token))) {
    ss_cli_fail(k_cmd, "%s", ss_error_msg());
    goto done;
  }
  json_error_t jerr;
  in = json_loadf(stdin, JSON_REJECT_DUPLICATES, &jerr);
  if (!in || !json_is_object(in)) {
    ss_cli_fail(k_cmd, "stdin: %s", in ? "expected a JSON object" : jerr.text);
    goto done;
  }
  json_t *messages = json_object_get(in, "messages");
  json_t *tools = json_object_get(in, "tools");
  if (!json_is_array(messages)) {
    ss_cli_fail(k_cmd, "stdin: \"messages\" must be an array");
    goto done;
  }
  json_t *extra = json_deep_copy(in);
  if (!extra) {
    ss_cli_fail(k_cmd, "out of memory");
    goto done;
  }
  json_object_del(extra, "messages");
  json_object_del(extra, "tools");
  int r = ss_chat_render_json(&ct, messages, json_is_null(tools) ? NULL : tools, extra, add_gen, &out);
  json_decref(extra);
  if (r) {
    ss_cli_fail(k_cmd, "%s", ss_error_msg());
    goto done;
  }
  size_t n = strlen(out);
  if (fwrite(out, 1, n, stdout) != n || fflush(stdout)) {
    ss_cli_fail(k_cmd, "cannot write to stdout");
    goto done;
  }
  rc = SS_EXIT_OK;
done:
  free(out);
  json_decref(in);
  if (have_ct) ss_chat_template_free(&ct);
  free(model_tmpl);
  ss_tokenizer_free(tok);
  ss_gguf_close(g);
  return rc;
}
