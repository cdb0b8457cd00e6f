/* shardserve tokenize: the token ids of text read from stdin. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "launcher/cli.h"
#include "runtime/base/status.h"
#include "runtime/formats/gguf.h"
#include "runtime/tokenizer/tokenizer.h"

static const char *k_cmd = "tokenize";

static void usage(FILE *f) {
  fprintf(f,
          "Usage: shardserve tokenize [--model FILE] [--bos] [--special] [--split SEP] < TEXT\n"
          "\n"
          "Reads all of stdin as bytes (UTF-8 text; invalid bytes are tokenized as single\n"
          "bytes) and prints the token ids, space-separated, on one line.  Only the\n"
          "tokenizer metadata is read, so vocab-only GGUF files work.\n"
          "\n"
          "Options:\n"
          "  -m, --model PATH   GGUF model or vocabulary, or a Hugging Face folder\n"
          "                     (tokenizer.json / tokenizer.model) (default: " SS_DEFAULT_MODEL ")\n"
          "      --bos          put the BOS token first (not added unless asked for)\n"
          "      --special      recognise special tokens written in the text, such as\n"
          "                     <|im_start|> (user-defined tokens are always recognised)\n"
          "      --split SEP    cut stdin at every occurrence of SEP and tokenize each part\n"
          "                     on its own, one line of ids per part (the tokenizer is\n"
          "                     loaded once)\n"
          "  -h, --help         show this help\n");
}

/* All of stdin; *len bytes in a malloc'ed buffer (never NULL on success). */
static char *read_stdin(size_t *len) {
  size_t cap = 1 << 16, n = 0;
  char *buf = malloc(cap);
  if (!buf) return NULL;
  for (;;) {
    if (n == cap) {
      char *p = cap <= SIZE_MAX / 2 ? realloc(buf, cap * 2) : NULL;
      if (!p) {
        free(buf);
        return NULL;
      }
      buf = p;
      cap *= 2;
    }
    size_t got = fread(buf + n, 1, cap - n, stdin);
    n += got;
    if (got == 0) break;
  }
  if (ferror(stdin)) {
    free(buf);
    return NULL;
  }
  *len = n;
  return buf;
}

static int print_ids(const int32_t *ids, size_t n) {
  char line[32];
  for (size_t i = 0; i < n; i++) {
    int k = snprintf(line, sizeof line, i ? " %d" : "%d", ids[i]);
    if (fwrite(line, 1, (size_t)k, stdout) != (size_t)k) return -1;
  }
  if (putchar('\n') == EOF) return -1;
  return fflush(stdout) == 0 ? 0 : -1;
}

int ss_cmd_tokenize(int argc, char **argv) {
  const char *path = SS_DEFAULT_MODEL;
  const char *split = NULL;
  bool bos = false, special = false;
  static const struct option opts[] = {
      {"model", required_argument, 0, 'm'},
      {"bos", no_argument, 0, 'B'},
      {"special", no_argument, 0, 'S'},
      {"split", required_argument, 0, 'P'},
      {"help", no_argument, 0, 'h'},
      {0, 0, 0, 0},
  };
  optind = 1;
  opterr = 0;
  int c;
  while ((c = getopt_long(argc, argv, ":m:h", opts, NULL)) != -1) {
    switch (c) {
    case 'm': path = optarg; break;
    case 'B': bos = true; break;
    case 'S': special = true; break;
    case 'P': split = optarg; break;
    case 'h': usage(stdout); return SS_EXIT_OK;
    case ':': return ss_cli_usage(k_cmd, "option '%s' needs a value", argv[optind - 1]);
    default: return ss_cli_usage(k_cmd, "unknown option '%s'", argv[optind - 1]);
    }
  }
  if (optind < argc) return ss_cli_usage(k_cmd, "unexpected argument '%s'", argv[optind]);
  if (split && !split[0]) return ss_cli_usage(k_cmd, "--split needs a non-empty separator");

  ss_gguf *g = NULL;
  ss_tokenizer *tok = NULL;
  char *text = NULL;
  int32_t *ids = NULL;
  size_t len = 0, n_ids = 0;
  int rc = SS_EXIT_FAIL;
  struct stat st;
  const bool folder = stat(path, &st) == 0 && S_ISDIR(st.st_mode);
  if (folder ? ss_tokenizer_load_hf(path, &tok, NULL)
             : (ss_gguf_open(path, &g) || ss_tokenizer_load(g, &tok))) {
    ss_cli_fail(k_cmd, "%s", ss_error_msg());
    goto done;
  }
  if (!(text = read_stdin(&len))) {
    ss_cli_fail(k_cmd, "cannot read stdin");
    goto done;
  }
  const size_t sep_len = split ? strlen(split) : 0;
  for (size_t off = 0;;) {
    const char *end = split ? memmem(text + off, len - off, split, sep_len) : NULL;
    size_t part = end ? (size_t)(end - (text + off)) : len - off;
    free(ids);
    ids = NULL;
    if (ss_tokenizer_encode(tok, text + off, part, bos, special, &ids, &n_ids)) {
      ss_cli_fail(k_cmd, "%s", ss_error_msg());
      goto done;
    }
    if (print_ids(ids, n_ids)) {
      ss_cli_fail(k_cmd, "cannot write to stdout");
      goto done;
    }
    if (!end) break;
    off += part + sep_len;
  }
  rc = SS_EXIT_OK;
done:
  free(ids);
  free(text);
  ss_tokenizer_free(tok);
  ss_gguf_close(g);
  return rc;
}
