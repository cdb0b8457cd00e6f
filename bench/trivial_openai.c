/* ss_trivial_openai: the cheapest OpenAI-compatible streaming endpoint we can
 * write, for measuring the load generator itself (bench/loadgen_capacity.py).
 * Every POST gets the same pre-built SSE reply at once: N text chunks, a usage
 * chunk and [DONE], with Content-Length and keep-alive; GET /v1/models lists
 * one model.  One libuv loop thread; requests are parsed by http_parser (the
 * Node.js parser), not by hand.
 *
 * Usage: ss_trivial_openai [--port P] [--tokens N]   (prints "listening on PORT") */
#include <http_parser.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

static char *g_sse, *g_models; /* full responses, headers included */
static size_t g_sse_nbytes, g_models_nbytes;

typedef struct conn {
  uv_tcp_t tcp;
  http_parser parser;
  int is_get;
} conn;

static char *build_response(const char *ctype, const char *body, size_t *nbytes) {
  size_t bn = strlen(body), cap = bn + 256;
  char *s = malloc(cap);
  int k = snprintf(s, cap, "HTTP/1.1 200 OK\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
                   "Connection: keep-alive\r\n\r\n%s", ctype, bn, body);
  *nbytes = (size_t)k;
  return s;
}

static void on_close(uv_handle_t *h) { free(h->data); }

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  static char slab[65536]; /* one loop thread: one read buffer is enough */
  (void)h, (void)suggested;
  *buf = uv_buf_init(slab, sizeof slab);
}

static void on_written(uv_write_t *w, int status) { free(w); }

static int on_message_complete(http_parser *p) {
  conn *c = p->data;
  uv_write_t *w = malloc(sizeof *w);
  uv_buf_t b = c->is_get ? uv_buf_init(g_models, (unsigned)g_models_nbytes)
                         : uv_buf_init(g_sse, (unsigned)g_sse_nbytes);
  if (uv_write(w, (uv_stream_t *)&c->tcp, &b, 1, on_written)) free(w);
  return 0;
}

static int on_message_begin(http_parser *p) {
  conn *c = p->data;
  c->is_get = 0;
  return 0;
}

static int on_headers_complete(http_parser *p) {
  conn *c = p->data;
  c->is_get = p->method == HTTP_GET;
  return 0;
}

static http_parser_settings g_settings = {
    .on_message_begin = on_message_begin,
    .on_headers_complete = on_headers_complete,
    .on_message_complete = on_message_complete,
};

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf) {
  conn *c = s->data;
  if (n < 0) {
    uv_close((uv_handle_t *)s, on_close);
    return;
  }
  size_t used = http_parser_execute(&c->parser, &g_settings, buf->base, (size_t)n);
  if (used != (size_t)n || c->parser.http_errno)
    uv_close((uv_handle_t *)s, on_close);
}

static void on_connect(uv_stream_t *server, int status) {
  if (status < 0) return;
  conn *c = calloc(1, sizeof *c);
  uv_tcp_init(server->loop, &c->tcp);
  c->tcp.data = c;
  http_parser_init(&c->parser, HTTP_REQUEST);
  c->parser.data = c;
  if (uv_accept(server, (uv_stream_t *)&c->tcp) == 0) {
    uv_tcp_nodelay(&c->tcp, 1);
    uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
  } else {
    uv_close((uv_handle_t *)&c->tcp, on_close);
  }
}

int main(int argc, char **argv) {
  int port = 0, tokens = 4;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--port") == 0 && i + 1 < argc) port = atoi(argv[++i]);
    else if (strcmp(argv[i], "--tokens") == 0 && i + 1 < argc) tokens = atoi(argv[++i]);
    else {
      fprintf(stderr, "usage: ss_trivial_openai [--port P] [--tokens N]\n");
      return 2;
    }
  }
  if (tokens < 1 || tokens > 100000) {
    fprintf(stderr, "ss_trivial_openai: --tokens must be in [1, 100000]\n");
    return 2;
  }
  size_t cap = (size_t)tokens * 80 + 512, n = 0;
  char *body = malloc(cap);
  for (int i = 0; i < tokens; i++)
    n += (size_t)snprintf(body + n, cap - n,
                          "data: {\"object\":\"text_completion\",\"choices\":[{\"index\":0,"
                          "\"text\":\" tok\"}]}\n\n");
  snprintf(body + n, cap - n,
           "data: {\"object\":\"text_completion\",\"choices\":[],\"usage\":{\"prompt_tokens\":"
           "1,\"completion_tokens\":%d,\"total_tokens\":%d}}\n\ndata: [DONE]\n\n", tokens, tokens + 1);
  g_sse = build_response("text/event-stream", body, &g_sse_nbytes);
  g_models = build_response("application/json",
                            "{\"object\":\"list\",\"data\":[{\"id\":\"trivial\",\"object\":\"model\"}]}",
                            &g_models_nbytes);
  free(body);

  uv_loop_t *loop = uv_default_loop();
  uv_tcp_t server;
  struct sockaddr_in addr;
  uv_tcp_init(loop, &server);
  uv_ip4_addr("127.0.0.1", port, &addr);
  int rc = uv_tcp_bind(&server, (const struct sockaddr *)&addr, 0);
  if (!rc) rc = uv_listen((uv_stream_t *)&server, 4096, on_connect);
  if (rc) {
    fprintf(stderr, "ss_trivial_openai: cannot listen on 127.0.0.1:%d: %s\n", port, uv_strerror(rc));
    return 1;
  }
  struct sockaddr_storage got;
  int len = sizeof got;
  uv_tcp_getsockname(&server, (struct sockaddr *)&got, &len);
  printf("listening on %d\n", ntohs(((struct sockaddr_in *)&got)->sin_port));
  fflush(stdout);
  return uv_run(loop, UV_RUN_DEFAULT);
}
