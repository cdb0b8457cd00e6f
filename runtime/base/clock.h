/* The monotonic clock in seconds: step timings, latencies, deadlines. */
#ifndef SS_CLOCK_H
#define SS_CLOCK_H

#include <time.h>

static inline double ss_now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

#endif
