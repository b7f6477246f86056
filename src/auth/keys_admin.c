/*
 * keys_admin.c: add, list and revoke keys in a keys file (`dsinfer keys`).
 *
 * Every change: take an exclusive flock on "<file>.lock" (two admins adding
 * keys at once must not lose one), read and strictly validate the current
 * file, edit its JSON tree, validate the result with the same parser the
 * server uses (so we never write a file the server would reject), and write
 * it atomically with mode 0600. A new key exists only in the caller's buffer:
 * the file gets its SHA-256.
 */
#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <openssl/crypto.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "auth_internal.h"
#include "dsinfer/crypto.h"
#include "dsinfer/err.h"
#include "dsinfer/fileio.h"
#include "dsinfer/utf8.h"

struct locked_file {
    int lock_fd;
    cJSON *root;
    struct dsi__keyset *ks;
};

static int open_locked(const char *path, const struct dsi__roles *roles, bool create, struct locked_file *lf,
                       char **err);
static void close_locked(struct locked_file *lf);
static int save(const char *path, cJSON *root, const struct dsi__roles *roles, char **err);
static int parse_expires(const char *s, int64_t now_ms, char out[32], char **err);

static int open_locked(const char *path, const struct dsi__roles *roles, bool create, struct locked_file *lf,
                       char **err) {
    memset(lf, 0, sizeof *lf);
    lf->lock_fd = -1;
    size_t plen = strlen(path);
    char *lp = malloc(plen + 6);
    if (!lp) return dsi_seterr(err, DSI_ENOMEM, "out of memory");
    snprintf(lp, plen + 6, "%s.lock", path);
    lf->lock_fd = open(lp, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    free(lp);
    if (lf->lock_fd < 0) return dsi_seterr(err, DSI_EIO, "%s.lock: %s", path, strerror(errno));
    while (flock(lf->lock_fd, LOCK_EX) != 0)
        if (errno != EINTR) return dsi_seterr(err, DSI_EIO, "%s.lock: %s", path, strerror(errno));
    char *text = NULL;
    size_t len = 0;
    char *rerr = NULL;
    int rc = dsi__keys_read_file(path, &text, &len, &rerr);
    if (rc == DSI_ENOENT && create) {
        free(rerr);
        lf->root = cJSON_Parse("{\"version\":1,\"keys\":[]}");
        if (!lf->root) return dsi_seterr(err, DSI_ENOMEM, "out of memory");
        return 0;
    }
    if (rc) {
        if (err && !*err)
            *err = rerr;
        else
            free(rerr);
        return rc;
    }
    char *perr = NULL;
    rc = dsi__keyset_parse(text, len, roles, &lf->ks, &perr);
    if (rc) {
        dsi_seterr(err, rc, "%s: %s; fix it by hand before changing it with this tool", path,
                   perr ? perr : "invalid");
        free(perr);
        free(text);
        return rc;
    }
    lf->root = cJSON_ParseWithLength(text, len);
    free(text);
    if (!lf->root) return dsi_seterr(err, DSI_ENOMEM, "out of memory");
    return 0;
}

static void close_locked(struct locked_file *lf) {
    cJSON_Delete(lf->root);
    dsi__keyset_free(lf->ks);
    if (lf->lock_fd >= 0) close(lf->lock_fd); /* releases the flock */
}

static int save(const char *path, cJSON *root, const struct dsi__roles *roles, char **err) {
    char *text = cJSON_Print(root);
    if (!text) return dsi_seterr(err, DSI_ENOMEM, "out of memory");
    size_t len = strlen(text);
    struct dsi__keyset *check = NULL;
    char *perr = NULL;
    int rc = dsi__keyset_parse(text, len, roles, &check, &perr);
    dsi__keyset_free(check);
    if (rc) {
        rc = dsi_seterr(err, DSI_EINTERNAL, "%s: refusing to write an invalid keys file: %s", path,
                        perr ? perr : "?");
        free(perr);
        free(text);
        return rc;
    }
    char *withnl = realloc(text, len + 2);
    if (!withnl) {
        free(text);
        return dsi_seterr(err, DSI_ENOMEM, "out of memory");
    }
    withnl[len] = '\n';
    withnl[len + 1] = 0;
    rc = dsi_write_file_atomic(path, withnl, len + 1, 0600, err);
    free(withnl);
    return rc;
}

/* "2027-01-31" means valid through that UTC day, i.e. it expires at the
 * following midnight; a full RFC 3339 time is taken as is. */
static int parse_expires(const char *s, int64_t now_ms, char out[32], char **err) {
    int64_t ms;
    char buf[48];
    if (strlen(s) == 10) {
        snprintf(buf, sizeof buf, "%sT00:00:00Z", s);
        if (dsi__rfc3339_parse(buf, &ms))
            return dsi_seterr(err, DSI_EINVAL, "--expires '%s': not a date like 2027-01-31", s);
        ms += 86400000;
    } else if (dsi__rfc3339_parse(s, &ms)) {
        return dsi_seterr(
            err, DSI_EINVAL,
            "--expires '%.40s': not a date (2027-01-31) or RFC 3339 time (2027-01-31T12:00:00Z)", s);
    }
    if (ms <= now_ms) return dsi_seterr(err, DSI_EINVAL, "--expires '%.40s' is in the past", s);
    dsi__rfc3339_format(ms, ms % 1000 != 0, out);
    return 0;
}

int dsi_keys_add(const char *path, const struct dsi_key_spec *s, char key_out[DSI_KEY_STRLEN + 1],
                 char id_out[32], char **err) {
    struct dsi__roles roles;
    struct locked_file lf = {.lock_fd = -1};
    unsigned char raw[32], d[32];
    char hex[65], expires[32] = "", created[32];
    int rc = dsi__roles_parse(s->roles_json, &roles, err);
    if (rc) return rc;
    if (!s->name || !*s->name || strlen(s->name) > 63)
        return dsi_seterr(err, DSI_EINVAL, "--name must be 1-63 bytes");
    /* The name goes into keys.json, logs and metric labels: invalid UTF-8 would
     * make the file invalid JSON and the labels invalid exposition text. */
    if (!dsi_utf8_printable(s->name, strlen(s->name)))
        return dsi_seterr(err, DSI_EINVAL, "--name must be printable UTF-8, without control characters");
    if (!s->role || !dsi__roles_find(&roles, s->role)) {
        char known[DSI__ROLES_MAX * 33] = "";
        for (size_t i = 0; i < roles.n; i++) {
            strcat(known, i ? ", " : "");
            strcat(known, roles.r[i].name);
        }
        return dsi_seterr(err, DSI_EINVAL, "--role '%.40s' is not a role (known: %s)", s->role ? s->role : "",
                          known);
    }
    if (s->rpm < 0 || s->rpm > INT32_MAX || s->tpm < 0 || s->tpm > INT32_MAX || s->max_tokens < 0 ||
        s->max_concurrent < 0)
        return dsi_seterr(err, DSI_EINVAL, "--rpm, --tpm, --max-tokens and --max-concurrent must be 0..2147483647");
    if (s->priority < 0 || s->priority > 100) return dsi_seterr(err, DSI_EINVAL, "--priority must be 1..100");
    if (s->cache_group && *s->cache_group) {
        size_t n = strlen(s->cache_group);
        bool ok = n <= 63;
        for (size_t i = 0; ok && i < n; i++) {
            char ch = s->cache_group[i];
            ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') || ch == '_' ||
                 ch == '-' || ch == '.';
        }
        if (!ok) return dsi_seterr(err, DSI_EINVAL, "--cache-group must be 1-63 of A-Z a-z 0-9 _ - .");
    }
    int64_t now = dsi__realtime_ms();
    if (s->expires && *s->expires && (rc = parse_expires(s->expires, now, expires, err))) return rc;
    dsi__rfc3339_format(now, false, created);

    if ((rc = open_locked(path, &roles, true, &lf, err))) goto done;
    cJSON *keys = cJSON_GetObjectItemCaseSensitive(lf.root, "keys");
    cJSON *o = cJSON_CreateObject();
    if (!keys || !o) {
        cJSON_Delete(o);
        rc = dsi_seterr(err, DSI_ENOMEM, "out of memory");
        goto done;
    }
    cJSON_AddItemToArray(keys, o);
    /* A short random id; retried on the (unlikely) clash with an existing one. */
    for (int tries = 0;; tries++) {
        unsigned char idb[4];
        char idhex[9];
        if (RAND_bytes(idb, sizeof idb) != 1 || tries == 100) {
            rc = dsi_seterr(err, DSI_EINTERNAL, "cannot pick a key id (RAND_bytes failed)");
            goto done;
        }
        dsi_hex_encode(idb, 4, idhex);
        snprintf(id_out, 32, "k_%s", idhex);
        bool clash = false;
        for (size_t i = 0; lf.ks && i < lf.ks->n_keys; i++)
            clash |= !strcmp(lf.ks->keys[i].id, id_out);
        if (!clash) break;
    }
    if (RAND_bytes(raw, sizeof raw) != 1) {
        rc = dsi_seterr(err, DSI_EINTERNAL, "RAND_bytes failed: no key created");
        goto done;
    }
    memcpy(key_out, DSI_KEY_PREFIX, 4);
    dsi_hex_encode(raw, 32, key_out + 4);
    if ((rc = dsi_sha256(key_out, DSI_KEY_STRLEN, d))) {
        dsi_seterr(err, rc, "SHA-256 failed");
        goto done;
    }
    dsi_hex_encode(d, 32, hex);
    cJSON *models = cJSON_CreateArray();
    if (!models) {
        rc = dsi_seterr(err, DSI_ENOMEM, "out of memory");
        goto done;
    }
    cJSON_AddStringToObject(o, "id", id_out);
    cJSON_AddStringToObject(o, "name", s->name);
    cJSON_AddStringToObject(o, "role", s->role);
    cJSON_AddStringToObject(o, "sha256", hex);
    cJSON_AddItemToObject(o, "models", models);
    if (s->models && *s->models) {
        char *list = strdup(s->models), *save_p = NULL;
        if (!list) {
            rc = dsi_seterr(err, DSI_ENOMEM, "out of memory");
            goto done;
        }
        for (char *m = strtok_r(list, ",", &save_p); m; m = strtok_r(NULL, ",", &save_p))
            cJSON_AddItemToArray(models, cJSON_CreateString(m));
        free(list);
    }
    cJSON_AddNumberToObject(o, "rpm", (double)s->rpm);
    cJSON_AddNumberToObject(o, "tpm", (double)s->tpm);
    cJSON_AddNumberToObject(o, "max_tokens", s->max_tokens);
    if (s->max_concurrent) cJSON_AddNumberToObject(o, "max_concurrent", s->max_concurrent);
    if (s->priority) cJSON_AddNumberToObject(o, "priority", s->priority);
    if (expires[0])
        cJSON_AddStringToObject(o, "expires", expires);
    else
        cJSON_AddNullToObject(o, "expires");
    cJSON_AddBoolToObject(o, "disabled", 0);
    if (s->cache_group && *s->cache_group) cJSON_AddStringToObject(o, "cache_group", s->cache_group);
    cJSON_AddStringToObject(o, "created", created);
    rc = save(path, lf.root, &roles, err);
done:
    if (rc) OPENSSL_cleanse(key_out, DSI_KEY_STRLEN + 1);
    OPENSSL_cleanse(raw, sizeof raw);
    OPENSSL_cleanse(d, sizeof d);
    close_locked(&lf);
    return rc;
}

int dsi_keys_list(const char *path, const char *roles_json, FILE *out, char **err) {
    struct dsi__roles roles;
    struct dsi__keyset *ks = NULL;
    int rc = 0;
    if (roles_json && (rc = dsi__roles_parse(roles_json, &roles, err))) return rc;
    if ((rc = dsi__keyset_load(path, roles_json ? &roles : NULL, &ks, err))) return rc;
    int64_t now = dsi__realtime_ms();
    for (size_t i = 0; i < ks->n_keys; i++) {
        const struct dsi__entry *e = &ks->keys[i];
        char exp[32] = "never";
        if (e->expires_ms != DSI__NO_EXPIRY) dsi__rfc3339_format(e->expires_ms, false, exp);
        const char *status = e->disabled                                               ? "disabled"
                             : e->expires_ms != DSI__NO_EXPIRY && now >= e->expires_ms ? "expired"
                                                                                       : "active";
        fprintf(out, "%s\t%s\t%s\t%s\texpires=%s\tmodels=", e->id, e->name, e->role, status, exp);
        if (!e->n_models) fputs("*", out);
        for (size_t m = 0; m < e->n_models; m++)
            fprintf(out, "%s%s", m ? "," : "", e->models[m]);
        fputc('\n', out);
    }
    dsi__keyset_free(ks);
    if (fflush(out) != 0) return dsi_seterr(err, DSI_EIO, "writing the list failed");
    return 0;
}

int dsi_keys_revoke(const char *path, const char *id, const char *roles_json, char **err) {
    struct dsi__roles roles;
    struct locked_file lf = {.lock_fd = -1};
    int rc = 0;
    if (!id || !*id) return dsi_seterr(err, DSI_EINVAL, "no key id given");
    if (roles_json && (rc = dsi__roles_parse(roles_json, &roles, err))) return rc;
    const struct dsi__roles *rp = roles_json ? &roles : NULL;
    if ((rc = open_locked(path, rp, false, &lf, err))) goto done;
    cJSON *keys = cJSON_GetObjectItemCaseSensitive(lf.root, "keys"), *hit = NULL;
    cJSON *k;
    cJSON_ArrayForEach(k, keys) {
        const cJSON *kid = cJSON_GetObjectItemCaseSensitive(k, "id");
        if (cJSON_IsString(kid) && !strcmp(kid->valuestring, id)) hit = k;
    }
    if (!hit) {
        rc = dsi_seterr(err, DSI_ENOENT, "%s: no key with id '%.40s' (see `dsinfer keys list`)", path, id);
        goto done;
    }
    cJSON *t = cJSON_CreateTrue();
    if (!t) {
        rc = dsi_seterr(err, DSI_ENOMEM, "out of memory");
        goto done;
    }
    if (cJSON_GetObjectItemCaseSensitive(hit, "disabled"))
        cJSON_ReplaceItemInObjectCaseSensitive(hit, "disabled", t);
    else
        cJSON_AddItemToObject(hit, "disabled", t);
    rc = save(path, lf.root, rp, err);
done:
    close_locked(&lf);
    return rc;
}
