/* Private to runtime/model*.c and runtime/moe.c: the pieces the loaders, the
 * sharder and the forward pass share. */
#ifndef SS_MODEL_INTERNAL_H
#define SS_MODEL_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>

#include "runtime/model/model.h"

/* model_shard.c */
/* Plans this rank's shard (opts->comm) and cuts the whole-model weights down to
 * it, checking the bytes bound against the plan; sets m->local. */
int ss_model_shard(ss_model *m, const ss_model_load_opts *opts);
void ss_model_prefault(const ss_model *m, const ss_model_load_opts *opts);
/* Frees p with the model.  NULL or no memory: fails (and frees p). */
int ss_model_own(ss_model *m, void *p);
uint64_t ss_weight_nbytes(const ss_weight *w);

/* model_hf.c */
/* m->layers for cfg.n_layer layers, and every layer's expert arrays (one
 * allocation, freed through layer 0's exp_gate) when cfg.n_expert > 0. */
int ss_model_alloc_layers(ss_model *m);
/* A folder: the Hugging Face layout. */
bool ss_model_path_is_hf(const char *path);
/* Config, tokenizer and the whole model's tensors from a Hugging Face folder. */
int ss_model_load_hf(ss_model *m, const char *dir);
/* Scaled RoPE frequencies for c->rope_type ("yarn", "yarn_linear", "yarn_log"
 * and the rope_* fields), or *out = NULL for plain RoPE ("" or "original"). */
int ss_model_rope_freqs(const ss_model_config *c, float **out);

/* model_forward.c */
/* Adds a matmul's weight bytes to the profile counters. */
void ss_model_count_read(const ss_model *m, const ss_weight *w, bool expert);
/* y = W x for a row-parallel weight w (its block-aligned part) with the f32
 * edge e (NULL or no data: a plain matmul): the edge's product is added to the
 * quantized part's, in that fixed order. */
void ss_model_matmul_cut(const ss_model *m, ss_forward_state *st, const ss_weight *w,
                         const ss_weight_edge *e, const float *x, int64_t n, float *y);

/* moe.c */
/* The mixture-of-experts sub-layer on xb (n rows of C, normalised input):
 * routes every token, runs this rank's part of each routed expert (a column
 * slice under TP, whole experts it owns under EP), and writes the weighted sum
 * to out (n, C) -- this rank's partial sum, to be all-reduced. */
void ss_moe_forward(const ss_model *m, const ss_layer_weights *L, ss_forward_state *st,
                    int64_t n, const float *xb, float *out);

#endif
