/*
 * memplan.c: the GPU memory plan of a load and its out-of-memory message
 * (include/dsinfer/memplan.h). Sizes are size_t bytes; every sum is checked,
 * so a plan with absurd sizes fails as "does not fit" instead of wrapping.
 */
#include "dsinfer/memplan.h"

#include <stdint.h>
#include <stdio.h>

#include "dsinfer/err.h"

static double gib(size_t b) { return (double)b / 1073741824.0; }

/* a + b, or SIZE_MAX when it overflows (never fits). */
static size_t add_sat(size_t a, size_t b) { return a > SIZE_MAX - b ? SIZE_MAX : a + b; }

/* What to change, by the first part that does not fit. */
static const char *advice(const struct dsi_mem_plan *p, size_t fixed) {
    if (p->weight_bytes > p->free_bytes)
        return p->int8 ? "the weights alone do not fit even as int8: spread the model over more GPUs "
                         "(tensor parallel) or free the GPU (nvidia-smi lists what holds it)"
                       : "the weights alone do not fit: use --dtype int8 (about half the bf16 size), spread the "
                         "model over more GPUs (tensor parallel), or free the GPU (nvidia-smi lists what holds it)";
    if (fixed > p->free_bytes)
        return p->int8 ? "lower max_batch_tokens (the workspace grows with it) or max_running"
                       : "lower max_batch_tokens (the workspace grows with it) or max_running, or use --dtype int8";
    return p->int8 ? "lower max_running (each running sequence needs a KV block) or free the GPU (nvidia-smi)"
                   : "lower max_running (each running sequence needs a KV block), use --dtype int8, or free the GPU "
                     "(nvidia-smi)";
}

int dsi_mem_plan_fit(const struct dsi_mem_plan *p, int *n_kv_blocks, char **err) {
    *n_kv_blocks = 0;
    if (p->kv_block_bytes == 0 || !(p->kv_gpu_fraction > 0.0f && p->kv_gpu_fraction <= 1.0f))
        return dsi_seterr(err, DSI_EINVAL, "memory plan: KV block of %zu bytes, kv_gpu_fraction %g", p->kv_block_bytes,
                          (double)p->kv_gpu_fraction);
    int min_blocks = p->kv_min_blocks > 1 ? p->kv_min_blocks : 1;
    size_t fixed = add_sat(p->weight_bytes, p->workspace_bytes);
    size_t kv_min = (size_t)min_blocks > SIZE_MAX / p->kv_block_bytes ? SIZE_MAX : (size_t)min_blocks * p->kv_block_bytes;
    size_t need = add_sat(fixed, kv_min);
    if (need > p->free_bytes) {
        char ws[64] = ""; /* 0: not known yet (the check before the upload) */
        if (p->workspace_bytes) snprintf(ws, sizeof ws, ", workspace %.1f", gib(p->workspace_bytes));
        return dsi_seterr(err, DSI_ENOMEM,
                          "GPU %d out of memory: the model needs %.1f GiB (weights %.1f%s, KV cache at least %.1f for "
                          "%d blocks) but %.1f GiB of %.1f GiB is free; %s",
                          p->device, gib(need), gib(p->weight_bytes), ws, gib(kv_min), min_blocks, gib(p->free_bytes),
                          gib(p->total_bytes), advice(p, fixed));
    }
    size_t left = p->free_bytes - fixed;
    size_t kv = (size_t)((double)left * (double)p->kv_gpu_fraction);
    size_t blocks = kv / p->kv_block_bytes;
    if (blocks < (size_t)min_blocks)
        return dsi_seterr(err, DSI_ENOMEM,
                          "GPU %d out of memory: the KV cache gets %.2f GiB (kv_gpu_fraction %.2f of the %.1f GiB "
                          "left after weights %.1f and workspace %.1f GiB; %.1f GiB of %.1f GiB was free): %zu "
                          "blocks, fewer than the %d it needs (one per running sequence); raise kv_gpu_fraction or "
                          "lower max_running",
                          p->device, gib(kv), (double)p->kv_gpu_fraction, gib(left), gib(p->weight_bytes),
                          gib(p->workspace_bytes), gib(p->free_bytes), gib(p->total_bytes), blocks, min_blocks);
    *n_kv_blocks = blocks > (size_t)INT32_MAX ? INT32_MAX : (int)blocks;
    return 0;
}

size_t dsi_mem_plan_weight_bytes(const struct dsi_safetensors *st, bool int8, int group_size) {
    size_t total = 0;
    for (size_t i = 0; i < st->n_tensors; i++) {
        const struct dsi_tensor *t = &st->tensors[i];
        size_t n = t->n_elems, b;
        if (int8 && t->n_dims >= 2 && t->shape[0] > 0) {
            size_t groups = group_size > 0 ? n / (size_t)group_size : (size_t)t->shape[0];
            b = add_sat(n, (groups ? groups : 1) > SIZE_MAX / 4 ? SIZE_MAX : (groups ? groups : 1) * 4);
        } else {
            b = n > SIZE_MAX / 2 ? SIZE_MAX : n * 2;
        }
        total = add_sat(total, b);
    }
    return total;
}
