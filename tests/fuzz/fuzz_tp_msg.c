/*
 * fuzz_tp_msg.c: libFuzzer target for the tensor-parallel control messages a worker
 * rank receives (src/parallel/wire.c): header check, forward-batch decode and create
 * decode, on arbitrary words. A decoded batch must pass the sender-side check too,
 * since both enforce the same limits; an accepted create message must encode back
 * to the same words' meaning.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "dsinfer/parallel.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *err = NULL;
    if (size >= DSI_TP_HDR_WORDS * 4) {
        uint32_t hdr[DSI_TP_HDR_WORDS];
        memcpy(hdr, data, sizeof hdr);
        dsi_tp_hdr_check(hdr, 1u << 20, &err);
        free(err);
        err = NULL;
    }
    size_t n_words = size / 4;
    int32_t *words = malloc(n_words ? n_words * 4 : 4);
    if (!words) return 0;
    if (n_words) memcpy(words, data, n_words * 4);

    struct dsi_tp_limits lim = {.max_tokens = 64,
                                .max_ctx = 256,
                                .block_size = 16,
                                .n_kv_blocks = 64,
                                .vocab_size = 512,
                                .max_seqs = 8};
    struct dsi_batch_seq seqs[8];
    struct dsi_batch b;
    if (dsi_tp_batch_decode(words, n_words, &lim, seqs, &b, &err) == 0) {
        char *err2 = NULL;
        if (dsi_tp_batch_check(&b, &lim, &err2) != 0) abort(); /* decode accepted what check refuses */
        free(err2);
    }
    free(err);
    err = NULL;

    /* an accepted create message must survive encode -> decode unchanged */
    struct dsi_tp_create c, c2;
    if (dsi_tp_create_decode(words, n_words, &c, &err) == 0) {
        int32_t again[DSI_TP_CREATE_WORDS];
        size_t n2 = 0;
        if (dsi_tp_create_encode(&c, again, &n2, NULL) != 0 || n2 != n_words ||
            dsi_tp_create_decode(again, n2, &c2, NULL) != 0 || c2.backend != c.backend ||
            c2.opts.max_seqs != c.opts.max_seqs || c2.opts.kv_gpu_fraction != c.opts.kv_gpu_fraction ||
            memcmp(c2.nccl_id, c.nccl_id, sizeof c.nccl_id) || strcmp(c2.dir, c.dir))
            abort();
    }
    free(err);
    free(words);
    return 0;
}
