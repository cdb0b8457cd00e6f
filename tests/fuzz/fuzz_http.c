/* The HTTP layer (ss_http on libuv and http_parser) as a client sees it: each
 * input is sent over a fresh loopback connection to a server started once,
 * with a small body limit (1 KiB) so that the 413 paths are reached; the
 * client then half-closes and reads until the server closes.  Requests for a
 * path starting "/s" are answered as a chunked stream, the others whole.  A
 * connection the server never closes (a hang) is a finding.  The server
 * closes first, so each connection leaves a TIME_WAIT entry on its side; at
 * thousands of inputs a second one (port, address) pair would run out of
 * ephemeral ports, so each connection comes from the next of 65,000 loopback
 * source addresses (all of 127/8 is loopback on Linux). */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "runtime/server/http.h"
#include "tests/fuzz/fuzz_common.h"

static uv_loop_t g_loop;
static ss_http_server *g_srv;
static int g_port;

static void on_request(void *user, ss_http_conn *c, const ss_http_request *req) {
  FUZZ_CHECK(req->method && req->path && req->body && req->body[req->body_len] == 0);
  FUZZ_CHECK(req->body_len <= 1024);
  char msg[96];
  int n = snprintf(msg, sizeof msg, "{\"path_len\":%zu,\"body_len\":%zu}", strlen(req->path),
                   req->body_len);
  if (req->path[0] == '/' && req->path[1] == 's') {
    ss_http_stream_begin(c, 200, "text/event-stream");
    ss_http_stream_write(c, msg, (size_t)n);
    ss_http_stream_write(c, req->body, req->body_len);
    ss_http_stream_end(c);
  } else {
    ss_http_respond(c, 200, "application/json", "X-Test: 1\r\n", msg, (size_t)n);
  }
}

static void on_abort(void *user, void *conn_user) { (void)user, (void)conn_user; }

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  FUZZ_CHECK(uv_loop_init(&g_loop) == 0);
  ss_http_limits lim = {.max_body_nbytes = 1024, .idle_timeout_s = 5, .max_connections = 64};
  ss_http_callbacks cb = {.on_request = on_request, .on_abort = on_abort};
  if (ss_http_server_start(&g_loop, "127.0.0.1", 0, &lim, &cb, &g_srv)) {
    fprintf(stderr, "fuzz_http: %s\n", ss_error_msg());
    abort();
  }
  g_port = ss_http_server_port(g_srv);
  return 0;
}

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (!g_srv) LLVMFuzzerInitialize(NULL, NULL);
  static uint32_t next_src;
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)g_port)};
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  int fd = -1, err = 0;
  for (int attempt = 0; attempt < 16 && fd < 0; attempt++) {
    fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    FUZZ_CHECK(fd >= 0);
    struct sockaddr_in src = {.sin_family = AF_INET};
    src.sin_addr.s_addr = htonl(0x7f000000u | (2u + next_src++ % 65000u));
    if (bind(fd, (struct sockaddr *)&src, sizeof src) != 0 ||
        connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
      err = errno;
      close(fd);
      fd = -1;
      for (int i = 0; i < 4; i++) uv_run(&g_loop, UV_RUN_NOWAIT);
    }
  }
  if (fd < 0) fprintf(stderr, "fuzz_http: connect: %s\n", strerror(err));
  FUZZ_CHECK(fd >= 0);
  FUZZ_CHECK(fcntl(fd, F_SETFL, O_NONBLOCK) == 0);
  size_t sent = 0;
  bool eof = false, shut = false;
  const double deadline = now_s() + 5.0;
  char buf[65536];
  for (;;) {
    if (sent < size) {
      ssize_t k = send(fd, data + sent, size - sent, MSG_NOSIGNAL);
      if (k > 0) sent += (size_t)k;
      else if (k < 0 && errno != EAGAIN) sent = size; /* the server closed early */
    }
    if (sent == size && !shut) {
      shutdown(fd, SHUT_WR);
      shut = true;
    }
    for (;;) {
      ssize_t k = recv(fd, buf, sizeof buf, 0);
      if (k > 0) continue;
      if (k == 0 || errno != EAGAIN) eof = true;
      break;
    }
    if (eof) break;
    if (now_s() >= deadline) {
      /* Said before the check fails: what the server holds at that moment. */
      ss_http_stats st = ss_http_server_stats(g_srv);
      fprintf(stderr, "fuzz_http: no answer and no close within 5 s: %zu of %zu bytes sent, "
              "half-closed %d, %d connection(s) open, %zu bytes buffered, next server timer "
              "in %d ms\n", sent, size, (int)shut, st.open_connections, st.buffered_nbytes,
              uv_backend_timeout(&g_loop));
      FUZZ_CHECK(!"the server neither answered nor closed");
    }
    /* Waits for the server's events or the client's bytes, never past 20 ms,
     * so that the deadline above is always checked: the server's own timers
     * may lie further ahead than the deadline does. */
    if (sent == size) {
      int t = uv_backend_timeout(&g_loop);
      struct pollfd pf[2] = {{.fd = uv_backend_fd(&g_loop), .events = POLLIN},
                             {.fd = fd, .events = POLLIN}};
      (void)poll(pf, 2, t < 0 || t > 20 ? 20 : t);
    }
    uv_run(&g_loop, UV_RUN_NOWAIT);
  }
  close(fd);
  /* Let the server finish closing its side: once the client is gone it must
   * hold no connection (one kept would be a slot lost for good). */
  const double close_by = now_s() + 2.0;
  for (int i = 0; i < 4 || ss_http_server_stats(g_srv).open_connections > 0; i++) {
    FUZZ_CHECK(now_s() < close_by); /* the server kept a connection whose client left */
    uv_run(&g_loop, UV_RUN_NOWAIT);
    if (i >= 4) usleep(1000);
  }
  return 0;
}
