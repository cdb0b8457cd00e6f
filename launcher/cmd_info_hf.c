/* shardserve info on a Hugging Face folder: the family and hyper-parameters
 * read from config.json, the tokenizer, and the safetensors tensors with their
 * shards.  Loading the model validates every header and tensor first. */
#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "launcher/cli.h"
#include "runtime/base/status.h"
#include "runtime/formats/safetensors.h"
#include "runtime/model/model.h"

static json_t *shape_json(const ss_st_tensor *t) {
  json_t *a = json_array();
  for (int d = 0; d < t->n_dims; d++) json_array_append_new(a, json_integer(t->shape[d]));
  return a;
}

static int print_json(const ss_model *m) {
  const ss_model_config *c = &m->cfg;
  const ss_st_set *s = m->st;
  json_t *tensors = json_array();
  for (int64_t i = 0; i < s->n_tensors; i++) {
    const ss_st_tensor *t = &s->tensors[i];
    json_array_append_new(tensors, json_pack("{s:s, s:s, s:o, s:I, s:I, s:s}", "name", t->name,
                                             "dtype", t->dtype_name, "shape", shape_json(t),
                                             "offset", (json_int_t)t->offset, "bytes",
                                             (json_int_t)t->nbytes, "file", s->files[t->file].path));
  }
  json_t *o = json_pack(
      "{s:s, s:s, s:{s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:f,s:f,s:b}, s:s, s:i, s:o}",
      "model", m->path, "family", ss_model_family_name(c->family), "config", "layers",
      c->n_layer, "dim", c->dim, "heads", c->n_head, "kv_heads", c->n_kv_head, "head_dim",
      c->head_dim, "ffn", c->dense_mlp ? c->ffn_dim : 0, "vocab", c->vocab, "experts",
      c->n_expert, "experts_per_token", c->n_expert_used, "expert_ffn", c->expert_ffn_dim,
      "rope_theta", (double)c->rope_theta, "rms_eps", (double)c->rms_eps, "tied_output",
      c->tied_output, "tokenizer", ss_tokenizer_describe(m->tok), "files", s->n_files, "tensors",
      tensors);
  char *txt = o ? json_dumps(o, JSON_INDENT(1)) : NULL;
  json_decref(o);
  if (!txt) return ss_cli_fail("info", "cannot encode the model as JSON");
  puts(txt);
  free(txt);
  return SS_EXIT_OK;
}

int ss_cli_info_hf(const char *cmd, const char *dir, bool json) {
  ss_model *m;
  ss_model_load_opts lo = {0};
  if (ss_model_load(dir, &lo, &m)) return ss_cli_fail(cmd, "%s", ss_error_msg());
  int rc = SS_EXIT_OK;
  if (json) {
    rc = print_json(m);
    ss_model_free(m);
    return rc;
  }
  const ss_model_config *c = &m->cfg;
  const ss_st_set *s = m->st;
  printf("folder:        %s (%d safetensors file%s, %" PRId64 " tensors)\n", dir, s->n_files,
         s->n_files == 1 ? "" : "s", s->n_tensors);
  printf("family:        %s\n", ss_model_family_name(c->family));
  printf("layers:        %d\n", c->n_layer);
  printf("dim:           %d\n", c->dim);
  printf("heads:         %d query, %d KV (head dim %d)\n", c->n_head, c->n_kv_head, c->head_dim);
  if (c->dense_mlp) printf("ffn:           %d\n", c->ffn_dim);
  if (c->n_expert)
    printf("experts:       %d of width %d, top %d (%s)\n", c->n_expert, c->expert_ffn_dim,
           c->n_expert_used, c->moe_renormalize ? "renormalised" : "not renormalised");
  printf("vocab:         %d\n", c->vocab);
  printf("context:       %d\n", c->n_ctx_train);
  printf("rope:          theta %g, %d dims, half-rotated%s%s\n", c->rope_theta, c->rope_dim,
         c->rope_type[0] ? ", " : "", c->rope_type);
  printf("rms eps:       %g\n", c->rms_eps);
  printf("output head:   %s\n", c->tied_output ? "tied to model.embed_tokens" : "lm_head.weight");
  if (c->family == SS_FAMILY_GROK1 || c->family == SS_FAMILY_GROK2)
    printf("grok:          embedding x%g, logits x%g, attention scale %g cap %g, router cap %g, "
           "final cap %g, temperature length %d\n", c->embd_scale, c->logit_scale,
           c->attn_scale, c->attn_softcap, c->router_softcap, c->final_softcap, c->attn_temp_len);
  printf("tokenizer:     %s; BOS %d, EOS %d, add BOS %s\n", ss_tokenizer_describe(m->tok),
         ss_tokenizer_bos(m->tok), ss_tokenizer_eos(m->tok),
         ss_tokenizer_add_bos(m->tok) ? "yes" : "no");
  printf("\n%-64s %-8s %-22s %14s\n", "tensor", "dtype", "shape", "bytes");
  uint64_t total = 0;
  for (int64_t i = 0; i < s->n_tensors; i++) {
    const ss_st_tensor *t = &s->tensors[i];
    char shape[64] = "[";
    for (int d = 0; d < t->n_dims; d++) {
      char part[24];
      snprintf(part, sizeof part, "%s%" PRId64, d ? ", " : "", t->shape[d]);
      snprintf(shape + strlen(shape), sizeof shape - strlen(shape), "%s", part);
    }
    snprintf(shape + strlen(shape), sizeof shape - strlen(shape), "]");
    printf("%-64s %-8s %-22s %14" PRIu64 "\n", t->name, t->dtype_name, shape, t->nbytes);
    total += t->nbytes;
  }
  printf("\ntotal: %" PRId64 " tensors, %" PRIu64 " bytes (%.2f MiB)\n", s->n_tensors, total,
         (double)total / (1 << 20));
  ss_model_free(m);
  return rc;
}
