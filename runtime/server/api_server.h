/* The OpenAI-compatible HTTP API on rank 0: /v1/completions,
 * /v1/chat/completions (both streamed as Server-Sent Events on request),
 * /v1/models, /health and /metrics; and the utility routes /tokenize,
 * /detokenize (vLLM's shapes) and /apply-template (llama-server's).
 *
 * It runs on a libuv loop thread and never blocks on the engine: a generation
 * request's body is parsed, rendered with the chat template and tokenized on a
 * libuv threadpool worker (UV_THREADPOOL_SIZE threads, libuv's default 4), so
 * a long prompt does not hold up other streams; back on the loop it is
 * submitted to the engine's queue and answered from the engine's events, which
 * arrive through a uv_async_t.  The server can listen before the model is
 * loaded (/health says 503 "loading" meanwhile). */
#ifndef SS_API_SERVER_H
#define SS_API_SERVER_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "runtime/engine/engine.h"
#include "runtime/server/http.h"
#include "runtime/tokenizer/chat.h"

typedef struct ss_api ss_api;

typedef struct ss_api_opts {
  const char *host;           /* default 127.0.0.1 */
  int port;                   /* default 8000; 0 picks a free port */
  const char *model_name;     /* the id in /v1/models and responses */
  const char *api_key;        /* NULL: no authentication */
  ss_http_limits http;
  int32_t default_max_tokens; /* /v1/completions without max_tokens (default 16) */
  size_t max_prompt_nbytes;   /* prompt/messages text; 0: 16 bytes per context token */
  bool parse_special_in_content; /* chat content may spell control tokens; false: plain text */
  const char *access_log;     /* NULL or "stderr", "off", or a file to append to */
} ss_api_opts;

/* Binds and listens (an error names the address); the API answers 503 until
 * ss_api_set_ready. */
int ss_api_create(uv_loop_t *loop, const ss_api_opts *o, ss_api **out);
/* The bound port. */
int ss_api_port(const ss_api *a);

/* From any thread: the model is loaded and the engine runs.  tmpl: the chat
 * template requests are rendered with (it must outlive the server), or NULL
 * when there is none: completions are served and chat requests get a 400 that
 * says no_tmpl_why.  After this the API serves. */
void ss_api_set_ready(ss_api *a, ss_engine *e, const ss_model *m, const ss_chat_template *tmpl,
                      const char *no_tmpl_why);
/* From any thread: loading failed; /health reports it, the API answers 503. */
void ss_api_set_failed(ss_api *a);
/* The engine's notify callback (any thread): wakes the loop to take events. */
void ss_api_wake(void *api);
/* From any thread: the engine thread has returned; once its last events are
 * answered, the server closes every handle so that uv_run returns. */
void ss_api_engine_exited(ss_api *a);

/* On the loop thread: a rank of the job is lost, so nothing in the engine can
 * finish.  Every request in flight is answered now with msg (streams: an error
 * event, then [DONE]; the others: a 500 error object), /health answers 503
 * "failed" and new generation requests 503, without waiting for the engine
 * thread, which may be held inside the communicator.  msg goes to clients: it
 * should name the rank in plain words, no host or pid.  Idempotent (the first
 * message stays). */
void ss_api_fail_lost(ss_api *a, const char *msg);
/* Before ss_api_set_ready: probe(user) runs on the loop each time the engine
 * wakes it, before its events are answered, so that a loss the engine has
 * just failed on reaches clients as ss_api_fail_lost's message (probe calls
 * it) rather than the engine's, which cannot name the rank. */
void ss_api_set_lost_probe(ss_api *a, void (*probe)(void *user), void *user);

/* On the loop thread: stop accepting connections and report "draining". */
void ss_api_begin_drain(ss_api *a);
/* After the loop has ended. */
void ss_api_free(ss_api *a);

#endif
