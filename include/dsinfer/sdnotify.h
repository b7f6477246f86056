/*
 * sdnotify.h: the systemd notify protocol, without libsystemd.
 *
 * Under systemd (Type=notify) the daemon tells the service manager its state by
 * sending a datagram to the unix socket named in $NOTIFY_SOCKET: "READY=1" once
 * the model is loaded and the socket listens, "STATUS=..." lines while loading,
 * "RELOADING=1" / "READY=1" around a SIGHUP reload, "STOPPING=1" when draining
 * starts, and "WATCHDOG=1" every WatchdogSec/2. Outside systemd every call is a
 * cheap no-op that returns 0.
 */
#ifndef DSINFER_SDNOTIFY_H
#define DSINFER_SDNOTIFY_H

#include <stdint.h>

/* Sends `state` (e.g. "READY=1\nSTATUS=serving") to $NOTIFY_SOCKET ("/path" or
 * "@abstract"). Returns 1 when sent, 0 when NOTIFY_SOCKET is unset (not under
 * systemd), DSI_EINVAL for a bad state or socket name, DSI_EIO when sending fails.
 * Thread-safe (one socket per call; no state kept). */
int dsi_sd_notify(const char *state);
/* printf-style dsi_sd_notify: dsi_sd_notifyf("STATUS=loading %d/%d", i, n). */
int dsi_sd_notifyf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* The watchdog interval in microseconds from $WATCHDOG_USEC when it is meant for
 * this process ($WATCHDOG_PID unset or equal to getpid()); 0 when the watchdog
 * is off or the variables are malformed. Ping with "WATCHDOG=1" every half of it. */
uint64_t dsi_sd_watchdog_usec(void);

#endif
