#include "runtime/planner/arrivals.h"

#include <math.h>
#include <stdlib.h>

#include "runtime/base/status.h"
#include "runtime/base/xrng.h"

/* Salt of the schedule's random stream (the dataset uses another one). */
#define SCHEDULE_SALT 1

double ss_arrivals_rate_at(const ss_arrivals_params *p, size_t index, size_t count,
                              double t) {
  if (p->ramp == SS_RAMP_NONE) return p->rate;
  double progress;
  if (count > 0) progress = (double)index / (double)(count > 1 ? count - 1 : 1);
  else progress = p->duration_s > 0 ? fmin(t / p->duration_s, 1.0) : 0.0;
  if (p->ramp == SS_RAMP_LINEAR)
    return p->ramp_start_rps + (p->ramp_end_rps - p->ramp_start_rps) * progress;
  return p->ramp_start_rps * pow(p->ramp_end_rps / p->ramp_start_rps, progress);
}

static int check_params(const ss_arrivals_params *p) {
  if (p->ramp != SS_RAMP_NONE) {
    if (!(p->ramp_start_rps > 0) || !(p->ramp_end_rps > 0) || !isfinite(p->ramp_start_rps) ||
        !isfinite(p->ramp_end_rps))
      return ss_error(SS_ERR_RANGE, "ramp rates must be finite and > 0 (got %g -> %g req/s)",
                      p->ramp_start_rps, p->ramp_end_rps);
  } else if (!(p->rate > 0)) {
    return ss_error(SS_ERR_RANGE, "request rate must be > 0 (got %g req/s)", p->rate);
  }
  if (!(p->burstiness > 0))
    return ss_error(SS_ERR_RANGE, "burstiness must be > 0 (got %g)", p->burstiness);
  if (!(p->duration_s >= 0) || !isfinite(p->duration_s))
    return ss_error(SS_ERR_RANGE, "duration must be finite and >= 0 (got %g s)", p->duration_s);
  if (p->count == 0 && p->duration_s <= 0)
    return ss_error(SS_ERR_INVALID, "a schedule needs a request count or a duration");
  if (p->count == 0 && p->ramp == SS_RAMP_NONE && isinf(p->rate))
    return ss_error(SS_ERR_INVALID,
                    "an infinite request rate with only a duration has no end: give a count");
  if (p->count > SS_ARRIVALS_MAX_COUNT)
    return ss_error(SS_ERR_RANGE, "%zu requests exceed the limit of %zu", p->count,
                    SS_ARRIVALS_MAX_COUNT);
  return SS_OK;
}

int ss_arrivals_build(const ss_arrivals_params *p, double **times_s, size_t *count) {
  *times_s = NULL;
  *count = 0;
  int rc = check_params(p);
  if (rc) return rc;
  ss_xrng rng;
  ss_xrng_seed(&rng, p->seed, SCHEDULE_SALT);

  size_t cap = p->count ? p->count : 1024, n = 0;
  double *t = malloc(cap * sizeof *t);
  if (!t) return ss_error(SS_ERR_NOMEM, "schedule: out of memory for %zu arrivals", cap);
  double now = 0;
  for (;;) {
    if (p->count && n == p->count) break;
    if (p->duration_s > 0 && now >= p->duration_s) break;
    if (n == cap) {
      if (cap >= SS_ARRIVALS_MAX_COUNT) {
        free(t);
        return ss_error(SS_ERR_RANGE,
                        "the schedule holds more than %zu arrivals: lower the rate or the "
                        "duration", SS_ARRIVALS_MAX_COUNT);
      }
      size_t ncap = cap * 2 < SS_ARRIVALS_MAX_COUNT ? cap * 2 : SS_ARRIVALS_MAX_COUNT;
      double *nt = realloc(t, ncap * sizeof *t);
      if (!nt) {
        free(t);
        return ss_error(SS_ERR_NOMEM, "schedule: out of memory for %zu arrivals", ncap);
      }
      t = nt;
      cap = ncap;
    }
    t[n++] = now;
    /* The gap after arrival n-1 uses the rate in force at that arrival. */
    double rate = ss_arrivals_rate_at(p, n - 1, p->count, now), gap;
    if (isinf(rate)) gap = 0;
    else if (isinf(p->burstiness)) gap = 1.0 / rate;
    else gap = ss_xrng_gamma(&rng, p->burstiness) / (rate * p->burstiness);
    now += gap;
  }
  *times_s = t;
  *count = n;
  return SS_OK;
}
