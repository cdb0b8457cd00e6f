/* Server-sent events as OpenAI-compatible servers stream them, and the chunk
 * objects inside.
 *
 * The byte stream is split into lines (LF, CRLF or CR); "data:" lines are
 * joined with "\n" and dispatched as one event at the blank line that ends it
 * (the SSE rule; OpenAI, vLLM and our server send one data line per event).
 * Comment lines (":...") and other fields (event:, id:, retry:) are skipped. */
#ifndef SS_LG_SSE_H
#define SS_LG_SSE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The longest event we accept; a server sending more is broken or hostile. */
#define SS_LG_SSE_MAX_NBYTES ((size_t)16 << 20)

typedef void (*ss_lg_sse_event_fn)(void *ctx, const char *data, size_t nbytes);

typedef struct ss_lg_sse {
  char *line;          /* the current, unfinished line */
  size_t line_nbytes, line_cap;
  char *data;          /* data lines of the current event, joined */
  size_t data_nbytes, data_cap;
  bool has_data;
  bool after_cr;       /* the last byte was CR: a following LF ends nothing */
  ss_lg_sse_event_fn on_event;
  void *ctx;
} ss_lg_sse;

void ss_lg_sse_init(ss_lg_sse *s, ss_lg_sse_event_fn on_event, void *ctx);
/* Feeds bytes; calls on_event for every complete event.  Returns SS_OK, or
 * SS_ERR_FORMAT when an event exceeds SS_LG_SSE_MAX_NBYTES, SS_ERR_NOMEM. */
int ss_lg_sse_feed(ss_lg_sse *s, const char *buf, size_t nbytes);
/* End of stream: dispatches an event left without its blank line. */
void ss_lg_sse_finish(ss_lg_sse *s);
void ss_lg_sse_free(ss_lg_sse *s);

typedef enum ss_lg_chunk_kind {
  SS_LG_CHUNK_OTHER, /* valid JSON without text, usage or error (e.g. a role-only delta) */
  SS_LG_CHUNK_DONE,  /* data: [DONE] */
  SS_LG_CHUNK_ERROR, /* {"error": ...} or data that is not JSON */
  SS_LG_CHUNK_DATA,  /* text and/or usage */
} ss_lg_chunk_kind;

typedef struct ss_lg_chunk {
  ss_lg_chunk_kind kind;
  size_t text_nbytes;     /* choices[0].text or choices[0].delta.content */
  bool has_usage;         /* a non-null "usage" object */
  int64_t prompt_tokens;  /* -1 if usage lacks it */
  int64_t completion_tokens;
  int64_t cached_tokens;  /* usage.prompt_tokens_details.cached_tokens, -1 if absent */
  char error[256];        /* for SS_LG_CHUNK_ERROR */
} ss_lg_chunk;

/* Classifies one event's data.  Never fails: bad JSON is SS_LG_CHUNK_ERROR. */
void ss_lg_chunk_parse(const char *data, size_t nbytes, ss_lg_chunk *out);

/* A growing text buffer, NUL-terminated once anything is in it. */
typedef struct ss_lg_text {
  char *p;
  size_t nbytes, cap;
} ss_lg_text;
void ss_lg_text_free(ss_lg_text *t);

/* As ss_lg_chunk_parse, and appends the chunk's text delta to *text (multi-
 * turn sessions resend it).  SS_ERR_NOMEM when the text cannot grow (the
 * chunk is still classified), or SS_ERR_FORMAT past SS_LG_SSE_MAX_NBYTES. */
int ss_lg_chunk_parse_text(const char *data, size_t nbytes, ss_lg_chunk *out, ss_lg_text *text);

/* The message of an OpenAI-style error body ({"error": {"message": ...}} or
 * {"message": ...} or {"detail": ...}), else the body's start, into buf. */
void ss_lg_error_body_message(const char *body, size_t nbytes, char *buf, size_t cap);

#endif
