/* The HTTP/1.1 server of http.h: connections, request parsing, whole and
 * streamed responses, all on the loop thread. */
#include "runtime/server/http.h"

#include <http_parser.h>
#include <stdio.h>
#include <sys/random.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/base/metrics.h"
#include "runtime/base/status.h"

#define MAX_URL_NBYTES 8192
#define MAX_HEADER_VALUE_NBYTES 8192
/* After an answer the server gives on its own, the client's input is read and
 * dropped for this long before the close, so that the answer is not lost to
 * the reset a close with unread input sends. */
#define LINGER_MS 2000
/* Connections lingering or being refused at once; past this a refused
 * connection is closed at once (a flood gets resets, not memory). */
#define MAX_LINGERING 1024
/* A buffer larger than this is freed between requests, not kept. */
#define KEEP_BUFFER_NBYTES 65536

typedef enum timer_mode {
  TIMER_NONE = 0,
  TIMER_IDLE,   /* keep-alive, waiting for the next request */
  TIMER_HEADER, /* the request line and headers must be complete */
  TIMER_BODY,   /* the body must be complete */
  TIMER_STALL,  /* the output is over the high-water mark */
  TIMER_LINGER, /* draining input after a half-close */
} timer_mode;

struct ss_http_server {
  uv_loop_t *loop;
  uv_tcp_t listener;
  bool listening, closing;
  ss_http_limits lim;
  ss_http_callbacks cb;
  ss_http_conn *conns; /* doubly linked */
  int n_conns;         /* admitted connections (not lingering or refused) */
  int n_lingering;
  int port;
  int open_handles;    /* the listener and every connection's two handles */
  size_t buffered;     /* input buffer capacity over all connections */
  ss_http_stats stats;
};

struct ss_http_conn {
  uv_tcp_t tcp;
  uv_timer_t timer;
  timer_mode timer_mode;
  uv_shutdown_t shutdown;
  ss_http_server *srv;
  struct sockaddr_storage peer;
  bool counted;     /* in srv->n_conns */
  bool lingering;   /* half-closed, dropping input until EOF or the timer */
  bool linger_after; /* linger instead of closing once the answer is written */
  ss_http_conn *prev, *next;
  http_parser parser;
  /* the request being parsed */
  ss_strbuf url, field, value, body;
  bool in_value;
  char *auth, *ctype, *expect;
  int reject_status; /* refuse the request (413, 417, 505) once parsing pauses */
  char reject_msg[160];
  /* the bare-LF check over the request line and headers */
  size_t scan_off;
  bool scan_cr;
  int scan_crlf;     /* consecutive CRLF pairs seen */
  bool scan_done;
  bool request_ready;
  bool keep_alive;
  /* the response */
  bool busy;        /* a request is being answered */
  bool streaming;
  bool close_after; /* close once the writes so far are done */
  bool closing;
  int writes_pending;
  size_t out_nbytes; /* written and not yet taken by the socket */
  bool stalled;      /* on_congestion said congested, and not yet the end of it */
  bool write_timed_out; /* closed by the stall timer */
  size_t accounted;  /* this connection's share of srv->buffered */
  int handles_open;
  ss_strbuf pending; /* bytes received while busy, parsed after the response */
  bool processing;
  void *user;
  /* the access log's line for the request being answered */
  ss_http_log log;
  uint64_t t_dispatch;  /* uv_hrtime at dispatch */
  bool dispatched;
};

typedef struct write_req {
  uv_write_t req;
  ss_http_conn *c;
  size_t len;
  char data[];
} write_req;

static void conn_close(ss_http_conn *c);
static void process_input(ss_http_conn *c);

/* ------------------------------------------------------------------------ */
/* The access log                                                             */

/* Request ids: xorshift64* from a random seed; ids need to be unlikely to
 * repeat, not secret. */
static uint64_t next_request_id(void) {
  static uint64_t state;
  if (!state) {
    if (getrandom(&state, sizeof state, 0) != (ssize_t)sizeof state) state = uv_hrtime();
    state |= 1;
  }
  state ^= state >> 12;
  state ^= state << 25;
  state ^= state >> 27;
  return state * 0x2545F4914F6CDD1DULL;
}

/* The request's end: its line goes to the owner's log. */
static void log_request(ss_http_conn *c, int status) {
  ss_http_server *s = c->srv;
  if (!s->cb.on_log) return;
  ss_http_log l = c->log;
  if (!c->dispatched) {
    l.id = next_request_id();
    l.method = l.path = "-";
    l.prompt_tokens = l.completion_tokens = -1;
    l.queue_ms = l.ttft_ms = -1;
  }
  l.status = status;
  l.write_timeout = status == 0 && c->write_timed_out;
  l.total_ms = c->dispatched ? (double)(uv_hrtime() - c->t_dispatch) / 1e6 : 0;
  s->cb.on_log(s->cb.user, &l);
  c->dispatched = false;
}

void ss_http_conn_set_log(ss_http_conn *c, int32_t prompt_tokens, int32_t completion_tokens,
                          double queue_ms, double ttft_ms) {
  c->log.prompt_tokens = prompt_tokens;
  c->log.completion_tokens = completion_tokens;
  c->log.queue_ms = queue_ms;
  c->log.ttft_ms = ttft_ms;
}

const char *ss_http_reason(int status) {
  switch (status) {
  case 200: return "OK";
  case 400: return "Bad Request";
  case 401: return "Unauthorized";
  case 404: return "Not Found";
  case 405: return "Method Not Allowed";
  case 408: return "Request Timeout";
  case 411: return "Length Required";
  case 413: return "Payload Too Large";
  case 414: return "URI Too Long";
  case 415: return "Unsupported Media Type";
  case 417: return "Expectation Failed";
  case 429: return "Too Many Requests";
  case 431: return "Request Header Fields Too Large";
  case 500: return "Internal Server Error";
  case 501: return "Not Implemented";
  case 503: return "Service Unavailable";
  case 505: return "HTTP Version Not Supported";
  default: return "Unknown";
  }
}

/* ------------------------------------------------------------------------ */
/* Handles and lifetime                                                       */

static void server_maybe_free(ss_http_server *s) {
  if (s->closing && s->open_handles == 0) free(s);
}

/* Brings srv->buffered up to date with the connection's buffers. */
static void conn_account(ss_http_conn *c) {
  size_t now = c->pending.cap + c->body.cap;
  c->srv->buffered = c->srv->buffered - c->accounted + now;
  c->accounted = now;
}

static void conn_reset_request(ss_http_conn *c) {
  c->url.len = c->field.len = c->value.len = c->body.len = 0;
  if (c->url.p) c->url.p[0] = 0;
  if (c->body.cap > KEEP_BUFFER_NBYTES) ss_strbuf_free(&c->body);
  if (c->body.p) c->body.p[0] = 0;
  c->in_value = false;
  free(c->auth);
  free(c->ctype);
  free(c->expect);
  c->auth = c->ctype = c->expect = NULL;
  c->reject_status = 0;
  c->reject_msg[0] = 0;
  c->request_ready = false;
  conn_account(c);
}

static void on_handle_closed(uv_handle_t *h) {
  ss_http_conn *c = h->data;
  ss_http_server *s = c->srv;
  s->open_handles--;
  if (--c->handles_open > 0) return;
  conn_reset_request(c);
  ss_strbuf_free(&c->url);
  ss_strbuf_free(&c->field);
  ss_strbuf_free(&c->value);
  ss_strbuf_free(&c->body);
  ss_strbuf_free(&c->pending);
  conn_account(c);
  free(c);
  server_maybe_free(s);
}

static void conn_close(ss_http_conn *c) {
  if (c->closing) return;
  c->closing = true;
  ss_http_server *s = c->srv;
  if (c->prev) c->prev->next = c->next;
  else s->conns = c->next;
  if (c->next) c->next->prev = c->prev;
  if (c->counted) s->n_conns--;
  else s->n_lingering--;
  c->counted = false;
  if (c->busy) log_request(c, 0);
  if (c->busy && c->user && s->cb.on_abort) s->cb.on_abort(s->cb.user, c->user);
  c->user = NULL;
  c->busy = false;
  uv_timer_stop(&c->timer);
  uv_close((uv_handle_t *)&c->timer, on_handle_closed);
  uv_close((uv_handle_t *)&c->tcp, on_handle_closed);
}

static void respond_and_close(ss_http_conn *c, int status, const char *extra_headers,
                              const char *message);

static void on_timer(uv_timer_t *t) {
  ss_http_conn *c = t->data;
  const ss_http_limits *l = &c->srv->lim;
  timer_mode mode = c->timer_mode;
  c->timer_mode = TIMER_NONE;
  char msg[200];
  switch (mode) {
  case TIMER_HEADER:
  case TIMER_BODY:
    if (c->busy || c->close_after || c->lingering) return; /* already answered */
    if (mode == TIMER_HEADER) c->srv->stats.header_timeouts++;
    else c->srv->stats.body_timeouts++;
    snprintf(msg, sizeof msg, "the request %s did not arrive within %g s (--%s-timeout)",
             mode == TIMER_HEADER ? "line and headers" : "body",
             mode == TIMER_HEADER ? l->header_timeout_s : l->body_timeout_s,
             mode == TIMER_HEADER ? "header" : "body");
    respond_and_close(c, 408, "", msg);
    return;
  case TIMER_STALL:
    /* The client has not taken its output for write_timeout_s: it goes, and
     * with it the request (on_abort). */
    c->srv->stats.write_timeouts++;
    c->write_timed_out = true;
    conn_close(c);
    return;
  case TIMER_IDLE:
    if (!c->busy) conn_close(c);
    return;
  case TIMER_LINGER:
    conn_close(c);
    return;
  case TIMER_NONE: return;
  }
}

static void arm_timer(ss_http_conn *c, timer_mode mode) {
  if (c->closing) return;
  const ss_http_limits *l = &c->srv->lim;
  double s = mode == TIMER_IDLE     ? l->idle_timeout_s
             : mode == TIMER_HEADER ? l->header_timeout_s
             : mode == TIMER_BODY   ? l->body_timeout_s
             : mode == TIMER_STALL  ? l->write_timeout_s
                                    : LINGER_MS / 1000.0;
  if (mode == TIMER_NONE) {
    uv_timer_stop(&c->timer);
    c->timer_mode = TIMER_NONE;
    return;
  }
  uint64_t ms = (uint64_t)(s * 1000.0);
  c->timer_mode = mode;
  uv_timer_start(&c->timer, on_timer, ms ? ms : 1, 0);
}

/* ------------------------------------------------------------------------ */
/* Closing after an answer of the server's own                                */

static void on_shutdown(uv_shutdown_t *req, int status) {
  (void)req;
  (void)status; /* UV_ECANCELED when the connection closed first: nothing to do */
}

/* Half-closes and drops the client's input until it closes or the linger
 * timer ends; the connection no longer counts against the cap. */
static void conn_linger(ss_http_conn *c) {
  ss_http_server *s = c->srv;
  if (c->closing || c->lingering) return;
  if (c->counted) {
    c->counted = false;
    s->n_conns--;
    s->n_lingering++;
  }
  if (s->n_lingering > MAX_LINGERING ||
      uv_shutdown(&c->shutdown, (uv_stream_t *)&c->tcp, on_shutdown) < 0) {
    conn_close(c);
    return;
  }
  c->lingering = true;
  c->pending.len = 0;
  ss_strbuf_free(&c->pending);
  conn_account(c);
  arm_timer(c, TIMER_LINGER);
}

/* The answer is written and the connection is to end. */
static void conn_finish(ss_http_conn *c) {
  if (c->linger_after) conn_linger(c);
  else conn_close(c);
}

/* ------------------------------------------------------------------------ */
/* Writing                                                                    */

/* Tells the owner of a streamed response when its output goes over the mark,
 * and when it is back down to half of it (not at the mark itself, so that a
 * client reading about as fast as the stream is made does not flip it at every
 * piece). */
static void report_congestion(ss_http_conn *c) {
  ss_http_server *s = c->srv;
  if (!c->busy || !c->streaming || !c->user) {
    c->stalled = false; /* a whole response, or none: nothing to pause */
    return;
  }
  bool stalled = c->stalled;
  if (!stalled && ss_http_conn_congested(c)) stalled = true;
  else if (stalled && c->out_nbytes <= s->lim.output_high_water_nbytes / 2) stalled = false;
  if (stalled == c->stalled) return;
  c->stalled = stalled;
  if (s->cb.on_congestion) s->cb.on_congestion(s->cb.user, c->user, stalled);
}

static void on_written(uv_write_t *req, int status) {
  write_req *w = (write_req *)req;
  ss_http_conn *c = w->c;
  const bool was_congested = ss_http_conn_congested(c);
  c->out_nbytes -= w->len;
  free(w);
  c->writes_pending--;
  if (status < 0) {
    conn_close(c);
    return;
  }
  if (c->close_after && c->writes_pending == 0) {
    conn_finish(c);
    return;
  }
  report_congestion(c);
  /* The stall clock runs while the output is over the mark or its stream is
   * paused (between the mark and half of it a paused stream writes nothing,
   * so it would otherwise wait there for ever). */
  if (c->timer_mode == TIMER_STALL && !c->stalled && !ss_http_conn_congested(c))
    arm_timer(c, TIMER_NONE);
  if (was_congested && !ss_http_conn_congested(c)) {
    /* The client reads again: requests it pipelined may be parsed. */
    if (!c->busy && !c->close_after) {
      arm_timer(c, c->pending.len ? TIMER_HEADER : TIMER_IDLE);
      process_input(c);
    }
  }
}

size_t ss_http_conn_queued_nbytes(const ss_http_conn *c) { return c->out_nbytes; }

bool ss_http_conn_congested(const ss_http_conn *c) {
  return c->out_nbytes > c->srv->lim.output_high_water_nbytes;
}

static void conn_write(ss_http_conn *c, const char *head, size_t head_len, const char *data,
                       size_t len, const char *tail, size_t tail_len) {
  if (c->closing) return;
  write_req *w = malloc(sizeof *w + head_len + len + tail_len);
  if (!w) {
    conn_close(c);
    return;
  }
  memcpy(w->data, head, head_len);
  if (len) memcpy(w->data + head_len, data, len);
  if (tail_len) memcpy(w->data + head_len + len, tail, tail_len);
  w->c = c;
  w->len = head_len + len + tail_len;
  uv_buf_t buf = uv_buf_init(w->data, (unsigned)w->len);
  int rc = uv_write(&w->req, (uv_stream_t *)&c->tcp, &buf, 1, on_written);
  if (rc < 0) {
    free(w);
    conn_close(c);
    return;
  }
  c->writes_pending++;
  c->out_nbytes += w->len;
  /* A response the client does not read: the clock runs while it stays over
   * the mark. */
  if (ss_http_conn_congested(c) && c->timer_mode != TIMER_STALL) arm_timer(c, TIMER_STALL);
  report_congestion(c);
}

/* The response is complete: the next pipelined request may go. */
static void response_done(ss_http_conn *c, int status) {
  log_request(c, status);
  c->busy = false;
  c->streaming = false;
  c->user = NULL;
  if (c->closing) return;
  if (!c->keep_alive) {
    c->close_after = true;
    if (c->writes_pending == 0) conn_finish(c);
    return;
  }
  /* A client that has not read its response: the stall clock (it may have
   * run since the response was written) decides, not the idle one. */
  if (ss_http_conn_congested(c)) {
    if (c->timer_mode != TIMER_STALL) arm_timer(c, TIMER_STALL);
    return;
  }
  arm_timer(c, c->pending.len ? TIMER_HEADER : TIMER_IDLE);
  process_input(c);
}

void ss_http_conn_set_user(ss_http_conn *c, void *user) { c->user = user; }

void ss_http_respond(ss_http_conn *c, int status, const char *content_type,
                     const char *extra_headers, const char *body, size_t len) {
  if (c->closing || !c->busy || c->streaming) return;
  char head[1024];
  int n = snprintf(head, sizeof head,
                   "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
                   "Connection: %s\r\n%s\r\n",
                   status, ss_http_reason(status), content_type, len,
                   c->keep_alive ? "keep-alive" : "close", extra_headers ? extra_headers : "");
  if (n < 0 || (size_t)n >= sizeof head) n = 0;
  conn_write(c, head, (size_t)n, body, len, NULL, 0);
  response_done(c, status);
}

void ss_http_stream_begin(ss_http_conn *c, int status, const char *content_type) {
  if (c->closing || !c->busy || c->streaming) return;
  char head[512];
  int n = snprintf(head, sizeof head,
                   "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nCache-Control: no-cache\r\n"
                   "Transfer-Encoding: chunked\r\nConnection: %s\r\n\r\n",
                   status, ss_http_reason(status), content_type,
                   c->keep_alive ? "keep-alive" : "close");
  c->streaming = true;
  c->log.status = status;
  conn_write(c, head, (size_t)n, NULL, 0, NULL, 0);
}

void ss_http_stream_write(ss_http_conn *c, const char *data, size_t len) {
  if (c->closing || !c->streaming || len == 0) return;
  char head[32];
  int n = snprintf(head, sizeof head, "%zx\r\n", len);
  conn_write(c, head, (size_t)n, data, len, "\r\n", 2);
}

void ss_http_stream_end(ss_http_conn *c) {
  if (c->closing || !c->streaming) return;
  conn_write(c, "0\r\n\r\n", 5, NULL, 0, NULL, 0);
  response_done(c, c->log.status);
}

/* A response decided by the server itself (bad request line, too large, a
 * deadline, a cap): the connection closes after it, since the rest of the
 * input cannot be trusted, but only after a half-close and a drain. */
static void respond_and_close(ss_http_conn *c, int status, const char *extra_headers,
                              const char *message) {
  char body[512];
  int n = snprintf(body, sizeof body,
                   "{\"error\":{\"message\":\"%s\",\"type\":\"%s\","
                   "\"param\":null,\"code\":null}}", message,
                   status == 503 || status == 408 ? "server_error" : "invalid_request_error");
  if (n < 0 || (size_t)n >= sizeof body) n = 0;
  if (status != 503 && status != 408) c->srv->stats.bad_requests++;
  arm_timer(c, TIMER_NONE); /* no deadline answers a second time */
  c->busy = true;
  c->keep_alive = false;
  c->linger_after = true;
  ss_http_respond(c, status, "application/json", extra_headers, body, (size_t)n);
}

/* ------------------------------------------------------------------------ */
/* Parsing                                                                    */

static ss_http_conn *conn_of(http_parser *p) { return p->data; }

static int on_message_begin(http_parser *p) {
  conn_reset_request(conn_of(p));
  return 0;
}

static int on_url(http_parser *p, const char *at, size_t len) {
  ss_http_conn *c = conn_of(p);
  if (c->url.len + len > MAX_URL_NBYTES) return 1;
  ss_strbuf_append(&c->url, at, len);
  return 0;
}

static void header_done(ss_http_conn *c) {
  if (!c->in_value) return;
  c->in_value = false;
  const char *f = c->field.p ? c->field.p : "";
  const char *v = c->value.p ? c->value.p : "";
  if (strcasecmp(f, "authorization") == 0 && !c->auth) c->auth = strdup(v);
  else if (strcasecmp(f, "content-type") == 0 && !c->ctype) c->ctype = strdup(v);
  else if (strcasecmp(f, "expect") == 0 && !c->expect) c->expect = strdup(v);
  c->field.len = c->value.len = 0;
  if (c->field.p) c->field.p[0] = 0;
  if (c->value.p) c->value.p[0] = 0;
}

static int on_header_field(http_parser *p, const char *at, size_t len) {
  ss_http_conn *c = conn_of(p);
  header_done(c);
  if (c->field.len + len > 256) return 1;
  ss_strbuf_append(&c->field, at, len);
  return 0;
}

static int on_header_value(http_parser *p, const char *at, size_t len) {
  ss_http_conn *c = conn_of(p);
  c->in_value = true;
  if (c->value.len + len > MAX_HEADER_VALUE_NBYTES) return 1;
  ss_strbuf_append(&c->value, at, len);
  return 0;
}

static void reject(ss_http_conn *c, http_parser *p, int status, const char *msg) {
  if (!c->reject_status) {
    c->reject_status = status;
    snprintf(c->reject_msg, sizeof c->reject_msg, "%s", msg);
  }
  http_parser_pause(p, 1);
}

static void reject_too_large(ss_http_conn *c, http_parser *p) {
  char msg[160];
  snprintf(msg, sizeof msg, "the request body is larger than the limit of %zu bytes",
           c->srv->lim.max_body_nbytes);
  reject(c, p, 413, msg);
}

static int on_headers_complete(http_parser *p) {
  ss_http_conn *c = conn_of(p);
  header_done(c);
  /* Without a version http_parser reads the line as HTTP/0.9. */
  if (p->http_major != 1 || p->http_minor > 1) {
    reject(c, p, 505, "only HTTP/1.0 and HTTP/1.1 are served (the request line must end in "
                      "HTTP/1.0 or HTTP/1.1)");
    return 0;
  }
  const bool has_body = (p->flags & F_CHUNKED) || ((p->flags & F_CONTENTLENGTH) &&
                                                   p->content_length > 0);
  /* A declared body over the limit is refused before it is read. */
  if ((p->flags & F_CONTENTLENGTH) && p->content_length > c->srv->lim.max_body_nbytes) {
    reject_too_large(c, p);
    return 0;
  }
  if (c->expect) {
    if (strcasecmp(c->expect, "100-continue") != 0) {
      reject(c, p, 417, "the Expect header's only accepted value is 100-continue");
      return 0;
    }
    /* The client waits for this before it sends the body (RFC 9110 10.1.1). */
    if (has_body && p->http_minor == 1) {
      static const char k_continue[] = "HTTP/1.1 100 Continue\r\n\r\n";
      conn_write(c, k_continue, sizeof k_continue - 1, NULL, 0, NULL, 0);
    }
  }
  arm_timer(c, TIMER_BODY);
  return 0;
}

static int on_body(http_parser *p, const char *at, size_t len) {
  ss_http_conn *c = conn_of(p);
  if (c->body.len + len > c->srv->lim.max_body_nbytes) {
    reject_too_large(c, p);
    return 0;
  }
  ss_strbuf_append(&c->body, at, len);
  return 0;
}

static int on_message_complete(http_parser *p) {
  ss_http_conn *c = conn_of(p);
  c->request_ready = true;
  c->keep_alive = http_should_keep_alive(p) != 0;
  /* The next request's head is checked from its first byte. */
  c->scan_done = false;
  c->scan_cr = false;
  c->scan_crlf = 0;
  c->scan_off = 0;
  http_parser_pause(p, 1);
  return 0;
}

static const http_parser_settings k_settings = {
    .on_message_begin = on_message_begin,
    .on_url = on_url,
    .on_header_field = on_header_field,
    .on_header_value = on_header_value,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

static void dispatch(ss_http_conn *c) {
  ss_http_server *s = c->srv;
  if (c->url.failed || c->body.failed) {
    respond_and_close(c, 500, "", "out of memory");
    return;
  }
  /* Path without the query string. */
  char *url = c->url.p ? c->url.p : (char *)"/";
  char *q = strchr(url, '?');
  if (q) *q = 0;
  ss_http_request req = {.method = http_method_str((enum http_method)c->parser.method),
                         .path = url, .authorization = c->auth, .content_type = c->ctype,
                         .body = c->body.p ? c->body.p : "", .body_len = c->body.len};
  c->busy = true;
  c->stalled = false;
  c->dispatched = true;
  c->t_dispatch = uv_hrtime();
  c->log = (ss_http_log){.id = next_request_id(), .method = req.method, .path = url,
                         .prompt_tokens = -1, .completion_tokens = -1, .queue_ms = -1,
                         .ttft_ms = -1};
  arm_timer(c, TIMER_NONE);
  s->cb.on_request(s->cb.user, c, &req);
}

/* Libhttp-parser, built without its strict mode, takes a bare LF as a line
 * end; RFC 9112 2.2 lets a server refuse it, and this server does, over the
 * request line and headers (a body may hold any bytes).  Returns false at a
 * bare LF; scans on from where the last call stopped. */
static bool scan_head(ss_http_conn *c) {
  while (!c->scan_done && c->scan_off < c->pending.len) {
    char ch = c->pending.p[c->scan_off++];
    if (ch == '\n') {
      if (!c->scan_cr) return false;
      if (++c->scan_crlf == 2) c->scan_done = true;
    } else if (ch != '\r') {
      c->scan_crlf = 0;
    }
    c->scan_cr = ch == '\r';
  }
  return true;
}

/* Parses what has arrived while no response is pending and the client takes
 * its output (requests pipelined behind an unread response wait). */
static void process_input(ss_http_conn *c) {
  if (c->processing) return;
  c->processing = true;
  while (!c->closing && !c->busy && !c->close_after && !c->lingering && c->pending.len > 0 &&
         !ss_http_conn_congested(c)) {
    if (!scan_head(c)) {
      respond_and_close(c, 400, "", "malformed HTTP request: a line ends in a bare LF "
                                    "(CRLF is required)");
      break;
    }
    if (HTTP_PARSER_ERRNO(&c->parser) == HPE_PAUSED) http_parser_pause(&c->parser, 0);
    /* Bytes past the checked head are parsed only once the head is whole. */
    size_t avail = c->scan_done ? c->pending.len : c->scan_off;
    size_t n = http_parser_execute(&c->parser, &k_settings, c->pending.p, avail);
    enum http_errno err = HTTP_PARSER_ERRNO(&c->parser);
    memmove(c->pending.p, c->pending.p + n, c->pending.len - n);
    c->pending.len -= n;
    c->pending.p[c->pending.len] = 0;
    c->scan_off = c->scan_off > n ? c->scan_off - n : 0;
    if (err == HPE_PAUSED) {
      if (c->reject_status) respond_and_close(c, c->reject_status, "", c->reject_msg);
      else if (c->request_ready) dispatch(c);
      continue;
    }
    if (err != HPE_OK) {
      int status = err == HPE_CB_url ? 414 : err == HPE_CB_header_field ||
                   err == HPE_CB_header_value || err == HPE_HEADER_OVERFLOW ? 431 : 400;
      char msg[200];
      snprintf(msg, sizeof msg, "malformed HTTP request: %s", http_errno_name(err));
      respond_and_close(c, status, "", msg);
      break;
    }
    if (n == avail && !c->scan_done) break; /* the head is incomplete: wait for more */
    if (n == avail && c->pending.len == 0) break;
  }
  c->processing = false;
  if (c->closing) return;
  if (c->pending.len == 0 && c->pending.cap > KEEP_BUFFER_NBYTES) ss_strbuf_free(&c->pending);
  conn_account(c);
}

/* ------------------------------------------------------------------------ */
/* Accepting and reading                                                      */

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  (void)h;
  static char slab[65536]; /* one loop thread: the data is consumed before the next read */
  (void)suggested;
  *buf = uv_buf_init(slab, sizeof slab);
}

static void on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf) {
  ss_http_conn *c = st->data;
  if (nread < 0) {
    /* EOF or error: a client that leaves mid-response aborts its request. */
    conn_close(c);
    return;
  }
  if (nread == 0 || c->closing || c->lingering) return; /* lingering: dropped */
  ss_http_server *s = c->srv;
  if (c->pending.len + (size_t)nread > s->lim.max_body_nbytes + (1u << 20)) {
    if (c->busy || ss_http_conn_congested(c)) {
      conn_close(c); /* a client flooding a busy connection */
      return;
    }
  }
  /* The global cap counts what the buffer would grow to. */
  size_t need = c->pending.len + (size_t)nread + 1;
  if (need > c->pending.cap && s->buffered - c->pending.cap + 2 * need > s->lim.max_buffered_nbytes) {
    s->stats.refused_buffer++;
    if (c->busy) {
      conn_close(c);
      return;
    }
    char msg[200];
    snprintf(msg, sizeof msg, "the server is buffering its limit of %zu bytes of requests "
             "(--max-buffered-bytes); retry later", s->lim.max_buffered_nbytes);
    respond_and_close(c, 503, "Retry-After: 1\r\n", msg);
    return;
  }
  ss_strbuf_append(&c->pending, buf->base, (size_t)nread);
  conn_account(c);
  if (c->pending.failed) {
    conn_close(c);
    return;
  }
  /* The header deadline runs from a request's first byte, however slowly
   * the rest trickles in. */
  if (!c->busy && c->timer_mode == TIMER_IDLE) arm_timer(c, TIMER_HEADER);
  process_input(c);
}

static bool same_address(const struct sockaddr_storage *a, const struct sockaddr_storage *b) {
  if (a->ss_family != b->ss_family) return false;
  if (a->ss_family == AF_INET)
    return memcmp(&((const struct sockaddr_in *)a)->sin_addr,
                  &((const struct sockaddr_in *)b)->sin_addr, sizeof(struct in_addr)) == 0;
  if (a->ss_family == AF_INET6)
    return memcmp(&((const struct sockaddr_in6 *)a)->sin6_addr,
                  &((const struct sockaddr_in6 *)b)->sin6_addr, sizeof(struct in6_addr)) == 0;
  return false;
}

static int connections_from(const ss_http_server *s, const ss_http_conn *c) {
  int n = 0;
  for (const ss_http_conn *o = s->conns; o; o = o->next)
    if (o != c && o->counted && same_address(&o->peer, &c->peer)) n++;
  return n;
}

static void on_connection(uv_stream_t *ls, int status) {
  ss_http_server *s = ls->data;
  if (status < 0) return;
  ss_http_conn *c = calloc(1, sizeof *c);
  if (!c) return;
  c->srv = s;
  uv_tcp_init(s->loop, &c->tcp);
  uv_timer_init(s->loop, &c->timer);
  c->tcp.data = c->timer.data = c;
  c->handles_open = 2;
  s->open_handles += 2;
  c->next = s->conns;
  if (s->conns) s->conns->prev = c;
  s->conns = c;
  s->n_lingering++; /* until admitted */
  if (uv_accept(ls, (uv_stream_t *)&c->tcp) < 0) {
    conn_close(c);
    return;
  }
  int len = sizeof c->peer;
  if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&c->peer, &len) < 0)
    memset(&c->peer, 0, sizeof c->peer);
  uv_tcp_nodelay(&c->tcp, 1); /* SSE tokens go out as they are written */
  /* The kernel's send buffer, autotuned, grows to megabytes for a client that
   * does not read; held to the mark (Linux doubles it for its bookkeeping), a
   * paused stream's unsent output, kernel and queue together, stays within
   * about three times the mark. */
  int sndbuf = (int)(s->lim.output_high_water_nbytes < (1u << 30)
                         ? s->lim.output_high_water_nbytes : (1u << 30));
  uv_send_buffer_size((uv_handle_t *)&c->tcp, &sndbuf);
  http_parser_init(&c->parser, HTTP_REQUEST);
  c->parser.data = c;
  uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
  /* Over a cap the client is told so (503 with Retry-After) rather than
   * reset, and its input drained for a moment so that it can read it. */
  const char *why = NULL;
  int limit = 0;
  if (s->n_conns >= s->lim.max_connections) {
    why = "--max-connections";
    limit = s->lim.max_connections;
  } else if (s->lim.max_connections_per_client > 0 &&
             connections_from(s, c) >= s->lim.max_connections_per_client) {
    why = "--max-connections-per-client";
    limit = s->lim.max_connections_per_client;
  }
  if (why) {
    s->stats.refused_connections++;
    if (s->n_lingering > MAX_LINGERING) {
      conn_close(c);
      return;
    }
    char msg[200];
    snprintf(msg, sizeof msg, "the server has its limit of %d connections open (%s); retry later",
             limit, why);
    respond_and_close(c, 503, "Retry-After: 1\r\n", msg);
    return;
  }
  s->n_lingering--;
  s->n_conns++;
  c->counted = true;
  /* The header deadline counts from the accept: an idle new connection is a
   * request that is late. */
  arm_timer(c, TIMER_HEADER);
}

static void on_listener_closed(uv_handle_t *h) {
  ss_http_server *s = h->data;
  s->open_handles--;
  server_maybe_free(s);
}

int ss_http_server_start(uv_loop_t *loop, const char *host, int port, const ss_http_limits *lim,
                         const ss_http_callbacks *cb, ss_http_server **out) {
  *out = NULL;
  ss_http_server *s = calloc(1, sizeof *s);
  if (!s) return ss_error(SS_ERR_NOMEM, "out of memory");
  s->loop = loop;
  s->cb = *cb;
  s->lim = *lim;
  if (!s->lim.max_body_nbytes) s->lim.max_body_nbytes = 4u << 20;
  if (s->lim.idle_timeout_s <= 0) s->lim.idle_timeout_s = 60;
  if (s->lim.max_connections <= 0) s->lim.max_connections = 4096;
  if (s->lim.header_timeout_s <= 0) s->lim.header_timeout_s = 10;
  if (s->lim.body_timeout_s <= 0) s->lim.body_timeout_s = 60;
  if (s->lim.write_timeout_s <= 0) s->lim.write_timeout_s = 30;
  if (!s->lim.output_high_water_nbytes) s->lim.output_high_water_nbytes = 1u << 20;
  if (!s->lim.max_buffered_nbytes) s->lim.max_buffered_nbytes = (size_t)256 << 20;
  struct sockaddr_storage addr;
  int rc = strchr(host, ':') ? uv_ip6_addr(host, port, (struct sockaddr_in6 *)&addr)
                             : uv_ip4_addr(host, port, (struct sockaddr_in *)&addr);
  if (rc < 0) {
    free(s);
    return ss_error(SS_ERR_INVALID, "--host '%s' is not an IPv4 or IPv6 address: %s", host,
                    uv_strerror(rc));
  }
  uv_tcp_init(loop, &s->listener);
  s->listener.data = s;
  s->open_handles = 1;
  if ((rc = uv_tcp_bind(&s->listener, (const struct sockaddr *)&addr, 0)) < 0 ||
      (rc = uv_listen((uv_stream_t *)&s->listener, 511, on_connection)) < 0) {
    s->closing = true;
    uv_close((uv_handle_t *)&s->listener, on_listener_closed);
    return ss_error(SS_ERR_IO, "cannot listen on %s:%d: %s", host, port, uv_strerror(rc));
  }
  struct sockaddr_storage bound;
  int len = sizeof bound;
  uv_tcp_getsockname(&s->listener, (struct sockaddr *)&bound, &len);
  s->port = bound.ss_family == AF_INET6 ? ntohs(((struct sockaddr_in6 *)&bound)->sin6_port)
                                        : ntohs(((struct sockaddr_in *)&bound)->sin_port);
  s->listening = true;
  *out = s;
  return SS_OK;
}

int ss_http_server_port(const ss_http_server *s) { return s->port; }

ss_http_stats ss_http_server_stats(const ss_http_server *s) {
  ss_http_stats st = s->stats;
  st.open_connections = s->n_conns;
  st.buffered_nbytes = s->buffered;
  return st;
}

void ss_http_server_stop_listening(ss_http_server *s) {
  if (!s->listening) return;
  s->listening = false;
  uv_close((uv_handle_t *)&s->listener, on_listener_closed);
}

void ss_http_server_close(ss_http_server *s) {
  ss_http_server_stop_listening(s);
  s->closing = true;
  while (s->conns) conn_close(s->conns);
  server_maybe_free(s);
}
