/*
 * bench_wenc.c: AES-256-GCM throughput of the weights-at-rest format
 * (include/dsinfer/wenc.h) in memory: encrypt once, then decrypt --repeat
 * times with --threads threads. Prints GB/s by wall clock and GB per
 * CPU-second (process CPU time), the per-core figure that stays meaningful
 * on a shared, loaded machine.
 *
 *   build/bench_wenc [--mib 256] [--threads 1] [--repeat 5]
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "dsinfer/wenc.h"

static double clk(clockid_t id) {
    struct timespec ts;
    clock_gettime(id, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    long mib = 256, threads = 1, repeat = 5;
    for (int i = 1; i + 1 < argc; i += 2) {
        long v = strtol(argv[i + 1], NULL, 10);
        if (!strcmp(argv[i], "--mib")) mib = v;
        else if (!strcmp(argv[i], "--threads")) threads = v;
        else if (!strcmp(argv[i], "--repeat")) repeat = v;
    }
    if (mib < 1 || mib > 65536 || threads < 1 || threads > 256 || repeat < 1) {
        fprintf(stderr, "usage: bench_wenc [--mib 1..65536] [--threads 1..256] [--repeat N]\n");
        return 2;
    }
    size_t n = (size_t)mib << 20;
    uint64_t cap;
    dsi_wenc_sealed_size(n, DSI_WENC_CHUNK_DEFAULT, &cap);
    uint8_t *p = malloc(n), *e = malloc(cap), *o = malloc(n);
    if (!p || !e || !o) return 1;
    for (size_t i = 0; i < n; i++)
        p[i] = (uint8_t)(i * 2654435761u >> 13);
    struct dsi_wenc_key k;
    uint8_t raw[DSI_WENC_KEY_LEN];
    memset(raw, 7, sizeof raw);
    dsi_wenc_key_set(&k, raw);
    size_t el = 0, got = 0;
    char *err = NULL;
    memset(e, 0, cap); /* fault the pages in outside the timing */
    double w0 = clk(CLOCK_MONOTONIC), c0 = clk(CLOCK_PROCESS_CPUTIME_ID);
    if (dsi_wenc_encrypt_mem(&k, p, n, DSI_WENC_CHUNK_DEFAULT, e, cap, &el, &err)) {
        fprintf(stderr, "encrypt: %s\n", err ? err : "?");
        return 1;
    }
    double ew = clk(CLOCK_MONOTONIC) - w0, ec = clk(CLOCK_PROCESS_CPUTIME_ID) - c0;
    memset(o, 0, n); /* fault the pages in outside the timing */
    double bw = 0, bc = 0;
    for (long r = 0; r < repeat; r++) {
        w0 = clk(CLOCK_MONOTONIC), c0 = clk(CLOCK_PROCESS_CPUTIME_ID);
        if (dsi_wenc_decrypt_mem(&k, e, el, o, n, &got, (int)threads, "bench", &err) || got != n) {
            fprintf(stderr, "decrypt: %s\n", err ? err : "?");
            return 1;
        }
        double w = clk(CLOCK_MONOTONIC) - w0, c = clk(CLOCK_PROCESS_CPUTIME_ID) - c0;
        if (r == 0 || w < bw) bw = w;
        if (r == 0 || c < bc) bc = c;
    }
    if (memcmp(o, p, n)) {
        fprintf(stderr, "decrypt: plaintext differs\n");
        return 1;
    }
    printf("bench_wenc: %ld MiB, chunk 4 MiB, %ld thread(s), best of %ld\n", mib, threads, repeat);
    printf("encrypt  %.2f GB/s wall  %.2f GB/s per CPU-second\n", n / 1e9 / ew, n / 1e9 / ec);
    printf("decrypt  %.2f GB/s wall  %.2f GB/s per CPU-second\n", n / 1e9 / bw, n / 1e9 / bc);
    dsi_wenc_key_wipe(&k);
    free(p), free(e), free(o);
    return 0;
}
