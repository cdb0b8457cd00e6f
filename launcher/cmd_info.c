/* shardserve info: what a model file holds. */
#include <getopt.h>
#include <inttypes.h>
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "kernels/cpu/isa.h"
#include "launcher/cli.h"
#include "runtime/base/status.h"
#include "runtime/model/model.h"
#include "runtime/tokenizer/chat.h"

static const char *k_cmd = "info";

static void usage(FILE *f) {
  fprintf(f,
          "Usage: shardserve info [--model PATH] [--metadata] [--json] [--format-only]\n"
          "       shardserve info --cpu\n"
          "\n"
          "Prints a model's architecture, hyper-parameters (experts and Grok's scales too),\n"
          "tokenizer, and a table of its tensors (name, type, shape, bytes) with totals.\n"
          "PATH is a GGUF file (arch llama or grok) or a Hugging Face folder (config.json,\n"
          "safetensors, tokenizer); it is fully validated.\n"
          "\n"
          "Options:\n"
          "  -m, --model FILE   GGUF model (default: " SS_DEFAULT_MODEL ")\n"
          "      --metadata     also list every metadata key and value\n"
          "      --json         print one JSON object: every metadata key with its type and\n"
          "                     full value, and every tensor's name, type, shape, offset, bytes\n"
          "      --format-only  check and print the GGUF container only (any architecture,\n"
          "                     vocab-only files too), not the model\n"
          "      --dump NAME    write tensor NAME dequantized to float32 (little-endian,\n"
          "                     row-major) to stdout instead of the summary\n"
          "      --cpu          print the CPU, its features, the kernel variants this\n"
          "                     binary has and can run here, the one chosen (the best, or\n"
          "                     SS_CPU_ISA=avx512|avx2|neon|portable) and the weight types\n"
          "  -h, --help         show this help\n");
}

static int print_cpu(void) {
  char model[256] = "unknown";
  FILE *f = fopen("/proc/cpuinfo", "r");
  if (f) {
    char line[512];
    while (fgets(line, sizeof line, f)) {
      /* x86: "model name : ..."; AArch64 kernels may give only "CPU part". */
      if (strncmp(line, "model name", 10) == 0 || strncmp(line, "Model", 5) == 0) {
        const char *c = strchr(line, ':');
        if (c) {
          snprintf(model, sizeof model, "%s", c + 1 + (c[1] == ' '));
          model[strcspn(model, "\n")] = '\0';
          break;
        }
      }
    }
    fclose(f);
  }
  char feat[256];
  ss_cpu_features(feat, sizeof feat);
  printf("cpu:        %s\n", model);
  printf("features:   %s\n", feat);
  printf("variants:  ");
  for (int i = 0; i < SS_ISA_COUNT_; i++)
    if (ss_cpu_isa_available((ss_cpu_isa)i)) printf(" %s", ss_cpu_isa_name((ss_cpu_isa)i));
  printf(" (available here)\n");
  const ss_cpu_kernels *k;
  if (ss_cpu_isa_select(&k) != SS_OK) {
    printf("chosen:     none\n");
    return ss_cli_fail(k_cmd, "%s", ss_error_msg());
  }
  const char *env = getenv("SS_CPU_ISA");
  printf("chosen:     %s (%s)\n", k->name,
         env && *env && strcmp(env, "auto") != 0 ? "SS_CPU_ISA" : "best available");
  printf("types:     ");
  for (uint32_t t = 0; t < SS_DTYPE_COUNT_; t++) {
    const ss_dtype_info *ti = ss_dtype_get(t);
    if (ti && ti->compute) printf(" %s", ti->name);
  }
  printf(" (matmul and embedding weights)\n");
  return SS_EXIT_OK;
}

/* Element i of an array of integers or bools (floats are read with
 * ss_gguf_arr_float), which cannot fail. */
static int64_t arr_int(const ss_gguf_value *v, uint64_t i) {
  int64_t x = 0;
  (void)ss_gguf_arr_int(NULL, "", v, i, &x);
  return x;
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
          printf("%" PRId64, arr_int(v, i));
      }
    }
    if (v->arr.count > n) printf(", ...");
    break;
  }
  default: printf("?"); break;
  }
}

static void print_metadata(const ss_gguf *g) {
  printf("\nmetadata:\n");
  for (uint64_t i = 0; i < g->n_kv; i++) {
    printf("  %-44s ", g->kv[i].key);
    print_value(&g->kv[i].value, 0);
    putchar('\n');
  }
}

static void print_tensor_table(const ss_gguf *g) {
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
}

/* --format-only: the container without interpreting it as a model. */
static int print_container(const ss_gguf *g, bool metadata) {
  ss_gguf_str arch = {0};
  ss_gguf_get_str(g, "general.architecture", false, &arch);
  printf("file:          %s (%.1f MiB, GGUF v%u, %" PRIu64 " tensors, %" PRIu64
         " metadata keys, alignment %" PRIu64 ")\n",
         g->path, (double)g->size / (1 << 20), g->version, g->n_tensors, g->n_kv, g->alignment);
  printf("architecture:  %.*s\n", (int)arch.len, arch.ptr ? arch.ptr : "");
  if (metadata) print_metadata(g);
  print_tensor_table(g);
  return SS_EXIT_OK;
}

/* ------------------------------------------------------------------------ */
/* --json                                                                     */

/* JSON has no NaN or infinity: those become strings. */
static json_t *real_json(double x) {
  return isfinite(x) ? json_real(x) : json_string(isnan(x) ? "nan" : x > 0 ? "inf" : "-inf");
}

static json_t *value_json(const ss_gguf_value *v) {
  switch (v->type) {
  case SS_GGUF_UINT8: case SS_GGUF_UINT16: case SS_GGUF_UINT32:
    return json_integer((json_int_t)v->u64);
  case SS_GGUF_UINT64:
    /* JSON integers here are signed 64-bit; larger values go out as strings. */
    return v->u64 > (uint64_t)INT64_MAX ? json_sprintf("%" PRIu64, v->u64)
                                        : json_integer((json_int_t)v->u64);
  case SS_GGUF_INT8: case SS_GGUF_INT16: case SS_GGUF_INT32: case SS_GGUF_INT64:
    return json_integer((json_int_t)v->i64);
  case SS_GGUF_FLOAT32: case SS_GGUF_FLOAT64: return real_json(v->f64);
  case SS_GGUF_BOOL: return json_boolean(v->b);
  case SS_GGUF_STRING: return json_stringn_nocheck(v->str.ptr, (size_t)v->str.len);
  case SS_GGUF_ARRAY: {
    json_t *a = json_array();
    for (uint64_t i = 0; i < v->arr.count; i++) {
      if (v->arr.items) {
        json_array_append_new(a, value_json(&v->arr.items[i]));
      } else {
        ss_gguf_value e = {.type = v->arr.elem_type};
        if (e.type == SS_GGUF_FLOAT32 || e.type == SS_GGUF_FLOAT64)
          json_array_append_new(a, real_json(ss_gguf_arr_float(v, i)));
        else if (e.type == SS_GGUF_BOOL)
          json_array_append_new(a, json_boolean(arr_int(v, i)));
        else if (e.type == SS_GGUF_UINT64 && (uint64_t)arr_int(v, i) > (uint64_t)INT64_MAX)
          json_array_append_new(a, json_sprintf("%" PRIu64, (uint64_t)arr_int(v, i)));
        else
          json_array_append_new(a, json_integer((json_int_t)arr_int(v, i)));
      }
    }
    return a;
  }
  default: return json_null();
  }
}

static json_t *type_json(const ss_gguf_value *v) {
  if (v->type != SS_GGUF_ARRAY) return json_string(ss_gguf_type_name(v->type));
  /* Arrays: the chain of types down to the scalar, e.g. ["array", "array", "int32"]. */
  json_t *chain = json_array();
  const ss_gguf_value *cur = v;
  for (;;) {
    json_array_append_new(chain, json_string(ss_gguf_type_name(cur->type)));
    if (cur->type != SS_GGUF_ARRAY) break;
    if (cur->arr.elem_type != SS_GGUF_ARRAY || cur->arr.count == 0 || !cur->arr.items) {
      json_array_append_new(chain, json_string(ss_gguf_type_name(cur->arr.elem_type)));
      break;
    }
    cur = &cur->arr.items[0];
  }
  return chain;
}

static int print_json(const ss_gguf *g, const ss_model *m) {
  json_t *root = json_object(), *md = json_object(), *tensors = json_array();
  json_object_set_new(root, "path", json_string(g->path));
  json_object_set_new(root, "version", json_integer(g->version));
  json_object_set_new(root, "alignment", json_integer((json_int_t)g->alignment));
  json_object_set_new(root, "data_offset", json_integer((json_int_t)g->data_offset));
  for (uint64_t i = 0; i < g->n_kv; i++)
    json_object_set_new(md, g->kv[i].key, json_pack("{s:o, s:o}", "type", type_json(&g->kv[i].value),
                                                    "value", value_json(&g->kv[i].value)));
  json_object_set_new(root, "metadata", md);
  for (uint64_t i = 0; i < g->n_tensors; i++) {
    const ss_gguf_tensor *t = &g->tensors[i];
    json_t *shape = json_array();
    for (uint32_t d = 0; d < t->n_dims; d++) json_array_append_new(shape, json_integer(t->ne[d]));
    json_array_append_new(tensors, json_pack("{s:s, s:s, s:i, s:o, s:I, s:I}", "name", t->name,
                                             "type", ss_dtype_name(t->type), "type_id",
                                             (int)t->type, "shape", shape, "offset",
                                             (json_int_t)t->offset, "nbytes",
                                             (json_int_t)t->nbytes));
  }
  json_object_set_new(root, "tensors", tensors);
  if (m) {
    const ss_model_config *c = &m->cfg;
    json_object_set_new(root, "config",
                        json_pack("{s:s, s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:f, s:f, "
                                  "s:b, s:s, s:s, s:i, s:i, s:i}",
                                  "arch", c->arch, "n_layer", c->n_layer, "dim", c->dim, "n_head",
                                  c->n_head, "n_kv_head", c->n_kv_head, "head_dim", c->head_dim,
                                  "ffn_dim", c->ffn_dim, "vocab", c->vocab, "n_ctx_train",
                                  c->n_ctx_train, "rope_dim", c->rope_dim, "rope_theta",
                                  (double)c->rope_theta, "rms_eps", (double)c->rms_eps,
                                  "tied_output", c->tied_output, "tokenizer",
                                  ss_tokenizer_describe(m->tok), "family",
                                  ss_model_family_name(c->family), "n_expert", c->n_expert,
                                  "n_expert_used", c->n_expert_used, "expert_ffn_dim",
                                  c->expert_ffn_dim));
    if (c->family == SS_FAMILY_GROK1 || c->family == SS_FAMILY_GROK2)
      json_object_set_new(json_object_get(root, "config"), "grok",
                          json_pack("{s:f, s:f, s:f, s:f, s:f, s:f, s:i, s:b, s:s}",
                                    "embedding_scale", (double)c->embd_scale, "logit_scale",
                                    (double)c->logit_scale, "attn_scale", (double)c->attn_scale,
                                    "attn_softcap", (double)c->attn_softcap, "router_softcap",
                                    (double)c->router_softcap, "final_softcap",
                                    (double)c->final_softcap, "attn_temp_len", c->attn_temp_len,
                                    "residual_moe", c->residual_moe, "rope_type", c->rope_type));
  }
  char *s = json_dumps(root, JSON_COMPACT | JSON_ENSURE_ASCII);
  json_decref(root);
  if (!s) return ss_cli_fail(k_cmd, "cannot encode the result as JSON");
  puts(s);
  free(s);
  return SS_EXIT_OK;
}

static int dump_tensor(const ss_gguf *g, const char *name) {
  const ss_gguf_tensor *t = ss_gguf_tensor_find(g, name);
  if (!t) return ss_cli_fail(k_cmd, "%s: no tensor named '%s'", g->path, name);
  const ss_dtype_info *ti = ss_dtype_get(t->type);
  if (!ti->compute)
    return ss_cli_fail(k_cmd, "%s: tensor '%s' has type %s, which cannot be dequantized here",
                       g->path, name, ti->name);
  const int64_t cols = t->ne[0];
  const int64_t rows = t->ne[1] * t->ne[2] * t->ne[3];
  const size_t row_nbytes = (size_t)(cols / ti->block_count) * ti->block_nbytes;
  float *buf = malloc((size_t)cols * sizeof *buf);
  if (!buf) return ss_cli_fail(k_cmd, "out of memory");
  for (int64_t r = 0; r < rows; r++) {
    ss_dequantize_row(t->type, (const uint8_t *)t->data + (size_t)r * row_nbytes, buf, cols);
    if (fwrite(buf, sizeof *buf, (size_t)cols, stdout) != (size_t)cols) {
      free(buf);
      return ss_cli_fail(k_cmd, "cannot write to stdout");
    }
  }
  free(buf);
  return fflush(stdout) == 0 ? SS_EXIT_OK : ss_cli_fail(k_cmd, "cannot write to stdout");
}

int ss_cmd_info(int argc, char **argv) {
  const char *path = SS_DEFAULT_MODEL;
  bool metadata = false, json = false, format_only = false;
  const char *dump = NULL;
  bool cpu = false;
  static const struct option opts[] = {
      {"model", required_argument, 0, 'm'},
      {"metadata", no_argument, 0, 'M'},
      {"json", no_argument, 0, 'J'},
      {"format-only", no_argument, 0, 'F'},
      {"dump", required_argument, 0, 'D'},
      {"cpu", no_argument, 0, 'C'},
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
    case 'J': json = true; break;
    case 'F': format_only = true; break;
    case 'D': dump = optarg; break;
    case 'C': cpu = true; break;
    case 'h': usage(stdout); return SS_EXIT_OK;
    case ':': return ss_cli_usage(k_cmd, "option '%s' needs a value", argv[optind - 1]);
    default: return ss_cli_usage(k_cmd, "unknown option '%s'", argv[optind - 1]);
    }
  }
  if (optind < argc) return ss_cli_usage(k_cmd, "unexpected argument '%s'", argv[optind]);
  if (cpu) return print_cpu();

  struct stat st;
  if (stat(path, &st) == 0 && S_ISDIR(st.st_mode)) {
    if (dump || format_only)
      return ss_cli_usage(k_cmd, "--dump and --format-only apply to GGUF files, not folders");
    return ss_cli_info_hf(k_cmd, path, json);
  }
  if (dump) {
    ss_gguf *g;
    if (ss_gguf_open(path, &g)) return ss_cli_fail(k_cmd, "%s", ss_error_msg());
    int rc = dump_tensor(g, dump);
    ss_gguf_close(g);
    return rc;
  }
  if (json || format_only) {
    ss_gguf *g;
    if (ss_gguf_open(path, &g)) return ss_cli_fail(k_cmd, "%s", ss_error_msg());
    ss_model *m = NULL;
    if (!format_only && ss_cli_load_model(k_cmd, path, &m)) {
      ss_gguf_close(g);
      return SS_EXIT_FAIL;
    }
    int rc = json ? print_json(g, m) : print_container(g, metadata);
    ss_model_free(m);
    ss_gguf_close(g);
    return rc;
  }
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
  if (cf->dense_mlp) printf("ffn:           %d\n", cf->ffn_dim);
  if (cf->n_expert)
    printf("experts:       %d of width %d, top %d (%s; %s)\n", cf->n_expert, cf->expert_ffn_dim,
           cf->n_expert_used, cf->moe_renormalize ? "renormalised" : "not renormalised",
           ss_model_family_name(cf->family));
  printf("vocab:         %d\n", cf->vocab);
  printf("context:       %d\n", cf->n_ctx_train);
  printf("rope:          theta %g, %d dims, %s pairs%s%s\n", cf->rope_theta, cf->rope_dim,
         cf->rope_mode == SS_ROPE_NORM ? "adjacent" : "half-rotated",
         cf->rope_type[0] ? ", " : "", cf->rope_type);
  printf("rms eps:       %g\n", cf->rms_eps);
  printf("output head:   %s\n", cf->tied_output ? "tied to token_embd" : "output.weight");
  if (cf->family == SS_FAMILY_GROK1 || cf->family == SS_FAMILY_GROK2)
    printf("grok:          %s%s; embedding x%g, logits x%g, attention scale %g cap %g, router "
           "cap %g, final cap %g, temperature length %d\n", ss_model_family_name(cf->family),
           cf->residual_moe ? " (dense MLP beside the experts)" : "", cf->embd_scale,
           cf->logit_scale, cf->attn_scale, cf->attn_softcap, cf->router_softcap,
           cf->final_softcap, cf->attn_temp_len);
  printf("tokenizer:     %s; BOS %d, EOS %d, add BOS %s\n", ss_tokenizer_describe(m->tok),
         ss_tokenizer_bos(m->tok), ss_tokenizer_eos(m->tok),
         ss_tokenizer_add_bos(m->tok) ? "yes" : "no");
  ss_chat_template ct;
  if (ss_chat_template_init(&ct, NULL, m->chat_template) == SS_OK) {
    printf("chat template: the model's own (%zu bytes of Jinja)\n", strlen(ct.source));
    ss_chat_template_free(&ct);
  } else {
    printf("chat template: %s\n", m->chat_template ? ss_error_msg() : "none");
  }

  if (metadata) print_metadata(g);
  print_tensor_table(g);
  ss_model_free(m);
  return SS_EXIT_OK;
}
