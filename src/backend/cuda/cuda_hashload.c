/*
 * cuda_hashload.c: SHA-256 verify and upload of the weight files in one pass
 * (issue 9 item 3), for a model opened with defer_weight_hash.
 *
 * Why: verifying at open and then uploading reads every byte twice (15 GB for
 * the 7B shape). Here each file is read once: a reader thread pread()s chunks
 * into a ring of HL_NBUF pinned buffers and enqueues an async copy of each to
 * a device image of the whole file, while the file's worker thread hashes the
 * same buffer. So the read of chunk i+1, the hash of chunk i and the DMA of
 * chunk i overlap; a buffer is refilled only after its hash is done and its
 * copy's event completed. Files run in parallel, one worker (+ its reader) per
 * file, at most max(1, CPUs / 2) workers.
 *
 * Fail closed: a file's tensors stay withheld by the model until
 * dsi_model_mark_verified accepted its digest (constant-time compare); a read
 * error, a file whose size changed since open, or a mismatch fails backend
 * creation with an error naming the file, and every image is freed.
 *
 * If free GPU memory cannot hold all images next to the weights (estimate:
 * 2 x the files + the largest staging buffer + 1 GiB), or DSI_CUDA_LOAD=two-pass
 * is set, the files are verified on the host (dsi_model_verify_pending) and the
 * loader reads them again from the mmap, as before; one log line says why.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cuda_internal.h"
#include "dsinfer/clock.h"
#include "dsinfer/crypto.h"
#include "dsinfer/err.h"
#include "dsinfer/log.h"

#define HL_CHUNK ((size_t)32 << 20) /* per read / hash / DMA step */
#define HL_NBUF 3                   /* ring depth: read i+1 | hash i | DMA i (and i-1 draining) */
#define HL_MAX_WORKERS 16

struct hl_file { /* one deferred weight file */
    size_t idx;  /* in m->pending */
    const char *name, *path;
    uint64_t size;
    uint8_t *dev; /* its device image (size bytes) */
    uint8_t got[DSI_SHA256_LEN];
    int rc;
    char *err;
};

struct hl_ring { /* one worker's buffers, shared with its reader thread */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    uint8_t *buf[HL_NBUF]; /* pinned, chunk bytes each */
    size_t len[HL_NBUF];
    bool full[HL_NBUF];
    cudaEvent_t ev[HL_NBUF]; /* copy of buf[b] finished */
    cudaStream_t stream;
    size_t chunk;
    struct hl_file *f; /* the file being streamed */
    bool stop;         /* the hasher gave up: the reader leaves */
    bool failed;       /* the reader gave up: the hasher leaves */
    int device;
};

struct hl_pool {
    struct hl_file *files;
    size_t n, next;
    pthread_mutex_t mu;
    size_t chunk;
    int device;
};

static void reader_fail(struct hl_ring *r, int rc, char *msg) {
    pthread_mutex_lock(&r->mu);
    if (!r->f->rc) {
        r->f->rc = rc;
        r->f->err = msg;
        msg = NULL;
    }
    r->failed = true;
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
    free(msg);
}

/* Reads the file chunk by chunk into the ring and starts each chunk's copy. */
static void *reader_main(void *arg) {
    struct hl_ring *r = arg;
    struct hl_file *f = r->f;
    if (DSI_CUDA_CHECK(cudaSetDevice(r->device))) {
        reader_fail(r, DSI_ECUDA, dsi_errf("%s: cannot use the GPU for the upload", f->name));
        return NULL;
    }
    int fd = open(f->path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        reader_fail(r, DSI_EIO, dsi_errf("%s: cannot open: %s", f->name, strerror(errno)));
        return NULL;
    }
    (void)posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
    uint64_t off = 0;
    for (size_t i = 0; off < f->size; i++) {
        int b = (int)(i % HL_NBUF);
        pthread_mutex_lock(&r->mu);
        while (r->full[b] && !r->stop)
            pthread_cond_wait(&r->cv, &r->mu);
        bool stop = r->stop;
        pthread_mutex_unlock(&r->mu);
        if (stop) break;
        /* the hash of this buffer's last chunk is done; its copy must be too */
        if (DSI_CUDA_CHECK(cudaEventSynchronize(r->ev[b]))) {
            reader_fail(r, DSI_ECUDA, dsi_errf("%s: copy to the GPU failed", f->name));
            break;
        }
        size_t want = f->size - off < r->chunk ? (size_t)(f->size - off) : r->chunk, got = 0;
        while (got < want) {
            ssize_t k = pread(fd, r->buf[b] + got, want - got, (off_t)(off + got));
            if (k < 0 && errno == EINTR) continue;
            if (k <= 0) break;
            got += (size_t)k;
        }
        if (got < want) {
            reader_fail(r, DSI_EIO,
                        dsi_errf("%s: read failed or the file shrank at byte %llu (%llu expected)", f->name,
                                 (unsigned long long)(off + got), (unsigned long long)f->size));
            break;
        }
        if (DSI_CUDA_CHECK(
                cudaMemcpyAsync(f->dev + off, r->buf[b], want, cudaMemcpyHostToDevice, r->stream)) ||
            DSI_CUDA_CHECK(cudaEventRecord(r->ev[b], r->stream))) {
            reader_fail(r, DSI_ECUDA, dsi_errf("%s: copy to the GPU failed", f->name));
            break;
        }
        off += want;
        pthread_mutex_lock(&r->mu);
        r->len[b] = want;
        r->full[b] = true;
        pthread_cond_broadcast(&r->cv);
        pthread_mutex_unlock(&r->mu);
    }
    if (off == f->size) { /* bytes past the size seen at open: the file changed */
        uint8_t extra;
        if (pread(fd, &extra, 1, (off_t)off) == 1)
            reader_fail(r, DSI_EINTEGRITY, dsi_errf("%s: the file grew after the model was opened", f->name));
    }
    close(fd);
    return NULL;
}

/* Streams one file: a reader thread fills the ring, this thread hashes. */
static void stream_file(struct hl_ring *r, struct hl_file *f) {
    r->f = f;
    r->stop = r->failed = false;
    for (int b = 0; b < HL_NBUF; b++)
        r->full[b] = false;
    pthread_t th;
    if (pthread_create(&th, NULL, reader_main, r) != 0) {
        f->rc = DSI_ENOMEM;
        f->err = dsi_errf("%s: cannot start a reader thread", f->name);
        return;
    }
    struct dsi_sha256 h = {0};
    int rc = dsi_sha256_init(&h);
    uint64_t off = 0;
    for (size_t i = 0; rc == 0 && off < f->size; i++) {
        int b = (int)(i % HL_NBUF);
        pthread_mutex_lock(&r->mu);
        while (!r->full[b] && !r->failed)
            pthread_cond_wait(&r->cv, &r->mu);
        bool ok = r->full[b];
        size_t len = r->len[b];
        pthread_mutex_unlock(&r->mu);
        if (!ok) break; /* the reader failed; its error is in f */
        rc = dsi_sha256_update(&h, r->buf[b], len);
        off += len;
        pthread_mutex_lock(&r->mu);
        r->full[b] = false;
        pthread_cond_broadcast(&r->cv);
        pthread_mutex_unlock(&r->mu);
    }
    if (rc == 0 && off == f->size) rc = dsi_sha256_final(&h, f->got);
    dsi_sha256_free(&h);
    pthread_mutex_lock(&r->mu);
    r->stop = true;
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
    pthread_join(th, NULL);
    /* every copy of this file has finished before the buffers are reused */
    if (DSI_CUDA_CHECK(cudaStreamSynchronize(r->stream)) && !f->rc && !rc) rc = DSI_ECUDA;
    if (rc && !f->rc) {
        f->rc = rc;
        f->err = dsi_errf("%s: hashing or copying failed: %s", f->name, dsi_strerror(rc));
    }
    if (!f->rc && off != f->size) {
        f->rc = DSI_EIO;
        f->err = dsi_errf("%s: stopped after %llu of %llu bytes", f->name, (unsigned long long)off,
                          (unsigned long long)f->size);
    }
}

static int ring_init(struct hl_ring *r, size_t chunk, int device) {
    memset(r, 0, sizeof *r);
    r->chunk = chunk;
    r->device = device;
    pthread_mutex_init(&r->mu, NULL);
    pthread_cond_init(&r->cv, NULL);
    if (DSI_CUDA_CHECK(cudaStreamCreateWithFlags(&r->stream, cudaStreamNonBlocking))) return DSI_ECUDA;
    for (int b = 0; b < HL_NBUF; b++)
        if (DSI_CUDA_CHECK(cudaHostAlloc((void **)&r->buf[b], chunk, cudaHostAllocDefault)) ||
            DSI_CUDA_CHECK(cudaEventCreateWithFlags(&r->ev[b], cudaEventDisableTiming)))
            return DSI_ENOMEM;
    return 0;
}

static void ring_free(struct hl_ring *r) {
    if (r->stream) cudaStreamSynchronize(r->stream);
    for (int b = 0; b < HL_NBUF; b++) {
        if (r->buf[b]) cudaFreeHost(r->buf[b]);
        if (r->ev[b]) cudaEventDestroy(r->ev[b]);
    }
    if (r->stream) cudaStreamDestroy(r->stream);
    pthread_mutex_destroy(&r->mu);
    pthread_cond_destroy(&r->cv);
}

static void *worker_main(void *arg) {
    struct hl_pool *p = arg;
    struct hl_ring r;
    int rc = DSI_CUDA_CHECK(cudaSetDevice(p->device)) ? DSI_ECUDA : ring_init(&r, p->chunk, p->device);
    for (;;) {
        pthread_mutex_lock(&p->mu);
        size_t i = p->next < p->n ? p->next++ : SIZE_MAX;
        pthread_mutex_unlock(&p->mu);
        if (i == SIZE_MAX) break;
        struct hl_file *f = &p->files[i];
        if (rc) {
            f->rc = rc;
            f->err = dsi_errf("%s: no pinned host memory or stream for the upload", f->name);
            continue;
        }
        stream_file(&r, f);
    }
    if (rc != DSI_ECUDA) ring_free(&r);
    return NULL;
}

static int cmp_size_desc(const void *a, const void *b) {
    uint64_t x = ((const struct hl_file *)a)->size, y = ((const struct hl_file *)b)->size;
    return x < y ? 1 : x > y ? -1 : 0;
}

void dsi__cuda_free_images(struct dsi__cuda *c, const struct dsi_model *m, uint8_t **images) {
    if (!images) return;
    for (size_t i = 0; i < m->n_pending; i++)
        dsi__cuda_free(c, images[i]);
    free(images);
}

/* Host verify, then the ordinary upload from the mmap (the two passes). */
static int two_pass(const struct dsi_model *m, const char *why, char **err) {
    dsi_log(DSI_LOG_INFO, "cuda", "weights: two passes (host SHA-256 verify, then upload): %s", why);
    double t0 = dsi_now_s();
    int rc = dsi_model_verify_pending(m, 0, err);
    if (rc) return rc;
    uint64_t bytes = 0;
    for (size_t i = 0; i < m->n_pending; i++)
        bytes += m->pending[i].size;
    double dt = dsi_now_s() - t0;
    dsi_log(DSI_LOG_INFO, "cuda", "weights: host verify of %.2f GB in %.2f s (%.2f GB/s)",
            (double)bytes / 1e9, dt, dt > 0 ? (double)bytes / 1e9 / dt : 0.0);
    return 0;
}

int dsi__cuda_hash_upload(struct dsi__cuda *c, const struct dsi_model *m, uint8_t ***images, char **err) {
    *images = NULL;
    const struct dsi_model_config *cfg = &c->cfg;
    size_t n = 0, largest = 0;
    uint64_t total = 0;
    for (size_t i = 0; i < m->n_pending; i++)
        if (!m->pending[i].verified) {
            n++;
            total += m->pending[i].size;
            if (m->pending[i].size > largest) largest = (size_t)m->pending[i].size;
        }
    if (n == 0) return 0;
    if (c->sw.load == DSI__CU_LOAD_TWO_PASS) return two_pass(m, "DSI_CUDA_LOAD=two-pass", err);
    const bool force = c->sw.load == DSI__CU_LOAD_SINGLE_PASS; /* tests: no silent fallback */
    /* room for the images next to the weights (at most as large as the files in
     * bf16, half in int8), the staging matrix and cuBLAS/activations slack */
    size_t free_b = 0, total_b = 0;
    if (DSI_CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b)))
        return dsi_seterr(err, DSI_ECUDA, "cuda: cudaMemGetInfo failed");
    uint64_t stage = (uint64_t)cfg->vocab_size * (uint64_t)cfg->hidden_size * 2;
    uint64_t need = 2 * total + stage + ((uint64_t)1 << 30);
    if (need > free_b) {
        char why[160];
        snprintf(why, sizeof why,
                 "%.2f GB of files need ~%.2f GB of GPU memory for the single pass, %.2f GB free",
                 (double)total / 1e9, (double)need / 1e9, (double)free_b / 1e9);
        if (force) return dsi_seterr(err, DSI_ENOMEM, "cuda: DSI_CUDA_LOAD=single-pass, but %s", why);
        return two_pass(m, why, err);
    }

    double t0 = dsi_now_s();
    struct hl_file *files = calloc(n, sizeof *files);
    uint8_t **img = calloc(m->n_pending, sizeof *img);
    if (!files || !img) {
        free(files), free(img);
        return dsi_seterr(err, DSI_ENOMEM, "cuda: out of host memory");
    }
    int rc = 0;
    size_t k = 0;
    for (size_t i = 0; i < m->n_pending && !rc; i++) {
        if (m->pending[i].verified) continue;
        struct hl_file *f = &files[k++];
        f->idx = i;
        f->name = m->pending[i].name;
        f->path = m->pending[i].path;
        f->size = m->pending[i].size;
        rc = dsi__cuda_alloc(c, (void **)&img[i], f->size ? (size_t)f->size : 1, "weight file image", err);
        f->dev = img[i];
    }
    if (!rc) {
        qsort(files, n, sizeof *files, cmp_size_desc); /* biggest first: the longest pole starts first */
        long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
        size_t nw = ncpu > 1 ? (size_t)ncpu / 2 : 1;
        if (nw > HL_MAX_WORKERS) nw = HL_MAX_WORKERS;
        if (nw > n) nw = n;
        struct hl_pool pool = {.files = files,
                               .n = n,
                               .chunk = largest < HL_CHUNK ? (largest ? largest : 1) : HL_CHUNK,
                               .device = c->device};
        pthread_mutex_init(&pool.mu, NULL);
        pthread_t th[HL_MAX_WORKERS];
        size_t started = 0;
        for (; started < nw; started++)
            if (pthread_create(&th[started], NULL, worker_main, &pool) != 0) break;
        if (started == 0) worker_main(&pool);
        for (size_t i = 0; i < started; i++)
            pthread_join(th[i], NULL);
        pthread_mutex_destroy(&pool.mu);
        /* every file's outcome is logged; the first failure is the error */
        for (size_t j = 0; j < n; j++) {
            struct hl_file *f = &files[j];
            char *e = NULL;
            int r = f->rc ? dsi_seterr(&e, f->rc, "%s: %s", m->dir, f->err ? f->err : dsi_strerror(f->rc))
                          : dsi_model_mark_verified(m, f->idx, f->got, &e);
            if (r) {
                dsi_log(DSI_LOG_ERROR, "cuda", "weights: %s", e ? e : "?");
                if (!rc) {
                    rc = r;
                    if (err) *err = e, e = NULL;
                }
            }
            free(e);
        }
        double dt = dsi_now_s() - t0;
        if (!rc)
            dsi_log(
                DSI_LOG_INFO, "cuda",
                "weights: SHA-256 verify + upload of %zu files, %.2f GB in %.2f s (%.2f GB/s, single pass, "
                "%zu workers)",
                n, (double)total / 1e9, dt, dt > 0 ? (double)total / 1e9 / dt : 0.0, started ? started : 1);
    }
    for (size_t j = 0; j < n; j++)
        free(files[j].err);
    free(files);
    if (rc) {
        dsi__cuda_free_images(c, m, img);
        return rc;
    }
    *images = img;
    return 0;
}
