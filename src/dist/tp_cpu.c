/*
 * tp_cpu.c: the tensor-parallel backend. On rank 0 it is a struct
 * dsi_backend like any other (dsi_backend_create("cpu") returns it when MPI
 * started more than one rank); its forward broadcasts the validated batch and
 * then runs rank 0's shard. Ranks > 0 run dsi__tp_worker_loop: they build the
 * same shard on "create", run every "forward" they receive, free it on
 * "destroy" and return on "shutdown". A shard is the CPU backend over its
 * slices (dsi_cpu_backend_create_shard), with the all-reduce and the logits
 * gather it calls back done here over MPI, or the CUDA backend's (tp_cuda.c).
 *
 * Every rank enters the same collectives in the same order: a message that a
 * worker cannot validate is fatal for that worker (it cannot take part in the
 * step), and main.c then MPI_Aborts the whole job instead of leaving rank 0
 * waiting in an all-reduce. An MPI error on rank 0 marks the backend dead: every
 * later forward fails with DSI_EDIST, so requests fail and the service drains.
 */
#ifdef DSI_HAVE_MPI
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dsinfer/err.h"
#include "dsinfer/log.h"
#include "tp_internal.h"

static int tp_forward(struct dsi_backend *be, const struct dsi_batch *b, float *logits, char **err);
static void tp_destroy(struct dsi_backend *be);
static int agree_and_build(enum dsi_tp_backend kind, const struct dsi_model *m,
                           const struct dsi_backend_opts *o, const unsigned char *nccl_id, int pre,
                           struct dsi__tp **t, char **err);
static int mpi_all_reduce(void *ctx, float *buf, size_t n, char **err);
static int mpi_gather_logits(void *ctx, const float *local, int n_rows, float *logits, char **err);
static int worker_create(const int32_t *words, uint32_t n_words, struct dsi_model *model, bool *have_model,
                         struct dsi__tp **t, char **err);

static const struct dsi_backend_ops tp_ops = {
    .name = "cpu-tp",
    .forward = tp_forward,
    .quant_report = NULL,
    .destroy = tp_destroy,
};

/* Rank 0's CUDA tensor parallel: the same protocol, a CUDA shard per rank
 * (tp_cuda.c), and sampling on rank 0's GPU from the gathered logits. */
static const struct dsi_backend_ops tp_cuda_ops = {
    .name = "cuda-tp",
    .forward = tp_forward,
    .forward_sample = dsi__tp_forward_sample,
    .quant_report = NULL,
    .destroy = tp_destroy,
};

/* The CPU shard's all-reduce (backend.h struct dsi_shard). */
static int mpi_all_reduce(void *ctx, float *buf, size_t n, char **err) {
    struct dsi__tp *t = ctx;
    if (n > (size_t)INT_MAX) return dsi_seterr(err, DSI_EOVERFLOW, "all-reduce of %zu floats", n);
    int mrc = MPI_Allreduce(MPI_IN_PLACE, buf, (int)n, MPI_FLOAT, MPI_SUM, t->comm);
    return mrc == MPI_SUCCESS ? 0 : dsi__dist_mpierr(mrc, "all-reduce of a layer's output", err);
}

/* The CPU shard's logits: rank r's local is (n_rows, v_counts[r]); rank 0
 * receives every rank's block into lg_all (rank-major) and scatters them into
 * logits (n_rows, vocab). */
static int mpi_gather_logits(void *ctx, const float *local, int n_rows, float *logits, char **err) {
    struct dsi__tp *t = ctx;
    int *counts = t->g_counts, *displs = t->g_displs;
    for (int r = 0; r < t->size; r++) {
        counts[r] = t->v_counts[r] * n_rows;
        displs[r] = t->v_displs[r] * n_rows;
    }
    int mrc = MPI_Gatherv(local, t->v_counts[t->rank] * n_rows, MPI_FLOAT, t->lg_all, counts, displs,
                          MPI_FLOAT, 0, t->comm);
    if (mrc != MPI_SUCCESS) return dsi__dist_mpierr(mrc, "gather of logits", err);
    if (t->rank != 0) return 0;
    if (!logits) return dsi_seterr(err, DSI_EINVAL, "tensor parallel: logits wanted but no buffer");
    size_t V = (size_t)t->vocab_size;
    for (int r = 0; r < t->size; r++) {
        const float *blk = t->lg_all + displs[r];
        int w = t->v_counts[r], v0 = t->v_displs[r];
        for (int o = 0; o < n_rows; o++)
            memcpy(logits + (size_t)o * V + (size_t)v0, blk + (size_t)o * (size_t)w,
                   (size_t)w * sizeof(float));
    }
    return 0;
}

int dsi__tp_alloc_msg(struct dsi__tp *t, char **err) {
    int rc = dsi_tp_batch_max_words(&t->lim, &t->msg_cap);
    if (rc) return dsi_seterr(err, rc, "tensor parallel: forward message size overflows");
    t->msg = calloc(t->msg_cap, sizeof(int32_t));
    t->seqs = calloc((size_t)t->lim.max_seqs, sizeof *t->seqs);
    if (!t->msg || !t->seqs) return dsi_seterr(err, DSI_ENOMEM, "out of memory");
    return 0;
}

/* The gather's layout: every rank's vocab rows (dsi_shard_range, as the shards
 * cut them) and, on rank 0, room for a step's logits. */
static int alloc_gather(struct dsi__tp *t, int max_seqs, char **err) {
    size_t n = (size_t)t->size;
    t->v_counts = calloc(n, sizeof(int));
    t->v_displs = calloc(n, sizeof(int));
    t->g_counts = calloc(n, sizeof(int));
    t->g_displs = calloc(n, sizeof(int));
    size_t lg = t->rank == 0 ? (size_t)max_seqs * (size_t)t->vocab_size : 1;
    if ((size_t)max_seqs * (size_t)t->vocab_size > (size_t)INT_MAX)
        return dsi_seterr(err, DSI_EOVERFLOW, "tensor parallel: %d rows of %d logits are too many to gather",
                          max_seqs, t->vocab_size);
    t->lg_all = calloc(lg, sizeof(float));
    if (!t->v_counts || !t->v_displs || !t->g_counts || !t->g_displs || !t->lg_all)
        return dsi_seterr(err, DSI_ENOMEM, "out of memory");
    for (int r = 0; r < t->size; r++) {
        int lo, hi;
        dsi_shard_range(t->vocab_size, t->size, r, 1, &lo, &hi);
        t->v_counts[r] = hi - lo;
        t->v_displs[r] = lo;
    }
    return 0;
}

int dsi__tp_create_shard(const struct dsi_model *m, const struct dsi_backend_opts *o, struct dsi__tp **out,
                         char **err) {
    *out = NULL;
    MPI_Comm comm = dsi__dist_comm();
    if (comm == MPI_COMM_NULL) return dsi_seterr(err, DSI_ESTATE, "tensor parallel: MPI is not initialised");
    struct dsi__tp *t = calloc(1, sizeof *t);
    if (!t) return dsi_seterr(err, DSI_ENOMEM, "out of memory");
    t->comm = comm;
    MPI_Comm_rank(comm, &t->rank);
    MPI_Comm_size(comm, &t->size);
    struct dsi_shard sh = {.rank = t->rank,
                           .size = t->size,
                           .all_reduce = mpi_all_reduce,
                           .gather_logits = mpi_gather_logits,
                           .ctx = t};
    int rc = dsi_cpu_backend_create_shard(m, o, &sh, &t->shard, err);
    if (rc) goto fail;
    const struct dsi_backend *s = t->shard;
    int max_tokens = 0, max_seqs = 0, max_ctx = 0;
    dsi_cpu_backend_limits(s, &max_tokens, &max_seqs, &max_ctx);
    t->vocab_size = s->vocab_size;
    t->be.model = m;
    t->be.impl = t;
    t->be.vocab_size = s->vocab_size;
    t->be.kv_block_size = s->kv_block_size;
    t->be.n_kv_blocks = s->n_kv_blocks; /* the engine sees the whole model's blocks */
    t->be.weight_bytes = s->weight_bytes;
    t->be.kv_bytes_per_token = s->kv_bytes_per_token;
    t->lim = (struct dsi_tp_limits){.max_tokens = max_tokens,
                                    .max_ctx = max_ctx,
                                    .block_size = s->kv_block_size,
                                    .n_kv_blocks = s->n_kv_blocks,
                                    .vocab_size = s->vocab_size,
                                    .max_seqs = max_seqs};
    if ((rc = alloc_gather(t, max_seqs, err)) || (rc = dsi__tp_alloc_msg(t, err))) goto fail;
    *out = t;
    return 0;
fail:
    dsi__tp_free_shard(t);
    return rc;
}

void dsi__tp_free_shard(struct dsi__tp *t) {
    if (!t) return;
    if (t->shard) t->shard->ops->destroy(t->shard);
    free(t->v_counts);
    free(t->v_displs);
    free(t->g_counts);
    free(t->g_displs);
    free(t->lg_all);
    free(t->msg);
    free(t->seqs);
    free(t);
}

/* Every rank after "create": pre is 0 when this rank can build its shard (else
 * the error, already in *err). One MPI_Allreduce tells every rank whether all
 * can; only then does any rank build (the CUDA shard's NCCL set-up waits for
 * all ranks, so a lone rank would hang there). Returns the status for the
 * gather: pre, the build's result, or 0 with no shard when another rank
 * could not (that rank reports why). */
static int agree_and_build(enum dsi_tp_backend kind, const struct dsi_model *m,
                           const struct dsi_backend_opts *o, const unsigned char *nccl_id, int pre,
                           struct dsi__tp **t, char **err) {
    int ok = pre == 0, all_ok = 0;
    *t = NULL;
    int mrc = MPI_Allreduce(&ok, &all_ok, 1, MPI_INT, MPI_MIN, dsi__dist_comm());
    if (mrc != MPI_SUCCESS) return dsi__dist_mpierr(mrc, "agreement to build the shards", err);
    if (pre) return pre;
    if (!all_ok) return 0;
    return kind == DSI_TP_BACKEND_CUDA ? dsi__tp_create_cuda_shard(m, o, nccl_id, t, err)
                                       : dsi__tp_create_shard(m, o, t, err);
}

int dsi_tp_backend_create(enum dsi_tp_backend kind, const struct dsi_model *m,
                          const struct dsi_backend_opts *o, struct dsi_backend **out, char **err) {
    if (!out) return DSI_EINVAL;
    *out = NULL;
    if (!m || !o || !m->dir)
        return dsi_seterr(err, DSI_EINVAL, "tensor parallel: model and options are required");
    if (dsi_dist_rank() != 0 || dsi_dist_size() < 2)
        return dsi_seterr(err, DSI_ESTATE, "tensor parallel backend is created on rank 0 of an MPI run");
    if (dsi__dist_has_backend())
        return dsi_seterr(err, DSI_EBUSY, "tensor parallel: one backend at a time (the workers mirror it)");
    const struct dsi_model_config *cfg = &m->cfg;
    struct dsi_tp_create c = {.opts = *o,
                              .backend = kind,
                              .vocab_size = cfg->vocab_size,
                              .hidden_size = cfg->hidden_size,
                              .intermediate_size = cfg->intermediate_size,
                              .n_layers = cfg->n_layers,
                              .n_heads = cfg->n_heads,
                              .n_kv_heads = cfg->n_kv_heads,
                              .head_dim = cfg->head_dim};
    if (strlen(m->dir) > DSI_TP_MAX_DIR)
        return dsi_seterr(err, DSI_EINVAL, "tensor parallel: model dir path longer than %d bytes",
                          DSI_TP_MAX_DIR);
    snprintf(c.dir, sizeof c.dir, "%s", m->dir);
    int rc;
    /* a model opened for the CUDA loader's single verify + upload pass has its
     * files unhashed; the workers read their slices as soon as "create" arrives,
     * so every file is verified here first, whole, once */
    if (dsi_model_unverified(m) > 0 && (rc = dsi_model_verify_pending(m, o->n_threads, err))) return rc;
    if (kind == DSI_TP_BACKEND_CUDA && (rc = dsi__tp_cuda_id(c.nccl_id, err))) return rc;
    int32_t words[DSI_TP_CREATE_WORDS];
    size_t n_words = 0;
    if ((rc = dsi_tp_create_encode(&c, words, &n_words, err))) return rc;
    /* the workers will check these words like outside input: check them here
     * first, so a bad option is rank 0's clear error, not a worker's */
    struct dsi_tp_create echo;
    if ((rc = dsi_tp_create_decode(words, n_words, &echo, err))) return rc;
    int size = dsi_dist_size();
    int *all = calloc((size_t)size * 2, sizeof *all); /* before "create": the gather must not fail later */
    if (!all) return dsi_seterr(err, DSI_ENOMEM, "out of memory");
    if ((rc = dsi__dist_send(DSI_TP_MSG_CREATE, words, (uint32_t)n_words, 0, err))) {
        free(all);
        return rc;
    }
    /* from here every rank builds its shard; all of them meet again in the gather */
    struct dsi__tp *t = NULL;
    char *lerr = NULL;
    struct dsi_backend_opts lo = *o;
    int pre = kind == DSI_TP_BACKEND_CUDA ? dsi__tp_cuda_check(cfg, &lo, &lerr) : 0;
    int st = agree_and_build(kind, m, &lo, c.nccl_id, pre, &t, &lerr);
    int mine[2] = {st, t ? t->be.n_kv_blocks : 0};
    int mrc = MPI_Gather(mine, 2, MPI_INT, all, 2, MPI_INT, 0, dsi__dist_comm());
    int bad = st ? 0 : -1;
    for (int r = 1; mrc == MPI_SUCCESS && r < size && bad < 0; r++)
        if (all[2 * r]) bad = r;
    rc = 0;
    if (mrc != MPI_SUCCESS) {
        rc = dsi__dist_mpierr(mrc, "gather of shard status", err);
    } else if (bad == 0) {
        rc = dsi_seterr(err, st, "rank 0: %s", lerr ? lerr : dsi_strerror(st));
    } else if (bad > 0) {
        rc = dsi_seterr(err, all[2 * bad] < 0 ? all[2 * bad] : DSI_EDIST,
                        "rank %d could not build its shard (%s); its log says why", bad,
                        dsi_strerror(all[2 * bad]));
    } else if (!t) {
        rc = dsi_seterr(err, DSI_EINTERNAL, "tensor parallel: no shard built and no rank said why");
    }
    for (int r = 1; !rc && r < size; r++)
        if (all[2 * r + 1] < 1)
            rc = dsi_seterr(err, DSI_EDIST, "rank %d built its shard but reported %d KV blocks", r,
                            all[2 * r + 1]);
    if (!rc) { /* the engine may use only the blocks every rank has */
        for (int r = 1; r < size; r++)
            if (all[2 * r + 1] < t->be.n_kv_blocks) t->be.n_kv_blocks = all[2 * r + 1];
        t->lim.n_kv_blocks = t->be.n_kv_blocks;
        if ((long long)t->lim.max_ctx > (long long)t->be.n_kv_blocks * t->be.kv_block_size)
            t->lim.max_ctx = t->be.n_kv_blocks * t->be.kv_block_size;
    }
    free(lerr);
    free(all);
    if (rc) {
        dsi__tp_free_shard(t);
        char *derr = NULL;
        /* let the workers that did build a shard free it (after an MPI error, try anyway) */
        if (dsi__dist_send(DSI_TP_MSG_DESTROY, NULL, 0, 0, &derr)) free(derr);
        return rc;
    }
    t->be.ops = kind == DSI_TP_BACKEND_CUDA ? &tp_cuda_ops : &tp_ops;
    dsi__dist_set_backend(true);
    dsi_log(DSI_LOG_INFO, "dist",
            "tensor parallel %s backend ready over %d ranks (%d KV blocks of %d tokens)",
            kind == DSI_TP_BACKEND_CUDA ? "CUDA" : "CPU", size, t->be.n_kv_blocks, t->be.kv_block_size);
    *out = &t->be;
    return 0;
}

static void tp_destroy(struct dsi_backend *be) {
    if (!be) return;
    struct dsi__tp *t = be->impl;
    if (!t->dead) {
        char *err = NULL;
        if (dsi__dist_send(DSI_TP_MSG_DESTROY, NULL, 0, 0, &err)) {
            dsi_log(DSI_LOG_ERROR, "dist", "could not tell the workers to free their shards: %s",
                    err ? err : "?");
            free(err);
        }
    }
    dsi__dist_set_backend(false);
    dsi__tp_free_shard(t);
}

/* A failure while or after the batch went out. CPU: MPI broke, the backend is dead and
 * the service drains. CUDA: the workers are inside NCCL collectives that will
 * never complete, so the job ends here (systemd restarts it). */
static int step_failed(struct dsi__tp *t, int rc, char **err) {
    t->dead = true;
    dsi_log(DSI_LOG_ERROR, "dist", "tensor parallel step %u failed on rank 0; the backend is down: %s",
            (unsigned)t->step, err && *err ? *err : dsi_strerror(rc));
    if (t->cuda) dsi__dist_fatal("a CUDA tensor-parallel step failed on rank 0");
    return rc;
}

/* Rank 0: validates the batch (so a bad one fails here, before any rank sees it)
 * and broadcasts it. *T: its token count (0: nothing to run). */
static int send_step(struct dsi__tp *t, const struct dsi_batch *b, bool want_out, int *T, char **err) {
    *T = 0;
    if (t->dead)
        return dsi_seterr(err, DSI_EDIST, "tensor parallel is down after an error; restart the service");
    int rc = dsi_tp_batch_check(b, &t->lim, err);
    if (rc) return rc;
    int n_out = 0, n_tok = 0;
    for (int i = 0; i < b->n_seqs; i++) {
        n_tok += b->seqs[i].n_tokens;
        n_out += b->seqs[i].want_logits ? 1 : 0;
    }
    if (n_tok == 0) return 0;
    if (n_out > 0 && !want_out)
        return dsi_seterr(err, DSI_EINVAL, "tensor parallel: logits wanted but no buffer");
    size_t n_words = 0;
    if ((rc = dsi_tp_batch_encode(b, t->be.kv_block_size, t->msg, t->msg_cap, &n_words, err))) return rc;
    t->step++;
    if ((rc = dsi__dist_send(DSI_TP_MSG_FORWARD, t->msg, (uint32_t)n_words, t->step, err)))
        return step_failed(t, rc, err);
    *T = n_tok;
    return 0;
}

static int tp_forward(struct dsi_backend *be, const struct dsi_batch *b, float *logits, char **err) {
    struct dsi__tp *t = be->impl;
    int T = 0;
    int rc = send_step(t, b, logits != NULL, &T, err);
    if (rc || T == 0) return rc;
    if ((rc = t->shard->ops->forward(t->shard, b, logits, err))) return step_failed(t, rc, err);
    return 0;
}

int dsi__tp_forward_sample(struct dsi_backend *be, const struct dsi_batch *b,
                           const struct dsi_sample_params *p, int32_t *ids, char **err) {
    struct dsi__tp *t = be->impl;
    if (!t->cuda)
        return dsi_seterr(err, DSI_EINVAL, "tensor parallel: sampling on the GPU needs the CUDA shards");
    int T = 0;
    int rc = send_step(t, b, p && ids, &T, err);
    if (rc || T == 0) return rc;
    if ((rc = t->shard->ops->forward_sample(t->shard, b, p, ids, err))) return step_failed(t, rc, err);
    return 0;
}

/* Worker side of "create": decode, open the model without re-hashing, compare
 * the config fingerprint, then agree with every rank and build the shard
 * (agree_and_build). Returns the status sent to rank 0. */
static int worker_create(const int32_t *words, uint32_t n_words, struct dsi_model *model, bool *have_model,
                         struct dsi__tp **t, char **err) {
    struct dsi_tp_create c;
    int pre = dsi_tp_create_decode(words, n_words, &c, err);
    if (!pre) {
        dsi_log(
            DSI_LOG_INFO, "dist",
            "rank %d opens %s without re-hashing it: rank 0 checked SHA256SUMS over the whole files before "
            "any rank uses them",
            dsi_dist_rank(), c.dir);
        struct dsi_model_open_opts mo = {.skip_verify = true, .n_threads = 1};
        if (*have_model) dsi_model_close(model); /* a failed create left it open */
        *have_model = false;
        pre = dsi_model_open(model, c.dir, &mo, err);
        *have_model = pre == 0;
    }
    const struct dsi_model_config *cfg = &model->cfg;
    if (!pre && (cfg->vocab_size != c.vocab_size || cfg->hidden_size != c.hidden_size ||
                 cfg->intermediate_size != c.intermediate_size || cfg->n_layers != c.n_layers ||
                 cfg->n_heads != c.n_heads || cfg->n_kv_heads != c.n_kv_heads || cfg->head_dim != c.head_dim))
        pre =
            dsi_seterr(err, DSI_EINTEGRITY,
                       "%s on rank %d is not the model rank 0 opened (config differs); every host needs the "
                       "same model directory",
                       c.dir, dsi_dist_rank());
    struct dsi_backend_opts lo = c.opts;
    if (!pre && c.backend == DSI_TP_BACKEND_CUDA) pre = dsi__tp_cuda_check(cfg, &lo, err);
    return agree_and_build(c.backend, model, &lo, c.nccl_id, pre, t, err);
}

int dsi__tp_worker_loop(char **err) {
    MPI_Comm comm = dsi__dist_comm();
    struct dsi_model model;
    bool have_model = false;
    struct dsi__tp *t = NULL;
    int32_t cbuf[DSI_TP_CREATE_WORDS];
    int rc = 0, mrc;
    memset(&model, 0, sizeof model);
    for (;;) {
        uint32_t hdr[DSI_TP_HDR_WORDS];
        if ((rc = dsi__dist_recv_hdr(hdr, err))) break;
        uint32_t limit = hdr[2] == DSI_TP_MSG_CREATE         ? DSI_TP_CREATE_WORDS
                         : hdr[2] == DSI_TP_MSG_FORWARD && t ? (uint32_t)t->msg_cap
                                                             : 0;
        if ((rc = dsi_tp_hdr_check(hdr, limit, err))) break;
        if (hdr[2] == DSI_TP_MSG_SHUTDOWN) break;
        if (hdr[2] == DSI_TP_MSG_DESTROY) {
            dsi__tp_free_shard(t);
            t = NULL;
            if (have_model) dsi_model_close(&model);
            have_model = false;
            continue;
        }
        int32_t *buf = hdr[2] == DSI_TP_MSG_CREATE ? cbuf : t ? t->msg : NULL;
        if (!buf) {
            rc = dsi_seterr(err, DSI_EFORMAT, "forward message before create");
            break;
        }
        if (hdr[3] > 0 && (mrc = MPI_Bcast(buf, (int)hdr[3], MPI_INT32_T, 0, comm)) != MPI_SUCCESS) {
            rc = dsi__dist_mpierr(mrc, "receive of a control payload", err);
            break;
        }
        if (hdr[2] == DSI_TP_MSG_CREATE) {
            if (t) {
                rc = dsi_seterr(err, DSI_EFORMAT, "create message while a shard exists");
                break;
            }
            char *cerr = NULL;
            int st = worker_create(cbuf, hdr[3], &model, &have_model, &t, &cerr);
            if (st)
                dsi_log(DSI_LOG_ERROR, "dist", "rank %d cannot build its shard: %s", dsi_dist_rank(),
                        cerr ? cerr : dsi_strerror(st));
            free(cerr);
            int mine[2] = {st, t ? t->be.n_kv_blocks : 0};
            if ((mrc = MPI_Gather(mine, 2, MPI_INT, NULL, 0, MPI_INT, 0, comm)) != MPI_SUCCESS) {
                rc = dsi__dist_mpierr(mrc, "gather of shard status", err);
                break;
            }
            continue;
        }
        struct dsi_batch b;
        if ((rc = dsi_tp_batch_decode(t->msg, hdr[3], &t->lim, t->seqs, &b, err))) break;
        if ((rc = t->shard->ops->forward(t->shard, &b, NULL, err))) {
            /* CUDA: the other ranks sit in this step's collectives, which cannot
             * complete: end the job before tearing anything down */
            if (t->cuda) {
                dsi_log(DSI_LOG_ERROR, "dist", "rank %d: step %u failed: %s", dsi_dist_rank(),
                        (unsigned)hdr[4], err && *err ? *err : dsi_strerror(rc));
                dsi__dist_fatal("a CUDA tensor-parallel step failed on a worker");
            }
            break;
        }
    }
    dsi__tp_free_shard(t);
    if (have_model) dsi_model_close(&model);
    return rc;
}
#else
typedef int dsi__tp_cpu_needs_mpi;
#endif
