#include "runtime/base/status.h"

#include <stdarg.h>

static _Thread_local char ss_errbuf[1024];

int ss_error(int code, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(ss_errbuf, sizeof ss_errbuf, fmt, ap);
  va_end(ap);
  return code;
}

const char *ss_error_msg(void) { return ss_errbuf; }

const char *ss_status_name(int code) {
  switch (code) {
  case SS_OK: return "ok";
  case SS_ERR_IO: return "i/o error";
  case SS_ERR_FORMAT: return "format error";
  case SS_ERR_UNSUPPORTED: return "unsupported";
  case SS_ERR_NOMEM: return "out of memory";
  case SS_ERR_INVALID: return "invalid argument";
  case SS_ERR_RANGE: return "out of range";
  case SS_ERR_COMM: return "communication error";
  case SS_ERR_BUSY: return "busy";
  case SS_ERR_NOT_FOUND: return "not found";
  default: return "internal error";
  }
}
