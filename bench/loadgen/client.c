#include "bench/loadgen/client.h"

#include <curl/curl.h>
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "bench/loadgen/sse.h"
#include "runtime/base/clock.h"
#include "runtime/base/status.h"
#include "runtime/base/utf8.h"

/* How much of a non-2xx reply's body we keep for the error message. */
#define ERROR_BODY_NBYTES 4096
/* Progress bar refresh period (seconds). */
#define PROGRESS_PERIOD_S 0.2

int ss_lg_client_global_init(void) {
  CURLcode c = curl_global_init(CURL_GLOBAL_DEFAULT);
  if (c != CURLE_OK)
    return ss_error(SS_ERR_INTERNAL, "libcurl initialisation failed: %s", curl_easy_strerror(c));
  return SS_OK;
}

void ss_lg_client_global_cleanup(void) { curl_global_cleanup(); }

/* ---- one transfer -------------------------------------------------------------- */

/* A multi-turn session between its turns. */
typedef struct session {
  size_t next;         /* the turn to send next */
  double due;          /* when it may go (relative): its start, or a reply + think time */
  bool busy;           /* a turn is in flight */
  bool over;           /* every turn answered, or one failed */
  int64_t context;     /* tokens of the turns so far (prompts and replies), for estimates */
} session;

typedef struct runner {
  const ss_lg_client_config *cfg;
  CURLM *multi;
  struct curl_slist *headers;
  struct xfer *free_list;
  struct xfer **all;           /* every xfer allocated, for cleanup */
  size_t all_count, all_cap;
  ss_lg_result *results;
  size_t count, cap;    /* results issued, capacity */
  size_t done, failed;
  int64_t inflight;
  double t0, last_free; /* last_free: when a completion freed a full slot (relative) */
  double last_done;     /* relative time of the last completion */
  double last_progress;
  bool progress_drawn;
  session *sessions;    /* (cfg->count) multi-turn only */
  ss_lg_text *replies;  /* (cfg->count * cfg->turns) session s's turn t at s*turns + t */
  size_t sessions_cut, turns_unsent;
} runner;

typedef struct xfer {
  CURL *easy;
  char errbuf[CURL_ERROR_SIZE];
  struct runner *rn;
  size_t index;         /* of its result: the results array may move as it grows */
  const ss_lg_prompt *prompt;
  int64_t input_est;    /* prompt tokens when usage does not say */
  double t_send;        /* absolute monotonic seconds */
  double t_last;        /* last text chunk */
  long status;          /* 0 until the headers are in */
  ss_lg_sse sse;
  bool got_done, has_usage;
  int64_t usage_prompt, usage_completion, usage_cached;
  char stream_error[256];
  char *body;           /* start of a non-2xx body */
  size_t body_nbytes;
  char *post;           /* a multi-turn request body, owned until the transfer ends */
  ss_lg_text text;      /* multi-turn: the reply's text as streamed */
  struct xfer *next_free;
} xfer;

static int result_set_error(ss_lg_result *r, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static int result_set_error(ss_lg_result *r, const char *fmt, ...) {
  char buf[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  free(r->error);
  r->error = strdup(buf);
  return r->error ? SS_OK : SS_ERR_NOMEM;
}

static void push_itl(ss_lg_result *r, double gap) {
  if (r->itl_count == r->itl_cap) {
    size_t ncap = r->itl_cap ? r->itl_cap * 2 : 64;
    double *p = realloc(r->itls_s, ncap * sizeof *p);
    if (!p) return; /* the gap is lost, not the run; counted chunks still are */
    r->itls_s = p;
    r->itl_cap = ncap;
  }
  r->itls_s[r->itl_count++] = gap;
}

static ss_lg_result *xfer_result(const xfer *x) { return &x->rn->results[x->index]; }

static void on_event(void *ctx, const char *data, size_t nbytes) {
  xfer *x = ctx;
  double now = ss_now_s();
  ss_lg_chunk c;
  if (x->rn->cfg->turns) {
    if (ss_lg_chunk_parse_text(data, nbytes, &c, &x->text) && !x->stream_error[0])
      snprintf(x->stream_error, sizeof x->stream_error, "%s", ss_error_msg());
  } else {
    ss_lg_chunk_parse(data, nbytes, &c);
  }
  switch (c.kind) {
  case SS_LG_CHUNK_DONE: x->got_done = true; break;
  case SS_LG_CHUNK_ERROR:
    if (!x->stream_error[0]) snprintf(x->stream_error, sizeof x->stream_error, "%s", c.error);
    break;
  case SS_LG_CHUNK_DATA:
    if (c.text_nbytes) {
      ss_lg_result *r = xfer_result(x);
      if (r->chunk_count == 0) r->ttft_s = now - x->t_send;
      else push_itl(r, now - x->t_last);
      x->t_last = now;
      r->chunk_count++;
    }
    if (c.has_usage) {
      x->has_usage = true;
      if (c.prompt_tokens >= 0) x->usage_prompt = c.prompt_tokens;
      if (c.completion_tokens >= 0) x->usage_completion = c.completion_tokens;
      if (c.cached_tokens >= 0) x->usage_cached = c.cached_tokens;
    }
    break;
  case SS_LG_CHUNK_OTHER: break;
  }
}

static size_t on_write(char *p, size_t size, size_t nmemb, void *ud) {
  xfer *x = ud;
  size_t n = size * nmemb;
  if (x->status == 0) curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &x->status);
  if (x->status < 200 || x->status >= 300) {
    size_t k = n < ERROR_BODY_NBYTES - x->body_nbytes ? n : ERROR_BODY_NBYTES - x->body_nbytes;
    if (k && !x->body) x->body = malloc(ERROR_BODY_NBYTES);
    if (k && x->body) {
      memcpy(x->body + x->body_nbytes, p, k);
      x->body_nbytes += k;
    }
    return n;
  }
  if (ss_lg_sse_feed(&x->sse, p, n)) {
    snprintf(x->stream_error, sizeof x->stream_error, "%s", ss_error_msg());
    return 0; /* aborts the transfer */
  }
  return n;
}

static void xfer_finish(xfer *x, CURLcode code, double now) {
  ss_lg_result *r = xfer_result(x);
  ss_lg_sse_finish(&x->sse);
  if (x->status == 0) curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &x->status);
  r->http_status = (int)x->status;
  if (r->chunk_count) {
    r->e2e_s = x->t_last - x->t_send;
  } else {
    r->ttft_s = r->e2e_s = now - x->t_send;
  }
  r->input_tokens = x->input_est;
  if (x->has_usage && x->usage_prompt >= 0) {
    r->input_tokens = x->usage_prompt;
    r->input_from_usage = true;
  }
  r->cached_tokens = x->has_usage ? x->usage_cached : -1;
  r->output_tokens = (int64_t)r->chunk_count;
  if (x->has_usage && x->usage_completion >= 0) {
    r->output_tokens = x->usage_completion;
    r->output_from_usage = true;
  }

  if (x->stream_error[0] && x->status >= 200 && x->status < 300) {
    result_set_error(r, "stream error after %zu chunks: %s", r->chunk_count, x->stream_error);
  } else if (code != CURLE_OK && (x->status < 200 || x->status >= 300) && x->status != 0) {
    char msg[256];
    ss_lg_error_body_message(x->body, x->body_nbytes, msg, sizeof msg);
    result_set_error(r, "HTTP %ld: %s", x->status, msg);
  } else if (code != CURLE_OK) {
    result_set_error(r, "%s%s%s (after %zu chunks)", curl_easy_strerror(code),
                     x->errbuf[0] ? ": " : "", x->errbuf, r->chunk_count);
  } else if (x->status < 200 || x->status >= 300) {
    char msg[256];
    ss_lg_error_body_message(x->body, x->body_nbytes, msg, sizeof msg);
    result_set_error(r, "HTTP %ld: %s", x->status, msg);
  } else if (!x->got_done) {
    char *ct = NULL;
    curl_easy_getinfo(x->easy, CURLINFO_CONTENT_TYPE, &ct);
    if (r->chunk_count == 0 && !(ct && strstr(ct, "text/event-stream")))
      result_set_error(r, "the reply is not an event stream (Content-Type: %s); does the "
                       "server support \"stream\": true?", ct ? ct : "none");
    else
      result_set_error(r, "stream ended before \"data: [DONE]\" after %zu chunks",
                       r->chunk_count);
  }
  /* Strip newlines from messages so they stay one line in tables and JSON. */
  if (r->error)
    for (char *c = r->error; *c; c++)
      if (*c == '\n' || *c == '\r') *c = ' ';
}

/* ---- the run --------------------------------------------------------------- */


static xfer *xfer_get(runner *rn) {
  xfer *x = rn->free_list;
  if (x) {
    rn->free_list = x->next_free;
    return x;
  }
  if (rn->all_count == rn->all_cap) {
    size_t ncap = rn->all_cap ? rn->all_cap * 2 : 64;
    xfer **p = realloc(rn->all, ncap * sizeof *p);
    if (!p) return NULL;
    rn->all = p;
    rn->all_cap = ncap;
  }
  x = calloc(1, sizeof *x);
  if (!x) return NULL;
  if (!(x->easy = curl_easy_init())) {
    free(x);
    return NULL;
  }
  rn->all[rn->all_count++] = x;
  const ss_lg_client_config *c = rn->cfg;
  CURL *e = x->easy;
  curl_easy_setopt(e, CURLOPT_URL, c->url);
  curl_easy_setopt(e, CURLOPT_HTTPHEADER, rn->headers);
  curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_write);
  curl_easy_setopt(e, CURLOPT_WRITEDATA, x);
  curl_easy_setopt(e, CURLOPT_PRIVATE, x);
  curl_easy_setopt(e, CURLOPT_ERRORBUFFER, x->errbuf);
  curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(e, CURLOPT_TCP_NODELAY, 1L);
  if (c->request_timeout_s > 0)
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)(c->request_timeout_s * 1e3));
  if (c->connect_timeout_s > 0)
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, (long)(c->connect_timeout_s * 1e3));
  return x;
}

/* Sends prompt `prompt_index` with `body`; `post` (NULL or body) is freed when
 * the transfer ends; sess and turn are -1 outside multi-turn runs, where
 * input_est (< 0: the prompt's own length) stands for the whole conversation. */
static int start_request(runner *rn, double sched, double ready, double now_abs,
                         size_t prompt_index, const char *body, char *post, int64_t sess,
                         int64_t turn, int64_t input_est) {
  const ss_lg_client_config *c = rn->cfg;
  if (rn->count == rn->cap) {
    size_t ncap = rn->cap ? rn->cap * 2 : 1024;
    ss_lg_result *p = realloc(rn->results, ncap * sizeof *p);
    if (!p) {
      free(post);
      return ss_error(SS_ERR_NOMEM, "out of memory for %zu results", ncap);
    }
    rn->results = p;
    rn->cap = ncap;
  }
  size_t i = rn->count;
  ss_lg_result *r = &rn->results[i];
  memset(r, 0, sizeof *r);
  r->prompt_index = prompt_index;
  r->session = sess;
  r->turn = turn;
  r->sched_s = sched;
  r->ready_s = ready;
  r->send_s = now_abs - rn->t0;
  xfer *x = xfer_get(rn);
  if (!x) {
    free(post);
    return ss_error(SS_ERR_NOMEM, "out of memory for a transfer");
  }
  x->post = post;
  x->text.nbytes = 0;
  if (x->text.p) x->text.p[0] = '\0';
  CURL *e = x->easy;
  /* Reset the per-request state; the handle and its settings are reused. */
  ss_lg_sse_init(&x->sse, on_event, x);
  x->rn = rn;
  x->index = i;
  x->prompt = &c->prompts[r->prompt_index];
  x->input_est = input_est >= 0 ? input_est : x->prompt->input_len;
  x->t_send = now_abs;
  x->t_last = now_abs;
  x->status = 0;
  x->got_done = x->has_usage = false;
  x->usage_prompt = x->usage_completion = x->usage_cached = -1;
  x->stream_error[0] = x->errbuf[0] = '\0';
  x->body_nbytes = 0;
  curl_easy_setopt(e, CURLOPT_POSTFIELDS, body);
  curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)strlen(body));
  CURLMcode mc = curl_multi_add_handle(rn->multi, e);
  if (mc != CURLM_OK) return ss_error(SS_ERR_INTERNAL, "libcurl: %s", curl_multi_strerror(mc));
  rn->count++;
  rn->inflight++;
  return SS_OK;
}

static void draw_progress(runner *rn, double now, bool final) {
  const ss_lg_client_config *c = rn->cfg;
  double frac;
  char total[32];
  if (c->count) {
    size_t n = c->turns ? c->count * c->turns : c->count;
    frac = (double)rn->done / (double)n;
    snprintf(total, sizeof total, "%zu", n);
  } else {
    frac = c->duration_s > 0 ? fmin(now / c->duration_s, 1.0) : 0;
    snprintf(total, sizeof total, "%.0fs", c->duration_s);
  }
  int width = 30, fill = (int)(frac * width + 0.5);
  char bar[64];
  for (int i = 0; i < width; i++) bar[i] = i < fill ? '#' : '.';
  bar[width] = '\0';
  fprintf(stderr, "\r%s[%s] %3.0f%% %zu/%s done, %lld in flight, %zu failed, %.1fs ",
          c->progress_label ? c->progress_label : "", bar, frac * 100, rn->done, total,
          (long long)rn->inflight, rn->failed, now);
  if (final) fputc('\n', stderr);
  fflush(stderr);
  rn->progress_drawn = true;
}

/* ---- driving the transfers ------------------------------------------------------ */

static void drain_done(runner *rn, double now_abs);

/* Runs libcurl's transfers, collects the finished ones and redraws the
 * progress bar when it is due. */
static int transfers_step(runner *rn) {
  int running;
  CURLMcode mc = curl_multi_perform(rn->multi, &running);
  if (mc != CURLM_OK) return ss_error(SS_ERR_INTERNAL, "libcurl: %s", curl_multi_strerror(mc));
  drain_done(rn, ss_now_s());
  double now = ss_now_s() - rn->t0;
  if (rn->cfg->progress && now - rn->last_progress >= PROGRESS_PERIOD_S) {
    draw_progress(rn, now, false);
    rn->last_progress = now;
  }
  return SS_OK;
}

/* Waits at most `wait` seconds for socket activity, less when libcurl's own
 * timer or the progress bar is due sooner. */
static int wait_for_activity(runner *rn, double wait) {
  long ct = -1;
  curl_multi_timeout(rn->multi, &ct);
  if (ct >= 0) wait = fmin(wait, (double)ct * 1e-3);
  if (rn->cfg->progress) wait = fmin(wait, PROGRESS_PERIOD_S);
  if (wait <= 0) return SS_OK;
  if (wait < 2e-3) {
    /* curl_multi_poll counts whole milliseconds: sleep the rest precisely. */
    struct timespec ts = {0, (long)(wait * 1e9)};
    nanosleep(&ts, NULL);
    return SS_OK;
  }
  CURLMcode mc = curl_multi_poll(rn->multi, NULL, 0, (int)((wait - 1e-3) * 1e3), NULL);
  if (mc != CURLM_OK) return ss_error(SS_ERR_INTERNAL, "libcurl: %s", curl_multi_strerror(mc));
  return SS_OK;
}

/* ---- multi-turn sessions --------------------------------------------------------- */

/* Ends a session at turn t: its later turns are not sent. */
static void session_cut(runner *rn, session *s, size_t t) {
  s->over = true;
  rn->sessions_cut++;
  rn->turns_unsent += rn->cfg->turns - t - 1;
}

/* A turn's reply is in: keep its text for the next turn's body, or end the
 * session when the turn failed (its remaining turns are not sent). */
static void session_turn_done(runner *rn, xfer *x, double now_abs) {
  const ss_lg_client_config *c = rn->cfg;
  const ss_lg_result *r = xfer_result(x);
  session *s = &rn->sessions[r->session];
  size_t t = (size_t)r->turn;
  free(x->post);
  x->post = NULL;
  s->busy = false;
  if (!r->error && x->text.nbytes && !ss_utf8_valid(x->text.p, x->text.nbytes)) {
    /* The next turn's JSON body cannot carry it: this session ends here. */
    result_set_error(xfer_result(x), "the reply's text is not valid UTF-8, so session %lld "
                     "cannot send its next turn", (long long)r->session);
    rn->failed++;
  }
  if (r->error) {
    session_cut(rn, s, t);
    return;
  }
  /* The buffer moves to the session; the transfer starts its next one empty. */
  ss_lg_text *dst = &rn->replies[(size_t)r->session * c->turns + t];
  *dst = x->text;
  x->text = (ss_lg_text){0};
  if (!dst->p && !(dst->p = calloc(1, 1))) { /* an empty reply is still a turn */
    session_cut(rn, s, t);
    return;
  }
  s->context += c->prompts[r->prompt_index].input_len + r->output_tokens;
  s->next = t + 1;
  if (s->next == c->turns) s->over = true;
  else s->due = now_abs - rn->t0 + c->think_time_s;
}

/* The idle session due earliest at or before `now` (SIZE_MAX if none), the
 * earliest due time after it, and whether any session is unfinished. */
static size_t sessions_scan(const runner *rn, double now, double *next_due, bool *all_over) {
  size_t best = SIZE_MAX;
  *next_due = INFINITY;
  *all_over = true;
  for (size_t k = 0; k < rn->cfg->count; k++) {
    const session *s = &rn->sessions[k];
    if (s->over) continue;
    *all_over = false;
    if (s->busy) continue;
    if (s->due <= now) {
      if (best == SIZE_MAX || s->due < rn->sessions[best].due) best = k;
    } else if (s->due < *next_due) {
      *next_due = s->due;
    }
  }
  return best;
}

static int sessions_run(runner *rn) {
  const ss_lg_client_config *c = rn->cfg;
  size_t n = c->count;
  rn->sessions = calloc(n, sizeof *rn->sessions);
  rn->replies = calloc(n * c->turns, sizeof *rn->replies);
  if (!rn->sessions || !rn->replies)
    return ss_error(SS_ERR_NOMEM, "out of memory for %zu sessions", n);
  for (size_t k = 0; k < n; k++) rn->sessions[k].due = c->sched_s[k];
  for (;;) {
    double now_abs = ss_now_s(), now = now_abs - rn->t0, next_due;
    bool all_over;
    /* Send every due turn that has a slot, the longest waiting first. */
    for (;;) {
      size_t k = sessions_scan(rn, now, &next_due, &all_over);
      if (k == SIZE_MAX) break;
      if (c->max_concurrency && rn->inflight >= c->max_concurrency) break;
      session *s = &rn->sessions[k];
      double ready = s->due;
      if (c->max_concurrency && rn->last_free > ready) ready = rn->last_free;
      char *body = NULL;
      int rc = c->turn_body(c->turn_body_ctx, k, s->next, rn->replies + k * c->turns, &body);
      if (rc) return rc;
      size_t pi = k * c->turns + s->next;
      rc = start_request(rn, s->due, ready, now_abs, pi, body, body, (int64_t)k,
                         (int64_t)s->next, s->context + c->prompts[pi].input_len);
      if (rc) return rc;
      s->busy = true;
      now_abs = ss_now_s();
      now = now_abs - rn->t0;
    }
    if (all_over && rn->inflight == 0) return SS_OK;

    int rc = transfers_step(rn);
    if (rc) return rc;
    now = ss_now_s() - rn->t0;
    /* A completion may have made a turn due now; the scan says when the next is. */
    size_t k = sessions_scan(rn, now, &next_due, &all_over);
    bool slot_free = !c->max_concurrency || rn->inflight < c->max_concurrency;
    if (k != SIZE_MAX && slot_free) continue;
    if (all_over && rn->inflight == 0) continue;
    if ((rc = wait_for_activity(rn, slot_free ? fmin(1.0, next_due - now) : 1.0))) return rc;
  }
}

static void drain_done(runner *rn, double now_abs) {
  CURLMsg *msg;
  int left;
  while ((msg = curl_multi_info_read(rn->multi, &left))) {
    if (msg->msg != CURLMSG_DONE) continue;
    CURL *e = msg->easy_handle;
    xfer *x = NULL;
    curl_easy_getinfo(e, CURLINFO_PRIVATE, (char **)&x);
    CURLcode code = msg->data.result;
    curl_multi_remove_handle(rn->multi, e);
    xfer_finish(x, code, now_abs);
    ss_lg_sse_free(&x->sse);
    if (xfer_result(x)->error) rn->failed++;
    if (rn->cfg->turns) session_turn_done(rn, x, now_abs);
    x->next_free = rn->free_list;
    rn->free_list = x;
    rn->done++;
    if (rn->cfg->max_concurrency && rn->inflight == rn->cfg->max_concurrency)
      rn->last_free = now_abs - rn->t0;
    rn->inflight--;
    rn->last_done = now_abs - rn->t0;
  }
}

int ss_lg_client_run(const ss_lg_client_config *cfg, ss_lg_run *out) {
  memset(out, 0, sizeof *out);
  if (cfg->turns && (!cfg->sched_s || !cfg->count || !cfg->turn_body ||
                     cfg->body_count != cfg->count * cfg->turns))
    return ss_error(SS_ERR_INVALID, "multi-turn sessions need a start time and %zu prompts "
                    "per session and a body builder", cfg->turns);
  if (!cfg->turns && !cfg->body_count) return ss_error(SS_ERR_INVALID, "no request bodies");
  if (!cfg->sched_s && !cfg->count && !(cfg->duration_s > 0))
    return ss_error(SS_ERR_INVALID, "a run needs a request count or a duration");
  runner rn = {.cfg = cfg};
  int rc = SS_OK;
  rn.cap = cfg->turns ? cfg->count * cfg->turns : cfg->count;
  if (rn.cap && !(rn.results = calloc(rn.cap, sizeof *rn.results)))
    return ss_error(SS_ERR_NOMEM, "out of memory for %zu results", rn.cap);
  rn.multi = curl_multi_init();
  rn.headers = curl_slist_append(NULL, "Content-Type: application/json");
  rn.headers = curl_slist_append(rn.headers, "Accept: text/event-stream");
  /* No "Expect: 100-continue" round trip before large bodies. */
  rn.headers = curl_slist_append(rn.headers, "Expect:");
  char auth[1024];
  if (cfg->api_key && *cfg->api_key) {
    snprintf(auth, sizeof auth, "Authorization: Bearer %s", cfg->api_key);
    rn.headers = curl_slist_append(rn.headers, auth);
  }
  if (!rn.multi || !rn.headers) {
    rc = ss_error(SS_ERR_INTERNAL, "libcurl: cannot create the transfer set");
    goto done;
  }
  rn.t0 = ss_now_s();
  if (cfg->turns) {
    if ((rc = sessions_run(&rn))) goto done;
  } else for (;;) {
    double now_abs = ss_now_s(), now = now_abs - rn.t0;
    /* Send everything that is due and has a slot. */
    for (;;) {
      bool more = cfg->sched_s ? rn.count < cfg->count
                               : (cfg->count ? rn.count < cfg->count : true) &&
                                     !(cfg->duration_s > 0 && now >= cfg->duration_s);
      if (!more) break;
      double due = cfg->sched_s ? cfg->sched_s[rn.count] : 0;
      if (due > now) break;
      if (cfg->max_concurrency && rn.inflight >= cfg->max_concurrency) break;
      /* It could go once due and, under a concurrency cap, once a slot freed;
       * the time from then to now is the generator's own lag. */
      double ready = due;
      if (cfg->max_concurrency && rn.last_free > ready) ready = rn.last_free;
      size_t pi = rn.count % cfg->body_count;
      if ((rc = start_request(&rn, due, ready, now_abs, pi, cfg->bodies[pi], NULL, -1, -1, -1)))
        goto done;
      now_abs = ss_now_s();
      now = now_abs - rn.t0;
    }
    bool sending_done = cfg->sched_s ? rn.count >= cfg->count
                                     : (cfg->count && rn.count >= cfg->count) ||
                                           (cfg->duration_s > 0 && now >= cfg->duration_s);
    if (sending_done && rn.inflight == 0) break;

    if ((rc = transfers_step(&rn))) goto done;
    now = ss_now_s() - rn.t0;
    /* Wait for the next due send, socket activity or libcurl's own timer. */
    double wait = 1.0;
    bool slot_free = !cfg->max_concurrency || rn.inflight < cfg->max_concurrency;
    if (!sending_done && slot_free) {
      /* A completion may just have freed the slot the next request waits for. */
      double due = cfg->sched_s ? cfg->sched_s[rn.count] : 0;
      wait = fmin(wait, due - now);
    }
    if (!cfg->sched_s && cfg->duration_s > 0 && now < cfg->duration_s)
      wait = fmin(wait, cfg->duration_s - now);
    if ((rc = wait_for_activity(&rn, wait))) goto done;
  }
  if (cfg->progress) draw_progress(&rn, ss_now_s() - rn.t0, true);
  out->results = rn.results;
  out->count = rn.count;
  out->duration_s = rn.last_done;
  out->sessions = cfg->turns ? cfg->count : 0;
  out->turns = cfg->turns;
  out->sessions_cut = rn.sessions_cut;
  out->turns_unsent = rn.turns_unsent;
  rn.results = NULL;
done:
  for (size_t k = 0; k < rn.all_count; k++) {
    xfer *x = rn.all[k];
    curl_multi_remove_handle(rn.multi, x->easy);
    curl_easy_cleanup(x->easy);
    free(x->body);
    free(x->post);
    ss_lg_text_free(&x->text);
    free(x);
  }
  free(rn.all);
  if (rn.replies)
    for (size_t k = 0; k < rn.cfg->count * rn.cfg->turns; k++) ss_lg_text_free(&rn.replies[k]);
  free(rn.replies);
  free(rn.sessions);
  if (rn.results) {
    ss_lg_results_free(rn.results, rn.count);
    free(rn.results);
  }
  curl_slist_free_all(rn.headers);
  if (rn.multi) curl_multi_cleanup(rn.multi);
  return rc;
}

void ss_lg_run_free(ss_lg_run *r) {
  if (!r) return;
  ss_lg_results_free(r->results, r->count);
  free(r->results);
  r->results = NULL;
  r->count = 0;
}

/* ---- GET /v1/models ------------------------------------------------------------ */

typedef struct membuf {
  char *p;
  size_t n;
} membuf;

static size_t on_mem(char *p, size_t size, size_t nmemb, void *ud) {
  membuf *m = ud;
  size_t n = size * nmemb;
  if (m->n + n > ((size_t)16 << 20)) return 0; /* a model list is not this big */
  char *q = realloc(m->p, m->n + n + 1);
  if (!q) return 0;
  memcpy(q + m->n, p, n);
  m->p = q;
  m->n += n;
  m->p[m->n] = '\0';
  return n;
}

/* GET url into m; *status the HTTP status (0 if none). */
static int http_get(const char *url, const char *api_key, double timeout_s, membuf *m,
                    long *status) {
  char auth[1024], errbuf[CURL_ERROR_SIZE] = "";
  CURL *e = curl_easy_init();
  if (!e) return ss_error(SS_ERR_INTERNAL, "libcurl: cannot create a transfer");
  struct curl_slist *h = NULL;
  if (api_key && *api_key) {
    snprintf(auth, sizeof auth, "Authorization: Bearer %s", api_key);
    h = curl_slist_append(h, auth);
  }
  curl_easy_setopt(e, CURLOPT_URL, url);
  curl_easy_setopt(e, CURLOPT_HTTPHEADER, h);
  curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_mem);
  curl_easy_setopt(e, CURLOPT_WRITEDATA, m);
  curl_easy_setopt(e, CURLOPT_ERRORBUFFER, errbuf);
  curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)(timeout_s * 1e3));
  CURLcode c = curl_easy_perform(e);
  *status = 0;
  curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, status);
  curl_easy_cleanup(e);
  curl_slist_free_all(h);
  if (c != CURLE_OK)
    return ss_error(SS_ERR_COMM, "cannot reach %s: %s", url, errbuf[0] ? errbuf : curl_easy_strerror(c));
  if (*status < 200 || *status >= 300) {
    char msg[256];
    ss_lg_error_body_message(m->p, m->n, msg, sizeof msg);
    return ss_error(SS_ERR_COMM, "GET %s: HTTP %ld: %s", url, *status, msg);
  }
  return SS_OK;
}

int ss_lg_fetch_metrics(const char *base_url, const char *api_key, double timeout_s,
                        char **body, int *http_status) {
  *body = NULL;
  *http_status = 0;
  char url[2048];
  if ((size_t)snprintf(url, sizeof url, "%s/metrics", base_url) >= sizeof url)
    return ss_error(SS_ERR_INVALID, "the URL is too long");
  membuf m = {0};
  long status = 0;
  int rc = http_get(url, api_key, timeout_s, &m, &status);
  *http_status = (int)status;
  if (!rc) {
    char *s = malloc(m.n + 1);
    if (!s) {
      rc = ss_error(SS_ERR_NOMEM, "out of memory");
    } else {
      if (m.n) memcpy(s, m.p, m.n);
      s[m.n] = '\0';
      *body = s;
    }
  }
  free(m.p);
  return rc;
}

/* The sum over label sets of the samples named exactly `name`; *seen counts them. */
static double metric_sum(const char *text, const char *name, int *seen) {
  size_t n = strlen(name);
  double sum = 0;
  *seen = 0;
  for (const char *line = text; line && *line;) {
    const char *eol = strchr(line, '\n');
    if (strncmp(line, name, n) == 0 && (line[n] == ' ' || line[n] == '{')) {
      const char *v = line + n;
      if (*v == '{') {
        const char *close = strchr(v, '}');
        v = close && (!eol || close < eol) ? close + 1 : NULL;
      }
      char *end;
      double x = v ? strtod(v, &end) : NAN;
      if (v && end != v && isfinite(x)) {
        sum += x;
        (*seen)++;
      }
    }
    line = eol ? eol + 1 : NULL;
  }
  return sum;
}

void ss_lg_parse_cache_counters(const char *text, ss_lg_cache_counters *out) {
  static const char *const names[][3] = {
      {"shardserve", "shardserve:prefix_cache_queries_total", "shardserve:prefix_cache_hits_total"},
      {"vllm", "vllm:prefix_cache_queries_total", "vllm:prefix_cache_hits_total"},
      {"vllm", "vllm:prefix_cache_queries", "vllm:prefix_cache_hits"},
  };
  memset(out, 0, sizeof *out);
  for (size_t k = 0; k < sizeof names / sizeof names[0] && text; k++) {
    int sq, sh;
    double q = metric_sum(text, names[k][1], &sq), h = metric_sum(text, names[k][2], &sh);
    if (sq && sh) {
      *out = (ss_lg_cache_counters){.found = true, .family = names[k][0], .queries = q, .hits = h};
      return;
    }
  }
}

int ss_lg_fetch_first_model(const char *base_url, const char *api_key, double timeout_s,
                            char **model_id, int *http_status) {
  *model_id = NULL;
  *http_status = 0;
  char url[2048], auth[1024], errbuf[CURL_ERROR_SIZE] = "";
  if ((size_t)snprintf(url, sizeof url, "%s/v1/models", base_url) >= sizeof url)
    return ss_error(SS_ERR_INVALID, "the URL is too long");
  CURL *e = curl_easy_init();
  if (!e) return ss_error(SS_ERR_INTERNAL, "libcurl: cannot create a transfer");
  struct curl_slist *h = NULL;
  if (api_key && *api_key) {
    snprintf(auth, sizeof auth, "Authorization: Bearer %s", api_key);
    h = curl_slist_append(h, auth);
  }
  membuf m = {0};
  curl_easy_setopt(e, CURLOPT_URL, url);
  curl_easy_setopt(e, CURLOPT_HTTPHEADER, h);
  curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_mem);
  curl_easy_setopt(e, CURLOPT_WRITEDATA, &m);
  curl_easy_setopt(e, CURLOPT_ERRORBUFFER, errbuf);
  curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)(timeout_s * 1e3));
  CURLcode c = curl_easy_perform(e);
  long status = 0;
  curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &status);
  curl_easy_cleanup(e);
  curl_slist_free_all(h);
  *http_status = (int)status;
  int rc = SS_OK;
  if (c != CURLE_OK) {
    rc = ss_error(SS_ERR_COMM, "cannot reach %s: %s", url, errbuf[0] ? errbuf : curl_easy_strerror(c));
  } else if (status < 200 || status >= 300) {
    char msg[256];
    ss_lg_error_body_message(m.p, m.n, msg, sizeof msg);
    rc = ss_error(SS_ERR_COMM, "GET %s: HTTP %ld: %s", url, status, msg);
  } else {
    json_error_t jerr;
    json_t *root = json_loadb(m.p ? m.p : "", m.n, 0, &jerr);
    json_t *id = json_object_get(json_array_get(json_object_get(root, "data"), 0), "id");
    if (!json_is_string(id))
      rc = ss_error(SS_ERR_COMM, "GET %s: the reply lists no model (expected {\"data\": "
                    "[{\"id\": ...}]}); pass --model", url);
    else if (!(*model_id = strdup(json_string_value(id))))
      rc = ss_error(SS_ERR_NOMEM, "out of memory");
    json_decref(root);
  }
  free(m.p);
  return rc;
}
