/* A decoder-only transformer loaded from GGUF (llama, dense or with Mixtral-style
 * experts; grok, Grok-1 and Grok-2) or a Hugging Face folder (llama, mixtral, grok-1, grok-2):
 * configuration, weights (used in place from the mapped files, in their stored
 * types), and the forward pass over a batch
 * of tokens on a kernel backend, dense or mixture-of-experts, sharded by tensor
 * parallelism and, for experts, optionally by expert parallelism. */
#ifndef SS_MODEL_H
#define SS_MODEL_H

#include <stdbool.h>
#include <stdint.h>

#include "kernels/kernels.h"
#include "runtime/formats/gguf.h"
#include "runtime/model/kv_cache.h"
#include "runtime/model/shard.h"
#include "runtime/tokenizer/tokenizer.h"

/* Model families: what the forward pass does beyond the llama block. */
typedef enum ss_model_family {
  SS_FAMILY_LLAMA = 0, /* dense SwiGLU MLP; GGUF llama and HF Llama/Mistral */
  SS_FAMILY_MIXTRAL,   /* SwiGLU experts: softmax -> top-k -> renormalise; HF Mixtral
                        * and GGUF llama with expert_count */
  SS_FAMILY_GROK1,     /* GeGLU experts, softmax -> top-k (no renormalising), 4 norms
                        * per layer, attention soft cap, embedding/output multipliers;
                        * HF Grok-1 and GGUF grok without a dense MLP */
  SS_FAMILY_GROK2,     /* Grok-1 plus a dense MLP beside the experts, router and
                        * final-logit soft caps, attention temperature; HF Grok-2 and
                        * GGUF grok with blk.N.ffn_{gate,up,down} */
} ss_model_family;

const char *ss_model_family_name(ss_model_family f);

typedef enum ss_act {
  SS_ACT_SILU = 0,  /* SwiGLU */
  SS_ACT_GELU_TANH, /* GeGLU with the tanh approximation */
  SS_ACT_GELU_ERF,  /* GeGLU with the exact GELU */
} ss_act;

typedef struct ss_model_config {
  char arch[32];     /* general.architecture, or the HF family name */
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

  /* Beyond llama (all zero / off for dense GGUF llama; a GGUF with experts is
   * the mixtral family). */
  ss_model_family family;
  ss_act act;           /* gate activation of the dense MLP and the experts */
  bool dense_mlp;       /* a dense MLP of width ffn_dim in every layer */
  int n_expert;         /* E: experts per layer, 0 for a dense model */
  int n_expert_used;    /* k: experts per token */
  int expert_ffn_dim;   /* Fe: hidden width of one expert */
  bool moe_renormalize; /* top-k probabilities renormalised (Mixtral) */
  float router_softcap; /* > 0: router logits soft-capped first (Grok-2) */
  bool residual_moe;    /* (dense + MoE) / sqrt(2) (Grok-2) */
  bool post_norms;      /* RMSNorm on each sub-layer's output before the residual add */
  float embd_scale;     /* embeddings multiplied by this (1: off) */
  float logit_scale;    /* logits multiplied by this (1: off) */
  float attn_scale;     /* attention logit scale; 0: 1/sqrt(head_dim) */
  float attn_softcap;   /* > 0: attention logits soft-capped */
  float final_softcap;  /* > 0: final logits soft-capped (after logit_scale) */
  int attn_temp_len;    /* > 0: Grok-2's attention temperature length */
  /* Scaled RoPE (Grok-2's config): "" or "original" for plain RoPE, else
   * "yarn", "yarn_linear" or "yarn_log" (sglang's ScalingRotaryEmbedding). */
  char rope_type[16];
  float rope_factor;      /* scaling_factor */
  int rope_orig_ctx;      /* original_max_position_embeddings */
  float rope_beta_fast, rope_beta_slow, rope_extrapolation;
} ss_model_config;

/* A row-parallel weight's columns in quantization blocks this rank's cut
 * straddles (runtime/model/shard.h ss_col_cut), dequantized: w is F32 of
 * (rows, lo + hi), the lo columns before the quantized part and the hi after
 * it; w.data is NULL when the cut straddles no block. */
typedef struct ss_weight_edge {
  ss_weight w;
  int64_t lo, hi;
} ss_weight_edge;

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
  /* Grok: the norms applied to the attention and MLP/MoE outputs (NULL otherwise). */
  const float *post_attn_norm; /* (C) */
  const float *post_ffn_norm;  /* (C) */
  /* Mixture of experts (n_expert > 0).  Under expert parallelism the experts
   * this rank does not own have data == NULL. */
  ss_weight router;       /* (E, C), every rank whole */
  ss_weight *exp_gate;    /* [E] (Fe/tp, C) */
  ss_weight *exp_up;      /* [E] (Fe/tp, C) */
  ss_weight *exp_down;    /* [E] (C, Fe/tp) */
  /* The f32 edges of wo, w_down and each exp_down (exp_down_edge NULL when
   * no expert has one). */
  ss_weight_edge wo_edge, down_edge;
  ss_weight_edge *exp_down_edge; /* [E] */
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
  /* Experts: [expert_begin, expert_end) held, each with expert_ffn_dim of its
   * hidden columns (all of them under expert parallelism). */
  int expert_begin, expert_end;
  int expert_ffn_dim;
  bool expert_parallel;
  /* Pipeline parallelism: stage `stage` of `pp` (0 of 1 without), holding
   * layers [layer_begin, layer_end) and their KV; the first stage embeds, the
   * last runs the final norm and LM head. */
  int pp, stage;
  int layer_begin, layer_end;
} ss_model_local;

typedef struct ss_model {
  ss_model_config cfg;   /* the whole model's hyper-parameters */
  ss_model_local local;  /* this rank's shard */
  struct ss_comm *comm;  /* this stage's tensor-parallel group; NULL or one rank: none */
  /* Pipeline parallelism: every rank of the job (world rank = stage * tp +
   * tp rank), for the hidden states between stages and the logits back to
   * world rank 0; NULL with one stage. */
  struct ss_comm *world;
  ss_shard_plan plan;    /* the plan this rank was loaded with (ranks == NULL at tp 1) */
  ss_shard_bytes loaded; /* bytes of weights this rank bound, by category */
  void **owned;          /* weight slices copied out of the file (row-parallel cuts) */
  int n_owned;
  struct ss_step_profile *prof; /* counters updated by forward passes */
  ss_gguf *gguf;            /* GGUF models; NULL for Hugging Face folders and presets */
  struct ss_st_set *st;     /* Hugging Face folders: the safetensors shards */
  char *path;               /* what was loaded: file, folder or preset */
  float *rope_inv_freq;     /* (rope_dim/2) scaled RoPE frequencies, or NULL */
  ss_tokenizer *tok;        /* NULL for a preset (no weights, no tokenizer) */
  ss_weight tok_embd;       /* (V/tp, C): this rank's vocabulary rows */
  ss_layer_weights *layers; /* [n_layer] */
  const float *output_norm; /* (C) */
  ss_weight output;         /* (V/tp, C); tok_embd when tied */
  char *chat_template;      /* tokenizer.chat_template, or NULL */
  /* Hugging Face folders: every eos_token_id of generation_config.json and
   * config.json (an int or a list), each of which ends generation. */
  int32_t *stop_ids;        /* [n_stop_ids] */
  int n_stop_ids;
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
  /* Expert parallelism: each rank holds whole experts (an uneven split: 8 on
   * 3 ranks are 3 + 3 + 2) instead of a slice of every expert. */
  bool expert_parallel;
  /* Pipeline parallelism: `world` holds pp stages of comm->size ranks each
   * (world rank = stage * tp + tp rank; comm is this rank's stage), and this
   * rank loads only its stage's layers: pp_layers[pp] layers per stage, or
   * NULL for sizes that differ by at most one.  pp <= 1: one stage. */
  struct ss_comm *world;
  int pp;
  const int *pp_layers;
} ss_model_load_opts;

/* Opens `path` (a GGUF file, or a Hugging Face folder with config.json,
 * safetensors and tokenizer.json / tokenizer.model), checks architecture,
 * hyper-parameters and every tensor's presence, type and shape.  Errors name
 * the file and the key or tensor. */
int ss_model_load(const char *path, const ss_model_load_opts *opts, ss_model **out);

/* A model without weights from a JSON preset (configs/models/NAME.json: the
 * config.json keys of the family) with every matrix in `dtype`: shapes only,
 * for planning (ss_shard_plan_make).  Norms count as f32. */
int ss_model_describe(const char *preset_path, ss_dtype dtype, ss_model **out);
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
  /* Mixture of experts (NULL for dense models). */
  float *moe;    /* (T, C) this rank's combined expert outputs */
  float *rl;     /* (T, E) router logits */
  int32_t *r_ids;  /* (T, k) chosen experts, host */
  float *r_w;      /* (T, k) their weights, host */
  int32_t *e_rows; /* (T*k) token rows grouped by expert, host */
  float *e_w;      /* (T*k) matching weights, host */
  float *ex;     /* (T, C) an expert's gathered input rows */
  float *eh;     /* (T, Fe/tp) */
  float *eh2;    /* (T, Fe/tp) */
  float *ey;     /* (T, C) an expert's outputs */
  float *xl;     /* (max_logits, C) rows that produce logits */
  float *lg;     /* (max_logits, V/tp) this rank's logits, tp > 1 */
  float *lg_all; /* (max_logits, V) gathered, rank-major, on rank 0, tp > 1 */
  float *lgd;    /* device backends: (max_logits, V) the LM head's output */
  float *lg_host;/* device backends, rank 0, tp > 1: lg_all copied to the host */
  float *lg_pp;  /* pipeline, the last stage's rank 0: (max_logits, V) for world rank 0 */
  int32_t *ids;  /* (T) */
  /* Row-parallel products with f32 edges (NULL without edges): the input's
   * columns gathered into the quantized part's and the edge's inputs. */
  float *cut_mid;   /* (T, widest cut input) */
  float *cut_edge;  /* (T, widest edge) */
  float *cut_y;     /* (T, C) the edge's product */
  int32_t *cut_idx; /* host: gather indices */
} ss_forward_state;

int ss_forward_state_init(ss_forward_state *st, const ss_model *m, ss_backend *be,
                          int64_t max_tokens, int64_t max_logits);
void ss_forward_state_free(ss_forward_state *st);

/* One forward pass.  Token ids are trusted (range-checked by the caller).
 * Batch rows logit_rows[0..n_logits) produce logits (float[n_logits][V]).
 * Before it, KV block copy_src[i]'s contents (this rank's layers) are copied
 * into block copy_dst[i], i < n_copies, in order (copy-on-write of a block
 * forked sequences share; ids trusted like the block tables). */
typedef struct ss_batch {
  int64_t n;
  const int32_t *tokens;  /* [n] */
  ss_token_loc loc;       /* positions and block tables */
  int64_t n_logits;
  const int32_t *logit_rows;
  int64_t n_copies;
  const int32_t *copy_src, *copy_dst; /* [n_copies] */
} ss_batch;

/* One forward pass of this rank's shard: the collectives inside it (the
 * row-parallel all-reduces, the logits gather) run with the other ranks doing
 * the same pass.  Returns the logits (float[n_logits][V], whole vocabulary) on
 * rank 0 when `logits` is given; workers pass NULL.  Counted in the rank's
 * step profile.  What each rank runs is decided by the engine's executor
 * (runtime/engine/executor.h), which broadcasts each step from rank 0. */
int ss_model_forward(const ss_model *m, ss_forward_state *st, ss_kv_cache *kv, const ss_batch *b,
                     float *logits);

/* Pipeline parallelism with several steps in flight, on world rank 0: the
 * same pass without waiting for its logits (this stage's share runs and its
 * hidden states are on their way to the next stage); ss_model_logits_recv
 * then receives each step's n_logits rows from the last stage, in the order
 * the steps were run.  Without --pp, or on another rank, ss_model_forward. */
int ss_model_forward_begin(const ss_model *m, ss_forward_state *st, ss_kv_cache *kv,
                           const ss_batch *b, float *logits);
int ss_model_logits_recv(const ss_model *m, int64_t n_logits, float *logits);

/* End of generation: the tokenizer's end-of-generation tokens and the
 * checkpoint's listed EOS ids (ss_model.stop_ids). */
bool ss_model_is_eog(const ss_model *m, int32_t id);

/* Per-rank counters of the forward passes, for --profile. */
typedef struct ss_step_profile {
  uint64_t steps;
  double compute_s;  /* inside forward passes, collectives excluded */
  double comm_s;     /* inside collectives during forward passes */
  double idle_s;     /* workers: waiting for the next step */
  /* Bytes of weight matrices this rank's matmuls read (each matrix once per
   * call), and of those the experts' (only routed experts are read). */
  uint64_t weight_nbytes_read;
  uint64_t expert_nbytes_read;
} ss_step_profile;
/* This rank's counters since load. */
ss_step_profile ss_model_profile(const ss_model *m);

/* The cache geometry for this rank: its KV heads, with the given block count
 * and element type. */
int ss_model_kv_init(const ss_model *m, ss_backend *be, int32_t block_size, int32_t n_blocks,
                     ss_dtype dtype, ss_kv_cache *kv);

#endif
