/*
 * test_parallel_wire.c: the tensor-parallel control messages (parallel.h) as a worker
 * sees them: round trips, and every kind of malformed header, forward and create
 * message rejected with DSI_EFORMAT (never a read past the words given, never a
 * block id, token or position outside the agreed limits). Also the split rules:
 * a rank count that does not divide the heads, and int8 groups that would
 * straddle ranks, are clear errors. No MPI needed: these are plain functions.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "dsinfer/parallel.h"
#include "dsinfer/err.h"
#include "test.h"

static const struct dsi_tp_limits lim = {
    .max_tokens = 8, .max_ctx = 64, .block_size = 16, .n_kv_blocks = 10, .vocab_size = 100, .max_seqs = 4};

/* Two sequences: a 3-token prefill at 0 and a decode token at 20. */
static size_t encode_sample(int32_t *w, size_t cap) {
    static const int32_t t0[] = {5, 6, 7}, t1[] = {42};
    static const int32_t b0[] = {3, 9, 9, 9}, b1[] = {1, 2};
    struct dsi_batch_seq s[2] = {
        {.seq_id = 0x100000007ull,
         .tokens = t0,
         .n_tokens = 3,
         .pos = 0,
         .block_table = b0,
         .n_blocks = 4,
         .want_logits = true},
        {.seq_id = 9, .tokens = t1, .n_tokens = 1, .pos = 20, .block_table = b1, .n_blocks = 2}};
    struct dsi_batch b = {.seqs = s, .n_seqs = 2};
    size_t n = 0;
    char *err = NULL;
    CHECK_EQ_INT(dsi_tp_batch_check(&b, &lim, &err), 0);
    CHECK_EQ_INT(dsi_tp_batch_encode(&b, lim.block_size, w, cap, &n, &err), 0);
    CHECK(err == NULL);
    return n;
}

TEST(batch_roundtrip) {
    int32_t w[64];
    size_t n = encode_sample(w, 64);
    /* 1 + (6+3+1) + (6+1+2): only the blocks a step touches travel */
    CHECK_EQ_INT(n, 20);
    struct dsi_batch_seq seqs[4];
    struct dsi_batch b;
    char *err = NULL;
    CHECK_EQ_INT(dsi_tp_batch_decode(w, n, &lim, seqs, &b, &err), 0);
    CHECK_EQ_INT(b.n_seqs, 2);
    CHECK(b.seqs[0].seq_id == 0x100000007ull);
    CHECK_EQ_INT(b.seqs[0].n_tokens, 3);
    CHECK_EQ_INT(b.seqs[0].tokens[2], 7);
    CHECK_EQ_INT(b.seqs[0].n_blocks, 1);
    CHECK_EQ_INT(b.seqs[0].block_table[0], 3);
    CHECK(b.seqs[0].want_logits);
    CHECK_EQ_INT(b.seqs[1].pos, 20);
    CHECK_EQ_INT(b.seqs[1].n_blocks, 2);
    CHECK_EQ_INT(b.seqs[1].block_table[1], 2);
    CHECK(!b.seqs[1].want_logits);
    free(err);
}

TEST(batch_encode_buffer_short) {
    int32_t w[64];
    size_t n = 0;
    char *err = NULL;
    static const int32_t t[] = {1, 2, 3}, bl[] = {0};
    struct dsi_batch_seq s = {.tokens = t, .n_tokens = 3, .block_table = bl, .n_blocks = 1};
    struct dsi_batch b = {.seqs = &s, .n_seqs = 1};
    CHECK_EQ_INT(dsi_tp_batch_encode(&b, 16, w, 5, &n, &err), DSI_ENOBUFS);
    free(err);
}

/* Decodes words with one word changed; returns the code. */
static int decode_mut(size_t idx, int32_t val, size_t n_override) {
    int32_t w[64];
    size_t n = encode_sample(w, 64);
    if (idx < n) w[idx] = val;
    struct dsi_batch_seq seqs[4];
    struct dsi_batch b;
    char *err = NULL;
    int rc = dsi_tp_batch_decode(w, n_override ? n_override : n, &lim, seqs, &b, &err);
    if (rc) {
        CHECK(err != NULL);
        CHECK(b.n_seqs == 0 && b.seqs == NULL);
    }
    free(err);
    return rc;
}

TEST(batch_malformed_rejected) {
    CHECK_EQ_INT(decode_mut(0, -1, 0), DSI_EFORMAT);         /* negative n_seqs */
    CHECK_EQ_INT(decode_mut(0, 5, 0), DSI_EFORMAT);          /* more seqs than max_seqs */
    CHECK_EQ_INT(decode_mut(0, 3, 0), DSI_EFORMAT);          /* claims a third sequence: truncated */
    CHECK_EQ_INT(decode_mut(0, 1, 0), DSI_EFORMAT);          /* trailing words */
    CHECK_EQ_INT(decode_mut(3, 0, 0), DSI_EFORMAT);          /* zero tokens */
    CHECK_EQ_INT(decode_mut(3, 1 << 30, 0), DSI_EFORMAT);    /* huge token count */
    CHECK_EQ_INT(decode_mut(4, -5, 0), DSI_EFORMAT);         /* negative position */
    CHECK_EQ_INT(decode_mut(4, 62, 0), DSI_EFORMAT);         /* runs past max_ctx */
    CHECK_EQ_INT(decode_mut(5, -1, 0), DSI_EFORMAT);         /* negative block count */
    CHECK_EQ_INT(decode_mut(5, 0x7fffffff, 0), DSI_EFORMAT); /* block count past the end */
    CHECK_EQ_INT(decode_mut(6, 2, 0), DSI_EFORMAT);          /* want_logits not 0/1 */
    CHECK_EQ_INT(decode_mut(7, 100, 0), DSI_EFORMAT);        /* token == vocab */
    CHECK_EQ_INT(decode_mut(7, -1, 0), DSI_EFORMAT);         /* negative token */
    CHECK_EQ_INT(decode_mut(10, 10, 0), DSI_EFORMAT);        /* block id == n_kv_blocks */
    CHECK_EQ_INT(decode_mut(10, -3, 0), DSI_EFORMAT);        /* negative block id */
    CHECK_EQ_INT(decode_mut(99, 0, 19), DSI_EFORMAT);        /* last word missing */
    CHECK_EQ_INT(decode_mut(99, 0, 0), 0);                   /* unchanged: fine */
    /* too few blocks for the positions: decode token at 20 needs 2 blocks */
    CHECK_EQ_INT(decode_mut(15, 1, 0), DSI_EFORMAT);
}

TEST(batch_at_limits_fits_max_words) {
    /* one sequence with every token of a step, and max_seqs sequences at the end
     * of the context: both fit the buffer dsi_tp_batch_max_words sizes */
    size_t cap = 0;
    CHECK_EQ_INT(dsi_tp_batch_max_words(&lim, &cap), 0);
    CHECK_EQ_INT(cap, 1 + 4 * 6 + 8 + 4 * 4);
    int32_t *w = malloc(cap * sizeof *w);
    static const int32_t t[8] = {1, 2, 3, 4, 5, 6, 7, 8}, bl[4] = {0, 1, 2, 3};
    struct dsi_batch_seq one = {.tokens = t, .n_tokens = 8, .pos = 56, .block_table = bl, .n_blocks = 4};
    struct dsi_batch b = {.seqs = &one, .n_seqs = 1};
    size_t n = 0;
    char *err = NULL;
    CHECK_EQ_INT(dsi_tp_batch_check(&b, &lim, &err), 0);
    CHECK_EQ_INT(dsi_tp_batch_encode(&b, lim.block_size, w, cap, &n, &err), 0);
    struct dsi_batch_seq four[4];
    for (int i = 0; i < 4; i++)
        four[i] =
            (struct dsi_batch_seq){.tokens = t, .n_tokens = 2, .pos = 62, .block_table = bl, .n_blocks = 4};
    b = (struct dsi_batch){.seqs = four, .n_seqs = 4};
    CHECK_EQ_INT(dsi_tp_batch_check(&b, &lim, &err), 0);
    CHECK_EQ_INT(dsi_tp_batch_encode(&b, lim.block_size, w, cap, &n, &err), 0);
    CHECK_EQ_INT(n, cap);
    struct dsi_batch_seq seqs[4];
    struct dsi_batch d;
    CHECK_EQ_INT(dsi_tp_batch_decode(w, n, &lim, seqs, &d, &err), 0);
    CHECK_EQ_INT(d.n_seqs, 4);
    CHECK(err == NULL);
    free(err);
    free(w);
}

TEST(batch_empty_message_rejected) {
    struct dsi_batch_seq seqs[4];
    struct dsi_batch b;
    char *err = NULL;
    CHECK_EQ_INT(dsi_tp_batch_decode(NULL, 0, &lim, seqs, &b, &err), DSI_EFORMAT);
    free(err);
}

TEST(batch_every_random_corruption_safe) {
    /* flipping any word to any of a few hostile values never crashes (ASan watches)
     * and yields either a batch within the limits or DSI_EFORMAT */
    static const int32_t hostile[] = {0, 1, -1, 7, 15, 16, 63, 64, 99, 100, 1 << 20, INT32_MIN, INT32_MAX};
    for (size_t i = 0; i < 20; i++)
        for (size_t h = 0; h < sizeof hostile / sizeof hostile[0]; h++) {
            int32_t w[64];
            size_t n = encode_sample(w, 64);
            w[i] = hostile[h];
            struct dsi_batch_seq seqs[4];
            struct dsi_batch b;
            char *err = NULL;
            int rc = dsi_tp_batch_decode(w, n, &lim, seqs, &b, &err);
            CHECK(rc == 0 || rc == DSI_EFORMAT);
            if (rc == 0) CHECK_EQ_INT(dsi_tp_batch_check(&b, &lim, NULL), 0);
            free(err);
        }
}

TEST(batch_check_limits_on_rank0) {
    static const int32_t t[] = {1, 2, 3, 4, 5, 6, 7, 8, 9}, bl[] = {0, 1, 2, 3, 4};
    struct dsi_batch_seq s = {.tokens = t, .n_tokens = 9, .block_table = bl, .n_blocks = 1};
    struct dsi_batch b = {.seqs = &s, .n_seqs = 1};
    char *err = NULL;
    CHECK_EQ_INT(dsi_tp_batch_check(&b, &lim, &err), DSI_ERANGE); /* 9 tokens > 8 */
    free(err);
    err = NULL;
    struct dsi_batch_seq many[5];
    for (int i = 0; i < 5; i++)
        many[i] = (struct dsi_batch_seq){
            .tokens = t, .n_tokens = 1, .block_table = bl, .n_blocks = 1, .want_logits = true};
    b = (struct dsi_batch){.seqs = many, .n_seqs = 5};
    CHECK_EQ_INT(dsi_tp_batch_check(&b, &lim, &err), DSI_ERANGE); /* 5 sequences > max_seqs 4 */
    CHECK(err && strstr(err, "5 sequences"));
    free(err);
}

TEST(hdr_checks) {
    uint32_t h[DSI_TP_HDR_WORDS];
    char *err = NULL;
    dsi_tp_hdr_make(h, DSI_TP_MSG_FORWARD, 20, 7);
    CHECK_EQ_INT(dsi_tp_hdr_check(h, 20, &err), 0);
    CHECK_EQ_INT(dsi_tp_hdr_check(h, 19, &err), DSI_EFORMAT); /* payload over the agreed maximum */
    free(err);
    err = NULL;
    h[0] ^= 1;
    CHECK_EQ_INT(dsi_tp_hdr_check(h, 20, &err), DSI_EFORMAT);
    CHECK(err && strstr(err, "magic"));
    free(err);
    err = NULL;
    dsi_tp_hdr_make(h, DSI_TP_MSG_FORWARD, 0, 0);
    h[1] = DSI_TP_VERSION + 1; /* another dsinfer release */
    CHECK_EQ_INT(dsi_tp_hdr_check(h, 20, &err), DSI_EFORMAT);
    CHECK(err && strstr(err, "same dsinfer"));
    free(err);
    err = NULL;
    dsi_tp_hdr_make(h, DSI_TP_MSG_FORWARD, 0, 0);
    h[2] = 0;
    CHECK_EQ_INT(dsi_tp_hdr_check(h, 20, &err), DSI_EFORMAT);
    h[2] = 5;
    CHECK_EQ_INT(dsi_tp_hdr_check(h, 20, &err), DSI_EFORMAT);
    free(err);
    err = NULL;
    dsi_tp_hdr_make(h, DSI_TP_MSG_SHUTDOWN, 0, 0);
    h[7] = 1;
    CHECK_EQ_INT(dsi_tp_hdr_check(h, 0, &err), DSI_EFORMAT); /* reserved words must be zero */
    free(err);
}

static struct dsi_tp_create sample_create(void) {
    struct dsi_tp_create c = {.opts = {.weight_dtype = DSI_W_INT8,
                                       .int8_group_size = 32,
                                       .kv_dtype = DSI_KV_BF16,
                                       .kv_block_size = 16,
                                       .kv_bytes = (size_t)5 << 32,
                                       .max_batch_tokens = 512,
                                       .max_seqs = 64,
                                       .ep_size = 4,
                                       .kv_gpu_fraction = 0.75f,
                                       .n_threads = 3},
                              .backend = DSI_TP_BACKEND_CUDA,
                              .vocab_size = 4096,
                              .hidden_size = 256,
                              .intermediate_size = 768,
                              .n_layers = 4,
                              .n_heads = 8,
                              .n_kv_heads = 4,
                              .head_dim = 32};
    for (int i = 0; i < DSI_TP_NCCL_ID_BYTES; i++)
        c.nccl_id[i] = (unsigned char)(i * 37 + 1);
    snprintf(c.dir, sizeof c.dir, "%s", "models/demo");
    return c;
}

TEST(create_roundtrip) {
    struct dsi_tp_create c = sample_create(), d;
    int32_t w[DSI_TP_CREATE_WORDS];
    size_t n = 0;
    char *err = NULL;
    CHECK_EQ_INT(dsi_tp_create_encode(&c, w, &n, &err), 0);
    CHECK_EQ_INT(n, 16 + 3 + DSI_TP_CREATE_EXT); /* "models/demo" is 11 bytes: 3 words */
    CHECK_EQ_INT(dsi_tp_create_decode(w, n, &d, &err), 0);
    CHECK_EQ_STR(d.dir, "models/demo");
    CHECK(d.opts.kv_bytes == ((size_t)5 << 32));
    CHECK_EQ_INT(d.opts.weight_dtype, DSI_W_INT8);
    CHECK_EQ_INT(d.opts.int8_group_size, 32);
    CHECK_EQ_INT(d.opts.kv_dtype, DSI_KV_BF16);
    CHECK_EQ_INT(d.n_kv_heads, 4);
    CHECK_EQ_INT(d.opts.n_threads, 3);
    CHECK_EQ_INT(d.backend, DSI_TP_BACKEND_CUDA);
    CHECK_EQ_INT(d.opts.max_seqs, 64);
    CHECK(d.opts.kv_gpu_fraction == 0.75f);
    CHECK_EQ_INT(d.opts.ep_size, 4);
    CHECK(memcmp(d.nccl_id, c.nccl_id, DSI_TP_NCCL_ID_BYTES) == 0);
    free(err);
}

static int create_mut(size_t idx, int32_t val, size_t n_override) {
    struct dsi_tp_create c = sample_create(), d;
    int32_t w[DSI_TP_CREATE_WORDS];
    size_t n = 0;
    dsi_tp_create_encode(&c, w, &n, NULL);
    if (idx < DSI_TP_CREATE_WORDS) w[idx] = val;
    char *err = NULL;
    int rc = dsi_tp_create_decode(w, n_override ? n_override : n, &d, &err);
    if (rc) CHECK(err != NULL);
    free(err);
    return rc;
}

TEST(create_malformed_rejected) {
    CHECK_EQ_INT(create_mut(0, 7, 0), DSI_EFORMAT);   /* weight dtype */
    CHECK_EQ_INT(create_mut(2, -1, 0), DSI_EFORMAT);  /* kv dtype */
    CHECK_EQ_INT(create_mut(1, -32, 0), DSI_EFORMAT); /* group size */
    CHECK_EQ_INT(create_mut(6, -1, 0), DSI_EFORMAT);  /* max tokens */
    CHECK_EQ_INT(create_mut(12, 0, 0), DSI_EFORMAT);  /* heads */
    CHECK_EQ_INT(create_mut(15, 0, 0), DSI_EFORMAT);  /* empty dir */
    CHECK_EQ_INT(create_mut(15, 40, 0), DSI_EFORMAT); /* dir longer than the words sent */
    CHECK_EQ_INT(create_mut(15, 1 << 30, 0), DSI_EFORMAT);
    CHECK_EQ_INT(create_mut(16, 0x6f6d0064, 0), DSI_EFORMAT); /* NUL inside the dir */
    CHECK_EQ_INT(create_mut(99999, 0, 5), DSI_EFORMAT);       /* truncated */
    CHECK_EQ_INT(create_mut(99999, 0, DSI_TP_CREATE_WORDS + 1), DSI_EFORMAT);
    CHECK_EQ_INT(create_mut(99999, 0, 0), 0);
    /* the words after the 3 dir words: backend, max_seqs, kv_gpu_fraction, ep_size */
    const size_t ext = 16 + 3;
    CHECK_EQ_INT(create_mut(ext, 2, 0), DSI_EFORMAT); /* unknown backend */
    CHECK_EQ_INT(create_mut(ext, -1, 0), DSI_EFORMAT);
    CHECK_EQ_INT(create_mut(ext + 1, -1, 0), DSI_EFORMAT);         /* max_seqs */
    CHECK_EQ_INT(create_mut(ext + 2, 0x7fc00000, 0), DSI_EFORMAT); /* fraction NaN */
    CHECK_EQ_INT(create_mut(ext + 2, 0x40000000, 0), DSI_EFORMAT); /* fraction 2.0 */
    CHECK_EQ_INT(create_mut(ext + 3, -1, 0), DSI_EFORMAT);         /* ep_size */
    CHECK_EQ_INT(create_mut(ext + 3, 4097, 0), DSI_EFORMAT);
    CHECK_EQ_INT(create_mut(ext + 3, 4096, 0), 0);
    CHECK_EQ_INT(create_mut(ext, DSI_TP_BACKEND_CPU, 0), DSI_EFORMAT); /* CPU with an NCCL id */
    CHECK_EQ_INT(create_mut(16 + 2, 0x7f6f6d65, 0), DSI_EFORMAT);      /* "emo" + a non-zero pad byte */
    CHECK_EQ_INT(create_mut(16 + 2, 0x006f6d65, 0), 0);                /* "emo" + the zero pad byte */
    CHECK_EQ_INT(create_mut(ext + 4, 0x12345678, 0), 0);               /* the NCCL id is opaque bytes */
    CHECK_EQ_INT(create_mut(99999, 0, 16 + 3 + DSI_TP_CREATE_EXT - 1), DSI_EFORMAT); /* ext cut short */
}

TEST(create_cpu_needs_no_nccl_id) {
    struct dsi_tp_create c = sample_create(), d;
    c.backend = DSI_TP_BACKEND_CPU;
    memset(c.nccl_id, 0, sizeof c.nccl_id);
    int32_t w[DSI_TP_CREATE_WORDS];
    size_t n = 0;
    char *err = NULL;
    CHECK_EQ_INT(dsi_tp_create_encode(&c, w, &n, &err), 0);
    CHECK_EQ_INT(dsi_tp_create_decode(w, n, &d, &err), 0);
    CHECK_EQ_INT(d.backend, DSI_TP_BACKEND_CPU);
    free(err);
}

int main(void) {
    RUN(batch_roundtrip);
    RUN(batch_encode_buffer_short);
    RUN(batch_malformed_rejected);
    RUN(batch_at_limits_fits_max_words);
    RUN(batch_empty_message_rejected);
    RUN(batch_every_random_corruption_safe);
    RUN(batch_check_limits_on_rank0);
    RUN(hdr_checks);
    RUN(create_roundtrip);
    RUN(create_malformed_rejected);
    RUN(create_cpu_needs_no_nccl_id);
    return test_summary();
}
