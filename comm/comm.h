/* The communicator: collectives between the ranks of one model replica.
 *
 * One interface (a vtable plus an opaque context), three backends:
 *   self  one rank; every collective is a no-op (or a copy where out != in);
 *   mpi   host buffers over Open MPI;
 *   nccl  device buffers over NCCL (built when CUDA and NCCL are found); host
 *         buffers (control messages: steps, agreement, profiles) go over its
 *         MPI bootstrap communicator, so callers need not tell the two apart.
 *
 * Counts are elements and nbytes are bytes, never one for the other.  Every
 * call returns 0 or a negative SS_ERR_* status with a message naming this rank,
 * the operation, its size and, where known, the peer at fault.  A peer that
 * dies does not hang us: the mpi backend waits on non-blocking operations with
 * a poll that checks the other ranks are still alive and that a deadline (if
 * set) has not passed, and returns SS_ERR_COMM naming the lost rank.  Ranks on
 * this host are watched by pid; ranks on other hosts by a heartbeat channel
 * of its own (comm_beat.c), which also notices a link that went down. */
#ifndef SS_COMM_H
#define SS_COMM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "runtime/base/dtype.h"

typedef struct ss_comm ss_comm;

typedef struct ss_comm_ops {
  /* In-place sum over all ranks of `count` elements of type (F32, F16, BF16).
   * With comm->deterministic the sum of each element is taken in rank order
   * 0, 1, ..., n-1 whatever the algorithm, so results are reproducible. */
  int (*allreduce_sum)(ss_comm *c, void *buf, size_t count, ss_dtype type);
  /* Every rank contributes nbytes[rank] bytes from send; recv receives all
   * contributions concatenated in rank order (sum of nbytes bytes).  nbytes has
   * one entry per rank and must be the same on every rank. */
  int (*allgatherv)(ss_comm *c, const void *send, void *recv, const size_t *nbytes);
  /* The same, but only `root` receives (recv may be NULL elsewhere). */
  int (*gatherv)(ss_comm *c, const void *send, void *recv, const size_t *nbytes, int root);
  /* root's nbytes bytes of buf to every rank. */
  int (*broadcast)(ss_comm *c, void *buf, size_t nbytes, int root);
  int (*barrier)(ss_comm *c);
  /* Point to point (pipeline parallelism).  Blocking, with the same liveness
   * checks as the collectives. */
  int (*send)(ss_comm *c, const void *buf, size_t nbytes, int peer, int tag);
  int (*recv)(ss_comm *c, void *buf, size_t nbytes, int peer, int tag);
  /* Optional (NULL: ss_comm_send_async sends and waits): starts sending a copy
   * of buf to peer and returns without waiting for the receiver, so that two
   * ranks sending to each other at once cannot block each other (pipeline
   * stages with several micro-batches in flight).  Messages to one peer with
   * one tag arrive in the order they were started, blocking ones included.
   * Each copy is freed once delivered; flush waits for every one still
   * pending, with the liveness checks of a blocking call. */
  int (*send_async)(ss_comm *c, const void *buf, size_t nbytes, int peer, int tag);
  int (*flush)(ss_comm *c);
  void (*free)(ss_comm *c);
  /* Optional (NULL: the backend cannot): collective over c, every rank passes
   * a color >= 0; the ranks of one color form a new communicator, ordered by
   * key (key < 0: by rank in c).  Pipeline parallelism splits the job into
   * one tensor-parallel group per stage.  The new one is freed before c. */
  int (*split)(ss_comm *c, int color, int key, ss_comm **out);
  /* Optional (nccl only; NULL elsewhere): the in-place sum of device memory
   * queued after the work already on `stream` (a cudaStream_t), with later work
   * on `stream` ordered after it by events, and no wait on the host: it may be
   * captured into a CUDA graph.  Errors that happen on the device surface at
   * the next wait_stream. */
  int (*allreduce_sum_stream)(ss_comm *c, void *buf, size_t count, ss_dtype type, void *stream);
  /* Optional (nccl): waits until everything queued on `stream` has finished,
   * with the liveness and deadline checks of a collective. */
  int (*wait_stream)(ss_comm *c, void *stream);
} ss_comm_ops;

struct ss_comm {
  const char *backend;   /* "self", "mpi", "nccl" */
  const ss_comm_ops *ops;
  void *ctx;
  int rank, size;        /* in this communicator */
  int local_rank;        /* among the ranks on this host: selects the GPU */
  int local_size;
  /* More ranks on this host than cores they may use: waits yield the core at
   * once instead of spinning first (set by the MPI backend). */
  bool oversubscribed;
  bool deterministic;    /* fixed summation order in allreduce_sum */
  double timeout_s;      /* a collective that waits longer fails (<= 0: no limit) */
  double liveness_s;     /* a peer silent this long on the heartbeat channel is lost
                            (0: no channel) */
  char host[64];         /* this rank's host name, for messages */
  /* Time spent inside collectives since the last ss_comm_stats_reset, seconds. */
  double busy_s;
  uint64_t n_calls;
};

typedef enum ss_comm_kind {
  SS_COMM_SELF = 0,
  SS_COMM_MPI,
  SS_COMM_NCCL,
} ss_comm_kind;

typedef struct ss_comm_opts {
  ss_comm_kind kind;
  bool deterministic;
  double timeout_s;      /* <= 0: wait forever (liveness checks still apply) */
  /* The heartbeat channel's timeout (mpi and nccl, more than one rank): a peer
   * on any host that is silent this long is lost.  0: the default (4 s);
   * < 0: no channel (only peers on this host are watched). */
  double liveness_s;
} ss_comm_opts;

/* True when the binary was built with that backend. */
bool ss_comm_available(ss_comm_kind kind);

/* Initialises MPI if needed (MPI_Init_thread, MPI_THREAD_SERIALIZED: the engine
 * thread, not main, makes the calls, one thread at a time) and creates
 * a communicator over MPI_COMM_WORLD.  For SS_COMM_SELF under an MPI launch of
 * more than one process this fails with a message.  Eager: a broken network
 * fails here, not mid-request.  Returns SS_OK and sets *out, or an error. */
int ss_comm_init(const ss_comm_opts *opts, ss_comm **out);
/* Frees the communicator; finalises MPI if ss_comm_init initialised it. */
void ss_comm_free(ss_comm *c);

/* The rank and size the process was launched with (from MPI's environment
 * variables, before any init): lets the CLI decide whether MPI is in use. */
int ss_comm_launch_size(void);

/* Ends every rank of the job after a fatal error on this one (MPI_Abort for
 * mpi); returns only for self. */
void ss_comm_abort(ss_comm *c, int code);

/* Convenience wrappers through the vtable. */
static inline int ss_comm_allreduce_sum(ss_comm *c, void *buf, size_t count, ss_dtype type) {
  return c->ops->allreduce_sum(c, buf, count, type);
}
static inline int ss_comm_broadcast(ss_comm *c, void *buf, size_t nbytes, int root) {
  return c->ops->broadcast(c, buf, nbytes, root);
}
static inline int ss_comm_barrier(ss_comm *c) { return c->ops->barrier(c); }
static inline int ss_comm_gatherv(ss_comm *c, const void *send, void *recv, const size_t *nbytes,
                                  int root) {
  return c->ops->gatherv(c, send, recv, nbytes, root);
}
static inline int ss_comm_allgatherv(ss_comm *c, const void *send, void *recv,
                                     const size_t *nbytes) {
  return c->ops->allgatherv(c, send, recv, nbytes);
}

static inline int ss_comm_send(ss_comm *c, const void *buf, size_t nbytes, int peer, int tag) {
  return c->ops->send(c, buf, nbytes, peer, tag);
}
static inline int ss_comm_recv(ss_comm *c, void *buf, size_t nbytes, int peer, int tag) {
  return c->ops->recv(c, buf, nbytes, peer, tag);
}

static inline int ss_comm_send_async(ss_comm *c, const void *buf, size_t nbytes, int peer,
                                     int tag) {
  return c->ops->send_async ? c->ops->send_async(c, buf, nbytes, peer, tag)
                            : c->ops->send(c, buf, nbytes, peer, tag);
}
static inline int ss_comm_flush(ss_comm *c) { return c->ops->flush ? c->ops->flush(c) : 0; }

/* See the split op: SS_ERR_UNSUPPORTED with a message where the backend has
 * none. */
int ss_comm_split(ss_comm *c, int color, int key, ss_comm **out);

/* Device-stream variants (see the ops): SS_ERR_UNSUPPORTED with a message when
 * the backend has none (mpi and self reduce host memory only). */
int ss_comm_allreduce_sum_stream(ss_comm *c, void *buf, size_t count, ss_dtype type, void *stream);
int ss_comm_wait_stream(ss_comm *c, void *stream);

void ss_comm_stats_reset(ss_comm *c);

/* Any thread, at any time between init and free, cheap enough for a timer
 * (atomics, and kill(pid, 0) per peer on this host): the lowest rank of the
 * job known to be lost (its process on this host is gone, or the heartbeat
 * channel saw its connection close without a goodbye or go silent past the
 * liveness timeout), or -1 (none, or the self backend).  A waiting operation
 * fails on the same facts within SS_COMM_CHECK_S; this lets a thread that is
 * not inside the communicator (an HTTP loop) act without the one that is.
 * why (may be NULL) gets a line for logs naming the rank, its host and how it
 * was lost; it names hosts and pids, so it is not meant for clients. */
int ss_comm_lost_rank(const ss_comm *c, char *why, size_t why_len);

/* Installs SIGTERM/SIGINT handlers that, when the launcher tears the job down
 * (typically because some rank died), write one line naming this rank and the
 * ranks on this host that are gone ("shardserve rank 0: terminated by the
 * launcher (SIGTERM); lost rank(s): 2 (pid 1234)") and _exit(1).  Optional: a
 * program with its own shutdown handling need not call it.  Returns 0 or an
 * error. */
int ss_comm_install_signal_handlers(ss_comm *c);

#endif
