/* Private pieces shared by the comm backends: constructors, the table of peer
 * processes used by the liveness checks, and operation descriptions for error
 * messages.  Not part of the public API (comm.h). */
#ifndef SS_COMM_INTERNAL_H
#define SS_COMM_INTERNAL_H

#include <sched.h>
#include <time.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "comm/comm.h"
#include "runtime/base/clock.h"
#include "runtime/base/trace.h"

/* ---- backends ---------------------------------------------------------- */

int ss_comm_self_create(const ss_comm_opts *opts, ss_comm **out);
#ifdef SS_HAVE_MPI
int ss_comm_mpi_create(const ss_comm_opts *opts, ss_comm **out);
void ss_comm_mpi_abort(ss_comm *c, int code);
#endif
#ifdef SS_HAVE_NCCL
int ss_comm_nccl_create(const ss_comm_opts *opts, ss_comm **out);
void ss_comm_nccl_abort(ss_comm *c, int code);
#endif

/* ---- peers and liveness ------------------------------------------------ */

#define SS_COMM_HOST_LEN 64

/* Every process of the job, gathered at init.  A backend whose peers can die
 * (mpi, nccl) puts this struct FIRST in its context, so that generic code
 * (the signal handler) can find it from an ss_comm without knowing the
 * backend; the self backend has ctx == NULL. */
typedef struct ss_comm_beat ss_comm_beat;

typedef struct ss_comm_peers {
  int n;                              /* ranks */
  pid_t *pid;                         /* (n) */
  char (*host)[SS_COMM_HOST_LEN];     /* (n) */
  int n_local;                        /* ranks we can watch with kill(pid, 0) */
  int *local;                         /* (n_local) their rank numbers */
  /* The heartbeat channel (comm_beat.c), or NULL where it is off or could not
   * be made; owned by the communicator made over the whole job, shared with
   * those split from it.  It numbers ranks as the job does: world[r] is rank
   * r's number there. */
  ss_comm_beat *beat;
  bool beat_owned;
  int *world;                         /* (n) */
} ss_comm_peers;

/* ---- the heartbeat channel (comm_beat.c) --------------------------------- */

/* How often a heartbeat goes out, and the default liveness timeout: a peer
 * silent for longer is lost.  The timeout is 8 intervals, so a thread that is
 * scheduled only every second or two on a loaded machine is still heard. */
#define SS_COMM_BEAT_S 0.5
#define SS_COMM_LIVENESS_S 4.0
#define SS_COMM_BEAT_MAX_ADDRS 16

/* Why a peer is lost (ss_comm_beat_first_lost); LEFT is no loss: it said
 * goodbye.  BY_RANK0 is or'ed in on a worker when rank 0 saw the loss. */
enum { SS_BEAT_CLOSED = 1, SS_BEAT_SILENT = 2, SS_BEAT_LEFT = 3, SS_BEAT_BY_RANK0 = 0x10 };

/* What rank 0 broadcasts at init (plain data: the same bytes on every rank). */
typedef struct ss_comm_beat_info {
  int32_t ok;                /* 0: rank 0 has no channel; nobody makes one */
  uint32_t port;             /* host order */
  uint64_t nonce;            /* a worker proves it belongs to this job */
  int32_t n_addrs;
  uint32_t addrs[SS_COMM_BEAT_MAX_ADDRS]; /* network order; loopback last */
} ss_comm_beat_info;

/* Rank 0: a listener and the thread that accepts the workers' hellos. */
int ss_comm_beat_serve(int n, double timeout_s, const char (*host)[SS_COMM_HOST_LEN],
                       ss_comm_beat_info *info, ss_comm_beat **out);
/* A worker: connects to rank 0 (each address in turn, short timeouts). */
int ss_comm_beat_join(const ss_comm_beat_info *info, int n, int rank, double timeout_s,
                      const char (*host)[SS_COMM_HOST_LEN], ss_comm_beat **out);
/* Rank 0: every worker's hello has arrived (after the workers reported). */
bool ss_comm_beat_all_joined(const ss_comm_beat *b);
/* Every rank, once all joined: start beating and watching. */
int ss_comm_beat_arm(ss_comm_beat *b);
/* Stops the thread, says goodbye, closes the sockets.  NULL is fine. */
void ss_comm_beat_free(ss_comm_beat *b);
/* The lowest lost rank of the job and *why (SS_BEAT_*), or -1: atomics only,
 * cheap enough for every periodic check. */
int ss_comm_beat_first_lost(const ss_comm_beat *b, int *why);
/* One relaxed atomic load: whether any rank is lost (NULL: false). */
bool ss_comm_beat_any_lost(const ss_comm_beat *b);
const char *ss_comm_beat_host(const ss_comm_beat *b, int r);
double ss_comm_beat_timeout(const ss_comm_beat *b);

/* Fills p->local from p->pid/p->host: the other ranks on this host whose pid
 * this process can see.  A same-named host whose pid is invisible to us (a
 * different pid namespace) is left out rather than reported dead later. */
int ss_comm_peers_find_local(ss_comm_peers *p, int my_rank, const char *my_host);
void ss_comm_peers_free(ss_comm_peers *p);
/* The first local peer that has exited (or is a zombie), or -1. */
int ss_comm_peers_first_dead(const ss_comm_peers *p);
/* Async-signal-safe: false once the process is gone or a zombie. */
bool ss_comm_pid_alive(pid_t pid);


/* What an operation is, for messages: built only when something fails, so the
 * fast path pays for filling a few fields and nothing else. */
typedef struct ss_comm_op {
  const char *name;  /* "allreduce", "barrier", ... */
  size_t count;      /* elements (allreduce) */
  ss_dtype type;
  size_t nbytes;     /* bytes (the others) */
  int peer;          /* send/recv peer, or -1 */
  int root;          /* gatherv/broadcast root, or -1 */
  int tag;
} ss_comm_op;

/* With --trace: a span for op from t0 to now on this thread's track, with its
 * bytes (the payload: count times the element size for allreduce), peer or
 * root, and the communicator's size. */
void ss_comm_trace_op_(const ss_comm *c, const ss_comm_op *op, double t0);
static inline void ss_comm_trace_op(const ss_comm *c, const ss_comm_op *op, double t0) {
  if (ss_trace_on()) ss_comm_trace_op_(c, op, t0);
}

/* "allreduce of 576 f32 elements", "broadcast of 12 bytes from root 0", ... */
void ss_comm_op_describe(const ss_comm_op *op, char *buf, size_t len);

/* The periodic check every waiting loop makes (~every 20 ms): a local peer
 * gone, or the deadline passed.  Returns 0, or records the error (naming this
 * rank, the op and the lost peer or the time) and returns SS_ERR_COMM. */
int ss_comm_check_wait(const ss_comm *c, const ss_comm_peers *p, const ss_comm_op *op,
                       double t_start);

/* How often the waiting loops run ss_comm_check_wait, seconds. */
#define SS_COMM_CHECK_S 0.020

/* Validation shared by the backends (records the message). */
int ss_comm_check_type(const ss_comm *c, ss_dtype type, size_t *elem_nbytes);
int ss_comm_check_rank(const ss_comm *c, const char *op, const char *what, int r);

/* How a backend waits for an operation between progress polls: spin briefly
 * (a transfer in flight advances only while we poll), then yield, then sleep
 * with a doubling interval capped at 0.2 ms, or 1 ms once the wait is past 1 s
 * (a worker idling between requests: each wake-up costs a progress pass). */
#define SS_COMM_SPIN_S 50e-6
#define SS_COMM_YIELD_S 0.1
#define SS_COMM_IDLE_S 1.0
#define SS_COMM_SLEEP_MAX_NS 200000L
#define SS_COMM_SLEEP_IDLE_NS 1000000L

/* One back-off step after `waited` seconds; *sleep_ns starts at 1000.  With
 * oversubscribed cores the spin is skipped: the rank we wait for may need this
 * very core. */
static inline void ss_comm_backoff(double waited, long *sleep_ns, bool oversubscribed) {
  if (waited < SS_COMM_SPIN_S && !oversubscribed) return;
  if (waited < SS_COMM_YIELD_S) {
    sched_yield();
    return;
  }
  struct timespec ts = {0, *sleep_ns};
  nanosleep(&ts, NULL);
  const long cap = waited < SS_COMM_IDLE_S ? SS_COMM_SLEEP_MAX_NS : SS_COMM_SLEEP_IDLE_NS;
  if (*sleep_ns < cap) *sleep_ns *= 2;
}

#endif
