/* Causal attention over the paged KV cache.
 *
 * Work is split into items of (token, KV head, chunk of ATTN_CHUNK positions).
 * An item reads each K and V row of its chunk once for all the query heads that
 * share that KV head (grouped-query attention), and produces for each of those
 * heads a partial result: the chunk's max score m, its sum of exp(score - m) l,
 * and its unnormalised output o = sum exp(score - m) v.  A second pass merges a
 * head's chunks in chunk order (flash-decoding's split-K merge).
 *
 * The chunk boundaries depend only on the token's position, and the merge order
 * is fixed, so a (token, head) result is the same whatever the batch and the
 * thread count; long contexts still spread over all threads at batch 1.
 *
 * A cache in BF16, F16 or F8_E4M3 is read by converting the chunk's rows to
 * f32 (exactly: every value of those types is an f32) in scalar code, into a
 * per-thread buffer, before the same f32 dot products and sums: the result is
 * the same on every kernel variant, and equals what an f32 cache holding the
 * rounded values would give. */
#include <math.h>
#include <pthread.h>
#include <string.h>

#include "kernels/cpu/cpu_internal.h"

#define ATTN_CHUNK 64

/* ---- The cache's element types */

static size_t kv_elem_nbytes(ss_dtype t) {
  return t == SS_DTYPE_F32 ? 4 : t == SS_DTYPE_F8_E4M3 ? 1 : 2;
}

int ss_cpu_kv_dtype_check(ss_backend *be, ss_dtype t) {
  (void)be;
  if (t == SS_DTYPE_F32 || t == SS_DTYPE_BF16 || t == SS_DTYPE_F16 || t == SS_DTYPE_F8_E4M3)
    return SS_OK;
  return ss_error(SS_ERR_UNSUPPORTED, "the CPU backend has no KV cache of type %s (it takes f32, "
                  "bf16, f16 and fp8_e4m3)", ss_dtype_name(t));
}

static void kv_row_store(ss_dtype t, void *dst, const float *src, size_t hd) {
  switch (t) {
  case SS_DTYPE_BF16:
    for (size_t i = 0; i < hd; i++) ((uint16_t *)dst)[i] = ss_f32_to_bf16(src[i]);
    break;
  case SS_DTYPE_F16:
    for (size_t i = 0; i < hd; i++) ((uint16_t *)dst)[i] = ss_f32_to_f16(src[i]);
    break;
  case SS_DTYPE_F8_E4M3:
    for (size_t i = 0; i < hd; i++) ((uint8_t *)dst)[i] = ss_f32_to_f8e4m3(src[i]);
    break;
  default:
    memcpy(dst, src, hd * sizeof(float));
  }
}

/* F8_E4M3 reads go through a table of its 256 values. */
static float g_f8_table[256];
static pthread_once_t g_f8_once = PTHREAD_ONCE_INIT;
static void f8_table_init(void) {
  for (int b = 0; b < 256; b++) g_f8_table[b] = ss_f8e4m3_to_f32((uint8_t)b);
}

/* F16 normals inline (the exponent rebiased by 127 - 15 = 112); zeros,
 * subnormals, infinities and NaNs through the exact scalar converter. */
static inline float f16_load(uint16_t h) {
  const uint32_t e = (h >> 10) & 0x1f;
  if (e == 0 || e == 31) return ss_f16_to_f32(h);
  const uint32_t bits =
      ((uint32_t)(h & 0x8000) << 16) | ((e + 112) << 23) | ((uint32_t)(h & 0x3ff) << 13);
  float f;
  memcpy(&f, &bits, 4);
  return f;
}

static void kv_row_load(ss_dtype t, float *dst, const void *src, size_t hd) {
  switch (t) {
  case SS_DTYPE_BF16:
    for (size_t i = 0; i < hd; i++) {
      const uint32_t x = (uint32_t)((const uint16_t *)src)[i] << 16;
      memcpy(dst + i, &x, 4);
    }
    break;
  case SS_DTYPE_F16:
    for (size_t i = 0; i < hd; i++) dst[i] = f16_load(((const uint16_t *)src)[i]);
    break;
  case SS_DTYPE_F8_E4M3:
    for (size_t i = 0; i < hd; i++) dst[i] = g_f8_table[((const uint8_t *)src)[i]];
    break;
  default:
    memcpy(dst, src, hd * sizeof(float));
  }
}

/* Element offset of (block table position s, KV head kvh)'s row. */
static inline size_t kv_off(const ss_kv_layer *kv, const int32_t *bt, int32_t s, int kvh) {
  const size_t blk = (size_t)bt[s / kv->block_size];
  return ((blk * (size_t)kv->n_kv_head + (size_t)kvh) * (size_t)kv->block_size +
          (size_t)(s % kv->block_size)) * (size_t)kv->head_dim;
}

void ss_cpu_kv_store(ss_backend *be, const ss_kv_layer *kv, const ss_token_loc *loc,
                     const float *k, const float *v) {
  (void)be;
  const size_t es = kv_elem_nbytes(kv->dtype);
  const size_t hd = (size_t)kv->head_dim, kv_dim = (size_t)kv->n_kv_head * hd;
  for (int64_t t = 0; t < loc->n; t++)
    for (int32_t h = 0; h < kv->n_kv_head; h++) {
      const size_t off = kv_off(kv, loc->block_table[t], loc->pos[t], h) * es;
      kv_row_store(kv->dtype, (uint8_t *)kv->k + off, k + (size_t)t * kv_dim + (size_t)h * hd, hd);
      kv_row_store(kv->dtype, (uint8_t *)kv->v + off, v + (size_t)t * kv_dim + (size_t)h * hd, hd);
    }
}

/* ---- Attention */

typedef struct attn_job {
  const ss_cpu_kernels *k;
  const ss_kv_layer *kv;
  const ss_token_loc *loc;
  const float *q;
  const ss_attn_params *p;
  float *out;
  int group;            /* query heads per KV head (global) */
  int q_base, kv_base;  /* global index of local query head 0 and KV head 0 */
  int64_t n_tc;         /* (token, chunk) pairs */
  const int64_t *tc_t;  /* token of each pair */
  const int32_t *tc_c;  /* chunk of each pair */
  const int64_t *t_tc0; /* first pair of each token */
  float *part;          /* per (pair, head): m, l, o[head_dim] */
  float *work;          /* per thread: group * ATTN_CHUNK scores */
  float *rows;          /* per thread, unless the cache is f32: 2 * ATTN_CHUNK f32 rows */
} attn_job;

static void chunk_worker(void *arg, int ith, int nth) {
  const attn_job *j = arg;
  const ss_attn_params *p = j->p;
  const ss_kv_layer *kv = j->kv;
  const int hd = p->head_dim;
  const size_t part_stride = (size_t)hd + 2;
  float *sc = j->work + (size_t)ith * j->group * ATTN_CHUNK;
  long lo, hi;
  ss_pool_split((long)(j->n_tc * p->n_kv_head), ith, nth, &lo, &hi);
  for (long item = lo; item < hi; item++) {
    const int64_t tc = item / p->n_kv_head;
    const int kvh = (int)(item % p->n_kv_head);
    const int64_t t = j->tc_t[tc];
    const int32_t *bt = j->loc->block_table[t];
    const int32_t s0 = j->tc_c[tc] * ATTN_CHUNK;
    const int32_t s1 = j->loc->pos[t] + 1 < s0 + ATTN_CHUNK ? j->loc->pos[t] + 1 : s0 + ATTN_CHUNK;
    /* The local query heads [qa, qa + G) that read this KV head. */
    const int kv_global = j->kv_base + kvh;
    int qa = kv_global * j->group - j->q_base, qb = qa + j->group;
    qa = qa > 0 ? qa : 0;
    qb = qb < p->n_head ? qb : p->n_head;
    const int G = qb - qa;
    if (G <= 0) continue;
    const float *q = j->q + (t * p->n_head + (int64_t)qa) * hd;
    float *part = j->part + ((size_t)tc * p->n_head + (size_t)qa) * part_stride;
    /* Row pointers of the chunk (blocks make them non-contiguous). */
    const float *krow[ATTN_CHUNK], *vrow[ATTN_CHUNK];
    const int32_t n = s1 - s0;
    if (kv->dtype == SS_DTYPE_F32) {
      for (int32_t i = 0; i < n; i++) {
        const size_t off = kv_off(kv, bt, s0 + i, kvh);
        krow[i] = (const float *)kv->k + off;
        vrow[i] = (const float *)kv->v + off;
      }
    } else {
      const size_t es = kv_elem_nbytes(kv->dtype);
      float *kb = j->rows + (size_t)ith * 2 * ATTN_CHUNK * hd, *vb = kb + (size_t)ATTN_CHUNK * hd;
      for (int32_t i = 0; i < n; i++) {
        const size_t off = kv_off(kv, bt, s0 + i, kvh) * es;
        kv_row_load(kv->dtype, kb + (size_t)i * hd, (const uint8_t *)kv->k + off, (size_t)hd);
        kv_row_load(kv->dtype, vb + (size_t)i * hd, (const uint8_t *)kv->v + off, (size_t)hd);
        krow[i] = kb + (size_t)i * hd;
        vrow[i] = vb + (size_t)i * hd;
      }
    }
    /* Grok-2's length-dependent temperature: 1 up to temp_len. */
    const int32_t qpos = j->loc->pos[t];
    const float temp = p->temp_len > 0 && qpos > p->temp_len
                           ? (float)(log2((double)qpos) / log2((double)p->temp_len)) : 1.0f;
    /* scores: each K row is read once for the whole group */
    for (int32_t i = 0; i < n; i++)
      for (int g = 0; g < G; g++) {
        float x = j->k->dot(q + g * hd, krow[i], hd) * p->scale;
        if (p->softcap > 0.0f) x = p->softcap * tanhf(x / p->softcap);
        if (temp != 1.0f) x *= temp;
        sc[g * ATTN_CHUNK + i] = x;
      }
    for (int g = 0; g < G; g++) {
      float *e = sc + g * ATTN_CHUNK;
      float *pg = part + g * part_stride;
      float mx = -INFINITY, l = 0.0f;
      for (int32_t i = 0; i < n; i++) mx = e[i] > mx ? e[i] : mx;
      for (int32_t i = 0; i < n; i++) {
        e[i] = expf(e[i] - mx);
        l += e[i];
      }
      pg[0] = mx;
      pg[1] = l;
      /* o = sum_i e[i] * V[i] (the chunk's V rows stay in L1 across heads). */
      j->k->wsum(e, vrow, n, hd, pg + 2);
    }
  }
}

static void merge_worker(void *arg, int ith, int nth) {
  const attn_job *j = arg;
  const ss_attn_params *p = j->p;
  const int hd = p->head_dim;
  const size_t part_stride = (size_t)hd + 2;
  long lo, hi;
  ss_pool_split((long)(j->loc->n * p->n_head), ith, nth, &lo, &hi);
  for (long pair = lo; pair < hi; pair++) {
    const int64_t t = pair / p->n_head;
    const int h = (int)(pair % p->n_head);
    const int64_t c0 = j->t_tc0[t], c1 = j->t_tc0[t + 1];
    float mx = -INFINITY;
    for (int64_t c = c0; c < c1; c++) {
      float m = j->part[((size_t)c * p->n_head + h) * part_stride];
      mx = m > mx ? m : mx;
    }
    float *o = j->out + (t * p->n_head + h) * hd;
    memset(o, 0, (size_t)hd * sizeof *o);
    float l = 0.0f;
    for (int64_t c = c0; c < c1; c++) {
      const float *pc = j->part + ((size_t)c * p->n_head + h) * part_stride;
      const float w = expf(pc[0] - mx);
      l += w * pc[1];
      for (int d = 0; d < hd; d++) o[d] += w * pc[2 + d];
    }
    const float inv = 1.0f / l;
    for (int d = 0; d < hd; d++) o[d] *= inv;
  }
}

void ss_cpu_attention(ss_backend *be, const ss_kv_layer *kv, const ss_token_loc *loc,
                      const float *q, const ss_attn_params *p, float *out) {
  ss_cpu *cpu = be->ctx;
  const int nth = ss_pool_size(cpu->pool);
  const int G = p->group > 0 ? p->group : p->n_head / p->n_kv_head;
  int64_t n_tc = 0;
  for (int64_t t = 0; t < loc->n; t++) n_tc += loc->pos[t] / ATTN_CHUNK + 1;
  /* One scratch block: index arrays, partial results, per-thread scores. */
  const size_t part_floats = (size_t)n_tc * p->n_head * ((size_t)p->head_dim + 2);
  const size_t work_floats = (size_t)nth * G * ATTN_CHUNK;
  const size_t row_floats =
      kv->dtype == SS_DTYPE_F32 ? 0 : (size_t)nth * 2 * ATTN_CHUNK * (size_t)p->head_dim;
  if (kv->dtype == SS_DTYPE_F8_E4M3) pthread_once(&g_f8_once, f8_table_init);
  const size_t idx_nbytes = (size_t)n_tc * (sizeof(int64_t) + sizeof(int32_t)) +
                            (size_t)(loc->n + 1) * sizeof(int64_t);
  const size_t idx_aligned = (idx_nbytes + 63) & ~(size_t)63;
  uint8_t *mem = ss_cpu_scratch(cpu, SS_SCRATCH_ATTN,
                                idx_aligned + (part_floats + work_floats + row_floats) * sizeof(float));
  int64_t *tc_t = (int64_t *)mem;
  int64_t *t_tc0 = tc_t + n_tc;
  int32_t *tc_c = (int32_t *)(t_tc0 + loc->n + 1);
  float *part = (float *)(mem + idx_aligned);
  float *work = part + part_floats;
  float *rows = work + work_floats;
  int64_t k = 0;
  for (int64_t t = 0; t < loc->n; t++) {
    t_tc0[t] = k;
    for (int32_t c = 0; c <= loc->pos[t] / ATTN_CHUNK; c++, k++) {
      tc_t[k] = t;
      tc_c[k] = c;
    }
  }
  t_tc0[loc->n] = k;
  attn_job j = {.k = cpu->k, .kv = kv, .loc = loc, .q = q, .p = p, .out = out, .group = G, .q_base = p->q_head_base,
                .kv_base = p->kv_head_base, .n_tc = n_tc,
                .tc_t = tc_t, .tc_c = tc_c, .t_tc0 = t_tc0, .part = part, .work = work, .rows = rows};
  ss_pool_run(cpu->pool, chunk_worker, &j);
  ss_pool_run(cpu->pool, merge_worker, &j);
}
