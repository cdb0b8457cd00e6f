#include "cli.h"

int ss_cmd_tokenize(int argc, char **argv) { return ss_cli_fail("tokenize", "not implemented yet"); }
