/*
 * grammar_bench.c: cost of one vocabulary mask (src/grammar) at the 152k Qwen2
 * vocabulary, on the CPU, single thread.
 *
 *   build/grammar_bench [--tokenizer DIR] [--reps N]
 *
 * Cold: the matcher's cache is off, so every mask walks the trie; one row per
 * kind of state (what the walk costs depends on how much of the trie stays
 * viable: little at structure, nearly all inside a string). Warm: a generation-like
 * run that feeds a fixed JSON document token by token (the tokenizer's own
 * encoding) and takes a mask before each token with the cache on (16 entries), as
 * the engine does; it reports the mean and the worst step. Times are thread CPU
 * time (the development machine is shared).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "dsinfer/grammar.h"
#include "dsinfer/tok.h"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static const char *SCHEMA =
    "{\"type\":\"object\",\"properties\":{\"name\":{\"type\":\"string\"},\"summary\":{\"type\":\"string\","
    "\"maxLength\":200},\"priority\":{\"enum\":[\"low\",\"medium\",\"high\"]},\"score\":{\"type\":\"number\"},"
    "\"tags\":{\"type\":\"array\",\"items\":{\"type\":\"string\"}}},\"required\":[\"name\",\"summary\","
    "\"priority\",\"score\",\"tags\"],\"additionalProperties\":false}";
static const char *DOC = "{\"name\":\"Printer on floor 3 is out of toner\",\"summary\":\"The shared printer "
                         "reports low toner since Monday; replacement cartridge requested.\",\"priority\":"
                         "\"medium\",\"score\":0.875,\"tags\":[\"hardware\",\"printer\",\"facilities\"]}";

int main(int argc, char **argv) {
    const char *dir = "tests/data/tokenizers/qwen2";
    int reps = 5;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--tokenizer") && i + 1 < argc) dir = argv[++i];
        else if (!strcmp(argv[i], "--reps") && i + 1 < argc) reps = atoi(argv[++i]);
        else {
            fprintf(stderr, "usage: grammar_bench [--tokenizer DIR] [--reps N]\n");
            return 2;
        }
    }
    struct dsi_tokenizer *t = NULL;
    char *err = NULL;
    if (dsi_tok_load(dir, &t, &err)) {
        fprintf(stderr, "grammar_bench: %s\n", err ? err : "load failed");
        return 1;
    }
    int nv = dsi_tok_vocab_size(t);
    double t0 = now_s();
    struct dsi_token_trie *tr = NULL;
    if (dsi_token_trie_create(t, &tr, &err)) return 1;
    printf("vocab %d, trie built in %.1f ms\n", nv, (now_s() - t0) * 1e3);
    struct dsi_grammar *g = NULL;
    if (dsi_grammar_compile(SCHEMA, strlen(SCHEMA), &g, &err)) {
        fprintf(stderr, "grammar_bench: %s\n", err);
        return 1;
    }
    uint32_t *mask = calloc((size_t)(nv + 31) / 32, sizeof *mask);
    static const struct {
        const char *what, *prefix;
    } states[] = {
        {"start", ""},
        {"key", "{\"na"},
        {"in string", "{\"name\":\"Printer on"},
        {"in string, maxLength", "{\"name\":\"x\",\"summary\":\"The shared"},
        {"enum", "{\"name\":\"x\",\"summary\":\"y\",\"priority\":\"me"},
        {"number", "{\"name\":\"x\",\"summary\":\"y\",\"priority\":\"low\",\"score\":0.8"},
        {"array item", "{\"name\":\"x\",\"summary\":\"y\",\"priority\":\"low\",\"score\":1,\"tags\":[\"a\","},
    };
    printf("%-24s %10s %10s\n", "cold state", "allowed", "ms/mask");
    for (size_t s = 0; s < sizeof states / sizeof *states; s++) {
        struct dsi_grammar_matcher *m = NULL;
        dsi_grammar_matcher_create(g, 0, &m);
        if (dsi_grammar_matcher_accept(m, states[s].prefix, strlen(states[s].prefix))) return 1;
        int allowed = 0;
        double best = 1e9;
        for (int r = 0; r < reps; r++) {
            double a = now_s();
            allowed = dsi_grammar_mask(m, tr, mask, nv);
            double dt = now_s() - a;
            if (dt < best) best = dt;
        }
        printf("%-24s %10d %10.3f\n", states[s].what, allowed, best * 1e3);
        dsi_grammar_matcher_destroy(m);
    }
    int32_t *ids = NULL;
    size_t n_ids = 0;
    if (dsi_tok_encode(t, DOC, strlen(DOC), false, &ids, &n_ids, &err)) return 1;
    double total = 0, worst = 0;
    for (int r = 0; r < reps; r++) {
        struct dsi_grammar_matcher *m = NULL;
        dsi_grammar_matcher_create(g, 16, &m);
        for (size_t i = 0; i < n_ids; i++) {
            double a = now_s();
            dsi_grammar_mask(m, tr, mask, nv);
            double dt = now_s() - a;
            total += dt;
            if (dt > worst) worst = dt;
            const char *b;
            size_t l;
            dsi_tok_token_bytes(t, ids[i], &b, &l, NULL);
            if (!(mask[ids[i] >> 5] >> (ids[i] & 31) & 1) || dsi_grammar_matcher_accept(m, b, l)) {
                fprintf(stderr, "grammar_bench: the document's token %zu is not allowed\n", i);
                return 1;
            }
        }
        dsi_grammar_matcher_destroy(m);
    }
    printf("warm run: %zu tokens x %d, mean %.3f ms/mask, worst %.3f ms\n", n_ids, reps,
           total / (double)(n_ids * (size_t)reps) * 1e3, worst * 1e3);
    free(ids);
    free(mask);
    dsi_grammar_destroy(g);
    dsi_token_trie_destroy(tr);
    dsi_tok_free(t);
    return 0;
}
