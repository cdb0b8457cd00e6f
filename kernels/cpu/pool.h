/* A fixed-size thread pool for data-parallel kernels.
 *
 * ss_pool_run(pool, fn, arg) calls fn(arg, ith, nth) once on each of the nth
 * threads (the caller is thread 0) and returns when all have finished.  Workers
 * (and the caller, waiting for them) spin briefly and then sleep on a futex, so
 * back-to-back kernels (hundreds per decoded token) do not pay a wake-up each;
 * on an oversubscribed node they sleep at once. */
#ifndef SS_POOL_H
#define SS_POOL_H

#include <stdbool.h>

typedef struct ss_pool ss_pool;
typedef void (*ss_pool_fn)(void *arg, int ith, int nth);

/* Returns NULL on failure (message via ss_error_msg()). */
ss_pool *ss_pool_create(int n_threads);
void ss_pool_free(ss_pool *p);
int ss_pool_size(const ss_pool *p);
void ss_pool_run(ss_pool *p, ss_pool_fn fn, void *arg);

/* Threads per process by default: the usable cores divided among the ranks
 * this job runs on the node (launcher environment), at least 1. */
int ss_pool_default_threads(void);
/* Whether n_threads per rank oversubscribe the node's usable cores; such a pool
 * never spins (SS_POOL_SPIN=N overrides the spin count). */
bool ss_pool_oversubscribed(int n_threads);

/* The range [*lo, *hi) of n items that thread ith of nth handles: contiguous,
 * sizes differing by at most one. */
static inline void ss_pool_split(long n, int ith, int nth, long *lo, long *hi) {
  long base = n / nth, rem = n % nth;
  *lo = ith * base + (ith < rem ? ith : rem);
  *hi = *lo + base + (ith < rem ? 1 : 0);
}

#endif
