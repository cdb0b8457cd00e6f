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
#include "runtime/model/model.h"
#include "runtime/planner/planner.h"
#include "runtime/engine/sampler.h"
#include "runtime/base/stats.h"
#include "runtime/base/status.h"

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

typedef struct probe {
  double wall, compute, comm;
} probe;

/* Times `reps` forward passes of batch b: medians over the repeats of the
 * wall time, of the slowest rank's compute and of rank 0's collectives (a
 * repeat slowed by another process moves none of them). */
static int run_probe(const ss_model *m, ss_forward_state *st, ss_kv_cache *kv, const ss_batch *b,
                     float *logits, int reps, probe *out) {
  const int tp = m->local.tp;
  ss_step_profile *p0 = calloc((size_t)tp, sizeof *p0), *p1 = calloc((size_t)tp, sizeof *p1);
  double *wall = malloc((size_t)reps * sizeof *wall), *comp = malloc((size_t)reps * sizeof *comp);
  double *comm = malloc((size_t)reps * sizeof *comm);
  int rc = SS_OK;
  if (!p0 || !p1 || !wall || !comp || !comm) {
    rc = ss_error(SS_ERR_NOMEM, "out of memory");
    goto done;
  }
  if ((rc = ss_model_forward(m, st, kv, b, logits))) goto done; /* warm-up */
  for (int i = 0; i < reps; i++) {
    if ((rc = ss_model_gather_profiles(m, p0))) goto done;
    double t0 = ss_now_s();
    if ((rc = ss_model_forward(m, st, kv, b, logits))) goto done;
    wall[i] = ss_now_s() - t0;
    if ((rc = ss_model_gather_profiles(m, p1))) goto done;
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
  const size_t small = (size_t)m->cfg.dim, large = (size_t)m->cfg.dim * 256;
  double t_small = 0, t_large = 0;
  if (comm) {
    float *buf = calloc(large, sizeof *buf);
    if (buf) {
      t_small = time_allreduce(comm, buf, small, 200);
      t_large = time_allreduce(comm, buf, large, 40);
    }
    free(buf);
  }
  if (comm && comm->rank != 0) {
    if (ss_model_worker_loop(m, be)) rc = ss_cli_fail(k_cmd, "%s", ss_error_msg());
    be->free(be);
    ss_model_free(m);
    ss_ranks_end(comm, rc);
    return rc;
  }

  /* Rank 0: a KV cache with one long sequence (blocks 0..127) and 32 short ones
   * (2 blocks each after it). */
  const int32_t BS = 16, LONG = 1024, NSEQ = 32;
  enum { N_DEC = 6 };
  static const int32_t k_dec[N_DEC] = {1, 2, 4, 8, 16, 32};
  ss_kv_cache kv = {0};
  ss_forward_state st = {0};
  float *logits = NULL;
  int32_t *tok = NULL, *pos = NULL, *rows = NULL, *long_tab = NULL, *short_tab = NULL;
  const int32_t **tabs = NULL;
  probe pa, pb, pc, pc64, pc64b, pd[N_DEC];
  rc = SS_OK;
  if ((rc = ss_model_kv_init(m, be, BS, LONG / BS + 2 * NSEQ, &kv)) ||
      (rc = ss_forward_state_init(&st, m, be, 256, NSEQ)))
    goto fail;
  logits = malloc((size_t)NSEQ * (size_t)m->cfg.vocab * sizeof *logits);
  tok = calloc(256, sizeof *tok);
  pos = calloc(256, sizeof *pos);
  rows = calloc(256, sizeof *rows);
  long_tab = malloc((LONG / BS) * sizeof *long_tab);
  short_tab = malloc((size_t)NSEQ * 2 * sizeof *short_tab);
  tabs = malloc(256 * sizeof *tabs);
  if (!logits || !tok || !pos || !rows || !long_tab || !short_tab || !tabs) {
    rc = ss_error(SS_ERR_NOMEM, "out of memory");
    goto fail;
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
    if ((rc = ss_model_forward(m, &st, &kv, &b, logits))) goto fail;
  }
  {
    /* A: batch 1 at position 16; B: at position 1023. */
    int32_t zero = 0;
    pos[0] = 16;
    tabs[0] = long_tab;
    ss_batch b = {.n = 1, .tokens = tok, .loc = {.n = 1, .pos = pos, .block_table = tabs},
                  .n_logits = 1, .logit_rows = &zero};
    if ((rc = run_probe(m, &st, &kv, &b, logits, (int)reps, &pa))) goto fail;
    pos[0] = LONG - 1;
    if ((rc = run_probe(m, &st, &kv, &b, logits, (int)reps, &pb))) goto fail;
    /* C: a 256-token prefill chunk at positions 0..255, one logit row. */
    for (int32_t i = 0; i < 256; i++) pos[i] = i, tabs[i] = long_tab;
    int32_t last = 255;
    ss_batch bc = {.n = 256, .tokens = tok, .loc = {.n = 256, .pos = pos, .block_table = tabs},
                   .n_logits = 1, .logit_rows = &last};
    if ((rc = run_probe(m, &st, &kv, &bc, logits, (int)reps, &pc))) goto fail;
    /* C64: a 64-token prefill chunk at positions 0..63 (the size of a typical
     * serving step with a prompt in it). */
    int32_t last64 = 63;
    ss_batch bc64 = {.n = 64, .tokens = tok, .loc = {.n = 64, .pos = pos, .block_table = tabs},
                     .n_logits = 1, .logit_rows = &last64};
    if ((rc = run_probe(m, &st, &kv, &bc64, logits, (int)reps, &pc64))) goto fail;
    /* C64b: the same chunk size at positions 192..255 (a prompt's last chunk). */
    for (int32_t i = 0; i < 64; i++) pos[i] = 192 + i;
    if ((rc = run_probe(m, &st, &kv, &bc64, logits, (int)reps, &pc64b))) goto fail;
    /* D: 1, 2, 4, ... 32 sequences decoding at position 16 (a logit row each). */
    for (int32_t s = 0; s < NSEQ; s++) pos[s] = 16, tabs[s] = short_tab + 2 * s, rows[s] = s;
    for (int i = 0; i < N_DEC; i++) {
      ss_batch bd = {.n = k_dec[i], .tokens = tok,
                     .loc = {.n = k_dec[i], .pos = pos, .block_table = tabs},
                     .n_logits = k_dec[i], .logit_rows = rows};
      if ((rc = run_probe(m, &st, &kv, &bd, logits, (int)reps, &pd[i]))) goto fail;
    }
  }
  if ((rc = ss_model_stop_workers(m))) goto fail;

  /* Sampling cost per row (rank 0, engine thread work outside the forward). */
  double t_sample;
  {
    ss_sampler smp;
    ss_sampler_params sp = {.temperature = 0.0f, .top_p = 1.0f, .seed = 1};
    if ((rc = ss_sampler_init(&smp, &sp, m->cfg.vocab))) goto fail;
    for (int32_t i = 0; i < m->cfg.vocab; i++) logits[i] = (float)((i * 2654435761u) % 1000) * 1e-3f;
    double t0 = ss_now_s();
    for (int i = 0; i < 200; i++) (void)ss_sampler_sample(&smp, logits);
    t_sample = (ss_now_s() - t0) / 200;
    ss_sampler_free(&smp);
  }

  /* Fit. */
  ss_plan_model pm;
  ss_plan_model_from_loaded(m, 1, &pm);
  ss_hw_profile hw = {0};
  snprintf(hw.name, sizeof hw.name, "measured: %s, tp %d, %d threads per rank", path, m->local.tp,
           be->n_threads(be));
  /* Attention.  A decode token at position p reads p + 1 K/V positions and
   * forms as many query-key pairs: d = per position + per pair, from B - A.
   * The two 64-token chunks differ by 192 positions read and 12288 pairs:
   * C64b - C64 = 192 (d - pair) + 12288 pair. */
  const double d = fmax(0.0, (pb.compute - pa.compute) / (LONG - 17.0));
  const double pair_c64b = 64.0 * 192 + 64.0 * 65 / 2, pair_c = 256.0 * 257 / 2;
  const double dpair = pair_c64b - 64.0 * 65 / 2;
  const double per_pair = (pc64b.compute - pc64.compute - 192.0 * d) / (dpair - 192.0);
  /* A pair costs something (1e-12 s marks the figure as measured) and no more
   * than the decode figure, which includes it. */
  hw.attn_s_per_pair = fmin(fmax(per_pair, 1e-12), fmax(d, 1e-12));
  hw.attn_s_per_pos = fmax(0.0, d - hw.attn_s_per_pair);
#define ATTN(kv_read, pairs) (hw.attn_s_per_pos * (kv_read) + hw.attn_s_per_pair * (pairs))
  const double params_c = pm.dense_params * 256 + pm.head_params;
  const double comp_c = pc.compute - ATTN(256.0, pair_c);
  hw.flops = 2.0 * params_c / fmax(comp_c, 1e-7);
  hw.flops_fp8 = hw.flops;
  hw.logit_row_s = t_sample;
  /* Outside compute and collectives: the step broadcast, the logits gather's
   * bookkeeping, the backend's thread wake-ups. */
  hw.step_overhead_s = fmax(0.0, pa.wall - pa.compute - pa.comm);
  /* Weight streaming M, the matmul rate and how the two combine, fitted
   * together on the decode probes (batch 1 ... 32) and the two prefill probes:
   * each costs (M^p + C^p)^(1/p) of compute besides its attention, C = its
   * matmul flops / rate, a prompt token's flops weighted by the prefill token
   * cost.  Least squares on the relative error over a grid: the rate within
   * +-20% of the 256-token prefill's, the prefill token cost in [0.8, 1.5], M
   * in (0, batch 1's compute], p in {1, 1.1, ..., 4} or max (p = 0).  On CPUs
   * a prompt token costs more than a decoded one at the same batch size (its
   * activations and attention rows are larger working sets). */
  enum { N_FIT = N_DEC + 3 };
  double fit_d[N_FIT], fit_q[N_FIT], fit_x[N_FIT]; /* flops of sampled / prompt tokens */
  for (int i = 0; i < N_DEC; i++) {
    fit_d[i] = 2.0 * (pm.dense_params + pm.head_params) * k_dec[i];
    fit_q[i] = 0;
    fit_x[i] = pd[i].compute - ATTN(17.0 * k_dec[i], 17.0 * k_dec[i]);
  }
  fit_d[N_DEC] = 2.0 * (pm.dense_params + pm.head_params);
  fit_q[N_DEC] = 2.0 * pm.dense_params * 255;
  fit_x[N_DEC] = comp_c;
  fit_d[N_DEC + 1] = fit_d[N_DEC];
  fit_q[N_DEC + 1] = 2.0 * pm.dense_params * 63;
  fit_x[N_DEC + 1] = pc64.compute - ATTN(64.0, 64.0 * 65 / 2);
  fit_d[N_DEC + 2] = fit_d[N_DEC];
  fit_q[N_DEC + 2] = fit_q[N_DEC + 1];
  fit_x[N_DEC + 2] = pc64b.compute - ATTN(256.0, pair_c64b);
#undef ATTN
  const double flops0 = hw.flops;
  double best_err = INFINITY, best_m = fit_x[0], best_p = 0, best_flops = flops0, best_pf = 1;
  const double m_hi = fmax(fit_x[0], 1e-7);
  for (int iflo = 0; iflo <= 40; iflo++) {
    const double flops = flops0 * (0.8 + 0.01 * iflo);
    for (int ipf = 0; ipf <= 35; ipf++) {
      const double pf = 0.8 + 0.02 * ipf;
      for (int im = 1; im <= 100; im++) {
        const double M = m_hi * im / 100.0;
        for (int ip = 0; ip <= 31; ip++) {
          const double p = ip == 31 ? 0 : 1.0 + 0.1 * ip;
          double err = 0;
          for (int i = 0; i < N_FIT; i++) {
            const double cm = (fit_d[i] + pf * fit_q[i]) / flops;
            const double r = (ss_roofline(M, cm, p) - fit_x[i]) / fmax(fit_x[i], 1e-9);
            err += r * r;
          }
          if (err < best_err)
            best_err = err, best_m = M, best_p = p, best_flops = flops, best_pf = pf;
        }
      }
    }
  }
  hw.prefill_token_cost = best_pf;
  hw.flops = hw.flops_fp8 = best_flops;
  hw.mem_bw = (pm.dense_bytes + pm.head_bytes) / fmax(best_m, 1e-7);
  hw.roofline_exponent = best_p;
  /* What the fitted curve leaves: measured over modelled at each probe's size
   * (the two 64-token chunks averaged), so the profile meets every probe. */
  {
    double ratio[N_FIT];
    for (int i = 0; i < N_FIT; i++) {
      const double cm = (fit_d[i] + best_pf * fit_q[i]) / best_flops;
      ratio[i] = fmin(fmax(fit_x[i] / fmax(ss_roofline(best_m, cm, best_p), 1e-9), 0.1), 10);
    }
    /* In rising step size: the decode batches, the 64-token chunks, prefill256. */
    int n = 0;
    for (int i = 0; i < N_DEC; i++)
      hw.correction_tokens[n] = k_dec[i], hw.correction_ratio[n++] = ratio[i];
    hw.correction_tokens[n] = 1 + 63 * best_pf;
    hw.correction_ratio[n++] = 0.5 * (ratio[N_DEC + 1] + ratio[N_DEC + 2]);
    hw.correction_tokens[n] = 1 + 255 * best_pf;
    hw.correction_ratio[n++] = ratio[N_DEC];
    hw.n_correction = n;
  }
  hw.request_overhead_s = req_ms * 1e-3;
  long pages = sysconf(_SC_PHYS_PAGES), psz = sysconf(_SC_PAGESIZE);
  hw.mem_bytes = pages > 0 && psz > 0 ? (double)pages * (double)psz / m->local.tp : 0;
  hw.devices_per_node = m->local.tp;
  if (comm) {
    const double sb = small * sizeof(float), lb = large * sizeof(float);
    const double ring = 2.0 * (comm->size - 1) / comm->size;
    hw.link_bw = t_large > t_small ? ring * (lb - sb) / (t_large - t_small) : 0;
    hw.link_lat = fmax(0.0, t_small - (hw.link_bw > 0 ? ring * sb / hw.link_bw : 0));
    hw.inter_bw = hw.link_bw;
    hw.inter_lat = hw.link_lat;
  }
  /* How well the fitted model explains each probe's wall time. */
  char comment[1536];
  int at = snprintf(comment, sizeof comment,
                    "probes, ms (median wall / compute of the slowest rank / model): "
                    "batch1@1023 %.3f/%.3f/%.3f, prefill256 %.3f/%.3f/%.3f, "
                    "prefill64 %.3f/%.3f/%.3f, prefill64@192 %.3f/%.3f/%.3f",
                    pb.wall * 1e3, pb.compute * 1e3,
                    ss_cost_step(&pm, &hw, &(ss_step_shape){.n_tokens = 1, .n_logits = 1,
                                                            .attended = LONG,
                                                            .kv_read = LONG}).total_s * 1e3,
                    pc.wall * 1e3, pc.compute * 1e3,
                    ss_cost_step(&pm, &hw, &(ss_step_shape){.n_tokens = 256, .n_logits = 1,
                                                            .attended = pair_c,
                                                            .kv_read = 256}).total_s * 1e3,
                    pc64.wall * 1e3, pc64.compute * 1e3,
                    ss_cost_step(&pm, &hw, &(ss_step_shape){.n_tokens = 64, .n_logits = 1,
                                                            .attended = 64.0 * 65 / 2,
                                                            .kv_read = 64}).total_s * 1e3,
                    pc64b.wall * 1e3, pc64b.compute * 1e3,
                    ss_cost_step(&pm, &hw, &(ss_step_shape){.n_tokens = 64, .n_logits = 1,
                                                            .attended = pair_c64b,
                                                            .kv_read = 256}).total_s * 1e3);
  for (int i = 0; i < N_DEC && at > 0 && (size_t)at < sizeof comment; i++) {
    ss_step_shape sd = {.n_tokens = k_dec[i], .n_logits = k_dec[i], .attended = k_dec[i] * 17.0,
                        .kv_read = k_dec[i] * 17.0};
    const ss_step_cost cd = ss_cost_step(&pm, &hw, &sd);
    at += snprintf(comment + at, sizeof comment - (size_t)at, ", decode%d %.3f/%.3f/%.3f",
                   k_dec[i], pd[i].wall * 1e3, pd[i].compute * 1e3, cd.total_s * 1e3);
  }
  if (at > 0 && (size_t)at < sizeof comment)
    snprintf(comment + at, sizeof comment - (size_t)at, "; allreduce %zu B %.1f us, %zu B %.1f us",
             small * sizeof(float), t_small * 1e6, large * sizeof(float), t_large * 1e6);
  if ((rc = ss_hw_profile_save(out_path, &hw, comment))) goto fail;
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
  if (comm)
    fprintf(stderr, ", all-reduce %.1f us + %.2f GB/s", hw.link_lat * 1e6, hw.link_bw / 1e9);
  fprintf(stderr, "\nprofile: %s\nprofile: written to %s\n", comment, out_path);
  rc = SS_OK;
fail:
  free(logits);
  free(tok);
  free(pos);
  free(rows);
  free(long_tab);
  free(short_tab);
  free(tabs);
  ss_forward_state_free(&st);
  if (kv.be) ss_kv_cache_free(&kv);
  int code = SS_EXIT_OK;
  if (rc) code = ss_cli_fail(k_cmd, "%s", ss_error_msg());
  be->free(be);
  ss_model_free(m);
  ss_ranks_end(comm, code);
  return code;
}
