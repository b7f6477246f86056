/*
 * sdnotify.c: sd_notify(3) implemented directly: one AF_UNIX datagram to the
 * socket in $NOTIFY_SOCKET.
 *
 * Why not libsystemd: one more runtime dependency for ~60 lines. The protocol is
 * stable: a path socket ("/run/systemd/notify") or an abstract one ("@name",
 * the '@' standing for the leading NUL byte). Each call opens, sends, closes, so
 * there is no state and no lock; notifications are rare (startup, reload, stop,
 * watchdog every few seconds). The credentials systemd checks (NotifyAccess=main)
 * come from the kernel with the datagram, so nothing else is needed.
 */
#include "dsinfer/sdnotify.h"

#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "dsinfer/err.h"

int dsi_sd_notify(const char *state) {
    if (!state || !*state) return DSI_EINVAL;
    const char *path = getenv("NOTIFY_SOCKET");
    if (!path || !*path) return 0;

    struct sockaddr_un sa;
    memset(&sa, 0, sizeof sa);
    sa.sun_family = AF_UNIX;
    size_t n = strlen(path);
    if ((path[0] != '/' && path[0] != '@') || n < 2 || n > sizeof sa.sun_path) return DSI_EINVAL;
    if (path[0] == '/' && n == sizeof sa.sun_path) return DSI_EINVAL; /* no room for the NUL */
    memcpy(sa.sun_path, path, n);
    if (path[0] == '@') sa.sun_path[0] = '\0';
    /* an abstract address is exactly as long as its name; a path one includes the NUL */
    socklen_t len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n + (path[0] == '/' ? 1 : 0));

    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return DSI_EIO;
    size_t slen = strlen(state);
    ssize_t sent;
    do {
        sent = sendto(fd, state, slen, MSG_NOSIGNAL, (const struct sockaddr *)&sa, len);
    } while (sent < 0 && errno == EINTR);
    close(fd);
    return (sent >= 0 && (size_t)sent == slen) ? 1 : DSI_EIO;
}

int dsi_sd_notifyf(const char *fmt, ...) {
    if (!fmt) return DSI_EINVAL;
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (n < 0) return DSI_EINVAL;
    /* a STATUS= line is for humans; cutting an over-long one is better than dropping it */
    return dsi_sd_notify(buf);
}

/* Parses a whole unsigned decimal; false on junk, sign, overflow or empty text. */
static int parse_u64(const char *s, uint64_t *out) {
    if (!s || *s < '0' || *s > '9') return 0;
    uint64_t v = 0;
    for (; *s; s++) {
        if (*s < '0' || *s > '9') return 0;
        unsigned d = (unsigned)(*s - '0');
        if (v > (UINT64_MAX - d) / 10) return 0;
        v = v * 10 + d;
    }
    *out = v;
    return 1;
}

uint64_t dsi_sd_watchdog_usec(void) {
    uint64_t usec, pid;
    if (!parse_u64(getenv("WATCHDOG_USEC"), &usec) || usec == 0) return 0;
    const char *p = getenv("WATCHDOG_PID");
    /* WATCHDOG_PID names the process the watchdog is for; a child that inherited the
     * environment must not ping on the parent's behalf */
    if (p && *p && (!parse_u64(p, &pid) || pid != (uint64_t)getpid())) return 0;
    return usec;
}
