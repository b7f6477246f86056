/* cmd_perplexity.c: subcommands (placeholder until its module lands). */
#include <stdio.h>

#include "cli.h"

int dsi_cmd_perplexity(int argc, char **argv) {
    (void)argc;
    (void)argv;
    fprintf(stderr, "dsinfer perplexity: not built yet\n");
    return DSI_EXIT_FAIL;
}

