/* The CUDA backend's launch planning (kernels/cuda/launch_plan.h): plain C,
 * built on every machine so the unit tests run without a GPU. */
#include "kernels/cuda/launch_plan.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kernels/kernels.h"

static int32_t pow2_at_least(int64_t x) {
  int32_t w = 1;
  while (w < x) w *= 2;
  return w;
}

int32_t ss_cuda_plan_tiles(const ss_token_loc *loc, ss_cuda_tile *tiles, int32_t *tile_max) {
  int32_t n_tiles = 0, longest = 0;
  for (int64_t t = 0; t < loc->n; t++) {
    ss_cuda_tile *cur = n_tiles ? &tiles[n_tiles - 1] : NULL;
    if (cur && cur->count < SS_CUDA_TILE_MAX && loc->block_table[t] == loc->block_table[cur->t0] &&
        loc->pos[t] == loc->pos[cur->t0] + cur->count) {
      cur->count++;
    } else {
      tiles[n_tiles++] = (ss_cuda_tile){.t0 = (int32_t)t, .count = 1};
      cur = &tiles[n_tiles - 1];
    }
    if (cur->count > longest) longest = cur->count;
  }
  *tile_max = longest;
  return n_tiles;
}

int32_t ss_cuda_plan_width(const ss_token_loc *loc, int32_t block_size) {
  /* A tile's last position is one of the batch's positions, so the largest
   * position bounds every tile's need. */
  int64_t need = 1;
  for (int64_t t = 0; t < loc->n; t++)
    if (loc->pos[t] / block_size + 1 > need) need = loc->pos[t] / block_size + 1;
  return pow2_at_least(need);
}

void ss_cuda_plan_tables(const ss_token_loc *loc, int32_t block_size, const ss_cuda_tile *tiles,
                         int32_t n_tiles, int32_t width, int32_t *bt) {
  memset(bt, 0, (size_t)loc->n * (size_t)width * sizeof *bt);
  for (int32_t i = 0; i < n_tiles; i++) {
    const ss_cuda_tile *tl = &tiles[i];
    const int32_t last = tl->t0 + tl->count - 1;
    const size_t nb = (size_t)(loc->pos[last] / block_size + 1);
    for (int32_t t = tl->t0; t <= last; t++)
      memcpy(bt + (size_t)t * width, loc->block_table[t], nb * sizeof *bt);
  }
}

int32_t ss_cuda_plan_runs(const ss_cuda_tile *tiles, int32_t n_tiles, int32_t max_tokens,
                          ss_cuda_run *runs) {
  int32_t n_runs = 0, i = 0;
  while (i < n_tiles) {
    const int32_t tok0 = tiles[i].t0;
    int32_t j = i;
    while (j < n_tiles && tiles[j].t0 + tiles[j].count <= tok0 + max_tokens) j++;
    if (j == i) j = i + 1; /* a tile longer than a launch (not made: TILE_MAX is smaller) */
    const ss_cuda_tile *last = &tiles[j - 1];
    runs[n_runs++] = (ss_cuda_run){.tile0 = i, .n_tiles = j - i, .tok0 = tok0,
                                   .n_tok = last->t0 + last->count - tok0};
    i = j;
  }
  return n_runs;
}

bool ss_cuda_plan_key(const ss_token_loc *loc, int64_t n_logits, int32_t block_size,
                      ss_cuda_graph_key *key) {
  bool decode = true;
  for (int64_t t = 1; t < loc->n && decode; t++)
    if (loc->block_table[t] == loc->block_table[t - 1] && loc->pos[t] == loc->pos[t - 1] + 1)
      decode = false; /* two tokens of one sequence: a prefill chunk */
  const int64_t n_runs = (loc->n + SS_CUDA_ATTN_MAX_TOKENS - 1) / SS_CUDA_ATTN_MAX_TOKENS;
  *key = (ss_cuda_graph_key){{loc->n, n_logits, ss_cuda_plan_width(loc, block_size), block_size,
                              decode ? n_runs : -1}};
  return decode;
}

/* ---- waiting with a deadline ------------------------------------------------------ */

int ss_cuda_parse_timeout(const char *value, double *out_s) {
  if (!value || !*value) {
    *out_s = SS_CUDA_STEP_TIMEOUT_DEFAULT_S;
    return 0;
  }
  char *end = NULL;
  const double v = strtod(value, &end);
  if (end == value) return -1;
  while (*end == ' ' || *end == '\t') end++;
  if (*end || !isfinite(v) || v < 0.0 || v > 1e6) return -1;
  *out_s = v;
  return 0;
}

static double mono_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

int ss_cuda_poll_wait(ss_cuda_query_fn query, void *arg, double timeout_s, double *waited_s) {
  const double start = mono_s();
  long sleep_ns = 1000;
  int rc;
  for (;;) {
    rc = query(arg);
    if (rc != 1) break;
    if (timeout_s > 0.0 && mono_s() - start >= timeout_s) {
      rc = SS_CUDA_WAIT_TIMEOUT;
      break;
    }
    struct timespec ts = {0, sleep_ns};
    nanosleep(&ts, NULL);
    if (sleep_ns < 1000000) sleep_ns *= 2;
  }
  if (waited_s) *waited_s = mono_s() - start;
  return rc;
}
