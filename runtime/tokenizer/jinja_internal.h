/* The Jinja interpreter's private types: arena, values, tokens, syntax tree,
 * and the render context.  Errors inside the interpreter longjmp to the entry
 * point (everything lives in arenas, so nothing leaks on the way out). */
#ifndef SS_JINJA_INTERNAL_H
#define SS_JINJA_INTERNAL_H

#include <setjmp.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "runtime/tokenizer/jinja.h"

/* ---- arena ---- */
typedef struct jarena_chunk jarena_chunk;
typedef struct jarena {
  jarena_chunk *head;
  size_t used_nbytes, max_nbytes; /* max 0: unlimited */
  jmp_buf *oom;                   /* where to go when full (NULL: abort) */
  char *oom_msg;                  /* set to a message buffer by the owner */
} jarena;

void *ja_alloc(jarena *a, size_t nbytes); /* zeroed */
char *ja_strndup(jarena *a, const char *s, size_t n);
void ja_free(jarena *a);

/* ---- values ---- */
typedef enum jv_type {
  JV_UNDEF, JV_NONE, JV_BOOL, JV_INT, JV_FLOAT, JV_STR, JV_LIST, JV_DICT, JV_FUNC,
} jv_type;

typedef struct jstr { size_t len; char p[]; } jstr;
typedef struct jlist jlist;
typedef struct jdict jdict;
typedef struct jfunc jfunc;

typedef struct jv {
  jv_type t;
  union {
    bool b;
    int64_t i;
    double f;
    jstr *s;
    jlist *l;
    jdict *d;
    jfunc *fn;
  };
  const char *undef_name; /* JV_UNDEF: what was looked up (for messages), may be NULL */
  bool safe;              /* JV_STR: markup (|safe, |escape): '+' escapes the other side */
} jv;

struct jlist { size_t n, cap; jv *v; bool tuple; bool gen; /* a generator (map, select, ...) */ };
struct jdict { size_t n, cap; jv *k, *v; bool ns; /* a namespace(): attributes assignable */ };

typedef struct jctx jctx;
typedef struct jnode jnode;
typedef struct jscope jscope;

/* Call arguments: positional then keyword. */
typedef struct jargs {
  size_t n, nkw;
  jv *pos;
  const char **kwname;
  jv *kw;
} jargs;

typedef jv (*jbuiltin_fn)(jctx *c, const jnode *at, jv self, const jargs *a);

struct jfunc {
  const char *name;
  jbuiltin_fn fn;     /* builtin or bound method (self below) */
  const char *method; /* a bound method of `self` */
  jv self;
  const jnode *macro; /* a macro: its definition */
  jscope *closure;
  const jnode *caller_body; /* a {% call %} block's body, for caller() */
  jscope *caller_scope;
};

/* ---- tokens ---- */
typedef enum jtok_kind {
  JT_EOF, JT_TEXT, JT_VAR_BEGIN, JT_VAR_END, JT_BLOCK_BEGIN, JT_BLOCK_END,
  JT_NAME, JT_STRING, JT_INT, JT_FLOAT, JT_OP,
} jtok_kind;

typedef struct jtok {
  jtok_kind kind;
  int line, col;
  const char *s; /* text, name, string value (decoded), op */
  size_t len;
  int64_t i;
  double f;
} jtok;

/* ---- syntax tree ---- */
typedef enum jnode_kind {
  /* expressions */
  JN_LIT, JN_NAME, JN_LIST, JN_TUPLE, JN_DICT, JN_ATTR, JN_ITEM, JN_SLICE, JN_CALL, JN_FILTER,
  JN_TEST, JN_BIN, JN_NEG, JN_POS, JN_NOT, JN_AND, JN_OR, JN_COND, JN_CMP,
  /* statements */
  JN_BODY, JN_TEXT, JN_OUT, JN_IF, JN_FOR, JN_SET, JN_SETBLOCK, JN_MACRO, JN_CALLBLOCK,
  JN_FILTERBLOCK, JN_BREAK, JN_CONTINUE,
} jnode_kind;

struct jnode {
  jnode_kind kind;
  int line, col;
  const char *s;    /* name, attribute, operator, text */
  size_t slen;
  jv lit;
  jnode *a, *b, *c, *d;
  jnode **list;     /* body, arguments, items, keys */
  size_t n;
  jnode **list2;    /* else body, keyword values, dict values, defaults */
  size_t n2;
  const char **names; /* keyword names, for targets, macro params, cmp ops */
  size_t nnames;
  bool neg;         /* JN_TEST: "is not" */
};

/* ---- the template ---- */
struct ss_jinja {
  jarena arena; /* tokens, tree and literal values */
  jnode *root;
};

/* Lexes `src` (after newline normalisation) into tokens; on error writes a
 * message "line L, column C: ..." into err and returns NULL. */
jtok *jinja_lex(jarena *a, const char *src, size_t len, size_t *count, char *err, size_t errlen);
/* Parses the tokens into a body node; NULL with a message on error. */
jnode *jinja_parse(jarena *a, const jtok *toks, size_t count, char *err, size_t errlen,
                   int *code);

/* ---- render context ---- */
struct jscope {
  jscope *parent;
  jdict *vars;
};

struct jctx {
  jarena arena;
  jmp_buf jb;
  char err[512];
  int err_code;
  const ss_jinja_limits *lim;
  /* output */
  char *out;
  size_t out_len, out_cap;
  jscope *globals;
  int depth;
  uint64_t iterations;
  int brk; /* 1: break, 2: continue pending */
};

/* Fails the render: formats "line L, column C: msg" and longjmps. */
_Noreturn void jfail(jctx *c, const jnode *at, int code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* values (jinja_value.c) */
jv jv_undef(const char *name);
jv jv_none(void);
jv jv_bool(bool b);
jv jv_int(int64_t i);
jv jv_float(double f);
jv jv_strn(jctx *c, const char *s, size_t n);
jv jv_str(jctx *c, const char *s);
jv jv_list(jctx *c, size_t cap);
jv jv_dict(jctx *c, size_t cap);
void jl_push(jctx *c, jlist *l, jv v);
jv *jd_get(jdict *d, jv key);
jv *jd_gets(jdict *d, const char *key);
void jd_set(jctx *c, jdict *d, jv key, jv v);
void jd_sets(jctx *c, jdict *d, const char *key, jv v);
bool jv_truthy(jv v);
bool jv_eq(jv a, jv b);
/* -1, 0, 1; fails on types Python would not order. */
int jv_cmp(jctx *c, const jnode *at, jv a, jv b);
const char *jv_type_name(jv v);

/* A growable string in the render arena. */
typedef struct jbuf { jctx *c; char *p; size_t len, cap; } jbuf;
void jb_add(jbuf *b, const char *s, size_t n);
void jb_adds(jbuf *b, const char *s);
jv jb_value(jbuf *b);

/* str(v) and repr(v) as Python writes them. */
void jv_write_str(jbuf *b, jv v);
void jv_write_repr(jbuf *b, jv v);
jv jv_to_str(jctx *c, jv v);
/* json.dumps(v, ensure_ascii, indent (<0: none), separators, sort_keys) */
void jv_write_json(jctx *c, const jnode *at, jbuf *b, jv v, bool ensure_ascii, int indent,
                   const char *item_sep, const char *key_sep, bool sort_keys, int level);
void jv_write_float(jbuf *b, double f);
/* jansson <-> values */
struct json_t;
jv jv_from_json(jctx *c, const struct json_t *j);
size_t utf8_count(const char *s, size_t n);

jv jinja_html_escape(jctx *c, jv s);
/* filters, tests, methods, globals (jinja_filters.c, jinja_methods.c) */
bool jinja_filter_known(const char *name);
bool jinja_test_known(const char *name);
jv jinja_filter_apply(jctx *c, const jnode *at, const char *name, jv v, const jargs *a);
bool jinja_test_apply(jctx *c, const jnode *at, const char *name, jv v, const jargs *a);
/* An attribute of a value (methods of str, dict, list; dict keys). */
jv jinja_getattr(jctx *c, const jnode *at, jv obj, const char *name);
jv jinja_getitem(jctx *c, const jnode *at, jv obj, jv key);
jv jinja_global_fn(jctx *c, const char *name);
jv jinja_call_method(jctx *c, const jnode *at, jv self, const char *m, const jargs *a);
/* Iterates: lists, tuples, dict keys, string characters; undefined as empty. */
jlist *jinja_iter(jctx *c, const jnode *at, jv v);
/* Calls a function value. */
jv jinja_call(jctx *c, const jnode *at, jv fn, const jargs *a);
/* Argument helper: positional i or keyword `name`, else NULL. */
const jv *jarg(const jargs *a, size_t i, const char *name);
jv jarg_or(const jargs *a, size_t i, const char *name, jv dflt);

#endif
