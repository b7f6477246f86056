/*
 * test_cuda_fused.c: decode-path kernels that replace a sequence of others,
 * against that sequence (each kernel of which test_cuda_kernels.c checks
 * against the CPU reference), on fresh random inputs:
 * - dsi_cuda_rope_kv_store == dsi_cuda_rope then dsi_cuda_kv_store, bit for bit
 *   (q, k and v rows, and the K/V cache slots).
 * Without a GPU every test reports SKIP (exit 77).
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime_api.h>

#include "dsinfer/cpu_ops.h"
#include "dsinfer/kernels.h"
#include "test.h"
#define TEST_CUDA_SEED 0xD1B54A32D192ED03ull
#include "test_cuda_util.h"

static void rope_kv_case(int n_tok, int nh, int nkv, int hd) {
    const int stride = (nh + 2 * nkv) * hd, kv_dim = nkv * hd, n_slots = 4 * n_tok + 8;
    size_t rows = (size_t)n_tok * stride, cache = (size_t)n_slots * kv_dim;
    float *h_qkv = malloc(rows * 4), *a = malloc(rows * 4), *b = malloc(rows * 4);
    int32_t *pos = malloc((size_t)n_tok * 4), *slot = malloc((size_t)n_tok * 4);
    uint16_t *ka = malloc(cache * 2), *kb = malloc(cache * 2), *va = malloc(cache * 2),
             *vb = malloc(cache * 2);
    float inv_freq[128];
    for (size_t i = 0; i < rows; i++)
        h_qkv[i] = 3.f * frand();
    for (int t = 0; t < n_tok; t++) {
        pos[t] = (int)(fabsf(frand()) * 60000.f);
        slot[t] = 4 * t + (t & 3); /* distinct, scattered */
    }
    for (int i = 0; i < hd / 2; i++)
        inv_freq[i] = powf(10000.f, -2.f * (float)i / (float)hd);
    float *d_a = dmalloc(rows * 4), *d_b = dmalloc(rows * 4), *d_if = dmalloc(sizeof inv_freq);
    int32_t *d_pos = dmalloc((size_t)n_tok * 4), *d_slot = dmalloc((size_t)n_tok * 4);
    uint16_t *d_ka = dmalloc(cache * 2), *d_kb = dmalloc(cache * 2), *d_va = dmalloc(cache * 2),
             *d_vb = dmalloc(cache * 2);
    cudaMemcpy(d_a, h_qkv, rows * 4, cudaMemcpyHostToDevice);
    cudaMemcpy(d_b, h_qkv, rows * 4, cudaMemcpyHostToDevice);
    cudaMemcpy(d_if, inv_freq, sizeof inv_freq, cudaMemcpyHostToDevice);
    cudaMemcpy(d_pos, pos, (size_t)n_tok * 4, cudaMemcpyHostToDevice);
    cudaMemcpy(d_slot, slot, (size_t)n_tok * 4, cudaMemcpyHostToDevice);

    CHECK_EQ_INT(dsi_cuda_rope(d_a, stride, n_tok, nh + nkv, hd, d_pos, d_if, 0), 0);
    CHECK_EQ_INT(
        dsi_cuda_kv_store(d_ka, d_va, d_a, stride, nh * hd, (nh + nkv) * hd, d_slot, n_tok, kv_dim, 0), 0);
    CHECK_EQ_INT(dsi_cuda_rope_kv_store(d_b, stride, n_tok, nh, nkv, hd, d_pos, d_if, d_kb, d_vb, d_slot, 0),
                 0);
    CHECK_EQ_INT(cudaDeviceSynchronize(), 0);
    cudaMemcpy(a, d_a, rows * 4, cudaMemcpyDeviceToHost);
    cudaMemcpy(b, d_b, rows * 4, cudaMemcpyDeviceToHost);
    cudaMemcpy(ka, d_ka, cache * 2, cudaMemcpyDeviceToHost);
    cudaMemcpy(kb, d_kb, cache * 2, cudaMemcpyDeviceToHost);
    cudaMemcpy(va, d_va, cache * 2, cudaMemcpyDeviceToHost);
    cudaMemcpy(vb, d_vb, cache * 2, cudaMemcpyDeviceToHost);
    CHECK(memcmp(a, b, rows * 4) == 0);
    CHECK(memcmp(ka, kb, cache * 2) == 0);
    CHECK(memcmp(va, vb, cache * 2) == 0);
    /* the rotation really happened and reached the cache */
    CHECK(memcmp(a, h_qkv, rows * 4) != 0);
    int nonzero = 0; /* the written slots only: the others stay zero */
    for (int t = 0; t < n_tok; t++)
        for (int i = 0; i < kv_dim; i++)
            nonzero += kb[(size_t)slot[t] * kv_dim + i] != 0;
    CHECK(nonzero > n_tok * kv_dim / 2);
    CHECK_EQ_INT(
        dsi_cuda_rope_kv_store(d_b, stride - 1, n_tok, nh, nkv, hd, d_pos, d_if, d_kb, d_vb, d_slot, 0),
        DSI_EINVAL);

    cudaFree(d_a), cudaFree(d_b), cudaFree(d_if), cudaFree(d_pos), cudaFree(d_slot);
    cudaFree(d_ka), cudaFree(d_kb), cudaFree(d_va), cudaFree(d_vb);
    free(h_qkv), free(a), free(b), free(pos), free(slot), free(ka), free(kb), free(va), free(vb);
}

TEST(cuda_rope_kv_store_equals_rope_then_store) {
    NEED_GPU();
    rope_kv_case(1, 28, 4, 128); /* 7B decode */
    rope_kv_case(37, 14, 2, 64);
    rope_kv_case(5, 8, 8, 256);
}

int main(void) {
    RUN(cuda_rope_kv_store_equals_rope_then_store);
    return test_summary();
}
