/*
 * clock.h: the monotonic clock that every duration, rate and deadline in dsinfer
 * is measured on. CLOCK_MONOTONIC never jumps when the wall clock is set (NTP,
 * an operator), so a timeout cannot stretch or fire early; wall-clock times
 * (logs, audit records, key expiry) use CLOCK_REALTIME where they are made.
 * Owner: src/core (clock.c).
 */
#ifndef DSINFER_CLOCK_H
#define DSINFER_CLOCK_H

#include <stdint.h>

/* Seconds since an arbitrary fixed point, with nanosecond resolution: for
 * durations and rates. */
double dsi_now_s(void);
/* Milliseconds since the same point: for deadlines and timeouts. */
int64_t dsi_now_ms(void);

#endif
