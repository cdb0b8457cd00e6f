/* Liveness: knowing when a peer process is gone, so that waiting for it turns
 * into an error (or, under a launcher that tears the job down, a last line
 * naming the lost rank) instead of a hang.
 *
 * Peers on this host are watched directly (kill(pid, 0)); peers on other
 * hosts through the heartbeat channel (comm_beat.c), whose thread sets a lost
 * flag when a connection closes without goodbye or goes silent past the
 * liveness timeout (a host gone, a link down, a process stopped).  Both are
 * read in the waiting loops' periodic check below, so either loss becomes the
 * same SS_ERR_COMM naming the lost rank and its host.  Without the channel
 * (turned off, or it could not be made) a remote loss is noticed only by the
 * launcher, MPI's own errors, or the timeout. */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "comm/comm_internal.h"
#include "runtime/base/status.h"

/* Async-signal-safe unsigned to decimal; returns the length. */
static size_t fmt_uint(char *buf, unsigned long v) {
  char tmp[24];
  size_t n = 0;
  do {
    tmp[n++] = (char)('0' + v % 10);
    v /= 10;
  } while (v);
  for (size_t i = 0; i < n; i++) buf[i] = tmp[n - 1 - i];
  return n;
}

bool ss_comm_pid_alive(pid_t pid) {
  if (kill(pid, 0) == -1 && errno == ESRCH) return false;
  /* A child that exited but was not yet reaped still answers kill(); its
   * state in /proc/PID/stat ("PID (comm) S ...") is Z.  open/read/close are
   * async-signal-safe, so the signal handler may use this too. */
  char path[40] = "/proc/";
  size_t n = 6;
  n += fmt_uint(path + n, (unsigned long)pid);
  memcpy(path + n, "/stat", 6);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return true; /* no /proc: trust kill() */
  char buf[256];
  ssize_t got = read(fd, buf, sizeof buf - 1);
  close(fd);
  if (got <= 0) return true;
  buf[got] = '\0';
  /* The command name may hold spaces and ')', so find the last ')'. */
  char *rp = NULL;
  for (ssize_t i = 0; i < got; i++)
    if (buf[i] == ')') rp = buf + i;
  if (rp && rp[1] == ' ' && (rp[2] == 'Z' || rp[2] == 'X')) return false;
  return true;
}

int ss_comm_peers_find_local(ss_comm_peers *p, int my_rank, const char *my_host) {
  p->local = malloc(sizeof(int) * (size_t)(p->n > 0 ? p->n : 1));
  if (!p->local) return ss_error(SS_ERR_NOMEM, "comm: peer table of %d ranks", p->n);
  p->n_local = 0;
  for (int r = 0; r < p->n; r++) {
    if (r == my_rank || strcmp(p->host[r], my_host) != 0) continue;
    /* Every rank has just taken part in the gather that produced this table, so
     * a pid we cannot see lives in another pid namespace, not in the past. */
    if (!ss_comm_pid_alive(p->pid[r])) continue;
    p->local[p->n_local++] = r;
  }
  return SS_OK;
}

void ss_comm_peers_free(ss_comm_peers *p) {
  if (p->beat_owned) ss_comm_beat_free(p->beat);
  free(p->world);
  free(p->pid);
  free(p->host);
  free(p->local);
  memset(p, 0, sizeof *p);
}

int ss_comm_peers_first_dead(const ss_comm_peers *p) {
  for (int i = 0; i < p->n_local; i++)
    if (!ss_comm_pid_alive(p->pid[p->local[i]])) return p->local[i];
  return -1;
}

int ss_comm_check_wait(const ss_comm *c, const ss_comm_peers *p, const ss_comm_op *op,
                       double t_start) {
  int dead = p ? ss_comm_peers_first_dead(p) : -1;
  int why = 0, lost = dead < 0 && p && p->beat ? ss_comm_beat_first_lost(p->beat, &why) : -1;
  double waited = ss_now_s() - t_start;
  bool late = c->timeout_s > 0 && waited > c->timeout_s;
  if (dead < 0 && lost < 0 && !late) return SS_OK;
  char what[160];
  ss_comm_op_describe(op, what, sizeof what);
  if (lost >= 0) {
    /* The channel numbers ranks as the job does; name the rank as this
     * communicator knows it where it is one of ours. */
    int r = -1;
    for (int i = 0; i < p->n && r < 0; i++)
      if (p->world && p->world[i] == lost) r = i;
    char who[96];
    if (r >= 0 && (!p->world || p->world[r] == r))
      snprintf(who, sizeof who, "rank %d", r);
    else if (r >= 0)
      snprintf(who, sizeof who, "rank %d (rank %d of the job)", r, lost);
    else
      snprintf(who, sizeof who, "rank %d of the job", lost);
    char how[160];
    if ((why & ~SS_BEAT_BY_RANK0) == SS_BEAT_SILENT)
      snprintf(how, sizeof how, "sent no heartbeat for %.1f s (host down, link down, or process "
               "stopped)", ss_comm_beat_timeout(p->beat));
    else
      snprintf(how, sizeof how, "closed its heartbeat connection (process or host gone)");
    return ss_error(SS_ERR_COMM, "rank %d (host %s): %s: %s (host %s) is lost: it %s%s", c->rank,
                    c->host, what, who, ss_comm_beat_host(p->beat, lost), how,
                    why & SS_BEAT_BY_RANK0 ? ", as rank 0 saw it" : "");
  }
  if (dead >= 0)
    return ss_error(SS_ERR_COMM, "rank %d (host %s): %s: rank %d (pid %ld on %s) is gone", c->rank,
                    c->host, what, dead, (long)p->pid[dead], p->host[dead]);
  return ss_error(SS_ERR_COMM,
                  "rank %d (host %s): %s: timed out after %.1f s (timeout %.1f s); "
                  "a peer never joined it",
                  c->rank, c->host, what, waited, c->timeout_s);
}

/* ---- asked from outside the waits --------------------------------------- */

int ss_comm_lost_rank(const ss_comm *c, char *why, size_t why_len) {
  if (why && why_len) why[0] = '\0';
  if (!c || !c->ctx || strcmp(c->backend, "self") == 0) return -1;
  const ss_comm_peers *p = c->ctx;
  int dead = ss_comm_peers_first_dead(p);
  if (dead >= 0) {
    /* Local peers are numbered as this communicator knows them. */
    int r = p->world ? p->world[dead] : dead;
    if (why && why_len)
      snprintf(why, why_len, "rank %d (pid %ld on %s) is gone", r, (long)p->pid[dead],
               p->host[dead]);
    return r;
  }
  int how = 0;
  int lost = p->beat ? ss_comm_beat_first_lost(p->beat, &how) : -1;
  if (lost < 0) return -1;
  if (why && why_len) {
    if ((how & ~SS_BEAT_BY_RANK0) == SS_BEAT_SILENT)
      snprintf(why, why_len, "rank %d (host %s) is lost: it sent no heartbeat for %.1f s (host "
               "down, link down, or process stopped)%s", lost, ss_comm_beat_host(p->beat, lost),
               ss_comm_beat_timeout(p->beat), how & SS_BEAT_BY_RANK0 ? ", as rank 0 saw it" : "");
    else
      snprintf(why, why_len, "rank %d (host %s) is lost: it closed its heartbeat connection "
               "without a goodbye (process or host gone)%s", lost,
               ss_comm_beat_host(p->beat, lost), how & SS_BEAT_BY_RANK0 ? ", as rank 0 saw it" : "");
  }
  return lost;
}

/* ---- the launcher's SIGTERM ------------------------------------------- */

/* What the handler needs, copied out of the communicator so that it never
 * touches memory the engine may be freeing. */
static int g_sig_rank = -1;
static int g_sig_n;
static int *g_sig_peer_rank;
static pid_t *g_sig_peer_pid;

static void append(char *buf, size_t *n, size_t cap, const char *s) {
  while (*s && *n + 1 < cap) buf[(*n)++] = *s++;
}

static void on_term(int sig) {
  int saved = errno;
  char line[768];
  size_t n = 0;
  char num[24];
  append(line, &n, sizeof line, "shardserve rank ");
  num[fmt_uint(num, (unsigned long)g_sig_rank)] = '\0';
  append(line, &n, sizeof line, num);
  append(line, &n, sizeof line, sig == SIGINT ? ": interrupted (SIGINT)" :
                                                ": terminated by the launcher (SIGTERM)");
  int lost = 0;
  for (int i = 0; i < g_sig_n; i++) {
    if (ss_comm_pid_alive(g_sig_peer_pid[i])) continue;
    append(line, &n, sizeof line, lost++ ? ", " : "; lost rank(s): ");
    num[fmt_uint(num, (unsigned long)g_sig_peer_rank[i])] = '\0';
    append(line, &n, sizeof line, num);
    append(line, &n, sizeof line, " (pid ");
    num[fmt_uint(num, (unsigned long)g_sig_peer_pid[i])] = '\0';
    append(line, &n, sizeof line, num);
    append(line, &n, sizeof line, ")");
  }
  if (!lost)
    append(line, &n, sizeof line, "; no rank on this host is gone (a remote rank may have failed)");
  if (n + 1 < sizeof line) line[n++] = '\n';
  ssize_t w = write(STDERR_FILENO, line, n);
  (void)w;
  errno = saved;
  _exit(1);
}

int ss_comm_install_signal_handlers(ss_comm *c) {
  if (!c) return ss_error(SS_ERR_INVALID, "ss_comm_install_signal_handlers: no communicator");
  const ss_comm_peers *p = c->ctx && strcmp(c->backend, "self") != 0 ? c->ctx : NULL;
  int n = p ? p->n_local : 0;
  int *ranks = malloc(sizeof(int) * (size_t)(n ? n : 1));
  pid_t *pids = malloc(sizeof(pid_t) * (size_t)(n ? n : 1));
  if (!ranks || !pids) {
    free(ranks);
    free(pids);
    return ss_error(SS_ERR_NOMEM, "rank %d: signal handler peer table", c->rank);
  }
  for (int i = 0; i < n; i++) {
    ranks[i] = p->local[i];
    pids[i] = p->pid[p->local[i]];
  }
  /* Block the signals while swapping the table so the handler never sees half
   * of it; the old table leaks by design (a handler may be reading it). */
  sigset_t set, old;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  sigprocmask(SIG_BLOCK, &set, &old);
  g_sig_rank = c->rank;
  g_sig_peer_rank = ranks;
  g_sig_peer_pid = pids;
  g_sig_n = n;
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_term;
  sigemptyset(&sa.sa_mask);
  sigaddset(&sa.sa_mask, SIGTERM);
  sigaddset(&sa.sa_mask, SIGINT);
  int rc = sigaction(SIGTERM, &sa, NULL) | sigaction(SIGINT, &sa, NULL);
  sigprocmask(SIG_SETMASK, &old, NULL);
  if (rc) return ss_error(SS_ERR_INTERNAL, "rank %d: sigaction: %s", c->rank, strerror(errno));
  return SS_OK;
}
