/*
 * tok_bench.c: single-thread encode throughput of the tokenizer, in MB/s.
 *
 *   build/tok_bench [--model DIR] [--corpus FILE] [--bytes N] [--reps N]
 *
 * The text is the one scripts/gen_tok_golden.py's bench_text() times HF tokenizers
 * on: the golden corpus texts in order, cycled, each followed by "\n", until N bytes
 * (default 10,000,000). Modes: "loop" encodes each piece with its own call (HF:
 * encode() in a loop / encode_batch with one thread), "whole" encodes the joined text
 * in one call. The token count of "whole" must equal HF's (bench.txt) and is printed
 * so the two runs can be checked to have done the same work. Each mode runs --reps
 * times (default 3); the first run starts with a cold word cache and is reported
 * separately from the best. Times are the thread's CPU time.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cjson/cJSON.h>

#include "dsinfer/tok.h"

/* Thread CPU time, not wall time: the development machine is shared and busy, and
 * CPU time is what single-thread throughput means. On an idle machine they agree. */
static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static char *slurp(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = n >= 0 ? malloc((size_t)n + 1) : NULL;
    if (b && fread(b, 1, (size_t)n, f) != (size_t)n) {
        free(b);
        b = NULL;
    }
    if (b) b[n] = 0;
    fclose(f);
    return b;
}

int main(int argc, char **argv) {
    const char *model = "tests/data/tokenizers/deepseek-v3", *corpus = "tests/golden/tok/corpus.jsonl";
    size_t want = 10 * 1000 * 1000;
    int reps = 3;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--model") == 0 && i + 1 < argc) model = argv[++i];
        else if (strcmp(argv[i], "--corpus") == 0 && i + 1 < argc) corpus = argv[++i];
        else if (strcmp(argv[i], "--bytes") == 0 && i + 1 < argc) want = strtoull(argv[++i], NULL, 10);
        else if (strcmp(argv[i], "--reps") == 0 && i + 1 < argc) reps = atoi(argv[++i]);
        else {
            fprintf(stderr, "usage: tok_bench [--model DIR] [--corpus FILE] [--bytes N] [--reps N]\n");
            return 2;
        }
    }
    if (reps < 1) reps = 1;
    char *js = slurp(corpus);
    if (!js) {
        fprintf(stderr, "tok_bench: cannot read %s\n", corpus);
        return 1;
    }
    /* Corpus texts, in file order. */
    size_t nt = 0, capt = 512;
    char **texts = malloc(capt * sizeof *texts);
    for (char *line = js; line && *line;) {
        char *nl = strchr(line, '\n');
        if (nl) *nl = 0;
        cJSON *o = cJSON_Parse(line);
        cJSON *tx = cJSON_GetObjectItem(o, "text");
        if (cJSON_IsString(tx)) {
            if (nt == capt) texts = realloc(texts, (capt *= 2) * sizeof *texts);
            texts[nt++] = strdup(tx->valuestring);
        }
        cJSON_Delete(o);
        line = nl ? nl + 1 : NULL;
    }
    free(js);
    if (nt == 0) {
        fprintf(stderr, "tok_bench: no texts in %s\n", corpus);
        return 1;
    }
    /* The bench text: pieces = text + "\n", cycled, until `want` bytes. */
    size_t np = 0, capp = 1024, total = 0;
    size_t *off = malloc(capp * sizeof *off), *len = malloc(capp * sizeof *len);
    size_t cap_all = want + (1 << 20);
    char *all = malloc(cap_all);
    for (size_t i = 0; total < want; i++) {
        const char *t = texts[i % nt];
        size_t l = strlen(t) + 1;
        if (total + l > cap_all) all = realloc(all, cap_all = (total + l) * 2);
        if (np == capp) {
            capp *= 2;
            off = realloc(off, capp * sizeof *off);
            len = realloc(len, capp * sizeof *len);
        }
        memcpy(all + total, t, l - 1);
        all[total + l - 1] = '\n';
        off[np] = total;
        len[np++] = l;
        total += l;
    }
    struct dsi_tokenizer *tok = NULL;
    char *err = NULL;
    double t0 = now_s();
    if (dsi_tok_load(model, &tok, &err) != 0) {
        fprintf(stderr, "tok_bench: %s\n", err ? err : "load failed");
        return 1;
    }
    double load_s = now_s() - t0;
    printf("model %s: load %.3f s; text %zu bytes in %zu pieces\n", model, load_s, total, np);
    for (int mode = 0; mode < 2; mode++) {
        double first = 0, best = 1e30;
        size_t tokens = 0;
        for (int r = 0; r < reps; r++) {
            tokens = 0;
            t0 = now_s();
            if (mode == 0) {
                for (size_t p = 0; p < np; p++) {
                    int32_t *ids = NULL;
                    size_t n = 0;
                    if (dsi_tok_encode(tok, all + off[p], len[p], true, &ids, &n, NULL) != 0) {
                        fprintf(stderr, "tok_bench: encode failed on piece %zu\n", p);
                        return 1;
                    }
                    tokens += n;
                    free(ids);
                }
            } else {
                int32_t *ids = NULL;
                if (dsi_tok_encode(tok, all, total, true, &ids, &tokens, NULL) != 0) {
                    fprintf(stderr, "tok_bench: encode failed\n");
                    return 1;
                }
                free(ids);
            }
            double s = now_s() - t0;
            if (r == 0) first = s;
            if (s < best) best = s;
        }
        printf("%-5s tokens=%zu first=%.2f MB/s best=%.2f MB/s (%d reps)\n", mode == 0 ? "loop" : "whole", tokens,
               total / first / 1e6, total / best / 1e6, reps);
    }
    dsi_tok_free(tok);
    for (size_t i = 0; i < nt; i++) free(texts[i]);
    free(texts);
    free(all);
    free(off);
    free(len);
    return 0;
}
