/* shardserve loadgen: load-tests any OpenAI-compatible server (ours, vLLM, ...)
 * with open- or closed-loop arrivals and reports latency, throughput and
 * goodput the way `vllm bench serve` does.  The work is in bench/loadgen/;
 * this file turns flags into its calls. */
#include <getopt.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <unistd.h>

#include "bench/loadgen/client.h"
#include "bench/loadgen/dataset.h"
#include "bench/loadgen/report.h"
#include "bench/loadgen/stats.h"
#include "launcher/cli.h"
#include "launcher/loadgen_opts.h"
#include "runtime/base/status.h"
#include "runtime/formats/gguf.h"
#include "runtime/planner/arrivals.h"
#include "runtime/tokenizer/tokenizer.h"

static const char *k_cmd = "loadgen";

#define CONNECT_TIMEOUT_S 10.0

/* ---- request bodies ---------------------------------------------------------------- */

/* --extra-body parsed into *extra (NULL without it). */
static int parse_extra(const ss_loadgen_opts *o, json_t **extra) {
  *extra = NULL;
  if (!o->extra_body) return SS_EXIT_OK;
  json_error_t jerr;
  json_t *e = json_loads(o->extra_body, 0, &jerr);
  if (!json_is_object(e)) {
    json_decref(e);
    return ss_cli_fail(k_cmd, "--extra-body is not a JSON object: %s", jerr.text);
  }
  *extra = e;
  return SS_EXIT_OK;
}

/* The fields after the prompt: max_tokens, sampling, streaming, --extra-body. */
static void body_finish(json_t *r, const ss_loadgen_opts *o, int64_t output_len,
                        const json_t *extra) {
  json_object_set_new(r, "max_tokens", json_integer(output_len));
  json_object_set_new(r, "temperature", json_real(o->temperature));
  json_object_set_new(r, "stream", json_true());
  if (o->stream_usage)
    json_object_set_new(r, "stream_options", json_pack("{s:b}", "include_usage", 1));
  if (o->ignore_eos) json_object_set_new(r, "ignore_eos", json_true());
  if (extra) json_object_update(r, (json_t *)extra);
}

static int make_bodies(const ss_loadgen_opts *o, const char *model, const ss_lg_dataset *ds, char ***out) {
  bool chat = strstr(o->endpoint, "chat/completions") != NULL;
  json_t *extra;
  if (parse_extra(o, &extra) != SS_EXIT_OK) return SS_EXIT_FAIL;
  char **b = calloc(ds->count, sizeof *b);
  if (!b) return ss_cli_fail(k_cmd, "out of memory");
  int rc = SS_EXIT_OK;
  for (size_t i = 0; i < ds->count && rc == SS_EXIT_OK; i++) {
    const ss_lg_prompt *p = &ds->items[i];
    json_t *r = json_object();
    json_object_set_new(r, "model", json_string(model));
    if (p->ids && chat) {
      rc = ss_cli_fail(k_cmd, "prompt %zu is a list of token ids, but %s takes text messages",
                       i + 1, o->endpoint);
    } else if (chat) {
      json_t *m = json_object();
      json_object_set_new(m, "role", json_string("user"));
      json_object_set_new(m, "content", json_string(p->text));
      json_object_set_new(r, "messages", json_pack("[o]", m));
    } else if (p->ids) {
      json_t *a = json_array();
      for (size_t k = 0; k < p->id_count; k++) json_array_append_new(a, json_integer(p->ids[k]));
      json_object_set_new(r, "prompt", a);
    } else {
      json_object_set_new(r, "prompt", json_string(p->text));
    }
    body_finish(r, o, p->output_len, extra);
    if (rc == SS_EXIT_OK && !(b[i] = json_dumps(r, JSON_COMPACT)))
      rc = ss_cli_fail(k_cmd, "out of memory building request bodies");
    json_decref(r);
  }
  json_decref(extra);
  if (rc != SS_EXIT_OK) {
    for (size_t i = 0; i < ds->count; i++) free(b[i]);
    free(b);
    return rc;
  }
  *out = b;
  return SS_EXIT_OK;
}

/* ---- running -------------------------------------------------------------------- */

/* FILE.json -> FILE-rate<R>.json for the sweep's per-rate results. */
static char *rate_path(const char *path, double rate) {
  const char *slash = strrchr(path, '/'), *dot = strrchr(path, '.');
  if (!dot || (slash && dot < slash)) dot = path + strlen(path);
  size_t n = strlen(path) + 48;
  char *s = malloc(n);
  if (s) snprintf(s, n, "%.*s-rate%g%s", (int)(dot - path), path, rate, dot);
  return s;
}

typedef struct ctx {
  const ss_loadgen_opts *o;
  const ss_lg_dataset *ds;
  char **bodies;
  const char *url, *base_url, *model;
  const json_t *extra; /* multi_turn: --extra-body, parsed */
} ctx;

/* ---- multi-turn bodies ---------------------------------------------------------- */

static json_t *message(const char *role, const char *text, size_t nbytes) {
  json_t *m = json_object(), *t = json_stringn(text, nbytes);
  if (!m || !t || json_object_set_new(m, "role", json_string(role)) ||
      json_object_set_new(m, "content", t)) {
    json_decref(m);
    return NULL;
  }
  return m;
}

/* Turn `turn` of `session`: the user messages of its turns so far with the
 * replies between them (ss_lg_turn_body_fn). */
static int turn_body(void *ud, size_t session, size_t turn, const ss_lg_text *replies,
                     char **body) {
  const ctx *c = ud;
  const ss_lg_prompt *user = &c->ds->items[session * c->ds->turns];
  bool chat = strstr(c->o->endpoint, "chat/completions") != NULL;
  json_t *r = json_object();
  int bad = !r || json_object_set_new(r, "model", json_string(c->model));
  if (chat) {
    json_t *msgs = json_array();
    bad |= json_object_set_new(r, "messages", msgs);
    for (size_t k = 0; k <= turn && !bad; k++) {
      bad |= json_array_append_new(msgs, message("user", user[k].text, strlen(user[k].text)));
      if (k < turn && !bad)
        bad |= json_array_append_new(msgs, message("assistant", replies[k].p, replies[k].nbytes));
    }
  } else {
    size_t sep = strlen(SS_LG_TURN_SEPARATOR), n = 0, cap = 1;
    for (size_t k = 0; k <= turn; k++)
      cap += strlen(user[k].text) + (k < turn ? replies[k].nbytes + 2 * sep : 0);
    char *p = malloc(cap);
    for (size_t k = 0; p && k <= turn; k++) {
      size_t un = strlen(user[k].text);
      memcpy(p + n, user[k].text, un);
      n += un;
      if (k == turn) break;
      memcpy(p + n, SS_LG_TURN_SEPARATOR, sep);
      memcpy(p + n + sep, replies[k].p, replies[k].nbytes);
      memcpy(p + n + sep + replies[k].nbytes, SS_LG_TURN_SEPARATOR, sep);
      n += replies[k].nbytes + 2 * sep;
    }
    json_t *t = p ? json_stringn(p, n) : NULL;
    free(p);
    bad |= !t || json_object_set_new(r, "prompt", t);
  }
  if (!bad) {
    body_finish(r, c->o, user[turn].output_len, c->extra);
    *body = json_dumps(r, JSON_COMPACT);
  }
  json_decref(r);
  if (bad || !*body)
    return ss_error(SS_ERR_NOMEM, "cannot build session %zu turn %zu's body (out of memory)",
                    session, turn + 1);
  return SS_OK;
}

/* The server's prefix-cache counters now; false (with a warning) when /metrics
 * cannot be read. */
static bool read_cache_counters(const ctx *c, ss_lg_cache_counters *out) {
  char *text = NULL;
  int status = 0;
  if (ss_lg_fetch_metrics(c->base_url, c->o->api_key, CONNECT_TIMEOUT_S, &text, &status)) {
    fprintf(stderr, "shardserve loadgen: warning: no prefix-cache figures: %s\n", ss_error_msg());
    return false;
  }
  ss_lg_parse_cache_counters(text, out);
  free(text);
  return true;
}

/* One run at `rate`; fills *sum.  Returns SS_EXIT_OK or SS_EXIT_FAIL. */
static int run_once(const ctx *c, double rate, const char *label, const char *save_path,
                    ss_lg_summary *sum) {
  const ss_loadgen_opts *o = c->o;
  double *sched = NULL;
  size_t count = 0;
  bool closed = isinf(rate) && o->ramp == SS_RAMP_NONE;
  if (c->ds->arrivals_s) { /* a trace: its own timestamps */
    if (!(sched = malloc(c->ds->count * sizeof *sched))) return ss_cli_fail(k_cmd, "out of memory");
    memcpy(sched, c->ds->arrivals_s, c->ds->count * sizeof *sched);
    count = c->ds->count;
  } else if (!(closed && o->duration_s > 0)) {
    ss_arrivals_params sp = {
        .rate = rate, .burstiness = o->burstiness, .ramp = o->ramp,
        .ramp_start_rps = o->ramp_start, .ramp_end_rps = o->ramp_end,
        .count = o->duration_s > 0 ? 0
                 : strcmp(o->dataset, "prefix_repetition") == 0 ? c->ds->count
                 : c->ds->turns ? c->ds->count / c->ds->turns /* one start per session */
                 : (size_t)o->num_prompts,
        .duration_s = o->duration_s, .seed = o->seed,
    };
    if (ss_arrivals_build(&sp, &sched, &count))
      return ss_cli_fail(k_cmd, "schedule: %s", ss_error_msg());
    if (count == 0) {
      free(sched);
      return ss_cli_fail(k_cmd, "the schedule is empty: raise --duration or the rate");
    }
  }
  ss_lg_client_config cc = {
      .url = c->url, .api_key = o->api_key, .bodies = (const char *const *)c->bodies,
      .prompts = c->ds->items, .body_count = c->ds->count, .sched_s = sched,
      .count = sched ? count : 0, .duration_s = sched ? 0 : o->duration_s,
      .max_concurrency = o->max_concurrency, .request_timeout_s = o->request_timeout_s,
      .connect_timeout_s = CONNECT_TIMEOUT_S, .progress = o->progress, .progress_label = label,
      .turns = c->ds->turns, .think_time_s = o->mt_think_s,
      .turn_body = c->ds->turns ? turn_body : NULL, .turn_body_ctx = (void *)c,
  };
  ss_lg_cache_counters before, after, delta = {0};
  bool have_cache = read_cache_counters(c, &before);
  ss_lg_run run;
  int rc = ss_lg_client_run(&cc, &run);
  if (!rc && have_cache && read_cache_counters(c, &after)) {
    delta.found = before.found && after.found;
    delta.family = after.family;
    delta.queries = after.queries - before.queries;
    delta.hits = after.hits - before.hits;
  } else {
    have_cache = false;
  }
  free(sched);
  if (rc) return ss_cli_fail(k_cmd, "%s", ss_error_msg());
  bool has_slo = o->slo.ttft_ms >= 0 || o->slo.tpot_ms >= 0 || o->slo.e2el_ms >= 0;
  if (ss_lg_summarize(run.results, run.count, run.duration_s, has_slo ? &o->slo : NULL, sum)) {
    ss_lg_run_free(&run);
    return ss_cli_fail(k_cmd, "%s", ss_error_msg());
  }
  ss_lg_report_info info = {
      .backend = strstr(o->endpoint, "chat/completions") ? "openai-chat" : "openai",
      .base_url = c->base_url, .endpoint = o->endpoint, .model_id = c->model,
      .tokenizer_id = o->tokenizer_model, .dataset_name = o->dataset, .label = o->label,
      .request_rate = o->ramp == SS_RAMP_NONE ? rate : INFINITY,
      .burstiness = o->burstiness, .max_concurrency = o->max_concurrency,
      .num_prompts = run.count, .duration_limit_s = o->duration_s,
      .ramp = o->ramp == SS_RAMP_LINEAR ? "linear"
              : o->ramp == SS_RAMP_EXPONENTIAL ? "exponential" : NULL,
      .ramp_start_rps = o->ramp_start, .ramp_end_rps = o->ramp_end,
      .slo = has_slo ? &o->slo : NULL, .seed = o->seed, .cache = have_cache ? &delta : NULL,
  };
  ss_lg_report_print(stdout, &info, sum, &run);
  fflush(stdout);
  if (sum->send_lag_ms.p99 > 10.0)
    fprintf(stderr, "shardserve loadgen: warning: the generator sent late (p99 send lag %.1f ms "
            "> 10 ms); the offered load was lower than asked\n", sum->send_lag_ms.p99);
  rc = SS_EXIT_OK;
  if (save_path) {
    if (ss_lg_report_save(save_path, &info, sum, &run))
      rc = ss_cli_fail(k_cmd, "%s", ss_error_msg());
    else
      fprintf(stderr, "shardserve loadgen: wrote %s\n", save_path);
  }
  if (rc == SS_EXIT_OK && sum->completed == 0)
    rc = ss_cli_fail(k_cmd, "all %zu requests failed; first error: %s", run.count,
                     run.count && run.results[0].error ? run.results[0].error : "none");
  ss_lg_run_free(&run);
  return rc;
}

static int load_dataset(const ss_loadgen_opts *o, const ss_tokenizer *tok, ss_lg_dataset *ds) {
  bool chat = strstr(o->endpoint, "chat/completions") != NULL;
  bool ids = o->prompt_format == 1 ||
             (o->prompt_format < 0 && !chat && (o->vocab_size > 0 || tok));
  ss_lg_random_params rp = {
      .count = (size_t)o->num_prompts, .input_len = o->input_len, .output_len = o->output_len,
      .range_ratio = o->range_ratio, .seed = o->seed, .ids = ids,
      .vocab_size = (int32_t)o->vocab_size, .tok = tok,
  };
  int rc;
  ss_lg_prefix_params pp = {
      .num_prefixes = (size_t)o->num_prefixes, .count = (size_t)o->num_prompts,
      .prefix_len = o->prefix_len, .suffix_len = o->suffix_len,
      .output_len = o->prefix_output_len, .seed = o->seed, .ids = ids,
      .vocab_size = (int32_t)o->vocab_size, .tok = tok,
  };
  ss_lg_trace_params tp = {
      .block_size = o->trace_block_size, .time_scale = o->trace_time_scale,
      .max_count = o->num_prompts_set ? (size_t)o->num_prompts : 0, .seed = o->seed,
      .ids = ids, .vocab_size = (int32_t)o->vocab_size, .tok = tok,
  };
  ss_lg_multi_turn_params mp = {
      .sessions = (size_t)o->mt_sessions, .turns = (size_t)o->mt_turns,
      .user_len = o->mt_user_len, .output_len = o->mt_output_len, .seed = o->seed, .tok = tok,
  };
  if (strcmp(o->dataset, "random") == 0) rc = ss_lg_dataset_random(&rp, ds);
  else if (strcmp(o->dataset, "prefix_repetition") == 0) rc = ss_lg_dataset_prefix_repetition(&pp, ds);
  else if (strcmp(o->dataset, "trace") == 0) rc = ss_lg_dataset_trace(o->dataset_path, &tp, ds);
  else if (strcmp(o->dataset, "fixed") == 0) rc = ss_lg_dataset_fixed(o->prompt, &rp, ds);
  else if (strcmp(o->dataset, "jsonl") == 0) rc = ss_lg_dataset_jsonl(o->dataset_path, tok, ds);
  else if (strcmp(o->dataset, "multi_turn") == 0) rc = ss_lg_dataset_multi_turn(&mp, ds);
  else rc = ss_lg_dataset_sharegpt(o->dataset_path, (size_t)o->num_prompts, o->seed,
                                   o->sharegpt_output_len, tok, ds);
  if (rc) return ss_cli_fail(k_cmd, "dataset: %s", ss_error_msg());
  return SS_EXIT_OK;
}

/* Many concurrent streams need many sockets: raise the soft limit to the hard one. */
static void raise_fd_limit(void) {
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }
}

int ss_cmd_loadgen(int argc, char **argv) {
  ss_loadgen_opts o;
  int rc = ss_loadgen_parse(argc, argv, &o);
  if (rc >= 0) return rc;
  if (!o.api_key) o.api_key = getenv("OPENAI_API_KEY");
  raise_fd_limit();

  char *base = strdup(o.url), *model = NULL, *url = NULL, **bodies = NULL;
  ss_gguf *g = NULL;
  ss_tokenizer *tok = NULL;
  ss_lg_dataset ds = {0};
  ss_lg_sweep_row *rows = NULL;
  json_t *extra = NULL;
  bool curl_up = false;
  rc = SS_EXIT_FAIL;
  if (!base) goto done;
  for (size_t n = strlen(base); n > 0 && base[n - 1] == '/'; n--) base[n - 1] = '\0';
  if (ss_lg_client_global_init()) {
    ss_cli_fail(k_cmd, "%s", ss_error_msg());
    goto done;
  }
  curl_up = true;
  if (o.tokenizer_model && (ss_gguf_open(o.tokenizer_model, &g) || ss_tokenizer_load(g, &tok))) {
    ss_cli_fail(k_cmd, "--tokenizer-model: %s", ss_error_msg());
    goto done;
  }
  if ((rc = load_dataset(&o, tok, &ds)) != SS_EXIT_OK) goto done;
  rc = SS_EXIT_FAIL;

  /* Reachability first: a wrong URL is one clear line, not N failed requests. */
  int status = 0;
  if (ss_lg_fetch_first_model(base, o.api_key, CONNECT_TIMEOUT_S, &model, &status)) {
    if (!o.model || status == 0) {
      ss_cli_fail(k_cmd, "%s", ss_error_msg());
      goto done;
    }
    fprintf(stderr, "shardserve loadgen: warning: %s; using --model %s\n", ss_error_msg(), o.model);
  }
  if (o.model) {
    free(model);
    model = strdup(o.model);
  }
  size_t un = strlen(base) + strlen(o.endpoint) + 1;
  if (!model || !(url = malloc(un))) goto done;
  snprintf(url, un, "%s%s", base, o.endpoint);
  if (ds.turns) {
    /* Each turn's body is built when its session gets there. */
    if (parse_extra(&o, &extra) != SS_EXIT_OK) goto done;
    fprintf(stderr, "shardserve loadgen: %s, model %s, multi_turn dataset (%zu sessions of %zu "
            "turns)\n", url, model, ds.count / ds.turns, ds.turns);
  } else {
    if (make_bodies(&o, model, &ds, &bodies) != SS_EXIT_OK) goto done;
    fprintf(stderr, "shardserve loadgen: %s, model %s, %s dataset (%zu prompts)\n", url, model,
            o.dataset, ds.count);
  }

  ctx c = {.o = &o, .ds = &ds, .bodies = bodies, .url = url, .base_url = base, .model = model,
           .extra = extra};
  if (!o.sweep_count) {
    ss_lg_summary sum;
    rc = run_once(&c, o.rate, "", o.save_result, &sum);
    goto done;
  }
  if (!(rows = calloc(o.sweep_count, sizeof *rows))) goto done;
  rc = SS_EXIT_OK;
  for (size_t i = 0; i < o.sweep_count; i++) {
    char label[48], *path = o.save_result ? rate_path(o.save_result, o.sweep[i]) : NULL;
    snprintf(label, sizeof label, "rate %g ", o.sweep[i]);
    printf("\n## offered load %g req/s\n", o.sweep[i]);
    rows[i].offered_rps = o.sweep[i];
    int r1 = run_once(&c, o.sweep[i], label, path, &rows[i].s);
    free(path);
    /* A rate where every request failed is a point on the curve, not the end. */
    if (r1 != SS_EXIT_OK && rows[i].s.requests == 0) rc = r1;
  }
  printf("\n## sweep\n");
  ss_lg_sweep_print(stdout, rows, o.sweep_count, rows[0].s.has_goodput);
  fflush(stdout);
  char title[512], *plot = NULL;
  snprintf(title, sizeof title, "shardserve loadgen: %s (%s)", url, model);
  if (ss_lg_sweep_write(o.sweep_output, o.plot_format, title, rows, o.sweep_count, &plot)) {
    rc = ss_cli_fail(k_cmd, "sweep output: %s", ss_error_msg());
  } else {
    fprintf(stderr, "shardserve loadgen: wrote %s.tsv and %s\n", o.sweep_output, plot);
  }
  free(plot);
done:
  if (bodies)
    for (size_t i = 0; i < ds.count; i++) free(bodies[i]);
  free(bodies);
  free(rows);
  json_decref(extra);
  ss_lg_dataset_free(&ds);
  ss_tokenizer_free(tok);
  ss_gguf_close(g);
  free(url);
  free(model);
  free(base);
  if (curl_up) ss_lg_client_global_cleanup();
  return rc;
}
