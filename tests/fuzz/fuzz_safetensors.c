/* A safetensors file (the 8-byte header length, the JSON header, the data),
 * opened as ss_st_open opens a single file; every tensor found again by name
 * and its range checked against the file. */
#include <sys/stat.h>

#include "runtime/formats/safetensors.h"
#include "tests/fuzz/fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  char path[128];
  snprintf(path, sizeof path, "%s/in.safetensors", fuzz_scratch_dir());
  fuzz_write_file(path, data, size);
  ss_st_set *s;
  if (ss_st_open(path, &s) == 0) {
    for (int64_t i = 0; i < s->n_tensors; i++) {
      const ss_st_tensor *t = &s->tensors[i];
      FUZZ_CHECK(ss_st_find(s, t->name) == t);
      FUZZ_CHECK(t->file >= 0 && t->file < s->n_files);
      const ss_st_file *f = &s->files[t->file];
      FUZZ_CHECK(t->offset <= f->size && t->nbytes <= f->size - t->offset);
      (void)ss_st_numel(t);
      if (t->nbytes) {
        volatile uint8_t sink = ((const uint8_t *)t->data)[t->nbytes - 1];
        (void)sink;
      }
    }
    ss_st_close(s);
  }
  return 0;
}
