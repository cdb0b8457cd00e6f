/* Shared by the fuzz targets: a scratch folder for targets whose parser reads
 * files, and where the tree's test data is.  Each target defines
 * LLVMFuzzerTestOneInput (and LLVMFuzzerInitialize when it needs setup); the
 * same source is linked with libFuzzer (SS_FUZZ builds) or with replay.c,
 * which feeds it the files of a corpus or regression folder. */
#ifndef SS_FUZZ_COMMON_H
#define SS_FUZZ_COMMON_H

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

/* A folder of our own under /dev/shm (or /tmp), made once per process. */
static inline const char *fuzz_scratch_dir(void) {
  static char dir[64];
  if (!dir[0]) {
    snprintf(dir, sizeof dir, "%s/ss-fuzz-XXXXXX", access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp");
    FUZZ_CHECK(mkdtemp(dir) != NULL);
  }
  return dir;
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
