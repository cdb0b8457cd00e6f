/* Which of the GPUs a rank sees it uses: its node-local rank modulo the number
 * visible.  A rank that sees one GPU (per-rank CUDA_VISIBLE_DEVICES, srun
 * --gpus-per-task=1) uses GPU 0 of its view; ranks that each see all of a
 * node's GPUs take one each.  Shared by the NCCL communicator and the CUDA
 * backend, so both pick the same device. */
#ifndef SS_GPU_INDEX_H
#define SS_GPU_INDEX_H

/* The device index, or -1 when there is none (n_visible 0) or ranks would
 * share one (more local ranks than GPUs, with more than one GPU visible). */
static inline int ss_gpu_for_rank(int local_rank, int local_size, int n_visible) {
  if (n_visible <= 0 || local_rank < 0) return -1;
  if (n_visible > 1 && local_size > n_visible) return -1;
  return local_rank % n_visible;
}

#endif
