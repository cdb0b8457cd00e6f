/* shardserve profile: measures this machine for the planner.
 *
 * With the real model (at the TP and threads of the deployment being planned),
 * it times forward steps of chosen shapes and fits the cost model's figures:
 *   - attention: per position a decoding sequence reads (decode at position
 *     1023 against 16) and per query-key pair (a 64-token chunk at positions
 *     192..255 against one at 0..63: the same matmuls, 12288 more pairs);
 *   - matmul rate: 256- and 64-token prefill chunks (compute-bound), attention removed;
 *   - weight-streaming bandwidth, and how much of it hides under the matmuls:
 *     decode at batch 1, 2, 4, ... 32, fitted with the matmul rate fixed;
 *   - what that curve leaves at each probe's size: a correction table, so the
 *     profile reproduces every probe;
 *   - per-step overhead: step wall time outside compute and collectives;
 *   - per-sampled-row cost: the sampler on a vocabulary of logits;
 *   - collectives: all-reduce latency and bandwidth at a step's payload sizes.
 * Compute times are the slowest rank's (per-rank counters), so imbalance from
 * uneven splits is in the figures.  The result is a hardware profile (JSON)
 * that `shardserve plan --hardware FILE` reads. */
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "comm/comm.h"
#include "launcher/cli.h"
#include "launcher/ranks.h"
#include "runtime/base/clock.h"
#include "runtime/base/stats.h"
#include "runtime/base/status.h"
#include "runtime/engine/executor.h"
#include "runtime/engine/sampler.h"
#include "runtime/model/model.h"
#include "runtime/planner/planner.h"
#include "runtime/planner/profile_fit.h"

static const char *k_cmd = "profile";

static void usage(FILE *f) {
  fprintf(f,
          "Usage: shardserve profile [--model FILE] [--threads N] [--repeats R] -o PROFILE.json\n"
          "       shardserve launch --tp N -- profile ...          (N ranks)\n"
          "\n"
          "Times forward steps of the model on this machine and writes a hardware profile\n"
          "for the planner (`shardserve plan --hardware PROFILE.json`): weight-streaming\n"
          "bandwidth, matmul rate, attention cost per position, step and sampling overhead,\n"
          "and all-reduce latency/bandwidth between the ranks.  Run it with the ranks and\n"
          "threads of the deployment you want to plan.\n"
          "\n"
          "  -m, --model FILE     GGUF model (default: " SS_DEFAULT_MODEL ")\n"
          "  -t, --threads N      CPU threads per rank (default: the usable cores\n"
          "                       divided among the ranks on this node)\n"
          "      --repeats R      timed steps per shape; the median is used (default 9)\n"
          "  -o, --output FILE    where to write the profile\n"
          "      --request-overhead-ms X  client-visible cost per request outside the engine\n"
          "                       (HTTP, tokenizing), added to TTFT and E2E (default 1)\n"
          "  -h, --help           show this help\n");
}

static double median(double *v, int n) {
  ss_sort_doubles(v, (size_t)n);
  return ss_percentile(v, (size_t)n, 50);
}

/* All-reduce timing, run by every rank together: median over reps, seconds. */
static double time_allreduce(ss_comm *c, float *buf, size_t count, int reps) {
  double *t = malloc((size_t)reps * sizeof *t);
  if (!t) return 0;
  for (int i = 0; i < 3; i++) ss_comm_allreduce_sum(c, buf, count, SS_DTYPE_F32);
  for (int i = 0; i < reps; i++) {
    ss_comm_barrier(c);
    double t0 = ss_now_s();
    ss_comm_allreduce_sum(c, buf, count, SS_DTYPE_F32);
    t[i] = ss_now_s() - t0;
  }
  double m = median(t, reps);
  free(t);
  return m;
}

/* Times `reps` forward passes of batch b: medians over the repeats of the
 * wall time, of the slowest rank's compute and of rank 0's collectives (a
 * repeat slowed by another process moves none of them). */
static int run_probe(const ss_model *m, ss_forward_state *st, ss_kv_cache *kv, const ss_batch *b,
                     float *logits, int reps, ss_probe *out) {
  const int tp = m->local.tp;
  ss_step_profile *p0 = calloc((size_t)tp, sizeof *p0), *p1 = calloc((size_t)tp, sizeof *p1);
  double *wall = malloc((size_t)reps * sizeof *wall), *comp = malloc((size_t)reps * sizeof *comp);
  double *comm = malloc((size_t)reps * sizeof *comm);
  int rc = SS_OK;
  if (!p0 || !p1 || !wall || !comp || !comm) {
    rc = ss_error(SS_ERR_NOMEM, "out of memory");
    goto done;
  }
  if ((rc = ss_exec_step(m, st, kv, b, logits))) goto done; /* warm-up */
  for (int i = 0; i < reps; i++) {
    if ((rc = ss_exec_gather_profiles(m, p0))) goto done;
    double t0 = ss_now_s();
    if ((rc = ss_exec_step(m, st, kv, b, logits))) goto done;
    wall[i] = ss_now_s() - t0;
    if ((rc = ss_exec_gather_profiles(m, p1))) goto done;
    double cmax = 0;
    for (int r = 0; r < tp; r++) cmax = fmax(cmax, p1[r].compute_s - p0[r].compute_s);
    comp[i] = cmax;
    comm[i] = p1[0].comm_s - p0[0].comm_s;
  }
  out->compute = median(comp, reps);
  out->comm = median(comm, reps);
  out->wall = median(wall, reps);
done:
  free(p0);
  free(p1);
  free(wall);
  free(comp);
  free(comm);
  return rc;
}

/* Rank 0: the forward-pass probes (runtime/planner/profile_fit.h), in a KV
 * cache holding one long sequence (blocks 0..63) and SS_PROBE_NSEQ short ones
 * (2 blocks each after it). */
static int measure_steps(const ss_model *m, ss_backend *be, int reps, ss_probe_set *ps) {
  const int32_t BS = SS_PROBE_BLOCK, LONG = SS_PROBE_LONG, NSEQ = SS_PROBE_NSEQ;
  ss_kv_cache kv = {0};
  ss_forward_state st = {0};
  float *logits = NULL;
  int32_t *tok = NULL, *pos = NULL, *rows = NULL, *long_tab = NULL, *short_tab = NULL;
  const int32_t **tabs = NULL;
  int rc = SS_OK;
  if ((rc = ss_model_kv_init(m, be, BS, LONG / BS + 2 * NSEQ, SS_DTYPE_F32, &kv)) ||
      (rc = ss_forward_state_init(&st, m, be, 256, NSEQ)))
    goto done;
  logits = malloc((size_t)NSEQ * (size_t)m->cfg.vocab * sizeof *logits);
  tok = calloc(256, sizeof *tok);
  pos = calloc(256, sizeof *pos);
  rows = calloc(256, sizeof *rows);
  long_tab = malloc((LONG / BS) * sizeof *long_tab);
  short_tab = malloc((size_t)NSEQ * 2 * sizeof *short_tab);
  tabs = malloc(256 * sizeof *tabs);
  if (!logits || !tok || !pos || !rows || !long_tab || !short_tab || !tabs) {
    rc = ss_error(SS_ERR_NOMEM, "out of memory");
    goto done;
  }
  for (int32_t i = 0; i < LONG / BS; i++) long_tab[i] = i;
  for (int32_t i = 0; i < NSEQ * 2; i++) short_tab[i] = LONG / BS + i;
  for (int32_t i = 0; i < 256; i++) tok[i] = 100 + i; /* ordinary vocabulary ids */
  /* Fill the long sequence's cache (prefill in 256-token chunks). */
  for (int32_t at = 0; at < LONG; at += 256) {
    for (int32_t i = 0; i < 256; i++) pos[i] = at + i, tabs[i] = long_tab;
    int32_t last = 255;
    ss_batch b = {.n = 256, .tokens = tok, .loc = {.n = 256, .pos = pos, .block_table = tabs},
                  .n_logits = 1, .logit_rows = &last};
    if ((rc = ss_exec_step(m, &st, &kv, &b, logits))) goto done;
  }
  /* Batch 1 at position 16, then at position 1023. */
  int32_t zero = 0;
  pos[0] = 16;
  tabs[0] = long_tab;
  ss_batch b = {.n = 1, .tokens = tok, .loc = {.n = 1, .pos = pos, .block_table = tabs},
                .n_logits = 1, .logit_rows = &zero};
  if ((rc = run_probe(m, &st, &kv, &b, logits, reps, &ps->dec16))) goto done;
  pos[0] = LONG - 1;
  if ((rc = run_probe(m, &st, &kv, &b, logits, reps, &ps->dec1023))) goto done;
  /* A 256-token prefill chunk at positions 0..255, one logit row. */
  for (int32_t i = 0; i < 256; i++) pos[i] = i, tabs[i] = long_tab;
  int32_t last = 255;
  ss_batch bc = {.n = 256, .tokens = tok, .loc = {.n = 256, .pos = pos, .block_table = tabs},
                 .n_logits = 1, .logit_rows = &last};
  if ((rc = run_probe(m, &st, &kv, &bc, logits, reps, &ps->pre256))) goto done;
  /* A 64-token prefill chunk at positions 0..63 (the size of a typical serving
   * step with a prompt in it), then at 192..255 (a prompt's last chunk). */
  int32_t last64 = 63;
  ss_batch bc64 = {.n = 64, .tokens = tok, .loc = {.n = 64, .pos = pos, .block_table = tabs},
                   .n_logits = 1, .logit_rows = &last64};
  if ((rc = run_probe(m, &st, &kv, &bc64, logits, reps, &ps->pre64))) goto done;
  for (int32_t i = 0; i < 64; i++) pos[i] = 192 + i;
  if ((rc = run_probe(m, &st, &kv, &bc64, logits, reps, &ps->pre64_192))) goto done;
  /* 1, 2, 4, ... 32 sequences decoding at position 16 (a logit row each). */
  for (int32_t s = 0; s < NSEQ; s++) pos[s] = 16, tabs[s] = short_tab + 2 * s, rows[s] = s;
  for (int i = 0; i < SS_PROBE_N_DEC; i++) {
    const int32_t n = ss_probe_decode_batch[i];
    ss_batch bd = {.n = n, .tokens = tok, .loc = {.n = n, .pos = pos, .block_table = tabs},
                   .n_logits = n, .logit_rows = rows};
    if ((rc = run_probe(m, &st, &kv, &bd, logits, reps, &ps->dec[i]))) goto done;
  }
  /* The held-out probes (not fitted): other decode batches at position 16 and
   * prefill chunks of other lengths and positions. */
  for (int i = 0; i < SS_PROBE_N_HELD; i++) {
    ss_held_probe *h = &ps->held[i];
    *h = ss_probe_held_shapes[i];
    ss_batch bh;
    if (h->n_seqs > 0) {
      for (int32_t s = 0; s < h->n_seqs; s++) pos[s] = 16, tabs[s] = short_tab + 2 * s, rows[s] = s;
      bh = (ss_batch){.n = h->n_seqs, .tokens = tok,
                      .loc = {.n = h->n_seqs, .pos = pos, .block_table = tabs},
                      .n_logits = h->n_seqs, .logit_rows = rows};
    } else {
      for (int32_t j = 0; j < h->chunk; j++) pos[j] = h->start + j, tabs[j] = long_tab;
      rows[0] = h->chunk - 1;
      bh = (ss_batch){.n = h->chunk, .tokens = tok,
                      .loc = {.n = h->chunk, .pos = pos, .block_table = tabs},
                      .n_logits = 1, .logit_rows = rows};
    }
    if ((rc = run_probe(m, &st, &kv, &bh, logits, reps, &h->p))) goto done;
  }
done:
  free(logits);
  free(tok);
  free(pos);
  free(rows);
  free(long_tab);
  free(short_tab);
  free(tabs);
  ss_forward_state_free(&st);
  if (kv.be) ss_kv_cache_free(&kv);
  return rc;
}

/* Sampling cost per row (rank 0, engine thread work outside the forward). */
static int measure_sampler(const ss_model *m, double *out_s) {
  ss_sampler smp;
  ss_sampler_scratch w;
  ss_sampler_params sp = {.temperature = 0.0f, .top_p = 1.0f, .seed = 1};
  float *logits = malloc((size_t)m->cfg.vocab * sizeof *logits);
  if (!logits) return ss_error(SS_ERR_NOMEM, "out of memory");
  int rc = ss_sampler_init(&smp, &sp);
  if (rc == SS_OK) rc = ss_sampler_scratch_init(&w, m->cfg.vocab);
  if (rc) {
    free(logits);
    return rc;
  }
  for (int32_t i = 0; i < m->cfg.vocab; i++) logits[i] = (float)((i * 2654435761u) % 1000) * 1e-3f;
  double t0 = ss_now_s();
  for (int i = 0; i < 200; i++) (void)ss_sampler_sample(&smp, &w, logits);
  *out_s = (ss_now_s() - t0) / 200;
  ss_sampler_scratch_free(&w);
  free(logits);
  return SS_OK;
}

/* Rank 0: fits the profile to the probes, saves it and says what it found. */
static int fit_and_save(const ss_model *m, ss_backend *be, const char *path,
                        const char *out_path, double req_ms, const ss_probe_set *ps) {
  ss_plan_model pm;
  ss_plan_model_from_loaded(m, 1, &pm);
  ss_hw_profile hw = {0};
  snprintf(hw.name, sizeof hw.name, "measured: %s, tp %d, %d threads per rank", path, m->local.tp,
           be->n_threads(be));
  char comment[2048];
  ss_profile_fit(&pm, ps, &hw, comment, sizeof comment);
  hw.request_overhead_s = req_ms * 1e-3;
  long pages = sysconf(_SC_PHYS_PAGES), psz = sysconf(_SC_PAGESIZE);
  hw.mem_bytes = pages > 0 && psz > 0 ? (double)pages * (double)psz / m->local.tp : 0;
  hw.devices_per_node = m->local.tp;
  int rc = ss_hw_profile_save(out_path, &hw, comment);
  if (rc) return rc;
  fprintf(stderr,
          "profile: weight bandwidth %.2f GB/s, matmul %.2f GFLOP/s, prompt token x%.2f, "
          "roofline exponent %.2f, "
          "attention %.3f us/position read + %.3f us/pair, step overhead %.3f ms, "
          "sampling %.3f ms/row",
          hw.mem_bw / 1e9, hw.flops / 1e9, hw.prefill_token_cost, hw.roofline_exponent,
          hw.attn_s_per_pos * 1e6, hw.attn_s_per_pair * 1e6, hw.step_overhead_s * 1e3,
          hw.logit_row_s * 1e3);
  fprintf(stderr, "; measured/fitted at");
  for (int i = 0; i < hw.n_correction; i++)
    fprintf(stderr, " %.0f:%.3f", hw.correction_tokens[i], hw.correction_ratio[i]);
  if (ps->tp > 0)
    fprintf(stderr, ", all-reduce %.1f us + %.2f GB/s", hw.link_lat * 1e6, hw.link_bw / 1e9);
  fprintf(stderr, "\nprofile: %s\nprofile: written to %s\n", comment, out_path);
  return SS_OK;
}

int ss_cmd_profile(int argc, char **argv) {
  const char *path = SS_DEFAULT_MODEL, *out_path = NULL;
  int64_t threads = 0, reps = 9;
  double req_ms = 1.0;
  enum { O_REPS = 256, O_REQ };
  static const struct option opts[] = {
      {"model", required_argument, 0, 'm'},   {"threads", required_argument, 0, 't'},
      {"repeats", required_argument, 0, O_REPS}, {"output", required_argument, 0, 'o'},
      {"request-overhead-ms", required_argument, 0, O_REQ}, {"help", no_argument, 0, 'h'},
      {0, 0, 0, 0},
  };
  optind = 1;
  opterr = 0;
  int c;
  while ((c = getopt_long(argc, argv, ":m:t:o:h", opts, NULL)) != -1) {
    switch (c) {
    case 'm': path = optarg; break;
    case 'o': out_path = optarg; break;
    case 't':
      if (!ss_cli_parse_int(k_cmd, "--threads", optarg, 1, 1024, &threads)) return SS_EXIT_USAGE;
      break;
    case O_REPS:
      if (!ss_cli_parse_int(k_cmd, "--repeats", optarg, 3, 1000, &reps)) return SS_EXIT_USAGE;
      break;
    case O_REQ:
      if (!ss_cli_parse_float(k_cmd, "--request-overhead-ms", optarg, 0, 1e5, &req_ms))
        return SS_EXIT_USAGE;
      break;
    case 'h': usage(stdout); return SS_EXIT_OK;
    case ':': return ss_cli_usage(k_cmd, "option '%s' needs a value", argv[optind - 1]);
    default: return ss_cli_usage(k_cmd, "unknown option '%s'", argv[optind - 1]);
    }
  }
  if (optind < argc) return ss_cli_usage(k_cmd, "unexpected argument '%s'", argv[optind]);
  if (!out_path) return ss_cli_usage(k_cmd, "-o PROFILE.json is required");

  ss_comm *comm = NULL;
  ss_ranks_opts ro = {.deterministic = true};
  int rc = ss_ranks_start(k_cmd, &ro, &comm);
  if (rc) return rc;
  ss_model *m = NULL;
  ss_backend *be = NULL;
  rc = ss_cli_load_shard(k_cmd, path, comm, false, &m);
  if (rc == SS_EXIT_OK && !(be = ss_backend_cpu_create((int)threads)))
    rc = ss_cli_fail(k_cmd, "%s", ss_error_msg());
  if ((rc = ss_ranks_agree(k_cmd, comm, rc == SS_EXIT_OK))) {
    if (be) be->free(be);
    ss_model_free(m);
    ss_ranks_end(comm, rc);
    return rc;
  }
  /* Collectives first, all ranks together: latency from a one-token payload,
   * bandwidth from a 256-token one. */
  ss_probe_set ps = {0};
  const size_t small = (size_t)m->cfg.dim, large = (size_t)m->cfg.dim * 256;
  ps.ar_small_bytes = small * sizeof(float);
  ps.ar_large_bytes = large * sizeof(float);
  if (comm) {
    ps.tp = comm->size;
    float *buf = calloc(large, sizeof *buf);
    if (buf) {
      ps.ar_small_s = time_allreduce(comm, buf, small, 200);
      ps.ar_large_s = time_allreduce(comm, buf, large, 40);
    }
    free(buf);
  }
  if (comm && comm->rank != 0) {
    if (ss_exec_worker_loop(m, be)) rc = ss_cli_fail(k_cmd, "%s", ss_error_msg());
    be->free(be);
    ss_model_free(m);
    ss_ranks_end(comm, rc);
    return rc;
  }
  rc = measure_steps(m, be, (int)reps, &ps);
  int rc_stop = ss_exec_stop_workers(m);
  if (!rc) rc = rc_stop;
  if (!rc) rc = measure_sampler(m, &ps.sample_s);
  if (!rc) rc = fit_and_save(m, be, path, out_path, req_ms, &ps);
  int code = SS_EXIT_OK;
  if (rc) code = ss_cli_fail(k_cmd, "%s", ss_error_msg());
  be->free(be);
  ss_model_free(m);
  ss_ranks_end(comm, code);
  return code;
}
