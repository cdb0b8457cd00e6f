#include "runtime/engine/executor.h"
#include "runtime/engine/generate.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "runtime/base/clock.h"
#include "runtime/base/status.h"

#define KV_BLOCK_SIZE 16

size_t ss_stop_scan(const char *text, size_t len, size_t emitted, const char *const *stop,
                    size_t n_stop, bool *found, size_t *cut) {
  *found = false;
  size_t best = len;
  /* A full match anywhere in the text not yet shown (a match may start inside the
   * held-back tail, which is never before `emitted`). */
  for (size_t i = 0; i < n_stop; i++) {
    size_t sl = strlen(stop[i]);
    if (sl == 0 || sl > len) continue;
    size_t from = emitted >= sl ? emitted - sl + 1 : 0;
    for (size_t at = from; at + sl <= len; at++)
      if (memcmp(text + at, stop[i], sl) == 0) {
        if (at < best) best = at;
        *found = true;
        break;
      }
  }
  if (*found) {
    *cut = best;
    return best;
  }
  /* Hold back the longest tail that is a proper prefix of some stop string. */
  size_t show = len;
  for (size_t i = 0; i < n_stop; i++) {
    size_t sl = strlen(stop[i]);
    for (size_t k = sl - (sl > 0); k > 0; k--) {
      if (k > len) continue;
      if (memcmp(text + len - k, stop[i], k) == 0) {
        if (len - k < show) show = len - k;
        break;
      }
    }
  }
  return show < emitted ? emitted : show;
}

/* A growable byte buffer. */
typedef struct gbuf {
  char *p;
  size_t len, cap;
} gbuf;

static int gbuf_add(gbuf *b, const char *s, size_t n) {
  if (b->len + n + 1 > b->cap) {
    size_t cap = b->cap ? b->cap : 1024;
    while (cap < b->len + n + 1) cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p) return ss_error(SS_ERR_NOMEM, "generate: out of memory");
    b->p = p;
    b->cap = cap;
  }
  memcpy(b->p + b->len, s, n);
  b->len += n;
  b->p[b->len] = 0;
  return SS_OK;
}

void ss_gen_result_free(ss_gen_result *res) {
  free(res->tokens);
  free(res->text);
  memset(res, 0, sizeof *res);
}

int ss_generate(const ss_model *m, ss_backend *be, const int32_t *prompt, int32_t n_prompt,
                const ss_gen_params *p, ss_gen_callback cb, void *user, ss_gen_result *res) {
  memset(res, 0, sizeof *res);
  const ss_model_config *c = &m->cfg;
  const int32_t n_ctx = p->n_ctx > 0 ? p->n_ctx : c->n_ctx_train;
  if (n_prompt <= 0) return ss_error(SS_ERR_INVALID, "the prompt is empty (0 tokens)");
  if (p->max_tokens < 0) return ss_error(SS_ERR_RANGE, "max_tokens = %d must be >= 0", p->max_tokens);
  if ((int64_t)n_prompt + p->max_tokens > n_ctx)
    return ss_error(SS_ERR_RANGE, "prompt (%d tokens) + max_tokens (%d) = %lld exceeds the "
                    "context length (%d)", n_prompt, p->max_tokens,
                    (long long)n_prompt + p->max_tokens, n_ctx);
  for (int32_t i = 0; i < n_prompt; i++)
    if (prompt[i] < 0 || prompt[i] >= c->vocab)
      return ss_error(SS_ERR_RANGE, "prompt token %d at index %d is outside the vocabulary "
                      "(%d tokens)", prompt[i], i, c->vocab);

  int rc;
  const int32_t chunk = p->prefill_chunk > 0 ? p->prefill_chunk : 256;
  const int32_t total = n_prompt + p->max_tokens;
  ss_kv_cache kv = {0};
  ss_kv_seq seq = {0};
  ss_forward_state st = {0};
  ss_sampler smp = {0};
  ss_detok dt;
  gbuf text = {0};
  float *logits = NULL;
  int32_t *top_ids = NULL;
  float *top_lps = NULL;
  int32_t *pos = NULL;
  const int32_t **btab = NULL;

  if ((rc = ss_model_kv_init(m, be, KV_BLOCK_SIZE, (total + KV_BLOCK_SIZE - 1) / KV_BLOCK_SIZE,
                             &kv)))
    goto done;
  if ((rc = ss_kv_seq_reserve(&kv, &seq, total))) goto done;
  const int32_t max_batch = n_prompt < chunk ? n_prompt : chunk;
  if ((rc = ss_forward_state_init(&st, m, be, max_batch, 1))) goto done;
  if ((rc = ss_sampler_init(&smp, &p->sampling, c->vocab))) goto done;
  logits = malloc((size_t)c->vocab * sizeof *logits);
  res->tokens = malloc(((size_t)p->max_tokens + 1) * sizeof *res->tokens);
  pos = malloc((size_t)max_batch * sizeof *pos);
  btab = malloc((size_t)max_batch * sizeof *btab);
  int32_t n_top = p->n_top_logprobs < c->vocab ? p->n_top_logprobs : c->vocab;
  if (n_top > 0) {
    top_ids = malloc((size_t)n_top * sizeof *top_ids);
    top_lps = malloc((size_t)n_top * sizeof *top_lps);
  }
  if (!logits || !res->tokens || !pos || !btab || (n_top > 0 && (!top_ids || !top_lps)) ||
      gbuf_add(&text, "", 0)) {
    rc = ss_error(SS_ERR_NOMEM, "generate: out of memory");
    goto done;
  }
  for (int32_t i = 0; i < max_batch; i++) btab[i] = seq.blocks;
  res->n_prompt = n_prompt;
  res->finish_reason = "length";

  /* Prefill in chunks; only the last prompt token's logits are needed. */
  double t0 = (ss_now_s() * 1e3);
  for (int32_t at = 0; at < n_prompt; at += chunk) {
    int32_t n = n_prompt - at < chunk ? n_prompt - at : chunk;
    for (int32_t i = 0; i < n; i++) pos[i] = at + i;
    int32_t last = n - 1;
    bool final = at + n == n_prompt;
    ss_batch b = {.n = n, .tokens = prompt + at,
                  .loc = {.n = n, .pos = pos, .block_table = btab},
                  .n_logits = final ? 1 : 0, .logit_rows = &last};
    if ((rc = ss_exec_step(m, &st, &kv, &b, logits))) goto done;
  }
  res->prefill_ms = (ss_now_s() * 1e3) - t0;

  ss_detok_init(&dt, m->tok, false);
  size_t emitted = 0;
  double t1 = (ss_now_s() * 1e3);
  for (int32_t step = 0; step < p->max_tokens; step++) {
    if (n_top > 0) ss_top_logprobs(logits, c->vocab, n_top, top_ids, top_lps);
    int32_t tok = ss_sampler_sample(&smp, logits);
    res->tokens[res->n_generated++] = tok;
    bool eog = !p->ignore_eos && ss_tokenizer_is_eog(m->tok, tok);
    char piece[SS_DETOK_MIN_CAP];
    size_t np = eog ? 0 : ss_detok_push(&dt, tok, piece, sizeof piece);
    bool last_step = eog || step + 1 == p->max_tokens;
    if (last_step) np += ss_detok_flush(&dt, piece + np, sizeof piece - np);
    if ((rc = gbuf_add(&text, piece, np))) goto done;
    bool stop_found = false;
    size_t cut = text.len;
    size_t show = last_step && p->n_stop == 0
                      ? text.len
                      : ss_stop_scan(text.p, text.len, emitted, p->stop, p->n_stop, &stop_found, &cut);
    if (last_step && !stop_found) show = text.len;
    ss_gen_step gs = {.index = step, .token = tok, .text = text.p + emitted,
                      .text_len = show - emitted, .n_top = n_top, .top_ids = top_ids,
                      .top_logprobs = top_lps};
    emitted = show;
    int abort_req = cb ? cb(user, &gs) : 0;
    if (stop_found) {
      text.len = cut;
      text.p[cut] = 0;
      res->finish_reason = "stop";
      break;
    }
    if (eog) {
      res->finish_reason = "stop";
      break;
    }
    if (abort_req) {
      res->finish_reason = "abort";
      break;
    }
    if (step + 1 == p->max_tokens) break;
    /* Feed the sampled token back in. */
    int32_t p0 = n_prompt + step, zero = 0;
    ss_batch b = {.n = 1, .tokens = &tok, .loc = {.n = 1, .pos = &p0, .block_table = btab},
                  .n_logits = 1, .logit_rows = &zero};
    if ((rc = ss_exec_step(m, &st, &kv, &b, logits))) goto done;
    res->n_decode_steps++;
  }
  res->decode_ms = (ss_now_s() * 1e3) - t1;
  res->text = text.p;
  res->text_len = text.len;
  text.p = NULL;
  rc = SS_OK;
done:
  free(text.p);
  free(logits);
  free(top_ids);
  free(top_lps);
  free(pos);
  free(btab);
  ss_sampler_free(&smp);
  ss_forward_state_free(&st);
  if (kv.be) ss_kv_seq_release(&kv, &seq);
  ss_kv_cache_free(&kv);
  if (rc) ss_gen_result_free(res);
  return rc;
}
