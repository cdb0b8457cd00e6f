/* --device: see device.h. */
#include "launcher/device.h"

#include <string.h>

#include "comm/comm.h"
#include "kernels/kernels.h"
#include "launcher/cli.h"
#include "runtime/base/gpu_index.h"
#include "runtime/base/status.h"
#include "runtime/model/kv_cache.h"
#include "runtime/model/model.h"
#ifdef SS_HAVE_CUDA
#include "kernels/cuda/cuda.h"
#endif

bool ss_cli_device_parse(const char *cmd, const char *s, ss_cli_device *out) {
  if (strcmp(s, "cpu") == 0) *out = SS_CLI_DEVICE_CPU;
  else if (strcmp(s, "cuda") == 0 || strcmp(s, "gpu") == 0) *out = SS_CLI_DEVICE_CUDA;
  else if (strcmp(s, "auto") == 0) *out = SS_CLI_DEVICE_AUTO;
  else {
    ss_cli_usage(cmd, "--device must be cpu, cuda or auto (got '%s')", s);
    return false;
  }
  return true;
}

int ss_cli_device_resolve(const char *cmd, ss_cli_device *dev) {
#ifdef SS_HAVE_CUDA
  const int n_gpu = ss_cuda_device_count();
  if (*dev == SS_CLI_DEVICE_AUTO) *dev = n_gpu > 0 ? SS_CLI_DEVICE_CUDA : SS_CLI_DEVICE_CPU;
  if (*dev == SS_CLI_DEVICE_CUDA && n_gpu == 0)
    return ss_cli_fail(cmd, "--device cuda: no CUDA device is usable on this host (no GPU, no "
                       "driver, or CUDA_VISIBLE_DEVICES hides them); use --device cpu");
#else
  if (*dev == SS_CLI_DEVICE_AUTO) *dev = SS_CLI_DEVICE_CPU;
  if (*dev == SS_CLI_DEVICE_CUDA)
    return ss_cli_fail(cmd, "--device cuda: this build has no CUDA support (nvcc was not found "
                       "at configure time, or -DSS_CUDA=OFF); use --device cpu");
#endif
  return SS_EXIT_OK;
}

int ss_cli_backend_create(const char *cmd, ss_cli_device dev, int threads, const ss_comm *comm,
                          ss_backend **out) {
  *out = NULL;
  if (dev == SS_CLI_DEVICE_CUDA) {
#ifdef SS_HAVE_CUDA
    const int gpu = ss_gpu_for_rank(comm ? comm->local_rank : 0, comm ? comm->local_size : 1,
                                    ss_cuda_device_count());
    if (gpu < 0)
      return ss_cli_fail(cmd, "--device cuda: %d ranks on this host but each sees %d GPU(s): "
                         "launch at most that many ranks per host, or give each rank its own "
                         "GPU (CUDA_VISIBLE_DEVICES)",
                         comm ? comm->local_size : 1, ss_cuda_device_count());
    *out = ss_backend_cuda_create(gpu);
#else
    return ss_cli_fail(cmd, "--device cuda: this build has no CUDA support");
#endif
  } else {
    *out = ss_backend_cpu_create(threads);
  }
  if (!*out) return ss_cli_fail(cmd, "%s", ss_error_msg());
  return SS_EXIT_OK;
}

int ss_cli_model_to_backend(const char *cmd, ss_model *m, ss_backend *be) {
  if (!be->device) return SS_EXIT_OK;
  if (ss_model_upload(m, be)) return ss_cli_fail(cmd, "%s", ss_error_msg());
  return SS_EXIT_OK;
}

bool ss_cli_activations_parse(const char *cmd, const char *s, bool *q8) {
  if (strcmp(s, "exact") == 0) *q8 = false;
  else if (strcmp(s, "q8") == 0) *q8 = true;
  else {
    ss_cli_usage(cmd, "--activations: '%s' is not exact or q8", s);
    return false;
  }
  return true;
}

int ss_cli_activations_apply(const char *cmd, ss_backend *be, bool q8) {
  if (!q8) return SS_EXIT_OK;
  if (be->device) return ss_cli_fail(cmd, "--activations q8 is a CPU option (--device %s)", be->name);
  ss_backend_cpu_set_q8_activations(be, true);
  return SS_EXIT_OK;
}

bool ss_cli_kv_dtype_parse(const char *cmd, const char *s, int *out) {
  ss_dtype t;
  if (!ss_kv_dtype_parse(s, &t)) {
    ss_cli_usage(cmd, "invalid value '%s' for --kv-cache-dtype: expected f32, bf16, f16 or "
                 "fp8_e4m3", s);
    return false;
  }
  *out = (int)t;
  return true;
}

int ss_cli_kv_dtype_resolve(const char *cmd, ss_backend *be, int given, int *out) {
  if (given < 0) {
    const bool bf16 = be->kv_dtype_check && be->kv_dtype_check(be, SS_DTYPE_BF16) == SS_OK;
    *out = bf16 ? SS_DTYPE_BF16 : SS_DTYPE_F32;
    return SS_EXIT_OK;
  }
  if (given != SS_DTYPE_F32 && !be->kv_dtype_check)
    return ss_cli_fail(cmd, "--kv-cache-dtype %s: the %s backend holds f32 K/V only",
                       ss_kv_dtype_name((ss_dtype)given), be->name);
  if (be->kv_dtype_check && be->kv_dtype_check(be, (ss_dtype)given))
    return ss_cli_fail(cmd, "--kv-cache-dtype %s: %s", ss_kv_dtype_name((ss_dtype)given),
                       ss_error_msg());
  *out = given;
  return SS_EXIT_OK;
}
