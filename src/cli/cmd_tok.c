/*
 * cmd_tok.c: `dsinfer tokenize` and `dsinfer detokenize`.
 *
 *   dsinfer tokenize --model DIR [--json] [--bos] [--no-special]
 *       stdin (all of it, as one text, trailing newline included) -> ids as a JSON
 *       array "[1,2,3]". --bos prepends the model's BOS id. Added/special tokens
 *       written in the text are matched as HF does; --no-special leaves special ones
 *       as text. --json prints {"ids": [...], "count": N, "tokens": ["..", ..]} with
 *       each token's own text (U+FFFD where a token holds part of a character).
 *   dsinfer detokenize --model DIR [--skip-special]
 *       stdin: a JSON array of ids, or ids separated by commas and/or whitespace ->
 *       the text, written exactly (no newline added).
 * Exit status: 0 ok, 1 bad input or model (one line on stderr says what), 2 usage.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "cli.h"
#include "dsinfer/alloc.h"
#include "dsinfer/err.h"
#include "dsinfer/tok.h"

#define MAX_STDIN ((size_t)1 << 30) /* refuse more than 1 GiB of input */

static int read_stdin(char **buf, size_t *len) {
    size_t cap = 1 << 16, n = 0;
    char *b = malloc(cap);
    if (!b) return DSI_ENOMEM;
    for (;;) {
        if (n == cap) {
            if (cap >= MAX_STDIN) {
                free(b);
                return DSI_ERANGE;
            }
            char *nb = realloc(b, cap * 2);
            if (!nb) {
                free(b);
                return DSI_ENOMEM;
            }
            b = nb;
            cap *= 2;
        }
        size_t r = fread(b + n, 1, cap - n, stdin);
        n += r;
        if (r == 0) break;
    }
    if (ferror(stdin)) {
        free(b);
        return DSI_EIO;
    }
    if (n == cap) { /* keep room for the NUL */
        char *nb = realloc(b, cap + 1);
        if (!nb) {
            free(b);
            return DSI_ENOMEM;
        }
        b = nb;
    }
    b[n] = 0;
    *buf = b;
    *len = n;
    return 0;
}

/* An option the command does not take: --help / -h prints its usage (exit 0),
 * anything else is a usage error naming the option. */
static int other_option(const char *cmd, const char *usage, const char *opt) {
    if (!strcmp(opt, "--help") || !strcmp(opt, "-h")) {
        printf("usage: dsinfer %s %s\n", cmd, usage);
        return DSI_EXIT_OK;
    }
    fprintf(stderr, "dsinfer %s: unknown or incomplete option '%s'; usage: dsinfer %s %s\n", cmd, opt, cmd,
            usage);
    return DSI_EXIT_USAGE;
}

/* What both commands work on: the tokenizer of --model dir in *t and all of
 * stdin in *in / *len (the caller frees both). DSI_EXIT_USAGE without --model,
 * DSI_EXIT_FAIL (after saying why, nothing left to free) when the tokenizer
 * does not load or stdin cannot be read. */
static int open_input(const char *cmd, const char *dir, struct dsi_tokenizer **t, char **in, size_t *len) {
    if (!dir) {
        fprintf(stderr, "dsinfer %s: --model DIR is required\n", cmd);
        return DSI_EXIT_USAGE;
    }
    char *err = NULL;
    int rc = dsi_tok_load(dir, t, &err);
    if (rc) {
        fprintf(stderr, "dsinfer %s: %s (is --model a model directory with tokenizer.json?)\n", cmd,
                err ? err : dsi_strerror(rc));
        free(err);
        return DSI_EXIT_FAIL;
    }
    if ((rc = read_stdin(in, len))) {
        fprintf(stderr, "dsinfer %s: cannot read stdin: %s\n", cmd, dsi_strerror(rc));
        dsi_tok_free(*t);
        *t = NULL;
        return DSI_EXIT_FAIL;
    }
    return DSI_EXIT_OK;
}

int dsi_cmd_tokenize(int argc, char **argv) {
    const char *model = NULL;
    bool json = false, bos = false, special = true;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--model") && i + 1 < argc)
            model = argv[++i];
        else if (!strcmp(argv[i], "--json"))
            json = true;
        else if (!strcmp(argv[i], "--bos"))
            bos = true;
        else if (!strcmp(argv[i], "--no-special"))
            special = false;
        else
            return other_option("tokenize", "--model DIR [--json] [--bos] [--no-special] < text", argv[i]);
    }
    struct dsi_tokenizer *t = NULL;
    char *text = NULL, *err = NULL;
    size_t len = 0, n = 0;
    int st = open_input("tokenize", model, &t, &text, &len);
    if (st) return st;
    int32_t *ids = NULL;
    int status = DSI_EXIT_FAIL;
    int rc;
    if ((rc = dsi_tok_encode(t, text, len, special, &ids, &n, &err))) {
        fprintf(stderr, "dsinfer tokenize: %s\n", err ? err : dsi_strerror(rc));
        goto out;
    }
    int32_t b = dsi_tok_bos(t);
    if (bos && b < 0) {
        fprintf(stderr, "dsinfer tokenize: --bos given but the model has no BOS token (tokenizer_config.json)\n");
        goto out;
    }
    if (json) printf("{\"ids\": ");
    printf("[");
    if (bos) printf("%d%s", b, n ? "," : "");
    for (size_t i = 0; i < n; i++) printf("%s%d", i ? "," : "", ids[i]);
    printf("]");
    if (json) {
        printf(", \"count\": %zu, \"tokens\": [", n + (bos ? 1 : 0));
        for (size_t i = 0; i < n + (bos ? 1 : 0); i++) {
            int32_t id = bos ? (i == 0 ? b : ids[i - 1]) : ids[i];
            char *piece = NULL;
            if (dsi_tok_decode(t, &id, 1, false, &piece, NULL, NULL) != 0) goto out;
            cJSON *s = cJSON_CreateString(piece);
            char *enc = s ? cJSON_PrintUnformatted(s) : NULL;
            printf("%s%s", i ? ", " : "", enc ? enc : "\"\"");
            free(enc);
            cJSON_Delete(s);
            free(piece);
        }
        printf("]}");
    }
    printf("\n");
    status = fflush(stdout) == 0 ? DSI_EXIT_OK : DSI_EXIT_FAIL;
out:
    free(err);
    free(ids);
    free(text);
    dsi_tok_free(t);
    return status;
}

/* Appends id to *ids (*n of them, room for *cap); DSI_ENOMEM leaves them as they were. */
static int push_id(int32_t **ids, size_t *n, size_t *cap, int32_t id) {
    int32_t *g = dsi_grow(*ids, *n, cap, sizeof *g, 64);
    if (!g) return DSI_ENOMEM;
    *ids = g;
    g[(*n)++] = id;
    return 0;
}

/* Parses "[1, 2]" or "1,2 3" into ids; on error prints why and returns nonzero. */
static int parse_ids(const char *s, int32_t **out, size_t *n_out) {
    size_t cap = 64, n = 0;
    int32_t *ids = malloc(cap * sizeof *ids);
    if (!ids) return DSI_ENOMEM;
    const char *p = s;
    while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r') p++;
    if (*p == '[') {
        cJSON *a = cJSON_Parse(p);
        if (!cJSON_IsArray(a)) {
            fprintf(stderr, "dsinfer detokenize: stdin starts with '[' but is not a JSON array\n");
            cJSON_Delete(a);
            free(ids);
            return DSI_EFORMAT;
        }
        for (const cJSON *c = a->child; c; c = c->next) {
            if (!cJSON_IsNumber(c) || c->valuedouble != (double)(int32_t)c->valuedouble) {
                fprintf(stderr, "dsinfer detokenize: element %zu of the array is not an integer id\n", n);
                cJSON_Delete(a);
                free(ids);
                return DSI_EFORMAT;
            }
            if (push_id(&ids, &n, &cap, (int32_t)c->valuedouble)) {
                cJSON_Delete(a);
                free(ids);
                return DSI_ENOMEM;
            }
        }
        cJSON_Delete(a);
    } else {
        while (*p) {
            while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r' || *p == ',') p++;
            if (!*p) break;
            char *end;
            errno = 0;
            long v = strtol(p, &end, 10);
            if (end == p || errno || v < INT32_MIN || v > INT32_MAX ||
                (*end && *end != ' ' && *end != '\t' && *end != '\n' && *end != '\r' && *end != ',')) {
                int w = (int)strcspn(p, " \t\r\n,");
                fprintf(stderr, "dsinfer detokenize: '%.*s' is not an integer id (want \"[1,2,3]\" or \"1 2 3\")\n",
                        w > 20 ? 20 : w, p);
                free(ids);
                return DSI_EFORMAT;
            }
            if (push_id(&ids, &n, &cap, (int32_t)v)) {
                free(ids);
                return DSI_ENOMEM;
            }
            p = end;
        }
    }
    *out = ids;
    *n_out = n;
    return 0;
}

int dsi_cmd_detokenize(int argc, char **argv) {
    const char *model = NULL;
    bool skip = false;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--model") && i + 1 < argc)
            model = argv[++i];
        else if (!strcmp(argv[i], "--skip-special"))
            skip = true;
        else
            return other_option("detokenize", "--model DIR [--skip-special] < ids", argv[i]);
    }
    struct dsi_tokenizer *t = NULL;
    char *in = NULL, *text = NULL, *err = NULL;
    size_t len = 0, n = 0;
    int st = open_input("detokenize", model, &t, &in, &len);
    if (st) return st;
    int32_t *ids = NULL;
    int status = DSI_EXIT_FAIL;
    int rc;
    if (strlen(in) != len) {
        fprintf(stderr, "dsinfer detokenize: stdin contains a NUL byte; want token ids\n");
        goto out;
    }
    if (parse_ids(in, &ids, &n)) goto out;
    if ((rc = dsi_tok_decode(t, ids, n, skip, &text, &len, &err))) {
        fprintf(stderr, "dsinfer detokenize: %s\n", err ? err : dsi_strerror(rc));
        goto out;
    }
    if (fwrite(text, 1, len, stdout) == len && fflush(stdout) == 0) status = DSI_EXIT_OK;
out:
    free(err);
    free(ids);
    free(text);
    free(in);
    dsi_tok_free(t);
    return status;
}
