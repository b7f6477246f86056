/*
 * config_report.c: what the option table of config.c says about finished
 * configs, without changing one: which changed options need a restart rather
 * than a SIGHUP reload (dsi_config_reload_changes, dsi_config_is_reloadable),
 * the `dsinfer serve --help` text (dsi_config_print_help) and a config as a
 * JSON object (dsi_config_print_json, the form of config/dsinfer.json).
 *
 * Loading, per-option checks and validation live in config.c; this file only
 * reads the table through config_internal.h, so both walk the same rows.
 */
#include "dsinfer/config.h"

#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>

#include "config_internal.h"
#include "dsinfer/err.h"

static bool same_value(const struct dsi__opt *o, const struct dsi_config *a, const struct dsi_config *b);
static void print_json_string(FILE *f, const char *s);

static bool same_value(const struct dsi__opt *o, const struct dsi_config *a, const struct dsi_config *b) {
    const char *pa = (const char *)a + o->off, *pb = (const char *)b + o->off;
    switch (o->type) {
    case DSI__OPT_BOOL:
        return *(const bool *)pa == *(const bool *)pb;
    case DSI__OPT_INT:
        return *(const int *)pa == *(const int *)pb;
    case DSI__OPT_SIZE:
        return *(const size_t *)pa == *(const size_t *)pb;
    case DSI__OPT_DOUBLE:
        return *(const double *)pa == *(const double *)pb;
    default: {
        const char *sa = *(char *const *)pa, *sb = *(char *const *)pb;
        return strcmp(sa ? sa : "", sb ? sb : "") == 0;
    }
    }
}

int dsi_config_reload_changes(const struct dsi_config *running, const struct dsi_config *fresh,
                              char **restart_needed) {
    size_t n_opts;
    const struct dsi__opt *opts = dsi__config_opts(&n_opts);
    if (!running || !fresh) return DSI_EINVAL;
    if (restart_needed) *restart_needed = NULL;
    char buf[2048] = "";
    size_t len = 0;
    int n = 0;
    for (size_t i = 0; i < n_opts; i++) {
        if ((opts[i].flags & DSI__OPT_RELOAD) || same_value(&opts[i], running, fresh)) continue;
        n++;
        int w = snprintf(buf + len, sizeof buf - len, "%s%s", n > 1 ? ", " : "", opts[i].name);
        if (w > 0 && (size_t)w < sizeof buf - len) len += (size_t)w;
    }
    if (n && restart_needed) {
        *restart_needed = strdup(buf);
        if (!*restart_needed) return DSI_ENOMEM;
    }
    return n;
}

bool dsi_config_is_reloadable(const char *name) {
    const struct dsi__opt *o = name ? dsi__config_find_opt(name) : NULL;
    return o && (o->flags & DSI__OPT_RELOAD);
}

/* ---- output: --help and the documented example ---- */

static const char *type_word(const struct dsi__opt *o) {
    switch (o->type) {
    case DSI__OPT_STR:
        return "STR";
    case DSI__OPT_PATH:
        return "PATH";
    case DSI__OPT_BOOL:
        return "BOOL";
    case DSI__OPT_INT:
        return "N";
    case DSI__OPT_SIZE:
        return "BYTES";
    case DSI__OPT_DOUBLE:
        return "X";
    case DSI__OPT_ENUM:
        return o->choices;
    case DSI__OPT_JSON:
        return "JSON";
    }
    return "?";
}

void dsi_config_print_help(FILE *f) {
    size_t n_opts;
    const struct dsi__opt *opts = dsi__config_opts(&n_opts);
    const char *group = NULL;
    fprintf(f, "Options (config file key, or --key-name VALUE on the command line, which wins):\n");
    for (size_t i = 0; i < n_opts; i++) {
        const struct dsi__opt *o = &opts[i];
        if (!group || strcmp(group, o->group) != 0) {
            group = o->group;
            fprintf(f, "\n%s:\n", group);
        }
        char flag[96];
        snprintf(flag, sizeof flag, "--%s", o->name);
        for (char *p = flag + 2; *p; p++)
            if (*p == '_') *p = '-';
        fprintf(f, "  %s %s\n      %s", flag, type_word(o), o->help);
        if (o->type == DSI__OPT_INT || o->type == DSI__OPT_SIZE)
            fprintf(f, " [%.0f..%.0f]", o->min, o->max);
        else if (o->type == DSI__OPT_DOUBLE)
            fprintf(f, " [%g..%g]", o->min, o->max);
        fprintf(f, " (default: %s%s%s)%s\n", o->def[0] ? "" : "\"", o->def, o->def[0] ? "" : "\"",
                (o->flags & DSI__OPT_RELOAD) ? " [reloads on SIGHUP]" : "");
    }
}

/* A JSON string literal with cJSON's escaping (quotes, backslashes, control characters). */
static void print_json_string(FILE *f, const char *s) {
    cJSON *j = cJSON_CreateString(s);
    char *text = j ? cJSON_PrintUnformatted(j) : NULL;
    fputs(text ? text : "\"\"", f);
    free(text);
    cJSON_Delete(j);
}

void dsi_config_print_json(FILE *f, const struct dsi_config *c) {
    size_t n_opts;
    const struct dsi__opt *opts = dsi__config_opts(&n_opts);
    fputs("{\n", f);
    for (size_t i = 0; i < n_opts; i++) {
        const struct dsi__opt *o = &opts[i];
        const char *p = (const char *)c + o->off;
        fprintf(f, "  \"%s\": ", o->name);
        switch (o->type) {
        case DSI__OPT_BOOL:
            fputs(*(const bool *)p ? "true" : "false", f);
            break;
        case DSI__OPT_INT:
            fprintf(f, "%d", *(const int *)p);
            break;
        case DSI__OPT_SIZE:
            fprintf(f, "%zu", *(const size_t *)p);
            break;
        case DSI__OPT_DOUBLE: {
            /* shortest text that reads back as the same double: 0.9, not 0.90000000000000002 */
            double v = *(const double *)p;
            char num[40];
            snprintf(num, sizeof num, "%.15g", v);
            if (strtod(num, NULL) != v) snprintf(num, sizeof num, "%.17g", v);
            fputs(num, f);
            break;
        }
        case DSI__OPT_JSON: {
            const char *s = *(char *const *)p;
            fputs(s && *s ? s : "{}", f);
            break;
        }
        default: {
            const char *s = *(char *const *)p;
            print_json_string(f, s ? s : "");
        }
        }
        fputs(i + 1 < n_opts ? ",\n" : "\n", f);
    }
    fputs("}\n", f);
}
