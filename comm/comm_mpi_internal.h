/* Private to the MPI backend (comm_mpi.c: life cycle, waiting, gathers,
 * broadcast, point to point; comm_mpi_allreduce.c: the all-reduce algorithms). */
#ifndef SS_COMM_MPI_INTERNAL_H
#define SS_COMM_MPI_INTERNAL_H

#include <mpi.h>

#include "comm/comm_internal.h"

/* A send started by send_async: its pieces' requests and the copy they read. */
typedef struct mpi_pending {
  MPI_Request *reqs;
  int n;
  void *copy;
} mpi_pending;

typedef struct mpi_ctx {
  ss_comm_peers peers; /* first: see comm_internal.h */
  MPI_Comm comm;       /* the MPI collectives and the caller's send/recv */
  MPI_Comm p2p;        /* the all-reduce algorithms' own messages */
  bool broken;
  char broken_msg[400];
  void *scratch; /* f32 working copy of f16/bf16; deterministic contributions */
  size_t scratch_nbytes;
  void *tmp; /* one incoming chunk of the all-reduce algorithms */
  size_t tmp_nbytes;
  int *counts, *displs; /* (size) each, for the v-collectives */
  MPI_Request *reqs;    /* (2*size) */
  mpi_pending *pend;    /* [n_pend] sends started by send_async, oldest first */
  int n_pend, cap_pend;
} mpi_ctx;

/* MPI counts are ints: larger messages go in pieces of at most this many bytes. */
#define SS_MPI_PIECE_NBYTES ((size_t)1 << 30)

/* Records "rank R (host H): <op>: <why>" and returns code. */
int ss_mpi_fail(ss_comm *c, int code, const ss_comm_op *op, const char *why);
/* The same for an MPI error code; marks the communicator broken. */
int ss_mpi_fail_mpi(ss_comm *c, int mpirc, const ss_comm_op *op);
/* Waits for n requests with the liveness and deadline checks (comm_mpi.c). */
int ss_mpi_wait(ss_comm *c, int n, MPI_Request *reqs, MPI_Status *st, const ss_comm_op *op,
                double t0);
/* Grows *buf (of *have bytes) to at least nbytes. */
int ss_mpi_grow(ss_comm *c, void **buf, size_t *have, size_t nbytes, const ss_comm_op *op);
void ss_mpi_count_call(ss_comm *c, double t0, const ss_comm_op *op);
int ss_mpi_check_usable(ss_comm *c, const ss_comm_op *op);

int ss_mpi_allreduce_sum(ss_comm *c, void *buf, size_t count, ss_dtype type);

#endif
