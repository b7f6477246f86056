/* cmd_keys.c: subcommands (placeholder until its module lands). */
#include <stdio.h>

#include "cli.h"

int dsi_cmd_keys(int argc, char **argv) {
    (void)argc;
    (void)argv;
    fprintf(stderr, "dsinfer keys: not built yet\n");
    return DSI_EXIT_FAIL;
}

