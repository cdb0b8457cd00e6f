#include "runtime/formats/safetensors.h"

#include <dirent.h>
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
  if (json_object_size(wm) == 0) {
    rc = ss_error(SS_ERR_FORMAT, "%s: weight_map names no tensors", index_path);
    goto done;
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

/* ------------------------------------------------------------------------ */
/* A checkpoint cut per rank                                                  */

static const char k_common_tail[] = "-TP-common.safetensors";

/* The rank of a *-TP-NNN.safetensors name (three or more digits), -2 for a
 * *-TP-common.safetensors one, -1 for any other. */
static int64_t rank_of(const char *name) {
  const size_t n = strlen(name), tl = sizeof k_common_tail - 1;
  if (n >= tl && strcmp(name + n - tl, k_common_tail) == 0) return -2;
  static const char tail[] = ".safetensors";
  const size_t sl = sizeof tail - 1;
  if (n < sl || strcmp(name + n - sl, tail) != 0) return -1;
  size_t k = n - sl, digits = 0;
  while (k > 0 && name[k - 1] >= '0' && name[k - 1] <= '9') k--, digits++;
  if (digits < 3 || digits > 6 || k < 4 || strncmp(name + k - 4, "-TP-", 4) != 0) return -1;
  int64_t r = 0;
  for (size_t i = 0; i < digits; i++) r = r * 10 + (name[k + i] - '0');
  return r;
}

static bool dir_has_common(const char *dir) {
  DIR *d = opendir(dir);
  if (!d) return false;
  bool found = false;
  for (struct dirent *e; !found && (e = readdir(d));) found = rank_of(e->d_name) == -2;
  closedir(d);
  return found;
}

static int cmp_name_file(const void *a, const void *b) {
  const ss_st_tensor *x = a, *y = b;
  const int c = strcmp(x->name, y->name);
  return c ? c : (x->file > y->file) - (x->file < y->file);
}

static void shape_str(const ss_st_tensor *t, char *buf, size_t cap) {
  size_t n = (size_t)snprintf(buf, cap, "[");
  for (int d = 0; d < t->n_dims && n < cap; d++)
    n += (size_t)snprintf(buf + n, cap - n, "%s%" PRId64, d ? ", " : "", t->shape[d]);
  if (n < cap) snprintf(buf + n, cap - n, "]");
}

/* Folds the rank files' tensors of s into one entry per name holding its
 * pieces.  Files are in rank order (common ones first), so sorting by name
 * then file puts each tensor's pieces in rank order. */
static int fold_pieces(ss_st_set *s) {
  const int N = s->n_ranks;
  qsort(s->tensors, (size_t)s->n_tensors, sizeof *s->tensors, cmp_name_file);
  int64_t w = 0;
  for (int64_t i = 0; i < s->n_tensors;) {
    int64_t j = i + 1;
    while (j < s->n_tensors && strcmp(s->tensors[j].name, s->tensors[i].name) == 0) j++;
    ss_st_tensor *g = &s->tensors[i];
    const char *name = g->name;
    if (s->files[g->file].rank < 0) {
      if (j - i > 1)
        return ss_error(SS_ERR_FORMAT, "%s: tensor '%s' is in a common file and also in '%s'",
                        s->files[g->file].path, name, s->files[g[1].file].path);
      const ss_st_tensor keep = *g;
      g->name = NULL;
      s->tensors[w++] = keep;
      i = j;
      continue;
    }
    /* One piece in each rank's files. */
    for (int r = 0; r < N; r++) {
      if (i + r >= j || s->files[g[r].file].rank != r)
        return ss_error(SS_ERR_FORMAT, "%s: tensor '%s' is missing from rank %d's files "
                        "(*-TP-%03d.safetensors); the other ranks' files hold a piece of it",
                        s->dir, name, r, r);
    }
    if (j - i > N)
      return ss_error(SS_ERR_FORMAT, "%s: tensor '%s' is in two files of rank %d",
                      s->files[g[N].file].path, name, s->files[g[N].file].rank);
    for (int r = 1; r < N; r++) {
      bool same = g[r].n_dims == g[0].n_dims && strcmp(g[r].dtype_name, g[0].dtype_name) == 0;
      for (int d = 0; same && d < g[0].n_dims; d++) same = g[r].shape[d] == g[0].shape[d];
      if (!same) {
        char a[96], b[96];
        shape_str(&g[r], a, sizeof a);
        shape_str(&g[0], b, sizeof b);
        return ss_error(SS_ERR_FORMAT, "%s: tensor '%s' is %s %s but %s %s in '%s': the pieces "
                        "of a tensor cut per rank must agree", s->files[g[r].file].path, name,
                        g[r].dtype_name, a, g[0].dtype_name, b, s->files[g[0].file].path);
      }
    }
    ss_st_tensor *pieces = malloc((size_t)N * sizeof *pieces);
    if (!pieces) return ss_error(SS_ERR_NOMEM, "out of memory");
    memcpy(pieces, g, (size_t)N * sizeof *pieces);
    ss_st_tensor t = g[0];
    t.name = strdup(name);
    if (!t.name) {
      free(pieces);
      return ss_error(SS_ERR_NOMEM, "out of memory");
    }
    t.file = -1;
    t.offset = 0;
    t.data = NULL;
    t.n_pieces = N;
    t.split_dim = -1;
    t.pieces = pieces;
    for (int64_t k = i; k < j; k++) s->tensors[k].name = NULL; /* now the pieces' */
    s->tensors[w++] = t;
    i = j;
  }
  s->n_tensors = w;
  return SS_OK;
}

typedef struct named_file {
  int64_t rank; /* -1: common */
  char *name;
} named_file;

static int cmp_named_file(const void *a, const void *b) {
  const named_file *x = a, *y = b;
  if (x->rank != y->rank) return (x->rank > y->rank) - (x->rank < y->rank);
  return strcmp(x->name, y->name);
}

static int open_presharded(ss_st_set *s, const char *dir) {
  DIR *d = opendir(dir);
  if (!d) return ss_error(SS_ERR_IO, "%s: cannot list: %s", dir, strerror(errno));
  named_file *nf = NULL;
  size_t n = 0, cap = 0;
  int rc = SS_OK;
  int64_t max_rank = -1;
  for (struct dirent *e; rc == SS_OK && (e = readdir(d));) {
    int64_t r = rank_of(e->d_name);
    if (r == -1) continue;
    if (r == -2) r = -1;
    if (r > max_rank) max_rank = r;
    if (n == cap) {
      cap = cap ? 2 * cap : 16;
      named_file *p = realloc(nf, cap * sizeof *p);
      if (!p) {
        rc = ss_error(SS_ERR_NOMEM, "out of memory");
        break;
      }
      nf = p;
    }
    nf[n].rank = r;
    nf[n].name = strdup(e->d_name);
    if (!nf[n++].name) rc = ss_error(SS_ERR_NOMEM, "out of memory");
  }
  closedir(d);
  if (rc == SS_OK && max_rank < 0)
    rc = ss_error(SS_ERR_FORMAT, "%s: *-TP-common.safetensors without any rank files "
                  "(*-TP-000.safetensors, ...)", dir);
  if (rc == SS_OK && max_rank >= 4096)
    rc = ss_error(SS_ERR_FORMAT, "%s: a rank file numbered TP-%03" PRId64 ": at most 4096 ranks",
                  dir, max_rank);
  if (rc == SS_OK) {
    qsort(nf, n, sizeof *nf, cmp_named_file);
    /* Every rank up to the highest has files: a gap is a missing file. */
    int64_t want = 0;
    for (size_t i = 0; i < n && rc == SS_OK; i++) {
      if (nf[i].rank < 0 || nf[i].rank < want) continue;
      if (nf[i].rank > want)
        rc = ss_error(SS_ERR_IO, "%s: no file of rank %" PRId64 " (*-TP-%03" PRId64
                      ".safetensors) is present, but the folder has rank files up to TP-%03"
                      PRId64, dir, want, want, max_rank);
      want = nf[i].rank + 1;
    }
  }
  for (size_t i = 0; i < n && rc == SS_OK; i++) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, nf[i].name);
    if ((rc = add_file(s, path)) == SS_OK) s->files[s->n_files - 1].rank = (int)nf[i].rank;
  }
  for (size_t i = 0; i < n; i++) free(nf[i].name);
  free(nf);
  if (rc) return rc;
  s->n_ranks = (int)(max_rank + 1);
  return fold_pieces(s);
}

int ss_st_join(ss_st_set *s, const char *name, int n_dims, const int64_t *shape) {
  ss_st_tensor *t = (ss_st_tensor *)ss_st_find(s, name);
  if (!t || t->n_pieces == 0 || t->data) return SS_OK;
  const int64_t N = t->n_pieces;
  char ps[96];
  shape_str(t, ps, sizeof ps);
  int dim = -1;
  if (t->n_dims == n_dims) {
    for (int d = 0; d < n_dims; d++) {
      bool fits = true;
      for (int k = 0; k < n_dims && fits; k++)
        fits = k == d ? shape[k] % N == 0 && t->shape[k] == shape[k] / N : t->shape[k] == shape[k];
      if (fits && dim < 0) dim = d;
    }
  }
  if (dim < 0) {
    char want[96];
    ss_st_tensor w = {.n_dims = n_dims};
    for (int d = 0; d < n_dims && d < SS_ST_MAX_DIMS; d++) w.shape[d] = shape[d];
    shape_str(&w, want, sizeof want);
    return ss_error(SS_ERR_FORMAT, "%s: tensor '%s': %" PRId64 " rank files each hold %s, which "
                    "laid end to end along one dimension do not give the expected %s", s->dir,
                    name, N, ps, want);
  }
  uint64_t nbytes = 0;
  for (int64_t r = 0; r < N; r++) {
    if (t->pieces[r].nbytes > UINT64_MAX - nbytes)
      return ss_error(SS_ERR_FORMAT, "%s: tensor '%s': joined size overflows 64 bits", s->dir, name);
    nbytes += t->pieces[r].nbytes;
  }
  if (nbytes == 0 || nbytes > (uint64_t)SIZE_MAX / 2)
    return ss_error(SS_ERR_FORMAT, "%s: tensor '%s': joined size %" PRIu64 " bytes is out of "
                    "range", s->dir, name, nbytes);
  void *p = mmap(NULL, (size_t)nbytes, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED)
    return ss_error(SS_ERR_NOMEM, "%s: tensor '%s': cannot reserve %" PRIu64 " bytes of address "
                    "space: %s", s->dir, name, nbytes, strerror(errno));
  t->data = p;
  t->nbytes = nbytes;
  t->split_dim = dim;
  t->shape[dim] *= N;
  return SS_OK;
}

const ss_st_tensor *ss_st_containing(const ss_st_set *s, const void *p) {
  if (!s || s->n_ranks == 0 || !p) return NULL;
  const uint8_t *b = p;
  for (int64_t i = 0; i < s->n_tensors; i++) {
    const ss_st_tensor *t = &s->tensors[i];
    if (t->n_pieces && t->data && b >= (const uint8_t *)t->data &&
        b < (const uint8_t *)t->data + t->nbytes)
      return t;
  }
  return NULL;
}

static int pread_full(int fd, uint8_t *buf, uint64_t n, uint64_t at, const char *path,
                      const char *name) {
  uint64_t done = 0;
  while (done < n) {
    ssize_t k = pread(fd, buf + done, (size_t)(n - done), (off_t)(at + done));
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0)
      return ss_error(SS_ERR_IO, "%s: reading '%s' at offset %" PRIu64 ": %s", path, name,
                      at + done, k < 0 ? strerror(errno) : "unexpected end of file");
    done += (uint64_t)k;
  }
  return SS_OK;
}

int ss_st_read(const ss_st_set *s, const ss_st_tensor *t, int64_t r0, int64_t r1, int64_t c0,
               int64_t c1, void *dst) {
  if (t->n_pieces == 0 || !t->data || t->n_dims != 2 || r0 < 0 || r1 > t->shape[0] || r0 > r1 ||
      c0 < 0 || c1 > t->shape[1] || c0 > c1)
    return ss_error(SS_ERR_INVALID, "%s: tensor '%s': rows [%" PRId64 ", %" PRId64 ") columns [%"
                    PRId64 ", %" PRId64 ") is not a slice of a joined matrix", s->dir, t->name, r0,
                    r1, c0, c1);
  const uint64_t e = t->elem_nbytes, out_row = (uint64_t)(c1 - c0) * e;
  const int64_t pr = t->split_dim == 0 ? t->shape[0] / t->n_pieces : t->shape[0];
  const int64_t pc = t->split_dim == 1 ? t->shape[1] / t->n_pieces : t->shape[1];
  int rc = SS_OK;
  for (int p = 0; p < t->n_pieces && rc == SS_OK; p++) {
    const ss_st_tensor *q = &t->pieces[p];
    const int64_t pr0 = t->split_dim == 0 ? (int64_t)p * pr : 0;
    const int64_t pc0 = t->split_dim == 1 ? (int64_t)p * pc : 0;
    const int64_t a = r0 > pr0 ? r0 : pr0, b = r1 < pr0 + pr ? r1 : pr0 + pr;
    const int64_t ca = c0 > pc0 ? c0 : pc0, cb = c1 < pc0 + pc ? c1 : pc0 + pc;
    if (a >= b || ca >= cb) continue;
    const char *path = s->files[q->file].path;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return ss_error(SS_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    const uint64_t seg = (uint64_t)(cb - ca) * e, in_row = (uint64_t)pc * e;
    for (int64_t i = a; i < b && rc == SS_OK; i++)
      rc = pread_full(fd, (uint8_t *)dst + (uint64_t)(i - r0) * out_row + (uint64_t)(ca - c0) * e,
                      seg, q->offset + (uint64_t)(i - pr0) * in_row + (uint64_t)(ca - pc0) * e,
                      path, t->name);
    close(fd);
  }
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
  } else if (dir_has_common(dir)) {
    rc = open_presharded(s, dir);
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
  for (int64_t i = 0; i < s->n_tensors; i++) {
    ss_st_tensor *t = &s->tensors[i];
    free(t->name);
    if (t->pieces) {
      for (int r = 0; r < t->n_pieces; r++) free(t->pieces[r].name);
      free(t->pieces);
      if (t->data) munmap((void *)t->data, (size_t)t->nbytes);
    }
  }
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
