/* cmd_run.c: subcommands (placeholder until its module lands). */
#include <stdio.h>

#include "cli.h"

int dsi_cmd_generate(int argc, char **argv) {
    (void)argc;
    (void)argv;
    fprintf(stderr, "dsinfer generate: not built yet\n");
    return DSI_EXIT_FAIL;
}

int dsi_cmd_logits(int argc, char **argv) {
    (void)argc;
    (void)argv;
    fprintf(stderr, "dsinfer logits: not built yet\n");
    return DSI_EXIT_FAIL;
}

int dsi_cmd_quant_report(int argc, char **argv) {
    (void)argc;
    (void)argv;
    fprintf(stderr, "dsinfer quant_report: not built yet\n");
    return DSI_EXIT_FAIL;
}

