/* Communicator tests, run under mpirun with 1..4 ranks (and without mpirun).
 *
 * Data is verifiable in the nccl-tests way: every all-reduce input is a small
 * integer times a power of two that depends only on the element, so every
 * partial sum is exact in f32, f16 and bf16 and the expected result is known
 * whatever the summation order; results are checked element by element and the
 * number of wrong elements reported.  The deterministic all-reduce is also
 * checked bit for bit against a rank-ordered sum computed here on random
 * (inexact) floats.
 *
 *   test_comm               the suite (mpi backend, plus self when 1 rank)
 *   test_comm --self-only   the self backend without touching MPI
 *   test_comm --loop [S]    all-reduce 576 f32 in a loop for S s (dead-peer test)
 *   test_comm --skip-barrier T
 *                           timeout T s; rank 1 never joins a barrier: rank 0
 *                           must fail within T + 2 s (timeout test)
 *   --liveness S            the heartbeat channel's timeout (default 4 s; 0 off)
 *   --busy S                with --loop: rank 1 sleeps S s before each all-reduce
 *                           (a rank busy computing is not a lost one) */
#include <math.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "comm/comm.h"
#include "runtime/base/clock.h"
#include "runtime/base/status.h"

static int g_pass, g_fail, g_rank;

#define CHECK(cond, ...)                                                   \
  do {                                                                     \
    if (cond) {                                                            \
      g_pass++;                                                            \
    } else {                                                               \
      g_fail++;                                                            \
      fprintf(stderr, "rank %d: FAIL %s:%d: ", g_rank, __FILE__, __LINE__); \
      fprintf(stderr, __VA_ARGS__);                                        \
      fputc('\n', stderr);                                                 \
    }                                                                      \
  } while (0)

/* ---- element types ------------------------------------------------------ */

static size_t elem_nbytes(ss_dtype t) { return t == SS_DTYPE_F32 ? 4 : 2; }

static void put(void *buf, size_t i, ss_dtype t, float v) {
  if (t == SS_DTYPE_F32) ((float *)buf)[i] = v;
  else if (t == SS_DTYPE_F16) ((uint16_t *)buf)[i] = ss_f32_to_f16(v);
  else ((uint16_t *)buf)[i] = ss_f32_to_bf16(v);
}

static float get(const void *buf, size_t i, ss_dtype t) {
  if (t == SS_DTYPE_F32) return ((const float *)buf)[i];
  if (t == SS_DTYPE_F16) return ss_f16_to_f32(((const uint16_t *)buf)[i]);
  return ss_bf16_to_f32(((const uint16_t *)buf)[i]);
}

/* Verifiable value of element i on rank r: an integer in [-8, 8] times 2^e(i),
 * e in [-2, 2].  Sums over up to 32 ranks stay below 2^8 units: exact in bf16
 * (8 significant bits) and so in f16 and f32. */
static float vvalue(int r, size_t i) {
  int q = (int)((r * 7 + (i % 1021) * 13) % 17) - 8;
  int e = (int)(i % 5) - 2;
  return ldexpf((float)q, e);
}

/* ---- all-reduce --------------------------------------------------------- */

static void test_allreduce_exact(ss_comm *c, ss_dtype t, bool det, size_t count) {
  size_t es = elem_nbytes(t);
  void *buf = malloc(count * es);
  CHECK(buf, "malloc %zu", count * es);
  if (!buf) return;
  for (size_t i = 0; i < count; i++) put(buf, i, t, vvalue(c->rank, i));
  c->deterministic = det;
  int rc = ss_comm_allreduce_sum(c, buf, count, t);
  CHECK(rc == 0, "allreduce %s det=%d count=%zu: %s", ss_dtype_name(t), det, count,
        ss_error_msg());
  size_t wrong = 0, first = 0;
  float first_want = 0;
  for (size_t i = 0; i < count; i++) {
    float want = 0;
    for (int r = 0; r < c->size; r++) want += vvalue(r, i);
    if (get(buf, i, t) != want && wrong++ == 0) first = i, first_want = want;
  }
  CHECK(wrong == 0, "allreduce %s det=%d count=%zu: #wrong %zu (first at %zu: %g, want %g)",
        ss_dtype_name(t), det, count, wrong, first, (double)get(buf, first, t),
        (double)first_want);
  free(buf);
}

/* xorshift: every rank can regenerate every other rank's data. */
static uint64_t rng_next(uint64_t *s) {
  *s ^= *s << 13;
  *s ^= *s >> 7;
  *s ^= *s << 17;
  return *s;
}

static float rvalue(uint64_t *s) {
  /* Uniform in (-1, 1) with a spread of exponents, so sums round. */
  double u = (double)(rng_next(s) >> 11) / 9007199254740992.0;
  return (float)((u * 2 - 1) * ldexp(1.0, (int)(rng_next(s) % 7) - 3));
}

static void test_allreduce_det_bits(ss_comm *c, ss_dtype t, size_t count) {
  size_t es = elem_nbytes(t);
  void *buf = malloc(count * es), *ref = malloc(count * es);
  float *acc = malloc(count * sizeof(float));
  CHECK(buf && ref && acc, "malloc");
  if (!buf || !ref || !acc) goto out;
  for (int r = 0; r < c->size; r++) {
    uint64_t s = 0x9e3779b97f4a7c15ull * (uint64_t)(r + 1) + count;
    for (size_t i = 0; i < count; i++) {
      /* The input is what the rank holds in its own type. */
      float v = rvalue(&s);
      put(ref, i, t, v);
      float vt = get(ref, i, t);
      if (r == c->rank) put(buf, i, t, vt);
      acc[i] = r == 0 ? vt : acc[i] + vt;
    }
  }
  for (size_t i = 0; i < count; i++) put(ref, i, t, acc[i]);
  c->deterministic = true;
  int rc = ss_comm_allreduce_sum(c, buf, count, t);
  CHECK(rc == 0, "det allreduce %s count=%zu: %s", ss_dtype_name(t), count, ss_error_msg());
  size_t wrong = 0;
  for (size_t i = 0; i < count; i++) wrong += memcmp((char *)buf + i * es, (char *)ref + i * es, es) != 0;
  CHECK(wrong == 0, "det allreduce %s count=%zu: %zu elements differ from the rank-ordered sum",
        ss_dtype_name(t), count, wrong);
out:
  free(buf);
  free(ref);
  free(acc);
}

static void test_allreduce(ss_comm *c, size_t max_count) {
  static const size_t counts[] = {1, 2, 3, 7, 31, 1000, 4097, 65537, (1u << 20) + 1, 16u << 20};
  static const ss_dtype types[] = {SS_DTYPE_F32, SS_DTYPE_F16, SS_DTYPE_BF16};
  for (int d = 0; d < 2; d++)
    for (int ti = 0; ti < 3; ti++)
      for (size_t k = 0; k < sizeof counts / sizeof counts[0]; k++)
        if (counts[k] <= max_count) test_allreduce_exact(c, types[ti], d == 1, counts[k]);
  static const size_t det_counts[] = {1, 5, 1000, 65537, (1u << 20) + 1};
  for (int ti = 0; ti < 3; ti++)
    for (size_t k = 0; k < sizeof det_counts / sizeof det_counts[0]; k++)
      if (det_counts[k] <= max_count) test_allreduce_det_bits(c, types[ti], det_counts[k]);
  c->deterministic = false;
  /* Count 0 is a valid no-op. */
  CHECK(ss_comm_allreduce_sum(c, NULL, 0, SS_DTYPE_F32) == 0, "allreduce of 0: %s",
        ss_error_msg());
}

/* ---- gathers, broadcast, point to point --------------------------------- */

static uint8_t pattern(int r, size_t i) { return (uint8_t)(r * 31 + i * 7 + 1); }

/* nbytes for rank r in layout L: uneven, with zero-byte ranks. */
static size_t layout_nbytes(int L, int r, int n) {
  switch (L) {
  case 0: return (size_t)(r + 1) * 3;                 /* uneven */
  case 1: return r % 2 ? 0 : (size_t)1000 + (size_t)r; /* odd ranks give nothing */
  case 2: return r == n - 1 ? (size_t)(1u << 20) + 5 : 0; /* only the last rank */
  default: return 0;                                  /* all empty */
  }
}

static void test_gathers(ss_comm *c) {
  int n = c->size;
  size_t *nb = malloc(sizeof(size_t) * (size_t)n);
  for (int L = 0; L < 4; L++) {
    size_t total = 0, off_me = 0;
    for (int r = 0; r < n; r++) {
      nb[r] = layout_nbytes(L, r, n);
      if (r < c->rank) off_me += nb[r];
      total += nb[r];
    }
    uint8_t *send = malloc(nb[c->rank] + 1), *recv = malloc(total + 1);
    for (size_t i = 0; i < nb[c->rank]; i++) send[i] = pattern(c->rank, i);
    for (int inplace = 0; inplace < 2; inplace++) {
      memset(recv, 0xee, total + 1);
      const void *s = send;
      if (inplace) {
        memcpy(recv + off_me, send, nb[c->rank]);
        s = recv + off_me;
      }
      int rc = ss_comm_allgatherv(c, s, recv, nb);
      CHECK(rc == 0, "allgatherv layout %d inplace %d: %s", L, inplace, ss_error_msg());
      size_t wrong = 0, off = 0;
      for (int r = 0; r < n; r++, off += nb[r - 1])
        for (size_t i = 0; i < nb[r]; i++) wrong += recv[off + i] != pattern(r, i);
      CHECK(wrong == 0 && recv[total] == 0xee, "allgatherv layout %d inplace %d: #wrong %zu", L,
            inplace, wrong);
    }
    for (int root = 0; root < n; root++) {
      memset(recv, 0xee, total + 1);
      int rc = ss_comm_gatherv(c, send, c->rank == root ? recv : NULL, nb, root);
      CHECK(rc == 0, "gatherv layout %d root %d: %s", L, root, ss_error_msg());
      if (c->rank == root) {
        size_t wrong = 0, off = 0;
        for (int r = 0; r < n; r++, off += nb[r - 1])
          for (size_t i = 0; i < nb[r]; i++) wrong += recv[off + i] != pattern(r, i);
        CHECK(wrong == 0 && recv[total] == 0xee, "gatherv layout %d root %d: #wrong %zu", L, root,
              wrong);
      }
    }
    free(send);
    free(recv);
  }
  free(nb);
}

static void test_broadcast(ss_comm *c) {
  static const size_t sizes[] = {0, 1, 7, 4096, (1u << 20) + 3};
  for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
    size_t nbytes = sizes[k];
    uint8_t *buf = malloc(nbytes + 1);
    for (int root = 0; root < c->size; root++) {
      for (size_t i = 0; i < nbytes; i++) buf[i] = c->rank == root ? pattern(root, i) : 0;
      buf[nbytes] = 0xee;
      int rc = ss_comm_broadcast(c, buf, nbytes, root);
      CHECK(rc == 0, "broadcast %zu bytes root %d: %s", nbytes, root, ss_error_msg());
      size_t wrong = 0;
      for (size_t i = 0; i < nbytes; i++) wrong += buf[i] != pattern(root, i);
      CHECK(wrong == 0 && buf[nbytes] == 0xee, "broadcast %zu bytes root %d: #wrong %zu", nbytes,
            root, wrong);
    }
    free(buf);
  }
}

/* A token ring: rank 0 sends first and receives last, every other rank receives
 * then sends, so blocking sends of any size cannot deadlock. */
static void test_ring(ss_comm *c) {
  int n = c->size;
  if (n < 2) return;
  static const size_t sizes[] = {0, 5, (1u << 20) + 1};
  int next = (c->rank + 1) % n, prev = (c->rank + n - 1) % n;
  for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
    size_t nbytes = sizes[k];
    uint8_t *out = malloc(nbytes + 1), *in = malloc(nbytes + 1);
    for (size_t i = 0; i < nbytes; i++) out[i] = pattern(c->rank, i);
    memset(in, 0, nbytes + 1);
    int tag = 10 + (int)k, rc1, rc2;
    if (c->rank == 0) {
      rc1 = ss_comm_send(c, out, nbytes, next, tag);
      rc2 = ss_comm_recv(c, in, nbytes, prev, tag);
    } else {
      rc2 = ss_comm_recv(c, in, nbytes, prev, tag);
      rc1 = ss_comm_send(c, out, nbytes, next, tag);
    }
    CHECK(rc1 == 0 && rc2 == 0, "ring %zu bytes: %s", nbytes, ss_error_msg());
    size_t wrong = 0;
    for (size_t i = 0; i < nbytes; i++) wrong += in[i] != pattern(prev, i);
    CHECK(wrong == 0, "ring %zu bytes from rank %d: #wrong %zu", nbytes, prev, wrong);
    free(out);
    free(in);
  }
}

/* Asynchronous sends: every rank sends to the next one first, all at once (of
 * a size that blocking sends would deadlock on), three messages on one tag,
 * reusing its buffer as soon as each call returns; then receives from the one
 * before.  The messages arrive whole, in order, as they were when sent. */
static void test_async_ring(ss_comm *c) {
  int n = c->size;
  if (n < 2) return;
  static const size_t sizes[] = {0, 5, (4u << 20) + 3};
  int next = (c->rank + 1) % n, prev = (c->rank + n - 1) % n;
  for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
    size_t nbytes = sizes[k];
    uint8_t *out = malloc(nbytes + 1), *in = malloc(nbytes + 1);
    int tag = 20 + (int)k, rc = 0;
    for (int m = 0; m < 3 && !rc; m++) {
      for (size_t i = 0; i < nbytes; i++) out[i] = (uint8_t)(pattern(c->rank, i) + m);
      rc = ss_comm_send_async(c, out, nbytes, next, tag);
      memset(out, 0xab, nbytes); /* the copy went, not the buffer */
    }
    CHECK(rc == 0, "async ring %zu bytes: send: %s", nbytes, ss_error_msg());
    for (int m = 0; m < 3 && !rc; m++) {
      memset(in, 0, nbytes + 1);
      rc = ss_comm_recv(c, in, nbytes, prev, tag);
      CHECK(rc == 0, "async ring %zu bytes: recv %d: %s", nbytes, m, ss_error_msg());
      size_t wrong = 0;
      for (size_t i = 0; i < nbytes; i++) wrong += in[i] != (uint8_t)(pattern(prev, i) + m);
      CHECK(wrong == 0, "async ring %zu bytes, message %d from rank %d: #wrong %zu", nbytes, m,
            prev, wrong);
    }
    rc = ss_comm_flush(c);
    CHECK(rc == 0, "async ring %zu bytes: flush: %s", nbytes, ss_error_msg());
    free(out);
    free(in);
  }
}

/* Bad arguments fail on every rank alike (no communication), with a message
 * naming the rank and the op. */
static void test_errors(ss_comm *c) {
  float x = 1;
  int rc = ss_comm_allreduce_sum(c, &x, 1, SS_DTYPE_Q4_0);
  CHECK(rc == SS_ERR_INVALID && strstr(ss_error_msg(), "allreduce") &&
            strstr(ss_error_msg(), "rank"),
        "allreduce of q4_0: rc %d, msg '%s'", rc, ss_error_msg());
  rc = ss_comm_broadcast(c, &x, 4, c->size);
  CHECK(rc == SS_ERR_INVALID && strstr(ss_error_msg(), "root"), "broadcast root out of range: %s",
        ss_error_msg());
  rc = ss_comm_send(c, &x, 4, c->rank, 0);
  CHECK(rc == SS_ERR_INVALID, "send to self: rc %d", rc);
  rc = ss_comm_recv(c, &x, 4, -1, 0);
  CHECK(rc == SS_ERR_INVALID, "recv from rank -1: rc %d", rc);
}

/* Pipeline stages: split into groups of 2 consecutive ranks (the last may be
 * alone); each group's all-reduce sums its own ranks only, and its ranks are
 * numbered by the key (here reversed), so the sum and the group rank are both
 * known exactly. */
static void test_split(ss_comm *c) {
  const int color = c->rank / 2, key = 100 - c->rank;
  ss_comm *g = NULL;
  int rc = ss_comm_split(c, color, key, &g);
  CHECK(rc == 0 && g, "split: %s", ss_error_msg());
  if (rc || !g) return;
  const int lo = color * 2, hi = lo + 2 < c->size ? lo + 2 : c->size;
  CHECK(g->size == hi - lo, "split: group of rank %d has %d ranks, want %d", c->rank, g->size,
        hi - lo);
  CHECK(g->rank == hi - 1 - c->rank, "split: rank %d is %d in its group, want %d (by key)",
        c->rank, g->rank, hi - 1 - c->rank);
  float v[3] = {(float)(c->rank + 1), 1.0f, (float)(1 << c->rank)};
  rc = ss_comm_allreduce_sum(g, v, 3, SS_DTYPE_F32);
  float want0 = 0, want2 = 0;
  for (int r = lo; r < hi; r++) want0 += (float)(r + 1), want2 += (float)(1 << r);
  CHECK(rc == 0 && v[0] == want0 && v[1] == (float)(hi - lo) && v[2] == want2,
        "split: group all-reduce %g %g %g, want %g %d %g (%s)", v[0], v[1], v[2], want0, hi - lo,
        want2, rc ? ss_error_msg() : "ok");
  ss_comm_free(g);
  ss_comm *bad = NULL;
  rc = ss_comm_split(c, -1, 0, &bad); /* every rank passes it: refused alike, no hang */
  CHECK(rc == SS_ERR_INVALID && !bad && strstr(ss_error_msg(), "negative color"),
        "split with a negative color: rc %d: %s", rc, ss_error_msg());
  /* The parent still works after its group is gone. */
  CHECK(ss_comm_barrier(c) == 0, "barrier after split: %s", ss_error_msg());
}

static void test_misc(ss_comm *c) {
  for (int i = 0; i < 3; i++) CHECK(ss_comm_barrier(c) == 0, "barrier: %s", ss_error_msg());
  ss_comm_stats_reset(c);
  CHECK(c->n_calls == 0 && c->busy_s == 0, "stats reset");
  float x = 1;
  ss_comm_allreduce_sum(c, &x, 1, SS_DTYPE_F32);
  ss_comm_barrier(c);
  CHECK(c->n_calls == 2, "n_calls %llu after 2 calls", (unsigned long long)c->n_calls);
  CHECK(c->local_rank >= 0 && c->local_rank < c->local_size && c->local_size <= c->size,
        "local rank %d of %d", c->local_rank, c->local_size);
  CHECK(c->host[0] != '\0', "host name");
}

static void run_suite(ss_comm *c, size_t max_count) {
  test_allreduce(c, max_count);
  test_gathers(c);
  test_broadcast(c);
  test_ring(c);
  test_async_ring(c);
  test_split(c);
  test_errors(c);
  test_misc(c);
}

static void test_self(void) {
  CHECK(ss_comm_available(SS_COMM_SELF), "self available");
  ss_comm_opts o = {.kind = SS_COMM_SELF};
  ss_comm *c = NULL;
  int rc = ss_comm_init(&o, &c);
  if (ss_comm_launch_size() > 1) {
    CHECK(rc != 0 && strstr(ss_error_msg(), "self"), "self under %d ranks must fail: rc %d '%s'",
          ss_comm_launch_size(), rc, ss_error_msg());
    return;
  }
  CHECK(rc == 0 && c && c->size == 1 && strcmp(c->backend, "self") == 0, "self init: %s",
        ss_error_msg());
  if (rc) return;
  run_suite(c, (size_t)1 << 20);
  ss_comm_free(c);
}

static int summary(ss_comm *c) {
  int local[2] = {g_pass, g_fail}, total[2] = {g_pass, g_fail};
  if (c && c->size > 1) {
    /* The totals travel as bytes through the communicator under test. */
    size_t *nb = malloc(sizeof(size_t) * (size_t)c->size);
    int *all = malloc(sizeof local * (size_t)c->size);
    for (int r = 0; r < c->size; r++) nb[r] = sizeof local;
    c->deterministic = false;
    if (ss_comm_allgatherv(c, local, all, nb) == 0) {
      total[0] = total[1] = 0;
      for (int r = 0; r < c->size; r++) total[0] += all[2 * r], total[1] += all[2 * r + 1];
    } else {
      total[1]++;
    }
    free(nb);
    free(all);
  }
  if (g_rank == 0) printf("%d passed, %d failed\n", total[0], total[1]);
  fflush(stdout);
  return total[1] ? 1 : 0;
}

/* ---- modes for the Python liveness tests --------------------------------- */

static int run_loop(ss_comm *c, double seconds, double busy_s) {
  ss_comm_install_signal_handlers(c);
  float buf[576];
  double t_end = ss_now_s() + seconds;
  long iters = 0;
  /* The dead-peer test reads these to know whom to kill. */
  printf("loop: rank %d pid %ld host %s\n", c->rank, (long)getpid(), c->host);
  fflush(stdout);
  while (ss_now_s() < t_end) {
    if (busy_s > 0 && c->rank == 1) {
      struct timespec ts = {(time_t)busy_s, (long)((busy_s - (double)(time_t)busy_s) * 1e9)};
      nanosleep(&ts, NULL);
    }
    for (int i = 0; i < 576; i++) buf[i] = 1;
    int rc = ss_comm_allreduce_sum(c, buf, 576, SS_DTYPE_F32);
    if (rc) {
      fprintf(stderr, "test_comm: %s\n", ss_error_msg());
      fflush(stderr);
      /* The other survivors report too before the launcher ends the job:
       * the liveness test checks every one of them names the lost rank. */
      struct timespec ts = {0, 500000000L};
      nanosleep(&ts, NULL);
      ss_comm_abort(c, 1);
      return 1;
    }
    iters++;
  }
  /* Every rank reaches the barrier before any frees (which says goodbye on
   * the heartbeat channel); a failure here is a failure too. */
  int rc = ss_comm_barrier(c);
  if (rc) {
    fprintf(stderr, "test_comm: %s\n", ss_error_msg());
    ss_comm_abort(c, 1);
    return 1;
  }
  if (c->rank == 0) printf("loop: %ld iterations\n", iters);
  ss_comm_free(c);
  return 0;
}

static int run_skip_barrier(ss_comm *c, double timeout) {
  if (c->rank == 1) {
    /* Never join: stay alive past the deadline until the job is torn down. */
    sleep((unsigned)(timeout + 20));
    return 0;
  }
  double t0 = ss_now_s();
  int rc = ss_comm_barrier(c);
  double dt = ss_now_s() - t0;
  fprintf(stderr, "test_comm: barrier returned %d after %.2f s: %s\n", rc, dt, ss_error_msg());
  fflush(stderr);
  /* Only rank 0 reports; it ends the job the way the CLI would. */
  if (c->rank == 0) ss_comm_abort(c, rc == SS_ERR_COMM ? 3 : 4);
  sleep((unsigned)(timeout + 20));
  return 0;
}

int main(int argc, char **argv) {
  setvbuf(stdout, NULL, _IOLBF, 0);
  bool self_only = false;
  double loop_s = -1, skip_barrier = -1, liveness = -1, busy = 0;
  size_t max_count = (size_t)16 << 20;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--self-only") == 0) self_only = true;
    else if (strcmp(argv[i], "--loop") == 0) loop_s = i + 1 < argc ? atof(argv[++i]) : 60;
    else if (strcmp(argv[i], "--skip-barrier") == 0 && i + 1 < argc) skip_barrier = atof(argv[++i]);
    else if (strcmp(argv[i], "--liveness") == 0 && i + 1 < argc) liveness = atof(argv[++i]);
    else if (strcmp(argv[i], "--busy") == 0 && i + 1 < argc) busy = atof(argv[++i]);
    else if (strcmp(argv[i], "--max-count") == 0 && i + 1 < argc) max_count = (size_t)atoll(argv[++i]);
    else {
      fprintf(stderr, "usage: test_comm [--self-only | --loop S [--busy S] | --skip-barrier T] "
              "[--liveness S] [--max-count N]\n");
      return 2;
    }
  }
  if (self_only) {
    CHECK(ss_comm_launch_size() == 1, "launch size %d without a launcher", ss_comm_launch_size());
    test_self();
    ss_comm_opts o = {.kind = SS_COMM_NCCL};
    ss_comm *c = NULL;
    if (!ss_comm_available(SS_COMM_NCCL)) {
      int rc = ss_comm_init(&o, &c);
      CHECK(rc == SS_ERR_UNSUPPORTED && strstr(ss_error_msg(), "nccl"),
            "nccl when not built: rc %d '%s'", rc, ss_error_msg());
    }
    return summary(NULL);
  }
  if (!ss_comm_available(SS_COMM_MPI)) {
    fprintf(stderr, "test_comm: built without MPI\n");
    return 77;
  }
  ss_comm_opts o = {.kind = SS_COMM_MPI, .timeout_s = skip_barrier > 0 ? skip_barrier : 0,
                    .liveness_s = liveness < 0 ? 0 : liveness == 0 ? -1 : liveness};
  ss_comm *c = NULL;
  int rc = ss_comm_init(&o, &c);
  if (rc) {
    fprintf(stderr, "test_comm: %s\n", ss_error_msg());
    return 1;
  }
  g_rank = c->rank;
  if (loop_s >= 0) return run_loop(c, loop_s, busy);
  if (skip_barrier > 0) return run_skip_barrier(c, skip_barrier);

  CHECK(c->size == ss_comm_launch_size(), "size %d, launch size %d", c->size,
        ss_comm_launch_size());
  CHECK(strcmp(c->backend, "mpi") == 0, "backend %s", c->backend);
  test_self();
  run_suite(c, max_count);

  /* A second communicator alongside the first (the engine may hold two). */
  ss_comm *c2 = NULL;
  o.deterministic = true;
  rc = ss_comm_init(&o, &c2);
  CHECK(rc == 0, "second communicator: %s", ss_error_msg());
  if (rc == 0) {
    test_allreduce_exact(c2, SS_DTYPE_F32, true, 4097);
    ss_comm_free(c2);
  }
  int failed = summary(c);
  ss_comm_free(c);
  return failed;
}
