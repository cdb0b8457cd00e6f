/* Seeded random numbers for the load generator and the planner's simulation:
 * xoshiro256** seeded through splitmix64, so a --seed gives the same schedule
 * and prompts on every machine and libc (rand() and random() differ between C
 * libraries). */
#ifndef SS_XRNG_H
#define SS_XRNG_H

#include <math.h>
#include <stdint.h>

typedef struct ss_xrng {
  uint64_t s[4];
} ss_xrng;

static inline uint64_t ss_xrng_splitmix64(uint64_t *x) {
  uint64_t z = (*x += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

/* Different streams for one seed (schedule, dataset) get different salts. */
static inline void ss_xrng_seed(ss_xrng *r, uint64_t seed, uint64_t salt) {
  uint64_t x = seed ^ (salt * 0xD1B54A32D192ED03ull);
  for (int i = 0; i < 4; i++) r->s[i] = ss_xrng_splitmix64(&x);
}

static inline uint64_t ss_xrng_rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

static inline uint64_t ss_xrng_next(ss_xrng *r) {
  uint64_t *s = r->s;
  uint64_t result = ss_xrng_rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
  s[2] ^= s[0];
  s[3] ^= s[1];
  s[1] ^= s[2];
  s[0] ^= s[3];
  s[2] ^= t;
  s[3] = ss_xrng_rotl(s[3], 45);
  return result;
}

/* Uniform in [0, 1) with 53 random bits. */
static inline double ss_xrng_uniform(ss_xrng *r) {
  return (double)(ss_xrng_next(r) >> 11) * 0x1.0p-53;
}

/* Uniform in (0, 1): safe to take the logarithm of. */
static inline double ss_xrng_open(ss_xrng *r) {
  return ((double)(ss_xrng_next(r) >> 11) + 0.5) * 0x1.0p-53;
}

/* Uniform integer in [lo, hi] (hi >= lo); the modulo bias is below 2^-40 for
 * the ranges used here (lengths, token ids, indices). */
static inline int64_t ss_xrng_range(ss_xrng *r, int64_t lo, int64_t hi) {
  uint64_t span = (uint64_t)(hi - lo) + 1;
  return lo + (int64_t)(span ? ss_xrng_next(r) % span : ss_xrng_next(r));
}

static inline double ss_xrng_normal(ss_xrng *r) {
  double u = ss_xrng_open(r), v = ss_xrng_uniform(r);
  return sqrt(-2.0 * log(u)) * cos(2.0 * M_PI * v);
}

/* Gamma(shape, 1) by Marsaglia and Tsang (2000), "A simple method for
 * generating gamma variables"; shape < 1 uses Gamma(shape + 1) * U^(1/shape). */
static inline double ss_xrng_gamma(ss_xrng *r, double shape) {
  if (shape < 1.0) {
    double g = ss_xrng_gamma(r, shape + 1.0);
    return g * pow(ss_xrng_open(r), 1.0 / shape);
  }
  double d = shape - 1.0 / 3.0, c = 1.0 / sqrt(9.0 * d);
  for (;;) {
    double x, v;
    do {
      x = ss_xrng_normal(r);
      v = 1.0 + c * x;
    } while (v <= 0);
    v = v * v * v;
    double u = ss_xrng_open(r);
    if (u < 1.0 - 0.0331 * x * x * x * x) return d * v;
    if (log(u) < 0.5 * x * x + d * (1.0 - v + log(v))) return d * v;
  }
}

#endif
