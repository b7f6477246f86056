/*
 * test_kvcache.c: the paged KV block manager: pool accounting, all-or-nothing
 * growth, capacity limits, and that no block id is ever held twice; the prefix
 * cache: hits by namespace and content, partial blocks never shared, LRU
 * eviction of idle blocks only, twins, and the model of tests/kv_model.h over
 * fixed pseudo-random operation streams.
 */
#include <stdlib.h>

#include "dsinfer/err.h"
#include "dsinfer/kvcache.h"
#include "kv_model.h"
#include "test.h"

TEST(kv_init_rejects_bad_sizes) {
    struct dsi_kv_cache kv;
    char *err = NULL;
    CHECK_EQ_INT(dsi_kv_cache_init(&kv, 0, 16, &err), DSI_EINVAL);
    CHECK(err != NULL);
    free(err);
    err = NULL;
    CHECK_EQ_INT(dsi_kv_cache_init(&kv, 8, 0, &err), DSI_EINVAL);
    free(err);
    dsi_kv_cache_free(&kv); /* safe on a failed init */
}

TEST(kv_blocks_for_rounds_up) {
    struct dsi_kv_cache kv;
    CHECK_EQ_INT(dsi_kv_cache_init(&kv, 4, 16, NULL), 0);
    CHECK_EQ_INT(dsi_kv_blocks_for(&kv, 0), 0);
    CHECK_EQ_INT(dsi_kv_blocks_for(&kv, 1), 1);
    CHECK_EQ_INT(dsi_kv_blocks_for(&kv, 16), 1);
    CHECK_EQ_INT(dsi_kv_blocks_for(&kv, 17), 2);
    CHECK_EQ_INT(dsi_kv_blocks_for(&kv, 2147483647), 134217728);
    CHECK_EQ_INT(dsi_kv_blocks_for(&kv, -1), -1);
    dsi_kv_cache_free(&kv);
}

TEST(kv_seq_init_rejects_more_than_pool) {
    struct dsi_kv_cache kv;
    struct dsi_kv_seq s;
    char *err = NULL;
    CHECK_EQ_INT(dsi_kv_cache_init(&kv, 4, 16, NULL), 0);
    CHECK_EQ_INT(dsi_kv_seq_init(&s, &kv, 65, &err), DSI_ERANGE);
    CHECK(err != NULL);
    free(err);
    CHECK_EQ_INT(dsi_kv_seq_init(&s, &kv, 64, NULL), 0);
    CHECK_EQ_INT(s.cap_blocks, 4);
    dsi_kv_seq_free(&s);
    dsi_kv_cache_free(&kv);
}

TEST(kv_reserve_grows_a_block_at_a_time) {
    struct dsi_kv_cache kv;
    struct dsi_kv_seq s;
    CHECK_EQ_INT(dsi_kv_cache_init(&kv, 8, 4, NULL), 0);
    CHECK_EQ_INT(dsi_kv_seq_init(&s, &kv, 32, NULL), 0);
    CHECK_EQ_INT(dsi_kv_seq_reserve(&kv, &s, 1), 0);
    CHECK_EQ_INT(s.n_blocks, 1);
    CHECK_EQ_INT(dsi_kv_seq_reserve(&kv, &s, 4), 0);
    CHECK_EQ_INT(s.n_blocks, 1);
    CHECK_EQ_INT(dsi_kv_seq_reserve(&kv, &s, 5), 0);
    CHECK_EQ_INT(s.n_blocks, 2);
    CHECK_EQ_INT(dsi_kv_seq_reserve(&kv, &s, 3), 0); /* shrinking asks nothing */
    CHECK_EQ_INT(s.n_blocks, 2);
    CHECK_EQ_INT(dsi_kv_used(&kv), 2);
    CHECK_EQ_INT(dsi_kv_free_count(&kv), 6);
    CHECK(s.blocks[0] != s.blocks[1]);
    dsi_kv_seq_release(&kv, &s);
    CHECK_EQ_INT(s.n_blocks, 0);
    CHECK_EQ_INT(dsi_kv_free_count(&kv), 8);
    dsi_kv_seq_free(&s);
    dsi_kv_cache_free(&kv);
}

TEST(kv_reserve_pool_exhausted_is_all_or_nothing) {
    struct dsi_kv_cache kv;
    struct dsi_kv_seq a, b;
    CHECK_EQ_INT(dsi_kv_cache_init(&kv, 5, 4, NULL), 0);
    CHECK_EQ_INT(dsi_kv_seq_init(&a, &kv, 20, NULL), 0);
    CHECK_EQ_INT(dsi_kv_seq_init(&b, &kv, 20, NULL), 0);
    CHECK_EQ_INT(dsi_kv_seq_reserve(&kv, &a, 12), 0); /* 3 blocks */
    CHECK_EQ_INT(dsi_kv_seq_reserve(&kv, &b, 12), DSI_EFULL);
    CHECK_EQ_INT(b.n_blocks, 0);
    CHECK_EQ_INT(dsi_kv_free_count(&kv), 2);
    CHECK_EQ_INT(dsi_kv_seq_reserve(&kv, &b, 8), 0);
    CHECK_EQ_INT(dsi_kv_free_count(&kv), 0);
    CHECK_EQ_INT(dsi_kv_seq_reserve(&kv, &a, 13), DSI_EFULL);
    CHECK_EQ_INT(a.n_blocks, 3);
    dsi_kv_seq_release(&kv, &b);
    CHECK_EQ_INT(dsi_kv_seq_reserve(&kv, &a, 13), 0);
    dsi_kv_seq_release(&kv, &a);
    CHECK_EQ_INT(dsi_kv_free_count(&kv), 5);
    dsi_kv_seq_free(&a);
    dsi_kv_seq_free(&b);
    dsi_kv_cache_free(&kv);
}

TEST(kv_reserve_beyond_table_capacity) {
    struct dsi_kv_cache kv;
    struct dsi_kv_seq s;
    CHECK_EQ_INT(dsi_kv_cache_init(&kv, 16, 4, NULL), 0);
    CHECK_EQ_INT(dsi_kv_seq_init(&s, &kv, 8, NULL), 0);
    CHECK_EQ_INT(dsi_kv_seq_reserve(&kv, &s, 9), DSI_ERANGE);
    CHECK_EQ_INT(dsi_kv_seq_reserve(&kv, &s, -1), DSI_ERANGE);
    CHECK_EQ_INT(s.n_blocks, 0);
    CHECK_EQ_INT(dsi_kv_free_count(&kv), 16);
    dsi_kv_seq_free(&s);
    dsi_kv_cache_free(&kv);
}

/* Random grow/release over many sequences: every id is held by at most one
 * sequence and the counts always add up to the pool. */
TEST(kv_random_cycles_never_share_a_block) {
    enum { NB = 64, NS = 12 };
    struct dsi_kv_cache kv;
    struct dsi_kv_seq s[NS];
    int len[NS] = {0};
    CHECK_EQ_INT(dsi_kv_cache_init(&kv, NB, 4, NULL), 0);
    for (int i = 0; i < NS; i++)
        CHECK_EQ_INT(dsi_kv_seq_init(&s[i], &kv, 100, NULL), 0);
    unsigned seed = 12345;
    int bad = 0;
    for (int it = 0; it < 20000; it++) {
        seed = seed * 1103515245u + 12345u;
        int i = (int)((seed >> 16) % NS);
        if ((seed >> 8) % 5 == 0) {
            dsi_kv_seq_release(&kv, &s[i]);
            len[i] = 0;
        } else if (len[i] < 100) {
            int rc = dsi_kv_seq_reserve(&kv, &s[i], len[i] + 1);
            if (rc == 0)
                len[i]++;
            else if (rc != DSI_EFULL)
                bad++;
        }
        int owner[NB], held = 0;
        for (int b = 0; b < NB; b++)
            owner[b] = -1;
        for (int k = 0; k < NS; k++) {
            held += s[k].n_blocks;
            if (s[k].n_blocks != dsi_kv_blocks_for(&kv, len[k])) bad++;
            for (int j = 0; j < s[k].n_blocks; j++) {
                int id = s[k].blocks[j];
                if (id < 0 || id >= NB || owner[id] != -1)
                    bad++;
                else
                    owner[id] = k;
            }
        }
        if (held + dsi_kv_free_count(&kv) != NB) bad++;
    }
    CHECK_EQ_INT(bad, 0);
    for (int i = 0; i < NS; i++) {
        dsi_kv_seq_release(&kv, &s[i]);
        dsi_kv_seq_free(&s[i]);
    }
    CHECK_EQ_INT(dsi_kv_free_count(&kv), NB);
    dsi_kv_cache_free(&kv);
}


/* Fills t with n tokens from seed. */
static void toks(int32_t *t, int n, unsigned seed) {
    for (int i = 0; i < n; i++) t[i] = (int32_t)((seed * 2654435761u + (unsigned)i * 40503u) % 1000u);
}

static void prefix_pool(struct dsi_kv_cache *kv, int n_blocks, int bs) {
    CHECK_EQ_INT(dsi_kv_cache_init(kv, n_blocks, bs, NULL), 0);
    CHECK_EQ_INT(dsi_kv_prefix_enable(kv, 99, 0, NULL), 0);
}

/* Reserve n tokens, "compute" them all and publish: a finished prefill. */
static void fill(struct dsi_kv_cache *kv, struct dsi_kv_seq *s, const uint64_t ns[2], const int32_t *t, int n) {
    CHECK_EQ_INT(dsi_kv_seq_match(kv, s, ns, t, n - 1), 0);
    CHECK_EQ_INT(dsi_kv_seq_reserve(kv, s, n), 0);
    dsi_kv_seq_commit(kv, s, t, n);
}

static void check_ok(const struct dsi_kv_cache *kv, const struct dsi_kv_seq *const *seqs, int n) {
    char *err = NULL;
    int rc = dsi_kv_check(kv, seqs, n, &err);
    if (rc) fprintf(stderr, "  %s\n", err ? err : "?");
    free(err);
    CHECK_EQ_INT(rc, 0);
}

TEST(kv_prefix_hits_whole_blocks_of_same_namespace) {
    struct dsi_kv_cache kv;
    struct dsi_kv_seq a, b;
    int32_t t[40], u[40];
    uint64_t ns[2] = {7, 8}, other[2] = {7, 9};
    prefix_pool(&kv, 32, 4);
    CHECK_EQ_INT(dsi_kv_seq_init(&a, &kv, 40, NULL), 0);
    CHECK_EQ_INT(dsi_kv_seq_init(&b, &kv, 40, NULL), 0);
    toks(t, 40, 1);
    fill(&kv, &a, ns, t, 38); /* 9 full blocks + 2 tokens */
    CHECK_EQ_INT(dsi_kv_cached_count(&kv), 9);
    /* while a still holds them: shared, ref 2 */
    CHECK_EQ_INT(dsi_kv_seq_match(&kv, &b, ns, t, 40 - 1), 36);
    CHECK_EQ_INT(b.n_blocks, 9);
    for (int i = 0; i < 9; i++) CHECK_EQ_INT(b.blocks[i], a.blocks[i]);
    CHECK_EQ_INT(kv.ref[a.blocks[0]], 2);
    const struct dsi_kv_seq *both[2] = {&a, &b};
    check_ok(&kv, both, 2);
    dsi_kv_seq_release(&kv, &b);
    /* another namespace sees nothing; a change in block 3 stops the hit there */
    CHECK_EQ_INT(dsi_kv_seq_match(&kv, &b, other, t, 39), 0);
    memcpy(u, t, sizeof u);
    u[13]++;
    CHECK_EQ_INT(dsi_kv_seq_match(&kv, &b, ns, u, 39), 12);
    dsi_kv_seq_release(&kv, &b);
    /* the partial last block (tokens 36, 37) is never published: 37 tokens hit 36 */
    CHECK_EQ_INT(dsi_kv_seq_match(&kv, &b, ns, t, 38), 36);
    dsi_kv_seq_release(&kv, &b);
    dsi_kv_seq_release(&kv, &a);
    /* released, the blocks stay cached and idle: free to take, still hit */
    CHECK_EQ_INT(dsi_kv_used(&kv), 0);
    CHECK_EQ_INT(dsi_kv_free_count(&kv), 32);
    CHECK_EQ_INT(dsi_kv_cached_count(&kv), 9);
    CHECK_EQ_INT(dsi_kv_seq_match(&kv, &b, ns, t, 39), 36);
    dsi_kv_seq_release(&kv, &b);
    check_ok(&kv, NULL, 0);
    dsi_kv_seq_free(&a);
    dsi_kv_seq_free(&b);
    dsi_kv_cache_free(&kv);
}

TEST(kv_prefix_evicts_idle_lru_never_held) {
    struct dsi_kv_cache kv;
    struct dsi_kv_seq a, b, c;
    int32_t t[16], u[32];
    uint64_t ns[2] = {0, 0};
    prefix_pool(&kv, 8, 4);
    CHECK_EQ_INT(dsi_kv_seq_init(&a, &kv, 32, NULL), 0);
    CHECK_EQ_INT(dsi_kv_seq_init(&b, &kv, 32, NULL), 0);
    CHECK_EQ_INT(dsi_kv_seq_init(&c, &kv, 32, NULL), 0);
    toks(t, 16, 3);
    toks(u, 32, 4);
    fill(&kv, &a, ns, t, 16); /* 4 published blocks */
    dsi_kv_seq_release(&kv, &a);
    /* 4 never-published blocks are taken before any cached one */
    fill(&kv, &b, ns, u, 16);
    CHECK_EQ_INT((int)kv.evictions, 0);
    CHECK_EQ_INT(dsi_kv_seq_match(&kv, &c, ns, t, 15), 12);
    dsi_kv_seq_release(&kv, &c);
    /* 2 more: the two idle blocks evicted are a's last ones (released first) */
    CHECK_EQ_INT(dsi_kv_seq_reserve(&kv, &b, 24), 0);
    CHECK_EQ_INT((int)kv.evictions, 2);
    CHECK_EQ_INT(dsi_kv_seq_match(&kv, &c, ns, t, 15), 8);
    /* c holds those 2: b can take 2 more idle at most, then the pool is full */
    CHECK_EQ_INT(dsi_kv_seq_reserve(&kv, &b, 36), DSI_ERANGE); /* table capacity 32 */
    CHECK_EQ_INT(dsi_kv_seq_reserve(&kv, &b, 32), DSI_EFULL); /* would need c's held blocks */
    CHECK_EQ_INT(dsi_kv_seq_match(&kv, &a, ns, t, 15), 8);     /* still there */
    const struct dsi_kv_seq *all[3] = {&a, &b, &c};
    check_ok(&kv, all, 3);
    dsi_kv_seq_release(&kv, &a);
    dsi_kv_seq_release(&kv, &b);
    dsi_kv_seq_release(&kv, &c);
    check_ok(&kv, NULL, 0);
    CHECK_EQ_INT(dsi_kv_free_count(&kv), 8);
    dsi_kv_seq_free(&a);
    dsi_kv_seq_free(&b);
    dsi_kv_seq_free(&c);
    dsi_kv_cache_free(&kv);
}

/* Two sequences compute the same prefix side by side: the second to publish
 * keeps its blocks private, and its later blocks chain to the first's. */
TEST(kv_prefix_twins_chain_to_the_published_block) {
    struct dsi_kv_cache kv;
    struct dsi_kv_seq a, b, c;
    int32_t t[12], u[12];
    uint64_t ns[2] = {1, 1};
    prefix_pool(&kv, 16, 4);
    CHECK_EQ_INT(dsi_kv_seq_init(&a, &kv, 12, NULL), 0);
    CHECK_EQ_INT(dsi_kv_seq_init(&b, &kv, 12, NULL), 0);
    CHECK_EQ_INT(dsi_kv_seq_init(&c, &kv, 12, NULL), 0);
    toks(t, 12, 5);
    memcpy(u, t, sizeof u);
    u[9] = 999; /* b shares a's first 2 blocks, not the third */
    CHECK_EQ_INT(dsi_kv_seq_match(&kv, &a, ns, t, 11), 0);
    CHECK_EQ_INT(dsi_kv_seq_match(&kv, &b, ns, u, 11), 0);
    CHECK_EQ_INT(dsi_kv_seq_reserve(&kv, &a, 8), 0);
    CHECK_EQ_INT(dsi_kv_seq_reserve(&kv, &b, 12), 0);
    dsi_kv_seq_commit(&kv, &a, t, 8);
    dsi_kv_seq_commit(&kv, &b, u, 12);
    CHECK_EQ_INT(dsi_kv_cached_count(&kv), 3); /* a's 2, b's third */
    CHECK_EQ_INT(dsi_kv_seq_match(&kv, &c, ns, u, 12), 12);
    CHECK_EQ_INT(c.blocks[0], a.blocks[0]);
    CHECK_EQ_INT(c.blocks[1], a.blocks[1]);
    CHECK_EQ_INT(c.blocks[2], b.blocks[2]);
    dsi_kv_seq_release(&kv, &c);
    dsi_kv_seq_release(&kv, &b); /* its private twins go back to the free stack */
    CHECK_EQ_INT(kv.n_free, 16 - 2 - 1);
    dsi_kv_seq_release(&kv, &a);
    check_ok(&kv, NULL, 0);
    dsi_kv_seq_free(&a);
    dsi_kv_seq_free(&b);
    dsi_kv_seq_free(&c);
    dsi_kv_cache_free(&kv);
}

TEST(kv_prefix_off_never_hits) {
    struct dsi_kv_cache kv;
    struct dsi_kv_seq a;
    int32_t t[8];
    uint64_t ns[2] = {0, 0};
    CHECK_EQ_INT(dsi_kv_cache_init(&kv, 4, 4, NULL), 0);
    CHECK_EQ_INT(dsi_kv_seq_init(&a, &kv, 8, NULL), 0);
    toks(t, 8, 6);
    for (int i = 0; i < 2; i++) {
        CHECK_EQ_INT(dsi_kv_seq_match(&kv, &a, ns, t, 7), 0);
        CHECK_EQ_INT(dsi_kv_seq_reserve(&kv, &a, 8), 0);
        dsi_kv_seq_commit(&kv, &a, t, 8);
        dsi_kv_seq_release(&kv, &a);
    }
    CHECK_EQ_INT(dsi_kv_cached_count(&kv), 0);
    CHECK_EQ_INT(kv.n_free, 4);
    char *err = NULL;
    CHECK_EQ_INT(dsi_kv_prefix_enable(&kv, 1, 0, &err), 0); /* still fresh: allowed */
    CHECK_EQ_INT(dsi_kv_prefix_enable(&kv, 1, 0, &err), DSI_ESTATE);
    free(err);
    dsi_kv_seq_free(&a);
    dsi_kv_cache_free(&kv);
}

/* The fuzz target's model over fixed pseudo-random streams. */
/* The K/V format (kv dtype, bytes per token) is part of every block's key:
 * the same tokens in the same namespace key differently in another format, and
 * the same again in the same one. */
TEST(kv_prefix_key_includes_the_kv_format) {
    uint64_t ns[2] = {3, 4}, keys[3];
    uint64_t formats[3] = {(uint64_t)0 << 48 ^ 4096, (uint64_t)2 << 48 ^ 1088, (uint64_t)0 << 48 ^ 4096};
    int32_t t[8];
    toks(t, 8, 5);
    for (int i = 0; i < 3; i++) {
        struct dsi_kv_cache kv;
        struct dsi_kv_seq s;
        CHECK_EQ_INT(dsi_kv_cache_init(&kv, 8, 4, NULL), 0);
        CHECK_EQ_INT(dsi_kv_prefix_enable(&kv, 99, formats[i], NULL), 0);
        CHECK_EQ_INT(dsi_kv_seq_init(&s, &kv, 8, NULL), 0);
        fill(&kv, &s, ns, t, 8);
        CHECK_EQ_INT(dsi_kv_cached_count(&kv), 2);
        keys[i] = kv.hash[s.blocks[0]];
        dsi_kv_seq_release(&kv, &s);
        dsi_kv_seq_free(&s);
        dsi_kv_cache_free(&kv);
    }
    CHECK(keys[0] != keys[1]);
    CHECK(keys[0] == keys[2]);
}

TEST(kv_prefix_model_random_streams) {
    uint8_t buf[4000];
    uint32_t x = 2463534242u;
    for (int run = 0; run < 200; run++) {
        for (size_t i = 0; i < sizeof buf; i++) {
            x ^= x << 13, x ^= x >> 17, x ^= x << 5;
            buf[i] = (uint8_t)x;
        }
        for (int prefix = 0; prefix < 2; prefix++) {
            int line = kv_model_run(buf, sizeof buf, prefix);
            if (line) fprintf(stderr, "  run %d prefix %d: kv_model.h:%d\n", run, prefix, line);
            CHECK_EQ_INT(line, 0);
        }
    }
}

int main(void) {
    RUN(kv_init_rejects_bad_sizes);
    RUN(kv_prefix_hits_whole_blocks_of_same_namespace);
    RUN(kv_prefix_evicts_idle_lru_never_held);
    RUN(kv_prefix_twins_chain_to_the_published_block);
    RUN(kv_prefix_off_never_hits);
    RUN(kv_prefix_key_includes_the_kv_format);
    RUN(kv_prefix_model_random_streams);
    RUN(kv_blocks_for_rounds_up);
    RUN(kv_seq_init_rejects_more_than_pool);
    RUN(kv_reserve_grows_a_block_at_a_time);
    RUN(kv_reserve_pool_exhausted_is_all_or_nothing);
    RUN(kv_reserve_beyond_table_capacity);
    RUN(kv_random_cycles_never_share_a_block);
    return test_summary();
}
