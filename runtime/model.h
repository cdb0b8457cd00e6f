/* A decoder-only transformer (llama family) loaded from GGUF: configuration,
 * weights (used in place from the mapped file, in their stored types), and the
 * forward pass over a batch of tokens on a kernel backend. */
#ifndef SS_MODEL_H
#define SS_MODEL_H

#include <stdbool.h>
#include <stdint.h>

#include "kernels/kernels.h"
#include "runtime/gguf.h"
#include "runtime/kv_cache.h"
#include "runtime/shard.h"
#include "runtime/tokenizer.h"

typedef struct ss_model_config {
  char arch[32];     /* general.architecture */
  int n_layer;
  int dim;           /* C: residual width */
  int n_head;        /* H */
  int n_kv_head;     /* KV heads (grouped-query attention) */
  int head_dim;      /* D */
  int ffn_dim;       /* F: MLP hidden width */
  int vocab;         /* V */
  int n_ctx_train;   /* context length the model was trained for */
  int rope_dim;      /* dimensions of each head that rotate */
  float rope_theta;
  ss_rope_mode rope_mode;
  float rms_eps;
  bool tied_output;  /* output head shares token_embd */
} ss_model_config;

typedef struct ss_layer_weights {
  const float *attn_norm; /* (C) */
  ss_weight wq;           /* (H*D, C) */
  ss_weight wk;           /* (KV*D, C) */
  ss_weight wv;           /* (KV*D, C) */
  ss_weight wo;           /* (C, H*D) */
  const float *ffn_norm;  /* (C) */
  ss_weight w_gate;       /* (F, C) */
  ss_weight w_up;         /* (F, C) */
  ss_weight w_down;       /* (C, F) */
} ss_layer_weights;

/* This rank's part of the model under tensor parallelism (everything, at tp 1):
 * see runtime/shard.h for the rules. */
typedef struct ss_model_local {
  int tp, rank;
  int n_head, head_base;       /* query heads [head_base, head_base + n_head) */
  int n_kv_head, kv_head_base; /* KV heads held */
  int ffn_dim;                 /* MLP hidden columns held */
  int64_t vocab_begin, vocab_end; /* vocabulary rows of embedding and LM head */
  bool vocab_parallel;
} ss_model_local;

typedef struct ss_model {
  ss_model_config cfg;   /* the whole model's hyper-parameters */
  ss_model_local local;  /* this rank's shard */
  struct ss_comm *comm;  /* NULL or one rank: no communication */
  ss_shard_plan plan;    /* the plan this rank was loaded with (ranks == NULL at tp 1) */
  ss_shard_bytes loaded; /* bytes of weights this rank bound, by category */
  void **owned;          /* weight slices copied out of the file (row-parallel cuts) */
  int n_owned;
  struct ss_step_profile *prof; /* counters updated by forward passes */
  ss_gguf *gguf;
  ss_tokenizer *tok;
  ss_weight tok_embd;       /* (V/tp, C): this rank's vocabulary rows */
  ss_layer_weights *layers; /* [n_layer] */
  const float *output_norm; /* (C) */
  ss_weight output;         /* (V/tp, C); tok_embd when tied */
  char *chat_template;      /* tokenizer.chat_template, or NULL */
  uint64_t weight_nbytes;   /* bytes of all tensors used (this rank's slices) */
  /* After ss_model_upload: the device copies the weights point into. */
  ss_backend *dev_be;
  void **dev_bufs;
  int n_dev_bufs;
} ss_model;

/* Called while the weights are paged in: done and total bytes. */
typedef void (*ss_progress_fn)(void *user, uint64_t done, uint64_t total);

typedef struct ss_model_load_opts {
  ss_progress_fn progress; /* may be NULL */
  void *progress_user;
  bool prefault;           /* read every weight page now rather than on first use */
  /* Tensor parallelism: load only rank `comm->rank`'s slices of a plan for
   * comm->size ranks.  NULL: the whole model. */
  struct ss_comm *comm;
  bool replicate_vocab;    /* hold the whole embedding / LM head on every rank */
} ss_model_load_opts;

/* Opens `path`, checks architecture, hyper-parameters and every tensor's
 * presence, type and shape.  Errors name the file and the key or tensor. */
int ss_model_load(const char *path, const ss_model_load_opts *opts, ss_model **out);
/* Frees the model (and its device copies: free it before its device backend). */
void ss_model_free(ss_model *m);

/* For a device backend (be->device): copies every weight and norm this rank
 * bound into backend memory and points the model at the copies, so the
 * forward pass reads device memory only; the host copies of row-parallel
 * slices are freed.  A no-op for host backends.  Returns SS_OK or an error
 * (out of device memory names the tensor). */
int ss_model_upload(ss_model *m, ss_backend *be);

/* Per-batch activations and scratch, sized for up to max_tokens tokens per
 * forward call and max_logits logit rows.  Widths are this rank's. */
typedef struct ss_forward_state {
  ss_backend *be;
  int64_t max_tokens, max_logits;
  float *x;      /* (T, C) residual stream */
  float *xb;     /* (T, C) normalised input of a sub-layer */
  float *xb2;    /* (T, C) sub-layer output */
  float *q;      /* (T, H*D) */
  float *k;      /* (T, KV*D) */
  float *v;      /* (T, KV*D) */
  float *att;    /* (T, H*D) */
  float *hb;     /* (T, F) */
  float *hb2;    /* (T, F) */
  float *xl;     /* (max_logits, C) rows that produce logits */
  float *lg;     /* (max_logits, V/tp) this rank's logits, tp > 1 */
  float *lg_all; /* (max_logits, V) gathered, rank-major, on rank 0, tp > 1 */
  float *lgd;    /* device backends: (max_logits, V) the LM head's output */
  float *lg_host;/* device backends, rank 0, tp > 1: lg_all copied to the host */
  int32_t *ids;  /* (T) */
} ss_forward_state;

int ss_forward_state_init(ss_forward_state *st, const ss_model *m, ss_backend *be,
                          int64_t max_tokens, int64_t max_logits);
void ss_forward_state_free(ss_forward_state *st);

/* One forward pass.  Token ids are trusted (range-checked by the caller).
 * Batch rows logit_rows[0..n_logits) produce logits (float[n_logits][V]). */
typedef struct ss_batch {
  int64_t n;
  const int32_t *tokens;  /* [n] */
  ss_token_loc loc;       /* positions and block tables */
  int64_t n_logits;
  const int32_t *logit_rows;
} ss_batch;

/* On rank 0 (or alone): runs the batch, broadcasting it first to the other ranks
 * when tp > 1, and returns the logits (float[n_logits][V], whole vocabulary) on
 * rank 0.  Under tensor parallelism ranks 1..tp-1 run ss_model_worker_loop. */
int ss_model_forward(const ss_model *m, ss_forward_state *st, ss_kv_cache *kv, const ss_batch *b,
                     float *logits);

/* Ranks 1..tp-1: receive each step from rank 0, run this rank's shard of it,
 * until rank 0 calls ss_model_stop_workers (returns SS_OK) or a collective fails. */
int ss_model_worker_loop(const ss_model *m, ss_backend *be);
/* Rank 0: tells the workers to return from their loop.  Harmless at tp 1. */
int ss_model_stop_workers(const ss_model *m);

/* Per-rank counters of the forward passes, for --profile. */
typedef struct ss_step_profile {
  uint64_t steps;
  double compute_s;  /* inside forward passes, collectives excluded */
  double comm_s;     /* inside collectives during forward passes */
  double idle_s;     /* workers: waiting for the next step */
} ss_step_profile;
/* This rank's counters since load. */
ss_step_profile ss_model_profile(const ss_model *m);
/* Rank 0, between steps: every rank's counters (all[r], r < tp), gathered through a
 * step message the workers answer.  At tp 1, all[0] is this rank's. */
int ss_model_gather_profiles(const ss_model *m, ss_step_profile *all);

/* The cache geometry for this rank: its KV heads, with the given block count. */
int ss_model_kv_init(const ss_model *m, ss_backend *be, int32_t block_size, int32_t n_blocks,
                     ss_kv_cache *kv);

#endif
