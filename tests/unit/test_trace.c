/* The span buffer (runtime/base/trace.h): nothing recorded while off, the cap
 * (later spans dropped and counted), one track per thread, and the file read
 * back with jansson against the Trace Event Format's fields. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/base/trace.h"

/* The whole file for the spans recorded so far, parsed. */
static json_t *written(void) {
  char *text = NULL, *file = NULL;
  size_t nbytes = 0, file_nbytes = 0;
  assert_int_equal(ss_trace_serialize(&text, &nbytes), 0);
  FILE *f = open_memstream(&file, &file_nbytes);
  assert_non_null(f);
  const char *parts[1] = {text};
  assert_int_equal(ss_trace_write_file(f, "mem", parts, &nbytes, 1, ss_trace_dropped()), 0);
  fclose(f);
  json_error_t err;
  json_t *j = json_loadb(file, file_nbytes, 0, &err);
  if (!j) fail_msg("not JSON: %s at %d: %s", err.text, err.position, file);
  free(text);
  free(file);
  return j;
}

static void test_off_records_nothing(void **state) {
  (void)state;
  assert_false(ss_trace_on());
  ss_trace_span("forward", "step", 1.0, 2.0, NULL, 0);
  assert_int_equal(ss_trace_count(), 0);
}

static void test_cap_drops_later_spans(void **state) {
  (void)state;
  assert_int_equal(ss_trace_start(3, 4), 0);
  assert_true(ss_trace_on());
  for (int i = 0; i < 6; i++)
    ss_trace_span("layer", "compute", 10.0 + i, 10.5 + i, (ss_trace_arg[]){{"layer", i}}, 1);
  assert_int_equal(ss_trace_count(), 4);
  assert_int_equal(ss_trace_dropped(), 2);
  json_t *j = written();
  assert_false(ss_trace_on()); /* serializing stops the recording */
  json_t *ev = json_object_get(j, "traceEvents");
  assert_true(json_is_array(ev));
  int n_x = 0;
  for (size_t i = 0; i < json_array_size(ev); i++) {
    json_t *e = json_array_get(ev, i);
    assert_int_equal(json_integer_value(json_object_get(e, "pid")), 3);
    if (strcmp(json_string_value(json_object_get(e, "ph")), "X") != 0) continue;
    /* The first four kept, in order: ts and dur in microseconds. */
    assert_int_equal(json_integer_value(json_object_get(json_object_get(e, "args"), "layer")), n_x);
    assert_float_equal(json_number_value(json_object_get(e, "ts")), (10.0 + n_x) * 1e6, 1e-3);
    assert_float_equal(json_number_value(json_object_get(e, "dur")), 0.5e6, 1e-3);
    n_x++;
  }
  assert_int_equal(n_x, 4);
  json_t *other = json_object_get(j, "otherData");
  assert_int_equal(json_integer_value(json_object_get(other, "dropped_spans")), 2);
  json_decref(j);
  ss_trace_stop();
}

static void *other_thread(void *arg) {
  (void)arg;
  ss_trace_thread_name("engine");
  ss_trace_span("step", "sched", 5.0, 6.0, NULL, 0);
  return NULL;
}

static void test_tracks_and_names(void **state) {
  (void)state;
  assert_int_equal(ss_trace_start(1, 0), 0);
  ss_trace_process_name("rank 1 \"quoted\"");
  ss_trace_thread_name("main");
  ss_trace_span("forward", "step", 1.0, 2.0, NULL, 0);
  pthread_t t;
  assert_int_equal(pthread_create(&t, NULL, other_thread, NULL), 0);
  pthread_join(t, NULL);
  json_t *j = written();
  json_t *ev = json_object_get(j, "traceEvents");
  int64_t tid_main = -1, tid_engine = -1, tid_forward = -2, tid_step = -2;
  const char *process = NULL;
  for (size_t i = 0; i < json_array_size(ev); i++) {
    json_t *e = json_array_get(ev, i);
    const char *name = json_string_value(json_object_get(e, "name"));
    const int64_t tid = json_integer_value(json_object_get(e, "tid"));
    json_t *args = json_object_get(e, "args");
    if (strcmp(name, "thread_name") == 0) {
      const char *tn = json_string_value(json_object_get(args, "name"));
      if (strcmp(tn, "main") == 0) tid_main = tid;
      if (strcmp(tn, "engine") == 0) tid_engine = tid;
    } else if (strcmp(name, "process_name") == 0) {
      process = json_string_value(json_object_get(args, "name"));
      if (process) process = strdup(process);
    } else if (strcmp(name, "forward") == 0) {
      tid_forward = tid;
    } else if (strcmp(name, "step") == 0) {
      tid_step = tid;
    }
  }
  assert_true(tid_main > 0 && tid_engine > 0 && tid_main != tid_engine);
  assert_int_equal(tid_forward, tid_main);
  assert_int_equal(tid_step, tid_engine);
  assert_non_null(process);
  assert_string_equal(process, "rank 1 \"quoted\"");
  free((void *)process);
  json_decref(j);
  ss_trace_stop();
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_off_records_nothing),
      cmocka_unit_test(test_cap_drops_later_spans),
      cmocka_unit_test(test_tracks_and_names),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
