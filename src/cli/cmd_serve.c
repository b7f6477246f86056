/* cmd_serve.c: subcommands (placeholder until its module lands). */
#include <stdio.h>

#include "cli.h"

int dsi_cmd_serve(int argc, char **argv) {
    (void)argc;
    (void)argv;
    fprintf(stderr, "dsinfer serve: not built yet\n");
    return DSI_EXIT_FAIL;
}

