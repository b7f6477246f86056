/*
 * bootstrap.c: MPI bootstrap for tensor parallelism: detects an mpirun launch,
 * initialises MPI, strips --tensor-parallel and --expert-parallel from argv, runs the worker loop on
 * ranks > 0, and shuts the workers down when rank 0 exits.
 *
 * The MPI world is process-wide by nature (MPI_Init once per process, and the
 * atexit handler has no context argument), so its state lives in the one static
 * struct below, behind accessors: the documented exception to "no mutable
 * globals". It is written only by the main thread before any other thread starts
 * (dsi_parallel_main_hook) and at exit; `backend_alive` is touched by whoever creates
 * and destroys the TP backend (rank 0's main thread).
 *
 * Waiting workers poll a non-blocking broadcast with short sleeps, so an idle
 * worker does not spin a core (Open MPI's blocking collectives busy-wait).
 */
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "dsinfer/parallel.h"
#include "dsinfer/err.h"
#include "dsinfer/log.h"

#ifdef DSI_HAVE_MPI
#include "parallel_internal.h"
#endif

static int parse_rank_flag(int *argc, char **argv, const char *flag, int *n, char **err);

static struct {
    bool up;            /* MPI_Init_thread succeeded and MPI_Finalize not yet called */
    bool shutdown_sent; /* rank 0: workers told to exit */
    bool backend_alive; /* rank 0: a TP backend exists (workers hold its shards) */
    int rank, size;
    int local_rank, local_size; /* among the ranks of this host (the GPU a CUDA rank takes) */
    int ep_flag;                /* --expert-parallel N (0: not given, all ranks) */
#ifdef DSI_HAVE_MPI
    MPI_Comm comm;
#endif
} dist = {.size = 1};

int dsi_parallel_rank(void) {
    return dist.up ? dist.rank : 0;
}
int dsi_parallel_size(void) {
    return dist.up ? dist.size : 1;
}

/* Removes "--NAME N" / "--NAME=N" from argv (flag is "--NAME"). *n = 0 when absent. */
static int parse_rank_flag(int *argc, char **argv, const char *flag, int *n, char **err) {
    *n = 0;
    size_t fl = strlen(flag);
    for (int i = 1; i < *argc; i++) {
        const char *v = NULL;
        int used = 0;
        if (!strcmp(argv[i], flag)) {
            if (i + 1 >= *argc) return dsi_seterr(err, DSI_EINVAL, "%s wants a number of ranks", flag);
            v = argv[i + 1];
            used = 2;
        } else if (!strncmp(argv[i], flag, fl) && argv[i][fl] == '=') {
            v = argv[i] + fl + 1;
            used = 1;
        } else {
            continue;
        }
        char *end;
        long x = strtol(v, &end, 10);
        if (end == v || *end || x < 1 || x > 4096)
            return dsi_seterr(err, DSI_EINVAL, "%s wants a number of ranks in 1..4096, got '%s'", flag, v);
        *n = (int)x;
        for (int j = i; j + used <= *argc; j++)
            argv[j] = argv[j + used]; /* argv[argc] is NULL and moves along */
        *argc -= used;
        i--;
    }
    return 0;
}

/* --tensor-parallel and --expert-parallel for main's hook: 0, or 2 (a usage
 * error) with the reason on stderr. */
static int take_tp_flag(int *argc, char **argv, int *n, int *ep) {
    char *err = NULL;
    if (!parse_rank_flag(argc, argv, "--tensor-parallel", n, &err) &&
        !parse_rank_flag(argc, argv, "--expert-parallel", ep, &err))
        return 0;
    fprintf(stderr, "dsinfer: %s\n", err ? err : "bad --tensor-parallel or --expert-parallel");
    free(err);
    return 2;
}

#ifdef DSI_HAVE_MPI

static void dist_atexit(void);

MPI_Comm dsi__parallel_comm(void) {
    return dist.up ? dist.comm : MPI_COMM_NULL;
}
int dsi__parallel_local_rank(void) {
    return dist.up ? dist.local_rank : 0;
}
int dsi__parallel_local_size(void) {
    return dist.up ? dist.local_size : 1;
}
void dsi__parallel_set_backend(bool alive) {
    dist.backend_alive = alive;
}
bool dsi__parallel_has_backend(void) {
    return dist.backend_alive;
}
int dsi__parallel_ep_flag(void) {
    return dist.ep_flag;
}

int dsi__parallel_mpierr(int mrc, const char *what, char **err) {
    char msg[MPI_MAX_ERROR_STRING + 1] = "";
    int len = 0;
    if (MPI_Error_string(mrc, msg, &len) != MPI_SUCCESS) snprintf(msg, sizeof msg, "MPI error %d", mrc);
    return dsi_seterr(err, DSI_EDIST, "MPI %s failed on rank %d: %s", what, dist.rank, msg);
}

/* Rank 0: header via MPI_Ibcast (workers poll it), then the payload via MPI_Bcast. */
int dsi__parallel_send(enum dsi_tp_msg type, const int32_t *payload, uint32_t n_words, uint32_t step,
                       char **err) {
    if (!dist.up || dist.rank != 0)
        return dsi_seterr(err, DSI_ESTATE, "tensor parallel: not rank 0 of an MPI run");
    uint32_t hdr[DSI_TP_HDR_WORDS];
    dsi_tp_hdr_make(hdr, type, n_words, step);
    MPI_Request req;
    int mrc = MPI_Ibcast(hdr, DSI_TP_HDR_WORDS, MPI_UINT32_T, 0, dist.comm, &req);
    if (mrc == MPI_SUCCESS) mrc = MPI_Wait(&req, MPI_STATUS_IGNORE);
    if (mrc != MPI_SUCCESS) return dsi__parallel_mpierr(mrc, "broadcast of a control header", err);
    if (n_words > 0) {
        mrc = MPI_Bcast((void *)payload, (int)n_words, MPI_INT32_T, 0, dist.comm);
        if (mrc != MPI_SUCCESS) return dsi__parallel_mpierr(mrc, "broadcast of a control payload", err);
    }
    return 0;
}

int dsi__parallel_recv_hdr(uint32_t hdr[DSI_TP_HDR_WORDS], char **err) {
    MPI_Request req;
    int mrc = MPI_Ibcast(hdr, DSI_TP_HDR_WORDS, MPI_UINT32_T, 0, dist.comm, &req);
    if (mrc != MPI_SUCCESS) return dsi__parallel_mpierr(mrc, "receive of a control header", err);
    long sleep_ns = 0;
    for (int polls = 0;; polls++) {
        int done = 0;
        mrc = MPI_Test(&req, &done, MPI_STATUS_IGNORE);
        if (mrc != MPI_SUCCESS) return dsi__parallel_mpierr(mrc, "receive of a control header", err);
        if (done) return 0;
        /* spin briefly (decode steps follow each other closely), then back off to 1 ms */
        if (polls < 2000) continue;
        sleep_ns = sleep_ns < 1000000 ? sleep_ns + 20000 : 1000000;
        struct timespec ts = {0, sleep_ns};
        nanosleep(&ts, NULL);
    }
}

static void dist_atexit(void) {
    if (!dist.up) return;
    if (dist.rank == 0 && !dist.shutdown_sent) {
        char *err = NULL;
        dist.shutdown_sent = true;
        if (dsi__parallel_send(DSI_TP_MSG_SHUTDOWN, NULL, 0, 0, &err)) {
            dsi_log(DSI_LOG_ERROR, "dist", "could not tell the workers to shut down: %s", err ? err : "?");
            free(err);
            return; /* no MPI_Finalize: it would wait for ranks that never come */
        }
    }
    dist.up = false;
    MPI_Comm_free(&dist.comm);
    MPI_Finalize();
}

void dsi__parallel_fatal(const char *why) {
    dsi_log(DSI_LOG_ERROR, "dist", "rank %d ends the job: %s (the other ranks cannot continue)", dist.rank,
            why);
    dsi_parallel_abort(1);
}

void dsi_parallel_abort(int rc) {
    if (!dist.up) return;
    dist.up = false; /* the atexit handler must not finalize after an abort */
    MPI_Abort(MPI_COMM_WORLD, rc ? rc : 1);
}

bool dsi_parallel_main_hook(int *argc, char **argv, int *rc) {
    char *err = NULL;
    int n_flag = 0, ep_flag = 0;
    if ((*rc = take_tp_flag(argc, argv, &n_flag, &ep_flag))) return true;
    bool launched = getenv("OMPI_COMM_WORLD_SIZE") || getenv("PMIX_RANK") || getenv("PMI_RANK");
    if (!launched) {
        if (ep_flag > 1 && n_flag < 2) {
            fprintf(
                stderr,
                "dsinfer: --expert-parallel %d needs one process per rank: run it as `mpirun -np N dsinfer "
                "...` with N a multiple of %d\n",
                ep_flag, ep_flag);
            *rc = 2;
            return true;
        }
        if (n_flag > 1) {
            fprintf(
                stderr,
                "dsinfer: --tensor-parallel %d needs one process per rank: run it as `mpirun -np %d dsinfer "
                "... --tensor-parallel %d`\n",
                n_flag, n_flag, n_flag);
            *rc = 2;
            return true;
        }
        return false;
    }
    int provided = 0;
    /* MPI_Init starts helper threads (Open MPI progress, PMIx). They must not take
     * the signals the server waits for on its signalfd, or a SIGTERM would kill the
     * process instead of draining it: block them while those threads are born. */
    sigset_t block, old;
    sigemptyset(&block);
    sigaddset(&block, SIGHUP);
    sigaddset(&block, SIGTERM);
    sigaddset(&block, SIGINT);
    pthread_sigmask(SIG_BLOCK, &block, &old);
    int mrc = MPI_Init_thread(argc, &argv, MPI_THREAD_SERIALIZED, &provided);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (mrc != MPI_SUCCESS) {
        fprintf(stderr,
                "dsinfer: MPI_Init_thread failed; is this dsinfer built against the MPI of mpirun?\n");
        *rc = 1;
        return true;
    }
    dist.up = true;
    MPI_Comm_rank(MPI_COMM_WORLD, &dist.rank);
    MPI_Comm_size(MPI_COMM_WORLD, &dist.size);
    if (MPI_Comm_dup(MPI_COMM_WORLD, &dist.comm) != MPI_SUCCESS) {
        fprintf(stderr, "dsinfer: rank %d: MPI_Comm_dup failed\n", dist.rank);
        *rc = 1;
        return true;
    }
    MPI_Comm_set_errhandler(dist.comm, MPI_ERRORS_RETURN);
    /* collective: every rank splits here, once, whatever it does later */
    MPI_Comm node;
    dist.local_rank = 0;
    dist.local_size = 1;
    if (MPI_Comm_split_type(dist.comm, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node) == MPI_SUCCESS) {
        MPI_Comm_rank(node, &dist.local_rank);
        MPI_Comm_size(node, &dist.local_size);
        MPI_Comm_free(&node);
    }
    if (atexit(dist_atexit)) {
        fprintf(stderr, "dsinfer: rank %d: atexit failed\n", dist.rank);
        *rc = 1;
        return true;
    }
    if (provided < MPI_THREAD_SERIALIZED) {
        fprintf(stderr,
                "dsinfer: rank %d: this MPI gives thread level %d; tensor parallel needs SERIALIZED\n",
                dist.rank, provided);
        *rc = 1;
        return true;
    }
    if (n_flag && n_flag != dist.size) {
        /* every rank sees the same argv, so every rank says it and exits cleanly */
        fprintf(stderr,
                "dsinfer: rank %d: --tensor-parallel %d but mpirun started %d ranks; use mpirun -np %d\n",
                dist.rank, n_flag, dist.size, n_flag);
        dist.shutdown_sent = true;
        *rc = 2;
        dist.up = false;
        MPI_Comm_free(&dist.comm);
        MPI_Finalize();
        return true;
    }
    if (ep_flag && dist.size % ep_flag) {
        fprintf(stderr,
                "dsinfer: rank %d: --expert-parallel %d does not divide the %d ranks mpirun started; use a "
                "divisor\n",
                dist.rank, ep_flag, dist.size);
        dist.shutdown_sent = true;
        *rc = 2;
        dist.up = false;
        MPI_Comm_free(&dist.comm);
        MPI_Finalize();
        return true;
    }
    dist.ep_flag = ep_flag;
    dsi_log(DSI_LOG_INFO, "dist", "rank %d of %d (MPI thread level %d)", dist.rank, dist.size, provided);
    if (dist.rank == 0) return false;
    /* Workers follow rank 0: a SIGTERM to the whole unit reaches every rank, and
     * rank 0 drains and then sends "shutdown"; mpirun escalates to SIGKILL if not. */
    signal(SIGTERM, SIG_IGN);
    signal(SIGINT, SIG_IGN);
    if (dsi__tp_worker_loop(&err)) {
        dsi_log(DSI_LOG_ERROR, "dist", "rank %d stops: %s", dist.rank, err ? err : "worker failed");
        free(err);
        *rc = 1;
        /* no MPI_Finalize (it would wait for ranks that wait for us): main calls dsi_parallel_abort */
        return true;
    }
    return true;
}

#else /* !DSI_HAVE_MPI */

void dsi_parallel_abort(int rc) {
    (void)rc;
}

bool dsi_parallel_main_hook(int *argc, char **argv, int *rc) {
    int n_flag = 0, ep_flag = 0;
    if ((*rc = take_tp_flag(argc, argv, &n_flag, &ep_flag))) return true;
    if (ep_flag > 1) n_flag = ep_flag;
    if (n_flag > 1 || getenv("OMPI_COMM_WORLD_SIZE") || getenv("PMIX_RANK")) {
        int size = getenv("OMPI_COMM_WORLD_SIZE") ? atoi(getenv("OMPI_COMM_WORLD_SIZE")) : n_flag;
        if (size > 1 || n_flag > 1) {
            fprintf(stderr,
                    "dsinfer: this dsinfer was built without MPI; tensor parallel needs libopenmpi-dev at "
                    "build time\n");
            *rc = 2;
            return true;
        }
    }
    return false;
}

int dsi_tp_backend_create(enum dsi_tp_backend kind, const struct dsi_model *m,
                          const struct dsi_backend_opts *o, struct dsi_backend **out, char **err) {
    (void)kind;
    (void)m;
    (void)o;
    *out = NULL;
    return dsi_seterr(err, DSI_ENODEV, "this dsinfer was built without MPI");
}

#endif
