/* All-reduce for the MPI backend, built from MPI_Isend/MPI_Irecv.
 *
 * Why not MPI_Iallreduce: Open MPI's non-blocking collectives (coll/libnbc)
 * pick other algorithms than its blocking ones (coll/tuned) and cost more per
 * call; measured on 2 ranks it was 2.5x slower than a blocking MPI_Allreduce
 * for 4 B and for 64 MB.  The algorithms below are the textbook ones the
 * blocking path uses, waited on by ss_mpi_wait (liveness, deadline):
 *
 *   small   recursive doubling (log2 n exchanges of the whole vector; ranks
 *           beyond a power of two fold into a partner first);
 *   large   ring: reduce-scatter then all-gather, n-1 steps each, every rank
 *           sending 2(n-1)/n of the vector in all (bandwidth-optimal).
 *
 * Every rank ends with bit-identical results: in recursive doubling both
 * partners compute a + b (addition commutes exactly); in the ring each chunk is
 * summed on one rank and copied to the others.
 *
 * Deterministic mode sums each element in rank order 0..n-1 (a left fold in
 * f32) whatever n and the size: small vectors are gathered whole to every rank
 * and summed locally; large ones go all-to-all by chunk (rank r receives every
 * rank's chunk r), are summed in rank order, and gathered back.  The bytes
 * moved equal the ring's.
 *
 * F16 and BF16 are widened to f32, summed in f32 and rounded once at the end:
 * more accurate than 16-bit partial sums, for twice the bytes on the wire. */
#include <stdint.h>
#include <string.h>

#include "comm/comm_mpi_internal.h"
#include "runtime/base/status.h"

/* Up to this many bytes the default all-reduce uses recursive doubling, above
 * it the ring.  Measured with ss_bench_allreduce (bench/RESULTS.md): on 2 ranks
 * the ring wins from 4 KB (its half-size messages stay under Open MPI's 4 KB
 * shared-memory eager limit); on 4 ranks the ring's 6 steps cost more than 2
 * full exchanges up to ~64 KB. */
#define RD_MAX_NBYTES_2 ((size_t)2 << 10)
#define RD_MAX_NBYTES ((size_t)64 << 10)
/* Deterministic: below this many bytes gathered in all, gather everything. */
#define DET_SMALL_NBYTES ((size_t)64 << 10)
#define TAG_AR 1

/* ---- element helpers ---------------------------------------------------- */

static void widen(const void *src, float *dst, size_t n, ss_dtype type) {
  const uint16_t *s = src;
  if (type == SS_DTYPE_F16)
    for (size_t i = 0; i < n; i++) dst[i] = ss_f16_to_f32(s[i]);
  else
    for (size_t i = 0; i < n; i++) dst[i] = ss_bf16_to_f32(s[i]);
}

static void narrow(const float *src, void *dst, size_t n, ss_dtype type) {
  uint16_t *d = dst;
  if (type == SS_DTYPE_F16)
    for (size_t i = 0; i < n; i++) d[i] = ss_f32_to_f16(src[i]);
  else
    for (size_t i = 0; i < n; i++) d[i] = ss_f32_to_bf16(src[i]);
}

static void add_f32(float *restrict a, const float *restrict b, size_t n) {
  for (size_t k = 0; k < n; k++) a[k] += b[k];
}

/* out[k] = (((p0[k] + p1[k]) + p2[k]) + ... + p_{n-1}[k]) in f32, where part i
 * starts at parts + i*stride elements.  This fixed left fold is what makes the
 * deterministic all-reduce independent of the algorithm. */
static void ordered_sum(const void *parts, int n, size_t stride, size_t len, ss_dtype type,
                        void *out) {
  if (type == SS_DTYPE_F32) {
    const float *p = parts;
    float *o = out;
    memcpy(o, p, len * sizeof(float));
    for (int i = 1; i < n; i++) add_f32(o, p + (size_t)i * stride, len);
    return;
  }
  enum { BLOCK = 2048 }; /* f32 accumulators on the stack, a block at a time */
  float acc[BLOCK], tmp[BLOCK];
  const uint16_t *p = parts;
  uint16_t *o = out;
  for (size_t b = 0; b < len; b += BLOCK) {
    size_t m = len - b < BLOCK ? len - b : BLOCK;
    widen(p + b, acc, m, type);
    for (int i = 1; i < n; i++) {
      widen(p + (size_t)i * stride + b, tmp, m, type);
      add_f32(acc, tmp, m);
    }
    narrow(acc, o + b, m, type);
  }
}

/* Chunk r of count elements split n ways: sizes differ by at most one. */
static void chunk(size_t count, int n, int r, size_t *off, size_t *len) {
  size_t base = count / (size_t)n, rem = count % (size_t)n, ur = (size_t)r;
  *len = base + (ur < rem);
  *off = ur * base + (ur < rem ? ur : rem);
}

/* ---- point to point ------------------------------------------------------- */

/* Sends snb bytes to `to` and receives rnb bytes from `from` (either may be 0
 * bytes / -1 peer), then waits for both. */
static int exchange(ss_comm *c, const void *sbuf, size_t snb, int to, void *rbuf, size_t rnb,
                    int from, const ss_comm_op *op, double t0) {
  mpi_ctx *x = c->ctx;
  MPI_Request r[2];
  int k = 0, rc;
  if (from >= 0) {
    rc = MPI_Irecv(rbuf, (int)rnb, MPI_BYTE, from, TAG_AR, x->p2p, &r[k++]);
    if (rc != MPI_SUCCESS) return ss_mpi_fail_mpi(c, rc, op);
  }
  if (to >= 0) {
    rc = MPI_Isend(sbuf, (int)snb, MPI_BYTE, to, TAG_AR, x->p2p, &r[k++]);
    if (rc != MPI_SUCCESS) return ss_mpi_fail_mpi(c, rc, op);
  }
  return ss_mpi_wait(c, k, r, NULL, op, t0);
}

/* ---- default: recursive doubling and ring ------------------------------- */

static int ar_recursive_doubling(ss_comm *c, float *w, size_t count, const ss_comm_op *op,
                                 double t0) {
  mpi_ctx *x = c->ctx;
  int n = c->size, me = c->rank, rc;
  size_t nb = count * sizeof(float);
  if ((rc = ss_mpi_grow(c, &x->tmp, &x->tmp_nbytes, nb, op))) return rc;
  float *tmp = x->tmp;
  int pof2 = 1;
  while (pof2 * 2 <= n) pof2 *= 2;
  int rem = n - pof2, newrank;
  /* The first 2*rem ranks pair up: the even one hands its vector to the odd
   * one and waits for the result. */
  if (me < 2 * rem) {
    if (me % 2 == 0) {
      if ((rc = exchange(c, w, nb, me + 1, NULL, 0, -1, op, t0))) return rc;
      newrank = -1;
    } else {
      if ((rc = exchange(c, NULL, 0, -1, tmp, nb, me - 1, op, t0))) return rc;
      add_f32(w, tmp, count);
      newrank = me / 2;
    }
  } else {
    newrank = me - rem;
  }
  if (newrank >= 0) {
    for (int mask = 1; mask < pof2; mask <<= 1) {
      int np = newrank ^ mask, peer = np < rem ? np * 2 + 1 : np + rem;
      if ((rc = exchange(c, w, nb, peer, tmp, nb, peer, op, t0))) return rc;
      add_f32(w, tmp, count);
    }
  }
  if (me < 2 * rem) {
    if (me % 2) rc = exchange(c, w, nb, me - 1, NULL, 0, -1, op, t0);
    else rc = exchange(c, NULL, 0, -1, w, nb, me + 1, op, t0);
  }
  return rc;
}

static int ar_ring(ss_comm *c, float *w, size_t count, const ss_comm_op *op, double t0) {
  mpi_ctx *x = c->ctx;
  int n = c->size, me = c->rank, rc;
  int next = (me + 1) % n, prev = (me + n - 1) % n;
  size_t max_len, off;
  chunk(count, n, 0, &off, &max_len);
  if ((rc = ss_mpi_grow(c, &x->tmp, &x->tmp_nbytes, max_len * sizeof(float), op))) return rc;
  float *tmp = x->tmp;
  /* Reduce-scatter: after step s, chunk (me - s - 1) holds s + 2 contributions;
   * after n-1 steps rank me owns the full sum of chunk (me + 1). */
  for (int s = 0; s < n - 1; s++) {
    size_t soff, slen, roff, rlen;
    chunk(count, n, ((me - s) % n + n) % n, &soff, &slen);
    chunk(count, n, ((me - s - 1) % n + n) % n, &roff, &rlen);
    rc = exchange(c, w + soff, slen * sizeof(float), next, tmp, rlen * sizeof(float), prev, op, t0);
    if (rc) return rc;
    add_f32(w + roff, tmp, rlen);
  }
  /* All-gather: pass the finished chunks around the ring. */
  for (int s = 0; s < n - 1; s++) {
    size_t soff, slen, roff, rlen;
    chunk(count, n, ((me + 1 - s) % n + n) % n, &soff, &slen);
    chunk(count, n, ((me - s) % n + n) % n, &roff, &rlen);
    rc = exchange(c, w + soff, slen * sizeof(float), next, w + roff, rlen * sizeof(float), prev,
                  op, t0);
    if (rc) return rc;
  }
  return SS_OK;
}

static int allreduce_default(ss_comm *c, void *buf, size_t count, ss_dtype type,
                             const ss_comm_op *op, double t0) {
  mpi_ctx *x = c->ctx;
  float *w = buf;
  int rc;
  if (type != SS_DTYPE_F32) {
    if ((rc = ss_mpi_grow(c, &x->scratch, &x->scratch_nbytes, count * sizeof(float), op)))
      return rc;
    w = x->scratch;
    widen(buf, w, count, type);
  }
  /* The ring needs at least one element per rank to be worth its n-1 steps. */
  size_t rd_max = c->size == 2 ? RD_MAX_NBYTES_2 : RD_MAX_NBYTES;
  if (count * sizeof(float) <= rd_max || count < (size_t)c->size)
    rc = ar_recursive_doubling(c, w, count, op, t0);
  else
    rc = ar_ring(c, w, count, op, t0);
  if (rc == SS_OK && type != SS_DTYPE_F32) narrow(w, buf, count, type);
  return rc;
}

/* ---- deterministic ------------------------------------------------------- */

static int det_small(ss_comm *c, void *buf, size_t count, ss_dtype type, size_t es,
                     const ss_comm_op *op, double t0) {
  mpi_ctx *x = c->ctx;
  int n = c->size, me = c->rank, k = 0, rc;
  size_t nb = count * es;
  if ((rc = ss_mpi_grow(c, &x->scratch, &x->scratch_nbytes, nb * (size_t)n, op))) return rc;
  char *all = x->scratch;
  for (int i = 0; i < n; i++) {
    if (i == me) continue;
    rc = MPI_Irecv(all + (size_t)i * nb, (int)nb, MPI_BYTE, i, TAG_AR, x->p2p, &x->reqs[k++]);
    if (rc != MPI_SUCCESS) return ss_mpi_fail_mpi(c, rc, op);
  }
  for (int i = 0; i < n; i++) {
    if (i == me) continue;
    rc = MPI_Isend(buf, (int)nb, MPI_BYTE, i, TAG_AR, x->p2p, &x->reqs[k++]);
    if (rc != MPI_SUCCESS) return ss_mpi_fail_mpi(c, rc, op);
  }
  memcpy(all + (size_t)me * nb, buf, nb);
  if ((rc = ss_mpi_wait(c, k, x->reqs, NULL, op, t0))) return rc;
  ordered_sum(all, n, count, count, type, buf);
  return SS_OK;
}

static int det_large(ss_comm *c, void *buf, size_t count, ss_dtype type, size_t es,
                     const ss_comm_op *op, double t0) {
  mpi_ctx *x = c->ctx;
  int n = c->size, me = c->rank, k = 0, rc;
  char *b = buf;
  size_t my_off, my_len;
  chunk(count, n, me, &my_off, &my_len);
  size_t my_nb = my_len * es;
  if ((rc = ss_mpi_grow(c, &x->scratch, &x->scratch_nbytes, my_nb * (size_t)n, op))) return rc;
  char *parts = x->scratch;
  /* All-to-all: rank i's copy of my chunk lands in slot i. */
  for (int i = 0; i < n; i++) {
    if (i == me) continue;
    rc = MPI_Irecv(parts + (size_t)i * my_nb, (int)my_nb, MPI_BYTE, i, TAG_AR, x->p2p,
                   &x->reqs[k++]);
    if (rc != MPI_SUCCESS) return ss_mpi_fail_mpi(c, rc, op);
  }
  for (int i = 0; i < n; i++) {
    if (i == me) continue;
    size_t off, len;
    chunk(count, n, i, &off, &len);
    rc = MPI_Isend(b + off * es, (int)(len * es), MPI_BYTE, i, TAG_AR, x->p2p, &x->reqs[k++]);
    if (rc != MPI_SUCCESS) return ss_mpi_fail_mpi(c, rc, op);
  }
  memcpy(parts + (size_t)me * my_nb, b + my_off * es, my_nb);
  if ((rc = ss_mpi_wait(c, k, x->reqs, NULL, op, t0))) return rc;
  ordered_sum(parts, n, my_len, my_len, type, b + my_off * es);
  /* All-gather of the summed chunks, straight into place. */
  k = 0;
  for (int i = 0; i < n; i++) {
    if (i == me) continue;
    size_t off, len;
    chunk(count, n, i, &off, &len);
    rc = MPI_Irecv(b + off * es, (int)(len * es), MPI_BYTE, i, TAG_AR, x->p2p, &x->reqs[k++]);
    if (rc != MPI_SUCCESS) return ss_mpi_fail_mpi(c, rc, op);
  }
  for (int i = 0; i < n; i++) {
    if (i == me) continue;
    rc = MPI_Isend(b + my_off * es, (int)my_nb, MPI_BYTE, i, TAG_AR, x->p2p, &x->reqs[k++]);
    if (rc != MPI_SUCCESS) return ss_mpi_fail_mpi(c, rc, op);
  }
  return ss_mpi_wait(c, k, x->reqs, NULL, op, t0);
}

/* ---- entry ---------------------------------------------------------------- */

int ss_mpi_allreduce_sum(ss_comm *c, void *buf, size_t count, ss_dtype type) {
  double t0 = ss_now_s();
  ss_comm_op op = {.name = "allreduce", .count = count, .type = type, .peer = -1, .root = -1};
  size_t es;
  int rc = ss_mpi_check_usable(c, &op);
  if (rc || (rc = ss_comm_check_type(c, type, &es))) return rc;
  if (count && !buf) return ss_mpi_fail(c, SS_ERR_INVALID, &op, "NULL buffer");
  if (c->size == 1 || count == 0) {
    ss_mpi_count_call(c, t0, &op);
    return SS_OK;
  }
  /* Pieces keep every message under SS_MPI_PIECE_NBYTES (MPI int counts) and
   * bound the scratch; every algorithm works per element, so cutting the vector
   * changes no result. */
  size_t piece = SS_MPI_PIECE_NBYTES / sizeof(float) / (c->deterministic ? (size_t)c->size : 1);
  for (size_t done = 0; done < count && rc == SS_OK; done += piece) {
    size_t m = count - done < piece ? count - done : piece;
    void *p = (char *)buf + done * es;
    if (!c->deterministic) rc = allreduce_default(c, p, m, type, &op, t0);
    else if (m * es * (size_t)c->size <= DET_SMALL_NBYTES) rc = det_small(c, p, m, type, es, &op, t0);
    else rc = det_large(c, p, m, type, es, &op, t0);
  }
  ss_mpi_count_call(c, t0, &op);
  return rc;
}
