/* --device for the commands that run a model: parsing, the default (cuda when
 * the build has CUDA and a GPU is present, else cpu), creating the backend
 * on this rank's GPU, and moving the model's weights there. */
#ifndef SS_LAUNCHER_DEVICE_H
#define SS_LAUNCHER_DEVICE_H

#include <stdbool.h>

struct ss_backend;
struct ss_comm;
struct ss_model;

typedef enum ss_cli_device {
  SS_CLI_DEVICE_AUTO = 0,
  SS_CLI_DEVICE_CPU,
  SS_CLI_DEVICE_CUDA,
} ss_cli_device;

/* The --device help lines, for usage texts. */
#define SS_CLI_DEVICE_HELP                                                                   \
  "      --device D          cpu or cuda (default: cuda when this build has CUDA and a\n"    \
  "                          GPU is present, else cpu); with cuda, one GPU per rank\n"       \
  "                          (the rank's index on its node) and NCCL between ranks\n"

/* "cpu", "cuda", "auto".  On a bad value prints a usage error, returns false. */
bool ss_cli_device_parse(const char *cmd, const char *s, ss_cli_device *out);
/* --activations exact|q8 (q8: the CPU's opt-in 8-bit activation path). */
bool ss_cli_activations_parse(const char *cmd, const char *s, bool *q8);
/* Applies --activations to a created backend (q8 needs the CPU backend). */
int ss_cli_activations_apply(const char *cmd, struct ss_backend *be, bool q8);
/* --kv-cache-dtype NAME (f32, bf16, f16, fp8_e4m3): *out = its ss_dtype.
 * False after a usage message for another name. */
bool ss_cli_kv_dtype_parse(const char *cmd, const char *s, int *out);
/* The KV cache type on be: `given` (an ss_dtype), or when it is -1 (no
 * --kv-cache-dtype) bf16 where the backend has kernels for it, else f32.
 * SS_EXIT_FAIL with a message for a type the backend refuses. */
int ss_cli_kv_dtype_resolve(const char *cmd, struct ss_backend *be, int given, int *out);
/* Resolves auto, and checks cuda is possible here: returns an exit status
 * (0, or 1 with the error printed: "--device cuda: ..."). */
int ss_cli_device_resolve(const char *cmd, ss_cli_device *dev);
/* The backend for a resolved device: cpu with `threads` threads, or the GPU
 * of this rank (comm's local rank, 0 alone).  Prints the error; exit status. */
int ss_cli_backend_create(const char *cmd, ss_cli_device dev, int threads,
                          const struct ss_comm *comm, struct ss_backend **out);
/* Uploads the model's weights when the backend is a device.  Exit status. */
int ss_cli_model_to_backend(const char *cmd, struct ss_model *m, struct ss_backend *be);

#endif
