/*
 * worker.c: the loop ranks > 0 run instead of a command. They build the same
 * shard as rank 0 on "create", run every "forward" they receive, free it on
 * "destroy" and return on "shutdown".
 *
 * A message that a worker cannot validate is fatal for that worker (it cannot
 * take part in the step), and main.c then MPI_Aborts the whole job instead of
 * leaving rank 0 waiting in an all-reduce.
 */
#ifdef DSI_HAVE_MPI
#include <stdlib.h>
#include <string.h>

#include "dsinfer/err.h"
#include "dsinfer/log.h"
#include "parallel_internal.h"

static int worker_create(const int32_t *words, uint32_t n_words, struct dsi_model *model, bool *have_model,
                         struct dsi__tp **t, char **err);

/* Worker side of "create": decode, open the model without re-hashing, compare
 * the config fingerprint, then agree with every rank and build the shard
 * (dsi__tp_agree_and_build). Returns the status sent to rank 0. */
static int worker_create(const int32_t *words, uint32_t n_words, struct dsi_model *model, bool *have_model,
                         struct dsi__tp **t, char **err) {
    struct dsi_tp_create c;
    int pre = dsi_tp_create_decode(words, n_words, &c, err);
    if (!pre) {
        dsi_log(
            DSI_LOG_INFO, "dist",
            "rank %d opens %s without re-hashing it: rank 0 checked SHA256SUMS over the whole files before "
            "any rank uses them",
            dsi_parallel_rank(), c.dir);
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
                       c.dir, dsi_parallel_rank());
    struct dsi_backend_opts lo = c.opts;
    if (!pre && c.backend == DSI_TP_BACKEND_CUDA) pre = dsi__tp_cuda_check(cfg, &lo, err);
    return dsi__tp_agree_and_build(c.backend, model, &lo, c.nccl_id, pre, t, err);
}

int dsi__tp_worker_loop(char **err) {
    MPI_Comm comm = dsi__parallel_comm();
    struct dsi_model model;
    bool have_model = false;
    struct dsi__tp *t = NULL;
    int32_t cbuf[DSI_TP_CREATE_WORDS];
    int rc = 0, mrc;
    memset(&model, 0, sizeof model);
    for (;;) {
        uint32_t hdr[DSI_TP_HDR_WORDS];
        if ((rc = dsi__parallel_recv_hdr(hdr, err))) break;
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
            rc = dsi__parallel_mpierr(mrc, "receive of a control payload", err);
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
                dsi_log(DSI_LOG_ERROR, "dist", "rank %d cannot build its shard: %s", dsi_parallel_rank(),
                        cerr ? cerr : dsi_strerror(st));
            free(cerr);
            int mine[2] = {st, t ? t->be.n_kv_blocks : 0};
            if ((mrc = MPI_Gather(mine, 2, MPI_INT, NULL, 0, MPI_INT, 0, comm)) != MPI_SUCCESS) {
                rc = dsi__parallel_mpierr(mrc, "gather of shard status", err);
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
                dsi_log(DSI_LOG_ERROR, "dist", "rank %d: step %u failed: %s", dsi_parallel_rank(),
                        (unsigned)hdr[4], err && *err ? *err : dsi_strerror(rc));
                dsi__parallel_fatal("a CUDA tensor-parallel step failed on a worker");
            }
            break;
        }
    }
    dsi__tp_free_shard(t);
    if (have_model) dsi_model_close(&model);
    return rc;
}
#else
typedef int dsi__tp_worker_needs_mpi;
#endif
