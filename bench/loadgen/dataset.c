#include "bench/loadgen/dataset.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "runtime/base/status.h"
#include "runtime/base/xrng.h"
#include "runtime/tokenizer/tokenizer.h"

/* Salt of the dataset's random stream (the schedule uses 1). */
#define DATASET_SALT 2
/* The largest dataset file we read into memory. */
#define MAX_FILE_NBYTES ((int64_t)4 << 30)

/* Common short English words: most are one token in GPT-2-style and
 * SentencePiece vocabularies, so N words make roughly N tokens. */
static const char *const k_words[] = {
    "the", "of", "and", "to", "in", "is", "was", "that", "for", "on", "as", "with", "by",
    "he", "at", "from", "his", "an", "were", "are", "which", "this", "be", "or", "has",
    "had", "not", "but", "first", "one", "their", "its", "new", "after", "who", "they",
    "have", "her", "she", "two", "been", "other", "when", "there", "all", "also", "into",
    "during", "time", "would", "school", "only", "city", "may", "year", "most", "where",
    "over", "world", "some", "can", "about", "three", "more", "state", "later", "many",
    "him", "then", "these", "film", "made", "team", "under", "season", "such", "known",
    "people", "united", "war", "some", "house", "music", "year", "water", "light", "small",
    "large", "river", "north", "south", "game", "book", "power", "line", "place", "part",
    "long", "high", "family", "name", "work", "life", "day", "way", "back", "end", "home",
};
#define N_WORDS (sizeof k_words / sizeof k_words[0])

void ss_lg_dataset_free(ss_lg_dataset *d) {
  if (!d) return;
  for (size_t i = 0; i < d->count; i++) {
    free(d->items[i].text);
    free(d->items[i].ids);
  }
  free(d->items);
  free(d->arrivals_s);
  d->arrivals_s = NULL;
  d->items = NULL;
  d->count = 0;
}

static int alloc_items(ss_lg_dataset *d, size_t count) {
  d->count = 0;
  d->items = calloc(count ? count : 1, sizeof *d->items);
  if (!d->items) return ss_error(SS_ERR_NOMEM, "dataset: out of memory for %zu prompts", count);
  return SS_OK;
}

/* ---- token pools ---------------------------------------------------------- */

/* Ids a random prompt may use: the tokenizer's normal tokens (no control,
 * byte or unused ones, which a server may treat specially), and the subset
 * that reads as " word" for text prompts. */
typedef struct pools {
  int32_t *normal;
  size_t normal_count;
  char **words; /* " word" strings (pointers into one buffer, or k_words) */
  size_t word_count;
  char *word_buf;
} pools;

static void pools_free(pools *p) {
  free(p->normal);
  free(p->words);
  free(p->word_buf);
}

static bool is_word_piece(const char *s, size_t n) {
  if (n < 3 || n > 11 || s[0] != ' ') return false;
  for (size_t i = 1; i < n; i++)
    if (s[i] < 'a' || s[i] > 'z') return false;
  return true;
}

static int pools_build(const ss_tokenizer *tok, pools *p) {
  memset(p, 0, sizeof *p);
  if (!tok) return SS_OK;
  int32_t n = ss_tokenizer_n_vocab(tok);
  p->normal = malloc((size_t)n * sizeof *p->normal);
  p->words = malloc((size_t)n * sizeof *p->words);
  p->word_buf = malloc((size_t)n * 12);
  if (!p->normal || !p->words || !p->word_buf) {
    pools_free(p);
    return ss_error(SS_ERR_NOMEM, "dataset: out of memory for a %d-token vocabulary", n);
  }
  char piece[64];
  size_t used = 0;
  for (int32_t id = 0; id < n; id++) {
    if (ss_tokenizer_token_type(tok, id) != SS_TOKTYPE_NORMAL) continue;
    p->normal[p->normal_count++] = id;
    size_t k = ss_tokenizer_piece(tok, id, false, piece, sizeof piece);
    if (k < sizeof piece && is_word_piece(piece, k)) {
      memcpy(p->word_buf + used, piece + 1, k - 1); /* without the space */
      p->word_buf[used + k - 1] = '\0';
      p->words[p->word_count++] = p->word_buf + used;
      used += k;
    }
  }
  if (p->normal_count == 0) {
    pools_free(p);
    return ss_error(SS_ERR_INVALID, "the tokenizer has no normal tokens to build prompts from");
  }
  return SS_OK;
}

static const char *pick_word(const pools *p, ss_xrng *rng) {
  /* Fewer than 256 word-like tokens: the vocabulary is odd; use our list. */
  if (p->word_count >= 256) return p->words[ss_xrng_range(rng, 0, (int64_t)p->word_count - 1)];
  return k_words[ss_xrng_range(rng, 0, (int64_t)N_WORDS - 1)];
}

/* ---- random prompts --------------------------------------------------------- */

static int count_tokens(const ss_tokenizer *tok, const char *text, int64_t *n) {
  int32_t *ids = NULL;
  size_t k = 0;
  int rc = ss_tokenizer_encode(tok, text, strlen(text), false, false, &ids, &k);
  free(ids);
  *n = (int64_t)k;
  return rc;
}

/* `words` words joined by spaces, into a malloc'ed string. */
static char *make_text(const pools *p, ss_xrng *rng, int64_t words) {
  size_t cap = (size_t)words * 12 + 1, n = 0;
  char *s = malloc(cap);
  if (!s) return NULL;
  for (int64_t i = 0; i < words; i++) {
    const char *w = pick_word(p, rng);
    size_t k = strlen(w);
    if (n + k + 2 > cap) break;
    if (i) s[n++] = ' ';
    memcpy(s + n, w, k);
    n += k;
  }
  s[n] = '\0';
  return s;
}

/* Text of exactly `len` tokens under tok, or as close as 8 rounds of adding
 * or dropping words get (word boundaries can merge); the count is measured. */
static int make_counted_text(const ss_tokenizer *tok, const pools *p, ss_xrng *rng,
                             int64_t len, ss_lg_prompt *out) {
  int64_t words = len, n = 0;
  char *text = NULL;
  for (int round = 0; round < 8; round++) {
    free(text);
    if (!(text = make_text(p, rng, words > 0 ? words : 1)))
      return ss_error(SS_ERR_NOMEM, "dataset: out of memory for a prompt");
    int rc = count_tokens(tok, text, &n);
    if (rc) {
      free(text);
      return rc;
    }
    if (n == len) break;
    words += len - n;
  }
  out->text = text;
  out->input_len = n;
  out->input_exact = true;
  return SS_OK;
}

static int64_t draw_len(ss_xrng *rng, int64_t len, double ratio) {
  int64_t lo = (int64_t)floor((double)len * (1.0 - ratio));
  int64_t hi = (int64_t)ceil((double)len * (1.0 + ratio));
  if (lo < 1) lo = 1;
  if (hi < lo) hi = lo;
  return ss_xrng_range(rng, lo, hi);
}

static int random_prompt(const ss_lg_random_params *p, const pools *pl, ss_xrng *rng,
                         int64_t in_len, ss_lg_prompt *out) {
  if (p->ids) {
    out->ids = malloc((size_t)in_len * sizeof *out->ids);
    if (!out->ids) return ss_error(SS_ERR_NOMEM, "dataset: out of memory for a prompt");
    for (int64_t k = 0; k < in_len; k++)
      out->ids[k] = pl->normal_count
                        ? pl->normal[ss_xrng_range(rng, 0, (int64_t)pl->normal_count - 1)]
                        : (int32_t)ss_xrng_range(rng, 0, p->vocab_size - 1);
    out->id_count = (size_t)in_len;
    out->input_len = in_len;
    out->input_exact = true;
    return SS_OK;
  }
  if (p->tok) return make_counted_text(p->tok, pl, rng, in_len, out);
  if (!(out->text = make_text(pl, rng, in_len)))
    return ss_error(SS_ERR_NOMEM, "dataset: out of memory for a prompt");
  out->input_len = in_len; /* about one token per word */
  return SS_OK;
}

static int check_random(const ss_lg_random_params *p) {
  if (p->input_len < 1 || p->input_len > SS_LG_MAX_LEN)
    return ss_error(SS_ERR_RANGE, "random input length %lld is outside [1, %lld]",
                    (long long)p->input_len, (long long)SS_LG_MAX_LEN);
  if (p->output_len < 1 || p->output_len > SS_LG_MAX_LEN)
    return ss_error(SS_ERR_RANGE, "random output length %lld is outside [1, %lld]",
                    (long long)p->output_len, (long long)SS_LG_MAX_LEN);
  if (!(p->range_ratio >= 0 && p->range_ratio < 1))
    return ss_error(SS_ERR_RANGE, "random range ratio %g is outside [0, 1)", p->range_ratio);
  if (p->ids && !p->tok && p->vocab_size < 1)
    return ss_error(SS_ERR_INVALID, "token-id prompts need a vocabulary size or a tokenizer");
  return SS_OK;
}

int ss_lg_dataset_random(const ss_lg_random_params *p, ss_lg_dataset *out) {
  memset(out, 0, sizeof *out);
  int rc = check_random(p);
  if (rc) return rc;
  pools pl;
  if ((rc = pools_build(p->tok, &pl))) return rc;
  if ((rc = alloc_items(out, p->count))) {
    pools_free(&pl);
    return rc;
  }
  ss_xrng rng;
  ss_xrng_seed(&rng, p->seed, DATASET_SALT);
  for (size_t i = 0; i < p->count && !rc; i++) {
    ss_lg_prompt *q = &out->items[i];
    int64_t in_len = draw_len(&rng, p->input_len, p->range_ratio);
    q->output_len = draw_len(&rng, p->output_len, p->range_ratio);
    rc = random_prompt(p, &pl, &rng, in_len, q);
    out->count = i + 1;
  }
  pools_free(&pl);
  if (rc) ss_lg_dataset_free(out);
  return rc;
}

static int text_prompt(const char *text, const ss_tokenizer *tok, ss_lg_prompt *q) {
  if (!(q->text = strdup(text))) return ss_error(SS_ERR_NOMEM, "dataset: out of memory");
  if (tok) {
    q->input_exact = true;
    return count_tokens(tok, text, &q->input_len);
  }
  q->input_len = ((int64_t)strlen(text) + 3) / 4;
  if (q->input_len < 1) q->input_len = 1;
  return SS_OK;
}

int ss_lg_dataset_fixed(const char *text, const ss_lg_random_params *p, ss_lg_dataset *out) {
  if (!text) {
    ss_lg_random_params one = *p;
    one.count = 1;
    one.range_ratio = 0;
    return ss_lg_dataset_random(&one, out);
  }
  memset(out, 0, sizeof *out);
  if (!*text) return ss_error(SS_ERR_INVALID, "the fixed prompt is empty");
  if (p->output_len < 1 || p->output_len > SS_LG_MAX_LEN)
    return ss_error(SS_ERR_RANGE, "output length %lld is outside [1, %lld]",
                    (long long)p->output_len, (long long)SS_LG_MAX_LEN);
  int rc = alloc_items(out, 1);
  if (rc) return rc;
  out->count = 1;
  out->items[0].output_len = p->output_len;
  if ((rc = text_prompt(text, p->tok, &out->items[0]))) ss_lg_dataset_free(out);
  return rc;
}

/* ---- files ------------------------------------------------------------------ */

static int read_file(const char *path, char **buf, size_t *nbytes) {
  FILE *f = fopen(path, "rb");
  if (!f) return ss_error(SS_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
  struct stat st;
  if (fstat(fileno(f), &st) || !S_ISREG(st.st_mode)) {
    fclose(f);
    return ss_error(SS_ERR_IO, "%s: not a regular file", path);
  }
  if ((int64_t)st.st_size > MAX_FILE_NBYTES) {
    fclose(f);
    return ss_error(SS_ERR_RANGE, "%s: %lld bytes is larger than the %lld-byte limit", path,
                    (long long)st.st_size, (long long)MAX_FILE_NBYTES);
  }
  *buf = malloc((size_t)st.st_size + 1);
  if (!*buf) {
    fclose(f);
    return ss_error(SS_ERR_NOMEM, "%s: out of memory", path);
  }
  *nbytes = fread(*buf, 1, (size_t)st.st_size, f);
  int bad = ferror(f);
  fclose(f);
  if (bad || *nbytes != (size_t)st.st_size) {
    free(*buf);
    return ss_error(SS_ERR_IO, "%s: read error", path);
  }
  (*buf)[*nbytes] = '\0';
  if (*nbytes == 0) {
    free(*buf);
    return ss_error(SS_ERR_FORMAT, "%s: the file is empty", path);
  }
  return SS_OK;
}

static int jsonl_item(const char *path, size_t lineno, json_t *o, const ss_tokenizer *tok,
                      ss_lg_prompt *q) {
  if (!json_is_object(o))
    return ss_error(SS_ERR_FORMAT, "%s:%zu: expected a JSON object per line", path, lineno);
  json_t *pr = json_object_get(o, "prompt");
  json_t *ol = json_object_get(o, "output_len");
  if (!ol) ol = json_object_get(o, "max_tokens");
  if (!ol)
    return ss_error(SS_ERR_FORMAT, "%s:%zu: missing \"output_len\" (the tokens to generate)",
                    path, lineno);
  if (!json_is_integer(ol) || json_integer_value(ol) < 1 ||
      json_integer_value(ol) > SS_LG_MAX_LEN)
    return ss_error(SS_ERR_FORMAT, "%s:%zu: \"output_len\" must be an integer in [1, %lld]",
                    path, lineno, (long long)SS_LG_MAX_LEN);
  q->output_len = json_integer_value(ol);
  if (json_is_string(pr)) {
    if (json_string_length(pr) == 0)
      return ss_error(SS_ERR_FORMAT, "%s:%zu: \"prompt\" is empty", path, lineno);
    if (strlen(json_string_value(pr)) != json_string_length(pr))
      return ss_error(SS_ERR_FORMAT, "%s:%zu: \"prompt\" contains a NUL character", path,
                      lineno);
    return text_prompt(json_string_value(pr), tok, q);
  }
  if (json_is_array(pr)) {
    size_t n = json_array_size(pr);
    if (n == 0 || (int64_t)n > SS_LG_MAX_LEN)
      return ss_error(SS_ERR_FORMAT, "%s:%zu: \"prompt\" must hold 1 to %lld token ids", path,
                      lineno, (long long)SS_LG_MAX_LEN);
    if (!(q->ids = malloc(n * sizeof *q->ids))) return ss_error(SS_ERR_NOMEM, "out of memory");
    for (size_t k = 0; k < n; k++) {
      json_t *v = json_array_get(pr, k);
      if (!json_is_integer(v) || json_integer_value(v) < 0 ||
          json_integer_value(v) > INT32_MAX)
        return ss_error(SS_ERR_FORMAT, "%s:%zu: \"prompt\"[%zu] is not a token id (an integer "
                        "in [0, %d])", path, lineno, k, INT32_MAX);
      q->ids[k] = (int32_t)json_integer_value(v);
    }
    q->id_count = n;
    q->input_len = (int64_t)n;
    q->input_exact = true;
    return SS_OK;
  }
  return ss_error(SS_ERR_FORMAT, "%s:%zu: \"prompt\" must be a string or an array of token ids",
                  path, lineno);
}

/* The next non-blank line of a JSON Lines buffer [*s, end), parsed: *o is the
 * line's value (NULL past the last line); *s and *lineno advance.  A line
 * that is not JSON is an error naming the file, the line and the column. */
static int jsonl_next(const char *path, char **s, char *end, size_t *lineno, json_t **o) {
  *o = NULL;
  while (*s < end) {
    char *e = memchr(*s, '\n', (size_t)(end - *s));
    if (!e) e = end;
    char *line = *s, *t = line;
    *s = e < end ? e + 1 : end;
    ++*lineno;
    while (t < e && (*t == ' ' || *t == '\t' || *t == '\r')) t++;
    if (t == e) continue;
    json_error_t jerr;
    if (!(*o = json_loadb(line, (size_t)(e - line), 0, &jerr)))
      return ss_error(SS_ERR_FORMAT, "%s:%zu: invalid JSON at column %d: %s", path, *lineno,
                      jerr.column, jerr.text);
    return SS_OK;
  }
  return SS_OK;
}

int ss_lg_dataset_jsonl(const char *path, const ss_tokenizer *tok, ss_lg_dataset *out) {
  memset(out, 0, sizeof *out);
  char *buf;
  size_t nbytes;
  int rc = read_file(path, &buf, &nbytes);
  if (rc) return rc;
  size_t lines = 1;
  for (size_t i = 0; i < nbytes; i++) lines += buf[i] == '\n';
  if ((rc = alloc_items(out, lines))) {
    free(buf);
    return rc;
  }
  size_t lineno = 0;
  json_t *o;
  for (char *s = buf; !rc && !(rc = jsonl_next(path, &s, buf + nbytes, &lineno, &o)) && o;) {
    rc = jsonl_item(path, lineno, o, tok, &out->items[out->count]);
    out->count++;
    json_decref(o);
  }
  free(buf);
  if (!rc && out->count == 0) rc = ss_error(SS_ERR_FORMAT, "%s: no prompts (every line is blank)", path);
  if (rc) ss_lg_dataset_free(out);
  return rc;
}

/* The text of turn k of a ShareGPT conversation, or NULL. */
static const char *turn_text(json_t *conv, size_t k) {
  json_t *v = json_object_get(json_array_get(conv, k), "value");
  return json_is_string(v) ? json_string_value(v) : NULL;
}

int ss_lg_dataset_sharegpt(const char *path, size_t count, uint64_t seed, int64_t output_len,
                           const ss_tokenizer *tok, ss_lg_dataset *out) {
  memset(out, 0, sizeof *out);
  char *buf;
  size_t nbytes;
  int rc = read_file(path, &buf, &nbytes);
  if (rc) return rc;
  json_error_t jerr;
  json_t *root = json_loadb(buf, nbytes, 0, &jerr);
  free(buf);
  if (!root)
    return ss_error(SS_ERR_FORMAT, "%s: invalid JSON at line %d column %d: %s", path, jerr.line,
                    jerr.column, jerr.text);
  if (!json_is_array(root)) {
    json_decref(root);
    return ss_error(SS_ERR_FORMAT, "%s: a ShareGPT file is a JSON array of conversations",
                    path);
  }
  size_t n = json_array_size(root), usable = 0;
  size_t *keep = malloc((n + 1) * sizeof *keep);
  if (!keep) {
    json_decref(root);
    return ss_error(SS_ERR_NOMEM, "%s: out of memory", path);
  }
  for (size_t i = 0; i < n && !rc; i++) {
    json_t *item = json_array_get(root, i);
    json_t *conv = json_object_get(item, "conversations");
    if (!json_is_object(item) || !json_is_array(conv)) {
      rc = ss_error(SS_ERR_FORMAT, "%s: entry %zu has no \"conversations\" array", path, i);
      break;
    }
    for (size_t k = 0; k < json_array_size(conv); k++)
      if (!turn_text(conv, k))
        rc = ss_error(SS_ERR_FORMAT, "%s: entry %zu, turn %zu has no string \"value\"", path,
                      i, k);
    if (!rc && json_array_size(conv) >= 2 && *turn_text(conv, 0)) keep[usable++] = i;
  }
  if (!rc && usable == 0)
    rc = ss_error(SS_ERR_FORMAT, "%s: no conversation has a prompt and a reply", path);
  /* A seeded Fisher-Yates shuffle, then the first `count`. */
  ss_xrng rng;
  ss_xrng_seed(&rng, seed, DATASET_SALT);
  for (size_t i = usable; i > 1 && !rc; i--) {
    size_t j = (size_t)ss_xrng_range(&rng, 0, (int64_t)i - 1), t = keep[i - 1];
    keep[i - 1] = keep[j];
    keep[j] = t;
  }
  size_t take = count && count < usable ? count : usable;
  if (!rc) rc = alloc_items(out, take);
  for (size_t i = 0; i < take && !rc; i++) {
    json_t *conv = json_object_get(json_array_get(root, keep[i]), "conversations");
    ss_lg_prompt *q = &out->items[i];
    out->count = i + 1;
    if ((rc = text_prompt(turn_text(conv, 0), tok, q))) break;
    if (output_len > 0) {
      q->output_len = output_len;
    } else if (tok) {
      rc = count_tokens(tok, turn_text(conv, 1), &q->output_len);
    } else {
      q->output_len = ((int64_t)strlen(turn_text(conv, 1)) + 3) / 4;
    }
    if (q->output_len < 1) q->output_len = 1;
    if (q->output_len > SS_LG_MAX_LEN) q->output_len = SS_LG_MAX_LEN;
  }
  free(keep);
  json_decref(root);
  if (rc) ss_lg_dataset_free(out);
  return rc;
}

/* ---- shared prefixes: prefix_repetition and traces ------------------------------ */

/* n ids drawn like a random prompt's. */
static void fill_ids(const pools *pl, int32_t vocab, ss_xrng *rng, int64_t n, int32_t *dst) {
  for (int64_t k = 0; k < n; k++)
    dst[k] = pl->normal_count ? pl->normal[ss_xrng_range(rng, 0, (int64_t)pl->normal_count - 1)]
                              : (int32_t)ss_xrng_range(rng, 0, vocab - 1);
}

/* a + " " + b (either may be empty), malloc'ed. */
static char *join_text(const char *a, const char *b) {
  size_t na = strlen(a), nb = strlen(b);
  char *s = malloc(na + nb + 2);
  if (!s) return NULL;
  memcpy(s, a, na);
  size_t n = na;
  if (na && nb) s[n++] = ' ';
  memcpy(s + n, b, nb);
  s[n + nb] = '\0';
  return s;
}

/* A text piece of about len tokens: exactly len under tok when it can be. */
static int piece_text(const ss_tokenizer *tok, const pools *pl, ss_xrng *rng, int64_t len,
                      char **out) {
  *out = NULL;
  if (!tok) {
    if (!(*out = make_text(pl, rng, len))) return ss_error(SS_ERR_NOMEM, "dataset: out of memory");
    return SS_OK;
  }
  ss_lg_prompt q = {0};
  int rc = make_counted_text(tok, pl, rng, len, &q);
  *out = q.text;
  return rc;
}

static int check_len(const char *what, int64_t v, int64_t lo) {
  if (v < lo || v > SS_LG_MAX_LEN)
    return ss_error(SS_ERR_RANGE, "%s %lld is outside [%lld, %lld]", what, (long long)v,
                    (long long)lo, (long long)SS_LG_MAX_LEN);
  return SS_OK;
}

int ss_lg_dataset_prefix_repetition(const ss_lg_prefix_params *p, ss_lg_dataset *out) {
  memset(out, 0, sizeof *out);
  int rc;
  if ((rc = check_len("prefix length", p->prefix_len, 1)) ||
      (rc = check_len("suffix length", p->suffix_len, 1)) ||
      (rc = check_len("output length", p->output_len, 1)))
    return rc;
  if (p->prefix_len + p->suffix_len > SS_LG_MAX_LEN)
    return ss_error(SS_ERR_RANGE, "prefix + suffix length %lld is above %lld",
                    (long long)(p->prefix_len + p->suffix_len), (long long)SS_LG_MAX_LEN);
  if (p->num_prefixes < 1 || p->num_prefixes > SS_LG_MAX_PREFIXES)
    return ss_error(SS_ERR_RANGE, "number of prefixes %zu is outside [1, %d]", p->num_prefixes,
                    SS_LG_MAX_PREFIXES);
  if (p->count < p->num_prefixes)
    return ss_error(SS_ERR_RANGE, "%zu requests cannot share %zu prefixes: need at least one "
                    "request per prefix", p->count, p->num_prefixes);
  if (p->ids && !p->tok && p->vocab_size < 2)
    return ss_error(SS_ERR_INVALID, "token-id prompts need a vocabulary size (>= 2) or a tokenizer");
  size_t per = p->count / p->num_prefixes, total = per * p->num_prefixes;
  pools pl;
  if ((rc = pools_build(p->tok, &pl))) return rc;
  if ((rc = alloc_items(out, total))) {
    pools_free(&pl);
    return rc;
  }
  ss_xrng rng;
  ss_xrng_seed(&rng, p->seed, DATASET_SALT);
  int32_t *pre = NULL;
  char *pre_text = NULL;
  for (size_t g = 0; g < p->num_prefixes && !rc; g++) {
    size_t first = g * per;
    if (p->ids) {
      free(pre);
      if (!(pre = malloc((size_t)p->prefix_len * sizeof *pre))) {
        rc = ss_error(SS_ERR_NOMEM, "dataset: out of memory for a prefix");
        break;
      }
      fill_ids(&pl, p->vocab_size, &rng, p->prefix_len, pre);
    } else {
      free(pre_text);
      if ((rc = piece_text(p->tok, &pl, &rng, p->prefix_len, &pre_text))) break;
    }
    for (size_t k = 0; k < per && !rc; k++) {
      ss_lg_prompt *q = &out->items[first + k];
      out->count = first + k + 1;
      q->group = (int64_t)g;
      q->output_len = p->output_len;
      if (p->ids) {
        size_t n = (size_t)(p->prefix_len + p->suffix_len);
        if (!(q->ids = malloc(n * sizeof *q->ids))) {
          rc = ss_error(SS_ERR_NOMEM, "dataset: out of memory for a prompt");
          break;
        }
        memcpy(q->ids, pre, (size_t)p->prefix_len * sizeof *pre);
        /* Draw again while the suffix equals an earlier one of the group. */
        for (int tries = 0; tries < 64; tries++) {
          fill_ids(&pl, p->vocab_size, &rng, p->suffix_len, q->ids + p->prefix_len);
          bool dup = false;
          for (size_t j = first; j < first + k && !dup; j++)
            dup = memcmp(out->items[j].ids + p->prefix_len, q->ids + p->prefix_len,
                         (size_t)p->suffix_len * sizeof *q->ids) == 0;
          if (!dup) break;
        }
        q->id_count = n;
        q->prefix_size = (size_t)p->prefix_len;
        q->input_len = (int64_t)n;
        q->input_exact = true;
      } else {
        char *suf = NULL;
        for (int tries = 0; tries < 64 && !rc; tries++) {
          free(suf);
          if ((rc = piece_text(p->tok, &pl, &rng, p->suffix_len, &suf))) break;
          bool dup = false;
          size_t np = strlen(pre_text) + 1;
          for (size_t j = first; j < first + k && !dup; j++)
            dup = strcmp(out->items[j].text + np, suf) == 0;
          if (!dup) break;
        }
        if (!rc && !(q->text = join_text(pre_text, suf)))
          rc = ss_error(SS_ERR_NOMEM, "dataset: out of memory for a prompt");
        free(suf);
        if (rc) break;
        q->prefix_size = strlen(pre_text);
        if (p->tok) {
          q->input_exact = true;
          rc = count_tokens(p->tok, q->text, &q->input_len);
        } else {
          q->input_len = p->prefix_len + p->suffix_len;
        }
      }
    }
  }
  free(pre);
  free(pre_text);
  pools_free(&pl);
  /* A seeded shuffle interleaves the prefixes. */
  for (size_t i = out->count; i > 1 && !rc; i--) {
    size_t j = (size_t)ss_xrng_range(&rng, 0, (int64_t)i - 1);
    ss_lg_prompt t = out->items[i - 1];
    out->items[i - 1] = out->items[j];
    out->items[j] = t;
  }
  if (rc) ss_lg_dataset_free(out);
  return rc;
}

/* The content of hash id h: the same for every h wherever it is used. */
static void block_rng(uint64_t seed, int64_t h, ss_xrng *rng) {
  ss_xrng_seed(rng, seed ^ ((uint64_t)h * 0x9E3779B97F4A7C15ull), DATASET_SALT + 1);
}

static int trace_prompt(const ss_lg_trace_params *p, const pools *pl, ss_xrng *rng,
                        const int64_t *hash, size_t n_hash, int64_t in_len, ss_lg_prompt *q) {
  int64_t bs = p->block_size;
  if (p->ids) {
    if (!(q->ids = malloc((size_t)in_len * sizeof *q->ids)))
      return ss_error(SS_ERR_NOMEM, "dataset: out of memory for a prompt");
    int64_t at = 0;
    for (size_t b = 0; b < n_hash && at < in_len; b++) {
      int64_t take = in_len - at < bs ? in_len - at : bs;
      ss_xrng br;
      block_rng(p->seed, hash[b], &br);
      fill_ids(pl, p->vocab_size, &br, take, q->ids + at);
      at += take;
    }
    fill_ids(pl, p->vocab_size, rng, in_len - at, q->ids + at); /* past the hash ids: unique */
    q->id_count = (size_t)in_len;
    q->input_len = in_len;
    q->input_exact = true;
    return SS_OK;
  }
  char *text = strdup("");
  int64_t at = 0;
  for (size_t b = 0; text && at < in_len; b++) {
    int64_t take = in_len - at < bs ? in_len - at : bs;
    ss_xrng br;
    if (b < n_hash) block_rng(p->seed, hash[b], &br);
    char *piece = make_text(pl, b < n_hash ? &br : rng, take), *t = NULL;
    if (piece) t = join_text(text, piece);
    free(piece);
    free(text);
    text = t;
    at += take;
  }
  if (!text) return ss_error(SS_ERR_NOMEM, "dataset: out of memory for a prompt");
  q->text = text;
  q->input_len = in_len;
  if (p->tok) {
    q->input_exact = true;
    return count_tokens(p->tok, text, &q->input_len);
  }
  return SS_OK;
}

static int trace_line(const char *path, size_t lineno, json_t *o, const ss_lg_trace_params *p,
                      const pools *pl, ss_xrng *rng, ss_lg_prompt *q, double *ts_ms) {
  if (!json_is_object(o))
    return ss_error(SS_ERR_FORMAT, "%s:%zu: expected a JSON object per line", path, lineno);
  json_t *ts = json_object_get(o, "timestamp"), *il = json_object_get(o, "input_length");
  json_t *ol = json_object_get(o, "output_length"), *hs = json_object_get(o, "hash_ids");
  if (!json_is_number(ts) || !isfinite(json_number_value(ts)) || json_number_value(ts) < 0 ||
      json_number_value(ts) > 1e12)
    return ss_error(SS_ERR_FORMAT, "%s:%zu: \"timestamp\" must be a number of milliseconds in "
                    "[0, 1e12]", path, lineno);
  *ts_ms = json_number_value(ts);
  if (!json_is_integer(il) || json_integer_value(il) < 1 || json_integer_value(il) > SS_LG_MAX_LEN)
    return ss_error(SS_ERR_FORMAT, "%s:%zu: \"input_length\" must be an integer in [1, %lld]",
                    path, lineno, (long long)SS_LG_MAX_LEN);
  if (!json_is_integer(ol) || json_integer_value(ol) < 1 || json_integer_value(ol) > SS_LG_MAX_LEN)
    return ss_error(SS_ERR_FORMAT, "%s:%zu: \"output_length\" must be an integer in [1, %lld]",
                    path, lineno, (long long)SS_LG_MAX_LEN);
  if (hs && !json_is_array(hs))
    return ss_error(SS_ERR_FORMAT, "%s:%zu: \"hash_ids\" must be an array of integers", path,
                    lineno);
  int64_t in_len = json_integer_value(il);
  q->output_len = json_integer_value(ol);
  size_t n_hash = hs ? json_array_size(hs) : 0;
  /* Only the blocks input_length reaches are used. */
  int64_t reach = (in_len + p->block_size - 1) / p->block_size;
  if ((int64_t)n_hash > reach) n_hash = (size_t)reach;
  int64_t *hash = malloc((n_hash + 1) * sizeof *hash);
  if (!hash) return ss_error(SS_ERR_NOMEM, "dataset: out of memory");
  for (size_t k = 0; k < n_hash; k++) {
    json_t *v = json_array_get(hs, k);
    if (!json_is_integer(v) || json_integer_value(v) < 0) {
      free(hash);
      return ss_error(SS_ERR_FORMAT, "%s:%zu: \"hash_ids\"[%zu] is not an integer >= 0", path,
                      lineno, k);
    }
    hash[k] = json_integer_value(v);
  }
  int rc = trace_prompt(p, pl, rng, hash, n_hash, in_len, q);
  free(hash);
  return rc;
}

int ss_lg_dataset_trace(const char *path, const ss_lg_trace_params *p, ss_lg_dataset *out) {
  memset(out, 0, sizeof *out);
  if (p->block_size < 1 || p->block_size > SS_LG_MAX_BLOCK)
    return ss_error(SS_ERR_RANGE, "trace block size %lld is outside [1, %d]",
                    (long long)p->block_size, SS_LG_MAX_BLOCK);
  if (!(p->time_scale >= 0 && p->time_scale <= 1e6))
    return ss_error(SS_ERR_RANGE, "trace time scale %g is outside [0, 1e6]", p->time_scale);
  if (p->ids && !p->tok && p->vocab_size < 1)
    return ss_error(SS_ERR_INVALID, "token-id prompts need a vocabulary size or a tokenizer");
  char *buf;
  size_t nbytes;
  int rc = read_file(path, &buf, &nbytes);
  if (rc) return rc;
  size_t lines = 1;
  for (size_t i = 0; i < nbytes; i++) lines += buf[i] == '\n';
  if (p->max_count && lines > p->max_count) lines = p->max_count;
  pools pl;
  if ((rc = pools_build(p->tok, &pl))) {
    free(buf);
    return rc;
  }
  rc = alloc_items(out, lines);
  if (!rc && !(out->arrivals_s = calloc(lines, sizeof *out->arrivals_s)))
    rc = ss_error(SS_ERR_NOMEM, "dataset: out of memory");
  ss_xrng rng;
  ss_xrng_seed(&rng, p->seed, DATASET_SALT);
  size_t lineno = 0;
  double t0 = 0, prev = 0;
  json_t *o;
  for (char *s = buf; !rc && out->count < lines &&
                      !(rc = jsonl_next(path, &s, buf + nbytes, &lineno, &o)) && o;) {
    double ts = 0;
    rc = trace_line(path, lineno, o, p, &pl, &rng, &out->items[out->count], &ts);
    json_decref(o);
    if (!rc && out->count == 0) t0 = prev = ts;
    if (!rc && ts < prev)
      rc = ss_error(SS_ERR_FORMAT, "%s:%zu: \"timestamp\" %g is before the previous line's "
                    "%g (a trace is in time order)", path, lineno, ts, prev);
    if (!rc) out->arrivals_s[out->count] = (ts - t0) / 1000.0 * p->time_scale;
    prev = ts;
    out->count++;
  }
  free(buf);
  pools_free(&pl);
  if (!rc && out->count == 0) rc = ss_error(SS_ERR_FORMAT, "%s: no requests (every line is blank)", path);
  if (rc) ss_lg_dataset_free(out);
  return rc;
}

/* ---- multi-turn sessions -------------------------------------------------------- */

int ss_lg_dataset_multi_turn(const ss_lg_multi_turn_params *p, ss_lg_dataset *out) {
  memset(out, 0, sizeof *out);
  if (p->sessions < 1 || p->sessions > SS_LG_MAX_SESSIONS)
    return ss_error(SS_ERR_RANGE, "multi-turn sessions %zu is outside [1, %d]", p->sessions,
                    SS_LG_MAX_SESSIONS);
  if (p->turns < 1 || p->turns > SS_LG_MAX_TURNS)
    return ss_error(SS_ERR_RANGE, "multi-turn turns %zu is outside [1, %d]", p->turns,
                    SS_LG_MAX_TURNS);
  int rc = check_len("multi-turn user length", p->user_len, 1);
  if (!rc) rc = check_len("multi-turn output length", p->output_len, 1);
  if (rc) return rc;
  ss_lg_random_params rp = {.input_len = p->user_len, .tok = p->tok};
  pools pl;
  if ((rc = pools_build(p->tok, &pl))) return rc;
  size_t count = p->sessions * p->turns;
  if ((rc = alloc_items(out, count))) {
    pools_free(&pl);
    return rc;
  }
  ss_xrng rng;
  ss_xrng_seed(&rng, p->seed, DATASET_SALT + 2);
  for (size_t i = 0; i < count && !rc; i++) {
    ss_lg_prompt *q = &out->items[i];
    q->output_len = p->output_len;
    q->group = (int64_t)(i / p->turns);
    rc = random_prompt(&rp, &pl, &rng, p->user_len, q);
    out->count = i + 1;
  }
  pools_free(&pl);
  if (rc) ss_lg_dataset_free(out);
  else out->turns = p->turns;
  return rc;
}
