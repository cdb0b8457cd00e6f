/* Per-request measurements and the run's summary statistics.
 *
 * Definitions follow `vllm bench serve` so that figures compare directly:
 *   TTFT  send -> first streamed chunk carrying text
 *   ITL   every gap between consecutive text chunks (all requests pooled)
 *   E2EL  send -> last text chunk
 *   TPOT  (E2EL - TTFT) / (output tokens - 1), for requests with > 1 token
 * Only successful requests enter the latency statistics.  Percentiles
 * (runtime/base/stats.h, shared with the planner) use
 * linear interpolation between closest ranks, numpy.percentile's default
 * (method "linear"): rank = p/100 * (n - 1).  std is the population standard
 * deviation (numpy.std, ddof = 0).  An empty set gives 0 everywhere, as
 * numpy does for vLLM's `np.mean(x or 0)`. */
#ifndef SS_LG_STATS_H
#define SS_LG_STATS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct ss_lg_result {
  double sched_s;     /* when the schedule wanted it sent (from run start) */
  double ready_s;     /* when it could be sent: schedule, or a free concurrency slot */
  double send_s;      /* when it was handed to the HTTP client */
  double ttft_s;      /* 0 if no text chunk arrived */
  double e2e_s;       /* send -> last text chunk */
  double *itls_s;     /* (itl_count) gaps between text chunks */
  size_t itl_count, itl_cap;
  size_t chunk_count;     /* text chunks received */
  int64_t input_tokens;   /* from usage, else the dataset's figure */
  int64_t output_tokens;  /* from usage, else chunk_count */
  int64_t cached_tokens;  /* usage.prompt_tokens_details.cached_tokens, -1 if not reported */
  bool input_from_usage, output_from_usage;
  int http_status;        /* 0 if no response */
  char *error;            /* NULL on success; malloc'ed message otherwise */
  size_t prompt_index;    /* which dataset entry was sent */
  int64_t session, turn;  /* multi-turn: which session and turn (from 0), else -1 */
} ss_lg_result;

/* Frees the arrays and message of n results (not the results array itself). */
void ss_lg_results_free(ss_lg_result *r, size_t n);

typedef struct ss_lg_dist {
  double mean, median, std, p50, p90, p95, p99, max;
  size_t count;
} ss_lg_dist;

/* Sorts values in place and fills *out; values are scaled by `scale` first
 * (1000 for seconds -> milliseconds). */
void ss_lg_dist_compute(double *values, size_t count, double scale, ss_lg_dist *out);

/* Service-level objectives for goodput, in milliseconds; < 0 = not set.  A
 * request is good when it succeeded and meets every objective that is set
 * (with vLLM's convention that a 1-token request has TPOT 0). */
typedef struct ss_lg_slo {
  double ttft_ms, tpot_ms, e2el_ms;
} ss_lg_slo;

typedef struct ss_lg_summary {
  double duration_s;
  size_t requests, completed, failed, good;
  bool has_goodput;
  int64_t total_input, total_output;
  double request_throughput, request_goodput, output_throughput, total_token_throughput;
  ss_lg_dist ttft_ms, tpot_ms, itl_ms, e2el_ms;
  ss_lg_dist send_lag_ms; /* send - ready over all requests: the generator's own lag */
  size_t output_from_usage, output_from_chunks; /* how output tokens were counted */
  size_t max_concurrent;  /* peak requests in flight (successful ones, as vLLM) */
  int64_t total_cached;   /* sum of usage cached_tokens over successful requests */
  size_t cached_reported; /* successful requests whose usage carried cached_tokens */
} ss_lg_summary;

/* Summarises n results over a run of duration_s seconds; slo may be NULL. */
int ss_lg_summarize(const ss_lg_result *r, size_t n, double duration_s, const ss_lg_slo *slo,
                    ss_lg_summary *out);

#endif
