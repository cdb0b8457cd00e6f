/* shardserve: the command-line entry point.  Dispatches to one subcommand. */
#include <stdio.h>
#include <string.h>

#include "launcher/cli.h"

#ifdef SS_NO_SERVER
/* A build without libuv, http_parser and libcurl (CMake's SS_SERVER). */
static int no_server(const char *cmd) {
  fprintf(stderr, "shardserve %s: error: built without the server (this build found no libuv, "
          "http_parser or libcurl, or was configured with -DSS_SERVER=OFF); rebuild with them "
          "to use '%s'\n", cmd, cmd);
  return SS_EXIT_FAIL;
}
int ss_cmd_serve(int argc, char **argv) {
  (void)argc, (void)argv;
  return no_server("serve");
}
int ss_cmd_loadgen(int argc, char **argv) {
  (void)argc, (void)argv;
  return no_server("loadgen");
}
#endif

typedef struct command {
  const char *name;
  int (*run)(int argc, char **argv);
  const char *summary;
} command;

static const command k_commands[] = {
    {"generate", ss_cmd_generate, "generate text from a prompt (any number of ranks under MPI)"},
    {"launch", ss_cmd_launch, "start a command on N ranks: builds, prints and runs the mpirun line"},
    {"plan", ss_cmd_plan, "print how a model splits over tensor-parallel ranks"},
    {"profile", ss_cmd_profile, "measure this machine for the capacity planner"},
    {"serve", ss_cmd_serve, "serve the model behind an OpenAI-compatible HTTP API"},
    {"info", ss_cmd_info, "print a model's architecture, tokenizer and tensor table"},
    {"tokenize", ss_cmd_tokenize, "print the token ids of UTF-8 text read from stdin"},
    {"template", ss_cmd_template, "render a chat template over JSON messages read from stdin"},
    {"loadgen", ss_cmd_loadgen, "load-test an OpenAI-compatible server: latency, throughput, goodput"},
    {"synth", ss_cmd_synth, "write a random-weight model of any shape (GGUF or safetensors)"},
};
#define N_COMMANDS (sizeof k_commands / sizeof k_commands[0])

static void usage(FILE *f) {
  fprintf(f,
          "shardserve: tensor-parallel LLM inference runtime\n"
          "\n"
          "Usage: shardserve <command> [options]\n"
          "       shardserve <command> --help\n"
          "\n"
          "Commands:\n");
  for (size_t i = 0; i < N_COMMANDS; i++)
    fprintf(f, "  %-10s %s\n", k_commands[i].name, k_commands[i].summary);
  fprintf(f,
          "\n"
          "Options:\n"
          "  -h, --help     show this help\n"
          "  --version      print the version\n"
          "\n"
          "Exit status: 0 success, 1 runtime error (bad model file, I/O), 2 usage error.\n");
}

int main(int argc, char **argv) {
  if (argc < 2) {
    usage(stderr);
    return SS_EXIT_USAGE;
  }
  const char *name = argv[1];
  if (strcmp(name, "-h") == 0 || strcmp(name, "--help") == 0 || strcmp(name, "help") == 0) {
    usage(stdout);
    return SS_EXIT_OK;
  }
  if (strcmp(name, "--version") == 0) {
    printf("shardserve %s\n", SS_VERSION);
    return SS_EXIT_OK;
  }
  for (size_t i = 0; i < N_COMMANDS; i++)
    if (strcmp(name, k_commands[i].name) == 0) return k_commands[i].run(argc - 1, argv + 1);
  fprintf(stderr, "shardserve: unknown command '%s'\n\n", name);
  usage(stderr);
  return SS_EXIT_USAGE;
}
