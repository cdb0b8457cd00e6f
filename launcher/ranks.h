/* Running a CLI command over several MPI ranks (see ranks.c). */
#ifndef SS_LAUNCHER_RANKS_H
#define SS_LAUNCHER_RANKS_H

#include <stdbool.h>

struct ss_comm;
struct ss_model;

typedef struct ss_ranks_opts {
  int tp;              /* 0: the number of ranks the job was launched with */
  bool deterministic;  /* fixed-order all-reduce */
  double timeout_s;    /* collective timeout, <= 0: none */
  bool gpu;            /* ranks compute on GPUs: the nccl backend (device buffers) */
} ss_ranks_opts;

/* Starts the communicator when the job has more than one rank or tp > 1 (then
 * the two must agree); *out stays NULL for a single process.  Returns an exit
 * status (0 to go on), having printed the error. */
int ss_ranks_start(const char *cmd, const ss_ranks_opts *o, struct ss_comm **out);
/* Every rank says whether it is ready; fails on all ranks if any is not. */
int ss_ranks_agree(const char *cmd, struct ss_comm *c, bool ok);
/* Gathers each rank's step counters and memory on rank 0 and prints them. */
int ss_ranks_profile(const char *cmd, struct ss_comm *c, const struct ss_model *m, double wall_s);
/* Ends the job: finalises on success, aborts every rank on failure. */
void ss_ranks_end(struct ss_comm *c, int exit_code);

#endif
