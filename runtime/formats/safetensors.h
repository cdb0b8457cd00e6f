/* Hugging Face safetensors: one file, or a folder of shards listed by
 * model.safetensors.index.json, opened as one set of named tensors.
 *
 * A file is an 8-byte little-endian header length N, N bytes of JSON
 * ({"name": {"dtype", "shape", "data_offsets": [begin, end]}, ...,
 * "__metadata__": {...}}), then the data section, to which the offsets are
 * relative.  Files are mapped read-only and tensors used in place, so a rank
 * touches only the pages of the slices it reads.
 *
 * Every header is checked before any tensor is used: N at most 100 MB (the
 * limit of the reference implementation) and inside the file, valid JSON
 * without duplicate keys, a known dtype, non-negative dimensions whose product
 * times the element size fits in 64 bits and equals end - begin, offsets
 * ordered, inside the data section and not overlapping another tensor's.  A
 * failure is SS_ERR_FORMAT (SS_ERR_UNSUPPORTED for an unknown dtype) with a
 * message naming the file and the tensor or field. */
#ifndef SS_SAFETENSORS_H
#define SS_SAFETENSORS_H

#include <stdbool.h>
#include <stdint.h>

#include "runtime/base/dtype.h"

#define SS_ST_MAX_DIMS 8
/* The reference implementation's MAX_HEADER_SIZE (safetensors/src/tensor.rs). */
#define SS_ST_MAX_HEADER_NBYTES 100000000ull

typedef struct ss_st_tensor {
  char *name;
  char dtype_name[16];          /* as written in the header ("BF16", "I64", ...) */
  ss_dtype type;                /* our type; SS_DTYPE_COUNT_ when we have none */
  uint32_t elem_nbytes;
  int n_dims;
  int64_t shape[SS_ST_MAX_DIMS]; /* row-major: shape[n_dims - 1] is contiguous */
  uint64_t offset;              /* absolute, in its file */
  uint64_t nbytes;
  int file;                     /* index into ss_st_set.files; -1 for a joined tensor */
  const void *data;             /* into the mapping (joined: see below) */
  /* A checkpoint cut per rank ahead of time stores a split tensor as one
   * piece of equal shape in each rank file.  Such a tensor has n_pieces > 0
   * (pieces in rank order) and, until ss_st_join names its whole shape, the
   * shape of one piece, split_dim -1 and data NULL.  Once joined, shape is the
   * whole tensor's and data the start of an address range reserved for it
   * (no memory, unreadable): weights bound to it keep a pointer like any
   * other, ss_st_containing finds the tensor again, and ss_st_read reads it. */
  int n_pieces;
  int split_dim;
  struct ss_st_tensor *pieces;
} ss_st_tensor;

typedef struct ss_st_file {
  char *path;
  const uint8_t *map;
  uint64_t size;
  uint64_t header_nbytes;
  int rank; /* cut per rank: the NNN of *-TP-NNN.safetensors; -1 for *-TP-common */
} ss_st_file;

typedef struct ss_st_set {
  char *dir;            /* the folder (or the file, for a single file) */
  int n_files;
  ss_st_file *files;
  int64_t n_tensors;
  ss_st_tensor *tensors; /* sorted by name */
  /* Cut per rank ahead of time, as xai-org/grok-2 is published and sglang's
   * grok.py loads it (*-TP-common.safetensors, each rank's part in
   * *-TP-NNN.safetensors for NNN = 000..n_ranks-1; any number of files of
   * each, e.g. pytorch_model-00000-TP-common.safetensors): n_ranks > 0. */
  int n_ranks;
} ss_st_set;

/* Opens `dir`/model.safetensors, or every shard named by
 * `dir`/model.safetensors.index.json (whose weight_map must agree with the
 * shards' headers), or `dir` itself when it is a .safetensors file. */
/* A folder holding *-TP-common.safetensors files is opened as a checkpoint
 * cut per rank: every tensor is once in the common files, or once in each
 * rank's files, as pieces of one dtype and one shape. */
int ss_st_open(const char *dir, ss_st_set **out);
void ss_st_close(ss_st_set *s);

/* NULL when absent. */
const ss_st_tensor *ss_st_find(const ss_st_set *s, const char *name);

/* Joins the pieces of tensor `name` (nothing to do for a tensor that is not
 * cut, or one already joined) as a tensor of `n_dims` dimensions `shape`: the
 * pieces must give it laid end to end along one dimension.  Errors name the
 * tensor, the piece shape, the rank count and the expected shape. */
int ss_st_join(ss_st_set *s, const char *name, int n_dims, const int64_t *shape);

/* The joined tensor whose reserved range holds p, or NULL. */
const ss_st_tensor *ss_st_containing(const ss_st_set *s, const void *p);

/* Rows [r0, r1) and columns [c0, c1) of a joined 2-dimensional tensor, read
 * from its pieces' files into dst (row-major, (r1 - r0) x (c1 - c0)). */
int ss_st_read(const ss_st_set *s, const ss_st_tensor *t, int64_t r0, int64_t r1, int64_t c0,
               int64_t c1, void *dst);

/* Element count (the product of the shape; 1 for a scalar). */
int64_t ss_st_numel(const ss_st_tensor *t);

#endif
