/* Arrival schedules, generated up front from a seed so a run can be repeated
 * exactly.  The load generator sends requests at these times and the planner's
 * simulation lets them arrive at the same times, so `loadgen` and `plan` given
 * the same rate, burstiness and --seed see one and the same arrival sequence.
 *
 * Open loop: gaps between arrivals are Gamma(shape = B, scale = 1/(rate*B)),
 * whose mean is 1/rate and coefficient of variation 1/sqrt(B) (B = burstiness):
 * B = 1 is a Poisson process, B < 1 burstier, B > 1 smoother, B = inf constant
 * gaps.  This is the process of `vllm bench serve`; unlike vLLM we do not
 * rescale the gaps so that the last arrival lands exactly at count/rate, which
 * would make the gaps dependent on each other.
 *
 * Ramps change the rate along the run: by request index when the count is
 * fixed (as vLLM does), by elapsed time when the run is bounded by a duration. */
#ifndef SS_ARRIVALS_H
#define SS_ARRIVALS_H

#include <stddef.h>
#include <stdint.h>

typedef enum ss_ramp {
  SS_RAMP_NONE,
  SS_RAMP_LINEAR,      /* rate goes linearly from start to end */
  SS_RAMP_EXPONENTIAL, /* rate = start * (end/start)^progress */
} ss_ramp;

/* The most arrivals one schedule may hold (about 80 MB of times). */
#define SS_ARRIVALS_MAX_COUNT ((size_t)10 * 1000 * 1000)

typedef struct ss_arrivals_params {
  double rate;       /* requests per second, > 0; INFINITY sends all at t = 0 */
  double burstiness; /* gamma shape B > 0; INFINITY gives constant gaps */
  ss_ramp ramp;   /* with a ramp, rate is ignored */
  double ramp_start_rps, ramp_end_rps;
  size_t count;      /* arrivals; 0 = as many as fit in duration_s */
  double duration_s; /* > 0: no arrival at or after this time */
  uint64_t seed;
} ss_arrivals_params;

/* Fills *times_s (malloc'ed, caller frees) with *count non-decreasing arrival
 * times in seconds from the start of the run; the first arrival is at 0.
 * Errors: non-positive or NaN rates and burstiness, an infinite rate with only
 * a duration (unbounded), more than SS_ARRIVALS_MAX_COUNT arrivals. */
int ss_arrivals_build(const ss_arrivals_params *p, double **times_s, size_t *count);

/* The rate in force for request `index` of `count` (or at time t of duration
 * when count is 0): the ramp's rate, or p->rate. */
double ss_arrivals_rate_at(const ss_arrivals_params *p, size_t index, size_t count,
                              double t);

#endif
