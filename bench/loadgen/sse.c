#include "bench/loadgen/sse.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/base/status.h"

void ss_lg_sse_init(ss_lg_sse *s, ss_lg_sse_event_fn on_event, void *ctx) {
  memset(s, 0, sizeof *s);
  s->on_event = on_event;
  s->ctx = ctx;
}

void ss_lg_sse_free(ss_lg_sse *s) {
  free(s->line);
  free(s->data);
  s->line = s->data = NULL;
}

static int append(char **buf, size_t *n, size_t *cap, const char *src, size_t k) {
  if (*n + k + 1 > SS_LG_SSE_MAX_NBYTES)
    return ss_error(SS_ERR_FORMAT, "server-sent event longer than %zu bytes",
                    SS_LG_SSE_MAX_NBYTES);
  if (*n + k + 1 > *cap) {
    size_t ncap = *cap ? *cap : 256;
    while (ncap < *n + k + 1) ncap *= 2;
    char *p = realloc(*buf, ncap);
    if (!p) return ss_error(SS_ERR_NOMEM, "out of memory for a server-sent event");
    *buf = p;
    *cap = ncap;
  }
  memcpy(*buf + *n, src, k);
  *n += k;
  (*buf)[*n] = '\0';
  return SS_OK;
}

static void dispatch(ss_lg_sse *s) {
  if (s->has_data) s->on_event(s->ctx, s->data ? s->data : "", s->data_nbytes);
  s->has_data = false;
  s->data_nbytes = 0;
}

/* One complete line (without its terminator). */
static int line_done(ss_lg_sse *s, const char *line, size_t n) {
  if (n == 0) {
    dispatch(s);
    return SS_OK;
  }
  if (line[0] == ':') return SS_OK;
  const char *colon = memchr(line, ':', n);
  size_t name_n = colon ? (size_t)(colon - line) : n;
  if (name_n != 4 || memcmp(line, "data", 4) != 0) return SS_OK;
  const char *v = colon ? colon + 1 : line + n;
  if (v < line + n && *v == ' ') v++;
  size_t vn = (size_t)(line + n - v);
  int rc = SS_OK;
  if (s->has_data) rc = append(&s->data, &s->data_nbytes, &s->data_cap, "\n", 1);
  if (!rc) rc = append(&s->data, &s->data_nbytes, &s->data_cap, v, vn);
  s->has_data = true;
  return rc;
}

int ss_lg_sse_feed(ss_lg_sse *s, const char *buf, size_t nbytes) {
  size_t i = 0;
  while (i < nbytes) {
    if (s->after_cr && buf[i] == '\n') {
      s->after_cr = false;
      i++;
      continue;
    }
    s->after_cr = false;
    /* The end of this line in buf, if it is there. */
    size_t j = i;
    while (j < nbytes && buf[j] != '\n' && buf[j] != '\r') j++;
    if (j == nbytes) return append(&s->line, &s->line_nbytes, &s->line_cap, buf + i, j - i);
    int rc;
    if (s->line_nbytes) {
      rc = append(&s->line, &s->line_nbytes, &s->line_cap, buf + i, j - i);
      if (!rc) rc = line_done(s, s->line, s->line_nbytes);
      s->line_nbytes = 0;
    } else {
      rc = line_done(s, buf + i, j - i);
    }
    if (rc) return rc;
    s->after_cr = buf[j] == '\r';
    i = j + 1;
  }
  return SS_OK;
}

void ss_lg_sse_finish(ss_lg_sse *s) {
  if (s->line_nbytes) {
    line_done(s, s->line, s->line_nbytes);
    s->line_nbytes = 0;
  }
  dispatch(s);
}

static void error_message(json_t *err, char *buf, size_t cap) {
  if (json_is_string(err)) {
    snprintf(buf, cap, "%s", json_string_value(err));
    return;
  }
  json_t *m = json_object_get(err, "message");
  if (json_is_string(m)) snprintf(buf, cap, "%s", json_string_value(m));
  else snprintf(buf, cap, "server reported an error without a message");
}

/* sink (optional) receives the chunk's text delta; *rc is set when it could
 * not grow. */
static void chunk_parse(const char *data, size_t nbytes, ss_lg_chunk *out, ss_lg_text *sink,
                        int *rc) {
  memset(out, 0, sizeof *out);
  out->prompt_tokens = out->completion_tokens = out->cached_tokens = -1;
  /* Whitespace around [DONE] is tolerated. */
  size_t a = 0, b = nbytes;
  while (a < b && (data[a] == ' ' || data[a] == '\t')) a++;
  while (b > a && (data[b - 1] == ' ' || data[b - 1] == '\t')) b--;
  if (b - a == 6 && memcmp(data + a, "[DONE]", 6) == 0) {
    out->kind = SS_LG_CHUNK_DONE;
    return;
  }
  json_error_t jerr;
  json_t *root = json_loadb(data, nbytes, 0, &jerr);
  if (!json_is_object(root)) {
    out->kind = SS_LG_CHUNK_ERROR;
    snprintf(out->error, sizeof out->error, "stream event is not a JSON object: %.60s%s",
             data, nbytes > 60 ? "..." : "");
    json_decref(root);
    return;
  }
  json_t *err = json_object_get(root, "error");
  if (err && !json_is_null(err)) {
    out->kind = SS_LG_CHUNK_ERROR;
    error_message(err, out->error, sizeof out->error);
    json_decref(root);
    return;
  }
  json_t *choices = json_object_get(root, "choices");
  json_t *c0 = json_is_array(choices) ? json_array_get(choices, 0) : NULL;
  if (json_is_object(c0)) {
    json_t *text = json_object_get(c0, "text");
    if (!json_is_string(text)) text = json_object_get(json_object_get(c0, "delta"), "content");
    if (json_is_string(text)) out->text_nbytes = json_string_length(text);
    if (out->text_nbytes && sink)
      *rc = append(&sink->p, &sink->nbytes, &sink->cap, json_string_value(text), out->text_nbytes);
  }
  json_t *usage = json_object_get(root, "usage");
  if (json_is_object(usage)) {
    out->has_usage = true;
    json_t *p = json_object_get(usage, "prompt_tokens"), *c = json_object_get(usage, "completion_tokens");
    if (json_is_integer(p)) out->prompt_tokens = json_integer_value(p);
    if (json_is_integer(c)) out->completion_tokens = json_integer_value(c);
    json_t *k = json_object_get(json_object_get(usage, "prompt_tokens_details"), "cached_tokens");
    if (json_is_integer(k) && json_integer_value(k) >= 0) out->cached_tokens = json_integer_value(k);
  }
  out->kind = out->text_nbytes || out->has_usage ? SS_LG_CHUNK_DATA : SS_LG_CHUNK_OTHER;
  json_decref(root);
}

void ss_lg_chunk_parse(const char *data, size_t nbytes, ss_lg_chunk *out) {
  int rc = SS_OK;
  chunk_parse(data, nbytes, out, NULL, &rc);
}

int ss_lg_chunk_parse_text(const char *data, size_t nbytes, ss_lg_chunk *out, ss_lg_text *text) {
  int rc = SS_OK;
  chunk_parse(data, nbytes, out, text, &rc);
  return rc;
}

void ss_lg_text_free(ss_lg_text *t) {
  free(t->p);
  t->p = NULL;
  t->nbytes = t->cap = 0;
}

void ss_lg_error_body_message(const char *body, size_t nbytes, char *buf, size_t cap) {
  json_error_t jerr;
  json_t *root = nbytes ? json_loadb(body, nbytes, 0, &jerr) : NULL;
  json_t *e = NULL;
  if (json_is_object(root)) {
    e = json_object_get(root, "error");
    if (!e) e = json_object_get(root, "message");
    if (!e) e = json_object_get(root, "detail");
  }
  if (e && (json_is_string(e) || json_is_object(e))) {
    error_message(e, buf, cap);
  } else {
    /* Not JSON: the first line of the body, printable bytes only. */
    size_t k = 0;
    for (size_t i = 0; i < nbytes && k + 1 < cap && k < 160; i++) {
      char ch = body[i];
      if (ch == '\n' || ch == '\r') break;
      buf[k++] = (ch >= 32 && ch < 127) ? ch : '?';
    }
    buf[k] = '\0';
    if (k == 0) snprintf(buf, cap, "(empty body)");
  }
  json_decref(root);
}
