/*
 * model.c: dsi_model_open(), the one way a backend gets weights.
 *
 * Order: verify SHA256SUMS (fail closed; skip_verify is a logged development
 * opt-out), then parse config.json, then map the safetensors. Verification
 * reads the files by path before they are mapped, so the model folder must be
 * read-only to the service user (DESIGN.md: weights live in a read-only
 * directory); otherwise a file swapped between the two steps would go unseen.
 *
 * defer_weight_hash (the single pass of the CUDA loader): the *.safetensors
 * files are listed but not hashed here; their tensors get data == NULL (the
 * pointers are kept in `struct held`) until the backend reports a matching
 * digest for the file, so nothing can read unverified bytes through the model.
 * Shards are matched to manifest entries by device and inode (symlinks of the
 * HF cache, "./" in index names).
 *
 * key_file (encrypted at rest, wenc_dir.c): the manifest of the encrypted files
 * is verified as above but never deferred, then config and weights come from
 * decrypted memory; the safetensors handle then holds no mappings of its own,
 * so m->enc is freed after it.
 */
#include "model_internal.h"

#include "dsinfer/clock.h"
#include "dsinfer/crypto.h"
#include "dsinfer/err.h"
#include "dsinfer/log.h"
#include "dsinfer/model.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

/* Tensor data withheld until their file's digest matched. */
struct held {
    const void **data;    /* (n_tensors): the pointer taken away, or NULL */
    size_t *file_pending; /* (n_files): index in m->pending, SIZE_MAX if not deferred */
    size_t n_files;
};

static void held_free(struct held *h) {
    if (!h) return;
    free(h->data);
    free(h->file_pending);
    free(h);
}

/* Matches every mapped shard to its deferred manifest entry and withholds the
 * data of the matched shards' tensors. */
static int withhold(struct dsi_model *m, char **err) {
    struct held *h = calloc(1, sizeof *h);
    size_t nf = dsi__st_n_files(&m->st), nt = m->st.n_tensors;
    if (!h) return dsi_seterr(err, DSI_ENOMEM, "out of memory");
    m->held = h;
    h->n_files = nf;
    h->data = calloc(nt ? nt : 1, sizeof *h->data);
    h->file_pending = calloc(nf ? nf : 1, sizeof *h->file_pending);
    if (!h->data || !h->file_pending) return dsi_seterr(err, DSI_ENOMEM, "out of memory");
    for (size_t f = 0; f < nf; f++) {
        const char *path;
        const uint8_t *base;
        size_t len;
        struct stat a;
        h->file_pending[f] = SIZE_MAX;
        if (dsi__st_file(&m->st, f, &path, &base, &len) || stat(path, &a) != 0)
            return dsi_seterr(err, DSI_EIO, "%s: weights file vanished after mapping", m->dir);
        for (size_t i = 0; i < m->n_pending; i++) {
            struct stat b;
            if (stat(m->pending[i].path, &b) == 0 && a.st_dev == b.st_dev && a.st_ino == b.st_ino) {
                h->file_pending[f] = i;
                break;
            }
        }
    }
    for (size_t t = 0; t < nt; t++) {
        struct dsi_tensor *x = &m->st.tensors[t];
        if (x->file_index < 0 || (size_t)x->file_index >= nf || h->file_pending[x->file_index] == SIZE_MAX)
            continue;
        h->data[t] = x->data;
        x->data = NULL;
    }
    return 0;
}

size_t dsi_model_unverified(const struct dsi_model *m) {
    size_t n = 0;
    for (size_t i = 0; m && i < m->n_pending; i++)
        n += !m->pending[i].verified;
    return n;
}

int dsi_model_mark_verified(const struct dsi_model *m, size_t i, const uint8_t got[32], char **err) {
    if (!m || !got || i >= m->n_pending) return dsi_seterr(err, DSI_EINVAL, "no such deferred weight file");
    struct dsi_model_pending *p = &m->pending[i];
    char q[200];
    dsi__printable(p->name, q, sizeof q);
    if (!dsi_ct_equal(p->want, got, DSI_SHA256_LEN)) {
        char hw[DSI_SHA256_HEX_LEN + 1], hg[DSI_SHA256_HEX_LEN + 1];
        dsi_hex_encode(p->want, DSI_SHA256_LEN, hw);
        dsi_hex_encode(got, DSI_SHA256_LEN, hg);
        return dsi_seterr(err, DSI_EINTEGRITY,
                          "%s: %s: SHA-256 mismatch (listed %.16s..., file has %.16s...)", m->dir, q, hw, hg);
    }
    const struct held *h = m->held;
    for (size_t t = 0; h && t < m->st.n_tensors; t++) {
        struct dsi_tensor *x = &m->st.tensors[t];
        if (h->data[t] && x->file_index >= 0 && (size_t)x->file_index < h->n_files &&
            h->file_pending[x->file_index] == i) {
            x->data = h->data[t];
            h->data[t] = NULL;
        }
    }
    p->verified = true;
    return 0;
}

int dsi_model_verify_pending(const struct dsi_model *m, int n_threads, char **err) {
    if (!m) return DSI_EINVAL;
    size_t n = m->n_pending;
    if (dsi_model_unverified(m) == 0) return 0;
    uint8_t(*got)[DSI_SHA256_LEN] = calloc(n, sizeof *got);
    char **errs = calloc(n, sizeof *errs);
    struct dsi_model_pending *todo = calloc(n, sizeof *todo);
    size_t *idx = calloc(n, sizeof *idx), k = 0;
    int rc = got && errs && todo && idx ? 0 : dsi_seterr(err, DSI_ENOMEM, "out of memory");
    for (size_t i = 0; !rc && i < n; i++)
        if (!m->pending[i].verified) todo[k] = m->pending[i], idx[k++] = i;
    if (!rc && (rc = dsi__hash_pending(todo, k, n_threads, got, errs)))
        dsi_seterr(err, rc, "hashing the weight files failed");
    for (size_t j = 0; !rc && j < k; j++) {
        char *e = NULL;
        int r = errs[j] ? dsi_seterr(&e, DSI_EINTEGRITY, "%s: %s", m->dir, errs[j])
                        : dsi_model_mark_verified(m, idx[j], got[j], &e);
        if (r) {
            dsi_log(DSI_LOG_ERROR, "model", "%s", e ? e : "?");
            if (!rc) {
                rc = r;
                if (err) *err = e, e = NULL;
            }
        }
        free(e);
    }
    for (size_t j = 0; errs && j < k; j++)
        free(errs[j]);
    free(got), free(errs), free(todo), free(idx);
    return rc;
}

int dsi_model_tensor_location(const struct dsi_model *m, const struct dsi_tensor *t, size_t *pending,
                              uint64_t *offset) {
    if (!m || !t || !pending || !offset || !m->st.tensors || t < m->st.tensors ||
        t >= m->st.tensors + m->st.n_tensors)
        return DSI_EINVAL;
    size_t ti = (size_t)(t - m->st.tensors);
    const struct held *h = m->held;
    const char *path;
    const uint8_t *base;
    size_t len;
    if (t->file_index < 0 || dsi__st_file(&m->st, (size_t)t->file_index, &path, &base, &len))
        return DSI_EINVAL;
    const uint8_t *data = t->data ? t->data : h ? h->data[ti] : NULL;
    if (!data || data < base || (size_t)(data - base) > len) return DSI_EINVAL;
    *offset = (uint64_t)(data - base);
    *pending = h && (size_t)t->file_index < h->n_files ? h->file_pending[t->file_index] : SIZE_MAX;
    return 0;
}

int dsi_model_open(struct dsi_model *m, const char *dir, const struct dsi_model_open_opts *o, char **err) {
    if (!m || !dir) return DSI_EINVAL;
    memset(m, 0, sizeof *m);
    struct dsi_model_open_opts def = {0};
    if (!o) o = &def;
    int rc = 0;
    const bool keyed = o->key_file && o->key_file[0];
    const bool defer = o->defer_weight_hash && !keyed; /* backends load decrypted bytes from memory */
    if (!(m->dir = strdup(dir))) return dsi_seterr(err, DSI_ENOMEM, "out of memory");
    double t0 = dsi_now_s();
    if (o->skip_verify) {
        dsi_log(DSI_LOG_WARN, "model",
                "%s: SHA-256 verification SKIPPED (skip_verify; development only, never in "
                "production)",
                dir);
    } else {
        struct dsi_manifest_opts mo = {.n_threads = o->n_threads,
                                       .expect_manifest_sha256 = o->expect_manifest_sha256};
        size_t bytes = 0;
        if (defer)
            rc = dsi__manifest_verify_deferred(dir, &mo, &m->pending, &m->n_pending, &bytes, err);
        else
            rc = dsi_manifest_verify(dir, &mo, &bytes, err);
        if (rc) goto fail;
        m->verify_s = dsi_now_s() - t0;
        uint64_t deferred = 0;
        for (size_t i = 0; i < m->n_pending; i++)
            deferred += m->pending[i].size;
        dsi_log(DSI_LOG_INFO, "model", "%s: verified %.2f GB in %.2f s (%.2f GB/s)%s", dir,
                (double)bytes / 1e9, m->verify_s, m->verify_s > 0 ? (double)bytes / 1e9 / m->verify_s : 0.0,
                m->n_pending ? "; weight files deferred to the loader's single pass" : "");
        if (m->n_pending)
            dsi_log(DSI_LOG_INFO, "model", "%s: %zu weight files (%.2f GB) to be hashed while loading", dir,
                    m->n_pending, (double)deferred / 1e9);
    }
    double t1 = dsi_now_s();
    if (keyed) {
        if ((rc = dsi__model_open_encrypted(m, dir, o->key_file, o->n_threads, err))) goto fail;
    } else {
        bool enc = false;
        if ((rc = dsi__model_is_encrypted(dir, &enc, err))) goto fail;
        if (enc) {
            rc = dsi_seterr(err, DSI_EPERM,
                            "%s: the model is encrypted (dsinfer encrypt); set model_key_file to its key", dir);
            goto fail;
        }
        if ((rc = dsi_model_config_load(dir, &m->cfg, err))) goto fail;
        if ((rc = dsi_st_open_dir(&m->st, dir, err))) goto fail;
    }
    if (m->n_pending && (rc = withhold(m, err))) goto fail;
    m->open_s = dsi_now_s() - t1;
    return 0;
fail:
    dsi_model_close(m);
    return rc;
}

void dsi_model_close(struct dsi_model *m) {
    if (!m) return;
    dsi_st_close(&m->st);
    held_free(m->held);
    dsi__model_enc_free(m->enc);
    dsi__pending_free(m->pending, m->n_pending);
    free(m->dir);
    memset(m, 0, sizeof *m);
}
