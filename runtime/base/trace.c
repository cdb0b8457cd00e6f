/* Timelines (trace.h): a fixed buffer of spans, filled lock-free, written out
 * as Chrome trace-event JSON. */
#include "runtime/base/trace.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/base/status.h"

typedef struct trace_event {
  const char *name, *cat;
  double t0, t1;                           /* seconds, CLOCK_MONOTONIC */
  int tid;
  int n_args;
  const char *key[SS_TRACE_MAX_ARGS];
  int64_t val[SS_TRACE_MAX_ARGS];
} trace_event;

enum { MAX_THREADS = 64, NAME_LEN = 64 };

bool ss_trace_enabled_;

static trace_event *g_events;             /* (g_cap) */
static size_t g_cap;
static atomic_size_t g_next;              /* slots claimed, may pass g_cap */
static atomic_uint_fast64_t g_dropped;
static int g_rank;
static char g_process[NAME_LEN];

/* Tracks: a small number per recording thread, from 1, and their names. */
static atomic_int g_n_threads;
static _Thread_local int t_tid;
static pthread_mutex_t g_names_mu = PTHREAD_MUTEX_INITIALIZER;
static char g_thread_names[MAX_THREADS + 1][NAME_LEN];

static int my_tid(void) {
  if (!t_tid) t_tid = atomic_fetch_add(&g_n_threads, 1) + 1;
  return t_tid;
}

int ss_trace_start(int rank, size_t max_events) {
  ss_trace_stop();
  g_cap = max_events ? max_events : SS_TRACE_MAX_EVENTS;
  /* Untouched pages cost no memory: a short run uses a few of them. */
  g_events = malloc(g_cap * sizeof *g_events);
  if (!g_events) {
    const size_t cap = g_cap;
    g_cap = 0;
    return ss_error(SS_ERR_NOMEM, "trace: cannot allocate %zu spans", cap);
  }
  g_rank = rank;
  atomic_store(&g_next, 0);
  atomic_store(&g_dropped, 0);
  snprintf(g_process, sizeof g_process, "rank %d", rank);
  ss_trace_enabled_ = true;
  return SS_OK;
}

void ss_trace_process_name(const char *name) {
  snprintf(g_process, sizeof g_process, "%s", name);
}

void ss_trace_thread_name(const char *name) {
  const int tid = my_tid();
  if (tid > MAX_THREADS) return;
  pthread_mutex_lock(&g_names_mu);
  snprintf(g_thread_names[tid], NAME_LEN, "%s", name);
  pthread_mutex_unlock(&g_names_mu);
}

void ss_trace_span(const char *name, const char *cat, double t0, double t1,
                   const ss_trace_arg *args, int n_args) {
  if (!ss_trace_enabled_) return;
  const size_t i = atomic_fetch_add_explicit(&g_next, 1, memory_order_relaxed);
  if (i >= g_cap) {
    atomic_fetch_add_explicit(&g_dropped, 1, memory_order_relaxed);
    return;
  }
  trace_event *e = &g_events[i];
  e->name = name;
  e->cat = cat;
  e->t0 = t0;
  e->t1 = t1 >= t0 ? t1 : t0;
  e->tid = my_tid();
  e->n_args = n_args < 0 ? 0 : n_args > SS_TRACE_MAX_ARGS ? SS_TRACE_MAX_ARGS : n_args;
  for (int a = 0; a < e->n_args; a++) {
    e->key[a] = args[a].key;
    e->val[a] = args[a].val;
  }
}

size_t ss_trace_count(void) {
  const size_t n = atomic_load(&g_next);
  return n < g_cap ? n : g_cap;
}

uint64_t ss_trace_dropped(void) { return atomic_load(&g_dropped); }

/* Names come from our own code, but a process name may hold a path: escape
 * what JSON needs escaped. */
static void put_json_string(FILE *f, const char *s) {
  fputc('"', f);
  for (; *s; s++) {
    const unsigned char c = (unsigned char)*s;
    if (c == '"' || c == '\\') fprintf(f, "\\%c", c);
    else if (c < 0x20) fprintf(f, "\\u%04x", c);
    else fputc(c, f);
  }
  fputc('"', f);
}

int ss_trace_serialize(char **out, size_t *nbytes) {
  ss_trace_enabled_ = false;
  *out = NULL;
  *nbytes = 0;
  FILE *f = open_memstream(out, nbytes);
  if (!f) return ss_error(SS_ERR_NOMEM, "trace: out of memory writing the spans");
  /* Metadata: the process (sorted by rank) and its tracks. */
  fprintf(f, "{\"ph\":\"M\",\"pid\":%d,\"tid\":0,\"name\":\"process_name\",\"args\":{\"name\":",
          g_rank);
  put_json_string(f, g_process);
  fprintf(f, "}},\n{\"ph\":\"M\",\"pid\":%d,\"tid\":0,\"name\":\"process_sort_index\","
          "\"args\":{\"sort_index\":%d}}", g_rank, g_rank);
  const int nt = atomic_load(&g_n_threads);
  pthread_mutex_lock(&g_names_mu);
  for (int t = 1; t <= nt && t <= MAX_THREADS; t++) {
    fprintf(f, ",\n{\"ph\":\"M\",\"pid\":%d,\"tid\":%d,\"name\":\"thread_name\",\"args\":{\"name\":",
            g_rank, t);
    put_json_string(f, g_thread_names[t][0] ? g_thread_names[t] : "thread");
    fputs("}}", f);
  }
  pthread_mutex_unlock(&g_names_mu);
  const size_t n = ss_trace_count();
  for (size_t i = 0; i < n; i++) {
    const trace_event *e = &g_events[i];
    fprintf(f, ",\n{\"ph\":\"X\",\"pid\":%d,\"tid\":%d,\"name\":\"%s\",\"cat\":\"%s\","
            "\"ts\":%.3f,\"dur\":%.3f", g_rank, e->tid, e->name, e->cat, e->t0 * 1e6,
            e->t1 * 1e6 - e->t0 * 1e6);
    if (e->n_args) {
      fputs(",\"args\":{", f);
      for (int a = 0; a < e->n_args; a++)
        fprintf(f, "%s\"%s\":%lld", a ? "," : "", e->key[a], (long long)e->val[a]);
      fputc('}', f);
    }
    fputc('}', f);
  }
  if (fclose(f) != 0 || !*out) {
    free(*out);
    *out = NULL;
    *nbytes = 0;
    return ss_error(SS_ERR_NOMEM, "trace: out of memory writing the spans");
  }
  return SS_OK;
}

int ss_trace_write_file(FILE *f, const char *path, const char *const *parts,
                        const size_t *nbytes, int n_parts, uint64_t dropped) {
  fputs("{\"traceEvents\":[\n", f);
  bool first = true;
  for (int p = 0; p < n_parts; p++) {
    if (!nbytes[p]) continue;
    if (!first) fputs(",\n", f);
    fwrite(parts[p], 1, nbytes[p], f);
    first = false;
  }
  fprintf(f, "\n],\"displayTimeUnit\":\"ms\",\"otherData\":{\"clock\":\"CLOCK_MONOTONIC\","
          "\"dropped_spans\":%llu,\"max_spans_per_rank\":%zu}}\n",
          (unsigned long long)dropped, g_cap);
  if (fflush(f) != 0 || ferror(f))
    return ss_error(SS_ERR_IO, "--trace %s: write failed", path);
  return SS_OK;
}

void ss_trace_stop(void) {
  ss_trace_enabled_ = false;
  free(g_events);
  g_events = NULL;
  g_cap = 0;
}
