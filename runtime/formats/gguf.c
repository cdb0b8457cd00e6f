#include "runtime/formats/gguf.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "runtime/base/status.h"

#define GGUF_MAGIC "GGUF"
#define GGUF_DEFAULT_ALIGNMENT 32
/* Nested arrays deeper than this are rejected (keeps recursion bounded). */
#define GGUF_MAX_ARRAY_DEPTH 8
/* Keys and tensor names longer than this are rejected as corrupt. */
#define GGUF_MAX_NAME_LEN 65535

/* ------------------------------------------------------------------------ */
/* A bounds-checked cursor over the mapping                                  */

typedef struct cursor {
  const char *path;
  const uint8_t *base;
  uint64_t size;
  uint64_t pos;
} cursor;

static uint64_t cur_left(const cursor *c) { return c->size - c->pos; }

static int cur_need(cursor *c, uint64_t nbytes, const char *field) {
  if (nbytes > cur_left(c))
    return ss_error(SS_ERR_FORMAT,
                    "%s: truncated file: %s needs %" PRIu64 " bytes at offset %" PRIu64
                    " but the file has %" PRIu64 " bytes",
                    c->path, field, nbytes, c->pos, c->size);
  return SS_OK;
}

static int cur_read(cursor *c, void *dst, uint64_t nbytes, const char *field) {
  int rc = cur_need(c, nbytes, field);
  if (rc) return rc;
  memcpy(dst, c->base + c->pos, nbytes);
  c->pos += nbytes;
  return SS_OK;
}

static int cur_u32(cursor *c, uint32_t *v, const char *field) { return cur_read(c, v, 4, field); }
static int cur_u64(cursor *c, uint64_t *v, const char *field) { return cur_read(c, v, 8, field); }

static int cur_str(cursor *c, ss_gguf_str *s, const char *field) {
  uint64_t len;
  int rc = cur_u64(c, &len, field);
  if (rc) return rc;
  if (len > cur_left(c))
    return ss_error(SS_ERR_FORMAT,
                    "%s: %s: string length %" PRIu64 " at offset %" PRIu64
                    " runs past the end of the file (%" PRIu64 " bytes)",
                    c->path, field, len, c->pos - 8, c->size);
  s->ptr = (const char *)c->base + c->pos;
  s->len = len;
  c->pos += len;
  return SS_OK;
}

/* ------------------------------------------------------------------------ */
/* Metadata values                                                            */

static const char *k_type_names[SS_GGUF_TYPE_COUNT_] = {
    "uint8", "int8", "uint16", "int16", "uint32", "int32", "float32",
    "bool",  "string", "array", "uint64", "int64", "float64",
};

const char *ss_gguf_type_name(ss_gguf_type t) {
  return (unsigned)t < SS_GGUF_TYPE_COUNT_ ? k_type_names[t] : "unknown";
}

size_t ss_gguf_type_nbytes(ss_gguf_type t) {
  switch (t) {
  case SS_GGUF_UINT8: case SS_GGUF_INT8: case SS_GGUF_BOOL: return 1;
  case SS_GGUF_UINT16: case SS_GGUF_INT16: return 2;
  case SS_GGUF_UINT32: case SS_GGUF_INT32: case SS_GGUF_FLOAT32: return 4;
  case SS_GGUF_UINT64: case SS_GGUF_INT64: case SS_GGUF_FLOAT64: return 8;
  default: return 0;
  }
}

/* Decodes one fixed-size scalar at p into v (v->type already set). */
static void decode_scalar(ss_gguf_value *v, const uint8_t *p) {
  switch (v->type) {
  case SS_GGUF_UINT8: v->u64 = p[0]; break;
  case SS_GGUF_INT8: v->i64 = (int8_t)p[0]; break;
  case SS_GGUF_BOOL: v->b = p[0] != 0; break;
  case SS_GGUF_UINT16: { uint16_t x; memcpy(&x, p, 2); v->u64 = x; break; }
  case SS_GGUF_INT16: { int16_t x; memcpy(&x, p, 2); v->i64 = x; break; }
  case SS_GGUF_UINT32: { uint32_t x; memcpy(&x, p, 4); v->u64 = x; break; }
  case SS_GGUF_INT32: { int32_t x; memcpy(&x, p, 4); v->i64 = x; break; }
  case SS_GGUF_FLOAT32: { float x; memcpy(&x, p, 4); v->f64 = x; break; }
  case SS_GGUF_UINT64: memcpy(&v->u64, p, 8); break;
  case SS_GGUF_INT64: memcpy(&v->i64, p, 8); break;
  case SS_GGUF_FLOAT64: memcpy(&v->f64, p, 8); break;
  default: SS_ASSERT(0 && "not a scalar type");
  }
}

static void value_free(ss_gguf_value *v) {
  if (v->type == SS_GGUF_ARRAY && v->arr.items) {
    for (uint64_t i = 0; i < v->arr.count; i++) value_free(&v->arr.items[i]);
    free(v->arr.items);
    v->arr.items = NULL;
  }
}

static int read_value(cursor *c, ss_gguf_type type, ss_gguf_value *v, int depth, const char *key);

static int read_array(cursor *c, ss_gguf_value *v, int depth, const char *key) {
  uint32_t et;
  uint64_t count;
  int rc;
  if ((rc = cur_u32(c, &et, key)) || (rc = cur_u64(c, &count, key))) return rc;
  if (et >= SS_GGUF_TYPE_COUNT_)
    return ss_error(SS_ERR_FORMAT, "%s: metadata key '%s': unknown array element type %u", c->path,
                    key, et);
  if (et == SS_GGUF_ARRAY && depth + 1 >= GGUF_MAX_ARRAY_DEPTH)
    return ss_error(SS_ERR_FORMAT, "%s: metadata key '%s': arrays nested deeper than %d", c->path,
                    key, GGUF_MAX_ARRAY_DEPTH);
  v->arr.elem_type = (ss_gguf_type)et;
  v->arr.count = count;
  v->arr.raw = NULL;
  v->arr.items = NULL;
  /* Every element occupies at least this many bytes, so a count that cannot
   * fit in the rest of the file is rejected before anything is allocated. */
  uint64_t min_elem = ss_gguf_type_nbytes((ss_gguf_type)et);
  if (et == SS_GGUF_STRING) min_elem = 8;
  if (et == SS_GGUF_ARRAY) min_elem = 12;
  if (count > cur_left(c) / min_elem)
    return ss_error(SS_ERR_FORMAT,
                    "%s: metadata key '%s': array of %" PRIu64 " %s elements needs at least %" PRIu64
                    " bytes per element but only %" PRIu64 " bytes remain in the file",
                    c->path, key, count, ss_gguf_type_name((ss_gguf_type)et), min_elem,
                    cur_left(c));
  if (et != SS_GGUF_STRING && et != SS_GGUF_ARRAY) {
    v->arr.raw = c->base + c->pos;
    c->pos += count * min_elem;
    return SS_OK;
  }
  if (count == 0) return SS_OK;
  v->arr.items = calloc(count, sizeof *v->arr.items);
  if (!v->arr.items) return ss_error(SS_ERR_NOMEM, "%s: out of memory reading '%s'", c->path, key);
  for (uint64_t i = 0; i < count; i++) {
    rc = read_value(c, (ss_gguf_type)et, &v->arr.items[i], depth + 1, key);
    if (rc) {
      /* Free what was parsed, including element i's own partial contents
       * (its items are NULL, or the prefix its read_array kept). */
      v->arr.count = i + 1;
      return rc;
    }
  }
  return SS_OK;
}

static int read_value(cursor *c, ss_gguf_type type, ss_gguf_value *v, int depth, const char *key) {
  v->type = type;
  if (type == SS_GGUF_STRING) return cur_str(c, &v->str, key);
  if (type == SS_GGUF_ARRAY) return read_array(c, v, depth, key);
  size_t n = ss_gguf_type_nbytes(type);
  if (n == 0)
    return ss_error(SS_ERR_FORMAT, "%s: metadata key '%s': unknown value type %d", c->path, key,
                    (int)type);
  int rc = cur_need(c, n, key);
  if (rc) return rc;
  decode_scalar(v, c->base + c->pos);
  c->pos += n;
  return SS_OK;
}

int ss_gguf_arr_int(const ss_gguf *g, const char *key, const ss_gguf_value *arr, uint64_t i,
                    int64_t *out) {
  ss_gguf_value v = {.type = arr->arr.elem_type};
  decode_scalar(&v, arr->arr.raw + i * ss_gguf_type_nbytes(v.type));
  switch (v.type) {
  case SS_GGUF_UINT8: case SS_GGUF_UINT16: case SS_GGUF_UINT32: case SS_GGUF_UINT64:
    *out = (int64_t)v.u64;
    return SS_OK;
  case SS_GGUF_BOOL: *out = v.b; return SS_OK;
  case SS_GGUF_FLOAT32: case SS_GGUF_FLOAT64:
    /* A double outside [-2^63, 2^63) (or NaN) has no int64 value: converting
     * it is undefined behaviour, so it is refused. */
    if (!(v.f64 >= -0x1p63 && v.f64 < 0x1p63))
      return ss_error(SS_ERR_FORMAT, "%s: metadata key '%s': element %" PRIu64 " = %g is outside "
                      "the int64 range", g ? g->path : "gguf", key, i, v.f64);
    *out = (int64_t)v.f64;
    return SS_OK;
  default: *out = v.i64; return SS_OK;
  }
}

double ss_gguf_arr_float(const ss_gguf_value *arr, uint64_t i) {
  ss_gguf_value v = {.type = arr->arr.elem_type};
  decode_scalar(&v, arr->arr.raw + i * ss_gguf_type_nbytes(v.type));
  switch (v.type) {
  case SS_GGUF_FLOAT32: case SS_GGUF_FLOAT64: return v.f64;
  case SS_GGUF_UINT8: case SS_GGUF_UINT16: case SS_GGUF_UINT32: case SS_GGUF_UINT64:
    return (double)v.u64;
  case SS_GGUF_BOOL: return v.b;
  default: return (double)v.i64;
  }
}

/* ------------------------------------------------------------------------ */
/* Open / close                                                               */

static char *dup_str(ss_gguf_str s) {
  char *p = malloc(s.len + 1);
  if (!p) return NULL;
  memcpy(p, s.ptr, s.len);
  p[s.len] = 0;
  return p;
}

void ss_gguf_close(ss_gguf *g) {
  if (!g) return;
  for (uint64_t i = 0; i < g->n_kv; i++) {
    free(g->kv[i].key);
    value_free(&g->kv[i].value);
  }
  free(g->kv);
  for (uint64_t i = 0; i < g->n_tensors; i++) free(g->tensors[i].name);
  free(g->tensors);
  if (g->mapped && g->size) munmap((void *)g->map, g->size);
  free(g->path);
  free(g);
}

static int parse_tensor_info(ss_gguf *g, cursor *c, uint64_t idx) {
  ss_gguf_tensor *t = &g->tensors[idx];
  char field[64];
  snprintf(field, sizeof field, "tensor %" PRIu64 " name", idx);
  ss_gguf_str name;
  int rc = cur_str(c, &name, field);
  if (rc) return rc;
  if (name.len == 0 || name.len > GGUF_MAX_NAME_LEN)
    return ss_error(SS_ERR_FORMAT, "%s: tensor %" PRIu64 ": name length %" PRIu64
                    " outside 1..%d", g->path, idx, name.len, GGUF_MAX_NAME_LEN);
  t->name = dup_str(name);
  if (!t->name) return ss_error(SS_ERR_NOMEM, "%s: out of memory", g->path);
  if ((rc = cur_u32(c, &t->n_dims, t->name))) return rc;
  if (t->n_dims == 0 || t->n_dims > SS_GGUF_MAX_DIMS)
    return ss_error(SS_ERR_FORMAT, "%s: tensor '%s': n_dims = %u, must be 1..%d", g->path,
                    t->name, t->n_dims, SS_GGUF_MAX_DIMS);
  uint64_t nelem = 1;
  for (int d = 0; d < SS_GGUF_MAX_DIMS; d++) t->ne[d] = 1;
  for (uint32_t d = 0; d < t->n_dims; d++) {
    uint64_t ne;
    if ((rc = cur_u64(c, &ne, t->name))) return rc;
    /* Bound each dimension so the element count cannot overflow int64. */
    if (ne == 0 || ne > INT64_MAX || nelem > (uint64_t)INT64_MAX / ne)
      return ss_error(SS_ERR_FORMAT, "%s: tensor '%s': dimension %u = %" PRIu64
                      " is zero or makes the element count overflow", g->path, t->name, d, ne);
    t->ne[d] = (int64_t)ne;
    nelem *= ne;
  }
  uint32_t type;
  if ((rc = cur_u32(c, &type, t->name))) return rc;
  const ss_dtype_info *ti = type == SS_DTYPE_F8_E4M3 ? NULL : ss_dtype_get(type);
  if (!ti)
    return ss_error(SS_ERR_UNSUPPORTED, "%s: tensor '%s': unknown tensor type %u", g->path,
                    t->name, type);
  t->type = (ss_dtype)type;
  if (t->ne[0] % ti->block_count != 0)
    return ss_error(SS_ERR_FORMAT, "%s: tensor '%s': row length %" PRId64
                    " is not a multiple of the %s block size %u", g->path, t->name, t->ne[0],
                    ti->name, ti->block_count);
  uint64_t nblocks = nelem / ti->block_count;
  if (nblocks > UINT64_MAX / ti->block_nbytes)
    return ss_error(SS_ERR_FORMAT, "%s: tensor '%s': byte size overflows", g->path, t->name);
  t->nbytes = nblocks * ti->block_nbytes;
  if ((rc = cur_u64(c, &t->offset, t->name))) return rc;
  return SS_OK;
}

static int cmp_name(const void *a, const void *b) {
  return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Fails naming the first repeated name among `count` records of `stride`
 * bytes whose char * name sits at `name_off`.  Sorting a copy of the names
 * keeps this O(n log n): a file may hold hundreds of thousands of keys. */
static int check_unique(const ss_gguf *g, const void *records, uint64_t count, size_t stride,
                        size_t name_off, const char *what) {
  if (count < 2) return SS_OK;
  const char **names = malloc(count * sizeof *names);
  if (!names) return ss_error(SS_ERR_NOMEM, "%s: out of memory checking %ss", g->path, what);
  const uint8_t *base = records;
  for (uint64_t i = 0; i < count; i++) memcpy(&names[i], base + i * stride + name_off, sizeof *names);
  qsort(names, count, sizeof *names, cmp_name);
  int rc = SS_OK;
  for (uint64_t i = 1; i < count; i++)
    if (strcmp(names[i - 1], names[i]) == 0) {
      rc = ss_error(SS_ERR_FORMAT, "%s: duplicate %s '%s'", g->path, what, names[i]);
      break;
    }
  free(names);
  return rc;
}

static int parse(ss_gguf *g) {
  cursor c = {.path = g->path, .base = g->map, .size = g->size, .pos = 0};
  char magic[4];
  int rc;
  if ((rc = cur_read(&c, magic, 4, "magic"))) return rc;
  if (memcmp(magic, GGUF_MAGIC, 4) != 0)
    return ss_error(SS_ERR_FORMAT, "%s: bad magic: not a GGUF file (first bytes %02x %02x %02x %02x)",
                    g->path, (uint8_t)magic[0], (uint8_t)magic[1], (uint8_t)magic[2],
                    (uint8_t)magic[3]);
  if ((rc = cur_u32(&c, &g->version, "version"))) return rc;
  if (g->version != 2 && g->version != 3)
    return ss_error(SS_ERR_UNSUPPORTED, "%s: unsupported GGUF version %u (supported: 2, 3)",
                    g->path, g->version);
  uint64_t n_tensors, n_kv;
  if ((rc = cur_u64(&c, &n_tensors, "tensor_count")) || (rc = cur_u64(&c, &n_kv, "kv_count")))
    return rc;
  /* A key-value pair takes at least 8 (key length) + 4 (type) + 1 bytes, a
   * tensor info (below) at least 8 + 1 + 4 + 8 + 4 + 8. */
  if (n_kv > cur_left(&c) / 13)
    return ss_error(SS_ERR_FORMAT, "%s: kv_count = %" PRIu64 " cannot fit in the %" PRIu64
                    " bytes left in the file (truncated or corrupt)", g->path, n_kv, cur_left(&c));
  /* tensor_count is bounded below, once the metadata is read, so that a file cut
   * inside the metadata is reported at the field where it ends. */

  g->kv = calloc(n_kv ? n_kv : 1, sizeof *g->kv);
  if (!g->kv) return ss_error(SS_ERR_NOMEM, "%s: out of memory", g->path);
  g->alignment = GGUF_DEFAULT_ALIGNMENT;
  for (uint64_t i = 0; i < n_kv; i++) {
    char field[64];
    snprintf(field, sizeof field, "metadata key %" PRIu64, i);
    ss_gguf_str key;
    if ((rc = cur_str(&c, &key, field))) return rc;
    if (key.len == 0 || key.len > GGUF_MAX_NAME_LEN)
      return ss_error(SS_ERR_FORMAT, "%s: %s: key length %" PRIu64 " outside 1..%d", g->path,
                      field, key.len, GGUF_MAX_NAME_LEN);
    ss_gguf_kv *kv = &g->kv[i];
    kv->key = dup_str(key);
    if (!kv->key) return ss_error(SS_ERR_NOMEM, "%s: out of memory", g->path);
    g->n_kv = i + 1;
    uint32_t type;
    if ((rc = cur_u32(&c, &type, kv->key))) return rc;
    if (type >= SS_GGUF_TYPE_COUNT_)
      return ss_error(SS_ERR_FORMAT, "%s: metadata key '%s': unknown value type %u", g->path,
                      kv->key, type);
    if ((rc = read_value(&c, (ss_gguf_type)type, &kv->value, 0, kv->key))) return rc;
    if (strcmp(kv->key, "general.alignment") == 0) {
      if (type != SS_GGUF_UINT32)
        return ss_error(SS_ERR_FORMAT, "%s: general.alignment has type %s, expected uint32",
                        g->path, ss_gguf_type_name((ss_gguf_type)type));
      uint64_t a = kv->value.u64;
      if (a == 0 || (a & (a - 1)) != 0 || a > 1u << 20)
        return ss_error(SS_ERR_FORMAT, "%s: general.alignment = %" PRIu64
                        " must be a power of two up to 1048576", g->path, a);
      g->alignment = a;
    }
  }

  if ((rc = check_unique(g, g->kv, g->n_kv, sizeof *g->kv, offsetof(ss_gguf_kv, key), "metadata key")))
    return rc;

  if (n_tensors > cur_left(&c) / 33)
    return ss_error(SS_ERR_FORMAT, "%s: tensor_count = %" PRIu64 " cannot fit in the %" PRIu64
                    " bytes left in the file (truncated or corrupt)", g->path, n_tensors,
                    cur_left(&c));
  g->tensors = calloc(n_tensors ? n_tensors : 1, sizeof *g->tensors);
  if (!g->tensors) return ss_error(SS_ERR_NOMEM, "%s: out of memory", g->path);
  for (uint64_t i = 0; i < n_tensors; i++) {
    g->n_tensors = i + 1;
    if ((rc = parse_tensor_info(g, &c, i))) return rc;
  }

  /* Data starts at the next multiple of the alignment (which may be EOF for a
   * vocab-only file). */
  uint64_t pad = (g->alignment - c.pos % g->alignment) % g->alignment;
  g->data_offset = c.pos + pad;
  if (n_tensors > 0 && g->data_offset > g->size)
    return ss_error(SS_ERR_FORMAT, "%s: truncated file: tensor data would start at offset %"
                    PRIu64 " but the file has %" PRIu64 " bytes", g->path, g->data_offset,
                    g->size);
  uint64_t data_size = g->data_offset <= g->size ? g->size - g->data_offset : 0;
  for (uint64_t i = 0; i < n_tensors; i++) {
    ss_gguf_tensor *t = &g->tensors[i];
    if (t->offset % g->alignment != 0)
      return ss_error(SS_ERR_FORMAT, "%s: tensor '%s': data offset %" PRIu64
                      " is not a multiple of the alignment %" PRIu64, g->path, t->name,
                      t->offset, g->alignment);
    if (t->offset > data_size || t->nbytes > data_size - t->offset)
      return ss_error(SS_ERR_FORMAT, "%s: tensor '%s': data [%" PRIu64 ", %" PRIu64
                      ") lies past the end of the data section (%" PRIu64 " bytes)",
                      g->path, t->name, t->offset, t->offset + t->nbytes, data_size);
    t->data = g->map + g->data_offset + t->offset;
  }
  return check_unique(g, g->tensors, n_tensors, sizeof *g->tensors, offsetof(ss_gguf_tensor, name),
                      "tensor name");
}

int ss_gguf_open_memory(const void *data, uint64_t size, const char *name, ss_gguf **out) {
  *out = NULL;
  ss_gguf *g = calloc(1, sizeof *g);
  if (!g || !(g->path = strdup(name))) {
    free(g);
    return ss_error(SS_ERR_NOMEM, "%s: out of memory", name);
  }
  if (size == 0) {
    ss_gguf_close(g);
    return ss_error(SS_ERR_FORMAT, "%s: empty buffer: not a GGUF file", name);
  }
  g->map = data;
  g->size = size;
  int rc = parse(g);
  if (rc) {
    ss_gguf_close(g);
    return rc;
  }
  *out = g;
  return SS_OK;
}

int ss_gguf_open(const char *path, ss_gguf **out) {
  *out = NULL;
  ss_gguf *g = calloc(1, sizeof *g);
  if (!g || !(g->path = strdup(path))) {
    free(g);
    return ss_error(SS_ERR_NOMEM, "%s: out of memory", path);
  }
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    int e = errno;
    ss_gguf_close(g);
    return ss_error(SS_ERR_IO, "%s: cannot open: %s", path, strerror(e));
  }
  struct stat st;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    close(fd);
    ss_gguf_close(g);
    return ss_error(SS_ERR_IO, "%s: not a regular file", path);
  }
  g->size = (uint64_t)st.st_size;
  if (g->size == 0) {
    close(fd);
    ss_gguf_close(g);
    return ss_error(SS_ERR_FORMAT, "%s: empty file: not a GGUF file", path);
  }
  void *m = mmap(NULL, g->size, PROT_READ, MAP_PRIVATE, fd, 0);
  int e = errno;
  close(fd);
  if (m == MAP_FAILED) {
    g->size = 0;
    ss_gguf_close(g);
    return ss_error(SS_ERR_IO, "%s: mmap failed: %s", path, strerror(e));
  }
  g->map = m;
  g->mapped = true;
  int rc = parse(g);
  if (rc) {
    ss_gguf_close(g);
    return rc;
  }
  *out = g;
  return SS_OK;
}

/* ------------------------------------------------------------------------ */
/* Lookups                                                                    */

const ss_gguf_value *ss_gguf_get(const ss_gguf *g, const char *key) {
  for (uint64_t i = 0; i < g->n_kv; i++)
    if (strcmp(g->kv[i].key, key) == 0) return &g->kv[i].value;
  return NULL;
}

const ss_gguf_tensor *ss_gguf_tensor_find(const ss_gguf *g, const char *name) {
  for (uint64_t i = 0; i < g->n_tensors; i++)
    if (strcmp(g->tensors[i].name, name) == 0) return &g->tensors[i];
  return NULL;
}

static int lookup(const ss_gguf *g, const char *key, bool required, const ss_gguf_value **v) {
  *v = ss_gguf_get(g, key);
  if (*v) return SS_OK;
  if (required) return ss_error(SS_ERR_FORMAT, "%s: missing required metadata key '%s'", g->path, key);
  return 1;
}

static int wrong_type(const ss_gguf *g, const char *key, const ss_gguf_value *v, const char *want) {
  return ss_error(SS_ERR_FORMAT, "%s: metadata key '%s' has type %s, expected %s", g->path, key,
                  ss_gguf_type_name(v->type), want);
}

int ss_gguf_get_int(const ss_gguf *g, const char *key, bool required, int64_t lo, int64_t hi,
                    int64_t *out) {
  const ss_gguf_value *v;
  int rc = lookup(g, key, required, &v);
  if (rc) return rc;
  int64_t x;
  switch (v->type) {
  case SS_GGUF_UINT8: case SS_GGUF_UINT16: case SS_GGUF_UINT32: case SS_GGUF_UINT64:
    if (v->u64 > (uint64_t)INT64_MAX) goto range;
    x = (int64_t)v->u64;
    break;
  case SS_GGUF_INT8: case SS_GGUF_INT16: case SS_GGUF_INT32: case SS_GGUF_INT64:
    x = v->i64;
    break;
  default:
    return wrong_type(g, key, v, "an integer");
  }
  if (x < lo || x > hi) goto range;
  *out = x;
  return SS_OK;
range:
  if (v->type == SS_GGUF_UINT8 || v->type == SS_GGUF_UINT16 || v->type == SS_GGUF_UINT32 ||
      v->type == SS_GGUF_UINT64)
    return ss_error(SS_ERR_FORMAT, "%s: metadata key '%s' = %" PRIu64
                    " is outside the allowed range [%" PRId64 ", %" PRId64 "]",
                    g->path, key, v->u64, lo, hi);
  return ss_error(SS_ERR_FORMAT, "%s: metadata key '%s' = %" PRId64
                  " is outside the allowed range [%" PRId64 ", %" PRId64 "]",
                  g->path, key, v->i64, lo, hi);
}

int ss_gguf_get_float(const ss_gguf *g, const char *key, bool required, double *out) {
  const ss_gguf_value *v;
  int rc = lookup(g, key, required, &v);
  if (rc) return rc;
  if (v->type != SS_GGUF_FLOAT32 && v->type != SS_GGUF_FLOAT64)
    return wrong_type(g, key, v, "float32");
  *out = v->f64;
  return SS_OK;
}

int ss_gguf_get_bool(const ss_gguf *g, const char *key, bool required, bool *out) {
  const ss_gguf_value *v;
  int rc = lookup(g, key, required, &v);
  if (rc) return rc;
  if (v->type != SS_GGUF_BOOL) return wrong_type(g, key, v, "bool");
  *out = v->b;
  return SS_OK;
}

int ss_gguf_get_str(const ss_gguf *g, const char *key, bool required, ss_gguf_str *out) {
  const ss_gguf_value *v;
  int rc = lookup(g, key, required, &v);
  if (rc) return rc;
  if (v->type != SS_GGUF_STRING) return wrong_type(g, key, v, "string");
  *out = v->str;
  return SS_OK;
}

int ss_gguf_get_arr(const ss_gguf *g, const char *key, bool required, ss_gguf_type elem_type,
                    const ss_gguf_value **out) {
  const ss_gguf_value *v;
  int rc = lookup(g, key, required, &v);
  if (rc) return rc;
  if (v->type != SS_GGUF_ARRAY || v->arr.elem_type != elem_type) {
    char want[48];
    snprintf(want, sizeof want, "array of %s", ss_gguf_type_name(elem_type));
    if (v->type == SS_GGUF_ARRAY)
      return ss_error(SS_ERR_FORMAT, "%s: metadata key '%s' is an array of %s, expected %s",
                      g->path, key, ss_gguf_type_name(v->arr.elem_type), want);
    return wrong_type(g, key, v, want);
  }
  *out = v;
  return SS_OK;
}
