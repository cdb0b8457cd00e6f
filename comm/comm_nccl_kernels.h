/* Device helpers of the NCCL backend (comm_nccl_kernels.cu), callable from C. */
#ifndef SS_COMM_NCCL_KERNELS_H
#define SS_COMM_NCCL_KERNELS_H

#include <stddef.h>

#include <cuda_runtime_api.h>

#ifdef __cplusplus
extern "C" {
#endif

/* out[k] = (((p0[k] + p1[k]) + ...) + p_{n-1}[k]) accumulated in f32 and
 * rounded once to the element type, where part i starts at parts + i*count
 * elements: the same left fold, in the same rounding, as the MPI backend's
 * deterministic all-reduce.  type is an ss_dtype id (F32, F16, BF16).  Queued
 * on stream; returns the launch's cudaError_t. */
int ss_comm_nccl_ordered_sum(const void *parts, int n, size_t count, int type, void *out,
                             cudaStream_t stream);

#ifdef __cplusplus
}
#endif

#endif
