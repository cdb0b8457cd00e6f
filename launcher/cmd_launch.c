/* shardserve launch: one command over N ranks.  Builds the mpirun line a user
 * would otherwise have to remember (root variables, oversubscription and
 * yielding when ranks outnumber cores, binding, hosts), prints it, and runs it.
 *
 * Stopping.  mpirun answers SIGINT/SIGTERM by killing every rank within about
 * a second, which leaves no time for the server to drain.  So mpirun runs as
 * a child, for `serve` in a process group of its own (a Ctrl-C at the terminal
 * reaches only this process), and for `serve` the first SIGINT/SIGTERM is
 * passed on as SIGUSR1,
 * which mpirun forwards to every rank on every host: rank 0 drains (finishes
 * in-flight requests, then stops the workers), the workers ignore it, and the
 * job ends with rank 0's exit status.  A second signal is passed on as SIGTERM
 * (mpirun's own stop: the ranks are killed).  For other commands every signal
 * is passed on as it came. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "launcher/cli.h"

static const char *k_cmd = "launch";

static volatile sig_atomic_t g_last_signal, g_n_signals;

static void on_stop_signal(int sig) {
  g_last_signal = sig;
  g_n_signals++;
}

/* Runs av as a child in its own process group, passing stop signals on (see
 * the top of this file); returns the exit status to give. */
static int run_mpirun(char **av, bool drain) {
  struct sigaction sa = {.sa_handler = on_stop_signal}, old_int, old_term;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, &old_int);
  sigaction(SIGTERM, &sa, &old_term);
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) return ss_cli_fail(k_cmd, "pipe: %s", strerror(errno));
  const pid_t parent = getpid();
  pid_t pid = fork();
  if (pid < 0) return ss_cli_fail(k_cmd, "fork: %s", strerror(errno));
  if (pid == 0) {
    sigaction(SIGINT, &old_int, NULL);
    sigaction(SIGTERM, &old_term, NULL);
    /* Only a server's mpirun leaves the terminal's process group: another
     * command's mpirun forwards stdin, which a background group cannot read.
     * Either way it gets SIGTERM (its own stop) when this process dies, so a
     * launcher killed outright leaves no job behind. */
    if (drain) setpgid(0, 0);
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (getppid() != parent) _exit(SS_EXIT_FAIL);
    close(fds[0]);
    execvp(av[0], av);
    int e = errno;
    ssize_t w = write(fds[1], &e, sizeof e);
    (void)w;
    _exit(127);
  }
  /* The child writes errno to the pipe only when exec fails; exec closes it. */
  close(fds[1]);
  int exec_errno = 0;
  ssize_t r;
  while ((r = read(fds[0], &exec_errno, sizeof exec_errno)) < 0 && errno == EINTR) {}
  close(fds[0]);
  if (r == (ssize_t)sizeof exec_errno) {
    waitpid(pid, NULL, 0);
    errno = exec_errno;
    return -1;
  }
  int handled = 0, status = 0;
  for (;;) {
    while (handled < g_n_signals) {
      const int sig = g_last_signal;
      handled++;
      const char *name = sig == SIGINT ? "SIGINT" : "SIGTERM";
      if (drain && handled == 1) {
        fprintf(stderr, "shardserve launch: %s: asking rank 0 to drain (SIGUSR1 through "
                "mpirun); a second signal stops the ranks at once\n", name);
        kill(pid, SIGUSR1);
      } else {
        fprintf(stderr, "shardserve launch: %s: passing %s to mpirun\n", name,
                drain ? "SIGTERM" : name);
        kill(pid, drain ? SIGTERM : sig);
      }
    }
    pid_t w = waitpid(pid, &status, WNOHANG);
    if (w == pid) break;
    if (w < 0 && errno != EINTR) return ss_cli_fail(k_cmd, "waitpid: %s", strerror(errno));
    struct timespec ts = {.tv_sec = 0, .tv_nsec = 50 * 1000 * 1000};
    nanosleep(&ts, NULL);
  }
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return SS_EXIT_FAIL;
}

static void usage(FILE *f) {
  fprintf(f,
          "Usage: shardserve launch --tp N [--hostfile F | --hosts H:S,H:S...] [--bind B]\n"
          "                         [--mpirun PATH] [--dry-run] -- COMMAND [FLAGS...]\n"
          "\n"
          "Runs `shardserve COMMAND FLAGS...` as N MPI ranks (one per GPU on a GPU machine)\n"
          "through Open MPI's mpirun, printing the full mpirun line first.  Each rank finds\n"
          "its place from MPI; the command's --tp defaults to the number of ranks.\n"
          "\n"
          "  --tp N           ranks (tensor-parallel degree)\n"
          "  --pp N           pipeline stages of --tp ranks each (N x tp ranks; give the\n"
          "                   command the same --pp and --tp)\n"
          "  --hostfile F     an Open MPI hostfile (\"node1 slots=8\" per line)\n"
          "  --hosts LIST     hosts and slots, e.g. node1:8,node2:8\n"
          "  --bind B         none (default), core or socket: mpirun's --bind-to\n"
          "  --mpirun PATH    the mpirun to use (default: mpirun from PATH)\n"
          "  --dry-run        print the line and exit\n"
          "\n"
          "Without hosts, all ranks run here; when they outnumber the cores, mpirun gets\n"
          "--oversubscribe and --mca mpi_yield_when_idle 1 (busy-polling ranks sharing a\n"
          "core otherwise slow each other down many times over).  As root, the variables\n"
          "Open MPI requires (OMPI_ALLOW_RUN_AS_ROOT, ..._CONFIRM) are set and forwarded.\n"
          "\n"
          "SIGINT/SIGTERM to launch: a server drains (rank 0 finishes in-flight requests,\n"
          "then the job exits 0); a second signal stops every rank at once.  Other commands\n"
          "get the signal as it came.\n"
          "\n"
          "Example: shardserve launch --tp 2 -- generate --prompt \"Hello\" -n 32\n");
}

int ss_cmd_launch(int argc, char **argv) {
  int64_t tp = 0, pp = 1;
  const char *hostfile = NULL, *hosts = NULL, *bind = "none", *mpirun = "mpirun";
  bool dry = false;
  enum { O_TP = 256, O_PP, O_HOSTFILE, O_HOSTS, O_BIND, O_MPIRUN, O_DRY };
  static const struct option opts[] = {
      {"tp", required_argument, 0, O_TP},         {"pp", required_argument, 0, O_PP},
      {"hostfile", required_argument, 0, O_HOSTFILE},
      {"hosts", required_argument, 0, O_HOSTS},   {"bind", required_argument, 0, O_BIND},
      {"mpirun", required_argument, 0, O_MPIRUN}, {"dry-run", no_argument, 0, O_DRY},
      {"help", no_argument, 0, 'h'},              {0, 0, 0, 0},
  };
  optind = 1;
  opterr = 0;
  int c;
  /* '+': stop at the first non-option, so the command's own flags pass through. */
  while ((c = getopt_long(argc, argv, "+:h", opts, NULL)) != -1) {
    switch (c) {
    case O_TP:
      if (!ss_cli_parse_int(k_cmd, "--tp", optarg, 1, 65536, &tp)) return SS_EXIT_USAGE;
      break;
    case O_PP:
      if (!ss_cli_parse_int(k_cmd, "--pp", optarg, 1, 256, &pp)) return SS_EXIT_USAGE;
      break;
    case O_HOSTFILE: hostfile = optarg; break;
    case O_HOSTS: hosts = optarg; break;
    case O_BIND:
      if (strcmp(optarg, "none") && strcmp(optarg, "core") && strcmp(optarg, "socket"))
        return ss_cli_usage(k_cmd, "invalid value '%s' for --bind: expected none, core or socket",
                            optarg);
      bind = optarg;
      break;
    case O_MPIRUN: mpirun = optarg; break;
    case O_DRY: dry = true; break;
    case 'h': usage(stdout); return SS_EXIT_OK;
    case ':': return ss_cli_usage(k_cmd, "option '%s' needs a value", argv[optind - 1]);
    default: return ss_cli_usage(k_cmd, "unknown option '%s'", argv[optind - 1]);
    }
  }
  if (tp == 0) return ss_cli_usage(k_cmd, "--tp N is required");
  tp *= pp; /* pipeline stages of tp ranks each: pp x tp ranks in all */
  if (hostfile && hosts) return ss_cli_usage(k_cmd, "give --hostfile or --hosts, not both");
  if (optind >= argc) return ss_cli_usage(k_cmd, "no command to run: put it after --");
  if (strcmp(argv[optind], "launch") == 0)
    return ss_cli_usage(k_cmd, "the command to run cannot be 'launch' itself");
  if (hostfile && access(hostfile, R_OK) != 0)
    return ss_cli_fail(k_cmd, "%s: cannot read the hostfile", hostfile);

  char self[PATH_MAX];
  ssize_t k = readlink("/proc/self/exe", self, sizeof self - 1);
  if (k <= 0) return ss_cli_fail(k_cmd, "cannot find the path of this program");
  self[k] = 0;

  long cores = sysconf(_SC_NPROCESSORS_ONLN);
  bool local = !hostfile && !hosts;
  bool over = local && cores > 0 && tp > cores;
  bool root = geteuid() == 0;
  if (root) {
    setenv("OMPI_ALLOW_RUN_AS_ROOT", "1", 1);
    setenv("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1", 1);
  }

  const int max_args = 32 + (argc - optind);
  char **av = calloc((size_t)max_args + 1, sizeof *av);
  if (!av) return ss_cli_fail(k_cmd, "out of memory");
  char np[24];
  snprintf(np, sizeof np, "%lld", (long long)tp);
  int n = 0;
  av[n++] = (char *)mpirun;
  av[n++] = "-np";
  av[n++] = np;
  if (hostfile) av[n++] = "--hostfile", av[n++] = (char *)hostfile;
  if (hosts) av[n++] = "--host", av[n++] = (char *)hosts;
  if (over) {
    av[n++] = "--oversubscribe";
    av[n++] = "--mca", av[n++] = "mpi_yield_when_idle", av[n++] = "1";
  }
  av[n++] = "--bind-to", av[n++] = (char *)bind;
  /* mpirun runs in a process group of its own, which must not read the
   * terminal; a server reads nothing from stdin. */
  const bool serve = strcmp(argv[optind], "serve") == 0;
  if (serve) av[n++] = "--stdin", av[n++] = "none";
  if (root) av[n++] = "-x", av[n++] = "OMPI_ALLOW_RUN_AS_ROOT", av[n++] = "-x",
            av[n++] = "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM";
  av[n++] = self;
  for (int i = optind; i < argc; i++) av[n++] = argv[i];
  av[n] = NULL;

  fprintf(stderr, "shardserve launch:");
  for (int i = 0; i < n; i++) {
    bool quote = strpbrk(av[i], " \t\"'$`\\") != NULL || !*av[i];
    fprintf(stderr, quote ? " '%s'" : " %s", av[i]);
  }
  fputc('\n', stderr);
  if (over)
    fprintf(stderr, "shardserve launch: %lld ranks on %ld cores: oversubscribing, ranks yield "
            "when idle\n", (long long)tp, cores);
  if (dry) {
    free(av);
    return SS_EXIT_OK;
  }
  fflush(stderr);
  int rc = run_mpirun(av, serve);
  int e = errno;
  free(av);
  if (rc >= 0) return rc;
  return ss_cli_fail(k_cmd, "cannot run '%s': %s (is Open MPI installed? scripts/setup.sh "
                     "installs it)", mpirun, strerror(e));
}
