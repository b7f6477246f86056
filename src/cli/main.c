/*
 * main.c: `dsinfer <command> ...`. The only file that may call exit().
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "dsinfer/parallel.h"
#include "dsinfer/log.h"

struct command {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *help;
};

static const struct command commands[] = {
    {"serve", dsi_cmd_serve, "serve the HTTP API (--config FILE | --model DIR ...)"},
    {"verify", dsi_cmd_verify, "check DIR/SHA256SUMS; exit 0 only if every file matches"},
    {"manifest", dsi_cmd_manifest, "write DIR/SHA256SUMS (sha256sum -c compatible)"},
    {"encrypt", dsi_cmd_encrypt, "encrypt a model directory at rest (--key-file K SRC DST)"},
    {"decrypt", dsi_cmd_decrypt, "decrypt an encrypted model directory (--key-file K SRC DST)"},
    {"inspect", dsi_cmd_inspect, "architecture, parameters, dtypes, memory per dtype"},
    {"tokenize", dsi_cmd_tokenize, "stdin text -> token ids (--model DIR [--json] [--bos])"},
    {"detokenize", dsi_cmd_detokenize, "token ids on stdin -> text (--model DIR)"},
    {"generate", dsi_cmd_generate, "generate text (--model DIR --prompt TEXT | --ids 1,2,3)"},
    {"logits", dsi_cmd_logits, "JSON logits, one row per position (--model DIR --ids ...)"},
    {"quant-report", dsi_cmd_quant_report, "per-layer INT8 quantization error (--model DIR)"},
    {"perplexity", dsi_cmd_perplexity, "perplexity over a text (--model DIR --text FILE)"},
    {"keys", dsi_cmd_keys, "add|list|revoke API keys in a keys file"},
    {"bench", dsi_cmd_bench, "engine benchmark without HTTP"},
    {"doctor", dsi_cmd_doctor, "check GPU, driver, memory, certificate, keys and config"},
};

static void usage(FILE *f) {
    fprintf(f, "usage: dsinfer <command> [options]\n\ncommands:\n");
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        fprintf(f, "  %-12s %s\n", commands[i].name, commands[i].help);
    fprintf(f, "\n`dsinfer <command> --help` for a command's options. Exit status: 0 ok, 1 failure, 2 usage.\n");
}

int main(int argc, char **argv) {
    if (argc < 2) {
        usage(stderr);
        exit(DSI_EXIT_USAGE);
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        usage(stdout);
        exit(DSI_EXIT_OK);
    }
    if (!strcmp(argv[1], "--version")) {
        printf("dsinfer %s\n", DSI_VERSION);
        exit(DSI_EXIT_OK);
    }
    const char *lvl = getenv("DSI_LOG_LEVEL");
    if (lvl) {
        enum dsi_log_level l;
        if (dsi_log_parse_level(lvl, &l) == 0) dsi_log_set_level(l);
    }
    /* Under mpirun: ranks > 0 are tensor-parallel workers and end here; rank 0 runs
     * the command with --tensor-parallel removed from argv (include/dsinfer/parallel.h). */
    int dist_rc;
    if (dsi_parallel_main_hook(&argc, argv, &dist_rc)) {
        if (dist_rc) dsi_parallel_abort(dist_rc);
        exit(dist_rc);
    }
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (!strcmp(argv[1], commands[i].name)) exit(commands[i].run(argc - 1, argv + 1));
    fprintf(stderr, "dsinfer: unknown command '%s'; run `dsinfer --help`\n", argv[1]);
    exit(DSI_EXIT_USAGE);
}
