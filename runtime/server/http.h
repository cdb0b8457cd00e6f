/* A small HTTP/1.1 server on libuv, parsing with http_parser (Debian's
 * libhttp-parser).  Keep-alive, request bodies by Content-Length or chunked
 * (both decoded by the parser), size limits, an idle timeout, and responses
 * that may be sent later or streamed (chunked transfer encoding, for SSE).
 *
 * Everything runs on the loop's thread.  One request per connection is in
 * flight at a time; pipelined requests wait their turn, and are not read ahead
 * while the connection's unsent output is over its high-water mark (the
 * socket's send buffer is set to the mark as well, so that the kernel does not
 * hold megabytes more).  A streamed response going over the mark is reported
 * with on_congestion, and again once its client has taken it down to half the
 * mark, so that its owner can stop producing it meanwhile.  When a
 * client goes away before its response is complete, the on_abort callback
 * tells the owner, which must stop using the connection.
 *
 * Fair limits, so that no few clients can hold the server: a request's line
 * and headers must arrive within a deadline counted from their first byte (or
 * from the accept), and its body within another counted from the end of the
 * headers, however slowly bytes trickle in; connections past the cap (and past
 * a per-address cap) and input past a global buffer cap get 503 with
 * Retry-After; a client that leaves a response unread past a write timeout is
 * disconnected.  Answers the server gives on its own (413, 408, 503, ...) are
 * followed by a half-close and a short drain of the client's input, so that a
 * client still sending its body reads them instead of a reset. */
#ifndef SS_HTTP_H
#define SS_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

typedef struct ss_http_server ss_http_server;
typedef struct ss_http_conn ss_http_conn;

typedef struct ss_http_request {
  const char *method;        /* "GET", "POST", ... */
  const char *path;          /* without the query string */
  const char *authorization; /* the Authorization header or NULL */
  const char *content_type;  /* or NULL */
  const char *body;          /* NUL-terminated copy; body_len bytes */
  size_t body_len;
} ss_http_request;

/* One answered (or abandoned) request, for the access log. */
typedef struct ss_http_log {
  uint64_t id;               /* random, per request */
  const char *method, *path; /* "-" when the request line never arrived whole */
  int status;                /* 0: the client left before the response was complete */
  bool write_timeout;        /* with status 0: closed for not reading (--write-timeout) */
  double total_ms;           /* from the whole request to the end of its response */
  /* set by the owner with ss_http_conn_set_log; -1 when not set */
  int32_t prompt_tokens, completion_tokens;
  double queue_ms, ttft_ms;
} ss_http_log;

typedef struct ss_http_callbacks {
  /* A complete request: answer now or later with ss_http_respond / stream. */
  void (*on_request)(void *user, ss_http_conn *c, const ss_http_request *req);
  /* The client left (or the server closed) before the response was complete;
   * `conn_user` is what the owner attached with ss_http_conn_set_user. */
  void (*on_abort)(void *user, void *conn_user);
  /* Optional: a streamed response's unsent output went over the high-water
   * mark (congested true), or back down to half of it (false). */
  void (*on_congestion)(void *user, void *conn_user, bool congested);
  /* Optional: every request's end, answered or not. */
  void (*on_log)(void *user, const ss_http_log *l);
  void *user;
} ss_http_callbacks;

typedef struct ss_http_limits {
  size_t max_body_nbytes;    /* larger bodies get 413 (default 4 MiB) */
  double idle_timeout_s;     /* idle keep-alive connections close (default 60) */
  double header_timeout_s;   /* request line and headers, from their first byte (default 10) */
  double body_timeout_s;     /* the body, from the end of the headers (default 60) */
  double write_timeout_s;    /* output over the high-water mark this long: disconnect (default 30) */
  size_t output_high_water_nbytes; /* unsent bytes a connection may queue (default 1 MiB) */
  size_t max_buffered_nbytes;      /* input buffered over all connections (default 256 MiB) */
  int max_connections;       /* more get 503 + Retry-After (default 4096) */
  int max_connections_per_client; /* per peer address; 0: no cap (default) */
} ss_http_limits;

/* What the limits refused, for /metrics. */
typedef struct ss_http_stats {
  uint64_t refused_connections;   /* over max_connections or the per-client cap */
  uint64_t refused_buffer;        /* input over max_buffered_nbytes */
  uint64_t header_timeouts, body_timeouts;
  uint64_t write_timeouts;        /* clients that stopped reading */
  uint64_t bad_requests;          /* malformed HTTP, 413, 415, 417, 505 */
  int open_connections;
  size_t buffered_nbytes;
} ss_http_stats;

/* Binds host:port and starts listening on loop.  Errors name the address. */
int ss_http_server_start(uv_loop_t *loop, const char *host, int port, const ss_http_limits *lim,
                         const ss_http_callbacks *cb, ss_http_server **out);
/* Stops accepting; existing connections stay until their responses end. */
void ss_http_server_stop_listening(ss_http_server *s);
/* Closes every connection (in-flight ones get on_abort) and the listener;
 * the server is freed once libuv has closed every handle. */
void ss_http_server_close(ss_http_server *s);
/* The bound port (useful with port 0). */
int ss_http_server_port(const ss_http_server *s);
ss_http_stats ss_http_server_stats(const ss_http_server *s);

void ss_http_conn_set_user(ss_http_conn *c, void *user);
/* What the access log says of the request being answered, beyond HTTP. */
void ss_http_conn_set_log(ss_http_conn *c, int32_t prompt_tokens, int32_t completion_tokens,
                          double queue_ms, double ttft_ms);
/* Bytes written and not yet taken by the client's socket. */
size_t ss_http_conn_queued_nbytes(const ss_http_conn *c);
/* True while the queued output is over the high-water mark. */
bool ss_http_conn_congested(const ss_http_conn *c);

/* A whole response.  extra_headers: "" or lines each ending in "\r\n". */
void ss_http_respond(ss_http_conn *c, int status, const char *content_type,
                     const char *extra_headers, const char *body, size_t len);
/* A streamed response: headers now, then pieces, then the end. */
void ss_http_stream_begin(ss_http_conn *c, int status, const char *content_type);
void ss_http_stream_write(ss_http_conn *c, const char *data, size_t len);
void ss_http_stream_end(ss_http_conn *c);

const char *ss_http_reason(int status);

#endif
