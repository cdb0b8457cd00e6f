/* Private to the CUDA backend's host code (backend.c, step.c): the context
 * and the one check macro. */
#ifndef SS_CUDA_CTX_H
#define SS_CUDA_CTX_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include "kernels/cuda/cuda.h"
#include "kernels/cuda/cuda_internal.h"

enum ss_cuda_mode {
  SS_CUDA_MODE_NONE = 0, /* outside a step: kernels run as called */
  SS_CUDA_MODE_EAGER,    /* in a step, running as called */
  SS_CUDA_MODE_CAPTURE,  /* in a step, recording a graph (run at step_end) */
  SS_CUDA_MODE_REPLAY,   /* in a step whose graph exists: only stage metadata */
};

enum ss_cuda_scratch {
  SS_CUDA_SCR_PART,   /* attention split partials */
  SS_CUDA_SCR_XH,     /* activations converted to bf16/f16 for cuBLAS */
  SS_CUDA_SCR_WH,     /* quantized weight rows dequantized to bf16 for cuBLAS */
  SS_CUDA_SCR_TOPK,   /* top-k ids and values */
  SS_CUDA_SCR_COUNT_
};

#define SS_CUDA_MAX_GRAPHS 64

typedef struct ss_cuda_graph {
  ss_cuda_graph_key key;
  bool used;
  uint64_t last_used;   /* graph_clock when last found */
  bool failed;          /* capturing it failed: the shape runs eagerly */
  cudaGraphExec_t exec; /* NULL until captured */
  uint64_t sig;         /* the buffers its kernels were captured with */
} ss_cuda_graph;

/* A batch's token locations in device memory (pos[n], block tables [n][W],
 * attention tiles), staged from the host. */
typedef struct ss_cuda_loc {
  const ss_token_loc *src; /* the host struct it was staged from */
  const int32_t *src_pos;
  int64_t n;
  int32_t block_size;
  int32_t width;      /* block-table entries per token (a power of two) */
  int32_t *pos;       /* device */
  int32_t *bt;        /* device */
  ss_cuda_tile *tiles;/* device */
  int n_tiles, tile_max;
  ss_cuda_run *h_runs;   /* the attention launches (host) */
  int n_runs;
} ss_cuda_loc;

/* Host buffers a staged view's tiles and runs live in. */
typedef struct ss_cuda_host_plan {
  ss_cuda_tile *tiles;
  size_t tiles_cap;
  ss_cuda_run *runs;
  size_t runs_cap;
} ss_cuda_host_plan;

typedef struct ss_cuda {
  int device, rank;
  char host[64];
  int n_sm;
  size_t smem_optin;
  cudaStream_t stream;
  cublasHandle_t blas;
  void *blas_ws;
  bool graphs, invariant;

  /* Pinned staging arena and its device mirror: index metadata goes host ->
   * pin -> dpin, at offsets that repeat from step to step (graph replays copy
   * from the same pinned addresses). */
  uint8_t *pin, *dpin;
  size_t pin_cap, pin_off;
  uint8_t *retired_pin[8], *retired_dpin[8]; /* outgrown mid-step, freed at the next */
  int n_retired;

  /* Host scratch to build metadata before staging. */
  int32_t *h_meta;
  size_t h_meta_cap;     /* int32 entries */
  ss_cuda_host_plan step_plan; /* the step's view (c->step) */
  ss_cuda_host_plan tmp_plan;  /* views staged for other locations */

  int mode;
  ss_cuda_loc step;      /* the current step's locations (valid while in a step) */
  bool step_valid;
  ss_cuda_graph *cur;
  uint64_t sig;          /* running hash of this step's buffer addresses */
  ss_cuda_graph graphs_tab[SS_CUDA_MAX_GRAPHS];
  uint64_t graph_clock;  /* counts graph lookups (least-recently-used eviction) */
  ss_cuda_graph_stats stats;

  void *scr[SS_CUDA_SCR_COUNT_];
  size_t scr_nbytes[SS_CUDA_SCR_COUNT_];

  /* How long a wait for the stream may take (SS_GPU_STEP_TIMEOUT_S; 0: no
   * limit), and the steps begun so far (named when a wait times out). */
  double step_timeout_s;
  uint64_t n_steps;

  /* First error since the last step_end/sync (kernel slots return nothing). */
  int err;
  char errmsg[512];
} ss_cuda;

/* cuBLAS entry points, resolved at run time (blas.c). */
typedef struct ss_cublas_api {
  bool loaded;
  cublasStatus_t (*create)(cublasHandle_t *);
  cublasStatus_t (*destroy)(cublasHandle_t);
  cublasStatus_t (*set_stream)(cublasHandle_t, cudaStream_t);
  cublasStatus_t (*set_workspace)(cublasHandle_t, void *, size_t);
  cublasStatus_t (*gemm_ex)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int, int, int,
                            const void *, const void *, cudaDataType, int, const void *,
                            cudaDataType, int, const void *, void *, cudaDataType, int,
                            cublasComputeType_t, cublasGemmAlgo_t);
  const char *(*status_string)(cublasStatus_t);
} ss_cublas_api;
extern ss_cublas_api ss_cublas;
/* Loads cuBLAS once; NULL, or why it could not be loaded. */
const char *ss_cublas_load(void);

/* Records the first error: rank, host, device, file:line, the call and the
 * library's own message. */
void ss_cuda_record(ss_cuda *c, const char *file, int line, const char *call, const char *msg);
/* Returns the recorded error as a status (message via ss_error) and clears it. */
int ss_cuda_take_err(ss_cuda *c);

/* The one check macro for CUDA runtime calls (cudaError_t or a launcher's int). */
#define SS_CUDA_CHECK(c, call)                                                                  \
  do {                                                                                        \
    int e_ = (int)(call);                                                                     \
    if (e_ != 0) ss_cuda_record((c), __FILE__, __LINE__, #call,                               \
                                cudaGetErrorString((cudaError_t)e_));                         \
  } while (0)
#define SS_CUBLAS_CHECK(c, call)                                                                \
  do {                                                                                        \
    cublasStatus_t s_ = (call);                                                               \
    if (s_ != CUBLAS_STATUS_SUCCESS)                                                          \
      ss_cuda_record((c), __FILE__, __LINE__, #call, ss_cublas.status_string(s_));            \
  } while (0)

/* Folds buffer addresses into the step's signature: a replay must use the
 * buffers its graph was captured with (a different forward state or a freed
 * and reallocated buffer of the same shape would otherwise be read stale). */
static inline void ss_cuda_sig(ss_cuda *c, const void *a, const void *b, const void *d) {
  uint64_t h = c->sig ^ (uint64_t)(uintptr_t)a;
  h = (h ^ (h >> 29)) * 0xbf58476d1ce4e5b9ull ^ (uint64_t)(uintptr_t)b;
  h = (h ^ (h >> 31)) * 0x94d049bb133111ebull ^ (uint64_t)(uintptr_t)d;
  c->sig = h ^ (h >> 32);
}

/* Makes this backend's GPU current on the calling thread (cheap when it is). */
void ss_cuda_enter(ss_cuda *c);

/* Waits for everything queued on the stream, polling with the step deadline
 * instead of blocking: false after an error or a timeout (recorded, naming
 * the rank and the step).  `what` names the wait in the message. */
bool ss_cuda_wait(ss_cuda *c, const char *what);

/* Stages nbytes of host memory; returns its device address (NULL after an
 * error, recorded). */
void *ss_cuda_stage(ss_cuda *c, const void *src, size_t nbytes);
/* The device view of loc: the step's when loc is the step's, else staged now
 * into *tmp.  NULL after an error. */
const ss_cuda_loc *ss_cuda_loc_get(ss_cuda *c, const ss_token_loc *loc, int32_t block_size,
                                   ss_cuda_loc *tmp);
/* Device positions for rope: the step's when pos is the step's. */
const int32_t *ss_cuda_pos_get(ss_cuda *c, const int32_t *pos, int64_t n);
/* Scratch of at least nbytes (grown outside graphs only).  NULL after an error. */
void *ss_cuda_scratch(ss_cuda *c, int kind, size_t nbytes);

/* Step slots (step.c). */
int ss_cuda_step_begin(ss_backend *be, const ss_token_loc *loc, int64_t n_logits,
                       int32_t block_size);
int ss_cuda_step_end(ss_backend *be);
void ss_cuda_graphs_drop(ss_cuda *c);
void ss_cuda_staging_free(ss_cuda *c);

#endif
