/* The incremental matcher: sets of interned parse stacks advanced byte by
 * byte, and the allowed-token mask from one walk of the vocabulary trie. */
#include <stdlib.h>
#include <string.h>

#include "runtime/base/status.h"
#include "runtime/grammar/grammar_internal.h"

/* ------------------------------------------------------------------------ */
/* The vocabulary trie                                                        */

/* Nodes in preorder: node i's subtree is [i, end[i]), so a rejected prefix
 * skips its whole subtree with one jump.  Node 0 is the root (no byte). */
struct ss_grammar_vocab {
  int32_t n_vocab;
  int32_t n_nodes;
  uint8_t *byte;     /* (n_nodes) */
  int32_t *depth;    /* (n_nodes) */
  int32_t *end;      /* (n_nodes) */
  int32_t *tok0;     /* (n_nodes + 1): tokens ending at node i are toks[tok0[i]..tok0[i+1]) */
  int32_t *toks;     /* token ids, by node */
  int32_t max_depth;
  int32_t *eog;      /* end-of-generation ids */
  int32_t n_eog;
  char **piece;      /* (n_vocab): each token's bytes (NULL: none) */
  size_t *nbytes;    /* (n_vocab) */
};

typedef struct piece_ref {
  const unsigned char *p;
  size_t n;
  int32_t id;
} piece_ref;

static int cmp_piece(const void *a, const void *b) {
  const piece_ref *x = a, *y = b;
  size_t n = x->n < y->n ? x->n : y->n;
  int c = memcmp(x->p, y->p, n);
  if (c) return c;
  if (x->n != y->n) return x->n < y->n ? -1 : 1;
  return x->id < y->id ? -1 : x->id > y->id;
}

/* Builds the subtree of the pieces r[lo..hi), which share their first d bytes,
 * at node *n (preorder). */
static void trie_build(ss_grammar_vocab *v, const piece_ref *r, int32_t lo, int32_t hi, int32_t d,
                       int32_t *nt) {
  const int32_t me = v->n_nodes++;
  v->depth[me] = d;
  if (d > v->max_depth) v->max_depth = d;
  v->tok0[me] = *nt;
  int32_t i = lo;
  while (i < hi && r[i].n == (size_t)d) v->toks[(*nt)++] = r[i++].id;
  while (i < hi) {
    int32_t j = i + 1;
    while (j < hi && r[j].p[d] == r[i].p[d]) j++;
    const int32_t child = v->n_nodes;
    trie_build(v, r, i, j, d + 1, nt);
    v->byte[child] = r[i].p[d];
    i = j;
  }
  v->end[me] = v->n_nodes;
}

int ss_grammar_vocab_create_pieces(int32_t n, const char *const *pieces, const size_t *nbytes,
                                   const bool *eog, ss_grammar_vocab **out) {
  *out = NULL;
  ss_grammar_vocab *v = calloc(1, sizeof *v);
  if (!v) return ss_error(SS_ERR_NOMEM, "out of memory");
  v->n_vocab = n;
  piece_ref *r = malloc(((size_t)n + 1) * sizeof *r);
  v->piece = calloc((size_t)n + 1, sizeof *v->piece);
  v->nbytes = calloc((size_t)n + 1, sizeof *v->nbytes);
  v->eog = malloc(((size_t)n + 1) * sizeof *v->eog);
  int64_t total = 1;
  int32_t m = 0;
  if (!r || !v->piece || !v->nbytes || !v->eog) goto nomem;
  for (int32_t i = 0; i < n; i++) {
    if (eog[i]) {
      v->eog[v->n_eog++] = i;
      continue;
    }
    if (!nbytes[i]) continue;
    v->piece[i] = malloc(nbytes[i]);
    if (!v->piece[i]) goto nomem;
    memcpy(v->piece[i], pieces[i], nbytes[i]);
    v->nbytes[i] = nbytes[i];
    r[m++] = (piece_ref){(const unsigned char *)v->piece[i], nbytes[i], i};
    total += (int64_t)nbytes[i];
  }
  qsort(r, (size_t)m, sizeof *r, cmp_piece);
  /* at most one node per piece byte, plus the root */
  v->byte = calloc((size_t)total, 1);
  v->depth = malloc((size_t)total * sizeof *v->depth);
  v->end = malloc((size_t)total * sizeof *v->end);
  v->tok0 = malloc(((size_t)total + 1) * sizeof *v->tok0);
  v->toks = malloc(((size_t)m + 1) * sizeof *v->toks);
  if (!v->byte || !v->depth || !v->end || !v->tok0 || !v->toks) goto nomem;
  int32_t nt = 0;
  trie_build(v, r, 0, m, 0, &nt);
  v->tok0[v->n_nodes] = nt;
  free(r);
  *out = v;
  return 0;
nomem:
  free(r);
  ss_grammar_vocab_free(v);
  return ss_error(SS_ERR_NOMEM, "out of memory building the vocabulary trie (%d tokens)", n);
}

int ss_grammar_vocab_create(const ss_tokenizer *t, ss_grammar_vocab **out) {
  const int32_t n = ss_tokenizer_n_vocab(t);
  char **pieces = calloc((size_t)n + 1, sizeof *pieces);
  size_t *nb = calloc((size_t)n + 1, sizeof *nb);
  bool *eog = calloc((size_t)n + 1, sizeof *eog);
  int rc = 0;
  if (!pieces || !nb || !eog) {
    rc = ss_error(SS_ERR_NOMEM, "out of memory");
    goto done;
  }
  for (int32_t i = 0; i < n && !rc; i++) {
    char buf[512];
    eog[i] = ss_tokenizer_is_eog(t, i);
    size_t k = ss_tokenizer_piece(t, i, false, buf, sizeof buf);
    pieces[i] = malloc(k ? k : 1);
    if (!pieces[i]) {
      rc = ss_error(SS_ERR_NOMEM, "out of memory");
      break;
    }
    if (k > sizeof buf) ss_tokenizer_piece(t, i, false, pieces[i], k);
    else memcpy(pieces[i], buf, k);
    nb[i] = k;
  }
  if (!rc) rc = ss_grammar_vocab_create_pieces(n, (const char *const *)pieces, nb, eog, out);
done:
  if (pieces)
    for (int32_t i = 0; i < n; i++) free(pieces[i]);
  free(pieces);
  free(nb);
  free(eog);
  return rc;
}

void ss_grammar_vocab_free(ss_grammar_vocab *v) {
  if (!v) return;
  if (v->piece)
    for (int32_t i = 0; i < v->n_vocab; i++) free(v->piece[i]);
  free(v->piece);
  free(v->nbytes);
  free(v->eog);
  free(v->byte);
  free(v->depth);
  free(v->end);
  free(v->tok0);
  free(v->toks);
  free(v);
}

int32_t ss_grammar_vocab_n(const ss_grammar_vocab *v) { return v->n_vocab; }

/* ------------------------------------------------------------------------ */
/* Stacks and states                                                          */

/* A stack node: the position of the element to match next (a GE_SET at the
 * top of a stack; below it, where to continue when the rule above ends) and
 * the node below.  Node 0 is the empty stack: the grammar is complete. */
typedef struct snode {
  int32_t pos, below;
} snode;

typedef struct ivec {
  int32_t *p;
  int32_t n, cap;
} ivec;

/* A cached mask: the state it belongs to and its bits. */
typedef struct mask_entry {
  int32_t *key;
  int32_t nkey;
  uint32_t *bits;
} mask_entry;

#define MASK_CACHE 64
/* Collected once this many nodes exist (a state reaches only a few). */
#define NODE_GC 200000

struct ss_grammar_state {
  ss_grammar *g;
  snode *nodes;
  int32_t n_nodes, cap_nodes;
  int32_t *hash;       /* open addressing over nodes, -1 empty */
  int32_t hcap;
  ivec cur;            /* the current state: sorted node ids */
  ivec *depth;         /* the mask walk's state at each trie depth */
  int32_t n_depth;
  ivec tmp;
  mask_entry cache[MASK_CACHE];
  int32_t n_cache, next_evict;
  int32_t mask_words;
  bool oom;
};

static bool ivec_push(ivec *v, int32_t x) {
  if (v->n == v->cap) {
    int32_t c = v->cap ? v->cap * 2 : 16;
    int32_t *q = realloc(v->p, (size_t)c * sizeof *q);
    if (!q) return false;
    v->p = q;
    v->cap = c;
  }
  v->p[v->n++] = x;
  return true;
}

static uint32_t hash2(int32_t a, int32_t b) {
  uint64_t h = ((uint64_t)(uint32_t)a << 32 | (uint32_t)b) * 0x9E3779B97F4A7C15ull;
  return (uint32_t)(h >> 32);
}

static bool rehash(ss_grammar_state *s, int32_t cap) {
  int32_t *h = malloc((size_t)cap * sizeof *h);
  if (!h) return false;
  memset(h, 0xff, (size_t)cap * sizeof *h);
  for (int32_t i = 1; i < s->n_nodes; i++) {
    uint32_t k = hash2(s->nodes[i].pos, s->nodes[i].below) & (uint32_t)(cap - 1);
    while (h[k] >= 0) k = (k + 1) & (uint32_t)(cap - 1);
    h[k] = i;
  }
  free(s->hash);
  s->hash = h;
  s->hcap = cap;
  return true;
}

static int32_t intern(ss_grammar_state *s, int32_t pos, int32_t below) {
  uint32_t k = hash2(pos, below) & (uint32_t)(s->hcap - 1);
  for (int32_t i; (i = s->hash[k]) >= 0; k = (k + 1) & (uint32_t)(s->hcap - 1))
    if (s->nodes[i].pos == pos && s->nodes[i].below == below) return i;
  if (s->n_nodes == s->cap_nodes) {
    int32_t c = s->cap_nodes * 2;
    snode *q = realloc(s->nodes, (size_t)c * sizeof *q);
    if (!q) return s->oom = true, -1;
    s->nodes = q;
    s->cap_nodes = c;
  }
  const int32_t id = s->n_nodes++;
  s->nodes[id] = (snode){pos, below};
  s->hash[k] = id;
  if ((int64_t)s->n_nodes * 2 > s->hcap && !rehash(s, s->hcap * 2)) return s->oom = true, -1;
  return id;
}

/* Adds to out every stack that continues at pos with `below` underneath,
 * expanded until its top is a byte set (or it is empty). */
static void expand(ss_grammar_state *s, int32_t pos, int32_t below, ivec *out) {
  const gelem *el = s->g->elems;
  for (;;) {
    const gelem e = el[pos];
    if (e.kind == GE_SET) {
      int32_t id = intern(s, pos, below);
      if (id < 0 || !ivec_push(out, id)) s->oom = true;
      return;
    }
    if (e.kind == GE_END) {
      if (below == 0) {
        if (!ivec_push(out, 0)) s->oom = true;
        return;
      }
      pos = s->nodes[below].pos;
      below = s->nodes[below].below;
      continue;
    }
    /* a rule: its continuation goes underneath, unless the rule ends the
     * alternative (then the rule returns straight to what is below, so a
     * right-recursive repetition keeps the stack as it is) */
    int32_t cont = below;
    if (el[pos + 1].kind != GE_END) {
      cont = intern(s, pos + 1, below);
      if (cont < 0) return;
    }
    const ss_grammar *g = s->g;
    for (int32_t a = 0; a < g->nalt[e.v]; a++) expand(s, g->alts[g->alt0[e.v] + a], cont, out);
    return;
  }
}

static int cmp_i32(const void *a, const void *b) {
  int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
  return x < y ? -1 : x > y;
}

static void sort_unique(ivec *v) {
  if (v->n < 2) return;
  qsort(v->p, (size_t)v->n, sizeof *v->p, cmp_i32);
  int32_t k = 1;
  for (int32_t i = 1; i < v->n; i++)
    if (v->p[i] != v->p[k - 1]) v->p[k++] = v->p[i];
  v->n = k;
}

/* out = the stacks of in after byte b. */
static void advance(ss_grammar_state *s, const ivec *in, unsigned b, ivec *out) {
  out->n = 0;
  for (int32_t i = 0; i < in->n; i++) {
    const int32_t id = in->p[i];
    if (id == 0) continue;
    const snode nd = s->nodes[id];
    if (!gset_has(&s->g->sets[s->g->elems[nd.pos].v], b)) continue;
    expand(s, nd.pos + 1, nd.below, out);
  }
  sort_unique(out);
}

static void cache_clear(ss_grammar_state *s) {
  for (int32_t i = 0; i < s->n_cache; i++) {
    free(s->cache[i].key);
    free(s->cache[i].bits);
  }
  s->n_cache = 0;
  s->next_evict = 0;
}

/* Keeps only the nodes the current state reaches, renumbered. */
static void collect(ss_grammar_state *s) {
  int32_t *map = malloc((size_t)s->n_nodes * sizeof *map);
  snode *keep = malloc((size_t)s->n_nodes * sizeof *keep);
  if (!map || !keep) {
    free(map), free(keep);
    return;
  }
  memset(map, 0xff, (size_t)s->n_nodes * sizeof *map);
  map[0] = 0;
  int32_t n = 1;
  keep[0] = s->nodes[0];
  /* below always has a smaller id than its node (it existed first), so
   * marking from the top down and renumbering in id order works */
  for (int32_t i = 0; i < s->cur.n; i++)
    for (int32_t id = s->cur.p[i]; id > 0 && map[id] != -2; id = s->nodes[id].below) map[id] = -2;
  for (int32_t i = 1; i < s->n_nodes; i++)
    if (map[i] == -2) {
      keep[n] = (snode){s->nodes[i].pos, map[s->nodes[i].below]};
      map[i] = n++;
    }
  for (int32_t i = 0; i < s->cur.n; i++) s->cur.p[i] = map[s->cur.p[i]];
  sort_unique(&s->cur);
  memcpy(s->nodes, keep, (size_t)n * sizeof *keep);
  s->n_nodes = n;
  free(map), free(keep);
  rehash(s, s->hcap);
  cache_clear(s);
}

int ss_grammar_state_create(ss_grammar *g, ss_grammar_state **out) {
  *out = NULL;
  ss_grammar_state *s = calloc(1, sizeof *s);
  if (!s) {
    ss_grammar_free(g);
    return ss_error(SS_ERR_NOMEM, "out of memory");
  }
  s->g = g;
  s->cap_nodes = 1024;
  s->nodes = malloc((size_t)s->cap_nodes * sizeof *s->nodes);
  s->n_nodes = 1;
  if (!s->nodes || !rehash(s, 4096)) {
    ss_grammar_state_free(s);
    return ss_error(SS_ERR_NOMEM, "out of memory");
  }
  s->nodes[0] = (snode){-1, -1};
  for (int32_t a = 0; a < g->nalt[g->root]; a++) expand(s, g->alts[g->alt0[g->root] + a], 0, &s->cur);
  sort_unique(&s->cur);
  if (s->oom) {
    ss_grammar_state_free(s);
    return ss_error(SS_ERR_NOMEM, "out of memory");
  }
  *out = s;
  return 0;
}

void ss_grammar_state_free(ss_grammar_state *s) {
  if (!s) return;
  ss_grammar_free(s->g);
  free(s->nodes);
  free(s->hash);
  free(s->cur.p);
  free(s->tmp.p);
  for (int32_t i = 0; i < s->n_depth; i++) free(s->depth[i].p);
  free(s->depth);
  cache_clear(s);
  free(s);
}

bool ss_grammar_state_accept(ss_grammar_state *s, const char *p, size_t n) {
  ivec a = {0}, b = {0};
  bool ok = true;
  for (size_t i = 0; i < n && ok; i++) {
    advance(s, i ? &a : &s->cur, (unsigned char)p[i], &b);
    ivec t = a;
    a = b;
    b = t;
    ok = a.n > 0 && !s->oom;
  }
  if (ok && n) {
    free(s->cur.p);
    s->cur = a;
    a.p = NULL;
  }
  free(a.p);
  free(b.p);
  if (ok && s->n_nodes > NODE_GC) collect(s);
  return ok;
}

bool ss_grammar_state_complete(const ss_grammar_state *s) { return s->cur.n && s->cur.p[0] == 0; }

bool ss_grammar_state_can_continue(const ss_grammar_state *s) {
  return s->cur.n > (ss_grammar_state_complete(s) ? 1 : 0);
}

bool ss_grammar_state_accept_token(ss_grammar_state *s, const ss_grammar_vocab *v, int32_t id) {
  if (id < 0 || id >= v->n_vocab) return false;
  for (int32_t i = 0; i < v->n_eog; i++)
    if (v->eog[i] == id) return ss_grammar_state_complete(s);
  if (!v->piece[id]) return false;
  return ss_grammar_state_accept(s, v->piece[id], v->nbytes[id]);
}

const uint32_t *ss_grammar_state_mask(ss_grammar_state *s, const ss_grammar_vocab *v) {
  const int32_t words = (v->n_vocab + 31) / 32;
  for (int32_t i = 0; i < s->n_cache; i++) {
    const mask_entry *c = &s->cache[i];
    if (c->nkey == s->cur.n && !memcmp(c->key, s->cur.p, (size_t)c->nkey * sizeof *c->key))
      return c->bits;
  }
  if (s->n_depth < v->max_depth + 1) {
    ivec *d = realloc(s->depth, ((size_t)v->max_depth + 1) * sizeof *d);
    if (!d) return NULL;
    memset(d + s->n_depth, 0, ((size_t)v->max_depth + 1 - (size_t)s->n_depth) * sizeof *d);
    s->depth = d;
    s->n_depth = v->max_depth + 1;
  }
  mask_entry *c;
  if (s->n_cache < MASK_CACHE) {
    c = &s->cache[s->n_cache];
    c->bits = malloc((size_t)words * sizeof *c->bits);
    c->key = NULL;
    if (!c->bits) return NULL;
    s->n_cache++;
  } else {
    c = &s->cache[s->next_evict];
    s->next_evict = (s->next_evict + 1) % MASK_CACHE;
  }
  free(c->key);
  c->key = malloc(((size_t)s->cur.n + 1) * sizeof *c->key);
  c->nkey = s->cur.n;
  if (!c->key) {
    c->nkey = -1;
    return NULL;
  }
  memcpy(c->key, s->cur.p, (size_t)s->cur.n * sizeof *c->key);
  uint32_t *bits = c->bits;
  memset(bits, 0, (size_t)words * sizeof *bits);
  /* depth 0 is the current state itself (read through cur; depth[0] unused) */
  for (int32_t i = 1; i < v->n_nodes;) {
    const int32_t d = v->depth[i];
    const ivec *up = d == 1 ? &s->cur : &s->depth[d - 1];
    ivec *here = &s->depth[d];
    advance(s, up, v->byte[i], here);
    if (s->oom) {
      c->nkey = -1;
      return NULL;
    }
    if (here->n == 0) {
      i = v->end[i];
      continue;
    }
    for (int32_t t = v->tok0[i]; t < v->tok0[i + 1]; t++)
      bits[v->toks[t] >> 5] |= 1u << (v->toks[t] & 31);
    i++;
  }
  if (ss_grammar_state_complete(s))
    for (int32_t i = 0; i < v->n_eog; i++) bits[v->eog[i] >> 5] |= 1u << (v->eog[i] & 31);
  return bits;
}
