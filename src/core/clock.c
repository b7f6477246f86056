/*
 * clock.c: dsi_now_s / dsi_now_ms on CLOCK_MONOTONIC (see clock.h for why).
 * clock_gettime cannot fail for CLOCK_MONOTONIC on Linux with a valid pointer.
 */
#include "dsinfer/clock.h"

#include <time.h>

double dsi_now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

int64_t dsi_now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}
