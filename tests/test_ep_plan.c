/*
 * test_ep_plan.c: the expert-parallel exchange plan (src/ep, include/dsinfer/ep.h)
 * without any transport: a whole world of ranks is simulated in one process
 * (the all-to-alls are done by copying between the ranks' plans), each "expert"
 * e maps a row x to x * (e + 1) + e, and every token's combined result must be
 * what one process computes from the same routing: sum over k of
 * w_k * (x * (e_k + 1) + e_k), summed in selection order, bit for bit.
 * Also: rows land only on the owner of their expert in the sender's group,
 * every plan order is fixed (a second identical step gives the same layout),
 * and bad layouts and bad counts from another rank are refused with a message.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "dsinfer/ep.h"
#include "dsinfer/err.h"
#include "test.h"

#define MAXW 8
#define H 3 /* floats per row */

/* One step over a simulated world; returns the number of mismatching values. */
static int simulate(int world, int ep, int E, int K, int T, unsigned seed) {
    struct dsi_ep_plan p[MAXW];
    int bad = 0;
    for (int r = 0; r < world; r++) {
        char *err = NULL;
        int rc = dsi_ep_plan_init(&p[r], world, r, ep, E, K, T, &err);
        CHECK_EQ_INT(rc, 0);
        free(err);
        if (rc) return 1;
    }
    /* routing: token t picks K distinct experts with weights; x rows are (t, t+0.5, -t) */
    int32_t *idx = calloc((size_t)T * K, sizeof *idx);
    float *w = calloc((size_t)T * K, sizeof *w), *x = calloc((size_t)T * H, sizeof *x);
    srand(seed);
    for (int t = 0; t < T; t++) {
        for (int k = 0; k < K; k++) {
            int e, dup;
            do {
                e = rand() % E;
                dup = 0;
                for (int j = 0; j < k; j++)
                    dup |= idx[t * K + j] == e;
            } while (dup);
            idx[t * K + k] = e;
            w[t * K + k] = (float)(rand() % 1000) / 997.0f;
        }
        x[t * H + 0] = (float)t;
        x[t * H + 1] = (float)t + 0.5f;
        x[t * H + 2] = -(float)t;
    }
    size_t cap = (size_t)T * K * H;
    float *sendb[MAXW], *recvb[MAXW], *outb[MAXW], *backb[MAXW];
    int lo[MAXW], hi[MAXW];
    for (int r = 0; r < world; r++) {
        sendb[r] = calloc(cap + 1, sizeof(float));
        recvb[r] = calloc(cap + 1, sizeof(float));
        outb[r] = calloc(cap + 1, sizeof(float));
        backb[r] = calloc(cap + 1, sizeof(float));
        dsi_ep_token_range(T, world, r, &lo[r], &hi[r]);
        CHECK_EQ_INT(dsi_ep_plan_send(&p[r], idx + (size_t)lo[r] * K, hi[r] - lo[r], NULL), 0);
        for (int q = 0; q < p[r].n_send; q++)
            memcpy(sendb[r] + (size_t)q * H, x + (size_t)(lo[r] + p[r].send_tok[q]) * H, H * sizeof(float));
    }
    CHECK_EQ_INT(lo[0], 0);
    CHECK_EQ_INT(hi[world - 1], T);
    /* all-to-all of the counts and the rows */
    for (int d = 0; d < world; d++)
        for (int s = 0; s < world; s++)
            memcpy(p[d].recv_count + (size_t)s * E, p[s].send_count + (size_t)d * E,
                   (size_t)E * sizeof(int32_t));
    for (int d = 0; d < world; d++) {
        CHECK_EQ_INT(dsi_ep_plan_recv(&p[d], NULL), 0);
        for (int s = 0; s < world; s++) {
            CHECK_EQ_INT(p[d].recv_rows[s], p[s].send_rows[d]);
            if (p[s].send_rows[d] > 0) CHECK(s / ep == d / ep); /* rows stay inside the group */
            memcpy(recvb[d] + (size_t)p[d].recv_displs[s] * H, sendb[s] + (size_t)p[s].send_displs[d] * H,
                   (size_t)p[s].send_rows[d] * H * sizeof(float));
        }
    }
    /* each rank runs its own experts in grouped order, writing outputs in receive layout */
    for (int d = 0; d < world; d++) {
        CHECK_EQ_INT(p[d].grp_start[p[d].n_local], p[d].n_recv);
        for (int j = 0; j < p[d].n_local; j++) {
            int e = p[d].e0 + j;
            for (int g = p[d].grp_start[j]; g < p[d].grp_start[j + 1]; g++) {
                const float *in = recvb[d] + (size_t)p[d].grp_row[g] * H;
                float *o = outb[d] + (size_t)p[d].grp_row[g] * H;
                for (int i = 0; i < H; i++)
                    o[i] = in[i] * (float)(e + 1) + (float)e;
            }
        }
    }
    /* reverse all-to-all and combine; compare with one process */
    for (int s = 0; s < world; s++) {
        for (int d = 0; d < world; d++)
            memcpy(backb[s] + (size_t)p[s].send_displs[d] * H, outb[d] + (size_t)p[d].recv_displs[s] * H,
                   (size_t)p[d].recv_rows[s] * H * sizeof(float));
        for (int t = lo[s]; t < hi[s]; t++)
            for (int i = 0; i < H; i++) {
                float got = 0, want = 0;
                for (int k = 0; k < K; k++) {
                    int a = t * K + k, e = idx[a];
                    got += w[a] * backb[s][(size_t)p[s].pos_of[a - lo[s] * K] * H + i];
                    want += w[a] * (x[t * H + i] * (float)(e + 1) + (float)e);
                }
                if (memcmp(&got, &want, sizeof got)) bad++;
            }
    }
    for (int r = 0; r < world; r++) {
        free(sendb[r]);
        free(recvb[r]);
        free(outb[r]);
        free(backb[r]);
        dsi_ep_plan_free(&p[r]);
    }
    free(idx);
    free(w);
    free(x);
    return bad;
}

TEST(ep_plan_round_trip_equals_one_process) {
    CHECK_EQ_INT(simulate(1, 1, 8, 2, 5, 1), 0);
    CHECK_EQ_INT(simulate(2, 2, 8, 2, 17, 2), 0);
    CHECK_EQ_INT(simulate(4, 4, 16, 4, 17, 3), 0);
    CHECK_EQ_INT(simulate(4, 2, 16, 4, 33, 4), 0);  /* two groups of two */
    CHECK_EQ_INT(simulate(8, 8, 256, 8, 64, 5), 0); /* V3's expert count and top-8 */
    CHECK_EQ_INT(simulate(4, 4, 16, 4, 1, 6), 0);   /* decode: three ranks route nothing */
}

TEST(ep_plan_send_rows_are_ordered_by_expert_then_token) {
    struct dsi_ep_plan p;
    CHECK_EQ_INT(dsi_ep_plan_init(&p, 2, 0, 2, 4, 2, 3, NULL), 0);
    /* tokens: (3, 0), (1, 3), (0, 2) */
    int32_t idx[] = {3, 0, 1, 3, 0, 2};
    CHECK_EQ_INT(dsi_ep_plan_send(&p, idx, 3, NULL), 0);
    /* experts 0, 1 live on rank 0; 2, 3 on rank 1. Send order: e0 (t0, t2), e1 (t1), e2 (t2), e3 (t0, t1) */
    int32_t want_tok[] = {0, 2, 1, 2, 0, 1};
    for (int i = 0; i < 6; i++)
        CHECK_EQ_INT(p.send_tok[i], want_tok[i]);
    CHECK_EQ_INT(p.send_rows[0], 3);
    CHECK_EQ_INT(p.send_rows[1], 3);
    CHECK_EQ_INT(p.send_displs[1], 3);
    CHECK_EQ_INT(p.pos_of[0], 4); /* token 0's first choice, expert 3 */
    CHECK_EQ_INT(p.pos_of[1], 0);
    CHECK_EQ_INT(p.pos_of[3], 5);
    CHECK_EQ_INT(dsi_ep_owner(&p, 0, 3), 1);
    dsi_ep_plan_free(&p);
}

TEST(ep_layout_not_dividing_is_clear_error) {
    char *err = NULL;
    CHECK_EQ_INT(dsi_ep_check(16, 3, 3, &err), DSI_EINVAL);
    CHECK(err && strstr(err, "expert parallel 3 does not divide this model's 16 routed experts"));
    free(err);
    err = NULL;
    CHECK_EQ_INT(dsi_ep_check(16, 4, 3, &err), DSI_EINVAL);
    CHECK(err && strstr(err, "expert parallel 3 does not divide the 4 ranks"));
    free(err);
    err = NULL;
    struct dsi_ep_plan p;
    CHECK_EQ_INT(dsi_ep_plan_init(&p, 2, 0, 0, 16, 4, 8, &err), DSI_EINVAL);
    free(err);
    dsi_ep_plan_free(&p);
    err = NULL;
    CHECK_EQ_INT(dsi_ep_plan_init(&p, 2, 2, 2, 16, 4, 8, &err), DSI_EINVAL); /* rank past the world */
    free(err);
    dsi_ep_plan_free(&p);
    CHECK_EQ_INT(dsi_ep_check(16, 4, 4, NULL), 0);
    CHECK_EQ_INT(dsi_ep_check(16, 4, 2, NULL), 0);
}

TEST(ep_plan_rejects_bad_expert_ids_and_counts) {
    struct dsi_ep_plan p;
    char *err = NULL;
    CHECK_EQ_INT(dsi_ep_plan_init(&p, 2, 1, 2, 4, 2, 2, NULL), 0);
    int32_t idx[] = {0, 4};
    CHECK_EQ_INT(dsi_ep_plan_send(&p, idx, 1, &err), DSI_EINVAL);
    CHECK(err && strstr(err, "expert id 4 out of range"));
    free(err);
    err = NULL;
    CHECK_EQ_INT(dsi_ep_plan_send(&p, idx, 3, &err), DSI_EINVAL); /* 6 rows, the plan holds 4 */
    free(err);
    err = NULL;
    /* rank 1 holds experts 2, 3: rows for expert 0 from rank 0 are another rank's */
    memset(p.recv_count, 0, 2 * 4 * sizeof(int32_t));
    p.recv_count[0] = 1;
    CHECK_EQ_INT(dsi_ep_plan_recv(&p, &err), DSI_EFORMAT);
    CHECK(err && strstr(err, "expert 0"));
    free(err);
    err = NULL;
    memset(p.recv_count, 0, 2 * 4 * sizeof(int32_t));
    p.recv_count[2] = -1;
    CHECK_EQ_INT(dsi_ep_plan_recv(&p, &err), DSI_EFORMAT);
    free(err);
    err = NULL;
    p.recv_count[2] = 3;
    p.recv_count[4 + 3] = 2; /* 5 rows: more than max_tokens * top_k = 4 */
    CHECK_EQ_INT(dsi_ep_plan_recv(&p, &err), DSI_EFORMAT);
    CHECK(err && strstr(err, "at most 4 fit"));
    free(err);
    p.recv_count[4 + 3] = 1;
    CHECK_EQ_INT(dsi_ep_plan_recv(&p, NULL), 0);
    CHECK_EQ_INT(p.n_recv, 4);
    /* grouped: expert 2 (rank 0's 3 rows), expert 3 (rank 1's row after them) */
    CHECK_EQ_INT(p.grp_start[1], 3);
    CHECK_EQ_INT(p.grp_row[3], 3);
    dsi_ep_plan_free(&p);
}

int main(void) {
    RUN(ep_plan_round_trip_equals_one_process);
    RUN(ep_plan_send_rows_are_ordered_by_expert_then_token);
    RUN(ep_layout_not_dividing_is_clear_error);
    RUN(ep_plan_rejects_bad_expert_ids_and_counts);
    return test_summary();
}
