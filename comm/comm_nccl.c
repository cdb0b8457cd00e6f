/* The NCCL backend: device buffers, one GPU per rank (GPU = local rank).
 *
 * MPI does the bootstrap: an inner mpi communicator gives rank, size, local
 * rank and the peer table, and carries the ncclUniqueId made on rank 0.  Every
 * operation is queued on this rank's stream and then waited on by polling
 * cudaStreamQuery and ncclCommGetAsyncError, with the same liveness and
 * deadline checks as the mpi backend; on a lost peer or a timeout the NCCL
 * communicator is aborted (ncclCommAbort, so that the GPU does not spin on a
 * kernel that can never finish) and the communicator is marked broken.
 *
 * Deterministic all-reduce: ncclAllGather of every rank's vector, then a
 * kernel sums each element in rank order 0..n-1 in f32 (comm_nccl_kernels.cu);
 * it moves n times the bytes of the vector, so it is for tensor-parallel
 * activations, not for gradients.  Send/recv ignore the tag: NCCL matches
 * messages between two ranks in the order they are posted.
 *
 * Host buffers go over the MPI bootstrap communicator instead: the model's
 * control plane (step messages, start-up agreement, profiles) lives in host
 * memory while its activations live on the GPU, and one communicator serves
 * both.  allreduce_sum_stream is the in-step path: it orders NCCL's stream
 * after the caller's with events and returns without waiting, so a decode step
 * (kernels and all-reduces) can be captured as one CUDA graph.
 *
 * Ordering of the blocking operations on device memory: their buffers are
 * written by kernels on the callers' streams, which run apart from this
 * communicator's.  Every stream handed to a stream op (allreduce_sum_stream,
 * wait_stream) is remembered, and a blocking operation first makes this
 * communicator's stream wait for the work queued so far on each of them and
 * on the legacy default stream (an event each), so it never reads a buffer
 * a kernel is still writing, whether or not the caller waited first. */
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cuda_runtime_api.h>
#include <nccl.h>

#include "comm/comm_internal.h"
#include "comm/comm_nccl_kernels.h"
#include "runtime/base/gpu_index.h"
#include "runtime/base/status.h"

typedef struct nccl_ctx {
  ss_comm_peers peers; /* first (comm_internal.h); a copy of boot's, owned by boot */
  ss_comm *boot;       /* mpi: bootstrap, peer table, abort */
  ncclComm_t nc;
  cudaStream_t stream;
  int device;
  bool broken;
  void *scratch; /* device: gathered contributions for the deterministic sum */
  size_t scratch_nbytes;
  float *one; /* device: the barrier's one-element all-reduce */
  cudaEvent_t ev_in, ev_out; /* caller's stream -> ours -> caller's (stream ops) */
  /* The streams device buffers are written on (the callers' compute streams,
   * as handed to the stream ops): blocking operations on device memory are
   * queued after the work on each of them, and on the legacy default stream. */
  cudaStream_t callers[8];
  int n_callers;
  /* Scratch outgrown while CUDA graphs may still point at it: freed at the end. */
  void *retired[32];
  int n_retired;
} nccl_ctx;


/* The one check macro for CUDA and NCCL calls: rank, host, file:line, op and
 * the library's own error string. */
#define CUDA_TRY(c, op, call)                                                                 \
  do {                                                                                        \
    cudaError_t e_ = (call);                                                                  \
    if (e_ != cudaSuccess)                                                                    \
      return fail_lib(c, op, __FILE__, __LINE__, #call, cudaGetErrorString(e_), NULL);         \
  } while (0)
#define NCCL_TRY(c, op, call)                                                                 \
  do {                                                                                        \
    ncclResult_t r_ = (call);                                                                 \
    if (r_ != ncclSuccess)                                                                    \
      return fail_lib(c, op, __FILE__, __LINE__, #call, ncclGetErrorString(r_),                \
                      ((nccl_ctx *)(c)->ctx)->nc ? ncclGetLastError(((nccl_ctx *)(c)->ctx)->nc)  \
                                                 : NULL);                                     \
  } while (0)

static int fail_lib(ss_comm *c, const ss_comm_op *op, const char *file, int line, const char *call,
                    const char *err, const char *detail) {
  char what[160];
  ss_comm_op_describe(op, what, sizeof what);
  nccl_ctx *x = c->ctx;
  if (x) x->broken = true;
  return ss_error(SS_ERR_COMM, "rank %d (host %s): %s: %s:%d: %s: %s%s%s", c->rank, c->host, what,
                  file, line, call, err, detail && *detail ? " — " : "", detail ? detail : "");
}

static int fail(ss_comm *c, int code, const ss_comm_op *op, const char *why) {
  char what[160];
  ss_comm_op_describe(op, what, sizeof what);
  return ss_error(code, "rank %d (host %s): %s: %s", c->rank, c->host, what, why);
}

static int check_usable(ss_comm *c, const ss_comm_op *op) {
  nccl_ctx *x = c->ctx;
  return x->broken ? fail(c, SS_ERR_COMM, op, "communicator unusable after an earlier failure")
                   : SS_OK;
}

/* Each thread that calls in (the serve engine runs on its own thread) must
 * have this rank's GPU current. */
static int use_device(ss_comm *c, const ss_comm_op *op) {
  static _Thread_local int t_device = -1;
  nccl_ctx *x = c->ctx;
  if (t_device == x->device) return SS_OK;
  CUDA_TRY(c, op, cudaSetDevice(x->device));
  t_device = x->device;
  return SS_OK;
}

/* True for memory the host can read directly (pageable or pinned): such
 * buffers travel over MPI. */
/* Remembers a caller's stream (once). */
static int note_caller(ss_comm *c, const ss_comm_op *op, cudaStream_t s) {
  nccl_ctx *x = c->ctx;
  if (!s || s == x->stream) return SS_OK;
  for (int i = 0; i < x->n_callers; i++)
    if (x->callers[i] == s) return SS_OK;
  if (x->n_callers == (int)(sizeof x->callers / sizeof *x->callers))
    return fail(c, SS_ERR_INTERNAL, op, "more than 8 caller streams");
  x->callers[x->n_callers++] = s;
  return SS_OK;
}

/* Queues this communicator's stream after the work on every caller's stream
 * (before a blocking operation on device memory).  A stream being captured
 * into a graph cannot be waited for: that is a caller's error. */
static int order_after_callers(ss_comm *c, const ss_comm_op *op) {
  nccl_ctx *x = c->ctx;
  for (int i = -1; i < x->n_callers; i++) {
    cudaStream_t s = i < 0 ? cudaStreamLegacy : x->callers[i];
    if (i >= 0) {
      enum cudaStreamCaptureStatus cs = cudaStreamCaptureStatusNone;
      cudaError_t e = cudaStreamIsCapturing(s, &cs);
      if (e != cudaSuccess)
        return fail_lib(c, op, __FILE__, __LINE__, "cudaStreamIsCapturing", cudaGetErrorString(e),
                        NULL);
      if (cs != cudaStreamCaptureStatusNone)
        return fail(c, SS_ERR_INTERNAL, op, "a blocking collective while a caller's stream is "
                    "being captured into a graph (use allreduce_sum_stream)");
    }
    CUDA_TRY(c, op, cudaEventRecord(x->ev_in, s));
    CUDA_TRY(c, op, cudaStreamWaitEvent(x->stream, x->ev_in, 0));
  }
  return SS_OK;
}

/* use_device, then the ordering after the callers' streams. */
static int use_device_ordered(ss_comm *c, const ss_comm_op *op) {
  int rc = use_device(c, op);
  return rc ? rc : order_after_callers(c, op);
}

static bool is_host_ptr(const void *p) {
  if (!p) return false;
  struct cudaPointerAttributes a;
  if (cudaPointerGetAttributes(&a, p) != cudaSuccess) {
    cudaGetLastError(); /* older runtimes report unregistered memory as an error */
    return true;
  }
  return a.type == cudaMemoryTypeUnregistered || a.type == cudaMemoryTypeHost;
}

static int nccl_wait_on(ss_comm *c, const ss_comm_op *op, double t0, cudaStream_t stream);

/* Waits for everything queued on the stream. */
static int nccl_wait(ss_comm *c, const ss_comm_op *op, double t0) {
  return nccl_wait_on(c, op, t0, ((nccl_ctx *)c->ctx)->stream);
}

static int nccl_wait_on(ss_comm *c, const ss_comm_op *op, double t0, cudaStream_t stream) {
  nccl_ctx *x = c->ctx;
  double start = ss_now_s(), next_check = start + SS_COMM_CHECK_S;
  long sleep_ns = 1000;
  for (;;) {
    cudaError_t e = cudaStreamQuery(stream);
    if (e == cudaSuccess) return SS_OK;
    if (e != cudaErrorNotReady)
      return fail_lib(c, op, __FILE__, __LINE__, "cudaStreamQuery", cudaGetErrorString(e), NULL);
    ncclResult_t async = ncclSuccess;
    ncclCommGetAsyncError(x->nc, &async);
    if (async != ncclSuccess && async != ncclInProgress) {
      int rc = fail_lib(c, op, __FILE__, __LINE__, "ncclCommGetAsyncError",
                        ncclGetErrorString(async), ncclGetLastError(x->nc));
      ncclCommAbort(x->nc);
      x->nc = NULL;
      return rc;
    }
    double now = ss_now_s();
    if (now >= next_check) {
      int rc = ss_comm_check_wait(c, &x->peers, op, t0);
      if (rc) {
        /* The kernel waiting for the lost peer would never finish. */
        ncclCommAbort(x->nc);
        x->nc = NULL;
        x->broken = true;
        return rc;
      }
      next_check = now + SS_COMM_CHECK_S;
    }
    ss_comm_backoff(now - start, &sleep_ns, false);
  }
}

static void count_call(ss_comm *c, double t0, const ss_comm_op *op) {
  if (op) ss_comm_trace_op(c, op, t0);
  c->busy_s += ss_now_s() - t0;
  c->n_calls++;
}

/* A host-memory operation run on the bootstrap communicator, counted here
 * (its span is recorded by the MPI backend). */
#define VIA_MPI(c, call)                                                                      \
  do {                                                                                        \
    double t0_ = ss_now_s();                                                                  \
    int rc_ = (call);                                                                         \
    count_call((c), t0_, NULL);                                                               \
    return rc_;                                                                               \
  } while (0)

static int nccl_type(ss_dtype t, ncclDataType_t *out) {
  switch (t) {
  case SS_DTYPE_F32: *out = ncclFloat32; return 1;
  case SS_DTYPE_F16: *out = ncclFloat16; return 1;
  case SS_DTYPE_BF16: *out = ncclBfloat16; return 1;
  default: return 0;
  }
}

/* ---- collectives ---------------------------------------------------------- */

/* Queues the sum of buf over the ranks on x->stream (no wait). */
static int enqueue_allreduce(ss_comm *c, const ss_comm_op *op, void *buf, size_t count,
                             ss_dtype type, size_t es) {
  nccl_ctx *x = c->ctx;
  ncclDataType_t dt = ncclFloat32;
  nccl_type(type, &dt);
  if (!c->deterministic) {
    NCCL_TRY(c, op, ncclAllReduce(buf, buf, count, dt, ncclSum, x->nc, x->stream));
  } else {
    size_t need = count * es * (size_t)c->size;
    if (need > x->scratch_nbytes) {
      /* A captured graph may still use the old buffer: keep it until the end
       * (never freed early).  The buffer at least doubles each time, so the
       * retired list fills only past 2^32 times the first size. */
      if (x->scratch) {
        if (x->n_retired == (int)(sizeof x->retired / sizeof *x->retired))
          return fail(c, SS_ERR_INTERNAL, op, "too many all-reduce scratch sizes retired");
        x->retired[x->n_retired++] = x->scratch;
      }
      if (need < 2 * x->scratch_nbytes) need = 2 * x->scratch_nbytes;
      x->scratch = NULL;
      x->scratch_nbytes = 0;
      CUDA_TRY(c, op, cudaMalloc(&x->scratch, need));
      x->scratch_nbytes = need;
    }
    NCCL_TRY(c, op, ncclAllGather(buf, x->scratch, count, dt, x->nc, x->stream));
    CUDA_TRY(c, op, (cudaError_t)ss_comm_nccl_ordered_sum(x->scratch, c->size, count, (int)type,
                                                           buf, x->stream));
  }
  return SS_OK;
}

static int nccl_allreduce_sum_stream(ss_comm *c, void *buf, size_t count, ss_dtype type,
                                     void *stream) {
  SS_TRACE_BEGIN(t0);
  nccl_ctx *x = c->ctx;
  ss_comm_op op = {.name = "allreduce", .count = count, .type = type, .peer = -1, .root = -1};
  size_t es;
  int rc = check_usable(c, &op);
  if (rc || (rc = ss_comm_check_type(c, type, &es)) || (rc = use_device(c, &op))) return rc;
  if (count == 0) return SS_OK;
  if (!buf) return fail(c, SS_ERR_INVALID, &op, "NULL buffer");
  cudaStream_t s = (cudaStream_t)stream;
  if ((rc = note_caller(c, &op, s))) return rc;
  CUDA_TRY(c, &op, cudaEventRecord(x->ev_in, s));
  CUDA_TRY(c, &op, cudaStreamWaitEvent(x->stream, x->ev_in, 0));
  if ((rc = enqueue_allreduce(c, &op, buf, count, type, es))) return rc;
  CUDA_TRY(c, &op, cudaEventRecord(x->ev_out, x->stream));
  CUDA_TRY(c, &op, cudaStreamWaitEvent(s, x->ev_out, 0));
  /* The span is the time to queue it: the device runs it later. */
  ss_comm_trace_op(c, &op, t0);
  c->n_calls++;
  return SS_OK;
}

static int nccl_wait_stream(ss_comm *c, void *stream) {
  double t0 = ss_now_s();
  ss_comm_op op = {.name = "device step", .peer = -1, .root = -1};
  int rc = check_usable(c, &op);
  if (rc || (rc = use_device(c, &op)) || (rc = note_caller(c, &op, (cudaStream_t)stream)))
    return rc;
  rc = nccl_wait_on(c, &op, t0, (cudaStream_t)stream);
  c->busy_s += ss_now_s() - t0;
  return rc;
}

static int nccl_allreduce_sum(ss_comm *c, void *buf, size_t count, ss_dtype type) {
  nccl_ctx *x = c->ctx;
  if (is_host_ptr(buf)) VIA_MPI(c, ss_comm_allreduce_sum(x->boot, buf, count, type));
  double t0 = ss_now_s();
  ss_comm_op op = {.name = "allreduce", .count = count, .type = type, .peer = -1, .root = -1};
  size_t es;
  int rc = check_usable(c, &op);
  if (rc || (rc = ss_comm_check_type(c, type, &es)) || (rc = use_device_ordered(c, &op)))
    return rc;
  if (count == 0) return SS_OK;
  if (!buf) return fail(c, SS_ERR_INVALID, &op, "NULL buffer");
  if ((rc = enqueue_allreduce(c, &op, buf, count, type, es))) return rc;
  rc = nccl_wait(c, &op, t0);
  count_call(c, t0, &op);
  return rc;
}

/* NCCL has no all-gather-v: one broadcast per rank, fused in a group. */
static int nccl_allgatherv(ss_comm *c, const void *send, void *recv, const size_t *nbytes) {
  nccl_ctx *x = c->ctx;
  if (is_host_ptr(recv)) VIA_MPI(c, ss_comm_allgatherv(x->boot, send, recv, nbytes));
  double t0 = ss_now_s();
  ss_comm_op op = {.name = "allgatherv", .peer = -1, .root = -1};
  if (!nbytes) return fail(c, SS_ERR_INVALID, &op, "nbytes is NULL");
  size_t total = 0;
  for (int r = 0; r < c->size; r++) total += nbytes[r];
  op.nbytes = total;
  int rc = check_usable(c, &op);
  if (rc || (rc = use_device_ordered(c, &op))) return rc;
  if ((total && !recv) || (nbytes[c->rank] && !send))
    return fail(c, SS_ERR_INVALID, &op, "NULL buffer");
  NCCL_TRY(c, &op, ncclGroupStart());
  size_t off = 0;
  for (int r = 0; r < c->size; off += nbytes[r], r++) {
    if (!nbytes[r]) continue;
    ncclResult_t nr = ncclBroadcast(r == c->rank ? send : NULL, (char *)recv + off, nbytes[r],
                                    ncclUint8, r, x->nc, x->stream);
    if (nr != ncclSuccess) {
      ncclGroupEnd();
      NCCL_TRY(c, &op, nr);
    }
  }
  NCCL_TRY(c, &op, ncclGroupEnd());
  rc = nccl_wait(c, &op, t0);
  count_call(c, t0, &op);
  return rc;
}

static int nccl_gatherv(ss_comm *c, const void *send, void *recv, const size_t *nbytes, int root) {
  nccl_ctx *x = c->ctx;
  /* Every rank must choose the same way: decide on the send buffer, which all
   * ranks pass of the same kind (a rank sending nothing may pass NULL). */
  if (is_host_ptr(send) || (!send && is_host_ptr(recv)))
    VIA_MPI(c, ss_comm_gatherv(x->boot, send, recv, nbytes, root));
  double t0 = ss_now_s();
  ss_comm_op op = {.name = "gatherv", .peer = -1, .root = root};
  if (!nbytes) return fail(c, SS_ERR_INVALID, &op, "nbytes is NULL");
  int rc = check_usable(c, &op);
  if (rc || (rc = ss_comm_check_rank(c, "gatherv", "root", root)) ||
      (rc = use_device_ordered(c, &op)))
    return rc;
  size_t total = 0;
  for (int r = 0; r < c->size; r++) total += nbytes[r];
  op.nbytes = total;
  if ((c->rank == root && total && !recv) || (nbytes[c->rank] && !send))
    return fail(c, SS_ERR_INVALID, &op, "NULL buffer");
  NCCL_TRY(c, &op, ncclGroupStart());
  if (c->rank == root) {
    size_t off = 0;
    for (int r = 0; r < c->size; off += nbytes[r], r++) {
      if (!nbytes[r]) continue;
      if (r == root) {
        if (send != (char *)recv + off) {
          cudaError_t ce = cudaMemcpyAsync((char *)recv + off, send, nbytes[r],
                                           cudaMemcpyDeviceToDevice, x->stream);
          if (ce != cudaSuccess) {
            ncclGroupEnd();
            CUDA_TRY(c, &op, ce);
          }
        }
        continue;
      }
      ncclResult_t nr = ncclRecv((char *)recv + off, nbytes[r], ncclUint8, r, x->nc, x->stream);
      if (nr != ncclSuccess) {
        ncclGroupEnd();
        NCCL_TRY(c, &op, nr);
      }
    }
  } else if (nbytes[c->rank]) {
    ncclResult_t nr = ncclSend(send, nbytes[c->rank], ncclUint8, root, x->nc, x->stream);
    if (nr != ncclSuccess) {
      ncclGroupEnd();
      NCCL_TRY(c, &op, nr);
    }
  }
  NCCL_TRY(c, &op, ncclGroupEnd());
  rc = nccl_wait(c, &op, t0);
  count_call(c, t0, &op);
  return rc;
}

static int nccl_broadcast(ss_comm *c, void *buf, size_t nbytes, int root) {
  nccl_ctx *x = c->ctx;
  if (is_host_ptr(buf)) VIA_MPI(c, ss_comm_broadcast(x->boot, buf, nbytes, root));
  double t0 = ss_now_s();
  ss_comm_op op = {.name = "broadcast", .nbytes = nbytes, .peer = -1, .root = root};
  int rc = check_usable(c, &op);
  if (rc || (rc = ss_comm_check_rank(c, "broadcast", "root", root)) ||
      (rc = use_device_ordered(c, &op)))
    return rc;
  if (nbytes == 0) return SS_OK;
  if (!buf) return fail(c, SS_ERR_INVALID, &op, "NULL buffer");
  NCCL_TRY(c, &op, ncclBroadcast(buf, buf, nbytes, ncclUint8, root, x->nc, x->stream));
  rc = nccl_wait(c, &op, t0);
  count_call(c, t0, &op);
  return rc;
}

/* A barrier on the GPU streams: a one-element all-reduce, waited on. */
static int nccl_barrier(ss_comm *c) {
  double t0 = ss_now_s();
  nccl_ctx *x = c->ctx;
  ss_comm_op op = {.name = "barrier", .peer = -1, .root = -1};
  int rc = check_usable(c, &op);
  if (rc || (rc = use_device_ordered(c, &op))) return rc;
  NCCL_TRY(c, &op, ncclAllReduce(x->one, x->one, 1, ncclFloat32, ncclSum, x->nc, x->stream));
  rc = nccl_wait(c, &op, t0);
  count_call(c, t0, &op);
  return rc;
}

static int p2p(ss_comm *c, bool is_send, void *buf, size_t nbytes, int peer, int tag) {
  nccl_ctx *x = c->ctx;
  if (is_host_ptr(buf))
    VIA_MPI(c, is_send ? ss_comm_send(x->boot, buf, nbytes, peer, tag)
                       : ss_comm_recv(x->boot, buf, nbytes, peer, tag));
  double t0 = ss_now_s();
  ss_comm_op op = {.name = is_send ? "send" : "recv", .nbytes = nbytes, .peer = peer, .root = -1,
                   .tag = tag};
  int rc = check_usable(c, &op);
  if (rc || (rc = ss_comm_check_rank(c, op.name, "peer", peer)) ||
      (rc = use_device_ordered(c, &op)))
    return rc;
  if (peer == c->rank) return fail(c, SS_ERR_INVALID, &op, "peer is this rank");
  if (nbytes == 0) return SS_OK; /* both sides skip: nothing to match */
  if (!buf) return fail(c, SS_ERR_INVALID, &op, "NULL buffer");
  if (is_send) NCCL_TRY(c, &op, ncclSend(buf, nbytes, ncclUint8, peer, x->nc, x->stream));
  else NCCL_TRY(c, &op, ncclRecv(buf, nbytes, ncclUint8, peer, x->nc, x->stream));
  rc = nccl_wait(c, &op, t0);
  count_call(c, t0, &op);
  return rc;
}

static int nccl_send(ss_comm *c, const void *buf, size_t nbytes, int peer, int tag) {
  return p2p(c, true, (void *)buf, nbytes, peer, tag);
}

static int nccl_recv(ss_comm *c, void *buf, size_t nbytes, int peer, int tag) {
  return p2p(c, false, buf, nbytes, peer, tag);
}

/* Asynchronous sends carry host messages (pipeline stages on host backends)
 * over the bootstrap communicator; device buffers have no such path yet. */
static int nccl_send_async(ss_comm *c, const void *buf, size_t nbytes, int peer, int tag) {
  nccl_ctx *x = c->ctx;
  if (is_host_ptr(buf)) VIA_MPI(c, ss_comm_send_async(x->boot, buf, nbytes, peer, tag));
  ss_comm_op op = {.name = "send", .nbytes = nbytes, .peer = peer, .root = -1, .tag = tag};
  return fail(c, SS_ERR_UNSUPPORTED, &op, "an asynchronous send of device memory is not "
              "implemented (pipeline parallelism runs on host backends)");
}

static int nccl_flush(ss_comm *c) {
  nccl_ctx *x = c->ctx;
  return ss_comm_flush(x->boot);
}

/* ---- life cycle ------------------------------------------------------------ */

static void nccl_free(ss_comm *c) {
  nccl_ctx *x = c->ctx;
  if (x) {
    if (x->nc) {
      if (x->broken) ncclCommAbort(x->nc);
      else ncclCommDestroy(x->nc);
    }
    if (x->stream) cudaStreamDestroy(x->stream);
    if (x->scratch) cudaFree(x->scratch);
    if (x->one) cudaFree(x->one);
    for (int i = 0; i < x->n_retired; i++) cudaFree(x->retired[i]);
    if (x->ev_in) cudaEventDestroy(x->ev_in);
    if (x->ev_out) cudaEventDestroy(x->ev_out);
    if (x->boot) ss_comm_free(x->boot);
    free(x);
  }
  free(c);
}

void ss_comm_nccl_abort(ss_comm *c, int code) {
  nccl_ctx *x = c->ctx;
  if (x->nc) ncclCommAbort(x->nc);
  x->nc = NULL;
  ss_comm_mpi_abort(x->boot, code);
}

static const ss_comm_ops k_nccl_ops = {
    .allreduce_sum = nccl_allreduce_sum,
    .allgatherv = nccl_allgatherv,
    .gatherv = nccl_gatherv,
    .broadcast = nccl_broadcast,
    .barrier = nccl_barrier,
    .send = nccl_send,
    .recv = nccl_recv,
    .send_async = nccl_send_async,
    .flush = nccl_flush,
    .free = nccl_free,
    .allreduce_sum_stream = nccl_allreduce_sum_stream,
    .wait_stream = nccl_wait_stream,
};

/* What rank 0 hands out: the id, or the news that it could not make one. */
typedef struct boot_msg {
  int ok;
  char why[200];
  ncclUniqueId id;
} boot_msg;

/* Agrees across ranks whether every rank got this far, so that a rank whose
 * GPU is missing fails with its reason and the others with a pointer to it,
 * instead of all waiting in ncclCommInitRank. */
static int any_rank_failed(ss_comm *boot, bool failed, bool *any) {
  float v = failed ? 1.0f : 0.0f;
  int rc = ss_comm_allreduce_sum(boot, &v, 1, SS_DTYPE_F32);
  *any = v > 0;
  return rc;
}

int ss_comm_nccl_create(const ss_comm_opts *opts, ss_comm **out) {
  ss_comm_opts mo = *opts;
  mo.kind = SS_COMM_MPI;
  mo.deterministic = false;
  ss_comm *boot = NULL;
  int rc = ss_comm_mpi_create(&mo, &boot);
  if (rc) return rc;
  ss_comm *c = calloc(1, sizeof *c);
  nccl_ctx *x = calloc(1, sizeof *x);
  if (!c || !x) {
    free(c);
    free(x);
    ss_comm_free(boot);
    return ss_error(SS_ERR_NOMEM, "comm: nccl communicator");
  }
  c->backend = "nccl";
  c->ops = &k_nccl_ops;
  c->ctx = x;
  c->rank = boot->rank;
  c->size = boot->size;
  c->local_rank = boot->local_rank;
  c->local_size = boot->local_size;
  c->deterministic = opts->deterministic;
  c->timeout_s = opts->timeout_s;
  c->liveness_s = boot->liveness_s;
  memcpy(c->host, boot->host, sizeof c->host);
  x->boot = boot;
  x->peers = *(ss_comm_peers *)boot->ctx;
  ss_comm_op op = {.name = "init", .peer = -1, .root = -1};

  /* This rank's GPU; every rank reports before anyone enters NCCL. */
  char why[256] = "";
  int ndev = 0;
  cudaError_t ce = cudaGetDeviceCount(&ndev);
  if (ce != cudaSuccess)
    snprintf(why, sizeof why, "no usable CUDA device: %s", cudaGetErrorString(ce));
  const int dev = ss_gpu_for_rank(c->local_rank, c->local_size, ndev);
  if (!why[0] && dev < 0)
    snprintf(why, sizeof why,
             "%d ranks on this host but it shows each rank %d GPU(s): launch at most %d ranks "
             "per host, or give each rank its own GPU (CUDA_VISIBLE_DEVICES)",
             c->local_size, ndev, ndev);
  else if (!why[0] && (ce = cudaSetDevice(dev)) != cudaSuccess)
    snprintf(why, sizeof why, "cudaSetDevice(%d): %s", dev, cudaGetErrorString(ce));
  x->device = dev;
  bool any_failed;
  if ((rc = any_rank_failed(boot, why[0] != '\0', &any_failed))) goto fail;
  if (why[0]) {
    rc = fail(c, SS_ERR_UNSUPPORTED, &op, why);
    goto fail;
  }
  if (any_failed) {
    rc = fail(c, SS_ERR_COMM, &op, "another rank has no usable GPU (see its message)");
    goto fail;
  }

  boot_msg msg;
  memset(&msg, 0, sizeof msg);
  if (c->rank == 0) {
    ncclResult_t nr = ncclGetUniqueId(&msg.id);
    msg.ok = nr == ncclSuccess;
    if (!msg.ok) snprintf(msg.why, sizeof msg.why, "ncclGetUniqueId: %s", ncclGetErrorString(nr));
  }
  if ((rc = ss_comm_broadcast(boot, &msg, sizeof msg, 0))) goto fail;
  if (!msg.ok) {
    char w2[256];
    snprintf(w2, sizeof w2, "rank 0 could not start NCCL: %s", msg.why);
    rc = fail(c, SS_ERR_COMM, &op, w2);
    goto fail;
  }
  {
    ncclResult_t nr = ncclCommInitRank(&x->nc, c->size, msg.id, c->rank);
    if (nr != ncclSuccess) {
      x->nc = NULL;
      rc = fail_lib(c, &op, __FILE__, __LINE__, "ncclCommInitRank", ncclGetErrorString(nr), NULL);
      goto fail;
    }
  }
  if ((ce = cudaStreamCreateWithFlags(&x->stream, cudaStreamNonBlocking)) != cudaSuccess ||
      (ce = cudaMalloc((void **)&x->one, sizeof(float))) != cudaSuccess ||
      (ce = cudaEventCreateWithFlags(&x->ev_in, cudaEventDisableTiming)) != cudaSuccess ||
      (ce = cudaEventCreateWithFlags(&x->ev_out, cudaEventDisableTiming)) != cudaSuccess) {
    rc = fail_lib(c, &op, __FILE__, __LINE__, "cuda stream/buffer", cudaGetErrorString(ce), NULL);
    goto fail;
  }
  x->broken = false;
  *out = c;
  return SS_OK;
fail:
  nccl_free(c);
  return rc;
}
