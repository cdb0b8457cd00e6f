/* The mixture-of-experts sub-layer: route, group tokens by expert, run each
 * routed expert once on its dense group, combine.
 *
 * Only experts with at least one token are touched, so a decode step reads the
 * router plus k experts' weights per layer, not all E: the cost follows the
 * active parameters.  (Prefill of many tokens reaches most experts anyway.)
 *
 * Both sharding layouts run the same code on what this rank holds:
 *   TP inside experts: every expert, a slice of its hidden columns; the down
 *     projection's partial sums add up across ranks;
 *   expert parallelism: whole experts [expert_begin, expert_end); tokens routed
 *     elsewhere contribute zero here and their owner's output arrives through
 *     the all-reduce that follows (every rank sees every token, so there is
 *     no dispatch message: the cost is the one all-reduce of n x C floats per
 *     layer that TP pays anyway, plus routing on every rank).
 *
 * Batch invariance: routing is per token; an expert's matmul is per row; the
 * combine adds each token's expert outputs in increasing expert id; so a
 * token's result does not depend on the other tokens of the batch. */
#include <string.h>

#include "runtime/model/model_internal.h"

void ss_moe_forward(const ss_model *m, const ss_layer_weights *L, ss_forward_state *st,
                    int64_t n, const float *xb, float *out) {
  const ss_model_config *c = &m->cfg;
  const ss_model_local *lo = &m->local;
  ss_backend *be = st->be;
  const int E = c->n_expert, K = c->n_expert_used;
  const int64_t C = c->dim;

  /* Routing: the router is whole on every rank and its input identical, so
   * every rank picks the same experts. */
  be->matmul(be, &L->router, xb, n, st->rl);
  ss_model_count_read(m, &L->router, false);
  const ss_moe_route_params rp = {.n_expert = E, .top_k = K, .softcap = c->router_softcap,
                                  .renormalize = c->moe_renormalize};
  be->moe_route(be, st->rl, n, &rp, st->r_ids, st->r_w);

  memset(out, 0, (size_t)(n * C) * sizeof *out);
  for (int e = lo->expert_begin; e < lo->expert_end; e++) {
    /* This expert's tokens, in batch order. */
    int64_t cnt = 0;
    for (int64_t t = 0; t < n; t++)
      for (int k = 0; k < K; k++)
        if (st->r_ids[t * K + k] == e) {
          st->e_rows[cnt] = (int32_t)t;
          st->e_w[cnt] = st->r_w[t * K + k];
          cnt++;
        }
    if (cnt == 0) continue;
    const int64_t F = lo->expert_ffn_dim;
    be->gather_rows(be, xb, st->e_rows, cnt, C, st->ex);
    be->matmul(be, &L->exp_gate[e], st->ex, cnt, st->eh);
    be->matmul(be, &L->exp_up[e], st->ex, cnt, st->eh2);
    if (c->act == SS_ACT_SILU) be->swiglu(be, st->eh, st->eh2, cnt * F, st->eh);
    else be->gelu_mul(be, st->eh, st->eh2, cnt * F, c->act == SS_ACT_GELU_TANH, st->eh);
    ss_model_matmul_cut(m, st, &L->exp_down[e], L->exp_down_edge ? &L->exp_down_edge[e] : NULL,
                        st->eh, cnt, st->ey);
    be->scatter_add_rows(be, out, st->ey, st->e_rows, st->e_w, cnt, C);
    ss_model_count_read(m, &L->exp_gate[e], true);
    ss_model_count_read(m, &L->exp_up[e], true);
    ss_model_count_read(m, &L->exp_down[e], true);
  }
}
