/* The CUDA backend's steps: staging index metadata through pinned memory,
 * the device view of a batch's token locations, scratch buffers, and the
 * capture and replay of steps as CUDA graphs.
 *
 * Why replay works without the model knowing: in a replayed step every vtable
 * call still runs on the host, but launches nothing; it only writes its
 * metadata into the pinned arena, at the same offsets as when the graph was
 * captured (same shape, same calls, same sizes), and the graph's first nodes
 * copy those bytes to the device.  Only decode steps are captured: their
 * tiles, rows and launch grouping follow from the token count, which is part
 * of the graph key with the block-table width (launch_plan.h), so a replay
 * never runs a launch shaped for another batch. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cuda/cuda_ctx.h"
#include "runtime/base/status.h"

#define PIN_MIN_NBYTES (1u << 20)

static size_t align16(size_t x) { return (x + 15) & ~(size_t)15; }

/* ---- waiting ------------------------------------------------------------- */

typedef struct stream_poll {
  cudaStream_t stream;
  cudaError_t err;
} stream_poll;

static int stream_query(void *arg) {
  stream_poll *p = arg;
  p->err = cudaStreamQuery(p->stream);
  if (p->err == cudaSuccess) return 0;
  return p->err == cudaErrorNotReady ? 1 : -1;
}

bool ss_cuda_wait(ss_cuda *c, const char *what) {
  if (c->err) return false;
  double waited = 0.0;
  stream_poll p = {c->stream, cudaSuccess};
  int rc = ss_cuda_poll_wait(stream_query, &p, c->step_timeout_s, &waited);
  if (rc == 0) return true;
  char msg[256];
  if (rc == SS_CUDA_WAIT_TIMEOUT) {
    cudaGetLastError();
    snprintf(msg, sizeof msg, "step %llu: the GPU stream has not finished after %.1f s "
             "(SS_GPU_STEP_TIMEOUT_S = %g; a collective may be waiting for a lost peer)",
             (unsigned long long)c->n_steps, waited, c->step_timeout_s);
  } else {
    snprintf(msg, sizeof msg, "step %llu: %s", (unsigned long long)c->n_steps,
             cudaGetErrorString(p.err));
  }
  ss_cuda_record(c, __FILE__, __LINE__, what, msg);
  return false;
}

/* ---- staging ------------------------------------------------------------- */

static bool pin_alloc(ss_cuda *c, size_t cap) {
  uint8_t *pin = NULL, *dpin = NULL;
  if (cudaHostAlloc((void **)&pin, cap, cudaHostAllocDefault) != cudaSuccess ||
      cudaMalloc((void **)&dpin, cap) != cudaSuccess) {
    cudaGetLastError();
    if (pin) cudaFreeHost(pin);
    ss_cuda_record(c, __FILE__, __LINE__, "cudaHostAlloc/cudaMalloc (staging)",
                   "out of memory for the metadata staging arena");
    return false;
  }
  c->pin = pin;
  c->dpin = dpin;
  c->pin_cap = cap;
  c->pin_off = 0;
  return true;
}

static void retired_free(ss_cuda *c) {
  for (int i = 0; i < c->n_retired; i++) {
    cudaFreeHost(c->retired_pin[i]);
    cudaFree(c->retired_dpin[i]);
  }
  c->n_retired = 0;
}

void ss_cuda_staging_free(ss_cuda *c) {
  retired_free(c);
  if (c->pin) cudaFreeHost(c->pin);
  if (c->dpin) cudaFree(c->dpin);
  c->pin = c->dpin = NULL;
  c->pin_cap = c->pin_off = 0;
}

/* Room for nbytes more.  Outside a step the arena is simply reused after a
 * wait (nothing staged earlier is referenced any more); inside an eager step
 * earlier stagings are still to be read, so a bigger arena replaces it and the
 * old one is retired until the next step. */
static bool pin_reserve(ss_cuda *c, size_t nbytes) {
  size_t off = align16(c->pin_off);
  if (c->pin && off + nbytes <= c->pin_cap) return true;
  if (c->mode == SS_CUDA_MODE_CAPTURE || c->mode == SS_CUDA_MODE_REPLAY) {
    /* The eager run of the same shape sized the arena: this is a bug. */
    ss_cuda_record(c, __FILE__, __LINE__, "pin_reserve", "staging arena overflow in a graph step");
    return false;
  }
  size_t cap = c->pin_cap ? c->pin_cap : PIN_MIN_NBYTES;
  while (cap < 2 * (nbytes + 64)) cap *= 2;
  if (c->mode == SS_CUDA_MODE_NONE) {
    if (!ss_cuda_wait(c, "waiting for the stream (staging arena)")) return false;
    if (c->pin && nbytes + 64 <= c->pin_cap) {
      c->pin_off = 0;
      return true;
    }
    ss_cuda_staging_free(c);
    ss_cuda_graphs_drop(c); /* graphs copy from the old arena */
    return pin_alloc(c, cap);
  }
  if (c->n_retired == (int)(sizeof c->retired_pin / sizeof *c->retired_pin)) {
    ss_cuda_record(c, __FILE__, __LINE__, "pin_reserve", "too many staging arenas in one step");
    return false;
  }
  c->retired_pin[c->n_retired] = c->pin;
  c->retired_dpin[c->n_retired++] = c->dpin;
  c->pin = c->dpin = NULL;
  ss_cuda_graphs_drop(c);
  return pin_alloc(c, cap * 2);
}

void *ss_cuda_stage(ss_cuda *c, const void *src, size_t nbytes) {
  if (nbytes == 0) nbytes = 1;
  if (!pin_reserve(c, nbytes)) return NULL;
  const size_t off = align16(c->pin_off);
  memcpy(c->pin + off, src, nbytes);
  if (c->mode != SS_CUDA_MODE_REPLAY)
    SS_CUDA_CHECK(c, cudaMemcpyAsync(c->dpin + off, c->pin + off, nbytes, cudaMemcpyHostToDevice,
                                     c->stream));
  c->pin_off = off + nbytes;
  return c->dpin + off;
}

/* ---- token locations --------------------------------------------------------- */

/* Grows a host buffer of `count` elements of `size` bytes (contents not kept). */
static bool host_reserve(void **buf, size_t *cap, size_t count, size_t size) {
  if (count <= *cap && *buf) return true;
  free(*buf);
  *buf = malloc((count ? count : 1) * size);
  *cap = *buf ? count : 0;
  return *buf != NULL;
}

/* Builds and stages loc's device view into *out.  The step's own view keeps
 * its host tiles and runs in buffers of its own: a view staged later in the
 * same step (a call with other locations) must not overwrite them. */
static bool loc_stage(ss_cuda *c, const ss_token_loc *loc, int32_t block_size, bool for_step,
                      ss_cuda_loc *out) {
  const int64_t n = loc->n;
  const int32_t W = ss_cuda_plan_width(loc, block_size);
  ss_cuda_host_plan *hp = for_step ? &c->step_plan : &c->tmp_plan;
  if (!host_reserve((void **)&c->h_meta, &c->h_meta_cap, (size_t)n * (1 + (size_t)W),
                    sizeof *c->h_meta) ||
      !host_reserve((void **)&hp->tiles, &hp->tiles_cap, (size_t)n, sizeof *hp->tiles) ||
      !host_reserve((void **)&hp->runs, &hp->runs_cap, (size_t)n, sizeof *hp->runs)) {
    ss_cuda_record(c, __FILE__, __LINE__, "malloc", "out of host memory for step metadata");
    return false;
  }
  int32_t *pos = c->h_meta, *bt = c->h_meta + n;
  memcpy(pos, loc->pos, (size_t)n * sizeof *pos);
  int32_t tile_max = 0;
  const int32_t n_tiles = ss_cuda_plan_tiles(loc, hp->tiles, &tile_max);
  ss_cuda_plan_tables(loc, block_size, hp->tiles, n_tiles, W, bt);
  const int32_t n_runs = ss_cuda_plan_runs(hp->tiles, n_tiles, SS_CUDA_ATTN_MAX_TOKENS, hp->runs);
  *out = (ss_cuda_loc){.src = loc, .src_pos = loc->pos, .n = n, .block_size = block_size,
                       .width = W, .n_tiles = n_tiles,
                       .tile_max = tile_max, .h_runs = hp->runs, .n_runs = n_runs};
  out->pos = ss_cuda_stage(c, pos, (size_t)n * sizeof *pos);
  out->bt = ss_cuda_stage(c, bt, (size_t)n * W * sizeof *bt);
  out->tiles = ss_cuda_stage(c, hp->tiles, (size_t)n_tiles * sizeof *hp->tiles);
  return out->pos && out->bt && out->tiles;
}

const ss_cuda_loc *ss_cuda_loc_get(ss_cuda *c, const ss_token_loc *loc, int32_t block_size,
                                   ss_cuda_loc *tmp) {
  if (c->step_valid && c->step.src_pos == loc->pos && c->step.n == loc->n &&
      c->step.block_size == block_size)
    return &c->step;
  return loc_stage(c, loc, block_size, false, tmp) ? tmp : NULL;
}

const int32_t *ss_cuda_pos_get(ss_cuda *c, const int32_t *pos, int64_t n) {
  if (c->step_valid && c->step.src_pos == pos && c->step.n == n) return c->step.pos;
  return ss_cuda_stage(c, pos, (size_t)n * sizeof *pos);
}

/* ---- scratch ------------------------------------------------------------------- */

void *ss_cuda_scratch(ss_cuda *c, int kind, size_t nbytes) {
  if (c->scr_nbytes[kind] >= nbytes) return c->scr[kind];
  if (c->mode == SS_CUDA_MODE_CAPTURE || c->mode == SS_CUDA_MODE_REPLAY) {
    ss_cuda_record(c, __FILE__, __LINE__, "ss_cuda_scratch", "scratch growth in a graph step");
    return NULL;
  }
  /* Graphs captured earlier point at the old buffer. */
  ss_cuda_graphs_drop(c);
  if (c->scr[kind]) {
    if (!ss_cuda_wait(c, "waiting for the stream (scratch growth)")) return NULL;
    cudaFree(c->scr[kind]);
  }
  c->scr[kind] = NULL;
  c->scr_nbytes[kind] = 0;
  size_t cap = nbytes + nbytes / 4 + 256;
  cudaError_t e = cudaMalloc(&c->scr[kind], cap);
  if (e != cudaSuccess) {
    c->scr[kind] = NULL;
    ss_cuda_record(c, __FILE__, __LINE__, "cudaMalloc(scratch)", cudaGetErrorString(e));
    return NULL;
  }
  c->scr_nbytes[kind] = cap;
  return c->scr[kind];
}

/* ---- graphs ---------------------------------------------------------------------- */

void ss_cuda_graphs_drop(ss_cuda *c) {
  for (int i = 0; i < SS_CUDA_MAX_GRAPHS; i++) {
    if (c->graphs_tab[i].exec) cudaGraphExecDestroy(c->graphs_tab[i].exec);
    c->graphs_tab[i] = (ss_cuda_graph){0};
  }
  c->stats.cached = 0;
  c->cur = NULL;
}

/* The graph of a key, or a slot for it: a free one, else the least recently
 * used (its graph is destroyed: that shape is captured again if it returns). */
static ss_cuda_graph *graph_find(ss_cuda *c, const ss_cuda_graph_key *key, bool *fresh) {
  ss_cuda_graph *free_slot = NULL, *lru = NULL;
  c->graph_clock++;
  for (int i = 0; i < SS_CUDA_MAX_GRAPHS; i++) {
    ss_cuda_graph *g = &c->graphs_tab[i];
    if (!g->used) {
      if (!free_slot) free_slot = g;
      continue;
    }
    if (memcmp(&g->key, key, sizeof g->key) == 0) {
      g->last_used = c->graph_clock;
      *fresh = false;
      return g;
    }
    if (!lru || g->last_used < lru->last_used) lru = g;
  }
  if (!free_slot) {
    if (lru->exec) {
      cudaGraphExecDestroy(lru->exec);
      c->stats.cached--;
    }
    *lru = (ss_cuda_graph){0};
    free_slot = lru;
  }
  *fresh = true;
  free_slot->used = true;
  free_slot->key = *key;
  free_slot->last_used = c->graph_clock;
  return free_slot;
}

int ss_cuda_step_begin(ss_backend *be, const ss_token_loc *loc, int64_t n_logits,
                       int32_t block_size) {
  ss_cuda *c = be->ctx;
  ss_cuda_enter(c);
  if (c->mode != SS_CUDA_MODE_NONE)
    return ss_error(SS_ERR_INTERNAL, "cuda: step_begin inside a step");
  /* Between steps: everything of the last one has run (rank 0 copied its logits
   * out; workers waited in sync), so the arena can be reused from the start.
   * The wait polls with a deadline: a step whose kernels never finish (a
   * collective waiting for a lost peer) fails here, naming the rank and the
   * step, instead of blocking the engine forever. */
  c->n_steps++;
  if (!ss_cuda_wait(c, "step_begin: waiting for the previous step")) return ss_cuda_take_err(c);
  retired_free(c);
  c->pin_off = 0;
  c->cur = NULL;
  c->sig = 0;
  c->step_valid = false;
  /* Decode steps only are captured (launch_plan.h: their key fixes every launch). */
  ss_cuda_graph_key key;
  const bool capturable = ss_cuda_plan_key(loc, n_logits, block_size, &key);
  c->mode = SS_CUDA_MODE_EAGER;
  if (c->graphs && capturable) {
    bool fresh;
    ss_cuda_graph *g = graph_find(c, &key, &fresh);
    c->cur = g;
    if (g->exec) {
      c->mode = SS_CUDA_MODE_REPLAY;
    } else if (!fresh && !g->failed) {
      /* Second sighting of the shape: the eager run sized every buffer. */
      cudaError_t e = cudaStreamBeginCapture(c->stream, cudaStreamCaptureModeThreadLocal);
      if (e == cudaSuccess) {
        c->mode = SS_CUDA_MODE_CAPTURE;
      } else { /* this step runs eagerly; the shape is not tried again */
        cudaGetLastError();
        g->failed = true;
        c->stats.capture_failed++;
      }
    }
  }
  c->step_valid = loc_stage(c, loc, block_size, true, &c->step);
  return SS_OK;
}

int ss_cuda_step_end(ss_backend *be) {
  ss_cuda *c = be->ctx;
  ss_cuda_enter(c);
  const int mode = c->mode;
  c->mode = SS_CUDA_MODE_NONE;
  c->step_valid = false;
  if (mode == SS_CUDA_MODE_CAPTURE) {
    cudaGraph_t graph = NULL;
    cudaError_t e = cudaStreamEndCapture(c->stream, &graph);
    cudaGraphExec_t exec = NULL;
    if (e == cudaSuccess && !c->err) {
      e = cudaGraphInstantiate(&exec, graph, 0);
      if (e != cudaSuccess) exec = NULL;
    }
    if (graph) cudaGraphDestroy(graph);
    if (!exec) {
      /* The captured work never ran.  This shape is not captured again, and
       * the caller runs the step once more, eagerly (SS_ERR_AGAIN). */
      cudaGetLastError();
      c->cur->failed = true;
      c->cur = NULL;
      c->err = 0;
      c->stats.capture_failed++;
      return ss_error(SS_ERR_AGAIN, "cuda: capturing the step as a graph failed (%s); "
                      "running it eagerly", e != cudaSuccess ? cudaGetErrorString(e) : c->errmsg);
    }
    c->cur->exec = exec;
    c->cur->sig = c->sig;
    c->stats.captured++;
    c->stats.cached++;
    SS_CUDA_CHECK(c, cudaGraphLaunch(exec, c->stream));
  } else if (mode == SS_CUDA_MODE_REPLAY) {
    if (c->sig != c->cur->sig) {
      /* Same shape, other buffers: nothing of this step ran.  Its graph goes;
       * the caller runs the step again, eagerly, and a later step of the shape
       * is captured with the buffers it uses then. */
      cudaGraphExecDestroy(c->cur->exec);
      *c->cur = (ss_cuda_graph){0};
      c->stats.cached--;
      c->cur = NULL;
      return ss_error(SS_ERR_AGAIN, "cuda: a captured step shape came with other buffers; "
                      "running it eagerly");
    }
    c->stats.replayed++;
    SS_CUDA_CHECK(c, cudaGraphLaunch(c->cur->exec, c->stream));
  } else if (mode == SS_CUDA_MODE_EAGER) {
    c->stats.eager++;
  }
  c->cur = NULL;
  return ss_cuda_take_err(c);
}
