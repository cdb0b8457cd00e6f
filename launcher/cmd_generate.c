/* shardserve generate: text from a prompt, as one request through the serving
 * engine (runtime/engine/generate.h); under tensor parallelism the other ranks
 * run the steps it broadcasts. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "comm/comm.h"
#include "launcher/cli.h"
#include "launcher/device.h"
#include "launcher/ranks.h"
#include "runtime/base/status.h"
#include "runtime/engine/engine.h"
#include "runtime/engine/executor.h"
#include "runtime/engine/generate.h"
#include "runtime/model/model.h"
#include "runtime/tokenizer/chat.h"

static const char *k_cmd = "generate";

#define MAX_STOP SS_ENGINE_MAX_STOP
#define MAX_PROMPT_NBYTES (64u << 20)

static void usage(FILE *f) {
  fprintf(f,
          "Usage: shardserve generate [options] --prompt TEXT\n"
          "\n"
          "Generates text from a prompt and streams it to stdout; a statistics line goes\n"
          "to stderr at the end.\n"
          "\n"
          "Model and prompt:\n"
          "  -m, --model PATH        GGUF model or Hugging Face folder (config.json,\n"
          "                          safetensors, tokenizer) (default: " SS_DEFAULT_MODEL ")\n"
          "  -p, --prompt TEXT       the prompt ('-' reads it from stdin)\n"
          "  -f, --prompt-file FILE  read the prompt from FILE\n"
          "      --prompt-ids LIST   the prompt as comma-separated token ids (used as given:\n"
          "                          no BOS is added)\n"
          "      --chat              wrap the prompt as a user message in the model's chat\n"
          "                          template and answer as the assistant\n"
          "      --system TEXT       system message for --chat\n"
          "      --chat-template N   auto (default: the model's own), chatml, llama3, or a\n"
          "                          Jinja file\n"
          "      --bos / --no-bos    force adding BOS or not (default: the model's setting)\n"
          "\n"
          "Generation:\n"
          "  -n, --max-tokens N      tokens to generate at most (default 128)\n"
          "      --temp T            temperature, 0 = greedy (default 0.8)\n"
          "      --top-k K           keep the K most likely tokens, 0 = off (default 40)\n"
          "      --top-p P           nucleus sampling mass, 1 = off (default 0.95)\n"
          "      --min-p P           drop tokens below P x the top probability, 0 = off\n"
          "                          (default 0.05)\n"
          "      --seed S            random seed (default: from the clock; printed)\n"
          "      --stop S            stop when S appears (repeatable, up to %d)\n"
          "      --ignore-eos        do not stop at end-of-generation tokens\n"
          "      --ctx N             context limit (default: the model's)\n"
          "\n"
          "Output:\n"
          "      --json              print one JSON object instead of streaming text:\n"
          "                          prompt_tokens, tokens, text, finish_reason, and\n"
          "                          top_logprobs with --logprobs\n"
          "      --logprobs K        with --json: the K most likely tokens and their\n"
          "                          log-softmax of the raw logits, at every step\n"
          "\n"
          "Execution:\n"
          SS_CLI_DEVICE_HELP
          "      --kv-cache-dtype T  KV cache elements: bf16 (default where the device has\n"
          "                          kernels for it, else f32), f32, f16 or fp8_e4m3\n"
          "      --activations A     exact (default) or q8: 8-bit activations with integer\n"
          "                          dot products for Q4_0/Q4_1/Q8_0 weights (faster, not exact)\n"
          "  -t, --threads N         CPU threads per rank (default: the usable cores\n"
          "                          divided among the ranks on this node)\n"
          "      --tp N              tensor-parallel ranks (default: the MPI job's size);\n"
          "                          start N ranks with 'shardserve launch --tp N -- generate ...'\n"
          "      --pp N              pipeline stages of --tp ranks each (pp x tp ranks; rank =\n"
          "                          stage * tp + tp rank); layers split evenly by default\n"
          "      --pp-layers A,B,..  layers per stage (sum = the model's layers, each >= 1)\n"
          "      --ep N              mixture-of-experts models: expert parallelism over the N\n"
          "                          ranks (whole experts per rank; N = the number of ranks)\n"
          "                          instead of tensor parallelism inside every expert\n"
          "      --replicate-vocab   every rank holds the whole embedding and LM head\n"
          "                          (default: split by vocabulary rows, logits gathered)\n"
          "      --deterministic-allreduce  sum across ranks in rank order, whatever the\n"
          "                          MPI algorithm (reproducible across runs and networks)\n"
          "      --comm-timeout S    a collective waiting longer than S seconds fails\n"
          "                          (default 0: no limit; a lost rank is detected anyway)\n"
          "      --comm-liveness S   a rank on any host silent for S seconds on the heartbeat\n"
          "                          channel is lost: every rank fails naming it (default 4,\n"
          "                          at least 1; 0: off, only ranks on this host watched)\n"
          "      --profile           print per-rank compute / comm / idle time per step and\n"
          "                          resident memory at the end\n"
          "      --trace FILE        write a timeline of every rank's steps, layers and\n"
          "                          collectives (Chrome trace-event JSON; Perfetto opens it)\n"
          "  -h, --help              show this help\n"
          "\n"
          "Sampling order: temperature, top-k, top-p, min-p, then a seeded draw.\n",
          MAX_STOP);
}

/* Reads a whole stream (binary-safe) into a NUL-terminated buffer. */
static int read_all(FILE *fp, const char *what, char **out, size_t *len) {
  size_t cap = 4096, n = 0;
  char *buf = malloc(cap);
  if (!buf) return ss_error(SS_ERR_NOMEM, "out of memory");
  for (;;) {
    if (n + 1 >= cap) {
      if (cap >= MAX_PROMPT_NBYTES) {
        free(buf);
        return ss_error(SS_ERR_RANGE, "%s is larger than %u bytes", what, MAX_PROMPT_NBYTES);
      }
      cap *= 2;
      char *nb = realloc(buf, cap);
      if (!nb) {
        free(buf);
        return ss_error(SS_ERR_NOMEM, "out of memory");
      }
      buf = nb;
    }
    size_t r = fread(buf + n, 1, cap - 1 - n, fp);
    n += r;
    if (r == 0) break;
  }
  if (ferror(fp)) {
    free(buf);
    return ss_error(SS_ERR_IO, "cannot read %s", what);
  }
  buf[n] = 0;
  *out = buf;
  *len = n;
  return SS_OK;
}

/* "1,2,3" -> ids, each checked against the vocabulary. */
static int parse_ids(const char *s, int32_t vocab, int32_t **out, size_t *n) {
  size_t cap = 16, k = 0;
  int32_t *ids = malloc(cap * sizeof *ids);
  if (!ids) return ss_error(SS_ERR_NOMEM, "out of memory");
  const char *p = s;
  while (*p) {
    char *end;
    errno = 0;
    long long v = strtoll(p, &end, 10);
    if (end == p || errno || v < 0 || v >= vocab) {
      free(ids);
      return ss_error(SS_ERR_RANGE, "--prompt-ids: item %zu ('%.20s') is not a token id in "
                      "[0, %d)", k, p, vocab);
    }
    if (k == cap) {
      int32_t *nb = realloc(ids, (cap *= 2) * sizeof *ids);
      if (!nb) {
        free(ids);
        return ss_error(SS_ERR_NOMEM, "out of memory");
      }
      ids = nb;
    }
    ids[k++] = (int32_t)v;
    p = end;
    if (*p == ',') p++;
    else if (*p) {
      free(ids);
      return ss_error(SS_ERR_RANGE, "--prompt-ids: expected ',' after item %zu", k - 1);
    }
  }
  *out = ids;
  *n = k;
  return SS_OK;
}

typedef struct stream_ctx {
  bool json;
} stream_ctx;

static int on_step(void *user, const ss_gen_step *s) {
  stream_ctx *sc = user;
  if (!sc->json && s->text_len) {
    fwrite(s->text, 1, s->text_len, stdout);
    fflush(stdout);
  }
  return 0;
}

typedef struct json_ctx {
  json_t *steps; /* array of arrays of {id, logprob} */
} json_ctx;

static int on_step_json(void *user, const ss_gen_step *s) {
  json_ctx *jc = user;
  if (!jc->steps) return 0;
  json_t *arr = json_array();
  for (int32_t i = 0; i < s->n_top; i++)
    json_array_append_new(arr, json_pack("{s:i, s:f}", "id", (json_int_t)s->top_ids[i], "logprob",
                                         (double)s->top_logprobs[i]));
  json_array_append_new(jc->steps, arr);
  return 0;
}

int ss_cmd_generate(int argc, char **argv) {
  const char *path = SS_DEFAULT_MODEL, *prompt_arg = NULL, *prompt_file = NULL, *prompt_ids = NULL;
  const char *system_msg = NULL, *tmpl_name = NULL;
  const char *stops[MAX_STOP];
  size_t n_stop = 0;
  bool chat = false, json = false, have_seed = false;
  int bos_mode = -1; /* -1: model default */
  bool act_q8 = false;
  int64_t max_tokens = 128, threads = 0, n_logprobs = 0, seed = 0, ctx = 0, top_k = 40;
  double temp = 0.8, top_p = 0.95, min_p = 0.05;
  enum { O_CHAT = 256, O_SYSTEM, O_TMPL, O_BOS, O_NOBOS, O_TEMP, O_TOPK, O_TOPP, O_MINP, O_SEED,
         O_STOP, O_IGNORE_EOS, O_CTX, O_JSON, O_LOGPROBS, O_IDS, O_TP, O_PP, O_PPL, O_REPL, O_DET, O_CTO, O_CLIVE,
         O_PROFILE, O_EP, O_DEVICE, O_ACT, O_KVT, O_TRACE };
  int kv_dtype = -1;
  int64_t tp = 0, ep = 0, pp = 0;
  const char *pp_layers_arg = NULL, *trace_path = NULL;
  int pp_layers[SS_CLI_MAX_STAGES];
  double comm_timeout = 0, comm_liveness = SS_CLI_COMM_LIVENESS_S;
  bool replicate_vocab = false, deterministic = false, profile = false;
  bool ignore_eos = false;
  ss_cli_device device = SS_CLI_DEVICE_AUTO;
  static const struct option opts[] = {
      {"model", required_argument, 0, 'm'},       {"prompt", required_argument, 0, 'p'},
      {"prompt-file", required_argument, 0, 'f'}, {"chat", no_argument, 0, O_CHAT},
      {"system", required_argument, 0, O_SYSTEM}, {"chat-template", required_argument, 0, O_TMPL},
      {"bos", no_argument, 0, O_BOS},             {"no-bos", no_argument, 0, O_NOBOS},
      {"max-tokens", required_argument, 0, 'n'},  {"temp", required_argument, 0, O_TEMP},
      {"top-k", required_argument, 0, O_TOPK},    {"top-p", required_argument, 0, O_TOPP},
      {"min-p", required_argument, 0, O_MINP},    {"seed", required_argument, 0, O_SEED},
      {"stop", required_argument, 0, O_STOP},     {"ignore-eos", no_argument, 0, O_IGNORE_EOS},
      {"ctx", required_argument, 0, O_CTX},       {"json", no_argument, 0, O_JSON},
      {"logprobs", required_argument, 0, O_LOGPROBS}, {"threads", required_argument, 0, 't'},
      {"prompt-ids", required_argument, 0, O_IDS}, {"help", no_argument, 0, 'h'},
      {"tp", required_argument, 0, O_TP}, {"pp", required_argument, 0, O_PP},
      {"pp-layers", required_argument, 0, O_PPL},          {"replicate-vocab", no_argument, 0, O_REPL},
      {"deterministic-allreduce", no_argument, 0, O_DET},
      {"comm-timeout", required_argument, 0, O_CTO}, {"profile", no_argument, 0, O_PROFILE},
      {"comm-liveness", required_argument, 0, O_CLIVE},
      {"ep", required_argument, 0, O_EP},
      {"device", required_argument, 0, O_DEVICE},
      {"activations", required_argument, 0, O_ACT},
      {"kv-cache-dtype", required_argument, 0, O_KVT},
      {"trace", required_argument, 0, O_TRACE},
      {0, 0, 0, 0},
  };
  optind = 1;
  opterr = 0;
  int c;
  while ((c = getopt_long(argc, argv, ":m:p:f:n:t:h", opts, NULL)) != -1) {
    switch (c) {
    case 'm': path = optarg; break;
    case 'p': prompt_arg = optarg; break;
    case 'f': prompt_file = optarg; break;
    case O_IDS: prompt_ids = optarg; break;
    case O_CHAT: chat = true; break;
    case O_SYSTEM: system_msg = optarg; break;
    case O_TMPL: tmpl_name = optarg; break;
    case O_BOS: bos_mode = 1; break;
    case O_NOBOS: bos_mode = 0; break;
    case 'n':
      if (!ss_cli_parse_int(k_cmd, "--max-tokens", optarg, 0, 1 << 24, &max_tokens))
        return SS_EXIT_USAGE;
      break;
    case O_TEMP:
      if (!ss_cli_parse_float(k_cmd, "--temp", optarg, 0.0, 100.0, &temp)) return SS_EXIT_USAGE;
      break;
    case O_TOPK:
      if (!ss_cli_parse_int(k_cmd, "--top-k", optarg, 0, INT32_MAX, &top_k)) return SS_EXIT_USAGE;
      break;
    case O_TOPP:
      if (!ss_cli_parse_float(k_cmd, "--top-p", optarg, 1e-9, 1.0, &top_p)) return SS_EXIT_USAGE;
      break;
    case O_MINP:
      if (!ss_cli_parse_float(k_cmd, "--min-p", optarg, 0.0, 1.0, &min_p)) return SS_EXIT_USAGE;
      break;
    case O_SEED:
      if (!ss_cli_parse_int(k_cmd, "--seed", optarg, 0, INT64_MAX, &seed)) return SS_EXIT_USAGE;
      have_seed = true;
      break;
    case O_STOP:
      if (n_stop == MAX_STOP) return ss_cli_usage(k_cmd, "at most %d --stop strings", MAX_STOP);
      if (!*optarg) return ss_cli_usage(k_cmd, "--stop needs a non-empty string");
      stops[n_stop++] = optarg;
      break;
    case O_IGNORE_EOS: ignore_eos = true; break;
    case O_CTX:
      if (!ss_cli_parse_int(k_cmd, "--ctx", optarg, 1, 1 << 24, &ctx)) return SS_EXIT_USAGE;
      break;
    case O_JSON: json = true; break;
    case O_LOGPROBS:
      if (!ss_cli_parse_int(k_cmd, "--logprobs", optarg, 0, 1000, &n_logprobs))
        return SS_EXIT_USAGE;
      break;
    case 't':
      if (!ss_cli_parse_int(k_cmd, "--threads", optarg, 1, 1024, &threads)) return SS_EXIT_USAGE;
      break;
    case O_TP:
      if (!ss_cli_parse_int(k_cmd, "--tp", optarg, 1, 4096, &tp)) return SS_EXIT_USAGE;
      break;
    case O_PP:
      if (!ss_cli_parse_int(k_cmd, "--pp", optarg, 1, SS_CLI_MAX_STAGES, &pp)) return SS_EXIT_USAGE;
      break;
    case O_PPL: pp_layers_arg = optarg; break;
    case O_EP:
      if (!ss_cli_parse_int(k_cmd, "--ep", optarg, 1, 4096, &ep)) return SS_EXIT_USAGE;
      break;
    case O_REPL: replicate_vocab = true; break;
    case O_DET: deterministic = true; break;
    case O_CTO:
      if (!ss_cli_parse_float(k_cmd, "--comm-timeout", optarg, 0.0, 1e6, &comm_timeout))
        return SS_EXIT_USAGE;
      break;
    case O_CLIVE:
      if (!ss_cli_parse_float(k_cmd, "--comm-liveness", optarg, 0.0, 1e6, &comm_liveness))
        return SS_EXIT_USAGE;
      if (comm_liveness > 0 && comm_liveness < SS_CLI_COMM_LIVENESS_MIN_S)
        return ss_cli_usage(k_cmd, "--comm-liveness %g: 0 (off) or at least %.0f s (a heartbeat "
                            "goes out every 0.5 s; a shorter timeout would fire on a busy machine)",
                            comm_liveness, SS_CLI_COMM_LIVENESS_MIN_S);
      break;
    case O_PROFILE: profile = true; break;
    case O_TRACE: trace_path = optarg; break;
    case O_DEVICE:
      if (!ss_cli_device_parse(k_cmd, optarg, &device)) return SS_EXIT_USAGE;
      break;
    case O_ACT:
      if (!ss_cli_activations_parse(k_cmd, optarg, &act_q8)) return SS_EXIT_USAGE;
      break;
    case O_KVT:
      if (!ss_cli_kv_dtype_parse(k_cmd, optarg, &kv_dtype)) return SS_EXIT_USAGE;
      break;
    case 'h': usage(stdout); return SS_EXIT_OK;
    case ':': return ss_cli_usage(k_cmd, "option '%s' needs a value", argv[optind - 1]);
    default: return ss_cli_usage(k_cmd, "unknown option '%s'", argv[optind - 1]);
    }
  }
  if (optind < argc) return ss_cli_usage(k_cmd, "unexpected argument '%s'", argv[optind]);
  if ((prompt_arg != NULL) + (prompt_file != NULL) + (prompt_ids != NULL) != 1)
    return ss_cli_usage(k_cmd, "give exactly one of --prompt, --prompt-file and --prompt-ids");
  if (prompt_ids && chat) return ss_cli_usage(k_cmd, "--prompt-ids cannot be used with --chat");
  if (n_logprobs > 0 && !json) return ss_cli_usage(k_cmd, "--logprobs needs --json");
  if (system_msg && !chat) return ss_cli_usage(k_cmd, "--system needs --chat");
  if (tmpl_name && !chat) return ss_cli_usage(k_cmd, "--chat-template needs --chat");
  if (!have_seed) seed = (int64_t)time(NULL);
  if (ep > 1 && tp > 0 && ep != tp)
    return ss_cli_usage(k_cmd, "--ep %lld must equal --tp %lld: experts are spread over the same "
                        "ranks as the attention heads", (long long)ep, (long long)tp);
  if (ep > 1 && tp == 0) tp = ep;

  int rc = ss_cli_device_resolve(k_cmd, &device);
  if (rc) return rc;

  /* The prompt text. */
  char *prompt = NULL;
  size_t prompt_len = 0;
  if (prompt_ids) {
    prompt = strdup(prompt_ids);
    prompt_len = strlen(prompt_ids);
  } else if (prompt_file || strcmp(prompt_arg, "-") == 0) {
    FILE *fp = prompt_file ? fopen(prompt_file, "rb") : stdin;
    if (!fp) return ss_cli_fail(k_cmd, "%s: cannot open the prompt file", prompt_file);
    rc = read_all(fp, prompt_file ? prompt_file : "stdin", &prompt, &prompt_len);
    if (prompt_file) fclose(fp);
    if (rc) return ss_cli_fail(k_cmd, "%s", ss_error_msg());
  } else {
    prompt = strdup(prompt_arg);
    prompt_len = strlen(prompt_arg);
  }

  /* More than one rank: every rank loads its shard; rank 0 alone tokenizes,
   * samples and prints, the others run the steps it sends. */
  ss_comm *comm = NULL;
  ss_ranks_opts ro = {.tp = (int)tp, .deterministic = deterministic, .timeout_s = comm_timeout,
                      .liveness_s = comm_liveness,
                      .gpu = device == SS_CLI_DEVICE_CUDA};
  if ((rc = ss_ranks_pp_opts(k_cmd, pp, pp_layers_arg, pp_layers, &ro)) ||
      (trace_path && (rc = ss_ranks_trace_check(k_cmd, trace_path)))) {
    free(prompt);
    return rc;
  }
  if ((rc = ss_ranks_start(k_cmd, &ro, &comm))) {
    free(prompt);
    return rc;
  }
  const bool worker = comm && comm->rank != 0;
  bool workers_running = false;

  struct timespec ts0, ts1;
  clock_gettime(CLOCK_MONOTONIC, &ts0);
  ss_model *m = NULL;
  ss_backend *be = NULL;
  int32_t *ids = NULL;
  size_t n_ids = 0;
  int exit_code = SS_EXIT_FAIL;
  json_t *out = NULL;
  json_ctx jc = {0};
  ss_gen_result res = {0};
  bool have_res = false;
  rc = trace_path ? ss_ranks_trace_start(k_cmd, comm, worker ? "worker" : "main") : SS_EXIT_OK;
  if (rc == SS_EXIT_OK) rc = ss_cli_load_shard_ep(k_cmd, path, comm, replicate_vocab, ep > 1, &m);
  if (rc == SS_EXIT_OK) rc = ss_cli_backend_create(k_cmd, device, (int)threads, comm, &be);
  if (rc == SS_EXIT_OK) rc = ss_cli_activations_apply(k_cmd, be, act_q8);
  if (rc == SS_EXIT_OK) rc = ss_cli_kv_dtype_resolve(k_cmd, be, kv_dtype, &kv_dtype);
  if (rc == SS_EXIT_OK) rc = ss_cli_model_to_backend(k_cmd, m, be);
  if ((rc = ss_ranks_agree(k_cmd, comm, rc == SS_EXIT_OK))) {
    free(prompt);
    ss_model_free(m); /* before the backend its device weights belong to */
    if (be) be->free(be);
    ss_ranks_end(comm, rc);
    return rc;
  }
  workers_running = comm != NULL;
  if (worker) {
    /* Ranks 1..tp-1: run rank 0's steps until it says stop. */
    free(prompt);
    exit_code = SS_EXIT_OK;
    if (ss_exec_worker_loop(m, be)) exit_code = ss_cli_fail(k_cmd, "%s", ss_error_msg());
    if (exit_code == SS_EXIT_OK && profile) exit_code = ss_ranks_profile(k_cmd, comm, m, 0.0);
    if (exit_code == SS_EXIT_OK && trace_path)
      exit_code = ss_ranks_trace_write(k_cmd, comm, trace_path);
    ss_model_free(m);
    be->free(be);
    ss_ranks_end(comm, exit_code);
    return exit_code;
  }
  clock_gettime(CLOCK_MONOTONIC, &ts1);
  double load_ms = (double)(ts1.tv_sec - ts0.tv_sec) * 1e3 + (double)(ts1.tv_nsec - ts0.tv_nsec) / 1e6;

  /* Tokenize, through the chat template when asked. */
  bool add_bos = bos_mode < 0 ? ss_tokenizer_add_bos(m->tok) : bos_mode == 1;
  if (prompt_ids) {
    rc = parse_ids(prompt, m->cfg.vocab, &ids, &n_ids);
    if (rc) {
      ss_cli_usage(k_cmd, "%s", ss_error_msg());
      exit_code = SS_EXIT_USAGE;
      goto done;
    }
  } else if (chat) {
    ss_chat_template ct;
    if (ss_chat_template_init(&ct, tmpl_name, m->chat_template) ||
        ss_chat_template_set_tokenizer(&ct, m->tok)) {
      ss_cli_fail(k_cmd, "%s", ss_error_msg());
      goto done;
    }
    ss_chat_msg msgs[2];
    size_t nm = 0;
    if (system_msg) msgs[nm++] = (ss_chat_msg){"system", system_msg};
    msgs[nm++] = (ss_chat_msg){"user", prompt};
    char *rendered;
    rc = ss_chat_render(&ct, msgs, nm, true, &rendered);
    ss_chat_template_free(&ct);
    if (rc) {
      ss_cli_fail(k_cmd, "%s", ss_error_msg());
      goto done;
    }
    rc = ss_chat_tokenize(m->tok, rendered, add_bos, &ids, &n_ids);
    free(rendered);
  } else {
    rc = ss_tokenizer_encode(m->tok, prompt, prompt_len, add_bos, false, &ids, &n_ids);
  }
  if (rc) {
    ss_cli_fail(k_cmd, "%s", ss_error_msg());
    goto done;
  }
  if (n_ids == 0) {
    ss_cli_usage(k_cmd, "the prompt is empty: it gives no tokens");
    exit_code = SS_EXIT_USAGE;
    goto done;
  }

  ss_gen_params gp = {
      .max_tokens = (int32_t)max_tokens,
      .sampling = {.temperature = (float)temp, .top_k = (int32_t)top_k, .top_p = (float)top_p,
                   .min_p = (float)min_p, .seed = (uint64_t)seed},
      .ignore_eos = ignore_eos,
      .stop = stops,
      .n_stop = n_stop,
      .n_top_logprobs = (int32_t)n_logprobs,
      .n_ctx = (int32_t)ctx,
      .kv_dtype = (ss_dtype)kv_dtype,
  };
  stream_ctx sc = {.json = json};
  if (json && n_logprobs > 0) jc.steps = json_array();
  rc = ss_generate(m, be, ids, (int32_t)n_ids, &gp, json ? on_step_json : on_step,
                   json ? (void *)&jc : (void *)&sc, &res);
  /* After a failed collective the communicator is unusable: nothing to tell the
   * workers (they have seen the same failure). */
  if (rc == SS_ERR_COMM) workers_running = false;
  if (rc) {
    if (rc == SS_ERR_RANGE || rc == SS_ERR_INVALID) {
      ss_cli_usage(k_cmd, "%s", ss_error_msg());
      exit_code = SS_EXIT_USAGE;
    } else {
      ss_cli_fail(k_cmd, "%s", ss_error_msg());
    }
    goto done;
  }
  have_res = true;
  if (json) {
    json_t *pt = json_array(), *gt = json_array();
    for (size_t i = 0; i < n_ids; i++) json_array_append_new(pt, json_integer(ids[i]));
    for (int32_t i = 0; i < res.n_generated; i++) json_array_append_new(gt, json_integer(res.tokens[i]));
    out = json_pack("{s:o, s:o, s:s%, s:s, s:I}", "prompt_tokens", pt, "tokens", gt, "text",
                    res.text, res.text_len, "finish_reason", res.finish_reason, "seed",
                    (json_int_t)seed);
    if (jc.steps) {
      json_object_set_new(out, "top_logprobs", jc.steps);
      jc.steps = NULL;
    }
    char *s = out ? json_dumps(out, JSON_COMPACT | JSON_ENSURE_ASCII) : NULL;
    if (!s) {
      ss_cli_fail(k_cmd, "cannot encode the result as JSON");
      goto done;
    }
    puts(s);
    free(s);
  } else {
    putchar('\n');
  }
  fflush(stdout);
  fprintf(stderr,
          "[stats] prompt tokens %zu, generated %d (%s), load %.0f ms, prefill %.1f tok/s "
          "(%.1f ms), decode %.1f tok/s (%d steps, %.1f ms), threads %d, tp %d, pp %d, seed %" PRId64
          ", device %s%s%s\n",
          n_ids, res.n_generated, res.finish_reason, load_ms,
          res.prefill_ms > 0 ? (double)n_ids / (res.prefill_ms / 1e3) : 0.0, res.prefill_ms,
          res.decode_ms > 0 ? (double)res.n_decode_steps / (res.decode_ms / 1e3) : 0.0,
          res.n_decode_steps, res.decode_ms, be->n_threads(be), m->local.tp > 0 ? m->local.tp : 1,
          m->local.pp > 0 ? m->local.pp : 1, seed,
          be->name, be->variant ? ", kernels " : "", be->variant ? be->variant : "");
  exit_code = SS_EXIT_OK;
done:
  if (workers_running) {
    /* The workers wait for the next step: tell them to finish (also after a bad
     * prompt or flag), then collect the profile. */
    if (ss_exec_stop_workers(m)) {
      ss_cli_fail(k_cmd, "%s", ss_error_msg());
      exit_code = SS_EXIT_FAIL;
    } else {
      if (profile) {
        int prc = ss_ranks_profile(k_cmd, comm, m, (res.prefill_ms + res.decode_ms) / 1e3);
        if (exit_code == SS_EXIT_OK) exit_code = prc;
      }
      /* The workers stopped cleanly and join the gather whatever rank 0's
       * result (after a bad prompt too: the trace shows what ran). */
      if (trace_path) {
        int trc = ss_ranks_trace_write(k_cmd, comm, trace_path);
        if (exit_code == SS_EXIT_OK) exit_code = trc;
      }
    }
  } else {
    if (profile && exit_code == SS_EXIT_OK)
      exit_code = ss_ranks_profile(k_cmd, NULL, m, (res.prefill_ms + res.decode_ms) / 1e3);
    if (trace_path && !comm && exit_code == SS_EXIT_OK)
      exit_code = ss_ranks_trace_write(k_cmd, NULL, trace_path);
  }
  if (have_res) ss_gen_result_free(&res);
  json_decref(out);
  json_decref(jc.steps);
  free(ids);
  free(prompt);
  ss_model_free(m);
  if (be) be->free(be);
  /* A usage error found on rank 0 after the workers stopped cleanly is not a
   * failure of the job's ranks: finalise normally. */
  ss_ranks_end(comm, exit_code == SS_EXIT_USAGE ? SS_EXIT_OK : exit_code);
  return exit_code;
}
