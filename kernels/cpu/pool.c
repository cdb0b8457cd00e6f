#include "pool.h"

#include <linux/futex.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "runtime/status.h"

/* Spin iterations before a worker sleeps (about 50-100 us on current CPUs). */
#define POOL_SPIN 20000

struct ss_pool {
  int n;
  pthread_t *threads;
  ss_pool_fn fn;
  void *arg;
  _Atomic unsigned gen;     /* bumped to start a job */
  _Atomic int pending;      /* workers still running the current job */
  _Atomic int stop;
  _Atomic int sleepers;     /* workers in (or entering) futex wait */
};

static long futex(_Atomic unsigned *addr, int op, unsigned val) {
  return syscall(SYS_futex, (unsigned *)addr, op, val, NULL, NULL, 0);
}

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

typedef struct worker_arg {
  ss_pool *pool;
  int ith;
} worker_arg;

static void *worker_main(void *p) {
  worker_arg wa = *(worker_arg *)p;
  free(p);
  ss_pool *pool = wa.pool;
  unsigned seen = 0;
  for (;;) {
    unsigned g;
    int spins = 0;
    while ((g = atomic_load_explicit(&pool->gen, memory_order_acquire)) == seen) {
      if (++spins < POOL_SPIN) {
        cpu_relax();
      } else {
        /* The kernel re-checks gen == seen, so a job posted between our check
         * and the wait is never missed; the poster sees sleepers > 0 and wakes. */
        atomic_fetch_add(&pool->sleepers, 1);
        futex(&pool->gen, FUTEX_WAIT_PRIVATE, seen);
        atomic_fetch_sub(&pool->sleepers, 1);
      }
    }
    seen = g;
    if (atomic_load(&pool->stop)) return NULL;
    pool->fn(pool->arg, wa.ith, pool->n);
    atomic_fetch_sub_explicit(&pool->pending, 1, memory_order_release);
  }
}

ss_pool *ss_pool_create(int n_threads) {
  if (n_threads < 1) n_threads = 1;
  ss_pool *p = calloc(1, sizeof *p);
  if (!p) return NULL;
  p->n = n_threads;
  p->threads = calloc((size_t)n_threads, sizeof *p->threads);
  if (!p->threads) {
    free(p);
    return NULL;
  }
  for (int i = 1; i < n_threads; i++) {
    worker_arg *wa = malloc(sizeof *wa);
    if (!wa) goto fail;
    wa->pool = p;
    wa->ith = i;
    if (pthread_create(&p->threads[i], NULL, worker_main, wa) != 0) {
      free(wa);
      ss_error(SS_ERR_INTERNAL, "cannot start thread %d of %d", i, n_threads);
      p->n = i; /* stop only the threads that exist */
      goto fail;
    }
  }
  return p;
fail:
  ss_pool_free(p);
  return NULL;
}

void ss_pool_free(ss_pool *p) {
  if (!p) return;
  atomic_store(&p->stop, 1);
  atomic_fetch_add_explicit(&p->gen, 1, memory_order_release);
  futex(&p->gen, FUTEX_WAKE_PRIVATE, INT32_MAX);
  for (int i = 1; i < p->n; i++) pthread_join(p->threads[i], NULL);
  free(p->threads);
  free(p);
}

int ss_pool_size(const ss_pool *p) { return p->n; }

void ss_pool_run(ss_pool *p, ss_pool_fn fn, void *arg) {
  if (p->n == 1) {
    fn(arg, 0, 1);
    return;
  }
  p->fn = fn;
  p->arg = arg;
  atomic_store_explicit(&p->pending, p->n - 1, memory_order_relaxed);
  atomic_fetch_add(&p->gen, 1);
  if (atomic_load(&p->sleepers) > 0) futex(&p->gen, FUTEX_WAKE_PRIVATE, INT32_MAX);
  fn(arg, 0, p->n);
  while (atomic_load_explicit(&p->pending, memory_order_acquire) != 0) cpu_relax();
}
