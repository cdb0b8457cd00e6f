/* The CLI side of running over several ranks: starting the communicator from
 * the flags, agreeing that every rank loaded its shard, the --profile report,
 * and ending the job.  Shared by the commands that run a model (generate,
 * serve). */
#include "launcher/ranks.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "comm/comm.h"
#include "launcher/cli.h"
#include "runtime/base/status.h"
#include "runtime/model/model.h"

int ss_ranks_start(const char *cmd, const ss_ranks_opts *o, ss_comm **out) {
  *out = NULL;
  const int launched = ss_comm_launch_size();
  const int tp = o->tp > 0 ? o->tp : (launched > 0 ? launched : 1);
  if (tp == 1 && launched <= 1) return SS_EXIT_OK;
  if (launched != tp) {
    if (launched <= 1)
      return ss_cli_usage(cmd, "--tp %d needs %d ranks but this is a single process: start it "
                          "with 'shardserve launch --tp %d -- %s ...' (or mpirun -np %d)", tp, tp,
                          tp, cmd, tp);
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
                     .deterministic = o->deterministic, .timeout_s = o->timeout_s};
  if (ss_comm_init(&co, out)) return ss_cli_fail(cmd, "%s", ss_error_msg());
  ss_cli_rank = (*out)->rank;
  ss_comm_install_signal_handlers(*out);
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

void ss_ranks_end(ss_comm *c, int exit_code) {
  if (!c) return;
  /* A failed rank cannot finalise MPI (the others may be waiting in a
   * collective): end the whole job instead. */
  if (exit_code != SS_EXIT_OK) ss_comm_abort(c, exit_code);
  ss_comm_free(c);
}
