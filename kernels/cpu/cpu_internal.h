/* Private to the CPU backend: its context and the kernels' entry points. */
#ifndef SS_CPU_INTERNAL_H
#define SS_CPU_INTERNAL_H

#include <stddef.h>

#include "kernels/cpu/isa.h"
#include "kernels/cpu/pool.h"
#include "kernels/kernels.h"
#include "runtime/base/status.h"

/* Reusable scratch buffers, one per purpose, grown on demand.  Kernels run one
 * at a time from the engine thread, so one buffer per purpose suffices. */
enum ss_scratch_kind {
  SS_SCRATCH_ATTN,   /* attention: per-thread score rows and f32 copies of K/V rows */
  SS_SCRATCH_Q8,     /* matmul with 8-bit activations: quantized x */
  SS_SCRATCH_COUNT_
};

typedef struct ss_cpu {
  ss_pool *pool;
  const ss_cpu_kernels *k; /* the kernel variant chosen at creation (isa.h) */
  bool act_q8;             /* --activations q8 */
  void *scratch[SS_SCRATCH_COUNT_];
  size_t scratch_nbytes[SS_SCRATCH_COUNT_];
} ss_cpu;

/* Returns a buffer of at least nbytes for `kind`; aborts if memory runs out
 * (scratch is small and sized by the model, so that is an invariant failure). */
void *ss_cpu_scratch(ss_cpu *cpu, int kind, size_t nbytes);

void ss_cpu_matmul(ss_backend *be, const ss_weight *w, const float *x, int64_t n, float *y);
/* attention.c: the KV cache's element types, its writes and the attention. */
int ss_cpu_kv_dtype_check(ss_backend *be, ss_dtype t);
void ss_cpu_kv_store(ss_backend *be, const ss_kv_layer *kv, const ss_token_loc *loc,
                     const float *k, const float *v);
void ss_cpu_attention(ss_backend *be, const ss_kv_layer *kv, const ss_token_loc *loc,
                      const float *q, const ss_attn_params *p, float *out);
/* moe_ops.c */
void ss_cpu_gelu_mul(ss_backend *be, const float *gate, const float *up, int64_t count,
                     int tanh_approx, float *out);
void ss_cpu_softcap(ss_backend *be, float *x, int64_t count, float cap);
void ss_cpu_scale(ss_backend *be, float *x, int64_t count, float s);
void ss_cpu_moe_route(ss_backend *be, const float *logits, int64_t n, const ss_moe_route_params *p,
                      int32_t *ids, float *weights);
void ss_cpu_gather_rows(ss_backend *be, const float *x, const int32_t *rows, int64_t n, int64_t dim,
                        float *out);
void ss_cpu_scatter_add_rows(ss_backend *be, float *out, const float *y, const int32_t *rows,
                             const float *w, int64_t n, int64_t dim);

#endif
