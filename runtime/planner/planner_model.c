/* The cost model's view of a loaded model: this rank's bytes and matmul
 * parameters, from the weights it actually bound. */
#include <string.h>

#include "runtime/model/model.h"
#include "runtime/planner/planner.h"

static double wbytes(const ss_weight *w) { return (double)w->rows * (double)w->row_nbytes; }
static double wparams(const ss_weight *w) { return (double)w->rows * (double)w->cols; }

void ss_plan_model_from_loaded(const ss_model *m, int nodes, ss_plan_model *p) {
  memset(p, 0, sizeof *p);
  const ss_model_config *c = &m->cfg;
  p->n_layer = c->n_layer;
  p->dim = c->dim;
  p->vocab = c->vocab;
  p->tp = m->local.tp;
  p->nodes = nodes > 0 ? nodes : 1;
  const ss_model_local *lo = &m->local;
  const int held = c->n_expert > 0 ? lo->expert_end - lo->expert_begin : 0;
  for (int l = 0; l < c->n_layer; l++) {
    const ss_layer_weights *L = &m->layers[l];
    /* Attention, the dense MLP (absent in pure MoE layers: rows 0) and the router. */
    const ss_weight *ws[] = {&L->wq,     &L->wk,   &L->wv,     &L->wo,
                             &L->w_gate, &L->w_up, &L->w_down, &L->router};
    for (size_t i = 0; i < sizeof ws / sizeof *ws; i++) {
      p->dense_bytes += wbytes(ws[i]);
      p->dense_params += wparams(ws[i]);
    }
    p->dense_bytes += 2.0 * c->dim * sizeof(float); /* the two norms */
    if (held > 0 && L->exp_gate) {
      /* One expert's share on this rank (experts are the same shape). */
      const int e = lo->expert_begin;
      p->expert_bytes += wbytes(&L->exp_gate[e]) + wbytes(&L->exp_up[e]) + wbytes(&L->exp_down[e]);
      p->expert_params +=
          wparams(&L->exp_gate[e]) + wparams(&L->exp_up[e]) + wparams(&L->exp_down[e]);
    }
  }
  if (held > 0) {
    /* Under expert parallelism a rank sees the tokens routed to its experts:
     * k of E on average, in proportion to what it holds. */
    p->n_experts = held;
    p->top_k = (double)c->n_expert_used * held / c->n_expert;
  }
  p->head_bytes = wbytes(&m->output);
  p->head_params = wparams(&m->output);
  p->kv_bytes_per_token = 2.0 * c->n_layer * m->local.n_kv_head * c->head_dim * sizeof(float);
  p->attn_flops_per_pair = 4.0 * c->n_layer * m->local.n_head * c->head_dim;
  p->weight_bytes = (double)m->weight_nbytes;
  if (p->tp > 1) {
    p->n_allreduce = 2 * c->n_layer + (m->local.vocab_parallel ? 1 : 0);
    p->allreduce_bytes_per_token = (double)c->dim * sizeof(float);
    p->gather_logits = m->local.vocab_parallel;
  }
}
