#include "kernels/cpu/pool.h"

#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "runtime/base/status.h"

/* Spin iterations before a waiting thread sleeps (about 50-100 us on current
 * CPUs).  When the machine's cores are oversubscribed (more threads of all the
 * ranks on this node than cores), spinning only takes the core from a thread
 * that has work, so the pool sleeps at once (ss_pool_default_threads). */
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
  _Atomic int main_waiting; /* the caller sleeps on `pending` */
  int spin;                 /* spin iterations before sleeping */
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
      if (++spins < pool->spin) {
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
    /* The last worker wakes a sleeping caller (both sides use seq_cst: either
     * the caller sees pending == 0 or this sees main_waiting). */
    if (atomic_fetch_sub(&pool->pending, 1) == 1 && atomic_load(&pool->main_waiting))
      futex((_Atomic unsigned *)&pool->pending, FUTEX_WAKE_PRIVATE, 1);
  }
}

ss_pool *ss_pool_create(int n_threads) {
  if (n_threads < 1) n_threads = 1;
  ss_pool *p = calloc(1, sizeof *p);
  if (!p) return NULL;
  p->n = n_threads;
  p->spin = ss_pool_oversubscribed(n_threads) ? 0 : POOL_SPIN;
  const char *env = getenv("SS_POOL_SPIN");
  if (env && *env) p->spin = atoi(env) > 0 ? atoi(env) : 0;
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
  int spins = 0;
  for (;;) {
    int left = atomic_load(&p->pending);
    if (left == 0) break;
    if (++spins < p->spin) {
      cpu_relax();
      continue;
    }
    atomic_store(&p->main_waiting, 1);
    left = atomic_load(&p->pending);
    if (left != 0) futex((_Atomic unsigned *)&p->pending, FUTEX_WAIT_PRIVATE, (unsigned)left);
    atomic_store(&p->main_waiting, 0);
  }
}

/* Ranks of this job on this node, from the launcher's environment (Open MPI,
 * MPICH/Hydra, Slurm); 1 when not launched by one. */
static int local_ranks(void) {
  static const char *const vars[] = {"OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS",
                                     "SLURM_NTASKS_PER_NODE"};
  for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++) {
    const char *v = getenv(vars[i]);
    if (v && atoi(v) > 0) return atoi(v);
  }
  return 1;
}

static int cpus_usable(void) {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof set, &set) == 0 && CPU_COUNT(&set) > 0) return CPU_COUNT(&set);
  long nc = sysconf(_SC_NPROCESSORS_ONLN);
  return nc > 0 ? (int)nc : 1;
}

int ss_pool_default_threads(void) {
  int t = cpus_usable() / local_ranks();
  return t > 0 ? t : 1;
}

bool ss_pool_oversubscribed(int n_threads) {
  return (long)n_threads * local_ranks() > cpus_usable();
}
