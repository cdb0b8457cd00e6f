/* The API server's parts as its files see each other: the server and request
 * structs, and the functions one file of runtime/server offers the others.
 * Not part of the public API (that is api_server.h). */
#ifndef SS_API_INTERNAL_H
#define SS_API_INTERNAL_H

#include <jansson.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdint.h>
#include <time.h>
#include <uv.h>

#include "runtime/base/metrics.h"
#include "runtime/server/api_server.h"

typedef enum api_phase { PHASE_LOADING = 0, PHASE_READY, PHASE_LOAD_FAILED } api_phase;

struct ss_api {
  uv_loop_t *loop;
  ss_http_server *http;
  uv_async_t wake;
  ss_api_opts o;
  char *model_name;
  char *api_key;
  time_t created;
  FILE *access_log;       /* NULL: off */
  bool access_log_owned;  /* a file the server opened */
  bool draining;
  bool closed;

  pthread_mutex_t mu;     /* guards the fields set from other threads */
  api_phase phase;
  ss_engine *engine;
  const ss_model *model;
  const ss_chat_template *tmpl; /* NULL: chat is refused with tmpl_why */
  char tmpl_why[320];
  bool engine_exited;

  /* Loop thread only. */
  uint64_t n_requests, n_client_errors, n_aborted_by_client;
  uint64_t n_queue_full;  /* 429s */
  uint64_t n_forked;      /* choices beyond the first of n > 1 or best_of requests */
  uint64_t n_bad_media;   /* 415s */
  int64_t n_preparing;    /* requests handed to a worker and not yet back */
  bool exit_answered;     /* the engine has exited and its last events are answered */
  /* A rank is lost (ss_api_fail_lost): every request was answered with
   * lost_msg and new ones are refused, whatever the engine thread does. */
  bool lost;
  char lost_msg[256];
  struct api_req *live;   /* submitted requests not yet freed (a list through live_next) */
  void (*lost_probe)(void *user); /* asked before the engine's events are taken */
  void *lost_probe_user;
};

/* ------------------------------------------------------------------------ */
/* Parsing a generation request (openai_parse.c)                             */

typedef struct parse_err {
  int status;
  const char *param;      /* a string literal or NULL */
  bool body;              /* the body is not a JSON object (not counted as a refused
                             generation request in /metrics) */
  char msg[512];
} parse_err;

/* How a chat request's output is read for tool calls (tools.c). */
typedef enum tool_format {
  TOOL_FMT_HERMES = 0, /* <tool_call>{"name", "arguments"}</tool_call> blocks */
  TOOL_FMT_LLAMA3,     /* the whole output {"name", "parameters"} */
  TOOL_FMT_MISTRAL,    /* [TOOL_CALLS][{"name", "arguments"}, ...] */
  TOOL_FMT_JSON,       /* constrained: the whole output one {"name", "arguments"} */
} tool_format;

typedef struct tool_out {
  bool on;                /* tools were offered (tool_choice not "none") */
  tool_format format;
  bool parallel;          /* parallel_tool_calls: false keeps the first call only */
  bool mistral_ids;       /* ids as Mistral's templates take them back (9 alphanumerics) */
} tool_out;

typedef struct gen_fields {
  int64_t max_tokens;
  bool max_set;
  ss_engine_req r;        /* r.prompt and r.stop are malloc'ed: free with ss_oai_req_free */
  bool stream, include_usage;
  tool_out tools;
  int32_t n;              /* choices answered, 1..SS_OAI_MAX_N */
  int32_t best_of;        /* sequences generated, n..SS_OAI_MAX_N: the n most likely answer */
  bool user_logprobs;     /* logprobs asked for (best_of asks the engine for them anyway) */
  char *echo;             /* completions with echo: the prompt's text (malloc'ed), else NULL */
  size_t echo_len;
} gen_fields;

/* n and best_of at most: each choice is its own sequence in the engine. */
#define SS_OAI_MAX_N 16

/* What a worker needs to turn a body into an engine request.  Everything it
 * points to outlives the request and is only read (the tokenizer and chat
 * template hold no mutable state). */
typedef struct gen_ctx {
  const char *model_name; /* the served id, to check 'model' against */
  int32_t default_max_tokens;
  int32_t n_ctx;
  size_t max_prompt_nbytes; /* 0: SS_OAI_PROMPT_NBYTES_PER_TOKEN per context token */
  bool parse_special_in_content; /* false: message content is plain text */
  const ss_model *m;
  const ss_chat_template *tmpl; /* NULL: the model has none (no_tmpl_why says why) */
  const char *no_tmpl_why;
} gen_ctx;

/* Request limits: stop strings, and the prompt's text before it is tokenized
 * (16 bytes per context token is ~4x what text costs in any common
 * tokenizer, so no prompt that fits the context is refused by it). */
#define SS_OAI_MAX_STOP_NBYTES 1024
#define SS_OAI_MAX_STOP_TOTAL_NBYTES 4096
#define SS_OAI_PROMPT_NBYTES_PER_TOKEN 16
size_t ss_oai_max_prompt_nbytes(const gen_ctx *x);
/* The rendered messages into ids with every message's content as plain text
 * and the template's markup special (plain_content.c; norm: the checked
 * messages the text was rendered from).  Any thread. */
bool ss_oai_tokenize_plain_content(const gen_ctx *x, const json_t *norm,
                                   bool add_generation_prompt, const char *rendered,
                                   int32_t **ids, size_t *n_ids, parse_err *e);

/* The whole of a request's preparation: JSON, fields, chat template,
 * tokenizer, default max_tokens.  Any thread; touches nothing shared.  On
 * failure e says the status, the field and the message, and g owns nothing. */
bool ss_oai_parse_generate(const gen_ctx *x, const char *body, size_t body_len, bool chat,
                           gen_fields *g, parse_err *e);
/* Constrains g's output to the JSON Schema `schema` (response_format
 * json_schema, a required or named tool call): on success g's request carries
 * the compiled constraint; otherwise e names `param` and says why.  Any thread
 * (constrain.c). */
bool ss_oai_constrain_schema(const gen_ctx *x, gen_fields *g, json_t *schema, const char *param,
                             parse_err *e);
/* response_format, structured_outputs and guided_*: at most one output
 * constraint, compiled onto g's request (constrain.c). */
bool ss_oai_parse_constraints(const gen_ctx *x, json_t *o, gen_fields *g, parse_err *e);
/* Frees the prompt, stop strings and constraint of a request that was not submitted. */
void ss_oai_req_free(ss_engine_req *r);

/* Checks o's "messages" and renders them with the chat template (ending with
 * the assistant's opening when add_generation_prompt), then tokenizes the
 * text exactly as a chat completion's prompt is: *ids malloc'ed.  Either out
 * pointer may be NULL (text or ids not wanted).  Any thread. */
bool ss_oai_render_messages(const gen_ctx *x, json_t *o, bool add_generation_prompt,
                            char **text, int32_t **ids, size_t *n_ids, parse_err *e);
/* Sets e (status, the field, the message) and returns false. */
bool ss_oai_fail(parse_err *e, int status, const char *param, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* The body as a JSON object (not valid JSON or not an object: e->body). */
json_t *ss_oai_load_body(const char *body, size_t body_len, parse_err *e);
/* 'model', when given, must be the served one. */
bool ss_oai_check_model(const gen_ctx *x, json_t *o, parse_err *e);

/* ------------------------------------------------------------------------ */
/* Tool calling (tools.c)                                                     */

typedef enum tool_choice {
  TOOL_CHOICE_NONE = 0,
  TOOL_CHOICE_AUTO,
  TOOL_CHOICE_REQUIRED,
  TOOL_CHOICE_NAMED,
} tool_choice;

typedef struct tool_set {
  json_t *tools;          /* o's checked "tools" (borrowed); NULL: none, or tool_choice "none" */
  tool_choice choice;
  const char *named;      /* the named function (in tools) */
  bool parallel;
} tool_set;

/* Checks o's tools, tool_choice and parallel_tool_calls (e names the field). */
bool ss_oai_tools_parse(json_t *o, tool_set *ts, parse_err *e);
/* Whether the template reads `tools`, and the output format its text implies. */
bool ss_oai_tools_in_template(const ss_chat_template *t);
tool_format ss_oai_tools_format(const ss_chat_template *t);
/* Puts ts's tools before the model: *tmpl_tools, the list for the template's
 * `tools`, when it reads them; otherwise msgs (the checked messages, edited in
 * place) gets the system preamble and earlier calls and results as text. */
bool ss_oai_tools_prepare(const gen_ctx *x, const tool_set *ts, json_t *msgs, json_t **tmpl_tools,
                          parse_err *e);
/* tool_choice required or named: constrains g's output to the call's JSON
 * (ss_oai_constrain_schema); then g->tools.format is TOOL_FMT_JSON. */
bool ss_oai_tools_constrain(const gen_ctx *x, const tool_set *ts, gen_fields *g, parse_err *e);
/* The calls in an output, as OpenAI's tool_calls list (new), or NULL when it
 * holds none; *content_len is then the length of the text before them. */
json_t *ss_oai_tools_extract(const tool_out *t, const char *text, size_t n, size_t *content_len);
/* Streaming: how much of the text so far may go out as content (never less
 * than sent); the rest may be the beginning of a call. */
size_t ss_oai_tools_releasable(const tool_out *t, const char *text, size_t n, size_t sent);

/* ------------------------------------------------------------------------ */
/* Utility routes (tokenize_routes.c): POST /tokenize, /detokenize, /apply-template */

typedef enum api_kind {
  API_COMPLETION = 0,
  API_CHAT,
  API_TOKENIZE,
  API_DETOKENIZE,
  API_APPLY_TEMPLATE,
} api_kind;

/* A utility request's whole answer from its body: *out is the response
 * object, or NULL with e set.  Any thread; reads only x. */
bool ss_oai_utility(const gen_ctx *x, api_kind kind, const char *body, size_t body_len,
                    json_t **out, parse_err *e);

/* ------------------------------------------------------------------------ */
/* One generation request (request.c)                                        */

struct api_req;

/* One choice of a generation request: one sequence in the engine.  Choice 0
 * is submitted first; the others once its prompt is computed (its first
 * event), so that they find the prompt's full blocks in the prefix cache and
 * compute only the last partial block. */
typedef struct api_choice {
  struct api_req *q;
  int64_t id;             /* the engine's, once submitted */
  bool submitted, done, started;
  ss_engine_req pending;  /* choices 1..: their own copy of the request until submitted */
  bool has_pending;
  bool role_sent, echoed;
  ss_strbuf text;         /* non-streamed: the whole text */
  json_t *lp;             /* non-streamed logprobs: chat "content" list, or completions object */
  size_t text_offset;
  size_t sent;            /* streamed with tools: bytes of text sent as content */
  double sum_logprob;     /* of the sampled tokens (best_of ranks by it) */
  char finish[16];
  int32_t n_prompt, n_cached, n_generated;
  double queue_s, prefill_s;
} api_choice;

/* Lives from the route handler to the engine's last DONE event of its
 * choices, or, when it never reaches the engine, to the end of its
 * preparation. */
typedef struct api_req {
  ss_api *api;
  ss_http_conn *conn;     /* NULL once the client has gone */
  bool submitted;         /* false while a worker prepares it (no engine id yet) */

  /* Preparation on a worker thread: the inputs, then the results. */
  uv_work_t work;
  char *body;             /* a copy of the request body (the connection's may go) */
  size_t body_len;
  ss_engine *engine;
  gen_ctx ctx;
  bool ok;
  api_kind kind;
  gen_fields g;           /* generation requests */
  json_t *result;         /* utility requests: the answer */
  parse_err e;

  /* Once submitted: answering from the engine's events. */
  int64_t id;
  bool chat, stream, include_usage;
  bool logprobs;
  int32_t n_top;
  char rid[48];
  time_t created;
  uint64_t t_arrive, t_submit; /* uv_hrtime: the route handler, the engine's queue */
  tool_out tools;         /* chat: the output is read for tool calls */
  api_choice *ch;         /* [n_ch]: best_of of them (n when best_of is not given) */
  int32_t n_ch, n_ret;    /* sequences generated; choices answered (the most likely) */
  int32_t n_live;         /* choices submitted whose DONE has not come */
  int32_t *prompt_ids;    /* echo with logprobs: the prompt's tokens */
  int32_t n_prompt_ids;
  json_t *echo_lp;        /* and their logprobs (completions format), from choice 0's first
                             token */
  bool answered;          /* the response is complete (or an error was sent) */
  struct api_req *live_prev, *live_next; /* in api->live once submitted */
  bool live_linked;
} api_req;

/* POST /v1/completions, /v1/chat/completions and the utility routes, on the
 * loop, once the model is ready: hands the body to a worker; the answer follows
 * from the loop when the worker is done. */
void ss_api_generate(ss_api *a, ss_http_conn *c, const ss_http_request *req, api_kind kind,
                     ss_engine *eng, const ss_model *m);
/* The uv_async_t callback: takes the engine's events and answers them. */
void ss_api_on_wake(uv_async_t *h);
/* The HTTP layer's on_abort: the client of conn_user (an api_req) has gone. */
void ss_api_on_client_gone(void *user, void *conn_user);
/* The HTTP layer's on_congestion: a streamed request is paused in the engine
 * while its client leaves its output unread, and resumed once it reads. */
void ss_api_on_congestion(void *user, void *conn_user, bool congested);

/* ------------------------------------------------------------------------ */
/* Routes (routes.c)                                                          */

/* The HTTP layer's on_request. */
void ss_api_on_request(void *user, ss_http_conn *c, const ss_http_request *req);
/* Sends 503 and returns false when generation requests are no longer taken
 * (draining, or the engine failed); the same answer wherever it is asked. */
bool ss_api_check_serving(ss_api *a, ss_http_conn *c, ss_engine *eng);

/* ------------------------------------------------------------------------ */
/* Responses (openai_render.c)                                                */

/* Bytes as a JSON string; invalid UTF-8 (half a character) becomes U+FFFD. */
json_t *ss_oai_json_text(const char *p, size_t n);
/* Sends o (consumed) as the JSON body. */
void ss_oai_send_json(ss_http_conn *c, int status, json_t *o, const char *extra_headers);
/* OpenAI's error object: {"error": {"message", "type", "param", "code"}}. */
void ss_oai_send_error(ss_http_conn *c, int status, const char *param, const char *code,
                       const char *extra_headers, const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));

/* A token of one choice: streamed as a chunk (with the choice's index), or
 * gathered for the response. */
void ss_oai_on_token(api_req *q, api_choice *ch, const ss_model *m, const ss_engine_event *ev);
/* One choice has ended with "stop" or "length": streamed, its last chunk. */
void ss_oai_choice_done(api_req *q, api_choice *ch);
/* Every choice has ended well: the usage chunk and [DONE], or the whole
 * response (best_of: the n_ret most likely choices). */
void ss_oai_finish(api_req *q);
/* A choice ended with "abort" or "error" (error: its message), or a choice
 * could not be submitted (status and message): the error, streamed as an
 * event before [DONE] or as the response. */
void ss_oai_answer_error(api_req *q, int status, const char *code, const char *msg);
/* The message a request stopped at --drain-timeout is answered with. */
extern const char ss_oai_drained_msg[];

#endif
