/* The CLI side of running over several ranks: starting the communicator from
 * the flags, agreeing that every rank loaded its shard, the --profile report,
 * and ending the job.  Shared by the commands that run a model (generate,
 * serve). */
#include "launcher/ranks.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "comm/comm.h"
#include "launcher/cli.h"
#include "runtime/base/status.h"
#include "runtime/base/trace.h"
#include "runtime/model/model.h"

/* The pipeline of this process's job (one per process: the CLI runs one). */
static ss_comm *g_stage;
static int g_pp = 1;
static int g_pp_layers[SS_CLI_MAX_STAGES];
static bool g_have_layers;

void ss_ranks_pipeline(ss_comm **stage, int *pp, const int **pp_layers) {
  *stage = g_stage;
  *pp = g_pp;
  *pp_layers = g_have_layers ? g_pp_layers : NULL;
}

int ss_ranks_parse_layers(const char *cmd, const char *arg, int *out, int cap) {
  int n = 0;
  const char *p = arg;
  for (;;) {
    char *end;
    long v = strtol(p, &end, 10);
    if (end == p || v < 1 || v > 1000000) {
      ss_cli_usage(cmd, "--pp-layers '%s': entry %d is not a layer count >= 1 (a comma-separated "
                   "list such as 10,10,12)", arg, n + 1);
      return 0;
    }
    if (n == cap) {
      ss_cli_usage(cmd, "--pp-layers '%s': more than %d stages", arg, cap);
      return 0;
    }
    out[n++] = (int)v;
    if (*end == '\0') break;
    if (*end != ',') {
      ss_cli_usage(cmd, "--pp-layers '%s': expected ',' after entry %d", arg, n);
      return 0;
    }
    p = end + 1;
  }
  return n;
}

int ss_ranks_pp_opts(const char *cmd, int64_t pp, const char *layers_arg, int *layers,
                     ss_ranks_opts *o) {
  o->pp = (int)pp;
  o->pp_layers = NULL;
  if (!layers_arg) return SS_EXIT_OK;
  const int n = ss_ranks_parse_layers(cmd, layers_arg, layers, SS_CLI_MAX_STAGES);
  if (n == 0) return SS_EXIT_USAGE;
  if (pp > 0 && n != pp)
    return ss_cli_usage(cmd, "--pp-layers lists %d stages but --pp is %lld", n, (long long)pp);
  o->pp = n;
  o->pp_layers = layers;
  return SS_EXIT_OK;
}

int ss_ranks_start(const char *cmd, const ss_ranks_opts *o, ss_comm **out) {
  *out = NULL;
  const int launched = ss_comm_launch_size();
  const int pp = o->pp > 1 ? o->pp : 1;
  if (pp > SS_CLI_MAX_STAGES) return ss_cli_usage(cmd, "--pp %d exceeds %d", pp, SS_CLI_MAX_STAGES);
  const int tp = o->tp > 0 ? o->tp : (launched > 0 ? launched / pp : 1);
  if (tp < 1 || (o->tp == 0 && launched > 0 && launched % pp != 0))
    return ss_cli_usage(cmd, "--pp %d does not divide the %d ranks of this MPI job", pp, launched);
  const int n = pp * tp;
  g_pp = pp;
  g_have_layers = o->pp_layers != NULL;
  if (o->pp_layers) memcpy(g_pp_layers, o->pp_layers, (size_t)pp * sizeof *g_pp_layers);
  if (n == 1 && launched <= 1) return SS_EXIT_OK;
  if (launched != n) {
    if (launched <= 1)
      return ss_cli_usage(cmd, "%s%d needs %d ranks but this is a single process: start it "
                          "with 'shardserve launch --tp %d -- %s ...' (or mpirun -np %d)",
                          pp > 1 ? "--pp x --tp = " : "--tp ", n, n, n, cmd, n);
    if (pp > 1)
      return ss_cli_usage(cmd, "--pp %d x --tp %d = %d ranks does not match the %d ranks of this "
                          "MPI job", pp, tp, n, launched);
    return ss_cli_usage(cmd, "--tp %d does not match the %d ranks of this MPI job", tp, launched);
  }
  if (!ss_comm_available(SS_COMM_MPI))
    return ss_cli_fail(cmd, "this build has no MPI support, so it runs on one rank only "
                       "(install Open MPI and rebuild: scripts/setup.sh, scripts/build.sh)");
  /* GPU ranks exchange device memory: nccl (host messages still go over MPI). */
  if (o->gpu && !ss_comm_available(SS_COMM_NCCL))
    return ss_cli_fail(cmd, "--device cuda with %d ranks needs the nccl comm backend, which this "
                       "build lacks (NCCL or MPI not found at configure time)", tp);
  ss_comm_opts co = {.kind = o->gpu ? SS_COMM_NCCL : SS_COMM_MPI,
                     .deterministic = o->deterministic, .timeout_s = o->timeout_s,
                     .liveness_s = o->liveness_s > 0 ? o->liveness_s : -1};
  if (ss_comm_init(&co, out)) return ss_cli_fail(cmd, "%s", ss_error_msg());
  ss_cli_rank = (*out)->rank;
  ss_comm_install_signal_handlers(*out);
  /* Stage s holds world ranks s*tp .. s*tp + tp - 1. */
  if (pp > 1 && ss_comm_split(*out, (*out)->rank / tp, (*out)->rank % tp, &g_stage)) {
    int rc = ss_cli_fail(cmd, "%s", ss_error_msg());
    ss_comm_free(*out);
    *out = NULL;
    return rc;
  }
  return SS_EXIT_OK;
}

int ss_ranks_agree(const char *cmd, ss_comm *c, bool ok) {
  if (!c) return ok ? SS_EXIT_OK : SS_EXIT_FAIL;
  float failed = ok ? 0.0f : 1.0f;
  if (ss_comm_allreduce_sum(c, &failed, 1, SS_DTYPE_F32))
    return ss_cli_fail(cmd, "%s", ss_error_msg());
  if (failed > 0.0f) {
    if (ok) ss_cli_fail(cmd, "%.0f other rank(s) failed to start (see their messages)", failed);
    return SS_EXIT_FAIL;
  }
  return SS_EXIT_OK;
}

/* Resident memory from /proc/self/status, bytes: total, file-backed, anonymous. */
static void rss(double out[3]) {
  out[0] = out[1] = out[2] = 0;
  FILE *f = fopen("/proc/self/status", "r");
  if (!f) return;
  char line[256];
  while (fgets(line, sizeof line, f)) {
    double kb;
    if (sscanf(line, "VmRSS: %lf kB", &kb) == 1) out[0] = kb * 1024;
    else if (sscanf(line, "RssFile: %lf kB", &kb) == 1) out[1] = kb * 1024;
    else if (sscanf(line, "RssAnon: %lf kB", &kb) == 1) out[2] = kb * 1024;
  }
  fclose(f);
}

enum { PROF_FIELDS = 10 };

int ss_ranks_profile(const char *cmd, ss_comm *c, const ss_model *m, double wall_s) {
  const ss_step_profile p = ss_model_profile(m);
  double mine[PROF_FIELDS] = {(double)p.steps, p.compute_s, p.comm_s, p.idle_s,
                              (double)m->weight_nbytes};
  rss(mine + 5);
  mine[8] = (double)p.weight_nbytes_read;
  mine[9] = (double)p.expert_nbytes_read;
  /* Rank 0's idle time: the time outside forward passes (sampling, detokenizing). */
  if (!c || c->rank == 0) mine[3] = wall_s - p.compute_s - p.comm_s;
  const int n = c ? c->size : 1;
  double *all = malloc((size_t)n * sizeof mine);
  size_t *nbytes = malloc((size_t)n * sizeof *nbytes);
  if (!all || !nbytes) {
    free(all);
    free(nbytes);
    return ss_cli_fail(cmd, "out of memory");
  }
  for (int r = 0; r < n; r++) nbytes[r] = sizeof mine;
  int rc = SS_OK;
  if (c) rc = ss_comm_gatherv(c, mine, all, nbytes, 0);
  else memcpy(all, mine, sizeof mine);
  free(nbytes);
  if (rc) {
    free(all);
    return ss_cli_fail(cmd, "gathering the profile: %s", ss_error_msg());
  }
  if (!c || c->rank == 0) {
    fprintf(stderr, "[profile] per rank, per forward step (ms) and memory (MiB):\n");
    fprintf(stderr, "[profile] rank  steps  compute     comm     idle   weights      RSS "
            "(file + anon)  weights read/step (of which experts)\n");
    for (int r = 0; r < n; r++) {
      const double *a = all + (size_t)r * PROF_FIELDS;
      const double s = a[0] > 0 ? a[0] : 1;
      fprintf(stderr, "[profile] %4d %6.0f %8.3f %8.3f %8.3f %9.2f %8.2f (%.2f + %.2f)  %.3f (%.3f)\n",
              r, a[0], 1e3 * a[1] / s, 1e3 * a[2] / s, 1e3 * a[3] / s, a[4] / (1 << 20),
              a[5] / (1 << 20), a[6] / (1 << 20), a[7] / (1 << 20), a[8] / s / (1 << 20),
              a[9] / s / (1 << 20));
    }
  }
  free(all);
  return SS_EXIT_OK;
}

/* ---- --trace --------------------------------------------------------- */

int ss_ranks_trace_check(const char *cmd, const char *path) {
  if (!*path) return ss_cli_usage(cmd, "--trace: the file name is empty");
  struct stat sb;
  if (stat(path, &sb) == 0) {
    if (S_ISDIR(sb.st_mode))
      return ss_cli_usage(cmd, "--trace %s: is a directory (give a file name)", path);
    if (access(path, W_OK) != 0)
      return ss_cli_usage(cmd, "--trace %s: cannot be written: %s", path, strerror(errno));
    return SS_EXIT_OK;
  }
  if (errno != ENOENT) return ss_cli_usage(cmd, "--trace %s: %s", path, strerror(errno));
  /* A new file: its directory must exist and take it. */
  char dir[4096];
  const char *slash = strrchr(path, '/');
  if (!slash) snprintf(dir, sizeof dir, ".");
  else if (slash == path) snprintf(dir, sizeof dir, "/");
  else if ((size_t)(slash - path) >= sizeof dir)
    return ss_cli_usage(cmd, "--trace: the path is longer than %zu bytes", sizeof dir - 1);
  else snprintf(dir, sizeof dir, "%.*s", (int)(slash - path), path);
  if (stat(dir, &sb) != 0 || !S_ISDIR(sb.st_mode))
    return ss_cli_usage(cmd, "--trace %s: the directory %s does not exist", path, dir);
  if (access(dir, W_OK | X_OK) != 0)
    return ss_cli_usage(cmd, "--trace %s: cannot create a file in %s: %s", path, dir,
                        strerror(errno));
  return SS_EXIT_OK;
}

int ss_ranks_trace_start(const char *cmd, ss_comm *c, const char *thread_name) {
  const int rank = c ? c->rank : 0;
  if (ss_trace_start(rank, 0)) return ss_cli_fail(cmd, "%s", ss_error_msg());
  if (c) {
    const int tp = c->size / g_pp;
    char name[64];
    if (g_pp > 1)
      snprintf(name, sizeof name, "rank %d (stage %d, tp rank %d)", rank, rank / tp, rank % tp);
    else
      snprintf(name, sizeof name, "rank %d (tp rank %d of %d)", rank, rank, tp);
    ss_trace_process_name(name);
  }
  if (thread_name) ss_trace_thread_name(thread_name);
  return SS_EXIT_OK;
}

static int write_trace(const char *cmd, const char *path, const char *const *parts,
                       const size_t *nbytes, int n, uint64_t dropped) {
  FILE *f = fopen(path, "w");
  if (!f) return ss_cli_fail(cmd, "--trace %s: %s", path, strerror(errno));
  int rc = ss_trace_write_file(f, path, parts, nbytes, n, dropped);
  if (fclose(f) != 0 && rc == SS_OK) rc = ss_error(SS_ERR_IO, "--trace %s: write failed", path);
  if (rc) return ss_cli_fail(cmd, "%s", ss_error_msg());
  if (dropped)
    fprintf(stderr, "shardserve %s: warning: --trace %s: the span buffer (%d per rank) filled up; "
            "%llu later spans were dropped\n", cmd, path, SS_TRACE_MAX_EVENTS,
            (unsigned long long)dropped);
  return SS_EXIT_OK;
}

/* This rank's spans alone, to PATH.rankN (the gather failed). */
static int write_own(const char *cmd, const char *path, int rank, const char *text, size_t nbytes) {
  char own[4200];
  snprintf(own, sizeof own, "%s.rank%d", path, rank);
  const char *parts[1] = {text};
  int rc = write_trace(cmd, own, parts, &nbytes, 1, ss_trace_dropped());
  if (rc == SS_EXIT_OK) fprintf(stderr, "shardserve %s: rank %d: wrote its spans to %s\n", cmd, rank, own);
  return rc;
}

int ss_ranks_trace_write(const char *cmd, ss_comm *c, const char *path) {
  char *text = NULL;
  size_t nbytes = 0;
  /* Serializing stops the recording: the gathers below are not a step's. */
  if (ss_trace_serialize(&text, &nbytes)) {
    ss_cli_fail(cmd, "%s", ss_error_msg());
    nbytes = 0; /* still join the gathers, with nothing */
  }
  int rc = SS_EXIT_OK;
  if (!c) {
    const char *parts[1] = {text};
    rc = write_trace(cmd, path, parts, &nbytes, 1, ss_trace_dropped());
    free(text);
    ss_trace_stop();
    return rc;
  }
  /* Every rank learns every rank's length and dropped count (gatherv needs
   * the same layout everywhere), then rank 0 gathers the texts. */
  const int n = c->size;
  uint64_t mine[2] = {nbytes, ss_trace_dropped()};
  uint64_t *lens = malloc((size_t)n * sizeof mine);
  size_t *counts = malloc((size_t)n * sizeof *counts);
  const char **parts = malloc((size_t)n * sizeof *parts);
  char *all = NULL;
  bool gathered = false;
  if (!lens || !counts || !parts) {
    rc = ss_cli_fail(cmd, "--trace: out of memory");
    goto done;
  }
  for (int r = 0; r < n; r++) counts[r] = sizeof mine;
  if (ss_comm_allgatherv(c, mine, lens, counts)) goto done;
  uint64_t total = 0, dropped = 0;
  for (int r = 0; r < n; r++) {
    counts[r] = (size_t)lens[2 * r];
    total += lens[2 * r];
    dropped += lens[2 * r + 1];
  }
  if (c->rank == 0 && !(all = malloc(total ? (size_t)total : 1))) {
    /* The others would wait in the gather: end the job instead. */
    rc = ss_cli_fail(cmd, "--trace: out of memory for %llu bytes of spans",
                     (unsigned long long)total);
    goto done;
  }
  if (ss_comm_gatherv(c, text, all, counts, 0)) goto done;
  gathered = true;
  if (c->rank == 0) {
    size_t off = 0;
    for (int r = 0; r < n; r++) {
      parts[r] = all + off;
      off += counts[r];
    }
    rc = write_trace(cmd, path, parts, counts, n, dropped);
  }
done:
  if (!gathered && rc == SS_EXIT_OK) {
    ss_cli_fail(cmd, "--trace: gathering the spans on rank 0: %s", ss_error_msg());
    rc = write_own(cmd, path, c->rank, text, nbytes);
    if (rc == SS_EXIT_OK) rc = SS_EXIT_FAIL;
  }
  free(all);
  free(parts);
  free(lens);
  free(counts);
  free(text);
  ss_trace_stop();
  return rc;
}

void ss_ranks_end(ss_comm *c, int exit_code) {
  if (!c) return;
  if (g_stage && exit_code == SS_EXIT_OK) ss_comm_free(g_stage);
  g_stage = NULL;
  /* A failed rank cannot finalise MPI (the others may be waiting in a
   * collective): end the whole job instead. */
  if (exit_code != SS_EXIT_OK) ss_comm_abort(c, exit_code);
  ss_comm_free(c);
}
