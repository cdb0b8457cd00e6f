/* The one-rank communicator: every collective is the identity (or a copy where
 * the output is a different buffer).  Used for tp = 1 without any launcher. */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "comm/comm_internal.h"
#include "runtime/base/status.h"

static void count_call(ss_comm *c, double t0) {
  c->busy_s += ss_now_s() - t0;
  c->n_calls++;
}

static int self_allreduce_sum(ss_comm *c, void *buf, size_t count, ss_dtype type) {
  double t0 = ss_now_s();
  size_t es;
  int rc = ss_comm_check_type(c, type, &es);
  if (rc) return rc;
  if (count && !buf)
    return ss_error(SS_ERR_INVALID, "rank 0 (host %s): allreduce of %zu elements: NULL buffer",
                    c->host, count);
  count_call(c, t0);
  return SS_OK;
}

static int self_allgatherv(ss_comm *c, const void *send, void *recv, const size_t *nbytes) {
  double t0 = ss_now_s();
  if (!nbytes) return ss_error(SS_ERR_INVALID, "rank 0 (host %s): allgatherv: no nbytes", c->host);
  if (nbytes[0] && (!send || !recv))
    return ss_error(SS_ERR_INVALID, "rank 0 (host %s): allgatherv of %zu bytes: NULL buffer",
                    c->host, nbytes[0]);
  if (nbytes[0] && send != recv) memmove(recv, send, nbytes[0]);
  count_call(c, t0);
  return SS_OK;
}

static int self_gatherv(ss_comm *c, const void *send, void *recv, const size_t *nbytes, int root) {
  int rc = ss_comm_check_rank(c, "gatherv", "root", root);
  if (rc) return rc;
  return self_allgatherv(c, send, recv, nbytes);
}

static int self_broadcast(ss_comm *c, void *buf, size_t nbytes, int root) {
  double t0 = ss_now_s();
  int rc = ss_comm_check_rank(c, "broadcast", "root", root);
  if (rc) return rc;
  count_call(c, t0);
  return SS_OK;
}

static int self_barrier(ss_comm *c) {
  c->n_calls++;
  return SS_OK;
}

/* A blocking send to oneself could only complete if the matching receive were
 * already posted, which one thread cannot do: refuse rather than hang. */
static int self_send(ss_comm *c, const void *buf, size_t nbytes, int peer, int tag) {
  return ss_error(SS_ERR_INVALID,
                  "rank 0 (host %s): send of %zu bytes to rank %d (tag %d): a 1-rank "
                  "communicator has no peer to send to",
                  c->host, nbytes, peer, tag);
}

static int self_recv(ss_comm *c, void *buf, size_t nbytes, int peer, int tag) {
  return ss_error(SS_ERR_INVALID,
                  "rank 0 (host %s): recv of %zu bytes from rank %d (tag %d): a 1-rank "
                  "communicator has no peer to receive from",
                  c->host, nbytes, peer, tag);
}

static void self_free(ss_comm *c) { free(c); }

/* One rank: the part is a copy of the whole. */
static int self_split(ss_comm *c, int color, int key, ss_comm **out) {
  (void)key;
  if (color < 0)
    return ss_error(SS_ERR_INVALID, "rank 0 (host %s): split: negative color %d", c->host, color);
  ss_comm *n = calloc(1, sizeof *n);
  if (!n) return ss_error(SS_ERR_NOMEM, "comm: self communicator");
  *n = *c;
  n->busy_s = 0;
  n->n_calls = 0;
  *out = n;
  return SS_OK;
}

static const ss_comm_ops k_self_ops = {
    .allreduce_sum = self_allreduce_sum,
    .allgatherv = self_allgatherv,
    .gatherv = self_gatherv,
    .broadcast = self_broadcast,
    .barrier = self_barrier,
    .send = self_send,
    .recv = self_recv,
    .free = self_free,
    .split = self_split,
};

int ss_comm_self_create(const ss_comm_opts *opts, ss_comm **out) {
  int launched = ss_comm_launch_size();
  if (launched > 1)
    return ss_error(SS_ERR_INVALID,
                    "comm backend 'self' is for one process, but this one was launched as "
                    "one of %d ranks; use the mpi (or nccl) backend",
                    launched);
  ss_comm *c = calloc(1, sizeof *c);
  if (!c) return ss_error(SS_ERR_NOMEM, "comm: self communicator");
  c->backend = "self";
  c->ops = &k_self_ops;
  c->rank = 0;
  c->size = 1;
  c->local_rank = 0;
  c->local_size = 1;
  c->deterministic = opts->deterministic;
  c->timeout_s = opts->timeout_s;
  if (gethostname(c->host, sizeof c->host - 1) != 0) strcpy(c->host, "?");
  *out = c;
  return SS_OK;
}
