/*
 * fuzz_grammar.c: libFuzzer target for the JSON Schema compiler and the matcher.
 * The input is split at the first NUL: a schema, then bytes fed to a matcher of
 * the compiled grammar one at a time. Compilation must fail cleanly or give a
 * grammar whose matcher never crashes, and a rejected byte must leave the state as
 * it was (accept is all or nothing). When the bytes to feed start with 'f', the
 * schema is compiled as two prefixed alternatives instead ("f\n```json\n" and
 * "fg\n" before it: dsi_grammar_compile_prefixed, a chat format's tool-call
 * syntax), so the raw-text sequence frames get the same checks. With 'r' they
 * are repeated (dsi_grammar_compile_repeated, at most 3, separated by ";" + a
 * token reference and ended by the reference of token 1; alternatives "r\n" and
 * "rg\n" before the schema), so the repetition's
 * forks and its end get them too; a finished matcher must refuse every byte.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "dsinfer/grammar.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const uint8_t *nul = memchr(data, 0, size);
    size_t slen = nul ? (size_t)(nul - data) : size;
    struct dsi_grammar *g = NULL;
    char *err = NULL;
    char *schema = malloc(slen + 1);
    if (!schema) return 0;
    memcpy(schema, data, slen);
    schema[slen] = 0;
    uint8_t mode = nul && (size_t)(nul - data) + 1 < size ? nul[1] : 0;
    const struct dsi_grammar_alt alts[2] = {{"f\n```json\n", schema}, {"fg\n", schema}};
    const struct dsi_grammar_alt ralts[2] = {{"r\n", schema}, {"rg\n", schema}};
    char sep[8] = ";", end[8] = {0};
    dsi_grammar_token_ref(0, sep + 1);
    dsi_grammar_token_ref(1, end);
    int rc = mode == 'f'   ? dsi_grammar_compile_prefixed(alts, 2, &g, &err)
             : mode == 'r' ? dsi_grammar_compile_repeated(ralts, 2, sep, end, 3, &g, &err)
                           : dsi_grammar_compile((const char *)data, slen, &g, &err);
    free(schema);
    free(err);
    if (rc) {
        if (g) abort();
        return 0;
    }
    struct dsi_grammar_matcher *m = NULL;
    if (dsi_grammar_matcher_create(g, 2, &m)) abort();
    const uint8_t *in = nul ? nul + 1 : data + size;
    size_t n = (size_t)(data + size - in);
    for (size_t i = 0; i < n; i++) {
        bool before = dsi_grammar_matcher_complete(m);
        if (dsi_grammar_matcher_finished(m) && dsi_grammar_matcher_check(m, (const char *)in + i, 1)) abort();
        if (dsi_grammar_matcher_accept(m, (const char *)in + i, 1)) {
            if (dsi_grammar_matcher_complete(m) != before) abort();
            if (dsi_grammar_matcher_check(m, (const char *)in + i, 1)) abort();
        }
    }
    dsi_grammar_matcher_destroy(m);
    dsi_grammar_destroy(g);
    return 0;
}
