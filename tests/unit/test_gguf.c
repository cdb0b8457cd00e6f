/* GGUF reader from memory: array elements as integers (a float outside the
 * int64 range is refused naming the key, never converted), and repeated keys
 * and tensor names refused.  The files are built byte by byte here as the
 * GGUF specification lays them out, not with our writer. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/base/status.h"
#include "runtime/formats/gguf.h"

typedef struct buf {
  uint8_t b[4096];
  size_t n;
} buf;

static void put(buf *f, const void *p, size_t n) {
  assert_true(f->n + n <= sizeof f->b);
  memcpy(f->b + f->n, p, n);
  f->n += n;
}
static void put_u32(buf *f, uint32_t v) { put(f, &v, 4); }
static void put_u64(buf *f, uint64_t v) { put(f, &v, 8); }
static void put_str(buf *f, const char *s) {
  put_u64(f, strlen(s));
  put(f, s, strlen(s));
}
static void header(buf *f, uint64_t n_tensors, uint64_t n_kv) {
  put(f, "GGUF", 4);
  put_u32(f, 3);
  put_u64(f, n_tensors);
  put_u64(f, n_kv);
}

static void test_arr_int_float_range(void **state) {
  (void)state;
  buf f = {0};
  header(&f, 0, 2);
  put_str(&f, "a.f32");
  put_u32(&f, 9); /* array */
  put_u32(&f, 6); /* of float32 */
  put_u64(&f, 4);
  const float f32[4] = {-2.75f, 1e30f, NAN, -0x1p63f};
  put(&f, f32, sizeof f32);
  put_str(&f, "a.f64");
  put_u32(&f, 9);
  put_u32(&f, 12); /* of float64 */
  put_u64(&f, 3);
  const double f64[3] = {9.2e18, 0x1p63, -0x1p63 - 4096.0};
  put(&f, f64, sizeof f64);

  ss_gguf *g;
  assert_int_equal(ss_gguf_open_memory(f.b, f.n, "mem.gguf", &g), SS_OK);
  const ss_gguf_value *a32 = ss_gguf_get(g, "a.f32"), *a64 = ss_gguf_get(g, "a.f64");
  assert_non_null(a32);
  assert_non_null(a64);
  int64_t x = 7;
  assert_int_equal(ss_gguf_arr_int(g, "a.f32", a32, 0, &x), SS_OK);
  assert_int_equal(x, -2); /* truncated toward zero */
  x = 7;
  assert_int_equal(ss_gguf_arr_int(g, "a.f32", a32, 1, &x), SS_ERR_FORMAT);
  assert_non_null(strstr(ss_error_msg(), "mem.gguf"));
  assert_non_null(strstr(ss_error_msg(), "'a.f32'"));
  assert_non_null(strstr(ss_error_msg(), "element 1"));
  assert_int_equal(ss_gguf_arr_int(g, "a.f32", a32, 2, &x), SS_ERR_FORMAT); /* NaN */
  assert_int_equal(ss_gguf_arr_int(g, "a.f32", a32, 3, &x), SS_OK);        /* -2^63 exactly */
  assert_true(x == INT64_MIN);
  assert_int_equal(ss_gguf_arr_int(g, "a.f64", a64, 0, &x), SS_OK);
  assert_true(x == 9200000000000000000LL);
  assert_int_equal(ss_gguf_arr_int(g, "a.f64", a64, 1, &x), SS_ERR_FORMAT); /* 2^63 */
  assert_non_null(strstr(ss_error_msg(), "'a.f64'"));
  assert_int_equal(ss_gguf_arr_int(g, "a.f64", a64, 2, &x), SS_ERR_FORMAT);
  ss_gguf_close(g);
}

static void test_duplicates(void **state) {
  (void)state;
  buf f = {0};
  header(&f, 0, 3);
  const char *keys[3] = {"b.x", "a.y", "b.x"};
  for (int i = 0; i < 3; i++) {
    put_str(&f, keys[i]);
    put_u32(&f, 4); /* uint32 */
    put_u32(&f, (uint32_t)i);
  }
  ss_gguf *g = (ss_gguf *)1;
  assert_int_equal(ss_gguf_open_memory(f.b, f.n, "dup.gguf", &g), SS_ERR_FORMAT);
  assert_null(g);
  assert_non_null(strstr(ss_error_msg(), "duplicate metadata key 'b.x'"));

  /* Two tensors of one name. */
  buf t = {0};
  header(&t, 2, 0);
  for (int i = 0; i < 2; i++) {
    put_str(&t, "w");
    put_u32(&t, 1);     /* n_dims */
    put_u64(&t, 8);     /* ne[0] */
    put_u32(&t, 0);     /* F32 */
    put_u64(&t, 32u * (uint64_t)i);
  }
  while (t.n % 32) t.b[t.n++] = 0;
  t.n += 64; /* the data, zeros */
  assert_int_equal(ss_gguf_open_memory(t.b, t.n, "dupt.gguf", &g), SS_ERR_FORMAT);
  assert_non_null(strstr(ss_error_msg(), "duplicate tensor name 'w'"));
  /* The same file with distinct names opens. */
  memcpy(t.b + 24 + 8, "v", 1);
  assert_int_equal(ss_gguf_open_memory(t.b, t.n, "t.gguf", &g), SS_OK);
  assert_int_equal(g->n_tensors, 2);
  ss_gguf_close(g);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_arr_int_float_range),
      cmocka_unit_test(test_duplicates),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
