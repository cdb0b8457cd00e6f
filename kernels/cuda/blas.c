/* cuBLAS, loaded when the first CUDA backend is created rather than linked:
 * libcublasLt is half a gigabyte, and merely loading it costs every process
 * ~200 MB of resident memory and start-up time, GPU or not (the CPU-only
 * commands and the tensor-parallel memory checks would pay for it). */
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>

#include "kernels/cuda/cuda_ctx.h"

ss_cublas_api ss_cublas;

static pthread_once_t g_once = PTHREAD_ONCE_INIT;
static char g_err[256];

static void load(void) {
  static const char *names[] = {"libcublas.so.13", "libcublas.so.12", "libcublas.so"};
  void *h = NULL;
  for (size_t i = 0; i < sizeof names / sizeof *names && !h; i++) h = dlopen(names[i], RTLD_NOW);
  if (!h) {
    snprintf(g_err, sizeof g_err, "cannot load cuBLAS (libcublas.so): %s", dlerror());
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
