/*
 * test_cuda_tp_logits.c: dsi_cuda_tp_logits_unpack, the kernel that turns the
 * all-gathered lm_head slices of a tensor-parallel step into (rows, vocab)
 * logits, against the layout written out on the host: rank r's (rows, n_r)
 * slice at chunk r of rows * pad floats, n_r = min(vocab, (r+1) pad) - r pad.
 * Vocab sizes that divide evenly and ones that leave the last rank short, 1
 * and several rows, fresh random values. Without a GPU: SKIP (exit 77).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime_api.h>

#include "dsinfer/kernels.h"
#include "test.h"
#define TEST_CUDA_SEED 0x2545F4914F6CDD1Dull
#include "test_cuda_util.h"

static void unpack_case(int ranks, int rows, int vocab) {
    int pad = (vocab + ranks - 1) / ranks;
    size_t n_all = (size_t)ranks * rows * pad, n_out = (size_t)rows * vocab;
    float *all = malloc(n_all * 4), *want = malloc(n_out * 4), *got = malloc(n_out * 4);
    float *d_all = dmalloc(n_all * 4), *d_out = dmalloc(n_out * 4);
    CHECK(all && want && got && d_all && d_out);
    if (!all || !want || !got || !d_all || !d_out) goto out;
    for (size_t i = 0; i < n_all; i++)
        all[i] = frand();
    /* what each rank computed: logits[row][r*pad + j] = its slice (row, j) */
    for (int r = 0; r < ranks; r++) {
        int v0 = r * pad, n_r = (v0 + pad < vocab ? v0 + pad : vocab) - v0;
        for (int row = 0; row < rows; row++)
            for (int j = 0; j < n_r; j++)
                want[(size_t)row * vocab + v0 + j] = all[(size_t)r * rows * pad + (size_t)row * n_r + j];
    }
    CHECK_EQ_INT(cudaMemcpy(d_all, all, n_all * 4, cudaMemcpyHostToDevice), cudaSuccess);
    CHECK_EQ_INT(cudaMemset(d_out, 0xff, n_out * 4), cudaSuccess); /* NaNs where nothing is written */
    CHECK_EQ_INT(dsi_cuda_tp_logits_unpack(d_out, d_all, rows, vocab, pad, 0), 0);
    CHECK_EQ_INT(cudaMemcpy(got, d_out, n_out * 4, cudaMemcpyDeviceToHost), cudaSuccess);
    size_t bad = 0;
    for (size_t i = 0; i < n_out; i++)
        bad += memcmp(&got[i], &want[i], 4) != 0;
    if (bad)
        fprintf(stderr, "  ranks %d rows %d vocab %d: %zu of %zu values differ\n", ranks, rows, vocab, bad,
                n_out);
    CHECK_EQ_INT(bad, 0);
out:
    free(all);
    free(want);
    free(got);
    cudaFree(d_all);
    cudaFree(d_out);
}

TEST(cuda_tp_logits_unpack_matches_layout) {
    NEED_GPU();
    unpack_case(2, 1, 152064);  /* Qwen2-7B vocab, batch 1 */
    unpack_case(2, 7, 1000);    /* even split, several rows */
    unpack_case(4, 3, 1001);    /* last rank short: pad 251, n_3 = 248 */
    unpack_case(3, 5, 10);      /* pad 4: 4, 4, 2 */
    unpack_case(8, 64, 102400); /* 67B vocab over 8 ranks, 64 streams */
    unpack_case(1, 2, 77);      /* one rank: a plain copy */
}

TEST(cuda_tp_logits_unpack_rejects_bad_args) {
    NEED_GPU();
    float *d = dmalloc(64);
    CHECK(d != NULL);
    CHECK_EQ_INT(dsi_cuda_tp_logits_unpack(NULL, d, 1, 4, 2, 0), DSI_EINVAL);
    CHECK_EQ_INT(dsi_cuda_tp_logits_unpack(d, NULL, 1, 4, 2, 0), DSI_EINVAL);
    CHECK_EQ_INT(dsi_cuda_tp_logits_unpack(d, d, -1, 4, 2, 0), DSI_EINVAL);
    CHECK_EQ_INT(dsi_cuda_tp_logits_unpack(d, d, 1, 0, 2, 0), DSI_EINVAL);
    CHECK_EQ_INT(dsi_cuda_tp_logits_unpack(d, d, 1, 4, 0, 0), DSI_EINVAL);
    CHECK_EQ_INT(dsi_cuda_tp_logits_unpack(d, d, 0, 4, 2, 0), 0); /* nothing to do */
    cudaFree(d);
}

int main(void) {
    RUN(cuda_tp_logits_unpack_matches_layout);
    RUN(cuda_tp_logits_unpack_rejects_bad_args);
    return test_summary();
}
