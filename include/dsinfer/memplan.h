/*
 * memplan.h: does a model fit on a GPU, and if not, what to tell the operator.
 *
 * The CUDA backend loads weights, then allocates its step workspace (sized by
 * max_batch_tokens and max_running), then gives the KV cache kv_gpu_fraction
 * of what is still free. dsi_mem_plan_fit is the arithmetic of that plan and
 * the one place its failure message is written, so that "CUDA out of memory"
 * at load always says how much was needed (weights, workspace, KV), how much
 * was free, and which option to change. Pure: no CUDA, tested on the CPU
 * (tests/test_memplan.c).
 *
 * Owner: src/model (sizes of a model in memory).
 */
#ifndef DSINFER_MEMPLAN_H
#define DSINFER_MEMPLAN_H

#include <stdbool.h>
#include <stddef.h>

#include "dsinfer/model.h"

struct dsi_mem_plan {
    int device;              /* CUDA ordinal, for the message */
    size_t free_bytes;       /* free on the device before the load (cudaMemGetInfo) */
    size_t total_bytes;      /* the device's memory */
    size_t weight_bytes;     /* the weights as the device holds them */
    size_t workspace_bytes;  /* activations and scratch for max_batch_tokens / max_running;
                              * 0: not known yet (left out of the message) */
    size_t kv_block_bytes;   /* one KV block over all layers */
    int kv_min_blocks;       /* the least useful pool: one block per running sequence */
    float kv_gpu_fraction;   /* share of what is left after weights and workspace, (0, 1] */
    bool int8;               /* weights already int8: --dtype int8 is no advice */
};

/* The plan's KV pool: *n_kv_blocks blocks of kv_block_bytes in
 * kv_gpu_fraction of (free - weights - workspace). Returns 0, DSI_EINVAL for a
 * plan that makes no sense (zero block size, fraction outside (0, 1]), or
 * DSI_ENOMEM with a one-line message in *err when weights + workspace + the
 * smallest useful KV pool (kv_min_blocks, at least 1) do not fit, of the form
 *   "GPU 0 out of memory: the model needs 17.3 GiB (weights 14.2, workspace
 *    2.1, KV cache at least 1.0 for 64 blocks) but 12.0 GiB of 79.1 GiB is
 *    free; <what to change>"
 * where what to change depends on what does not fit: the weights alone (use
 * --dtype int8, more GPUs, or free the GPU), the workspace (lower
 * max_batch_tokens or max_running), or the KV pool (raise kv_gpu_fraction,
 * lower max_running). */
int dsi_mem_plan_fit(const struct dsi_mem_plan *p, int *n_kv_blocks, char **err);

/* Bytes the tensors of st take on a device holding weights as bf16 (int8
 * false) or as int8 (matrices 1 byte per element plus one f32 scale per row,
 * or per group of group_size inputs; vectors stay bf16). An estimate for the
 * plan before the upload; SIZE_MAX on overflow. */
size_t dsi_mem_plan_weight_bytes(const struct dsi_safetensors *st, bool int8, int group_size);

#endif
