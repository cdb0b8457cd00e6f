/* The heartbeat channel: how a rank learns within seconds that a peer on
 * another host is gone or unreachable, which kill(pid, 0) cannot tell and
 * which MPI does not notice when a link goes down (TCP sees no reset, and a
 * collective waits for ever).
 *
 * A star of TCP connections outside MPI.  Rank 0 listens on an ephemeral port
 * and tells the others (through the backend's broadcast at init) its IPv4
 * addresses, the port and a random nonce; every other rank connects to the
 * first address that answers with the nonce.  One thread per process, the
 * only one touching these sockets and calling nothing of MPI, sends one byte
 * every SS_COMM_BEAT_S and notes when it last heard from each peer: rank 0
 * watches every worker, a worker watches rank 0.  A connection that closes
 * without a goodbye, or silence longer than the liveness timeout, marks the
 * peer lost; rank 0 then tells the surviving workers which rank it lost, so
 * that their errors name it too.  The waiting loops read the lost flags
 * (atomics) in their periodic check (comm_live.c).
 *
 * Only silence is judged, never lateness of a reply, so a busy rank is never
 * lost: its own thread keeps beating while it computes, and the peer's thread
 * only has to be scheduled a few times per timeout.  Data that arrived while
 * this thread was not running is read before the silence is judged.
 *
 * Wire format, one byte of type first: 'H' heartbeat; 'B' goodbye (the peer
 * frees its communicator normally: its closing connection is no loss);
 * 'L' rank(4, big-endian) why(1): rank 0 lost that rank.  The handshake is
 * a 16-byte hello from the worker (magic, rank, nonce) answered by the nonce. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "comm/comm_internal.h"
#include "runtime/base/status.h"

#define BEAT_MAGIC 0x53534842u /* "SSHB" */
#define CONNECT_TIMEOUT_S 1.5  /* per address; a worker tries each in turn */
#define HANDSHAKE_TIMEOUT_S 3.0
#define JOIN_TIMEOUT_S 6.0     /* all addresses together: a start is never held longer */

enum { STATE_ACCEPTING, STATE_ARMED, STATE_STOP };

struct ss_comm_beat {
  int n, rank;
  double timeout_s;
  uint64_t nonce;
  int listen_fd;             /* rank 0 until armed */
  int *fd;                   /* (n) rank 0: each worker's; a worker: fd[0] */
  double *heard;             /* (n) when we last heard from the peer (thread only) */
  unsigned char (*inbuf)[8]; /* (n) a message split across reads */
  int *inlen;                /* (n) */
  atomic_int *lost;          /* (n) SS_BEAT_* why, 0 while fine */
  atomic_int any_lost;
  atomic_int n_joined;       /* rank 0: workers whose handshake finished */
  atomic_int state;
  int wake[2];               /* a byte here wakes the thread up to stop */
  pthread_t thread;
  bool thread_started;
  char (*host)[SS_COMM_HOST_LEN]; /* (n) for messages */
};

/* ---- small socket helpers --------------------------------------------- */

static int set_nonblock(int fd) {
  int fl = fcntl(fd, F_GETFL);
  return fl < 0 ? -1 : fcntl(fd, F_SETFL, fl | O_NONBLOCK);
}

/* Waits for fd to be ready for `events` until `deadline`; 1 ready, 0 not. */
static int wait_fd(int fd, short events, double deadline) {
  for (;;) {
    double left = deadline - ss_now_s();
    if (left <= 0) return 0;
    struct pollfd p = {.fd = fd, .events = events};
    int r = poll(&p, 1, (int)(left * 1000) + 1);
    if (r > 0) return 1;
    if (r < 0 && errno != EINTR) return 0;
  }
}

/* All of buf out, or all of it in, before the deadline (non-blocking fd). */
static bool xfer_all(int fd, void *buf, size_t nbytes, bool out, double deadline) {
  size_t done = 0;
  while (done < nbytes) {
    ssize_t r = out ? send(fd, (char *)buf + done, nbytes - done, MSG_NOSIGNAL)
                    : recv(fd, (char *)buf + done, nbytes - done, 0);
    if (r > 0) {
      done += (size_t)r;
      continue;
    }
    if (r == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) return false;
    if (!wait_fd(fd, out ? POLLOUT : POLLIN, deadline)) return false;
  }
  return true;
}

static void put_u32(unsigned char *p, uint32_t v) {
  p[0] = (unsigned char)(v >> 24), p[1] = (unsigned char)(v >> 16);
  p[2] = (unsigned char)(v >> 8), p[3] = (unsigned char)v;
}
static uint32_t get_u32(const unsigned char *p) {
  return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* ---- life cycle --------------------------------------------------------- */

static ss_comm_beat *beat_alloc(int n, int rank, double timeout_s,
                                const char (*host)[SS_COMM_HOST_LEN]) {
  ss_comm_beat *b = calloc(1, sizeof *b);
  if (!b) return NULL;
  b->n = n, b->rank = rank, b->timeout_s = timeout_s;
  b->listen_fd = b->wake[0] = b->wake[1] = -1;
  b->fd = malloc(sizeof(int) * (size_t)n);
  b->heard = calloc((size_t)n, sizeof(double));
  b->inbuf = calloc((size_t)n, sizeof *b->inbuf);
  b->inlen = calloc((size_t)n, sizeof(int));
  b->lost = calloc((size_t)n, sizeof(atomic_int));
  b->host = calloc((size_t)n, SS_COMM_HOST_LEN);
  if (!b->fd || !b->heard || !b->inbuf || !b->inlen || !b->lost || !b->host) {
    ss_comm_beat_free(b);
    return NULL;
  }
  for (int r = 0; r < n; r++) {
    b->fd[r] = -1;
    atomic_init(&b->lost[r], 0);
  }
  memcpy(b->host, host, (size_t)n * SS_COMM_HOST_LEN);
  atomic_init(&b->any_lost, 0);
  atomic_init(&b->n_joined, 0);
  atomic_init(&b->state, STATE_ACCEPTING);
  if (pipe(b->wake) != 0) {
    b->wake[0] = b->wake[1] = -1;
    ss_comm_beat_free(b);
    return NULL;
  }
  fcntl(b->wake[0], F_SETFD, FD_CLOEXEC);
  fcntl(b->wake[1], F_SETFD, FD_CLOEXEC);
  set_nonblock(b->wake[0]);
  set_nonblock(b->wake[1]);
  return b;
}

static void *beat_main(void *arg);

/* The thread runs with every signal blocked: handlers belong to the others. */
static int start_thread(ss_comm_beat *b) {
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  int rc = pthread_create(&b->thread, NULL, beat_main, b);
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  if (rc != 0) return ss_error(SS_ERR_INTERNAL, "cannot start the heartbeat thread: %s", strerror(rc));
  b->thread_started = true;
  return SS_OK;
}

void ss_comm_beat_free(ss_comm_beat *b) {
  if (!b) return;
  if (b->thread_started) {
    atomic_store(&b->state, STATE_STOP);
    char one = 1;
    ssize_t w = write(b->wake[1], &one, 1);
    (void)w;
    pthread_join(b->thread, NULL);
  }
  /* Goodbye first, so that a peer reads this close as no loss. */
  for (int r = 0; b->fd && r < b->n; r++) {
    if (b->fd[r] < 0) continue;
    ssize_t s = send(b->fd[r], "B", 1, MSG_NOSIGNAL | MSG_DONTWAIT);
    (void)s;
    close(b->fd[r]);
  }
  if (b->listen_fd >= 0) close(b->listen_fd);
  if (b->wake[0] >= 0) close(b->wake[0]);
  if (b->wake[1] >= 0) close(b->wake[1]);
  free(b->fd);
  free(b->heard);
  free(b->inbuf);
  free(b->inlen);
  free((void *)b->lost);
  free(b->host);
  free(b);
}

/* Rank 0's addresses: the non-loopback IPv4 ones that are up, then loopback. */
static int own_addrs(uint32_t *out, int cap) {
  int n = 0;
  struct ifaddrs *ifs = NULL;
  if (getifaddrs(&ifs) == 0) {
    for (struct ifaddrs *i = ifs; i && n < cap - 1; i = i->ifa_next) {
      if (!i->ifa_addr || i->ifa_addr->sa_family != AF_INET) continue;
      if (!(i->ifa_flags & IFF_UP) || (i->ifa_flags & IFF_LOOPBACK)) continue;
      out[n++] = ((struct sockaddr_in *)i->ifa_addr)->sin_addr.s_addr;
    }
    freeifaddrs(ifs);
  }
  out[n++] = htonl(INADDR_LOOPBACK);
  return n;
}

static uint64_t make_nonce(void) {
  uint64_t v = 0;
  FILE *f = fopen("/dev/urandom", "rb");
  if (!f || fread(&v, sizeof v, 1, f) != 1) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    v = ((uint64_t)ts.tv_nsec << 20) ^ (uint64_t)ts.tv_sec ^ ((uint64_t)getpid() << 40);
  }
  if (f) fclose(f);
  return v ? v : 1;
}

int ss_comm_beat_serve(int n, double timeout_s, const char (*host)[SS_COMM_HOST_LEN],
                       ss_comm_beat_info *info, ss_comm_beat **out) {
  memset(info, 0, sizeof *info);
  *out = NULL;
  ss_comm_beat *b = beat_alloc(n, 0, timeout_s, host);
  if (!b) return ss_error(SS_ERR_NOMEM, "heartbeat tables for %d ranks", n);
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_ANY)};
  socklen_t len = sizeof sa;
  const char *what = "socket";
  if (fd >= 0) {
    b->listen_fd = fd;
    what = "bind";
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) == 0 && (what = "listen") &&
        listen(fd, n < SOMAXCONN ? n : SOMAXCONN) == 0 && (what = "getsockname") &&
        getsockname(fd, (struct sockaddr *)&sa, &len) == 0 && set_nonblock(fd) == 0)
      what = NULL;
  }
  if (what) {
    int e = errno;
    ss_comm_beat_free(b);
    return ss_error(SS_ERR_COMM, "heartbeat listener: %s: %s", what, strerror(e));
  }
  b->nonce = make_nonce();
  int rc = start_thread(b);
  if (rc) {
    ss_comm_beat_free(b);
    return rc;
  }
  info->ok = 1;
  info->port = ntohs(sa.sin_port);
  info->nonce = b->nonce;
  info->n_addrs = own_addrs(info->addrs, SS_COMM_BEAT_MAX_ADDRS);
  *out = b;
  return SS_OK;
}

/* One attempt: connect to addr within CONNECT_TIMEOUT_S, say hello, hear the
 * nonce back.  Returns the connected fd or -1 (errno-ish reason in *why). */
static int try_join(const ss_comm_beat_info *info, uint32_t addr, int rank, const char **why) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    *why = strerror(errno);
    return -1;
  }
  set_nonblock(fd);
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(info->port),
                           .sin_addr.s_addr = addr};
  double deadline = ss_now_s() + CONNECT_TIMEOUT_S;
  if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
    if (errno != EINPROGRESS) {
      *why = strerror(errno);
      close(fd);
      return -1;
    }
    int err = 0;
    socklen_t el = sizeof err;
    if (!wait_fd(fd, POLLOUT, deadline)) {
      *why = "connect timed out";
      close(fd);
      return -1;
    }
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el) != 0 || err) {
      *why = strerror(err ? err : errno);
      close(fd);
      return -1;
    }
  }
  unsigned char hello[16], ack[8];
  put_u32(hello, BEAT_MAGIC);
  put_u32(hello + 4, (uint32_t)rank);
  memcpy(hello + 8, &info->nonce, 8);
  deadline = ss_now_s() + HANDSHAKE_TIMEOUT_S;
  if (!xfer_all(fd, hello, sizeof hello, true, deadline) ||
      !xfer_all(fd, ack, sizeof ack, false, deadline) || memcmp(ack, &info->nonce, 8) != 0) {
    *why = "no handshake (another program on that port?)";
    close(fd);
    return -1;
  }
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  return fd;
}

int ss_comm_beat_join(const ss_comm_beat_info *info, int n, int rank, double timeout_s,
                      const char (*host)[SS_COMM_HOST_LEN], ss_comm_beat **out) {
  *out = NULL;
  ss_comm_beat *b = beat_alloc(n, rank, timeout_s, host);
  if (!b) return ss_error(SS_ERR_NOMEM, "heartbeat tables for %d ranks", n);
  /* A rank on rank 0's host tries loopback first (it needs no route). */
  uint32_t order[SS_COMM_BEAT_MAX_ADDRS];
  int k = 0, na = info->n_addrs < SS_COMM_BEAT_MAX_ADDRS ? info->n_addrs : SS_COMM_BEAT_MAX_ADDRS;
  bool same_host = strcmp(host[0], host[rank]) == 0;
  for (int i = 0; i < na; i++)
    if (same_host && info->addrs[i] == htonl(INADDR_LOOPBACK)) order[k++] = info->addrs[i];
  for (int i = 0; i < na; i++)
    if (!(same_host && info->addrs[i] == htonl(INADDR_LOOPBACK))) order[k++] = info->addrs[i];
  char tried[512] = "";
  size_t tl = 0;
  const double give_up = ss_now_s() + JOIN_TIMEOUT_S;
  for (int i = 0; i < k && b->fd[0] < 0 && ss_now_s() < give_up; i++) {
    const char *why = "";
    b->fd[0] = try_join(info, order[i], rank, &why);
    if (b->fd[0] < 0 && tl < sizeof tried) {
      char a[INET_ADDRSTRLEN];
      struct in_addr ia = {.s_addr = order[i]};
      inet_ntop(AF_INET, &ia, a, sizeof a);
      int w = snprintf(tried + tl, sizeof tried - tl, "%s%s:%u (%s)", tl ? ", " : "", a,
                       (unsigned)info->port, why);
      tl = w < 0 ? sizeof tried : tl + (size_t)w;
    }
  }
  if (b->fd[0] < 0) {
    ss_comm_beat_free(b);
    return ss_error(SS_ERR_COMM, "cannot reach rank 0 (host %s) for heartbeats: %s", host[0],
                    k ? tried : "no address");
  }
  b->nonce = info->nonce;
  *out = b;
  return SS_OK;
}

bool ss_comm_beat_all_joined(const ss_comm_beat *b) {
  if (b->rank != 0) return b->fd[0] >= 0;
  /* The thread counts a worker before it answers its hello, and the worker
   * reports success only once answered, so this is settled when every rank
   * has reported; the short wait only covers memory ordering. */
  double deadline = ss_now_s() + 1.0;
  while (atomic_load(&((ss_comm_beat *)b)->n_joined) < b->n - 1 && ss_now_s() < deadline) {
    struct timespec ts = {0, 1000000};
    nanosleep(&ts, NULL);
  }
  return atomic_load(&((ss_comm_beat *)b)->n_joined) == b->n - 1;
}

int ss_comm_beat_arm(ss_comm_beat *b) {
  atomic_store(&b->state, STATE_ARMED);
  if (b->rank == 0) {
    char one = 1;
    ssize_t w = write(b->wake[1], &one, 1);
    (void)w;
    return SS_OK;
  }
  return start_thread(b);
}

/* ---- the thread ---------------------------------------------------------- */

static void mark_lost(ss_comm_beat *b, int r, int why) {
  int none = 0;
  if (!atomic_compare_exchange_strong(&b->lost[r], &none, why)) return;
  if (why != SS_BEAT_LEFT) atomic_store(&b->any_lost, 1);
  if (b->fd[r] >= 0 && r != 0 && b->rank == 0) {
    close(b->fd[r]);
    b->fd[r] = -1;
  }
  if (b->rank != 0 || why == SS_BEAT_LEFT) return;
  /* Tell the surviving workers whom we lost and why. */
  unsigned char msg[6] = {'L'};
  put_u32(msg + 1, (uint32_t)r);
  msg[5] = (unsigned char)why;
  for (int w = 1; w < b->n; w++)
    if (b->fd[w] >= 0 && atomic_load(&b->lost[w]) == 0) {
      ssize_t s = send(b->fd[w], msg, sizeof msg, MSG_NOSIGNAL | MSG_DONTWAIT);
      (void)s;
    }
}

/* Rank 0, before arming: one new worker's hello, answered with the nonce. */
static void accept_one(ss_comm_beat *b) {
  int fd = accept(b->listen_fd, NULL, NULL);
  if (fd < 0) return;
  fcntl(fd, F_SETFD, FD_CLOEXEC);
  set_nonblock(fd);
  unsigned char hello[16];
  double deadline = ss_now_s() + HANDSHAKE_TIMEOUT_S;
  if (!xfer_all(fd, hello, sizeof hello, false, deadline) || get_u32(hello) != BEAT_MAGIC ||
      memcmp(hello + 8, &b->nonce, 8) != 0) {
    close(fd);
    return;
  }
  uint32_t r = get_u32(hello + 4);
  if (r == 0 || r >= (uint32_t)b->n || b->fd[r] >= 0) {
    close(fd);
    return;
  }
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  b->fd[r] = fd;
  atomic_fetch_add(&b->n_joined, 1);
  if (!xfer_all(fd, &b->nonce, 8, true, deadline)) {
    /* The worker sees no answer and reports failure: nobody is armed. */
    close(fd);
    b->fd[r] = -1;
    atomic_fetch_sub(&b->n_joined, 1);
  }
}

/* Reads what peer r sent; marks it lost on a close without goodbye. */
static void read_peer(ss_comm_beat *b, int r, double now) {
  unsigned char buf[256];
  for (;;) {
    ssize_t got = recv(b->fd[r], buf, sizeof buf, 0);
    if (got < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) {
      mark_lost(b, r, SS_BEAT_CLOSED);
      if (b->fd[r] >= 0) {
        close(b->fd[r]);
        b->fd[r] = -1;
      }
      return;
    }
    b->heard[r] = now;
    for (ssize_t i = 0; i < got; i++) {
      unsigned char *m = b->inbuf[r];
      m[b->inlen[r]++] = buf[i];
      if (m[0] == 'H') {
        b->inlen[r] = 0;
      } else if (m[0] == 'B') {
        b->inlen[r] = 0;
        mark_lost(b, r, SS_BEAT_LEFT);
        close(b->fd[r]);
        b->fd[r] = -1;
        return;
      } else if (m[0] == 'L' && b->rank != 0 && r == 0) {
        if (b->inlen[r] < 6) continue;
        b->inlen[r] = 0;
        uint32_t who = get_u32(m + 1);
        int why = m[5];
        if (who < (uint32_t)b->n && who != (uint32_t)b->rank &&
            (why == SS_BEAT_CLOSED || why == SS_BEAT_SILENT))
          mark_lost(b, (int)who, why | SS_BEAT_BY_RANK0);
      } else {
        b->inlen[r] = 0; /* unknown: ignore the byte */
      }
    }
  }
}

static void *beat_main(void *arg) {
  ss_comm_beat *b = arg;
  const double interval = SS_COMM_BEAT_S;
  double next_send = 0;
  bool armed = false;
  struct pollfd *pf = malloc(sizeof *pf * (size_t)(b->n + 2));
  int *who = malloc(sizeof(int) * (size_t)(b->n + 2));
  if (!pf || !who) {
    /* Without the tables nothing can be watched; say so, as a failed start would. */
    fprintf(stderr, "shardserve rank %d: heartbeat thread: out of memory; remote peers are not "
            "watched\n", b->rank);
    free(pf);
    free(who);
    return NULL;
  }
  for (;;) {
    int state = atomic_load(&b->state);
    if (state == STATE_STOP) break;
    double now = ss_now_s();
    if (state == STATE_ARMED && !armed) {
      armed = true;
      for (int r = 0; r < b->n; r++) b->heard[r] = now;
      if (b->listen_fd >= 0) {
        close(b->listen_fd);
        b->listen_fd = -1;
      }
    }
    int np = 0;
    pf[np] = (struct pollfd){.fd = b->wake[0], .events = POLLIN};
    who[np++] = -1;
    if (!armed && b->listen_fd >= 0) {
      pf[np] = (struct pollfd){.fd = b->listen_fd, .events = POLLIN};
      who[np++] = -2;
    }
    for (int r = 0; r < b->n; r++)
      if (b->fd[r] >= 0) {
        pf[np] = (struct pollfd){.fd = b->fd[r], .events = POLLIN};
        who[np++] = r;
      }
    int wait_ms = armed ? (int)((next_send - now) * 1000) + 1 : 100;
    if (wait_ms < 0) wait_ms = 0;
    if (wait_ms > 100) wait_ms = 100;
    int pr = poll(pf, (nfds_t)np, wait_ms);
    now = ss_now_s();
    if (pr > 0) {
      for (int i = 0; i < np; i++) {
        if (!pf[i].revents) continue;
        if (who[i] == -1) {
          char sink[16];
          while (read(b->wake[0], sink, sizeof sink) > 0) {}
        } else if (who[i] == -2) {
          accept_one(b);
        }
      }
    }
    if (!armed) continue;
    /* Read everything that came, then judge silence: a thread that was not
     * scheduled for a while must not blame the peers for its own absence. */
    for (int r = 0; r < b->n; r++)
      if (b->fd[r] >= 0) read_peer(b, r, now);
    if (now >= next_send) {
      for (int r = 0; r < b->n; r++) {
        if (b->fd[r] < 0) continue;
        ssize_t s = send(b->fd[r], "H", 1, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (s < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
          mark_lost(b, r, SS_BEAT_CLOSED);
      }
      next_send = now + interval;
    }
    for (int r = 0; r < b->n; r++)
      if (b->fd[r] >= 0 && atomic_load(&b->lost[r]) == 0 && now - b->heard[r] > b->timeout_s)
        mark_lost(b, r, SS_BEAT_SILENT);
  }
  free(pf);
  free(who);
  return NULL;
}

/* ---- what the waiting loops ask ------------------------------------------ */

int ss_comm_beat_first_lost(const ss_comm_beat *b, int *why) {
  if (!b || !atomic_load(&((ss_comm_beat *)b)->any_lost)) return -1;
  for (int r = 0; r < b->n; r++) {
    int w = atomic_load(&((ss_comm_beat *)b)->lost[r]);
    if (w && w != SS_BEAT_LEFT) {
      *why = w;
      return r;
    }
  }
  return -1;
}

bool ss_comm_beat_any_lost(const ss_comm_beat *b) {
  return b && atomic_load_explicit(&((ss_comm_beat *)b)->any_lost, memory_order_relaxed);
}

const char *ss_comm_beat_host(const ss_comm_beat *b, int r) { return b->host[r]; }

double ss_comm_beat_timeout(const ss_comm_beat *b) { return b->timeout_s; }
