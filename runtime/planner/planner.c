#include "runtime/planner/planner.h"

#include <jansson.h>
#include <stddef.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/base/stats.h"
#include "runtime/base/status.h"
#include "runtime/base/xrng.h"
#include "runtime/planner/arrivals.h"

/* ------------------------------------------------------------------------ */
/* Cost of one step                                                           */

double ss_roofline(double mem_s, double compute_s, double p) {
  const double hi = fmax(mem_s, compute_s), lo = fmin(mem_s, compute_s);
  if (!(p > 0) || isinf(p) || !(hi > 0)) return hi;
  /* hi * (1 + (lo/hi)^p)^(1/p): no overflow for large p. */
  return hi * pow(1.0 + pow(lo / hi, p), 1.0 / p);
}

double ss_hw_correction(const ss_hw_profile *hw, double tokens) {
  const int n = hw->n_correction;
  if (n <= 0) return 1.0;
  const double *x = hw->correction_tokens, *y = hw->correction_ratio;
  if (!(tokens > x[0])) return y[0];
  if (tokens >= x[n - 1]) return y[n - 1];
  int i = 1;
  while (x[i] < tokens) i++;
  const double f = log(tokens / x[i - 1]) / log(x[i] / x[i - 1]);
  return y[i - 1] + f * (y[i] - y[i - 1]);
}

void ss_cost_stages(const ss_plan_model *m, const ss_hw_profile *hw, const ss_step_shape *s,
                    ss_stage_times *t, ss_step_cost *sum) {
  ss_step_cost c = {0};
  ss_hw_profile h = *hw;
  h.step_overhead_s = 0;
  h.logit_row_s = 0;
  const double lf = hw->load_factor > 0 ? hw->load_factor : 1.0;
  for (int i = 0; i < m->n_stages; i++) {
    const ss_step_cost k = ss_cost_step(&m->stage[i], &h, s);
    c.total_s += k.total_s;
    c.compute_s += k.compute_s;
    c.memory_s += k.memory_s;
    c.attn_s += k.attn_s;
    c.comm_s += k.comm_s;
    c.overhead_s += k.overhead_s;
    /* Stage i + 1 gets the step's activations; the last stage sends rank 0
     * the sampled rows' logits. */
    const bool last = i == m->n_stages - 1;
    const bool inter = last ? m->logits_home_inter : m->handoff_inter && m->handoff_inter[i];
    const double bw = inter ? hw->inter_bw : hw->link_bw;
    const double lat = inter ? hw->inter_lat : hw->link_lat;
    const double bytes = last ? (double)s->n_logits * m->vocab * 4.0
                              : s->n_tokens * m->handoff_bytes_per_token;
    const double hop = last && s->n_logits <= 0 ? 0 : lat + (bw > 0 ? bytes / bw : 0);
    c.comm_s += hop;
    c.total_s += hop;
    if (t) {
      t->stage_s[i] = k.total_s;
      t->hop_s[i] = hop;
    }
  }
  const double ov = hw->step_overhead_s * lf, smp = s->n_logits * hw->logit_row_s * lf;
  c.overhead_s += ov + smp;
  c.total_s += ov + smp;
  if (t) {
    t->overhead_s = ov;
    t->sample_s = smp;
  }
  if (sum) *sum = c;
}

ss_step_cost ss_cost_step(const ss_plan_model *m, const ss_hw_profile *hw, const ss_step_shape *s) {
  ss_step_cost c = {0};
  if (m->n_stages > 1) {
    /* The stages one after another: the step's overhead once, sampling once. */
    ss_cost_stages(m, hw, s, NULL, &c);
    return c;
  }
  const double n = s->n_tokens;
  /* Tokens weighted for the matmuls: sampled ones at 1, prompt ones at the
   * profile's prefill_token_cost. */
  const double pf = hw->prefill_token_cost > 0 ? hw->prefill_token_cost : 1.0;
  const double n_w = s->n_logits + (n - s->n_logits) * pf;
  /* Weights read once per step: the dense part, the experts the batch touches,
   * and the LM head when some row needs logits. */
  double bytes = m->dense_bytes;
  double params = m->dense_params * n_w;
  if (m->n_experts > 0) {
    const double E = m->n_experts, k = m->top_k;
    const double touched = E * (1.0 - pow(1.0 - k / E, n));
    bytes += touched * m->expert_bytes;
    params += k * m->expert_params * n_w;
  }
  if (s->n_logits > 0) {
    bytes += m->head_bytes;
    params += m->head_params * s->n_logits;
  }
  c.memory_s = hw->mem_bw > 0 ? bytes / hw->mem_bw : 0;
  c.compute_s = hw->flops > 0 ? 2.0 * params / hw->flops : 0;
  /* Attention: reading each sequence's K/V (memory) plus the query-key
   * products (compute); a decode token does both per position, a prompt chunk
   * reads the context once and multiplies it by each of its tokens. */
  const double part = m->layer_fraction > 0 ? m->layer_fraction : 1.0;
  const double per_pos = hw->attn_s_per_pos > 0 ? hw->attn_s_per_pos * part
                         : hw->mem_bw > 0      ? m->kv_bytes_per_token / hw->mem_bw
                                               : 0;
  const double per_pair = hw->attn_s_per_pair > 0 ? hw->attn_s_per_pair * part
                          : hw->flops > 0        ? m->attn_flops_per_pair / hw->flops
                                                 : 0;
  c.attn_s = s->kv_read * per_pos + s->attended * per_pair;
  if (m->tp > 1) {
    const bool inter = m->nodes > 1;
    const double bw = inter ? hw->inter_bw : hw->link_bw;
    const double lat = inter ? hw->inter_lat : hw->link_lat;
    const double ring = 2.0 * (m->tp - 1) / m->tp;
    double t = m->n_allreduce * (lat + (bw > 0 ? ring * n * m->allreduce_bytes_per_token / bw : 0));
    /* The sampled rows' logits gathered on rank 0, which holds its own share
     * of the vocabulary already: (tp - 1) / tp of each row arrives. */
    if (m->gather_logits && s->n_logits > 0)
      t += lat + (bw > 0 ? (double)s->n_logits * m->vocab * 4.0 * (m->tp - 1) / m->tp / bw : 0);
    c.comm_s = t;
  }
  c.overhead_s = hw->step_overhead_s + s->n_logits * hw->logit_row_s;
  const double lf = hw->load_factor > 0 ? hw->load_factor : 1.0;
  c.memory_s *= lf;
  c.compute_s *= lf;
  c.attn_s *= lf;
  c.overhead_s *= lf;
  c.total_s = c.overhead_s +
              ss_roofline(c.memory_s, c.compute_s, hw->roofline_exponent) *
                  ss_hw_correction(hw, n_w) +
              c.attn_s + c.comm_s;
  return c;
}

/* ------------------------------------------------------------------------ */
/* Statistics                                                                 */

static ss_dist dist_of(double *v, int64_t n) {
  ss_dist d = {0};
  if (n <= 0) return d;
  ss_sort_doubles(v, (size_t)n);
  double sum = 0, sq = 0;
  for (int64_t i = 0; i < n; i++) sum += v[i];
  d.mean = sum / (double)n;
  for (int64_t i = 0; i < n; i++) sq += (v[i] - d.mean) * (v[i] - d.mean);
  d.std = sqrt(sq / (double)n); /* numpy's default (population) */
  d.median = ss_percentile(v, (size_t)n, 50);
  d.p90 = ss_percentile(v, (size_t)n, 90);
  d.p95 = ss_percentile(v, (size_t)n, 95);
  d.p99 = ss_percentile(v, (size_t)n, 99);
  d.min = v[0];
  d.max = v[n - 1];
  return d;
}

/* ------------------------------------------------------------------------ */
/* Arrivals                                                                   */

/* Arrival times come from runtime/arrivals.c, the load generator's own
 * schedule: `plan` and `loadgen` given the same rate, burstiness and seed see
 * the same arrivals.  Lengths are drawn as the load generator's random dataset
 * draws them, uniform in [floor(L(1-r)), ceil(L(1+r))]. */
#define LENGTH_SALT 2

static int32_t draw_len(ss_xrng *r, int32_t len, double ratio) {
  int32_t lo = (int32_t)floor(len * (1.0 - ratio)), hi = (int32_t)ceil(len * (1.0 + ratio));
  if (lo < 1) lo = 1;
  if (hi < lo) hi = lo;
  return (int32_t)ss_xrng_range(r, lo, hi);
}

/* ------------------------------------------------------------------------ */
/* Simulation                                                                 */

typedef struct sim_req {
  ss_sched_seq seq;
  double arrival, first, last;
  int32_t in_len, out_len, generated;
  int32_t *tokens; /* prefix_repetition: prompt and output ids (else NULL) */
} sim_req;

/* A step in flight: its batch (entries copied out of the scheduler) and when
 * its logits are home on rank 0, and what handling them then costs there. */
typedef struct sim_flight {
  ss_sched_batch b;
  double done, sample_s;
} sim_flight;

/* A token id of the simulated prefix_repetition workload: only equality
 * matters (the prefix cache compares blocks' tokens), so ids are 31-bit hashes
 * of (kind, group or request, position); a chance match of a whole block of
 * them is negligible. */
static int32_t sim_token(uint64_t seed, uint64_t kind, uint64_t who, uint64_t pos) {
  uint64_t x = seed ^ (kind << 62) ^ (who << 24) ^ pos;
  return (int32_t)(ss_xrng_splitmix64(&x) & 0x7fffffff);
}

int ss_simulate(const ss_plan_model *m, const ss_hw_profile *hw, const ss_sched_params *sp,
                const ss_sim_workload *w, ss_sim_result *out) {
  memset(out, 0, sizeof *out);
  if (w->n_requests < 1 || w->n_requests > 10000000)
    return ss_error(SS_ERR_RANGE, "--num-prompts %d is outside 1..10000000", w->n_requests);
  if ((w->num_prefixes <= 0 && w->input_len < 1) || w->output_len < 1)
    return ss_error(SS_ERR_RANGE, "input and output lengths must be at least 1 (got %d, %d)",
                    w->input_len, w->output_len);
  if (!(w->range_ratio >= 0 && w->range_ratio < 1))
    return ss_error(SS_ERR_RANGE, "--random-range-ratio %g is outside [0, 1)", w->range_ratio);
  const bool prefixed = w->num_prefixes > 0;
  if (prefixed && (w->prefix_len < 1 || w->suffix_len < 1 ||
                   w->n_requests % w->num_prefixes != 0 ||
                   (int64_t)w->prefix_len + w->suffix_len > (1 << 24)))
    return ss_error(SS_ERR_RANGE, "prefix_repetition: %d prefixes of %d tokens, suffixes of %d, "
                    "%d requests: lengths must be >= 1 (prefix + suffix <= %d) and the requests "
                    "a multiple of the prefixes", w->num_prefixes, w->prefix_len, w->suffix_len,
                    w->n_requests, 1 << 24);
  if (!(w->rate >= 0) || !(w->burstiness > 0))
    return ss_error(SS_ERR_RANGE, "the request rate must be >= 0 and the burstiness > 0 "
                    "(got %g, %g)", w->rate, w->burstiness);
  ss_sched sched;
  int rc = ss_sched_init(&sched, sp);
  if (rc) return rc;
  const int32_t N = w->n_requests;
  int32_t K = 0;             /* steps in flight at most (set below) */
  sim_flight *fl = NULL;     /* [K] */
  double *stage_free = NULL; /* [n_stages] when each stage ends its last step, then the
                                current step's parts: stage_s [n_stages], hop_s [n_stages] */
  sim_req *rq = calloc((size_t)N, sizeof *rq);
  double *ttft = malloc((size_t)N * sizeof *ttft), *tpot = malloc((size_t)N * sizeof *tpot);
  double *e2e = malloc((size_t)N * sizeof *e2e);
  int64_t itl_cap = 0;
  double *arrivals = NULL;
  int32_t *group = NULL; /* prefix_repetition: each request's prefix */
  ss_xrng rng;
  ss_xrng_seed(&rng, w->seed, LENGTH_SALT);
  if (w->per_request) out->req = calloc((size_t)N, sizeof *out->req);
  if (!rq || !ttft || !tpot || !e2e || (w->per_request && !out->req)) {
    rc = ss_error(SS_ERR_NOMEM, "simulation: out of memory for %d requests", N);
    goto done;
  }
  /* The schedule, drawn up front so a seed fixes it. */
  const bool closed = w->max_concurrency > 0;
  const bool burst = !(w->rate > 0) || isinf(w->rate);
  if (!closed) {
    ss_arrivals_params ap = {.rate = burst ? INFINITY : w->rate, .burstiness = w->burstiness,
                             .count = (size_t)N, .seed = w->seed};
    size_t n_arr = 0;
    if ((rc = ss_arrivals_build(&ap, &arrivals, &n_arr))) goto done;
    SS_ASSERT(n_arr == (size_t)N);
  }
  /* prefix_repetition: request i's prefix, a seeded shuffle of per-prefix runs. */
  if (prefixed) {
    if (!(group = malloc((size_t)N * sizeof *group))) {
      rc = ss_error(SS_ERR_NOMEM, "simulation: out of memory for %d requests", N);
      goto done;
    }
    for (int32_t i = 0; i < N; i++) group[i] = i / (N / w->num_prefixes);
    for (int32_t i = N; i > 1; i--) {
      const int32_t j = (int32_t)ss_xrng_range(&rng, 0, i - 1), g = group[i - 1];
      group[i - 1] = group[j];
      group[j] = g;
    }
  }
  for (int32_t i = 0; i < N; i++) {
    sim_req *q = &rq[i];
    if (prefixed) {
      q->in_len = w->prefix_len + w->suffix_len;
      q->out_len = w->output_len;
      const int64_t n = (int64_t)q->in_len + q->out_len;
      if (!(q->tokens = malloc((size_t)n * sizeof *q->tokens))) {
        rc = ss_error(SS_ERR_NOMEM, "simulation: out of memory for request %d's tokens", i);
        goto done;
      }
      for (int64_t j = 0; j < n; j++)
        q->tokens[j] = j < w->prefix_len
                           ? sim_token(w->seed, 1, (uint64_t)group[i], (uint64_t)j)
                           : sim_token(w->seed, 2, (uint64_t)i, (uint64_t)j);
      q->seq.tokens = q->tokens;
    } else {
      q->in_len = draw_len(&rng, w->input_len, w->range_ratio);
      q->out_len = draw_len(&rng, w->output_len, w->range_ratio);
    }
    itl_cap += q->out_len;
    q->arrival = closed ? 0 : arrivals[i];
    q->seq.id = i;
    q->seq.n_tokens = q->in_len;
    q->seq.max_tokens = q->in_len + q->out_len;
    q->seq.cap_blocks = ss_sched_blocks_for(&sched, q->seq.max_tokens);
    q->seq.blocks = malloc((size_t)q->seq.cap_blocks * sizeof(int32_t));
    q->seq.user = q;
    if (!q->seq.blocks) {
      rc = ss_error(SS_ERR_NOMEM, "simulation: out of memory");
      goto done;
    }
  }
  double *itl = malloc((size_t)(itl_cap > 0 ? itl_cap : 1) * sizeof *itl);
  if (!itl) {
    rc = ss_error(SS_ERR_NOMEM, "simulation: out of memory");
    goto done;
  }
  int64_t n_itl = 0;
  /* Steps in flight: under pipeline parallelism up to sp->microbatches, each
   * stage busy until stage_free[stage]; otherwise one at a time. */
  K = m->n_stages > 1 && sp->microbatches > 1 ? sp->microbatches : 1;
  fl = calloc((size_t)K, sizeof *fl);
  stage_free = calloc((size_t)(m->n_stages > 1 ? 3 * m->n_stages : 1), sizeof *stage_free);
  ss_stage_times stt = {.stage_s = stage_free + m->n_stages, .hop_s = stage_free + 2 * m->n_stages};
  bool fl_ok = fl && stage_free;
  for (int32_t i = 0; fl_ok && i < K; i++)
    fl_ok = (fl[i].b.entries = malloc((size_t)sp->max_num_seqs * sizeof(ss_sched_entry))) != NULL;
  if (!fl_ok) {
    free(itl);
    rc = ss_error(SS_ERR_NOMEM, "simulation: out of memory");
    goto done;
  }
  int32_t fl_head = 0, n_fl = 0;
  int32_t next = 0, done_n = 0, in_flight = 0, rejected = 0;
  /* The queue limit as the engine applies it at submission: arrivals since
   * the last step began, plus the waiting queue it published then. */
  int32_t waiting_pub = 0;
  double t = 0, batch_tokens = 0, good = 0;
  uint64_t steps = 0;
  while (done_n + rejected < N) {
    /* Admit what has arrived (closed loop: up to the concurrency). */
    int32_t n_in = 0;
    while (next < N && (closed ? in_flight < w->max_concurrency : rq[next].arrival <= t)) {
      if (closed) rq[next].arrival = t;
      if (!closed && w->max_waiting > 0 && n_in + waiting_pub >= w->max_waiting) {
        if (out->req)
          out->req[next] = (ss_sim_request){.start = rq[next].arrival, .rejected = true,
                                            .input_len = rq[next].in_len};
        rejected++;
        next++;
        continue;
      }
      n_in++;
      if ((rc = ss_sched_add(&sched, &rq[next].seq))) {
        char msg[400];
        snprintf(msg, sizeof msg, "%s", ss_error_msg());
        rc = ss_error(rc, "request %d (%d + %d tokens): %s", next, rq[next].in_len,
                      rq[next].out_len, msg);
        free(itl);
        goto done;
      }
      next++;
      in_flight++;
    }
    waiting_pub = sched.waiting.count;
    if (done_n + rejected == N) break;
    /* Issue a step while a slot is free, as the engine does; else end the
     * oldest step in flight. */
    if (n_fl < K) {
      sim_flight *f = &fl[(fl_head + n_fl) % K];
      ss_sched_batch sb;
      ss_sched_step(&sched, &sb);
      if (sb.n_entries > 0) {
        memcpy(f->b.entries, sb.entries, (size_t)sb.n_entries * sizeof *sb.entries);
        ss_sched_entry *keep = f->b.entries;
        f->b = sb;
        f->b.entries = keep;
        f->b.copies = NULL;
        f->b.n_copies = 0;
        ss_step_shape shape = {.n_tokens = sb.n_tokens, .n_logits = sb.n_logits};
        ss_sched_batch_attention(&sb, &shape.attended, &shape.kv_read);
        if (K == 1) {
          t += ss_cost_step(m, hw, &shape).total_s;
          f->done = t;
          f->sample_s = 0;
        } else {
          /* Rank 0 schedules and runs the first stage; each later stage
           * starts when the activations arrive and it has ended the step
           * before; the logits come home after the last. */
          ss_cost_stages(m, hw, &shape, &stt, NULL);
          t += stt.overhead_s + stt.stage_s[0];
          double at = t + stt.hop_s[0];
          for (int i = 1; i < m->n_stages; i++) {
            const double end = fmax(at, stage_free[i]) + stt.stage_s[i];
            stage_free[i] = end;
            at = end + stt.hop_s[i];
          }
          f->done = at;
          f->sample_s = stt.sample_s;
        }
        steps++;
        batch_tokens += sb.n_tokens;
        n_fl++;
        if (K > 1) continue;
      } else if (n_fl == 0) {
        if (next < N && !closed) {
          t = rq[next].arrival;
          continue;
        }
        free(itl);
        rc = ss_error(SS_ERR_INTERNAL, "simulation: no progress at t = %g s", t);
        goto done;
      }
    }
    const sim_flight *old = &fl[fl_head];
    fl_head = (fl_head + 1) % K;
    n_fl--;
    t = fmax(t, old->done) + old->sample_s;
    const ss_sched_batch b = old->b;
    ss_sched_commit(&sched, &b);
    for (int32_t i = 0; i < b.n_entries; i++) {
      if (!b.entries[i].logits) continue;
      sim_req *q = b.entries[i].seq->user;
      q->seq.n_tokens++;
      q->generated++;
      if (q->generated == 1) q->first = t;
      else itl[n_itl++] = t - q->last;
      q->last = t;
      if (q->generated == q->out_len) {
        ss_sched_finish(&sched, &q->seq);
        const double f = q->first - q->arrival + hw->request_overhead_s;
        const double e = t - q->arrival + hw->request_overhead_s;
        const double tp = q->out_len > 1 ? (e - f) / (q->out_len - 1) : 0;
        ttft[done_n] = f;
        e2e[done_n] = e;
        tpot[done_n] = tp;
        if (out->req)
          out->req[q->seq.id] = (ss_sim_request){.start = q->arrival, .ttft = f, .latency = e,
                                                 .input_len = q->in_len, .output_len = q->out_len};
        if ((w->slo_ttft_s <= 0 || f <= w->slo_ttft_s) && (w->slo_tpot_s <= 0 || tp <= w->slo_tpot_s) &&
            (w->slo_e2e_s <= 0 || e <= w->slo_e2e_s))
          good++;
        out->total_input_tokens += q->in_len;
        out->total_output_tokens += q->out_len;
        done_n++;
        in_flight--;
      }
    }
  }
  /* Duration as a load generator measures it: first send to last completion. */
  out->completed = done_n;
  out->rejected = rejected;
  out->duration_s = t + hw->request_overhead_s;
  out->request_throughput = done_n / out->duration_s;
  out->output_throughput = (double)out->total_output_tokens / out->duration_s;
  out->total_token_throughput =
      (double)(out->total_input_tokens + out->total_output_tokens) / out->duration_s;
  out->request_goodput = good / out->duration_s;
  out->ttft = dist_of(ttft, done_n);
  out->tpot = dist_of(tpot, done_n);
  out->e2e = dist_of(e2e, done_n);
  out->itl = dist_of(itl, n_itl);
  out->steps = steps;
  out->preemptions = sched.n_preemptions;
  out->prefix_queried = sched.n_queried;
  out->prefix_hit = sched.n_hit;
  out->mean_batch_tokens = steps ? batch_tokens / (double)steps : 0;
  free(itl);
  rc = SS_OK;
done:
  if (rq)
    for (int32_t i = 0; i < N; i++) free(rq[i].seq.blocks), free(rq[i].tokens);
  free(rq);
  free(group);
  free(arrivals);
  free(ttft);
  free(tpot);
  free(e2e);
  for (int32_t i = 0; fl && i < K; i++) free(fl[i].b.entries);
  free(fl);
  free(stage_free);
  ss_sched_free(&sched);
  if (rc) ss_sim_result_free(out);
  return rc;
}

void ss_sim_result_free(ss_sim_result *r) {
  free(r->req);
  r->req = NULL;
}

/* Whether 99% of the requests sent met every SLO, from a finished
 * simulation: a request refused at arrival (the queue was full) counts as one
 * that missed them, as it does for the client that got the 429. */
static bool meets(const ss_sim_result *r) {
  if (r->completed == 0) return false;
  return r->request_goodput * r->duration_s >= 0.99 * (r->completed + r->rejected);
}

double ss_simulate_max_rate(const ss_plan_model *m, const ss_hw_profile *hw,
                            const ss_sched_params *sp, const ss_sim_workload *w) {
  ss_sim_workload x = *w;
  x.max_concurrency = 0;
  x.per_request = false;
  /* Capacity with everything queued at once bounds the search; without the
   * queue limit, which would refuse most of such a burst and make the bound
   * the throughput of the few it kept. */
  x.rate = 0;
  x.max_waiting = 0;
  ss_sim_result r;
  if (ss_simulate(m, hw, sp, &x, &r)) return 0;
  double hi = 2.0 * r.request_throughput, lo = 0;
  x.max_waiting = w->max_waiting;
  x.rate = hi;
  if (ss_simulate(m, hw, sp, &x, &r) == SS_OK && meets(&r)) return hi;
  for (int it = 0; it < 14; it++) {
    const double mid = 0.5 * (lo + hi);
    x.rate = mid;
    if (ss_simulate(m, hw, sp, &x, &r) == SS_OK && meets(&r)) lo = mid;
    else hi = mid;
  }
  return lo;
}

/* ------------------------------------------------------------------------ */
/* Profiles as JSON                                                           */

typedef struct hw_field {
  const char *key;
  size_t offset;
  bool required;
} hw_field;

#define F(k, req) {#k, offsetof(ss_hw_profile, k), req}
static const hw_field k_fields[] = {
    F(mem_bytes, true),          F(mem_bw, true),
    F(flops, true),              F(flops_fp8, false),
    F(roofline_exponent, false), F(attn_s_per_pos, false),
    F(attn_s_per_pair, false),
    F(step_overhead_s, false),   F(load_factor, false),
    F(prefill_token_cost, false),
    F(logit_row_s, false),       F(request_overhead_s, false),
    F(link_bw, false),           F(link_lat, false),
    F(inter_bw, false),          F(inter_lat, false),
    F(overhead_reserve, false),
};
#undef F

int ss_hw_profile_load(const char *path, ss_hw_profile *hw) {
  memset(hw, 0, sizeof *hw);
  json_error_t err;
  json_t *o = json_load_file(path, JSON_REJECT_DUPLICATES, &err);
  if (!o) return ss_error(SS_ERR_FORMAT, "%s: not valid JSON: %s (line %d)", path, err.text, err.line);
  if (!json_is_object(o)) {
    json_decref(o);
    return ss_error(SS_ERR_FORMAT, "%s: expected a JSON object", path);
  }
  json_t *name = json_object_get(o, "name");
  snprintf(hw->name, sizeof hw->name, "%s", json_is_string(name) ? json_string_value(name) : path);
  for (size_t i = 0; i < sizeof k_fields / sizeof *k_fields; i++) {
    json_t *v = json_object_get(o, k_fields[i].key);
    double *dst = (double *)((char *)hw + k_fields[i].offset);
    if (!v) {
      if (k_fields[i].required) {
        json_decref(o);
        return ss_error(SS_ERR_FORMAT, "%s: missing field '%s'", path, k_fields[i].key);
      }
      continue;
    }
    if (!json_is_number(v) || !(json_number_value(v) >= 0) || isinf(json_number_value(v))) {
      json_decref(o);
      return ss_error(SS_ERR_FORMAT, "%s: field '%s' must be a number >= 0", path, k_fields[i].key);
    }
    *dst = json_number_value(v);
  }
  json_t *corr = json_object_get(o, "roofline_correction");
  if (corr) {
    const size_t n = json_is_array(corr) ? json_array_size(corr) : 0;
    if (n < 1 || n > SS_HW_MAX_CORRECTION) {
      json_decref(o);
      return ss_error(SS_ERR_FORMAT, "%s: roofline_correction must be a list of 1..%d "
                      "[tokens, ratio] pairs", path, SS_HW_MAX_CORRECTION);
    }
    for (size_t i = 0; i < n; i++) {
      json_t *e = json_array_get(corr, i);
      json_t *x = json_array_get(e, 0), *y = json_array_get(e, 1);
      const double xv = json_is_number(x) ? json_number_value(x) : NAN;
      const double yv = json_is_number(y) ? json_number_value(y) : NAN;
      if (!json_is_array(e) || json_array_size(e) != 2 || !(xv >= 1 && xv <= 1e9) ||
          !(yv >= 0.1 && yv <= 10) || (i > 0 && !(xv > hw->correction_tokens[i - 1]))) {
        json_decref(o);
        return ss_error(SS_ERR_FORMAT, "%s: roofline_correction entry %zu must be [tokens, ratio] "
                        "with tokens in [1, 1e9] above the previous entry's and ratio in "
                        "[0.1, 10]", path, i);
      }
      hw->correction_tokens[i] = xv;
      hw->correction_ratio[i] = yv;
    }
    hw->n_correction = (int)n;
  }
  json_t *dpn = json_object_get(o, "devices_per_node");
  hw->devices_per_node = json_is_integer(dpn) ? (int)json_integer_value(dpn) : 8;
  if (hw->devices_per_node < 1 || hw->devices_per_node > 1024) {
    json_decref(o);
    return ss_error(SS_ERR_FORMAT, "%s: devices_per_node must be in 1..1024", path);
  }
  if (hw->mem_bw <= 0 || hw->flops <= 0) {
    json_decref(o);
    return ss_error(SS_ERR_FORMAT, "%s: mem_bw and flops must be positive", path);
  }
  if (hw->prefill_token_cost > 10) {
    json_decref(o);
    return ss_error(SS_ERR_FORMAT, "%s: prefill_token_cost must be in (0, 10]", path);
  }
  if (hw->load_factor > 10) {
    json_decref(o);
    return ss_error(SS_ERR_FORMAT, "%s: load_factor must be in (0, 10]", path);
  }
  if (hw->roofline_exponent > 0 && hw->roofline_exponent < 1) {
    json_decref(o);
    return ss_error(SS_ERR_FORMAT, "%s: roofline_exponent must be 0 (max) or at least 1", path);
  }
  if (hw->overhead_reserve >= 1) {
    json_decref(o);
    return ss_error(SS_ERR_FORMAT, "%s: overhead_reserve must be below 1", path);
  }
  json_decref(o);
  return SS_OK;
}

int ss_hw_profile_save(const char *path, const ss_hw_profile *hw, const char *comment) {
  json_t *o = json_object();
  json_object_set_new(o, "name", json_string(hw->name));
  if (comment) json_object_set_new(o, "_comment", json_string(comment));
  for (size_t i = 0; i < sizeof k_fields / sizeof *k_fields; i++)
    json_object_set_new(o, k_fields[i].key,
                        json_real(*(const double *)((const char *)hw + k_fields[i].offset)));
  if (hw->n_correction > 0) {
    json_t *corr = json_array();
    for (int i = 0; i < hw->n_correction; i++)
      json_array_append_new(corr, json_pack("[f,f]", hw->correction_tokens[i],
                                            hw->correction_ratio[i]));
    json_object_set_new(o, "roofline_correction", corr);
  }
  json_object_set_new(o, "devices_per_node", json_integer(hw->devices_per_node));
  int rc = json_dump_file(o, path, JSON_INDENT(2));
  json_decref(o);
  if (rc) return ss_error(SS_ERR_IO, "%s: cannot write the profile", path);
  return SS_OK;
}
