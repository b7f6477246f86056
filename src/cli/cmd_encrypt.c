/*
 * cmd_encrypt.c: `dsinfer encrypt|decrypt --key-file K SRC DST`, model
 * directories encrypted at rest (include/dsinfer/wenc.h).
 *
 * encrypt verifies SRC's SHA256SUMS when it has one, writes every file under
 * DST encrypted, and DST/SHA256SUMS over the encrypted files (so `dsinfer
 * verify DST` needs no key); it prints the SHA-256 of that SHA256SUMS for
 * manifest_sha256. --new-key creates K (0600, 64 hex digits) first. decrypt
 * verifies SRC, then writes the plaintext files (0600) and their SHA256SUMS.
 * The key is wiped before exit and never printed.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "dsinfer/crypto.h"
#include "dsinfer/err.h"
#include "dsinfer/wenc.h"

struct enc_args {
    const char *key_file, *src, *dst;
    int n_threads;
    bool new_key;
};

static int parse(const char *cmd, int argc, char **argv, struct enc_args *a) {
    memset(a, 0, sizeof *a);
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--key-file") && i + 1 < argc) {
            a->key_file = argv[++i];
        } else if (!strcmp(argv[i], "--threads") && i + 1 < argc) {
            if (dsi__cli_parse_threads(cmd, argv[++i], &a->n_threads)) return -1;
        } else if (!strcmp(cmd, "encrypt") && !strcmp(argv[i], "--new-key")) {
            a->new_key = true;
        } else if (argv[i][0] == '-' || (a->src && a->dst)) {
            fprintf(stderr, "dsinfer %s: unexpected argument '%s'\n", cmd, argv[i]);
            return -1;
        } else if (!a->src) {
            a->src = argv[i];
        } else {
            a->dst = argv[i];
        }
    }
    if (!a->key_file || !a->src || !a->dst) {
        fprintf(stderr, "usage: dsinfer %s --key-file K%s [--threads N] SRC DST\n", cmd,
                !strcmp(cmd, "encrypt") ? " [--new-key]" : "");
        return -1;
    }
    return 0;
}

static int run(const char *cmd, int argc, char **argv, bool enc) {
    struct enc_args a;
    if (parse(cmd, argc, argv, &a)) return DSI_EXIT_USAGE;
    char *err = NULL;
    struct dsi_wenc_key k;
    int rc = a.new_key ? dsi_wenc_key_generate(a.key_file, &err) : 0;
    if (!rc) rc = dsi_wenc_key_load(a.key_file, &k, &err);
    if (!rc) {
        rc = enc ? dsi_wenc_encrypt_dir(&k, a.src, a.dst, a.n_threads, &err)
                 : dsi_wenc_decrypt_dir(&k, a.src, a.dst, a.n_threads, &err);
        dsi_wenc_key_wipe(&k);
    }
    if (rc) {
        fprintf(stderr, "dsinfer %s: %s\n", cmd, err ? err : dsi_strerror(rc));
        free(err);
        return DSI_EXIT_FAIL;
    }
    size_t dl = strlen(a.dst);
    char *mf = malloc(dl + sizeof "/SHA256SUMS");
    uint8_t d[DSI_SHA256_LEN];
    char hex[DSI_SHA256_HEX_LEN + 1] = "?";
    if (mf) {
        memcpy(mf, a.dst, dl);
        memcpy(mf + dl, "/SHA256SUMS", sizeof "/SHA256SUMS");
        if (dsi_sha256_file(mf, 0, d, NULL, NULL) == 0) dsi_hex_encode(d, sizeof d, hex);
        free(mf);
    }
    printf("OK %s -> %s (%s); SHA256SUMS sha256 %s\n", a.src, a.dst, enc ? "encrypted" : "decrypted", hex);
    return DSI_EXIT_OK;
}

int dsi_cmd_encrypt(int argc, char **argv) { return run("encrypt", argc, argv, true); }
int dsi_cmd_decrypt(int argc, char **argv) { return run("decrypt", argc, argv, false); }
