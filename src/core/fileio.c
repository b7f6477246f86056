/*
 * fileio.c: bounded whole-file reads for the small files dsinfer parses (configs,
 * indexes, manifests, PEM material, texts): a regular file only, its size checked
 * against the caller's limit before anything is allocated.
 */
#include "dsinfer/fileio.h"

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "dsinfer/err.h"

int dsi_read_file(const char *path, size_t max_bytes, char **out, size_t *len, char **err) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return dsi_seterr(err, errno == ENOENT ? DSI_ENOENT : DSI_EIO, "%s: cannot open: %s", path,
                          strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        close(fd);
        return dsi_seterr(err, DSI_EIO, "%s: not a regular file", path);
    }
    if ((uint64_t)sb.st_size > max_bytes) {
        close(fd);
        return dsi_seterr(err, DSI_ERANGE, "%s: %lld bytes, more than the %zu allowed", path,
                          (long long)sb.st_size, max_bytes);
    }
    size_t size = (size_t)sb.st_size;
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
