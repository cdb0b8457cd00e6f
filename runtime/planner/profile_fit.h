/* Fitting a hardware profile to measured forward steps (shardserve profile):
 * the probe timings in, the cost model's figures out (runtime/planner/planner.h
 * ss_hw_profile).  What the probes are is fixed here, so that the command that
 * measures them and the fit agree on their shapes. */
#ifndef SS_PROFILE_FIT_H
#define SS_PROFILE_FIT_H

#include <stddef.h>

#include "runtime/planner/planner.h"

/* The probes' geometry: one long sequence (SS_PROBE_LONG positions, in blocks
 * of SS_PROBE_BLOCK) and SS_PROBE_NSEQ short ones; decode batches of
 * ss_probe_decode_batch[i] sequences at position 16. */
#define SS_PROBE_BLOCK 16
#define SS_PROBE_LONG 1024
#define SS_PROBE_NSEQ 32
#define SS_PROBE_N_DEC 8
extern const int ss_probe_decode_batch[SS_PROBE_N_DEC];

/* Medians over the repeats of one probe: wall time, the slowest rank's compute,
 * rank 0's collectives (seconds). */
typedef struct ss_probe {
  double wall, compute, comm;
} ss_probe;

/* Probes measured beside the fitted ones and never given to the fit: how well
 * the profile predicts step sizes it has not seen (decode batches between the
 * fitted ones, prefill chunks of other lengths and positions). */
#define SS_PROBE_N_HELD 5
typedef struct ss_held_probe {
  char name[24];        /* e.g. "decode12", "prefill32@224" */
  int32_t n_seqs;       /* decode: sequences at position 16; prefill: 0 */
  int32_t chunk, start; /* prefill: a chunk of `chunk` tokens at positions start.. */
  ss_probe p;
} ss_held_probe;
extern const ss_held_probe ss_probe_held_shapes[SS_PROBE_N_HELD];

typedef struct ss_probe_set {
  ss_probe dec16;     /* batch 1 at position 16 */
  ss_probe dec1023;   /* batch 1 at position 1023 */
  ss_probe pre256;    /* a 256-token prefill chunk at positions 0..255 */
  ss_probe pre64;     /* a 64-token chunk at 0..63 */
  ss_probe pre64_192; /* a 64-token chunk at 192..255 */
  ss_probe dec[SS_PROBE_N_DEC]; /* ss_probe_decode_batch[i] sequences at position 16 */
  double sample_s;    /* the sampler on one row of logits */
  /* All-reduce medians (0 at tp 1): a one-token and a 256-token payload. */
  size_t ar_small_bytes, ar_large_bytes;
  double ar_small_s, ar_large_s;
  int tp;             /* ranks of the communicator that timed them (0: none, no link figures) */
  ss_held_probe held[SS_PROBE_N_HELD]; /* ss_probe_held_shapes, measured; not fitted */
} ss_probe_set;

/* The step shape of a held-out probe, as the cost model prices it. */
ss_step_shape ss_held_probe_shape(const ss_held_probe *h);

/* Fits hw's compute, memory, attention, overhead and collective figures to the
 * probes (other fields of hw are left as they are), and writes into comment
 * (cap bytes) how well the fitted model explains each probe. */
void ss_profile_fit(const ss_plan_model *pm, const ss_probe_set *ps, ss_hw_profile *hw,
                    char *comment, size_t cap);

#endif
