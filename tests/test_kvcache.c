/*
 * test_kvcache.c: the paged KV block manager: pool accounting, all-or-nothing
 * growth, capacity limits, and that no block id is ever held twice.
 */
#include <stdlib.h>

#include "dsinfer/err.h"
#include "dsinfer/kvcache.h"
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

int main(void) {
    RUN(kv_init_rejects_bad_sizes);
    RUN(kv_blocks_for_rounds_up);
    RUN(kv_seq_init_rejects_more_than_pool);
    RUN(kv_reserve_grows_a_block_at_a_time);
    RUN(kv_reserve_pool_exhausted_is_all_or_nothing);
    RUN(kv_reserve_beyond_table_capacity);
    RUN(kv_random_cycles_never_share_a_block);
    return test_summary();
}
