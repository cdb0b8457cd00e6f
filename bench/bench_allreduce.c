/* All-reduce benchmark: the comm layer against a raw blocking MPI_Allreduce
 * measured in the same run, with nccl-tests' flags and columns.
 *
 *   mpirun -np 2 build/ss_bench_allreduce -b 4 -e 64M -f 2 -n 20 -w 5 -c 1 -d f32
 *
 * For each size: `-w` warm-up calls, then `-r` repeats of up to `-n` calls
 * (fewer for large sizes, so a repeat lasts about 0.2 s), alternating the comm
 * layer and raw MPI so that drift hits both alike.  A repeat's time per call is
 * the slowest rank's; the table shows the median over repeats and the min/max
 * spread.  algbw = bytes / time; busbw = algbw * 2(n-1)/n (nccl-tests' bus
 * bandwidth for all-reduce).  With -c 1 the result of one call on verifiable
 * data (small integers times powers of two: exact in every type) is checked
 * element by element and #wrong printed.
 *
 * The raw baseline for f16/bf16 is MPI_Allreduce with a user-defined op on
 * 16-bit elements (MPI has no 16-bit float sum); the comm layer widens to f32. */
#include <math.h>
#include <mpi.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "comm/comm.h"
#include "runtime/base/clock.h"
#include "runtime/base/status.h"

#ifdef SS_HAVE_NCCL
#include <cuda_runtime_api.h>
#endif

#ifndef SS_SOURCE_DIR
#define SS_SOURCE_DIR "."
#endif

typedef struct bench_opts {
  size_t min_nbytes, max_nbytes;
  double factor;
  int iters, warmup, repeats;
  int check;
  ss_dtype type;
  ss_comm_kind kind;
  bool deterministic;
} bench_opts;

static size_t parse_size(const char *s) {
  char *end;
  double v = strtod(s, &end);
  switch (*end) {
  case 'k': case 'K': v *= 1024; break;
  case 'm': case 'M': v *= 1024 * 1024; break;
  case 'g': case 'G': v *= 1024.0 * 1024 * 1024; break;
  default: break;
  }
  return (size_t)v;
}

static void usage(void) {
  fprintf(stderr,
          "usage: ss_bench_allreduce [-b MINBYTES] [-e MAXBYTES] [-f FACTOR] [-n ITERS]\n"
          "         [-w WARMUP] [-r REPEATS] [-c 0|1] [-d f32|f16|bf16]\n"
          "         [--backend mpi|nccl|self] [--deterministic]\n");
}

static size_t elem_nbytes(ss_dtype t) { return t == SS_DTYPE_F32 ? 4 : 2; }

/* ---- verifiable data ----------------------------------------------------- */

static float vvalue(int r, size_t i) {
  int q = (int)((r * 7 + (i % 1021) * 13) % 17) - 8;
  return ldexpf((float)q, (int)(i % 5) - 2);
}

static void put(void *buf, size_t i, ss_dtype t, float v) {
  if (t == SS_DTYPE_F32) ((float *)buf)[i] = v;
  else if (t == SS_DTYPE_F16) ((uint16_t *)buf)[i] = ss_f32_to_f16(v);
  else ((uint16_t *)buf)[i] = ss_f32_to_bf16(v);
}

static float get(const void *buf, size_t i, ss_dtype t) {
  if (t == SS_DTYPE_F32) return ((const float *)buf)[i];
  if (t == SS_DTYPE_F16) return ss_f16_to_f32(((const uint16_t *)buf)[i]);
  return ss_bf16_to_f32(((const uint16_t *)buf)[i]);
}

/* ---- the raw MPI baseline ------------------------------------------------- */

static ss_dtype g_op_type;

static void sum16(void *in, void *inout, int *len, MPI_Datatype *dt) {
  const uint16_t *a = in;
  uint16_t *b = inout;
  for (int i = 0; i < *len; i++) {
    float s = get(a, (size_t)i, g_op_type) + get(b, (size_t)i, g_op_type);
    put(b, (size_t)i, g_op_type, s);
  }
}

static MPI_Op g_sum16;

static int raw_allreduce(void *buf, size_t count, ss_dtype t) {
  if (t == SS_DTYPE_F32)
    return MPI_Allreduce(MPI_IN_PLACE, buf, (int)count, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
  return MPI_Allreduce(MPI_IN_PLACE, buf, (int)count, MPI_UINT16_T, g_sum16, MPI_COMM_WORLD);
}

/* ---- buffers: host, or device for nccl ------------------------------------ */

static void *buf_alloc(const bench_opts *o, size_t nbytes) {
#ifdef SS_HAVE_NCCL
  if (o->kind == SS_COMM_NCCL) {
    void *p = NULL;
    if (cudaMalloc(&p, nbytes ? nbytes : 1) != cudaSuccess) return NULL;
    cudaMemset(p, 0, nbytes);
    return p;
  }
#endif
  return calloc(1, nbytes ? nbytes : 1);
}

static void buf_free(const bench_opts *o, void *p) {
#ifdef SS_HAVE_NCCL
  if (o->kind == SS_COMM_NCCL) {
    cudaFree(p);
    return;
  }
#endif
  free(p);
}

static void buf_copy(const bench_opts *o, void *dst, const void *src, size_t nbytes, int to_dev) {
#ifdef SS_HAVE_NCCL
  if (o->kind == SS_COMM_NCCL) {
    cudaMemcpy(dst, src, nbytes, to_dev ? cudaMemcpyHostToDevice : cudaMemcpyDeviceToHost);
    return;
  }
#endif
  memcpy(dst, src, nbytes);
}

/* ---- timing --------------------------------------------------------------- */

/* Seconds per call for `iters` calls, the slowest rank's; < 0 on error. */
static double time_calls(ss_comm *c, bool raw, void *buf, size_t count, ss_dtype t, int iters) {
  MPI_Barrier(MPI_COMM_WORLD);
  double t0 = ss_now_s();
  int bad = 0;
  for (int i = 0; i < iters && !bad; i++)
    bad = raw ? raw_allreduce(buf, count, t) != MPI_SUCCESS
              : ss_comm_allreduce_sum(c, buf, count, t) != 0;
  double dt = (ss_now_s() - t0) / iters, worst;
  if (bad) {
    fprintf(stderr, "rank %d: %s\n", c->rank, raw ? "MPI_Allreduce failed" : ss_error_msg());
    dt = -1e30;
  }
  MPI_Allreduce(&dt, &worst, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  return worst;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

typedef struct stats {
  double med, min, max;
} stats;

static stats summarize(double *v, int n) {
  qsort(v, (size_t)n, sizeof *v, cmp_double);
  stats s = {n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]), v[0], v[n - 1]};
  return s;
}

/* ---- header --------------------------------------------------------------- */

static void machine(char *model, size_t len, long *cores) {
  snprintf(model, len, "unknown CPU");
  FILE *f = fopen("/proc/cpuinfo", "r");
  char line[512];
  while (f && fgets(line, sizeof line, f))
    if (strncmp(line, "model name", 10) == 0) {
      char *p = strchr(line, ':');
      if (p) {
        p += 2;
        p[strcspn(p, "\n")] = '\0';
        snprintf(model, len, "%s", p);
      }
      break;
    }
  if (f) fclose(f);
  *cores = sysconf(_SC_NPROCESSORS_ONLN);
}

static void commit(char *out, size_t len) {
  snprintf(out, len, "unknown");
  FILE *p = popen("git -C '" SS_SOURCE_DIR "' rev-parse --short HEAD 2>/dev/null", "r");
  if (p) {
    if (fgets(out, (int)len, p)) out[strcspn(out, "\n")] = '\0';
    pclose(p);
  }
  p = popen("git -C '" SS_SOURCE_DIR "' status --porcelain --untracked-files=no 2>/dev/null", "r");
  if (p) {
    char tmp[8];
    if (fgets(tmp, sizeof tmp, p) && strlen(out) + 7 < len) strcat(out, "-dirty");
    pclose(p);
  }
}

/* ---- main ----------------------------------------------------------------- */

int main(int argc, char **argv) {
  bench_opts o = {.min_nbytes = 4, .max_nbytes = 64u << 20, .factor = 2, .iters = 20,
                  .warmup = 5, .repeats = 5, .check = 1, .type = SS_DTYPE_F32,
                  .kind = SS_COMM_MPI};
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (strcmp(a, "--deterministic") == 0) { o.deterministic = true; continue; }
    if (!v) { usage(); return 2; }
    i++;
    if (strcmp(a, "-b") == 0) o.min_nbytes = parse_size(v);
    else if (strcmp(a, "-e") == 0) o.max_nbytes = parse_size(v);
    else if (strcmp(a, "-f") == 0) o.factor = atof(v);
    else if (strcmp(a, "-n") == 0) o.iters = atoi(v);
    else if (strcmp(a, "-w") == 0) o.warmup = atoi(v);
    else if (strcmp(a, "-r") == 0) o.repeats = atoi(v);
    else if (strcmp(a, "-c") == 0) o.check = atoi(v);
    else if (strcmp(a, "-d") == 0) {
      if (strcmp(v, "f32") == 0) o.type = SS_DTYPE_F32;
      else if (strcmp(v, "f16") == 0) o.type = SS_DTYPE_F16;
      else if (strcmp(v, "bf16") == 0) o.type = SS_DTYPE_BF16;
      else { usage(); return 2; }
    } else if (strcmp(a, "--backend") == 0) {
      if (strcmp(v, "mpi") == 0) o.kind = SS_COMM_MPI;
      else if (strcmp(v, "nccl") == 0) o.kind = SS_COMM_NCCL;
      else if (strcmp(v, "self") == 0) o.kind = SS_COMM_SELF;
      else { usage(); return 2; }
    } else { usage(); return 2; }
  }
  if (o.factor <= 1 || o.iters < 1 || o.repeats < 1 || o.min_nbytes < 1 ||
      o.max_nbytes < o.min_nbytes) {
    fprintf(stderr, "ss_bench_allreduce: need -f > 1, -n >= 1, -r >= 1, 1 <= -b <= -e\n");
    return 2;
  }

  /* MPI is ours here (the raw baseline needs it whatever the backend). */
  int provided;
  MPI_Init_thread(&argc, &argv, MPI_THREAD_SERIALIZED, &provided);
  int wrank, wsize;
  MPI_Comm_rank(MPI_COMM_WORLD, &wrank);
  MPI_Comm_size(MPI_COMM_WORLD, &wsize);
  g_op_type = o.type;
  MPI_Op_create(sum16, 1, &g_sum16);

  ss_comm_opts co = {.kind = o.kind, .deterministic = o.deterministic};
  ss_comm *c = NULL;
  if (ss_comm_init(&co, &c) != 0) {
    fprintf(stderr, "rank %d: %s\n", wrank, ss_error_msg());
    MPI_Abort(MPI_COMM_WORLD, 1);
  }
  int n = c->size;
  bool with_raw = o.kind != SS_COMM_NCCL; /* raw MPI cannot read device memory here */
  const char *tname = o.type == SS_DTYPE_F32 ? "f32" : o.type == SS_DTYPE_F16 ? "f16" : "bf16";

  if (wrank == 0) {
    char model[256], rev[64], date[64];
    long cores;
    machine(model, sizeof model, &cores);
    commit(rev, sizeof rev);
    time_t now = time(NULL);
    strftime(date, sizeof date, "%Y-%m-%d %H:%M:%S %Z", localtime(&now));
    printf("# ss_bench_allreduce: backend %s%s, %d ranks (%d on this host), %s | machine: %s, "
           "%ld cores | commit %s | %s\n",
           c->backend, o.deterministic ? " (deterministic)" : "", n, c->local_size, tname, model,
           cores, rev, date);
    printf("# %d warm-up, %d repeats of up to %d calls; time = median per call (slowest rank), "
           "min/max over repeats\n",
           o.warmup, o.repeats, o.iters);
    printf("#%10s %11s %5s | %10s %10s %10s %8s %8s %7s | %10s %8s %8s | %6s %6s\n", "", "", "",
           "ss_comm", "", "", "", "", "", "raw MPI", "", "", "ratio", "");
    printf("#%10s %11s %5s | %10s %10s %10s %8s %8s %7s | %10s %8s %8s | %6s %6s\n", "size(B)",
           "count", "type", "time(us)", "min(us)", "max(us)", "algbw", "busbw", "#wrong",
           "time(us)", "algbw", "busbw", "busbw", "time");
  }

  size_t es = elem_nbytes(o.type);
  double *tc = malloc(sizeof(double) * (size_t)o.repeats);
  double *tr = malloc(sizeof(double) * (size_t)o.repeats);
  int status = 0;
  for (double sz = (double)o.min_nbytes; sz <= (double)o.max_nbytes * 1.0000001; sz *= o.factor) {
    size_t count = (size_t)sz / es;
    if (count == 0) count = 1;
    size_t nbytes = count * es;
    void *buf = buf_alloc(&o, nbytes), *rbuf = with_raw ? calloc(1, nbytes) : NULL;
    if (!buf || (with_raw && !rbuf)) {
      fprintf(stderr, "rank %d: out of memory for %zu bytes\n", wrank, nbytes);
      MPI_Abort(MPI_COMM_WORLD, 1);
    }
    /* Warm-up, and from it the calls per repeat (the slowest rank decides). */
    double tw = time_calls(c, false, buf, count, o.type, o.warmup > 0 ? o.warmup : 1);
    if (with_raw) time_calls(c, true, rbuf, count, o.type, o.warmup > 0 ? o.warmup : 1);
    if (tw < 0) {
      status = 1;
      break;
    }
    int iters = o.iters;
    if (tw * iters > 0.2) iters = (int)(0.2 / tw) > 1 ? (int)(0.2 / tw) : 1;
    for (int r = 0; r < o.repeats; r++) {
      tc[r] = time_calls(c, false, buf, count, o.type, iters);
      tr[r] = with_raw ? time_calls(c, true, rbuf, count, o.type, iters) : 0;
    }
    stats sc = summarize(tc, o.repeats), sr = summarize(tr, o.repeats);

    long wrong = -1;
    if (o.check) {
      void *h = malloc(nbytes);
      for (size_t i = 0; i < count; i++) put(h, i, o.type, vvalue(wrank, i));
      buf_copy(&o, buf, h, nbytes, 1);
      int rc = ss_comm_allreduce_sum(c, buf, count, o.type);
      buf_copy(&o, h, buf, nbytes, 0);
      long bad = rc != 0 ? (long)count : 0;
      for (size_t i = 0; i < count && rc == 0; i++) {
        float want = 0;
        for (int k = 0; k < n; k++) want += vvalue(k, i);
        bad += get(h, i, o.type) != want;
      }
      MPI_Allreduce(&bad, &wrong, 1, MPI_LONG, MPI_SUM, MPI_COMM_WORLD);
      if (wrong) status = 1;
      free(h);
    }
    if (wrank == 0) {
      double bus = n > 1 ? 2.0 * (n - 1) / n : 0;
      double alg_c = (double)nbytes / sc.med / 1e9, alg_r = with_raw ? (double)nbytes / sr.med / 1e9 : 0;
      char wr[32] = "N/A";
      if (wrong >= 0) snprintf(wr, sizeof wr, "%ld", wrong);
      printf(" %10zu %11zu %5s | %10.2f %10.2f %10.2f %8.3f %8.3f %7s |", nbytes, count, tname,
             sc.med * 1e6, sc.min * 1e6, sc.max * 1e6, alg_c, alg_c * bus, wr);
      if (with_raw)
        printf(" %10.2f %8.3f %8.3f | %6.3f %6.3f\n", sr.med * 1e6, alg_r, alg_r * bus,
               alg_r > 0 ? alg_c / alg_r : 0, sc.med / sr.med);
      else
        printf(" %10s %8s %8s | %6s %6s\n", "-", "-", "-", "-", "-");
      fflush(stdout);
    }
    buf_free(&o, buf);
    free(rbuf);
  }
  free(tc);
  free(tr);
  ss_comm_free(c);
  MPI_Op_free(&g_sum16);
  MPI_Finalize();
  return status;
}
