/* The HTTP/1.1 server of http.h: connections, request parsing, whole and
 * streamed responses, all on the loop thread. */
#include "runtime/server/http.h"

#include <http_parser.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/base/metrics.h"
#include "runtime/base/status.h"

#define MAX_URL_NBYTES 8192
#define MAX_HEADER_VALUE_NBYTES 8192

struct ss_http_server {
  uv_loop_t *loop;
  uv_tcp_t listener;
  bool listening, closing;
  ss_http_limits lim;
  ss_http_callbacks cb;
  ss_http_conn *conns; /* doubly linked */
  int n_conns;
  int port;
  int open_handles;    /* the listener and every connection's two handles */
};

struct ss_http_conn {
  uv_tcp_t tcp;
  uv_timer_t timer;
  ss_http_server *srv;
  ss_http_conn *prev, *next;
  http_parser parser;
  /* the request being parsed */
  ss_strbuf url, field, value, body;
  bool in_value;
  char *auth, *ctype;
  bool reject_413;
  bool request_ready;
  bool keep_alive;
  /* the response */
  bool busy;        /* a request is being answered */
  bool streaming;
  bool close_after; /* close once the writes so far are done */
  bool closing;
  int writes_pending;
  int handles_open;
  ss_strbuf pending; /* bytes received while busy, parsed after the response */
  bool processing;
  void *user;
};

typedef struct write_req {
  uv_write_t req;
  ss_http_conn *c;
  size_t len;
  char data[];
} write_req;

static void conn_close(ss_http_conn *c);
static void process_input(ss_http_conn *c);

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
  case 429: return "Too Many Requests";
  case 431: return "Request Header Fields Too Large";
  case 500: return "Internal Server Error";
  case 501: return "Not Implemented";
  case 503: return "Service Unavailable";
  default: return "Unknown";
  }
}

/* ------------------------------------------------------------------------ */
/* Handles and lifetime                                                       */

static void server_maybe_free(ss_http_server *s) {
  if (s->closing && s->open_handles == 0) free(s);
}

static void conn_reset_request(ss_http_conn *c) {
  c->url.len = c->field.len = c->value.len = c->body.len = 0;
  if (c->url.p) c->url.p[0] = 0;
  if (c->body.p) c->body.p[0] = 0;
  c->in_value = false;
  free(c->auth);
  free(c->ctype);
  c->auth = c->ctype = NULL;
  c->reject_413 = false;
  c->request_ready = false;
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
  s->n_conns--;
  if (c->busy && c->user && s->cb.on_abort) s->cb.on_abort(s->cb.user, c->user);
  c->user = NULL;
  c->busy = false;
  uv_timer_stop(&c->timer);
  uv_close((uv_handle_t *)&c->timer, on_handle_closed);
  uv_close((uv_handle_t *)&c->tcp, on_handle_closed);
}

static void on_idle_timeout(uv_timer_t *t) {
  ss_http_conn *c = t->data;
  if (!c->busy) conn_close(c);
}

static void arm_idle_timer(ss_http_conn *c) {
  if (c->closing) return;
  uint64_t ms = (uint64_t)(c->srv->lim.idle_timeout_s * 1000.0);
  uv_timer_start(&c->timer, on_idle_timeout, ms ? ms : 1, 0);
}

/* ------------------------------------------------------------------------ */
/* Writing                                                                    */

static void on_written(uv_write_t *req, int status) {
  write_req *w = (write_req *)req;
  ss_http_conn *c = w->c;
  free(w);
  c->writes_pending--;
  if (status < 0) {
    conn_close(c);
    return;
  }
  if (c->close_after && c->writes_pending == 0) conn_close(c);
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
}

/* The response is complete: the next pipelined request may go. */
static void response_done(ss_http_conn *c) {
  c->busy = false;
  c->streaming = false;
  c->user = NULL;
  if (c->closing) return;
  if (!c->keep_alive) {
    c->close_after = true;
    if (c->writes_pending == 0) conn_close(c);
    return;
  }
  arm_idle_timer(c);
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
  response_done(c);
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
  response_done(c);
}

/* A response decided by the server itself (bad request line, too large): the
 * connection closes after it, since the rest of the input cannot be trusted. */
static void respond_and_close(ss_http_conn *c, int status, const char *message) {
  char body[512];
  int n = snprintf(body, sizeof body,
                   "{\"error\":{\"message\":\"%s\",\"type\":\"invalid_request_error\","
                   "\"param\":null,\"code\":null}}", message);
  c->busy = true;
  c->keep_alive = false;
  ss_http_respond(c, status, "application/json", "", body, (size_t)n);
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

static int on_headers_complete(http_parser *p) {
  ss_http_conn *c = conn_of(p);
  header_done(c);
  /* A declared body over the limit is refused before it is read. */
  if ((p->flags & F_CONTENTLENGTH) && p->content_length > c->srv->lim.max_body_nbytes) {
    c->reject_413 = true;
    http_parser_pause(p, 1);
  }
  return 0;
}

static int on_body(http_parser *p, const char *at, size_t len) {
  ss_http_conn *c = conn_of(p);
  if (c->body.len + len > c->srv->lim.max_body_nbytes) {
    c->reject_413 = true;
    http_parser_pause(p, 1);
    return 0;
  }
  ss_strbuf_append(&c->body, at, len);
  return 0;
}

static int on_message_complete(http_parser *p) {
  ss_http_conn *c = conn_of(p);
  c->request_ready = true;
  c->keep_alive = http_should_keep_alive(p) != 0;
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
    respond_and_close(c, 500, "out of memory");
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
  uv_timer_stop(&c->timer);
  s->cb.on_request(s->cb.user, c, &req);
}

/* Parses what has arrived while no response is pending. */
static void process_input(ss_http_conn *c) {
  if (c->processing) return;
  c->processing = true;
  while (!c->closing && !c->busy && !c->close_after && c->pending.len > 0) {
    if (HTTP_PARSER_ERRNO(&c->parser) == HPE_PAUSED) http_parser_pause(&c->parser, 0);
    size_t n = http_parser_execute(&c->parser, &k_settings, c->pending.p, c->pending.len);
    enum http_errno err = HTTP_PARSER_ERRNO(&c->parser);
    memmove(c->pending.p, c->pending.p + n, c->pending.len - n);
    c->pending.len -= n;
    c->pending.p[c->pending.len] = 0;
    if (err == HPE_PAUSED) {
      if (c->reject_413) {
        char msg[160];
        snprintf(msg, sizeof msg, "the request body is larger than the limit of %zu bytes",
                 c->srv->lim.max_body_nbytes);
        respond_and_close(c, 413, msg);
      } else if (c->request_ready) {
        dispatch(c);
      }
      continue;
    }
    if (err != HPE_OK) {
      int status = err == HPE_CB_url ? 414 : err == HPE_CB_header_field ||
                   err == HPE_CB_header_value || err == HPE_HEADER_OVERFLOW ? 431 : 400;
      char msg[200];
      snprintf(msg, sizeof msg, "malformed HTTP request: %s", http_errno_name(err));
      respond_and_close(c, status, msg);
    }
  }
  c->processing = false;
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
  if (nread == 0 || c->closing) return;
  if (c->pending.len + (size_t)nread > c->srv->lim.max_body_nbytes + (1u << 20)) {
    if (c->busy) {
      conn_close(c); /* a client flooding a busy connection */
      return;
    }
  }
  ss_strbuf_append(&c->pending, buf->base, (size_t)nread);
  if (c->pending.failed) {
    conn_close(c);
    return;
  }
  if (!c->busy) arm_idle_timer(c);
  process_input(c);
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
  s->n_conns++;
  if (uv_accept(ls, (uv_stream_t *)&c->tcp) < 0 || s->n_conns > s->lim.max_connections) {
    conn_close(c);
    return;
  }
  uv_tcp_nodelay(&c->tcp, 1); /* SSE tokens go out as they are written */
  http_parser_init(&c->parser, HTTP_REQUEST);
  c->parser.data = c;
  arm_idle_timer(c);
  uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
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
