/*
 * test_parallel_abort.c: a worker that receives a malformed control message ends the
 * whole job: it logs one line naming the problem, main.c calls MPI_Abort, and
 * mpirun exits non-zero at once; nothing waits forever.
 *
 * This binary plays both parts. Run by ctest, it is the driver: for each case it
 * starts `mpirun -np 1 <itself> CASE : -np 1 $DSI_BIN logits ...`, an MPMD job in
 * which it is a fake rank 0 and a real dsinfer is the worker (rank 1). As rank 0
 * (OMPI_COMM_WORLD_SIZE set) it speaks the protocol of parallel.h badly on purpose,
 * then waits; only the worker's abort ends it. Skipped (77) without mpirun.
 */
#include <mpi.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "dsinfer/parallel.h"
#include "test.h"

/* The fake rank 0: same communicator setup as bootstrap.c (dup of WORLD, split by
 * host), then one bad message. */
static int fake_rank0(const char *mode) {
    int provided = 0;
    MPI_Init_thread(NULL, NULL, MPI_THREAD_SERIALIZED, &provided);
    MPI_Comm comm, node;
    MPI_Comm_dup(MPI_COMM_WORLD, &comm);
    /* bootstrap.c also splits the ranks by host, once, collectively */
    MPI_Comm_split_type(comm, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node);
    MPI_Comm_free(&node);
    uint32_t hdr[DSI_TP_HDR_WORDS];
    int32_t payload[64] = {0};
    uint32_t n = 0;
    if (!strcmp(mode, "magic")) {
        dsi_tp_hdr_make(hdr, DSI_TP_MSG_SHUTDOWN, 0, 0);
        hdr[0] = 0xdeadbeef;
    } else if (!strcmp(mode, "version")) {
        dsi_tp_hdr_make(hdr, DSI_TP_MSG_SHUTDOWN, 0, 0);
        hdr[1] = 99;
    } else if (!strcmp(mode, "forward-before-create")) {
        n = 7;
        dsi_tp_hdr_make(hdr, DSI_TP_MSG_FORWARD, n, 1);
    } else if (!strcmp(mode, "create-garbage")) {
        n = 20; /* words 0..19 zero: weight dtype 0 ok, but dir length 0 */
        dsi_tp_hdr_make(hdr, DSI_TP_MSG_CREATE, n, 0);
    } else {
        return 2;
    }
    MPI_Request req;
    MPI_Ibcast(hdr, DSI_TP_HDR_WORDS, MPI_UINT32_T, 0, comm, &req);
    MPI_Wait(&req, MPI_STATUS_IGNORE);
    if (n) MPI_Bcast(payload, (int)n, MPI_INT32_T, 0, comm);
    if (!strcmp(mode, "create-garbage")) {
        /* as rank0.c: the agreement to build (MPI_MIN of "can build"),
         * then the gather of {status, KV blocks} from every rank */
        int ok = 1, all_ok = 0, mine[2] = {0, 0}, all[4] = {0, 0, 0, 0};
        MPI_Allreduce(&ok, &all_ok, 1, MPI_INT, MPI_MIN, comm);
        MPI_Gather(mine, 2, MPI_INT, all, 2, MPI_INT, 0, comm);
        printf("worker create status %d, agreement %d\n", all[2], all_ok);
        fflush(stdout);
        /* a create the worker rejects is not fatal to it: tell it to stop cleanly */
        dsi_tp_hdr_make(hdr, DSI_TP_MSG_SHUTDOWN, 0, 0);
        MPI_Ibcast(hdr, DSI_TP_HDR_WORDS, MPI_UINT32_T, 0, comm, &req);
        MPI_Wait(&req, MPI_STATUS_IGNORE);
        MPI_Comm_free(&comm);
        MPI_Finalize();
        return 0;
    }
    sleep(150); /* the worker's MPI_Abort must end this long before */
    return 3;
}

static char errpath[] = "/tmp/dsi_test_parallel_abort_XXXXXX";

static int run_case(const char *mode, char **err_out, char **out_text) {
    char self[4096];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n <= 0) return -1;
    self[n] = 0;
    char cmd[12288];
    snprintf(
        cmd, sizeof cmd,
        "ASAN_OPTIONS=detect_leaks=0 DSI_LOG_LEVEL=info timeout 110 mpirun --allow-run-as-root "
        "--oversubscribe "
        "--bind-to none -x ASAN_OPTIONS -x DSI_LOG_LEVEL -np 1 %s %s : -np 1 %s logits --model models/demo "
        "--ids 1 2>%s",
        self, mode, getenv("DSI_BIN"), errpath);
    FILE *p = popen(cmd, "r");
    if (!p) return -1;
    char buf[4096];
    size_t got = fread(buf, 1, sizeof buf - 1, p);
    buf[got] = 0;
    int st = pclose(p);
    *out_text = strdup(buf);
    FILE *e = fopen(errpath, "r");
    char *eb = calloc(1, 1 << 16);
    if (e && eb) {
        size_t k = fread(eb, 1, (1 << 16) - 1, e);
        eb[k] = 0;
    }
    if (e) fclose(e);
    *err_out = eb;
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + (WIFSIGNALED(st) ? WTERMSIG(st) : 0);
}

static void expect_abort(const char *mode, const char *line) {
    char *err = NULL, *out = NULL;
    int rc = run_case(mode, &err, &out);
    CHECK(rc != 0 && rc != 124); /* 124: timeout, i.e. a hang */
    CHECK(err && strstr(err, "dist: rank 1 stops: "));
    CHECK(err && strstr(err, line));
    if (!err || !strstr(err, line)) fprintf(stderr, "--- %s (rc %d):\n%s\n", mode, rc, err ? err : "");
    free(err);
    free(out);
}

TEST(worker_aborts_on_bad_magic) {
    expect_abort("magic", "bad magic 0xdeadbeef");
}
TEST(worker_aborts_on_other_version) {
    expect_abort("version", "run the same dsinfer on every rank");
}
TEST(worker_aborts_on_forward_before_create) {
    expect_abort("forward-before-create", "exceeds the agreed 0");
}

TEST(worker_rejects_bad_create_and_reports_it) {
    char *err = NULL, *out = NULL;
    int rc = run_case("create-garbage", &err, &out);
    CHECK_EQ_INT(rc, 0); /* the worker stays in its loop and obeys the shutdown after */
    CHECK(out && strstr(out, "worker create status -"));
    CHECK(out && strstr(out, "agreement 0")); /* the worker said it cannot build: nobody builds */
    CHECK(err && strstr(err, "rank 1 cannot build its shard: create message"));
    free(err);
    free(out);
}

int main(int argc, char **argv) {
    if (getenv("OMPI_COMM_WORLD_SIZE")) return fake_rank0(argc > 1 ? argv[1] : "");
    if (!getenv("DSI_BIN")) {
        fprintf(stderr, "DSI_BIN is not set\n");
        return 1;
    }
    if (system("command -v mpirun >/dev/null 2>&1") != 0) {
        fprintf(stderr, "mpirun not installed (Debian: openmpi-bin): skipped\n");
        return 77;
    }
    int fd = mkstemp(errpath);
    if (fd < 0) return 1;
    close(fd);
    RUN(worker_aborts_on_bad_magic);
    RUN(worker_aborts_on_other_version);
    RUN(worker_aborts_on_forward_before_create);
    RUN(worker_rejects_bad_create_and_reports_it);
    unlink(errpath);
    return test_summary();
}
