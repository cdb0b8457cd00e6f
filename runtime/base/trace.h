/* Timelines: spans of this process's work in Chrome's trace-event format
 * ("ph":"X" complete events; chrome://tracing and Perfetto open it).
 *
 * Off unless ss_trace_start is called: a span site costs one load and one
 * predictable branch at each end (SS_TRACE_BEGIN / ss_trace_on()).  On, spans
 * go to one buffer allocated at start, SS_TRACE_MAX_EVENTS long; a slot is
 * claimed with an atomic add, so any thread may record.  When it is full the
 * later spans are dropped and counted (ss_trace_dropped): the timeline keeps
 * its beginning, and the file says how many spans are missing.
 *
 * Times are CLOCK_MONOTONIC (ss_now_s), written in microseconds as they are:
 * the processes of one host share that clock, so their tracks line up without
 * any exchange.  Hosts do not share it; see README "Timelines".
 *
 * Each process is one trace "process" (pid = its rank) with one track (tid)
 * per thread that records, named by ss_trace_thread_name. */
#ifndef SS_TRACE_H
#define SS_TRACE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "runtime/base/clock.h"

/* Spans one process keeps at most (88 bytes each on 64-bit hosts). */
#define SS_TRACE_MAX_EVENTS (1 << 20)
/* Arguments one span carries at most. */
#define SS_TRACE_MAX_ARGS 3

/* Set by ss_trace_start, cleared by ss_trace_serialize and ss_trace_stop;
 * read it through ss_trace_on. */
extern bool ss_trace_enabled_;

static inline bool ss_trace_on(void) { return __builtin_expect(ss_trace_enabled_, 0); }

/* A span's start time, or 0 when tracing is off. */
#define SS_TRACE_BEGIN(var) const double var = ss_trace_on() ? ss_now_s() : 0.0

/* Starts recording for process `rank` (its pid in the trace), with max_events
 * slots (0: SS_TRACE_MAX_EVENTS).  Returns 0 or SS_ERR_NOMEM. */
int ss_trace_start(int rank, size_t max_events);
/* Names this process's trace process ("rank 1 (stage 0, tp rank 1)"). */
void ss_trace_process_name(const char *name);
/* Names the calling thread's track ("engine", "worker"). */
void ss_trace_thread_name(const char *name);

/* One argument of a span: a key (a string literal) and its value. */
typedef struct ss_trace_arg {
  const char *key;
  int64_t val;
} ss_trace_arg;

/* One span [t0, t1] (ss_now_s seconds) on the calling thread's track.  name
 * and cat (the category: "step", "compute", "comm", "idle", "sched") and the
 * argument keys must be string literals (kept as pointers); at most
 * SS_TRACE_MAX_ARGS of the n_args arguments are kept:
 *   ss_trace_span("send", "comm", t0, ss_now_s(),
 *                 (ss_trace_arg[]){{"bytes", nbytes}, {"peer", peer}}, 2); */
void ss_trace_span(const char *name, const char *cat, double t0, double t1,
                   const ss_trace_arg *args, int n_args);

/* Spans recorded and dropped (the buffer was full). */
size_t ss_trace_count(void);
uint64_t ss_trace_dropped(void);

/* Stops recording, then writes this process's spans and track names as
 * trace-event JSON objects separated by ",\n" (no brackets: the caller joins
 * the processes' parts).  *out is malloc'd, *nbytes its length.
 * Returns 0 or SS_ERR_NOMEM. */
int ss_trace_serialize(char **out, size_t *nbytes);

/* Writes a whole trace file to f: {"traceEvents": [the parts, in order], ...}
 * with the total of dropped spans in "otherData".  Returns 0 or SS_ERR_IO
 * with a message naming `path`. */
int ss_trace_write_file(FILE *f, const char *path, const char *const *parts,
                        const size_t *nbytes, int n_parts, uint64_t dropped);

/* Stops recording and frees the buffer. */
void ss_trace_stop(void);

#endif
