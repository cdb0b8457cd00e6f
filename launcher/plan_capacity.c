/* The capacity part of `shardserve plan`: with a hardware profile, whether the
 * split fits, how much KV cache is left, step times from the cost model, and a
 * simulation of a workload through the server's own scheduler (see
 * runtime/planner/planner.h).  Field names follow the load generator's result JSON
 * (mean_ttft_ms, output_throughput, ...) so predictions and measurements line
 * up key by key. */
#include "launcher/plan_capacity.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "launcher/cli.h"
#include "runtime/base/stats.h"
#include "runtime/base/status.h"
#include "runtime/engine/engine.h"

static const char *k_cmd = "plan";

static double jnum(json_t *o, const char *k) { return json_number_value(json_object_get(o, k)); }

/* Matmul parameters and bytes of rank r of plan p, for the cost model. */
/* Rank r of plan p (one pipeline stage's ranks when p->opts.pp > 1: its layers,
 * and the head only on the last stage). */
static void plan_model_for_rank(const ss_model *m, const ss_shard_plan *p, int r, int nodes,
                                ss_plan_model *pm) {
  memset(pm, 0, sizeof *pm);
  const ss_model_config *c = &m->cfg;
  const ss_shard_rank *R = &p->ranks[r];
  const double C = c->dim, D = c->head_dim;
  const double heads = (double)ss_range_len(R->heads), kv = (double)ss_range_len(R->kv_heads);
  const double ffn = c->n_expert > 0 && !c->dense_mlp ? 0 : (double)ss_range_len(R->ffn);
  const bool staged = p->opts.pp > 1;
  const bool last = !staged || p->opts.stage == p->opts.pp - 1;
  const int n_layer = staged ? (int)ss_range_len(p->opts.layers) : c->n_layer;
  pm->n_layer = n_layer;
  pm->layer_fraction = (double)n_layer / c->n_layer;
  pm->dim = c->dim;
  pm->vocab = c->vocab;
  pm->tp = p->opts.tp;
  pm->nodes = nodes;
  pm->dense_bytes = (double)(R->bytes.attn + R->bytes.mlp + R->bytes.norm);
  pm->dense_params = n_layer * (C * D * (2 * heads + 2 * kv) + 3 * C * ffn);
  const double vocab_rows = (double)ss_range_len(R->vocab);
  /* A tied head is the embedding (counted as such where a stage holds both). */
  pm->head_bytes = !last ? 0 : (double)(c->tied_output && R->bytes.head == 0 ? R->bytes.embd
                                                                              : R->bytes.head);
  pm->head_params = last ? vocab_rows * C : 0;
  if (c->n_expert > 0) {
    const double held = (double)ss_range_len(R->experts);
    const double efc = (double)ss_range_len(R->expert_ffn);
    if (held > 0) {
      pm->n_experts = held;
      pm->top_k = (double)c->n_expert_used * held / c->n_expert;
      pm->expert_bytes = (double)R->bytes.moe / held;
      pm->expert_params = n_layer * 3.0 * C * efc;
    }
    pm->dense_params += n_layer * C * c->n_expert; /* routers */
  }
  pm->kv_bytes_per_token = (double)R->kv_nbytes_per_token;
  pm->attn_flops_per_pair = 4.0 * n_layer * heads * D;
  pm->weight_bytes = (double)R->bytes.total;
  if (pm->tp > 1) {
    pm->n_allreduce = p->n_allreduce_per_token;
    pm->allreduce_bytes_per_token = (double)p->allreduce_payload_nbytes;
    pm->gather_logits = last && p->opts.vocab_parallel;
  }
}

/* The plan's rank with the most weight bytes (rank 0 on ties: it holds the
 * most heads). */
static int heaviest_rank(const ss_shard_plan *p) {
  int best = 0;
  for (int r = 1; r < p->opts.tp; r++)
    if (p->ranks[r].bytes.total > p->ranks[best].bytes.total) best = r;
  return best;
}

/* ------------------------------------------------------------------------ */
/* A server's step log against the cost model                                 */

/* One number of a CSV line: the field's name and the file line in errors. */
static bool csv_num(char **at, const char *path, long line, const char *field, double lo,
                    double hi, double *out) {
  char *end;
  errno = 0;
  const double v = strtod(*at, &end);
  if (end == *at || errno || !(v >= lo && v <= hi) || (*end != ',' && *end != '\n' && *end != 0 &&
                                                       *end != '\r')) {
    ss_error(SS_ERR_FORMAT, "%s line %ld: field '%s' must be a number in [%g, %g]", path, line,
             field, lo, hi);
    return false;
  }
  *at = *end == ',' ? end + 1 : end;
  *out = v;
  return true;
}

/* Reads the log and adds "step_log" to out: measured and predicted busy time,
 * and the predicted/measured ratio per step (all steps, decode-only steps,
 * steps with prefill). */
static int step_log_compare(const char *path, const ss_plan_model *pm, const ss_hw_profile *hw,
                            json_t *out) {
  FILE *f = fopen(path, "r");
  if (!f) return ss_error(SS_ERR_IO, "--step-log %s: %s", path, strerror(errno));
  char buf[512];
  long line = 0;
  int rc = SS_OK;
  size_t n = 0, cap = 0, n_dec = 0, n_pre = 0;
  double *ratio = NULL, *r_dec = NULL, *r_pre = NULL;
  double meas = 0, pred = 0, meas_dec = 0, pred_dec = 0, meas_pre = 0, pred_pre = 0;
  while (rc == SS_OK && fgets(buf, sizeof buf, f)) {
    line++;
    if (!strchr(buf, '\n') && !feof(f)) {
      rc = ss_error(SS_ERR_FORMAT, "%s line %ld: longer than %zu bytes", path, line, sizeof buf - 2);
      break;
    }
    if (line == 1) {
      if (strncmp(buf, SS_ENGINE_STEP_LOG_HEADER, strlen(SS_ENGINE_STEP_LOG_HEADER)) != 0)
        rc = ss_error(SS_ERR_FORMAT, "%s: not a step log (the first line must be '%s')", path,
                      SS_ENGINE_STEP_LOG_HEADER);
      continue;
    }
    if (buf[0] == '\n' || buf[0] == 0) continue;
    char *at = buf;
    double t, nt, nl, ns, att, kvr, fwd, step;
    if (!csv_num(&at, path, line, "t_s", 0, 1e9, &t) ||
        !csv_num(&at, path, line, "n_tokens", 1, 1e7, &nt) ||
        !csv_num(&at, path, line, "n_logits", 0, nt, &nl) ||
        !csv_num(&at, path, line, "n_seqs", 1, nt, &ns) ||
        !csv_num(&at, path, line, "attended", 0, 1e15, &att) ||
        !csv_num(&at, path, line, "kv_read", 0, att, &kvr) ||
        !csv_num(&at, path, line, "forward_s", 0, 1e6, &fwd) ||
        !csv_num(&at, path, line, "step_s", 1e-9, 1e6, &step)) {
      rc = SS_ERR_FORMAT;
      break;
    }
    if (n == cap) {
      cap = cap ? cap * 2 : 1024;
      double *a = realloc(ratio, cap * sizeof *a), *b = a ? realloc(r_dec, cap * sizeof *b) : NULL,
             *c = b ? realloc(r_pre, cap * sizeof *c) : NULL;
      if (a) ratio = a;
      if (b) r_dec = b;
      if (c) r_pre = c;
      if (!c) {
        rc = ss_error(SS_ERR_NOMEM, "%s: out of memory at line %ld", path, line);
        break;
      }
    }
    const ss_step_shape sh = {
        .n_tokens = (int32_t)nt, .n_logits = (int32_t)nl, .attended = att, .kv_read = kvr};
    const double p = ss_cost_step(pm, hw, &sh).total_s;
    ratio[n++] = p / step;
    meas += step;
    pred += p;
    if (nt == ns) {
      r_dec[n_dec++] = p / step;
      meas_dec += step;
      pred_dec += p;
    } else {
      r_pre[n_pre++] = p / step;
      meas_pre += step;
      pred_pre += p;
    }
  }
  if (rc == SS_OK && ferror(f)) rc = ss_error(SS_ERR_IO, "%s: read error", path);
  if (rc == SS_OK && n == 0) rc = ss_error(SS_ERR_FORMAT, "%s: no steps", path);
  fclose(f);
  if (rc == SS_OK) {
    json_t *o = json_object();
    const struct { const char *name; double *v; size_t k; double m, p; } g[] = {
        {"all", ratio, n, meas, pred},
        {"decode", r_dec, n_dec, meas_dec, pred_dec},
        {"prefill", r_pre, n_pre, meas_pre, pred_pre}};
    for (size_t i = 0; i < 3; i++) {
      json_t *x = json_object();
      json_object_set_new(x, "steps", json_integer((json_int_t)g[i].k));
      json_object_set_new(x, "measured_s", json_real(g[i].m));
      json_object_set_new(x, "predicted_s", json_real(g[i].p));
      if (g[i].k) {
        ss_sort_doubles(g[i].v, g[i].k);
        json_object_set_new(x, "predicted_over_measured", json_real(g[i].p / g[i].m));
        json_object_set_new(x, "p10_ratio", json_real(ss_percentile(g[i].v, g[i].k, 10)));
        json_object_set_new(x, "median_ratio",
                            json_real(ss_percentile(g[i].v, g[i].k, 50)));
        json_object_set_new(x, "p90_ratio", json_real(ss_percentile(g[i].v, g[i].k, 90)));
      }
      json_object_set_new(o, g[i].name, x);
    }
    json_object_set_new(out, "step_log", o);
  }
  free(ratio);
  free(r_dec);
  free(r_pre);
  return rc;
}

static json_t *dist_json(const ss_dist *d, const char *name, json_t *o) {
  char k[64];
  const struct { const char *pre; double v; } f[] = {
      {"mean", d->mean}, {"median", d->median}, {"std", d->std}, {"p50", d->median},
      {"p90", d->p90},   {"p95", d->p95},       {"p99", d->p99}};
  for (size_t i = 0; i < sizeof f / sizeof *f; i++) {
    snprintf(k, sizeof k, "%s_%s_ms", f[i].pre, name);
    json_object_set_new(o, k, json_real(f[i].v * 1e3));
  }
  return o;
}

int ss_plan_capacity(const ss_model *m, const ss_shard_plan *stages, int pp,
                     const ss_plan_capacity_opts *o, json_t *out) {
  ss_hw_profile hw;
  if (ss_hw_profile_load(o->hardware, &hw)) return ss_cli_fail(k_cmd, "%s", ss_error_msg());
  const ss_shard_plan *p = &stages[0];
  const int tp = p->opts.tp, dpn = hw.devices_per_node;
  const int nodes = o->nodes > 0 ? o->nodes : (pp * tp + dpn - 1) / dpn;
  if (pp * tp > nodes * dpn)
    return ss_cli_usage(k_cmd, "%d ranks (--pp %d x --tp %d) need more devices than --nodes %d x "
                        "%d per node", pp * tp, pp, tp, nodes, dpn);
  const bool fp8 = p->ranks[0].bytes.total > 0 && o->weight_fp8;
  const double flops_16 = hw.flops; /* attention's products run at the 16-bit rate */
  if (fp8 && hw.flops_fp8 > 0) hw.flops = hw.flops_fp8;

  /* Memory per rank (stage s's ranks are s * tp ..), and the rank that limits
   * the KV cache: each stage keeps the K/V of its own layers for every token. */
  double kv_tokens = INFINITY;
  bool fits = true;
  json_t *ranks = json_array();
  for (int g = 0; g < pp * tp; g++) {
    const int r = g % tp;
    const ss_shard_rank *R = &stages[g / tp].ranks[r];
    const double usable = hw.mem_bytes * (1.0 - hw.overhead_reserve);
    const double room = usable - (double)R->bytes.total;
    const double tokens = R->kv_nbytes_per_token ? room / (double)R->kv_nbytes_per_token : 0;
    if (room <= 0) fits = false;
    if (tokens < kv_tokens) kv_tokens = tokens;
    json_array_append_new(ranks, json_pack("{s:i, s:I, s:f, s:f, s:f}", "rank", g, "weight_bytes",
                                           (json_int_t)R->bytes.total, "reserve_bytes",
                                           hw.mem_bytes * hw.overhead_reserve, "kv_room_bytes",
                                           room > 0 ? room : 0.0, "kv_capacity_tokens",
                                           tokens > 0 ? tokens : 0.0));
  }
  if (o->kv_tokens > 0) kv_tokens = o->kv_tokens; /* what the server was told to use */
  if (kv_tokens < 0) kv_tokens = 0;
  const double seq_len = (double)o->w.input_len + o->w.output_len;
  json_object_set_new(out, "hardware", json_string(hw.name));
  json_object_set_new(out, "nodes", json_integer(nodes));
  json_object_set_new(out, "fits", json_boolean(fits));
  json_object_set_new(out, "memory_per_rank", ranks);
  json_object_set_new(out, "kv_capacity_tokens", json_real(floor(kv_tokens)));
  json_object_set_new(out, "max_concurrent_seqs", json_real(floor(kv_tokens / seq_len)));

  /* Step times of each stage's largest rank (the collectives wait for it). */
  ss_plan_model pm, stage_pm[SS_PLAN_MAX_STAGES];
  bool inter[SS_PLAN_MAX_STAGES];
  if (pp > SS_PLAN_MAX_STAGES)
    return ss_cli_usage(k_cmd, "--pp %d: the planner models at most %d stages", pp,
                        SS_PLAN_MAX_STAGES);
  for (int s = 0; s < pp; s++) {
    /* The nodes the stage's ranks span, and whether its hand-off to the next
     * stage leaves the node. */
    const int lo = s * tp, hi = s * tp + tp - 1;
    plan_model_for_rank(m, &stages[s], heaviest_rank(&stages[s]), hi / dpn - lo / dpn + 1,
                        &stage_pm[s]);
    inter[s] = s + 1 < pp && hi / dpn != (hi + 1) / dpn;
  }
  if (pp == 1) {
    pm = stage_pm[0];
    pm.nodes = nodes;
  } else {
    memset(&pm, 0, sizeof pm);
    pm.n_layer = m->cfg.n_layer;
    pm.dim = m->cfg.dim;
    pm.vocab = m->cfg.vocab;
    pm.tp = tp;
    pm.nodes = nodes;
    pm.n_stages = pp;
    pm.stage = stage_pm;
    pm.handoff_inter = inter;
    pm.logits_home_inter = (pp - 1) * tp / dpn != 0;
    pm.handoff_bytes_per_token = (double)stages[0].ranks[0].pp_send_nbytes_per_token;
    /* The stages carry the costs; only the preset's attention default reads this. */
    for (int s = 0; s < pp; s++) pm.attn_flops_per_pair += stage_pm[s].attn_flops_per_pair;
  }
  if (!(hw.attn_s_per_pair > 0) && flops_16 > 0)
    hw.attn_s_per_pair = pm.attn_flops_per_pair / flops_16;
  const double L = o->w.input_len;
  ss_step_shape prefill = {
      .n_tokens = (int32_t)L, .n_logits = 1, .attended = L * (L + 1) / 2, .kv_read = L};
  const double ctx = L + o->w.output_len / 2.0; /* a decoding sequence's mean context */
  ss_step_shape dec1 = {.n_tokens = 1, .n_logits = 1, .attended = ctx, .kv_read = ctx};
  const int32_t B = o->sched.max_num_seqs;
  ss_step_shape decb = {.n_tokens = B, .n_logits = B, .attended = B * ctx, .kv_read = B * ctx};
  const ss_step_cost cp = ss_cost_step(&pm, &hw, &prefill), c1 = ss_cost_step(&pm, &hw, &dec1),
                     cb = ss_cost_step(&pm, &hw, &decb);
  if (o->n_steps > 0) {
    json_t *sc = json_array();
    for (int i = 0; i < o->n_steps; i++) {
      const ss_step_shape *s = &o->steps[i];
      const ss_step_cost k = ss_cost_step(&pm, &hw, s);
      json_t *e = json_pack("{s:i,s:i,s:f,s:f,s:f,s:f,s:f,s:f,s:f,s:f}", "n_tokens",
                            (int)s->n_tokens, "n_logits", (int)s->n_logits, "attended",
                            s->attended, "kv_read", s->kv_read, "total", k.total_s * 1e3,
                            "compute", k.compute_s * 1e3, "memory", k.memory_s * 1e3,
                            "attention", k.attn_s * 1e3, "comm", k.comm_s * 1e3, "overhead",
                            k.overhead_s * 1e3);
      if (pm.n_stages > 1) {
        /* The parts the simulation overlaps when steps are in flight. */
        double work[SS_PLAN_MAX_STAGES], hop[SS_PLAN_MAX_STAGES];
        ss_stage_times st = {.stage_s = work, .hop_s = hop};
        ss_cost_stages(&pm, &hw, s, &st, NULL);
        json_t *arr = json_array();
        for (int g = 0; g < pm.n_stages; g++)
          json_array_append_new(arr, json_pack("{s:f,s:f}", "work", work[g] * 1e3, "handoff",
                                               hop[g] * 1e3));
        json_object_set_new(e, "stages", arr);
        json_object_set_new(e, "rank0_overhead", json_real(st.overhead_s * 1e3));
        json_object_set_new(e, "rank0_sampling", json_real(st.sample_s * 1e3));
      }
      json_array_append_new(sc, e);
    }
    json_object_set_new(out, "step_costs_ms", sc);
  }
  json_object_set_new(out, "step_times_ms", json_pack(
      "{s:{s:f,s:f,s:f,s:f,s:f}, s:{s:f,s:f,s:f,s:f,s:f}, s:{s:i,s:f,s:f,s:f,s:f,s:f}}",
      "prefill", "total", cp.total_s * 1e3, "compute", cp.compute_s * 1e3, "memory",
      cp.memory_s * 1e3, "attention", cp.attn_s * 1e3, "comm", cp.comm_s * 1e3,
      "decode_batch1", "total", c1.total_s * 1e3, "compute", c1.compute_s * 1e3, "memory",
      c1.memory_s * 1e3, "attention", c1.attn_s * 1e3, "comm", c1.comm_s * 1e3,
      "decode_full_batch", "batch", B, "total", cb.total_s * 1e3, "compute", cb.compute_s * 1e3,
      "memory", cb.memory_s * 1e3, "attention", cb.attn_s * 1e3, "comm", cb.comm_s * 1e3));

  if (o->step_log) {
    if (step_log_compare(o->step_log, &pm, &hw, out))
      return ss_cli_fail(k_cmd, "%s", ss_error_msg());
    if (o->calibrate) {
      /* Total measured over total predicted busy time: the steps' own mix of
       * decode and prefill weighs the fit. */
      json_t *all = json_object_get(json_object_get(out, "step_log"), "all");
      const double ratio = jnum(all, "predicted_over_measured");
      const double lf = (hw.load_factor > 0 ? hw.load_factor : 1.0) / ratio;
      if (!(lf > 0 && lf <= 10))
        return ss_cli_fail(k_cmd, "--calibrate: the step log asks for a load factor of %g, "
                           "outside (0, 10]: is it from this model, TP and machine?", lf);
      hw.load_factor = lf;
      json_object_set_new(out, "calibrated_load_factor", json_real(lf));
    }
  }
  if (o->save_hardware) {
    char comment[256];
    snprintf(comment, sizeof comment, "%s%s%s", o->hardware,
             o->calibrate ? ", load factor calibrated on the step log " : "",
             o->calibrate ? o->step_log : "");
    if (ss_hw_profile_save(o->save_hardware, &hw, comment))
      return ss_cli_fail(k_cmd, "%s", ss_error_msg());
  }
  if (!fits) return SS_EXIT_OK;
  ss_sched_params sp = o->sched;
  double blocks = floor(kv_tokens / sp.block_size);
  if (blocks > (1 << 24)) blocks = 1 << 24;
  if (blocks < 1) return SS_EXIT_OK;
  sp.n_blocks = (int32_t)blocks;
  if (o->simulate) {
    ss_sim_result r;
    if (ss_simulate(&pm, &hw, &sp, &o->w, &r)) return ss_cli_fail(k_cmd, "%s", ss_error_msg());
    json_t *s = json_object();
    json_object_set_new(s, "request_rate", o->w.rate > 0 ? json_real(o->w.rate) : json_string("inf"));
    json_object_set_new(s, "burstiness", json_real(o->w.burstiness));
    json_object_set_new(s, "max_concurrency", json_integer(o->w.max_concurrency));
    json_object_set_new(s, "num_prompts", json_integer(o->w.n_requests));
    json_object_set_new(s, "completed", json_integer(r.completed));
    json_object_set_new(s, "rejected", json_integer(r.rejected));
    json_object_set_new(s, "max_waiting", json_integer(o->w.max_waiting));
    json_object_set_new(s, "duration", json_real(r.duration_s));
    json_object_set_new(s, "total_input_tokens", json_integer(r.total_input_tokens));
    json_object_set_new(s, "total_output_tokens", json_integer(r.total_output_tokens));
    json_object_set_new(s, "request_throughput", json_real(r.request_throughput));
    json_object_set_new(s, "request_goodput", json_real(r.request_goodput));
    json_object_set_new(s, "output_throughput", json_real(r.output_throughput));
    json_object_set_new(s, "total_token_throughput", json_real(r.total_token_throughput));
    dist_json(&r.ttft, "ttft", s);
    dist_json(&r.tpot, "tpot", s);
    dist_json(&r.itl, "itl", s);
    dist_json(&r.e2e, "e2el", s);
    json_object_set_new(s, "steps", json_integer((json_int_t)r.steps));
    json_object_set_new(s, "preemptions", json_integer((json_int_t)r.preemptions));
    json_object_set_new(s, "mean_batch_tokens", json_real(r.mean_batch_tokens));
    json_object_set_new(s, "dataset", json_string(o->w.num_prefixes > 0 ? "prefix_repetition"
                                                                         : "random"));
    json_object_set_new(s, "prefix_caching", json_boolean(sp.prefix_caching));
    json_object_set_new(s, "microbatches", json_integer(sp.microbatches > 1 ? sp.microbatches : 1));
    /* Prompt tokens looked up in the prefix cache and found there (as the
     * server's /metrics counts them at first admission and readmission). */
    json_object_set_new(s, "prefix_cache_queries", json_integer((json_int_t)r.prefix_queried));
    json_object_set_new(s, "prefix_cache_hits", json_integer((json_int_t)r.prefix_hit));
    json_object_set_new(s, "prefix_cache_hit_rate",
                        json_real(r.prefix_queried ? (double)r.prefix_hit / (double)r.prefix_queried
                                                   : 0.0));
    if (r.req) {
      /* Per request, in arrival order, as loadgen's --save-result names them. */
      json_t *st = json_array(), *tt = json_array(), *lat = json_array(), *il = json_array(),
             *ol = json_array(), *err = json_array();
      for (int32_t i = 0; i < o->w.n_requests; i++) {
        json_array_append_new(err, json_string(r.req[i].rejected ? "HTTP 429: the queue is full"
                                                                 : ""));
        json_array_append_new(st, json_real(r.req[i].start));
        json_array_append_new(tt, json_real(r.req[i].ttft));
        json_array_append_new(lat, json_real(r.req[i].latency));
        json_array_append_new(il, json_integer(r.req[i].input_len));
        json_array_append_new(ol, json_integer(r.req[i].output_len));
      }
      json_object_set_new(s, "start_times", st);
      json_object_set_new(s, "ttfts", tt);
      json_object_set_new(s, "latencies", lat);
      json_object_set_new(s, "input_lens", il);
      json_object_set_new(s, "output_lens", ol);
      json_object_set_new(s, "errors", err);
    }
    ss_sim_result_free(&r);
    json_object_set_new(out, "simulation", s);
  }
  if (o->max_rate) {
    const double rate = ss_simulate_max_rate(&pm, &hw, &sp, &o->w);
    json_object_set_new(out, "max_rate_meeting_slo", json_real(rate));
  }
  return SS_EXIT_OK;
}

void ss_plan_capacity_print(json_t *o) {
  printf("\ncapacity on %s (%lld node%s):\n", json_string_value(json_object_get(o, "hardware")),
         (long long)json_integer_value(json_object_get(o, "nodes")),
         json_integer_value(json_object_get(o, "nodes")) == 1 ? "" : "s");
  json_t *ranks = json_object_get(o, "memory_per_rank");
  size_t i;
  json_t *r;
  printf("  rank  weights GiB  reserve GiB  KV room GiB  KV tokens\n");
  json_array_foreach(ranks, i, r) {
    printf("  %4lld %12.2f %12.2f %12.2f %10.0f\n",
           (long long)json_integer_value(json_object_get(r, "rank")),
           jnum(r, "weight_bytes") / (1 << 30), jnum(r, "reserve_bytes") / (1 << 30),
           jnum(r, "kv_room_bytes") / (1 << 30), jnum(r, "kv_capacity_tokens"));
  }
  const bool fits = json_is_true(json_object_get(o, "fits"));
  printf("  fits: %s; KV capacity %.0f tokens = %.0f concurrent sequences at the workload's "
         "lengths\n", fits ? "yes" : "NO (weights exceed a rank's memory)",
         jnum(o, "kv_capacity_tokens"), jnum(o, "max_concurrent_seqs"));
  json_t *st = json_object_get(o, "step_times_ms");
  const char *names[] = {"prefill", "decode_batch1", "decode_full_batch"};
  printf("  step times (ms)       total  compute   memory  attention    comm\n");
  for (int k = 0; k < 3; k++) {
    json_t *s = json_object_get(st, names[k]);
    printf("  %-18s %8.3f %8.3f %8.3f %10.3f %7.3f\n", names[k], jnum(s, "total"),
           jnum(s, "compute"), jnum(s, "memory"), jnum(s, "attention"), jnum(s, "comm"));
  }
  json_t *sl = json_object_get(o, "step_log");
  if (sl) {
    printf("  step log vs cost model   steps  measured s  predicted s  pred/meas  "
           "per-step p10 / median / p90\n");
    const char *g[] = {"all", "decode", "prefill"};
    for (int k = 0; k < 3; k++) {
      json_t *x = json_object_get(sl, g[k]);
      if (!json_integer_value(json_object_get(x, "steps"))) continue;
      printf("  %-22s %7lld %11.3f %12.3f %10.3f  %.3f / %.3f / %.3f\n", g[k],
             (long long)json_integer_value(json_object_get(x, "steps")), jnum(x, "measured_s"),
             jnum(x, "predicted_s"), jnum(x, "predicted_over_measured"), jnum(x, "p10_ratio"),
             jnum(x, "median_ratio"), jnum(x, "p90_ratio"));
    }
  }
  if (json_object_get(o, "calibrated_load_factor"))
    printf("  calibrated: every step's cost x %.4f (load_factor)\n",
           jnum(o, "calibrated_load_factor"));
  json_t *s = json_object_get(o, "simulation");
  if (s) {
    printf("  simulated: %lld requests in %.2f s: %.2f req/s, %.1f output tok/s, goodput %.2f "
           "req/s\n", (long long)json_integer_value(json_object_get(s, "completed")),
           jnum(s, "duration"), jnum(s, "request_throughput"), jnum(s, "output_throughput"),
           jnum(s, "request_goodput"));
    if (json_integer_value(json_object_get(s, "microbatches")) > 1)
      printf("  steps in flight: up to %lld (each stage works on one while the next works on "
             "an earlier one)\n", (long long)json_integer_value(json_object_get(s, "microbatches")));
    if (json_integer_value(json_object_get(s, "rejected")) > 0 ||
        json_integer_value(json_object_get(s, "preemptions")) > 0)
      printf("  refused at arrival (the queue held --max-waiting %lld): %lld; preemptions: %lld\n",
             (long long)json_integer_value(json_object_get(s, "max_waiting")),
             (long long)json_integer_value(json_object_get(s, "rejected")),
             (long long)json_integer_value(json_object_get(s, "preemptions")));
    if (json_integer_value(json_object_get(s, "prefix_cache_queries")) > 0)
      printf("  prefix cache: %.1f%% of %lld prompt tokens looked up were found\n",
             100 * jnum(s, "prefix_cache_hit_rate"),
             (long long)json_integer_value(json_object_get(s, "prefix_cache_queries")));
    const char *m[] = {"ttft", "tpot", "itl", "e2el"};
    printf("  (ms)        mean   median      p90      p99\n");
    for (int k = 0; k < 4; k++) {
      char a[64], b[64], c[64], d[64];
      snprintf(a, sizeof a, "mean_%s_ms", m[k]);
      snprintf(b, sizeof b, "median_%s_ms", m[k]);
      snprintf(c, sizeof c, "p90_%s_ms", m[k]);
      snprintf(d, sizeof d, "p99_%s_ms", m[k]);
      printf("  %-5s %10.2f %8.2f %8.2f %8.2f\n", m[k], jnum(s, a), jnum(s, b), jnum(s, c),
             jnum(s, d));
    }
  }
  if (json_object_get(o, "max_rate_meeting_slo"))
    printf("  highest rate with 99%% of requests meeting the SLOs: %.3f req/s\n",
           jnum(o, "max_rate_meeting_slo"));
}
