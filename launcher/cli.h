/* Shared pieces of the command-line front end.  Each subcommand lives in its
 * own cmd_<name>.c and returns the process exit status:
 *   0 success, 1 runtime failure (bad file, I/O), 2 usage error (bad flags). */
#ifndef SS_CLI_H
#define SS_CLI_H

#include <stdbool.h>
#include <stdint.h>

#include "runtime/base/dtype.h"

#define SS_EXIT_OK 0
#define SS_EXIT_FAIL 1
#define SS_EXIT_USAGE 2

/* Where scripts/setup.sh puts the default model (relative to the repository). */
#define SS_DEFAULT_MODEL "models/SmolLM2-135M-Instruct.Q4_1.gguf"

/* This process's rank in a multi-rank job, or -1: error lines then name it. */
extern int ss_cli_rank;

struct ss_model;
struct ss_comm;
/* Loads a model with a progress line for large files; on failure prints the
 * error and returns SS_EXIT_FAIL.  With comm (more than one rank), loads this
 * rank's shard; replicate_vocab keeps the whole embedding and LM head. */
int ss_cli_load_model(const char *cmd, const char *path, struct ss_model **out);
int ss_cli_load_shard(const char *cmd, const char *path, struct ss_comm *comm,
                      bool replicate_vocab, struct ss_model **out);
/* The same; expert_parallel gives each rank whole experts (--ep). */
int ss_cli_load_shard_ep(const char *cmd, const char *path, struct ss_comm *comm,
                         bool replicate_vocab, bool expert_parallel, struct ss_model **out);

int ss_cmd_info(int argc, char **argv);
/* info for a Hugging Face folder (cmd_info_hf.c). */
int ss_cli_info_hf(const char *cmd, const char *dir, bool json);
int ss_cmd_tokenize(int argc, char **argv);
int ss_cmd_template(int argc, char **argv);
int ss_cmd_generate(int argc, char **argv);
int ss_cmd_plan(int argc, char **argv);
int ss_cmd_launch(int argc, char **argv);
int ss_cmd_serve(int argc, char **argv);
int ss_cmd_profile(int argc, char **argv);
int ss_cmd_loadgen(int argc, char **argv);
int ss_cmd_synth(int argc, char **argv);

/* Prints "shardserve <cmd>: error: <message>" to stderr.  Returns SS_EXIT_FAIL. */
int ss_cli_fail(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Same, for a usage error; adds a hint to run --help.  Returns SS_EXIT_USAGE. */
int ss_cli_usage(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Strict number parsing for flag values: the whole string must be a number in
 * [lo, hi].  On failure prints a usage error naming the flag and returns false. */
bool ss_cli_parse_int(const char *cmd, const char *flag, const char *s, int64_t lo, int64_t hi,
                      int64_t *out);
/* "fp8", "bf16", "f16" or "f32" (any case) to a type; prints a usage error
 * naming the flag otherwise. */
/* A byte size with an optional K/M/G/T suffix (powers of 1024), "2G", "512MiB". */
bool ss_cli_parse_size(const char *cmd, const char *flag, const char *s, double *out);
bool ss_cli_parse_dtype(const char *cmd, const char *flag, const char *s, ss_dtype *out);
bool ss_cli_parse_float(const char *cmd, const char *flag, const char *s, double lo, double hi,
                        double *out);

#endif
