/* The serving engine: continuous batching over a paged KV cache.
 *
 * One engine thread (ss_engine_run) owns the model, the KV cache and the
 * scheduler.  Other threads submit requests and aborts through a locked queue
 * (never blocking on a step) and receive events — one per generated token, and
 * a final one — through another queue; the engine calls `notify` after pushing
 * events (the HTTP server wakes its libuv loop with uv_async_send there).
 *
 * Every step: take new requests and aborts, let the scheduler pick the batch
 * (decodes first, chunked prefill, preemption by recompute when blocks run
 * out), run one forward pass (broadcast to the other ranks under tensor
 * parallelism), sample each sequence that reached its last known token, detect
 * stop strings and end-of-generation, and emit events.  A request's tokens do
 * not depend on what else is in the batch (the kernels are batch-invariant).
 * `serve` and `generate` share this engine: generate is one request in an
 * engine sized for it (runtime/engine/generate.h). */
#ifndef SS_ENGINE_H
#define SS_ENGINE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "runtime/base/metrics.h"
#include "runtime/engine/sampler.h"
#include "runtime/model/model.h"

typedef struct ss_engine ss_engine;

typedef struct ss_engine_opts {
  int32_t max_num_seqs;        /* sequences in a batch at most (default 64) */
  int32_t max_batched_tokens;  /* tokens per step (default 512) */
  int32_t block_size;          /* KV block size in tokens (default 16) */
  int32_t n_blocks;            /* KV blocks (0: from kv_mem_bytes) */
  uint64_t kv_mem_bytes;       /* KV budget per rank when n_blocks is 0 (default: 40% of the
                                  host's available memory over the ranks, at most what
                                  max_num_seqs whole contexts need) */
  ss_dtype kv_dtype;           /* KV cache element type: F32 (zero), BF16, F16 or F8_E4M3
                                  (kv_cache.h; the CLI's --kv-cache-dtype, default bf16) */
  int32_t max_waiting;         /* queued requests at most; more are refused (default 1024) */
  int32_t n_ctx;               /* context limit per sequence (0: the model's, or what the KV
                                  pool holds when that is less: ss_engine_n_ctx says) */
  int32_t stats_every;         /* gather per-rank step counters every N steps, and whenever
                                  the engine goes idle (default 256) */
  bool fixed_ctx;              /* the context is n_ctx (or the model's) whatever the pool
                                  holds: the caller sized the pool for its own requests */
  bool no_prefix_caching;      /* prefix caching (reusing the K/V of computed prompt blocks,
                                  see scheduler.h) is on unless this is set */
  FILE *log;                   /* when set, failed steps and lost ranks are reported here in
                                  detail (clients get a plain message), and a stats line
                                  every stats_interval_s while steps run */
  double stats_interval_s;     /* 0: no stats line */
  int64_t debug_fail_id;       /* tests only: every step holding request debug_fail_id (ids
                                  count from 1 in submission order) once it has generated
                                  debug_fail_after tokens fails; 0: off */
  int32_t debug_fail_after;
  int32_t microbatches;        /* steps in flight at once under pipeline parallelism (0: as
                                  many as stages; 1: each step ends before the next starts);
                                  1 without it */
  FILE *step_log;              /* when set, one CSV line per step under the header below
                                  (columns explained in engine.c); the caller opens and
                                  closes it */
} ss_engine_opts;

#define SS_ENGINE_STEP_LOG_HEADER "t_s,n_tokens,n_logits,n_seqs,attended,kv_read,forward_s,step_s"

#define SS_ENGINE_MAX_STOP 16
/* The OpenAI API's limit on top logprobs (the server checks it); the engine
 * itself reports up to the whole vocabulary. */
#define SS_ENGINE_MAX_TOP 20

typedef struct ss_engine_req {
  int32_t *prompt;             /* token ids, malloc'ed: the engine takes ownership */
  int32_t n_prompt;
  int32_t max_new_tokens;      /* 0: the prompt is prefilled and nothing generated ("length") */
  ss_sampler_params sampling; /* its arrays malloc'ed, owned by the engine once submitted */
  bool ignore_eos;
  char *stop[SS_ENGINE_MAX_STOP]; /* malloc'ed strings, owned by the engine once submitted */
  int n_stop;
  bool logprobs;               /* report each token's logprob */
  int32_t n_top_logprobs;      /* and this many alternatives (0..vocabulary) */
  bool prompt_logprobs;        /* also report the logprob of every prompt token after the
                                  first (and n_top_logprobs alternatives), with the first
                                  TOKEN event; the whole prompt is then computed, none of it
                                  taken from the prefix cache (its rows' logits are kept) */
  struct ss_grammar_state *grammar; /* NULL, or the output constraint (runtime/grammar):
                                  only tokens it allows are sampled; owned by the engine
                                  once submitted */
  void *user;                  /* the submitter's handle, returned in events */
} ss_engine_req;

typedef enum ss_engine_event_kind {
  SS_ENGINE_TOKEN = 0,  /* one generated token (text may be empty: held back) */
  SS_ENGINE_DONE,       /* the request is over; no more events for it */
} ss_engine_event_kind;

typedef struct ss_engine_event {
  struct ss_engine_event *next;
  ss_engine_event_kind kind;
  int64_t id;
  void *user;
  /* TOKEN */
  int32_t token;
  char *text;                  /* newly shown text, malloc'ed (NUL-terminated) */
  size_t text_len;
  float logprob;
  int32_t n_top;
  int32_t *top_ids;            /* [n_top], malloc'ed (NULL when n_top is 0) */
  float *top_logprobs;         /* [n_top], malloc'ed */
  /* The first TOKEN of a request with prompt_logprobs: prompt token i + 1's
   * logprob after tokens 0..i (NaN where a failed step lost it), and its
   * n_top alternatives at [i * n_top ..]; malloc'ed, NULL otherwise. */
  int32_t n_prompt_lp;         /* n_prompt - 1 */
  float *prompt_lp;
  int32_t *prompt_top_ids;
  float *prompt_top_lp;
  /* DONE (and TOKEN for the counts) */
  const char *finish_reason;   /* "stop", "length", "abort", "error" */
  char *error;                 /* for "error", malloc'ed */
  int32_t n_prompt;
  int32_t n_cached;            /* of the prompt, tokens whose K/V came from the prefix cache */
  int32_t n_generated;
  /* DONE: the request's time line in seconds (0 for a phase it never reached) */
  double queue_s;              /* arrival to its first step */
  double prefill_s;            /* its first step's start to its first token (or, with
                                  max_new_tokens 0, the end of its prefill) */
  double decode_s;             /* its first token to its last */
} ss_engine_event;

/* Called on the engine thread, outside the engine's lock, after it publishes
 * events: it may take events, abort, stop or submit, but must not block on a step. */
typedef void (*ss_engine_notify_fn)(void *user);

/* Creates the engine for a loaded model (rank 0 under tensor parallelism).  The
 * KV cache, whose blocks the scheduler alone hands out, and the one set of
 * sampling buffers are allocated here; errors name the option at fault. */
int ss_engine_create(ss_model *m, ss_backend *be, const ss_engine_opts *o,
                     ss_engine_notify_fn notify, void *notify_user, ss_engine **out);
void ss_engine_free(ss_engine *e);

/* The engine thread's body: returns after ss_engine_stop once drained, or on a
 * fatal error (a lost rank, SS_ERR_COMM), after failing every request, with the
 * status and the message on this thread (ss_error_msg).  A step that fails
 * otherwise is isolated: each of its sequences is run alone, those that fail
 * alone end with finish_reason "error" (their blocks freed), the others go on,
 * and the engine keeps serving.  It prints nothing but to opts.log. */
int ss_engine_run(ss_engine *e);

/* Thread-safe.  Checks the request against the context and KV pool (a message
 * names both numbers), queues it and returns its id in *id; on success the
 * engine owns req's buffers, on failure the caller still does.
 * SS_ERR_RANGE: too long for the context or pool;
 * SS_ERR_BUSY: the queue is full; after stop: SS_ERR_INVALID. */
int ss_engine_submit(ss_engine *e, ss_engine_req *req, int64_t *id);

/* Thread-safe.  Submits n requests with the same prompt at once (the choices
 * of an n > 1 or best_of request), all or none, as ss_engine_submit does one;
 * ids[i] is reqs[i]'s.  The first runs the prompt; the others fork from it
 * when it has computed the prompt: they share its KV blocks, the partial last
 * one included (copied before one writes into it), so the prompt is computed
 * once, and each samples its first token from the same logits with its own
 * sampler.  A request whose prompt_logprobs (or n_top_logprobs with them)
 * differ from the first's, or that generates nothing (max_new_tokens 0), runs
 * on its own, as does one the fork finds with --max-num-seqs sequences
 * running, or whose first ended before computing the prompt (the prefix
 * cache may still share full blocks).  A pause of a request still waiting for
 * its fork is lost.  SS_ERR_INVALID also when the prompts differ. */
int ss_engine_submit_group(ss_engine *e, ss_engine_req *reqs, int32_t n, int64_t *ids);
/* Thread-safe: the request stops at the next step and its blocks are freed; a
 * DONE event with finish_reason "abort" follows. */
void ss_engine_abort(ss_engine *e, int64_t id);
/* Thread-safe: pauses (or resumes) a request from the next step on, for a
 * streamed response whose client has stopped reading.  A paused request is not
 * scheduled, so it costs no compute and makes no events; it keeps its KV
 * blocks unless another request needs them, and is then the first preempted
 * (recomputed once resumed, its output unchanged).  Ignored for a request that
 * has ended.  Pauses apply in the order made, after submissions. */
void ss_engine_pause(ss_engine *e, int64_t id, bool paused);
/* Thread-safe: no new requests; running ones finish, or are aborted once
 * `drain_timeout_s` has passed (<= 0: at once). */
void ss_engine_stop(ss_engine *e, double drain_timeout_s);

/* Thread-safe: takes every pending event (oldest first); free each with
 * ss_engine_event_free. */
ss_engine_event *ss_engine_take_events(ss_engine *e);
void ss_engine_event_free(ss_engine_event *ev);

/* Thread-safe: the Prometheus text of the engine's metrics, appended to b. */
void ss_engine_metrics(ss_engine *e, ss_strbuf *b);

/* Thread-safe state for /health. */
typedef enum ss_engine_state {
  SS_ENGINE_READY = 0,
  SS_ENGINE_DRAINING,
  SS_ENGINE_STOPPED,
  SS_ENGINE_FAILED,   /* a rank was lost: nothing more can run */
} ss_engine_state;
ss_engine_state ss_engine_get_state(ss_engine *e);
/* The context limit requests are checked against. */
int32_t ss_engine_n_ctx(const ss_engine *e);
/* KV blocks in the pool, and block size. */
int32_t ss_engine_n_blocks(const ss_engine *e);
int32_t ss_engine_block_size(const ss_engine *e);

#endif
