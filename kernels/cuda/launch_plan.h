/* The CUDA backend's launch planning on the host: how a batch's token
 * locations become attention tiles, per-token block-table rows, launches of
 * at most SS_CUDA_ATTN_MAX_TOKENS tokens and the key a captured graph is found
 * by.  Pure functions of the batch (no CUDA), so they are unit-tested on any
 * machine against the CPU attention's semantics (tests/unit/test_cuda_plan.c). */
#ifndef SS_CUDA_LAUNCH_PLAN_H
#define SS_CUDA_LAUNCH_PLAN_H

#include <stdbool.h>
#include <stdint.h>

/* The device code includes this file for the tile and the constants (C++,
 * without kernels/kernels.h): the batch is only named here. */
struct ss_token_loc;

#ifdef __cplusplus
extern "C" {
#endif

/* Prefill tokens sharing one K/V load in the attention kernel. */
#define SS_CUDA_TILE_MAX 16
/* Tokens whose partial results are held at once (the partials buffer is
 * tokens x heads x splits x (head_dim + 2) floats; longer batches loop). */
#define SS_CUDA_ATTN_MAX_TOKENS 256

/* A run of consecutive batch tokens of one sequence at consecutive positions:
 * the unit of work of the attention kernel, which loads each K/V chunk once
 * for all its tokens (prefill) or for one token (decode).  The kernel reads
 * every position of a tile through the block-table row of the tile's first
 * token. */
typedef struct ss_cuda_tile {
  int32_t t0;     /* first batch token */
  int32_t count;  /* tokens */
} ss_cuda_tile;

/* One attention launch: tiles [tile0, tile0 + n_tiles), whose tokens lie in
 * [tok0, tok0 + n_tok), n_tok <= SS_CUDA_ATTN_MAX_TOKENS. */
typedef struct ss_cuda_run {
  int32_t tile0, n_tiles;
  int32_t tok0, n_tok;
} ss_cuda_run;

/* Splits the batch into tiles (tokens of one block table at consecutive
 * positions, at most SS_CUDA_TILE_MAX each), tiles[loc->n] at most.  Returns
 * the count; *tile_max gets the longest. */
int32_t ss_cuda_plan_tiles(const struct ss_token_loc *loc, ss_cuda_tile *tiles, int32_t *tile_max);

/* Entries per token row of the staged block tables: a power of two covering
 * the blocks of the batch's last position of every tile. */
int32_t ss_cuda_plan_width(const struct ss_token_loc *loc, int32_t block_size);

/* Fills bt[n][width]: every token's row holds the block ids of positions
 * 0..(the last position of its tile), then zeros.  The source tables hold at
 * least that many (the tile's last token needs them). */
void ss_cuda_plan_tables(const struct ss_token_loc *loc, int32_t block_size, const ss_cuda_tile *tiles,
                         int32_t n_tiles, int32_t width, int32_t *bt);

/* Groups the tiles, in order, into launches of at most max_tokens tokens (a
 * tile never straddles two); runs[n_tiles] at most.  Returns the count. */
int32_t ss_cuda_plan_runs(const ss_cuda_tile *tiles, int32_t n_tiles, int32_t max_tokens,
                          ss_cuda_run *runs);

/* What a captured step's launches depend on.  Only decode steps (every tile
 * one token) are captured: their tiles, rows and runs follow from the token
 * count alone, so two steps with one key launch the same grids with the same
 * arguments.  Prefill steps run eagerly (their grouping varies with chunk
 * sizes that repeat rarely). */
#define SS_CUDA_KEY_LEN 5
typedef struct ss_cuda_graph_key {
  int64_t v[SS_CUDA_KEY_LEN]; /* tokens, logit rows, block-table width, block size, runs */
} ss_cuda_graph_key;

/* Fills *key and returns whether the step may be captured as a graph. */
bool ss_cuda_plan_key(const struct ss_token_loc *loc, int64_t n_logits, int32_t block_size,
                      ss_cuda_graph_key *key);

/* ---- waiting for the device with a deadline ---------------------------------
 * A plain stream synchronize blocks forever on a kernel that never finishes
 * (an NCCL collective waiting on a lost peer).  The backend polls instead. */

/* Seconds a step may wait for the GPU before it fails, unless
 * SS_GPU_STEP_TIMEOUT_S says otherwise; 0 there means no limit. */
#define SS_CUDA_STEP_TIMEOUT_DEFAULT_S 600.0

/* Parses SS_GPU_STEP_TIMEOUT_S's value (NULL or empty: the default) into
 * *out_s (0: no limit).  Returns 0, or -1 for anything but a finite number of
 * seconds in [0, 1e6]. */
int ss_cuda_parse_timeout(const char *value, double *out_s);

/* One poll: 0 when the work is done, 1 while it is still running, any other
 * value an error (returned as is by ss_cuda_poll_wait). */
typedef int (*ss_cuda_query_fn)(void *arg);

/* Polls query until it reports done, an error, or timeout_s seconds have gone
 * by (timeout_s <= 0: no limit), sleeping between polls (from 1 us, doubling
 * to 1 ms).  Returns 0 (done), SS_CUDA_WAIT_TIMEOUT, or query's error;
 * *waited_s (may be NULL) gets the seconds spent. */
#define SS_CUDA_WAIT_TIMEOUT 1000
int ss_cuda_poll_wait(ss_cuda_query_fn query, void *arg, double timeout_s, double *waited_s);

#ifdef __cplusplus
}
#endif

#endif
