/* shardserve profile: measures this machine for the planner.
 *
 * With the real model (at the TP and threads of the deployment being planned),
 * it times forward steps of chosen shapes and fits the cost model's figures:
 *   - attention: per position a decoding sequence reads (decode at position
 *     1023 against 16) and per query-key pair (a 64-token chunk at positions
 *     192..255 against one at 0..63: the same matmuls, 12288 more pairs);
 *   - matmul rate: 256- and 64-token prefill chunks (compute-bound), attention removed;
 *   - weight-streaming bandwidth, and how much of it hides under the matmuls:
 *     decode at batch 1, 2, 4, 6, 8, 10, 16, 32, fitted with the matmul rate fixed
 *     (6 and 10 are where CPU kernels change how they tile a batch);
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

/* One forward pass of batch b: its wall time, the slowest rank's compute and
 * rank 0's collectives (seconds); p0 and p1 are scratch of tp entries. */
static int time_step(const ss_model *m, ss_forward_state *st, ss_kv_cache *kv, const ss_batch *b,
                     float *logits, ss_step_profile *p0, ss_step_profile *p1, double *wall,
                     double *comp, double *comm) {
  int rc;
  if ((rc = ss_exec_gather_profiles(m, p0))) return rc;
  const double t0 = ss_now_s();
  if ((rc = ss_exec_step(m, st, kv, b, logits))) return rc;
  *wall = ss_now_s() - t0;
  if ((rc = ss_exec_gather_profiles(m, p1))) return rc;
  double cmax = 0;
  for (int r = 0; r < m->local.tp; r++) cmax = fmax(cmax, p1[r].compute_s - p0[r].compute_s);
  *comp = cmax;
  *comm = p1[0].comm_s - p0[0].comm_s;
  return SS_OK;
}

/* The probes, in the order they are timed in each round. */
enum { PR_DEC16, PR_DEC1023, PR_PRE256, PR_PRE64, PR_PRE64_192, PR_DEC0,
       PR_HELD0 = PR_DEC0 + SS_PROBE_N_DEC, PR_N = PR_HELD0 + SS_PROBE_N_HELD };

typedef struct probe_bufs {
  int32_t *tok, *pos, *rows, *long_tab, *short_tab;
  const int32_t **tabs;
} probe_bufs;

/* Fills the position, block-table and logit-row arrays for probe k and
 * returns its batch. */
static ss_batch probe_batch(int k, const probe_bufs *pb) {
  const int32_t LONG = SS_PROBE_LONG;
  int32_t n = 1, n_logits = 1;
  if (k == PR_DEC16 || k == PR_DEC1023) {
    pb->pos[0] = k == PR_DEC16 ? 16 : LONG - 1;
    pb->tabs[0] = pb->long_tab;
    pb->rows[0] = 0;
  } else if (k == PR_PRE256 || k == PR_PRE64 || k == PR_PRE64_192) {
    /* a 256-token prefill chunk at 0..255; a 64-token one at 0..63 (the size of
     * a typical serving step with a prompt in it) and at 192..255 (a prompt's
     * last chunk); one logit row */
    n = k == PR_PRE256 ? 256 : 64;
    const int32_t at = k == PR_PRE64_192 ? 192 : 0;
    for (int32_t i = 0; i < n; i++) pb->pos[i] = at + i, pb->tabs[i] = pb->long_tab;
    pb->rows[0] = n - 1;
  } else if (k < PR_HELD0) { /* 1, 2, 4, ... 32 sequences decoding at position 16 */
    n = n_logits = ss_probe_decode_batch[k - PR_DEC0];
    for (int32_t s = 0; s < n; s++)
      pb->pos[s] = 16, pb->tabs[s] = pb->short_tab + 2 * s, pb->rows[s] = s;
  } else { /* the held-out probes (not fitted) */
    const ss_held_probe *h = &ss_probe_held_shapes[k - PR_HELD0];
    if (h->n_seqs > 0) {
      n = n_logits = h->n_seqs;
      for (int32_t s = 0; s < n; s++)
        pb->pos[s] = 16, pb->tabs[s] = pb->short_tab + 2 * s, pb->rows[s] = s;
    } else {
      n = h->chunk;
      for (int32_t j = 0; j < n; j++) pb->pos[j] = h->start + j, pb->tabs[j] = pb->long_tab;
      pb->rows[0] = n - 1;
    }
  }
  return (ss_batch){.n = n, .tokens = pb->tok, .loc = {.n = n, .pos = pb->pos, .block_table = pb->tabs},
                    .n_logits = n_logits, .logit_rows = pb->rows};
}

/* The probe set's slot for probe k. */
static ss_probe *probe_slot(ss_probe_set *ps, int k) {
  if (k == PR_DEC16) return &ps->dec16;
  if (k == PR_DEC1023) return &ps->dec1023;
  if (k == PR_PRE256) return &ps->pre256;
  if (k == PR_PRE64) return &ps->pre64;
  if (k == PR_PRE64_192) return &ps->pre64_192;
  if (k < PR_HELD0) return &ps->dec[k - PR_DEC0];
  return &ps->held[k - PR_HELD0].p;
}

/* Rank 0: the forward-pass probes (runtime/planner/profile_fit.h), in a KV
 * cache holding one long sequence (blocks 0..63) and SS_PROBE_NSEQ short ones
 * (2 blocks each after it).  The probes are timed in rounds, each round every
 * probe once, so that a slower spell of the machine (another process, a
 * frequency change) falls on all of them alike rather than on the probes
 * timed during it; medians over the rounds. */
static int measure_steps(const ss_model *m, ss_backend *be, int reps, ss_probe_set *ps) {
  const int32_t BS = SS_PROBE_BLOCK, LONG = SS_PROBE_LONG, NSEQ = SS_PROBE_NSEQ;
  const int tp = m->local.tp;
  ss_kv_cache kv = {0};
  ss_forward_state st = {0};
  float *logits = NULL;
  probe_bufs pb = {0};
  double *wall = NULL, *comp = NULL, *comm = NULL;
  ss_step_profile *p0 = NULL, *p1 = NULL;
  int rc = SS_OK;
  if ((rc = ss_model_kv_init(m, be, BS, LONG / BS + 2 * NSEQ, SS_DTYPE_F32, &kv)) ||
      (rc = ss_forward_state_init(&st, m, be, 256, NSEQ)))
    goto done;
  logits = malloc((size_t)NSEQ * (size_t)m->cfg.vocab * sizeof *logits);
  pb.tok = calloc(256, sizeof *pb.tok);
  pb.pos = calloc(256, sizeof *pb.pos);
  pb.rows = calloc(256, sizeof *pb.rows);
  pb.long_tab = malloc((LONG / BS) * sizeof *pb.long_tab);
  pb.short_tab = malloc((size_t)NSEQ * 2 * sizeof *pb.short_tab);
  pb.tabs = malloc(256 * sizeof *pb.tabs);
  wall = malloc((size_t)PR_N * (size_t)reps * sizeof *wall);
  comp = malloc((size_t)PR_N * (size_t)reps * sizeof *comp);
  comm = malloc((size_t)PR_N * (size_t)reps * sizeof *comm);
  p0 = calloc((size_t)tp, sizeof *p0);
  p1 = calloc((size_t)tp, sizeof *p1);
  if (!logits || !pb.tok || !pb.pos || !pb.rows || !pb.long_tab || !pb.short_tab || !pb.tabs ||
      !wall || !comp || !comm || !p0 || !p1) {
    rc = ss_error(SS_ERR_NOMEM, "out of memory");
    goto done;
  }
  for (int32_t i = 0; i < LONG / BS; i++) pb.long_tab[i] = i;
  for (int32_t i = 0; i < NSEQ * 2; i++) pb.short_tab[i] = LONG / BS + i;
  for (int32_t i = 0; i < 256; i++) pb.tok[i] = 100 + i; /* ordinary vocabulary ids */
  /* Fill the long sequence's cache (prefill in 256-token chunks). */
  for (int32_t at = 0; at < LONG; at += 256) {
    for (int32_t i = 0; i < 256; i++) pb.pos[i] = at + i, pb.tabs[i] = pb.long_tab;
    int32_t last = 255;
    ss_batch b = {.n = 256, .tokens = pb.tok, .loc = {.n = 256, .pos = pb.pos, .block_table = pb.tabs},
                  .n_logits = 1, .logit_rows = &last};
    if ((rc = ss_exec_step(m, &st, &kv, &b, logits))) goto done;
  }
  for (int k = 0; k < SS_PROBE_N_HELD; k++) ps->held[k] = ss_probe_held_shapes[k];
  /* A warm-up round, then the timed ones. */
  for (int r = -1; r < reps; r++)
    for (int k = 0; k < PR_N; k++) {
      const ss_batch b = probe_batch(k, &pb);
      double w, cp, cm;
      if ((rc = time_step(m, &st, &kv, &b, logits, p0, p1, &w, &cp, &cm))) goto done;
      if (r >= 0) {
        const size_t at = (size_t)k * (size_t)reps + (size_t)r;
        wall[at] = w, comp[at] = cp, comm[at] = cm;
      }
    }
  for (int k = 0; k < PR_N; k++) {
    ss_probe *out = probe_slot(ps, k);
    out->wall = median(wall + (size_t)k * reps, reps);
    out->compute = median(comp + (size_t)k * reps, reps);
    out->comm = median(comm + (size_t)k * reps, reps);
  }
done:
  free(logits);
  free(pb.tok);
  free(pb.pos);
  free(pb.rows);
  free(pb.long_tab);
  free(pb.short_tab);
  free(pb.tabs);
  free(wall);
  free(comp);
  free(comm);
  free(p0);
  free(p1);
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
  ss_ranks_opts ro = {.deterministic = true, .liveness_s = SS_CLI_COMM_LIVENESS_S};
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
