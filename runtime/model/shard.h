/* The sharding plan: which slice of every weight each tensor-parallel rank
 * holds, and what that costs in weight bytes, KV-cache bytes and communication.
 * One piece of code serves `shardserve plan` (to print it) and the loader (to
 * slice the weights and check what each rank read against the plan).
 *
 * Megatron-style tensor parallelism:
 *   - Q, K, V and the MLP's gate and up are column-parallel (each rank computes
 *     its heads / hidden columns); the attention output and MLP down
 *     projections are row-parallel (each rank multiplies its input slice) and
 *     are followed by an all-reduce of the residual update;
 *   - the embedding and LM head are vocab-parallel (each rank holds a range of
 *     vocabulary rows; embeddings are summed by an all-reduce, logits gathered
 *     on rank 0) or replicated.
 * Units are split into contiguous ranges whose sizes differ by at most one
 * (9 heads on 2 ranks: 5 + 4).  A rank holds every KV head one of its query
 * heads reads, so a KV head is replicated where ranks' query heads share it.
 * A row-parallel weight (attention output, MLP and expert down) is cut along
 * its input columns, inside every row.  Where the cut falls inside a
 * quantization block, each rank keeps its columns of that straddled block
 * dequantized to f32 (its "edge", exact) and the rest of its columns as the
 * whole quantized blocks they are (ss_col_cut); the product is the quantized
 * part's plus the edge's.  Column-parallel weights, the vocabulary and whole
 * experts are cut between rows, never inside a block.
 * MLP columns are split in whole quantization blocks of the down projection's
 * type when there are at least as many blocks as ranks (no edges; see
 * ss_shard_plan_make for why), otherwise evenly with edges.
 *
 * Mixture-of-experts layers take one of two layouts:
 *   - TP inside every expert (the default; what Grok-1's reference does): each
 *     rank holds the same column range of every expert's gate/up rows and
 *     down columns, and the layer ends with the usual all-reduce;
 *   - expert parallelism (opts.expert_parallel): each rank holds whole experts,
 *     a contiguous range (8 experts on 3 ranks: 3 + 3 + 2).  Every rank routes
 *     every token (the router is replicated and its input is identical on all
 *     ranks), runs the tokens routed to its own experts, and the weighted
 *     outputs are summed by the same one all-reduce per layer: no extra
 *     message, and the same bytes on the wire as TP inside experts.
 * Attention, norms and vocabulary are split as above in both layouts. */
#ifndef SS_SHARD_H
#define SS_SHARD_H

#include <stdbool.h>
#include <stdint.h>

#include "runtime/base/dtype.h"

typedef struct ss_range {
  int64_t begin, end; /* [begin, end) */
} ss_range;

static inline int64_t ss_range_len(ss_range r) { return r.end - r.begin; }

/* Part `index` of `parts` contiguous ranges over [0, n): the first n % parts
 * ranges have one unit more than the others. */
ss_range ss_range_split(int64_t n, int parts, int index);

/* A cut [c.begin, c.end) of a row-parallel weight's columns in blocks of
 * `block` columns: mid is the block-aligned part held quantized; the lo
 * columns before it and the hi columns after it lie in blocks the cut
 * straddles and are held as f32.  lo, hi < block; mid may be empty (a cut
 * inside one block: everything in lo). */
typedef struct ss_col_cut {
  ss_range mid;
  int64_t lo, hi;
} ss_col_cut;

ss_col_cut ss_shard_col_cut(ss_range c, int64_t block);

typedef struct ss_shard_opts {
  int tp;               /* tensor-parallel degree, >= 1 */
  bool vocab_parallel;  /* split embedding and LM head by vocab rows (else replicate) */
  bool expert_parallel; /* whole experts per rank (else a slice of every expert) */
  ss_dtype kv_type;     /* KV-cache element type for the KV figures (F32 = 0; the
                         * CLI's default is BF16, as serve's --kv-cache-dtype) */
  /* Pipeline parallelism: the plan of stage `stage` of `pp` (pp <= 1: the
   * whole model), holding layers [layers.begin, layers.end) (ss_pp_layers),
   * the embedding on the first stage, the final norm and LM head on the last
   * (a tied embedding is held by both).  Every figure but n_params and
   * n_active_params is then the stage's, `file` included. */
  int pp, stage;
  ss_range layers;
} ss_shard_opts;

/* The layers of pipeline stage `stage` of `pp` over n_layer layers: sizes[]
 * (pp entries, each >= 1, summing to n_layer) or, with sizes NULL, contiguous
 * ranges whose sizes differ by at most one (the first ones larger).  Fails
 * with a message naming --pp / --pp-layers and the limit. */
int ss_pp_layers(int n_layer, int pp, const int *sizes, int stage, ss_range *out);

/* Bytes of weights by category, as stored (quantized bytes for quantized types). */
typedef struct ss_shard_bytes {
  uint64_t attn;   /* Q, K, V, O */
  uint64_t mlp;    /* dense MLP: gate, up, down */
  uint64_t moe;    /* experts (gate, up, down) and routers */
  uint64_t embd;   /* token embedding */
  uint64_t head;   /* LM head (0 when tied to the embedding) */
  uint64_t norm;   /* RMSNorm weights (replicated) */
  uint64_t total;
} ss_shard_bytes;

typedef struct ss_shard_rank {
  ss_range heads;      /* query heads */
  ss_range kv_heads;   /* KV heads held */
  ss_range ffn;        /* MLP hidden columns */
  ss_range vocab;      /* vocabulary rows of the embedding and LM head */
  ss_range experts;    /* experts held (MoE) */
  ss_range expert_ffn; /* hidden columns held of each of them */
  ss_shard_bytes bytes;
  uint64_t replicated_nbytes;   /* of bytes.total: also held by another rank */
  /* Of bytes.total: the f32 edges of straddled quantization blocks (held in
   * place of the quantized bytes of those blocks, which no rank holds). */
  uint64_t edge_nbytes;
  uint64_t kv_nbytes_per_token; /* this rank's K+V, all layers, in opts.kv_type */
  /* Sent + received by this rank per generated token (ring all-reduce
   * estimate: 2(n-1)/n of the payload per all-reduce, plus the logits gather). */
  uint64_t comm_nbytes_per_token;
  /* Pipeline parallelism: the hidden state this rank sends to its peer of the
   * next stage per token (0 on the last stage). */
  uint64_t pp_send_nbytes_per_token;
} ss_shard_rank;

struct ss_model;

typedef struct ss_shard_plan {
  ss_shard_opts opts;
  int64_t ffn_unit;             /* MLP columns are split in multiples of this */
  ss_shard_rank *ranks;         /* [opts.tp] */
  ss_shard_bytes file;          /* the unsharded model's tensors, as stored */
  uint64_t total_weight_nbytes; /* sum over ranks */
  uint64_t replicated_nbytes;   /* sum of the ranks' replicated_nbytes */
  uint64_t edge_nbytes;         /* sum of the ranks' edge_nbytes */
  /* Quantized bytes of the straddled blocks, which no rank holds (their
   * columns are in the edges): total_weight_nbytes = file.total +
   * replicated_nbytes + edge_nbytes - straddled_nbytes. */
  uint64_t straddled_nbytes;
  uint64_t kv_nbytes_per_token; /* the whole (unsharded) model's K+V per token */
  /* Parameters (elements) of the unsharded model, the tied embedding once; and
   * those one token's forward pass uses: all but the E - k experts per layer a
   * token is not routed to (the embedding table counted whole: it is the tied
   * LM head, or one row read of it). */
  uint64_t n_params, n_active_params;
  uint64_t expert_nbytes;       /* one expert of one layer, whole, as stored */
  int64_t expert_ffn_unit;      /* expert columns are split in multiples of this */
  int n_allreduce_per_token;    /* all-reduces in one forward pass */
  uint64_t allreduce_payload_nbytes; /* payload of each of them per token */
  uint64_t gather_nbytes_per_token;  /* logits gathered on rank 0 per token */
} ss_shard_plan;

/* Plans `m` (a model loaded whole, tp = 1) for opts.  Fails with a message
 * naming the limit when the degree cannot be used (more ranks than heads, MLP
 * or expert columns, experts or vocabulary rows). */
int ss_shard_plan_make(const struct ss_model *m, const ss_shard_opts *opts, ss_shard_plan *out);
void ss_shard_plan_free(ss_shard_plan *p);

struct ss_model_config;
/* Bytes of the RMSNorm weights (held as f32): 2 per layer, 4 with post-norms,
 * and the final one. */
uint64_t ss_shard_norm_nbytes(const struct ss_model_config *c);
/* The same for n_layer of the layers, with the final norm or not. */
uint64_t ss_shard_norm_nbytes_of(const struct ss_model_config *c, int64_t n_layer, bool final);

#endif
