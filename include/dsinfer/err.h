/*
 * err.h: dsinfer error codes.
 *
 * Every fallible function returns 0 or a negative DSI_E* code, with results in
 * out-parameters (libuv style). Codes, names and messages come from one list,
 * DSI_ERRNO_MAP, so they cannot drift apart. Functions that can say more take a
 * `char **err` and set it to a heap string from dsi_errf() (the caller frees it
 * with free()); *err is left untouched on success.
 */
#ifndef DSINFER_ERR_H
#define DSINFER_ERR_H

#include <stddef.h>

#define DSI_ERRNO_MAP(XX)                                                     \
    XX(EINVAL, "invalid argument")                                            \
    XX(ENOMEM, "out of memory")                                               \
    XX(EIO, "i/o error")                                                      \
    XX(ENOENT, "no such file or entry")                                       \
    XX(EPERM, "permission denied")                                            \
    XX(EFORMAT, "malformed input")                                            \
    XX(ERANGE, "value out of range")                                          \
    XX(EOVERFLOW, "size overflow")                                            \
    XX(ENOBUFS, "buffer too small")                                           \
    XX(EUNSUPPORTED, "not supported")                                         \
    XX(EINTEGRITY, "integrity check failed")                                  \
    XX(EBUSY, "resource busy")                                                \
    XX(EFULL, "queue or pool full")                                           \
    XX(ETIMEDOUT, "timed out")                                                \
    XX(ECANCELED, "canceled")                                                 \
    XX(ECUDA, "CUDA error")                                                   \
    XX(ENODEV, "no such device")                                              \
    XX(ETLS, "TLS error")                                                     \
    XX(EAUTH, "authentication failed")                                        \
    XX(EDENIED, "permission denied by policy")                                \
    XX(ELIMIT, "rate or quota limit reached")                                 \
    XX(EDIST, "distributed runtime error")                                    \
    XX(ESTATE, "invalid state")                                               \
    XX(EINTERNAL, "internal error")

enum dsi_errno {
    DSI_OK = 0,
#define XX(code, msg) DSI_##code,
    DSI__ERRNO_FIRST = -1000,
    DSI_ERRNO_MAP(XX)
#undef XX
    DSI__ERRNO_LAST
};

/* "DSI_EINVAL" for DSI_EINVAL; "DSI_UNKNOWN" for anything else. Static string. */
const char *dsi_err_name(int code);
/* "invalid argument" for DSI_EINVAL. Static string. */
const char *dsi_strerror(int code);

/* printf into a new heap string; the caller frees it. NULL only when out of memory. */
char *dsi_errf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Sets *err (if err != NULL and *err == NULL) to dsi_errf(fmt, ...) and returns code. */
int dsi_seterr(char **err, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#endif
