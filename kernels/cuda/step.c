/* The CUDA backend's steps: staging index metadata through pinned memory,
 * the device view of a batch's token locations, scratch buffers, and the
 * capture and replay of steps as CUDA graphs.
 *
 * Why replay works without the model knowing: in a replayed step every vtable
 * call still runs on the host, but launches nothing; it only writes its
 * metadata into the pinned arena, at the same offsets as when the graph was
 * captured (same shape, same calls, same sizes), and the graph's first nodes
 * copy those bytes to the device.  Kernel launch parameters that the host
 * derived from the batch (token count, tile count, block-table width) are part
 * of the graph key, so a replay never runs a launch shaped for another batch. */
#include <stdlib.h>
#include <string.h>

#include "kernels/cuda/cuda_ctx.h"
#include "runtime/base/status.h"

#define PIN_MIN_NBYTES (1u << 20)
#define TILE_MAX 16 /* prefill tokens sharing one K/V load */

static size_t align16(size_t x) { return (x + 15) & ~(size_t)15; }

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
    SS_CUDA_CHECK(c, cudaStreamSynchronize(c->stream));
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

static int32_t pow2_at_least(int64_t x) {
  int32_t w = 1;
  while (w < x) w *= 2;
  return w;
}

/* Builds and stages loc's device view into *out. */
static bool loc_stage(ss_cuda *c, const ss_token_loc *loc, int32_t block_size, ss_cuda_loc *out) {
  const int64_t n = loc->n;
  int64_t need = 1;
  for (int64_t t = 0; t < n; t++)
    if (loc->pos[t] / block_size + 1 > need) need = loc->pos[t] / block_size + 1;
  const int32_t W = pow2_at_least(need);
  const size_t meta = (size_t)n * (1 + (size_t)W);
  if (meta > c->h_meta_cap) {
    free(c->h_meta);
    c->h_meta = malloc(meta * sizeof *c->h_meta);
    c->h_meta_cap = c->h_meta ? meta : 0;
  }
  if ((size_t)n > c->h_tiles_cap) {
    free(c->h_tiles);
    c->h_tiles = malloc((size_t)n * sizeof *c->h_tiles);
    c->h_tiles_cap = c->h_tiles ? (size_t)n : 0;
  }
  if (!c->h_meta || !c->h_tiles) {
    ss_cuda_record(c, __FILE__, __LINE__, "malloc", "out of host memory for step metadata");
    return false;
  }
  int32_t *pos = c->h_meta, *bt = c->h_meta + n;
  memcpy(pos, loc->pos, (size_t)n * sizeof *pos);
  memset(bt, 0, (size_t)n * W * sizeof *bt);
  int n_tiles = 0, tile_max = 0;
  for (int64_t t = 0; t < n; t++) {
    memcpy(bt + t * W, loc->block_table[t], (size_t)(loc->pos[t] / block_size + 1) * sizeof *bt);
    /* A tile grows while the tokens continue one sequence position by position. */
    ss_cuda_tile *cur = n_tiles ? &c->h_tiles[n_tiles - 1] : NULL;
    if (cur && cur->count < TILE_MAX && loc->block_table[t] == loc->block_table[cur->t0] &&
        loc->pos[t] == loc->pos[cur->t0] + cur->count) {
      cur->count++;
    } else {
      c->h_tiles[n_tiles++] = (ss_cuda_tile){.t0 = (int32_t)t, .count = 1};
      cur = &c->h_tiles[n_tiles - 1];
    }
    if (cur->count > tile_max) tile_max = cur->count;
  }
  *out = (ss_cuda_loc){.src = loc, .src_pos = loc->pos, .n = n, .block_size = block_size,
                       .width = W, .h_tiles = c->h_tiles, .n_tiles = n_tiles,
                       .tile_max = tile_max};
  out->pos = ss_cuda_stage(c, pos, (size_t)n * sizeof *pos);
  out->bt = ss_cuda_stage(c, bt, (size_t)n * W * sizeof *bt);
  out->tiles = ss_cuda_stage(c, c->h_tiles, (size_t)n_tiles * sizeof *c->h_tiles);
  return out->pos && out->bt && out->tiles;
}

const ss_cuda_loc *ss_cuda_loc_get(ss_cuda *c, const ss_token_loc *loc, int32_t block_size,
                                   ss_cuda_loc *tmp) {
  if (c->step_valid && c->step.src_pos == loc->pos && c->step.n == loc->n &&
      c->step.block_size == block_size)
    return &c->step;
  return loc_stage(c, loc, block_size, tmp) ? tmp : NULL;
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
    SS_CUDA_CHECK(c, cudaStreamSynchronize(c->stream));
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

static ss_cuda_graph *graph_find(ss_cuda *c, const int64_t key[SS_CUDA_KEY_LEN], bool *fresh) {
  ss_cuda_graph *free_slot = NULL;
  for (int i = 0; i < SS_CUDA_MAX_GRAPHS; i++) {
    ss_cuda_graph *g = &c->graphs_tab[i];
    if (!g->used) {
      if (!free_slot) free_slot = g;
      continue;
    }
    if (memcmp(g->key, key, sizeof g->key) == 0) {
      *fresh = false;
      return g;
    }
  }
  if (!free_slot) { /* full: start over (shapes seen long ago are recaptured) */
    ss_cuda_graphs_drop(c);
    free_slot = &c->graphs_tab[0];
  }
  *fresh = true;
  free_slot->used = true;
  memcpy(free_slot->key, key, sizeof free_slot->key);
  return free_slot;
}

int ss_cuda_step_begin(ss_backend *be, const ss_token_loc *loc, int64_t n_logits,
                       int32_t block_size) {
  ss_cuda *c = be->ctx;
  ss_cuda_enter(c);
  if (c->mode != SS_CUDA_MODE_NONE)
    return ss_error(SS_ERR_INTERNAL, "cuda: step_begin inside a step");
  /* Between steps: everything of the last one has run (rank 0 copied its logits
   * out; workers waited in sync), so the arena can be reused from the start. */
  SS_CUDA_CHECK(c, cudaStreamSynchronize(c->stream));
  retired_free(c);
  c->pin_off = 0;
  c->cur = NULL;
  c->sig = 0;
  c->step_valid = false;
  /* The shape: what loc_stage derives and the kernels' launches depend on. */
  int64_t need = 1;
  for (int64_t t = 0; t < loc->n; t++)
    if (loc->pos[t] / block_size + 1 > need) need = loc->pos[t] / block_size + 1;
  int n_tiles = 0, tile_max = 0, run = 0;
  for (int64_t t = 0; t < loc->n; t++) {
    const bool cont = t > 0 && run < TILE_MAX && loc->block_table[t] == loc->block_table[t - 1] &&
                      loc->pos[t] == loc->pos[t - 1] + 1;
    run = cont ? run + 1 : 1;
    if (!cont) n_tiles++;
    if (run > tile_max) tile_max = run;
  }
  const int64_t key[SS_CUDA_KEY_LEN] = {loc->n, n_logits, n_tiles, tile_max,
                                        pow2_at_least(need), block_size};
  c->mode = SS_CUDA_MODE_EAGER;
  if (c->graphs) {
    bool fresh;
    ss_cuda_graph *g = graph_find(c, key, &fresh);
    c->cur = g;
    if (g->exec) {
      c->mode = SS_CUDA_MODE_REPLAY;
    } else if (!fresh) {
      /* Second sighting of the shape: the eager run sized every buffer. */
      cudaError_t e = cudaStreamBeginCapture(c->stream, cudaStreamCaptureModeThreadLocal);
      if (e == cudaSuccess) c->mode = SS_CUDA_MODE_CAPTURE;
      else ss_cuda_record(c, __FILE__, __LINE__, "cudaStreamBeginCapture", cudaGetErrorString(e));
    }
  }
  c->step_valid = loc_stage(c, loc, block_size, &c->step);
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
    if (e != cudaSuccess || c->err) {
      if (e != cudaSuccess)
        ss_cuda_record(c, __FILE__, __LINE__, "cudaStreamEndCapture", cudaGetErrorString(e));
      if (graph) cudaGraphDestroy(graph);
      cudaGetLastError();
      /* The captured work never ran: this step's results are lost.  Graphs
       * stay off from here on (SS_CUDA_GRAPHS=0 does the same from the start). */
      c->graphs = false;
      ss_cuda_graphs_drop(c);
      int rc = ss_cuda_take_err(c);
      return ss_error(rc, "%s (capturing a step as a CUDA graph; graphs are now off, set "
                      "SS_CUDA_GRAPHS=0 to start without them)", ss_error_msg());
    }
    cudaGraphExec_t exec = NULL;
    e = cudaGraphInstantiate(&exec, graph, 0);
    cudaGraphDestroy(graph);
    if (e != cudaSuccess) {
      ss_cuda_record(c, __FILE__, __LINE__, "cudaGraphInstantiate", cudaGetErrorString(e));
    } else {
      c->cur->exec = exec;
      c->cur->sig = c->sig;
      c->stats.captured++;
      c->stats.cached++;
      SS_CUDA_CHECK(c, cudaGraphLaunch(exec, c->stream));
    }
  } else if (mode == SS_CUDA_MODE_REPLAY) {
    if (c->sig != c->cur->sig) {
      /* Same shape, other buffers: the kernels of this step were not run. */
      ss_cuda_graphs_drop(c);
      return ss_error(SS_ERR_INTERNAL, "cuda: a step of a captured shape used other buffers than "
                      "its graph (one forward state per backend while graphs are on; "
                      "SS_CUDA_GRAPHS=0 lifts this)");
    }
    c->stats.replayed++;
    SS_CUDA_CHECK(c, cudaGraphLaunch(c->cur->exec, c->stream));
  } else if (mode == SS_CUDA_MODE_EAGER) {
    c->stats.eager++;
  }
  c->cur = NULL;
  return ss_cuda_take_err(c);
}
