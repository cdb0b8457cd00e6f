/* Running a CLI command over several MPI ranks (see ranks.c). */
#ifndef SS_LAUNCHER_RANKS_H
#define SS_LAUNCHER_RANKS_H

#include <stdbool.h>
#include <stdint.h>

struct ss_comm;

/* --comm-liveness's default and smallest non-zero value, seconds. */
#define SS_CLI_COMM_LIVENESS_S 4.0
#define SS_CLI_COMM_LIVENESS_MIN_S 1.0

/* The most pipeline stages a job may have. */
#define SS_CLI_MAX_STAGES 256
struct ss_model;

typedef struct ss_ranks_opts {
  int tp;              /* 0: the number of ranks the job was launched with */
  bool deterministic;  /* fixed-order all-reduce */
  double timeout_s;    /* collective timeout, <= 0: none */
  double liveness_s;   /* heartbeat channel's timeout, <= 0: no channel */
  bool gpu;            /* ranks compute on GPUs: the nccl backend (device buffers) */
  /* Pipeline parallelism: pp stages of tp ranks (0 or 1: one stage), with
   * pp_layers[pp] layers each (NULL: sizes differing by at most one). */
  int pp;
  const int *pp_layers;
} ss_ranks_opts;

/* Parses --pp-layers "10,10,10" into out[] (at most cap entries, each >= 1);
 * returns the count, or 0 having printed a usage error. */
int ss_ranks_parse_layers(const char *cmd, const char *arg, int *out, int cap);
/* --pp (0: not given) and --pp-layers (NULL: not given) into o->pp and
 * o->pp_layers (layers: SS_CLI_MAX_STAGES entries, kept by the caller): the
 * list gives the stage count when --pp is absent and must match it when not.
 * Returns an exit status (0 to go on), having printed the error. */
int ss_ranks_pp_opts(const char *cmd, int64_t pp, const char *layers_arg, int *layers,
                     ss_ranks_opts *o);

/* After ss_ranks_start with pp > 1: this rank's stage group (its tensor-
 * parallel ranks) and the pipeline's shape; *stage = NULL with one stage. */
void ss_ranks_pipeline(struct ss_comm **stage, int *pp, const int **pp_layers);

/* Starts the communicator when the job has more than one rank or tp > 1 (then
 * the two must agree, ranks = pp x tp); *out stays NULL for a single process.
 * *out spans the whole job; with pp > 1 each stage also gets a group of its
 * own (ss_ranks_pipeline), freed by ss_ranks_end.  Returns an exit
 * status (0 to go on), having printed the error. */
int ss_ranks_start(const char *cmd, const ss_ranks_opts *o, struct ss_comm **out);
/* Every rank says whether it is ready; fails on all ranks if any is not. */
int ss_ranks_agree(const char *cmd, struct ss_comm *c, bool ok);
/* Gathers each rank's step counters and memory on rank 0 and prints them. */
int ss_ranks_profile(const char *cmd, struct ss_comm *c, const struct ss_model *m, double wall_s);
/* --trace FILE, before ss_ranks_start (every rank, the same answer on one
 * host): fails with a usage error naming the path when FILE is a directory,
 * its directory does not exist, or it cannot be written; nothing is created
 * yet.  Returns an exit status (0 to go on), having printed the error. */
int ss_ranks_trace_check(const char *cmd, const char *path);
/* After ss_ranks_start: starts recording spans on this rank (pid = its rank in
 * the job, named with its stage and tensor-parallel rank) and names the
 * calling thread's track (NULL: a thread that records nothing; the one that
 * does names itself with ss_trace_thread_name).  Returns an exit status. */
int ss_ranks_trace_start(const char *cmd, struct ss_comm *c, const char *thread_name);
/* Every rank, once its steps are done (a collective when c is set): gathers
 * every rank's spans on rank 0, which writes the trace file.  When the gather
 * fails, each rank writes its own spans to PATH.rankN instead.  Stops
 * recording.  Returns an exit status. */
int ss_ranks_trace_write(const char *cmd, struct ss_comm *c, const char *path);

/* Ends the job: finalises on success, aborts every rank on failure. */
void ss_ranks_end(struct ss_comm *c, int exit_code);

#endif
