/* The executor: runs each engine step on every rank of a tensor-parallel
 * group.  Rank 0 encodes the step (tokens, positions, block tables, logit
 * rows) and broadcasts it; ranks 1..tp-1 wait in ss_exec_worker_loop, check
 * what they received, and run their shard of the same forward pass.  The model
 * layer only knows one rank's forward pass (ss_model_forward); this protocol
 * belongs to the engine.
 *
 * Under pipeline parallelism the step goes down the pipeline instead of in one
 * broadcast over the whole job: rank 0 broadcasts it to its own stage's ranks,
 * and every rank of stage s hands it on to the same tensor-parallel rank of
 * stage s + 1 (an asynchronous send, before running its layers), so each rank
 * receives the steps in the order rank 0 issued them, and rank 0 never waits
 * for a later stage to take a step: it can issue the next one while the later
 * stages still run the previous (ss_exec_step_begin / ss_exec_step_end). */
#include "runtime/engine/executor.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "comm/comm.h"
#include "runtime/base/clock.h"
#include "runtime/base/status.h"
#include "runtime/base/trace.h"

/* Every rank of the job: the stage's group, or all stages' under pipeline
 * parallelism (each runs its layers of the same step). */
static ss_comm *job(const ss_model *m) { return m->world ? m->world : m->comm; }
static int job_rank(const ss_model *m) { return job(m) ? job(m)->rank : 0; }
static bool distributed(const ss_model *m) { return job(m) && job(m)->size > 1; }

/* Rank 0 broadcasts every step as a fixed header followed by a payload of
 * int32s:  tokens[n], pos[n], table index of each token[n], logit_rows[n_logits],
 * table lengths[n_tables], the tables' block ids back to back, then the KV
 * block copies to run before the forward pass (copy-on-write of blocks forks
 * share): sources[n_copies], destinations[n_copies].  Every rank copies its own
 * shard of the blocks.  Workers size their KV cache and activations from the
 * header. */
enum { STEP_MAGIC = 0x53535450 /* "SSTP" */, STEP_FORWARD = 1, STEP_STOP = 2, STEP_STATS = 3 };

typedef struct step_header {
  int32_t magic, kind;
  int32_t n, n_logits, n_tables, n_table_ids;
  int32_t kv_block_size, kv_n_blocks, kv_dtype;
  int32_t n_copies; /* (with the 9 above: no padding bytes go over the wire unset) */
  int64_t payload_count;
} step_header;

/* Relays a failed call's message with what it was for. */
static int failed(int rc, const char *what) {
  char msg[512];
  snprintf(msg, sizeof msg, "%s", ss_error_msg());
  return ss_error(rc, "%s: %s", what, msg);
}

static int bcast(const ss_model *m, void *buf, size_t nbytes, const char *what) {
  int rc = ss_comm_broadcast(job(m), buf, nbytes, 0);
  return rc ? failed(rc, what) : SS_OK;
}

/* ---- the step message down the pipeline ------------------------------- */

/* Tags of the step messages between stages (the model's own hidden states and
 * logits use 101 and 102). */
enum { PP_TAG_STEP_HEADER = 103, PP_TAG_STEP_PAYLOAD = 104 };

static bool pipelined(const ss_model *m) { return m->local.pp > 1 && m->world; }
static bool stage_group(const ss_model *m) { return m->comm && m->comm->size > 1; }
static int stage_peer(const ss_model *m, int stage) { return stage * m->local.tp + m->local.rank; }

/* Hands a step (header, then its payload when it has one) on to this rank's
 * peer of the next stage, without waiting for it to be taken. */
static int pass_on(const ss_model *m, const void *h, size_t h_nbytes, const void *payload,
                   size_t p_nbytes) {
  if (m->local.stage >= m->local.pp - 1) return SS_OK;
  const int peer = stage_peer(m, m->local.stage + 1);
  int rc = ss_comm_send_async(m->world, h, h_nbytes, peer, PP_TAG_STEP_HEADER);
  if (!rc && payload) rc = ss_comm_send_async(m->world, payload, p_nbytes, peer, PP_TAG_STEP_PAYLOAD);
  return rc ? failed(rc, "handing a step on to the next stage") : SS_OK;
}

/* Rank 0 under --pp: the step to its stage's ranks, then down the pipeline. */
static int deliver(const ss_model *m, void *h, size_t h_nbytes, void *payload, size_t p_nbytes,
                   const char *what) {
  int rc;
  if (stage_group(m)) {
    if ((rc = ss_comm_broadcast(m->comm, h, h_nbytes, 0))) return failed(rc, what);
    if (payload && (rc = ss_comm_broadcast(m->comm, payload, p_nbytes, 0))) return failed(rc, what);
  }
  return pass_on(m, h, h_nbytes, payload, p_nbytes);
}

/* A worker: the next step's header or payload (tag), from rank 0's broadcast
 * in stage 0, or from its peer of the stage before in a later stage. */
static int take(const ss_model *m, void *buf, size_t nbytes, int tag, const char *what) {
  int rc = !pipelined(m) ? ss_comm_broadcast(job(m), buf, nbytes, 0)
           : m->local.stage == 0 ? ss_comm_broadcast(m->comm, buf, nbytes, 0)
           : ss_comm_recv(m->world, buf, nbytes, stage_peer(m, m->local.stage - 1), tag);
  return rc ? failed(rc, what) : SS_OK;
}

/* Rank 0: a step message to every worker. */
static int send_message(const ss_model *m, void *h, size_t h_nbytes, void *payload,
                        size_t p_nbytes, const char *what) {
  if (pipelined(m)) return deliver(m, h, h_nbytes, payload, p_nbytes, what);
  int rc = bcast(m, h, h_nbytes, what);
  if (!rc && payload) rc = bcast(m, payload, p_nbytes, what);
  return rc;
}

/* Rank 0: encodes and broadcasts b.  Tokens that share a block table pointer
 * share a table in the message. */
static int send_step(const ss_model *m, const ss_kv_cache *kv, const ss_batch *b) {
  const int64_t n = b->n;
  const int32_t **tabs = malloc((size_t)n * sizeof *tabs);
  int32_t *tab_len = malloc((size_t)n * sizeof *tab_len);
  int32_t *tab_of = malloc((size_t)n * sizeof *tab_of);
  int32_t *payload = NULL;
  int rc = SS_OK;
  if (!tabs || !tab_len || !tab_of) {
    rc = ss_error(SS_ERR_NOMEM, "out of memory");
    goto done;
  }
  int32_t n_tables = 0;
  int64_t n_ids = 0;
  for (int64_t t = 0; t < n; t++) {
    const int32_t *bt = b->loc.block_table[t];
    int32_t k = n_tables - 1;
    while (k >= 0 && tabs[k] != bt) k--;
    if (k < 0) {
      k = n_tables++;
      tabs[k] = bt;
      tab_len[k] = 0;
    }
    tab_of[t] = k;
    const int32_t need = b->loc.pos[t] / kv->block_size + 1;
    if (need > tab_len[k]) tab_len[k] = need;
  }
  for (int32_t k = 0; k < n_tables; k++) n_ids += tab_len[k];
  step_header h = {.magic = STEP_MAGIC, .kind = STEP_FORWARD, .n = (int32_t)n,
                   .n_logits = (int32_t)b->n_logits, .n_tables = n_tables,
                   .n_table_ids = (int32_t)n_ids, .kv_block_size = kv->block_size,
                   .kv_n_blocks = kv->n_blocks, .kv_dtype = (int32_t)kv->dtype,
                   .n_copies = (int32_t)b->n_copies};
  h.payload_count = 3 * n + b->n_logits + n_tables + n_ids + 2 * b->n_copies;
  payload = malloc((size_t)h.payload_count * sizeof *payload);
  if (!payload) {
    rc = ss_error(SS_ERR_NOMEM, "out of memory");
    goto done;
  }
  int32_t *p = payload;
  memcpy(p, b->tokens, (size_t)n * sizeof *p), p += n;
  memcpy(p, b->loc.pos, (size_t)n * sizeof *p), p += n;
  memcpy(p, tab_of, (size_t)n * sizeof *p), p += n;
  memcpy(p, b->logit_rows, (size_t)b->n_logits * sizeof *p), p += b->n_logits;
  memcpy(p, tab_len, (size_t)n_tables * sizeof *p), p += n_tables;
  for (int32_t k = 0; k < n_tables; k++) memcpy(p, tabs[k], (size_t)tab_len[k] * sizeof *p), p += tab_len[k];
  if (b->n_copies > 0) { /* (callers without copies may leave the arrays NULL) */
    memcpy(p, b->copy_src, (size_t)b->n_copies * sizeof *p), p += b->n_copies;
    memcpy(p, b->copy_dst, (size_t)b->n_copies * sizeof *p), p += b->n_copies;
  }
  rc = send_message(m, &h, sizeof h, payload, (size_t)h.payload_count * sizeof *payload,
                    "sending a step to the workers");
  if (rc && rc != SS_ERR_COMM) {
    /* Some ranks may have the step already (an asynchronous send that could
     * not copy its buffer comes after the stage's broadcast). */
    char msg[512];
    snprintf(msg, sizeof msg, "%s", ss_error_msg());
    rc = ss_error(SS_ERR_COMM, "%s (the ranks may be out of step)", msg);
  }
done:
  free(tabs);
  free(tab_len);
  free(tab_of);
  free(payload);
  return rc;
}

int ss_exec_step_begin(const ss_model *m, ss_forward_state *st, ss_kv_cache *kv,
                       const ss_batch *b, float *logits) {
  if (distributed(m)) {
    SS_ASSERT(job_rank(m) == 0);
    if (b->n <= 0 || b->n > st->max_tokens || b->n_logits < 0 || b->n_logits > st->max_logits)
      return ss_error(SS_ERR_INVALID, "forward: batch of %lld tokens / %lld logit rows exceeds "
                      "the state's %lld / %lld", (long long)b->n, (long long)b->n_logits,
                      (long long)st->max_tokens, (long long)st->max_logits);
    int rc = send_step(m, kv, b);
    if (rc) return rc;
    /* The workers run this step too: a failure here leaves them waiting in a
     * collective rank 0 never joins, so the ranks are out of step for good. */
    if ((rc = ss_model_forward_begin(m, st, kv, b, logits))) {
      char msg[512];
      snprintf(msg, sizeof msg, "%s", ss_error_msg());
      return ss_error(SS_ERR_COMM, "rank 0's forward pass failed after the step went to the "
                      "workers: %s", msg);
    }
    return SS_OK;
  }
  return ss_model_forward(m, st, kv, b, logits);
}

int ss_exec_step_end(const ss_model *m, int64_t n_logits, float *logits) {
  if (!distributed(m) || !pipelined(m)) return SS_OK;
  int rc = ss_model_logits_recv(m, n_logits, logits);
  if (rc) {
    char msg[512];
    snprintf(msg, sizeof msg, "%s", ss_error_msg());
    return ss_error(SS_ERR_COMM, "a step's logits did not come back from the last stage: %s", msg);
  }
  return SS_OK;
}

int ss_exec_step(const ss_model *m, ss_forward_state *st, ss_kv_cache *kv, const ss_batch *b,
                 float *logits) {
  int rc = ss_exec_step_begin(m, st, kv, b, logits);
  return rc ? rc : ss_exec_step_end(m, b->n_logits, logits);
}

int ss_exec_stop_workers(const ss_model *m) {
  if (!distributed(m) || job_rank(m) != 0) return SS_OK;
  step_header h = {.magic = STEP_MAGIC, .kind = STEP_STOP};
  int rc = send_message(m, &h, sizeof h, NULL, 0, "stopping the workers");
  /* The stop is on its way down the pipeline: done once the next stage took it. */
  if (!rc && pipelined(m) && (rc = ss_comm_flush(m->world)))
    rc = failed(rc, "stopping the workers");
  return rc;
}

/* A worker's checks of what rank 0 sent: a corrupt message is a bug, but it
 * must not become an out-of-bounds access on this rank. */
static int check_step(const ss_model *m, const step_header *h, const int32_t *pl) {
  const int32_t *tok = pl, *pos = pl + h->n, *tab_of = pl + 2 * h->n;
  const int32_t *rows = pl + 3 * h->n, *tab_len = rows + h->n_logits, *ids = tab_len + h->n_tables;
  int64_t sum = 0;
  for (int32_t k = 0; k < h->n_tables; k++) {
    if (tab_len[k] < 0) return ss_error(SS_ERR_COMM, "step: negative table length");
    sum += tab_len[k];
  }
  if (sum != h->n_table_ids) return ss_error(SS_ERR_COMM, "step: table lengths disagree");
  for (int64_t i = 0; i < sum; i++)
    if (ids[i] < 0 || ids[i] >= h->kv_n_blocks) return ss_error(SS_ERR_COMM, "step: bad block id");
  const int32_t *src = ids + sum, *dst = src + h->n_copies;
  for (int32_t i = 0; i < h->n_copies; i++)
    if (src[i] < 0 || src[i] >= h->kv_n_blocks || dst[i] < 0 || dst[i] >= h->kv_n_blocks ||
        src[i] == dst[i])
      return ss_error(SS_ERR_COMM, "step: bad block copy %d -> %d", src[i], dst[i]);
  for (int32_t t = 0; t < h->n; t++) {
    if (tok[t] < 0 || tok[t] >= m->cfg.vocab) return ss_error(SS_ERR_COMM, "step: bad token");
    if (tab_of[t] < 0 || tab_of[t] >= h->n_tables) return ss_error(SS_ERR_COMM, "step: bad table");
    if (pos[t] < 0 || pos[t] / h->kv_block_size >= tab_len[tab_of[t]])
      return ss_error(SS_ERR_COMM, "step: position %d outside its block table", pos[t]);
  }
  for (int32_t i = 0; i < h->n_logits; i++)
    if (rows[i] < 0 || rows[i] >= h->n) return ss_error(SS_ERR_COMM, "step: bad logit row");
  return SS_OK;
}

/* Every rank sends its counters to rank 0 (all: tp entries there, else NULL). */
static int gather_profile(const ss_model *m, ss_step_profile *all) {
  ss_comm *c = job(m);
  const int n = c->size;
  size_t *nbytes = malloc((size_t)n * sizeof *nbytes);
  if (!nbytes) return ss_error(SS_ERR_NOMEM, "out of memory");
  for (int r = 0; r < n; r++) nbytes[r] = sizeof(ss_step_profile);
  const double c0 = c->busy_s;
  int rc = ss_comm_gatherv(c, m->prof, all, nbytes, 0);
  c->busy_s = c0; /* bookkeeping, not a step's communication */
  free(nbytes);
  if (rc) {
    char msg[512];
    snprintf(msg, sizeof msg, "%s", ss_error_msg());
    return ss_error(rc, "gathering step counters: %s", msg);
  }
  return SS_OK;
}

int ss_exec_gather_profiles(const ss_model *m, ss_step_profile *all) {
  if (!distributed(m)) {
    all[0] = *m->prof;
    return SS_OK;
  }
  SS_ASSERT(job_rank(m) == 0);
  step_header h = {.magic = STEP_MAGIC, .kind = STEP_STATS};
  int rc = send_message(m, &h, sizeof h, NULL, 0, "asking the workers for their counters");
  if (rc) return rc;
  return gather_profile(m, all);
}

int ss_exec_worker_loop(const ss_model *m, ss_backend *be) {
  SS_ASSERT(distributed(m) && job_rank(m) != 0);
  ss_forward_state st = {0};
  ss_kv_cache kv = {0};
  int32_t *payload = NULL, **tabs = NULL;
  const int32_t **btab = NULL;
  int64_t payload_cap = 0, n_cap = 0;
  int rc = SS_OK;
  for (;;) {
    step_header h;
    const double t0 = ss_now_s();
    const double c0 = job(m)->busy_s, s0 = m->comm ? m->comm->busy_s : 0;
    rc = take(m, &h, sizeof h, PP_TAG_STEP_HEADER, "waiting for the next step from rank 0");
    if (ss_trace_on()) ss_trace_span("wait for step", "idle", t0, ss_now_s(), NULL, 0);
    m->prof->idle_s += ss_now_s() - t0;
    /* Waiting is idle time, not communication inside a step. */
    job(m)->busy_s = c0;
    if (m->comm && m->comm != job(m)) m->comm->busy_s = s0;
    if (rc) break;
    if (h.magic != STEP_MAGIC ||
        (h.kind != STEP_FORWARD && h.kind != STEP_STOP && h.kind != STEP_STATS)) {
      rc = ss_error(SS_ERR_COMM, "rank %d: malformed step message from rank 0", job_rank(m));
      break;
    }
    if (h.kind != STEP_FORWARD && pipelined(m) && (rc = pass_on(m, &h, sizeof h, NULL, 0))) break;
    if (h.kind == STEP_STOP) {
      /* Done once the next stage took the stop (and every step before it). */
      if (pipelined(m) && (rc = ss_comm_flush(m->world))) rc = failed(rc, "stopping");
      break;
    }
    if (h.kind == STEP_STATS) {
      if ((rc = gather_profile(m, NULL))) break;
      continue;
    }
    if (h.n <= 0 || h.n_logits < 0 || h.n_logits > h.n || h.n_tables <= 0 || h.n_tables > h.n ||
        h.n_table_ids < 0 || h.kv_block_size <= 0 || h.kv_n_blocks <= 0 || h.n_copies < 0 ||
        h.n_copies > h.kv_n_blocks ||
        h.payload_count != 3 * (int64_t)h.n + h.n_logits + h.n_tables + h.n_table_ids +
                               2 * (int64_t)h.n_copies) {
      rc = ss_error(SS_ERR_COMM, "rank %d: malformed step header from rank 0", job_rank(m));
      break;
    }
    if (h.payload_count > payload_cap) {
      free(payload);
      payload = malloc((size_t)h.payload_count * sizeof *payload);
      payload_cap = payload ? h.payload_count : 0;
      if (!payload) {
        rc = ss_error(SS_ERR_NOMEM, "out of memory");
        break;
      }
    }
    if ((rc = take(m, payload, (size_t)h.payload_count * sizeof *payload, PP_TAG_STEP_PAYLOAD,
              "receiving a step from rank 0")))
      break;
    if ((rc = check_step(m, &h, payload))) break;
    if (pipelined(m) &&
        (rc = pass_on(m, &h, sizeof h, payload, (size_t)h.payload_count * sizeof *payload)))
      break;
    /* The cache follows rank 0's geometry; activations grow to the batch. */
    if (kv.block_size != h.kv_block_size || kv.n_blocks != h.kv_n_blocks ||
        (int32_t)kv.dtype != h.kv_dtype) {
      ss_kv_cache_free(&kv);
      memset(&kv, 0, sizeof kv);
      if ((rc = ss_model_kv_init(m, be, h.kv_block_size, h.kv_n_blocks, (ss_dtype)h.kv_dtype,
                                 &kv)))
        break;
    }
    if (h.n > st.max_tokens || h.n_logits > st.max_logits) {
      int64_t T = h.n > st.max_tokens ? h.n : st.max_tokens;
      int64_t NL = h.n_logits > st.max_logits ? h.n_logits : st.max_logits;
      ss_forward_state_free(&st);
      if ((rc = ss_forward_state_init(&st, m, be, T, NL))) break;
    }
    if (h.n > n_cap) {
      free(btab);
      free(tabs);
      btab = malloc((size_t)h.n * sizeof *btab);
      tabs = malloc((size_t)h.n * sizeof *tabs);
      n_cap = btab && tabs ? h.n : 0;
      if (!btab || !tabs) {
        rc = ss_error(SS_ERR_NOMEM, "out of memory");
        break;
      }
    }
    const int32_t *tok = payload, *pos = payload + h.n, *tab_of = payload + 2 * h.n;
    const int32_t *rows = payload + 3 * h.n, *tab_len = rows + h.n_logits;
    int32_t *ids = (int32_t *)(tab_len + h.n_tables);
    for (int32_t k = 0; k < h.n_tables; k++) tabs[k] = ids, ids += tab_len[k];
    for (int32_t t = 0; t < h.n; t++) btab[t] = tabs[tab_of[t]];
    ss_batch b = {.n = h.n, .tokens = tok, .loc = {.n = h.n, .pos = pos, .block_table = btab},
                  .n_logits = h.n_logits, .logit_rows = rows, .n_copies = h.n_copies,
                  .copy_src = ids, .copy_dst = ids + h.n_copies};
    if ((rc = ss_model_forward(m, &st, &kv, &b, NULL))) break;
  }
  free(payload);
  free(btab);
  free(tabs);
  ss_forward_state_free(&st);
  if (kv.be) ss_kv_cache_free(&kv);
  return rc;
}
