/* The load generator's output: the summary table, the result file with the
 * field names `vllm bench serve --save-result` writes (so tools reading those
 * files read ours), and the rate sweep's table and plot. */
#ifndef SS_LG_REPORT_H
#define SS_LG_REPORT_H

#include <stdint.h>
#include <stdio.h>

#include "bench/loadgen/client.h"
#include "bench/loadgen/stats.h"

typedef struct ss_lg_report_info {
  const char *backend;       /* "openai" or "openai-chat", as vLLM names them */
  const char *base_url, *endpoint, *model_id, *tokenizer_id, *dataset_name, *label;
  double request_rate;       /* INFINITY for none */
  double burstiness;
  int64_t max_concurrency;   /* 0 = none */
  size_t num_prompts;
  double duration_limit_s;   /* 0 = none */
  const char *ramp;          /* NULL or "linear" / "exponential" */
  double ramp_start_rps, ramp_end_rps;
  const ss_lg_slo *slo;      /* NULL when --goodput is not given */
  uint64_t seed;
  /* The server's prefix-cache counters over the run (after - before /metrics);
   * NULL when they were not read. */
  const ss_lg_cache_counters *cache;
} ss_lg_report_info;

/* The readable summary (vLLM's layout plus the generator's send lag and the
 * most frequent errors). */
void ss_lg_report_print(FILE *f, const ss_lg_report_info *info, const ss_lg_summary *s,
                        const ss_lg_run *run);

/* Writes the result JSON to path.  Errors name the path. */
int ss_lg_report_save(const char *path, const ss_lg_report_info *info, const ss_lg_summary *s,
                      const ss_lg_run *run);

typedef struct ss_lg_sweep_row {
  double offered_rps;
  ss_lg_summary s;
} ss_lg_sweep_row;

/* The sweep table, readable, to f. */
void ss_lg_sweep_print(FILE *f, const ss_lg_sweep_row *rows, size_t count, bool has_goodput);
/* Writes PREFIX.tsv (the table), PREFIX.gp (a gnuplot script) and runs gnuplot
 * to draw PREFIX.png or PREFIX.svg (format "png" or "svg"): latency percentiles
 * and throughput / goodput against offered load.  *plot_path receives the
 * plot's path (malloc'ed) on success.  Without gnuplot the table and script
 * are still written and SS_ERR_UNSUPPORTED says so. */
int ss_lg_sweep_write(const char *prefix, const char *format, const char *title,
                      const ss_lg_sweep_row *rows, size_t count, char **plot_path);

#endif
