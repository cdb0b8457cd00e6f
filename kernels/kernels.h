/* The compute-kernel interface: one vtable of operations, implemented by the CPU
 * backend (kernels/cpu/, the reference) and later by CUDA (kernels/cuda/).
 *
 * Conventions
 *   - Activations are f32, row-major: a batch of n tokens of width C is float[n][C].
 *   - A weight matrix is `rows` output features by `cols` input features, each row
 *     stored contiguously in its own type (GGUF's ne[0] = cols, ne[1] = rows).
 *   - Batch invariance: every output row is computed by the same sequence of
 *     floating-point operations whatever n, the other rows and the thread count,
 *     so a request's result does not depend on what it is batched with.
 *   - Weights, activations and the KV cache are backend memory (host memory for
 *     the CPU backend, device memory for CUDA).  Index metadata (token ids, the
 *     positions and block tables of ss_token_loc, logit rows) is always host
 *     memory: a device backend copies it over itself, once per step. */
#ifndef SS_KERNELS_H
#define SS_KERNELS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "runtime/base/dtype.h"


typedef struct ss_weight {
  ss_dtype type;
  int64_t rows;      /* output features */
  int64_t cols;      /* input features; a multiple of the type's block count */
  size_t row_nbytes; /* bytes per row */
  const void *data;  /* rows * row_nbytes bytes */
  /* NULL, or one multiplier per row (rows floats) applied to that row's dot
   * products and embedded rows: FP8 checkpoints' per-channel or per-tensor
   * (repeated) weight scales. */
  const float *row_scale;
} ss_weight;

/* One layer's slice of the paged KV cache: blocks of `block_size` token slots.
 * Within a block each KV head's rows are contiguous, so attention streams
 * block_size*head_dim consecutive elements per head and block.  Elements are
 * of type `dtype` (F32, BF16, F16 or F8_E4M3; zero-initialised: F32):
 * kv_store rounds f32 to it (to nearest even; F8_E4M3 saturates at +-448 with
 * a scale of 1), attention converts each row back to f32 exactly before the
 * unchanged f32 math. */
typedef struct ss_kv_layer {
  void *k;            /* (n_blocks, n_kv_head, block_size, head_dim) of dtype */
  void *v;            /* (n_blocks, n_kv_head, block_size, head_dim) of dtype */
  int32_t block_size;
  int32_t n_kv_head;
  int32_t head_dim;
  ss_dtype dtype;
} ss_kv_layer;

/* Where each token of a batch lives: its position in its sequence and that
 * sequence's block table (block ids for positions [0, block_size), ...). */
typedef struct ss_token_loc {
  int64_t n;
  const int32_t *pos;                 /* [n] */
  const int32_t *const *block_table;  /* [n] */
} ss_token_loc;

typedef enum ss_rope_mode {
  SS_ROPE_NORM = 0, /* rotate adjacent pairs (x[2i], x[2i+1]): GGUF llama */
  SS_ROPE_NEOX = 2, /* rotate halves (x[i], x[i+d/2]): Hugging Face layout */
} ss_rope_mode;

typedef struct ss_rope_params {
  int n_heads;
  int head_dim;
  int rope_dim;      /* leading dimensions of each head that rotate (<= head_dim) */
  float theta;       /* frequency base */
  ss_rope_mode mode;
  /* NULL: rotation i turns by pos * theta^(-2i/rope_dim).  Otherwise the
   * rope_dim/2 angular frequencies to use instead (scaled RoPE such as YaRN,
   * computed once at load). */
  const float *inv_freq;
} ss_rope_params;

typedef struct ss_attn_params {
  int n_head;
  int n_kv_head;     /* KV heads held (this rank's) */
  /* Grouped-query mapping.  Local query head h is global head q_head_base + h,
   * which reads global KV head (q_head_base + h) / group, held locally at index
   * that minus kv_head_base.  group = 0 means n_head / n_kv_head and both bases
   * 0 (one rank holding every head). */
  int group;
  int q_head_base;
  int kv_head_base;
  int head_dim;
  float scale;       /* usually 1/sqrt(head_dim) */
  float softcap;     /* if > 0: logits = softcap * tanh(logits / softcap) */
  /* If > 0 (Grok-2's attn_temperature_len): after the soft cap, the logits of a
   * query at position p > temp_len are multiplied by log2(p) / log2(temp_len). */
  int32_t temp_len;
} ss_attn_params;

/* Mixture-of-experts routing (moe_route). */
typedef struct ss_moe_route_params {
  int n_expert;      /* E: router logits per token */
  int top_k;         /* experts chosen per token, 1..E */
  float softcap;     /* if > 0, logits = softcap * tanh(logits / softcap) first (Grok-2) */
  /* true (Mixtral): the k chosen probabilities are divided by their sum;
   * false (Grok-1, Grok-2): used as they come out of the softmax over all E. */
  int renormalize;
} ss_moe_route_params;

/* What a device backend needs from the communication layer, and all it sees of
 * it: the forward pass (runtime/model) fills one from its communicator, so the
 * kernels never include comm/ and comm never includes kernels/.
 *   allreduce_f32: sums count floats of device memory over the ranks, queued on
 *     `stream` behind the kernels already there (must not wait for them);
 *   wait: waits until `stream` has drained, checking meanwhile that the peers
 *     are alive (NULL: the backend waits on the stream itself).
 * Both return SS_OK or an error status with a message. */
typedef struct ss_collective {
  void *ctx;
  int (*allreduce_f32)(void *ctx, float *buf, int64_t count, void *stream);
  int (*wait)(void *ctx, void *stream);
} ss_collective;

typedef struct ss_backend ss_backend;
struct ss_backend {
  const char *name;
  const char *variant; /* the kernel variant in use (CPU: "avx512", "avx2", "neon", "portable") */
  void *ctx;
  void (*free)(ss_backend *be);
  int (*n_threads)(const ss_backend *be);

  /* Backend memory.  alloc returns NULL on failure; memory is 64-byte aligned. */
  void *(*alloc)(ss_backend *be, size_t nbytes);
  void (*dealloc)(ss_backend *be, void *p);

  /* out[i] = row ids[i] of table, dequantized (times table->row_scale[ids[i]] when
   * set); a negative id gives a row of zeros (a token another rank's vocabulary
   * slice holds).  Ids are otherwise trusted. */
  void (*embed)(ss_backend *be, const ss_weight *table, const int32_t *ids, int64_t n, float *out);
  /* out[i] = x[i] / sqrt(mean(x[i]^2) + eps) * w, for n rows of width dim. */
  void (*rmsnorm)(ss_backend *be, const float *x, const float *w, int64_t n, int64_t dim,
                  float eps, float *out);
  /* y[i] = W x[i] for n rows: x is float[n][w->cols], y is float[n][w->rows]; with
   * w->row_scale, y[i][r] is the dot product times row_scale[r] (one f32 multiply
   * after the sum).  Types: F32, F16, BF16, F8_E4M3, Q8_0, Q4_0, Q4_1, Q5_0,
   * Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q8_K (the CPU's; a device backend may
   * take fewer and refuses the rest when weights are uploaded). */
  void (*matmul)(ss_backend *be, const ss_weight *w, const float *x, int64_t n, float *y);
  /* Rotates the first rope_dim dimensions of each head of x (float[n][n_heads*head_dim])
   * in place by angle pos * theta^(-2i/rope_dim), or pos * inv_freq[i] when given
   * (angles in double precision). */
  void (*rope)(ss_backend *be, float *x, const int32_t *pos, int64_t n, const ss_rope_params *p);
  /* Optional (NULL: F32 only): SS_OK when kv_store and attention take a cache
   * of element type t, else an error status whose message names the type. */
  int (*kv_dtype_check)(ss_backend *be, ss_dtype t);
  /* Writes each token's K and V rows into its slot of the cache. */
  void (*kv_store)(ss_backend *be, const ss_kv_layer *kv, const ss_token_loc *loc, const float *k,
                   const float *v);
  /* Causal attention of each token over positions [0, pos] of its sequence, read from
   * the cache (which must already hold this batch's K/V).  q, out: float[n][n_head*head_dim].
   * Logits: (q . k) * scale, then the soft cap, then the temperature (ss_attn_params). */
  void (*attention)(ss_backend *be, const ss_kv_layer *kv, const ss_token_loc *loc, const float *q,
                    const ss_attn_params *p, float *out);
  /* out = silu(gate) * up, elementwise over count floats. */
  void (*swiglu)(ss_backend *be, const float *gate, const float *up, int64_t count, float *out);
  /* x += y, elementwise over count floats. */
  void (*add)(ss_backend *be, float *x, const float *y, int64_t count);

  /* ---- Slots added for mixture-of-experts and the Grok families.  Each is
   * elementwise or per row, so batch invariance holds trivially; the CPU
   * implementation is the reference a device backend is tested against. */

  /* out = gelu(gate) * up, elementwise over count floats (GeGLU; Grok experts).
   * tanh_approx != 0: gelu(x) = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
   * (jax.nn.gelu's default, which Grok-1's model.py uses); 0: the exact
   * 0.5 x (1 + erf(x / sqrt(2))).  out may alias gate or up. */
  void (*gelu_mul)(ss_backend *be, const float *gate, const float *up, int64_t count,
                   int tanh_approx, float *out);
  /* x = cap * tanh(x / cap), in place over count floats (cap > 0): Grok-2's
   * final-logit and router soft caps. */
  void (*softcap)(ss_backend *be, float *x, int64_t count, float cap);
  /* x *= s, in place over count floats (embedding and output multipliers). */
  void (*scale)(ss_backend *be, float *x, int64_t count, float s);
  /* Routing of n tokens: logits is float[n][E] (router outputs, f32).  For each
   * token, optionally soft-caps the logits, takes the softmax over all E
   * (accumulated in double, rounded to f32), picks the top_k largest
   * probabilities (ties: the lower expert id first), in decreasing order, and
   * writes their expert ids to ids[n][top_k] and their weights (renormalised to
   * sum 1 when asked) to weights[n][top_k].  ids and weights are host memory:
   * the engine groups tokens by expert on the host. */
  void (*moe_route)(ss_backend *be, const float *logits, int64_t n,
                    const ss_moe_route_params *p, int32_t *ids, float *weights);
  /* out[i] = x[rows[i]] for i < n, rows of `dim` floats: gathers the tokens
   * routed to one expert into a dense batch, and the rows that produce logits.
   * rows is host memory (trusted). */
  void (*gather_rows)(ss_backend *be, const float *x, const int32_t *rows, int64_t n, int64_t dim,
                      float *out);
  /* out[rows[i]] += w[i] * y[i] for i = 0, 1, ..., n-1 in that order, rows of
   * `dim` floats (w[i] * y[i][j] rounded to f32, then added): combines one
   * expert's outputs into its tokens' rows.  Called expert by expert in
   * increasing id, so every token's sum runs in a fixed order whatever the
   * batch.  rows and w are host memory; rows may repeat only across calls. */
  void (*scatter_add_rows)(ss_backend *be, float *out, const float *y, const int32_t *rows,
                           const float *w, int64_t n, int64_t dim);

  /* ---- Moving data: every backend fills these (memcpy/memset on the CPU) so
   * that the model code is the same whatever memory the backend computes in. */
  bool device;   /* alloc returns memory the host cannot dereference */
  /* dst (backend memory) <- src (host memory), and back; nbytes bytes.  Returns
   * SS_OK or an error status with a message (the CPU's cannot fail). */
  int (*upload)(ss_backend *be, void *dst, const void *src, size_t nbytes);
  int (*download)(ss_backend *be, void *dst, const void *src, size_t nbytes);
  /* nbytes of backend memory set to byte value `value`. */
  void (*memset)(ss_backend *be, void *dst, int value, size_t nbytes);
  /* dst <- src, nbytes bytes, both backend memory, not overlapping (a KV
   * block's copy-on-write); ordered with the kernels around it, without
   * waiting for it on a device.  Returns SS_OK or an error status with a
   * message. */
  int (*copy)(ss_backend *be, void *dst, const void *src, size_t nbytes);

  /* ---- Optional (NULL on the CPU): steps on an asynchronous device.
   * step_begin is called before the first kernel of a forward step with that
   * step's token locations (the same ss_token_loc the kernels will be given) and
   * the KV cache's block size, step_end after its last kernel; between the two the backend may capture the
   * step as a graph and replay it when the shape repeats, so nothing between
   * them may wait on the device or depend on the host's view of device data.
   * step_end returns SS_ERR_AGAIN when none of the step's work ran (a capture
   * failed): the caller runs the step once more, which the backend then runs
   * eagerly.  allreduce sums buf (backend memory) over the ranks through `coll`, queued
   * in order with the kernels; sync waits until everything queued has finished
   * (and, with a coll that can wait, keeps checking that the peers are alive;
   * coll NULL: a plain wait).  Errors: status + message. */
  int (*step_begin)(ss_backend *be, const ss_token_loc *loc, int64_t n_logits, int32_t block_size);
  int (*step_end)(ss_backend *be);
  int (*allreduce)(ss_backend *be, const ss_collective *coll, float *buf, int64_t count);
  int (*sync)(ss_backend *be, const ss_collective *coll);
};

/* The CPU backend with n_threads threads (<= 0: the usable cores divided among
 * the ranks on this node, ss_pool_default_threads).
 * Returns NULL on failure (message via ss_error_msg()). */
ss_backend *ss_backend_cpu_create(int n_threads);

/* Opt-in (--activations q8): matmuls with Q4_0, Q4_1 or Q8_0 weights quantize
 * the activations per 32-element block to 8 bits and sum exact integer dot
 * products (faster; not the exact path: see README "Numerics").  Still
 * deterministic, batch-invariant and the same on every CPU variant.  Other
 * types keep the exact path.  No effect on other backends. */
void ss_backend_cpu_set_q8_activations(ss_backend *be, bool on);

/* The CUDA backend is declared in kernels/cuda/cuda.h (builds with SS_HAVE_CUDA). */

/* Single-threaded reference dot product of one weight row with x (any compute
 * type), accumulated in double.  For tests. */
double ss_ref_dot(const ss_weight *w, int64_t row, const float *x);

#endif
