#include "runtime/formats/safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "runtime/base/status.h"

/* safetensors dtype names (safetensors/src/tensor.rs, enum Dtype) with their
 * sizes, and our type where our kernels read it. */
static const struct {
  const char *name;
  uint32_t nbytes;
  ss_dtype type;
} k_dtypes[] = {
    {"F32", 4, SS_DTYPE_F32},       {"F16", 2, SS_DTYPE_F16},
    {"BF16", 2, SS_DTYPE_BF16},     {"F8_E4M3", 1, SS_DTYPE_F8_E4M3},
    {"F64", 8, SS_DTYPE_F64},       {"I64", 8, SS_DTYPE_I64},
    {"I32", 4, SS_DTYPE_I32},       {"I16", 2, SS_DTYPE_I16},
    {"I8", 1, SS_DTYPE_I8},         {"U64", 8, SS_DTYPE_COUNT_},
    {"U32", 4, SS_DTYPE_COUNT_},    {"U16", 2, SS_DTYPE_COUNT_},
    {"U8", 1, SS_DTYPE_COUNT_},     {"BOOL", 1, SS_DTYPE_COUNT_},
    {"F8_E5M2", 1, SS_DTYPE_COUNT_},
};

static int cmp_tensor(const void *a, const void *b) {
  return strcmp(((const ss_st_tensor *)a)->name, ((const ss_st_tensor *)b)->name);
}

static int cmp_offset(const void *a, const void *b) {
  const ss_st_tensor *x = *(ss_st_tensor *const *)a, *y = *(ss_st_tensor *const *)b;
  return (x->offset > y->offset) - (x->offset < y->offset);
}

int64_t ss_st_numel(const ss_st_tensor *t) {
  int64_t n = 1;
  for (int d = 0; d < t->n_dims; d++) n *= t->shape[d];
  return n;
}

/* ------------------------------------------------------------------------ */
/* One file                                                                   */

static int map_file(const char *path, ss_st_file *f) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return ss_error(SS_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
  struct stat st;
  if (fstat(fd, &st) != 0) {
    int e = errno;
    close(fd);
    return ss_error(SS_ERR_IO, "%s: cannot stat: %s", path, strerror(e));
  }
  f->size = (uint64_t)st.st_size;
  if (f->size < 8) {
    close(fd);
    return ss_error(SS_ERR_FORMAT, "%s: %" PRIu64 " bytes is too short for a safetensors file "
                    "(8-byte header length missing)", path, f->size);
  }
  void *p = mmap(NULL, (size_t)f->size, PROT_READ, MAP_PRIVATE, fd, 0);
  close(fd);
  if (p == MAP_FAILED) return ss_error(SS_ERR_IO, "%s: cannot map: %s", path, strerror(errno));
  f->map = p;
  return SS_OK;
}

/* Parses one tensor entry of file `fi`'s header into t. */
static int parse_entry(const ss_st_file *f, int fi, const char *name, json_t *v, uint64_t data_nbytes,
                       ss_st_tensor *t) {
  const char *path = f->path;
  if (!json_is_object(v))
    return ss_error(SS_ERR_FORMAT, "%s: tensor '%s': header entry is not an object", path, name);
  json_t *dt = json_object_get(v, "dtype"), *shape = json_object_get(v, "shape"),
         *offs = json_object_get(v, "data_offsets");
  if (!json_is_string(dt))
    return ss_error(SS_ERR_FORMAT, "%s: tensor '%s': 'dtype' missing or not a string", path, name);
  if (!json_is_array(shape))
    return ss_error(SS_ERR_FORMAT, "%s: tensor '%s': 'shape' missing or not an array", path, name);
  if (!json_is_array(offs) || json_array_size(offs) != 2)
    return ss_error(SS_ERR_FORMAT, "%s: tensor '%s': 'data_offsets' missing or not a pair", path,
                    name);
  t->name = strdup(name);
  if (!t->name) return ss_error(SS_ERR_NOMEM, "out of memory");
  t->file = fi;
  const char *dname = json_string_value(dt);
  size_t k = 0, nd = sizeof k_dtypes / sizeof *k_dtypes;
  while (k < nd && strcmp(k_dtypes[k].name, dname) != 0) k++;
  if (k == nd)
    return ss_error(SS_ERR_UNSUPPORTED, "%s: tensor '%s': unknown dtype '%.20s'", path, name, dname);
  snprintf(t->dtype_name, sizeof t->dtype_name, "%s", dname);
  t->type = k_dtypes[k].type;
  t->elem_nbytes = k_dtypes[k].nbytes;
  if (json_array_size(shape) > SS_ST_MAX_DIMS)
    return ss_error(SS_ERR_FORMAT, "%s: tensor '%s': %zu dimensions (at most %d)", path, name,
                    json_array_size(shape), SS_ST_MAX_DIMS);
  t->n_dims = (int)json_array_size(shape);
  /* nbytes = elem size * product of dims, refusing any step that would overflow. */
  uint64_t nbytes = t->elem_nbytes;
  for (int d = 0; d < t->n_dims; d++) {
    json_t *x = json_array_get(shape, (size_t)d);
    if (!json_is_integer(x) || json_integer_value(x) < 0)
      return ss_error(SS_ERR_FORMAT, "%s: tensor '%s': shape[%d] is not a non-negative integer",
                      path, name, d);
    uint64_t dim = (uint64_t)json_integer_value(x);
    if (dim != 0 && nbytes > UINT64_MAX / dim)
      return ss_error(SS_ERR_FORMAT, "%s: tensor '%s': shape[%d] = %" PRIu64 " makes the byte "
                      "size overflow 64 bits", path, name, d, dim);
    nbytes *= dim;
    t->shape[d] = (int64_t)dim;
  }
  json_t *b = json_array_get(offs, 0), *e = json_array_get(offs, 1);
  if (!json_is_integer(b) || !json_is_integer(e) || json_integer_value(b) < 0 ||
      json_integer_value(e) < 0)
    return ss_error(SS_ERR_FORMAT, "%s: tensor '%s': data_offsets are not non-negative integers",
                    path, name);
  const uint64_t begin = (uint64_t)json_integer_value(b), end = (uint64_t)json_integer_value(e);
  if (begin > end)
    return ss_error(SS_ERR_FORMAT, "%s: tensor '%s': data_offsets [%" PRIu64 ", %" PRIu64 "] are "
                    "not ordered", path, name, begin, end);
  if (end > data_nbytes)
    return ss_error(SS_ERR_FORMAT, "%s: tensor '%s': data_offsets [%" PRIu64 ", %" PRIu64 "] end "
                    "past the data section (%" PRIu64 " bytes; file truncated?)", path, name,
                    begin, end, data_nbytes);
  if (end - begin != nbytes)
    return ss_error(SS_ERR_FORMAT, "%s: tensor '%s': data_offsets span %" PRIu64 " bytes but "
                    "dtype %s and its shape need %" PRIu64, path, name, end - begin, dname, nbytes);
  t->offset = 8 + f->header_nbytes + begin;
  t->nbytes = nbytes;
  t->data = f->map + t->offset;
  return SS_OK;
}

/* Reads file `fi`'s header and appends its tensors to s. */
static int read_header(ss_st_set *s, int fi) {
  ss_st_file *f = &s->files[fi];
  uint64_t n = 0;
  for (int i = 0; i < 8; i++) n |= (uint64_t)f->map[i] << (8 * i);
  if (n > SS_ST_MAX_HEADER_NBYTES)
    return ss_error(SS_ERR_FORMAT, "%s: header length %" PRIu64 " exceeds the limit of %llu "
                    "bytes", f->path, n, SS_ST_MAX_HEADER_NBYTES);
  if (n > f->size - 8)
    return ss_error(SS_ERR_FORMAT, "%s: header length %" PRIu64 " runs past the end of the "
                    "%" PRIu64 "-byte file", f->path, n, f->size);
  f->header_nbytes = n;
  json_error_t err;
  json_t *h = json_loadb((const char *)f->map + 8, (size_t)n, JSON_REJECT_DUPLICATES, &err);
  if (!h)
    return ss_error(SS_ERR_FORMAT, "%s: header is not valid JSON (at byte %d: %s)", f->path,
                    err.position, err.text);
  int rc = SS_OK;
  if (!json_is_object(h)) {
    rc = ss_error(SS_ERR_FORMAT, "%s: header is not a JSON object", f->path);
    goto done;
  }
  size_t count = json_object_size(h);
  ss_st_tensor *nt = realloc(s->tensors, (size_t)(s->n_tensors + (int64_t)count + 1) * sizeof *nt);
  if (!nt) {
    rc = ss_error(SS_ERR_NOMEM, "out of memory");
    goto done;
  }
  s->tensors = nt;
  const int64_t first = s->n_tensors;
  const uint64_t data_nbytes = f->size - 8 - n;
  const char *key;
  json_t *v;
  json_object_foreach(h, key, v) {
    if (strcmp(key, "__metadata__") == 0) continue;
    ss_st_tensor *t = &s->tensors[s->n_tensors];
    memset(t, 0, sizeof *t);
    s->n_tensors++;
    if ((rc = parse_entry(f, fi, key, v, data_nbytes, t))) goto done;
  }
  /* No two tensors of this file may share a byte. */
  const int64_t k = s->n_tensors - first;
  ss_st_tensor **by_off = malloc((size_t)(k ? k : 1) * sizeof *by_off);
  if (!by_off) {
    rc = ss_error(SS_ERR_NOMEM, "out of memory");
    goto done;
  }
  for (int64_t i = 0; i < k; i++) by_off[i] = &s->tensors[first + i];
  qsort(by_off, (size_t)k, sizeof *by_off, cmp_offset);
  for (int64_t i = 1; i < k; i++)
    if (by_off[i]->offset < by_off[i - 1]->offset + by_off[i - 1]->nbytes) {
      rc = ss_error(SS_ERR_FORMAT, "%s: tensor '%s' overlaps tensor '%s' in the data section",
                    f->path, by_off[i]->name, by_off[i - 1]->name);
      break;
    }
  free(by_off);
done:
  json_decref(h);
  return rc;
}

static int add_file(ss_st_set *s, const char *path) {
  ss_st_file *nf = realloc(s->files, (size_t)(s->n_files + 1) * sizeof *nf);
  if (!nf) return ss_error(SS_ERR_NOMEM, "out of memory");
  s->files = nf;
  ss_st_file *f = &s->files[s->n_files++];
  memset(f, 0, sizeof *f);
  f->path = strdup(path);
  if (!f->path) return ss_error(SS_ERR_NOMEM, "out of memory");
  int rc = map_file(path, f);
  if (rc) return rc;
  return read_header(s, s->n_files - 1);
}

/* ------------------------------------------------------------------------ */
/* A set of shards                                                            */

static bool is_file(const char *path) {
  struct stat st;
  return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

/* Opens the shards named by an index's weight_map, each once, in order of
 * first appearance, and checks every mapping against the shard's header. */
static int open_index(ss_st_set *s, const char *dir, const char *index_path) {
  json_error_t err;
  json_t *idx = json_load_file(index_path, JSON_REJECT_DUPLICATES, &err);
  if (!idx)
    return ss_error(SS_ERR_FORMAT, "%s: not valid JSON (line %d: %s)", index_path, err.line,
                    err.text);
  int rc = SS_OK;
  json_t *wm = json_object_get(idx, "weight_map");
  if (!json_is_object(wm)) {
    rc = ss_error(SS_ERR_FORMAT, "%s: 'weight_map' missing or not an object", index_path);
    goto done;
  }
  const char *name;
  json_t *v;
  json_object_foreach(wm, name, v) {
    if (!json_is_string(v)) {
      rc = ss_error(SS_ERR_FORMAT, "%s: weight_map['%s'] is not a file name", index_path, name);
      goto done;
    }
    const char *shard = json_string_value(v);
    if (!*shard || strchr(shard, '/') || strcmp(shard, "..") == 0) {
      rc = ss_error(SS_ERR_FORMAT, "%s: weight_map['%s'] = '%.64s' is not a file name in the "
                    "folder", index_path, name, shard);
      goto done;
    }
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, shard);
    int fi = 0;
    while (fi < s->n_files && strcmp(s->files[fi].path, path) != 0) fi++;
    if (fi == s->n_files) {
      if (!is_file(path)) {
        rc = ss_error(SS_ERR_IO, "%s: shard '%s' (holding tensor '%s') is missing", index_path,
                      shard, name);
        goto done;
      }
      if ((rc = add_file(s, path))) goto done;
    }
  }
  qsort(s->tensors, (size_t)s->n_tensors, sizeof *s->tensors, cmp_tensor);
  json_object_foreach(wm, name, v) {
    const ss_st_tensor *t = ss_st_find(s, name);
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, json_string_value(v));
    if (!t || strcmp(s->files[t->file].path, path) != 0) {
      rc = ss_error(SS_ERR_FORMAT, "%s: weight_map puts tensor '%s' in '%s', whose header does "
                    "not list it", index_path, name, json_string_value(v));
      goto done;
    }
  }
  if ((int64_t)json_object_size(wm) != s->n_tensors) {
    rc = ss_error(SS_ERR_FORMAT, "%s: the shards hold %" PRId64 " tensors but weight_map names "
                  "%zu", index_path, s->n_tensors, json_object_size(wm));
    goto done;
  }
done:
  json_decref(idx);
  return rc;
}

int ss_st_open(const char *dir, ss_st_set **out) {
  *out = NULL;
  ss_st_set *s = calloc(1, sizeof *s);
  if (!s) return ss_error(SS_ERR_NOMEM, "out of memory");
  s->dir = strdup(dir);
  if (!s->dir) {
    free(s);
    return ss_error(SS_ERR_NOMEM, "out of memory");
  }
  int rc;
  char path[4096];
  if (is_file(dir)) {
    rc = add_file(s, dir);
  } else if (snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir),
             is_file(path)) {
    rc = open_index(s, dir, path);
  } else if (snprintf(path, sizeof path, "%s/model.safetensors", dir), is_file(path)) {
    rc = add_file(s, path);
  } else {
    rc = ss_error(SS_ERR_IO, "%s: no model.safetensors or model.safetensors.index.json", dir);
  }
  if (rc == SS_OK) {
    qsort(s->tensors, (size_t)s->n_tensors, sizeof *s->tensors, cmp_tensor);
    for (int64_t i = 1; i < s->n_tensors; i++)
      if (strcmp(s->tensors[i].name, s->tensors[i - 1].name) == 0) {
        rc = ss_error(SS_ERR_FORMAT, "%s: tensor '%s' is in two shards ('%s' and '%s')", dir,
                      s->tensors[i].name, s->files[s->tensors[i - 1].file].path,
                      s->files[s->tensors[i].file].path);
        break;
      }
  }
  if (rc) {
    ss_st_close(s);
    return rc;
  }
  *out = s;
  return SS_OK;
}

void ss_st_close(ss_st_set *s) {
  if (!s) return;
  for (int64_t i = 0; i < s->n_tensors; i++) free(s->tensors[i].name);
  free(s->tensors);
  for (int i = 0; i < s->n_files; i++) {
    if (s->files[i].map) munmap((void *)s->files[i].map, (size_t)s->files[i].size);
    free(s->files[i].path);
  }
  free(s->files);
  free(s->dir);
  free(s);
}

const ss_st_tensor *ss_st_find(const ss_st_set *s, const char *name) {
  int64_t lo = 0, hi = s->n_tensors;
  while (lo < hi) {
    int64_t mid = lo + (hi - lo) / 2;
    int c = strcmp(s->tensors[mid].name, name);
    if (c == 0) return &s->tensors[mid];
    if (c < 0) lo = mid + 1;
    else hi = mid;
  }
  return NULL;
}
