/* Shared by the fuzz targets: a scratch folder for targets whose parser reads
 * files, and where the tree's test data is.  Each target defines
 * LLVMFuzzerTestOneInput (and LLVMFuzzerInitialize when it needs setup); the
 * same source is linked with libFuzzer (SS_FUZZ builds) or with replay.c,
 * which feeds it the files of a corpus or regression folder. */
#ifndef SS_FUZZ_COMMON_H
#define SS_FUZZ_COMMON_H

#include <dirent.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "runtime/base/status.h"

#ifndef SS_FUZZ_DIR
#error "SS_FUZZ_DIR (tests/fuzz) must be defined by the build"
#endif

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Invariant broken: a finding.  abort() so that libFuzzer and ASan report it. */
#define FUZZ_CHECK(cond)                                                               \
  do {                                                                                 \
    if (!(cond)) {                                                                     \
      fprintf(stderr, "%s:%d: fuzz invariant failed: %s\n", __FILE__, __LINE__, #cond); \
      abort();                                                                         \
    }                                                                                  \
  } while (0)

static char g_fuzz_scratch[64];

/* Removes the scratch folder and the files in it (it holds no subfolders). */
static inline void fuzz_scratch_remove(void) {
  DIR *d = opendir(g_fuzz_scratch);
  if (!d) return;
  for (struct dirent *e; (e = readdir(d));) {
    if (e->d_name[0] == '.') continue;
    char path[512];
    snprintf(path, sizeof path, "%s/%s", g_fuzz_scratch, e->d_name);
    unlink(path);
  }
  closedir(d);
  rmdir(g_fuzz_scratch);
}

/* A folder of our own under /dev/shm (or /tmp), made once per process and
 * removed when it exits normally. */
static inline const char *fuzz_scratch_dir(void) {
  if (!g_fuzz_scratch[0]) {
    snprintf(g_fuzz_scratch, sizeof g_fuzz_scratch, "%s/ss-fuzz-XXXXXX",
             access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp");
    FUZZ_CHECK(mkdtemp(g_fuzz_scratch) != NULL);
    atexit(fuzz_scratch_remove);
  }
  return g_fuzz_scratch;
}

static inline void fuzz_write_file(const char *path, const void *data, size_t size) {
  FILE *f = fopen(path, "wb");
  FUZZ_CHECK(f != NULL);
  FUZZ_CHECK(size == 0 || fwrite(data, 1, size, f) == size);
  FUZZ_CHECK(fclose(f) == 0);
}

/* The whole of a file (NUL-terminated; *size without the NUL), or NULL. */
static inline char *fuzz_read_file(const char *path, size_t *size) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  char *p = n >= 0 ? malloc((size_t)n + 1) : NULL;
  if (p && fread(p, 1, (size_t)n, f) != (size_t)n) {
    free(p);
    p = NULL;
  }
  fclose(f);
  if (p) {
    p[n] = 0;
    *size = (size_t)n;
  }
  return p;
}

#endif
