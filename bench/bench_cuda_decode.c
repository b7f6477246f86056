/*
 * bench_cuda_decode.c: end-to-end speed of the CUDA backend without the HTTP
 * server or the engine: decode tok/s at batch 1 and at many streams, prefill
 * tok/s and time to first token, on the 7B shape with random weights made on
 * the GPU (or on a real model directory with --model).
 *
 *   bench_cuda_decode [--dtype int8|bf16] [--int8-mode w8a16|w8a8] [--model DIR]
 *                     [--shape 7b|v2-lite] [--steps N] [--quick] [--prefill] [--case B,CTX]
 *                     [--sampling T,K,P]
 *   (--quick: the batch-1 cases only; --prefill: the 2k prefill only, after the
 *   batch-1 cases with --quick)
 *   (--case: only the decode of B streams at context CTX, GPU ids, no prefill,
 *   the timed steps between cudaProfilerStart/Stop: `ncu --profile-from-start off`)
 *   (--shape v2-lite: DeepSeek-V2-Lite, MLA + MoE; its bytes per step count the
 *   experts the step can touch: min(streams * top_k, all) of them)
 *   (--sampling: GPU sampling with temperature T, top-k K, top-p P instead of
 *   greedy in the gpu-ids rows; env: DSI_CUDA_GRAPHS=0 disables graphs, DSI_CUDA_Q8_VARIANT=N picks the
 *   INT8 kernel variant, see kernels.h)
 *
 * Decode steps run at a fixed context: the KV cache of each sequence is taken
 * as already filled up to pos (its contents do not change the work), so long
 * contexts need no long prefill. Each timed step is one backend call, host
 * included: forward() with host logits (what the engine uses today) and
 * forward_sample() with GPU sampling (ids only). Bytes per step: the streamed
 * weights (all matrices, int8 + scales or bf16; the embedding row is noise)
 * plus the K/V read by attention; share = bytes / time / 4.25 TB/s.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cuda_profiler_api.h>

#include "dsinfer/backend.h"
#include "dsinfer/clock.h"
#include "dsinfer/err.h"
#include "bench_shapes.h"
#include "cuda_backend.h"
#include "dsinfer/model.h"

#define PEAK 4.25e12

struct run {
    struct dsi_backend *be;
    struct dsi_cuda_sample_params sampling; /* temperature 0: greedy */
    int profile;                            /* --case: the profiler sees the timed steps only */
    int32_t *tokens, *bt, *ids;
    struct dsi_batch_seq *seqs;
    struct dsi_cuda_sample_params *sp;
    float *logits;
};

/* n_seqs sequences at context ctx (decode one token each); returns s/step. */
static double time_decode(struct run *r, int n_seqs, int ctx, int steps, int sample, char **err) {
    int bs = r->be->kv_block_size, bps = (ctx + bs) / bs;
    if ((long long)n_seqs * bps > r->be->n_kv_blocks) {
        fprintf(stderr, "bench: %d seqs x %d tokens do not fit the KV pool (%d blocks)\n", n_seqs, ctx,
                r->be->n_kv_blocks);
        return -1;
    }
    bench_decode_batch(n_seqs, ctx, bs, r->be->vocab_size, r->bt, r->tokens, r->seqs, r->sp);
    if (r->sampling.temperature > 0.f)
        for (int s = 0; s < n_seqs; s++) {
            r->sp[s] = r->sampling;
            r->sp[s].u = (float)((s * 7 + 3) % 64) / 64.f;
        }
    struct dsi_batch b = {.seqs = r->seqs, .n_seqs = n_seqs};
    for (int it = 0; it < 2; it++) { /* warm-up: cuBLAS heuristics, lazy module loading */
        int rc = sample ? dsi_cuda_backend_forward_sample(r->be, &b, r->sp, r->ids, err)
                        : r->be->ops->forward(r->be, &b, r->logits, err);
        if (rc) return -1;
    }
    if (r->profile) cudaProfilerStart();
    double t0 = dsi_now_s();
    for (int it = 0; it < steps; it++) {
        int rc = sample ? dsi_cuda_backend_forward_sample(r->be, &b, r->sp, r->ids, err)
                        : r->be->ops->forward(r->be, &b, r->logits, err);
        if (rc) return -1;
    }
    if (r->profile) {
        dsi_cuda_backend_sync(r->be);
        cudaProfilerStop();
    }
    return (dsi_now_s() - t0) / steps;
}

int main(int argc, char **argv) {
    const char *dtype = "int8", *model_dir = NULL, *shape = "7b";
    int steps = 20, quick = 0, only_b = 0, only_ctx = 0, prefill_only = 0;
    enum dsi_int8_mode int8_mode = DSI_INT8_W8A16;
    struct dsi_cuda_sample_params sampling = {0.f, 0, 1.f, 0.5f, 0};
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--dtype") && i + 1 < argc)
            dtype = argv[++i];
        else if (!strcmp(argv[i], "--model") && i + 1 < argc)
            model_dir = argv[++i];
        else if (!strcmp(argv[i], "--shape") && i + 1 < argc)
            shape = argv[++i];
        else if (!strcmp(argv[i], "--steps") && i + 1 < argc)
            steps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--quick"))
            quick = 1; /* batch-1 cases only */
        else if (!strcmp(argv[i], "--case") && i + 1 < argc &&
                 sscanf(argv[++i], "%d,%d", &only_b, &only_ctx) == 2 && only_b >= 1 && only_b <= 256 &&
                 only_ctx >= 1 && only_ctx <= 4096)
            ;
        else if (!strcmp(argv[i], "--prefill"))
            prefill_only = 1;
        else if (!strcmp(argv[i], "--int8-mode") && i + 1 < argc &&
                 (!strcmp(argv[i + 1], "w8a16") || !strcmp(argv[i + 1], "w8a8")))
            int8_mode = !strcmp(argv[++i], "w8a8") ? DSI_INT8_W8A8 : DSI_INT8_W8A16;
        else if (!strcmp(argv[i], "--sampling") && i + 1 < argc &&
                 sscanf(argv[++i], "%f,%d,%f", &sampling.temperature, &sampling.top_k, &sampling.top_p) ==
                     3 &&
                 sampling.temperature > 0.f && sampling.top_k >= 0 && sampling.top_p > 0.f &&
                 sampling.top_p <= 1.f)
            ;
        else {
            fprintf(stderr, "usage: bench_cuda_decode [--dtype int8|bf16] [--int8-mode w8a16|w8a8] [--model DIR] "
                            "[--shape 7b|v2-lite] [--steps N] [--quick] [--prefill] [--case B,CTX] "
                            "[--sampling T,K,P]\n");
            return 2;
        }
    }
    if (steps < 1 || steps > 10000) steps = 20;
    int int8 = !strcmp(dtype, "int8");
    struct dsi_model m;
    memset(&m, 0, sizeof m);
    char *err = NULL;
    int rc;
    if (model_dir) {
        struct dsi_model_open_opts mo = {.skip_verify = true};
        if ((rc = dsi_model_open(&m, model_dir, &mo, &err))) {
            fprintf(stderr, "bench: %s\n", err ? err : dsi_strerror(rc));
            return 1;
        }
    } else if (!strcmp(shape, "v2-lite")) {
        deepseek_v2_lite(&m.cfg);
    } else {
        qwen2_7b(&m.cfg);
    }
    const int mla = dsi_model_is_mla(&m.cfg);
    const int max_seqs = 256, max_tokens = 2048;
    struct dsi_backend_opts o = {.weight_dtype = int8 ? DSI_W_INT8 : DSI_W_BF16,
                                 .int8_mode = int8 ? int8_mode : DSI_INT8_W8A16,
                                 .kv_dtype = DSI_KV_BF16,
                                 .kv_block_size = 16,
                                 .kv_gpu_fraction = 0.8f,
                                 .max_batch_tokens = max_tokens,
                                 .max_seqs = max_seqs};
    struct dsi_backend *be = NULL;
    double t0 = dsi_now_s();
    rc = model_dir ? dsi_cuda_backend_create(&m, &o, &be, &err)
                   : dsi_cuda_backend_create_random(&m, &o, 42, &be, &err);
    if (rc) {
        fprintf(stderr, "bench: %s\n", err ? err : dsi_strerror(rc));
        return rc == DSI_ENODEV ? 77 : 1;
    }
    double load_s = dsi_now_s() - t0;
    const struct dsi_model_config *c = &m.cfg;
    double wbytes = mla ? mla_stream_bytes(c, int8, 1) : weight_stream_bytes(c, int8);
    double kv_tok = (double)be->kv_bytes_per_token;
    printf("model: %s%s, hidden %d, layers %d, heads %d/%d, inter %d, vocab %d; weights %s: %.2f GB streamed "
           "per step\n",
           model_dir ? model_dir
           : mla     ? "random DeepSeek-V2-Lite shape"
                     : "random 7B shape",
           "", c->hidden_size, c->n_layers, c->n_heads, c->n_kv_heads, c->intermediate_size, c->vocab_size,
           int8 && int8_mode == DSI_INT8_W8A8 ? "int8 w8a8" : dtype, wbytes / 1e9);
    printf("backend: create %.2f s (%s), KV pool %d blocks of %d tokens, %.0f KB KV per token\n", load_s,
           model_dir ? "upload + quantize" : "random fill + quantize", be->n_kv_blocks, be->kv_block_size,
           kv_tok / 1024);
    struct run r = {.be = be, .sampling = sampling, .profile = only_b > 0};
    r.tokens = calloc(max_tokens, 4);
    r.bt = calloc((size_t)be->n_kv_blocks, 4);
    r.ids = calloc(max_seqs, 4);
    r.seqs = calloc(max_seqs, sizeof *r.seqs);
    r.sp = calloc(max_seqs, sizeof *r.sp);
    r.logits = malloc((size_t)max_seqs * c->vocab_size * 4);
    if (!r.tokens || !r.bt || !r.ids || !r.seqs || !r.sp || !r.logits) return 1;

    struct {
        int n_seqs, ctx, sample;
    } cases[] = {{1, 128, 0},   {1, 128, 1},   {1, 2048, 0},  {1, 2048, 1},
                 {16, 1024, 1}, {64, 1024, 1}, {256, 1024, 1}};
    printf("\n%-8s %-6s %-8s %10s %12s %10s %8s\n", "streams", "ctx", "path", "step ms", "tok/s", "GB/step",
           "roofline");
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        if ((quick && cases[i].n_seqs > 1) || (prefill_only && !quick)) break;
        if (only_b && i > 0) break;
        if (only_b) cases[i].n_seqs = only_b, cases[i].ctx = only_ctx, cases[i].sample = 1;
        double dt = time_decode(&r, cases[i].n_seqs, cases[i].ctx, steps, cases[i].sample, &err);
        if (dt < 0) {
            fprintf(stderr, "bench: decode failed: %s\n", err ? err : "?");
            free(err), err = NULL;
            continue;
        }
        double bytes = (mla ? mla_stream_bytes(c, int8, cases[i].n_seqs) : wbytes) +
                       kv_tok * cases[i].n_seqs * cases[i].ctx;
        printf("%-8d %-6d %-8s %10.3f %12.1f %10.2f %7.1f%%\n", cases[i].n_seqs, cases[i].ctx,
               !cases[i].sample             ? "logits"
               : sampling.temperature > 0.f ? "sampled"
                                            : "gpu-ids",
               dt * 1e3, cases[i].n_seqs / dt, bytes / 1e9, 100.0 * bytes / dt / PEAK);
    }
    if ((quick && !prefill_only) || only_b) goto done;
    /* prefill: one 2048-token prompt in one step, logits of the last token */
    int T = 2048, bs = be->kv_block_size, nb = T / bs + 1;
    for (int i = 0; i < T; i++)
        r.tokens[i] = (i * 31 + 5) % c->vocab_size;
    for (int i = 0; i < nb; i++)
        r.bt[i] = i;
    struct dsi_batch_seq s = {.seq_id = 1,
                              .tokens = r.tokens,
                              .n_tokens = T,
                              .pos = 0,
                              .block_table = r.bt,
                              .n_blocks = nb,
                              .want_logits = true};
    struct dsi_batch b = {.seqs = &s, .n_seqs = 1};
    double best = 1e9;
    for (int it = 0; it < 4; it++) {
        double t1 = dsi_now_s();
        if ((rc = be->ops->forward(be, &b, r.logits, &err))) {
            fprintf(stderr, "bench: prefill failed: %s\n", err ? err : "?");
            break;
        }
        double dt = dsi_now_s() - t1;
        if (it > 0 && dt < best) best = dt;
    }
    if (!rc) {
        double flops = 2.0 * T * (wbytes / (int8 ? 1.0 : 2.0));
        printf(
            "\nprefill %d tokens: %.2f ms (time to first token), %.0f tok/s, %.0f TFLOP/s in matmuls+attn\n",
            T, best * 1e3, T / best, flops / best / 1e12);
    }
done:
    dsi_backend_destroy(be);
    if (model_dir) dsi_model_close(&m);
    free(r.tokens), free(r.bt), free(r.ids), free(r.seqs), free(r.sp), free(r.logits);
    return 0;
}
