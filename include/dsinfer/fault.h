/*
 * fault.h: fault injection into a backend's steps, for tests only. Compiled in
 * builds with DSI_TEST_HOOKS (the sanitizer builds by default), never in a
 * release: a release binary has neither the wrapper nor the environment hook.
 *
 * The wrapper forwards every op to the backend it wraps and fails the listed
 * steps (forward or forward_sample, counted together from 1) without calling it:
 *   DSI_FAULT_OOM   that step fails with DSI_ENOMEM (a workspace that could not
 *                   grow); the backend stays usable, as a real one would.
 *   DSI_FAULT_DEAD  that step fails with DSI_ECUDA and every later one too, and
 *                   the dead op says true (a poisoned CUDA context).
 * The runtime wraps the backend it built when DSI_TEST_FAIL_STEP is set: a
 * list of steps and the kind, "N[,N...][:oom|:dead]" (default oom), e.g. "3,9"
 * or "5:dead" (with dead, the first listed step kills it).
 *
 * Owner: src/backend.
 */
#ifndef DSINFER_FAULT_H
#define DSINFER_FAULT_H

#include "dsinfer/backend.h"

enum dsi_fault_kind { DSI_FAULT_OOM, DSI_FAULT_DEAD };

#define DSI_FAULT_MAX_STEPS 8

struct dsi_fault_spec {
    long steps[DSI_FAULT_MAX_STEPS]; /* the steps that fail, from 1 */
    int n_steps;
    enum dsi_fault_kind kind;
};

/* Parses "N[,N...][:oom|:dead]" (each N >= 1, at most DSI_FAULT_MAX_STEPS).
 * 0 or DSI_EINVAL with a message. */
int dsi_fault_parse(const char *s, struct dsi_fault_spec *out, char **err);
/* A backend that runs inner and fails as spec says; it owns inner from here on
 * (its destroy destroys inner, also when this fails). The wrapper copies
 * inner's public fields (vocab, KV pool shape, sizes). 0 or DSI_ENOMEM. */
int dsi_fault_backend_wrap(struct dsi_backend *inner, const struct dsi_fault_spec *spec, struct dsi_backend **out,
                           char **err);

#endif
