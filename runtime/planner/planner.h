/* The capacity planner: a cost model of one forward step, and a discrete-event
 * simulation that drives the real scheduler (runtime/scheduler.c) in simulated
 * time with that cost model in place of the forward pass.
 *
 * Cost of a step on the slowest rank (roofline per step, then communication):
 *   t = overhead + n_logits * logit_row
 *     + (M^p + C^p)^(1/p),  M = weight bytes read / mem_bw, C = matmul flops / flops
 *       (a prompt token's flops weighted by prefill_token_cost)
 *       (p = roofline_exponent; absent or 0: max(M, C), a perfect roofline)
 *       times the profile's roofline_correction at the step's size, if any
 *   all but the communication terms multiplied by the profile's load_factor
 *     + attention: K/V positions read * attn_per_pos + query-key pairs * attn_per_pair
 *     + n_allreduce * (latency + 2(tp-1)/tp * n_tokens * payload / link_bw)
 *     + logits gather (latency + n_logits * vocab * 4 / link_bw)
 * For a mixture of experts the weight bytes are the dense part plus the
 * experts a batch is expected to touch, E * (1 - (1 - k/E)^n_tokens), and the
 * matmul flops count the k active experts per token.
 *
 * Simulated requests arrive by a gamma process (burstiness 1 = Poisson), have
 * input and output lengths drawn uniformly in [L(1-r), L(1+r)] (vLLM's random
 * dataset), and generate exactly their output length (ignore_eos).  Reported
 * times are those a client would measure: each request adds the profile's
 * request overhead (HTTP, tokenizing) to its TTFT and end-to-end time. */
#ifndef SS_PLANNER_H
#define SS_PLANNER_H

#include <stdbool.h>
#include <stdint.h>

#include "runtime/engine/scheduler.h"

#define SS_HW_MAX_CORRECTION 16

/* A machine: presets in configs/hardware/, or measured by `shardserve profile`. */
typedef struct ss_hw_profile {
  char name[96];
  double mem_bytes;           /* memory per device (rank), bytes */
  double mem_bw;              /* achievable bandwidth streaming weights, bytes/s */
  double flops;               /* achievable matmul rate for the weight type, flop/s */
  double flops_fp8;           /* the same with fp8 weights (0: as flops) */
  double roofline_exponent;   /* how weight streaming M and matmul time C combine:
                                 (M^p + C^p)^(1/p); 1 adds them, larger p nears max(M, C);
                                 0 = max(M, C), a perfect roofline (the default, and the
                                 GPU presets); `profile` fits it on CPUs */
  double attn_s_per_pos;      /* attention time per K/V position a sequence reads in a step
                                 (decode reads its whole context once per token; a prompt
                                 chunk reads it once for all its tokens) on one rank
                                 (0: this rank's K/V bytes per token / mem_bw) */
  double attn_s_per_pair;     /* attention time per query-key pair on one rank (0: the
                                 pair's 4 x heads x head_dim flops per layer / flops);
                                 `profile` measures both */
  double step_overhead_s;     /* fixed cost of a step (launches, scheduling) */
  double prefill_token_cost;  /* matmul cost of a prompt token (one not sampled) relative to
                                 a decoded one (0 or absent: 1); `profile` fits it */
  /* Measured over modelled weight-and-matmul time at some step sizes (tokens,
   * prompt tokens weighted by prefill_token_cost): `profile` writes one from
   * its probes so each probe is met exactly; between the points the ratio is
   * interpolated linearly in log(tokens), outside them the end value holds.
   * JSON: "roofline_correction": [[tokens, ratio], ...], tokens increasing. */
  int n_correction;
  double correction_tokens[SS_HW_MAX_CORRECTION];
  double correction_ratio[SS_HW_MAX_CORRECTION];
  double load_factor;         /* every step's compute, memory, attention and overhead time
                                 multiplied by this (0 or absent: 1): what a server's steps
                                 cost under load over an idle machine's probes, fitted by
                                 `plan --step-log FILE --calibrate` */
  double logit_row_s;         /* per sampled sequence: LM-head row handling, sampling */
  double request_overhead_s;  /* per request, client-visible: HTTP, tokenizing */
  double link_bw, link_lat;   /* between ranks of a node: bytes/s, s per collective */
  double inter_bw, inter_lat; /* between nodes */
  int devices_per_node;
  double overhead_reserve;    /* fraction of memory kept free (activations, workspace) */
} ss_hw_profile;

/* What the cost model needs of a model split over tp ranks (the largest rank). */
typedef struct ss_plan_model {
  int n_layer, dim, vocab, tp;
  double n_experts, top_k;       /* experts held and used per token on this rank; 0 if dense */
  double dense_bytes;            /* weights read every step except experts and LM head */
  double expert_bytes;           /* one expert of all layers, on this rank */
  double head_bytes;             /* LM head rows on this rank */
  double dense_params;           /* matmul parameters per token, dense part */
  double expert_params;          /* one expert's parameters on this rank */
  double head_params;
  double kv_bytes_per_token;     /* this rank's K+V per token */
  double attn_flops_per_pair;    /* this rank's flops per query-key pair, all layers */
  double weight_bytes;           /* all this rank holds */
  int n_allreduce;               /* per forward pass */
  double allreduce_bytes_per_token;
  bool gather_logits;
  int nodes;                     /* ranks spread over this many nodes */
  /* A pipeline stage's share of the model's layers (0: all).  A measured
   * profile's attention figures are for every layer; a stage pays this part. */
  double layer_fraction;
  /* Pipeline parallelism: n_stages > 1 stage models (each its own layers,
   * weights and TP collectives; the head only on the last) run one after
   * another in every step, and stage s hands stage s + 1
   * handoff_bytes_per_token per token of the step, over the inter-node link
   * where handoff_inter[s], else the node's.  With steps in flight
   * (ss_sched_params.microbatches > 1) the simulation lets stage s work on
   * one step while stage s + 1 works on an earlier one (ss_cost_stages). */
  int n_stages;
  const struct ss_plan_model *stage;
  double handoff_bytes_per_token;
  const bool *handoff_inter;
  bool logits_home_inter;        /* the last stage sends rank 0 each sampled row's logits
                                    (vocab f32), over the inter-node link when true */
} ss_plan_model;

typedef struct ss_step_shape {
  int32_t n_tokens;
  int32_t n_logits;
  double attended;               /* query-key pairs: sum over tokens of positions attended */
  double kv_read;                /* sum over the step's sequences of the K/V positions read
                                    (the context through the sequence's last token) */
} ss_step_shape;

typedef struct ss_step_cost {
  double total_s, compute_s, memory_s, attn_s, comm_s, overhead_s;
} ss_step_cost;

/* Weight-streaming and matmul seconds combined as the profile says (see
 * roofline_exponent). */
double ss_roofline(double mem_s, double compute_s, double p);
/* The profile's roofline_correction at a step of `tokens` weighted tokens (1
 * without one). */
double ss_hw_correction(const ss_hw_profile *hw, double tokens);

ss_step_cost ss_cost_step(const ss_plan_model *m, const ss_hw_profile *hw, const ss_step_shape *s);

/* A step's parts under pipeline parallelism (m->n_stages > 1), seconds: rank
 * 0's overhead before the first stage, each stage's own work (stage_s[i]),
 * the hand-off after it (hop_s[i]: the activations to stage i + 1; after the
 * last stage the sampled rows' logits back to rank 0), and rank 0's handling
 * of those rows (sample_s).  ss_cost_step of a staged model is their sum;
 * the simulation with steps in flight (ss_sched_params.microbatches > 1)
 * overlaps them. */
typedef struct ss_stage_times {
  double overhead_s, sample_s;
  double *stage_s, *hop_s; /* [n_stages], the caller's */
} ss_stage_times;

/* Fills t and sum (their total, as ss_cost_step), each when not NULL. */
void ss_cost_stages(const ss_plan_model *m, const ss_hw_profile *hw, const ss_step_shape *s,
                    ss_stage_times *t, ss_step_cost *sum);

typedef struct ss_sim_workload {
  double rate;          /* requests/s; <= 0 or inf: all at time 0 */
  double burstiness;    /* gamma shape: 1 Poisson, larger smoother, inf constant gaps */
  int32_t n_requests;
  int32_t input_len, output_len;
  double range_ratio;   /* lengths uniform in [L(1-r), L(1+r)] */
  int32_t max_concurrency; /* closed loop when > 0 (rate ignored) */
  uint64_t seed;
  double slo_ttft_s, slo_tpot_s, slo_e2e_s; /* 0: no limit */
  bool per_request;     /* keep each request's figures (ss_sim_result.req) */
  /* prefix_repetition (loadgen's workload of that name) when num_prefixes > 0:
   * num_prefixes prompts' prefixes of prefix_len tokens, each shared by
   * n_requests / num_prefixes requests (n_requests a multiple of it) that add
   * a unique suffix of suffix_len tokens and generate output_len; the order is
   * a seeded shuffle.  The requests carry token ids, so the scheduler's prefix
   * cache (ss_sched_params.prefix_caching) finds the shared blocks as the
   * server's would.  input_len and range_ratio are then unused. */
  int32_t num_prefixes, prefix_len, suffix_len;
  /* The server's --max-waiting (open loop only): a request arriving while this
   * many are queued is refused (HTTP 429), as the engine counts them: those
   * that arrived since the last step began plus the waiting queue as it stood
   * then (before that step admitted any).  0: no limit. */
  int32_t max_waiting;
} ss_sim_workload;

/* One simulated request, as a load generator would record it (seconds). */
typedef struct ss_sim_request {
  double start, ttft, latency;
  int32_t input_len, output_len;
  bool rejected;        /* refused at arrival (queue full): no figures */
} ss_sim_request;

typedef struct ss_dist {
  double mean, median, std, p90, p95, p99, min, max;
} ss_dist;

typedef struct ss_sim_result {
  int32_t completed;
  int32_t rejected;          /* refused at arrival by max_waiting */
  double duration_s;
  double request_throughput, output_throughput, total_token_throughput;
  double request_goodput;    /* requests meeting every SLO, per second */
  int64_t total_input_tokens, total_output_tokens;
  ss_dist ttft, tpot, itl, e2e; /* seconds */
  uint64_t steps, preemptions;
  uint64_t prefix_queried, prefix_hit; /* prompt tokens looked up in the prefix cache, found */
  double mean_batch_tokens;
  ss_sim_request *req;       /* [n_requests] in arrival order when the workload asked for
                                per_request (free with ss_sim_result_free), else NULL */
} ss_sim_result;

void ss_sim_result_free(ss_sim_result *r);

/* Runs the workload through the scheduler with the cost model.  Errors name the
 * field (a request that cannot fit the KV pool, bad lengths). */
int ss_simulate(const ss_plan_model *m, const ss_hw_profile *hw, const ss_sched_params *sp,
                const ss_sim_workload *w, ss_sim_result *out);

/* The highest request rate (found by bisection over simulations) at which 99%
 * of the requests sent meet the SLOs, a request refused at arrival counting as
 * a miss; 0 when none does. */
double ss_simulate_max_rate(const ss_plan_model *m, const ss_hw_profile *hw,
                            const ss_sched_params *sp, const ss_sim_workload *w);

/* Reads a hardware profile (JSON, see configs/hardware/); errors name the field. */
int ss_hw_profile_load(const char *path, ss_hw_profile *out);
/* Writes one (what `shardserve profile` measured). */
int ss_hw_profile_save(const char *path, const ss_hw_profile *hw, const char *comment);

struct ss_model;
/* This rank's figures from a loaded model (its shard), ranks over `nodes` nodes. */
void ss_plan_model_from_loaded(const struct ss_model *m, int nodes, ss_plan_model *p);


#endif
