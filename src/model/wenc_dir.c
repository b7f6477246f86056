/*
 * wenc_dir.c: encrypted model directories: `dsinfer encrypt` / `decrypt`
 * (whole folders) and the model loader's decrypting open.
 *
 * Loading (dsi__model_open_encrypted, called by dsi_model_open after the
 * SHA256SUMS of the encrypted files verified): the key is read once, config
 * and tokenizer files are decrypted eagerly, the safetensors index and shards
 * on demand through a dsi__st_source, all into anonymous memory that is
 * MADV_DONTDUMP and mlock'ed where RLIMIT_MEMLOCK allows, then read-only. The
 * key is wiped before return, on success and failure alike; nothing here ever
 * logs or formats key bytes. A file of the folder that is not encrypted, or
 * encrypted under another key, fails the open (no mixing of plain and
 * encrypted files).
 */
#include "model_internal.h"

#include "dsinfer/err.h"
#include "dsinfer/log.h"
#include "dsinfer/model.h"
#include "dsinfer/wenc.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* The decrypted files of an open model (m->enc). */
struct enc_file {
    char *name; /* relative to the model directory */
    char *path; /* dir/name */
    struct dsi_wenc_plain p;
};

struct enc_state {
    struct enc_file *v;
    size_t n, cap;
    const struct dsi_wenc_key *key; /* during open only, then NULL */
    const char *dir;
    int n_threads;
    size_t unlocked; /* files mlock refused */
};

static const char *const eager[] = {"config.json", "tokenizer.json", "tokenizer_config.json",
                                    "generation_config.json"};

void dsi__model_enc_free(void *enc) {
    struct enc_state *s = enc;
    if (!s) return;
    for (size_t i = 0; i < s->n; i++) {
        dsi_wenc_plain_free(&s->v[i].p);
        free(s->v[i].name);
        free(s->v[i].path);
    }
    free(s->v);
    free(s);
}

/* Decrypts dir/name into a new entry (*out). */
static int enc_add(struct enc_state *s, const char *name, struct enc_file **out, char **err) {
    if (s->n == s->cap) {
        size_t cap = s->cap ? 2 * s->cap : 16;
        struct enc_file *v = realloc(s->v, cap * sizeof *v);
        if (!v) return dsi_seterr(err, DSI_ENOMEM, "out of memory");
        s->v = v, s->cap = cap;
    }
    struct enc_file *f = &s->v[s->n];
    memset(f, 0, sizeof *f);
    f->name = strdup(name);
    f->path = dsi__path_join(s->dir, name);
    int rc = f->name && f->path ? 0 : dsi_seterr(err, DSI_ENOMEM, "out of memory");
    if (!rc) rc = dsi_wenc_decrypt_file(s->key, f->path, &f->p, s->n_threads, err);
    if (rc) {
        free(f->name);
        free(f->path);
        return rc;
    }
    s->unlocked += !f->p.locked;
    s->n++;
    *out = f;
    return 0;
}

/* dsi__st_source.get: the safetensors reader asks by dir/name path. */
static int st_get(void *ctx, const char *path, const uint8_t **base, size_t *len, char **err) {
    struct enc_state *s = ctx;
    size_t dl = strlen(s->dir);
    if (strncmp(path, s->dir, dl) || path[dl] != '/')
        return dsi_seterr(err, DSI_EINVAL, "%s: outside the model folder", path);
    for (size_t i = 0; i < s->n; i++)
        if (!strcmp(s->v[i].path, path)) {
            *base = s->v[i].p.data, *len = s->v[i].p.len;
            return 0;
        }
    if (!s->key) return dsi_seterr(err, DSI_ESTATE, "%s: the key is gone", path);
    struct enc_file *f;
    int rc = enc_add(s, path + dl + 1, &f, err);
    if (!rc) *base = f->p.data, *len = f->p.len;
    return rc;
}

int dsi__model_is_encrypted(const char *dir, bool *yes, char **err) {
    char *p = dsi__path_join(dir, "config.json");
    if (!p) return dsi_seterr(err, DSI_ENOMEM, "out of memory");
    uint8_t b[8];
    int fd = open(p, O_RDONLY | O_CLOEXEC);
    *yes = fd >= 0 && read(fd, b, sizeof b) == (ssize_t)sizeof b && dsi_wenc_is_encrypted(b, sizeof b);
    if (fd >= 0) close(fd);
    free(p);
    return 0;
}

int dsi__model_open_encrypted(struct dsi_model *m, const char *dir, const char *key_file, int n_threads,
                              char **err) {
    struct dsi_wenc_key key;
    struct enc_state *s = calloc(1, sizeof *s);
    if (!s) return dsi_seterr(err, DSI_ENOMEM, "out of memory");
    m->enc = s;
    m->encrypted = true;
    s->dir = m->dir;
    s->n_threads = n_threads > 0 ? n_threads : (int)sysconf(_SC_NPROCESSORS_ONLN);
    bool enc = false;
    int rc = dsi__model_is_encrypted(dir, &enc, err);
    if (!rc && !enc)
        return dsi_seterr(err, DSI_EINTEGRITY,
                          "%s: model_key_file is set but config.json is not encrypted (run `dsinfer encrypt`, "
                          "or remove model_key_file)",
                          dir);
    if (rc || (rc = dsi_wenc_key_load(key_file, &key, err))) return rc;
    s->key = &key;
    struct enc_file *f = NULL;
    for (size_t i = 0; !rc && i < sizeof eager / sizeof eager[0]; i++) {
        char *p = dsi__path_join(dir, eager[i]);
        struct stat sb;
        if (!p) rc = dsi_seterr(err, DSI_ENOMEM, "out of memory");
        else if (i == 0 || stat(p, &sb) == 0)
            rc = enc_add(s, eager[i], &f, err);
        free(p);
        if (!rc && i == 0) rc = dsi_model_config_parse((const char *)f->p.data, f->p.len, &m->cfg, err);
    }
    struct dsi__st_source src = {.get = st_get, .ctx = s};
    if (!rc) rc = dsi__st_open_dir_src(&m->st, m->dir, &src, err);
    s->key = NULL;
    dsi_wenc_key_wipe(&key);
    if (rc) return rc;
    size_t bytes = 0;
    for (size_t i = 0; i < s->n; i++)
        bytes += s->v[i].p.len;
    dsi_log(DSI_LOG_INFO, "model", "%s: decrypted %zu files (%.2f GB) into memory; key wiped", dir, s->n,
            (double)bytes / 1e9);
    if (s->unlocked)
        dsi_log(DSI_LOG_WARN, "model",
                "%s: %zu decrypted files could not be mlock'ed (RLIMIT_MEMLOCK; LimitMEMLOCK=infinity in the "
                "unit): the kernel may swap their plaintext",
                dir, s->unlocked);
    return 0;
}

int dsi_model_file(const struct dsi_model *m, const char *name, const void **data, size_t *len) {
    const struct enc_state *s = m ? m->enc : NULL;
    if (!s || !name || !data || !len) return DSI_ENOENT;
    for (size_t i = 0; i < s->n; i++)
        if (!strcmp(s->v[i].name, name)) {
            *data = s->v[i].p.data, *len = s->v[i].p.len;
            return 0;
        }
    return DSI_ENOENT;
}

/* mkdir -p of the folders in dst/name (mode), not the last component. */
static int make_parents(const char *dst, const char *name, mode_t mode, char **err) {
    char *p = dsi__path_join(dst, name);
    if (!p) return dsi_seterr(err, DSI_ENOMEM, "out of memory");
    int rc = 0;
    for (char *c = p + strlen(dst) + 1; !rc && (c = strchr(c, '/')); c++) {
        *c = '\0';
        if (mkdir(p, mode) != 0 && errno != EEXIST) rc = dsi_seterr(err, DSI_EIO, "%s: mkdir: %s", p, strerror(errno));
        *c = '/';
    }
    free(p);
    return rc;
}

/* dst must be absent (created) or an empty folder. */
static int prepare_dst(const char *dst, mode_t mode, char **err) {
    if (mkdir(dst, mode) == 0) return 0;
    if (errno != EEXIST) return dsi_seterr(err, DSI_EIO, "%s: mkdir: %s", dst, strerror(errno));
    char **names = NULL;
    size_t n = 0;
    int rc = dsi__manifest_list(dst, &names, &n, err);
    for (size_t i = 0; i < n; i++)
        free(names[i]);
    free(names);
    if (!rc && n) rc = dsi_seterr(err, DSI_EIO, "%s: exists and is not empty; give a new folder", dst);
    return rc;
}

static int write_plain(const char *path, const struct dsi_wenc_plain *p, char **err) {
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600), rc = 0;
    if (fd < 0) return dsi_seterr(err, DSI_EIO, "%s: cannot create: %s", path, strerror(errno));
    for (size_t off = 0; !rc && off < p->len;) {
        ssize_t w = write(fd, p->data + off, p->len - off);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) rc = dsi_seterr(err, DSI_EIO, "%s: write failed: %s", path, strerror(errno));
        else off += (size_t)w;
    }
    if (!rc && fsync(fd) != 0) rc = dsi_seterr(err, DSI_EIO, "%s: fsync: %s", path, strerror(errno));
    if (close(fd) != 0 && !rc) rc = dsi_seterr(err, DSI_EIO, "%s: close failed", path);
    if (rc) unlink(path);
    return rc;
}

/* The shared walk of encrypt_dir / decrypt_dir: verify src, list, convert
 * each file, write dst/SHA256SUMS. */
static int convert_dir(const struct dsi_wenc_key *k, const char *src, const char *dst, int n_threads, bool enc,
                       char **err) {
    if (!k || !src || !dst) return DSI_EINVAL;
    struct dsi_manifest_opts mo = {.n_threads = n_threads};
    char *mf = dsi__path_join(src, "SHA256SUMS");
    struct stat sb;
    int rc = mf ? 0 : DSI_ENOMEM;
    if (!rc && stat(mf, &sb) == 0)
        rc = dsi_manifest_verify(src, &mo, NULL, err);
    else if (!rc && !enc)
        rc = dsi_seterr(err, DSI_EINTEGRITY, "%s: no SHA256SUMS; an encrypted folder always has one", src);
    else if (!rc)
        dsi_log(DSI_LOG_WARN, "model", "%s: no SHA256SUMS; encrypting the files unverified", src);
    free(mf);
    char **names = NULL;
    size_t n = 0;
    if (!rc) rc = prepare_dst(dst, enc ? 0755 : 0700, err);
    if (!rc) rc = dsi__manifest_list(src, &names, &n, err);
    for (size_t i = 0; !rc && i < n; i++) {
        char *from = dsi__path_join(src, names[i]), *to = dsi__path_join(dst, names[i]);
        rc = from && to ? make_parents(dst, names[i], enc ? 0755 : 0700, err) : DSI_ENOMEM;
        if (!rc && enc) rc = dsi_wenc_encrypt_file(k, from, to, DSI_WENC_CHUNK_DEFAULT, err);
        if (!rc && !enc) {
            struct dsi_wenc_plain p;
            if (!(rc = dsi_wenc_decrypt_file(k, from, &p, n_threads, err))) {
                rc = write_plain(to, &p, err);
                dsi_wenc_plain_free(&p);
            }
        }
        free(from), free(to);
    }
    for (size_t i = 0; i < n; i++)
        free(names[i]);
    free(names);
    if (!rc) rc = dsi_manifest_write(dst, &mo, err);
    return rc;
}

int dsi_wenc_encrypt_dir(const struct dsi_wenc_key *k, const char *src, const char *dst, int n_threads,
                         char **err) {
    return convert_dir(k, src, dst, n_threads, true, err);
}

int dsi_wenc_decrypt_dir(const struct dsi_wenc_key *k, const char *src, const char *dst, int n_threads,
                         char **err) {
    return convert_dir(k, src, dst, n_threads, false, err);
}
