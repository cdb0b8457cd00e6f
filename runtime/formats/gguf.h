/* GGUF reader (versions 2 and 3).
 *
 * The file is mapped read-only; metadata is parsed into a small tree whose
 * strings and fixed-size arrays point into the mapping, and tensor data is used
 * in place.  Every count, length and offset read from the file is checked
 * against the file size in 64-bit arithmetic before it is used, so a truncated
 * or hostile file yields SS_ERR_FORMAT with a message naming the file and the
 * field, never a crash or an unbounded allocation. */
#ifndef SS_GGUF_H
#define SS_GGUF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "runtime/base/dtype.h"

typedef enum ss_gguf_type {
  SS_GGUF_UINT8 = 0,
  SS_GGUF_INT8 = 1,
  SS_GGUF_UINT16 = 2,
  SS_GGUF_INT16 = 3,
  SS_GGUF_UINT32 = 4,
  SS_GGUF_INT32 = 5,
  SS_GGUF_FLOAT32 = 6,
  SS_GGUF_BOOL = 7,
  SS_GGUF_STRING = 8,
  SS_GGUF_ARRAY = 9,
  SS_GGUF_UINT64 = 10,
  SS_GGUF_INT64 = 11,
  SS_GGUF_FLOAT64 = 12,
  SS_GGUF_TYPE_COUNT_
} ss_gguf_type;

typedef struct ss_gguf_str {
  const char *ptr; /* into the mapping; not NUL-terminated */
  uint64_t len;
} ss_gguf_str;

typedef struct ss_gguf_value ss_gguf_value;
struct ss_gguf_value {
  ss_gguf_type type;
  union {
    uint64_t u64; /* every unsigned integer type, widened */
    int64_t i64;  /* every signed integer type, widened */
    double f64;   /* FLOAT32 and FLOAT64 */
    bool b;
    ss_gguf_str str;
    struct {
      ss_gguf_type elem_type;
      uint64_t count;
      const uint8_t *raw;   /* fixed-size elements: packed little-endian data */
      ss_gguf_value *items; /* STRING and ARRAY elements: parsed, `count` long */
    } arr;
  };
};

typedef struct ss_gguf_kv {
  char *key; /* NUL-terminated copy */
  ss_gguf_value value;
} ss_gguf_kv;

#define SS_GGUF_MAX_DIMS 4

typedef struct ss_gguf_tensor {
  char *name;                      /* NUL-terminated copy */
  uint32_t n_dims;
  int64_t ne[SS_GGUF_MAX_DIMS];    /* ne[0] is the contiguous (row) dimension; unused dims are 1 */
  ss_dtype type;
  uint64_t offset;                 /* from the start of the data section */
  uint64_t nbytes;
  const void *data;                /* into the mapping */
} ss_gguf_tensor;

typedef struct ss_gguf {
  char *path;
  const uint8_t *map;
  uint64_t size;
  uint32_t version;
  uint64_t n_kv;
  ss_gguf_kv *kv;
  uint64_t n_tensors;
  ss_gguf_tensor *tensors;
  uint64_t alignment;
  uint64_t data_offset; /* absolute offset of the tensor data section */
  bool mapped;          /* map is our mapping of the file (not a caller's buffer) */
} ss_gguf;

/* Opens and validates `path`.  On failure returns a negative status, sets the
 * error message and leaves *out NULL. */
int ss_gguf_open(const char *path, ss_gguf **out);
/* The same from `size` bytes at `data`, which must outlive the result
 * (nothing is copied); `name` stands for the path in messages. */
int ss_gguf_open_memory(const void *data, uint64_t size, const char *name, ss_gguf **out);
void ss_gguf_close(ss_gguf *g);

const char *ss_gguf_type_name(ss_gguf_type t);

/* Lookups return NULL when the key or tensor is absent. */
const ss_gguf_value *ss_gguf_get(const ss_gguf *g, const char *key);
const ss_gguf_tensor *ss_gguf_tensor_find(const ss_gguf *g, const char *name);

/* Typed getters.  They return SS_OK, or SS_ERR_FORMAT (message names the key)
 * when the key exists with the wrong type or out of range, or 1 when the key is
 * absent and `required` is false (the output is left untouched). */
int ss_gguf_get_int(const ss_gguf *g, const char *key, bool required, int64_t lo, int64_t hi,
                    int64_t *out);
int ss_gguf_get_float(const ss_gguf *g, const char *key, bool required, double *out);
int ss_gguf_get_bool(const ss_gguf *g, const char *key, bool required, bool *out);
int ss_gguf_get_str(const ss_gguf *g, const char *key, bool required, ss_gguf_str *out);
/* An array of `elem_type` elements. */
int ss_gguf_get_arr(const ss_gguf *g, const char *key, bool required, ss_gguf_type elem_type,
                    const ss_gguf_value **out);

/* Element i of a fixed-size numeric array, widened (caller checks i < count):
 * uint64 keeps its bits, a float is truncated toward zero.  A float outside
 * the int64 range (or NaN) is SS_ERR_FORMAT naming the key (g may be NULL). */
int ss_gguf_arr_int(const ss_gguf *g, const char *key, const ss_gguf_value *arr, uint64_t i,
                    int64_t *out);
/* Element i of a fixed-size numeric array as a double. */
double ss_gguf_arr_float(const ss_gguf_value *arr, uint64_t i);

/* Size in bytes of one element of a fixed-size type, 0 for STRING/ARRAY. */
size_t ss_gguf_type_nbytes(ss_gguf_type t);

#endif
