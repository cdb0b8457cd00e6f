/* shardserve loadgen's flags: the options struct, --help and the parser
 * (launcher/loadgen_opts.c); the command itself is launcher/cmd_loadgen.c. */
#ifndef SS_LOADGEN_OPTS_H
#define SS_LOADGEN_OPTS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "bench/loadgen/report.h"
#include "runtime/planner/arrivals.h"

#define SS_LOADGEN_MAX_SWEEP 64

typedef struct ss_loadgen_opts {
  const char *url, *endpoint, *model, *api_key, *label;
  double request_timeout_s;
  double rate, burstiness, duration_s;
  int64_t max_concurrency, num_prompts;
  bool num_prompts_set;
  ss_ramp ramp;
  double ramp_start, ramp_end;
  uint64_t seed;
  double sweep[SS_LOADGEN_MAX_SWEEP];
  size_t sweep_count;
  const char *sweep_output, *plot_format;
  const char *dataset, *dataset_path, *prompt, *tokenizer_model, *extra_body, *save_result;
  int64_t input_len, output_len, vocab_size, sharegpt_output_len;
  double range_ratio, temperature;
  int64_t prefix_len, suffix_len, num_prefixes, prefix_output_len; /* prefix_repetition */
  double trace_time_scale;
  int64_t trace_block_size;
  int64_t mt_sessions, mt_turns, mt_user_len, mt_output_len; /* multi_turn */
  double mt_think_s;
  int prompt_format; /* -1 auto, 0 text, 1 ids */
  bool ignore_eos, stream_usage, progress;
  ss_lg_slo slo;
} ss_loadgen_opts;

void ss_loadgen_usage(FILE *f);
/* Parses argv into o (defaults first).  Returns -1 to go on, else the exit
 * status (after --help, or a usage error already reported). */
int ss_loadgen_parse(int argc, char **argv, ss_loadgen_opts *o);

#endif
