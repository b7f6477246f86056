/*
 * rank0.c: the tensor-parallel backend on rank 0. It is a struct dsi_backend
 * like any other (dsi_backend_create("cpu" / "cuda") returns it when MPI
 * started more than one rank): create sends "create" and gathers every rank's
 * status, forward validates and broadcasts the batch (wire.c) and then runs
 * rank 0's own shard, destroy sends "destroy". The workers mirror every call
 * (worker.c).
 *
 * Every rank enters the same collectives in the same order. An MPI error on
 * rank 0 marks the backend dead: every later forward fails with DSI_EDIST and
 * the dead op says so, so the engine fails every request and refuses new ones
 * and the server stops its watchdog pings (systemd restarts the service).
 */
#ifdef DSI_HAVE_MPI
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dsinfer/err.h"
#include "dsinfer/log.h"
#include "parallel_internal.h"

static int tp_forward(struct dsi_backend *be, const struct dsi_batch *b, float *logits, char **err);
static void tp_destroy(struct dsi_backend *be);
static bool tp_dead(struct dsi_backend *be);

static const struct dsi_backend_ops tp_ops = {
    .name = "cpu-tp",
    .forward = tp_forward,
    .dead = tp_dead,
    .quant_report = NULL,
    .destroy = tp_destroy,
};

/* Rank 0's CUDA tensor parallel: the same protocol, a CUDA shard per rank
 * (tp_cuda.c), and sampling on rank 0's GPU from the gathered logits. */
static const struct dsi_backend_ops tp_cuda_ops = {
    .name = "cuda-tp",
    .forward = tp_forward,
    .forward_sample = dsi__tp_forward_sample,
    .dead = tp_dead,
    .quant_report = NULL,
    .destroy = tp_destroy,
};

int dsi_tp_backend_create(enum dsi_tp_backend kind, const struct dsi_model *m,
                          const struct dsi_backend_opts *o, struct dsi_backend **out, char **err) {
    if (!out) return DSI_EINVAL;
    *out = NULL;
    if (!m || !o || !m->dir)
        return dsi_seterr(err, DSI_EINVAL, "tensor parallel: model and options are required");
    if (dsi_parallel_rank() != 0 || dsi_parallel_size() < 2)
        return dsi_seterr(err, DSI_ESTATE, "tensor parallel backend is created on rank 0 of an MPI run");
    if (dsi__parallel_has_backend())
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
    if (c.opts.ep_size == 0) c.opts.ep_size = dsi__parallel_ep_flag(); /* every shard gets rank 0's */
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
    int size = dsi_parallel_size();
    int *all = calloc((size_t)size * 2, sizeof *all); /* before "create": the gather must not fail later */
    if (!all) return dsi_seterr(err, DSI_ENOMEM, "out of memory");
    if ((rc = dsi__parallel_send(DSI_TP_MSG_CREATE, words, (uint32_t)n_words, 0, err))) {
        free(all);
        return rc;
    }
    /* from here every rank builds its shard; all of them meet again in the gather */
    struct dsi__tp *t = NULL;
    char *lerr = NULL;
    struct dsi_backend_opts lo = c.opts;
    int pre = kind == DSI_TP_BACKEND_CUDA ? dsi__tp_cuda_check(cfg, &lo, &lerr) : 0;
    int st = dsi__tp_agree_and_build(kind, m, &lo, c.nccl_id, pre, &t, &lerr);
    int mine[2] = {st, t ? t->be.n_kv_blocks : 0};
    int mrc = MPI_Gather(mine, 2, MPI_INT, all, 2, MPI_INT, 0, dsi__parallel_comm());
    int bad = st ? 0 : -1;
    for (int r = 1; mrc == MPI_SUCCESS && r < size && bad < 0; r++)
        if (all[2 * r]) bad = r;
    rc = 0;
    if (mrc != MPI_SUCCESS) {
        rc = dsi__parallel_mpierr(mrc, "gather of shard status", err);
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
        if (dsi__parallel_send(DSI_TP_MSG_DESTROY, NULL, 0, 0, &derr)) free(derr);
        return rc;
    }
    t->be.ops = kind == DSI_TP_BACKEND_CUDA ? &tp_cuda_ops : &tp_ops;
    dsi__parallel_set_backend(true);
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
        if (dsi__parallel_send(DSI_TP_MSG_DESTROY, NULL, 0, 0, &err)) {
            dsi_log(DSI_LOG_ERROR, "dist", "could not tell the workers to free their shards: %s",
                    err ? err : "?");
            free(err);
        }
    }
    dsi__parallel_set_backend(false);
    dsi__tp_free_shard(t);
}

/* The ops-table entry (backend.h): true after step_failed. */
static bool tp_dead(struct dsi_backend *be) {
    return ((struct dsi__tp *)be->impl)->dead;
}

/* A failure while or after the batch went out. CPU: MPI broke, the backend is dead and
 * the service drains. CUDA: the workers are inside NCCL collectives that will
 * never complete, so the job ends here (systemd restarts it). */
static int step_failed(struct dsi__tp *t, int rc, char **err) {
    t->dead = true;
    dsi_log(DSI_LOG_ERROR, "dist", "tensor parallel step %u failed on rank 0; the backend is down: %s",
            (unsigned)t->step, err && *err ? *err : dsi_strerror(rc));
    if (t->cuda) dsi__parallel_fatal("a CUDA tensor-parallel step failed on rank 0");
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
    if ((rc = dsi__parallel_send(DSI_TP_MSG_FORWARD, t->msg, (uint32_t)n_words, t->step, err)))
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
#else
typedef int dsi__tp_rank0_needs_mpi;
#endif
