/* test_tok_util.h: where the tokenizer tests find their tokenizers and goldens,
 * and how they load one. */
#ifndef DSI_TEST_TOK_UTIL_H
#define DSI_TEST_TOK_UTIL_H

#include <stdio.h>
#include <stdlib.h>

#include "dsinfer/err.h"
#include "dsinfer/tok.h"

#define TOKDIR "tests/data/tokenizers/"
#define GOLDEN "tests/golden/tok/"

/* TOKDIR/name's tokenizer, or NULL with the reason on stderr. */
static inline struct dsi_tokenizer *load_dir(const char *name) {
    char path[256], *err = NULL;
    struct dsi_tokenizer *t = NULL;
    snprintf(path, sizeof path, TOKDIR "%s", name);
    int rc = dsi_tok_load(path, &t, &err);
    if (rc) fprintf(stderr, "  load %s: %s\n", name, err ? err : dsi_strerror(rc));
    free(err);
    return t;
}

#endif
