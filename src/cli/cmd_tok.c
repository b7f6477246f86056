/* cmd_tok.c: subcommands (placeholder until its module lands). */
#include <stdio.h>

#include "cli.h"

int dsi_cmd_tokenize(int argc, char **argv) {
    (void)argc;
    (void)argv;
    fprintf(stderr, "dsinfer tokenize: not built yet\n");
    return DSI_EXIT_FAIL;
}

int dsi_cmd_detokenize(int argc, char **argv) {
    (void)argc;
    (void)argv;
    fprintf(stderr, "dsinfer detokenize: not built yet\n");
    return DSI_EXIT_FAIL;
}

