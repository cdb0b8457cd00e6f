/* A Jinja subset interpreter for chat templates.
 *
 * Renders templates the way Hugging Face transformers does: a sandboxed,
 * immutable jinja2 environment with trim_blocks and lstrip_blocks, loop
 * controls (break/continue), the {% generation %} tag, tojson without HTML
 * escaping (ensure_ascii off unless asked), and the globals raise_exception()
 * and strftime_now().  Undefined names behave like jinja2's default Undefined.
 * A construct outside the subset fails with SS_ERR_UNSUPPORTED naming the
 * line, column and construct; errors in the template's logic (a raised
 * exception, a type error) fail with SS_ERR_INVALID.  Every render is bounded
 * by the limits below, so a hostile template or message cannot hang or
 * exhaust the process. */
#ifndef SS_JINJA_H
#define SS_JINJA_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

typedef struct ss_jinja ss_jinja;

typedef struct ss_jinja_limits {
  size_t max_output_nbytes; /* rendered text */
  size_t max_memory_nbytes; /* every value built while rendering */
  int max_depth;            /* nested calls, expressions, macro recursion */
  uint64_t max_iterations;  /* loop iterations over the whole render */
} ss_jinja_limits;

/* 16 MiB of output, 256 MiB of values, depth 256, 1e6 iterations. */
extern const ss_jinja_limits ss_jinja_default_limits;

/* Compiles a template (UTF-8).  Syntax errors and unknown filters/tests (as
 * jinja2 reports them at compile time) fail with a message naming the line. */
int ss_jinja_compile(const char *src, size_t len, ss_jinja **out);
void ss_jinja_free(ss_jinja *t);

/* Renders with the members of the JSON object `globals` as variables.
 * strftime_now() uses the current local time, or the time in the environment
 * variable SS_TEMPLATE_NOW ("YYYY-MM-DD" or "YYYY-MM-DD HH:MM:SS") when set.
 * *out is malloc'ed and NUL-terminated; *out_len (may be NULL) its length. */
int ss_jinja_render(const ss_jinja *t, const json_t *globals, const ss_jinja_limits *lim,
                    char **out, size_t *out_len);

#endif
