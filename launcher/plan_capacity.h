/* Capacity planning for `shardserve plan` (see plan_capacity.c). */
#ifndef SS_LAUNCHER_PLAN_CAPACITY_H
#define SS_LAUNCHER_PLAN_CAPACITY_H

#include <jansson.h>
#include <stdbool.h>

#include "runtime/model/model.h"
#include "runtime/model/shard.h"
#include "runtime/planner/planner.h"

#define SS_PLAN_MAX_STEP_COSTS 32

typedef struct ss_plan_capacity_opts {
  const char *hardware;   /* hardware profile or preset JSON */
  int nodes;              /* 0: as many as tp needs */
  bool weight_fp8;        /* use the profile's fp8 matmul rate */
  double kv_tokens;       /* > 0: the KV pool the server is given (else from memory) */
  ss_sched_params sched;  /* max_num_seqs, max_batched_tokens, block_size */
  ss_sim_workload w;
  bool simulate;          /* a workload was given */
  bool max_rate;          /* search the highest rate meeting the SLOs */
  const char *step_log;   /* a server's --step-log: compare each step with the cost model */
  bool calibrate;         /* and scale the profile's load_factor to match it */
  const char *save_hardware; /* write the (calibrated) profile here */
  int n_steps;            /* --step-cost: price these step shapes ("step_costs_ms") */
  ss_step_shape steps[SS_PLAN_MAX_STEP_COSTS];
} ss_plan_capacity_opts;

/* Adds the capacity figures to `out`; returns an exit status (errors printed).
 * stages: pp plans, one per pipeline stage (one plan when pp == 1). */
#define SS_PLAN_MAX_STAGES 64
int ss_plan_capacity(const ss_model *m, const ss_shard_plan *stages, int pp,
                     const ss_plan_capacity_opts *o, json_t *out);
/* Prints them as a table. */
void ss_plan_capacity_print(json_t *o);

#endif
