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

/* Exit statuses, documented in README.md. */
enum { DSI_EXIT_OK = 0, DSI_EXIT_FAIL = 1, DSI_EXIT_USAGE = 2 };

#endif
