/*
 * safetensors.c: read-only mmap of .safetensors files with a hostile-header parser.
 *
 * File layout: u64 little-endian header length N, N bytes of JSON
 * {"name": {"dtype": "BF16", "shape": [..], "data_offsets": [begin, end]}, ...,
 *  "__metadata__": {...}}, then the data region; offsets are relative to it.
 * Everything in the header is untrusted: N must fit the file and stay under
 * ST_MAX_HEADER, every offset must lie in the data region with begin <= end,
 * tensors of one file must not overlap, shape product x dtype size (overflow
 * checked) must equal end - begin, names must be unique, non-empty UTF-8
 * without control characters. Each error names the file and the tensor.
 *
 * Sharded models: model.safetensors.index.json maps tensor -> shard file; every
 * shard is mapped once, every indexed tensor must be in the shard the index
 * names, and no tensor may appear in two shards.
 */
#include "dsinfer/utf8.h"
#include "model_internal.h"

#include "dsinfer/alloc.h"
#include "dsinfer/err.h"
#include "dsinfer/fileio.h"
#include "dsinfer/log.h"
#include "dsinfer/model.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define ST_MAX_HEADER ((uint64_t)100 << 20) /* the limit the reference reader uses */
#define ST_MAX_NAME 1024                    /* bytes; HF names are < 200 */
#define ST_MAX_INDEX ((size_t)256 << 20)    /* index.json of a 671B model is ~9 MB */

struct st_file {
    char *path;          /* owned; the name used in messages */
    const uint8_t *base; /* whole file image */
    size_t len;
    bool mapped; /* munmap on close (false for dsi_st_open_mem) */
};

struct st_priv {
    struct st_file *files;
    size_t n_files;
};

struct tvec {
    struct dsi_tensor *v;
    size_t n, cap;
};

struct span {
    uint64_t begin, end;
    size_t idx;
};

static int parse_image(struct tvec *tv, const uint8_t *buf, size_t len, const char *fname, int fidx,
                       char **err);
static int parse_entry(struct dsi_tensor *t, const cJSON *e, const char *fname, const char *pname,
                       uint64_t *begin, uint64_t *end, char **err);
static int finish(struct dsi_safetensors *st, struct tvec *tv, char **err);
static int map_file(struct st_file *f, const char *path, const struct dsi__st_source *src, char **err);
static int open_single_src(struct dsi_safetensors *st, const char *path, const struct dsi__st_source *src,
                           char **err);
static int cmp_name(const void *a, const void *b);
static int cmp_span(const void *a, const void *b);

static const char *dtype_names[] = {"F32", "F16", "BF16", "I8", "U8", "F8_E4M3", "I32", "I64"};

static int parse_dtype(const char *s, enum dsi_dtype *out) {
    for (int i = 0; i < DSI_DT__COUNT; i++)
        if (!strcmp(s, dtype_names[i])) {
            *out = (enum dsi_dtype)i;
            return 0;
        }
    return DSI_EUNSUPPORTED;
}

/* A JSON number that is a non-negative integer representable exactly in a double. */
static bool get_u64(const cJSON *it, uint64_t *out) {
    if (!cJSON_IsNumber(it)) return false;
    double d = it->valuedouble;
    if (!(d >= 0.0 && d <= 9007199254740992.0) || d != floor(d)) return false;
    *out = (uint64_t)d;
    return true;
}

static int tvec_push(struct tvec *tv, struct dsi_tensor **out) {
    struct dsi_tensor *v = dsi_grow(tv->v, tv->n, &tv->cap, sizeof *v, 64);
    if (!v) return DSI_ENOMEM;
    tv->v = v;
    *out = &tv->v[tv->n++];
    memset(*out, 0, sizeof **out);
    return 0;
}

static void tvec_free(struct tvec *tv) {
    for (size_t i = 0; i < tv->n; i++)
        free(tv->v[i].name);
    free(tv->v);
    tv->v = NULL;
    tv->n = tv->cap = 0;
}

static int parse_image(struct tvec *tv, const uint8_t *buf, size_t len, const char *fname, int fidx,
                       char **err) {
    if (len < 8)
        return dsi_seterr(err, DSI_EFORMAT, "%s: %zu bytes is too short for a safetensors header", fname,
                          len);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = hlen << 8 | buf[i];
    if (hlen > len - 8)
        return dsi_seterr(err, DSI_EFORMAT,
                          "%s: header length %llu runs past the end of the file (%zu bytes)", fname,
                          (unsigned long long)hlen, len);
    if (hlen > ST_MAX_HEADER)
        return dsi_seterr(err, DSI_EFORMAT, "%s: header length %llu exceeds the %llu byte limit", fname,
                          (unsigned long long)hlen, (unsigned long long)ST_MAX_HEADER);
    const char *h = (const char *)buf + 8;
    const uint8_t *data = buf + 8 + hlen;
    uint64_t data_len = len - 8 - hlen;
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(h, (size_t)hlen, &end, 0);
    if (!root) {
        size_t at = end && end >= h ? (size_t)(end - h) : 0;
        return dsi_seterr(err, DSI_EFORMAT, "%s: header is not valid JSON (at byte %zu of %llu)", fname, at,
                          (unsigned long long)hlen);
    }
    int rc = 0;
    /* Writers pad the header with spaces to align the data; nothing else may follow. */
    for (const char *p = end; p < h + hlen; p++)
        if (*p != ' ' && *p != '\n' && *p != '\r' && *p != '\t' && *p != '\0') {
            rc = dsi_seterr(err, DSI_EFORMAT, "%s: trailing bytes after the JSON header", fname);
            goto out;
        }
    if (!cJSON_IsObject(root)) {
        rc = dsi_seterr(err, DSI_EFORMAT, "%s: header is not a JSON object", fname);
        goto out;
    }
    size_t first = tv->n;
    for (const cJSON *e = root->child; e; e = e->next) {
        const char *name = e->string ? e->string : "";
        if (!strcmp(name, "__metadata__")) continue;
        char pname[160];
        dsi__printable(name, pname, sizeof pname);
        size_t nlen = strlen(name);
        bool ctrl = false;
        for (size_t i = 0; i < nlen; i++)
            ctrl |= (unsigned char)name[i] < 0x20 || name[i] == 0x7f;
        if (nlen == 0 || nlen > ST_MAX_NAME || ctrl || !dsi_utf8_valid(name, nlen)) {
            rc = dsi_seterr(err, DSI_EFORMAT,
                            "%s: tensor \"%s\": name is empty, too long, not UTF-8 or has control "
                            "characters",
                            fname, pname);
            goto out;
        }
        struct dsi_tensor *t;
        if ((rc = tvec_push(tv, &t)) != 0) {
            dsi_seterr(err, rc, "%s: out of memory", fname);
            goto out;
        }
        uint64_t b = 0, en = 0;
        if ((rc = parse_entry(t, e, fname, pname, &b, &en, err)) != 0) goto out;
        if (en > data_len) {
            rc = dsi_seterr(err, DSI_EFORMAT,
                            "%s: tensor %s: data_offsets [%llu, %llu] run past the data region "
                            "(%llu bytes)",
                            fname, pname, (unsigned long long)b, (unsigned long long)en,
                            (unsigned long long)data_len);
            goto out;
        }
        if (!(t->name = strdup(name))) {
            rc = dsi_seterr(err, DSI_ENOMEM, "%s: out of memory", fname);
            goto out;
        }
        t->data = data + b;
        t->file_index = fidx;
    }
    /* Overlap check: sort this file's tensors by offset, each must start at or
     * after the end of the previous one (gaps are allowed, zero-size anywhere free). */
    size_t nt = tv->n - first;
    if (nt > 1) {
        struct span *sp = malloc(nt * sizeof *sp);
        if (!sp) {
            rc = dsi_seterr(err, DSI_ENOMEM, "%s: out of memory", fname);
            goto out;
        }
        for (size_t i = 0; i < nt; i++) {
            const struct dsi_tensor *t = &tv->v[first + i];
            sp[i].begin = (uint64_t)((const uint8_t *)t->data - data);
            sp[i].end = sp[i].begin + t->size_bytes;
            sp[i].idx = first + i;
        }
        qsort(sp, nt, sizeof *sp, cmp_span);
        for (size_t i = 1; i < nt && rc == 0; i++)
            if (sp[i].begin < sp[i - 1].end) {
                char a[160], bn[160];
                dsi__printable(tv->v[sp[i - 1].idx].name, a, sizeof a);
                dsi__printable(tv->v[sp[i].idx].name, bn, sizeof bn);
                rc =
                    dsi_seterr(err, DSI_EFORMAT, "%s: tensor %s [%llu, %llu] overlaps tensor %s [%llu, %llu]",
                               fname, bn, (unsigned long long)sp[i].begin, (unsigned long long)sp[i].end, a,
                               (unsigned long long)sp[i - 1].begin, (unsigned long long)sp[i - 1].end);
            }
        free(sp);
    }
out:
    cJSON_Delete(root);
    return rc;
}

static int parse_entry(struct dsi_tensor *t, const cJSON *e, const char *fname, const char *pname,
                       uint64_t *begin, uint64_t *end, char **err) {
    if (!cJSON_IsObject(e))
        return dsi_seterr(err, DSI_EFORMAT, "%s: tensor %s: entry is not an object", fname, pname);
    const cJSON *dt = cJSON_GetObjectItemCaseSensitive(e, "dtype");
    const cJSON *shape = cJSON_GetObjectItemCaseSensitive(e, "shape");
    const cJSON *offs = cJSON_GetObjectItemCaseSensitive(e, "data_offsets");
    if (!cJSON_IsString(dt) || !cJSON_IsArray(shape) || !cJSON_IsArray(offs))
        return dsi_seterr(err, DSI_EFORMAT,
                          "%s: tensor %s: needs string \"dtype\", array \"shape\" and array "
                          "\"data_offsets\"",
                          fname, pname);
    if (parse_dtype(dt->valuestring, &t->dtype) != 0) {
        char pd[64];
        dsi__printable(dt->valuestring, pd, sizeof pd);
        return dsi_seterr(err, DSI_EFORMAT, "%s: tensor %s: unknown dtype \"%s\"", fname, pname, pd);
    }
    int nd = cJSON_GetArraySize(shape);
    if (nd > DSI_MAX_DIMS)
        return dsi_seterr(err, DSI_EFORMAT, "%s: tensor %s: %d dimensions (at most %d)", fname, pname, nd,
                          DSI_MAX_DIMS);
    uint64_t n = 1;
    bool overflow = false;
    int d = 0;
    for (const cJSON *s = shape->child; s; s = s->next, d++) {
        uint64_t v;
        if (!get_u64(s, &v) || v > INT64_MAX)
            return dsi_seterr(err, DSI_EFORMAT, "%s: tensor %s: shape[%d] is not a non-negative integer",
                              fname, pname, d);
        t->shape[d] = (int64_t)v;
        if (v != 0 && n > UINT64_MAX / v) overflow = true;
        n *= v;
    }
    t->n_dims = nd;
    size_t esz = dsi_dtype_size(t->dtype);
    if (overflow || n > SIZE_MAX / esz)
        return dsi_seterr(err, DSI_EFORMAT, "%s: tensor %s: shape product overflows", fname, pname);
    if (cJSON_GetArraySize(offs) != 2 || !get_u64(offs->child, begin) || !get_u64(offs->child->next, end))
        return dsi_seterr(err, DSI_EFORMAT, "%s: tensor %s: data_offsets must be two non-negative integers",
                          fname, pname);
    if (*begin > *end)
        return dsi_seterr(err, DSI_EFORMAT, "%s: tensor %s: data_offsets begin %llu > end %llu", fname, pname,
                          (unsigned long long)*begin, (unsigned long long)*end);
    t->n_elems = (size_t)n;
    t->size_bytes = (size_t)n * esz;
    if ((uint64_t)t->size_bytes != *end - *begin)
        return dsi_seterr(err, DSI_EFORMAT,
                          "%s: tensor %s: shape needs %zu bytes of %s but data_offsets span %llu", fname,
                          pname, t->size_bytes, dtype_names[t->dtype], (unsigned long long)(*end - *begin));
    return 0;
}

static int cmp_name(const void *a, const void *b) {
    return strcmp(((const struct dsi_tensor *)a)->name, ((const struct dsi_tensor *)b)->name);
}

static int cmp_span(const void *a, const void *b) {
    const struct span *x = a, *y = b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return 0;
}

/* Sorts by name, rejects duplicates, hands tv's array to st. */
static int finish(struct dsi_safetensors *st, struct tvec *tv, char **err) {
    struct st_priv *pv = st->priv;
    if (tv->n > 1) qsort(tv->v, tv->n, sizeof *tv->v, cmp_name);
    for (size_t i = 1; i < tv->n; i++)
        if (!strcmp(tv->v[i - 1].name, tv->v[i].name)) {
            char pn[160];
            dsi__printable(tv->v[i].name, pn, sizeof pn);
            return dsi_seterr(err, DSI_EFORMAT, "%s: tensor %s appears twice (also in %s)",
                              pv->files[tv->v[i].file_index].path, pn,
                              pv->files[tv->v[i - 1].file_index].path);
        }
    st->tensors = tv->v;
    st->n_tensors = tv->n;
    tv->v = NULL;
    tv->n = tv->cap = 0;
    return 0;
}

static int map_file(struct st_file *f, const char *path, const struct dsi__st_source *src, char **err) {
    if (!(f->path = strdup(path))) return DSI_ENOMEM;
    if (src) { /* an image the source owns (decrypted in memory) */
        int rc = src->get(src->ctx, path, &f->base, &f->len, err);
        if (!rc && f->len < 8)
            rc = dsi_seterr(err, DSI_EFORMAT, "%s: %zu bytes is too short for a safetensors header", path, f->len);
        return rc;
    }
    int fd;
    uint64_t size;
    int rc = dsi_open_regular(path, &fd, &size, err);
    if (rc) return rc;
    if (size < 8) {
        close(fd);
        return dsi_seterr(err, DSI_EFORMAT, "%s: %llu bytes is too short for a safetensors header", path,
                          (unsigned long long)size);
    }
    void *p = mmap(NULL, (size_t)size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd); /* the mapping keeps the file referenced */
    if (p == MAP_FAILED) return dsi_seterr(err, DSI_EIO, "%s: mmap failed: %s", path, strerror(errno));
    f->base = p;
    f->len = (size_t)size;
    f->mapped = true;
    return 0;
}

static int st_begin(struct dsi_safetensors *st, size_t n_files) {
    memset(st, 0, sizeof *st);
    struct st_priv *pv = calloc(1, sizeof *pv);
    if (!pv) return DSI_ENOMEM;
    pv->files = calloc(n_files ? n_files : 1, sizeof *pv->files);
    if (!pv->files) {
        free(pv);
        return DSI_ENOMEM;
    }
    pv->n_files = n_files;
    st->priv = pv;
    return 0;
}

int dsi_st_open_mem(struct dsi_safetensors *st, const void *buf, size_t len, const char *name, char **err) {
    if (!st || (!buf && len)) return DSI_EINVAL;
    if (!name) name = "(memory)";
    int rc = st_begin(st, 1);
    if (rc) return dsi_seterr(err, rc, "out of memory");
    struct st_priv *pv = st->priv;
    struct tvec tv = {0};
    pv->files[0].base = buf;
    pv->files[0].len = len;
    if (!(pv->files[0].path = strdup(name))) rc = dsi_seterr(err, DSI_ENOMEM, "out of memory");
    if (!rc) rc = parse_image(&tv, buf, len, name, 0, err);
    if (!rc) rc = finish(st, &tv, err);
    tvec_free(&tv);
    if (rc) dsi_st_close(st);
    return rc;
}

int dsi_st_open_file(struct dsi_safetensors *st, const char *path, char **err) {
    if (!st || !path) return DSI_EINVAL;
    return open_single_src(st, path, NULL, err);
}

static int open_single_src(struct dsi_safetensors *st, const char *path, const struct dsi__st_source *src,
                           char **err) {
    int rc = st_begin(st, 1);
    if (rc) return dsi_seterr(err, rc, "out of memory");
    struct st_priv *pv = st->priv;
    struct tvec tv = {0};
    rc = map_file(&pv->files[0], path, src, err);
    if (!rc) rc = parse_image(&tv, pv->files[0].base, pv->files[0].len, path, 0, err);
    if (!rc) rc = finish(st, &tv, err);
    tvec_free(&tv);
    if (rc) dsi_st_close(st);
    return rc;
}

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Shard names come from the index and are joined to DIR: plain file names only. */
static bool shard_name_ok(const char *s) {
    size_t n = strlen(s);
    return n > 0 && n < 256 && s[0] != '.' && !strchr(s, '/') && !strchr(s, '\\') && dsi_utf8_valid(s, n);
}

static int open_sharded(struct dsi_safetensors *st, const char *dir, const char *index_path,
                        const struct dsi__st_source *src, char **err) {
    char *text = NULL;
    const uint8_t *img = NULL;
    size_t len = 0;
    int rc = src ? src->get(src->ctx, index_path, &img, &len, err)
                 : dsi_read_file(index_path, ST_MAX_INDEX, &text, &len, err);
    if (rc) return rc;
    if (src && len > ST_MAX_INDEX) return dsi_seterr(err, DSI_ERANGE, "%s: larger than 256 MiB", index_path);
    cJSON *root = cJSON_ParseWithLength(src ? (const char *)img : text, len);
    free(text);
    const cJSON *wm = cJSON_GetObjectItemCaseSensitive(root, "weight_map");
    const char **shards = NULL;
    size_t n_entries = 0, n_shards = 0;
    struct tvec tv = {0};
    if (!cJSON_IsObject(root) || !cJSON_IsObject(wm)) {
        rc = dsi_seterr(err, DSI_EFORMAT, "%s: not a JSON object with a \"weight_map\" object", index_path);
        goto out;
    }
    for (const cJSON *e = wm->child; e; e = e->next)
        n_entries++;
    if (n_entries == 0) {
        rc = dsi_seterr(err, DSI_EFORMAT, "%s: weight_map is empty", index_path);
        goto out;
    }
    if (!(shards = malloc(n_entries * sizeof *shards))) {
        rc = dsi_seterr(err, DSI_ENOMEM, "%s: out of memory", index_path);
        goto out;
    }
    for (const cJSON *e = wm->child; e; e = e->next) {
        char pn[160];
        dsi__printable(e->string, pn, sizeof pn);
        if (!cJSON_IsString(e) || !shard_name_ok(e->valuestring)) {
            rc = dsi_seterr(err, DSI_EFORMAT,
                            "%s: tensor %s: shard must be a plain file name in the model folder", index_path,
                            pn);
            goto out;
        }
        shards[n_shards++] = e->valuestring;
    }
    qsort(shards, n_shards, sizeof *shards, cmp_str);
    size_t u = 0;
    for (size_t i = 0; i < n_shards; i++)
        if (u == 0 || strcmp(shards[u - 1], shards[i])) shards[u++] = shards[i];
    n_shards = u;
    if ((rc = st_begin(st, n_shards)) != 0) {
        dsi_seterr(err, rc, "out of memory");
        goto out;
    }
    struct st_priv *pv = st->priv;
    for (size_t i = 0; i < n_shards; i++) {
        char *p = dsi__path_join(dir, shards[i]);
        rc = p ? map_file(&pv->files[i], p, src, err) : DSI_ENOMEM;
        free(p);
        if (!rc) rc = parse_image(&tv, pv->files[i].base, pv->files[i].len, pv->files[i].path, (int)i, err);
        if (rc) goto out;
    }
    if ((rc = finish(st, &tv, err)) != 0) goto out;
    for (const cJSON *e = wm->child; e; e = e->next) {
        const struct dsi_tensor *t = dsi_st_find(st, e->string);
        const char *key = e->valuestring;
        const char **hit = bsearch(&key, shards, n_shards, sizeof *shards, cmp_str);
        const char *want = pv->files[hit ? (size_t)(hit - shards) : 0].path;
        char pn[160];
        dsi__printable(e->string, pn, sizeof pn);
        if (!t) {
            rc = dsi_seterr(err, DSI_EFORMAT, "%s: tensor %s is listed in the index but absent", want, pn);
            goto out;
        }
        if (strcmp(pv->files[t->file_index].path, want)) {
            rc = dsi_seterr(err, DSI_EFORMAT, "%s: tensor %s: the index says it is in %s",
                            pv->files[t->file_index].path, pn, want);
            goto out;
        }
    }
out:
    free(shards);
    cJSON_Delete(root);
    tvec_free(&tv);
    if (rc && st->priv) dsi_st_close(st);
    return rc;
}

int dsi_st_open_dir(struct dsi_safetensors *st, const char *dir, char **err) {
    return dsi__st_open_dir_src(st, dir, NULL, err);
}

int dsi__st_open_dir_src(struct dsi_safetensors *st, const char *dir, const struct dsi__st_source *src,
                         char **err) {
    if (!st || !dir) return DSI_EINVAL;
    memset(st, 0, sizeof *st);
    char *index = dsi__path_join(dir, "model.safetensors.index.json");
    char *single = dsi__path_join(dir, "model.safetensors");
    int rc;
    struct stat sb;
    if (!index || !single)
        rc = DSI_ENOMEM;
    else if (stat(index, &sb) == 0)
        rc = open_sharded(st, dir, index, src, err);
    else if (stat(single, &sb) == 0 && src)
        rc = open_single_src(st, single, src, err);
    else if (stat(single, &sb) == 0)
        rc = dsi_st_open_file(st, single, err);
    else
        rc = dsi_seterr(err, DSI_ENOENT, "%s: no model.safetensors or model.safetensors.index.json", dir);
    free(index);
    free(single);
    return rc;
}

void dsi_st_close(struct dsi_safetensors *st) {
    if (!st) return;
    struct st_priv *pv = st->priv;
    for (size_t i = 0; i < st->n_tensors; i++)
        free(st->tensors[i].name);
    free(st->tensors);
    if (pv) {
        for (size_t i = 0; i < pv->n_files; i++) {
            if (pv->files[i].mapped) munmap((void *)pv->files[i].base, pv->files[i].len);
            free(pv->files[i].path);
        }
        free(pv->files);
        free(pv);
    }
    memset(st, 0, sizeof *st);
}

const struct dsi_tensor *dsi_st_find(const struct dsi_safetensors *st, const char *name) {
    if (!st || !name || !st->n_tensors) return NULL;
    struct dsi_tensor key = {.name = (char *)name};
    return bsearch(&key, st->tensors, st->n_tensors, sizeof key, cmp_name);
}

size_t dsi__st_n_files(const struct dsi_safetensors *st) {
    const struct st_priv *pv = st ? st->priv : NULL;
    return pv ? pv->n_files : 0;
}

int dsi__st_file(const struct dsi_safetensors *st, size_t i, const char **path, const uint8_t **base,
                 size_t *len) {
    const struct st_priv *pv = st ? st->priv : NULL;
    if (!pv || i >= pv->n_files) return DSI_EINVAL;
    *path = pv->files[i].path;
    *base = pv->files[i].base;
    *len = pv->files[i].len;
    return 0;
}
