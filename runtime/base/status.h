/* Status codes and the per-thread error message.
 *
 * Library code (runtime/, comm/, kernels/) never exits: a function that can fail
 * returns an int status, 0 on success or a negative SS_ERR_* code, and records a
 * one-line message naming what went wrong (file, field, limit).  The CLI prints
 * that message and chooses the exit code. */
#ifndef SS_STATUS_H
#define SS_STATUS_H

#include <stdio.h>
#include <stdlib.h>

enum ss_status {
  SS_OK = 0,
  SS_ERR_IO = -1,          /* open/read/mmap failed */
  SS_ERR_FORMAT = -2,      /* malformed file contents */
  SS_ERR_UNSUPPORTED = -3, /* well-formed but not something we implement */
  SS_ERR_NOMEM = -4,
  SS_ERR_INVALID = -5,     /* bad argument or request from the caller */
  SS_ERR_RANGE = -6,       /* a value outside its allowed range */
  SS_ERR_COMM = -7,        /* a peer or collective failed */
  SS_ERR_INTERNAL = -8,
  SS_ERR_BUSY = -9,        /* overloaded: try again later */
  SS_ERR_AGAIN = -10,      /* a device step ran none of its work: run it again (it will
                              run eagerly; kernels/kernels.h step_end) */
  SS_ERR_NOT_FOUND = -11,  /* something asked for does not exist (e.g. a model's chat template) */
};

/* Records the message (printf-style) for this thread and returns `code`, so that
 * `return ss_error(SS_ERR_FORMAT, "%s: bad magic", path);` reads naturally. */
int ss_error(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* The last message recorded on this thread ("" if none). */
const char *ss_error_msg(void);
/* A short name for a status code ("format error", ...). */
const char *ss_status_name(int code);

/* Invariant violations (bugs, not bad input) abort with file:line. */
#define SS_ASSERT(cond)                                                            \
  do {                                                                             \
    if (!(cond)) {                                                                 \
      fprintf(stderr, "%s:%d: assertion failed: %s\n", __FILE__, __LINE__, #cond); \
      abort();                                                                     \
    }                                                                              \
  } while (0)

#endif
