/*
 * log.c: line-oriented logging to stderr.
 *
 * Each record is formatted into one buffer and written with a single write(2),
 * so lines from different threads never interleave.
 *
 * Messages carry outside text (paths, model names, key names, client CNs), so
 * every message is escaped here rather than at each call: a record is one line
 * (CR and LF become spaces, so no record can be forged), and control bytes
 * (C0, DEL, C1) and bytes that are not UTF-8 are written as \xNN, so no escape
 * sequence reaches an operator's terminal and journald gets valid UTF-8.
 */
#include "dsinfer/log.h"
#include "dsinfer/err.h"
#include "dsinfer/utf8.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
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

/* Appends msg[0..len) to out[*n..cap) with the escaping described at the top;
 * returns false (and stops at a character boundary) when it did not fit. */
static bool append_escaped(char *out, size_t cap, size_t *n, const char *msg, size_t len) {
    static const char hex[] = "0123456789abcdef";
    size_t o = *n;
    for (size_t i = 0; i < len;) {
        unsigned char c = (unsigned char)msg[i];
        size_t seq = dsi_utf8_seq_len(msg + i, len - i);
        bool control = seq == 1 ? c < 0x20 || c == 0x7f : seq == 2 && c == 0xc2 && (unsigned char)msg[i + 1] < 0xa0;
        size_t esc = seq == 0 ? 1 : control ? seq : 0; /* bytes written as \xNN */
        if (c == '\n' || c == '\r') esc = 0;
        size_t need = esc ? 4 * esc : seq;
        if (o + need > cap) {
            *n = o;
            return false;
        }
        if (c == '\n' || c == '\r') {
            out[o++] = ' ';
        } else if (esc) {
            for (size_t k = 0; k < esc; k++) {
                unsigned char b = (unsigned char)msg[i + k];
                out[o++] = '\\';
                out[o++] = 'x';
                out[o++] = hex[b >> 4];
                out[o++] = hex[b & 15];
            }
        } else {
            memcpy(out + o, msg + i, seq);
            o += seq;
        }
        i += esc ? esc : seq;
    }
    *n = o;
    return true;
}

void dsi_log_write(enum dsi_log_level level, const char *subsys, const char *fmt, ...) {
    static const char *names[] = {"DEBUG", "INFO", "WARN", "ERROR"};
    static const int syslog_prio[] = {7, 6, 4, 3};
    char line[4096], msg[2048];
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
    int m = vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (m < 0) m = 0;
    size_t len = (size_t)m < sizeof msg ? (size_t)m : sizeof msg - 1;
    /* 4 bytes kept for "...\n": a cut record is marked rather than cut silently */
    if (!append_escaped(line, sizeof line - 4, &n, msg, len) || (size_t)m >= sizeof msg) {
        memcpy(line + n, "...", 3);
        n += 3;
    }
    line[n++] = '\n';
    ssize_t w = write(STDERR_FILENO, line, n);
    (void)w;
}
