/* model.safetensors.index.json: the input is the index, in a folder that also
 * holds two small valid shards (tests/fuzz/data/model-0000N-of-00002), so an
 * index naming them reaches the check that the weight_map agrees with their
 * headers. */
#include "runtime/formats/safetensors.h"
#include "tests/fuzz/fuzz_common.h"

static char g_dir[128];

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  snprintf(g_dir, sizeof g_dir, "%s", fuzz_scratch_dir());
  for (int i = 1; i <= 2; i++) {
    char src[512], dst[256];
    snprintf(src, sizeof src, SS_FUZZ_DIR "/data/model-0000%d-of-00002.safetensors", i);
    snprintf(dst, sizeof dst, "%s/model-0000%d-of-00002.safetensors", g_dir, i);
    size_t n;
    char *b = fuzz_read_file(src, &n);
    FUZZ_CHECK(b != NULL);
    fuzz_write_file(dst, b, n);
    free(b);
  }
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (!g_dir[0]) LLVMFuzzerInitialize(NULL, NULL);
  char path[256];
  snprintf(path, sizeof path, "%s/model.safetensors.index.json", g_dir);
  fuzz_write_file(path, data, size);
  ss_st_set *s;
  if (ss_st_open(g_dir, &s) == 0) {
    for (int64_t i = 0; i < s->n_tensors; i++)
      FUZZ_CHECK(ss_st_find(s, s->tensors[i].name) == &s->tensors[i]);
    ss_st_close(s);
  }
  return 0;
}
