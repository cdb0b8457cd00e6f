/* The load generator's HTTP side: one thread drives every request through
 * libcurl's multi interface, sends each at its scheduled time (or when a
 * concurrency slot frees), and times the streamed reply (SSE) chunk by chunk
 * with CLOCK_MONOTONIC.
 *
 * A request fails, and the run goes on, when the connection fails, the status
 * is not 2xx, the stream carries an error object, is not SSE, or ends before
 * "data: [DONE]".  Failures are recorded with a one-line message. */
#ifndef SS_LG_CLIENT_H
#define SS_LG_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "bench/loadgen/dataset.h"
#include "bench/loadgen/sse.h"
#include "bench/loadgen/stats.h"

/* Call once per process before anything else here (libcurl's global init). */
int ss_lg_client_global_init(void);
void ss_lg_client_global_cleanup(void);

/* Builds the body of session `session`'s turn `turn` (both from 0) into *body
 * (malloc'ed JSON); replies (turn) holds the text the server streamed back
 * for each earlier turn of the session (p NUL-terminated, nbytes its length). */
typedef int (*ss_lg_turn_body_fn)(void *ctx, size_t session, size_t turn,
                                  const ss_lg_text *replies, char **body);

typedef struct ss_lg_client_config {
  const char *url;          /* full URL: base + endpoint */
  const char *api_key;      /* NULL: no Authorization header */
  const char *const *bodies;/* (body_count) JSON request bodies, one per prompt */
  const ss_lg_prompt *prompts; /* (body_count) for input lengths without usage */
  size_t body_count;        /* request i sends body i % body_count */
  const double *sched_s;    /* (count) send times; NULL = send whenever a slot is free */
  size_t count;             /* requests to send; 0 with sched_s NULL = until duration_s */
  double duration_s;        /* > 0: send nothing at or after this time */
  int64_t max_concurrency;  /* 0 = unlimited */
  double request_timeout_s; /* per request, 0 = none */
  double connect_timeout_s;
  /* Multi-turn sessions when turns > 0: `count` sessions start at sched_s
   * (count, required); prompts (body_count = count * turns) are session-major
   * and bodies is unused.  A session's next turn is due think_time_s after its
   * reply; a failed turn ends the session. */
  size_t turns;
  double think_time_s;
  ss_lg_turn_body_fn turn_body;
  void *turn_body_ctx;
  bool progress;            /* progress bar on stderr */
  const char *progress_label;
} ss_lg_client_config;

typedef struct ss_lg_run {
  ss_lg_result *results;    /* (count) in send order */
  size_t count;
  double duration_s;        /* first send -> last completion */
  size_t sessions, turns;   /* multi-turn: as configured, else 0 */
  size_t sessions_cut;      /* sessions ended by a failed turn */
  size_t turns_unsent;      /* the turns those sessions did not send */
} ss_lg_run;

/* Runs the load.  Fails only on set-up errors (out of memory, libcurl); a
 * failed request is a result with an error. */
int ss_lg_client_run(const ss_lg_client_config *cfg, ss_lg_run *out);
void ss_lg_run_free(ss_lg_run *r);

/* GET base_url + "/v1/models": the first model's id (malloc'ed) in *model_id.
 * A connection failure or HTTP error is SS_ERR_COMM with a message naming the
 * URL and the cause; *http_status is set when a response came (else 0). */
int ss_lg_fetch_first_model(const char *base_url, const char *api_key, double timeout_s,
                            char **model_id, int *http_status);

/* GET base_url + "/metrics" (Prometheus text) into *body (malloc'ed, NUL-
 * terminated).  Errors as ss_lg_fetch_first_model. */
int ss_lg_fetch_metrics(const char *base_url, const char *api_key, double timeout_s,
                        char **body, int *http_status);

/* The prefix cache's counters in a Prometheus text exposition: queries and
 * hits in tokens, summed over label sets.  shardserve:prefix_cache_queries_total
 * / _hits_total, else vLLM's vllm:prefix_cache_queries(_total) /
 * vllm:prefix_cache_hits(_total).  *found is false when neither pair is there. */
typedef struct ss_lg_cache_counters {
  bool found;
  const char *family; /* "shardserve" or "vllm" */
  double queries, hits;
} ss_lg_cache_counters;
void ss_lg_parse_cache_counters(const char *text, ss_lg_cache_counters *out);

#endif
