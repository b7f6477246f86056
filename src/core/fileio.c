/*
 * fileio.c: bounded whole-file reads for the small files dsinfer parses (configs,
 * indexes, manifests, PEM material, texts): a regular file only, its size checked
 * against the caller's limit before anything is allocated. And the one way dsinfer
 * replaces a file it owns (keys file, SHA256SUMS): temp + fsync + rename + fsync of
 * the directory, so a reader sees the old file or the new one, never a mix, and a
 * crash right after success cannot bring the old one back.
 */
#include "dsinfer/fileio.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "dsinfer/err.h"

int dsi_open_regular(const char *path, int *fd, uint64_t *size_bytes, char **err) {
    *fd = open(path, O_RDONLY | O_CLOEXEC);
    if (*fd < 0)
        return dsi_seterr(err, errno == ENOENT ? DSI_ENOENT : DSI_EIO, "%s: cannot open: %s", path,
                          strerror(errno));
    struct stat sb;
    if (fstat(*fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        close(*fd);
        *fd = -1;
        return dsi_seterr(err, DSI_EIO, "%s: not a regular file", path);
    }
    *size_bytes = (uint64_t)sb.st_size;
    return 0;
}

int dsi_read_file(const char *path, size_t max_bytes, char **out, size_t *len, char **err) {
    int fd;
    uint64_t st_size;
    int rc = dsi_open_regular(path, &fd, &st_size, err);
    if (rc) return rc;
    if (st_size > max_bytes) {
        close(fd);
        return dsi_seterr(err, DSI_ERANGE, "%s: %llu bytes, more than the %zu allowed", path,
                          (unsigned long long)st_size, max_bytes);
    }
    size_t size = (size_t)st_size;
    char *buf = malloc(size + 1);
    if (!buf) {
        close(fd);
        return dsi_seterr(err, DSI_ENOMEM, "%s: out of memory", path);
    }
    size_t got = 0;
    while (got < size) {
        ssize_t n = read(fd, buf + got, size - got);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            free(buf);
            close(fd);
            return dsi_seterr(err, DSI_EIO, "%s: read failed", path);
        }
        got += (size_t)n;
    }
    close(fd);
    buf[size] = '\0';
    *out = buf;
    if (len) *len = size;
    return 0;
}

static int write_all(int fd, const char *p, size_t len) {
    for (size_t off = 0; off < len;) {
        ssize_t n = write(fd, p + off, len - off);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return -1;
        off += (size_t)n;
    }
    return 0;
}

/* fsync of the folder holding path; 0 or -1 with errno. */
static int sync_dir_of(const char *path) {
    char *copy = strdup(path);
    if (!copy) return -1;
    int dfd = open(dirname(copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    free(copy);
    if (dfd < 0) return -1;
    int rc = fsync(dfd);
    int saved = errno;
    close(dfd);
    errno = saved;
    return rc;
}

int dsi_write_file_atomic(const char *path, const void *data, size_t len, unsigned mode, char **err) {
    /* "dir/name" -> "dir/.name.tmp.XXXXXX": hidden, so that folder walks (the
     * manifest's) skip a temporary left by a crash. */
    const char *slash = strrchr(path, '/');
    size_t dir_len = slash ? (size_t)(slash - path) + 1 : 0, plen = strlen(path);
    char *tmp = malloc(plen + 16);
    if (!tmp) return dsi_seterr(err, DSI_ENOMEM, "%s: out of memory", path);
    snprintf(tmp, plen + 16, "%.*s.%s.tmp.XXXXXX", (int)dir_len, path, path + dir_len);
    int fd = mkstemp(tmp);
    if (fd < 0) {
        int rc = dsi_seterr(err, DSI_EIO, "%s: cannot create a temporary file next to it: %s", path,
                            strerror(errno));
        free(tmp);
        return rc;
    }
    if (fchmod(fd, (mode_t)mode) != 0 || write_all(fd, data, len) != 0 || fsync(fd) != 0) {
        int e = errno;
        close(fd);
        unlink(tmp);
        free(tmp);
        return dsi_seterr(err, DSI_EIO, "%s: writing failed, file unchanged: %s", path, strerror(e));
    }
    if (close(fd) != 0 || rename(tmp, path) != 0) {
        int e = errno;
        unlink(tmp);
        free(tmp);
        return dsi_seterr(err, DSI_EIO, "%s: writing failed, file unchanged: %s", path, strerror(e));
    }
    free(tmp);
    if (sync_dir_of(path) != 0)
        return dsi_seterr(err, DSI_EIO, "%s: replaced, but syncing its folder failed (%s): the change may "
                          "not survive a crash",
                          path, strerror(errno));
    return 0;
}
