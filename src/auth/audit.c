/*
 * audit.c: the audit log, one JSON object per line, per request and per denial:
 *
 *   {"time":"2026-11-28T15:04:05.123Z","request_id":"...","key_id":"k_0123abcd",
 *    "principal":"alice","role":"user","remote_addr":"10.0.0.7","route":"/v1/chat/completions",
 *    "model":"tiny-chat","status":200,"prompt_tokens":12,"completion_tokens":30,
 *    "latency_ms":41.250,"denial":null}
 *
 * The file is opened O_APPEND and each line goes out in one write(2), so lines
 * from concurrent requests (and other processes appending) never interleave.
 * Strings are JSON-escaped, invalid UTF-8 becomes U+FFFD, and each field is
 * cut at 256 bytes, so a hostile header cannot break or bloat the log. The
 * record has no field for prompt text or keys, by construction.
 * reopen (SIGHUP after logrotate) opens the path anew and swaps the fd under a
 * write lock; if that fails the old fd stays.
 */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "auth_internal.h"
#include "dsinfer/err.h"
#include "dsinfer/log.h"

#define FIELD_MAX 256

struct dsi_audit {
    pthread_rwlock_t lk; /* read: writing a line; write: swapping fd */
    int fd;              /* guarded by lk */
    char *path;
    atomic_bool warned; /* one log line per failure streak, not one per request */
};

static size_t put_str(char *o, const char *s);
static size_t utf8_len(const unsigned char *s, size_t avail);

/* Length of a valid UTF-8 sequence at s (1..4), or 0 if invalid. */
static size_t utf8_len(const unsigned char *s, size_t avail) {
    unsigned c = s[0];
    size_t n;
    unsigned min;
    if (c < 0x80) return 1;
    if ((c & 0xe0) == 0xc0)
        n = 2, min = 0x80;
    else if ((c & 0xf0) == 0xe0)
        n = 3, min = 0x800;
    else if ((c & 0xf8) == 0xf0)
        n = 4, min = 0x10000;
    else
        return 0;
    if (n > avail) return 0;
    unsigned cp = c & (0x7f >> n);
    for (size_t i = 1; i < n; i++) {
        if ((s[i] & 0xc0) != 0x80) return 0;
        cp = cp << 6 | (s[i] & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return 0;
    return n;
}

/* Writes s as a JSON string (or null) into o, which has room for
 * FIELD_MAX * 6 + 3 bytes; returns the bytes written. */
static size_t put_str(char *o, const char *s) {
    if (!s) {
        memcpy(o, "null", 4);
        return 4;
    }
    size_t w = 0;
    o[w++] = '"';
    const unsigned char *p = (const unsigned char *)s;
    size_t len = strnlen(s, FIELD_MAX);
    for (size_t i = 0; i < len;) {
        unsigned c = p[i];
        if (c == '"' || c == '\\') {
            o[w++] = '\\';
            o[w++] = (char)c;
            i++;
        } else if (c < 0x20 || c == 0x7f) {
            w += (size_t)sprintf(o + w, "\\u%04x", c);
            i++;
        } else {
            size_t n = utf8_len(p + i, len - i);
            if (n == 0) {
                memcpy(o + w, "\\ufffd", 6);
                w += 6;
                i++;
            } else {
                memcpy(o + w, p + i, n);
                w += n;
                i += n;
            }
        }
    }
    o[w++] = '"';
    return w;
}

int dsi_audit_open(const char *path, struct dsi_audit **out, char **err) {
    if (!path || !*path) return dsi_seterr(err, DSI_EINVAL, "audit log: no path");
    struct dsi_audit *a = calloc(1, sizeof *a);
    if (!a || !(a->path = strdup(path))) {
        free(a);
        return dsi_seterr(err, DSI_ENOMEM, "audit log: out of memory");
    }
    /* 0640: the audit trail names principals and addresses; an admin group may read it. */
    a->fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
    if (a->fd < 0) {
        int e = errno;
        free(a->path);
        free(a);
        return dsi_seterr(err, DSI_EIO, "audit log %s: %s", path, strerror(e));
    }
    pthread_rwlock_init(&a->lk, NULL);
    atomic_init(&a->warned, false);
    *out = a;
    return 0;
}

int dsi_audit_reopen(struct dsi_audit *a, char **err) {
    int fd = open(a->path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
    if (fd < 0)
        return dsi_seterr(err, DSI_EIO, "audit log %s: reopen failed, still writing to the old file: %s",
                          a->path, strerror(errno));
    pthread_rwlock_wrlock(&a->lk);
    int old = a->fd;
    a->fd = fd;
    pthread_rwlock_unlock(&a->lk);
    close(old);
    atomic_store(&a->warned, false);
    return 0;
}

void dsi_audit_write(struct dsi_audit *a, const struct dsi_audit_record *r) {
    if (!a || !r) return;
    /* 8 string fields of at most FIELD_MAX*6+2 escaped bytes, plus names and numbers. */
    enum { LINE_MAX_BYTES = 8 * (FIELD_MAX * 6 + 2) + 512 };
    char *line = malloc(LINE_MAX_BYTES);
    if (!line) return;
    char ts[32];
    dsi__rfc3339_format(dsi__realtime_ms(), true, ts);
    /* the string fields before the numbers, in the order readers of the log expect */
    const struct {
        const char *name, *value;
    } fields[] = {{"request_id", r->request_id},
                  {"key_id", r->key_id},
                  {"principal", r->principal},
                  {"role", r->role},
                  {"remote_addr", r->remote_addr},
                  {"route", r->route},
                  {"model", r->model}};
    size_t w = (size_t)sprintf(line, "{\"time\":\"%s\"", ts);
    for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++) {
        w += (size_t)sprintf(line + w, ",\"%s\":", fields[i].name);
        w += put_str(line + w, fields[i].value);
    }
    double lat = isfinite(r->latency_ms) && r->latency_ms >= 0 ? r->latency_ms : 0;
    if (lat > 1e12) lat = 1e12;
    w += (size_t)sprintf(line + w,
                         ",\"status\":%d,\"prompt_tokens\":%d,\"completion_tokens\":%d,"
                         "\"latency_ms\":%.3f,\"denial\":",
                         r->status, r->prompt_tokens, r->completion_tokens, lat);
    w += put_str(line + w, r->denial);
    line[w++] = '}';
    line[w++] = '\n';
    pthread_rwlock_rdlock(&a->lk);
    size_t off = 0;
    while (off < w) {
        ssize_t n = write(a->fd, line + off, w - off);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            if (!atomic_exchange(&a->warned, true))
                dsi_log(DSI_LOG_ERROR, "audit", "writing %s failed: %s (further failures not logged)",
                        a->path, n < 0 ? strerror(errno) : "short write");
            break;
        }
        off += (size_t)n;
    }
    pthread_rwlock_unlock(&a->lk);
    free(line);
}

void dsi_audit_close(struct dsi_audit *a) {
    if (!a) return;
    if (a->fd >= 0) close(a->fd);
    pthread_rwlock_destroy(&a->lk);
    free(a->path);
    free(a);
}
