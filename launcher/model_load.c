/* Loading a model from the CLI: a default path, a progress line on stderr for
 * large files, and the error message on failure. */
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "comm/comm.h"
#include "launcher/cli.h"
#include "launcher/ranks.h"
#include "runtime/base/status.h"
#include "runtime/model/model.h"

/* Files at least this large get a progress line while their pages come in. */
#define PROGRESS_MIN_NBYTES (256ull << 20)

typedef struct progress_state {
  int last_pct;
  bool tty;
} progress_state;

static void on_progress(void *user, uint64_t done, uint64_t total) {
  progress_state *ps = user;
  int pct = total ? (int)(100 * done / total) : 100;
  if (pct == ps->last_pct) return;
  if (ps->tty) {
    fprintf(stderr, "\rloading weights: %3d%% (%.2f / %.2f GiB)", pct, (double)done / (1 << 30),
            (double)total / (1 << 30));
    if (done == total) fputc('\n', stderr);
  } else if (pct / 25 != ps->last_pct / 25 || done == total) {
    fprintf(stderr, "loading weights: %d%%\n", pct);
  }
  ps->last_pct = pct;
}

int ss_cli_load_model(const char *cmd, const char *path, ss_model **out) {
  return ss_cli_load_shard(cmd, path, NULL, false, out);
}

int ss_cli_load_shard(const char *cmd, const char *path, ss_comm *comm, bool replicate_vocab,
                      ss_model **out) {
  return ss_cli_load_shard_ep(cmd, path, comm, replicate_vocab, false, out);
}

int ss_cli_load_shard_ep(const char *cmd, const char *path, ss_comm *comm, bool replicate_vocab,
                         bool expert_parallel, ss_model **out) {
  struct stat st;
  bool big = stat(path, &st) == 0 && (uint64_t)st.st_size >= PROGRESS_MIN_NBYTES &&
             (!comm || comm->rank == 0);
  progress_state ps = {.last_pct = -1, .tty = isatty(2)};
  ss_model_load_opts o = {.prefault = true, .progress = big ? on_progress : NULL,
                          .progress_user = &ps, .comm = comm, .replicate_vocab = replicate_vocab,
                          .expert_parallel = expert_parallel};
  /* Pipeline stages: the model's tensor parallelism is the stage's group. */
  ss_comm *stage = NULL;
  ss_ranks_pipeline(&stage, &o.pp, &o.pp_layers);
  if (stage) {
    o.world = comm;
    o.comm = stage;
  }
  int rc = ss_model_load(path, &o, out);
  if (rc) {
    if (rc == SS_ERR_IO && strcmp(path, SS_DEFAULT_MODEL) == 0)
      return ss_cli_fail(cmd, "%s (the default model is installed by scripts/setup.sh)",
                         ss_error_msg());
    return ss_cli_fail(cmd, "%s", ss_error_msg());
  }
  return SS_EXIT_OK;
}
