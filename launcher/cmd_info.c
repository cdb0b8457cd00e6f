/* shardserve info: what a model file holds. */
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "launcher/cli.h"
#include "runtime/chat.h"
#include "runtime/model.h"
#include "runtime/status.h"

static const char *k_cmd = "info";

static void usage(FILE *f) {
  fprintf(f,
          "Usage: shardserve info [--model FILE] [--metadata]\n"
          "\n"
          "Prints a GGUF model's architecture, hyper-parameters, tokenizer, and a table of\n"
          "its tensors (name, type, shape, bytes) with totals.  The file is fully validated.\n"
          "\n"
          "Options:\n"
          "  -m, --model FILE   GGUF model (default: " SS_DEFAULT_MODEL ")\n"
          "      --metadata     also list every metadata key and value\n"
          "  -h, --help         show this help\n");
}

static void print_value(const ss_gguf_value *v, int depth) {
  switch (v->type) {
  case SS_GGUF_UINT8: case SS_GGUF_UINT16: case SS_GGUF_UINT32: case SS_GGUF_UINT64:
    printf("%" PRIu64, v->u64);
    break;
  case SS_GGUF_INT8: case SS_GGUF_INT16: case SS_GGUF_INT32: case SS_GGUF_INT64:
    printf("%" PRId64, v->i64);
    break;
  case SS_GGUF_FLOAT32: case SS_GGUF_FLOAT64: printf("%g", v->f64); break;
  case SS_GGUF_BOOL: printf("%s", v->b ? "true" : "false"); break;
  case SS_GGUF_STRING: {
    /* One line, escaped, at most 80 bytes. */
    putchar('"');
    uint64_t n = v->str.len < 80 ? v->str.len : 80;
    for (uint64_t i = 0; i < n; i++) {
      unsigned char ch = (unsigned char)v->str.ptr[i];
      if (ch == '\n') fputs("\\n", stdout);
      else if (ch < 0x20 || ch == 0x7f) printf("\\x%02x", ch);
      else putchar(ch);
    }
    putchar('"');
    if (v->str.len > 80) printf("... (%" PRIu64 " bytes)", v->str.len);
    break;
  }
  case SS_GGUF_ARRAY: {
    printf("[%s x %" PRIu64 "]", ss_gguf_type_name(v->arr.elem_type), v->arr.count);
    if (depth > 0 || v->arr.count == 0) break;
    printf(" ");
    uint64_t n = v->arr.count < 4 ? v->arr.count : 4;
    for (uint64_t i = 0; i < n; i++) {
      if (i) printf(", ");
      if (v->arr.items) {
        print_value(&v->arr.items[i], depth + 1);
      } else {
        ss_gguf_value e = {.type = v->arr.elem_type};
        if (e.type == SS_GGUF_FLOAT32 || e.type == SS_GGUF_FLOAT64)
          printf("%g", ss_gguf_arr_float(v, i));
        else
          printf("%" PRId64, ss_gguf_arr_int(v, i));
      }
    }
    if (v->arr.count > n) printf(", ...");
    break;
  }
  default: printf("?"); break;
  }
}

int ss_cmd_info(int argc, char **argv) {
  const char *path = SS_DEFAULT_MODEL;
  bool metadata = false;
  static const struct option opts[] = {
      {"model", required_argument, 0, 'm'},
      {"metadata", no_argument, 0, 'M'},
      {"help", no_argument, 0, 'h'},
      {0, 0, 0, 0},
  };
  optind = 1;
  opterr = 0;
  int c;
  while ((c = getopt_long(argc, argv, ":m:h", opts, NULL)) != -1) {
    switch (c) {
    case 'm': path = optarg; break;
    case 'M': metadata = true; break;
    case 'h': usage(stdout); return SS_EXIT_OK;
    case ':': return ss_cli_usage(k_cmd, "option '%s' needs a value", argv[optind - 1]);
    default: return ss_cli_usage(k_cmd, "unknown option '%s'", argv[optind - 1]);
    }
  }
  if (optind < argc) return ss_cli_usage(k_cmd, "unexpected argument '%s'", argv[optind]);

  ss_model *m;
  int rc = ss_cli_load_model(k_cmd, path, &m);
  if (rc) return rc;
  const ss_gguf *g = m->gguf;
  const ss_model_config *cf = &m->cfg;
  ss_gguf_str name = {0};
  ss_gguf_get_str(g, "general.name", false, &name);

  printf("file:          %s (%.1f MiB, GGUF v%u, %" PRIu64 " tensors, %" PRIu64
         " metadata keys, alignment %" PRIu64 ")\n",
         g->path, (double)g->size / (1 << 20), g->version, g->n_tensors, g->n_kv, g->alignment);
  printf("architecture:  %s%s%.*s%s\n", cf->arch, name.len ? " (" : "", (int)name.len,
         name.ptr ? name.ptr : "", name.len ? ")" : "");
  printf("layers:        %d\n", cf->n_layer);
  printf("dim:           %d\n", cf->dim);
  printf("heads:         %d query, %d KV (head dim %d)\n", cf->n_head, cf->n_kv_head,
         cf->head_dim);
  printf("ffn:           %d\n", cf->ffn_dim);
  printf("vocab:         %d\n", cf->vocab);
  printf("context:       %d\n", cf->n_ctx_train);
  printf("rope:          theta %g, %d dims, %s pairs\n", cf->rope_theta, cf->rope_dim,
         cf->rope_mode == SS_ROPE_NORM ? "adjacent" : "half-rotated");
  printf("rms eps:       %g\n", cf->rms_eps);
  printf("output head:   %s\n", cf->tied_output ? "tied to token_embd" : "output.weight");
  printf("tokenizer:     %s; BOS %d, EOS %d, add BOS %s\n", ss_tokenizer_describe(m->tok),
         ss_tokenizer_bos(m->tok), ss_tokenizer_eos(m->tok),
         ss_tokenizer_add_bos(m->tok) ? "yes" : "no");
  ss_chat_template ct;
  if (ss_chat_template_init(&ct, NULL, m->chat_template) == SS_OK) {
    printf("chat template: %s%s\n", ss_chat_kind_name(ct.kind),
           ct.default_system ? " (with a default system message)" : "");
    ss_chat_template_free(&ct);
  } else {
    printf("chat template: %s\n", m->chat_template ? "not recognised" : "none");
  }

  if (metadata) {
    printf("\nmetadata:\n");
    for (uint64_t i = 0; i < g->n_kv; i++) {
      printf("  %-44s ", g->kv[i].key);
      print_value(&g->kv[i].value, 0);
      putchar('\n');
    }
  }

  printf("\n%-32s %-5s %-22s %12s\n", "tensor", "type", "shape", "bytes");
  uint64_t total_bytes = 0, total_params = 0;
  uint64_t type_bytes[SS_DTYPE_COUNT_] = {0}, type_count[SS_DTYPE_COUNT_] = {0};
  for (uint64_t i = 0; i < g->n_tensors; i++) {
    const ss_gguf_tensor *t = &g->tensors[i];
    char shape[64];
    int off = 0;
    uint64_t ne = 1;
    for (uint32_t d = 0; d < t->n_dims; d++) {
      off += snprintf(shape + off, sizeof shape - (size_t)off, "%s%" PRId64, d ? " x " : "",
                      t->ne[d]);
      ne *= (uint64_t)t->ne[d];
    }
    printf("%-32s %-5s %-22s %12" PRIu64 "\n", t->name, ss_dtype_name(t->type), shape, t->nbytes);
    total_bytes += t->nbytes;
    total_params += ne;
    type_bytes[t->type] += t->nbytes;
    type_count[t->type]++;
  }
  printf("\ntotal: %" PRIu64 " tensors, %" PRIu64 " parameters, %" PRIu64 " bytes (%.1f MiB)\n",
         g->n_tensors, total_params, total_bytes, (double)total_bytes / (1 << 20));
  for (int ty = 0; ty < SS_DTYPE_COUNT_; ty++)
    if (type_count[ty])
      printf("  %-5s %4" PRIu64 " tensors %12" PRIu64 " bytes\n", ss_dtype_name((uint32_t)ty),
             type_count[ty], type_bytes[ty]);
  ss_model_free(m);
  return SS_EXIT_OK;
}
