/* cmd_doctor.c: subcommands (placeholder until its module lands). */
#include <stdio.h>

#include "cli.h"

int dsi_cmd_doctor(int argc, char **argv) {
    (void)argc;
    (void)argv;
    fprintf(stderr, "dsinfer doctor: not built yet\n");
    return DSI_EXIT_FAIL;
}

