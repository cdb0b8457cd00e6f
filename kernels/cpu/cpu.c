/* The CPU backend: the vtable, memory, and the elementwise and normalisation
 * kernels.  Matmul and attention live in their own files. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kernels/cpu/cpu_internal.h"

/* Elementwise work below this many floats runs on the calling thread: waking
 * the pool costs more than it saves. */
#define PAR_MIN_COUNT 8192

void *ss_cpu_scratch(ss_cpu *cpu, int kind, size_t nbytes) {
  if (cpu->scratch_nbytes[kind] < nbytes) {
    free(cpu->scratch[kind]);
    size_t cap = nbytes + nbytes / 2 + 64;
    cap = (cap + 63) & ~(size_t)63;
    cpu->scratch[kind] = aligned_alloc(64, cap);
    SS_ASSERT(cpu->scratch[kind] != NULL);
    cpu->scratch_nbytes[kind] = cap;
  }
  return cpu->scratch[kind];
}

static void *cpu_alloc(ss_backend *be, size_t nbytes) {
  size_t cap = (nbytes + 63) & ~(size_t)63;
  return aligned_alloc(64, cap ? cap : 64);
}

static void cpu_dealloc(ss_backend *be, void *p) { free(p); }

static int cpu_n_threads(const ss_backend *be) { return ss_pool_size(((ss_cpu *)be->ctx)->pool); }

static void cpu_free(ss_backend *be) {
  if (!be) return;
  ss_cpu *cpu = be->ctx;
  if (cpu) {
    ss_pool_free(cpu->pool);
    for (int i = 0; i < SS_SCRATCH_COUNT_; i++) free(cpu->scratch[i]);
    free(cpu);
  }
  free(be);
}

/* ------------------------------------------------------------------------ */

static void cpu_embed(ss_backend *be, const ss_weight *table, const int32_t *ids, int64_t n,
                      float *out) {
  for (int64_t i = 0; i < n; i++) {
    if (ids[i] < 0) {
      memset(out + i * table->cols, 0, (size_t)table->cols * sizeof *out);
      continue;
    }
    ss_dequantize_row(table->type, (const uint8_t *)table->data + (size_t)ids[i] * table->row_nbytes,
                      out + i * table->cols, table->cols);
    if (table->row_scale)
      for (int64_t j = 0; j < table->cols; j++) out[i * table->cols + j] *= table->row_scale[ids[i]];
  }
}

static void cpu_rmsnorm(ss_backend *be, const float *x, const float *w, int64_t n, int64_t dim,
                        float eps, float *out) {
  for (int64_t i = 0; i < n; i++) {
    const float *xi = x + i * dim;
    double ss = 0.0;
    for (int64_t j = 0; j < dim; j++) ss += (double)xi[j] * xi[j];
    float inv = (float)(1.0 / sqrt(ss / (double)dim + (double)eps));
    float *oi = out + i * dim;
    for (int64_t j = 0; j < dim; j++) oi[j] = xi[j] * inv * w[j];
  }
}

static void cpu_rope(ss_backend *be, float *x, const int32_t *pos, int64_t n,
                     const ss_rope_params *p) {
  const int half = p->rope_dim / 2;
  float cs[512], sn[512]; /* rope_dim <= 1024, checked at model load */
  SS_ASSERT(half <= 512);
  for (int64_t t = 0; t < n; t++) {
    /* Angles in double: pos * theta^(-2i/d) loses precision in f32 at long positions. */
    for (int i = 0; i < half; i++) {
      double freq = p->inv_freq ? (double)p->inv_freq[i]
                                : pow((double)p->theta, -2.0 * i / (double)p->rope_dim);
      double a = (double)pos[t] * freq;
      cs[i] = (float)cos(a);
      sn[i] = (float)sin(a);
    }
    for (int h = 0; h < p->n_heads; h++) {
      float *v = x + (t * p->n_heads + h) * p->head_dim;
      for (int i = 0; i < half; i++) {
        int i0 = p->mode == SS_ROPE_NEOX ? i : 2 * i;
        int i1 = p->mode == SS_ROPE_NEOX ? i + half : 2 * i + 1;
        float a = v[i0], b = v[i1];
        v[i0] = a * cs[i] - b * sn[i];
        v[i1] = a * sn[i] + b * cs[i];
      }
    }
  }
}

typedef struct ew_job {
  const float *a, *b;
  float *out;
  int64_t count;
} ew_job;

static void swiglu_range(const float *g, const float *u, float *out, long lo, long hi) {
  for (long i = lo; i < hi; i++) out[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}

static void swiglu_worker(void *arg, int ith, int nth) {
  const ew_job *j = arg;
  long lo, hi;
  ss_pool_split((long)j->count, ith, nth, &lo, &hi);
  swiglu_range(j->a, j->b, j->out, lo, hi);
}

static void cpu_swiglu(ss_backend *be, const float *gate, const float *up, int64_t count,
                       float *out) {
  ss_cpu *cpu = be->ctx;
  if (count < PAR_MIN_COUNT) {
    swiglu_range(gate, up, out, 0, (long)count);
    return;
  }
  ew_job j = {.a = gate, .b = up, .out = out, .count = count};
  ss_pool_run(cpu->pool, swiglu_worker, &j);
}

static void cpu_add(ss_backend *be, float *x, const float *y, int64_t count) {
  for (int64_t i = 0; i < count; i++) x[i] += y[i];
}

/* Host memory is the backend's memory: moving data is a copy. */
static int cpu_upload(ss_backend *be, void *dst, const void *src, size_t nbytes) {
  if (nbytes) memcpy(dst, src, nbytes);
  return SS_OK;
}

static int cpu_copy(ss_backend *be, void *dst, const void *src, size_t nbytes) {
  (void)be;
  if (nbytes) memcpy(dst, src, nbytes);
  return SS_OK;
}

static void cpu_memset(ss_backend *be, void *dst, int value, size_t nbytes) {
  if (nbytes) memset(dst, value, nbytes);
}

void ss_backend_cpu_set_q8_activations(ss_backend *be, bool on) {
  if (be && be->free == cpu_free) ((ss_cpu *)be->ctx)->act_q8 = on;
}

ss_backend *ss_backend_cpu_create(int n_threads) {
  if (n_threads <= 0) n_threads = ss_pool_default_threads();
  ss_backend *be = calloc(1, sizeof *be);
  ss_cpu *cpu = calloc(1, sizeof *cpu);
  if (!be || !cpu) {
    free(be);
    free(cpu);
    ss_error(SS_ERR_NOMEM, "cpu backend: out of memory");
    return NULL;
  }
  if (ss_cpu_isa_select(&cpu->k) != SS_OK) {
    free(be);
    free(cpu);
    return NULL;
  }
  cpu->pool = ss_pool_create(n_threads);
  if (!cpu->pool) {
    free(be);
    free(cpu);
    return NULL;
  }
  *be = (ss_backend){
      .name = "cpu",
      .variant = cpu->k->name,
      .ctx = cpu,
      .free = cpu_free,
      .n_threads = cpu_n_threads,
      .alloc = cpu_alloc,
      .dealloc = cpu_dealloc,
      .embed = cpu_embed,
      .rmsnorm = cpu_rmsnorm,
      .matmul = ss_cpu_matmul,
      .rope = cpu_rope,
      .kv_dtype_check = ss_cpu_kv_dtype_check,
      .kv_store = ss_cpu_kv_store,
      .attention = ss_cpu_attention,
      .swiglu = cpu_swiglu,
      .add = cpu_add,
      .gelu_mul = ss_cpu_gelu_mul,
      .softcap = ss_cpu_softcap,
      .scale = ss_cpu_scale,
      .moe_route = ss_cpu_moe_route,
      .gather_rows = ss_cpu_gather_rows,
      .scatter_add_rows = ss_cpu_scatter_add_rows,
      .device = false,
      .upload = cpu_upload,
      .download = cpu_upload,
      .memset = cpu_memset,
      .copy = cpu_copy,
  };
  return be;
}
