/* shardserve loadgen's flags: --help text and the parser into
 * ss_loadgen_opts (launcher/loadgen_opts.h). */
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "launcher/cli.h"
#include "launcher/loadgen_opts.h"
#include "runtime/base/status.h"

static const char *k_cmd = "loadgen";

void ss_loadgen_usage(FILE *f) {
  fprintf(f,
"Usage: shardserve loadgen --url http://HOST:PORT [options]\n"
"\n"
"Load-tests an OpenAI-compatible server (shardserve serve, vLLM, ...): sends\n"
"streamed completion requests on a schedule, times every streamed chunk and\n"
"prints TTFT, TPOT, ITL and end-to-end latency (mean, median, std, p50/90/95/99),\n"
"throughput and goodput.  Flag names follow 'vllm bench serve'.\n"
"\n"
"Target:\n"
"  --url URL                 server base URL, e.g. http://127.0.0.1:8000 (alias --base-url)\n"
"  --endpoint PATH           /v1/completions (default) or /v1/chat/completions\n"
"  --model NAME              model name to request (default: the first of GET /v1/models)\n"
"  --api-key KEY             sent as 'Authorization: Bearer KEY' (default: $OPENAI_API_KEY)\n"
"  --request-timeout S       give up on a request after S seconds (default 600, 0 = never)\n"
"\n"
"Arrivals:\n"
"  --request-rate R          open loop: R requests/s on average (default inf: all at once,\n"
"                            limited only by --max-concurrency)\n"
"  --burstiness B            gaps are Gamma(shape B, mean 1/R): 1 = Poisson (default),\n"
"                            < 1 burstier, > 1 smoother, inf = constant gaps\n"
"  --max-concurrency C       at most C requests in flight; with the default rate this is a\n"
"                            closed loop of C users\n"
"  --num-prompts N           requests to send (default 1000)\n"
"  --duration S              send for S seconds instead (open loop: the schedule ends at S;\n"
"                            closed loop: keep C requests in flight until S); prompts cycle\n"
"                            through the --num-prompts of the dataset\n"
"  --ramp-up-strategy K      linear or exponential: the rate moves from --ramp-up-start-rps\n"
"                            to --ramp-up-end-rps over the run (instead of --request-rate)\n"
"  --ramp-up-start-rps R, --ramp-up-end-rps R\n"
"  --seed S                  seed of the schedule and the random dataset (default 0)\n"
"  --sweep-rates LIST        run once per rate, e.g. 1,2,4,8; prints a table and writes\n"
"                            PREFIX.tsv, PREFIX.gp and a plot of latency percentiles and\n"
"                            goodput against offered load\n"
"  --sweep-output PREFIX     file prefix for the sweep (default loadgen-sweep)\n"
"  --plot-format F           png (default) or svg; the plot is drawn by gnuplot\n"
"\n"
"Workload:\n"
"  --dataset-name D          random (default), fixed, jsonl, sharegpt, prefix_repetition,\n"
"                            trace or multi_turn\n"
"  --dataset-path FILE       the jsonl, sharegpt or trace file\n"
"                            jsonl: one {\"prompt\": \"text\" or [ids], \"output_len\": N} per line\n"
"                            sharegpt: [{\"conversations\": [{\"from\": \"human\", \"value\": ...},\n"
"                            {\"from\": \"gpt\", \"value\": ...}]}, ...]\n"
"  --random-input-len N      prompt tokens (default 1024)\n"
"  --random-output-len N     tokens to generate (default 128; also for fixed)\n"
"  --random-range-ratio R    lengths uniform in [N(1-R), N(1+R)], 0 <= R < 1 (default 0)\n"
"  --prompt-format F         ids: prompts as token-id arrays (exact lengths; completions\n"
"                            endpoint only); text: words joined by spaces (exact with\n"
"                            --tokenizer-model, else about one token per word).  Default:\n"
"                            ids with --vocab-size or --tokenizer-model on /v1/completions,\n"
"                            text otherwise\n"
"  --vocab-size V            draw prompt ids uniformly from [0, V)\n"
"  --tokenizer-model GGUF    take the vocabulary (normal tokens only) and exact counts from\n"
"                            this model's tokenizer (vocab-only GGUF files work)\n"
"  --prompt TEXT             the prompt of --dataset-name fixed (default: a random prompt\n"
"                            of --random-input-len tokens, the same for every request)\n"
"  --sharegpt-output-len N   output length for every sharegpt prompt (default: the reply's\n"
"                            length: tokens with --tokenizer-model, else bytes / 4)\n"
"  --prefix-repetition-prefix-len P, --prefix-repetition-suffix-len S,\n"
"  --prefix-repetition-num-prefixes N, --prefix-repetition-output-len K\n"
"                            prefix_repetition: N distinct prefixes of P tokens (default\n"
"                            256), each shared by --num-prompts / N requests that each add\n"
"                            a unique suffix of S tokens (default 256) and ask for K tokens\n"
"                            (default 128); N defaults to 10; the order interleaves the\n"
"                            prefixes (seeded by --seed)\n"
"  --trace-time-scale X      trace: a Mooncake JSONL trace ({\"timestamp\": ms,\n"
"                            \"input_length\": N, \"output_length\": K, \"hash_ids\": [...]}),\n"
"                            replayed at its timestamps times X (default 1; 0 = all at\n"
"                            once); equal hash ids get identical blocks of text\n"
"  --trace-block-size B      tokens per hash id (default 512, as Mooncake's traces)\n"
"  --multi-turn-num-sessions S, --multi-turn-turns T, --multi-turn-user-len U,\n"
"  --multi-turn-output-len K, --multi-turn-think-time X\n"
"                            multi_turn: S conversations (default 16, at most %d) of T\n"
"                            turns (default 4, at most %d); each turn adds a user message\n"
"                            of U tokens of random words (default 64; seeded by --seed,\n"
"                            exact with --tokenizer-model), asks for K tokens (default\n"
"                            64) and resends the whole conversation: chat messages [user,\n"
"                            assistant, ..., user] with the replies as streamed, or on\n"
"                            /v1/completions those texts joined by a blank line (\"\\n\\n\").\n"
"                            A session's next turn goes X seconds (default 0) after its\n"
"                            reply; sessions start on the --request-rate schedule (inf:\n"
"                            all at once) and --max-concurrency caps turns in flight.  A\n"
"                            failed turn ends its session.  The summary adds p50 TTFT per\n"
"                            turn; the result file per-request sessions (from 0), turns\n"
"                            (from 1) and cached_tokens\n"
"  --temperature T           sampling temperature sent (default 0)\n"
"  --no-ignore-eos           do not send \"ignore_eos\": true (needed by servers that reject\n"
"                            it; outputs may then end before max_tokens)\n"
"  --no-stream-usage         do not ask for usage (stream_options.include_usage); output\n"
"                            tokens are then counted as streamed chunks\n"
"  --extra-body JSON         an object merged into every request body\n"
"\n"
"Output:\n"
"  --goodput KEY:MS ...      SLOs for goodput (requests/s meeting all of them); KEY is\n"
"                            ttft, tpot or e2el, e.g. --goodput ttft:500 tpot:50\n"
"  --save-result FILE        write the result JSON (vLLM's field names: duration, completed,\n"
"                            failed, request_throughput, mean_ttft_ms, ..., ttfts, itls,\n"
"                            input_lens, output_lens, errors); with --sweep-rates one file\n"
"                            per rate, FILE with -rate<R> before its extension\n"
"  --label TEXT              label stored in the result file\n"
"  --no-progress             no progress bar on stderr (alias --disable-tqdm; the bar is\n"
"                            drawn only when stderr is a terminal anyway)\n"
"  -h, --help                show this help\n"
"\n"
"Token counts come from the server's final usage report when it sends one, else from\n"
"the number of streamed chunks (the summary says which).  A request fails when the\n"
"connection fails, the status is not 2xx, the stream carries an error or ends before\n"
"'data: [DONE]'; failures are counted and the run goes on.\n"
"\n"
"Exit status: 0 the run completed (some requests may have failed), 1 the server is\n"
"unreachable, a dataset is malformed or every request failed, 2 bad flags.\n",
          SS_LG_MAX_SESSIONS, SS_LG_MAX_TURNS);
}


/* A number or "inf" in [lo, inf]. */
static bool parse_rate(const char *flag, const char *s, double lo, double *out) {
  if (strcasecmp(s, "inf") == 0 || strcasecmp(s, "infinity") == 0) {
    *out = INFINITY;
    return true;
  }
  char *end;
  double v = strtod(s, &end);
  if (end == s || *end || !isfinite(v) || v <= lo) {
    ss_cli_usage(k_cmd, "invalid value '%s' for %s: expected a number > %g or 'inf'", s, flag, lo);
    return false;
  }
  *out = v;
  return true;
}

static bool parse_goodput(const char *s, ss_lg_slo *slo) {
  char buf[256];
  if (strlen(s) >= sizeof buf) return ss_cli_usage(k_cmd, "--goodput value too long"), false;
  strcpy(buf, s);
  for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
    char *colon = strchr(tok, ':'), *end;
    double v = colon ? strtod(colon + 1, &end) : 0;
    if (!colon || end == colon + 1 || *end || !isfinite(v) || v < 0) {
      ss_cli_usage(k_cmd, "invalid --goodput item '%s': expected KEY:MILLISECONDS with KEY one "
                   "of ttft, tpot, e2el and a value >= 0", tok);
      return false;
    }
    *colon = '\0';
    if (strcmp(tok, "ttft") == 0) slo->ttft_ms = v;
    else if (strcmp(tok, "tpot") == 0) slo->tpot_ms = v;
    else if (strcmp(tok, "e2el") == 0) slo->e2el_ms = v;
    else {
      ss_cli_usage(k_cmd, "invalid --goodput metric '%s': expected ttft, tpot or e2el", tok);
      return false;
    }
  }
  return true;
}

static bool parse_sweep(const char *s, ss_loadgen_opts *o) {
  char buf[1024];
  if (strlen(s) >= sizeof buf) return ss_cli_usage(k_cmd, "--sweep-rates list too long"), false;
  strcpy(buf, s);
  o->sweep_count = 0;
  for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
    if (o->sweep_count == SS_LOADGEN_MAX_SWEEP)
      return ss_cli_usage(k_cmd, "--sweep-rates: at most %d rates", SS_LOADGEN_MAX_SWEEP), false;
    if (!parse_rate("--sweep-rates", tok, 0, &o->sweep[o->sweep_count])) return false;
    o->sweep_count++;
  }
  if (!o->sweep_count) return ss_cli_usage(k_cmd, "--sweep-rates needs at least one rate"), false;
  return true;
}

enum {
  O_URL = 256, O_ENDPOINT, O_MODEL, O_API_KEY, O_TIMEOUT, O_RATE, O_BURST, O_MAXC, O_NUM,
  O_DURATION, O_RAMP, O_RAMP_START, O_RAMP_END, O_SEED, O_SWEEP, O_SWEEP_OUT, O_PLOT_FMT,
  O_DATASET, O_DATASET_PATH, O_IN_LEN, O_OUT_LEN, O_RANGE, O_PROMPT_FMT, O_VOCAB, O_TOKMODEL,
  O_PROMPT, O_SHAREGPT_OUT, O_TEMP, O_NO_EOS, O_NO_USAGE, O_EXTRA, O_GOODPUT, O_SAVE, O_LABEL,
  O_NO_PROGRESS, O_PR_PREFIX, O_PR_SUFFIX, O_PR_NUM, O_PR_OUT, O_TRACE_SCALE, O_TRACE_BLOCK,
  O_MT_SESSIONS, O_MT_TURNS, O_MT_USER, O_MT_OUT, O_MT_THINK,
};

/* Returns -1 on success, else the exit status. */
int ss_loadgen_parse(int argc, char **argv, ss_loadgen_opts *o) {
  *o = (ss_loadgen_opts){
      .endpoint = "/v1/completions", .request_timeout_s = 600, .rate = INFINITY,
      .burstiness = 1.0, .num_prompts = 1000, .sweep_output = "loadgen-sweep",
      .plot_format = "png", .dataset = "random", .input_len = 1024, .output_len = 128,
      .prompt_format = -1, .ignore_eos = true, .stream_usage = true,
      .progress = isatty(2), .slo = {-1, -1, -1}, .prefix_len = 256, .suffix_len = 256,
      .num_prefixes = 10, .prefix_output_len = 128, .trace_time_scale = 1.0,
      .trace_block_size = 512, .mt_sessions = 16, .mt_turns = 4, .mt_user_len = 64,
      .mt_output_len = 64,
  };
  static const struct option lo[] = {
      {"url", required_argument, 0, O_URL}, {"base-url", required_argument, 0, O_URL},
      {"endpoint", required_argument, 0, O_ENDPOINT}, {"model", required_argument, 0, O_MODEL},
      {"api-key", required_argument, 0, O_API_KEY},
      {"request-timeout", required_argument, 0, O_TIMEOUT},
      {"request-rate", required_argument, 0, O_RATE},
      {"burstiness", required_argument, 0, O_BURST},
      {"max-concurrency", required_argument, 0, O_MAXC},
      {"num-prompts", required_argument, 0, O_NUM},
      {"duration", required_argument, 0, O_DURATION},
      {"ramp-up-strategy", required_argument, 0, O_RAMP},
      {"ramp-up-start-rps", required_argument, 0, O_RAMP_START},
      {"ramp-up-end-rps", required_argument, 0, O_RAMP_END},
      {"seed", required_argument, 0, O_SEED}, {"sweep-rates", required_argument, 0, O_SWEEP},
      {"sweep-output", required_argument, 0, O_SWEEP_OUT},
      {"plot-format", required_argument, 0, O_PLOT_FMT},
      {"dataset-name", required_argument, 0, O_DATASET},
      {"dataset-path", required_argument, 0, O_DATASET_PATH},
      {"random-input-len", required_argument, 0, O_IN_LEN},
      {"random-output-len", required_argument, 0, O_OUT_LEN},
      {"random-range-ratio", required_argument, 0, O_RANGE},
      {"prompt-format", required_argument, 0, O_PROMPT_FMT},
      {"vocab-size", required_argument, 0, O_VOCAB},
      {"tokenizer-model", required_argument, 0, O_TOKMODEL},
      {"prompt", required_argument, 0, O_PROMPT},
      {"sharegpt-output-len", required_argument, 0, O_SHAREGPT_OUT},
      {"temperature", required_argument, 0, O_TEMP}, {"no-ignore-eos", no_argument, 0, O_NO_EOS},
      {"no-stream-usage", no_argument, 0, O_NO_USAGE},
      {"extra-body", required_argument, 0, O_EXTRA}, {"goodput", required_argument, 0, O_GOODPUT},
      {"save-result", required_argument, 0, O_SAVE}, {"label", required_argument, 0, O_LABEL},
      {"no-progress", no_argument, 0, O_NO_PROGRESS},
      {"prefix-repetition-prefix-len", required_argument, 0, O_PR_PREFIX},
      {"prefix-repetition-suffix-len", required_argument, 0, O_PR_SUFFIX},
      {"prefix-repetition-num-prefixes", required_argument, 0, O_PR_NUM},
      {"prefix-repetition-output-len", required_argument, 0, O_PR_OUT},
      {"trace-time-scale", required_argument, 0, O_TRACE_SCALE},
      {"trace-block-size", required_argument, 0, O_TRACE_BLOCK},
      {"multi-turn-num-sessions", required_argument, 0, O_MT_SESSIONS},
      {"multi-turn-turns", required_argument, 0, O_MT_TURNS},
      {"multi-turn-user-len", required_argument, 0, O_MT_USER},
      {"multi-turn-output-len", required_argument, 0, O_MT_OUT},
      {"multi-turn-think-time", required_argument, 0, O_MT_THINK},
      {"disable-tqdm", no_argument, 0, O_NO_PROGRESS}, {"help", no_argument, 0, 'h'},
      {0, 0, 0, 0},
  };
  optind = 1;
  opterr = 0;
  int c;
  int64_t v;
  /* '+': stop at the first non-option, so the extra words of --goodput
   * (vLLM's "--goodput ttft:500 tpot:50") can be taken here. */
  while ((c = getopt_long(argc, argv, "+:h", lo, NULL)) != -1) {
    switch (c) {
    case O_URL: o->url = optarg; break;
    case O_ENDPOINT: o->endpoint = optarg; break;
    case O_MODEL: o->model = optarg; break;
    case O_API_KEY: o->api_key = optarg; break;
    case O_TIMEOUT:
      if (!ss_cli_parse_float(k_cmd, "--request-timeout", optarg, 0, 1e7, &o->request_timeout_s))
        return SS_EXIT_USAGE;
      break;
    case O_RATE: if (!parse_rate("--request-rate", optarg, 0, &o->rate)) return SS_EXIT_USAGE; break;
    case O_BURST: if (!parse_rate("--burstiness", optarg, 0, &o->burstiness)) return SS_EXIT_USAGE; break;
    case O_MAXC:
      if (!ss_cli_parse_int(k_cmd, "--max-concurrency", optarg, 1, 1000000, &o->max_concurrency))
        return SS_EXIT_USAGE;
      break;
    case O_NUM:
      if (!ss_cli_parse_int(k_cmd, "--num-prompts", optarg, 1, (int64_t)SS_ARRIVALS_MAX_COUNT,
                            &o->num_prompts))
        return SS_EXIT_USAGE;
      o->num_prompts_set = true;
      break;
    case O_DURATION:
      if (!ss_cli_parse_float(k_cmd, "--duration", optarg, 1e-3, 1e7, &o->duration_s))
        return SS_EXIT_USAGE;
      break;
    case O_RAMP:
      if (strcmp(optarg, "linear") == 0) o->ramp = SS_RAMP_LINEAR;
      else if (strcmp(optarg, "exponential") == 0) o->ramp = SS_RAMP_EXPONENTIAL;
      else return ss_cli_usage(k_cmd, "invalid --ramp-up-strategy '%s': expected linear or exponential", optarg);
      break;
    case O_RAMP_START:
      if (!parse_rate("--ramp-up-start-rps", optarg, 0, &o->ramp_start) || isinf(o->ramp_start))
        return isinf(o->ramp_start) ? ss_cli_usage(k_cmd, "--ramp-up-start-rps must be finite") : SS_EXIT_USAGE;
      break;
    case O_RAMP_END:
      if (!parse_rate("--ramp-up-end-rps", optarg, 0, &o->ramp_end) || isinf(o->ramp_end))
        return isinf(o->ramp_end) ? ss_cli_usage(k_cmd, "--ramp-up-end-rps must be finite") : SS_EXIT_USAGE;
      break;
    case O_SEED:
      if (!ss_cli_parse_int(k_cmd, "--seed", optarg, 0, INT64_MAX, &v)) return SS_EXIT_USAGE;
      o->seed = (uint64_t)v;
      break;
    case O_SWEEP: if (!parse_sweep(optarg, o)) return SS_EXIT_USAGE; break;
    case O_SWEEP_OUT: o->sweep_output = optarg; break;
    case O_PLOT_FMT:
      if (strcmp(optarg, "png") && strcmp(optarg, "svg"))
        return ss_cli_usage(k_cmd, "invalid --plot-format '%s': expected png or svg", optarg);
      o->plot_format = optarg;
      break;
    case O_DATASET:
      if (strcmp(optarg, "random") && strcmp(optarg, "fixed") && strcmp(optarg, "jsonl") &&
          strcmp(optarg, "sharegpt") && strcmp(optarg, "prefix_repetition") &&
          strcmp(optarg, "trace") && strcmp(optarg, "multi_turn"))
        return ss_cli_usage(k_cmd, "invalid --dataset-name '%s': expected random, fixed, jsonl, "
                            "sharegpt, prefix_repetition, trace or multi_turn", optarg);
      o->dataset = optarg;
      break;
    case O_DATASET_PATH: o->dataset_path = optarg; break;
    case O_IN_LEN:
      if (!ss_cli_parse_int(k_cmd, "--random-input-len", optarg, 1, SS_LG_MAX_LEN, &o->input_len))
        return SS_EXIT_USAGE;
      break;
    case O_OUT_LEN:
      if (!ss_cli_parse_int(k_cmd, "--random-output-len", optarg, 1, SS_LG_MAX_LEN, &o->output_len))
        return SS_EXIT_USAGE;
      break;
    case O_RANGE:
      if (!ss_cli_parse_float(k_cmd, "--random-range-ratio", optarg, 0, 0.999999, &o->range_ratio))
        return SS_EXIT_USAGE;
      break;
    case O_PROMPT_FMT:
      if (strcmp(optarg, "ids") == 0) o->prompt_format = 1;
      else if (strcmp(optarg, "text") == 0) o->prompt_format = 0;
      else return ss_cli_usage(k_cmd, "invalid --prompt-format '%s': expected ids or text", optarg);
      break;
    case O_VOCAB:
      if (!ss_cli_parse_int(k_cmd, "--vocab-size", optarg, 1, INT32_MAX, &o->vocab_size))
        return SS_EXIT_USAGE;
      break;
    case O_TOKMODEL: o->tokenizer_model = optarg; break;
    case O_PROMPT: o->prompt = optarg; break;
    case O_SHAREGPT_OUT:
      if (!ss_cli_parse_int(k_cmd, "--sharegpt-output-len", optarg, 1, SS_LG_MAX_LEN,
                            &o->sharegpt_output_len))
        return SS_EXIT_USAGE;
      break;
    case O_TEMP:
      if (!ss_cli_parse_float(k_cmd, "--temperature", optarg, 0, 100, &o->temperature))
        return SS_EXIT_USAGE;
      break;
    case O_NO_EOS: o->ignore_eos = false; break;
    case O_NO_USAGE: o->stream_usage = false; break;
    case O_EXTRA: o->extra_body = optarg; break;
    case O_GOODPUT:
      if (!parse_goodput(optarg, &o->slo)) return SS_EXIT_USAGE;
      while (optind < argc && argv[optind][0] != '-')
        if (!parse_goodput(argv[optind++], &o->slo)) return SS_EXIT_USAGE;
      break;
    case O_SAVE: o->save_result = optarg; break;
    case O_LABEL: o->label = optarg; break;
    case O_NO_PROGRESS: o->progress = false; break;
    case O_PR_PREFIX:
      if (!ss_cli_parse_int(k_cmd, "--prefix-repetition-prefix-len", optarg, 1, SS_LG_MAX_LEN / 2,
                            &o->prefix_len))
        return SS_EXIT_USAGE;
      break;
    case O_PR_SUFFIX:
      if (!ss_cli_parse_int(k_cmd, "--prefix-repetition-suffix-len", optarg, 1, SS_LG_MAX_LEN / 2,
                            &o->suffix_len))
        return SS_EXIT_USAGE;
      break;
    case O_PR_NUM:
      if (!ss_cli_parse_int(k_cmd, "--prefix-repetition-num-prefixes", optarg, 1,
                            SS_LG_MAX_PREFIXES, &o->num_prefixes))
        return SS_EXIT_USAGE;
      break;
    case O_PR_OUT:
      if (!ss_cli_parse_int(k_cmd, "--prefix-repetition-output-len", optarg, 1, SS_LG_MAX_LEN,
                            &o->prefix_output_len))
        return SS_EXIT_USAGE;
      break;
    case O_TRACE_SCALE:
      if (!ss_cli_parse_float(k_cmd, "--trace-time-scale", optarg, 0, 1e6, &o->trace_time_scale))
        return SS_EXIT_USAGE;
      break;
    case O_TRACE_BLOCK:
      if (!ss_cli_parse_int(k_cmd, "--trace-block-size", optarg, 1, SS_LG_MAX_BLOCK,
                            &o->trace_block_size))
        return SS_EXIT_USAGE;
      break;
    case O_MT_SESSIONS:
      if (!ss_cli_parse_int(k_cmd, "--multi-turn-num-sessions", optarg, 1, SS_LG_MAX_SESSIONS,
                            &o->mt_sessions))
        return SS_EXIT_USAGE;
      break;
    case O_MT_TURNS:
      if (!ss_cli_parse_int(k_cmd, "--multi-turn-turns", optarg, 1, SS_LG_MAX_TURNS, &o->mt_turns))
        return SS_EXIT_USAGE;
      break;
    case O_MT_USER:
      if (!ss_cli_parse_int(k_cmd, "--multi-turn-user-len", optarg, 1, SS_LG_MAX_LEN,
                            &o->mt_user_len))
        return SS_EXIT_USAGE;
      break;
    case O_MT_OUT:
      if (!ss_cli_parse_int(k_cmd, "--multi-turn-output-len", optarg, 1, SS_LG_MAX_LEN,
                            &o->mt_output_len))
        return SS_EXIT_USAGE;
      break;
    case O_MT_THINK:
      if (!ss_cli_parse_float(k_cmd, "--multi-turn-think-time", optarg, 0, 86400, &o->mt_think_s))
        return SS_EXIT_USAGE;
      break;
    case 'h': ss_loadgen_usage(stdout); return SS_EXIT_OK;
    case ':': return ss_cli_usage(k_cmd, "option '%s' needs a value", argv[optind - 1]);
    default: return ss_cli_usage(k_cmd, "unknown option '%s'", argv[optind - 1]);
    }
  }
  if (optind < argc) return ss_cli_usage(k_cmd, "unexpected argument '%s'", argv[optind]);
  if (!o->url) return ss_cli_usage(k_cmd, "--url is required (e.g. --url http://127.0.0.1:8000)");
  if (strncmp(o->url, "http://", 7) && strncmp(o->url, "https://", 8))
    return ss_cli_usage(k_cmd, "--url '%s' must start with http:// or https://", o->url);
  if (o->endpoint[0] != '/')
    return ss_cli_usage(k_cmd, "--endpoint '%s' must start with '/'", o->endpoint);
  bool chat = strstr(o->endpoint, "chat/completions") != NULL;
  if (o->prompt_format == 1 && chat)
    return ss_cli_usage(k_cmd, "--prompt-format ids needs a completions endpoint (chat "
                        "messages are text)");
  if (o->prompt_format == 1 && !o->vocab_size && !o->tokenizer_model)
    return ss_cli_usage(k_cmd, "--prompt-format ids needs --vocab-size or --tokenizer-model");
  bool trace = strcmp(o->dataset, "trace") == 0;
  bool file_ds = strcmp(o->dataset, "jsonl") == 0 || strcmp(o->dataset, "sharegpt") == 0 || trace;
  if (file_ds && !o->dataset_path)
    return ss_cli_usage(k_cmd, "--dataset-name %s needs --dataset-path FILE", o->dataset);
  if (!file_ds && o->dataset_path)
    return ss_cli_usage(k_cmd, "--dataset-path is for the jsonl, sharegpt and trace datasets");
  if (trace && (isfinite(o->rate) || o->sweep_count || o->ramp != SS_RAMP_NONE || o->duration_s > 0))
    return ss_cli_usage(k_cmd, "--dataset-name trace sends at the trace's timestamps: it takes "
                        "no --request-rate, --sweep-rates, --ramp-up-strategy or --duration "
                        "(use --trace-time-scale)");
  if (strcmp(o->dataset, "multi_turn") == 0) {
    if (o->duration_s > 0)
      return ss_cli_usage(k_cmd, "--dataset-name multi_turn runs every turn of every session: "
                          "it takes no --duration");
    if (o->num_prompts_set)
      return ss_cli_usage(k_cmd, "--dataset-name multi_turn takes --multi-turn-num-sessions and "
                          "--multi-turn-turns, not --num-prompts");
    if (o->prompt_format == 1)
      return ss_cli_usage(k_cmd, "--dataset-name multi_turn resends replies as text: it takes "
                          "no --prompt-format ids");
  }
  if (strcmp(o->dataset, "prefix_repetition") == 0 && o->num_prompts < o->num_prefixes)
    return ss_cli_usage(k_cmd, "--num-prompts %lld is below --prefix-repetition-num-prefixes "
                        "%lld: every prefix needs at least one request",
                        (long long)o->num_prompts, (long long)o->num_prefixes);
  if (o->ramp != SS_RAMP_NONE && !(o->ramp_start > 0 && o->ramp_end > 0))
    return ss_cli_usage(k_cmd, "--ramp-up-strategy needs --ramp-up-start-rps and --ramp-up-end-rps");
  if (o->ramp != SS_RAMP_NONE && (isfinite(o->rate) || o->sweep_count))
    return ss_cli_usage(k_cmd, "--ramp-up-strategy replaces --request-rate and --sweep-rates");
  if (o->ramp == SS_RAMP_NONE && (o->ramp_start > 0 || o->ramp_end > 0))
    return ss_cli_usage(k_cmd, "--ramp-up-start-rps/--ramp-up-end-rps need --ramp-up-strategy");
  if (o->duration_s > 0 && isinf(o->rate) && o->ramp == SS_RAMP_NONE && !o->sweep_count &&
      !o->max_concurrency)
    return ss_cli_usage(k_cmd, "--duration with an infinite rate needs --max-concurrency (a "
                        "closed loop) or a --request-rate");
  return -1;
}

