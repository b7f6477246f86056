/*
 * server.h: the HTTP(S) front end: libmicrohttpd + GnuTLS (TLS 1.3 only),
 * routing, OpenAI/DeepSeek JSON, SSE streaming, health and Prometheus metrics.
 *
 * Owner: src/server.
 */
#ifndef DSINFER_SERVER_H
#define DSINFER_SERVER_H

#include "dsinfer/config.h"

struct dsi_server;

/* Builds a config from `dsinfer serve` arguments (argv[0] is the command name):
 * --config FILE is applied first, then every --name VALUE / --name=VALUE through
 * dsi_config_set ('-' and '_' alike; --model = --model-dir, --keys = --keys-file;
 * a bare --flag means true). c must be initialized (dsi_config_init).
 * *config_path (optional) points into argv. */
int dsi_server_args_to_config(int argc, char **argv, struct dsi_config *c, const char **config_path, char **err);

/* Loads the model, tokenizer, backend, engine and auth named by the config and
 * starts listening. Returns once serving (or on error). The listener starts
 * before the model loads, so /health/live answers and /health/ready is 503
 * meanwhile. c is borrowed and must outlive the server. */
int dsi_server_create(const struct dsi_config *c, struct dsi_server **out, char **err);
/* Blocks until a stop is requested; handles SIGHUP (reload) and SIGTERM/SIGINT
 * (drain then stop). Returns 0 after a clean drain. */
int dsi_server_run(struct dsi_server *s);
/* What SIGHUP re-reads: the config file and the command-line overrides (copied).
 * Without it SIGHUP reloads keys and roles from the running config's paths. */
void dsi_server_set_reload_source(struct dsi_server *s, const char *config_path, int argc, char **argv);
void dsi_server_destroy(struct dsi_server *s);

#endif
