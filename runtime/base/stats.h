/* Order statistics shared by the load generator, the planner's simulation and
 * the benchmarks, so a percentile means the same number everywhere. */
#ifndef SS_STATS_H
#define SS_STATS_H

#include <stddef.h>

/* Sorts v ascending. */
void ss_sort_doubles(double *v, size_t n);

/* The q-th percentile (0..100) of sorted[0..n) as numpy's default computes it:
 * linear interpolation between order statistics, exact at both ends; 0 when
 * n is 0. */
double ss_percentile(const double *sorted, size_t n, double q);

#endif
