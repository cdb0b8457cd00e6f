#include "launcher/cli.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <strings.h>

int ss_cli_rank = -1;

int ss_cli_fail(const char *cmd, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  if (ss_cli_rank >= 0) fprintf(stderr, "shardserve %s (rank %d): error: ", cmd, ss_cli_rank);
  else fprintf(stderr, "shardserve %s: error: ", cmd);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
  return SS_EXIT_FAIL;
}

int ss_cli_usage(const char *cmd, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "shardserve %s: ", cmd);
  vfprintf(stderr, fmt, ap);
  fprintf(stderr, "\nRun 'shardserve %s --help' for the list of options.\n", cmd);
  va_end(ap);
  return SS_EXIT_USAGE;
}

bool ss_cli_parse_int(const char *cmd, const char *flag, const char *s, int64_t lo, int64_t hi,
                      int64_t *out) {
  char *end;
  errno = 0;
  long long v = strtoll(s, &end, 10);
  if (errno || end == s || *end != '\0' || v < lo || v > hi) {
    ss_cli_usage(cmd, "invalid value '%s' for %s: expected an integer in [%" PRId64 ", %" PRId64 "]",
                 s, flag, lo, hi);
    return false;
  }
  *out = v;
  return true;
}

bool ss_cli_parse_float(const char *cmd, const char *flag, const char *s, double lo, double hi,
                        double *out) {
  char *end;
  errno = 0;
  double v = strtod(s, &end);
  if (errno || end == s || *end != '\0' || !isfinite(v) || v < lo || v > hi) {
    ss_cli_usage(cmd, "invalid value '%s' for %s: expected a number in [%g, %g]", s, flag, lo, hi);
    return false;
  }
  *out = v;
  return true;
}

bool ss_cli_parse_dtype(const char *cmd, const char *flag, const char *s, ss_dtype *out) {
  static const struct {
    const char *name;
    ss_dtype type;
  } k[] = {{"fp8", SS_DTYPE_F8_E4M3}, {"f8_e4m3", SS_DTYPE_F8_E4M3}, {"bf16", SS_DTYPE_BF16},
           {"f16", SS_DTYPE_F16},     {"fp16", SS_DTYPE_F16},         {"f32", SS_DTYPE_F32},
           {"fp32", SS_DTYPE_F32}};
  for (size_t i = 0; i < sizeof k / sizeof *k; i++)
    if (strcasecmp(s, k[i].name) == 0) {
      *out = k[i].type;
      return true;
    }
  ss_cli_usage(cmd, "invalid value '%s' for %s: expected fp8, bf16, f16 or f32", s, flag);
  return false;
}

bool ss_cli_parse_size(const char *cmd, const char *flag, const char *s, double *out) {
  char *end;
  errno = 0;
  double v = strtod(s, &end);
  double mul = 1;
  if (end != s) {
    if (*end == 'k' || *end == 'K') mul = 1024.0, end++;
    else if (*end == 'm' || *end == 'M') mul = 1024.0 * 1024, end++;
    else if (*end == 'g' || *end == 'G') mul = 1024.0 * 1024 * 1024, end++;
    else if (*end == 't' || *end == 'T') mul = 1024.0 * 1024 * 1024 * 1024, end++;
    if (mul > 1 && *end == 'i') end++;
    if (*end == 'B') end++;
  }
  if (errno || end == s || *end || !(v > 0) || v * mul > 1e18) {
    ss_cli_usage(cmd, "invalid value '%s' for %s: expected a size such as 512M or 2G", s, flag);
    return false;
  }
  *out = v * mul;
  return true;
}
