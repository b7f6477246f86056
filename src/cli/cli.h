/*
 * cli.h: the dsinfer subcommands. Each returns the process exit status:
 *   0 success, 1 failure (the one-line reason already printed to stderr),
 *   2 usage error. Only main.c calls exit().
 */
#ifndef DSINFER_CLI_H
#define DSINFER_CLI_H

int dsi_cmd_serve(int argc, char **argv);
int dsi_cmd_verify(int argc, char **argv);
int dsi_cmd_manifest(int argc, char **argv);
int dsi_cmd_inspect(int argc, char **argv);
int dsi_cmd_tokenize(int argc, char **argv);
int dsi_cmd_detokenize(int argc, char **argv);
int dsi_cmd_generate(int argc, char **argv);
int dsi_cmd_logits(int argc, char **argv);
int dsi_cmd_quant_report(int argc, char **argv);
int dsi_cmd_perplexity(int argc, char **argv);
int dsi_cmd_keys(int argc, char **argv);
int dsi_cmd_bench(int argc, char **argv);
int dsi_cmd_doctor(int argc, char **argv);
int dsi_cmd_encrypt(int argc, char **argv);
int dsi_cmd_decrypt(int argc, char **argv);

/* Shared by the subcommands (cli_config.c). */
struct dsi_config;
struct dsi_cli_model {
    const char *dir, *backend, *dtype; /* backend NULL: cpu; dtype NULL: bf16 */
    const char *key_file;              /* NULL: not encrypted at rest */
    const char *int8_mode;             /* NULL: the config default (w8a16) */
    const char *kv_dtype;              /* NULL: the config default (auto: the backend's) */
    int group_size, n_threads;
    int no_verify;
};
/* The config of a one-sequence CLI run: the model as given, one running
 * sequence, KV blocks of 16 tokens; the caller sizes the rest. On error nothing
 * is left to free. */
int dsi__cli_config_init(struct dsi_config *c, const struct dsi_cli_model *m, char **err);
/* --threads: 1..256, or -1 with the reason on stderr. */
int dsi__cli_parse_threads(const char *cmd, const char *v, int *out);

/* Exit statuses, documented in README.md. */
enum { DSI_EXIT_OK = 0, DSI_EXIT_FAIL = 1, DSI_EXIT_USAGE = 2 };

#endif
