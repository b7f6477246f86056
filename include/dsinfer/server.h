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

/* Loads the model, tokenizer, backend, engine and auth named by the config and
 * starts listening. Returns once serving (or on error). */
int dsi_server_create(const struct dsi_config *c, struct dsi_server **out, char **err);
/* Blocks until a stop is requested; handles SIGHUP (reload) and SIGTERM/SIGINT
 * (drain then stop). Returns 0 after a clean drain. */
int dsi_server_run(struct dsi_server *s);
void dsi_server_destroy(struct dsi_server *s);

#endif
