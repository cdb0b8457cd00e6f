/* shardserve serve: the OpenAI-compatible server.
 *
 * Rank 0 runs the main thread's libuv loop (HTTP, routing, streaming), libuv's
 * threadpool (parsing, chat template, tokenizing of requests, so that a long
 * prompt never holds up the loop), and an engine thread that loads the model
 * and then runs the continuous-batching engine.  Ranks 1..tp-1 load their
 * shard and run the steps rank 0 broadcasts.  SIGINT/SIGTERM to rank 0 drain:
 * stop accepting, finish in-flight requests up to --drain-timeout, stop the
 * workers, exit 0.  SIGUSR1 drains the same way: `shardserve launch` sends it
 * through mpirun (which passes SIGUSR1 on to every rank, where SIGTERM would
 * end them), and the workers ignore it.
 *
 * A lost rank ends the server: every request gets an error, /health answers
 * 503 for k_failed_linger_s so that a balancer sees the failure, then rank 0
 * exits 1.  The loop learns of the loss from the communicator itself (a timer
 * asks it every k_lost_poll_ms), not from the engine thread, which may be held
 * inside Open MPI by the lost peer's closed connection: the answers and the
 * 503s go out at once either way, and a signal after a loss ends the process
 * instead of starting a drain that could never finish. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "comm/comm.h"
#include "launcher/cli.h"
#include "launcher/device.h"
#include "launcher/ranks.h"
#include "runtime/base/status.h"
#include "runtime/base/trace.h"
#include "runtime/engine/engine.h"
#include "runtime/engine/executor.h"
#include "runtime/model/model.h"
#include "runtime/server/api_server.h"
#include "runtime/tokenizer/chat.h"

static const char *k_cmd = "serve";

/* After a fatal error, how long /health keeps answering 503 before the exit. */
static const double k_failed_linger_s = 2.0;

/* How often the loop asks the communicator whether a rank is lost (at TP/PP
 * > 1), so that clients get their errors without the engine thread, which a
 * lost peer can hold inside Open MPI until the launcher ends the job. */
static const uint64_t k_lost_poll_ms = 50;
/* After a loss, how long the loop waits for the engine thread before ending
 * the process itself: the failed engine returns after k_failed_linger_s, so
 * this is reached only when the thread is held in the communicator. */
static const uint64_t k_lost_giveup_ms = 5000;
/* The same after SIGINT/SIGTERM with a rank lost: time for the answers
 * already queued to go out. */
static const uint64_t k_lost_term_ms = 300;

static void usage(FILE *f) {
  fprintf(f,
          "Usage: shardserve serve [options]\n"
          "       shardserve launch --tp N -- serve [options]    (N ranks over MPI)\n"
          "\n"
          "Serves the model behind an OpenAI-compatible API: POST /v1/completions,\n"
          "POST /v1/chat/completions (\"stream\": true for Server-Sent Events), GET /v1/models,\n"
          "GET /health (200 ready; 503 loading, draining, or a rank lost), GET /metrics\n"
          "(Prometheus), POST /tokenize, /detokenize, /apply-template.  Requests are batched\n"
          "continuously over a paged KV cache.  A model without a chat template serves\n"
          "completions; chat then needs --chat-template.\n"
          "\n"
          "Model:\n"
          "  -m, --model FILE          GGUF model (default: " SS_DEFAULT_MODEL ")\n"
          "      --served-model-name N the model id clients send (default: the file name\n"
          "                            without .gguf)\n"
          "      --chat-template T     auto (the model's own Jinja template), chatml, llama3,\n"
          "                            or a Jinja file; checked at start\n"
          "      --ctx N               context limit per request (default: the model's)\n"
          "\n"
          "Network:\n"
          "      --host ADDR           address to bind (default 127.0.0.1: this machine only)\n"
          "      --port N              TCP port (default 8000; 0 picks a free one, printed)\n"
          "      --api-key KEY         require 'Authorization: Bearer KEY' (or set\n"
          "                            SHARDSERVE_API_KEY); /health and /metrics stay open\n"
          "      --max-body-bytes N    larger request bodies get 413 (default 4194304)\n"
          "      --idle-timeout S      close idle keep-alive connections after S s (default 60)\n"
          "      --header-timeout S    a request's line and headers must arrive within S s of\n"
          "                            their first byte (of the accept, on a new connection),\n"
          "                            however slowly they trickle in, else 408 (default 10)\n"
          "      --body-timeout S      its body within S s of the headers, else 408 (default 60)\n"
          "      --max-connections N   more get 503 + Retry-After, not a reset (default 4096)\n"
          "      --max-connections-per-client N  per client address (default 0: no cap)\n"
          "      --max-buffered-bytes SIZE  request input buffered over all connections;\n"
          "                            past it 503 + Retry-After (default 256M)\n"
          "      --max-queued-output SIZE  unsent response bytes per connection before its\n"
          "                            client counts as not reading: its stream is paused\n"
          "                            (not decoded) until it reads, requests it pipelined\n"
          "                            wait (default 1M)\n"
          "      --write-timeout S     a client that leaves its output over that mark (or its\n"
          "                            stream paused) for S s is disconnected and its request\n"
          "                            aborted (default 30)\n"
          "      --max-prompt-bytes N  prompt or messages text larger than N bytes is refused\n"
          "                            (400) before tokenizing (default: 16 per context token)\n"
          "      --parse-special-in-content on|off  chat message content may spell control\n"
          "                            tokens such as <|im_end|> (on, the default, as\n"
          "                            transformers, vLLM and llama.cpp tokenize) or is plain\n"
          "                            text (off: use it when clients are not trusted); the\n"
          "                            template's own markup is always special\n"
          "      --access-log off|stderr|FILE  one line per request: id, route, status, tokens,\n"
          "                            queue/TTFT/total ms, no prompt text (default stderr)\n"
          "      --drain-timeout S     on SIGINT/SIGTERM, finish in-flight requests for up to\n"
          "                            S s, then abort the rest (default 30); with a rank lost\n"
          "                            there is no drain: the server exits at once\n"
          "\n"
          "Batching and memory:\n"
          "      --max-num-seqs N      sequences in a batch (default 64)\n"
          "      --no-prefix-caching   compute every prompt in full (default: the K/V of\n"
          "                            prompt blocks already computed is reused; outputs are\n"
          "                            the same bits either way; the choices of an n > 1\n"
          "                            request share their one prompt's blocks regardless)\n"
          "      --max-batched-tokens N  tokens per step; long prompts are prefilled in\n"
          "                            chunks so running decodes never stall (default 512)\n"
          "      --kv-blocks N         KV-cache blocks of 16 tokens (default: from --kv-mem)\n"
          "      --kv-cache-dtype T    KV-cache elements: bf16 (default where the device has\n"
          "                            kernels for it, else f32: half the memory of f32),\n"
          "                            f32, f16 or fp8_e4m3 (a quarter; saturates at 448)\n"
          "      --kv-mem SIZE         KV-cache memory per rank, e.g. 512M, 2G (default: 40%% of\n"
          "                            the available memory over the ranks, at most what\n"
          "                            --max-num-seqs whole contexts need; a pool smaller\n"
          "                            than one context shortens the context, said at start)\n"
          "      --max-waiting N       queued requests before 429 + Retry-After (default 1024)\n"
          "      --stats-interval S    while requests run, print a stats line (steps, tok/s,\n"
          "                            running, waiting, KV use, failures) every S s to stderr\n"
          "                            (default 10; 0: never)\n"
          "      --step-log FILE       write one CSV line per engine step (batch shape, forward\n"
          "                            and step seconds), e.g. to check `plan`'s cost model\n"
          "      --trace FILE          at exit, write a timeline of every rank's steps, layers\n"
          "                            and collectives (Chrome trace-event JSON, for Perfetto)\n"
          "\n"
          "Execution:\n"
          "      --device D            cpu or cuda (default: cuda when this build has CUDA and\n"
          "                            a GPU is present, else cpu); cuda: one GPU per rank\n"
          "      --activations A       exact (default) or q8: 8-bit activations with integer\n"
          "                            dot products for Q4_0/Q4_1/Q8_0 weights (faster, not exact)\n"
          "  -t, --threads N           CPU threads per rank (default: the usable cores\n"
          "                            divided among the ranks on this node)\n"
          "      --tp N                tensor-parallel ranks (default: the MPI job's size)\n"
          "      --pp N                pipeline stages of --tp ranks each (pp x tp ranks; rank =\n"
          "                            stage * tp + tp rank); layers split evenly by default\n"
          "      --pp-layers A,B,..    layers per stage (sum = the model's layers, each >= 1)\n"
          "      --pp-microbatches K   under --pp, steps in flight at once (default: the number\n"
          "                            of stages): stage k runs one step while stage k+1 runs\n"
          "                            the one before; 1: one step at a time\n"
          "      --replicate-vocab     every rank holds the whole embedding and LM head\n"
          "      --deterministic-allreduce on|off  rank-ordered sums, so a request's output\n"
          "                            does not depend on the batch at any TP (default on)\n"
          "      --comm-timeout S      a collective waiting longer fails (default 0: none)\n"
          "      --comm-liveness S     a rank on any host silent for S seconds on the heartbeat\n"
          "                            channel (or whose connection closes without a goodbye,\n"
          "                            at once) is lost: every request in flight gets an error\n"
          "                            naming the rank, /health 503, the server exits\n"
          "                            (default 4, at least 1; 0: off, only ranks on this\n"
          "                            host watched)\n"
          "      UV_THREADPOOL_SIZE=N  (environment) threads that parse and tokenize requests\n"
          "                            beside the HTTP loop (libuv's threadpool; default 4)\n"
          "  -h, --help                show this help\n");
}

typedef struct serve_ctx {
  /* options */
  const char *path, *tmpl_name, *step_log_path, *trace_path;
  bool replicate_vocab;
  bool act_q8; /* --activations q8 */
  int64_t threads;
  ss_cli_device device;
  ss_engine_opts eo;
  int kv_dtype; /* --kv-cache-dtype, or -1: the backend's default */
  double drain_timeout;
  ss_comm *comm;
  /* rank 0 */
  ss_api *api;
  uv_loop_t *loop;
  uv_signal_t sigint, sigterm, sigusr1;
  uv_async_t stop_async;
  uv_timer_t lost_timer, giveup_timer; /* at TP/PP > 1: watching for a lost rank */
  bool watching;
  bool lost;                 /* loop thread: a rank is lost, requests answered */
  int lost_rank;
  bool signalled;            /* loop thread: SIGINT/SIGTERM/SIGUSR1 came */
  atomic_bool workers_ending; /* the run ended well (or the start failed): ranks leave, none is lost */
  atomic_bool engine_done;   /* engine_main is returning */
  pthread_t engine_thread;
  ss_engine *engine;
  ss_chat_template tmpl;
  bool have_tmpl;
  char no_tmpl_why[320];
  ss_model *model;
  ss_backend *be;
  pthread_mutex_t mu;
  bool stop_requested;
  int engine_rc;
  int exit_code;
} serve_ctx;

/* The engine thread: load, agree with the other ranks, run, stop the workers. */
static void *engine_main(void *arg) {
  serve_ctx *s = arg;
  if (s->trace_path) ss_trace_thread_name("engine");
  int rc = ss_cli_load_shard(k_cmd, s->path, s->comm, s->replicate_vocab, &s->model);
  ss_chat_template *tmpl = &s->tmpl;
  if (rc == SS_EXIT_OK)
    rc = ss_cli_backend_create(k_cmd, s->device, (int)s->threads, s->comm, &s->be);
  if (rc == SS_EXIT_OK) rc = ss_cli_activations_apply(k_cmd, s->be, s->act_q8);
  if (rc == SS_EXIT_OK) rc = ss_cli_kv_dtype_resolve(k_cmd, s->be, s->kv_dtype, &s->kv_dtype);
  if (rc == SS_EXIT_OK) s->eo.kv_dtype = (ss_dtype)s->kv_dtype;
  if (rc == SS_EXIT_OK) rc = ss_cli_model_to_backend(k_cmd, s->model, s->be);
  if (rc == SS_EXIT_OK) {
    if (ss_chat_template_init(tmpl, s->tmpl_name, s->model->chat_template) == SS_OK) {
      s->have_tmpl = true;
      if (ss_chat_template_set_tokenizer(tmpl, s->model->tok))
        rc = ss_cli_fail(k_cmd, "%s", ss_error_msg());
    } else if (s->tmpl_name && strcmp(s->tmpl_name, "auto") != 0) {
      rc = ss_cli_fail(k_cmd, "--chat-template %s: %s", s->tmpl_name, ss_error_msg());
    } else {
      /* A base model (no template), or one whose template cannot be used:
       * completions are served, chat answers 400 saying why. */
      snprintf(s->no_tmpl_why, sizeof s->no_tmpl_why, "%s",
               s->model->chat_template ? ss_error_msg() : "the model has no chat template");
      fprintf(stderr, "shardserve serve: warning: %s; /v1/chat/completions will answer 400 "
              "(pass --chat-template NAME|FILE to serve chat)\n", s->no_tmpl_why);
    }
  }
  if (rc == SS_EXIT_OK && s->step_log_path && !(s->eo.step_log = fopen(s->step_log_path, "w")))
    rc = ss_cli_fail(k_cmd, "--step-log %s: %s", s->step_log_path, strerror(errno));
  ss_engine *engine = NULL;
  if (rc == SS_EXIT_OK && ss_engine_create(s->model, s->be, &s->eo, ss_api_wake, s->api, &engine)) {
    rc = ss_cli_fail(k_cmd, "%s", ss_error_msg());
  }
  if ((rc = ss_ranks_agree(k_cmd, s->comm, rc == SS_EXIT_OK))) {
    s->exit_code = rc;
    ss_engine_free(engine);
    atomic_store(&s->workers_ending, true);
    ss_api_set_failed(s->api);
    atomic_store(&s->engine_done, true);
    ss_api_engine_exited(s->api);
    return NULL;
  }
  if (ss_engine_n_ctx(engine) < s->model->cfg.n_ctx_train && s->eo.n_ctx == 0)
    fprintf(stderr, "shardserve serve: note: the KV pool holds %lld tokens, less than the model's "
            "context of %d: requests get a context of %d (a larger --kv-mem or --kv-blocks "
            "raises it)\n", (long long)ss_engine_n_blocks(engine) * ss_engine_block_size(engine),
            s->model->cfg.n_ctx_train, ss_engine_n_ctx(engine));
  fprintf(stderr, "shardserve serve: ready: model %s, tp %d, pp %d, device %s%s%s, %d KV blocks "
          "of %d tokens, context %d, KV %s, listening on port %d\n", s->path,
          s->model->local.tp > 0 ? s->model->local.tp : 1,
          s->model->local.pp > 0 ? s->model->local.pp : 1,
          s->be->name, s->be->variant ? ", kernels " : "", s->be->variant ? s->be->variant : "",
          ss_engine_n_blocks(engine), ss_engine_block_size(engine), ss_engine_n_ctx(engine),
          ss_kv_dtype_name(s->eo.kv_dtype),
          ss_api_port(s->api));
  ss_api_set_ready(s->api, engine, s->model, s->have_tmpl ? tmpl : NULL, s->no_tmpl_why);
  /* Publish the engine to the signal handler; whichever of the two comes second
   * asks it to stop, so a signal during loading is not lost. */
  pthread_mutex_lock(&s->mu);
  s->engine = engine;
  bool stop = s->stop_requested;
  pthread_mutex_unlock(&s->mu);
  if (stop) ss_engine_stop(s->engine, s->drain_timeout);
  s->engine_rc = ss_engine_run(s->engine);
  /* Drained: the workers are stopped next, and their exits are no loss, so the
   * loop stops watching.  A failed run is watched on: the loss it failed on
   * reaches the clients as the loop's message, which names the rank. */
  if (s->engine_rc == SS_OK) atomic_store(&s->workers_ending, true);
  if (s->engine_rc != SS_OK) {
    ss_cli_fail(k_cmd, "%s", ss_error_msg());
    /* Every request has its error; /health says 503 (the engine has failed)
     * while new requests are refused, until the exit. */
    struct timespec ts = {.tv_sec = (time_t)k_failed_linger_s,
                          .tv_nsec = (long)((k_failed_linger_s - (double)(time_t)k_failed_linger_s) *
                                            1e9)};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {}
  } else if (ss_exec_stop_workers(s->model)) {
    ss_cli_fail(k_cmd, "%s", ss_error_msg());
    s->engine_rc = SS_ERR_COMM;
  }
  s->exit_code = s->engine_rc == SS_OK ? SS_EXIT_OK : SS_EXIT_FAIL;
  /* The workers have stopped and join the gather (the comm calls stay on this
   * thread). */
  if (s->exit_code == SS_EXIT_OK && s->trace_path)
    s->exit_code = ss_ranks_trace_write(k_cmd, s->comm, s->trace_path);
  atomic_store(&s->engine_done, true);
  ss_api_engine_exited(s->api);
  return NULL;
}

/* The engine thread has not returned since a rank was lost (held inside the
 * communicator): nothing more can happen here, and the clients have their
 * answers, so the process ends without it. */
static void on_lost_giveup(uv_timer_t *t) {
  serve_ctx *s = t->data;
  if (atomic_load(&s->engine_done)) return;
  fprintf(stderr, "shardserve serve: rank %d was lost and the engine thread is still held in "
          "the communicator; exiting without it\n", s->lost_rank);
  fflush(stderr);
  _exit(SS_EXIT_FAIL);
}

/* A rank is lost (why: the communicator's line for the log): every request
 * is answered now, /health says 503, and the exit follows, by the engine
 * thread's way or, should it be held, by on_lost_giveup's. */
static void serve_lost(serve_ctx *s, int rank, const char *why) {
  if (s->lost) return;
  s->lost = true;
  s->lost_rank = rank;
  uv_timer_stop(&s->lost_timer);
  fprintf(stderr, "shardserve serve: %s: every request in flight gets an error now, /health "
          "answers 503, new requests are refused\n", why);
  char msg[200];
  snprintf(msg, sizeof msg, "the server lost its rank %d (of %d ranks) and is stopping; retry "
           "once it has been restarted", rank, s->comm->size);
  ss_api_fail_lost(s->api, msg);
  uv_timer_start(&s->giveup_timer, on_lost_giveup, s->signalled ? k_lost_term_ms : k_lost_giveup_ms,
                 0);
}

/* Whether a rank is lost now; if so, acts on it. */
static bool check_lost(serve_ctx *s) {
  if (s->lost) return true;
  if (!s->watching || atomic_load(&s->workers_ending)) return false;
  char why[400];
  int r = ss_comm_lost_rank(s->comm, why, sizeof why);
  if (r < 0) return false;
  serve_lost(s, r, why);
  return true;
}

static void on_lost_poll(uv_timer_t *t) {
  serve_ctx *s = t->data;
  if (atomic_load(&s->workers_ending)) uv_timer_stop(t);
  else check_lost(s);
}

static void lost_probe(void *user) { check_lost(user); }

static void on_signal(uv_signal_t *h, int signum) {
  serve_ctx *s = h->data;
  const bool first = !s->signalled;
  s->signalled = true;
  if (check_lost(s)) {
    /* Nothing in flight can finish: no drain, the answers are out. */
    if (first) {
      fprintf(stderr, "shardserve serve: %s with rank %d lost: exiting now, no drain\n",
              signum == SIGINT ? "SIGINT" : signum == SIGTERM ? "SIGTERM" : "SIGUSR1",
              s->lost_rank);
      uv_timer_start(&s->giveup_timer, on_lost_giveup, k_lost_term_ms, 0);
    }
    return;
  }
  fprintf(stderr, "shardserve serve: %s: draining (up to %.0f s), then exiting\n",
          signum == SIGINT ? "SIGINT" : signum == SIGTERM ? "SIGTERM" : "SIGUSR1",
          s->drain_timeout);
  ss_api_begin_drain(s->api);
  pthread_mutex_lock(&s->mu);
  s->stop_requested = true;
  ss_engine *e = s->engine;
  pthread_mutex_unlock(&s->mu);
  if (e) ss_engine_stop(e, s->drain_timeout);
  uv_signal_stop(&s->sigint);
  uv_signal_stop(&s->sigterm);
  uv_signal_stop(&s->sigusr1);
  uv_close((uv_handle_t *)&s->sigint, NULL);
  uv_close((uv_handle_t *)&s->sigterm, NULL);
  uv_close((uv_handle_t *)&s->sigusr1, NULL);
}

static int run_rank0(serve_ctx *s, ss_api_opts *ao) {
  s->loop = uv_default_loop();
  if (ss_api_create(s->loop, ao, &s->api)) {
    int code = ss_cli_fail(k_cmd, "%s", ss_error_msg());
    /* The other ranks are loading: tell them to stop. */
    if (s->comm) ss_ranks_agree(k_cmd, s->comm, false);
    return code;
  }
  fprintf(stderr, "shardserve serve: listening on http://%s:%d (loading the model)\n", ao->host,
          ss_api_port(s->api));
  uv_signal_init(s->loop, &s->sigint);
  uv_signal_init(s->loop, &s->sigterm);
  uv_signal_init(s->loop, &s->sigusr1);
  s->sigint.data = s->sigterm.data = s->sigusr1.data = s;
  uv_signal_start(&s->sigint, on_signal, SIGINT);
  uv_signal_start(&s->sigterm, on_signal, SIGTERM);
  uv_signal_start(&s->sigusr1, on_signal, SIGUSR1);
  /* The signal watchers must not keep the loop alive on their own: when the
   * engine fails to start, the API closes its handles and the loop ends. */
  uv_unref((uv_handle_t *)&s->sigint);
  uv_unref((uv_handle_t *)&s->sigterm);
  uv_unref((uv_handle_t *)&s->sigusr1);
  uv_timer_init(s->loop, &s->lost_timer);
  uv_timer_init(s->loop, &s->giveup_timer);
  s->lost_timer.data = s->giveup_timer.data = s;
  uv_unref((uv_handle_t *)&s->lost_timer);
  uv_unref((uv_handle_t *)&s->giveup_timer);
  s->watching = s->comm && s->comm->size > 1;
  if (s->watching) {
    uv_timer_start(&s->lost_timer, on_lost_poll, k_lost_poll_ms, k_lost_poll_ms);
    ss_api_set_lost_probe(s->api, lost_probe, s);
  }
  pthread_mutex_init(&s->mu, NULL);
  if (pthread_create(&s->engine_thread, NULL, engine_main, s) != 0)
    return ss_cli_fail(k_cmd, "cannot start the engine thread");
  /* The engine's pointer becomes visible to on_signal once it exists. */
  uv_run(s->loop, UV_RUN_DEFAULT);
  pthread_join(s->engine_thread, NULL);
  uv_close((uv_handle_t *)&s->lost_timer, NULL);
  uv_close((uv_handle_t *)&s->giveup_timer, NULL);
  if (!uv_is_closing((uv_handle_t *)&s->sigint)) {
    uv_close((uv_handle_t *)&s->sigint, NULL);
    uv_close((uv_handle_t *)&s->sigterm, NULL);
    uv_close((uv_handle_t *)&s->sigusr1, NULL);
  }
  uv_run(s->loop, UV_RUN_DEFAULT);
  return s->exit_code;
}

int ss_cmd_serve(int argc, char **argv) {
  serve_ctx s = {.path = SS_DEFAULT_MODEL, .drain_timeout = 30, .kv_dtype = -1,
                 .eo = {.stats_interval_s = 10}};
  ss_api_opts ao = {.host = "127.0.0.1", .port = 8000, .parse_special_in_content = true};
  const char *name = NULL;
  int64_t tp = 0, v = 0, pp = 0;
  const char *pp_layers_arg = NULL;
  int pp_layers[SS_CLI_MAX_STAGES];
  double comm_timeout = 0, comm_liveness = SS_CLI_COMM_LIVENESS_S, d = 0;
  bool deterministic = true;
  enum { O_NAME = 256, O_TMPL, O_CTX, O_HOST, O_PORT, O_KEY, O_BODY, O_IDLE, O_DRAIN, O_SEQS,
         O_NO_PREFIX, O_TOKENS, O_BLOCKS, O_KVMEM, O_WAIT, O_TP, O_REPL, O_DET, O_CTO, O_CLIVE, O_DEVICE, O_SLOG, O_ACT,
         O_HDR_TO, O_BODY_TO, O_MAXCONN, O_MAXCONN_CLIENT, O_MAXBUF, O_OUTQ, O_WRITE_TO,
         O_PROMPT_BYTES, O_PARSE_SPECIAL, O_ACCESS_LOG, O_STATS, O_PP, O_PPL, O_KVT, O_TRACE, O_PPMB };
  static const struct option opts[] = {
      {"model", required_argument, 0, 'm'}, {"served-model-name", required_argument, 0, O_NAME},
      {"chat-template", required_argument, 0, O_TMPL}, {"ctx", required_argument, 0, O_CTX},
      {"host", required_argument, 0, O_HOST}, {"port", required_argument, 0, O_PORT},
      {"api-key", required_argument, 0, O_KEY}, {"max-body-bytes", required_argument, 0, O_BODY},
      {"idle-timeout", required_argument, 0, O_IDLE},
      {"drain-timeout", required_argument, 0, O_DRAIN},
      {"max-num-seqs", required_argument, 0, O_SEQS},
      {"no-prefix-caching", no_argument, 0, O_NO_PREFIX},
      {"max-batched-tokens", required_argument, 0, O_TOKENS},
      {"step-log", required_argument, 0, O_SLOG}, {"trace", required_argument, 0, O_TRACE},
      {"kv-blocks", required_argument, 0, O_BLOCKS}, {"kv-mem", required_argument, 0, O_KVMEM},
      {"max-waiting", required_argument, 0, O_WAIT}, {"threads", required_argument, 0, 't'},
      {"tp", required_argument, 0, O_TP}, {"pp", required_argument, 0, O_PP},
      {"pp-layers", required_argument, 0, O_PPL}, {"replicate-vocab", no_argument, 0, O_REPL},
      {"pp-microbatches", required_argument, 0, O_PPMB},
      {"deterministic-allreduce", required_argument, 0, O_DET},
      {"comm-timeout", required_argument, 0, O_CTO}, {"help", no_argument, 0, 'h'},
      {"comm-liveness", required_argument, 0, O_CLIVE},
      {"device", required_argument, 0, O_DEVICE},
      {"activations", required_argument, 0, O_ACT},
      {"header-timeout", required_argument, 0, O_HDR_TO},
      {"body-timeout", required_argument, 0, O_BODY_TO},
      {"max-connections", required_argument, 0, O_MAXCONN},
      {"max-connections-per-client", required_argument, 0, O_MAXCONN_CLIENT},
      {"max-buffered-bytes", required_argument, 0, O_MAXBUF},
      {"max-queued-output", required_argument, 0, O_OUTQ},
      {"write-timeout", required_argument, 0, O_WRITE_TO},
      {"max-prompt-bytes", required_argument, 0, O_PROMPT_BYTES},
      {"parse-special-in-content", required_argument, 0, O_PARSE_SPECIAL},
      {"access-log", required_argument, 0, O_ACCESS_LOG},
      {"stats-interval", required_argument, 0, O_STATS},
      {"kv-cache-dtype", required_argument, 0, O_KVT},
      {0, 0, 0, 0},
  };
  optind = 1;
  opterr = 0;
  int c;
  while ((c = getopt_long(argc, argv, ":m:t:h", opts, NULL)) != -1) {
    switch (c) {
    case 'm': s.path = optarg; break;
    case O_NAME:
      if (!*optarg) return ss_cli_usage(k_cmd, "--served-model-name must not be empty");
      name = optarg;
      break;
    case O_TMPL:
      if (strcmp(optarg, "auto") && strcmp(optarg, "chatml") && strcmp(optarg, "llama3") &&
          access(optarg, R_OK) != 0)
        return ss_cli_usage(k_cmd, "--chat-template '%s' is neither a built-in template (auto, "
                            "chatml, llama3) nor a readable Jinja file", optarg);
      s.tmpl_name = optarg;
      break;
    case O_CTX:
      if (!ss_cli_parse_int(k_cmd, "--ctx", optarg, 1, 1 << 24, &v)) return SS_EXIT_USAGE;
      s.eo.n_ctx = (int32_t)v;
      break;
    case O_HOST: ao.host = optarg; break;
    case O_PORT:
      if (!ss_cli_parse_int(k_cmd, "--port", optarg, 0, 65535, &v)) return SS_EXIT_USAGE;
      ao.port = (int)v;
      break;
    case O_KEY:
      if (!*optarg) return ss_cli_usage(k_cmd, "--api-key must not be empty");
      ao.api_key = optarg;
      break;
    case O_HDR_TO:
    case O_BODY_TO:
    case O_WRITE_TO: {
      const char *flag = c == O_HDR_TO ? "--header-timeout" : c == O_BODY_TO ? "--body-timeout"
                                                                          : "--write-timeout";
      if (!ss_cli_parse_float(k_cmd, flag, optarg, 0.01, 86400, &d)) return SS_EXIT_USAGE;
      if (c == O_HDR_TO) ao.http.header_timeout_s = d;
      else if (c == O_BODY_TO) ao.http.body_timeout_s = d;
      else ao.http.write_timeout_s = d;
      break;
    }
    case O_MAXCONN:
      if (!ss_cli_parse_int(k_cmd, "--max-connections", optarg, 1, 1 << 20, &v))
        return SS_EXIT_USAGE;
      ao.http.max_connections = (int)v;
      break;
    case O_MAXCONN_CLIENT:
      if (!ss_cli_parse_int(k_cmd, "--max-connections-per-client", optarg, 0, 1 << 20, &v))
        return SS_EXIT_USAGE;
      ao.http.max_connections_per_client = (int)v;
      break;
    case O_MAXBUF:
    case O_OUTQ: {
      const char *flag = c == O_MAXBUF ? "--max-buffered-bytes" : "--max-queued-output";
      if (!ss_cli_parse_size(k_cmd, flag, optarg, &d)) return SS_EXIT_USAGE;
      if (d < 4096 || d > (double)((size_t)1 << 40))
        return ss_cli_usage(k_cmd, "%s %s: give 4096 bytes to 1T", flag, optarg);
      if (c == O_MAXBUF) ao.http.max_buffered_nbytes = (size_t)d;
      else ao.http.output_high_water_nbytes = (size_t)d;
      break;
    }
    case O_PROMPT_BYTES:
      if (!ss_cli_parse_int(k_cmd, "--max-prompt-bytes", optarg, 1, 1 << 30, &v))
        return SS_EXIT_USAGE;
      ao.max_prompt_nbytes = (size_t)v;
      break;
    case O_PARSE_SPECIAL:
      if (strcmp(optarg, "on") && strcmp(optarg, "off"))
        return ss_cli_usage(k_cmd, "invalid value '%s' for --parse-special-in-content: on or off",
                            optarg);
      ao.parse_special_in_content = strcmp(optarg, "on") == 0;
      break;
    case O_ACCESS_LOG: ao.access_log = optarg; break;
    case O_BODY:
      if (!ss_cli_parse_int(k_cmd, "--max-body-bytes", optarg, 1024, 1 << 30, &v))
        return SS_EXIT_USAGE;
      ao.http.max_body_nbytes = (size_t)v;
      break;
    case O_IDLE:
      if (!ss_cli_parse_float(k_cmd, "--idle-timeout", optarg, 0.01, 86400, &d)) return SS_EXIT_USAGE;
      ao.http.idle_timeout_s = d;
      break;
    case O_DRAIN:
      if (!ss_cli_parse_float(k_cmd, "--drain-timeout", optarg, 0, 86400, &s.drain_timeout))
        return SS_EXIT_USAGE;
      break;
    case O_SEQS:
      if (!ss_cli_parse_int(k_cmd, "--max-num-seqs", optarg, 1, 4096, &v)) return SS_EXIT_USAGE;
      s.eo.max_num_seqs = (int32_t)v;
      break;
    case O_NO_PREFIX:
      s.eo.no_prefix_caching = true;
      break;
    case O_TOKENS:
      if (!ss_cli_parse_int(k_cmd, "--max-batched-tokens", optarg, 1, 65536, &v))
        return SS_EXIT_USAGE;
      s.eo.max_batched_tokens = (int32_t)v;
      break;
    case O_BLOCKS:
      if (!ss_cli_parse_int(k_cmd, "--kv-blocks", optarg, 1, 1 << 24, &v)) return SS_EXIT_USAGE;
      s.eo.n_blocks = (int32_t)v;
      break;
    case O_KVMEM:
      if (!ss_cli_parse_size(k_cmd, "--kv-mem", optarg, &d)) return SS_EXIT_USAGE;
      s.eo.kv_mem_bytes = (uint64_t)d;
      break;
    case O_KVT:
      if (!ss_cli_kv_dtype_parse(k_cmd, optarg, &s.kv_dtype)) return SS_EXIT_USAGE;
      break;
    case O_WAIT:
      if (!ss_cli_parse_int(k_cmd, "--max-waiting", optarg, 1, 1 << 20, &v)) return SS_EXIT_USAGE;
      s.eo.max_waiting = (int32_t)v;
      break;
    case 't':
      if (!ss_cli_parse_int(k_cmd, "--threads", optarg, 1, 1024, &s.threads)) return SS_EXIT_USAGE;
      break;
    case O_TP:
      if (!ss_cli_parse_int(k_cmd, "--tp", optarg, 1, 4096, &tp)) return SS_EXIT_USAGE;
      break;
    case O_PP:
      if (!ss_cli_parse_int(k_cmd, "--pp", optarg, 1, SS_CLI_MAX_STAGES, &pp)) return SS_EXIT_USAGE;
      break;
    case O_PPL: pp_layers_arg = optarg; break;
    case O_PPMB:
      if (!ss_cli_parse_int(k_cmd, "--pp-microbatches", optarg, 1, 256, &v)) return SS_EXIT_USAGE;
      s.eo.microbatches = (int32_t)v;
      break;
    case O_REPL: s.replicate_vocab = true; break;
    case O_DET:
      if (strcmp(optarg, "on") && strcmp(optarg, "off"))
        return ss_cli_usage(k_cmd, "invalid value '%s' for --deterministic-allreduce: on or off",
                            optarg);
      deterministic = strcmp(optarg, "on") == 0;
      break;
    case O_CTO:
      if (!ss_cli_parse_float(k_cmd, "--comm-timeout", optarg, 0, 1e6, &comm_timeout))
        return SS_EXIT_USAGE;
      break;
    case O_CLIVE:
      if (!ss_cli_parse_float(k_cmd, "--comm-liveness", optarg, 0, 1e6, &comm_liveness))
        return SS_EXIT_USAGE;
      if (comm_liveness > 0 && comm_liveness < SS_CLI_COMM_LIVENESS_MIN_S)
        return ss_cli_usage(k_cmd, "--comm-liveness %g: 0 (off) or at least %.0f s (a heartbeat "
                            "goes out every 0.5 s; a shorter timeout would fire on a busy machine)",
                            comm_liveness, SS_CLI_COMM_LIVENESS_MIN_S);
      break;
    case O_SLOG: s.step_log_path = optarg; break;
    case O_TRACE: s.trace_path = optarg; break;
    case O_STATS:
      if (!ss_cli_parse_float(k_cmd, "--stats-interval", optarg, 0, 86400, &s.eo.stats_interval_s))
        return SS_EXIT_USAGE;
      break;
    case O_DEVICE:
      if (!ss_cli_device_parse(k_cmd, optarg, &s.device)) return SS_EXIT_USAGE;
      break;
    case O_ACT:
      if (!ss_cli_activations_parse(k_cmd, optarg, &s.act_q8)) return SS_EXIT_USAGE;
      break;
    case 'h': usage(stdout); return SS_EXIT_OK;
    case ':': return ss_cli_usage(k_cmd, "option '%s' needs a value", argv[optind - 1]);
    default: return ss_cli_usage(k_cmd, "unknown option '%s'", argv[optind - 1]);
    }
  }
  if (optind < argc) return ss_cli_usage(k_cmd, "unexpected argument '%s'", argv[optind]);
  if (s.eo.n_blocks && s.eo.kv_mem_bytes)
    return ss_cli_usage(k_cmd, "give --kv-blocks or --kv-mem, not both");
  if (!ao.api_key) {
    ao.api_key = getenv("SHARDSERVE_API_KEY");
    if (ao.api_key && !*ao.api_key)
      return ss_cli_usage(k_cmd, "SHARDSERVE_API_KEY is set but empty: set a key or unset it");
  }
  if (!ao.api_key && strcmp(ao.host, "127.0.0.1") && strcmp(ao.host, "::1") &&
      strncmp(ao.host, "127.", 4))
    fprintf(stderr, "shardserve serve: warning: --host %s accepts connections from other "
                    "machines and no --api-key is set: anyone who can reach it may use it\n",
            ao.host);
  s.eo.log = stderr;
  const char *dbg = getenv("SS_DEBUG_FAIL_STEP");
  if (dbg && *dbg) {
    /* Tests only: ID[:N] fails every step holding request ID (counted from 1)
     * once it has generated N tokens (default 0). */
    char *end = NULL;
    long long id = strtoll(dbg, &end, 10);
    long after = 0;
    if (*end == ':') after = strtol(end + 1, &end, 10);
    if (id < 1 || after < 0 || after > 1 << 24 || *end)
      return ss_cli_usage(k_cmd, "SS_DEBUG_FAIL_STEP='%s': expected ID[:N], ID >= 1, N >= 0", dbg);
    s.eo.debug_fail_id = id;
    s.eo.debug_fail_after = (int32_t)after;
    fprintf(stderr, "shardserve serve: debug hook: steps holding request %lld fail once it has "
            "%ld tokens (SS_DEBUG_FAIL_STEP)\n", id, after);
  }

  /* The model id: the file name without directories and .gguf. */
  char base[256];
  if (!name) {
    const char *b = strrchr(s.path, '/');
    b = b ? b + 1 : s.path;
    snprintf(base, sizeof base, "%s", b);
    size_t n = strlen(base);
    if (n > 5 && strcmp(base + n - 5, ".gguf") == 0) base[n - 5] = 0;
    name = base;
  }
  ao.model_name = name;

  /* SIGUSR1 (launch's drain request through mpirun) must not end a rank that
   * is still starting: rank 0 handles it once its loop runs, workers never. */
  signal(SIGUSR1, SIG_IGN);
  /* A client that leaves mid-response makes the next write fail with EPIPE,
   * which the HTTP layer handles; the signal would end the server. */
  signal(SIGPIPE, SIG_IGN);
  int rc = ss_cli_device_resolve(k_cmd, &s.device);
  if (rc) return rc;
  ss_ranks_opts ro = {.tp = (int)tp, .deterministic = deterministic, .timeout_s = comm_timeout,
                      .liveness_s = comm_liveness,
                      .gpu = s.device == SS_CLI_DEVICE_CUDA};
  if ((rc = ss_ranks_pp_opts(k_cmd, pp, pp_layers_arg, pp_layers, &ro))) return rc;
  if (s.eo.microbatches > 1 && ro.pp <= 1)
    return ss_cli_usage(k_cmd, "--pp-microbatches %d needs pipeline stages (--pp 2 or more): "
                        "without them one step runs at a time", s.eo.microbatches);
  if (s.trace_path && (rc = ss_ranks_trace_check(k_cmd, s.trace_path))) return rc;
  rc = ss_ranks_start(k_cmd, &ro, &s.comm);
  if (rc) return rc;
  if (s.trace_path &&
      (rc = ss_ranks_trace_start(k_cmd, s.comm, s.comm && s.comm->rank != 0 ? "worker" : NULL))) {
    ss_ranks_end(s.comm, rc);
    return rc;
  }
  if (s.comm && s.comm->rank != 0) {
    /* A worker: load, agree, run steps until rank 0 says stop.  Ctrl-C and the
     * launcher's SIGTERM reach every rank; only rank 0 acts on them (it drains,
     * then stops the workers), so a worker ignores them.  A rank 0 that dies is
     * still noticed: the wait for the next step watches it. */
    signal(SIGINT, SIG_IGN);
    signal(SIGTERM, SIG_IGN);
    signal(SIGUSR1, SIG_IGN);
    ss_model *m = NULL;
    ss_backend *be = NULL;
    rc = ss_cli_load_shard(k_cmd, s.path, s.comm, s.replicate_vocab, &m);
    if (rc == SS_EXIT_OK) rc = ss_cli_backend_create(k_cmd, s.device, (int)s.threads, s.comm, &be);
    if (rc == SS_EXIT_OK) rc = ss_cli_model_to_backend(k_cmd, m, be);
    if ((rc = ss_ranks_agree(k_cmd, s.comm, rc == SS_EXIT_OK)) == SS_EXIT_OK &&
        ss_exec_worker_loop(m, be))
      rc = ss_cli_fail(k_cmd, "%s", ss_error_msg());
    if (rc == SS_EXIT_OK && s.trace_path) rc = ss_ranks_trace_write(k_cmd, s.comm, s.trace_path);
    ss_model_free(m); /* before the backend its device weights belong to */
    if (be) be->free(be);
    ss_ranks_end(s.comm, rc);
    return rc;
  }
  rc = run_rank0(&s, &ao);
  ss_api_free(s.api);
  if (s.loop) uv_loop_close(s.loop);
  ss_engine_free(s.engine);
  if (s.eo.step_log) fclose(s.eo.step_log);
  if (s.have_tmpl) ss_chat_template_free(&s.tmpl);
  ss_model_free(s.model);
  if (s.be) s.be->free(s.be);
  ss_ranks_end(s.comm, rc);
  if (rc == SS_EXIT_OK) fprintf(stderr, "shardserve serve: stopped\n");
  return rc;
}
