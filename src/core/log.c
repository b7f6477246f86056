/*
 * log.c: line-oriented logging to stderr.
 *
 * Each record is formatted into one buffer and written with a single write(2),
 * so lines from different threads never interleave.
 */
#include "dsinfer/log.h"
#include "dsinfer/err.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static _Atomic int log_level = DSI_LOG_INFO;

void dsi_log_set_level(enum dsi_log_level level) { atomic_store(&log_level, (int)level); }
enum dsi_log_level dsi_log_get_level(void) { return (enum dsi_log_level)atomic_load(&log_level); }

int dsi_log_parse_level(const char *s, enum dsi_log_level *out) {
    static const char *names[] = {"debug", "info", "warn", "error"};
    for (int i = 0; i < 4; i++)
        if (s && strcmp(s, names[i]) == 0) {
            *out = (enum dsi_log_level)i;
            return 0;
        }
    return DSI_EINVAL;
}

void dsi_log_write(enum dsi_log_level level, const char *subsys, const char *fmt, ...) {
    static const char *names[] = {"DEBUG", "INFO", "WARN", "ERROR"};
    static const int syslog_prio[] = {7, 6, 4, 3};
    char line[2048];
    size_t n = 0;
    if (getenv("JOURNAL_STREAM")) {
        n = (size_t)snprintf(line, sizeof line, "<%d>%s %s: ", syslog_prio[level], names[level], subsys);
    } else {
        struct timespec ts;
        struct tm tm;
        clock_gettime(CLOCK_REALTIME, &ts);
        gmtime_r(&ts.tv_sec, &tm);
        n = strftime(line, sizeof line, "%Y-%m-%dT%H:%M:%S", &tm);
        n += (size_t)snprintf(line + n, sizeof line - n, ".%03ldZ %s %s: ", ts.tv_nsec / 1000000,
                              names[level], subsys);
    }
    if (n >= sizeof line) n = sizeof line - 1;
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(line + n, sizeof line - n, fmt, ap);
    va_end(ap);
    if (m < 0) m = 0;
    n += (size_t)m;
    if (n > sizeof line - 2) { /* truncated: mark it rather than cut silently */
        n = sizeof line - 5;
        memcpy(line + n, "...", 3);
        n += 3;
    }
    /* one record per line: newlines inside a message would forge records */
    for (size_t i = 0; i < n; i++)
        if (line[i] == '\n' || line[i] == '\r') line[i] = ' ';
    line[n++] = '\n';
    ssize_t w = write(STDERR_FILENO, line, n);
    (void)w;
}
