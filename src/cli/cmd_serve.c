/*
 * cmd_serve.c: `dsinfer serve --config FILE | --model DIR [--listen ADDR:PORT]
 * [--tls-cert F --tls-key F] [--keys F] [--backend cpu|cuda] [--dtype ..] ...`.
 * Every option of the config table is a flag (--max-running 32); the config file
 * comes first and flags override it.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "dsinfer/config.h"
#include "dsinfer/err.h"
#include "dsinfer/log.h"
#include "dsinfer/server.h"

int dsi_cmd_serve(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            printf("usage: dsinfer serve --config FILE | --model DIR [--listen ADDR:PORT] [--tls-cert F --tls-key F]\n"
                   "                     [--keys F] [--backend cpu|cuda] [--dtype f32|bf16|int8] [--OPTION VALUE ...]\n\n"
                   "Every option below is also a flag (underscores spelled as dashes); flags override the file.\n\n");
            dsi_config_print_help(stdout);
            return DSI_EXIT_OK;
        }
    }
    struct dsi_config c;
    if (dsi_config_init(&c)) {
        fprintf(stderr, "dsinfer serve: out of memory\n");
        return DSI_EXIT_FAIL;
    }
    char *err = NULL;
    const char *config_path = NULL;
    int rc = dsi_server_args_to_config(argc, argv, &c, &config_path, &err);
    if (rc) {
        fprintf(stderr, "dsinfer serve: %s (see `dsinfer serve --help`)\n", err ? err : dsi_strerror(rc));
        free(err);
        dsi_config_free(&c);
        return DSI_EXIT_USAGE;
    }
    enum dsi_log_level lvl;
    if (c.log_level && c.log_level[0] && !getenv("DSI_LOG_LEVEL") && dsi_log_parse_level(c.log_level, &lvl) == 0)
        dsi_log_set_level(lvl);
    /* A client that goes away must not kill the daemon (MHD and GnuTLS write with
     * MSG_NOSIGNAL, but be sure). */
    signal(SIGPIPE, SIG_IGN);
    struct dsi_server *s = NULL;
    rc = dsi_server_create(&c, &s, &err);
    if (rc) {
        fprintf(stderr, "dsinfer serve: %s\n", err ? err : dsi_strerror(rc));
        free(err);
        dsi_config_free(&c);
        return DSI_EXIT_FAIL;
    }
    dsi_server_set_reload_source(s, config_path, argc, argv);
    rc = dsi_server_run(s);
    dsi_server_destroy(s);
    dsi_config_free(&c);
    return rc ? DSI_EXIT_FAIL : DSI_EXIT_OK;
}
