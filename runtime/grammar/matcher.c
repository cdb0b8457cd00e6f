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

/* A state is an interned, sorted set of stack nodes, with its transitions
 * memoised as they are met (-2: not computed yet, -1: the byte is rejected),
 * so that the trie walk inside a string, which comes back to the same state
 * after most bytes, costs a table look-up per trie node. */
typedef struct sstate {
  int32_t off, n;        /* items[off..off+n) */
  int32_t *next;         /* [256] or NULL */
  uint32_t *mask;        /* the cached token mask, or NULL */
} sstate;

/* Everything is collected once this many nodes or states exist. */
#define NODE_GC 200000
#define STATE_GC 20000
/* Masks kept at once (each is n_vocab bits). */
#define MASK_CACHE 64

struct ss_grammar_state {
  ss_grammar *g;
  snode *nodes;
  int32_t n_nodes, cap_nodes;
  int32_t *hash;         /* nodes: open addressing, -1 empty */
  int32_t hcap;
  sstate *st;
  int32_t n_st, cap_st;
  ivec items;            /* the states' node ids */
  int32_t *shash;        /* states: open addressing, -1 empty */
  int32_t shcap;
  int32_t cur;           /* the current state */
  int32_t *walk;         /* the mask walk's state at each trie depth */
  int32_t n_walk;
  ivec tmp;
  int32_t masked[MASK_CACHE]; /* states holding a mask, oldest first (ring) */
  int32_t n_masked, next_masked;
  bool oom;              /* out of memory, or rules nested too deep: matching fails */
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

static uint32_t hash_items(const int32_t *p, int32_t n) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (int32_t i = 0; i < n; i++) h = (h ^ (uint32_t)p[i]) * 0x100000001b3ull;
  return (uint32_t)(h ^ h >> 32);
}

static bool node_rehash(ss_grammar_state *s, int32_t cap) {
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

static bool state_rehash(ss_grammar_state *s, int32_t cap) {
  int32_t *h = malloc((size_t)cap * sizeof *h);
  if (!h) return false;
  memset(h, 0xff, (size_t)cap * sizeof *h);
  for (int32_t i = 0; i < s->n_st; i++) {
    uint32_t k = hash_items(s->items.p + s->st[i].off, s->st[i].n) & (uint32_t)(cap - 1);
    while (h[k] >= 0) k = (k + 1) & (uint32_t)(cap - 1);
    h[k] = i;
  }
  free(s->shash);
  s->shash = h;
  s->shcap = cap;
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
  if ((int64_t)s->n_nodes * 2 > s->hcap && !node_rehash(s, s->hcap * 2)) return s->oom = true, -1;
  return id;
}

/* The state of the sorted node set v (a new one when not seen before). */
static int32_t intern_state(ss_grammar_state *s, const ivec *v) {
  uint32_t k = hash_items(v->p, v->n) & (uint32_t)(s->shcap - 1);
  for (int32_t i; (i = s->shash[k]) >= 0; k = (k + 1) & (uint32_t)(s->shcap - 1))
    if (s->st[i].n == v->n && !memcmp(s->items.p + s->st[i].off, v->p, (size_t)v->n * sizeof *v->p))
      return i;
  if (s->n_st == s->cap_st) {
    int32_t c = s->cap_st ? s->cap_st * 2 : 256;
    sstate *q = realloc(s->st, (size_t)c * sizeof *q);
    if (!q) return s->oom = true, -1;
    s->st = q;
    s->cap_st = c;
  }
  const int32_t off = s->items.n;
  for (int32_t i = 0; i < v->n; i++)
    if (!ivec_push(&s->items, v->p[i])) return s->oom = true, -1;
  const int32_t id = s->n_st++;
  s->st[id] = (sstate){off, v->n, NULL, NULL};
  s->shash[k] = id;
  if ((int64_t)s->n_st * 2 > s->shcap && !state_rehash(s, s->shcap * 2)) return s->oom = true, -1;
  return id;
}

/* Rules nested at the left of each other deeper than this are refused while
 * matching (the expansion recurses once per level). */
#define MAX_EXPAND_DEPTH 20000

/* Adds to out every stack that continues at pos with `below` underneath,
 * expanded until its top is a byte set (or it is empty). */
static void expand_at(ss_grammar_state *s, int32_t pos, int32_t below, ivec *out, int depth) {
  if (depth > MAX_EXPAND_DEPTH) {
    s->oom = true;
    return;
  }
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
    for (int32_t a = 0; a < g->nalt[e.v]; a++)
      expand_at(s, g->alts[g->alt0[e.v] + a], cont, out, depth + 1);
    return;
  }
}

static void expand(ss_grammar_state *s, int32_t pos, int32_t below, ivec *out) {
  expand_at(s, pos, below, out, 0);
}

static int cmp_i32(const void *a, const void *b) {
  const int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
  return (x > y) - (x < y);
}

static void sort_unique(ivec *v) {
  if (v->n > 16) {
    /* An ambiguous grammar makes sets of thousands of stacks: insertion sort
     * would make every byte quadratic in them. */
    qsort(v->p, (size_t)v->n, sizeof *v->p, cmp_i32);
  } else {
    for (int32_t i = 1; i < v->n; i++) { /* small sets: insertion sort */
      int32_t x = v->p[i], j = i;
      while (j > 0 && v->p[j - 1] > x) v->p[j] = v->p[j - 1], j--;
      v->p[j] = x;
    }
  }
  if (v->n < 2) return;
  int32_t k = 1;
  for (int32_t i = 1; i < v->n; i++)
    if (v->p[i] != v->p[k - 1]) v->p[k++] = v->p[i];
  v->n = k;
}

/* The state after byte b from state id, or -1 when b is rejected. */
static int32_t step(ss_grammar_state *s, int32_t id, unsigned b) {
  if (!s->st[id].next) {
    int32_t *t = malloc(256 * sizeof *t);
    if (!t) return s->oom = true, -1;
    for (int i = 0; i < 256; i++) t[i] = -2;
    s->st[id].next = t;
  }
  int32_t r = s->st[id].next[b];
  if (r != -2) return r;
  ivec *out = &s->tmp;
  out->n = 0;
  for (int32_t i = 0; i < s->st[id].n; i++) {
    const int32_t nid = s->items.p[s->st[id].off + i];
    if (nid == 0) continue;
    const snode nd = s->nodes[nid];
    if (!gset_has(&s->g->sets[s->g->elems[nd.pos].v], b)) continue;
    expand(s, nd.pos + 1, nd.below, out);
  }
  sort_unique(out);
  r = out->n ? intern_state(s, out) : -1;
  if (s->oom) return -1;
  s->st[id].next[b] = r; /* st may have moved: index again */
  return r;
}

static void free_states(ss_grammar_state *s) {
  for (int32_t i = 0; i < s->n_st; i++) {
    free(s->st[i].next);
    free(s->st[i].mask);
  }
  s->n_st = 0;
  s->items.n = 0;
  s->n_masked = s->next_masked = 0;
  if (s->shash) memset(s->shash, 0xff, (size_t)s->shcap * sizeof *s->shash);
}

/* Keeps only the nodes the current state reaches (renumbered) and only the
 * current state. */
static void collect(ss_grammar_state *s) {
  int32_t *map = malloc((size_t)s->n_nodes * sizeof *map);
  snode *keep = malloc((size_t)s->n_nodes * sizeof *keep);
  ivec cur = {0};
  if (!map || !keep) goto out;
  memset(map, 0xff, (size_t)s->n_nodes * sizeof *map);
  map[0] = 0;
  int32_t n = 1;
  keep[0] = s->nodes[0];
  const sstate c = s->st[s->cur];
  /* below always has a smaller id than its node (it existed first), so
   * marking from the top down and renumbering in id order works */
  for (int32_t i = 0; i < c.n; i++)
    for (int32_t id = s->items.p[c.off + i]; id > 0 && map[id] != -2; id = s->nodes[id].below)
      map[id] = -2;
  for (int32_t i = 1; i < s->n_nodes; i++)
    if (map[i] == -2) {
      keep[n] = (snode){s->nodes[i].pos, map[s->nodes[i].below]};
      map[i] = n++;
    }
  for (int32_t i = 0; i < c.n; i++)
    if (!ivec_push(&cur, map[s->items.p[c.off + i]])) goto out;
  sort_unique(&cur);
  memcpy(s->nodes, keep, (size_t)n * sizeof *keep);
  s->n_nodes = n;
  node_rehash(s, s->hcap);
  free_states(s);
  s->cur = intern_state(s, &cur);
out:
  free(map), free(keep), free(cur.p);
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
  if (!s->nodes || !node_rehash(s, 4096) || !state_rehash(s, 1024)) {
    ss_grammar_state_free(s);
    return ss_error(SS_ERR_NOMEM, "out of memory");
  }
  s->nodes[0] = (snode){-1, -1};
  ivec v = {0};
  for (int32_t a = 0; a < g->nalt[g->root]; a++) expand(s, g->alts[g->alt0[g->root] + a], 0, &v);
  sort_unique(&v);
  s->cur = s->oom ? -1 : intern_state(s, &v);
  free(v.p);
  if (s->oom) {
    ss_grammar_state_free(s);
    return ss_error(SS_ERR_RANGE, "grammar: out of memory, or rules nested at the left deeper "
                    "than %d", MAX_EXPAND_DEPTH);
  }
  *out = s;
  return 0;
}

void ss_grammar_state_free(ss_grammar_state *s) {
  if (!s) return;
  ss_grammar_free(s->g);
  free_states(s);
  free(s->st);
  free(s->items.p);
  free(s->shash);
  free(s->nodes);
  free(s->hash);
  free(s->tmp.p);
  free(s->walk);
  free(s);
}

bool ss_grammar_state_accept(ss_grammar_state *s, const char *p, size_t n) {
  int32_t id = s->cur;
  for (size_t i = 0; i < n && id >= 0; i++) id = step(s, id, (unsigned char)p[i]);
  if (id < 0 || s->oom) return false;
  s->cur = id;
  if (s->n_nodes > NODE_GC || s->n_st > STATE_GC) collect(s);
  return !s->oom;
}

bool ss_grammar_state_complete(const ss_grammar_state *s) {
  const sstate *c = &s->st[s->cur];
  return c->n && s->items.p[c->off] == 0;
}

bool ss_grammar_state_can_continue(const ss_grammar_state *s) {
  return s->st[s->cur].n > (ss_grammar_state_complete(s) ? 1 : 0);
}

bool ss_grammar_state_accept_token(ss_grammar_state *s, const ss_grammar_vocab *v, int32_t id) {
  if (id < 0 || id >= v->n_vocab) return false;
  for (int32_t i = 0; i < v->n_eog; i++)
    if (v->eog[i] == id) return ss_grammar_state_complete(s);
  if (!v->piece[id]) return false;
  return ss_grammar_state_accept(s, v->piece[id], v->nbytes[id]);
}

const uint32_t *ss_grammar_state_mask(ss_grammar_state *s, const ss_grammar_vocab *v) {
  if (s->st[s->cur].mask) return s->st[s->cur].mask;
  const int32_t words = (v->n_vocab + 31) / 32;
  if (s->n_walk < v->max_depth + 1) {
    int32_t *w = realloc(s->walk, ((size_t)v->max_depth + 1) * sizeof *w);
    if (!w) return NULL;
    s->walk = w;
    s->n_walk = v->max_depth + 1;
  }
  uint32_t *bits;
  if (s->n_masked == MASK_CACHE) { /* the oldest mask's buffer is reused */
    const int32_t old = s->masked[s->next_masked];
    bits = s->st[old].mask;
    s->st[old].mask = NULL;
  } else {
    bits = malloc((size_t)words * sizeof *bits);
    if (!bits) return NULL;
    s->n_masked++;
  }
  memset(bits, 0, (size_t)words * sizeof *bits);
  s->walk[0] = s->cur;
  for (int32_t i = 1; i < v->n_nodes;) {
    const int32_t d = v->depth[i];
    const int32_t here = step(s, s->walk[d - 1], v->byte[i]);
    if (s->oom) break;
    if (here < 0) {
      i = v->end[i];
      continue;
    }
    s->walk[d] = here;
    for (int32_t t = v->tok0[i]; t < v->tok0[i + 1]; t++)
      bits[v->toks[t] >> 5] |= 1u << (v->toks[t] & 31);
    i++;
  }
  if (ss_grammar_state_complete(s))
    for (int32_t i = 0; i < v->n_eog; i++) bits[v->eog[i] >> 5] |= 1u << (v->eog[i] & 31);
  s->st[s->cur].mask = bits;
  s->masked[s->next_masked] = s->cur;
  s->next_masked = (s->next_masked + 1) % MASK_CACHE;
  if (s->oom) return NULL;
  return bits;
}
