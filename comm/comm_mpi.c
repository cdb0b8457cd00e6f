/* The MPI backend: host buffers over MPI, on a duplicate of MPI_COMM_WORLD.
 *
 * Every blocking operation is a non-blocking MPI call finished by ss_mpi_wait():
 * MPI_Test in a short spin (small messages keep the latency of a blocking
 * call), then sched_yield, then short sleeps (a worker that waits minutes for
 * the next step costs little CPU).  Every SS_COMM_CHECK_S it checks that the
 * ranks on this host are alive, that the heartbeat channel has lost no rank
 * on any host, and that timeout_s has not passed, so a lost peer becomes
 * SS_ERR_COMM naming it instead of a hang.
 *
 * The heartbeat channel (comm_beat.c) is made at init by the communicator over
 * the whole job when it has more than one rank and liveness_s >= 0: rank 0's
 * listener and addresses go out in a broadcast, every worker connects, and the
 * ranks agree (one all-reduce, one broadcast) that all of them did before any
 * starts watching.  Where any rank cannot, every rank goes on without it
 * (the rank that failed says why on stderr).  Communicators split from that
 * one share its channel; ss_comm_free of the owner closes it.  A lost rank
 * is looked for before every MPI poll, because Open MPI's TCP transport, once
 * it sees a peer's connection close inside MPI_Test, holds the calling thread
 * in its own "peer hung up" handling until the launcher ends the job; when
 * the close reaches MPI first there, that race is Open MPI's to win.
 *
 * After such a failure the operation is still pending inside MPI (collectives
 * cannot be cancelled), so the communicator is marked broken: later calls fail
 * at once, the caller's buffer may still be written, and ss_comm_free skips
 * MPI_Finalize (which would wait for the lost peer).  The process is expected
 * to report the error and exit, or call ss_comm_abort. */
#include <errno.h>
#include <limits.h>
#include <mpi.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "comm/comm_internal.h"
#include "comm/comm_mpi_internal.h"
#include "runtime/base/status.h"


/* Communicators alive in this process, and whether MPI was started by us: the
 * last ss_comm_free finalises it then (MPI cannot be initialised twice). */
static int g_live;
static bool g_we_init;
static bool g_any_broken;


/* Waiting: spin on MPI_Test this long, then yield, then sleep. */


/* ---- errors ------------------------------------------------------------ */

int ss_mpi_fail(ss_comm *c, int code, const ss_comm_op *op, const char *why) {
  char what[160];
  ss_comm_op_describe(op, what, sizeof what);
  ss_error(code, "rank %d (host %s): %s: %s", c->rank, c->host, what, why);
  return code;
}

/* Marks the communicator unusable, keeping the message for later calls. */
static int broken(ss_comm *c, int code) {
  mpi_ctx *x = c->ctx;
  x->broken = true;
  g_any_broken = true;
  snprintf(x->broken_msg, sizeof x->broken_msg, "%s", ss_error_msg());
  return code;
}

int ss_mpi_fail_mpi(ss_comm *c, int mpirc, const ss_comm_op *op) {
  char s[MPI_MAX_ERROR_STRING + 16] = "MPI error: ";
  int len = 0;
  MPI_Error_string(mpirc, s + 11, &len);
  ss_mpi_fail(c, SS_ERR_COMM, op, s);
  return broken(c, SS_ERR_COMM);
}

int ss_mpi_check_usable(ss_comm *c, const ss_comm_op *op) {
  mpi_ctx *x = c->ctx;
  /* A rank already known lost: fail before MPI talks to it (Open MPI treats
   * a broken TCP connection as fatal and may end this process on its own). */
  if (!x->broken && ss_comm_beat_any_lost(x->peers.beat)) {
    int rc = ss_comm_check_wait(c, &x->peers, op, ss_now_s());
    if (rc) return broken(c, rc);
  }
  if (!x->broken) return SS_OK;
  char why[sizeof x->broken_msg + 64];
  snprintf(why, sizeof why, "communicator unusable after an earlier failure (%s)", x->broken_msg);
  return ss_mpi_fail(c, SS_ERR_COMM, op, why);
}

/* ---- waiting ----------------------------------------------------------- */

/* One test of n requests (MPI_Test for one keeps its status for recv). */
static inline int test_reqs(int n, MPI_Request *reqs, MPI_Status *st, int *done) {
  return n == 1 ? MPI_Test(reqs, done, st ? st : MPI_STATUS_IGNORE)
                : MPI_Testall(n, reqs, done, MPI_STATUSES_IGNORE);
}

int ss_mpi_wait(ss_comm *c, int n, MPI_Request *reqs, MPI_Status *st, const ss_comm_op *op,
                double t0) {
  mpi_ctx *x = c->ctx;
  int done = 0, rc;
  if (n == 0) return SS_OK;
  /* A few tests before reading the clock: most small operations finish here. */
  for (int i = 0; i < 16; i++) {
    if ((rc = test_reqs(n, reqs, st, &done)) != MPI_SUCCESS) return ss_mpi_fail_mpi(c, rc, op);
    if (done) return SS_OK;
  }
  double start = ss_now_s(), next_check = start + SS_COMM_CHECK_S;
  long sleep_ns = 1000;
  for (;;) {
    /* The heartbeat's news is read before every poll of MPI, not only every
     * SS_COMM_CHECK_S: MPI's progress may hit the lost peer's connection
     * first, and Open MPI may abort the process on that. */
    bool lost = ss_comm_beat_any_lost(x->peers.beat);
    if (!lost && (rc = test_reqs(n, reqs, st, &done)) != MPI_SUCCESS)
      return ss_mpi_fail_mpi(c, rc, op);
    if (done) return SS_OK;
    double now = ss_now_s();
    if (lost || now >= next_check) {
      rc = ss_comm_check_wait(c, &x->peers, op, t0);
      if (rc) return broken(c, rc);
      next_check = now + SS_COMM_CHECK_S;
    }
    /* Keep calling into MPI while the wait is short: a transfer in flight only
     * advances when we do (Open MPI progresses non-blocking operations inside
     * MPI_Test), so sleeping here would slow large messages down. */
    ss_comm_backoff(now - start, &sleep_ns, c->oversubscribed);
  }
}

static int wait_req(ss_comm *c, MPI_Request *req, MPI_Status *st, const ss_comm_op *op,
                    double t0) {
  return ss_mpi_wait(c, 1, req, st, op, t0);
}

void ss_mpi_count_call(ss_comm *c, double t0, const ss_comm_op *op) {
  ss_comm_trace_op(c, op, t0);
  c->busy_s += ss_now_s() - t0;
  c->n_calls++;
}

int ss_mpi_grow(ss_comm *c, void **buf, size_t *have, size_t nbytes, const ss_comm_op *op) {
  if (nbytes <= *have) return SS_OK;
  void *p = realloc(*buf, nbytes);
  if (!p) return ss_mpi_fail(c, SS_ERR_NOMEM, op, "out of memory for a scratch buffer");
  *buf = p;
  *have = nbytes;
  return SS_OK;
}

/* ---- gathers ----------------------------------------------------------- */

/* Byte counts and displacements as MPI ints; fails if the total does not fit. */
static int v_layout(ss_comm *c, const size_t *nbytes, const ss_comm_op *op, size_t *total) {
  mpi_ctx *x = c->ctx;
  size_t sum = 0;
  for (int r = 0; r < c->size; r++) {
    x->displs[r] = (int)sum;
    x->counts[r] = (int)nbytes[r];
    sum += nbytes[r];
    if (sum > INT_MAX) {
      char why[128];
      snprintf(why, sizeof why, "more than %d bytes in all (MPI int counts); split the call",
               INT_MAX);
      return ss_mpi_fail(c, SS_ERR_RANGE, op, why);
    }
  }
  *total = sum;
  return SS_OK;
}

static int mpi_allgatherv(ss_comm *c, const void *send, void *recv, const size_t *nbytes) {
  double t0 = ss_now_s();
  mpi_ctx *x = c->ctx;
  ss_comm_op op = {.name = "allgatherv", .peer = -1, .root = -1};
  if (!nbytes) return ss_mpi_fail(c, SS_ERR_INVALID, &op, "nbytes is NULL");
  op.nbytes = nbytes[c->rank];
  size_t total;
  int rc = ss_mpi_check_usable(c, &op);
  if (rc || (rc = v_layout(c, nbytes, &op, &total))) return rc;
  op.nbytes = total;
  if ((total && !recv) || (nbytes[c->rank] && !send))
    return ss_mpi_fail(c, SS_ERR_INVALID, &op, "NULL buffer");
  /* MPI forbids overlapping send and receive buffers; the in-place form is the
   * one overlap that makes sense. */
  const void *s = send;
  if (recv && send == (const char *)recv + x->displs[c->rank]) s = MPI_IN_PLACE;
  MPI_Request req;
  rc = MPI_Iallgatherv(s, x->counts[c->rank], MPI_BYTE, recv, x->counts, x->displs, MPI_BYTE,
                       x->comm, &req);
  if (rc != MPI_SUCCESS) return ss_mpi_fail_mpi(c, rc, &op);
  rc = wait_req(c, &req, NULL, &op, t0);
  ss_mpi_count_call(c, t0, &op);
  return rc;
}

static int mpi_gatherv(ss_comm *c, const void *send, void *recv, const size_t *nbytes, int root) {
  double t0 = ss_now_s();
  mpi_ctx *x = c->ctx;
  ss_comm_op op = {.name = "gatherv", .peer = -1, .root = root};
  if (!nbytes) return ss_mpi_fail(c, SS_ERR_INVALID, &op, "nbytes is NULL");
  size_t total;
  int rc = ss_mpi_check_usable(c, &op);
  if (rc || (rc = ss_comm_check_rank(c, "gatherv", "root", root))) return rc;
  if ((rc = v_layout(c, nbytes, &op, &total))) return rc;
  op.nbytes = total;
  if ((c->rank == root && total && !recv) || (nbytes[c->rank] && !send))
    return ss_mpi_fail(c, SS_ERR_INVALID, &op, "NULL buffer");
  const void *s = send;
  if (c->rank == root && recv && send == (const char *)recv + x->displs[root]) s = MPI_IN_PLACE;
  MPI_Request req;
  rc = MPI_Igatherv(s, x->counts[c->rank], MPI_BYTE, recv, x->counts, x->displs, MPI_BYTE, root,
                    x->comm, &req);
  if (rc != MPI_SUCCESS) return ss_mpi_fail_mpi(c, rc, &op);
  rc = wait_req(c, &req, NULL, &op, t0);
  ss_mpi_count_call(c, t0, &op);
  return rc;
}

/* ---- broadcast, barrier, point to point ------------------------------- */

static int mpi_broadcast(ss_comm *c, void *buf, size_t nbytes, int root) {
  double t0 = ss_now_s();
  mpi_ctx *x = c->ctx;
  ss_comm_op op = {.name = "broadcast", .nbytes = nbytes, .peer = -1, .root = root};
  int rc = ss_mpi_check_usable(c, &op);
  if (rc || (rc = ss_comm_check_rank(c, "broadcast", "root", root))) return rc;
  if (nbytes && !buf) return ss_mpi_fail(c, SS_ERR_INVALID, &op, "NULL buffer");
  for (size_t done = 0; done < nbytes && rc == SS_OK; done += SS_MPI_PIECE_NBYTES) {
    size_t m = nbytes - done < SS_MPI_PIECE_NBYTES ? nbytes - done : SS_MPI_PIECE_NBYTES;
    MPI_Request req;
    int mrc = MPI_Ibcast((char *)buf + done, (int)m, MPI_BYTE, root, x->comm, &req);
    if (mrc != MPI_SUCCESS) return ss_mpi_fail_mpi(c, mrc, &op);
    rc = wait_req(c, &req, NULL, &op, t0);
  }
  ss_mpi_count_call(c, t0, &op);
  return rc;
}

static int mpi_barrier(ss_comm *c) {
  double t0 = ss_now_s();
  mpi_ctx *x = c->ctx;
  ss_comm_op op = {.name = "barrier", .peer = -1, .root = -1};
  int rc = ss_mpi_check_usable(c, &op);
  if (rc) return rc;
  MPI_Request req;
  int mrc = MPI_Ibarrier(x->comm, &req);
  if (mrc != MPI_SUCCESS) return ss_mpi_fail_mpi(c, mrc, &op);
  rc = wait_req(c, &req, NULL, &op, t0);
  ss_mpi_count_call(c, t0, &op);
  return rc;
}

static int p2p_check(ss_comm *c, const ss_comm_op *op, const void *buf, size_t nbytes, int peer,
                     int tag) {
  int rc = ss_mpi_check_usable(c, op);
  if (rc || (rc = ss_comm_check_rank(c, op->name, "peer", peer))) return rc;
  if (peer == c->rank)
    return ss_mpi_fail(c, SS_ERR_INVALID, op, "peer is this rank (a blocking self-send never completes)");
  int *ub, flag = 0;
  MPI_Comm_get_attr(((mpi_ctx *)c->ctx)->comm, MPI_TAG_UB, &ub, &flag);
  if (tag < 0 || (flag && tag > *ub)) {
    char why[96];
    snprintf(why, sizeof why, "tag out of range (0..%d)", flag ? *ub : 32767);
    return ss_mpi_fail(c, SS_ERR_INVALID, op, why);
  }
  if (nbytes && !buf) return ss_mpi_fail(c, SS_ERR_INVALID, op, "NULL buffer");
  return SS_OK;
}

static int mpi_send(ss_comm *c, const void *buf, size_t nbytes, int peer, int tag) {
  double t0 = ss_now_s();
  mpi_ctx *x = c->ctx;
  ss_comm_op op = {.name = "send", .nbytes = nbytes, .peer = peer, .root = -1, .tag = tag};
  int rc = p2p_check(c, &op, buf, nbytes, peer, tag);
  if (rc) return rc;
  /* Pieces of one message arrive in order (MPI does not overtake on one tag).
   * A zero-byte message is still sent: the receiver is waiting for it. */
  size_t done = 0;
  do {
    size_t m = nbytes - done < SS_MPI_PIECE_NBYTES ? nbytes - done : SS_MPI_PIECE_NBYTES;
    MPI_Request req;
    int mrc = MPI_Isend((const char *)buf + done, (int)m, MPI_BYTE, peer, tag, x->comm, &req);
    if (mrc != MPI_SUCCESS) return ss_mpi_fail_mpi(c, mrc, &op);
    rc = wait_req(c, &req, NULL, &op, t0);
    done += m;
  } while (rc == SS_OK && done < nbytes);
  ss_mpi_count_call(c, t0, &op);
  return rc;
}

static int mpi_recv(ss_comm *c, void *buf, size_t nbytes, int peer, int tag) {
  double t0 = ss_now_s();
  mpi_ctx *x = c->ctx;
  ss_comm_op op = {.name = "recv", .nbytes = nbytes, .peer = peer, .root = -1, .tag = tag};
  int rc = p2p_check(c, &op, buf, nbytes, peer, tag);
  if (rc) return rc;
  size_t done = 0;
  do {
    size_t m = nbytes - done < SS_MPI_PIECE_NBYTES ? nbytes - done : SS_MPI_PIECE_NBYTES;
    MPI_Request req;
    MPI_Status st;
    int mrc = MPI_Irecv((char *)buf + done, (int)m, MPI_BYTE, peer, tag, x->comm, &req);
    if (mrc != MPI_SUCCESS) return ss_mpi_fail_mpi(c, mrc, &op);
    if ((rc = wait_req(c, &req, &st, &op, t0))) break;
    int got = 0;
    MPI_Get_count(&st, MPI_BYTE, &got);
    if ((size_t)got != m) {
      char why[96];
      snprintf(why, sizeof why, "the message held %d bytes where %zu were expected", got, m);
      rc = ss_mpi_fail(c, SS_ERR_COMM, &op, why);
      break;
    }
    done += m;
  } while (done < nbytes);
  ss_mpi_count_call(c, t0, &op);
  return rc;
}

/* Frees the copies of the asynchronous sends that have been delivered. */
static int reap_pending(ss_comm *c, const ss_comm_op *op) {
  mpi_ctx *x = c->ctx;
  int kept = 0;
  for (int i = 0; i < x->n_pend; i++) {
    mpi_pending *p = &x->pend[i];
    int done = 0, mrc = MPI_Testall(p->n, p->reqs, &done, MPI_STATUSES_IGNORE);
    if (mrc != MPI_SUCCESS) return ss_mpi_fail_mpi(c, mrc, op);
    if (done) {
      free(p->copy);
      free(p->reqs);
    } else {
      x->pend[kept++] = *p;
    }
  }
  x->n_pend = kept;
  return SS_OK;
}

static int mpi_send_async(ss_comm *c, const void *buf, size_t nbytes, int peer, int tag) {
  double t0 = ss_now_s();
  mpi_ctx *x = c->ctx;
  ss_comm_op op = {.name = "send", .nbytes = nbytes, .peer = peer, .root = -1, .tag = tag};
  int rc = p2p_check(c, &op, buf, nbytes, peer, tag);
  if (rc || (rc = reap_pending(c, &op))) return rc;
  if (x->n_pend == x->cap_pend) {
    int cap = x->cap_pend ? 2 * x->cap_pend : 8;
    mpi_pending *p = realloc(x->pend, (size_t)cap * sizeof *p);
    if (!p) return ss_mpi_fail(c, SS_ERR_NOMEM, &op, "out of memory for a pending send");
    x->pend = p;
    x->cap_pend = cap;
  }
  const int n = nbytes == 0 ? 1 : (int)((nbytes + SS_MPI_PIECE_NBYTES - 1) / SS_MPI_PIECE_NBYTES);
  mpi_pending p = {.reqs = malloc((size_t)n * sizeof *p.reqs), .n = 0,
                   .copy = malloc(nbytes ? nbytes : 1)};
  if (!p.reqs || !p.copy) {
    free(p.reqs);
    free(p.copy);
    return ss_mpi_fail(c, SS_ERR_NOMEM, &op, "out of memory for the copy of a send");
  }
  if (nbytes) memcpy(p.copy, buf, nbytes);
  /* A zero-byte message is still sent: the receiver is waiting for it. */
  size_t done = 0;
  do {
    size_t m = nbytes - done < SS_MPI_PIECE_NBYTES ? nbytes - done : SS_MPI_PIECE_NBYTES;
    int mrc = MPI_Isend((const char *)p.copy + done, (int)m, MPI_BYTE, peer, tag, x->comm,
                        &p.reqs[p.n]);
    if (mrc != MPI_SUCCESS) {
      /* The pieces already started keep reading the copy: it is kept. */
      if (p.n > 0) x->pend[x->n_pend++] = p;
      else free(p.copy), free(p.reqs);
      return ss_mpi_fail_mpi(c, mrc, &op);
    }
    p.n++;
    done += m;
  } while (done < nbytes);
  x->pend[x->n_pend++] = p;
  ss_mpi_count_call(c, t0, &op);
  return SS_OK;
}

static int mpi_flush(ss_comm *c) {
  double t0 = ss_now_s();
  mpi_ctx *x = c->ctx;
  ss_comm_op op = {.name = "flush", .peer = -1, .root = -1};
  if (x->n_pend == 0) return SS_OK;
  int rc = ss_mpi_check_usable(c, &op);
  for (int i = 0; !rc && i < x->n_pend; i++)
    rc = ss_mpi_wait(c, x->pend[i].n, x->pend[i].reqs, NULL, &op, t0);
  if (!rc) rc = reap_pending(c, &op);
  ss_mpi_count_call(c, t0, &op);
  return rc;
}

/* ---- life cycle -------------------------------------------------------- */

static void mpi_free(ss_comm *c) {
  mpi_ctx *x = c->ctx;
  if (x) {
    /* Sends never delivered (the job is ending after a failure): MPI may
     * still read their copies, so those are left to the process's exit. */
    for (int i = 0; i < x->n_pend; i++) {
      for (int k = 0; !x->broken && k < x->pend[i].n; k++) MPI_Request_free(&x->pend[i].reqs[k]);
      free(x->pend[i].reqs);
    }
    free(x->pend);
    if (!x->broken && x->p2p != MPI_COMM_NULL) MPI_Comm_free(&x->p2p);
    if (!x->broken && x->comm != MPI_COMM_NULL) MPI_Comm_free(&x->comm);
    ss_comm_peers_free(&x->peers);
    free(x->scratch);
    free(x->tmp);
    free(x->reqs);
    free(x->counts);
    free(x->displs);
    free(x);
  }
  free(c);
  if (--g_live == 0 && g_we_init && !g_any_broken) {
    int fin = 0;
    MPI_Finalized(&fin);
    if (!fin) MPI_Finalize();
  }
}

/* MPI_Abort asks the launcher to end the job; when a host is unreachable the
 * launcher may not get through to it, so this ends the process itself if
 * MPI_Abort has not done so after a grace period. */
#define ABORT_GRACE_S 3

static void *abort_watchdog(void *arg) {
  struct timespec ts = {ABORT_GRACE_S, 0};
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {}
  _exit((int)(intptr_t)arg);
}

void ss_comm_mpi_abort(ss_comm *c, int code) {
  (void)c;
  fflush(stdout);
  fflush(stderr);
  pthread_t t;
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  if (pthread_create(&t, NULL, abort_watchdog, (void *)(intptr_t)(code ? code : 1)) == 0)
    pthread_detach(t);
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  MPI_Abort(MPI_COMM_WORLD, code);
}

static int mpi_make(const ss_comm_opts *opts, MPI_Comm parent, int color, int key,
                    ss_comm_beat *shared, ss_comm **out);

/* Collective over c: every rank passes its color; ranks of one color form a
 * new communicator ordered by key. */
static int mpi_split(ss_comm *c, int color, int key, ss_comm **out) {
  mpi_ctx *x = c->ctx;
  ss_comm_op op = {.name = "split", .peer = -1, .root = -1};
  int rc = ss_mpi_check_usable(c, &op);
  if (rc) return rc;
  if (color < 0)
    return ss_mpi_fail(c, SS_ERR_INVALID, &op, "negative color");
  ss_comm_opts o = {.kind = SS_COMM_MPI, .deterministic = c->deterministic,
                    .timeout_s = c->timeout_s, .liveness_s = c->liveness_s > 0 ? c->liveness_s : -1};
  return mpi_make(&o, x->comm, color, key, x->peers.beat, out);
}

static const ss_comm_ops k_mpi_ops = {
    .split = mpi_split,
    .allreduce_sum = ss_mpi_allreduce_sum,
    .allgatherv = mpi_allgatherv,
    .gatherv = mpi_gatherv,
    .broadcast = mpi_broadcast,
    .barrier = mpi_barrier,
    .send = mpi_send,
    .recv = mpi_recv,
    .send_async = mpi_send_async,
    .flush = mpi_flush,
    .free = mpi_free,
};

static int thread_level_ok(int provided) {
  /* The engine calls MPI from its own thread, one thread at a time. */
  if (provided >= MPI_THREAD_SERIALIZED) return SS_OK;
  return ss_error(SS_ERR_UNSUPPORTED,
                  "comm: MPI provides thread level %d, but shardserve needs "
                  "MPI_THREAD_SERIALIZED (%d): the engine calls MPI from a thread other "
                  "than main; use an MPI built with thread support",
                  provided, MPI_THREAD_SERIALIZED);
}

/* One rank's entry in the table gathered at init. */
typedef struct peer_rec {
  int64_t pid;
  int64_t world; /* rank in MPI_COMM_WORLD */
  char host[SS_COMM_HOST_LEN];
} peer_rec;

int ss_comm_mpi_create(const ss_comm_opts *opts, ss_comm **out) {
  int inited = 0, fin = 0, provided = 0, rc;
  MPI_Finalized(&fin);
  if (fin)
    return ss_error(SS_ERR_INVALID,
                    "comm: MPI was already finalised in this process (after the last "
                    "communicator was freed); keep one communicator alive instead");
  MPI_Initialized(&inited);
  if (!inited) {
    rc = MPI_Init_thread(NULL, NULL, MPI_THREAD_SERIALIZED, &provided);
    if (rc != MPI_SUCCESS) return ss_error(SS_ERR_COMM, "comm: MPI_Init_thread failed (%d)", rc);
    g_we_init = true;
  } else {
    MPI_Query_thread(&provided);
  }
  if ((rc = thread_level_ok(provided))) return rc;

  return mpi_make(opts, MPI_COMM_WORLD, 0, -1, NULL, out);
}

/* Finishes one of init's collectives (mrc: what starting it returned). */
static int init_wait(ss_comm *c, int mrc, MPI_Request *req, const ss_comm_op *op) {
  return mrc != MPI_SUCCESS ? ss_mpi_fail_mpi(c, mrc, op) : wait_req(c, req, NULL, op, ss_now_s());
}

/* The heartbeat channel over this (whole-job) communicator; see the top of the
 * file.  Returns an error only when MPI itself fails; a channel that cannot be
 * made is reported on stderr and left out. */
static int beat_setup(ss_comm *c, double liveness_s) {
  mpi_ctx *x = c->ctx;
  ss_comm_op op = {.name = "init", .peer = -1, .root = -1};
  ss_comm_beat_info info;
  ss_comm_beat *b = NULL;
  memset(&info, 0, sizeof info);
  if (c->rank == 0 && ss_comm_beat_serve(c->size, liveness_s, x->peers.host, &info, &b))
    fprintf(stderr, "shardserve rank 0 (host %s): %s; ranks on other hosts are watched only by "
            "the launcher and the comm timeout\n", c->host, ss_error_msg());
  MPI_Request req;
  int rc = init_wait(c, MPI_Ibcast(&info, (int)sizeof info, MPI_BYTE, 0, x->comm, &req), &req, &op);
  if (rc) {
    ss_comm_beat_free(b);
    return rc;
  }
  if (!info.ok) return SS_OK; /* rank 0 said why */
  int ok = 1, all = 0;
  if (c->rank != 0 && ss_comm_beat_join(&info, c->size, c->rank, liveness_s, x->peers.host, &b)) {
    fprintf(stderr, "shardserve rank %d (host %s): %s; no rank uses the heartbeat channel, so "
            "ranks on other hosts are watched only by the launcher and the comm timeout\n",
            c->rank, c->host, ss_error_msg());
    ok = 0;
  }
  rc = init_wait(c, MPI_Iallreduce(&ok, &all, 1, MPI_INT, MPI_MIN, x->comm, &req), &req, &op);
  int armed = rc == SS_OK && all == 1 && (c->rank != 0 || ss_comm_beat_all_joined(b));
  if (rc == SS_OK && all == 1 && !armed)
    fprintf(stderr, "shardserve rank 0 (host %s): heartbeat channel: not every rank's hello "
            "arrived; going on without it\n", c->host);
  if (rc == SS_OK)
    rc = init_wait(c, MPI_Ibcast(&armed, 1, MPI_INT, 0, x->comm, &req), &req, &op);
  if (rc || !armed) {
    ss_comm_beat_free(b);
    return rc;
  }
  if (ss_comm_beat_arm(b)) {
    /* Only a worker can fail here (its thread); rank 0 then sees it silent. */
    fprintf(stderr, "shardserve rank %d (host %s): %s\n", c->rank, c->host, ss_error_msg());
    ss_comm_beat_free(b);
    return SS_OK;
  }
  x->peers.beat = b;
  x->peers.beat_owned = true;
  return SS_OK;
}

/* A communicator over the ranks of `parent` that pass the same color, ordered
 * by key (key < 0: by the parent's rank).  shared: the parent's heartbeat
 * channel (a split); NULL over MPI_COMM_WORLD, which makes its own. */
static int mpi_make(const ss_comm_opts *opts, MPI_Comm parent, int color, int key,
                    ss_comm_beat *shared, ss_comm **out) {
  int rc;
  ss_comm *c = calloc(1, sizeof *c);
  mpi_ctx *x = calloc(1, sizeof *x);
  if (!c || !x) {
    free(c);
    free(x);
    return ss_error(SS_ERR_NOMEM, "comm: mpi communicator");
  }
  g_live++;
  c->backend = "mpi";
  c->ops = &k_mpi_ops;
  c->ctx = x;
  c->deterministic = opts->deterministic;
  c->timeout_s = opts->timeout_s;
  c->liveness_s = opts->liveness_s < 0 ? 0 : opts->liveness_s > 0 ? opts->liveness_s
                                                                   : SS_COMM_LIVENESS_S;
  x->comm = x->p2p = MPI_COMM_NULL;
  if (gethostname(c->host, sizeof c->host - 1) != 0) strcpy(c->host, "?");
  MPI_Comm_rank(parent, &c->rank);

  /* Our own communicator keeps our traffic apart from any MPI use of the
   * caller, and lets errors come back as codes instead of aborting the job. */
  if ((rc = MPI_Comm_split(parent, color, key < 0 ? c->rank : key, &x->comm)) != MPI_SUCCESS) {
    ss_error(SS_ERR_COMM, "rank %d (host %s): init: MPI_Comm_split failed (%d)", c->rank, c->host,
             rc);
    x->comm = MPI_COMM_NULL;
    mpi_free(c);
    return SS_ERR_COMM;
  }
  MPI_Comm_set_errhandler(x->comm, MPI_ERRORS_RETURN);
  /* The all-reduce algorithms' point-to-point messages get a communicator of
   * their own, so they can never match the caller's send/recv. */
  if ((rc = MPI_Comm_dup(x->comm, &x->p2p)) != MPI_SUCCESS) {
    ss_error(SS_ERR_COMM, "rank %d (host %s): init: MPI_Comm_dup failed (%d)", c->rank, c->host,
             rc);
    x->p2p = MPI_COMM_NULL;
    mpi_free(c);
    return SS_ERR_COMM;
  }
  MPI_Comm_rank(x->comm, &c->rank);
  MPI_Comm_size(x->comm, &c->size);
  MPI_Comm node;
  MPI_Comm_split_type(x->comm, MPI_COMM_TYPE_SHARED, c->rank, MPI_INFO_NULL, &node);
  MPI_Comm_rank(node, &c->local_rank);
  MPI_Comm_size(node, &c->local_size);
  MPI_Comm_free(&node);
  {
    cpu_set_t set;
    const int cpus = sched_getaffinity(0, sizeof set, &set) == 0 ? CPU_COUNT(&set) : 0;
    c->oversubscribed = cpus > 0 && c->local_size > cpus;
  }

  int n = c->size;
  x->counts = calloc((size_t)n, sizeof(int));
  x->displs = calloc((size_t)n, sizeof(int));
  x->reqs = calloc(2 * (size_t)n, sizeof(MPI_Request));
  x->peers.n = n;
  x->peers.pid = calloc((size_t)n, sizeof(pid_t));
  x->peers.host = calloc((size_t)n, SS_COMM_HOST_LEN);
  x->peers.world = calloc((size_t)n, sizeof(int));
  peer_rec *all = calloc((size_t)n, sizeof *all);
  if (!x->counts || !x->displs || !x->reqs || !x->peers.pid || !x->peers.host ||
      !x->peers.world || !all) {
    free(all);
    mpi_free(c);
    return ss_error(SS_ERR_NOMEM, "comm: tables for %d ranks", n);
  }

  /* Who is where: every rank's pid and host, for the liveness checks and for
   * messages.  Waited on like any other collective (timeout applies). */
  int world_rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &world_rank);
  peer_rec me = {.pid = getpid(), .world = world_rank};
  memcpy(me.host, c->host, sizeof me.host);
  ss_comm_op op = {.name = "init", .peer = -1, .root = -1};
  MPI_Request req;
  rc = MPI_Iallgather(&me, (int)sizeof me, MPI_BYTE, all, (int)sizeof me, MPI_BYTE, x->comm, &req);
  if (rc != MPI_SUCCESS) rc = ss_mpi_fail_mpi(c, rc, &op);
  else rc = wait_req(c, &req, NULL, &op, ss_now_s());
  if (rc) {
    free(all);
    mpi_free(c);
    return rc;
  }
  for (int r = 0; r < n; r++) {
    x->peers.pid[r] = (pid_t)all[r].pid;
    x->peers.world[r] = (int)all[r].world;
    memcpy(x->peers.host[r], all[r].host, SS_COMM_HOST_LEN);
    x->peers.host[r][SS_COMM_HOST_LEN - 1] = '\0';
  }
  free(all);
  if ((rc = ss_comm_peers_find_local(&x->peers, c->rank, c->host))) {
    mpi_free(c);
    return rc;
  }
  x->peers.beat = shared;
  if (!shared && n > 1 && c->liveness_s > 0 && (rc = beat_setup(c, c->liveness_s))) {
    mpi_free(c);
    return rc;
  }
  *out = c;
  return SS_OK;
}
