/*
 * cmd_keys.c: `dsinfer keys add|list|revoke`, keys file management.
 *
 *   dsinfer keys add --file F --name NAME --role ROLE [--models a,b] [--rpm N]
 *                    [--tpm N] [--max-tokens N] [--expires 2027-01-31|RFC3339]
 *                    [--cache-group NAME] [--max-concurrent N] [--priority 1..100]
 *   dsinfer keys list --file F
 *   dsinfer keys revoke --file F ID
 *   (each also takes --config FILE, for the file name and the configured roles,
 *    or --roles JSON)
 *
 * `add` prints the new key as the only line on stdout, so scripts can capture
 * it with $(...); everything else goes to stderr. The key is never stored.
 */
#include <cjson/cJSON.h>
#include <errno.h>
#include <openssl/crypto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "dsinfer/auth.h"
#include "dsinfer/err.h"

struct keys_args {
    const char *file, *name, *role, *models, *expires, *roles, *config, *id, *cache_group;
    long long rpm, tpm, max_tokens, max_concurrent, priority;
};

static void usage(FILE *f);
static int parse_num(const char *opt, const char *s, long long *out);
static int load_config(struct keys_args *a, char **roles_owned, char **file_owned);
static int parse_args(const char *sub, int argc, char **argv, struct keys_args *a);
static bool has_required(const char *sub, const struct keys_args *a);
static int run_add(const struct keys_args *a, char **err);
static int run(const char *sub, const struct keys_args *a);

static void usage(FILE *f) {
    fprintf(f, "usage: dsinfer keys add --file F --name NAME --role ROLE [--models a,b] [--rpm N] [--tpm N]\n"
               "                        [--max-tokens N] [--expires 2027-01-31|2027-01-31T12:00:00Z]\n"
               "                        [--cache-group NAME] [--max-concurrent N] [--priority 1..100]\n"
               "       dsinfer keys list --file F\n"
               "       dsinfer keys revoke --file F ID\n"
               "options for all: --config FILE (keys_file and roles from the daemon config), --roles JSON\n"
               "`add` prints the new key once, as the only line on stdout; it cannot be shown again.\n"
               "rpm/tpm/max-tokens/max-concurrent 0 = unlimited; --expires DATE = valid through that UTC day;\n"
               "--priority = the key's weight when keys share the batch (default 1).\n");
}

static int parse_num(const char *opt, const char *s, long long *out) {
    char *end = NULL;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || !end || *end || end == s || v < 0 || v > 2147483647LL) {
        fprintf(stderr, "dsinfer keys: %s '%s': expected an integer 0..2147483647\n", opt, s);
        return -1;
    }
    *out = v;
    return 0;
}

/* Takes keys_file and roles from the daemon's config file so `keys add`
 * validates roles against what the server will use. "roles" may be the JSON
 * object itself or a string holding it (the config table stores text). */
static int load_config(struct keys_args *a, char **roles_owned, char **file_owned) {
    FILE *f = fopen(a->config, "rb");
    if (!f) {
        fprintf(stderr, "dsinfer keys: --config %s: %s\n", a->config, strerror(errno));
        return -1;
    }
    char *buf = malloc(1 << 20);
    size_t n = buf ? fread(buf, 1, (1 << 20) - 1, f) : 0;
    fclose(f);
    if (!buf) return -1;
    buf[n] = 0;
    cJSON *root = cJSON_Parse(buf);
    free(buf);
    if (!cJSON_IsObject(root)) {
        fprintf(stderr, "dsinfer keys: --config %s: not a JSON object\n", a->config);
        cJSON_Delete(root);
        return -1;
    }
    const cJSON *r = cJSON_GetObjectItemCaseSensitive(root, "roles");
    const cJSON *kf = cJSON_GetObjectItemCaseSensitive(root, "keys_file");
    if (!a->roles && cJSON_IsString(r) && r->valuestring[0])
        *roles_owned = strdup(r->valuestring);
    else if (!a->roles && cJSON_IsObject(r))
        *roles_owned = cJSON_PrintUnformatted(r);
    if (!a->file && cJSON_IsString(kf) && kf->valuestring[0]) *file_owned = strdup(kf->valuestring);
    if (*roles_owned) a->roles = *roles_owned;
    if (*file_owned) a->file = *file_owned;
    cJSON_Delete(root);
    return 0;
}

/* Reads the options after the subcommand into a. Returns -1 to go on, or the
 * exit status to end with (--help: DSI_EXIT_OK; a bad option: DSI_EXIT_USAGE,
 * after saying why on stderr). */
static int parse_args(const char *sub, int argc, char **argv, struct keys_args *a) {
    bool add = !strcmp(sub, "add");
    for (int i = 2; i < argc; i++) {
        const char *o = argv[i];
        if (!strcmp(o, "--help") || !strcmp(o, "-h")) {
            usage(stdout);
            return DSI_EXIT_OK;
        }
        if (o[0] != '-' || o[1] != '-') {
            if (!strcmp(sub, "revoke") && !a->id) {
                a->id = o;
                continue;
            }
            fprintf(stderr, "dsinfer keys %s: unexpected argument '%s'\n", sub, o);
            return DSI_EXIT_USAGE;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "dsinfer keys %s: %s needs a value\n", sub, o);
            return DSI_EXIT_USAGE;
        }
        const char *v = argv[++i];
        if (!strcmp(o, "--file"))
            a->file = v;
        else if (!strcmp(o, "--config"))
            a->config = v;
        else if (!strcmp(o, "--roles"))
            a->roles = v;
        else if (add && !strcmp(o, "--name"))
            a->name = v;
        else if (add && !strcmp(o, "--role"))
            a->role = v;
        else if (add && !strcmp(o, "--models"))
            a->models = v;
        else if (add && !strcmp(o, "--expires"))
            a->expires = v;
        else if (add && !strcmp(o, "--cache-group"))
            a->cache_group = v;
        else if (add && !strcmp(o, "--rpm")) {
            if (parse_num(o, v, &a->rpm)) return DSI_EXIT_USAGE;
        } else if (add && !strcmp(o, "--tpm")) {
            if (parse_num(o, v, &a->tpm)) return DSI_EXIT_USAGE;
        } else if (add && !strcmp(o, "--max-tokens")) {
            if (parse_num(o, v, &a->max_tokens)) return DSI_EXIT_USAGE;
        } else if (add && !strcmp(o, "--max-concurrent")) {
            if (parse_num(o, v, &a->max_concurrent)) return DSI_EXIT_USAGE;
        } else if (add && !strcmp(o, "--priority")) {
            if (parse_num(o, v, &a->priority)) return DSI_EXIT_USAGE;
        } else {
            fprintf(stderr, "dsinfer keys %s: unknown option '%s' (see `dsinfer keys --help`)\n", sub, o);
            return DSI_EXIT_USAGE;
        }
    }
    return -1;
}

/* Whether a (after --config) names everything sub needs; says what is missing. */
static bool has_required(const char *sub, const struct keys_args *a) {
    if (!a->file) {
        fprintf(stderr, "dsinfer keys %s: --file F is required\n", sub);
        return false;
    }
    if (!strcmp(sub, "add") && (!a->name || !a->role)) {
        fprintf(stderr, "dsinfer keys add: --name and --role are required\n");
        return false;
    }
    if (!strcmp(sub, "revoke") && !a->id) {
        fprintf(stderr, "dsinfer keys revoke: which key? give its id (see `dsinfer keys list`)\n");
        return false;
    }
    return true;
}

/* `keys add`: the new key goes to stdout, alone, and is wiped from memory. */
static int run_add(const struct keys_args *a, char **err) {
    struct dsi_key_spec s = {.name = a->name,
                             .role = a->role,
                             .models = a->models,
                             .rpm = a->rpm,
                             .tpm = a->tpm,
                             .max_tokens = (int)a->max_tokens,
                             .expires = a->expires,
                             .cache_group = a->cache_group,
                             .max_concurrent = (int)a->max_concurrent,
                             .priority = (int)a->priority,
                             .roles_json = a->roles};
    char key[DSI_KEY_STRLEN + 1], id[32];
    int rc = dsi_keys_add(a->file, &s, key, id, err);
    if (rc == 0) {
        printf("%s\n", key);
        fflush(stdout);
        fprintf(stderr, "dsinfer keys: added %s for '%s' (role %s) to %s; the key above is shown only once\n",
                id, a->name, a->role, a->file);
    }
    OPENSSL_cleanse(key, sizeof key);
    return rc;
}

/* Runs sub on a checked a; the exit status. */
static int run(const char *sub, const struct keys_args *a) {
    char *err = NULL;
    int rc;
    if (!strcmp(sub, "add")) {
        rc = run_add(a, &err);
    } else if (!strcmp(sub, "list")) {
        rc = dsi_keys_list(a->file, a->roles, stdout, &err);
    } else {
        rc = dsi_keys_revoke(a->file, a->id, a->roles, &err);
        if (rc == 0)
            fprintf(stderr,
                    "dsinfer keys: %s disabled in %s; send SIGHUP to dsinfer (systemctl reload dsinfer) "
                    "to apply it\n",
                    a->id, a->file);
    }
    if (rc) fprintf(stderr, "dsinfer keys %s: %s\n", sub, err ? err : dsi_strerror(rc));
    free(err);
    return rc ? DSI_EXIT_FAIL : DSI_EXIT_OK;
}

int dsi_cmd_keys(int argc, char **argv) {
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? DSI_EXIT_USAGE : DSI_EXIT_OK;
    }
    const char *sub = argv[1];
    if (strcmp(sub, "add") && strcmp(sub, "list") && strcmp(sub, "revoke")) {
        fprintf(stderr, "dsinfer keys: unknown subcommand '%s' (add, list, revoke)\n", sub);
        return DSI_EXIT_USAGE;
    }
    struct keys_args a = {0};
    int status = parse_args(sub, argc, argv, &a);
    if (status >= 0) return status;
    char *roles_owned = NULL, *file_owned = NULL;
    if (a.config && load_config(&a, &roles_owned, &file_owned))
        status = DSI_EXIT_FAIL;
    else if (!has_required(sub, &a))
        status = DSI_EXIT_USAGE;
    else
        status = run(sub, &a);
    free(roles_owned);
    free(file_owned);
    return status;
}
