/* cuBLAS, loaded when the first CUDA backend is created rather than linked:
 * libcublasLt is half a gigabyte, and merely loading it costs every process
 * ~200 MB of resident memory and start-up time, GPU or not (the CPU-only
 * commands and the tensor-parallel memory checks would pay for it). */
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cuda/cuda_ctx.h"

ss_cublas_api ss_cublas;

static pthread_once_t g_once = PTHREAD_ONCE_INIT;
static char g_err[256];

/* Tries one path; keeps the first loader error for the message. */
static void *try_open(const char *path, char *first_err, size_t cap) {
  void *h = dlopen(path, RTLD_NOW);
  if (!h && !first_err[0]) snprintf(first_err, cap, "%s", dlerror());
  return h;
}

/* cuBLAS of the CUDA major this build's runtime belongs to (mixing majors in
 * one process is unsupported): $SS_CUBLAS when set (a path); else
 * libcublas.so.<major> through the loader's search path; else beside the CUDA
 * runtime library this process loaded, and in the toolkit's library folder
 * of the build. */
static void load(void) {
  char name[32], err[256] = "", tried[160];
  const int major = CUDART_VERSION / 1000;
  snprintf(name, sizeof name, "libcublas.so.%d", major);
  void *h = NULL;
  const char *env = getenv("SS_CUBLAS");
  if (env && *env) {
    if (!(h = try_open(env, err, sizeof err))) {
      snprintf(g_err, sizeof g_err, "cannot load cuBLAS from SS_CUBLAS=%s: %s", env, err);
      return;
    }
  }
  if (!h) h = try_open(name, err, sizeof err);
  Dl_info info;
  if (!h && dladdr((void *)&cudaRuntimeGetVersion, &info) && info.dli_fname) {
    const char *slash = strrchr(info.dli_fname, '/');
    if (slash) {
      char path[1024];
      snprintf(path, sizeof path, "%.*s/%s", (int)(slash - info.dli_fname), info.dli_fname, name);
      h = try_open(path, err, sizeof err);
    }
  }
#ifdef SS_CUDA_LIBDIR
  if (!h) {
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", SS_CUDA_LIBDIR, name);
    h = try_open(path, err, sizeof err);
  }
#endif
  if (!h) {
    snprintf(tried, sizeof tried, "%s (CUDA %d, as this build's runtime)", name, major);
    snprintf(g_err, sizeof g_err, "cannot load cuBLAS %s: %s; set SS_CUBLAS to its path", tried,
             err);
    return;
  }
#define SYM(field, name)                                                                      \
  if (!(*(void **)&ss_cublas.field = dlsym(h, name))) {                                       \
    snprintf(g_err, sizeof g_err, "cuBLAS lacks %s", name);                                   \
    return;                                                                                   \
  }
  SYM(create, "cublasCreate_v2");
  SYM(destroy, "cublasDestroy_v2");
  SYM(set_stream, "cublasSetStream_v2");
  SYM(set_workspace, "cublasSetWorkspace_v2");
  SYM(gemm_ex, "cublasGemmEx");
  SYM(status_string, "cublasGetStatusString");
#undef SYM
  ss_cublas.loaded = true;
}

const char *ss_cublas_load(void) {
  pthread_once(&g_once, load);
  return ss_cublas.loaded ? NULL : g_err;
}
