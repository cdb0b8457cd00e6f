/* shardserve plan: how a model splits over tensor-parallel ranks.  The figures
 * come from the same code the loader slices the weights with (runtime/model/shard.c),
 * and each rank checks what it bound against them at load time.  A JSON preset
 * (configs/models/NAME.json) is planned from its shapes and --dtype alone. */
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "launcher/cli.h"
#include "launcher/plan_capacity.h"
#include "launcher/ranks.h"
#include "runtime/base/status.h"
#include "runtime/model/model.h"
#include "runtime/model/shard.h"

static const char *k_cmd = "plan";

static void usage(FILE *f) {
  fprintf(f,
          "Usage: shardserve plan [--model PATH] --tp N [--ep] [--replicate-vocab] [--json]\n"
          "       shardserve plan [--model PATH] --pp N [--pp-layers A,B,..] --tp M [--json]\n"
          "\n"
          "Prints, for each tensor-parallel rank: its query heads, KV heads, MLP columns,\n"
          "experts and expert columns, and vocabulary rows (half-open ranges), its weight\n"
          "bytes by category, its KV-cache bytes per token and the bytes it sends per\n"
          "generated token; then totals and parameter counts.  Uneven splits are allowed:\n"
          "ranges differ by at most one unit.  A KV head shared by two ranks' query heads\n"
          "is held by both (listed as replicated).\n"
          "\n"
          "Options:\n"
          "  -m, --model PATH     GGUF file, Hugging Face folder, or JSON preset such as\n"
          "                       configs/models/grok-1.json (default: " SS_DEFAULT_MODEL ")\n"
          "      --tp N           tensor-parallel degree (1..number of query heads)\n"
          "      --pp N           pipeline stages of --tp ranks each: per stage, its layers,\n"
          "                       weight bytes, KV bytes per token and the bytes it sends\n"
          "                       to the next stage per token; with --hardware a step\n"
          "                       runs the stages in turn plus their hand-offs\n"
          "      --pp-layers A,B  layers per stage (default: sizes differing by at most one)\n"
          "      --pp-microbatches K  steps in flight at once, as serve's (default: --pp):\n"
          "                       the simulation lets a stage work on one step while the\n"
          "                       next stage works on an earlier one\n"
          "      --ep N           expert parallelism over the same N ranks: whole experts\n"
          "                       per rank (N must equal --tp); default: TP inside experts\n"
          "      --dtype T        presets: weight type, fp8, bf16 (default), f16 or f32\n"
          "      --kv-cache-dtype T  KV-cache element type for the KV figures, as serve's:\n"
          "                       bf16 (default), f32, f16 or fp8_e4m3 (--kv-dtype: the same)\n"
          "      --replicate-vocab  every rank holds the whole embedding and LM head\n"
          "                       (default: split by vocabulary rows)\n"
          "      --json           print one JSON object instead of the table\n"
          "  -h, --help           show this help\n"
          "\n"
          "Capacity (with a hardware profile):\n"
          "      --hardware FILE  configs/hardware/NAME.json (h100-sxm-80g, h200-141g,\n"
          "                       a100-80g) or a profile measured by `shardserve profile`;\n"
          "                       prints per-rank memory, whether it fits, KV capacity and\n"
          "                       step times (roofline per step + collectives)\n"
          "      --nodes K        nodes the ranks span (default: as few as hold --tp)\n"
          "      --max-num-seqs N, --max-batched-tokens N   the server's batching (64, 512)\n"
          "      --max-waiting N  the server's queue limit (default 1024, as serve's): a\n"
          "                       request arriving to a full queue is refused (a 429),\n"
          "                       counted as \"rejected\"\n"
          "      --kv-blocks N | --kv-mem SIZE   the KV pool the server gets (default: all\n"
          "                       memory the weights and the reserve leave)\n"
          "  Workload (simulated through the server's own scheduler; names as in loadgen):\n"
          "      --request-rate R --burstiness B --max-concurrency C --num-prompts N\n"
          "      --random-input-len N --random-output-len N --random-range-ratio R --seed S\n"
          "      --dataset-name random|prefix_repetition   prefix_repetition: as loadgen's,\n"
          "                       --prefix-repetition-num-prefixes N (10) prefixes of\n"
          "                       --prefix-repetition-prefix-len P (256) tokens, each shared by\n"
          "                       --num-prompts / N requests adding a unique suffix of\n"
          "                       --prefix-repetition-suffix-len S (256) and generating\n"
          "                       --prefix-repetition-output-len K (128); the server's prefix\n"
          "                       cache is simulated (hit rate in the output); loadgen's\n"
          "                       multi_turn is refused (its prompts grow by the server's\n"
          "                       own replies, which a simulation cannot know)\n"
          "      --no-prefix-caching  simulate a server started with it\n"
          "      --goodput ttft:MS tpot:MS e2el:MS   SLOs (several allowed)\n"
          "      --max-rate       also search the highest rate at which 99%% of requests\n"
          "                       meet the SLOs\n"
          "      --per-request    with --json: each simulated request's start time, TTFT,\n"
          "                       latency and lengths (loadgen's --save-result names)\n"
          "      --step-log FILE  a step log written by `serve --step-log`: the cost model's\n"
          "                       time for each logged step against the measured one\n"
          "      --step-cost T:L:A:K  the cost model's time for one step of T tokens, L\n"
          "                       sampled rows, A query-key pairs and K K/V positions read\n"
          "                       (repeatable; \"step_costs_ms\" in --json; under --pp\n"
          "                       also each stage's work and hand-off, and rank 0's parts)\n"
          "      --calibrate      with --step-log: scale the profile's load_factor so the\n"
          "                       logged steps' total time is matched (then simulate)\n"
          "      --save-hardware FILE  write the profile in use (calibrated) to FILE\n");
}

static double mib(uint64_t b) { return (double)b / (1 << 20); }

static json_t *range_json(ss_range r) {
  return json_pack("[I,I]", (json_int_t)r.begin, (json_int_t)r.end);
}

static json_t *bytes_json(const ss_shard_bytes *b) {
  return json_pack("{s:I,s:I,s:I,s:I,s:I,s:I,s:I}", "attn", (json_int_t)b->attn, "mlp",
                   (json_int_t)b->mlp, "moe", (json_int_t)b->moe, "embd", (json_int_t)b->embd,
                   "head", (json_int_t)b->head, "norm", (json_int_t)b->norm, "total",
                   (json_int_t)b->total);
}

static int print_json(const ss_model *m, const ss_shard_plan *p, json_t *capacity) {
  json_t *ranks = json_array();
  for (int r = 0; r < p->opts.tp; r++) {
    const ss_shard_rank *R = &p->ranks[r];
    json_array_append_new(ranks, json_pack(
        "{s:i, s:o, s:o, s:o, s:o, s:I, s:o, s:I, s:I, s:I}", "rank", r,
        "heads", range_json(R->heads), "kv_heads", range_json(R->kv_heads),
        "ffn_columns", range_json(R->ffn), "vocab_rows", range_json(R->vocab),
        "weight_bytes", (json_int_t)R->bytes.total, "weight_bytes_by_category",
        bytes_json(&R->bytes), "replicated_bytes", (json_int_t)R->replicated_nbytes,
        "kv_bytes_per_token", (json_int_t)R->kv_nbytes_per_token,
        "comm_bytes_per_token", (json_int_t)R->comm_nbytes_per_token));
    json_t *jr = json_array_get(ranks, (size_t)r);
    json_object_set_new(jr, "edge_bytes", json_integer((json_int_t)R->edge_nbytes));
    json_object_set_new(jr, "experts", range_json(R->experts));
    json_object_set_new(jr, "expert_ffn_columns", range_json(R->expert_ffn));
  }
  const ss_model_config *c = &m->cfg;
  json_t *o = json_pack(
      "{s:s, s:s, s:i, s:b, s:{s:i,s:i,s:i,s:i,s:i,s:i,s:i}, s:I, s:o, s:I, s:I, s:I, s:i,"
      " s:I, s:I, s:o}",
      "model", m->path, "arch", c->arch, "tp", p->opts.tp, "vocab_parallel",
      p->opts.vocab_parallel, "config", "layers", c->n_layer, "dim", c->dim, "heads", c->n_head,
      "kv_heads", c->n_kv_head, "head_dim", c->head_dim, "ffn", c->ffn_dim, "vocab", c->vocab,
      "ffn_split_unit", (json_int_t)p->ffn_unit, "file_weight_bytes", bytes_json(&p->file),
      "total_weight_bytes", (json_int_t)p->total_weight_nbytes, "replicated_bytes",
      (json_int_t)p->replicated_nbytes, "kv_bytes_per_token", (json_int_t)p->kv_nbytes_per_token,
      "allreduces_per_token", p->n_allreduce_per_token, "allreduce_payload_bytes",
      (json_int_t)p->allreduce_payload_nbytes, "gather_bytes_per_token",
      (json_int_t)p->gather_nbytes_per_token, "ranks", ranks);
  if (o) {
    json_object_set_new(o, "edge_bytes", json_integer((json_int_t)p->edge_nbytes));
    json_object_set_new(o, "straddled_block_bytes", json_integer((json_int_t)p->straddled_nbytes));
    /* Each forward pass sums allreduces_per_token vectors of
     * allreduce_payload_bytes per token: their total per token. */
    json_object_set_new(o, "allreduce_bytes_per_token",
                        json_integer((json_int_t)((uint64_t)p->n_allreduce_per_token *
                                                  p->allreduce_payload_nbytes)));
    json_object_set_new(o, "family", json_string(ss_model_family_name(c->family)));
    json_object_set_new(o, "expert_parallel", json_boolean(p->opts.expert_parallel));
    json_object_set_new(o, "ep", json_integer(p->opts.expert_parallel ? p->opts.tp : 1));
    json_object_set_new(o, "experts", json_integer(c->n_expert));
    json_object_set_new(o, "experts_per_token", json_integer(c->n_expert_used));
    json_object_set_new(o, "expert_ffn", json_integer(c->expert_ffn_dim));
    json_object_set_new(o, "params", json_integer((json_int_t)p->n_params));
    json_object_set_new(o, "active_params", json_integer((json_int_t)p->n_active_params));
    json_object_set_new(o, "expert_bytes", json_integer((json_int_t)p->expert_nbytes));
    json_object_set_new(o, "kv_dtype", json_string(ss_dtype_name(p->opts.kv_type)));
    json_object_set_new(o, "weights_dtype", json_string(ss_dtype_name(m->tok_embd.type)));
    if (capacity) json_object_update(o, capacity);
  }
  char *s = o ? json_dumps(o, JSON_INDENT(1)) : NULL;
  json_decref(o);
  if (!s) return ss_cli_fail(k_cmd, "cannot encode the plan as JSON");
  puts(s);
  free(s);
  return SS_EXIT_OK;
}

static void print_range(const char *unit, ss_range r) {
  char buf[48];
  snprintf(buf, sizeof buf, "%" PRId64 " [%" PRId64 ",%" PRId64 ")", ss_range_len(r), r.begin,
           r.end);
  printf(" %-16s", buf);
  (void)unit;
}

static void print_table(const ss_model *m, const ss_shard_plan *p) {
  const ss_model_config *c = &m->cfg;
  printf("model:  %s (%s: %d layers, dim %d, %d heads, %d KV heads of %d, ffn %d, vocab %d",
         m->path, c->arch, c->n_layer, c->dim, c->n_head, c->n_kv_head, c->head_dim,
         c->dense_mlp ? c->ffn_dim : 0, c->vocab);
  if (c->n_expert > 0)
    printf(", %d experts of %d, top %d", c->n_expert, c->expert_ffn_dim, c->n_expert_used);
  printf(")\n");
  printf("plan:   tp %d, embedding and LM head %s, MLP split in units of %" PRId64
         " column%s\n\n", p->opts.tp, p->opts.vocab_parallel ? "split by vocabulary rows" :
         "replicated", p->ffn_unit, p->ffn_unit > 1 ? "s (quantization blocks)" : "");
  const bool moe = c->n_expert > 0;
  if (moe)
    printf("        experts: %s\n\n", p->opts.expert_parallel
                                         ? "expert parallel (whole experts per rank)"
                                         : "tensor parallel inside every expert");
  printf("rank heads            kv heads         mlp columns      vocab rows       %s"
         "  attn MiB   mlp MiB%s  embd MiB  head MiB  norm MiB  total MiB  repl MiB"
         "  KV B/token  comm B/token\n",
         moe ? "experts          expert columns   " : "", moe ? "   moe MiB" : "");
  for (int r = 0; r < p->opts.tp; r++) {
    const ss_shard_rank *R = &p->ranks[r];
    printf("%4d", r);
    print_range("heads", R->heads);
    print_range("kv", R->kv_heads);
    print_range("ffn", R->ffn);
    print_range("vocab", R->vocab);
    if (moe) {
      print_range("experts", R->experts);
      print_range("expert ffn", R->expert_ffn);
    }
    printf(" %9.2f %9.2f", mib(R->bytes.attn), mib(R->bytes.mlp));
    if (moe) printf(" %9.2f", mib(R->bytes.moe));
    printf(" %9.2f %9.2f %9.3f %10.2f %9.3f %11" PRIu64 " %13" PRIu64 "\n",
           mib(R->bytes.embd), mib(R->bytes.head), mib(R->bytes.norm), mib(R->bytes.total),
           mib(R->replicated_nbytes), R->kv_nbytes_per_token, R->comm_nbytes_per_token);
  }
  if (p->edge_nbytes > 0) {
    printf("\nf32 edges: the cuts of row-parallel weights (attention output, MLP/expert down) "
           "straddle quantization blocks; each rank holds its columns of those blocks as f32:\n");
    for (int r = 0; r < p->opts.tp; r++)
      printf("  rank %d: %.3f MiB (%" PRIu64 " bytes) of f32 edges\n", r,
             mib(p->ranks[r].edge_nbytes), p->ranks[r].edge_nbytes);
    printf("  in place of %" PRIu64 " bytes of straddled quantized blocks (%+" PRId64
           " bytes in all)\n", p->straddled_nbytes,
           (int64_t)(p->edge_nbytes - p->straddled_nbytes));
  }
  printf("\ntotals: weights %.2f MiB over all ranks = %.2f MiB of tensors in the file "
         "(%" PRIu64 " bytes) + %.3f MiB replicated (%" PRIu64 " bytes: norms on every rank",
         mib(p->total_weight_nbytes), mib(p->file.total), p->file.total,
         mib(p->replicated_nbytes), p->replicated_nbytes);
  bool shared_kv = false;
  for (int r = 1; r < p->opts.tp; r++)
    if (p->ranks[r].kv_heads.begin < p->ranks[r - 1].kv_heads.end) shared_kv = true;
  if (shared_kv) printf(", K/V rows of shared KV heads");
  if (!p->opts.vocab_parallel && p->opts.tp > 1) printf(", embedding and LM head");
  printf(")");
  if (p->edge_nbytes > 0)
    printf(" + %" PRIu64 " bytes of f32 edges - %" PRIu64 " bytes of straddled blocks",
           p->edge_nbytes, p->straddled_nbytes);
  printf("\n");
  uint64_t kv_sum = 0;
  for (int r = 0; r < p->opts.tp; r++) kv_sum += p->ranks[r].kv_nbytes_per_token;
  printf("        KV cache %" PRIu64 " bytes per token for the whole model (%s), %" PRIu64
         " summed over ranks\n", p->kv_nbytes_per_token, ss_dtype_name(p->opts.kv_type), kv_sum);
  printf("        parameters %" PRIu64 " (%.2fB; tied embedding counted once), %" PRIu64
         " (%.2fB) active per token\n", p->n_params, (double)p->n_params / 1e9,
         p->n_active_params, (double)p->n_active_params / 1e9);
  printf("        per generated token: %d all-reduces of %" PRIu64 " bytes", p->n_allreduce_per_token,
         p->allreduce_payload_nbytes);
  if (p->gather_nbytes_per_token)
    printf(", and a gather of %" PRIu64 " bytes of logits on rank 0", p->gather_nbytes_per_token);
  printf("\n");
}

/* "ttft:500" (ms) into the workload's SLOs; commas may separate several. */
static bool parse_slo(const char *arg, ss_sim_workload *w) {
  char buf[256];
  snprintf(buf, sizeof buf, "%s", arg);
  for (char *tok = strtok(buf, ","); tok; tok = strtok(NULL, ",")) {
    char *colon = strchr(tok, ':');
    char *end = NULL;
    double ms = colon ? strtod(colon + 1, &end) : -1;
    if (!colon || end == colon + 1 || *end || !(ms > 0)) {
      ss_cli_usage(k_cmd, "invalid --goodput '%s': expected ttft:MS, tpot:MS or e2el:MS", tok);
      return false;
    }
    *colon = 0;
    if (strcmp(tok, "ttft") == 0) w->slo_ttft_s = ms / 1e3;
    else if (strcmp(tok, "tpot") == 0) w->slo_tpot_s = ms / 1e3;
    else if (strcmp(tok, "e2el") == 0) w->slo_e2e_s = ms / 1e3;
    else {
      ss_cli_usage(k_cmd, "invalid --goodput key '%s': expected ttft, tpot or e2el", tok);
      return false;
    }
  }
  return true;
}

/* --step-cost TOKENS:LOGITS:ATTENDED:KV_READ, one step shape to price. */
static bool parse_step_cost(const char *s, ss_plan_capacity_opts *co) {
  if (co->n_steps >= SS_PLAN_MAX_STEP_COSTS) {
    ss_cli_usage(k_cmd, "--step-cost: at most %d shapes", SS_PLAN_MAX_STEP_COSTS);
    return false;
  }
  long long t = 0, l = 0;
  double a = 0, kv = 0;
  int used = 0;
  if (sscanf(s, "%lld:%lld:%lf:%lf%n", &t, &l, &a, &kv, &used) != 4 || s[used] != '\0' ||
      t < 1 || t > (1 << 24) || l < 0 || l > t || !(a >= 0 && a <= 1e15) ||
      !(kv >= 0 && kv <= 1e15)) {
    ss_cli_usage(k_cmd, "--step-cost '%s': want TOKENS:LOGITS:ATTENDED:KV_READ (1 <= tokens <= "
                 "2^24, 0 <= logits <= tokens, pairs and positions >= 0)", s);
    return false;
  }
  co->steps[co->n_steps++] = (ss_step_shape){.n_tokens = (int32_t)t, .n_logits = (int32_t)l,
                                             .attended = a, .kv_read = kv};
  return true;
}

/* --pp: one plan per stage (each its own layers), as a table or JSON. */
static int plan_stages(const ss_model *m, const ss_shard_opts *base, int pp, const int *sizes,
                       bool json, ss_plan_capacity_opts *co, double kv_mem) {
  const ss_model_config *c = &m->cfg;
  ss_shard_plan *ps = calloc((size_t)pp, sizeof *ps);
  if (!ps) return ss_cli_fail(k_cmd, "out of memory");
  int code = SS_EXIT_OK, made = 0;
  for (int s = 0; s < pp && code == SS_EXIT_OK; s++, made++) {
    ss_shard_opts so = *base;
    so.pp = pp;
    so.stage = s;
    int rc = ss_pp_layers(c->n_layer, pp, sizes, s, &so.layers);
    if (!rc) rc = ss_shard_plan_make(m, &so, &ps[s]);
    if (rc) code = ss_cli_usage(k_cmd, "%s", ss_error_msg());
  }
  json_t *cap = NULL;
  if (code == SS_EXIT_OK && co) {
    if (kv_mem > 0) {
      /* --kv-mem: whole blocks of the first stage's first rank's KV, as serve's pool. */
      const double per_block = (double)ps[0].ranks[0].kv_nbytes_per_token * co->sched.block_size;
      co->kv_tokens = floor(kv_mem / per_block) * co->sched.block_size;
    }
    cap = json_object();
    code = ss_plan_capacity(m, ps, pp, co, cap);
  }
  if (code == SS_EXIT_OK && json) {
    json_t *stages = json_array();
    for (int s = 0; s < pp; s++) {
      const ss_shard_plan *p = &ps[s];
      json_t *ranks = json_array();
      for (int r = 0; r < p->opts.tp; r++) {
        const ss_shard_rank *R = &p->ranks[r];
        json_array_append_new(ranks, json_pack(
            "{s:i,s:i,s:I,s:o,s:I,s:I,s:I}", "rank", s * p->opts.tp + r, "tp_rank", r,
            "weight_bytes", (json_int_t)R->bytes.total, "weight_bytes_by_category",
            bytes_json(&R->bytes), "kv_bytes_per_token", (json_int_t)R->kv_nbytes_per_token,
            "comm_bytes_per_token", (json_int_t)R->comm_nbytes_per_token,
            "send_bytes_per_token", (json_int_t)R->pp_send_nbytes_per_token));
      }
      uint64_t send = 0;
      for (int r = 0; r < p->opts.tp; r++) send += p->ranks[r].pp_send_nbytes_per_token;
      json_array_append_new(stages, json_pack(
          "{s:i,s:o,s:I,s:I,s:I,s:o}", "stage", s, "layers", range_json(p->opts.layers),
          "weight_bytes", (json_int_t)p->total_weight_nbytes, "kv_bytes_per_token",
          (json_int_t)p->kv_nbytes_per_token, "send_bytes_per_token", (json_int_t)send,
          "ranks", ranks));
      /* The stage's collectives inside its tensor-parallel group, as in the
       * one-stage plan. */
      json_t *js = json_array_get(stages, (size_t)s);
      json_object_set_new(js, "allreduces_per_token", json_integer(p->n_allreduce_per_token));
      json_object_set_new(js, "allreduce_payload_bytes",
                          json_integer((json_int_t)p->allreduce_payload_nbytes));
      json_object_set_new(js, "allreduce_bytes_per_token",
                          json_integer((json_int_t)((uint64_t)p->n_allreduce_per_token *
                                                    p->allreduce_payload_nbytes)));
      json_object_set_new(js, "gather_bytes_per_token",
                          json_integer((json_int_t)p->gather_nbytes_per_token));
    }
    json_t *o = json_pack("{s:s,s:s,s:i,s:i,s:i,s:o,s:I}", "model", m->path, "arch", c->arch,
                          "pp", pp, "tp", base->tp, "layers", c->n_layer, "stages", stages,
                          "logits_send_bytes_per_token", (json_int_t)c->vocab * 4);
    if (o && cap) json_object_update(o, cap);
    char *txt = o ? json_dumps(o, JSON_INDENT(1)) : NULL;
    json_decref(o);
    if (!txt) code = ss_cli_fail(k_cmd, "out of memory");
    else puts(txt);
    free(txt);
  } else if (code == SS_EXIT_OK) {
    printf("model:  %s (%s: %d layers, dim %d)\n", m->path, c->arch, c->n_layer, c->dim);
    printf("plan:   pp %d x tp %d = %d ranks (rank = stage * %d + tp rank); the first stage "
           "embeds, the last holds the final norm and LM head\n\n", pp, base->tp, pp * base->tp,
           base->tp);
    printf("stage  layers      n  weights MiB  per-rank MiB (max)  KV B/token  "
           "sent to next B/token\n");
    for (int s = 0; s < pp; s++) {
      const ss_shard_plan *p = &ps[s];
      uint64_t rmax = 0, send = 0;
      for (int r = 0; r < p->opts.tp; r++) {
        if (p->ranks[r].bytes.total > rmax) rmax = p->ranks[r].bytes.total;
        send += p->ranks[r].pp_send_nbytes_per_token;
      }
      char lr[32];
      snprintf(lr, sizeof lr, "[%lld, %lld)", (long long)p->opts.layers.begin,
               (long long)p->opts.layers.end);
      printf("%5d  %-10s %3lld %12.2f %19.2f %11" PRIu64 " %21" PRIu64 "\n", s, lr,
             (long long)ss_range_len(p->opts.layers), mib(p->total_weight_nbytes), mib(rmax),
             p->kv_nbytes_per_token, send);
    }
    printf("\nbetween stages: each of a stage's %d ranks sends its peer in the next stage the "
           "residual stream, %d f32 = %llu bytes per token; the last stage's rank 0 sends "
           "rank 0 the logits, %d f32 = %llu bytes per sampled token\n", base->tp, c->dim,
           (unsigned long long)c->dim * 4, c->vocab, (unsigned long long)c->vocab * 4);
    if (cap) ss_plan_capacity_print(cap);
  }
  json_decref(cap);
  for (int s = 0; s < made; s++) ss_shard_plan_free(&ps[s]);
  free(ps);
  return code;
}

int ss_cmd_plan(int argc, char **argv) {
  const char *path = SS_DEFAULT_MODEL, *dtype_name = NULL, *kv_name = NULL;
  int64_t tp = 0, ep = 0, pp = 0, microbatches = 0;
  const char *pp_layers_arg = NULL;
  int pp_layers[SS_CLI_MAX_STAGES];
  bool json = false, replicate = false;
  enum { O_TP = 256, O_PP, O_PPL, O_JSON, O_REPL, O_EP, O_DTYPE, O_KVDTYPE, O_HW, O_NODES, O_SEQS, O_TOKENS,
         O_BLOCKS, O_KVMEM, O_RATE, O_BURST, O_CONC, O_NUM, O_IN, O_OUT, O_RATIO, O_SEED,
         O_GOODPUT, O_MAXRATE, O_STEPLOG, O_CALIB, O_SAVEHW, O_PERREQ, O_STEPCOST, O_DATASET,
         O_PRE_LEN, O_SUF_LEN, O_PRE_NUM, O_PRE_OUT, O_NOPC, O_WAIT, O_PPMB };
  ss_plan_capacity_opts co = {.sched = {.max_num_seqs = 64, .max_batched_tokens = 512,
                                        .block_size = 16, .prefix_caching = true},
                              .w = {.burstiness = 1.0, .n_requests = 200, .input_len = 512,
                                    .output_len = 128, .max_waiting = 1024}};
  bool workload = false, prefixed = false;
  /* prefix_repetition's lengths, as loadgen's defaults */
  int64_t pre_len = 256, suf_len = 256, pre_num = 10, pre_out = 128;
  int64_t iv = 0, kv_blocks = 0;
  double dv = 0, kv_mem = 0;
  static const struct option opts[] = {
      {"model", required_argument, 0, 'm'}, {"tp", required_argument, 0, O_TP},
      {"pp", required_argument, 0, O_PP},   {"pp-layers", required_argument, 0, O_PPL},
      {"pp-microbatches", required_argument, 0, O_PPMB},
      {"json", no_argument, 0, O_JSON},     {"replicate-vocab", no_argument, 0, O_REPL},
      {"ep", required_argument, 0, O_EP},   {"dtype", required_argument, 0, O_DTYPE},
      {"kv-dtype", required_argument, 0, O_KVDTYPE},
      {"kv-cache-dtype", required_argument, 0, O_KVDTYPE},
      {"hardware", required_argument, 0, O_HW}, {"nodes", required_argument, 0, O_NODES},
      {"max-num-seqs", required_argument, 0, O_SEQS},
      {"max-batched-tokens", required_argument, 0, O_TOKENS},
      {"kv-blocks", required_argument, 0, O_BLOCKS}, {"kv-mem", required_argument, 0, O_KVMEM},
      {"request-rate", required_argument, 0, O_RATE}, {"burstiness", required_argument, 0, O_BURST},
      {"max-concurrency", required_argument, 0, O_CONC},
      {"num-prompts", required_argument, 0, O_NUM},
      {"random-input-len", required_argument, 0, O_IN},
      {"random-output-len", required_argument, 0, O_OUT},
      {"random-range-ratio", required_argument, 0, O_RATIO}, {"seed", required_argument, 0, O_SEED},
      {"goodput", required_argument, 0, O_GOODPUT}, {"max-rate", no_argument, 0, O_MAXRATE},
      {"step-log", required_argument, 0, O_STEPLOG}, {"calibrate", no_argument, 0, O_CALIB},
      {"save-hardware", required_argument, 0, O_SAVEHW},
      {"per-request", no_argument, 0, O_PERREQ},
      {"step-cost", required_argument, 0, O_STEPCOST},
      {"dataset-name", required_argument, 0, O_DATASET},
      {"prefix-repetition-prefix-len", required_argument, 0, O_PRE_LEN},
      {"prefix-repetition-suffix-len", required_argument, 0, O_SUF_LEN},
      {"prefix-repetition-num-prefixes", required_argument, 0, O_PRE_NUM},
      {"prefix-repetition-output-len", required_argument, 0, O_PRE_OUT},
      {"no-prefix-caching", no_argument, 0, O_NOPC},
      {"max-waiting", required_argument, 0, O_WAIT},
      {"help", no_argument, 0, 'h'},        {0, 0, 0, 0},
  };
  optind = 1;
  opterr = 0;
  int c;
  while ((c = getopt_long(argc, argv, ":m:h", opts, NULL)) != -1) {
    switch (c) {
    case 'm': path = optarg; break;
    case O_TP:
      if (!ss_cli_parse_int(k_cmd, "--tp", optarg, 1, 4096, &tp)) return SS_EXIT_USAGE;
      break;
    case O_EP:
      if (!ss_cli_parse_int(k_cmd, "--ep", optarg, 1, 4096, &ep)) return SS_EXIT_USAGE;
      break;
    case O_PP:
      if (!ss_cli_parse_int(k_cmd, "--pp", optarg, 1, SS_CLI_MAX_STAGES, &pp)) return SS_EXIT_USAGE;
      break;
    case O_PPL: pp_layers_arg = optarg; break;
    case O_PPMB:
      /* serve's bounds */
      if (!ss_cli_parse_int(k_cmd, "--pp-microbatches", optarg, 1, 256, &microbatches))
        return SS_EXIT_USAGE;
      break;
    case O_DTYPE: dtype_name = optarg; break;
    case O_KVDTYPE: kv_name = optarg; break;
    case O_JSON: json = true; break;
    case O_REPL: replicate = true; break;
    case O_HW: co.hardware = optarg; break;
    case O_NODES:
      if (!ss_cli_parse_int(k_cmd, "--nodes", optarg, 1, 100000, &iv)) return SS_EXIT_USAGE;
      co.nodes = (int)iv;
      break;
    case O_SEQS:
      if (!ss_cli_parse_int(k_cmd, "--max-num-seqs", optarg, 1, 4096, &iv)) return SS_EXIT_USAGE;
      co.sched.max_num_seqs = (int32_t)iv;
      break;
    case O_TOKENS:
      if (!ss_cli_parse_int(k_cmd, "--max-batched-tokens", optarg, 1, 1 << 20, &iv))
        return SS_EXIT_USAGE;
      co.sched.max_batched_tokens = (int32_t)iv;
      break;
    case O_BLOCKS:
      if (!ss_cli_parse_int(k_cmd, "--kv-blocks", optarg, 1, 1 << 24, &kv_blocks))
        return SS_EXIT_USAGE;
      break;
    case O_KVMEM:
      if (!ss_cli_parse_size(k_cmd, "--kv-mem", optarg, &kv_mem)) return SS_EXIT_USAGE;
      break;
    case O_RATE:
      workload = true;
      if (strcmp(optarg, "inf") == 0) co.w.rate = 0;
      else if (!ss_cli_parse_float(k_cmd, "--request-rate", optarg, 1e-9, 1e9, &co.w.rate))
        return SS_EXIT_USAGE;
      break;
    case O_BURST:
      if (strcmp(optarg, "inf") == 0) co.w.burstiness = INFINITY;
      else if (!ss_cli_parse_float(k_cmd, "--burstiness", optarg, 1e-3, 1e6, &co.w.burstiness))
        return SS_EXIT_USAGE;
      break;
    case O_CONC:
      workload = true;
      if (!ss_cli_parse_int(k_cmd, "--max-concurrency", optarg, 1, 1 << 20, &iv)) return SS_EXIT_USAGE;
      co.w.max_concurrency = (int32_t)iv;
      break;
    case O_NUM:
      workload = true;
      if (!ss_cli_parse_int(k_cmd, "--num-prompts", optarg, 1, 10000000, &iv)) return SS_EXIT_USAGE;
      co.w.n_requests = (int32_t)iv;
      break;
    case O_IN:
      workload = true;
      if (!ss_cli_parse_int(k_cmd, "--random-input-len", optarg, 1, 1 << 24, &iv)) return SS_EXIT_USAGE;
      co.w.input_len = (int32_t)iv;
      break;
    case O_OUT:
      workload = true;
      if (!ss_cli_parse_int(k_cmd, "--random-output-len", optarg, 1, 1 << 24, &iv))
        return SS_EXIT_USAGE;
      co.w.output_len = (int32_t)iv;
      break;
    case O_RATIO:
      if (!ss_cli_parse_float(k_cmd, "--random-range-ratio", optarg, 0, 0.999, &dv))
        return SS_EXIT_USAGE;
      co.w.range_ratio = dv;
      break;
    case O_SEED:
      if (!ss_cli_parse_int(k_cmd, "--seed", optarg, 0, INT64_MAX, &iv)) return SS_EXIT_USAGE;
      co.w.seed = (uint64_t)iv;
      break;
    case O_GOODPUT:
      if (!parse_slo(optarg, &co.w)) return SS_EXIT_USAGE;
      break;
    case O_MAXRATE: co.max_rate = true; break;
    case O_STEPLOG: co.step_log = optarg; break;
    case O_CALIB: co.calibrate = true; break;
    case O_SAVEHW: co.save_hardware = optarg; break;
    case O_PERREQ: co.w.per_request = true; break;
    case O_WAIT:
      /* serve's bounds */
      if (!ss_cli_parse_int(k_cmd, "--max-waiting", optarg, 1, 1 << 20, &iv)) return SS_EXIT_USAGE;
      co.w.max_waiting = (int32_t)iv;
      break;
    case O_DATASET:
      workload = true;
      if (strcmp(optarg, "prefix_repetition") == 0) prefixed = true;
      else if (strcmp(optarg, "random") == 0) prefixed = false;
      else if (strcmp(optarg, "multi_turn") == 0) {
        /* Each turn resends the replies before it, whose lengths only the
         * server's sampling decides: there is no prompt length to simulate. */
        fprintf(stderr, "%s: --dataset-name multi_turn: the planner cannot simulate "
                "multi-turn sessions (each turn's prompt holds the earlier replies, whose "
                "lengths only a real server decides); measure them with shardserve loadgen\n",
                k_cmd);
        return SS_EXIT_USAGE;
      } else {
        fprintf(stderr, "%s: --dataset-name %s: the planner simulates random or "
                "prefix_repetition\n", k_cmd, optarg);
        return SS_EXIT_USAGE;
      }
      break;
    case O_PRE_LEN:
      if (!ss_cli_parse_int(k_cmd, "--prefix-repetition-prefix-len", optarg, 1, 1 << 23, &pre_len))
        return SS_EXIT_USAGE;
      break;
    case O_SUF_LEN:
      if (!ss_cli_parse_int(k_cmd, "--prefix-repetition-suffix-len", optarg, 1, 1 << 23, &suf_len))
        return SS_EXIT_USAGE;
      break;
    case O_PRE_NUM:
      if (!ss_cli_parse_int(k_cmd, "--prefix-repetition-num-prefixes", optarg, 1, 1000000, &pre_num))
        return SS_EXIT_USAGE;
      break;
    case O_PRE_OUT:
      if (!ss_cli_parse_int(k_cmd, "--prefix-repetition-output-len", optarg, 1, 1 << 24, &pre_out))
        return SS_EXIT_USAGE;
      break;
    case O_NOPC: co.sched.prefix_caching = false; break;
    case O_STEPCOST:
      if (!parse_step_cost(optarg, &co)) return SS_EXIT_USAGE;
      break;
    case 'h': usage(stdout); return SS_EXIT_OK;
    case ':': return ss_cli_usage(k_cmd, "option '%s' needs a value", argv[optind - 1]);
    default: return ss_cli_usage(k_cmd, "unknown option '%s'", argv[optind - 1]);
    }
  }
  /* --goodput ttft:500 tpot:50: the values after the first arrive as operands. */
  for (; optind < argc; optind++)
    if (!strchr(argv[optind], ':') || !parse_slo(argv[optind], &co.w))
      return ss_cli_usage(k_cmd, "unexpected argument '%s'", argv[optind]);
  if (tp == 0 && (pp > 0 || pp_layers_arg)) tp = 1;
  if (tp == 0) return ss_cli_usage(k_cmd, "--tp N is required");
  ss_ranks_opts pro = {0};
  if (ss_ranks_pp_opts(k_cmd, pp, pp_layers_arg, pp_layers, &pro)) return SS_EXIT_USAGE;
  if (microbatches > 1 && pro.pp <= 1)
    return ss_cli_usage(k_cmd, "--pp-microbatches %lld needs pipeline stages (--pp 2 or more): "
                        "without them one step runs at a time", (long long)microbatches);
  /* As serve: as many steps in flight as stages unless told. */
  co.sched.microbatches = pro.pp > 1 ? (int32_t)(microbatches > 0 ? microbatches : pro.pp) : 1;
  if (pro.pp > 1 && (co.step_log || co.save_hardware))
    return ss_cli_usage(k_cmd, "--pp: --step-log and --save-hardware compare or fit one stage's "
                        "steps; give them without --pp");
  if (co.calibrate && !co.step_log)
    return ss_cli_usage(k_cmd, "--calibrate needs --step-log FILE (written by `serve --step-log`)");
  if ((workload || co.max_rate || co.step_log || co.save_hardware || co.n_steps) && !co.hardware)
    return ss_cli_usage(k_cmd, "a workload needs --hardware FILE (a preset in configs/hardware/ "
                        "or a profile written by `shardserve profile`)");
  if (kv_blocks && kv_mem > 0) return ss_cli_usage(k_cmd, "give --kv-blocks or --kv-mem, not both");
  co.simulate = workload;
  if (prefixed) {
    if (co.w.n_requests < pre_num)
      return ss_cli_usage(k_cmd, "--num-prompts %d cannot share %lld prefixes: need at least one "
                          "request per prefix", co.w.n_requests, (long long)pre_num);
    /* As loadgen: num_prompts / prefixes requests per prefix. */
    co.w.n_requests = (int32_t)(co.w.n_requests / pre_num * pre_num);
    co.w.num_prefixes = (int32_t)pre_num;
    co.w.prefix_len = (int32_t)pre_len;
    co.w.suffix_len = (int32_t)suf_len;
    co.w.output_len = (int32_t)pre_out;
  }
  if (ep > 1 && ep != tp)
    return ss_cli_usage(k_cmd, "--ep %lld must equal --tp %lld: experts are spread over the same "
                        "ranks as the attention heads", (long long)ep, (long long)tp);
  ss_dtype kv_type = SS_DTYPE_BF16, wtype = SS_DTYPE_BF16;
  const size_t n = strlen(path);
  const bool preset = n > 5 && strcmp(path + n - 5, ".json") == 0;
  /* serve's names (fp8_e4m3), and the weight names (fp8) as before. */
  if (kv_name && !ss_kv_dtype_parse(kv_name, &kv_type) &&
      !ss_cli_parse_dtype(k_cmd, "--kv-cache-dtype (--kv-dtype)", kv_name, &kv_type))
    return SS_EXIT_USAGE;
  if (dtype_name && !preset)
    return ss_cli_usage(k_cmd, "--dtype applies to JSON presets; a model file has its own types");
  if (dtype_name && !ss_cli_parse_dtype(k_cmd, "--dtype", dtype_name, &wtype)) return SS_EXIT_USAGE;

  /* Loaded whole but not paged in: only the metadata is read. */
  ss_model *m = NULL;
  ss_model_load_opts lo = {0};
  if (preset ? ss_model_describe(path, wtype, &m) : ss_model_load(path, &lo, &m)) {
    if (strcmp(path, SS_DEFAULT_MODEL) == 0)
      return ss_cli_fail(k_cmd, "%s (the default model is installed by scripts/setup.sh)",
                         ss_error_msg());
    return ss_cli_fail(k_cmd, "%s", ss_error_msg());
  }
  ss_shard_plan p;
  ss_shard_opts so = {.tp = (int)tp, .vocab_parallel = !replicate, .expert_parallel = ep > 1,
                      .kv_type = kv_type};
  if (co.hardware) {
    co.weight_fp8 = preset && wtype == SS_DTYPE_F8_E4M3;
    if (kv_blocks) co.kv_tokens = (double)kv_blocks * co.sched.block_size;
  }
  if (pro.pp > 1) {
    int code = plan_stages(m, &so, pro.pp, pro.pp_layers, json, co.hardware ? &co : NULL, kv_mem);
    ss_model_free(m);
    return code;
  }
  int rc = ss_shard_plan_make(m, &so, &p);
  if (rc) {
    int code = rc == SS_ERR_RANGE || rc == SS_ERR_UNSUPPORTED ? ss_cli_usage(k_cmd, "%s", ss_error_msg())
                                                              : ss_cli_fail(k_cmd, "%s", ss_error_msg());
    ss_model_free(m);
    return code;
  }
  int code = SS_EXIT_OK;
  json_t *cap = NULL;
  if (co.hardware) {
    if (kv_mem > 0) {
      /* As the server sizes its pool: whole blocks of the first rank's KV. */
      const double per_block = (double)p.ranks[0].kv_nbytes_per_token * co.sched.block_size;
      co.kv_tokens = floor(kv_mem / per_block) * co.sched.block_size;
    }
    cap = json_object();
    code = ss_plan_capacity(m, &p, 1, &co, cap);
  }
  if (code == SS_EXIT_OK) {
    if (json) {
      code = print_json(m, &p, cap);
    } else {
      print_table(m, &p);
      if (cap) ss_plan_capacity_print(cap);
    }
  }
  json_decref(cap);
  ss_shard_plan_free(&p);
  ss_model_free(m);
  return code;
}
