/* Fitting the cost model's hardware figures to measured forward steps (the
 * probes of shardserve profile, runtime/planner/profile_fit.h). */
#include <math.h>
#include <stdio.h>

#include "runtime/planner/profile_fit.h"

const int ss_probe_decode_batch[SS_PROBE_N_DEC] = {1, 2, 4, 6, 8, 10, 16, 32};
const ss_held_probe ss_probe_held_shapes[SS_PROBE_N_HELD] = {
    {.name = "decode3", .n_seqs = 3},
    {.name = "decode12", .n_seqs = 12},
    {.name = "decode24", .n_seqs = 24},
    {.name = "prefill128", .chunk = 128, .start = 0},
    {.name = "prefill32@224", .chunk = 32, .start = 224},
};

ss_step_shape ss_held_probe_shape(const ss_held_probe *h) {
  if (h->n_seqs > 0) /* each sequence's token at position 16 reads 17 positions */
    return (ss_step_shape){.n_tokens = h->n_seqs, .n_logits = h->n_seqs,
                           .attended = 17.0 * h->n_seqs, .kv_read = 17.0 * h->n_seqs};
  const double L = h->chunk, S = h->start;
  return (ss_step_shape){.n_tokens = h->chunk, .n_logits = 1,
                         .attended = L * S + L * (L + 1) / 2, .kv_read = S + L};
}

/* The fitted model's figures for a step of this shape, in ms: its compute (the
 * part fitted to the probes' compute: weights, matmuls, attention) and its
 * whole step (plus the step overhead, sampling and the priced collectives,
 * what a measured wall time is compared with). */
typedef struct model_fig {
  double compute_ms, total_ms;
} model_fig;

static model_fig model_ms(const ss_plan_model *pm, const ss_hw_profile *hw, int n_tokens,
                          int n_logits, double attended, double kv_read) {
  const ss_step_shape sh = {.n_tokens = n_tokens, .n_logits = n_logits, .attended = attended,
                            .kv_read = kv_read};
  const ss_step_cost c = ss_cost_step(pm, hw, &sh);
  return (model_fig){.compute_ms = (c.total_s - c.overhead_s - c.comm_s) * 1e3,
                     .total_ms = c.total_s * 1e3};
}

void ss_profile_fit(const ss_plan_model *pm, const ss_probe_set *ps, ss_hw_profile *hw,
                    char *comment, size_t cap) {
  /* Attention.  A decode token at position p reads p + 1 K/V positions and
   * forms as many query-key pairs: d = per position + per pair, from B - A.
   * The two 64-token chunks differ by 192 positions read and 12288 pairs:
   * C64b - C64 = 192 (d - pair) + 12288 pair. */
  const double d = fmax(0.0, (ps->dec1023.compute - ps->dec16.compute) / (SS_PROBE_LONG - 17.0));
  const double pair_c64b = 64.0 * 192 + 64.0 * 65 / 2, pair_c = 256.0 * 257 / 2;
  const double dpair = pair_c64b - 64.0 * 65 / 2;
  const double per_pair = (ps->pre64_192.compute - ps->pre64.compute - 192.0 * d) / (dpair - 192.0);
  /* A pair costs something (1e-12 s marks the figure as measured) and no more
   * than the decode figure, which includes it. */
  hw->attn_s_per_pair = fmin(fmax(per_pair, 1e-12), fmax(d, 1e-12));
  hw->attn_s_per_pos = fmax(0.0, d - hw->attn_s_per_pair);
#define ATTN(kv_read, pairs) (hw->attn_s_per_pos * (kv_read) + hw->attn_s_per_pair * (pairs))
  const double params_c = pm->dense_params * 256 + pm->head_params;
  const double comp_c = ps->pre256.compute - ATTN(256.0, pair_c);
  hw->flops = 2.0 * params_c / fmax(comp_c, 1e-7);
  hw->flops_fp8 = hw->flops;
  hw->logit_row_s = ps->sample_s;
  /* Outside compute and collectives: the step broadcast, the logits gather's
   * bookkeeping, the backend's thread wake-ups. */
  hw->step_overhead_s = fmax(0.0, ps->dec16.wall - ps->dec16.compute - ps->dec16.comm);
  /* Weight streaming M, the matmul rate and how the two combine, fitted
   * together on the decode probes (batch 1 ... 32) and the two prefill probes:
   * each costs (M^p + C^p)^(1/p) of compute besides its attention, C = its
   * matmul flops / rate, a prompt token's flops weighted by the prefill token
   * cost.  Least squares on the relative error over a grid: the rate within
   * +-20% of the 256-token prefill's, the prefill token cost in [0.8, 1.5], M
   * in (0, batch 1's compute], p in {1, 1.1, ..., 4} or max (p = 0).  On CPUs
   * a prompt token costs more than a decoded one at the same batch size (its
   * activations and attention rows are larger working sets). */
  enum { N_FIT = SS_PROBE_N_DEC + 3 };
  double fit_d[N_FIT], fit_q[N_FIT], fit_x[N_FIT]; /* flops of sampled / prompt tokens */
  for (int i = 0; i < SS_PROBE_N_DEC; i++) {
    fit_d[i] = 2.0 * (pm->dense_params + pm->head_params) * ss_probe_decode_batch[i];
    fit_q[i] = 0;
    fit_x[i] =
        ps->dec[i].compute - ATTN(17.0 * ss_probe_decode_batch[i], 17.0 * ss_probe_decode_batch[i]);
  }
  fit_d[SS_PROBE_N_DEC] = 2.0 * (pm->dense_params + pm->head_params);
  fit_q[SS_PROBE_N_DEC] = 2.0 * pm->dense_params * 255;
  fit_x[SS_PROBE_N_DEC] = comp_c;
  fit_d[SS_PROBE_N_DEC + 1] = fit_d[SS_PROBE_N_DEC];
  fit_q[SS_PROBE_N_DEC + 1] = 2.0 * pm->dense_params * 63;
  fit_x[SS_PROBE_N_DEC + 1] = ps->pre64.compute - ATTN(64.0, 64.0 * 65 / 2);
  fit_d[SS_PROBE_N_DEC + 2] = fit_d[SS_PROBE_N_DEC];
  fit_q[SS_PROBE_N_DEC + 2] = fit_q[SS_PROBE_N_DEC + 1];
  fit_x[SS_PROBE_N_DEC + 2] = ps->pre64_192.compute - ATTN(256.0, pair_c64b);
#undef ATTN
  const double flops0 = hw->flops;
  double best_err = INFINITY, best_m = fit_x[0], best_p = 0, best_flops = flops0, best_pf = 1;
  const double m_hi = fmax(fit_x[0], 1e-7);
  for (int iflo = 0; iflo <= 40; iflo++) {
    const double flops = flops0 * (0.8 + 0.01 * iflo);
    for (int ipf = 0; ipf <= 35; ipf++) {
      const double pf = 0.8 + 0.02 * ipf;
      for (int im = 1; im <= 100; im++) {
        const double M = m_hi * im / 100.0;
        for (int ip = 0; ip <= 31; ip++) {
          const double p = ip == 31 ? 0 : 1.0 + 0.1 * ip;
          double err = 0;
          for (int i = 0; i < N_FIT; i++) {
            const double cm = (fit_d[i] + pf * fit_q[i]) / flops;
            const double r = (ss_roofline(M, cm, p) - fit_x[i]) / fmax(fit_x[i], 1e-9);
            err += r * r;
          }
          if (err < best_err)
            best_err = err, best_m = M, best_p = p, best_flops = flops, best_pf = pf;
        }
      }
    }
  }
  hw->prefill_token_cost = best_pf;
  hw->flops = hw->flops_fp8 = best_flops;
  hw->mem_bw = (pm->dense_bytes + pm->head_bytes) / fmax(best_m, 1e-7);
  hw->roofline_exponent = best_p;
  /* What the fitted curve leaves: measured over modelled at each probe's size
   * (the two 64-token chunks averaged), so the profile meets every probe. */
  {
    double ratio[N_FIT];
    for (int i = 0; i < N_FIT; i++) {
      const double cm = (fit_d[i] + best_pf * fit_q[i]) / best_flops;
      ratio[i] = fmin(fmax(fit_x[i] / fmax(ss_roofline(best_m, cm, best_p), 1e-9), 0.1), 10);
    }
    /* In rising step size: the decode batches, the 64-token chunks, prefill256. */
    int n = 0;
    for (int i = 0; i < SS_PROBE_N_DEC; i++)
      hw->correction_tokens[n] = ss_probe_decode_batch[i], hw->correction_ratio[n++] = ratio[i];
    hw->correction_tokens[n] = 1 + 63 * best_pf;
    hw->correction_ratio[n++] = 0.5 * (ratio[SS_PROBE_N_DEC + 1] + ratio[SS_PROBE_N_DEC + 2]);
    hw->correction_tokens[n] = 1 + 255 * best_pf;
    hw->correction_ratio[n++] = ratio[SS_PROBE_N_DEC];
    hw->n_correction = n;
  }
  if (ps->tp > 0) {
    const double sb = (double)ps->ar_small_bytes, lb = (double)ps->ar_large_bytes;
    const double ring = 2.0 * (ps->tp - 1) / ps->tp;
    hw->link_bw =
        ps->ar_large_s > ps->ar_small_s ? ring * (lb - sb) / (ps->ar_large_s - ps->ar_small_s) : 0;
    hw->link_lat = fmax(0.0, ps->ar_small_s - (hw->link_bw > 0 ? ring * sb / hw->link_bw : 0));
    hw->inter_bw = hw->link_bw;
    hw->inter_lat = hw->link_lat;
  }
  /* How well the fitted model explains each probe. */
  const model_fig f1023 = model_ms(pm, hw, 1, 1, SS_PROBE_LONG, SS_PROBE_LONG);
  const model_fig f256 = model_ms(pm, hw, 256, 1, pair_c, 256);
  const model_fig f64 = model_ms(pm, hw, 64, 1, 64.0 * 65 / 2, 64);
  const model_fig f64b = model_ms(pm, hw, 64, 1, pair_c64b, 256);
  int at = snprintf(comment, cap,
                    "probes, ms (median wall / compute of the slowest rank / model compute / "
                    "model step): batch1@1023 %.3f/%.3f/%.3f/%.3f, "
                    "prefill256 %.3f/%.3f/%.3f/%.3f, prefill64 %.3f/%.3f/%.3f/%.3f, "
                    "prefill64@192 %.3f/%.3f/%.3f/%.3f",
                    ps->dec1023.wall * 1e3, ps->dec1023.compute * 1e3, f1023.compute_ms,
                    f1023.total_ms, ps->pre256.wall * 1e3, ps->pre256.compute * 1e3,
                    f256.compute_ms, f256.total_ms, ps->pre64.wall * 1e3,
                    ps->pre64.compute * 1e3, f64.compute_ms, f64.total_ms,
                    ps->pre64_192.wall * 1e3, ps->pre64_192.compute * 1e3, f64b.compute_ms,
                    f64b.total_ms);
  for (int i = 0; i < SS_PROBE_N_DEC && at > 0 && (size_t)at < cap; i++) {
    const int nb = ss_probe_decode_batch[i];
    const model_fig f = model_ms(pm, hw, nb, nb, nb * 17.0, nb * 17.0);
    at += snprintf(comment + at, cap - (size_t)at, ", decode%d %.3f/%.3f/%.3f/%.3f", nb,
                   ps->dec[i].wall * 1e3, ps->dec[i].compute * 1e3, f.compute_ms, f.total_ms);
  }
  if (at > 0 && (size_t)at < cap)
    at += snprintf(comment + at, cap - (size_t)at,
                   "; held out (not fitted), ms (median wall / compute of the slowest rank):");
  for (int i = 0; i < SS_PROBE_N_HELD && at > 0 && (size_t)at < cap; i++)
    at += snprintf(comment + at, cap - (size_t)at, "%s %s %.3f/%.3f", i ? "," : "",
                   ps->held[i].name, ps->held[i].p.wall * 1e3, ps->held[i].p.compute * 1e3);
  if (at > 0 && (size_t)at < cap)
    snprintf(comment + at, cap - (size_t)at, "; allreduce %zu B %.1f us, %zu B %.1f us",
             ps->ar_small_bytes, ps->ar_small_s * 1e6, ps->ar_large_bytes, ps->ar_large_s * 1e6);
}
