/* The CUDA backend: the kernel interface of kernels/kernels.h on one GPU, plus
 * the device operations the interface does not have a slot for yet.  Built
 * only with SS_HAVE_CUDA (CMake found nvcc); everything here is C.
 *
 * Memory: alloc/dealloc are device memory (cudaMalloc); upload/download copy
 * between host and device; weights, activations and the KV cache all live on
 * the device.  Index metadata (token ids, positions, block tables, logit rows)
 * is passed in host memory as on the CPU: the backend stages it through pinned
 * memory, once per step when the model calls step_begin.
 *
 * Numerics: activations and the KV cache are f32, every reduction accumulates
 * in f32.  A token's result does not depend on the other tokens of its batch
 * as long as the batch takes the same matmul path (see SS_CUDA_GEMV_MAX_N):
 * batches of at most that many tokens use our own kernels (one warp per output
 * row, weights dequantized in registers, a fixed reduction tree); larger ones
 * use cuBLAS tensor-core GEMMs (bf16/f16 inputs, f32 accumulation; quantized
 * weights are first dequantized to bf16), whose rounding differs.  With
 * batch_invariant set every batch size takes our kernels, so outputs are
 * identical whatever the batch, at the cost of prefill speed.
 *
 * Steps and graphs: step_begin/step_end bracket a forward step.  With graphs
 * on, the first step of a new shape runs eagerly, the second is captured into
 * a CUDA graph, and later steps of that shape replay it: in replay the vtable
 * calls only stage their metadata on the host (into the same pinned slots the
 * graph copies from) and step_end launches the graph.  A shape is the token
 * count, the logit row count, the number of attention tiles and the block
 * table width (rounded up to a power of two), i.e. everything host-side that
 * shaped a kernel launch; positions and block ids are read on the device. */
#ifndef SS_KERNELS_CUDA_H
#define SS_KERNELS_CUDA_H

#include <stdbool.h>
#include <stdint.h>

#include "kernels/kernels.h"

/* Batches up to this many tokens use our GEMV kernels (see above). */
#define SS_CUDA_GEMV_MAX_N 8

typedef struct ss_cuda_opts {
  int device;            /* CUDA device ordinal (the node-local rank under MPI) */
  bool graphs;           /* capture decode steps as CUDA graphs and replay them */
  bool batch_invariant;  /* our kernels for every batch size (no cuBLAS) */
} ss_cuda_opts;

/* Number of usable CUDA devices; 0 when there are none or no driver (never an
 * error: callers use it to choose a default device). */
int ss_cuda_device_count(void);

/* The CUDA backend on opts->device.  NULL on failure, with a message naming
 * the device and the CUDA error (ss_error_msg()). */
ss_backend *ss_backend_cuda_create_opts(const ss_cuda_opts *opts);
/* Defaults: graphs on unless SS_CUDA_GRAPHS=0 is set in the environment,
 * batch_invariant when SS_CUDA_BATCH_INVARIANT=1. */
ss_backend *ss_backend_cuda_create(int device);

/* True when be is a CUDA backend. */
bool ss_backend_is_cuda(const ss_backend *be);

/* Steps replayed from graphs and captured so far (for tests and --profile). */
typedef struct ss_cuda_graph_stats {
  uint64_t eager, captured, replayed;
  uint64_t capture_failed; /* captures that failed (those steps ran eagerly) */
  int cached;  /* graphs held */
} ss_cuda_graph_stats;
ss_cuda_graph_stats ss_cuda_graph_stats_get(const ss_backend *be);
/* Turns capture on or off; off also drops the cached graphs. */
void ss_cuda_set_graphs(ss_backend *be, bool on);

/* ---- Operations that are not (yet) vtable slots --------------------------
 * Contracts for the MoE / Grok work, to be wired as slots when those land.
 * All pointers are device memory, all calls are queued on the backend's
 * stream, f32 in and out. */

/* out = gelu(gate) * up over count floats, GeLU in its tanh form
 * 0.5*g*(1 + tanh(sqrt(2/pi)*(g + 0.044715*g^3))) as in Grok-1's experts and
 * ggml's GEGLU. out may alias gate or up. */
void ss_cuda_geglu(ss_backend *be, const float *gate, const float *up, int64_t count, float *out);
/* x = cap * tanh(x / cap) in place over count floats (final-logit and router
 * soft caps; cap > 0). */
void ss_cuda_softcap(ss_backend *be, float *x, int64_t count, float cap);
/* out = x * scale in place over count floats (Grok's embedding and output
 * multipliers). */
void ss_cuda_scale(ss_backend *be, float *x, int64_t count, float scale);

/* Device sampling helpers.  For each of n rows of width vocab (device memory),
 * the k largest values and their indices in descending order (ties: the lower
 * index first, as the CPU sampler's sort), written to host memory ids[n][k]
 * and vals[n][k].  k <= 64.  Waits for the result.  Returns SS_OK or an error. */
int ss_cuda_topk(ss_backend *be, const float *logits, int64_t n, int64_t vocab, int k,
                 int32_t *ids, float *vals);
/* k = 1: greedy decoding without bringing the logits to the host. */
int ss_cuda_argmax(ss_backend *be, const float *logits, int64_t n, int64_t vocab, int32_t *ids);

/* The backend's stream (a cudaStream_t), for code that queues its own work. */
void *ss_cuda_stream(const ss_backend *be);

#endif
