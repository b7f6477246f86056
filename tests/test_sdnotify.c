/*
 * test_sdnotify.c: the notify protocol against a test listener: a bound AF_UNIX
 * datagram socket (by path and in the abstract namespace) stands in for systemd
 * and receives what dsi_sd_notify sends.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "dsinfer/err.h"
#include "dsinfer/sdnotify.h"
#include "test.h"

/* A listening datagram socket; `name` is a path or "@abstract". Returns the fd or -1. */
static int listen_dgram(const char *name) {
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    struct sockaddr_un sa;
    memset(&sa, 0, sizeof sa);
    sa.sun_family = AF_UNIX;
    size_t n = strlen(name);
    memcpy(sa.sun_path, name, n);
    socklen_t len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n);
    if (name[0] == '@')
        sa.sun_path[0] = '\0';
    else
        len += 1;
    /* a timeout, so that a message that never comes fails the test instead of hanging it */
    struct timeval tv = {5, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    if (bind(fd, (struct sockaddr *)&sa, len) < 0) {
        close(fd);
        return -1;
    }
    return fd;
}

/* Receives one datagram into buf (NUL-terminated); returns its length or -1. */
static ssize_t recv_one(int fd, char *buf, size_t n) {
    ssize_t r = recv(fd, buf, n - 1, 0);
    buf[r > 0 ? r : 0] = '\0';
    return r;
}

TEST(sd_notify_without_socket_is_a_noop) {
    unsetenv("NOTIFY_SOCKET");
    CHECK_EQ_INT(dsi_sd_notify("READY=1"), 0);
    setenv("NOTIFY_SOCKET", "", 1);
    CHECK_EQ_INT(dsi_sd_notify("READY=1"), 0);
    unsetenv("NOTIFY_SOCKET");
}

TEST(sd_notify_path_socket_receives_each_state) {
    char dir[] = "/tmp/dsi_sdnotify_XXXXXX";
    if (!mkdtemp(dir)) SKIP("mkdtemp failed");
    char path[128];
    snprintf(path, sizeof path, "%s/notify", dir);
    int fd = listen_dgram(path);
    CHECK(fd >= 0);
    if (fd >= 0) {
        setenv("NOTIFY_SOCKET", path, 1);
        const char *states[] = {"STATUS=loading weights 3/10", "READY=1\nSTATUS=serving on 127.0.0.1:8443",
                                "RELOADING=1", "WATCHDOG=1", "STOPPING=1\nSTATUS=draining 2 requests"};
        char buf[256];
        for (size_t i = 0; i < sizeof states / sizeof states[0]; i++) {
            CHECK_EQ_INT(dsi_sd_notify(states[i]), 1);
            CHECK(recv_one(fd, buf, sizeof buf) == (ssize_t)strlen(states[i]));
            CHECK_EQ_STR(buf, states[i]);
        }
        CHECK_EQ_INT(dsi_sd_notifyf("STATUS=loaded %d/%d tensors", 7, 9), 1);
        recv_one(fd, buf, sizeof buf);
        CHECK_EQ_STR(buf, "STATUS=loaded 7/9 tensors");
        close(fd);
    }
    unlink(path);
    rmdir(dir);
    unsetenv("NOTIFY_SOCKET");
}

TEST(sd_notify_abstract_socket_receives_ready) {
    char name[64];
    snprintf(name, sizeof name, "@dsi-test-notify-%ld", (long)getpid());
    int fd = listen_dgram(name);
    if (fd < 0) SKIP("abstract unix sockets unavailable");
    setenv("NOTIFY_SOCKET", name, 1);
    CHECK_EQ_INT(dsi_sd_notify("READY=1"), 1);
    char buf[64];
    CHECK(recv_one(fd, buf, sizeof buf) == 7);
    CHECK_EQ_STR(buf, "READY=1");
    close(fd);
    unsetenv("NOTIFY_SOCKET");
}

TEST(sd_notify_errors) {
    setenv("NOTIFY_SOCKET", "relative/path", 1);
    CHECK_EQ_INT(dsi_sd_notify("READY=1"), DSI_EINVAL);
    setenv("NOTIFY_SOCKET", "@", 1);
    CHECK_EQ_INT(dsi_sd_notify("READY=1"), DSI_EINVAL);
    char longp[200];
    memset(longp, 'a', sizeof longp - 1);
    longp[0] = '/';
    longp[sizeof longp - 1] = '\0';
    setenv("NOTIFY_SOCKET", longp, 1);
    CHECK_EQ_INT(dsi_sd_notify("READY=1"), DSI_EINVAL);
    /* a socket that does not exist: the send fails and says so */
    setenv("NOTIFY_SOCKET", "/tmp/dsi-no-such-notify-socket", 1);
    CHECK_EQ_INT(dsi_sd_notify("READY=1"), DSI_EIO);
    CHECK_EQ_INT(dsi_sd_notify(""), DSI_EINVAL);
    CHECK_EQ_INT(dsi_sd_notify(NULL), DSI_EINVAL);
    unsetenv("NOTIFY_SOCKET");
}

TEST(sd_watchdog_usec_reads_the_environment) {
    unsetenv("WATCHDOG_USEC");
    unsetenv("WATCHDOG_PID");
    CHECK_EQ_INT(dsi_sd_watchdog_usec(), 0);
    setenv("WATCHDOG_USEC", "30000000", 1);
    CHECK_EQ_INT(dsi_sd_watchdog_usec(), 30000000);
    char pid[32];
    snprintf(pid, sizeof pid, "%ld", (long)getpid());
    setenv("WATCHDOG_PID", pid, 1);
    CHECK_EQ_INT(dsi_sd_watchdog_usec(), 30000000);
    /* meant for another process (we are a child that inherited it): off */
    snprintf(pid, sizeof pid, "%ld", (long)getpid() + 1);
    setenv("WATCHDOG_PID", pid, 1);
    CHECK_EQ_INT(dsi_sd_watchdog_usec(), 0);
    setenv("WATCHDOG_PID", "12x", 1);
    CHECK_EQ_INT(dsi_sd_watchdog_usec(), 0);
    unsetenv("WATCHDOG_PID");
    const char *bad[] = {"", "0", "-5", "abc", "10s", "99999999999999999999999"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        setenv("WATCHDOG_USEC", bad[i], 1);
        CHECK_EQ_INT(dsi_sd_watchdog_usec(), 0);
    }
    unsetenv("WATCHDOG_USEC");
}

int main(void) {
    RUN(sd_notify_without_socket_is_a_noop);
    RUN(sd_notify_path_socket_receives_each_state);
    RUN(sd_notify_abstract_socket_receives_ready);
    RUN(sd_notify_errors);
    RUN(sd_watchdog_usec_reads_the_environment);
    return test_summary();
}
