/* cmd_model.c: subcommands (placeholder until its module lands). */
#include <stdio.h>

#include "cli.h"

int dsi_cmd_verify(int argc, char **argv) {
    (void)argc;
    (void)argv;
    fprintf(stderr, "dsinfer verify: not built yet\n");
    return DSI_EXIT_FAIL;
}

int dsi_cmd_manifest(int argc, char **argv) {
    (void)argc;
    (void)argv;
    fprintf(stderr, "dsinfer manifest: not built yet\n");
    return DSI_EXIT_FAIL;
}

int dsi_cmd_inspect(int argc, char **argv) {
    (void)argc;
    (void)argv;
    fprintf(stderr, "dsinfer inspect: not built yet\n");
    return DSI_EXIT_FAIL;
}

