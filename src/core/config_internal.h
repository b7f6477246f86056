/*
 * config_internal.h: the option table's row layout, shared by config.c (the
 * table itself, loading and validation) and config_report.c (the SIGHUP reload
 * check, --help and JSON output).
 *
 * The table is const and lives in config.c; other files reach it only through
 * dsi__config_opts and dsi__config_find_opt, so there is still one table.
 */
#ifndef DSI_CORE_CONFIG_INTERNAL_H
#define DSI_CORE_CONFIG_INTERNAL_H

#include <stddef.h>

enum dsi__opt_type {
    DSI__OPT_STR,
    DSI__OPT_PATH,
    DSI__OPT_BOOL,
    DSI__OPT_INT,
    DSI__OPT_SIZE,
    DSI__OPT_DOUBLE,
    DSI__OPT_ENUM,
    DSI__OPT_JSON
};

/* DSI__OPT_RELOAD: SIGHUP applies a new value; otherwise a restart is needed. TLS
 * material is not among them: libmicrohttpd keeps its credentials for the
 * listener's lifetime (see src/server/server.c). */
enum { DSI__OPT_RELOAD = 1u << 0 };

struct dsi__opt {
    const char *name;
    enum dsi__opt_type type;
    size_t off;
    double min, max;     /* DSI__OPT_INT, DSI__OPT_SIZE, DSI__OPT_DOUBLE: inclusive range */
    const char *def;     /* default, as text (parsed like a command-line value) */
    const char *example; /* value shown in config/dsinfer.json; NULL: the default */
    const char *choices; /* DSI__OPT_ENUM: "a|b|c" */
    int (*check)(const struct dsi__opt *o, const char *text, char **err); /* extra per-option rule */
    unsigned flags;
    const char *group;
    const char *help;
};

/* The whole table in its documented order (--help groups follow it); *n gets its length. */
const struct dsi__opt *dsi__config_opts(size_t *n);
/* The row of the option spelled exactly `name` (underscores), or NULL. */
const struct dsi__opt *dsi__config_find_opt(const char *name);

#endif
