#include "runtime/base/stats.h"

#include <math.h>
#include <stdlib.h>

static int cmp_double(const void *a, const void *b) {
  const double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

void ss_sort_doubles(double *v, size_t n) {
  if (n > 1) qsort(v, n, sizeof *v, cmp_double);
}

double ss_percentile(const double *sorted, size_t n, double q) {
  if (n == 0) return 0;
  const double rank = q / 100.0 * (double)(n - 1);
  const size_t lo = (size_t)floor(rank);
  if (lo >= n - 1) return sorted[n - 1];
  const double frac = rank - (double)lo;
  /* numpy's _lerp: a + (b - a) * t, switched to b - (b - a) * (1 - t) for t >= 0.5,
   * so the result is exact at both ends. */
  const double a = sorted[lo], b = sorted[lo + 1], d = b - a;
  return frac >= 0.5 ? b - d * (1.0 - frac) : a + d * frac;
}
