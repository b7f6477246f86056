/*
 * log.h: one line per event to stderr: "LEVEL subsystem: message".
 *
 * Under systemd (JOURNAL_STREAM set) lines get a "<N>" syslog priority prefix
 * and no timestamp, since journald adds both; on a terminal they carry an ISO
 * time. Levels below the threshold cost one comparison. Never log API keys or
 * prompt text.
 */
#ifndef DSINFER_LOG_H
#define DSINFER_LOG_H

enum dsi_log_level { DSI_LOG_DEBUG, DSI_LOG_INFO, DSI_LOG_WARN, DSI_LOG_ERROR };

/* Process-wide threshold; the one piece of global state, set by main and SIGHUP. */
void dsi_log_set_level(enum dsi_log_level level);
enum dsi_log_level dsi_log_get_level(void);
/* "debug"|"info"|"warn"|"error" -> level; returns 0 or DSI_EINVAL. */
int dsi_log_parse_level(const char *s, enum dsi_log_level *out);

void dsi_log_write(enum dsi_log_level level, const char *subsys, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define dsi_log(level, subsys, ...)                                            \
    do {                                                                       \
        if ((level) >= dsi_log_get_level()) dsi_log_write((level), (subsys), __VA_ARGS__); \
    } while (0)

#endif
