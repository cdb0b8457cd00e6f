/* The communicator front: backend choice, launch detection, abort, stats, and
 * the validation and messages every backend shares. */
#include "comm/comm.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "comm/comm_internal.h"
#include "runtime/base/status.h"

bool ss_comm_available(ss_comm_kind kind) {
  switch (kind) {
  case SS_COMM_SELF: return true;
#ifdef SS_HAVE_MPI
  case SS_COMM_MPI: return true;
#endif
#ifdef SS_HAVE_NCCL
  case SS_COMM_NCCL: return true;
#endif
  default: return false;
  }
}

static const char *kind_name(ss_comm_kind kind) {
  switch (kind) {
  case SS_COMM_SELF: return "self";
  case SS_COMM_MPI: return "mpi";
  case SS_COMM_NCCL: return "nccl";
  }
  return "unknown";
}

int ss_comm_init(const ss_comm_opts *opts, ss_comm **out) {
  if (!opts || !out) return ss_error(SS_ERR_INVALID, "ss_comm_init: opts and out are required");
  *out = NULL;
  if (!ss_comm_available(opts->kind)) {
    if (opts->kind == SS_COMM_MPI || opts->kind == SS_COMM_NCCL)
      return ss_error(SS_ERR_UNSUPPORTED,
                      "comm backend '%s' was not built into this binary (%s not found at "
                      "configure time); available: self%s%s",
                      kind_name(opts->kind),
                      opts->kind == SS_COMM_MPI ? "MPI" : "CUDA/NCCL/MPI",
                      ss_comm_available(SS_COMM_MPI) ? ", mpi" : "",
                      ss_comm_available(SS_COMM_NCCL) ? ", nccl" : "");
    return ss_error(SS_ERR_INVALID, "unknown comm backend %d", (int)opts->kind);
  }
  switch (opts->kind) {
  case SS_COMM_SELF: return ss_comm_self_create(opts, out);
#ifdef SS_HAVE_MPI
  case SS_COMM_MPI: return ss_comm_mpi_create(opts, out);
#endif
#ifdef SS_HAVE_NCCL
  case SS_COMM_NCCL: return ss_comm_nccl_create(opts, out);
#endif
  default: break;
  }
  return ss_error(SS_ERR_INTERNAL, "ss_comm_init: backend %d has no constructor", (int)opts->kind);
}

int ss_comm_allreduce_sum_stream(ss_comm *c, void *buf, size_t count, ss_dtype type,
                                 void *stream) {
  if (!c->ops->allreduce_sum_stream)
    return ss_error(SS_ERR_UNSUPPORTED, "comm backend '%s' cannot reduce device memory: GPU "
                    "ranks need the nccl backend", c->backend);
  return c->ops->allreduce_sum_stream(c, buf, count, type, stream);
}

int ss_comm_split(ss_comm *c, int color, int key, ss_comm **out) {
  *out = NULL;
  if (!c->ops->split)
    return ss_error(SS_ERR_UNSUPPORTED, "comm backend '%s' cannot split its ranks into groups "
                    "(pipeline stages need the mpi backend)", c->backend);
  return c->ops->split(c, color, key, out);
}

int ss_comm_wait_stream(ss_comm *c, void *stream) {
  if (!c->ops->wait_stream)
    return ss_error(SS_ERR_UNSUPPORTED, "comm backend '%s' has no device streams", c->backend);
  return c->ops->wait_stream(c, stream);
}

void ss_comm_free(ss_comm *c) {
  if (c && c->ops && c->ops->free) c->ops->free(c);
}

/* Reads a positive integer from the environment, or 0. */
static int env_int(const char *name) {
  const char *s = getenv(name);
  if (!s || !*s) return 0;
  char *end;
  long v = strtol(s, &end, 10);
  return (*end == '\0' && v > 0 && v < (1L << 30)) ? (int)v : 0;
}

int ss_comm_launch_size(void) {
  /* Open MPI (mpirun, prterun) and, through its PMIx shim, any launcher that
   * starts Open MPI programs. */
  int n = env_int("OMPI_COMM_WORLD_SIZE");
  /* MPICH / Intel MPI (Hydra), and PMI-1/PMI-2 launchers. */
  if (!n) n = env_int("PMI_SIZE");
  /* PMIx itself exports no job size, only PMIX_RANK; the launchers that use it
   * also export one of the variables above or below.  A PMIx launch without
   * them is reported as size 1 here and learns its size in ss_comm_init. */
  /* Slurm's srun: the step's task count.  SLURM_NTASKS alone is not enough (it
   * is also set inside an sbatch script that was not started by srun). */
  if (!n && getenv("SLURM_STEP_ID") && getenv("SLURM_PROCID")) n = env_int("SLURM_STEP_NUM_TASKS");
  return n > 0 ? n : 1;
}

void ss_comm_abort(ss_comm *c, int code) {
  if (!c) return;
#ifdef SS_HAVE_NCCL
  if (strcmp(c->backend, "nccl") == 0) ss_comm_nccl_abort(c, code);
#endif
#ifdef SS_HAVE_MPI
  if (strcmp(c->backend, "mpi") == 0) ss_comm_mpi_abort(c, code);
#endif
  /* self: nothing else to end; the caller decides what to do. */
}

void ss_comm_stats_reset(ss_comm *c) {
  if (!c) return;
  c->busy_s = 0;
  c->n_calls = 0;
}

/* ---- shared validation and messages ----------------------------------- */

int ss_comm_check_type(const ss_comm *c, ss_dtype type, size_t *elem_nbytes) {
  switch (type) {
  case SS_DTYPE_F32: *elem_nbytes = 4; return SS_OK;
  case SS_DTYPE_F16:
  case SS_DTYPE_BF16: *elem_nbytes = 2; return SS_OK;
  default:
    return ss_error(SS_ERR_INVALID,
                    "rank %d (host %s): allreduce: element type %s is not supported "
                    "(f32, f16, bf16)",
                    c->rank, c->host, ss_dtype_name(type));
  }
}

int ss_comm_check_rank(const ss_comm *c, const char *op, const char *what, int r) {
  if (r >= 0 && r < c->size) return SS_OK;
  return ss_error(SS_ERR_INVALID, "rank %d (host %s): %s: %s %d is out of range (0..%d)", c->rank,
                  c->host, op, what, r, c->size - 1);
}

void ss_comm_trace_op_(const ss_comm *c, const ss_comm_op *op, double t0) {
  size_t es = 0;
  if (strcmp(op->name, "allreduce") == 0 && ss_comm_check_type(c, op->type, &es) != SS_OK) es = 0;
  ss_trace_arg a[3] = {{"bytes", (int64_t)(es ? op->count * es : op->nbytes)}};
  int n = 1;
  if (op->peer >= 0) a[n++] = (ss_trace_arg){"peer", op->peer};
  else if (op->root >= 0) a[n++] = (ss_trace_arg){"root", op->root};
  a[n++] = (ss_trace_arg){"ranks", c->size};
  ss_trace_span(op->name, "comm", t0, ss_now_s(), a, n);
}

void ss_comm_op_describe(const ss_comm_op *op, char *buf, size_t len) {
  char tname[16];
  const char *tn = ss_dtype_name(op->type);
  size_t i = 0;
  for (; tn[i] && i + 1 < sizeof tname; i++) tname[i] = (char)tolower((unsigned char)tn[i]);
  tname[i] = '\0';
  if (strcmp(op->name, "allreduce") == 0)
    snprintf(buf, len, "allreduce of %zu %s elements", op->count, tname);
  else if (strcmp(op->name, "barrier") == 0 || strcmp(op->name, "init") == 0 ||
           strcmp(op->name, "flush") == 0)
    snprintf(buf, len, "%s", op->name);
  else if (op->peer >= 0)
    snprintf(buf, len, "%s of %zu bytes %s rank %d (tag %d)", op->name, op->nbytes,
             strcmp(op->name, "recv") == 0 ? "from" : "to", op->peer, op->tag);
  else if (op->root >= 0)
    snprintf(buf, len, "%s of %zu bytes %s root %d", op->name, op->nbytes,
             strcmp(op->name, "broadcast") == 0 ? "from" : "to", op->root);
  else
    snprintf(buf, len, "%s of %zu bytes", op->name, op->nbytes);
}
